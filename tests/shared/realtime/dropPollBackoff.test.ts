// The poll a live channel's drop starts comes at once only while the API has been answering: after a read
// that failed (n in a row), it waits as the next poll after that failure would (the polls' backoff, at least
// a Retry-After still running, jitter included), so the devices a Realtime restart drops together do not all
// ask a failing or refusing API again at the same moment. Against the stand-in client, with changesSince
// answered by hand and the service's clock frozen: the waits the service schedules are read off the timers
// pending (watchTimers) and ended by hand, none runs out by itself.

import assert from "node:assert/strict";
import { type ReadOutcome, retryAfterWaitMs } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { handAnsweredService } from "./handAnsweredService.ts";
import { fireWhenSet, frozenClock, pendingFor, watchTimers } from "./watchTimers.ts";

const HOUR = 3_600_000;
const MINUTES = 600_000;
/** The rejoin after the drop: step 1, half-way from the 1.6 s floor to the 10-minute ceiling (random 0.5). */
const REJOIN = 300_800;

const options = {
  livePollIntervalMs: HOUR, // the safety read never comes within the test
  heartbeatReplyTimeoutMs: 0,
  pollIntervalMs: 60_000,
  requestTimeoutMs: MINUTES,
  backoff: { initialMs: MINUTES, maxMs: MINUTES }, // the polls' cap; no rejoin within the test
  random: () => 0.5,
};

const answered = { changes: [], next_cursor: "102", has_more: false };
const retryAfter = (seconds: number) =>
  Object.assign(new Error("429"), { details: { retry_after: seconds } });

/** The timers pending once the drop has been handled (its own are set in the same call). */
const sorted = (timers: ReturnType<typeof watchTimers>) => timers.pending().sort((a, b) => a - b);

for (const failures of [1, 2]) {
  Deno.test(`drop: after ${failures} read(s) failed in a row while live, the poll after the drop waits the polls' backoff (step ${failures}), not at once`, async () => {
    const timers = watchTimers();
    const clock = frozenClock();
    const link = handAnsweredService(options);
    try {
      await link.goLive();
      for (let i = 1; i <= failures; i++) {
        const read = link.subscription.syncNow();
        await waitFor(`read ${i}`, () => link.calls.length === 1 + i);
        link.calls[i].reject(new Error("503"));
        assert.equal(await read, "failed");
      }
      assert.equal(link.subscription.status, "live");
      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed")); // Realtime restarts
      // Failure n's wait: drawn between 2^(n-1) and 2^n intervals, 90 s or 180 s with random 0.5.
      const backoff = failures === 1 ? 90_000 : 180_000;
      assert.deepEqual(sorted(timers), [backoff, REJOIN], "the poll at the backoff, beside the rejoin");
      assert.equal(link.calls.length, 1 + failures, "no call at the drop");
      await fireWhenSet(timers, "the poll after the drop", backoff, clock);
      await waitFor("the poll after the drop", () => link.calls.length === 2 + failures);
      link.calls.at(-1)!.resolve(answered);
      await waitFor("polling", () => link.subscription.status === "polling");
    } finally {
      await link.end();
      clock.restore();
      timers.restore();
    }
  });
}

// A 429 is a failure in a row too: the poll after the drop waits for the longer of the backoff's first
// step and the Retry-After's jittered end (a short one, 2 s, does not bring it forward to 2-4 s; a long
// one, 2 minutes, holds it past the backoff).
for (const seconds of [2, 120]) {
  Deno.test(`drop: after a read refused with a Retry-After of ${seconds} s while live, the poll after the drop waits for the polls' backoff and the Retry-After's end, whichever is later`, async () => {
    const timers = watchTimers();
    const clock = frozenClock();
    const link = handAnsweredService(options);
    try {
      await link.goLive();
      const read = link.subscription.syncNow();
      await waitFor("the read", () => link.calls.length === 2);
      link.calls[1].reject(retryAfter(seconds));
      assert.equal(await read, "failed");
      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
      const wait = Math.max(90_000, retryAfterWaitMs(seconds * 1000, 60_000, () => 0.5));
      assert.deepEqual(sorted(timers), [wait, REJOIN].sort((a, b) => a - b));
      assert.equal(link.calls.length, 2, "no call at the drop");
      await fireWhenSet(timers, "the poll after the drop", wait, clock);
      await waitFor("the poll after the drop", () => link.calls.length === 3);
    } finally {
      await link.end();
      clock.restore();
      timers.restore();
    }
  });
}

Deno.test("drop: after a read answered while live, the poll after the drop is made at once (the gap closes fastest)", async () => {
  const timers = watchTimers();
  const clock = frozenClock();
  const link = handAnsweredService(options);
  try {
    await link.goLive();
    const first = link.subscription.syncNow();
    await waitFor("the read", () => link.calls.length === 2);
    link.calls[1].reject(new Error("503"));
    assert.equal(await first, "failed");
    const second = link.subscription.syncNow(); // answered: the failures in a row start again
    await waitFor("the second read", () => link.calls.length === 3);
    link.calls[2].resolve(answered);
    assert.equal(await second, "done");
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll after the drop", () => link.calls.length === 4);
  } finally {
    await link.end();
    clock.restore();
    timers.restore();
  }
});

// A syncNow() whose read the drop cuts off ended as the poll the drop starts does: after a failed read,
// only once that poll had waited out the polls' backoff (minutes with the defaults' cap), and an app's
// "Sync now" stayed pressed that long. When the drop's poll waits, the cut read ends at once, "failed"
// (as a syncNow() a Retry-After holds does: no read made now), and is not heard; the poll keeps its time
// and is heard when it ends. Whether the syncNow()'s read was in flight or queued behind one that hangs.
for (const queued of [false, true]) {
  Deno.test(
    `drop: after a failed read, a syncNow() whose read ${
      queued ? "is queued behind one that hangs" : "hangs"
    } when the channel drops resolves at once, "failed"; the poll after the drop still waits the backoff`,
    async () => {
      const timers = watchTimers();
      const clock = frozenClock();
      const link = handAnsweredService(options);
      try {
        await link.goLive();
        const failed = link.subscription.syncNow();
        await waitFor("the failed read", () => link.calls.length === 2);
        link.calls[1].reject(new Error("503"));
        assert.equal(await failed, "failed");
        const reads: ReadOutcome[] = [];
        link.subscription.onRead((outcome) => reads.push(outcome));
        const presses = [link.subscription.syncNow()]; // back in the foreground: its read hangs
        await waitFor("the hanging read", () => link.calls.length === 3);
        if (queued) presses.push(link.subscription.syncNow()); // queued behind it
        const settled: ReadOutcome[] = [];
        for (const press of presses) void press.then((outcome) => settled.push(outcome));
        (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
        // A hang guard only: on the code before, they waited for the poll below (never fired by itself).
        await waitFor("the cut reads resolve", () => settled.length === presses.length, {
          timeoutMs: 20_000,
        });
        assert.deepEqual(settled, presses.map(() => "failed"));
        assert.deepEqual(
          sorted(timers),
          [90_000, REJOIN],
          "the poll still at the backoff, beside the rejoin",
        );
        assert.equal(link.calls.length, 3, "no call at the drop");
        assert.deepEqual(reads, [], "the cut reads are not heard");
        await fireWhenSet(timers, "the poll after the drop", 90_000, clock);
        await waitFor("the poll after the drop", () => link.calls.length === 4);
        link.calls[3].resolve(answered);
        await waitFor("polling", () => link.subscription.status === "polling");
        assert.deepEqual(reads, ["done"], "the poll, at its time, is heard");
      } finally {
        await link.end();
        clock.restore();
        timers.restore();
      }
    },
  );
}

// The read in place of a read the drop cut off is made at once when the last read was refused 401 for a
// token replaced since (the link reads with the new one then, backoff or not): a syncNow() whose read was
// cut off resolves as that read ends, as it does when the poll after the drop reads at once, instead of
// "failed" at once while that read was being made.
Deno.test("drop: after a read refused 401, a syncNow() whose read hangs when the channel drops, a new token having come meanwhile, resolves as the read made at once with that token, not failed", async () => {
  const timers = watchTimers();
  const clock = frozenClock();
  const link = handAnsweredService(options);
  try {
    await link.goLive();
    const refused = link.subscription.syncNow();
    await waitFor("the read", () => link.calls.length === 2);
    link.calls[1].reject(Object.assign(new Error("token_expired"), { status: 401, code: "token_expired" }));
    assert.equal(await refused, "failed");
    const reads: ReadOutcome[] = [];
    link.subscription.onRead((outcome) => reads.push(outcome));
    let synced: ReadOutcome | undefined;
    void link.subscription.syncNow().then((outcome) => synced = outcome); // sent with T1: it hangs
    await waitFor("the hanging read", () => link.calls.length === 3);
    await link.service.setAccessToken("T2"); // while it hangs: no read now
    assert.equal(link.calls.length, 3);

    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the read with T2, at once", () => link.calls.length === 4, { timeoutMs: 5_000 });
    assert.equal(synced, undefined, "waits for the read made in its place");
    link.calls[3].resolve(answered);
    await waitFor("its syncNow()", () => synced !== undefined, { timeoutMs: 5_000 });
    assert.equal(synced, "done");
    assert.deepEqual(reads, ["done"], "the read with T2 is heard, the cut one is not");
  } finally {
    await link.end();
    clock.restore();
    timers.restore();
  }
});

// A live link whose failed read nothing makes again (the safety read off, nothing owed to the app, no
// heartbeat reply late) polls at once at its drop: its failure count is stale, and says nothing of the API
// since. It starts again there: when the poll at the drop (or at the end of a Retry-After still running
// then, which is still waited for) fails, the next poll waits the backoff for one failure, the API's first
// seen since, not for the stale count and one more. Later drops find the link backing off (not live again
// until a read is answered) and make no call: one call per drop at most, the first's.
for (const stale of ["a 503", "a 429 with a Retry-After of 120 s"]) {
  Deno.test(`drop: a live link's stale failure (${stale}) nothing read again: the failure count starts again at the drop, so its poll failing waits the backoff for one failure, not for one more than the stale count; later drops make no call`, async () => {
    const timers = watchTimers();
    const clock = frozenClock();
    const fake = fakeClient();
    const lines: Record<string, unknown>[] = [];
    const link = handAnsweredService({
      ...options,
      livePollIntervalMs: 0, // the safety read off: a failed read while live is not read again
      heartbeatReplyTimeoutMs: 10_000,
      joinGraceMs: Infinity,
      log: (line) => lines.push(JSON.parse(line)),
    }, fake);
    const count = (event: string) => lines.filter((l) => l.event === event).length;
    try {
      await link.goLive();
      // A heartbeat reply late: the live link reads now; the reply comes while that read is under way,
      // and the read fails: nothing reads again for it, its failure count stays at one.
      fake.heartbeat("sent");
      await fireWhenSet(timers, "the heartbeat reply's timeout", 10_000);
      await waitFor("the late heartbeat's read", () => link.calls.length === 2);
      fake.heartbeat("ok");
      link.calls[1].reject(stale === "a 503" ? new Error("503") : retryAfter(120));
      await waitFor("that read failed", () => count("poll_failed") === 1);
      assert.equal(link.subscription.status, "live");

      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
      if (stale !== "a 503") {
        // The Retry-After still runs: the poll waits for its end (its jittered wait), not made at once.
        const retryAfterMs = retryAfterWaitMs(120_000, 60_000, () => 0.5);
        assert.equal(link.calls.length, 2, "no call while the Retry-After runs");
        await fireWhenSet(timers, "the poll at the Retry-After's end", retryAfterMs, clock);
      }
      await waitFor("the poll after the drop", () => link.calls.length === 3, { timeoutMs: 5_000 });
      link.calls[2].reject(new Error("503"));
      await waitFor("that poll failed", () => count("poll_failed") === 2);
      // One failure's wait (between one and two intervals: 90 s with random 0.5), not two failures' (180 s).
      await waitFor(
        "the next poll scheduled",
        () => pendingFor(timers, 90_000) || pendingFor(timers, 180_000),
      );
      assert.ok(
        pendingFor(timers, 90_000) && !pendingFor(timers, 180_000),
        `the next poll waits the backoff for one failure: ${sorted(timers)}`,
      );

      // The channel comes back and drops again, its catch-up refused each time: no call at either drop,
      // and the polls back off on the link's count (two failures, then three).
      for (const [n, backoff] of [[2, 180_000], [3, 360_000]]) {
        await fireWhenSet(timers, `rejoin ${n - 1}`, REJOIN, clock);
        (await link.channel(n)).state!("SUBSCRIBED");
        await waitFor(`catch-up ${n - 1}`, () => link.calls.length === n + 2);
        link.calls[n + 1].reject(new Error("503"));
        await waitFor(`catch-up ${n - 1} failed`, () => count("catchup_failed") === n - 1);
        await waitFor(`the poll after catch-up ${n - 1}`, () => pendingFor(timers, backoff));
        (await link.channel(n)).state!("CHANNEL_ERROR", new Error("socket closed"));
        assert.equal(link.calls.length, n + 2, `no call at drop ${n}`);
        assert.ok(!pendingFor(timers, 0) && pendingFor(timers, backoff), `drop ${n}: ${sorted(timers)}`);
      }
    } finally {
      await link.end();
      clock.restore();
      timers.restore();
    }
  });
}
