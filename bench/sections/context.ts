import type postgres from "postgres";
import type { BenchStack } from "../lib/stack.ts";

export interface Options {
  quick: boolean;
  withSuite: boolean;
  only: Set<string> | null;
  /** Row counts for the read section, ascending. */
  readRows: number[];
  /** pgbench seconds per run, and runs per variant (ABAB... order). */
  pgbenchSeconds: number;
  pgbenchRepeats: number;
  /** Write targets: interleaved rounds of bare / full path / function, and pgbench seconds per run. */
  pairedRounds: number;
  pairedSeconds: number;
  writeClients: number[];
  latencyClients: number[];
  latencySeconds: number;
  propagationDevices: number[];
  propagationUpdates: number;
}

export interface Ctx {
  stack: BenchStack;
  sql: postgres.Sql;
  opts: Options;
  log: (line: string) => void;
}
