// Devices an overloaded API refused together are all given the same Retry-After: each waits it out and
// then a share of it more (drawn up to the shorter of the Retry-After and pollIntervalMs), so they do not
// all come back at its end together; none reads before it ends. Against the stand-in client, with
// changesSince answered by hand; the service's clock is frozen and the wait scheduled read off the
// timers pending (watchTimers), none waited for.

import assert from "node:assert/strict";
import { retryAfterWaitMs } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { handAnsweredService } from "./handAnsweredService.ts";
import { frozenClock, watchTimers } from "./watchTimers.ts";

const MINUTES = 600_000;

const retryAfter = (seconds: number) =>
  Object.assign(new Error("429"), { details: { retry_after: seconds } });

/** Whether a timer is pending for `ms` (to a millisecond: the service's clock reads fractions). */
const pendingFor = (timers: ReturnType<typeof watchTimers>, ms: number) =>
  timers.pending().some((delay) => Math.abs(delay - ms) < 1);

Deno.test("Retry-After jitter: the pure draw is never below the Retry-After and spreads over the shorter of it and pollIntervalMs", () => {
  assert.equal(retryAfterWaitMs(60_000, 10_000, () => 0), 60_000);
  assert.equal(retryAfterWaitMs(60_000, 10_000, () => 0.5), 65_000);
  assert.equal(retryAfterWaitMs(60_000, 10_000, () => 0.999), 69_990);
  assert.equal(retryAfterWaitMs(2_000, 10_000, () => 0.5), 3_000);
});

Deno.test("Retry-After jitter: polling devices refused with the same Retry-After (60 s) poll again spread over the poll interval after its end, none before", async () => {
  for (const draw of [0, 0.5, 0.999]) {
    const timers = watchTimers();
    const lines: Record<string, unknown>[] = [];
    const link = handAnsweredService({
      livePollIntervalMs: 0,
      heartbeatReplyTimeoutMs: 0,
      pollIntervalMs: 10_000,
      requestTimeoutMs: MINUTES,
      backoff: { initialMs: MINUTES, maxMs: MINUTES }, // no rejoin within the test; the polls' cap
      random: () => draw,
      log: (line) => lines.push(JSON.parse(line)),
    });
    let clock: ReturnType<typeof frozenClock> | undefined;
    try {
      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down")); // polls at once
      await waitFor("the poll", () => link.calls.length === 1);
      clock = frozenClock(); // the wait's end, as the service reads it, stands still
      link.calls[0].reject(retryAfter(60));
      await waitFor("offline", () => link.subscription.status === "offline");
      // The failure's backoff (10-20 s) is shorter: the Retry-After's end, drawn, decides.
      const expected = 60_000 + Math.floor(draw * 10_000);
      await waitFor(`draw ${draw}: the next poll's timer`, () => !timers.pending().includes(MINUTES));
      assert.ok(pendingFor(timers, expected), `draw ${draw}: at ${expected}: ${timers.pending()}`);
      const failed = lines.find((l) => l.event === "poll_failed")!;
      assert.equal(failed.retry_after_ms, 60_000);
      assert.equal(failed.wait_ms, expected);
      assert.equal(link.calls.length, 1);
    } finally {
      clock?.restore();
      timers.restore();
      await link.end();
    }
  }
});

Deno.test("Retry-After jitter: a short Retry-After (2 s) is spread over as long as itself, not a whole poll interval: a live link's syncNow() read held by it", async () => {
  const timers = watchTimers();
  const link = handAnsweredService({
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    pollIntervalMs: 10_000,
    requestTimeoutMs: MINUTES,
    random: () => 0.5,
  });
  let clock: ReturnType<typeof frozenClock> | undefined;
  try {
    await link.goLive();
    const sync = link.subscription.syncNow();
    await waitFor("the read", () => link.calls.length === 2);
    clock = frozenClock();
    link.calls[1].reject(retryAfter(2));
    assert.equal(await sync, "failed");
    await waitFor("the read again's timer", () => !timers.pending().includes(MINUTES));
    assert.equal(timers.pending().length, 1, `one read scheduled: ${timers.pending()}`);
    assert.ok(pendingFor(timers, 3_000), `2 s and half of 2 s more: ${timers.pending()}`);
  } finally {
    clock?.restore();
    timers.restore();
    await link.end();
  }
});
