import assert from "node:assert/strict";
import fc from "fast-check";
import { backoffCeiling, fullJitterDelay } from "./backoff.ts";
import { defaultCompareRows, defaultParseRow } from "./progressContract.ts";
import { type LwwRow, ProgressMergeState } from "./progressMerge.ts";

const row = (series_id: string, ms: number, device_id = "d1"): LwwRow => ({
  series_id,
  updated_at: new Date(1_700_000_000_000 + ms).toISOString(),
  device_id,
});

Deno.test("merge: newer applies, same version is a duplicate, older is stale", () => {
  const state = new ProgressMergeState<LwwRow>(defaultCompareRows);
  assert.equal(state.merge("upsert", row("a", 10)), "applied");
  assert.equal(state.merge("upsert", row("a", 10)), "duplicate");
  assert.equal(state.merge("upsert", row("a", 5)), "stale");
  assert.equal(state.merge("upsert", row("a", 10, "d0")), "stale"); // same time, smaller device id
  assert.equal(state.merge("upsert", row("a", 10, "d2")), "applied"); // same time, larger device id
  assert.equal(state.merge("upsert", row("b", 1)), "applied");
  assert.deepEqual(state.rows().map((r) => r.series_id).sort(), ["a", "b"]);
});

Deno.test("merge: a message id seen before is a duplicate whatever it carries", () => {
  const state = new ProgressMergeState<LwwRow>(defaultCompareRows, { maxRecentIds: 2 });
  assert.equal(state.merge("upsert", row("a", 1), "m1"), "applied");
  assert.equal(state.merge("upsert", row("a", 2), "m1"), "duplicate");
  state.merge("upsert", row("b", 1), "m2");
  state.merge("upsert", row("c", 1), "m3"); // m1 falls out of the bounded window
  assert.equal(state.merge("upsert", row("a", 3), "m1"), "applied");
});

Deno.test("merge: deletes apply to the version they deleted, never resurrect, never beat newer", () => {
  const state = new ProgressMergeState<LwwRow>(defaultCompareRows);
  state.merge("upsert", row("a", 10));
  assert.equal(state.merge("delete", row("a", 10)), "applied");
  assert.equal(state.get("a"), undefined);
  assert.equal(state.merge("upsert", row("a", 10)), "stale", "a late copy of the deleted version");
  assert.equal(state.merge("delete", row("a", 10)), "duplicate");
  assert.equal(state.merge("upsert", row("a", 20)), "applied", "a newer write after the delete");
  assert.equal(state.merge("delete", row("a", 15)), "stale", "deleting an older version");
  assert.equal(state.get("a")?.updated_at, row("a", 20).updated_at);
});

Deno.test("merge: any order and any duplication of versions ends at the newest, applied strictly increasing", () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          s: fc.constantFrom("a", "b", "c"),
          t: fc.integer({ min: 0, max: 50 }),
          d: fc.constantFrom("d1", "d2"),
        }),
        {
          minLength: 1,
          maxLength: 60,
        },
      ),
      (versions) => {
        const state = new ProgressMergeState<LwwRow>(defaultCompareRows);
        const lastApplied = new Map<string, LwwRow>();
        for (const v of versions) {
          const r = row(v.s, v.t, v.d);
          if (state.merge("upsert", r) === "applied") {
            const prev = lastApplied.get(v.s);
            if (prev) assert.ok(defaultCompareRows(prev, r) < 0);
            lastApplied.set(v.s, r);
          }
        }
        for (const s of new Set(versions.map((v) => v.s))) {
          const newest = versions.filter((v) => v.s === s).map((v) => row(s, v.t, v.d))
            .reduce((a, b) => (defaultCompareRows(a, b) >= 0 ? a : b));
          assert.deepEqual(state.get(s), newest);
        }
      },
    ),
  );
});

Deno.test("contract: broadcast rows are validated by the shared row schema, instants normalised to ISO Z", () => {
  const valid = {
    user_id: "6f1c1c2e-8a51-4a8e-9b0e-4a1f3c2b1d00",
    series_id: "one-piece",
    chapter: 3,
    page: 1,
    percentage: 0.5,
    cleared: false,
    device_id: "phone-1",
    updated_at: "2026-11-25T09:07:25.16+00:00",
    synced_at: "2026-11-25T09:07:25.171812+00:00",
    change_xid: "759",
    created_at: "2026-11-25T09:07:25.160049+00:00",
  };
  assert.equal(defaultParseRow(valid).updated_at, "2026-11-25T09:07:25.160Z");
  for (
    const broken of [
      null,
      { ...valid, chapter: -1 },
      { ...valid, percentage: 2 },
      { ...valid, user_id: "x" },
      { ...valid, updated_at: "soon" },
    ]
  ) {
    assert.throws(() => defaultParseRow(broken));
  }
});

Deno.test("backoff: full jitter stays under a capped exponential ceiling", () => {
  const options = { initialMs: 100, maxMs: 5_000 };
  assert.deepEqual([1, 2, 3, 4, 6, 7, 60].map((n) => backoffCeiling(n, options)), [
    100,
    200,
    400,
    800,
    3_200,
    5_000,
    5_000,
  ]);
  assert.equal(fullJitterDelay(3, options, () => 0), 0);
  assert.equal(fullJitterDelay(3, options, () => 0.5), 200);
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 1_000 }),
      fc.double({ min: 0, max: 0.999999, noNaN: true }),
      (n, r) => {
        const d = fullJitterDelay(n, options, () => r);
        return d >= 0 && d < Math.max(1, backoffCeiling(n, options)) && d <= 5_000;
      },
    ),
  );
});
