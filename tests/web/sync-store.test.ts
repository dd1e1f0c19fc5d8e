// The web app's per-device state (examples/web/lib/client/syncStore.ts): what a device shows is the
// last-write-wins winner of the server's rows and its own unsent writes; a write that lost says
// which device won; the outbox survives a reload. The browser tests drive it through the UI; these
// pin down the rules one by one.

import assert from "node:assert/strict";
import { defaultCompareRows } from "@shared/realtime/progressContract.ts";
import type { Progress, WriteResult } from "@shared/progress/types.ts";
import { ServerClock } from "@shared/progress/serverClock.ts";
import { ConflictResolver } from "@shared/progress/conflictResolver.ts";
import { type PendingWrite, SyncStore } from "../../examples/web/lib/client/syncStore.ts";
import { datedWrite } from "../../examples/web/lib/client/syncSession.ts";
import { pendingWrite as write } from "./support.ts";
import { savedBy } from "../../examples/web/components/format.ts";
import { type DeviceIdLocks, readDeviceIds } from "../../examples/web/lib/client/deviceId.ts";

const USER = "11111111-1111-4111-8111-111111111111";

/** A server row; `life` = when this life of the row was inserted (one life unless a test says so). */
function row(
  series: string,
  at: string,
  device: string,
  chapter: number,
  life = LIFE,
): Progress {
  return {
    ...write(series, at, device, chapter),
    user_id: USER,
    synced_at: at,
    change_xid: "1",
    created_at: life,
  };
}

/** The server's answer when it stored the write as `progress`. */
function storedAs(progress: Progress): WriteResult {
  return { won: true, conflict: null, conflict_with: null, progress };
}

/** The server's answer when the write lost to the stored `progress` (whose key is the other write's). */
function lostTo(progress: Progress, conflict: "stale" | "tie" = "stale"): WriteResult {
  return {
    won: false,
    conflict,
    conflict_with: { updated_at: progress.updated_at, device_id: progress.device_id },
    progress,
  };
}

class MemoryStorage implements Storage {
  #items = new Map<string, string>();
  get length() {
    return this.#items.size;
  }
  clear() {
    this.#items.clear();
  }
  getItem(key: string) {
    return this.#items.get(key) ?? null;
  }
  key(index: number) {
    return [...this.#items.keys()][index] ?? null;
  }
  removeItem(key: string) {
    this.#items.delete(key);
  }
  setItem(key: string, value: string) {
    this.#items.set(key, value);
  }
}

/**
 * The updated_at a page turn of `series` on `device` made at `nowMs` gets, as the app dates it (datedWrite,
 * under a clock whose offset is measured and reads `nowMs`).
 */
function datedAt(store: SyncStore, series: string, nowMs: number, device: string): string {
  const clock = new ServerClock({ deviceNow: () => nowMs - 1, offsetMs: 1 });
  return datedWrite(store, clock, series, { chapter: 1, page: 1, percentage: 0.5 }, device).updated_at;
}

const LIFE = "2026-11-25T09:00:00.000Z";
const T1 = "2026-11-25T10:00:00.000Z";
const T2 = "2026-11-25T10:00:01.000Z";
const T3 = "2026-11-25T10:00:02.000Z";

Deno.test("an optimistic write shows at once and counts as pending until the server answers", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  store.seed([row("saga", T1, "phone", 1)]);
  const mine = write("saga", T2, "tablet", 2);
  store.addPending(mine);
  let view = store.getSnapshot().bySeries.get("saga")!;
  assert.equal(view.chapter, 2);
  assert.equal(view.pending, true);
  assert.equal(store.getSnapshot().pendingCount, 1);

  const result: WriteResult = storedAs(row("saga", T2, "tablet", 2));
  store.settle(mine, result);
  view = store.getSnapshot().bySeries.get("saga")!;
  assert.equal(view.chapter, 2);
  assert.equal(view.pending, false);
  assert.equal(store.getSnapshot().pendingCount, 0);
  assert.equal(store.getSnapshot().notices.size, 0);
});

Deno.test("a write that lost to a newer one from another device leaves a notice naming the winner", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  const mine = write("saga", T1, "tablet", 5);
  store.addPending(mine);
  store.settle(mine, lostTo(row("saga", T2, "phone", 6)));
  const snapshot = store.getSnapshot();
  assert.equal(snapshot.bySeries.get("saga")!.chapter, 6);
  assert.equal(snapshot.bySeries.get("saga")!.deviceId, "phone");
  const notice = snapshot.notices.get("saga")!;
  assert.equal(notice.winner.device_id, "phone");
  assert.equal(notice.lost.chapter, 5);
  store.dismissNotice("saga");
  assert.equal(store.getSnapshot().notices.size, 0);
});

Deno.test("an answer whose stored row is this very write is not a conflict, however it is flagged", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  const mine = write("saga", T2, "tablet", 3);
  store.addPending(mine);
  store.settle(mine, lostTo(row("saga", T2, "tablet", 3), "tie"));
  assert.equal(store.getSnapshot().notices.size, 0);
  assert.equal(store.getSnapshot().pendingCount, 0);
});

Deno.test("the view is the last-write-wins winner of server rows and the pending write, in any arrival order", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  store.addPending(write("saga", T2, "tablet", 2));
  // An older row from Realtime does not hide the newer local write...
  assert.equal(store.applyServerRow(row("saga", T1, "phone", 1)), true);
  assert.equal(store.getSnapshot().bySeries.get("saga")!.chapter, 2);
  // ...a newer one does, before the server has even answered the write.
  store.applyServerRow(row("saga", T3, "phone", 7));
  assert.equal(store.getSnapshot().bySeries.get("saga")!.chapter, 7);
  // An older row arriving late changes nothing.
  assert.equal(store.applyServerRow(row("saga", T1, "e-reader", 9)), false);
  assert.equal(store.getSnapshot().bySeries.get("saga")!.chapter, 7);
  // Same updated_at: the larger device_id wins, as in the database.
  store.applyServerRow(row("saga", T3, "phone-b", 8));
  assert.equal(store.getSnapshot().bySeries.get("saga")!.chapter, 8);
});

Deno.test("the library lists every series newest first and leaves reset (cleared) series out", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  store.seed([row("a", T1, "phone", 1), row("b", T3, "phone", 1), {
    ...row("c", T2, "phone", 0),
    cleared: true,
  }]);
  assert.deepEqual(store.getSnapshot().library.map((v) => v.seriesId), [
    "b",
    "a",
  ]);
});

Deno.test("the server snapshot (React's while it hydrates) is the seeded rows only, as the server rendered them", () => {
  // A write an earlier visit left in the outbox, loaded (SyncProvider's effect) before the page's content
  // hydrates: that content must still render what the server's HTML has.
  const storage = new MemoryStorage();
  const earlier = new SyncStore(USER, defaultCompareRows);
  earlier.attachStorage(storage);
  earlier.addPending(write("atlas", T2, "tablet", 4));
  const store = new SyncStore(USER, defaultCompareRows);
  store.attachStorage(storage);
  store.applyServerRow(row("saga", T3, "phone", 9)); // Realtime, before the page hydrated
  store.setError("Not saved yet (will retry)");
  store.seed([row("saga", T1, "phone", 1), row("atlas", T1, "phone", 3)]);

  const server = store.getServerSnapshot();
  assert.deepEqual(server.library.map((v) => [v.seriesId, v.chapter, v.pending]), [
    ["atlas", 3, false],
    ["saga", 1, false],
  ]);
  assert.equal(server.pendingCount, 0);
  assert.equal(server.lastError, null);
  assert.equal(store.getServerSnapshot(), server, "the same snapshot until a seed changes it");
  // What the device shows once hydrated: its waiting write, the newer row, the error.
  const client = store.getSnapshot();
  assert.equal(client.bySeries.get("atlas")!.chapter, 4);
  assert.equal(client.bySeries.get("saga")!.chapter, 9);
  assert.equal(client.pendingCount, 1);

  store.seed([row("saga", T2, "phone", 2)]); // a newer server-rendered page
  assert.equal(store.getServerSnapshot().bySeries.get("saga")!.chapter, 2);
  store.seed([row("saga", T1, "phone", 1)]); // an older one changes nothing
  assert.equal(store.getServerSnapshot().bySeries.get("saga")!.chapter, 2);
});

Deno.test("the outbox survives a reload (per user) and a newer write replaces an older one for the series", () => {
  const storage = new MemoryStorage();
  const first = new SyncStore(USER, defaultCompareRows);
  first.attachStorage(storage);
  first.addPending(write("saga", T1, "tablet", 1));
  first.addPending(write("saga", T2, "tablet", 2));
  first.addPending(write("atlas", T1, "tablet", 4));

  const afterReload = new SyncStore(USER, defaultCompareRows);
  afterReload.attachStorage(storage);
  const pending = afterReload.pendingWrites().sort((a, b) => a.series_id.localeCompare(b.series_id));
  assert.deepEqual(pending.map((w) => [w.series_id, w.chapter]), [
    ["atlas", 4],
    ["saga", 2],
  ]);

  const otherUser = new SyncStore(
    "22222222-2222-4222-8222-222222222222",
    defaultCompareRows,
  );
  otherUser.attachStorage(storage);
  assert.equal(otherUser.pendingWrites().length, 0);

  for (const w of afterReload.pendingWrites()) {
    const stored = row(w.series_id, w.updated_at, w.device_id, w.chapter);
    afterReload.settle(w, storedAs(stored));
  }
  const again = new SyncStore(USER, defaultCompareRows);
  again.attachStorage(storage);
  assert.equal(
    again.pendingWrites().length,
    0,
    "a sent outbox is gone from storage",
  );
});

Deno.test("a refused write leaves the outbox with a message instead of being retried forever", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  const bad = write("saga", T1, "tablet", 1);
  store.addPending(bad);
  store.reject(bad, "Could not save saga: validation_failed");
  assert.equal(store.getSnapshot().pendingCount, 0);
  assert.match(store.getSnapshot().lastError ?? "", /validation_failed/);
});

Deno.test("a corrupt saved outbox is dropped, not thrown", () => {
  const storage = new MemoryStorage();
  storage.setItem(`readsync.outbox.${USER}`, "{not json");
  const store = new SyncStore(USER, defaultCompareRows);
  store.attachStorage(storage);
  assert.equal(store.pendingWrites().length, 0);
});

Deno.test("a row inserted after a hard DELETE replaces the old one even with an older updated_at", () => {
  // The page was rendered with the first life of the row; meanwhile it was hard-deleted and an
  // e-reader back from offline wrote an older position, which the server inserted (a new life).
  // The catch-up delivers that row: the device must show what the server has.
  const store = new SyncStore(USER, defaultCompareRows);
  store.seed([row("saga", T3, "phone", 9)]);
  const secondLife = row("saga", T1, "ereader", 4, "2026-11-25T11:00:00.000Z");
  assert.equal(store.applyServerRow(secondLife), true);
  assert.equal(store.getSnapshot().bySeries.get("saga")?.chapter, 4);
  assert.equal(
    store.applyServerRow(row("saga", T3, "phone", 9)),
    false,
    "a late copy of the first life",
  );
  assert.equal(store.getSnapshot().bySeries.get("saga")?.chapter, 4);
});

Deno.test("a hard DELETE removes the version it deleted, never a newer one the device already has", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  const firstLife = row("saga", T2, "phone", 3);
  store.seed([firstLife]);
  store.removeServerRow(firstLife);
  assert.equal(store.getSnapshot().bySeries.has("saga"), false);
  // This device inserted the series again and has the answer; a late copy of the old DELETE arrives.
  const secondLife = row("saga", T1, "tablet", 1, "2026-11-25T11:00:00.000Z");
  store.applyServerRow(secondLife);
  store.removeServerRow(firstLife);
  assert.equal(store.getSnapshot().bySeries.get("saga")?.chapter, 1);
  store.removeServerRow(secondLife);
  assert.equal(store.getSnapshot().bySeries.has("saga"), false);
});

// ---- two tabs of one browser share one saved outbox (localStorage) and one device id

/** Two tabs of one browser: one saved outbox between them. */
function twoTabs(): {
  storage: MemoryStorage;
  tabA: SyncStore;
  tabB: SyncStore;
} {
  const storage = new MemoryStorage();
  const tabA = new SyncStore(USER, defaultCompareRows);
  tabA.attachStorage(storage);
  const tabB = new SyncStore(USER, defaultCompareRows);
  tabB.attachStorage(storage);
  return { storage, tabA, tabB };
}

Deno.test("two tabs: each tab's unsent write survives the other tab's saves", () => {
  const { storage, tabA, tabB } = twoTabs();
  tabA.addPending(write("saga", T1, "web-1", 12)); // offline, in tab A
  tabB.addPending(write("atlas", T2, "web-1", 3)); // then in tab B
  // Both tabs close before the network is back; the next visit sends both.
  const reopened = new SyncStore(USER, defaultCompareRows);
  reopened.attachStorage(storage);
  assert.deepEqual(reopened.pendingWrites().map((w) => w.series_id).sort(), [
    "atlas",
    "saga",
  ]);
});

Deno.test("two tabs: an answered write leaves the saved outbox alone, the other tab's writes stay", () => {
  const { storage, tabA, tabB } = twoTabs();
  const saga = write("saga", T1, "web-1", 12);
  tabA.addPending(saga);
  tabB.addPending(write("atlas", T2, "web-1", 3));
  // Tab B saved a newer write of saga too, before tab A's answer came.
  tabB.addPending(write("saga", T3, "web-1", 13));
  tabA.settle(saga, storedAs(row("saga", T1, "web-1", 12)));
  const reopened = new SyncStore(USER, defaultCompareRows);
  reopened.attachStorage(storage);
  const saved = reopened.pendingWrites().sort((a, b) => a.series_id.localeCompare(b.series_id));
  assert.deepEqual(saved.map((w) => [w.series_id, w.chapter]), [["atlas", 3], [
    "saga",
    13,
  ]]);
  // Once every write is answered, nothing is left.
  for (const w of saved) {
    reopened.settle(w, storedAs(row(w.series_id, w.updated_at, w.device_id, w.chapter)));
  }
  assert.equal(storage.getItem(reopened.outboxKey), null);
});

Deno.test("two tabs: another position under the same key is a later save, not a copy of the first", () => {
  const { storage, tabA, tabB } = twoTabs();
  // One device id, one millisecond: tab A saves chapter 12, then tab B chapter 14 under the same key.
  const fromA = write("saga", T1, "web-1", 12);
  const fromB = write("saga", T1, "web-1", 14);
  tabA.addPending(fromA);
  tabB.addPending(fromB);
  const saved = () => {
    const reopened = new SyncStore(USER, defaultCompareRows);
    reopened.attachStorage(storage);
    return reopened.pendingWrites().map((w) => [w.series_id, w.chapter]);
  };
  assert.deepEqual(saved(), [["saga", 14]], "the last save is kept");
  // Tab A's write is answered: tab B's, another position, stays queued.
  tabA.settle(fromA, storedAs(row("saga", T1, "web-1", 12)));
  assert.deepEqual(saved(), [["saga", 14]]);
  // Told that storage changed, tab A takes it over.
  tabA.reloadOutbox();
  assert.deepEqual(tabA.pendingWrites().map((w) => w.chapter), [14]);
  // A copy of the same write (same key, same position) changes nothing and is cleared by its answer.
  tabA.addPending(write("saga", T1, "web-1", 14));
  assert.deepEqual(saved(), [["saga", 14]]);
  // The server stores it 1 ms after the first (README, the API's outcomes).
  const stored = row(
    "saga",
    new Date(Date.parse(T1) + 1).toISOString(),
    "web-1",
    14,
  );
  tabB.settle(fromB, storedAs(stored));
  assert.equal(storage.getItem(tabB.outboxKey), null);
});

Deno.test("two tabs: a save is dated after the other tab's unsent save of the series, and a write that loses to this device's own is no conflict", () => {
  const { tabA, tabB } = twoTabs();
  const fromA = write("saga", T1, "web-1", 12);
  tabA.addPending(fromA);
  // Tab B has not taken A's save over (no storage event yet) and its clock says T1 too.
  const at = datedAt(tabB, "saga", Date.parse(T1), "web-1");
  assert.equal(
    at,
    new Date(Date.parse(T1) + 1).toISOString(),
    "after tab A's saved write, never under its key",
  );
  // After it whatever its device id (the browser's own before its site data was cleared, see below); not after
  // one dated beyond the server's 5 s tolerance.
  assert.equal(datedAt(tabB, "saga", Date.parse(T1), "web-2"), new Date(Date.parse(T1) + 1).toISOString());
  const ahead = twoTabs();
  ahead.tabA.addPending(write("saga", new Date(Date.parse(T1) + 3_600_000).toISOString(), "web-1", 9));
  ahead.tabA.addPending(write("atlas", "+275760-09-13T00:00:00.000Z", "web-1", 9));
  assert.equal(datedAt(ahead.tabB, "saga", Date.parse(T1), "web-1"), T1);
  assert.equal(datedAt(ahead.tabB, "atlas", Date.parse(T1), "web-1"), T1);
  const fromB = write("saga", at, "web-1", 14);
  tabB.addPending(fromB);
  // B's arrives first; A's, older, then loses to it: the winner is this device's own later save.
  tabA.settle(fromA, lostTo(row("saga", at, "web-1", 14)));
  assert.equal(
    tabA.getSnapshot().notices.size,
    0,
    "no 'another device wins' for this device's own save",
  );
  assert.equal(tabA.getSnapshot().bySeries.get("saga")?.chapter, 14);
});

Deno.test("a pending write under the confirmed version's key with another position is what is shown", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  store.seed([row("saga", T1, "web-1", 12)]);
  store.addPending(write("saga", T1, "web-1", 14)); // another tab's, same key (a race)
  assert.equal(store.getSnapshot().bySeries.get("saga")?.chapter, 14);
  assert.equal(store.getSnapshot().bySeries.get("saga")?.pending, true);
});

Deno.test("two tabs: a tab takes over the writes another tab queued when told storage changed", () => {
  const { tabA, tabB } = twoTabs();
  tabB.addPending(write("atlas", T2, "web-1", 3));
  let emitted = 0;
  tabA.subscribe(() => emitted++);
  tabA.reloadOutbox(); // the provider calls this on a `storage` event for tabA.outboxKey
  assert.deepEqual(tabA.pendingWrites().map((w) => w.series_id), ["atlas"]);
  assert.equal(tabA.getSnapshot().bySeries.get("atlas")?.chapter, 3);
  assert.equal(emitted, 1);
  tabA.reloadOutbox(); // nothing new: no re-render
  assert.equal(emitted, 1);
});

Deno.test("two tabs: a write another tab got answered leaves this tab's outbox too, so it is not sent twice", () => {
  const { storage, tabA, tabB } = twoTabs();
  const saga = write("saga", T1, "web-1", 12);
  const atlas = write("atlas", T2, "web-1", 3);
  tabA.addPending(saga);
  tabA.addPending(atlas);
  tabB.reloadOutbox(); // both taken over
  assert.equal(tabB.getSnapshot().pendingCount, 2);
  // Tab A sends them: saga is stored, atlas refused. Tab B hears of it (storage event).
  tabA.settle(saga, storedAs(row("saga", T1, "web-1", 12)));
  tabA.reject(atlas, "Could not save atlas");
  let emitted = 0;
  tabB.subscribe(() => emitted++);
  tabB.reloadOutbox();
  assert.deepEqual([tabB.pendingWrites(), tabB.getSnapshot().pendingCount, emitted], [[], 0, 1]);

  // A write this tab could not save (storage full) is its own to send: never let go this way.
  const full = new MemoryStorage();
  const tabC = new SyncStore(USER, defaultCompareRows);
  tabC.attachStorage(full);
  full.setItem = () => {
    throw new DOMException("quota", "QuotaExceededError");
  };
  tabC.addPending(write("saga", T3, "web-1", 13));
  tabC.reloadOutbox();
  assert.equal(tabC.getSnapshot().pendingCount, 1);
  // Nor when the saved outbox cannot be read (corrupt): unreadable is not answered.
  tabA.addPending(write("saga", T3, "web-1", 14));
  tabB.reloadOutbox();
  storage.setItem(tabB.outboxKey, "{not json");
  tabB.reloadOutbox();
  assert.equal(tabB.getSnapshot().pendingCount, 1);
});

/**
 * A tab's view of `storage` whose saved outbox lags: after freeze() it reads the outbox as it was
 * then (what another tab writes has not reached this tab's copy), after catchUp() as it is.
 */
function laggingOutboxView(storage: MemoryStorage) {
  const key = `readsync.outbox.${USER}`;
  let stale: string | null | undefined;
  const view = new MemoryStorage();
  view.getItem = (k) => k === key && stale !== undefined ? stale : storage.getItem(k);
  view.setItem = (k, value) => storage.setItem(k, value);
  view.removeItem = (k) => storage.removeItem(k);
  return {
    view,
    freeze() {
      stale = storage.getItem(key);
    },
    catchUp() {
      stale = undefined;
    },
  };
}

/** Two tabs of one user over one storage, one of them (`laggingTab`) with a view whose saved outbox lags. */
function twoTabsOneLagging(laggingTab: "A" | "B") {
  const storage = new MemoryStorage();
  const lagging = laggingOutboxView(storage);
  const tabA = new SyncStore(USER, defaultCompareRows);
  tabA.attachStorage(laggingTab === "A" ? lagging.view : storage);
  const tabB = new SyncStore(USER, defaultCompareRows);
  tabB.attachStorage(laggingTab === "B" ? lagging.view : storage);
  return { storage, lagging, tabA, tabB };
}

Deno.test("two tabs: a write named answered is let go even while this tab still sees it in the saved outbox", () => {
  // Seen in the browser test under load: tab A's answer named saga (the list of answered writes) and
  // then took it out of the saved outbox; tab B took the Web Lock between the two reaching it, saw the
  // name and the old outbox, and sent saga again. The name alone says it was answered.
  const { lagging, tabA, tabB } = twoTabsOneLagging("B");
  const saga = write("saga", T1, "web-1", 12);
  const atlas = write("atlas", T2, "web-1", 3);
  tabA.addPending(saga);
  tabB.reloadOutbox();
  tabB.addPending(atlas);
  tabA.reloadOutbox();
  lagging.freeze(); // [saga, atlas]: tab B has not heard of tab A's removal yet
  tabA.settle(saga, storedAs(row("saga", T1, "web-1", 12)));
  tabB.reloadOutbox(); // the Web Lock is tab B's: it takes over what it sees
  assert.deepEqual(tabB.pendingWrites().map((w) => w.series_id), ["atlas"], "saga is not sent again");
  // A tab opened now, with the same lagging view, does not take saga up either.
  const tabC = new SyncStore(USER, defaultCompareRows);
  tabC.attachStorage(lagging.view);
  assert.deepEqual(tabC.pendingWrites().map((w) => w.series_id), ["atlas"], "nor by a tab opened meanwhile");
  // Once the removal reaches tab B, nothing changes; atlas is still its to send.
  lagging.catchUp();
  tabB.reloadOutbox();
  assert.deepEqual(tabB.pendingWrites().map((w) => w.series_id), ["atlas"]);
  // A later save of saga (another key) is not named: it is queued and sent.
  tabA.addPending(write("saga", T3, "web-1", 13));
  tabB.reloadOutbox();
  assert.deepEqual(tabB.pendingWrites().map((w) => w.series_id).sort(), ["atlas", "saga"]);
});

Deno.test("two tabs: a write that left the saved outbox unanswered (another tab rewrote it from an older copy, or it was cleared) is kept and saved again", () => {
  // localStorage is no transaction across tabs: each tab's process reads its own copy, so a tab that
  // rewrites the outbox (its answer to a write) before another tab's save reached it writes it back
  // without that save. Only a write another tab says it got answered leaves this tab's outbox.
  const key = `readsync.outbox.${USER}`;
  const { storage, lagging, tabA, tabB } = twoTabsOneLagging("A");
  const saga = write("saga", T1, "web-1", 12);
  tabA.addPending(saga);
  tabB.reloadOutbox();
  lagging.freeze(); // tab A has not heard of what tab B saves next
  const atlas = write("atlas", T2, "web-1", 3);
  tabB.addPending(atlas);
  tabA.settle(saga, storedAs(row("saga", T1, "web-1", 12))); // writes the outbox back without atlas
  lagging.catchUp();
  tabB.reloadOutbox(); // the storage event of tab A's write
  assert.deepEqual(
    tabB.pendingWrites().map((w) => w.series_id),
    ["atlas"],
    "saga was answered, atlas was not",
  );
  const reopened = new SyncStore(USER, defaultCompareRows);
  reopened.attachStorage(storage);
  assert.deepEqual(reopened.pendingWrites().map((w) => w.series_id), ["atlas"], "atlas is saved again");

  // Another tab (or the reader) cleared the site's storage: nothing was answered.
  const other = twoTabs();
  other.tabA.addPending(write("codex", T3, "web-1", 5));
  other.tabB.reloadOutbox();
  other.storage.clear();
  other.tabB.reloadOutbox(); // a storage event with key null
  assert.deepEqual(other.tabB.pendingWrites().map((w) => w.series_id), ["codex"]);
  assert.equal(JSON.parse(other.storage.getItem(key)!).length, 1, "saved again");
});

Deno.test("two tabs: when storage cannot take the list of answered writes, a write another tab got answered is saved again once, not for ever", () => {
  const { storage, tabA, tabB } = twoTabs();
  const setItem = storage.setItem.bind(storage);
  storage.setItem = (key, value) => {
    // Neither the list nor the latest write of each series (storage full).
    if (key === tabA.answeredKey || key === tabA.latestAnsweredKey) {
      throw new DOMException("quota", "QuotaExceededError");
    }
    setItem(key, value);
  };
  const saga = write("saga", T1, "web-1", 12);
  tabA.addPending(saga);
  tabB.reloadOutbox();
  tabA.settle(saga, storedAs(row("saga", T1, "web-1", 12)));
  tabB.reloadOutbox();
  assert.equal(tabB.getSnapshot().pendingCount, 1, "unnamed: kept and saved again");
  tabA.reloadOutbox(); // tab A takes it over, sends it again, and it is answered again
  const again = tabA.pendingWrites()[0];
  tabA.settle(again, storedAs(row("saga", T1, "web-1", 12)));
  tabB.reloadOutbox();
  assert.deepEqual([tabB.getSnapshot().pendingCount, storage.getItem(tabB.outboxKey)], [0, null]);
});

Deno.test("two tabs: a write answered again is listed once, at the end, so the list keeps 200 different writes", () => {
  const { storage, tabA, tabB } = twoTabs();
  const names = () =>
    (JSON.parse(storage.getItem(tabA.answeredKey) ?? "[]") as ReturnType<typeof write>[]).map((w) =>
      `${w.series_id}:${w.chapter}`
    );
  const saga = write("saga", T1, "web-1", 12);
  const atlas = write("atlas", T2, "web-1", 3);
  tabA.addPending(saga);
  tabB.reloadOutbox();
  tabA.settle(saga, storedAs(row("saga", T1, "web-1", 12)));
  tabB.settle(saga, storedAs(row("saga", T1, "web-1", 12))); // the repeat, answered as a replay
  tabA.addPending(atlas);
  tabA.settle(atlas, storedAs(row("atlas", T2, "web-1", 3)));
  assert.deepEqual(names(), ["saga:12", "atlas:3"], "named once");
  tabB.settle(saga, storedAs(row("saga", T1, "web-1", 12))); // named again: now the newest mention
  assert.deepEqual(names(), ["atlas:3", "saga:12"]);
  // Another position under the same key is another write: both are named.
  tabA.settle(write("saga", T1, "web-1", 14), storedAs(row("saga", T1, "web-1", 14)));
  assert.deepEqual(names(), ["atlas:3", "saga:12", "saga:14"]);
  // 198 other writes answered, each twice: saga's last mentions are still among the last 200, atlas's is not.
  for (let i = 0; i < 198; i++) {
    const other = write(`s${i}`, T1, "web-1", 1);
    tabA.settle(other, storedAs(row(`s${i}`, T1, "web-1", 1)));
    tabA.settle(other, storedAs(row(`s${i}`, T1, "web-1", 1)));
  }
  assert.deepEqual(names().slice(0, 2), ["saga:12", "saga:14"]);
  assert.equal(names().length, 200);
});

Deno.test("two tabs: a named write written back into the saved outbox from an older copy leaves it at the next save", () => {
  // Tab A's copy of the saved outbox lags: it writes saga back after tab B got saga answered. Every
  // tab skips saga (named), but left there it would be taken up and sent again once its name left
  // the list of the last 200 answered writes.
  const key = `readsync.outbox.${USER}`;
  const { storage, lagging, tabA, tabB } = twoTabsOneLagging("A");
  const saga = write("saga", T1, "web-1", 12);
  tabA.addPending(saga);
  tabB.reloadOutbox();
  lagging.freeze(); // [saga]
  tabB.settle(saga, storedAs(row("saga", T1, "web-1", 12))); // named, then taken out
  tabA.addPending(write("atlas", T2, "web-1", 3)); // writes its copy back, with atlas
  lagging.catchUp();
  const saved = () =>
    (JSON.parse(storage.getItem(key) ?? "[]") as ReturnType<typeof write>[]).map((w) => w.series_id);
  assert.deepEqual(saved(), ["atlas"], "saga is not written back");
  // Written back by a tab that had not seen the name either: the next save of any tab that has leaves it out.
  storage.setItem(key, JSON.stringify([saga, write("atlas", T2, "web-1", 3)]));
  tabB.addPending(write("codex", T3, "web-1", 5));
  assert.deepEqual(saved().sort(), ["atlas", "codex"]);
  // Long after (200 other writes answered, saga's name gone from the list), a tab opened then does not take saga up.
  for (let i = 0; i < 200; i++) {
    tabB.settle(write(`s${i}`, T1, "web-1", 1), storedAs(row(`s${i}`, T1, "web-1", 1)));
  }
  const reopened = new SyncStore(USER, defaultCompareRows);
  reopened.attachStorage(storage);
  assert.deepEqual(reopened.pendingWrites().map((w) => w.series_id).sort(), ["atlas", "codex"]);

  // Only named writes leave: another position under saga's key is a later save, and stays.
  const other = twoTabs();
  other.tabA.settle(saga, storedAs(row("saga", T1, "web-1", 12)));
  other.tabB.addPending(write("saga", T1, "web-1", 14));
  other.tabA.addPending(write("atlas", T2, "web-1", 3));
  const savedThere = JSON.parse(other.storage.getItem(key) ?? "[]") as ReturnType<typeof write>[];
  assert.deepEqual(savedThere.map((w) => [w.series_id, w.chapter]).sort(), [["atlas", 3], ["saga", 14]]);
});

Deno.test("writes queued before storage is attached are saved when it is", () => {
  const storage = new MemoryStorage();
  storage.setItem(
    `readsync.outbox.${USER}`,
    JSON.stringify([write("atlas", T1, "web-1", 1)]),
  );
  const store = new SyncStore(USER, defaultCompareRows);
  store.addPending(write("saga", T2, "web-1", 2));
  store.attachStorage(storage);
  const reopened = new SyncStore(USER, defaultCompareRows);
  reopened.attachStorage(storage);
  assert.deepEqual(reopened.pendingWrites().map((w) => w.series_id).sort(), [
    "atlas",
    "saga",
  ]);
});

Deno.test("a hard DELETE is remembered: a late copy of the deleted version does not bring the series back", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  const v = row("saga", T2, "phone", 7);
  store.seed([v]);
  store.removeServerRow(v);
  // The server-rendered page (or the answer to the write that made v) arrives after the DELETE.
  store.seed([v]);
  assert.equal(store.applyServerRow(v), false);
  assert.equal(
    store.applyServerRow(row("saga", T1, "phone", 6)),
    false,
    "an older version of that life",
  );
  assert.deepEqual(store.getSnapshot().library, []);
  // A new life (inserted after the delete) is shown, whatever its updated_at.
  assert.equal(
    store.applyServerRow(
      row("saga", T1, "ereader", 4, "2026-11-25T11:00:00.000Z"),
    ),
    true,
  );
  assert.equal(store.getSnapshot().bySeries.get("saga")?.chapter, 4);
});

Deno.test("a 'your change lost' notice goes when a newer write of this device is stored", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  const w1 = write("saga", T1, "tablet", 5);
  store.addPending(w1);
  const w2 = write("saga", T3, "tablet", 8);
  store.addPending(w2); // saved again while w1 was in flight
  store.settle(w1, lostTo(row("saga", T2, "phone", 6)));
  assert.equal(
    store.getSnapshot().notices.get("saga")?.winner.device_id,
    "phone",
  );
  store.settle(w2, storedAs(row("saga", T3, "tablet", 8)));
  assert.equal(store.getSnapshot().notices.has("saga"), false);
  assert.equal(store.getSnapshot().bySeries.get("saga")?.chapter, 8);
});

Deno.test("two tabs: the notice goes in both once this device's newer save is stored, whichever tab sent it", () => {
  const storage = new MemoryStorage();
  const tabA = new SyncStore(USER, defaultCompareRows);
  tabA.attachStorage(storage);
  const tabB = new SyncStore(USER, defaultCompareRows);
  tabB.attachStorage(storage);
  // An offline edit in tab A, taken over by tab B (storage event): both send it, both hear it lost.
  const w1 = write("saga", T1, "web-1", 5);
  tabA.addPending(w1);
  tabB.reloadOutbox();
  const phone = row("saga", T2, "phone", 6);
  tabA.settle(w1, lostTo(phone));
  tabB.settle(tabB.pendingWrites()[0], lostTo(phone));
  // The reader goes on in tab B: a newer save, stored.
  const w2 = write("saga", T3, "web-1", 7);
  tabB.addPending(w2);
  tabB.settle(w2, storedAs(row("saga", T3, "web-1", 7)));
  assert.equal(tabB.getSnapshot().notices.has("saga"), false);
  // Tab A hears of it live: the phone's position no longer wins over this device's.
  tabA.applyServerRow(row("saga", T3, "web-1", 7));
  assert.equal(tabA.getSnapshot().notices.has("saga"), false, "tab A: notice gone");
  // A page rendered after it (seed) does the same, and a newer version from another device does not.
  const tabC = new SyncStore(USER, defaultCompareRows);
  tabC.addPending(write("saga", T1, "web-1", 5));
  tabC.settle(tabC.pendingWrites()[0], lostTo(phone));
  tabC.applyServerRow(row("saga", "2026-11-25T10:00:01.500Z", "tv", 9));
  assert.equal(tabC.getSnapshot().notices.get("saga")?.winner.device_id, "phone", "another device's: kept");
  tabC.seed([row("saga", T3, "web-1", 7)]);
  assert.equal(tabC.getSnapshot().notices.has("saga"), false, "seeded: notice gone");
});

Deno.test("a late answer naming a winner older than this device's stored save leaves no notice", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  const w1 = write("saga", T1, "web-1", 5);
  store.addPending(w1);
  store.applyServerRow(row("saga", T3, "web-1", 7)); // another tab's newer save, heard live first
  store.settle(w1, lostTo(row("saga", T2, "phone", 6)));
  assert.equal(store.getSnapshot().notices.has("saga"), false);
  assert.equal(store.getSnapshot().bySeries.get("saga")?.chapter, 7);
});

Deno.test("a new write is dated after the version the reader sees, whichever device made it", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  const now = Date.parse(T1);
  assert.equal(datedAt(store, "saga", now, "web-1"), T1, "nothing shown: now");
  // A phone 3 s ahead (inside the server's 5 s tolerance) saved; the reader turns the page 1 s later.
  store.applyServerRow(row("saga", "2026-11-25T10:00:03.000Z", "phone", 5));
  assert.equal(
    datedAt(store, "saga", now + 1_000, "web-1"),
    "2026-11-25T10:00:03.001Z",
  );
  assert.equal(
    datedAt(store, "saga", now + 5_000, "web-1"),
    "2026-11-25T10:00:05.000Z",
    "later than shown: now",
  );
  // This device's own pending write counts too (two quick saves keep their order).
  store.addPending(write("saga", "2026-11-25T10:00:06.000Z", "web-1", 6));
  assert.equal(
    datedAt(store, "saga", now + 5_000, "web-1"),
    "2026-11-25T10:00:06.001Z",
  );
});

Deno.test("seed leaves out another user's rows (a page rendered for the session another tab signed in)", () => {
  const store = new SyncStore(USER, defaultCompareRows);
  store.seed([row("mine", T1, "phone", 1), {
    ...row("theirs", T1, "phone", 50),
    user_id: "22222222-2222-4222-8222-222222222222",
  }]);
  assert.deepEqual(store.getSnapshot().library.map((item) => item.seriesId), [
    "mine",
  ]);
});

Deno.test("two tabs: a page turn dated before a late-dated write of the series (re-dated when sent) is still ordered after it, so no tab lets it go unsent", () => {
  const HOUR = 3_600_000;
  const now = Date.parse(T1);
  // Tab A's page turn, dated while its clock had no measured offset: an hour late (re-dated when sent).
  const late = {
    ...write("saga", now + HOUR, "web-1", 12),
    unmeasured: { deviceMs: now + HOUR, clock: "tab-a", answers: 0 },
  };
  // Queued in A (not sent yet): tab B, whose clock is measured, turns the page after it.
  const queued = twoTabs();
  queued.tabA.addPending(late);
  // Dated by its clock: the outbox orders it after the late write by its number, not its date.
  const turned = datedAt(queued.tabB, "saga", now + 60_000, "web-1");
  assert.equal(turned, new Date(now + 60_000).toISOString(), "not after the late write's date");
  const fromB = write("saga", turned, "web-1", 13);
  queued.tabB.addPending(fromB);
  queued.tabA.reloadOutbox();
  queued.tabB.reloadOutbox();
  assert.deepEqual(
    [queued.tabA.pendingWrites()[0]?.chapter, queued.tabB.pendingWrites()[0]?.chapter],
    [13, 13],
    "B's page turn is the one both tabs send",
  );
  // Answered in A (sent re-dated): B's next page turn, dated by its clock, is not let go as answered.
  const answered = twoTabs();
  answered.tabA.addPending(late);
  answered.tabA.settle(late, storedAs(row("saga", new Date(now).toISOString(), "web-1", 12)));
  const next = write("saga", datedAt(answered.tabB, "saga", now + 60_000, "web-1"), "web-1", 13);
  assert.equal(next.updated_at, new Date(now + 60_000).toISOString());
  answered.tabB.addPending(next);
  answered.tabB.reloadOutbox(); // as the tab does when it takes the outbox's lock to send
  assert.equal(answered.tabB.pendingWrites()[0]?.chapter, 13, "still to be sent");
});

/** What a fresh visit (a new tab on `storage`) finds in the saved outbox: [series, chapter], by series. */
function savedOutbox(storage: Storage): [string, number][] {
  const reopened = new SyncStore(USER, defaultCompareRows);
  reopened.attachStorage(storage);
  return reopened.pendingWrites().map((w): [string, number] => [w.series_id, w.chapter]).sort();
}

/** Far ahead of any clock: a date edited by hand, or stamped by a device clock years ahead. */
const FAR = "2999-01-01T00:00:00.000Z";

Deno.test("outbox order: a saved write dated far ahead (edited, a clock years ahead) is replaced by the next page turn, in every tab and after a reload, not ranked after it by its date", () => {
  // An earlier visit's outbox, in the format before writes were numbered: saga dated far ahead; and atlas,
  // numbered, but with a number edited out of range.
  const storage = new MemoryStorage();
  storage.setItem(
    `readsync.outbox.${USER}`,
    JSON.stringify([write("saga", FAR, "web-1", 12), { ...write("atlas", FAR, "web-1", 3), seq: 1e300 }]),
  );
  const tabA = new SyncStore(USER, defaultCompareRows);
  const tabB = new SyncStore(USER, defaultCompareRows);
  tabA.attachStorage(storage);
  tabB.attachStorage(storage);
  assert.deepEqual(savedOutbox(storage), [["atlas", 3], ["saga", 12]], "the old format loads");
  // The reader turns the pages in tab A, dated now (by the server's clock).
  tabA.addPending(write("saga", T1, "web-1", 13));
  tabA.addPending(write("atlas", T1, "web-1", 4));
  assert.deepEqual(savedOutbox(storage), [["atlas", 4], ["saga", 13]]);
  tabB.reloadOutbox(); // the storage event
  assert.deepEqual(tabB.pendingWrites().map((w) => [w.series_id, w.chapter]).sort(), [["atlas", 4], [
    "saga",
    13,
  ]]);
  // A copy of the old write written back by a tab from an older copy does not take the page turn's place.
  storage.setItem(
    `readsync.outbox.${USER}`,
    JSON.stringify([
      write("saga", FAR, "web-1", 12),
      ...JSON.parse(storage.getItem(`readsync.outbox.${USER}`)!)
        .filter((w: { series_id: string }) => w.series_id !== "saga"),
    ]),
  );
  tabB.reloadOutbox();
  assert.equal(tabB.pendingWrites().find((w) => w.series_id === "saga")?.chapter, 13);
});

Deno.test("outbox order: an answer to a write dated far ahead does not cover the page turn queued after it, whatever its date", () => {
  const { storage, tabA, tabB } = twoTabs();
  const ahead = write("saga", FAR, "web-1", 12);
  tabA.addPending(ahead);
  tabB.reloadOutbox();
  // Tab B turns the page (dated now); then tab A's send of the far-ahead write is answered (the server
  // stored it at its own clock) and names it answered for the other tabs.
  tabB.addPending(write("saga", T1, "web-1", 13));
  tabA.settle(ahead, storedAs(row("saga", T1, "web-1", 12)));
  tabB.reloadOutbox();
  assert.deepEqual(tabB.pendingWrites().map((w) => w.chapter), [13], "still to be sent");
  tabA.reloadOutbox();
  assert.deepEqual(tabA.pendingWrites().map((w) => w.chapter), [13], "taken over, not skipped as answered");
  assert.deepEqual(savedOutbox(storage), [["saga", 13]]);
});

Deno.test("outbox order: the numbers go on across tabs and reloads, so a later page turn dated earlier (a tab whose clock is behind) is the later write", () => {
  const { storage, tabA, tabB } = twoTabs();
  tabA.addPending(write("saga", T3, "web-1", 12));
  tabB.addPending(write("saga", T1, "web-1", 13)); // after it, by a clock two seconds behind
  assert.deepEqual(savedOutbox(storage), [["saga", 13]]);
  tabA.reloadOutbox();
  assert.deepEqual(tabA.pendingWrites().map((w) => w.chapter), [13]);
  // Answered: the outbox is empty, and the next visit numbers on. Its page turn, dated before the
  // answered one's date, is not taken for answered by any tab (also with the last number's key lost:
  // the list of answered writes still holds it).
  tabA.settle(tabA.pendingWrites()[0], storedAs(row("saga", T1, "web-1", 13)));
  assert.equal(storage.getItem(tabA.outboxKey), null);
  storage.removeItem(tabA.seqKey);
  const nextVisit = new SyncStore(USER, defaultCompareRows);
  nextVisit.attachStorage(storage);
  nextVisit.addPending(write("saga", T1, "web-1", 14));
  tabB.reloadOutbox();
  nextVisit.reloadOutbox();
  assert.deepEqual([nextVisit.pendingWrites()[0]?.chapter, tabB.pendingWrites()[0]?.chapter], [14, 14]);
  assert.deepEqual(savedOutbox(storage), [["saga", 14]]);
});

Deno.test("outbox order: a page turn queued before storage is attached comes after what an earlier visit saved, whatever the dates", () => {
  const storage = new MemoryStorage();
  const earlier = new SyncStore(USER, defaultCompareRows);
  earlier.attachStorage(storage);
  earlier.addPending(write("saga", T3, "web-1", 12)); // an earlier visit, its clock ahead then
  const store = new SyncStore(USER, defaultCompareRows);
  store.addPending(write("saga", T1, "web-1", 13)); // this visit, before its session opened
  store.attachStorage(storage);
  assert.deepEqual(store.pendingWrites().map((w) => w.chapter), [13]);
  assert.deepEqual(savedOutbox(storage), [["saga", 13]]);
});

Deno.test("outbox order: writes saved before they were numbered keep their order by date among themselves", () => {
  // The old format's list of answered writes names saga at T2: its saved write at T1 is answered, the one
  // at T3 is not.
  const storage = new MemoryStorage();
  storage.setItem(`readsync.outboxAnswered.${USER}`, JSON.stringify([write("saga", T2, "web-1", 12)]));
  storage.setItem(`readsync.outbox.${USER}`, JSON.stringify([write("saga", T1, "web-1", 11)]));
  assert.deepEqual(savedOutbox(storage), []);
  storage.setItem(`readsync.outbox.${USER}`, JSON.stringify([write("saga", T3, "web-1", 13)]));
  assert.deepEqual(savedOutbox(storage), [["saga", 13]]);
});

Deno.test("outbox order: a last number edited to the top of the range gives no number out of range, so the page turns after it are not ranked before it", () => {
  // The key edited to one below the last number an outbox gives (2^48 - 1): the next write gets that last
  // number, and the ones after it get it again (their dates order them), not 2^48 and on, which are out of
  // range and came before it: each later page turn was left out of the saved outbox.
  const { storage, tabA, tabB } = twoTabs();
  storage.setItem(tabA.seqKey, String(2 ** 48 - 2));
  tabA.addPending(write("saga", T1, "web-1", 12));
  tabA.addPending(write("saga", T2, "web-1", 13));
  assert.deepEqual(savedOutbox(storage), [["saga", 13]], "the later page turn is saved");
  tabB.reloadOutbox();
  assert.deepEqual(tabB.pendingWrites().map((w) => w.chapter), [13]);
  // Another tab's page turn after it, then tab A's answer to 13: 14 is not taken for answered.
  tabB.addPending(write("saga", T3, "web-1", 14));
  assert.deepEqual(savedOutbox(storage), [["saga", 14]]);
  tabA.settle(tabA.pendingWrites()[0], storedAs(row("saga", T2, "web-1", 13)));
  tabA.reloadOutbox();
  tabB.reloadOutbox();
  assert.deepEqual([tabA.pendingWrites()[0]?.chapter, tabB.pendingWrites()[0]?.chapter], [14, 14]);
});

Deno.test("two tabs: a copy of an answered write written back to the saved outbox is not taken up once its name left the list of answered writes (more than 200 answered since)", () => {
  const { storage, tabA, tabB } = twoTabs();
  tabA.addPending(write("saga", T1, "web-1", 12));
  // What a tab that read the saved outbox before the answer writes back (localStorage is no transaction).
  const before = storage.getItem(tabA.outboxKey)!;
  tabA.settle(tabA.pendingWrites()[0], storedAs(row("saga", T1, "web-1", 12)));
  // Of 50 other series (the latest answered write of each is kept for the 200 highest numbered series;
  // beyond them, a copy taken up is sent as a replay, or refused as older than a later write and not sent
  // again: see the test of that bound).
  for (let i = 0; i < 201; i++) {
    const other = write(`other-${i % 50}`, T2, "web-1", 1 + Math.floor(i / 50));
    tabA.addPending(other);
    tabA.settle(other, storedAs(row(`other-${i % 50}`, T2, "web-1", 1 + Math.floor(i / 50))));
  }
  const list = JSON.parse(storage.getItem(tabA.answeredKey) ?? "[]") as { series_id: string }[];
  assert.ok(!list.some((named) => named.series_id === "saga"), "saga's name left the list");
  storage.setItem(tabA.outboxKey, before);
  tabB.reloadOutbox();
  assert.deepEqual(tabB.pendingWrites().map((w) => w.series_id), [], "not taken up to be sent again");
  assert.deepEqual(savedOutbox(storage), [], "nor by a tab opened now");
  // A later page turn of saga is numbered after it, and queued.
  tabB.addPending(write("saga", T3, "web-1", 13));
  assert.deepEqual(savedOutbox(storage), [["saga", 13]]);
});

Deno.test("outbox order: a new write is numbered after the latest write answered of each series, also with the last number's key and the list of answered writes gone, so it is not taken for answered", () => {
  const storage = new MemoryStorage();
  const store = new SyncStore(USER, defaultCompareRows);
  store.attachStorage(storage);
  // All that is left of what was answered: the latest write of each series (kept apart from the list).
  storage.setItem(
    `readsync.outboxAnsweredLatest.${USER}`,
    JSON.stringify([{ ...write("saga", T1, "web-1", 12), seq: 50 }]),
  );
  store.addPending(write("saga", T1, "web-1", 13));
  assert.equal(store.pendingWrites()[0].seq, 51);
  assert.deepEqual(savedOutbox(storage), [["saga", 13]]);
});

Deno.test("the latest answered write of each series is kept for the 200 highest numbered series and those with a write waiting, the rest summed up by their highest number, at or below which a stale copy is not sent again after this device's own version ('self')", () => {
  const { storage, tabA, tabB } = twoTabs();
  const earlier = write("saga", T1, "web-1", 12); // the first number (the wall clock's ms): call it 1
  tabA.addPending(earlier);
  const first = earlier.seq!;
  tabB.reloadOutbox(); // tab B holds it, and hears nothing more (a page kept in the back-forward cache)
  const later = write("saga", T2, "web-1", 13); // number 2
  tabA.addPending(later);
  tabA.settle(later, storedAs(row("saga", T2, "web-1", 13)));
  const atlas = write("atlas", T1, "web-1", 3); // number 3
  tabA.addPending(atlas);
  tabA.settle(atlas, storedAs(row("atlas", T1, "web-1", 3)));
  tabA.addPending(write("atlas", T2, "web-1", 4)); // number 4: it waits
  for (let i = 0; i < 250; i++) { // numbers 5 to 254
    const other = write(`other-${i}`, T2, "web-1", 1);
    tabA.addPending(other);
    tabA.settle(other, storedAs(row(`other-${i}`, T2, "web-1", 1)));
  }
  const latest = JSON.parse(storage.getItem(tabA.latestAnsweredKey) ?? "[]") as {
    series_id: string;
    seq: number;
  }[];
  assert.equal(latest.length, 201, "200, and atlas");
  assert.deepEqual(
    latest.find((named) => named.series_id === "atlas")?.seq,
    first + 2,
    "atlas's is kept: a page turn of it waits",
  );
  assert.ok(!latest.some((named) => named.series_id === "saga"), "saga's is left out");
  assert.equal(
    storage.getItem(`readsync.outboxAnsweredPruned.${USER}`),
    String(first + 53),
    "the highest number left out: other-49's",
  );
  // Tab B sends its stale copy of saga: refused as older than the later write this device stored ('self').
  const copy = tabB.pendingWrites()[0];
  assert.deepEqual([copy.chapter, copy.seq], [12, first]);
  assert.equal(
    tabB.sendAgainAfter(copy, lostTo(row("saga", T2, "web-1", 13))),
    undefined,
    "not sent again after it",
  );
});

Deno.test("storage cleared while tabs are open (localStorage.clear(), the site's data cleared): every tab's waiting write is saved again, however many times, and none is let go", () => {
  const { storage, tabA, tabB } = twoTabs();
  tabA.addPending(write("saga", T1, "web-1", 12));
  tabB.reloadOutbox();
  for (let i = 1; i <= 3; i++) {
    storage.clear();
    // The storage event with no key, or (a clear in this tab, or by the browser: no event) the look a tab
    // takes before it sends (takeOver).
    tabA.reloadOutbox();
    tabB.reloadOutbox();
    assert.deepEqual(
      [tabA, tabB].map((tab) => tab.pendingWrites().map((w) => w.chapter)),
      [[12], [12]],
      `still waiting after clear ${i}`,
    );
    assert.deepEqual(savedOutbox(storage), [["saga", 12]], `saved again after clear ${i}`);
  }
});

Deno.test("storage cleared while tabs are open: a stale copy another tab still holds is neither sent again over this device's later write ('self') nor kept, as the tabs write back the writes they know answered", () => {
  const { storage, tabA, tabB } = twoTabs();
  const earlier = write("saga", T1, "web-1", 12);
  tabA.addPending(earlier);
  tabB.reloadOutbox(); // tab B holds it, and hears nothing more (a page kept in the back-forward cache)
  const later = write("saga", T2, "web-1", 13);
  tabA.addPending(later);
  tabA.settle(later, storedAs(row("saga", T2, "web-1", 13)));
  clearedThenStaleCopyRefused(storage, tabB, tabA); // tab A knows the later write was answered
  tabB.reloadOutbox();
  assert.deepEqual(tabB.pendingWrites(), [], "let go: named answered");
  assert.deepEqual(savedOutbox(storage), [], "nor taken up by a tab opened now");
});

Deno.test("storage cleared while tabs are open: a page turn made after it (no storage event) is numbered after the writes the tabs hold, so a tab writing back its earlier one does not replace it", () => {
  const { storage, tabA, tabB } = twoTabs();
  for (const chapter of [10, 11, 12]) tabA.addPending(write("saga", T1, "web-1", chapter)); // numbers 1 to 3
  tabB.reloadOutbox(); // tab B holds saga's third page turn, numbered by tab A
  storage.clear(); // the reader clears the site's data: no storage event
  tabB.addPending(write("saga", T2, "web-1", 13)); // the next page turn, in tab B
  tabA.reloadOutbox(); // the storage event of tab B's save: tab A writes back what it holds
  tabB.reloadOutbox();
  assert.deepEqual(savedOutbox(storage), [["saga", 13]]);
  assert.deepEqual([tabA, tabB].map((tab) => tab.pendingWrites().map((w) => w.chapter)), [[13], [13]]);
});

Deno.test("storage cleared while tabs are open: a page turn made in a tab opened after it (which finds no number) is not taken for answered when an older tab writes back the writes it knew answered", () => {
  const { storage, tabA } = twoTabs();
  for (const chapter of [10, 11]) { // numbers 1 and 2, answered
    const turn = write("saga", T1, "web-1", chapter);
    tabA.addPending(turn);
    tabA.settle(turn, storedAs(row("saga", T1, "web-1", chapter)));
  }
  storage.clear(); // the reader clears the site's data: no storage event
  // Opened a minute later: storage has no number, no name (and no device id: it gets another one).
  const tabC = new SyncStore(USER, defaultCompareRows, () => Date.now() + 60_000);
  tabC.attachStorage(storage);
  tabC.addPending(write("saga", T2, "web-2", 12)); // the reader's next page turn
  tabA.reloadOutbox(); // the storage event of tab C's save: tab A writes back what it knows answered
  tabC.reloadOutbox(); // the storage events of tab A's write-back
  assert.deepEqual(tabC.pendingWrites().map((w) => w.chapter), [12], "still waiting in the tab that made it");
  assert.deepEqual(tabA.pendingWrites().map((w) => w.chapter), [12], "taken up by the older tab");
  assert.deepEqual(savedOutbox(storage), [["saga", 12]], "still saved");
});

/**
 * Tab B holds a copy of saga at chapter 12 and hears nothing more (a page kept in the back-forward cache),
 * while the other tab (closed later) writes chapter 13 and has it answered.
 */
function staleCopyInTabBOfAnAnsweredWrite() {
  const { storage, tabA: closed, tabB } = twoTabs();
  closed.addPending(write("saga", T1, "web-1", 12));
  tabB.reloadOutbox(); // tab B holds it, and hears nothing more (a page kept in the back-forward cache)
  const later = write("saga", T2, "web-1", 13);
  closed.addPending(later);
  closed.settle(later, storedAs(row("saga", T2, "web-1", 13)));
  return { storage, closed, tabB };
}

/** A tab opened now, on the same storage (the tab that answered the later write closes). */
function tabOpenedNow(storage: MemoryStorage): SyncStore {
  const opened = new SyncStore(USER, defaultCompareRows);
  opened.attachStorage(storage);
  return opened;
}

/**
 * The storage cleared: tab B writes back its stale copy of saga at chapter 12, the other tab (by default one
 * opened just before the clear) what it knows, and tab B sends its copy; refused as older than this device's
 * later write (13), it must not be sent again after it.
 */
function clearedThenStaleCopyRefused(
  storage: MemoryStorage,
  tabB: SyncStore,
  other: SyncStore = tabOpenedNow(storage),
): void {
  storage.clear();
  tabB.reloadOutbox(); // the storage event with no key: tab B writes back what it holds, its stale copy
  other.reloadOutbox(); // and the other tab what it knows
  // Tab B sends its copy (it took the Web Lock before hearing more): refused as older than the later write.
  const copy = tabB.pendingWrites()[0];
  assert.equal(copy.chapter, 12);
  assert.equal(
    tabB.sendAgainAfter(copy, lostTo(row("saga", T2, "web-1", 13))),
    undefined,
    "not sent again after it",
  );
}

Deno.test("storage cleared while tabs are open: a tab opened after a write was answered in another tab, since closed, writes back its name though it heard of nothing since it opened, so a stale copy is not sent again over it ('self')", () => {
  const { storage, tabB } = staleCopyInTabBOfAnAnsweredWrite();
  // Opened now (the tab that answered it closes): it sends nothing and hears no storage event before the clear.
  clearedThenStaleCopyRefused(storage, tabB);
  tabB.reloadOutbox();
  assert.deepEqual(tabB.pendingWrites(), [], "let go");
});

Deno.test("storage cleared while tabs are open: a tab writes back the number summing up the latest answered writes another tab left out (200 highest numbered kept), so a stale copy of such a series is not sent again over this device's later write ('self')", () => {
  const { storage, closed, tabB } = staleCopyInTabBOfAnAnsweredWrite();
  for (let i = 0; i < 250; i++) {
    const other = write(`other-${i}`, T2, "web-1", 1);
    closed.addPending(other);
    closed.settle(other, storedAs(row(`other-${i}`, T2, "web-1", 1)));
  }
  assert.notEqual(storage.getItem(`readsync.outboxAnsweredPruned.${USER}`), null, "saga's left out");
  clearedThenStaleCopyRefused(storage, tabB);
});

Deno.test("storage cleared while tabs are open: a page turn dated right after it is dated after the key this device's version was stored under when another tab got it answered, as the tab writes back what it knows before it dates", () => {
  const { storage, tabA, tabB } = twoTabs();
  const nowMs = Date.parse(T1);
  const storedAt = new Date(nowMs + 2_000).toISOString(); // ahead, within the server's 5 s tolerance
  const earlier = write("saga", storedAt, "web-1", 12);
  tabB.addPending(earlier);
  tabB.settle(earlier, storedAs(row("saga", storedAt, "web-1", 12)));
  tabA.takeAnswered(); // tab A hears the answer (the lists), not yet its row (Realtime)
  storage.clear(); // the reader clears the site's data: no storage event
  assert.equal(
    datedAt(tabA, "saga", nowMs, "web-1"),
    new Date(nowMs + 2_001).toISOString(),
    "dated after the stored key, as without the clear (not refused as older than it: 'self')",
  );
});

Deno.test("storage cleared while tabs are open: a tab opened after it (a new device id) dates its page turn after the write a page open through the clear (the old id) got answered a moment before, not at its key, where the ids break the tie for the older write", () => {
  const storage = new MemoryStorage();
  const page = new SyncStore(USER, defaultCompareRows); // open through the clear: it writes as web-f0
  page.attachStorage(storage);
  const nowMs = Date.parse(T1);
  const phone = row("saga", new Date(nowMs + 2_000).toISOString(), "phone", 3); // 2 s ahead: within 5 s
  page.applyServerRow(phone);
  storage.clear(); // the reader clears the site's data: deviceId.ts makes a new id for a tab opened now
  const opened = new SyncStore(USER, defaultCompareRows); // as web-0a
  opened.attachStorage(storage);
  opened.applyServerRow(phone);
  // A page turn in the page open through the clear, answered: stored under its key, after the phone's.
  const fromPage = write("saga", datedAt(page, "saga", nowMs, "web-f0"), "web-f0", 4);
  page.addPending(fromPage);
  const storedFromPage = row("saga", fromPage.updated_at, "web-f0", 4);
  page.settle(fromPage, storedAs(storedFromPage));
  opened.takeAnswered(); // the tab opened after the clear hears the lists, not yet the row (Realtime)
  const turn = write("saga", datedAt(opened, "saga", nowMs + 100, "web-0a"), "web-0a", 5);
  assert.equal(
    turn.updated_at,
    new Date(nowMs + 2_002).toISOString(),
    "dated after the page's answered write",
  );
  assert.deepEqual(
    new ConflictResolver().classify(turn, storedFromPage),
    { won: true, conflict: null },
    "the later page turn wins over the page's earlier one",
  );
});

/**
 * A page open through a clear of the site's data (writing as web-f0) and a tab opened after it (web-0a): the page's
 * write of "saga" dated an hour ahead (a clock far ahead, see "The server's clock") is on its way when the tab's
 * page turn is dated, which follows it no further than the server's 5 s tolerance; the server stores that write
 * at its now(), 1 s after the page turn's date.
 */
function farAheadThroughClear() {
  const storage = new MemoryStorage();
  const page = new SyncStore(USER, defaultCompareRows); // open through the clear: it writes as web-f0
  page.attachStorage(storage);
  storage.clear(); // the reader clears the site's data: deviceId.ts makes a new id for a tab opened now
  const opened = new SyncStore(USER, defaultCompareRows); // as web-0a
  opened.attachStorage(storage);
  const nowMs = Date.parse(T1);
  const fromPage = write("saga", nowMs + 3_600_000, "web-f0", 4);
  page.addPending(fromPage); // (it tells the clear first, and writes back what it holds)
  const turn = write("saga", datedAt(opened, "saga", nowMs, "web-0a"), "web-0a", 5);
  opened.addPending(turn);
  assert.equal(turn.updated_at, T1, "not dated after a write beyond the tolerance");
  const storedFromPage = row("saga", new Date(nowMs + 1_000).toISOString(), "web-f0", 4); // at the server's now()
  return { storage, page, opened, nowMs, fromPage, turn, storedFromPage };
}

Deno.test("storage cleared while tabs are open: a page turn of a tab opened after it (a new device id) goes after the key the page open through the clear (the old id) got its earlier write stored under, not as dated, where it is refused as older than that write and lost", () => {
  const { page, opened, nowMs, fromPage, turn, storedFromPage } = farAheadThroughClear();
  page.settle(fromPage, storedAs(storedFromPage));
  opened.takeAnswered(); // the tab hears the lists before it sends
  assert.equal(opened.getSnapshot().pendingCount, 1, "the later page turn still waits");
  const sentAt = opened.sendAfterEarlier(turn);
  assert.equal(sentAt, nowMs + 1_001, "sent after the key the page's earlier write was stored under");
  assert.deepEqual(
    new ConflictResolver().classify({ ...turn, updated_at: new Date(sentAt!).toISOString() }, storedFromPage),
    { won: true, conflict: null },
    "the later page turn wins over the page's earlier write",
  );
  assert.equal(opened.getSnapshot().bySeries.get("saga")?.chapter, 5, "shown as it will be stored");
});

Deno.test("storage cleared while tabs are open: a page turn of a tab opened after it (a new device id), refused as older than the earlier write the page open through the clear (the old id) got stored, is sent again after it, not settled as lost to another device; never after a later write of the page's, nor after another device's", () => {
  const { page, opened, nowMs, fromPage, turn, storedFromPage } = farAheadThroughClear();
  // The page turn was on its way when the page's write was answered there: refused as older than that write.
  page.settle(fromPage, storedAs(storedFromPage));
  assert.equal(opened.sendAgainAfter(turn, lostTo(storedFromPage)), nowMs + 1_001, "sent again after it");
  // Another device's version is a newer page turn of the reader's: never overtaken.
  const phone = row("saga", new Date(nowMs + 1_000).toISOString(), "phone", 6);
  assert.equal(opened.sendAgainAfter(turn, lostTo(phone)), undefined, "not after another device's version");
  // A later page turn of the page's (a higher number), stored: the tab's page turn is the stale one.
  const fromPageLater = write("saga", nowMs + 2_000, "web-f0", 7);
  page.addPending(fromPageLater);
  assert.ok((fromPageLater.seq ?? 0) > (turn.seq ?? 0), "numbered after the tab's page turn");
  const storedLater = row("saga", fromPageLater.updated_at, "web-f0", 7);
  page.settle(fromPageLater, storedAs(storedLater));
  assert.equal(
    opened.sendAgainAfter(turn, lostTo(storedLater)),
    undefined,
    "not after the page's later write",
  );
});

/** The device ids of the writes in the saved outbox and the lists of answered writes. */
function idsInLists(storage: Storage, store: SyncStore): string[] {
  const keys = [store.outboxKey, store.answeredKey, store.latestAnsweredKey];
  return keys.flatMap((key) =>
    (JSON.parse(storage.getItem(key) ?? "[]") as PendingWrite[]).map((w) => w.device_id)
  );
}

Deno.test("storage cleared while tabs are open: a page turn of a tab opened after it (a new device id), refused as older than a write of the page open through the clear (the old id) that no list names (its answer not written yet, the page turn replaced it in the saved outbox), is sent again after it, and settled as this browser's, not as lost to another device", () => {
  const { storage, opened, nowMs, turn, storedFromPage } = farAheadThroughClear();
  // The page's write is on its way, its answer not written: no list names it, nor its id.
  assert.deepEqual(idsInLists(storage, opened), ["web-0a"], "the page turn alone in the lists");
  assert.equal(opened.sendAgainAfter(turn, lostTo(storedFromPage)), nowMs + 1_001, "sent again after it");
  const phone = row("saga", new Date(nowMs + 1_000).toISOString(), "phone", 6);
  assert.equal(opened.sendAgainAfter(turn, lostTo(phone)), undefined, "not after another device's version");
  // Settled (its tries spent): the stored version is this browser's, no other device won.
  opened.settle(turn, lostTo(storedFromPage));
  assert.equal(opened.getSnapshot().notices.size, 0, "not lost to another device");
});

Deno.test("storage cleared while tabs are open: the page open through it writes back its device id with its waiting write, so a tab opened after it tells that page's stored write as this browser's once the page turn replaced it in the saved outbox", () => {
  const storage = new MemoryStorage();
  const page = new SyncStore(USER, defaultCompareRows); // writes as web-f0
  page.attachStorage(storage);
  const nowMs = Date.parse(T1);
  const fromPage = write("saga", nowMs + 3_600_000, "web-f0", 4); // an hour ahead: stored at the server's now()
  page.addPending(fromPage); // and sent: on its way through what follows
  storage.clear(); // the reader clears the site's data (no tab hears it)
  const opened = new SyncStore(USER, defaultCompareRows); // as web-0a
  opened.attachStorage(storage); // its mark: the page hears it (syncSession's storage listener) and looks
  page.checkCleared();
  const turn = write("saga", datedAt(opened, "saga", nowMs, "web-0a"), "web-0a", 5);
  opened.addPending(turn);
  assert.deepEqual(idsInLists(storage, opened), ["web-0a"], "the page turn replaced the page's write");
  const storedFromPage = row("saga", new Date(nowMs + 1_000).toISOString(), "web-f0", 4);
  assert.equal(opened.sendAgainAfter(turn, lostTo(storedFromPage)), nowMs + 1_001, "sent again after it");
  opened.settle(turn, lostTo(storedFromPage));
  assert.equal(opened.getSnapshot().notices.size, 0, "not lost to another device");
});

Deno.test("storage cleared while tabs are open: a notice of another device's win goes once a later save of the browser's other device id (the page open through the clear) is what the server stores", () => {
  const { opened, nowMs, turn } = farAheadThroughClear();
  opened.settle(turn, lostTo(row("saga", new Date(nowMs + 500).toISOString(), "phone", 6)));
  assert.equal(opened.getSnapshot().notices.size, 1, "lost to the phone's version");
  opened.applyServerRow(row("saga", new Date(nowMs + 2_000).toISOString(), "web-f0", 7)); // by Realtime
  assert.equal(opened.getSnapshot().notices.size, 0, "taken away by this browser's later save");
});

Deno.test("storage cleared while tabs are open: the page open through it and the tab opened after it name each other's device id as this browser's (who saved the position shown, the lost-write notice's winner), another device's as another device's; the server's snapshot names none", () => {
  const { page, opened } = farAheadThroughClear();
  page.reloadOutbox(); // the page hears the tab's page turn (a storage event)
  const inTab = opened.getSnapshot().browserDevices;
  assert.equal(
    savedBy("web-f0", "web-0a", inTab),
    "this browser",
    "the page's id, in the tab opened after the clear",
  );
  assert.equal(
    savedBy("web-0a", "web-f0", page.getSnapshot().browserDevices),
    "this browser",
    "the tab's, in the page",
  );
  assert.equal(savedBy("web-0a", "web-0a", inTab), "this device");
  assert.equal(savedBy("phone", "web-0a", inTab), "another device");
  assert.equal(savedBy("web-f0", null, inTab), "another device", "not before the tab has read its own id");
  assert.equal(
    opened.getServerSnapshot().browserDevices.size,
    0,
    "none in the server's snapshot (hydration)",
  );
});

Deno.test("two tabs: the saved lists (the outbox, the answered writes) are parsed once per value, not at every read of a reload, and another tab's change is still taken", () => {
  const { storage, tabA, tabB } = twoTabs();
  for (const [series, chapter] of [["saga", 12], ["atlas", 3], ["codex", 7]] as const) {
    tabA.addPending(write(series, T1, "web-1", chapter));
  }
  for (const chapter of [7, 8]) { // codex answered twice: the list of the last answered and the latest differ
    const answered = tabA.pendingWrites().find((w) => w.series_id === "codex")!;
    tabA.settle(answered, storedAs(row("codex", chapter === 7 ? T1 : T2, "web-1", chapter)));
    if (chapter === 7) tabA.addPending(write("codex", T2, "web-1", 8));
  }
  const lists = () =>
    [tabB.outboxKey, tabB.answeredKey, tabB.latestAnsweredKey].map((key) => storage.getItem(key)!);
  const parse = JSON.parse;
  const parsed = new Map<string, number>();
  JSON.parse = (text: string, reviver?: (this: unknown, key: string, value: unknown) => unknown) => {
    parsed.set(text, (parsed.get(text) ?? 0) + 1);
    return parse(text, reviver);
  };
  try {
    tabB.reloadOutbox(); // the storage event of tab A's last change
    assert.deepEqual(lists().map((raw) => parsed.get(raw) ?? 0), [1, 1, 1], "each list parsed once");
    assert.deepEqual(tabB.pendingWrites().map((w) => w.chapter).sort((x, y) => x - y), [3, 12]);
    // Tab A changes the outbox and the lists again: tab B reads the new values.
    const saga = tabA.pendingWrites().find((w) => w.series_id === "saga")!;
    tabA.settle(saga, storedAs(row("saga", T1, "web-1", 12)));
    tabA.addPending(write("atlas", T2, "web-1", 4));
    parsed.clear();
    tabB.reloadOutbox();
    assert.deepEqual(tabB.pendingWrites().map((w) => [w.series_id, w.chapter]), [["atlas", 4]], "taken");
    assert.deepEqual(lists().map((raw) => parsed.get(raw) ?? 0), [1, 1, 1], "each new value parsed once");
  } finally {
    JSON.parse = parse;
  }
});

/** localStorage with a quota (in characters of keys and values), full as a browser's is: setItem throws. */
class QuotaStorage extends MemoryStorage {
  constructor(readonly quota: number) {
    super();
  }
  override setItem(key: string, value: string) {
    let used = key.length + value.length;
    for (let i = 0; i < this.length; i++) {
      const other = this.key(i)!;
      if (other !== key) used += other.length + (this.getItem(other) ?? "").length;
    }
    if (used > this.quota) throw new DOMException("quota", "QuotaExceededError");
    super.setItem(key, value);
  }
}

Deno.test("storage too full to keep the clear mark when a tab opens: the tab tries again at its next write, and then tells a clear, so its waiting write is not let go at the second", () => {
  const storage = new QuotaStorage(20_000);
  storage.setItem("another-app", "x".repeat(20_000 - 20)); // the site's other data fills it
  const tab = new SyncStore(USER, defaultCompareRows);
  tab.attachStorage(storage); // no room for the mark
  storage.removeItem("another-app"); // room again
  tab.addPending(write("saga", T1, "web-1", 12));
  for (let i = 1; i <= 2; i++) {
    storage.clear(); // the reader clears the site's data
    tab.reloadOutbox(); // the look before a send
    assert.deepEqual(tab.pendingWrites().map((w) => w.chapter), [12], `still waiting after clear ${i}`);
    assert.deepEqual(savedOutbox(storage), [["saga", 12]], `saved again after clear ${i}`);
  }
});

Deno.test("storage too full to keep the clear mark when a tab opens: once there is room, the tab tells a clear at its next look too (dating a page turn, the schedule's, a storage event), not only at its next write", () => {
  const storage = new QuotaStorage(20_000);
  storage.setItem("another-app", "x".repeat(20_000 - 20)); // the site's other data fills it
  const tabA = new SyncStore(USER, defaultCompareRows);
  tabA.attachStorage(storage); // no room for the mark
  storage.removeItem("another-app"); // room again
  const tabB = new SyncStore(USER, defaultCompareRows);
  tabB.attachStorage(storage);
  const nowMs = Date.parse(T1);
  const storedAt = new Date(nowMs + 2_000).toISOString(); // ahead, within the server's 5 s tolerance
  const earlier = write("saga", storedAt, "web-1", 12);
  tabB.addPending(earlier);
  tabB.settle(earlier, storedAs(row("saga", storedAt, "web-1", 12)));
  tabA.takeAnswered(); // tab A hears the answer (the lists)
  storage.clear(); // the reader clears the site's data: no storage event
  assert.equal(
    datedAt(tabA, "saga", nowMs, "web-1"),
    new Date(nowMs + 2_001).toISOString(),
    "dated after the stored key, as in a tab that kept its mark (not refused as older than it: 'self')",
  );
});

Deno.test("after a clear, a view built by a change with no look of its own (the dating of the writes set: a session closing, or opening over the same store) names a version under an id the tab knew from another tab's saved write only this browser's: the tab writes back what it holds, that id among it, before it builds the view", async () => {
  const storage = new MemoryStorage();
  // Tab A changes the list of this browser's ids under a Web Lock the test grants.
  const granted: (() => Promise<void>)[] = [];
  const tabALock: DeviceIdLocks = {
    request: (_name, _options, run) => new Promise((resolve) => granted.push(() => run().then(resolve))),
  };
  const tabA = new SyncStore(USER, defaultCompareRows);
  tabA.attachStorage(storage, tabALock);
  // Tab B (the page open through an earlier clear of the site's data, id web-old) queues a page turn: its change of
  // the list of this browser's ids waits for the list's Web Lock (held), so tab A takes the write up before the
  // list names web-old.
  const listLock: DeviceIdLocks = { request: () => new Promise(() => {}) };
  const tabB = new SyncStore(USER, defaultCompareRows);
  tabB.attachStorage(storage, listLock);
  tabB.addPending(write("saga", T2, "web-old", 4));
  tabA.reloadOutbox(); // (its storage event)
  tabA.applyServerRow(row("epic", T1, "web-old", 2));
  assert.equal(readDeviceIds(storage).includes("web-old"), false, "the list does not name web-old yet");
  const named = () => savedBy("web-old", "web-new", tabA.getSnapshot().browserDevices);
  assert.equal(named(), "this browser", "named this browser's (the saved outbox)");
  // The site's data is cleared; tab A's view is built again by the dating of its writes set, which has no look of
  // its own (a Realtime row, a message, a notice dismissed and the clock's answer have: sync-session.test.ts, '...
  // that reaches a tab first after the site's storage was cleared ...').
  storage.clear();
  const version = tabA.getSnapshot().version;
  tabA.datesSentBy(null);
  assert.ok(tabA.getSnapshot().version > version, "(the view built again)");
  assert.equal(named(), "this browser", "still this browser's (on the code before: another device's)");
  const saved = JSON.parse(storage.getItem(tabA.outboxKey) ?? "[]") as PendingWrite[];
  assert.deepEqual(
    saved.map((w) => [w.series_id, w.device_id]),
    [["saga", "web-old"]],
    "what it holds written back first",
  );
  assert.equal(readDeviceIds(storage).includes("web-old"), false, "(the list's change waits for its lock)");
  // Tab A's change of the list is granted: written, and the view names the same ids (nothing built again for it).
  assert.equal(granted.length, 1);
  await granted[0]();
  assert.ok(readDeviceIds(storage).includes("web-old"), "written back");
  const built = tabA.getSnapshot().version;
  tabA.deviceIdsChanged();
  assert.equal(tabA.getSnapshot().version, built, "the same ids: the same view");
});
