// zod schemas of the progress API: request bodies and query strings (validated at the edge
// function's boundary), and the row and responses (validated by the typed client).
//
// Status of a rejected request, from the zod issues:
//   400 invalid_request    the shape is wrong: a wrong type, a missing or unknown field
//                          (including `user_id`: the user is always the token's subject)
//   422 validation_failed  well-typed values outside the data model: ranges, id format, dates,
//                          a reset with a non-zero position, batch size
// The bounds are the database's CHECK constraints (migration 20261120090000_reading_progress.sql).

import { z } from "zod";
import { HttpError } from "../http/errors.ts";
import { microsecondIso, POSTGRES_LIMITS, postgresInstantMs, type PostgresRefusal } from "./instant.ts";
import type {
  BatchWriteResponse,
  ChangesResponse,
  Progress,
  ProgressListResponse,
  ProgressResponse,
  WriteResult,
} from "./types.ts";
import { PROGRESS_LIMITS } from "./types.ts";

const INSTANT_MESSAGE =
  "must be a valid ISO 8601 date-time with seconds and Z or an offset (2026-01-31T20:15:00.000Z, 2026-01-31T21:15:00+01:00)";
const ID_MESSAGE = "must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$ (1-128 ASCII letters, digits, . _ : -)";

export const idSchema = z.string().regex(PROGRESS_LIMITS.idPattern, ID_MESSAGE);
export const seriesIdSchema = idSchema;
export const deviceIdSchema = idSchema;

/**
 * The last instant PostgreSQL's ISO output and JavaScript's toISOString() both print as a four-digit
 * year. "9999-12-31T23:59:59.999-14:00" is valid ISO 8601 but falls in the year 10000 in UTC, which
 * toISOString() prints as "+010000-…" and PostgreSQL refuses to read.
 */
export const LAST_FOUR_DIGIT_YEAR_MS = Date.parse("9999-12-31T23:59:59.999Z");
const FIRST_FOUR_DIGIT_YEAR_MS = Date.parse("0001-01-01T00:00:00.000Z");

const BEFORE_1970_MESSAGE = "must not be before 1970-01-01T00:00:00Z";
const REFUSAL_MESSAGES: Record<PostgresRefusal, string> = {
  offset_out_of_range:
    `must have a UTC offset from -${POSTGRES_LIMITS.maxOffsetHours}:59 to +${POSTGRES_LIMITS.maxOffsetHours}:59 (PostgreSQL refuses a larger one)`,
  too_long:
    `must be at most ${POSTGRES_LIMITS.maxDateLength} characters long (PostgreSQL refuses a longer date)`,
  year_zero: BEFORE_1970_MESSAGE,
  invalid: INSTANT_MESSAGE,
};

/**
 * updated_at in a request: an ISO 8601 date-time with Z or an offset, from 1970 to the end of 9999
 * in UTC, that PostgreSQL reads (an offset within ±15:59, at most 149 characters: POSTGRES_LIMITS),
 * so a direct Data API write of the same text is accepted too. Normalised to the millisecond ISO form
 * as the database keys it (digits past the microsecond rounded, as PostgreSQL reads them, then
 * truncated to the millisecond: instantMs), which is exactly what the server compares, and what that
 * Data API write is stored as. Parsed once (postgresInstantMs). (Any date more than 5 s ahead is then
 * recorded as now: see migration 012.)
 */
export const updatedAtSchema = z.iso
  // abort: a value that is no date-time at all (Feb 30, a leap second) gets this message alone,
  // not also the checks below.
  .datetime({ offset: true, error: INSTANT_MESSAGE, abort: true })
  .transform((s, ctx) => {
    const ms = postgresInstantMs(s);
    const problem = typeof ms === "string"
      ? REFUSAL_MESSAGES[ms]
      : ms < 0
      ? BEFORE_1970_MESSAGE
      : ms > LAST_FOUR_DIGIT_YEAR_MS
      ? "must not be after 9999-12-31T23:59:59.999Z"
      : null;
    if (problem !== null) {
      ctx.addIssue({ code: "custom", message: problem, input: s });
      return z.NEVER;
    }
    return new Date(ms as number).toISOString();
  });

/**
 * An integer from min to max (both safe integers). Not z.int(): its own safe-integer range check adds a
 * second too_big (or too_small) beside this range's for a number like 2^53 + 1, so the answer listed
 * one problem twice. A fraction is a wrong type (400) as with z.int(), and then no range is checked.
 */
export function boundedIntSchema(min: number, max: number) {
  return z
    .number()
    .check((ctx) => {
      if (!Number.isInteger(ctx.value)) {
        ctx.issues.push({
          code: "invalid_type",
          expected: "int",
          received: "number",
          input: ctx.value,
          continue: false,
        });
      }
    })
    .min(min)
    .max(max);
}

export const chapterSchema = boundedIntSchema(0, PROGRESS_LIMITS.chapterMax);
export const pageSchema = boundedIntSchema(0, PROGRESS_LIMITS.pageMax);
/** JSON cannot carry NaN or Infinity, and zod numbers reject them too. */
export const percentageSchema = z.number().min(0).max(1);

const USER_ID_MESSAGE = "user_id must not be sent: the user is the subject of the access token";

/** Unknown keys are rejected; a `user_id` gets a message saying why. */
function strict<T extends z.core.$ZodLooseShape>(shape: T) {
  return z.strictObject(shape, {
    error: (issue) =>
      issue.code === "unrecognized_keys" && (issue.keys as string[]).includes("user_id")
        ? `${USER_ID_MESSAGE}; unknown keys: ${(issue.keys as string[]).join(", ")}`
        : undefined,
  });
}

/** One write (POST /progress, an element of POST /progress/batch). */
export const progressWriteSchema = strict({
  series_id: seriesIdSchema,
  chapter: chapterSchema,
  page: pageSchema,
  percentage: percentageSchema,
  cleared: z.boolean().optional(),
  device_id: deviceIdSchema,
  updated_at: updatedAtSchema,
})
  .superRefine((w, ctx) => {
    if (w.cleared && (w.chapter !== 0 || w.page !== 0 || w.percentage !== 0)) {
      ctx.addIssue({
        code: "custom",
        path: ["cleared"],
        message: "a reset (cleared: true) must have chapter, page and percentage 0",
      });
    }
  })
  .transform((w) => ({ ...w, cleared: w.cleared ?? false }));

export type ProgressWriteInput = z.input<typeof progressWriteSchema>;
export type ValidProgressWrite = z.output<typeof progressWriteSchema>;

export const batchWriteSchema = strict({
  writes: z.array(progressWriteSchema).min(1).max(PROGRESS_LIMITS.batchMax),
});

/** DELETE /progress/series/:id?device_id=&updated_at= (a tombstone write). */
export const resetQuerySchema = strict({
  device_id: deviceIdSchema,
  updated_at: updatedAtSchema,
});

/**
 * A page size in a query string: decimal digits only ("", "+5", " 5", "1e2" and "0x10" are not a
 * number here: 400), then the range (422). Any number of digits is a number: one of ten digits or
 * more is out of range (read as the largest safe integer, so a long one is not Infinity, which zod
 * calls a wrong type), and leading zeros do not count.
 */
function limitSchema(max: number) {
  return z
    .string()
    .transform((s, ctx) => {
      if (!/^[0-9]+$/.test(s)) {
        ctx.addIssue({
          code: "invalid_type",
          expected: "int",
          input: s,
          message: "must be a whole number (digits only)",
        });
        return z.NEVER;
      }
      const digits = s.replace(/^0+(?=[0-9])/, "");
      return digits.length > 9 ? Number.MAX_SAFE_INTEGER : Number(digits);
    })
    .pipe(boundedIntSchema(1, max));
}

/**
 * Library cursor: "<updated_at ISO>|<series_id>" of the last row of the previous page. The date is read
 * as updated_at is (postgresInstantMs: the millisecond PostgreSQL keys it at, a date PostgreSQL refuses
 * refused); the API's own cursors are millisecond "Z" dates, read the same by Date.parse.
 */
export const listCursorSchema = z
  .string()
  .regex(/^[^|]+\|[^|]+$/, "must be a next_cursor returned by the API")
  .transform((s, ctx) => {
    const [at, series] = s.split("|");
    const t = z.iso.datetime({ offset: true }).safeParse(at).success ? postgresInstantMs(at) : "invalid";
    if (
      typeof t === "string" || t < FIRST_FOUR_DIGIT_YEAR_MS || t > LAST_FOUR_DIGIT_YEAR_MS ||
      !PROGRESS_LIMITS.idPattern.test(series)
    ) {
      ctx.addIssue({ code: "custom", message: "must be a next_cursor returned by the API" });
      return z.NEVER;
    }
    return { updated_at: new Date(t).toISOString(), series_id: series };
  });

export function encodeListCursor(row: { updated_at: string; series_id: string }): string {
  return `${row.updated_at}|${row.series_id}`;
}

/** Routes that take no query parameters (writes, one series): any parameter is an unknown one. */
export const noQuerySchema = strict({});

export const listQuerySchema = strict({
  limit: limitSchema(PROGRESS_LIMITS.listMax).optional(),
  cursor: listCursorSchema.optional(),
  // A string first: a repeated parameter (an array) is a shape error (400) like any other, not a value
  // outside the enum (422).
  include_cleared: z.string().pipe(z.enum(["true", "false"])).optional(),
});

/**
 * Changes cursor: "" | "[<tag>.]<xid>[:<series_id>]" (opaque to clients; from next_cursor). The tag
 * names the database cluster, its timeline and the user it was handed out to, folded into one (a
 * cursor of another cluster, timeline or user starts over from the beginning); that form is the one
 * app bundles and functions deployed before cursors named their user take, so it is kept (migration
 * …_changes_cursor_user_folded_into_tag.sql). "[<cluster tag>.]u<user tag>.<xid>[:<series_id>]" is
 * taken too: migration …_changes_cursor_names_user.sql handed such cursors out, and the API still
 * reads them. See reading_progress_changes.
 */
export const CHANGES_CURSOR =
  /^(?:(?:[0-9a-f]{8}\.)?(?:u[0-9a-f]{8}\.)?[0-9]{1,19}(?::[A-Za-z0-9][A-Za-z0-9._:-]{0,127})?)?$/;

export const changesCursorSchema = z
  .string()
  .regex(CHANGES_CURSOR, "must be a next_cursor returned by the API");

export const changesQuerySchema = strict({
  since: changesCursorSchema.optional(),
  limit: limitSchema(PROGRESS_LIMITS.changesMax).optional(),
});

// ------------------------------------------------------------------------------------ responses

/** An instant as the database prints it (any offset, any precision) -> ISO ms "Z" form. */
export const instantSchema = z.iso
  .datetime({ offset: true })
  .transform((s) => new Date(Date.parse(s)).toISOString());

/** created_at: an instant to the microsecond (shared/progress/instant.ts says why). */
export const lifeInstantSchema = z.string().transform((s, ctx) => {
  const iso = microsecondIso(s);
  if (iso === null) {
    ctx.addIssue({ code: "custom", message: INSTANT_MESSAGE });
    return z.NEVER;
  }
  return iso;
});

export const progressRowSchema = z.object({
  user_id: z.guid(),
  series_id: idSchema,
  chapter: chapterSchema,
  page: pageSchema,
  percentage: percentageSchema,
  cleared: z.boolean(),
  device_id: idSchema,
  updated_at: instantSchema,
  synced_at: instantSchema,
  change_xid: z.string().regex(/^[0-9]+$/),
  created_at: lifeInstantSchema,
});

export const conflictKindSchema = z.enum(["stale", "tie"]);

export const progressKeySchema = z.object({ updated_at: instantSchema, device_id: idSchema });

export const writeResultSchema = z.object({
  won: z.boolean(),
  conflict: conflictKindSchema.nullable(),
  conflict_with: progressKeySchema.nullable(),
  progress: progressRowSchema,
});

export const batchWriteResponseSchema = z.object({ results: z.array(writeResultSchema) });
export const progressResponseSchema = z.object({ progress: progressRowSchema });
export const progressListResponseSchema = z.object({
  items: z.array(progressRowSchema),
  next_cursor: z.string().nullable(),
});
/** An item of "changes since": a row, or (deleted: true) the version a hard DELETE removed. */
export const changeItemSchema = progressRowSchema.extend({ deleted: z.literal(true).optional() });
export const changesResponseSchema = z.object({
  changes: z.array(changeItemSchema),
  next_cursor: z.string(),
  has_more: z.boolean(),
  // Optional both ways: a function or database of before never sends it, and a client of before,
  // whose z.object has no such key, drops it (z.object strips unknown keys).
  started_over: z.boolean().optional(),
});
export const apiErrorBodySchema = z.object({
  error: z.object({ code: z.string(), message: z.string(), details: z.unknown().optional() }),
});

// The schemas and the hand-written types in types.ts must agree (compile-time check).
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const _typesAgree: [
  Same<z.output<typeof progressRowSchema>, Progress>,
  Same<z.output<typeof writeResultSchema>, WriteResult>,
  Same<z.output<typeof batchWriteResponseSchema>, BatchWriteResponse>,
  Same<z.output<typeof progressResponseSchema>, ProgressResponse>,
  Same<z.output<typeof progressListResponseSchema>, ProgressListResponse>,
  Same<z.output<typeof changesResponseSchema>, ChangesResponse>,
] = [true, true, true, true, true, true];
void _typesAgree;

/** Parses a row as the database / a broadcast prints it; throws a ZodError when invalid. */
export function parseProgressRow(value: unknown): Progress {
  return progressRowSchema.parse(value);
}

// ------------------------------------------------------------------------------------ errors

/** Issue codes that mean "wrong shape" (400); every other issue is a value out of range (422). */
const SHAPE_ISSUES = new Set([
  "invalid_type",
  "unrecognized_keys",
  "invalid_union",
  "invalid_key",
  "invalid_element",
]);

export interface IssueDetail {
  path: string;
  code: string;
  message: string;
}

export function issueDetails(error: z.ZodError, prefix: (string | number)[] = []): IssueDetail[] {
  return error.issues.map((i) => ({
    path: [...prefix, ...i.path].map(String).join("."),
    code: i.code,
    message: i.message,
  }));
}

/** A ZodError as the HttpError the API answers with (400 or 422, issues in details). */
export function validationError(
  error: z.ZodError,
  where: string,
  prefix: (string | number)[] = [],
): HttpError {
  const shape = error.issues.some((i) => SHAPE_ISSUES.has(i.code));
  const issues = issueDetails(error, prefix);
  const summary = issues.slice(0, 3).map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join("; ");
  return shape
    ? new HttpError(400, "invalid_request", `Invalid ${where}: ${summary}`, { details: { issues } })
    : new HttpError(422, "validation_failed", `Invalid ${where}: ${summary}`, { details: { issues } });
}

/** schema.parse, throwing the API's HttpError instead of a ZodError. */
export function parseOrThrow<S extends z.ZodType>(schema: S, value: unknown, where: string): z.output<S> {
  const result = schema.safeParse(value);
  if (!result.success) throw validationError(result.error, where);
  return result.data;
}
