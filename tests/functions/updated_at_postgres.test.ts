// The API reads a date as PostgreSQL's timestamptz input does (PostgreSQL 15, the test stack's).
// A date updatedAtSchema accepts is one a Data API write of the same text accepts, stored at the same
// millisecond; one PostgreSQL refuses is refused by the schema (the API's 422 validation_failed,
// nothing stored), never accepted and stored as some other instant. Exactly: the schema accepts a text
// when it has the RFC 3339 form z.iso.datetime({ offset: true }) checks ("T", seconds, "Z" or "±HH:MM"),
// PostgreSQL reads it (`select $1::timestamptz`) and the instant is in 1970..9999 (UTC); its answer is
// then PostgreSQL's instant truncated to the millisecond. The library cursor's date the same, in
// 0001..9999. Checked for a table of edges (offsets at PostgreSQL's ±15:59:59 limit, texts at its
// 149-character limit, fractions rounding across a millisecond, second or year) and for random texts,
// and for the table through the function's write path and a Data API write. The ConflictResolver's key
// (timeOf) agrees with the schema on every one of them: the same millisecond, or refused.

import assert from "node:assert/strict";
import fc from "fast-check";
import postgres from "postgres";
import { z } from "zod";
import { ConflictResolver } from "../../shared/progress/conflictResolver.ts";
import { listCursorSchema, updatedAtSchema, validationError } from "../../shared/progress/schemas.ts";
import { createTestUser } from "../support/env.ts";
import { adminSql, call, errorOf, seriesId, write } from "./support.ts";

const FIRST_MS = Date.parse("0001-01-01T00:00:00.000Z");
const LAST_MS = Date.parse("9999-12-31T23:59:59.999Z");
const rfc3339 = z.iso.datetime({ offset: true });

/**
 * PostgreSQL's reading of a text as timestamptz: its instant truncated to the millisecond, or the
 * SQLSTATE it refuses it with. The parameter is text (`::text::timestamptz`): for a parameter
 * PostgreSQL types as timestamptz, postgres.js sends `new Date(text).toISOString()` instead of the text
 * (digits past the millisecond dropped, a text Date cannot read a RangeError in the client).
 */
async function postgresReads(sql: postgres.Sql, text: string): Promise<{ ms: number } | { refused: string }> {
  try {
    const [{ ms }] = await sql<{ ms: string }[]>`
      select floor(extract(epoch from ${text}::text::timestamptz) * 1000)::bigint::text as ms`;
    return { ms: Number(ms) };
  } catch (e) {
    const code = (e as { code?: unknown }).code;
    // A refusal of the value (class 22: data exception), not some other failure.
    if (typeof code === "string" && code.startsWith("22")) return { refused: code };
    throw e;
  }
}

/** What the header says of a text: PostgreSQL's reading, and whether updated_at and a cursor take it. */
async function expectation(sql: postgres.Sql, text: string) {
  const pg = await postgresReads(sql, text);
  const shaped = rfc3339.safeParse(text).success;
  const pgMs = "ms" in pg ? pg.ms : null;
  return {
    pg,
    pgMs,
    updatedAt: shaped && pgMs !== null && pgMs >= 0 && pgMs <= LAST_MS,
    cursor: shaped && pgMs !== null && pgMs >= FIRST_MS && pgMs <= LAST_MS,
  };
}

/** The schemas' verdicts and PostgreSQL's agree, as the header says. */
async function checkAgreement(sql: postgres.Sql, text: string) {
  const { pg, pgMs, updatedAt: expected, cursor: cursorExpected } = await expectation(sql, text);
  const got = updatedAtSchema.safeParse(text);
  assert.equal(
    got.success,
    expected,
    `updated_at ${JSON.stringify(text)} (${text.length} chars): PostgreSQL ${JSON.stringify(pg)}, ` +
      `the schema ${got.success ? `accepts it as ${got.data}` : `refuses it: ${got.error.message}`}`,
  );
  if (got.success) {
    assert.equal(got.data, new Date(pgMs!).toISOString(), `updated_at ${text}: the millisecond`);
  } else {
    const error = validationError(got.error, "body");
    assert.deepEqual([error.status, error.code], [422, "validation_failed"], `updated_at ${text}`);
  }

  // The ConflictResolver keys the text as the schema takes it: PostgreSQL's millisecond, or a
  // TypeError for a key the server refuses (it was keyed at some instant: +16:00, 0000, 150 chars).
  let key: number | Error;
  try {
    key = ConflictResolver.timeOf({ updated_at: text, device_id: "d" });
  } catch (error) {
    key = error as Error;
  }
  if (expected) assert.equal(key, pgMs, `ConflictResolver.timeOf(${JSON.stringify(text)}): the millisecond`);
  else {
    assert.ok(
      key instanceof TypeError,
      `ConflictResolver.timeOf(${JSON.stringify(text)}) (${text.length} chars): refused as the schema ` +
        `refuses it (PostgreSQL ${JSON.stringify(pg)}), got ${key}`,
    );
  }

  const cursor = listCursorSchema.safeParse(`${text}|some-series`);
  assert.equal(
    cursor.success,
    cursorExpected,
    `cursor ${JSON.stringify(text)}: PostgreSQL ${JSON.stringify(pg)}`,
  );
  if (cursor.success) {
    assert.deepEqual(cursor.data, { updated_at: new Date(pgMs!).toISOString(), series_id: "some-series" });
  }
  return pg;
}

const fraction = (digits: number, fill = "1") => `.${fill.repeat(digits)}`;

/** [text, does PostgreSQL read it] (the second is the premise, checked too). */
const EDGES: [string, boolean][] = [
  // Offsets: PostgreSQL reads up to 15:59:59 either way; zod's form has no seconds.
  ["2026-01-01T00:00:00+15:59", true],
  ["2026-01-01T00:00:00-15:59", true],
  ["2026-01-01T00:00:00+16:00", false],
  ["2026-01-01T00:00:00-16:00", false],
  ["2026-01-01T00:00:00.5+16:30", false],
  ["2026-01-01T00:00:00+23:59", false],
  ["2026-01-01T00:00:00-23:59", false],
  ["2026-01-01T00:00:00-00:00", true],
  ["2026-01-01T00:00:00+00:59", true],
  ["2026-01-01T00:00:00+14:00", true],
  ["2026-01-01T00:00:00+15:59:59", true], // not the schema's form
  ["2026-01-01T00:00:00+1559", true], // not the schema's form
  ["2026-01-01T00:00:00+15", true], // not the schema's form
  // Length: PostgreSQL's date parser has 153 bytes for the fields and a NUL after each of the four
  // (date, "t", time, zone): 149 characters.
  [`2026-01-01T00:00:00${fraction(128)}Z`, true], // 149
  [`2026-01-01T00:00:00${fraction(129)}Z`, false], // 150
  [`2026-01-01T00:00:00${fraction(123)}+01:00`, true], // 149
  [`2026-01-01T00:00:00${fraction(124)}+01:00`, false], // 150
  [`2026-01-01T00:00:00${fraction(124, "0")}-05:30`, false],
  [`2026-01-01T00:00:00${fraction(200)}Z`, false],
  [`2026-01-01T00:00:00.1239996${"0".repeat(121)}Z`, true], // 149: rounds up to .124
  [`2026-01-01T00:00:00.1239996${"0".repeat(122)}Z`, false],
  // Fractions past the microsecond: rounded to it (half to even), then truncated to the millisecond.
  ["2026-01-01T00:00:00.1239996Z", true],
  ["2026-01-01T00:00:00.1239995Z", true],
  ["2026-01-01T00:00:00.1239985Z", true],
  ["2026-01-01T00:00:59.9999995+01:00", true],
  [`2026-12-31T23:59:59.${"9".repeat(120)}Z`, true], // into the next year
  ["1969-12-31T23:59:59.9999995Z", true], // into 1970: accepted
  ["1969-12-31T23:59:59.9999994Z", true], // 1969: out of the API's range
  ["1970-01-01T00:30:00+00:31", true], // 1969 in UTC
  ["9999-12-31T23:59:59.9994999Z", true],
  ["9999-12-31T23:59:59.9999995Z", true], // year 10000 in UTC: out of range
  ["9999-12-31T23:30:00-00:31", true], // year 10000 in UTC
  // Year 0000: zod's form takes it (a leap year too), PostgreSQL has none ("field value out of range"),
  // even when the offset makes the instant 0001-01-01 in UTC, which the cursor's range takes.
  ["0000-12-31T23:00:00-01:00", false],
  ["0000-12-31T23:59:59.9999995-15:59", false],
  ["0000-02-29T00:00:00Z", false],
  ["0001-01-01T00:00:00-00:00", true],
  // Dates and times PostgreSQL refuses, or reads but the schema's form excludes.
  ["2026-02-29T00:00:00Z", false],
  ["2024-02-29T00:00:00Z", true],
  ["2100-02-29T00:00:00Z", false],
  ["2000-02-29T00:00:00Z", true],
  ["2026-04-31T00:00:00Z", false],
  ["2026-01-01T24:00:00Z", true], // not the schema's form
  ["2026-01-01T23:59:60Z", true], // a leap second: not the schema's form
  ["2026-01-01T00:60:00Z", false],
  ["2026-01-01 00:00:00Z", true], // not the schema's form
  ["2026-01-01t00:00:00z", true], // not the schema's form
  ["2026-01-01T00:00:00", true], // no zone: the session's, not the schema's form
  ["2026-01-01T00:00:00.Z", true], // not the schema's form
];

Deno.test("updated_at and the list cursor: the table of edges, as PostgreSQL reads them", async () => {
  const sql = adminSql({ max: 1 });
  try {
    for (const [text, pgReads] of EDGES) {
      const pg = await checkAgreement(sql, text);
      assert.equal(
        "ms" in pg,
        pgReads,
        `premise: PostgreSQL ${pgReads ? "reads" : "refuses"} ${text}: ${JSON.stringify(pg)}`,
      );
    }
  } finally {
    await sql.end();
  }
});

const pad = (n: number, width: number) => String(n).padStart(width, "0");
const digitsArb = fc.oneof(
  fc.string({ unit: fc.constantFrom(..."0123456789"), minLength: 1, maxLength: 10 }),
  fc.string({ unit: fc.constantFrom(..."0123456789"), minLength: 100, maxLength: 160 }),
  // Rounding edges: a run of 9s or a 5 then zeros, after a millisecond's digits.
  fc.tuple(fc.integer({ min: 0, max: 999_999 }), fc.constantFrom("5", "4", "6", "9", "99999", "50000001"))
    .map(
      ([us, tail]) => `${pad(us, 6)}${tail}`,
    ),
  fc.tuple(fc.integer({ min: 0, max: 999 }), fc.integer({ min: 1, max: 140 })).map(([ms, nines]) =>
    `${pad(ms, 3)}${"9".repeat(nines)}`
  ),
);
const textArb = fc.record({
  year: fc.oneof(
    fc.integer({ min: 1960, max: 2100 }),
    fc.integer({ min: 1, max: 9999 }),
    fc.constantFrom(1969, 1970, 9999),
  ),
  month: fc.integer({ min: 1, max: 12 }),
  day: fc.oneof(fc.integer({ min: 1, max: 28 }), fc.integer({ min: 29, max: 31 })),
  hour: fc.oneof(fc.integer({ min: 0, max: 23 }), fc.constant(24)),
  minute: fc.oneof(fc.integer({ min: 0, max: 59 }), fc.constant(60)),
  second: fc.oneof(fc.integer({ min: 0, max: 59 }), fc.constant(60)),
  fraction: fc.option(digitsArb, { nil: undefined }),
  separator: fc.constantFrom("T", "T", "T", " ", "t"),
  zone: fc.oneof(
    fc.constantFrom("Z", "Z", "z", ""),
    fc.record({
      sign: fc.constantFrom("+", "-"),
      hours: fc.oneof(fc.integer({ min: 0, max: 15 }), fc.integer({ min: 16, max: 25 })),
      minutes: fc.oneof(fc.integer({ min: 0, max: 59 }), fc.constant(60)),
      form: fc.constantFrom("hh:mm", "hh:mm", "hh:mm", "hhmm", "hh"),
    }).map(({ sign, hours, minutes, form }) =>
      form === "hh"
        ? `${sign}${pad(hours, 2)}`
        : `${sign}${pad(hours, 2)}${form === "hh:mm" ? ":" : ""}${pad(minutes, 2)}`
    ),
  ),
  // Near PostgreSQL's 149 characters: the fraction's digits repeated or cut to make the text this long.
  length: fc.option(fc.integer({ min: 146, max: 153 }), { nil: undefined }),
}).map((t) => {
  const head = `${pad(t.year, 4)}-${pad(t.month, 2)}-${pad(t.day, 2)}${t.separator}${pad(t.hour, 2)}:${
    pad(t.minute, 2)
  }:${pad(t.second, 2)}`;
  let fraction = t.fraction;
  if (fraction !== undefined && t.length !== undefined) {
    const digits = t.length - head.length - 1 - t.zone.length;
    fraction = fraction.repeat(Math.ceil(digits / fraction.length)).slice(0, digits);
  }
  return `${head}${fraction ? `.${fraction}` : ""}${t.zone}`;
});

Deno.test("updated_at and the list cursor: random texts, as PostgreSQL reads them", async () => {
  const sql = adminSql({ max: 1 });
  try {
    await fc.assert(fc.asyncProperty(textArb, async (text) => void await checkAgreement(sql, text)), {
      numRuns: 3000,
    });
  } finally {
    await sql.end();
  }
});

Deno.test("updated_at through the function and a Data API write: the same millisecond stored, or 422 and nothing stored", async () => {
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const storedMs = async (series: string) => {
      const rows = await sql<{ ms: string }[]>`
        select floor(extract(epoch from updated_at) * 1000)::bigint::text as ms from public.reading_progress
         where user_id = ${user.id} and series_id = ${series}`;
      return rows.length === 0 ? null : Number(rows[0].ms);
    };
    // A Data API write: role authenticated with the user's claims, the text read as timestamptz.
    const dataApiWrite = (series: string, text: string) =>
      sql.begin(async (tx) => {
        await tx`select set_config('role', 'authenticated', true),
                        set_config('request.jwt.claims', ${
          JSON.stringify({ sub: user.id, role: "authenticated" })
        }, true)`;
        await tx`insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
                 values (${user.id}, ${series}, 1, 1, 0.01, 'data-api', ${text}::text::timestamptz)`;
      });

    // Dates in the past only: one more than 5 s ahead is recorded as now (migration 012).
    const past = Date.now() - 60_000;
    const accepted: { text: string; ms: number }[] = [];
    const refused: string[] = [];
    for (const [text] of EDGES) {
      const { pgMs, updatedAt } = await expectation(sql, text);
      if (updatedAt && pgMs! < past) accepted.push({ text, ms: pgMs! });
      if (pgMs === null) refused.push(text);
    }
    assert.ok(
      accepted.length >= 10 && refused.length >= 10,
      `${accepted.length} accepted, ${refused.length} refused`,
    );

    const apiSeries = accepted.map(() => seriesId("pgdate"));
    const batch = await call("POST", "/batch", {
      token: user.accessToken,
      body: { writes: accepted.map(({ text }, i) => write({ series_id: apiSeries[i], updated_at: text })) },
    });
    assert.equal(batch.status, 200, JSON.stringify(batch.body));
    for (const [i, { text, ms }] of accepted.entries()) {
      assert.equal(await storedMs(apiSeries[i]), ms, `stored through the function: ${text}`);
      const series = seriesId("pgdate-rest");
      await dataApiWrite(series, text);
      assert.equal(await storedMs(series), ms, `stored by a Data API write: ${text}`);
    }

    for (const text of refused) {
      const series = seriesId("pgdate-no");
      const answer = await call("POST", "", {
        token: user.accessToken,
        body: write({ series_id: series, updated_at: text }),
      });
      assert.equal(answer.status, 422, `${text}: ${JSON.stringify(answer.body)}`);
      assert.equal(errorOf(answer).code, "validation_failed", text);
      await assert.rejects(
        dataApiWrite(series, text),
        (e: { code?: string }) => e.code?.startsWith("22") === true,
      );
      assert.equal(await storedMs(series), null, `nothing stored for ${text}`);
    }
    const reset = await call(
      "DELETE",
      `/series/${seriesId("pgdate-del")}?device_id=d&updated_at=${
        encodeURIComponent("2026-01-01T00:00:00+16:00")
      }`,
      { token: user.accessToken },
    );
    assert.equal(reset.status, 422, JSON.stringify(reset.body));
    assert.equal(errorOf(reset).code, "validation_failed");
  } finally {
    await sql.end();
  }
});
