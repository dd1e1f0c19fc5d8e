// What Supabase Realtime's HTTP stack does to a REST broadcast before and around its controllers,
// for endpoint.ts: Plug.Parsers (body → params), Phoenix's router (path segments → topic and event),
// Phoenix's error rendering (a body that does not parse), the batch route's Ecto changeset, and
// the single route's content-type check. Each function names the source it follows (supabase/realtime
// unless another repository is named); README.md in this folder says what is and is not emulated.

/**
 * Body params as Plug.Parsers leaves them (`conn.body_params`), a body it refused to parse, one
 * longer than it reads (`tooLarge`), or one whose client stopped sending it (`idle`, BODY_IDLE_TIMEOUT_MS).
 * `unread`: the body was not read, and what becomes of it after the answer (unreadBody).
 */
export type BodyParams =
  | { params: Record<string, unknown>; binary?: Uint8Array; unread?: UnreadBody }
  | { parseError: string }
  | { tooLarge: true; unread?: "close" }
  | { idle: true };

/**
 * Cowboy's `max_skip_body_length` (ninenines/cowboy src/cowboy_http.erl, 1_000_000 bytes; Realtime's
 * config/runtime.exs leaves it at its default): once a stream has been answered, the rest of a body the
 * application did not read is read and dropped when its length is known and at most this much remains,
 * and the connection is kept; when more remains, or the length is unknown (chunked), Cowboy closes the
 * connection after the answer (`terminate(State, skip_body_too_large)` / `skip_body_unknown_length`).
 */
export const COWBOY_MAX_SKIP_BODY_LENGTH = 1_000_000;

/**
 * What becomes of a body Realtime answers without reading (unreadBody): "skip", the rest is read and
 * dropped and the connection kept, or "close", the connection is closed after the answer.
 */
export type UnreadBody = "skip" | "close";

/**
 * Leaves a body the stand-in does not read as Cowboy leaves it (COWBOY_MAX_SKIP_BODY_LENGTH), going by
 * the request's framing headers (Deno gives a GET's body no stream at all): a body of at most that many
 * bytes by its Content-Length is cancelled, which Deno's server answers as Cowboy does, reading the
 * rest after the answer and keeping the connection ("skip"); a longer one, or a chunked one, is left
 * untouched for closingAnswer ("close"). No body (neither header, or a Content-Length of 0): "skip".
 */
export async function unreadBody(req: Request): Promise<UnreadBody> {
  const declared = req.headers.get("content-length");
  const chunked = req.headers.has("transfer-encoding");
  if (!chunked && (declared === null || declared === "0")) return "skip";
  if (!chunked && /^\d+$/.test(declared!) && Number(declared) <= COWBOY_MAX_SKIP_BODY_LENGTH) {
    await req.body?.cancel().catch(() => {});
    return "skip";
  }
  return "close";
}

/** The error closingAnswer's body fails with, which the servers' onError keeps quiet about. */
export class ConnectionClosedAfterAnswer extends Error {
  constructor() {
    super("the connection is closed after the answer (a request body left unread)");
  }
}

/**
 * `answer` sent in full and its connection closed after it, as Cowboy closes one whose unread body is
 * too long to skip (unreadBody's "close"). A Deno.serve handler has no hold on its connection, and Deno
 * 2.9 keeps one open after a complete answer while the request body has not all come (its own
 * `Connection: close` notwithstanding), for as long as a client that stopped sending keeps it. What
 * makes Deno close it is an answer whose body fails before it ends, with the request body untouched
 * (no read of it started): so the answer goes as a chunked body that fails after its last byte. The
 * client gets the status, headers and every byte of the body, but no final chunk: it sees the
 * connection end where Cowboy's answer would be complete (README: what differs).
 */
export function closingAnswer(answer: Response): Response {
  const source = answer.body;
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      if (source) { for await (const chunk of source) controller.enqueue(chunk); }
    },
    pull(controller) {
      controller.error(new ConnectionClosedAfterAnswer());
    },
  });
  const headers = new Headers(answer.headers);
  headers.delete("content-length");
  return new Response(body, { status: answer.status, statusText: answer.statusText, headers });
}

/**
 * Plug.Parsers' `:length`, which Realtime's endpoint leaves at its default (elixir-plug/plug
 * lib/plug/parsers.ex, 8_000_000 bytes), for the JSON parser and RealtimeWeb's octet-stream parser
 * alike: a longer body raises Plug.Parsers.RequestTooLargeError (plug_status 413).
 */
export const PLUG_PARSERS_LENGTH = 8_000_000;

/**
 * How much of a too-large body is still read (and dropped) before the answer: a client that sent it
 * whole then reads the 413, where a socket closed on unread bytes would reset the connection under it.
 * Past this the stream is cancelled, so no request holds the stand-in for long.
 */
const DRAIN_LIMIT = 4 * PLUG_PARSERS_LENGTH;

/**
 * How long a body read waits for the client's next bytes: Cowboy's `idle_timeout` (ninenines/cowboy
 * src/cowboy_http.erl, 60_000 ms, restarted by every piece of the body received), which Realtime leaves
 * at its default (config/runtime.exs sets only max_header_value_length and dynamic_buffer among
 * Cowboy's protocol options). Plug's `read_timeout` (15 s) does not end the read there: Plug.Cowboy
 * passes it to Cowboy as the read's `period` (elixir-plug/plug_cowboy lib/plug/cowboy/conn.ex), after
 * which cowboy_stream_h hands over what it has and Plug.Cowboy reads on; only the idle timeout ends it,
 * closing the connection without an answer (cowboy_http `terminate/2`).
 */
export const BODY_IDLE_TIMEOUT_MS = 60_000;

/**
 * The stand-in's answer to a body whose client stopped sending (readBodyParams' `idle`). Cowboy closes
 * the connection without an answer, and so does the nginx of `supabase start`'s Kong in front of it (its
 * client_body_timeout: a request finalized with 408 is terminated, the 408 only logged; no JSON body from
 * Kong's error handler). A Deno.serve handler cannot close its connection (and while a read of the body
 * is pending, not even a failed answer closes it), so the stand-in answers `408 Request Timeout` with an
 * empty body and `Connection: close`, after which the client closes it (fetch does). Either way the
 * client's request fails and the server no longer waits for the body.
 */
export function bodyIdleTimeout(): Response {
  return new Response(null, { status: 408, headers: { connection: "close" } });
}

/**
 * The body's bytes, null when there are more than `limit`, "unread" when its Content-Length is over
 * DRAIN_LIMIT, or "idle" when no byte of it came for `idleMs` (BODY_IDLE_TIMEOUT_MS); nothing past the
 * limit is kept in memory. A too-large body (by its Content-Length, or once past the limit) is read on
 * and dropped up to DRAIN_LIMIT bytes in all, then its stream is cancelled; one whose Content-Length is
 * over DRAIN_LIMIT is not read at all, left untouched so that its answer can close the connection
 * (closingAnswer): Cowboy would close it too, far more than COWBOY_MAX_SKIP_BODY_LENGTH being unread.
 */
async function readUpTo(
  req: Request,
  limit: number,
  idleMs: number,
): Promise<Uint8Array | null | "unread" | "idle"> {
  const declared = Number(req.headers.get("content-length") ?? NaN);
  if (declared > DRAIN_LIMIT) return "unread";
  if (req.body === null) return new Uint8Array(0);
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let length = 0;
  let tooLarge = declared > limit;
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    for (;;) {
      if (length > DRAIN_LIMIT) break;
      // Each read waits idleMs at most: the bound is on a pause between two pieces of the body, not on
      // the whole body (a slow client that keeps sending is read to the end, as Cowboy does).
      const idle = new Promise<"idle">((resolve) => timer = setTimeout(() => resolve("idle"), idleMs));
      const read = await Promise.race([reader.read(), idle]);
      clearTimeout(timer);
      if (read === "idle") return "idle";
      if (read.done) break;
      length += read.value.length;
      if (length > limit) tooLarge = true;
      if (!tooLarge) chunks.push(read.value);
    }
  } finally {
    clearTimeout(timer);
    await reader.cancel().catch(() => {});
  }
  if (tooLarge) return null;
  const bytes = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.length;
  }
  return bytes;
}

/**
 * `Plug.Conn.Utils.content_type/1`: `type/subtype` (lowercased) with optional `; params`, or null
 * when the header is missing or not of that form (Plug.Parsers then leaves the body unread).
 */
export function parseContentType(header: string | null): { type: string; subtype: string } | null {
  if (header === null) return null;
  const m = header.match(/^\s*([^\s/;,]+)\/([^\s/;,]+)\s*(?:;.*)?$/s);
  return m ? { type: m[1].toLowerCase(), subtype: m[2].toLowerCase() } : null;
}

/**
 * lib/realtime_web/endpoint.ex: `Plug.Parsers, parsers: [:urlencoded, :multipart, :json,
 * RealtimeWeb.Plugs.Parsers.OctetStream], pass: ["*\/*"]`, before the router, for every route.
 * - application/json and application/*+json (elixir-plug/plug lib/plug/parsers/json.ex): an empty
 *   body is `%{}`; a JSON object is the params; any other JSON value is `%{"_json" => value}`; a body
 *   Jason refuses raises Plug.Parsers.ParseError (400, rendered by phoenixError below). Jason
 *   (michalmuskala/jason lib/decoder.ex) takes only space, tab, CR and LF around values (a BOM is an
 *   error), strings of valid UTF-8 only, and refuses a `\u` escape of a lone surrogate, which
 *   JSON.parse would take: all three are refused here too.
 * - application/octet-stream (lib/realtime_web/plugs/parsers/octet_stream.ex): `%{"_binary" => body}`.
 * - no or malformed Content-Type, or any other type: passed through (`pass: ["*\/*"]`), params `%{}`,
 *   the body unread (unreadBody: what Cowboy does with it after the answer).
 * - a JSON or octet-stream body over PLUG_PARSERS_LENGTH: Plug.Parsers.RequestTooLargeError (413,
 *   rendered by phoenixError), before the route or token is looked at, as the 400.
 * - a JSON or octet-stream body whose client sends nothing more for `idleMs` (BODY_IDLE_TIMEOUT_MS,
 *   Cowboy's idle_timeout; tests shorten it): `idle`, answered by bodyIdleTimeout.
 * Not emulated: the urlencoded and multipart parsers (Plug would turn such a body into params; here
 * it is passed through as `%{}`), query parameters merged into params.
 */
export async function readBodyParams(req: Request, idleMs = BODY_IDLE_TIMEOUT_MS): Promise<BodyParams> {
  const ct = parseContentType(req.headers.get("content-type"));
  if (ct?.type === "application" && (ct.subtype === "json" || ct.subtype.endsWith("+json"))) {
    const bytes = await readUpTo(req, PLUG_PARSERS_LENGTH, idleMs);
    if (bytes === "idle") return { idle: true };
    if (bytes === "unread") return { tooLarge: true, unread: "close" };
    if (bytes === null) return { tooLarge: true };
    if (bytes.length === 0) return { params: {} };
    let value: unknown;
    try {
      const text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
      value = JSON.parse(text, (key, v, context?: { source?: string }) => {
        if (!key.isWellFormed() || (typeof v === "string" && !v.isWellFormed())) {
          throw new SyntaxError("lone surrogate escape");
        }
        // Jason reads a number with a fraction or exponent as a float (:erlang.binary_to_float,
        // try_parse_float) and refuses one no double holds, such as 1e400, where JSON.parse gives
        // Infinity. An integer that large is exact for Jason (kept as it is here, Infinity: not
        // emulated).
        if (typeof v === "number" && !Number.isFinite(v) && /[.eE]/.test(context?.source ?? "")) {
          throw new SyntaxError(`number out of range: ${context?.source}`);
        }
        return v;
      });
    } catch (error) {
      return { parseError: error instanceof Error ? error.message : String(error) };
    }
    return value !== null && typeof value === "object" && !Array.isArray(value)
      ? { params: value as Record<string, unknown> }
      : { params: { _json: value } };
  }
  if (ct?.type === "application" && ct.subtype === "octet-stream") {
    const bytes = await readUpTo(req, PLUG_PARSERS_LENGTH, idleMs);
    if (bytes === "idle") return { idle: true };
    if (bytes === "unread") return { tooLarge: true, unread: "close" };
    return bytes === null ? { tooLarge: true } : { params: {}, binary: bytes };
  }
  return { params: {}, unread: await unreadBody(req) };
}

/**
 * How Phoenix answers an exception raised before the router (Plug.Parsers.ParseError, plug_status
 * 400): Phoenix.Endpoint.RenderErrors (phoenixframework/phoenix lib/phoenix/endpoint/render_errors.ex)
 * renders `"<status>.<format>"` with the endpoint's `render_errors: [view: RealtimeWeb.ErrorView,
 * accepts: ~w(html json), layout: false]` (config/config.exs). ErrorView
 * (lib/realtime_web/views/error_view.ex) has no such template, so `template_not_found` answers
 * `Phoenix.Controller.status_message_from_template/1`, the reason phrase ("Bad Request"): as text/html
 * for the html format, as a JSON string for json. The format is negotiated from Accept by
 * `Phoenix.Controller.accepts/2` (phoenixErrorFormat).
 */
export function phoenixError(req: Request, status: number, reason: string): Response {
  return phoenixErrorFormat(req.headers.get("accept")) === "json"
    ? new Response(JSON.stringify(reason), {
      status,
      headers: { "content-type": "application/json; charset=utf-8" },
    })
    : new Response(reason, { status, headers: { "content-type": "text/html; charset=utf-8" } });
}

/**
 * `Phoenix.Controller.accepts(conn, ["html", "json"])` as RenderErrors calls it: no Accept, or one
 * holding `*\/*` anywhere, → html (the first accepted); otherwise the first media range with q=1 that
 * maps to a format, else the highest q that does; none → html (RenderErrors' fallback to the first).
 * Only the MIME types of the two formats map (application/json → json, text/html → html) and the
 * `type/*` ranges whose type they start with (application/* → json, text/* → html).
 */
export function phoenixErrorFormat(accept: string | null): "html" | "json" {
  if (accept === null || accept.includes("*/*")) return "html";
  const formatOf = (type: string, subtype: string): "html" | "json" | undefined => {
    if (subtype === "*") return type === "text" ? "html" : type === "application" ? "json" : undefined;
    const mime = `${type}/${subtype}`;
    return mime === "text/html" ? "html" : mime === "application/json" ? "json" : undefined;
  };
  const ranked: [number, string, "html" | "json" | undefined][] = [];
  for (const range of accept.split(",")) {
    const m = range.match(/^\s*([^\s/;]+)\/([^\s/;]+)\s*(;.*)?$/s);
    if (!m) continue;
    const format = formatOf(m[1].toLowerCase(), m[2].toLowerCase());
    const qParam = (m[3] ?? "").match(/;\s*q\s*=\s*([^;\s]*)/i);
    const parsedQ = qParam ? parseFloat(qParam[1]) : NaN;
    const q = Number.isNaN(parsedQ) ? 1 : parsedQ;
    if (q === 1 && format) return format;
    ranked.push([-q, range, format]);
  }
  ranked.sort((a, b) => a[0] - b[0] || (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return ranked.find((r) => r[2])?.[2] ?? "html";
}

/**
 * A path segment decoded as Phoenix's router decodes it (`URI.decode/1` on each segment of
 * path_info, phoenixframework/phoenix lib/phoenix/router.ex): since Elixir 1.13 a `%` that does not
 * start two hex digits is kept as it is, never an error (elixir-lang/elixir lib/elixir/lib/uri.ex
 * `unpercent`); Realtime runs on Elixir >= 1.16 (mix.exs). Returns the bytes, which need not be UTF-8.
 */
export function elixirUriDecode(segment: string): Uint8Array {
  const raw = new TextEncoder().encode(segment);
  const out: number[] = [];
  const hex = (c: number) =>
    c >= 48 && c <= 57 ? c - 48 : c >= 65 && c <= 70 ? c - 55 : c >= 97 && c <= 102 ? c - 87 : -1;
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 37 && i + 2 < raw.length && hex(raw[i + 1]) >= 0 && hex(raw[i + 2]) >= 0) {
      out.push(hex(raw[i + 1]) * 16 + hex(raw[i + 2]));
      i += 2;
    } else {
      out.push(raw[i]);
    }
  }
  return new Uint8Array(out);
}

/**
 * Ecto's "empty" string for a cast and for validate_required: made only of Unicode White_Space
 * (`String.trim_leading(value) == ""`, elixir-ecto/ecto lib/ecto/type.ex `empty_trimmed?`; Realtime's
 * ecto_sql "~> 3.11" brings Ecto >= 3.11, where cast treats such strings as empty). Elixir's
 * whitespace, not JavaScript's trim(): U+0085 is whitespace, U+FEFF is not.
 */
export function elixirBlank(value: string): boolean {
  return /^[\t\n\v\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$/.test(value);
}

export interface BatchMessage {
  topic: string;
  event: string;
  payload: Record<string, unknown>;
  private: boolean;
  /** Sent as the broadcast's `meta.id` when given (BatchBroadcast's send_message_and_count). */
  id?: string;
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === "object" && !Array.isArray(v);

/**
 * lib/realtime/tenants/batch_broadcast.ex: `cast_embed(:messages, required: true)`, each message
 * `cast(attrs, [:id, :topic, :payload, :event, :private])` then `validate_required([:topic, :payload,
 * :event])`, the embed schema's fields being `event`, `topic` (:string), `payload` (:map), `private`
 * (:boolean, default false) and the implicit primary key `id` (:binary_id: embeds_many with a block
 * gets `@primary_key {:id, :binary_id, autogenerate: true}`, elixir-ecto/ecto lib/ecto/schema.ex
 * `__embeds_module__`; :binary_id casts any string, lib/ecto/type.ex `cast_fun(:binary_id)`). The
 * errors are the ChangesetView's `%{errors: traverse_errors(changeset)}` (lib/realtime_web/views/
 * changeset_view.ex, through FallbackController's 422).
 */
export function castBatch(
  params: Record<string, unknown>,
): { messages: BatchMessage[] } | { errors: Record<string, unknown> } {
  if (!Object.hasOwn(params, "messages")) return { errors: { messages: ["can't be blank"] } };
  let list = params.messages;
  // Ecto.Changeset cast_params: a map stands for a list, its values ordered by their keys, keys of
  // integer form (`Integer.parse`, under 32 bytes) as integers before the other keys (term order).
  if (isObject(list)) list = mapToList(list);
  if (!Array.isArray(list) || list.some((m) => !isObject(m))) return { errors: { messages: ["is invalid"] } };
  if (list.length === 0) return { errors: { messages: ["can't be blank"] } };
  const cast = (list as Record<string, unknown>[]).map(castMessage);
  if (cast.some((c) => "errors" in c)) {
    return { errors: { messages: cast.map((c) => "errors" in c ? c.errors : {}) } };
  }
  return { messages: cast.map((c) => (c as { message: BatchMessage }).message) };
}

function mapToList(map: Record<string, unknown>): unknown[] {
  const bytes = (s: string) => new TextEncoder().encode(s);
  const compareBytes = (a: Uint8Array, b: Uint8Array) => {
    for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
    return a.length - b.length;
  };
  const entries = Object.entries(map).map(([key, value]) => {
    const asInt = bytes(key).length < 32 && /^[+-]?[0-9]+$/.test(key) ? BigInt(key) : null;
    return { asInt, key: bytes(key), value };
  });
  entries.sort((a, b) => {
    if (a.asInt !== null && b.asInt !== null) return a.asInt < b.asInt ? -1 : a.asInt > b.asInt ? 1 : 0;
    if (a.asInt !== null) return -1;
    if (b.asInt !== null) return 1;
    return compareBytes(a.key, b.key);
  });
  return entries.map((e) => e.value);
}

type Cast = { ok: true; value: unknown } | { ok: false };

const CASTS: Record<string, (v: unknown) => Cast> = {
  id: (v) => typeof v === "string" ? { ok: true, value: v } : { ok: false },
  topic: (v) => typeof v === "string" ? { ok: true, value: v } : { ok: false },
  event: (v) => typeof v === "string" ? { ok: true, value: v } : { ok: false },
  payload: (v) => isObject(v) ? { ok: true, value: v } : { ok: false },
  // lib/ecto/type.ex cast_boolean: true/false, "true"/"false", "1"/"0".
  private: (v) =>
    typeof v === "boolean"
      ? { ok: true, value: v }
      : v === "true" || v === "1"
      ? { ok: true, value: true }
      : v === "false" || v === "0"
      ? { ok: true, value: false }
      : { ok: false },
};

function castMessage(
  attrs: Record<string, unknown>,
): { message: BatchMessage } | { errors: Record<string, string[]> } {
  const errors: Record<string, string[]> = {};
  const values: Record<string, unknown> = {};
  for (const field of ["id", "topic", "payload", "event", "private"]) {
    if (!Object.hasOwn(attrs, field)) continue;
    const raw = attrs[field];
    // An empty value (null, or a whitespace-only string) is cast as nil, whatever the field's type.
    if (raw === null || (typeof raw === "string" && elixirBlank(raw))) continue;
    const result = CASTS[field](raw);
    if (result.ok) values[field] = result.value;
    else errors[field] = ["is invalid"];
  }
  // validate_required skips a field that already has an error.
  for (const field of ["topic", "payload", "event"]) {
    if (!errors[field] && values[field] === undefined) errors[field] = ["can't be blank"];
  }
  if (Object.keys(errors).length > 0) return { errors };
  return {
    message: {
      topic: values.topic as string,
      event: values.event as string,
      payload: values.payload as Record<string, unknown>,
      private: values.private === true,
      ...(values.id !== undefined ? { id: values.id as string } : {}),
    },
  };
}

/**
 * lib/realtime_web/plugs/validate_broadcast_content_type.ex (the single route's pipeline, before
 * authentication): a Content-Type that is not application/json or application/octet-stream (with any
 * parameters) is answered 415 with this body; no Content-Type passes.
 */
export function unsupportedMediaType(req: Request): Response | null {
  const header = req.headers.get("content-type");
  if (header === null) return null;
  const ct = parseContentType(header);
  if (ct?.type === "application" && (ct.subtype === "json" || ct.subtype === "octet-stream")) return null;
  return Response.json(
    { error: "Unsupported Media Type. Use application/json or application/octet-stream" },
    { status: 415 },
  );
}
