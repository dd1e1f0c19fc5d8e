// Retry-After (RFC 9110 section 10.2.3) on the client side: the progress API client reads it from a
// 429's or 503's answer and carries it on the error it throws (`details.retry_after`, in seconds),
// and whoever retries later (RealtimeService's polls, the web app's outbox) reads it back from there.

/**
 * The longest Retry-After a client honours: a device that neither reads nor sends for longer than
 * this shows a stale place, or keeps a reader's pages unsaved, however long a misconfigured proxy
 * asks it to wait.
 */
export const MAX_RETRY_AFTER_MS = 300_000;

/**
 * Seconds to wait, from a Retry-After header: delay-seconds ("120"), or an HTTP-date
 * ("Wed, 21 Oct 2015 07:28:00 GMT") counted from `answeredAtMs`, the time the answer was sent by
 * the same clock that wrote the date (its X-Server-Time or Date header: a device clock that is off
 * would otherwise shift the wait by as much). A date already past is 0; anything else undefined.
 */
export function parseRetryAfter(header: string | null | undefined, answeredAtMs: number): number | undefined {
  const value = header?.trim();
  if (!value) return undefined;
  if (/^\d+$/.test(value)) return Number(value);
  if (!Number.isFinite(answeredAtMs)) return undefined;
  const until = parseHttpDate(value, answeredAtMs);
  if (until === undefined) return undefined;
  return Math.max(0, Math.ceil((until - answeredAtMs) / 1000));
}

const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAY = "(?:mon|tue|wed|thu|fri|sat|sun)";
const LONG_DAY = "(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)";
const TIME = "(\\d{2}):(\\d{2}):(\\d{2})";
/** IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT". */
const IMF_FIXDATE = new RegExp(`^${DAY}, (\\d{2}) ([a-z]{3}) (\\d{4}) ${TIME} GMT$`, "i");
/** RFC 850 (obsolete): "Sunday, 06-Nov-94 08:49:37 GMT". */
const RFC850_DATE = new RegExp(`^${LONG_DAY}, (\\d{2})-([a-z]{3})-(\\d{2}) ${TIME} GMT$`, "i");
/** asctime (obsolete; GMT by definition): "Sun Nov  6 08:49:37 1994". */
const ASCTIME_DATE = new RegExp(`^${DAY} ([a-z]{3}) ( \\d|\\d{2}) ${TIME} (\\d{4})$`, "i");

/**
 * An HTTP-date (RFC 9110 section 5.6.7) in epoch ms, or undefined. Parsed here rather than by
 * Date.parse, which takes many other forms and reads a date without a zone (asctime's) in the
 * device's local time zone: a reader in New York would wait 4 hours more, one in Tokyo not at all.
 * A two-digit RFC 850 year is the one within 50 years of `nearMs`, in the past when in doubt.
 */
function parseHttpDate(value: string, nearMs: number): number | undefined {
  let day: string, month: string, year: number, time: string[];
  let m = IMF_FIXDATE.exec(value);
  if (m) {
    [day, month, year, time] = [m[1], m[2], Number(m[3]), m.slice(4, 7)];
  } else if ((m = RFC850_DATE.exec(value))) {
    const nearYear = new Date(nearMs).getUTCFullYear();
    year = Math.floor(nearYear / 100) * 100 + Number(m[3]);
    if (year > nearYear + 50) year -= 100;
    [day, month, time] = [m[1], m[2], m.slice(4, 7)];
  } else if ((m = ASCTIME_DATE.exec(value))) {
    [month, day, time, year] = [m[1], m[2], m.slice(3, 6), Number(m[6])];
  } else {
    return undefined;
  }
  const monthIndex = MONTHS.indexOf(month.toLowerCase());
  const [d, hh, mm, ss] = [Number(day.trim()), ...time.map(Number)];
  if (monthIndex < 0 || hh > 23 || mm > 59 || ss > 60) return undefined;
  const ms = Date.UTC(year, monthIndex, d, hh, mm, ss);
  // "31 Feb" would roll over into March: not a date.
  return new Date(ms).getUTCDate() === d ? ms : undefined;
}

/**
 * The wait a failed call asks for, in ms: `retryAfterMs`, or `details.retry_after` in seconds (where
 * ProgressApiError carries a Retry-After header), at most `maxMs`; undefined when it asks for none.
 */
export function retryAfterMsOf(error: unknown, maxMs: number = MAX_RETRY_AFTER_MS): number | undefined {
  const e = error as { retryAfterMs?: unknown; details?: { retry_after?: unknown } } | null;
  const seconds = e?.details?.retry_after;
  const ms = typeof e?.retryAfterMs === "number"
    ? e.retryAfterMs
    : typeof seconds === "number"
    ? seconds * 1000
    : NaN;
  return ms > 0 ? Math.min(ms, maxMs) : undefined;
}
