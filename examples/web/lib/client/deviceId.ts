// One device id per browser profile (each Playwright context, each browser, each phone), kept in
// localStorage. It is the tie-breaker of last-write-wins and tells the reader which device won.
//
// Once the site's data is cleared, one browser writes with two ids: a tab opened then makes a new one here,
// while a page open through the clear keeps the one it read (SyncProvider reads it once per session). So the
// ids this browser wrote with are kept beside it (DEVICE_IDS_KEY): the one made or read here, and the ids of
// the writes an outbox queues and writes back after a clear (SyncStore), so that a version stored under any of
// them is this browser's own, never another device's (syncStore.ts: #browsersDevice).

const KEY = "readsync.deviceId";
/** This browser's device ids, oldest first (JSON list), see above. */
export const DEVICE_IDS_KEY = "readsync.deviceIds";
/** How many of them are kept: one more at each clear of the site's data with a page open through it. */
const DEVICE_IDS_KEPT = 16;
const FORMAT = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

function randomSuffix(): string {
  const bytes = new Uint8Array(5);
  crypto.getRandomValues(bytes); // works outside secure contexts too, unlike randomUUID()
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function browserStorage(): Storage | null {
  try {
    return localStorage;
  } catch {
    return null; // storage disabled
  }
}

/** This browser's device id (made and kept when there is none); `storage`: localStorage, or a test's own. */
export function getDeviceId(storage: Storage | null = browserStorage()): string {
  let id: string | null = null;
  try {
    id = storage?.getItem(KEY) ?? null;
  } catch {
    // Storage disabled: a per-tab id still works, it just does not survive a reload.
  }
  if (!id || !FORMAT.test(id)) {
    id = `web-${randomSuffix()}`;
    try {
      storage?.setItem(KEY, id);
    } catch {
      // see above
    }
  }
  if (storage) rememberDeviceIds(storage, [id]);
  return id;
}

/** The device ids this browser wrote with (DEVICE_IDS_KEY); none when unreadable. */
export function readDeviceIds(storage: Storage): string[] {
  try {
    const saved = JSON.parse(storage.getItem(DEVICE_IDS_KEY) ?? "[]");
    return Array.isArray(saved) ? saved.filter((id): id is string => typeof id === "string" && FORMAT.test(id)) : [];
  } catch {
    return [];
  }
}

/**
 * Adds `ids` (this browser's) to DEVICE_IDS_KEY's list, the last DEVICE_IDS_KEPT kept; written only when one is
 * missing. Returns the list as it now is.
 */
export function rememberDeviceIds(storage: Storage, ids: Iterable<string>): string[] {
  const kept = readDeviceIds(storage);
  const missing = [...new Set(ids)].filter((id) => FORMAT.test(id) && !kept.includes(id));
  if (missing.length === 0) return kept;
  const list = [...kept, ...missing].slice(-DEVICE_IDS_KEPT);
  try {
    storage.setItem(DEVICE_IDS_KEY, JSON.stringify(list));
  } catch {
    // storage full or disabled: the outboxes still name the ids of their writes
  }
  return list;
}
