// When a tab asks whether this browser's session is still its user's (components/SyncProvider.tsx):
// at once when another tab says it changed (lib/client/sessionSignal.ts), and when the tab is shown
// again or back online, where it also reads what it missed. That read waits for the check only
// when the token is about to run out (it would go out with it); otherwise it goes at once, and the
// check runs beside it, at most every 30 s (every tab switch would ask /auth/token, and through it
// Supabase Auth, and a slow Auth would hold the read up to the 10 s refresh timeout).

import type { ProgressSubscription } from "@shared/realtime/realtimeService.ts";
import { type BackoffOptions, fullJitterDelay } from "@shared/realtime/backoff.ts";
import { SignedOutError, type TokenKeeper } from "./tokenKeeper.ts";
import { OUTBOX_BACKOFF } from "./outboxSchedule.ts";

export const SHOWN_CHECK_INTERVAL_MS = 30_000;
/** Below this many seconds left, a read waits for the token to be refreshed first. */
export const READ_WAITS_BELOW_S = 120;

export interface SessionCheckOptions {
  tokens: Pick<TokenKeeper, "refresh" | "remaining">;
  /** Leaves the page when the error says the session is gone or another user's (else ignores it). */
  leaveIfSignedOut: (error: unknown) => void;
  /**
   * Reads what was missed now: the subscription's syncNow(), which resolves with how the read ended
   * and never rejects (a failed read is the sync's to say, through onRead and Sync now).
   */
  syncNow: ProgressSubscription["syncNow"];
  now?: () => number;
  /** The waits between checks that failed without an answer (default: the browser's, OUTBOX_BACKOFF). */
  timers?: { setTimeout(run: () => void, ms: number): unknown; clearTimeout(handle: unknown): void };
  backoff?: BackoffOptions;
  random?: () => number;
}

export function createSessionCheck(options: SessionCheckOptions) {
  const now = options.now ?? (() => Date.now());
  const timers = options.timers ?? {
    setTimeout: (run: () => void, ms: number): unknown => globalThis.setTimeout(run, ms),
    clearTimeout: (handle: unknown) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
  };
  const backoff = options.backoff ?? OUTBOX_BACKOFF;
  let checkedAt = Number.NEGATIVE_INFINITY;
  let disposed = false;
  /** Another tab's word not answered yet: settles once it is (or the check is disposed). */
  let doubt: Promise<void> | null = null;
  /** Words heard so far: an answer counts for those heard before its request left. */
  let heard = 0;
  /** Ends the wait before the next try (shown again, back online, another word, disposed). */
  let wake: (() => void) | null = null;
  const check = (fresh: boolean) =>
    options.tokens.refresh({ fresh }).then(() => {
      checkedAt = now();
    }, options.leaveIfSignedOut);
  const untilAnswered = async () => {
    for (let failures = 0; !disposed;) {
      const asked = heard;
      try {
        await options.tokens.refresh({ fresh: true });
        checkedAt = now();
        if (heard === asked) return; // (else a word came while it was under way: ask again)
      } catch (error) {
        if (error instanceof SignedOutError) return options.leaveIfSignedOut(error);
        // No answer that says either: ask again after the backoff's wait, or sooner when woken.
        failures++;
        const delay = fullJitterDelay(failures, backoff, options.random);
        await new Promise<void>((resolve) => {
          const timer = timers.setTimeout(() => done(), delay);
          const done = () => {
            timers.clearTimeout(timer);
            wake = null;
            resolve();
          };
          wake = done;
        });
      }
    }
  };
  const wakeUp = () => wake?.();
  return {
    /**
     * Another tab says the session changed: ask now, not with an answer already on its way, and
     * again until the answer says whose the session is. Resolves once it does (or disposed).
     */
    sessionChanged: (): Promise<void> => {
      heard++;
      if (doubt) {
        wakeUp();
        return doubt;
      }
      const settled = doubt = untilAnswered().finally(() => {
        if (doubt === settled) doubt = null;
      });
      return settled;
    },
    /** While a word of another tab waits for its answer: settles once it has one (null: none waits). */
    unsure: (): Promise<void> | null => doubt,
    /** Shown again or back online: read what was missed, and check the session. */
    shown: (): Promise<void> => {
      if (doubt) wakeUp(); // a check waiting to be asked again goes now
      if (options.tokens.remaining < READ_WAITS_BELOW_S) {
        // (Not waited for.)
        return check(false).finally(() => void options.syncNow());
      }
      const read = options.syncNow().then(() => {});
      if (now() - checkedAt < SHOWN_CHECK_INTERVAL_MS) return read;
      return Promise.all([check(false), read]).then(() => {});
    },
    /** No more checks (the session closed): a wait for an answer ends, and `sure()` settles. */
    dispose: (): void => {
      disposed = true;
      wakeUp();
    },
  };
}
