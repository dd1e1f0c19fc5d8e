// The web app's TokenKeeper (examples/web/lib/client/tokenKeeper.ts), wired as SyncProvider wires
// it: a supabase-js client asking it for every request's token, the outbox refreshing it on a 401.
// GET /auth/token is the web server's route; here it is stubbed (a relative URL has no server in
// Deno), everything else is the real local stack over HTTP.

import assert from "node:assert/strict";
import { defaultCompareRows } from "@shared/realtime/progressContract.ts";
import { ServerClock } from "@shared/progress/serverClock.ts";
import { SignedOutError, TokenKeeper } from "../../examples/web/lib/client/tokenKeeper.ts";
import { SyncStore } from "../../examples/web/lib/client/syncStore.ts";
import { flushOutbox } from "../../examples/web/lib/client/outbox.ts";
import { isRetryable, isTransient, progressApi, userClient } from "../../examples/web/lib/progressClient.ts";
import { createTestUser, mintsTokens, testEnv } from "../support/env.ts";
import { seriesId } from "../functions/support.ts";
import { pendingWrite } from "./support.ts";
import { waitFor } from "../integration/realtime_support.ts";

const noSanitize = { sanitizeOps: false, sanitizeResources: false } as const;
const realFetch = globalThis.fetch;

/** Seconds-since-epoch expiry of a JWT. */
const expOf = (jwt: string): number =>
  JSON.parse(atob(jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))).exp as number;

/** Answers the app's GET /auth/token with `answer` (other requests go out); returns the call count. */
function stubAuthToken(answer: (init?: RequestInit) => Promise<Response>): { calls: number } {
  const counter = { calls: 0 };
  globalThis.fetch = ((input: RequestInfo | URL, init?: RequestInit) => {
    const href = input instanceof Request ? input.url : String(input);
    if (href !== "/auth/token") return realFetch(input, init);
    counter.calls++;
    return answer(init);
  }) as typeof fetch;
  return counter;
}

const tokenAnswer = (accessToken: string, userId: string) => () =>
  Promise.resolve(Response.json({ accessToken, expiresAt: expOf(accessToken), userId }));

/** The web app's pieces for `userId`, wired as SyncProvider wires them to `tokens`. */
function webDevice(userId: string, tokens: TokenKeeper) {
  const env = testEnv();
  const supabase = userClient({
    supabaseUrl: env.url,
    anonKey: env.anonKey,
    accessToken: () => tokens.get(),
  });
  const api = progressApi(supabase, new ServerClock());
  const store = new SyncStore(userId, defaultCompareRows);
  const flush = () =>
    flushOutbox(store, api, {
      isRetryable,
      isTransient,
      isSignedOut: (error) => error instanceof SignedOutError,
      refreshToken: () => tokens.refresh().then(() => {}),
      isDisposed: () => false,
    });
  return { supabase, api, store, flush };
}

Deno.test({
  ignore: !mintsTokens, // needs tokens of a chosen lifetime (tests/support/env.ts)
  name: "token: a refresh that answers for another user (signed in again in another tab) signs this tab out",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const b = await createTestUser();
    const aToken = await a.newAccessToken(90); // under 120 s left: the provider's timer refreshes it
    stubAuthToken(tokenAnswer(b.accessToken, b.id)); // the cookie session is now B's
    try {
      const tokens = new TokenKeeper(aToken, expOf(aToken), { userId: a.id });
      const announced: string[] = [];
      tokens.onChange((token) => announced.push(token));
      await assert.rejects(tokens.refresh(), (error: unknown) => {
        assert.ok(error instanceof SignedOutError);
        assert.equal(error.userChanged, true);
        return true;
      });
      assert.equal(tokens.current, aToken, "B's token is never taken");
      assert.deepEqual(announced, [], "Realtime is not handed B's token");
      await assert.rejects(tokens.get(), SignedOutError);

      // A's outbox, flushed through a client asking this keeper: nothing lands in B's library,
      // and A's write stays queued for A's next sign-in.
      const { supabase, store, flush } = webDevice(a.id, tokens);
      const series = seriesId("a-only");
      store.addPending(pendingWrite(series, Date.now(), "web-a", 77));
      await flush();
      assert.equal(store.getSnapshot().pendingCount, 1);
      const inB = await b.client.functions.invoke(`progress/series/${series}`, { method: "GET" });
      assert.equal(inB.error?.context?.status ?? 200, 404, "the write is not in B's library");
      await supabase.realtime.disconnect();
    } finally {
      globalThis.fetch = realFetch;
      await a.client.realtime.disconnect();
      await b.client.realtime.disconnect();
    }
  },
});

Deno.test({
  ignore: !mintsTokens, // needs tokens of a chosen lifetime (tests/support/env.ts)
  name: "token: a refresh for the same user (any case of the UUID) is taken and announced",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const fresh = await a.newAccessToken(3600);
    const stub = stubAuthToken(tokenAnswer(fresh, a.id.toUpperCase()));
    try {
      const old = await a.newAccessToken(30);
      const tokens = new TokenKeeper(old, expOf(old), { userId: a.id });
      const announced: string[] = [];
      tokens.onChange((token) => announced.push(token));
      assert.equal(await tokens.get(), fresh, "under a minute left: refreshed first");
      assert.deepEqual(announced, [fresh]);
      assert.equal(stub.calls, 1);
      assert.equal(await tokens.get(), fresh);
      assert.equal(stub.calls, 1, "a fresh token is not refreshed again");
    } finally {
      globalThis.fetch = realFetch;
      await a.client.realtime.disconnect();
    }
  },
});

Deno.test({
  ignore: !mintsTokens, // needs tokens of a chosen lifetime (tests/support/env.ts)
  name: "token: a refresh answered without a token (or its expiry) fails and keeps the token held",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const held = await a.newAccessToken(3600);
    const answers: unknown[] = [
      { expiresAt: expOf(held), userId: a.id },
      { accessToken: "", expiresAt: expOf(held), userId: a.id },
      { accessToken: null, expiresAt: expOf(held), userId: a.id },
      { accessToken: held.slice(0, -1), userId: a.id },
      { accessToken: held.slice(0, -1), expiresAt: "soon", userId: a.id },
    ];
    try {
      for (const answer of answers) {
        stubAuthToken(() => Promise.resolve(Response.json(answer)));
        const tokens = new TokenKeeper(held, expOf(held), { userId: a.id });
        const announced: unknown[] = [];
        tokens.onChange((token) => announced.push(token));
        await assert.rejects(tokens.refresh(), /the answer has no token/, JSON.stringify(answer));
        assert.equal(tokens.current, held, `${JSON.stringify(answer)}: the held token stays`);
        assert.deepEqual(announced, [], `${JSON.stringify(answer)}: nothing is announced`);
      }
    } finally {
      globalThis.fetch = realFetch;
      await a.client.realtime.disconnect();
    }
  },
});

Deno.test({
  ignore: !mintsTokens, // needs tokens of a chosen lifetime (tests/support/env.ts)
  name: "token: expiry is judged by the server's clock, so a device an hour slow still refreshes in time",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const env = testEnv();
    const short = await a.newAccessToken(30);
    const fresh = await a.newAccessToken(3600);
    const stub = stubAuthToken(tokenAnswer(fresh, a.id));
    try {
      const slowDevice = () => Date.now() - 3_600_000;
      // What the provider does: one clock, learnt from the API's answers, for writes and the token.
      const clock = new ServerClock({ deviceNow: slowDevice });
      const supabase = userClient({
        supabaseUrl: env.url,
        anonKey: env.anonKey,
        accessToken: () => Promise.resolve(short),
      });
      await progressApi(supabase, clock).listProgress(); // any answer teaches the clock
      await supabase.realtime.disconnect();

      const byDevice = new TokenKeeper(short, expOf(short), { userId: a.id, now: slowDevice });
      assert.ok(byDevice.remaining > 3_000, "by its own clock the device thinks an hour is left");
      const byServer = new TokenKeeper(short, expOf(short), { userId: a.id, now: () => clock.now() });
      assert.ok(byServer.remaining > 20 && byServer.remaining <= 30, `remaining ${byServer.remaining}`);
      assert.equal(await byServer.get(), fresh);
      assert.equal(stub.calls, 1);
    } finally {
      globalThis.fetch = realFetch;
      await a.client.realtime.disconnect();
    }
  },
});

Deno.test({
  name: "token: a GET /auth/token that never answers is given up after the timeout; the flush returns",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const aToken = await a.newAccessToken(30); // under a minute left: every get() refreshes first
    stubAuthToken((init) =>
      new Promise<Response>((_, reject) => {
        init?.signal?.addEventListener("abort", () => reject(init.signal!.reason));
      })
    );
    try {
      const tokens = new TokenKeeper(aToken, expOf(aToken), { userId: a.id, timeoutMs: 300 });
      const { supabase, api, store, flush } = webDevice(a.id, tokens);
      const series = seriesId("hung-refresh");
      store.addPending(pendingWrite(series, Date.now(), "web-a", 3));
      await flush();
      // The refresh gave up, the still-valid token was sent: the write is saved.
      assert.equal(store.getSnapshot().pendingCount, 0);
      assert.equal((await api.getProgress(series))?.chapter, 3);
      await supabase.realtime.disconnect();
    } finally {
      globalThis.fetch = realFetch;
      await a.client.realtime.disconnect();
    }
  },
});

Deno.test({
  ignore: !mintsTokens,
  name:
    "a tab shown again after its token ran out reads what it missed at once: the catch-up's 401 for the old token is asked again with the refreshed one",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    // The page's token: good for an hour, so the tab joins and catches up with it however long that
    // takes. The token the tab holds when it is shown again is the one the keeper's last refresh
    // before the sleep brought (`short`, below), by then run out. Rather than wait for a token of a
    // few seconds to run out on the clocks of the server (the function's and Realtime's, this
    // machine's: no clock tolerance on the local stack) and of the keeper (the ServerClock, within a
    // round trip of it), the refresh brings one that has run out already on both: what follows is
    // driven by signals only (the drop, the reads), however loaded the machine.
    const page = await a.newAccessToken(3600);
    const short = await a.newAccessToken(-60);
    const fresh = await a.newAccessToken(3600); // what GET /auth/token answers after the wake
    let tokenAnswer = page;
    const reads: string[] = [];
    globalThis.fetch = (async (input: RequestInfo | URL, init?: RequestInit) => {
      const href = input instanceof Request ? input.url : String(input);
      if (href === "/auth/token") {
        return Response.json({ accessToken: tokenAnswer, expiresAt: expOf(tokenAnswer), userId: a.id });
      }
      const response = await realFetch(input, init);
      if (href.includes("/functions/v1/progress/changes")) {
        const auth = new Headers(init?.headers).get("authorization");
        reads.push(
          `${
            auth === `Bearer ${fresh}`
              ? "fresh"
              : auth === `Bearer ${short}`
              ? "old"
              : auth === `Bearer ${page}`
              ? "page"
              : "other"
          } ${response.status}`,
        );
      }
      return response;
    }) as typeof fetch;
    const env = testEnv();
    // As SyncProvider wires them, without its check of the session on visibilitychange.
    const clock = new ServerClock();
    const tokens = new TokenKeeper(page, expOf(page), { userId: a.id, now: () => clock.now() });
    const supabase = userClient({
      supabaseUrl: env.url,
      anonKey: env.anonKey,
      accessToken: () => tokens.get(),
    });
    const seen: string[] = [];
    const subscription = progressApi(supabase, clock).subscribeToProgress(
      a.id,
      (change) => seen.push(`${change.row.series_id}:${change.row.chapter}`),
      {
        accessToken: page,
        pollIntervalMs: 60_000,
        backoff: { initialMs: 1_000, maxMs: 15_000 },
        log: () => {},
      },
    );
    const offToken = tokens.onChange((token) => void subscription.service.setAccessToken(token));
    // The reads the tab made itself (catch-up, polls), ended; and how many had ended when the channel
    // dropped (the server closing it for the short token's expiry), after which the tab polls at once.
    let readsEnded = 0;
    let readsEndedAtDrop: number | undefined;
    subscription.onRead(() => readsEnded++);
    subscription.onStatus((status) => {
      if (status !== "live" && readsEndedAtDrop === undefined && tokenAnswer === short) {
        readsEndedAtDrop = readsEnded;
      }
    });
    try {
      await waitFor("the tab live", () => subscription.status === "live", { timeoutMs: 60_000 });
      assert.ok(
        reads.length > 0 && reads.every((read) => read === "page 200"),
        `precondition: the tab joined and caught up with the page's token: ${reads}`,
      );
      // Shortly before the sleep the keeper refreshes (as the provider's timer does) and hands the
      // tab a token that runs out while the laptop sleeps: here, one that has run out already.
      tokenAnswer = short;
      assert.equal(await tokens.refresh(), short);
      assert.equal(subscription.service.accessToken, short, "the tab's reads now send that token");
      assert.ok(tokens.remaining < 0, `the keeper sees it expired: remaining ${tokens.remaining}`);
      // The server closed the tab's channel for that expiry (Realtime checks the token the channel is
      // given, as it does when the token's expiry comes), and the tab polled at once with the token it
      // has (a 401); its next poll is a minute away. That poll is over before the wake: a loaded
      // machine slow to hear of the drop would otherwise have it under way when the tab is shown
      // again, its 401 among the reads the wake makes (the wake's read queues behind it).
      await waitFor(
        "the channel dropped for the expiry and the poll it started over",
        () => readsEndedAtDrop !== undefined && readsEnded > readsEndedAtDrop,
        { timeoutMs: 30_000 },
      );
      const series = seriesId("after-wake");
      const phone = progressApi(
        userClient({ supabaseUrl: env.url, anonKey: env.anonKey, accessToken: () => Promise.resolve(fresh) }),
      );
      await phone.updateProgress({
        series_id: series,
        chapter: 42,
        page: 1,
        percentage: 0.5,
        device_id: "phone",
        updated_at: new Date().toISOString(),
      });
      // The wake: from now on GET /auth/token answers a fresh token, and the tab is shown again in
      // the same turn (no refresh for another reason can come between the two).
      tokenAnswer = fresh;
      const before = reads.length;
      await subscription.syncNow();
      assert.deepEqual(reads.slice(before), ["old 401", "fresh 200"]);
      assert.ok(seen.includes(`${series}:42`), `the phone's position is delivered by that read: ${seen}`);
    } finally {
      offToken();
      await subscription.unsubscribe();
      await supabase.realtime.disconnect();
      globalThis.fetch = realFetch;
    }
  },
});

Deno.test("token keeper: a token the API refused (a 401: refused()) is known unusable until a refresh answers a token, the same one included; a token expired by the server's clock, as measured, is known unusable too", async () => {
  const userId = "11111111-1111-4111-8111-111111111111";
  let nowMs = 1_800_000_000_000;
  let answer = () => Response.json({ error: "auth_unavailable" }, { status: 503 });
  const calls = stubAuthToken(() => Promise.resolve(answer()));
  try {
    const expiresAt = nowMs / 1000 + 3_600;
    const tokens = new TokenKeeper("held", expiresAt, { userId, now: () => nowMs });
    assert.deepEqual([tokens.knownUnusable, tokens.dueForRefresh], [false, false]);
    tokens.refused();
    assert.equal(tokens.knownUnusable, true, "refused by the API");
    await assert.rejects(tokens.refresh(), /HTTP 503/);
    assert.equal(tokens.knownUnusable, true, "a refresh that failed changes nothing");
    answer = () => Response.json({ accessToken: "held", expiresAt, userId });
    assert.equal(await tokens.refresh(), "held");
    assert.equal(tokens.knownUnusable, false, "Auth answered the same token: usable again");
    nowMs += 3_600_000;
    assert.deepEqual(
      [tokens.knownUnusable, tokens.dueForRefresh],
      [true, true],
      "expired by the server's clock",
    );
    assert.equal(calls.calls, 2);
    // By a clock with no measured offset (no answer yet: a device clock an hour ahead) an expiry is no proof.
    let measured = false;
    const unsure = new TokenKeeper("held", expiresAt, {
      userId,
      now: () => nowMs,
      nowMeasured: () => measured,
    });
    assert.deepEqual(
      [unsure.knownUnusable, unsure.dueForRefresh],
      [false, true],
      "refreshed first, not held back",
    );
    measured = true;
    assert.equal(unsure.knownUnusable, true);
  } finally {
    globalThis.fetch = realFetch;
  }
});

Deno.test("token keeper: get() refreshes a token the API refused (refused()) though not due for one, so the Realtime link's next read and join carry the new token; get({ refresh: false }) (the outbox under its lock) still asks nothing", async () => {
  const userId = "11111111-1111-4111-8111-111111111111";
  const nowMs = 1_800_000_000_000;
  const expiresAt = nowMs / 1000 + 3_600;
  let answer = () => Response.json({ error: "auth_unavailable" }, { status: 503 });
  const calls = stubAuthToken(() => Promise.resolve(answer()));
  try {
    const tokens = new TokenKeeper("held", expiresAt, { userId, now: () => nowMs });
    const heard: string[] = [];
    tokens.onChange((token) => heard.push(token));
    tokens.refused(); // the outbox's request was answered 401, and its refresh failed (Auth down)
    assert.equal(await tokens.get({ refresh: false }), "held");
    assert.equal(calls.calls, 0, "the outbox's own requests refresh nothing under its lock");
    assert.equal(await tokens.get(), "held", "Auth still down: the token held, best effort");
    assert.equal(calls.calls, 1, "asked (on the code before: not, the token not due for a refresh)");
    answer = () => Response.json({ accessToken: "fresh", expiresAt: expiresAt + 60, userId });
    assert.equal(await tokens.get(), "fresh", "Auth back: the link's next read goes with the new token");
    assert.deepEqual([calls.calls, heard, tokens.knownUnusable], [2, ["fresh"], false]);
    assert.equal(await tokens.get(), "fresh");
    assert.equal(calls.calls, 2, "usable again: no more refreshes");
  } finally {
    globalThis.fetch = realFetch;
  }
});
