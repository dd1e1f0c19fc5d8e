// Records the delay of every timer pending, for tests that check which read a link has scheduled
// without waiting for it; and stops the service's clock, for tests that decide what it reads when.

/**
 * Records the delay of every timer set through the global setTimeout (the service's TimerSet uses it)
 * while it is pending: the read a live link has scheduled shows as its wait, with no sleep to see it.
 */
export function watchTimers(): { pending: () => number[]; restore: () => void } {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const delays = new Map<unknown, number>();
  globalThis.setTimeout = ((fn: () => void, ms = 0) => {
    const id = realSet(() => {
      delays.delete(id);
      fn();
    }, ms);
    delays.set(id, ms);
    return id;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((id?: number) => {
    delays.delete(id);
    realClear(id);
  }) as typeof clearTimeout;
  return {
    pending: () => [...delays.values()],
    restore: () => {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    },
  };
}

/**
 * Stops the service's clock (performance.now(), its monotonicNow) where it is; `advance` moves it on by
 * hand. Timers still run in real time: what the service finds when one fires is set beforehand.
 */
export function frozenClock(): { advance: (ms: number) => void; restore: () => void } {
  let now = performance.now();
  Object.defineProperty(performance, "now", { value: () => now, configurable: true, writable: true });
  return {
    advance: (ms) => void (now += ms),
    restore: () => void delete (performance as unknown as { now?: unknown }).now,
  };
}
