// A seeded generative test of the local Realtime stand-in (local/realtime) over real WebSockets:
// random, malformed and hostile Phoenix frames (text and binary, both protocol versions, unknown
// events and kinds, truncated and oversized frames, joins with bad tokens and odd configs, pushes to
// topics never joined, token pushes) and REST broadcasts from "fuzz" sockets that hold A's
// credentials and nothing of B's, while two observers (A on vsn 2.0.0, B on vsn 1.0.0) hold their
// own progress channels. What must hold:
//   - no frame makes the endpoint fail (no `frame_failed` in its log, the process up), a REST
//     broadcast never answers 5xx, and a heartbeat on a fuzz socket is answered (or the endpoint closed
//     that socket: it is replaced);
//   - nothing of B's reaches a fuzz socket: no broadcast frame there carries B's series (the fuzz
//     sockets know B's id, from B's topic, and may send it themselves);
//   - the observers keep working: each of a series of rows written for A and B, in between, reaches
//     its own observer (and B's never reaches A's), and their heartbeats are answered.
// It prints its seed, new each run (seedFromEnv); READSYNC_FUZZ_SEED=<seed> replays the same frames,
// READSYNC_FUZZ_CASES=<n> sends more (default 300). It runs an endpoint of its own (the local stand-in only: skipped against a real
// stack), with the join and connect error waits at 0 so refusals come at once.

import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { mintUserAccessToken, signDevJwt } from "../../local/stack/keys.ts";
import { adminSql, createTestUser, testEnv, type TestUser } from "../support/env.ts";
import { casesFromEnv, type SeededRandom, seededRandom, seedFromEnv } from "../support/seededRandom.ts";
import { ownEndpoint, waitFor, writeProgress } from "./realtime_support.ts";

const SEED = seedFromEnv("READSYNC_FUZZ_SEED");
const CASES = casesFromEnv("READSYNC_FUZZ_CASES", 300);

const encoder = new TextEncoder();
const decoder = new TextDecoder(); // not fatal: a frame is searched as text, whatever it holds

/** A frame from the server, as text (binary frames decoded leniently) and whether it is a broadcast. */
interface Seen {
  text: string;
  /** What the frame carries besides its topic (a broadcast's body), as text. */
  body: string;
  broadcast: boolean;
  topic: string | null;
  event: string | null;
  ref: string | null;
}

function readFrame(data: string | ArrayBuffer): Seen {
  if (typeof data !== "string") {
    const bytes = new Uint8Array(data);
    // kind 4 "user broadcast": [4, topicLen, eventLen, metaLen, encoding] topic event meta payload
    const kind4 = bytes[0] === 4;
    return {
      text: decoder.decode(bytes),
      body: decoder.decode(bytes.subarray(kind4 ? 5 + bytes[1] : 0)),
      broadcast: true,
      topic: kind4 ? decoder.decode(bytes.subarray(5, 5 + bytes[1])) : null,
      event: "broadcast",
      ref: null,
    };
  }
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(data);
  } catch { /* kept as text */ }
  const m = (parsed ?? {}) as Record<string, unknown>;
  const [, ref, topic, event, payload] = Array.isArray(parsed)
    ? parsed
    : [m.join_ref, m.ref, m.topic, m.event, m.payload];
  return {
    text: data,
    body: parsed === null ? data : JSON.stringify(payload) ?? "",
    broadcast: event === "broadcast" || event === "postgres_changes" || event === "presence_diff",
    topic: typeof topic === "string" ? topic : null,
    event: typeof event === "string" ? event : null,
    ref: typeof ref === "string" ? ref : null,
  };
}

class Socket {
  readonly frames: Seen[] = [];
  readonly ws: WebSocket;
  readonly opened: Promise<boolean>;
  closed = false;
  #ref = 0;

  constructor(url: string, readonly vsn: "1.0.0" | "2.0.0") {
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ws.onmessage = (e) => this.frames.push(readFrame(e.data));
    this.opened = new Promise((resolve) => {
      this.ws.onopen = () => resolve(true);
      this.ws.onerror = () => resolve(false);
      this.ws.onclose = () => {
        this.closed = true;
        resolve(false);
      };
    });
  }

  nextRef(): string {
    return `r${++this.#ref}`;
  }

  send(data: string | Uint8Array): void {
    if (this.closed || this.ws.readyState !== WebSocket.OPEN) return;
    try {
      this.ws.send(data);
    } catch { /* closing */ }
  }

  push(joinRef: string | null, ref: string | null, topic: string, event: string, payload: unknown): void {
    this.send(
      this.vsn === "2.0.0"
        ? JSON.stringify([joinRef, ref, topic, event, payload])
        : JSON.stringify({ join_ref: joinRef, ref, topic, event, payload }),
    );
  }

  /** A push whose reply is waited for (by ref); null when the socket closed first. */
  async call(topic: string, event: string, payload: unknown, what: string): Promise<Seen | null> {
    const ref = this.nextRef();
    this.push(ref, ref, topic, event, payload);
    let reply: Seen | undefined;
    await waitFor(`${what}: reply to ${event} ${ref}`, () => {
      reply = this.frames.find((f) => f.ref === ref && f.event === "phx_reply");
      return reply !== undefined || this.closed;
    }, { timeoutMs: 20_000 });
    return reply ?? null;
  }

  close(): void {
    try {
      this.ws.close();
    } catch { /* closed */ }
  }
}

interface Ctx {
  a: TestUser;
  b: TestUser;
  url: string;
  tokens: Record<string, unknown>;
  topics: string[];
}

function b64url(s: string): string {
  return btoa(s).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

/** A kind 0 or kind 3 binary frame with the given fields, lengths possibly lying. */
function binaryFrame(r: SeededRandom, ctx: Ctx): Uint8Array {
  const kind = r.pick([0, 3, 3, 4, 1, 2, 255]);
  const fields = [
    r.pick(["", "1", "r9"]),
    r.pick(["", "2"]),
    r.pick(ctx.topics),
    r.pick(["broadcast", "x", ""]),
  ];
  if (kind === 3) fields.push(r.pick(["", "{}", '{"persist":true}', "null", "5", "{", "[]"]));
  const encoded = fields.map((f) => encoder.encode(f).subarray(0, 255));
  const headerLength = kind === 3 ? 7 : 5;
  const payload = r.pick([
    encoder.encode('{"n":1}'),
    encoder.encode("not json"),
    new Uint8Array([0xff, 0xfe, 0x00]),
    new Uint8Array(0),
    encoder.encode(JSON.stringify({ big: "x".repeat(r.pick([10, 100_000, 1_000_000])) })),
  ]);
  const size = headerLength + encoded.reduce((n, f) => n + f.length, 0) + payload.length;
  const out = new Uint8Array(size);
  out[0] = kind;
  encoded.forEach((f, i) => (out[1 + i] = r.chance(0.1) ? r.int(256) : f.length));
  if (kind === 3) out[6] = r.pick([0, 1, 1, 2, 255]);
  let offset = headerLength;
  for (const f of encoded) {
    out.set(f, offset);
    offset += f.length;
  }
  out.set(payload, offset);
  const cut = r.chance(0.15) ? r.int(out.length + 1) : out.length;
  return out.subarray(0, cut);
}

/** One random frame (or REST call, or connection attempt) from a fuzz socket. */
async function fuzzCase(r: SeededRandom, ctx: Ctx, socket: Socket, log: string[]): Promise<void> {
  const topic = r.pick(ctx.topics);
  const token = () => r.pick(Object.values(ctx.tokens));
  const joinRef = r.pick([null, "1", "2", socket.nextRef(), 5, ""]) as string | null;
  const ref = r.pick([null, socket.nextRef(), socket.nextRef(), "", 7]) as string | null;
  const choice = r.int(12);
  log.push(`choice ${choice} ${topic.slice(0, 60)}`);
  switch (choice) {
    case 0:
    case 1: {
      // A join: odd configs and tokens.
      const config = r.pick<unknown>([
        { private: true },
        { private: true, broadcast: { self: true, ack: true } },
        { private: false, broadcast: { self: true } },
        { private: "true" },
        { private: true, presence: { enabled: true, key: "" } },
        { private: true, postgres_changes: [{ event: "*", schema: "public", table: "reading_progress" }] },
        null,
        [],
        "config",
        { broadcast: null, presence: [], private: 1 },
      ]);
      const payload = r.pick<unknown>([
        { config, access_token: token() },
        { config, user_token: token(), access_token: token() },
        { config },
        { config, access_token: token(), extra: { deep: [[[[{}]]]] } },
        null,
        "payload",
        [config],
        { config, access_token: "x".repeat(r.pick([10, 100_000])) },
      ]);
      socket.push(joinRef, ref, topic, "phx_join", payload);
      return;
    }
    case 2:
      socket.push(
        joinRef,
        ref,
        topic,
        "access_token",
        r.pick([{ access_token: token() }, { access_token: null }, null, "t", {}]),
      );
      return;
    case 3:
      socket.push(
        joinRef,
        ref,
        topic,
        "broadcast",
        r.pick<unknown>([
          { type: "broadcast", event: "note", payload: { n: 1 } },
          { type: "broadcast", event: "INSERT", payload: { user_id: ctx.a.id } },
          { type: "broadcast", event: "x".repeat(300), payload: "y".repeat(r.pick([10, 500_000])) },
          { type: "broadcast" },
          { type: "presence", event: "track" },
          null,
          [1, 2],
        ]),
      );
      return;
    case 4:
      socket.push(
        joinRef,
        ref,
        topic,
        r.pick([
          "phx_leave",
          "presence",
          "heartbeat",
          "phx_close",
          "phx_reply",
          "phx_error",
          "unknown",
          "",
          "PHX_JOIN",
        ]),
        r.pick<unknown>([{}, null, { type: "track", payload: {} }, "s"]),
      );
      return;
    case 5:
      socket.send(binaryFrame(r, ctx));
      return;
    case 6:
      socket.send(r.pick([
        "",
        "x",
        "null",
        "[]",
        "{}",
        "[null,null,null,null,null]",
        '["1","1","phoenix","heartbeat"]',
        "[1,2,3,4,5]",
        '[null,"1",5,"phx_join",{}]',
        '["1","1",null,"broadcast",{}]',
        '["1","1","realtime:x",["phx_join"],{}]',
        '{"topic":5,"event":"phx_join"}',
        '{"topic":"realtime:x","event":"phx_join","payload":null,"ref":{"a":1},"join_ref":[1]}',
        `[${"[".repeat(5000)}${"]".repeat(5000)}]`,
        `["1","1","${"t".repeat(100_000)}","phx_join",{}]`,
        JSON.stringify(["1", "1", topic, "phx_join", { config: { private: true }, access_token: token() }])
          .slice(0, -3),
        "\ufeff[]",
        '["1","1","realtime:a","broadcast",{"type":"broadcast","event":"e","payload":' + "1".repeat(400) +
        "}]",
      ]));
      return;
    case 7: {
      // The other frame shape for this socket's vsn.
      const frame = {
        join_ref: joinRef,
        ref,
        topic,
        event: "phx_join",
        payload: { config: { private: true }, access_token: token() },
      };
      socket.send(socket.vsn === "2.0.0" ? JSON.stringify(frame) : JSON.stringify(Object.values(frame)));
      return;
    }
    case 8: {
      // REST broadcasts with A's token (or a bad one): never a 5xx; private ones to B's topic are dropped.
      const headers = {
        apikey: testEnv().anonKey,
        authorization: `Bearer ${r.pick([ctx.a.accessToken, String(token()), "x"])}`,
        "content-type": r.pick(["application/json", "text/plain"]),
      };
      const single = r.chance(0.4);
      const restTopic = topic.replace(/^realtime:/, "");
      const url = single
        ? `${ctx.url}/realtime/v1/api/broadcast/${
          r.pick([encodeURIComponent(restTopic), "%zz", "a%2Fb"])
        }/events/${r.pick(["e", "%E0%A4%A", ""])}${r.pick(["", "?private=true"])}`
        : `${ctx.url}/realtime/v1/api/broadcast`;
      const body = r.pick<string>([
        "null",
        "[]",
        "5",
        '"s"',
        "{}",
        '{"messages":null}',
        '{"messages":[null]}',
        '{"messages":[5]}',
        '{"messages":"x"}',
        JSON.stringify({ messages: [{ topic: restTopic, event: "e", payload: { n: 1 }, private: true }] }),
        JSON.stringify({ messages: [{ topic: restTopic, event: "e", payload: null, private: "yes" }] }),
        JSON.stringify({ messages: [{ topic: 5, event: "e" }] }),
        "{",
        "",
      ]);
      log.push(`REST ${single ? "single" : "batch"} ${body.slice(0, 60)}`);
      const res = await fetch(url, { method: r.pick(["POST", "POST", "PUT"]), headers, body });
      const text = await res.text();
      assert.ok(res.status < 500, `REST ${url} ${body.slice(0, 200)}: ${res.status} ${text.slice(0, 300)}`);
      return;
    }
    case 9: {
      // A socket that should be refused (bad vsn, no or bad apikey) or an odd one that opens.
      const url = r.pick([
        `${ctx.url.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${testEnv().anonKey}&vsn=3.0.0`,
        `${ctx.url.replace(/^http/, "ws")}/realtime/v1/websocket?vsn=2.0.0`,
        `${ctx.url.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=x.y.z&vsn=2.0.0`,
        `${
          ctx.url.replace(/^http/, "ws")
        }/realtime/v1/websocket?apikey=${testEnv().anonKey}&vsn=2.0.0&vsn=1.0.0`,
        `${ctx.url.replace(/^http/, "ws")}/realtime/v1/websocket/?apikey=${testEnv().anonKey}`,
      ]);
      const s = new Socket(url, "2.0.0");
      await s.opened;
      s.close();
      return;
    }
    case 10:
      socket.push(null, socket.nextRef(), "phoenix", "heartbeat", r.pick<unknown>([{}, null, "x", [1]]));
      return;
    default: {
      // A burst: the same frame many times, without waiting.
      const frame = JSON.stringify([joinRef, ref, topic, r.pick(["broadcast", "phx_join", "access_token"]), {
        access_token: token(),
      }]);
      for (let i = 0; i < 50; i++) socket.send(frame);
    }
  }
}

Deno.test({
  name:
    `realtime fuzz: odd and hostile frames never crash the endpoint nor reach another user (seed ${SEED}, ${CASES} cases)`,
  ...ownEndpoint,
  fn: async () => {
    console.log(`realtime fuzz: READSYNC_FUZZ_SEED=${SEED} READSYNC_FUZZ_CASES=${CASES}`);
    const r = seededRandom(SEED);
    const env = testEnv();
    const events: Record<string, unknown>[] = [];
    const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
      channelErrorBackoffMs: 0,
      connectErrorBackoffMs: 0,
      log: (fields) => events.push(fields),
    });
    const sql = adminSql({ max: 2 });
    const sockets: Socket[] = [];
    try {
      const a = await createTestUser();
      const b = await createTestUser();
      const secret = env.jwtSecret!;
      const now = Math.floor(Date.now() / 1000);
      const sign = (claims: Record<string, unknown>) =>
        signDevJwt({ sub: a.id, role: "authenticated", aud: "authenticated", ...claims }, { secret });
      const none = `${b64url(JSON.stringify({ alg: "none", typ: "JWT" }))}.${
        b64url(JSON.stringify({ sub: b.id, role: "service_role", exp: now + 3600 }))
      }.`;
      // Every credential a fuzz socket may use: A's, broken ones, and none that may read B's topic (no
      // service_role or postgres token signed with the project secret, no token for B).
      const tokens: Record<string, unknown> = {
        a: a.accessToken,
        anon: env.anonKey,
        expired: await mintUserAccessToken(a.id, { expiresInSeconds: -60, secret }),
        forgedB: await mintUserAccessToken(b.id, { secret: "another-secret-with-at-least-32-characters!!" }),
        forgedService: await signDevJwt({ role: "service_role" }, {
          secret: "another-secret-with-at-least-32-characters!!",
        }),
        none,
        hs512B: await new SignJWT({ sub: b.id, role: "authenticated", exp: now + 3600 })
          .setProtectedHeader({ alg: "HS512" }).sign(
            encoder.encode("another-secret-with-at-least-32-characters!!"),
          ),
        upperSubA: await sign({ sub: a.id.toUpperCase() }),
        nobody: await sign({ sub: crypto.randomUUID() }),
        notUuid: await sign({ sub: "user_2abc" }),
        roleArray: await sign({ role: ["authenticated"] }),
        roleMissing: await sign({ role: undefined }),
        roleUnknown: await sign({ role: "no_such_role" }),
        roleEmpty: await sign({ role: "" }),
        nulClaim: await sign({ note: "\u0000" }),
        surrogateClaim: await sign({ note: "\ud800" }),
        subB_withSpace: await sign({ sub: ` ${b.id}` }),
        expString: await sign({ exp: String(now + 3600) }),
        publishable: "sb_publishable_abc",
        empty: "",
        number: 5,
        object: { token: a.accessToken },
        nullToken: null,
        garbage: "a.b.c",
      };
      const wsUrl = (vsn: string) =>
        `${server.url.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=${vsn}`;
      const bTopic = `realtime:progress:${b.id}`;
      const aTopic = `realtime:progress:${a.id}`;
      const topics = [
        bTopic,
        bTopic,
        aTopic,
        `realtime:progress:${b.id.toUpperCase()}`,
        `realtime:progress:${b.id} `,
        `realtime:progress:${b.id}\u0000`,
        `realtime:progress:${b.id}/x`,
        `realtime:PROGRESS:${b.id}`,
        "realtime:progress:",
        "realtime:progress:*",
        "realtime:progress:%",
        "realtime:",
        "realtime:room-1",
        "phoenix",
        "",
        "progress:" + b.id,
        "realtime:" + "t".repeat(300),
        "realtime:émoji📚",
      ];
      const ctx: Ctx = { a, b, url: server.url, tokens, topics };

      // The observers: each on its own progress topic, with its own token.
      const observe = async (user: TestUser, vsn: "1.0.0" | "2.0.0") => {
        const s = new Socket(wsUrl(vsn), vsn);
        assert.ok(await s.opened, "an observer's socket opens");
        const reply = await s.call(`realtime:progress:${user.id}`, "phx_join", {
          config: { private: true, broadcast: { self: false, ack: false } },
          access_token: user.accessToken,
        }, "observer join");
        assert.match(reply?.text ?? "closed", /"status":"ok"/, `observer joined: ${reply?.text}`);
        return s;
      };
      const obsA = await observe(a, "2.0.0");
      const obsB = await observe(b, "1.0.0");
      sockets.push(obsA, obsB);

      const fuzzSockets: Socket[] = [];
      // A socket's vsn comes from a generator of its own: replacing a socket the endpoint closed (when is
      // the machine's timing) takes nothing from the one that picks the frames, so a seed replays them.
      const vsnRng = seededRandom(SEED ^ 0x5bd1e995);
      const openFuzz = async () => {
        const vsn = vsnRng.pick(["1.0.0", "2.0.0"] as const);
        const s = new Socket(wsUrl(vsn), vsn);
        assert.ok(await s.opened, "a fuzz socket opens");
        sockets.push(s);
        return s;
      };
      for (let i = 0; i < 3; i++) fuzzSockets.push(await openFuzz());

      let round = 0;
      let closedByServer = 0;
      /** A row written for A and one for B reach their own observers (and B's does not reach A's). */
      const checkpoint = async (what: string) => {
        round++;
        const aSeries = `rtfza-${SEED.toString(36)}-${round}`;
        const bSeries = `rtfzb-${SEED.toString(36)}-${round}`;
        await writeProgress(sql, a.id, { series_id: aSeries, chapter: round, device_id: "fuzz" });
        await writeProgress(sql, b.id, { series_id: bSeries, chapter: round, device_id: "fuzz" });
        await waitFor(
          `${what}: A's row reaches A's observer`,
          () => obsA.frames.some((f) => f.text.includes(aSeries)),
          {
            timeoutMs: 30_000,
          },
        );
        await waitFor(
          `${what}: B's row reaches B's observer`,
          () => obsB.frames.some((f) => f.text.includes(bSeries)),
          {
            timeoutMs: 30_000,
          },
        );
        assert.ok(
          !obsA.frames.some((f) => f.text.includes(b.id) || f.text.includes("rtfzb-")),
          `${what}: B's rows never reach A`,
        );
        for (const s of [obsA, obsB]) {
          assert.ok(
            await s.call("phoenix", "heartbeat", {}, `${what}: observer heartbeat`),
            `${what}: observer open`,
          );
        }
        for (const [i, s] of fuzzSockets.entries()) {
          // A socket the endpoint closed (a hostile client may be dropped) is replaced.
          if (
            s.closed || (await s.call("phoenix", "heartbeat", {}, `${what}: fuzz socket heartbeat`)) === null
          ) {
            closedByServer++;
            fuzzSockets[i] = await openFuzz();
          }
        }
        checkLeaks(what);
      };
      const checkLeaks = (what: string) => {
        for (const s of sockets) {
          if (s === obsB) continue;
          // What only B's rows carry: their series (rtfzb-…), which no fuzz socket knows. Not B's id: the
          // fuzz sockets name B's topic (give or take a character) and may send it themselves, e.g. a REST
          // broadcast whose body names B's topic, echoed to a fuzz socket that joined that topic publicly.
          const leak = s.frames.find((f) => f.broadcast && f.body.includes("rtfzb-"));
          assert.equal(
            leak,
            undefined,
            `${what}: a broadcast of B's reached another socket: ${leak?.text.slice(0, 300)}`,
          );
        }
        const failed = events.filter((e) => e.event === "frame_failed");
        assert.deepEqual(failed, [], `${what}: the endpoint failed on a frame`);
        // A private progress channel is joined only by the user it is named after.
        const intruders = events.filter((e) => {
          const owner = e.event === "joined" && e.private === true &&
            /^realtime:progress:(.*)$/s.exec(String(e.topic))?.[1];
          return typeof owner === "string" && owner.toLowerCase() !== String(e.sub).toLowerCase();
        });
        assert.deepEqual(intruders, [], `${what}: a private progress channel joined by another user`);
      };

      await checkpoint("before the fuzz");
      for (let i = 0; i < CASES; i++) {
        const log: string[] = [];
        const socket = r.pick(fuzzSockets);
        const what = `case ${i} (seed ${SEED})`;
        try {
          await fuzzCase(r, ctx, socket, log);
        } catch (error) {
          throw new Error(`${what} [${log.join("; ")}]: ${error instanceof Error ? error.message : error}`, {
            cause: error,
          });
        }
        if (i % 25 === 24) await checkpoint(`${what} [${log.join("; ")}]`);
      }
      await checkpoint("after the fuzz");
      const counts = new Map<string, number>();
      for (const e of events) counts.set(String(e.event), (counts.get(String(e.event)) ?? 0) + 1);
      console.log(`fuzz sockets closed by the endpoint: ${closedByServer}`);
      console.log([...counts.entries()].sort().map(([k, n]) => `${k}: ${n}`).join("\n"));
    } finally {
      for (const s of sockets) s.close();
      await sql.end();
      await server.close();
    }
  },
});
