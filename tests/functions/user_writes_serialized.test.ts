// One user's concurrent multi-row writes wait for each other instead of deadlocking (migration
// …_user_writes_serialized.sql), against the real PostgreSQL, on connections of their own:
//   * two Data API bulk upserts (supabase-js .upsert([...]): PostgREST's one INSERT ... ON CONFLICT DO
//     UPDATE of the rows in the order sent) of the same two series in opposite orders;
//   * a bulk upsert and the API's batch (write_reading_progress_batch, which locks in series_id order),
//     in opposite orders;
// both complete, and last write wins holds: each series keeps the greater key, the refused write is
// logged. The interleaving that deadlocked is made by locks, not timing: a script's transaction holds
// both rows (SELECT ... FOR UPDATE); the first write is sent and seen waiting for it (pg_blocking_pids),
// then the second, seen waiting too; then the script commits. Before, each write then took the row it
// was waiting for and waited for the other's (40P01 after deadlock_timeout for one of them); now the
// second waits for the first's whole transaction.
//   * a user's transaction that locked a row (SELECT ... FOR UPDATE, as the user) before its first write
//     does not wait for the user's lock that a write waiting for that row holds: it goes on, and both
//     complete (waiting, it would close a deadlock the serialization made).
// A write stuck behind a transaction of the same user that does not end (migrations
// …_user_write_wait_answered_503.sql, …_user_write_wait_retry_after.sql and
// …_user_write_wait_answered_429.sql):
//   * through the Data API, it ends where its lock timeout or statement timeout would end the wait with
//     SQLSTATE PGRST, which PostgREST answers with HTTP 429, one Retry-After: 1 and the body "code":
//     "PT503", without starting its connection worker (read here as PostgREST's Error.hs and App.hs read
//     and send it: there is no PostgREST in the local stack), and stores nothing; before, the same as a
//     503, which PostgREST sent with its own Retry-After: 0 first and after which (12.0 to 14.x) it
//     flushed its pool and reloaded its schema cache; before that SQLSTATE PT503 (a 503 with PostgREST's
//     Retry-After: 0 alone, none of ours, and that connection worker), and before that PostgREST's 500
//     for 57014 (the statement timeout, first under Supabase's equal 8 s timeouts) or 55P03;
//   * a write sent after other statements in one simple-query message waits as long as its own
//     statement timeout allows (PostgreSQL times each statement of such a message apart): it gets the
//     lock once the other write ends;
//   * a wait that gets the lock in time leaves the transaction's own lock_timeout as it was;
//   * a cancel while it waits stays a cancel (57014), though the statement timeout's end, the same
//     SQLSTATE, is answered as the wait's;
//   * through the progress function, it is still the 503 service_unavailable of a lock timeout, and
//     the function's store maps each form the database has raised that wait in (55P03, PT503, PGRST with
//     status 503 or 429).

import assert from "node:assert/strict";
import postgres from "postgres";
import { createTestUser } from "../support/env.ts";
import { mapDatabaseError } from "../../shared/progress/store.ts";
import {
  adminSql,
  call,
  dataApiBulkUpsert,
  endHeld,
  errorOf,
  type Held,
  seriesId,
  testEnv,
  write,
} from "./support.ts";

/** A connection of its own (one backend: its pid stays the one waitedFor names). */
const connection = () => postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });

const asUser = (tx: postgres.TransactionSql, userId: string) =>
  tx`select set_config('role', 'authenticated', true),
    set_config('request.jwt.claims', ${JSON.stringify({ sub: userId, role: "authenticated" })}, true)`;

interface Write {
  series_id: string;
  chapter: number;
  device_id: string;
  updated_at: string;
}

/** What PostgREST runs for supabase-js .upsert(rows) as the user: the series it returned, in order. */
function bulkUpsert(sql: postgres.Sql, userId: string, writes: Write[]): Promise<string[]> {
  const rows = writes.map((w) => ({ ...w, user_id: userId, page: 0, percentage: 0 }));
  return sql.begin(async (tx) => {
    await asUser(tx, userId);
    const returned = await dataApiBulkUpsert(tx, rows);
    return returned.map((r) => r.series_id);
  });
}

/** The API's batch as the function's store sends it, as the user: whether each write won, in order. */
function apiBatch(sql: postgres.Sql, userId: string, writes: Write[]): Promise<boolean[]> {
  const body = writes.map((w) => ({ ...w, page: 0, percentage: 0, cleared: false }));
  return sql.begin(async (tx) => {
    await asUser(tx, userId);
    const [{ results }] = await tx<{ results: { won: boolean }[] }[]>`
      select public.write_reading_progress_batch(${tx.json(body)}) as results`;
    return results.map((r) => r.won);
  });
}

const pidOf = async (sql: postgres.Sql) =>
  (await sql<{ pid: number }[]>`select pg_backend_pid() as pid`)[0].pid;

/** Waits (a 10 s guard) until backend `pid` waits for a lock another backend holds or waits ahead for. */
async function waitedFor(admin: postgres.Sql, pid: number, what: string): Promise<void> {
  for (const deadline = Date.now() + 10_000;;) {
    const [{ waits }] = await admin<{ waits: boolean }[]>`
      select cardinality(pg_blocking_pids(${pid}::integer)) > 0 as waits`;
    if (waits) return;
    assert.ok(Date.now() < deadline, `${what} never waited (10 s)`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * A script's transaction (role postgres: RLS bypassed, not serialized with the user's writes) holding
 * the user's rows of `series` until `release()`; `done` settles once it has committed.
 */
async function holdRows(holder: postgres.Sql, userId: string, series: string[]): Promise<Held> {
  const release = Promise.withResolvers<void>();
  const locked = Promise.withResolvers<void>();
  const done = holder.begin(async (tx) => {
    await tx`select 1 from public.reading_progress where user_id = ${userId} and series_id = any(${series}::text[])
             for update`;
    locked.resolve();
    await release.promise;
  });
  done.catch(locked.reject);
  await locked.promise;
  return { release: () => release.resolve(), done };
}

/** Both settled; a rejection (40P01: "deadlock detected") named with its code. */
async function bothCompleted<A, B>(first: Promise<A>, second: Promise<B>): Promise<[A, B]> {
  const [a, b] = await Promise.allSettled([first, second]);
  const why = (r: PromiseSettledResult<unknown>) =>
    r.status === "fulfilled" ? "completed" : `${(r.reason as { code?: string }).code}: ${r.reason}`;
  assert.ok(
    a.status === "fulfilled" && b.status === "fulfilled",
    `first write: ${why(a)}; second write: ${why(b)}`,
  );
  return [a.value, b.value];
}

/** The stored version of a series: "<updated_at ISO> <device> ch<chapter>". */
async function stored(admin: postgres.Sql, userId: string, series: string): Promise<string | undefined> {
  const [row] = await admin<{ updated_at: Date; device_id: string; chapter: number }[]>`
    select updated_at, device_id, chapter from public.reading_progress
     where user_id = ${userId} and series_id = ${series}`;
  return row && `${row.updated_at.toISOString()} ${row.device_id} ch${row.chapter}`;
}

/** The conflict log of a series, oldest first: "<kind> <losing device> <losing updated_at ISO>". */
async function logOf(admin: postgres.Sql, userId: string, series: string): Promise<string[]> {
  const rows = await admin<{ kind: string; losing_device_id: string; losing_updated_at: Date }[]>`
    select kind, losing_device_id, losing_updated_at from public.reading_progress_conflicts
     where user_id = ${userId} and series_id = ${series} order by id`;
  return rows.map((r) => `${r.kind} ${r.losing_device_id} ${r.losing_updated_at.toISOString()}`);
}

/** 2026-03-01T10:00:0<s>.000Z: the writes' keys, all after the seed version. */
const at = (s: number) => `2026-03-01T10:00:0${s}.000Z`;

/** A new user with two series, each holding a seed version dated before every write below. */
async function seededUser(admin: postgres.Sql) {
  const user = await createTestUser();
  // Byte-wise s1 < s2: the order in which the API's batch locks them.
  const [s1, s2] = [seriesId("order-1"), seriesId("order-2")];
  for (const s of [s1, s2]) {
    await admin`insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
                values (${user.id}, ${s}, 1, 'seed', '2026-01-01T00:00:00Z')`;
  }
  return { user, s1, s2 };
}

type SeededUser = Awaited<ReturnType<typeof seededUser>>;

/** One of the two interleaved writes: what it is (for the hang guard's message) and how it is sent. */
interface InterleavedWrite<R> {
  what: string;
  send: (sql: postgres.Sql, seeded: SeededUser) => Promise<R>;
}

/**
 * Two writes of a new seeded user interleaved as they deadlocked, held by locks: a script's transaction
 * holds both series' rows; the first write is sent on a connection of its own and seen waiting, then the
 * second, seen waiting too; then the script commits. Both must complete; `check` gets their results while
 * the admin connection is still open.
 */
async function heldInterleaving<A, B>(
  firstWrite: InterleavedWrite<A>,
  secondWrite: InterleavedWrite<B>,
  check: (admin: postgres.Sql, seeded: SeededUser, results: [A, B]) => Promise<void>,
): Promise<void> {
  const admin = adminSql({ max: 2 });
  const [holder, first, second] = [connection(), connection(), connection()];
  let held: Held | undefined;
  try {
    const seeded = await seededUser(admin);
    const { user, s1, s2 } = seeded;
    const [firstPid, secondPid] = [await pidOf(first), await pidOf(second)];
    held = await holdRows(holder, user.id, [s1, s2]);
    const firstSent = firstWrite.send(first, seeded);
    firstSent.catch(() => {}); // settled below
    await waitedFor(admin, firstPid, firstWrite.what);
    const secondSent = secondWrite.send(second, seeded);
    secondSent.catch(() => {});
    await waitedFor(admin, secondPid, secondWrite.what);
    held.release();
    await held.done;
    await check(admin, seeded, await bothCompleted(firstSent, secondSent));
  } finally {
    await endHeld(held);
    await Promise.all([holder.end(), first.end(), second.end(), admin.end()]);
  }
}

Deno.test("two bulk upserts of one user's series in opposite orders both complete, last write wins", () =>
  heldInterleaving(
    // The phone: s1 newer than the tablet's, s2 older.
    {
      what: "the phone's upsert",
      send: (sql, { user, s1, s2 }) =>
        bulkUpsert(sql, user.id, [
          { series_id: s1, chapter: 12, device_id: "phone", updated_at: at(2) },
          { series_id: s2, chapter: 21, device_id: "phone", updated_at: at(1) },
        ]),
    },
    {
      what: "the tablet's upsert",
      send: (sql, { user, s1, s2 }) =>
        bulkUpsert(sql, user.id, [
          { series_id: s2, chapter: 22, device_id: "tablet", updated_at: at(2) },
          { series_id: s1, chapter: 11, device_id: "tablet", updated_at: at(1) },
        ]),
    },
    async (admin, { user, s1, s2 }, [phoneRows, tabletRows]) => {
      // The phone's went first (the tablet waited for its whole transaction): both its rows stored; the
      // tablet's s2 replaced the phone's older one, its s1 was refused (no row returned) and logged.
      assert.deepEqual(phoneRows, [s1, s2]);
      assert.deepEqual(tabletRows, [s2]);
      assert.equal(await stored(admin, user.id, s1), `${at(2)} phone ch12`);
      assert.equal(await stored(admin, user.id, s2), `${at(2)} tablet ch22`);
      assert.deepEqual(await logOf(admin, user.id, s1), [`stale tablet ${at(1)}`]);
      assert.deepEqual(await logOf(admin, user.id, s2), []);
    },
  ));

Deno.test("the API's batch and a bulk upsert of one user's series in opposite orders both complete, last write wins", () =>
  heldInterleaving(
    // The batch (locks s1, then s2): s1 newer than the upsert's, s2 older. The upsert sends s2 first.
    {
      what: "the batch",
      send: (sql, { user, s1, s2 }) =>
        apiBatch(sql, user.id, [
          { series_id: s2, chapter: 21, device_id: "laptop", updated_at: at(1) },
          { series_id: s1, chapter: 12, device_id: "laptop", updated_at: at(2) },
        ]),
    },
    {
      what: "the bulk upsert",
      send: (sql, { user, s1, s2 }) =>
        bulkUpsert(sql, user.id, [
          { series_id: s2, chapter: 22, device_id: "phone", updated_at: at(2) },
          { series_id: s1, chapter: 11, device_id: "phone", updated_at: at(1) },
        ]),
    },
    async (admin, { user, s1, s2 }, [won, upserted]) => {
      assert.deepEqual(won, [true, true], "the batch went first: both its writes stored");
      assert.deepEqual(upserted, [s2], "the upsert's s2 replaced the batch's older one; its s1 was refused");
      assert.equal(await stored(admin, user.id, s1), `${at(2)} laptop ch12`);
      assert.equal(await stored(admin, user.id, s2), `${at(2)} phone ch22`);
      assert.deepEqual(await logOf(admin, user.id, s1), [`stale phone ${at(1)}`]);
      assert.deepEqual(await logOf(admin, user.id, s2), []);
    },
  ));

Deno.test("a user's transaction that locked a row before its first write does not wait for the user's lock: no deadlock", async () => {
  // The script locks s1 as the user (SELECT ... FOR UPDATE takes no statement trigger, so not the
  // user's lock); the phone's upsert of s1 takes the user's lock and waits for the row; the script
  // then writes s1. Waiting for the user's lock there, it would wait for the phone, which waits for
  // it: it only tries the lock (it holds a row already) and goes on.
  const admin = adminSql({ max: 2 });
  const [script, phoneConnection] = [connection(), connection()];
  let held: Held | undefined;
  try {
    const { user, s1 } = await seededUser(admin);
    const [scriptPid, phonePid] = [await pidOf(script), await pidOf(phoneConnection)];
    const release = Promise.withResolvers<void>();
    const locked = Promise.withResolvers<void>();
    const scripted = script.begin(async (tx) => {
      await asUser(tx, user.id);
      await tx`select 1 from public.reading_progress where series_id = ${s1} for update`;
      locked.resolve();
      await release.promise;
      await tx`update public.reading_progress set chapter = 30, device_id = 'script', updated_at = ${at(3)}
                where series_id = ${s1}`;
    });
    scripted.catch(locked.reject);
    held = { release: () => release.resolve(), done: scripted };
    await locked.promise;
    const phone = bulkUpsert(phoneConnection, user.id, [
      { series_id: s1, chapter: 12, device_id: "phone", updated_at: at(2) },
    ]);
    phone.catch(() => {});
    await waitedFor(admin, phonePid, "the phone's upsert");
    const [{ blocker }] = await admin<{ blocker: boolean }[]>`
      select ${scriptPid}::integer = any(pg_blocking_pids(${phonePid}::integer)) as blocker`;
    assert.ok(blocker, "the phone's upsert waits for the script's row");
    release.resolve();
    const [, phoneRows] = await bothCompleted(scripted, phone);
    assert.deepEqual(phoneRows, [], "the phone's older write was refused");
    assert.equal(await stored(admin, user.id, s1), `${at(3)} script ch30`);
    assert.deepEqual(await logOf(admin, user.id, s1), [`stale phone ${at(2)}`]);
  } finally {
    await endHeld(held);
    await Promise.all([script.end(), phoneConnection.end(), admin.end()]);
  }
});

/**
 * A transaction of the user's on `holder` that wrote `series` (so it holds the user's write lock) and
 * stays open until `release()`: a device's write that does not end; `done` settles once it committed.
 */
async function userWriteInProgress(holder: postgres.Sql, userId: string, series: string): Promise<Held> {
  const release = Promise.withResolvers<void>();
  const wrote = Promise.withResolvers<void>();
  const done = holder.begin(async (tx) => {
    await asUser(tx, userId);
    await dataApiBulkUpsert(tx, [{
      user_id: userId,
      series_id: series,
      chapter: 5,
      page: 0,
      percentage: 0,
      device_id: "laptop",
      updated_at: at(5),
    }]);
    wrote.resolve();
    await release.promise;
  });
  done.catch(wrote.reject);
  await wrote.promise;
  return { release: () => release.resolve(), done };
}

/** The timeouts a Data API request runs with: its session's (the login role's) and its transaction's. */
interface RequestTimeouts {
  /** Startup parameters, as `alter role authenticator set ...` gives PostgREST's sessions. */
  session: { lock_timeout?: number };
  /** set_config(..., true) in the request's transaction, as PostgREST applies the impersonated role's. */
  transaction: { lock_timeout?: number; statement_timeout?: number };
}

/**
 * A Data API bulk upsert of the user's as PostgREST runs it with `timeouts`, on a connection of its own
 * (ended before it settles); `afterwards` runs in the same transaction once the upsert has completed.
 */
async function timedUpsert<R>(
  timeouts: RequestTimeouts,
  userId: string,
  writes: Write[],
  onConnected: (pid: number) => void = () => {},
  afterwards: (tx: postgres.TransactionSql) => Promise<R> = () => Promise.resolve(undefined as R),
): Promise<{ returned: string[]; after: R }> {
  const sql = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {}, connection: timeouts.session });
  try {
    onConnected(await pidOf(sql));
    const rows = writes.map((w) => ({ ...w, user_id: userId, page: 0, percentage: 0 }));
    return await sql.begin(async (tx) => {
      await asUser(tx, userId);
      for (const [name, ms] of Object.entries(timeouts.transaction)) {
        await tx`select set_config(${name}, ${String(ms)}, true)`;
      }
      const returned = (await dataApiBulkUpsert(tx, rows)).map((r) => r.series_id);
      return { returned, after: await afterwards(tx) };
    });
  } finally {
    await sql.end();
  }
}

/** The progress function's answer to a lock timeout: status, code, message, headers. */
const LOCK_TIMEOUT_ANSWER = [
  503,
  "service_unavailable",
  "The data is locked by another operation; try again",
  { "retry-after": "1" },
];

/** A database error as postgres.js gives it. */
interface DatabaseError {
  code?: string;
  message?: string;
  detail?: string;
  hint?: string;
}

/** The error a promise was rejected with (a failure if it was not). */
async function refusal(sent: Promise<unknown>, what: string): Promise<DatabaseError> {
  const outcome = await sent.then((value) => ({ value }), (error) => ({ error }));
  assert.ok("error" in outcome, `${what}: completed, ${JSON.stringify(outcome)}`);
  return outcome.error as DatabaseError;
}

/**
 * PostgREST's answer to a database error: status, the header fields it sends beside Content-Type and
 * Content-Length (in order, a name may come twice), whether the answer starts its connection worker, body.
 */
interface PostgrestAnswer {
  status: number;
  headers: [string, string][];
  startsConnectionWorker: boolean;
  body: { code: string; message: string; details: string | null; hint: string | null };
}

/** A header as fetch's `headers.get` reads it: every field of that name, joined with ", " (null if none). */
function fetchHeader(headers: [string, string][], name: string): string | null {
  const values = headers.filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
  return values.length === 0 ? null : values.join(", ");
}

/**
 * How PostgREST sends an error of `status` with `raised` headers (src/PostgREST/App.hs, `postgrest`): on
 * a 503, addRetryHint puts ("Retry-After", its reconnection delay: 0 unless it has had to reconnect)
 * before the error's headers (12.0 and later, 16.x too), and the connection worker starts (12.0 to 14.x:
 * it flushes the pool and reloads the configuration and the schema cache; later 12.2 releases skip it
 * only while no schema cache is loaded, which a request that reached the database rules out; the 16.x
 * source no longer starts it from a 503). Any other status goes out with the raised headers alone.
 */
function sentByPostgrest(
  status: number,
  raised: [string, string][],
): Pick<PostgrestAnswer, "headers" | "startsConnectionWorker"> {
  const unavailable = status === 503;
  return {
    headers: unavailable ? [["Retry-After", "0"], ...raised] : raised,
    startsConnectionWorker: unavailable,
  };
}

/** A JSON object parsed from `text`, or undefined. */
function jsonObject(text: string | undefined): Record<string, unknown> | undefined {
  try {
    const value = JSON.parse(text ?? "");
    return value !== null && typeof value === "object" && !Array.isArray(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

const isOptionalString = (value: unknown) =>
  value === undefined || value === null || typeof value === "string";

/**
 * What PostgREST (src/PostgREST/Error.hs, then App.hs: sentByPostgrest) answers for `error`, for the
 * SQLSTATEs a wait can end with. PGRST (parseRaisePGRST, docs: Errors, "Raise errors with HTTP Status
 * Codes"): the MESSAGE is the body, a JSON object with string "code" and "message" and optional string
 * "details" and "hint"; the DETAIL a JSON object with a number "status", an object of strings "headers"
 * and an optional string "status_text"; either not so, PostgREST answers its own 500 PGRST121. PT<nnn>:
 * status nnn, no headers of the error's. Else (mapSQLtoHTTP) 500 for 55* and 57* but 57P01, the statuses
 * these tests meet otherwise.
 */
function postgrestAnswer(error: DatabaseError): PostgrestAnswer {
  const body = {
    code: error.code ?? "",
    message: error.message ?? "",
    details: error.detail ?? null,
    hint: error.hint ?? null,
  };
  if (error.code === "PGRST") {
    const raised = jsonObject(error.message);
    const said = jsonObject(error.detail);
    const headers = said?.headers;
    if (
      !raised || typeof raised.code !== "string" || typeof raised.message !== "string" ||
      !isOptionalString(raised.details) || !isOptionalString(raised.hint) ||
      !said || !Number.isInteger(said.status) || !isOptionalString(said.status_text) ||
      headers === null || typeof headers !== "object" || Array.isArray(headers) ||
      !Object.values(headers).every((v) => typeof v === "string")
    ) {
      return {
        status: 500,
        ...sentByPostgrest(500, []),
        body: {
          ...body,
          code: "PGRST121",
          message: `Could not parse JSON in the "RAISE SQLSTATE 'PGRST'" error`,
        },
      };
    }
    return {
      status: said.status as number,
      ...sentByPostgrest(said.status as number, Object.entries(headers as Record<string, string>)),
      body: {
        code: raised.code,
        message: raised.message,
        details: (raised.details as string | undefined) ?? null,
        hint: (raised.hint as string | undefined) ?? null,
      },
    };
  }
  const statusCode = /^PT(\d+)$/.exec(body.code)?.[1];
  if (statusCode) return { status: Number(statusCode), ...sentByPostgrest(Number(statusCode), []), body };
  if (/^(55|57)/.test(body.code) && body.code !== "57P01") {
    return { status: 500, ...sentByPostgrest(500, []), body };
  }
  throw new Error(`not modelled here: what PostgREST answers for ${body.code} ${body.message}`);
}

/**
 * Asserts `error` is the wait that waited too long, as PostgREST answers it: 429 with one Retry-After: 1
 * (fetch reads "1"), no connection worker started, the body PT503 with its message, details and hint;
 * `what` and `before` name the case and its old outcome.
 */
function assertWaitAnswered(error: DatabaseError, what: string, before: string): void {
  const answer = postgrestAnswer(error);
  const seen = `${what}: ${error.code} ${error.message} ${error.detail} (before: ${before})`;
  assert.deepEqual(
    {
      status: answer.status,
      headers: answer.headers,
      retryAfterAsFetchReadsIt: fetchHeader(answer.headers, "retry-after"),
      startsConnectionWorker: answer.startsConnectionWorker,
    },
    {
      status: 429,
      headers: [["Retry-After", "1"]],
      retryAfterAsFetchReadsIt: "1",
      startsConnectionWorker: false,
    },
    seen,
  );
  assert.equal(answer.body.code, "PT503", seen);
  assert.equal(answer.body.message, "Another write of this user is in progress", what);
  assert.match(
    answer.body.details ?? "",
    /^This statement waited \d+ ms for a transaction of the same user writing to public\.reading_progress, which has not ended\.$/,
    what,
  );
  assert.match(answer.body.hint ?? "", /^Nothing of this write was stored: send it again\./, what);
}

/**
 * What the wait's end was answered before migration …_user_write_wait_answered_429.sql, newest first:
 * SQLSTATE PGRST with status 503 (…_user_write_wait_retry_after.sql), then SQLSTATE PT503
 * (…_user_write_wait_answered_503.sql), both 503s to which PostgREST puts its own Retry-After: 0
 * (sentByPostgrest); each shape's `before` goes on with what it was answered before those.
 */
const BEFORE_429 =
  "PGRST 503: a 503 with PostgREST's Retry-After: 0 before ours, and its connection worker; " +
  "PT503: a 503 with PostgREST's Retry-After: 0 alone, and its connection worker; ";

const WAIT_SHAPES: { name: string; timeouts: RequestTimeouts; before: string }[] = [
  {
    // Supabase: authenticator's lock_timeout 8s (the session) and authenticated's statement_timeout 8s
    // (the request), here 1 s each.
    name: "the session's lock_timeout and the request's statement_timeout equal, as on Supabase's Data API",
    timeouts: { session: { lock_timeout: 1_000 }, transaction: { statement_timeout: 1_000 } },
    before: BEFORE_429 + "57014, the statement timeout: HTTP 500",
  },
  {
    name: "a lock_timeout shorter than the statement timeout (the progress function's 2 s and 8 s)",
    timeouts: { session: {}, transaction: { lock_timeout: 300, statement_timeout: 8_000 } },
    before: BEFORE_429 + "55P03, the lock timeout: HTTP 500",
  },
  {
    name: "a statement timeout and no lock_timeout",
    timeouts: { session: {}, transaction: { statement_timeout: 1_000 } },
    before: BEFORE_429 + "57014, the statement timeout: HTTP 500",
  },
];

Deno.test("a Data API write stuck behind another write of the same user is answered 429 with one Retry-After: 1 and the body PT503, without PostgREST's connection worker, stores nothing, and lands when sent again", async () => {
  const admin = adminSql({ max: 1 });
  const holder = connection();
  let held: Held | undefined;
  try {
    for (const shape of WAIT_SHAPES) {
      const { user, s1, s2 } = await seededUser(admin);
      held = await userWriteInProgress(holder, user.id, s1);
      const phoneWrite = { series_id: s2, chapter: 22, device_id: "phone", updated_at: at(2) };
      const error = await refusal(timedUpsert(shape.timeouts, user.id, [phoneWrite]), shape.name);
      assertWaitAnswered(error, shape.name, shape.before);
      // The progress function's store, meeting the same error, answers its lock timeout's 503.
      const mapped = mapDatabaseError(error);
      assert.deepEqual(
        [mapped.status, mapped.code, mapped.message, mapped.headers],
        LOCK_TIMEOUT_ANSWER,
        shape.name,
      );
      assert.equal(
        await stored(admin, user.id, s2),
        `2026-01-01T00:00:00.000Z seed ch1`,
        `${shape.name}: kept`,
      );
      held.release();
      await held.done;
      assert.deepEqual(await bulkUpsert(holder, user.id, [phoneWrite]), [s2], `${shape.name}: sent again`);
      assert.equal(await stored(admin, user.id, s2), `${at(2)} phone ch22`, shape.name);
    }
  } finally {
    await endHeld(held);
    await Promise.all([holder.end(), admin.end()]);
  }
});

Deno.test("a Data API write that gets the user's lock before its timeouts completes, and its transaction keeps its own lock_timeout", async () => {
  // Supabase's shape (equal timeouts), long enough that the holder is released well before. Under
  // …_user_write_wait_answered_503.sql the wait's lock_timeout was cut to what the statement timeout left
  // and put back once the lock was taken; since …_user_write_wait_retry_after.sql the wait sets none.
  const timeouts = { session: { lock_timeout: 20_000 }, transaction: { statement_timeout: 20_000 } };
  const admin = adminSql({ max: 1 });
  const holder = connection();
  let held: Held | undefined;
  try {
    const { user, s1, s2 } = await seededUser(admin);
    held = await userWriteInProgress(holder, user.id, s1);
    const connected = Promise.withResolvers<number>();
    const sent = timedUpsert(
      timeouts,
      user.id,
      [{ series_id: s2, chapter: 22, device_id: "phone", updated_at: at(2) }],
      connected.resolve,
      async (tx) =>
        (await tx<{ lock_timeout: string }[]>`select current_setting('lock_timeout') as lock_timeout`)[0],
    );
    sent.catch(() => {}); // settled below
    await waitedFor(admin, await connected.promise, "the phone's upsert");
    held.release();
    await held.done;
    const { returned, after } = await sent;
    assert.deepEqual(returned, [s2]);
    assert.equal(after.lock_timeout, "20s", "the transaction's lock_timeout after the wait: the session's");
  } finally {
    await endHeld(held);
    await Promise.all([holder.end(), admin.end()]);
  }
});

Deno.test("a write sent after other statements in one simple-query message waits as long as its own statement timeout allows, and lands once the other write ends", async () => {
  // `psql -c "begin; ...; insert ..."`: one Query message. PostgreSQL (13 and later) times each of its
  // statements apart: the timer is disabled after each statement and armed again as the next begins,
  // while statement_timestamp() stays the message's arrival. Here the statement before the write runs
  // (pg_sleep: it spends time, it synchronises nothing) as long as the write's own statement timeout,
  // under a longer one of its own. Counted from statement_timestamp() (…_user_write_wait_answered_503.sql),
  // the write had no time left: it waited 1 ms and ended with PT503. Ended by its own running timer, it
  // waits up to 3 s: it is seen waiting, the other write ends, and it lands.
  const admin = adminSql({ max: 1 });
  const [holder, writer] = [connection(), connection()];
  let held: Held | undefined;
  try {
    const { user, s1, s2 } = await seededUser(admin);
    held = await userWriteInProgress(holder, user.id, s1);
    const writerPid = await pidOf(writer);
    const claims = JSON.stringify({ sub: user.id, role: "authenticated" });
    const sent = writer.unsafe(
      `begin;
       set local statement_timeout = '20s';
       select pg_catalog.pg_sleep(3);
       set local statement_timeout = '3s';
       select pg_catalog.set_config('role', 'authenticated', true),
              pg_catalog.set_config('request.jwt.claims', '${claims}', true);
       insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
       values ('${user.id}', '${s2}', 22, 'phone', '${at(2)}')
       on conflict (user_id, series_id) do update
         set chapter = excluded.chapter, device_id = excluded.device_id, updated_at = excluded.updated_at;
       commit`,
    ).simple();
    let outcome: string | undefined;
    sent.then(() => {
      outcome = "completed";
    }, (e: DatabaseError) => {
      outcome = `${e.code}: ${e.message} ${e.detail ?? ""}`;
    });
    for (const deadline = Date.now() + 20_000;;) {
      assert.ok(
        outcome === undefined,
        `the write ended before it was seen waiting for the other one: ${outcome}`,
      );
      const [{ waits }] = await admin<{ waits: boolean }[]>`
        select cardinality(pg_blocking_pids(${writerPid}::integer)) > 0 as waits`;
      if (waits) break;
      assert.ok(Date.now() < deadline, "the write never waited (20 s)");
      await new Promise((r) => setTimeout(r, 10));
    }
    held.release();
    await held.done;
    await sent;
    assert.equal(await stored(admin, user.id, s2), `${at(2)} phone ch22`);
  } finally {
    await endHeld(held);
    await Promise.all([holder.end(), writer.end(), admin.end()]);
  }
});

Deno.test("a write cancelled while it waits for another write of the same user stays a cancel (57014), not the wait's 503", async () => {
  // The statement timeout ending the wait is answered as the wait's end; a cancel (pg_cancel_backend, a
  // client's cancel request) has the same SQLSTATE and must stay what it is.
  const admin = adminSql({ max: 1 });
  const holder = connection();
  let held: Held | undefined;
  try {
    const { user, s1, s2 } = await seededUser(admin);
    held = await userWriteInProgress(holder, user.id, s1);
    const connected = Promise.withResolvers<number>();
    const sent = timedUpsert(
      { session: {}, transaction: { statement_timeout: 20_000 } },
      user.id,
      [{ series_id: s2, chapter: 22, device_id: "phone", updated_at: at(2) }],
      connected.resolve,
    );
    sent.catch(() => {}); // settled below
    const writerPid = await connected.promise;
    await waitedFor(admin, writerPid, "the phone's upsert");
    await admin`select pg_cancel_backend(${writerPid}::integer)`;
    const error = await refusal(sent, "the cancelled upsert");
    assert.deepEqual([error.code, error.message], ["57014", "canceling statement due to user request"]);
    assert.equal(
      await stored(admin, user.id, s2),
      `2026-01-01T00:00:00.000Z seed ch1`,
      "the write changed nothing",
    );
  } finally {
    await endHeld(held);
    await Promise.all([holder.end(), admin.end()]);
  }
});

Deno.test("a progress function write stuck behind another write of the same user is still its 503 service_unavailable", async () => {
  const admin = adminSql({ max: 1 });
  const holder = connection();
  let held: Held | undefined;
  try {
    const { user, s1, s2 } = await seededUser(admin);
    held = await userWriteInProgress(holder, user.id, s1);
    const body = write({ series_id: s2, chapter: 22, device_id: "phone", updated_at: at(2) });
    const blocked = await call("POST", "", { token: user.accessToken, body });
    assert.equal(blocked.status, 503, JSON.stringify(blocked.body));
    assert.equal(errorOf(blocked).code, "service_unavailable");
    assert.equal(errorOf(blocked).message, "The data is locked by another operation; try again");
    assert.equal(blocked.headers.get("retry-after"), "1");
    assert.equal(
      await stored(admin, user.id, s2),
      `2026-01-01T00:00:00.000Z seed ch1`,
      "the write changed nothing",
    );
    held.release();
    await held.done;
    const retried = await call("POST", "", { token: user.accessToken, body });
    assert.equal(retried.status, 200, JSON.stringify(retried.body));
    assert.equal(await stored(admin, user.id, s2), `${at(2)} phone ch22`);
  } finally {
    await endHeld(held);
    await Promise.all([holder.end(), admin.end()]);
  }
});

Deno.test("the progress function's store maps each form the database has raised the wait's end in as its lock timeout's 503, and a PGRST it cannot read as a 500", async () => {
  // Raised by the real database (a DO block), mapped by the store as the function maps its errors:
  // 55P03 (a lock timeout), PT503 (…_user_write_wait_answered_503.sql: a database not yet migrated),
  // PGRST with the body PT503 and status 503 (…_user_write_wait_retry_after.sql) or 429
  // (…_user_write_wait_answered_429.sql; the trigger's own error is mapped in the Data API test above).
  // A PGRST whose message is not PostgREST's JSON stands for nothing known.
  const admin = adminSql({ max: 1 });
  try {
    const raised = (statement: string) =>
      refusal(admin.unsafe(`do $$ begin ${statement}; end $$`), statement);
    const lockTimeouts = [
      `raise sqlstate '55P03' using message = 'canceling statement due to lock timeout'`,
      `raise sqlstate 'PT503' using message = 'Another write of this user is in progress'`,
      `raise sqlstate 'PGRST' using
         message = '{"code": "PT503", "message": "Another write of this user is in progress"}',
         detail = '{"status": 503, "headers": {"Retry-After": "1"}}'`,
      `raise sqlstate 'PGRST' using
         message = '{"code": "PT503", "message": "Another write of this user is in progress"}',
         detail = '{"status": 429, "headers": {"Retry-After": "1"}}'`,
    ];
    for (const statement of lockTimeouts) {
      const mapped = mapDatabaseError(await raised(statement));
      assert.deepEqual(
        [mapped.status, mapped.code, mapped.message, mapped.headers],
        LOCK_TIMEOUT_ANSWER,
        statement,
      );
    }
    const unreadable = mapDatabaseError(
      await raised(
        `raise sqlstate 'PGRST' using message = 'PT503', detail = '{"status": 503, "headers": {}}'`,
      ),
    );
    assert.deepEqual([unreadable.status, unreadable.code], [500, "internal_error"]);
  } finally {
    await admin.end();
  }
});
