// Seeded, randomized concurrency over every write path at once, against the real PostgreSQL:
// several users, each with a few series and many devices, write at the same time through
//   * the edge function over HTTP: POST /progress, POST /progress/batch, DELETE /progress/series/:id
//     (a reset, a keyed tombstone), with the user's token or as service_role acting for the user,
//   * direct SQL: public.write_reading_progress on connections of their own,
//   * the Data API as PostgREST sends it (role authenticated, the JWT claims): an upsert
//     (supabase-js .upsert()), a bulk upsert of several series (.upsert([...])) and an update
//     (.update().eq()) of reading_progress,
// with dates that collide in one millisecond, go backwards, tie on time between device ids, lie an
// hour ahead of the server's clock, and with requests sent twice (the same key and position: a
// retry whose answer was lost). Nothing is ordered by timing: whatever order the database
// serialised the writes in, the verdict is the same. Afterwards, per user and series:
//   * the row is the greatest write by (updated_at, device_id) among the writes the database took
//     (every attempt but a 503, which rolled back; a write dated ahead counts under the key it was
//     stored with, as answered);
//   * no write answered as won (API: won; Data API: a row returned) is above the row: it is the row
//     or was beaten later; every answer's row is a version some write stored;
//   * every refused write is logged (stale / tie, or 'self' for its own device's newer write) and
//     its answer names the row it lost to; every replaced same-millisecond write is logged as the
//     tie's loser and its winner answered 'tie'; the log holds nothing else;
//   * no answer is a 500 (or any error but a 503);
//   * then every request whose first answer was given against the final row is sent again: it gets
//     the same answer (the Data API: no row) and the database does not change at all.
// The seed is printed; READSYNC_CONCURRENCY_SEED=<seed> replays a run (READSYNC_CONCURRENCY_ROUNDS
// sets the number of rounds, default 10).

import assert from "node:assert/strict";
import postgres from "postgres";
import { ConflictResolver } from "../../shared/progress/conflictResolver.ts";
import { batchWriteResponseSchema, writeResultSchema } from "../../shared/progress/schemas.ts";
import type { ProgressKey, ProgressPosition, WriteResult } from "../../shared/progress/types.ts";
import { createTestUser, type TestUser } from "../support/env.ts";
import { adminSql, call, seriesId, testEnv } from "./support.ts";

/** mulberry32: a small seeded PRNG, so a seed replays the same run. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];
  const chance = (p: number) => next() < p;
  return { next, int, pick, chance };
}
type Rng = ReturnType<typeof prng>;

const BASE = Date.parse("2026-04-01T08:00:00.000Z");
/** Offsets from BASE: many writes share a millisecond, some are a second or a day older. */
const OFFSETS = [0, 0, 1, 1, 2, 3, 1000, 1000, 1001, 2000, -86_400_000];
/** Byte-wise order: "B" < "a" < "b" < "dev-1" < "dev-10" < "dev-2". */
const DEVICES = ["B", "a", "b", "dev-1", "dev-10", "dev-2"];
const SEED_KEY = { updated_at: new Date(BASE - 7 * 86_400_000).toISOString(), device_id: "seed" };

type Path = "http" | "batch" | "reset" | "sql" | "upsert" | "bulk" | "update";

/** A write as sent (the API's body with `cleared` always given), and how it was dated. */
interface Write extends ProgressKey, ProgressPosition {
  series_id: string;
  /** Dated an hour ahead of the server's clock: stored under another key (as answered). */
  ahead: boolean;
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
}

/** What an attempt got: an API answer, the Data API's returned row (or none), or a 503. */
type Outcome =
  | { kind: "api"; result: WriteResult }
  | { kind: "rest"; row: StoredKey | null }
  | { kind: "unavailable" };

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

/** Whether `stored` is `w`'s device's version 1 ms after it with its position (see check()). */
const landedAfter = (w: Write, stored: FinalRow) =>
  stored.device_id === w.device_id && msOf(stored) === msOf(w) + 1 && positionOf(stored) === positionOf(w);

interface Round {
  series: string[][]; // per user
  seeded: Set<string>; // series that have a row before the burst (`${user}/${series}`)
  attempts: Attempt[];
  requests: Request[];
}

/** The writes of one round: distinct keys, each with one position; some requests sent twice. */
function generate(rng: Rng, users: number): Round {
  const series = Array.from(
    { length: users },
    () => Array.from({ length: 1 + rng.int(2) }, () => seriesId("conc")),
  );
  const seeded = new Set<string>();
  series.forEach((ss, u) => ss.forEach((s) => rng.chance(0.6) && seeded.add(`${u}/${s}`)));
  const byKey = new Map<string, Write>();
  const attempts: Attempt[] = [];
  const requests: Request[] = [];
  const newWrite = (u: number): Write => {
    const series_id = rng.pick(series[u]);
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
    ]);
    const size = path === "batch" || path === "bulk" ? 1 + rng.int(4) : 1;
    let writes: Write[] = [];
    for (let i = 0; i < size; i++) writes.push(newWrite(u));
    if (path === "bulk") {
      // One statement may not upsert a row twice (PostgREST answers that with an error): one write
      // per series. In series_id order (byte-wise, as the API's batch locks its rows): a statement
      // locks its rows in the order sent, and two bulk upserts of one user's series in opposite orders
      // can deadlock (40P01, HTTP 500 from PostgREST), as any two multi-row writes can.
      writes = writes.filter((w, i) => writes.findIndex((x) => x.series_id === w.series_id) === i)
        .sort((x, y) => (x.series_id < y.series_id ? -1 : 1));
    }
    if (path === "reset" && (!writes[0].cleared || writes[0].ahead)) path = "http";
    if (path === "update" && !seeded.has(`${u}/${writes[0].series_id}`)) path = "upsert";
    const request: Request = {
      user: u,
      path,
      asService: rng.chance(0.2),
      attempts: writes.map((write) => ({ id: attempts.length, user: u, write, path })),
    };
    for (const a of request.attempts) a.id = attempts.push(a) - 1;
    requests.push(request);
    if (rng.chance(0.15)) {
      // Sent twice at once (its answer was lost, the client retried): the same request again.
      const again: Request = {
        ...request,
        attempts: request.attempts.map((a) => ({ ...a })),
      };
      for (const a of again.attempts) a.id = attempts.push(a) - 1;
      requests.push(again);
    }
  }
  // Shuffle the requests (Fisher-Yates): the order they are started in.
  for (let i = requests.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [requests[i], requests[j]] = [requests[j], requests[i]];
  }
  return { series, seeded, attempts, requests };
}

const asUser = (tx: postgres.TransactionSql, user: TestUser) =>
  tx`select set_config('role', 'authenticated', true),
    set_config('request.jwt.claims', ${JSON.stringify({ sub: user.id, role: "authenticated" })}, true)`;

const bodyOf = (w: Write) => ({
  series_id: w.series_id,
  chapter: w.chapter,
  page: w.page,
  percentage: w.percentage,
  cleared: w.cleared,
  device_id: w.device_id,
  updated_at: w.updated_at,
});

/** Sends one request; the outcomes of its attempts, in order. Anything but 200 or 503 throws. */
async function send(
  request: Request,
  users: TestUser[],
  pools: { sql: postgres.Sql; rest: postgres.Sql },
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
    return answer.body;
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
        await asUser(tx, user);
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
        await asUser(tx, user);
        return await tx<{ series_id: string; updated_at: string; device_id: string }[]>`
          insert into public.reading_progress
            (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
          select user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at
            from json_populate_recordset(null::public.reading_progress, ${JSON.stringify(rows)}::text::json)
          on conflict (user_id, series_id) do update
            set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
                cleared = excluded.cleared, device_id = excluded.device_id, updated_at = excluded.updated_at
          returning series_id, to_jsonb(updated_at) #>> '{}' as updated_at, device_id`;
      });
      return writes.map((x): Outcome => {
        const row = got.find((r) => r.series_id === x.series_id);
        return { kind: "rest", row: row ? { updated_at: row.updated_at, device_id: row.device_id } : null };
      });
    }
    case "upsert":
    case "update": {
      const rows = await pools.rest.begin(async (tx) => {
        await asUser(tx, user);
        if (request.path === "upsert") {
          // What PostgREST sends for supabase-js .upsert(row): ON CONFLICT on the primary key, DO
          // UPDATE of every column sent.
          return await tx<{ updated_at: string; device_id: string }[]>`
            insert into public.reading_progress
              (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
            values (${user.id}, ${w.series_id}, ${w.chapter}, ${w.page}, ${w.percentage}, ${w.cleared},
              ${w.device_id}, ${w.updated_at}::timestamptz)
            on conflict (user_id, series_id) do update
              set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
                  cleared = excluded.cleared, device_id = excluded.device_id, updated_at = excluded.updated_at
            returning to_jsonb(updated_at) #>> '{}' as updated_at, device_id`;
        }
        // supabase-js .update(row).eq("series_id", id)
        return await tx<{ updated_at: string; device_id: string }[]>`
          update public.reading_progress
             set chapter = ${w.chapter}, page = ${w.page}, percentage = ${w.percentage}, cleared = ${w.cleared},
                 device_id = ${w.device_id}, updated_at = ${w.updated_at}::timestamptz
           where series_id = ${w.series_id}
          returning to_jsonb(updated_at) #>> '{}' as updated_at, device_id`;
      });
      assert.ok(rows.length <= 1);
      return [{
        kind: "rest",
        row: rows[0] ? { updated_at: rows[0].updated_at, device_id: rows[0].device_id } : null,
      }];
    }
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
}

/** Rows and conflict log of the round's series, as the superuser sees them. */
async function stateOf(admin: postgres.Sql, users: TestUser[], round: Round) {
  const ids = users.map((u) => u.id);
  const all = round.series.flat();
  const rows = await admin<(FinalRow & { user_id: string; series_id: string; full: string })[]>`
    select user_id, series_id, chapter, page, percentage, cleared, device_id,
           to_jsonb(updated_at) #>> '{}' as updated_at, to_jsonb(p)::text as full
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
      full: string;
    }[]
  >`
    select user_id, series_id, kind, rejected, to_jsonb(losing_updated_at) #>> '{}' as lu, losing_device_id as ld,
           to_jsonb(winning_updated_at) #>> '{}' as wu, winning_device_id as wd, to_jsonb(c)::text as full
      from public.reading_progress_conflicts c
     where user_id = any(${ids}::uuid[]) and series_id = any(${all}::text[])
     order by id`;
  const where = (userId: string, series: string) => `${ids.indexOf(userId)}/${series}`;
  const rowOf = new Map(rows.map((r) => [where(r.user_id, r.series_id), r]));
  const logOf = new Map<string, LogRow[]>();
  for (const r of log) {
    const k = where(r.user_id, r.series_id);
    logOf.set(k, [...(logOf.get(k) ?? []), {
      kind: r.kind,
      rejected: r.rejected,
      losing: { updated_at: r.lu, device_id: r.ld },
      winning: { updated_at: r.wu, device_id: r.wd },
    }]);
  }
  const fingerprint = JSON.stringify([rows.map((r) => r.full).sort(), log.map((r) => r.full)]);
  return { rowOf, logOf, fingerprint };
}

/**
 * The invariants, per user and series (see the top). `what` names the seed and round in every
 * failure.
 */
function check(round: Round, outcomes: Outcome[], state: Awaited<ReturnType<typeof stateOf>>, what: string) {
  round.series.forEach((ss, u) => {
    for (const s of ss) {
      const here = `${what}, user ${u}, series ${s}`;
      const mine = round.attempts.filter((a) => a.user === u && a.write.series_id === s);
      const row = state.rowOf.get(`${u}/${s}`);
      const log = state.logOf.get(`${u}/${s}`) ?? [];
      const seeded = round.seeded.has(`${u}/${s}`);
      // The writes the database took, under the keys they were stored with.
      const taken: FinalRow[] = seeded
        ? [{ ...SEED_KEY, chapter: 0, page: 0, percentage: 0, cleared: false }]
        : [];
      for (const a of mine) {
        const o = outcomes[a.id];
        if (o.kind === "unavailable") continue;
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
      }
      const stored = new Map(taken.map((t) => [keyOf(t), t]));
      const aheadKeys = mine.filter((a) => a.write.ahead && outcomes[a.id].kind !== "unavailable").length;
      assert.equal(
        new Set(taken.filter((t) => (t as Write).ahead).map(keyOf)).size,
        aheadKeys,
        `${here}: two writes dated ahead share a key`,
      );
      if (taken.length === 0) {
        assert.equal(row, undefined, `${here}: a row without a write`);
        assert.equal(log.length, 0);
        continue;
      }
      const expected = taken.reduce((m, t) => (cmp(t, m) > 0 ? t : m));
      assert.ok(row, `${here}: no row, expected ${keyOf(expected)}`);
      assert.equal(keyOf(row), keyOf(expected), `${here}: the row is the greatest write taken`);
      assert.equal(positionOf(row), positionOf(expected), `${here}: the row carries that write's position`);

      // The log: what each answer demands, and nothing unexplained. One row per loser/winner pair:
      // a write stored, replaced by a same-millisecond one (logged, rejected = false) and then sent
      // again (refused by the same winner) keeps that row.
      const logged = (l: Omit<LogRow, "rejected">) => `${l.kind}|${keyOf(l.losing)}|${keyOf(l.winning)}`;
      const inLog = new Set(log.map(logged));
      assert.equal(inLog.size, log.length, `${here}: a loser/winner pair logged twice`);
      const explained = new Set<string>();
      const replacedBy = new Map(log.filter((l) => !l.rejected).map((l) => [keyOf(l.winning), l]));
      const storedOnce = new Set<string>(seeded ? [keyOf(SEED_KEY)] : []); // versions some write stored
      for (const a of mine) {
        const o = outcomes[a.id];
        if (o.kind === "unavailable") continue;
        const own = keyOf(a.write);
        const at = `${here}, attempt ${a.id} (${a.path} ${own}${a.write.ahead ? " ahead" : ""})`;
        if (o.kind === "api") {
          const r = o.result;
          assert.equal(r.progress.series_id, s, at);
          assert.ok(stored.has(keyOf(r.progress)), `${at}: its answer shows a version no write stored`);
          assert.equal(
            positionOf(r.progress),
            positionOf(stored.get(keyOf(r.progress))!),
            `${at}: its answer shows that version's position`,
          );
          if (r.won && !a.write.ahead && landedAfter(a.write, r.progress)) {
            // Its device's version 1 ms after it, with its position: taken for a retry of a write
            // that met its own key and landed 1 ms later, and answered as that one (README, Schema
            // decisions: the server does not keep the key a version was sent with). Nothing is lost.
            assert.equal(r.conflict, null, at);
          } else if (r.won) {
            const k = a.write.ahead ? keyOf(r.progress) : own;
            assert.equal(keyOf(r.progress), k, `${at}: a won write's answer carries it`);
            assert.ok(cmp(r.progress, row) <= 0, `${at}: answered won, but above the final row: lost`);
            storedOnce.add(k);
            const replaced = replacedBy.get(k);
            if (r.conflict === "tie") {
              assert.ok(r.conflict_with, at);
              assert.equal(msOf(r.conflict_with), msOf(r.progress), `${at}: a tie is one millisecond`);
              assert.ok(cmp(r.conflict_with, r.progress) < 0, at);
              const l = { kind: "tie", rejected: false, losing: r.conflict_with, winning: r.progress };
              assert.ok(inLog.has(logged(l)), `${at}: its won tie is not logged`);
              assert.equal(replaced && logged(replaced), logged(l), `${at}: logged as the replaced write`);
              explained.add(logged(l));
            } else {
              assert.equal(r.conflict, null, at);
              assert.equal(
                replaced,
                undefined,
                `${at}: answered without the tie it won (${replaced && logged(replaced)})`,
              );
            }
          } else {
            assert.ok(!a.write.ahead, `${at}: a write dated ahead lost`);
            assert.ok(cmp(a.write, r.progress) < 0, `${at}: lost to a version not above it`);
            let l: LogRow;
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
            explained.add(logged(l));
          }
        } else if (o.row) {
          const k = a.write.ahead ? keyOf(o.row) : own;
          assert.equal(keyOf(o.row), k, `${at}: the Data API returned another row`);
          assert.ok(
            cmp(o.row, row) <= 0,
            `${at}: the Data API stored it, but it is above the final row: lost`,
          );
          storedOnce.add(k);
          const replaced = replacedBy.get(k);
          if (replaced) explained.add(logged(replaced)); // checked below: the replaced write was stored
        } else {
          // No row: refused (logged), or an exact replay of the stored version (not logged).
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
        assert.ok(explained.has(logged(l)), `${at}: explained by no answer`);
        assert.ok(cmp(l.losing, l.winning) < 0, at);
        assert.ok(stored.has(keyOf(l.winning)), `${at}: the winner is no write`);
        assert.ok(stored.has(keyOf(l.losing)), `${at}: the loser is no write`);
        assert.equal(
          l.kind,
          l.losing.device_id === l.winning.device_id
            ? "self"
            : msOf(l.losing) === msOf(l.winning)
            ? "tie"
            : "stale",
          at,
        );
        assert.ok(storedOnce.has(keyOf(l.winning)), `${at}: the winner was never answered as stored`);
        if (!l.rejected) {
          assert.ok(storedOnce.has(keyOf(l.losing)), `${at}: the replaced write was never stored`);
        }
      }
    }
  });
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
) {
  return request.attempts.every((a) => {
    const o = outcomes[a.id];
    const row = state.rowOf.get(`${a.user}/${a.write.series_id}`);
    if (a.write.ahead || o.kind === "unavailable" || row === undefined) return false;
    if (o.kind === "api") return keyOf(row) === keyOf(o.result.progress);
    const own = keyOf(a.write);
    return own === keyOf(row) ||
      (state.logOf.get(`${a.user}/${a.write.series_id}`) ?? []).some((l) =>
        l.rejected && keyOf(l.losing) === own && keyOf(l.winning) === keyOf(row)
      );
  });
}

Deno.test("concurrent writes of many devices through every write path: the greatest key is stored, every loser is logged, replays change nothing", async () => {
  const env = Deno.env.get("READSYNC_CONCURRENCY_SEED");
  const seed = env ? Number(env) : Math.floor(Math.random() * 2 ** 32);
  assert.ok(Number.isInteger(seed), `READSYNC_CONCURRENCY_SEED=${env} is no integer`);
  const rounds = Number(Deno.env.get("READSYNC_CONCURRENCY_ROUNDS") ?? 10);
  console.log(
    `concurrency seed ${seed} (replay: READSYNC_CONCURRENCY_SEED=${seed} npm test -- tests/functions/progress_concurrency.test.ts)`,
  );
  const rng = prng(seed);
  const users = await Promise.all([0, 1, 2].map(() => createTestUser()));
  const admin = adminSql({ max: 1 });
  const pools = {
    sql: postgres(testEnv().dbUrl, { max: 4, onnotice: () => {} }),
    rest: postgres(testEnv().dbUrl, { max: 4, onnotice: () => {} }),
  };
  try {
    for (let n = 1; n <= rounds; n++) {
      const what = `seed ${seed}, round ${n}`;
      const round = generate(rng, users.length);
      for (const key of round.seeded) {
        const [u, s] = key.split("/");
        await admin`insert into public.reading_progress (user_id, series_id, device_id, updated_at)
          values (${users[Number(u)].id}, ${s}, ${SEED_KEY.device_id}, ${SEED_KEY.updated_at}::timestamptz)`;
      }
      // The burst: every request at once.
      const outcomes: Outcome[] = [];
      await Promise.all(round.requests.map(async (request) => {
        const got = await send(request, users, pools).catch((error) => {
          throw new Error(
            `${what}: ${request.path} of ${request.attempts.map((a) => a.id)}: ${error}${
              error?.detail ? ` (${error.detail})` : ""
            }${error?.where ? ` [${error.where}]` : ""}`,
            { cause: error },
          );
        });
        request.attempts.forEach((a, i) => (outcomes[a.id] = got[i]));
      }));
      const state = await stateOf(admin, users, round);
      try {
        check(round, outcomes, state, what);
      } catch (error) {
        // What the failing series saw, for the report: its attempts, answers, log and row.
        const series = /series (\S+),/.exec(String(error))?.[1];
        for (const a of round.attempts.filter((a) => a.write.series_id === series)) {
          console.log(
            JSON.stringify({ attempt: a.id, path: a.path, write: a.write, outcome: outcomes[a.id] }),
          );
        }
        for (const [k, v] of [...state.logOf, ...state.rowOf]) {
          if (k.endsWith(`/${series}`)) console.log(JSON.stringify(v));
        }
        throw error;
      }

      // Every request answered against the final row, sent again (at once): the same answer, and
      // nothing changes. The Data API's exact replays and refusals return no row.
      const again = round.requests.filter((r) => answeredAgainstFinal(r, outcomes, state));
      await Promise.all(again.map(async (request) => {
        const got = await send(request, users, pools);
        request.attempts.forEach((a, i) => {
          const first = outcomes[a.id];
          const at = `${what}: ${request.path} ${keyOf(a.write)} (attempt ${a.id}) sent again`;
          if (got[i].kind === "unavailable") return;
          if (first.kind === "rest") assert.deepEqual(got[i], { kind: "rest", row: null }, at);
          else assert.deepEqual(got[i], first, at);
        });
      }));
      const after = await stateOf(admin, users, round);
      assert.equal(after.fingerprint, state.fingerprint, `${what}: a replay changed the database`);
      console.log(
        `${what}: ${round.attempts.length} writes in ${round.requests.length} requests, ${again.length} sent again; ${
          outcomes.filter((o) => o.kind === "unavailable").length
        } answered 503`,
      );
    }
  } finally {
    await Promise.all([admin.end(), pools.sql.end(), pools.rest.end()]);
  }
});
