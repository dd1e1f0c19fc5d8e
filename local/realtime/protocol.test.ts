// The endpoint's frames against realtime-js's own Serializer (the one supabase-js 2.119 uses for
// vsn 2.0.0): what the client encodes we decode, what we encode the client decodes.

import assert from "node:assert/strict";
import fc from "fast-check";
import { RealtimeClient } from "@supabase/supabase-js";
import { decodeFrame, encodeBroadcast, encodeText, ProtocolError, reply } from "./protocol.ts";

interface ClientSerializer {
  encode(msg: Record<string, unknown>, cb: (r: ArrayBuffer | string) => unknown): unknown;
  decode(raw: ArrayBuffer | string, cb: (m: Record<string, unknown>) => unknown): unknown;
}

const serializer = new RealtimeClient("ws://127.0.0.1:1/realtime/v1", { params: { apikey: "k" } })
  .serializer as unknown as ClientSerializer;

function clientEncode(msg: Record<string, unknown>): ArrayBuffer | string {
  let out: ArrayBuffer | string = "";
  serializer.encode(msg, (r) => (out = r));
  return out;
}

function clientDecode(raw: ArrayBuffer | string): Record<string, unknown> {
  let out: Record<string, unknown> = {};
  serializer.decode(raw, (m) => (out = m));
  return out;
}

const asArrayBuffer = (u: Uint8Array): ArrayBuffer =>
  u.buffer.slice(u.byteOffset, u.byteOffset + u.byteLength) as ArrayBuffer;

Deno.test("protocol: a client broadcast push (binary kind 3, JSON payload) decodes", () => {
  const raw = clientEncode({
    join_ref: "4",
    ref: "9",
    topic: "realtime:progress:ü",
    event: "broadcast",
    payload: {
      type: "broadcast",
      event: "ÉVÉNEMENT",
      payload: { a: [1, "二"] },
      persist: true,
      other: "dropped",
    },
  });
  assert.ok(raw instanceof ArrayBuffer);
  const message = decodeFrame(raw, "2.0.0");
  assert.deepEqual(message, {
    joinRef: "4",
    ref: "9",
    topic: "realtime:progress:ü",
    event: "broadcast",
    payload: { type: "broadcast", event: "ÉVÉNEMENT", payload: { a: [1, "二"] }, meta: { persist: true } },
  });
});

Deno.test("protocol: a client broadcast push with a binary payload keeps the bytes", () => {
  const bytes = new Uint8Array([0, 255, 7]);
  const raw = clientEncode({
    join_ref: "1",
    ref: "2",
    topic: "realtime:t",
    event: "broadcast",
    payload: { type: "broadcast", event: "bin", payload: asArrayBuffer(bytes) },
  });
  const message = decodeFrame(raw, "2.0.0");
  assert.deepEqual((message.payload as { payload: Uint8Array }).payload, bytes);
});

Deno.test("protocol: control frames are JSON arrays (vsn 2.0.0) or objects (vsn 1.0.0)", () => {
  const join = clientEncode({
    join_ref: "1",
    ref: "1",
    topic: "realtime:x",
    event: "phx_join",
    payload: { config: {} },
  });
  assert.equal(typeof join, "string");
  assert.deepEqual(decodeFrame(join, "2.0.0"), {
    joinRef: "1",
    ref: "1",
    topic: "realtime:x",
    event: "phx_join",
    payload: { config: {} },
  });
  const v1 = JSON.stringify({ topic: "phoenix", event: "heartbeat", payload: {}, ref: "5", join_ref: null });
  assert.deepEqual(decodeFrame(v1, "1.0.0"), {
    joinRef: null,
    ref: "5",
    topic: "phoenix",
    event: "heartbeat",
    payload: {},
  });

  const r = reply("1", "1", "realtime:x", "error", { reason: "Unauthorized: no" });
  assert.deepEqual(clientDecode(encodeText(r, "2.0.0")), {
    join_ref: "1",
    ref: "1",
    topic: "realtime:x",
    event: "phx_reply",
    payload: { status: "error", response: { reason: "Unauthorized: no" } },
  });
  assert.deepEqual(JSON.parse(encodeText(r, "1.0.0")), {
    join_ref: "1",
    ref: "1",
    topic: "realtime:x",
    event: "phx_reply",
    payload: { status: "error", response: { reason: "Unauthorized: no" } },
  });
});

Deno.test("protocol: server broadcasts decode in realtime-js to {type, event, payload, meta}", () => {
  const message = {
    topic: "realtime:progress:1",
    event: "UPDATE",
    payload: { record: { x: "ø" }, id: "m1" },
    meta: { id: "m1" },
  };
  const binary = encodeBroadcast(message, "2.0.0", "binary");
  assert.ok(binary instanceof Uint8Array && binary[0] === 4);
  const expected = {
    join_ref: null,
    ref: null,
    topic: "realtime:progress:1",
    event: "broadcast",
    payload: { type: "broadcast", event: "UPDATE", payload: message.payload, meta: { id: "m1" } },
  };
  assert.deepEqual(clientDecode(asArrayBuffer(binary as Uint8Array)), expected);
  const json = encodeBroadcast(message, "2.0.0", "json");
  assert.equal(typeof json, "string");
  assert.deepEqual(clientDecode(json as string), expected);
  // vsn 1.0.0 clients parse JSON objects.
  assert.deepEqual(JSON.parse(encodeBroadcast(message, "1.0.0") as string), expected);
  // Header fields longer than a byte can say fall back to JSON.
  const long = encodeBroadcast({ ...message, event: "e".repeat(300) }, "2.0.0", "binary");
  assert.equal(typeof long, "string");
});

Deno.test("protocol: any topic, event and JSON payload round-trips through realtime-js decode", () => {
  fc.assert(
    fc.property(
      fc.string({ minLength: 1, maxLength: 40 }),
      fc.string({ maxLength: 40 }),
      fc.jsonValue(),
      fc.option(fc.uuid(), { nil: undefined }),
      (topic, event, payload, id) => {
        const message = { topic: `realtime:${topic}`, event, payload, ...(id ? { meta: { id } } : {}) };
        const frame = encodeBroadcast(message, "2.0.0", "binary");
        const raw = typeof frame === "string" ? frame : asArrayBuffer(frame);
        const decoded = clientDecode(raw);
        const body = decoded.payload as Record<string, unknown>;
        assert.equal(decoded.topic, message.topic);
        assert.equal(body.event, event);
        // JSON normalises -0 to 0; compare through JSON.
        assert.deepEqual(body.payload, JSON.parse(JSON.stringify(payload)));
        if (id) assert.deepEqual(body.meta, { id });
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("protocol: malformed frames are refused with ProtocolError", () => {
  const bad: (string | Uint8Array)[] = [
    "not json",
    "42",
    JSON.stringify([null, null, 5, "e", {}]),
    new Uint8Array([]),
    new Uint8Array([9, 0, 0]),
    new Uint8Array([3, 0, 0, 200, 0, 0, 1]), // topic length beyond the frame
    new Uint8Array([3, 0, 0, 1, 0, 0, 7, 0x61]), // unknown payload encoding
    new Uint8Array([0, 0, 0, 3]),
  ];
  for (const frame of bad) assert.throws(() => decodeFrame(frame, "2.0.0"), ProtocolError, String(frame));
});
