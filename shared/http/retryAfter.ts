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
  // Date.parse also takes forms that are not HTTP-dates ("5", "2025-01-01"): only the day-name forms
  // of RFC 9110 (IMF-fixdate, and the obsolete RFC 850 and asctime ones) count.
  if (!/^(Mon|Tue|Wed|Thu|Fri|Sat|Sun)/i.test(value)) return undefined;
  const until = Date.parse(value);
  if (!Number.isFinite(until) || !Number.isFinite(answeredAtMs)) return undefined;
  return Math.max(0, Math.ceil((until - answeredAtMs) / 1000));
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
