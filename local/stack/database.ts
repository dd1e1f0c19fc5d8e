// Prepares a database for readsync: the local platform bootstrap (only where the database is not
// already a Supabase one), then our migrations, applied by the real Supabase CLI.

import { onCleanup } from "./cleanup.ts";
import { findPostgresBinaries } from "./system.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
export const BOOTSTRAP_SQL = `${ROOT}local/platform/bootstrap.sql`;
const SUPABASE_CLI = `${ROOT}node_modules/.bin/supabase`;

export function psqlPath(): string {
  const bins = findPostgresBinaries();
  return bins ? `${bins.binDir}/psql` : "psql";
}

/** Runs SQL through psql (stops on the first error) and returns its stdout. */
export async function psql(dbUrl: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(psqlPath(), {
    args: ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dbUrl, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`psql failed:\n${new TextDecoder().decode(out.stderr)}${stdout}`);
  return stdout;
}

export async function isSupabaseDatabase(dbUrl: string): Promise<boolean> {
  const out = await psql(dbUrl, [
    "-At",
    "-c",
    "select to_regprocedure('auth.uid()') is not null and to_regclass('realtime.messages') is not null",
  ]);
  return out.trim() === "t";
}

/** The platform surface (roles, auth, realtime) a plain PostgreSQL lacks; never touches Supabase. */
export async function applyBootstrapIfNeeded(dbUrl: string): Promise<boolean> {
  if (await isSupabaseDatabase(dbUrl)) return false;
  await psql(dbUrl, ["-f", BOOTSTRAP_SQL]);
  return true;
}

/** The Supabase CLI wants sslmode spelled out for a server without TLS. */
export function cliDbUrl(dbUrl: string): string {
  const url = new URL(dbUrl);
  if (!url.searchParams.has("sslmode") && ["127.0.0.1", "localhost"].includes(url.hostname)) {
    url.searchParams.set("sslmode", "disable");
  }
  return url.toString();
}

/**
 * Runs the Supabase CLI to its end. Its run is registered with the exit cleanups (cleanup.ts) while it runs:
 * a stop that comes meanwhile (SIGTERM, SIGHUP, a parent gone: what reaches this process alone, not the
 * CLI; npm start's `supabase db push` as its stack starts) ends it before the cluster it writes to is torn
 * down, instead of the stopped process exiting with the CLI (its node launcher and the binary that launcher
 * runs) still running against a database that is gone. In a process group of its own, killed whole.
 */
export async function supabaseCli(args: string[]): Promise<{ ok: boolean; output: string }> {
  const child = new Deno.Command(SUPABASE_CLI, {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { SUPABASE_TELEMETRY_DISABLED: "1", DO_NOT_TRACK: "1" },
    detached: true,
  }).spawn();
  const forget = onCleanup(async () => {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch { /* the group is gone */ }
    await child.status;
  });
  try {
    const out = await child.output();
    const output = (new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr)).trim();
    return { ok: out.success, output };
  } finally {
    forget();
  }
}

/** `supabase db push` against the database; throws with the CLI's own output on failure. */
export async function pushMigrations(dbUrl: string): Promise<string> {
  const { ok, output } = await supabaseCli([
    "db",
    "push",
    "--db-url",
    cliDbUrl(dbUrl),
    "--yes",
    "--include-all",
  ]);
  if (!ok) throw new Error(`supabase db push failed:\n${output}`);
  return output;
}
