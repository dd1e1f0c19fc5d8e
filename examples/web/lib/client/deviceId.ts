// One device id per browser profile (each Playwright context, each browser, each phone), kept in
// localStorage. It is the tie-breaker of last-write-wins and tells the reader which device won.
//
// Once the site's data is cleared, one browser writes with two ids: a tab opened then makes a new one here,
// while a page open through the clear keeps the one it read (SyncProvider reads it once per session). So the
// ids this browser wrote with are kept beside it (DEVICE_IDS_KEY): the one made or read here, and the ids of
// the writes an outbox queues and writes back after a clear (SyncStore), so that a version stored under any of
// them is this browser's own, never another device's (syncStore.ts: #browsersDevice).
//
// The list is one value the tabs read, change and write back. Two tabs doing so at the same instant each wrote
// the list as it read it plus its own id, and the second write dropped the first one's id (until that tab's
// next write added it again). So the change is made under a Web Lock (DEVICE_IDS_LOCK), the list read again
// inside it; without Web Locks (a page over plain http other than localhost: they need a secure context) it is
// made at once, and a tab adds the ids it writes with again at its next write, as before. (Even under the lock,
// a tab's write may reach another tab a moment after that tab is granted it, as with the outbox: the same next
// write adds a lost id again.)

const KEY = "readsync.deviceId";
/** This browser's device ids, oldest first (JSON list), see above. */
export const DEVICE_IDS_KEY = "readsync.deviceIds";
/** The Web Lock the tabs change DEVICE_IDS_KEY's list under (one at a time: see above). */
export const DEVICE_IDS_LOCK = "readsync.deviceIds";
/**
 * How many of them are kept: one more at each clear of the site's data with a page open through it. Those still
 * written with here (this page's, its queued writes': rememberDeviceIds's `keep`) are kept beyond it, and push
 * no other id out when added (another tab's may be one it still writes with).
 */
const DEVICE_IDS_KEPT = 16;
const FORMAT = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** What is used of navigator.locks (syncSession.ts's WebLocks). */
export interface DeviceIdLocks {
  request(name: string, options: { signal?: AbortSignal }, run: () => Promise<void>): Promise<unknown>;
}

/**
 * The ids getDeviceId gave this page (one, unless the site's data was cleared between two sessions of it):
 * SyncProvider writes with the one it read for its whole session, so the list never drops them (see
 * rememberDeviceIds), however many ids the clears made since.
 */
const idsOfThisPage = new Set<string>();

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

/** navigator.locks, where there are Web Locks (a secure context); null elsewhere. */
function browserLocks(): DeviceIdLocks | null {
  try {
    return (globalThis as { navigator?: { locks?: DeviceIdLocks } }).navigator?.locks ?? null;
  } catch {
    return null;
  }
}

/**
 * This browser's device id (made and kept when there is none); `storage`: localStorage, or a test's own;
 * `locks`: navigator.locks, or a test's own (null: none).
 */
export function getDeviceId(
  storage: Storage | null = browserStorage(),
  locks: DeviceIdLocks | null = browserLocks(),
): string {
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
  idsOfThisPage.add(id);
  if (storage) void rememberDeviceIds(storage, [id], { locks });
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
 * Adds `ids` (this browser's) to DEVICE_IDS_KEY's list, written only when one is missing: under `locks`'
 * DEVICE_IDS_LOCK, the list read again inside it (at once without `locks`: see the top). Beyond DEVICE_IDS_KEPT
 * the oldest go, but never the ids of this page (getDeviceId's) nor those of `keep` (the caller's queued
 * writes'): the last ones added before were the ids the clears made since, and after sixteen clears with a
 * page open through them the id that page still wrote with went. Adding those takes no other id's place (only
 * the ids added beside them make the oldest go): the list cannot tell another tab's, which that tab keeps so
 * only in its own changes. `writtenBack`: ids a tab writes back after a clear, older than those the list got
 * since (a tab opened after the clear made one): they go before them, so that the cut takes the oldest. Resolves
 * once the list is written (or found to hold them).
 */
export function rememberDeviceIds(
  storage: Storage,
  ids: Iterable<string>,
  { keep = [], locks = null, writtenBack = false }: {
    keep?: Iterable<string>;
    locks?: DeviceIdLocks | null;
    writtenBack?: boolean;
  } = {},
): Promise<void> {
  const adding = [...new Set(ids)].filter((id) => FORMAT.test(id));
  const kept = new Set([...idsOfThisPage, ...keep]);
  const update = () => addToList(storage, adding, kept, writtenBack);
  if (!locks) return Promise.resolve(update());
  // All there already (a tab's every page turn asks): no lock to wait for. A change under way in another tab
  // read the list again once it held the lock, so it keeps them.
  const listed = readDeviceIds(storage);
  if (adding.every((id) => listed.includes(id))) return Promise.resolve();
  try {
    // A request refused (no lock for this document after all) is made at once, as without Web Locks.
    return locks.request(DEVICE_IDS_LOCK, {}, async () => update()).then(() => {}, update);
  } catch {
    return Promise.resolve(update());
  }
}

/** rememberDeviceIds' change of the list, read again now. */
function addToList(storage: Storage, adding: readonly string[], kept: ReadonlySet<string>, writtenBack: boolean): void {
  const listed = readDeviceIds(storage);
  const missing = adding.filter((id) => !listed.includes(id));
  if (missing.length === 0) return;
  const list = writtenBack ? [...missing, ...listed] : [...listed, ...missing];
  // The oldest go first, those still written with never; and the ids this tab still writes with push none out:
  // another tab's are kept by that tab alone (its own cut), and a page's write-back after a clear that added its
  // id cut the other page's, written back just before (the oldest after its own), until that page's next write.
  const room = Math.max(DEVICE_IDS_KEPT, listed.length + missing.filter((id) => kept.has(id)).length);
  for (let i = 0; i < list.length && list.length > room;) {
    if (kept.has(list[i])) i++;
    else list.splice(i, 1);
  }
  try {
    storage.setItem(DEVICE_IDS_KEY, JSON.stringify(list));
  } catch {
    // storage full or disabled: the outboxes still name the ids of their writes
  }
}
