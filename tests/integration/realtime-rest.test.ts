// The REST broadcast routes (POST /realtime/v1/api/broadcast and .../broadcast/<topic>/events/<event>)
// answer as Supabase Realtime's HTTP stack does, over real HTTP against the stack's Realtime, with
// deliveries checked on the real supabase-js client over the real WebSocket. What each case follows
// (Plug.Parsers in lib/realtime_web/endpoint.ex, Phoenix's router and error rendering, the batch
// changeset, the single route's content-type check) is cited in local/realtime/rest.ts.

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { signDevJwt } from "../../local/stack/keys.ts";
import { createTestUser, localRealtime, testEnv } from "../support/env.ts";
import { closeClient, joinChannel, newClient, noSanitize, ownEndpoint, waitFor } from "./realtime_support.ts";

const encoder = new TextEncoder();
const json = { "Content-Type": "application/json" };

async function post(
  path: string,
  body: BodyInit,
  headers: Record<string, string>,
): Promise<{ status: number; type: string | null; text: string }> {
  const env = testEnv();
  const res = await fetch(`${env.url}/realtime/v1/api/broadcast${path}`, {
    method: "POST",
    headers: { apikey: env.anonKey, ...headers },
    body,
  });
  return { status: res.status, type: res.headers.get("content-type"), text: await res.text() };
}

/** A public channel joined by a session-less client, collecting what arrives. */
async function listen(topic: string) {
  const client = newClient();
  const { joined, status } = await joinChannel(client, topic, { private: false });
  assert.equal(status, "SUBSCRIBED");
  return { client, received: joined.received };
}

Deno.test({
  name:
    "realtime REST batch: only a JSON body is read (Plug.Parsers); another Content-Type or none is no messages",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const auth = { Authorization: `Bearer ${a.accessToken}` };
    const text = JSON.stringify({ messages: [{ topic: "rest-ct", event: "e", payload: {} }] });
    const blank = { errors: { messages: ["can't be blank"] } };
    // Plug.Parsers parses JSON only for application/json and application/*+json and passes every
    // other body through unread: the changeset then finds no messages. fetch() sends a string body
    // as text/plain unless told otherwise; a byte body goes without Content-Type.
    for (
      const [what, body, headers] of [
        ["text/plain", text, { ...auth, "Content-Type": "text/plain" }],
        ["fetch's default for a string", text, auth],
        ["no Content-Type", encoder.encode(text), auth],
        ["a form", text, { ...auth, "Content-Type": "application/x-www-form-urlencoded" }],
        ["an empty JSON body", "", { ...auth, "Content-Type": "application/json" }],
      ] as [string, BodyInit, Record<string, string>][]
    ) {
      const res = await post("", body, headers);
      assert.equal(res.status, 422, `${what}: ${res.status} ${res.text}`);
      assert.deepEqual(JSON.parse(res.text), blank, what);
    }
    // JSON however the type is spelled (Plug lowercases it; +json suffixes are JSON too).
    for (const type of ["Application/JSON; charset=utf-8", "application/vnd.api+json"]) {
      const res = await post("", text, { ...auth, "Content-Type": type });
      assert.equal(res.status, 202, `${type}: ${res.status} ${res.text}`);
    }
  },
});

Deno.test({
  name: "realtime REST batch: a message's id is cast as a string and sent as meta.id; messages may be a map",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const headers = { Authorization: `Bearer ${a.accessToken}`, "Content-Type": "application/json" };
    const topic = `rest-id-${crypto.randomUUID()}`;
    const ok = { topic, event: "e", payload: {} };
    // The embed's primary key `id` (:binary_id) takes any string and nothing else; an empty or
    // whitespace-only value of any field is nil to Ecto's cast (so payload " " is blank, and private ""
    // is the default false).
    for (
      const [message, errors] of [
        [{ ...ok, id: 5 }, { id: ["is invalid"] }],
        [{ ...ok, id: { a: 1 } }, { id: ["is invalid"] }],
        [{ ...ok, id: true }, { id: ["is invalid"] }],
        [{ ...ok, payload: " ", private: "" }, { payload: ["can't be blank"] }],
      ] as [Record<string, unknown>, Record<string, string[]>][]
    ) {
      const res = await post("", JSON.stringify({ messages: [message] }), headers);
      assert.equal(res.status, 422, `${JSON.stringify(message)}: ${res.status} ${res.text}`);
      assert.deepEqual(JSON.parse(res.text), { errors: { messages: [errors] } });
    }

    const listener = await listen(topic);
    try {
      const sent = await post(
        "",
        JSON.stringify({
          messages: [
            { topic, event: "with-id", payload: { n: 1 }, id: "msg-1" },
            { topic, event: "blank-id", payload: { n: 2 }, id: "  ", private: "" },
          ],
        }),
        headers,
      );
      assert.equal(sent.status, 202, sent.text);
      // Ecto reads a map of messages as a list ordered by its integer keys.
      const asMap = await post(
        "",
        JSON.stringify({
          messages: {
            "10": { topic, event: "map-10", payload: {} },
            "2": { topic, event: "map-2", payload: {} },
          },
        }),
        headers,
      );
      assert.equal(asMap.status, 202, asMap.text);
      const events = ["with-id", "blank-id", "map-10", "map-2"];
      await waitFor(
        "the four broadcasts",
        () => events.every((e) => listener.received.some((m) => m.event === e)),
        { timeoutMs: 20_000 },
      );
      const byEvent = (e: string) => listener.received.find((m) => m.event === e)!;
      assert.deepEqual(byEvent("with-id").payload, { n: 1 });
      assert.equal(byEvent("with-id").meta?.id, "msg-1");
      assert.equal(byEvent("blank-id").meta?.id, undefined);
    } finally {
      await closeClient(listener.client);
    }
  },
});

Deno.test({
  name:
    "realtime REST: a body that does not parse as JSON is Phoenix's 400 Bad Request, before the token is read",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const json = { "Content-Type": "application/json" };
    const good = { ...json, Authorization: `Bearer ${a.accessToken}` };
    const bad = { ...json, Authorization: "Bearer x" };
    // Jason refuses what JSON.parse would take too: a BOM, invalid UTF-8, a lone surrogate escape, and a
    // number with a fraction or exponent that no double holds (JSON.parse: Infinity).
    const bodies: [string, BodyInit][] = [
      ["truncated", '{"messages":['],
      ["a BOM", "\ufeff{}"],
      ["invalid UTF-8", new Uint8Array([0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d])],
      ["a lone surrogate escape", '{"a":"\\ud800"}'],
      ["a float beyond a double", '{"a":1e400}'],
      ["a negative one", '{"messages":[{"payload":{"n":-1.5E+999}}]}'],
    ];
    for (const path of ["", `/rest-parse-${crypto.randomUUID()}/events/e`]) {
      for (const [what, body] of bodies) {
        for (const headers of [good, bad]) {
          const res = await post(path, body, headers);
          assert.equal(res.status, 400, `${path || "batch"} ${what}: ${res.status} ${res.text}`);
          // RealtimeWeb.ErrorView's reason phrase, as html unless Accept asks for JSON.
          assert.equal(res.text, "Bad Request", `${path || "batch"} ${what}`);
          assert.match(res.type ?? "", /^text\/html/);
        }
      }
      // An integer is exact for Jason however long: not refused.
      const bigInteger = await post(path, `{"n":1${"0".repeat(400)}}`, good);
      assert.notEqual(bigInteger.status, 400, `${path || "batch"} a long integer: ${bigInteger.text}`);
      const asJson = await post(path, "{", { ...good, Accept: "application/json" });
      assert.equal(asJson.status, 400);
      assert.match(asJson.type ?? "", /^application\/json/);
      assert.equal(JSON.parse(asJson.text), "Bad Request");
    }
  },
});

Deno.test({
  name:
    "realtime REST single: the path is decoded as Phoenix's router does, and a blank topic or event is a 422",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const headers = { Authorization: `Bearer ${a.accessToken}`, "Content-Type": "application/json" };
    // URI.decode keeps a `%` that does not start two hex digits: "%zz" and a trailing "%2" are text.
    const topic = `rest-pct-${crypto.randomUUID()}%zz`;
    const listener = await listen(topic);
    try {
      const res = await post(`/${topic}/events/ping%2`, JSON.stringify({ n: 1 }), headers);
      assert.equal(res.status, 202, res.text);
      await waitFor("the broadcast", () => listener.received.some((m) => m.event === "ping%2"), {
        timeoutMs: 20_000,
      });
      assert.deepEqual(listener.received.find((m) => m.event === "ping%2")!.payload, { n: 1 });
    } finally {
      await closeClient(listener.client);
    }
    // SingleBroadcast's changeset requires topic and event: whitespace only is blank.
    for (
      const [path, errors] of [
        ["/%20/events/e", { topic: ["can't be blank"] }],
        ["/t/events/%09", { event: ["can't be blank"] }],
      ] as const
    ) {
      const blank = await post(path, "{}", headers);
      assert.equal(blank.status, 422, `${path}: ${blank.status} ${blank.text}`);
      assert.deepEqual(JSON.parse(blank.text), { errors }, path);
    }
  },
});

Deno.test({
  name: "realtime REST single: the Content-Type decides the payload, and one not JSON or bytes is a 415",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const auth = { Authorization: `Bearer ${a.accessToken}` };
    // ValidateBroadcastContentType, before the token is read.
    for (const headers of [auth, { Authorization: "Bearer x" }]) {
      const refused = await post(`/t/events/e`, "hello", { ...headers, "Content-Type": "text/plain" });
      assert.equal(refused.status, 415, refused.text);
      assert.deepEqual(JSON.parse(refused.text), {
        error: "Unsupported Media Type. Use application/json or application/octet-stream",
      });
    }
    const topic = `rest-body-${crypto.randomUUID()}`;
    const listener = await listen(topic);
    try {
      // The controller sends the body params: a JSON value that is no object comes as {"_json": value}
      // (Plug.Parsers.JSON), an empty JSON body as {}, and without Content-Type the body is not read.
      const cases: [string, BodyInit, Record<string, string>, unknown][] = [
        ["number", "5", { ...auth, "Content-Type": "application/json" }, { _json: 5 }],
        ["list", "[1,2]", { ...auth, "Content-Type": "application/json" }, { _json: [1, 2] }],
        ["empty", "", { ...auth, "Content-Type": "application/json" }, {}],
        ["untyped", encoder.encode('{"n":1}'), auth, {}],
        ["object", '{"n":1}', { ...auth, "Content-Type": "application/json" }, { n: 1 }],
      ];
      for (const [event, body, headers] of cases) {
        const res = await post(`/${topic}/events/${event}`, body, headers);
        assert.equal(res.status, 202, `${event}: ${res.status} ${res.text}`);
      }
      await waitFor(
        "every broadcast",
        () => cases.every(([event]) => listener.received.some((m) => m.event === event)),
        { timeoutMs: 20_000 },
      );
      for (const [event, , , payload] of cases) {
        assert.deepEqual(listener.received.find((m) => m.event === event)!.payload, payload, event);
      }
    } finally {
      await closeClient(listener.client);
    }
  },
});

Deno.test({
  name:
    "realtime REST: a JSON or octet-stream body over Plug's 8,000,000 bytes is 413, before the token is read",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const tokens = [`Bearer ${a.accessToken}`, "Bearer x"];
    // Plug.Parsers reads at most its :length (8_000_000 bytes) of a body it parses, JSON or RealtimeWeb's
    // octet-stream, and raises RequestTooLargeError (413) past it, rendered as the 400 is.
    const big = new Uint8Array(9_000_000).fill(0x20);
    big[0] = 0x7b; // "{", spaces, "}": valid JSON, only too long
    big[big.length - 1] = 0x7d;
    for (const path of ["", `/rest-big-${crypto.randomUUID()}/events/e`]) {
      for (const type of ["application/json", "application/octet-stream"]) {
        for (const token of tokens) {
          const res = await post(path, big, { Authorization: token, "Content-Type": type });
          const what = `${path || "batch"} ${type} ${token.slice(0, 9)}`;
          assert.equal(res.status, 413, `${what}: ${res.status} ${res.text.slice(0, 200)}`);
          assert.equal(res.text, "Request Entity Too Large", what);
          assert.match(res.type ?? "", /^text\/html/, what);
        }
      }
      // Without a Content-Length (a streamed body), the read stops past the limit all the same.
      const streamed = await fetch(`${testEnv().url}/realtime/v1/api/broadcast${path}`, {
        method: "POST",
        headers: { apikey: testEnv().anonKey, Authorization: "Bearer x", "Content-Type": "application/json" },
        body: ReadableStream.from((function* () {
          for (let i = 0; i < 9; i++) yield new Uint8Array(1_000_000).fill(0x20);
        })()),
        duplex: "half",
      } as RequestInit);
      assert.equal(streamed.status, 413, `${path || "batch"} streamed: ${streamed.status}`);
      assert.equal(await streamed.text(), "Request Entity Too Large");
    }
    // Under the limit the body is read as before: 7 MB of JSON (an object padded with spaces).
    const topic = `rest-7mb-${crypto.randomUUID()}`;
    const listener = await listen(topic);
    try {
      const padded = new Uint8Array(7_000_000).fill(0x20);
      padded.set(encoder.encode('{"n":7}'), 0);
      const res = await post(`/${topic}/events/seven`, padded, {
        Authorization: tokens[0],
        "Content-Type": "application/json",
      });
      assert.equal(res.status, 202, res.text);
      await waitFor("the broadcast", () => listener.received.some((m) => m.event === "seven"), {
        timeoutMs: 20_000,
      });
      assert.deepEqual(listener.received.find((m) => m.event === "seven")!.payload, { n: 7 });
    } finally {
      await closeClient(listener.client);
    }
  },
});

Deno.test({
  name:
    "realtime REST single: private is Phoenix's params[\"private\"], the JSON body's over the query's last, and is checked",
  ...noSanitize,
  fn: async () => {
    const a = await createTestUser();
    const c = await createTestUser();
    // No one may send on a private progress topic (no INSERT policy on realtime.messages): a send that
    // Supabase takes as private is 403 Unauthorized, one it takes as public is 202.
    const topic = encodeURIComponent(`progress:${a.id}`);
    const headers = { Authorization: `Bearer ${c.accessToken}`, "Content-Type": "application/json" };
    for (
      const [query, body, status] of [
        ["", { private: true, forged: 1 }, 403], // the body's "private" (Plug.Parsers merges it over the query)
        ["", { private: "true" }, 403],
        ["?private=false", { private: true }, 403],
        ["?private=false&private=true", {}, 403], // Plug.Conn.Query: the last value wins
        ["?private=true&private=false", {}, 202],
        ["?private=true", { private: false }, 202], // the body's false over the query's true
        ["?private=true", { private: "yes" }, 202], // parse_private: only "true" or true
        ["?private=true", { forged: 2 }, 403],
      ] as [string, Record<string, unknown>, number][]
    ) {
      const res = await post(`/${topic}/events/UPDATE${query}`, JSON.stringify(body), headers);
      const what = `${query || "no query"} ${JSON.stringify(body)}`;
      assert.equal(res.status, status, `${what}: ${res.status} ${res.text}`);
      if (status === 403) assert.deepEqual(JSON.parse(res.text), { message: "Unauthorized" }, what);
    }
    // An octet-stream body has no params of its own (only "_binary"): the query decides.
    const bytes = await post(`/${topic}/events/UPDATE?private=true`, new Uint8Array([1, 2]), {
      ...headers,
      "Content-Type": "application/octet-stream",
    });
    assert.equal(bytes.status, 403, bytes.text);
  },
});

Deno.test({
  name:
    "realtime REST: no gateway apikey check (supabase start's Kong); the Bearer token, else the apikey header, is verified, else 401 Unauthorized",
  ...noSanitize,
  // The gateway in front decides the requests without a usable apikey: `supabase start`'s Kong has no
  // key-auth (supabase/cli internal/start/templates/kong.yml), which the stand-in follows, where a
  // hosted project's gateway or self-hosted Docker's Kong (key-auth) answers them 401 first. So this
  // runs on the local stand-in only.
  ignore: !localRealtime,
  fn: async () => {
    const env = testEnv();
    const a = await createTestUser();
    const foreign = await signDevJwt(
      { sub: a.id, role: "authenticated", aud: "authenticated" },
      { secret: "another-project-secret-with-at-least-32-characters" },
    );
    const topic = `rest-key-${crypto.randomUUID()}`;
    const listener = await listen(topic);
    try {
      // [case, Authorization header or null, apikey header or null, apikey query parameter or null, status]
      const cases: [string, string | null, string | null, string | null, number][] = [
        // RealtimeWeb.AuthTenant takes the Bearer token and never reads the apikey then.
        ["bearer, no apikey", `Bearer ${a.accessToken}`, null, null, 202],
        ["bearer, an unknown apikey", `Bearer ${a.accessToken}`, "not-a-key", null, 202],
        ["lower-case bearer, no apikey", `bearer ${a.accessToken}`, null, null, 202],
        // Without a Bearer token (none, or another scheme), the apikey header is the token.
        ["apikey header only", null, env.anonKey, null, 202],
        ["Basic scheme, apikey header", "Basic YTpi", env.anonKey, null, 202],
        // AuthTenant reads no apikey query parameter, and any failure is the same 401.
        ["apikey parameter only", null, null, env.anonKey, 401],
        ["nothing", null, null, null, 401],
        ["malformed bearer, good apikey", "Bearer x", env.anonKey, null, 401],
        ["foreign signature, good apikey", `Bearer ${foreign}`, env.anonKey, null, 401],
        ["unknown apikey only", null, "not-a-key", null, 401],
        ["bearer without a token, good apikey", "Bearer", env.anonKey, null, 401],
      ];
      const delivered: string[] = [];
      let sent = 0;
      for (const [what, authorization, apikey, queryKey, status] of cases) {
        for (const route of ["batch", "single"] as const) {
          const event = `e-${route}-${sent++}`;
          const headers: Record<string, string> = { "Content-Type": "application/json" };
          if (authorization !== null) headers.Authorization = authorization;
          if (apikey !== null) headers.apikey = apikey;
          const query = queryKey === null ? "" : `?apikey=${encodeURIComponent(queryKey)}`;
          const path = route === "batch" ? "" : `/${topic}/events/${event}`;
          const body = route === "batch"
            ? JSON.stringify({ messages: [{ topic, event, payload: { what } }] })
            : JSON.stringify({ what });
          const res = await fetch(`${env.url}/realtime/v1/api/broadcast${path}${query}`, {
            method: "POST",
            headers,
            body,
          });
          const text = await res.text();
          assert.equal(res.status, status, `${what} (${route}): ${res.status} ${text}`);
          if (status === 401) {
            assert.deepEqual(JSON.parse(text), { message: "Unauthorized" }, `${what} (${route})`);
          } else {
            delivered.push(event);
          }
        }
      }
      await waitFor(
        "the accepted broadcasts",
        () => delivered.every((event) => listener.received.some((m) => m.event === event)),
        { timeoutMs: 20_000 },
      );
    } finally {
      await closeClient(listener.client);
    }
  },
});

/**
 * Sends `head` (a request line and headers, no blank line) and then `body` piece by piece, waiting
 * `gapMs` between pieces, over a connection of its own, and reads the answer's head (every answer here
 * has an empty body). Null when none came within 30 s (a hang guard).
 */
async function rawExchange(port: number, head: string, body: string[], gapMs = 0): Promise<string | null> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let guard: ReturnType<typeof setTimeout> | undefined;
  try {
    await conn.write(encoder.encode(`${head}\r\n\r\n`));
    for (const [i, piece] of body.entries()) {
      // The client's own pace (the scenario: a slow upload), not a wait for the server.
      if (i > 0 && gapMs > 0) await new Promise((resolve) => setTimeout(resolve, gapMs));
      await conn.write(encoder.encode(piece));
    }
    let text = "";
    const buffer = new Uint8Array(4096);
    const hangGuard = new Promise<"none">((resolve) => guard = setTimeout(() => resolve("none"), 30_000));
    while (!text.includes("\r\n\r\n")) {
      const read = await Promise.race([conn.read(buffer), hangGuard]);
      if (read === "none" || read === null) return null;
      text += new TextDecoder().decode(buffer.subarray(0, read));
    }
    return text;
  } finally {
    clearTimeout(guard);
    conn.close();
  }
}

Deno.test({
  name:
    "realtime REST: a body whose client stops sending is given up after the idle timeout (Cowboy's), 408, one still coming is read to the end",
  ...ownEndpoint,
  fn: async () => {
    const env = testEnv();
    // Cowboy's idle_timeout is 60 s (the stand-in's default); this endpoint's is shorter.
    const IDLE_MS = 2_000;
    const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
      bodyIdleTimeoutMs: IDLE_MS,
    });
    try {
      const head = (path: string, type: string) =>
        `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\napikey: ${env.anonKey}\r\ncontent-type: ${type}\r\n` +
        "content-length: 100";
      // 2 of the 100 bytes announced, then nothing: on Supabase Cowboy closes the connection without an
      // answer after its idle timeout; the stand-in cannot close it, and answers 408 with Connection:
      // close (README.md).
      const stalls = await Promise.all(
        [
          ["/realtime/v1/api/broadcast", "application/json"],
          ["/realtime/v1/api/broadcast/rest-idle/events/e", "application/json"],
          ["/realtime/v1/api/broadcast/rest-idle/events/e", "application/octet-stream"],
          ["/realtime/v1/api/no-such-route", "application/json"], // the body is read before the router
        ].map(async ([path, type]) => ({
          path,
          type,
          answer: await rawExchange(server.port, head(path, type), ['{"']),
        })),
      );
      for (const { path, type, answer } of stalls) {
        assert.ok(answer !== null, `${path} ${type}: no answer within 30 s`);
        assert.match(answer, /^HTTP\/1\.1 408 Request Timeout\r\n/, `${path} ${type}`);
        assert.match(answer, /\r\nconnection: close\r\n/i, `${path} ${type}`);
        assert.match(answer, /\r\ncontent-length: 0\r\n/i, `${path} ${type}`);
      }
      // The bound is on a pause, not on the whole body: 100 bytes sent in 10 pieces, 0.15 of the bound
      // apart, take longer than the bound, and are read and broadcast.
      const pieces = ['{"n":1', ...Array.from({ length: 8 }, () => " ".repeat(11)), " ".repeat(5) + "}"];
      assert.equal(pieces.join("").length, 100);
      const slow = await rawExchange(
        server.port,
        head("/realtime/v1/api/broadcast/rest-slow/events/e", "application/json"),
        pieces,
        IDLE_MS * 0.15,
      );
      assert.match(slow ?? "", /^HTTP\/1\.1 202 /, `a slow body: ${JSON.stringify(slow)}`);
    } finally {
      await server.close();
    }
  },
});

/**
 * Sends `request` (head and whatever of the body is sent) over a connection of its own and reads until
 * the server ends the connection: all it got, and whether it ended (false when it was still open 30 s
 * on, a hang guard). A reset counts as an end.
 */
async function readUntilEnd(port: number, request: string): Promise<{ text: string; ended: boolean }> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  let guard: ReturnType<typeof setTimeout> | undefined;
  const hangGuard = new Promise<"open">((resolve) => guard = setTimeout(() => resolve("open"), 30_000));
  let text = "";
  try {
    await conn.write(encoder.encode(request));
    const buffer = new Uint8Array(4096);
    for (;;) {
      const read = await Promise.race([conn.read(buffer).catch(() => null), hangGuard]);
      if (read === "open") return { text, ended: false };
      if (read === null) return { text, ended: true };
      text += new TextDecoder().decode(buffer.subarray(0, read));
    }
  } finally {
    clearTimeout(guard);
    conn.close();
  }
}

Deno.test({
  name:
    "realtime REST: a body answered unread is left as Cowboy leaves it: over 1,000,000 bytes or of unknown length, the connection ends after the answer; a shorter one is skipped and the connection kept",
  ...ownEndpoint,
  fn: async () => {
    // Cowboy's max_skip_body_length (rest.ts COWBOY_MAX_SKIP_BODY_LENGTH): once answered, an unread rest
    // of a body of known length up to 1,000,000 bytes is read and dropped and the connection kept;
    // longer, or chunked, Cowboy closes the connection. These clients send a part of the body and then
    // nothing: the server has to end the connection itself (Deno keeps it open otherwise, waiting for
    // the rest of the body).
    const env = testEnv();
    const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
    const head = (method: string, path: string, headers: string) =>
      `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\napikey: ${env.anonKey}\r\n${headers}\r\n`;
    try {
      // [request, what it is, its answer]
      const cases: [string, string, RegExp][] = [
        // The brief's case: a Content-Length over what the stand-in reads at all (32 MB), nothing sent.
        [
          head(
            "POST",
            "/realtime/v1/api/broadcast",
            "content-type: application/json\r\ncontent-length: 40000001\r\n",
          ),
          "413 a JSON body announced over 32 MB",
          /^HTTP\/1\.1 413 [^]*Request Entity Too Large/,
        ],
        [
          head(
            "POST",
            "/realtime/v1/api/broadcast",
            "content-type: text/plain\r\ncontent-length: 2000000\r\n",
          ) +
          "0123456789",
          "422 a text body Plug passes through, 2 MB announced",
          /^HTTP\/1\.1 422 [^]*can't be blank/,
        ],
        [
          head(
            "POST",
            "/realtime/v1/api/broadcast",
            "content-type: text/plain\r\ntransfer-encoding: chunked\r\n",
          ) +
          "a\r\n0123456789\r\n",
          "422 a chunked text body",
          /^HTTP\/1\.1 422 [^]*can't be blank/,
        ],
        [
          head("GET", "/realtime/v1/api/no-such-route", "content-length: 2000000\r\n") + "0123456789",
          "404 a GET with a 2 MB body",
          /^HTTP\/1\.1 404 [^]*Not Found/,
        ],
        [
          head("POST", "/realtime/v1/websocket", "content-length: 2000000\r\n") + "0123456789",
          "400 a POST to the socket with a 2 MB body",
          /^HTTP\/1\.1 400 /,
        ],
      ];
      const results = await Promise.all(cases.map(([request]) => readUntilEnd(server.port, request)));
      results.forEach(({ text }, i) => {
        const [, what, answer] = cases[i];
        assert.match(text, answer, `${what}: ${JSON.stringify(text.slice(0, 300))}`);
      });
      assert.deepEqual(
        cases.filter((_, i) => !results[i].ended).map(([, what]) => what),
        [],
        "connections still open 30 s after their answer",
      );
      // A body of at most 1,000,000 bytes Realtime does not read is skipped, the connection kept: a
      // second request on it is answered.
      const kept = await readUntilEnd(
        server.port,
        head("POST", "/realtime/v1/api/broadcast", "content-type: text/plain\r\ncontent-length: 10\r\n") +
          "0123456789" + head("GET", "/realtime/v1/api/no-such-route", "connection: close\r\n"),
      );
      assert.match(kept.text, /^HTTP\/1\.1 422 [^]*HTTP\/1\.1 404 /, JSON.stringify(kept.text));
      assert.ok(kept.ended, "the second answer (Connection: close) ends the connection");
    } finally {
      await server.close();
    }
  },
});

Deno.test({
  name:
    "realtime REST: a route Realtime does not have is Phoenix's 404 Not Found, after the body is parsed, as html unless Accept asks for JSON",
  ...noSanitize,
  fn: async () => {
    const env = testEnv();
    const a = await createTestUser();
    const call = async (
      method: string,
      path: string,
      init: { body?: string; headers?: Record<string, string> } = {},
    ) => {
      const res = await fetch(`${env.url}${path}`, {
        method,
        headers: { apikey: env.anonKey, Authorization: `Bearer ${a.accessToken}`, ...init.headers },
        body: init.body,
      });
      return { status: res.status, type: res.headers.get("content-type"), text: await res.text() };
    };
    const paths: [string, string][] = [
      ["GET", "/realtime/v1/api/no-such-route"],
      ["POST", "/realtime/v1/api/no-such-route"],
      ["DELETE", "/realtime/v1/api/broadcast/t/events"],
      // Phoenix's router matches the method too: the broadcast routes are POST only.
      ["GET", "/realtime/v1/api/broadcast"],
      ["PUT", "/realtime/v1/api/broadcast/t/events/e"],
      ["POST", "/realtime/v1/api/broadcast/t/events/e/more"],
    ];
    // Kong sends the rest of /realtime/v1 to Realtime's /socket/*, whose endpoint serves only the
    // socket's transports: the stand-in's (a real stack's gateway may route a plain request there
    // otherwise).
    if (localRealtime) paths.push(["GET", "/realtime/v1/no-such-route"], ["GET", "/realtime/v1/"]);
    for (const [method, path] of paths) {
      const html = await call(method, path, { body: method === "GET" ? undefined : "{}", headers: json });
      assert.equal(html.status, 404, `${method} ${path}: ${html.text}`);
      assert.equal(html.text, "Not Found", `${method} ${path}`);
      assert.match(html.type ?? "", /^text\/html/, `${method} ${path}`);
      const asJson = await call(method, path, { headers: { Accept: "application/json" } });
      assert.equal(asJson.status, 404, `${method} ${path} (JSON)`);
      assert.match(asJson.type ?? "", /^application\/json/, `${method} ${path} (JSON)`);
      assert.equal(JSON.parse(asJson.text), "Not Found", `${method} ${path} (JSON)`);
    }
    // Plug.Parsers runs before the router: a body that does not parse is its 400 on any route.
    const unparsed = await call("POST", "/realtime/v1/api/no-such-route", { body: "{", headers: json });
    assert.equal(unparsed.status, 400, unparsed.text);
    assert.equal(unparsed.text, "Bad Request");
    // Phoenix matches the path's segments without the empty ones: a trailing slash is the same route.
    const topic = `rest-slash-${crypto.randomUUID()}`;
    const slash = await call("POST", "/realtime/v1/api/broadcast/", {
      body: JSON.stringify({ messages: [{ topic, event: "e", payload: {} }] }),
      headers: json,
    });
    assert.equal(slash.status, 202, slash.text);
    const single = await call("POST", `/realtime/v1/api/broadcast/${topic}/events/e/`, {
      body: "{}",
      headers: json,
    });
    assert.equal(single.status, 202, single.text);
  },
});
