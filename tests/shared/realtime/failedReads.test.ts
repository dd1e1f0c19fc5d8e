// A safety read that fails while live is made again as a failed poll is (after the polls' backoff, when a
// Retry-After ends) or at the next safety read when that comes sooner, not a whole livePollIntervalMs later,
// and not at all with the safety read off; the failures in a row start again after an answer. Of two reads in
// a row (the second queued behind the first), while polling and while live, the one that settled last
// schedules the next read. A safety read the channel's drop cut off is no failure of the API: it logs
// poll_cut_off, not poll_failed; nor are reads a Retry-After held back (no call made): they raise no backoff
// step. A catch-up that fails counts as a failure in a row, as every read does, and is made again after the
// polls' backoff (not at once). While a Retry-After runs, the
// status stays offline, reads it held back included (the last call was refused). Against the stand-in client,
// with changesSince answered by hand; the intervals that must not be waited for are minutes long, so a read
// that comes shows the short wait (the waits are hang guards only), or the wait scheduled is read off the
// timers pending (watchTimers).

import assert from "node:assert/strict";
import type { ReadOutcome } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { handAnsweredService, version } from "./handAnsweredService.ts";
import { fireWhenSet, watchTimers } from "./watchTimers.ts";

const answered = (chapter?: number) => ({
  changes: chapter === undefined ? [] : [version(chapter)],
  next_cursor: String(100 + (chapter ?? 1)),
  has_more: false,
});

const retryAfter = (seconds: number) =>
  Object.assign(new Error("429"), { details: { retry_after: seconds } });

/** The link's reads as onRead hears them. */
function heard(link: ReturnType<typeof handAnsweredService>): ReadOutcome[] {
  const outcomes: ReadOutcome[] = [];
  link.subscription.onRead((outcome) => outcomes.push(outcome));
  return outcomes;
}

/** A minute-long wait for a read the test must see within its guard only if the fix holds. */
const MINUTES = 600_000;

/**
 * Live with a safety read every `livePollIntervalMs`; the read a late heartbeat reply makes is a
 * safety read made now: the heartbeat's reply comes while it is in flight, so the link is back at
 * the safety read's own pace when it ends. Returns the call of that read (the link's second).
 */
async function liveWithSafetyReadInFlight(livePollIntervalMs: number, extra = {}) {
  const fake = fakeClient();
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({
    livePollIntervalMs,
    heartbeatReplyTimeoutMs: 20,
    pollIntervalMs: 30,
    backoff: { initialMs: MINUTES, maxMs: MINUTES }, // no rejoin meanwhile; the polls' cap
    random: () => 0.5,
    log: (line) => lines.push(JSON.parse(line)),
    ...extra,
  }, fake);
  await link.goLive();
  const reads = heard(link);
  fake.heartbeat("sent"); // no reply in time: the link reads now
  await waitFor("the safety read", () => link.calls.length === 2);
  fake.heartbeat("ok"); // the reply came: the safety read's own pace again
  return { link, fake, lines, reads };
}

Deno.test("safety read: one that fails is made again at the polls' backoff, not a whole livePollIntervalMs later", async () => {
  const { link, reads } = await liveWithSafetyReadInFlight(MINUTES);
  try {
    link.calls[1].reject(new Error("network blip"));
    await waitFor("the failure heard", () => reads.length === 1);
    await waitFor("the read again (the polls' backoff: 45 ms)", () => link.calls.length === 3);
    link.calls[2].resolve(answered(2));
    await waitFor("chapter 2", () => link.changes.length === 1);
    assert.deepEqual(link.changes, [{ chapter: 2, source: "poll" }]);
    assert.deepEqual(reads, ["failed", "done"]);
    await waitFor("the next safety read scheduled", () => link.timers() === 1);
    assert.equal(link.subscription.status, "live");
    assert.equal(link.calls.length, 3, "answered: the safety read's pace again");
  } finally {
    await link.end();
  }
});

Deno.test("safety read: one that fails with a syncNow() queued behind it leaves the next read to that one (no read again while it is in flight)", async () => {
  const { link, reads } = await liveWithSafetyReadInFlight(MINUTES);
  try {
    const sync = link.subscription.syncNow(); // queued behind the safety read
    link.calls[1].reject(new Error("network blip"));
    await waitFor("the syncNow() read", () => link.calls.length === 3);
    // Only its request's timeout timer: none for a read again of the failed one (45 ms), which would
    // queue one more read behind this one, made the moment it ends (twice in a row, no backoff).
    await waitFor("no read again of the failed one pending", () => link.timers() === 1);
    link.calls[2].resolve(answered(2));
    assert.equal(await sync, "done");
    await waitFor(
      "the next safety read scheduled",
      () => link.calls.length > 3 || link.timers() === 1,
    );
    assert.equal(link.calls.length, 3, "the newest read was answered: the safety read's pace, no read now");
    assert.equal(link.timers(), 1);
    assert.deepEqual(reads, ["failed", "done"]);
  } finally {
    await link.end();
  }
});

Deno.test("safety read: one refused with a Retry-After is made again when it ends, not a whole livePollIntervalMs later", async () => {
  const { link, reads } = await liveWithSafetyReadInFlight(MINUTES);
  try {
    link.calls[1].reject(retryAfter(0.2));
    await waitFor("the refusal heard", () => reads.length === 1);
    await waitFor("the read when the Retry-After ends", () => link.calls.length === 3);
    link.calls[2].resolve(answered(2));
    await waitFor("its answer heard", () => reads.length === 2);
    assert.deepEqual(reads, ["failed", "done"], "none held by the Retry-After (unheard)");
  } finally {
    await link.end();
  }
});

Deno.test("safety read: with the safety read off, a late heartbeat's read that fails after the reply came is not made again", async () => {
  const { link, reads } = await liveWithSafetyReadInFlight(0);
  try {
    link.calls[1].reject(new Error("network blip"));
    await waitFor("the failure heard", () => reads.length === 1);
    // The read's end is handled a tick after onRead hears it: a read scheduled then would show here
    // as a timer (none is scheduled with the safety read off).
    await waitFor("the read's end handled", () => link.calls.length === 2 && link.timers() === 0);
    assert.equal(link.subscription.status, "live");
  } finally {
    await link.end();
  }
});

Deno.test("safety read: the failures in a row start again after an answer (the backoff's first step, not the step failed syncNow() reads had reached)", async () => {
  const fake = fakeClient();
  const link = handAnsweredService({
    livePollIntervalMs: MINUTES,
    heartbeatReplyTimeoutMs: 20,
    pollIntervalMs: 30,
    backoff: { initialMs: MINUTES, maxMs: MINUTES },
    random: () => 0.5,
  }, fake);
  try {
    await link.goLive();
    const reads = heard(link);
    // Twelve reads the app asked for fail in a row: the backoff's ceiling is 30 ms * 2^12 (two minutes).
    for (let n = 1; n <= 12; n++) {
      const sync = link.subscription.syncNow();
      await waitFor(`read ${n}`, () => link.calls.length === n + 1);
      link.calls[n].reject(new Error("network blip"));
      assert.equal(await sync, "failed");
    }
    const answeredSync = link.subscription.syncNow(); // answered: the count starts again
    await waitFor("the answered read", () => link.calls.length === 14);
    link.calls[13].resolve(answered(2));
    assert.equal(await answeredSync, "done");
    fake.heartbeat("sent"); // a late reply's read, the reply coming while it is in flight
    await waitFor("the safety read", () => link.calls.length === 15);
    fake.heartbeat("ok");
    link.calls[14].reject(new Error("network blip"));
    await waitFor("the read again at the first step (45 ms)", () => link.calls.length === 16);
    link.calls[15].resolve(answered(3));
    await waitFor("its answer heard", () => reads.length === 15);
    assert.deepEqual(reads.slice(12), ["done", "failed", "done"]);
  } finally {
    await link.end();
  }
});

Deno.test("polling: two reads in a row, the first failed and the one queued behind it answered: the next poll comes at pollIntervalMs, not at the failure's backoff", async () => {
  const link = handAnsweredService({
    pollIntervalMs: 50,
    heartbeatReplyTimeoutMs: 0,
    backoff: { initialMs: MINUTES, maxMs: MINUTES }, // no rejoin meanwhile; the polls' cap
    random: () => 0.5,
  });
  try {
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down"));
    await waitFor("the first poll", () => link.calls.length === 1);
    link.calls[0].reject(new Error("the API is down too"));
    // Ten more failures in a row (reads the app asked for; the rejoin the first makes stays
    // unanswered): after one more, the backoff's ceiling is 50 ms * 2^12 (jittered: 102 s at least).
    for (let n = 1; n <= 10; n++) {
      const sync = link.subscription.syncNow();
      await waitFor(`read ${n}`, () => link.calls.length === n + 1);
      link.calls[n].reject(new Error("the API is down too"));
      assert.equal(await sync, "failed");
    }
    assert.equal(link.subscription.status, "offline");
    const first = link.subscription.syncNow(); // back in the foreground
    const second = link.subscription.syncNow(); // and back online: queued behind the first
    await waitFor("the first read", () => link.calls.length === 12);
    link.calls[11].reject(new Error("the API is down too"));
    await waitFor("the second read", () => link.calls.length === 13);
    link.calls[12].resolve(answered(2));
    assert.deepEqual(await Promise.all([first, second]), ["failed", "done"]);
    await waitFor("polling", () => link.subscription.status === "polling");
    // The newest read was answered: the next poll at pollIntervalMs (50 ms), not 102 s or more.
    await waitFor("the next poll", () => link.calls.length === 14);
    link.calls[13].resolve(answered(3));
    await waitFor("chapter 3", () => link.changes.length === 2);
  } finally {
    await link.end();
  }
});

Deno.test("catch-up: one that fails with a syncNow() queued behind it leaves the next read to that one (no poll at once behind it)", async () => {
  const link = handAnsweredService({
    livePollIntervalMs: MINUTES,
    pollIntervalMs: MINUTES,
    heartbeatReplyTimeoutMs: 0,
    backoff: { initialMs: MINUTES, maxMs: MINUTES }, // no rejoin meanwhile
    random: () => 0.5,
  });
  try {
    (await link.channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => link.calls.length === 1);
    const sync = link.subscription.syncNow(); // queued behind the catch-up: it catches up too
    link.calls[0].reject(new Error("network blip"));
    await waitFor("the syncNow() read", () => link.calls.length === 2);
    // Only its request's timeout timer: no poll at once for the failed catch-up, which would queue one
    // more read behind this one, made the moment it ends.
    await waitFor("no poll for the catch-up pending", () => link.timers() === 1);
    link.calls[1].resolve(answered(2));
    assert.equal(await sync, "done");
    await waitFor("live", () => link.subscription.status === "live");
    await waitFor("the safety read scheduled", () => link.calls.length > 2 || link.timers() === 1);
    assert.equal(link.calls.length, 2, "caught up by the newest read: the safety read's pace, no read now");
    assert.equal(link.timers(), 1);
  } finally {
    await link.end();
  }
});

Deno.test("safety read: one the channel's drop cuts off logs poll_cut_off, not poll_failed (no failure of the API)", async () => {
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({
    livePollIntervalMs: 20,
    heartbeatReplyTimeoutMs: 0,
    random: () => 0.5,
    backoff: { initialMs: MINUTES, maxMs: MINUTES }, // no rejoin meanwhile
    log: (line) => lines.push(JSON.parse(line)),
  });
  try {
    await link.goLive();
    const reads = heard(link);
    await waitFor("the safety read", () => link.calls.length === 2);
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    // The poll after the drop queues behind the cut read: its call comes once that has ended.
    await waitFor("the poll after the drop", () => link.calls.length === 3);
    link.calls[2].resolve(answered(2));
    await waitFor("its answer heard", () => reads.length === 1);
    assert.deepEqual(reads, ["done"], "one read heard: the poll's");
    const events = lines.map((l) => l.event);
    assert.ok(!events.includes("poll_failed"), `no poll_failed: ${JSON.stringify(events)}`);
    const cut = lines.filter((l) => l.event === "poll_cut_off");
    assert.equal(cut.length, 1, `one poll_cut_off: ${JSON.stringify(events)}`);
    assert.equal(cut[0].level, "info");
  } finally {
    await link.end();
  }
});

for (const live of [false, true]) {
  Deno.test(
    `${
      live ? "live" : "polling"
    }: reads a Retry-After held back (no call made) count no failure: after a dozen, a read that fails is made again at the backoff's second step, not its fourteenth`,
    async () => {
      const link = handAnsweredService({
        livePollIntervalMs: 0,
        heartbeatReplyTimeoutMs: 0,
        pollIntervalMs: 30,
        backoff: { initialMs: MINUTES, maxMs: MINUTES }, // no rejoin meanwhile; the polls' cap
        random: () => 0.5,
      });
      try {
        let first: Promise<ReadOutcome>;
        if (live) {
          await link.goLive();
          first = link.subscription.syncNow();
          await waitFor("the first read", () => link.calls.length === 2);
        } else {
          (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down"));
          await waitFor("the first poll", () => link.calls.length === 1);
          first = Promise.resolve("failed");
        }
        const reads = heard(link);
        const refused = link.calls.length - 1;
        // A dozen reads asked for while that one is in flight (tabs shown again, back online, Sync now
        // pressed): queued behind it, each held back by its Retry-After, no call made.
        const held = Array.from({ length: 12 }, () => link.subscription.syncNow());
        link.calls[refused].reject(retryAfter(0.5)); // the dozen meet it within the same run of microtasks
        assert.deepEqual(await Promise.all([first, ...held]), Array(13).fill("failed"));
        await waitFor("the read when the Retry-After ends", () => link.calls.length === refused + 2);
        link.calls[refused + 1].reject(new Error("network blip")); // the second failure in a row
        // Made again at the second step (60-120 ms); counted as failures, the held reads would have put
        // it at the fourteenth (30 ms * 2^14: four minutes or more).
        await waitFor("the read again at the second step", () => link.calls.length === refused + 3);
        link.calls[refused + 2].resolve(answered(2));
        await waitFor("its answer heard", () => reads.length === 3);
        assert.deepEqual(reads, ["failed", "failed", "done"], "the held reads are not heard");
        assert.deepEqual(link.changes, [{ chapter: 2, source: "poll" }]);
      } finally {
        await link.end();
      }
    },
  );
}

for (const dropped of [false, true]) {
  Deno.test(
    `catch-up: one that fails counts as a failure in a row: ${
      dropped ? "the channel dropping during its retry, the poll after the drop" : "its retry"
    } failing too waits the backoff's second step, not its first`,
    async () => {
      const timers = watchTimers();
      const link = handAnsweredService({
        livePollIntervalMs: 0,
        heartbeatReplyTimeoutMs: 0,
        pollIntervalMs: 60_000,
        requestTimeoutMs: MINUTES,
        backoff: { initialMs: MINUTES, maxMs: MINUTES }, // the polls' cap; the rejoin waits 5 minutes
        random: () => 0.5,
      });
      try {
        (await link.channel(1)).state!("SUBSCRIBED");
        await waitFor("the catch-up", () => link.calls.length === 1);
        link.calls[0].reject(new Error("503")); // the API fails: made again at the backoff's first step
        // Drawn in [60 s, 120 s], 90 s with random 0.5 (the call's timeout timer gone, the retry's set).
        await waitFor("the catch-up's retry timer", () => !timers.pending().includes(MINUTES));
        assert.deepEqual(timers.pending(), [90_000]);
        void link.subscription.syncNow(); // the app, back in the foreground, has it made now
        await waitFor("the catch-up's retry", () => link.calls.length === 2);
        if (dropped) {
          (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed")); // cuts the retry off
          // The last read that ended failed: the poll after the drop waits the backoff's first step
          // (90 s again; the cut retry is no failure), not at once.
          await fireWhenSet(timers, "the poll after the drop", 90_000);
          await waitFor("the poll after the drop", () => link.calls.length === 3);
        }
        link.calls.at(-1)!.reject(new Error("503"));
        // The second failure in a row (a cut read is none): drawn in [120 s, 240 s], 180 s with random
        // 0.5; the first step would be 90 s. (After the drop, the rejoin's timer too: 300.8 s, half-way
        // from the 1.6 s teardown floor to the first step's 10-minute ceiling.)
        const scheduled = dropped ? 2 : 1; // the call's timeout timer gone, the next poll's set
        await waitFor(
          "the next poll",
          () => !timers.pending().includes(MINUTES) && timers.pending().length === scheduled,
        );
        assert.deepEqual(
          timers.pending().sort((a, b) => a - b),
          dropped ? [180_000, 300_800] : [180_000],
        );
        // Joined but not caught up, the API failing: offline too, not the join's "connecting".
        assert.equal(link.subscription.status, "offline");
      } finally {
        await link.end();
        timers.restore();
      }
    },
  );
}

Deno.test("polling: the first failed poll's wait is jittered too (devices that lost the API together do not all retry one pollIntervalMs later), never below pollIntervalMs", async () => {
  const waits: number[] = [];
  for (const random of [0, 0.5, 0.999]) {
    const timers = watchTimers();
    const draws = [0.5]; // the rejoin's: 5 minutes; then the poll's jitter
    const link = handAnsweredService({
      livePollIntervalMs: 0,
      heartbeatReplyTimeoutMs: 0,
      pollIntervalMs: 60_000,
      requestTimeoutMs: MINUTES,
      backoff: { initialMs: MINUTES, maxMs: MINUTES }, // the polls' cap
      random: () => draws.shift() ?? random,
    });
    try {
      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down"));
      await waitFor("the first poll", () => link.calls.length === 1);
      link.calls[0].reject(new Error("503"));
      // The call's timeout timer gone, the next poll's set (beside the rejoin's).
      await waitFor(
        "the next poll",
        () => !timers.pending().includes(MINUTES) && timers.pending().length === 2,
      );
      const next = timers.pending().filter((ms) => ms !== 300_000);
      assert.equal(next.length, 1, `the rejoin's timer and one poll's: ${timers.pending()}`);
      waits.push(next[0]);
    } finally {
      await link.end();
      timers.restore();
    }
  }
  // Drawn in [pollIntervalMs, 2 * pollIntervalMs): 60 s, 90 s and 119.94 s, not 60 s for every draw.
  assert.deepEqual(waits, [60_000, 90_000, 119_940]);
});

Deno.test("polling: while a Retry-After runs the status stays offline, reads it held back included (the last call was refused), until a read is answered", async () => {
  const link = handAnsweredService({
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    pollIntervalMs: 100, // the read after the refusal: at the Retry-After's end (300 ms)
    backoff: { initialMs: MINUTES, maxMs: MINUTES }, // no rejoin meanwhile
    random: () => 0.5,
  });
  const statuses: string[] = [];
  link.subscription.onStatus((status) => statuses.push(status));
  try {
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down"));
    await waitFor("the first poll", () => link.calls.length === 1);
    const held = [link.subscription.syncNow(), link.subscription.syncNow()]; // queued behind it
    link.calls[0].reject(retryAfter(0.3));
    assert.deepEqual(await Promise.all(held), ["failed", "failed"], "held back: no call");
    assert.equal(link.subscription.status, "offline");
    await waitFor("the read when the Retry-After ends", () => link.calls.length === 2);
    assert.deepEqual(statuses, ["offline"], "no other status meanwhile");
    link.calls[1].resolve(answered(2));
    await waitFor("polling", () => link.subscription.status === "polling");
    assert.deepEqual(statuses, ["offline", "polling"]);
  } finally {
    await link.end();
  }
});
