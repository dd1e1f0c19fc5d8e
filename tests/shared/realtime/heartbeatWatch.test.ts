// The heartbeat watch: a live link whose heartbeat reply is late reads at once and at the poll
// interval until a reply comes, beside the app's own heartbeat callback, which keeps every status
// and is given back. Against the stand-in client (realtime-js calling the callback by hand); the
// real client over a frozen socket is in tests/integration/realtime-resilience.test.ts. Where when a
// wait ends decides, the service's waits are long (seconds to minutes) and the test ends each one by
// hand (watchTimers' fire): what is scheduled is read from the timers pending, never from a sleep.

import assert from "node:assert/strict";
import { createClient, type RealtimeClient } from "@supabase/supabase-js";
import { watchHeartbeats } from "../../../shared/realtime/heartbeatWatch.ts";
import { SOCKET_TEARDOWN_MS } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { handAnsweredService, version } from "./handAnsweredService.ts";
import { fireWhenSet, frozenClock, pendingFor, watchTimers } from "./watchTimers.ts";

const OTHER_USER = "00000000-0000-4000-8000-0000000000c2";
type HandAnswered = ReturnType<typeof handAnsweredService>;

/** Answers every read made so far (nothing new) until `done`: a rejoin's polls and catch-up. */
async function answerUntil(link: HandAnswered, what: string, done: () => boolean) {
  await waitFor(what, () => {
    for (const call of link.calls) call.resolve({ changes: [], next_cursor: "150", has_more: false });
    return done();
  }, { timeoutMs: 20_000 });
}

const quietLive = { livePollIntervalMs: 600_000, pollIntervalMs: 60, heartbeatReplyTimeoutMs: 40 };
/** As quietLive, with waits no test sees run out by themselves: each is ended by hand. */
const handTimed = { livePollIntervalMs: 600_000, pollIntervalMs: 30_000, heartbeatReplyTimeoutMs: 10_000 };

/** A turn of the event loop: a read already on its way (a promise chain) has made its call by then. */
const settled = () => new Promise((resolve) => setTimeout(resolve, 0));

Deno.test("heartbeat watch: a late reply makes a live link read now and every pollIntervalMs until the reply comes", async () => {
  const timers = watchTimers();
  const fake = fakeClient();
  const link = handAnsweredService(handTimed, fake);
  const answer = (n: number, rows: unknown[] = []) =>
    link.calls[n].resolve({ changes: rows, next_cursor: String(101 + n), has_more: false });
  try {
    await link.goLive([version(1)]);
    fake.heartbeat("sent");
    assert.ok(pendingFor(timers, 10_000), `the reply's wait: ${timers.pending()}`);
    fake.heartbeat("ok"); // in time: nothing to do
    assert.ok(!pendingFor(timers, 10_000), "the reply came: its wait is over");
    await settled();
    assert.equal(link.calls.length, 1, "a reply in time makes no read");
    assert.equal(link.timers(), 1, `the safety read only: ${timers.pending()}`);

    fake.heartbeat("sent"); // the socket's path died: no reply
    timers.fire(10_000); // the reply's wait runs out
    await waitFor("the read when the reply is late", () => link.calls.length === 2);
    answer(1, [version(2)]); // what the dead socket did not bring
    await fireWhenSet(timers, "the next read at the poll interval", 30_000);
    await waitFor("that read", () => link.calls.length === 3);
    answer(2);
    await fireWhenSet(timers, "and the next", 30_000);
    await waitFor("that read", () => link.calls.length === 4);
    assert.equal(link.subscription.status, "live", "the channel has not dropped: still live");
    answer(3);
    await waitFor("the next read at the poll interval", () => pendingFor(timers, 30_000));
    fake.heartbeat("ok"); // the reply came after all (a slow network, not a dead one)
    assert.ok(!pendingFor(timers, 30_000), `no read at the poll interval any more: ${timers.pending()}`);
    assert.ok(
      pendingFor(timers, 600_000),
      `back to livePollIntervalMs once the reply came: ${timers.pending()}`,
    );
    assert.equal(link.timers(), 1, `that read only: ${timers.pending()}`);
    await settled();
    assert.equal(link.calls.length, 4);
    assert.deepEqual(link.changes, [{ chapter: 1, source: "catchup" }, { chapter: 2, source: "poll" }]);
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("heartbeat watch: the reply timeout is at most half of realtime-js's heartbeat interval; a link that is not live makes no extra read", async () => {
  const timers = watchTimers();
  // Heartbeats every 8 s: realtime-js gives up at 8 s, so the watch waits 4 s, not its 5 s default.
  const fake = fakeClient(undefined, 8_000);
  const lines: Record<string, unknown>[] = [];
  const link = handAnsweredService({
    livePollIntervalMs: 600_000,
    pollIntervalMs: 60_000,
    log: (line) => lines.push(JSON.parse(line)),
  }, fake);
  try {
    (await link.channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => link.calls.length === 1);
    fake.heartbeat("sent"); // still catching up: not live
    timers.fire(4_000); // the reply is late
    fake.heartbeat("ok");
    link.calls[0].resolve({ changes: [], next_cursor: "101", has_more: false });
    await waitFor("live", () => link.subscription.status === "live");
    await settled();
    assert.equal(link.calls.length, 1, "no read for a reply late while not live");
    fake.heartbeat("sent");
    // The wait armed: half the interval, not the 5 s default; no read before it runs out.
    assert.ok(pendingFor(timers, 4_000), `the reply's wait: ${timers.pending()}`);
    assert.ok(!pendingFor(timers, 5_000), `not the default: ${timers.pending()}`);
    await settled();
    assert.equal(link.calls.length, 1, "no read before the reply is late");
    timers.fire(4_000);
    await waitFor("the read", () => link.calls.length === 2);
    const late = lines.filter((l) => l.event === "heartbeat_reply_late");
    assert.deepEqual(late.map((l) => l.waited_ms), [4_000]);
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("heartbeat watch: a drop while the reply is late takes over as any drop; after the rejoin the pace is livePollIntervalMs again", async () => {
  const fake = fakeClient();
  const timers = watchTimers();
  const link = handAnsweredService(
    { ...quietLive, random: () => 0, backoff: { initialMs: 1, maxMs: 1 } },
    fake,
  );
  try {
    await link.goLive();
    fake.heartbeat("sent");
    await waitFor("the late read", () => link.calls.length === 2);
    fake.heartbeat("timeout"); // realtime-js gives the socket up and fails the channel
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("heartbeat timeout"));
    const rejoin = await link.channel(2);
    rejoin.state!("SUBSCRIBED");
    await answerUntil(link, "live again", () => link.subscription.status === "live");
    // The one read scheduled is the safety read, livePollIntervalMs (10 min) away; none at the poll
    // interval (60 ms), and no reply timer left running (40 ms).
    assert.equal(link.timers(), 1, `one timer: ${timers.pending()}`);
    assert.ok(timers.pending().includes(600_000), `the safety read: ${timers.pending()}`);
    assert.ok(!timers.pending().includes(60), `no read at the poll interval once live on a new socket`);
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("heartbeat watch: the app's own heartbeat callback keeps every status, one installed later (onHeartbeat) replaces it behind the watch, and close gives it back", async () => {
  const fake = fakeClient();
  const seen: string[] = [];
  const appCallback = (status: string) => seen.push(`app:${status}`);
  const laterCallback = (status: string) => seen.push(`later:${status}`);
  fake.realtime.onHeartbeat(appCallback);
  const link = handAnsweredService(quietLive, fake);
  try {
    await link.goLive();
    assert.notEqual(fake.socketCallback(), appCallback, "the watch is where phoenix calls the callback");
    assert.equal(fake.realtime.heartbeatCallback, appCallback, "reading the callback gives the app's");
    assert.equal(link.service.stats().heartbeatWatches, 1);
    fake.heartbeat("sent");
    await waitFor("the late read", () => link.calls.length === 2);
    fake.heartbeat("ok");
    assert.deepEqual(seen, ["app:sent", "app:ok"]);
    link.calls[1].resolve({ changes: [], has_more: false });

    // A connection widget mounted later installs its own callback: it replaces the app's, and the
    // watch stays (no rejoin needed).
    fake.realtime.onHeartbeat(laterCallback);
    assert.equal(fake.realtime.heartbeatCallback, laterCallback);
    fake.heartbeat("sent");
    await waitFor("a late read after the app's onHeartbeat()", () => link.calls.length === 3);
    assert.deepEqual(seen.slice(2), ["later:sent"]);
  } finally {
    await link.end();
  }
  assert.equal(fake.socketCallback(), laterCallback, "close gives phoenix the app's callback back");
  assert.equal(fake.realtime.heartbeatCallback, laterCallback);
  assert.equal(link.service.stats().heartbeatWatches, 0);
});

Deno.test("heartbeat watch, real realtime-js 2.119 client: an app callback that chains the one it replaced runs once per status, asks the token no more often than without the watch, and removal gives phoenix the app's callback", () => {
  // The common "do not clobber" pattern: keep the callback found, install one that calls it.
  const chainAppCallback = (realtime: RealtimeClient, seen: string[]) => {
    const previous = realtime.heartbeatCallback;
    realtime.onHeartbeat((status, latency) => {
      previous(status, latency);
      seen.push(status);
    });
  };
  const clientWithoutNetwork = () => {
    const realtime = createClient("http://127.0.0.1:9", "anon-key", {
      auth: { persistSession: false, autoRefreshToken: false },
    }).realtime;
    const internals = realtime as unknown as {
      accessToken: () => Promise<string | null>;
      socketAdapter: { getSocket(): { heartbeatCallback: (status: string) => void } };
    };
    const counts = { tokenAsks: 0 };
    internals.accessToken = () => {
      counts.tokenAsks++;
      return Promise.resolve("T1");
    };
    // What phoenix calls: the socket's callback.
    return { realtime, counts, phoenixCalls: internals.socketAdapter.getSocket() };
  };

  const plain = clientWithoutNetwork();
  const plainSeen: string[] = [];
  chainAppCallback(plain.realtime, plainSeen);
  plain.phoenixCalls.heartbeatCallback("sent");
  plain.phoenixCalls.heartbeatCallback("ok");

  const watchedClient = clientWithoutNetwork();
  const watched: string[] = [];
  const watcher = (status: string) => void watched.push(status);
  const stop = watchHeartbeats(watchedClient.realtime, watcher);
  assert.ok(stop, "the watch finds realtime-js 2.119's callback slot");
  const seen: string[] = [];
  chainAppCallback(watchedClient.realtime, seen); // after the watch is in
  // The service asks for the watch again before every join: it stays as it is.
  assert.ok(watchHeartbeats(watchedClient.realtime, watcher));
  watchedClient.phoenixCalls.heartbeatCallback("sent");
  watchedClient.phoenixCalls.heartbeatCallback("ok");
  assert.deepEqual(seen, ["sent", "ok"]);
  assert.deepEqual(seen, plainSeen);
  assert.deepEqual(watched, ["sent", "ok"]);
  assert.equal(watchedClient.counts.tokenAsks, plain.counts.tokenAsks, "token asks as without the watch");
  stop();
  watchedClient.phoenixCalls.heartbeatCallback("sent");
  assert.deepEqual(watched, ["sent", "ok"], "no longer watched");
  assert.deepEqual(seen, ["sent", "ok", "sent"], "phoenix calls the app's callback itself again");
});

Deno.test("heartbeat watch: a reply timer of a heartbeat sent before the link rejoined (on a socket that closed) does not mark the new socket late", async () => {
  const timers = watchTimers();
  // The service's clock stands still but for the rejoin's wait: the heartbeat was sent 1.6 s before
  // the rejoin, however fast or slowly the machine runs.
  const clock = frozenClock();
  const fake = fakeClient();
  const link = handAnsweredService({
    ...handTimed, // the reply's wait (10 s) is longer than the rejoin takes (SOCKET_TEARDOWN_MS, 1.6 s)
    random: () => 0,
    backoff: { initialMs: 1, maxMs: 1 },
  }, fake);
  try {
    await link.goLive();
    fake.heartbeat("sent");
    // The socket closes (phoenix calls no heartbeat callback for that): the channel errors.
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed"));
    await fireWhenSet(timers, "the rejoin after the teardown", SOCKET_TEARDOWN_MS, clock);
    (await link.channel(2)).state!("SUBSCRIBED");
    await answerUntil(link, "live again", () => link.subscription.status === "live");
    const reads = link.calls.length;
    timers.fire(10_000); // the old heartbeat's reply timer runs out
    await settled();
    assert.equal(link.calls.length, reads, "no reads: the new socket has not even sent a heartbeat");
    assert.ok(!pendingFor(timers, 30_000), `no read at the late pace: ${timers.pending()}`);
  } finally {
    clock.restore();
    timers.restore();
    await link.end();
  }
});

Deno.test("heartbeat watch: a reply that became late while the link was catching up sets the late pace once it is live", async () => {
  const timers = watchTimers();
  const fake = fakeClient();
  const link = handAnsweredService(handTimed, fake);
  try {
    (await link.channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => link.calls.length === 1);
    fake.heartbeat("sent"); // no reply comes
    timers.fire(10_000); // late now; the link is not live yet
    link.calls[0].resolve({ changes: [], next_cursor: "101", has_more: false });
    await waitFor("live", () => link.subscription.status === "live");
    await fireWhenSet(timers, "a read at pollIntervalMs", 30_000);
    await waitFor("that read", () => link.calls.length === 2);
    link.calls[1].resolve({ changes: [], has_more: false });
    await waitFor("the next one at pollIntervalMs", () => pendingFor(timers, 30_000));
    fake.heartbeat("ok");
    assert.ok(!pendingFor(timers, 30_000), `the reply came: ${timers.pending()}`);
    assert.ok(pendingFor(timers, 600_000), `back to livePollIntervalMs: ${timers.pending()}`);
    await settled();
    assert.equal(link.calls.length, 2);
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("heartbeat watch: while a reply is late the pace is livePollIntervalMs when that is the shorter", async () => {
  const timers = watchTimers();
  const fake = fakeClient();
  // Each late reply's log line with the reads made before it.
  const late: number[] = [];
  let link: HandAnswered | undefined = undefined;
  link = handAnsweredService({
    livePollIntervalMs: 100_000,
    pollIntervalMs: 600_000,
    heartbeatReplyTimeoutMs: 10_000,
    log: (line) => {
      if (JSON.parse(line).event === "heartbeat_reply_late") late.push(link!.calls.length);
    },
  }, fake);
  try {
    await link.goLive();
    fake.heartbeat("sent");
    timers.fire(10_000); // the reply is late
    await waitFor("the late read", () => link.calls.length === 2);
    assert.deepEqual(late, [1], "the second read is the late reply's");
    link.calls[1].resolve({ changes: [], has_more: false });
    // Then every livePollIntervalMs (100 s), not every pollIntervalMs (10 min).
    await fireWhenSet(timers, "the next read at livePollIntervalMs", 100_000);
    assert.ok(!pendingFor(timers, 600_000), `none at pollIntervalMs: ${timers.pending()}`);
    await waitFor("that read", () => link.calls.length === 3);
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("heartbeat watch: two services on one client both hear heartbeats, and the callback is the app's again once both closed, in either order", async () => {
  for (const order of [["a", "b"], ["b", "a"]]) {
    const fake = fakeClient();
    const appCallback = () => {};
    fake.realtime.onHeartbeat(appCallback);
    const links = { a: handAnsweredService(quietLive, fake) } as Record<"a" | "b", HandAnswered>;
    try {
      await links.a.goLive();
      links.b = handAnsweredService(quietLive, fake, OTHER_USER);
      await links.b.goLive([], 2);
      fake.heartbeat("sent");
      await waitFor("both read", () => links.a.calls.length === 2 && links.b.calls.length === 2);
      fake.heartbeat("ok");
      for (const link of [links.a, links.b]) link.calls[1].resolve({ changes: [], has_more: false });
      await links[order[0] as "a" | "b"].end();
      assert.notEqual(fake.socketCallback(), appCallback, "the other service still watches");
      const other = links[order[1] as "a" | "b"];
      const reads = other.calls.length;
      fake.heartbeat("sent");
      await waitFor("the other one reads", () => other.calls.length === reads + 1);
      fake.heartbeat("ok");
    } finally {
      await links.a.end();
      await links.b?.end();
    }
    assert.equal(fake.socketCallback(), appCallback, `closed ${order.join(" then ")}`);
  }
});

Deno.test("heartbeat watch: heartbeatReplyTimeoutMs 0 turns it off (the callback is left alone)", async () => {
  const fake = fakeClient();
  const appCallback = () => {};
  fake.realtime.onHeartbeat(appCallback);
  const link = handAnsweredService({ ...quietLive, heartbeatReplyTimeoutMs: 0 }, fake);
  try {
    await link.goLive();
    assert.equal(fake.socketCallback(), appCallback);
    assert.equal(link.service.stats().heartbeatWatches, 0);
    fake.heartbeat("sent");
    assert.equal(link.timers(), 1, "no reply timer: the safety read's only");
    await settled();
    assert.equal(link.calls.length, 1);
  } finally {
    await link.end();
  }
});
