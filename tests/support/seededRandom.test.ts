// The seed and case count of the generative tests (progress_fuzz, realtime_fuzz) come from the
// environment (READSYNC_FUZZ_SEED, READSYNC_FUZZ_CASES) when set: a value that is no seed or no count
// must stop the run, naming the variable, not run with whatever Number() made of it.

import assert from "node:assert/strict";
import { casesFromEnv, seededRandom, seedFromEnv } from "./seededRandom.ts";

const NAME = "READSYNC_SEEDED_RANDOM_TEST_VAR";

function withEnv<T>(value: string | undefined, fn: () => T): T {
  if (value === undefined) Deno.env.delete(NAME);
  else Deno.env.set(NAME, value);
  try {
    return fn();
  } finally {
    Deno.env.delete(NAME);
  }
}

Deno.test("seedFromEnv: a random seed when not set, the one given when set, and anything else refused", () => {
  assert.equal(withEnv(undefined, () => seedFromEnv(NAME, () => 0.5)), 2 ** 30);
  assert.equal(withEnv("", () => seedFromEnv(NAME, () => 0.25)), 2 ** 29, "empty: not set");
  for (
    const [text, seed] of [["0", 0], ["12345", 12345], [" 777 ", 777], ["4294967295", 2 ** 32 - 1]] as const
  ) {
    assert.equal(withEnv(text, () => seedFromEnv(NAME, () => 0.5)), seed, text);
  }
  // The same seed, the same draws: what a replay relies on.
  const seed = withEnv("20261206", () => seedFromEnv(NAME));
  assert.deepEqual(
    Array.from({ length: 3 }, seededRandom(seed).next),
    Array.from({ length: 3 }, seededRandom(20261206).next),
  );
  for (
    const [text, error] of [
      ["abc", TypeError],
      ["1.5", TypeError],
      ["007", TypeError],
      ["1e3", TypeError],
      ["-1", RangeError],
      ["4294967296", RangeError],
    ] as const
  ) {
    assert.throws(() => withEnv(text, () => seedFromEnv(NAME)), (e: unknown) => {
      assert.ok(e instanceof error, `${text}: ${e}`);
      assert.match(
        String((e as Error).message),
        new RegExp(`^generative test environment variable ${NAME} `),
      );
      return true;
    });
  }
});

Deno.test("casesFromEnv: the default when not set, the count given when set, and no count refused", () => {
  assert.equal(withEnv(undefined, () => casesFromEnv(NAME, 300)), 300);
  assert.equal(withEnv("5", () => casesFromEnv(NAME, 300)), 5);
  for (
    const [text, error] of [["abc", TypeError], ["0", RangeError], ["-3", RangeError], [
      "2.5",
      TypeError,
    ]] as const
  ) {
    assert.throws(() => withEnv(text, () => casesFromEnv(NAME, 300)), error, text);
  }
});
