// created_at to the microsecond. It says when a row's life began (the stamp trigger sets it from
// the wall clock at INSERT), and devices order the lives of a row by it (shared/realtime/
// progressMerge.ts). A script that deletes a row and inserts it again can begin both lives within
// one millisecond, so the millisecond ISO form that every other instant of the API uses would make
// the two lives look like one. PostgreSQL keeps microseconds; this keeps them on the wire:
// "YYYY-MM-DDTHH:MM:SS.ffffffZ" (UTC, always six digits, so equal instants are equal strings).

const INSTANT = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}(?::?\d{2})?)$/i;

/**
 * An instant as PostgreSQL prints it (to_jsonb's ISO form, or the text form with a space and "+00")
 * or as an ISO string, in the microsecond UTC form; digits past the microsecond are dropped, as
 * PostgreSQL keeps none. A Date has milliseconds only. null when it is not such an instant.
 */
export function microsecondIso(value: string | Date): string | null {
  if (value instanceof Date) {
    return Number.isNaN(value.getTime()) ? null : value.toISOString().replace(/Z$/, "000Z");
  }
  const m = INSTANT.exec(value);
  if (!m) return null;
  const [, date, time, fraction = "", zone] = m;
  // An offset is whole minutes, so it moves the seconds and above only: the fraction stays as written.
  const offset = zone.toUpperCase() === "Z"
    ? "Z"
    : zone.length === 3
    ? `${zone}:00`
    : `${zone.slice(0, 3)}:${zone.slice(-2)}`;
  const seconds = Date.parse(`${date}T${time}${offset}`);
  if (Number.isNaN(seconds)) return null;
  return `${new Date(seconds).toISOString().slice(0, 19)}.${fraction.padEnd(6, "0").slice(0, 6)}Z`;
}

/**
 * Order of two instants to the microsecond (negative: a first). Either form above; NaN when one is
 * not an instant.
 */
export function compareInstants(a: string, b: string): number {
  const x = microsecondIso(a);
  const y = microsecondIso(b);
  if (x === null || y === null) return NaN;
  // Same width, same zone: the strings sort as the instants do (years 0000-9999).
  return x < y ? -1 : x > y ? 1 : 0;
}

/** The fraction of a date-time's seconds, with what comes before and after it. */
const FRACTION = /^(.*\d{2}:\d{2}:\d{2})\.(\d+)(.*)$/;

/**
 * updated_at in epoch milliseconds as the database keys it: PostgreSQL reads a timestamptz to the
 * microsecond, rounding the digits past it (rint of the fraction times 10^6, as a double: half to
 * even), and the stamp trigger then truncates to the millisecond. Date.parse drops every digit past
 * the millisecond instead, so a key sent with seven or more digits (.NET's "o" format, Java's
 * Instant, Go's RFC3339Nano) whose sub-millisecond part rounds up to the next millisecond
 * ("…00.1239996Z" is stored as .124, "…00.9999995Z" as the next second) would be keyed one
 * millisecond apart by the API and by a direct Data API write, and compared differently by the
 * ConflictResolver than by SQL. NaN when Date.parse cannot read the value.
 */
export function instantMs(value: string): number {
  const m = FRACTION.exec(value);
  if (!m || m[2].length <= 3) return Date.parse(value);
  const whole = Date.parse(`${m[1]}${m[3]}`);
  if (Number.isNaN(whole)) return NaN;
  return whole + Math.floor(microsecondsOf(m[2]) / 1000);
}

/**
 * What PostgreSQL's timestamptz input (PostgreSQL 15) refuses in an RFC 3339 date-time, the form
 * z.iso.datetime({ offset: true }) checks ("T", seconds, "Z" or "±HH:MM"), where JavaScript's Date reads
 * it (tests/functions/updated_at_postgres.test.ts checks both against the database):
 *   - an offset of 16 hours or more either way ("time zone displacement out of range": PostgreSQL
 *     reads offsets up to 15:59:59; Date up to 23:59);
 *   - more than 149 characters ("invalid input syntax", as from a long fraction): its date parser
 *     copies the text's fields into a buffer of MAXDATELEN + MAXDATEFIELDS = 153 bytes with a NUL
 *     after each, and this form has four (the date, "T", the time, the zone);
 *   - the year 0000 ("date/time field value out of range": PostgreSQL's years are 1 AD on, or BC;
 *     zod's form and Date take 0000, even where an offset makes the instant 0001 in UTC).
 */
export const POSTGRES_LIMITS = Object.freeze({ maxOffsetHours: 15, maxDateLength: 149 });

/** Why PostgreSQL refuses a date-time that Date reads (see POSTGRES_LIMITS), or that neither reads. */
export type PostgresRefusal = "offset_out_of_range" | "too_long" | "year_zero" | "invalid";

const OFFSET = /([+-])(\d{2}):?(\d{2})$/;

/**
 * An RFC 3339 date-time as a timestamptz column keys it: instantMs, or why PostgreSQL would refuse
 * the text (a Data API write of it fails). One parse for a request's updated_at and the list cursor.
 */
export function postgresInstantMs(value: string): number | PostgresRefusal {
  if (value.length > POSTGRES_LIMITS.maxDateLength) return "too_long";
  const offset = OFFSET.exec(value);
  if (offset && (Number(offset[2]) > POSTGRES_LIMITS.maxOffsetHours || Number(offset[3]) > 59)) {
    return "offset_out_of_range";
  }
  if (value.startsWith("0000-")) return "year_zero";
  const ms = instantMs(value);
  return Number.isNaN(ms) ? "invalid" : ms;
}

/** A fraction's digits in microseconds, as PostgreSQL's ParseFractionalSecond reads them. */
function microsecondsOf(digits: string): number {
  if (digits.length <= 6) return Number(digits.padEnd(6, "0"));
  // strtod and a double product, as in C; both are exact or correctly rounded in JavaScript too.
  const x = Number(`0.${digits}`) * 1_000_000;
  const floor = Math.floor(x);
  const rest = x - floor; // exact for a double this small
  return rest > 0.5 ? floor + 1 : rest < 0.5 ? floor : floor % 2 === 0 ? floor : floor + 1;
}
