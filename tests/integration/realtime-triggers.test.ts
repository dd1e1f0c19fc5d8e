// Migration 012's broadcast trigger, end to end: every INSERT/UPDATE/DELETE on reading_progress
// reaches a subscribed supabase-js client as one broadcast, in commit order, with the payload
// realtime.broadcast_changes builds, framed as Supabase frames it (binary for vsn 2.0.0, JSON for
// vsn 1.0.0).

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { adminSql, createTestUser, testEnv } from "../support/env.ts";
import {
  asUser,
  clientWithToken,
  closeClient,
  deleteProgress,
  joinChannel,
  noSanitize,
  ownEndpoint,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;

type Row = Record<string, unknown>;

Deno.test({
  name: "realtime triggers: INSERT, UPDATE and DELETE arrive with the right payload",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const client = clientWithToken(() => a.accessToken);
  try {
    const { joined, status } = await joinChannel(client, topicOf(a.id));
    assert.equal(status, "SUBSCRIBED");
    const t0 = Date.now() - 60_000;
    const at = (ms: number) => new Date(t0 + ms).toISOString();

    await writeProgress(sql, a.id, {
      series_id: "vinland",
      chapter: 1,
      page: 2,
      percentage: 0.01,
      device_id: "tablet",
      updated_at: at(0),
    });
    await writeProgress(sql, a.id, {
      series_id: "vinland",
      chapter: 2,
      page: 9,
      percentage: 0.02,
      device_id: "phone",
      updated_at: at(1000),
    });
    await deleteProgress(sql, a.id, "vinland");
    await waitFor("three broadcasts", () => joined.received.length === 3);

    const [insert, update, del] = joined.received;
    assert.deepEqual([insert.event, update.event, del.event], ["INSERT", "UPDATE", "DELETE"]);
    for (const message of joined.received) {
      assert.equal(message.payload.operation, message.event);
      assert.equal(message.payload.schema, "public");
      assert.equal(message.payload.table, "reading_progress");
      // Supabase adds the realtime.messages id to the payload and to meta.
      assert.match(String(message.payload.id), /^[0-9a-f-]{36}$/);
      assert.deepEqual(message.meta, { id: message.payload.id });
    }
    const record = insert.payload.record as Row;
    assert.equal(insert.payload.old_record, null);
    assert.equal(record.user_id, a.id);
    assert.equal(record.series_id, "vinland");
    assert.equal(record.chapter, 1);
    assert.equal(record.page, 2);
    assert.equal(record.percentage, 0.01);
    assert.equal(record.cleared, false);
    assert.equal(record.device_id, "tablet");
    assert.equal(new Date(record.updated_at as string).toISOString(), at(0));

    assert.equal((update.payload.old_record as Row).chapter, 1);
    assert.equal((update.payload.record as Row).chapter, 2);
    assert.equal((update.payload.record as Row).device_id, "phone");
    assert.equal(new Date((update.payload.record as Row).updated_at as string).toISOString(), at(1000));

    assert.equal(del.payload.record, null);
    assert.equal((del.payload.old_record as Row).chapter, 2);
    assert.equal((del.payload.old_record as Row).series_id, "vinland");

    // The payload is exactly what the database stored in realtime.messages.
    const stored = await sql<{ payload: Row; event: string; private: boolean }[]>`
      select payload, event, private from realtime.messages where topic = ${
      topicOf(a.id)
    } order by inserted_at`;
    assert.equal(stored.length, 3);
    for (const [i, row] of stored.entries()) {
      assert.equal(row.private, true);
      assert.equal(row.event, joined.received[i].event);
      assert.deepEqual({ ...row.payload, id: joined.received[i].payload.id }, joined.received[i].payload);
    }
  } finally {
    await closeClient(client);
    await sql.end();
  }
});

Deno.test({ name: "realtime triggers: a rolled-back write broadcasts nothing", ...noSanitize }, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const client = clientWithToken(() => a.accessToken);
  try {
    const { joined } = await joinChannel(client, topicOf(a.id));
    await asUser(sql, a.id, async (tx) => {
      await tx`insert into reading_progress (user_id, series_id, device_id) values (${a.id}, 'ghost', 'phone')`;
      throw new Error("rollback");
    }).catch(() => {});
    await writeProgress(sql, a.id, { series_id: "real", device_id: "phone" });
    // Delivery follows commit order: had the rolled-back insert broadcast anything, it would
    // have arrived before the committed write.
    await waitFor("the committed write", () => joined.received.length >= 1);
    assert.deepEqual(joined.received.map((m) => (m.payload.record as Row).series_id), ["real"]);
  } finally {
    await closeClient(client);
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime triggers: 200 writes from 4 concurrent writers arrive once each, each writer's in commit order",
  ...noSanitize,
}, async () => {
  const sql = adminSql({ max: 8 });
  const a = await createTestUser();
  const client = clientWithToken(() => a.accessToken);
  try {
    const { joined } = await joinChannel(client, topicOf(a.id));
    const t0 = Date.now() - 120_000;
    await Promise.all([0, 1, 2, 3].map(async (w) => {
      for (let i = 0; i < 50; i++) {
        await writeProgress(sql, a.id, {
          series_id: `s${w}`,
          chapter: i,
          device_id: `writer-${w}`,
          updated_at: new Date(t0 + i * 10 + w).toISOString(),
        });
      }
    }));
    await waitFor("200 broadcasts", () => joined.received.length === 200, { timeoutMs: 20_000 });
    // Each writer commits its 50 writes one after the other, so per series the chapters must come
    // in order 0..49, each exactly once. (Across writers, xids are not commit order: not compared.)
    for (const w of [0, 1, 2, 3]) {
      const chapters = joined.received.filter((m) => (m.payload.record as Row).series_id === `s${w}`)
        .map((m) => (m.payload.record as Row).chapter);
      assert.deepEqual(chapters, Array.from({ length: 50 }, (_, i) => i));
    }
  } finally {
    await closeClient(client);
    await sql.end();
  }
});

Deno.test({
  name: "realtime triggers: vsn 1.0.0 clients, JSON text and binary framed delivery decode the same payload",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  // A second endpoint instance that frames database broadcasts as binary user-broadcast frames (the
  // stack's own sends JSON text, as Supabase's database broadcasts are).
  const binaryServer = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    frameForm: "binary",
  });
  const v1 = clientWithToken(() => a.accessToken, { vsn: "1.0.0" });
  const v2json = clientWithToken(() => a.accessToken);
  const v2binary = clientWithToken(() => a.accessToken, { url: binaryServer.url });
  try {
    const joins = await Promise.all([v1, v2json, v2binary].map((c) => joinChannel(c, topicOf(a.id))));
    assert.deepEqual(joins.map((j) => j.status), ["SUBSCRIBED", "SUBSCRIBED", "SUBSCRIBED"]);
    await writeProgress(sql, a.id, { series_id: "mushishi", chapter: 7, device_id: "e-reader" });
    await waitFor("all three clients", () => joins.every((j) => j.joined.received.length === 1));
    const [first, ...others] = joins.map((j) => j.joined.received[0]);
    for (const other of others) assert.deepEqual(other, first);
    assert.equal((first.payload.record as Row).chapter, 7);
  } finally {
    await Promise.all([v1, v2json, v2binary].map(closeClient));
    await binaryServer.close();
    await sql.end();
  }
});
