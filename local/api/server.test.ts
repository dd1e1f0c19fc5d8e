// The API server binds the port itself: asked for port 0, it listens on the one the OS gives it as it
// binds, and every URL it hands out names that port (no port picked, released and bound again, which
// another process starting a stack at the same moment could take in between).

import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import { localRealtime, testEnv } from "../../tests/support/env.ts";
import { CONNECTIONS_REMEMBERED, startApiServer } from "./server.ts";

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
