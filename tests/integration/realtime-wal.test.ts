// The local Realtime endpoint reads realtime.messages from the WAL (local/realtime/wal.ts): its
// replication slot is temporary (gone with the endpoint), a lost replication connection is
// re-established by itself, and a message arrives exactly as it was committed, even one whose
// payload the table stores out of line (TOAST).

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { adminSql, createTestUser, localRealtime, testEnv } from "../support/env.ts";
import {
  clientWithToken,
  closeClient,
  joinChannel,
  noSanitize,
  ownEndpoint,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;

type Sql = ReturnType<typeof adminSql>;

/** The endpoints' replication slots (wal.ts names them readsync_realtime_<uuid>) and their walsenders. */
async function slots(sql: Sql): Promise<Map<string, { temporary: boolean; pid: number | null }>> {
  const rows = await sql<{ slot_name: string; temporary: boolean; active_pid: number | null }[]>`
    select slot_name, temporary, active_pid from pg_catalog.pg_replication_slots
    where slot_name like 'readsync\\_realtime\\_%'`;
  return new Map(rows.map((r) => [r.slot_name, { temporary: r.temporary, pid: r.active_pid }]));
}

Deno.test({
  name: "realtime WAL: the endpoint's replication slot is temporary and goes away with the endpoint",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  const before = await slots(sql);
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
  let closed = false;
  try {
    const during = await slots(sql);
    const own = [...during.keys()].filter((name) => !before.has(name));
    assert.equal(own.length, 1, "one slot per endpoint");
    assert.equal(during.get(own[0])!.temporary, true);
    assert.notEqual(during.get(own[0])!.pid, null, "streaming");
    await server.close();
    closed = true;
    // The server drops a temporary slot when its session ends, just after the socket closes.
    await waitFor("the slot to be dropped", async () => !(await slots(sql)).has(own[0]));
  } finally {
    if (!closed) await server.close();
    await sql.end();
  }
});

Deno.test({
  name: "realtime WAL: a terminated replication connection is re-established and later commits arrive",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  const before = await slots(sql);
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
  const client = clientWithToken(() => a.accessToken, { url: server.url });
  try {
    const { joined, status } = await joinChannel(client, topicOf(a.id));
    assert.equal(status, "SUBSCRIBED");
    await writeProgress(sql, a.id, { series_id: "before", device_id: "phone" });
    await waitFor("the first broadcast", () => joined.received.length === 1);

    const [first] = [...(await slots(sql)).keys()].filter((name) => !before.has(name));
    await sql`select pg_terminate_backend(active_pid) from pg_catalog.pg_replication_slots
              where slot_name = ${first}`;
    let second: string | undefined;
    await waitFor("a new streaming slot", async () => {
      const now = await slots(sql);
      second = [...now.keys()].find((name) => !before.has(name) && name !== first && now.get(name)!.pid);
      return second !== undefined;
    });
    assert.equal((await slots(sql)).has(first), false, "the old slot went with its session");
    assert.equal(server.endpoint.stats().connections, 1, "the sockets never noticed");

    await writeProgress(sql, a.id, { series_id: "after", device_id: "phone" });
    await waitFor("the broadcast after the reconnect", () => joined.received.length === 2);
    assert.deepEqual(
      joined.received.map((m) => (m.payload.record as { series_id: string }).series_id),
      ["before", "after"],
    );
  } finally {
    await closeClient(client);
    await server.close();
    await sql.end();
  }
});

Deno.test({
  name: "realtime WAL: a message arrives as committed: 200 kB TOASTed payload, unicode, its id in meta",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const client = clientWithToken(() => a.accessToken);
  try {
    const { joined, status } = await joinChannel(client, topicOf(a.id));
    assert.equal(status, "SUBSCRIBED");
    // Random text does not compress, so the jsonb value is stored out of line.
    const noise = Array.from({ length: 200 }, () => crypto.randomUUID().repeat(28)).join("");
    const payload = {
      text: `‘quotes’ “and” émojis 📚 \\ "escapes"\n`,
      noise,
      nested: { n: [1, 2.5, null, true] },
    };
    const [{ id, storage }] = await sql<{ id: string; storage: number }[]>`
      insert into realtime.messages (topic, extension, event, payload, private)
      values (${topicOf(a.id)}, 'broadcast', 'custom', ${sql.json(payload)}, true)
      returning id, pg_column_size(payload) as storage`;
    assert.ok(storage > 100_000, "stored uncompressed, out of line");
    await waitFor("the message", () => joined.received.length === 1);
    const [message] = joined.received;
    assert.equal(message.event, "custom");
    // The payload as stored: Realtime v2.130.0 (what `supabase start` runs) adds nothing to it; older
    // releases added the id to a payload without one, so only there is it accepted.
    const expected = !localRealtime && "id" in message.payload ? { ...payload, id } : payload;
    assert.deepEqual(message.payload, expected);
    assert.deepEqual(message.meta, { id });
  } finally {
    await closeClient(client);
    await sql.end();
  }
});

Deno.test({
  name: "realtime WAL: a row without event or payload is dropped, as Supabase's replication handler drops it",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const client = clientWithToken(() => a.accessToken);
  try {
    const { joined, status } = await joinChannel(client, topicOf(a.id));
    assert.equal(status, "SUBSCRIBED");
    await sql`
      insert into realtime.messages (topic, extension, event, payload, private)
      values (${topicOf(a.id)}, 'broadcast', null, '{"n": 1}', true)`;
    await sql`
      insert into realtime.messages (topic, extension, event, payload, private)
      values (${topicOf(a.id)}, 'broadcast', 'custom', null, true)`;
    await sql`
      insert into realtime.messages (topic, extension, event, payload, private)
      values (${topicOf(a.id)}, 'broadcast', 'custom', '{"n": 3}', true)`;
    // WAL order: once the third has arrived, the first two would have too (no wait beyond it).
    await waitFor("the complete message", () => joined.received.length >= 1);
    assert.deepEqual(joined.received.map((m) => (m.payload as { n?: number }).n), [3]);
  } finally {
    await closeClient(client);
    await sql.end();
  }
});

Deno.test({
  name: "realtime WAL: a role that may not replicate gets one clear error at start, and nothing is left open",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  try {
    // What SUPABASE_DB_URL could name: a login role without REPLICATION (the local stack trusts logins).
    await sql`do $$ begin
      if not exists (select 1 from pg_roles where rolname = 'readsync_test_no_replication') then
        create role readsync_test_no_replication login noreplication;
      end if;
    end $$`;
    const url = new URL(env.dbUrl);
    url.username = "readsync_test_no_replication";
    url.password = "";
    await assert.rejects(
      startRealtimeServer({ dbUrl: url.toString(), jwtSecret: env.jwtSecret! }),
      (error: Error) => {
        assert.match(
          error.message,
          /^local Realtime: cannot read realtime\.messages from the WAL by logical replication/,
        );
        assert.match(error.message, /REPLICATION/);
        return true;
      },
    );
    // Backends go away just after their sockets close.
    await waitFor("no connection of the failed endpoint left open", async () => {
      const [{ open }] = await sql<{ open: number }[]>`
        select count(*)::int as open from pg_catalog.pg_stat_activity
        where usename = 'readsync_test_no_replication'`;
      return open === 0;
    });
  } finally {
    await sql.end();
  }
});
