// The propagation section's WebSocket floor, run as its own process (as the stack is): a bare
// WebSocket server on Deno.serve + Deno.upgradeWebSocket, as the local Realtime endpoint is, that
// speaks just enough of Phoenix vsn 2.0.0 for realtime-js and bench/lib/crowd.ts to join (every
// phx_join is answered ok, heartbeats too) and sends a broadcast to a topic's sockets in join order
// when asked. No database, no WAL, no token checks, no channel bookkeeping: what is left between
// device B's figure on the real endpoint and B's figure here is the endpoint's own work, and what
// this figure costs is the runtime's WebSocket sends and the receivers on this machine.
//
//   POST /send {topic, event, payload}  encodes one frame (the endpoint's encoder, in the form of its
//                                       database broadcasts: binary kind 4, as Supabase sends them),
//                                       then sends it to every socket joined to `realtime:<topic>`;
//                                       answers {t0, sockets}: t0 = epoch ms just before the first
//                                       send (performance.timeOrigin-based, sub-millisecond).
//   GET  /realtime/v1/websocket         the WebSocket (any query string is accepted).
//
// Prints `FLOOR_READY <port>`; stdin EOF ends it.

import { encodeBroadcast } from "../../local/realtime/protocol.ts";

type Frame = [string | null, string | null, string, string, Record<string, unknown>];

const now = () => performance.timeOrigin + performance.now();
const topics = new Map<string, Set<WebSocket>>();
let messageId = 0;

function reply(ws: WebSocket, joinRef: string | null, ref: string | null, topic: string, response: unknown) {
  ws.send(JSON.stringify([joinRef, ref, topic, "phx_reply", { status: "ok", response }]));
}

function accept(req: Request): Response {
  const { socket, response } = Deno.upgradeWebSocket(req);
  socket.binaryType = "arraybuffer";
  const joined = new Set<string>();
  socket.onmessage = (e) => {
    if (typeof e.data !== "string") return;
    const [joinRef, ref, topic, event] = JSON.parse(e.data) as Frame;
    if (event === "heartbeat") return reply(socket, null, ref, topic, {});
    if (event === "phx_join") {
      let set = topics.get(topic);
      if (!set) topics.set(topic, set = new Set());
      set.add(socket);
      joined.add(topic);
      return reply(socket, joinRef, ref, topic, { postgres_changes: [] });
    }
    if (event === "phx_leave") {
      topics.get(topic)?.delete(socket);
      joined.delete(topic);
      return reply(socket, joinRef, ref, topic, {});
    }
    // access_token and anything else: nothing to do for a floor.
  };
  socket.onclose = () => {
    for (const topic of joined) topics.get(topic)?.delete(socket);
  };
  socket.onerror = () => {};
  return response;
}

async function send(req: Request): Promise<Response> {
  const { topic, event, payload } = await req.json() as { topic: string; event: string; payload: unknown };
  const fullTopic = `realtime:${topic}`;
  const id = `floor-${++messageId}`;
  const t0 = now();
  const frame = encodeBroadcast({ topic: fullTopic, event, payload, meta: { id } }, "2.0.0", "binary");
  const set = topics.get(fullTopic) ?? new Set<WebSocket>();
  for (const ws of set) {
    if (ws.readyState !== WebSocket.OPEN) continue;
    try {
      ws.send(frame);
    } catch { /* gone between the check and the send */ }
  }
  return Response.json({ t0, sockets: set.size });
}

const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
  const { pathname } = new URL(req.url);
  if (req.method === "POST" && pathname === "/send") return send(req);
  if (req.headers.get("upgrade")?.toLowerCase() === "websocket") return accept(req);
  return new Response("not found", { status: 404 });
});
console.log(`FLOOR_READY ${server.addr.port}`);

const buf = new Uint8Array(64);
while ((await Deno.stdin.read(buf)) !== null) { /* the parent holds stdin open */ }
await server.shutdown().catch(() => {});
Deno.exit(0);
