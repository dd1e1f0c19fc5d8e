import { checkEnvNumber, MAX_TIMER_MS, type NumberRule } from "../../shared/options/checkOptions.ts";

/**
 * A small seeded PRNG (mulberry32) for the generative tests (progress_concurrency, progress_fuzz,
 * realtime_fuzz, realtime-soak, the delivery model): a seed replays the same draws, so a failing run
 * can be replayed from the seed it prints. Not for anything that needs unpredictability.
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

/** A seed: a whole number that mulberry32 keeps apart from every other (it reads the low 32 bits). */
const SEED_RULE: NumberRule = { min: 0, max: 2 ** 32 - 1, whole: true };
/** A count of cases: a whole number from 1 (0 would pass with nothing tried). */
const CASES_RULE: NumberRule = { min: 1, max: Number.MAX_SAFE_INTEGER, whole: true };
/** A length of time a test runs for: 1 ms to what a timer holds (0 would try nothing and pass). */
const DURATION_RULE: NumberRule = { min: 1, max: MAX_TIMER_MS, whole: true, unit: "milliseconds" };

/**
 * The seed the environment variable `name` gives (READSYNC_DELIVERY_SEED, READSYNC_SOAK_SEED), or
 * undefined when it is not set (or empty). A value that is not a whole number from 0 to 2^32-1 written
 * in decimal digits throws, naming the variable, instead of running with the seed Number() made of it
 * ("abc" was NaN, which mulberry32 takes as 0, a run other than the one asked for).
 */
export function envSeed(name: string): number | undefined {
  return checkEnvNumber(Deno.env.get(name), SEED_RULE, "generative test", name);
}

/**
 * The seed of a generative test (progress_fuzz, realtime_fuzz): the environment variable `name`
 * (READSYNC_FUZZ_SEED) when set (as envSeed, which refuses a value that is no seed), else a new random
 * one each run, so that every run tries other cases; the test prints the seed it ran with (in its
 * name, and in a failing case's message), and setting the variable to it replays that run.
 */
export function seedFromEnv(name: string, random: () => number = Math.random): number {
  return envSeed(name) ?? Math.floor(random() * 2 ** 31);
}

/**
 * The number of cases of a generative test: the environment variable `name` (READSYNC_FUZZ_CASES,
 * READSYNC_DELIVERY_SEEDS) when set, else `fallback`. Anything but a whole number from 1 throws, naming
 * the variable: "abc" was NaN cases, a run that tried none and passed.
 */
export function casesFromEnv(name: string, fallback: number): number {
  return checkEnvNumber(Deno.env.get(name), CASES_RULE, "generative test", name) ?? fallback;
}

/**
 * How long a generative test goes on, in milliseconds: the environment variable `name`
 * (READSYNC_SOAK_MS) when set, else `fallback`. Anything but a whole number from 1 to 2^31-1 throws,
 * naming the variable: "abc" was NaN, a soak that injected no fault and passed.
 */
export function durationFromEnv(name: string, fallback: number): number {
  return checkEnvNumber(Deno.env.get(name), DURATION_RULE, "generative test", name) ?? fallback;
}
