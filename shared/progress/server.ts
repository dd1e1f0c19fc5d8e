// The progress handler wired to the environment an edge function runs in:
//   SUPABASE_DB_URL                 Postgres (Supabase injects it into every function)
//   SUPABASE_JWT_SECRET | JWT_SECRET HS256 secret (local stack; on a hosted project secrets may not
//                                   start with SUPABASE_, so a legacy-secret project sets JWT_SECRET)
//   SUPABASE_JWKS                   the project's JWKS as JSON (hosted functions get it)
//   SUPABASE_JWKS_URL | SUPABASE_URL  where to fetch the JWKS (default <SUPABASE_URL>/auth/v1/.well-known/jwks.json)
//   PROGRESS_DB_POOL_MAX            connections per isolate: a whole number from 1 to 100 in decimal
//                                   digits (default 5; empty is not set; not "0x10", "1e1", "007" or
//                                   "5.0"); another value throws when the handler is made (the
//                                   function does not boot) or, set later, at its first request
// Everything is read per request and rebuilt only when a value changes, so a function isolate
// survives secret rotation and the local gateway can load the module before its env is final.

import { createJwtVerifier, type JwtVerifier } from "../auth/jwt.ts";
import { HttpError } from "../http/errors.ts";
import { checkEnvNumber, type NumberRule } from "../options/checkOptions.ts";
import { createProgressHandler, type LogSink } from "./handler.ts";
import { connectionPacing, createProgressPool, type ProgressPool } from "./pool.ts";
import { createPostgresProgressStore, type PostgresStoreOptions, type ProgressStore } from "./store.ts";

export interface EnvLike {
  get(name: string): string | undefined;
}

/**
 * PROGRESS_DB_POOL_MAX, the database connections one isolate's pool may hold: a whole number from 1
 * to 100 (PostgreSQL's default max_connections; every isolate holds a pool of its own, so a larger one
 * could never be filled, and postgres.js makes that many connection objects up front).
 */
export const DB_POOL_MAX: NumberRule = { min: 1, max: 100, whole: true };
export const DEFAULT_DB_POOL_MAX = 5;

/** PROGRESS_DB_POOL_MAX as `env` sets it, or the default; a value DB_POOL_MAX does not take throws. */
function dbPoolMaxOf(env: EnvLike): number {
  const text = env.get("PROGRESS_DB_POOL_MAX");
  return checkEnvNumber(text, DB_POOL_MAX, "createProgressHandlerFromEnv", "PROGRESS_DB_POOL_MAX") ??
    DEFAULT_DB_POOL_MAX;
}

/**
 * How long a pool replaced because a call gave up waiting for its BEGIN (replacePool) gives the transactions
 * under way on its other connections to end (each bounded by the store's lock and statement timeouts, 2 s and
 * 8 s by default) before they are destroyed (a 503 for those calls). Its end finishes as soon as none is
 * under way (pool.ts: no socket of it open), and close() brings it forward to its own CLOSE_GRACE_S.
 */
const RETIRED_POOL_GRACE_S = 10;

/**
 * How long close() (and a change of the database settings, for the pool made for the old ones) gives the
 * transactions under way to end: on the current pool, and on every pool replaced before and still ending,
 * which would otherwise have kept close() waiting for what was left of its RETIRED_POOL_GRACE_S.
 */
const CLOSE_GRACE_S = 5;

/** The handler, plus close() to end its database pool (tests, graceful shutdown). */
export type ProgressServerHandler = ((req: Request) => Promise<Response>) & { close(): Promise<void> };

export function createProgressHandlerFromEnv(
  env: EnvLike = Deno.env,
  options: {
    log?: LogSink;
    functionName?: string;
    bodyIdleTimeoutMs?: number;
    bodyTotalTimeoutMs?: number;
    /** The store's bounds (PostgresStoreOptions: lock, statement and BEGIN timeouts, attempts). */
    store?: Omit<PostgresStoreOptions, "replacePool">;
  } = {},
): ProgressServerHandler {
  // Checked now, so a bad value stops the function from booting (its log says why) instead of every
  // request failing: it was taken as 5 when not a number or 0, and postgres.js threw "Invalid array
  // length" on every request for -1, 2.5 or Infinity (a 500 each). Read again per request below.
  dbPoolMaxOf(env);
  let dbKey = "";
  let store: ProgressStore | null = null;
  let pool: ProgressPool | null = null;
  // Pools replaced or ended while the handler lives, until their end() has resolved: close() ends them within
  // its own grace and waits for them.
  const ending = new Map<ProgressPool, Promise<void>>();
  let verifierKey = "";
  let verifier: JwtVerifier | null = null;

  // Ends `old` within `timeoutS`; for a pool ending already, brings its end forward to that (pool.ts) and
  // keeps the one entry its first call made, which removes itself once the end has finished. Before, each
  // call set a new entry and chained one more removal on the same end.
  function endPool(old: ProgressPool, timeoutS: number): Promise<void> {
    const known = ending.get(old);
    if (known) {
      void old.end(timeoutS).catch(() => {});
      return known;
    }
    const ended = old.end(timeoutS).catch(() => {});
    ending.set(old, ended);
    void ended.then(() => ending.delete(old));
    return ended;
  }

  function currentStore(): ProgressStore {
    // PROGRESS_DB_URL (a secret you set) wins: on a hosted project SUPABASE_DB_URL is the direct
    // connection and names starting with SUPABASE_ are reserved, while Supabase recommends the
    // transaction pooler (port 6543) for functions, whose isolates each hold a pool of their own.
    const url = env.get("PROGRESS_DB_URL") || env.get("SUPABASE_DB_URL");
    if (!url) {
      throw new HttpError(500, "internal_error", "neither PROGRESS_DB_URL nor SUPABASE_DB_URL is set");
    }
    // Set to a bad value after the handler was made (the environment changed): this request's 500
    // internal_error, the error in its request_failed log line, as for a missing URL; no pool is made.
    let max: number;
    try {
      max = dbPoolMaxOf(env);
    } catch (error) {
      throw new HttpError(500, "internal_error", (error as Error).message, { cause: error });
    }
    const key = `${url}\n${max}`;
    if (!store || key !== dbKey) {
      const old = pool;
      // One pacing for the target, across the pools made for it (pool.ts): a pool made anew while the
      // server refuses connections waits its turn as the stuck one did.
      const pacing = connectionPacing(max);
      const makePool = () =>
        createProgressPool(url, {
          max,
          // Works behind Supavisor in transaction mode too (no named prepared statements). A cancel request
          // (a client that left, store.ts) passes through Supavisor only while the transaction is open and
          // is not ordered with the function's next statement there (README, "A client that leaves"); each
          // request is one transaction, so whatever it meets commits whole or not at all. Unprepared, each
          // statement takes two round trips (Parse and Describe, then Bind and Execute), between which the
          // backend ignores a cancel request: the store sends one that came then again (sendCancel).
          // This pool is its store's alone (ConnectionTurns in store.ts): nothing else here queries it.
          prepare: false,
          idle_timeout: 20,
          connect_timeout: 5,
          onnotice: () => {},
          connection: { application_name: "readsync-progress" },
        }, pacing);
      const made = makePool();
      pool = made;
      const madeStore = createPostgresProgressStore(made.sql, {
        ...options.store,
        // A call gave up waiting for its BEGIN: the pool is stuck (a connection reopening again and again
        // for a startup the server refuses, or waiting out a reconnect backoff). Its calls go to a new pool
        // from now on, and the stuck one ends (pool.ts: no socket opened for it again, its queued BEGINs
        // never sent), its transactions under way given RETIRED_POOL_GRACE_S to end as they would.
        // A store replaced meanwhile (the environment changed, or close()) keeps its pool, ending already.
        replacePool: (stuck) => {
          const stuckPool = pool;
          if (store !== madeStore || !stuckPool || stuckPool.sql !== stuck) return stuck;
          pool = makePool();
          endPool(stuckPool, RETIRED_POOL_GRACE_S);
          return pool.sql;
        },
      });
      store = madeStore;
      dbKey = key;
      if (old) endPool(old, CLOSE_GRACE_S);
    }
    return store;
  }

  function currentVerifier(): JwtVerifier {
    // SUPABASE_INTERNAL_JWT_SECRET: what `supabase functions serve` (CLI 2.x) sets for the local secret.
    const secret = env.get("SUPABASE_JWT_SECRET") || env.get("JWT_SECRET") ||
      env.get("SUPABASE_INTERNAL_JWT_SECRET") || undefined;
    const jwks = env.get("SUPABASE_JWKS") || undefined;
    const base = env.get("SUPABASE_URL");
    const jwksUrl = env.get("SUPABASE_JWKS_URL") ||
      (base ? `${base.replace(/\/$/, "")}/auth/v1/.well-known/jwks.json` : undefined);
    const key = JSON.stringify([secret, jwks, jwksUrl]);
    if (!verifier || key !== verifierKey) {
      if (!secret && !jwks && !jwksUrl) {
        throw new HttpError(500, "internal_error", "No JWT verification key configured");
      }
      let parsedJwks: string | undefined = jwks;
      try {
        if (jwks) JSON.parse(jwks);
      } catch {
        parsedJwks = undefined; // a broken SUPABASE_JWKS falls back to the URL
      }
      verifier = createJwtVerifier({ secret, jwks: parsedJwks, jwksUrl, audience: "authenticated" });
      verifierKey = key;
    }
    return verifier;
  }

  const handler = createProgressHandler({
    verifier: currentVerifier,
    store: currentStore,
    log: options.log,
    functionName: options.functionName,
    bodyIdleTimeoutMs: options.bodyIdleTimeoutMs,
    bodyTotalTimeoutMs: options.bodyTotalTimeoutMs,
  });
  return Object.assign(handler, {
    close: async () => {
      const open = pool;
      pool = null;
      store = null;
      dbKey = "";
      if (open) endPool(open, CLOSE_GRACE_S);
      // A pool replaced earlier gets no longer than the current one: what its end had left is cut to this.
      for (const retired of ending.keys()) endPool(retired, CLOSE_GRACE_S);
      await Promise.all(ending.values());
    },
  });
}
