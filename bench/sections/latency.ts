// 3. Update latency: POST /functions/v1/progress on the API (gateway JWT check, the progress
// handler's own JWT verification and zod validation, postgres.js, the SQL function) versus the same
// upsert sent directly over SQL: the very transaction the function's store runs (BEGIN; role +
// claims + statement_timeout in one set_config statement; select public.write_reading_progress(...);
// COMMIT), from postgres.js with the store's settings. Closed loop at 1, 8 and 32 concurrent clients,
// each client a different user; p50/p95/p99 from an HDR-style histogram (bench/lib/load.ts).

import postgres from "postgres";
import { benchUserTokens } from "../lib/db.ts";
import { closedLoop, type LoadResult } from "../lib/load.ts";
import { ratio, type SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";

const FIRST_USER = 0x200001;
const SERIES_PER_CLIENT = 20;

export async function latencySection(ctx: Ctx): Promise<SectionResult> {
  const { stack, opts } = ctx;
  const maxClients = Math.max(...opts.latencyClients);
  const users = await benchUserTokens(ctx.sql, stack.jwtSecret, FIRST_USER, FIRST_USER + maxClients - 1);
  const url = `${stack.apiUrl}/functions/v1/progress`;
  // Every client's series exist before the first run, so both sides measure the same UPDATE from
  // the first write on (otherwise the side that runs first pays the INSERTs of users new at a
  // higher client count inside its measured window).
  await ctx.sql`
    insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
    select u.id::uuid, 'lat-' || s, 0, 0, 0, 'bench-seed', now() - interval '2 hours'
      from unnest(${users.map((u) => u.id)}::text[]) as u(id), generate_series(0, ${
    SERIES_PER_CLIENT - 1
  }) as s
    on conflict (user_id, series_id) do nothing`;
  // Strictly increasing updated_at for every write (ms steps from a start in the past), so every
  // write wins and is a real UPDATE with its broadcast, never a replay or a conflict.
  let clock = Date.now() - 3_600_000;
  const nextWrite = (client: number, i: number) => ({
    series_id: `lat-${i % SERIES_PER_CLIENT}`,
    chapter: i % 1000,
    page: i % 10000,
    percentage: (i % 100) / 100,
    device_id: `bench-client-${client}`,
    updated_at: new Date(++clock).toISOString(),
  });

  const viaFunction = (clients: number) =>
    closedLoop(clients, opts.latencySeconds, async (client, i) => {
      const res = await fetch(url, {
        method: "POST",
        headers: {
          authorization: `Bearer ${users[client].token}`,
          apikey: stack.anonKey,
          "content-type": "application/json",
        },
        body: JSON.stringify(nextWrite(client, i)),
      });
      const body = await res.json();
      if (!res.ok || body.won !== true) {
        throw new Error(`POST /progress: ${res.status} ${JSON.stringify(body)}`);
      }
    });

  const viaSql = async (clients: number) => {
    const sql = postgres(stack.postgresJsDbUrl, { max: clients, prepare: false, onnotice: () => {} });
    try {
      await Promise.all(Array.from({ length: clients }, () => sql`select 1`)); // open the pool first
      return await closedLoop(clients, opts.latencySeconds, async (client, i) => {
        const w = nextWrite(client, i);
        const claims = JSON.stringify({ sub: users[client].id, role: "authenticated", aud: "authenticated" });
        const result = await sql.begin("read write", async (tx) => {
          await tx`select set_config('role', 'authenticated', true),
                          set_config('request.jwt.claims', ${claims}, true),
                          set_config('statement_timeout', '8000', true)`;
          const [{ r }] = await tx<{ r: { won: boolean } }[]>`
            select public.write_reading_progress(${w.series_id}::text, ${w.chapter}::integer, ${w.page}::integer,
              ${w.percentage}::double precision, false, ${w.device_id}::text, ${w.updated_at}::timestamptz) as r`;
          return r;
        });
        if ((result as { won: boolean }).won !== true) throw new Error("SQL write did not win");
      });
    } finally {
      await sql.end();
    }
  };

  const section: SectionResult = {
    id: "latency",
    title: "3. Update latency: POST /functions/v1/progress vs the same upsert over SQL",
    status: "ok",
    rows: [],
    notes: [],
  };
  const details: Record<string, unknown> = {};
  for (const clients of opts.latencyClients) {
    // fn, sql, then sql, fn: drift on the shared machine hits both alike; histograms are merged.
    const fn: LoadResult[] = [];
    const sq: LoadResult[] = [];
    fn.push(await viaFunction(clients));
    sq.push(await viaSql(clients));
    if (!opts.quick) {
      sq.push(await viaSql(clients));
      fn.push(await viaFunction(clients));
    }
    const merge = (rs: LoadResult[]) => {
      const h = rs[0].histogram;
      for (const r of rs.slice(1)) h.merge(r.histogram);
      return {
        summary: h.summaryMs(),
        throughput: rs.reduce((a, r) => a + r.throughput, 0) / rs.length,
        errors: rs.reduce((a, r) => a + r.errors, 0),
        firstError: rs.find((r) => r.firstError)?.firstError,
      };
    };
    const f = merge(fn);
    const s = merge(sq);
    details[`c${clients}`] = { function: f, sql: s };
    ctx.log(
      `latency c=${clients}: function p50 ${f.summary.p50} p99 ${f.summary.p99} ms (${
        f.throughput.toFixed(0)
      }/s); ` +
        `sql p50 ${s.summary.p50} p99 ${s.summary.p99} ms (${s.throughput.toFixed(0)}/s)`,
    );
    for (const p of ["p50", "p95", "p99"] as const) {
      const r = ratio(f.summary[p], s.summary[p]);
      const targeted = p === "p99" && clients === Math.max(...opts.latencyClients);
      section.rows.push({
        metric: `function ${p}, ${clients} client${clients > 1 ? "s" : ""}`,
        value: f.summary[p],
        unit: "ms",
        baseline: s.summary[p],
        baselineLabel: "SQL",
        ratio: r,
        ...(targeted ? { target: "≤ 3× SQL p99", met: r == null ? null : r <= 3 } : {}),
      });
    }
    section.rows.push({
      metric: `  throughput, ${clients} client${clients > 1 ? "s" : ""}`,
      value: f.throughput,
      unit: "req/s",
      baseline: s.throughput,
      baselineLabel: "SQL tx/s",
      ratio: ratio(f.throughput, s.throughput),
    });
    for (const [name, x] of [["function", f], ["SQL", s]] as const) {
      if (x.errors > 0) {
        section.notes.push(`${name} at ${clients} clients: ${x.errors} errors, first: ${x.firstError}`);
      }
    }
  }
  section.notes.push(
    `Closed loop: each client sends its next write when the previous one answered, ${opts.latencySeconds} s per run ` +
      `after 0.5 s of warm-up, ${
        opts.quick ? "one run per side" : "two runs per side in fn, SQL, SQL, fn order"
      }; ` +
      "every write is a winning UPDATE (increasing updated_at) by its own user, so each one also writes its broadcast row.",
    "Load generator: a small Deno loop (bench/lib/load.ts) with an HDR-style log-linear histogram " +
      "(bench/lib/histogram.ts, < 0.8 % error per percentile), chosen over autocannon/wrk because every request needs " +
      "its own body and user token and the SQL baseline must be driven by the same code. The API runs in its own " +
      "process (bench/lib/stack_child.ts).",
    "Function path: fetch → local API server → functions gateway (verify_jwt) → progress handler (JWT verification, zod) → " +
      "postgres.js (pool of 5, prepare: false) → the same transaction as the SQL side. SQL side: postgres.js with " +
      "one connection per client, prepare: false.",
  );
  section.details = details;
  return section;
}
