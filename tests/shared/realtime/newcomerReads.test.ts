// A later subscription to a running link from a cursor of its own (a "newcomer") reads the changes after that
// cursor for itself, beside the link's reads and not inside them: the link's reads (a syncNow(), a safety
// read) do not wait for its read, which may hang up to requestTimeoutMs; a failed read of its own is made
// again by itself, with no read of the link; a read of the link that fails meanwhile is made again on the
// polls' backoff, with the safety read off too; and until it has read to the end, the reads it hears (onRead)
// are its own. Its own read refused 401 is made again when a new token comes (or at once when the token
// changed while it was under way), and a syncNow() of its link (the service's, another subscription's) makes
// a read of its own that waits for its retry now. A join or a joined channel's drop cuts its own read off as
// they cut the link's: read again from its cursor in its place, so one that hangs holds its syncNow() no
// longer; after a drop while the link backs off, only once the link's next timer poll (after its backoff) has
// ended, answered or not, or a read of the link is answered, and at its own deadline at the latest (a read of
// the link under way then, once that has ended), which later drops do not put off (and, after failures of its
// own, not before its own retry); a failure of its own then retries no sooner than the link's backoff. After
// a drop of a live link whose failed read nothing reads again, at once, and the link's poll too. Against the
// stand-in client, with changesSince answered by hand or from an in-memory log that answers real cursors
// (changeLog), and the service's waits read off the pending timers (watchTimers) and ended by hand: nothing
// sleeps.

import assert from "node:assert/strict";
import {
  type ChangesPage,
  type ProgressSubscription,
  RealtimeService,
  type RealtimeServiceOptions,
  retryAfterWaitMs,
} from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { type PendingCall, USER, version } from "./handAnsweredService.ts";
import { fireWhenSet, frozenClock, pendingFor, watchTimers } from "./watchTimers.ts";

/** The polls' interval: a behind read's retry, and a first failure's with random() = 0. */
const POLL_MS = 600_000;
/** How long a call may take: never over while a test runs (a read that hangs, hangs). */
const REQUEST_TIMEOUT_MS = 3_000_000;

/** The link's cursor once live; the newcomer's own cursor, older. */
const LINK_CURSOR = "105";
const OWN_CURSOR = "90";

const page = (rows: unknown[], next_cursor: string, has_more = false): ChangesPage => ({
  changes: rows,
  next_cursor,
  has_more,
});

const row = (series: string, chapter: number, xid: string) => ({
  ...version(chapter),
  series_id: series,
  change_xid: xid,
});

/**
 * The user's changes as the progress API keeps them (one row per series, its newest version, at the id
 * of the transaction that wrote it), answering reads as reading_progress_changes does: the rows at or
 * after the cursor's id (`(change_xid, series_id) > (cursor, '')`), in id order, and as the next cursor
 * the horizon, the id of the next transaction (none is left running here), so that a read to the end
 * always answers where every row before it was read, never a cursor before one answered earlier. Ids
 * below LINK_CURSOR went to other users' transactions; the first subscription's catch-up (from "100")
 * reads kept@102 and answers LINK_CURSOR, as before writes.
 */
function changeLog() {
  const rows = [row("kept", 2, "102")];
  let nextXid = Number(LINK_CURSOR);
  return {
    /** A new version of `series` written (the next transaction id): returns it. */
    write(series: string, chapter: number) {
      const written = row(series, chapter, String(nextXid++));
      const at = rows.findIndex((kept) => kept.series_id === series);
      if (at >= 0) rows.splice(at, 1);
      rows.push(written);
      return written;
    },
    /** A read from `cursor` to the end. */
    page(cursor: unknown): ChangesPage {
      const since = Number(cursor ?? 0);
      const after = rows.filter((kept) => Number(kept.change_xid) >= since)
        .sort((a, b) => Number(a.change_xid) - Number(b.change_xid));
      return page(after, String(nextXid));
    },
  };
}

type ChangeLog = ReturnType<typeof changeLog>;

/**
 * A service on the stand-in client, live for a first subscription (its catch-up answered from `log`,
 * changeLog, at LINK_CURSOR), whose later calls are answered by `answer` as they come (a call it does
 * not answer waits in `pending`, answered by hand; `log.page(cursor)` answers as the API would, with
 * real cursors); `cursors` records what each call after the catch-up asked from. No read but the ones a
 * test makes (no join grace, heartbeat watch; the safety read off unless given); the backoff's draws at
 * their floor (random 0).
 */
async function liveLink(
  options: Partial<RealtimeServiceOptions>,
  answer: (cursor: unknown, log: ChangeLog) => ChangesPage | Error | undefined,
) {
  const timers = watchTimers();
  const fake = fakeClient();
  const log = changeLog();
  const cursors: unknown[] = [];
  const pending: (PendingCall & { cursor: unknown })[] = [];
  let live = false;
  const service = new RealtimeService(fake.client, {
    changesSince: (cursor) => {
      if (!live) return new Promise((resolve, reject) => pending.push({ cursor, resolve, reject }));
      cursors.push(cursor);
      const answered = answer(cursor, log);
      if (answered instanceof Error) return Promise.reject(answered);
      if (answered) return Promise.resolve(answered);
      return new Promise((resolve, reject) => pending.push({ cursor, resolve, reject }));
    },
    accessToken: "T1",
    requestTimeoutMs: REQUEST_TIMEOUT_MS,
    joinGraceMs: Infinity,
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    backoff: { initialMs: 60_000, maxMs: 60_000 },
    pollIntervalMs: POLL_MS,
    random: () => 0,
    log: () => {},
    ...options,
  });
  const first = service.subscribeToProgress(USER, () => {}, { initialCursor: "100" });
  const firstReads: string[] = [];
  first.onRead((outcome) => firstReads.push(outcome));
  (await fake.channel(1)).state!("SUBSCRIBED");
  await waitFor("the catch-up", () => pending.length === 1);
  live = true;
  pending.shift()!.resolve(log.page("100"));
  await waitFor("live", () => first.status === "live");
  const end = async () => {
    for (const call of pending) call.resolve(page([], "999"));
    await service.close();
    timers.restore();
  };
  return {
    service,
    timers,
    first,
    firstReads,
    cursors,
    pending,
    log,
    channel: fake.channel,
    heartbeat: fake.heartbeat,
    end,
  };
}

/** The calls of `pending` (liveLink) that asked from `cursor`, answered or not, in the order made. */
const callsFrom = (pending: { cursor: unknown }[], cursor: string) =>
  pending.filter((call) => call.cursor === cursor) as (PendingCall & { cursor: unknown })[];

/**
 * A live link (liveLink) with a newcomer from OWN_CURSOR whose own read failed once (a 503) and whose
 * next own read reads to the end; the link's reads answered at once. Returned once that failure is heard
 * (`reads`, what the newcomer's onRead heard); if it is not, the link is ended before the error goes on.
 */
async function newcomerWhoseOwnReadFailedOnce() {
  let ownReads = 0;
  const link = await liveLink(
    {},
    (cursor, log) =>
      cursor !== OWN_CURSOR
        ? log.page(cursor)
        : ++ownReads === 1
        ? new Error("503 from its own read")
        : page([row("old", 1, "92")], "106"),
  );
  try {
    const newcomer = link.service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    await waitFor("its own read failed", () => reads.length === 1);
    return { ...link, newcomer, reads };
  } catch (error) {
    await link.end();
    throw error;
  }
}

Deno.test("newcomer: while its own read hangs, the first subscription's syncNow() and the scheduled safety read are made and end, not queued behind it", async () => {
  const SAFETY_MS = 3_600_000;
  // The link's reads are answered at once, the newcomer's own read never.
  const { service, timers, first, firstReads, cursors, pending, end } = await liveLink(
    { livePollIntervalMs: SAFETY_MS },
    (cursor, log) => cursor === OWN_CURSOR ? undefined : log.page(cursor),
  );
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    await waitFor("its own read", () => pending.some((call) => call.cursor === OWN_CURSOR));
    const linkReadsBefore = cursors.filter((cursor) => cursor === LINK_CURSOR).length;
    const readsBefore = firstReads.length;

    let synced: string | undefined;
    void first.syncNow().then((outcome) => synced = outcome);
    await waitFor("the first's syncNow(), not behind the read that hangs", () => synced !== undefined);
    assert.equal(synced, "done");

    // The safety read's time comes (its timer ended by hand): it reads and ends too.
    await fireWhenSet(timers, "the safety read", SAFETY_MS);
    await waitFor("the safety read's end", () => firstReads.length === readsBefore + 2);
    assert.deepEqual(firstReads.slice(readsBefore), ["done", "done"]);
    assert.equal(cursors.filter((cursor) => cursor === LINK_CURSOR).length, linkReadsBefore + 2);
    assert.equal(first.status, "live");
    assert.equal(newcomer.status, "connecting", "its own read still under way");
  } finally {
    await end();
  }
});

Deno.test("newcomer: its own read that failed is made again by itself, with no read of the link; the first hears no read", async () => {
  const { timers, firstReads, cursors, end, newcomer, reads } = await newcomerWhoseOwnReadFailedOnce();
  try {
    assert.deepEqual(reads, ["failed"]);
    const before = cursors.length;
    const firstReadsBefore = firstReads.length;

    // Its retry: after the polls' backoff for its first failure (one interval with random 0).
    await fireWhenSet(timers, "its retry", POLL_MS);
    await waitFor("it is live", () => newcomer.status === "live");
    assert.deepEqual(cursors.slice(before), [OWN_CURSOR], "its own read again, and no read of the link");
    assert.deepEqual(reads, ["failed", "done"]);
    assert.deepEqual(firstReads.slice(firstReadsBefore), [], "no read of the link made for it");
  } finally {
    await end();
  }
});

Deno.test("newcomer: with the safety read off, a read of the link that fails while the newcomer's own read is under way is made again after the polls' backoff, with no syncNow()", async () => {
  let failLink = false;
  const { service, timers, first, firstReads, cursors, pending, end } = await liveLink(
    {},
    (cursor) =>
      cursor === OWN_CURSOR ? undefined : failLink ? new Error("503 from the link's read") : page([], "107"),
  );
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    await waitFor("its own read", () => pending.some((call) => call.cursor === OWN_CURSOR));
    const readsBefore = firstReads.length;

    // The app's read of the link fails (its own read still under way).
    failLink = true;
    let synced: string | undefined;
    void first.syncNow().then((outcome) => synced = outcome);
    await waitFor("the first's syncNow()", () => synced !== undefined);
    assert.equal(synced, "failed");

    // Made again after the polls' backoff (one interval for a first failure with random 0), by itself.
    failLink = false;
    const linkReads = cursors.filter((cursor) => cursor !== OWN_CURSOR).length;
    await fireWhenSet(timers, "the failed read's retry", POLL_MS);
    await waitFor("the retry's end", () => firstReads.length === readsBefore + 2);
    assert.deepEqual(firstReads.slice(readsBefore), ["failed", "done"]);
    assert.equal(cursors.filter((cursor) => cursor !== OWN_CURSOR).length, linkReads + 1);
    assert.equal(first.cursor, "107");
    assert.equal(newcomer.status, "connecting", "its own read still under way");
  } finally {
    await end();
  }
});

Deno.test("newcomer: until it has read to the end, onRead hears its own reads only, not the link's reads (done or failed) made meanwhile; then the link's", async () => {
  let failLink = false;
  let ownReads = 0;
  const { service, timers, first, firstReads, pending, end } = await liveLink(
    {},
    (cursor, log) =>
      cursor === OWN_CURSOR
        // The first answered by hand (behind: a long transaction holds its cursor), the next to the end.
        ? (++ownReads === 1 ? undefined : page([row("old", 1, "92")], "106"))
        : failLink
        ? new Error("503 from the link's read")
        : log.page(cursor),
  );
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    await waitFor("its own read", () => callsFrom(pending, OWN_CURSOR).length === 1);

    // The link's reads while its own is under way (a syncNow() of the first makes no read for an own
    // read in flight: its own read is not waiting for a retry).
    failLink = true;
    assert.equal(await first.syncNow(), "failed");
    failLink = false;
    assert.equal(await first.syncNow(), "done");
    assert.deepEqual(firstReads.slice(-2), ["failed", "done"]);
    assert.deepEqual(reads, [], "the link's reads are not its own");

    callsFrom(pending, OWN_CURSOR)[0].resolve(page([], OWN_CURSOR, true));
    await waitFor("its own read answered behind", () => reads.length === 1);
    assert.deepEqual(reads, ["behind"]);

    // Its own read again (pollIntervalMs after "behind"), to the end: heard, and it follows the link.
    await fireWhenSet(timers, "its read again", POLL_MS);
    await waitFor("it is live", () => newcomer.status === "live");
    assert.deepEqual(reads, ["behind", "done"]);
    assert.equal(await first.syncNow(), "done");
    assert.deepEqual(reads, ["behind", "done", "done"], "the link's read, heard once it follows the link");
  } finally {
    await end();
  }
});

Deno.test("newcomer: its own read refused 401 is made again at once when a new token comes (setAccessToken), not after its backoff; once per token", async () => {
  let ownReads = 0;
  const refused = () => Object.assign(new Error("token_expired"), { status: 401, code: "token_expired" });
  const { service, timers, firstReads, cursors, end } = await liveLink(
    {},
    (cursor, log) =>
      cursor !== OWN_CURSOR
        ? log.page(cursor)
        : ++ownReads <= 2
        ? refused()
        : page([row("old", 1, "92")], "106"),
  );
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    await waitFor("its own read refused", () => reads.length === 1);
    assert.ok(pendingFor(timers, POLL_MS), "its retry after the backoff");
    const firstReadsBefore = firstReads.length;

    await service.setAccessToken("T2");
    await waitFor("its own read with T2", () => reads.length === 2, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed", "failed"], "refused again (T2)");
    // Refused again: the same token set again makes no read; its retry waits (two failures in a row).
    await service.setAccessToken("T2");
    assert.equal(ownReads, 2);
    assert.ok(pendingFor(timers, POLL_MS), "its retry after the backoff (its second step, random 0)");

    await service.setAccessToken("T3");
    await waitFor("it is live", () => newcomer.status === "live", { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed", "failed", "done"]);
    assert.deepEqual(cursors.filter((cursor) => cursor === OWN_CURSOR).length, 3);
    assert.equal(timers.pending().some((ms) => ms >= POLL_MS), false, "no retry left scheduled");
    assert.deepEqual(firstReads.slice(firstReadsBefore), [], "no read of the link made for it");
  } finally {
    await end();
  }
});

Deno.test("newcomer: service.syncNow() makes its own read that waits for its retry now, with the link's", async () => {
  const { service, timers, firstReads, cursors, end, newcomer, reads } =
    await newcomerWhoseOwnReadFailedOnce();
  try {
    assert.ok(pendingFor(timers, POLL_MS), "its retry after the backoff");
    const before = cursors.length;

    const results = await service.syncNow();
    assert.deepEqual(results.map((result) => result.outcome), ["done"]);
    await waitFor("it is live", () => newcomer.status === "live", { timeoutMs: 5_000 });
    // (Then the link's read too, when that ended after its own: it follows the link from then on.)
    assert.deepEqual(reads.slice(0, 2), ["failed", "done"]);
    assert.deepEqual(cursors.slice(before).sort(), [LINK_CURSOR, OWN_CURSOR].sort());
    assert.equal(firstReads.at(-1), "done");
    assert.ok(!pendingFor(timers, POLL_MS), "its retry made now, not left scheduled");
  } finally {
    await end();
  }
});

Deno.test("newcomer: its own read refused 401 for a token replaced while it was under way is made again at once", async () => {
  let ownReads = 0;
  const { service, cursors, pending, end } = await liveLink(
    {},
    (cursor, log) =>
      cursor !== OWN_CURSOR ? log.page(cursor) : ++ownReads === 1
        ? undefined // answered by hand, after the token changed
        : page([row("old", 1, "92")], "106"),
  );
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    await waitFor("its own read", () => pending.some((call) => call.cursor === OWN_CURSOR));
    await service.setAccessToken("T2"); // while its read (sent with T1) is under way: no read now
    assert.equal(ownReads, 1);
    pending.find((call) => call.cursor === OWN_CURSOR)!.reject(
      Object.assign(new Error("token_expired"), { status: 401, code: "token_expired" }),
    );
    await waitFor("it is live", () => newcomer.status === "live", { timeoutMs: 5_000 });
    assert.equal(cursors.filter((cursor) => cursor === OWN_CURSOR).length, 2);
  } finally {
    await end();
  }
});

Deno.test("newcomer: its own read refused with a Retry-After logs it as the link's reads do (retry_after_ms, wait_ms) and is made again after it", async () => {
  const lines: Record<string, unknown>[] = [];
  let ownReads = 0;
  const { service, timers, end } = await liveLink(
    { log: (line) => lines.push(JSON.parse(line)) },
    (cursor, log) =>
      cursor !== OWN_CURSOR
        ? log.page(cursor)
        : ++ownReads === 1
        ? Object.assign(new Error("429"), { details: { retry_after: 120 } })
        : page([row("old", 1, "92")], "106"),
  );
  const clock = frozenClock(); // the Retry-After's end, as the service reads it, comes when moved on
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    await waitFor("its own read failed", () => lines.some((l) => l.event === "catchup_failed"));
    const expected = retryAfterWaitMs(120_000, POLL_MS, () => 0);
    const failed = lines.find((l) => l.event === "catchup_failed")!;
    assert.deepEqual([failed.for, failed.retry_after_ms, failed.wait_ms], [
      "subscription",
      120_000,
      expected,
    ]);
    // Its retry: the polls' backoff (one interval with random 0), longer than the Retry-After's wait.
    await fireWhenSet(timers, "its retry", POLL_MS, clock);
    await waitFor("it is live", () => newcomer.status === "live");
  } finally {
    clock.restore();
    await end();
  }
});

Deno.test("newcomer: a joined channel's drop cuts off its own read that hangs: read again at once from its cursor as its answered pages left it, its syncNow() resolves as that read ends, with the changes written meanwhile; the cut is not heard, the late answer ignored", async () => {
  const lines: Record<string, unknown>[] = [];
  const { service, channel, pending, end } = await liveLink(
    { log: (line) => lines.push(JSON.parse(line)) },
    // Its own read's first page is answered (more to come), its second hangs: so does the read again.
    (cursor, log) =>
      cursor === OWN_CURSOR
        ? page([row("old", 1, "92")], "95", true)
        : cursor === "95"
        ? undefined
        : log.page(cursor),
  );
  try {
    const changes: string[] = [];
    const newcomer = service.subscribeToProgress(
      USER,
      (change) => changes.push(`${change.row.series_id}@${change.row.change_xid}`),
      { initialCursor: OWN_CURSOR },
    );
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    const cursorsHeard: unknown[] = [];
    newcomer.onCursor((cursor) => cursorsHeard.push(cursor));
    await waitFor("its own read's second page", () => callsFrom(pending, "95").length === 1);
    let synced: string | undefined;
    void newcomer.syncNow().then((outcome) => synced = outcome); // waits for its own read, which hangs

    (await channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("its own read made again after the drop", () => callsFrom(pending, "95").length === 2, {
      timeoutMs: 5_000,
    });
    // The call cut off answers late (it would move the cursor to 999): ignored.
    callsFrom(pending, "95")[0].resolve(page([row("late", 9, "99")], "999"));
    // The read again brings what was written after its first page, while its read hung.
    callsFrom(pending, "95")[1].resolve(page([row("meanwhile", 3, "107")], "108"));
    await waitFor("its syncNow(), not held by the read that hangs", () => synced !== undefined, {
      timeoutMs: 5_000,
    });
    assert.equal(synced, "done");
    assert.deepEqual(changes, ["old@92", "meanwhile@107"], "each once, none lost");
    assert.deepEqual(cursorsHeard, ["95", "108"], "its cursor never back");
    assert.equal(newcomer.cursor, "108");
    assert.deepEqual(reads, ["done"], "the cut read is not heard");
    const cut = lines.filter((l) => l.event === "catchup_cut_off");
    assert.deepEqual(
      cut.map((l) => [l.level, l.for, l.reason, l.channel, typeof l.attempt]),
      [["info", "subscription", "the channel dropped", `progress:${USER}`, "number"]],
    );
    assert.ok(!lines.some((l) => l.event === "catchup_failed"), "no failure of the API");
  } finally {
    await end();
  }
});

Deno.test("newcomer: a join cuts off its own read begun before it that hangs (made while the channel was rejoining): read again at once, and its syncNow() resolves as that read ends", async () => {
  const { service, channel, cursors, pending, end } = await liveLink(
    {},
    (cursor, log) => cursor === OWN_CURSOR ? undefined : log.page(cursor),
  );
  try {
    (await channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll the drop starts", () => cursors.length === 1);
    // Joins while the link polls, rejoining: its own read hangs.
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    await waitFor("its own read", () => callsFrom(pending, OWN_CURSOR).length === 1);
    let synced: string | undefined;
    void newcomer.syncNow().then((outcome) => synced = outcome);

    (await channel(2)).state!("SUBSCRIBED"); // the rejoin (its timer runs out by itself)
    await waitFor(
      "its own read made again after the join",
      () => callsFrom(pending, OWN_CURSOR).length === 2,
      {
        timeoutMs: 5_000,
      },
    );
    callsFrom(pending, OWN_CURSOR)[1].resolve(page([row("old", 1, "92")], "106"));
    await waitFor("its syncNow()", () => synced !== undefined, { timeoutMs: 5_000 });
    assert.equal(synced, "done");
    await waitFor("it is live", () => newcomer.status === "live");
    assert.equal(newcomer.cursor, "106");
  } finally {
    await end();
  }
});

Deno.test("newcomer: a drop that cuts off its own read made again after a failure of its own reads again after its backoff, as the poll the drop starts does: its syncNow() resolves failed at once", async () => {
  let ownReads = 0;
  // random 0.5: its backoff's wait (1.5 intervals) is not the interval the link's next poll waits.
  const { service, timers, channel, pending, end } = await liveLink(
    { random: () => 0.5 },
    (cursor, log) =>
      cursor !== OWN_CURSOR
        ? log.page(cursor)
        : ++ownReads === 1
        ? new Error("503 from its own read")
        : ownReads === 2
        ? undefined // hangs
        : page([row("old", 1, "92")], "106"),
  );
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    await waitFor("its own read failed", () => reads.length === 1);
    let synced: string | undefined;
    void newcomer.syncNow().then((outcome) => synced = outcome); // its retry, now: it hangs
    await waitFor("its own read again", () => callsFrom(pending, OWN_CURSOR).length === 1);

    (await channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("its syncNow()", () => synced !== undefined, { timeoutMs: 5_000 });
    assert.equal(synced, "failed");
    assert.equal(ownReads, 2, "not read again at once");
    assert.deepEqual(reads, ["failed"], "the cut read is not heard");
    // The polls' backoff for one failure in a row (1.5 intervals with random 0.5): then read, and heard.
    await fireWhenSet(timers, "its read after the backoff", POLL_MS * 1.5);
    await waitFor("its own read to the end", () => reads.length === 2);
    assert.deepEqual(reads, ["failed", "done"]);
    assert.equal(ownReads, 3);
    assert.equal(newcomer.cursor, "106");
  } finally {
    await end();
  }
});

Deno.test("newcomer: another subscription's syncNow() makes its own read that waits for its retry now, as service.syncNow() does, and resolves with the link's read, not waiting for it", async () => {
  let ownReads = 0;
  const { service, timers, first, firstReads, pending, end } = await liveLink(
    {},
    (cursor, log) =>
      cursor !== OWN_CURSOR
        ? log.page(cursor)
        : ++ownReads === 1
        ? new Error("503 from its own read")
        : undefined, // answered by hand
  );
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    await waitFor("its own read failed", () => reads.length === 1);
    assert.ok(pendingFor(timers, POLL_MS), "its retry after the backoff");
    const firstReadsBefore = firstReads.length;

    // Back in the foreground, said through the first subscription: its read, and the newcomer's now.
    assert.equal(await first.syncNow(), "done", "the link's read, while the newcomer's own hangs");
    assert.deepEqual(firstReads.slice(firstReadsBefore), ["done"]);
    await waitFor("its own read made now", () => callsFrom(pending, OWN_CURSOR).length === 1, {
      timeoutMs: 5_000,
    });
    assert.ok(!pendingFor(timers, POLL_MS), "its retry made now, not left scheduled");
    callsFrom(pending, OWN_CURSOR)[0].resolve(page([row("old", 1, "92")], "106"));
    await waitFor("it is live", () => newcomer.status === "live");
    assert.deepEqual(reads, ["failed", "done"]);
  } finally {
    await end();
  }
});

/**
 * A live link (liveLink) with a newcomer whose own read was refused 401 (sent with T1), then made again
 * by its syncNow() and hanging, its syncNow() waiting; its third own read reads to the end.
 */
async function newcomerRefusedThenHanging() {
  let ownReads = 0;
  const refused = () => Object.assign(new Error("token_expired"), { status: 401, code: "token_expired" });
  const link = await liveLink(
    {},
    (cursor, log) => {
      if (cursor !== OWN_CURSOR) return log.page(cursor);
      ownReads++;
      return ownReads === 1
        ? refused()
        : ownReads === 2
        ? undefined /* hangs */
        : page([row("old", 1, "92")], "106");
    },
  );
  try {
    const newcomer = link.service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    await waitFor("its own read refused", () => reads.length === 1);
    let synced: string | undefined;
    void newcomer.syncNow().then((outcome) => synced = outcome); // its retry, now (sent with T1): it hangs
    await waitFor("its own read again", () => callsFrom(link.pending, OWN_CURSOR).length === 1);
    return { ...link, newcomer, reads, ownReads: () => ownReads, synced: () => synced };
  } catch (error) {
    await link.end();
    throw error;
  }
}

Deno.test("newcomer: its own read refused 401, made again and cut off by a drop (its retry after the backoff), is made at once when a new token comes after the drop, as the link's read is", async () => {
  const { service, channel, end, reads, ownReads, synced } = await newcomerRefusedThenHanging();
  try {
    (await channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("its syncNow()", () => synced() !== undefined, { timeoutMs: 5_000 });
    assert.equal(synced(), "failed", "its read again waits for its backoff");
    assert.equal(ownReads(), 2);

    // The refusal it was last answered was for T1: a new token reads now, not after the backoff.
    await service.setAccessToken("T2");
    await waitFor("its own read with the new token", () => ownReads() === 3, { timeoutMs: 5_000 });
    await waitFor("its own read to the end", () => reads.includes("done"));
    // (Then the link's reads too, once it follows the link: the poll the drop started.)
    assert.deepEqual(reads.slice(0, 2), ["failed", "done"], "the cut read is not heard");
  } finally {
    await end();
  }
});

Deno.test("newcomer: its own read refused 401, made again and cut off by a drop after a new token came while it hung, is made at once with that token, as the link's read is, and its syncNow() resolves as that read ends", async () => {
  const { service, channel, end, reads, ownReads, synced } = await newcomerRefusedThenHanging();
  try {
    await service.setAccessToken("T2"); // while its read (sent with T1) hangs: no read now
    assert.equal(ownReads(), 2);
    (await channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("its syncNow()", () => synced() !== undefined, { timeoutMs: 5_000 });
    assert.equal(ownReads(), 3, "its own read with the new token, made at once");
    // The read in place of the one cut off is made at once: its syncNow() resolves as it ends, as one a
    // drop cut off while the API was answering does (not "failed", as when that read waits).
    assert.equal(synced(), "done", "resolved as the read made at once in its place");
    await waitFor("its own read to the end", () => reads.includes("done"));
    // (Then the link's reads too, once it follows the link: the poll the drop started.)
    assert.deepEqual(reads.slice(0, 2), ["failed", "done"], "the cut read is not heard");
  } finally {
    await end();
  }
});

/**
 * A live link (liveLink, its reads answered from its changeLog) whose last read failed (a 503 to the
 * first's syncNow(): the link backs off, its next poll one interval away with random 0), and a
 * newcomer from OWN_CURSOR with no failure of its own whose own read hangs when the channel drops,
 * its syncNow() waiting for it. Until `answerLink()` is called the link's reads fail; then they wait
 * to be answered by hand. A newcomer's own read after the first is answered from the log, or fails
 * once `failOwnReads()` was called. `options` go to the service (liveLink). With `ownFailures` 1, its
 * first own read fails (a 503, heard): the one that hangs at the drop is the read the first's syncNow()
 * makes in place of its retry, its subscription with a failure of its own. `linkError`: how the link's
 * reads fail (a 503 of the API by default).
 */
async function newcomerCutWhileLinkBacksOff(
  options: Partial<RealtimeServiceOptions> = {},
  ownFailures = 0,
  linkError: () => Error = () => new Error("503 from the link's read"),
) {
  let failLink = true;
  let failOwn = false;
  let ownReads = 0;
  const lines: Record<string, unknown>[] = [];
  const link = await liveLink(
    { log: (line) => lines.push(JSON.parse(line)), ...options },
    (cursor, log) =>
      cursor === OWN_CURSOR
        // The first `ownFailures` fail, the next hangs; those after it fail while failOwnReads() says so.
        ? (++ownReads <= ownFailures
          ? new Error("503 from its own read")
          : ownReads === ownFailures + 1
          ? undefined
          : failOwn
          ? new Error("503 from its own read")
          : log.page(cursor))
        : failLink
        ? linkError()
        : undefined, // answered by hand
  );
  try {
    const changes: string[] = [];
    const newcomer = link.service.subscribeToProgress(
      USER,
      (change) => changes.push(`${change.row.series_id}@${change.row.change_xid}`),
      { initialCursor: OWN_CURSOR },
    );
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    const cursorsHeard: unknown[] = [];
    newcomer.onCursor((cursor) => cursorsHeard.push(cursor));
    await waitFor("its own read", () => ownReads === 1 && reads.length === ownFailures);
    // After failures of its own, its read in place of its retry is made now (and hangs).
    assert.equal(await link.first.syncNow(), "failed", "the link's read fails: it backs off");
    let synced: string | undefined;
    void newcomer.syncNow().then((outcome) => synced = outcome); // the link's read fails, its own hangs
    await waitFor(
      "the link's read failed",
      () => lines.filter((l) => l.event === "poll_failed").length === 2,
    );
    await waitFor("its own read that hangs", () => ownReads === ownFailures + 1);

    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("its syncNow()", () => synced !== undefined, { timeoutMs: 5_000 });
    return {
      ...link,
      newcomer,
      changes,
      reads,
      cursorsHeard,
      lines,
      ownReads: () => ownReads,
      synced: () => synced,
      answerLink: () => (failLink = false),
      failOwnReads: () => (failOwn = true),
    };
  } catch (error) {
    await link.end();
    throw error;
  }
}

Deno.test("newcomer: a drop while the link backs off cuts off its own read (no failure of its own): not read again at once against the failing API, its syncNow() resolving failed at once, but once the link's timer poll after its backoff has ended (answered here), from its cursor; no change missed, no cursor back", async () => {
  const link = await newcomerCutWhileLinkBacksOff();
  const { timers, first, pending, log, newcomer, changes, reads, cursorsHeard, lines } = link;
  try {
    assert.equal(link.synced(), "failed", "not held for the link's backoff");
    assert.equal(link.ownReads(), 1, "no own read again at the drop, the link's last read having failed");
    assert.deepEqual(reads, [], "the cut read is not heard");
    const meanwhile = log.write("meanwhile", 3); // written while the link backs off: at 105

    // The poll the drop started, after the link's backoff (one interval for a failure with random 0).
    link.answerLink();
    await fireWhenSet(timers, "the link's poll after its backoff", POLL_MS);
    await waitFor("the link's poll", () => pending.some((call) => call.cursor === LINK_CURSOR));
    assert.equal(link.ownReads(), 1, "not before the link's poll has ended");
    const poll = pending.find((call) => call.cursor === LINK_CURSOR)!;
    poll.resolve(log.page(poll.cursor));
    await waitFor("its own read to the end", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    // The link brought the change written meanwhile first (the newcomer is handed the link's changes),
    // its own read from its cursor the older row; each once.
    assert.deepEqual(changes, [`meanwhile@${meanwhile.change_xid}`, "kept@102"]);
    assert.equal(first.cursor, "106", "the link's read to the end answered the horizon");
    assert.deepEqual(cursorsHeard, ["106"]);
    assert.equal(newcomer.cursor, "106");

    // It follows the link now: the link's next read to the end moves its cursor on, never back.
    log.write("later", 4);
    const sync = first.syncNow();
    await waitFor("the link's read", () => pending.some((call) => call.cursor === "106"));
    const read = pending.find((call) => call.cursor === "106")!;
    read.resolve(log.page(read.cursor));
    assert.equal(await sync, "done");
    assert.deepEqual(changes, [`meanwhile@${meanwhile.change_xid}`, "kept@102", "later@106"]);
    assert.deepEqual(cursorsHeard, ["106", "107"]);
    assert.equal(newcomer.cursor, "107");
    assert.deepEqual(
      lines.filter((l) => l.for === "subscription" && /^catchup_(failed|cut_off)$/.test(String(l.event)))
        .map((l) => [l.event, l.reason]),
      [["catchup_cut_off", "the channel dropped"]],
    );
  } finally {
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read: the catch-up of the rejoin, answered, reads it", async () => {
  const link = await newcomerCutWhileLinkBacksOff();
  const { channel, pending, log, newcomer, reads } = link;
  try {
    assert.equal(link.synced(), "failed");
    // The link's return: the rejoin (its timer runs out by itself), and its catch-up answered.
    link.answerLink();
    (await channel(2)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => pending.some((call) => call.cursor === LINK_CURSOR));
    assert.equal(link.ownReads(), 1, "not before the catch-up is answered");
    const catchUp = pending.find((call) => call.cursor === LINK_CURSOR)!;
    catchUp.resolve(log.page(catchUp.cursor));
    await waitFor("it is live", () => newcomer.status === "live", { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    assert.equal(newcomer.cursor, LINK_CURSOR);
  } finally {
    await link.end();
  }
});

/** A failure of the link's alone: the API refuses the link's cursor (its own reads are answered). */
const refusedLinkCursor = () =>
  Object.assign(new Error("400 from the link's read: its cursor"), { status: 400, code: "invalid_cursor" });

Deno.test("newcomer: a drop while the link backs off cuts off its own read, the link's failure its own (400 for its cursor) and lasting: the rejoin's catch-up that fails keeps it waiting (made at once, not after the backoff); the link's poll after its backoff, failing again, reads it", async () => {
  const link = await newcomerCutWhileLinkBacksOff({}, 0, refusedLinkCursor);
  const { timers, first, channel, log, newcomer, changes, reads, lines } = link;
  try {
    assert.equal(link.synced(), "failed");
    assert.equal(link.ownReads(), 1);
    const meanwhile = log.write("meanwhile", 3);

    // The rejoin: its catch-up, made at once, is refused too. No read of its own then.
    (await channel(2)).state!("SUBSCRIBED");
    await waitFor("the catch-up refused", () => lines.some((l) => l.event === "catchup_failed" && !l.for));
    // The link polls again after its backoff (three failures, cap two intervals, random 0: one interval).
    await waitFor("the link's poll scheduled", () => pendingFor(timers, POLL_MS));
    assert.equal(link.ownReads(), 1, "not at a read the link made at once against a failing API");

    // That poll is refused again: the link reads at its backoff's pace, and its own read comes with it
    // (the link's failure may be the link's alone, as here: nothing else would ever read it).
    await fireWhenSet(timers, "the link's poll after its backoff", POLL_MS);
    await waitFor("its own read after the link's poll", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    // Its own read brought both, in the order of the log (the link brought nothing).
    assert.deepEqual(changes, ["kept@102", `meanwhile@${meanwhile.change_xid}`]);
    assert.equal(newcomer.cursor, "106", "its own read to the horizon");
    assert.equal(first.status, "offline", "the link still refused");
    assert.ok(!lines.some((l) => l.event === "catchup_failed" && l.for === "subscription"));
  } finally {
    await link.end();
  }
});

// A Retry-After running at the rejoin puts the catch-up off to its end (made then by a timer, as soon as the
// API lets it): still the rejoin's catch-up, not the link's poll after its backoff, which it replaces.
Deno.test("newcomer: a drop while the link backs off and a Retry-After runs cuts off its own read: the rejoin's catch-up, put off to the Retry-After's end and failing, keeps it waiting (before the link's backoff); the link's poll after its backoff reads it", async () => {
  const clock = frozenClock(); // the Retry-After's end, as the service reads it, comes when moved on
  let linkCalls = 0;
  // The link's second read (the newcomer's syncNow()'s) is refused with a Retry-After (two minutes, its
  // wait with random 0), shorter than the link's backoff (one interval); the others with a plain 503.
  const link = await newcomerCutWhileLinkBacksOff(
    {},
    0,
    () =>
      ++linkCalls === 2
        ? Object.assign(new Error("503 from the link's read"), { details: { retry_after: 120 } })
        : new Error("503 from the link's read"),
  );
  const { timers, channel, newcomer, reads, lines } = link;
  const retryAfterMs = retryAfterWaitMs(120_000, POLL_MS, () => 0);
  const linkFailures = () => lines.filter((l) => /^(poll|catchup)_failed$/.test(String(l.event)) && !l.for);
  try {
    assert.equal(link.synced(), "failed");
    assert.equal(link.ownReads(), 1);

    // The rejoin while the Retry-After runs: its catch-up waits for that wait's end, and is refused then.
    (await channel(2)).state!("SUBSCRIBED");
    await fireWhenSet(timers, "the catch-up at the Retry-After's end", retryAfterMs, clock);
    await waitFor("the catch-up refused", () => linkFailures().length === 3);
    await waitFor("the link's poll after its backoff scheduled", () => pendingFor(timers, POLL_MS));
    assert.equal(link.ownReads(), 1, "not at the rejoin's catch-up, before the link's backoff has run");
    assert.deepEqual(reads, []);

    // The link's poll after its backoff, refused again: its own read comes with it.
    await fireWhenSet(timers, "the link's poll after its backoff", POLL_MS, clock);
    await waitFor("its own read after the link's poll", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    assert.equal(linkFailures().length, 4);
    assert.equal(newcomer.cursor, "105", "its own read to the horizon");
  } finally {
    clock.restore();
    await link.end();
  }
});

/**
 * How long an own read a drop cut off while the link backed off waits for the link's read at most,
 * counted from the cut: the wait of the link's poll the drop starts (one interval: the backoff's cap at
 * two, random 0) and one call's longest (requestTimeoutMs), when that poll would have ended.
 */
const DEADLINE_MS = POLL_MS + REQUEST_TIMEOUT_MS;

// A channel that drops sooner than the link's poll after its backoff puts that poll off at every drop (the
// poll the drop starts replaces it), and the rejoin's catch-up in between is made at once and refused as
// the link's reads are: the link's next timer poll never comes. The own read's wait has its own end.
Deno.test("newcomer: a drop while the link backs off cuts off its own read, the link refused for good (400 for its cursor) and its channel dropping again before each poll after its backoff: read at its own deadline, counted from the cut, not held until a syncNow()", async () => {
  const clock = frozenClock(); // its deadline, as the service reads it, comes when moved on
  const link = await newcomerCutWhileLinkBacksOff({}, 0, refusedLinkCursor);
  const { timers, first, channel, log, newcomer, changes, reads, lines } = link;
  const count = (event: string) => lines.filter((l) => l.event === event && !l.for).length;
  try {
    assert.equal(link.ownReads(), 1);
    assert.equal(count("poll_failed"), 2, "the syncNow()s' reads of the link");
    const meanwhile = log.write("meanwhile", 3);
    // Twice: the rejoin, its catch-up refused, the link's poll after its backoff scheduled, and the
    // channel drops again before that poll's time (which the drop schedules again).
    for (const n of [2, 3]) {
      (await channel(n)).state!("SUBSCRIBED");
      await waitFor(`catch-up ${n - 1} refused`, () => count("catchup_failed") === n - 1);
      await waitFor("the link's poll after its backoff scheduled", () => pendingFor(timers, POLL_MS));
      (await channel(n)).state!("CHANNEL_ERROR", new Error("socket closed"));
      await waitFor(`drop ${n}`, () => count("realtime_unavailable") === n);
    }
    assert.equal(link.ownReads(), 1, "no read of its own at the refused catch-ups");
    assert.equal(count("poll_failed"), 2, "the link's poll after its backoff never came");
    assert.ok(
      pendingFor(timers, DEADLINE_MS),
      `its wait for the link's read has an end: ${timers.pending()}`,
    );

    await fireWhenSet(timers, "its deadline", DEADLINE_MS, clock);
    await waitFor("its own read at its deadline", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    assert.deepEqual(changes, ["kept@102", `meanwhile@${meanwhile.change_xid}`]);
    assert.equal(newcomer.cursor, "106", "its own read to the horizon");
    assert.notEqual(first.status, "live", "the link still refused");
    assert.ok(!pendingFor(timers, DEADLINE_MS), "its deadline's timer gone with it");
  } finally {
    clock.restore();
    await link.end();
  }
});

// With a failure of its own, its one timer first waits for its own retry: when that ends before the link
// has read (the link's poll put off at every drop, the catch-ups between refused), the same timer then
// waits for the deadline, counted from the cut, not for the link's read alone.
Deno.test("newcomer: a drop while the link backs off cuts off its own read after a failure of its own, the link refused for good (400 for its cursor) and its channel dropping again before each poll after its backoff: its own retry ends first, then it is read at its deadline, counted from the cut", async () => {
  const clock = frozenClock(); // its retry's end and its deadline, as the service reads them, when moved on
  const link = await newcomerCutWhileLinkBacksOff(LINK_BACKS_OFF_LONGER, 1, refusedLinkCursor);
  const { timers, channel, log, newcomer, changes, reads, lines } = link;
  const count = (event: string) => lines.filter((l) => l.event === event && !l.for).length;
  // The link's poll after its backoff waits two intervals (LINK_BACKS_OFF_LONGER), and so its deadline
  // that and one call's longest from the cut; its own retry one interval.
  const deadlineMs = 2 * POLL_MS + REQUEST_TIMEOUT_MS;
  try {
    assert.equal(link.ownReads(), 2);
    const meanwhile = log.write("meanwhile", 3);
    for (const n of [2, 3]) {
      (await channel(n)).state!("SUBSCRIBED");
      await waitFor(`catch-up ${n - 1} refused`, () => count("catchup_failed") === n - 1);
      await waitFor("the link's poll after its backoff scheduled", () => pendingFor(timers, 2 * POLL_MS));
      (await channel(n)).state!("CHANNEL_ERROR", new Error("socket closed"));
      await waitFor(`drop ${n}`, () => count("realtime_unavailable") === n);
    }
    assert.equal(count("poll_failed"), 2, "the link's poll after its backoff never came");

    // Its own retry ends: the link has not read, so its timer waits for the rest of its deadline.
    await fireWhenSet(timers, "its own retry after its backoff", POLL_MS, clock);
    assert.equal(link.ownReads(), 2, "not read against the API failing the link");
    await waitFor(
      "its deadline, after its own retry",
      () => pendingFor(timers, deadlineMs - POLL_MS),
      { timeoutMs: 5_000 },
    ).catch(() => assert.fail(`its wait for the link's read has an end: ${timers.pending()}`));

    await fireWhenSet(timers, "its deadline", deadlineMs - POLL_MS, clock);
    await waitFor("its own read at its deadline", () => reads.length === 2, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed", "done"]);
    assert.equal(link.ownReads(), 3);
    assert.deepEqual(changes, ["kept@102", `meanwhile@${meanwhile.change_xid}`]);
    assert.equal(newcomer.cursor, "106", "its own read to the horizon");
    assert.ok(!pendingFor(timers, deadlineMs - POLL_MS), "its deadline's timer gone with it");
  } finally {
    clock.restore();
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read: its wait for the link's read has its own deadline, its one timer, cleared at its unsubscribe", async () => {
  const clock = frozenClock(); // the deadline's timer for DEADLINE_MS exactly
  const link = await newcomerCutWhileLinkBacksOff();
  const { timers, newcomer } = link;
  try {
    await waitFor("its deadline", () => pendingFor(timers, DEADLINE_MS), { timeoutMs: 5_000 });
    const before = timers.pending().length;
    await newcomer.unsubscribe();
    assert.ok(!pendingFor(timers, DEADLINE_MS), `its deadline's timer cleared: ${timers.pending()}`);
    assert.equal(timers.pending().length, before - 1, "that timer alone");
    assert.ok(pendingFor(timers, POLL_MS), "the link's poll after its backoff, for the first, kept");
  } finally {
    clock.restore();
    await link.end();
  }
});

// The deadline counts one call's longest for the link's poll, but a poll reads up to 1000 pages, each call
// with its own timeout, and a read of the link may be under way when it comes (the poll's later pages, the
// rejoin's catch-up): the own read is read once that read has ended, however it ends, not beside it, while
// it has not yet told whether the API answers.
Deno.test("newcomer: a drop while the link backs off cuts off its own read: its deadline coming while the link's poll after its backoff still reads (its second page under way) reads it once that poll has ended, not beside it", async () => {
  const clock = frozenClock(); // its deadline, as the service reads it, comes when moved on
  const link = await newcomerCutWhileLinkBacksOff();
  const { timers, pending, log, newcomer, reads } = link;
  try {
    assert.equal(link.ownReads(), 1);
    const meanwhile = log.write("meanwhile", 3); // at 105
    log.write("later", 4); // at 106
    link.answerLink();
    await fireWhenSet(timers, "the link's poll after its backoff", POLL_MS, clock);
    await waitFor("the poll's first page", () => callsFrom(pending, LINK_CURSOR).length === 1);
    // Its first page answered with more to come: the poll reads on, its second call under way.
    callsFrom(pending, LINK_CURSOR)[0].resolve(page([meanwhile], "106", true));
    await waitFor("the poll's second page", () => callsFrom(pending, "106").length === 1);
    assert.ok(pendingFor(timers, DEADLINE_MS), `its deadline pending: ${timers.pending()}`);

    // Its deadline (one call's longest after that poll's time) comes while the poll still reads.
    clock.advance(REQUEST_TIMEOUT_MS);
    timers.fire(DEADLINE_MS);
    assert.equal(link.ownReads(), 1, "not while the link's poll is still reading");

    // That page answered: the poll has ended, and its own read is made, once.
    const second = callsFrom(pending, "106")[0];
    second.resolve(log.page(second.cursor));
    await waitFor("its own read to the end", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    assert.equal(newcomer.cursor, "107", "its own read to the horizon");
    assert.ok(!pendingFor(timers, DEADLINE_MS), "no deadline left");
  } finally {
    clock.restore();
    await link.end();
  }
});

// The read under way at its deadline may be cut off by the channel's join, and the catch-up the join makes
// at once then reads in its place: the own read waits for that catch-up too, not only for the rounds queued
// when its deadline came.
Deno.test("newcomer: a drop while the link backs off cuts off its own read: its deadline coming while the link's poll still reads, that poll then cut off by the rejoin, reads it once the rejoin's catch-up has ended (refused here), not beside it", async () => {
  const clock = frozenClock(); // its deadline, as the service reads it, comes when moved on
  const link = await newcomerCutWhileLinkBacksOff();
  const { timers, channel, pending, log, newcomer, reads, lines } = link;
  try {
    assert.equal(link.ownReads(), 1);
    const meanwhile = log.write("meanwhile", 3); // at 105
    log.write("later", 4); // at 106
    link.answerLink(); // the link's reads answered by hand from here
    await fireWhenSet(timers, "the link's poll after its backoff", POLL_MS, clock);
    await waitFor("the poll's first page", () => callsFrom(pending, LINK_CURSOR).length === 1);
    callsFrom(pending, LINK_CURSOR)[0].resolve(page([meanwhile], "106", true));
    await waitFor("the poll's second page", () => callsFrom(pending, "106").length === 1);

    // Its deadline comes while the poll still reads; then the channel joins, which cuts that poll off,
    // and the join's catch-up reads in its place (from 106, where the poll's first page left the cursor).
    clock.advance(REQUEST_TIMEOUT_MS);
    timers.fire(DEADLINE_MS);
    assert.equal(link.ownReads(), 1, "not while the link's poll is still reading");
    (await channel(2)).state!("SUBSCRIBED");
    await waitFor("the rejoin's catch-up", () => callsFrom(pending, "106").length === 2);
    await waitFor("the poll cut off", () => lines.some((l) => l.event === "poll_cut_off"));
    assert.equal(link.ownReads(), 1, "not while the rejoin's catch-up is under way");

    // The catch-up refused: a read the link made at once, which releases nothing by itself; its deadline
    // having come, it is read now, and to the end.
    callsFrom(pending, "106")[1].reject(new Error("503 from the link's read"));
    await waitFor("the catch-up refused", () => lines.some((l) => l.event === "catchup_failed" && !l.for));
    await waitFor("its own read once the catch-up has ended", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    assert.equal(newcomer.cursor, "107", "its own read to the horizon");
    assert.ok(!pendingFor(timers, DEADLINE_MS), "no deadline left");
  } finally {
    clock.restore();
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read: its deadline coming while the rejoin's catch-up (made at once) is under way reads it once that catch-up has ended, refused (400 for its cursor) here, not beside it, and not held for good", async () => {
  const clock = frozenClock(); // its deadline, as the service reads it, comes when moved on
  const link = await newcomerCutWhileLinkBacksOff({}, 0, refusedLinkCursor);
  const { timers, channel, pending, newcomer, reads, lines } = link;
  try {
    assert.equal(link.ownReads(), 1);
    link.answerLink(); // the link's reads answered by hand from here
    (await channel(2)).state!("SUBSCRIBED");
    await waitFor("the rejoin's catch-up", () => callsFrom(pending, LINK_CURSOR).length === 1);

    clock.advance(DEADLINE_MS);
    timers.fire(DEADLINE_MS);
    assert.equal(link.ownReads(), 1, "not while the link's catch-up is under way");

    // The catch-up refused: a read the link made at once, which does not release it by itself
    // (#readOwnAfterLinkRead); its deadline having come, it is read now.
    callsFrom(pending, LINK_CURSOR)[0].reject(refusedLinkCursor());
    await waitFor("the catch-up refused", () => lines.some((l) => l.event === "catchup_failed" && !l.for));
    await waitFor("its own read once the catch-up has ended", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    assert.equal(newcomer.cursor, LINK_CURSOR, "its own read to the horizon");
  } finally {
    clock.restore();
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read: another subscription's syncNow() reads it now, as it reads the link now", async () => {
  const link = await newcomerCutWhileLinkBacksOff();
  const { first, newcomer, reads } = link;
  try {
    assert.equal(link.ownReads(), 1);
    // Back in the foreground, said through the first subscription: the link's read fails again, the
    // newcomer's own read is made now all the same (the app's word that conditions changed).
    assert.equal(await first.syncNow(), "failed");
    await waitFor("its own read made now", () => reads.includes("done"), { timeoutMs: 5_000 });
    assert.equal(link.ownReads(), 2, "its own read made now");
    // Its own read first; then, following the link, the link's read that failed.
    assert.deepEqual(reads, ["done", "failed"]);
    assert.equal(newcomer.cursor, LINK_CURSOR);
  } finally {
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read: the link's timer poll after its backoff, answered behind (a long transaction holds its cursor), reads it at its end", async () => {
  const link = await newcomerCutWhileLinkBacksOff();
  const { timers, pending, reads } = link;
  try {
    assert.equal(link.ownReads(), 1);
    link.answerLink();
    await fireWhenSet(timers, "the link's poll after its backoff", POLL_MS);
    await waitFor("the link's poll", () => callsFrom(pending, LINK_CURSOR).length === 1);
    assert.equal(link.ownReads(), 1, "not before the link's poll has ended");
    callsFrom(pending, LINK_CURSOR)[0].resolve(page([], LINK_CURSOR, true)); // more, at the same cursor
    await waitFor("its own read to the end", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
  } finally {
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read: read once the link's timer poll is answered, and when that read fails (the link answering: not backing off), made again after its own backoff, not at the link's next poll", async () => {
  // random 0.5: the poll after the drop (two failures of the link's) and its retry (one of its own)
  // wait 1.5 intervals, the link's polls after an answer one.
  const link = await newcomerCutWhileLinkBacksOff({ random: () => 0.5 });
  const { timers, pending, log, reads } = link;
  try {
    assert.equal(link.ownReads(), 1);
    link.failOwnReads();
    link.answerLink();
    await fireWhenSet(timers, "the link's poll after its backoff", POLL_MS * 1.5);
    await waitFor("the link's poll", () => callsFrom(pending, LINK_CURSOR).length === 1);
    callsFrom(pending, LINK_CURSOR)[0].resolve(log.page(LINK_CURSOR));
    await waitFor("its own read, failed", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed"]);
    assert.equal(link.ownReads(), 2);
    await waitFor("its retry after its own backoff", () => pendingFor(timers, POLL_MS * 1.5));

    // The link's next poll, answered: no read of its own then (its wait for the link's read is over).
    await fireWhenSet(timers, "the link's next poll", POLL_MS);
    await waitFor("the link's next poll", () => callsFrom(pending, LINK_CURSOR).length === 2);
    callsFrom(pending, LINK_CURSOR)[1].resolve(log.page(LINK_CURSOR));
    await waitFor("the link's poll after it", () => pendingFor(timers, POLL_MS));
    assert.equal(link.ownReads(), 2, "its own read waits for its own retry");
    assert.deepEqual(reads, ["failed"]);
    assert.ok(pendingFor(timers, POLL_MS * 1.5), "its retry still pending");
  } finally {
    await link.end();
  }
});

/**
 * The backoff's cap at four intervals, random 0: the newcomer's retry after one failure of its own waits
 * one interval (POLL_MS), the link's poll after two failures of the link's two (2 * POLL_MS), longer.
 */
const LINK_BACKS_OFF_LONGER: Partial<RealtimeServiceOptions> = {
  backoff: { initialMs: 60_000, maxMs: 4 * POLL_MS },
};

Deno.test("newcomer: a drop while the link backs off cuts off its own read after a failure of its own: not read at the end of its own shorter backoff against the API failing the link, but once the link's timer poll after its longer backoff has ended (answered here); no change missed, no cursor back", async () => {
  const link = await newcomerCutWhileLinkBacksOff(LINK_BACKS_OFF_LONGER, 1);
  const { timers, pending, log, newcomer, changes, reads, cursorsHeard } = link;
  try {
    assert.equal(link.synced(), "failed", "not held for either backoff");
    assert.equal(link.ownReads(), 2);
    assert.deepEqual(reads, ["failed"], "the cut read is not heard");
    const meanwhile = log.write("meanwhile", 3); // written while both back off: at 105

    // Its own backoff ends first: no read of its own then, the link's backoff still running.
    await fireWhenSet(timers, "its own retry after its backoff", POLL_MS);
    assert.equal(link.ownReads(), 2, "not read against the API failing the link");
    assert.ok(!pendingFor(timers, POLL_MS), `no retry of its own pending: ${timers.pending()}`);

    link.answerLink();
    await fireWhenSet(timers, "the link's poll after its backoff", 2 * POLL_MS);
    await waitFor("the link's poll", () => callsFrom(pending, LINK_CURSOR).length === 1);
    assert.equal(link.ownReads(), 2, "not before the link's poll has ended");
    callsFrom(pending, LINK_CURSOR)[0].resolve(log.page(LINK_CURSOR));
    await waitFor("its own read to the end", () => reads.length === 2, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed", "done"]);
    assert.equal(link.ownReads(), 3);
    assert.deepEqual(changes, [`meanwhile@${meanwhile.change_xid}`, "kept@102"]);
    assert.deepEqual(cursorsHeard, ["106"]);
    assert.equal(newcomer.cursor, "106");
  } finally {
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read after a failure of its own, the link's failure its own (400 for its cursor) and lasting: not read at the end of its own shorter backoff, but at the link's poll after its longer backoff, which fails again", async () => {
  const link = await newcomerCutWhileLinkBacksOff(LINK_BACKS_OFF_LONGER, 1, refusedLinkCursor);
  const { timers, first, newcomer, reads, lines } = link;
  try {
    assert.equal(link.ownReads(), 2);
    await fireWhenSet(timers, "its own retry after its backoff", POLL_MS);
    assert.equal(link.ownReads(), 2, "not before the link's backoff has run");

    await fireWhenSet(timers, "the link's poll after its backoff", 2 * POLL_MS);
    await waitFor("its own read after the link's poll", () => reads.length === 2, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed", "done"]);
    assert.equal(link.ownReads(), 3);
    assert.equal(newcomer.cursor, LINK_CURSOR, "its own read to the horizon");
    assert.equal(
      lines.filter((l) => l.event === "poll_failed").length,
      3,
      "the link's poll after its backoff was refused",
    );
    assert.notEqual(first.status, "live");
  } finally {
    await link.end();
  }
});

// Its own count of failures restarts low (none when the drop cut it off), the link's is high: its retry on
// its own backoff alone would read the API failing the link more often than the link reads it.
Deno.test("newcomer: a drop while the link backs off cuts off its own read; read at the link's poll after its longer backoff, refused again (400 for its cursor), and failing itself: its retry waits the link's backoff, not its own shorter one", async () => {
  const link = await newcomerCutWhileLinkBacksOff(LINK_BACKS_OFF_LONGER, 0, refusedLinkCursor);
  const { timers, reads } = link;
  try {
    link.failOwnReads();
    await fireWhenSet(timers, "the link's poll after its backoff", 2 * POLL_MS);
    await waitFor("its own read, failed", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed"]);
    assert.equal(link.ownReads(), 2);
    // Its retry after one failure of its own would wait one interval; the link, refused three times in a
    // row, polls again after two: so does its retry.
    const atLinkBackoff = () => timers.pending().filter((ms) => Math.abs(ms - 2 * POLL_MS) < 1).length;
    await waitFor("its retry scheduled", () => atLinkBackoff() === 2 || pendingFor(timers, POLL_MS));
    assert.ok(!pendingFor(timers, POLL_MS), `its retry not sooner than the link's poll: ${timers.pending()}`);
    assert.equal(atLinkBackoff(), 2, "its retry and the link's poll, after the link's backoff");
  } finally {
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read after a failure of its own: the link answered first (the rejoin's catch-up), it is read at the end of its own backoff, not at that answer", async () => {
  const link = await newcomerCutWhileLinkBacksOff(LINK_BACKS_OFF_LONGER, 1);
  const { timers, first, channel, pending, log, newcomer, reads } = link;
  try {
    assert.equal(link.ownReads(), 2);
    link.answerLink();
    (await channel(2)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => callsFrom(pending, LINK_CURSOR).length === 1);
    callsFrom(pending, LINK_CURSOR)[0].resolve(log.page(LINK_CURSOR));
    await waitFor("the link live again", () => first.status === "live");
    assert.equal(link.ownReads(), 2, "its own read waits for its own retry");
    assert.deepEqual(reads, ["failed"]);

    await fireWhenSet(timers, "its own retry after its backoff", POLL_MS);
    await waitFor("it is live", () => newcomer.status === "live", { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed", "done"]);
    assert.equal(link.ownReads(), 3);
    assert.equal(newcomer.cursor, LINK_CURSOR, "nothing written since: the horizon");
  } finally {
    await link.end();
  }
});

Deno.test("newcomer: a drop while the link backs off cuts off its own read after a failure of its own: its own backoff over, waiting for the link's next timer poll, another subscription's syncNow() reads it now", async () => {
  const link = await newcomerCutWhileLinkBacksOff(LINK_BACKS_OFF_LONGER, 1);
  const { timers, first, newcomer, reads } = link;
  try {
    await fireWhenSet(timers, "its own retry after its backoff", POLL_MS);
    assert.equal(link.ownReads(), 2);
    // The link's read fails again; the newcomer's own read is made now all the same.
    assert.equal(await first.syncNow(), "failed");
    await waitFor("its own read made now", () => reads.includes("done"), { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["failed", "done", "failed"]);
    assert.equal(link.ownReads(), 3);
    assert.equal(newcomer.cursor, LINK_CURSOR);
  } finally {
    await link.end();
  }
});

// The app may unsubscribe from a callback the service calls while a cut own read settles (here its log
// line for the cut): the read is not made again for a subscription that has gone, and no retry is left
// pending for it (the link runs on for the first subscription, so close() clears nothing of it).
Deno.test("newcomer: unsubscribed while a drop's cut of its own read (after a failure of its own) settles: no retry timer left for it", async () => {
  let ownReads = 0;
  let leaving: ProgressSubscription | undefined;
  const { service, timers, channel, pending, end } = await liveLink(
    {
      random: () => 0.5, // its backoff (1.5 intervals) is not the interval of the link's polls
      log: (line) => {
        const entry = JSON.parse(line);
        if (entry.event === "catchup_cut_off" && entry.for === "subscription") void leaving?.unsubscribe();
      },
    },
    (cursor, log) =>
      cursor !== OWN_CURSOR
        ? log.page(cursor)
        : ++ownReads === 1
        ? new Error("503 from its own read")
        : undefined, // hangs
  );
  try {
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    await waitFor("its own read failed", () => reads.length === 1);
    let synced: string | undefined;
    void newcomer.syncNow().then((outcome) => synced = outcome); // its retry, now: it hangs
    await waitFor("its own read again", () => callsFrom(pending, OWN_CURSOR).length === 1);
    leaving = newcomer;

    (await channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("its syncNow(), as the cut read settles", () => synced !== undefined, { timeoutMs: 5_000 });
    assert.equal(newcomer.status, "offline", "unsubscribed");
    assert.equal(synced, "failed");
    assert.ok(!pendingFor(timers, POLL_MS * 1.5), `no retry of its own left pending: ${timers.pending()}`);
    assert.equal(ownReads, 2);
  } finally {
    await end();
  }
});

// A live link's failure count stays up while nothing reads again for it (the safety read off, nothing owed
// to the app): its channel carries the changes, and the failure says nothing of the API since. Such a
// link is not backing off: an own read its drop cuts off is read again at once, as with no failure, and
// the link's poll after the drop is made at once too.

/**
 * A live link (liveLink; its reads answered by hand) whose late heartbeat's read failed after the reply
 * came: nothing reads again for it (the safety read off, nothing owed to the app), its failure count
 * stays at one. A newcomer from OWN_CURSOR whose first own read hangs, and whose next ones read to the end
 * from the log. Returned with that own read under way.
 */
async function newcomerOfLiveLinkWithStaleFailure() {
  let ownReads = 0;
  const lines: Record<string, unknown>[] = [];
  const link = await liveLink(
    { heartbeatReplyTimeoutMs: 10_000, log: (line) => lines.push(JSON.parse(line)) },
    (cursor, log) =>
      cursor !== OWN_CURSOR
        ? undefined // the link's reads: answered by hand
        : ++ownReads === 1
        ? undefined // hangs until the drop
        : log.page(cursor),
  );
  const { service, timers, first, pending, heartbeat } = link;
  try {
    // A heartbeat reply late: the live link reads now; the reply comes while that read is under way,
    // and the read fails. Nothing reads again for it: the safety read is off, nothing is owed to the app.
    heartbeat("sent");
    await fireWhenSet(timers, "the heartbeat reply's timeout", 10_000);
    await waitFor("the late heartbeat's read", () => callsFrom(pending, LINK_CURSOR).length === 1);
    heartbeat("ok");
    callsFrom(pending, LINK_CURSOR)[0].reject(new Error("503 from the link's read"));
    await waitFor("the link's read failed", () => lines.some((l) => l.event === "poll_failed"));
    assert.equal(first.status, "live");
    assert.ok(!pendingFor(timers, POLL_MS), `no read again for it: ${timers.pending()}`);

    // A newcomer whose own read hangs when the channel drops.
    const newcomer = service.subscribeToProgress(USER, () => {}, { initialCursor: OWN_CURSOR });
    const reads: string[] = [];
    newcomer.onRead((outcome) => reads.push(outcome));
    await waitFor("its own read", () => ownReads === 1);
    return { ...link, newcomer, reads, lines, ownReads: () => ownReads };
  } catch (error) {
    await link.end();
    throw error;
  }
}

Deno.test("newcomer: a drop of a live link whose failed read nothing makes again (the safety read off: a late heartbeat's read that failed after the reply came) cuts off its own read: read again at once, not held for the link's next timer poll", async () => {
  const link = await newcomerOfLiveLinkWithStaleFailure();
  const { channel, newcomer, reads } = link;
  try {
    (await channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("its own read again, at once", () => reads.length === 1, { timeoutMs: 5_000 });
    assert.deepEqual(reads, ["done"]);
    assert.equal(link.ownReads(), 2);
    assert.equal(newcomer.cursor, LINK_CURSOR);
    // Made by itself, not waiting for a read of the link: the link's poll after the drop (made at once
    // too: see the next test) is answered by hand, and never here.
  } finally {
    await link.end();
  }
});

Deno.test("newcomer: a drop of a live link whose failed read nothing makes again (the safety read off: a late heartbeat's read that failed after the reply came): the link's poll after the drop is made at once too, as its own read is, not after the backoff for that stale failure", async () => {
  const link = await newcomerOfLiveLinkWithStaleFailure();
  const { timers, first, pending, channel, log, reads } = link;
  try {
    log.write("meanwhile", 3); // written while the channel is down
    (await channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    const linkPolled = () => callsFrom(pending, LINK_CURSOR).length === 2;
    await waitFor("the link's poll after the drop, at once", linkPolled, { timeoutMs: 5_000 });
    assert.ok(!pendingFor(timers, POLL_MS), `no poll left for the backoff: ${timers.pending()}`);
    await waitFor("its own read again, at once", () => reads.length === 1, { timeoutMs: 5_000 });
    const poll = callsFrom(pending, LINK_CURSOR)[1];
    poll.resolve(log.page(poll.cursor));
    await waitFor("the link's cursor past the change", () => first.cursor === "106");
    assert.equal(first.status, "polling", "answered, not rejoined yet");
  } finally {
    await link.end();
  }
});
