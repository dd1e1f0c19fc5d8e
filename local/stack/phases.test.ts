// timed() (phases.ts) times a step only for a start that asks (the benchmark's onPhase): without onPhase,
// what awaits a step goes on when it would have awaiting the step itself, no turn later (npm start, the
// tests' stacks).

import assert from "node:assert/strict";
import { timed } from "./phases.ts";

/** How many microtask turns pass before `promise` is seen settled by a reaction registered now. */
async function turnsUntilSettled(promise: Promise<unknown>): Promise<number> {
  let settled = false;
  promise.then(() => settled = true, () => settled = true);
  let turns = 0;
  // Bounded: a promise that never settles fails the count instead of hanging.
  while (!settled && turns < 100) {
    await null;
    turns++;
  }
  return turns;
}

Deno.test("timed() without onPhase adds no turn: what awaits it goes on as when awaiting the step itself", async () => {
  const step = () => Promise.resolve("done");
  const failing = () => Promise.reject(new Error("failed"));
  const ownTurns = await turnsUntilSettled(step());
  const timedTurns = await turnsUntilSettled(timed(undefined, "a step", step));
  assert.equal(timedTurns, ownTurns, "as many turns as the step's own promise");
  const failed = timed(undefined, "a failing step", failing);
  const ownFailureTurns = await turnsUntilSettled(failing().catch(() => {}));
  assert.equal(await turnsUntilSettled(failed.catch(() => {})), ownFailureTurns, "a failure too");
  assert.equal(await timed(undefined, "a step", step), "done");
  await assert.rejects(failed, /failed/);
});

Deno.test("timed() with onPhase tells it the step's name and time once the step has ended, not when it fails", async () => {
  const told: [string, number][] = [];
  const onPhase = (name: string, ms: number) => told.push([name, ms]);
  let end = (_: string) => {};
  const timing = timed(onPhase, "a step", () => new Promise<string>((resolve) => end = resolve));
  await null;
  assert.deepEqual(told, [], "not told before the step has ended");
  end("done");
  assert.equal(await timing, "done");
  assert.equal(told.length, 1);
  assert.equal(told[0][0], "a step");
  assert.ok(Number.isFinite(told[0][1]) && told[0][1] >= 0, String(told[0][1]));
  await assert.rejects(timed(onPhase, "a failing step", () => Promise.reject(new Error("failed"))), /failed/);
  assert.equal(told.length, 1, "a failed step is not told");
});
