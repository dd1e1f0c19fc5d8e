// Tokens that are not Supabase Auth's own, over the real supabase-js client and the real WebSocket:
// a custom Postgres role in the `role` claim, subs that are not UUIDs (third-party auth), and a role
// that does not exist. Supabase Realtime sets whatever role the claim names
// (Realtime.Tenants.Authorization.set_conn_config) and lets PostgreSQL and the policies decide; a probe
// PostgreSQL answers with an error (a role that does not exist, a policy that raises) is its
// :rls_policy_error, a join refused as Unauthorized (local/realtime/README.md, Authorization). Each test
// sets up the project's roles and policies it needs and removes them.

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { signDevJwt } from "../../local/stack/keys.ts";
import { adminSql, createTestUser, localRealtime, mintsTokens, testEnv } from "../support/env.ts";
import {
  type ClientOptions,
  clientWithToken,
  closeClient,
  joinChannel,
  noSanitize,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;
const unauthorized = (topic: string) =>
  `Unauthorized: You do not have permissions to read from this Channel topic: ${topic}`;
const suffix = () => crypto.randomUUID().replaceAll("-", "").slice(0, 12);

/** A token of the project (signed with its secret) with the claims given, as a custom access token hook or a third-party provider's exchange would produce. */
async function projectToken(claims: Record<string, unknown>): Promise<string> {
  return await signDevJwt({ aud: "authenticated", ...claims }, { secret: testEnv().jwtSecret });
}

/**
 * With the local stand-in, an endpoint of the test's own whose log the test reads (a probe that
 * PostgreSQL answered with an error is logged `rls_policy_error`, Supabase's RlsPolicyError);
 * against a real stack, the stack's Realtime and no log.
 */
async function realtimeUnderTest() {
  if (!localRealtime) return { options: {} as ClientOptions, logs: null, close: async () => {} };
  const env = testEnv();
  const logs: Record<string, unknown>[] = [];
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    log: (fields) => logs.push(fields),
  });
  return { options: { realtimeOrigin: server.url } as ClientOptions, logs, close: () => server.close() };
}

Deno.test({
  ignore: !mintsTokens, // signs tokens with the project's secret (tests/support/env.ts)
  name:
    "realtime roles: a custom role with the project's broad policies joins and sends on room:…, but not on progress:<A>, and sends on no progress topic",
  ...noSanitize,
}, async () => {
  // The project created a role for its premium users and gave it what Realtime's probes need (the
  // realtime schema, select/insert on realtime.messages, the auth helpers) and the two policies
  // Supabase's Realtime guides begin with, for that role. It is no member of authenticated: readsync's
  // restrictive policies bind PUBLIC, so they hold for it too (migration 20261205160000, pgTAP 011).
  const sql = adminSql({ max: 1 });
  const role = `premium_reader_${suffix()}`;
  const a = await createTestUser();
  const [c1, c2] = [crypto.randomUUID(), crypto.randomUUID()];
  const [t1, t2] = [await projectToken({ sub: c1, role }), await projectToken({ sub: c2, role })];
  const listener = clientWithToken(() => a.accessToken);
  const premium1 = clientWithToken(() => t1, { joinErrorBackoffMs: 0 });
  const premium2 = clientWithToken(() => t2, { joinErrorBackoffMs: 0 });
  try {
    // Created inside the try (one implicit transaction), so the finally removes whatever exists.
    await sql.unsafe(`
      create role ${role} nologin;
      grant usage on schema realtime to ${role};
      grant select, insert on realtime.messages to ${role};
      grant usage on schema auth to ${role};
      grant execute on function auth.uid(), auth.jwt() to ${role};
      create policy "${role} can receive" on realtime.messages for select to ${role} using (true);
      create policy "${role} can send" on realtime.messages for insert to ${role} with check (true)`);
    const heard = await joinChannel(listener, topicOf(a.id));
    assert.equal(heard.status, "SUBSCRIBED", heard.error?.message);

    // The project's own topic: both join, one sends (acknowledged), the other receives.
    const room = `room:${crypto.randomUUID()}`;
    const sender = await joinChannel(premium1, room, { private: true, broadcast: { ack: true } });
    assert.equal(sender.status, "SUBSCRIBED", sender.error?.message);
    const receiver = await joinChannel(premium2, room);
    assert.equal(receiver.status, "SUBSCRIBED", receiver.error?.message);
    assert.equal(
      await sender.joined.channel.send({ type: "broadcast", event: "chat", payload: { text: "hi" } }),
      "ok",
    );
    await waitFor(
      "the chat message on the other premium device",
      () => receiver.joined.received.length === 1,
    );
    assert.deepEqual(receiver.joined.received[0].payload, { text: "hi" });

    // A's progress topic: refused, and a send there is too.
    const onA = await joinChannel(premium1, topicOf(a.id));
    assert.equal(onA.status, "CHANNEL_ERROR", "a premium user joined A's progress channel");
    assert.equal(onA.error?.message, unauthorized(topicOf(a.id)));
    await premium1.removeChannel(onA.joined.channel);
    const toA = premium1.channel(topicOf(a.id), { config: { private: true } });
    await assert.rejects(() => toA.httpSend("UPDATE", { forged: "httpSend" }), /Unauthorized/);
    assert.equal(await toA.send({ type: "broadcast", event: "UPDATE", payload: { forged: "rest" } }), "ok");
    await premium1.removeChannel(toA);

    // Its own progress topic may be received on (its sub is its uid there), never sent on.
    const own = await joinChannel(premium2, topicOf(c2), { private: true, broadcast: { ack: true } });
    assert.equal(own.status, "SUBSCRIBED", own.error?.message);
    assert.equal(
      await own.joined.channel.send({ type: "broadcast", event: "UPDATE", payload: { forged: "own" } }),
      "error",
    );

    // Every forged send has been answered; A's real write travels A's socket after any relay of them.
    await writeProgress(sql, a.id, { series_id: "sentinel", device_id: "a-phone" });
    await waitFor("the real write on A's device", () => heard.joined.received.length >= 1);
    const seriesOf = (r: { payload: Record<string, unknown> }) =>
      (r.payload.record as { series_id?: string } | undefined)?.series_id;
    assert.deepEqual(heard.joined.received.map(seriesOf), ["sentinel"], "A's device heard a forged message");
    assert.equal(onA.joined.received.length, 0, "the premium user heard A's progress");
  } finally {
    await Promise.all([listener, premium1, premium2].map(closeClient));
    await sql.unsafe(`
      drop policy if exists "${role} can receive" on realtime.messages;
      drop policy if exists "${role} can send" on realtime.messages;
      do $$ begin
        if exists (select from pg_roles where rolname = '${role}') then
          drop owned by ${role};
          drop role ${role};
        end if;
      end $$`);
    await sql.end();
  }
});

Deno.test({
  ignore: !mintsTokens,
  name:
    "realtime roles: third-party-auth users (subs that are not UUIDs) join and receive on the project's own channels whichever way the policies sort, and are refused progress: topics without a policy error",
  ...noSanitize,
}, async () => {
  // A project signed in by Clerk or Auth0 authorizes its channels on auth.jwt() ->> 'sub'. Its policy
  // and readsync's receive policy are ORed in an order of PostgreSQL's own, so the project's policy is
  // named to sort before readsync's ('Clerk …', capitals first) and after it ('users …'), as pgTAP 012
  // does: migration 20261205180000 keeps auth.uid() (a cast of sub to uuid) off these topics in both.
  const sql = adminSql({ max: 1 });
  const realtime = await realtimeUnderTest();
  const a = await createTestUser();
  const prefix = `tp-${suffix()}-user:`;
  const subs = [`user_2${suffix()}NNEqL2nrIRdJ194`, `auth0|${suffix()}65a1b2c3d4e5`];
  const clients = await Promise.all(subs.map(async (sub) => {
    const token = await projectToken({ sub, role: "authenticated" });
    return clientWithToken(() => token, { ...realtime.options, joinErrorBackoffMs: 0 });
  }));
  const policyNames = [
    `Clerk users receive on their own channel (${prefix})`,
    `users receive on their own channel (${prefix})`,
  ];
  const dropPolicies = async () => {
    for (const name of policyNames) await sql.unsafe(`drop policy if exists "${name}" on realtime.messages`);
  };
  try {
    for (const name of policyNames) {
      await dropPolicies();
      await sql.unsafe(`
        create policy "${name}" on realtime.messages for select to authenticated
          using (extension = 'broadcast'
                 and (select realtime.topic()) = '${prefix}' || (select auth.jwt() ->> 'sub')
                 and topic = (select realtime.topic()))`);
      for (const [i, sub] of subs.entries()) {
        const client = clients[i];
        const topic = `${prefix}${sub}`;
        const joined = await joinChannel(client, topic);
        assert.equal(joined.status, "SUBSCRIBED", `${name}, ${sub}: ${joined.error?.message}`);
        await sql`select realtime.send(${sql.json({ n: i })}::jsonb, 'note', ${topic}, true)`;
        await waitFor(`the note on ${topic}`, () => joined.joined.received.length === 1);
        assert.deepEqual(joined.joined.received[0].payload.n, i);

        const other = await joinChannel(client, `${prefix}${subs[1 - i]}`);
        assert.equal(other.status, "CHANNEL_ERROR", `${name}, ${sub} joined the other user's channel`);
        const progress = await joinChannel(client, topicOf(a.id));
        assert.equal(progress.status, "CHANNEL_ERROR", `${name}, ${sub} joined A's progress channel`);
        assert.equal(progress.error?.message, unauthorized(topicOf(a.id)));
        await client.removeAllChannels();
      }
    }
    // Refused by the policies, not by an error in them (Supabase logs those as RlsPolicyError).
    if (realtime.logs) {
      assert.deepEqual(realtime.logs.filter((l) => l.event === "rls_policy_error"), []);
    }
  } finally {
    await Promise.all(clients.map(closeClient));
    await dropPolicies();
    await realtime.close();
    await sql.end();
  }
});

Deno.test({
  ignore: !mintsTokens,
  name:
    "realtime roles: a token naming a role that does not exist is refused private channels as Unauthorized (the probe's error) and httpSend as 422 'RLS policy error', public ones are joined",
  ...noSanitize,
}, async () => {
  // set_config('role', …) fails with 22023 for a role that does not exist; Supabase counts that as
  // :rls_policy_error (handle_policies_result), logs RlsPolicyError and refuses the join as
  // Unauthorized. A public channel asks no policy, so it is joined.
  const realtime = await realtimeUnderTest();
  const role = `no_such_role_${suffix()}`;
  const token = await projectToken({ sub: crypto.randomUUID(), role });
  const client = clientWithToken(() => token, { ...realtime.options, joinErrorBackoffMs: 0 });
  try {
    const room = `room:${crypto.randomUUID()}`;
    const refused = await joinChannel(client, room);
    assert.equal(refused.status, "CHANNEL_ERROR");
    assert.equal(refused.error?.message, unauthorized(room));
    await client.removeChannel(refused.joined.channel);
    // Over REST: SingleBroadcast answers :rls_policy_error 422 "RLS policy error" (not the 403 of a
    // policy that says no); BatchBroadcast skips the message and answers 202.
    const rest = client.channel(room, { config: { private: true } });
    await assert.rejects(
      () => rest.httpSend("note", { n: 1 }),
      (e: Error) => e.message === "RLS policy error",
    );
    assert.equal(await rest.send({ type: "broadcast", event: "note", payload: { n: 2 } }), "ok");
    await client.removeChannel(rest);
    const open = await joinChannel(client, `lobby-${crypto.randomUUID()}`, { private: false });
    assert.equal(open.status, "SUBSCRIBED", open.error?.message);
    if (realtime.logs) {
      const errors = realtime.logs.filter((l) => l.event === "rls_policy_error");
      assert.ok(errors.length >= 1, "no rls_policy_error logged");
      assert.ok(errors.every((l) => l.code === "22023" && l.topic === room), JSON.stringify(errors));
    }
  } finally {
    await closeClient(client);
    await realtime.close();
  }
});

Deno.test({
  name:
    "realtime roles: a probe PostgreSQL cancels (57014, a statement timeout's code) is not :rls_policy_error: the join is refused as the database's failure, a send gets query_canceled, httpSend 422 'Query canceled', the REST batch 202, and the pool's next probe is clean; a check_violation a policy raises is :rls_policy_error",
  ...noSanitize,
}, async () => {
  // Supabase's handle_policies_result (Realtime.Tenants.Authorization) keeps :query_canceled apart
  // from :rls_policy_error: a statement timeout or a cancelled probe is the database's trouble, not
  // the user's permissions. The join is then refused with a reason that is not Unauthorized, the
  // BroadcastHandler answers an acknowledged send {error: "query_canceled"}, SingleBroadcast answers
  // 422 "Query canceled" and BatchBroadcast skips the message (202). The probe is held on an advisory
  // lock by a function of the test's policies, found waiting in pg_locks and cancelled. Only a
  // check_violation on realtime.messages itself is :missing_partition: one a policy raises is
  // :rls_policy_error, a join refused as Unauthorized.
  const sql = adminSql({ max: 2 });
  const realtime = await realtimeUnderTest();
  const a = await createTestUser();
  const sfx = suffix();
  const schema = `readsync_roles_test_${sfx}`;
  // One lock for the read probes, one for the write probes: a join realtime-js retries after its
  // refusal can never be the write probe a later step waits for and cancels.
  const readKey = Math.floor(Math.random() * 2 ** 29) * 2 + 1;
  const writeKey = readKey + 1;
  const readHeld = `held-read-${sfx}`;
  const writeHeld = `held-write-${sfx}`;
  const raises = `raises-${sfx}`;
  const client = clientWithToken(() => a.accessToken, { ...realtime.options, joinErrorBackoffMs: 0 });
  const holder = adminSql({ max: 1 });
  let socket: WebSocket | null = null;
  try {
    await sql.unsafe(`
      create schema ${schema};
      grant usage on schema ${schema} to authenticated;
      create function ${schema}.held(topic text, lock_key bigint) returns boolean language plpgsql volatile as $$
      begin
        if realtime.topic() = '${raises}' then
          raise exception 'a policy that checks something else' using errcode = 'check_violation';
        end if;
        if realtime.topic() = topic then perform pg_advisory_xact_lock(lock_key); end if;
        return true;
      end $$;
      grant execute on function ${schema}.held(text, bigint) to authenticated;
      create policy "${schema} receive" on realtime.messages for select to authenticated
        using (realtime.topic() in ('${readHeld}', '${writeHeld}', '${raises}') and ${schema}.held('${readHeld}', ${readKey}));
      create policy "${schema} send" on realtime.messages for insert to authenticated
        with check (realtime.topic() = '${writeHeld}' and ${schema}.held('${writeHeld}', ${writeKey}))`);
    await holder`select pg_advisory_lock(${readKey}), pg_advisory_lock(${writeKey})`;
    /** Cancels the one probe waiting for the test's lock `key`, once it waits. */
    const cancelHeldProbe = async (key: number) => {
      let pid: number | undefined;
      await waitFor("a probe waiting on the test's lock", async () => {
        const rows = await sql<{ pid: number }[]>`
          select pid from pg_locks
          where locktype = 'advisory' and objid = ${key} and not granted`;
        pid = rows[0]?.pid;
        return rows.length === 1;
      }, { timeoutMs: 20_000 });
      await sql`select pg_cancel_backend(${pid!})`;
    };

    // The join: refused, and not as Unauthorized (Supabase's releases word it "Realtime was unable to
    // connect to the project database" or "QueryCanceled: …"; the stand-in the former).
    const [refused] = await Promise.all([joinChannel(client, readHeld), cancelHeldProbe(readKey)]);
    assert.equal(refused.status, "CHANNEL_ERROR");
    assert.doesNotMatch(refused.error?.message ?? "", /^Unauthorized/);
    if (realtime.logs) {
      assert.equal(refused.error?.message, "Realtime was unable to connect to the project database");
    }
    await client.removeChannel(refused.joined.channel);

    // An acknowledged send whose write probe is cancelled (a bare socket: realtime-js's send() says
    // only "error").
    const env = testEnv();
    const origin = (realtime.options.realtimeOrigin ?? env.url).replace(/^http/, "ws");
    socket = new WebSocket(`${origin}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`);
    const frames: unknown[][] = [];
    socket.onmessage = (e) => typeof e.data === "string" && frames.push(JSON.parse(e.data));
    await new Promise((resolve, reject) => {
      socket!.onopen = resolve;
      socket!.onerror = () => reject(new Error("socket error"));
    });
    const replyTo = (ref: string) => frames.find((f) => f[1] === ref && f[3] === "phx_reply");
    socket.send(JSON.stringify(["1", "1", `realtime:${writeHeld}`, "phx_join", {
      config: { private: true, broadcast: { ack: true } },
      access_token: a.accessToken,
    }]));
    await waitFor("the join's reply", () => replyTo("1") !== undefined, { timeoutMs: 20_000 });
    assert.deepEqual((replyTo("1")![4] as { status: string }).status, "ok", JSON.stringify(replyTo("1")));
    socket.send(JSON.stringify(["1", "2", `realtime:${writeHeld}`, "broadcast", {
      type: "broadcast",
      event: "note",
      payload: { n: 1 },
    }]));
    await cancelHeldProbe(writeKey);
    await waitFor("the send's reply", () => replyTo("2") !== undefined, { timeoutMs: 20_000 });
    assert.deepEqual(replyTo("2")![4], { status: "error", response: { error: "query_canceled" } });

    // The REST routes: the single one answers 422, the batch skips the message.
    const rest = client.channel(writeHeld, { config: { private: true } });
    const [single] = await Promise.all([
      rest.httpSend("note", { n: 2 }).then(() => "sent", (e: Error) => e.message),
      cancelHeldProbe(writeKey),
    ]);
    assert.equal(single, "Query canceled");
    const [batch] = await Promise.all([
      rest.send({ type: "broadcast", event: "note", payload: { n: 3 } }),
      cancelHeldProbe(writeKey),
    ]);
    assert.equal(batch, "ok");
    await client.removeChannel(rest);

    // The lock released, the same pool's probes run as they should: joined, and no rls_policy_error.
    await holder`select pg_advisory_unlock(${readKey}), pg_advisory_unlock(${writeKey})`;
    const joined = await joinChannel(client, readHeld);
    assert.equal(joined.status, "SUBSCRIBED", joined.error?.message);
    if (realtime.logs) {
      assert.deepEqual(realtime.logs.filter((l) => l.event === "rls_policy_error"), []);
    }

    // A policy raising check_violation: not a missing partition, an :rls_policy_error.
    const raised = await joinChannel(client, raises);
    assert.equal(raised.status, "CHANNEL_ERROR");
    assert.equal(raised.error?.message, unauthorized(raises));
    if (realtime.logs) {
      const errors = realtime.logs.filter((l) => l.event === "rls_policy_error");
      assert.ok(errors.length >= 1 && errors.every((l) => l.code === "23514" && l.topic === raises));
    }
  } finally {
    socket?.close();
    await closeClient(client);
    await holder.end();
    await sql.unsafe(`
      drop policy if exists "${schema} receive" on realtime.messages;
      drop policy if exists "${schema} send" on realtime.messages;
      drop schema if exists ${schema} cascade`);
    await realtime.close();
    await sql.end();
  }
});
