// Paired A/B of the write breakdown's steps (bench/sections/write.ts), on a throwaway stack:
//
//   deno run -A bench/write_steps.ts [--clients=1] [--rounds=8] [--seconds=5] stamp reset_rules stamp
//
// Each named step runs once per round through the breakdown's own code (its script, its trigger
// switches, the vacuum and truncate before every run: runOnce), the order reversed every other round
// (A B C, C B A, ...), after one warm-up run that is not counted. A step named twice is an A/A
// control (the second is shown as "<id>#2"). Per run it prints tps, wall µs per transaction
// (clients × 1e6 / tps), the CPU µs per transaction of the backends, of pgbench and of the whole
// machine (/proc), and the gap: wall − backend − pgbench at 1 client, the time per transaction
// neither side ran (the round trip's wake-ups). Then, per step against the first: the medians of
// the per-round differences. A diagnostic tool, not part of `npm run bench`.

import { connect } from "./lib/db.ts";
import { spawnStack } from "./lib/stack.ts";
import type { PgbenchResult } from "./lib/pgbench.ts";
import { median } from "./lib/report.ts";
import type { Ctx, Options } from "./sections/context.ts";
import {
  installDirectSendTrigger,
  prepareWriteTables,
  runOnce,
  setTriggers,
  type Variant,
  variants,
} from "./sections/write.ts";

const args = Deno.args.filter((a) => a !== "--");
const opt = (name: string, fallback: number) =>
  Number(args.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback);
const clients = opt("clients", 1);
const rounds = opt("rounds", 8);
const seconds = opt("seconds", 5);
const names = args.filter((a) => !a.startsWith("--"));
if (names.length < 2) {
  console.error("name two or more steps of the write breakdown, e.g. stamp reset_rules stamp");
  Deno.exit(2);
}

const log = (line: string) =>
  console.error(`[write_steps ${new Date().toISOString().slice(11, 19)}] ${line}`);
const stack = await spawnStack();
const sql = connect(stack.postgresJsDbUrl, { max: 2 });
const ctx: Ctx = { stack, sql, opts: {} as Options, log };
try {
  const [{ notify }] = await sql<{ notify: boolean }[]>`
    select exists (select 1 from pg_trigger where tgname = 'local_notify_message'
                   and tgrelid = 'realtime.messages'::regclass) as notify`;
  const all = variants(true, notify);
  const seen = new Map<string, number>();
  const list: Variant[] = names.map((name) => {
    const v = all.find((x) => x.id === name);
    if (!v) throw new Error(`no step ${name}; steps: ${all.map((x) => x.id).join(", ")}`);
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    return n === 1 ? v : { ...v, id: `${name}#${n}` };
  });
  await prepareWriteTables(ctx);
  await installDirectSendTrigger(ctx);
  log(`clients ${clients}, ${rounds} rounds of -T ${seconds}, steps ${list.map((v) => v.id).join(" ")}`);
  await runOnce(ctx, list[0], clients, seconds); // warm-up: the tables' first updates, caches

  interface Measured {
    tps: number;
    wall: number;
    backend: number;
    client: number;
    machine: number;
    steal: number;
    gap: number;
  }
  const measured = (r: PgbenchResult): Measured => {
    const cpu = r.cpu ??
      { backendUsPerTxn: NaN, clientUsPerTxn: NaN, machineUsPerTxn: NaN, stealUsPerTxn: NaN };
    const wall = (clients * 1e6) / r.tps;
    return {
      tps: r.tps,
      wall,
      backend: cpu.backendUsPerTxn,
      client: cpu.clientUsPerTxn,
      machine: cpu.machineUsPerTxn,
      steal: cpu.stealUsPerTxn,
      gap: wall - cpu.backendUsPerTxn - cpu.clientUsPerTxn,
    };
  };
  const runs: Record<string, Measured[]> = Object.fromEntries(list.map((v) => [v.id, []]));
  for (let r = 0; r < rounds; r++) {
    for (const v of r % 2 === 0 ? list : [...list].reverse()) {
      const m = measured(await runOnce(ctx, v, clients, seconds));
      runs[v.id].push(m);
      console.log(
        [
          `round ${r + 1}`,
          v.id.padEnd(14),
          `${m.tps.toFixed(0)} tps`,
          `wall ${m.wall.toFixed(1)}`,
          `backend ${m.backend.toFixed(1)}`,
          `pgbench ${m.client.toFixed(1)}`,
          `gap ${m.gap.toFixed(1)}`,
          `machine ${m.machine.toFixed(1)}`,
          `steal ${m.steal.toFixed(1)} µs/txn`,
          `load ${Deno.loadavg()[0].toFixed(1)}`,
        ].join("  "),
      );
    }
  }
  const base = list[0].id;
  for (const v of list.slice(1)) {
    const diff = (k: keyof Measured) => runs[v.id].map((m, i) => m[k] - runs[base][i][k]);
    const show = (k: keyof Measured) => {
      const d = diff(k);
      return `${k} ${median(d) >= 0 ? "+" : ""}${median(d).toFixed(1)} (${Math.min(...d).toFixed(1)} … ${
        Math.max(...d).toFixed(1)
      })`;
    };
    console.log(
      `${v.id} − ${base}, median of ${rounds} rounds (range), µs per transaction: ` +
        (["wall", "backend", "client", "gap", "machine"] as const).map(show).join(", "),
    );
  }
} finally {
  await setTriggers(ctx, null).catch(() => {});
  await sql.end();
  await stack.stop();
}
