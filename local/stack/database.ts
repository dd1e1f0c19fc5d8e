// Prepares a database for readsync: the local platform bootstrap (only where the database is not
// already a Supabase one), then our migrations, applied by the real Supabase CLI.

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

export async function supabaseCli(args: string[]): Promise<{ ok: boolean; output: string }> {
  const out = await new Deno.Command(SUPABASE_CLI, {
    args,
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { SUPABASE_TELEMETRY_DISABLED: "1", DO_NOT_TRACK: "1" },
  }).output();
  const output = (new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr)).trim();
  return { ok: out.success, output };
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
