// 6. Local stack cold start (target ≤ 5 s) beside a bare PostgreSQL cold start, each start's phases (Deno's
// start and module loading, the database's steps, bootstrap, migrations, the API's services, the first
// request answered), and (--with-suite) the whole `npm test` time.

import { fileURLToPath } from "node:url";
import { mintUserAccessToken } from "../../local/stack/keys.ts";
import { startPostgres } from "../../local/stack/postgres.ts";
import { median, ratio, type SectionResult } from "../lib/report.ts";
import { type BenchStack, spawnStack } from "../lib/stack.ts";
import type { Options } from "./context.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** One cold start's phases: name and time (ms), in the order they ended; `note` says more (the log only). */
type PhaseTimes = { name: string; ms: number; note?: string }[];

/** The phases' own names: the Realtime endpoint's steps are part of "API: Realtime endpoint". */
const NESTED = /^Realtime: /;

/**
 * The first request a client makes once the stack is ready: a signed-in user's library read through the
 * functions gateway (GET /functions/v1/progress?limit=1: the token checked, the function's first database
 * call), made once the ready line has come and its token is signed, timed from its send to its answer. With
 * an API whose tokens the stack cannot mint, the anon key's (refused, 403, without a database call).
 */
async function firstRequest(stack: BenchStack): Promise<{ ms: number; status: number }> {
  const token = stack.mintsTokens
    ? await mintUserAccessToken(crypto.randomUUID(), { secret: stack.jwtSecret })
    : stack.anonKey;
  const t = performance.now();
  const response = await fetch(`${stack.apiUrl}/functions/v1/progress?limit=1`, {
    headers: { apikey: stack.anonKey, Authorization: `Bearer ${token}` },
  });
  await response.arrayBuffer();
  return { ms: performance.now() - t, status: response.status };
}

/**
 * A start's phases as the section reports them: Deno's start and module loading, each step the stack timed
 * (a name that comes twice summed), what of the in-process start no step covers, and the first request.
 */
function phaseTimes(s: BenchStack, first: { ms: number; status: number }): PhaseTimes {
  const steps = new Map<string, number>();
  for (const { name, ms } of s.timedPhases) steps.set(name, (steps.get(name) ?? 0) + ms);
  const covered = [...steps].filter(([name]) => !NESTED.test(name)).reduce((sum, [, ms]) => sum + ms, 0);
  return [
    { name: "stack process: Deno start and module loading", ms: s.loadMs },
    ...[...steps].map(([name, ms]) => ({ name, ms })),
    { name: "rest of the in-process start (between the steps)", ms: Math.max(0, s.readyMs - covered) },
    { name: "first request answered (after ready)", ms: first.ms, note: `HTTP ${first.status}` },
  ];
}

/** Starts the stack (the last of N cold starts stays up for the other sections). */
export async function coldStartSection(
  opts: Options,
  log: (line: string) => void,
): Promise<{ stack: BenchStack; section: SectionResult }> {
  const runs = opts.quick ? 1 : 3;
  const external = Boolean(Deno.env.get("SUPABASE_DB_URL"));
  const pgMs: number[] = [];
  const stackWall: number[] = [];
  const stackReady: number[] = [];
  let stack: BenchStack | null = null;
  let phases: BenchStack["phases"] = [];
  /** Each start's phases (phaseTimes), in run order. */
  const runPhases: PhaseTimes[] = [];
  for (let i = 0; i < runs; i++) {
    // Baseline: a bare PostgreSQL cold start (initdb + start + ready), same launcher, same run. The
    // stack copies the cached initdb template instead (local/stack/postgres.ts); the baseline does not.
    const t = performance.now();
    const pg = await startPostgres({ log: () => {}, template: false });
    pgMs.push(performance.now() - t);
    await pg.stop();
    const s = await spawnStack();
    stackWall.push(s.wallMs);
    stackReady.push(s.readyMs);
    phases = s.phases;
    const times = phaseTimes(s, await firstRequest(s));
    runPhases.push(times);
    log(
      `cold start ${i + 1}/${runs}: stack ${Math.round(s.wallMs)} ms (in-process ${
        Math.round(s.readyMs)
      } ms), bare PostgreSQL ${Math.round(pgMs.at(-1)!)} ms`,
    );
    for (const { name, ms, note } of times) {
      log(`  ${Math.round(ms).toString().padStart(6)} ms  ${name}${note ? ` (${note})` : ""}`);
    }
    if (i < runs - 1) await s.stop();
    else stack = s;
  }
  const wall = median(stackWall);
  const pg = median(pgMs);
  // A row per phase, in the order they came: the median over the starts that had it (a phase not in every
  // start, such as a port retry or the template's first build, says in how many it came).
  const phaseNames = [...new Set(runPhases.flatMap((times) => times.map((t) => t.name)))];
  const phaseRows = phaseNames.map((name) => {
    const values = runPhases.flatMap((times) => times.filter((t) => t.name === name).map((t) => t.ms));
    const of = values.length === runs ? `median of ${runs}` : `${values.length} of ${runs} starts, median`;
    return { metric: `  phase: ${name} (${of})`, value: median(values), unit: "ms" };
  });
  const section: SectionResult = {
    id: "coldstart",
    title: "6. Local stack cold start",
    status: "ok",
    rows: [
      {
        metric: `stack cold start, process spawn → ready (median of ${runs})`,
        value: wall,
        unit: "ms",
        baseline: pg,
        baselineLabel: "bare PostgreSQL initdb+start",
        ratio: ratio(wall, pg),
        target: "≤ 5000 ms",
        met: wall <= 5000,
      },
      {
        metric: "  of which inside the stack process",
        value: median(stackReady),
        unit: "ms",
        baseline: pg,
        baselineLabel: "bare PostgreSQL",
        ratio: ratio(median(stackReady), pg),
      },
      ...phaseRows,
    ],
    notes: [
      "Phase rows: the stack process's own start (Deno and module loading, before its first line), each step of " +
      "the start it timed (local/stack/phases.ts; the Realtime: rows are part of the API: Realtime endpoint row), " +
      "what of the in-process start no step covers, and the first request a client makes once the stack is " +
      "ready (a signed-in user's GET /functions/v1/progress?limit=1, made once the ready line has come, timed " +
      "from its send to its answer; " +
      "not part of the cold-start figure).",
      `Phases of the last start (ms since the stack process began): ${
        phases.map((p) => `${p.at} ${p.line}`).join("; ")
      }.`,
      external
        ? "SUPABASE_DB_URL is set: no PostgreSQL was started by the stack; the figure is `supabase db push` against " +
          "that database (a no-op once applied) and the API server (or SUPABASE_URL's), plus starting the Deno process. " +
          "The baseline is still a local initdb + start, for scale."
        : "Includes PostgreSQL start from a copy of the cached initdb template (the first start on a machine runs " +
          "initdb once to make it), the platform bootstrap, `supabase db push` of every migration (the real CLI) and " +
          "the API server (functions + Realtime); the wall figure also includes starting the Deno process. The " +
          "baseline runs initdb itself.",
    ],
    details: { stackWallMs: stackWall, stackReadyMs: stackReady, barePostgresMs: pgMs, phases, runPhases },
  };
  return { stack: stack!, section };
}

export async function suiteSection(
  _opts: Options,
  log: (line: string) => void,
  cold: SectionResult,
): Promise<SectionResult> {
  log("running npm test (this takes minutes)");
  const t = performance.now();
  const out = await new Deno.Command("npm", {
    args: ["test"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const ms = performance.now() - t;
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  const summary = text.match(/^(\d+) passed, (\d+) failed$/m);
  const stackUp = Number(text.match(/stack up in (\d+) ms/)?.[1] ?? NaN);
  const coldMs = cold.rows[0]?.value ?? null;
  return {
    id: "suite",
    title: "6b. Whole test suite (`npm test`)",
    status: "ok",
    rows: [
      {
        metric: `npm test wall time (${
          summary ? `${summary[1]} passed, ${summary[2]} failed` : "no summary line"
        })`,
        value: ms / 1000,
        unit: "s",
        baseline: coldMs == null ? null : coldMs / 1000,
        baselineLabel: "stack cold start",
        ratio: ratio(ms / 1000, coldMs == null ? null : coldMs / 1000),
      },
      ...(Number.isFinite(stackUp)
        ? [{ metric: "  stack start inside npm test", value: stackUp / 1000, unit: "s" }]
        : []),
    ],
    notes: [`exit code ${out.code}. Run after the benchmark's own stack was stopped.`],
  };
}
