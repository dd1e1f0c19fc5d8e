"use client";

// The signed-in part of the app shares one SyncProvider (it lives in the (reader) layout, so moving
// between the library and a series keeps the same Realtime link):
//
//   RealtimeService (shared/)   live updates on progress:<userId>; catch-up and polling
//   SyncStore                   what this device shows: confirmed rows + its own pending writes
//   outbox flush                optimistic writes go to the progress function in batches
//                               (lib/client/outbox.ts); offline they wait in localStorage and are
//                               sent on reconnect with their original updated_at, so
//                               last-write-wins picks the right winner; after failures, retries
//                               back off and wait out a Retry-After (lib/client/outboxSchedule.ts),
//                               shared by the browser's tabs, which send one at a time
//   ServerClock (shared/)       writes are stamped with the server's time as the API's answers
//                               reveal it, so a browser whose clock is off cannot win by it
//   status                      live / polling / offline (the browser's offline flag wins)

import { createContext, type ReactNode, useCallback, useContext, useEffect, useMemo, useState, useSyncExternalStore } from "react";
import { ServerClock } from "@shared/progress/serverClock.ts";
import { defaultCompareRows } from "@shared/realtime/progressContract.ts";
import type { RealtimeStatus } from "@shared/realtime/realtimeService.ts";
import { getDeviceId } from "@/lib/client/deviceId.ts";
import {
  isNetworkFailure,
  isRetryable,
  isTransient,
  progressApi,
  type ProgressApi,
  splitMayHelp,
  userClient,
} from "@/lib/progressClient.ts";
import { retryAfterMsOf } from "@shared/http/retryAfter.ts";
import { flushOutbox } from "@/lib/client/outbox.ts";
import { type OutboxTabs, OutboxSchedule, type SendReason } from "@/lib/client/outboxSchedule.ts";
import { type PendingWrite, type SyncSnapshot, SyncStore } from "@/lib/client/syncStore.ts";
import { isSignedOut, SignedOutError, TokenKeeper } from "@/lib/client/tokenKeeper.ts";
import { announceSession, sessionChangedFor } from "@/lib/client/sessionSignal.ts";
import { createSessionCheck } from "@/lib/client/sessionCheck.ts";

export type DisplayStatus = RealtimeStatus;

export interface Position {
  chapter: number;
  page: number;
  percentage: number;
}

interface SyncContextValue {
  store: SyncStore;
  userId: string;
  deviceId: string | null;
  status: DisplayStatus;
  save(seriesId: string, position: Position): void;
  flush(): void;
}

const SyncContext = createContext<SyncContextValue | null>(null);

export interface SyncProviderProps {
  supabaseUrl: string;
  anonKey: string;
  userId: string;
  accessToken: string;
  expiresAt: number;
  children: ReactNode;
}

function browserLog(line: string): void {
  // RealtimeService logs one JSON object per event; keep the console quiet but useful.
  if (!line.includes('"level":"debug"')) console.info(line);
}

export function SyncProvider({ supabaseUrl, anonKey, userId, accessToken, expiresAt, children }: SyncProviderProps) {
  const [store] = useState(() => new SyncStore(userId, defaultCompareRows));
  const [deviceId, setDeviceId] = useState<string | null>(null);
  const [serviceStatus, setServiceStatus] = useState<RealtimeStatus>("connecting");
  const [online, setOnline] = useState(true);
  const [runtime, setRuntime] = useState<
    { api: ProgressApi; flush: (reason: SendReason) => void; clock: ServerClock } | null
  >(null);

  useEffect(() => {
    setDeviceId(getDeviceId());
    // Reading localStorage throws where the browser blocks site data: the outbox then lives in
    // memory for this visit (as deviceId.ts and the clock offset already do).
    const storage = localStorageIfAllowed();
    if (storage) store.attachStorage(storage);
    setOnline(navigator.onLine);

    // Writes are stamped with the server's clock as this browser learns it (a clock hours ahead must
    // not make an old position win later); the estimate is kept for the next visit, which may start
    // offline. The token's expiry is judged by the same clock.
    const clock = new ServerClock({ offsetMs: savedClockOffset() });
    const tokens = new TokenKeeper(accessToken, expiresAt, { userId, now: () => clock.now() });
    // Signed out, or signed in as someone else in another tab: this page's library, outbox and
    // Realtime link are the old user's, so leave it (a reload renders the new user's library; the
    // old user's unsent writes wait in localStorage for their next sign-in).
    const leaveIfSignedOut = (error: unknown) => {
      if (!(error instanceof SignedOutError)) return;
      if (error.userChanged) window.location.reload();
      else window.location.assign("/sign-in");
    };
    const getAccessToken = async () => {
      try {
        return await tokens.get();
      } catch (error) {
        leaveIfSignedOut(error);
        throw error;
      }
    };
    // shared/progress/api.ts over a client that sends the user's current token (functions and
    // Realtime); its subscribeToProgress is RealtimeService with catch-up and polling through the
    // API's changes endpoint.
    const supabase = userClient({ supabaseUrl, anonKey, accessToken: getAccessToken });
    const api = progressApi(supabase, clock);
    const subscription = api.subscribeToProgress(
      userId,
      (change) => {
        if (change.kind === "delete") store.removeServerRow(change.row);
        else store.applyServerRow(change.row);
      },
      { accessToken, pollIntervalMs: 5_000, backoff: { initialMs: 1_000, maxMs: 15_000 }, log: browserLog },
    );
    const service = subscription.service;
    setServiceStatus(subscription.status);
    const offStatus = subscription.onStatus((status) => {
      setServiceStatus(status);
      if (status === "live" || status === "polling") flush("reachable");
    });
    const offToken = tokens.onChange((token) => void service.setAccessToken(token));

    // ---- outbox flush: in batches, stops at the first retryable failure (lib/client/outbox.ts);
    // when it goes, and when it goes again after a failure (backoff, Retry-After), is the
    // schedule's to say (lib/client/outboxSchedule.ts), by why it is asked for.
    let disposed = false;
    const schedule = new OutboxSchedule({
      send: () =>
        flushOutbox(store, api, {
          isRetryable,
          isTransient,
          splitMayHelp,
          isSignedOut, // also when supabase-js wraps it (the token callback threw it)
          refreshToken: () => tokens.refresh().then(() => {}, leaveIfSignedOut),
          isDisposed: () => disposed,
        }).finally(() => saveClockOffset(clock.measuredOffsetMs)), // what answers measured: a sleep must not erase it
      hasPending: () => store.getSnapshot().pendingCount > 0,
      isOnline: () => navigator.onLine,
      retryAfterMs: (error) => retryAfterMsOf(error),
      isNetworkFailure,
      // The browser's tabs share the outbox, so they share when it may be sent, and send it one at a time.
      tabs: storage ? outboxTabs(storage, store) : undefined,
    });
    const flush = (reason: SendReason) => schedule.request(reason);
    const refreshTimer = setInterval(() => {
      if (tokens.remaining < 120 && navigator.onLine) void tokens.refresh().catch(leaveIfSignedOut);
    }, 30_000);
    // Whether this browser's session is still this user's (another tab may have signed out, or in as
    // someone else), with a token that is fresh (a laptop may have slept past its expiry).
    const session = createSessionCheck({ tokens, leaveIfSignedOut, syncNow: () => subscription.syncNow() });
    // Another tab of this browser queued writes (offline) or changed the shared outbox: send them too.
    // Or it says the session changed (lib/client/sessionSignal.ts): check it now, not at expiry.
    const onStorage = (event: StorageEvent) => {
      if (sessionChangedFor(event, userId)) {
        void session.sessionChanged();
        return;
      }
      // Another tab's send changed when the next one may go: arm this tab's retry by it too.
      if (event.key === scheduleKey(userId)) return flush("queued");
      if (event.key !== store.outboxKey && event.key !== null) return;
      store.reloadOutbox();
      flush("queued");
    };
    const onOnline = () => {
      setOnline(true);
      flush("online");
      // Rejoin Realtime and read what was missed now instead of waiting out the backoff.
      void session.shown();
    };
    const onOffline = () => setOnline(false);
    // A hidden tab's timers run at most once a minute and its socket may have been dropped (a
    // sleeping laptop, a phone's browser in the background): when the reader comes back to it,
    // read now, so the page shows where the other device left off before they look.
    const onVisible = () => {
      if (document.visibilityState === "visible") void session.shown();
    };
    window.addEventListener("online", onOnline);
    window.addEventListener("offline", onOffline);
    window.addEventListener("storage", onStorage);
    document.addEventListener("visibilitychange", onVisible);

    setRuntime({ api, flush, clock });
    announceSession(userId);
    flush("queued");

    return () => {
      disposed = true;
      schedule.dispose();
      clearInterval(refreshTimer);
      window.removeEventListener("online", onOnline);
      window.removeEventListener("offline", onOffline);
      window.removeEventListener("storage", onStorage);
      document.removeEventListener("visibilitychange", onVisible);
      offStatus();
      offToken();
      void subscription.unsubscribe().finally(() => supabase.realtime.disconnect());
      setRuntime(null);
    };
  }, [store, supabaseUrl, anonKey, userId, accessToken, expiresAt]);

  const save = useCallback(
    (seriesId: string, position: Position) => {
      const device = deviceId ?? getDeviceId();
      // Strictly after the version the reader is looking at (another device's, or this one's last
      // save), so a page turn made after seeing it wins over it and two quick saves keep their order.
      const at = store.nextUpdatedAt(seriesId, runtime ? runtime.clock.now() : Date.now(), device);
      const write: PendingWrite = {
        series_id: seriesId,
        chapter: position.chapter,
        page: position.page,
        percentage: position.percentage,
        cleared: false,
        device_id: device,
        updated_at: at,
      };
      store.addPending(write);
      runtime?.flush("edit");
    },
    [store, deviceId, runtime],
  );

  const status: DisplayStatus = online ? serviceStatus : "offline";
  const value = useMemo<SyncContextValue>(
    () => ({ store, userId, deviceId, status, save, flush: () => runtime?.flush("user") }),
    [store, userId, deviceId, status, save, runtime],
  );
  return <SyncContext.Provider value={value}>{children}</SyncContext.Provider>;
}

const CLOCK_OFFSET_KEY = "readsync.serverClockOffsetMs";

/** Where the browser's tabs share the outbox's schedule (lib/client/outboxSchedule.ts), per user. */
function scheduleKey(userId: string): string {
  return `readsync.outboxSchedule.${userId}`;
}

/**
 * The schedule shared by this browser's tabs: in localStorage, sent by one tab at a time under a Web
 * Lock per user. Without Web Locks (Safari before 15.4; a page over plain http other than localhost, as
 * they need a secure context) tabs may send at the same time, as before, but share the schedule.
 */
function outboxTabs(storage: Storage, store: SyncStore): OutboxTabs {
  const locks = typeof navigator !== "undefined" ? navigator.locks : undefined;
  return {
    storage,
    key: scheduleKey(store.userId),
    lock: locks ? (run) => locks.request(`readsync.outbox.${store.userId}`, run) : undefined,
    takeOver: () => store.reloadOutbox(),
  };
}

function localStorageIfAllowed(): Storage | null {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

function savedClockOffset(): number | undefined {
  try {
    const saved = Number(window.localStorage.getItem(CLOCK_OFFSET_KEY));
    return Number.isFinite(saved) && saved !== 0 ? saved : undefined;
  } catch {
    return undefined; // storage disabled
  }
}

function saveClockOffset(offsetMs: number): void {
  try {
    if (offsetMs === 0) window.localStorage.removeItem(CLOCK_OFFSET_KEY);
    else window.localStorage.setItem(CLOCK_OFFSET_KEY, String(offsetMs));
  } catch {
    // storage disabled: the estimate lives for this visit only
  }
}

export function useSync(): SyncContextValue {
  const value = useContext(SyncContext);
  if (!value) throw new Error("useSync() outside <SyncProvider>");
  return value;
}

/**
 * Whether a page the server rendered for `renderedFor` belongs to this provider's user. Next.js
 * keeps the (reader) layout across client-side navigation, so after this browser signed in as
 * another reader in another tab, a page rendered with the new session's cookie arrives inside the
 * old user's layout (store, outbox, token): it must not be shown or merged, and the tab reloads as
 * the new user.
 */
export function useRenderedForThisUser(renderedFor: string): boolean {
  const { userId } = useSync();
  const same = renderedFor === userId;
  useEffect(() => {
    if (!same) window.location.reload();
  }, [same]);
  return same;
}

export function SessionChanged() {
  return (
    <p className="card" role="alert" data-testid="session-changed">
      This browser is now signed in as another reader (in another tab). Reloading…
    </p>
  );
}

export function useSyncSnapshot(): SyncSnapshot {
  const { store } = useSync();
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot);
}
