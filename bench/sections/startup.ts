// 6. Local stack cold start (target ≤ 5 s) beside a bare PostgreSQL cold start, and (--with-suite)
// the whole `npm test` time.

import { startPostgres } from "../../local/stack/postgres.ts";
import { median, ratio, type SectionResult } from "../lib/report.ts";
import { type BenchStack, spawnStack } from "../lib/stack.ts";
import type { Options } from "./context.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

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
    log(
      `cold start ${i + 1}/${runs}: stack ${Math.round(s.wallMs)} ms (in-process ${
        Math.round(s.readyMs)
      } ms), bare PostgreSQL ${Math.round(pgMs.at(-1)!)} ms`,
    );
    if (i < runs - 1) await s.stop();
    else stack = s;
  }
  const wall = median(stackWall);
  const pg = median(pgMs);
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
    ],
    notes: [
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
    details: { stackWallMs: stackWall, stackReadyMs: stackReady, barePostgresMs: pgMs, phases },
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
