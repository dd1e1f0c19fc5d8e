// Who may receive and send on progress:<user_id>, through the real supabase-js client over the real
// WebSocket: RLS on realtime.messages decides (migration 012), the endpoint only asks it. First, the
// table's own policies as a Data API request meets them (the task list's "test RLS policies").

import assert from "node:assert/strict";
import { SignJWT } from "jose";
import type postgres from "postgres";
import { LOWER_JOIN_ERROR_BACKOFF_PARAM, startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { CONNECT_ERROR_BACKOFF_MS } from "../../local/realtime/connection.ts";
import { pendingFor, watchTimers } from "../shared/realtime/watchTimers.ts";
import { mintUserAccessToken, signDevJwt } from "../../local/stack/keys.ts";
import { adminSql, createTestUser, mintsTokens, testEnv } from "../support/env.ts";
import {
  asUser,
  clientWithToken,
  closeClient,
  joinChannel,
  newClient,
  noSanitize,
  ownEndpoint,
  waitFor,
  writeProgress,
  writeThroughApi,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;

/**
 * A bare Phoenix socket (vsn 2.0.0) on the stack's Realtime endpoint, for what supabase-js never
 * sends: text frames are kept parsed, broadcasts counted (Supabase sends database broadcasts and
 * relays of client broadcasts as binary frames, older releases database broadcasts as JSON text;
 * either counts).
 */
async function rawSocket(baseUrl = testEnv().url, query = "") {
  const env = testEnv();
  const ws = new WebSocket(
    `${baseUrl.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0${query}`,
  );
  ws.binaryType = "arraybuffer";
  const socket = {
    ws,
    text: [] as unknown[][],
    broadcasts: 0,
    replyTo: (ref: string) =>
      waitFor(`reply ${ref}`, () => socket.text.some((m) => m[1] === ref && m[3] === "phx_reply")),
  };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return void socket.broadcasts++;
    const message = JSON.parse(e.data);
    if (message[3] === "broadcast") socket.broadcasts++;
    else socket.text.push(message);
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error("socket error"));
  });
  return socket;
}

Deno.test({
  name:
    "table RLS, as PostgREST runs a request: A reads only A's rows; B's can be neither read, added, changed nor deleted by A; anon gets nothing",
  ...noSanitize,
}, async () => {
  // The policies on public.reading_progress themselves (pgTAP 001 covers them statement by statement):
  // the same transaction shape PostgREST uses for a signed-in request (role + request.jwt.claims).
  const sql = adminSql({ max: 2 });
  const a = await createTestUser();
  const b = await createTestUser();
  const bRow = () =>
    sql`select chapter, page, device_id from public.reading_progress where user_id = ${b.id}`;
  const refused = async (
    what: string,
    fn: (tx: postgres.TransactionSql) => Promise<unknown>,
    code = "42501", // insufficient_privilege: the policies' WITH CHECK
  ) => await assert.rejects(asUser(sql, a.id, fn), (e: { code?: string }) => e.code === code, what);
  try {
    await writeProgress(sql, a.id, { series_id: "a-series", chapter: 1, device_id: "a-phone" });
    await writeProgress(sql, b.id, { series_id: "b-series", chapter: 7, page: 70, device_id: "b-phone" });
    const before = await bRow();
    assert.equal(before.length, 1);

    const seen = await asUser(sql, a.id, (tx) => tx`select user_id, series_id from public.reading_progress`);
    assert.deepEqual(seen.map((r) => [r.user_id, r.series_id]), [[a.id, "a-series"]], "A sees only A's rows");
    assert.equal(
      (await asUser(sql, a.id, (tx) => tx`select 1 from public.reading_progress where user_id = ${b.id}`))
        .length,
      0,
      "A cannot read B's row by naming B",
    );
    const changed = await asUser(
      sql,
      a.id,
      (tx) =>
        tx`update public.reading_progress set page = 1, updated_at = now() + interval '1 second'
          where user_id = ${b.id} returning 1`,
    );
    assert.equal(changed.length, 0, "A's UPDATE of B's row matched nothing");
    const deleted = await asUser(
      sql,
      a.id,
      (tx) => tx`delete from public.reading_progress where user_id = ${b.id} returning 1`,
    );
    assert.equal(deleted.length, 0, "A's DELETE of B's row matched nothing");
    await refused(
      "A inserts a row for B",
      (tx) =>
        tx`insert into public.reading_progress (user_id, series_id, device_id) values (${b.id}, 'planted', 'a-phone')`,
    );
    await refused(
      "A upserts onto B's series (the conflicting row is B's)",
      (tx) =>
        tx`insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
         values (${b.id}, 'b-series', 1, 'a-phone', now() + interval '1 second')
         on conflict (user_id, series_id) do update set chapter = excluded.chapter`,
    );
    // Refused before the policies are asked: a row's (user_id, series_id) never changes (the stamp
    // trigger, 23514); pgTAP 001 shows the policies' WITH CHECK refusing it as well.
    await refused(
      "A moves A's own row to B",
      (tx) => tx`update public.reading_progress set user_id = ${b.id} where user_id = ${a.id}`,
      "23514",
    );
    assert.deepEqual(await bRow(), before, "B's row is unchanged");
    assert.equal((await sql`select 1 from public.reading_progress where user_id = ${b.id}`).length, 1);

    await assert.rejects(
      sql.begin(async (tx) => {
        await tx`select set_config('role', 'anon', true)`;
        await tx`select 1 from public.reading_progress`;
      }),
      (e: { code?: string }) => e.code === "42501",
      "anon may not read the table at all",
    );
  } finally {
    await sql.end();
  }
});

Deno.test(
  { name: "realtime RLS: A's update reaches A's other device, never user C", ...noSanitize },
  async () => {
    const a = await createTestUser();
    const c = await createTestUser();
    const deviceA1 = clientWithToken(() => a.accessToken);
    const deviceA2 = clientWithToken(() => a.accessToken);
    // C's refusal is not what this tests: no 5 s wait for it on the local stand-in.
    const deviceC = clientWithToken(() => c.accessToken, { joinErrorBackoffMs: 0 });
    try {
      const a2 = await joinChannel(deviceA2, topicOf(a.id));
      assert.equal(a2.status, "SUBSCRIBED");
      // C joins its own channel (allowed) and tries A's (refused).
      const cOwn = await joinChannel(deviceC, topicOf(c.id));
      assert.equal(cOwn.status, "SUBSCRIBED");
      const cOnA = await joinChannel(deviceC, topicOf(a.id));
      assert.equal(cOnA.status, "CHANNEL_ERROR");

      // Device A1 writes through the progress API with A's token; A2 must hear it.
      const written = await writeThroughApi(a.accessToken, {
        series_id: "berserk",
        chapter: 12,
        page: 3,
        percentage: 0.1,
        device_id: "a-phone",
      });
      assert.equal(written.won, true);
      await waitFor("A2 to receive A1's update", () => a2.joined.received.length === 1);
      const got = a2.joined.received[0];
      assert.equal(got.event, "INSERT");
      assert.equal((got.payload.record as { user_id: string }).user_id, a.id);
      assert.equal((got.payload.record as { chapter: number }).chapter, 12);
      assert.equal((got.payload.record as { device_id: string }).device_id, "a-phone");

      // C's own write, committed after A's: the endpoint delivers in commit order, so once C has
      // its own message, anything of A's that could reach C would already be there.
      await writeThroughApi(c.accessToken, { series_id: "c-sentinel", device_id: "c-phone" });
      await waitFor("C's own update", () => cOwn.joined.received.length >= 1);
      assert.deepEqual(
        cOwn.joined.received.map((m) => (m.payload.record as { user_id: string }).user_id),
        [c.id],
        "C's device received something that is not C's",
      );
      assert.equal(cOnA.joined.received.length, 0);
      assert.ok(cOnA.joined.states.every((s) => s === "CHANNEL_ERROR"), cOnA.joined.states.join(","));
      assert.equal(a2.joined.received.length, 1, "A2 received C's update");
    } finally {
      await Promise.all([deviceA1, deviceA2, deviceC].map(closeClient));
    }
  },
);

Deno.test({
  name: "realtime RLS: C cannot join progress:<A> (Unauthorized reply, no retry succeeds)",
  ...noSanitize,
}, async () => {
  const a = await createTestUser();
  const c = await createTestUser();
  const deviceC = clientWithToken(() => c.accessToken, { joinErrorBackoffMs: 0 });
  try {
    const result = await joinChannel(deviceC, topicOf(a.id));
    assert.equal(result.status, "CHANNEL_ERROR");
    assert.equal(
      result.error?.message,
      `Unauthorized: You do not have permissions to read from this Channel topic: ${topicOf(a.id)}`,
    );
    // realtime-js keeps rejoining on its own (after 1 s); every attempt is refused (on Supabase
    // each refusal takes 5 s).
    await waitFor("a rejoin attempt", () => result.joined.states.length >= 2, { timeoutMs: 20_000 });
    assert.ok(result.joined.states.every((s) => s === "CHANNEL_ERROR"), result.joined.states.join(","));
  } finally {
    await closeClient(deviceC);
  }
});

Deno.test({
  name: "realtime RLS: nobody can send on progress:<A> (WS ack, REST fallback, httpSend, public twin)",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const c = await createTestUser();
  const listener = clientWithToken(() => a.accessToken);
  const ownerSender = clientWithToken(() => a.accessToken);
  const deviceC = clientWithToken(() => c.accessToken);
  try {
    const heard = await joinChannel(listener, topicOf(a.id));
    assert.equal(heard.status, "SUBSCRIBED");

    // 1. Even A may not send on their own private topic (no INSERT policy): with ack the server says so.
    const owner = await joinChannel(ownerSender, topicOf(a.id), {
      private: true,
      broadcast: { ack: true, self: true },
    });
    assert.equal(owner.status, "SUBSCRIBED");
    const ownerResult = await owner.joined.channel.send({
      type: "broadcast",
      event: "UPDATE",
      payload: { forged: true },
    });
    assert.equal(ownerResult, "error");

    // 2. C is not joined: realtime-js falls back to POST /api/broadcast; Supabase answers 202 and drops it.
    const cChannel = deviceC.channel(topicOf(a.id), { config: { private: true } });
    const restResult = await cChannel.send({
      type: "broadcast",
      event: "UPDATE",
      payload: { forged: "rest" },
    });
    assert.equal(restResult, "ok"); // accepted for delivery, like Supabase...
    // 3. ...while httpSend, which reports per message, is refused.
    await assert.rejects(() => cChannel.httpSend("UPDATE", { forged: "httpSend" }), /Unauthorized/);
    await deviceC.removeChannel(cChannel);
    // The refusal itself, as Supabase's single-message route answers it: 403 with its ErrorView's
    // body, {"message":"Unauthorized"} (realtime-js reads `error`, then `message`; other clients may
    // read only `message`).
    const singleRoute = `/realtime/v1/api/broadcast/${encodeURIComponent(topicOf(a.id))}/events/UPDATE`;
    const refused = await fetch(
      `${testEnv().url}${singleRoute}?private=true`,
      {
        method: "POST",
        headers: {
          apikey: testEnv().anonKey,
          Authorization: `Bearer ${c.accessToken}`,
          "Content-Type": "application/json",
        },
        body: JSON.stringify({ forged: "raw single" }),
      },
    );
    assert.equal(refused.status, 403);
    assert.deepEqual(await refused.json(), { message: "Unauthorized" });

    // 4. C joins a *public* channel with the same name and sends: public and private topics are apart.
    const twin = await joinChannel(deviceC, topicOf(a.id), { private: false, broadcast: { ack: true } });
    assert.equal(twin.status, "SUBSCRIBED");
    assert.equal(
      await twin.joined.channel.send({ type: "broadcast", event: "UPDATE", payload: { forged: "twin" } }),
      "ok",
    );

    // 5. And a raw REST call with C's token straight at the batch endpoint.
    const env = testEnv();
    const res = await fetch(`${env.url}/realtime/v1/api/broadcast`, {
      method: "POST",
      headers: {
        apikey: env.anonKey,
        Authorization: `Bearer ${c.accessToken}`,
        "Content-Type": "application/json",
      },
      body: JSON.stringify({
        messages: [{ topic: topicOf(a.id), event: "UPDATE", payload: { forged: "raw" }, private: true }],
      }),
    });
    await res.body?.cancel();
    assert.equal(res.status, 202);

    // Every forged send above has been answered (ack or HTTP status), and a relayed client broadcast
    // is written to the listener's socket before that answer. A real write now travels the same
    // socket after them: once it has arrived, a forged message would have arrived before it.
    await writeProgress(sql, a.id, { series_id: "sentinel", device_id: "a-phone" });
    await waitFor(
      "the real write on both of A's devices",
      () => heard.joined.received.length >= 1 && owner.joined.received.length >= 1,
    );
    const seriesOf = (r: { payload: Record<string, unknown> }) =>
      (r.payload.record as { series_id?: string } | undefined)?.series_id;
    assert.deepEqual(heard.joined.received.map(seriesOf), ["sentinel"], "A's device heard a forged message");
    assert.deepEqual(
      owner.joined.received.map(seriesOf),
      ["sentinel"],
      "self-broadcast of a denied send came back",
    );
  } finally {
    await Promise.all([listener, ownerSender, deviceC].map(closeClient));
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime RLS: a project's own broad policies on realtime.messages open no progress topic (C joins and sends elsewhere, not on progress:<A>)",
  ...noSanitize,
}, async () => {
  // realtime.messages serves every Realtime feature of the project, and permissive policies are ORed:
  // Supabase's Realtime guides begin with "authenticated can receive / can send" using (true). Here
  // such policies as they apply to C (scoped to C's id, so that the other tests on this stack keep
  // the project they expect): C may receive and send on any topic the project has, but progress
  // topics stay readsync's (migration 20261205160000's restrictive policies; pgTAP 011).
  const sql = adminSql({ max: 1 });
  const a = await createTestUser();
  const c = await createTestUser();
  const listener = clientWithToken(() => a.accessToken);
  const deviceC = clientWithToken(() => c.accessToken, { joinErrorBackoffMs: 0 });
  const dropPolicies = async () => {
    await sql`drop policy if exists test_project_receive on realtime.messages`;
    await sql`drop policy if exists test_project_send on realtime.messages`;
  };
  await dropPolicies();
  await sql.unsafe(`
    create policy test_project_receive on realtime.messages for select to authenticated
      using ((select auth.uid()) = '${c.id}'::uuid);
    create policy test_project_send on realtime.messages for insert to authenticated
      with check ((select auth.uid()) = '${c.id}'::uuid)`);
  try {
    const heard = await joinChannel(listener, topicOf(a.id));
    assert.equal(heard.status, "SUBSCRIBED");

    // The project's policies are in force for C: a topic of the project's own, joined and sent on.
    const room = await joinChannel(deviceC, `room:${crypto.randomUUID()}`, {
      private: true,
      broadcast: { ack: true },
    });
    assert.equal(room.status, "SUBSCRIBED", room.error?.message);
    assert.equal(
      await room.joined.channel.send({ type: "broadcast", event: "chat", payload: { text: "hi" } }),
      "ok",
    );

    // But not on A's progress topic: the join is refused, and a send is too.
    const onA = await joinChannel(deviceC, topicOf(a.id));
    assert.equal(onA.status, "CHANNEL_ERROR", "C joined A's progress channel");
    assert.match(onA.error?.message ?? "", /^Unauthorized: /);
    await deviceC.removeChannel(onA.joined.channel);
    const cChannel = deviceC.channel(topicOf(a.id), { config: { private: true } });
    await assert.rejects(() => cChannel.httpSend("UPDATE", { forged: "httpSend" }), /Unauthorized/);
    await deviceC.removeChannel(cChannel);

    // The send has been answered, and a relayed broadcast reaches the listener's socket before that
    // answer; A's real write travels the same socket after it.
    await writeProgress(sql, a.id, { series_id: "sentinel", device_id: "a-phone" });
    await waitFor("the real write on A's device", () => heard.joined.received.length >= 1);
    const seriesOf = (r: { payload: Record<string, unknown> }) =>
      (r.payload.record as { series_id?: string } | undefined)?.series_id;
    assert.deepEqual(heard.joined.received.map(seriesOf), ["sentinel"], "A's device heard a forged message");
    assert.equal(onA.joined.received.length, 0, "C heard A's progress");
  } finally {
    await Promise.all([listener, deviceC].map(closeClient));
    await dropPolicies();
    await sql.end();
  }
});

Deno.test({
  ignore: !mintsTokens, // needs tokens of a chosen lifetime (tests/support/env.ts)
  name: "realtime auth: invalid, expired and foreign-signed tokens are refused at join",
  ...noSanitize,
}, async () => {
  const env = testEnv();
  const a = await createTestUser();
  const expired = await mintUserAccessToken(a.id, { expiresInSeconds: -30, secret: env.jwtSecret });
  const foreign = await mintUserAccessToken(a.id, { secret: "another-project-secret-with-32-characters!!" });
  const noRole = await signDevJwt({ sub: a.id }, { secret: env.jwtSecret });
  const cases: [string, string, RegExp][] = [
    ["expired", expired, /^InvalidJWTToken: Token has expired \d+ seconds ago$/],
    ["foreign signature", foreign, /^JwtSignatureError: Failed to validate JWT signature$/],
    ["not a JWT", "not-a-jwt", /^MalformedJWT: The token provided is not a valid JWT$/],
  ];
  for (const [label, token, reason] of cases) {
    const client = clientWithToken(() => token, { joinErrorBackoffMs: 0 });
    try {
      const result = await joinChannel(client, topicOf(a.id));
      assert.equal(result.status, "CHANNEL_ERROR", label);
      assert.match(result.error?.message ?? "", reason, label);
    } finally {
      await closeClient(client);
    }
  }
  // role missing: signDevJwt adds no role claim.
  const client = clientWithToken(() => noRole, { joinErrorBackoffMs: 0 });
  try {
    const result = await joinChannel(client, topicOf(a.id));
    assert.equal(result.error?.message, "InvalidJWTToken: Fields `role` and `exp` are required in JWT");
  } finally {
    await closeClient(client);
  }
});

Deno.test({
  name:
    "realtime auth: a join whose access_token is an API key (sb_…) is authorized with the socket's own key, as Supabase does",
  ...noSanitize,
}, async () => {
  // supabase-js sends its key as the access token when it has no session, and with the new API keys
  // that key is `sb_publishable_…`, which is not a JWT: Supabase's Realtime then uses the socket's
  // own token (the apikey it connected with) instead of refusing the join. Here the socket's key is
  // the anon JWT, so a public channel is joined and a private progress topic is refused by RLS (as
  // anon), not as a malformed token.
  const a = await createTestUser();
  const client = clientWithToken(() => "sb_publishable_readsync_test_0000000000", { joinErrorBackoffMs: 0 });
  try {
    const open = await joinChannel(client, `sb-key-${crypto.randomUUID()}`, { private: false });
    assert.equal(open.status, "SUBSCRIBED", open.error?.message);
    const progress = await joinChannel(client, topicOf(a.id));
    assert.equal(progress.status, "CHANNEL_ERROR");
    assert.equal(
      progress.error?.message,
      `Unauthorized: You do not have permissions to read from this Channel topic: ${topicOf(a.id)}`,
    );
  } finally {
    await closeClient(client);
  }
});

Deno.test({
  ignore: !mintsTokens, // signs a token of its own (tests/support/env.ts)
  name: "realtime auth: a token whose header has no typ is accepted, as Supabase accepts it",
  ...noSanitize,
}, async () => {
  // Supabase's JwtVerification picks the signer from the header's alg (and kid) only; versions
  // before its JWKS support also required typ "JWT". Pinned so the stand-in does not grow that check.
  const env = testEnv();
  const a = await createTestUser();
  const now = Math.floor(Date.now() / 1000);
  const token = await new SignJWT({ sub: a.id, role: "authenticated", aud: "authenticated" })
    .setProtectedHeader({ alg: "HS256" })
    .setIssuedAt(now)
    .setExpirationTime(now + 600)
    .sign(new TextEncoder().encode(env.jwtSecret));
  const client = clientWithToken(() => token);
  try {
    const result = await joinChannel(client, topicOf(a.id));
    assert.equal(result.status, "SUBSCRIBED", result.error?.message);
  } finally {
    await closeClient(client);
  }
});

Deno.test({
  name: "realtime auth: an invalid access_token push closes the channel with a system message",
  ...noSanitize,
}, async () => {
  const a = await createTestUser();
  const c = await createTestUser();
  let token = a.accessToken;
  const client = clientWithToken(() => token);
  try {
    const joined = await joinChannel(client, topicOf(a.id));
    assert.equal(joined.status, "SUBSCRIBED");
    // A valid token of another user: verified, but RLS refuses C on A's topic.
    token = c.accessToken;
    await client.realtime.setAuth();
    await waitFor("the channel to close", () => joined.joined.states.includes("CLOSED"));
    assert.deepEqual(joined.joined.system.at(-1), {
      extension: "system",
      status: "error",
      message: `You do not have permissions to read from this Channel topic: ${topicOf(a.id)}`,
      channel: topicOf(a.id),
    });
    assert.equal(client.getChannels().length, 0, "realtime-js removes the closed channel");
  } finally {
    await closeClient(client);
  }
});

Deno.test({
  name:
    "realtime auth: an access_token push with a bad signature closes the channel with Supabase's ':signature_error', a malformed one with its message",
  ...noSanitize,
}, async () => {
  // Supabase's apply_access_token (realtime_channel.ex) has clauses for expired, malformed and
  // claim-less tokens, whose system message is the reason's text; a bad signature
  // (JwtVerification's {:error, :signature_error}) reaches its catch-all,
  // shutdown_response(socket, inspect(error)), so the message is the atom as Elixir prints it. (At
  // join the same token is refused with "JwtSignatureError: Failed to validate JWT signature".)
  // Signed with a secret of our own, so these tokens are refused on every stack.
  const a = await createTestUser();
  const foreign = await mintUserAccessToken(a.id, { secret: "another-project-secret-with-32-characters!!" });
  const cases: [string, string, string][] = [
    ["foreign signature", foreign, ":signature_error"],
    ["not a JWT", "not-a-jwt", "The token provided is not a valid JWT"],
  ];
  for (const [label, pushed, message] of cases) {
    let token = a.accessToken;
    const client = clientWithToken(() => token);
    try {
      const joined = await joinChannel(client, topicOf(a.id));
      assert.equal(joined.status, "SUBSCRIBED", label);
      token = pushed;
      await client.realtime.setAuth();
      await waitFor(`the channel to close (${label})`, () => joined.joined.states.includes("CLOSED"));
      assert.deepEqual(joined.joined.system.at(-1), {
        extension: "system",
        status: "error",
        message,
        channel: topicOf(a.id),
      }, label);
    } finally {
      await closeClient(client);
    }
  }
});

Deno.test(
  {
    name:
      "realtime: a socket with a bad, missing or header-only apikey is refused with 403 and an empty body; x-api-key or the apikey parameter is accepted",
    ...noSanitize,
  },
  async () => {
    // As on `supabase start`: its gateway (supabase/cli's kong.yml) has no key-auth on the realtime-v1-ws
    // route, so Realtime refuses. Its user_socket.ex reads the token from the x-api-key header, else the
    // apikey parameter (access_token/2), and sleeps CONNECT_ERROR_BACKOFF_MS (2 s by default) in
    // connect/3 before returning any error; Phoenix's transport then answers the upgrade with its
    // default error handler: 403, empty body.
    const env = testEnv();
    const wsUrl = `${env.url.replace(/^http/, "ws")}/realtime/v1/websocket`;
    // All at once, so the test waits for one backoff, not three. The wait itself is shown on an
    // endpoint of the test's own, by its timer ("a refused socket's 403 waits on the endpoint's 2 s
    // connect-error timer"), not by this test's clock.
    const results = await Promise.all(
      upgradeRefusalCases(env.anonKey).map(([, query, headers]) => upgradeRequest(env.url, query, headers)),
    );
    results.forEach((r, i) => {
      assert.deepEqual(r, { status: 403, body: "" }, upgradeRefusalCases(env.anonKey)[i][0]);
    });

    for (
      const [label, open] of [
        ["apikey parameter", () => new WebSocket(`${wsUrl}?apikey=${env.anonKey}&vsn=2.0.0`)],
        [
          "x-api-key header",
          () => new WebSocket(`${wsUrl}?vsn=2.0.0`, { headers: { "x-api-key": env.anonKey } }),
        ],
      ] as const
    ) {
      const ws = open();
      const replies: unknown[] = [];
      await new Promise<void>((resolve, reject) => {
        ws.onopen = () => ws.send(JSON.stringify([null, "7", "phoenix", "heartbeat", {}]));
        ws.onmessage = (e) => {
          replies.push(JSON.parse(e.data));
          resolve();
        };
        ws.onerror = () => reject(new Error(`socket error (${label})`));
      });
      assert.deepEqual(
        replies[0],
        [null, "7", "phoenix", "phx_reply", { status: "ok", response: {} }],
        label,
      );
      ws.close();
      await new Promise((r) => (ws.onclose = r));
    }
  },
);

/** Sockets refused at the upgrade: [label, query, headers]; all but the last after the 2 s wait. */
function upgradeRefusalCases(anonKey: string) {
  return [
    ["bad apikey", "vsn=2.0.0&apikey=nope", {}],
    ["no apikey", "vsn=2.0.0", {}],
    ["apikey header only", "vsn=2.0.0", { apikey: anonKey }],
    // No serializer for it: Phoenix.Socket refuses before connect/3, so without the wait.
    ["unsupported vsn", `vsn=3.0.0&apikey=${anonKey}`, {}],
  ] as const;
}

/** A WebSocket upgrade request to `baseUrl`'s Realtime socket, answered as status and body. */
async function upgradeRequest(
  baseUrl: string,
  query: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: string }> {
  const res = await fetch(`${baseUrl}/realtime/v1/websocket?${query}`, {
    headers: {
      upgrade: "websocket",
      connection: "upgrade",
      "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      "sec-websocket-version": "13",
      ...headers,
    },
    signal: AbortSignal.timeout(30_000),
  });
  return { status: res.status, body: await res.text() };
}

Deno.test({
  name:
    "realtime: a refused socket's 403 waits on the endpoint's 2 s connect-error timer (Supabase's CONNECT_ERROR_BACKOFF_MS); an unsupported vsn is refused without it",
  ...ownEndpoint,
}, async () => {
  // Shown by the endpoint's own timer, not by a clock: each refusal is not answered while a 2000 ms
  // timer is pending, and is answered (403) once that timer is run by hand; the unsupported vsn is
  // answered with no such timer set. One refusal at a time, so each has its own timer.
  const env = testEnv();
  const timers = watchTimers();
  const logs: Record<string, unknown>[] = [];
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    log: (fields) => logs.push(fields),
  });
  try {
    for (const [label, query, headers] of upgradeRefusalCases(env.anonKey)) {
      let answer: { status: number; body: string } | null = null;
      const answered = upgradeRequest(server.url, query, headers).then((a) => (answer = a));
      if (label === "unsupported vsn") {
        await answered;
        assert.ok(!pendingFor(timers, CONNECT_ERROR_BACKOFF_MS), `${label}: a wait was set`);
      } else {
        await waitFor(
          `${label}: the connect-error wait`,
          () => pendingFor(timers, CONNECT_ERROR_BACKOFF_MS),
          {
            timeoutMs: 20_000,
            intervalMs: 5,
          },
        );
        assert.equal(answer, null, `${label}: answered while its wait was pending`);
        timers.fire(CONNECT_ERROR_BACKOFF_MS);
        await answered;
      }
      assert.deepEqual(answer, { status: 403, body: "" }, label);
    }
    // The endpoint's log says the same wait for each refusal it waited for.
    assert.deepEqual(
      logs.filter((l) => l.event === "socket_refused").map((l) => l.waited_ms ?? 0),
      [2_000, 2_000, 2_000, 0],
    );
  } finally {
    timers.restore();
    await server.close();
  }
});

Deno.test({
  name:
    "realtime: a request to the socket that is no WebSocket upgrade is Phoenix's 400 with WebSockAdapter's reason, after the socket's connect; another method is 400 at once",
  ...ownEndpoint,
}, async () => {
  // What Realtime answers behind supabase start's Kong (local/realtime/upgrade.ts cites the sources):
  // Phoenix's WebSocket transport runs the socket's connect (vsn, then the token: 403) first, then
  // WebSockAdapter's upgrade checks; the first that fails is the 400's body, with no Content-Type.
  // Kong replaces the client's Connection header with `keep-alive` unless it asks for a WebSocket.
  const env = testEnv();
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    connectErrorBackoffMs: 0,
  });
  const upgradeHeaders = { upgrade: "websocket", connection: "upgrade" };
  const key = { "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==" };
  const cases: [string, string, string, Record<string, string>, number, string][] = [
    [
      "a plain GET",
      "GET",
      `apikey=${env.anonKey}`,
      {},
      400,
      `'connection' header must contain 'upgrade', got ["keep-alive"]`,
    ],
    [
      "a plain GET, keep-alive asked",
      "GET",
      `apikey=${env.anonKey}&vsn=2.0.0`,
      { connection: "keep-alive" },
      400,
      `'connection' header must contain 'upgrade', got ["keep-alive"]`,
    ],
    [
      "no Sec-WebSocket-Key",
      "GET",
      `apikey=${env.anonKey}`,
      upgradeHeaders,
      400,
      "'sec-websocket-key' header is absent",
    ],
    [
      "no Sec-WebSocket-Version",
      "GET",
      `apikey=${env.anonKey}`,
      { ...upgradeHeaders, ...key },
      400,
      "'sec-websocket-version' header must equal '13', got []",
    ],
    [
      "Sec-WebSocket-Version 8",
      "GET",
      `apikey=${env.anonKey}`,
      { ...upgradeHeaders, ...key, "sec-websocket-version": "8" },
      400,
      `'sec-websocket-version' header must equal '13', got ["8"]`,
    ],
    // The socket's connect refuses first: no token, or a vsn no serializer takes, is its 403.
    ["a plain GET without apikey", "GET", "", {}, 403, ""],
    ["a plain GET with vsn 3.0.0", "GET", `apikey=${env.anonKey}&vsn=3.0.0`, {}, 403, ""],
    // Phoenix's transport answers any other method 400 with an empty body, before the connect.
    ["a POST without apikey", "POST", "", {}, 400, ""],
    ["a HEAD", "HEAD", `apikey=${env.anonKey}`, {}, 400, ""],
  ];
  try {
    for (const [label, method, query, headers, status, body] of cases) {
      const res = await fetch(`${server.url}/realtime/v1/websocket?${query}`, {
        method,
        headers,
        signal: AbortSignal.timeout(30_000),
      });
      assert.deepEqual(
        { status: res.status, body: await res.text(), type: res.headers.get("content-type") },
        { status, body, type: null },
        label,
      );
    }
  } finally {
    await server.close();
  }
});

// Closing the stack's shared client sockets between tests keeps the endpoint's connection count low.
Deno.test(
  { name: "realtime RLS: anon (no user token) cannot join a private progress topic", ...noSanitize },
  async () => {
    const a = await createTestUser();
    const client = newClient({ joinErrorBackoffMs: 0 });
    try {
      const result = await joinChannel(client, topicOf(a.id));
      assert.equal(result.status, "CHANNEL_ERROR");
      assert.match(result.error?.message ?? "", /^Unauthorized: /);
    } finally {
      await closeClient(client);
    }
  },
);

Deno.test({
  name:
    "realtime RLS: the join probe is Supabase's (row topic = realtime.topic(), defaults, claims, headers)",
  ...noSanitize,
}, async () => {
  // A policy that only passes for a probe shaped exactly as Supabase Realtime makes it: the row's
  // own topic column and realtime.topic() both name the channel's sub-topic, every other column is
  // at its default (no event, no payload, private false), the claims come in request.jwt.claims and
  // the legacy request.jwt.claim.sub setting is not set, and request.headers is a JSON object.
  const sql = adminSql({ max: 1 });
  const a = await createTestUser();
  const c = await createTestUser();
  const deviceA = clientWithToken(() => a.accessToken);
  const deviceC = clientWithToken(() => c.accessToken, { joinErrorBackoffMs: 0 });
  await sql`drop policy if exists test_probe_shape on realtime.messages`;
  await sql.unsafe(`
    create policy test_probe_shape on realtime.messages for select to authenticated using (
      topic = 'probe-shape:' || (current_setting('request.jwt.claims', true)::jsonb ->> 'sub')
      and topic = (select realtime.topic())
      and extension = 'broadcast' and event is null and payload is null and private is false
      and coalesce(current_setting('request.jwt.claim.sub', true), '') = ''
      and jsonb_typeof(current_setting('request.headers', true)::jsonb) = 'object'
    )`);
  try {
    const own = await joinChannel(deviceA, `probe-shape:${a.id}`);
    assert.equal(own.status, "SUBSCRIBED", own.error?.message);
    const foreign = await joinChannel(deviceC, `probe-shape:${a.id}`);
    assert.equal(foreign.status, "CHANNEL_ERROR");
    assert.match(foreign.error?.message ?? "", /^Unauthorized: /);
  } finally {
    await Promise.all([deviceA, deviceC].map(closeClient));
    await sql`drop policy if exists test_probe_shape on realtime.messages`;
    await sql.end();
  }
});

Deno.test(
  {
    name:
      "realtime: a refused re-join of a joined topic leaves nothing joined (Phoenix closes the old channel first)",
    ...noSanitize,
    ignore: !mintsTokens, // needs a token that has expired
  },
  async () => {
    // A device whose token expired joins its topic again on the same socket: Phoenix shuts the
    // existing channel down before deciding the new join, so after the refusal the socket hears
    // nothing more of the topic — it must not keep receiving on the old join. The old channel's
    // phx_close is one of the frames the socket holds while the join is decided: it follows the
    // refusal (Phoenix sends it to itself and writes it after the join's reply).
    const sql = adminSql({ max: 1 });
    const a = await createTestUser();
    const expired = await a.newAccessToken(-60);
    const topic = `realtime:${topicOf(a.id)}`;
    // The refusal's wait is not what this tests.
    const socket = await rawSocket(undefined, `&${LOWER_JOIN_ERROR_BACKOFF_PARAM}=0`);
    const { ws, text, replyTo } = socket;
    // Stays joined on the topic: once it has a write's broadcast, the endpoint has handed that
    // broadcast to every channel on the topic.
    const observer = await rawSocket();
    const join = (ref: string, token: string) =>
      ws.send(
        JSON.stringify([ref, ref, topic, "phx_join", {
          config: { private: true, broadcast: {} },
          access_token: token,
        }]),
      );
    try {
      join("1", a.accessToken);
      observer.ws.send(JSON.stringify(["1", "1", topic, "phx_join", {
        config: { private: true, broadcast: {} },
        access_token: a.accessToken,
      }]));
      await replyTo("1");
      await observer.replyTo("1");
      await writeProgress(sql, a.id, { series_id: "while-joined", chapter: 1, device_id: "phone" });
      await waitFor("the broadcast while joined", () => socket.broadcasts === 1);

      join("2", expired);
      await waitFor(
        "the old join's phx_close",
        () => text.some((m) => m[0] === "1" && m[3] === "phx_close"),
        {
          timeoutMs: 15_000,
        },
      );
      const close = text.findIndex((m) => m[0] === "1" && m[3] === "phx_close");
      const refusal = text.findIndex((m) => m[1] === "2");
      assert.ok(
        refusal >= 0 && refusal < close,
        `the refusal, then phx_close of join 1: ${JSON.stringify(text)}`,
      );
      assert.equal((text[refusal][4] as { status: string }).status, "error");

      await writeProgress(sql, a.id, { series_id: "after-refusal", chapter: 2, device_id: "phone" });
      // Nothing arrives for the topic: once the observer has the write's broadcast, a heartbeat round
      // trip proves the endpoint has had its chance to deliver (broadcasts and replies share the
      // socket, in order).
      await waitFor("the write's broadcast on the observer", () => observer.broadcasts === 2);
      ws.send(JSON.stringify([null, "hb", "phoenix", "heartbeat", {}]));
      await replyTo("hb");
      assert.equal(socket.broadcasts, 1, "the refused socket still received the topic's broadcast");

      // A leave of the (no longer joined) topic is answered ok, as Phoenix does.
      ws.send(JSON.stringify(["2", "3", topic, "phx_leave", {}]));
      await replyTo("3");
      assert.equal((text.find((m) => m[1] === "3")![4] as { status: string }).status, "ok");
    } finally {
      ws.close();
      observer.ws.close();
      await sql.end();
    }
  },
);

Deno.test({
  name:
    "realtime: a phx_leave is answered ok, then the channel's phx_close follows; a leave of a topic not joined is answered ok with its join_ref",
  ...noSanitize,
}, async () => {
  // Phoenix's channel process answers the leave and stops with {:shutdown, :left}, which sends its
  // socket {:socket_close, pid, reason}: the socket writes phx_close (join_ref and ref = the join's
  // ref) after the reply (phoenix lib/phoenix/channel/server.ex, lib/phoenix/socket.ex
  // socket_close/2). A leave of a topic with no channel is answered by the socket itself, ok, with
  // the push's join_ref (socket.ex handle_in(nil, %{event: "phx_leave"})).
  const a = await createTestUser();
  const socket = await rawSocket();
  const topic = `realtime:${topicOf(a.id)}`;
  try {
    socket.ws.send(JSON.stringify(["1", "1", topic, "phx_join", {
      config: { private: true, broadcast: {} },
      access_token: a.accessToken,
    }]));
    await socket.replyTo("1");
    const joined = socket.text.length;
    socket.ws.send(JSON.stringify(["1", "2", topic, "phx_leave", {}]));
    await waitFor("the phx_close", () => socket.text.some((m) => m[3] === "phx_close"));
    socket.ws.send(JSON.stringify(["7", "3", "realtime:never-joined", "phx_leave", {}]));
    await socket.replyTo("3");
    assert.deepEqual(socket.text.slice(joined), [
      ["1", "2", topic, "phx_reply", { status: "ok", response: {} }],
      ["1", "1", topic, "phx_close", {}],
      ["7", "3", "realtime:never-joined", "phx_reply", { status: "ok", response: {} }],
    ]);
  } finally {
    socket.ws.close();
  }
});

Deno.test({
  name:
    "realtime: a push with an older join_ref goes to the topic's current channel; a leave with an older or no join_ref is ignored",
  ...noSanitize,
}, async () => {
  // Phoenix's socket sends every push but phx_leave to the topic's channel process, which matches
  // the topic only (lib/phoenix/socket.ex handle_in/4, lib/phoenix/channel/server.ex); a phx_leave
  // reaches the channel only with its join_ref (or when it was joined without one), and is otherwise
  // dropped without a reply ("the client has raced a server close").
  const socket = await rawSocket();
  const topic = `realtime:stale-ref-${crypto.randomUUID()}`;
  const join = (ref: string) =>
    socket.ws.send(JSON.stringify([ref, ref, topic, "phx_join", {
      config: { private: false, broadcast: { self: true, ack: true } },
    }]));
  const reply = (ref: string) => socket.text.find((m) => m[1] === ref && m[3] === "phx_reply");
  try {
    join("1");
    await socket.replyTo("1");
    join("5"); // replaces join 1
    await socket.replyTo("5");
    socket.ws.send(
      JSON.stringify(["1", "9", topic, "broadcast", { type: "broadcast", event: "e", payload: {} }]),
    );
    await socket.replyTo("9");
    assert.deepEqual(reply("9"), ["5", "9", topic, "phx_reply", { status: "ok", response: {} }]);
    await waitFor("the relay to self", () => socket.broadcasts === 1);

    socket.ws.send(JSON.stringify(["1", "10", topic, "phx_leave", {}]));
    socket.ws.send(JSON.stringify([null, "11", topic, "phx_leave", {}]));
    socket.ws.send(JSON.stringify([null, "hb", "phoenix", "heartbeat", {}]));
    await socket.replyTo("hb"); // frames are handled in order: the leaves came first
    assert.equal(reply("10"), undefined, "a leave with an older join_ref was answered");
    assert.equal(reply("11"), undefined, "a leave without join_ref was answered");
    // Still joined: the current join's leave is answered ok.
    socket.ws.send(JSON.stringify(["5", "12", topic, "phx_leave", {}]));
    await socket.replyTo("12");
    assert.deepEqual(reply("12"), ["5", "12", topic, "phx_reply", { status: "ok", response: {} }]);
  } finally {
    socket.ws.close();
  }
});

Deno.test(
  { name: "realtime REST: a malformed percent-encoded topic is a 400, not a 500", ...noSanitize },
  async () => {
    const env = testEnv();
    const a = await createTestUser();
    const res = await fetch(
      `${env.url}/realtime/v1/api/broadcast/progress%3A%E0%A4%A/events/UPDATE?private=true`,
      {
        method: "POST",
        headers: {
          apikey: env.anonKey,
          Authorization: `Bearer ${a.accessToken}`,
          "Content-Type": "application/json",
        },
        body: JSON.stringify({ forged: true }),
      },
    );
    // Phoenix's router decodes "%E0%A4" to bytes and keeps "%A" as it is (URI.decode): not UTF-8.
    // What Supabase answers then is not established (local/realtime/README.md); the stand-in says 400.
    assert.equal(res.status, 400);
    assert.match((await res.json()).error, /valid UTF-8 once percent-decoded/);
  },
);

Deno.test(
  {
    name:
      "realtime REST: a batch Supabase's changeset refuses (null body, no payload, a private of 'yes') is its 422",
    ...noSanitize,
  },
  async () => {
    // Supabase's BatchBroadcast changeset, rendered as {"errors": traverse_errors}: messages missing
    // (a body that is no object reaches it as _json) or empty: "can't be blank"; not a list, or an
    // element that is no message (embeds_many): "is invalid"; otherwise one error map per message, from
    // casting topic and event (strings), payload (a map), private (a boolean) and requiring topic, payload
    // and event. A body of null, or a null in messages, threw here (500); a message without payload or
    // with private "yes" was broadcast (202).
    const env = testEnv();
    const a = await createTestUser();
    const ok = { topic: "t", event: "e", payload: {} };
    const cases: [string, unknown][] = [
      ["null", { messages: ["can't be blank"] }],
      ["[]", { messages: ["can't be blank"] }],
      ["{}", { messages: ["can't be blank"] }],
      ['{"messages":[]}', { messages: ["can't be blank"] }],
      ['{"messages":null}', { messages: ["is invalid"] }],
      ['{"messages":"x"}', { messages: ["is invalid"] }],
      ['{"messages":[null]}', { messages: ["is invalid"] }],
      ['{"messages":[5]}', { messages: ["is invalid"] }],
      [JSON.stringify({ messages: [ok, null] }), { messages: ["is invalid"] }],
      [JSON.stringify({ messages: [{ topic: "t", event: "e" }] }), {
        messages: [{ payload: ["can't be blank"] }],
      }],
      [
        JSON.stringify({ messages: [ok, { topic: 5, event: " ", payload: "s", private: "yes" }] }),
        {
          messages: [{}, {
            event: ["can't be blank"],
            payload: ["is invalid"],
            private: ["is invalid"],
            topic: ["is invalid"],
          }],
        },
      ],
      [JSON.stringify({ messages: [{ ...ok, payload: null, private: "true" }] }), {
        messages: [{ payload: ["can't be blank"] }],
      }],
    ];
    for (const [body, errors] of cases) {
      const res = await fetch(`${env.url}/realtime/v1/api/broadcast`, {
        method: "POST",
        headers: {
          apikey: env.anonKey,
          Authorization: `Bearer ${a.accessToken}`,
          "Content-Type": "application/json",
        },
        body,
      });
      const text = await res.text();
      assert.equal(res.status, 422, `${body}: ${res.status} ${text}`);
      assert.deepEqual(JSON.parse(text), { errors }, body);
    }
  },
);

Deno.test(
  {
    name: "realtime REST: browsers may call the broadcast routes from any origin (the gateway's CORS)",
    ...noSanitize,
  },
  async () => {
    // realtime-js falls back to these routes from a browser (send() before the join, httpSend()),
    // so on Supabase the gateway answers the preflight and marks every answer readable by any
    // origin, refusals included (a page must be able to read why it was refused).
    const env = testEnv();
    const a = await createTestUser();
    const origin = "http://localhost:3000";
    const path = `/realtime/v1/api/broadcast/${encodeURIComponent(topicOf(a.id))}/events/UPDATE?private=true`;
    const preflight = await fetch(`${env.url}${path}`, {
      method: "OPTIONS",
      headers: {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "apikey,authorization,content-type,x-client-info",
      },
    });
    await preflight.arrayBuffer();
    assert.ok(preflight.ok, `preflight status ${preflight.status}`);
    assert.ok(
      ["*", origin].includes(preflight.headers.get("access-control-allow-origin") ?? ""),
      `allow-origin ${preflight.headers.get("access-control-allow-origin")}`,
    );
    assert.match(preflight.headers.get("access-control-allow-methods") ?? "", /POST/);
    const allowedHeaders = (preflight.headers.get("access-control-allow-headers") ?? "").toLowerCase();
    for (const header of ["apikey", "authorization", "content-type", "x-client-info"]) {
      assert.ok(
        allowedHeaders === "*" || allowedHeaders.split(/\s*,\s*/).includes(header),
        `allows ${header}`,
      );
    }
    // The answers themselves: a refusal (nobody may send on a private progress topic) and an
    // accepted send on a public topic.
    const publicPath = `/realtime/v1/api/broadcast/cors-probe-${crypto.randomUUID()}/events/ping`;
    for (const [route, expected] of [[path, 403], [publicPath, 202]] as const) {
      const res = await fetch(`${env.url}${route}`, {
        method: "POST",
        headers: {
          origin,
          apikey: env.anonKey,
          authorization: `Bearer ${a.accessToken}`,
          "content-type": "application/json",
        },
        body: JSON.stringify({ cors: true }),
      });
      await res.arrayBuffer();
      assert.equal(res.status, expected);
      assert.ok(
        ["*", origin].includes(res.headers.get("access-control-allow-origin") ?? ""),
        `${expected}: allow-origin ${res.headers.get("access-control-allow-origin")}`,
      );
    }
  },
);

Deno.test(
  {
    name: "realtime auth: an access_token push that is an API key or not a string is ignored (channel stays)",
    ...noSanitize,
  },
  async () => {
    const sql = adminSql({ max: 1 });
    const a = await createTestUser();
    const topic = `realtime:${topicOf(a.id)}`;
    const socket = await rawSocket();
    const { ws, text, replyTo } = socket;
    try {
      ws.send(
        JSON.stringify(["1", "1", topic, "phx_join", {
          config: { private: true },
          access_token: a.accessToken,
        }]),
      );
      await replyTo("1");
      for (const value of ["sb_publishable_abc123", 123, { token: "x" }]) {
        ws.send(JSON.stringify(["1", null, topic, "access_token", { access_token: value }]));
      }
      ws.send(JSON.stringify([null, "hb", "phoenix", "heartbeat", {}]));
      await replyTo("hb");
      assert.deepEqual(text.filter((m) => m[3] === "system" || m[3] === "phx_close"), []);
      await writeProgress(sql, a.id, { series_id: "still-joined", chapter: 1, device_id: "phone" });
      await waitFor("the broadcast on the kept channel", () => socket.broadcasts === 1);
    } finally {
      ws.close();
      await sql.end();
    }
  },
);

Deno.test(
  {
    name:
      "realtime auth: the periodic token confirm does not ask the read policy again; an access_token push does",
    ...ownEndpoint,
  },
  async () => {
    // Supabase's confirm_token (at expiry, at most an hour apart) re-verifies the channel's token only;
    // the read policy decides at join and on an access_token push. A policy that stops allowing
    // (here: it allows until a deadline) leaves a joined channel open until the next push. The
    // endpoint runs on its own port with a 150 ms confirm interval, so the confirm runs several
    // times after the deadline (each logged as token_confirmed).
    const env = testEnv();
    const sql = adminSql({ max: 1 });
    const a = await createTestUser();
    const logs: Record<string, unknown>[] = [];
    const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
      confirmTokenIntervalMs: 150,
      log: (fields) => logs.push(fields),
    });
    const subTopic = `confirm-probe:${a.id}`;
    const topic = `realtime:${subTopic}`;
    const allowedUntil = (deadline: string) => `
        (select realtime.topic()) = 'confirm-probe:' || (select auth.uid())::text
        and statement_timestamp() < '${deadline}'::timestamptz`;
    await sql`drop policy if exists test_confirm_deadline on realtime.messages`;
    // No deadline until the channel has joined (a join on a loaded machine may take a while).
    await sql.unsafe(`
      create policy test_confirm_deadline on realtime.messages for select to authenticated using (
        ${allowedUntil("infinity")}
      )`);
    const socket = await rawSocket(server.url);
    const { ws, text, replyTo } = socket;
    try {
      ws.send(JSON.stringify(["1", "1", topic, "phx_join", {
        config: { private: true },
        access_token: a.accessToken,
      }]));
      await replyTo("1");
      assert.equal((text.find((m) => m[1] === "1")?.[4] as { status: string }).status, "ok");

      // The deadline passes (now): from here on the policy would refuse; the confirms keep running
      // and keep the channel.
      const confirmsAfterDeadline = () =>
        logs.filter((l) => l.event === "token_confirmed" && l.topic === topic).length;
      const [{ now }] = await sql<{ now: string }[]>`select now()::text as now`;
      await sql.unsafe(
        `alter policy test_confirm_deadline on realtime.messages using (${allowedUntil(now)})`,
      );
      const before = confirmsAfterDeadline();
      await waitFor("three token confirms after the deadline", () => confirmsAfterDeadline() >= before + 3);
      assert.deepEqual(text.filter((m) => m[3] === "system" || m[3] === "phx_close"), []);
      await sql`select realtime.send(${sql.json({ n: 1 })}::jsonb, 'probe', ${subTopic}, true)`;
      await waitFor("the broadcast on the still-joined channel", () => socket.broadcasts === 1);

      // A new token is a new authorization: the policy is asked and refuses now.
      ws.send(JSON.stringify(["1", null, topic, "access_token", {
        access_token: await a.newAccessToken(3_600),
      }]));
      await waitFor("the channel to close", () => text.some((m) => m[3] === "phx_close"));
      const system = text.find((m) => m[3] === "system")?.[4] as { status: string; message: string };
      assert.equal(system.status, "error");
      assert.match(system.message, /permissions to read from this Channel topic/);
    } finally {
      ws.close();
      await server.close();
      await sql`drop policy if exists test_confirm_deadline on realtime.messages`;
      await sql.end();
    }
  },
);
