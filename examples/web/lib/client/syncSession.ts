// One signed-in user's sync in this tab (components/SyncProvider.tsx opens one per user): the
// Realtime link to progress:<userId>, the outbox's sends and their schedule, the token keeper, the
// tab's listeners (online, offline, storage, visibilitychange, pageshow, pagehide, and Page Lifecycle's
// freeze and resume). Everything it opens, close() ends: a user change in the same page (signed out,
// then in as someone else) closes the old user's session before the new one opens, so none of the old
// user's timers, lock waits, listeners or Realtime channel goes on, and nothing queued for one user is
// ever sent with the other's token. The old user's unsent writes stay where the store saved them
// (localStorage, under that user's key) for their next sign-in. A send under way when the session ends
// (closed, signed out, or another tab's word that the session changed) is aborted, and an answer that
// comes anyway is not applied (see sendNow).
//
// Framework-free, over an environment the browser gives (browserSyncEnvironment) or a test makes
// (tests/web/sync-session.test.ts).

import { ServerClock } from "@shared/progress/serverClock.ts";
import type { RealtimeStatus } from "@shared/realtime/realtimeService.ts";
import { retryAfterMsOf } from "@shared/http/retryAfter.ts";
import { isNetworkFailure, isRetryable, isTransient, type ProgressApi, splitMayHelp } from "../progressClient.ts";
import { ProgressApiError } from "@shared/progress/api.ts";
import { type FlushResult, flushOutbox, sendable, waitsForAnswer } from "./outbox.ts";
import {
  type OutboxTabs,
  OutboxSchedule,
  type OutboxTimers,
  SEND_AGAIN,
  type SendReason,
  STALE_RUN_MS,
} from "./outboxSchedule.ts";
import type { PendingWrite, SyncStore } from "./syncStore.ts";
import { isSignedOut, SignedOutError, TokenKeeper } from "./tokenKeeper.ts";
import { sessionChangedFor } from "./sessionSignal.ts";
import { createSessionCheck } from "./sessionCheck.ts";
import { DEVICE_IDS_KEY } from "./deviceId.ts";

export interface Position {
  chapter: number;
  page: number;
  percentage: number;
}

/**
 * What the session needs of the API: the outbox's writes and the live subscription; a read of one row
 * (when there is listProgress) measures the server's clock before writes dated without it are sent.
 */
export type SyncApi =
  & Pick<ProgressApi, "subscribeToProgress" | "updateProgress" | "updateProgressBatch">
  & Partial<Pick<ProgressApi, "listProgress">>;

export interface SyncEnvironment {
  /** The window: `online`, `offline`, `storage`, `pageshow` and `pagehide` events. */
  window: Pick<EventTarget, "addEventListener" | "removeEventListener">;
  /** The document: `visibilitychange`, `freeze` and `resume` (Page Lifecycle), and whether the page is shown. */
  document: Pick<EventTarget, "addEventListener" | "removeEventListener"> & { visibilityState: string };
  isOnline(): boolean;
  /** localStorage, or null where the browser blocks site data. */
  storage: Storage | null;
  /** navigator.locks where there are Web Locks. */
  locks?: WebLocks;
  /** A client with the user's current token (asked per request) and the API over it. */
  connect(accessToken: () => Promise<string>, clock: ServerClock): { api: SyncApi; disconnect(): void };
  /** Signed out (to the sign-in page) or signed in as another user (reload: renders the new user's). */
  leave(how: "sign-in" | "reload"): void;
  /** The server clock's estimate, kept for the next visit (which may start offline). */
  clockOffset?: { load(): number | undefined; save(offsetMs: number): void };
  /**
   * The page visit's server clock (visitClock), when the page dated writes by it before the session
   * opened (SyncProvider): the session dates and re-dates by it, so their readings are its own. Without
   * it the session makes one (clockOffset, deviceClock).
   */
  clock?: ServerClock;
  setInterval(run: () => void, ms: number): unknown;
  clearInterval(handle: unknown): void;
  /**
   * The clocks the server clock reads (default: Date.now() and performance.now()): the device's, and one
   * that never steps. A test moves them by hand.
   */
  deviceClock?: { deviceNow(): number; monotonicNow(): number };
  /** The outbox schedule's timers (default: the browser's). */
  timers?: OutboxTimers;
  /** The outbox schedule's randomness, its backoff's jitter (default: Math.random); a test's own. */
  random?: () => number;
  log?(line: string): void;
}

/** What the session uses of navigator.locks. */
export interface WebLocks {
  request(name: string, options: { signal?: AbortSignal }, run: () => Promise<void>): Promise<unknown>;
}

export interface SyncSessionConfig {
  userId: string;
  accessToken: string;
  expiresAt: number;
}

/** What the Sync now control shows: nothing yet, under way, or how the last one ended. */
export type SyncNowState = "idle" | "syncing" | "done" | "failed";

/** What the page says when a Sync now's read of the server's changes failed, and nothing else did. */
export const READ_FAILED_MESSAGE = "Could not check for changes (will retry)";

/** The outbox's requests make one attempt each: the schedule retries (see sendNow). */
const ONE_TRY = { attempts: 1 } as const;

/**
 * How long one of the outbox's requests may go unanswered before this tab aborts it, at first (it grows while
 * requests in a row go unanswered: OUTBOX_REQUEST_TIMEOUT_MAX_MS) (a failure with no answer,
 * retried by the schedule, which lets go of the tabs' Web Lock meanwhile): the API client's own bound, 20 s an
 * attempt (DEFAULT_TIMEOUT_MS, for any caller), kept the lock that long, and the browser's other tabs could not
 * send. 12 s is above the progress function's bounds on one statement (its database waits end in a 503: a 2 s
 * lock timeout, an 8 s statement timeout) and its 10 s idle bound on a body that stalls (a 408), but it is no
 * bound on its answer, which may come after it, unheard: a request first waits for its turn at the function's
 * connections (without end, unless its client leaves), then up to 10 s for its transaction to begin (the store's
 * beginTimeoutMs, a 503), and a deadlock or serialization failure is tried again. Aborted, the request ends: the
 * function, its client gone, leaves that line or stops waiting for its BEGIN (nothing stored), or cancels its
 * statement, which may have committed. Safe to send again, by the next tab to take the lock or this one's retry:
 * the same write goes under the same key (a replay, stored once, answered alike), and should the aborted request
 * still be stored after a later write of the series, it is older than that write and refused as such ('self'),
 * so a write is never stored out of order nor lost (a write dated more than the server's 5 s tolerance ahead
 * excepted, as for any retry: README, Clocks ahead).
 */
export const OUTBOX_REQUEST_TIMEOUT_MS = 12_000;

/**
 * The longest a request of the outbox is left unanswered (see OUTBOX_REQUEST_TIMEOUT_MS): its bound doubles at
 * each request in a row aborted by it (12, 24, 48, 96 s, then this), and once one is answered it is the step that
 * answer came within (requestStepsWithin): the first again for an answer within 12 s (an error answered, a 503 at
 * once, leaves it as it was: it says nothing of how long a write takes). Back at 12 s after an answer
 * in 20 s, each request to a server that slow was aborted once and sent again (twice the requests, each write
 * settled a retry later).
 * At a fixed 12 s, a server slower than that at every answer stored the write (or answered it as a replay, alike
 * slow) while the outbox aborted each request and sent it again at the backoff's pace for as long as it lasted,
 * the write never settled. Below the 150 s after which Supabase's gateway gives up on a function itself (a 504).
 * Per kind of request (OutboxRequestKind: a read of one row, the clock's measure, and the writes), shared by the
 * browser's tabs (requestBoundKey): see requestSteps. The price: a tab whose requests go unanswered holds the tabs'
 * Web Lock that long at each try (up to this), where the other tabs' requests would go unanswered too (one
 * browser, one network), or be answered as slowly.
 */
export const OUTBOX_REQUEST_TIMEOUT_MAX_MS = 120_000;

/** The bound of the next request of the outbox after `unansweredInRow` requests in a row aborted by theirs. */
export function requestBoundMs(unansweredInRow: number): number {
  return Math.min(OUTBOX_REQUEST_TIMEOUT_MS * 2 ** Math.min(unansweredInRow, 16), OUTBOX_REQUEST_TIMEOUT_MAX_MS);
}

/** The fewest steps (requestBoundMs) whose bound an answer that took `elapsedMs` came within: 0 within 12 s. */
export function requestStepsWithin(elapsedMs: number): number {
  let steps = 0;
  while (requestBoundMs(steps) <= elapsedMs && requestBoundMs(steps) < OUTBOX_REQUEST_TIMEOUT_MAX_MS) steps++;
  return steps;
}

/**
 * The kinds of the outbox's requests, each with a bound of its own (requestSteps): a read of one row (the clock's
 * measure, made before writes dated without it) is answered at once by a server whose writes take 20 s, and its
 * answer says nothing of theirs. One bound for both, that read's fast answer set it back to 12 s just before the
 * write went, which was aborted at 12 s and sent again.
 */
export type OutboxRequestKind = "read" | "write";

/** Where the browser's tabs share the outbox's request bounds (requestSteps), per user. */
export function requestBoundKey(userId: string): string {
  return `readsync.outboxRequestBound.${userId}`;
}

/**
 * The steps (requestBoundMs) of the outbox's next request of each kind, as this browser's tabs learnt them: saved
 * under requestBoundKey, read before each request and written after it (one tab at a time sends, under the tabs'
 * Web Lock). A server's slowness is not a tab's: kept per tab, each tab opened (or reloaded) learnt it again, its
 * first write to a server answering in 20 s aborted at 12 s and sent again. Not a bound no tab has written for
 * STALE_RUN_MS (15 minutes, as the schedule's run of failures): a browser reopened the next day does not hold the
 * lock up to 2 minutes on a request that went unanswered the day before; nor one in storage that was cleared or is
 * not there (site data blocked): this tab's own then, from 12 s, as before.
 */
export function requestSteps(
  storage: Pick<Storage, "getItem" | "setItem" | "removeItem"> | null,
  key: string,
  wallNow: () => number,
) {
  const none = (): Record<OutboxRequestKind, number> => ({ read: 0, write: 0 });
  let here = none(); // (storage that throws: this tab's own)
  const stepsOf = (value: unknown) =>
    typeof value === "number" && Number.isInteger(value) && value >= 0 ? Math.min(value, 16) : 0;
  const load = (): Record<OutboxRequestKind, number> => {
    if (!storage) return here;
    let raw: string | null;
    try {
      raw = storage.getItem(key);
    } catch {
      return here; // storage gone
    }
    let value;
    try {
      value = raw === null ? null : JSON.parse(raw);
    } catch {
      return none(); // corrupt: as if none (written over at the next answer)
    }
    const wall = wallNow();
    const at = value?.at;
    if (!(typeof at === "number" && at > wall - STALE_RUN_MS && at <= wall + STALE_RUN_MS)) return none();
    return { read: stepsOf(value.read), write: stepsOf(value.write) };
  };
  return {
    get: (kind: OutboxRequestKind): number => load()[kind],
    set: (kind: OutboxRequestKind, steps: number): void => {
      const all = here = { ...load(), [kind]: stepsOf(steps) };
      if (!storage) return;
      try {
        if (all.read === 0 && all.write === 0) storage.removeItem(key);
        else storage.setItem(key, JSON.stringify({ ...all, at: wallNow() }));
      } catch {
        // storage full or gone: this tab's own goes on
      }
    },
  };
}

/** One request's own options: its signal (the send's, or its bound's), one attempt. */
type OutboxCall = { signal: AbortSignal; retry: typeof ONE_TRY };

export class SyncSession {
  readonly store: SyncStore;
  readonly userId: string;
  readonly clock: ServerClock;
  #status: RealtimeStatus = "connecting";
  #online: boolean;
  #syncNow: SyncNowState = "idle";
  #sending = false;
  /** Sends waiting for a refresh of the token (after a 401, or of one about to expire) before they go. */
  #waitingForToken = 0;
  #closed = false;
  /** The page was told to leave: a second leave would abort the navigation the first one began. */
  #leaving = false;
  /** The outbox's send under way, which sign-out, another tab's word or close() aborts (null: none). */
  #send: { abort: AbortController; byWord: boolean } | null = null;
  /** Reads of the server's changes answered so far (onRead: "done" or "behind"), whatever made them. */
  #readsAnswered = 0;
  #listeners = new Set<() => void>();
  readonly #schedule: OutboxSchedule;
  readonly #cleanups: (() => void)[] = [];
  readonly #subscription: ReturnType<SyncApi["subscribeToProgress"]>;

  constructor(store: SyncStore, config: SyncSessionConfig, env: SyncEnvironment) {
    if (store.userId !== config.userId) throw new Error("SyncSession: the store is another user's");
    this.store = store;
    this.userId = config.userId;
    const userId = config.userId;
    // Reading localStorage throws where the browser blocks site data: the outbox then lives in
    // memory for this visit (as deviceId.ts and the clock offset already do).
    const storage = env.storage;
    if (storage) store.attachStorage(storage, env.locks);
    this.#online = env.isOnline();

    // Writes are stamped with the server's clock as this browser learns it (a clock hours ahead must
    // not make an old position win later); the estimate is kept for the next visit, which may start
    // offline. The token's expiry is judged by the same clock.
    const clock = this.clock = env.clock ?? visitClock(env);
    const tokens = new TokenKeeper(config.accessToken, config.expiresAt, {
      userId,
      now: () => clock.now(),
      // Measured by an answer of this visit: a saved estimate (clockOffset, another visit's) is in force too
      // (ServerClock.measured), and a device clock set right since makes it wrong by as much (an hour slow
      // then: every token an hour's, expired by it, and the outbox held back, Auth answering or not, until
      // another request's answer measured the clock; never, with X-Server-Time unreadable).
      nowMeasured: () => clock.measured && clock.answers > 0,
    });
    // Signed out, or signed in as someone else in another tab: this page's library, outbox and
    // Realtime link are the old user's, so leave it (a reload renders the new user's library; the
    // old user's unsent writes wait in localStorage for their next sign-in). Not once closed: the
    // page has moved on to another user already. Once only: the check of another tab's word and a
    // send waiting for it both hear the same sign-out, and a second navigation would abort the first.
    const leaveIfSignedOut = (error: unknown) => {
      if (!(error instanceof SignedOutError) || this.#closed || this.#leaving) return;
      this.#leaving = true;
      this.#stopSend(false); // the old user's request goes no further, and its answer is not applied
      env.leave(error.userChanged ? "reload" : "sign-in");
    };
    const getAccessToken = async () => {
      // A request of a closed session (one already under way when the user changed) carries no
      // token at all: it fails as signed out, and its writes stay in this user's outbox.
      if (this.#closed) throw new SignedOutError("this user's session is closed");
      try {
        // Not refreshed inline for a request of this tab's outbox send (this.#send: it holds the tabs' Web
        // Lock): the send's `ready` refreshed a token about to expire before the lock was taken, once per send
        // (refreshBeforeSend). Inline, every request of the send waited a refresh's timeout under the lock when
        // /auth/token did not answer (offline, each request of it one more refresh), and the browser's other
        // tabs could not send meanwhile. Other requests (the link's reads) still refresh it first.
        return await tokens.get({ refresh: this.#send === null });
      } catch (error) {
        leaveIfSignedOut(error);
        throw error;
      }
    };
    // A write dated late while the clock's correction was dropped is shown as it will be sent (re-dated).
    store.datesSentBy((write) => sendable(write, clock).updated_at);
    const { api, disconnect } = env.connect(getAccessToken, clock);
    const subscription = this.#subscription = api.subscribeToProgress(
      userId,
      (change) => {
        if (this.#closed || this.#leaving) return; // (the page is on its way out: not shown)
        if (change.kind === "delete") store.removeServerRow(change.row);
        else store.applyServerRow(change.row);
      },
      { accessToken: config.accessToken, pollIntervalMs: 5_000, backoff: { initialMs: 1_000, maxMs: 15_000 }, log: env.log },
    );
    this.#status = subscription.status;
    const offStatus = subscription.onStatus((status) => {
      if (this.#closed) return;
      this.#status = status;
      this.#emit();
      if (status === "live" || status === "polling") this.flush("reachable");
    });
    const offToken = tokens.onChange((token) => void subscription.service.setAccessToken(token));
    // Any read of the server's changes that is answered ends a failed Sync now's "could not check":
    // the press's own, the tab's (shown again, back online), and the link's (the catch-up after a
    // join, a poll while Realtime is down, the safety read while live). One that fails adds nothing:
    // the link reads again by itself (while Realtime is down, the header says Offline meanwhile), and
    // only the reader's press is answered in the banner.
    const offRead = subscription.onRead((outcome) => {
      if (outcome === "failed") return;
      this.#readsAnswered++;
      this.#readSucceeded();
    });

    // Whether this browser's session is still this user's (another tab may have signed out, or in as
    // someone else), with a token that is fresh (a laptop may have slept past its expiry).
    // Until another tab's word that the session changed is answered, the outbox waits (sessionCheck.ts).
    const session = createSessionCheck({
      tokens,
      leaveIfSignedOut,
      syncNow: () => subscription.syncNow(),
      ...(env.timers ? { timers: env.timers } : {}),
    });

    // ---- outbox flush: in batches, stops at the first retryable failure (outbox.ts); when it goes,
    // and when it goes again after a failure (backoff, Retry-After), is the schedule's to say
    // (outboxSchedule.ts), by why it is asked for.
    // A read made for the clock whose answer taught it nothing (X-Server-Time stripped by a proxy, or
    // not exposed by CORS) is not made again at each flush of this visit (outbox.ts).
    const unmeasurable: { answers?: number } = {};
    // The refresh of the token a 401 started (flushOutbox's refreshToken) while it is under way: the next send
    // waits for it (ready), so that it carries the fresh token, without the tabs' Web Lock.
    let refreshAfter401: Promise<void> | null = null;
    // The refresh of a token about to expire (TokenKeeper.dueForRefresh) made for the next send while it is under
    // way: the send waits for it (ready) without the tabs' Web Lock, as after a 401. Once per send
    // (refreshTriedForSend, cleared as the schedule begins a send, ready's `begins`, and as one goes; a 401's
    // refresh still under way then counts): a refresh that fails (offline) lets the send go with the token held
    // (its request fails alike, and is retried with the backoff), where asking again at once would loop without
    // end. Cleared only as a send went, one that ended with nothing sent (another tab sent the writes while the
    // refresh failed) kept it, and the tab's next page turn went with the token about to expire, or expired (a
    // 401, one more step of the backoff), no refresh asked.
    // Also a token the API refused (a 401: TokenKeeper.knownUnusable), and at most once per run of the schedule
    // (its try, and the sends it makes again: refreshedThisRun): a run whose refresh failed and whose request was
    // then answered 401 (Auth down, the token expired meanwhile) asked /auth/token again at that 401, two
    // refreshes a run. The refresh a 401 starts in a run that asked none is the next run's (claimed by it as it
    // begins, ended or not: a401Unclaimed), and a token known unusable once the run's refresh has failed is not
    // sent (a 401 for sure): the run fails as that 401 would, with no request (unusableToken).
    let refreshBeforeSend: Promise<void> | null = null;
    let refreshTriedForSend = false;
    let refreshedThisRun = false;
    let a401Unclaimed = false;
    const refreshForSend = (): Promise<void> | null => {
      if (refreshBeforeSend) return refreshBeforeSend;
      if (refreshTriedForSend || !(tokens.dueForRefresh || tokens.knownUnusable)) return null;
      refreshTriedForSend = true;
      refreshedThisRun = true;
      const refresh: Promise<void> = refreshBeforeSend = tokens.refresh().then(() => {}, leaveIfSignedOut)
        .finally(() => {
          if (refreshBeforeSend === refresh) refreshBeforeSend = null;
        });
      return refresh;
    };
    // While a send waits for one of these refreshes (at most the refresh's 10 s timeout) the tab is sending, as
    // the reader sees it (Sync now shows "Syncing…"): the write goes as soon as it has ended. Not while it waits
    // for /auth/token's answer to another tab's word, which may take the backoff's minutes.
    const waitForRefresh = (refresh: Promise<void>): Promise<void> => {
      this.#waitingForToken++;
      this.#updateSending();
      return refresh.finally(() => {
        this.#waitingForToken--;
        this.#updateSending();
      });
    };
    // Requests of the outbox of each kind aborted by their bound in a row (none answered since): the next one's
    // bound grows (requestBoundMs), so a server slower than OUTBOX_REQUEST_TIMEOUT_MS at every answer is heard in
    // the end. An answer (not an error's) sets it to the step it came within (requestStepsWithin). Shared by the
    // browser's tabs.
    const timers: Pick<OutboxTimers, "setTimeout" | "clearTimeout" | "now" | "wallNow"> = env.timers ?? {
      now: () => performance.now(),
      setTimeout: (run, ms) => globalThis.setTimeout(run, ms),
      clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
    };
    const steps = requestSteps(storage, requestBoundKey(userId), () => timers.wallNow?.() ?? Date.now());
    const sendNow = () => {
      refreshTriedForSend = false; // (the next send may refresh a token about to expire again: ready)
      // Each send's requests carry a signal of its own: sign-out, another tab's word that the session
      // changed, or close() aborts the request under way (#stopSend). One attempt per request: a failure
      // is retried by the schedule, which lets go of the tabs' Web Lock while it waits and takes it again
      // to send (inside the API client's own retries, a tab backing off held it, and the browser's other
      // tabs could not send meanwhile).
      const send = this.#send = { abort: new AbortController(), byWord: false };
      this.#updateSending();
      const { signal } = send.abort;
      // Each request aborted once its bound has passed unanswered (by the schedule's timers): OUTBOX_REQUEST_TIMEOUT_MS,
      // longer after requests in a row aborted so (requestBoundMs).
      // An answer that arrives once the send's signal has aborted (it was on its way) is dropped, not applied:
      // its writes stay queued, saved for the user's next send (sent again, a replay if it was stored).
      const unlessStopped = async <T>(kind: OutboxRequestKind, request: (call: OutboxCall) => Promise<T>): Promise<T> => {
        // (Not AbortSignal.any: newer than the browsers this page otherwise runs in.)
        const bound = new AbortController();
        const stop = () => bound.abort(signal.reason);
        signal.addEventListener("abort", stop, { once: true });
        if (signal.aborted) stop();
        const stepsBefore = steps.get(kind);
        const boundMs = requestBoundMs(stepsBefore);
        const sentAt = timers.now();
        let unanswered = false;
        const timer = timers.setTimeout(() => {
          unanswered = true;
          bound.abort(new Error(`unanswered after ${boundMs / 1000} s`));
        }, boundMs);
        try {
          const answer = await request({ signal: bound.signal, retry: ONE_TRY });
          // Answered in time: the next request's bound is the step this answer came within (12 s: within 12 s).
          steps.set(kind, requestStepsWithin(timers.now() - sentAt));
          if (signal.aborted) throw new SignedOutError("the send was stopped: the session ended or may have");
          return answer;
        } catch (error) {
          // Aborted by its bound: the next one waits longer. Otherwise as it was: an error answered (an HTTP
          // status) came within its bound, and one answered at once (a 401, a 429, the function's 503 after its 2 s
          // lock timeout, a server overloaded) says nothing of how long a write takes; set back to 12 s by it, the
          // next write to a server answering writes in 20 s was aborted at 12 s and sent again. Nor does no answer
          // (no network, stopped).
          if (unanswered) steps.set(kind, stepsBefore + 1);
          throw error;
        } finally {
          timers.clearTimeout(timer);
          signal.removeEventListener("abort", stop);
        }
      };
      const transport = {
        updateProgress: (write: Parameters<SyncApi["updateProgress"]>[0]) =>
          unlessStopped("write", (call) => api.updateProgress(write, call)),
        updateProgressBatch: (writes: Parameters<SyncApi["updateProgressBatch"]>[0]) =>
          unlessStopped("write", (call) => api.updateProgressBatch(writes, call)),
      };
      return flushOutbox(store, transport, {
        isRetryable,
        isTransient,
        splitMayHelp,
        // Also when supabase-js wraps it (the token callback threw it), and whatever ended a stopped send
        // (aborted): not a failure of the API, nothing shared with the other tabs, nothing said.
        isSignedOut: (error) => signal.aborted || isSignedOut(error),
        // Not waited for by the flush (it ends at once, letting go of the tabs' Web Lock): the next send waits
        // for it (the schedule's ready), without the lock, which a refresh of up to 10 s held. Not asked in a
        // run that asked one already (refreshedThisRun): the next run asks, once, before the refused token goes.
        refreshToken: () => {
          tokens.refused();
          if (refreshedThisRun) return Promise.resolve();
          a401Unclaimed = true;
          const refresh: Promise<void> = refreshAfter401 = tokens.refresh().then(() => {}, leaveIfSignedOut)
            .finally(() => {
              if (refreshAfter401 === refresh) refreshAfter401 = null;
            });
          return refresh;
        },
        isDisposed: () => this.#closed || signal.aborted,
        // Writes dated while the clock had no measured offset (an hour late after a sleep) are re-dated.
        redate: {
          clock,
          measure: () => unlessStopped<unknown>("read", (call) => api.listProgress?.({ limit: 1 }, call) ?? Promise.resolve()),
          unmeasurable,
        },
      }).then((result) => ({ result, byWord: send.byWord })).finally(() => {
        if (this.#send === send) this.#send = null;
        env.clockOffset?.save(clock.measuredOffsetMs); // what answers measured: a sleep must not erase it
        this.#updateSending();
      });
    };
    const schedule = this.#schedule = new OutboxSchedule({
      send: async () => {
        if (this.#closed) return { outcome: "disposed" } as const;
        // Refused by the API, or expired by the server's clock, and its refresh for this run failed (Auth down,
        // offline): not sent (see refreshForSend).
        if (tokens.knownUnusable) return { outcome: "failed", error: unusableToken() } as const;
        const { result, byWord } = await sendNow();
        // Stopped by such a word while under way: sent again once the check says the session is still
        // this user's (the schedule waits for its answer: ready); signed out, the page is leaving.
        return byWord && !this.#closed && !this.#leaving ? SEND_AGAIN : result;
      },
      // Another tab said the session changed and /auth/token has not answered yet: the writes wait (queued,
      // this send's turn held, the tabs' Web Lock not) until it has; signed out, the keeper gives no token and
      // the flush ends "signed out", the writes kept for the next sign-in.
      // And a refresh of the token after a 401 while it is under way (refreshAfter401), or of a token about to
      // expire, once per send (refreshForSend).
      ready: (begins) => {
        // (A 401's refresh as a run begins, under way or ended since, is its try: waited for, not asked again.)
        if (begins) {
          refreshTriedForSend = refreshedThisRun = refreshAfter401 !== null || a401Unclaimed;
          a401Unclaimed = false;
        }
        const unsure = session.unsure();
        if (unsure) return unsure;
        const refresh = refreshAfter401 ?? refreshForSend();
        return refresh ? waitForRefresh(refresh) : null;
      },
      hasPending: () => store.getSnapshot().pendingCount > 0,
      isOnline: () => env.isOnline(),
      retryAfterMs: (error) => retryAfterMsOf(error),
      isNetworkFailure,
      // The browser's tabs share the outbox, so they share when it may be sent, and send it one at a time.
      tabs: storage ? outboxTabs(storage, store, env.locks) : undefined,
      ...(env.timers ? { timers: env.timers } : {}),
      ...(env.random ? { random: env.random } : {}),
    });
    // The site's storage cleared while this tab is open: the schedule the tabs share goes back with the
    // outbox (the backoff, a Retry-After), or the next send of any tab went at once.
    const offCleared = store.onStorageCleared(() => schedule.writeBack());
    const refreshTimer = env.setInterval(() => {
      if (tokens.remaining < 120 && env.isOnline()) void tokens.refresh().catch(leaveIfSignedOut);
    }, 30_000);
    // Another tab of this browser queued writes (offline) or changed the shared outbox: send them too.
    // Or it says the session changed (sessionSignal.ts): check it now, not at expiry.
    const onStorage = (event: Event) => {
      const e = event as Event & { key: string | null; newValue: string | null }; // a StorageEvent
      if (sessionChangedFor(e, userId)) {
        // The send under way goes with a token that may be a signed-out session's: stopped now (its
        // writes stay queued), and sent again only once /auth/token says the session is still this user's.
        void session.sessionChanged();
        this.#stopSend(true);
        return;
      }
      // Another tab's send had a write refused: say so here too (or it was dismissed there).
      if (e.key === store.refusedKey) return store.takeRefused(e.newValue);
      // Another tab's send changed when the next one may go: arm this tab's retry by it too.
      if (e.key === scheduleKey(userId)) return this.flush("queued");
      // Another tab named writes answered (the lists of answered writes): let go of them here, and show the
      // waiting write as it will be sent (dated after an earlier write's stored key, SyncStore.#asSent).
      // Such an answer need not change the saved outbox (a later write of the series stays in it), and
      // Realtime may bring its row here first: the view then showed the earlier position until its next
      // update.
      if (e.key === store.answeredKey || e.key === store.latestAnsweredKey) return store.takeAnswered();
      // Another tab wrote its clear mark: it opened after the site's data was cleared (or told a clear first).
      // This tab looks now, and writes back what it holds (a refused write's message the new tab then shows),
      // not at its next page turn or send.
      if (e.key === store.markKey) return store.checkCleared();
      // Another tab added ids to this browser's list (a tab opened after a clear, a page open through it writing
      // its ids back): a version saved under one is named this browser's now, not at the store's next change.
      if (e.key === DEVICE_IDS_KEY) return store.deviceIdsChanged();
      if (e.key !== store.outboxKey && e.key !== null) return;
      store.reloadOutbox();
      this.flush("queued");
    };
    const onOnline = () => {
      this.#setOnline(true);
      this.flush("online");
      // Rejoin Realtime and read what was missed now instead of waiting out the backoff.
      void session.shown();
    };
    const onOffline = () => this.#setOnline(false);
    // Restored from the back/forward cache (the reader went back to this page), or resumed after the browser
    // froze it (Page Lifecycle: `freeze` and `resume` at the document; Chromium freezes a hidden tab to save
    // power, and a page it keeps in that cache): it heard no storage event, and no timer ran, meanwhile. The
    // outbox, the answered writes, a refused write's message and a clear are read again now
    // (SyncStore.rereadStorage), not at the next event or send (until then it showed, and could send, a write
    // another tab got answered meanwhile); then as when shown again. (A discarded tab reloaded, with
    // `document.wasDiscarded`, is a new page: its session opens and reads all of it, as at any load.)
    const onRestored = () => {
      // What it holds of the shared schedule and a refused write's message was read before it was kept:
      // not written back at a clear found now (another tab may have ended the run, or dismissed it, unheard).
      schedule.resumed();
      store.rereadStorage();
      this.#setOnline(env.isOnline());
      this.flush("queued");
      readMissed();
    };
    // What the page missed is read when it comes back (onRestored, onVisible): once when the events come
    // together. A frozen background tab the reader goes back to is resumed (`resume`), then shown
    // (`visibilitychange`), and read the server twice; a read asked for while the one another of these events
    // asked for is under way is that read (under way: until session.shown() settles, the read and the session
    // check beside it both answered, the check within its 10 s timeout; with a token about to run out, until
    // the check is answered, the read going after it). Either event alone still reads, and one that comes
    // after that (a tab resumed while hidden, shown much later) reads again, and so does one after the page
    // was frozen or kept again (onKept): the read under way then read before it, and its answer may have
    // waited out the freeze, hours older than what the page missed.
    let missedRead: Promise<void> | null = null;
    const readMissed = () => {
      if (missedRead) return;
      const read = missedRead = session.shown().finally(() => {
        if (missedRead === read) missedRead = null;
      });
    };
    // Chromium restores a page from its back/forward cache with `resume`, then `pageshow` (persisted): read
    // once, at the first. Set by a resume, until the page is hidden or frozen again.
    let resumedSinceKept = false;
    const onResume = () => {
      resumedSinceKept = true;
      onRestored();
    };
    const onKept = () => { // (`freeze`, `pagehide`)
      resumedSinceKept = false;
      missedRead = null; // (see readMissed)
    };
    const onPageShow = (event: Event) => {
      // (Not on a first load: the session opens after it.)
      if (!(event as Event & { persisted?: boolean }).persisted) return;
      if (resumedSinceKept) return void (resumedSinceKept = false); // read at its `resume` already
      onRestored();
    };
    // A hidden tab's timers run at most once a minute and its socket may have been dropped (a
    // sleeping laptop, a phone's browser in the background): when the reader comes back to it,
    // read now, so the page shows where the other device left off before they look.
    const onVisible = () => {
      if (env.document.visibilityState === "visible") readMissed();
    };
    env.window.addEventListener("online", onOnline);
    env.window.addEventListener("offline", onOffline);
    env.window.addEventListener("storage", onStorage);
    env.window.addEventListener("pageshow", onPageShow);
    env.window.addEventListener("pagehide", onKept);
    env.document.addEventListener("visibilitychange", onVisible);
    env.document.addEventListener("freeze", onKept);
    env.document.addEventListener("resume", onResume);

    this.#cleanups.push(
      () => schedule.dispose(),
      () => session.dispose(),
      () => store.datesSentBy(null),
      () => env.clearInterval(refreshTimer),
      () => env.window.removeEventListener("online", onOnline),
      () => env.window.removeEventListener("offline", onOffline),
      () => env.window.removeEventListener("storage", onStorage),
      () => env.window.removeEventListener("pageshow", onPageShow),
      () => env.window.removeEventListener("pagehide", onKept),
      offCleared,
      () => env.document.removeEventListener("visibilitychange", onVisible),
      () => env.document.removeEventListener("freeze", onKept),
      () => env.document.removeEventListener("resume", onResume),
      offStatus,
      offRead,
      offToken,
      () => void subscription.unsubscribe().finally(() => disconnect()),
    );
    this.flush("queued");
  }

  /** The Realtime link's status (live, polling, connecting, offline). */
  get status(): RealtimeStatus {
    return this.#status;
  }

  /** The browser's word on its network (its `online` and `offline` events). */
  get online(): boolean {
    return this.#online;
  }

  /** Where the reader's last Sync now stands. */
  get syncNowState(): SyncNowState {
    return this.#syncNow;
  }

  /** Whether this tab is sending the outbox now. */
  get sending(): boolean {
    return this.#sending;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Runs `listener` when status, online, sending or the Sync now state change. */
  subscribe = (listener: () => void): (() => void) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  /** Asks for a send of the outbox, for `reason` (the schedule says when it goes). */
  flush(reason: SendReason): void {
    // (The schedule is made after the Realtime subscription, whose status may already be reported.)
    if (!this.#closed && this.#schedule) this.#schedule.request(reason);
  }

  /**
   * An optimistic save: shown at once, queued in the outbox, sent as an edit. On a closed session (a
   * page's handler still holding it for a moment after the provider closed it) the write is kept in
   * its user's outbox, saved under their key, and goes with that user's next session: a page turn is
   * never dropped, and a closed session sends nothing.
   */
  save(seriesId: string, position: Position, deviceId: string): void {
    const write = datedWrite(this.store, this.clock, seriesId, position, deviceId);
    this.store.addPending(write);
    this.flush("edit"); // (nothing once closed)
  }

  /**
   * The reader's Sync now: the outbox goes at once (within the backoff, not within a Retry-After;
   * in a tab whose send another tab's answered meanwhile, as the schedule says: never the same
   * writes twice), and what the server has is read now. Resolves with how it ended: "failed" when
   * writes are still waiting (the server did not take them, or asked to wait) or the read failed (or
   * could not be made: the server's Retry-After holds the reads too);
   * the page says which in the error banner ("Not saved yet (will retry)", else READ_FAILED_MESSAGE),
   * unless it already shows a message.
   */
  async syncNow(): Promise<SyncNowState> {
    if (this.#closed || this.#syncNow === "syncing") return this.#syncNow;
    this.#setSyncNow("syncing");
    const sent = this.#schedule.sendNow();
    // (The link's syncNow() never rejects: it resolves "failed" when its read failed or could not be
    // made, a Retry-After holding it; an answered one has already taken a failed read's message away:
    // onRead.)
    // A read that failed is made good by one answered after it while the send went on (the link's
    // own: the catch-up after a join, a poll; the reads never overlap, so it began after the press's):
    // it read what the press's could not, and its answer must not be followed by "could not check".
    let answeredWhenReadEnded = 0;
    const read = this.#subscription.syncNow().then((outcome) => outcome !== "failed").then((ok) => {
      answeredWhenReadEnded = this.#readsAnswered;
      return ok;
    });
    const [result, readAnswered] = await Promise.all([sent, read]);
    if (this.#closed) return this.#syncNow;
    const readOk = readAnswered || this.#readsAnswered > answeredWhenReadEnded;
    const waiting = this.store.getSnapshot().pendingCount > 0;
    const failed = !readOk || waiting;
    // Only a failed read's message may give way: a refused write's, or "Not saved yet", stays.
    const shown = this.store.getSnapshot().lastError;
    const replaceable = shown === null || shown === READ_FAILED_MESSAGE;
    if (waiting && replaceable) {
      // A passing outage shows nothing by itself (the retries go on); asked by the reader, say it,
      // also when nothing was sent because the server's Retry-After still holds the outbox (or
      // another tab's send, which this one waited for, failed).
      const held = this.#schedule.retryAfterLeftMs;
      const why = result?.outcome === "failed"
        ? `: ${result.error instanceof Error ? result.error.message : String(result.error)}`
        : held > 0
        ? `: the server asked to wait ${Math.ceil(held / 1000)} s more`
        : "";
      this.store.setError(`Not saved yet (will retry)${why}`, { untilAnswered: true });
    } else if (!readOk && !waiting && shown === null) {
      // Only the read failed (nothing waits, or it was saved): the button's tooltip alone would say so.
      // It goes as "Not saved yet" does (a write answered here or in another tab), or once a later read
      // succeeds; it never takes the place of another message.
      this.store.setError(READ_FAILED_MESSAGE, { untilAnswered: true });
    }
    this.#setSyncNow(failed ? "failed" : "done");
    return this.#syncNow;
  }

  /** Ends everything this session opened (idempotent); the store's saved outbox stays. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopSend(false); // its request is aborted, and an answer that comes anyway is not applied
    for (const cleanup of this.#cleanups.splice(0)) {
      try {
        cleanup();
      } catch {
        // one that fails must not keep the others open
      }
    }
    this.#listeners.clear();
  }

  /**
   * Aborts the outbox's send under way (its request in flight and the rest of its batches); its writes
   * stay queued, in their user's saved outbox. `byWord`: for another tab's word that the session
   * changed, after which the send goes again if the session is still this user's.
   */
  #stopSend(byWord: boolean): void {
    const send = this.#send;
    if (!send || send.abort.signal.aborted) return;
    send.byWord = byWord;
    send.abort.abort(new SignedOutError(byWord ? "another tab says the session changed" : "this user's session ended"));
  }

  /** A read of the server's changes was answered (any, onRead): a failed one's message goes (none other). */
  #readSucceeded(): void {
    if (this.#closed) return;
    if (this.store.getSnapshot().lastError === READ_FAILED_MESSAGE) this.store.setError(null);
  }

  #setOnline(online: boolean): void {
    if (this.#online === online) return;
    this.#online = online;
    this.#emit();
  }

  /** Sending: a send under way (#send), or one waiting for the token's refresh (#waitingForToken). */
  #updateSending(): void {
    const sending = this.#send !== null || this.#waitingForToken > 0;
    if (this.#sending === sending) return;
    this.#sending = sending;
    this.#emit();
  }

  #setSyncNow(state: SyncNowState): void {
    if (this.#syncNow === state) return;
    this.#syncNow = state;
    this.#emit();
  }

  #emit(): void {
    if (this.#closed) return;
    for (const listener of [...this.#listeners]) listener();
  }
}

/**
 * The store for `userId`: `current` while it is that user's, else a new, empty one (the provider's
 * user changed without a remount: the old user's rows, pending writes and notices stay in theirs,
 * its saved outbox under their key).
 */
export function storeForUser<S extends { readonly userId: string }>(current: S, userId: string, create: (userId: string) => S): S {
  return current.userId === userId ? current : create(userId);
}

/**
 * A page turn of `seriesId` made now, as save() queues it. Dated strictly after the version the reader
 * is looking at (another device's, or this one's last save, as it is sent), so a page turn made after
 * seeing it wins over it and two quick saves keep their order. Dated without a measured offset (none
 * yet, or dropped after a sleep or a step of the device's clock), it keeps what the outbox re-dates it
 * by, before it is sent, once an offset is measured (PendingWrite.unmeasured). Its place in the outbox
 * is its number (PendingWrite.seq, given by SyncStore.addPending), not its date: dated under a measured
 * offset after such a write still queued, it is dated by the corrected clock, after what that write is
 * sent as, not after its late date.
 */
export function datedWrite(
  store: SyncStore,
  clock: ServerClock,
  seriesId: string,
  position: Position,
  deviceId: string,
): PendingWrite {
  const nowMs = clock.now();
  const reading = clock.unmeasuredReading();
  // This device's queued writes count by the date they are sent with: a write still to be re-dated is
  // dated late (an hour, after a sleep), and a page turn dated after it would be that late too. One that
  // waits for an answer to re-date it (another visit's, nothing answered here yet) counts by what it had
  // to follow (its afterMs, if any): this page turn replaces it, and placed after its late date it was
  // sent that late for good, beating a phone's reading of that hour. Were it sent meanwhile (another
  // tab), the key it was stored under still goes first (SyncStore.ownStoredFloor).
  const sentAs = (write: PendingWrite) => {
    if (!waitsForAnswer(write, clock)) return sendable(write, clock).updated_at;
    const after = write.unmeasured?.afterMs;
    const at = typeof after === "number" ? new Date(after - 1) : null; // (one past a Date's range is none)
    return at && Number.isFinite(at.getTime()) ? at.toISOString() : "";
  };
  const updatedAt = store.nextUpdatedAt(seriesId, nowMs, sentAs);
  const afterMs = reading ? store.redatingFloor(seriesId, nowMs, sentAs) : undefined;
  return {
    series_id: seriesId,
    chapter: position.chapter,
    page: position.page,
    percentage: position.percentage,
    cleared: false,
    device_id: deviceId,
    updated_at: updatedAt,
    ...(reading ? { unmeasured: { ...reading, ...(afterMs !== undefined ? { afterMs } : {}) } } : {}),
  };
}

/**
 * The server clock of a page visit, as a session makes it: the saved estimate, the clocks the
 * environment gives. SyncProvider makes one before any session opens and gives it to each (`clock`).
 */
export function visitClock(env: Pick<SyncEnvironment, "clockOffset" | "deviceClock">): ServerClock {
  return new ServerClock({ offsetMs: env.clockOffset?.load(), ...env.deviceClock });
}

/**
 * A page turn saved while no session of its user is open (SyncProvider: before its effect opened one,
 * or between two): queued dated as the session would date it (datedWrite, by the visit's clock: the
 * saved offset, or a reading the outbox re-dates by once the session's first answer comes), and sent
 * once a session opens with that clock.
 */
export function saveBeforeSession(
  store: SyncStore,
  clock: ServerClock,
  seriesId: string,
  position: Position,
  deviceId: string,
): void {
  store.addPending(datedWrite(store, clock, seriesId, position, deviceId));
}

/**
 * Why a run of the outbox sent nothing: the token held is known unusable (TokenKeeper.knownUnusable) and the run's
 * refresh failed. What its request would have been answered (a 401, the API's error): a passing failure, with an
 * answer (the backoff's pace, not a network failure's).
 */
function unusableToken(): ProgressApiError {
  return new ProgressApiError(
    401,
    "token_expired",
    "not sent: the access token has expired or was refused, and could not be refreshed",
  );
}

/** Where the browser's tabs share the outbox's schedule (outboxSchedule.ts), per user. */
export function scheduleKey(userId: string): string {
  return `readsync.outboxSchedule.${userId}`;
}

/** The name of the Web Lock under which one tab at a time sends this user's outbox. */
export function outboxLockName(userId: string): string {
  return `readsync.outbox.${userId}`;
}

/**
 * The schedule shared by this browser's tabs: in localStorage, sent by one tab at a time under a Web
 * Lock per user. Without Web Locks (Safari before 15.4; a page over plain http other than localhost, as
 * they need a secure context) tabs may send at the same time, as before, but share the schedule.
 */
function outboxTabs(storage: Storage, store: SyncStore, locks: SyncEnvironment["locks"]): OutboxTabs {
  return {
    storage,
    key: scheduleKey(store.userId),
    lock: locks ? (run, signal) => locks.request(outboxLockName(store.userId), signal ? { signal } : {}, run) : undefined,
    takeOver: () => store.reloadOutbox(),
    noticeCleared: () => store.checkCleared(),
  };
}

export type { FlushResult };
