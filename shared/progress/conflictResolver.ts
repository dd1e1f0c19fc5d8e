// Last-write-wins, exactly as public.write_reading_progress decides it (migration
// 20261120090200_progress_writes.sql), so a client can predict and explain the server's answer.
//
// Order: (updated_at in milliseconds, device_id by UTF-16 code unit). Ids are ASCII (the schema's
// pattern), where code-unit order equals byte order, i.e. PostgreSQL's collate "C".
//
// Outcome of applying `incoming` to the stored row `current` (the SQL's rules):
//   no current                                  -> won, no conflict
//   older current updated_at                    -> won, no conflict (it replaces current)
//   same updated_at, greater device_id          -> won, 'tie' (it replaces current, which lost the tie)
//   incoming = current                          -> replay of the same write: a no-op that reports won
//   same updated_at, smaller device_id          -> lost, 'tie'
//   older updated_at                            -> lost, 'stale'
// The server normalises updated_at before comparing (truncate to ms; more than 5 s in the future:
// a device clock ahead, recorded as its now() but never at or before the stored version, which that
// write beats by its own date); `normalize` does the same with a given clock and stored version.

import type { ConflictKind } from "./types.ts";
import { PROGRESS_LIMITS } from "./types.ts";

/** Anything carrying the LWW key. updated_at: ISO string, Date or epoch milliseconds. */
export interface Versioned {
  updated_at: string | Date | number;
  device_id: string;
}

export interface WriteOutcome<T> {
  won: boolean;
  conflict: ConflictKind | null;
  /** The stored version after the write. */
  current: T;
}

/**
 * A conflict met when applying updates in sequence: one row of the server's conflict log.
 * `rejected`: the losing write arrived last and was refused (stale, or a tie against the stored
 * version); false: the losing write was the stored version, replaced by an arriving tie winner.
 */
export interface ConflictFinding<T> {
  /** Position in the input of the update whose arrival caused the conflict. */
  index: number;
  kind: ConflictKind;
  rejected: boolean;
  losing: T;
  winning: T;
}

export class ConflictResolver {
  readonly futureToleranceMs: number;

  constructor(options: { futureToleranceMs?: number } = {}) {
    this.futureToleranceMs = options.futureToleranceMs ?? PROGRESS_LIMITS.futureToleranceMs;
  }

  /** updated_at in epoch milliseconds (finer digits are dropped, as the server truncates them). */
  static timeOf(v: Versioned): number {
    const t = v.updated_at;
    const ms = typeof t === "number" ? t : t instanceof Date ? t.getTime() : Date.parse(t);
    if (!Number.isFinite(ms)) throw new TypeError(`invalid updated_at: ${String(t)}`);
    return Math.floor(ms);
  }

  /** Total order on (updated_at ms, device_id): negative, 0 or positive like Array.sort wants. */
  compare = (a: Versioned, b: Versioned): number => {
    const ta = ConflictResolver.timeOf(a);
    const tb = ConflictResolver.timeOf(b);
    if (ta !== tb) return ta < tb ? -1 : 1;
    return a.device_id < b.device_id ? -1 : a.device_id > b.device_id ? 1 : 0;
  };

  /** How a write of `incoming` over the stored `current` (null: no row yet) turns out. */
  classify(incoming: Versioned, current: Versioned | null): { won: boolean; conflict: ConflictKind | null } {
    if (current === null) return { won: true, conflict: null };
    const order = this.compare(incoming, current);
    if (order === 0) return { won: true, conflict: null }; // the same write replayed
    const tie = ConflictResolver.timeOf(incoming) === ConflictResolver.timeOf(current);
    if (order > 0) return { won: true, conflict: tie ? "tie" : null };
    return { won: false, conflict: tie ? "tie" : "stale" };
  }

  /** Applies one write to the stored version; a replay keeps the stored version (first one wins). */
  apply<T extends Versioned>(current: T | null, incoming: T): WriteOutcome<T> {
    const { won, conflict } = this.classify(incoming, current);
    const replaced = current === null || this.compare(incoming, current) > 0;
    return { won, conflict, current: replaced ? incoming : current };
  }

  /**
   * Applies `updates` in the given order to `initial`, as the server would if they arrived in that
   * order, and returns the conflicts met: exactly the rows the server's conflict log gets, one per
   * distinct (losing key, winning key) pair, as the log keeps a retried conflict once.
   */
  detectConflict<T extends Versioned>(updates: readonly T[], initial: T | null = null): ConflictFinding<T>[] {
    const findings: ConflictFinding<T>[] = [];
    const seen = new Set<string>();
    const keyOf = (v: Versioned) => `${ConflictResolver.timeOf(v)}\u0000${v.device_id}`;
    let current = initial;
    updates.forEach((incoming, index) => {
      const outcome = this.apply(current, incoming);
      if (outcome.conflict && current !== null) {
        const [losing, winning] = outcome.won ? [current, incoming] : [incoming, current];
        const pair = `${keyOf(losing)}\u0000${keyOf(winning)}`;
        if (!seen.has(pair)) {
          seen.add(pair);
          findings.push({ index, kind: outcome.conflict, rejected: !outcome.won, losing, winning });
        }
      }
      current = outcome.current;
    });
    return findings;
  }

  /**
   * The version that ends up stored, whatever the arrival order: the greatest key (with `initial`
   * competing too). Among equal keys the earliest one is kept, as a replay does not overwrite.
   * Null only for no updates and no initial version.
   */
  resolve<T extends Versioned>(updates: readonly T[], initial: T | null = null): T | null {
    let best = initial;
    for (const u of updates) {
      if (best === null || this.compare(u, best) > 0) best = u;
    }
    return best;
  }

  /**
   * The key the server compares and stores, truncated to ms. Dated beyond the tolerance: now, or 1 ms
   * after the stored version `current` when that is later (such a write beats every stored version
   * by its own date, so its key must too: two of them in one millisecond never share a key).
   */
  normalize<T extends Versioned>(
    v: T,
    nowMs: number = Date.now(),
    current: Versioned | null = null,
  ): T & { updated_at: string } {
    let ms = ConflictResolver.timeOf(v);
    if (ms > nowMs + this.futureToleranceMs) {
      ms = Math.floor(nowMs);
      if (current !== null) ms = Math.max(ms, ConflictResolver.timeOf(current) + 1);
    }
    return { ...v, updated_at: new Date(ms).toISOString() };
  }
}

/** A shared default instance (stateless). */
export const conflictResolver: ConflictResolver = new ConflictResolver();
