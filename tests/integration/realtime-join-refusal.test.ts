// How a refused join is answered: Supabase's Realtime sleeps CHANNEL_ERROR_BACKOFF_MS (5 s by
// default) in the channel before it returns any join error (realtime_channel.ex, join_error/1), and
// Phoenix's socket waits for that join (Phoenix.Channel.Server.join), so the whole socket stalls
// with it. These tests keep the default wait on purpose; tests that are refused for other reasons
// lower it on their own socket (realtime_support.ts, joinErrorBackoffMs).

import assert from "node:assert/strict";
import { adminSql, createTestUser, localRealtime, testEnv } from "../support/env.ts";
import {
  clientWithToken,
  closeClient,
  joinChannel,
  noSanitize,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;

/** Supabase's default wait, less what timer granularity may take off it. */
const BACKOFF_FLOOR_MS = 4_900;

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
    "realtime join refusal: the socket stalls meanwhile: a heartbeat, and a broadcast to another channel on it, come after the refusal",
  ...noSanitize,
}, async () => {
  const sql = adminSql({ max: 1 });
  const a = await createTestUser();
  const c = await createTestUser();
  const env = testEnv();
  const ws = new WebSocket(
    `${env.url.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`,
  );
  ws.binaryType = "arraybuffer";
  // Each frame with when it arrived (broadcasts as "broadcast", whichever frame form carried them).
  const frames: { at: number; ref: string | null; event: string }[] = [];
  ws.onmessage = (e) => {
    const at = Date.now();
    if (typeof e.data !== "string") return void frames.push({ at, ref: null, event: "broadcast" });
    const [, ref, , event] = JSON.parse(e.data);
    frames.push({ at, ref, event });
  };
  const reply = (ref: string) => frames.find((f) => f.ref === ref && f.event === "phx_reply");
  const join = (ref: string, topic: string) =>
    ws.send(JSON.stringify([ref, ref, `realtime:${topic}`, "phx_join", {
      config: { private: true, broadcast: {} },
      access_token: a.accessToken,
    }]));
  try {
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error("socket error"));
    });
    join("1", topicOf(a.id)); // A's own topic: joined
    await waitFor("the join", () => reply("1") !== undefined);

    const started = Date.now();
    join("2", topicOf(c.id)); // C's topic: refused, after the backoff
    ws.send(JSON.stringify([null, "hb", "phoenix", "heartbeat", {}]));
    await writeProgress(sql, a.id, { series_id: "during-refusal", chapter: 1, device_id: "phone" });
    await waitFor(
      "the refusal, the heartbeat reply and the broadcast",
      () =>
        reply("2") !== undefined && reply("hb") !== undefined && frames.some((f) => f.event === "broadcast"),
      { timeoutMs: 15_000 },
    );
    const refusedAt = reply("2")!.at;
    assert.ok(refusedAt - started >= BACKOFF_FLOOR_MS, `refused after ${refusedAt - started} ms`);
    assert.ok(reply("hb")!.at >= refusedAt, "the heartbeat was answered before the refusal");
    const broadcast = frames.find((f) => f.event === "broadcast")!;
    assert.ok(broadcast.at >= refusedAt, "the broadcast went out before the refusal");
  } finally {
    ws.close();
    await sql.end();
  }
});
