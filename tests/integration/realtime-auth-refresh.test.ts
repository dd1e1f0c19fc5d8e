// Short-lived access tokens: RealtimeService pushes each new token to the joined channel before the
// old one expires, so the channel stays open and no update is missed. Without a refresh, the
// endpoint closes the channel at expiry exactly as Supabase does (system message, then phx_close),
// the service keeps the device current by polling, and a new token brings it back live at once.

import assert from "node:assert/strict";
import {
  type ProgressChange,
  RealtimeService,
  type RealtimeServiceOptions,
} from "../../shared/realtime/realtimeService.ts";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { adminSql, createTestUser, localRealtime, mintsTokens, testEnv } from "../support/env.ts";
import { type RealtimeServer, startRealtimeServer } from "../../local/realtime/endpoint.ts";
import {
  frozenClock,
  movableMonotonicClock,
  movableWallClock,
  pendingFor,
  watchTimers,
} from "../shared/realtime/watchTimers.ts";
import {
  clientWithToken,
  closeClient,
  joinChannel,
  type JoinedChannel,
  newClient,
  noSanitize,
  ownEndpoint,
  serverState,
  type Sql,
  sqlChangesSince,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;

/**
 * The life of a token whose confirm timer a test finds among the pending timers by its delay (25
 * minutes; 28 for the token that outlives it): under the 30 to 60 minutes postgres.js gives each
 * database connection as its max_lifetime, a timer started when the connection opens. The connections
 * this process's pools (the test's, its stand-in's) open while watchTimers watches are among the
 * pending timers too, and a token living 50 minutes put its confirm's window (a few seconds wide, near
 * 3,000,000 ms) inside their range: one drawn into it was a second timer in the window.
 */
const CONFIRMED_LIFE_S = 1_500;
const CONFIRMED_LONGER_LIFE_S = 1_700;

Deno.test({
  name:
    "realtime auth: tokens refreshed ahead of each expiry keep the channel live past three of them (held, then applied at the expiry), 0 missed",
  ...ownEndpoint,
  ignore: ownEndpoint.ignore || !mintsTokens, // tokens of a chosen lifetime (tests/support/env.ts)
}, async () => {
  // RealtimeService pushes each new token to the joined channel, so the channel outlives every token
  // it held. A device of A on an in-process stand-in of its own whose refresh window (Supabase's 10 s
  // ACCESS_TOKEN_THROTTLE_MS) is 2 hours: the first refresh is applied at once, and each later one is
  // held (a second push replaces it) until the current token's confirm, due at its expiry, applies it,
  // as Supabase does with an app refreshing more often than its window. Tokens live 25 minutes; the
  // wall clock that judges them (Date.now(): the stand-in's checks, its confirm timers' delays, the
  // tokens' minting) is moved on by hand (movableWallClock), and each confirm timer, found by its delay
  // (watchTimers), is run by hand once the clock has reached that token's expiry: a token expires when
  // the test says, only after the next one was pushed and seen held, and no wait is timed. Without the
  // pushes the channel would close at the first confirm for an expired token.
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  const LIFE_S = CONFIRMED_LIFE_S;
  const WINDOW_MS = 7_200_000;
  const ROUNDS = 3;
  const t0 = Date.now() - 60_000; // the writes' dates, before the wall clock moves
  const timers = watchTimers();
  const wall = movableWallClock();
  const serverLogs: Record<string, unknown>[] = [];
  const logs: Record<string, unknown>[] = [];
  let server: RealtimeServer | undefined;
  let client: SupabaseClient | undefined;
  let service: RealtimeService | undefined;
  let subscription: ReturnType<RealtimeService["subscribeToProgress"]> | undefined;
  try {
    server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
      log: (fields) => serverLogs.push(fields),
      accessTokenThrottleMs: WINDOW_MS,
      idleTimeoutMs: 0, // its sweep reads Date.now(): a moved clock would make the socket look idle
    });
    const logged = (event: string) => serverLogs.filter((l) => l.event === event).length;
    // Push timeouts of 30 s (realtime-js's default is 10 s), well apart from the timers looked for.
    client = newClient({ url: server.url, timeout: 30_000 });
    const joinToken = await a.newAccessToken(LIFE_S);
    service = new RealtimeService(client, {
      changesSince: sqlChangesSince(sql, a.id),
      accessToken: joinToken,
      pollIntervalMs: 200,
      log: (line) => logs.push(JSON.parse(line)),
    });
    const changes: ProgressChange[] = [];
    subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
    await waitFor("live", () => subscription!.status === "live", { timeoutMs: 20_000 });

    const written: string[] = [];
    const seen = () =>
      new Set(changes.map((c) => `${c.row.series_id}@${new Date(c.row.updated_at).toISOString()}`));
    const writeAndSee = async (what: string) => {
      const i = written.length;
      const updated_at = new Date(t0 + i).toISOString();
      await writeProgress(sql, a.id, { series_id: `s${i % 3}`, chapter: i, device_id: "phone", updated_at });
      const key = `s${i % 3}@${updated_at}`;
      written.push(key);
      // However long a loaded machine takes: the bound only catches a hang.
      await waitFor(`write ${i} (${what})`, () => seen().has(key), { timeoutMs: 30_000 });
    };
    await writeAndSee("joined");

    // The first refresh: applied at once, its confirm set for the token's expiry.
    let current = await a.newAccessToken(LIFE_S);
    let before = Date.now();
    await service.setAccessToken(current);
    await waitFor("the first refresh applied", () => logged("token_refreshed") === 1, { timeoutMs: 20_000 });
    let confirm = confirmTimerFor(timers, current, before, Date.now());
    assert.equal(logged("access_token_throttled"), 0, "the first refresh was held");
    await writeAndSee("after the first refresh");

    let latest = current;
    for (let round = 1; round <= ROUNDS; round++) {
      // A minute before the current token's expiry the app refreshes, twice within the window: the
      // first push is held, the second replaces it.
      wall.advance(Math.max(0, expiryMs(current) - 60_000 - Date.now()));
      const held = await a.newAccessToken(LIFE_S);
      await service.setAccessToken(held);
      await waitFor(
        `round ${round}: the refresh held (or the channel closed)`,
        () => logged("access_token_throttled") === round || logged("channel_shutdown") > 0,
        { timeoutMs: 20_000 },
      );
      latest = await a.newAccessToken(LIFE_S);
      await service.setAccessToken(latest);
      await waitFor(
        `round ${round}: the held refresh replaced (or the channel closed)`,
        () => logged("access_token_held_replaced") === round || logged("channel_shutdown") > 0,
        { timeoutMs: 20_000 },
      );
      assert.equal(logged("channel_shutdown"), 0, `round ${round}: closed while holding`);
      await writeAndSee(`round ${round}, a token held`);

      // The current token's expiry: on the server's clock it has expired, and its confirm runs.
      wall.advance(Math.max(0, expiryMs(current) - Date.now()));
      before = Date.now();
      timers.fire(confirm);
      await waitFor(
        `round ${round}: the held token applied at the expiry (or the channel closed)`,
        () => logged("token_refreshed") === round + 1 || logged("channel_shutdown") > 0,
        { timeoutMs: 20_000 },
      );
      assert.deepEqual(
        serverLogs.filter((l) => l.event === "channel_shutdown").map((l) => l.reason),
        [],
        `round ${round}: the channel was closed at the expiry`,
      );
      assert.equal(logged("token_confirmed"), 0, `round ${round}: the expired token was confirmed`);
      current = latest;
      confirm = confirmTimerFor(timers, current, before, Date.now());
      await writeAndSee(`round ${round}, past the expiry`);
    }

    // Every token before the last has expired on the server's clock, the one the channel joined with
    // first; the channel stayed joined through all of it, and every write came over it.
    assert.ok(expiryMs(joinToken) <= Date.now(), "the join token has expired");
    const missed = written.filter((w) => !seen().has(w));
    assert.deepEqual(missed, [], "missed updates");
    assert.ok(changes.every((c) => c.source === "realtime"), "all updates came over Realtime");
    assert.equal(subscription.status, "live");
    assert.deepEqual(
      logs.filter((l) => l.event === "realtime_unavailable" || l.event === "system_message"),
      [],
    );
    assert.equal(logs.filter((l) => l.event === "join_attempt").length, 1);
    assert.equal(logs.filter((l) => l.event === "access_token_set").length, 1 + 2 * ROUNDS);
    assert.equal(client.realtime.accessTokenValue, latest, "the Realtime client holds the newest token");
  } finally {
    if (subscription && service && client) await teardown(subscription, service, client, sql);
    else await sql.end({ timeout: 5 });
    wall.restore();
    timers.restore();
    await server?.close();
  }
});

Deno.test({
  ignore: !mintsTokens, // needs tokens of a chosen lifetime (tests/support/env.ts)
  name: "realtime auth: without a refresh the server closes at expiry; a new token brings it back",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  // Closed as the test ends, however it ends (a set-up step or the teardown throwing too).
  await using stage = await expiryStage();
  const client = stage.client;
  const { service, logs } = stageService(client, sql, a, {
    // The retry after the close is ~10 minutes away: only the new token can bring the link back.
    backoff: { initialMs: 600_000, maxMs: 600_000 },
    random: () => 0.99,
  });
  const changes: ProgressChange[] = [];
  const subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
  try {
    await waitFor("live", () => subscription.status === "live");
    await stage.expire(service, a);
    await waitFor("expiry closes the channel", () => subscription.status === "polling", {
      timeoutMs: 30_000,
    });
    const system = logs.find((l) => l.event === "system_message");
    assert.match(String(system?.message), /^Token has expired \d+ seconds ago$/);

    // While polling, writes still reach the device.
    await writeProgress(sql, a.id, { series_id: "monster", chapter: 9, device_id: "tablet" });
    await waitFor(
      "the write by polling",
      () => changes.some((c) => c.row.series_id === "monster" && c.source === "poll"),
    );

    const retry = logs.find((l) => l.event === "realtime_unavailable");
    assert.ok((retry?.retry_in_ms as number) > 500_000, "the backoff alone would wait ~10 minutes");
    await service.setAccessToken(await a.newAccessToken(3600));
    await waitFor("live again (a new token skips the backoff)", () => subscription.status === "live");
    await writeProgress(sql, a.id, { series_id: "monster", chapter: 10, device_id: "tablet" });
    await waitFor("live update", () => changes.some((c) => c.row.chapter === 10 && c.source === "realtime"));
    const server = await serverState(sql, a.id);
    assert.equal(server.get("monster")?.chapter, 10);
  } finally {
    await teardown(subscription, service, client, sql);
  }
});

Deno.test({
  ignore: !mintsTokens, // needs tokens of a chosen lifetime (tests/support/env.ts)
  name:
    "realtime auth: the token the server closed the channel for is not sent again: the rejoin waits for the next token (polling meanwhile), then goes at once",
  ...noSanitize,
}, async () => {
  // The app's token runs out while it is fetching the next one (a token keeper's check that waits for
  // the network): the server closes the channel at the expiry, and the rejoins the backoff makes
  // meanwhile would carry that token, each refused after Supabase's 5 s join-error backoff, the socket
  // answering nothing else meanwhile.
  // Pushes time out after 2 s: a token in place that long before the close is the one the server held.
  await using stage = await expiryStage({ pushTimeoutMs: 2_000, realLifeS: 8 });
  const sql = adminSql();
  const a = await createTestUser();
  const client = stage.client;
  const { service, logs } = stageService(client, sql, a, {
    joinTimeoutMs: 20_000,
    backoff: { initialMs: 100, maxMs: 400 },
  });
  const changes: ProgressChange[] = [];
  const subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
  const count = (event: string) => logs.filter((l) => l.event === event).length;
  try {
    await waitFor("live", () => subscription.status === "live");
    // The last token the app got, in place for more than the 2 s push timeout when it expires (on the
    // stand-in the expiry and that time in place brought by hand; against a real stack, a token of 8 s).
    await stage.expire(service, a);
    await waitFor("expiry closes the channel", () => count("system_message") > 0, { timeoutMs: 30_000 });
    assert.match(String(logs.find((l) => l.event === "system_message")?.message), /^Token has expired/);
    // The rejoin after the close (1.6-2 s later), and the next step of the backoff: held, or (before) a
    // join made with the expired token.
    await waitFor(
      "two rejoins",
      () => count("join_held_token_expired") + count("join_attempt") >= 3,
      { timeoutMs: 30_000 },
    );
    assert.equal(count("join_attempt"), 1, "no join made with the expired token");
    assert.equal(service.stats().joinAttempts, 1);

    // Polling meanwhile: a write still reaches the device.
    await writeProgress(sql, a.id, { series_id: "meanwhile", chapter: 3, device_id: "tablet" });
    await waitFor(
      "the write by polling",
      () => changes.some((c) => c.row.series_id === "meanwhile" && c.source === "poll"),
    );
    await service.setAccessToken(await a.newAccessToken(3600));
    await waitFor("live with the new token", () => subscription.status === "live");
    assert.equal(service.stats().joinAttempts, 2, "one join, with the new token");
  } finally {
    await teardown(subscription, service, client, sql);
  }
});

Deno.test({
  ignore: !mintsTokens, // needs tokens of a chosen lifetime (tests/support/env.ts)
  name:
    "realtime auth: the moment the server closes the channel the link is no longer live, and a token given before any poll answers rejoins at once",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  // Closed as the test ends, however it ends (a set-up step or the teardown throwing too).
  await using stage = await expiryStage();
  const client = stage.client;
  const changesSince = sqlChangesSince(sql, a.id);
  // Once live, every poll waits at this gate: the link cannot learn its state from a poll answer.
  let gate: Promise<void> | null = null;
  let openGate = () => {};
  const { service, logs } = stageService(client, sql, a, {
    changesSince: async (cursor) => {
      if (gate) await gate;
      return await changesSince(cursor);
    },
    backoff: { initialMs: 600_000, maxMs: 600_000 },
    random: () => 0.99,
  });
  const subscription = service.subscribeToProgress(a.id, () => {});
  try {
    await waitFor("live", () => subscription.status === "live");
    gate = new Promise((resolve) => openGate = resolve);
    await stage.expire(service, a);
    await waitFor("expiry closes the channel", () => logs.some((l) => l.event === "realtime_unavailable"), {
      timeoutMs: 30_000,
    });
    assert.equal(
      subscription.status,
      "connecting",
      "not live once the channel is gone, before any poll answers",
    );
    await service.setAccessToken(await a.newAccessToken(3600));
    gate = null;
    openGate();
    await waitFor(
      "live again without waiting out the 10-minute backoff",
      () => subscription.status === "live",
    );
  } finally {
    openGate();
    await teardown(subscription, service, client, sql);
  }
});

Deno.test({
  name: "realtime auth: supabase.auth TOKEN_REFRESHED is followed (listener held only while subscribed)",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const client = newClient();
  const logs: Record<string, unknown>[] = [];
  // No explicit token: the service follows the client's auth events.
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    log: (l) => logs.push(JSON.parse(l)),
  });
  const emitters = () =>
    (client.auth as unknown as { stateChangeEmitters: Map<unknown, unknown> }).stateChangeEmitters.size;
  const baseline = emitters();
  const subscription = service.subscribeToProgress(a.id, () => {});
  try {
    assert.equal(emitters(), baseline + 1);
    const token = await a.newAccessToken(3600);
    // What GoTrue emits after a refresh (no Auth server locally, so the event is emitted directly).
    await (client.auth as unknown as { _notifyAllSubscribers(e: string, s: unknown): Promise<void> })
      ._notifyAllSubscribers("TOKEN_REFRESHED", {
        access_token: token,
        refresh_token: "r",
        expires_in: 3600,
        token_type: "bearer",
        user: { id: a.id },
      });
    assert.equal(client.realtime.accessTokenValue, token);
    assert.ok(logs.some((l) => l.event === "auth_token_refreshed"));
  } finally {
    await teardown(subscription, service, client, sql);
  }
  assert.equal(emitters(), baseline);
});

Deno.test({
  name:
    "realtime auth: a token set while the join is in flight reaches the channel once joined (no flap at the old token's expiry)",
  ...ownEndpoint,
  ignore: ownEndpoint.ignore || !mintsTokens, // tokens of a chosen lifetime (tests/support/env.ts)
}, async () => {
  // realtime-js's setAuth sends a new token only to channels already joined. A refresh that lands
  // between phx_join (old token) and its reply left the server holding the old token: at its
  // expiry the channel was closed and the device polled until it rejoined. The service now sends
  // the current token on the channel once joined. On an in-process stand-in of its own: the old
  // token lives 25 minutes (the join is accepted however long a loaded machine takes), the wall
  // clock that judges it is moved past its expiry by hand (movableWallClock), and the channel's
  // confirm timer, due at its token's expiry (watchTimers), is run by hand then: a channel still
  // holding the old token is closed for it, one holding the new token stays.
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  const topic = `realtime:progress:${a.id}`;
  const timers = watchTimers();
  const wall = movableWallClock();
  const serverLogs: Record<string, unknown>[] = [];
  let server: RealtimeServer | undefined;
  let service: RealtimeService | null = null;
  let client: SupabaseClient | undefined;
  let subscription: ReturnType<RealtimeService["subscribeToProgress"]> | undefined;
  try {
    server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
      log: (fields) => serverLogs.push(fields),
      idleTimeoutMs: 0, // its sweep reads Date.now(): a moved clock would make the socket look idle
    });
    const logged = (event: string) => serverLogs.filter((l) => l.event === event).length;
    const oldToken = await a.newAccessToken(CONFIRMED_LIFE_S);
    const newToken = await a.newAccessToken(CONFIRMED_LONGER_LIFE_S);
    const spy = spyingClient(topic, () => void service?.setAccessToken(newToken), server.url);
    client = spy.client;
    const { sent, received } = spy;
    service = new RealtimeService(client, {
      changesSince: sqlChangesSince(sql, a.id),
      accessToken: oldToken,
      pollIntervalMs: 200,
    });
    const changes: ProgressChange[] = [];
    const statuses: string[] = [];
    const beforeJoin = Date.now();
    subscription = service.subscribeToProgress(a.id, (c) => changes.push(c));
    subscription.onStatus((status) => statuses.push(status));
    await waitFor("live", () => subscription!.status === "live", { timeoutMs: 20_000 });
    assert.equal(
      sent.find((f) => f.event === "phx_join")?.token,
      oldToken,
      "the join went out with the old token",
    );
    await waitFor(
      "the new token on the joined channel",
      () => sent.some((f) => f.event === "access_token" && f.token === newToken),
    );
    await waitFor(
      "the new token applied (its first refresh: at once)",
      () => logged("token_refreshed") === 1,
      {
        timeoutMs: 20_000,
      },
    );
    const afterApplied = Date.now();
    assert.equal(serverLogs.find((l) => l.event === "token_refreshed")?.exp, expiryMs(newToken) / 1000);

    // The old token's expiry: the wall clock is moved past it, and the channel's confirm runs. The
    // stand-in set it anew for what was left of the new token's life when it applied that token (its
    // 28 minutes are under the hour's cap; the old token's confirm went with it), pushed after the
    // join and applied by afterApplied.
    const confirm = confirmTimerFor(timers, newToken, beforeJoin, afterApplied);
    wall.advance(Math.max(0, expiryMs(oldToken) - Date.now()));
    timers.fire(confirm);
    await waitFor(
      "the channel's token confirmed (or the channel closed)",
      () => logged("token_confirmed") === 1 || logged("channel_shutdown") > 0,
      { timeoutMs: 20_000 },
    );
    assert.deepEqual(serverLogs.filter((l) => l.event === "channel_shutdown").map((l) => l.reason), []);
    await writeProgress(sql, a.id, { series_id: "after-expiry", chapter: 7, device_id: "phone" });
    await waitFor(
      "the write, live",
      () => changes.some((c) => c.row.series_id === "after-expiry" && c.source === "realtime"),
      { timeoutMs: 20_000 },
    );
    assert.deepEqual(
      received.filter((e) => e === "system" || e === "phx_close"),
      [],
      "the server closed nothing",
    );
    assert.equal(sent.filter((f) => f.event === "phx_join").length, 1, "joined once");
    assert.ok(!statuses.slice(statuses.indexOf("live")).includes("connecting"), `statuses ${statuses}`);
  } finally {
    if (subscription && service && client) await teardown(subscription, service, client, sql);
    else await sql.end({ timeout: 5 });
    wall.restore();
    timers.restore();
    await server?.close();
  }
});

Deno.test({
  name:
    "realtime auth: a join refused for a token replaced while it was in flight is retried at once, not after a backoff",
  ...noSanitize,
  ignore: !mintsTokens, // needs a token that has expired
}, async () => {
  // The join goes out with an expired token and the new one arrives before the refusal: the retry
  // uses the new token right away. A backoff here (5 s at the least with these settings) would
  // leave the device polling for nothing. Timed from the refusal, which comes after Supabase's
  // CHANNEL_ERROR_BACKOFF_MS (5 s; kept here: the token lands well inside that window, as on Supabase).
  const sql = adminSql();
  const a = await createTestUser();
  const topic = `realtime:progress:${a.id}`;
  const expired = await a.newAccessToken(-60);
  const fresh = await a.newAccessToken(3_600);
  let service: RealtimeService | null = null;
  const { client, sent, received } = spyingClient(topic, () => void service?.setAccessToken(fresh));
  const logs: Record<string, unknown>[] = [];
  service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: expired,
    pollIntervalMs: 200,
    backoff: { initialMs: 5_000, maxMs: 5_000 },
    random: () => 0.999,
    log: (line) => logs.push(JSON.parse(line)),
  });
  const subscription = service.subscribeToProgress(a.id, () => {});
  try {
    await waitFor("refused", () => received.includes("phx_reply") && sent.length >= 1, { timeoutMs: 15_000 });
    await waitFor("live", () => subscription.status === "live", { timeoutMs: 15_000 });
    // The retry's timer, not how soon a loaded machine got live: at once, not after the 5 s backoff.
    const retries = logs.filter((l) => l.event === "realtime_unavailable").map((l) => l.retry_in_ms);
    assert.deepEqual(retries, [0], "one refusal, retried at once");
    const joins = sent.filter((f) => f.event === "phx_join");
    assert.equal(joins[0].token, expired, "the first join carried the expired token");
    assert.equal(joins.at(-1)?.token, fresh, "the retry carries the new one");
  } finally {
    await teardown(subscription, service, client, sql);
  }
});

Deno.test({
  name:
    "realtime auth: a second token within 10 s of the last one applied is held until the window ends; a later push replaces it",
  ...ownEndpoint,
}, async () => {
  // Supabase's ACCESS_TOKEN_THROTTLE_MS (10 s): a channel's first new token is applied at once, one
  // pushed within 10 s of the last applied is held (the channel keeps serving with the current one)
  // and applied when the window ends; a push while one is held replaces it. Two devices of A, each on
  // an in-process stand-in of its own: "held" has the default window, "replaced" a 7 s one, so each
  // hold's timer is told apart by its delay. Each applies a fresh token of A, then pushes C's token
  // (which the read policy refuses); "replaced" then pushes another fresh token of A, which replaces
  // C's. The stand-in's clock (performance.now) is stopped and moved on by hand, and the holds' timers
  // are run by hand (watchTimers): each window ends when the test says, and none is waited for.
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  const c = await createTestUser();
  const MOVED_ON_MS = 1_234; // between the first refresh's application and C's token
  const timers = watchTimers();
  const clock = frozenClock();
  const devices: {
    name: string;
    windowMs: number;
    logs: Record<string, unknown>[];
    server: RealtimeServer;
    client: SupabaseClient;
    setToken: (next: string) => void;
    joined: JoinedChannel;
  }[] = [];
  try {
    for (const [name, windowMs] of [["held", 10_000], ["replaced", 7_000]] as const) {
      const logs: Record<string, unknown>[] = [];
      const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
        log: (fields) => logs.push(fields),
        // The first keeps the stand-in's default, Supabase's 10 s.
        ...(windowMs === 10_000 ? {} : { accessTokenThrottleMs: windowMs }),
      });
      let token = a.accessToken;
      // Push timeouts of 30 s: realtime-js's default 10 s timers (an access_token push gets no reply)
      // would stand among the holds' timers.
      const client = clientWithToken(() => token, { url: server.url, timeout: 30_000 });
      devices.push({ name, windowMs, logs, server, client, setToken: (next) => token = next, joined: null! });
      const result = await joinChannel(client, topicOf(a.id));
      assert.equal(result.status, "SUBSCRIBED", name);
      devices.at(-1)!.joined = result.joined;
    }
    const [held, replaced] = devices;
    const logged = (device: typeof held, event: string) =>
      device.logs.filter((l) => l.event === event).length;
    const holdOf = (device: typeof held) => device.windowMs - MOVED_ON_MS;

    // First refresh of each channel: applied at once.
    for (const device of devices) {
      device.setToken(await a.newAccessToken(3_600));
      await device.client.realtime.setAuth();
      await waitFor(
        `${device.name}: the first refresh applied`,
        () => logged(device, "token_refreshed") === 1,
        { timeoutMs: 20_000 },
      );
      assert.equal(logged(device, "access_token_throttled"), 0, `${device.name}: the first refresh was held`);
    }
    clock.advance(MOVED_ON_MS);
    // C's token, within the window: held for what is left of it, counted from the last application.
    for (const device of devices) {
      device.setToken(c.accessToken);
      await device.client.realtime.setAuth();
      await waitFor(
        `${device.name}: C's token held (or applied)`,
        () => logged(device, "access_token_throttled") === 1 || device.joined.states.includes("CLOSED"),
        { timeoutMs: 20_000 },
      );
      assert.deepEqual(device.joined.system, [], `${device.name}: C's token was applied at once`);
      assert.equal(
        device.logs.find((l) => l.event === "access_token_throttled")?.apply_in_ms,
        holdOf(device),
        `${device.name}: C's token held for what was left of the window`,
      );
      assert.ok(pendingFor(timers, holdOf(device)), `${device.name}: no timer for ${holdOf(device)} ms`);
    }
    replaced.setToken(await a.newAccessToken(3_600));
    await replaced.client.realtime.setAuth();
    await waitFor("C's held token replaced", () => logged(replaced, "access_token_held_replaced") === 1, {
      timeoutMs: 20_000,
    });

    // C's token is held: both channels still serve A's progress with A's token.
    await writeProgress(sql, a.id, { series_id: "inside-window", chapter: 1, device_id: "phone" });
    for (const device of devices) {
      await waitFor(`${device.name}: the write inside the window`, () => device.joined.received.length >= 1, {
        timeoutMs: 20_000,
      });
      assert.deepEqual(device.joined.system, [], device.name);
      assert.ok(!device.joined.states.includes("CLOSED"), `${device.name}: ${device.joined.states}`);
    }

    // At the window's end the held token is applied: C's closes the first channel...
    timers.fire(holdOf(held));
    await waitFor("the first channel to close", () => held.joined.states.includes("CLOSED"), {
      timeoutMs: 20_000,
    });
    assert.deepEqual(held.joined.system.map((m) => m.message), [
      `You do not have permissions to read from this Channel topic: ${topicOf(a.id)}`,
    ]);
    // ...and the second, whose held token was replaced by A's, stays joined and serves once its own
    // window is over too.
    timers.fire(holdOf(replaced));
    await waitFor(
      "A's token applied at the second window's end (or C's)",
      () => logged(replaced, "token_refreshed") === 2 || replaced.joined.states.includes("CLOSED"),
      { timeoutMs: 20_000 },
    );
    assert.deepEqual(replaced.joined.system, [], "C's token was applied at the second window's end");
    await writeProgress(sql, a.id, { series_id: "after-window", chapter: 2, device_id: "phone" });
    await waitFor("the second device's write after the window", () => replaced.joined.received.length >= 2, {
      timeoutMs: 20_000,
    });
    assert.deepEqual(replaced.joined.system, []);
    assert.ok(!replaced.joined.states.includes("CLOSED"), replaced.joined.states.join(","));
    assert.equal(logged(replaced, "channel_shutdown"), 0);
  } finally {
    await Promise.all(devices.map((d) => closeClient(d.client)));
    clock.restore();
    timers.restore();
    await Promise.all(devices.map((d) => d.server.close()));
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime auth: a held token is applied at the current token's expiry when that comes before the window ends",
  ...ownEndpoint,
}, async () => {
  // Supabase's confirm_token, due at the current token's expiry, applies the held token instead of
  // finding the current one expired. A device of A on an in-process stand-in of its own applies a token
  // of A's (its first refresh: applied at once), then pushes C's (which the read policy refuses): held.
  // The stand-in's window is 2 hours on a stopped clock (frozenClock) and A's token lives 25 minutes,
  // so the current token's confirm is due first; its timers are run by hand (watchTimers). The token's
  // confirm timer, set for what is left of its life, applies C's token: the channel closes for C's
  // missing permission, not for an expired token, with the window's timer still pending. Nothing is
  // waited for by time.
  const env = testEnv();
  const WINDOW_MS = 7_200_000;
  const LIFE_S = CONFIRMED_LIFE_S;
  const a = await createTestUser();
  const c = await createTestUser();
  const timers = watchTimers();
  const clock = frozenClock();
  const logs: Record<string, unknown>[] = [];
  let server: RealtimeServer | undefined;
  let client: SupabaseClient | undefined;
  try {
    server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
      log: (fields) => logs.push(fields),
      accessTokenThrottleMs: WINDOW_MS,
    });
    let token = a.accessToken;
    // Push timeouts of 30 s (realtime-js's default is 10 s), well apart from the timers looked for.
    client = clientWithToken(() => token, { url: server.url, timeout: 30_000 });
    const { joined, status } = await joinChannel(client, topicOf(a.id));
    assert.equal(status, "SUBSCRIBED");
    const logged = (event: string) => logs.filter((l) => l.event === event).length;

    // The first refresh: applied at once, its confirm set for the token's expiry.
    token = await a.newAccessToken(LIFE_S);
    const beforePush = Date.now();
    await client.realtime.setAuth();
    await waitFor("the first refresh applied", () => logged("token_refreshed") === 1, { timeoutMs: 20_000 });
    const afterApplied = Date.now();
    assert.equal(logged("access_token_throttled"), 0, "the first refresh was held");
    const atExpiry = confirmTimerFor(timers, token, beforePush, afterApplied);

    // C's token, within the window: held for all of it (the clock is stopped).
    token = c.accessToken;
    await client.realtime.setAuth();
    await waitFor(
      "C's token held (or applied)",
      () => logged("access_token_throttled") === 1 || joined.states.includes("CLOSED"),
      { timeoutMs: 20_000 },
    );
    assert.equal(joined.system.length, 0, "C's token was applied at once");
    assert.equal(logs.find((l) => l.event === "access_token_throttled")?.apply_in_ms, WINDOW_MS);
    assert.ok(pendingFor(timers, WINDOW_MS), `no timer for the window, among ${timers.pending()}`);
    assert.ok(atExpiry < WINDOW_MS);

    // The current token's expiry comes: the held token is applied, and C's closes the channel.
    timers.fire(atExpiry);
    await waitFor(
      "the channel to close (or A's token confirmed)",
      () => joined.states.includes("CLOSED") || logged("token_confirmed") > 0,
      { timeoutMs: 20_000 },
    );
    assert.equal(logged("token_confirmed"), 0, "the current token was confirmed, the held one not applied");
    assert.deepEqual(joined.system.map((m) => m.message), [
      `You do not have permissions to read from this Channel topic: ${topicOf(a.id)}`,
    ]);
    assert.ok(joined.states.includes("CLOSED"), joined.states.join(","));
  } finally {
    if (client) await closeClient(client);
    clock.restore();
    timers.restore();
    await server?.close();
  }
});

/**
 * A supabase-js client whose Realtime socket records the topic's frames (sent: event and token;
 * received: event) and calls `onFirstJoin` right after the first phx_join is sent, long before the
 * reply (that needs a JWT check and an RLS query).
 */
function spyingClient(topic: string, onFirstJoin: () => void, url = testEnv().url) {
  const sent: { event: string; token?: string }[] = [];
  const received: string[] = [];
  class SpyWebSocket extends WebSocket {
    constructor(url: string | URL, protocols?: ConstructorParameters<typeof WebSocket>[1]) {
      super(url, protocols);
      this.addEventListener("message", (e) => {
        if (typeof e.data !== "string") return;
        const [, , frameTopic, event] = JSON.parse(e.data);
        if (frameTopic === topic) received.push(event);
      });
    }
    override send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
      super.send(data);
      if (typeof data !== "string") return;
      const [, , frameTopic, event, payload] = JSON.parse(data);
      if (frameTopic !== topic) return;
      sent.push({ event, token: payload?.access_token });
      if (event === "phx_join" && sent.filter((f) => f.event === "phx_join").length === 1) {
        queueMicrotask(onFirstJoin);
      }
    }
  }
  const client = createClient(url, testEnv().anonKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: SpyWebSocket },
  });
  return { client, sent, received };
}

/** What every test here holds, released in order: the subscription, the service, the socket, the pool. */
async function teardown(
  subscription: { unsubscribe(): Promise<void> },
  service: { close(): Promise<void> },
  client: { realtime: { disconnect(): unknown } },
  sql: { end(options?: { timeout?: number }): Promise<void> },
): Promise<void> {
  // Each step is bounded, so a hang (seen once under heavy load, after a test's assertions had
  // passed) names its step instead of holding the whole suite. unsubscribe() and close() are the
  // service's promise (a hang there is a defect: fail); the client's disconnect and the test's own
  // connections are plumbing (say so, and go on).
  await withinTeardown("subscription.unsubscribe()", subscription.unsubscribe(), "fail");
  await withinTeardown("service.close()", service.close(), "fail");
  await withinTeardown("client.realtime.disconnect()", Promise.resolve(client.realtime.disconnect()), "warn");
  await withinTeardown("sql.end()", sql.end({ timeout: 5 }), "warn");
}

async function withinTeardown(step: string, done: Promise<unknown>, onHang: "fail" | "warn"): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<"hung">((resolve) => timer = setTimeout(() => resolve("hung"), 20_000));
  const outcome = await Promise.race([done.then(() => "done" as const), hung]).finally(() =>
    clearTimeout(timer)
  );
  if (outcome === "done") return;
  const message = `teardown: ${step} did not finish within 20 s`;
  if (onHang === "fail") throw new Error(message);
  console.warn(`${message}; going on`);
}

/**
 * The service of a test on the expiry stage: on its client, with `a`'s token, reading `a`'s changes
 * from the database, polling every 150 ms, its log lines parsed into `logs`; `options` are the
 * test's own (a changesSince of its own too).
 */
function stageService(
  client: SupabaseClient,
  sql: Sql,
  a: { id: string; accessToken: string },
  options: Partial<RealtimeServiceOptions>,
): { service: RealtimeService; logs: Record<string, unknown>[] } {
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    pollIntervalMs: 150,
    log: (line) => logs.push(JSON.parse(line)),
    ...options,
  });
  return { service, logs };
}

/**
 * Where a test's channel lives (`client`), and how the token it holds is made to expire (`expire`),
 * closing it. Held with `await using`: it ends what it started when the test's scope is left, after the
 * test's own teardown (its try's finally), and also when a step before that try or the teardown throws.
 *
 * On the local stand-in: an endpoint of the test's own in this process (its idle sweep off: it reads
 * Date.now(), and a moved clock would make the socket look idle). `expire` gives the live channel a
 * token of 25 minutes (its first refresh: applied at once, its confirm timer set for the token's
 * expiry, found among the pending timers by its delay with watchTimers), moves the wall clock that
 * judges tokens (Date.now(): the stand-in's checks, the tokens' minting) a second past that expiry by
 * hand (movableWallClock), and runs the confirm: the endpoint finds the token expired and closes the
 * channel as at any expiry, when the test says and with no wait. The wall clock stays moved for the
 * rest of the test (a new token is minted on it), and is restored as the stage is disposed of. With
 * `pushTimeoutMs` (the client's push timeout; 30 s otherwise), the service's clock (performance.now())
 * moves on by that long too before the confirm runs (movableMonotonicClock): the token has been in place
 * for the push timeout when it expires, as the token of `realLifeS` is against a real stack.
 *
 * Against a real stack, whose clock cannot be moved, the stack's Realtime and a token of `realLifeS`
 * (2 s by default: 1-2 s), left to expire. The channel joined with a lasting token there: a join that a loaded machine answered
 * only after a short token's expiry would be refused instead; a refresh that reached the server
 * after the expiry closes the channel the same way (the pushed token has expired).
 */
async function expiryStage(
  { pushTimeoutMs, realLifeS = 2 }: { pushTimeoutMs?: number; realLifeS?: number } = {},
): Promise<{
  client: SupabaseClient;
  expire(service: RealtimeService, user: { newAccessToken(seconds: number): Promise<string> }): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}> {
  if (!localRealtime) {
    return {
      client: newClient(pushTimeoutMs ? { timeout: pushTimeoutMs } : {}),
      expire: async (service, user) => await service.setAccessToken(await user.newAccessToken(realLifeS)),
      [Symbol.asyncDispose]: () => Promise.resolve(),
    };
  }
  const env = testEnv();
  const serverLogs: Record<string, unknown>[] = [];
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    log: (fields) => serverLogs.push(fields),
    idleTimeoutMs: 0,
  });
  // Installed by `expire`, so a test that fails before it leaves neither in place.
  let timers: ReturnType<typeof watchTimers> | undefined;
  let wall: ReturnType<typeof movableWallClock> | undefined;
  let monotonic: ReturnType<typeof movableMonotonicClock> | undefined;
  return {
    // Push timeouts of 30 s (realtime-js's default is 10 s) unless the test gives its own, well apart
    // from the timer looked for either way.
    client: newClient({ url: server.url, timeout: pushTimeoutMs ?? 30_000 }),
    expire: async (service, user) => {
      timers = watchTimers();
      wall = movableWallClock();
      const refreshed = () => serverLogs.filter((l) => l.event === "token_refreshed").length;
      const token = await user.newAccessToken(CONFIRMED_LIFE_S);
      const before = Date.now();
      await service.setAccessToken(token);
      await waitFor("the 25-minute token applied", () => refreshed() === 1);
      const atExpiry = confirmTimerFor(timers, token, before, Date.now());
      if (pushTimeoutMs) {
        // In place for the push timeout before it expires, as a token of realLifeS is against a real
        // stack: the service's clock that measures it moves on by that long, with no wait.
        monotonic = movableMonotonicClock();
        monotonic.advance(pushTimeoutMs);
      }
      wall.advance(Math.max(0, expiryMs(token) + 1_000 - Date.now()));
      timers.fire(atExpiry);
    },
    [Symbol.asyncDispose]: async () => {
      monotonic?.restore();
      wall?.restore();
      timers?.restore();
      await server.close();
    },
  };
}

/**
 * The delay of the one timer pending for `token`'s confirm, which the endpoint sets for what is left of
 * the token's life when it applies it: applied between `before` and `after` (the wall clock, read by
 * the test around the push and the wait for it to be applied), that is from expiry - after to expiry -
 * before. Throws unless exactly one pending timer is in that window (the database connections'
 * lifetimes, also pending, are longer: CONFIRMED_LIFE_S).
 */
function confirmTimerFor(
  timers: ReturnType<typeof watchTimers>,
  token: string,
  before: number,
  after: number,
): number {
  const expiry = expiryMs(token);
  const due = timers.pending().filter((ms) => ms >= expiry - after && ms <= expiry - before);
  assert.equal(due.length, 1, `one timer for the token's expiry, among ${timers.pending()}`);
  return due[0];
}

/** A JWT's `exp` in epoch milliseconds. */
function expiryMs(token: string): number {
  const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
  return payload.exp * 1000;
}
