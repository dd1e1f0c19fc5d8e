// 1. Write path: upserts/s through the full path (as `authenticated` with RLS, the stamp trigger and
// the broadcast trigger writing a realtime.messages row) vs a bare table of the same shape (same
// columns, checks, primary key and indexes; no triggers, no RLS, no foreign key), with pgbench.

import { benchUidSql, ensureBenchUsers } from "../lib/db.ts";
import { type PgbenchResult, runPgbench } from "../lib/pgbench.ts";
import { ratio, type SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";

const USERS = 1000;
const SERIES = 20;

const uid = benchUidSql("cast(:u as int)");
const vars = `\\set u random(1, :users)
\\set s random(1, :series)
\\set ch random(0, 100000)
`;
const upsert = (table: string) =>
  `insert into ${table} as p
  (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
values (${uid}, 's-' || :s, :ch, :ch, :ch / 100000.0, false, 'dev-' || :client_id, clock_timestamp())
on conflict (user_id, series_id) do update
  set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
      cleared = excluded.cleared, device_id = excluded.device_id, updated_at = excluded.updated_at
  where (excluded.updated_at, excluded.device_id) > (p.updated_at, p.device_id);
`;
// What an API request does: one transaction, role and verified claims set locally (as PostgREST and
// the edge function do), then the write.
const impersonate = `select set_config('role', 'authenticated', true),
       set_config('request.jwt.claims', '{"sub":"' || ${uid}::text || '","role":"authenticated"}', true);
`;

export const SCRIPTS = {
  bare: vars + upsert("bench.progress_bare"),
  full: vars + "begin;\n" + impersonate + upsert("public.reading_progress") + "commit;\n",
};

/** Full path through public.write_reading_progress when that migration has landed. */
export async function writeFunctionScript(ctx: Ctx): Promise<{ script: string; signature: string } | null> {
  const fns = await ctx.sql<{ sig: string; args: string }[]>`
    select p.oid::regprocedure::text as sig, pg_get_function_arguments(p.oid) as args
      from pg_proc p where p.pronamespace = 'public'::regnamespace and p.proname = 'write_reading_progress'`;
  if (fns.length === 0) return null;
  const { sig, args } = fns[0];
  // Map named parameters to values; unknown parameters get their default (skipped) or fail loudly.
  const values: Record<string, string> = {
    series_id: `'s-' || :s`,
    chapter: ":ch",
    page: ":ch",
    percentage: ":ch / 100000.0",
    cleared: "false",
    device_id: `'dev-' || :client_id`,
    updated_at: "clock_timestamp()",
    user_id: uid,
  };
  const named: string[] = [];
  for (const part of args.split(/,\s*(?![^()]*\))/)) {
    const m = part.trim().match(/^(?:in\s+)?(\w+)\s+(.+?)(\s+default\s+.+)?$/i);
    if (!m) continue;
    const [, name, , hasDefault] = m;
    const key = name.replace(/^(p_|_)/, "");
    if (values[key]) named.push(`${name} => ${values[key]}`);
    else if (!hasDefault) {
      throw new Error(`write_reading_progress: no bench value for parameter ${name} (${sig})`);
    }
  }
  return {
    signature: sig,
    script: vars + "begin;\n" + impersonate + `select public.write_reading_progress(${named.join(", ")});\n` +
      "commit;\n",
  };
}

export async function prepareWriteTables(ctx: Ctx): Promise<void> {
  const { sql } = ctx;
  await ensureBenchUsers(sql, 1, USERS);
  await sql.unsafe(`
    create schema if not exists bench;
    create table if not exists bench.progress_bare
      (like public.reading_progress including defaults including constraints including indexes);
    truncate bench.progress_bare;
    insert into bench.progress_bare (user_id, series_id, device_id, updated_at)
      select ${benchUidSql("u")}, 's-' || s, 'prefill', now() - interval '1 day'
        from generate_series(1, ${USERS}) u, generate_series(1, ${SERIES}) s;
    insert into public.reading_progress (user_id, series_id, device_id, updated_at)
      select ${benchUidSql("u")}, 's-' || s, 'prefill', now() - interval '1 day'
        from generate_series(1, ${USERS}) u, generate_series(1, ${SERIES}) s
      on conflict do nothing;
  `);
  for (const t of ["bench.progress_bare", "public.reading_progress"]) await sql.unsafe(`vacuum analyze ${t}`);
}

async function between(ctx: Ctx): Promise<void> {
  // Same starting point for every run: no dead tuples, and (on our own throwaway database) an empty
  // realtime.messages, which Supabase partitions by day and prunes.
  if (ctx.stack.ownsDatabase) await ctx.sql.unsafe(`truncate realtime.messages`);
  for (const t of ["bench.progress_bare", "public.reading_progress"]) await ctx.sql.unsafe(`vacuum ${t}`);
}

export async function runVariants(
  ctx: Ctx,
  scripts: Record<string, string>,
  clients: number,
): Promise<Record<string, PgbenchResult>> {
  const names = Object.keys(scripts);
  const runs: Record<string, PgbenchResult[]> = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < ctx.opts.pgbenchRepeats; r++) {
    // A B C, then C B A: drift on a shared machine hits every variant alike.
    for (const name of r % 2 === 0 ? names : [...names].reverse()) {
      await between(ctx);
      const result = await runPgbench({
        dbUrl: ctx.stack.dbUrl,
        script: scripts[name],
        clients,
        seconds: ctx.opts.pgbenchSeconds,
        vars: { users: USERS, series: SERIES },
      });
      ctx.log(`write ${name} c=${clients}: ${result.tps.toFixed(0)} tps (avg ${result.latencyAvgMs} ms)`);
      runs[name].push(result);
    }
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return Object.fromEntries(names.map((n) => {
    const rs = runs[n];
    return [n, {
      ...rs[0],
      tps: mean(rs.map((x) => x.tps)),
      transactions: rs.reduce((a, x) => a + x.transactions, 0),
      failed: rs.reduce((a, x) => a + x.failed, 0),
      latencyAvgMs: mean(rs.map((x) => x.latencyAvgMs)),
      runs: rs.map((x) => x.tps),
    }];
  }));
}

export async function writeSection(ctx: Ctx): Promise<SectionResult> {
  const section: SectionResult = {
    id: "write",
    title: "1. Write path: upserts/s, full path vs bare table (pgbench)",
    status: "ok",
    rows: [],
    notes: [],
  };
  await prepareWriteTables(ctx);
  const scripts: Record<string, string> = { ...SCRIPTS };
  const fn = await writeFunctionScript(ctx);
  if (fn) scripts.function = fn.script;
  else {section.notes.push(
      "public.write_reading_progress does not exist yet: only the direct upsert was measured.",
    );}

  const details: Record<string, unknown> = {};
  for (const clients of ctx.opts.writeClients) {
    const res = await runVariants(ctx, scripts, clients);
    details[`c${clients}`] = res;
    const bare = res.bare.tps;
    const add = (name: string, label: string) => {
      const r = ratio(res[name].tps, bare);
      section.rows.push({
        metric: `${label}, ${clients} client${clients > 1 ? "s" : ""}`,
        value: res[name].tps,
        unit: "tps",
        baseline: bare,
        baselineLabel: "bare",
        ratio: r,
        target: "≥ 0.5× bare",
        met: r == null ? null : r >= 0.5,
      });
      if (res[name].failed > 0) {
        section.notes.push(`${label} at ${clients} clients: ${res[name].failed} failed transactions`);
      }
    };
    add("full", "full path, direct upsert");
    if (scripts.function) add("function", `full path, ${fn!.signature.replace(/\(.*/, "()")}`);
  }
  section.notes.push(
    `pgbench -M prepared -T ${ctx.opts.pgbenchSeconds} × ${ctx.opts.pgbenchRepeats} runs per variant (A B, B A order, mean tps), ` +
      `-j = min(clients, ${navigator.hardwareConcurrency}); ${USERS} users × ${SERIES} series prefilled, so every upsert ` +
      `is a last-write-wins update of a random (user, series).`,
    "Full path = one transaction: set_config('role','authenticated') + request.jwt.claims, the LWW upsert on " +
      "public.reading_progress (RLS policies, BEFORE stamp trigger, AFTER broadcast trigger → realtime.messages row + " +
      "local NOTIFY), commit. Bare = the same upsert as one autocommit statement on bench.progress_bare " +
      "(LIKE reading_progress INCLUDING DEFAULTS, CONSTRAINTS, INDEXES: same columns, checks, PK and indexes; no trigger, " +
      "RLS or foreign key), as postgres.",
    "The throwaway cluster runs with fsync=off, synchronous_commit=off, full_page_writes=off (local/stack/postgres.ts): " +
      "commit cost is not disk-bound here, which makes the per-row CPU of triggers/RLS weigh more than on a durable server.",
  );
  section.details = details;
  return section;
}
