// What a device has seen of one user's progress, and whether an incoming change is new.
//
// Changes arrive from three places that overlap on purpose: Realtime broadcasts, the catch-up
// "changes since" that follows every (re)subscribe, and polling while Realtime is down. The same
// version of a row can therefore arrive twice, and an older version can arrive after a newer one
// (a broadcast still in flight while the catch-up already returned the newer row). Every change is
// judged against the newest version seen for its series with the last-write-wins order of
// (updated_at, device_id): not newer => dropped as stale (older) or duplicate (same version).
//
// A hard DELETE (readsync normally clears progress with a `cleared` tombstone row instead) carries
// the deleted version as `old_record`: it applies unless a newer version has been seen, and it is
// remembered so that a late copy of the deleted version cannot bring the row back.
//
// Last-write-wins orders the versions of ONE row's life only. After a hard DELETE the series has no
// row, so the next write (say an e-reader back from a week offline) is inserted whatever its
// updated_at, and the server keeps it: a new life of the row, possibly with an OLDER updated_at than
// the deleted version. Judged by updated_at alone, every device that saw the delete would drop it
// and disagree with the server for good. So versions are ordered by their row's life first
// (created_at: set by the stamp trigger when the row is inserted, kept by every update, never
// written by clients), then by last-write-wins within one life. The order then follows the
// server's history in every case, and any delivery order converges on the server's last version.
// created_at is compared to the microsecond (shared/progress/instant.ts): a delete and an insert in
// one transaction begin two lives within the same millisecond. Rows without created_at fall back
// to updated_at.

import { compareInstants } from "../progress/instant.ts";

export interface LwwRow {
  series_id: string;
  updated_at: string;
  device_id: string;
  /** When this life of the row began (server rows always carry it; pending writes do not). */
  created_at?: string;
}

/**
 * Order of two server versions of a row: the later life first (created_at), then `compare` (the
 * last-write-wins order) within one life. 0 from the first step when either row lacks created_at.
 */
export function compareServerVersions<Row extends LwwRow>(
  compare: (a: Row, b: Row) => number,
): (a: Row, b: Row) => number {
  return (a, b) => {
    if (a.created_at !== undefined && b.created_at !== undefined) {
      const life = compareInstants(a.created_at, b.created_at);
      if (life !== 0 && Number.isFinite(life)) return life;
    }
    return compare(a, b);
  };
}

export type ChangeKind = "upsert" | "delete";

export type MergeVerdict = "applied" | "stale" | "duplicate";

interface Entry<Row> {
  row: Row;
  deleted: boolean;
}

export class ProgressMergeState<Row extends LwwRow> {
  #entries = new Map<string, Entry<Row>>();
  #recentIds = new Set<string>();
  #compare: (a: Row, b: Row) => number;
  #maxRecentIds: number;

  /** `compare`: the last-write-wins order within one life of a row (see compareServerVersions). */
  constructor(compare: (a: Row, b: Row) => number, { maxRecentIds = 2048 } = {}) {
    this.#compare = compareServerVersions(compare);
    this.#maxRecentIds = maxRecentIds;
  }

  /** Judges a change and, when it is new, records it. `messageId` dedupes redelivered broadcasts. */
  merge(kind: ChangeKind, row: Row, messageId?: string): MergeVerdict {
    if (messageId !== undefined) {
      if (this.#recentIds.has(messageId)) return "duplicate";
      this.#rememberId(messageId);
    }
    const current = this.#entries.get(row.series_id);
    if (current) {
      const order = this.#compare(current.row, row);
      if (kind === "upsert") {
        if (order > 0) return "stale";
        if (order === 0) return current.deleted ? "stale" : "duplicate";
      } else {
        if (order > 0) return "stale";
        if (order === 0 && current.deleted) return "duplicate";
      }
    }
    this.#entries.set(row.series_id, { row, deleted: kind === "delete" });
    return "applied";
  }

  /** The rows this device currently believes exist (deleted series excluded). */
  rows(): Row[] {
    return [...this.#entries.values()].filter((e) => !e.deleted).map((e) => e.row);
  }

  /**
   * Every series this device has seen, with the newest version seen and whether that version was a
   * hard delete (what a second subscription starting from the same cursor must be told of too).
   */
  entries(): { row: Row; deleted: boolean }[] {
    return [...this.#entries.values()].map((e) => ({ row: e.row, deleted: e.deleted }));
  }

  get(seriesId: string): Row | undefined {
    const entry = this.#entries.get(seriesId);
    return entry && !entry.deleted ? entry.row : undefined;
  }

  #rememberId(id: string): void {
    this.#recentIds.add(id);
    if (this.#recentIds.size > this.#maxRecentIds) {
      // Sets iterate in insertion order: drop the oldest.
      const oldest = this.#recentIds.values().next().value as string;
      this.#recentIds.delete(oldest);
    }
  }
}
