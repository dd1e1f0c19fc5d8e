// RealtimeService when Realtime goes away mid-stream: the endpoint is killed while writes continue,
// the service falls back to polling "changes since", the endpoint comes back on the same port, the
// service returns to live, and the device ends with exactly the server's state, nothing missed.

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { changesSince } from "../../shared/progress/api.ts";
import {
  type ProgressChange,
  RealtimeService,
  type RealtimeStatus,
  SOCKET_TEARDOWN_MS,
} from "../../shared/realtime/realtimeService.ts";
import { adminSql, createTestUser, testEnv } from "../support/env.ts";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { fireWhenSet, frozenClock, watchTimers } from "../shared/realtime/watchTimers.ts";
import {
  clientWithToken,
  closeClient,
  deleteProgress,
  freezableProxy,
  joinChannel,
  newClient,
  noSanitize,
  ownEndpoint,
  serverState,
  sleep,
  sqlChangesSince,
  statusesFromFirstLive,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

Deno.test({
  name: "realtime resilience: endpoint killed mid-stream -> polling -> live, 0 missed",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const sql = adminSql({ max: 6 });
  const a = await createTestUser();
  let server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
  const port = server.port;
  const client = newClient({ url: server.url, reconnectAfterMs: () => 250 });
  const logs: Record<string, unknown>[] = [];
  const counters = { calls: 0 };
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id, counters),
    accessToken: a.accessToken,
    pollIntervalMs: 200,
    backoff: { initialMs: 200, maxMs: 1_000 },
    joinTimeoutMs: 2_000,
    log: (line) => logs.push(JSON.parse(line)),
  });
  const changes: ProgressChange[] = [];
  const statuses: RealtimeStatus[] = [];
  const subscription = service.subscribeToProgress(a.id, (change) => changes.push(change));
  subscription.onStatus((s) => statuses.push(s));
  try {
    await waitFor("live", () => subscription.status === "live");

    // Writer: 5 series, a new version every ~15 ms, for the whole test.
    const t0 = Date.now() - 60_000;
    const written: { series_id: string; updated_at: string; phase: string }[] = [];
    let phase = "before";
    let writing = true;
    const writer = (async () => {
      for (let i = 0; writing; i++) {
        const version = {
          series_id: `series-${i % 5}`,
          chapter: i,
          page: i % 40,
          percentage: Math.min(1, i / 10_000),
          device_id: "writer-phone",
          updated_at: new Date(t0 + i).toISOString(),
        };
        await writeProgress(sql, a.id, version);
        written.push({ series_id: version.series_id, updated_at: version.updated_at, phase });
        await sleep(15);
      }
    })();

    const seenVersion = (w: { series_id: string; updated_at: string }) =>
      changes.some((c) =>
        c.row.series_id === w.series_id &&
        new Date(c.row.updated_at).getTime() === new Date(w.updated_at).getTime()
      );
    await waitFor("20 versions written while live", () => written.length >= 20);
    phase = "outage";
    // Everything committed before the kill has been delivered live (a broadcast still in the
    // endpoint's hands at the kill would be coalesced by the catch-up, not lost; this keeps the
    // live/outage split of the count exact).
    await waitFor(
      "the pre-outage versions on the device",
      () => written.filter((w) => w.phase === "before").every(seenVersion),
    );
    await server.close(); // Realtime is gone; the database and the writes are not.
    await waitFor("polling", () => subscription.status === "polling");
    const pollsBefore = counters.calls;
    await waitFor("3 polls while Realtime is down", () => counters.calls >= pollsBefore + 3);
    await waitFor(
      "20 versions written during the outage",
      () => written.filter((w) => w.phase === "outage").length >= 20,
    );
    assert.equal(subscription.status, "polling");

    server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret!, port });
    await waitFor("live again", () => subscription.status === "live");
    phase = "after";
    const afterFrom = written.length;
    await waitFor("20 versions written after the return", () => written.length >= afterFrom + 20);
    writing = false;
    await writer;

    // Exactly the server state, by version (updated_at, device_id) and content.
    const expected = await serverState(sql, a.id);
    await waitFor("device state = server state", () => {
      const mine = new Map(changes.filter((c) => c.kind === "upsert").map((c) => [c.row.series_id, c.row]));
      if (mine.size !== expected.size) return false;
      for (const [series, row] of expected) {
        const have = mine.get(series);
        if (
          !have || have.chapter !== row.chapter ||
          new Date(have.updated_at).getTime() !== new Date(row.updated_at as string).getTime()
        ) {
          return false;
        }
      }
      return true;
    }, { timeoutMs: 30_000 }); // a hang guard: the last writes' broadcasts, however slow the machine

    // 0 missed, counted: every version written while live arrived as itself; the outage's versions
    // were coalesced by polling and the catch-up into the latest per series (= the server state,
    // checked above).
    const missed = written.filter((w) => w.phase !== "outage").filter((w) => !seenVersion(w));
    const byPhase = (p: string) => written.filter((w) => w.phase === p).length;
    console.log(
      `written ${written.length} (live before ${byPhase("before")}, outage ${byPhase("outage")}, ` +
        `live after ${byPhase("after")}); delivered ${changes.length}; missed ${missed.length}; ` +
        `final series ${expected.size}/${expected.size} equal to the server`,
    );
    assert.equal(missed.length, 0, `missed: ${JSON.stringify(missed.slice(0, 5))}`);
    // Versions arrive in LWW order per series: nothing older after something newer.
    const lastBySeries = new Map<string, number>();
    for (const c of changes) {
      const t = new Date(c.row.updated_at).getTime();
      assert.ok((lastBySeries.get(c.row.series_id) ?? -Infinity) < t, "a stale version was delivered");
      lastBySeries.set(c.row.series_id, t);
    }

    // The status stream a UI would show, and the sources that carried changes.
    // Live, then (Realtime killed) connecting and polling, then live again; before the first live only
    // a first join slower than the join grace (or timed out) may add "polling" (statusesFromFirstLive).
    assert.deepEqual(statusesFromFirstLive(logs), ["live", "connecting", "polling", "live"]);
    assert.deepEqual(
      dedupe(statuses).slice(-4),
      ["live", "connecting", "polling", "live"],
      "as onStatus heard them",
    );
    const sources = new Set(changes.map((c) => c.source));
    assert.ok(
      sources.has("realtime") && (sources.has("poll") || sources.has("catchup")),
      [...sources].join(","),
    );

    // Structured logs: JSON lines with the channel and the attempt number.
    const unavailable = logs.filter((l) => l.event === "realtime_unavailable");
    assert.ok(unavailable.length >= 1);
    for (const line of unavailable) {
      assert.equal(line.channel, `progress:${a.id}`);
      assert.equal(typeof line.attempt, "number");
      assert.equal(typeof line.retry_in_ms, "number");
      // Capped (maxMs 1 s); a rejoin after a joined channel dropped waits out realtime-js's socket
      // teardown, drawn up to the first step's ceiling above it.
      assert.ok((line.retry_in_ms as number) < SOCKET_TEARDOWN_MS + 1_000, "backoff is capped");
    }
  } finally {
    await subscription.unsubscribe();
    const stats = service.stats();
    await service.close();
    await client.realtime.disconnect();
    await server.close();
    await sql.end();
    assert.equal(stats.timers, 0);
    assert.equal(stats.channels, 0);
  }
});

Deno.test({
  name:
    "realtime resilience: Realtime down from the start -> polling with capped full-jitter retries; API down too -> offline",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const client = unreachableRealtimeClient();
  const counters = { calls: 0, failNext: 0 };
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id, counters),
    accessToken: a.accessToken,
    pollIntervalMs: 100,
    backoff: { initialMs: 100, maxMs: 400 },
    joinTimeoutMs: 500,
    log: (line) => logs.push(JSON.parse(line)),
  });
  const changes: ProgressChange[] = [];
  const subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
  try {
    assert.equal(subscription.status, "connecting");
    await waitFor("polling", () => subscription.status === "polling");
    // Retry n waits a uniform time in [0, min(400, 100 * 2^(n-1))): attempts count up, delays stay
    // under their ceiling and the cap, and they are not all the same (jitter).
    const retries = () => logs.filter((l) => l.event === "realtime_unavailable");
    await waitFor("5 failed joins", () => retries().length >= 5);
    const firstFive = retries().slice(0, 5);
    assert.deepEqual(firstFive.map((l) => l.attempt), [1, 2, 3, 4, 5]);
    for (const line of firstFive) {
      const ceiling = Math.min(400, 100 * 2 ** ((line.attempt as number) - 1));
      assert.ok(
        (line.retry_in_ms as number) >= 0 && (line.retry_in_ms as number) < ceiling,
        JSON.stringify(line),
      );
      assert.equal(line.channel, `progress:${a.id}`);
      assert.equal(line.level, "warn");
    }
    assert.ok(new Set(retries().map((l) => l.retry_in_ms)).size > 1, "full jitter varies the delays");
    await writeProgress(sql, a.id, { series_id: "dorohedoro", chapter: 3, device_id: "laptop" });
    await waitFor("the write through polling", () => changes.some((c) => c.row.series_id === "dorohedoro"));
    assert.equal(changes.at(-1)?.source, "poll");
    counters.failNext = 1_000_000;
    await waitFor("offline", () => subscription.status === "offline");
    counters.failNext = 0;
    await waitFor("polling again", () => subscription.status === "polling");
  } finally {
    await subscription.unsubscribe();
    await service.close();
    await client.realtime.disconnect();
    await sql.end();
  }
  assert.equal(service.stats().timers, 0);
});

Deno.test({
  name:
    "realtime resilience: while polling, a hard DELETE arrives as a delete, and a later re-insert as the new row",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  // Realtime never opens; "changes since" is the progress API over HTTP with A's token.
  const realtimeClient = unreachableRealtimeClient();
  const apiClient = newClient();
  await apiClient.functions.setAuth(a.accessToken);
  const service = new RealtimeService(realtimeClient, {
    changesSince: (cursor) => changesSince(apiClient, typeof cursor === "string" ? cursor : null),
    accessToken: a.accessToken,
    pollIntervalMs: 100,
    backoff: { initialMs: 100, maxMs: 400 },
    joinTimeoutMs: 500,
    log: () => {},
  });
  const changes: ProgressChange[] = [];
  const subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
  const ofSeries = () => changes.filter((c) => c.row.series_id === "vagabond");
  try {
    await waitFor("polling", () => subscription.status === "polling");
    const t0 = Date.now() - 60_000;
    await writeProgress(sql, a.id, {
      series_id: "vagabond",
      chapter: 30,
      device_id: "tablet",
      updated_at: new Date(t0).toISOString(),
    });
    await waitFor("the row", () => ofSeries().length === 1);
    // Removed by direct SQL (RLS allows a user to delete their own rows): no Realtime to carry it.
    await deleteProgress(sql, a.id, "vagabond");
    await waitFor("the delete", () => ofSeries().length === 2);
    assert.deepEqual(ofSeries().map((c) => [c.kind, c.row.chapter, c.source]), [
      ["upsert", 30, "poll"],
      ["delete", 30, "poll"],
    ]);
    // An offline e-reader's older position is inserted again: a new life, delivered as the row.
    await writeProgress(sql, a.id, {
      series_id: "vagabond",
      chapter: 12,
      device_id: "ereader",
      updated_at: new Date(t0 - 60_000).toISOString(),
    });
    await waitFor("the new life", () => ofSeries().length === 3);
    assert.deepEqual([ofSeries()[2].kind, ofSeries()[2].row.chapter], ["upsert", 12]);
    // Polls after it must not deliver the deletion again, nor the old life: a marker row written now
    // comes in a later poll than the new life, and a poll that read any of them again would have
    // delivered it by then (each poll's changes are handed over, in order, before the next poll).
    await writeProgress(sql, a.id, { series_id: "marker", chapter: 1, device_id: "phone" });
    await waitFor("the marker", () => changes.some((c) => c.row.series_id === "marker"));
    assert.equal(ofSeries().length, 3, JSON.stringify(ofSeries()));
  } finally {
    await subscription.unsubscribe();
    await service.close();
    await realtimeClient.realtime.disconnect();
    await apiClient.realtime.disconnect();
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime resilience: a server that closes every channel once it is live (system error, phx_close) is rejoined further and further apart, not every 1.6 s",
  ...noSanitize,
}, async () => {
  // The close is the server's own: each time the link is live, the test pushes a token the server
  // cannot verify on the channel, and Realtime shuts the channel down (a `system` error, then
  // phx_close), as it does when it loses its database or a token it does not take.
  const sql = adminSql();
  const a = await createTestUser();
  const client = newClient();
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    random: () => 0.999, // each wait just under its step's ceiling: read from the log
    backoff: { initialMs: 1_000, maxMs: 600_000 },
    livePollIntervalMs: 0,
    log: (line) => logs.push(JSON.parse(line)),
  });
  const topic = `realtime:progress:${a.id}`;
  let pushes = 0;
  const subscription = service.subscribeToProgress(a.id, () => {});
  subscription.onStatus((status) => {
    if (status !== "live") return;
    const channel = client.getChannels().find((c) => c.topic === topic)!;
    client.realtime.push({
      topic,
      event: "access_token",
      payload: { access_token: "not-a-token" },
      ref: `close-it-${++pushes}`,
      join_ref: channel.joinPush.ref ?? undefined,
    });
  });
  const closes = () => logs.filter((l) => l.event === "realtime_unavailable");
  try {
    await waitFor("three closes by the server", () => closes().length >= 3, { timeoutMs: 30_000 });
    assert.ok(
      logs.some((l) => l.event === "system_message" && l.level === "warn"),
      "the server's system error came",
    );
    for (const close of closes().slice(0, 3)) assert.match(String(close.reason), /^CLOSED/);
    // Steps of 1, 2 and 4 s (jitter 0.999), drawn above the teardown floor, up to the floor plus the
    // first step's 1 s while the ceiling is below that (2.6, 2.6, 4 s): each close comes
    // within milliseconds of its join, sooner than the wait before it (the first join, made without
    // one, is held to the first step's 1.6 s). Going live used to start the ladder again, and every
    // rejoin came 1.6 s after the close, a join and a catch-up read every 1.6 s for as long as the
    // server went on. The margin left: the service times each hold by its own clock (performance.now()),
    // so between a join's answer and its close (a catch-up read from Postgres, the pushed token, the
    // server's close on the socket: 6 to 70 ms measured) the machine must take less than 1.6 s (2.6 s
    // for the next two). Acceptable: over 20 times what that takes, and a machine that stalls longer makes the
    // test fail (the ladder started again at its first step), never pass; rejoinLadder.test.ts checks
    // the rule itself.
    assert.deepEqual(closes().slice(0, 3).map((l) => l.retry_in_ms), [2_599, 2_599, 3_997]);
  } finally {
    await subscription.unsubscribe();
    await service.close();
    await closeClient(client);
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime resilience: after a failed join retried at once (its wait drawn 0), a server that closes each channel 1 s after the join still sees the ladder climb: the wait counted is at least the 1.6 s floor",
  ...ownEndpoint,
}, async () => {
  // The first join is refused (C's token on A's topic; the stand-in asked for no join-error wait);
  // its retry is drawn at 0 ms (jitter 0), and the token source gives A's token from then on. Each
  // join after it is accepted and closed by the server (a token it cannot verify pushed on the
  // channel: a `system` error, then phx_close) 1 s after its join by the service's clock, which the
  // test stops and moves on by hand (frozenClock); the rejoins' waits are ended by hand (watchTimers).
  // A hold of 1 s is below the 1.6 s floor of every wait after a drop, so these channels did not
  // hold: the ladder climbs. Counted as the 0 ms drawn, the first of them held, and the ladder went
  // back to its first step.
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  const c = await createTestUser();
  const timers = watchTimers();
  const clock = frozenClock();
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    channelErrorBackoffMs: 0,
    log: () => {},
  });
  let token = c.accessToken;
  let draw = 0;
  const client = clientWithToken(() => token, { url: server.url });
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    random: () => draw,
    backoff: { initialMs: 1_000, maxMs: 600_000 },
    livePollIntervalMs: 0,
    log: (line) => {
      const entry = JSON.parse(line);
      logs.push(entry);
      // The refusal's retry has been drawn (0 ms) when it is logged: A's token and high draws from now on.
      if (entry.event === "realtime_unavailable" && token === c.accessToken) {
        token = a.accessToken;
        draw = 0.999;
      }
    },
  });
  const topic = `realtime:progress:${a.id}`;
  let lives = 0;
  const subscription = service.subscribeToProgress(a.id, () => {});
  subscription.onStatus((status) => void (status === "live" && lives++));
  const failures = () => logs.filter((l) => l.event === "realtime_unavailable");
  /** Waits for the link's nth time live, holds it 1 s by the service's clock, and has the server close it. */
  const liveThenClosed = async (n: number) => {
    await waitFor(`live #${n}`, () => lives >= n);
    clock.advance(1_000);
    const channel = client.getChannels().find((ch) => ch.topic === topic)!;
    client.realtime.push({
      topic,
      event: "access_token",
      payload: { access_token: "not-a-token" },
      ref: `close-it-${n}`,
      join_ref: channel.joinPush.ref ?? undefined,
    });
    await waitFor(`the close of #${n}`, () => failures().length >= n + 1);
  };
  try {
    await waitFor("the refusal", () => failures().length >= 1);
    const refusal = failures()[0];
    assert.match(String(refusal.reason), /^CHANNEL_ERROR: Unauthorized/);
    assert.deepEqual([refusal.attempt, refusal.retry_in_ms], [1, 0], "retried at once (jitter 0)");
    await liveThenClosed(1);
    await fireWhenSet(timers, "the rejoin after the first close", failures()[1].retry_in_ms as number, clock);
    await liveThenClosed(2);
    for (const close of failures().slice(1)) assert.match(String(close.reason), /^CLOSED/);
    // Steps 2 and 3 (jitter 0.999, drawn above the 1.6 s floor: up to 2.6 s at step 2, 4 s at step 3),
    // not steps 1 (attempt 0 after a channel that held) and 1 again.
    assert.deepEqual(
      failures().slice(1).map((l) => [l.attempt, l.retry_in_ms]),
      [[2, SOCKET_TEARDOWN_MS + 999], [3, SOCKET_TEARDOWN_MS + 2_397]],
    );
  } finally {
    clock.restore();
    timers.restore();
    await subscription.unsubscribe();
    await service.close();
    await closeClient(client);
    await server.close();
    await sql.end();
  }
});

/** A supabase-js client whose Realtime socket never opens (nothing listens on its port). */
function unreachableRealtimeClient() {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadPort = (probe.addr as Deno.NetAddr).port;
  probe.close();
  return newClient({ url: `http://127.0.0.1:${deadPort}`, reconnectAfterMs: () => 200 });
}

function dedupe<T>(values: T[]): T[] {
  return values.filter((v, i) => i === 0 || values[i - 1] !== v);
}

Deno.test({
  name:
    "realtime: a socket that sends nothing (no heartbeat) is closed after the idle timeout; a heartbeating one stays",
  ...ownEndpoint,
}, async () => {
  // Phoenix closes a WebSocket that sent nothing for its transport timeout (60 s); the local endpoint
  // does the same (here 10 s: the heartbeating client is in this process, and a stall of it as long
  // as the timeout is a socket that sent nothing to the endpoint; 2 s here made a close of a stall).
  // realtime-js heartbeats well inside it, so only a stopped client is cut.
  const env = testEnv();
  const idleTimeoutMs = 10_000;
  const logs: Record<string, unknown>[] = [];
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    idleTimeoutMs,
    log: (fields) => logs.push(fields),
  });
  const open = (url: string) =>
    new Promise<WebSocket>((resolve, reject) => {
      const ws = new WebSocket(url);
      ws.onopen = () => resolve(ws);
      ws.onerror = () => reject(new Error("socket error"));
    });
  const wsUrl = `${server.url.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`;
  // The heartbeating socket is opened first: when the silent one is closed, the heartbeating one has
  // been open longer, so a rule that closed sockets by their age (or counted no heartbeat as a frame)
  // would have closed it in the same sweep or before. No waiting another timeout to see it stay.
  const beating = await open(wsUrl);
  const replies: string[] = [];
  const closed: string[] = [];
  beating.onmessage = (event) => {
    const [, ref, , eventName] = JSON.parse(String(event.data));
    if (eventName === "phx_reply") replies.push(ref);
  };
  beating.onclose = () => closed.push("beating");
  let beats = 0;
  const heartbeat = setInterval(
    () => beating.send(JSON.stringify([null, `hb-${++beats}`, "phoenix", "heartbeat", {}])),
    150,
  );
  const silent = await open(wsUrl);
  silent.onclose = () => closed.push("silent");
  try {
    await waitFor("the silent socket to be closed", () => closed.includes("silent"), { timeoutMs: 30_000 });
    // The sweep that closed it has run to its end: one socket left, the heartbeating one, and the one
    // close logged is the silent socket's, after a whole timeout without a frame from it (the
    // endpoint's own reading: nothing of this test's clock).
    assert.deepEqual(closed, ["silent"], "a socket that heartbeats is kept");
    assert.equal(server.endpoint.stats().connections, 1);
    const idleCloses = logs.filter((l) => l.event === "socket_idle_timeout");
    assert.equal(idleCloses.length, 1, JSON.stringify(idleCloses));
    assert.ok(Number(idleCloses[0].idle_ms) >= idleTimeoutMs, JSON.stringify(idleCloses[0]));
    // And it is still served: a heartbeat sent after the close is answered.
    const after = `hb-${beats + 1}`;
    await waitFor("a heartbeat sent after the close answered", () => replies.includes(after));
    assert.deepEqual(closed, ["silent"]);
  } finally {
    clearInterval(heartbeat);
    beating.close();
    await server.close();
  }
});

/** A TCP proxy goes in front of the stack's API: only where that is plain http (the local stack). */
const behindProxy = { ...noSanitize, ignore: !Deno.env.get("SUPABASE_URL")?.startsWith("http:") } as const;

/** A user, an admin connection and a TCP proxy to the stack's API whose connections can freeze. */
async function frozenPathFixture() {
  const env = testEnv();
  return { env, sql: adminSql({ max: 2 }), a: await createTestUser(), proxy: freezableProxy(env.url) };
}

Deno.test({
  name:
    "realtime resilience: a socket whose network path died is noticed by its heartbeat, and the rejoin goes out on a new socket, not the dead one",
  ...behindProxy,
}, async () => {
  const { env, sql, a, proxy } = await frozenPathFixture();
  // Which socket carried each join: realtime-js sends joins as text frames.
  let sockets = 0;
  const joins: { socket: number; at: number }[] = [];
  class CountingWebSocket extends WebSocket {
    readonly n = ++sockets;
    override send(data: string | ArrayBufferLike | Blob | ArrayBufferView) {
      if (typeof data === "string" && data.includes('"phx_join"')) {
        joins.push({ socket: this.n, at: Date.now() });
      }
      super.send(data);
    }
  }
  const client = createClient(proxy.url, env.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: CountingWebSocket as unknown as typeof WebSocket, heartbeatIntervalMs: 1_000 },
  });
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    random: () => 0, // the rejoin as early as the service allows
    backoff: { initialMs: 200, maxMs: 1_000 },
    log: (line) => logs.push(JSON.parse(line)),
  });
  const changes: ProgressChange[] = [];
  const subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
  try {
    await waitFor("live", () => subscription.status === "live");
    const frozenAt = Date.now();
    assert.ok(proxy.freeze() >= 1, "the socket's connection is frozen");
    const frozenSocket = sockets;
    await writeProgress(sql, a.id, { series_id: "after-the-freeze", chapter: 12, device_id: "phone" });
    await waitFor("the heartbeat notices", () => subscription.status !== "live");
    await waitFor("live again", () => subscription.status === "live");
    assert.deepEqual(
      joins.filter((j) => j.socket === frozenSocket && j.at >= frozenAt),
      [],
      "no join was written to the dead socket (realtime-js still showed it open while tearing it down)",
    );
    assert.equal(
      logs.filter((l) => l.event === "realtime_unavailable" && String(l.reason).startsWith("TIMED_OUT"))
        .length,
      0,
      "the rejoin did not wait out a join timeout",
    );
    await waitFor(
      "the write made after the freeze",
      () => changes.some((c) => c.row.series_id === "after-the-freeze"),
    );
  } finally {
    await subscription.unsubscribe();
    await service.close();
    await client.realtime.disconnect();
    proxy.close();
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime resilience: a change made after the socket's network path died arrives before realtime-js gives the socket up (the heartbeat reply is late: the link reads)",
  ...behindProxy,
}, async () => {
  const { env, sql, a, proxy } = await frozenPathFixture();
  // realtime-js gives a socket up when a reply is one heartbeat interval late (4 s here, 25 s by
  // default); the watch reads when it is half that late, and then every pollIntervalMs.
  const client = createClient(proxy.url, env.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { heartbeatIntervalMs: 4_000 },
  });
  const heartbeats: string[] = [];
  client.realtime.onHeartbeat((status) => heartbeats.push(status)); // the app's own callback
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    pollIntervalMs: 500,
    livePollIntervalMs: 600_000,
    log: (line) => logs.push(JSON.parse(line)),
  });
  const changes: { change: ProgressChange; droppedBefore: boolean }[] = [];
  const dropped = () => logs.some((l) => l.event === "realtime_unavailable");
  const subscription = service.subscribeToProgress(
    a.id,
    (change) => changes.push({ change, droppedBefore: dropped() }),
  );
  try {
    await waitFor("live", () => subscription.status === "live");
    assert.ok(proxy.freeze() >= 1, "the socket's connection is frozen");
    await writeProgress(sql, a.id, {
      series_id: "while-the-socket-is-dead",
      chapter: 3,
      device_id: "tablet",
    });
    await waitFor(
      "the write made after the freeze",
      () => changes.some((c) => c.change.row.series_id === "while-the-socket-is-dead"),
    );
    const arrival = changes.find((c) => c.change.row.series_id === "while-the-socket-is-dead")!;
    assert.equal(arrival.droppedBefore, false, "it arrived while realtime-js still held the dead socket");
    assert.equal(arrival.change.source, "poll");
    assert.ok(logs.some((l) => l.event === "heartbeat_reply_late"), "read because the reply was late");
    // realtime-js still gives the socket up, and the link comes back live on a new one.
    await waitFor("the drop", dropped);
    await waitFor("live again", () => subscription.status === "live");
    assert.ok(heartbeats.includes("sent") && heartbeats.includes("timeout"), "the app's callback heard them");
  } finally {
    await subscription.unsubscribe();
    await service.close();
    await client.realtime.disconnect();
    proxy.close();
    await sql.end();
  }
});

/**
 * frozenPathFixture with a client behind its proxy and a RealtimeService whose joins time out after
 * 1 s and retry within 0.5 s: the set-up of the tests of a socket whose opening handshake is slow or
 * never answered. `teardown` ends the subscription, the service, the client, the proxy and `sql`.
 */
async function openingHandshakeFixture({ onLog }: { onLog?: (line: Record<string, unknown>) => void } = {}) {
  const { env, sql, a, proxy } = await frozenPathFixture();
  const client = createClient(proxy.url, env.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { heartbeatIntervalMs: 5_000 },
  });
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    pollIntervalMs: 200,
    joinTimeoutMs: 1_000,
    backoff: { initialMs: 100, maxMs: 500 },
    log: (line) => {
      const parsed = JSON.parse(line);
      logs.push(parsed);
      onLog?.(parsed);
    },
  });
  const teardown = async (subscription: { unsubscribe(): Promise<void> }) => {
    await subscription.unsubscribe();
    await service.close();
    await client.realtime.disconnect();
    proxy.close();
    await sql.end();
  };
  return { sql, a, proxy, client, logs, service, teardown };
}

Deno.test({
  name:
    "realtime resilience: a socket whose opening handshake is never answered (its path died while connecting) is replaced, and the link goes live",
  ...behindProxy,
}, async () => {
  // realtime-js has no timeout for a WebSocket that stays CONNECTING: it buffers every push, sends no
  // heartbeat (so none can time out), and closes it only when the transport reports an error, which a
  // dead path may not do for minutes. Found by the soak (seed 26 with READSYNC_SOAK_MS=60000): a
  // socket frozen mid-handshake left a device polling, every join TIMED_OUT on the same socket.
  const { sql, a, proxy, logs, service, teardown } = await openingHandshakeFixture();
  proxy.freezeNew(1); // the first socket's handshake goes nowhere
  const changes: ProgressChange[] = [];
  const subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
  try {
    await waitFor("a join timed out", () => logs.some((l) => String(l.reason).startsWith("TIMED_OUT")));
    await waitFor("live", () => subscription.status === "live");
    await writeProgress(sql, a.id, { series_id: "after-the-stuck-socket", chapter: 4, device_id: "phone" });
    await waitFor(
      "the write, live",
      () => changes.some((c) => c.row.series_id === "after-the-stuck-socket" && c.source === "realtime"),
    );
  } finally {
    await teardown(subscription);
  }
});

Deno.test({
  name:
    "realtime resilience: when a socket whose opening handshake is never answered is replaced, the app's own channel on the same client is joined again on the new socket and receives broadcasts",
  ...behindProxy,
}, async () => {
  // An app uses one supabase client for everything: its own channels share the service's socket. The
  // service giving a stuck socket up must not leave them closed for good.
  const { a, proxy, client, logs, service, teardown } = await openingHandshakeFixture();
  const sender = newClient();
  const topic = `app-room-${crypto.randomUUID()}`;
  const appStates: string[] = [];
  const appReceived: unknown[] = [];
  proxy.freezeNew(1); // the first socket's handshake goes nowhere
  const app = client
    .channel(topic, { config: { broadcast: { self: false } } })
    .on("broadcast", { event: "ping" }, (m) => appReceived.push(m.payload))
    .subscribe((status) => appStates.push(status), 1_000);
  const subscription = service.subscribeToProgress(a.id, () => {});
  try {
    await waitFor("the stuck socket given up", () => logs.some((l) => l.event === "socket_never_opened"));
    await waitFor("live", () => subscription.status === "live");
    await waitFor("the app's channel joined", () => appStates.includes("SUBSCRIBED"));
    // Its own join on the stuck socket timed out first: SUBSCRIBED is realtime-js's rejoin on the new one.
    assert.equal(appStates[0], "TIMED_OUT");
    const { status } = await joinChannel(sender, topic, { private: false });
    assert.equal(status, "SUBSCRIBED");
    const from = sender.getChannels().find((c) => c.topic === `realtime:${topic}`)!;
    await waitFor("a broadcast on the app's channel", async () => {
      await from.send({ type: "broadcast", event: "ping", payload: { n: 1 } });
      return appReceived.length > 0;
    }, { intervalMs: 300 });
  } finally {
    await client.removeChannel(app).catch(() => {});
    await closeClient(sender);
    await teardown(subscription);
  }
});

/**
 * openingHandshakeFixture with the app's own channel on the same client beside a link of the service,
 * while the first `stuck` sockets' handshakes go nowhere. `onGiveUp` runs in the same turn as each
 * give-up (the service's log line), `onAppStatus` on each status of the app's channel, whose join
 * times out after `appJoinTimeoutMs`. `onClient` runs on the client before anything is set up on it
 * (an app's start-up). `teardown` also removes the app's channel.
 */
async function appChannelOnStuckSockets({
  stuck = 1,
  appJoinTimeoutMs = 1_000,
  onGiveUp = (_subscription: { unsubscribe(): Promise<void> }, _client: SupabaseClient) => {},
  onAppStatus = (_status: string, _client: SupabaseClient) => {},
  onClient = (_client: SupabaseClient) => {},
} = {}) {
  let giveUp = () => {};
  const fixture = await openingHandshakeFixture({
    onLog: (line) => {
      if (line.event === "socket_never_opened") giveUp();
    },
  });
  const { proxy, client, logs, service, a } = fixture;
  onClient(client);
  const appStates: string[] = [];
  proxy.freezeNew(stuck);
  const app = client
    .channel(`app-room-${crypto.randomUUID()}`, { config: { broadcast: { self: false } } })
    .subscribe((status) => {
      appStates.push(status);
      onAppStatus(status, client);
    }, appJoinTimeoutMs);
  const subscription = service.subscribeToProgress(a.id, () => {});
  giveUp = () => onGiveUp(subscription, client);
  const givenUp = () => logs.filter((l) => l.event === "socket_never_opened").length;
  const teardown = async () => {
    await client.removeChannel(app).catch(() => {});
    await fixture.teardown(subscription);
  };
  return { client, service, appStates, givenUp, teardown };
}

/** Unsubscribes once, however often it is called (the first give-up's turn); `done` is that call's end. */
function unsubscribeOnce() {
  let unsubscribed: Promise<void> | null = null;
  return {
    onGiveUp: (subscription: { unsubscribe(): Promise<void> }) =>
      void (unsubscribed ??= subscription.unsubscribe()),
    done: () => unsubscribed,
  };
}

/**
 * The client the app disconnected stays closed and its channel never joins again. A channel on
 * another client joined first shows time has passed for a reopen to have happened (realtime-js opens
 * a socket within one turn of connect()).
 */
async function assertStaysDisconnected(client: SupabaseClient, appStates: string[]): Promise<void> {
  const marker = newClient();
  try {
    const { status } = await joinChannel(marker, `marker-${crypto.randomUUID()}`, { private: false });
    assert.equal(status, "SUBSCRIBED");
  } finally {
    await closeClient(marker);
  }
  assert.equal(client.realtime.connectionState(), "closed", "the client the app disconnected stays closed");
  assert.ok(!appStates.includes("SUBSCRIBED"), appStates.join(","));
}

Deno.test({
  name:
    "realtime resilience: a socket whose opening handshake is never answered, given up as the service's own link closes, is replaced for the app's channels on the same client",
  ...behindProxy,
}, async () => {
  // Unsubscribed as the service gives the stuck socket up, the service joins no more: if the next
  // socket were left to its next join, the app's own channels on the client would stay down until
  // the app subscribed again.
  const link = unsubscribeOnce(); // the link closes in the same turn as the give-up
  const { service, appStates, givenUp, teardown } = await appChannelOnStuckSockets({
    onGiveUp: link.onGiveUp,
  });
  try {
    await waitFor("the stuck socket given up", () => givenUp() > 0);
    await link.done();
    assert.equal(service.stats().links, 0, "the service's link is closed");
    await waitFor("the app's channel joined on a new socket", () => appStates.includes("SUBSCRIBED"));
  } finally {
    await teardown();
  }
});

// An app may also hold the client's disconnect as a function of its own (a sign-out handler bound at
// start-up): what the service does must not depend on which reference the app calls.
for (const boundBeforehand of [false, true]) {
  Deno.test({
    name: boundBeforehand
      ? "realtime resilience: a socket given up by the service is not reopened once the app has disconnected the client, also through a reference to disconnect() taken beforehand"
      : "realtime resilience: a socket given up by the service is not reopened once the app has disconnected the client on purpose",
    ...behindProxy,
  }, async () => {
    // The socket is replaced because the service gave it up; a client the app disconnected stays
    // closed. The link closes in the same turn as the give-up, and the app disconnects the client on
    // purpose (signing out) a microtask later, once the service has opened the next socket.
    let signOut: () => Promise<unknown> = () => Promise.resolve();
    let steps: Promise<unknown> | null = null;
    const { client, appStates, givenUp, teardown } = await appChannelOnStuckSockets({
      // Bound at the app's start-up: before the app's channel and the service's subscription.
      onClient: (client) => signOut = client.realtime.disconnect.bind(client.realtime),
      onGiveUp: (subscription, client) => {
        steps ??= Promise.all([
          subscription.unsubscribe(),
          new Promise((resolve) =>
            queueMicrotask(() => resolve(boundBeforehand ? signOut() : client.realtime.disconnect()))
          ),
        ]);
      },
    });
    try {
      await waitFor("the stuck socket given up", () => givenUp() > 0);
      await steps;
      await assertStaysDisconnected(client, appStates);
    } finally {
      await teardown();
    }
  });
}

Deno.test({
  name:
    "realtime resilience: the socket opened in place of a stuck one hangs too, after the service's own link has closed: it is given up in its turn, and the app's channels rejoin on the next",
  ...behindProxy,
}, async () => {
  // The service's joins are what notice a stuck socket; with its last link closed as the first socket
  // was given up, none comes to notice that the next one hangs too, and the app's channels on the
  // client would wait on it for good.
  const link = unsubscribeOnce();
  const { service, appStates, givenUp, teardown } = await appChannelOnStuckSockets({
    stuck: 2, // the first two sockets' handshakes go nowhere
    onGiveUp: link.onGiveUp,
  });
  try {
    await waitFor("the stuck socket given up", () => givenUp() > 0);
    await link.done();
    assert.equal(service.stats().links, 0, "the service's link is closed");
    await waitFor("the second stuck socket given up", () => givenUp() === 2);
    await waitFor("the app's channel joined on a third socket", () => appStates.includes("SUBSCRIBED"));
  } finally {
    await teardown();
  }
});

Deno.test({
  name:
    "realtime resilience: a socket given up by the service is not reopened when the app disconnects the client in its channel's error callback, which the give-up calls",
  ...behindProxy,
}, async () => {
  // The give-up fails the channels on the stuck socket, the app's too: their callbacks run inside it.
  // An app that disconnects the client when its channel errs (signing out, or stopping until it
  // reconnects by itself) has disconnected it before the service decides on a new socket. phoenix,
  // on a socket that closed by itself, fails the channels first and reconnects only if no
  // disconnect() came meanwhile.
  const link = unsubscribeOnce(); // no join of the service's own opens a socket
  let disconnected: Promise<unknown> | null = null;
  const { client, appStates, givenUp, teardown } = await appChannelOnStuckSockets({
    onGiveUp: link.onGiveUp,
    // Its join may wait longer than the service's: it is still joining when the socket is given up.
    appJoinTimeoutMs: 30_000,
    onAppStatus: (status, client) => {
      if (status === "CHANNEL_ERROR") disconnected ??= client.realtime.disconnect();
    },
  });
  try {
    await waitFor("the stuck socket given up", () => givenUp() > 0);
    await link.done();
    assert.ok(disconnected, `the app's channel erred with the give-up: ${appStates.join(",")}`);
    await disconnected;
    await assertStaysDisconnected(client, appStates);
  } finally {
    await teardown();
  }
});

Deno.test({
  name:
    "realtime resilience: a slow but healthy opening handshake (longer than a join timeout) is not cut at every join timeout: the link goes live",
  ...behindProxy,
}, async () => {
  // A stuck socket is given up when a join times out on it; a congested network's handshake that takes
  // longer than a join timeout, every time, would then be cut every time and never open (polling for
  // good). Each socket given up in a row is allowed twice as long as the one before.
  const { sql, a, proxy, logs, service, teardown } = await openingHandshakeFixture();
  proxy.slowNew(2_500); // every handshake takes 2.5 join timeouts, then succeeds
  const changes: ProgressChange[] = [];
  const subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
  try {
    await waitFor("a socket given up", () => logs.some((l) => l.event === "socket_never_opened"));
    await waitFor("live", () => subscription.status === "live", { timeoutMs: 30_000 });
    proxy.slowNew(0);
    await writeProgress(sql, a.id, { series_id: "after-the-slow-handshake", chapter: 2, device_id: "phone" });
    await waitFor(
      "the write, live",
      () => changes.some((c) => c.row.series_id === "after-the-slow-handshake" && c.source === "realtime"),
    );
  } finally {
    await teardown(subscription);
  }
});

Deno.test({
  name:
    "realtime resilience: two services on one client (a component remounting) share the count of sockets given up in a row: the next socket is still allowed twice as long, not cut after one join timeout by the other service",
  ...behindProxy,
}, async () => {
  // Three sockets in a row hang opening. Whichever service gives a socket up,
  // the next one is allowed twice as long as the one before (less half a join timeout of slack for
  // an early join timer): with a count per service, the second service cut the first one's next
  // socket after one join timeout, and a handshake slower than that could be cut over and over.
  const { sql, proxy, client, logs, service, a, teardown } = await openingHandshakeFixture();
  // A second user only so that the two services' links have channels of their own on the client.
  const b = await createTestUser();
  const other = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, b.id),
    accessToken: b.accessToken,
    pollIntervalMs: 200,
    joinTimeoutMs: 1_000,
    backoff: { initialMs: 100, maxMs: 500 },
    log: (line) => logs.push(JSON.parse(line)),
  });
  proxy.freezeNew(3); // the first three sockets hang; the fourth opens
  const first = service.subscribeToProgress(a.id, () => {});
  const second = other.subscribeToProgress(b.id, () => {});
  try {
    const givenUp = () => logs.filter((l) => l.event === "socket_never_opened");
    await waitFor("three sockets given up", () => givenUp().length >= 3, { timeoutMs: 30_000 });
    // The service logs the time it allowed each socket (its own decision, not this test's clock):
    // one join timeout, then twice and four times as long, whichever service gave the socket up.
    const allowed = givenUp().slice(0, 3).map((l) => Number(l.allowed_ms));
    assert.deepEqual(allowed, [1_000, 2_000, 4_000], JSON.stringify(givenUp()));
    // And each was given up only once its allowance (less the half join timeout of slack) was spent,
    // by the service's own reading of how long it had been opening.
    for (const line of givenUp().slice(0, 3)) {
      assert.ok(Number(line.opening_ms) >= Number(line.allowed_ms) - 500, JSON.stringify(line));
    }
    // The fourth socket is not frozen: it opens (its channels' joins are not this test's point: one
    // client holds one session, and the two services here install two users' tokens on it).
    await waitFor("the fourth socket open", () => client.realtime.isConnected(), { timeoutMs: 30_000 });
  } finally {
    await second.unsubscribe();
    await other.close();
    await teardown(first);
  }
});
