// The ConflictResolver agrees with the database (fast-check over the real PostgreSQL):
//   * sequential, random order: the stored row is resolve(updates) and the conflict log is exactly
//     detectConflict(order), row for row;
//   * concurrent (parallel HTTP through the function, or several direct connections through the
//     function's store): the stored row is resolve(updates) whatever order the database serialised
//     the writes in, and every answer and every log row fits one serial order (see checkConcurrent).
//   * many parallel writers on one series through HTTP, including ties, end with the resolver's
//     winner and the matching conflict-log rows.
//   * direct Data API upserts (bypassing the API) end with the resolver's winner too.
// numRuns are kept small: the machine is shared.

import assert from "node:assert/strict";
import fc from "fast-check";
import postgres from "postgres";
import {
  type ConflictFinding,
  ConflictResolver,
  conflictResolver as resolver,
} from "../../shared/progress/conflictResolver.ts";
import { writeResultSchema } from "../../shared/progress/schemas.ts";
import { createPostgresProgressStore, type PostgresStoreOptions } from "../../shared/progress/store.ts";
import type { WriteResult } from "../../shared/progress/types.ts";
import { createTestUser, type TestUser } from "../support/env.ts";
import {
  adminSql,
  call,
  dataApiBulkUpsert,
  endHeld,
  errorOf,
  type Held,
  seriesId,
  testEnv,
} from "./support.ts";

interface Update {
  updated_at: string;
  device_id: string;
  chapter: number;
}

const BASE = Date.parse("2026-04-01T08:00:00.000Z");
const updateArb: fc.Arbitrary<Update> = fc.record({
  updated_at: fc.integer({ min: 0, max: 5 }).map((ms) => new Date(BASE + ms).toISOString()),
  device_id: fc.constantFrom("a", "b", "dev-1", "dev-10", "dev-2", "Z"),
  chapter: fc.integer({ min: 0, max: 99 }),
});
const keyOf = (u: { updated_at: string | Date; device_id: string }) =>
  `${new Date(u.updated_at).toISOString()}/${u.device_id}`;

interface LogRow {
  kind: string;
  rejected: boolean;
  losing: string;
  winning: string;
}

async function stateOf(sql: postgres.Sql, userId: string, series: string) {
  const rows = await sql<{ updated_at: Date; device_id: string; chapter: number }[]>`
    select updated_at, device_id, chapter from public.reading_progress where user_id = ${userId} and series_id = ${series}`;
  const log = await sql<{ kind: string; rejected: boolean; lu: Date; ld: string; wu: Date; wd: string }[]>`
    select kind, rejected, losing_updated_at as lu, losing_device_id as ld, winning_updated_at as wu, winning_device_id as wd
      from public.reading_progress_conflicts where user_id = ${userId} and series_id = ${series} order by id`;
  return {
    row: rows[0] ? { key: keyOf(rows[0]), chapter: rows[0].chapter } : null,
    log: log.map((r): LogRow => ({
      kind: r.kind,
      rejected: r.rejected,
      losing: keyOf({ updated_at: r.lu, device_id: r.ld }),
      winning: keyOf({ updated_at: r.wu, device_id: r.wd }),
    })),
  };
}

/** The conflict-log rows the resolver's findings stand for, in the same order. */
const logOf = (findings: ConflictFinding<Update>[]): LogRow[] =>
  findings.map((f) => ({
    kind: f.kind,
    rejected: f.rejected,
    losing: keyOf(f.losing),
    winning: keyOf(f.winning),
  }));

const sortLog = (rows: LogRow[]) => [...rows].sort((x, y) => JSON.stringify(x) < JSON.stringify(y) ? -1 : 1);

/**
 * Distinct keys sent concurrently: the answers tell which writes were stored on arrival ("records",
 * won) and which were refused (lost, with the key they lost to, or, without a conflict, to a later
 * write of their own device). Exactly one serial order fits when:
 * the records in key order form the storage chain ending at resolve(updates); a record replaced a
 * same-millisecond predecessor iff it answered 'tie' naming that predecessor, and the log has that
 * (rejected = false) row; every refused write lost to a record above it and has its (rejected) row;
 * and the log has nothing else. A write answered as its device's version 1 ms later is no record
 * (answeredAsLanded) and logs nothing.
 */
function checkConcurrent(updates: Update[], answers: WriteResult[], log: LogRow[]) {
  // A write that met its own device's version 1 ms after it with its position (the generator makes
  // such pairs: 6 devices, 100 chapters, 6 ms) is taken for the retry of a write stored there after
  // meeting its key, and answered as that one was: won, no conflict, that version, nothing stored or
  // logged (README, Schema decisions; ConflictResolver.classify). It is no record of the chain.
  const answeredAsLanded = (u: Update, a: WriteResult) =>
    a.won && keyOf(a.progress) !== keyOf(u) && a.progress.device_id === u.device_id &&
    ConflictResolver.timeOf(a.progress) === ConflictResolver.timeOf(u) + 1 &&
    ConflictResolver.samePosition(u, a.progress);
  const records = updates.map((u, i) => ({ u, a: answers[i] }))
    .filter((x) => x.a.won && !answeredAsLanded(x.u, x.a))
    .sort((x, y) => resolver.compare(x.u, y.u));
  assert.ok(records.length > 0);
  assert.equal(
    keyOf(records[records.length - 1].u),
    keyOf(resolver.resolve(updates)!),
    "the last record is the resolver's winner",
  );
  const expected: LogRow[] = [];
  records.forEach(({ u, a }, i) => {
    const prev = records[i - 1]?.u;
    const sameMs = prev !== undefined && ConflictResolver.timeOf(prev) === ConflictResolver.timeOf(u);
    assert.equal(a.conflict, sameMs ? "tie" : null, `record ${keyOf(u)}`);
    if (sameMs) {
      assert.equal(keyOf(a.conflict_with!), keyOf(prev!), "a tie winner names the write it replaced");
      expected.push({ kind: "tie", rejected: false, losing: keyOf(prev!), winning: keyOf(u) });
    }
  });
  const recordKeys = new Set(records.map((r) => keyOf(r.u)));
  updates.forEach((u, i) => {
    const a = answers[i];
    if (answeredAsLanded(u, a)) {
      assert.equal(a.conflict, null, `${keyOf(u)} answered as the write landed 1 ms after it`);
      assert.ok(recordKeys.has(keyOf(a.progress)), "the version it was answered with was stored");
      return;
    }
    if (a.won) return;
    if (a.conflict === null) {
      // Met its own device's later write: not stored, no conflict, logged as 'self'.
      assert.equal(
        a.progress.device_id,
        u.device_id,
        "only a device overtaking itself loses without a conflict",
      );
      assert.ok(resolver.compare(u, a.progress) < 0);
      expected.push({ kind: "self", rejected: true, losing: keyOf(u), winning: keyOf(a.progress) });
      return;
    }
    const other = keyOf(a.conflict_with!);
    assert.ok(recordKeys.has(other), "a refused write lost to a write that was stored");
    assert.ok(resolver.compare(u, a.conflict_with!) < 0);
    const kind = ConflictResolver.timeOf(u) === ConflictResolver.timeOf(a.conflict_with!) ? "tie" : "stale";
    assert.equal(a.conflict, kind);
    expected.push({ kind, rejected: true, losing: keyOf(u), winning: other });
  });
  assert.deepEqual(sortLog(log), sortLog(expected));
}

/** Sends updates for one user: through the function over HTTP, or through its store on a pool. */
type Sender = (user: TestUser, series: string, u: Update) => Promise<WriteResult>;

/**
 * Through the function over HTTP, answered as a client takes it: a 503 for a lock (the write waited
 * for other writes of the row longer than the function's fixed 2 s lock timeout: README's error
 * table, "The data is locked by another operation; try again" from mapDatabaseError in
 * shared/progress/store.ts) is the same write sent again once its Retry-After has passed, as the
 * API client does, up to LOCKED_ATTEMPTS in all. Such a write was rolled back, stored nothing and
 * logged nothing; sent again it is the same write (same body), arriving later: the concurrent
 * property holds for any order, and its answer is the one checked. Any other answer than 200 fails.
 */
const overHttp: Sender = async (user, series, u) => {
  for (let attempt = 1;; attempt++) {
    const answer = await call("POST", "", {
      token: user.accessToken,
      body: { series_id: series, page: 0, percentage: 0, ...u },
    });
    if (answer.status === 503 && attempt < LOCKED_ATTEMPTS && isLocked(answer)) {
      const seconds = Number(answer.headers.get("retry-after"));
      await new Promise((resolve) => setTimeout(resolve, Number.isFinite(seconds) ? seconds * 1000 : 1000));
      continue;
    }
    assert.equal(answer.status, 200, `attempt ${attempt}: ${JSON.stringify(answer.body)}`);
    return writeResultSchema.parse(answer.body);
  }
};

/** How many times overHttp sends a write the function answered "locked" (a hang guard, not a pace). */
const LOCKED_ATTEMPTS = 10;

/** The function's 503 for a lock wait that outlasted its lock timeout (SQLSTATE 55P03). */
function isLocked(answer: Awaited<ReturnType<typeof call>>): boolean {
  const error = errorOf(answer);
  return error.code === "service_unavailable" &&
    /^The data is locked by another operation/.test(error.message);
}

function overStore(pool: postgres.Sql, options?: PostgresStoreOptions): Sender {
  const store = createPostgresProgressStore(pool, options);
  return (user, series, u) =>
    store.write({ sub: user.id, role: "authenticated" }, {
      series_id: series,
      page: 0,
      percentage: 0,
      cleared: false,
      ...u,
    });
}

Deno.test("resolver = database, sequential random orders: same final row, conflict log = detectConflict(order)", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const pool = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  const send = overStore(pool);
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.array(updateArb, { minLength: 1, maxLength: 10 }).chain((us) =>
          fc.shuffledSubarray(us, { minLength: us.length, maxLength: us.length })
        ),
        fc.boolean(),
        async (order, http) => {
          const series = seriesId("seq");
          const answers: WriteResult[] = [];
          for (const u of order) answers.push(await (http ? overHttp : send)(user, series, u));
          const state = await stateOf(sql, user.id, series);
          const winner = resolver.resolve(order)!;
          assert.deepEqual(
            state.row,
            { key: keyOf(winner), chapter: winner.chapter },
            "the stored row is resolve(updates)",
          );
          assert.deepEqual(
            state.log,
            logOf(resolver.detectConflict(order)),
            "the log is detectConflict(order), in order",
          );
          // Each answer is what the resolver predicts for that arrival.
          let current: Update | null = null;
          order.forEach((u, i) => {
            const predicted = resolver.classify(u, current);
            const got = answers[i];
            if (resolver.compare(u, current ?? u) === 0 && current !== null) {
              assert.equal(got.won, true, "a replay reports won"); // and repeats its first answer
            } else {
              assert.deepEqual({ won: got.won, conflict: got.conflict }, predicted);
            }
            current = resolver.apply(current, u).current;
            assert.equal(keyOf(got.progress), keyOf(current!), "the answer carries the stored row");
          });
        },
      ),
      { numRuns: 20 },
    );
  } finally {
    await pool.end();
    await sql.end();
  }
});

Deno.test("resolver = database, concurrent writers (parallel HTTP or 4 connections): final row and log fit a serial order", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const pool = postgres(testEnv().dbUrl, { max: 4, onnotice: () => {} });
  // Up to 12 writes of one row at once on 4 connections: each waits for the row lock of the writes
  // ahead of it, which on a loaded machine can outlast the store's default 2 s lock timeout (a 503,
  // not what this property is about); 30 s still ends a wait that never would. Over HTTP the
  // function's own 2 s holds (no setting changes it): overHttp sends a write answered "locked" again.
  const send = overStore(pool, { lockTimeoutMs: 30_000, statementTimeoutMs: 30_000 });
  try {
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(updateArb, { minLength: 2, maxLength: 12, selector: keyOf }),
        fc.boolean(),
        async (updates, http) => {
          const series = seriesId("par");
          const answers = await Promise.all(updates.map((u) => (http ? overHttp : send)(user, series, u)));
          const state = await stateOf(sql, user.id, series);
          const winner = resolver.resolve(updates)!;
          assert.deepEqual(state.row, { key: keyOf(winner), chapter: winner.chapter });
          for (const a of answers) {
            assert.ok(resolver.compare(a.progress, winner) <= 0, "no answer shows a row above the winner");
          }
          checkConcurrent(updates, answers, state.log);
        },
      ),
      { numRuns: 15 },
    );
  } finally {
    await pool.end();
    await sql.end();
  }
});

Deno.test("many parallel writers on one series over HTTP end with the resolver's winner and the right log rows", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const series = seriesId("crowd");
    // 24 devices, 6 instants: lots of same-millisecond ties, one clear winner.
    const updates: Update[] = Array.from({ length: 24 }, (_, i) => ({
      updated_at: new Date(BASE + (i % 6) * 1000).toISOString(),
      device_id: `device-${String(i).padStart(2, "0")}`,
      chapter: i,
    }));
    const answers = await Promise.all(updates.map((u) => overHttp(user, series, u)));
    const state = await stateOf(sql, user.id, series);
    const winner = resolver.resolve(updates)!;
    assert.equal(winner.device_id, "device-23");
    assert.deepEqual(state.row, { key: keyOf(winner), chapter: 23 });
    checkConcurrent(updates, answers, state.log);
    assert.equal(answers.filter((a) => !a.won).length, state.log.filter((r) => r.rejected).length);
    // Every loser converges: its answer carries a stored row at least as new as itself.
    for (const [i, a] of answers.entries()) assert.ok(resolver.compare(a.progress, updates[i]) >= 0);
  } finally {
    await sql.end();
  }
});

/**
 * The same rule holds for writes that bypass the API: a user's own upsert through the Data API (what
 * supabase-js `.upsert()` sends: INSERT ... ON CONFLICT DO UPDATE with no condition) is refused by the
 * stamp trigger unless its key is greater than the stored one, and its conflict log is the API's:
 * detectConflict(order) (refused writes by the stamp trigger, replaced same-millisecond writes by the
 * AFTER UPDATE trigger reading_progress_log_replaced_tie).
 */
Deno.test("resolver = database on direct Data API upserts: same final row, conflict log = detectConflict(order)", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const direct = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  const upsert = (series: string, u: Update) =>
    direct.begin(async (tx) => {
      await tx`select set_config('role', 'authenticated', true),
        set_config('request.jwt.claims', ${JSON.stringify({ sub: user.id, role: "authenticated" })}, true)`;
      const rows = await tx`
        insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
        values (${user.id}, ${series}, ${u.chapter}, 0, 0, ${u.device_id}, ${u.updated_at}::timestamptz)
        on conflict (user_id, series_id) do update
          set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
              device_id = excluded.device_id, updated_at = excluded.updated_at
        returning 1`;
      return rows.length;
    });
  try {
    await fc.assert(
      fc.asyncProperty(
        // Distinct writes, some sent twice (an exact replay, e.g. a retried upsert), in any order. A
        // reused key with a different position is not a replay to the trigger but an edit without a
        // key of its own (it lands, dated now): pgTAP 008.
        fc.uniqueArray(updateArb, { minLength: 1, maxLength: 8, selector: keyOf }).chain((us) =>
          fc.shuffledSubarray([...us, ...us], { minLength: us.length, maxLength: 2 * us.length })
        ),
        async (order) => {
          const series = seriesId("direct");
          let current: Update | null = null;
          for (const u of order) {
            const written = await upsert(series, u);
            const stored: boolean = current === null || resolver.compare(u, current) > 0;
            assert.equal(written, stored ? 1 : 0, `upsert of ${keyOf(u)} over ${current && keyOf(current)}`);
            current = resolver.apply(current, u).current;
          }
          const state = await stateOf(sql, user.id, series);
          const winner = resolver.resolve(order)!;
          assert.deepEqual(state.row, { key: keyOf(winner), chapter: winner.chapter });
          assert.deepEqual(
            state.log,
            logOf(resolver.detectConflict(order)),
            "the log is detectConflict(order)",
          );
        },
      ),
      { numRuns: 20 },
    );
  } finally {
    await Promise.all([direct.end(), sql.end()]);
  }
});

// Keys sent with digits past the microsecond (.NET's "o" format has seven, Java's Instant and Go's
// RFC3339Nano up to nine): PostgreSQL reads a timestamptz to the microsecond, rounding the rest, and
// the stamp trigger truncates that to the millisecond, so "…00.1239996Z" is keyed .124. The API (which
// normalises with the shared schema) and the resolver must key it the same, or the same write is
// stored a millisecond apart through the function and the Data API, and a tie SQL decides by device
// id is "stale" to the resolver.
Deno.test("keys with digits past the microsecond: the function, a Data API write and the resolver key them as PostgreSQL reads them", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const direct = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  const dataApiUpsert = (series: string, u: Update) =>
    direct.begin(async (tx) => {
      await tx`select set_config('role', 'authenticated', true),
        set_config('request.jwt.claims', ${JSON.stringify({ sub: user.id, role: "authenticated" })}, true)`;
      await tx`
        insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
        values (${user.id}, ${series}, ${u.chapter}, 0, 0, ${u.device_id}, ${u.updated_at}::text::timestamptz)
        on conflict (user_id, series_id) do update
          set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
              device_id = excluded.device_id, updated_at = excluded.updated_at`;
    }); // ::text: the date as sent (PostgREST hands PostgreSQL the JSON text; a timestamptz parameter
  //        would go through postgres.js's own Date, which has milliseconds only)
  const storedKey = async (series: string) => {
    const [row] = await sql<{ updated_at: string; device_id: string; chapter: number }[]>`
      select to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as updated_at, device_id, chapter
        from public.reading_progress where user_id = ${user.id} and series_id = ${series}`;
    return row;
  };
  const resolverKey = (u: Update) => new Date(ConflictResolver.timeOf(u)).toISOString();
  try {
    // Each as the database reads it: rounded up into the next millisecond, into the next second, down
    // (a half to even), and with an offset.
    const sent: [string, string][] = [
      ["2026-04-01T08:00:00.1239996Z", "2026-04-01T08:00:00.124Z"],
      ["2026-04-01T08:00:59.9999995Z", "2026-04-01T08:01:00.000Z"],
      ["2026-04-01T08:00:00.1239985Z", "2026-04-01T08:00:00.123Z"],
      ["2026-04-01T10:00:00.456999999+02:00", "2026-04-01T08:00:00.457Z"],
    ];
    for (const [updated_at, stored] of sent) {
      const u: Update = { updated_at, device_id: "nano", chapter: 1 };
      const viaDataApi = seriesId("nano-direct");
      const viaFunction = seriesId("nano-fn");
      await dataApiUpsert(viaDataApi, u);
      await overHttp(user, viaFunction, u);
      assert.equal((await storedKey(viaDataApi)).updated_at, stored, `${updated_at} through the Data API`);
      assert.equal((await storedKey(viaFunction)).updated_at, stored, `${updated_at} through the function`);
      assert.equal(resolverKey(u), stored, `${updated_at} keyed by the resolver`);
    }

    // A tie in the millisecond the database reads: the greater device id wins, on both paths, and the
    // resolver predicts it.
    const first: Update = { updated_at: "2026-04-01T09:00:00.124Z", device_id: "b", chapter: 1 };
    const second: Update = { updated_at: "2026-04-01T09:00:00.1239996Z", device_id: "c", chapter: 2 };
    assert.deepEqual(resolver.classify(second, first), { won: true, conflict: "tie" }, "the resolver: a tie");
    const direct2 = seriesId("nano-tie-direct");
    await dataApiUpsert(direct2, first);
    await dataApiUpsert(direct2, second);
    assert.deepEqual(
      await storedKey(direct2),
      { updated_at: "2026-04-01T09:00:00.124Z", device_id: "c", chapter: 2 },
      "the Data API: c replaced b in the same millisecond",
    );
    const fn2 = seriesId("nano-tie-fn");
    await overHttp(user, fn2, first);
    const answer = await overHttp(user, fn2, second);
    assert.deepEqual(
      { won: answer.won, conflict: answer.conflict, updated_at: answer.progress.updated_at },
      { won: true, conflict: "tie", updated_at: "2026-04-01T09:00:00.124Z" },
      "the function: c replaced b in the same millisecond",
    );
  } finally {
    await Promise.all([direct.end(), sql.end()]);
  }
});

Deno.test("resolver = database for writes dated near or beyond the 5 s tolerance: normalize(write, now, stored) is the stored key", async () => {
  const user = await createTestUser();
  const direct = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  // Offsets from the transaction's now(): within the tolerance (kept as dated), beyond it (a clock
  // ahead: recorded as now, after the stored version), or in the past. Not just beyond it: the
  // server judges "ahead" by its wall clock, which by each write is some ms past the now() this model
  // uses for both (a write dated within 5 s of the wall clock is decided and stored by its own
  // date); that band has its own tests (pgTAP 002 and 006, progress_api.test.ts).
  const offsetArb = fc.oneof(
    fc.integer({ min: 0, max: 5_000 }),
    fc.integer({ min: 7_000, max: 3_600_000 }),
    fc.integer({ min: -3, max: 0 }),
  );
  const stepArb = fc.record({
    offsetMs: offsetArb,
    device_id: fc.constantFrom("a", "b", "dev-1"),
    chapter: fc.integer({ min: 0, max: 99 }),
  });
  try {
    await fc.assert(
      fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 8 }), async (steps) => {
        const series = seriesId("ahead");
        // One transaction: every write sees the same now(), which the test reads first.
        await direct.begin(async (tx) => {
          await tx`select set_config('role', 'authenticated', true),
            set_config('request.jwt.claims', ${
            JSON.stringify({ sub: user.id, role: "authenticated" })
          }, true)`;
          const [{ now_ms }] = await tx<{ now_ms: string }[]>`
            select (extract(epoch from date_trunc('milliseconds', now())) * 1000)::bigint::text as now_ms`;
          const nowMs = Number(now_ms);
          let current: Update | null = null;
          for (const step of steps) {
            const sent = {
              updated_at: new Date(nowMs + step.offsetMs).toISOString(),
              device_id: step.device_id,
            };
            const expectedKey = resolver.normalize(sent, nowMs, current);
            // With its position: the same key with another position is not a replay.
            const incoming: Update = { ...expectedKey, chapter: step.chapter };
            const expected = resolver.classify(incoming, current);
            const [{ r }] = await tx<{ r: WriteResult }[]>`
              select public.write_reading_progress(${series}, ${step.chapter}, 0, 0, false,
                ${step.device_id}, ${sent.updated_at}::timestamptz) as r`;
            const answer = writeResultSchema.parse(r);
            const what: string = `${keyOf(sent)} (now + ${step.offsetMs} ms) over ${
              current && keyOf(current)
            }`;
            if (current !== null && resolver.compare(expectedKey, current) === 0) {
              // A replay: won, with the first answer's conflict (a 'tie' if that write replaced a
              // same-millisecond one), which only the server's log knows.
              assert.equal(answer.won, true, what);
            } else {
              assert.deepEqual([answer.won, answer.conflict], [expected.won, expected.conflict], what);
            }
            const next: Update = resolver.apply<Update>(current, incoming).current;
            assert.equal(keyOf(answer.progress), keyOf(next), "the stored key is the resolver's");
            current = next;
          }
          throw new Rollback();
        }).catch((e) => {
          if (!(e instanceof Rollback)) throw e;
        });
      }),
      { numRuns: 25 },
    );
  } finally {
    await direct.end();
  }
});

class Rollback extends Error {}

/**
 * The write's lock-free first step (one UPDATE ... WHERE stored updated_at < incoming) must compare
 * against the version that is current when it finally gets the row, not the one it first saw: a
 * write that waits behind another writer's uncommitted, even newer write has to lose to it (and be
 * logged), and one that waits behind an older-but-still-newer-than-stored write has to win after it.
 * Held open deterministically: connection A writes in a transaction it has not committed; B's write
 * is sent and must be seen waiting on A's row lock before A commits.
 */
Deno.test("a write that waited for another writer's lock is decided against the version that writer committed", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  const waiter = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  // B waits for A's lock until the test has seen it wait and A has committed: on a loaded machine that
  // can outlast the store's 2 s lock timeout (a 503, not what this test is about); the test's own
  // 10 s guard bounds the wait instead.
  const send = overStore(waiter, { lockTimeoutMs: 30_000, statementTimeoutMs: 30_000 });
  const at = (ms: number) => new Date(BASE + ms).toISOString();
  let heldOpen: Held | undefined;
  try {
    for (
      const c of [
        {
          held: { updated_at: at(3000), device_id: "a", chapter: 3 },
          waiting: { updated_at: at(2000), device_id: "b", chapter: 2 },
          waiterWins: false,
        },
        {
          held: { updated_at: at(2000), device_id: "a", chapter: 2 },
          waiting: { updated_at: at(3000), device_id: "b", chapter: 3 },
          waiterWins: true,
        },
      ]
    ) {
      const series = seriesId("wait");
      await send(user, series, { updated_at: at(1000), device_id: "a", chapter: 1 });
      const [{ pid: holderPid }] = await holder`select pg_backend_pid() as pid`;
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let holding!: () => void;
      let holdingFailed!: (error: unknown) => void;
      const held = new Promise<void>((resolve, reject) => [holding, holdingFailed] = [resolve, reject]);
      const holderTx = holder.begin(async (tx) => {
        await tx`select set_config('role', 'authenticated', true),
          set_config('request.jwt.claims', ${JSON.stringify({ sub: user.id, role: "authenticated" })}, true)`;
        const [{ answer }] =
          await tx`select public.write_reading_progress(${series}, ${c.held.chapter}, 0, 0, false,
          ${c.held.device_id}, ${c.held.updated_at}::timestamptz) as answer`;
        assert.equal(answer.won, true);
        holding();
        await released;
      });
      heldOpen = { release, done: holderTx };
      holderTx.catch(holdingFailed); // failing before holding(), it fails the test (not awaited forever)
      await held;
      const waiting = send(user, series, c.waiting);
      // B is blocked on A's row lock (not yet decided) before A commits.
      const deadline = Date.now() + 10_000;
      for (;;) {
        const [{ blocked }] = await sql`select count(*)::int as blocked from pg_catalog.pg_stat_activity
          where ${holderPid} = any(pg_catalog.pg_blocking_pids(pid))`;
        if (blocked > 0) break;
        assert.ok(Date.now() < deadline, "the second write never waited for the first one's lock");
        await new Promise((r) => setTimeout(r, 20));
      }
      release();
      await holderTx;
      const answer = await waiting;
      const winner = c.waiterWins ? c.waiting : c.held;
      assert.equal(answer.won, c.waiterWins);
      assert.equal(keyOf(answer.progress), keyOf(winner), "the answer carries the committed winner");
      const state = await stateOf(sql, user.id, series);
      assert.deepEqual(state.row, { key: keyOf(winner), chapter: winner.chapter });
      assert.deepEqual(
        state.log,
        c.waiterWins
          ? []
          : [{ kind: "stale", rejected: true, losing: keyOf(c.waiting), winning: keyOf(c.held) }],
      );
    }
  } finally {
    await endHeld(heldOpen);
    await Promise.all([holder.end(), waiter.end(), sql.end()]);
  }
});

/**
 * Two connections of their own (one holds a lock, one waits for it) and how to act on them: the waiter
 * as `userId` (asUser: role authenticated and the user's claims), the holder as a script writing for
 * that user (asScript: role postgres, which bypasses RLS, with the user's claims, which
 * write_reading_progress reads). A user's own writes wait for each other's whole transaction before
 * they meet a row (migration …_user_writes_serialized.sql), so it takes a writer outside them, as a
 * script is, to make a user's write wait for its row after it was first judged.
 */
function lockingPair(userId: string) {
  const connect = () => postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  const claims = JSON.stringify({ sub: userId, role: "authenticated" });
  const asUser = (tx: postgres.TransactionSql) =>
    tx`select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${claims}, true)`;
  const asScript = (tx: postgres.TransactionSql) =>
    tx`select set_config('request.jwt.claims', ${claims}, true)`;
  return { holder: connect(), waiter: connect(), asUser, asScript };
}

/** supabase-js .upsert() of chapter 7 from the device "phone", dated `updatedAt`: the rows it changed. */
function phoneUpsert(tx: postgres.TransactionSql, userId: string, series: string, updatedAt: string) {
  return tx<{ device_id: string }[]>`
    insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
    values (${userId}, ${series}, 7, 0, 0, 'phone', ${updatedAt}::timestamptz)
    on conflict (user_id, series_id) do update
      set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
          device_id = excluded.device_id, updated_at = excluded.updated_at
    returning device_id`;
}

/** Waits (up to 10 s) until a session waits for a lock the session `pid` holds. */
async function waitBlockedBy(sql: postgres.Sql, pid: number): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const [{ blocked }] = await sql`select count(*)::int as blocked from pg_catalog.pg_stat_activity
      where ${pid} = any(pg_catalog.pg_blocking_pids(pid))`;
    if (blocked > 0) return;
    assert.ok(Date.now() < deadline, "the upsert never waited for the first writer");
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The date of a write that has to be judged ahead (more than 5 s ahead of the wall clock) when it
 * first reaches its row, then wait until it no longer is: the server's clock + 15 s, read on `sql`.
 * That leaves 10 s for the waiter's BEGIN, its role and its write to arrive (assertJudgedAhead checks
 * they did), about as long as waitBlockedBy's hang guard; 8 s left only 3 s, short of a stall on a
 * loaded machine. The cost: each scenario waits about 10.5 s for untilNoLongerAhead, not 3.5 s.
 */
const AHEAD = "15 seconds";

/**
 * Called once waitBlockedBy has seen the write waiting: its first judgement came before that wait,
 * so if the wall clock is still more than 5 s behind `sent` now, the write was judged ahead.
 */
async function assertJudgedAhead(sql: postgres.Sql, sent: string): Promise<void> {
  const [{ ahead }] = await sql<{ ahead: boolean }[]>`
    select ${sent}::timestamptz > clock_timestamp() + interval '5 seconds' as ahead`;
  assert.ok(ahead, `precondition: the write dated ${sent} reached its row (and waited) while still ahead`);
}

/**
 * Sleeps (on the server's clock) until `sent` is at most 4.5 s ahead of it: a write that is released
 * after this is judged again as no longer ahead (under the 4.9 s and 5 s of the triggers).
 */
async function untilNoLongerAhead(sql: postgres.Sql, sent: string): Promise<void> {
  await sql`select pg_sleep(greatest(0, extract(epoch from
    ${sent}::timestamptz - interval '4.5 seconds' - clock_timestamp())::float8))`;
}

/**
 * On `holder`, a first write of `series` for the laptop by a script (`asScript`, see lockingPair) that
 * stays open until `release()`, then rolls back (`rolledBack` settles once it has); `holderPid` is its
 * session, for waitBlockedBy.
 */
async function firstWriteThatRollsBack(
  holder: postgres.Sql,
  asScript: (tx: postgres.TransactionSql) => unknown,
  series: string,
) {
  const [{ pid: holderPid }] = await holder`select pg_backend_pid() as pid`;
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  let holding!: () => void;
  let holdingFailed!: (error: unknown) => void;
  const held = new Promise<void>((resolve, reject) => [holding, holdingFailed] = [resolve, reject]);
  const rolledBack = holder.begin(async (tx) => {
    await asScript(tx);
    await tx`select public.write_reading_progress(${series}, 1, 0, 0, false, 'laptop', now())`;
    holding();
    await released;
    throw new Error("roll back");
  }).catch((error) => assert.equal(error.message, "roll back"));
  rolledBack.catch(holdingFailed); // failing before holding(), it fails the test (not awaited forever)
  await held;
  return { holderPid: holderPid as number, release, rolledBack };
}

Deno.test("a Data API upsert dated ahead that waited until it no longer is loses by its own date to a version committed meanwhile", async () => {
  // Its INSERT half judges it ahead (and stamps it now()) before the upsert waits for the row (dated
  // AHEAD; checked once it waits); its DO UPDATE runs once it is at most 4.5 s ahead of the wall
  // clock: an ordinary write, older than the e-reader's version committed while it waited (dated
  // 4.9 s ahead of a later clock) by a script (see lockingPair).
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const { holder, waiter, asUser, asScript } = lockingPair(user.id);
  const series = seriesId("ahead-no-more");
  let heldOpen: Held | undefined;
  try {
    await sql`insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
      values (${user.id}, ${series}, 1, 0, 0, 'seed', now() - interval '1 minute')`;
    const [{ pid: holderPid }] = await holder`select pg_backend_pid() as pid`;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let holding!: () => void;
    let holdingFailed!: (error: unknown) => void;
    const held = new Promise<void>((resolve, reject) => [holding, holdingFailed] = [resolve, reject]);
    let ereaderKey = "";
    const holderTx = holder.begin(async (tx) => {
      await asScript(tx);
      await tx`select 1 from public.reading_progress where user_id = ${user.id} and series_id = ${series} for update`;
      holding();
      await released;
      const [{ key }] = await tx<{ key: string }[]>`
        update public.reading_progress set chapter = 2, device_id = 'ereader',
               updated_at = clock_timestamp() + interval '4.9 seconds'
         where user_id = ${user.id} and series_id = ${series}
        returning to_jsonb(updated_at) #>> '{}' as key`;
      ereaderKey = key;
    });
    heldOpen = { release, done: holderTx };
    holderTx.catch(holdingFailed); // failing before holding(), it fails the test (not awaited forever)
    await held;
    const [{ sent }] = await sql<{ sent: string }[]>`
      select to_jsonb(clock_timestamp() + ${AHEAD}::interval) #>> '{}' as sent`;
    const waiting = waiter.begin(async (tx) => {
      await asUser(tx);
      return await phoneUpsert(tx, user.id, series, sent);
    });
    await waitBlockedBy(sql, holderPid);
    await assertJudgedAhead(sql, sent);
    await untilNoLongerAhead(sql, sent);
    release();
    await holderTx;
    assert.deepEqual((await waiting).map((r) => r.device_id), [], "the upsert changed nothing");
    assert.ok(Date.parse(ereaderKey) > Date.parse(sent), "the e-reader's version is newer by its own date");
    const state = await stateOf(sql, user.id, series);
    assert.equal(state.row?.chapter, 2, "the e-reader's version stays");
    assert.deepEqual(
      state.log.map((entry) => [entry.kind, entry.rejected, entry.losing]),
      [["stale", true, keyOf({ updated_at: sent, device_id: "phone" })]],
      "the phone's write is logged as refused, under its own date",
    );
  } finally {
    await endHeld(heldOpen);
    await Promise.all([holder.end(), waiter.end(), sql.end()]);
  }
});

/**
 * A Data API upsert dated beyond the tolerance (a device clock an hour ahead) wins by its own date
 * over every version the table can hold, including one a concurrent writer commits while the upsert
 * waits: its BEFORE INSERT half can only stamp it "now", and the DO UPDATE that follows sees only
 * excluded.*, so the claim has to reach that DO UPDATE some other way than the key (a stamp read
 * before the wait would lose to a concurrent version stored up to 5 s ahead). Both shapes: the row
 * exists and A updates it, or A inserts the first version; B's upsert is seen waiting before A commits.
 * A is a script writing for the user (see lockingPair).
 */
Deno.test("a Data API upsert dated an hour ahead wins over a version committed while it waited", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const { holder, waiter, asUser, asScript } = lockingPair(user.id);
  let heldOpen: Held | undefined;
  try {
    for (const rowExists of [true, false]) {
      const series = seriesId(rowExists ? "ahead-wait-update" : "ahead-wait-insert");
      if (rowExists) {
        await sql`insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
          values (${user.id}, ${series}, 1, 0, 0, 'a', now() - interval '1 minute')`;
      }
      const [{ pid: holderPid }] = await holder`select pg_backend_pid() as pid`;
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let holding!: () => void;
      let holdingFailed!: (error: unknown) => void;
      const held = new Promise<void>((resolve, reject) => [holding, holdingFailed] = [resolve, reject]);
      // A: a version dated 3 s ahead (within the tolerance: stored as dated), not yet committed.
      let heldKey = "";
      const holderTx = holder.begin(async (tx) => {
        await asScript(tx);
        const [{ answer }] = await tx`select public.write_reading_progress(${series}, 2, 0, 0, false,
          'a', now() + interval '3 seconds') as answer`;
        const result = writeResultSchema.parse(answer);
        assert.equal(result.won, true);
        heldKey = result.progress.updated_at;
        holding();
        await released;
      });
      heldOpen = { release, done: holderTx };
      holderTx.catch(holdingFailed); // failing before holding(), it fails the test (not awaited forever)
      await held;
      // B: supabase-js .upsert() from a phone whose clock is an hour ahead.
      const waiting = waiter.begin(async (tx) => {
        await asUser(tx);
        return await phoneUpsert(tx, user.id, series, new Date(Date.now() + 3_600_000).toISOString());
      });
      await waitBlockedBy(sql, holderPid);
      release();
      await holderTx;
      const what = rowExists ? "over an existing row" : "as the first version";
      assert.deepEqual((await waiting).map((r) => r.device_id), ["phone"], `the upsert landed ${what}`);
      const state = await stateOf(sql, user.id, series);
      assert.deepEqual(
        state.row,
        {
          key: keyOf({ updated_at: new Date(Date.parse(heldKey) + 1).toISOString(), device_id: "phone" }),
          chapter: 7,
        },
        `stored 1 ms after the version A committed (${what})`,
      );
      assert.deepEqual(state.log, [], "nothing was refused");
    }
  } finally {
    await endHeld(heldOpen);
    await Promise.all([holder.end(), waiter.end(), sql.end()]);
  }
});

/**
 * A first write dated AHEAD (15 s) is judged "ahead" (and keyed now()) before its INSERT waits for a
 * concurrent first write of the series, an uncommitted insert of the same row. When that one rolls
 * back, once the write is at most 4.5 s ahead of the wall clock, it is an ordinary write, to be stored
 * under its own date. Stored at now() instead, the tablet's write dated in between (1 s before it)
 * would replace it although older. The API function re-dates its own row; a Data API insert is
 * refused with 40001 and its retry is stored under its date.
 */
Deno.test("a first write dated ahead that waited for a first write which rolled back is judged after its wait", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const { holder, waiter, asUser, asScript } = lockingPair(user.id);
  const tabletPool = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  const tablet = overStore(tabletPool);
  let heldOpen: Held | undefined;
  try {
    for (const path of ["api", "data api"] as const) {
      const series = seriesId(path === "api" ? "ahead-rollback-api" : "ahead-rollback-rest");
      const { holderPid, release, rolledBack } = await firstWriteThatRollsBack(holder, asScript, series);
      heldOpen = { release, done: rolledBack };
      const [{ sent }] = await sql<{ sent: string }[]>`
        select to_jsonb(date_trunc('milliseconds', clock_timestamp() + ${AHEAD}::interval)) #>> '{}' as sent`;
      const phone = () =>
        waiter.begin(async (tx) => {
          await asUser(tx);
          if (path === "data api") return (await phoneUpsert(tx, user.id, series, sent)).length;
          const [{ answer }] = await tx`select public.write_reading_progress(${series}, 7, 0, 0, false,
            'phone', ${sent}::timestamptz) as answer`;
          const result = writeResultSchema.parse(answer);
          assert.equal(result.won, true);
          assert.equal(
            keyOf(result.progress),
            keyOf({ updated_at: sent, device_id: "phone" }),
            "answered with its date",
          );
          return 1;
        });
      const waiting = phone();
      // Its 40001 (data api) can arrive before the holder's rollback is answered, while the test still
      // awaits rolledBack: handled from the start, so that is no uncaught rejection (checked below).
      waiting.catch(() => {});
      await waitBlockedBy(sql, holderPid);
      await assertJudgedAhead(sql, sent);
      await untilNoLongerAhead(sql, sent);
      release();
      await rolledBack;
      if (path === "data api") {
        await assert.rejects(
          waiting,
          (error: { code?: string }) => error.code === "40001",
          "refused for a retry",
        );
        assert.equal(await phone(), 1, "the retry lands");
      } else {
        assert.equal(await waiting, 1);
      }
      const stored = await stateOf(sql, user.id, series);
      assert.deepEqual(
        stored.row,
        { key: keyOf({ updated_at: sent, device_id: "phone" }), chapter: 7 },
        path,
      );
      const older = new Date(Date.parse(sent) - 1_000).toISOString();
      const answer = await tablet(user, series, { updated_at: older, device_id: "tablet", chapter: 9 });
      assert.equal(answer.won, false, `${path}: the tablet's write dated 1 s before the phone's loses`);
      assert.equal((await stateOf(sql, user.id, series)).row?.chapter, 7);
    }
  } finally {
    await endHeld(heldOpen);
    await Promise.all([holder.end(), waiter.end(), tabletPool.end(), sql.end()]);
  }
});

/**
 * The same wait in a bulk Data API upsert (supabase-js .upsert([...]); PostgREST inserts the rows from
 * json_populate_recordset in one statement): its first row, dated AHEAD (15 s), waits for a first write
 * of its series that rolls back; its second row is dated an hour ahead. Each row judged ahead is
 * judged again once it is in (the first by the second's stamp trigger, after the wait), not only the
 * statement's last one, which is still ahead: the statement is refused with 40001 and its retry
 * stores the first row under its own date.
 */
Deno.test("a bulk Data API upsert whose first row waited for a first write which rolled back is judged again, though its last row is still ahead", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  const { holder, waiter, asUser, asScript } = lockingPair(user.id);
  const series = seriesId("ahead-rollback-bulk");
  const other = seriesId("ahead-bulk-hour");
  let heldOpen: Held | undefined;
  try {
    const { holderPid, release, rolledBack } = await firstWriteThatRollsBack(holder, asScript, series);
    heldOpen = { release, done: rolledBack };
    const [{ sent }] = await sql<{ sent: string }[]>`
      select to_jsonb(date_trunc('milliseconds', clock_timestamp() + ${AHEAD}::interval)) #>> '{}' as sent`;
    const rows = [
      {
        user_id: user.id,
        series_id: series,
        chapter: 7,
        page: 0,
        percentage: 0,
        device_id: "phone",
        updated_at: sent,
      },
      {
        user_id: user.id,
        series_id: other,
        chapter: 8,
        page: 0,
        percentage: 0,
        device_id: "phone",
        updated_at: new Date(Date.now() + 3_600_000).toISOString(),
      },
    ];
    const bulk = () =>
      waiter.begin(async (tx) => {
        await asUser(tx);
        return await dataApiBulkUpsert(tx, rows);
      });
    const waiting = bulk();
    waiting.catch(() => {}); // its 40001 can come before rolledBack settles (checked below)
    await waitBlockedBy(sql, holderPid);
    await assertJudgedAhead(sql, sent);
    await untilNoLongerAhead(sql, sent);
    release();
    await rolledBack;
    await assert.rejects(
      waiting,
      (error: { code?: string }) => error.code === "40001",
      "refused for a retry",
    );
    assert.equal((await bulk()).length, 2, "the retry lands");
    assert.deepEqual(
      (await stateOf(sql, user.id, series)).row,
      { key: keyOf({ updated_at: sent, device_id: "phone" }), chapter: 7 },
      "the first row is stored under its own date",
    );
  } finally {
    await endHeld(heldOpen);
    await Promise.all([holder.end(), waiter.end(), sql.end()]);
  }
});
