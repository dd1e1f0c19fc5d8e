// The row contract RealtimeService relies on by default, taken from the progress API so the live
// path and the API agree by construction: rows are validated with the shared zod row schema
// (timestamps normalised to ISO ms "Z"), and versions are ordered by the ConflictResolver's
// last-write-wins order (updated_at ms, then device_id byte-wise, as the SQL decides it).

import { conflictResolver } from "../progress/conflictResolver.ts";
import { parseProgressRow } from "../progress/schemas.ts";
import type { Progress } from "../progress/types.ts";
import type { LwwRow } from "./progressMerge.ts";

export type ProgressRow = Progress;

export function defaultParseRow(value: unknown): ProgressRow {
  return parseProgressRow(value);
}

export function defaultCompareRows(a: LwwRow, b: LwwRow): number {
  return conflictResolver.compare(a, b);
}
