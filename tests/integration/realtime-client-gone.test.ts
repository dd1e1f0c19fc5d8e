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

import assert from "node:assert/strict";
import { TokenVerifier } from "../../local/realtime/auth.ts";
import { createRealtimeEndpoint } from "../../local/realtime/endpoint.ts";
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
