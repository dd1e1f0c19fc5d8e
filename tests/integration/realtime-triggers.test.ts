// Migration 012's broadcast trigger, end to end: every INSERT/UPDATE/DELETE on reading_progress
// reaches a subscribed supabase-js client as one broadcast, in commit order, with the payload
// realtime.broadcast_changes builds, framed as Supabase frames it (binary for vsn 2.0.0, JSON for
// vsn 1.0.0; the message id in `meta`, and in the payload where realtime.send stored it).

import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { adminSql, createTestUser, localRealtime, testEnv } from "../support/env.ts";
import {
  asUser,
  clientWithToken,
  closeClient,
  deleteProgress,
  joinChannel,
  type JoinedChannel,
  noSanitize,
  ownEndpoint,
  type Sql,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

const topicOf = (userId: string) => `progress:${userId}`;

type Row = Record<string, unknown>;

/**
 * A new reader, the admin connection (`sqlOptions`), and a client of theirs joined to their topic
 * (`status`: how the join ended), handed to `body`; the client and the connection closed as it ends.
 */
async function withJoinedReader(
  body: (reader: {
    sql: Sql;
    a: Awaited<ReturnType<typeof createTestUser>>;
    joined: JoinedChannel;
    status: string;
  }) => Promise<void>,
  sqlOptions: Parameters<typeof adminSql>[0] = {},
): Promise<void> {
  const sql = adminSql(sqlOptions);
  const a = await createTestUser();
  const client = clientWithToken(() => a.accessToken);
  try {
    const { joined, status } = await joinChannel(client, topicOf(a.id));
    await body({ sql, a, joined, status });
  } finally {
    await closeClient(client);
    await sql.end();
  }
}

Deno.test({
  name: "realtime triggers: INSERT, UPDATE and DELETE arrive with the right payload",
  ...noSanitize,
}, async () => {
  await withJoinedReader(async ({ sql, a, joined, status }) => {
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
      // The realtime.messages id arrives as meta.id and, stored there by realtime.send (Realtime's
      // tenant migrations: jsonb_set(payload, '{id}', …) unless it has one), as the payload's id.
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
    const stored = await sql<{ id: string; payload: Row; event: string; private: boolean }[]>`
      select id, payload, event, private from realtime.messages where topic = ${
      topicOf(a.id)
    } order by inserted_at`;
    assert.equal(stored.length, 3);
    for (const [i, row] of stored.entries()) {
      assert.equal(row.private, true);
      assert.equal(row.event, joined.received[i].event);
      assert.equal(row.payload.id, row.id);
      assert.deepEqual(joined.received[i].meta, { id: row.id });
      assert.deepEqual(joined.received[i].payload, row.payload);
    }
  });
});

Deno.test({ name: "realtime triggers: a rolled-back write broadcasts nothing", ...noSanitize }, async () => {
  await withJoinedReader(async ({ sql, a, joined }) => {
    await asUser(sql, a.id, async (tx) => {
      await tx`insert into reading_progress (user_id, series_id, device_id) values (${a.id}, 'ghost', 'phone')`;
      throw new Error("rollback");
    }).catch(() => {});
    await writeProgress(sql, a.id, { series_id: "real", device_id: "phone" });
    // Delivery follows commit order: had the rolled-back insert broadcast anything, it would
    // have arrived before the committed write.
    await waitFor("the committed write", () => joined.received.length >= 1);
    assert.deepEqual(joined.received.map((m) => (m.payload.record as Row).series_id), ["real"]);
  });
});

Deno.test({
  name:
    "realtime triggers: a Data API .update({ cleared: true }) on a row with a position lands and is broadcast as the reset",
  ...noSanitize,
}, async () => {
  // supabase-js .update({ cleared: true }).eq("series_id", "berserk") is a PostgREST PATCH: its UPDATE
  // sets the body's columns only, in the signed-in user's transaction (role + claims). It was refused
  // by the check reading_progress_cleared_is_zero (23514, HTTP 400): the position stayed under cleared.
  await withJoinedReader(async ({ sql, a, joined }) => {
    await writeProgress(sql, a.id, {
      series_id: "berserk",
      chapter: 12,
      page: 30,
      percentage: 0.12,
      device_id: "tablet",
      updated_at: new Date(Date.now() - 3_600_000).toISOString(),
    });
    await waitFor("the position's broadcast", () => joined.received.length === 1);

    const patched = await asUser(
      sql,
      a.id,
      (tx) =>
        tx`update public.reading_progress set "cleared" = pgrst_body."cleared"
           from (select ${JSON.stringify({ cleared: true })}::text::json as json_data) pgrst_payload,
                lateral (select "cleared" from json_to_record(pgrst_payload.json_data) as _("cleared" boolean))
                  pgrst_body
          where public.reading_progress.series_id = ${"berserk"}
          returning 1`,
    );
    assert.equal(patched.length, 1, "the PATCH updated the row (PostgREST answers 2xx)");

    await waitFor("the reset's broadcast", () => joined.received.length === 2);
    const reset = joined.received[1];
    assert.equal(reset.event, "UPDATE");
    const record = reset.payload.record as Row;
    assert.deepEqual(
      [record.series_id, record.chapter, record.page, record.percentage, record.cleared, record.device_id],
      ["berserk", 0, 0, 0, true, "tablet"],
    );
    const old = reset.payload.old_record as Row;
    assert.deepEqual([old.chapter, old.page, old.percentage, old.cleared], [12, 30, 0.12, false]);
    const [stored] = await sql<Row[]>`select chapter, page, percentage, cleared from public.reading_progress
      where user_id = ${a.id} and series_id = 'berserk'`;
    assert.deepEqual(stored, { chapter: 0, page: 0, percentage: 0, cleared: true });
  });
});

Deno.test({
  name:
    "realtime triggers: 200 writes from 4 concurrent writers arrive once each, each writer's in commit order",
  ...noSanitize,
}, async () => {
  await withJoinedReader(async ({ sql, a, joined }) => {
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
  }, { max: 8 });
});

/**
 * A WebSocket for supabase-js's `realtime.transport` that keeps every frame the server sent, as it
 * came off the wire (a string for a text frame, an ArrayBuffer for a binary one), before realtime-js
 * decodes it. The socket and the client are the real ones; only a listener is added.
 */
function recordingSocket(frames: (string | ArrayBuffer)[]): typeof WebSocket {
  return class RecordingWebSocket extends WebSocket {
    constructor(url: string | URL, protocols?: ConstructorParameters<typeof WebSocket>[1]) {
      super(url, protocols);
      this.addEventListener("message", (e) => frames.push(e.data));
    }
  };
}

/** The fields of a binary user-broadcast frame (kind 4): [4, topicLen, eventLen, metaLen, encoding] … */
function decodeUserBroadcast(frame: ArrayBuffer) {
  const bytes = new Uint8Array(frame);
  const text = (from: number, length: number) =>
    new TextDecoder().decode(bytes.subarray(from, from + length));
  const [kind, topicLength, eventLength, metaLength, encoding] = bytes;
  let offset = 5;
  const topic = text(offset, topicLength);
  offset += topicLength;
  const event = text(offset, eventLength);
  offset += eventLength;
  const meta = text(offset, metaLength);
  offset += metaLength;
  return { kind, encoding, topic, event, meta, payload: text(offset, bytes.length - offset) };
}

Deno.test({
  // The frame form is the stand-in's: a real stack's Realtime sends what its release sends (older
  // ones JSON text, the id added to the payload too), so this runs on the local endpoint only.
  name:
    "realtime triggers: database broadcasts are framed as Realtime v2.130.0 frames them (binary user broadcast, id in meta, payload as stored)",
  ...noSanitize,
  ignore: !localRealtime,
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  const v2Frames: (string | ArrayBuffer)[] = [];
  const v1Frames: (string | ArrayBuffer)[] = [];
  const v2 = createClient(env.url, env.anonKey, {
    accessToken: () => Promise.resolve(a.accessToken),
    realtime: { transport: recordingSocket(v2Frames) },
  });
  const v1 = createClient(env.url, env.anonKey, {
    accessToken: () => Promise.resolve(a.accessToken),
    realtime: { vsn: "1.0.0", transport: recordingSocket(v1Frames) },
  });
  try {
    const joins = await Promise.all([v2, v1].map((c) => joinChannel(c, topicOf(a.id))));
    assert.deepEqual(joins.map((j) => j.status), ["SUBSCRIBED", "SUBSCRIBED"]);
    // Two messages: the trigger's (realtime.broadcast_changes -> realtime.send, which stores the
    // message id in the payload too) and one inserted as is, whose payload has no id.
    await writeProgress(sql, a.id, { series_id: "frieren", chapter: 3, device_id: "phone" });
    await waitFor("the trigger's broadcast", () => joins.every((j) => j.joined.received.length === 1));
    await sql`insert into realtime.messages (topic, extension, event, payload, private)
              values (${topicOf(a.id)}, 'broadcast', 'plain', ${sql.json({ n: 1 })}, true)`;
    await waitFor("both broadcasts", () => joins.every((j) => j.joined.received.length === 2));
    const stored = await sql<{ id: string; event: string; payload: Row }[]>`
      select id, event, payload from realtime.messages where topic = ${topicOf(a.id)} order by inserted_at`;
    assert.deepEqual(stored.map((m) => m.event), ["INSERT", "plain"]);
    assert.equal(stored[0].payload.id, stored[0].id, "realtime.send put the id into the stored payload");
    assert.deepEqual(stored[1].payload, { n: 1 });

    // vsn 2.0.0: binary frames, kind 4 (user broadcast), JSON-encoded payload as stored (nothing
    // added), metadata {"id"}; no JSON text broadcast.
    const binary = v2Frames.filter((f): f is ArrayBuffer => typeof f !== "string");
    assert.equal(
      v2Frames.filter((f) => typeof f === "string" && JSON.parse(f)[3] === "broadcast").length,
      0,
      "no JSON text broadcast frame",
    );
    assert.equal(binary.length, 2, "two binary frames");
    for (const [i, row] of stored.entries()) {
      const frame = decodeUserBroadcast(binary[i]);
      assert.equal(frame.kind, 4);
      assert.equal(frame.encoding, 1);
      assert.equal(frame.topic, `realtime:${topicOf(a.id)}`);
      assert.equal(frame.event, row.event);
      assert.deepEqual(JSON.parse(frame.meta), { id: row.id });
      assert.deepEqual(JSON.parse(frame.payload), row.payload);
    }

    // vsn 1.0.0: Phoenix's V1 JSON text object, {type, event, payload as stored, meta {id}}.
    const v1Broadcasts = v1Frames.filter((f) => typeof f === "string" && JSON.parse(f).event === "broadcast")
      .map((f) => JSON.parse(f as string).payload);
    assert.deepEqual(
      v1Broadcasts,
      stored.map((row) => ({
        type: "broadcast",
        event: row.event,
        payload: row.payload,
        meta: { id: row.id },
      })),
    );

    // What supabase-js hands the listener (and RealtimeService reads): meta.id; the payload as stored.
    for (const { joined } of joins) {
      assert.deepEqual(
        joined.received,
        stored.map((row) => ({ event: row.event, payload: row.payload, meta: { id: row.id } })),
      );
    }
  } finally {
    await Promise.all([v2, v1].map(closeClient));
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime triggers: vsn 1.0.0 clients, binary and older JSON text framed delivery decode the same message",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  // A second endpoint instance that frames database broadcasts as older Realtime releases did (JSON
  // text, the id in meta and in the payload); the stack's own sends binary user-broadcast frames.
  const jsonServer = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    frameForm: "json",
  });
  const v1 = clientWithToken(() => a.accessToken, { vsn: "1.0.0" });
  const v2binary = clientWithToken(() => a.accessToken);
  const v2json = clientWithToken(() => a.accessToken, { url: jsonServer.url });
  try {
    const joins = await Promise.all([v1, v2binary, v2json].map((c) => joinChannel(c, topicOf(a.id))));
    assert.deepEqual(joins.map((j) => j.status), ["SUBSCRIBED", "SUBSCRIBED", "SUBSCRIBED"]);
    await writeProgress(sql, a.id, { series_id: "mushishi", chapter: 7, device_id: "e-reader" });
    await waitFor("all three clients", () => joins.every((j) => j.joined.received.length === 1));
    const [first, ...others] = joins.map((j) => j.joined.received[0]);
    for (const other of others) assert.deepEqual(other, first);
    assert.equal((first.payload.record as Row).chapter, 7);
  } finally {
    await Promise.all([v1, v2binary, v2json].map(closeClient));
    await jsonServer.close();
    await sql.end();
  }
});
