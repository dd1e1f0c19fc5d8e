// The join ladder (capped exponential backoff, full jitter) of a link whose channel is down: where it
// starts again (a syncNow() from the app) and where it must not (a server that closes every join it
// accepts). Against the stand-in client, with changesSince answered by hand and the jitter fixed, so
// each wait is read from the log (`retry_in_ms`) and the order of joins is driven by hand.

import assert from "node:assert/strict";
import { handAnsweredService } from "./handAnsweredService.ts";

/** A service whose log lines are kept, and whose reads are answered (empty) as they come. */
function ladderService(options: Parameters<typeof handAnsweredService>[0]) {
  const logs: Record<string, unknown>[] = [];
  const link = handAnsweredService({
    pollIntervalMs: 600_000,
    livePollIntervalMs: 0,
    joinGraceMs: Infinity,
    log: (line) => logs.push(JSON.parse(line)),
    ...options,
  });
  let answered = 0;
  const answering = setInterval(() => {
    while (answered < link.calls.length) {
      link.calls[answered++].resolve({ changes: [], next_cursor: "101", has_more: false });
    }
  }, 5);
  const failures = () => logs.filter((l) => l.event === "realtime_unavailable");
  const end = async () => {
    clearInterval(answering);
    await link.end();
  };
  return { ...link, logs, failures, end };
}

Deno.test("syncNow: a link waiting out a long backoff step joins now and starts the ladder again at its first step, with one join however often it is called", async () => {
  let quick = true; // retries at once (jitter 0) until the ladder has climbed
  const link = ladderService({
    random: () => (quick ? 0 : 0.5),
    backoff: { initialMs: 1_000, maxMs: 600_000 },
  });
  try {
    for (let n = 1; n <= 6; n++) (await link.channel(n)).state!("CHANNEL_ERROR", new Error("refused"));
    quick = false;
    (await link.channel(7)).state!("CHANNEL_ERROR", new Error("refused"));
    const step7 = link.failures().at(-1)!;
    assert.deepEqual([step7.attempt, step7.retry_in_ms], [7, 32_000], "the 7th step: half of 64 s");
    // Back in the foreground: the app calls syncNow from two places in the same tick.
    await Promise.all([link.subscription.syncNow(), link.subscription.syncNow(), link.service.syncNow()]);
    const rejoin = await link.channel(8);
    assert.equal(link.service.stats().joinAttempts, 8, "one join for the three calls");
    rejoin.state!("CHANNEL_ERROR", new Error("refused"));
    const after = link.failures().at(-1)!;
    assert.deepEqual(
      [after.attempt, after.retry_in_ms],
      [1, 500],
      "the join syncNow made counts as the ladder's first: its retry waits the first step",
    );
    await link.channel(9); // that first step (0.5 s), not the 8th (64 s)
    assert.equal(link.service.stats().joinAttempts, 9);
  } finally {
    await link.end();
  }
});
