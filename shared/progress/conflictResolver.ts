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
//   incoming = current, same position           -> replay of the same write: a no-op that reports won
//   incoming = current, another position        -> won, no conflict: the same device's later position
//                                                  under a reused key, stored 1 ms after current
//   current = incoming + 1 ms, same device and position -> won, no conflict: a retry of such a write
//   older updated_at than current of the same device -> lost, no conflict: the device overtook
//                                                  itself (a retry answered too late, the earlier of
//                                                  two writes in a retried batch); logged as 'self'
//   same updated_at, smaller device_id          -> lost, 'tie'
//   older updated_at                            -> lost, 'stale'
// The server normalises updated_at before comparing (truncate to ms; more than 5 s after its wall
// clock: a device clock ahead, recorded as its now() but never at or before the stored version, which
// that write beats by its own date); `normalize` does the same with a given clock and stored version
// (one clock for both: the server judges by its wall clock when the row is locked, and records now()).

import { LAST_FOUR_DIGIT_YEAR_MS, updatedAtSchema } from "./schemas.ts";
import type { ConflictKind } from "./types.ts";
import { PROGRESS_LIMITS } from "./types.ts";

/** Anything carrying the LWW key. updated_at: ISO string, Date or epoch milliseconds. */
export interface Versioned {
  updated_at: string | Date | number;
  device_id: string;
}

/** The position a write carries; a replay repeats it. Fields a value does not have count as equal. */
const POSITION_FIELDS = ["chapter", "page", "percentage", "cleared"] as const;

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
  /** 'self': refused as older than its own device's stored write (logged, but no conflict). */
  kind: ConflictKind | "self";
  rejected: boolean;
  losing: T;
  winning: T;
}

/**
 * Keys already read (text → epoch ms), because the schema's parse costs about ten times a Map lookup
 * and a sort or merge reads the same few keys again and again (sorting 1,000 series reads each key
 * about 20 times). Only accepted keys are kept; emptied when full, so it stays small.
 */
const readKeys = new Map<string, number>();
const READ_KEYS_MAX = 4096;

export class ConflictResolver {
  readonly futureToleranceMs: number;

  constructor(options: { futureToleranceMs?: number } = {}) {
    this.futureToleranceMs = options.futureToleranceMs ?? PROGRESS_LIMITS.futureToleranceMs;
  }

  /**
   * updated_at in epoch milliseconds, as the server keys it: finer digits are dropped, as the server
   * truncates them, after digits past the microsecond are rounded, as PostgreSQL reads a date
   * (instantMs: "…00.1239996Z" is .124). A string is read by the API's own updatedAtSchema, so a key
   * the server refuses (422) has no time here either: it throws a TypeError naming the value and why
   * (not the RFC 3339 form, an offset of 16 hours or more, the year 0000, over 149 characters, before
   * 1970 or after 9999 in UTC), where it was keyed at some instant no write could be stored at. A Date
   * or a number (epoch ms) is keyed as its ISO string would be: NaN or outside 1970..9999 throws too.
   */
  static timeOf(v: Versioned): number {
    const t = v.updated_at;
    if (typeof t === "string") {
      const known = readKeys.get(t);
      if (known !== undefined) return known;
      const parsed = updatedAtSchema.safeParse(t);
      if (!parsed.success) {
        throw new TypeError(`invalid updated_at ${shownKey(t)}: ${parsed.error.issues[0].message}`);
      }
      const ms = Date.parse(parsed.data);
      if (readKeys.size >= READ_KEYS_MAX) readKeys.clear();
      readKeys.set(t, ms);
      return ms;
    }
    const ms = Math.floor(typeof t === "number" ? t : t instanceof Date ? t.getTime() : NaN);
    if (ms >= 0 && ms <= LAST_FOUR_DIGIT_YEAR_MS) return ms;
    throw new TypeError(`invalid updated_at ${shownKey(t)}: must be an instant from 1970 to 9999 in UTC`);
  }

  /** Total order on (updated_at ms, device_id): negative, 0 or positive like Array.sort wants. */
  compare = (a: Versioned, b: Versioned): number => {
    const ta = ConflictResolver.timeOf(a);
    const tb = ConflictResolver.timeOf(b);
    if (ta !== tb) return ta < tb ? -1 : 1;
    return a.device_id < b.device_id ? -1 : a.device_id > b.device_id ? 1 : 0;
  };

  /**
   * Whether two versions carry the same position (chapter, page, percentage, cleared; a missing
   * `cleared` is false, any other missing field matches): what tells a replay from a reused key.
   */
  static samePosition(a: Versioned, b: Versioned): boolean {
    const x = a as unknown as Record<string, unknown>;
    const y = b as unknown as Record<string, unknown>;
    return POSITION_FIELDS.every((f) => {
      const [p, q] = f === "cleared" ? [x[f] ?? false, y[f] ?? false] : [x[f], y[f]];
      return p === undefined || q === undefined || p === q;
    });
  }

  /** Whether `current` is where the server stored `incoming` after meeting its key (1 ms later). */
  private landedAfter(incoming: Versioned, current: Versioned): boolean {
    return current.device_id === incoming.device_id &&
      ConflictResolver.timeOf(current) === ConflictResolver.timeOf(incoming) + 1 &&
      ConflictResolver.samePosition(incoming, current);
  }

  /** How a write of `incoming` over the stored `current` (null: no row yet) turns out. */
  classify(incoming: Versioned, current: Versioned | null): { won: boolean; conflict: ConflictKind | null } {
    if (current === null) return { won: true, conflict: null };
    const order = this.compare(incoming, current);
    // The same write replayed, or the same key with another position (stored 1 ms later).
    if (order === 0) return { won: true, conflict: null };
    if (this.landedAfter(incoming, current)) return { won: true, conflict: null }; // a retry of that
    if (order < 0 && incoming.device_id === current.device_id) return { won: false, conflict: null };
    const tie = ConflictResolver.timeOf(incoming) === ConflictResolver.timeOf(current);
    if (order > 0) return { won: true, conflict: tie ? "tie" : null };
    return { won: false, conflict: tie ? "tie" : "stale" };
  }

  /**
   * Applies one write to the stored version: a newer key replaces it; a replay keeps it; the same
   * key with another position replaces it 1 ms after its key (as the server stores it).
   */
  apply<T extends Versioned>(current: T | null, incoming: T): WriteOutcome<T> {
    const { won, conflict } = this.classify(incoming, current);
    if (current === null || this.compare(incoming, current) > 0) return { won, conflict, current: incoming };
    if (this.compare(incoming, current) === 0 && !ConflictResolver.samePosition(incoming, current)) {
      const landed = {
        ...incoming,
        updated_at: new Date(ConflictResolver.timeOf(current) + 1).toISOString(),
      } as T;
      return { won, conflict, current: landed };
    }
    return { won, conflict, current };
  }

  /**
   * Applies `updates` in the given order to `initial`, as the server would if they arrived in that
   * order, and returns the conflicts met and the 'self' refusals (a write older than its own
   * device's stored one): exactly the rows the server's conflict log gets, one per distinct (losing
   * key, winning key) pair, as the log keeps a retried conflict once.
   */
  detectConflict<T extends Versioned>(updates: readonly T[], initial: T | null = null): ConflictFinding<T>[] {
    const findings: ConflictFinding<T>[] = [];
    const seen = new Set<string>();
    const keyOf = (v: Versioned) => `${ConflictResolver.timeOf(v)}\u0000${v.device_id}`;
    let current = initial;
    updates.forEach((incoming, index) => {
      const outcome = this.apply(current, incoming);
      // Refused without a conflict: older than its own device's stored write ('self').
      const kind = outcome.conflict ?? (outcome.won ? null : "self");
      if (kind && current !== null) {
        const [losing, winning] = outcome.won ? [current, incoming] : [incoming, current];
        const pair = `${keyOf(losing)}\u0000${keyOf(winning)}`;
        if (!seen.has(pair)) {
          seen.add(pair);
          findings.push({ index, kind, rejected: !outcome.won, losing, winning });
        }
      }
      current = outcome.current;
    });
    return findings;
  }

  /**
   * The version that ends up stored when `updates` arrive in this order (`apply` one after another,
   * `initial` first). With distinct keys that is the greatest key whatever the order; the same key
   * with another position lands 1 ms after the version it meets, so there the order matters, as it
   * does on the server. Null only for no updates and no initial version.
   */
  resolve<T extends Versioned>(updates: readonly T[], initial: T | null = null): T | null {
    let current = initial;
    for (const u of updates) current = this.apply(current, u).current;
    return current;
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

/** An updated_at as a refusal shows it: a string quoted (a long one cut), a Date in ISO form. */
function shownKey(t: unknown): string {
  if (typeof t === "string") {
    return t.length <= 60 ? JSON.stringify(t) : `${JSON.stringify(t.slice(0, 60))}… (${t.length} characters)`;
  }
  if (t instanceof Date) return Number.isNaN(t.getTime()) ? "Invalid Date" : t.toISOString();
  return String(t);
}

/** A shared default instance (stateless). */
export const conflictResolver: ConflictResolver = new ConflictResolver();
