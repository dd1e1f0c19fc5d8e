import assert from "node:assert/strict";
import fc from "fast-check";
import { backoffCeiling, fullJitterDelay } from "../../../shared/realtime/backoff.ts";
import { defaultCompareRows, defaultParseRow } from "../../../shared/realtime/progressContract.ts";
import {
  compareServerVersions,
  type LwwRow,
  ProgressMergeState,
} from "../../../shared/realtime/progressMerge.ts";

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

/** A server version: `life` = when this life of the row was inserted (ms after the epoch above). */
const lived = (series_id: string, life: number, ms: number, device_id = "d1"): LwwRow => ({
  ...row(series_id, ms, device_id),
  created_at: new Date(1_700_000_000_000 + life).toISOString(),
});

Deno.test("merge: after a hard DELETE the next insert is a new life and applies even with an older updated_at", () => {
  const state = new ProgressMergeState<LwwRow>(defaultCompareRows);
  const firstLife = lived("a", 0, 100);
  state.merge("upsert", firstLife);
  assert.equal(state.merge("delete", firstLife), "applied");
  // An e-reader back from a week offline writes its old position; the server inserts it (no row).
  const secondLife = lived("a", 500, 20, "ereader");
  assert.equal(state.merge("upsert", secondLife), "applied", "the server has it, so must every device");
  assert.deepEqual(state.get("a"), secondLife);
  assert.equal(state.merge("upsert", firstLife), "stale", "a late copy of the first life");
  assert.equal(state.merge("delete", firstLife), "stale", "a late delete of the first life");
  assert.equal(
    state.merge("upsert", lived("a", 500, 30)),
    "applied",
    "last-write-wins within the second life",
  );
  assert.equal(state.merge("upsert", lived("a", 500, 25)), "stale");
  // Delivered the other way round (catch-up returned the second life before the broadcasts of the
  // first arrived): the first life never shows.
  const late = new ProgressMergeState<LwwRow>(defaultCompareRows);
  assert.equal(late.merge("upsert", secondLife), "applied");
  assert.equal(late.merge("upsert", firstLife), "stale");
  assert.equal(late.merge("delete", firstLife), "stale");
  assert.deepEqual(late.get("a"), secondLife);
  // Pending writes carry no created_at: ordered by last-write-wins only.
  assert.ok(compareServerVersions(defaultCompareRows)(row("a", 30), secondLife) > 0);
});

Deno.test("merge: server histories with hard deletes and re-inserts converge in any delivery order", () => {
  // A model of the server: writes win by last-write-wins within a life; a hard DELETE ends the life;
  // the next write starts a new one whatever its updated_at. Every event is delivered at least once,
  // in any order, some twice; the device must end where the server ended.
  fc.assert(
    fc.property(
      fc.array(
        fc.oneof(
          fc.record({
            op: fc.constant("write" as const),
            t: fc.integer({ min: 0, max: 30 }),
            d: fc.constantFrom("d1", "d2"),
          }),
          fc.record({ op: fc.constant("delete" as const) }),
        ),
        { minLength: 1, maxLength: 25 },
      ),
      fc.infiniteStream(fc.double({ min: 0, max: 1, noNaN: true })),
      (ops, noise) => {
        const events: { kind: "upsert" | "delete"; row: LwwRow }[] = [];
        let current: LwwRow | null = null;
        let life = 0;
        for (const op of ops) {
          if (op.op === "delete") {
            if (current) events.push({ kind: "delete", row: current });
            current = null;
            continue;
          }
          if (current === null) life += 10; // a new life, inserted later than the last one
          const candidate = lived("s", life, op.t, op.d);
          if (current !== null && defaultCompareRows(candidate, current) <= 0) continue; // lost
          current = candidate;
          events.push({ kind: "upsert", row: candidate });
        }
        const random = noise[Symbol.iterator]();
        const next = () => random.next().value as number;
        const deliveries = [...events, ...events.filter(() => next() < 0.3)]
          .map((e) => ({ e, key: next() }))
          .sort((x, y) => x.key - y.key)
          .map((x) => x.e);
        const state = new ProgressMergeState<LwwRow>(defaultCompareRows);
        for (const { kind, row } of deliveries) state.merge(kind, row);
        assert.deepEqual(state.get("s"), current ?? undefined);
      },
    ),
  );
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

Deno.test("merge: two lives begun within one millisecond are told apart by their microseconds", () => {
  // A delete and an insert in one transaction: the second life begins 40 µs after the first, in
  // the same millisecond, with an older position. The server keeps it; so must the device.
  const state = new ProgressMergeState<LwwRow>(defaultCompareRows);
  const firstLife = { ...row("a", 100), created_at: "2026-12-03T21:39:32.160049+00:00" };
  const secondLife = { ...row("a", 20, "ereader"), created_at: "2026-12-03T21:39:32.160089Z" };
  state.merge("upsert", firstLife);
  assert.equal(state.merge("delete", firstLife), "applied");
  assert.equal(state.merge("upsert", secondLife), "applied");
  assert.deepEqual(state.get("a"), secondLife);
  assert.equal(state.merge("upsert", firstLife), "stale", "a late copy of the first life");
  // The same life printed in another form (an API answer and a broadcast) is one life.
  const sameLifeLater = { ...row("a", 30, "ereader"), created_at: "2026-12-03 22:39:32.160089+01" };
  assert.equal(state.merge("upsert", sameLifeLater), "applied");
  assert.equal(state.merge("upsert", secondLife), "stale");
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
  assert.equal(
    defaultParseRow(valid).created_at,
    "2026-11-25T09:07:25.160049Z",
    "created_at keeps microseconds",
  );
  for (
    const broken of [
      null,
      { ...valid, chapter: -1 },
      { ...valid, percentage: 2 },
      { ...valid, user_id: "x" },
      { ...valid, updated_at: "soon" },
      { ...valid, created_at: "2026-11-25" },
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
