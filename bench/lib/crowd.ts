// The other subscribed devices of the propagation benchmark, in their own process: N supabase-js
// clients, each with its own WebSocket, joined to the user's private progress topic. Kept out of
// the measuring process so that decoding N frames per update does not delay device B's handler
// there (on real devices every client has its own CPU).
//
// Input: env BENCH_CROWD = JSON {url, anonKey, token, topic, count}. Prints `CROWD_READY <n>` once
// every channel is SUBSCRIBED (or `CROWD_FAILED <reason>`); then each "report" line on stdin answers
// `CROWD_REPORT <json>`: per update (keyed by the record's chapter), how many devices got it and when
// the last one's handler ran (epoch ms, performance.timeOrigin-based, sub-millisecond).

import { createClient, type SupabaseClient } from "@supabase/supabase-js";

const { url, anonKey, token, topic, count } = JSON.parse(Deno.env.get("BENCH_CROWD") ?? "{}") as {
  url: string;
  anonKey: string;
  token: string;
  topic: string;
  count: number;
};
const now = () => performance.timeOrigin + performance.now();
const got = new Map<number, { n: number; last: number }>();
const clients: SupabaseClient[] = [];

async function join(): Promise<void> {
  const client = createClient(url, anonKey, {
    accessToken: () => Promise.resolve(token),
    realtime: { timeout: 30_000 },
  });
  clients.push(client);
  await client.realtime.setAuth();
  await new Promise<void>((resolve, reject) => {
    client.channel(topic, { config: { private: true } })
      .on("broadcast", { event: "*" }, (m) => {
        const chapter = Number((m.payload as { record?: { chapter?: unknown } })?.record?.chapter);
        const entry = got.get(chapter) ?? { n: 0, last: 0 };
        entry.n++;
        entry.last = now();
        got.set(chapter, entry);
      })
      .subscribe((status, error) => {
        if (status === "SUBSCRIBED") resolve();
        else if (status === "CHANNEL_ERROR" || status === "TIMED_OUT") reject(error ?? new Error(status));
      });
  });
}

try {
  // Joins in waves: each join asks the RLS read policy once (a database transaction).
  for (let i = 0; i < count; i += 25) {
    await Promise.all(Array.from({ length: Math.min(25, count - i) }, join));
  }
  console.log(`CROWD_READY ${clients.length}`);
} catch (error) {
  console.log(`CROWD_FAILED ${error instanceof Error ? error.message : error}`);
}
// Each line "report" on stdin answers one `CROWD_REPORT <json>` line; EOF ends the process.
for await (const line of Deno.stdin.readable.pipeThrough(new TextDecoderStream()).pipeThrough(lines())) {
  if (line.trim() === "report") console.log(`CROWD_REPORT ${JSON.stringify([...got.entries()])}`);
}
await Promise.all(clients.map(async (c) => {
  await c.removeAllChannels().catch(() => {});
  await c.realtime.disconnect();
}));
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
