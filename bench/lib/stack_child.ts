// Runs the readsync stack (startLocalStack: PostgreSQL or SUPABASE_DB_URL, bootstrap, migrations,
// API server or SUPABASE_URL) in its own process, so the benchmark's load generators never share an
// event loop with the server they measure. Prints one `BENCH_READY <json>` line with the endpoints
// and phase timings, then runs until stdin closes or it receives SIGTERM/SIGINT. BENCH_DURABLE=1
// starts PostgreSQL with its durable defaults (the write section's durable pass).

import { runCleanups } from "../../local/stack/cleanup.ts";
import { startLocalStack } from "../../local/stack/stack.ts";

const t0 = performance.now();
const phases: { at: number; line: string }[] = [];
const log = (line: string) => {
  phases.push({ at: Math.round(performance.now() - t0), line });
  console.error(`[stack] ${line}`);
};

try {
  const stack = await startLocalStack({ apiPort: 0, log, durable: Deno.env.get("BENCH_DURABLE") === "1" });
  const readyMs = performance.now() - t0;
  console.log(
    `BENCH_READY ${
      JSON.stringify({
        dbUrl: stack.dbUrl,
        apiUrl: stack.apiUrl,
        jwtSecret: stack.jwtSecret,
        anonKey: stack.anonKey,
        serviceRoleKey: stack.serviceRoleKey,
        ownsDatabase: stack.ownsDatabase,
        mintsTokens: stack.ownsApi || Boolean(Deno.env.get("SUPABASE_JWT_SECRET")),
        readyMs,
        phases,
      })
    }`,
  );
  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    await stack.stop().catch(() => {});
    await runCleanups();
    Deno.exit(code);
  };
  for (const signal of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(signal, () => stop(0));
  // The parent holds our stdin open; EOF means it is gone (or done with us).
  const buf = new Uint8Array(64);
  while ((await Deno.stdin.read(buf)) !== null) { /* ignore input */ }
  await stop(0);
} catch (error) {
  console.error(error instanceof Error ? error.stack ?? error.message : error);
  await runCleanups();
  Deno.exit(1);
}
