// 6. Local stack cold start (target ≤ 5 s) beside a bare PostgreSQL cold start, each start's phases (Deno's
// start and module loading, the database's steps, bootstrap, migrations, the API's services, the first
// request answered), and (--with-suite) the whole `npm test` time.

import { fileURLToPath } from "node:url";
import { mintUserAccessToken } from "../../local/stack/keys.ts";
import { startPostgres, templatesRoot } from "../../local/stack/postgres.ts";
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

/**
 * A start as the first after a migration change is (a key with no migrated template: a full push, and the
 * template made from its cluster; local/stack/migrated_template.ts), made so without touching the checkout's
 * migrations or the templates other starts on this machine copy: the stack runs with a temp dir of its own,
 * given copies of the shared initdb templates (and the kept `postgres --version` answers) but no migrated
 * template. Without a shared initdb template it builds one too (its phases then say so).
 */
async function startAfterMigrationChange(): Promise<{ stack: BenchStack; tmp: string }> {
  const shared = await templatesRoot();
  const tmp = await Deno.makeTempDir({ prefix: "readsync-bench-migration-change-" });
  // Traversable by the cluster's OS user (as root), as the temp dir is.
  await Deno.chmod(tmp, 0o711);
  const root = `${tmp}/readsync-pg-templates-${Deno.uid() ?? "user"}`;
  await Deno.mkdir(root, { mode: 0o711 });
  await Deno.chmod(root, 0o711);
  const initdbOnes = [...Deno.readDirSync(shared)]
    .map((entry) => entry.name)
    .filter((name) => /^[0-9a-f]+$|^version-[0-9a-f]+$/.test(name))
    .map((name) => `${shared}/${name}`);
  if (initdbOnes.length > 0) {
    const copied = await new Deno.Command("cp", { args: ["-a", ...initdbOnes, `${root}/`], stderr: "piped" })
      .output();
    if (!copied.success) throw new Error(new TextDecoder().decode(copied.stderr));
  }
  try {
    return { stack: await spawnStack({ TMPDIR: tmp }), tmp };
  } catch (error) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw error;
  }
}

/**
 * The phase rows of a group of starts: a row per phase, in the order they came, the median over the starts
 * that had it (a phase not in every start, such as a port retry or a template's first build, says in how
 * many it came).
 */
function phaseRows(runPhases: PhaseTimes[], label: string) {
  const runs = runPhases.length;
  const phaseNames = [...new Set(runPhases.flatMap((times) => times.map((t) => t.name)))];
  return phaseNames.map((name) => {
    const values = runPhases.flatMap((times) => times.filter((t) => t.name === name).map((t) => t.ms));
    const of = values.length === runs ? `median of ${runs}` : `${values.length} of ${runs} starts, median`;
    return { metric: `  ${label}: ${name} (${of})`, value: median(values), unit: "ms" };
  });
}

/**
 * Starts the stack (the last of N cold starts stays up for the other sections); with a database of its own,
 * first one start as the first after a migration change is (startAfterMigrationChange), its own row.
 */
export async function coldStartSection(
  opts: Options,
  log: (line: string) => void,
): Promise<{ stack: BenchStack; section: SectionResult }> {
  const runs = opts.quick ? 1 : 3;
  const external = Boolean(Deno.env.get("SUPABASE_DB_URL"));
  const pgMs: number[] = [];
  /** Each start (the N cold starts): its wall and in-process times, what it did of the migrated template. */
  const starts: { wallMs: number; readyMs: number; template: BenchStack["migratedTemplate"] }[] = [];
  let stack: BenchStack | null = null;
  let phases: BenchStack["phases"] = [];
  /** Each start's phases (phaseTimes), in run order. */
  const runPhases: PhaseTimes[] = [];
  const logStart = (what: string, s: BenchStack, times: PhaseTimes) => {
    log(
      `${what}: stack ${Math.round(s.wallMs)} ms (in-process ${Math.round(s.readyMs)} ms; migrated ` +
        `template: ${s.migratedTemplate ?? "none"})`,
    );
    for (const { name, ms, note } of times) {
      log(`  ${Math.round(ms).toString().padStart(6)} ms  ${name}${note ? ` (${note})` : ""}`);
    }
  };

  // The first start after a migration change: a full push, the migrated template made (not with an external
  // database, which the stack never copies or snapshots).
  let changed: {
    wallMs: number;
    readyMs: number;
    template: BenchStack["migratedTemplate"];
    times: PhaseTimes;
  } | null = null;
  if (!external) {
    const { stack: s, tmp } = await startAfterMigrationChange();
    try {
      const times = phaseTimes(s, await firstRequest(s));
      changed = { wallMs: s.wallMs, readyMs: s.readyMs, template: s.migratedTemplate, times };
      logStart("first start after a migration change", s, times);
    } finally {
      await s.stop();
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  }

  for (let i = 0; i < runs; i++) {
    // Baseline: a bare PostgreSQL cold start (initdb + start + ready), same launcher, same run. The
    // stack copies a cached template instead (local/stack/postgres.ts); the baseline does not.
    const t = performance.now();
    const pg = await startPostgres({ log: () => {}, template: false });
    pgMs.push(performance.now() - t);
    await pg.stop();
    const s = await spawnStack();
    starts.push({ wallMs: s.wallMs, readyMs: s.readyMs, template: s.migratedTemplate });
    phases = s.phases;
    const times = phaseTimes(s, await firstRequest(s));
    runPhases.push(times);
    logStart(`cold start ${i + 1}/${runs}`, s, times);
    log(`  bare PostgreSQL ${Math.round(pgMs.at(-1)!)} ms`);
    if (i < runs - 1) await s.stop();
    else stack = s;
  }
  const pg = median(pgMs);
  // The headline: the starts that copied the migrated template (every start but the first after a migration
  // change, or the first on a machine); any of the N that did not (a template made by the first of them) is
  // counted with the full-push row instead. With an external database, all N (none copies).
  const copiedIdx = starts.flatMap((start, i) => start.template === "copied" ? [i] : []);
  const headIdx = external || copiedIdx.length === 0 ? starts.map((_, i) => i) : copiedIdx;
  const headWall = median(headIdx.map((i) => starts[i].wallMs));
  const headReady = median(headIdx.map((i) => starts[i].readyMs));
  const fullIdx = starts.flatMap((_, i) => !external && !headIdx.includes(i) ? [i] : []);
  const fullWall = [...(changed ? [changed.wallMs] : []), ...fullIdx.map((i) => starts[i].wallMs)];
  const fullPhases = [...(changed ? [changed.times] : []), ...fullIdx.map((i) => runPhases[i])];
  const headWhat = external
    ? `median of ${runs}`
    : copiedIdx.length === 0
    ? `median of ${runs}; none copied the migrated template`
    : `median of the ${headIdx.length} of ${runs} that copied the migrated template`;
  const section: SectionResult = {
    id: "coldstart",
    title: "6. Local stack cold start",
    status: "ok",
    rows: [
      {
        metric: `stack cold start, process spawn → ready (${headWhat})`,
        value: headWall,
        unit: "ms",
        baseline: pg,
        baselineLabel: "bare PostgreSQL initdb+start",
        ratio: ratio(headWall, pg),
        target: "≤ 5000 ms",
        met: headWall <= 5000,
      },
      {
        metric: "  of which inside the stack process",
        value: headReady,
        unit: "ms",
        baseline: pg,
        baselineLabel: "bare PostgreSQL",
        ratio: ratio(headReady, pg),
      },
      ...phaseRows(headIdx.map((i) => runPhases[i]), "phase"),
      ...(fullWall.length === 0 ? [] : [
        {
          metric: `first start after a migration change: full supabase db push, migrated template made (${
            fullWall.length === 1 ? "1 start" : `median of ${fullWall.length}`
          })`,
          value: median(fullWall),
          unit: "ms",
          baseline: pg,
          baselineLabel: "bare PostgreSQL initdb+start",
          ratio: ratio(median(fullWall), pg),
          target: "≤ 5000 ms",
          met: median(fullWall) <= 5000,
        },
        ...phaseRows(fullPhases, "full-push start phase"),
      ]),
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
          "The baseline is still a local initdb + start, for scale. No migrated template is copied or made."
        : "The headline is what `npm start` takes once the migrated template exists for the current migrations " +
          "(local/stack/migrated_template.ts): PostgreSQL started from a copy of that template (the cluster as the " +
          "platform bootstrap and the real `supabase db push` of every migration left it), the bootstrap's check, " +
          "the real `supabase db push` (which finds every migration applied: the CLI's start and its check), and " +
          "the API server (functions + Realtime); the wall figure also includes starting the Deno process. The " +
          "full-push row is the first start after a migration is added or changed (the template's key then has " +
          "no template: measured with a temp dir of its own holding the initdb template but no migrated one), " +
          "or the first on a machine: PostgreSQL from the initdb template, the bootstrap, the push of every " +
          "migration, then the migrated template made (fast shutdown, copy, restart) before the API starts. A " +
          "start of the N that did not copy it is counted there, not in the headline. The baseline runs initdb " +
          "itself.",
    ],
    details: {
      stackWallMs: starts.map((start) => start.wallMs),
      stackReadyMs: starts.map((start) => start.readyMs),
      migratedTemplate: starts.map((start) => start.template),
      barePostgresMs: pgMs,
      phases,
      runPhases,
      afterMigrationChange: changed,
    },
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
