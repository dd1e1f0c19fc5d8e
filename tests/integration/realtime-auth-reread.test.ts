// A catch-up or poll refused 401 is made again as soon as supabase-js brings a new token, end to end:
// the real supabase-js client's session (auth-js refreshSession, then TOKEN_REFRESHED), the progress
// function over real HTTP on the local stack (its JWT check refuses the token), the stack's Realtime
// over a real WebSocket, and subscribeToProgress as an app uses it. There is no Auth server on the
// local stack: a small Auth stand-in of the test's own answers POST /auth/v1/token?grant_type=
// refresh_token over real HTTP (the client's fetch sends /auth/v1 there) with the token the test
// chooses. Nothing is timed: a failed read's next poll is 5-10 minutes away, so only the read made for
// the new token can bring the update within the tests' hang guards.

import assert from "node:assert/strict";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { subscribeToProgress } from "../../shared/progress/api.ts";
import type { ProgressChange } from "../../shared/realtime/realtimeService.ts";
import { SignJWT } from "jose";
import { DEV_JWT_ISSUER, signDevJwt } from "../../local/stack/keys.ts";
import { createTestUser, mintsTokens, testEnv } from "../support/env.ts";
import { closedPort, seriesId, serveLocal } from "../functions/support.ts";
import { closeClient, noSanitize, realtimeAt, waitFor, writeThroughApi } from "./realtime_support.ts";

/** One GET /functions/v1/progress/changes the client sent: the token it carried and the answer's status. */
interface Read {
  token: string | null;
  status: number;
}

/**
 * A supabase-js client whose /auth/v1 calls go to an Auth stand-in on this machine (a session begins
 * and is refreshed with `auth.refreshSession()`; `refreshAnswers`: the access token each refresh
 * answers with, in turn) and whose progress reads are recorded (`reads`; `beforeRead(n)` is awaited
 * before the n-th, from 0, is sent). Realtime is the stack's, or with `realtimeUnreachable` a port
 * nothing listens on (the link cannot join, and keeps the device current by polling).
 */
function device(
  user: { id: string; email: string },
  {
    realtimeUnreachable = false,
    beforeRead = (_n: number) => Promise.resolve(),
    transport = undefined as typeof WebSocket | undefined,
  } = {},
) {
  const env = testEnv();
  const refreshAnswers: string[] = [];
  let refreshes = 0;
  const auth = serveLocal(async (request) => {
    const url = new URL(request.url);
    if (
      request.method !== "POST" || url.pathname !== "/auth/v1/token" ||
      url.searchParams.get("grant_type") !== "refresh_token"
    ) {
      return Response.json({ code: 404, msg: "not here" }, { status: 404 });
    }
    const { refresh_token } = await request.json();
    const access_token = refreshAnswers.shift();
    if (!refresh_token || !access_token) return Response.json({ code: 400 }, { status: 400 });
    refreshes++;
    // An hour on the device's clock, whatever the token's own exp says (a device whose clock is
    // behind takes a token the server already counts as expired for a fresh one).
    return Response.json({
      access_token,
      token_type: "bearer",
      expires_in: 3600,
      refresh_token: `refresh-${refreshes}`,
      user: { id: user.id, aud: "authenticated", role: "authenticated", email: user.email },
    });
  });
  let realtime = {};
  if (realtimeUnreachable) {
    realtime = { transport: realtimeAt(`http://127.0.0.1:${closedPort()}`) };
  } else if (transport) realtime = { transport };
  const reads: Read[] = [];
  let readsSent = 0;
  const client: SupabaseClient = createClient(env.url, env.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime,
    global: {
      fetch: async (input: RequestInfo | URL, init?: RequestInit) => {
        const href = input instanceof Request ? input.url : String(input);
        if (href.startsWith(`${env.url}/auth/v1/`)) {
          return await fetch(auth.url + href.slice(env.url.length), init);
        }
        const isRead = new URL(href).pathname === "/functions/v1/progress/changes";
        if (isRead) await beforeRead(readsSent++);
        const response = await fetch(input, init);
        if (isRead) {
          const header = new Headers(init?.headers).get("authorization");
          reads.push({ token: header?.replace(/^Bearer /, "") ?? null, status: response.status });
        }
        return response;
      },
    },
  });
  return {
    client,
    reads,
    refreshAnswers,
    refreshes: () => refreshes,
    async close() {
      await closeClient(client);
      await auth.shutdown();
    },
  };
}

/**
 * A WebSocket that records the frames the client sends on `topic`: their event, and the token a join or
 * an access_token push carries (the token the server is given).
 */
function sendsOn(topic: string): { transport: typeof WebSocket; sent: { event: string; token?: string }[] } {
  const sent: { event: string; token?: string }[] = [];
  class RecordingWebSocket extends WebSocket {
    override send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
      super.send(data);
      if (typeof data !== "string") return;
      const [, , frameTopic, event, payload] = JSON.parse(data);
      if (frameTopic === topic) sent.push({ event, token: payload?.access_token });
    }
  }
  return { transport: RecordingWebSocket, sent };
}

/**
 * An access token of `user`'s session `sessionId`, as Supabase Auth issues them, issued `issuedAgoS`
 * seconds ago and valid an hour from now: tokens of one session, told apart by when they were issued.
 */
async function sessionToken(
  user: { id: string; email: string },
  sessionId: string,
  issuedAgoS: number,
): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return await new SignJWT({
    iss: DEV_JWT_ISSUER,
    sub: user.id,
    role: "authenticated",
    aud: "authenticated",
    email: user.email,
    session_id: sessionId,
    aal: "aal1",
    is_anonymous: false,
  })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setIssuedAt(now - issuedAgoS)
    .setExpirationTime(now + 3600)
    .sign(new TextEncoder().encode(testEnv().jwtSecret!));
}

/**
 * A test's end: its subscription unsubscribed, the device closed (its client's Realtime and its Auth
 * stand-in), and the Realtime of the user's own client (createTestUser's) disconnected.
 */
async function stop(
  subscription: ReturnType<typeof subscribeToProgress>,
  laptop: ReturnType<typeof device>,
  user: { client: SupabaseClient },
): Promise<void> {
  await subscription.unsubscribe();
  await laptop.close();
  await user.client.realtime.disconnect();
}

Deno.test({
  name:
    "realtime auth, supabase-js session: a joined link's catch-up refused 401 is made again at TOKEN_REFRESHED and brings what was missed, not after the polls' backoff",
  ...noSanitize,
  ignore: !mintsTokens, // a token the test signs itself (tests/support/env.ts)
}, async () => {
  const env = testEnv();
  const a = await createTestUser();
  // What another device wrote while this one was away: only the catch-up brings it.
  const fresh = await a.newAccessToken(3600);
  const series = seriesId("while-away");
  await writeThroughApi(fresh, { series_id: series, chapter: 7, device_id: "phone" });
  const laptop = device(a);
  const { client, reads } = laptop;
  // The session's first token is A's, valid, but issued for another audience: the progress function
  // (audience "authenticated") refuses it 401, while Realtime, which does not check `aud`, joins the
  // channel with it (RLS reads its `sub`). So the link is joined and its catch-up refused.
  const otherAudience = await signDevJwt(
    { sub: a.id, role: "authenticated", aud: "another-app", email: a.email },
    { secret: env.jwtSecret },
  );
  laptop.refreshAnswers.push(otherAudience, fresh);
  const signedIn = await client.auth.refreshSession({ refresh_token: "refresh-0" });
  assert.equal(signedIn.error, null);

  const logs: Record<string, unknown>[] = [];
  const changes: ProgressChange[] = [];
  // No explicit token: the service reads with the client's session and follows supabase.auth's events.
  // A failed catch-up's next read is 5-10 minutes away (pollIntervalMs's backoff); no safety read, and
  // no read for a late heartbeat reply (the reads are counted).
  const subscription = subscribeToProgress(client, a.id, (change) => changes.push(change), {
    pollIntervalMs: 300_000,
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    backoff: { initialMs: 600_000, maxMs: 600_000 },
    log: (line) => logs.push(JSON.parse(line)),
  });
  try {
    await waitFor(
      "joined, and the catch-up refused",
      () => logs.some((l) => l.event === "joined") && logs.some((l) => l.event === "catchup_failed"),
      { timeoutMs: 30_000 },
    );
    assert.equal(subscription.status, "offline", "joined but not caught up");
    assert.ok(reads.length >= 1, "the catch-up read");
    assert.deepEqual(
      reads.filter((r) => r.token !== otherAudience || r.status !== 401),
      [],
      "every read so far went out with the session's token and was refused",
    );
    assert.equal(changes.length, 0, "nothing read yet");
    const before = reads.length;

    // The session is refreshed as supabase-js does it (auth-js: POST /token, then TOKEN_REFRESHED).
    const refreshed = await client.auth.refreshSession();
    assert.equal(refreshed.error, null);
    assert.equal(refreshed.data.session?.access_token, fresh);
    // However long a loaded machine takes: the bound only catches a hang (the old service's next
    // read was minutes away).
    await waitFor(
      "what was missed, read with the new token",
      () => changes.some((c) => c.row.series_id === series && c.row.chapter === 7),
      { timeoutMs: 30_000 },
    );
    await waitFor("live", () => subscription.status === "live", { timeoutMs: 20_000 });
    assert.deepEqual(
      reads.slice(before),
      [{ token: fresh, status: 200 }],
      "one read again, with the new token",
    );
    assert.ok(logs.some((l) => l.event === "read_after_new_token"));
    assert.equal(logs.filter((l) => l.event === "join_attempt").length, 1, "the channel stayed joined");
  } finally {
    await stop(subscription, laptop, a);
  }
});

Deno.test({
  name:
    "realtime auth, supabase-js session: a poll refused 401 is made again at the session's TOKEN_REFRESHED and brings the missed update, not after the polls' backoff",
  ...noSanitize,
  ignore: !mintsTokens, // a token the API refuses as expired (tests/support/env.ts)
}, async () => {
  const a = await createTestUser();
  const laptop = device(a, { realtimeUnreachable: true });
  const { client, reads } = laptop;
  // The session's first token: expired on the server's clock 60 s ago, an hour left on the
  // device's (the Auth stand-in's expires_in): supabase-js sends it, the progress function refuses it.
  const refused = await a.newAccessToken(-60);
  const fresh = await a.newAccessToken(3600);
  laptop.refreshAnswers.push(refused, fresh);
  const signedIn = await client.auth.refreshSession({ refresh_token: "refresh-0" });
  assert.equal(signedIn.error, null);
  assert.equal(signedIn.data.session?.access_token, refused);

  const logs: Record<string, unknown>[] = [];
  const changes: ProgressChange[] = [];
  const outcomes: string[] = [];
  // No explicit token: the service reads with the client's session and follows supabase.auth's events.
  // A failed poll's next one is 5-10 minutes away (pollIntervalMs's backoff), and so is a rejoin.
  const subscription = subscribeToProgress(client, a.id, (change) => changes.push(change), {
    pollIntervalMs: 300_000,
    backoff: { initialMs: 600_000, maxMs: 600_000 },
    log: (line) => logs.push(JSON.parse(line)),
  });
  subscription.onRead((outcome) => outcomes.push(outcome));
  try {
    // The link cannot join (Realtime unreachable) and polls: refused for the session's token.
    await waitFor("the first read", () => outcomes.length >= 1, { timeoutMs: 30_000 });
    assert.deepEqual(outcomes, ["failed"]);
    assert.deepEqual(reads, [{ token: refused, status: 401 }], "the read went out with the session's token");
    assert.equal(subscription.status, "offline");
    assert.ok(
      logs.some((l) => l.event === "poll_failed" && /expired/i.test(String(l.error))),
      `refused as expired: ${JSON.stringify(logs.filter((l) => String(l.event).endsWith("_failed")))}`,
    );

    // Another device writes meanwhile: nothing brings it here but a read.
    const series = seriesId("after-refresh");
    await writeThroughApi(fresh, { series_id: series, chapter: 12, device_id: "phone" });

    // The session is refreshed as supabase-js does it (auth-js: POST /token, then TOKEN_REFRESHED).
    const refreshed = await client.auth.refreshSession();
    assert.equal(refreshed.error, null);
    assert.equal(refreshed.data.session?.access_token, fresh);
    assert.equal(laptop.refreshes(), 2);
    // However long a loaded machine takes: the bound only catches a hang (the old service's next
    // read was minutes away).
    await waitFor(
      "the missed update, read with the new token",
      () => changes.some((c) => c.row.series_id === series && c.row.chapter === 12),
      { timeoutMs: 30_000 },
    );
    assert.equal(changes.find((c) => c.row.series_id === series)?.source, "poll");
    assert.deepEqual(
      reads,
      [{ token: refused, status: 401 }, { token: fresh, status: 200 }],
      "one read again, with the new token",
    );
    assert.ok(logs.some((l) => l.event === "read_after_new_token"));
    assert.ok(logs.some((l) => l.event === "auth_token_refreshed" && l.auth_event === "TOKEN_REFRESHED"));
    await waitFor("polling", () => subscription.status === "polling", { timeoutMs: 20_000 });
  } finally {
    await stop(subscription, laptop, a);
  }
});

Deno.test({
  name:
    "realtime auth, explicit token: a read refused 401 whose call subscribeToProgress asked again with the token set meanwhile, refused too, is not asked a third time with that token",
  ...noSanitize,
  ignore: !mintsTokens, // tokens the API refuses (tests/support/env.ts)
}, async () => {
  // The web app's wiring: a session-less client, the token given to subscribeToProgress and replaced
  // with setAccessToken(). A read sent with T1 and refused 401 after setAccessToken(T2) is asked again
  // with T2 by subscribeToProgress's changesSince (5243d81); when T2 is refused too, the service must
  // wait for a newer token (or the backoff) and not read once more with T2, which has just been
  // refused. Every GET /changes the client sends is counted with its token; the first is held at the
  // client's fetch until T2 has been set (a signal, not a wait). No session (the Auth stand-in is not
  // asked), and Realtime is unreachable: only reads bring anything.
  const a = await createTestUser();
  const t1 = await a.newAccessToken(-60);
  const t2 = await a.newAccessToken(-30);
  const t3 = await a.newAccessToken(3600);
  const series = seriesId("after-t3");
  await writeThroughApi(t3, { series_id: series, chapter: 3, device_id: "phone" });
  const gate = { held: false, release: () => {} };
  const laptop = device(a, {
    realtimeUnreachable: true,
    beforeRead: (n) =>
      n === 0
        ? new Promise<void>((release) => Object.assign(gate, { held: true, release }))
        : Promise.resolve(),
  });
  const { client, reads } = laptop;
  const named = (token: string | null) =>
    token === t1 ? "T1" : token === t2 ? "T2" : token === t3 ? "T3" : "?";
  const seen = () => reads.map((r) => `${named(r.token)} ${r.status}`);
  const logs: Record<string, unknown>[] = [];
  const changes: ProgressChange[] = [];
  const outcomes: string[] = [];
  const subscription = subscribeToProgress(client, a.id, (change) => changes.push(change), {
    accessToken: t1,
    pollIntervalMs: 300_000,
    backoff: { initialMs: 600_000, maxMs: 600_000 },
    log: (line) => logs.push(JSON.parse(line)),
  });
  subscription.onRead((outcome) => outcomes.push(outcome));
  try {
    await waitFor("the first read held at the client", () => gate.held, { timeoutMs: 30_000 });
    await subscription.service.setAccessToken(t2);
    gate.release();
    // The held read (T1: 401), asked again with T2 (401): the round fails.
    await waitFor("the first read's end", () => outcomes.length >= 1, { timeoutMs: 30_000 });
    assert.deepEqual(outcomes, ["failed"]);
    // Whatever the service does next for T2 is decided at that end (a read made now for a new token
    // starts before it returns); a third read would be under way or done by the next token.
    await subscription.service.setAccessToken(t3);
    await waitFor(
      "the update, read with T3",
      () => changes.some((c) => c.row.series_id === series),
      { timeoutMs: 30_000 },
    );
    assert.deepEqual(seen(), ["T1 401", "T2 401", "T3 200"], "no read again with T2, refused already");
  } finally {
    gate.release();
    await stop(subscription, laptop, a);
  }
});

Deno.test({
  name:
    "realtime auth, supabase-js session: a token refresh that raced a later one and is announced after it does not replace the newer token on the channel",
  ...noSanitize,
  ignore: !mintsTokens, // tokens issued at chosen times (tests/support/env.ts)
}, async () => {
  // Two refreshes of one session race: this tab's own gets the newest token, and another tab's, which
  // got an older one, is announced after it (auth-js hands another tab's event on from its
  // BroadcastChannel with _notifyAllSubscribers(event, session, false), which a Deno client, not a
  // browser, has no channel for: the test makes that call). supabase-js's own listener gives Realtime
  // every token it hears of that differs from the last, so the older one was pushed to the joined
  // channel, and the service took it too: the server held the token that expires first. The real
  // supabase-js client and its session (the Auth stand-in), the stack's Realtime over a real
  // WebSocket whose frames on the channel are recorded.
  const a = await createTestUser();
  const sessionId = crypto.randomUUID();
  const first = await sessionToken(a, sessionId, 120);
  const older = await sessionToken(a, sessionId, 60);
  const newest = await sessionToken(a, sessionId, 0);
  const { transport, sent } = sendsOn(`realtime:progress:${a.id}`);
  const laptop = device(a, { transport });
  const { client } = laptop;
  laptop.refreshAnswers.push(first, newest);
  const signedIn = await client.auth.refreshSession({ refresh_token: "refresh-0" });
  assert.equal(signedIn.error, null);

  const logs: Record<string, unknown>[] = [];
  const subscription = subscribeToProgress(client, a.id, () => {}, {
    log: (line) => logs.push(JSON.parse(line)),
  });
  const pushed = () => sent.filter((f) => f.event === "access_token").map((f) => f.token);
  const named = (token: string | undefined) =>
    token === first ? "first" : token === older ? "older" : token === newest ? "newest" : String(token);
  try {
    await waitFor("live", () => subscription.status === "live", { timeoutMs: 30_000 });
    assert.equal(named(sent.find((f) => f.event === "phx_join")?.token), "first");

    // This tab's refresh (auth-js: POST /token, then TOKEN_REFRESHED): the newest token, pushed.
    const refreshed = await client.auth.refreshSession();
    assert.equal(refreshed.data.session?.access_token, newest);
    await waitFor("the newest token pushed", () => pushed().includes(newest), { timeoutMs: 20_000 });

    // The other tab's refresh, which got the older token, is announced now.
    await (client.auth as unknown as {
      _notifyAllSubscribers(event: string, session: unknown, broadcast: boolean): Promise<void>;
    })._notifyAllSubscribers("TOKEN_REFRESHED", {
      access_token: older,
      refresh_token: "refresh-other-tab",
      expires_in: 3540,
      expires_at: Math.floor(Date.now() / 1000) + 3540,
      token_type: "bearer",
      user: { id: a.id, aud: "authenticated", role: "authenticated", email: a.email },
    }, false);
    assert.equal(named(client.realtime.accessTokenValue ?? undefined), "newest", "Realtime's token");
    assert.equal(named(pushed().at(-1)), "newest", `the last token pushed, of ${pushed().map(named)}`);
    assert.equal(
      named(subscription.service.readToken ?? undefined),
      "newest",
      "the token the service reads with",
    );
    assert.ok(logs.some((l) => l.event === "auth_token_older_ignored"));
    assert.equal(subscription.status, "live");
  } finally {
    await stop(subscription, laptop, a);
  }
});
