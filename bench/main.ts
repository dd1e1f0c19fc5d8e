// `npm run bench`: readsync's performance report (GitHub issue 5).
//
//   npm run bench                         every section, including a timed `npm test` (1M and 10M
//                                         rows for reads; about 20 minutes on 2 cores)
//   npm run bench -- --quick              short runs, 100k rows for reads, no `npm test`
//   npm run bench -- --with-suite / --no-suite   (do not) time `npm test`
//   npm run bench -- --only=write,reads   some sections: coldstart, write, reads, latency,
//                                         propagation, catchup, suite
//   npm run bench -- --docs / --no-docs   (do not) rewrite docs/benchmarks.md (default: only for a
//                                         full run, i.e. without --quick and --only)
//
// Environment: BENCH_READ_ROWS="1000000,10000000", BENCH_PGBENCH_SECONDS, BENCH_PGBENCH_REPEATS,
// BENCH_PAIRED_ROUNDS, BENCH_PAIRED_SECONDS,
// BENCH_LATENCY_SECONDS, BENCH_PROPAGATION_DEVICES="1,100,1000", BENCH_PROPAGATION_UPDATES.
// SUPABASE_DB_URL / SUPABASE_URL (+ keys) point the benchmark at another stack, as for `npm test`.
//
// Writes bench/results/latest.json and bench/results/latest.md; docs/benchmarks.md for full runs.

import { fileURLToPath } from "node:url";
import { connect, machineFacts, removeBenchUsers } from "./lib/db.ts";
import { consoleTable, markdown, type Report, type SectionResult } from "./lib/report.ts";
import type { BenchStack } from "./lib/stack.ts";
import type { Ctx, Options } from "./sections/context.ts";
import { coldStartSection, suiteSection } from "./sections/startup.ts";
import { writeSection } from "./sections/write.ts";
import { readsSection } from "./sections/reads.ts";
import { latencySection } from "./sections/latency.ts";
import { propagationSection } from "./sections/propagation.ts";
import { catchupSection } from "./sections/catchup.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const args = Deno.args.filter((a) => a !== "--");
const flag = (name: string) => args.includes(`--${name}`);
const onlyArg = args.find((a) => a.startsWith("--only="))?.slice("--only=".length);
const unknown = args.filter((a) => !/^--(quick|with-suite|no-suite|docs|no-docs|only=.*)$/.test(a));
if (unknown.length > 0) {
  console.error(`unknown argument(s): ${unknown.join(" ")}\nsee the header of bench/main.ts`);
  Deno.exit(2);
}
const quick = flag("quick");
const envList = (name: string, fallback: number[]) =>
  (Deno.env.get(name)?.split(",").map((s) => Number(s.trim())).filter((n) => n > 0)) ?? fallback;
const envNum = (name: string, fallback: number) => Number(Deno.env.get(name) ?? fallback);

const opts: Options = {
  quick,
  withSuite: flag("with-suite") || (!quick && !flag("no-suite")),
  only: onlyArg ? new Set(onlyArg.split(",")) : null,
  readRows: envList("BENCH_READ_ROWS", quick ? [100_000] : [1_000_000, 10_000_000]).sort((a, b) => a - b),
  pgbenchSeconds: envNum("BENCH_PGBENCH_SECONDS", quick ? 3 : 8),
  pgbenchRepeats: envNum("BENCH_PGBENCH_REPEATS", quick ? 1 : 2),
  pairedRounds: envNum("BENCH_PAIRED_ROUNDS", quick ? 2 : 5),
  pairedSeconds: envNum("BENCH_PAIRED_SECONDS", quick ? 3 : 5),
  writeClients: [1, 4, 16],
  latencyClients: [1, 8, 32],
  latencySeconds: envNum("BENCH_LATENCY_SECONDS", quick ? 2 : 6),
  propagationDevices: envList("BENCH_PROPAGATION_DEVICES", [1, 100, 1000]),
  propagationUpdates: envNum("BENCH_PROPAGATION_UPDATES", quick ? 20 : 100),
};
const wants = (id: string) => (opts.only ? opts.only.has(id) : id !== "suite" || opts.withSuite);
const writeDocs = flag("docs") || (!flag("no-docs") && !quick && !opts.only);

const t0 = performance.now();
const log = (line: string) =>
  console.error(`[bench ${((performance.now() - t0) / 1000).toFixed(1)}s] ${line}`);

const sections: SectionResult[] = [];
/** Runs one section; `skip` (a reason) records it as skipped instead. */
const guard = async (id: string, title: string, fn: () => Promise<SectionResult>, skip?: string) => {
  if (!wants(id)) return;
  log(`section ${id}`);
  if (skip) {
    sections.push({ id, title, status: "skipped", reason: skip, rows: [], notes: [] });
    return;
  }
  try {
    sections.push(await fn());
  } catch (error) {
    log(`section ${id} failed: ${error instanceof Error ? error.stack : error}`);
    sections.push({
      id,
      title,
      status: "error",
      reason: error instanceof Error ? error.message.split("\n").slice(0, 6).join(" ") : String(error),
      rows: [],
      notes: [],
    });
  }
};

let stack: BenchStack | null = null;
const stopStack = async () => {
  await stack?.stop();
  stack = null;
};
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, async () => {
    await stopStack();
    Deno.exit(130);
  });
}

let report: Report | null = null;
let exitCode = 0;
try {
  const cold = await coldStartSection(opts, log);
  stack = cold.stack;
  if (wants("coldstart")) sections.push(cold.section);
  const sql = connect(stack.postgresJsDbUrl, { max: 4 });
  const ctx: Ctx = { stack, sql, opts, log };
  const machine = await machineFacts(sql);

  // Sections 3-5 act as bench users with access tokens they mint: against SUPABASE_URL only with
  // that project's SUPABASE_JWT_SECRET (the development default would be refused with 401s).
  const noTokens = stack.mintsTokens
    ? undefined
    : "mints bench users' access tokens: set SUPABASE_JWT_SECRET for the API at SUPABASE_URL";
  await guard("write", "1. Write path", () => writeSection(ctx));
  await guard("latency", "3. Update latency", () => latencySection(ctx), noTokens);
  await guard("propagation", "4. Propagation", () => propagationSection(ctx), noTokens);
  await guard("catchup", "5. Catch-up", () => catchupSection(ctx), noTokens);
  await guard("reads", "2. Reads", () => readsSection(ctx));

  if (!stack.ownsDatabase) {
    await removeBenchUsers(sql).catch((e) => log(`cleanup of bench users failed: ${e}`));
  }
  await sql.end();
  const target = {
    database: Deno.env.get("SUPABASE_DB_URL")
      ? `SUPABASE_DB_URL (${new URL(stack.dbUrl).host})`
      : "local stack (throwaway PostgreSQL)",
    api: Deno.env.get("SUPABASE_URL")
      ? `SUPABASE_URL (${stack.apiUrl})`
      : "local API server (local/api/server.ts)",
  };
  await stopStack();
  await guard("suite", "6b. Test suite", () => suiteSection(opts, log, cold.section));

  const order = ["coldstart", "write", "reads", "latency", "propagation", "catchup", "suite"];
  sections.sort((a, b) => order.indexOf(a.id) - order.indexOf(b.id));
  report = {
    date: new Date().toISOString(),
    command: `npm run bench${args.length ? ` -- ${args.join(" ")}` : ""}`,
    options: { ...opts, only: opts.only ? [...opts.only] : null },
    target,
    machine,
    loadAverageEnd: Deno.loadavg(),
    durationSeconds: Math.round((performance.now() - t0) / 1000),
    sections,
  };
  console.log(consoleTable(report));
  await Deno.mkdir(`${ROOT}bench/results`, { recursive: true });
  await Deno.writeTextFile(`${ROOT}bench/results/latest.json`, JSON.stringify(report, null, 2) + "\n");
  await Deno.writeTextFile(`${ROOT}bench/results/latest.md`, markdown(report) + "\n");
  log("wrote bench/results/latest.json and bench/results/latest.md");
  if (writeDocs) {
    const { renderDocs } = await import("./docs.ts");
    const path = `${ROOT}docs/benchmarks.md`;
    const existing = await Deno.readTextFile(path).catch(() => null);
    await Deno.mkdir(`${ROOT}docs`, { recursive: true });
    await Deno.writeTextFile(path, renderDocs(report, markdown(report), existing));
    log("wrote docs/benchmarks.md");
  }
  if (sections.some((s) => s.status === "error")) exitCode = 1;
} catch (error) {
  console.error(error instanceof Error ? error.stack ?? error.message : error);
  exitCode = 1;
} finally {
  await stopStack();
}
Deno.exit(exitCode);
