// Many devices on one topic: 1,000 sockets joined to progress:<A> receive every write, and the
// endpoint matches and encodes each message (read once from the WAL) once, not once per socket.

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { adminSql, createTestUser, testEnv } from "../support/env.ts";
import { ownEndpoint, waitFor, writeProgress } from "./realtime_support.ts";

const SOCKETS = 1_000;

Deno.test(
  { name: `realtime fan-out: ${SOCKETS} sockets, each message matched and encoded once`, ...ownEndpoint },
  async () => {
    const env = testEnv();
    const sql = adminSql();
    const a = await createTestUser();
    const server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
    const wsUrl = `${
      server.url.replace(/^http/, "ws")
    }/realtime/v1/websocket?apikey=${env.anonKey}&vsn=2.0.0`;
    const topic = `realtime:progress:${a.id}`;
    const sockets: WebSocket[] = [];
    const received = new Array<number>(SOCKETS).fill(0);
    try {
      const started = performance.now();
      await Promise.all(Array.from({ length: SOCKETS }, (_, i) =>
        new Promise<void>((resolve, reject) => {
          const ws = new WebSocket(wsUrl);
          ws.binaryType = "arraybuffer";
          sockets.push(ws);
          ws.onopen = () =>
            ws.send(
              JSON.stringify(["1", "1", topic, "phx_join", {
                config: { private: true, broadcast: { self: false } },
                access_token: a.accessToken,
              }]),
            );
          ws.onmessage = (e) => {
            // Database broadcasts come as binary kind 4, as Supabase sends them (older releases' JSON text counts too).
            if (typeof e.data === "string") {
              const [, ref, , event, payload] = JSON.parse(e.data);
              if (event === "phx_reply" && ref === "1") {
                payload.status === "ok" ? resolve() : reject(new Error(JSON.stringify(payload)));
              } else if (event === "broadcast") {
                received[i]++;
              }
            } else if (new Uint8Array(e.data)[0] === 4) {
              received[i]++;
            }
          };
          ws.onerror = () => reject(new Error(`socket ${i} failed`));
        })));
      const joinMs = performance.now() - started;
      assert.equal(server.endpoint.stats().subscribers, SOCKETS);

      const before = server.endpoint.stats();
      const spreads: number[] = [];
      for (let i = 0; i < 5; i++) {
        const committed = performance.now();
        await writeProgress(sql, a.id, { series_id: `s${i}`, device_id: "phone" });
        await waitFor(`every socket to get message ${i + 1}`, () => received.every((n) => n === i + 1), {
          timeoutMs: 20_000,
          intervalMs: 1,
        });
        spreads.push(Math.round(performance.now() - committed));
      }
      const after = server.endpoint.stats();
      assert.equal(
        after.matched - before.matched,
        5,
        "each message matched (and encoded) once, whatever the sockets",
      );
      assert.equal(after.delivered - before.delivered, 5 * SOCKETS);
      // Information only (no timed assertion): write call to the last of the sockets, per message.
      console.log(
        `${SOCKETS} joins (RLS-checked) in ${Math.round(joinMs)} ms; 5 messages x ${SOCKETS} sockets ` +
          `delivered; write -> all ${SOCKETS} sockets: ${spreads.join(", ")} ms`,
      );
    } finally {
      for (const ws of sockets) ws.close();
      await server.close();
      await sql.end();
    }
  },
);
