// This browser's device ids (examples/web/lib/client/deviceId.ts, readsync.deviceIds): the list the tabs
// change at the same instant (under a Web Lock, read again inside it), and its bound (never the ids a page
// still writes with).

import assert from "node:assert/strict";
import { defaultCompareRows } from "@shared/realtime/progressContract.ts";
import type { Progress } from "@shared/progress/types.ts";
import {
  DEVICE_IDS_KEY,
  DEVICE_IDS_LOCK,
  getDeviceId,
  readDeviceIds,
  rememberDeviceIds,
} from "../../examples/web/lib/client/deviceId.ts";
import { SyncStore } from "../../examples/web/lib/client/syncStore.ts";
import { memoryStorage, pendingWrite as write } from "./support.ts";

const USER = "11111111-1111-4111-8111-111111111111";
const T1 = "2026-11-25T10:00:00.000Z";

/** navigator.locks as a browser grants them: one holder of a name at a time, the others in the order they asked. */
function browserLocks() {
  const tails = new Map<string, Promise<unknown>>();
  return {
    request(name: string, _options: { signal?: AbortSignal }, run: () => Promise<void>): Promise<unknown> {
      const granted = (tails.get(name) ?? Promise.resolve()).then(run);
      tails.set(name, granted.catch(() => {}));
      return granted;
    },
  };
}

/**
 * navigator.locks with the list's lock held by another tab until `release()`: that tab read the list and is
 * about to write it. The waits are granted in order then.
 */
function locksHeldElsewhere() {
  const waiting: (() => void)[] = [];
  let held = true;
  return {
    request(name: string, _options: { signal?: AbortSignal }, run: () => Promise<void>): Promise<unknown> {
      return new Promise((resolve, reject) => {
        const grant = () => void run().then(resolve, reject);
        if (held && name === DEVICE_IDS_LOCK) waiting.push(grant);
        else grant();
      });
    },
    release() {
      held = false;
      for (const grant of waiting.splice(0)) grant();
    },
  };
}

/**
 * A tab's view of the browser's `storage` in which another tab's change of the list (`between`) runs at the same
 * instant as this tab's: after this tab read the list, just before its write of it reaches the storage. Once.
 */
function otherTabBeforeWrite(storage: Storage, between: () => void): Storage {
  let armed = true;
  return new Proxy(storage, {
    get(target, property) {
      if (property === "setItem") {
        return (key: string, value: string) => {
          if (key === DEVICE_IDS_KEY && armed) {
            armed = false;
            between();
          }
          target.setItem(key, value);
        };
      }
      const value = Reflect.get(target, property, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}

/** A server row of `device`'s write, as stored. */
function row(series: string, at: string, device: string, chapter: number): Progress {
  return {
    ...write(series, at, device, chapter),
    user_id: USER,
    synced_at: at,
    change_xid: "1",
    created_at: T1,
  };
}

Deno.test("device ids: two tabs adding theirs at the same instant (one between the other's read of the list and its write) both stay, each added under the Web Lock with the list read again inside it", async () => {
  const storage = memoryStorage();
  const locks = browserLocks();
  let second: Promise<unknown> | undefined;
  const firstTab = otherTabBeforeWrite(storage, () => {
    second = Promise.resolve(rememberDeviceIds(storage, ["web-b"], { locks }));
  });
  await rememberDeviceIds(firstTab, ["web-a"], { locks });
  await second;
  assert.ok(second, "the other tab's change ran before the first one's write");
  assert.deepEqual(readDeviceIds(storage), ["web-a", "web-b"], "both tabs' ids");
});

Deno.test("device ids: a tab's SyncStore changes the list under the Web Lock it is given (attachStorage), read again once it holds it: another tab's id written meanwhile stays", () => {
  const storage = memoryStorage();
  const locks = locksHeldElsewhere();
  const tab = new SyncStore(USER, defaultCompareRows);
  tab.attachStorage(storage, locks);
  const otherTabRead = readDeviceIds(storage); // the other tab, holding the lock, read the list
  tab.addPending(write("saga", T1, "web-a", 1));
  storage.setItem(DEVICE_IDS_KEY, JSON.stringify([...otherTabRead, "web-b"])); // and writes it with its id
  locks.release();
  assert.deepEqual(readDeviceIds(storage), ["web-b", "web-a"], "both tabs' ids");
});

/**
 * The site's data cleared `rounds` times with `page` open through every clear: after each, a tab opened then
 * makes a new id (`web-t<n>`, its getDeviceId) and the page hears of the clear (a storage event) and writes back
 * what it holds, the ids it knows among them. `check` runs after each round.
 */
function throughClears(storage: Storage, page: SyncStore, rounds: number, check: (round: number) => void) {
  for (let round = 1; round <= rounds; round++) {
    storage.clear();
    void rememberDeviceIds(storage, [`web-t${round}`]);
    page.reloadOutbox();
    check(round);
  }
}

Deno.test("device ids: after more clears of the site's data than the list keeps, with a page open through all of them, the list still holds the id that page writes with (and the newest tab's), not the last sixteen added", () => {
  const storage = memoryStorage();
  const page = new SyncStore(USER, defaultCompareRows);
  page.attachStorage(storage);
  const turn = write("saga", T1, "web-f0", 4);
  page.addPending(turn);
  page.settle(turn, {
    won: true,
    conflict: null,
    conflict_with: null,
    progress: row("saga", T1, "web-f0", 4),
  });
  throughClears(storage, page, 20, (round) => {
    const ids = readDeviceIds(storage);
    assert.ok(ids.includes("web-f0"), `the page's id, after clear ${round}: ${ids}`);
    assert.ok(ids.includes(`web-t${round}`), `the id of the tab opened after clear ${round}: ${ids}`);
    assert.ok(ids.length <= 16, `bounded: ${ids.length}`);
  });
  const opened = new SyncStore(USER, defaultCompareRows); // a tab opened after the last clear
  opened.attachStorage(storage);
  assert.ok(opened.getSnapshot().browserDevices.has("web-f0"), "the page's id is this browser's there");
});

Deno.test("device ids: the list never drops the id of a write still queued in the browser's outbox (a tab open through the clears holds it, another sends it), nor the newest tab's, however many clears came since", () => {
  const storage = memoryStorage();
  const closed = new SyncStore(USER, defaultCompareRows); // a page that queued a write offline, then closed
  closed.attachStorage(storage);
  void rememberDeviceIds(storage, ["web-f0"]);
  closed.addPending(write("saga", T1, "web-f0", 4));
  const holder = new SyncStore(USER, defaultCompareRows); // a tab opened then: its outbox holds that write
  holder.attachStorage(storage);
  throughClears(storage, holder, 20, (round) => {
    const ids = readDeviceIds(storage);
    assert.ok(ids.includes("web-f0"), `the queued write's id, after clear ${round}: ${ids}`);
    assert.ok(ids.includes(`web-t${round}`), `the id of the tab opened after clear ${round}: ${ids}`);
  });
});

Deno.test("device ids: the id getDeviceId gave this page stays in the list through more clears than it keeps, written back each time", () => {
  const storage = memoryStorage();
  const id = getDeviceId(storage, null);
  const known = [id];
  for (let round = 1; round <= 20; round++) {
    storage.clear();
    void rememberDeviceIds(storage, [`web-t${round}`]);
    known.push(`web-t${round}`);
    void rememberDeviceIds(storage, known, { writtenBack: true }); // the page writes back the ids it knows
    const ids = readDeviceIds(storage);
    assert.ok(ids.includes(id), `this page's id, after clear ${round}: ${ids}`);
    assert.ok(ids.includes(`web-t${round}`), `the newest tab's id, after clear ${round}: ${ids}`);
  }
});

Deno.test("device ids: with two pages open through more clears than the list keeps, each having written, the list keeps both pages' ids (one page's write-back never cuts the other's) and the newest tab's", () => {
  const storage = memoryStorage();
  const pages = [["web-pa", "saga"], ["web-pb", "epic"]].map(([device, series]) => {
    const page = new SyncStore(USER, defaultCompareRows);
    page.attachStorage(storage);
    const turn = write(series, T1, device, 4);
    page.addPending(turn);
    page.settle(turn, {
      won: true,
      conflict: null,
      conflict_with: null,
      progress: row(series, T1, device, 4),
    });
    return page;
  });
  for (let round = 1; round <= 20; round++) {
    storage.clear();
    void rememberDeviceIds(storage, [`web-t${round}`]); // a tab opened then
    for (const page of pages) page.reloadOutbox(); // each page hears of the clear and writes back what it holds
    const ids = readDeviceIds(storage);
    assert.ok(ids.includes("web-pa"), `the first page's id, after clear ${round}: ${ids}`);
    assert.ok(ids.includes("web-pb"), `the second page's id, after clear ${round}: ${ids}`);
    assert.ok(ids.includes(`web-t${round}`), `the id of the tab opened after clear ${round}: ${ids}`);
    assert.ok(ids.length <= 18, `bounded (sixteen, and the two pages' ids beyond): ${ids.length}`);
  }
});
