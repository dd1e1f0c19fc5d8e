// The read the app asks for with syncNow() is never lost: one a Retry-After stopped (held back, or
// refused with one), one answered behind or failed, is made again as a poll would be until a read
// made after the call reads to the end, also on a live link with the safety read off, and with one
// read pending at most (one asked for as the catch-up that makes the link live ends, too); one a live
// channel's drop cut off ends as the poll after the drop. The service's syncNow() says how the read
// went for each user. Against the stand-in client, with changesSince answered by hand.

import assert from "node:assert/strict";
import type { ReadOutcome } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { handAnsweredService, USER, version } from "./handAnsweredService.ts";
import { frozenClock, watchTimers } from "./watchTimers.ts";

const retryAfter = (seconds: number) =>
  Object.assign(new Error("429"), { details: { retry_after: seconds } });
const answered = (chapter?: number) => ({
  changes: chapter === undefined ? [] : [version(chapter)],
  next_cursor: String(100 + (chapter ?? 1)),
  has_more: false,
});
/** Live with the safety read and the heartbeat watch off: nothing but syncNow() reads. */
const quiet = { livePollIntervalMs: 0, heartbeatReplyTimeoutMs: 0 };

/** The link's reads as onRead hears them. */
function heard(link: ReturnType<typeof handAnsweredService>): ReadOutcome[] {
  const outcomes: ReadOutcome[] = [];
  link.subscription.onRead((outcome) => outcomes.push(outcome));
  return outcomes;
}

Deno.test("syncNow: two in one tick on a live link with the safety read off, the first refused with a Retry-After: one read when it ends, none after", async () => {
  const link = handAnsweredService(quiet);
  try {
    await link.goLive();
    const reads = heard(link);
    const first = link.subscription.syncNow(); // back in the foreground
    const second = link.subscription.syncNow(); // and back online: queued behind the first
    await waitFor("the first read", () => link.calls.length === 2);
    link.calls[1].reject(retryAfter(0.5)); // the second is held by it (no call)
    assert.deepEqual(await Promise.all([first, second]), ["failed", "failed"]);
    assert.equal(link.timers(), 1, "one read scheduled, for the Retry-After's end");
    await waitFor("the read when the Retry-After ends", () => link.calls.length === 3);
    link.calls[2].resolve(answered(2));
    await waitFor("its answer heard", () => reads.length === 2);
    assert.deepEqual(reads, ["failed", "done"]);
    assert.deepEqual(link.changes, [{ chapter: 2, source: "poll" }]);
    assert.equal(link.timers(), 0, "read to the end: nothing more scheduled");
    assert.equal(link.calls.length, 3);
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: on a live link with the safety read off, a read answered behind is made again after pollIntervalMs until one reads to the end", async () => {
  const link = handAnsweredService({ ...quiet, pollIntervalMs: 50 });
  try {
    await link.goLive();
    const reads = heard(link);
    const sync = link.subscription.syncNow();
    await waitFor("the read", () => link.calls.length === 2);
    link.calls[1].resolve({ changes: [], next_cursor: "101", has_more: true }); // a long transaction holds the cursor
    assert.equal(await sync, "behind");
    assert.equal(link.timers(), 1, "the next read is scheduled");
    await waitFor("the next read", () => link.calls.length === 3);
    link.calls[2].resolve({ changes: [], next_cursor: "101", has_more: true }); // still held
    await waitFor("and the next", () => link.calls.length === 4);
    link.calls[3].resolve(answered(2));
    await waitFor("its answer heard", () => reads.length === 3);
    assert.deepEqual(reads, ["behind", "behind", "done"]);
    assert.equal(link.timers(), 0, "read to the end: nothing more scheduled");
    assert.equal(link.subscription.status, "live");
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: on a live link with the safety read off, a failed read is made again (the polls' backoff) until one reads to the end", async () => {
  const link = handAnsweredService({
    ...quiet,
    pollIntervalMs: 30,
    backoff: { initialMs: 30, maxMs: 60 },
    random: () => 0.5,
  });
  try {
    await link.goLive();
    const reads = heard(link);
    const sync = link.subscription.syncNow();
    await waitFor("the read", () => link.calls.length === 2);
    link.calls[1].reject(new Error("network blip"));
    assert.equal(await sync, "failed");
    assert.equal(link.timers(), 1, "the next read is scheduled");
    await waitFor("the next read", () => link.calls.length === 3);
    link.calls[2].reject(new Error("network blip"));
    await waitFor("and the next", () => link.calls.length === 4);
    link.calls[3].resolve(answered(2));
    await waitFor("its answer heard", () => reads.length === 3);
    assert.deepEqual(reads, ["failed", "failed", "done"]);
    assert.equal(link.timers(), 0, "read to the end: nothing more scheduled");
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: a read already in flight when the app asks does not settle its read; only one that began after the call does", async () => {
  const link = handAnsweredService({ ...quiet, pollIntervalMs: 50 });
  try {
    await link.goLive();
    const reads = heard(link);
    const first = link.subscription.syncNow();
    await waitFor("the first read", () => link.calls.length === 2); // in flight
    const second = link.subscription.syncNow(); // it may have read before what made the app ask again
    link.calls[1].resolve(answered(2));
    assert.equal(await first, "done");
    await waitFor("the second read", () => link.calls.length === 3);
    link.calls[2].resolve({ changes: [], next_cursor: "102", has_more: true }); // held by a long transaction
    assert.equal(await second, "behind");
    await waitFor("the second's read again", () => link.calls.length === 4);
    link.calls[3].resolve(answered(3));
    await waitFor("its answer heard", () => reads.length === 3);
    assert.deepEqual(reads, ["done", "behind", "done"]);
    assert.equal(link.timers(), 0, "read to the end: nothing more scheduled");
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: two in one tick (back in the foreground and online), the first's read failed and the second's read to the end: no read of the first's is left scheduled", async () => {
  const link = handAnsweredService({ ...quiet, pollIntervalMs: 60_000 });
  try {
    await link.goLive();
    const reads = heard(link);
    const first = link.subscription.syncNow();
    const second = link.subscription.syncNow(); // queued behind the first: it began after both calls
    await waitFor("the first read", () => link.calls.length === 2);
    link.calls[1].reject(new Error("network not up yet")); // owed: made again after the polls' backoff
    assert.equal(await first, "failed");
    await waitFor("the second read", () => link.calls.length === 3);
    link.calls[2].resolve(answered(2));
    assert.equal(await second, "done");
    assert.deepEqual(reads, ["failed", "done"]);
    assert.equal(link.timers(), 0, "both read to the end: nothing more scheduled (the safety read is off)");
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: a read owed for a Retry-After's end is still made when a late heartbeat's reply comes meanwhile", async () => {
  const fake = fakeClient();
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({
    livePollIntervalMs: 0,
    pollIntervalMs: 60_000,
    heartbeatReplyTimeoutMs: 20,
    log: (line) => lines.push(JSON.parse(line)),
  }, fake);
  try {
    await link.goLive();
    const sync = link.subscription.syncNow();
    await waitFor("the read", () => link.calls.length === 2);
    link.calls[1].reject(retryAfter(1));
    assert.equal(await sync, "failed");
    fake.heartbeat("sent"); // no reply in time: the link reads now (held by the Retry-After)
    await waitFor("the late reply", () => lines.some((l) => l.event === "heartbeat_reply_late"));
    fake.heartbeat("ok"); // it came: the safety read's pace (off) again, but the app's read is owed
    await waitFor("the read when the Retry-After ends", () => link.calls.length === 3);
    link.calls[2].resolve(answered(2));
    await waitFor("chapter 2", () => link.changes.length === 1);
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: with the safety read a while off, a read held by a Retry-After is made when it ends, not at that safety read", async () => {
  const timers = watchTimers();
  const link = handAnsweredService({
    livePollIntervalMs: 2_000,
    heartbeatReplyTimeoutMs: 0,
    random: () => 0, // the Retry-After's end undrawn
  });
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    await link.goLive();
    const reads = heard(link);
    await waitFor("a safety read", () => link.calls.length === 2, { timeoutMs: 20_000 });
    // The service's clock stands still until the read is scheduled: the syncNow() below comes within
    // the wait however slowly the machine runs.
    clock = frozenClock();
    link.calls[1].reject(retryAfter(0.2)); // the next safety read waits 2 s
    await waitFor("the refusal heard", () => reads.length === 1);
    // Back in the foreground, within the wait: no read now, "failed" at once.
    assert.equal(await link.subscription.syncNow(), "failed");
    assert.equal(link.calls.length, 2, "no read within the Retry-After");
    // One read scheduled, at the wait's end (200 ms), not at the next safety read (2 s).
    const pending = timers.pending();
    assert.equal(pending.length, 1, `one timer: ${pending}`);
    assert.ok(pending[0] > 199 && pending[0] <= 201, `the read at the Retry-After's end: ${pending}`);
    clock.restore();
    clock = undefined;
    await waitFor("the read at the Retry-After's end", () => link.calls.length === 3);
    link.calls[2].resolve(answered(2));
    await waitFor("chapter 2", () => link.changes.length === 1);
    // The safety read after it is scheduled once the read's end has been handled (a tick after its changes).
    await waitFor("the safety read after it", () => link.timers() === 1);
    assert.equal(link.calls.length, 3, "and no read besides");
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("syncNow: a read the live channel's drop cuts off resolves as the poll the drop starts ends; onRead hears that poll, not the cut", async () => {
  for (const pollAnswers of [true, false]) {
    const link = handAnsweredService({
      livePollIntervalMs: 60_000,
      heartbeatReplyTimeoutMs: 0,
      random: () => 0.5,
      backoff: { initialMs: 60_000, maxMs: 60_000 }, // no rejoin meanwhile
    });
    try {
      await link.goLive();
      const reads = heard(link);
      const press = link.subscription.syncNow(); // the reader's Sync now
      const everyone = link.service.syncNow(); // and the tab shown again: queued behind it
      await waitFor("the press's read", () => link.calls.length === 2); // in flight
      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
      await waitFor("the poll after the drop", () => link.calls.length === 3);
      if (pollAnswers) link.calls[2].resolve(answered(2));
      else link.calls[2].reject(new Error("the API is down too"));
      const outcome = pollAnswers ? "done" : "failed";
      assert.equal(await press, outcome);
      assert.deepEqual(await everyone, [{ userId: USER, channel: `progress:${USER}`, outcome }]);
      assert.deepEqual(reads, [outcome], "one read heard: the poll's");
      // Set by that poll's own end, which settles apart from the syncNow() it stood for.
      await waitFor(
        "the poll's status",
        () => link.subscription.status === (pollAnswers ? "polling" : "offline"),
      );
    } finally {
      await link.end();
    }
  }
});

const OTHER = "00000000-0000-4000-8000-0000000000c2";

Deno.test("service.syncNow resolves how the read went for each subscribed user (their channel and outcome), [] for a user without one", async () => {
  const link = handAnsweredService(quiet);
  try {
    await link.goLive();
    const other = link.service.subscribeToProgress(OTHER, () => {});
    (await link.channel(2)).state!("SUBSCRIBED");
    await waitFor("the other's catch-up", () => link.calls.length === 2);
    link.calls[1].resolve({ changes: [], next_cursor: "101", has_more: false });
    await waitFor("the other live", () => other.status === "live");

    const all = link.service.syncNow();
    await waitFor("both reads", () => link.calls.length === 4);
    link.calls[2].resolve(answered());
    link.calls[3].resolve(answered());
    assert.deepEqual(await all, [
      { userId: USER, channel: `progress:${USER}`, outcome: "done" },
      { userId: OTHER, channel: `progress:${OTHER}`, outcome: "done" },
    ]);

    const one = link.service.syncNow(OTHER.toUpperCase()); // as PostgreSQL prints it or not
    await waitFor("its read", () => link.calls.length === 5);
    link.calls[4].reject(new Error("network blip"));
    assert.deepEqual(await one, [{ userId: OTHER, channel: `progress:${OTHER}`, outcome: "failed" }]);

    assert.deepEqual(await link.service.syncNow("00000000-0000-4000-8000-0000000000ff"), []);
    await other.unsubscribe();
  } finally {
    await link.end();
  }
});

/** A minute-long wait: a read the test must see within its guard only if the read owed is made again. */
const MINUTES = 600_000;

for (const livePollIntervalMs of [MINUTES, 0]) {
  for (const madeBy of ["onRead", "in flight"] as const) {
    const what = `safety read ${livePollIntervalMs ? "on" : "off"}, made ${
      madeBy === "onRead" ? "by an onRead handler" : "while it was in flight"
    }`;
    Deno.test(`syncNow: one made as the catch-up that makes the link live ends, whose read fails, is made again at the polls' backoff (${what})`, async () => {
      const timers = watchTimers();
      const link = handAnsweredService({
        livePollIntervalMs,
        heartbeatReplyTimeoutMs: 0,
        pollIntervalMs: 30,
        backoff: { initialMs: MINUTES, maxMs: MINUTES }, // no rejoin meanwhile; the polls' cap
        random: () => 0.5,
      });
      try {
        const reads = heard(link);
        let sync: Promise<ReadOutcome> | undefined;
        if (madeBy === "onRead") {
          // The app reacts to the first read heard (the catch-up's "done") with a read of its own.
          link.subscription.onRead(() => sync ??= link.subscription.syncNow());
        }
        (await link.channel(1)).state!("SUBSCRIBED");
        await waitFor("the catch-up", () => link.calls.length === 1);
        if (madeBy === "in flight") sync = link.subscription.syncNow(); // queued behind the catch-up
        link.calls[0].resolve(answered());
        await waitFor("the syncNow() read", () => link.calls.length === 2);
        await waitFor("live", () => link.subscription.status === "live");
        link.calls[1].reject(new Error("network blip"));
        assert.equal(await sync, "failed");
        assert.equal(link.timers(), 1, "one read pending: the read again");
        await waitFor("the read again (the polls' backoff: 45 ms)", () => link.calls.length === 3);
        link.calls[2].resolve(answered(2));
        await waitFor("its answer heard", () => reads.length === 3);
        assert.deepEqual(reads, ["done", "failed", "done"]);
        await waitFor(
          "the safety read's pace again",
          () => link.calls.length > 3 || link.timers() === (livePollIntervalMs ? 1 : 0),
        );
        assert.equal(link.calls.length, 3, "read to the end: no read besides");
        // The timer pending is the safety read's (a minute), not one more read at the polls' pace.
        assert.deepEqual(
          timers.pending(),
          livePollIntervalMs ? [livePollIntervalMs] : [],
          "the safety read's pace",
        );
        assert.equal(link.subscription.status, "live");
      } finally {
        await link.end();
        timers.restore();
      }
    });
  }
}
