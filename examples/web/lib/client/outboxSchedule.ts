// When this tab sends its outbox (lib/client/outbox.ts sends it; components/SyncProvider.tsx says
// why a send is wanted). Against a real Supabase project, a fixed pace of retries is rude: after an
// outage every tab of every reader would come back at the same moment, every few seconds, for as long
// as it lasts, and a 429's or 503's Retry-After would go unheard. So:
//
//   - after failed sends in a row, the next one waits a random time under a ceiling that doubles
//     (OUTBOX_BACKOFF: full jitter, shared/realtime/backoff.ts, as Realtime's rejoins); a send that
//     gets through resets it;
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
//                  would otherwise send one request (four, with the API client's retries) each.
//       online     the browser is back online, or
//       user       the reader asked: at once (one request of one device at a moment of its own)
//
// Framework-free, with the clock, timers and randomness injectable, so the whole policy is tested
// without React and without waiting (tests/web/outbox-schedule.test.ts).

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
}

export interface OutboxScheduleOptions {
  /** One pass over the outbox (flushOutbox bound to the store and the API). */
  send(): Promise<FlushResult>;
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
}

const browserTimers: OutboxTimers = {
  now: () => performance.now(),
  setTimeout: (run, ms) => globalThis.setTimeout(run, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};

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
    if (!this.#options.hasPending()) return;
    if (reason === "queued" && !this.#options.isOnline()) return;
    const at = this.#earliest(reason);
    const now = this.#timers.now();
    if (at <= now) this.#send(Math.max(this.#retryAfterUntil, this.#retryAt) > now);
    else this.#arm(at);
  }

  dispose(): void {
    this.#disposed = true;
    this.#clearTimer();
  }

  #earliest(reason: SendReason): number {
    const skipsBackoff = reason === "online" || reason === "user" ||
      (reason === "reachable" && this.#lastFailureHadNoAnswer) ||
      (reason === "edit" && this.#lastFailureHadNoAnswer && this.#editMaySkip);
    return skipsBackoff ? this.#retryAfterUntil : Math.max(this.#retryAfterUntil, this.#retryAt);
  }

  /** A send at `at` (an earlier one already waiting stays: it is as allowed, and sooner). */
  #arm(at: number): void {
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
   * fire a fraction of a millisecond early by performance.now(), and would then wait a whole step).
   */
  #fire(): void {
    this.#timer = null;
    this.#timerAt = null;
    if (this.#disposed || this.#inFlight || !this.#options.hasPending()) return;
    if (!this.#options.isOnline()) return; // the online event asks again
    this.#send(false);
  }

  /** `skipped`: it goes before the backoff would have let it (an edit, Realtime, online, the reader). */
  #send(skipped: boolean): void {
    this.#clearTimer();
    this.#sendSkipped = skipped;
    const run = (async () => {
      let result: FlushResult;
      try {
        result = await this.#options.send();
      } catch (error) {
        // flushOutbox answers its failures; a throw is a bug, and must not end the retries.
        result = { outcome: "failed", error };
      }
      if (!this.#disposed) this.#record(result);
    })();
    this.#inFlight = run.finally(() => {
      this.#inFlight = null;
      const asked = this.#askedMeanwhile;
      this.#askedMeanwhile = null;
      if (asked) this.request(asked);
    });
  }

  #record(result: FlushResult): void {
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
