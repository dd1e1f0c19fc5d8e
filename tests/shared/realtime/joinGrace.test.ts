// A join that goes unanswered: Supabase refuses a join only after its 5 s CHANNEL_ERROR_BACKOFF_MS and
// gives up on an unanswered one at the join timeout (10 s), so RealtimeService polls once a join made
// while nothing reads has waited joinGraceMs. Against the stand-in client, with changesSince answered
// by hand (the real client and endpoint: tests/integration/realtime-service.test.ts).

import assert from "node:assert/strict";
import { waitFor } from "../../integration/realtime_support.ts";
import { handAnsweredService, version } from "./handAnsweredService.ts";
import { watchTimers } from "./watchTimers.ts";

const page = (chapter: number) => ({
  changes: [version(chapter)],
  next_cursor: String(100 + chapter),
  has_more: false,
});

Deno.test("join grace: an unanswered join is followed by a poll; once joined, the catch-up after the join decides live", async () => {
  const link = handAnsweredService({ joinGraceMs: 50, pollIntervalMs: 60_000 });
  const { calls, subscription } = link;
  try {
    const channel = await link.channel(1);
    await waitFor("the poll while the join is unanswered", () => calls.length === 1);
    calls[0].resolve(page(1));
    await waitFor("polling", () => subscription.status === "polling");
    channel.state!("SUBSCRIBED");
    await waitFor("the catch-up after the join", () => calls.length === 2);
    assert.equal(subscription.status, "polling", "the poll before the join does not make it live");
    calls[1].resolve(page(2));
    await waitFor("live", () => subscription.status === "live");
    assert.deepEqual(link.changes, [{ chapter: 1, source: "poll" }, { chapter: 2, source: "catchup" }]);
  } finally {
    await link.end();
  }
});

Deno.test("join grace: a join answered in time costs no extra read", async () => {
  const link = handAnsweredService({ joinGraceMs: 200, pollIntervalMs: 60_000, livePollIntervalMs: 0 });
  const { calls } = link;
  try {
    await link.goLive([version(1)]);
    assert.equal(calls.length, 1, "only the catch-up");
    // Nothing left to read later: the grace's timer went with the join's answer (and the safety read is off).
    assert.equal(link.timers(), 0, "no grace timer left to poll");
  } finally {
    await link.end();
  }
});

Deno.test("join grace: a refusal that comes after the grace keeps the polls' pace, and nothing is left running", async () => {
  const timers = watchTimers();
  // requestTimeoutMs other than a minute: its timer is not taken for the poll's.
  const link = handAnsweredService({ joinGraceMs: 50, pollIntervalMs: 60_000, requestTimeoutMs: 30_000 });
  const { calls, subscription } = link;
  try {
    const channel = await link.channel(1);
    await waitFor("the poll while the join is unanswered", () => calls.length === 1);
    calls[0].resolve(page(1));
    await waitFor("polling", () => subscription.status === "polling");
    channel.state!("CHANNEL_ERROR", new Error("Unauthorized: You do not have permissions"));
    // A turn of the event loop: a read made at the refusal has made its call by then.
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(calls.length, 1, "no second read at the refusal");
    assert.ok(
      timers.pending().includes(60_000),
      `the next poll still a poll interval away: ${timers.pending()}`,
    );
  } finally {
    timers.restore();
    await link.end();
  }
  assert.equal(link.timers(), 0);
});

Deno.test("join grace: Infinity waits for the join's answer", async () => {
  const link = handAnsweredService({ joinGraceMs: Infinity });
  const { calls } = link;
  try {
    await link.channel(1);
    assert.equal(calls.length, 0);
    assert.equal(link.timers(), 0, "no grace timer to poll when it ends");
  } finally {
    await link.end();
  }
});

Deno.test("join grace: a read the app asked for (syncNow) that is still running when the grace ends is not followed by a second one", async () => {
  const timers = watchTimers();
  // requestTimeoutMs other than a minute: its timer is not taken for the poll's.
  const link = handAnsweredService({ joinGraceMs: 50, pollIntervalMs: 60_000, requestTimeoutMs: 30_000 });
  const { calls, subscription } = link;
  try {
    await link.channel(1); // the join goes unanswered
    assert.ok(timers.pending().includes(50), `the grace's timer: ${timers.pending()}`);
    const sync = subscription.syncNow(); // back in the foreground at once: a read now
    await waitFor("the app's read", () => calls.length === 1);
    await waitFor("the grace's end, the read still in flight", () => !timers.pending().includes(50));
    calls[0].resolve(page(1));
    await sync;
    // A turn of the event loop: a read queued behind the app's has made its call by then.
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(calls.length, 1, "the grace found the link reading: no second read queued behind it");
    assert.ok(timers.pending().includes(60_000), `the next poll a poll interval away: ${timers.pending()}`);
    assert.equal(subscription.status, "polling");
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("join grace: the grace's poll in flight when the join is answered is cut off; a catch-up that fails then is made again at the polls' backoff, not at once nor at that poll's pace", async () => {
  const timers = watchTimers();
  const link = handAnsweredService({ joinGraceMs: 50, pollIntervalMs: 60_000, random: () => 0.5 });
  const { calls, subscription } = link;
  try {
    const channel = await link.channel(1);
    await waitFor("the poll while the join is unanswered", () => calls.length === 1);
    channel.state!("SUBSCRIBED"); // answered while that poll is in flight: it is cut off
    await waitFor("the catch-up after the join", () => calls.length === 2);
    calls[0].resolve(page(1)); // its late answer is ignored, and it schedules no poll
    calls[1].reject(new Error("the API did not answer"));
    // The first failure in a row: drawn in [60 s, 120 s], 90 s with random 0.5; the one read scheduled
    // (no poll of the cut read's a poll interval away, no call made at once).
    await waitFor("offline", () => subscription.status === "offline");
    await waitFor("the catch-up's retry timer", () => timers.pending().length === 1);
    assert.deepEqual(timers.pending(), [90_000]);
    assert.equal(calls.length, 2);
    void subscription.syncNow(); // made now by the app
    await waitFor("the catch-up asked again", () => calls.length === 3);
    calls[2].resolve(page(2));
    await waitFor("live", () => subscription.status === "live");
    assert.deepEqual(link.changes, [{ chapter: 2, source: "catchup" }]);
  } finally {
    await link.end();
    timers.restore();
  }
});
