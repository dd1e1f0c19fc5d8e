// Properties of the ConflictResolver on its own (fast-check). Its agreement with the database is
// tested in tests/functions/conflict_resolver_db.test.ts.

import assert from "node:assert/strict";
import fc from "fast-check";
import { ConflictResolver, conflictResolver as resolver } from "../../../shared/progress/conflictResolver.ts";

interface Update {
  updated_at: string;
  device_id: string;
  chapter: number;
}

const BASE = Date.parse("2026-03-01T00:00:00.000Z");
// Few instants and few devices, so ties and exact duplicates are common.
const updateArb: fc.Arbitrary<Update> = fc.record({
  updated_at: fc.integer({ min: 0, max: 6 }).map((ms) => new Date(BASE + ms).toISOString()),
  device_id: fc.constantFrom("a", "b", "dev-1", "dev-10", "dev-2", "Z", "z", "0"),
  chapter: fc.integer({ min: 0, max: 20 }),
});
const updatesArb = fc.array(updateArb, { minLength: 0, maxLength: 12 });
const key = (u: { updated_at: string | number | Date; device_id: string } | null) =>
  u === null ? null : `${ConflictResolver.timeOf(u)}/${u.device_id}`;
// Distinct writes (no key used twice) and some of them again: exact replays, as retries send them.
const distinctWithReplaysArb = fc.uniqueArray(updateArb, { maxLength: 12, selector: key }).chain((us) =>
  fc.tuple(fc.constant(us), fc.subarray(us)).map(([all, again]) => [...all, ...again])
);

/** A permutation of `xs` driven by fast-check (so failures shrink and replay). */
function permutationArb<T>(xs: readonly T[]): fc.Arbitrary<T[]> {
  return fc.shuffledSubarray([...xs], { minLength: xs.length, maxLength: xs.length });
}

Deno.test("compare is a total order matching the SQL: ms first, then device id byte-wise", () => {
  fc.assert(fc.property(updateArb, updateArb, updateArb, (x, y, z) => {
    assert.equal(Math.sign(resolver.compare(x, y)) + Math.sign(resolver.compare(y, x)), 0, "antisymmetric");
    assert.equal(resolver.compare(x, y) === 0, key(x) === key(y));
    if (resolver.compare(x, y) <= 0 && resolver.compare(y, z) <= 0) assert.ok(resolver.compare(x, z) <= 0);
  }));
  // Byte-wise, not locale: uppercase before lowercase, "dev-10" before "dev-2".
  const at = new Date(BASE).toISOString();
  const sorted = ["z", "dev-2", "Z", "dev-10", "0", "a"].map((d) => ({ updated_at: at, device_id: d })).sort(
    resolver.compare,
  );
  assert.deepEqual(sorted.map((u) => u.device_id), ["0", "Z", "a", "dev-10", "dev-2", "z"]);
  // Sub-millisecond digits do not count (the server truncates them).
  assert.equal(
    resolver.compare({ updated_at: "2026-03-01T00:00:00.0009Z", device_id: "a" }, {
      updated_at: BASE,
      device_id: "a",
    }),
    0,
  );
});

Deno.test("resolve is order-independent for distinct writes and replays: every permutation ends with the same key", () => {
  fc.assert(
    fc.property(
      distinctWithReplaysArb.chain((us) => fc.tuple(fc.constant(us), permutationArb(us))),
      ([us, perm]) => {
        assert.equal(key(resolver.resolve(perm)), key(resolver.resolve(us)));
        // With an initial stored version competing too.
        if (us.length > 0) {
          assert.equal(key(resolver.resolve(perm.slice(1), perm[0])), key(resolver.resolve(us)));
        }
      },
    ),
  );
});

Deno.test("resolve is idempotent: resolving again, or with the winner replayed, changes nothing", () => {
  fc.assert(fc.property(distinctWithReplaysArb, (us) => {
    const winner = resolver.resolve(us);
    assert.equal(
      resolver.resolve([...us, ...us]),
      winner,
      "the same updates twice: the same (earliest) winner object",
    );
    if (winner) {
      assert.equal(resolver.resolve([winner]), winner);
      assert.equal(resolver.resolve(us, winner), winner);
      for (const u of us) assert.ok(resolver.compare(u, winner) <= 0, "nothing beats the winner");
    } else {
      assert.equal(us.length, 0);
    }
  }));
});

Deno.test("detectConflict agrees with resolve and with classify, in any arrival order", () => {
  fc.assert(fc.property(updatesArb.chain((us) => permutationArb(us)), (order) => {
    const findings = resolver.detectConflict(order);
    // Replaying the order with apply ends at resolve's winner.
    let current: Update | null = null;
    const stored: (Update | null)[] = [];
    for (const u of order) {
      stored.push(current);
      current = resolver.apply(current, u).current;
    }
    assert.equal(key(current), key(resolver.resolve(order)));

    const pairs = new Set<string>();
    for (const f of findings) {
      assert.ok(resolver.compare(f.losing, f.winning) < 0, "the loser is below the winner");
      assert.equal(
        f.kind === "tie",
        ConflictResolver.timeOf(f.losing) === ConflictResolver.timeOf(f.winning),
      );
      const incoming = order[f.index];
      const before = stored[f.index]!;
      if (f.rejected) {
        assert.deepEqual(
          [f.losing, f.winning],
          [incoming, before],
          "a rejected write lost to the stored one",
        );
        assert.deepEqual(resolver.classify(incoming, before), {
          won: false,
          conflict: f.kind === "self" ? null : f.kind,
        });
        assert.equal(f.kind === "self", incoming.device_id === before.device_id, "'self': the same device");
      } else {
        assert.deepEqual([f.losing, f.winning], [before, incoming], "a tie winner replaced the stored one");
        assert.equal(f.kind, "tie");
        assert.deepEqual(resolver.classify(incoming, before), { won: true, conflict: "tie" });
      }
      const pair = `${key(f.losing)}>${key(f.winning)}`;
      assert.ok(!pairs.has(pair), "each (loser, winner) pair once, as the log keeps it");
      pairs.add(pair);
    }
    // Every arrival that lost is reported (as rejected) unless the same pair was already reported.
    order.forEach((u, i) => {
      const c = resolver.classify(u, stored[i]);
      if (!c.won) assert.ok(pairs.has(`${key(u)}>${key(stored[i])}`));
      if (c.won && c.conflict === "tie") assert.ok(pairs.has(`${key(stored[i])}>${key(u)}`));
    });
    // No stale finding is ever a replacement; the winner never loses.
    const winner = key(resolver.resolve(order));
    assert.ok(findings.every((f) => key(f.losing) !== winner));
  }));
});

Deno.test("a write older than its own device's stored write is not stored and is no conflict; another device's is stale", () => {
  const newer = { updated_at: new Date(BASE + 2).toISOString(), device_id: "phone", chapter: 2 };
  const older = { updated_at: new Date(BASE + 1).toISOString(), device_id: "phone", chapter: 1 };
  assert.deepEqual(resolver.classify(older, newer), { won: false, conflict: null });
  assert.equal(resolver.apply(newer, older).current, newer);
  assert.deepEqual(
    resolver.detectConflict([older, newer, older, newer]).map((
      f,
    ) => [f.kind, f.rejected, f.losing, f.winning]),
    [["self", true, older, newer]],
    "a batch sent twice: one 'self' row, no conflict",
  );
  const tablet = { ...older, device_id: "tablet" };
  assert.deepEqual(resolver.classify(tablet, newer), { won: false, conflict: "stale" });
  assert.equal(resolver.detectConflict([newer, tablet]).length, 1);
});

Deno.test("a reused key with another position lands 1 ms after the version it meets; its retry is answered the same", () => {
  const at = new Date(BASE).toISOString();
  const first = { updated_at: at, device_id: "phone", chapter: 5 };
  const later = { updated_at: at, device_id: "phone", chapter: 40 };
  assert.deepEqual(resolver.classify(first, first), { won: true, conflict: null }, "an exact replay");
  assert.deepEqual(resolver.apply(first, first).current, first, "a replay keeps the stored version");
  assert.deepEqual(resolver.classify(later, first), { won: true, conflict: null });
  const landed = resolver.apply(first, later).current;
  assert.deepEqual(landed, { ...later, updated_at: new Date(BASE + 1).toISOString() });
  assert.deepEqual(resolver.classify(later, landed), { won: true, conflict: null }, "its retry");
  assert.equal(resolver.apply(landed, later).current, landed, "the retry changes nothing");
  assert.deepEqual(
    resolver.classify(first, landed),
    { won: false, conflict: null },
    "the older position is not stored, and it is the device's own order, not a conflict",
  );
  assert.deepEqual(resolver.detectConflict([first, later, later]), [], "no conflict is logged");
  assert.deepEqual(resolver.resolve([first, later]), landed);
  // Arrival order decides among positions under one key: the later arrival is the device's later one.
  assert.deepEqual(resolver.resolve([later, first]), {
    ...first,
    updated_at: new Date(BASE + 1).toISOString(),
  });
  // Without positions (keys only), equal keys are always a replay.
  const bare = { updated_at: at, device_id: "phone" };
  assert.equal(resolver.apply(bare, { ...bare }).current, bare);
  // A missing cleared is false.
  assert.ok(ConflictResolver.samePosition({ ...first, cleared: false } as typeof first, first));
});

Deno.test("normalize clamps only beyond the tolerance and truncates to milliseconds", () => {
  const now = Date.parse("2026-03-01T12:00:00.000Z");
  const r = new ConflictResolver();
  assert.equal(
    r.normalize({ updated_at: now + 4_999, device_id: "a" }, now).updated_at,
    new Date(now + 4_999).toISOString(),
  );
  assert.equal(
    r.normalize({ updated_at: now + 5_001, device_id: "a" }, now).updated_at,
    new Date(now).toISOString(),
  );
  assert.equal(
    r.normalize({ updated_at: "2026-03-01T11:00:00.123456Z", device_id: "a" }, now).updated_at,
    "2026-03-01T11:00:00.123Z",
  );
});

Deno.test("a write dated beyond the tolerance lands after the stored version and wins", () => {
  const now = Date.parse("2026-03-01T12:00:00.000Z");
  const r = new ConflictResolver();
  const ahead = { updated_at: now + 3_600_000, device_id: "a" };
  // The stored version lies 3 s ahead (within the tolerance), or is an earlier such write of this
  // very millisecond from the same device: either way the write is stored 1 ms after it and wins.
  for (const stored of [{ updated_at: now + 3_000, device_id: "z" }, { updated_at: now, device_id: "a" }]) {
    const key = r.normalize(ahead, now, stored);
    assert.equal(key.updated_at, new Date(ConflictResolver.timeOf(stored) + 1).toISOString());
    assert.deepEqual(r.classify(key, stored), { won: true, conflict: null });
  }
  // An older stored version: simply now.
  assert.equal(
    r.normalize(ahead, now, { updated_at: now - 10, device_id: "z" }).updated_at,
    new Date(now).toISOString(),
  );
  // Within the tolerance the stored version plays no part.
  const near = { updated_at: now + 2_000, device_id: "a" };
  assert.equal(
    r.normalize(near, now, { updated_at: now + 3_000, device_id: "z" }).updated_at,
    new Date(now + 2_000).toISOString(),
  );
});

Deno.test("timeOf refuses a key the server refuses (a TypeError naming it and why), and keys a Date or a number as its ISO string", () => {
  const LAST = Date.parse("9999-12-31T23:59:59.999Z");
  // Strings the API's updatedAtSchema refuses (a 422): each was keyed at some instant before.
  const refused: [string, RegExp][] = [
    ["2026-01-01T00:00:00+16:00", /UTC offset/],
    ["2026-01-01T00:00:00-23:59", /UTC offset/],
    ["0000-12-31T23:00:00-01:00", /before 1970/],
    [`2026-01-01T00:00:00.${"1".repeat(129)}Z`, /149 characters/],
    ["1969-12-31T23:59:59.999Z", /before 1970/],
    ["9999-12-31T23:30:00-00:31", /after 9999/],
    ["2026-01-01", /ISO 8601/],
    ["2026-01-01 00:00:00Z", /ISO 8601/],
    ["garbage", /ISO 8601/],
  ];
  for (const [text, why] of refused) {
    for (
      const call of [
        () => ConflictResolver.timeOf({ updated_at: text, device_id: "a" }),
        () => resolver.compare({ updated_at: text, device_id: "a" }, { updated_at: BASE, device_id: "a" }),
      ]
    ) {
      assert.throws(call, (error: Error) => {
        assert.ok(error instanceof TypeError, String(error));
        assert.match(error.message, /^invalid updated_at "/);
        assert.match(error.message, why, text);
        return true;
      });
    }
  }
  // A Date or a number (epoch ms): 1970 to 9999 in UTC, as toISOString() of it is taken.
  for (const value of [-1, new Date(-1), LAST + 1, new Date(LAST + 1), NaN, Infinity, new Date(NaN)]) {
    assert.throws(
      () => ConflictResolver.timeOf({ updated_at: value, device_id: "a" }),
      (error: Error) => error instanceof TypeError && /from 1970 to 9999 in UTC$/.test(error.message),
      String(value),
    );
  }
  for (
    const [value, ms] of [[0, 0], [new Date(0), 0], [LAST, LAST], [new Date(LAST), LAST], [1.7, 1]] as const
  ) {
    assert.equal(ConflictResolver.timeOf({ updated_at: value, device_id: "a" }), ms, String(value));
  }
  // Taken: any offset PostgreSQL reads, digits past the microsecond rounded as it reads them.
  assert.equal(
    ConflictResolver.timeOf({ updated_at: "2026-01-01T00:00:00+15:59", device_id: "a" }),
    Date.parse("2026-01-01T00:00:00+15:59"),
  );
  assert.equal(
    ConflictResolver.timeOf({ updated_at: "2026-01-01T00:00:00.1239996Z", device_id: "a" }),
    Date.parse("2026-01-01T00:00:00.124Z"),
  );
});
