// When the web app's outbox is sent (examples/web/lib/client/outboxSchedule.ts): retries after
// failures in a row back off (full jitter under a doubling ceiling, capped at 60 s) and reset once a
// send gets through; a Retry-After holds every send until it has passed (at most 5 minutes); a new
// edit skips the backoff only after a failure with no HTTP answer (once per retry); back online and the reader's own
// request skip it always. The clock and timers are the test's own: minutes pass in no time.
// The same schedule against the real function over HTTP: tests/web/outbox.test.ts.

import assert from "node:assert/strict";
import { NetworkError, ProgressApiError, ServiceUnavailableError } from "@shared/progress/api.ts";
import { retryAfterMsOf } from "@shared/http/retryAfter.ts";
import type { FlushResult } from "../../examples/web/lib/client/outbox.ts";
import {
  OUTBOX_BACKOFF,
  OutboxSchedule,
  type SendReason,
} from "../../examples/web/lib/client/outboxSchedule.ts";
import { isNetworkFailure } from "../../examples/web/lib/progressClient.ts";
import { memoryStorage, virtualTimers } from "./support.ts";

const down = () => new ServiceUnavailableError(503, "service_unavailable", "the API is down");
const noNetwork = () => new NetworkError(0, "network_error", "Failed to fetch");
/** A 429 or 503 with Retry-After, as the API client throws it (shared/progress/api.ts). */
const asksToWait = (seconds: number, status = 429) =>
  new ProgressApiError(status, "rate_limited", "slow down", { details: { retry_after: seconds } });
const failed = (error: unknown): FlushResult => ({ outcome: "failed", error });

/**
 * A schedule as the web app wires it (isNetworkFailure, Retry-After read and capped by the shared
 * client code), over a stand-in send whose answers the test queues: "done" once none is left, and
 * a promise to hold a send under way.
 */
function harness(options: { random?: () => number } = {}) {
  const clock = virtualTimers();
  const sends: number[] = [];
  const answers: (FlushResult | Promise<FlushResult>)[] = [];
  let pending = 0;
  let online = true;
  const schedule = new OutboxSchedule({
    send: async () => {
      sends.push(clock.now);
      const taken = pending;
      const result = await (answers.shift() ?? { outcome: "done" });
      if (result.outcome === "done") pending -= taken; // writes queued meanwhile are still pending
      return result;
    },
    hasPending: () => pending > 0,
    isOnline: () => online,
    retryAfterMs: (error) => retryAfterMsOf(error),
    isNetworkFailure,
    random: options.random ?? (() => 0.5),
    timers: clock.timers,
  });
  return {
    clock,
    schedule,
    /** When each send began (the test's clock). */
    sends,
    answers,
    queueWrite() {
      pending++;
    },
    setOnline(value: boolean) {
      online = value;
    },
    /** Asks for a send and waits for whatever it started. */
    async ask(reason: SendReason) {
      schedule.request(reason);
      await schedule.settled();
    },
    /** Moves the clock forward and waits for the sends that timers started. */
    async advance(ms: number) {
      clock.advance(ms);
      await schedule.settled();
    },
    /** Moves the clock to the armed retry and waits for the send it starts; the wait it was. */
    async untilRetry(): Promise<number> {
      const at = schedule.nextSendAt;
      assert.ok(at !== null, "a retry is armed");
      const waited = at - clock.now;
      clock.advance(waited);
      await schedule.settled();
      return waited;
    },
  };
}

Deno.test("outbox schedule: failures in a row back off, doubling under full jitter up to 60 s; a send that gets through resets it", async () => {
  const t = harness({ random: () => 0.999 });
  t.queueWrite();
  for (let i = 0; i < 9; i++) t.answers.push(failed(down()));
  await t.ask("queued");
  const waits: number[] = [];
  for (let i = 0; i < 8; i++) waits.push(await t.untilRetry());
  const ceilings = [3_000, 6_000, 12_000, 24_000, 48_000, 60_000, 60_000, 60_000];
  assert.deepEqual(waits, ceilings.map((c) => Math.floor(0.999 * c)));
  assert.equal(t.schedule.failures, 9);
  assert.equal(t.sends.length, 9, "one send per wait, none in between");

  // The API is back: the next retry gets through, and nothing more is armed.
  await t.untilRetry();
  assert.deepEqual([t.schedule.failures, t.schedule.nextSendAt, t.clock.armed], [0, null, 0]);
  // A later failure starts again from the first step.
  t.queueWrite();
  t.answers.push(failed(down()));
  await t.ask("edit");
  assert.equal(t.schedule.nextSendAt! - t.clock.now, Math.floor(0.999 * OUTBOX_BACKOFF.initialMs));
});

Deno.test("outbox schedule: a send that failed after the API answered some of its writes starts the backoff again from the first step", async () => {
  const t = harness({ random: () => 0.999 });
  t.queueWrite();
  t.answers.push(failed(down()), failed(down()), failed(down()), {
    outcome: "failed",
    error: down(),
    answered: 100,
  });
  await t.ask("queued");
  await t.untilRetry();
  await t.untilRetry();
  assert.equal(t.schedule.failures, 3);
  await t.untilRetry(); // it saved a batch of 100 and then met a 503
  assert.equal(t.schedule.failures, 1, "the first failure of a new run");
  assert.equal(t.schedule.nextSendAt! - t.clock.now, Math.floor(0.999 * OUTBOX_BACKOFF.initialMs));
});

Deno.test("outbox schedule: the jitter spreads each wait over [0, ceiling)", async () => {
  const draws = [0.25, 0, 0.5];
  const t = harness({ random: () => draws.shift()! });
  t.queueWrite();
  t.answers.push(failed(down()), failed(down()), failed(down()));
  await t.ask("queued");
  assert.deepEqual([await t.untilRetry(), await t.untilRetry(), await t.untilRetry()], [750, 0, 6_000]);
});

Deno.test("outbox schedule: nothing is sent before a Retry-After has passed, whatever asks; the retry after it is spread too", async () => {
  const t = harness();
  t.queueWrite();
  t.answers.push(failed(asksToWait(30)));
  await t.ask("edit");
  const failedAt = t.clock.now;
  assert.equal(t.schedule.retryAfterUntil, failedAt + 30_000);
  assert.equal(
    t.schedule.nextSendAt,
    failedAt + 30_000 + 1_500,
    "the wait, then the jitter (0.5 of 3 s) on top",
  );

  await t.advance(10_000);
  for (const reason of ["queued", "edit", "reachable"] as const) await t.ask(reason);
  assert.equal(t.schedule.nextSendAt, failedAt + 31_500, "these keep the retry where it was");
  for (const reason of ["online", "user"] as const) await t.ask(reason);
  assert.equal(t.sends.length, 1, "not one send within the Retry-After");
  assert.equal(t.schedule.nextSendAt, failedAt + 30_000, "back online: sent as soon as the wait is over");

  await t.advance(19_999);
  assert.equal(t.sends.length, 1);
  await t.advance(1);
  assert.deepEqual(t.sends.slice(1), [failedAt + 30_000]);
  assert.deepEqual([t.schedule.failures, t.schedule.retryAfterUntil], [0, 0], "it got through: all reset");
});

Deno.test("outbox schedule: a 503's Retry-After counts like a 429's, and one longer than the backoff's cap still holds", async () => {
  const t = harness({ random: () => 0 });
  t.queueWrite();
  t.answers.push(failed(asksToWait(90, 503)));
  await t.ask("queued");
  const failedAt = t.clock.now;
  await t.advance(OUTBOX_BACKOFF.maxMs); // a whole backoff ceiling: still within the server's 90 s
  await t.ask("user");
  assert.equal(t.sends.length, 1);
  assert.equal(await t.untilRetry(), 30_000);
  assert.deepEqual(t.sends, [failedAt, failedAt + 90_000]);
});

Deno.test("outbox schedule: a Retry-After of a day is honoured for 5 minutes at most", async () => {
  const t = harness({ random: () => 0 });
  t.queueWrite();
  t.answers.push(failed(asksToWait(86_400)));
  await t.ask("queued");
  const failedAt = t.clock.now;
  assert.equal(t.schedule.retryAfterUntil, failedAt + 300_000);
  assert.equal(await t.untilRetry(), 300_000);
  assert.equal(t.sends.length, 2);
});

Deno.test("outbox schedule: after no network, an edit or Realtime coming back sends at once", async () => {
  const t = harness({ random: () => 0.999 });
  t.queueWrite();
  t.answers.push(failed(noNetwork()), failed(noNetwork()), failed(noNetwork()));
  await t.ask("queued");
  await t.advance(100);
  t.queueWrite();
  await t.ask("edit");
  assert.equal(t.sends.length, 2, "the edit did not wait out the backoff");
  await t.advance(100);
  await t.ask("reachable");
  assert.equal(t.sends.length, 3, "nor did Realtime's coming back");
  await t.ask("queued");
  assert.equal(t.sends.length, 3, "another tab's writes wait for the retry");
  assert.equal(t.schedule.failures, 3, "every failed send counts");
});

Deno.test("outbox schedule: after no answer, one edit tries at once; while that try gets none either, later edits go with the retry", async () => {
  // In a browser, "no answer" is also a gateway's or the platform's error page without CORS headers
  // (a 502, a 504, a function that does not boot): fetch throws as if the network were down. Every
  // page turn must not be one more request (four, with the API client's own retries) to it.
  const t = harness({ random: () => 0.999 });
  t.queueWrite();
  for (let i = 0; i < 5; i++) t.answers.push(failed(noNetwork()));
  await t.ask("queued");
  await t.advance(100);
  t.queueWrite();
  await t.ask("edit");
  assert.equal(t.sends.length, 2, "the first edit tries at once");
  const retryAt = t.schedule.nextSendAt;
  for (let i = 0; i < 5; i++) {
    await t.advance(100);
    t.queueWrite();
    await t.ask("edit");
  }
  assert.equal(t.sends.length, 2, "the edits after it wait for the retry");
  assert.equal(t.schedule.nextSendAt, retryAt, "and do not move it");
  await t.untilRetry();
  assert.equal(t.sends.length, 3, "the retry goes (and gets no answer)");
  await t.advance(100);
  t.queueWrite();
  await t.ask("edit");
  assert.equal(t.sends.length, 4, "after the retry, an edit may try at once again");
  await t.ask("reachable");
  assert.equal(t.sends.length, 5, "Realtime coming back still sends at once");
  assert.equal(t.schedule.failures, 5);
});

Deno.test("outbox schedule: after an answer from the server, an edit goes with the next retry; back online or the reader's request go at once", async () => {
  for (const error of [down(), new ProgressApiError(404, "http_404", "gateway: no such function")]) {
    const t = harness({ random: () => 0.999 });
    t.queueWrite();
    t.answers.push(failed(error), failed(error));
    await t.ask("queued");
    const retryAt = t.schedule.nextSendAt;
    await t.advance(100);
    t.queueWrite();
    await t.ask("edit");
    await t.ask("reachable");
    assert.equal(t.sends.length, 1, `${error.status}: the edit waits for the retry`);
    assert.equal(t.schedule.nextSendAt, retryAt, `${error.status}: and does not move it`);
    await t.ask("online");
    assert.equal(t.sends.length, 2, `${error.status}: back online is sent at once`);
    assert.equal(t.schedule.failures, 2);
    await t.ask("user");
    assert.equal(t.sends.length, 3, `${error.status}: so is the reader's own request`);
    assert.equal(t.schedule.failures, 0);
  }
});

Deno.test("outbox schedule: a send asked for while one is under way follows it, by the same rules", async () => {
  const t = harness({ random: () => 0.999 });
  let answer!: (result: FlushResult) => void;
  const hold = () => new Promise<FlushResult>((resolve) => answer = resolve);

  // The send under way fails at the server: the edit made meanwhile waits for the retry.
  t.queueWrite();
  t.answers.push(hold());
  t.schedule.request("queued");
  t.queueWrite();
  t.schedule.request("edit");
  t.schedule.request("queued");
  assert.equal(t.sends.length, 1, "one send at a time");
  answer(failed(down()));
  await t.schedule.settled();
  assert.equal(t.sends.length, 1);
  assert.equal(t.schedule.nextSendAt! - t.clock.now, 2_997);

  // The send under way gets through: the edit made meanwhile is sent right after it.
  t.answers.push(hold());
  t.clock.advance(2_997); // the retry starts
  t.queueWrite();
  t.schedule.request("edit");
  answer({ outcome: "done" });
  await t.schedule.settled();
  assert.equal(t.sends.length, 3);
  assert.equal(t.schedule.failures, 0);
});

Deno.test("outbox schedule: offline, the retry timer sends nothing; the online event does, and an edit still tries", async () => {
  const t = harness({ random: () => 0.999 });
  t.queueWrite();
  t.answers.push(failed(noNetwork()), failed(noNetwork()));
  await t.ask("queued");
  t.setOnline(false);
  await t.untilRetry();
  assert.deepEqual(
    [t.sends.length, t.clock.armed],
    [1, 0],
    "the browser says offline: its online event will come",
  );
  await t.ask("queued");
  assert.equal(t.sends.length, 1);
  t.queueWrite();
  await t.ask("edit");
  assert.equal(t.sends.length, 2, "an edit still tries (navigator.onLine can be wrong)");
  t.setOnline(true);
  await t.ask("online");
  assert.equal(t.sends.length, 3);
  assert.equal(t.schedule.failures, 0);
});

Deno.test("outbox schedule: signed out is no failure of the API; the writes are tried again at the first step's pace", async () => {
  const t = harness({ random: () => 0.999 });
  t.queueWrite();
  t.answers.push({ outcome: "signed out" }, { outcome: "signed out" });
  await t.ask("queued");
  assert.equal(t.schedule.failures, 0);
  assert.equal(await t.untilRetry(), OUTBOX_BACKOFF.initialMs);
  assert.equal(await t.untilRetry(), OUTBOX_BACKOFF.initialMs, "not backed off");
});

Deno.test("outbox schedule: nothing pending, nothing sent; disposed, no timer left and nothing sent", async () => {
  const t = harness();
  for (const reason of ["queued", "edit", "reachable", "online", "user"] as const) await t.ask(reason);
  assert.deepEqual([t.sends.length, t.clock.armed], [0, 0]);

  t.queueWrite();
  t.answers.push(failed(down()));
  await t.ask("queued");
  assert.equal(t.clock.armed, 1);
  t.schedule.dispose();
  assert.equal(t.clock.armed, 0);
  await t.ask("user");
  await t.advance(600_000);
  assert.equal(t.sends.length, 1);
});

Deno.test("outbox schedule: a send that throws (a bug, not an answer) is retried like a failure", async () => {
  const t = harness({ random: () => 0.5 });
  t.queueWrite();
  t.answers.push(Promise.reject(new TypeError("boom")));
  await t.ask("queued");
  assert.equal(t.schedule.failures, 1);
  assert.equal(await t.untilRetry(), 1_500);
  assert.equal(t.sends.length, 2);
});

// ---- the tabs of one browser: one shared outbox, one shared schedule, one tab sending at a time

/** A lock as navigator.locks.request grants it: one holder at a time, the others in the order they asked. */
function memoryLock() {
  let tail: Promise<unknown> = Promise.resolve();
  let held = 0;
  let mostHeld = 0;
  let abandoned = 0;
  return {
    lock(run: () => Promise<void>, signal?: AbortSignal): Promise<unknown> {
      const granted = tail.then(async () => {
        if (signal?.aborted) {
          abandoned++; // withdrawn while waiting: never granted (navigator.locks rejects with AbortError)
          throw new DOMException("aborted", "AbortError");
        }
        mostHeld = Math.max(mostHeld, ++held);
        try {
          await run();
        } finally {
          held--;
        }
      });
      tail = granted.catch(() => {});
      return granted;
    },
    /** Requests withdrawn (their signal aborted) before they were granted. */
    get abandoned() {
      return abandoned;
    },
    /** The most holders at one time (1: never two). */
    get mostHeld() {
      return mostHeld;
    },
  };
}

const SCHEDULE_KEY = "readsync.outboxSchedule.reader";

/** Lets every promise callback queued so far run (the virtual clock does not move). */
const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

/**
 * A browser whose tabs share one saved outbox (a count of writes), one storage and one lock, on one
 * clock; each tab's performance.now() has an origin of its own (a tab opened later counts from 0
 * then), the wall clock is the browser's. A send takes what is saved when it starts ("done" settles
 * those); the answers are the test's, shared by every tab, "done" once none is left.
 */
function browserOfTabs(options: { random?: () => number; locks?: boolean } = {}) {
  const clock = virtualTimers();
  const storage = memoryStorage();
  const locks = memoryLock();
  const sends: { tab: string; at: number }[] = [];
  const answers: (FlushResult | Promise<FlushResult>)[] = [];
  let saved = 0;
  const tabs: OutboxSchedule[] = [];
  const open = (name: string) => {
    const origin = clock.now - 1_000 * tabs.length; // performance.now() of this tab
    const schedule = new OutboxSchedule({
      send: async () => {
        sends.push({ tab: name, at: clock.now });
        const taken = saved;
        const result = await (answers.shift() ?? { outcome: "done" });
        if (result.outcome === "done") saved -= taken;
        return result;
      },
      hasPending: () => saved > 0, // as if every storage event had arrived
      isOnline: () => true,
      retryAfterMs: (error) => retryAfterMsOf(error),
      isNetworkFailure,
      random: options.random ?? (() => 0.5),
      timers: { ...clock.timers, now: () => clock.timers.now() - origin },
      tabs: { storage, key: SCHEDULE_KEY, lock: options.locks === false ? undefined : locks.lock },
    });
    tabs.push(schedule);
    return schedule;
  };
  const settled = () => Promise.all(tabs.map((tab) => tab.settled()));
  return {
    clock,
    storage,
    locks,
    sends,
    answers,
    open,
    /** The next send's answer is held until the returned function gives it. */
    holdNextAnswer(): (result: FlushResult) => void {
      let give!: (result: FlushResult) => void;
      answers.push(new Promise<FlushResult>((resolve) => give = resolve));
      return give;
    },
    queueWrite() {
      saved++;
    },
    get saved() {
      return saved;
    },
    settled,
    /** Asks every tab for a send (the same event in each) and waits for what it started. */
    async askAll(reason: SendReason) {
      for (const tab of tabs) tab.request(reason);
      await settled();
    },
    /** Moves the clock to the earliest armed timer of any tab and waits for what it started. */
    async untilNextTimer() {
      assert.ok(clock.nextAt !== null, "a retry is armed");
      clock.advance(clock.nextAt - clock.now);
      await settled();
    },
  };
}

Deno.test("outbox schedule, tabs: a Retry-After one tab was told holds every tab of the browser, and a tab opened (or reloaded) meanwhile", async () => {
  const b = browserOfTabs();
  const tabA = b.open("A");
  const tabB = b.open("B");
  b.queueWrite();
  b.answers.push(failed(asksToWait(30)));
  tabA.request("edit");
  await b.settled();
  const failedAt = b.clock.now;
  await b.askAll("queued"); // tab B heard of it (the storage event): its retry is armed by the same moment
  b.clock.advance(10_000);
  for (const reason of ["queued", "edit", "reachable", "online", "user"] as const) await b.askAll(reason);
  const tabC = b.open("C"); // a new tab, or a reload
  for (const reason of ["queued", "edit", "online", "user"] as const) {
    tabC.request(reason);
    await b.settled();
  }
  assert.equal(b.sends.length, 1, "not one send within the Retry-After, from any tab");
  assert.deepEqual([tabB.failures, tabC.failures], [1, 1], "the failure is the browser's");

  b.clock.advance(failedAt + 30_000 - 1 - b.clock.now);
  await b.settled();
  assert.equal(b.sends.length, 1);
  b.clock.advance(1);
  await b.settled();
  assert.deepEqual(b.sends.slice(1).map((s) => s.at), [failedAt + 30_000], "one send as soon as it passed");
  assert.equal(b.saved, 0);
  if (b.clock.nextAt !== null) await b.untilNextTimer(); // a retry still armed in a tab finds nothing to send
  assert.equal(b.sends.length, 2);
  assert.equal(b.storage.getItem(SCHEDULE_KEY), null, "it got through: nothing left to share");
});

Deno.test("outbox schedule, tabs: three tabs retry the shared outbox once per backoff step, not three times, and one request goes back online", async () => {
  const b = browserOfTabs({ random: () => 0.999 });
  const tabs = [b.open("A"), b.open("B"), b.open("C")];
  b.queueWrite();
  for (let i = 0; i < 4; i++) b.answers.push(failed(down()));
  await b.askAll("queued"); // every tab opened with writes waiting
  assert.equal(b.sends.length, 1, "the first tab to take the lock sends; the others then wait for the retry");
  const waits: number[] = [];
  for (let i = 0; i < 3; i++) {
    const before = b.clock.now;
    await b.untilNextTimer();
    waits.push(b.clock.now - before);
  }
  assert.equal(b.sends.length, 4, "one send per step");
  assert.deepEqual(
    waits,
    [3_000, 6_000, 12_000].map((c) => Math.floor(0.999 * c)),
    "the ceiling doubles as for one tab",
  );
  assert.deepEqual(tabs.map((t) => t.failures), [4, 4, 4]);

  // Back online in every tab at once (no answer at all meanwhile): one request, not three.
  b.answers.push(failed(noNetwork()));
  await b.askAll("online");
  assert.equal(b.sends.length, 5);
  await b.askAll("online");
  assert.equal(b.sends.length, 6, "and when it gets none, one again");
  assert.equal(b.locks.mostHeld, 1, "never two tabs sending at once");
  assert.equal(b.saved, 0);
  assert.deepEqual(tabs.map((t) => t.failures), [0, 0, 0]);
});

Deno.test("outbox schedule, tabs: a tab that asks while another sends waits for it, then sends only what is left", async () => {
  const b = browserOfTabs();
  const tabA = b.open("A");
  const tabB = b.open("B");
  let answer = b.holdNextAnswer();
  b.queueWrite();
  tabA.request("edit");
  tabB.request("queued"); // tab B has it too (storage event): it is under way in tab A
  await tick();
  assert.deepEqual(b.sends.map((s) => s.tab), ["A"], "tab B does not send it a second time");
  answer({ outcome: "done" });
  await b.settled();
  assert.deepEqual(b.sends.map((s) => s.tab), ["A"], "nothing left for tab B");

  // Tab B saves while tab A's send is under way: B's write follows it, from B, once A is done.
  answer = b.holdNextAnswer();
  b.queueWrite();
  tabA.request("edit");
  await tick(); // tab A's send has begun (the lock is granted asynchronously)
  b.queueWrite();
  tabB.request("edit");
  await tick();
  assert.equal(b.sends.length, 2);
  answer({ outcome: "done" }); // it settles the one write that was saved when it began (counted in `taken`)
  await b.settled();
  assert.deepEqual(b.sends.map((s) => s.tab), ["A", "A", "B"]);
  assert.deepEqual([b.saved, b.locks.mostHeld], [0, 1]);
});

Deno.test("outbox schedule, tabs: after no answer, one edit of the browser tries at once per retry, whichever tab it is made in", async () => {
  const b = browserOfTabs({ random: () => 0.999 });
  const tabA = b.open("A");
  const tabB = b.open("B");
  const tabC = b.open("C");
  b.queueWrite();
  b.answers.push(failed(noNetwork()), failed(noNetwork()), failed(noNetwork()));
  tabA.request("queued");
  await b.settled();
  b.queueWrite();
  tabB.request("edit");
  await b.settled();
  assert.equal(b.sends.length, 2, "tab B's edit tries at once");
  b.queueWrite();
  tabC.request("edit");
  tabA.request("edit");
  await b.settled();
  assert.equal(b.sends.length, 2, "the next edits, in any tab, go with the retry");
  await b.untilNextTimer();
  assert.equal(b.sends.length, 3, "the retry goes, from one tab");
  b.queueWrite();
  tabC.request("edit");
  await b.settled();
  assert.equal(b.sends.length, 4, "after the retry, an edit may try at once again");
});

Deno.test("outbox schedule, tabs: a shared deadline further ahead than any the schedule sets (the wall clock was set back) is not held", async () => {
  const b = browserOfTabs();
  const tab = b.open("A");
  const wall = b.clock.timers.wallNow();
  b.storage.setItem(
    SCHEDULE_KEY,
    JSON.stringify({
      failures: 2,
      sharedAt: wall, // written just now: only its deadlines are out of reach
      noAnswer: false,
      editMaySkip: false,
      retryAt: wall + 3_600_000,
      retryAfterUntil: wall + 3_600_000,
    }),
  );
  b.queueWrite();
  tab.request("queued");
  await b.settled();
  assert.equal(b.sends.length, 1, "sent at once, not an hour later");
  // One within reach is held, whatever tab wrote it.
  b.queueWrite();
  b.storage.setItem(
    SCHEDULE_KEY,
    JSON.stringify({
      failures: 1,
      sharedAt: wall,
      noAnswer: false,
      editMaySkip: false,
      retryAt: wall + 60_000,
      retryAfterUntil: wall + 50_000,
    }),
  );
  tab.request("user");
  await b.settled();
  b.clock.advance(49_999);
  await b.settled();
  assert.equal(b.sends.length, 1);
  b.clock.advance(1);
  await b.settled();
  assert.equal(b.sends.length, 2, "sent once the Retry-After passed, by this tab's own clock");
});

Deno.test("outbox schedule, tabs: a retry that comes due before the browser reports the lock let go still goes", async () => {
  // navigator.locks.request's promise may settle a task after the callback's (the Web Locks spec releases
  // the lock on its own task queue), after the send recorded its failure and armed the retry: a short
  // retry's timer may run first, and was dropped as "a send is under way" with nothing left to ask again.
  const clock = virtualTimers();
  const sends: number[] = [];
  const answers: FlushResult[] = [failed(down())];
  let release = () => {};
  let granted = 0;
  const schedule = new OutboxSchedule({
    send: () => {
      sends.push(clock.now);
      return Promise.resolve(answers.shift() ?? { outcome: "done" });
    },
    hasPending: () => sends.length < 2,
    isOnline: () => true,
    retryAfterMs: (error) => retryAfterMsOf(error),
    isNetworkFailure,
    random: () => 0.0003, // the first step's jitter: a retry 0 ms after the failure
    timers: clock.timers,
    tabs: {
      storage: memoryStorage(),
      key: SCHEDULE_KEY,
      lock: async (run) => {
        await run();
        if (++granted === 1) await new Promise<void>((resolve) => release = resolve); // the first send's
      },
    },
  });
  schedule.request("queued");
  await tick();
  assert.equal(sends.length, 1);
  assert.equal(schedule.nextSendAt, clock.now, "the retry is due at once");
  clock.advance(0); // its timer runs while the lock's request is still settling
  release();
  await schedule.settled();
  if (clock.nextAt !== null) clock.advance(clock.nextAt - clock.now);
  await schedule.settled();
  assert.equal(sends.length, 2, "the retry was not lost");
});

Deno.test("outbox schedule, tabs: a run of failures no tab has carried on for 15 minutes is over: a tab opened later starts at the first step", async () => {
  const b = browserOfTabs();
  const tabA = b.open("A");
  b.queueWrite();
  for (let i = 0; i < 5; i++) b.answers.push(failed(down()));
  tabA.request("queued");
  await b.settled();
  for (let i = 0; i < 4; i++) await b.untilNextTimer();
  assert.equal(tabA.failures, 5);
  tabA.dispose(); // the reader closed the tab during the outage

  // Reopened within 15 minutes, the run goes on: the next failure waits as the sixth one does.
  b.clock.advance(10 * 60_000);
  const tabB = b.open("B");
  b.answers.push(failed(down()));
  tabB.request("queued");
  await b.settled();
  assert.equal(tabB.failures, 6);
  assert.equal(b.clock.nextAt! - b.clock.now, 0.5 * OUTBOX_BACKOFF.maxMs);
  tabB.dispose();

  // Reopened the next day: a fresh start, the first retry within 3 s, not 60.
  b.clock.advance(24 * 3_600_000);
  const tabC = b.open("C");
  b.answers.push(failed(down()));
  tabC.request("queued");
  await b.settled();
  assert.equal(tabC.failures, 1);
  assert.equal(b.clock.nextAt! - b.clock.now, 0.5 * OUTBOX_BACKOFF.initialMs);
});

Deno.test("outbox schedule, tabs: the reader's Sync now in a tab that does not hold the lock sends no write twice", async () => {
  const b = browserOfTabs();
  const tabA = b.open("A");
  const tabB = b.open("B");
  let answer!: (result: FlushResult) => void;

  // Tab A is sending the write when the reader presses Sync now in tab B: B waits for A's send, which
  // answered it, and sends nothing.
  answer = b.holdNextAnswer();
  b.queueWrite();
  tabA.request("edit");
  await tick();
  const pressedInB = tabB.sendNow();
  await tick();
  assert.deepEqual(b.sends.map((s) => s.tab), ["A"], "B waits for the lock");
  answer({ outcome: "done" });
  assert.equal(await pressedInB, null, "B sent nothing: A's send answered it");
  assert.deepEqual(b.sends.map((s) => s.tab), ["A"]);

  // A's send fails with no answer: B's Sync now, pressed meanwhile, counts as answered by it (one
  // request of the browser at that moment), and the write goes with the retry, once.
  answer = b.holdNextAnswer();
  b.queueWrite();
  tabA.request("edit");
  await tick();
  const pressedAgain = tabB.sendNow();
  await tick();
  answer(failed(noNetwork()));
  assert.equal(await pressedAgain, null);
  assert.deepEqual(b.sends.map((s) => s.tab), ["A", "A"], "not sent again by B at once");
  await b.untilNextTimer();
  assert.equal(b.sends.length, 3, "the retry sends it once, from one tab");
  assert.deepEqual([b.saved, b.locks.mostHeld], [0, 1]);

  // Pressed again in B with nothing in flight: B sends at once, and says how it ended.
  b.queueWrite();
  assert.deepEqual(await tabB.sendNow(), { outcome: "done" });
  assert.deepEqual([b.sends.length, b.sends[3].tab, b.saved], [4, "B", 0]);
});

Deno.test("outbox schedule, tabs: disposed while it waits for the lock, a tab gives the wait up and never sends", async () => {
  const b = browserOfTabs();
  const tabA = b.open("A");
  const tabB = b.open("B");
  const answer = b.holdNextAnswer();
  b.queueWrite();
  tabA.request("edit");
  await tick();
  b.queueWrite();
  tabB.request("user"); // waits for A's lock
  await tick();
  tabB.dispose(); // the page moved on (another user signed in): its wait is given up
  answer({ outcome: "failed", error: noNetwork() });
  await b.settled();
  assert.deepEqual(b.sends.map((s) => s.tab), ["A"], "B never sent");
  assert.equal(b.locks.abandoned, 1, "B's request for the lock was withdrawn");
});

Deno.test("outbox schedule, tabs: a Retry-After answering the send of a tab disposed meanwhile (its user changed, the provider reopened) still holds the other tabs", async () => {
  const b = browserOfTabs();
  const closing = b.open("A");
  const next = b.open("B"); // another tab, or the session that replaced A's in the same tab
  const answer = b.holdNextAnswer();
  b.queueWrite();
  closing.request("edit");
  await tick();
  next.request("queued"); // waits for A's lock
  await tick();
  closing.dispose(); // A's send is under way: its answer still comes
  answer(failed(asksToWait(30, 503)));
  await b.settled();
  assert.deepEqual(b.sends.map((s) => s.tab), ["A"], "B does not go the moment A lets go of the lock");
  assert.ok(JSON.parse(b.storage.getItem(SCHEDULE_KEY) ?? "{}").retryAfterUntil > 0, "the answer is shared");
  const pressed = next.sendNow(); // nor when the reader asks
  assert.equal(await pressed, null);
  assert.equal(b.sends.length, 1);
  await b.untilNextTimer();
  assert.deepEqual(b.sends.map((s) => s.tab), ["A", "B"]);
  assert.ok(b.sends[1].at - b.sends[0].at >= 30_000, "B's send waited the Retry-After out");
  assert.equal(b.clock.armed, 0, "the disposed tab armed no timer");
});

for (
  const [how, at] of [
    ["its wait fails (a rejection)", "reject"],
    ["it throws before the lock is asked for", "throw"],
    ["it throws once the lock is held", "throw under the lock"],
  ] as const
) {
  Deno.test(`outbox schedule: a send whose \`ready\` fails (${how}) still goes, as a send that throws is a failure: not ended with nothing sent and no retry armed`, async () => {
    const clock = virtualTimers();
    const sends: number[] = [];
    let pending = 1;
    let asked = 0;
    let grants = 0;
    const schedule = new OutboxSchedule({
      send: () => {
        sends.push(clock.now);
        pending = 0;
        return Promise.resolve({ outcome: "done" });
      },
      // The first look (before the lock is asked for) or the second (once it is held) fails; then none.
      ready: () => {
        asked++;
        if (at === "reject" && asked === 1) return Promise.reject(new Error("a bug in the wait"));
        if (at === "throw" && asked === 1) throw new Error("a bug before the lock");
        if (at === "throw under the lock" && asked === 2) throw new Error("a bug under the lock");
        return null;
      },
      hasPending: () => pending > 0,
      isOnline: () => true,
      retryAfterMs: () => undefined,
      isNetworkFailure,
      random: () => 0.5,
      timers: clock.timers,
      tabs: {
        storage: memoryStorage(),
        key: "readsync.outboxSchedule.test",
        lock: async (run) => {
          grants++;
          await run();
        },
      },
    });
    schedule.request("edit");
    await schedule.settled();
    assert.ok(asked >= 2, `ready looked at before the lock and under it (${asked})`);
    assert.equal(grants, 1, "the lock taken once");
    assert.deepEqual(sends, [clock.now], "the write is sent at once");
    assert.equal(pending, 0);
    assert.equal(schedule.nextSendAt, null, "nothing left to retry");
  });
}
