// Runs pgbench (the PostgreSQL project's own load generator) with a custom script, and, when the
// server runs on this machine, the CPU time its backends and pgbench itself used per transaction.

import type postgres from "postgres";
import { pgBin } from "./db.ts";

/**
 * CPU time per transaction, from the kernel's own accounting (/proc/<pid>/task/<tid>/schedstat: ns
 * run on a CPU). Wall time per transaction at 1 client also holds the two wake-ups of every round
 * trip (pgbench → backend → pgbench) and any wait for a CPU, which vary from run to run (the other
 * processes on the machine, where the scheduler puts the two) by more than a trigger's cost.
 */
export interface PgbenchCpu {
  /** The pgbench connections' backends, together, µs per transaction. */
  backendUsPerTxn: number;
  /** pgbench's own process (all its threads), µs per transaction. */
  clientUsPerTxn: number;
  /** Every CPU of the machine busy (not idle, not iowait) during the run, µs per transaction. */
  machineUsPerTxn: number;
  /** Steal time (the hypervisor running something else on our vCPUs), µs per transaction. */
  stealUsPerTxn: number;
}

export interface PgbenchResult {
  clients: number;
  threads: number;
  seconds: number;
  tps: number;
  transactions: number;
  failed: number;
  latencyAvgMs: number;
  latencyStddevMs: number;
  /** Per-statement average latency (ms), from -r, keyed by the statement's first line. */
  statements: Record<string, number>;
  /** Only when runPgbench was given `cpuOf` (the server's processes are this machine's). */
  cpu?: PgbenchCpu;
}

/** ns a process's threads have run on a CPU so far, or null once it is gone. */
function runNs(pid: number): number | null {
  let total = 0;
  try {
    for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
      total += Number(Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/schedstat`).split(" ")[0]);
    }
  } catch {
    return null;
  }
  return total;
}

/** The machine's CPU time so far (clock ticks, all CPUs): busy (not idle or iowait) and steal. */
function machineTicks(): { busy: number; steal: number } {
  const f = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is counted in user already)
  return { busy: f[0] + f[1] + f[2] + f[5] + f[6] + f[7], steal: f[7] ?? 0 };
}

export async function runPgbench(opts: {
  dbUrl: string;
  script: string;
  clients: number;
  seconds: number;
  vars?: Record<string, string | number>;
  /**
   * A connection to the server pgbench loads, whose processes run on this machine: the run's
   * backends are found in pg_stat_activity (application_name pgbench) and their CPU time read from
   * /proc while pgbench runs (the result's `cpu`).
   */
  cpuOf?: postgres.Sql;
}): Promise<PgbenchResult> {
  const file = await Deno.makeTempFile({ prefix: "readsync-bench-", suffix: ".sql" });
  await Deno.writeTextFile(file, opts.script);
  const threads = Math.max(1, Math.min(opts.clients, navigator.hardwareConcurrency));
  const args = [
    "-n", // no vacuum of pgbench's own tables (we use none)
    "-M",
    "prepared",
    "-c",
    String(opts.clients),
    "-j",
    String(threads),
    "-T",
    String(opts.seconds),
    "-r",
    ...Object.entries(opts.vars ?? {}).flatMap(([k, v]) => ["-D", `${k}=${v}`]),
    "-f",
    file,
    opts.dbUrl,
  ];
  try {
    // The previous run's backends can still be listed while they exit: only those started after this.
    const since = opts.cpuOf
      ? (await opts.cpuOf<{ t: Date }[]>`select pg_catalog.clock_timestamp() as t`)[0].t
      : null;
    const child = new Deno.Command(pgBin("pgbench"), { args, stdout: "piped", stderr: "piped" }).spawn();
    const cpu = opts.cpuOf ? watchCpu(opts.cpuOf, child, opts.clients, since!) : null;
    const out = await child.output();
    const used = await cpu;
    const text = new TextDecoder().decode(out.stdout);
    const err = new TextDecoder().decode(out.stderr);
    const num = (re: RegExp) => Number(text.match(re)?.[1] ?? NaN);
    const tps = num(/tps = ([\d.]+) \(without initial connection time\)/);
    if (!out.success || !Number.isFinite(tps)) {
      throw new Error(`pgbench failed (${out.code}):\n${err.slice(-3000)}\n${text.slice(-2000)}`);
    }
    const transactions = num(/number of transactions actually processed: (\d+)/);
    return {
      clients: opts.clients,
      threads,
      seconds: opts.seconds,
      tps,
      transactions,
      failed: num(/number of failed transactions: (\d+)/) || 0,
      latencyAvgMs: num(/latency average = ([\d.]+) ms/),
      latencyStddevMs: num(/latency stddev = ([\d.]+) ms/),
      statements: Object.fromEntries(
        [...text.matchAll(/^\s+([\d.]+)\s+\d+\s+(?!\\set)(.+)$/gm)].map((m) => [m[2].trim(), Number(m[1])]),
      ),
      ...(used && transactions > 0
        ? {
          cpu: {
            backendUsPerTxn: used.backendNs / 1000 / transactions,
            clientUsPerTxn: used.clientNs / 1000 / transactions,
            machineUsPerTxn: (used.busyTicks * 1e6) / TICKS_PER_SECOND / transactions,
            stealUsPerTxn: (used.stealTicks * 1e6) / TICKS_PER_SECOND / transactions,
          },
        }
        : {}),
    };
  } finally {
    await Deno.remove(file).catch(() => {});
  }
}

/** USER_HZ: the unit of /proc/stat, 100 on every Linux architecture Deno runs on. */
const TICKS_PER_SECOND = 100;

/**
 * Follows one pgbench run: its backends' and its own CPU time (schedstat, ns), the machine's busy and
 * steal ticks, from when its connections are all open to the last reading before it exits (read
 * every 20 ms; a backend's last reading is kept once it is gone). null if the backends never showed.
 */
async function watchCpu(
  sql: postgres.Sql,
  child: Deno.ChildProcess,
  clients: number,
  since: Date,
): Promise<{ backendNs: number; clientNs: number; busyTicks: number; stealTicks: number } | null> {
  let exited = false;
  child.status.then(() => exited = true, () => exited = true);
  const tick = () => new Promise((resolve) => setTimeout(resolve, 20));
  const first = new Map<number, number>();
  const last = new Map<number, number>();
  const gone = new Set<number>();
  const alive = () => first.size - gone.size;
  // pgbench opens a connection of its own and closes it before its clients connect, so backends are
  // looked up whenever fewer than `clients` of those found are alive (at the end too, as they exit).
  const lookUp = async () => {
    const rows = await sql<{ pid: number }[]>`
      select pid from pg_catalog.pg_stat_activity
       where application_name = 'pgbench' and backend_type = 'client backend' and backend_start >= ${since}`;
    for (const { pid } of rows) {
      const ns = first.has(pid) ? null : runNs(pid);
      if (ns !== null) {
        first.set(pid, ns);
        last.set(pid, ns);
      }
    }
  };
  let clientFirst: number | null = null;
  let clientLast = 0;
  let m0 = machineTicks();
  let m1 = m0;
  while (!exited) {
    if (alive() < clients) await lookUp();
    if (clientFirst === null && alive() >= clients) {
      clientFirst = clientLast = runNs(child.pid) ?? 0;
      m0 = m1 = machineTicks();
    }
    await tick();
    for (const pid of first.keys()) {
      const ns = gone.has(pid) ? null : runNs(pid);
      if (ns !== null) last.set(pid, ns);
      else gone.add(pid);
    }
    const ns = runNs(child.pid);
    if (ns !== null && !exited && clientFirst !== null) {
      clientLast = ns;
      m1 = machineTicks();
    }
  }
  if (clientFirst === null) return null;
  let backendNs = 0;
  for (const [pid, ns] of first) backendNs += last.get(pid)! - ns;
  return {
    backendNs,
    clientNs: clientLast - clientFirst,
    busyTicks: m1.busy - m0.busy,
    stealTicks: m1.steal - m0.steal,
  };
}
