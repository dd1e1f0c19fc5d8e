// 5. Catch-up: a device that was offline while another device made 1,000 updates across 100 series
// comes back and converges through GET /functions/v1/progress/changes?since=<its cursor>: how many
// requests and how many milliseconds until its copy equals the database. The client reads pages
// until has_more is false, as RealtimeService's catch-up does, with the API's default page size.
// Baseline (same run): the same request when there is nothing to catch up (an empty page).

import postgres from "postgres";
import { benchUserTokens } from "../lib/db.ts";
import { median, ratio, type SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";

const USER = 0x300001;
const SERIES = 100;
const UPDATES = 1000;

interface ChangesPage {
  changes: { series_id: string; chapter: number; updated_at: string; device_id: string }[];
  next_cursor: string;
  has_more: boolean;
}

export async function catchupSection(ctx: Ctx): Promise<SectionResult> {
  const { stack } = ctx;
  const [user] = await benchUserTokens(ctx.sql, stack.jwtSecret, USER, USER);
  const url = `${stack.apiUrl}/functions/v1/progress/changes`;
  const headers = { authorization: `Bearer ${user.token}`, apikey: stack.anonKey };
  const getPage = async (since: string | null): Promise<ChangesPage> => {
    const res = await fetch(since === null ? url : `${url}?since=${encodeURIComponent(since)}`, { headers });
    const body = await res.json();
    if (!res.ok) throw new Error(`GET /progress/changes: ${res.status} ${JSON.stringify(body)}`);
    return body as ChangesPage;
  };
  /** Reads pages from `cursor` until has_more is false. */
  const catchUp = async (cursor: string | null, copy: Map<string, string>) => {
    let requests = 0;
    for (;;) {
      const page = await getPage(cursor);
      requests++;
      for (const row of page.changes) {
        copy.set(row.series_id, `${row.updated_at}|${row.device_id}|${row.chapter}`);
      }
      cursor = page.next_cursor;
      if (!page.has_more) return { cursor, requests };
    }
  };

  // The other device writes as the API does: one transaction per update, as the user.
  const writer = postgres(stack.postgresJsDbUrl, { max: 4, prepare: false, onnotice: () => {} });
  const claims = JSON.stringify({ sub: user.id, role: "authenticated" });
  let clock = Date.now() - 3_600_000;
  const write = (series: number, chapter: number) =>
    writer.begin(async (tx) => {
      await tx`select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${claims}, true)`;
      await tx`select public.write_reading_progress(${`catchup-${series}`}::text, ${chapter}::integer, 0, 0.5, false,
        'other-device', ${new Date(++clock).toISOString()}::timestamptz)`;
    });

  const rounds = ctx.opts.quick ? 3 : 7;
  const catchUpMs: number[] = [];
  const requestCounts: number[] = [];
  const emptyMs: number[] = [];
  const rowsSeen: number[] = [];
  try {
    const copy = new Map<string, string>();
    let { cursor } = await catchUp(null, copy); // the device is in sync
    for (let round = 0; round < rounds; round++) {
      // Offline: 1,000 updates, 10 per series, interleaved across the 100 series.
      for (let i = 0; i < UPDATES; i += 4) {
        await Promise.all([0, 1, 2, 3].map((k) => write((i + k) % SERIES, round * UPDATES + i + k)));
      }
      const t = performance.now();
      const seen = new Map<string, string>();
      const result = await catchUp(cursor, seen);
      catchUpMs.push(performance.now() - t);
      requestCounts.push(result.requests);
      rowsSeen.push(seen.size);
      for (const [k, v] of seen) copy.set(k, v);
      cursor = result.cursor;

      // Converged? The copy must equal the database's rows for this user.
      const rows = await ctx.sql<{ series_id: string; key: string }[]>`
        select series_id, to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') || '|' ||
               device_id || '|' || chapter as key
          from public.reading_progress where user_id = ${user.id}::uuid`;
      const stale = rows.filter((r) => copy.get(r.series_id) !== r.key);
      if (stale.length > 0 || rows.length !== copy.size) {
        throw new Error(`catch-up did not converge: ${stale.length} of ${rows.length} series differ`);
      }

      // Baseline: the same request with nothing new.
      const e = performance.now();
      const empty = await getPage(cursor);
      emptyMs.push(performance.now() - e);
      if (empty.changes.length !== 0) throw new Error("expected an empty page after catching up");
    }
  } finally {
    await writer.end();
  }
  const ms = median(catchUpMs);
  const maxRequests = Math.max(...requestCounts);
  return {
    id: "catchup",
    title: "5. Catch-up after 1,000 missed updates across 100 series (GET /progress/changes)",
    status: "ok",
    rows: [
      {
        metric: `requests until converged (max of ${rounds} rounds)`,
        value: maxRequests,
        unit: "req",
        target: "1 page request",
        met: maxRequests === 1,
      },
      {
        metric: `time until converged (median of ${rounds}; max ${
          Math.round(Math.max(...catchUpMs) * 10) / 10
        } ms)`,
        value: ms,
        unit: "ms",
        baseline: median(emptyMs),
        baselineLabel: "same request, nothing new",
        ratio: ratio(ms, median(emptyMs)),
        target: "≤ 200 ms",
        met: ms <= 200,
      },
    ],
    notes: [
      `Each round: another device writes ${UPDATES} updates (10 per series, one transaction each, through ` +
      `public.write_reading_progress as the user); then the device that missed them reads GET /progress/changes?since=` +
      `<its cursor> with the API's default page size (100) until has_more is false. Rows received per round: ` +
      `${
        [...new Set(rowsSeen)].join(", ")
      } (the final version of each changed series: the cursor returns rows, not events).`,
      "Converged = the device's copy equals every row of the user in the database (checked after each round).",
    ],
    details: { catchUpMs, requestCounts, emptyMs, rowsSeen },
  };
}
