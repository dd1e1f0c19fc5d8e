// The API server binds the port itself: asked for port 0, it listens on the one the OS gives it as it
// binds, and every URL it hands out names that port (no port picked, released and bound again, which
// another process starting a stack at the same moment could take in between).

import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { localRealtime, testEnv } from "../../tests/support/env.ts";
import { CONNECTIONS_REMEMBERED, openConnections, startApiServer } from "./server.ts";

/** The options of a test that runs an API server of its own (on port 0) on the suite's database. */
const OWN_SERVER = {
  // It runs a Realtime endpoint of its own on the suite's database: only where Realtime is the stand-in.
  ignore: !localRealtime || !Deno.env.get("SUPABASE_JWT_SECRET"),
  sanitizeOps: false,
  sanitizeResources: false,
};

Deno.test({
  name: "startApiServer refuses a closeGraceMs no timer can hold (negative, NaN, Infinity, past 2^31-1 ms, " +
    "not a number) before it starts anything, naming the option",
  ignore: OWN_SERVER.ignore,
}, async () => {
  for (const closeGraceMs of [-1, NaN, Infinity, 2 ** 31, "5" as unknown as number]) {
    await assert.rejects(
      ownApiServer({ closeGraceMs }),
      (error: Error) =>
        error instanceof (typeof closeGraceMs === "number" ? RangeError : TypeError) &&
        /^startApiServer option closeGraceMs must be a number of milliseconds from 1 to 2147483647, or 0 \(got /
          .test(error.message),
      `closeGraceMs = ${String(closeGraceMs)}: refused`,
    );
  }
});

/** An API server of this test's own on a port the OS picks, with the suite's database and keys. */
function ownApiServer(options: { closeGraceMs?: number; readTcpTable?: () => string } = {}) {
  const env = testEnv();
  return startApiServer({
    port: 0,
    dbUrl: env.dbUrl,
    jwtSecret: env.jwtSecret!,
    anonKey: env.anonKey,
    serviceRoleKey: env.serviceRoleKey,
    ...options,
  });
}

Deno.test({
  name: "the API server asked for port 0 serves on the port it bound, named in its URL",
  ...OWN_SERVER,
}, async () => {
  const api = await ownApiServer();
  try {
    const port = Number(new URL(api.url).port);
    assert.ok(port > 0, `the URL names the port bound: ${api.url}`);
    assert.throws(
      () => Deno.listen({ hostname: "127.0.0.1", port }).close(),
      Deno.errors.AddrInUse,
      "the server holds that port",
    );
    const unknown = await fetch(`${api.url}/rest/v1/reading_progress`);
    assert.equal(unknown.status, 404);
    assert.equal((await unknown.json()).code, "not_found");
    const fn = await fetch(`${api.url}/functions/v1/progress`);
    await fn.body?.cancel();
    assert.equal(fn.status, 401, "the functions are served there");
  } finally {
    await api.close();
  }
});

Deno.test({
  name:
    "a path the local stack does not serve is a 404 supabase-js reports: .from(), .rpc() and auth get its message, code and hint",
  // The suite's stack: its API is this server only where Realtime is the stand-in (a real stack serves both).
  ignore: !localRealtime,
}, async () => {
  const env = testEnv();
  const supabase = createClient(env.url, env.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false },
  });
  // postgrest-js hands the JSON body over as its error (PostgREST's fields: code, message, details, hint).
  const read = await supabase.from("reading_progress").select("series_id");
  assert.equal(read.status, 404);
  assert.equal(read.error?.code, "not_found");
  assert.equal(read.error?.message, "No local service at /rest/v1/reading_progress");
  assert.equal(read.error?.details, null);
  assert.match(read.error?.hint ?? "", /no Data API/);
  const rpc = await supabase.rpc("write_reading_progress", {});
  assert.equal(rpc.status, 404);
  assert.equal(rpc.error?.message, "No local service at /rest/v1/rpc/write_reading_progress");
  // auth-js takes the body's message as its error's.
  const signIn = await supabase.auth.signInWithPassword({ email: "nobody@example.com", password: "x" });
  assert.equal(signIn.error?.status, 404);
  assert.equal(signIn.error?.message, "No local service at /auth/v1/token");
  const raw = await fetch(`${env.url}/auth/v1/user`);
  assert.match((await raw.json()).hint, /no Auth/);
});

/**
 * Whether a browser's script gets to read `answer` of a request from `origin` without credentials (the
 * Fetch standard's CORS check): `Access-Control-Allow-Origin` is `*` or that origin. Otherwise fetch
 * fails ("Failed to fetch") and the page never sees the status or the body.
 */
function browserReads(answer: Response, origin: string): boolean {
  const allowed = answer.headers.get("access-control-allow-origin");
  return allowed === "*" || allowed === origin;
}

/**
 * Whether a browser takes `answer` as a passed preflight for `method` with `headers` (the Fetch standard's
 * CORS-preflight fetch, no credentials): an ok status (2xx), the CORS check, the method among the allowed
 * ones (or a CORS-safelisted one) and every header among the allowed ones (or `*`).
 */
function preflightPasses(answer: Response, origin: string, method: string, headers: string[]): boolean {
  const list = (name: string) =>
    (answer.headers.get(name) ?? "").split(",").map((item) => item.trim().toLowerCase()).filter(Boolean);
  const methods = list("access-control-allow-methods");
  const allowedHeaders = list("access-control-allow-headers");
  return answer.ok && browserReads(answer, origin) &&
    (["GET", "HEAD", "POST"].includes(method) || methods.includes(method.toLowerCase()) ||
      methods.includes("*")) &&
    headers.every((header) => allowedHeaders.includes(header.toLowerCase()) || allowedHeaders.includes("*"));
}

Deno.test({
  name:
    "CORS as supabase start's Kong adds it: every answer on one of its routes is readable by any origin " +
    "(the gateway's 404s and 400s too) and a preflight there passes; a path no route matches has none",
  // The suite's stack: its API is this server only where Realtime is the stand-in (a real stack serves both).
  ignore: !localRealtime,
}, async () => {
  const env = testEnv();
  const origin = "http://localhost:3000";
  const answers: [string, number][] = [
    // The functions gateway's own answer (an unknown function), before any function runs.
    ["/functions/v1/no-such-function", 404],
    // The progress function's own refusal (it sets its CORS headers itself).
    ["/functions/v1/progress", 401],
    // Services the local stack does not serve, under Kong's rest-v1 and auth-v1 routes.
    ["/rest/v1/reading_progress", 404],
    ["/auth/v1/user", 404],
    ["/auth/v1/.well-known/jwks.json", 200],
    // Realtime's socket route (realtime-v1-ws, /realtime/v1/*): a path Realtime has not, a GET that is no
    // upgrade, and its REST route (realtime-v1-rest).
    ["/realtime/v1/nowhere", 404],
    [`/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`, 400],
    ["/realtime/v1/api/broadcast", 401],
  ];
  for (const [path, status] of answers) {
    const answer = await fetch(`${env.url}${path}`, {
      method: path.endsWith("/broadcast") ? "POST" : "GET",
      headers: { origin },
    });
    await answer.body?.cancel();
    assert.equal(answer.status, status, path);
    assert.ok(
      browserReads(answer, origin),
      `${path}: allow-origin ${answer.headers.get("access-control-allow-origin")}`,
    );
  }
  // supabase-js's preflights for .from() and auth (apikey, authorization, x-client-info: not safelisted)
  // are the gateway's to answer there, so the 404 behind them reaches the page.
  const requested = ["apikey", "authorization", "content-type", "x-client-info"];
  for (const [path, method] of [["/rest/v1/reading_progress", "GET"], ["/auth/v1/token", "POST"]]) {
    const preflight = await fetch(`${env.url}${path}`, {
      method: "OPTIONS",
      headers: {
        origin,
        "access-control-request-method": method,
        "access-control-request-headers": requested.join(","),
      },
    });
    await preflight.body?.cancel();
    assert.equal(preflight.status, 200, `${path}: Kong's preflight`);
    assert.ok(preflightPasses(preflight, origin, method, requested), `${path}: the preflight passes`);
  }
  // functions.invoke() of a name no function has: its preflight (supabase-js sends authorization,
  // apikey, x-client-info) has no function to answer it, so Kong's does, and the page reads the 404.
  const noFunctionPreflight = await fetch(`${env.url}/functions/v1/no-such-function`, {
    method: "OPTIONS",
    headers: {
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers": requested.join(","),
    },
  });
  await noFunctionPreflight.body?.cancel();
  assert.equal(noFunctionPreflight.status, 200, "/functions/v1/no-such-function: Kong's preflight");
  assert.ok(preflightPasses(noFunctionPreflight, origin, "POST", requested));
  // The progress function still answers its own preflight (as it must on a hosted project).
  const fnPreflight = await fetch(`${env.url}/functions/v1/progress`, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "apikey" },
  });
  await fnPreflight.body?.cancel();
  assert.equal(fnPreflight.status, 204);
  assert.ok(preflightPasses(fnPreflight, origin, "POST", ["apikey"]));
  // No Kong route: Kong's own 404, without CORS (its routes' plugins never run).
  for (const path of ["/nowhere", "/rest/v1", "/functions/v1"]) {
    const answer = await fetch(`${env.url}${path}`, { headers: { origin } });
    await answer.body?.cancel();
    assert.equal(answer.status, 404, path);
    assert.equal(answer.headers.get("access-control-allow-origin"), null, path);
  }
});

Deno.test({
  name: "closing the API server is not held for good by a request whose body stopped half-way",
  ...OWN_SERVER,
}, async () => {
  const env = testEnv();
  const api = await ownApiServer({ closeGraceMs: 200 });
  const port = Number(new URL(api.url).port);
  // A REST broadcast announcing 100 bytes and sending 2 (the route reads the body first, and waits for
  // the rest far longer than the 200 ms grace): the connection stays open (the server waits for the rest
  // of the body even once the shutdown has failed the handler's read), and Deno.serve's graceful
  // shutdown waits for the connection.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const errors: string[] = [];
  const originalError = console.error;
  console.error = (...args: unknown[]) => void errors.push(args.map(String).join(" "));
  let guard: ReturnType<typeof setTimeout> | undefined;
  try {
    await conn.write(new TextEncoder().encode(
      "POST /realtime/v1/api/broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
        `apikey: ${env.anonKey}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"`,
    ));
    const stalled = () =>
      api.pending().find((r) => r.method === "POST" && r.path === "/realtime/v1/api/broadcast");
    for (let i = 0; !stalled(); i++) {
      assert.ok(i < 3_000, "the request reached its handler");
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const since = stalled()!.since;
    const closed = await Promise.race([
      api.close().then(() => "closed"),
      new Promise((resolve) => guard = setTimeout(() => resolve("still closing after 30 s"), 30_000)),
    ]);
    assert.equal(closed, "closed");
    const gaveUp = errors.find((line) => /stopped waiting for its connections after 200 ms/.test(line));
    assert.ok(gaveUp, `close() says it left a connection: ${errors.join(" | ")}`);
    // It names the connection and the request it carried well enough to find the test that left it:
    // the client's port and the connection's state, the route, since when, which client (no User-Agent).
    const { port: clientPort } = conn.localAddr as Deno.NetAddr;
    assert.ok(
      gaveUp.includes(
        `1 connection(s) open: from 127.0.0.1:${clientPort} ESTABLISHED, its last request ` +
          `POST /realtime/v1/api/broadcast since ${since.toISOString()} (`,
      ),
      gaveUp,
    );
    assert.match(gaveUp, /s ago\), user-agent none, (answered|not answered)[;)]/);
    Deno.listen({ hostname: "127.0.0.1", port }).close(); // the port is free again (throws AddrInUse if not)
  } finally {
    clearTimeout(guard);
    console.error = originalError;
    conn.close();
  }
});

/** Reads one HTTP answer off `conn` (headers and a Content-Length body): its text. */
async function readAnswer(conn: Deno.Conn): Promise<string> {
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(16_384);
  let text = "";
  for (;;) {
    const end = text.indexOf("\r\n\r\n");
    const length = Number(/content-length: (\d+)/i.exec(text)?.[1] ?? NaN);
    if (end >= 0 && text.length >= end + 4 + length) return text;
    const read = await conn.read(buffer);
    if (read === null) return text;
    text += decoder.decode(buffer.subarray(0, read));
  }
}

Deno.test({
  name:
    "the API server remembers the last request of the client connections still open, not of every client port it has seen",
  ...OWN_SERVER,
}, async () => {
  const api = await ownApiServer();
  const port = Number(new URL(api.url).port);
  const request = (path: string, connection: string) =>
    new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: ${connection}\r\n\r\n`);
  // A connection that stays open all along (as a socket does): close() names its last request.
  const kept = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    await kept.write(request("/kept", "keep-alive"));
    assert.match(await readAnswer(kept), /^HTTP\/1.1 404/);
    // Three times as many connections as the server remembers before it looks which are open, each a new
    // client port, one request each, closed once answered.
    for (let i = 0; i < 3 * CONNECTIONS_REMEMBERED; i++) {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      try {
        await conn.write(request(`/gone/${i}`, "close"));
        assert.match(await readAnswer(conn), /^HTTP\/1.1 404/);
      } finally {
        conn.close();
      }
    }
    const remembered = api.lastRequests();
    assert.ok(
      remembered.length <= CONNECTIONS_REMEMBERED,
      `${remembered.length} connections remembered, of ${3 * CONNECTIONS_REMEMBERED + 1} seen, 1 open`,
    );
    const { port: keptPort } = kept.localAddr as Deno.NetAddr;
    const keptLast = remembered.find((last) => last.from === `127.0.0.1:${keptPort}`);
    assert.equal(keptLast?.request.path, "/kept", "the open connection's last request is remembered");
    assert.equal(keptLast?.answered, true);
  } finally {
    kept.close();
    await api.close();
  }
});

/** The header line of /proc/net/tcp. */
const TCP_TABLE_HEADER =
  "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";

/** A port as /proc/net/tcp writes it: four hexadecimal digits. */
const hexPort = (port: number) => port.toString(16).toUpperCase().padStart(4, "0");

/** 127.0.0.1 as /proc/net/tcp writes it (the address's bytes little-endian, in hexadecimal). */
const LOOPBACK_HEX = "0100007F";

/**
 * A line of /proc/net/tcp as Linux writes it (net/ipv4/tcp_ipv4.c get_tcp4_sock, padded to 149
 * characters): `localAddress`:`localPort` (127.0.0.1 unless said) to 127.0.0.1:`remotePort`, in `state`
 * (01 ESTABLISHED, 0A LISTEN).
 */
function tcpTableLine(
  sl: number,
  localPort: number,
  remotePort: number,
  state = "01",
  localAddress = LOOPBACK_HEX,
): string {
  return (`${String(sl).padStart(4)}: ${localAddress}:${hexPort(localPort)} ${LOOPBACK_HEX}:${
    hexPort(remotePort)
  } ` +
    `${state} 00000000:00000000 00:00000000 00000000  1000        0 ${40_000 + sl} 1 0000000000000000 ` +
    "20 4 30 10 -1").padEnd(149);
}

const httpRequest = (path: string, connection: string) =>
  new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: ${connection}\r\n\r\n`);

/** A keep-alive connection to `port` that has carried one request (GET /kept, answered 404), left open. */
async function keptConnection(port: number): Promise<Deno.TcpConn> {
  const kept = await Deno.connect({ hostname: "127.0.0.1", port });
  await kept.write(httpRequest("/kept", "keep-alive"));
  assert.match(await readAnswer(kept), /^HTTP\/1.1 404/);
  return kept;
}

/**
 * CONNECTIONS_REMEMBERED short connections to `port`, one request each, closed once answered (every answer
 * must be the 404 of an unknown path): with a kept one, the server remembers one more connection than it
 * does before it looks which are open at the last of them, and looks then.
 */
async function shortConnections(port: number): Promise<void> {
  for (let i = 0; i < CONNECTIONS_REMEMBERED; i++) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await conn.write(httpRequest(`/gone/${i}`, "close"));
      const answer = await readAnswer(conn);
      assert.match(answer, /^HTTP\/1.1 404/, `short connection ${i} answered ${answer.split("\r\n")[0]}`);
    } finally {
      conn.close();
    }
  }
}

/** What a test's table is made from when the server reads it: the ports, and the client ports it remembers. */
interface TableSeen {
  serverPort: number;
  keptPort: number;
  /** The client ports of the connections the server remembers as it reads the table (the kept one's too). */
  rememberedPorts: () => number[];
}

/**
 * An API server reading `tableLines` (joined) as its /proc/net/tcp (a throw: that read fails), one
 * connection kept open beside CONNECTIONS_REMEMBERED short ones: how many times it read the table, what it
 * still holds pending, how many connections it remembers and the kept connection's last request path.
 */
async function keptBesideShortConnections(tableLines: (seen: TableSeen, read: number) => string[]) {
  let remembered = (): number[] => [];
  const ports: TableSeen = { serverPort: 0, keptPort: 0, rememberedPorts: () => remembered() };
  let reads = 0;
  const api = await ownApiServer({ readTcpTable: () => [...tableLines(ports, ++reads), ""].join("\n") });
  remembered = () => api.lastRequests().map((last) => Number(last.from.split(":")[1]));
  ports.serverPort = Number(new URL(api.url).port);
  const kept = await keptConnection(ports.serverPort);
  ports.keptPort = (kept.localAddr as Deno.NetAddr).port;
  try {
    await shortConnections(ports.serverPort);
    const remembered = api.lastRequests();
    const keptLast = remembered.find((last) => last.from === `127.0.0.1:${ports.keptPort}`);
    return { reads, pending: api.pending(), remembered: remembered.length, keptPath: keptLast?.request.path };
  } finally {
    kept.close();
    await api.close();
  }
}

Deno.test({
  name:
    "a /proc/net/tcp line the API server cannot parse is skipped when it looks which connections are open: every request answered, none left pending",
  ...OWN_SERVER,
}, async () => {
  // The kernel's table as the server reads it: its listening socket, the kept connection, and a line on the
  // server's port cut short after the local address (no remote address, no state).
  const seen = await keptBesideShortConnections(({ serverPort, keptPort }) => [
    TCP_TABLE_HEADER,
    tcpTableLine(0, serverPort, 0, "0A"),
    tcpTableLine(1, serverPort, keptPort),
    `   2: 0100007F:${hexPort(serverPort)}`,
  ]);
  assert.ok(seen.reads > 0, "the server read the table");
  assert.deepEqual(seen.pending, [], "no request left pending");
  assert.ok(seen.remembered <= 2, `${seen.remembered} connections remembered: the kept one and the last`);
  assert.equal(seen.keptPath, "/kept", "the kept connection's line was read past the one cut short");
});

Deno.test({
  name:
    "an open connection one read of /proc/net/tcp leaves out (a read in pieces while others close) keeps its last request in the API server",
  ...OWN_SERVER,
}, async () => {
  // Every other read of the table leaves the kept connection out, the first among them, as a read of the
  // real table can when connections close between two of its pieces (see openConnections).
  const seen = await keptBesideShortConnections(({ serverPort, keptPort }, read) => [
    TCP_TABLE_HEADER,
    tcpTableLine(0, serverPort, 0, "0A"),
    ...(read % 2 === 0 ? [tcpTableLine(1, serverPort, keptPort)] : []),
  ]);
  assert.ok(seen.reads > 0, "the server read the table");
  assert.ok(seen.remembered <= 2, `${seen.remembered} connections remembered: the kept one and the last`);
  assert.equal(seen.keptPath, "/kept", "the open connection's last request is remembered");
});

Deno.test({
  name:
    "one of the two back-to-back reads of /proc/net/tcp failing: the API server keeps what the other lists, the open connection's last request with it",
  ...OWN_SERVER,
}, async () => {
  // The first read of each look fails (as a read of a file can: EINTR, EMFILE), the second lists the kept
  // connection.
  const seen = await keptBesideShortConnections(({ serverPort, keptPort }, read) => {
    if (read % 2 === 1) throw new Error("this read of the table failed");
    return [TCP_TABLE_HEADER, tcpTableLine(0, serverPort, 0, "0A"), tcpTableLine(1, serverPort, keptPort)];
  });
  assert.equal(seen.keptPath, "/kept", "the open connection's last request is remembered");
  assert.ok(seen.remembered <= 2, `${seen.remembered} connections remembered: the kept one and the last`);
  assert.ok(seen.reads >= 2, `the server read the table (${seen.reads} reads)`);
});

Deno.test({
  name:
    "a socket on the API server's port number but another local address is not taken for one of its connections",
  ...OWN_SERVER,
}, async () => {
  // Beside the kept connection, the table lists for every client port the server remembers a connection
  // open on another address's port of the same number (10.0.0.1, another interface's or a container's
  // server), from that same client address and port: no connection to this server.
  const seen = await keptBesideShortConnections(({ serverPort, keptPort, rememberedPorts }) => [
    TCP_TABLE_HEADER,
    tcpTableLine(0, serverPort, 0, "0A"),
    tcpTableLine(1, serverPort, keptPort),
    ...rememberedPorts().filter((port) => port !== keptPort).map((port, i) =>
      tcpTableLine(2 + i, serverPort, port, "01", "0100000A")
    ),
  ]);
  assert.ok(seen.reads > 0, "the server read the table");
  assert.equal(seen.keptPath, "/kept", "the open connection's last request is remembered");
  assert.ok(seen.remembered <= 2, `${seen.remembered} connections remembered: the kept one and the last`);
});

/**
 * One request over a TCP connection of its own, its target written exactly as given (fetch would resolve
 * dot segments and `\` itself, as browsers do: a script or a proxy sends them as they are). The status line
 * and headers (lower-cased names) and body of the answer.
 */
async function rawRequest(
  url: string,
  target: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; headers: Map<string, string[]>; body: string }> {
  const { hostname, port } = new URL(url);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  try {
    // The Host header is the server's address unless `headers` names one.
    const lines = [
      `GET ${target} HTTP/1.1`,
      `Host: ${headers.host ?? `${hostname}:${port}`}`,
      "Connection: close",
    ];
    for (const [name, value] of Object.entries(headers)) if (name !== "host") lines.push(`${name}: ${value}`);
    await conn.write(new TextEncoder().encode(`${lines.join("\r\n")}\r\n\r\n`));
    const chunks: Uint8Array[] = [];
    for await (const chunk of conn.readable) chunks.push(chunk);
    const text = new TextDecoder().decode(new Uint8Array(chunks.flatMap((chunk) => [...chunk])));
    const [head, ...rest] = text.split("\r\n\r\n");
    const [statusLine, ...headerLines] = head.split("\r\n");
    const answerHeaders = new Map<string, string[]>();
    for (const line of headerLines) {
      const at = line.indexOf(":");
      const name = line.slice(0, at).trim().toLowerCase();
      answerHeaders.set(name, [...(answerHeaders.get(name) ?? []), line.slice(at + 1).trim()]);
    }
    return { status: Number(statusLine.split(" ")[1]), headers: answerHeaders, body: rest.join("\r\n\r\n") };
  } finally {
    try {
      conn.close();
    } catch { /* closed by the server's Connection: close */ }
  }
}

Deno.test({
  name: "a request is routed on the path supabase start's Kong routes it on (its normalized request path), " +
    "so it reaches the service Kong sends it to and no other",
  // The suite's stack: its API is this server only where Realtime is the stand-in (a real stack serves both).
  ignore: !localRealtime,
}, async () => {
  const env = testEnv();
  const origin = "http://localhost:3000";
  // [target as sent, status, what answers, whether a Kong route (its cors plugin) matched]: the progress
  // function's own 401 (no token), the gateway's 404 of a name no function has, or the local stack's 404 of
  // a path it does not serve (under Kong's rest-v1 route, or under none: Kong's own 404, without CORS).
  const cases: [string, number, "progress" | "not_found" | "Function not found", boolean][] = [
    // `\` is no path separator to Kong: `/rest/v1\` is under no route (a URL parser takes `\` for `/` and
    // resolved this to /functions/v1/progress, which answered), and with a `/` after v1 it is the Data API's.
    ["/rest/v1\\..\\..\\functions/v1/progress", 404, "not_found", false],
    ["/rest/v1/\\..\\..\\functions/v1/progress", 404, "not_found", true],
    ["/rest/v1/%5C..%5C..%5Cfunctions/v1/progress", 404, "not_found", true],
    // Encoded dots are dot segments to Kong too (it decodes them first), and resolved the same way.
    ["/rest/v1/%2e%2e/%2e%2e/functions/v1/progress", 401, "progress", true],
    ["/functions/v1/progress/%2E%2E/%2e%2e/%2e%2e/rest/v1/reading_progress", 404, "not_found", true],
    // An encoded slash stays encoded: one segment, a name no function has, or under no route at all.
    ["/functions/v1/progress%2F..%2F..%2Fother", 404, "Function not found", true],
    ["/functions/v1%2Fprogress", 404, "not_found", false],
    // Kong merges slashes before it matches: this is the function.
    ["//functions//v1/progress", 401, "progress", true],
    // Kong decodes unreserved characters too, and hands the edge runtime the decoded path: `progress`.
    ["/functions/v1/%70rogress", 401, "progress", true],
    ["/functions/v1/%70%72%6f%67%72%65%73%73/series/x", 401, "progress", true],
  ];
  for (const [target, status, what, onRoute] of cases) {
    const answer = await rawRequest(env.url, target, { origin });
    assert.equal(answer.status, status, `${target}: ${answer.body}`);
    if (what === "not_found") assert.equal(JSON.parse(answer.body).code, "not_found", target);
    else if (what === "progress") {
      assert.match(answer.body, /"code"\s*:\s*"/, `${target}: the function's 401`);
    } else assert.equal(answer.body, what, target);
    // Under a Kong route the answer carries its CORS header, once; Kong's no-route 404 has none.
    const allowOrigin = answer.headers.get("access-control-allow-origin");
    assert.deepEqual(allowOrigin, onRoute ? ["*"] : undefined, `${target}: allow-origin`);
  }
});

Deno.test({
  name:
    "a Host header nginx refuses (a `/` in it, empty, `..`) or no URL parser reads is a 400 naming it, on the API " +
    "server and a Realtime server of its own, instead of moving the path or a 500",
  ignore: !localRealtime,
}, async () => {
  const env = testEnv();
  const { startRealtimeServer } = await import("../realtime/endpoint.ts");
  const realtime = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
  try {
    // Deno writes the Host before the request target in req.url: with a `/` in it, `/rest/v1/x` read as
    // `/functions/v1/progress?/rest/v1/x` reached the function (nginx, in front of Kong's router, answers a
    // Host with a `/` 400: ngx_http_validate_host); `a b`, `a%b` and `a:b:c` are no URL's host (a 500).
    for (const url of [env.url, realtime.url]) {
      for (
        const [target, host] of [
          ["/rest/v1/reading_progress", "127.0.0.1/functions/v1/progress?"],
          ["/realtime/v1/nowhere", "127.0.0.1/functions/v1/progress?"],
          ["/functions/v1/progress", "a b"],
          ["/realtime/v1/api/broadcast", "a%b"],
          ["/functions/v1/progress", "a:b:c"],
          // nginx's ngx_http_validate_host refuses these too (a 400 before Kong routes): an empty Host, one
          // empty once its port or its one trailing dot is cut, and two dots in a row.
          ["/functions/v1/progress", ""],
          ["/functions/v1/progress", ":54321"],
          ["/realtime/v1/api/broadcast", "."],
          ["/functions/v1/progress", "a..b"],
          ["/rest/v1/reading_progress", "..:54321"],
        ]
      ) {
        const answer = await rawRequest(url, target, { host, origin: "http://localhost:3000" });
        assert.equal(answer.status, 400, `${url} ${target}, Host ${host}: ${answer.body}`);
        const body = JSON.parse(answer.body);
        assert.equal(body.code, "bad_request", `${target}, Host ${host}`);
        assert.ok(body.message.includes(JSON.stringify(host)), `${body.message}: names the Host`);
      }
      // A Host Deno and a URL parser read as the server's (Kong routes on the path alone); a trailing dot
      // and a lone dot before the name are nginx's too.
      for (const host of ["localhost", "localhost.", ".localhost:1"]) {
        const fine = await rawRequest(url, "/realtime/v1/nowhere", { host });
        assert.equal(fine.status, 404, `${url}, Host ${host}: ${fine.body}`);
      }
    }
  } finally {
    await realtime.close();
  }
});

Deno.test({
  name:
    "a function named with percent-encoded letters is that function, as Kong hands the edge runtime the " +
    "decoded path: its preflight is the function's own, its call reaches it, the path it reads is decoded",
  ignore: !localRealtime,
}, async () => {
  const env = testEnv();
  const origin = "http://localhost:3000";
  const preflight = await fetch(`${env.url}/functions/v1/%70rogress`, {
    method: "OPTIONS",
    headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "apikey" },
  });
  await preflight.body?.cancel();
  assert.equal(preflight.status, 204, "the progress function's own preflight, not Kong's 200");
  assert.ok(preflightPasses(preflight, origin, "POST", ["apikey"]));
  // supabase-js's functions client, at a name written with an escape: the function's 401 (no token), read
  // by the page, instead of the gateway's 404.
  const supabase = createClient(env.url, env.anonKey);
  const { error } = await supabase.functions.invoke("%70rogress/series/x", {
    method: "GET",
    headers: { authorization: "Bearer not-a-token", origin },
  });
  assert.ok(error, "an answer that is no 2xx");
  const answer = (error as { context?: Response }).context!;
  assert.equal(answer.status, 401, "the function's own 401");
  assert.equal((await answer.json()).error.code, "invalid_token");
  assert.ok(browserReads(answer, origin), "the page reads it");
});

/** A supabase/ directory of two functions: `fine` (answers 200) and `broken` (throws while it loads). */
async function functionsFixture(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "readsync-api-functions-" });
  for (
    const [name, source] of [
      ["fine", `Deno.serve(() => new Response("fine"));\n`],
      ["broken", `throw new Error("cannot boot");\n`],
    ]
  ) {
    await Deno.mkdir(`${dir}/functions/${name}`, { recursive: true });
    await Deno.writeTextFile(`${dir}/functions/${name}/index.ts`, source);
  }
  await Deno.writeTextFile(
    `${dir}/config.toml`,
    `[functions.fine]\nverify_jwt = false\n\n[functions.broken]\nverify_jwt = false\n`,
  );
  return dir;
}

Deno.test({
  name:
    "a function that failed to load: Kong's cors plugin answers its preflight (200), so a browser reads " +
    "the gateway's 503 BOOT_ERROR behind it, as on supabase start",
  ...OWN_SERVER,
}, async () => {
  const supabaseDir = await functionsFixture();
  const env = testEnv();
  const api = await startApiServer({
    port: 0,
    dbUrl: env.dbUrl,
    jwtSecret: env.jwtSecret!,
    anonKey: env.anonKey,
    serviceRoleKey: env.serviceRoleKey,
    supabaseDir,
  });
  try {
    const origin = "http://localhost:3000";
    const requested = ["authorization", "apikey", "x-client-info", "content-type"];
    const preflight = await fetch(`${api.url}/functions/v1/broken`, {
      method: "OPTIONS",
      headers: {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": requested.join(","),
      },
    });
    await preflight.body?.cancel();
    assert.equal(preflight.status, 200, "Kong's preflight, not the gateway's 503");
    assert.ok(preflightPasses(preflight, origin, "POST", requested), "the preflight passes");
    const call = await fetch(`${api.url}/functions/v1/broken`, { method: "POST", headers: { origin } });
    assert.equal(call.status, 503);
    assert.equal((await call.json()).code, "BOOT_ERROR");
    assert.ok(browserReads(call, origin), "the page reads the 503");
    // A function that loaded still answers its own (here: its 200 with no CORS header of its own, which
    // Kong's header filter then marks).
    const own = await fetch(`${api.url}/functions/v1/fine`, {
      method: "OPTIONS",
      headers: { origin, "access-control-request-method": "POST" },
    });
    assert.equal(await own.text(), "fine", "the loaded function answered its own preflight");
  } finally {
    await api.close();
    await Deno.remove(supabaseDir, { recursive: true });
  }
});

Deno.test({
  name: "Realtime's REST routes: an OPTIONS that is no preflight reaches Realtime (its router's 404), a " +
    "preflight is Kong's 200, on the API server and on a Realtime server of its own",
  ...OWN_SERVER,
}, async () => {
  const env = testEnv();
  const { startRealtimeServer } = await import("../realtime/endpoint.ts");
  const realtime = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
  const origin = "http://localhost:3000";
  try {
    for (const url of [env.url, realtime.url]) {
      for (const path of ["/realtime/v1/api/broadcast", "/realtime/v1/api/broadcast/topic/events/ev"]) {
        // Not a preflight (no Origin, no Access-Control-Request-Method): Kong's plugin lets it through,
        // and Realtime has no OPTIONS route.
        const plain = await fetch(`${url}${path}`, { method: "OPTIONS" });
        assert.equal(plain.status, 404, `${url}${path}: plain OPTIONS`);
        assert.equal(await plain.text(), "Not Found");
        assert.equal(plain.headers.get("access-control-allow-origin"), "*", "marked by Kong's header filter");
        const preflight = await fetch(`${url}${path}`, {
          method: "OPTIONS",
          headers: {
            origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "apikey",
          },
        });
        await preflight.body?.cancel();
        assert.equal(preflight.status, 200, `${url}${path}: preflight`);
        assert.ok(preflightPasses(preflight, origin, "POST", ["apikey"]));
      }
      // Every answer under Kong's realtime routes is marked on a Realtime server of its own too.
      const nowhere = await fetch(`${url}/realtime/v1/nowhere`, { headers: { origin } });
      await nowhere.body?.cancel();
      assert.equal(nowhere.status, 404);
      assert.equal(nowhere.headers.get("access-control-allow-origin"), "*", `${url}: /realtime/v1/nowhere`);
    }
  } finally {
    await realtime.close();
  }
});

/** A PostgreSQL ErrorResponse (FATAL 28P01), what a server refusing a login sends before it closes. */
function loginRefused(): Uint8Array {
  const fields = "SFATAL\0C28P01\0Mpassword authentication failed\0\0";
  const body = new TextEncoder().encode(fields);
  const message = new Uint8Array(5 + body.length);
  message[0] = "E".charCodeAt(0);
  new DataView(message.buffer).setInt32(1, 4 + body.length);
  message.set(body, 5);
  return message;
}

Deno.test({
  name: "the 500 of a request whose service failed to start carries Kong's CORS header (its header filter " +
    "marks a service's 500 and Kong's own error pages alike), and a preflight then is Kong's 200",
  ...OWN_SERVER,
}, async () => {
  const env = testEnv();
  // A database that takes Realtime's connections and answers none until the test says: Realtime's start
  // (after the functions have loaded and the server listens) waits on it, and then fails on its refusal.
  const database = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const connected = Promise.withResolvers<Deno.Conn>();
  const held: Deno.Conn[] = [];
  /** Once the test says so: every connection refused, those taken and each one that comes after. */
  const refuse = Promise.withResolvers<void>();
  /**
   * Reads a client's startup message, answering `N` (none) to each request for TLS or GSS encryption before
   * it. A refusal written before the client has sent its startup message is not read as the answer to it
   * (postgres.js then waited out its 30 s connect timeout).
   */
  const startupRead = async (conn: Deno.Conn) => {
    const buffer = new Uint8Array(1024);
    const view = new DataView(buffer.buffer);
    for (;;) {
      const read = await conn.read(buffer);
      // An SSLRequest (80877103) or a GSSENCRequest (80877104, libpq's first): answered `N`, read on.
      if (read !== 8 || view.getInt32(0) !== 8 || ![80877103, 80877104].includes(view.getInt32(4))) return;
      await conn.write(new TextEncoder().encode("N"));
    }
  };
  const accepting = (async () => {
    for await (const conn of database) {
      held.push(conn);
      // Each connection is refused once its startup message is in (the login it refuses), and only once the
      // test says so; then closed, as PostgreSQL's backend exits after a FATAL (postgres.js rejects the
      // connect when the socket closes: left open, it waited out its 30 s connect timeout first).
      void startupRead(conn).then(async () => {
        connected.resolve(conn);
        await refuse.promise;
        await conn.write(loginRefused());
        conn.close();
      }).catch(() => {});
    }
  })();
  const functionsLoaded = Promise.withResolvers<string>();
  const origin = "http://localhost:3000";
  // The two requests the server has taken (the event, not a guess at how long that takes).
  const taken = { broadcast: Promise.withResolvers<void>(), preflight: Promise.withResolvers<void>() };
  const starting = startApiServer({
    port: 0,
    dbUrl: `postgresql://postgres:postgres@127.0.0.1:${database.addr.port}/postgres`,
    jwtSecret: env.jwtSecret!,
    anonKey: env.anonKey,
    serviceRoleKey: env.serviceRoleKey,
    // The functions gateway has set SUPABASE_URL (this server's URL) for the functions as it made them.
    onPhase: (name) => {
      if (name.startsWith("API: functions gateway")) functionsLoaded.resolve(Deno.env.get("SUPABASE_URL")!);
    },
    onRequest: ({ method, path }) => {
      if (method === "POST" && path === "/realtime/v1/api/broadcast") taken.broadcast.resolve();
      if (method === "OPTIONS" && path === "/functions/v1/progress") taken.preflight.resolve();
    },
  });
  starting.catch(() => {}); // awaited below
  try {
    const url = await functionsLoaded.promise;
    await connected.promise; // Realtime's start is waiting on the database, its login sent
    // A request for Realtime and a preflight to a function, both waiting for the services once the server
    // has taken them (onRequest); only then does the database refuse Realtime's start.
    const broadcast = fetch(`${url}/realtime/v1/api/broadcast`, { method: "POST", headers: { origin } });
    const preflight = fetch(`${url}/functions/v1/progress`, {
      method: "OPTIONS",
      headers: {
        origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "apikey",
      },
    });
    await Promise.all([taken.broadcast.promise, taken.preflight.promise]);
    refuse.resolve();
    const failed = await broadcast;
    await failed.body?.cancel();
    assert.equal(failed.status, 500);
    assert.equal(
      failed.headers.get("access-control-allow-origin"),
      "*",
      "the 500 under Kong's route is marked",
    );
    const answered = await preflight;
    await answered.body?.cancel();
    assert.equal(answered.status, 200, "Kong answers a preflight before any service is asked");
    assert.ok(preflightPasses(answered, origin, "POST", ["apikey"]));
    await assert.rejects(starting, "the start failed on the database's refusal");
  } finally {
    database.close();
    for (const conn of held) {
      try {
        conn.close();
      } catch { /* closed by its client */ }
    }
    await accepting.catch(() => {});
  }
});

Deno.test({
  name:
    "the API server listens on the IPv4 address it is given (127.0.0.1 unless given), named in its URL, " +
    "and refuses a hostname that is no IPv4 address before it starts anything",
  ...OWN_SERVER,
}, async () => {
  for (const hostname of ["localhost", "::1", "127.1", "0.0.0.256", ""]) {
    await assert.rejects(
      startApiServer({
        port: 0,
        dbUrl: "postgresql://unused",
        jwtSecret: "x",
        anonKey: "",
        serviceRoleKey: "",
        hostname,
      }),
      (error: Error) =>
        error instanceof TypeError &&
        error.message.startsWith("startApiServer option hostname must be an IPv4"),
      `hostname ${JSON.stringify(hostname)}: refused`,
    );
  }
  const env = testEnv();
  // Another loopback address (Linux routes all of 127.0.0.0/8 to this machine): the server is there only.
  const api = await startApiServer({
    port: 0,
    hostname: "127.0.0.2",
    dbUrl: env.dbUrl,
    jwtSecret: env.jwtSecret!,
    anonKey: env.anonKey,
    serviceRoleKey: env.serviceRoleKey,
  });
  try {
    const { hostname, port } = new URL(api.url);
    assert.equal(hostname, "127.0.0.2");
    const answer = await fetch(`${api.url}/functions/v1/progress`);
    await answer.body?.cancel();
    assert.equal(answer.status, 401, "served at the address given");
    await assert.rejects(
      Deno.connect({ hostname: "127.0.0.1", port: Number(port) }),
      Deno.errors.ConnectionRefused,
      "not on 127.0.0.1",
    );
  } finally {
    await api.close();
  }
});

Deno.test({
  name: "READSYNC_API_HOST=0.0.0.0: the API is reached at an address of this machine other than 127.0.0.1, " +
    "supabase-js's functions and Realtime included, and its URL for this machine names 127.0.0.1",
  ...OWN_SERVER,
}, async () => {
  const env = testEnv();
  const api = await startApiServer({
    port: 0,
    hostname: "0.0.0.0",
    dbUrl: env.dbUrl,
    jwtSecret: env.jwtSecret!,
    anonKey: env.anonKey,
    serviceRoleKey: env.serviceRoleKey,
  });
  try {
    const { hostname, port } = new URL(api.url);
    assert.equal(hostname, "127.0.0.1");
    // 127.0.0.2 stands for the address a phone uses (this machine's LAN address): a server on 127.0.0.1 only
    // refuses it (the test above), one on every interface takes it. Only loopback addresses are used here.
    const elsewhere = `http://127.0.0.2:${port}`;
    const supabase = createClient(elsewhere, env.anonKey);
    const { error } = await supabase.functions.invoke("progress", { method: "GET" });
    const answer = (error as { context?: Response } | null)?.context;
    // supabase-js sends the anon key as the token: the function's own refusal of a token that is no user's.
    assert.equal(answer?.status, 403, "the progress function's own 403, at the other address");
    assert.equal(typeof (await answer!.json()).error.code, "string");
    const channel = supabase.channel("lan-check");
    const status = await new Promise<string>((resolve) =>
      channel.subscribe((s) => s !== "CLOSED" && resolve(s))
    );
    assert.equal(status, "SUBSCRIBED", "the Realtime socket at the other address");
    await supabase.removeAllChannels();
  } finally {
    await api.close();
  }
});

Deno.test("a server on 0.0.0.0 has its connections at any local address: openConnections lists them all", () => {
  const table = [
    TCP_TABLE_HEADER,
    tcpTableLine(0, 54321, 0, "0A", "00000000"),
    tcpTableLine(1, 54321, 40001),
    tcpTableLine(2, 54321, 40002, "01", "0100000A"),
    tcpTableLine(3, 54322, 40003),
  ].join("\n");
  const listed = (address: string) =>
    openConnections(54321, () => table, address)?.map(({ from }) => from).sort();
  assert.deepEqual(listed("0.0.0.0"), ["127.0.0.1:40001", "127.0.0.1:40002"]);
  assert.deepEqual(listed("127.0.0.1"), ["127.0.0.1:40001"], "an address given: its own only");
});

/**
 * A WebSocket to `url` (a URL parser keeps `//` and `%77` in a path as written): opens it, sends Phoenix's
 * heartbeat (serializer 2.0.0) and returns the first message the socket answers, or why it failed.
 */
async function heartbeatReply(url: string): Promise<string> {
  const socket = new WebSocket(url);
  try {
    return await new Promise<string>((resolve) => {
      socket.onopen = () => socket.send(JSON.stringify([null, "1", "phoenix", "heartbeat", {}]));
      socket.onmessage = (event) => resolve(String(event.data));
      socket.onerror = () => resolve("socket error");
      socket.onclose = (event) => resolve(`closed ${event.code}`);
    });
  } finally {
    const closed = new Promise((resolve) => socket.addEventListener("close", resolve));
    if (socket.readyState !== WebSocket.CLOSED) {
      socket.close();
      await closed;
    }
  }
}

Deno.test({
  name: "a Realtime socket asked for at a path Kong normalizes to the socket's route (merged slashes, an " +
    "encoded letter) is upgraded and answers, as Kong routes it there",
  ignore: !localRealtime,
}, async () => {
  const env = testEnv();
  const query = `?apikey=${env.anonKey}&vsn=2.0.0`;
  for (const path of ["/realtime/v1/websocket", "/realtime/v1//websocket", "//realtime/v1/%77ebsocket"]) {
    const reply = await heartbeatReply(`${env.url.replace(/^http/, "ws")}${path}${query}`);
    assert.match(reply, /^\[null,"1","phoenix","phx_reply",\{"status":"ok"/, `${path}: ${reply}`);
  }
});

/** How many TCP sockets this process listens on (its descriptors' sockets /proc/net/tcp lists as LISTEN). */
function listeningSocketsOfThisProcess(): number {
  const inodes = new Set<string>();
  for (const entry of Deno.readDirSync("/proc/self/fd")) {
    try {
      const link = Deno.readLinkSync(`/proc/self/fd/${entry.name}`);
      if (link.startsWith("socket:[")) inodes.add(link.slice("socket:[".length, -1));
    } catch { /* closed meanwhile */ }
  }
  return Deno.readTextFileSync("/proc/net/tcp").split("\n").slice(1).filter((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[3] === "0A" && inodes.has(fields[9]);
  }).length;
}

Deno.test({
  name: "an API server whose functions gateway fails to start (its config.toml unreadable) after the " +
    "functions' database relay opened (a connection no URL can say: a socket directory) leaves nothing " +
    "listening, the relay included, instead of a relay left open for the process's life",
  ignore: Deno.build.os !== "linux",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const supabaseDir = await Deno.makeTempDir({ prefix: "readsync-api-unreadable-config-" });
  try {
    await Deno.mkdir(`${supabaseDir}/config.toml`); // a directory: reading it fails (not NotFound)
    const before = listeningSocketsOfThisProcess();
    await assert.rejects(
      startApiServer({
        port: 0,
        dbUrl: `postgresql:///postgres?host=${encodeURIComponent(supabaseDir)}`,
        db: {
          options: {
            path: `${supabaseDir}/.s.PGSQL.5432`,
            database: "postgres",
            username: "postgres",
            connection: {},
            ssl: false,
          },
          server: `${supabaseDir}/.s.PGSQL.5432`,
        },
        jwtSecret: "a-development-secret-of-at-least-32-characters",
        anonKey: "anon",
        serviceRoleKey: "service",
        supabaseDir,
      }),
      (error: Error) => /config\.toml|directory/i.test(error.message),
    );
    assert.equal(listeningSocketsOfThisProcess(), before, "no socket of the failed start is left listening");
  } finally {
    await Deno.remove(supabaseDir, { recursive: true });
  }
});
