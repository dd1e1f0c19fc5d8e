// The join ladder (capped exponential backoff, full jitter) of a link whose channel is down: where it
// starts again (a syncNow() from the app) and where it must not (a server that closes every join it
// accepts). Against the stand-in client, with changesSince answered by hand and the jitter fixed, so
// each wait is read from the log (`retry_in_ms`) and the order of joins is driven by hand. Where how
// long a channel stayed joined decides, the service's clock stands still and the test moves it on
// (frozenClock), and the rejoin's timer is ended by hand (watchTimers): no test waits for a time.

import assert from "node:assert/strict";
import { SOCKET_TEARDOWN_MS } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { handAnsweredService } from "./handAnsweredService.ts";
import { frozenClock, watchTimers } from "./watchTimers.ts";

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

/** Timers watched and the service's clock stopped: `rejoin()` ends the wait before the next join now. */
function handTimed() {
  const timers = watchTimers();
  const clock = frozenClock();
  return {
    clock,
    /** Moves the clock on by the wait the last failure logged and runs the rejoin's timer. */
    rejoin: (link: ReturnType<typeof ladderService>) => {
      const wait = link.failures().at(-1)!.retry_in_ms as number;
      clock.advance(wait);
      timers.fire(wait);
    },
    restore: () => {
      clock.restore();
      timers.restore();
    },
  };
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

Deno.test("syncNow: on a channel that still looks joined (its socket died unnoticed while the app was away) starts the ladder again too: its drop just after is rejoined at the first step, not the long one", async () => {
  let quick = true; // the rejoins come after the teardown floor until the ladder has climbed
  const hand = handTimed();
  const link = ladderService({
    random: () => (quick ? 0 : 0.999),
    backoff: { initialMs: 1_000, maxMs: 600_000 },
  });
  try {
    // Channels the server closed soon after joining (at once: the clock stands still): the ladder
    // climbs (joins that did not hold). Each rejoin's wait (1.6 s) is ended by hand.
    for (let n = 1; n <= 3; n++) {
      await liveThenClosedByServer(link, n);
      hand.rejoin(link);
    }
    assert.deepEqual(link.failures().map((l) => l.attempt), [1, 2, 3], "the ladder climbed");
    const channel = await link.channel(4);
    channel.state!("SUBSCRIBED");
    await waitFor("live #4", () => link.subscription.status === "live");
    quick = false;
    // Back in the foreground or online: the socket died meanwhile but realtime-js has not noticed yet,
    // so the channel still looks joined when the app calls syncNow(); the drop comes just after.
    await link.subscription.syncNow();
    channel.state!("CHANNEL_ERROR", new Error("heartbeat timeout"));
    const drop = link.failures().at(-1)!;
    assert.equal(
      drop.retry_in_ms,
      SOCKET_TEARDOWN_MS + 999,
      "rejoined after the first step (drawn above the teardown floor, up to it plus its 1 s ceiling), not the 4th (8 s), as when the drop comes first",
    );
    assert.equal(
      link.service.stats().joinAttempts,
      4,
      "syncNow made no join while the channel looked joined",
    );
  } finally {
    hand.restore();
    await link.end();
  }
});

/**
 * The link's nth channel is joined, goes live (caught up), then the server closes it: `heldMs` after
 * the join by the service's clock (frozenClock; 0 when the clock is not moved).
 */
async function liveThenClosedByServer(
  link: ReturnType<typeof ladderService>,
  n: number,
  hold?: { clock: ReturnType<typeof frozenClock>; heldMs: number },
): Promise<void> {
  const channel = await link.channel(n);
  channel.state!("SUBSCRIBED");
  await waitFor(`live #${n}`, () => link.subscription.status === "live");
  hold?.clock.advance(hold.heldMs);
  channel.state!("CLOSED");
}

Deno.test("server-side close: a server that closes every channel it accepts (system error, phx_close) sooner than the wait before its join is rejoined after the teardown floor and then further and further apart up to the cap, not every 1.6 s", async () => {
  const hand = handTimed();
  const link = ladderService({ random: () => 0.999, backoff: { initialMs: 1_000, maxMs: 4_000 } });
  try {
    // Each join: accepted, caught up (live), then closed by the server (Supabase's shutdown: a
    // `system` error message, then phx_close, which realtime-js reports as CLOSED) 1.599 s after its
    // join by the service's clock, within the wait before it (the first join, made without one, is
    // held to the first step's 1.6 s; the others waited 2.6, 2.6 and 4 s). Each rejoin's wait is
    // ended by hand.
    for (let n = 1; n <= 4; n++) {
      await liveThenClosedByServer(link, n, { clock: hand.clock, heldMs: SOCKET_TEARDOWN_MS - 1 });
      if (n < 4) hand.rejoin(link);
    }
    const waits = link.failures().map((l) => l.retry_in_ms as number);
    assert.equal(waits.length, 4);
    for (const wait of waits) assert.ok(wait >= SOCKET_TEARDOWN_MS, `rejoined after ${wait} ms`);
    // Joins the server keeps closing climb the ladder (1, 2, 4, 4 s ceilings: backoff.maxMs caps
    // them; jitter 0.999; drawn above the teardown floor, up to the floor plus the first step's 1 s
    // while the ceiling is below that: 2.6, 2.6, 4, 4 s), where going live used to start it again
    // every time: every rejoin 1.6 s after the close, a join and a catch-up read every 1.6 s for as
    // long as the server does it.
    assert.deepEqual(waits, [2_599, 2_599, 3_997, 3_997]);
    assert.deepEqual(link.failures().map((l) => l.attempt), [1, 2, 3, 4]);
  } finally {
    hand.restore();
    await link.end();
  }
});

Deno.test("a channel that stayed joined longer than the wait before its join (a network that drops it now and then) starts the ladder again: its rejoin is at the first step, even from a high step", async () => {
  let random = 0; // refused joins retried at once until the ladder has climbed
  const hand = handTimed();
  const link = ladderService({ random: () => random, backoff: { initialMs: 1_000, maxMs: 600_000 } });
  try {
    for (let n = 1; n <= 4; n++) (await link.channel(n)).state!("CHANNEL_ERROR", new Error("refused"));
    random = 0.25; // a short draw at a long step (5th: 16 s ceiling), above the 1.6 s floor
    (await link.channel(5)).state!("CHANNEL_ERROR", new Error("refused"));
    const before = link.failures().at(-1)!;
    assert.deepEqual([before.attempt, before.retry_in_ms], [5, 4_000], "the 5th step, drawn short");
    hand.rejoin(link); // the 4 s wait, ended by hand
    const channel = await link.channel(6);
    channel.state!("SUBSCRIBED");
    await waitFor("live", () => link.subscription.status === "live");
    hand.clock.advance(4_001); // joined for longer than the 4 s waited before the join
    random = 0.5;
    channel.state!("CHANNEL_ERROR", new Error("heartbeat timeout")); // the device's network dropped
    const drop = link.failures().at(-1)!;
    assert.deepEqual(
      [drop.attempt, drop.retry_in_ms],
      [0, SOCKET_TEARDOWN_MS + 500],
      "rejoined at the first step (half of its 1 s above the teardown floor), not the 6th (16 s: half of 32)",
    );
    // It drops again after holding longer than those 2.1 s: the first step again, so a network that
    // drops every so often rejoins 1.6-2.6 s after each drop.
    hand.rejoin(link); // the 2.1 s wait, ended by hand
    const next = await link.channel(7);
    next.state!("SUBSCRIBED");
    await waitFor("live again", () => link.subscription.status === "live");
    hand.clock.advance(SOCKET_TEARDOWN_MS + 501); // held longer than those 2.1 s
    next.state!("CHANNEL_ERROR", new Error("heartbeat timeout"));
    const again = link.failures().at(-1)!;
    assert.deepEqual([again.attempt, again.retry_in_ms], [0, SOCKET_TEARDOWN_MS + 500]);
  } finally {
    hand.restore();
    await link.end();
  }
});

Deno.test("server-side close: after a failed join retried at once (its wait drawn 0), the wait counted is the 1.6 s teardown floor: a channel the server closes 1 s after its join did not hold (the ladder climbs), one that stayed 1.6 s did", async () => {
  let random = 0; // refused joins retried at once
  const hand = handTimed();
  const link = ladderService({ random: () => random, backoff: { initialMs: 1_000, maxMs: 600_000 } });
  try {
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("refused"));
    assert.deepEqual([link.failures()[0].attempt, link.failures()[0].retry_in_ms], [1, 0]);
    random = 0.999;
    // Joined after those 0 ms (in real time: no time is read), closed by the server 1 s after its join
    // by the service's clock: less than the floor of every wait after a drop, so it did not hold.
    await liveThenClosedByServer(link, 2, { clock: hand.clock, heldMs: 1_000 });
    const close = link.failures().at(-1)!;
    assert.deepEqual(
      [close.attempt, close.retry_in_ms],
      [2, SOCKET_TEARDOWN_MS + 999],
      "the 2nd step (drawn above the floor, up to it plus the first step's 1 s), not the first (attempt 0) as after a channel that held",
    );
    hand.rejoin(link); // its 2.6 s wait, ended by hand
    random = 0;
    (await link.channel(3)).state!("CHANNEL_ERROR", new Error("refused"));
    assert.deepEqual([link.failures().at(-1)!.attempt, link.failures().at(-1)!.retry_in_ms], [3, 0]);
    // Joined after 0 ms again, and closed after the whole floor: it held, the ladder starts again.
    random = 0.5;
    await liveThenClosedByServer(link, 4, { clock: hand.clock, heldMs: SOCKET_TEARDOWN_MS });
    const held = link.failures().at(-1)!;
    assert.deepEqual([held.attempt, held.retry_in_ms], [0, SOCKET_TEARDOWN_MS + 500]);
  } finally {
    hand.restore();
    await link.end();
  }
});

Deno.test("server-side close: a channel that stayed joined for a whole backoff cap (backoff.maxMs) starts the ladder again", async () => {
  const hand = handTimed();
  // A cap below the teardown floor: every wait before a join is the floor (1.6 s), longer than the
  // cap, so a channel that held for the cap but not for that wait starts the ladder again by the
  // cap's rule alone.
  const link = ladderService({ random: () => 0.999, backoff: { initialMs: 100, maxMs: 1_000 } });
  try {
    // Three channels closed at once (the clock stands still), each rejoin's wait ended by hand.
    for (let n = 1; n <= 3; n++) {
      await liveThenClosedByServer(link, n);
      hand.rejoin(link);
    }
    assert.deepEqual(link.failures().map((l) => l.retry_in_ms), [1_600, 1_600, 1_600]);
    // The fourth stays joined for the whole cap (1 s) by the service's clock, then the server closes it.
    await liveThenClosedByServer(link, 4, { clock: hand.clock, heldMs: 1_000 });
    const attempts = link.failures().map((l) => l.attempt);
    // 0: as after any live channel that dropped, the next join is the ladder's first again.
    assert.deepEqual(attempts, [1, 2, 3, 0], "the close of a channel that held starts the ladder again");
  } finally {
    hand.restore();
    await link.end();
  }
});

Deno.test("a drop from live is rejoined after a wait drawn above the teardown floor: devices a Realtime restart dropped together do not all rejoin (and catch up) at 1.6 s", async () => {
  // Three devices with the default backoff (a 1 s first step, under the 1.6 s floor), their jitter
  // drawn low, mid and high, each live when its channel drops.
  const draws = [0, 0.5, 0.999];
  const links = draws.map((draw) => ladderService({ random: () => draw }));
  try {
    const waits: unknown[] = [];
    for (const link of links) {
      const channel = await link.channel(1);
      channel.state!("SUBSCRIBED");
      await waitFor("live", () => link.subscription.status === "live");
      channel.state!("CHANNEL_ERROR", new Error("Realtime restarted"));
      const drop = link.failures().at(-1)!;
      assert.equal(drop.attempt, 1, "the first step (the first join, dropped at once, did not hold)");
      waits.push(drop.retry_in_ms);
    }
    // Spread over the first step's 1 s above the floor, none sooner than it; raised to the floor,
    // all three were 1,600.
    assert.deepEqual(waits, [SOCKET_TEARDOWN_MS, SOCKET_TEARDOWN_MS + 500, SOCKET_TEARDOWN_MS + 999]);
  } finally {
    for (const link of links) await link.end();
  }
});
