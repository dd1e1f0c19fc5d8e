// A joined channel's drop cuts off every read in flight or queued, not only the safety reads of a live
// link: the catch-up in flight, a read queued behind the catch-up that makes the link live (a
// syncNow() made meanwhile), which begins before the link counts as live, and a read begun before the
// join (a syncNow() made while joining), which the catch-up queues behind. A request of theirs that
// hangs would otherwise hold the poll the drop starts at once (the rounds queue) until it timed out
// (requestTimeoutMs), and the changes the channel no longer brings with it. Against the stand-in
// client, with changesSince answered by hand; requestTimeoutMs is a minute, so a poll that comes while
// the hung call is unanswered shows the cut (the waits are hang guards only).

import assert from "node:assert/strict";
import type { ReadOutcome } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { handAnsweredService, version } from "./handAnsweredService.ts";

const MINUTES = 600_000;

const answered = (chapter?: number) => ({
  changes: chapter === undefined ? [] : [version(chapter)],
  next_cursor: String(100 + (chapter ?? 1)),
  has_more: false,
});

function heard(link: ReturnType<typeof handAnsweredService>): ReadOutcome[] {
  const outcomes: ReadOutcome[] = [];
  link.subscription.onRead((outcome) => outcomes.push(outcome));
  return outcomes;
}

/** No safety read, no heartbeat watch, no rejoin within the test; a request may hang a minute. */
const options = {
  livePollIntervalMs: 0,
  heartbeatReplyTimeoutMs: 0,
  pollIntervalMs: MINUTES,
  requestTimeoutMs: MINUTES,
  backoff: { initialMs: MINUTES, maxMs: MINUTES },
  random: () => 0.5,
};

Deno.test("drop: a catch-up that hangs when the channel drops is cut off: the poll after the drop reads at once, not after requestTimeoutMs", async () => {
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({ ...options, log: (line) => lines.push(JSON.parse(line)) });
  try {
    const reads = heard(link);
    (await link.channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => link.calls.length === 1); // it hangs
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll after the drop", () => link.calls.length === 2);
    link.calls[1].resolve(answered(2));
    await waitFor("chapter 2", () => link.changes.length === 1);
    assert.deepEqual(link.changes, [{ chapter: 2, source: "poll" }]);
    await waitFor("polling", () => link.subscription.status === "polling");
    assert.deepEqual(reads, ["done"], "one read heard: the poll's, not the cut catch-up");
    const events = lines.map((l) => l.event);
    assert.ok(!events.includes("catchup_failed"), `no catchup_failed: ${JSON.stringify(events)}`);
    assert.equal(lines.filter((l) => l.event === "catchup_cut_off").length, 1, JSON.stringify(events));
  } finally {
    await link.end();
  }
});

Deno.test("drop: a syncNow() read queued behind the catch-up that made the link live, hanging when the channel drops, is cut off and resolves as the poll after the drop", async () => {
  for (const pollAnswers of [true, false]) {
    const link = handAnsweredService(options);
    try {
      (await link.channel(1)).state!("SUBSCRIBED");
      await waitFor("the catch-up", () => link.calls.length === 1);
      const sync = link.subscription.syncNow(); // back in the foreground: queued behind the catch-up
      link.calls[0].resolve(answered());
      await waitFor("live", () => link.subscription.status === "live");
      await waitFor("the syncNow() read", () => link.calls.length === 2); // it hangs
      const reads = heard(link);
      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
      await waitFor("the poll after the drop", () => link.calls.length === 3);
      if (pollAnswers) link.calls[2].resolve(answered(2));
      else link.calls[2].reject(new Error("the API is down too"));
      const outcome = pollAnswers ? "done" : "failed";
      assert.equal(await sync, outcome);
      assert.deepEqual(reads, [outcome], "one read heard: the poll's, not the cut one");
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

Deno.test("drop: a read begun before the join (a syncNow() while joining), hanging when the joined channel drops, is cut off too: the poll after the drop reads at once and the syncNow() resolves as it ends", async () => {
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({
    ...options,
    joinGraceMs: Infinity, // no read of the join's own while it is unanswered
    log: (line) => lines.push(JSON.parse(line)),
  });
  try {
    const reads = heard(link);
    const channel = await link.channel(1);
    const sync = link.subscription.syncNow(); // back online while the join is in flight
    await waitFor("the syncNow() read", () => link.calls.length === 1); // it hangs
    channel.state!("SUBSCRIBED"); // the catch-up queues behind it
    channel.state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll after the drop", () => link.calls.length === 2);
    link.calls[1].resolve(answered(2));
    assert.equal(await sync, "done");
    assert.deepEqual(link.changes, [{ chapter: 2, source: "poll" }]);
    assert.deepEqual(reads, ["done"], "one read heard: the poll's, not the cut one");
    await waitFor("polling", () => link.subscription.status === "polling");
    const events = lines.map((l) => l.event);
    assert.ok(!events.includes("poll_failed"), `no poll_failed: ${JSON.stringify(events)}`);
    assert.equal(lines.filter((l) => l.event === "poll_cut_off").length, 1, JSON.stringify(events));
  } finally {
    await link.end();
  }
});
