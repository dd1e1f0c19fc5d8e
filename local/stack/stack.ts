// The local stack: PostgreSQL (or SUPABASE_DB_URL), platform bootstrap, migrations through the
// Supabase CLI, and the API server (functions + Realtime) on one port, as `supabase start` has them. A
// cluster of its own is copied from the migrated template when there is one for the current migrations
// (migrated_template.ts), and `supabase db push` still runs; else pushed in full, and the template made.

import { startApiServer } from "../api/server.ts";
import { onCleanup, runCleanups } from "./cleanup.ts";
import {
  applyBootstrapIfNeeded,
  type DatabaseConnection,
  databaseConnection,
  type DatabaseRelay,
  libpqTarget,
  openPostgresJsUrl,
  postgresJsUrl,
  pushMigrations,
  serverAt,
} from "./database.ts";
import { DEV_JWT_SECRET, devApiKeys } from "./keys.ts";
import { migratedTemplate } from "./migrated_template.ts";
import { type OnPhase, timed } from "./phases.ts";
import { ServerNotRestarted, startPostgres } from "./postgres.ts";

export interface LocalStack {
  /** The database's URL as given (SUPABASE_DB_URL) or made (the stack's own cluster): what psql and the CLI read. */
  dbUrl: string;
  /**
   * The connection the stack's processes make to dbUrl, decided once as psql makes it (databaseConnection:
   * its host or socket, password, TLS): what a postgres.js client of the stack's connects with
   * (`postgres({ ...stack.db.options })`).
   */
  db: DatabaseConnection;
  /**
   * A URL postgres.js reads into `db` (openPostgresJsUrl: the connection written as a URL, or a relay's on a
   * loopback port, open until stop()): what a process handed a URL is given as SUPABASE_DB_URL (npm test's
   * suites, the browser tests), instead of dbUrl, which postgres.js misreads (no password file, no PGSSLMODE,
   * a socket directory taken for a host name, libpq's parameters sent as server settings).
   */
  postgresJsDbUrl: string;
  apiUrl: string;
  jwtSecret: string;
  anonKey: string;
  serviceRoleKey: string;
  /** What `supabase db push` printed. */
  migrationLog: string;
  /** Whether this stack started its own PostgreSQL (false with SUPABASE_DB_URL). */
  ownsDatabase: boolean;
  /**
   * The migrated template (migrated_template.ts): "copied" (the cluster was copied from it; the push found
   * every migration applied), "made" (pushed in full, then made from this cluster), null (neither: not an own
   * cluster, templates off, another start made it first, or it could not be made: the log says why).
   */
  migratedTemplate: "copied" | "made" | null;
  /** Whether this stack serves the functions and Realtime itself (false with SUPABASE_URL). */
  ownsApi: boolean;
  stop(): Promise<void>;
}

export interface LocalStackOptions {
  /** API port (functions + Realtime). 0 picks a free port. `supabase start` uses 54321. */
  apiPort?: number;
  /** The IPv4 address the API listens on: 127.0.0.1 unless given (ApiContext.hostname; READSYNC_API_HOST). */
  apiHost?: string;
  /** Database port when the stack starts its own PostgreSQL. 0 picks a free port. */
  dbPort?: number;
  log?: (line: string) => void;
  /** Start PostgreSQL with its durable defaults (see startPostgres); the benchmark's durable pass. */
  durable?: boolean;
  /**
   * Ignore SUPABASE_DB_URL, SUPABASE_URL, SUPABASE_JWT_SECRET and the key variables: always start
   * an own database and API with development keys (`npm start`, which also inserts a demo user:
   * never into a database someone's shell happens to point at).
   */
  ownStackOnly?: boolean;
  /**
   * Told how long each step of the start took: the database's, bootstrap, migrations, the API's (the
   * benchmark's cold-start phases: local/stack/phases.ts).
   */
  onPhase?: OnPhase;
}

/** The variables that point the stack at an existing Supabase database or API (tests, bench). */
export const EXTERNAL_TARGET_VARIABLES = [
  "SUPABASE_DB_URL",
  "SUPABASE_URL",
  "SUPABASE_JWT_SECRET",
  "SUPABASE_ANON_KEY",
  "SUPABASE_SERVICE_ROLE_KEY",
] as const;

/**
 * What the progress function also reads from its environment (shared/progress/server.ts). The
 * local gateway runs functions in this process, so a stack of its own must not inherit them from
 * the shell (a PROGRESS_DB_URL exported for a hosted pooler would send its writes there).
 */
export const FUNCTION_TARGET_VARIABLES = [
  "PROGRESS_DB_URL",
  "SUPABASE_JWKS",
  "SUPABASE_JWKS_URL",
  "JWT_SECRET",
  "SUPABASE_INTERNAL_JWT_SECRET",
] as const;

export async function startLocalStack(options: LocalStackOptions = {}): Promise<LocalStack> {
  const log = options.log ?? console.log;
  const onPhase = options.onPhase;
  const env = (name: (typeof EXTERNAL_TARGET_VARIABLES)[number]) =>
    options.ownStackOnly ? undefined : Deno.env.get(name);
  const externalDb = env("SUPABASE_DB_URL");
  let dbUrl: string;
  let stopDb = async () => {};
  let pg: Awaited<ReturnType<typeof startPostgres>> | null = null;
  const migrated = migratedTemplate();
  /** The stack's URL for postgres.js clients (postgresJsDbUrl), closed by stop() or a start that fails. */
  let clientsDb: DatabaseRelay | null = null;
  let forgetClientsDb = () => {};
  const closeClientsDb = async () => {
    forgetClientsDb();
    const relay = clientsDb;
    clientsDb = null;
    await relay?.close();
  };
  if (externalDb) {
    dbUrl = externalDb;
    // Where libpq connects (a socket directory, ?host=, a list of hosts), not the URL's host part alone.
    log(`database: SUPABASE_DB_URL (${serverAt(libpqTarget(new URL(externalDb)))})`);
  } else {
    // Durable or not, the same template: durability is the server's command-line settings (postgres.ts),
    // not part of the data directory the template holds.
    pg = await startPostgres({
      port: options.dbPort || undefined,
      log,
      durable: options.durable,
      onPhase,
      derivedTemplate: migrated.derived,
    });
    dbUrl = pg.url;
    stopDb = pg.stop;
    log(`database: local PostgreSQL on port ${pg.port}`);
  }
  try {
    if (await timed(onPhase, "platform bootstrap (psql)", () => applyBootstrapIfNeeded(dbUrl))) {
      log("platform bootstrap applied (local/platform/bootstrap.sql)");
    }
    const migrationLog = await timed(onPhase, "migrations (supabase db push)", () => pushMigrations(dbUrl));
    for (const line of migrationLog.split("\n")) {
      if (/Applying migration|up to date/i.test(line)) log(`supabase db push: ${line.trim()}`);
    }
    // Made from this cluster before the API starts (no replication slot, no Realtime state), once the push
    // has applied every migration. A template that cannot be made only costs the next start its push.
    let madeTemplate = false;
    if (pg && migrated.missing()) {
      const cluster = pg;
      madeTemplate = await timed(
        onPhase,
        "database: migrated template made (fast shutdown, copy, restart)",
        () => migrated.makeFrom(cluster),
      ).catch((error) => {
        if (error instanceof ServerNotRestarted) throw error;
        log(`database: no migrated template made (${error instanceof Error ? error.message : error})`);
        return false;
      });
      if (madeTemplate) log("database: migrated template made (the next start copies it)");
    }
    const jwtSecret = env("SUPABASE_JWT_SECRET") ?? DEV_JWT_SECRET;
    const { anonKey, serviceRoleKey } = await timed(onPhase, "API keys signed", () => devApiKeys(jwtSecret));
    // The connection Realtime, its WAL reader, the functions and the stack's other clients make, decided
    // once as the push's was: the password, TLS, host or socket psql's would use (DatabaseConnection).
    const db = await timed(
      onPhase,
      "database connection (as psql makes it)",
      () => databaseConnection(dbUrl),
    );
    clientsDb = await openPostgresJsUrl(db);
    const postgresJsDbUrl = clientsDb.url;
    // A relay (no URL says the connection) is closed by a stop; a URL needs no closing.
    if (postgresJsUrl(db) === null) forgetClientsDb = onCleanup(closeClientsDb);
    const externalApi = env("SUPABASE_URL");
    let apiUrl: string;
    let closeApi = async () => {};
    if (externalApi) {
      // A real stack (`supabase start` + `supabase functions serve`, or a project): use its API.
      apiUrl = externalApi.replace(/\/$/, "");
      log(`api: SUPABASE_URL (${apiUrl})`);
    } else {
      // The local gateway runs the functions in this process: they must not read settings meant for a
      // deployed function from the shell (PROGRESS_DB_URL would send their writes elsewhere).
      const inherited = FUNCTION_TARGET_VARIABLES.filter((name) => Deno.env.get(name));
      if (inherited.length > 0) {
        log(`${inherited.join(", ")} set: the local functions ignore them (settings of a deployed function)`);
      }
      for (const name of FUNCTION_TARGET_VARIABLES) Deno.env.delete(name);
      // 0: the server binds a port the OS picks (no pick-then-bind race with other processes).
      const api = await startApiServer({
        port: options.apiPort ?? 0,
        hostname: options.apiHost,
        dbUrl,
        db,
        jwtSecret,
        anonKey,
        serviceRoleKey,
        onPhase,
      });
      apiUrl = api.url;
      // Registered while it serves, as startPostgres registers its cluster's stop (newest first: the
      // API closes before the database it uses stops), and removed again by the stack's stop once the API
      // has closed (a run-down that begins meanwhile still finds it and waits for the same close).
      let closing: Promise<void> | null = null;
      const close = () =>
        closing ??= (async () => {
          try {
            await api.close();
          } finally {
            forgetClose();
          }
        })();
      const forgetClose = onCleanup(close);
      closeApi = close;
    }
    const stop = async () => {
      await closeApi();
      await closeClientsDb();
      await stopDb();
    };
    return {
      dbUrl,
      db,
      postgresJsDbUrl,
      apiUrl,
      jwtSecret,
      anonKey: env("SUPABASE_ANON_KEY") ?? anonKey,
      serviceRoleKey: env("SUPABASE_SERVICE_ROLE_KEY") ?? serviceRoleKey,
      migrationLog,
      ownsDatabase: !externalDb,
      migratedTemplate: migrated.copied() ? "copied" : madeTemplate ? "made" : null,
      ownsApi: !externalApi,
      stop,
    };
  } catch (error) {
    await closeClientsDb();
    await stopDb();
    throw error;
  }
}

export { runCleanups };
