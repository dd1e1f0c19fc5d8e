// What the web tests build over and over: an unsent write as the web app's SyncStore holds it.

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
