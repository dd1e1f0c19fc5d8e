// DEVELOPMENT ONLY: sign-in against the local stack, which has no Auth server. The server mints an
// access token shaped like Supabase Auth's with the local JWT secret (local/stack/keys.ts does the
// same for the CLI and tests) and keeps it in an httpOnly cookie. Reachable only when devSignIn()
// in config.ts says so; every entry point checks it again.

import { jwtVerify, SignJWT } from "jose";
import postgres from "postgres";

export const DEV_SESSION_COOKIE = "readsync-dev-session";
export const DEV_TOKEN_ISSUER = "supabase-demo";
export const DEV_TOKEN_LIFETIME_SECONDS = 8 * 3600;

export interface DevIdentity {
  userId: string;
  email: string | null;
  /** Seconds since the epoch. */
  expiresAt: number;
}

const encoder = new TextEncoder();

export async function mintDevAccessToken(
  secret: string,
  { userId, email, expiresInSeconds = DEV_TOKEN_LIFETIME_SECONDS }: {
    userId: string;
    email: string;
    expiresInSeconds?: number;
  },
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return await new SignJWT({
    iss: DEV_TOKEN_ISSUER,
    sub: userId,
    role: "authenticated",
    aud: "authenticated",
    email,
    session_id: crypto.randomUUID(),
    aal: "aal1",
    is_anonymous: false,
  })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuedAt(now)
    .setExpirationTime(now + expiresInSeconds)
    .sign(encoder.encode(secret));
}

/** The identity in a development token, or null when it is not a valid, unexpired one. */
export async function verifyDevAccessToken(secret: string, token: string): Promise<DevIdentity | null> {
  try {
    const { payload } = await jwtVerify(token, encoder.encode(secret), {
      algorithms: ["HS256"],
      audience: "authenticated",
    });
    if (typeof payload.sub !== "string" || payload.role !== "authenticated" || typeof payload.exp !== "number") {
      return null;
    }
    return {
      userId: payload.sub,
      email: typeof payload.email === "string" ? payload.email : null,
      expiresAt: payload.exp,
    };
  } catch {
    return null;
  }
}

let sql: postgres.Sql | undefined;
let sqlUrl: string | undefined;

/** The auth.users id for an email, creating the user in the local stack's database when new. */
export async function ensureDevUser(dbUrl: string, email: string): Promise<string> {
  if (!sql || sqlUrl !== dbUrl) {
    await sql?.end({ timeout: 1 });
    sql = postgres(dbUrl, { max: 1, idle_timeout: 30, onnotice: () => {}, connection: { application_name: "readsync-web-dev-signin" } });
    sqlUrl = dbUrl;
  }
  const [row] = await sql<{ id: string }[]>`
    insert into auth.users (email) values (${email})
    on conflict (email) do update set email = excluded.email
    returning id`;
  return row.id;
}

export const EMAIL_PATTERN = /^[^\s@]{1,64}@[^\s@]{1,190}$/;
