// Records the delay of every timer pending, for tests that check which read a link has scheduled
// without waiting for it, or to end its wait by hand; and stops the service's clock, for tests that
// decide what it reads when.

import { waitFor } from "../../integration/realtime_support.ts";

/**
 * Records the delay of every timer set through the global setTimeout (the service's TimerSet uses it)
 * while it is pending: the read a live link has scheduled shows as its wait, with no sleep to see it.
 * `fire(ms)` runs the one timer pending for `ms` (to a millisecond) now, as if its time had come (with
 * frozenClock, move the clock on by `ms` first): a test gives the service's waits long delays that
 * never run out while it runs, and decides itself when each one ends.
 */
export function watchTimers(): {
  pending: () => number[];
  fire: (ms: number) => void;
  restore: () => void;
} {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const timers = new Map<unknown, { ms: number; fn: () => void }>();
  // The arguments after the delay go to the callback, as setTimeout's own do, whether the timer runs
  // by itself or by fire().
  globalThis.setTimeout = ((callback: (...args: unknown[]) => void, ms = 0, ...args: unknown[]) => {
    const fn = () => callback(...args);
    const id = realSet(() => {
      timers.delete(id);
      fn();
    }, ms);
    timers.set(id, { ms, fn });
    return id;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((id?: number) => {
    timers.delete(id);
    realClear(id);
  }) as typeof clearTimeout;
  return {
    pending: () => [...timers.values()].map((timer) => timer.ms),
    fire: (ms) => {
      const due = [...timers].filter(([, timer]) => Math.abs(timer.ms - ms) < 1);
      if (due.length !== 1) {
        throw new Error(
          `${due.length} timers pending for ${ms} ms: ${[...timers.values()].map((t) => t.ms)}`,
        );
      }
      const [id, { fn }] = due[0];
      timers.delete(id);
      realClear(id as number);
      fn();
    },
    restore: () => {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    },
  };
}

/** Whether a timer is pending for `ms` (to a millisecond: the service's clock reads fractions). */
export const pendingFor = (timers: ReturnType<typeof watchTimers>, ms: number): boolean =>
  timers.pending().some((delay) => Math.abs(delay - ms) < 1);

/**
 * Waits until the service has set a timer for `ms` (a hang guard only: the test's own waits are short
 * timers, the service's long ones), then ends that wait now: the clock, when given, moves on by `ms`,
 * and the timer runs.
 */
export async function fireWhenSet(
  timers: ReturnType<typeof watchTimers>,
  what: string,
  ms: number,
  clock?: ReturnType<typeof frozenClock>,
): Promise<void> {
  try {
    await waitFor(what, () => pendingFor(timers, ms), { timeoutMs: 20_000, intervalMs: 5 });
  } catch (error) {
    throw new Error(`${(error as Error).message}: no timer for ${ms} ms among ${timers.pending()}`);
  }
  clock?.advance(ms);
  timers.fire(ms);
}

/**
 * Stops the service's clock (performance.now(), its monotonicNow) where it is, rounded up to a whole
 * millisecond; `advance` moves it on by hand. Timers still run in real time: what the service finds
 * when one fires is set beforehand. The whole millisecond keeps the clock's sums exact: from a
 * fraction (performance.now() reads one), a sum that crosses a power of two (4,096, 8,192 ms, ...
 * after the process started) drops the fraction's last bits, so a channel held `advance(1_600)` could
 * read as held 1,599.999999999999 ms, less than a 1.6 s wait, and a test at that boundary failed
 * depending on when in the process it ran (later on a loaded machine).
 */
export function frozenClock(): { advance: (ms: number) => void; restore: () => void } {
  let now = Math.ceil(performance.now());
  Object.defineProperty(performance, "now", { value: () => now, configurable: true, writable: true });
  return {
    advance: (ms) => void (now += ms),
    restore: () => void delete (performance as unknown as { now?: unknown }).now,
  };
}

/**
 * Moves the service's clock (performance.now(), its monotonicNow) on by hand while it keeps running:
 * unlike frozenClock, time still passes between moves, so the service's waits measured by it run as
 * usual; `advance` adds to it at once, as if that long had passed (how long a token has been in place,
 * RealtimeService#observeToken). Only forward.
 */
export function movableMonotonicClock(): { advance: (ms: number) => void; restore: () => void } {
  const realNow = performance.now.bind(performance);
  let offset = 0;
  Object.defineProperty(performance, "now", {
    value: () => realNow() + offset,
    configurable: true,
    writable: true,
  });
  return {
    advance: (ms) => {
      if (!(ms >= 0)) throw new RangeError(`the clock only moves forward (asked ${ms} ms)`);
      offset += ms;
    },
    restore: () => void delete (performance as unknown as { now?: unknown }).now,
  };
}

/**
 * Moves this process's wall clock (Date.now()) on by hand: a token's expiry, which is judged by it (the
 * stand-in's token checks and the delays of its confirm timers, and the test tokens' minting), then comes when the test says, with no wait. Only Date.now() moves (`new Date()` without an
 * argument still reads the real clock), and only forward. A wait whose deadline was read before a move
 * (waitFor's) sees it come sooner: move it between waits, not during one.
 */
export function movableWallClock(): { advance: (ms: number) => void; restore: () => void } {
  const realNow = Date.now;
  let offset = 0;
  Date.now = () => realNow() + offset;
  return {
    advance: (ms) => {
      if (!(ms >= 0)) throw new RangeError(`the wall clock only moves forward (asked ${ms} ms)`);
      offset += ms;
    },
    restore: () => void (Date.now = realNow),
  };
}
