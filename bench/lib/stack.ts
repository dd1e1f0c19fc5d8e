// Starts the stack in a child process (bench/lib/stack_child.ts) and measures its cold start.

import { fileURLToPath } from "node:url";

export interface BenchStack {
  /** The database's URL as given or made: what libpq's tools (pgbench) read. */
  dbUrl: string;
  /**
   * The stack's decided connection as a URL postgres.js reads (LocalStack.postgresJsDbUrl: a relay of the
   * child's where no URL can say it), for the bench's postgres.js clients: dbUrl itself, handed to
   * postgres.js, misreads a password file's, a socket directory's or a certificate's SUPABASE_DB_URL.
   */
  postgresJsDbUrl: string;
  apiUrl: string;
  jwtSecret: string;
  anonKey: string;
  serviceRoleKey: string;
  ownsDatabase: boolean;
  /** Whether its cluster was copied from the migrated template or made it (LocalStack.migratedTemplate). */
  migratedTemplate: "copied" | "made" | null;
  /**
   * Whether jwtSecret signs tokens the API at apiUrl accepts: its own API, or SUPABASE_JWT_SECRET
   * given for SUPABASE_URL (otherwise jwtSecret is the development default).
   */
  mintsTokens: boolean;
  /** Wall time from spawning the child to its BENCH_READY line (includes the Deno process start). */
  wallMs: number;
  /** Time inside the child from its first line of code to the stack being ready. */
  readyMs: number;
  /** Deno's start and module loading in the child, before its first line of code (ms). */
  loadMs: number;
  /** The stack's log lines, with when each was printed (ms since the child's first line of code). */
  phases: { at: number; line: string }[];
  /**
   * Each step of the start (local/stack/phases.ts) in the order they ended: how long it took and when it
   * ended (ms since the child's first line of code).
   */
  timedPhases: { name: string; ms: number; endedAt: number }[];
  stop(): Promise<void>;
}

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const DENO = Deno.execPath();

export async function spawnStack(env: Record<string, string> = {}): Promise<BenchStack> {
  const started = performance.now();
  const child = new Deno.Command(DENO, {
    args: ["run", "-A", `${ROOT}bench/lib/stack_child.ts`],
    cwd: ROOT,
    env,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr: string[] = [];
  (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) stderr.push(chunk);
  })().catch(() => {});

  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let ready: Record<string, unknown> | null = null;
  while (!ready) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    const line = buffered.split("\n").find((l) => l.startsWith("BENCH_READY "));
    if (line) ready = JSON.parse(line.slice("BENCH_READY ".length));
  }
  const wallMs = performance.now() - started;
  // Keep draining stdout so the child never blocks on a full pipe.
  (async () => {
    while (!(await reader.read()).done) { /* drain */ }
  })().catch(() => {});
  if (!ready) {
    await child.status;
    throw new Error(`the stack did not start:\n${stderr.join("")}`);
  }
  let stopped: Promise<void> | null = null;
  const stop = () =>
    stopped ??= (async () => {
      try {
        await child.stdin.close();
      } catch { /* closed */ }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 15_000);
      await child.status;
      clearTimeout(timer);
    })();
  return { ...(ready as unknown as Omit<BenchStack, "wallMs" | "stop">), wallMs, stop };
}
