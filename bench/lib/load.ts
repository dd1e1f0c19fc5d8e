// A closed-loop load generator: `clients` workers, each sending its next request as soon as the
// previous one answered, for a fixed time; every latency goes into one HDR-style histogram.
//
// Why not autocannon (npm) or an apt tool (wrk, ab): every request must carry a different body
// (a new series and a newer updated_at, or the write is a replay that skips the UPDATE and its
// broadcast), each client acts as a different user with its own token, and the same loop has to
// drive the SQL baseline (postgres.js) so both sides are measured by identical code. A few lines of
// Deno with the histogram in bench/lib/histogram.ts do that; the server runs in its own process
// (bench/lib/stack_child.ts), so the generator never shares an event loop with what it measures.

import { Histogram } from "./histogram.ts";

export interface LoadResult {
  histogram: Histogram;
  errors: number;
  firstError?: string;
  seconds: number;
  throughput: number;
}

/**
 * Runs `op(client, i)` from `clients` concurrent loops for `seconds` after `warmupSeconds` of
 * unrecorded warm-up. `op` must throw on a failed request (counted, not recorded).
 */
export async function closedLoop(
  clients: number,
  seconds: number,
  op: (client: number, i: number) => Promise<void>,
  warmupSeconds = 0.5,
): Promise<LoadResult> {
  const histogram = new Histogram();
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const recordFrom = start + warmupSeconds * 1000;
  const end = recordFrom + seconds * 1000;
  let recorded = 0;
  await Promise.all(Array.from({ length: clients }, async (_, client) => {
    for (let i = 0; performance.now() < end; i++) {
      const t = performance.now();
      try {
        await op(client, i);
        if (t >= recordFrom) {
          histogram.recordMs(performance.now() - t);
          recorded++;
        }
      } catch (error) {
        errors++;
        firstError ??= error instanceof Error ? error.message : String(error);
      }
    }
  }));
  const measured = (performance.now() - recordFrom) / 1000;
  return { histogram, errors, firstError, seconds: measured, throughput: recorded / measured };
}
