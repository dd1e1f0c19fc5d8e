// One user's sync in a tab (examples/web/lib/client/syncSession.ts), as the web app's SyncProvider
// opens it: a user change in the same page (signed out, then in as another reader) closes the old
// user's session (timers, Realtime subscription, a wait for the outbox's Web Lock, listeners) and
// opens one over a new store for the new user, so nothing of the first user is shown to the second
// or sent with their token, and the first user's unsent writes stay saved under their own key. The
// API, the browser's events, storage and lock are the test's own.

import assert from "node:assert/strict";
import { defaultCompareRows } from "@shared/realtime/progressContract.ts";
import type { Progress, WriteResult } from "@shared/progress/types.ts";
import {
  createProgressApi,
  NetworkError,
  ServiceUnavailableError,
  ValidationError,
} from "@shared/progress/api.ts";
import { FunctionsFetchError, FunctionsHttpError, type SupabaseClient } from "@supabase/supabase-js";
import type { ServerClock } from "@shared/progress/serverClock.ts";
import { SyncStore } from "../../examples/web/lib/client/syncStore.ts";
import {
  OUTBOX_REQUEST_TIMEOUT_MAX_MS,
  OUTBOX_REQUEST_TIMEOUT_MS,
  outboxLockName,
  requestBoundKey,
  requestBoundMs,
  requestSteps,
  requestStepsWithin,
  saveBeforeSession,
  storeForUser,
  type SyncApi,
  type SyncEnvironment,
  SyncSession,
  visitClock,
} from "../../examples/web/lib/client/syncSession.ts";
import type { PendingWrite } from "../../examples/web/lib/client/syncStore.ts";
import { memoryStorage, virtualTimers } from "./support.ts";
import { SESSION_SIGNAL_KEY } from "../../examples/web/lib/client/sessionSignal.ts";
import { STALE_RUN_MS } from "../../examples/web/lib/client/outboxSchedule.ts";
import { type ChangesPage, RealtimeService } from "@shared/realtime/realtimeService.ts";
import { fakeClient } from "../shared/realtime/fakeRealtimeClient.ts";
import { watchTimers } from "../shared/realtime/watchTimers.ts";
import { waitFor } from "../integration/realtime_support.ts";
import { readDeviceIds, rememberDeviceIds } from "../../examples/web/lib/client/deviceId.ts";
import { savedBy } from "../../examples/web/components/format.ts";

const ALICE = "11111111-1111-4111-8111-111111111111";
const BOB = "22222222-2222-4222-8222-222222222222";
const DEVICE = "web-test";
const FAR = Math.floor(Date.now() / 1000) + 3_600; // tokens that need no refresh

/**
 * The localStorage of one browser as its tabs see it: each tab's window hears a `storage` event
 * (as a task of its own) when another tab changes a key, never for its own changes, and not when a key
 * is set to the value it holds or a key it does not hold is removed (as the HTML spec says); nor while its
 * page is kept in the back/forward cache (`keep`, until `restore`).
 */
function sharedStorage() {
  const items = new Map<string, string>();
  const tabs: { window: EventTarget; view: Storage }[] = [];
  const kept = new Set<EventTarget>();
  const changed = (from: Storage, key: string, newValue: string | null) => {
    for (const tab of tabs) {
      if (tab.view === from) continue;
      setTimeout(() => {
        if (!kept.has(tab.window)) {
          tab.window.dispatchEvent(Object.assign(new Event("storage"), { key, newValue }));
        }
      }, 0);
    }
  };
  return {
    items,
    /** The reader leaves the page of `window`, which the browser keeps in its back/forward cache. */
    keep(window: EventTarget) {
      kept.add(window);
    },
    /** The reader goes back to it: restored from the cache (`pageshow`, persisted). */
    restore(window: EventTarget) {
      kept.delete(window);
      window.dispatchEvent(Object.assign(new Event("pageshow"), { persisted: true }));
    },
    /**
     * The browser freezes the page of `tab` (Page Lifecycle: `freeze` at its document; a hidden tab, to save
     * power): as a kept page, it hears nothing more and runs no timer.
     */
    freeze(tab: { window: EventTarget; document: EventTarget }) {
      tab.document.dispatchEvent(new Event("freeze"));
      kept.add(tab.window);
    },
    /** The reader goes back to it: the browser resumes it (`resume` at its document). */
    resume(tab: { window: EventTarget; document: EventTarget }) {
      kept.delete(tab.window);
      tab.document.dispatchEvent(new Event("resume"));
    },
    viewFor(window: EventTarget): Storage {
      const view: Storage = {
        get length() {
          return items.size;
        },
        key: (i: number) => [...items.keys()][i] ?? null,
        getItem: (key: string) => items.get(key) ?? null,
        setItem: (key: string, value: string) => {
          if (items.get(key) === String(value)) return;
          items.set(key, String(value));
          changed(view, key, String(value));
        },
        removeItem: (key: string) => {
          if (!items.delete(key)) return;
          changed(view, key, null);
        },
        clear: () => items.clear(),
      };
      tabs.push({ window, view });
      return view;
    },
  };
}

/** An EventTarget that counts the listeners added to it and not removed. */
function countingTarget() {
  const target = new EventTarget();
  const listening = new Map<string, number>();
  return {
    addEventListener(type: string, listener: EventListenerOrEventListenerObject | null) {
      listening.set(type, (listening.get(type) ?? 0) + 1);
      target.addEventListener(type, listener);
    },
    removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null) {
      listening.set(type, (listening.get(type) ?? 0) - 1);
      target.removeEventListener(type, listener);
    },
    dispatchEvent: (event: Event) => target.dispatchEvent(event),
    get listeners() {
      return [...listening.values()].reduce((a, b) => a + b, 0);
    },
  };
}

/** navigator.locks as the browser grants them: held by another tab until it lets go; waits can be aborted. */
function heldLocks() {
  const waiting: { name: string; grant: () => void }[] = [];
  let heldElsewhere = new Set<string>();
  return {
    request(name: string, options: { signal?: AbortSignal }, run: () => Promise<void>): Promise<unknown> {
      return new Promise((resolve, reject) => {
        const grant = () => void run().then(resolve, reject);
        if (!heldElsewhere.has(name)) return grant();
        const entry = { name, grant };
        waiting.push(entry);
        options.signal?.addEventListener("abort", () => {
          waiting.splice(waiting.indexOf(entry), 1);
          reject(new DOMException("aborted", "AbortError"));
        });
      });
    },
    holdElsewhere(name: string) {
      heldElsewhere.add(name);
    },
    /** The other tab lets go: the waits are granted in order. */
    release() {
      heldElsewhere = new Set();
      for (const entry of waiting.splice(0)) entry.grant();
    },
    waiting: (name: string) => waiting.filter((w) => w.name === name).length,
  };
}

/** The row the server stores for `user`'s write (and answers with), stored when it was made. */
const storedRow = (write: PendingWrite, user: string) => ({
  ...write,
  user_id: user,
  synced_at: write.updated_at,
  change_xid: "1",
  created_at: write.updated_at,
});

/** The API as a tab reaches it: every request goes with the token the session gives at that moment. */
function fakeApi(
  log: { user: string; token: string; writes: PendingWrite[] }[],
  subscriptions: FakeSubscription[],
  refuse?: string,
) {
  return (accessToken: () => Promise<string>, _clock: ServerClock) => {
    let disconnected = false;
    const answer = (write: PendingWrite, user: string): WriteResult => ({
      won: true,
      progress: storedRow(write, user),
    } as unknown as WriteResult);
    const api = {
      async updateProgressBatch(writes: PendingWrite[]) {
        const token = await accessToken();
        const user = token.replace("token-of-", "");
        if (writes.some((write) => write.series_id === refuse)) {
          throw new ValidationError(422, "validation_failed", "page is out of range");
        }
        log.push({ user, token, writes });
        return writes.map((write) => answer(write, user));
      },
      async updateProgress(write: PendingWrite) {
        return (await api.updateProgressBatch([write]))[0];
      },
      subscribeToProgress(userId: string, handler: (change: { kind: string; row: Progress }) => void) {
        const statusListeners = new Set<(status: string) => void>();
        const readListeners = new Set<(outcome: string) => void>();
        const subscription: FakeSubscription = {
          userId,
          handler,
          unsubscribed: false,
          get disconnected() {
            return disconnected;
          },
          reads: 0,
          readFails: false,
          statusListeners,
        };
        subscriptions.push(subscription);
        return {
          status: "connecting",
          service: { setAccessToken: () => Promise.resolve() },
          onStatus: (listener: (status: string) => void) => {
            statusListeners.add(listener);
            return () => statusListeners.delete(listener);
          },
          onRead: (listener: (outcome: string) => void) => {
            readListeners.add(listener);
            return () => readListeners.delete(listener);
          },
          // As RealtimeService's: the read's outcome goes to onRead, then the call resolves with it.
          syncNow: () => {
            subscription.reads++;
            const outcome = subscription.readFails ? "failed" : "done";
            for (const listener of [...readListeners]) listener(outcome);
            return Promise.resolve(outcome);
          },
          unsubscribe: () => {
            subscription.unsubscribed = true;
            return Promise.resolve();
          },
        };
      },
    };
    return { api: api as unknown as SyncApi, disconnect: () => void (disconnected = true) };
  };
}

interface FakeSubscription {
  userId: string;
  handler: (change: { kind: string; row: Progress }) => void;
  unsubscribed: boolean;
  readonly disconnected: boolean;
  reads: number;
  /** The reads of the server's changes (syncNow) fail while set. */
  readFails: boolean;
  statusListeners: Set<(status: string) => void>;
}

/** One browser tab: its window, document, storage, lock, interval timers and API. */
function tab(options: { browser?: ReturnType<typeof sharedStorage>; refuse?: string } = {}) {
  const window = countingTarget();
  const document = Object.assign(countingTarget(), { visibilityState: "visible" });
  const storage = options.browser ? options.browser.viewFor(window) : memoryStorage();
  const locks = heldLocks();
  const clock = virtualTimers();
  const intervals = new Set<unknown>();
  let nextInterval = 1;
  const sent: { user: string; token: string; writes: PendingWrite[] }[] = [];
  const subscriptions: FakeSubscription[] = [];
  const left: string[] = [];
  const env: SyncEnvironment = {
    window,
    document,
    isOnline: () => true,
    storage,
    locks,
    connect: fakeApi(sent, subscriptions, options.refuse),
    leave: (how) => void left.push(how),
    setInterval: () => {
      const handle = nextInterval++;
      intervals.add(handle);
      return handle;
    },
    clearInterval: (handle) => void intervals.delete(handle),
    timers: clock.timers,
  };
  const open = (store: SyncStore, clock?: ServerClock) =>
    new SyncSession(
      store,
      { userId: store.userId, accessToken: `token-of-${store.userId}`, expiresAt: FAR },
      clock ? { ...env, clock } : env,
    );
  return { env, window, document, storage, locks, clock, intervals, sent, subscriptions, left, open };
}

const newStore = (userId: string) => new SyncStore(userId, defaultCompareRows);
const position = (chapter: number) => ({ chapter, page: 1, percentage: 0.5 });
/** Lets every promise callback queued so far run. */
const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 0));

function row(user: string, series: string, chapter: number): Progress {
  const at = new Date().toISOString();
  return {
    user_id: user,
    series_id: series,
    chapter,
    page: 1,
    percentage: 0.5,
    cleared: false,
    device_id: "phone",
    updated_at: at,
    synced_at: at,
    change_xid: "1",
    created_at: at,
  } as Progress;
}

Deno.test("sync session: a user change without a remount closes the old user's session and opens the new user's; nothing of the first reaches the second", async () => {
  const t = tab();
  // Alice's tab: a row from the server, and a write queued while another tab of the browser holds
  // the outbox's lock (so her send waits for it).
  t.locks.holdElsewhere(outboxLockName(ALICE));
  let store = newStore(ALICE);
  const alice = t.open(store);
  t.subscriptions[0].handler({ kind: "upsert", row: row(ALICE, "alices-book", 7) });
  alice.save("alices-draft", position(3), DEVICE);
  await tick();
  assert.equal(t.locks.waiting(outboxLockName(ALICE)), 1, "her send waits for the lock");
  assert.equal(t.intervals.size, 1);
  assert.ok(t.window.listeners > 0 && t.document.listeners > 0);

  // The provider's userId becomes Bob's, in the same page (no remount): as SyncProvider does it.
  store = storeForUser(store, BOB, newStore);
  assert.equal(store.userId, BOB, "a store of Bob's");
  alice.close();
  const bob = t.open(store);

  // Alice's session is over: no timer, no listener, no Realtime channel, no wait for the lock.
  assert.deepEqual(
    {
      intervals: t.intervals.size,
      windowListeners: t.window.listeners,
      documentListeners: t.document.listeners,
      unsubscribed: t.subscriptions[0].unsubscribed,
      lockWaits: t.locks.waiting(outboxLockName(ALICE)),
    },
    { intervals: 1, windowListeners: 5, documentListeners: 3, unsubscribed: true, lockWaits: 0 },
    "only Bob's session's own (one interval, five window and three document listeners)",
  );
  await tick();
  assert.equal(t.subscriptions[0].disconnected, true, "her client's socket is closed");
  assert.equal(t.subscriptions[1].userId, BOB, "Bob's channel is his own");

  // Nothing of Alice's is shown to Bob.
  const snapshot = bob.store.getSnapshot();
  assert.deepEqual([snapshot.library.length, snapshot.pendingCount, snapshot.lastError], [0, 0, null]);
  assert.equal(bob.status, "connecting", "no status of hers");

  // The other tab lets go of Alice's lock; a late Realtime event of hers arrives: nothing is sent as
  // anyone, and her write waits in her own saved outbox for her next sign-in.
  t.locks.release();
  t.subscriptions[0].handler({ kind: "upsert", row: row(ALICE, "alices-other", 1) });
  t.clock.advance(120_000);
  await tick();
  assert.equal(t.sent.length, 0, "nothing sent: not as Alice after she left, not Alice's as Bob");
  const saved = JSON.parse(t.storage.getItem(`readsync.outbox.${ALICE}`) ?? "[]") as PendingWrite[];
  assert.deepEqual(saved.map((w) => w.series_id), ["alices-draft"]);
  assert.equal(t.storage.getItem(`readsync.outbox.${BOB}`), null);
  assert.deepEqual(t.left, [], "closing is not leaving the page");

  // Bob's own save goes with his token, alone.
  bob.save("bobs-book", position(2), DEVICE);
  await tick();
  await tick();
  assert.deepEqual(
    t.sent.map((s) => ({ user: s.user, series: s.writes.map((w) => w.series_id) })),
    [{ user: BOB, series: ["bobs-book"] }],
  );

  // Alice signs in again later: her write is there and goes with her token.
  bob.close();
  const aliceAgain = t.open(newStore(ALICE));
  assert.equal(aliceAgain.store.getSnapshot().pendingCount, 1);
  await tick();
  await tick();
  assert.deepEqual(t.sent.slice(1).map((s) => ({ user: s.user, series: s.writes.map((w) => w.series_id) })), [
    { user: ALICE, series: ["alices-draft"] },
  ]);
  aliceAgain.close();
});

Deno.test("sync session: a request of a closed session that asks for its token after the close gets none: her writes, and a save made on it, stay hers", async () => {
  const t = tab();
  let letGo!: () => void;
  const gate = new Promise<void>((resolve) => letGo = resolve);
  const connect = t.env.connect;
  t.env.connect = (accessToken, clock) =>
    connect(async () => {
      await gate; // the request is under way and asks for the token only now
      return accessToken();
    }, clock);
  const store = newStore(ALICE);
  const alice = t.open(store);
  alice.save("draft", position(1), DEVICE);
  await tick();
  alice.close();
  letGo();
  await tick();
  await tick();
  assert.equal(t.sent.length, 0, "not sent with any token");
  const saved = JSON.parse(t.storage.getItem(`readsync.outbox.${ALICE}`) ?? "[]") as PendingWrite[];
  assert.deepEqual(saved.map((w) => w.series_id), ["draft"], "kept for her next sign-in");
  assert.deepEqual(t.left, [], "and the page is not sent anywhere by a closed session");
  // A page's handler may still hold the closed session for a moment (the provider closed it in an
  // effect, the page has not rendered again): its save is kept for her, not dropped, and not sent.
  alice.save("after", position(2), DEVICE);
  await tick();
  await tick();
  assert.equal(store.getSnapshot().pendingCount, 2, "a closed session's save is kept");
  assert.equal(t.sent.length, 0, "but not sent by it");
  const kept = JSON.parse(t.storage.getItem(`readsync.outbox.${ALICE}`) ?? "[]") as PendingWrite[];
  assert.deepEqual(kept.map((w) => w.series_id).sort(), ["after", "draft"], "both wait for her next sign-in");
  const aliceAgain = t.open(newStore(ALICE));
  await tick();
  await tick();
  assert.deepEqual(t.sent.map((s) => ({ user: s.user, series: s.writes.map((w) => w.series_id).sort() })), [
    { user: ALICE, series: ["after", "draft"] },
  ]);
  aliceAgain.close();
});

Deno.test("sync session: Sync now sends the outbox at once, within the backoff, and reads what the server has", async () => {
  const t = tab();
  const store = newStore(ALICE);
  let down = true;
  const connect = t.env.connect;
  t.env.connect = (accessToken, clock) => {
    const { api, disconnect } = connect(accessToken, clock);
    const batch = api.updateProgressBatch.bind(api);
    api.updateProgressBatch = (writes) =>
      down ? Promise.reject(new NetworkError(0, "network_error", "Failed to fetch")) : batch(writes);
    return { api, disconnect };
  };
  const alice = t.open(store);
  alice.save("book", position(4), DEVICE);
  await tick();
  await tick();
  assert.equal(store.getSnapshot().pendingCount, 1, "the API is unreachable: it waits");
  assert.equal(await alice.syncNow(), "failed");
  assert.match(
    store.getSnapshot().lastError ?? "",
    /Not saved yet \(will retry\)/,
    "asked for, a failure is said",
  );
  assert.equal(t.subscriptions[0].reads, 1, "and the server was asked for changes");

  down = false;
  const before = t.clock.now;
  const outcome = alice.syncNow();
  assert.equal(alice.syncNowState, "syncing");
  assert.equal(await outcome, "done");
  assert.equal(t.clock.now, before, "at once, not after the backoff's step");
  assert.deepEqual(t.sent.map((s) => s.writes.map((w) => w.series_id)), [["book"]]);
  assert.deepEqual([store.getSnapshot().pendingCount, store.getSnapshot().lastError], [0, null]);
  alice.close();
});

Deno.test("sync session: a page turn dated before the clock has a measured offset is sent re-dated by the first answer, asked for first; the outbox keeps its date", async () => {
  const HOUR = 3_600_000;
  const t = tab();
  // The session's clocks are the test's own, moved by hand: what is dated does not depend on how long
  // the test takes.
  const hands = { device: Date.now(), monotonic: 0 };
  t.env.deviceClock = { deviceNow: () => hands.device, monotonicNow: () => hands.monotonic };
  const store = newStore(ALICE);
  // The server is an hour behind this machine (the device runs an hour ahead); a read of one row is
  // what measures it (answered at once: no round trip to blur it), and it can fail.
  let reads = 0;
  let readFails = true;
  const connect = t.env.connect;
  t.env.connect = (accessToken, clock) => {
    const { api, disconnect } = connect(accessToken, clock);
    api.listProgress = () => {
      reads++;
      if (readFails) return Promise.reject(new NetworkError(0, "network_error", "Failed to fetch"));
      const sentMs = clock.deviceNow();
      clock.observe({ serverMs: sentMs - HOUR, sentMs, receivedMs: clock.deviceNow() });
      return Promise.resolve({ items: [], next_cursor: null });
    };
    return { api, disconnect };
  };
  const alice = t.open(store); // a visit without a saved offset, and no answer yet
  alice.save("book", position(4), DEVICE);
  const queued = store.pendingWrites()[0];
  assert.ok(queued.unmeasured, "dated without a measured offset: kept for re-dating");
  assert.equal(await alice.syncNow(), "failed");
  assert.ok(reads > 0, "a read went first");
  assert.deepEqual([t.sent.length, store.getSnapshot().pendingCount], [0, 1], "it failed: nothing sent");

  readFails = false;
  const readsBefore = reads;
  assert.equal(await alice.syncNow(), "done");
  assert.equal(reads, readsBefore + 1);
  const [sent] = t.sent.flatMap((s) => s.writes);
  assert.equal(sent.unmeasured, undefined, "what re-dates a write is not sent");
  const moved = Date.parse(queued.updated_at) - Date.parse(sent.updated_at);
  assert.equal(moved, HOUR, "sent an hour earlier than dated");
  assert.equal(store.getSnapshot().pendingCount, 0);

  // Now measured: the next page turn, a minute later, is sent dated by the corrected clock itself (its
  // place in the outbox stays after the write sent before, whose date there was the late one).
  hands.device += 60_000;
  hands.monotonic += 60_000;
  alice.save("book", position(5), DEVICE);
  assert.equal(await alice.syncNow(), "done");
  const next = t.sent.flatMap((s) => s.writes).at(-1)!;
  assert.deepEqual([next.chapter, next.updated_at], [5, new Date(hands.device - HOUR).toISOString()]);
  assert.equal(store.getSnapshot().bySeries.get("book")!.chapter, 5);
  alice.close();
});

Deno.test("sync session: a page turn saved before the session opened is dated as the session dates: by the saved offset, or re-dated by the session's first answer", async () => {
  const HOUR = 3_600_000;
  // A device an hour ahead of the server. The clocks are the test's own, moved by hand.
  const hands = { device: Date.now(), monotonic: 0 };
  const deviceClock = { deviceNow: () => hands.device, monotonicNow: () => hands.monotonic };
  for (const saved of [-HOUR, undefined]) {
    const t = tab();
    t.env.deviceClock = deviceClock;
    t.env.clockOffset = { load: () => saved, save: () => {} };
    t.env.connect = ((connect) => (accessToken, clock) => {
      const { api, disconnect } = connect(accessToken, clock);
      api.listProgress = () => {
        const sentMs = clock.deviceNow();
        clock.observe({ serverMs: sentMs - HOUR, sentMs, receivedMs: clock.deviceNow() });
        return Promise.resolve({ items: [], next_cursor: null });
      };
      return { api, disconnect };
    })(t.env.connect);
    const store = newStore(ALICE);
    // As SyncProvider: the page is there and the reader turns a page before its effect opened the session.
    const clock = visitClock(t.env);
    saveBeforeSession(store, clock, "book", position(4), DEVICE);
    const turnedAt = hands.device - HOUR; // the server's clock then
    hands.device += 60_000;
    hands.monotonic += 60_000;
    const alice = t.open(store, clock);
    assert.equal(await alice.syncNow(), "done");
    const [sent] = t.sent.flatMap((s) => s.writes);
    assert.deepEqual(
      [sent.chapter, sent.updated_at],
      [4, new Date(turnedAt).toISOString()],
      `${saved ? "by the saved offset" : "re-dated by the first answer"}, not an hour late`,
    );
    alice.close();
  }
});

Deno.test("sync session: a write the server refuses says so in every tab of the user, not only the one that sent it; dismissed in one, gone in all", async () => {
  const browser = sharedStorage();
  const first = tab({ browser, refuse: "bad-book" });
  const second = tab({ browser, refuse: "bad-book" });
  const sending = first.open(newStore(ALICE));
  const other = second.open(newStore(ALICE));
  const error = (session: SyncSession) => session.store.getSnapshot().lastError;

  sending.save("bad-book", position(1), DEVICE);
  for (let i = 0; i < 20 && error(sending) === null; i++) await tick();
  assert.match(error(sending) ?? "", /^Could not save bad-book: page is out of range/);
  for (let i = 0; i < 20 && error(other) === null; i++) await tick();
  assert.equal(error(other), error(sending), "the other tab says it too");
  assert.deepEqual([other.store.getSnapshot().pendingCount, sending.store.getSnapshot().pendingCount], [
    0,
    0,
  ]);

  other.store.dismissError();
  for (let i = 0; i < 20 && error(sending) !== null; i++) await tick();
  assert.equal(error(sending), null, "dismissed in one tab, gone in the other");

  // The same write refused again later is said again (a change of the shared key each time).
  sending.save("bad-book", position(2), DEVICE);
  for (let i = 0; i < 20 && error(other) === null; i++) await tick();
  assert.match(error(other) ?? "", /^Could not save bad-book/);
  sending.close();
  other.close();
});

/**
 * The tab's API answers each batch with `failure(writes)` when it gives one, else saves them;
 * returns how many batches were sent.
 */
/** The server's answer while it is busy: 503 with a Retry-After of 30 s. */
function busyFor30s() {
  return new ServiceUnavailableError(503, "service_unavailable", "busy", { details: { retry_after: 30 } });
}

function failing(t: ReturnType<typeof tab>, failure: (writes: PendingWrite[]) => Error | null) {
  const requests = { count: 0 };
  const connect = t.env.connect;
  t.env.connect = (accessToken, clock) => {
    const { api, disconnect } = connect(accessToken, clock);
    const batch = api.updateProgressBatch.bind(api);
    api.updateProgressBatch = (writes) => {
      requests.count++;
      const error = failure(writes as PendingWrite[]);
      return error ? Promise.reject(error) : batch(writes);
    };
    return { api, disconnect };
  };
  return requests;
}

/**
 * The tab's live subscription is the real RealtimeService's, on the stand-in Realtime client
 * (tests/shared/realtime/fakeRealtimeClient.ts), its reads of the changes answered by hand (`calls`,
 * in the order made). Only the reads the test brings about are made: no polling pace, join grace,
 * safety read or heartbeat watch runs on the machine's clock meanwhile.
 */
function realService(t: ReturnType<typeof tab>) {
  const fake = fakeClient();
  const calls: { resolve: (page: ChangesPage) => void; reject: (error: Error) => void }[] = [];
  const services: RealtimeService[] = [];
  /** The link's log events (poll_failed, catchup_done, ...), in order. */
  const events: string[] = [];
  const connect = t.env.connect;
  t.env.connect = (accessToken, clock) => {
    const { api, disconnect } = connect(accessToken, clock);
    const subscribeToProgress: SyncApi["subscribeToProgress"] = (userId, handler, options) => {
      const service = new RealtimeService(fake.client, {
        ...options,
        changesSince: () => new Promise((resolve, reject) => calls.push({ resolve, reject })),
        pollIntervalMs: 3_600_000,
        livePollIntervalMs: 0,
        joinGraceMs: Infinity,
        heartbeatReplyTimeoutMs: 0,
        log: (line) => void events.push(JSON.parse(line).event),
      });
      services.push(service);
      // (A subscription of the service carries it as `service`, as subscribeToProgress's does.)
      return service.subscribeToProgress(userId, handler) as ReturnType<SyncApi["subscribeToProgress"]>;
    };
    return { api: { ...api, subscribeToProgress }, disconnect };
  };
  return {
    calls,
    events,
    /** The n-th channel the service made (1-based), once its join is pushed. */
    channel: fake.channel,
    /** Waits (a bound that only catches a hang) for the n-th read to be made. */
    read: async (n: number) => {
      await waitFor(`read #${n}`, () => calls.length >= n, { timeoutMs: 30_000, intervalMs: 5 });
      return calls[n - 1];
    },
    waitFor: (what: string, done: () => boolean) => waitFor(what, done, { timeoutMs: 30_000, intervalMs: 5 }),
    close: () => Promise.all(services.map((service) => service.close())),
  };
}

/** Lets queued callbacks and the tabs' storage events run until `done` (at most 50 turns). */
async function until(done: () => boolean): Promise<void> {
  for (let i = 0; i < 50 && !done(); i++) await tick();
}

Deno.test("sync session: 'Not saved yet (will retry)' goes in a tab once another tab of the browser got its writes saved, instead of staying with nothing waiting", async () => {
  const browser = sharedStorage();
  const first = tab({ browser });
  const second = tab({ browser });
  // The first tab cannot reach the API (its network path), the second can.
  failing(first, () => new NetworkError(0, "network_error", "Failed to fetch"));
  const a = first.open(newStore(ALICE));
  const b = second.open(newStore(ALICE));
  const error = (session: SyncSession) => session.store.getSnapshot().lastError;
  const pending = (session: SyncSession) => session.store.getSnapshot().pendingCount;

  a.save("book", position(4), DEVICE);
  await until(() => pending(b) === 1 && !a.sending);
  assert.equal(await a.syncNow(), "failed");
  assert.match(error(a) ?? "", /^Not saved yet \(will retry\)/);

  assert.equal(await b.syncNow(), "done", "the other tab's Sync now saves it");
  assert.deepEqual(second.sent.map((s) => s.writes.map((w) => w.series_id)), [["book"]]);
  await until(() => pending(a) === 0);
  await until(() => error(a) === null);
  assert.deepEqual(
    [pending(a), error(a)],
    [0, null],
    "saved: nothing waits, and the first tab no longer says it will retry",
  );
  a.close();
  b.close();
});

Deno.test("sync session: a refused write's message goes in every tab once a save gets through afterwards (as in the tab that sent it), and its shared key with it", async () => {
  const browser = sharedStorage();
  const first = tab({ browser });
  const second = tab({ browser });
  const refuseChapter99 = (writes: PendingWrite[]) =>
    writes.some((w) => w.chapter === 99)
      ? new ValidationError(422, "validation_failed", "chapter is out of range")
      : null;
  failing(first, refuseChapter99);
  failing(second, refuseChapter99);
  const sending = first.open(newStore(ALICE));
  const other = second.open(newStore(ALICE));
  const error = (session: SyncSession) => session.store.getSnapshot().lastError;
  const refusedKey = `readsync.outboxRefused.${ALICE}`;

  sending.save("book", position(99), DEVICE);
  await until(() => error(other) !== null);
  assert.match(error(other) ?? "", /^Could not save book: chapter is out of range/);
  assert.equal(error(sending), error(other));

  // The reader saves the series again, and this time it is saved.
  sending.save("book", position(5), DEVICE);
  await until(() => first.sent.length === 1 && !sending.sending);
  assert.equal(error(sending), null, "the tab that sent it no longer says it");
  await until(() => error(other) === null);
  assert.equal(error(other), null, "nor does the other tab");
  assert.equal(browser.items.get(refusedKey), undefined, "and nothing of it is left in storage");
  sending.close();
  other.close();
});

Deno.test("sync session: after Sync now failed, 'Not saved yet (will retry)' stays while the retries fail too, and goes once the write is saved", async () => {
  const t = tab();
  let down = true;
  failing(t, () => down ? new NetworkError(0, "network_error", "Failed to fetch") : null);
  const alice = t.open(newStore(ALICE));
  const error = () => alice.store.getSnapshot().lastError;
  alice.save("book", position(4), DEVICE);
  await until(() => !alice.sending);
  assert.equal(await alice.syncNow(), "failed");
  assert.match(error() ?? "", /^Not saved yet \(will retry\)/);

  // The backoff's retries fail the same way (a passing outage): the write still waits, and the page
  // still says so.
  for (let i = 0; i < 3; i++) {
    assert.ok(t.clock.armed > 0, "a retry is armed");
    t.clock.advance(t.clock.nextAt! - t.clock.now);
    await until(() => !alice.sending);
  }
  assert.equal(alice.store.getSnapshot().pendingCount, 1);
  assert.match(error() ?? "", /^Not saved yet \(will retry\)/, "not taken away by a retry that failed too");

  down = false;
  t.clock.advance(t.clock.nextAt! - t.clock.now);
  await until(() => alice.store.getSnapshot().pendingCount === 0);
  assert.equal(error(), null, "saved: the message goes");
  alice.close();
});

Deno.test("sync session: Sync now pressed while the server's Retry-After holds the outbox sends nothing and says the write waits", async () => {
  const t = tab();
  let busy = true;
  const requests = failing(t, () => busy ? busyFor30s() : null);
  const alice = t.open(newStore(ALICE));
  const error = () => alice.store.getSnapshot().lastError;
  alice.save("book", position(4), DEVICE);
  await until(() => !alice.sending);
  assert.equal(error(), null, "a passing outage says nothing by itself");
  assert.equal(requests.count, 1);

  busy = false;
  t.clock.advance(10_000);
  assert.equal(await alice.syncNow(), "failed");
  assert.equal(requests.count, 1, "nothing sent within the Retry-After");
  assert.equal(
    error(),
    "Not saved yet (will retry): the server asked to wait 20 s more",
    "the press is answered: the write waits, and why",
  );

  t.clock.advance(t.clock.nextAt! - t.clock.now);
  await until(() => alice.store.getSnapshot().pendingCount === 0);
  assert.deepEqual([requests.count, error()], [2, null], "saved after the Retry-After: the message goes");
  alice.close();
});

Deno.test("sync session: a Sync now whose read of the server's changes failed, with nothing waiting, says so in the banner until a later read succeeds, and never in place of another message", async () => {
  const t = tab();
  const requests = failing(
    t,
    (writes) =>
      writes.some((w) => w.chapter === 99)
        ? new ValidationError(422, "validation_failed", "chapter is out of range")
        : null,
  );
  const alice = t.open(newStore(ALICE));
  const error = () => alice.store.getSnapshot().lastError;
  const reads = t.subscriptions[0];

  // Nothing waits; only the read fails.
  reads.readFails = true;
  assert.equal(await alice.syncNow(), "failed");
  assert.equal(
    error(),
    "Could not check for changes (will retry)",
    "the failed read is said, not only in the tooltip",
  );

  // Pressed again while it still fails: it stays.
  assert.equal(await alice.syncNow(), "failed");
  assert.equal(error(), "Could not check for changes (will retry)");

  // A later read succeeds: it goes.
  reads.readFails = false;
  assert.equal(await alice.syncNow(), "done");
  assert.equal(error(), null, "a read that succeeded takes it away");

  // Also when the read that succeeds is the tab's own (shown again), not a press.
  reads.readFails = true;
  assert.equal(await alice.syncNow(), "failed");
  assert.equal(error(), "Could not check for changes (will retry)");
  reads.readFails = false;
  const before = reads.reads;
  t.document.dispatchEvent(new Event("visibilitychange"));
  await until(() => reads.reads > before && error() === null);
  assert.equal(error(), null, "the read made when the tab is shown again takes it away");

  // A refused write's message is more important: a failed read never hides it.
  alice.save("book", position(99), DEVICE);
  await until(() => requests.count === 1 && !alice.sending);
  assert.match(error() ?? "", /^Could not save book: chapter is out of range/);
  reads.readFails = true;
  assert.equal(await alice.syncNow(), "failed");
  assert.match(error() ?? "", /^Could not save book: chapter is out of range/, "the refusal stays");
  // And a later successful read does not take the refusal away either.
  reads.readFails = false;
  assert.equal(await alice.syncNow(), "done");
  assert.match(error() ?? "", /^Could not save book: chapter is out of range/);
  alice.close();
});

Deno.test("sync session: 'Not saved yet (will retry)' takes the place of a failed read's message (a write waiting matters more), and a save that is answered takes either away", async () => {
  const t = tab();
  let down = false;
  failing(t, () => down ? new NetworkError(0, "network_error", "Failed to fetch") : null);
  const alice = t.open(newStore(ALICE));
  const error = () => alice.store.getSnapshot().lastError;
  const reads = t.subscriptions[0];

  reads.readFails = true;
  assert.equal(await alice.syncNow(), "failed");
  assert.equal(error(), "Could not check for changes (will retry)");

  down = true;
  alice.save("book", position(4), DEVICE);
  await until(() => !alice.sending);
  assert.equal(await alice.syncNow(), "failed");
  assert.match(error() ?? "", /^Not saved yet \(will retry\)/, "the waiting write is said instead");

  down = false;
  t.clock.advance(t.clock.nextAt! - t.clock.now);
  await until(() => alice.store.getSnapshot().pendingCount === 0);
  assert.equal(error(), null, "saved: the message goes");

  // A failed read's message goes once a write is answered too (a later sync that succeeded).
  assert.equal(await alice.syncNow(), "failed");
  assert.equal(error(), "Could not check for changes (will retry)");
  alice.save("book", position(5), DEVICE);
  await until(() => alice.store.getSnapshot().pendingCount === 0 && !alice.sending);
  assert.equal(error(), null);
  alice.close();
});

Deno.test("sync session, real RealtimeService: a Sync now whose read failed says so, and a read the link makes by itself takes it away once answered (the catch-up after its join, its poll after a drop), not when it fails", async () => {
  const timers = watchTimers(); // the link's own timers (real ones), to end the poll's backoff by hand
  const t = tab();
  const realtime = realService(t);
  const alice = t.open(newStore(ALICE));
  const error = () => alice.store.getSnapshot().lastError;
  const offline = () => new NetworkError(0, "network_error", "Failed to fetch");
  const answered = (cursor: string): ChangesPage => ({ changes: [], next_cursor: cursor, has_more: false });
  /**
   * After a drop that followed failed reads, the link's poll waits the polls' backoff (drawn between one
   * and two poll intervals, one and two hours here; the random draw is the service's): ended now.
   */
  const pollAfterDropNow = () => {
    const waits = timers.pending().filter((ms) => ms >= 3_600_000 && ms <= 7_200_000);
    assert.equal(waits.length, 1, `one poll at the backoff: ${timers.pending()}`);
    timers.fire(waits[0]);
  };
  try {
    // Not joined yet: the press's read fails. The service logs it and resolves; the press says it.
    const press = alice.syncNow();
    (await realtime.read(1)).reject(offline());
    assert.equal(await press, "failed");
    assert.equal(
      error(),
      "Could not check for changes (will retry)",
      "the failed read is said in the banner",
    );

    // The channel joins. The link's catch-up fails: nothing new is said, the message stays.
    (await realtime.channel(1)).state!("SUBSCRIBED");
    (await realtime.read(2)).reject(offline());
    await realtime.waitFor("the catch-up failed", () => realtime.events.includes("catchup_failed"));
    assert.equal(error(), "Could not check for changes (will retry)", "the link's failed catch-up leaves it");
    // (It would read again after the polls' backoff, an hour here.) The channel drops: after failed
    // reads the link polls at the polls' backoff, not at once (ended now), and that poll fails too; it
    // rejoins by itself (1.6-2.6 s after the drop), and its catch-up, answered, takes the message away.
    (await realtime.channel(1)).state!("CHANNEL_ERROR");
    pollAfterDropNow();
    (await realtime.read(3)).reject(offline());
    await realtime.waitFor(
      "the poll failed",
      () => realtime.events.filter((e) => e === "poll_failed").length === 2,
    );
    assert.equal(error(), "Could not check for changes (will retry)", "the link's failed poll leaves it");
    const channel = await realtime.channel(2);
    channel.state!("SUBSCRIBED");
    (await realtime.read(4)).resolve(answered("2"));
    await realtime.waitFor("live", () => alice.status === "live");
    assert.equal(error(), null, "the link's catch-up, answered, takes it away");

    // Live: a press whose read fails says it again.
    const again = alice.syncNow();
    (await realtime.read(5)).reject(offline());
    assert.equal(await again, "failed");
    assert.equal(error(), "Could not check for changes (will retry)");

    // The tab is shown again and its read fails: the message stays (it went before, read or not).
    t.document.dispatchEvent(new Event("visibilitychange"));
    (await realtime.read(6)).reject(offline());
    await realtime.waitFor(
      "the read failed",
      () => realtime.events.filter((e) => e === "poll_failed").length === 4,
    );
    assert.equal(error(), "Could not check for changes (will retry)", "a failed read of the tab's leaves it");

    // The channel drops: the link polls (at the backoff after those failed reads, ended now), and that
    // poll, answered, takes the message away.
    channel.state!("CHANNEL_ERROR");
    pollAfterDropNow();
    (await realtime.read(7)).resolve(answered("3"));
    await realtime.waitFor("polling", () => alice.status === "polling");
    assert.equal(error(), null, "the link's poll while Realtime is down, answered, takes it away");
  } finally {
    alice.close();
    await realtime.close();
    timers.restore();
  }
});

Deno.test("sync session, real RealtimeService: a Sync now whose read the channel's drop cuts off ends as the poll after the drop does, with no 'could not check' when that is answered", async () => {
  const t = tab();
  const realtime = realService(t);
  const alice = t.open(newStore(ALICE));
  const error = () => alice.store.getSnapshot().lastError;
  try {
    (await realtime.channel(1)).state!("SUBSCRIBED");
    (await realtime.read(1)).resolve({ changes: [], next_cursor: "1", has_more: false });
    await realtime.waitFor("live", () => alice.status === "live");
    const press = alice.syncNow();
    await realtime.read(2); // the press's read, in flight
    (await realtime.channel(1)).state!("CHANNEL_ERROR"); // the socket drops: that read is let go
    (await realtime.read(3)).resolve({ changes: [], next_cursor: "2", has_more: false }); // the link's poll
    assert.equal(await press, "done", "checked after all: by the poll that took the cut read's place");
    assert.equal(error(), null);
    assert.equal(alice.status, "polling");
  } finally {
    alice.close();
    await realtime.close();
  }
});

Deno.test("sync session, real RealtimeService: a Sync now whose read the channel's drop cuts off after a failed read ends at once, failed, with 'could not check'; the poll after the drop, at its backoff and answered, takes it away", async () => {
  const timers = watchTimers(); // the link's own timers (real ones), to end the poll's backoff by hand
  const t = tab();
  const realtime = realService(t);
  const alice = t.open(newStore(ALICE));
  const error = () => alice.store.getSnapshot().lastError;
  try {
    (await realtime.channel(1)).state!("SUBSCRIBED");
    (await realtime.read(1)).resolve({ changes: [], next_cursor: "1", has_more: false });
    await realtime.waitFor("live", () => alice.status === "live");
    // The tab is shown again and its read fails (it says nothing: only a press does).
    t.document.dispatchEvent(new Event("visibilitychange"));
    (await realtime.read(2)).reject(new NetworkError(0, "network_error", "Failed to fetch"));
    await realtime.waitFor("the read failed", () => realtime.events.includes("poll_failed"));
    assert.equal(error(), null);
    // Pressed: the press's read is in flight when the socket drops. After that failed read the link's
    // poll waits the polls' backoff (one to two hours here): the press does not wait for it.
    const press = alice.syncNow();
    await realtime.read(3);
    (await realtime.channel(1)).state!("CHANNEL_ERROR");
    // (A hang guard only: on the code before, the press ended with that poll, never made by itself here.)
    await realtime.waitFor("the press ends", () => alice.syncNowState !== "syncing");
    assert.equal(await press, "failed");
    assert.equal(error(), "Could not check for changes (will retry)", "the press says its read was cut off");
    // The link's poll keeps its time (ended now), and its answer takes the message away.
    const waits = timers.pending().filter((ms) => ms >= 3_600_000 && ms <= 7_200_000);
    assert.equal(waits.length, 1, `one poll at the backoff: ${timers.pending()}`);
    assert.equal(realtime.calls.length, 3, "no read at the drop");
    timers.fire(waits[0]);
    (await realtime.read(4)).resolve({ changes: [], next_cursor: "2", has_more: false });
    await realtime.waitFor("polling", () => alice.status === "polling");
    assert.equal(error(), null, "the link's poll after the drop, answered, takes it away");
  } finally {
    alice.close();
    await realtime.close();
    timers.restore();
  }
});

Deno.test("sync session, real RealtimeService: a Sync now whose read failed says nothing of it when a newer read, the link's own, was answered while its send went on", async () => {
  const t = tab();
  // The write's request is answered by hand: the press's send outlasts its read.
  let letGo!: () => void;
  const gate = new Promise<void>((resolve) => letGo = resolve);
  const connect = t.env.connect;
  t.env.connect = (accessToken, clock) => {
    const { api, disconnect } = connect(accessToken, clock);
    const batch = api.updateProgressBatch.bind(api);
    api.updateProgressBatch = async (writes) => {
      await gate;
      return batch(writes);
    };
    return { api, disconnect };
  };
  const realtime = realService(t);
  const alice = t.open(newStore(ALICE));
  const error = () => alice.store.getSnapshot().lastError;
  const offline = () => new NetworkError(0, "network_error", "Failed to fetch");
  try {
    alice.save("book", position(4), DEVICE);
    await until(() => alice.sending);
    const press = alice.syncNow();
    // The press's read fails (not joined yet); its send is still under way.
    (await realtime.read(1)).reject(offline());
    await realtime.waitFor("the press's read failed", () => realtime.events.includes("poll_failed"));
    // Then the channel joins and the link's catch-up, a newer read, is answered: it read what the
    // press's could not.
    const channel = await realtime.channel(1);
    channel.state!("SUBSCRIBED");
    (await realtime.read(2)).resolve({ changes: [], next_cursor: "2", has_more: false });
    await realtime.waitFor("live", () => alice.status === "live");
    // The send is answered: the press ends.
    letGo();
    const outcome = await press;
    assert.deepEqual(
      [alice.store.getSnapshot().pendingCount, error()],
      [0, null],
      "saved, and no 'could not check' for a read a newer answered one has made good",
    );
    assert.equal(outcome, "done", "the press's check was made after all: by the newer read");
  } finally {
    alice.close();
    await realtime.close();
  }
});

/**
 * GET /auth/token as the tab's server answers it (stubbed: a relative URL has no server in Deno):
 * each request is handed to the test, which answers it (a Response) or fails it (no network) when
 * it likes; `requests` resolves the n-th (1-based) once it has been made.
 */
function heldAuthToken() {
  const realFetch = globalThis.fetch;
  const made: PromiseWithResolvers<Response>[] = [];
  const arrived: PromiseWithResolvers<void>[] = [];
  const nth = (n: number) => (arrived[n - 1] ??= Promise.withResolvers<void>());
  globalThis.fetch = ((input: RequestInfo | URL) => {
    if (String(input) !== "/auth/token") throw new Error(`unexpected fetch of ${input}`);
    const answer = Promise.withResolvers<Response>();
    made.push(answer);
    nth(made.length).resolve();
    return answer.promise;
  }) as typeof fetch;
  return {
    /** Resolves once the n-th request has been made, with its answer's resolvers. */
    request: async (n: number) => {
      await nth(n).promise;
      return made[n - 1];
    },
    get count() {
      return made.length;
    },
    restore: () => void (globalThis.fetch = realFetch),
  };
}

/** Another tab of the browser says the session changed (the sign-in page: signed out). */
const signedOutElsewhere = (window: EventTarget) =>
  window.dispatchEvent(
    Object.assign(new Event("storage"), {
      key: SESSION_SIGNAL_KEY,
      newValue: JSON.stringify({ userId: null, at: Date.now() }),
    }),
  );

for (const answer of ["signed out", "still hers"] as const) {
  Deno.test(`sync session: another tab's sign-out whose check of /auth/token fails (no network, then a 503) is asked again with the backoff, and the outbox waits for the answer (${answer})`, async () => {
    const auth = heldAuthToken();
    const t = tab();
    const store = newStore(ALICE);
    const alice = t.open(store);
    try {
      signedOutElsewhere(t.window);
      (await auth.request(1)).reject(new TypeError("Failed to fetch"));
      // A page turn while the answer is not known: queued, not sent with a token that may be a
      // signed-out session's.
      alice.save("book", position(5), DEVICE);
      // The backoff's wait (virtual) runs out: asked again, answered 503.
      await waitFor("the check to be asked again", () => {
        t.clock.advance(1_000);
        return auth.count >= 2;
      });
      (await auth.request(2)).resolve(Response.json({ error: "auth_unavailable" }, { status: 503 }));
      await waitFor("a third check", () => {
        t.clock.advance(1_000);
        return auth.count >= 3;
      });
      assert.equal(t.sent.length, 0, "nothing was sent while the answer was not known");
      assert.equal(store.getSnapshot().pendingCount, 1, "the write waits, kept");
      assert.deepEqual(t.left, [], "no leaving on a failure that says nothing");
      const third = await auth.request(3);
      if (answer === "signed out") {
        third.resolve(Response.json({ error: "signed_out" }, { status: 401 }));
        await waitFor("the tab to leave", () => t.left.length > 0);
        await alice.syncNow(); // (the page is on its way; a send asked for now sends nothing)
        // Once: a second navigation to sign-in would abort the one under way (seen in the browser).
        assert.deepEqual(t.left, ["sign-in"], "left once");
        assert.equal(t.sent.length, 0, "never sent with the signed-out session's token");
        assert.equal(store.getSnapshot().pendingCount, 1, "kept for the next sign-in");
      } else {
        third.resolve(Response.json({ accessToken: `token-of-${ALICE}`, expiresAt: FAR, userId: ALICE }));
        await waitFor("the write to be sent", () => t.sent.length > 0);
        assert.deepEqual(t.sent.map((s) => [s.user, s.writes.map((w) => w.chapter)]), [[ALICE, [5]]]);
        assert.equal(store.getSnapshot().pendingCount, 0);
        assert.deepEqual(t.left, [], "carries on");
      }
      alice.close();
      t.clock.advance(120_000);
      assert.equal(auth.count, 3, "no more checks once answered (or closed)");
    } finally {
      alice.close();
      auth.restore();
    }
  });
}

/** A request the progress function got from the real API client (heldFunctions), answered by the test. */
interface HeldRequest {
  token: string;
  /** GET: a read (listProgress, the clock's measure); POST: writes. */
  method: string;
  writes: PendingWrite[];
  /** Its signal aborted before it was answered: functions-js ended it, and an answer after is unheard. */
  aborted: boolean;
  /** It ended: answered, or aborted. */
  ended: boolean;
  /**
   * Its signal's `abort` event was heard (dispatched at once by the abort: by the bound's timer as the test's clock
   * passes it, before functions-js ends the request a few callbacks later, `ended`).
   */
  abortHeard: boolean;
  /** Answers it: the writes saved (as the function answers a batch). */
  save(): void;
  /** Answers a read: no rows, with the server's time (X-Server-Time), which the clock learns. */
  listed(): void;
  /** Answers it 503 (the API's own error body). */
  unavailable(): void;
  /** Answers it 401 (the API's own error body: the token has expired). */
  unauthorized(): void;
}

/**
 * The progress function as the real API client (shared/progress/api.ts) reaches it through supabase-js's
 * functions.invoke: each request (the token asked for as supabase-js asks it) waits for the test to
 * answer it; one whose signal aborts first ends as functions-js ends it (a FunctionsFetchError). The
 * client's waits between its own attempts (`sleep`) are held too, counted, until the test wakes them.
 */
function heldFunctions() {
  const requests: HeldRequest[] = [];
  const arrived: PromiseWithResolvers<void>[] = [];
  const nth = (n: number) => (arrived[n - 1] ??= Promise.withResolvers<void>());
  const sleeps: PromiseWithResolvers<void>[] = [];
  const client = (accessToken: () => Promise<string>) => ({
    functions: {
      invoke: async (_name: string, options: { method?: string; body?: string; signal?: AbortSignal }) => {
        let token: string;
        try {
          token = await accessToken();
        } catch (error) {
          return { data: null, error: new FunctionsFetchError(error), response: undefined };
        }
        const body = JSON.parse(options.body ?? "null");
        const method = options.method ?? "POST";
        const writes: PendingWrite[] = method === "GET"
          ? []
          : Array.isArray(body?.writes)
          ? body.writes
          : [body];
        const answer = Promise.withResolvers<Response>();
        const user = token.replace("token-of-", "").split("#")[0]; // (a refreshed token: token-of-<user>#<n>)
        const request: HeldRequest = {
          token,
          method,
          writes,
          aborted: false,
          ended: false,
          abortHeard: false,
          save: () =>
            answer.resolve(Response.json({
              results: writes.map((write) => ({
                won: true,
                conflict: null,
                conflict_with: null,
                progress: storedRow(write, user),
              })),
            })),
          listed: () =>
            answer.resolve(
              Response.json({ items: [], next_cursor: null }, {
                headers: { "X-Server-Time": new Date().toISOString() },
              }),
            ),
          unavailable: () =>
            answer.resolve(
              Response.json({ error: { code: "service_unavailable", message: "down" } }, { status: 503 }),
            ),
          unauthorized: () =>
            answer.resolve(
              Response.json({ error: { code: "token_expired", message: "token has expired" } }, {
                status: 401,
              }),
            ),
        };
        requests.push(request);
        nth(requests.length).resolve();
        const aborted = new Promise<"aborted">((resolve) => {
          if (options.signal?.aborted) resolve("aborted");
          request.abortHeard = options.signal?.aborted ?? false;
          options.signal?.addEventListener("abort", () => {
            request.abortHeard = true;
            resolve("aborted");
          }, { once: true });
        });
        const outcome = await Promise.race([answer.promise, aborted]);
        request.ended = true;
        if (outcome === "aborted") {
          request.aborted = true;
          return {
            data: null,
            error: new FunctionsFetchError(new DOMException("aborted", "AbortError")),
            response: undefined,
          };
        }
        if (!outcome.ok) return { data: null, error: new FunctionsHttpError(outcome), response: outcome };
        return { data: await outcome.json(), error: null, response: outcome };
      },
    },
  });
  return {
    requests,
    client,
    /** Resolves with the n-th request (1-based) once it has been made. */
    request: async (n: number) => {
      await nth(n).promise;
      return requests[n - 1];
    },
    sleeps,
    sleep: (_ms: number) => {
      const wait = Promise.withResolvers<void>();
      sleeps.push(wait);
      return wait.promise;
    },
    wakeAll: () => sleeps.forEach((wait) => wait.resolve()),
  };
}

/**
 * The tab's writes go through the real API client to `fn`; its Realtime link stays the stand-in's. `reads`: its
 * read of one row (listProgress: the clock's measure, before writes dated without it) too; else none is made.
 */
function realApi(
  t: ReturnType<typeof tab>,
  fn: ReturnType<typeof heldFunctions>,
  options: { reads?: boolean } = {},
) {
  const connect = t.env.connect;
  t.env.connect = (accessToken, clock) => {
    const { api, disconnect } = connect(accessToken, clock);
    const client = fn.client(accessToken) as unknown as SupabaseClient;
    const real = createProgressApi(client, { clock, sleep: fn.sleep, random: () => 0.5 });
    const writes: SyncApi = {
      subscribeToProgress: api.subscribeToProgress,
      updateProgress: real.updateProgress,
      updateProgressBatch: real.updateProgressBatch,
      ...(options.reads ? { listProgress: real.listProgress } : {}),
    };
    return { api: writes, disconnect };
  };
}

/** Her saved outbox (the series in it) and the tabs' list of answered writes, as localStorage holds them. */
const savedFor = (storage: Storage, user: string) => ({
  outbox: (JSON.parse(storage.getItem(`readsync.outbox.${user}`) ?? "[]") as PendingWrite[]).map((w) =>
    w.series_id
  ),
  answered: storage.getItem(`readsync.outboxAnswered.${user}`),
});

for (
  const [end, answerFirst] of [["signed out", false], ["signed out", true], ["still hers", false], [
    "closed",
    false,
  ]] as const
) {
  const when = end === "closed"
    ? "the session closes (the user changed in this page)"
    : "another tab says the session changed";
  const answer = answerFirst ? "already on its way" : "which comes anyway";
  Deno.test(`sync session, real API client: a send under way when ${when} is aborted, and its answer, ${answer}, is not applied nor saved; the write stays in her saved outbox (${end})`, async () => {
    const auth = heldAuthToken();
    const fn = heldFunctions();
    const t = tab();
    realApi(t, fn);
    const store = newStore(ALICE);
    const alice = t.open(store);
    try {
      alice.save("book", position(5), DEVICE);
      const first = await fn.request(1); // the send under way, with her token
      assert.equal(first.token, `token-of-${ALICE}`);
      // The server stores it and answers: after the word (on the code before, this answer was applied),
      // or just before it, the answer still on its way through the client when the word comes.
      if (answerFirst) first.save();
      if (end === "closed") alice.close();
      else signedOutElsewhere(t.window);
      if (!answerFirst) first.save();
      await waitFor("the request to end", () => first.ended);
      await waitFor("the send to stop", () => !alice.sending);
      assert.deepEqual(
        [store.getSnapshot().pendingCount, store.getSnapshot().bySeries.get("book")?.pending],
        [1, true],
        "nothing of the answer applied: the write still waits",
      );
      assert.deepEqual(
        savedFor(t.storage, ALICE),
        { outbox: ["book"], answered: null },
        "nor saved: it stays in her outbox",
      );
      assert.equal(
        first.aborted,
        !answerFirst,
        "the request under way was aborted (not one already answered)",
      );
      if (end === "still hers") {
        // The check says the session is still hers: the send goes again (a replay if it was stored).
        (await auth.request(1)).resolve(
          Response.json({ accessToken: `token-of-${ALICE}`, expiresAt: FAR, userId: ALICE }),
        );
        const again = await fn.request(2);
        assert.deepEqual([again.token, again.writes.map((w) => w.chapter)], [`token-of-${ALICE}`, [5]]);
        again.save();
        await waitFor("the write to be answered", () => store.getSnapshot().pendingCount === 0);
        assert.deepEqual(t.left, []);
        assert.deepEqual(savedFor(t.storage, ALICE).outbox, []);
        return;
      }
      if (end === "signed out") {
        (await auth.request(1)).resolve(Response.json({ error: "signed_out" }, { status: 401 }));
        await waitFor("the tab to leave", () => t.left.length > 0);
        assert.deepEqual(t.left, ["sign-in"]);
      }
      assert.equal(fn.requests.length, 1, "nothing sent again by the ended session");
      // Her next sign-in sends it.
      alice.close();
      const aliceAgain = t.open(newStore(ALICE));
      const next = await fn.request(2);
      assert.deepEqual([next.token, next.writes.map((w) => w.series_id)], [`token-of-${ALICE}`, ["book"]]);
      next.save();
      await waitFor("her write to be answered", () => aliceAgain.store.getSnapshot().pendingCount === 0);
      aliceAgain.close();
    } finally {
      alice.close();
      fn.wakeAll();
      auth.restore();
    }
  });
}

/**
 * navigator.locks as one browser grants them to its tabs: one holder per name, the others in the order they asked.
 * `counts` and `waiting` are of the outbox's locks (outboxLockName), not of the one deviceId.ts changes the list of
 * the browser's device ids under, which a page turn may take while a send holds the outbox's.
 */
function sharedLocks() {
  const holding = new Set<string>();
  const queue: { name: string; grant: () => void }[] = [];
  const counts = { held: 0, mostHeld: 0, grants: 0 };
  const counted = (name: string) => name.startsWith(outboxLockName(""));
  const release = (name: string) => {
    holding.delete(name);
    if (counted(name)) counts.held--;
    const next = queue.findIndex((entry) => entry.name === name);
    if (next >= 0) queue.splice(next, 1)[0].grant();
  };
  return {
    request(name: string, options: { signal?: AbortSignal }, run: () => Promise<void>): Promise<unknown> {
      return new Promise((resolve, reject) => {
        const grant = () => {
          holding.add(name);
          if (counted(name)) {
            counts.grants++;
            counts.held++;
            counts.mostHeld = Math.max(counts.mostHeld, counts.held);
          }
          run().then((value) => {
            release(name);
            resolve(value);
          }, (error) => {
            release(name);
            reject(error);
          });
        };
        if (!holding.has(name)) return grant();
        const entry = { name, grant };
        queue.push(entry);
        options.signal?.addEventListener("abort", () => {
          const at = queue.indexOf(entry);
          if (at < 0) return;
          queue.splice(at, 1);
          reject(new DOMException("aborted", "AbortError"));
        });
      });
    },
    get waiting() {
      return queue.filter((entry) => counted(entry.name)).length;
    },
    counts,
  };
}

/**
 * Two tabs of ALICE in one browser (shared storage and Web Locks), each sending through the real API client to
 * the same held function: the opening of the real-API two-tab tests. a and b are their sessions.
 */
function twoTabsOverRealApi(openA = (t: ReturnType<typeof tab>) => t.open(newStore(ALICE))) {
  const browser = sharedStorage();
  const locks = sharedLocks();
  const fn = heldFunctions();
  const first = tab({ browser });
  const second = tab({ browser });
  first.env.locks = locks;
  second.env.locks = locks;
  realApi(first, fn);
  realApi(second, fn);
  return { locks, fn, first, second, a: openA(first), b: second.open(newStore(ALICE)) };
}

Deno.test("sync session, real API client, two tabs: a tab backing off after a 503 holds no Web Lock while it waits: another tab's Sync now sends the shared outbox at once, and the first tab's retry takes the lock again to send", async () => {
  const { locks, fn, first, a, b } = twoTabsOverRealApi();
  try {
    a.save("book", position(3), DEVICE);
    (await fn.request(1)).unavailable(); // tab A's send: the API answers 503
    // Tab A backs off: on the code before, inside the API client's retries (its sleep, holding the lock).
    await waitFor(
      "tab A to wait for its retry",
      () => fn.sleeps.length > 0 || (!a.sending && locks.counts.held === 0 && locks.waiting === 0),
    );
    assert.equal(a.store.getSnapshot().pendingCount, 1, "tab A's write waits");
    // The reader presses Sync now in tab B.
    const press = b.syncNow();
    await waitFor(
      "tab B to send, or to wait for the lock",
      () => fn.requests.length >= 2 || locks.waiting > 0,
    );
    assert.equal(locks.waiting, 0, "tab B does not wait for a lock tab A holds while it backs off");
    const fromB = await fn.request(2);
    assert.deepEqual(
      fromB.writes.map((w) => w.chapter),
      [3],
      "tab B sends the shared outbox (tab A's write)",
    );
    fromB.unavailable(); // 503 again
    assert.equal(await press, "failed");
    // Tab A's retry comes due (at the moment the tabs share, tab B's failure counted): it takes the lock
    // again and sends.
    const grants = locks.counts.grants;
    await waitFor("tab A's retry to send", () => {
      // (Its timer may first be re-armed for the later moment tab B's failure set, once it hears of it.)
      if (first.clock.nextAt !== null && locks.counts.held === 0) {
        first.clock.advance(first.clock.nextAt - first.clock.now);
      }
      return fn.requests.length >= 3;
    });
    const retry = await fn.request(3);
    assert.equal(locks.counts.grants, grants + 1, "tab A's retry took the lock again");
    assert.deepEqual(retry.writes.map((w) => w.chapter), [3]);
    retry.save();
    await waitFor(
      "the write to be answered in both tabs",
      () => a.store.getSnapshot().pendingCount === 0 && b.store.getSnapshot().pendingCount === 0,
    );
    assert.equal(fn.requests.length, 3, "one request per try: no retry inside a send");
    assert.equal(locks.counts.mostHeld, 1, "never two tabs sending at once");
  } finally {
    a.close();
    b.close();
    fn.wakeAll();
  }
});

/**
 * Tab B holding a page turn of "book" (chapter 5) it does not send (another tab holds the outbox's lock), behind
 * tab A's earlier write (chapter 4) dated beyond the server's tolerance, so stored (`stored`, not yet heard by
 * tab B) at a date after the page turn's. Tab A's store is over the same storage; its send's answer is given
 * to it by the test (`storeA.settle`).
 */
function pageTurnBehindFarAheadWrite() {
  const browser = sharedStorage();
  const second = tab({ browser });
  second.locks.holdElsewhere(outboxLockName(ALICE));
  const b = second.open(newStore(ALICE));
  const storeA = newStore(ALICE);
  storeA.attachStorage(browser.viewFor(new EventTarget()));
  const now = Date.now();
  const write = (seriesId: string, chapter: number, atMs: number): PendingWrite => ({
    series_id: seriesId,
    ...position(chapter),
    cleared: false,
    device_id: DEVICE,
    updated_at: new Date(atMs).toISOString(),
  });
  const farAhead = write("book", 4, now + 3_600_000);
  storeA.addPending(farAhead);
  storeA.addPending(write("book", 5, now));
  const storedAt = new Date(now + 10_000).toISOString();
  const stored = { ...row(ALICE, "book", 4), device_id: DEVICE, updated_at: storedAt, synced_at: storedAt };
  const shown = () => b.store.getSnapshot().bySeries.get("book");
  return { browser, second, b, storeA, now, write, farAhead, stored, shown };
}

/**
 * pageTurnBehindFarAheadWrite, then tab A's far-ahead write stored: its row heard by tab B (Realtime), then named
 * answered by tab A. Tab B shows its page turn as it will be sent (`asSent`: chapter 5, just after that write's
 * stored key), the opening of the cleared-storage tests.
 */
async function pageTurnShownAsSent() {
  const opened = pageTurnBehindFarAheadWrite();
  const { second, storeA, now, farAhead, stored, shown } = opened;
  second.subscriptions[0].handler({ kind: "upsert", row: stored });
  storeA.settle(farAhead, { won: true, progress: stored } as unknown as WriteResult);
  const asSent = [5, new Date(now + 10_001).toISOString()];
  await until(() => shown()?.chapter === 5);
  assert.deepEqual(
    [shown()?.chapter, shown()?.updatedAt],
    asSent,
    "tab B shows the page turn as it will be sent",
  );
  return { ...opened, asSent };
}

Deno.test("sync session, two tabs: a page turn waiting in a tab is shown as it will be sent once another tab names an earlier write of the series answered, though Realtime brought that write's row first and the saved outbox did not change", async () => {
  const { browser, second, b, storeA, now, farAhead, stored, shown } = pageTurnBehindFarAheadWrite();
  await until(() => shown()?.chapter === 5);
  assert.equal(shown()?.chapter, 5, "tab B holds the page turn");

  // The far-ahead write is stored after the page turn's date; its row reaches tab B by Realtime before
  // tab A names it answered.
  second.subscriptions[0].handler({ kind: "upsert", row: stored });
  assert.equal(shown()?.chapter, 4, "until it is named answered, the stored row is the later one");
  const savedBefore = browser.items.get(storeA.outboxKey);
  storeA.settle(farAhead, { won: true, progress: stored } as unknown as WriteResult);
  assert.equal(browser.items.get(storeA.outboxKey), savedBefore, "the saved outbox did not change");

  await until(() => shown()?.chapter === 5);
  assert.deepEqual(
    [shown()?.chapter, shown()?.updatedAt],
    [5, new Date(now + 10_001).toISOString()],
    "tab B shows the page turn, dated as it will be sent: just after the earlier write's stored key",
  );
  b.close();
});

for (const change of ["upsert", "delete"] as const) {
  Deno.test(`sync session, two tabs: a Realtime ${change} of another series that reaches a tab first after the site's storage was cleared shows its waiting page turn as it will be sent, not the earlier write's stored row: the tab writes back what it holds before it builds the view`, async () => {
    const { browser, second, b, shown, asSent } = await pageTurnShownAsSent();
    const other = row(ALICE, "other-book", 1);
    second.subscriptions[0].handler({ kind: "upsert", row: other });

    // The site's data is cleared (Storage.clearDataForOrigin: no storage event); the next thing tab B hears is
    // Realtime's change of another series.
    browser.items.clear();
    second.subscriptions[0].handler(
      change === "upsert"
        ? { kind: "upsert", row: { ...other, chapter: 2 } }
        : { kind: "delete", row: other },
    );
    assert.deepEqual(
      [shown()?.chapter, shown()?.updatedAt, shown()?.pending],
      [...asSent, true],
      "still the page turn as it will be sent (on the code before: the earlier write's row, chapter 4, until the tab's next look)",
    );
    assert.ok(
      browser.items.get(b.store.latestAnsweredKey),
      "the latest answered writes it held are written back",
    );
    b.close();
  });
}

for (
  const change of [
    "a message",
    "a notice dismissed",
    "the clock's answer",
    "a server-rendered page's row",
  ] as const
) {
  Deno.test(`sync session, two tabs: ${change} that reaches a tab first after the site's storage was cleared shows its waiting page turn as it will be sent, not the earlier write's stored row: the tab writes back what it holds before it builds the view`, async () => {
    // As the Realtime tests above: tab B shows the page turn as it will be sent.
    const { browser, b, now, write, shown, asSent } = await pageTurnShownAsSent();
    // Tab B's own write of another series lost to the phone's newer version: a notice it may dismiss.
    const lost = write("other-book", 1, now - 60_000);
    b.store.addPending(lost);
    const phoneRow = { ...row(ALICE, "other-book", 2), device_id: "phone" };
    b.store.settle(lost, {
      won: false,
      conflict: "stale",
      conflict_with: { updated_at: phoneRow.updated_at, device_id: "phone" },
      progress: phoneRow,
    } as unknown as WriteResult);
    assert.ok(b.store.getSnapshot().notices.has("other-book"));

    // (A page the server renders later holds the phone's next version of the other series.)
    const renderedAt = new Date(Date.parse(phoneRow.updated_at) + 1).toISOString();

    // The site's data is cleared (no storage event); the next thing tab B's view is built for is this.
    browser.items.clear();
    const version = b.store.getSnapshot().version;
    if (change === "a message") b.store.setError("Not saved yet (will retry)", { untilAnswered: true });
    else if (change === "a notice dismissed") b.store.dismissNotice("other-book");
    else if (change === "the clock's answer") b.store.sendDatesChanged();
    else b.store.seed([{ ...phoneRow, chapter: 3, updated_at: renderedAt }]);
    assert.ok(b.store.getSnapshot().version > version, "(the view built again)");
    assert.deepEqual(
      [shown()?.chapter, shown()?.updatedAt, shown()?.pending],
      [...asSent, true],
      "still the page turn as it will be sent (on the code before: the earlier write's row, chapter 4, until the tab's next look)",
    );
    assert.ok(
      browser.items.get(b.store.latestAnsweredKey),
      "the latest answered writes it held are written back",
    );
    b.close();
  });
}

for (const moment of ["closes", "opens again"] as const) {
  Deno.test(`sync session, two tabs: a tab's session that ${moment} over the same store (the provider's effect run again: a new token from the server) after the site's storage was cleared shows its waiting page turn as it will be sent, not the earlier write's stored row: the tab writes back what it holds before it builds the view`, async () => {
    const { browser, second, b, shown, asSent } = await pageTurnShownAsSent();
    if (moment === "opens again") b.close();
    // The site's data is cleared (no storage event); the next thing tab B's view is built for is the dating of its
    // writes set (SyncStore.datesSentBy), as the session closes, or as one opens over the same store.
    browser.items.clear();
    const version = b.store.getSnapshot().version;
    const again = moment === "opens again" ? second.open(b.store) : null;
    b.close();
    try {
      assert.ok(b.store.getSnapshot().version > version, "(the view built again)");
      assert.deepEqual(
        [shown()?.chapter, shown()?.updatedAt, shown()?.pending],
        [...asSent, true],
        "still the page turn as it will be sent (on the code before: the earlier write's row, chapter 4, until the tab's next look)",
      );
      assert.ok(
        browser.items.get(b.store.latestAnsweredKey),
        "the latest answered writes it held are written back",
      );
    } finally {
      again?.close();
    }
  });
}

Deno.test("sync session, tabs: a tab opened after the site's storage was cleared that adds its device id to the browser's list before it writes its clear mark (no Web Locks: at once) has an open tab show its waiting page turn as it will be sent, not the earlier write's stored row", async () => {
  const { browser, b, shown, asSent } = await pageTurnShownAsSent();
  browser.items.clear(); // the reader clears the site's data: no storage event
  // A tab opened now, over plain http (no Web Locks): deviceId.ts adds its new id to the list at once, then its
  // session's store writes its clear mark. Tab B hears the list's change first.
  const opened = browser.viewFor(new EventTarget());
  await rememberDeviceIds(opened, ["web-new"]);
  newStore(ALICE).attachStorage(opened);
  await waitFor(
    "tab B to hear the new id and to write back what it holds",
    () => b.store.getSnapshot().browserDevices.has("web-new") && browser.items.has(b.store.latestAnsweredKey),
    { timeoutMs: 5_000 },
  );
  assert.deepEqual(
    [shown()?.chapter, shown()?.updatedAt, shown()?.pending],
    [...asSent, true],
    "the page turn as it will be sent (on the code before: the list's event built the view from the cleared storage, the earlier write's row, chapter 4, and the mark's look wrote back what tab B held without building it again)",
  );
  b.close();
});

Deno.test("sync session: a refusal heard before the session closed (sign-out) is not applied after it: the refused write stays queued in her saved outbox, nothing said, nothing shared", async () => {
  const t = tab({ refuse: "bad-book" });
  // The other write, sent alone after its batch was refused, is answered once the test says so.
  const held = { sent: false, release: () => {} };
  const connect = t.env.connect;
  t.env.connect = (accessToken, clock) => {
    const { api, disconnect } = connect(accessToken, clock);
    const batch = api.updateProgressBatch.bind(api);
    api.updateProgressBatch = async (writes, options) => {
      if (writes.length === 1 && writes[0].series_id === "good-book") {
        held.sent = true;
        await new Promise<void>((resolve) => held.release = resolve);
      }
      return batch(writes, options);
    };
    return { api, disconnect };
  };
  // Both saved before the send begins (the lock held elsewhere meanwhile), so they go in one batch.
  t.locks.holdElsewhere(outboxLockName(ALICE));
  const store = newStore(ALICE);
  const alice = t.open(store);
  alice.save("bad-book", position(1), DEVICE);
  alice.save("good-book", position(2), DEVICE);
  t.locks.release();
  await waitFor("the other write's request", () => held.sent, { timeoutMs: 30_000, intervalMs: 5 });

  alice.close(); // signed out (or another user's sign-in), the refusal of bad-book heard already
  held.release();
  await until(() => !alice.sending);
  assert.equal(alice.sending, false);
  const saved = JSON.parse(t.storage.getItem(store.outboxKey) ?? "[]") as PendingWrite[];
  assert.deepEqual(
    {
      error: store.getSnapshot().lastError,
      pending: store.getSnapshot().pendingCount,
      saved: saved.map((w) => w.series_id).sort(),
      refusalShared: t.storage.getItem(store.refusedKey),
      answered: t.storage.getItem(store.answeredKey),
    },
    { error: null, pending: 2, saved: ["bad-book", "good-book"], refusalShared: null, answered: null },
    "nothing of the refusal applied after the close: both writes still wait, in her saved outbox",
  );
});

const noNetwork = () => new NetworkError(0, "network_error", "Failed to fetch");

/**
 * Two tabs of one browser whose page turn of `book` waits in both (neither reaches the API until the test
 * lets tab A: `reach()`); tab B's requests are counted.
 */
async function twoTabsWaiting() {
  const browser = sharedStorage();
  const first = tab({ browser });
  const second = tab({ browser });
  let down = true;
  failing(first, () => down ? noNetwork() : null);
  const fromB = failing(second, () => noNetwork());
  const a = first.open(newStore(ALICE));
  const b = second.open(newStore(ALICE));
  a.save("book", position(4), DEVICE);
  await until(() => b.store.getSnapshot().pendingCount === 1 && !a.sending && !b.sending);
  assert.equal(b.store.getSnapshot().pendingCount, 1, "the page turn waits in tab B too");
  return { browser, first, second, a, b, fromB, reach: () => void (down = false) };
}

/**
 * How a page stops hearing of the storage, and comes back to it: kept in the back/forward cache and restored,
 * or frozen by the browser and resumed (Page Lifecycle). Either way it heard no storage event and ran no timer
 * meanwhile.
 */
const pageAway: {
  how: string;
  leave(browser: ReturnType<typeof sharedStorage>, t: ReturnType<typeof tab>): void;
  back(browser: ReturnType<typeof sharedStorage>, t: ReturnType<typeof tab>): void;
}[] = [
  {
    how: "restored from the back/forward cache (pageshow, persisted)",
    leave: (browser, t) => browser.keep(t.window),
    back: (browser, t) => browser.restore(t.window),
  },
  {
    how: "resumed after the browser froze it (Page Lifecycle: freeze, resume)",
    leave: (browser, t) => browser.freeze(t),
    back: (browser, t) => browser.resume(t),
  },
];

for (const { how, leave, back } of pageAway) {
  Deno.test(`sync session, two tabs: a page ${how} lets go at once of a write another tab got answered while it was kept there, and does not send it again`, async () => {
    const { browser, second, a, b, fromB, reach } = await twoTabsWaiting();
    leave(browser, second); // the reader leaves tab B's page: it hears nothing more, its timers stop
    reach();
    assert.equal(await a.syncNow(), "done", "tab A gets the page turn answered meanwhile");
    const requestsOfB = fromB.count;
    back(browser, second); // the reader goes back to it
    assert.equal(b.store.getSnapshot().pendingCount, 0, "let go at once: another tab got it answered");
    for (let i = 0; i < 5 && second.clock.nextAt !== null; i++) {
      second.clock.advance(second.clock.nextAt - second.clock.now); // tab B's retry comes due
      await until(() => !b.sending);
    }
    assert.equal(fromB.count, requestsOfB, "not sent again");
    a.close();
    b.close();
  });
}

for (const { how, leave, back } of pageAway) {
  Deno.test(`sync session, two tabs: a page ${how} after the site's storage was cleared writes back its waiting write at once, not at its next send`, async () => {
    const { browser, second, a, b } = await twoTabsWaiting();
    leave(browser, second);
    browser.items.clear(); // the reader clears the site's data (no tab hears it); tab A does nothing meanwhile
    back(browser, second);
    const saved = JSON.parse(browser.items.get(`readsync.outbox.${ALICE}`) ?? "[]") as PendingWrite[];
    assert.deepEqual(
      saved.map((w) => [w.series_id, w.chapter]),
      [["book", 4]],
      "saved again, for a tab opened now",
    );
    a.close();
    b.close();
  });
}

Deno.test("sync session, two tabs: a page Chromium keeps in its back/forward cache (pagehide, freeze; then resume, pageshow with persisted) reads the storage again at its resume, and what it missed from the server once", async () => {
  const { browser, second, a, b, reach } = await twoTabsWaiting();
  second.window.dispatchEvent(Object.assign(new Event("pagehide"), { persisted: true }));
  browser.freeze(second);
  reach();
  assert.equal(await a.syncNow(), "done", "tab A gets the page turn answered meanwhile");
  const reads = second.subscriptions[0].reads;
  browser.resume(second);
  assert.equal(b.store.getSnapshot().pendingCount, 0, "let go at the resume: another tab got it answered");
  browser.restore(second.window); // then pageshow (persisted), as Chromium fires them
  await until(() => !b.sending);
  assert.equal(second.subscriptions[0].reads, reads + 1, "read once, not again at the pageshow");
  a.close();
  b.close();
});

Deno.test("sync session, two tabs: a page resumed once after a freeze (no pageshow follows), later kept in the back/forward cache and restored by a pageshow with no resume before it, reads the storage again at that pageshow", async () => {
  const { browser, second, a, b, reach } = await twoTabsWaiting();
  browser.freeze(second); // a hidden tab frozen, then resumed when the reader comes back to it: read there
  browser.resume(second);
  assert.equal(b.store.getSnapshot().pendingCount, 1, "still waiting: nothing answered meanwhile");
  second.window.dispatchEvent(Object.assign(new Event("pagehide"), { persisted: true })); // the reader leaves
  browser.keep(second.window);
  reach();
  assert.equal(await a.syncNow(), "done", "tab A gets the page turn answered meanwhile");
  browser.restore(second.window); // pageshow (persisted) alone: the resume long ago says nothing of this stay
  assert.equal(b.store.getSnapshot().pendingCount, 0, "let go at the pageshow: another tab got it answered");
  await until(() => !b.sending);
  a.close();
  b.close();
});

/**
 * A tab with Alice's session open and its first send done, for the page lifecycle tests: its subscription's
 * reads, `answerChecks()` (fails every session check `auth` holds so far, so the reads they go with end),
 * and the document's visibilitychange, freeze and resume events.
 */
async function lifecycleTab(auth: ReturnType<typeof heldAuthToken>) {
  const t = tab();
  const alice = t.open(newStore(ALICE));
  await until(() => !alice.sending);
  let answered = 0;
  return {
    t,
    alice,
    reads: () => t.subscriptions[0].reads,
    answerChecks: async () => {
      while (answered < auth.count) (await auth.request(++answered)).reject(new TypeError("Failed to fetch"));
      await tick();
    },
    visibility: (state: "visible" | "hidden") => {
      t.document.visibilityState = state;
      t.document.dispatchEvent(new Event("visibilitychange"));
    },
    freeze: () => t.document.dispatchEvent(new Event("freeze")),
    resume: () => t.document.dispatchEvent(new Event("resume")),
  };
}

Deno.test("sync session: a frozen background tab the reader goes back to (resume, then visibilitychange) reads what it missed once; either event alone reads, and one after that read was answered reads again", async () => {
  // Each read goes with a check of the session (GET /auth/token, held here): the read is under way, as in a
  // browser, until the test answers that check.
  const auth = heldAuthToken();
  try {
    const { alice, reads, answerChecks, visibility, freeze, resume } = await lifecycleTab(auth);

    visibility("hidden");
    freeze(); // Chromium freezes a hidden tab
    let before = reads();
    resume(); // the reader goes back to it: resumed, then shown
    visibility("visible");
    await answerChecks();
    assert.equal(reads(), before + 1, "read once: at the resume, not again when shown");

    visibility("hidden");
    freeze();
    before = reads();
    resume(); // resumed while still hidden
    await answerChecks();
    assert.equal(reads(), before + 1, "a resume alone reads");
    visibility("visible"); // shown later, that read answered
    await answerChecks();
    assert.equal(reads(), before + 2, "shown after that read was answered: read again");

    visibility("hidden");
    before = reads();
    visibility("visible"); // shown again, never frozen
    await answerChecks();
    assert.equal(reads(), before + 1, "a visibilitychange alone reads");
    alice.close();
  } finally {
    auth.restore();
  }
});

Deno.test("sync session: a read begun before the page was frozen (or kept in the back/forward cache) is not the read of a resume after it: that resume reads anew", async () => {
  // As the test above: each read goes with a check of the session (GET /auth/token, held here), so a read
  // is under way until the test answers that check. A tab resumed while hidden begins a read, and is frozen
  // again before it is answered; what that read brings was read before the freeze (its answer may have come
  // while the page was frozen), and the page missed all that was saved while it was.
  const auth = heldAuthToken();
  try {
    const { t, alice, reads, answerChecks, visibility, freeze, resume } = await lifecycleTab(auth);

    visibility("hidden");
    freeze();
    const before = reads();
    resume(); // resumed while hidden: a read begins, its check held
    assert.equal(reads(), before + 1, "the resume reads");
    freeze(); // frozen again before it was answered
    resume(); // the reader goes back to it
    visibility("visible"); // (this one joins the resume's read)
    await answerChecks();
    assert.equal(
      reads(),
      before + 2,
      "read again at the resume after the freeze, not joined to the read before it",
    );

    // Alike for a page kept in the back/forward cache (pagehide) while a read was under way.
    const cached = reads();
    visibility("hidden");
    freeze();
    resume(); // a read begins, held
    t.window.dispatchEvent(new Event("pagehide"));
    const shown = new Event("pageshow") as Event & { persisted?: boolean };
    shown.persisted = true;
    t.window.dispatchEvent(shown);
    await answerChecks();
    assert.equal(reads(), cached + 2, "read again at the pageshow after the pagehide");
    alice.close();
  } finally {
    auth.restore();
  }
});

Deno.test("sync session: after the site's storage is cleared, the outbox's shared schedule is written back with it, so a Retry-After still holds the sends (back online, a page turn, another tab's clear) until it has passed", async () => {
  const t = tab();
  let busy = true;
  const requests = failing(t, () => busy ? busyFor30s() : null);
  const alice = t.open(newStore(ALICE));
  alice.save("book", position(4), DEVICE);
  await until(() => !alice.sending);
  const failedAt = t.clock.now;
  const scheduleKey = `readsync.outboxSchedule.${ALICE}`;
  const shared = t.storage.getItem(scheduleKey);
  assert.equal(requests.count, 1);
  assert.notEqual(shared, null, "the Retry-After is shared");
  const sent = async () => {
    await until(() => requests.count > 1);
    await until(() => !alice.sending);
    return requests.count - 1;
  };

  t.storage.clear(); // the reader clears the site's data: no event
  t.window.dispatchEvent(new Event("online"));
  assert.equal(await sent(), 0, "back online after a clear: nothing sent within the Retry-After");
  assert.equal(t.storage.getItem(scheduleKey), shared, "the schedule written back as it was");

  t.storage.clear();
  alice.save("book", position(5), DEVICE);
  assert.equal(await sent(), 0, "a page turn after a clear: nothing sent within the Retry-After");

  t.storage.clear(); // localStorage.clear() in another tab: a storage event with no key
  t.window.dispatchEvent(Object.assign(new Event("storage"), { key: null, newValue: null }));
  assert.equal(await sent(), 0, "another tab's clear: nothing sent within the Retry-After");

  busy = false;
  t.clock.advance(t.clock.nextAt! - t.clock.now);
  await until(() => alice.store.getSnapshot().pendingCount === 0);
  assert.equal(requests.count, 2, "sent once it has passed");
  assert.ok(t.clock.now >= failedAt + 30_000, "not before");
  alice.close();
});

/** Two tabs of Alice's (A and B) whose server refuses "bad-book"; A's page turn there is refused and both say so. */
async function twoTabsShowingARefusal() {
  const browser = sharedStorage();
  const first = tab({ browser, refuse: "bad-book" });
  const second = tab({ browser, refuse: "bad-book" });
  const a = first.open(newStore(ALICE));
  const b = second.open(newStore(ALICE));
  const error = (session: SyncSession) => session.store.getSnapshot().lastError;
  const refusedKey = `readsync.outboxRefused.${ALICE}`;
  a.save("bad-book", position(1), DEVICE);
  await until(() => error(b) !== null);
  assert.match(error(b) ?? "", /^Could not save bad-book/, "both tabs say it");
  return { browser, first, second, a, b, error, refusedKey };
}

Deno.test("sync session, two tabs: a refused write's message is written back after the site's storage is cleared, so dismissed in one tab it still goes in the other", async () => {
  const { browser, second, a, b, error, refusedKey } = await twoTabsShowingARefusal();
  const shared = browser.items.get(refusedKey);

  browser.items.clear(); // localStorage.clear() in tab A: tab B hears a storage event with no key
  second.window.dispatchEvent(Object.assign(new Event("storage"), { key: null, newValue: null }));
  assert.equal(browser.items.get(refusedKey), shared, "written back by tab B");
  await tick(); // tab A hears it: the message it shows already
  assert.match(error(a) ?? "", /^Could not save bad-book/);

  browser.items.clear(); // the reader clears the site's data: no tab hears it
  a.store.dismissError();
  await until(() => error(b) === null);
  assert.equal(error(b), null, "dismissed in tab A, gone in tab B too");
  // Tab B told the clear at the first event of tab A's writing back, the key already removed by the dismissal
  // (its event still on its way): it does not take the message for cleared and write it back.
  await until(() => error(a) !== null); // (bounded: it would come back with the storage event)
  assert.equal(error(a), null, "nor does it come back in tab A");
  assert.equal(browser.items.get(refusedKey), undefined, "nor in the storage");
  a.close();
  b.close();
});

Deno.test("sync session, tabs: a refused write's message not dismissed is said in a tab opened later too, also one opened after the site's data was cleared (a tab still open writes it back when it hears the new tab's clear mark)", async () => {
  const { browser, a, b, error, refusedKey } = await twoTabsShowingARefusal();
  const shared = browser.items.get(refusedKey);
  const opened = tab({ browser, refuse: "bad-book" }).open(newStore(ALICE));
  assert.match(error(opened) ?? "", /^Could not save bad-book/, "said in a tab opened now");
  opened.close();

  browser.items.clear(); // the reader clears the site's data: no tab hears it
  const openedAfter = tab({ browser, refuse: "bad-book" }).open(newStore(ALICE));
  await until(() => error(openedAfter) !== null);
  assert.match(error(openedAfter) ?? "", /^Could not save bad-book/, "said in a tab opened after the clear");
  assert.equal(browser.items.get(refusedKey), shared, "written back by the tabs open");
  // Dismissed there, it goes in the tabs open before too.
  openedAfter.store.dismissError();
  await until(() => error(a) === null && error(b) === null);
  assert.deepEqual(
    [error(a), error(b)],
    [null, null],
    "dismissed in the tab opened after the clear, gone in all",
  );
  a.close();
  b.close();
  openedAfter.close();
});

for (const { how, leave, back } of pageAway) {
  Deno.test(`sync session, two tabs: a page ${how} after the site's storage was cleared does not write back a refused write's message another tab dismissed while it was kept`, async () => {
    const { browser, second, a, b, error, refusedKey } = await twoTabsShowingARefusal();

    leave(browser, second); // the reader leaves tab B's page: it hears nothing more
    a.store.dismissError(); // dismissed in tab A: gone from the storage
    await tick(); // tab B, kept, does not hear it
    browser.items.clear(); // the reader clears the site's data (no tab hears it)
    back(browser, second);
    assert.equal(browser.items.get(refusedKey), undefined, "not written back by the page restored");
    await until(() => error(a) !== null); // (bounded: it would come back with the storage event)
    assert.equal(error(a), null, "dismissed: it does not come back in tab A");
    // Tab B heard no dismissal, and the clear tells none: it still says it there, as its own.
    assert.match(error(b) ?? "", /^Could not save bad-book/, "not hidden unread in tab B");
    browser.items.clear(); // cleared again, with tab B open: nothing of it written back at this clear either
    b.store.reloadOutbox();
    assert.equal(browser.items.get(refusedKey), undefined, "not written back at a later clear");
    // Another tab's removal of the key (its dismissal, a save that got through there) still takes it away.
    second.window.dispatchEvent(Object.assign(new Event("storage"), { key: refusedKey, newValue: null }));
    assert.equal(error(b), null, "gone with another tab's removal of the key");
    a.close();
    b.close();
  });
}

for (const { how, leave, back } of pageAway) {
  Deno.test(`sync session, two tabs: a page ${how} after the site's storage was cleared does not write back the outbox's schedule as it was before another tab's send ended the run`, async () => {
    const { browser, second, a, b, reach } = await twoTabsWaiting();
    const scheduleKey = `readsync.outboxSchedule.${ALICE}`;
    assert.notEqual(browser.items.get(scheduleKey), undefined, "a run of failures, shared");
    leave(browser, second);
    reach();
    assert.equal(await a.syncNow(), "done", "tab A gets the page turn answered meanwhile: the run is over");
    assert.equal(browser.items.get(scheduleKey), undefined);
    browser.items.clear(); // the reader clears the site's data (no tab hears it)
    back(browser, second);
    assert.equal(browser.items.get(scheduleKey), undefined, "the run tab B knew of is not written back");
    await until(() => !b.sending);
    a.close();
    b.close();
  });
}

Deno.test("sync session, two tabs: a tab with nothing waiting any more takes over the schedule when another tab's send ends the run, so at a clear it does not write back the run that send ended: its next page turn goes at once", async () => {
  const browser = sharedStorage();
  const first = tab({ browser });
  const second = tab({ browser });
  // A server answer (no Retry-After): an edit waits for the backoff's retry, unlike after no network.
  let down = true;
  const busy = () => down ? new ServiceUnavailableError(503, "service_unavailable", "busy") : null;
  const fromA = failing(first, busy);
  failing(second, busy);
  // The backoff's draw fixed at half its ceiling: tab A's retry is 1.5 s away, which the test's clock never
  // reaches. Drawn at random, a draw under 1 ms (about one run in 3,000) let the run written back at the clear
  // send at once too, and the test passed on the code it is there to catch.
  first.env.random = () => 0.5;
  second.env.random = () => 0.5;
  const a = first.open(newStore(ALICE));
  const b = second.open(newStore(ALICE));
  a.save("book", position(4), DEVICE);
  await until(() => b.store.getSnapshot().pendingCount === 1 && !a.sending && !b.sending);
  const scheduleKey = `readsync.outboxSchedule.${ALICE}`;
  assert.notEqual(browser.items.get(scheduleKey), undefined, "tab A's failure, shared");
  down = false;
  assert.equal(await b.syncNow(), "done", "tab B's Sync now gets it answered: the run is over");
  assert.equal(browser.items.get(scheduleKey), undefined);
  await tick(); // tab A hears it all: the page turn answered, the outbox, the schedule (nothing waits there now)
  assert.equal(a.store.getSnapshot().pendingCount, 0);
  browser.items.clear(); // the reader clears the site's data: no tab hears it
  const before = fromA.count;
  a.save("book", position(5), DEVICE); // tab A tells the clear as it dates it, and writes back what it holds
  await until(() => fromA.count > before && !a.sending);
  assert.equal(fromA.count, before + 1, "sent at once: the run tab B's send ended is not written back");
  assert.equal(browser.items.get(scheduleKey), undefined);
  a.close();
  b.close();
});

for (const { how, leave, back } of pageAway) {
  Deno.test(`sync session: a page ${how} after the site's storage was cleared writes back the outbox's schedule while its Retry-After still holds (no tab can have sent since), so nothing is sent within it`, async () => {
    const browser = sharedStorage();
    const only = tab({ browser });
    const requests = failing(only, () => busyFor30s());
    const alice = only.open(newStore(ALICE));
    alice.save("book", position(4), DEVICE);
    await until(() => !alice.sending);
    const scheduleKey = `readsync.outboxSchedule.${ALICE}`;
    const shared = browser.items.get(scheduleKey);
    assert.equal(requests.count, 1);
    assert.notEqual(shared, undefined, "the Retry-After is shared");
    leave(browser, only);
    browser.items.clear(); // the reader clears the site's data
    back(browser, only);
    assert.equal(browser.items.get(scheduleKey), shared, "written back: its Retry-After still holds");
    await until(() => requests.count > 1);
    assert.equal(requests.count, 1, "nothing sent within the Retry-After");
    alice.close();
  });
}

Deno.test("sync session, two tabs: when another tab adds an id to this browser's list of device ids, the tab's view names a version saved under it this browser's at once, not at the store's next change", async () => {
  const browser = sharedStorage();
  const first = tab({ browser });
  const second = tab({ browser });
  const a = first.open(newStore(ALICE));
  const b = second.open(newStore(ALICE));
  try {
    // The page open through a clear of the site's data saved under the browser's old id; tab A (opened after it)
    // has its row, and no list names that id yet.
    a.store.applyServerRow({ ...row(ALICE, "book", 4), device_id: "web-old" });
    const before = a.store.getSnapshot();
    assert.equal(savedBy("web-old", DEVICE, before.browserDevices), "another device");
    // The page writes its ids back (here: tab B's view of the same storage, as that page's would).
    await rememberDeviceIds(second.storage, ["web-old"]);
    assert.ok(readDeviceIds(first.storage).includes("web-old"), "the list names it");
    await waitFor(
      "tab A's view to name web-old this browser's",
      () => a.store.getSnapshot().browserDevices.has("web-old"),
      { timeoutMs: 5_000 },
    );
    assert.equal(savedBy("web-old", DEVICE, a.store.getSnapshot().browserDevices), "this browser");
    // Nothing changed: no view built again for it.
    const version = a.store.getSnapshot().version;
    a.store.deviceIdsChanged();
    assert.equal(a.store.getSnapshot().version, version, "the same ids: the same view");
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("sync session, two tabs: a notice of a write lost to a version whose id the tab learns only afterwards is this browser's (the page open through a clear names it once the tab's answer has come) goes then: no loss to another device, as when the id is known at the answer", async () => {
  const browser = sharedStorage();
  const first = tab({ browser });
  const second = tab({ browser });
  const a = first.open(newStore(ALICE));
  const b = second.open(newStore(ALICE));
  try {
    const turn: PendingWrite = {
      series_id: "book",
      chapter: 5,
      page: 1,
      percentage: 0.5,
      cleared: false,
      device_id: DEVICE,
      updated_at: new Date().toISOString(),
    };
    a.store.addPending(turn);
    // Its answer: lost to the page's write under the browser's old id (dated ahead, stored at the server's now()),
    // which no list of this browser names yet.
    const winner = {
      ...row(ALICE, "book", 4),
      device_id: "web-old",
      updated_at: new Date(Date.now() + 1_000).toISOString(),
    };
    a.store.settle(
      turn,
      { won: false, conflict: "stale", conflict_with: null, progress: winner } as unknown as WriteResult,
    );
    assert.equal(
      a.store.getSnapshot().notices.get("book")?.winner.device_id,
      "web-old",
      "told as another device's",
    );
    await rememberDeviceIds(second.storage, ["web-old"]); // the page writes its ids back
    await waitFor("the notice to go in tab A", () => !a.store.getSnapshot().notices.has("book"), {
      timeoutMs: 5_000,
    });
    assert.equal(a.store.getSnapshot().bySeries.get("book")?.deviceId, "web-old", "the winner is shown");
    // Another device's win still says so.
    const again: PendingWrite = {
      ...turn,
      chapter: 6,
      updated_at: new Date(Date.now() + 2_000).toISOString(),
    };
    a.store.addPending(again);
    const phone = { ...row(ALICE, "book", 7), updated_at: new Date(Date.now() + 3_000).toISOString() };
    a.store.settle(
      again,
      { won: false, conflict: "stale", conflict_with: null, progress: phone } as unknown as WriteResult,
    );
    assert.equal(a.store.getSnapshot().notices.get("book")?.winner.device_id, "phone");
  } finally {
    a.close();
    b.close();
  }
});

Deno.test("sync session, real API client, two tabs: a request of the outbox left unanswered is aborted after OUTBOX_REQUEST_TIMEOUT_MS and lets go of the Web Lock; the other tab then sends the write under the same key (a replay), and the held answer is never applied", async () => {
  const { locks, fn, first, a, b } = twoTabsOverRealApi();
  try {
    a.save("book", position(3), DEVICE);
    const held = await fn.request(1); // tab A's send, its answer held by the server (or the network)
    assert.equal(locks.counts.held, 1, "tab A holds the lock while its request is under way");
    first.clock.advance(OUTBOX_REQUEST_TIMEOUT_MS - 1);
    assert.equal(held.abortHeard, false, "not aborted before its bound");
    first.clock.advance(1);
    assert.equal(held.abortHeard, true, "aborted as its bound passes");
    await waitFor("tab A's request to be aborted", () => held.ended, { timeoutMs: 5_000 });
    assert.equal(held.aborted, true);
    await waitFor("tab A to let go of the lock", () => !a.sending && locks.counts.held === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(a.store.getSnapshot().pendingCount, 1, "the write waits, kept");
    // Tab B sends it (its Sync now; without it, at the retry the tabs share).
    const press = b.syncNow();
    const resent = await fn.request(2);
    assert.deepEqual(
      resent.writes.map((w) => [w.series_id, w.chapter, w.updated_at, w.device_id]),
      held.writes.map((w) => [w.series_id, w.chapter, w.updated_at, w.device_id]),
      "the same write under the same key: the server stores it once",
    );
    resent.save();
    assert.equal(await press, "done");
    await waitFor(
      "the write to be answered in both tabs",
      () => a.store.getSnapshot().pendingCount === 0 && b.store.getSnapshot().pendingCount === 0,
      { timeoutMs: 5_000 },
    );
    held.save(); // the held answer comes at last: its request was aborted, nothing of it is heard
    await tick();
    assert.equal(fn.requests.length, 2, "one request each");
    assert.equal(locks.counts.mostHeld, 1, "never two tabs sending at once");
  } finally {
    a.close();
    b.close();
    fn.wakeAll();
  }
});

Deno.test("sync session, two tabs: a tab whose send waits for /auth/token's answer to another tab's word does not hold the outbox's Web Lock meanwhile: another tab sends its write; once answered, it sends nothing again", async () => {
  const auth = heldAuthToken();
  const browser = sharedStorage();
  const locks = sharedLocks();
  const first = tab({ browser });
  const second = tab({ browser });
  first.env.locks = locks;
  second.env.locks = locks;
  const a = first.open(newStore(ALICE));
  const b = second.open(newStore(ALICE));
  try {
    // Tab A hears a word that the session changed (tab B opened after it, its own session known); its check
    // of /auth/token is held.
    signedOutElsewhere(first.window);
    const check = await auth.request(1);
    a.save("book", position(3), DEVICE); // queued in tab A, which waits for the answer to send it
    // Tab B hears of the write (the saved outbox) and sends it.
    await waitFor(
      "tab B to send, or to wait for the lock",
      () => second.sent.length > 0 || locks.waiting > 0,
      { timeoutMs: 5_000 },
    );
    assert.equal(
      locks.waiting,
      0,
      "tab B does not wait for a lock tab A holds while /auth/token has not answered",
    );
    assert.deepEqual(
      second.sent.map((s) => s.writes.map((w) => w.chapter)),
      [[3]],
      "tab B sends tab A's write",
    );
    await waitFor("tab B's send to end", () => !b.sending && b.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(first.sent.length, 0, "tab A sent nothing meanwhile");
    check.resolve(Response.json({ accessToken: `token-of-${ALICE}`, expiresAt: FAR, userId: ALICE }));
    await waitFor(
      "tab A to let go of the answered write",
      () => a.store.getSnapshot().pendingCount === 0 && !a.sending && locks.counts.held === 0,
      { timeoutMs: 5_000 },
    );
    await tick();
    assert.equal(first.sent.length, 0, "nothing sent again by tab A once answered");
    assert.deepEqual(first.left, []);
  } finally {
    a.close();
    b.close();
    auth.restore();
  }
});

Deno.test("sync session, real API client, two tabs: a send answered 401 lets go of the outbox's Web Lock at once, not after the token's refresh: another tab sends meanwhile, and the tab's own next send waits for the refresh, without the lock", async () => {
  const auth = heldAuthToken();
  const { locks, fn, first, a, b } = twoTabsOverRealApi();
  try {
    a.save("book", position(3), DEVICE);
    (await fn.request(1)).unauthorized(); // tab A's token has expired (a laptop that slept past it)
    const refresh = await auth.request(1); // tab A refreshes it: GET /auth/token, its answer held (up to 10 s)
    await waitFor("tab A to let go of the lock", () => !a.sending && locks.counts.held === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(a.store.getSnapshot().pendingCount, 1, "the write waits, kept");
    // The reader presses Sync now in tab A: its send waits for the refresh under way (to carry the fresh token),
    // neither holding nor waiting for the lock.
    const pressA = a.syncNow();
    for (let i = 0; i < 5; i++) await tick();
    assert.deepEqual(
      [fn.requests.length, locks.counts.held, locks.waiting],
      [1, 0, 0],
      "tab A's send waits for the refresh, without the lock",
    );
    // Its write goes once the refresh has ended: the tab is sending, as the reader sees it (Sync now "Syncing…").
    assert.equal(a.sending, true, "tab A's send waiting for the refresh is shown as sending");
    // Tab B sends the shared outbox meanwhile (its own token is good).
    const pressB = b.syncNow();
    const fromB = await fn.request(2);
    assert.deepEqual(fromB.writes.map((w) => w.chapter), [3], "tab B sends tab A's write");
    fromB.save();
    assert.equal(await pressB, "done");
    refresh.resolve(Response.json({ accessToken: `token-of-${ALICE}`, expiresAt: FAR, userId: ALICE }));
    assert.equal(await pressA, "done");
    await waitFor(
      "the write to be answered in both tabs",
      () => a.store.getSnapshot().pendingCount === 0 && b.store.getSnapshot().pendingCount === 0,
      { timeoutMs: 5_000 },
    );
    assert.equal(fn.requests.length, 2, "tab A sends nothing again once the refresh is answered");
    assert.equal(locks.counts.mostHeld, 1, "never two tabs sending at once");
    assert.deepEqual(first.left, []);
  } finally {
    a.close();
    b.close();
    fn.wakeAll();
    auth.restore();
  }
});

/** A session of ALICE in tab `t` whose token expires in 30 s (under the minute: due for a refresh before use). */
const openExpiringSoon = (t: ReturnType<typeof tab>, store = newStore(ALICE), clock?: ServerClock) =>
  new SyncSession(
    store,
    { userId: ALICE, accessToken: `token-of-${ALICE}`, expiresAt: Math.floor(Date.now() / 1000) + 30 },
    clock ? { ...t.env, clock } : t.env,
  );

Deno.test("sync session, real API client, two tabs: a token about to expire is refreshed before the send takes the outbox's Web Lock, not inline under it: another tab sends meanwhile, and the tab sends nothing again once refreshed", async () => {
  const auth = heldAuthToken();
  const { locks, fn, first, a, b } = twoTabsOverRealApi(openExpiringSoon);
  try {
    a.save("book", position(3), DEVICE);
    const refresh = await auth.request(1); // tab A refreshes its token first: GET /auth/token, held (up to 10 s)
    // Tab B hears of the write (the saved outbox) and sends it meanwhile.
    await waitFor(
      "tab B to send, or to wait for the lock",
      () => fn.requests.length > 0 || locks.waiting > 0,
      {
        timeoutMs: 5_000,
      },
    );
    assert.equal(
      locks.waiting,
      0,
      "tab B does not wait for the lock: tab A's send waits for the refresh without it (on the code before, under it)",
    );
    assert.equal(a.sending, true, "tab A's send waiting for the refresh is shown as sending");
    const fromB = await fn.request(1);
    assert.deepEqual(
      [fromB.token, fromB.writes.map((w) => w.chapter)],
      [`token-of-${ALICE}`, [3]],
      "tab B sends it",
    );
    fromB.save();
    await waitFor("tab B's send to end", () => !b.sending && b.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(fn.requests.length, 1, "tab A sent nothing meanwhile");
    refresh.resolve(Response.json({ accessToken: `token-of-${ALICE}#2`, expiresAt: FAR, userId: ALICE }));
    await waitFor(
      "the write to be answered in both tabs, tab A's send over",
      () =>
        a.store.getSnapshot().pendingCount === 0 && b.store.getSnapshot().pendingCount === 0 && !a.sending &&
        locks.counts.held === 0,
      { timeoutMs: 5_000 },
    );
    // Tab A's next page turn goes with the fresh token, and asks /auth/token nothing more.
    a.save("book", position(4), DEVICE);
    const next = await fn.request(2);
    assert.deepEqual([next.token, next.writes.map((w) => w.chapter)], [`token-of-${ALICE}#2`, [4]]);
    next.save();
    await waitFor("the page turn to be answered", () => a.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(auth.count, 1, "one refresh");
    assert.equal(locks.counts.mostHeld, 1, "never two tabs sending at once");
    assert.deepEqual(first.left, []);
  } finally {
    a.close();
    b.close();
    fn.wakeAll();
    auth.restore();
  }
});

Deno.test("sync session, real API client, two tabs: a token about to expire whose refresh failed while another tab sent the write (nothing left to send) is asked for again at the tab's next page turn, not sent as held", async () => {
  const auth = heldAuthToken();
  const { locks, fn, first, a, b } = twoTabsOverRealApi(openExpiringSoon);
  try {
    a.save("book", position(3), DEVICE);
    const refresh = await auth.request(1); // tab A's refresh before its send, held
    // Tab B sends the write meanwhile; tab A's refresh then fails (Auth down for a moment).
    const fromB = await fn.request(1);
    fromB.save();
    await waitFor("the write to be answered in tab B", () => b.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    refresh.resolve(Response.json({ error: "auth_unavailable" }, { status: 503 }));
    await waitFor(
      "tab A's run to end with nothing to send",
      () => !a.sending && a.store.getSnapshot().pendingCount === 0 && locks.counts.held === 0,
      { timeoutMs: 5_000 },
    );
    assert.equal(fn.requests.length, 1, "tab A sent nothing");
    // Tab A's next page turn: its token is still about to expire (or has): asked for again before it goes.
    a.save("book", position(4), DEVICE);
    await waitFor("tab A's refresh, or its write", () => auth.count >= 2 || fn.requests.length >= 2, {
      timeoutMs: 5_000,
    });
    assert.deepEqual(
      [auth.count, fn.requests.length],
      [2, 1],
      "refreshed before the page turn goes (on the code before: sent with the token held, no refresh)",
    );
    (await auth.request(2)).resolve(
      Response.json({ accessToken: `token-of-${ALICE}#2`, expiresAt: FAR, userId: ALICE }),
    );
    const next = await fn.request(2);
    assert.deepEqual([next.token, next.writes.map((w) => w.chapter)], [`token-of-${ALICE}#2`, [4]]);
    next.save();
    await waitFor("the page turn to be answered", () => a.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.deepEqual(first.left, []);
  } finally {
    a.close();
    b.close();
    fn.wakeAll();
    auth.restore();
  }
});

Deno.test("sync session, real API client: a token about to expire whose refresh fails (offline) is asked for once per send, not once per request nor again and again: the send's two batches go with the token held, and the next send asks once again", async () => {
  const auth = heldAuthToken();
  const locks = sharedLocks();
  const fn = heldFunctions();
  const t = tab();
  t.env.locks = locks;
  realApi(t, fn);
  // 101 series saved before the session opened (SyncProvider: page turns before its effect ran): its first send
  // has two batches (PROGRESS_LIMITS.batchMax, 100 a request).
  const store = newStore(ALICE);
  const clock = visitClock(t.env);
  for (let i = 0; i < 101; i++) saveBeforeSession(store, clock, `book-${i}`, position(1), DEVICE);
  const alice = openExpiringSoon(t, store, clock);
  try {
    (await auth.request(1)).reject(new TypeError("Failed to fetch"));
    const firstBatch = await fn.request(1);
    assert.deepEqual(
      [firstBatch.token, firstBatch.writes.length],
      [`token-of-${ALICE}`, 100],
      "the token held",
    );
    assert.equal(locks.counts.held, 1, "sent under the lock");
    firstBatch.save();
    await waitFor("the second batch, or a second refresh", () => fn.requests.length >= 2 || auth.count >= 2, {
      timeoutMs: 5_000,
    });
    assert.equal(auth.count, 1, "no refresh for the send's second request (on the code before: one each)");
    const secondBatch = await fn.request(2);
    assert.deepEqual([secondBatch.token, secondBatch.writes.length], [`token-of-${ALICE}`, 1]);
    secondBatch.unavailable(); // 503: the write waits for the retry
    await waitFor("the send to end", () => !alice.sending && locks.counts.held === 0, { timeoutMs: 5_000 });
    assert.equal(auth.count, 1, "nothing asked again at once");
    // The retry (the backoff's wait, on the test's clock) is a new send: it asks once again, before the lock.
    await waitFor("the retry's refresh", () => {
      if (t.clock.nextAt !== null) t.clock.advance(t.clock.nextAt - t.clock.now);
      return auth.count >= 2;
    }, { timeoutMs: 5_000 });
    assert.deepEqual([locks.counts.held, fn.requests.length], [0, 2], "without the lock, before its request");
    (await auth.request(2)).reject(new TypeError("Failed to fetch"));
    const retry = await fn.request(3);
    assert.deepEqual([retry.token, retry.writes.map((w) => w.series_id)], [`token-of-${ALICE}`, [
      "book-100",
    ]]);
    retry.save();
    await waitFor("every write answered", () => alice.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(auth.count, 2, "once per send");
    assert.deepEqual(t.left, [], "a refresh that fails says nothing of the session");
  } finally {
    alice.close();
    fn.wakeAll();
    auth.restore();
  }
});

/**
 * Runs the outbox's retries (the backoff's waits, on the tab's clock) one at a time until `done`; returns how many
 * ran. A retry is the only timer armed while nothing is under way.
 */
async function retriesUntil(
  t: ReturnType<typeof tab>,
  session: SyncSession,
  done: () => boolean,
): Promise<number> {
  let retries = 0;
  await waitFor("the retries", () => {
    if (done()) return true;
    if (!session.sending && t.clock.nextAt !== null) {
      t.clock.advance(t.clock.nextAt - t.clock.now);
      retries++;
    }
    return false;
  }, { timeoutMs: 5_000 });
  return retries;
}

Deno.test("sync session, real API client: a token about to expire whose refresh fails (Auth down) and that the API then refuses (401) is refreshed once per run: not again at the 401, and the next run's refresh goes before it is sent again", async () => {
  const auth = heldAuthToken();
  const fn = heldFunctions();
  const t = tab();
  realApi(t, fn);
  const alice = openExpiringSoon(t);
  try {
    alice.save("book", position(3), DEVICE);
    (await auth.request(1)).resolve(Response.json({ error: "auth_unavailable" }, { status: 503 }));
    const first = await fn.request(1); // sent with the token held: it has not expired by the server's clock
    assert.equal(first.token, `token-of-${ALICE}`);
    first.unauthorized(); // it has, by the function's
    await waitFor("the run to end", () => !alice.sending && first.ended, { timeoutMs: 5_000 });
    assert.equal(auth.count, 1, "one refresh in the run (on the code before: a second one at the 401)");
    // The next run refreshes once before it sends; Auth is back.
    const retries = await retriesUntil(t, alice, () => auth.count >= 2 || fn.requests.length >= 2);
    assert.deepEqual([retries, auth.count, fn.requests.length], [1, 2, 1], "the next run refreshes first");
    (await auth.request(2)).resolve(
      Response.json({ accessToken: `token-of-${ALICE}#2`, expiresAt: FAR, userId: ALICE }),
    );
    const again = await fn.request(2);
    assert.deepEqual([again.token, again.writes.map((w) => w.chapter)], [`token-of-${ALICE}#2`, [3]]);
    again.save();
    await waitFor("the write to be answered", () => alice.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.deepEqual([auth.count, fn.requests.length], [2, 2]);
    assert.deepEqual(t.left, []);
  } finally {
    alice.close();
    fn.wakeAll();
    auth.restore();
  }
});

Deno.test("sync session, real API client: a token the API refused (401) whose refresh fails (Auth down: /auth/token answers 503) is not sent again: each run refreshes once and, that failing, sends nothing, until a refresh answers a token", async () => {
  const auth = heldAuthToken();
  const fn = heldFunctions();
  const t = tab();
  realApi(t, fn);
  const alice = t.open(newStore(ALICE)); // its token not due for a refresh by the server's clock
  try {
    alice.save("book", position(3), DEVICE);
    (await fn.request(1)).unauthorized(); // refused all the same (revoked, or the clocks disagree)
    (await auth.request(1)).resolve(Response.json({ error: "auth_unavailable" }, { status: 503 }));
    await waitFor("the run to end", () => !alice.sending && fn.requests[0].ended, { timeoutMs: 5_000 });
    // The next runs: the 401's refresh was the first one's; each after it refreshes once, and sends nothing.
    for (let n = 2; n <= 3; n++) {
      const retries = await retriesUntil(t, alice, () => auth.count >= n || fn.requests.length >= 2);
      assert.equal(
        fn.requests.length,
        1,
        "the refused token is not sent again (on the code before: sent at once)",
      );
      assert.deepEqual([retries, auth.count], [n === 2 ? 2 : 1, n], "one refresh per run");
      (await auth.request(n)).resolve(Response.json({ error: "auth_unavailable" }, { status: 503 }));
    }
    assert.equal(alice.store.getSnapshot().lastError, null, "nothing said: a passing failure, as the 401 is");
    // Auth is back: the next run's refresh answers, and the write goes with the new token.
    await retriesUntil(t, alice, () => auth.count >= 4);
    (await auth.request(4)).resolve(
      Response.json({ accessToken: `token-of-${ALICE}#2`, expiresAt: FAR, userId: ALICE }),
    );
    const again = await fn.request(2);
    assert.equal(again.token, `token-of-${ALICE}#2`);
    again.save();
    await waitFor("the write to be answered", () => alice.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.deepEqual([auth.count, fn.requests.length], [4, 2]);
  } finally {
    alice.close();
    fn.wakeAll();
    auth.restore();
  }
});

Deno.test("sync session, real API client: a token expired only by a saved estimate of the server's clock (another visit's: the device clock set right since) is still sent: no answer of this visit has measured the clock", async () => {
  const HOUR = 3_600_000;
  const auth = heldAuthToken();
  const fn = heldFunctions();
  const t = tab();
  realApi(t, fn);
  // An earlier visit measured the device an hour slow and saved that; the device clock has been set right since, so
  // by the saved estimate every token (an hour's) has expired, though the API takes it.
  t.env.clockOffset = { load: () => HOUR, save: () => {} };
  const alice = t.open(newStore(ALICE)); // its token good for an hour by the server's own clock
  try {
    alice.save("book", position(3), DEVICE);
    // Due for a refresh by that estimate: asked first, and Auth answers the same token (it has not expired).
    (await auth.request(1)).resolve(
      Response.json({ accessToken: `token-of-${ALICE}`, expiresAt: FAR, userId: ALICE }),
    );
    await waitFor(
      "the write to be sent, or the run to fail without it",
      () => fn.requests.length > 0 || (!alice.sending && t.clock.nextAt !== null),
      { timeoutMs: 5_000 },
    );
    assert.equal(
      fn.requests.length,
      1,
      "sent (on the code before: held back as known unusable, at every run)",
    );
    const sent = await fn.request(1);
    assert.equal(sent.token, `token-of-${ALICE}`);
    sent.save();
    await waitFor("the write to be answered", () => alice.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(auth.count, 1);
  } finally {
    alice.close();
    fn.wakeAll();
    auth.restore();
  }
});

Deno.test("sync session, real API client, tabs: the writes' bound learnt from a server answering them in 20 s is the browser's: a tab opened later sends its first write with it, not set back by its fast read of one row (the clock's measure) just before", async () => {
  const SLOW_MS = 20_000; // the writes' answers come 20 s (the test's clocks) after their requests arrive
  const browser = sharedStorage();
  const fn = heldFunctions();
  const first = tab({ browser });
  realApi(first, fn, { reads: true });
  const a = first.open(newStore(ALICE));
  const second = tab({ browser });
  realApi(second, fn, { reads: true });
  let b: SyncSession | undefined;
  try {
    // Tab A: the clock has no measured offset yet, so a read of one row goes first, answered at once.
    a.save("book", position(3), DEVICE);
    const readA = await fn.request(1);
    assert.equal(readA.method, "GET");
    readA.listed();
    const writeA = await fn.request(2);
    assert.equal(writeA.method, "POST");
    first.clock.advance(OUTBOX_REQUEST_TIMEOUT_MS);
    await waitFor("tab A's write to be aborted at 12 s", () => writeA.ended, { timeoutMs: 5_000 });
    assert.equal(writeA.aborted, true);
    // Its retry (the backoff's wait) goes with the bound 24 s, and is answered in 20 s.
    await waitFor("tab A's retry", () => {
      if (!a.sending && first.clock.nextAt !== null) {
        first.clock.advance(first.clock.nextAt - first.clock.now);
      }
      return fn.requests.length >= 3;
    }, { timeoutMs: 5_000 });
    const retryA = await fn.request(3);
    assert.equal(retryA.method, "POST", "no read again: the clock learnt the server's time");
    first.clock.advance(SLOW_MS);
    retryA.save();
    await waitFor("tab A's write to be answered", () => a.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(retryA.aborted, false);
    a.close(); // (reloaded, or closed: its next page opens as tab B does)
    // Tab B opens: its clock has no measured offset either, so its first send reads one row first, answered at
    // once; then its write, answered as slowly.
    b = second.open(newStore(ALICE));
    b.save("book", position(4), DEVICE);
    const readB = await fn.request(4);
    assert.equal(readB.method, "GET");
    readB.listed();
    const writeB = await fn.request(5);
    assert.deepEqual([writeB.method, writeB.writes.map((w) => w.chapter)], ["POST", [4]]);
    second.clock.advance(SLOW_MS - 1);
    assert.equal(
      writeB.abortHeard,
      false,
      "not aborted at 12 s: the writes' bound the browser learnt (24 s), not set back by the read's answer",
    );
    second.clock.advance(1);
    writeB.save();
    await waitFor("tab B's write to be answered", () => b!.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    assert.equal(fn.requests.length, 5, "one request for tab B's write");
  } finally {
    a.close();
    b?.close();
    fn.wakeAll();
  }
});

Deno.test("sync session, real API client: an error answered at once (a 503) by a server whose writes took 20 s does not set the writes' bound back to 12 s: the retry, as slow, is answered at its first request", async () => {
  const SLOW_MS = 20_000;
  const fn = heldFunctions();
  const t = tab();
  realApi(t, fn);
  // The browser learnt the writes' bound (24 s: an answer in 20 s), as a tab's slow answer leaves it.
  const shared = requestSteps(t.storage, requestBoundKey(ALICE), () => t.clock.timers.wallNow!());
  shared.set("write", requestStepsWithin(SLOW_MS));
  assert.equal(shared.get("write"), 1);
  const alice = t.open(newStore(ALICE));
  try {
    alice.save("book", position(3), DEVICE);
    (await fn.request(1)).unavailable(); // a 503 at once (its database's 2 s lock timeout, Auth's check)
    await waitFor("the send to end", () => !alice.sending && fn.requests[0].ended, { timeoutMs: 5_000 });
    assert.equal(
      shared.get("write"),
      1,
      "an error answered at once says nothing of how long a write takes (on the code before: 0, 12 s again)",
    );
    // The retry (the backoff's wait), answered in 20 s as before the 503: not aborted at 12 s and sent again.
    await waitFor("the retry", () => {
      if (!alice.sending && t.clock.nextAt !== null) t.clock.advance(t.clock.nextAt - t.clock.now);
      return fn.requests.length >= 2;
    }, { timeoutMs: 5_000 });
    const retry = await fn.request(2);
    t.clock.advance(SLOW_MS);
    retry.save();
    await waitFor("the retry to end", () => retry.ended, { timeoutMs: 5_000 });
    assert.equal(retry.aborted, false, "answered at its first request (on the code before: aborted at 12 s)");
    await waitFor("the write to be answered", () => alice.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
  } finally {
    alice.close();
    fn.wakeAll();
  }
});

Deno.test("sync session: the outbox's request bounds the tabs share are one per kind; one no tab wrote for 15 minutes, or that does not parse, is the first step again, and the first step keeps nothing", () => {
  const storage = memoryStorage();
  const key = requestBoundKey(ALICE);
  let wall = 1_800_000_000_000;
  const tabA = requestSteps(storage, key, () => wall);
  const tabB = requestSteps(storage, key, () => wall); // another tab of the browser
  tabA.set("write", 2);
  assert.deepEqual(
    [tabB.get("write"), tabB.get("read")],
    [2, 0],
    "another tab's writes start at the step learnt",
  );
  tabB.set("read", 0);
  assert.equal(tabA.get("write"), 2, "a read's answer leaves the writes' bound as it was");
  wall += STALE_RUN_MS - 1;
  assert.equal(tabA.get("write"), 2);
  wall += 1;
  assert.equal(tabA.get("write"), 0, "no tab wrote it for 15 minutes: over");
  tabA.set("write", 3);
  storage.setItem(key, "{not json");
  assert.equal(tabB.get("write"), 0, "a value that does not parse is none");
  tabA.set("write", 40);
  assert.equal(tabB.get("write"), 16, "(a step past the last bound's is that bound's)");
  tabA.set("write", 0);
  assert.equal(storage.getItem(key), null, "every kind at the first step: nothing kept");
  const alone = requestSteps(null, key, () => wall); // site data blocked: this tab's own
  alone.set("write", 1);
  assert.deepEqual([alone.get("write"), tabA.get("write")], [1, 0]);
});

Deno.test("sync session, real API client: a server slower than OUTBOX_REQUEST_TIMEOUT_MS at every answer is heard in the end: the bound grows at each request aborted by it in a row, stays the step an answer came within, and is the first again once one is answered within 12 s", async () => {
  const SLOW_MS = 20_000; // every answer comes 20 s (the test's clock) after its request arrives
  assert.ok(SLOW_MS > OUTBOX_REQUEST_TIMEOUT_MS && SLOW_MS < requestBoundMs(1));
  assert.deepEqual(
    [0, 1, 2, 3, 4, 10].map(requestBoundMs),
    [12_000, 24_000, 48_000, 96_000, OUTBOX_REQUEST_TIMEOUT_MAX_MS, OUTBOX_REQUEST_TIMEOUT_MAX_MS],
  );
  assert.deepEqual([0, 11_999, 20_000, 30_000, 119_999].map(requestStepsWithin), [0, 0, 1, 2, 4]);
  const fn = heldFunctions();
  const t = tab();
  realApi(t, fn);
  const alice = t.open(newStore(ALICE));
  const slow = new Set<HeldRequest>();
  const answerSlowly = () => {
    for (const request of fn.requests) {
      if (slow.has(request)) continue;
      slow.add(request);
      t.clock.timers.setTimeout(() => request.save(), SLOW_MS);
    }
  };
  try {
    alice.save("book", position(3), DEVICE);
    await waitFor("the write to be answered (or six requests)", () => {
      answerSlowly();
      if (fn.requests.length >= 6 || alice.store.getSnapshot().pendingCount === 0) return true;
      if (!fn.requests.at(-1)?.ended || !alice.sending) t.clock.advance(500);
      return false;
    }, { timeoutMs: 15_000 });
    assert.deepEqual(
      fn.requests.map((r) => r.aborted),
      [true, false],
      "the first request aborted at 12 s, the second (its bound 24 s) answered",
    );
    assert.deepEqual(
      fn.requests.map((r) => r.writes.map((w) => w.updated_at)),
      [[fn.requests[0].writes[0].updated_at], [fn.requests[0].writes[0].updated_at]],
      "the same key (a replay)",
    );
    assert.equal(alice.store.getSnapshot().pendingCount, 0, "settled");
    // Answered after 20 s: the bound stays the step that answer came within (24 s), so the next page turn, as
    // slowly answered, goes in one request (at 12 s again, each write was aborted once, then sent again).
    alice.save("book", position(4), DEVICE);
    await waitFor("the next page turn to be answered (or five requests)", () => {
      answerSlowly();
      if (fn.requests.length >= 5 || alice.store.getSnapshot().pendingCount === 0) return true;
      if (!fn.requests.at(-1)?.ended || !alice.sending) t.clock.advance(500);
      return false;
    }, { timeoutMs: 15_000 });
    assert.deepEqual(
      fn.requests.slice(2).map((r) => [r.aborted, r.writes.map((w) => w.chapter)]),
      [[false, [4]]],
      "the page turn answered at its first request (its bound 24 s)",
    );
    // Answered in time for the first step: the next request's bound is 12 s again.
    alice.save("book", position(5), DEVICE);
    (await fn.request(4)).save();
    await waitFor("the page turn to be answered", () => alice.store.getSnapshot().pendingCount === 0, {
      timeoutMs: 5_000,
    });
    alice.save("book", position(6), DEVICE);
    const next = await fn.request(5);
    slow.add(next); // never answered
    t.clock.advance(OUTBOX_REQUEST_TIMEOUT_MS - 1);
    assert.equal(next.abortHeard, false, "not aborted before 12 s");
    t.clock.advance(1);
    assert.equal(next.abortHeard, true, "aborted as 12 s pass");
    await waitFor("the request to be aborted at 12 s", () => next.ended, { timeoutMs: 5_000 });
    assert.equal(next.aborted, true);
  } finally {
    alice.close();
    fn.wakeAll();
  }
});
