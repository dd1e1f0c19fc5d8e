// When a tab asks whether this browser's session is still its user's (components/SyncProvider.tsx):
// at once when another tab says it changed (lib/client/sessionSignal.ts), and when the tab is shown
// again or back online, where it also reads what it missed. That read waits for the check only
// when the token is about to run out (it would go out with it); otherwise it goes at once, and the
// check runs beside it, at most every 30 s (every tab switch would ask /auth/token, and through it
// Supabase Auth, and a slow Auth would hold the read up to the 10 s refresh timeout).

import type { ProgressSubscription } from "@shared/realtime/realtimeService.ts";
import { type TokenKeeper } from "./tokenKeeper.ts";

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
}

export function createSessionCheck(options: SessionCheckOptions) {
  const now = options.now ?? (() => Date.now());
  let checkedAt = Number.NEGATIVE_INFINITY;
  const check = (fresh: boolean) =>
    options.tokens.refresh({ fresh }).then(() => {
      checkedAt = now();
    }, options.leaveIfSignedOut);
  return {
    /** Another tab says the session changed: ask now, not with an answer already on its way. */
    sessionChanged: (): Promise<void> => check(true),
    /** Shown again or back online: read what was missed, and check the session. */
    shown: (): Promise<void> => {
      if (options.tokens.remaining < READ_WAITS_BELOW_S) {
        // (Not waited for.)
        return check(false).finally(() => void options.syncNow());
      }
      const read = options.syncNow().then(() => {});
      if (now() - checkedAt < SHOWN_CHECK_INTERVAL_MS) return read;
      return Promise.all([check(false), read]).then(() => {});
    },
  };
}
