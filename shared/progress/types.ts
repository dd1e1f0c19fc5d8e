// Wire types of the progress API (supabase/functions/progress), shared by the edge function, the
// typed client (api.ts) and the Realtime service. Field names are the database column names.
// Runtime validation lives in schemas.ts; these are the plain TypeScript shapes.

/**
 * A last-write-wins conflict: 'stale' (an older updated_at than the stored row: the write lost) or
 * 'tie' (the same millisecond as the stored row, different device: the greater device_id wins, so
 * the write either lost, or won and replaced the other write).
 */
export type ConflictKind = "stale" | "tie";

/** The last-write-wins key: compared on updated_at (ms), then device_id byte-wise. */
export interface ProgressKey {
  /** ISO 8601 instant from the device's clock (ms precision; the server truncates finer digits). */
  updated_at: string;
  device_id: string;
}

/** Where the reader is. A tombstone (reset) is cleared = true with all positions 0. */
export interface ProgressPosition {
  chapter: number;
  page: number;
  /** Fraction of the series read, 0..1. */
  percentage: number;
  cleared: boolean;
}

/** Body of POST /progress (and each element of POST /progress/batch). */
export interface ProgressWrite extends ProgressKey {
  series_id: string;
  chapter: number;
  page: number;
  percentage: number;
  /** Optional on the wire (default false). */
  cleared?: boolean;
}

/** A stored reading_progress row as the API returns it. */
export interface Progress extends ProgressKey, ProgressPosition {
  user_id: string;
  series_id: string;
  /** Server time of the last change. */
  synced_at: string;
  /** Transaction that last changed the row (decimal xid8), the basis of the changes cursor. */
  change_xid: string;
  /**
   * When this life of the row began (server wall clock at INSERT), to the microsecond:
   * "YYYY-MM-DDTHH:MM:SS.ffffffZ" (shared/progress/instant.ts). Devices order lives by it.
   */
  created_at: string;
}

/**
 * Outcome of one write: whether it won, whether it met a conflict, the other write of that conflict
 * (for a lost write the stored row, for a won tie the write it replaced), and the row as stored after
 * it. A replay of a stored write gets the same answer as the first time.
 */
export interface WriteResult {
  won: boolean;
  conflict: ConflictKind | null;
  conflict_with: ProgressKey | null;
  progress: Progress;
}

export interface BatchWriteResponse {
  results: WriteResult[];
}

export interface ProgressResponse {
  progress: Progress;
}

/** GET /progress (library), newest first. next_cursor is null on the last page. */
export interface ProgressListResponse {
  items: Progress[];
  next_cursor: string | null;
}

/**
 * An item of GET /progress/changes: a row as it is now, or, with `deleted: true`, the version a hard
 * DELETE removed (the series has no row now; the API itself never hard-deletes, a reset is a write).
 */
export type ChangeItem = Progress & { deleted?: true };

/** GET /progress/changes. Always continue from next_cursor; rows may repeat (dedupe by key). */
export interface ChangesResponse {
  changes: ChangeItem[];
  next_cursor: string;
  has_more: boolean;
  /**
   * true where the cursor given was not taken as it stands and the read started over from the
   * beginning (another user's cursor, another cluster's or timeline's, or one the server could not
   * check): the page holds the user's changes from the beginning. Absent otherwise, and from a
   * function or database of before (false is taken too).
   */
  started_over?: boolean;
}

export interface ApiErrorBody {
  error: { code: string; message: string; details?: unknown };
}

/** Bounds shared by the schemas, the handler and the SQL (keep them in step with the migrations). */
export const PROGRESS_LIMITS = {
  /** `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`, the CHECK on series_id and device_id. */
  idPattern: /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/,
  chapterMax: 100_000,
  pageMax: 1_000_000,
  batchMax: 100,
  listDefault: 50,
  listMax: 200,
  changesDefault: 100,
  changesMax: 500,
  /** Request bodies above this are rejected with 413 (a full batch is ~25 KiB). */
  maxBodyBytes: 64 * 1024,
  /** updated_at more than this far in the future is recorded as the server's now() (and wins). */
  futureToleranceMs: 5_000,
} as const;
