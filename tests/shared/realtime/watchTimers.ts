// Records the delay of every timer pending, for tests that check which read a link has scheduled
// without waiting for it.

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
