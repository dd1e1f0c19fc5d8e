// A Realtime endpoint of its own (startRealtimeServer) listening on an IPv6 address hands out a URL a
// client can use: the address in brackets (`http://[::1]:port`), where `http://::1:port` is no URL at
// all (supabase-js refuses it), and supabase-js joins a private channel over it and receives a broadcast.

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { adminSql, createTestUser, testEnv } from "../support/env.ts";
import {
  clientWithToken,
  closeClient,
  joinChannel,
  ownEndpoint,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

/** Whether this machine can listen on the IPv6 loopback (a host without IPv6 cannot). */
function ipv6Loopback(): boolean {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
}

Deno.test({
  name:
    "realtime: an endpoint of its own on ::1 names itself http://[::1]:port, and supabase-js receives a " +
    "broadcast through it",
  ...ownEndpoint,
  ignore: ownEndpoint.ignore || !ipv6Loopback(),
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret!, hostname: "::1" });
  let client: ReturnType<typeof clientWithToken> | undefined;
  try {
    assert.equal(server.url, `http://[::1]:${server.port}`);
    assert.equal(new URL(server.url).hostname, "[::1]");
    client = clientWithToken(() => a.accessToken, { url: server.url });
    const { joined, status } = await joinChannel(client, `progress:${a.id}`);
    assert.equal(status, "SUBSCRIBED");
    await writeProgress(sql, a.id, { series_id: "over-ipv6", device_id: "phone" });
    await waitFor("the broadcast over the IPv6 socket", () => joined.received.length === 1);
    assert.equal((joined.received[0].payload.record as { series_id: string }).series_id, "over-ipv6");
  } finally {
    if (client) await closeClient(client);
    await server.close();
    await sql.end();
  }
});
