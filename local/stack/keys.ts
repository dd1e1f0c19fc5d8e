// Development-only credentials for the local stack. These are the well-known values of Supabase's
// own local stack (`supabase start` prints the same JWT secret): public, never for production.
// Against a real project every value comes from the environment instead (see tests/support/env.ts).

import { SignJWT } from "jose";

export const DEV_JWT_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";
export const DEV_JWT_ISSUER = "supabase-demo";

const encoder = new TextEncoder();

export async function signDevJwt(
  claims: Record<string, unknown>,
  { expiresInSeconds = 3600, secret = DEV_JWT_SECRET }: { expiresInSeconds?: number; secret?: string } = {},
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return await new SignJWT({ iss: DEV_JWT_ISSUER, ...claims })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuedAt(now)
    .setExpirationTime(now + expiresInSeconds)
    .sign(encoder.encode(secret));
}

/** The anon and service_role API keys, as `supabase start` derives them from the JWT secret. */
export async function devApiKeys(
  secret = DEV_JWT_SECRET,
): Promise<{ anonKey: string; serviceRoleKey: string }> {
  const tenYears = 10 * 365 * 24 * 3600;
  return {
    anonKey: await signDevJwt({ role: "anon" }, { expiresInSeconds: tenYears, secret }),
    serviceRoleKey: await signDevJwt({ role: "service_role" }, { expiresInSeconds: tenYears, secret }),
  };
}

/** An access token for a user, shaped like the ones Supabase Auth issues. */
export async function mintUserAccessToken(
  userId: string,
  { email, expiresInSeconds = 3600, secret = DEV_JWT_SECRET }: {
    email?: string;
    expiresInSeconds?: number;
    secret?: string;
  } = {},
): Promise<string> {
  return await signDevJwt(
    {
      sub: userId,
      role: "authenticated",
      aud: "authenticated",
      email: email ?? `${userId}@readsync.local`,
      session_id: crypto.randomUUID(),
      aal: "aal1",
      is_anonymous: false,
    },
    { expiresInSeconds, secret },
  );
}
