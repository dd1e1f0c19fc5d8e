// Capped exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
// Jitter"): the n-th retry waits a uniformly random time in [0, min(cap, base * 2^(n-1))), so a
// crowd of devices that lost Realtime at the same moment does not come back at the same moment.

export interface BackoffOptions {
  /** Upper bound of the first retry's delay. */
  initialMs: number;
  /** No retry waits longer than this. */
  maxMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 1_000, maxMs: 30_000 };

/** The ceiling of the delay before retry number `attempt` (1-based). */
export function backoffCeiling(attempt: number, { initialMs, maxMs }: BackoffOptions): number {
  if (attempt < 1) return 0;
  // 2^exponent overflows to Infinity for large attempts, which min() caps; keep it finite anyway.
  const exponent = Math.min(attempt - 1, 30);
  return Math.min(maxMs, initialMs * 2 ** exponent);
}

/** Full jitter: uniform in [0, ceiling). `random` is injectable for tests. */
export function fullJitterDelay(
  attempt: number,
  options: BackoffOptions,
  random: () => number = Math.random,
): number {
  return Math.floor(random() * backoffCeiling(attempt, options));
}
