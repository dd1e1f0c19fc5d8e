// A client that closes its WebSocket while the endpoint is still checking the connect (the key's
// verification, held by the test) is not upgraded: the endpoint keeps no Connection for it and the server
// closes its end of the TCP connection. Before, such a request was upgraded, and Deno.serve neither
// completed nor failed that upgrade: the socket stayed CONNECTING without an event, its Connection stayed
// counted, and the server's end stayed open (CLOSE_WAIT) until the process ended, holding Deno.serve's
// graceful shutdown (seen at the end of a CI run: the API server's close() gave up on such a connection,
// from realtime-auth-refresh.test.ts's TOKEN_REFRESHED test, whose client subscribes and disconnects within
// ~200 ms), when the key's verification waited for WebCrypto the first time a key was seen.
//
// That wait no longer happens: the key is checked at once (auth.ts computes the HMAC itself), so no turn
// of the event loop passes between the request's arrival and the upgrade, in which a client could leave
// without Deno.serve having said so yet (its signal comes a turn after it has seen the client go). The
// second test holds the endpoint to that for a key it has not seen before, WebCrypto made unusable.
//
// The last two hold the 101 the endpoint made (a server of the test's own): a client that Deno.serve
// has seen go before it got the 101 leaves a socket Deno never opens nor fails, whose Connection the
// endpoint used to keep (counted, in the idle sweep's set, held by the socket's handlers); and a socket
// still CONNECTING past the endpoint's upgrade bound is let go, then closed if it opens after all.

import assert from "node:assert/strict";
import { TokenVerifier } from "../../local/realtime/auth.ts";
import { createRealtimeEndpoint, type RealtimeEndpoint } from "../../local/realtime/endpoint.ts";
import { openConnections } from "../../local/api/server.ts";
import { mintUserAccessToken } from "../../local/stack/keys.ts";
import { testEnv } from "../support/env.ts";
import { ownEndpoint, waitFor, within } from "./realtime_support.ts";

Deno.test({
  name:
    "realtime endpoint: a client that leaves while its key is being verified is not upgraded: no Connection kept, the server closes its end, shutdown is not held",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const logs: Record<string, unknown>[] = [];
  const endpoint = await createRealtimeEndpoint({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, {
    log: (fields) => logs.push(fields),
  });
  // The endpoint on a server of the test's own, which hands the test each request and its handling.
  const arrivals: { req: Request; from: string; answer: Promise<Response> }[] = [];
  const arrived = Promise.withResolvers<void>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req, info) => {
    const answer = Promise.resolve(endpoint.handle(req, info));
    // The client's address, read now: Deno.serve no longer gives it once the request is answered.
    arrivals.push({ req, from: `${info.remoteAddr.hostname}:${info.remoteAddr.port}`, answer });
    arrived.resolve();
    return answer;
  });
  // The key's verification held until the test lets it go: the client leaves during it.
  const verify = TokenVerifier.prototype.verify;
  const verifying = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  TokenVerifier.prototype.verify = async function (this: TokenVerifier, ...args) {
    verifying.resolve();
    await release.promise;
    return await verify.apply(this, args);
  };
  let shutDown = false;
  try {
    const url = `ws://127.0.0.1:${server.addr.port}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`;
    const leaving = new WebSocket(url);
    leaving.onerror = () => {}; // it never opens: closed while connecting
    const clientClosed = new Promise((resolve) => leaving.addEventListener("close", resolve));
    await arrived.promise;
    const { req, from, answer } = arrivals[0];
    const serverSawItGo = new Promise((resolve) => req.signal.addEventListener("abort", resolve));
    await verifying.promise;
    leaving.close();
    await within("the client's close", clientClosed);
    await within("Deno.serve seeing the client go", serverSawItGo);
    release.resolve();
    await within("the endpoint's answer", answer);

    assert.equal(endpoint.stats().connections, 0, "no Connection kept for the client that left");
    assert.ok(logs.some((l) => l.event === "socket_client_left"), JSON.stringify(logs));
    // The server's end of that TCP connection is closed (gone from the kernel's table, not CLOSE_WAIT).
    const stillOpen = () => openConnections(server.addr.port)?.find((c) => c.from === from);
    await waitFor(`the server's end of ${from} closed (${stillOpen()?.state})`, () => !stillOpen());

    // A client that stays is upgraded as before.
    const staying = new WebSocket(url);
    await within(
      "the next socket's open",
      new Promise((resolve) => staying.addEventListener("open", resolve)),
    );
    await waitFor("its Connection", () => endpoint.stats().connections === 1);
    const stayingClosed = new Promise((resolve) => staying.addEventListener("close", resolve));
    staying.close();
    await within("its close", stayingClosed);
    await waitFor("its Connection dropped", () => endpoint.stats().connections === 0);

    // Nothing holds Deno.serve's graceful shutdown.
    await endpoint.close();
    await within("the server's shutdown", server.shutdown());
    shutDown = true;
  } finally {
    TokenVerifier.prototype.verify = verify;
    release.resolve();
    if (!shutDown) {
      await endpoint.close();
      // A connection the old code left open would hold shutdown() for good: not awaited then.
      void server.shutdown();
    }
  }
});

Deno.test({
  name:
    "realtime endpoint: a socket whose key it has not seen (a user's token) is upgraded without waiting for WebCrypto",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const logs: Record<string, unknown>[] = [];
  const endpoint = await createRealtimeEndpoint(
    { dbUrl: env.dbUrl, jwtSecret: env.jwtSecret!, anonKey: env.anonKey },
    { connectErrorBackoffMs: 0, log: (fields) => logs.push(fields) },
  );
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req, info) => endpoint.handle(req, info),
  );
  const userToken = await mintUserAccessToken(crypto.randomUUID(), { secret: env.jwtSecret! });
  // From here WebCrypto refuses to work: an endpoint that awaited it to check the key (jose's jwtVerify
  // did, a turn of the event loop) would refuse the socket.
  const subtle = crypto.subtle as unknown as Record<string, unknown>;
  const methods = ["importKey", "sign", "verify", "digest"];
  const used: string[] = [];
  for (const method of methods) {
    Object.defineProperty(subtle, method, {
      configurable: true,
      value: () => {
        used.push(method);
        return Promise.reject(new Error(`WebCrypto's ${method} was used`));
      },
    });
  }
  let socket: WebSocket | undefined;
  try {
    socket = new WebSocket(
      `ws://127.0.0.1:${server.addr.port}/realtime/v1/websocket?apikey=${userToken}&vsn=2.0.0`,
    );
    const opened = new Promise<boolean>((resolve) => {
      socket!.onopen = () => resolve(true);
      socket!.onerror = () => resolve(false);
    });
    assert.ok(await within("the socket's open or refusal", opened), JSON.stringify(logs));
    assert.deepEqual(used, [], "the endpoint waited for WebCrypto");
    await waitFor("its Connection", () => endpoint.stats().connections === 1);
  } finally {
    for (const method of methods) delete subtle[method];
    if (socket && socket.readyState !== WebSocket.CLOSED) {
      const closed = new Promise((resolve) => socket!.addEventListener("close", resolve));
      socket.close();
      await within("the socket's close", closed);
    }
    await endpoint.close();
    await server.shutdown();
  }
});

/**
 * The endpoint on a server of the test's own that holds each 101 the endpoint answers until the test lets
 * it go, and hands the test the request whose upgrade it holds.
 */
function holdingServer(endpoint: RealtimeEndpoint) {
  const upgraded = Promise.withResolvers<Request>();
  const release = Promise.withResolvers<void>();
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req, info) => {
    const answer = await endpoint.handle(req, info);
    if (answer.status !== 101) return answer;
    upgraded.resolve(req);
    await release.promise;
    return answer;
  });
  return { server, upgraded: upgraded.promise, release: () => release.resolve() };
}

Deno.test({
  name:
    "realtime endpoint: a client gone once its upgrade is made, before Deno.serve sends the 101: its Connection is let go at once",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const logs: Record<string, unknown>[] = [];
  // Neither the idle sweep nor the upgrade bound lets it go here: only the client's leaving can.
  const endpoint = await createRealtimeEndpoint(
    { dbUrl: env.dbUrl, jwtSecret: env.jwtSecret!, anonKey: env.anonKey },
    { idleTimeoutMs: 0, upgradeTimeoutMs: 2 ** 31 - 1, log: (fields) => logs.push(fields) },
  );
  const { server, upgraded, release } = holdingServer(endpoint);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  try {
    await conn.write(new TextEncoder().encode(
      `GET /realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        "Sec-WebSocket-Version: 13\r\n\r\n",
    ));
    const req = await within("the endpoint's upgrade", upgraded);
    const { connections, upgrading } = endpoint.stats();
    assert.deepEqual({ connections, upgrading }, { connections: 1, upgrading: 1 });
    // The client goes, and Deno.serve sees it go (the request's signal) before it has the 101: such a
    // socket it neither opens nor fails (CONNECTING for good, the server's end in CLOSE_WAIT).
    const sawItGo = new Promise((resolve) => req.signal.addEventListener("abort", resolve));
    conn.close();
    await within("Deno.serve seeing the client go", sawItGo);
    release();
    await waitFor(
      `the Connection let go (${JSON.stringify(endpoint.stats())}; ${JSON.stringify(logs)})`,
      () => endpoint.stats().connections === 0 && endpoint.stats().upgrading === 0,
    );
    const abandoned = logs.find((l) => l.event === "socket_upgrade_abandoned");
    assert.equal(abandoned?.reason, "the client left", JSON.stringify(logs));
  } finally {
    release();
    try {
      conn.close();
    } catch { /* closed above */ }
    await endpoint.close();
    // Deno.serve keeps its end of that connection (CLOSE_WAIT), which holds its graceful shutdown: not
    // awaited (nothing of the endpoint's is in it any more).
    void server.shutdown();
  }
});

Deno.test({
  name:
    "realtime endpoint: a socket still connecting past the upgrade bound is let go, and closed if it opens after all",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const logs: Record<string, unknown>[] = [];
  const endpoint = await createRealtimeEndpoint(
    { dbUrl: env.dbUrl, jwtSecret: env.jwtSecret!, anonKey: env.anonKey },
    { idleTimeoutMs: 0, upgradeTimeoutMs: 200, log: (fields) => logs.push(fields) },
  );
  const { server, upgraded, release } = holdingServer(endpoint);
  const client = new WebSocket(
    `ws://127.0.0.1:${server.addr.port}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`,
  );
  const opened = new Promise((resolve) => client.addEventListener("open", resolve));
  const closed = new Promise<CloseEvent>((resolve) => client.addEventListener("close", resolve));
  try {
    await within("the endpoint's upgrade", upgraded);
    // The 101 held past the bound: the socket is CONNECTING all that while.
    await waitFor(
      `the Connection let go (${JSON.stringify(endpoint.stats())}; ${JSON.stringify(logs)})`,
      () => endpoint.stats().connections === 0 && endpoint.stats().upgrading === 0,
    );
    assert.match(
      String(logs.find((l) => l.event === "socket_upgrade_abandoned")?.reason),
      /^still connecting/,
    );
    release();
    await within("the socket's open", opened);
    const close = await within("the close of a socket the endpoint let go", closed);
    assert.equal(close.code, 1001);
    assert.equal(close.reason, "upgrade not completed");
  } finally {
    release();
    if (client.readyState !== WebSocket.CLOSED) {
      client.close();
      await closed;
    }
    await endpoint.close();
    await server.shutdown();
  }
});

// upgradeTimeoutMs 0 or Infinity is no bound, not a bound a timer cannot hold: Deno fires a timer of 0 ms at
// once and clamps one past 2^31-1 ms (Infinity too) to 1 ms, so the endpoint let every socket go as it was
// upgraded (closed 1001 'upgrade not completed' at its open) and no client could stay connected.
for (const upgradeTimeoutMs of [0, Infinity]) {
  Deno.test({
    name:
      `realtime endpoint: upgradeTimeoutMs ${upgradeTimeoutMs} is no bound: a socket still connecting is kept, and served once it opens`,
    ...ownEndpoint,
  }, async () => {
    const env = testEnv();
    const logs: Record<string, unknown>[] = [];
    const endpoint = await createRealtimeEndpoint(
      { dbUrl: env.dbUrl, jwtSecret: env.jwtSecret!, anonKey: env.anonKey },
      { idleTimeoutMs: 0, upgradeTimeoutMs, log: (fields) => logs.push(fields) },
    );
    const { server, upgraded, release } = holdingServer(endpoint);
    const client = new WebSocket(
      `ws://127.0.0.1:${server.addr.port}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`,
    );
    const opened = new Promise((resolve) => client.addEventListener("open", resolve));
    const closed = new Promise<CloseEvent>((resolve) => client.addEventListener("close", resolve));
    try {
      await within("the endpoint's upgrade", upgraded);
      // The 101 held past any timer the endpoint could have set for the bound: timers run in the order of
      // their ends, and one of 0 ms, or clamped to 1 ms, set by the upgrade ends before this one, set after
      // it. (An ordering, not a wait for something to happen: with no bound, nothing is to happen.)
      await new Promise((resolve) => setTimeout(resolve, 50));
      const { connections, upgrading } = endpoint.stats();
      assert.deepEqual(
        { connections, upgrading },
        { connections: 1, upgrading: 1 },
        `still watched, not let go: ${JSON.stringify(logs)}`,
      );
      release();
      await within("the socket's open", opened);
      // Served: a heartbeat is answered (a Connection let go closes the socket 1001 instead).
      const answer = new Promise<string>((resolve) => {
        client.addEventListener("message", (event) => resolve(String(event.data)));
        closed.then((event) => resolve(`closed ${event.code} ${event.reason}`));
      });
      client.send(JSON.stringify([null, "1", "phoenix", "heartbeat", {}]));
      assert.equal(
        await within("the heartbeat's reply", answer),
        JSON.stringify([null, "1", "phoenix", "phx_reply", { status: "ok", response: {} }]),
      );
      await waitFor("its Connection, no longer upgrading", () => endpoint.stats().upgrading === 0);
      assert.equal(endpoint.stats().connections, 1);
      assert.ok(!logs.some((l) => l.event === "socket_upgrade_abandoned"), JSON.stringify(logs));
    } finally {
      release();
      if (client.readyState !== WebSocket.CLOSED) {
        client.close();
        await within("the client's close", closed);
      }
      await endpoint.close();
      await server.shutdown();
    }
  });
}

Deno.test({
  name:
    "realtime endpoint: an upgradeTimeoutMs no timer can hold (negative, NaN, a fraction below 1, past 2^31-1) is refused when the endpoint is made, naming the option",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const cases: [unknown, ErrorConstructor][] = [
    [-1, RangeError],
    [-Infinity, RangeError],
    [NaN, RangeError],
    [0.5, RangeError],
    [2 ** 31, RangeError],
    ["10000", TypeError],
    [null, TypeError],
  ];
  for (const [value, ErrorClass] of cases) {
    const made = await createRealtimeEndpoint(
      { dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! },
      { upgradeTimeoutMs: value as number },
    ).then((endpoint) => endpoint, (error: unknown) => error);
    if (!(made instanceof Error)) {
      await (made as RealtimeEndpoint).close();
      assert.fail(`upgradeTimeoutMs ${String(value)} was taken`);
    }
    assert.ok(made instanceof ErrorClass, `${String(value)}: ${made}`);
    assert.match(
      made.message,
      /^createRealtimeEndpoint option upgradeTimeoutMs must be a number of milliseconds from 1 to 2147483647, or 0 or Infinity \(got /,
    );
  }
});
