// Phoenix channel frames as the Supabase Realtime server speaks them to realtime-js.
//
// vsn 2.0.0 (realtime-js default):
//   text   [join_ref, ref, topic, event, payload]                       both directions
//   binary kind 0 "push"                client -> server  (phoenix.js binary push)
//          kind 3 "user broadcast push" client -> server  (realtime-js channel.send broadcast)
//          kind 4 "user broadcast"      server -> client  (decoded by realtime-js Serializer)
// vsn 1.0.0:
//   text   {"join_ref","ref","topic","event","payload"}                 both directions
//
// Binary layouts (all lengths are uint8 byte counts of UTF-8 strings):
//   kind 0: [0, joinRefLen, refLen, topicLen, eventLen] joinRef ref topic event <payload bytes>
//   kind 3: [3, joinRefLen, refLen, topicLen, userEventLen, metaLen, encoding]
//           joinRef ref topic userEvent meta <payload bytes>      encoding: 0 binary, 1 JSON
//   kind 4: [4, topicLen, userEventLen, metaLen, encoding] topic userEvent meta <payload bytes>

export type Vsn = "1.0.0" | "2.0.0";
export const SUPPORTED_VSNS: readonly Vsn[] = ["1.0.0", "2.0.0"];

export interface PhxMessage {
  joinRef: string | null;
  ref: string | null;
  topic: string;
  event: string;
  payload: unknown;
}

/** What a client broadcast looks like once decoded, whatever frame carried it. */
export interface BroadcastPush {
  type: "broadcast";
  event: string;
  /** JSON value, or raw bytes when the client sent a binary payload. */
  payload: unknown;
  /** Metadata keys realtime-js puts in the frame header (e.g. `persist`). */
  meta?: Record<string, unknown>;
}

const KIND_PUSH = 0;
const KIND_USER_BROADCAST_PUSH = 3;
const KIND_USER_BROADCAST = 4;
const ENCODING_BINARY = 0;
const ENCODING_JSON = 1;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

export class ProtocolError extends Error {}

function str(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  return typeof value === "string" ? value : String(value);
}

/** Decodes one client frame. Throws ProtocolError on anything malformed. */
export function decodeFrame(data: string | ArrayBuffer | Uint8Array, vsn: Vsn): PhxMessage {
  if (typeof data === "string") return decodeText(data, vsn);
  const bytes = data instanceof Uint8Array ? data : new Uint8Array(data);
  return decodeBinary(bytes);
}

function decodeText(text: string, vsn: Vsn): PhxMessage {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new ProtocolError("frame is not JSON");
  }
  // Accept both shapes whatever the negotiated vsn: a client that got the vsn wrong still works.
  if (Array.isArray(parsed)) {
    const [joinRef, ref, topic, event, payload] = parsed;
    if (typeof topic !== "string" || typeof event !== "string") {
      throw new ProtocolError("topic/event missing");
    }
    return { joinRef: str(joinRef), ref: str(ref), topic, event, payload: payload ?? {} };
  }
  if (parsed && typeof parsed === "object") {
    const m = parsed as Record<string, unknown>;
    if (typeof m.topic !== "string" || typeof m.event !== "string") {
      throw new ProtocolError("topic/event missing");
    }
    return {
      joinRef: str(m.join_ref),
      ref: str(m.ref),
      topic: m.topic,
      event: m.event,
      payload: m.payload ?? {},
    };
  }
  void vsn;
  throw new ProtocolError("frame is neither an array nor an object");
}

function decodeBinary(bytes: Uint8Array): PhxMessage {
  if (bytes.byteLength < 1) throw new ProtocolError("empty binary frame");
  const kind = bytes[0];
  // Both client frame kinds are: kind, N one-byte field lengths, (extra header bytes), the N fields as
  // UTF-8 in order, then the payload bytes.
  const readFields = (count: number, headerLength: number): { fields: string[]; rest: Uint8Array } => {
    const fields: string[] = [];
    let offset = headerLength;
    for (let i = 0; i < count; i++) {
      const length = bytes[1 + i];
      if (offset + length > bytes.byteLength) throw new ProtocolError("binary frame truncated");
      try {
        fields.push(decoder.decode(bytes.subarray(offset, offset + length)));
      } catch {
        throw new ProtocolError("binary frame field is not UTF-8");
      }
      offset += length;
    }
    return { fields, rest: bytes.slice(offset) };
  };
  if (kind === KIND_PUSH) {
    if (bytes.byteLength < 5) throw new ProtocolError("binary push header truncated");
    const { fields: [joinRef, ref, topic, event], rest } = readFields(4, 5);
    return { joinRef: joinRef || null, ref: ref || null, topic, event, payload: rest };
  }
  if (kind === KIND_USER_BROADCAST_PUSH) {
    if (bytes.byteLength < 7) throw new ProtocolError("user broadcast push header truncated");
    const encoding = bytes[6];
    const { fields: [joinRef, ref, topic, userEvent, metaText], rest: body } = readFields(5, 7);
    let payload: unknown = body;
    if (encoding === ENCODING_JSON) {
      try {
        payload = JSON.parse(decoder.decode(body));
      } catch {
        throw new ProtocolError("user broadcast payload is not JSON");
      }
    } else if (encoding !== ENCODING_BINARY) {
      throw new ProtocolError(`unknown payload encoding ${encoding}`);
    }
    let meta: Record<string, unknown> | undefined;
    if (metaText) {
      try {
        meta = JSON.parse(metaText);
      } catch {
        throw new ProtocolError("user broadcast metadata is not JSON");
      }
    }
    const push: BroadcastPush = { type: "broadcast", event: userEvent, payload, ...(meta ? { meta } : {}) };
    return { joinRef: joinRef || null, ref: ref || null, topic, event: "broadcast", payload: push };
  }
  throw new ProtocolError(`unsupported binary frame kind ${kind}`);
}

/** A control/text frame for the client (replies, system messages, phx_close, JSON broadcasts). */
export function encodeText(message: PhxMessage, vsn: Vsn): string {
  if (vsn === "1.0.0") {
    return JSON.stringify({
      join_ref: message.joinRef,
      ref: message.ref,
      topic: message.topic,
      event: message.event,
      payload: message.payload,
    });
  }
  return JSON.stringify([message.joinRef, message.ref, message.topic, message.event, message.payload]);
}

export function reply(
  joinRef: string | null,
  ref: string | null,
  topic: string,
  status: "ok" | "error",
  response: unknown = {},
): PhxMessage {
  return { joinRef, ref, topic, event: "phx_reply", payload: { status, response } };
}

export interface OutgoingBroadcast {
  /** The channel topic as joined, e.g. `realtime:progress:<uuid>`. */
  topic: string;
  event: string;
  payload: unknown;
  meta?: Record<string, unknown>;
}

/**
 * A server broadcast frame. vsn 2.0.0 gets the binary "user broadcast" frame (kind 4) whenever its
 * header fields fit in a byte each; otherwise, and for vsn 1.0.0, the JSON text form
 * `[null, null, topic, "broadcast", {type, event, payload, meta}]`. realtime-js decodes both into
 * the same `{type: "broadcast", event, payload, meta}` for `.on("broadcast", ...)` listeners.
 */
export function encodeBroadcast(
  message: OutgoingBroadcast,
  vsn: Vsn,
  form: "binary" | "json" = "binary",
): string | Uint8Array {
  if (vsn === "2.0.0" && form === "binary") {
    const binary = encodeUserBroadcast(message);
    if (binary) return binary;
  }
  const body: Record<string, unknown> = { type: "broadcast", event: message.event, payload: message.payload };
  if (message.meta) body.meta = message.meta;
  return encodeText(
    { joinRef: null, ref: null, topic: message.topic, event: "broadcast", payload: body },
    vsn,
  );
}

function encodeUserBroadcast(message: OutgoingBroadcast): Uint8Array | null {
  const topic = encoder.encode(message.topic);
  const event = encoder.encode(message.event);
  const meta = message.meta ? encoder.encode(JSON.stringify(message.meta)) : new Uint8Array(0);
  if (topic.length > 255 || event.length > 255 || meta.length > 255) return null;
  const isBytes = message.payload instanceof Uint8Array;
  const body = isBytes
    ? message.payload as Uint8Array
    : encoder.encode(JSON.stringify(message.payload ?? null));
  const header = 5;
  const out = new Uint8Array(header + topic.length + event.length + meta.length + body.length);
  out[0] = KIND_USER_BROADCAST;
  out[1] = topic.length;
  out[2] = event.length;
  out[3] = meta.length;
  out[4] = isBytes ? ENCODING_BINARY : ENCODING_JSON;
  let offset = header;
  out.set(topic, offset);
  offset += topic.length;
  out.set(event, offset);
  offset += event.length;
  out.set(meta, offset);
  offset += meta.length;
  out.set(body, offset);
  return out;
}
