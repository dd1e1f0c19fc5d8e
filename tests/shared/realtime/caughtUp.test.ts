// When RealtimeService counts a link as caught up (status "live", polling stops): only after a
// "changes since" round that began reading once the channel was joined. A change committed after an
// earlier round read, but broadcast before the channel was subscribed, reaches the device through
// no other path. Also the safety read while live and syncNow (the app's "read now"). Against the
// stand-in client, with changesSince answered by hand.

import assert from "node:assert/strict";
import {
  type ChangesPage,
  RealtimeService,
  rejoinAfterDropDelay,
  retryAfterWaitMs,
  SOCKET_TEARDOWN_MS,
} from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { handAnsweredService, type PendingCall, USER, version } from "./handAnsweredService.ts";
import { fireWhenSet, frozenClock, pendingFor, watchTimers } from "./watchTimers.ts";

Deno.test("caught up: a poll that began before the rejoin does not end the catch-up (a missed change is still fetched)", async () => {
  const link = handAnsweredService({
    random: () => 0, // reconnect and poll at once after the drop
    backoff: { initialMs: 1_000, maxMs: 1_000 },
    pollIntervalMs: 50,
  });
  const { calls, subscription } = link;
  const chapters = () => link.changes.map((c) => c.chapter);
  try {
    await link.goLive([version(1)]);
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    const rejoin = await link.channel(2);
    await waitFor("the poll while rejoining", () => calls.length === 2);
    rejoin.state!("SUBSCRIBED"); // the catch-up is queued behind the poll in flight
    // The poll read before chapter 2 committed; chapter 2's broadcast went out before the rejoin.
    calls[1].resolve({ changes: [], next_cursor: "102", has_more: false });
    // The catch-up and its immediate retry fail (a network blip); later rounds would see chapter 2.
    await waitFor("the catch-up", () => calls.length === 3);
    calls[2].reject(new Error("network blip"));
    await waitFor("the catch-up's retry", () => calls.length === 4);
    calls[3].reject(new Error("network blip"));
    await waitFor("a later round", () => calls.length === 5);
    calls[4].resolve({ changes: [version(2)], next_cursor: "103", has_more: false });
    await waitFor("chapter 2", () => chapters().includes(2));
    await waitFor("live again", () => subscription.status === "live");
    assert.deepEqual(chapters(), [1, 2]);
  } finally {
    await link.end();
  }
});

Deno.test("live: a safety read every livePollIntervalMs finds a change whose broadcast was lost, and a failed one keeps the link live", async () => {
  const link = handAnsweredService({ livePollIntervalMs: 50, pollIntervalMs: 60_000 });
  const { calls, changes, subscription } = link;
  try {
    await link.goLive([version(1)]);
    // Chapter 2's broadcast never came (Supabase dropped it over the rate limit).
    await waitFor("a safety read", () => calls.length === 2);
    calls[1].reject(new Error("network blip"));
    await waitFor("the next safety read", () => calls.length === 3);
    assert.equal(subscription.status, "live", "a failed safety read does not take the link out of live");
    calls[2].resolve({ changes: [version(2)], next_cursor: "102", has_more: false });
    await waitFor("chapter 2", () => changes.length === 2);
    assert.deepEqual(changes, [{ chapter: 1, source: "catchup" }, { chapter: 2, source: "poll" }]);
    assert.equal(subscription.status, "live");
  } finally {
    await link.end();
  }
});

const slowBackoff = { random: () => 0.5, backoff: { initialMs: 60_000, maxMs: 60_000 } };

Deno.test("live: livePollIntervalMs 0 turns the safety read off; a drop still starts polling at once", async () => {
  const link = handAnsweredService({ livePollIntervalMs: 0, ...slowBackoff });
  try {
    await link.goLive();
    // No read while live: none made, and no timer set for one (the service's only timer would be it).
    assert.equal(link.calls.length, 1, "no read while live");
    assert.equal(link.timers(), 0, "no safety read scheduled");
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("a poll right after the drop", () => link.calls.length === 2);
  } finally {
    await link.end();
  }
});

Deno.test("live: a drop while the next safety read is far off still starts polling at once", async () => {
  const link = handAnsweredService({ livePollIntervalMs: 60_000, ...slowBackoff });
  try {
    await link.goLive();
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("a poll right after the drop", () => link.calls.length === 2);
  } finally {
    await link.end();
  }
});

Deno.test("live: a drop while a safety read hangs starts polling at once (the hung read is let go)", async () => {
  const link = handAnsweredService({ livePollIntervalMs: 50, ...slowBackoff });
  try {
    await link.goLive();
    await waitFor("a safety read", () => link.calls.length === 2); // never answered
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("a poll right after the drop", () => link.calls.length === 3);
    link.calls[2].resolve({ changes: [version(3)], next_cursor: "103", has_more: false });
    await waitFor("chapter 3", () => link.changes.length === 1);
    assert.equal(link.subscription.status, "polling");
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: while live, the safety read due in a minute is made now and the next one is scheduled", async () => {
  const timers = watchTimers();
  // requestTimeoutMs other than a minute: its timer is not taken for the safety read's.
  const link = handAnsweredService({ livePollIntervalMs: 60_000, requestTimeoutMs: 30_000 });
  const { calls, changes, subscription } = link;
  try {
    await link.goLive([version(1)]);
    // Back in the foreground: chapter 2's broadcast went to a socket the phone had suspended.
    let done = false;
    const sync = subscription.syncNow().then(() => done = true);
    await waitFor("the read", () => calls.length === 2);
    // The read is made and unanswered: nothing else can settle syncNow() (a turn of the event loop
    // lets whatever is already settling settle).
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(done, false, "syncNow resolves when its read has answered, not before");
    calls[1].resolve({ changes: [version(2)], next_cursor: "102", has_more: false });
    await sync;
    assert.deepEqual(changes, [{ chapter: 1, source: "catchup" }, { chapter: 2, source: "poll" }]);
    assert.equal(subscription.status, "live");
    assert.equal(calls.length, 2);
    assert.equal(link.timers(), 1, "one timer: that safety read");
    assert.ok(
      pendingFor(timers, 60_000),
      `the next safety read a minute away, not at once: ${timers.pending()}`,
    );
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("syncNow: a link down and waiting out its backoff joins now and catches up", async () => {
  const link = handAnsweredService({ ...slowBackoff, pollIntervalMs: 60_000 });
  const { calls, changes, subscription } = link;
  try {
    await link.goLive([version(1)]);
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll right after the drop", () => calls.length === 2);
    calls[1].resolve({ changes: [], next_cursor: "101", has_more: false });
    await waitFor("polling", () => subscription.status === "polling");
    // The next join is 30 s away (backoff) and the next poll a minute: the app is back online.
    const sync = subscription.syncNow();
    const rejoin = await link.channel(2);
    await waitFor("the read", () => calls.length === 3);
    calls[2].resolve({ changes: [version(2)], next_cursor: "102", has_more: false });
    await sync;
    rejoin.state!("SUBSCRIBED");
    await waitFor("the catch-up after the join", () => calls.length === 4);
    calls[3].resolve({ changes: [version(3)], next_cursor: "103", has_more: false });
    await waitFor("live", () => subscription.status === "live");
    assert.deepEqual(changes.map((c) => c.chapter), [1, 2, 3]);
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: a round in flight is followed by a fresh one; none after unsubscribe", async () => {
  const link = handAnsweredService({ livePollIntervalMs: 50, pollIntervalMs: 60_000 });
  const { calls, changes, subscription } = link;
  try {
    await link.goLive([version(1)]);
    await waitFor("a safety read", () => calls.length === 2); // in flight: it may have read too early
    const sync = link.service.syncNow(); // every user of the service
    calls[1].resolve({ changes: [], next_cursor: "101", has_more: false });
    await waitFor("the fresh round", () => calls.length === 3);
    calls[2].resolve({ changes: [version(2)], next_cursor: "102", has_more: false });
    await sync;
    assert.deepEqual(changes.map((c) => c.chapter), [1, 2]);
    await subscription.unsubscribe();
    const before = calls.length;
    await subscription.syncNow();
    await link.service.syncNow(USER);
    assert.equal(calls.length, before, "no read for a subscription that has ended");
  } finally {
    await link.end();
  }
});

/** The largest draw `random` may give (a draw of 1 is out of range: the service takes it as this). */
const LARGEST_DRAW = 1 - Number.EPSILON / 2;

Deno.test("polling: failed polls in a row back off (doubling, capped); an answer resets it; Retry-After is honoured", async () => {
  // Every wait is read from the timer the service sets for it and ended by hand (its delays are
  // minutes: none runs out by itself), under a clock that stands still but for those ends.
  const timers = watchTimers();
  const clock = frozenClock();
  const { client, channel } = fakeClient();
  let calls = 0;
  let answer: () => Promise<ChangesPage> = () => Promise.reject(new Error("503 from the API"));
  const service = new RealtimeService(client, {
    changesSince: () => {
      calls++;
      return answer();
    },
    accessToken: "T1",
    pollIntervalMs: 50_000,
    // The join's retry (its first step: 70 s) is never due here; the polls' cap is maxMs.
    backoff: { initialMs: 70_000, maxMs: 800_000 },
    random: () => LARGEST_DRAW, // the longest waits
    log: () => {},
  });
  const subscription = service.subscribeToProgress(USER, () => {});
  /** The next poll is due `ms` from now and not made before: the test ends that wait. */
  const pollAfter = async (ms: number, what: string) => {
    const before = calls;
    await waitFor(what, () => pendingFor(timers, ms) || calls > before);
    await new Promise((resolve) => setTimeout(resolve, 0)); // a read on its way has made its call
    assert.equal(calls, before, `${what}: no poll before its timer`);
    await fireWhenSet(timers, what, ms, clock);
    await waitFor(`the poll after ${what}`, () => calls === before + 1);
  };
  try {
    (await channel(1)).state!("CHANNEL_ERROR", new Error("Realtime unreachable"));
    await waitFor("the first poll", () => calls === 1);
    // Failures 1-5 in a row: twice the interval, then doubling (100, 200, 400 s) up to the cap (800 s).
    for (const [i, wait] of [100_000, 200_000, 400_000, 800_000, 800_000].entries()) {
      await pollAfter(wait, `failure ${i + 1}'s wait`);
    }
    // The 7th poll (after the 6th failure) is answered; the 8th is refused with a 429 and
    // Retry-After: 250 s (as ProgressApiError carries it).
    answer = () => {
      answer = () => Promise.reject(Object.assign(new Error("429"), { details: { retry_after: 250 } }));
      return Promise.resolve({ changes: [], next_cursor: "101", has_more: false });
    };
    await pollAfter(800_000, "failure 6's wait");
    // After the answer the poll interval again, not the backoff's 800 s.
    await pollAfter(50_000, "the interval after an answer");
    assert.ok(!pendingFor(timers, 800_000), `no poll at the backoff's cap: ${timers.pending()}`);
    // The next poll waits for the Retry-After (250 s) and its jitter (up to one interval: 299.999 s
    // at the largest draw), not the backoff's first step (100 s).
    await pollAfter(retryAfterWaitMs(250_000, 50_000, () => LARGEST_DRAW), "the Retry-After's end");
    assert.equal(calls, 9);
  } finally {
    await subscription.unsubscribe();
    await service.close();
    clock.restore();
    timers.restore();
  }
});

Deno.test("syncNow: two in one tick while live, the first read hangs, the link drops: polling starts at once", async () => {
  const link = handAnsweredService({ livePollIntervalMs: 60_000, ...slowBackoff });
  try {
    await link.goLive();
    // One subscription's syncNow and the service's for every user, in the same tick.
    void link.subscription.syncNow();
    void link.service.syncNow();
    await waitFor("the first read", () => link.calls.length === 2); // never answered
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("a poll right after the drop", () => link.calls.length >= 3);
  } finally {
    await link.end();
  }
});

Deno.test("syncNow: no read while the API's Retry-After runs; the rejoin is still made now", async () => {
  const timers = watchTimers();
  // requestTimeoutMs other than a minute: its timer is not taken for the read's.
  const link = handAnsweredService({ ...slowBackoff, pollIntervalMs: 50, requestTimeoutMs: 30_000 });
  const { calls, subscription } = link;
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    await link.goLive();
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll after the drop", () => calls.length === 2);
    // The service's clock stands still: the read's timer is set for the whole wait.
    clock = frozenClock();
    calls[1].reject(Object.assign(new Error("503"), { details: { retry_after: 60 } }));
    await waitFor("offline", () => subscription.status === "offline");
    await subscription.syncNow(); // back in the foreground ten milliseconds later
    await link.channel(2); // the rejoin does not wait for the API
    assert.equal(calls.length, 2, "no read before the minute the API asked for");
    // At its end, jittered (60 s + 25 ms: half of the shorter of the wait and the 50 ms interval).
    const end = retryAfterWaitMs(60_000, 50, slowBackoff.random);
    assert.ok(pendingFor(timers, end), `the read at its end: ${timers.pending()}`);
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("polling: a Retry-After of a day is honoured for five minutes at most", async () => {
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({ ...slowBackoff, log: (line) => lines.push(JSON.parse(line)) });
  try {
    await link.goLive();
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll after the drop", () => link.calls.length === 2);
    link.calls[1].reject(Object.assign(new Error("429"), { details: { retry_after: 86_400 } }));
    await waitFor("its log line", () => lines.some((l) => l.event === "poll_failed"));
    assert.equal(lines.find((l) => l.event === "poll_failed")!.retry_after_ms, 300_000);
  } finally {
    await link.end();
  }
});

const retryAfter = (seconds: number) =>
  Object.assign(new Error("503"), { details: { retry_after: seconds } });

Deno.test("polling: a join that fails while the link polls keeps the polls' pace (their backoff, a Retry-After)", async () => {
  const timers = watchTimers();
  const link = handAnsweredService({
    random: () => 0.5,
    backoff: { initialMs: 100, maxMs: 100 },
    pollIntervalMs: 50,
    requestTimeoutMs: 30_000, // its timer is not taken for the poll's
  });
  const { calls } = link;
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down")); // the first join
    await waitFor("the first poll", () => calls.length === 1);
    // The service's clock stands still: the poll's timer is set for the whole wait.
    clock = frozenClock();
    calls[0].reject(retryAfter(60));
    await waitFor("offline", () => link.subscription.status === "offline");
    for (const n of [2, 3, 4]) (await link.channel(n)).state!("CHANNEL_ERROR", new Error("Realtime down"));
    // The fourth join was asked for once the third failed: every failure has been handled.
    await link.channel(5);
    assert.equal(
      calls.length,
      1,
      "three failed joins later, still no read within the minute the API asked for",
    );
    const end = retryAfterWaitMs(60_000, 50, () => 0.5); // the minute, jittered
    assert.ok(pendingFor(timers, end), `the poll still at the minute's end: ${timers.pending()}`);
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("polling: with Realtime and the API both down, polls back off although every join fails at once", async () => {
  // Every wait is read from the timer the service sets for it and ended by hand (joins: 10 s up to
  // 400 s, half of each step's ceiling; polls: 150 s up to 600 s): none runs out by itself.
  const timers = watchTimers();
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({
    random: () => 0.5,
    backoff: { initialMs: 20_000, maxMs: 800_000 },
    pollIntervalMs: 100_000,
    log: (line) => lines.push(JSON.parse(line)),
  });
  const joinWait = () =>
    lines.filter((l) => l.event === "realtime_unavailable").at(-1)!.retry_in_ms as number;
  try {
    let joins = 1;
    (await link.channel(joins)).state!("CHANNEL_ERROR", new Error("Realtime down"));
    // Reads 1-4 fail; between each and the next, three joins fail the moment they are made. Without
    // the polls' backoff a read per failed join, or one every 100 s; with it 150, 300, 600, 600 s.
    for (const [i, pollWait] of [150_000, 300_000, 600_000, 600_000].entries()) {
      await waitFor(`read ${i + 1}`, () => link.calls.length === i + 1);
      link.calls[i].reject(new Error("network"));
      await waitFor(`the poll after read ${i + 1}`, () => pendingFor(timers, pollWait));
      for (let j = 0; j < 3; j++) {
        await fireWhenSet(timers, `join ${joins + 1}'s wait`, joinWait());
        (await link.channel(++joins)).state!("CHANNEL_ERROR", new Error("Realtime down"));
      }
      // The three failures are handled (#fail runs in the state callback): the next join is set.
      await waitFor("the next join's wait", () => pendingFor(timers, joinWait()));
      await new Promise((resolve) => setTimeout(resolve, 0)); // a read on its way has made its call
      assert.equal(link.calls.length, i + 1, `no read for the failed joins ${joins - 2}-${joins}`);
      await fireWhenSet(timers, `read ${i + 2}'s wait`, pollWait);
    }
    await waitFor("read 5", () => link.calls.length === 5);
    assert.equal(joins, 13);
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("polling: a join made during a Retry-After catches up once it has passed; the API's answer ends it", async () => {
  const timers = watchTimers();
  const link = handAnsweredService({ ...slowBackoff, pollIntervalMs: 50, livePollIntervalMs: 600_000 });
  const { calls, subscription } = link;
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    await link.goLive();
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll after the drop", () => calls.length === 2);
    // The service's clock stands still from the refusal: the join comes within the Retry-After however
    // slowly the machine runs, and the read's timer is set for the whole wait.
    clock = frozenClock();
    calls[1].reject(retryAfter(3));
    await waitFor("offline", () => subscription.status === "offline");
    await subscription.syncNow(); // back online: rejoin now (after the socket teardown), read later
    (await link.channel(2)).state!("SUBSCRIBED"); // within the Retry-After
    // A turn of the event loop: a catch-up begun at the join has made its call by then.
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(calls.length, 2, "the catch-up waits for the Retry-After too");
    const end = retryAfterWaitMs(3_000, 50, slowBackoff.random); // 3 s, jittered
    assert.ok(pendingFor(timers, end), `the catch-up at its end: ${timers.pending()}`);
    clock.advance(end); // the wait is over when that timer fires
    await waitFor("the catch-up", () => calls.length === 3);
    calls[2].resolve({ changes: [version(4)], next_cursor: "104", has_more: false });
    await waitFor("live", () => subscription.status === "live");
    void subscription.syncNow(); // the API has answered since: no longer held back
    await waitFor("a read", () => calls.length === 4);
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("syncNow or a new token right after a live channel dropped rejoin once realtime-js has closed the socket, at the first step's jittered wait after a drop", async () => {
  for (const nudge of ["syncNow", "token"] as const) {
    const timers = watchTimers();
    let draw = slowBackoff.random();
    const link = handAnsweredService({ ...slowBackoff, random: () => draw, livePollIntervalMs: 600_000 });
    let clock: ReturnType<typeof frozenClock> | undefined;
    try {
      await link.goLive();
      // The service's clock stands still from the drop: the rejoin's timer is set for the whole
      // teardown however slowly the machine runs.
      clock = frozenClock();
      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("heartbeat timeout"));
      // The first step's wait after a live channel's drop, as the service draws it (30.8 s here).
      const backoffJoin = rejoinAfterDropDelay(1, slowBackoff.backoff, slowBackoff.random);
      assert.ok(pendingFor(timers, backoffJoin), `${nudge}: the backoff's join first: ${timers.pending()}`);
      // The nudge's rejoin is drawn as the first step's after a drop is, from the drop, that step's
      // ceiling taken as at most the teardown (the app asked for now, not after a 60 s first step):
      // 1.6 s plus the draw (0.25) of 1.6 s. Not at the teardown's end exactly (every device dropped
      // together would rejoin then), never before it.
      draw = 0.25;
      const nudgeJoin = rejoinAfterDropDelay(1, { initialMs: SOCKET_TEARDOWN_MS, maxMs: 60_000 }, () => draw);
      assert.equal(nudgeJoin, 2_000);
      if (nudge === "syncNow") void link.subscription.syncNow();
      else await link.service.setAccessToken("T2");
      await waitFor(`${nudge}: the rejoin's timer at its draw`, () => pendingFor(timers, nudgeJoin));
      assert.equal(link.service.stats().joinAttempts, 1, `${nudge}: no join before it`);
      assert.ok(!pendingFor(timers, backoffJoin), `${nudge}: not the backoff's join`);
      assert.ok(!pendingFor(timers, SOCKET_TEARDOWN_MS), `${nudge}: not the teardown's end exactly`);
      clock.advance(nudgeJoin);
      await link.channel(2);
    } finally {
      clock?.restore();
      timers.restore();
      await link.end();
    }
  }
});

Deno.test("a device clock set back by an hour after a drop (NTP on waking) does not put off the rejoin or the reads", async () => {
  const realNow = Date.now;
  const link = handAnsweredService({ ...slowBackoff, pollIntervalMs: 50, livePollIntervalMs: 600_000 });
  try {
    await link.goLive();
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("heartbeat timeout"));
    await waitFor("the poll after the drop", () => link.calls.length === 2);
    link.calls[1].reject(retryAfter(1));
    await waitFor("offline", () => link.subscription.status === "offline");
    const steppedBack = realNow() - 3_600_000;
    const started = realNow();
    Date.now = () => steppedBack + (realNow() - started);
    void link.subscription.syncNow(); // the phone wakes: rejoin once the socket is torn down
    await link.channel(2); // within seconds, not an hour
    await waitFor("the read after the Retry-After", () => link.calls.length === 3);
  } finally {
    Date.now = realNow;
    await link.end();
  }
});

Deno.test("polling: a read queued behind one that is told to wait (Retry-After) is not made before the wait is over", async () => {
  const link = handAnsweredService({
    random: () => 0.5,
    backoff: { initialMs: 60_000, maxMs: 60_000 },
    pollIntervalMs: 50,
  });
  try {
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down")); // the first join: polling
    await waitFor("the first poll", () => link.calls.length === 1);
    // Back in the foreground: a fresh round queues behind the poll (at once, as syncNow() is called).
    let synced = false;
    void link.subscription.syncNow().then(() => synced = true);
    link.calls[0].reject(retryAfter(60));
    // The queued round ends either way: held back (syncNow() resolves "failed"), or with a read made.
    await waitFor("the queued round", () => synced || link.calls.length > 1);
    assert.equal(link.calls.length, 1, "no read within the minute the API asked for");
  } finally {
    await link.end();
  }
});

Deno.test("live: the safety read after a Retry-After waits for it, not only for livePollIntervalMs", async () => {
  const timers = watchTimers();
  // requestTimeoutMs other than a minute: its timer is not taken for the next read's.
  // Its end undrawn (random 0): the Retry-After's end exactly.
  const link = handAnsweredService({ livePollIntervalMs: 50, requestTimeoutMs: 30_000, random: () => 0 });
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    await link.goLive();
    await waitFor("a safety read", () => link.calls.length === 2);
    // The service's clock stands still: the next read's timer is set for the whole wait.
    clock = frozenClock();
    link.calls[1].reject(retryAfter(60));
    await waitFor("the next read's timer at the Retry-After's end", () => pendingFor(timers, 60_000));
    assert.equal(link.calls.length, 2);
    assert.equal(link.timers(), 1, `that read only, not one every 50 ms: ${timers.pending()}`);
    assert.equal(link.subscription.status, "live");
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("syncNow: a safety read queued behind another and ended by a drop is not made; polling follows and unsubscribe does not wait", async () => {
  const signals: AbortSignal[] = [];
  const calls: PendingCall[] = [];
  const link = handAnsweredService({
    livePollIntervalMs: 60_000,
    requestTimeoutMs: 200,
    changesSince: (_cursor, { signal }) => {
      signals.push(signal);
      return new Promise((resolve, reject) => calls.push({ resolve, reject }));
    },
    ...slowBackoff,
  });
  const answerAll = () => {
    for (const call of calls) call.resolve({ changes: [], next_cursor: "101", has_more: false });
  };
  try {
    (await link.channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve({ changes: [], next_cursor: "101", has_more: false });
    await waitFor("live", () => link.subscription.status === "live");
    void link.subscription.syncNow(); // two in one tick: the second queues behind the first
    void link.service.syncNow();
    await waitFor("the first safety read", () => calls.length === 2); // never answered
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("a poll after the drop", () => calls.length >= 3);
    assert.equal(signals[2].aborted, false, "made with a live signal, not the ended safety read's");
    // The never-answered reads never settle: an unsubscribe that waited for them would never end.
    // The limit only tells that hang from a slow machine (as long as waitFor waits).
    const unsubscribed = link.subscription.unsubscribe().then(() => "done");
    let hangTimer: ReturnType<typeof setTimeout> | undefined;
    const hang = new Promise<string>((resolve) => (hangTimer = setTimeout(() => resolve("waiting"), 20_000)));
    try {
      assert.equal(await Promise.race([unsubscribed, hang]), "done");
    } finally {
      clearTimeout(hangTimer);
    }
  } finally {
    answerAll();
    await link.end();
  }
});

Deno.test("syncNow during a Retry-After, live with livePollIntervalMs 0: the read is made when the wait ends", async () => {
  const timers = watchTimers();
  const link = handAnsweredService({
    livePollIntervalMs: 0,
    pollIntervalMs: 30,
    heartbeatReplyTimeoutMs: 0,
    random: () => 0, // the Retry-After's end undrawn
  });
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    await link.goLive();
    const first = link.subscription.syncNow(); // back in the foreground
    await waitFor("the read", () => link.calls.length === 2);
    // The service's clock stands still: the second syncNow() comes within the wait however slowly
    // the machine runs.
    clock = frozenClock();
    link.calls[1].reject(retryAfter(0.1)); // the API: not for 100 ms
    assert.equal(await first, "failed");
    assert.equal(await link.subscription.syncNow(), "failed"); // back online: the app asks again
    assert.equal(link.calls.length, 2, "not within the Retry-After");
    const pending = timers.pending();
    assert.ok(
      pending.length === 1 && pending[0] > 99 && pending[0] <= 101,
      `one read, at its end: ${pending}`,
    );
    clock.restore();
    clock = undefined;
    await waitFor("the read after it", () => link.calls.length === 3);
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("polling: a poll timer for a Retry-After's end that fires a fraction of a millisecond early still reads (not a whole backoff step later)", async () => {
  const timers = watchTimers();
  const link = handAnsweredService({
    pollIntervalMs: 100,
    heartbeatReplyTimeoutMs: 0,
    // The failed poll's draw at its lowest (one poll interval, 100 ms, where it could be up to 200):
    // the next poll is due at the Retry-After's end (150 ms).
    random: () => 0,
    backoff: { initialMs: 60_000, maxMs: 1_000 },
  });
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down"));
    await waitFor("the first poll", () => link.calls.length === 1);
    clock = frozenClock();
    link.calls[0].reject(retryAfter(0.15));
    // The clock stands still: the poll's timer is set for the whole wait, 150 ms.
    const forTheWait = (ms: number) => ms > 149 && ms <= 151;
    await waitFor("the poll timer for the Retry-After's end", () => timers.pending().some(forTheWait));
    // When it fires, the service's clock reads half a millisecond before the wait's end, as a timer
    // counting whole milliseconds may fire.
    clock.advance(149.5);
    // Either the read is made, or the round is held back and the next poll set a backoff step away
    // (100 ms): whichever the service does, the test sees it without waiting for a time.
    await waitFor(
      "the read, or the next poll's timer",
      () => link.calls.length === 2 || timers.pending().includes(100),
    );
    assert.equal(link.calls.length, 2, "the poll at the Retry-After's end, not a whole backoff step later");
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("onRead hears how every read of the link ended (its catch-up, syncNow's), and syncNow resolves with it; one a Retry-After holds resolves failed at once, unheard", async () => {
  const link = handAnsweredService({
    livePollIntervalMs: 0,
    pollIntervalMs: 60_000,
    heartbeatReplyTimeoutMs: 0,
  });
  const heard: string[] = [];
  const off = link.subscription.onRead((outcome) => heard.push(outcome));
  try {
    await link.goLive();
    assert.deepEqual(heard, ["done"], "the catch-up, read to the end");

    // Answered with more to read and the cursor held (a long transaction): behind.
    const behind = link.subscription.syncNow();
    await waitFor("the read", () => link.calls.length === 2);
    link.calls[1].resolve({ changes: [], next_cursor: "101", has_more: true });
    assert.equal(await behind, "behind");

    // Failed, the API asking for a minute.
    const failed = link.subscription.syncNow();
    await waitFor("the read", () => link.calls.length === 3);
    link.calls[2].reject(retryAfter(60));
    assert.equal(await failed, "failed");
    assert.deepEqual(heard, ["done", "behind", "failed"]);

    // Within that minute no read is made: failed at once, and nothing is heard.
    assert.equal(await link.subscription.syncNow(), "failed");
    assert.deepEqual([link.calls.length, heard], [3, ["done", "behind", "failed"]]);
    off();
  } finally {
    await link.end();
  }
});
