// A device persists the changes cursor of its subscription (subscription.cursor / onCursor), stops,
// and starts again with it as initialCursor: over the real supabase-js client, the stack's Realtime
// and the progress function (GET /functions/v1/progress/changes). Every change made after the
// cursor reaches the new subscription (those made while the device was stopped by its catch-up); of
// what the first run was given, only versions at or after the cursor's transaction come again, as
// the README says (never one the cursor confirms).

import assert from "node:assert/strict";
import type { SupabaseClient } from "@supabase/supabase-js";
import { changesSince, subscribeToProgress, updateProgress } from "../../shared/progress/api.ts";
import type { ProgressChange } from "../../shared/realtime/realtimeService.ts";
import { adminSql, createTestUser } from "../support/env.ts";
import {
  clientWithToken,
  closeClient,
  deleteProgress,
  joinChannel,
  noSanitize,
  serverState,
  type Sql,
  waitFor,
} from "./realtime_support.ts";

const GUARD = { timeoutMs: 30_000 };

/** device-a's write through the Data API: the series at `chapter` (its page the same), dated `at`. */
const writeAt = (client: SupabaseClient, series_id: string, chapter: number, at: Date) =>
  updateProgress(client, {
    series_id,
    chapter,
    page: chapter,
    percentage: 0,
    device_id: "device-a",
    updated_at: at.toISOString(),
  });

/** Waits (under the guard) for a subscription to be live; `what` names it in the wait's message. */
const live = (what: string, sub: { status: string }) =>
  waitFor(`${what} live`, () => sub.status === "live", GUARD);

/**
 * Where a changes cursor ("[<tag>.]<xid>[:<series_id>]"; "[<cluster tag>.]u<user tag>.<xid>…" as
 * migration …_changes_cursor_names_user.sql handed it out) lies: rows after it have a greater (xid, series).
 */
function position(cursor: string): { xid: bigint; series: string } {
  const match = cursor.match(/^(?:[0-9a-f]{8}\.)?(?:u[0-9a-f]{8}\.)?([0-9]+)(?::(.+))?$/);
  assert.ok(match, `a changes cursor: ${cursor}`);
  return { xid: BigInt(match[1]), series: match[2] ?? "" };
}

/** Whether a version (its change_xid and series) lies after the cursor's position, as the API reads it. */
function after(cursor: string, row: { change_xid: string; series_id: string }): boolean {
  const at = position(cursor);
  const xid = BigInt(row.change_xid);
  return xid > at.xid || (xid === at.xid && row.series_id > at.series);
}

/**
 * What a restart from `cursor` must have done: every current row of the server reached the device,
 * from the second run or (lying before the cursor) from the first; and the second run was given no
 * version the cursor confirms (none before it), so only versions at or after it came again.
 */
async function assertResumed(
  sql: Sql,
  userId: string,
  cursor: string,
  first: ProgressChange[],
  second: ProgressChange[],
): Promise<void> {
  for (const change of second.filter((c) => c.kind === "upsert")) {
    assert.ok(
      after(cursor, change.row),
      `re-delivered though the cursor ${cursor} confirms it: ${change.row.series_id} at ${change.row.change_xid}`,
    );
  }
  const held = (changes: ProgressChange[], row: Record<string, unknown>) =>
    changes.some((c) =>
      c.kind === "upsert" && c.row.series_id === row.series_id && c.row.change_xid === row.change_xid
    );
  for (const [series, row] of await serverState(sql, userId)) {
    const xid = String(row.change_xid);
    if (after(cursor, { change_xid: xid, series_id: series })) {
      assert.ok(held(second, row), `${series} at ${xid} (after ${cursor}) not delivered after the restart`);
    } else {
      assert.ok(held(first, row), `${series} at ${xid} (before ${cursor}) never delivered`);
      assert.ok(!held(second, row), `${series} at ${xid} (before ${cursor}) delivered again`);
    }
  }
}

/**
 * Another device's channel on the reader's topic, joined before any write of the test: once it has
 * received a write's broadcast, Realtime has sent it, and a channel joined later cannot receive it,
 * so a restarted subscription is given that write by its reads alone (Realtime's replication lags
 * under load: without this a late broadcast of a version the cursor confirms could reach it).
 */
async function observe(user: { id: string; accessToken: string }) {
  const client = clientWithToken(() => user.accessToken);
  const { joined, status } = await joinChannel(client, `progress:${user.id}`);
  assert.equal(status, "SUBSCRIBED");
  return {
    joined,
    sent: (count: number) =>
      waitFor(`${count} broadcasts sent`, () => joined.received.length >= count, GUARD),
    close: () => closeClient(client),
  };
}

/**
 * A test's reader (a new user), a writer device of theirs, the observer on their topic, and the
 * reading device's runs: run() starts one (a new client subscribed from the quiet options, given
 * `more`; `changes` collects what it is given; `on`: subscribed on that run's client instead, as a
 * second subscription of one app, with `more` only: the shared service has the quiet options),
 * end() unsubscribes every run and closes it all. write() writes as the writer device, dated a minute
 * back and a millisecond later each time; writes() counts them.
 */
async function reader() {
  const sql = adminSql();
  const a = await createTestUser();
  const writer = clientWithToken(() => a.accessToken);
  const observer = await observe(a);
  // No read while live but the ones the test asks for: the safety read and the heartbeat watch off.
  const options = {
    accessToken: a.accessToken,
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    log: () => {},
  };
  const runs: { device: SupabaseClient; sub: ReturnType<typeof subscribeToProgress> }[] = [];
  const t0 = Date.now() - 60_000;
  let writes = 0;
  return {
    sql,
    a,
    writer,
    observer,
    write: (series_id: string, chapter: number) =>
      writeAt(writer, series_id, chapter, new Date(t0 + ++writes)),
    writes: () => writes,
    run(
      changes: ProgressChange[],
      more: { changesLimit?: number; initialCursor?: string } = {},
      on?: SupabaseClient,
    ) {
      const device = on ?? clientWithToken(() => a.accessToken);
      const sub = subscribeToProgress(
        device,
        a.id,
        (c) => changes.push(c),
        on ? more : { ...options, ...more },
      );
      runs.push({ device, sub });
      return { device, sub };
    },
    async end() {
      for (const { sub } of runs) await sub.unsubscribe();
      for (const device of new Set(runs.map((r) => r.device))) await closeClient(device);
      await closeClient(writer);
      await observer.close();
      await sql.end();
    },
  };
}

Deno.test({
  name:
    "realtime cursor: persisted at stop, written to while stopped, restarted with initialCursor: every change delivered, none the cursor confirms again",
  ...noSanitize,
}, async () => {
  const { sql, a, observer, run, write, writes, end } = await reader();
  const hold = (changes: ProgressChange[], series: string, chapter: number, kind = "upsert") =>
    changes.some((c) => c.kind === kind && c.row.series_id === series && c.row.chapter === chapter);

  // First run (pages of 2, as the second): live, given three series, then a read that confirms them.
  const first: ProgressChange[] = [];
  const heardFirst: (string | null)[] = [];
  let readsFirst = 0;
  const { device: deviceB1, sub: sub1 } = run(first, { changesLimit: 2 });
  sub1.onCursor((cursor) => heardFirst.push(cursor));
  sub1.onRead(() => readsFirst++);
  try {
    await live("the first run", sub1);
    await write("kept", 1);
    await write("moved", 1);
    await write("gone", 1);
    await waitFor(
      "the three series on the device",
      () => hold(first, "kept", 1) && hold(first, "moved", 1) && hold(first, "gone", 1),
      GUARD,
    );
    assert.equal(await sub1.syncNow(), "done");
    const confirmed = sub1.cursor;
    assert.equal(typeof confirmed, "string", "a cursor to persist");
    assert.equal(heardFirst.at(-1), confirmed, "onCursor heard it");
    // A version given by a broadcast moves no cursor: only a read confirms what lies before one.
    const reads = readsFirst;
    await write("late", 1);
    await waitFor("the late version on the device", () => hold(first, "late", 1), GUARD);
    if (readsFirst === reads) assert.equal(sub1.cursor, confirmed, "no read since: the cursor stayed");

    // Stop: the cursor is read (and would be persisted) once unsubscribed.
    await sub1.unsubscribe();
    const persisted = sub1.cursor!;
    await closeClient(deviceB1);

    // Written while the device is stopped: more than a page (changesLimit 2) of changes.
    await write("moved", 2);
    await deleteProgress(sql, a.id, "gone");
    for (let i = 1; i <= 3; i++) await write(`new-${i}`, i);
    await observer.sent(writes() + 1); // every write and the deletion: none can reach the next channel

    // Second run, from the persisted cursor.
    const second: ProgressChange[] = [];
    const heardSecond: (string | null)[] = [];
    const { sub: sub2 } = run(second, { changesLimit: 2, initialCursor: persisted });
    sub2.onCursor((cursor) => heardSecond.push(cursor));
    assert.equal(sub2.cursor, persisted, "it starts from the persisted cursor");
    await live("the second run", sub2);

    // What changed while stopped, by its reads (no broadcast of it was sent while it was joined).
    for (const [series, chapter] of [["moved", 2], ["new-1", 1], ["new-2", 2], ["new-3", 3]] as const) {
      assert.ok(hold(second, series, chapter), `${series} ${chapter} delivered`);
    }
    assert.ok(hold(second, "gone", 1, "delete"), "the deletion delivered");
    assert.ok(second.every((c) => c.source !== "realtime"), "all of it read (catch-up or poll)");
    // The late version came after the cursor's read: it may come again (it is not confirmed), once.
    assert.ok(second.filter((c) => c.row.series_id === "late").length <= 1);
    await assertResumed(sql, a.id, persisted, first, second);
    assert.ok(heardSecond.length >= 1 && heardSecond.at(-1) === sub2.cursor, "onCursor heard each move");
  } finally {
    await end();
  }
});

Deno.test({
  name:
    "realtime cursor: the cursor onCursor hears after a catch-up's first page, persisted as the app stops there: the restart delivers the rest of the library",
  ...noSanitize,
}, async () => {
  const { sql, a, observer, run, write, end } = await reader();
  // A library of seven series, written (and broadcast) before any device of the reader is
  // subscribed: only reads give it to the device.
  for (let i = 1; i <= 7; i++) await write(`library-${i}`, i);
  await observer.sent(7);
  const first: ProgressChange[] = [];
  let persisted: string | null | undefined;
  // Pages of 3: the app is stopped (by the listener itself) right after the first page.
  const { device: deviceB1, sub: sub1 } = run(first, { changesLimit: 3 });
  sub1.onCursor((cursor) => {
    if (persisted !== undefined) return;
    persisted = cursor;
    void sub1.unsubscribe();
  });
  try {
    await waitFor("the first page's cursor", () => persisted !== undefined, GUARD);
    await waitFor("the first run stopped", () => sub1.service.stats().links === 0, GUARD);
    assert.equal(sub1.cursor, persisted, "the cursor kept at stop is the one heard");
    assert.equal(typeof persisted, "string");
    assert.ok(first.every((c) => c.source !== "realtime"), "read, not broadcast");
    assert.ok(first.length <= 3, "one page read");
    await closeClient(deviceB1);

    const second: ProgressChange[] = [];
    const { sub: sub2 } = run(second, { changesLimit: 3, initialCursor: persisted! });
    await live("the second run", sub2);
    await assertResumed(sql, a.id, persisted!, first, second);
    assert.ok(second.every((c) => c.source !== "realtime"), "read, not broadcast");
    const everything = new Set([...first, ...second].map((c) => c.row.series_id));
    assert.equal(everything.size, 7, "the whole library between the two runs");
  } finally {
    await end();
  }
});

Deno.test({
  name:
    "realtime cursor: a write whose transaction was still open when the cursor was read (an older transaction id than a broadcast one) reaches the restarted device",
  ...noSanitize,
}, async () => {
  const { sql, a, writer, observer, run, end } = await reader();
  const first: ProgressChange[] = [];
  const { device: deviceB1, sub: sub1 } = run(first);
  let commit = () => {};
  let slow: Promise<unknown> = Promise.resolve();
  try {
    await live("the first run", sub1);
    // A transaction takes a transaction id (its write) and stays open: a script's (role postgres, RLS
    // bypassed), as the user's own writes wait for each other's whole transaction (migration
    // …_user_writes_serialized.sql): the later one could not commit first.
    let written = () => {};
    const inserted = new Promise<void>((resolve) => written = resolve);
    const committing = new Promise<void>((resolve) => commit = resolve);
    slow = sql.begin(async (tx) => {
      await tx`insert into public.reading_progress
                 (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
               values (${a.id}, 'slow', 1, 1, 0, false, 'device-a', now())`;
      written();
      await committing;
    });
    await inserted;
    // A later transaction commits first, and the device is given it (its broadcast, or a read).
    await writeAt(writer, "fast", 1, new Date());
    await waitFor("fast on the device", () => first.some((c) => c.row.series_id === "fast"), GUARD);
    // A read now confirms what lies before the oldest transaction still open, not the fast write's.
    assert.equal(await sub1.syncNow(), "done");
    await sub1.unsubscribe();
    const persisted = sub1.cursor!;
    assert.equal(typeof persisted, "string");
    await closeClient(deviceB1);
    assert.ok(!first.some((c) => c.row.series_id === "slow"), "not committed while the first run ran");

    // The open transaction commits while the device is stopped.
    commit();
    await slow;
    await observer.sent(2);

    const second: ProgressChange[] = [];
    const { sub: sub2 } = run(second, { initialCursor: persisted });
    await live("the second run", sub2);
    assert.ok(second.some((c) => c.kind === "upsert" && c.row.series_id === "slow"), "slow delivered");
    await assertResumed(sql, a.id, persisted, first, second);
  } finally {
    commit();
    await slow.catch(() => {});
    await end();
  }
});

/** The cursor a read of the user's changes from the beginning ends at now (GET /progress/changes, followed). */
async function cursorNow(client: SupabaseClient): Promise<string> {
  let cursor: string | null = null;
  for (;;) {
    const page = await changesSince(client, cursor, { limit: 500 });
    cursor = page.next_cursor;
    if (!page.has_more) return cursor;
  }
}

const has = (changes: ProgressChange[], kind: string, series: string) =>
  changes.some((c) => c.kind === kind && c.row.series_id === series);

Deno.test({
  name:
    "realtime cursor: a second subscription of one app (the same client) from an older cursor is given every change after it, the deletion it needs too; the first, from a newer one, is not given what lies before its own",
  ...noSanitize,
}, async () => {
  const { sql, a, writer, observer, run, write, writes, end } = await reader();
  try {
    await write("gone", 1);
    await write("kept", 1);
    const older = await cursorNow(writer); // an app's screen last read here
    await deleteProgress(sql, a.id, "gone");
    await write("kept", 2);
    await observer.sent(writes() + 1); // every write and the deletion: none can reach a channel joined later
    const newer = await cursorNow(writer); // another screen of the app read on to here

    const first: ProgressChange[] = [];
    const { device, sub: sub1 } = run(first, { initialCursor: newer });
    await live("the first subscription", sub1);

    const second: ProgressChange[] = [];
    const { sub: sub2 } = run(second, { initialCursor: older }, device);
    assert.equal(sub2.service, sub1.service, "one app: one shared service, one channel");
    assert.equal(sub2.cursor, older, "it starts from its own cursor");
    await live("the second subscription", sub2);
    assert.ok(has(second, "delete", "gone"), "the deletion after its cursor delivered");
    assert.ok(
      second.some((c) => c.kind === "upsert" && c.row.series_id === "kept" && c.row.chapter === 2),
      "kept 2 delivered",
    );
    await assertResumed(sql, a.id, older, [], second);
    for (const change of first.filter((c) => c.kind === "upsert")) {
      assert.ok(after(newer, change.row), `the first was given ${change.row.series_id}, before its cursor`);
    }
  } finally {
    await end();
  }
});

Deno.test({
  name:
    "realtime cursor: a second subscription of one app from the cursor the first started from is given the deletion the first was given since, as a deletion",
  ...noSanitize,
}, async () => {
  const { sql, a, writer, observer, run, write, end } = await reader();
  try {
    await write("gone", 1);
    await observer.sent(1);
    const start = await cursorNow(writer);
    const first: ProgressChange[] = [];
    const { device, sub: sub1 } = run(first, { initialCursor: start });
    await live("the first subscription", sub1);
    await deleteProgress(sql, a.id, "gone");
    await waitFor("the deletion on the first", () => has(first, "delete", "gone"), GUARD);

    const second: ProgressChange[] = [];
    const { sub: sub2 } = run(second, { initialCursor: start }, device);
    assert.ok(has(second, "delete", "gone"), "the deletion after its cursor, handed as it subscribed");
    assert.equal(sub2.cursor, sub1.cursor, "the link's cursor: it was given all the link was");
  } finally {
    await end();
  }
});

Deno.test({
  name:
    "realtime cursor: one client whose session goes from reader A to reader B: B's subscription, given no cursor, does not start from the cursor A's was given, and B's earlier progress is delivered",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const b = await createTestUser();
  const writerA = clientWithToken(() => a.accessToken);
  const writerB = clientWithToken(() => b.accessToken);
  let token = a.accessToken;
  const device = clientWithToken(() => token); // the app's one client: its session is A's, then B's
  const quiet = { livePollIntervalMs: 0, heartbeatReplyTimeoutMs: 0, log: () => {} };
  const subs: ReturnType<typeof subscribeToProgress>[] = [];
  try {
    const write = (client: SupabaseClient, series_id: string) =>
      writeAt(client, series_id, 1, new Date(Date.now() - 60_000));
    await write(writerB, "b-early"); // B read this on another device before A's cursor was handed out
    await write(writerA, "a-1");
    const cursorA = await cursorNow(writerA); // A's persisted cursor: past b-early's transaction

    const subA = subscribeToProgress(device, a.id, () => {}, { ...quiet, initialCursor: cursorA });
    subs.push(subA);
    await live("A's subscription", subA);

    // A signs out and B signs in on the same client; the app subscribes B before A's screen is gone.
    token = b.accessToken;
    const changesB: ProgressChange[] = [];
    const subB = subscribeToProgress(device, b.id, (c) => changesB.push(c));
    subs.push(subB);
    assert.equal(subB.service, subA.service, "the client's shared service");
    assert.equal(subB.cursor, null, "B's subscription starts from the beginning, not from A's cursor");
    await subA.unsubscribe();
    await live("B's subscription", subB);
    assert.ok(has(changesB, "upsert", "b-early"), "B's progress written before A's cursor delivered");
  } finally {
    for (const sub of subs) await sub.unsubscribe();
    await closeClient(device);
    await closeClient(writerA);
    await closeClient(writerB);
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime cursor: a second subscription whose own read the API refuses every time (a cursor RealtimeService's subscribeToProgress takes unchecked) does not hold back the first: its reads end done and it is handed what is written; the second stays connecting and hears its reads fail",
  ...noSanitize,
}, async () => {
  const { writer, run, end } = await reader();
  let sub2: ReturnType<ReturnType<typeof subscribeToProgress>["service"]["subscribeToProgress"]> | undefined;
  try {
    const first: ProgressChange[] = [];
    const { sub: sub1 } = run(first);
    await live("the first subscription", sub1);
    const reads2: string[] = [];
    // Answered 422 (not a changes cursor) at every read of its own.
    sub2 = sub1.service.subscribeToProgress(sub1.userId, () => {}, { initialCursor: "not a cursor" });
    sub2.onRead((outcome) => reads2.push(outcome));
    await waitFor("its own read refused", () => reads2.includes("failed"), GUARD);
    assert.equal(await sub1.syncNow(), "done", "the first's read is not failed by the second's");
    await writeAt(writer, "after", 1, new Date());
    await waitFor("the write on the first", () => has(first, "upsert", "after"), GUARD);
    assert.equal(sub1.status, "live");
    assert.equal(sub2.status, "connecting");
    assert.equal(await sub2.syncNow(), "failed", "its own read is refused: not done for it");
  } finally {
    await sub2?.unsubscribe();
    await end();
  }
});

/** The tag a changes cursor names its user by ("<tag>.<xid>[:<series_id>]", the user folded in), or null. */
const userTagOf = (cursor: unknown) =>
  typeof cursor === "string" ? cursor.match(/^([0-9a-f]{8})\.[0-9]/)?.[1] ?? null : null;

Deno.test({
  name:
    "realtime cursor: reader B's subscription given reader A's cursor as initialCursor (an app that stored it by device, not by user) is given B's progress written before that cursor, and then has a cursor of B's",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const b = await createTestUser();
  const writerA = clientWithToken(() => a.accessToken);
  const writerB = clientWithToken(() => b.accessToken);
  const observer = await observe(b);
  const device = clientWithToken(() => b.accessToken); // the app's client, now signed in as B
  const quiet = { livePollIntervalMs: 0, heartbeatReplyTimeoutMs: 0, log: () => {} };
  let subB: ReturnType<typeof subscribeToProgress> | undefined;
  try {
    const write = (client: SupabaseClient, series_id: string) =>
      writeAt(client, series_id, 1, new Date(Date.now() - 60_000));
    await write(writerB, "b-early"); // B read this on another device before A's cursor was handed out
    await write(writerA, "a-1");
    const cursorA = await cursorNow(writerA); // A's cursor, stored under the device: past b-early's transaction
    await observer.sent(1); // b-early's broadcast: it cannot reach a channel joined later

    const changesB: ProgressChange[] = [];
    subB = subscribeToProgress(device, b.id, (c) => changesB.push(c), { ...quiet, initialCursor: cursorA });
    assert.equal(subB.cursor, cursorA, "it starts from the cursor it was given");
    await live("B's subscription", subB);
    assert.ok(
      has(changesB, "upsert", "b-early"),
      `B's progress written before A's cursor ${cursorA} delivered (was: skipped, the cursor taken as B's)`,
    );
    assert.ok(changesB.every((c) => c.source !== "realtime"), "read, not broadcast");
    assert.ok(userTagOf(cursorA), `A's cursor names its user: ${cursorA}`);
    assert.ok(
      userTagOf(subB.cursor) && userTagOf(subB.cursor) !== userTagOf(cursorA),
      `B's cursor names B, not A: ${subB.cursor}`,
    );
    for (const [series, row] of await serverState(sql, b.id)) {
      assert.ok(
        changesB.some((c) =>
          c.kind === "upsert" && c.row.series_id === series && c.row.change_xid === row.change_xid
        ),
        `${series} of B delivered`,
      );
    }
  } finally {
    await subB?.unsubscribe();
    await closeClient(device);
    await closeClient(writerA);
    await closeClient(writerB);
    await observer.close();
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime cursor: a read the API started over from the beginning (reader B's subscription given reader A's cursor) logs cursor_started_over (warn) with the cursor sent, for the link's read and a subscription's own; B's own cursor logs none",
  ...noSanitize,
}, async () => {
  const a = await createTestUser();
  const b = await createTestUser();
  const writerA = clientWithToken(() => a.accessToken);
  const writerB = clientWithToken(() => b.accessToken);
  const devices: SupabaseClient[] = [];
  const subs: { unsubscribe(): Promise<void> }[] = [];
  /** The app's client, signed in as B, and the JSON lines its service logs. */
  const deviceOfB = () => {
    const device = clientWithToken(() => b.accessToken);
    devices.push(device);
    const lines: Record<string, unknown>[] = [];
    const options = {
      livePollIntervalMs: 0,
      heartbeatReplyTimeoutMs: 0,
      log: (line: string) => lines.push(JSON.parse(line)),
    };
    return { device, lines, options };
  };
  const startedOver = (lines: Record<string, unknown>[]) =>
    lines.filter((line) => line.event === "cursor_started_over");
  try {
    const write = (client: SupabaseClient, series_id: string) =>
      writeAt(client, series_id, 1, new Date(Date.now() - 60_000));
    await write(writerB, "b-early");
    await write(writerA, "a-1");
    const cursorA = await cursorNow(writerA); // A's cursor, stored under the device
    const cursorB = await cursorNow(writerB); // B's own

    // The link's read: B's subscription from A's cursor.
    const first = deviceOfB();
    const subFromA = subscribeToProgress(first.device, b.id, () => {}, {
      ...first.options,
      initialCursor: cursorA,
    });
    subs.push(subFromA);
    await live("B's subscription from A's cursor", subFromA);
    assert.deepEqual(
      startedOver(first.lines).map(({ level, channel, cursor, for: whose }) => ({
        level,
        channel,
        cursor,
        whose,
      })),
      [{ level: "warn", channel: `progress:${b.id}`, cursor: cursorA, whose: undefined }],
      "the catch-up the API read from the beginning is logged once, with the cursor sent (was: nothing)",
    );

    // B's own cursor: no such line. Then a second subscription on that running link, from A's
    // cursor: its own read is logged so, for the subscription.
    const second = deviceOfB();
    const subOwn = subscribeToProgress(second.device, b.id, () => {}, {
      ...second.options,
      initialCursor: cursorB,
    });
    subs.push(subOwn);
    await live("B's subscription from B's own cursor", subOwn);
    assert.equal(await subOwn.syncNow(), "done");
    assert.deepEqual(startedOver(second.lines), [], "B's own cursor is taken: nothing logged");
    const newcomer = subOwn.service.subscribeToProgress(b.id, () => {}, { initialCursor: cursorA });
    subs.push(newcomer);
    await waitFor("the newcomer's own read to the end", () => newcomer.status === "live", GUARD);
    assert.deepEqual(
      startedOver(second.lines).map(({ level, cursor, for: whose }) => ({ level, cursor, whose })),
      [{ level: "warn", cursor: cursorA, whose: "subscription" }],
      "a subscription's own read the API started over is logged for it",
    );
  } finally {
    for (const sub of subs.reverse()) await sub.unsubscribe();
    for (const device of devices) await closeClient(device);
    await closeClient(writerA);
    await closeClient(writerB);
  }
});
