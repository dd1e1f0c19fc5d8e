// The seed, case count and length of the generative tests come from the environment when set
// (progress_fuzz, realtime_fuzz: READSYNC_FUZZ_SEED, READSYNC_FUZZ_CASES; the delivery model:
// READSYNC_DELIVERY_SEED, READSYNC_DELIVERY_SEEDS; the realtime soak: READSYNC_SOAK_SEED,
// READSYNC_SOAK_MS): a value that is no seed, no count or no length of time must stop the run, naming
// the variable, not run with whatever Number() made of it.

import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { casesFromEnv, durationFromEnv, envSeed, seededRandom, seedFromEnv } from "./seededRandom.ts";

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

/** Throws unless `fn` throws an `error` whose message names NAME as a generative test's variable. */
function assertRefused(text: string, fn: () => unknown, error: ErrorConstructor): void {
  assert.throws(() => withEnv(text, fn), (e: unknown) => {
    assert.ok(e instanceof error, `${text}: ${e}`);
    assert.match(String((e as Error).message), new RegExp(`^generative test environment variable ${NAME} `));
    return true;
  });
}

Deno.test("envSeed: undefined when not set, the seed given when set, and anything else refused", () => {
  assert.equal(withEnv(undefined, () => envSeed(NAME)), undefined);
  assert.equal(withEnv("", () => envSeed(NAME)), undefined, "empty: not set");
  assert.equal(withEnv(" ", () => envSeed(NAME)), undefined, "spaces: not set");
  for (const [text, seed] of [["0", 0], ["20261205", 20261205], ["4294967295", 2 ** 32 - 1]] as const) {
    assert.equal(withEnv(text, () => envSeed(NAME)), seed, text);
  }
  for (
    const [text, error] of [
      ["abc", TypeError],
      ["1.5", TypeError],
      ["007", TypeError],
      ["0x10", TypeError],
      ["-1", RangeError],
      ["4294967296", RangeError],
    ] as const
  ) assertRefused(text, () => envSeed(NAME), error);
});

Deno.test("durationFromEnv: the default when not set, the milliseconds given when set, and no length refused", () => {
  assert.equal(withEnv(undefined, () => durationFromEnv(NAME, 25_000)), 25_000);
  assert.equal(withEnv("", () => durationFromEnv(NAME, 25_000)), 25_000, "empty: not set");
  assert.equal(withEnv("60000", () => durationFromEnv(NAME, 25_000)), 60_000);
  assert.equal(withEnv("2147483647", () => durationFromEnv(NAME, 25_000)), 2 ** 31 - 1);
  for (
    const [text, error] of [
      ["abc", TypeError],
      ["25s", TypeError],
      ["2.5", TypeError],
      ["1e4", TypeError],
      ["0", RangeError],
      ["-1", RangeError],
      ["2147483648", RangeError],
      ["Infinity", RangeError],
    ] as const
  ) assertRefused(text, () => durationFromEnv(NAME, 25_000), error);
});

/**
 * What `deno test` of `file`, run as a process with `variable` set to `text` and only the tests whose
 * name holds `filter`, ends with: its exit code and output. The soak reads its variables as the module
 * loads and a bad one is its test's failure; the delivery model's are read by its test.
 */
async function testRunWith(
  file: string,
  filter: string,
  variable: string,
  text: string,
): Promise<{ code: number; output: string }> {
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["test", "--no-check", "-A", "--filter", filter, file],
    cwd: fileURLToPath(new URL("../../", import.meta.url)),
    env: { [variable]: text, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code, output: decoder.decode(stdout) + decoder.decode(stderr) };
}

// The tests that take these variables stop at a bad one: READSYNC_DELIVERY_SEEDS=abc ran no seed and
// passed, READSYNC_DELIVERY_SEED=abc and READSYNC_SOAK_SEED=abc ran seed NaN (mulberry32's 0), and
// READSYNC_SOAK_MS=abc injected no fault.
Deno.test("the delivery model and the realtime soak refuse a bad seed, count or length, naming the variable", async () => {
  const DELIVERY = ["tests/shared/realtime/deliveryModel.test.ts", "realtime service delivery model"];
  // The soak's one test, which stops at its first step with a bad variable (before the stack is used).
  const SOAK = ["tests/integration/realtime-soak.test.ts", "realtime soak"];
  const runs = [
    [...DELIVERY, "READSYNC_DELIVERY_SEED"],
    [...DELIVERY, "READSYNC_DELIVERY_SEEDS"],
    [...SOAK, "READSYNC_SOAK_SEED"],
    [...SOAK, "READSYNC_SOAK_MS"],
  ];
  const outcomes = await Promise.all(
    runs.map(([file, filter, variable]) => testRunWith(file, filter, variable, "abc")),
  );
  // Every run that was not stopped by its variable, with what it printed.
  const notRefused = runs.flatMap(([file, , variable], i) => {
    const { code, output } = outcomes[i];
    // As the failure of the test run, not an error of the whole module ("(uncaught error)": deno test
    // reports the file as failed, with no test of it run).
    const refused = code !== 0 &&
      new RegExp(`TypeError: generative test environment variable ${variable} must be `).test(output) &&
      /FAILED \| 0 passed \| 1 failed/.test(output) && !output.includes("(uncaught error)");
    return refused ? [] : [`${file} with ${variable}=abc: exit ${code}\n${output.slice(-500)}`];
  });
  assert.deepEqual(notRefused, []);
});
