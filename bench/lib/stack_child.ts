// Runs the readsync stack (startLocalStack: PostgreSQL or SUPABASE_DB_URL, bootstrap, migrations,
// API server or SUPABASE_URL) in its own process, so the benchmark's load generators never share an
// event loop with the server they measure. Prints one `BENCH_READY <json>` line with the endpoints
// and phase timings (its log lines, and each step's time: timedPhases), then runs until stdin closes or it receives SIGTERM/SIGINT. BENCH_DURABLE=1
// starts PostgreSQL with its durable defaults (the write section's durable pass).

import { runCleanups } from "../../local/stack/cleanup.ts";
import { startLocalStack } from "../../local/stack/stack.ts";

// performance.now() counts from this process's start: t0 is what Deno's start and loading this module
// (and the stack's modules it imports) took before the first line here ran.
const t0 = performance.now();
const phases: { at: number; line: string }[] = [];
const log = (line: string) => {
  phases.push({ at: Math.round(performance.now() - t0), line });
  console.error(`[stack] ${line}`);
};
/** Each step of the start as it ended: its time, and when it ended (ms since t0). */
const timedPhases: { name: string; ms: number; endedAt: number }[] = [];
const onPhase = (name: string, ms: number) =>
  timedPhases.push({ name, ms: Math.round(ms), endedAt: Math.round(performance.now() - t0) });

try {
  const stack = await startLocalStack({
    apiPort: 0,
    log,
    durable: Deno.env.get("BENCH_DURABLE") === "1",
    onPhase,
  });
  const readyMs = performance.now() - t0;
  console.log(
    `BENCH_READY ${
      JSON.stringify({
        dbUrl: stack.dbUrl,
        postgresJsDbUrl: stack.postgresJsDbUrl,
        apiUrl: stack.apiUrl,
        jwtSecret: stack.jwtSecret,
        anonKey: stack.anonKey,
        serviceRoleKey: stack.serviceRoleKey,
        ownsDatabase: stack.ownsDatabase,
        migratedTemplate: stack.migratedTemplate,
        mintsTokens: stack.ownsApi || Boolean(Deno.env.get("SUPABASE_JWT_SECRET")),
        readyMs,
        loadMs: Math.round(t0),
        phases,
        timedPhases,
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
