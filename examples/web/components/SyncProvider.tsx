"use client";

// The signed-in part of the app shares one SyncProvider (it lives in the (reader) layout, so moving
// between the library and a series keeps the same Realtime link). What it runs for the signed-in
// user is a SyncSession (lib/client/syncSession.ts), one per user: a user change closes the old
// one and opens the new user's over a store of their own.
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

import { createContext, type ReactNode, useCallback, useContext, useEffect, useMemo, useRef, useState, useSyncExternalStore } from "react";
import { defaultCompareRows } from "@shared/realtime/progressContract.ts";
import type { RealtimeStatus } from "@shared/realtime/realtimeService.ts";
import { getDeviceId } from "@/lib/client/deviceId.ts";
import { userClient, progressApi } from "@/lib/progressClient.ts";
import { type SyncSnapshot, SyncStore } from "@/lib/client/syncStore.ts";
import {
  type Position,
  saveBeforeSession,
  storeForUser,
  type SyncEnvironment,
  type SyncNowState,
  SyncSession,
  visitClock,
} from "@/lib/client/syncSession.ts";
import type { ServerClock } from "@shared/progress/serverClock.ts";
import { announceSession } from "@/lib/client/sessionSignal.ts";

export type DisplayStatus = RealtimeStatus;
export type { Position, SyncNowState };

interface SyncContextValue {
  store: SyncStore;
  userId: string;
  deviceId: string | null;
  status: DisplayStatus;
  save(seriesId: string, position: Position): void;
  /** Sends the outbox now (within the backoff, not within a Retry-After). */
  flush(): void;
  /** The reader's Sync now: the outbox at once and a read of what the server has. */
  syncNow(): void;
  /**
   * Sync now can act: this user's session is open (the page's script has run). False in the
   * server-rendered page, where the button's handler does not exist yet.
   */
  syncAvailable: boolean;
  /** The last Sync now: idle (none yet), syncing, done or failed. */
  syncNowState: SyncNowState;
  /** This tab is sending the outbox (Sync now waits for it). */
  sending: boolean;
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
  // One store per user. The (reader) layout keys this provider by the user, but a user change that
  // reaches it without a remount (a session switch in the same page) must not keep the old user's
  // store: its rows and outbox are then neither shown to the new user nor sent with their token.
  // The store is made during render (pages seed it while rendering), the session that syncs it in
  // the effect below, which closes the old user's first.
  const [owned, setOwned] = useState(() => newStore(userId));
  const store = storeForUser(owned, userId, newStore);
  if (store !== owned) setOwned(store);
  const [deviceId, setDeviceId] = useState<string | null>(null);
  const [session, setSession] = useState<SyncSession | null>(null);
  // The session open now, set in the effect itself: a save made before the page renders again (a
  // handler of the last render) goes to it, not to the session that render saw, closed meanwhile.
  const openSession = useRef<SyncSession | null>(null);
  // The visit's server clock (the saved offset; made at the first need, in the browser): the sessions
  // date by it, and so does a save made before one opened, so that save is corrected (or re-dated) alike.
  const clockRef = useRef<ServerClock | null>(null);
  const clock = useCallback(() => (clockRef.current ??= visitClock({ clockOffset: browserClockOffset })), []);
  // A session of another store (the old user's, in the render before the effect replaced it) is not
  // this user's: its status, flush and Sync now are not offered.
  const live = session && session.store === store && !session.closed ? session : null;
  const view = useSyncExternalStore(
    useCallback((listener: () => void) => live ? live.subscribe(listener) : () => {}, [live]),
    () => live ? `${live.online ? live.status : "offline"}|${live.syncNowState}|${live.sending}` : "connecting|idle|false",
    () => "connecting|idle|false",
  );
  const [status, syncNowState, sendingFlag] = view.split("|") as [DisplayStatus, SyncNowState, string];
  const sending = sendingFlag === "true";

  useEffect(() => {
    setDeviceId(getDeviceId());
    const opened = new SyncSession(store, { userId, accessToken, expiresAt }, browserSyncEnvironment(supabaseUrl, anonKey, clock()));
    openSession.current = opened;
    setSession(opened);
    announceSession(userId);
    return () => {
      if (openSession.current === opened) openSession.current = null;
      opened.close();
      setSession((current) => (current === opened ? null : current));
    };
  }, [store, supabaseUrl, anonKey, userId, accessToken, expiresAt, clock]);

  const save = useCallback(
    (seriesId: string, position: Position) => {
      if (store.userId !== userId) return;
      const device = deviceId ?? getDeviceId();
      const open = openSession.current;
      if (open && open.store === store && !open.closed) return open.save(seriesId, position, device);
      // Before the session opened (or between two): queued dated as the session dates (its clock), sent once it has.
      saveBeforeSession(store, clock(), seriesId, position, device);
    },
    [store, userId, deviceId, clock],
  );

  const value = useMemo<SyncContextValue>(
    () => ({
      store,
      userId,
      deviceId,
      status,
      save,
      flush: () => live?.flush("user"),
      syncNow: () => void live?.syncNow(),
      syncAvailable: live !== null,
      syncNowState,
      sending,
    }),
    [store, userId, deviceId, status, save, live, syncNowState, sending],
  );
  return <SyncContext.Provider value={value}>{children}</SyncContext.Provider>;
}

function newStore(userId: string): SyncStore {
  return new SyncStore(userId, defaultCompareRows);
}

const CLOCK_OFFSET_KEY = "readsync.serverClockOffsetMs";

/** What a SyncSession needs of this browser tab (lib/client/syncSession.ts). */
function browserSyncEnvironment(supabaseUrl: string, anonKey: string, clock: ServerClock): SyncEnvironment {
  return {
    window,
    document,
    isOnline: () => navigator.onLine,
    storage: localStorageIfAllowed(),
    locks: typeof navigator !== "undefined" ? navigator.locks : undefined,
    // shared/progress/api.ts over a client that sends the user's current token (functions and
    // Realtime); its subscribeToProgress is RealtimeService with catch-up and polling through the
    // API's changes endpoint.
    connect: (accessToken, clock) => {
      const supabase = userClient({ supabaseUrl, anonKey, accessToken });
      return { api: progressApi(supabase, clock), disconnect: () => supabase.realtime.disconnect() };
    },
    leave: (how) => (how === "reload" ? window.location.reload() : window.location.assign("/sign-in")),
    clockOffset: browserClockOffset,
    clock,
    setInterval: (run, ms) => window.setInterval(run, ms),
    clearInterval: (handle) => window.clearInterval(handle as number),
    log: browserLog,
  };
}

/** The server clock's estimate, kept in localStorage for the next visit. */
const browserClockOffset = { load: savedClockOffset, save: saveClockOffset };

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
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getServerSnapshot);
}
