// Seeded, randomized concurrency over every write path at once, against the real PostgreSQL:
// several users, each with a few series and many devices, write at the same time through
//   * the edge function over HTTP: POST /progress, POST /progress/batch, DELETE /progress/series/:id
//     (a reset, a keyed tombstone), with the user's token or as service_role acting for the user,
//   * direct SQL: public.write_reading_progress on connections of their own,
//   * the Data API as PostgREST sends it (role authenticated, the JWT claims): an upsert
//     (supabase-js .upsert()), a bulk upsert of several series (.upsert([...])), an update
//     (.update().eq()) and a keyless edit (an update without updated_at and device_id, which lands
//     dated now() or 1 ms after the version it edits, README, Schema decisions) of reading_progress,
//     and hard deletes (.delete().eq("series_id", id), in about half the series: unconditional, or
//     conditional on a version a device saw, .eq("updated_at", …).eq("device_id", …), as the
//     README's "Hard deletes" advises),
//   * and, in every round, two series deleted and inserted again by a transaction of the user's that
//     the test holds open until a write of the burst waits for it (pg_blocking_pids: see Recycle).
//     It was made so that the new-life check (migrations 013 and 20261205220000) had to refuse an
//     INSERT with 40001 in every round: one INSERT stamped before a life that is then deleted
//     ('locked'), one stamped with the very created_at of a life deleted while it waited ('behind':
//     the last deleted life dated an hour ahead, a server clock that stepped back). Since one user's
//     writes wait for each other's whole transaction before they meet a row (migration
//     …_user_writes_serialized.sql), the user's writes wait for the recycle before they are stamped,
//     and none is refused: that 40001 comes from writers that bypass RLS (a script's transaction,
//     progress_api.test.ts and conflict_resolver_db.test.ts),
// with dates that collide in one millisecond, go backwards, tie on time between device ids, lie an
// hour ahead of the server's clock, and with requests sent twice (the same key and position: a
// retry whose answer was lost). Nothing is ordered by timing: whatever order the database
// serialised the writes in, the verdict is the same. Afterwards, per user and series, with the
// lives of the row (README, Schema decisions, "Lives of a row"): each delete that removed a row
// ended a life and returned its last version, the row (if any) is the last life; the next write
// after a delete starts a new life whatever its updated_at:
//   * lives never overlap: no life is removed twice, the row's created_at is after every removed
//     life's; the remembered deletion (reading_progress_deletions) is the removed life with the
//     greatest created_at, its key and position; none without a removed row; a conditional delete
//     removed only the version it named; "changes since" shows the row, or else the remembered
//     deletion marked "deleted": true;
//   * one life (no delete removed a row): the row is the greatest write by (updated_at, device_id)
//     among the writes the database took (every attempt but a 40001, which rolled back, and a 503,
//     which may have committed: the function answers 503 for a connection lost after COMMIT was
//     sent too; such a write is taken where the database shows it, e.g. it is the row, above every
//     write answered; the burst drops some of the function's 200s to make such 503s; a write dated
//     ahead or keyless counts under the key it was stored with, as answered; a keyless edit is
//     stored whenever its series has a row, i.e. always but where a delete removed it);
//   * a Data API update or keyless edit that returns no row either found none (its transaction
//     locked nothing: no transaction id), only where a delete removed a row, or found the row and
//     was refused (logged) or replayed: never a keyless edit, never one dated ahead;
//   * every version an answer shows (API: its progress; Data API: the row returned) belongs to one
//     of the lives and is at most that life's last version: no write answered as won is above the
//     version its life ended on (a conditional delete removes nothing once a newer version is
//     stored); each life ended on a version some write answered as stored in that life, with the
//     position it was sent with. So the lives in created_at order, each a last-write-wins run of
//     its writes ended by its delete, are a serial order of every answer;
//   * a 40001 (direct SQL, the Data API: an INSERT that waited for a writer who deleted the series
//     meanwhile would begin an older life) only where a delete removed a life that began after the
//     statement did (the server's clock, read in its transaction just before it);
//   * every refused write is logged (stale / tie, or 'self' for its own device's newer write) and
//     its answer names the row it lost to; every replaced same-millisecond write is logged as the
//     tie's loser and its winner answered 'tie'; over several lives a log row is kept, moved to the
//     life that logs the pair again: each row belongs to the life it was logged in (by its
//     created_at against the clock of each deletion, read in the deleting transaction), and each
//     life is checked as a single life, but that a pair it logged may have moved to a later life
//     (a won tie: logged in its life as the replaced write, or in a later one; a win without a tie:
//     no replaced write logged in its life; a refusal: logged in its life or a later one); every
//     row's winner (and a replaced loser) was answered as stored in its life, and both positions
//     logged are those stored or sent under their keys; the log holds nothing else;
//   * no answer is a 500 (or any error but a 503, and 40001 as above);
//   * then every request whose first answer was given against the final row (the same life) is sent
//     again: it gets the same answer (the Data API: no row) and the database (rows, log,
//     remembered deletions) does not change at all.
// The seed is printed; READSYNC_CONCURRENCY_SEED=<seed> replays a run (READSYNC_CONCURRENCY_ROUNDS
// sets the number of rounds, default 10).

import assert from "node:assert/strict";
import postgres from "postgres";
import { ConflictResolver } from "../../shared/progress/conflictResolver.ts";
import { batchWriteResponseSchema, writeResultSchema } from "../../shared/progress/schemas.ts";
import { microsecondIso } from "../../shared/progress/instant.ts";
import type { ProgressKey, ProgressPosition, WriteResult } from "../../shared/progress/types.ts";
import { createTestUser, type TestUser } from "../support/env.ts";
import { type SeededRandom, seededRandom } from "../support/seededRandom.ts";
import { adminSql, call, seriesId, testEnv } from "./support.ts";

const BASE = Date.parse("2026-04-01T08:00:00.000Z");
/** Offsets from BASE: many writes share a millisecond, some are a second or a day older. */
const OFFSETS = [0, 0, 1, 1, 2, 3, 1000, 1000, 1001, 2000, -86_400_000];
/** Byte-wise order: "B" < "a" < "b" < "dev-1" < "dev-10" < "dev-2". */
const DEVICES = ["B", "a", "b", "dev-1", "dev-10", "dev-2"];
const SEED_KEY = { updated_at: new Date(BASE - 7 * 86_400_000).toISOString(), device_id: "seed" };

type Path =
  | "http"
  | "batch"
  | "reset"
  | "sql"
  | "upsert"
  | "bulk"
  | "update"
  | "keyless"
  | "delete"
  | "cdelete";

/**
 * A hard delete of one series through the Data API (role authenticated): supabase-js
 * .delete().eq("series_id", id), or conditional on the version the device saw (README, Schema
 * decisions, "Hard deletes": .eq("updated_at", seen.updated_at).eq("device_id", seen.device_id)).
 */
interface Delete {
  id: number;
  user: number;
  series_id: string;
  /** The version it is conditional on, or null: unconditional. */
  seen: StoredKey | null;
}

/** What a delete removed (RETURNING of the DELETE, as PostgREST's return=representation): a life's last version. */
type Removed = FinalRow & { created_at: string };
/**
 * A life a delete ended: its last version, and the clock of its deletion (the deleted_at its
 * remembered deletion got, read in the deleting transaction): a conflict logged in that life was
 * logged before it (the logging held the row's lock), one logged in a later life after it.
 */
type Ended = Removed & { deleted_at: string };

/** The deleted_at of the deletion this transaction remembered for the series (RLS: the user's own). */
async function deletedAt(tx: postgres.TransactionSql, seriesId: string) {
  const [{ at }] = await tx<{ at: string }[]>`
    select to_jsonb(deleted_at) #>> '{}' as at from public.reading_progress_deletions
     where user_id = auth.uid() and series_id = ${seriesId} and deleted_xid = pg_current_xact_id()`;
  return lifeOf({ created_at: at });
}

/** A write as sent (the API's body with `cleared` always given), and how it was dated. */
interface Write extends ProgressKey, ProgressPosition {
  series_id: string;
  /** Dated an hour ahead of the server's clock: stored under another key (as answered). */
  ahead: boolean;
  /**
   * A keyless Data API edit (.update({ chapter, page, percentage, cleared }).eq("series_id", id)):
   * no updated_at or device_id of its own, so it lands dated now() or 1 ms after the version it
   * edits, under that version's device (README, Schema decisions); its key is the one answered.
   */
  keyless?: boolean;
}

interface Attempt {
  id: number;
  user: number;
  write: Write;
  path: Path;
}

/** One request: a single write, or a batch (of one user). */
interface Request {
  user: number;
  path: Path;
  attempts: Attempt[];
  /** Through the function: sent with the service_role key, acting for the user. */
  asService: boolean;
  /** A hard delete instead of writes (attempts is then empty). */
  del?: Delete;
  /**
   * Through the function: its 200 answer is dropped and taken as a 503, as when the connection breaks
   * after the server committed (the verdict takes a 503's writes as unknown: see check()).
   */
  loseAnswer?: boolean;
  /** The contender of a 'locked' recycle: sent on a connection of its own, waited for (see Recycle). */
  contender?: boolean;
}

/**
 * A series deleted and inserted again while the burst's writes wait for it (README, Schema decisions,
 * "Lives of a row"): one transaction of the user's ("a script that deletes a row and inserts it
 * again"), held open by the test until a write of the burst is blocked by it (pg_blocking_pids, a
 * signal, no timing), so that an INSERT stamped before a life began goes in only after that life
 * was deleted: the new-life check (migration 013, AFTER INSERT) must refuse it with 40001, which the
 * function retries and the SQL and Data API paths answer. Every round has one of each kind:
 *   * 'locked': a seeded series. The transaction deletes the seeded row; the contender (a Data API
 *     upsert of the series on a connection of its own) stamps its created_at and waits for that
 *     delete; then the transaction inserts the series (a life begun after the contender's stamp) and
 *     deletes it again, and commits: the contender's INSERT goes in after a life younger than its
 *     stamp was deleted (013's rule: a deleted life's created_at above the new one's).
 *   * 'behind': a series without a row whose last deleted life is dated an hour ahead (a server clock
 *     that stepped back since): every new life is stamped 1 us after that one, so concurrent inserts
 *     share a created_at. The transaction inserts the series, a write of the burst waits for that
 *     insert (stamped with the same created_at), the transaction deletes it and commits: the waiting
 *     INSERT would begin a life dated as the deleted one (migration 20261205220000's rule: `>=`).
 * Being the user's, the transaction now holds the user's write lock from its first statement
 * (migration …_user_writes_serialized.sql): the contender and every other write of the user wait for
 * it before they are stamped, so neither kind is refused any more (see the top); the lives it makes
 * are checked as before.
 */
interface Recycle {
  kind: "locked" | "behind";
  user: number;
  series_id: string;
  /** The version the transaction inserts (the deleted life's only version). */
  version: FinalRow;
}

/** What an attempt got: an API answer, the Data API's returned row (or none), or a 503. */
type Outcome =
  | {
    kind: "api";
    result: WriteResult;
  }
  | {
    kind: "rest";
    row: LifeKey | null;
    /**
     * A single-row Data API write (upsert, update, keyless edit): whether its transaction had a
     * transaction id once the statement ended (pg_current_xact_id_if_assigned()). An UPDATE that
     * returns no row got one only if it found the row: its BEFORE trigger ran on the row it locked
     * (and refused it, or found nothing to change); one that found no row (the series deleted
     * before it, or while it waited for the deleter) locked and wrote nothing.
     */
    touched?: boolean;
  }
  /**
   * A 503 through the function (committed or not: see check()), or 40001 from the database (rolled
   * back; both to be sent again). A
   * 40001 carries the server's clock read in its transaction just before its statement: the new-life
   * check refuses an INSERT only for a deleted life that began after its row was stamped (later still).
   */
  | { kind: "unavailable"; code?: "40001"; since?: string };

/** A version's key and the life it belongs to (created_at, microseconds, shared/progress/instant.ts). */
interface LifeKey extends StoredKey {
  created_at: string;
}

interface StoredKey {
  updated_at: string;
  device_id: string;
}

const resolver = new ConflictResolver();
const msOf = (v: { updated_at: string | Date }) =>
  ConflictResolver.timeOf({ updated_at: v.updated_at, device_id: "" });
const keyOf = (v: { updated_at: string | Date; device_id: string }) => `${msOf(v)}/${v.device_id}`;
const cmp = (a: StoredKey, b: StoredKey) => resolver.compare(a, b);
const positionOf = (v: { chapter: number; page: number; percentage: number; cleared: boolean }) =>
  `${v.chapter}/${v.page}/${v.percentage}/${v.cleared}`;

/** A position as positionOf wrote it. */
const positionFrom = (p: string) => {
  const [chapter, page, percentage, cleared] = p.split("/");
  return {
    chapter: Number(chapter),
    page: Number(page),
    percentage: Number(percentage),
    cleared: cleared === "true",
  };
};

/** Whether `stored` is `w`'s device's version 1 ms after it with its position (see check()). */
const landedAfter = (w: Write, stored: FinalRow) =>
  stored.device_id === w.device_id && msOf(stored) === msOf(w) + 1 && positionOf(stored) === positionOf(w);

interface Round {
  series: string[][]; // per user
  seeded: Set<string>; // series that have a row before the burst (`${user}/${series}`)
  attempts: Attempt[];
  deletes: Delete[];
  requests: Request[];
  /** The created_at of each seeded row (`${user}/${series}`): the life the burst begins in. */
  seedLife: Map<string, string>;
  recycles: Recycle[];
}

/** The writes of one round: distinct keys, each with one position; some requests sent twice. */
function generate(rng: SeededRandom, users: number): Round {
  const series = Array.from(
    { length: users },
    () => Array.from({ length: 1 + rng.int(2) }, () => seriesId("conc")),
  );
  const seeded = new Set<string>();
  series.forEach((ss, u) => ss.forEach((s) => rng.chance(0.6) && seeded.add(`${u}/${s}`)));
  // One series of each recycle kind (see Recycle), of two users drawn at random; writes go to them as
  // to the others, and each gets one write more below (the 'locked' one's contender). Two users: the
  // recycles take their first steps before the burst, each holding its user's write lock from there
  // (migration …_user_writes_serialized.sql), so a second recycle of the same user would wait for the
  // first, which waits for the burst.
  const firstRecycler = rng.int(users);
  const recycles = (["locked", "behind"] as const).map((kind): Recycle => {
    const user = kind === "locked" ? firstRecycler : (firstRecycler + 1 + rng.int(users - 1)) % users;
    const series_id = seriesId("conc");
    series[user].push(series_id);
    if (kind === "locked") seeded.add(`${user}/${series_id}`);
    const version = {
      chapter: 1 + rng.int(999),
      page: rng.int(500),
      percentage: rng.int(1001) / 1000,
      cleared: false,
      device_id: "recycle",
      updated_at: new Date(BASE + rng.pick(OFFSETS)).toISOString(),
    };
    return { kind, user, series_id, version };
  });
  const byKey = new Map<string, Write>();
  const attempts: Attempt[] = [];
  const requests: Request[] = [];
  const newWrite = (u: number, series_id = rng.pick(series[u])): Write => {
    const device_id = rng.pick(DEVICES);
    if (rng.chance(0.1)) {
      // A device clock an hour ahead: always a new write (it has no stable key).
      return {
        series_id,
        chapter: 1 + rng.int(999),
        page: rng.int(500),
        percentage: rng.int(1001) / 1000,
        cleared: false,
        device_id,
        updated_at: new Date(Date.now() + 3_600_000 + rng.int(1000)).toISOString(),
        ahead: true,
      };
    }
    const updated_at = new Date(BASE + rng.pick(OFFSETS)).toISOString();
    const k = `${u}/${series_id}/${keyOf({ updated_at, device_id })}`;
    const known = byKey.get(k);
    if (known) return known; // the same key again: the same position (a replay, never a reused key)
    const cleared = rng.chance(0.15);
    const w: Write = {
      series_id,
      chapter: cleared ? 0 : 1 + rng.int(999),
      page: cleared ? 0 : rng.int(500),
      percentage: cleared ? 0 : rng.int(1001) / 1000,
      cleared,
      device_id,
      updated_at,
      ahead: false,
    };
    byKey.set(k, w);
    return w;
  };
  const count = 60 + rng.int(20);
  while (attempts.length < count) {
    const u = rng.int(users);
    let path = rng.pick<Path>([
      "http",
      "http",
      "batch",
      "reset",
      "sql",
      "sql",
      "upsert",
      "upsert",
      "bulk",
      "update",
      "keyless",
    ]);
    const size = path === "batch" || path === "bulk" ? 1 + rng.int(4) : 1;
    let writes: Write[] = [];
    for (let i = 0; i < size; i++) writes.push(newWrite(u));
    if (path === "bulk") {
      // One statement may not upsert a row twice (PostgREST answers that with an error): one write
      // per series. In the order drawn: a statement locks its rows in the order sent, but one user's
      // writes wait for each other's whole transaction (migration …_user_writes_serialized.sql), so
      // bulk upserts in opposite orders, or one and a batch, cannot deadlock (no 40P01 is allowed).
      writes = writes.filter((w, i) => writes.findIndex((x) => x.series_id === w.series_id) === i);
    }
    if (path === "reset" && (!writes[0].cleared || writes[0].ahead)) path = "http";
    if (path === "update" && !seeded.has(`${u}/${writes[0].series_id}`)) path = "upsert";
    if (path === "keyless") {
      // Only where a row exists from the start (until a delete), never sent twice: a copy meeting
      // its own stored position would change nothing (no row returned). A position of its own.
      if (!seeded.has(`${u}/${writes[0].series_id}`)) path = "upsert";
      else {
        writes = [{
          series_id: writes[0].series_id,
          chapter: 1 + rng.int(999),
          page: rng.int(500),
          percentage: rng.int(1001) / 1000,
          cleared: false,
          device_id: "keyless",
          updated_at: new Date(0).toISOString(),
          ahead: false,
          keyless: true,
        }];
      }
    }
    const request: Request = {
      user: u,
      path,
      asService: rng.chance(0.2),
      attempts: writes.map((write) => ({ id: attempts.length, user: u, write, path })),
    };
    if (["http", "batch", "reset"].includes(path) && rng.chance(0.05)) request.loseAnswer = true;
    for (const a of request.attempts) a.id = attempts.push(a) - 1;
    requests.push(request);
    if (path !== "keyless" && rng.chance(0.15)) {
      // Sent twice at once (its answer was lost, the client retried): the same request again.
      const again: Request = {
        ...request,
        attempts: request.attempts.map((a) => ({ ...a })),
      };
      for (const a of again.attempts) a.id = attempts.push(a) - 1;
      requests.push(again);
    }
  }
  // The recycles' own writes: the 'locked' one's contender, a Data API upsert (an INSERT that waits for
  // the seeded row's delete); one write more of the 'behind' series, through any path that inserts.
  for (const rc of recycles) {
    const path = rc.kind === "locked" ? "upsert" : rng.pick<Path>(["http", "batch", "sql", "upsert", "bulk"]);
    const request: Request = {
      user: rc.user,
      path,
      asService: false,
      attempts: [{ id: 0, user: rc.user, write: newWrite(rc.user, rc.series_id), path }],
      contender: rc.kind === "locked",
    };
    for (const a of request.attempts) a.id = attempts.push(a) - 1;
    requests.push(request);
  }
  // Hard deletes in about half the series, 1..3 each (some sent twice), unconditional or conditional
  // on a version a device may have seen: the seed, one of the series' writes, often its greatest key
  // (the likeliest to be stored when the delete arrives). The other series keep a single life.
  const deletes: Delete[] = [];
  series.forEach((ss, u) =>
    ss.forEach((s) => {
      if (!rng.chance(0.5)) return;
      const seen: StoredKey[] = [
        ...(seeded.has(`${u}/${s}`) ? [SEED_KEY] : []),
        ...attempts.filter((a) =>
          a.user === u && a.write.series_id === s && !a.write.ahead && !a.write.keyless
        )
          .map((a) => ({ updated_at: a.write.updated_at, device_id: a.write.device_id })),
      ];
      for (let n = 1 + rng.int(3); n > 0; n--) {
        const conditional = seen.length > 0 && rng.chance(0.5);
        const sees = conditional
          ? (rng.chance(0.5) ? seen.reduce((m, k) => (cmp(k, m) > 0 ? k : m)) : rng.pick(seen))
          : null;
        for (let copies = rng.chance(0.15) ? 2 : 1; copies > 0; copies--) {
          const del: Delete = { id: deletes.length, user: u, series_id: s, seen: sees };
          deletes.push(del);
          requests.push({ user: u, path: sees ? "cdelete" : "delete", attempts: [], asService: false, del });
        }
      }
    })
  );
  // Shuffle the requests (Fisher-Yates): the order they are started in.
  for (let i = requests.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [requests[i], requests[j]] = [requests[j], requests[i]];
  }
  return { series, seeded, attempts, deletes, requests, seedLife: new Map(), recycles };
}

/** Acts as the user in this transaction; answers the server's clock (microseconds), read before anything else. */
const asUser = (tx: postgres.TransactionSql, user: TestUser) =>
  tx<{ since: string }[]>`select set_config('role', 'authenticated', true),
    set_config('request.jwt.claims', ${JSON.stringify({ sub: user.id, role: "authenticated" })}, true),
    to_jsonb(clock_timestamp()) #>> '{}' as since`;

/** Whether this transaction has a transaction id: whether it locked or wrote anything (see Outcome). */
const touched = async (tx: postgres.TransactionSql) =>
  (await tx<{ touched: boolean }[]>`select pg_current_xact_id_if_assigned() is not null as touched`)[0]
    .touched;

const bodyOf = (w: Write) => ({
  series_id: w.series_id,
  chapter: w.chapter,
  page: w.page,
  percentage: w.percentage,
  cleared: w.cleared,
  device_id: w.device_id,
  updated_at: w.updated_at,
});

const lifeKeyOf = (r: { updated_at: string; device_id: string; created_at: string }): LifeKey => ({
  updated_at: r.updated_at,
  device_id: r.device_id,
  created_at: lifeOf(r),
});
/** created_at in one form (microseconds, UTC), so lives compare as strings. */
const lifeOf = (r: { created_at: string }) => {
  const at = microsecondIso(r.created_at);
  assert.ok(at, `created_at ${r.created_at}`);
  return at;
};

/**
 * Sends one request; the outcomes of its attempts, in order. Anything but 200 or 503 throws, and,
 * on the paths that reach the database directly (SQL, Data API), anything but 40001: an INSERT that
 * waited for a concurrent writer of the series which deleted it meanwhile would begin an older life
 * than the deleted one and is refused for a retry (README, Schema decisions, "Lives of a row";
 * PostgREST answers it with HTTP 500 and "code": "40001"). It rolled back: like a 503, not taken.
 */
async function send(
  request: Request,
  users: TestUser[],
  pools: Pools,
): Promise<Outcome[]> {
  const clock: { since?: string } = {};
  try {
    return await sendOnce(request, users, pools, clock);
  } catch (error) {
    if ((error as { code?: string })?.code !== "40001" || !["sql", "upsert", "bulk"].includes(request.path)) {
      throw error;
    }
    assert.ok(clock.since, "a 40001 before its statement");
    return request.attempts.map((): Outcome => ({ kind: "unavailable", code: "40001", since: clock.since }));
  }
}

/** Connections: direct SQL, the Data API, and the 'locked' recycle's contender (one of its own). */
interface Pools {
  sql: postgres.Sql;
  rest: postgres.Sql;
  contend: postgres.Sql;
}
const CONTENDER = "readsync-conc-contender";

/**
 * A recycle's transaction (see Recycle), as the user: its first step now; `release` runs the rest
 * (and commits) once a write of the burst waits for it. Answers the transaction's backend pid and
 * what its deletes removed, in order.
 */
async function startRecycle(rc: Recycle, users: TestUser[], pool: postgres.Sql) {
  let started!: (pid: number) => void;
  let release!: () => void;
  const pid = new Promise<number>((resolve) => (started = resolve));
  const go = new Promise<void>((resolve) => (release = resolve));
  const removed = pool.begin(async (tx) => {
    await asUser(tx, users[rc.user]);
    const [{ pid }] = await tx<{ pid: number }[]>`select pg_backend_pid() as pid`;
    const del = async () => {
      const rows = await tx<Removed[]>`
        delete from public.reading_progress where series_id = ${rc.series_id}
        returning chapter, page, percentage, cleared, device_id, to_jsonb(updated_at) #>> '{}' as updated_at,
          to_jsonb(created_at) #>> '{}' as created_at`;
      assert.equal(rows.length, 1, `recycle of ${rc.series_id}: deleted ${rows.length} rows`);
      return { ...rows[0], created_at: lifeOf(rows[0]), deleted_at: await deletedAt(tx, rc.series_id) };
    };
    const insert = () =>
      tx`insert into public.reading_progress
           (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
         values (${users[rc.user].id}, ${rc.series_id}, ${rc.version.chapter}, ${rc.version.page},
           ${rc.version.percentage}, ${rc.version.cleared}, ${rc.version.device_id},
           ${rc.version.updated_at}::timestamptz)`;
    const removed: Ended[] = [];
    if (rc.kind === "locked") removed.push(await del());
    else await insert();
    started(pid);
    await go;
    if (rc.kind === "locked") await insert();
    removed.push(await del());
    return removed;
  });
  // A first step that failed: its error, not a wait for a pid that never comes.
  return { pid: await Promise.race([pid, removed.then(() => -1)]), release, removed };
}

/**
 * Waits until a backend is blocked by the recycle's transaction (pg_blocking_pids): for 'locked',
 * the contender (by its application_name), for 'behind', any INSERT of the series (nothing else of
 * the burst waits for an uncommitted insert). A guard, not a timing: 20 s.
 */
async function waitBlockedBy(admin: postgres.Sql, rc: Recycle, pid: number, what: string) {
  const app = rc.kind === "locked" ? CONTENDER : null;
  for (const guard = Date.now() + 20_000;;) {
    const [{ blocked }] = await admin<{ blocked: boolean }[]>`
      select exists (select 1 from pg_stat_activity
                      where ${pid}::integer = any(pg_blocking_pids(pid))
                        and (${app}::text is null or application_name = ${app}::text)) as blocked`;
    if (blocked) return;
    assert.ok(
      Date.now() < guard,
      `${what}: no write of ${rc.series_id} waited for its ${rc.kind} recycle in 20 s`,
    );
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A hard delete through the Data API as the user: what it removed (at most one row), or null. */
async function sendDelete(del: Delete, users: TestUser[], rest: postgres.Sql): Promise<Ended | null> {
  const { rows, at } = await rest.begin(async (tx) => {
    await asUser(tx, users[del.user]);
    // PostgREST's DELETE ... WHERE <filters> RETURNING (Prefer: return=representation); RLS keeps
    // it to the user's rows. .eq("updated_at", seen.updated_at) compares as timestamptz.
    const seen = del.seen
      ? tx`and updated_at = ${del.seen.updated_at}::timestamptz and device_id = ${del.seen.device_id}`
      : tx``;
    const rows = await tx<Removed[]>`
      delete from public.reading_progress
       where series_id = ${del.series_id} ${seen}
      returning chapter, page, percentage, cleared, device_id, to_jsonb(updated_at) #>> '{}' as updated_at,
        to_jsonb(created_at) #>> '{}' as created_at`;
    // (The test's own read, in the deleting transaction: when the life ended, see Ended.)
    return { rows, at: rows.length ? await deletedAt(tx, del.series_id) : "" };
  });
  assert.ok(rows.length <= 1);
  return rows[0] ? { ...rows[0], created_at: lifeOf(rows[0]), deleted_at: at } : null;
}

async function sendOnce(
  request: Request,
  users: TestUser[],
  pools: Pools,
  clock: { since?: string },
): Promise<Outcome[]> {
  const user = users[request.user];
  const writes = request.attempts.map((a) => a.write);
  const w = writes[0];
  const http = async (method: string, path: string, body?: unknown) => {
    // A server-side job acting for the user (service_role and X-Act-As-User) now and then: the same
    // user, the same rule.
    const answer = await call(
      method,
      path,
      request.asService
        ? { token: testEnv().serviceRoleKey, headers: { "x-act-as-user": user.id }, body }
        : { token: user.accessToken, body },
    );
    if (answer.status === 503) return null;
    assert.equal(answer.status, 200, `${method} ${path}: ${JSON.stringify(answer.body)}`);
    return request.loseAnswer ? null : answer.body;
  };
  const unavailable = writes.map((): Outcome => ({ kind: "unavailable" }));
  switch (request.path) {
    case "http": {
      const body = await http("POST", "", bodyOf(w));
      return body === null ? unavailable : [{ kind: "api", result: writeResultSchema.parse(body) }];
    }
    case "batch": {
      const body = await http("POST", "/batch", { writes: writes.map(bodyOf) });
      return body === null
        ? unavailable
        : batchWriteResponseSchema.parse(body).results.map((result) => ({ kind: "api", result }));
    }
    case "reset": {
      const query = new URLSearchParams({ device_id: w.device_id, updated_at: w.updated_at });
      const body = await http("DELETE", `/series/${w.series_id}?${query}`);
      return body === null ? unavailable : [{ kind: "api", result: writeResultSchema.parse(body) }];
    }
    case "sql": {
      const [{ r }] = await pools.sql.begin(async (tx) => {
        [{ since: clock.since }] = await asUser(tx, user);
        return await tx<{ r: unknown }[]>`select public.write_reading_progress(${w.series_id}, ${w.chapter},
          ${w.page}, ${w.percentage}, ${w.cleared}, ${w.device_id}, ${w.updated_at}::timestamptz) as r`;
      });
      return [{ kind: "api", result: writeResultSchema.parse(r) }];
    }
    case "bulk": {
      // What PostgREST sends for supabase-js .upsert([rows]): one INSERT of the rows from
      // json_populate_recordset, ON CONFLICT on the primary key, DO UPDATE of every column sent.
      const rows = writes.map((x) => ({ ...bodyOf(x), user_id: user.id }));
      const got = await pools.rest.begin(async (tx) => {
        [{ since: clock.since }] = await asUser(tx, user);
        return await tx<{ series_id: string; updated_at: string; device_id: string; created_at: string }[]>`
          insert into public.reading_progress
            (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
          select user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at
            from json_populate_recordset(null::public.reading_progress, ${JSON.stringify(rows)}::text::json)
          on conflict (user_id, series_id) do update
            set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
                cleared = excluded.cleared, device_id = excluded.device_id, updated_at = excluded.updated_at
          returning series_id, to_jsonb(updated_at) #>> '{}' as updated_at, device_id,
            to_jsonb(created_at) #>> '{}' as created_at`;
      });
      return writes.map((x): Outcome => {
        const row = got.find((r) => r.series_id === x.series_id);
        return { kind: "rest", row: row ? lifeKeyOf(row) : null };
      });
    }
    case "delete":
    case "cdelete":
      throw new Error("a delete is sent by sendDelete");
    case "keyless": {
      // supabase-js .update({ chapter, page, percentage, cleared }).eq("series_id", id): no key.
      const [rows, found] = await pools.rest.begin(async (tx) => {
        await asUser(tx, user);
        const rows = await tx<{ updated_at: string; device_id: string; created_at: string }[]>`
          update public.reading_progress
             set chapter = ${w.chapter}, page = ${w.page}, percentage = ${w.percentage}, cleared = ${w.cleared}
           where series_id = ${w.series_id}
          returning to_jsonb(updated_at) #>> '{}' as updated_at, device_id,
            to_jsonb(created_at) #>> '{}' as created_at`;
        return [rows, await touched(tx)] as const;
      });
      assert.ok(rows.length <= 1);
      return [{ kind: "rest", row: rows[0] ? lifeKeyOf(rows[0]) : null, touched: found }];
    }
    case "upsert":
    case "update": {
      const pool = request.contender ? pools.contend : pools.rest;
      const [rows, found] = await pool.begin(async (tx) => {
        [{ since: clock.since }] = await asUser(tx, user);
        // PostgREST's statement; then, in its transaction, whether it locked or wrote anything.
        const write = () => request.path === "upsert" ? upsert(tx) : update(tx);
        return [await write(), await touched(tx)] as const;
      });
      assert.ok(rows.length <= 1);
      return [{
        kind: "rest",
        row: rows[0] ? lifeKeyOf(rows[0]) : null,
        touched: found,
      }];
    }
  }

  function upsert(tx: postgres.TransactionSql) {
    // What PostgREST sends for supabase-js .upsert(row): ON CONFLICT on the primary key, DO UPDATE of
    // every column sent.
    return tx<{ updated_at: string; device_id: string; created_at: string }[]>`
      insert into public.reading_progress
        (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
      values (${user.id}, ${w.series_id}, ${w.chapter}, ${w.page}, ${w.percentage}, ${w.cleared},
        ${w.device_id}, ${w.updated_at}::timestamptz)
      on conflict (user_id, series_id) do update
        set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
            cleared = excluded.cleared, device_id = excluded.device_id, updated_at = excluded.updated_at
      returning to_jsonb(updated_at) #>> '{}' as updated_at, device_id,
        to_jsonb(created_at) #>> '{}' as created_at`;
  }

  function update(tx: postgres.TransactionSql) {
    // supabase-js .update(row).eq("series_id", id)
    return tx<{ updated_at: string; device_id: string; created_at: string }[]>`
      update public.reading_progress
         set chapter = ${w.chapter}, page = ${w.page}, percentage = ${w.percentage}, cleared = ${w.cleared},
             device_id = ${w.device_id}, updated_at = ${w.updated_at}::timestamptz
       where series_id = ${w.series_id}
      returning to_jsonb(updated_at) #>> '{}' as updated_at, device_id,
        to_jsonb(created_at) #>> '{}' as created_at`;
  }
}

interface FinalRow extends StoredKey {
  chapter: number;
  page: number;
  percentage: number;
  cleared: boolean;
}

interface LogRow {
  kind: string;
  rejected: boolean;
  losing: StoredKey;
  winning: StoredKey;
  /** The positions logged for each side (positionOf). */
  losingPosition: string;
  winningPosition: string;
  /** When it was logged (or last moved to a later life): created_at, microseconds. */
  at: string;
}

/** Rows and conflict log of the round's series, as the superuser sees them. */
async function stateOf(admin: postgres.Sql, users: TestUser[], round: Round) {
  const ids = users.map((u) => u.id);
  const all = round.series.flat();
  const rows = await admin<(Removed & { user_id: string; series_id: string; full: string })[]>`
    select user_id, series_id, chapter, page, percentage, cleared, device_id,
           to_jsonb(updated_at) #>> '{}' as updated_at, to_jsonb(created_at) #>> '{}' as created_at,
           to_jsonb(p)::text as full
      from public.reading_progress p
     where user_id = any(${ids}::uuid[]) and series_id = any(${all}::text[])`;
  const log = await admin<
    {
      user_id: string;
      series_id: string;
      kind: string;
      rejected: boolean;
      lu: string;
      ld: string;
      wu: string;
      wd: string;
      lp: { chapter: number; page: number; percentage: number; cleared: boolean };
      wp: { chapter: number; page: number; percentage: number; cleared: boolean };
      at: string;
      full: string;
    }[]
  >`
    select user_id, series_id, kind, rejected, to_jsonb(losing_updated_at) #>> '{}' as lu, losing_device_id as ld,
           to_jsonb(winning_updated_at) #>> '{}' as wu, winning_device_id as wd,
           jsonb_build_object('chapter', losing_chapter, 'page', losing_page, 'percentage', losing_percentage,
             'cleared', losing_cleared) as lp,
           jsonb_build_object('chapter', winning_chapter, 'page', winning_page, 'percentage', winning_percentage,
             'cleared', winning_cleared) as wp,
           to_jsonb(created_at) #>> '{}' as at, to_jsonb(c)::text as full
      from public.reading_progress_conflicts c
     where user_id = any(${ids}::uuid[]) and series_id = any(${all}::text[])
     order by id`;
  // The remembered deletion (migration 013's AFTER DELETE trigger): the version last deleted.
  const deletions = await admin<
    { user_id: string; series_id: string; version: Removed; deleted_at: string; full: string }[]
  >`
    select user_id, series_id, version, to_jsonb(deleted_at) #>> '{}' as deleted_at, to_jsonb(d)::text as full
      from public.reading_progress_deletions d
     where user_id = any(${ids}::uuid[]) and series_id = any(${all}::text[])`;
  const where = (userId: string, series: string) => `${ids.indexOf(userId)}/${series}`;
  const rowOf = new Map(rows.map((r) => [where(r.user_id, r.series_id), { ...r, created_at: lifeOf(r) }]));
  const deletionOf = new Map(
    deletions.map((d) => [where(d.user_id, d.series_id), {
      ...d.version,
      created_at: lifeOf(d.version),
      deleted_at: lifeOf({ created_at: d.deleted_at }),
    }]),
  );
  const logOf = new Map<string, LogRow[]>();
  for (const r of log) {
    const k = where(r.user_id, r.series_id);
    logOf.set(k, [...(logOf.get(k) ?? []), {
      kind: r.kind,
      rejected: r.rejected,
      losing: { updated_at: r.lu, device_id: r.ld },
      winning: { updated_at: r.wu, device_id: r.wd },
      losingPosition: positionOf(r.lp),
      winningPosition: positionOf(r.wp),
      at: lifeOf({ created_at: r.at }),
    }]);
  }
  const fingerprint = JSON.stringify([
    rows.map((r) => r.full).sort(),
    log.map((r) => r.full),
    deletions.map((d) => d.full).sort(),
  ]);
  return { rowOf, logOf, deletionOf, fingerprint };
}

/**
 * The invariants, per user and series (see the top). `what` names the seed and round in every
 * failure.
 */
function check(
  round: Round,
  outcomes: Outcome[],
  removedBy: (Ended | null)[],
  recycledBy: Map<string, Ended[]>,
  state: Awaited<ReturnType<typeof stateOf>>,
  what: string,
) {
  round.series.forEach((ss, u) => {
    for (const s of ss) {
      const here = `${what}, user ${u}, series ${s}`;
      const mine = round.attempts.filter((a) => a.user === u && a.write.series_id === s);
      const row = state.rowOf.get(`${u}/${s}`);
      const log = state.logOf.get(`${u}/${s}`) ?? [];
      const seeded = round.seeded.has(`${u}/${s}`);

      // Lives (README, Schema decisions, "Lives of a row"). Each delete that removed a row ended one
      // life and returned its last version; the row, if any, is the life after all of them. Every
      // version any answer shows belongs to one of these lives (its created_at), and lives never
      // overlap: a life is removed once, and the row's life began after every removed one.
      const dels = round.deletes.filter((d) => d.user === u && d.series_id === s);
      const recycle = round.recycles.find((rc) => rc.user === u && rc.series_id === s);
      const recycled = recycledBy.get(`${u}/${s}`) ?? [];
      const removed = [
        ...dels.map((d) => removedBy[d.id]).filter((r): r is Ended => r !== null),
        ...recycled,
      ];
      const cycled = removed.length > 0; // more than one life in this burst
      const lives = new Map<string, FinalRow>();
      for (const d of dels) {
        const r = removedBy[d.id];
        if (!r) continue;
        const at = `${here}, delete ${d.id} (${d.seen ? `if ${keyOf(d.seen)}` : "unconditional"})`;
        assert.ok(!lives.has(r.created_at), `${at}: removed the life ${r.created_at} a second time`);
        lives.set(r.created_at, r);
        // A conditional delete removes only the version it names (to the millisecond), nothing once
        // another version is stored (that is checked below: no version of its life is above it).
        if (d.seen) assert.equal(keyOf(r), keyOf(d.seen), `${at}: removed another version`);
      }
      if (recycle) {
        // The recycle's transaction removed the seeded row ('locked') and the life it inserted: that
        // life's only version is its own (nothing else saw the row before it was deleted again).
        assert.equal(recycled.length, recycle.kind === "locked" ? 2 : 1, `${here}: the recycle removed`);
        if (recycle.kind === "locked") {
          assert.equal(keyOf(recycled[0]), keyOf(SEED_KEY), `${here}: the recycle`);
        }
        const own = recycled[recycled.length - 1];
        assert.equal(
          keyOf(own),
          keyOf(recycle.version),
          `${here}: the recycle's life ended on another version`,
        );
        assert.equal(
          positionOf(own),
          positionOf(recycle.version),
          `${here}: the recycle's life, its position`,
        );
        for (const r of recycled) {
          const at = `${here}, the ${recycle.kind} recycle`;
          assert.ok(
            !lives.has(r.created_at),
            `${at}: removed the life ${r.created_at}, which another delete removed`,
          );
          lives.set(r.created_at, r);
        }
      }
      const deletion = state.deletionOf.get(`${u}/${s}`);
      if (!cycled) {
        assert.equal(deletion, undefined, `${here}: a deletion remembered, but no delete removed a row`);
      } else {
        // The remembered deletion is the last life removed (the greatest created_at), as it was.
        const last = removed.reduce((m, r) => (r.created_at > m.created_at ? r : m));
        assert.ok(deletion, `${here}: rows were deleted, but no deletion is remembered`);
        assert.equal(
          deletion.created_at,
          last.created_at,
          `${here}: the deletion remembered is not the last life`,
        );
        assert.equal(keyOf(deletion), keyOf(last), `${here}: the deletion remembered keeps another version`);
        assert.equal(deletion.deleted_at, last.deleted_at, `${here}: the deletion remembered is another's`);
        assert.equal(
          positionOf(deletion),
          positionOf(last),
          `${here}: the deletion remembered keeps another position`,
        );
      }
      if (row) {
        for (const r of removed) {
          assert.ok(
            row.created_at > r.created_at,
            `${here}: the row's life ${row.created_at} is not after ${r.created_at}, deleted`,
          );
        }
        lives.set(row.created_at, row);
      }
      const seedLife = round.seedLife.get(`${u}/${s}`);
      if (seedLife) assert.ok(lives.has(seedLife), `${here}: the seeded life neither deleted nor stored`);
      /** The last version of the life an answer shows: it must be one of the lives above. */
      const lastOf = (v: { created_at: string }, at: string) => {
        const last = lives.get(lifeOf(v));
        assert.ok(last, `${at}: shows a life (${lifeOf(v)}) no delete removed and that is not the row's`);
        return last;
      };

      // The writes the database took, under the keys they were stored with.
      const taken: FinalRow[] = [
        ...(seeded ? [{ ...SEED_KEY, chapter: 0, page: 0, percentage: 0, cleared: false }] : []),
        ...(recycle ? [recycle.version] : []), // in a life of its own (checked above)
      ];
      const aheadStored = new Set<string>();
      // A 503 from the function is no proof of a rollback: the function answers 503 for a database
      // connection lost or terminated (classes 08, 57, postgres.js's CONNECTION_CLOSED, ECONNRESET:
      // store.ts, mapDatabaseError) also when that happens after COMMIT was sent, so the transaction
      // may have committed (a 40001 or 40P01 the function gave up on, a statement or lock timeout,
      // keys unavailable: those rolled back, or never began). So a 503's writes are unknown: each may
      // or may not have been stored, and the database decides (the row, the lives deleted, the log):
      // a version or log row that only such a write explains shows that it committed. A 40001
      // (direct SQL, Data API) is the statement's own error: rolled back. (The burst drops a share of
      // the function's 200 answers as if the connection broke after the commit: see loseAnswer.)
      const unknown = mine.filter((a) => {
        const o = outcomes[a.id];
        return o.kind === "unavailable" && !o.code;
      });
      /** Whether a version or key could be an unknown write's (its own key, 1 ms after it, or dated by the server). */
      const unknownKey = (v: StoredKey) =>
        unknown.some((a) =>
          a.write.ahead
            ? v.device_id === a.write.device_id && msOf(v) > BASE + 86_400_000
            : keyOf(v) === keyOf(a.write) ||
              (v.device_id === a.write.device_id && msOf(v) === msOf(a.write) + 1)
        );
      const unknownVersion = (v: FinalRow) =>
        unknown.some((a) =>
          positionOf(v) === positionOf(a.write) && (
            a.write.ahead
              ? v.device_id === a.write.device_id && msOf(v) > BASE + 86_400_000
              : keyOf(v) === keyOf(a.write) || landedAfter(a.write, v)
          )
        );
      for (const a of mine) {
        const o = outcomes[a.id];
        if (o.kind === "unavailable") continue;
        if ((a.path === "update" || a.path === "keyless") && o.kind === "rest" && !o.row && !o.touched) {
          // An update (.update().eq()) or keyless edit that found no row (it locked none): the series
          // was deleted before it or while it waited for the deleter. It stored nothing.
          assert.ok(cycled, `${here}: an update (attempt ${a.id}) found no row, but no delete removed one`);
          continue;
        }
        if (a.write.keyless) {
          // Lands whenever it finds the row (a position of its own), under the edited version's
          // device, after that version: a key of its own in the life (checked with those dated ahead).
          assert.ok(o.kind === "rest");
          assert.ok(o.row, `${here}: a keyless edit (attempt ${a.id}) of the row was not stored`);
          taken.push({ ...a.write, updated_at: o.row.updated_at, device_id: o.row.device_id });
          const k = `${lifeOf(o.row)}|${keyOf(o.row)}`;
          assert.ok(!aheadStored.has(k), `${here}: a keyless edit stored under a key given before`);
          aheadStored.add(k);
          continue;
        }
        if (!a.write.ahead) {
          taken.push(a.write);
          continue;
        }
        // Dated an hour ahead: it wins by its own date over every version, stored at the server's
        // now (or 1 ms after the version it replaced).
        const stored = o.kind === "api" ? (o.result.won ? o.result.progress : null) : o.row;
        assert.ok(stored, `${here}: a write dated an hour ahead (attempt ${a.id}, ${a.path}) was not stored`);
        assert.equal(stored.device_id, a.write.device_id, `${here}: attempt ${a.id} stored under its device`);
        taken.push({ ...a.write, updated_at: stored.updated_at });
        // Two such writes never share a key within a life (in two lives they may: each was stored now).
        const k = `${lifeOf(stored)}|${keyOf(stored)}`;
        assert.ok(!aheadStored.has(k), `${here}: two writes dated ahead share a key`);
        aheadStored.add(k);
      }
      /** The positions stored under a key (one, but for writes dated ahead in two lives). */
      const stored = new Map<string, FinalRow[]>();
      for (const t of taken) stored.set(keyOf(t), [...(stored.get(keyOf(t)) ?? []), t]);
      const storedWith = (v: FinalRow) =>
        (stored.get(keyOf(v)) ?? []).some((t) => positionOf(t) === positionOf(v)) || unknownVersion(v);
      if (taken.length === 0 && unknown.length === 0) {
        assert.equal(row, undefined, `${here}: a row without a write`);
        assert.equal(log.length, 0);
        assert.equal(removed.length, 0, `${here}: a row deleted that no write stored`);
        continue;
      }
      if (!cycled) {
        // One life: its last version is the greatest write taken, or above it a write answered 503
        // (the row shows that it committed).
        const expected = taken.length ? taken.reduce((m, t) => (cmp(t, m) > 0 ? t : m)) : null;
        if (row && unknownVersion(row) && (!expected || cmp(row, expected) >= 0)) {
          // A write answered 503 is the row: it committed, and nothing taken is above it.
        } else {
          assert.ok(expected, `${here}: a row without a write but some answered 503, and not theirs`);
          assert.ok(row, `${here}: no row, expected ${keyOf(expected)}`);
          assert.equal(keyOf(row), keyOf(expected), `${here}: the row is the greatest write taken`);
          assert.equal(
            positionOf(row),
            positionOf(expected),
            `${here}: the row carries that write's position`,
          );
        }
      }
      // Several lives: each life's last version is a write taken, stored in that life (checked at the
      // end: storedIn), and no version answered as stored in a life is above that life's last version.
      const storedIn = new Map<string, Set<string>>(seedLife ? [[seedLife, new Set([keyOf(SEED_KEY)])]] : []);
      const storeIn = (v: { created_at: string; updated_at: string; device_id: string }) =>
        storedIn.set(lifeOf(v), (storedIn.get(lifeOf(v)) ?? new Set()).add(keyOf(v)));
      if (recycle) storeIn(recycled[recycled.length - 1]);

      // The log: what each answer demands, and nothing unexplained. One row per loser/winner pair:
      // a write stored, replaced by a same-millisecond one (logged, rejected = false) and then sent
      // again (refused by the same winner) keeps that row.
      const logged = (l: Pick<LogRow, "kind" | "losing" | "winning">) =>
        `${l.kind}|${keyOf(l.losing)}|${keyOf(l.winning)}`;
      const inLog = new Set(log.map(logged));
      assert.equal(inLog.size, log.length, `${here}: a loser/winner pair logged twice`);
      const explained = new Set<string>();
      // The replaced same-millisecond writes, by their winner: one in a single life (a winner key is
      // stored once), maybe more over several (the same key stored again in a later life, after
      // another write). A log row is kept across lives, moved to the life that logs it again.
      const replacedBy = new Map<string, LogRow[]>();
      for (const l of log.filter((l) => !l.rejected)) {
        replacedBy.set(keyOf(l.winning), [...(replacedBy.get(keyOf(l.winning)) ?? []), l]);
      }
      // Each life logs as a single life does. A log row belongs to the life it was (last) logged in:
      // the first whose deletion came after it (each logging holds the row's lock, so one in a life
      // ended before the delete that ended it, and a later life began after that delete committed),
      // else the row's (every one with a single life). log_reading_progress_conflict moves a pair's
      // row to a later life that logs the pair again (a deletion after it was logged), so a life may
      // have lost a row to a later one, never gained one. A pair's first logging in a life is the
      // one kept (a replaced write before its refusals: the stored key only grows within a life).
      const ended = [...removed].sort((x, y) => (x.created_at < y.created_at ? -1 : 1));
      const order = [...ended.map((r) => r.created_at), ...(row ? [row.created_at] : [])];
      const loggedIn = (l: LogRow) => {
        const life = ended.find((r) => r.deleted_at > l.at)?.created_at ?? row?.created_at;
        assert.ok(life, `${here}, log row ${logged(l)}: logged after the last deletion, but there is no row`);
        return life;
      };
      const lifeOfLog = new Map(log.map((l) => [l, loggedIn(l)]));
      const logIn = (life: string) => log.filter((l) => lifeOfLog.get(l) === life);
      /** Whether the pair is logged in that life or a later one (moved there), or only a later one. */
      const loggedSince = (key: string, life: string, later = false) =>
        log.some((l) =>
          logged(l) === key && order.indexOf(lifeOfLog.get(l)!) >= order.indexOf(life) + (later ? 1 : 0)
        );
      const replacedIn = (life: string, k: string) =>
        logIn(life).filter((l) => !l.rejected && keyOf(l.winning) === k).map(logged);
      const storedOnce = new Set<string>(seeded ? [keyOf(SEED_KEY)] : []); // versions some write stored
      for (const a of mine) {
        const o = outcomes[a.id];
        if (o.kind === "unavailable") continue;
        const own = keyOf(a.write);
        const at = `${here}, attempt ${a.id} (${a.path} ${own}${a.write.ahead ? " ahead" : ""})`;
        if (o.kind === "api") {
          const r = o.result;
          assert.equal(r.progress.series_id, s, at);
          assert.ok(
            stored.has(keyOf(r.progress)) || unknownKey(r.progress),
            `${at}: its answer shows a version no write stored`,
          );
          assert.ok(storedWith(r.progress), `${at}: its answer shows that version's position`);
          // Every version an answer shows was stored in its life, so is at most that life's last.
          const last = lastOf(r.progress, at);
          assert.ok(
            cmp(r.progress, last) <= 0,
            `${at}: its answer shows a version above its life's last: lost`,
          );
          if (r.won && !a.write.ahead && landedAfter(a.write, r.progress)) {
            // Its device's version 1 ms after it, with its position: taken for a retry of a write
            // that met its own key and landed 1 ms later, and answered as that one (README, Schema
            // decisions: the server does not keep the key a version was sent with). Nothing is lost.
            assert.equal(r.conflict, null, at);
            storeIn(r.progress);
          } else if (r.won) {
            const k = a.write.ahead ? keyOf(r.progress) : own;
            assert.equal(keyOf(r.progress), k, `${at}: a won write's answer carries it`);
            storedOnce.add(k);
            storeIn(r.progress);
            if (r.conflict === "tie") {
              assert.ok(r.conflict_with, at);
              assert.equal(msOf(r.conflict_with), msOf(r.progress), `${at}: a tie is one millisecond`);
              assert.ok(cmp(r.conflict_with, r.progress) < 0, at);
              const l = { kind: "tie", rejected: false, losing: r.conflict_with, winning: r.progress };
              assert.ok(inLog.has(logged(l)), `${at}: its won tie is not logged`);
              // Logged in its life as the replaced write, or moved to a later life that logged the pair.
              const life = lifeOf(r.progress);
              const inLife = replacedIn(life, k);
              if (inLife.length || life === row?.created_at) {
                assert.deepEqual(inLife, [logged(l)], `${at}: logged as the replaced write in its life`);
              } else {
                assert.ok(
                  loggedSince(logged(l), life, true),
                  `${at}: its won tie is logged in no later life`,
                );
              }
              explained.add(logged(l));
            } else {
              assert.equal(r.conflict, null, at);
              // (The same key may have won a tie in another life.)
              assert.deepEqual(
                replacedIn(lifeOf(r.progress), k),
                [],
                `${at}: answered without the tie it won`,
              );
            }
          } else {
            assert.ok(!a.write.ahead, `${at}: a write dated ahead lost`);
            assert.ok(cmp(a.write, r.progress) < 0, `${at}: lost to a version not above it`);
            let l: Pick<LogRow, "kind" | "rejected" | "losing" | "winning">;
            if (r.conflict === null) {
              assert.equal(
                r.progress.device_id,
                a.write.device_id,
                `${at}: lost without a conflict to another device`,
              );
              assert.equal(r.conflict_with, null, at);
              l = { kind: "self", rejected: true, losing: a.write, winning: r.progress };
            } else {
              assert.ok(r.conflict_with, at);
              assert.equal(keyOf(r.conflict_with), keyOf(r.progress), `${at}: names the row it lost to`);
              assert.equal(r.conflict, msOf(a.write) === msOf(r.progress) ? "tie" : "stale", at);
              assert.notEqual(r.progress.device_id, a.write.device_id, at);
              l = { kind: r.conflict, rejected: true, losing: a.write, winning: r.progress };
            }
            assert.ok(inLog.has(logged(l)), `${at}: its loss is not logged as ${logged(l)}`);
            assert.ok(
              loggedSince(logged(l), lifeOf(r.progress)),
              `${at}: its loss is not logged in its life or a later one`,
            );
            explained.add(logged(l));
          }
        } else if (o.row) {
          const k = a.write.ahead || a.write.keyless ? keyOf(o.row) : own;
          assert.equal(keyOf(o.row), k, `${at}: the Data API returned another row`);
          assert.ok(
            cmp(o.row, lastOf(o.row, at)) <= 0,
            `${at}: the Data API stored it, but it is above its life's last version: lost`,
          );
          storedOnce.add(k);
          storeIn(o.row);
          // checked below: the replaced write was stored
          for (const replaced of replacedBy.get(k) ?? []) explained.add(logged(replaced));
        } else {
          // No row: an update (.update().eq()) or keyless edit that found no row (checked above: the
          // series was deleted), or one that found the row: refused (logged) or an exact replay of
          // the stored version (not logged).
          if ((a.path === "update" || a.path === "keyless") && !o.touched) continue;
          assert.ok(!a.write.ahead, `${at}: a Data API write dated ahead was refused`);
          const refused = log.filter((l) => keyOf(l.losing) === own);
          for (const l of refused) explained.add(logged(l));
          const replay = mine.some((b) => b.id !== a.id && keyOf(b.write) === own);
          const landed = taken.some((t) => landedAfter(a.write, t)); // as above: not logged
          assert.ok(
            refused.length > 0 || replay || landed,
            `${at}: refused by the Data API without a log row`,
          );
        }
      }
      for (const l of log) {
        const at = `${here}, log row ${logged(l)}`;
        // A write answered 503 that committed was refused, or stored and then replaced in a tie: no
        // answer demands its row, the row shows that it committed.
        const byUnknown = unknownKey(l.losing) || (!l.rejected && unknownKey(l.winning));
        assert.ok(explained.has(logged(l)) || byUnknown, `${at}: explained by no answer`);
        assert.ok(cmp(l.losing, l.winning) < 0, at);
        assert.ok(stored.has(keyOf(l.winning)) || unknownKey(l.winning), `${at}: the winner is no write`);
        assert.ok(stored.has(keyOf(l.losing)) || unknownKey(l.losing), `${at}: the loser is no write`);
        // Its content: the positions of the two versions it names, and the life it was logged in
        // holds its winner (and the loser it replaced), as answered.
        assert.ok(
          storedWith({ ...l.winning, ...positionFrom(l.winningPosition) }),
          `${at}: the winner's position logged (${l.winningPosition}) is not the one stored under its key`,
        );
        assert.ok(
          storedWith({ ...l.losing, ...positionFrom(l.losingPosition) }),
          `${at}: the loser's position logged (${l.losingPosition}) is not the one sent under its key`,
        );
        const life = lifeOfLog.get(l)!;
        assert.ok(
          storedIn.get(life)?.has(keyOf(l.winning)) || unknownKey(l.winning),
          `${at}: its winner was not answered as stored in the life it was logged in (${life})`,
        );
        if (!l.rejected) {
          assert.ok(
            storedIn.get(life)?.has(keyOf(l.losing)) || unknownKey(l.losing),
            `${at}: the write it replaced was not answered as stored in the life it was logged in (${life})`,
          );
        }
        assert.equal(
          l.kind,
          l.losing.device_id === l.winning.device_id
            ? "self"
            : msOf(l.losing) === msOf(l.winning)
            ? "tie"
            : "stale",
          at,
        );
        assert.ok(
          storedOnce.has(keyOf(l.winning)) || unknownKey(l.winning),
          `${at}: the winner was never answered as stored`,
        );
        if (!l.rejected) {
          assert.ok(
            storedOnce.has(keyOf(l.losing)) || unknownKey(l.losing),
            `${at}: the replaced write was never stored`,
          );
        }
      }
      // Each life ended on a version some write stored in that life (with the position it was sent
      // with): with the checks above, the greatest version answered as stored in it. So the lives,
      // in created_at order, each a last-write-wins run of its writes and ended by the delete that
      // returned its last version (the last life: the row), are a serial order of every answer.
      for (const [life, last] of lives) {
        const at = `${here}, life ${life} (${keyOf(last)})`;
        assert.ok(
          storedIn.get(life)?.has(keyOf(last)) || unknownVersion(last),
          `${at}: its last version was never answered as stored in it (nor is it a write answered 503)`,
        );
        assert.ok(storedWith(last), `${at}: its last version is no write's (key and position)`);
      }
    }
  });
}

/**
 * "Changes since" the beginning, read by each user (public.reading_progress_changes): a series with a
 * row shows that row, one without a row but with a remembered deletion shows the deleted version
 * marked "deleted": true (README, Schema decisions, "Hard deletes"), one never written shows nothing.
 */
async function checkChanges(
  round: Round,
  users: TestUser[],
  sql: postgres.Sql,
  state: Awaited<ReturnType<typeof stateOf>>,
  what: string,
) {
  for (const [u, user] of users.entries()) {
    const items = new Map<string, Removed & { deleted?: boolean }>();
    let cursor = "";
    for (let more = true; more;) {
      const [{ page }] = await sql.begin(async (tx) => {
        await asUser(tx, user);
        return await tx<
          { page: { changes: (Removed & { series_id: string })[]; next_cursor: string; has_more: boolean } }[]
        >`
          select public.reading_progress_changes(${cursor}, 999) as page`;
      });
      for (const c of page.changes) items.set(c.series_id, c);
      more = page.has_more;
      cursor = page.next_cursor;
    }
    for (const s of round.series[u]) {
      const here = `${what}, user ${u}, series ${s}: changes since the beginning`;
      const item = items.get(s);
      const row = state.rowOf.get(`${u}/${s}`);
      const deletion = state.deletionOf.get(`${u}/${s}`);
      const expected = row ?? deletion;
      if (!expected) {
        assert.equal(item, undefined, `${here} show a series never written`);
        continue;
      }
      assert.ok(item, `${here} do not show it`);
      assert.equal(
        item.deleted ?? false,
        !row,
        `${here} show it ${row ? "deleted, but it has a row" : "as a row"}`,
      );
      assert.equal(keyOf(item), keyOf(expected), `${here} show another version`);
      assert.equal(lifeOf(item), expected.created_at, `${here} show another life`);
    }
  }
}

/**
 * Whether every attempt of the request was answered against the final row, so that sending it again
 * must answer the same and change nothing: through the API, its answer showed that row; through the
 * Data API, it is that row's write (an exact replay) or its refusal was logged against that row.
 */
function answeredAgainstFinal(
  request: Request,
  outcomes: Outcome[],
  state: Awaited<ReturnType<typeof stateOf>>,
  cycled: Set<string>,
) {
  return request.attempts.every((a) => {
    const o = outcomes[a.id];
    const row = state.rowOf.get(`${a.user}/${a.write.series_id}`);
    if (a.write.ahead || a.write.keyless || o.kind === "unavailable" || row === undefined) return false;
    // Against the final row: the same version of the same life (the same key may have been stored
    // in an earlier life too).
    if (o.kind === "api") {
      return keyOf(row) === keyOf(o.result.progress) && row.created_at === o.result.progress.created_at;
    }
    const own = keyOf(a.write);
    // A refusal logged in an earlier life is logged again in this one (the log row moves to it):
    // only a Data API write of a series with a single life counts, but an exact replay.
    if (cycled.has(`${a.user}/${a.write.series_id}`)) return own === keyOf(row);
    return own === keyOf(row) ||
      (state.logOf.get(`${a.user}/${a.write.series_id}`) ?? []).some((l) =>
        l.rejected && keyOf(l.losing) === own && keyOf(l.winning) === keyOf(row)
      );
  });
}

Deno.test("concurrent writes and hard deletes of many devices through every write path: each life ends on its greatest key, every loser is logged, replays change nothing", async () => {
  const env = Deno.env.get("READSYNC_CONCURRENCY_SEED");
  const seed = env ? Number(env) : Math.floor(Math.random() * 2 ** 32);
  assert.ok(Number.isInteger(seed), `READSYNC_CONCURRENCY_SEED=${env} is no integer`);
  const rounds = Number(Deno.env.get("READSYNC_CONCURRENCY_ROUNDS") ?? 10);
  console.log(
    `concurrency seed ${seed} (replay: READSYNC_CONCURRENCY_SEED=${seed} npm test -- tests/functions/progress_concurrency.test.ts)`,
  );
  const rng = seededRandom(seed);
  const users = await Promise.all([0, 1, 2].map(() => createTestUser()));
  const admin = adminSql({ max: 1 });
  const pools = {
    sql: postgres(testEnv().dbUrl, { max: 4, onnotice: () => {} }),
    rest: postgres(testEnv().dbUrl, { max: 4, onnotice: () => {} }),
    contend: postgres(testEnv().dbUrl, {
      max: 1,
      onnotice: () => {},
      connection: { application_name: CONTENDER },
    }),
  };
  const recyclePool = postgres(testEnv().dbUrl, { max: 2, onnotice: () => {} });
  try {
    for (let n = 1; n <= rounds; n++) {
      const what = `seed ${seed}, round ${n}`;
      const round = generate(rng, users.length);
      for (const key of round.seeded) {
        const [u, s] = key.split("/");
        const [seedRow] = await admin<{ created_at: string }[]>`
          insert into public.reading_progress (user_id, series_id, device_id, updated_at)
          values (${users[Number(u)].id}, ${s}, ${SEED_KEY.device_id}, ${SEED_KEY.updated_at}::timestamptz)
          returning to_jsonb(created_at) #>> '{}' as created_at`;
        round.seedLife.set(key, lifeOf(seedRow));
      }
      for (const rc of round.recycles.filter((rc) => rc.kind === "behind")) {
        // Its last deleted life dated an hour ahead, as if the server's clock stepped back since: a row
        // given that created_at (the stamp trigger keeps created_at; replica mode skips it), deleted.
        await admin.begin(async (tx) => {
          await tx`insert into public.reading_progress (user_id, series_id, device_id, updated_at)
            values (${
            users[rc.user].id
          }, ${rc.series_id}, ${SEED_KEY.device_id}, ${SEED_KEY.updated_at}::timestamptz)`;
          await tx`set local session_replication_role = replica`;
          await tx`update public.reading_progress set created_at = clock_timestamp() + interval '1 hour'
            where user_id = ${users[rc.user].id} and series_id = ${rc.series_id}`;
          await tx`set local session_replication_role = origin`;
          await tx`delete from public.reading_progress
            where user_id = ${users[rc.user].id} and series_id = ${rc.series_id}`;
        });
      }
      // The recycles' transactions take their first step before the burst (see Recycle).
      const recycling = await Promise.all(round.recycles.map((rc) => startRecycle(rc, users, recyclePool)));
      // The burst: every request at once.
      const outcomes: Outcome[] = [];
      const removedBy: (Ended | null)[] = [];
      const recycledBy = new Map<string, Ended[]>();
      const released = Promise.all(round.recycles.map(async (rc, i) => {
        try {
          await waitBlockedBy(admin, rc, recycling[i].pid, what);
        } finally {
          recycling[i].release();
        }
        recycledBy.set(`${rc.user}/${rc.series_id}`, await recycling[i].removed);
      }));
      await Promise.all([
        released,
        ...round.requests.map(async (request) => {
          const fail = (error: { detail?: string; where?: string }) => {
            throw new Error(
              `${what}: ${request.path} of ${
                request.del ? `delete ${request.del.id}` : request.attempts.map((a) => a.id)
              }: ${error}${error?.detail ? ` (${error.detail})` : ""}${
                error?.where ? ` [${error.where}]` : ""
              }`,
              { cause: error },
            );
          };
          if (request.del) {
            removedBy[request.del.id] = await sendDelete(request.del, users, pools.rest).catch(fail);
            return;
          }
          const got = await send(request, users, pools).catch(fail);
          request.attempts.forEach((a, i) => (outcomes[a.id] = got[i]));
        }),
      ]);
      // Series with more than one life in this burst: a delete removed a row (a recycle always does).
      const cycled = new Set([
        ...round.deletes.filter((d) => removedBy[d.id]).map((d) => `${d.user}/${d.series_id}`),
        ...recycledBy.keys(),
      ]);
      const state = await stateOf(admin, users, round);
      try {
        // A 40001 only where a delete made the INSERT that waited begin too old a life: the new-life
        // check (migration 013) refuses an INSERT whose created_at (the clock when its row was
        // stamped, or just after the deletion it saw then) is below the created_at of the deletion
        // remembered once it is in. So a life of one of its series that began after the clock its
        // transaction read before the statement was removed; every other new life must go in.
        for (const request of round.requests) {
          const a = request.attempts.find((a) => (outcomes[a.id] as { code?: string }).code === "40001");
          if (a) {
            const o = outcomes[a.id] as { since: string };
            const since = lifeOf({ created_at: o.since });
            const mine = new Set(request.attempts.map((b) => `${b.user}/${b.write.series_id}`));
            const later = [
              ...round.deletes.filter((d) => mine.has(`${d.user}/${d.series_id}`)).map((d) =>
                removedBy[d.id]
              ),
              ...[...mine].flatMap((k) => recycledBy.get(k) ?? []),
            ].filter((r) => r && r.created_at > since);
            assert.ok(
              later.length > 0,
              `${what}, user ${a.user}, series ${a.write.series_id}, attempt ${a.id} (${a.path}): 40001, but no ` +
                `delete removed a life begun after its statement began (${since})`,
            );
          }
        }
        check(round, outcomes, removedBy, recycledBy, state, what);
        await checkChanges(round, users, pools.sql, state, what);
      } catch (error) {
        // What the failing series saw, for the report: its attempts, answers, deletes, log and row.
        const series = /series (\S+),/.exec(String(error))?.[1];
        for (const a of round.attempts.filter((a) => a.write.series_id === series)) {
          console.log(
            JSON.stringify({ attempt: a.id, path: a.path, write: a.write, outcome: outcomes[a.id] }),
          );
        }
        for (const d of round.deletes.filter((d) => d.series_id === series)) {
          console.log(JSON.stringify({ delete: d.id, seen: d.seen, removed: removedBy[d.id] }));
        }
        for (const rc of round.recycles.filter((rc) => rc.series_id === series)) {
          console.log(JSON.stringify({ recycle: rc, removed: recycledBy.get(`${rc.user}/${rc.series_id}`) }));
        }
        for (const [k, v] of [...state.logOf, ...state.rowOf, ...state.deletionOf]) {
          if (k.endsWith(`/${series}`)) console.log(JSON.stringify(v));
        }
        throw error;
      }

      // Every request answered against the final row, sent again (at once): the same answer, and
      // nothing changes. The Data API's exact replays and refusals return no row.
      const again = round.requests.filter((r) => !r.del && answeredAgainstFinal(r, outcomes, state, cycled));
      await Promise.all(again.map(async (request) => {
        const got = await send(request, users, pools);
        request.attempts.forEach((a, i) => {
          const first = outcomes[a.id];
          const at = `${what}: ${request.path} ${keyOf(a.write)} (attempt ${a.id}) sent again`;
          if (got[i].kind === "unavailable") return;
          if (first.kind === "rest") {
            // No row; a single-row write found the row (nothing is deleted now).
            const none: Outcome = first.touched === undefined
              ? { kind: "rest", row: null }
              : { kind: "rest", row: null, touched: true };
            assert.deepEqual(got[i], none, at);
          } else assert.deepEqual(got[i], first, at);
        });
      }));
      const after = await stateOf(admin, users, round);
      assert.equal(after.fingerprint, state.fingerprint, `${what}: a replay changed the database`);
      console.log(
        `${what}: ${round.attempts.length} writes (${
          round.attempts.filter((a) => a.write.keyless).length
        } keyless) and ${round.deletes.length} deletes (${
          removedBy.filter(Boolean).length
        } removed a row) and ${round.recycles.length} recycles in ${round.requests.length} requests, ${again.length} sent again; ${
          outcomes.filter((o) => o.kind === "unavailable" && !o.code).length
        } answered 503 (${
          round.requests.filter((r) => r.loseAnswer).flatMap((r) => r.attempts).length
        } of them dropped 200s), ${
          outcomes.filter((o) => o.kind === "unavailable" && o.code).length
        } 40001, ${
          outcomes.filter((o) => o.kind === "rest" && o.touched === false).length
        } updates found no row`,
      );
    }
  } finally {
    await Promise.all([
      admin.end(),
      pools.sql.end(),
      pools.rest.end(),
      pools.contend.end(),
      recyclePool.end(),
    ]);
  }
});
