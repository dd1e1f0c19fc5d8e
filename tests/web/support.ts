// What the web tests build over and over: an unsent write as the web app's SyncStore holds it, timers
// on a clock of the test's own, and localStorage kept in memory.

import type { PendingWrite } from "../../examples/web/lib/client/syncStore.ts";

/** A write waiting in a device's outbox; `at` = its updated_at (ISO string or epoch ms). */
export function pendingWrite(
  series: string,
  at: string | number,
  device: string,
  chapter: number,
): PendingWrite {
  return {
    series_id: series,
    chapter,
    page: 1,
    percentage: 0.5,
    cleared: false,
    device_id: device,
    updated_at: typeof at === "number" ? new Date(at).toISOString() : at,
  };
}

/**
 * Timers on a clock of the test's own (OutboxTimers): nothing runs until the test moves the clock,
 * so a test of waits of minutes takes no time and does not depend on the machine's speed.
 */
export function virtualTimers(startMs = 1_000_000, wallOffsetMs = 1_800_000_000_000) {
  let now = startMs;
  let nextId = 1;
  const armed = new Map<number, { at: number; run: () => void }>();
  const due = (until: number) =>
    [...armed.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
  return {
    timers: {
      now: () => now,
      setTimeout: (run: () => void, ms: number): unknown => {
        armed.set(nextId, { at: now + ms, run });
        return nextId++;
      },
      clearTimeout: (handle: unknown) => void armed.delete(handle as number),
      /** The wall clock (Date.now()), moving with this one. */
      wallNow: () => now + wallOffsetMs,
    },
    get now() {
      return now;
    },
    /** Timers armed and not yet run or cleared. */
    get armed() {
      return armed.size;
    },
    /** When the next armed timer runs, or null. */
    get nextAt(): number | null {
      return due(Infinity)?.[1].at ?? null;
    },
    /** Moves the clock forward by `ms`, running every timer that comes due on the way, at its time. */
    advance(ms: number): void {
      const end = now + ms;
      for (let next = due(end); next; next = due(end)) {
        armed.delete(next[0]);
        now = next[1].at;
        next[1].run();
      }
      now = end;
    },
  };
}

/** localStorage as a browser keeps it, in memory: one per test (or per browser whose tabs share it). */
export function memoryStorage(): Storage {
  const items = new Map<string, string>();
  return {
    get length() {
      return items.size;
    },
    key: (i: number) => [...items.keys()][i] ?? null,
    getItem: (key: string) => items.get(key) ?? null,
    setItem: (key: string, value: string) => void items.set(key, String(value)),
    removeItem: (key: string) => void items.delete(key),
    clear: () => items.clear(),
  };
}
