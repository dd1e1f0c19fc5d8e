// Correctness of the percentile math only (no timing assertions): `npx deno test bench/`.
import assert from "node:assert/strict";
import { Histogram } from "./histogram.ts";

function exactPercentile(sorted: number[], p: number): number {
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

Deno.test("percentiles are within 1% of the exact sample percentile", () => {
  const h = new Histogram();
  const values: number[] = [];
  let seed = 42;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  for (let i = 0; i < 50_000; i++) {
    const v = Math.floor(Math.exp(rand() * 14)); // 1 us .. ~1.2 s, log-spread
    values.push(v);
    h.record(v);
  }
  values.sort((a, b) => a - b);
  for (const p of [1, 10, 50, 90, 95, 99, 99.9, 100]) {
    const exact = exactPercentile(values, p);
    const got = h.percentile(p);
    assert.ok(got >= exact, `p${p}: ${got} < ${exact}`);
    assert.ok(got <= exact * 1.01 + 1, `p${p}: ${got} vs ${exact}`);
  }
  assert.equal(h.count, 50_000);
  assert.equal(h.max, values.at(-1));
  assert.equal(h.min, values[0]);
});

Deno.test("small integers are exact; merge adds counts", () => {
  const a = new Histogram();
  const b = new Histogram();
  for (let i = 1; i <= 100; i++) (i % 2 ? a : b).record(i);
  a.merge(b);
  assert.equal(a.count, 100);
  assert.equal(a.percentile(50), 50);
  assert.equal(a.percentile(99), 99);
  assert.equal(a.percentile(100), 100);
  assert.deepEqual(a.summaryMs().p50, 0.05);
});

Deno.test("empty histogram reports NaN, negative values clamp to zero", () => {
  const h = new Histogram();
  assert.ok(Number.isNaN(h.percentile(50)));
  h.record(-5);
  assert.equal(h.percentile(50), 0);
});
