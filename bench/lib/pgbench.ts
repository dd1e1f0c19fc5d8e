// Runs pgbench (the PostgreSQL project's own load generator) with a custom script.

import { pgBin } from "./db.ts";

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
}

export async function runPgbench(opts: {
  dbUrl: string;
  script: string;
  clients: number;
  seconds: number;
  vars?: Record<string, string | number>;
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
    const out = await new Deno.Command(pgBin("pgbench"), { args, stdout: "piped", stderr: "piped" }).output();
    const text = new TextDecoder().decode(out.stdout);
    const err = new TextDecoder().decode(out.stderr);
    const num = (re: RegExp) => Number(text.match(re)?.[1] ?? NaN);
    const tps = num(/tps = ([\d.]+) \(without initial connection time\)/);
    if (!out.success || !Number.isFinite(tps)) {
      throw new Error(`pgbench failed (${out.code}):\n${err.slice(-3000)}\n${text.slice(-2000)}`);
    }
    return {
      clients: opts.clients,
      threads,
      seconds: opts.seconds,
      tps,
      transactions: num(/number of transactions actually processed: (\d+)/),
      failed: num(/number of failed transactions: (\d+)/) || 0,
      latencyAvgMs: num(/latency average = ([\d.]+) ms/),
      latencyStddevMs: num(/latency stddev = ([\d.]+) ms/),
      statements: Object.fromEntries(
        [...text.matchAll(/^\s+([\d.]+)\s+\d+\s+(?!\\set)(.+)$/gm)].map((m) => [m[2].trim(), Number(m[1])]),
      ),
    };
  } finally {
    await Deno.remove(file).catch(() => {});
  }
}
