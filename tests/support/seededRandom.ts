/**
 * A small seeded PRNG (mulberry32) for the generative tests (progress_concurrency, progress_fuzz,
 * realtime_fuzz): a seed replays the same draws, so a failing run can be replayed from the seed it
 * prints. Not for anything that needs unpredictability.
 */
export function seededRandom(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return {
    next,
    /** A whole number from 0 to n - 1. */
    int,
    /** True with probability p. */
    chance: (p: number) => next() < p,
    pick: <T>(items: readonly T[]): T => items[int(items.length)],
  };
}

export type SeededRandom = ReturnType<typeof seededRandom>;
