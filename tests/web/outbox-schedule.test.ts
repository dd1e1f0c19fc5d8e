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
import { virtualTimers } from "./support.ts";

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
