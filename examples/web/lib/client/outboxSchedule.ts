// When this tab sends its outbox (lib/client/outbox.ts sends it; components/SyncProvider.tsx says
// why a send is wanted). Against a real Supabase project, a fixed pace of retries is rude: after an
// outage every tab of every reader would come back at the same moment, every few seconds, for as long
// as it lasts, and a 429's or 503's Retry-After would go unheard. So:
//
//   - after failed sends in a row, the next one waits a random time under a ceiling that doubles
//     (OUTBOX_BACKOFF: full jitter, shared/realtime/backoff.ts, as Realtime's rejoins); a send that
//     gets through resets it, and so does one that failed after the API answered some of its writes
//     (the failure then counts as the first of a new run);
//   - a Retry-After on the failure (read from the API client's error, capped at 5 minutes by
//     shared/http/retryAfter.ts) holds every send until it has passed, whatever asks for it; the
//     retry after it is spread like any other (its jitter comes on top), so a crowd told "30 s"
//     does not come back at second 30 all at once;
//   - what asks for a send decides whether it may skip the backoff (never the Retry-After):
//       queued     writes are waiting (the page opened, another tab queued some, the retry timer):
//                  waits out the backoff; not while the browser says it is offline (its `online`
//                  event asks then)
//       edit       the reader saved a position, or
//       reachable  Realtime is back (live or polling): at once when the last failure got no HTTP
//                  answer at all (no network: the server was never bothered, and this is the
//                  moment to find out whether the network is back); after an answer from the
//                  server (5xx, 429, a gateway's 404) the write goes with the next retry, or every
//                  page turn of every reader would be one more request to a server in trouble.
//                  An edit tries at once only once per retry: when its try gets no answer either,
//                  the next edits go with the retry. In a browser "no answer" is also an error
//                  page without CORS headers (a gateway's 502 or 504, a function that does not
//                  boot): fetch throws as if the network were down, and a reader turning pages
//                  would otherwise send one request each.
//       online     the browser is back online, or
//       user       the reader asked (Sync now, sendNow()): at once (one request of one device at a
//                  moment of its own)
//
// The tabs of one browser share the outbox (localStorage), so they share this too (`tabs`):
//
//   - the failures in a row, the backoff's next try, a Retry-After, and whether the last failure had
//     an answer and may still be skipped by an edit are saved under a per-user key (wall-clock
//     deadlines: performance.now() differs per tab), read before every decision and written after
//     every send; a tab opened or reloaded within them waits them out too (a run no tab has carried
//     on for 15 minutes is over: a browser reopened the next day starts at the first step);
//   - one tab sends at a time (a Web Lock per user), holding the lock only while it sends: the waits
//     between tries are this schedule's timers, with the lock let go, and a try takes it again
//     (lib/client/syncSession.ts makes each request one attempt: inside the API client's own retries
//     a tab backing off held the lock, and the others could not send). A tab that asks while another
//     sends waits for it, then takes over what changed (the writes answered meanwhile leave its
//     outbox, lib/client/syncStore.ts) and decides again: when the other tab's send changed the schedule (it failed, or
//     ended a run of failures), its own `online`, `reachable` or `user` counts as answered by that
//     send (so N tabs back online make one request, not N) and goes only as `queued`; an edit stays
//     an edit (one per retry, by the shared count);
//   - every tab with writes arms its retry for the shared moment; the first to take the lock sends,
//     the others then find the schedule changed and wait again (one request per step, not N).
//   - a send that has to wait first (`ready`: the session's check of another tab's word that the session
//     changed, /auth/token's answer; the refresh of the token a 401 started, or of one about to expire, once
//     per send) waits without the lock, and a request unanswered for long is aborted
//     (syncSession.ts, OUTBOX_REQUEST_TIMEOUT_MS): either way a stuck tab keeps no other from sending.
//   - the site's storage cleared while tabs are open (SyncStore tells it): the state is written back as
//     the tab last read or wrote it (writeBack), looked for before the state is read, so a clear is not
//     read as no failure at all (every send at once, within a Retry-After).
//   Disposed (the tab's user changed, or it closes), a tab withdraws a request for the lock it is still
//   waiting for (its AbortSignal), so a closed session never sends once another tab lets go; the
//   answer to a send it had under way is still shared (a Retry-After in it holds the others too),
//   though a SyncSession aborts that send's request as it closes (syncSession.ts): an answer that
//   arrived before is what is shared then.
//   Without Web Locks, tabs may send at the same time as before, each taking over first; without
//   storage, each tab has its own outbox and its own schedule, as before.
//
// Framework-free, with the clock, timers, randomness, storage and lock injectable, so the whole
// policy is tested without React and without waiting (tests/web/outbox-schedule.test.ts).

import { MAX_RETRY_AFTER_MS } from "@shared/http/retryAfter.ts";
import { type BackoffOptions, fullJitterDelay } from "@shared/realtime/backoff.ts";
import type { FlushResult } from "./outbox.ts";

/**
 * The backoff of failed sends in a row: the first retry comes within 3 s (the fixed pace this app
 * had before, so a blip is over as soon as it was), the ceiling doubles to 60 s, reached after five
 * failures in a row (about a minute and a half of outage): a reader's other devices are at most about
 * a minute behind once the API is back, while a crowd of tabs spread over that minute asks the API
 * a sixtieth of it each second instead of all of it every 3 s.
 */
export const OUTBOX_BACKOFF: BackoffOptions = { initialMs: 3_000, maxMs: 60_000 };

export type SendReason = "queued" | "edit" | "reachable" | "online" | "user";

export interface OutboxTimers {
  /** Milliseconds that only go forward (performance.now()): a device clock set back must not stall sends. */
  now(): number;
  setTimeout(run: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  /** The wall clock the browser's tabs share (Date.now()), for the deadlines they share; default Date.now. */
  wallNow?(): number;
}

/** How the tabs of one browser share the schedule (see the top of this file). */
export interface OutboxTabs {
  /** The browser's storage (localStorage) and this user's key in it. */
  storage: Pick<Storage, "getItem" | "setItem" | "removeItem">;
  key: string;
  /**
   * Runs `run` while no other tab runs one under this user's lock (navigator.locks.request); absent:
   * now. `signal` aborts a request still waiting for the lock (the schedule was disposed).
   */
  lock?(run: () => Promise<void>, signal?: AbortSignal): Promise<unknown>;
  /** Before a send, lock held: takes over what other tabs changed in the outbox (SyncStore.reloadOutbox). */
  takeOver?(): void;
  /**
   * Before the shared state is read: whether the browser's storage was cleared is looked at
   * (SyncStore.checkCleared), and after one what the tab holds is written back, this schedule's state
   * included (writeBack), so it is not read as no failure at all.
   */
  noticeCleared?(): void;
}

/**
 * What a send answers (OutboxScheduleOptions.send): how its pass over the outbox ended, or SEND_AGAIN: it was
 * stopped before its end for a reason of the caller's (another tab's word that the session changed), and is
 * to go again once `ready` lets it, the tabs' lock let go meanwhile. Nothing is recorded for it.
 */
export type SendResult = FlushResult | typeof SEND_AGAIN;
export const SEND_AGAIN = "again";

export interface OutboxScheduleOptions {
  /** One pass over the outbox (flushOutbox bound to the store and the API). */
  send(): Promise<SendResult>;
  /**
   * Whether a send may go now (null), or what it waits for first (a promise that settles once it may; the
   * session: another tab's word that the session changed, until /auth/token has answered it; the refresh of the
   * token a 401 started, or of one about to expire, until it has ended). A promise that rejects has settled too (see #ready). Waited for
   * without the tabs' lock, and looked at again once the lock is held: a wait that began meanwhile lets go
   * of it. Held through that wait (up to the token's 10 s timeout, then the backoff's wait of up to 60 s
   * before it is asked again, and again), the lock kept every other tab from sending. Absent: always now.
   * `begins`: the first look of a send the schedule begins (an edit, a timer, online, the reader), not one after a
   * wait or once the lock is held: a once-per-send allowance is given back there, also when the send before ended
   * with nothing sent (another tab sent the writes meanwhile).
   */
  ready?(begins: boolean): Promise<void> | null;
  hasPending(): boolean;
  /** The browser's word (navigator.onLine): false means its `online` event will come. */
  isOnline(): boolean;
  /** How long a failure asks to be left alone (its Retry-After, in ms, already capped), if it does. */
  retryAfterMs(error: unknown): number | undefined;
  /** A failure with no HTTP answer at all (no network, DNS, a refused connection, a timeout). */
  isNetworkFailure(error: unknown): boolean;
  backoff?: BackoffOptions;
  random?: () => number;
  timers?: OutboxTimers;
  /** Shared with the browser's other tabs; absent: this tab's own. */
  tabs?: OutboxTabs;
}

const browserTimers: OutboxTimers = {
  now: () => performance.now(),
  setTimeout: (run, ms) => globalThis.setTimeout(run, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
  wallNow: () => Date.now(),
};

/** The schedule as the tabs share it; deadlines in wall-clock ms (0: none). */
interface SharedState {
  failures: number;
  /** When a tab last wrote it (wall-clock ms): a run of failures no tab has carried on for long is over. */
  sharedAt: number;
  noAnswer: boolean;
  editMaySkip: boolean;
  retryAt: number;
  retryAfterUntil: number;
}

function parseShared(raw: string | null): SharedState | null {
  if (raw === null) return null;
  try {
    const value = JSON.parse(raw);
    const number = (v: unknown) => typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : 0;
    if (!value || typeof value !== "object") return null;
    return {
      failures: Math.floor(number(value.failures)),
      sharedAt: number(value.sharedAt),
      noAnswer: value.noAnswer === true,
      editMaySkip: value.editMaySkip === true,
      retryAt: number(value.retryAt),
      retryAfterUntil: number(value.retryAfterUntil),
    };
  } catch {
    return null; // corrupt: as if no failure had been seen
  }
}

/**
 * How long a shared run of failures lasts with no tab carrying it on (a browser closed during an
 * outage, reopened the next day): a tab that reads one older starts at the first step, not at 60 s.
 * A tab still retrying writes it at least once per wait (at most a 5-minute Retry-After plus a
 * 60 s backoff) and send (its requests answered, and at most one left unanswered for its bound, up to
 * 2 minutes: syncSession.ts's OUTBOX_REQUEST_TIMEOUT_MAX_MS): well within it.
 */
export const STALE_RUN_MS = 15 * 60_000;

/** Which of two reasons asked while a send was under way lets the next one go soonest. */
const STRENGTH: Record<SendReason, number> = { queued: 0, edit: 1, reachable: 1, online: 2, user: 2 };

export class OutboxSchedule {
  readonly #options: OutboxScheduleOptions;
  readonly #timers: OutboxTimers;
  readonly #backoff: BackoffOptions;
  #failures = 0;
  #lastFailureHadNoAnswer = false;
  /** An edit may still skip the backoff: the last failure was not itself of such a try. */
  #editMaySkip = false;
  /** The send under way went before the backoff (or Retry-After) would have let it. */
  #sendSkipped = false;
  /** When the backoff drawn after the last failure ends (0: none). */
  #retryAt = 0;
  /** When the server's Retry-After ends (0: none). */
  #retryAfterUntil = 0;
  #timer: unknown = null;
  #timerAt: number | null = null;
  #inFlight: Promise<void> | null = null;
  /** The strongest reason asked for while a send was under way: asked again when it ends. */
  #askedMeanwhile: SendReason | null = null;
  #disposed = false;
  /** Aborted on dispose: a wait for the tabs' lock is given up. */
  readonly #abort = new AbortController();
  /** Sends this tab has begun (options.send called), and how the last one ended. */
  #sendsBegun = 0;
  #lastResult: FlushResult | null = null;
  /** The shared state as last read or written (tabs): another tab changed it when it differs. */
  #basis: string | null = null;
  /**
   * #basis was read before the page was kept in the back/forward cache (resumed) and not read or written
   * since: another tab may have changed it meanwhile unheard (ended the run), so it is not written back.
   */
  #basisUnheard = false;

  constructor(options: OutboxScheduleOptions) {
    this.#options = options;
    this.#timers = options.timers ?? browserTimers;
    this.#backoff = options.backoff ?? OUTBOX_BACKOFF;
  }

  /** Failed sends in a row. */
  get failures(): number {
    return this.#failures;
  }

  /** When (timers.now()) the next send is due by the timer, or null when none is waiting. */
  get nextSendAt(): number | null {
    return this.#timerAt;
  }

  /** Until when (timers.now()) the server asked not to be sent to; 0 when it did not. */
  get retryAfterUntil(): number {
    return this.#retryAfterUntil;
  }

  /** How long (ms) the server's Retry-After still holds every send; 0 when it does not. */
  get retryAfterLeftMs(): number {
    return Math.max(0, this.#retryAfterUntil - this.#timers.now());
  }

  /** Resolves once no send is under way (a follow-up that starts right after included). */
  async settled(): Promise<void> {
    while (this.#inFlight) await this.#inFlight;
  }

  /** Sends now if `reason` may, or makes sure a send comes as soon as it may. */
  request(reason: SendReason): void {
    if (this.#disposed) return;
    if (this.#inFlight) {
      const before = this.#askedMeanwhile;
      if (before === null || STRENGTH[reason] > STRENGTH[before]) this.#askedMeanwhile = reason;
      return;
    }
    // Taken over first, also with nothing waiting here: what this tab writes back after a clear (writeBack)
    // is the shared state as it is, not one another tab ended since (a timer armed by the old one is
    // cleared; one that would not have sent, nothing waiting or offline, is not needed). A tab whose writes
    // another tab's send got answered hears that send's end of the run with nothing waiting any more; looked
    // at after the check, the run it last wrote went back at a clear, and its next page turn waited for a
    // backoff no tab was in (sync-session.test.ts, 'a tab with nothing waiting any more takes over ...').
    if (this.#adopt()) this.#clearTimer(); // armed by what another tab has since changed
    if (!this.#options.hasPending()) return;
    if (reason === "queued" && !this.#options.isOnline()) return;
    const at = this.#earliest(reason);
    const now = this.#timers.now();
    if (at <= now) this.#send(reason, Math.max(this.#retryAfterUntil, this.#retryAt) > now);
    else this.#arm(at);
  }

  /**
   * The reader's "send now" (reason `user`): resolves once it is over, with how this tab's send ended,
   * or null when this tab sent nothing (nothing was waiting; another tab's send, which this one
   * waited for, answered it; or a Retry-After holds it, when a retry is armed).
   */
  async sendNow(): Promise<FlushResult | null> {
    const before = this.#sendsBegun;
    this.request("user");
    await this.settled();
    return this.#sendsBegun > before ? this.#lastResult : null;
  }

  /**
   * The browser's storage was cleared (SyncStore.onStorageCleared): the shared state as this tab last read
   * or wrote it is written back, unless a tab wrote the key since. Read as no failure at all, every send (an
   * edit, back online, another tab's word) went at once, within a Retry-After and the backoff. A tab that
   * heard nothing for a while (a page kept in the back/forward cache: resumed) writes back nothing until it
   * has read the state again, unless its Retry-After still holds: what it held may be a run another tab's
   * send ended meanwhile, written back over it (the next failure backed off from a later step; another tab's
   * longer Retry-After read as the older one's, as the key is then no longer empty for that tab's own
   * writing back).
   */
  writeBack(): void {
    const tabs = this.#options.tabs;
    if (!tabs || this.#basis === null) return;
    // Unheard (resumed), still within its Retry-After: no tab can have sent since (a Retry-After holds every
    // send, of every tab), so it is the state as it is; past it, another tab may have ended the run.
    if (this.#basisUnheard && !((parseShared(this.#basis)?.retryAfterUntil ?? 0) > this.#wallNow())) return;
    try {
      if (tabs.storage.getItem(tabs.key) === null) tabs.storage.setItem(tabs.key, this.#basis);
    } catch {
      // storage full: this tab's own state goes on
    }
  }

  /**
   * The page was restored from the back/forward cache (pageshow, persisted), or resumed after the browser froze
   * it (Page Lifecycle, `resume`): while it was kept there (or frozen) it heard no other tab's change of the
   * shared state, so what it last read is not written back after a clear (writeBack) until it has read or
   * written the state again, unless its Retry-After still holds.
   */
  resumed(): void {
    this.#basisUnheard = true;
  }

  dispose(): void {
    this.#disposed = true;
    this.#clearTimer();
    this.#abort.abort();
  }

  #earliest(reason: SendReason): number {
    const skipsBackoff = reason === "online" || reason === "user" ||
      (reason === "reachable" && this.#lastFailureHadNoAnswer) ||
      (reason === "edit" && this.#lastFailureHadNoAnswer && this.#editMaySkip);
    return skipsBackoff ? this.#retryAfterUntil : Math.max(this.#retryAfterUntil, this.#retryAt);
  }

  /** A send at `at` (an earlier one already waiting stays: it is as allowed, and sooner). */
  #arm(at: number): void {
    if (this.#disposed) return;
    if (this.#timerAt !== null && this.#timerAt <= at) return;
    this.#clearTimer();
    this.#timerAt = at;
    const ms = Math.max(0, Math.ceil(at - this.#timers.now()));
    this.#timer = this.#timers.setTimeout(() => this.#fire(), ms);
  }

  #clearTimer(): void {
    if (this.#timer !== null) this.#timers.clearTimeout(this.#timer);
    this.#timer = null;
    this.#timerAt = null;
  }

  /**
   * The timer was armed for the moment a send may go: the time is not checked again (a timer may
   * fire a fraction of a millisecond early by performance.now(), and would then wait a whole step),
   * unless another tab changed the schedule since.
   */
  #fire(): void {
    this.#timer = null;
    this.#timerAt = null;
    if (this.#disposed || !this.#options.hasPending()) return;
    // Armed by the send under way as it ended, before its end reached here (navigator.locks.request's
    // promise may settle a task after the lock is let go): asked again once it has.
    if (this.#inFlight) return this.request("queued");
    if (!this.#options.isOnline()) return; // the online event asks again
    if (this.#adopt()) {
      // Another tab sent since this timer was armed: its moment is no longer known to be due.
      const at = this.#earliest("queued");
      if (at > this.#timers.now()) return this.#arm(at);
    }
    this.#send("queued", false);
  }

  /** `skipped`: it goes before the backoff would have let it (an edit, Realtime, online, the reader). */
  #send(reason: SendReason, skipped: boolean): void {
    this.#clearTimer();
    // True: let go of the lock and go again once `ready` lets it (see OutboxScheduleOptions.ready).
    const locked = async (): Promise<boolean> => {
      if (this.#disposed) return false;
      if (this.#ready(false)) return true; // a wait began while this tab waited for the lock
      // Lock held: what other tabs sent and recorded while this tab waited for it.
      this.#options.tabs?.takeOver?.();
      if (this.#adopt()) {
        // Another tab's send came in between: it answered `online`, `reachable` and `user` (that
        // tab went at that moment too); an edit may still go by the shared once-per-retry rule.
        const again: SendReason = reason === "edit" ? "edit" : "queued";
        if (again === "queued" && !this.#options.isOnline()) return false;
        const at = this.#earliest(again);
        const now = this.#timers.now();
        if (at > now) {
          this.#arm(at);
          return false;
        }
        skipped = Math.max(this.#retryAfterUntil, this.#retryAt) > now;
      }
      if (!this.#options.hasPending()) return false;
      this.#sendSkipped = skipped;
      this.#sendsBegun++;
      let result: SendResult;
      try {
        result = await this.#options.send();
      } catch (error) {
        // flushOutbox answers its failures; a throw is a bug, and must not end the retries.
        result = { outcome: "failed", error };
      }
      if (result === SEND_AGAIN) return !this.#disposed;
      this.#lastResult = result;
      // Recorded (and shared) before the lock goes: the next tab to take it reads it. Also once
      // disposed meanwhile (the tab's user changed): the answer (a Retry-After, one more failure)
      // holds the browser's other tabs and the session that follows this one; no timer is armed.
      this.#record(result);
      return false;
    };
    const run = (async () => {
      for (let begins = true;; begins = false) {
        // What the send waits for, waited for before the lock is asked for (not holding it).
        for (let wait = this.#ready(begins); wait && !this.#disposed; wait = this.#ready(false)) await wait;
        if (this.#disposed || !(await this.#exclusive(locked))) return;
      }
    })();
    this.#inFlight = run.catch(() => {}).finally(() => {
      this.#inFlight = null;
      const asked = this.#askedMeanwhile;
      this.#askedMeanwhile = null;
      if (asked) this.request(asked);
    });
  }

  /**
   * options.ready, settling without a value: a wait that fails is over (a rejection ended it), and a `ready`
   * that throws lets the send go now, as a throw of `send` is a failure: outside the send's try, either ended
   * the send with nothing recorded and no retry armed, and the writes waited for the next edit or event.
   */
  #ready(begins: boolean): Promise<void> | null {
    let wait: Promise<void> | null | undefined;
    try {
      wait = this.#options.ready?.(begins);
    } catch {
      return null;
    }
    return wait ? Promise.resolve(wait).then(() => {}, () => {}) : null;
  }

  /** Runs `run` under the tabs' lock; at once without one, or when the lock cannot be had. */
  async #exclusive(run: () => Promise<boolean>): Promise<boolean> {
    const lock = this.#options.tabs?.lock;
    if (!lock) return await run();
    let started = false;
    let again = false;
    try {
      await lock(async () => {
        started = true;
        again = await run();
      }, this.#abort.signal);
      return again;
    } catch (error) {
      if (started || this.#disposed) throw error; // disposed: the wait was given up
      return await run(); // the lock itself failed (a sandboxed frame): send as a tab alone would
    }
  }

  /**
   * Takes over the shared state when another tab changed it since this tab last read or wrote it;
   * returns whether it did. A deadline further ahead than any this schedule sets (a wall clock set
   * back since it was written) is dropped rather than held for as long as the clock moved.
   */
  #adopt(): boolean {
    const tabs = this.#options.tabs;
    if (!tabs) return false;
    tabs.noticeCleared?.(); // cleared: written back first (writeBack), not read as no failure
    let raw: string | null;
    try {
      raw = tabs.storage.getItem(tabs.key);
    } catch {
      return false; // storage went away: this tab's own state goes on
    }
    this.#basisUnheard = false; // read now: what it holds is the storage's
    if (raw === this.#basis) return false;
    this.#basis = raw;
    const now = this.#timers.now();
    const wall = this.#wallNow();
    let shared = parseShared(raw);
    if (shared && !(shared.sharedAt > wall - STALE_RUN_MS && shared.sharedAt <= wall + STALE_RUN_MS)) {
      shared = null; // no tab has carried the run on for that long (or the clock moved that far): over
    }
    const latest = wall + MAX_RETRY_AFTER_MS + this.#backoff.maxMs;
    const local = (at: number | undefined) => at && at > wall && at <= latest ? at - wall + now : 0;
    this.#failures = shared?.failures ?? 0;
    this.#lastFailureHadNoAnswer = shared?.noAnswer ?? false;
    this.#editMaySkip = shared?.editMaySkip ?? false;
    this.#retryAt = local(shared?.retryAt);
    this.#retryAfterUntil = local(shared?.retryAfterUntil);
    return true;
  }

  /** Writes this tab's state for the others (nothing to share once a send got through). */
  #share(): void {
    const tabs = this.#options.tabs;
    if (!tabs) return;
    const now = this.#timers.now();
    const wall = this.#wallNow();
    const shared = (at: number) => at > now ? at - now + wall : 0;
    const raw = this.#failures === 0 ? null : JSON.stringify(
      {
        failures: this.#failures,
        sharedAt: wall,
        noAnswer: this.#lastFailureHadNoAnswer,
        editMaySkip: this.#editMaySkip,
        retryAt: shared(this.#retryAt),
        retryAfterUntil: shared(this.#retryAfterUntil),
      } satisfies SharedState,
    );
    try {
      if (raw === null) tabs.storage.removeItem(tabs.key);
      else tabs.storage.setItem(tabs.key, raw);
      this.#basis = raw;
      this.#basisUnheard = false;
    } catch {
      // storage full or gone: the other tabs go on with what they know
    }
  }

  #wallNow(): number {
    return this.#timers.wallNow?.() ?? Date.now();
  }

  #record(result: FlushResult): void {
    this.#recordHere(result);
    if (result.outcome === "done" || result.outcome === "failed") this.#share();
  }

  #recordHere(result: FlushResult): void {
    const now = this.#timers.now();
    switch (result.outcome) {
      case "done":
        this.#failures = 0;
        this.#lastFailureHadNoAnswer = false;
        this.#editMaySkip = false;
        this.#retryAt = 0;
        this.#retryAfterUntil = 0;
        return;
      case "failed": {
        // A send the API answered in part got through as far as the backoff goes: the server was up a
        // moment ago, so this failure is the first of a new run, not one more of the old.
        if (result.answered) this.#failures = 0;
        this.#failures++;
        this.#lastFailureHadNoAnswer = this.#options.isNetworkFailure(result.error);
        // Once per retry: a try that skipped the backoff and got no answer either lets no
        // more edits skip it (the retry timer's own try does).
        this.#editMaySkip = this.#lastFailureHadNoAnswer && !this.#sendSkipped;
        const asked = this.#options.retryAfterMs(result.error);
        if (asked) this.#retryAfterUntil = Math.max(this.#retryAfterUntil, now + asked);
        const random = this.#options.random ?? Math.random;
        this.#retryAt = Math.max(now, this.#retryAfterUntil) +
          fullJitterDelay(this.#failures, this.#backoff, random);
        this.#arm(this.#retryAt);
        return;
      }
      case "signed out":
        // As before: the page is on its way to sign in (or reloading); the writes stay queued, and
        // are tried again at the first step's pace, not counted as the API's failures.
        this.#arm(now + this.#backoff.initialMs);
        return;
      case "disposed":
        return;
    }
  }
}
