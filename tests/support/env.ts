// What every integration test needs: where the stack is, and real users to act as.
//
// `npm test` sets SUPABASE_URL, SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_DB_URL and,
// for the local stack, SUPABASE_JWT_SECRET. Its SUPABASE_DB_URL is the stack's connection as a URL
// postgres.js reads (LocalStack.postgresJsDbUrl: the password, TLS, host or socket psql's would use), so
// the tests hand it to postgres.js as it is. With the JWT secret, test users are rows in auth.users
// with locally minted access tokens; without it (a real project), they are created through the Auth
// admin API and signed in with a password, so the same tests run against a real Supabase stack.

import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import postgres from "postgres";
import { mintUserAccessToken } from "../../local/stack/keys.ts";

export interface TestEnv {
  url: string;
  anonKey: string;
  serviceRoleKey: string;
  dbUrl: string;
  jwtSecret?: string;
}

/**
 * Whether tests can mint tokens of their own (a short lifetime, an expired one): only with the
 * project's JWT secret. Against a hosted project without it, test users sign in through Auth and get
 * its usual hour-long tokens, so the tests that need other lifetimes are skipped (`ignore`).
 */
export const mintsTokens = Boolean(Deno.env.get("SUPABASE_JWT_SECRET"));

/**
 * Whether Realtime is the local endpoint (local/realtime), as when `npm test` runs its own stack
 * (READSYNC_LOCAL_REALTIME). Tests that start an endpoint of their own — to kill and restart it, to
 * run it with other settings or to read its counters — test that stand-in, not the Realtime of the
 * stack the suite is pointed at, so against a real stack they are skipped (`ignore`).
 */
export const localRealtime = Deno.env.get("READSYNC_LOCAL_REALTIME") !== "0";

export function testEnv(): TestEnv {
  const need = (name: string) => {
    const value = Deno.env.get(name);
    if (!value) throw new Error(`${name} is not set: run the tests through \`npm test\` (see README.md)`);
    return value;
  };
  return {
    url: need("SUPABASE_URL"),
    anonKey: need("SUPABASE_ANON_KEY"),
    serviceRoleKey: need("SUPABASE_SERVICE_ROLE_KEY"),
    dbUrl: need("SUPABASE_DB_URL"),
    jwtSecret: Deno.env.get("SUPABASE_JWT_SECRET") || undefined,
  };
}

/** A superuser (or service) connection to the test database; close it with `await sql.end()`. */
export function adminSql(options: postgres.Options<Record<string, never>> = {}): postgres.Sql {
  return postgres(testEnv().dbUrl, { max: 4, onnotice: () => {}, ...options });
}

export interface TestUser {
  id: string;
  email: string;
  accessToken: string;
  /** A fresh access token for the same user (local: minted; real stack: a new sign-in). */
  newAccessToken(expiresInSeconds?: number): Promise<string>;
  /** supabase-js client acting as this user (no session persistence, no auto refresh). */
  client: SupabaseClient;
}

export interface CreateUserOptions {
  /** Lifetime of the first access token (local stack only). */
  expiresInSeconds?: number;
}

export async function createTestUser(options: CreateUserOptions = {}): Promise<TestUser> {
  const env = testEnv();
  const email = `reader-${crypto.randomUUID()}@readsync.test`;
  let id: string;
  let newAccessToken: (expiresInSeconds?: number) => Promise<string>;

  if (env.jwtSecret) {
    const sql = adminSql({ max: 1 });
    try {
      [{ id }] = await sql<{ id: string }[]>`insert into auth.users (email) values (${email}) returning id`;
    } finally {
      await sql.end();
    }
    newAccessToken = (expiresInSeconds = 3600) =>
      mintUserAccessToken(id, { email, expiresInSeconds, secret: env.jwtSecret });
  } else {
    const admin = createClient(env.url, env.serviceRoleKey, {
      auth: { persistSession: false, autoRefreshToken: false },
    });
    const password = `pw-${crypto.randomUUID()}`;
    const created = await admin.auth.admin.createUser({ email, password, email_confirm: true });
    if (created.error) throw created.error;
    id = created.data.user.id;
    newAccessToken = async () => {
      const anon = createClient(env.url, env.anonKey, {
        auth: { persistSession: false, autoRefreshToken: false },
      });
      const { data, error } = await anon.auth.signInWithPassword({ email, password });
      if (error) throw error;
      return data.session.access_token;
    };
  }

  const accessToken = await newAccessToken(options.expiresInSeconds);
  const client = createClient(env.url, env.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    global: { headers: { Authorization: `Bearer ${accessToken}` } },
  });
  client.realtime.setAuth(accessToken);
  return { id, email, accessToken, newAccessToken, client };
}
