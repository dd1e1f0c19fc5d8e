// The catch-up after a (re)join: it does not queue behind a read begun before the join (the poll while
// rejoining, a syncNow() made while joining) that hangs, which the join cuts off instead, without losing a
// change or moving the cursor back (the cursor moves only with an answered page; a late answer of the cut
// read is ignored); a catch-up that fails is made again after the polls' backoff, not at once; and the
// status says what a joined link that is not caught up yet is doing ("offline" while the API fails or
// refuses, "polling" while the cursor is held back). Against the stand-in client, with changesSince
// answered by hand; requestTimeoutMs is ten minutes, so a catch-up that comes while the hung call is
// unanswered shows the cut (the waits are hang guards only), and a wait scheduled is read off the timers
// pending (watchTimers), none waited for.

import assert from "node:assert/strict";
import type { ChangesPage, ReadOutcome } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { handAnsweredService, type PendingCall, version } from "./handAnsweredService.ts";
import { frozenClock, watchTimers } from "./watchTimers.ts";

const MINUTES = 600_000;

const page = (chapter: number | undefined, cursor: string, hasMore = false): ChangesPage => ({
  changes: chapter === undefined ? [] : [version(chapter)],
  next_cursor: cursor,
  has_more: hasMore,
});

const retryAfter = (seconds: number) =>
  Object.assign(new Error("429"), { details: { retry_after: seconds } });

/** Whether a timer is pending for `ms` (to a millisecond: the service's clock reads fractions). */
const pendingFor = (timers: ReturnType<typeof watchTimers>, ms: number) =>
  timers.pending().some((delay) => Math.abs(delay - ms) < 1);

/**
 * A link whose changesSince calls are answered by hand and record the cursor each was sent; no safety
 * read, no heartbeat watch; a failed join is retried at once (full jitter drawn 0), a request may hang
 * ten minutes.
 */
function cursorLink(options: Record<string, unknown> = {}) {
  const calls: (PendingCall & { cursor: unknown })[] = [];
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({
    changesSince: (cursor) => new Promise((resolve, reject) => calls.push({ resolve, reject, cursor })),
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    pollIntervalMs: MINUTES,
    requestTimeoutMs: MINUTES,
    backoff: { initialMs: MINUTES, maxMs: MINUTES },
    random: () => 0,
    log: (line) => lines.push(JSON.parse(line)),
    ...options,
  });
  const reads: ReadOutcome[] = [];
  link.subscription.onRead((outcome) => reads.push(outcome));
  const end = async () => {
    for (const call of calls) call.resolve(page(undefined, "999"));
    await link.end();
  };
  return { ...link, calls, lines, reads, end };
}

Deno.test("catch-up after a rejoin: a poll begun before the join that hangs is cut off; the catch-up reads at once from the cursor its answered pages left, and its late answer moves nothing", async () => {
  const link = cursorLink();
  try {
    // The first join is refused: the link polls at once and joins again at once (jitter drawn 0).
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("join refused"));
    await waitFor("the poll", () => link.calls.length === 1);
    assert.equal(link.calls[0].cursor, null);
    link.calls[0].resolve(page(1, "101", true)); // one page answered, more to come
    await waitFor("the poll's second page", () => link.calls.length === 2); // it hangs
    assert.equal(link.calls[1].cursor, "101");
    (await link.channel(2)).state!("SUBSCRIBED");
    // The catch-up does not wait ten minutes for the hung page: it reads now, from where the answered
    // page left the cursor (not from before it, not past the unanswered page).
    await waitFor("the catch-up, while the poll's page is unanswered", () => link.calls.length === 3);
    assert.equal(link.calls[2].cursor, "101");
    link.calls[2].resolve(page(3, "103"));
    await waitFor("live", () => link.subscription.status === "live");
    assert.deepEqual(link.changes, [{ chapter: 1, source: "poll" }, { chapter: 3, source: "catchup" }]);
    // The cut page's answer comes late, for an older cursor: ignored (the catch-up read past it).
    link.calls[1].resolve(page(2, "102"));
    const sync = link.subscription.syncNow();
    await waitFor("the syncNow() read", () => link.calls.length === 4);
    assert.equal(link.calls[3].cursor, "103", "the late answer did not move the cursor back");
    link.calls[3].resolve(page(undefined, "103"));
    assert.equal(await sync, "done");
    assert.deepEqual(link.changes.map((c) => c.chapter), [1, 3], "chapter 2's late version not applied");
    assert.deepEqual(
      link.reads,
      ["done", "done"],
      "heard: the catch-up and the syncNow() read, not the cut poll",
    );
    const events = link.lines.map((l) => l.event);
    assert.equal(events.filter((e) => e === "poll_cut_off").length, 1, JSON.stringify(events));
    assert.ok(!events.includes("poll_failed"), JSON.stringify(events));
  } finally {
    await link.end();
  }
});

Deno.test("catch-up after a join: a syncNow() read made while joining that hangs is cut off at the join and resolves as the catch-up ends", async () => {
  for (const catchUpAnswers of [true, false]) {
    const link = cursorLink({ joinGraceMs: Infinity }); // no read of the join's own while it is unanswered
    try {
      const channel = await link.channel(1);
      const sync = link.subscription.syncNow(); // back online while the join is in flight
      await waitFor("the syncNow() read", () => link.calls.length === 1); // it hangs
      channel.state!("SUBSCRIBED");
      await waitFor("the catch-up, while the syncNow() read is unanswered", () => link.calls.length === 2);
      if (catchUpAnswers) link.calls[1].resolve(page(2, "102"));
      else link.calls[1].reject(new Error("the API is down"));
      const outcome = catchUpAnswers ? "done" : "failed";
      assert.equal(await sync, outcome);
      assert.deepEqual(link.reads, [outcome], "one read heard: the catch-up's, not the cut one");
      assert.equal(link.subscription.status, catchUpAnswers ? "live" : "offline");
      // The cut read's late answer moves nothing either.
      link.calls[0].resolve(page(1, "101"));
      assert.deepEqual(link.changes, catchUpAnswers ? [{ chapter: 2, source: "catchup" }] : []);
    } finally {
      await link.end();
    }
  }
});

Deno.test("catch-up after a join: a syncNow() made while joining whose read is still queued behind a hung one is satisfied by the catch-up too: no call of its own after it", async () => {
  for (const catchUpAnswers of [true, false]) {
    const timers = watchTimers();
    // No read of the join's own while it is unanswered; a failed catch-up's retry at 10 s (random 0).
    const link = cursorLink({ joinGraceMs: Infinity, pollIntervalMs: 10_000 });
    try {
      const channel = await link.channel(1);
      const first = link.subscription.syncNow(); // back online while the join is in flight
      await waitFor("the first syncNow() read", () => link.calls.length === 1); // it hangs
      const second = link.subscription.syncNow(); // back in the foreground: queued behind the hung read
      let settled = false;
      void second.then(() => settled = true);
      channel.state!("SUBSCRIBED");
      await waitFor("the catch-up, while the first read is unanswered", () => link.calls.length === 2);
      assert.equal(link.calls[1].cursor, null);
      if (catchUpAnswers) link.calls[1].resolve(page(2, "102"));
      else link.calls[1].reject(new Error("the API is down"));
      const outcome = catchUpAnswers ? "done" : "failed";
      assert.equal(await first, outcome);
      // On the old code the second read was made after the catch-up (a third call), unanswered here.
      await waitFor(
        "the second syncNow() settled, or a call of its own",
        () => settled || link.calls.length > 2,
      );
      assert.equal(link.calls.length, 2, "no call after the catch-up: it began after the second syncNow()");
      assert.equal(await second, outcome, "it resolves as the catch-up ended");
      assert.deepEqual(link.reads, [outcome], "one read heard: the catch-up's");
      if (catchUpAnswers) {
        assert.equal(link.subscription.status, "live");
        assert.deepEqual(link.changes, [{ chapter: 2, source: "catchup" }]);
      } else {
        // Not left without a read: the catch-up's retry at the polls' backoff (10 s).
        await waitFor("the catch-up's retry scheduled", () => pendingFor(timers, 10_000));
        assert.equal(link.subscription.status, "offline");
      }
      // The hung read's late answer moves nothing.
      link.calls[0].resolve(page(1, "101"));
      const sync = link.subscription.syncNow();
      await waitFor("a read after it", () => link.calls.length === 3);
      assert.equal(link.calls[2].cursor, catchUpAnswers ? "102" : null, "the cursor never moved back");
      link.calls[2].resolve(page(undefined, catchUpAnswers ? "102" : "100"));
      assert.equal(await sync, "done");
    } finally {
      await link.end();
      timers.restore();
    }
  }
});

Deno.test("catch-up refused: a failed catch-up is made again at the polls' backoff, not at once, and not before a Retry-After ends; the status is offline meanwhile, not the poll's polling before the join", async () => {
  const timers = watchTimers();
  const link = cursorLink({ pollIntervalMs: 10_000 });
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("join refused")); // polls, rejoins at once
    await waitFor("the poll", () => link.calls.length === 1);
    link.calls[0].resolve(page(1, "101"));
    await waitFor("polling", () => link.subscription.status === "polling");
    const rejoin = await link.channel(2);
    clock = frozenClock(); // the Retry-After's end, as the service reads it, stands still
    rejoin.state!("SUBSCRIBED");
    await waitFor("the catch-up", () => link.calls.length === 2);
    link.calls[1].reject(retryAfter(60));
    await waitFor("offline", () => link.subscription.status === "offline");
    // The backoff's first step is drawn 10 s (random 0): the Retry-After's 60 s is longer.
    await waitFor("the catch-up's retry timer", () => !timers.pending().includes(MINUTES));
    assert.ok(pendingFor(timers, 60_000), `at the Retry-After's end: ${timers.pending()}`);
    assert.equal(link.calls.length, 2, "no call at once");
    // A second failure in a row (made now by the app): the backoff's second step, 20 s with random 0.
    clock.advance(60_000);
    void link.subscription.syncNow();
    await waitFor("the catch-up again", () => link.calls.length === 3);
    link.calls[2].reject(new Error("503"));
    await waitFor("the next retry's timer", () => pendingFor(timers, 20_000));
    assert.equal(link.calls.length, 3, "no call at once");
    assert.equal(link.subscription.status, "offline");
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("catch-up behind: a joined link whose catch-up is answered with the cursor held back says polling, not the join's connecting, and reads again a poll interval later", async () => {
  const timers = watchTimers();
  const link = cursorLink({ pollIntervalMs: 10_000, joinGraceMs: Infinity });
  try {
    (await link.channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => link.calls.length === 1);
    assert.equal(link.subscription.status, "connecting");
    link.calls[0].resolve(page(1, "101", true));
    await waitFor("the next page", () => link.calls.length === 2);
    link.calls[1].resolve(page(undefined, "101", true)); // more to read, the cursor held by a long transaction
    await waitFor("polling", () => link.subscription.status === "polling");
    await waitFor("the next read's timer", () => pendingFor(timers, 10_000));
    assert.equal(link.calls.length, 2);
  } finally {
    timers.restore();
    await link.end();
  }
});
