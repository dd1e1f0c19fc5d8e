// How a refused join is answered: Supabase's Realtime sleeps CHANNEL_ERROR_BACKOFF_MS (5 s by
// default) in the channel before it returns any join error (realtime_channel.ex, join_error/1), and
// Phoenix's socket waits for that join (Phoenix.Channel.Server.join), so the whole socket stalls
// with it. These tests keep the default wait on purpose; tests that are refused for other reasons
// lower it on their own socket (realtime_support.ts, joinErrorBackoffMs).

import assert from "node:assert/strict";
import type { SupabaseClient } from "@supabase/supabase-js";
import { adminSql, createTestUser, localRealtime, mintsTokens, testEnv } from "../support/env.ts";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { CHANNEL_ERROR_BACKOFF_MS } from "../../local/realtime/connection.ts";
import { movableWallClock, pendingFor, watchTimers } from "../shared/realtime/watchTimers.ts";
import {
  clientWithToken,
  closeClient,
  joinChannel,
  noSanitize,
  ownEndpoint,
  type Sql,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;

/** A frame from the server, with when it arrived; a binary one (a relayed broadcast) as "broadcast". */
interface Frame {
  at: number;
  joinRef: string | null;
  ref: string | null;
  event: string;
  payload: unknown;
}

/**
 * A bare Phoenix socket (vsn 2.0.0) on the stack's Realtime endpoint (or `baseUrl`'s), open, keeping every frame it
 * receives in order, and a private join of `topic` under `ref` (its join_ref too) with `token`.
 */
async function rawSocket(baseUrl = testEnv().url) {
  const env = testEnv();
  const ws = new WebSocket(
    `${baseUrl.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`,
  );
  ws.binaryType = "arraybuffer";
  const frames: Frame[] = [];
  ws.onmessage = (e) => {
    const at = Date.now();
    if (typeof e.data !== "string") {
      return void frames.push({ at, joinRef: null, ref: null, event: "broadcast", payload: null });
    }
    const [joinRef, ref, , event, payload] = JSON.parse(e.data);
    frames.push({ at, joinRef, ref, event, payload });
  };
  const join = (ref: string, topic: string, token: string) =>
    ws.send(JSON.stringify([ref, ref, `realtime:${topic}`, "phx_join", {
      config: { private: true, broadcast: {} },
      access_token: token,
    }]));
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => {
      ws.close();
      reject(new Error("socket error"));
    };
  });
  return { ws, frames, join };
}

Deno.test({
  name:
    "realtime join refusal: a supabase-js client is refused with CHANNEL_ERROR (Unauthorized), and a client asking for no wait before one with the default wait",
  ...noSanitize,
}, async () => {
  // That the refusal waits CHANNEL_ERROR_BACKOFF_MS is shown by the endpoint's own timer ("a refused
  // join is answered only when the endpoint's 5 s join-error timer runs"), and a join timeout under
  // that wait by "a join timeout that runs out while the join-error timer is pending reports
  // TIMED_OUT"; neither by this test's clock.
  const a = await createTestUser();
  const c = await createTestUser();
  const refused = clientWithToken(() => c.accessToken);
  const quick = localRealtime ? clientWithToken(() => c.accessToken, { joinErrorBackoffMs: 0 }) : null;
  // The stand-in's own knob: a socket that asks for no wait is refused at once. "At once" is told by
  // order, not by a time limit: its refusal comes before that of a join with the default wait whose
  // frame was on the wire before the quick client even opened its socket.
  const quickCheck = quick ? quickRefusal(quick, topicOf(a.id), c.accessToken) : Promise.resolve();
  quickCheck.catch(() => {}); // awaited below, once the default wait's test is done
  try {
    const result = await joinChannel(refused, topicOf(a.id));
    assert.equal(result.status, "CHANNEL_ERROR");
    assert.match(result.error?.message ?? "", /^Unauthorized: /);
    await quickCheck;
  } finally {
    await quickCheck.catch(() => {});
    await Promise.all([refused, ...(quick ? [quick] : [])].map(closeClient));
  }
});

Deno.test({
  name:
    "realtime join refusal: a join timeout that runs out while the endpoint's join-error timer is pending reports TIMED_OUT",
  ...ownEndpoint,
}, async () => {
  // supabase-js on the in-process stand-in under watchTimers: the client's join timeout (a distinct
  // 3000 ms) is run by hand once the endpoint's CHANNEL_ERROR_BACKOFF_MS timer is pending and no reply
  // has come, as it would run out in real time under a 5 s wait; the client reports TIMED_OUT. The
  // endpoint's timer is then run too, and the refusal's reply comes (to a join the client gave up).
  const env = testEnv();
  const a = await createTestUser();
  const c = await createTestUser();
  const JOIN_TIMEOUT_MS = 3_000;
  const timers = watchTimers();
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    log: () => {},
  });
  const impatient = clientWithToken(() => c.accessToken, { url: server.url });
  try {
    await impatient.realtime.setAuth();
    const statuses: string[] = [];
    impatient.channel(topicOf(a.id), { config: { private: true } }).subscribe(
      (status) => void statuses.push(status),
      JOIN_TIMEOUT_MS,
    );
    await waitFor(
      "the join-error wait and the client's join timeout",
      () => pendingFor(timers, CHANNEL_ERROR_BACKOFF_MS) && pendingFor(timers, JOIN_TIMEOUT_MS),
      { timeoutMs: 20_000, intervalMs: 5 },
    );
    assert.deepEqual(statuses, [], "the client heard an outcome while the join-error wait was pending");
    timers.fire(JOIN_TIMEOUT_MS);
    await waitFor("the client's status", () => statuses.length > 0, { timeoutMs: 20_000 });
    assert.equal(statuses[0], "TIMED_OUT", `a join timeout under the wait: ${statuses}`);
    timers.fire(CHANNEL_ERROR_BACKOFF_MS);
  } finally {
    await closeClient(impatient);
    timers.restore();
    await server.close();
  }
});

/**
 * `quick` (a client asking for no join-error wait) is refused `topic` while a bare socket that keeps
 * the default wait, whose refused join was sent before `quick` opened its socket, is still waiting.
 */
async function quickRefusal(quick: SupabaseClient, topic: string, token: string): Promise<void> {
  const slow = await rawSocket();
  const slowReply = () => slow.frames.find((f) => f.ref === "1" && f.event === "phx_reply");
  try {
    slow.join("1", topic, token); // refused after the default wait
    const fast = await joinChannel(quick, topic);
    const slowAnsweredFirst = slowReply() !== undefined;
    assert.equal(fast.status, "CHANNEL_ERROR");
    assert.match(fast.error?.message ?? "", /^Unauthorized: /);
    assert.equal(slowAnsweredFirst, false, "the quick client was refused only after the default wait");
    // The reference did wait: it is a refusal, answered after the quick one.
    await waitFor("the refusal with the default wait", () => slowReply() !== undefined, {
      timeoutMs: 15_000,
    });
    assert.equal((slowReply()!.payload as { status: string }).status, "error");
  } finally {
    slow.ws.close();
  }
}

Deno.test({
  name:
    "realtime join refusal: the socket stalls meanwhile: a heartbeat, and a broadcast to another channel on it, come after the refusal, in the order they reached the socket",
  ...noSanitize,
}, async () => {
  const a = await createTestUser();
  const c = await createTestUser();
  // Broadcasts count as "broadcast" whichever frame form carried them (JSON text or binary).
  const { ws, frames, join: joinAs } = await rawSocket();
  // A second socket on A's topic that nothing stalls: once it has the broadcast, the endpoint has
  // handed it to every socket on the topic, the stalled one included.
  const observer = await rawSocket();
  const sql = adminSql({ max: 1 });
  const reply = (ref: string) => frames.find((f) => f.ref === ref && f.event === "phx_reply");
  const join = (ref: string, topic: string) => joinAs(ref, topic, a.accessToken);
  try {
    join("1", topicOf(a.id)); // A's own topic: joined
    observer.join("1", topicOf(a.id), a.accessToken);
    await waitFor(
      "the joins",
      () => reply("1") !== undefined && observer.frames.some((f) => f.ref === "1" && f.event === "phx_reply"),
    );

    // The refused join must be the socket's work before the write's broadcast comes: a loaded
    // machine may read a frame late, so the write waits until the join is seen being decided.
    await sentAndBeingDecided(sql, () => {
      join("2", topicOf(c.id)); // C's topic: refused, after the backoff
      ws.send(JSON.stringify([null, "hb-before", "phoenix", "heartbeat", {}]));
    });
    await writeProgress(sql, a.id, { series_id: "during-refusal", chapter: 1, device_id: "phone" });
    await waitFor(
      "the broadcast on the socket nothing stalls",
      () => observer.frames.some((f) => f.event === "broadcast"),
    );
    // Sent once the broadcast is known to have reached the stalled socket. Whether the first
    // heartbeat reached it before the broadcast is not knowable from here (the stalled socket
    // answers nothing, and a loaded machine may read its frame late), so only this order is checked.
    ws.send(JSON.stringify([null, "hb-after", "phoenix", "heartbeat", {}]));
    await waitFor(
      "the refusal, the heartbeat replies and the broadcast",
      () =>
        reply("2") !== undefined && reply("hb-before") !== undefined && reply("hb-after") !== undefined &&
        frames.some((f) => f.event === "broadcast"),
      { timeoutMs: 15_000 },
    );
    // That the refusal waited the backoff is shown by the endpoint's own timer in "a refused join is
    // answered only when the endpoint's 5 s join-error timer runs", not by this test's clock.
    const refusedAt = reply("2")!.at;
    assert.ok(reply("hb-before")!.at >= refusedAt, "the heartbeat was answered before the refusal");
    const broadcast = frames.find((f) => f.event === "broadcast")!;
    assert.ok(broadcast.at >= refusedAt, "the broadcast went out before the refusal");
    // Phoenix's socket process works through its mailbox in arrival order once the join returns:
    // the broadcast, which came first, goes out before the reply to the later heartbeat.
    assert.ok(
      frames.indexOf(broadcast) < frames.indexOf(reply("hb-after")!),
      `the reply to a later heartbeat went out before the broadcast: ${JSON.stringify(frames)}`,
    );
  } finally {
    ws.close();
    observer.ws.close();
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime join refusal: a refused join is answered only when the endpoint's 5 s join-error timer runs, and a heartbeat sent meanwhile after it",
  ...ownEndpoint,
}, async () => {
  // The backoff shown by the endpoint's own timer (the local stand-in, in this process), not by a
  // clock: once the refused join has set its CHANNEL_ERROR_BACKOFF_MS timer, its reply has not come;
  // the timer is then run by hand, and the refusal comes, before the reply to a heartbeat sent while
  // the timer was pending (the socket waited with it).
  const env = testEnv();
  const a = await createTestUser();
  const c = await createTestUser();
  const timers = watchTimers();
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    log: () => {},
  });
  const socket = await rawSocket(server.url);
  const reply = (ref: string) => socket.frames.find((f) => f.ref === ref && f.event === "phx_reply");
  try {
    socket.join("2", topicOf(c.id), a.accessToken); // C's topic with A's token: refused
    await waitFor("the join-error wait", () => pendingFor(timers, CHANNEL_ERROR_BACKOFF_MS), {
      timeoutMs: 20_000,
      intervalMs: 5,
    });
    socket.ws.send(JSON.stringify([null, "hb", "phoenix", "heartbeat", {}]));
    assert.equal(reply("2"), undefined, "the refusal came while its wait was pending");
    timers.fire(CHANNEL_ERROR_BACKOFF_MS);
    await waitFor(
      "the refusal and the heartbeat's reply",
      () => reply("2") !== undefined && reply("hb") !== undefined,
      {
        timeoutMs: 20_000,
      },
    );
    assert.equal((reply("2")!.payload as { status?: unknown }).status, "error");
    assert.match(JSON.stringify(reply("2")!.payload), /Unauthorized/);
    assert.ok(
      socket.frames.indexOf(reply("2")!) < socket.frames.indexOf(reply("hb")!),
      `the heartbeat was answered before the refusal: ${JSON.stringify(socket.frames)}`,
    );
  } finally {
    socket.ws.close();
    timers.restore();
    await server.close();
  }
});

/**
 * Sends a join (`send`) and returns once the socket has read it and is deciding it: the join's
 * read-policy probe, an insert into realtime.messages, waits behind a SHARE lock on that table
 * until it is seen in pg_locks, then the lock goes. A loaded machine may read a frame late, so a
 * frame sent is not yet a frame read.
 */
async function sentAndBeingDecided(sql: Sql, send: () => void): Promise<void> {
  const locker = adminSql({ max: 1 });
  let lockTaken = () => {};
  let release = () => {};
  const taken = new Promise<void>((resolve) => lockTaken = resolve);
  const released = new Promise<void>((resolve) => release = resolve);
  const holding = locker.begin(async (tx) => {
    await tx`lock table realtime.messages in share mode`;
    lockTaken();
    await released;
  });
  try {
    await Promise.race([taken, holding]);
    send();
    await waitFor("the join's read-policy probe", async () => {
      const [{ waiting }] = await sql<{ waiting: boolean }[]>`
        select exists (select 1 from pg_catalog.pg_locks l
                         join pg_catalog.pg_stat_activity a on a.pid = l.pid
                       where l.relation = 'realtime.messages'::regclass and not l.granted
                         -- not a broadcast of another test file's write, waiting behind the lock too
                         and a.query not ilike '%reading_progress%') as waiting`;
      return waiting;
    });
  } finally {
    release();
    await holding.catch(() => {}); // its failure, if any, is the race's above
    await locker.end();
  }
}

Deno.test({
  name:
    "realtime join refusal: only the socket waits: a channel whose token expires meanwhile is closed at its expiry, and hears nothing after it",
  ...ownEndpoint,
  ignore: ownEndpoint.ignore || !mintsTokens, // a token of a chosen lifetime (tests/support/env.ts)
}, async () => {
  // Supabase's channels are processes of their own: the one whose token expires confirms it at its
  // expiry (confirm_token) and stops, whatever the socket's transport is waiting for; the socket
  // writes its system message and phx_close once the refused join has been answered. A change
  // written after that expiry is not broadcast to it, although the socket was stalled when it came.
  // On an in-process stand-in of its own, whose clocks and timers the test moves by hand: the channel
  // joins with a 25-minute token (however long a loaded machine takes to join; under the 30 to 60
  // minutes postgres.js gives each database connection as its lifetime, a timer pending too, so none
  // of those falls in the confirm's window); once the refused join is being decided, the wall clock
  // (movableWallClock) is moved past that token's expiry and the channel's confirm timer run
  // (watchTimers); the refusal's wait (10 minutes here instead of Supabase's 5 s) ends only when the
  // test runs its timer, after the write's broadcast was handed out. Nothing is timed.
  const env = testEnv();
  const a = await createTestUser();
  const c = await createTestUser();
  const JOIN_ERROR_WAIT_MS = 600_000;
  const serverLogs: Record<string, unknown>[] = [];
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    log: (fields) => serverLogs.push(fields),
    channelErrorBackoffMs: JOIN_ERROR_WAIT_MS,
    idleTimeoutMs: 0, // its sweep reads Date.now(): a moved clock would make the socket look idle
  });
  const { ws, frames, join } = await rawSocket(server.url);
  // A second socket on A's topic that nothing stalls, with a token that outlives the move: once it
  // has a write's broadcast, the endpoint has handed that broadcast to every channel on the topic.
  const observer = await rawSocket(server.url);
  const sql = adminSql({ max: 1 });
  const joinReply = (of: Frame[], ref: string) => of.find((f) => f.ref === ref && f.event === "phx_reply");
  const shutdowns = () => serverLogs.filter((l) => l.event === "channel_shutdown").map((l) => l.reason);
  const timers = watchTimers();
  const wall = movableWallClock();
  try {
    const token = await a.newAccessToken(1_500);
    const expiry = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp * 1000;
    const beforeJoin = Date.now();
    join("1", topicOf(a.id), token); // A's own topic: joined, its confirm set for the token's expiry
    observer.join("1", topicOf(a.id), await a.newAccessToken(7_200));
    await waitFor(
      "the joins",
      () => [frames, observer.frames].every((of) => joinReply(of, "1") !== undefined),
      { timeoutMs: 20_000 },
    );
    const afterJoin = Date.now();
    for (const [label, of] of [["stalled", frames], ["observer", observer.frames]] as const) {
      assert.equal((joinReply(of, "1")!.payload as { status: string }).status, "ok", `${label}: joined`);
    }
    const atExpiry = timers.pending().filter((ms) => ms >= expiry - afterJoin && ms <= expiry - beforeJoin);
    assert.equal(atExpiry.length, 1, `one timer for the token's expiry, among ${timers.pending()}`);
    // C's topic: refused after the wait, being decided.
    await sentAndBeingDecided(sql, () => join("2", topicOf(c.id), a.accessToken));
    await waitFor("the refusal's wait", () => pendingFor(timers, JOIN_ERROR_WAIT_MS), { timeoutMs: 20_000 });

    // The token's expiry, while the socket waits: the channel is closed (its frames wait their turn).
    wall.advance(Math.max(0, expiry - Date.now()));
    timers.fire(atExpiry[0]);
    await waitFor("the channel closed at its expiry", () => shutdowns().length > 0, { timeoutMs: 20_000 });
    assert.match(String(shutdowns()[0]), /^Token has expired/);
    assert.equal(joinReply(frames, "2"), undefined, "the refusal came before its wait ended");
    await writeProgress(sql, a.id, { series_id: "after-expiry", chapter: 1, device_id: "phone" });
    await waitFor(
      "the write's broadcast on the observer",
      () => observer.frames.some((f) => f.event === "broadcast"),
      { timeoutMs: 20_000 },
    );
    timers.fire(JOIN_ERROR_WAIT_MS);
    await waitFor(
      "the refusal and the expired channel's phx_close",
      () =>
        frames.some((f) => f.ref === "2" && f.event === "phx_reply") &&
        frames.some((f) => f.joinRef === "1" && f.event === "phx_close"),
      { timeoutMs: 20_000 },
    );
    // A heartbeat's reply goes out after every frame handed to the socket before it: the broadcast,
    // had the expired channel been given it, would be here by then.
    ws.send(JSON.stringify([null, "hb", "phoenix", "heartbeat", {}]));
    await waitFor("the heartbeat's reply", () => joinReply(frames, "hb") !== undefined, {
      timeoutMs: 20_000,
    });
    assert.deepEqual(
      frames.filter((f) => f.event === "broadcast").length,
      0,
      `a broadcast reached a channel after its token expired: ${JSON.stringify(frames)}`,
    );
    const refusal = frames.findIndex((f) => f.ref === "2" && f.event === "phx_reply");
    const system = frames.findIndex((f) => f.joinRef === "1" && f.event === "system");
    assert.equal((frames[refusal].payload as { status: string }).status, "error");
    assert.match((frames[system]?.payload as { message?: string })?.message ?? "", /^Token has expired/);
    assert.ok(refusal < system, `the refusal, then the closed channel's frames: ${JSON.stringify(frames)}`);
  } finally {
    ws.close();
    observer.ws.close();
    await sql.end();
    wall.restore();
    timers.restore();
    await server.close();
  }
});

Deno.test({
  name:
    "realtime: 'unmatched topic' comes at once and without join_ref, for a join no channel routes and a push to a topic not joined",
  ...noSanitize,
}, async () => {
  // Phoenix's socket answers both itself (socket.ex encode_ignore/2 builds the reply from the push's
  // ref and topic only, so join_ref is null), without Supabase's channel-error wait. A client on
  // @supabase/phoenix drops a reply whose join_ref is not its channel's current one; one without
  // join_ref reaches it. "At once" is told by order: both replies come before the refusal of a join
  // with the wait, sent on another socket before this one opened, and refused without a look at the
  // database (a token that is not a JWT: MalformedJWT), so its wait starts as soon as it is read.
  const env = testEnv();
  const slow = await rawSocket();
  slow.join("1", `progress:${crypto.randomUUID()}`, "not-a-jwt");
  const slowReply = () => slow.frames.find((f) => f.ref === "1" && f.event === "phx_reply");
  const ws = new WebSocket(
    `${env.url.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`,
  );
  const replies = new Map<string, { slowAnswered: boolean; frame: unknown }>();
  const waiters = new Map<string, () => void>();
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    const frame = JSON.parse(e.data) as unknown[];
    const ref = frame[1] as string;
    replies.set(ref, { slowAnswered: slowReply() !== undefined, frame });
    waiters.get(ref)?.();
  };
  const answered = (ref: string) =>
    new Promise<void>((resolve) => replies.has(ref) ? resolve() : waiters.set(ref, resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error("socket error"));
    });
    ws.send(JSON.stringify(["3", "3", "nowhere:x", "phx_join", {}]));
    ws.send(JSON.stringify(["9", "4", "realtime:never-joined", "broadcast", {
      type: "broadcast",
      event: "x",
      payload: {},
    }]));
    await Promise.all([answered("3"), answered("4")]);
    const unmatched = { status: "error", response: { reason: "unmatched topic" } };
    assert.deepEqual(replies.get("3")!.frame, [null, "3", "nowhere:x", "phx_reply", unmatched]);
    assert.deepEqual(replies.get("4")!.frame, [null, "4", "realtime:never-joined", "phx_reply", unmatched]);
    for (const ref of ["3", "4"]) {
      assert.equal(replies.get(ref)!.slowAnswered, false, `reply ${ref} came after a join-error wait`);
    }
    // The reference did wait: it is a refusal.
    await waitFor("the refusal with the wait", () => slowReply() !== undefined, { timeoutMs: 15_000 });
    assert.equal((slowReply()!.payload as { status: string }).status, "error");
  } finally {
    slow.ws.close();
    ws.close();
    await new Promise((r) => (ws.readyState === WebSocket.CLOSED ? r(null) : (ws.onclose = r)));
  }
});
