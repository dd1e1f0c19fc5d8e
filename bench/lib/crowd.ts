// The other subscribed devices of the propagation benchmark, in their own process: N WebSockets
// joined to the user's private progress topic exactly as realtime-js joins it (Phoenix vsn 2.0.0,
// phx_join with config.private and the user's access token, so each join passes the RLS read
// policy). The measured devices (A and B) are real supabase-js clients in the benchmark process;
// these N only have to be there, receive every frame and say when. They are deliberately lighter
// than N supabase-js clients: on this 2-core machine N realtime-js instances decoding every frame
// would compete for the CPU with the endpoint being measured, which real phones do not do.
//
// Input: env BENCH_CROWD = JSON {wsUrl, assignmentsFile}; the file holds a JSON array of
// {token, topic}, one per socket (the same user's topic for all, or one user each). Prints
// `CROWD_READY <n>` once every join was answered ok (or `CROWD_FAILED <reason>`); each "report" line on stdin answers
// `CROWD_REPORT <json>`: {entries, mismatches}: per update (keyed by the record's chapter), how many
// devices got it and when the last one did (epoch ms, performance.timeOrigin-based, sub-millisecond),
// and how many frames arrived out of step (see chapterOfNth; always 0 so far). EOF ends it.

const { wsUrl, assignmentsFile } = JSON.parse(Deno.env.get("BENCH_CROWD") ?? "{}") as {
  wsUrl: string;
  assignmentsFile: string;
};
const assignments = JSON.parse(await Deno.readTextFile(assignmentsFile)) as {
  token: string;
  topic: string;
}[];
const count = assignments.length;
const now = () => performance.timeOrigin + performance.now();
const got = new Map<number, { n: number; last: number }>();
const sockets: WebSocket[] = [];
const decoder = new TextDecoder();

/** Chapter of a server broadcast frame: vsn 2.0.0 binary kind 4, or the JSON array form. */
function chapterOf(data: string | ArrayBuffer): number | null {
  let payload: unknown;
  if (typeof data === "string") {
    const [, , , event, body] = JSON.parse(data);
    if (event !== "broadcast") return null;
    payload = body?.payload;
  } else {
    const bytes = new Uint8Array(data);
    if (bytes[0] !== 4) return null;
    // [4, topicLen, eventLen, metaLen, encoding] topic event meta payload
    const offset = 5 + bytes[1] + bytes[2] + bytes[3];
    payload = JSON.parse(decoder.decode(bytes.subarray(offset)));
  }
  const chapter = Number((payload as { record?: { chapter?: unknown } })?.record?.chapter);
  return Number.isFinite(chapter) ? chapter : null;
}

// Every socket joined before the first update and receives the same broadcasts in the same order,
// so the n-th broadcast frame on any socket is the same update: it is decoded once (by whichever
// socket gets it first) and the others only count. Decoding ~1,000 copies of every frame made this
// process compete for the CPU with the endpoint it measures. The frame's length is checked against
// the decoded one's, so a socket that was somehow out of step counts as a mismatch, not as a delivery.
const broadcastsSeen = new Uint32Array(count);
const nth: { chapter: number | null; length: number }[] = [];
let mismatches = 0;

/** A broadcast frame, cheaply: binary kind 4 (database broadcasts, relays) or the older JSON text form. */
function isBroadcast(data: string | ArrayBuffer): boolean {
  if (typeof data === "string") return data.startsWith("[null,null,") && data.includes(',"broadcast",{');
  return new Uint8Array(data, 0, 1)[0] === 4;
}

function chapterOfNth(i: number, data: string | ArrayBuffer): number | null {
  if (!isBroadcast(data)) return null;
  const length = typeof data === "string" ? data.length : data.byteLength;
  const n = broadcastsSeen[i]++;
  const known = nth[n];
  if (known === undefined) {
    const chapter = chapterOf(data);
    nth[n] = { chapter, length };
    return chapter;
  }
  if (known.length !== length) {
    mismatches++;
    return chapterOf(data);
  }
  return known.chapter;
}

function join(i: number): Promise<void> {
  const { token, topic } = assignments[i];
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl);
    ws.binaryType = "arraybuffer";
    sockets.push(ws);
    ws.onopen = () =>
      ws.send(JSON.stringify(["1", "1", `realtime:${topic}`, "phx_join", {
        config: { private: true, broadcast: { self: false, ack: false }, presence: { enabled: false } },
        access_token: token,
      }]));
    ws.onmessage = (e) => {
      if (typeof e.data === "string" && e.data.includes('"phx_reply"')) {
        const [, ref, , , payload] = JSON.parse(e.data);
        if (ref === "1") payload.status === "ok" ? resolve() : reject(new Error(JSON.stringify(payload)));
        return;
      }
      const chapter = chapterOfNth(i, e.data);
      if (chapter === null) return;
      const entry = got.get(chapter) ?? { n: 0, last: 0 };
      entry.n++;
      entry.last = now();
      got.set(chapter, entry);
    };
    ws.onerror = () => reject(new Error(`socket ${i} failed`));
  });
}

// Phoenix heartbeats keep the sockets alive for as long as the benchmark needs them.
const heartbeat = setInterval(() => {
  for (const ws of sockets) {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify([null, "hb", "phoenix", "heartbeat", {}]));
  }
}, 25_000);

try {
  // Joins in waves: each join asks the RLS read policy once (a database transaction).
  for (let i = 0; i < count; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, count - i) }, (_, k) => join(i + k)));
  }
  console.log(`CROWD_READY ${sockets.length}`);
} catch (error) {
  console.log(`CROWD_FAILED ${error instanceof Error ? error.message : error}`);
}

for await (const line of Deno.stdin.readable.pipeThrough(new TextDecoderStream()).pipeThrough(lines())) {
  if (line.trim() === "report") {
    console.log(`CROWD_REPORT ${JSON.stringify({ entries: [...got.entries()], mismatches })}`);
  }
}
clearInterval(heartbeat);
for (const ws of sockets) ws.close();
Deno.exit(0);

function lines(): TransformStream<string, string> {
  let rest = "";
  return new TransformStream({
    transform(chunk, controller) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop() ?? "";
      for (const part of parts) controller.enqueue(part);
    },
    flush(controller) {
      if (rest) controller.enqueue(rest);
    },
  });
}
