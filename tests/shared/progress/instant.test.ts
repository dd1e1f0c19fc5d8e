import assert from "node:assert/strict";
import fc from "fast-check";
import { compareInstants, instantMs, microsecondIso } from "../../../shared/progress/instant.ts";

Deno.test("microsecondIso: every form PostgreSQL or a client prints, to one UTC form with six digits", () => {
  const cases: [string | Date, string | null][] = [
    ["2026-11-25T09:07:25.160049+00:00", "2026-11-25T09:07:25.160049Z"], // to_jsonb
    ["2026-11-25 09:07:25.160049+00", "2026-11-25T09:07:25.160049Z"], // text output
    ["2026-11-25T14:37:25.16+05:30", "2026-11-25T09:07:25.160000Z"],
    ["2026-11-25T04:07:25.000001-0500", "2026-11-25T09:07:25.000001Z"],
    ["2026-11-25T09:07:25Z", "2026-11-25T09:07:25.000000Z"],
    ["2026-11-25T09:07:25.123Z", "2026-11-25T09:07:25.123000Z"],
    ["2026-11-25t09:07:25.123456789z", "2026-11-25T09:07:25.123456Z"], // past microseconds: dropped
    ["2026-11-25T23:59:59.999999-01:00", "2026-11-26T00:59:59.999999Z"],
    [new Date(Date.UTC(2026, 10, 25, 9, 7, 25, 160)), "2026-11-25T09:07:25.160000Z"],
    ["2026-11-25", null],
    ["2026-11-25T09:07:25.1", null], // no zone
    ["2026-13-25T09:07:25Z", null],
    ["soon", null],
    [new Date(NaN), null],
  ];
  for (const [input, expected] of cases) assert.equal(microsecondIso(input), expected, String(input));
});

Deno.test("compareInstants: microseconds decide, whatever the form", () => {
  assert.equal(compareInstants("2026-11-25T09:07:25.160049+00:00", "2026-11-25T09:07:25.160050Z"), -1);
  assert.equal(compareInstants("2026-11-25 10:07:25.16+01", "2026-11-25T09:07:25.160000Z"), 0);
  assert.equal(compareInstants("2026-11-25T09:07:25.161Z", "2026-11-25T09:07:25.160999+00:00"), 1);
  assert.ok(Number.isNaN(compareInstants("soon", "2026-11-25T09:07:25Z")));
  // Agrees with the instants' order for any two microsecond instants printed with any offset.
  const micros = fc.bigInt({ min: 0n, max: 253_402_300_799_999_999n }); // 1970 .. 9999
  const offset = fc.integer({ min: -14 * 60, max: 14 * 60 });
  const print = (us: bigint, minutes: number) => {
    const ms = Number(us / 1000n) + minutes * 60_000;
    const local = new Date(ms).toISOString().slice(0, 23) + String(us % 1000n).padStart(3, "0");
    const sign = minutes < 0 ? "-" : "+";
    const abs = Math.abs(minutes);
    return `${local}${sign}${String(Math.floor(abs / 60)).padStart(2, "0")}:${
      String(abs % 60).padStart(2, "0")
    }`;
  };
  fc.assert(
    fc.property(micros, micros, offset, offset, (a, b, oa, ob) => {
      const pa = print(a, oa);
      const pb = print(b, ob);
      if (!/^\d{4}-/.test(pa) || !/^\d{4}-/.test(pb)) return; // shifted out of 0000-9999
      assert.equal(compareInstants(pa, pb), a < b ? -1 : a > b ? 1 : 0, `${pa} vs ${pb}`);
    }),
    { numRuns: 2000 },
  );
});

Deno.test("instantMs: the millisecond PostgreSQL keys a date at (digits past the microsecond rounded, half to even)", () => {
  // What `date_trunc('milliseconds', <value>::timestamptz)` gives (tests/functions/conflict_resolver_db.test.ts
  // checks the same against the database).
  const cases: [string, string | null][] = [
    ["2026-01-01T00:00:00.123Z", "2026-01-01T00:00:00.123Z"],
    ["2026-01-01T00:00:00.123999Z", "2026-01-01T00:00:00.123Z"], // microseconds: truncated
    ["2026-01-01T00:00:00.1239996Z", "2026-01-01T00:00:00.124Z"], // rounds up into the next millisecond
    ["2026-01-01T00:00:00.1239995Z", "2026-01-01T00:00:00.124Z"], // a half, to the even microsecond
    ["2026-01-01T00:00:00.1239985Z", "2026-01-01T00:00:00.123Z"], // a half, to the even microsecond
    ["2026-01-01T00:00:59.9999995Z", "2026-01-01T00:01:00.000Z"], // into the next minute
    ["2026-01-01T02:00:00.456999999+02:00", "2026-01-01T00:00:00.457Z"],
    ["1969-12-31T23:59:59.9999999Z", "1970-01-01T00:00:00.000Z"],
    ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000Z"],
    ["soon", null],
  ];
  for (const [input, expected] of cases) {
    const ms = instantMs(input);
    assert.equal(Number.isNaN(ms) ? null : new Date(ms).toISOString(), expected, input);
  }
});
