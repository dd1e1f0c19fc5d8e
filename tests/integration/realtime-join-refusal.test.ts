// How a refused join is answered: Supabase's Realtime sleeps CHANNEL_ERROR_BACKOFF_MS (5 s by
// default) in the channel before it returns any join error (realtime_channel.ex, join_error/1), and
// Phoenix's socket waits for that join (Phoenix.Channel.Server.join), so the whole socket stalls
// with it. These tests keep the default wait on purpose; tests that are refused for other reasons
// lower it on their own socket (realtime_support.ts, joinErrorBackoffMs).

import assert from "node:assert/strict";
import { adminSql, createTestUser, localRealtime, mintsTokens, testEnv } from "../support/env.ts";
import {
  clientWithToken,
  closeClient,
  joinChannel,
  noSanitize,
  sleep,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;

/** Supabase's default wait, less what timer granularity may take off it. */
const BACKOFF_FLOOR_MS = 4_900;

/** A frame from the server, with when it arrived; a binary one (a relayed broadcast) as "broadcast". */
interface Frame {
  at: number;
  joinRef: string | null;
  ref: string | null;
  event: string;
  payload: unknown;
}

/**
 * A bare Phoenix socket (vsn 2.0.0) on the stack's Realtime endpoint, open, keeping every frame it
 * receives in order, and a private join of `topic` under `ref` (its join_ref too) with `token`.
 */
async function rawSocket() {
  const env = testEnv();
  const ws = new WebSocket(
    `${env.url.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`,
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
    "realtime join refusal: the error reply comes after CHANNEL_ERROR_BACKOFF_MS (5 s), so a join timeout under it reports TIMED_OUT",
  ...noSanitize,
}, async () => {
  const a = await createTestUser();
  const c = await createTestUser();
  const refused = clientWithToken(() => c.accessToken);
  const impatient = clientWithToken(() => c.accessToken);
  const quick = localRealtime ? clientWithToken(() => c.accessToken, { joinErrorBackoffMs: 0 }) : null;
  try {
    // Two clients at once, so the test waits for one backoff, not two.
    const timedOut = (async () => {
      await impatient.realtime.setAuth();
      return await new Promise<string>((resolve) => {
        impatient.channel(topicOf(a.id), { config: { private: true } }).subscribe(
          (status) => resolve(status),
          3_000,
        );
      });
    })();
    const started = Date.now();
    const result = await joinChannel(refused, topicOf(a.id));
    const waited = Date.now() - started;
    assert.equal(result.status, "CHANNEL_ERROR");
    assert.match(result.error?.message ?? "", /^Unauthorized: /);
    assert.ok(waited >= BACKOFF_FLOOR_MS, `refused after ${waited} ms`);
    assert.equal(await timedOut, "TIMED_OUT", "a 3 s join timeout runs out before the refusal");

    if (quick) {
      // The stand-in's own knob: a socket that asks for no wait is refused at once.
      const quickStart = Date.now();
      const fast = await joinChannel(quick, topicOf(a.id));
      assert.equal(fast.status, "CHANNEL_ERROR");
      assert.ok(Date.now() - quickStart < 2_000, `refused after ${Date.now() - quickStart} ms`);
    }
  } finally {
    await Promise.all([refused, impatient, ...(quick ? [quick] : [])].map(closeClient));
  }
});

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

    const started = Date.now();
    join("2", topicOf(c.id)); // C's topic: refused, after the backoff
    ws.send(JSON.stringify([null, "hb-before", "phoenix", "heartbeat", {}]));
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
    const refusedAt = reply("2")!.at;
    assert.ok(refusedAt - started >= BACKOFF_FLOOR_MS, `refused after ${refusedAt - started} ms`);
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
  ignore: !mintsTokens, // needs a token that expires within seconds
  name:
    "realtime join refusal: only the socket waits: a channel whose token expires meanwhile is closed at its expiry, and hears nothing after it",
  ...noSanitize,
}, async () => {
  // Supabase's channels are processes of their own: the one whose token expires confirms it at its
  // expiry (confirm_token) and stops, whatever the socket's transport is waiting for; the socket
  // writes its system message and phx_close once the refused join has been answered. A change
  // written after that expiry is not broadcast to it, although the socket was stalled when it came.
  const a = await createTestUser();
  const c = await createTestUser();
  const { ws, frames, join } = await rawSocket();
  const sql = adminSql({ max: 1 });
  try {
    // Made once the socket is open: its 2-3 s are for the join (on a loaded machine a join takes a
    // while), and its expiry (+1.5 s) still comes before the refusal (5 s after the second join).
    const short = await a.newAccessToken(3);
    const expiresAt = JSON.parse(atob(short.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp * 1000;
    join("1", topicOf(a.id), short); // A's own topic, with a token of 2-3 s: joined
    await waitFor("the join", () => frames.some((f) => f.ref === "1" && f.event === "phx_reply"));
    const joined = frames.find((f) => f.ref === "1" && f.event === "phx_reply")!.payload;
    assert.equal((joined as { status: string }).status, "ok", "joined before the short token expired");
    join("2", topicOf(c.id), a.accessToken); // C's topic: refused after the 5 s backoff
    // Past the short token's expiry (Supabase confirms it up to a second after exp), well before
    // the refusal: a write the closed channel must not hear.
    await sleep(Math.max(0, expiresAt + 1_500 - Date.now()));
    await writeProgress(sql, a.id, { series_id: "after-expiry", chapter: 1, device_id: "phone" });
    await waitFor(
      "the refusal and the expired channel's phx_close",
      () =>
        frames.some((f) => f.ref === "2" && f.event === "phx_reply") &&
        frames.some((f) => f.joinRef === "1" && f.event === "phx_close"),
      { timeoutMs: 15_000 },
    );
    await sleep(500);
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
    await sql.end();
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
  // join_ref reaches it.
  const env = testEnv();
  const ws = new WebSocket(
    `${env.url.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`,
  );
  const replies = new Map<string, { at: number; frame: unknown }>();
  const waiters = new Map<string, () => void>();
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    const frame = JSON.parse(e.data) as unknown[];
    const ref = frame[1] as string;
    replies.set(ref, { at: performance.now(), frame });
    waiters.get(ref)?.();
  };
  const answered = (ref: string) =>
    new Promise<void>((resolve) => replies.has(ref) ? resolve() : waiters.set(ref, resolve));
  try {
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error("socket error"));
    });
    const sent = performance.now();
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
    const slowest = Math.max(replies.get("3")!.at, replies.get("4")!.at) - sent;
    assert.ok(slowest < 2_000, `answered after ${Math.round(slowest)} ms, not at once`);
  } finally {
    ws.close();
    await new Promise((r) => (ws.readyState === WebSocket.CLOSED ? r(null) : (ws.onclose = r)));
  }
});
