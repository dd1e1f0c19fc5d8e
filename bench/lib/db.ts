// Database helpers shared by the sections: bench users, psql/pgbench binaries, machine facts.

import postgres from "postgres";
import { findPostgresBinaries } from "../../local/stack/system.ts";
import { mintUserAccessToken } from "../../local/stack/keys.ts";

/** Bench users have ids b0000000-0000-4000-8000-<12 hex digits of n>: easy to find and remove. */
export const BENCH_UID_PREFIX = "b0000000-0000-4000-8000-";
export const benchUserId = (n: number) => `${BENCH_UID_PREFIX}${n.toString(16).padStart(12, "0")}`;
/** The same id as a SQL expression over an integer expression. */
export const benchUidSql = (intExpr: string) =>
  `('${BENCH_UID_PREFIX}' || lpad(to_hex(${intExpr}), 12, '0'))::uuid`;

export function connect(dbUrl: string, options: postgres.Options<Record<string, never>> = {}): postgres.Sql {
  return postgres(dbUrl, { max: 4, onnotice: () => {}, prepare: true, ...options });
}

export function pgBin(name: string): string {
  const bins = findPostgresBinaries();
  return bins ? `${bins.binDir}/${name}` : name;
}

/** Creates bench users lo..hi (inclusive) in auth.users if missing. */
export async function ensureBenchUsers(sql: postgres.Sql, lo: number, hi: number): Promise<void> {
  if (hi < lo) return;
  await sql.unsafe(`
    insert into auth.users (id, email)
    select ${benchUidSql("n")}, 'bench-' || n || '@readsync.bench'
      from generate_series(${lo}::int, ${hi}::int) n
    on conflict do nothing`);
}

/** Removes every bench user (their progress rows go with them: on delete cascade). */
export async function removeBenchUsers(sql: postgres.Sql): Promise<void> {
  await sql.unsafe(`delete from auth.users where id::text like '${BENCH_UID_PREFIX}%'`);
  await sql.unsafe(`drop schema if exists bench cascade`);
}

export interface Machine {
  nproc: number;
  cpu: string;
  memoryGiB: number;
  kernel: string;
  pgVersion: string;
  pgSettings: Record<string, string>;
  deno: string;
  loadAverage: number[];
}

export async function machineFacts(sql: postgres.Sql): Promise<Machine> {
  const text = (path: string) => {
    try {
      return Deno.readTextFileSync(path);
    } catch {
      return "";
    }
  };
  const mem = Number(text("/proc/meminfo").match(/MemTotal:\s+(\d+)/)?.[1] ?? 0);
  const [{ version }] = await sql<{ version: string }[]>`select version()`;
  const settings = await sql<{ name: string; setting: string; unit: string | null }[]>`
    select name, setting, unit from pg_settings
     where name in ('shared_buffers', 'fsync', 'synchronous_commit', 'full_page_writes', 'wal_level',
                    'max_connections', 'work_mem', 'jit')`;
  return {
    nproc: navigator.hardwareConcurrency,
    cpu: text("/proc/cpuinfo").match(/model name\s*:\s*(.+)/)?.[1]?.trim() ?? "unknown",
    memoryGiB: Math.round((mem / 1024 / 1024) * 10) / 10,
    kernel: Deno.osRelease(),
    pgVersion: version.split(" on ")[0],
    pgSettings: Object.fromEntries(settings.map((s) => [s.name, s.setting + (s.unit ? ` ${s.unit}` : "")])),
    deno: Deno.version.deno,
    loadAverage: Deno.loadavg(),
  };
}

/** Access tokens for bench users lo..hi (created if missing), signed with the stack's JWT secret. */
export async function benchUserTokens(
  sql: postgres.Sql,
  jwtSecret: string,
  lo: number,
  hi: number,
): Promise<{ id: string; token: string }[]> {
  await ensureBenchUsers(sql, lo, hi);
  const out: { id: string; token: string }[] = [];
  for (let n = lo; n <= hi; n++) {
    const id = benchUserId(n);
    out.push({ id, token: await mintUserAccessToken(id, { secret: jwtSecret, expiresInSeconds: 4 * 3600 }) });
  }
  return out;
}
