// 1. Write path: upserts/s through the full path (as `authenticated` with RLS, the stamp trigger and
// the broadcast trigger writing a realtime.messages row) vs a bare table of the same shape (same
// columns, checks, primary key and indexes; no triggers, no RLS, no foreign key), with pgbench, plus
// the steps in between so the cost of each part is known.
//
// Like with like: every variant is the same request shape, one transaction in ONE round trip
// (pgbench pipeline mode: `select set_config(role), set_config(request.jwt.claims)` and the write,
// then one Sync), as PostgREST sets role and claims in one statement before the query. The bare
// variant sets the same settings (role = postgres, a no-op switch), so the only differences are the
// table, its triggers and RLS.

import { benchUidSql, connect, ensureBenchUsers } from "../lib/db.ts";
import { spawnStack } from "../lib/stack.ts";
import { type PgbenchResult, runPgbench } from "../lib/pgbench.ts";
import { median, ratio, type Row, type SectionResult } from "../lib/report.ts";
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
const callFunction = `select public.write_reading_progress('s-' || :s, :ch, :ch, :ch / 100000.0, false,
  'dev-' || :client_id, clock_timestamp());
`;
const settings = (role: string) =>
  `select set_config('role', '${role}', true),
       set_config('request.jwt.claims', '{"sub":"' || ${uid}::text || '","role":"authenticated"}', true);
`;
/** One transaction, one round trip: the statements between \startpipeline and \endpipeline share one Sync. */
const request = (role: string, write: string) =>
  `${vars}\\startpipeline\n${settings(role)}${write}\\endpipeline\n`;

export interface Variant {
  id: string;
  label: string;
  script: string;
  /** Trigger switches (only on the bench's own database); null = leave as migrated. */
  triggers: {
    /** The per-user write lock: a BEFORE … FOR EACH STATEMENT trigger (migration 20261207090000). */
    userLock: boolean;
    stamp: boolean;
    /**
     * The stamp as before migration 20261207224000: its INSERT branch reading the remembered deletion as
     * the writer, instead of the owner's trigger reading_progress_stamp_after_deletion (on with `stamp`).
     */
    stampInlineDeletionRead?: boolean;
    /** The reset rules' BEFORE triggers: four UPDATE (migrations 20261206100100, 20261206160000), one INSERT (20261207210000). */
    resetRules: boolean;
    broadcast: boolean;
    localNotify: boolean;
    broadcastDirect?: boolean;
  } | null;
}

const ALL_ON = { userLock: true, stamp: true, resetRules: true, broadcast: true, localNotify: true };

/** The reset rules' triggers: each behind a WHEN clause that asks `cleared` first (false on these writes). */
const RESET_RULE_TRIGGERS = [
  "reading_progress_reset_sent_with_position",
  "reading_progress_reset_superseded",
  "reading_progress_reset_marked_with_position",
  "reading_progress_reset_marked_zeroes_position",
  "reading_progress_reset_inserted_with_position",
];

/** From bare to full, one part added per step (the cumulative breakdown), then the API's function. */
export function variants(ownsDatabase: boolean, localNotify = true): Variant[] {
  const all: Variant[] = [
    {
      id: "bare",
      label: "bare table",
      script: request("postgres", upsert("bench.progress_bare")),
      triggers: null,
    },
    {
      id: "table",
      label: "+ reading_progress (FK), no triggers, no RLS",
      script: request("postgres", upsert("public.reading_progress")),
      triggers: { userLock: false, stamp: false, resetRules: false, broadcast: false, localNotify: false },
    },
    {
      id: "rls",
      label: "+ RLS (as authenticated)",
      script: request("authenticated", upsert("public.reading_progress")),
      triggers: { userLock: false, stamp: false, resetRules: false, broadcast: false, localNotify: false },
    },
    {
      id: "user_lock",
      label: "+ one user's writes serialized (statement trigger, advisory lock)",
      script: request("authenticated", upsert("public.reading_progress")),
      triggers: { userLock: true, stamp: false, resetRules: false, broadcast: false, localNotify: false },
    },
    {
      id: "stamp",
      label: "+ stamp trigger (and the replaced-tie log's WHEN test)",
      script: request("authenticated", upsert("public.reading_progress")),
      triggers: { userLock: true, stamp: true, resetRules: false, broadcast: false, localNotify: false },
    },
    {
      id: "stamp_inline_deletion_read",
      label:
        "  the stamp step, the deletion read in the stamp as the writer (before migration 20261207224000)",
      script: request("authenticated", upsert("public.reading_progress")),
      triggers: {
        userLock: true,
        stamp: true,
        stampInlineDeletionRead: true,
        resetRules: false,
        broadcast: false,
        localNotify: false,
      },
    },
    {
      id: "reset_rules",
      label: "+ the reset rules' five WHEN-guarded triggers (false on these writes)",
      script: request("authenticated", upsert("public.reading_progress")),
      triggers: { userLock: true, stamp: true, resetRules: true, broadcast: false, localNotify: false },
    },
    {
      id: "supabase",
      label: "+ broadcast trigger → realtime.messages row = full path as on Supabase",
      script: request("authenticated", upsert("public.reading_progress")),
      triggers: { userLock: true, stamp: true, resetRules: true, broadcast: true, localNotify: false },
    },
    {
      id: "supabase_direct",
      label: "  same, with the broadcast trigger calling realtime.send directly (broadcast_changes' payload)",
      script: request("authenticated", upsert("public.reading_progress")),
      triggers: {
        userLock: true,
        stamp: true,
        resetRules: true,
        broadcast: false,
        localNotify: false,
        broadcastDirect: true,
      },
    },
    {
      id: "full",
      label: "+ local NOTIFY (local stack only) = full path here",
      script: request("authenticated", upsert("public.reading_progress")),
      triggers: ALL_ON,
    },
    {
      id: "function",
      label: "full path through public.write_reading_progress() (what the API calls)",
      script: request("authenticated", callFunction),
      triggers: ALL_ON,
    },
  ];
  // Against someone else's database nothing is switched off: bare, full and the function only.
  if (!localNotify) {
    // No NOTIFY trigger (the local Realtime endpoint reads the WAL, as Supabase does): the full path
    // here is the full path as on Supabase.
    const full = all.find((v) => v.id === "full")!;
    full.label = "+ broadcast trigger → realtime.messages row = full path (as on Supabase; no local NOTIFY)";
    full.triggers = { userLock: true, stamp: true, resetRules: true, broadcast: true, localNotify: false };
    return (ownsDatabase ? all : all.filter((v) => ["bare", "full", "function"].includes(v.id)))
      .filter((v) => v.id !== "supabase")
      .map((v) => (ownsDatabase ? v : { ...v, triggers: null }));
  }
  return ownsDatabase ? all : all.filter((v) => ["bare", "full", "function"].includes(v.id))
    .map((v) => ({ ...v, triggers: null }));
}

export async function setTriggers(ctx: Ctx, t: Variant["triggers"]): Promise<void> {
  const s: NonNullable<Variant["triggers"]> = t ?? ALL_ON;
  const on = (b: boolean) => (b ? "enable" : "disable");
  const inline = s.stampInlineDeletionRead ?? false;
  await ctx.sql.unsafe(`
    alter table public.reading_progress ${on(s.userLock)} trigger reading_progress_serialize_user_writes;
    alter table public.reading_progress ${on(s.stamp && !inline)} trigger reading_progress_stamp;
    alter table public.reading_progress ${
    on(s.stamp && !inline)
  } trigger reading_progress_stamp_after_deletion;
    alter table public.reading_progress ${on(s.stamp && inline)} trigger bench_stamp_inline_deletion_read;
    -- Last-write-wins bookkeeping like the stamp: on and off with it (it only logs same-ms tie wins).
    alter table public.reading_progress ${on(s.stamp)} trigger reading_progress_log_replaced_tie;
    ${
    RESET_RULE_TRIGGERS.map((t) => `alter table public.reading_progress ${on(s.resetRules)} trigger ${t};`)
      .join("\n    ")
  }
    alter table public.reading_progress ${on(s.broadcast)} trigger reading_progress_broadcast;
    alter table public.reading_progress ${on(s.broadcastDirect ?? false)} trigger bench_broadcast_direct;
    do $$ begin
      -- bootstrap.sql no longer has it (the local Realtime endpoint reads the WAL): older databases only.
      if exists (select 1 from pg_trigger where tgname = 'local_notify_message'
                 and tgrelid = 'realtime.messages'::regclass) then
        alter table realtime.messages ${on(s.localNotify)} trigger local_notify_message;
      end if;
    end $$;`);
}

/**
 * An alternative broadcast trigger: the payload realtime.broadcast_changes builds, handed to
 * realtime.send directly (one subtransaction less per write than migration 012's trigger, which
 * calls broadcast_changes). Kept as a disabled trigger on the bench's own database, so both are
 * measured in the same run; it goes away with the bench schema (drop schema bench cascade). Beside
 * it, disabled too, the stamp as before migration 20261207224000 (step stamp_inline_deletion_read).
 */
export async function installDirectSendTrigger(ctx: Ctx): Promise<void> {
  await ctx.sql.unsafe(`
    create or replace function bench.reading_progress_broadcast_direct() returns trigger
    language plpgsql security definer set search_path = '' as $fn$
    begin
      perform realtime.send(
        jsonb_build_object('old_record', old, 'record', new, 'operation', tg_op, 'table', tg_table_name,
          'schema', tg_table_schema),
        tg_op, 'progress:' || coalesce(new.user_id, old.user_id)::text, true);
      return null;
    end;
    $fn$;
    drop trigger if exists bench_broadcast_direct on public.reading_progress;
    create trigger bench_broadcast_direct after insert or update or delete on public.reading_progress
      for each row execute function bench.reading_progress_broadcast_direct();
    alter table public.reading_progress disable trigger bench_broadcast_direct;
    -- The stamp as it was before migration 20261207224000 (step stamp_inline_deletion_read): its INSERT
    -- branch dates a new life after the remembered deletion itself, read as the writer.
    do $do$
    declare
      v_def text := pg_catalog.pg_get_functiondef('public.reading_progress_stamp()'::regprocedure);
      v_old text := v_def;
    begin
      v_def := replace(v_def, 'FUNCTION public.reading_progress_stamp()',
                       'FUNCTION bench.reading_progress_stamp_inline_deletion_read()');
      v_def := replace(v_def, 'new.created_at := new.synced_at;',
        'new.created_at := greatest(new.synced_at, (select (d.version ->> ''created_at'')::timestamptz'
        || ' + interval ''1 microsecond'' from public.reading_progress_deletions d'
        || ' where d.user_id = new.user_id and d.series_id = new.series_id));');
      if v_def = v_old or position('greatest(new.synced_at, (select' in v_def) = 0 then
        raise exception 'bench: the stamp''s INSERT dating (new.created_at := new.synced_at) was not found';
      end if;
      execute v_def;
    end
    $do$;
    drop trigger if exists bench_stamp_inline_deletion_read on public.reading_progress;
    create trigger bench_stamp_inline_deletion_read before insert or update on public.reading_progress
      for each row execute function bench.reading_progress_stamp_inline_deletion_read();
    alter table public.reading_progress disable trigger bench_stamp_inline_deletion_read;`);
}

/** The server's settings that decide what a commit costs, as "name=value, …". */
async function commitSettings(sql: Ctx["sql"]): Promise<string> {
  const [{ settings }] = await sql<{ settings: string }[]>`
    select string_agg(name || '=' || setting, ', ' order by name) as settings from pg_settings
     where name in ('fsync', 'synchronous_commit', 'full_page_writes', 'wal_writer_delay')`;
  return settings;
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

/** A variant's runs in one pass: means, and per run its tps and backend CPU µs per transaction. */
type Averaged = PgbenchResult & { runs: number[]; backendUsRuns?: number[] };

/**
 * One pgbench run of a variant from the same starting point (its triggers set, tables vacuumed). On
 * the bench's own cluster (its processes are this machine's) the result has the CPU time used per
 * transaction, read from /proc.
 */
export async function runOnce(
  ctx: Ctx,
  v: Variant,
  clients: number,
  seconds: number,
): Promise<PgbenchResult> {
  if (ctx.stack.ownsDatabase) await setTriggers(ctx, v.triggers);
  await between(ctx);
  return await runPgbench({
    dbUrl: ctx.stack.dbUrl,
    script: v.script,
    clients,
    seconds,
    vars: { users: USERS, series: SERIES },
    cpuOf: ctx.stack.ownsDatabase ? ctx.sql : undefined,
  });
}

async function runVariants(ctx: Ctx, list: Variant[], clients: number): Promise<Record<string, Averaged>> {
  const runs: Record<string, PgbenchResult[]> = Object.fromEntries(list.map((v) => [v.id, []]));
  try {
    for (let r = 0; r < ctx.opts.pgbenchRepeats; r++) {
      // A B C ..., then ... C B A: drift on a shared machine hits every variant alike.
      for (const v of r % 2 === 0 ? list : [...list].reverse()) {
        const result = await runOnce(ctx, v, clients, ctx.opts.pgbenchSeconds);
        const cpu = result.cpu
          ? `, backends ${result.cpu.backendUsPerTxn.toFixed(1)} µs CPU per transaction`
          : "";
        ctx.log(
          `write ${v.id} c=${clients}: ${result.tps.toFixed(0)} tps (avg ${result.latencyAvgMs} ms${cpu})`,
        );
        runs[v.id].push(result);
      }
    }
  } finally {
    if (ctx.stack.ownsDatabase) await setTriggers(ctx, null);
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  return Object.fromEntries(list.map((v) => {
    const rs = runs[v.id];
    return [v.id, {
      ...rs[0],
      tps: mean(rs.map((x) => x.tps)),
      transactions: rs.reduce((a, x) => a + x.transactions, 0),
      failed: rs.reduce((a, x) => a + x.failed, 0),
      latencyAvgMs: mean(rs.map((x) => x.latencyAvgMs)),
      runs: rs.map((x) => Math.round(x.tps)),
      ...(rs.every((x) => x.cpu)
        ? {
          cpu: {
            backendUsPerTxn: mean(rs.map((x) => x.cpu!.backendUsPerTxn)),
            clientUsPerTxn: mean(rs.map((x) => x.cpu!.clientUsPerTxn)),
            machineUsPerTxn: mean(rs.map((x) => x.cpu!.machineUsPerTxn)),
            stealUsPerTxn: mean(rs.map((x) => x.cpu!.stealUsPerTxn)),
          },
          backendUsRuns: rs.map((x) => Math.round(x.cpu!.backendUsPerTxn * 10) / 10),
        }
        : {}),
    }];
  }));
}

/** The variants that carry the target (≥ 0.5 × bare): the full path and the API's function. */
const TARGETED = new Set(["full", "supabase", "function"]);

interface Paired {
  /** tps per round, in round order, per variant id. */
  tps: Record<string, number[]>;
  /** Per targeted variant: its tps ÷ the bare tps of the same round. */
  ratios: Record<string, number[]>;
  failed: Record<string, number>;
}

/**
 * The target figures: bare and the targeted variants in short rounds, one run of each per round,
 * the order rotating every round (bare first, then second, ...). Each ratio divides a variant's run
 * by the bare run of its own round, a few seconds apart, so drift on a shared machine cancels out
 * within the pair; the median round decides and the spread of the rounds is shown with it.
 */
async function runPaired(ctx: Ctx, list: Variant[], clients: number): Promise<Paired> {
  const tps: Record<string, number[]> = Object.fromEntries(list.map((v) => [v.id, []]));
  const failed: Record<string, number> = Object.fromEntries(list.map((v) => [v.id, 0]));
  try {
    for (let r = 0; r < ctx.opts.pairedRounds; r++) {
      const k = r % list.length;
      for (const v of [...list.slice(k), ...list.slice(0, k)]) {
        const result = await runOnce(ctx, v, clients, ctx.opts.pairedSeconds);
        ctx.log(
          `write round ${r + 1}/${ctx.opts.pairedRounds} ${v.id} c=${clients}: ${result.tps.toFixed(0)} tps`,
        );
        tps[v.id].push(result.tps);
        failed[v.id] += result.failed;
      }
    }
  } finally {
    if (ctx.stack.ownsDatabase) await setTriggers(ctx, null);
  }
  const ratios = Object.fromEntries(
    list.filter((v) => v.id !== "bare").map((v) => [v.id, tps[v.id].map((t, i) => t / tps.bare[i])]),
  );
  return { tps, ratios, failed };
}

/** The target rows of one client count from interleaved rounds (see runPaired). */
function pairedRows(
  paired: Paired,
  list: Variant[],
  clients: number,
  prefix: string,
  baselineLabel: string,
  notes: string[],
): Row[] {
  const plural = clients > 1 ? "s" : "";
  return list.filter((v) => v.id !== "bare").map((v) => {
    const ratios = paired.ratios[v.id];
    const r = Math.round(median(ratios) * 100) / 100;
    const spread = `${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}`;
    if (paired.failed[v.id] > 0) {
      notes.push(`${prefix}${v.label} at ${clients} clients: ${paired.failed[v.id]} failed transactions`);
    }
    return {
      metric: `${prefix}${v.label.trim()}, ${clients} client${plural}: median of ${ratios.length} ` +
        `interleaved rounds (ratio per round ${spread})`,
      value: median(paired.tps[v.id]),
      unit: "tps",
      baseline: median(paired.tps.bare),
      baselineLabel,
      ratio: Number.isFinite(r) ? r : null,
      target: "≥ 0.5× bare",
      met: Number.isFinite(r) ? r >= 0.5 : null,
    };
  });
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
  if (ctx.stack.ownsDatabase) await installDirectSendTrigger(ctx);
  try {
    await measureWrites(ctx, section);
  } finally {
    if (ctx.stack.ownsDatabase) {
      await ctx.sql.unsafe(`drop trigger if exists bench_broadcast_direct on public.reading_progress`);
    }
  }
  if (ctx.stack.ownsDatabase) await measureDurable(ctx, section);
  return section;
}

/**
 * The same comparison on a second throwaway stack whose PostgreSQL keeps its durable defaults
 * (fsync, synchronous_commit and full_page_writes on), as a Supabase database runs: every commit
 * waits for its WAL flush, bare and full alike (group commit shares flushes between clients).
 * Bare, full path and the function only; the CPU-only pass above breaks the difference down.
 * Against SUPABASE_DB_URL there is no second pass: that server's own settings are the ones measured.
 */
async function measureDurable(ctx: Ctx, section: SectionResult): Promise<void> {
  ctx.log("write: durable pass (second stack, fsync + synchronous_commit on)");
  const stack = await spawnStack({ BENCH_DURABLE: "1" });
  const sql = connect(stack.postgresJsDbUrl, { max: 2 });
  const durable: Ctx = { ...ctx, stack, sql };
  try {
    await prepareWriteTables(durable);
    await installDirectSendTrigger(durable);
    const settings = await commitSettings(sql);
    const list = variants(true, false).filter((v) => v.id === "bare" || TARGETED.has(v.id));
    const details: Record<string, unknown> = {};
    for (const clients of ctx.opts.writeClients) {
      const paired = await runPaired(durable, list, clients);
      details[`c${clients}`] = paired;
      section.rows.push(
        ...pairedRows(paired, list, clients, "durable commit: ", "bare, durable, same rounds", section.notes),
      );
    }
    section.details = {
      ...(section.details as Record<string, unknown> | undefined),
      durable: { settings, ...details },
    };
    section.notes.push(
      `Durable commit rows: a second throwaway stack with PostgreSQL's (and Supabase's) durable defaults (${settings}), ` +
        "same scripts, tables and run order; every commit waits for its WAL flush on this machine's disk.",
    );
  } finally {
    await sql.end();
    await stack.stop();
  }
}

async function measureWrites(ctx: Ctx, section: SectionResult): Promise<void> {
  const [{ notify }] = await ctx.sql<{ notify: boolean }[]>`
    select exists (select 1 from pg_trigger where tgname = 'local_notify_message'
                   and tgrelid = 'realtime.messages'::regclass) as notify`;
  const list = variants(ctx.stack.ownsDatabase, notify);
  const ids = new Set(list.map((v) => v.id));
  const details: Record<string, unknown> = {};
  const costs: string[] = [];
  const cpuCosts: string[] = [];
  const directVsDocumented: string[] = [];
  const targets = list.filter((v) => v.id === "bare" || TARGETED.has(v.id));
  for (const clients of ctx.opts.writeClients) {
    const plural = clients > 1 ? "s" : "";
    // The breakdown (every step from bare to full, means of longer runs) only where the bench may
    // switch triggers, i.e. on its own throwaway database; elsewhere it would repeat the target runs.
    if (ctx.stack.ownsDatabase) {
      const res = await runVariants(ctx, list, clients);
      details[`c${clients}`] = res;
      const bare = res.bare.tps;
      for (const v of list) {
        if (v.id === "bare") continue;
        section.rows.push({
          metric: `  ${v.label}, ${clients} client${plural}`,
          value: res[v.id].tps,
          unit: "tps",
          baseline: bare,
          baselineLabel: "bare",
          ratio: ratio(res[v.id].tps, bare),
        });
        if (res[v.id].failed > 0) {
          section.notes.push(`${v.label} at ${clients} clients: ${res[v.id].failed} failed transactions`);
        }
      }
      if (res.supabase_direct) {
        const after = res.supabase ?? res.full; // the full path as on Supabase
        directVsDocumented.push(
          `${clients} client${plural}: ${res.supabase_direct.tps.toFixed(0)} → ${after.tps.toFixed(0)} tps ` +
            `(${ratio(res.supabase_direct.tps, bare)?.toFixed(2)}× → ${
              ratio(after.tps, bare)?.toFixed(2)
            }× bare)`,
        );
      }
      // Cost of each step in microseconds per transaction, differences between steps: the backends'
      // CPU time (what the step adds to the server's work), and the wall time (1e6 / tps).
      const steps = ["bare", "table", "rls", "user_lock", "stamp", "reset_rules", "supabase", "full"].filter((
        id,
      ) => ids.has(id));
      const stepCosts = (us: (id: string) => number) =>
        `bare ${us("bare").toFixed(0)} µs per transaction, then + ` +
        steps.slice(1).map((id, i) => `${id} ${(us(id) - us(steps[i])).toFixed(0)}`).join(", + ") +
        ` µs (full ${us("full").toFixed(0)} µs)`;
      if (steps.every((id) => res[id].cpu)) {
        cpuCosts.push(`${clients} client${plural}: ${stepCosts((id) => res[id].cpu!.backendUsPerTxn)}`);
      }
      costs.push(`${clients} client${plural}: ${stepCosts((id) => 1e6 / res[id].tps)}`);
    }
    const paired = await runPaired(ctx, targets, clients);
    details[`rounds_c${clients}`] = paired;
    section.rows.push(...pairedRows(paired, targets, clients, "", "bare, same rounds", section.notes));
  }
  if (directVsDocumented.length) {
    section.notes.push(
      "Broadcast trigger calling realtime.send directly → migration 012's trigger through " +
        `realtime.broadcast_changes (same payload; same run, full path as on Supabase): ${
          directVsDocumented.join("; ")
        }.`,
    );
  }
  if (cpuCosts.length) {
    section.notes.push(
      "Cost per step in CPU (the pgbench connections' backends, CPU µs per transaction from /proc/<pid>/schedstat, " +
        `means of the runs; what each step adds to the server's work): ${cpuCosts.join("; ")}.`,
    );
  }
  if (costs.length) {
    section.notes.push(
      "Cost per step in wall time (µs per transaction = 1e6 / tps, so with N clients it is the cost to the whole " +
        "system; at 1 client it also holds the round trip's two wake-ups, which vary from run to run by more than a " +
        `small step costs: read the CPU line for those; negative = within noise): ${costs.join("; ")}.`,
    );
  }
  section.notes.push(
    `Target rows (no indent, and the durable ones): ${ctx.opts.pairedRounds} rounds of -T ${ctx.opts.pairedSeconds} ` +
      "runs, one each of bare, the full path and the function per round, the order rotating every round; a round's " +
      "ratio is its run ÷ the bare run of the same round (seconds apart, so drift on the shared machine cancels within " +
      "the pair); value, baseline and ratio are medians over the rounds, the range of the rounds' ratios is in the row.",
    `Indented rows (the breakdown, on the bench's own database only): -T ${ctx.opts.pgbenchSeconds} × ` +
      `${ctx.opts.pgbenchRepeats} run${
        ctx.opts.pgbenchRepeats > 1 ? "s" : ""
      } per variant (forward, then reverse order; ` +
      "mean tps), ratios against the bare runs of the same pass.",
    `pgbench -M prepared, pipeline mode (one round trip per transaction), -j = min(clients, ${navigator.hardwareConcurrency}); ` +
      `${USERS} users × ${SERIES} series prefilled, so ` +
      "every upsert is a last-write-wins update of a random (user, series); realtime.messages truncated and both tables " +
      "vacuumed before every run.",
    "Every variant is one transaction: select set_config('role', …), set_config('request.jwt.claims', …) then the " +
      "write. Bare = the same upsert on bench.progress_bare (LIKE reading_progress INCLUDING DEFAULTS, CONSTRAINTS, " +
      "INDEXES: same columns, checks, PK and indexes; no trigger, RLS or foreign key) as postgres. The steps between " +
      "switch triggers with ALTER TABLE … DISABLE TRIGGER on the bench's own throwaway database (restored afterwards); " +
      "'no RLS' runs as postgres (superuser bypasses RLS).",
    "The broadcast row is inherent (Supabase's realtime.send writes it in a subtransaction, so a Realtime problem never " +
      "fails the write). A 'local NOTIFY' variant appears only on a stack whose bootstrap still has the old NOTIFY " +
      "trigger on realtime.messages (NOTIFY serialises committers); the local Realtime endpoint now reads the WAL.",
  );
  // What the server measured above really runs with (the throwaway cluster, or SUPABASE_DB_URL's own).
  const settings = await commitSettings(ctx.sql);
  const where = ctx.stack.ownsDatabase ? "the throwaway cluster, local/stack/postgres.ts" : "SUPABASE_DB_URL";
  section.notes.push(
    /=off/.test(settings)
      ? `Rows without "durable commit" ran with ${settings} (${where}): commit cost is not disk-bound, which ` +
        "makes the per-row CPU of triggers/RLS weigh more than on a durable server."
      : `Rows without "durable commit" ran with ${settings} (${where}): every commit waits for its WAL flush.`,
  );
  section.details = details;
}
