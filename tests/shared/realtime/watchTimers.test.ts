// watchTimers (watchTimers.ts) stands in for the global setTimeout: what a timer set through it is
// given must reach its callback as setTimeout's own would, including the arguments after the delay.

import assert from "node:assert/strict";
import { watchTimers } from "./watchTimers.ts";

Deno.test("watchTimers: the arguments after the delay reach the callback, whether the timer runs or is fired", async () => {
  const timers = watchTimers();
  try {
    const got: unknown[][] = [];
    // Run by itself, after its (short) delay: awaited by its own call, no sleep.
    await new Promise<void>((resolve) => {
      setTimeout(
        (a: string, b: number) => {
          got.push([a, b]);
          resolve();
        },
        1,
        "ran",
        1,
      );
    });
    // Run by hand, long before its delay.
    setTimeout((a: string, b: number, c: boolean) => got.push([a, b, c]), 3_600_000, "fired", 2, true);
    timers.fire(3_600_000);
    assert.deepEqual(got, [["ran", 1], ["fired", 2, true]]);
    assert.deepEqual(timers.pending(), []);
  } finally {
    timers.restore();
  }
});
