// 10,000 subscribe/unsubscribe cycles through RealtimeService on one real supabase-js client and a
// real endpoint: afterwards nothing is left behind: no service timers, links, listeners or
// channels, the client has exactly its channels from before, the socket's callback lists are back
// to their size, the endpoint holds no extra channel, and Deno's op/resource sanitizers (on for
// the cycling test) find no timer or op the cycles started and left pending.

import assert from "node:assert/strict";
import type { SupabaseClient } from "@supabase/supabase-js";
import { type RealtimeServer, startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { RealtimeService } from "../../shared/realtime/realtimeService.ts";
import { adminSql, createTestUser, testEnv, type TestUser } from "../support/env.ts";
import {
  joinChannel,
  newClient,
  noSanitize,
  ownEndpoint,
  type Sql,
  sqlChangesSince,
  waitFor,
} from "./realtime_support.ts";

const CYCLES = 10_000;
/** Every n-th cycle waits until the link is live (real join + catch-up) before unsubscribing. */
const LIVE_EVERY = 100;

interface Fixture {
  server: RealtimeServer;
  client: SupabaseClient;
  sql: Sql;
  user: TestUser;
}
let fixture: Fixture;

function socketCallbackCounts(client: SupabaseClient) {
  const callbacks = client.realtime.stateChangeCallbacks;
  return {
    open: callbacks.open.length,
    close: callbacks.close.length,
    error: callbacks.error.length,
    message: callbacks.message.length,
  };
}

Deno.test(
  { name: "realtime leaks: setup (endpoint, client with an anchor channel)", ...ownEndpoint },
  async () => {
    const env = testEnv();
    const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
    // Heartbeats every hour: a heartbeat during the cycling test would leave realtime-js's own
    // (legitimate) next-heartbeat timer pending at the end and hide what we want to see.
    const client = newClient({ url: server.url, heartbeatIntervalMs: 3_600_000 });
    const sql = adminSql({ max: 1 });
    const user = await createTestUser();
    // The app's other channel (a public one: all channels of a client share its one token): keeps
    // the socket open, so realtime-js never schedules its disconnect-when-empty timer in the cycles.
    const anchor = await joinChannel(client, "anchor:leaks", { private: false });
    assert.equal(anchor.status, "SUBSCRIBED");
    await sql`select 1`; // open the pool's connection now, not inside the sanitized test
    fixture = { server, client, sql, user };
  },
);

/**
 * Counts every timer the client side (RealtimeService, realtime-js, the test) starts while
 * installed and that has neither fired (setTimeout) nor been cleared. The endpoint runs in this
 * process too: its timers (a channel's token re-check, its database pool's connection lifetime) are
 * the server's, counted apart. Where a timer was created is kept for the failure message.
 */
function trackTimers() {
  const live = new Map<unknown, Error>();
  const real = {
    setTimeout: globalThis.setTimeout,
    clearTimeout: globalThis.clearTimeout,
    setInterval: globalThis.setInterval,
    clearInterval: globalThis.clearInterval,
  };
  let created = 0;
  // deno-lint-ignore no-explicit-any
  const g = globalThis as any;
  g.setTimeout = (fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    created++;
    const id: unknown = real.setTimeout(() => {
      live.delete(id);
      fn(...args);
    }, ms);
    live.set(id, new Error("timer created here"));
    return id;
  };
  g.setInterval = (fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    created++;
    const id: unknown = real.setInterval(fn, ms, ...args);
    live.set(id, new Error("interval created here"));
    return id;
  };
  g.clearTimeout = (id?: number) => {
    live.delete(id);
    real.clearTimeout(id);
  };
  g.clearInterval = (id?: number) => {
    live.delete(id);
    real.clearInterval(id);
  };
  return {
    get created() {
      return created;
    },
    /** Pending timers as "where created"; `server` = started by the endpoint or its postgres.js pool. */
    pending(): { client: string[]; server: string[] } {
      const client: string[] = [];
      const server: string[] = [];
      for (const error of live.values()) {
        const stack = error.stack ?? "";
        const where = stack.split("\n").slice(2, 5).map((l) => l.trim()).join(" | ");
        (/\/local\/realtime\/|\/postgres\/\d/.test(stack) ? server : client).push(where);
      }
      return { client, server };
    },
    restore() {
      Object.assign(globalThis, real);
    },
  };
}

Deno.test({
  name: `realtime leaks: ${CYCLES} subscribe/unsubscribe cycles leave nothing behind`,
  ignore: ownEndpoint.ignore,
}, async () => {
  const { client, sql, user, server } = fixture;
  let timers: ReturnType<typeof trackTimers> | null = null;
  const channelsBefore = client.getChannels().map((c) => c.topic);
  const callbacksBefore = socketCallbackCounts(client);
  const heartbeatCallbackBefore = client.realtime.heartbeatCallback;
  const emitters = () =>
    (client.auth as unknown as { stateChangeEmitters: Map<unknown, unknown> }).stateChangeEmitters.size;
  const emittersBefore = emitters();
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, user.id),
    accessToken: user.accessToken,
    log: () => {},
  });
  let delivered = 0;
  let liveCycles = 0;
  for (let i = 0; i < CYCLES; i++) {
    const subscription = service.subscribeToProgress(user.id, () => delivered++);
    const offStatus = subscription.onStatus(() => {});
    if (i % LIVE_EVERY === 0) {
      await waitFor(`cycle ${i} live`, () => subscription.status === "live");
      liveCycles++;
    } else if (i % 3 === 1) {
      // Leave while the join is in flight.
      await new Promise((r) => setTimeout(r, 0));
    } else if (i % 3 === 2) {
      offStatus(); // and sometimes the UI removed its listener first
    }
    await subscription.unsubscribe();
    // Timers are tracked from the end of the first cycle on: that cycle gave the client the user's
    // token, and realtime-js pushed it to the anchor channel (a push Supabase never answers, whose
    // 10 s timeout is the anchor's, not a cycle's).
    if (i === 0) timers = trackTimers();
    if (i % 1000 === 0) {
      const s = service.stats();
      assert.equal(
        s.links + s.subscriptions + s.timers + s.channels + s.statusListeners,
        0,
        JSON.stringify(s),
      );
    }
  }
  const stats = service.stats();
  await service.close();
  timers!.restore();
  const pendingTimers = timers!.pending();
  console.log(
    `cycles ${CYCLES}: ${stats.joinAttempts} joins pushed, ${liveCycles} waited for live; ` +
      `${timers!.created} timers started, pending: client ${pendingTimers.client.length}, ` +
      `endpoint ${pendingTimers.server.length}`,
  );
  // Measured outside the service: every timer started by the service and realtime-js (push
  // timeouts, rejoin timers, join retries) during the cycles has fired or been cleared.
  assert.deepEqual(pendingTimers.client, [], "client timers left pending");
  assert.ok(timers!.created >= CYCLES, `only ${timers!.created} timers were started: tracking is not live`);
  assert.deepEqual(
    {
      links: stats.links,
      subscriptions: stats.subscriptions,
      timers: stats.timers,
      channels: stats.channels,
      authListeners: stats.authListeners,
      heartbeatWatches: stats.heartbeatWatches,
      statusListeners: stats.statusListeners,
    },
    {
      links: 0,
      subscriptions: 0,
      timers: 0,
      channels: 0,
      authListeners: 0,
      heartbeatWatches: 0,
      statusListeners: 0,
    },
  );
  assert.equal(liveCycles, CYCLES / LIVE_EVERY);
  // Cycles really reached the server (not only the ones that waited for live).
  assert.ok(stats.joinAttempts >= CYCLES / 4, `only ${stats.joinAttempts} joins were pushed`);
  assert.deepEqual(client.getChannels().map((c) => c.topic), channelsBefore, "client channels");
  assert.deepEqual(socketCallbackCounts(client), callbacksBefore, "socket callbacks");
  assert.equal(
    client.realtime.heartbeatCallback,
    heartbeatCallbackBefore,
    "the heartbeat watch is taken out again",
  );
  assert.equal(emitters(), emittersBefore, "auth listeners");
  // The endpoint processed every join and leave: only the anchor channel is left.
  await waitFor("the endpoint to settle", () => server.endpoint.stats().channels === 1, {
    timeoutMs: 60_000,
  });
  void delivered;
});

Deno.test({
  name: "realtime leaks: 300 cycles while Realtime is unreachable (polling, retries pending) leave no timer",
  ...ownEndpoint,
}, async () => {
  const { sql, user } = fixture;
  // Nothing listens on this port: every join fails, so each link polls and has a retry scheduled:
  // the timers a leak would most likely come from.
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const deadUrl = `http://127.0.0.1:${(probe.addr as Deno.NetAddr).port}`;
  probe.close();
  const timers = trackTimers();
  // realtime-js keeps a channel-less socket (and its reconnect timer) for 2 heartbeats (50 s) by
  // default before it disconnects; 100 ms here, so its own timers end within the test too.
  const client = newClient({
    url: deadUrl,
    reconnectAfterMs: () => 50,
    disconnectOnEmptyChannelsAfterMs: 100,
  });
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, user.id),
    accessToken: user.accessToken,
    pollIntervalMs: 20,
    backoff: { initialMs: 20, maxMs: 80 },
    joinTimeoutMs: 100,
    log: () => {},
  });
  let polled = 0;
  try {
    for (let i = 0; i < 300; i++) {
      const subscription = service.subscribeToProgress(user.id, () => {});
      if (i % 10 === 0) {
        await waitFor(`cycle ${i} polling`, () => subscription.status === "polling");
        polled++;
      } else if (i % 2 === 1) {
        await new Promise((r) => setTimeout(r, i % 7)); // leave at some point of the join/retry/poll
      }
      await subscription.unsubscribe();
    }
    await service.close();
    assert.equal(polled, 30);
    const stats = service.stats();
    assert.equal(
      stats.timers + stats.channels + stats.links + stats.statusListeners,
      0,
      JSON.stringify(stats),
    );
    assert.deepEqual(client.getChannels(), []);
    // Nothing the service started is pending (its own timers, and realtime-js timers it started).
    assert.deepEqual(
      timers.pending().client.filter((where) => where.includes("/shared/realtime/")),
      [],
      "timers started by RealtimeService left pending",
    );
    // realtime-js disconnects its socket 100 ms after its last channel went, and its disconnect()
    // races a 10 s timer it never clears: once that has run, no client timer at all is pending,
    // so nothing reschedules itself (a reconnect or poll loop would never get here).
    await waitFor("no client timer pending", () => timers.pending().client.length === 0)
      .catch(() => {}); // the assertion below shows which ones
    assert.deepEqual(timers.pending().client, [], "client timers left pending");
  } finally {
    timers.restore();
    await client.realtime.disconnect();
  }
});

Deno.test({ name: "realtime leaks: teardown", ...ownEndpoint }, async () => {
  const { client, sql, server } = fixture;
  await client.removeAllChannels();
  await client.realtime.disconnect();
  await sql.end();
  await server.close();
});

Deno.test({
  name:
    "realtime leaks: a socket given up while its opening handshake is unanswered leaves no TCP connection open (Deno's WebSocket.close() while CONNECTING)",
  ...noSanitize,
}, async () => {
  // A server that takes the TCP connection and reads the WebSocket handshake but never answers it: the
  // socket stays CONNECTING. The service gives it up (it closes the WebSocket while CONNECTING); a
  // runtime that kept the TCP connection until the network gave up would leave one open per socket
  // given up. Each connection's end is seen as the server reading end-of-stream.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connections: { handshake: boolean; ended: boolean }[] = [];
  void (async () => {
    for await (const conn of listener) {
      const seen = { handshake: false, ended: false };
      connections.push(seen);
      void (async () => {
        const buffer = new Uint8Array(16 * 1024);
        try {
          while ((await conn.read(buffer)) !== null) seen.handshake = true;
        } catch { /* reset: ended too */ }
        seen.ended = true;
        try {
          conn.close();
        } catch { /* closed already */ }
      })();
    }
  })().catch(() => {});
  const sql = adminSql({ max: 2 });
  const a = await createTestUser();
  const client = newClient({
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    reconnectAfterMs: () => 60_000,
  });
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    joinTimeoutMs: 1_000,
    backoff: { initialMs: 100, maxMs: 500 },
    pollIntervalMs: 500,
    log: (line) => logs.push(JSON.parse(line)),
  });
  const subscription = service.subscribeToProgress(a.id, () => {});
  try {
    await waitFor("the stuck socket given up", () => logs.some((l) => l.event === "socket_never_opened"));
    assert.ok(connections[0]?.handshake, "its handshake reached the server and went unanswered");
    await waitFor("its TCP connection closed by the client", () => connections[0].ended);
  } finally {
    await subscription.unsubscribe();
    await service.close();
    await client.realtime.disconnect();
    listener.close();
    await sql.end();
  }
});
