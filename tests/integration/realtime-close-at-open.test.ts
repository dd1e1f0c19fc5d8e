// A socket the endpoint closes while its upgrade is still under way (the endpoint shutting down as a client
// connects) is closed once it opens: the client sees its open, then the server's close (1001), as it would
// a moment later. Before, Deno (2.9) took the close of a CONNECTING server socket as CLOSING without
// sending anything, then set the socket OPEN when the upgrade completed, and the Connection, disposed,
// ignored it: the client was left on an open socket that nothing answered and that never closed.

import assert from "node:assert/strict";
import { createRealtimeEndpoint } from "../../local/realtime/endpoint.ts";
import { testEnv } from "../support/env.ts";
import { ownEndpoint, within } from "./realtime_support.ts";

Deno.test({
  name:
    "realtime endpoint: a socket closed while its upgrade is under way (the endpoint shutting down) is closed when it opens",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const endpoint = await createRealtimeEndpoint({
    dbUrl: env.dbUrl,
    jwtSecret: env.jwtSecret!,
    anonKey: env.anonKey,
  });
  let closing: Promise<void> | undefined;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (req, info) => {
    const answer = await endpoint.handle(req, info);
    // The 101 is ready and its socket CONNECTING until Deno.serve has sent it: the endpoint closes now,
    // closing that socket's Connection with the others.
    if (answer.status === 101) closing ??= endpoint.close();
    return answer;
  });
  const client = new WebSocket(
    `ws://127.0.0.1:${server.addr.port}/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`,
  );
  const opened = new Promise((resolve) => client.addEventListener("open", resolve));
  const closed = new Promise<CloseEvent>((resolve) => client.addEventListener("close", resolve));
  try {
    await within("the socket's open", opened);
    const close = await within("the server's close of the socket it closed while connecting", closed);
    assert.equal(close.code, 1001);
    assert.equal(close.reason, "server shutting down");
    assert.ok(closing, "the endpoint was closed during the upgrade");
  } finally {
    client.close();
    await closed;
    await (closing ?? endpoint.close());
    await server.shutdown();
  }
});
