// 2. Reads at 1M and 10M generated rows spread over many users: EXPLAIN (ANALYZE, BUFFERS) of the
// three queries the API runs, each through its SQL function of migration 20261120090200 as
// `authenticated` (RLS on): point lookup (get_reading_progress), the library of a user with 1,000
// series sorted by recency (list_reading_progress) and changes since a cursor
// (reading_progress_changes). The functions' inner statements are not visible to a plain EXPLAIN of
// the call (a function with SET search_path is never inlined), so auto_explain reports them: with
// log_nested_statements and log_level = notice, the plan of every statement inside the function
// comes back to this client as a NOTICE, with ANALYZE and BUFFERS figures.
//
// Baseline (same run, same data): the function's main statement as a plain statement run as postgres
// (no function, no RLS), EXPLAIN (ANALYZE, BUFFERS). For changes since it is the rows side only: the
// function also merges the remembered deletions and builds the JSON answer. The function's time is
// EXPLAIN ANALYZE of the call in a run of its own, without auto_explain (whose nested logging would
// add the cost of formatting and sending the inner plan).

import postgres from "postgres";
import { benchUidSql, benchUserId } from "../lib/db.ts";
import { median, ratio, type Row, type SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";

/** Bench user numbers of this section (the write section uses 1..1000). */
const LIBRARY_USER = 0x100000;
const FILLER_FIRST_USER = 0x100001;
const LIBRARY_SERIES = 1000;
const SERIES_PER_FILLER_USER = 100;
/** Library rows are written in this many transactions, so "changes since" has real cursors. */
const LIBRARY_TRANSACTIONS = 10;
const LOAD_BATCH_USERS = 10_000; // 1M rows per load transaction
const RUNS = 7;

interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "Index Name"?: string;
  "Actual Total Time"?: number;
  "Actual Rows"?: number;
  "Shared Hit Blocks"?: number;
  "Shared Read Blocks"?: number;
  Plans?: PlanNode[];
  "Parent Relationship"?: string;
}

interface Measured {
  /** The inner statement's plan nodes, outermost first, init plans left out. */
  nodes: string[];
  scanNodes: string[];
  buffers: number;
  innerMs: number;
  /** The whole call (function + RLS) as the top-level statement. */
  totalMs: number;
  rows: number;
}

function walk(node: PlanNode, out: PlanNode[] = []): PlanNode[] {
  out.push(node);
  for (const child of node.Plans ?? []) walk(child, out);
  return out;
}

function describe(node: PlanNode): string {
  return node["Index Name"] ? `${node["Node Type"]} using ${node["Index Name"]}` : node["Node Type"];
}

const touchesTable = (node: PlanNode): boolean =>
  node["Relation Name"] === "reading_progress" || (node.Plans ?? []).some(touchesTable);

/** Node chain from the top down to the reading_progress scan (init plans such as `(select auth.uid())` left out). */
function mainChain(plan: PlanNode): string[] {
  const chain: string[] = [];
  let node: PlanNode | undefined = plan;
  while (node) {
    chain.push(describe(node));
    node = node.Plans?.find(touchesTable);
  }
  return chain;
}

const buffersOf = (plan: PlanNode) => (plan["Shared Hit Blocks"] ?? 0) + (plan["Shared Read Blocks"] ?? 0);

async function loadRows(ctx: Ctx, target: number, state: { fillerUsers: number }): Promise<number> {
  const { sql, log } = ctx;
  const [{ exists }] = await sql<{ exists: boolean }[]>`
    select exists (select 1 from public.reading_progress where user_id = ${benchUserId(LIBRARY_USER)}::uuid)`;
  if (!exists) {
    await sql.unsafe(`insert into auth.users (id, email) values (${benchUidSql(String(LIBRARY_USER))},
      'bench-library@readsync.bench') on conflict do nothing`);
    // One transaction per 100 series: each batch gets its own change_xid, as real writes would.
    const per = LIBRARY_SERIES / LIBRARY_TRANSACTIONS;
    for (let t = 0; t < LIBRARY_TRANSACTIONS; t++) {
      await sql.begin(async (tx) => {
        await tx.unsafe(`set local session_replication_role = replica`);
        await tx.unsafe(`
          insert into public.reading_progress
            (user_id, series_id, chapter, page, percentage, device_id, updated_at)
          select ${
          benchUidSql(String(LIBRARY_USER))
        }, 'lib-' || lpad(s::text, 4, '0'), s % 500, s, (s % 100) / 100.0,
                 'phone', date_trunc('milliseconds', now() - random() * interval '365 days')
            from generate_series(${t * per + 1}, ${(t + 1) * per}) s`);
      });
    }
  }
  // Filler users, 100 series each, loaded with triggers off (no 10M broadcast rows) in 1M-row
  // transactions, user by user so every index is filled in key order.
  const [{ n }] = await sql<{ n: string }[]>`select count(*)::text as n from public.reading_progress`;
  let rows = Number(n);
  while (rows + SERIES_PER_FILLER_USER <= target) {
    const users = Math.min(LOAD_BATCH_USERS, Math.floor((target - rows) / SERIES_PER_FILLER_USER));
    const lo = FILLER_FIRST_USER + state.fillerUsers;
    const hi = lo + users - 1;
    const t = performance.now();
    await sql.begin(async (tx) => {
      await tx.unsafe(`set local session_replication_role = replica`);
      await tx.unsafe(`
        insert into auth.users (id, email)
        select ${benchUidSql("u")}, 'bench-' || u || '@readsync.bench' from generate_series(${lo}, ${hi}) u
        on conflict do nothing`);
      await tx.unsafe(`
        insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
        select ${benchUidSql("u")}, 'series-' || s, s, s * 10, s / 100.0, 'dev-' || (u % 3),
               date_trunc('milliseconds', now() - random() * interval '365 days')
          from generate_series(${lo}, ${hi}) u, generate_series(1, ${SERIES_PER_FILLER_USER}) s`);
    });
    state.fillerUsers += users;
    rows += users * SERIES_PER_FILLER_USER;
    log(
      `reads: loaded ${rows.toLocaleString("en")} rows (${
        Math.round(performance.now() - t)
      } ms for ${users} users)`,
    );
  }
  const t = performance.now();
  await sql.unsafe(`vacuum analyze public.reading_progress`);
  await sql.unsafe(`vacuum analyze auth.users`);
  log(`reads: vacuum analyze ${Math.round(performance.now() - t)} ms`);
  return rows;
}

interface Query {
  id: string;
  label: string;
  /** The API's call, run as `authenticated` with the library user's claims. */
  call: string;
  /** The same query as plain SQL (run as postgres, RLS bypassed). */
  plain: string;
  /** Text that identifies the inner statement's plan among auto_explain's notices. */
  marker: RegExp;
}

function queries(cursorXid: string, middle: { updated_at: string; series_id: string }): Query[] {
  const uid = `'${benchUserId(LIBRARY_USER)}'::uuid`;
  return [
    {
      id: "point",
      label: "point lookup: get_reading_progress('lib-0500')",
      call: `select * from public.get_reading_progress('lib-0500')`,
      plain: `select * from public.reading_progress where user_id = ${uid} and series_id = 'lib-0500'`,
      marker: /from public\.reading_progress rp\s+where rp\.user_id = \(select auth\.uid\(\)\)/,
    },
    {
      id: "library",
      label: "library, first page of 50 by recency: list_reading_progress(50)",
      call: `select * from public.list_reading_progress(50)`,
      plain: `select * from public.reading_progress where user_id = ${uid} and not cleared
                order by updated_at desc, series_id desc limit 50`,
      marker: /order by rp\.updated_at desc/,
    },
    {
      id: "library_page",
      label: "library, page 11 (keyset cursor after row 500): list_reading_progress(50, ts, id)",
      call: `select * from public.list_reading_progress(50, '${middle.updated_at}', '${middle.series_id}')`,
      plain: `select * from public.reading_progress where user_id = ${uid} and not cleared
                and (updated_at, series_id) < ('${middle.updated_at}', '${middle.series_id}')
                order by updated_at desc, series_id desc limit 50`,
      marker: /order by rp\.updated_at desc/,
    },
    {
      id: "changes",
      label: "changes since a cursor (100 of 1,000 rows changed): reading_progress_changes(cursor, 100)",
      call: `select public.reading_progress_changes('${cursorXid}', 100)`,
      plain: `select * from public.reading_progress where user_id = ${uid}
                and (change_xid, series_id) > ('${cursorXid}'::xid8, '') order by change_xid, series_id limit 101`,
      marker: /order by c\.xid, c\.series_id/,
    },
  ];
}

async function measure(dbUrl: string, q: Query): Promise<{ fn: Measured; plain: Measured }> {
  const notices: string[] = [];
  const conn = postgres(dbUrl, {
    max: 1,
    prepare: false,
    onnotice: (n) => notices.push(String(n.message)),
  });
  const claims = JSON.stringify({ sub: benchUserId(LIBRARY_USER), role: "authenticated" });
  try {
    await conn.unsafe(`load 'auto_explain'`);
    const fnRuns: Measured[] = [];
    const plainRuns: Measured[] = [];
    for (let run = 0; run < RUNS + 2; run++) {
      notices.length = 0;
      await conn.begin(async (tx) => {
        await tx.unsafe(`
          set local auto_explain.log_min_duration = 0;
          set local auto_explain.log_analyze = on;
          set local auto_explain.log_buffers = on;
          set local auto_explain.log_timing = on;
          set local auto_explain.log_nested_statements = on;
          set local auto_explain.log_format = json;
          set local auto_explain.log_level = notice`);
        await tx`select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${claims}, true)`;
        await tx.unsafe(q.call);
      });
      const plans = notices
        .map((m) => m.slice(m.indexOf("{")))
        .filter((m) => m.startsWith("{"))
        .map((m) => JSON.parse(m) as { "Query Text": string; Plan: PlanNode });
      const inner = plans.find((p) => q.marker.test(p["Query Text"]));
      const top = plans.find((p) => p["Query Text"].trim() === q.call.trim());
      if (!inner || !top) {
        throw new Error(
          `reads ${q.id}: auto_explain did not report the inner statement (${plans.length} plans)`,
        );
      }
      const scans = walk(inner.Plan).filter((n) => n["Relation Name"] === "reading_progress");
      // The call's own time comes from a second run without auto_explain: with nested logging on,
      // the outer time includes formatting and sending the inner plan (about 3x a point lookup).
      // EXPLAIN ANALYZE of the call, like the plain statement's below, so both carry the same
      // instrumentation.
      const fnExplained = await conn.begin(async (tx) => {
        await tx`select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${claims}, true)`;
        return await tx.unsafe(`explain (analyze, format json) ${q.call}`);
      }) as unknown as { "QUERY PLAN": { "Execution Time": number }[] }[];
      fnRuns.push({
        nodes: mainChain(inner.Plan),
        scanNodes: scans.map(describe),
        buffers: buffersOf(inner.Plan),
        innerMs: inner.Plan["Actual Total Time"] ?? NaN,
        totalMs: fnExplained[0]["QUERY PLAN"][0]["Execution Time"],
        rows: scans.reduce((n, s) => n + (s["Actual Rows"] ?? 0), 0),
      });

      const [{ "QUERY PLAN": explained }] = await conn.unsafe(
        `explain (analyze, buffers, format json) ${q.plain}`,
      ) as unknown as { "QUERY PLAN": { Plan: PlanNode; "Execution Time": number }[] }[];
      const plan = explained[0].Plan;
      plainRuns.push({
        nodes: mainChain(plan),
        scanNodes: walk(plan).filter((n) => n["Relation Name"] === "reading_progress").map(describe),
        buffers: buffersOf(plan),
        innerMs: plan["Actual Total Time"] ?? NaN,
        totalMs: explained[0]["Execution Time"],
        rows: walk(plan).filter((n) => n["Relation Name"] === "reading_progress")
          .reduce((n, s) => n + (s["Actual Rows"] ?? 0), 0),
      });
    }
    // Two warm-up runs dropped; median of the rest (plans and buffers are the same in every run).
    const summarize = (runs: Measured[]): Measured => {
      const kept = runs.slice(2);
      return {
        ...kept.at(-1)!,
        innerMs: median(kept.map((r) => r.innerMs)),
        totalMs: median(kept.map((r) => r.totalMs)),
        buffers: Math.max(...kept.map((r) => r.buffers)),
      };
    };
    return { fn: summarize(fnRuns), plain: summarize(plainRuns) };
  } finally {
    await conn.end();
  }
}

export async function readsSection(ctx: Ctx): Promise<SectionResult> {
  const section: SectionResult = {
    id: "reads",
    title: "2. Reads: EXPLAIN (ANALYZE, BUFFERS) through the SQL functions, as authenticated",
    status: "ok",
    rows: [],
    notes: [],
  };
  if (!ctx.stack.ownsDatabase) {
    return {
      ...section,
      status: "skipped",
      reason: "generates millions of rows with triggers off: only on the bench's own throwaway database",
    };
  }
  const state = { fillerUsers: 0 };
  const details: Record<string, unknown> = {};
  for (const target of ctx.opts.readRows) {
    const t = performance.now();
    const rows = await loadRows(ctx, target, state);
    const loadSeconds = Math.round((performance.now() - t) / 100) / 10;
    const [cursor] = await ctx.sql<{ xid: string }[]>`
      select change_xid::text as xid from public.reading_progress
       where user_id = ${benchUserId(LIBRARY_USER)}::uuid order by change_xid desc limit 1`;
    const [middle] = await ctx.sql<{ updated_at: string; series_id: string }[]>`
      select to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as updated_at, series_id
        from public.reading_progress where user_id = ${benchUserId(LIBRARY_USER)}::uuid
       order by updated_at desc, series_id desc offset 499 limit 1`;
    const [{ size }] = await ctx.sql<{ size: string }[]>`
      select pg_size_pretty(pg_total_relation_size('public.reading_progress')) as size`;
    const label = target >= 1e6 ? `${target / 1e6}M` : `${target / 1e3}k`;
    details[label] = { rows, loadSeconds, size, queries: {} as Record<string, unknown> };
    for (const q of queries(cursor.xid, middle)) {
      const { fn, plain } = await measure(ctx.stack.postgresJsDbUrl, q);
      (details[label] as { queries: Record<string, unknown> }).queries[q.id] = { fn, plain };
      ctx.log(`reads ${label} ${q.id}: ${fn.nodes.join(" → ")}, ${fn.buffers} buffers, ${fn.innerMs} ms`);
      // The library must come out of the index in order (no sort at all); the changes page is read
      // by index on (user_id, change_xid) and ordered on series_id within one change_xid by an
      // Incremental Sort over at most limit + 1 rows, as migration 20261120090200 describes.
      const indexOnly = fn.scanNodes.length > 0 && fn.scanNodes.every((n) => /^Index (Only )?Scan/.test(n)) &&
        !fn.nodes.some((n) => (q.id === "changes" ? /^(Sort|Seq Scan)/ : /Sort|Seq Scan/).test(n));
      const bufferOk = q.id !== "point" || fn.buffers <= 5;
      const row: Row = {
        metric:
          `${label} rows · ${q.label} — ${
            fn.nodes.join(" → ")
          }; ${fn.buffers} buffers (plain: ${plain.buffers}); ` +
          `${fn.rows} row${fn.rows === 1 ? "" : "s"}`,
        value: fn.totalMs,
        unit: "ms",
        baseline: plain.totalMs,
        baselineLabel: "plain SQL as postgres",
        ratio: ratio(fn.totalMs, plain.totalMs),
        target: q.id === "point"
          ? "index scan, ≤ 5 buffers"
          : q.id === "changes"
          ? "index scan"
          : "index scan, no sort",
        met: indexOnly && bufferOk,
      };
      section.rows.push(row);
    }
    section.notes.push(
      `${label}: ${rows.toLocaleString("en")} rows (${size} with indexes), loaded in ${loadSeconds} s.`,
    );
  }
  section.notes.push(
    `Data: one library user with ${LIBRARY_SERIES} series (written in ${LIBRARY_TRANSACTIONS} transactions of ` +
      `${LIBRARY_SERIES / LIBRARY_TRANSACTIONS}, so change_xid cursors are real) and filler users with ` +
      `${SERIES_PER_FILLER_USER} series each; updated_at random over a year. Loaded with triggers off, then VACUUM ANALYZE.`,
    "value = the Execution Time of EXPLAIN ANALYZE of the function call as `authenticated` (role + " +
      `request.jwt.claims, RLS on), auto_explain off, median of ${RUNS} runs after 2 warm-ups; plan nodes and buffers ` +
      "(shared hit + read) are those of the function's inner statement, reported by auto_explain (log_analyze, " +
      "log_buffers, log_nested_statements) in a separate run. Baseline = the function's main statement as a plain " +
      "statement run as postgres (no function, no RLS): its Execution Time. For changes since, that is the rows side " +
      "only (the function also merges remembered deletions and builds the JSON page), so its ratio includes that work.",
    "Warm cache: shared_buffers holds the touched pages after the warm-up runs; the 10M-row table is larger than " +
      "shared_buffers, so the first touch of a page may be a read from the OS cache.",
  );
  section.details = details;
  return section;
}
