// RealtimeService: keeps one device's view of a reader's progress in sync, live when Supabase
// Realtime is reachable and by polling when it is not, without ever missing a change.
//
//   subscribeToProgress(userId, handler)  joins the private Broadcast channel `progress:<userId>`
//                                         (RLS on realtime.messages decides who may), then catches
//                                         up with changesSince(cursor); every change reaches the
//                                         handler once, in last-write-wins order per series (a
//                                         catch-up or poll reads each series' current row, so
//                                         versions superseded during a gap arrive as the newest).
//   status / onStatus                     connecting -> live; polling while Realtime is down and
//                                         the API answers; offline when neither does. Joined but
//                                         not caught up counts as down: polling while the catch-up
//                                         is answered behind, offline while it fails.
//   onRead                                how each read of the changes ended (done, behind, failed),
//                                         whatever made it: catch-up, poll, safety read, syncNow.
//   cursor / onCursor                     the changes cursor the link has read to (moved by answered
//                                         pages only, after their rows reached the handler; never by
//                                         a broadcast): persisted and given back as initialCursor, a
//                                         new service misses nothing after it. initialCursor is one
//                                         subscription's, for its user (subscribeToProgress's third
//                                         argument; the service's option is its first user's only): a
//                                         later subscription to a running link from another cursor
//                                         reads the changes after it for itself, deletions included.
//   reconnect                             capped exponential backoff with full jitter per user
//                                         channel (it starts again after a channel that stayed joined
//                                         at least as long as the wait before its join (counted
//                                         as at least 1.6 s), or backoff.maxMs, not at every join:
//                                         a server that closes every join sooner is not hammered,
//                                         a network that drops now and then stays mostly live);
//                                         while waiting, changesSince() is polled (failed polls back
//                                         off, jittered from the first, and wait out a Retry-After).
//                                         A join that timed out while its socket was still opening
//                                         replaces that socket (realtime-js has no handshake timeout)
//                                         without a manual disconnect: it is closed, its channels
//                                         failed, and a new one opened at once if a link or channel
//                                         still wants one and no channel's error callback disconnected
//                                         the client; realtime-js rejoins every errored channel on
//                                         it, the app's too. One that hangs too is replaced in its
//                                         turn, even with no link left (each one given up in a row
//                                         is allowed twice as long: a slow handshake gets through).
//   slow join                             a join made while nothing reads that is still unanswered
//                                         after joinGraceMs (2 s) starts the polling meanwhile
//                                         (Supabase answers a refused join only after 5 s).
//   catch-up                              after every (re)subscribe, from the cursor of the last
//                                         successful catch-up/poll, so a gap of any length is closed.
//                                         Live only once it has read to the end: while a long
//                                         transaction holds the cursor (has_more, cursor unmoved)
//                                         it keeps polling; one that fails is made again after the
//                                         polls' backoff. The join cuts off every read begun before
//                                         it (the catch-up must not queue behind one that hangs);
//                                         the cursor moves only with an answered page, and a late
//                                         answer of a cut read is ignored. A call that does not
//                                         answer within requestTimeoutMs is aborted and counts as
//                                         failed; closing
//                                         aborts the call in flight, and a joined channel's drop
//                                         every read in flight or queued, begun while joined or
//                                         before (the poll after it must not wait for one that
//                                         hangs).
//   heartbeat watch                       a heartbeat reply that is late (heartbeatReplyTimeoutMs)
//                                         means the socket may be dead while it looks open: the
//                                         link reads now, and every pollIntervalMs until a reply
//                                         comes or realtime-js gives the socket up.
//   syncNow                               the app's word that it may have missed something (back
//                                         in the foreground, back online): read now, and rejoin now
//                                         if the channel is waiting out its backoff; the join ladder
//                                         starts again at its first step. A read it could not
//                                         finish (a Retry-After, behind, failed) is made again as
//                                         a poll would be, live or not, until one reads to the end.
//   auth                                  follows supabase.auth TOKEN_REFRESHED / SIGNED_IN, or an
//                                         explicit setAccessToken(); a channel the server closed
//                                         because its token expired is rejoined (after the backoff)
//                                         with the newest token, a join refused for a token replaced
//                                         while in flight is retried once at once with the new one,
//                                         and a token set while a join is in flight is sent on the
//                                         channel once joined (realtime-js only sends it to joined ones).
//                                         A token Realtime said has expired (a join refused, a channel
//                                         closed for it), or the progress API refused a read for as
//                                         expired (401 token_expired), is not sent in a join again: the
//                                         join waits for the next token, polling meanwhile.
//                                         A catch-up or poll refused 401 is made again as soon as a
//                                         new token comes (once per new token; other failures wait
//                                         out the polls' backoff).
//   cleanup                               unsubscribe releases the channel, timers and listeners;
//                                         stats() counts what is held so tests can prove it.
//
// Every log line is one JSON object: {ts, level, component, event, channel, attempt, ...}.

import type { RealtimeChannel, SupabaseClient } from "@supabase/supabase-js";
import { backoffCeiling, type BackoffOptions, DEFAULT_BACKOFF, fullJitterDelay } from "./backoff.ts";
import { type ChangeKind, type LwwRow, ProgressMergeState } from "./progressMerge.ts";
import { defaultCompareRows, defaultParseRow, type ProgressRow } from "./progressContract.ts";
import { type HeartbeatStatus, watchHeartbeats } from "./heartbeatWatch.ts";
import { retryAfterMsOf } from "../http/retryAfter.ts";
import {
  checkFunctionOption,
  checkNumberOption,
  checkObjectOption,
  checkTokenOption,
  describeError,
  drawInRange,
  MAX_TIMER_MS,
  type NumberRule,
  TIMER_MS,
  withDefaults,
} from "../options/checkOptions.ts";

export type RealtimeStatus = "connecting" | "live" | "polling" | "offline";

export type ChangeSource = "realtime" | "catchup" | "poll";

/**
 * How one read of the changes (a "changes since" round, its pages followed) ended: "done" read to
 * the end, "behind" answered with more left that cannot be read yet (a long transaction holds the
 * cursor), "failed" a call failed or timed out.
 */
export type ReadOutcome = "done" | "behind" | "failed";

/**
 * How RealtimeService.syncNow() went for one subscribed user, as `removeAllChannels()` in supabase-js
 * resolves one status per channel: the user (as ProgressSubscription.userId: a UUID in lower case,
 * whatever case it was given in), the user's channel (`progress:<userId>`, as
 * ProgressSubscription.channel) and how its read ended, what that user's subscriptions' syncNow()
 * resolves with (they share the channel and the read).
 */
export interface SyncNowResult {
  userId: string;
  channel: string;
  outcome: ReadOutcome;
}

export interface ProgressChange<Row extends LwwRow = ProgressRow> {
  kind: ChangeKind;
  /** The new row (upsert) or the deleted row (delete). */
  row: Row;
  source: ChangeSource;
  /** realtime.messages id of the broadcast that carried it. */
  messageId?: string;
}

export type ProgressHandler<Row extends LwwRow = ProgressRow> = (change: ProgressChange<Row>) => void;

/** What one "changes since" call returns: rows changed after `cursor`, and the cursor to continue from. */
export interface ChangesPage {
  changes: unknown[];
  /** Cursor to continue from (`next_cursor` in the progress API's spelling is read too). */
  cursor?: unknown;
  next_cursor?: unknown;
  /** When the API pages, true while more changes follow (catch-up keeps reading). */
  hasMore?: boolean;
  /** Same, in the SQL function's spelling. */
  has_more?: boolean;
  /**
   * true when the API did not take the cursor sent as it stands and read from the beginning
   * (another user's cursor, another cluster's or timeline's): logged as cursor_started_over (warn).
   */
  startedOver?: boolean;
  /** Same, in the SQL function's spelling. */
  started_over?: boolean;
}

/**
 * `signal` aborts when the service stops waiting (the call took longer than requestTimeoutMs, or the
 * link was closed): pass it on to the request so it is not left hanging. A failure may say how long
 * to wait (`retryAfterMs`, or `details.retry_after` in seconds as ProgressApiError has it from a
 * Retry-After header): the next poll waits at least that long.
 */
export type ChangesSince = (
  cursor: unknown,
  context: {
    userId: string;
    signal: AbortSignal;
    /**
     * For a changesSince that sends its call again with another token than the one the service read
     * with when the call began (RealtimeService.readToken; subscribeToProgress's asks a call refused
     * 401 again with the token setAccessToken() put in place meanwhile): the token it sent last. A
     * 401 for the call is then read again only for a token newer than that one, not with the one
     * just refused (#readAgainForNewToken).
     */
    sentWith?: (token: string | null) => void;
  },
) => Promise<ChangesPage>;

/**
 * The longest realtime-js (phoenix 0.4) takes to close a socket after a heartbeat timeout: it waits
 * for the send buffer in steps of 150, 300, 450 and 600 ms first. A rejoin after a drop waits this long.
 */
export const SOCKET_TEARDOWN_MS = 1_600;

/** How long a heartbeat reply may take before the link reads (RealtimeServiceOptions.heartbeatReplyTimeoutMs). */
export const DEFAULT_HEARTBEAT_REPLY_TIMEOUT_MS = 5_000;

/** How long one changesSince call may take by default (RealtimeServiceOptions.requestTimeoutMs). */
export const DEFAULT_REQUEST_TIMEOUT_MS = 20_000;

/** How long a join may go unanswered before the link reads meanwhile (RealtimeServiceOptions.joinGraceMs). */
export const DEFAULT_JOIN_GRACE_MS = 2_000;

export interface RealtimeServiceOptions<Row extends LwwRow = ProgressRow> {
  /** The progress API's "changes since" (catch-up after every subscribe, and polling). */
  changesSince: ChangesSince;
  /** Validates a row (the shared zod row schema by default); throws on an invalid row. */
  parseRow?: (value: unknown) => Row;
  /** Last-write-wins order of two versions of a row (ConflictResolver.compare by default). */
  compareRows?: (a: Row, b: Row) => number;
  /**
   * Cursor to start from: a ProgressSubscription.cursor the app persisted (null = from the
   * beginning). One user's: it is bound to the user of the service's first subscribeToProgress(),
   * and is the starting cursor of that user's subscriptions that give none of their own
   * (SubscribeOptions.initialCursor, which is better: it goes with the user it is given for). A
   * subscription of another user that gives none starts from the beginning, and logs
   * initial_cursor_not_applied (warn): the changes cursor is a position in the whole database's
   * transactions, not in one user's, so another user's would skip every change of this user made
   * before it where the API cannot tell it is another user's (a cursor handed out before cursors named
   * their user; one that names another user the API reads from the beginning). Opaque here
   * (whatever changesSince takes); subscribeToProgress() in shared/progress/api.ts checks it is the
   * progress API's.
   */
  initialCursor?: unknown;
  /**
   * A token to use instead of the client's session: the service installs it as the Realtime
   * client's token source (the session-less supabase-js client would otherwise fall back to the
   * anon key on every heartbeat). Change it later with setAccessToken(). Not given (undefined): the
   * client's own session; anything but a non-empty string ("" and null too) throws a TypeError.
   */
  accessToken?: string;
  /** The join's backoff (DEFAULT_BACKOFF for a field not given); not a plain object: a TypeError. */
  backoff?: Partial<BackoffOptions>;
  /**
   * Poll interval while Realtime is down (10 s). Polls that fail in a row back off: the n-th waits a
   * time drawn between half and all of a ceiling of 2^n poll intervals (the first too: devices that met
   * a failing API together do not retry together), the ceiling capped at backoff.maxMs (or twice
   * pollIntervalMs when that is longer; the wait is then between half the cap and the cap), and at
   * least what the API asked for (Retry-After), plus a draw up to the shorter of that and
   * pollIntervalMs (retryAfterWaitMs: devices refused together do not come back together); the
   * first answer resets it.
   */
  pollIntervalMs?: number;
  /**
   * Interval of the changes read made while live (60 s; 0 turns it off). Supabase delivers
   * database broadcasts at most once: it drops them silently above the project's message rate
   * limit, and a join may succeed before its replication connection streams. This read bounds how
   * long such a lost change can stay unseen while the channel looks healthy. One that fails is made
   * again as a failed poll is (pollIntervalMs's backoff, a Retry-After), or at the next one when sooner.
   */
  livePollIntervalMs?: number;
  /**
   * How long a heartbeat reply may take before a live link stops trusting its socket (5 s, at most
   * half of realtime-js's heartbeatIntervalMs; 0 turns the watch off). realtime-js gives a socket up
   * only when a reply is a whole heartbeat interval late (25–50 s after its network path died with
   * its defaults), and broadcasts sent meanwhile are lost. A live link whose reply is late reads the
   * changes now and every pollIntervalMs until a reply comes (the status stays live); the drop, if
   * it comes, then goes on as any other. The watch sits in realtime-js's heartbeat callback slot
   * behind the app's own callback, which keeps every status and can be replaced with
   * realtime.onHeartbeat() before or after subscribing (heartbeatWatch.ts).
   */
  heartbeatReplyTimeoutMs?: number;
  /** How long a join may take before it counts as failed (realtime-js default: 10 s). */
  joinTimeoutMs?: number;
  /**
   * How long a join made while the link is not polling (the first one, or one a new token started)
   * may go unanswered before the link reads the changes meanwhile and polls until it is joined (2 s;
   * Infinity waits for the answer). Supabase answers a refused join only after its 5 s
   * CHANNEL_ERROR_BACKOFF_MS, and a join it does not answer after joinTimeoutMs (10 s): without
   * this a device would read nothing for that long. A join answered within it costs nothing.
   */
  joinGraceMs?: number;
  /** How long one changesSince call may take before it counts as failed and is aborted (20 s). */
  requestTimeoutMs?: number;
  /**
   * Source of randomness for the jitter (tests make it deterministic): a function returning a number
   * in [0, 1), as Math.random (the default) does; anything else given throws a TypeError at
   * construction. A draw outside that range is taken into it, so that no wait is NaN (setTimeout
   * fires a NaN wait at once) or outside its range: below 0 as 0, 1 or more as just below 1 (the
   * longest wait), NaN or a non-number as 0.5 (the mean wait), logged once (random_out_of_range).
   */
  random?: () => number;
  /** Receives one JSON log line per event; console.log by default. */
  log?: (line: string) => void;
}

/** RealtimeService.subscribeToProgress()'s options for one subscription. */
export interface SubscribeOptions {
  /**
   * The cursor this subscription starts from: a ProgressSubscription.cursor of this user persisted
   * (null = from the beginning; undefined = not given: RealtimeServiceOptions.initialCursor when that
   * is this user's, else the beginning). It applies to this subscription only. The first subscription
   * for the user starts the user's link from it; a later one (the link runs already) starting from
   * the cursor the link started from is given what the link has delivered (rows and deletions), and
   * one starting elsewhere reads the changes after its own cursor for itself (every change after it,
   * deletions too, as a first subscription would be given), beside the link's reads (neither waits for
   * the other); until that read has ended its status is connecting where the link's is live, its
   * cursor stays at its own, and the reads its onRead hears are its own. That read failing or answered
   * behind is its own (its onRead and syncNow() hear it; it alone is made again, by itself): the link
   * and the subscriptions following it are not held back. A join or a joined channel's drop cuts it off
   * as they cut the link's reads (one that hangs does not hold its syncNow() for requestTimeoutMs), and
   * it is read again from its cursor: at once, or after a drop as the link's reads would be (after
   * failures of its own, their backoff; while the link backs off, once a read of the link is answered).
   * Its cursor never goes back once it follows the link (Subscription.linkReadToEnd).
   */
  initialCursor?: unknown;
}

export interface ProgressSubscription {
  readonly userId: string;
  readonly channel: string;
  readonly status: RealtimeStatus;
  /** Calls the listener on every status change; returns the function that removes it. */
  onStatus(listener: (status: RealtimeStatus) => void): () => void;
  /**
   * Calls the listener after every read of the user's changes the link makes, whatever made it (the
   * catch-up after a join, a poll, the safety read while live, a syncNow()), with how it ended;
   * returns the function that removes it. A failed read is retried by the link as before. One that
   * joined a running link from a cursor of its own hears its own reads instead, until one has read to
   * the end (SubscribeOptions.initialCursor). Not heard: a read the link cut off itself (unsubscribe,
   * a join or a joined channel's drop: the catch-up the join starts or the poll the drop starts is
   * heard when it ends) and one none could be made of (a Retry-After held it).
   */
  onRead(listener: (outcome: ReadOutcome) => void): () => void;
  /**
   * The changes cursor this subscription has been given everything before: initialCursor (or null)
   * until a read's page moves it, then that page's cursor, once its rows were handed to the handler
   * (whatever the handler did with them: it is called synchronously). Only answered pages move it,
   * never a broadcast (a broadcast's change_xid is no safe cursor: transactions commit out of xid
   * order). Persisted and given back as initialCursor, a new service delivers every change after it;
   * what changed at or after it (writes still running when it was read, or delivered by broadcast
   * since) may come again, once. Frozen at unsubscribe(): read it then to persist it.
   */
  readonly cursor: unknown;
  /**
   * Calls the listener with the new cursor each time a read's page moves it (after the page's rows
   * were handed to the handler; before the read's onRead); returns the function that removes it.
   * Not called for the cursor it starts with, nor for a broadcast.
   */
  onCursor(listener: (cursor: unknown) => void): () => void;
  /**
   * Reads the user's changes now and, if Realtime is down, retries the join now (RealtimeService.syncNow).
   * Resolves with how that read ended; "failed" also when none could be made (a Retry-After the API
   * sent still runs: the read is made when it ends; the subscription is closed). Never rejects. A
   * read a join cut off (one begun while joining) resolves as the catch-up ends; one a joined channel's
   * drop cut off as the poll the drop starts ends when that reads at once (the API has been answering),
   * or as the read a new token makes at once in its place (the last read was refused 401 for a token
   * replaced since), and at once with "failed" when the read in its place waits (the polls' backoff
   * after a failed read, a Retry-After): it is made at its time all the same, and heard by onRead, but
   * the call is not held for it, nor for a read something later starts (a new token, the rejoin's
   * catch-up). Until a read made after the call reads to the
   * end, a live link reads again as a polling one would (a Retry-After's end, pollIntervalMs after
   * "behind", the polls' backoff after "failed"), even with the safety read off. As the service's
   * syncNow() for the user, it makes the own reads of the user's subscriptions that joined from a cursor
   * of their own and wait for their retry now (not waiting for them); one such subscription's syncNow()
   * resolves with its own read's outcome until that has read to the end (SubscribeOptions.initialCursor).
   */
  syncNow(): Promise<ReadOutcome>;
  unsubscribe(): Promise<void>;
}

export interface RealtimeServiceStats {
  /** Users with an active link (channel + polling machinery). */
  links: number;
  subscriptions: number;
  /** Timers the service has scheduled and not yet run or cleared. */
  timers: number;
  /** Realtime channels the service created and has not yet torn down. */
  channels: number;
  /** supabase.auth listeners the service holds (0 or 1). */
  authListeners: number;
  /** Heartbeat watches the service has installed on the Realtime client (0 or 1). */
  heartbeatWatches: number;
  /** Listeners (onStatus, onRead, onCursor) the subscriptions hold. */
  statusListeners: number;
  /** Channels created and joined so far (cumulative). */
  joinAttempts: number;
  /** Changes applied / dropped as stale / dropped as duplicate / rejected as invalid. */
  applied: number;
  stale: number;
  duplicates: number;
  invalid: number;
}

/** What the service uses of a supabase-js client (any Database typing fits). */
export type RealtimeCapableClient = Pick<
  SupabaseClient,
  "realtime" | "channel" | "removeChannel" | "getChannels" | "auth"
>;
type AnyClient = RealtimeCapableClient;

/**
 * The wait before rejoining a channel that was joined when it dropped, at ladder step `step`: uniform
 * from SOCKET_TEARDOWN_MS up to the step's ceiling, or up to SOCKET_TEARDOWN_MS plus the first step's
 * ceiling where that is higher (1.6-2.6 s with the defaults until the ceiling passes 2.6 s; never past
 * backoff.maxMs), so the devices a Realtime restart dropped together come back spread, none sooner
 * than the floor (which alone is left when backoff.maxMs is below it).
 */
export function rejoinAfterDropDelay(step: number, backoff: BackoffOptions, random: () => number): number {
  const top = Math.max(
    backoffCeiling(step, backoff),
    Math.min(SOCKET_TEARDOWN_MS + backoffCeiling(1, backoff), backoff.maxMs),
  );
  if (top <= SOCKET_TEARDOWN_MS) return SOCKET_TEARDOWN_MS;
  return SOCKET_TEARDOWN_MS + Math.floor(random() * (top - SOCKET_TEARDOWN_MS));
}

/**
 * How long a link holds its reads after the API asked for `retryAfterMs` (Retry-After): never less,
 * and drawn up to the shorter of that wait and `pollIntervalMs` more. The devices an overloaded API
 * refused together were all told the same wait: retrying exactly at its end, they would come back
 * together and be refused together again. They come back spread over a window as long as the wait
 * asked for (as the polls' backoff draws the n-th failure's wait from 2^(n-1) to 2^n intervals), but
 * no wider than a poll interval: none reads more than one interval late (a link polling would have
 * read within one anyway), and a short Retry-After is not stretched into a long one.
 */
export function retryAfterWaitMs(retryAfterMs: number, pollIntervalMs: number, random: () => number): number {
  return retryAfterMs + Math.floor(random() * Math.min(retryAfterMs, pollIntervalMs));
}

// setTimeout's longest delay (2^31-1 ms), kept in shared/options; exported here too for the service's
// users and tests.
export { MAX_TIMER_MS };

/**
 * The ranges of RealtimeServiceOptions' millisecond options, checked at construction (naming the
 * option). Each is a number from 1 to MAX_TIMER_MS (TIMER_MS): 0 or less would fire in a tight loop
 * or at once, NaN or Infinity make a computed wait invalid (setTimeout fires it at once), and more
 * than MAX_TIMER_MS overflows setTimeout (fired after 1 ms). `zero`: 0 is taken too (it turns the
 * thing off, or means "at once"); `infinity`: Infinity is taken too (never). Every option of
 * RealtimeServiceOptions whose name ends in Ms has its range here (the type requires it).
 */
const MS_OPTION_RANGES: Record<
  "backoff.initialMs" | "backoff.maxMs" | Exclude<keyof RealtimeServiceOptions, "backoff"> & `${string}Ms`,
  NumberRule
> = {
  "backoff.initialMs": TIMER_MS,
  "backoff.maxMs": TIMER_MS,
  pollIntervalMs: TIMER_MS,
  livePollIntervalMs: { ...TIMER_MS, zero: true, infinity: true }, // both turn the safety read off
  heartbeatReplyTimeoutMs: { ...TIMER_MS, zero: true }, // 0 turns the watch off
  joinTimeoutMs: TIMER_MS,
  joinGraceMs: { ...TIMER_MS, zero: true, infinity: true }, // 0: read at once with the join; Infinity: wait for the answer
  requestTimeoutMs: TIMER_MS,
};

/**
 * Throws for a backoff that is not a plain object (a TypeError, as for the API client's retry: null,
 * an array, a number or a Map would otherwise be taken as no fields given), then for the first millisecond
 * option outside its range (MS_OPTION_RANGES), then for a random, parseRow, compareRows or log that is
 * given and is not a function (a TypeError), then for an accessToken that is not a non-empty string.
 * The constructor's checks, exported for subscribeToProgress (shared/progress/api.ts), which makes them
 * on every call, the later ones on a client (whose shared service is already made) too, so that a call
 * is refused for a bad option as the first would be.
 */
export function checkRealtimeServiceOptions<Row extends LwwRow>(
  options: Omit<RealtimeServiceOptions<Row>, "changesSince">,
): void {
  checkObjectOption(options.backoff, "RealtimeService", "backoff");
  const given: Record<keyof typeof MS_OPTION_RANGES, unknown> = {
    "backoff.initialMs": options.backoff?.initialMs,
    "backoff.maxMs": options.backoff?.maxMs,
    pollIntervalMs: options.pollIntervalMs,
    livePollIntervalMs: options.livePollIntervalMs,
    heartbeatReplyTimeoutMs: options.heartbeatReplyTimeoutMs,
    joinTimeoutMs: options.joinTimeoutMs,
    joinGraceMs: options.joinGraceMs,
    requestTimeoutMs: options.requestTimeoutMs,
  };
  for (const name of Object.keys(MS_OPTION_RANGES) as (keyof typeof MS_OPTION_RANGES)[]) {
    checkNumberOption(given[name], MS_OPTION_RANGES[name], "RealtimeService", name);
  }
  checkFunctionOption(options.random, "RealtimeService", "random");
  // Called later, where a value that is no function would throw far from this call: parseRow and
  // compareRows at every change (compareRows inside realtime-js's message handler for a broadcast),
  // log at every event (its failure swallowed: every line lost without a word).
  checkFunctionOption(options.parseRow, "RealtimeService", "parseRow");
  checkFunctionOption(options.compareRows, "RealtimeService", "compareRows");
  checkFunctionOption(options.log, "RealtimeService", "log");
  checkTokenOption(options.accessToken, "RealtimeService", "accessToken");
}

/** Timers the service owns, counted so that "nothing left behind" can be checked. */
class TimerSet {
  #live = new Set<ReturnType<typeof setTimeout>>();
  /**
   * A wait computed from valid options can still pass MAX_TIMER_MS (the polls' cap, twice
   * pollIntervalMs; the doubled socket-opening allowance; a server's Retry-After): it is held at
   * MAX_TIMER_MS, not fired at once as setTimeout would.
   */
  set(fn: () => void, ms: number): ReturnType<typeof setTimeout> {
    ms = Math.min(ms, MAX_TIMER_MS);
    const id = setTimeout(() => {
      this.#live.delete(id);
      fn();
    }, ms);
    this.#live.add(id);
    return id;
  }
  clear(id: ReturnType<typeof setTimeout> | undefined): void {
    if (id === undefined) return;
    clearTimeout(id);
    this.#live.delete(id);
  }
  get size(): number {
    return this.#live.size;
  }
}

/** Token sources RealtimeServices installed on a Realtime client, each with the source it replaced. */
const sourcesReplaced = new WeakMap<() => Promise<string | null>, (() => Promise<string | null>) | null>();

export class RealtimeService<Row extends LwwRow = ProgressRow> {
  readonly #client: AnyClient;
  readonly #options: RealtimeServiceOptions<Row>;
  readonly #parseRow: (value: unknown) => Row;
  readonly #compareRows: (a: Row, b: Row) => number;
  readonly #backoff: BackoffOptions;
  readonly #log: (line: string) => void;
  readonly #links = new Map<string, UserLink<Row>>();
  readonly timers = new TimerSet();
  readonly counters = { applied: 0, stale: 0, duplicates: 0, invalid: 0, channels: 0, joinAttempts: 0 };
  /** Channel removals in flight, per topic: a new join of the topic waits for them. */
  readonly removals = new Map<string, Set<Promise<void>>>();
  readonly #random: () => number;
  #randomWarned = false;
  #explicitToken: string | null = null;
  /** The last session token supabase.auth announced (TOKEN_REFRESHED, SIGNED_IN); null before any. */
  #sessionToken: string | null = null;
  /**
   * The session token taken last since the last sign-out (null: none): one announced after it that
   * was issued before it (issuedBefore) is not taken.
   */
  #sessionTokenTaken: string | null = null;
  #originalTokenSource: (() => Promise<string | null>) | null | undefined = undefined;
  /** The token source this service installed (close() restores only while it is still in place). */
  #installedTokenSource: (() => Promise<string | null>) | null = null;
  #authSubscription: { unsubscribe(): void } | null = null;
  /**
   * Runs while a socket the service opened in place of one it gave up is opening: gives it up in its
   * turn if it is still opening when its time is over (#watchReplacement).
   */
  #replacementWatch: ReturnType<typeof setTimeout> | undefined;
  /** Stops the heartbeat watch (null while none is installed). */
  #stopHeartbeatWatch: (() => void) | null = null;
  /** Runs from a heartbeat sent until its reply is late (heartbeatReplyTimeoutMs). */
  #heartbeatReplyTimer: ReturnType<typeof setTimeout> | undefined;
  /** When (monotonicNow) the heartbeat whose reply is late now was sent; null while none is. */
  #lateHeartbeatSentAt: number | null = null;
  /** The user the initialCursor option is bound to: the one of the first subscribeToProgress(). */
  #initialCursorUser: string | undefined;
  /**
   * Tokens Realtime said have expired (it closed a channel or refused a join for them): a join is not
   * made with one of them (UserLink#connect). An expired token never becomes valid again. The last few.
   */
  readonly #expiredTokens = new Set<string>();
  /** The Realtime client's token as last looked at (observeToken), and since when (monotonicNow) it is. */
  #seenToken: string | null = null;
  #seenTokenSince = -Infinity;
  #closed = false;

  constructor(client: AnyClient, options: RealtimeServiceOptions<Row>) {
    this.#client = client;
    checkObjectOption(options, "RealtimeService", "options", { kind: "argument" });
    // Required: without it the link could only fail every read, from a timer.
    checkFunctionOption(options?.changesSince, "RealtimeService", "changesSince", { required: true });
    checkRealtimeServiceOptions(options);
    this.#options = options;
    this.#parseRow = options.parseRow ?? (defaultParseRow as unknown as (value: unknown) => Row);
    this.#compareRows = options.compareRows ?? (defaultCompareRows as unknown as (a: Row, b: Row) => number);
    // A field given as undefined is not given (checkRealtimeServiceOptions lets it through): spread
    // over the default it would make every backoff wait NaN, which setTimeout fires at once.
    this.#backoff = withDefaults(options.backoff, DEFAULT_BACKOFF);
    this.#log = options.log ?? ((line) => console.log(line));
    const random = options.random;
    this.#random = random ? () => this.#drawInRange(random()) : Math.random;
    if (options.accessToken !== undefined) this.#installToken(options.accessToken);
  }

  /**
   * A draw of the `random` option taken into [0, 1) (see RealtimeServiceOptions.random): every wait
   * the service draws stays a number within its range.
   */
  #drawInRange(value: unknown): number {
    if (typeof value === "number" && value >= 0 && value < 1) return value;
    if (!this.#randomWarned) {
      this.#randomWarned = true;
      this.logEvent("warn", "random_out_of_range", { value: String(value) });
    }
    return drawInRange(value);
  }

  get client(): AnyClient {
    return this.#client;
  }

  /**
   * Starts (or joins) the live link for a user; `handler` receives every new change. A user id is a
   * UUID, which PostgreSQL prints in lower case (auth.uid()::text names the topic, rows carry it so):
   * one given in upper case is lowered, or its join would be refused and every row look foreign.
   */
  subscribeToProgress(
    userIdGiven: string,
    handler: ProgressHandler<Row>,
    options: SubscribeOptions = {},
  ): ProgressSubscription {
    if (this.#closed) throw new Error("RealtimeService is closed");
    if (typeof userIdGiven !== "string" || userIdGiven.length === 0) throw new Error("userId is required");
    checkObjectOption(options, "RealtimeService subscribeToProgress()", "options", { kind: "argument" });
    // Checked here, not where it is first called (the catch-up's answer, a broadcast): a TypeError
    // logged there as handler_failed at every change, none of them delivered.
    checkFunctionOption(handler, "RealtimeService subscribeToProgress()", "handler", {
      kind: "argument",
      required: true,
    });
    const userId = normalizeUserId(userIdGiven);
    const cursor = this.#startingCursor(userId, options.initialCursor);
    let link = this.#links.get(userId);
    if (!link) {
      link = new UserLink(this, userId, cursor);
      this.#links.set(userId, link);
      this.#ensureAuthListener();
      const subscription = new Subscription<Row>(this, link, handler, cursor, false);
      link.subscriptions.add(subscription);
      link.start();
      return subscription;
    }
    return link.addSubscription(handler, cursor);
  }

  /**
   * The cursor a subscription of `userId` starts from: its own, else the service's initialCursor when
   * that is this user's (the user of the service's first subscription), else the beginning (null).
   */
  #startingCursor(userId: string, given: unknown): unknown {
    this.#initialCursorUser ??= userId;
    if (given !== undefined) return given;
    const serviceCursor = this.#options.initialCursor ?? null;
    if (serviceCursor === null || userId === this.#initialCursorUser) return serviceCursor;
    this.logEvent("warn", "initial_cursor_not_applied", {
      channel: `progress:${userId}`,
      reason:
        "the service's initialCursor is the first subscribed user's; this subscription reads from the beginning",
    });
    return null;
  }

  /**
   * Reads the changes of a user (of every subscribed user when none is given) now, and where the
   * channel is down and waiting out its backoff, retries the join now. For the moments an app
   * knows it may have missed something that no timer of its own will notice soon: back in the
   * foreground (a phone suspends an app's socket and timers, a browser throttles a hidden tab's
   * timers to one a minute) or back online. Resolves when that read has finished, never rejecting,
   * with one SyncNowResult per subscribed user read (in the order the users were subscribed; none for
   * a user without a subscription): how it ended, as that user's subscriptions' syncNow()
   * resolves and onRead hears it. A failed read is logged, not thrown, and read again as
   * ProgressSubscription.syncNow says. The join ladder starts again at its first step (the failures
   * before say little about the new conditions): the join made now, or the one already in flight,
   * counts as its first, and if it fails its retry waits the first step's backoff, the ones after it
   * longer and longer; a channel still joined that drops after the call (a socket that died while
   * the app was away) is rejoined at the first step.
   * Each call makes at most one join, and none while one is in flight or the channel is joined.
   * A subscription that joined from a cursor of its own and whose own read waits for its retry has
   * that read made now too (not waited for: the result is the link's read).
   */
  async syncNow(userId?: string): Promise<SyncNowResult[]> {
    const links = userId === undefined
      ? [...this.#links.values()]
      : [this.#links.get(normalizeUserId(userId))].filter((link) => link !== undefined);
    return await Promise.all(
      links.map(async (link) => ({
        userId: link.userId,
        channel: link.topic,
        outcome: await link.syncNow(),
      })),
    );
  }

  /** Stops a subscription; the user's channel, timers and listeners go with its last subscription. */
  async unsubscribe(subscription: ProgressSubscription): Promise<void> {
    await subscription.unsubscribe();
  }

  /**
   * Validates one Realtime broadcast payload ({record, old_record, operation, ...}, or the whole
   * `{type: "broadcast", event, payload}` message) and merges it. Returns the change when it was
   * new (and delivered to the user's handlers), null when invalid, stale or a duplicate.
   */
  handleProgressUpdate(payload: unknown, source: ChangeSource = "realtime"): ProgressChange<Row> | null {
    const parsed = this.#parseBroadcast(payload);
    if (!parsed) return null;
    const link = this.#links.get(parsed.userId);
    if (!link) {
      this.logEvent("debug", "update_without_subscription", { user_id: parsed.userId });
      return null;
    }
    try {
      return link.apply(parsed.kind, parsed.row, source, parsed.messageId);
    } catch (error) {
      // What compareRows threw (parseRow's refusals and handlers' failures are caught where they are
      // called): the row is refused as a read refuses it, not a failure of the broadcast or the link.
      link.compareRowsFailed(error, parsed.row, source);
      return null;
    }
  }

  /**
   * Uses this token for Realtime from now on (pushed to joined channels at once). Ignored once the
   * service is closed: close() gave the client its own token source back, and a late callback (a
   * session refresh landing after the app unmounted) must not pin a token on it that will expire.
   * Anything but a non-empty string ("" too) rejects with a TypeError, closed or not, as the
   * accessToken option throws for it.
   */
  async setAccessToken(token: string): Promise<void> {
    // As the accessToken option: "" (or a value not a string) is no token, refused (a TypeError, this
    // call's rejection) whether or not the service is closed, never installed.
    checkTokenOption(token, "RealtimeService setAccessToken()", "token", {
      kind: "argument",
      required: true,
    });
    if (this.#closed) {
      this.logEvent("debug", "access_token_ignored", { reason: "service closed" });
      return;
    }
    this.#installToken(token);
    await this.#client.realtime.setAuth(token).catch((error: unknown) => {
      this.logEvent("warn", "set_auth_failed", { error: describeError(error) });
    });
    this.observeToken();
    this.logEvent("info", "access_token_set", {});
    for (const link of this.#links.values()) link.onTokenChanged();
  }

  /**
   * The token given with the `accessToken` option or setAccessToken(), null when the client's own
   * session (or anon key) is used: a changesSince built over the same client sends it too, so a
   * session-less client's catch-up and polling are the user's, not anon's.
   */
  get accessToken(): string | null {
    return this.#explicitToken;
  }

  /**
   * The token the changes are read with as far as the service knows: the explicit one, or else the last
   * session token supabase.auth announced (null: the client's own from the start). A read refused 401
   * is made again when this changes (UserLink#readAgainForNewToken).
   */
  get readToken(): string | null {
    return this.#explicitToken ?? this.#sessionToken;
  }

  /** Status of a user's link (offline when there is none). */
  status(userId: string): RealtimeStatus {
    return this.#links.get(normalizeUserId(userId))?.status ?? "offline";
  }

  stats(): RealtimeServiceStats {
    let subscriptions = 0;
    let statusListeners = 0;
    for (const link of this.#links.values()) {
      subscriptions += link.subscriptions.size;
      for (const s of link.subscriptions) statusListeners += s.listenerCount;
    }
    return {
      links: this.#links.size,
      subscriptions,
      timers: this.timers.size,
      channels: this.counters.channels,
      authListeners: this.#authSubscription ? 1 : 0,
      heartbeatWatches: this.#stopHeartbeatWatch ? 1 : 0,
      statusListeners,
      joinAttempts: this.counters.joinAttempts,
      applied: this.counters.applied,
      stale: this.counters.stale,
      duplicates: this.counters.duplicates,
      invalid: this.counters.invalid,
    };
  }

  /** Unsubscribes everything and gives the Realtime client its own token source back. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#links.values()].map((link) => link.close()));
    this.#dropAuthListener();
    this.#dropHeartbeatWatch();
    if (this.#originalTokenSource !== undefined) {
      const realtime = this.#client.realtime as { accessToken: unknown };
      // Another service on the same client may have installed its own source since (a component
      // remounted: the old service closes while the new one starts); that one stays.
      if (realtime.accessToken === this.#installedTokenSource) {
        realtime.accessToken = this.#originalTokenSource;
      }
      this.#originalTokenSource = undefined;
      this.#installedTokenSource = null;
    }
    // A closed service touches the client's socket no more.
    this.timers.clear(this.#replacementWatch);
    this.#replacementWatch = undefined;
  }

  // ------------------------------------------------------------------ internals used by UserLink

  get backoffOptions(): BackoffOptions {
    return this.#backoff;
  }
  get options(): RealtimeServiceOptions<Row> {
    return this.#options;
  }
  get compareRows(): (a: Row, b: Row) => number {
    return this.#compareRows;
  }
  get random(): () => number {
    return this.#random;
  }

  parseRow(value: unknown): Row | null {
    try {
      return this.#parseRow(value);
    } catch (error) {
      this.counters.invalid++;
      this.logEvent("warn", "invalid_row", { error: describeError(error, "message") });
      return null;
    }
  }

  /**
   * The Realtime client's token now, noting when it was first seen (observeToken is called when a
   * token is set, at every heartbeat while the watch is installed, at every join): the token has been
   * in place at least since then.
   */
  observeToken(): string | null {
    const token = this.#client.realtime.accessTokenValue ?? null;
    if (token !== this.#seenToken) {
      this.#seenToken = token;
      this.#seenTokenSince = monotonicNow();
    }
    return token;
  }

  /**
   * Realtime closed a joined channel because its token expired ("Token has expired N seconds ago"):
   * the token it held is the last one the client sent it (Supabase applies a held refresh at the
   * expiry instead of closing). That is the client's current token unless it changed so recently that
   * its push may not have arrived: it counts as expired only once it had been in place for a push
   * timeout (the client's, realtime.timeout: 10 s), time for any push to arrive or time out. A token
   * set nearer its expiry is judged by the rejoin's answer instead (tokenRefusedAtJoin).
   */
  tokenExpiredOnChannel(): void {
    const token = this.observeToken();
    const pushTimeoutMs = this.#client.realtime.timeout || 10_000;
    if (token && monotonicNow() - this.#seenTokenSince >= pushTimeoutMs) this.#noteExpired(token);
  }

  /** A join made with `token` was refused because it expired (the join sent it: UserLink#onChannelState). */
  tokenRefusedAtJoin(token: string): void {
    this.#noteExpired(token);
  }

  /**
   * A read sent with `token` was refused 401 token_expired by the progress API: the same token in a
   * join would be refused too. A laptop that wakes after its token ran out reads at once (the socket's
   * drop starts polling) and rejoins after the backoff, before Realtime has said anything of the token.
   */
  tokenRefusedByApi(token: string): void {
    this.#noteExpired(token);
  }

  /** Whether Realtime said `token` has expired: a join with it would only be refused. */
  tokenKnownExpired(token: string | null): boolean {
    return token !== null && this.#expiredTokens.has(token);
  }

  #noteExpired(token: string): void {
    if (this.#expiredTokens.has(token)) return;
    this.#expiredTokens.add(token);
    for (const old of this.#expiredTokens) {
      if (this.#expiredTokens.size <= EXPIRED_TOKENS_KEPT) break;
      this.#expiredTokens.delete(old);
    }
    this.logEvent("info", "token_expired_on_server", {});
  }

  /** Makes sure the Realtime client holds the current token before a join is pushed. */
  async refreshRealtimeAuth(): Promise<void> {
    try {
      if (this.#explicitToken) await this.#client.realtime.setAuth(this.#explicitToken);
      else await this.#client.realtime.setAuth();
    } catch (error) {
      this.logEvent("warn", "set_auth_failed", { error: describeError(error) });
    }
  }

  /**
   * Installs the heartbeat watch unless it is in place (called before every join; the last link to
   * close takes it out). Nothing when turned off or when the client keeps its heartbeat callback
   * where the watch cannot reach it.
   */
  watchHeartbeats(): void {
    if (this.#closed || this.#stopHeartbeatWatch || !(this.#heartbeatReplyTimeoutMs > 0)) return;
    this.#stopHeartbeatWatch = watchHeartbeats(this.#client.realtime, this.#onHeartbeat);
    if (!this.#stopHeartbeatWatch) this.logEvent("debug", "heartbeat_watch_unavailable", {});
  }

  /**
   * When the heartbeat whose reply is late now was sent (monotonicNow), null while no reply is
   * late: a link that goes live meanwhile, joined before that, reads at the late pace at once.
   */
  get lateHeartbeatSentAt(): number | null {
    return this.#lateHeartbeatSentAt;
  }

  get #heartbeatReplyTimeoutMs(): number {
    const configured = this.#options.heartbeatReplyTimeoutMs ?? DEFAULT_HEARTBEAT_REPLY_TIMEOUT_MS;
    // realtime-js itself gives up on a reply after one heartbeat interval: the watch must come first.
    const interval = (this.#client.realtime as { heartbeatIntervalMs?: unknown }).heartbeatIntervalMs;
    return typeof interval === "number" && interval > 0 ? Math.min(configured, interval / 2) : configured;
  }

  #dropHeartbeatWatch(): void {
    this.#stopHeartbeatWatch?.();
    this.#stopHeartbeatWatch = null;
    this.timers.clear(this.#heartbeatReplyTimer);
    this.#heartbeatReplyTimer = undefined;
    this.#lateHeartbeatSentAt = null;
  }

  readonly #onHeartbeat = (status: HeartbeatStatus): void => {
    if (this.#closed) return;
    this.observeToken();
    this.timers.clear(this.#heartbeatReplyTimer);
    this.#heartbeatReplyTimer = undefined;
    this.#lateHeartbeatSentAt = null;
    if (status === "sent") {
      const timeoutMs = this.#heartbeatReplyTimeoutMs;
      const sentAt = monotonicNow();
      this.#heartbeatReplyTimer = this.timers.set(() => {
        this.#heartbeatReplyTimer = undefined;
        this.#lateHeartbeatSentAt = sentAt;
        for (const link of this.#links.values()) link.heartbeatReplyLate(timeoutMs, sentAt);
      }, timeoutMs);
    } else if (status === "ok" || status === "error") {
      // The server answered (an error reply too): the socket carries.
      for (const link of this.#links.values()) link.heartbeatReplied();
    }
    // "timeout" and "disconnected": realtime-js fails the channels itself (#fail follows).
  };

  /** Called when a link starts closing: a new subscription for the user gets a fresh link. */
  linkClosed(link: UserLink<Row>): void {
    if (this.#links.get(link.userId) === link) this.#links.delete(link.userId);
    if (this.#links.size === 0) {
      this.#dropAuthListener();
      this.#dropHeartbeatWatch();
    }
  }

  trackRemoval(topic: string, removal: Promise<void>): void {
    let set = this.removals.get(topic);
    if (!set) this.removals.set(topic, set = new Set());
    set.add(removal);
    // Settled either way, and no promise of its own left to reject unheard (a .finally() would pass a
    // failed removal's rejection on to a promise nobody awaits: an unhandled rejection).
    const settled = () => {
      set.delete(removal);
      if (set.size === 0 && this.removals.get(topic) === set) this.removals.delete(topic);
    };
    removal.then(settled, settled);
  }

  /** Waits for the topic's removals in flight to settle; a failed one is no failure of the waiter's. */
  async removalsSettled(topic: string): Promise<void> {
    while (this.removals.has(topic)) await Promise.allSettled([...this.removals.get(topic)!]);
  }

  /** Whether the Realtime client's socket is opening (WebSocket CONNECTING); false when it cannot say. */
  socketOpening(): boolean {
    const realtime = this.#client.realtime as { isConnecting?: () => boolean };
    try {
      return typeof realtime.isConnecting === "function" && realtime.isConnecting() === true;
    } catch {
      return false;
    }
  }

  /**
   * A join timed out and the socket it was pushed on is still opening: its opening handshake went
   * unanswered for the whole join timeout (a network path that died while the socket was opening).
   * realtime-js has no timeout for that: it buffers every push, sends no heartbeat (so none can time
   * out) and gives the socket up only when the transport reports an error, which a dead path may not
   * do for minutes, so every join retried on it would time out too. Replaces the socket
   * (#replaceOpeningSocket).
   */
  giveUpOpeningSocket(): void {
    if (this.#closed || !this.socketOpening()) return;
    const socket = phoenixSocketOf(this.#client.realtime);
    const stuck = socket?.conn;
    if (!socket || !stuck) {
      this.logEvent("warn", "socket_give_up_unavailable", {});
      return;
    }
    // A slow but healthy handshake (a congested network) may take longer than a join timeout: a socket
    // cut after each one would never open. Each socket given up with none opened since is allowed
    // twice as long as the one before (SOCKET_OPENING_MAX_DOUBLINGS). Measured from the first join
    // pushed on it (a join timeout's timer may fire a little early): half a timeout's slack.
    const seenAt = openingSeenAt.get(stuck);
    const openingMs = seenAt === undefined ? 0 : monotonicNow() - seenAt;
    const allowedMs = this.#allowedOpeningMs(socket);
    if (openingMs < allowedMs - this.#joinTimeoutMs / 2) return;
    this.#replaceOpeningSocket(socket, stuck, openingMs, allowedMs);
  }

  get #joinTimeoutMs(): number {
    return this.options.joinTimeoutMs ?? (this.#client.realtime.timeout || 10_000);
  }

  /** How long the socket opening now on `socket` may stay opening before it is given up. */
  #allowedOpeningMs(socket: PhoenixSocket): number {
    const giveUps = giveUpsInARow.get(socket) ?? 0;
    return this.#joinTimeoutMs * 2 ** Math.min(giveUps, SOCKET_OPENING_MAX_DOUBLINGS);
  }

  /**
   * Gives a socket that never opened up as phoenix handles a connection that closed without a
   * disconnect() (its onConnClose), not with realtime.disconnect(): that is a manual close, after
   * which realtime-js reconnects nothing by itself, and which an app's own disconnect() could not be
   * told from. The stuck WebSocket is taken off phoenix's socket before it is closed (Deno and browsers
   * end a CONNECTING WebSocket's connection at once): closed in place, it would read as "closing" until
   * its close event, and realtime-js ignores a disconnect() made then (RealtimeClient.disconnect returns
   * at isDisconnecting()) and reconnects after the close event; taken off, an app's realtime.disconnect()
   * at any moment after reaches phoenix and is final. The channels on it are failed as phoenix fails
   * them on a close (every errored channel, the app's too, rejoins when the next socket opens) and,
   * unless a channel's error callback disconnected the client meanwhile (as phoenix, which reconnects
   * only while closeWasClean is false), when a link or a channel of the client still wants one, the
   * next socket is opened at once
   * (realtime.connect()), not by phoenix's reconnect timer: that timer tears down whatever socket is
   * current when it fires, and would cut one a join had opened meanwhile. Sockets given up are at
   * least a join timeout apart, twice as long each time. The one opened is watched (#watchReplacement).
   */
  #replaceOpeningSocket(
    socket: PhoenixSocket,
    stuck: PhoenixConn,
    openingMs: number,
    allowedMs: number,
  ): void {
    giveUpsInARow.set(socket, (giveUpsInARow.get(socket) ?? 0) + 1);
    this.logEvent("warn", "socket_never_opened", {
      opening_ms: Math.round(openingMs),
      allowed_ms: Math.round(allowedMs),
    });
    socket.conn = null;
    const ignore = () => {};
    stuck.onopen = ignore;
    stuck.onerror = ignore;
    stuck.onmessage = ignore;
    stuck.onclose = ignore;
    try {
      stuck.close(WS_CLOSE_NORMAL, "opening handshake timed out");
    } catch (error) {
      this.logEvent("warn", "socket_close_failed", { error: describeError(error) });
    }
    try {
      socket.triggerChanError(new Error("socket opening handshake timed out"));
    } catch (error) {
      this.logEvent("warn", "channel_error_failed", { error: describeError(error) });
    }
    // The channels' error callbacks ran just now, the app's too: one may have disconnected the client
    // (signing out when its channel errs). phoenix, on a socket that closed by itself, fails the
    // channels first as well and reconnects only if no disconnect() came meanwhile (closeWasClean).
    if (socket.closeWasClean === true) {
      this.logEvent("info", "socket_reopen_dropped", { reason: "disconnected while its channels failed" });
      return;
    }
    const wanted = this.#links.size > 0 ||
      this.#client.getChannels().some((channel) => channel.state !== "closed" && channel.state !== "leaving");
    if (!wanted) return; // the next subscribe opens one
    try {
      this.#client.realtime.connect();
    } catch (error) {
      this.logEvent("warn", "socket_reopen_failed", { error: describeError(error) });
      return;
    }
    // realtime.connect() has set a new one (TypeScript still reads the null set above).
    const replacement = socket.conn as PhoenixConn | null;
    if (replacement && replacement.readyState === WS_CONNECTING) this.#watchReplacement(socket, replacement);
  }

  /**
   * The socket opened in place of one given up may hang too, and no join of the service may come to
   * say so (its last link has closed; only the app's channels wait for it): given up in its turn if it
   * is still the client's socket and still opening once its time is over. Nothing is done when it
   * opened meanwhile, or is no longer the client's socket (the app disconnected, realtime-js replaced it).
   */
  #watchReplacement(socket: PhoenixSocket, replacement: PhoenixConn): void {
    openingSeenAt.set(replacement, monotonicNow());
    this.timers.clear(this.#replacementWatch);
    const allowedMs = this.#allowedOpeningMs(socket);
    this.#replacementWatch = this.timers.set(() => {
      this.#replacementWatch = undefined;
      if (this.#closed || socket.conn !== replacement) return;
      if (replacement.readyState === WS_OPEN) giveUpsInARow.delete(socket);
      if (replacement.readyState !== WS_CONNECTING) return;
      const openingMs = monotonicNow() - openingSeenAt.get(replacement)!;
      this.#replaceOpeningSocket(socket, replacement, openingMs, allowedMs);
    }, allowedMs);
  }

  /** A join was pushed: notes when the socket it waits for was first seen opening (see giveUpOpeningSocket). */
  noteJoinPushed(): boolean {
    const opening = this.socketOpening();
    const conn = opening ? phoenixSocketOf(this.#client.realtime)?.conn : null;
    if (conn && !openingSeenAt.has(conn)) openingSeenAt.set(conn, monotonicNow());
    return opening;
  }

  /** A join was answered: the socket opened, so the next stuck one is given up after one join timeout. */
  noteSocketOpened(): void {
    const socket = phoenixSocketOf(this.#client.realtime);
    if (socket) giveUpsInARow.delete(socket);
    this.timers.clear(this.#replacementWatch);
    this.#replacementWatch = undefined;
  }

  logEvent(level: "debug" | "info" | "warn" | "error", event: string, fields: Record<string, unknown>): void {
    try {
      this.#log(
        JSON.stringify({
          ts: new Date().toISOString(),
          level,
          component: "RealtimeService",
          event,
          ...fields,
        }),
      );
    } catch {
      // Logging must never break sync.
    }
  }

  #parseBroadcast(
    payload: unknown,
  ): { userId: string; kind: ChangeKind; row: Row; messageId?: string } | null {
    let body = payload as Record<string, unknown> | null;
    let messageId: string | undefined;
    if (body && body.type === "broadcast" && body.payload && typeof body.payload === "object") {
      const meta = body.meta as { id?: unknown } | undefined;
      if (typeof meta?.id === "string") messageId = meta.id;
      body = body.payload as Record<string, unknown>;
    }
    if (!body || typeof body !== "object") {
      this.counters.invalid++;
      this.logEvent("warn", "invalid_broadcast", { reason: "payload is not an object" });
      return null;
    }
    if (messageId === undefined && typeof body.id === "string") messageId = body.id;
    const operation = body.operation;
    if (operation !== "INSERT" && operation !== "UPDATE" && operation !== "DELETE") {
      this.counters.invalid++;
      this.logEvent("warn", "invalid_broadcast", { reason: `unknown operation ${String(operation)}` });
      return null;
    }
    const kind: ChangeKind = operation === "DELETE" ? "delete" : "upsert";
    const row = this.parseRow(kind === "delete" ? body.old_record : body.record);
    if (!row) return null;
    const userId = (row as unknown as { user_id?: unknown }).user_id;
    if (typeof userId !== "string") {
      this.counters.invalid++;
      this.logEvent("warn", "invalid_broadcast", { reason: "row has no user_id" });
      return null;
    }
    return { userId, kind, row, messageId };
  }

  #installToken(token: string): void {
    this.#explicitToken = token;
    const realtime = this.#client.realtime as { accessToken: (() => Promise<string | null>) | null };
    if (this.#originalTokenSource === undefined) {
      // Installed over another service's source (both alive on one client for a moment): the
      // client's own source is the one that service saved.
      const current = realtime.accessToken;
      this.#originalTokenSource = current && sourcesReplaced.has(current)
        ? sourcesReplaced.get(current)!
        : current;
    }
    // realtime-js asks this on connect, after every join and on every heartbeat.
    this.#installedTokenSource = () => Promise.resolve(this.#explicitToken);
    sourcesReplaced.set(this.#installedTokenSource, this.#originalTokenSource ?? null);
    realtime.accessToken = this.#installedTokenSource;
  }

  #ensureAuthListener(): void {
    if (this.#authSubscription) return;
    let auth: AnyClient["auth"];
    try {
      auth = this.#client.auth; // throws when the client was built with the `accessToken` option
    } catch {
      return;
    }
    try {
      const { data } = auth.onAuthStateChange((event, session) => {
        if ((event === "TOKEN_REFRESHED" || event === "SIGNED_IN") && session?.access_token) {
          if (this.#explicitToken) return; // an explicit token wins over the session
          const taken = this.#sessionTokenTaken;
          if (taken !== null && issuedBefore(session.access_token, taken)) {
            // Two refreshes raced and the older token's event came last (another tab's refresh,
            // which auth-js hands on from its BroadcastChannel, arriving after this tab's own later
            // one). supabase-js's own listener, called before this one, has just given it to
            // Realtime (it takes any token that differs from the last it heard of), which pushed it
            // to the joined channels: the server would hold a token that expires sooner, and reads
            // go on with the newer. The newer one is put back at once (realtime-js applies the last
            // setAuth call made), and nothing else changes.
            this.logEvent("info", "auth_token_older_ignored", { auth_event: event });
            this.#client.realtime.setAuth(taken).then(() => this.observeToken(), () => {});
            return;
          }
          this.#sessionTokenTaken = session.access_token;
          this.#sessionToken = session.access_token;
          this.logEvent("info", "auth_token_refreshed", { auth_event: event });
          this.#client.realtime.setAuth(session.access_token).then(() => this.observeToken(), () => {});
          for (const link of this.#links.values()) link.onTokenChanged();
        } else if (event === "SIGNED_OUT") {
          this.#sessionTokenTaken = null; // the next sign-in's token is taken, whenever issued
          this.logEvent("info", "auth_signed_out", {});
        }
      });
      this.#authSubscription = data.subscription;
    } catch (error) {
      this.logEvent("debug", "auth_listener_unavailable", { error: describeError(error) });
    }
  }

  #dropAuthListener(): void {
    this.#authSubscription?.unsubscribe();
    this.#authSubscription = null;
  }
}

/**
 * Throws a TypeError naming the call (`ProgressSubscription onStatus() argument listener must be a
 * function`) unless `listener` is a function: it would otherwise be kept, and fail (logged as
 * *_listener_failed) each time it is called, in a timer or a read's end, far from the call that gave it.
 */
export function checkListener(listener: unknown, method: "onStatus" | "onRead" | "onCursor"): void {
  checkFunctionOption(listener, `ProgressSubscription ${method}()`, "listener", {
    kind: "argument",
    required: true,
  });
}

class Subscription<Row extends LwwRow> implements ProgressSubscription {
  #listeners = new Set<(status: RealtimeStatus) => void>();
  #readListeners = new Set<(outcome: ReadOutcome) => void>();
  #cursorListeners = new Set<(cursor: unknown) => void>();
  /** The link's cursor while active (emitCursor), kept as it was at unsubscribe(). */
  #cursor: unknown;
  #active = true;
  /**
   * Joined a running link from a cursor of its own (not the one the link started from): its own
   * read of the changes after that cursor has not read to the end yet (UserLink#readOwn reads it, on
   * its own schedule, beside the link's rounds). Meanwhile the link's cursor is not its own, its
   * status not live, and the reads it hears (onRead) are its own.
   */
  #ownReadPending: boolean;
  /**
   * For a subscription that reads for itself: what it was handed (by its own read and the link's),
   * so that it gets each version once and never an older one after a newer one. Null for the others,
   * which are handed exactly what the link applies.
   */
  readonly #seen: ProgressMergeState<Row> | null;
  /** The status its listeners heard last. */
  #statusHeard: RealtimeStatus;
  /** Aborted at unsubscribe(): its own read's call in flight stops with it (not the link's rounds). */
  readonly #ownStop = new AbortController();
  /**
   * Its own read ended when the link's rounds begun so far were this many (UserLink#fetchChanges):
   * until a round begun after it reads the link to the end, the link's cursor is not passed on
   * (linkReadToEnd), for the link's pages may end before where its own read ended, and its cursor
   * never goes back.
   */
  #followAfterRound: number | undefined;

  constructor(
    readonly service: RealtimeService<Row>,
    readonly link: UserLink<Row>,
    readonly handler: ProgressHandler<Row>,
    cursor: unknown,
    readsForItself: boolean,
  ) {
    this.#cursor = cursor;
    this.#ownReadPending = readsForItself;
    this.#seen = readsForItself ? new ProgressMergeState<Row>((a, b) => service.compareRows(a, b)) : null;
    this.#statusHeard = this.status;
  }

  /** Its own read (from its own cursor) is still to read to the end. */
  get ownReadPending(): boolean {
    return this.#active && this.#ownReadPending;
  }

  /** A page of its own read: its rows were handed to it, so the cursor it has everything before. */
  ownPageRead(cursor: unknown): void {
    if (!this.#active) return;
    this.#cursor = cursor;
    this.#callEach(this.#cursorListeners, cursor, "cursor_listener_failed");
  }

  /** Aborted when it unsubscribes: its own read's call in flight is not waited for. */
  get ownStop(): AbortSignal {
    return this.#ownStop.signal;
  }

  /**
   * Its own read reached the end when the link had begun `round` rounds: from now on it follows the
   * link (its status and reads at once; its cursor from the end of the link's next read begun after
   * it that reads to the end, see linkReadToEnd).
   */
  ownReadDone(round: number): void {
    if (!this.#ownReadPending) return;
    this.#ownReadPending = false;
    this.#followAfterRound = round;
    // Live now if the link is (heard "connecting" meanwhile); the link's own statuses it has heard.
    if (this.#active && this.link.status !== this.#statusHeard) this.emitStatus(this.link.status);
  }

  get userId(): string {
    return this.link.userId;
  }
  get channel(): string {
    return this.link.topic;
  }
  get status(): RealtimeStatus {
    return this.#active ? this.#shown(this.link.status) : "offline";
  }

  /** The link's status as this subscription has it: not live while its own read is pending. */
  #shown(status: RealtimeStatus): RealtimeStatus {
    return this.#ownReadPending && status === "live" ? "connecting" : status;
  }
  get cursor(): unknown {
    return this.#cursor;
  }
  get listenerCount(): number {
    return this.#listeners.size + this.#readListeners.size + this.#cursorListeners.size;
  }
  get active(): boolean {
    return this.#active;
  }

  onStatus(listener: (status: RealtimeStatus) => void): () => void {
    checkListener(listener, "onStatus");
    if (!this.#active) return () => {};
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  onRead(listener: (outcome: ReadOutcome) => void): () => void {
    checkListener(listener, "onRead");
    if (!this.#active) return () => {};
    this.#readListeners.add(listener);
    return () => this.#readListeners.delete(listener);
  }

  onCursor(listener: (cursor: unknown) => void): () => void {
    checkListener(listener, "onCursor");
    if (!this.#active) return () => {};
    this.#cursorListeners.add(listener);
    return () => this.#cursorListeners.delete(listener);
  }

  /**
   * A round of the link ended with `outcome`. Not heard while its own read has not reached the end:
   * until then the reads it hears are its own (emitOwnRead), not the link's (whose pages lie after
   * the link's cursor, not its own).
   */
  emitRead(outcome: ReadOutcome): void {
    if (this.#ownReadPending) return;
    this.#callEach(this.#readListeners, outcome, "read_listener_failed");
  }

  /** Its own read ended with `outcome` (after ownReadDone when it read to the end). */
  emitOwnRead(outcome: ReadOutcome): void {
    this.#callEach(this.#readListeners, outcome, "read_listener_failed");
  }

  /**
   * The link's cursor moved past a page whose rows this subscription was handed (while active). Not
   * for one whose own read is pending: the link's rows before its cursor were never handed to it.
   */
  emitCursor(cursor: unknown): void {
    if (!this.#active || this.#ownReadPending || this.#followAfterRound !== undefined) return;
    this.#cursor = cursor;
    this.#callEach(this.#cursorListeners, cursor, "cursor_listener_failed");
  }

  /**
   * The link's round begun as its `round`-th read it to the end, at `cursor`. One whose own read ended
   * before that round began takes the link's cursor from now on: a read to the end is at the API's
   * horizon then, never before where its own read ended; a page before the end may be (the link's
   * cursor lagged its own), and so may the end of a round begun while its own read was under way.
   * Its cursor, which an app persists and may check, does not go back.
   */
  linkReadToEnd(round: number, cursor: unknown): void {
    if (this.#followAfterRound === undefined || round <= this.#followAfterRound) return;
    this.#followAfterRound = undefined;
    if (!this.#active || Object.is(cursor, this.#cursor)) return;
    this.#cursor = cursor;
    this.#callEach(this.#cursorListeners, cursor, "cursor_listener_failed");
  }

  emitStatus(status: RealtimeStatus): void {
    const shown = this.#shown(status);
    // The link going live while this one's own read is pending is no change for it.
    if (shown !== status && shown === this.#statusHeard) return;
    this.#statusHeard = shown;
    this.#callEach(this.#listeners, shown, "status_listener_failed");
  }

  /** Calls each listener (on a copy: one may remove itself); one that throws is logged, the rest still run. */
  #callEach<T>(listeners: Set<(value: T) => void>, value: T, failedEvent: string): void {
    for (const listener of [...listeners]) {
      try {
        listener(value);
      } catch (error) {
        this.service.logEvent("error", failedEvent, { channel: this.channel, error: describeError(error) });
      }
    }
  }

  /**
   * Hands it `change`. `counted`: the change is counted in stats() already (the link applied it), so
   * a compareRows that throws in this subscription's own merge state refuses the row for it alone
   * (logged, not counted again); otherwise (its own read brought the row) that refusal is the
   * row's one count, as invalid.
   */
  deliver(change: ProgressChange<Row>, counted = true): void {
    if (!this.#active) return;
    // One reading for itself is handed each version once, newest last (its own read and the link's
    // overlap: either may bring a version first).
    if (this.#seen) {
      let verdict;
      try {
        verdict = this.#seen.merge(change.kind, change.row);
      } catch (error) {
        // compareRows threw for this row against what this subscription was handed: the row is
        // refused for this subscription only. Not thrown on, where the link hands a row to each of
        // its subscriptions in turn (the ones after this would miss it, and a change the link
        // applied and counted would be counted as invalid too).
        this.link.compareRowsFailed(error, change.row, change.source, { counted, for: "subscription" });
        return;
      }
      if (verdict !== "applied") return;
    }
    try {
      this.handler(change);
    } catch (error) {
      this.service.logEvent("error", "handler_failed", {
        channel: this.channel,
        error: describeError(error),
      });
    }
  }

  /**
   * The link's syncNow() (which makes the own reads of the link's subscriptions waiting for their retry
   * now, this one's too, not waiting for the others'); while its own read has not reached the end, that
   * read too (now, or the one in flight, or the one made again in place of one a join or drop cut off),
   * and how that ended unless it reached the end: the link's read is not "done" for it before its own is.
   */
  async syncNow(): Promise<ReadOutcome> {
    if (!this.#active) return "failed";
    if (!this.#ownReadPending) return await this.link.syncNow();
    const [linkRead, ownRead] = await Promise.all([this.link.syncNow(), this.link.readOwnNow(this)]);
    return ownRead === "done" ? linkRead : ownRead;
  }

  async unsubscribe(): Promise<void> {
    if (!this.#active) return;
    this.#active = false;
    this.#listeners.clear();
    this.#readListeners.clear();
    this.#cursorListeners.clear();
    this.#ownStop.abort(new Error("unsubscribed"));
    this.link.subscriptions.delete(this);
    if (this.link.subscriptions.size === 0) await this.link.close();
    else this.link.subscriptionLeft(this);
  }
}

/** Refs of the access_token messages the service sends itself (no reply is expected). */
let tokenSends = 0;

/** Everything the service runs for one user: the channel, the catch-up, polling and retries. */
class UserLink<Row extends LwwRow> {
  readonly topic: string;
  readonly subscriptions = new Set<Subscription<Row>>();
  readonly merge: ProgressMergeState<Row>;
  status: RealtimeStatus = "connecting";
  #cursor: unknown;
  #attempt = 0;
  /** Bumped whenever the current channel is abandoned: callbacks of older channels are ignored. */
  #generation = 0;
  #channel: RealtimeChannel | null = null;
  /** The Realtime client's token when the current channel's join was sent: the one the server holds. */
  #joinToken: string | null = null;
  /** A join failed for a token replaced in flight was retried at once; until joined, no more of those. */
  #tokenRetryUsed = false;
  #joined = false;
  /** The socket was still opening when the current channel's join was pushed (buffered by realtime-js). */
  #socketOpeningAtJoin = false;
  #caughtUp = false;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #pollTimer: ReturnType<typeof setTimeout> | undefined;
  /** Runs while a join made when the link was not polling is unanswered (joinGraceMs). */
  #joinGraceTimer: ReturnType<typeof setTimeout> | undefined;
  /** The last "changes since" round; rounds never overlap (the cursor is shared). */
  #fetchChain: Promise<ReadOutcome> = Promise.resolve("done");
  #fetchInFlight = false;
  /**
   * Reads (catch-ups, polls, safety reads, syncNow()'s) that failed in a row: the next one made for a
   * failure waits longer (#nextPollDelay). An answer resets it, and so does going live, and a live
   * link's drop when the link was not backing off for it (#fail: a stale count); a round a Retry-After
   * held back (no call) or a join or drop cut off counts nothing.
   */
  #failedReadsInRow = 0;
  /**
   * The reads in flight or queued (the catch-up, polls, safety reads, syncNow()'s). A join aborts them
   * all (#cutReadsOff): each began before it (the poll while rejoining, the join grace's, a syncNow()
   * made while joining), and the catch-up, which rounds queue behind, must not wait for one that hangs
   * (up to requestTimeoutMs) while the changes missed while the channel was down wait with it. A
   * joined channel's drop aborts them all too: the polling it starts must not wait for one that hangs
   * either (a request made on the network the socket died with may hang as well).
   */
  readonly #readsInFlight = new Set<AbortController>();
  /**
   * How the first read after the last join or drop that cut reads off ended (the catch-up the join
   * started, the poll the drop started): a read cut off ends as that one does. Its resolve is held
   * until that read has ended, or called with "failed" at once by a drop whose poll waits (#fail)
   * and by close() (#endCutReads).
   */
  #readAfterCut: Promise<ReadOutcome> | null = null;
  #readAfterCutEnded: ((outcome: ReadOutcome) => void) | null = null;
  /** Until when (monotonicNow) the API asked not to be read again (Retry-After of a failed round). */
  #retryAfterUntil = 0;
  /**
   * The last read that ended (not cut off) was refused for its token (401): the token it was sent with
   * (RealtimeService.readToken when its call began); undefined when it was not, or its read again for
   * a new token is under way (#readAgainForNewToken).
   */
  #authRefusedWith: string | null | undefined = undefined;
  /** #poll() calls running (a poll's end schedules the next one). */
  #pollsRunning = 0;
  /** "changes since" rounds queued so far (#fetchChanges): rounds settle in this order. */
  #roundsQueued = 0;
  /** Polls waiting for the round in flight before they queue their own (#pollOnce). */
  #pollsQueuing = 0;
  /**
   * syncNow() calls so far, and how many of them a read that began after them has read to the end:
   * while fewer, the app's read is owed and a live link reads again until one does (#scheduleNextLiveRead).
   */
  #readsAsked = 0;
  #readsSettled = 0;
  /**
   * The #pollTimer set while live to read again sooner than the safety read's pace (#scheduleNextLiveRead:
   * a read owed to a syncNow(), or one that failed), while it is that.
   */
  #readAgainTimer: ReturnType<typeof setTimeout> | undefined;
  /**
   * A heartbeat reply is late while live: the socket may be dead though it looks open, so the link
   * reads every pollIntervalMs instead of livePollIntervalMs until a reply comes or the channel drops.
   */
  #heartbeatLate = false;
  /** When (monotonicNow) the current channel was joined. */
  #joinedAt = -Infinity;
  /**
   * The own reads of subscriptions that joined from a cursor of their own (addSubscription), until each
   * has read to the end (#readOwn). Outside the link's rounds: neither waits for the other.
   */
  readonly #ownReads = new Map<Subscription<Row>, OwnRead>();
  /**
   * The link's rounds that have begun reading (#fetchChanges): a subscription's cursor follows the
   * link's from the end of one begun after its own read ended (Subscription.linkReadToEnd).
   */
  #roundsBegun = 0;
  /**
   * A round that made a call has ended (the link's first read): a subscription that joined before
   * then reads for itself once it has (#readOwnAfterFirstRead).
   */
  #hasRead = false;
  /**
   * The wait before the current join (ms), never less than SOCKET_TEARDOWN_MS: the backoff delay it
   * was scheduled after (a failed join's retry, drawn from 0, counted as at least that floor), or the
   * first step's ceiling, at least SOCKET_TEARDOWN_MS (#firstStepWaitMs), for a join made without one
   * (the link's first, a syncNow()'s, a new token's). A channel that stays joined this long (or
   * backoff.maxMs) starts the ladder again.
   */
  #waitBeforeJoinMs: number;
  /** When a joined channel last dropped (monotonicNow): no rejoin within SOCKET_TEARDOWN_MS of it. */
  #droppedAt = -Infinity;
  /** Aborted by close(): every changesSince call of the link, in flight or queued, stops with it. */
  readonly #lifetime = new AbortController();
  #closed = false;
  #closing: Promise<void> | null = null;

  /** `startCursor`: the cursor of the subscription that started the link, which it reads from. */
  constructor(
    readonly service: RealtimeService<Row>,
    readonly userId: string,
    readonly startCursor: unknown,
  ) {
    this.topic = `progress:${userId}`;
    this.merge = new ProgressMergeState<Row>((a, b) => service.compareRows(a, b));
    this.#cursor = startCursor;
    this.#waitBeforeJoinMs = this.#firstStepWaitMs();
  }

  /** The cursor the link has read to: what its next read asks from (Subscription.cursor). */
  get cursor(): unknown {
    return this.#cursor;
  }

  start(): void {
    this.#log("info", "subscribe_started", {});
    this.#emitStatus();
    void this.#connect();
  }

  /**
   * A later subscription for the user (the link runs already). One starting from the cursor the link
   * started from is handed what the link has handed its subscriptions since: the newest version of
   * each series, as an upsert, or as a delete where that was a hard delete (source "catchup"), and has
   * the link's cursor. One starting from another cursor (an older one, null, a newer one) reads the
   * changes after it for itself (#readOwn), as a first subscription would: now, or when the link's
   * first read has ended if it has not read yet (that read goes first). Its read makes no read of the
   * link, and the link's reads do not wait for it: live changes reach it through the link meanwhile.
   */
  addSubscription(handler: ProgressHandler<Row>, cursor: unknown): Subscription<Row> {
    const sameStart = Object.is(cursor ?? null, this.startCursor ?? null);
    const subscription = new Subscription<Row>(
      this.service,
      this,
      handler,
      sameStart ? this.#cursor : cursor,
      !sameStart,
    );
    this.subscriptions.add(subscription);
    if (sameStart) {
      for (const { row, deleted } of this.merge.entries()) {
        subscription.deliver({ kind: deleted ? "delete" : "upsert", row, source: "catchup" });
      }
      return subscription;
    }
    this.#log("info", "subscription_reads_from_its_cursor", {});
    this.#ownReads.set(subscription, { failuresInRow: 0, afterFirstRead: !this.#hasRead });
    if (this.#hasRead) void this.readOwnNow(subscription);
    return subscription;
  }

  /**
   * A subscription's own read (it joined from a cursor of its own and has not read to the end yet),
   * made now in place of its retry scheduled, or the one in flight; resolves with how it ended. A
   * Retry-After the API sent that still runs holds it until its end ("failed" now, no call made).
   */
  readOwnNow(subscription: Subscription<Row>): Promise<ReadOutcome> {
    const own = this.#ownReads.get(subscription);
    if (!own || this.#closed || !subscription.ownReadPending) return Promise.resolve("failed");
    if (own.running) return own.running;
    own.afterFirstRead = false;
    own.afterLinkRead = false;
    own.deadlinePassed = false;
    this.service.timers.clear(own.timer);
    own.timer = undefined;
    own.timerForDeadline = false;
    const wait = this.#retryAfterLeftMs();
    if (wait > 0) {
      this.#scheduleOwnRead(subscription, own, wait);
      return Promise.resolve("failed");
    }
    own.running = this.#readOwn(subscription, own);
    return own.running;
  }

  /**
   * Reads the changes after a subscription's own cursor to the end, through its own merge state
   * (Subscription.deliver), outside the link's rounds: a call of it that hangs (up to
   * requestTimeoutMs) holds no read of the link (a syncNow(), a safety read), and no read of the
   * link waits for it. Its failure or "behind" is its own: heard by it alone (onRead), made again by
   * itself (#scheduleOwnRead), with no read of the link. Its calls stop at its unsubscribe. A join or a
   * joined channel's drop cuts it off as they cut the link's reads (#cutOwnReadsOff): it is read again
   * from its cursor as its answered pages left it, at once, or, after a drop, when the link's reads
   * would not read at once either: after failures of its own at the time its retry would come, after
   * failures of the link's (the link backing off: #backingOff) once the link reads again after its
   * backoff or is answered (own.afterLinkRead), or at its deadline (own.linkReadDeadline) when neither
   * has come by then (a read of the link under way then, once that has ended), after both at the later
   * of the two, and while a Retry-After runs at its end. The read cut off ends as the one read in its
   * place at once does (one refused 401 before it for a token replaced since is read so, with that
   * token), or "failed" at once when that one waits; the cut is neither heard nor counted.
   */
  async #readOwn(subscription: Subscription<Row>, own: OwnRead): Promise<ReadOutcome> {
    let outcome: ReadOutcome | "closed" | "cut";
    for (;;) {
      outcome = await this.#readOwnOnce(subscription, own);
      if (outcome !== "cut") break;
      // Unsubscribed (or the link closed) while the cut settled (from the app's log callback for the
      // cut, or its code run as a promise settles meanwhile): nothing is made again for it, and no retry
      // is left pending (subscriptionLeft has cleared its timer already, and nothing would clear one set now).
      if (this.#closed || !subscription.ownReadPending) {
        own.running = undefined;
        return "failed";
      }
      // Read again only once the read cut off has settled (this loop): two reads of its own at once
      // could hand it a page from before where the other's last page left its cursor (back).
      // After a drop, as the poll the drop starts waits (#fail): after failures of its own, their
      // backoff; while the link backed off at the drop (its last read failed, and it reads again for
      // that after the polls' backoff: #backingOff), not before the link reads again after that
      // backoff (its poll, whether answered or not: a failure that is the link's alone, such as a 400
      // for its cursor, would otherwise hold it for good) or a read of the link is answered (the
      // catch-up of the rejoin), whichever comes first, and at its deadline at the latest (a channel
      // that drops again before that poll's time puts it off each time: #scheduleLinkReadDeadline):
      // with no failure of its own, not at once (one call more per such subscription at every drop,
      // against an API that may be failing); with failures of its own, not at the end of its own
      // backoff when that comes before (it may be shorter than the link's), but at the later of the
      // two. A change written meanwhile stays after its cursor, which has not moved.
      const afterLinkRead = own.cutByDrop && own.linkReadDeadline !== undefined;
      const wait = own.cutByDrop && own.failuresInRow > 0
        ? this.#nextPollDelay("failed", own.failuresInRow)
        : this.#retryAfterLeftMs();
      if (afterLinkRead || wait > 0) {
        // As a read the drop cut off whose poll waits: its read is made at its time, heard then, and it
        // ends now, "failed" (a syncNow() waiting for it resolves so: not held for a backoff); unless
        // its last answer was a refusal for a token replaced since: read now with that token (as the
        // link's reads are: #readAgainForNewToken), and it ends as that read does.
        own.running = undefined;
        if (afterLinkRead) own.afterLinkRead = true;
        // Its own retry (failures of its own), beside the wait for the link's read: whichever ends
        // first leaves the read to the other (#scheduleOwnRead's timer, #readOwnAfterLinkRead), its
        // timer then waiting for the deadline. With none of its own, the link's read or the deadline
        // (a Retry-After running ends before either).
        if (!afterLinkRead || own.failuresInRow > 0) this.#scheduleOwnRead(subscription, own, wait);
        else this.#scheduleLinkReadDeadline(subscription, own);
        const readNow = this.#readOwnAgainForNewToken(subscription, own);
        return readNow ? await readNow : "failed";
      }
    }
    own.running = undefined;
    if (outcome === "closed" || this.#closed || !subscription.ownReadPending) return "failed";
    if (outcome === "done") {
      this.#ownReads.delete(subscription);
      this.#log("info", "subscription_caught_up", {});
      subscription.ownReadDone(this.#roundsBegun);
    } else {
      own.failuresInRow = outcome === "failed" ? own.failuresInRow + 1 : 0;
      // A failure's retry waits the polls' backoff for its own failures in a row, and while the link
      // backs off (#backingOff) for the link's, when more: its own count may be lower (one after a
      // drop's wait released it, the link at its third), and its retry would read the API failing the
      // link more often than the link's backoff lets the link read it.
      const failures = outcome === "failed" && this.#backingOff
        ? Math.max(own.failuresInRow, this.#failedReadsInRow)
        : own.failuresInRow;
      this.#scheduleOwnRead(subscription, own, this.#nextPollDelay(outcome, failures));
    }
    subscription.emitOwnRead(outcome);
    // Refused 401 for a token replaced while it was under way.
    if (outcome !== "done") this.#readOwnAgainForNewToken(subscription, own);
    return outcome;
  }

  /**
   * One own read (#readOwn) to its end: "cut" when a join or a joined channel's drop cut it off
   * (own.cut, aborted by #cutOwnReadsOff; logged catchup_cut_off with for: subscription, as the
   * link's cut reads log it), its calls stopped by that or by its unsubscribe (subscription.ownStop).
   */
  async #readOwnOnce(subscription: Subscription<Row>, own: OwnRead): Promise<ReadOutcome | "closed" | "cut"> {
    let sentToken = this.service.readToken;
    own.cutByDrop = false;
    const cut = new AbortController();
    own.cut = cut;
    const unsubscribed = subscription.ownStop;
    const onUnsubscribe = () => cut.abort(unsubscribed.reason);
    if (unsubscribed.aborted) onUnsubscribe();
    else unsubscribed.addEventListener("abort", onUnsubscribe, { once: true });
    try {
      const outcome = await this.#readPages(
        "catchup",
        () => subscription.cursor,
        (kind, row) => subscription.deliver({ kind, row, source: "catchup" }, false),
        (next) => subscription.ownPageRead(next),
        cut.signal,
        subscription,
        (token) => sentToken = token,
      );
      own.authRefusedWith = undefined; // answered
      return outcome;
    } catch (error) {
      // A call let go at its unsubscribe or the link's close: nobody is handed its end.
      if (this.#closed || !subscription.ownReadPending) return "failed";
      if (cut.signal.aborted) {
        // A join or drop cut it off: no failure of the API (so not catchup_failed, which an app may count).
        this.#log("info", "catchup_cut_off", {
          reason: String(cut.signal.reason?.message ?? cut.signal.reason),
          for: "subscription",
        });
        return "cut";
      }
      // Refused for its token: read again as soon as a new one comes, as the link's reads are
      // (#readOwnAgainForNewToken), not after its backoff. Set here, at an answer or a failure, not
      // at the read's start: a read cut off (above) was answered nothing, and a refusal before it
      // still holds (its retry waits the backoff, but a new token reads at once), as the link's does.
      own.authRefusedWith = refusedForToken(error) ? sentToken : undefined;
      this.#log("warn", "catchup_failed", {
        error: describeError(error, "message"),
        // As the link's reads log it (README: Logs).
        ...this.#heedReadFailure(error, sentToken),
        for: "subscription",
      });
      return "failed";
    } finally {
      own.cut = undefined;
      unsubscribed.removeEventListener("abort", onUnsubscribe);
    }
  }

  /**
   * A join or a joined channel's drop (`byDrop`) cuts off the own reads under way, as it cuts off the
   * link's (#cutReadsOff): one begun on the network the socket died with may hang as well, up to
   * requestTimeoutMs, and the subscription's syncNow() waits for it. Each is read again in its place
   * (#readOwn). Own reads waiting for their retry keep their time. `linkPollWaitMs`: the wait of the
   * poll the drop starts, given when the link backed off as the drop found it (#backingOff): each read
   * cut off then waits for the link's read (own.afterLinkRead) until that poll's time and one call's
   * longest (requestTimeoutMs) have run from now at most (own.linkReadDeadline): when that poll would
   * have ended had nothing put it off.
   */
  #cutOwnReadsOff(reason: string, byDrop: boolean, linkPollWaitMs?: number): void {
    const deadline = byDrop && linkPollWaitMs !== undefined
      ? monotonicNow() + linkPollWaitMs + this.#requestTimeoutMs
      : undefined;
    for (const own of this.#ownReads.values()) {
      if (!own.cut) continue;
      own.cutByDrop = byDrop; // the last cut decides how it is read again
      own.linkReadDeadline = deadline;
      own.cut.abort(new Error(reason));
    }
  }

  /**
   * A subscription's own read was refused for its token (401) and the token has changed since: it is
   * read now, in place of its retry after the backoff, once per new token (refused again, it waits
   * for the next token or its backoff), as the link's reads are (#readAgainForNewToken); not while
   * it is in flight or a Retry-After runs. Returns the read made now, if one is.
   */
  #readOwnAgainForNewToken(subscription: Subscription<Row>, own: OwnRead): Promise<ReadOutcome> | undefined {
    const refusedWith = own.authRefusedWith;
    if (this.#closed || refusedWith === undefined || this.service.readToken === refusedWith) return;
    if (own.running || this.#retryAfterLeftMs() > 0 || !subscription.ownReadPending) return;
    own.authRefusedWith = undefined;
    this.#log("info", "read_after_new_token", { for: "subscription" });
    return this.readOwnNow(subscription);
  }

  /**
   * A subscription's own read failed or was answered behind: it is made again by itself after
   * `waitMs` (the polls' backoff for its failures in a row, or pollIntervalMs when behind), never
   * before a Retry-After's end; and, when it also waits for the link's read (own.afterLinkRead: a drop
   * cut it off while the link backed off), not before that either: its timer's end then leaves the
   * read to that read's end (#readOwnAfterLinkRead) or its deadline (#scheduleLinkReadDeadline).
   */
  #scheduleOwnRead(subscription: Subscription<Row>, own: OwnRead, waitMs: number): void {
    if (this.#closed) return;
    this.service.timers.clear(own.timer);
    own.timerForDeadline = false;
    own.timer = this.service.timers.set(() => {
      own.timer = undefined;
      if (own.afterLinkRead) this.#scheduleLinkReadDeadline(subscription, own);
      else void this.readOwnNow(subscription);
    }, Math.max(waitMs, this.#retryAfterLeftMs()));
  }

  /**
   * An own read waiting for the link's read (own.afterLinkRead) with no retry of its own to come: its
   * timer (the one of #scheduleOwnRead: one per subscription, cleared at its unsubscribe and the
   * link's close) now runs to own.linkReadDeadline, counted from the drop's cut, and reads it then
   * whether the link has read or not (a read of the link under way then, once that has ended:
   * #readOwnAfterLinkReadUnderWay). The link's poll after its backoff may never come: each drop of
   * a channel that drops sooner than that poll's time schedules it again, and the rejoin's catch-up
   * in between (made at once) fails as the link's reads do (a 400 for its cursor, for good); nothing
   * would read it before the app's syncNow(). Later drops do not move the deadline (they find no own
   * read under way to cut off).
   */
  #scheduleLinkReadDeadline(subscription: Subscription<Row>, own: OwnRead): void {
    if (this.#closed) return;
    this.service.timers.clear(own.timer);
    own.timerForDeadline = true;
    own.timer = this.service.timers.set(() => {
      own.timer = undefined;
      own.timerForDeadline = false;
      if (this.#fetchInFlight) this.#readOwnAfterLinkReadUnderWay(subscription, own);
      else void this.readOwnNow(subscription);
    }, Math.max(0, (own.linkReadDeadline ?? 0) - monotonicNow()));
  }

  /**
   * An own read's deadline (#scheduleLinkReadDeadline) has come while a read of the link is under way:
   * it is read once the link's rounds queued by now have ended, however they end, instead of beside
   * them. The deadline counts one call's longest (requestTimeoutMs) for the link's poll, but a poll
   * reads up to 1000 pages, each call with that timeout of its own, and may queue behind a round that
   * hangs, so it can still be reading at the deadline; read then, the own read called the API while the
   * link's read had not yet told whether it answers (fd695bc, 334dde3: never sooner than the link's
   * read). Those rounds end by themselves (each call by its timeout, a drop or the link's close cuts
   * them off), so this wait ends too. A read of the link answered, or its timer poll ended, reads it
   * as before (#readOwnAfterLinkRead: own.afterLinkRead still set, no timer), and so does a syncNow();
   * the end of the rounds then finds it read, or under way, and makes no read again. Rounds queued
   * behind them before they ended are waited for too: a join cuts the read under way off and its
   * catch-up, made at once, reads in its place (before, the own read was read as the read cut off
   * ended, beside that catch-up). Each such round is one a read of the link queued while the rounds
   * before it ran, so the wait ends as they do.
   */
  #readOwnAfterLinkReadUnderWay(subscription: Subscription<Row>, own: OwnRead): void {
    own.deadlinePassed = true;
    const afterRounds = (rounds: Promise<ReadOutcome>) => {
      void rounds.then(() => {
        if (this.#closed || !own.deadlinePassed || this.#ownReads.get(subscription) !== own) return;
        if (this.#fetchChain !== rounds) afterRounds(this.#fetchChain); // queued meanwhile
        else void this.readOwnNow(subscription);
      });
    };
    afterRounds(this.#fetchChain);
  }

  /** The link's first read has ended: the subscriptions that joined before it read for themselves now. */
  #readOwnAfterFirstRead(): void {
    this.#hasRead = true;
    for (const [subscription, own] of this.#ownReads) {
      if (own.afterFirstRead) void this.readOwnNow(subscription);
    }
  }

  /**
   * A read of the link was answered (done or behind), or one it made at its time (a timer's: its poll
   * after the backoff) ended, answered or failed: the own reads a drop cut off while the link was
   * backing off (own.afterLinkRead, #readOwn) are read now: the API answers again, or the link's
   * backoff has run (its failure may be the link's alone, a 400 for its cursor, which the link may
   * meet for good: nothing would read them before a syncNow()). Those whose own retry (after failures
   * of their own) is still to come are read then, by its timer, no longer waiting for the link; those
   * whose timer waits for their deadline (#scheduleLinkReadDeadline) are read now. Not a
   * read the link made at once that failed (the catch-up of a join: made without a backoff, against
   * an API that may still be failing).
   */
  #readOwnAfterLinkRead(): void {
    for (const [subscription, own] of [...this.#ownReads]) {
      if (!own.afterLinkRead) continue;
      if (own.timer !== undefined && !own.timerForDeadline) own.afterLinkRead = false;
      else void this.readOwnNow(subscription);
    }
  }

  /**
   * A syncNow() of the link (the service's, or any subscription's of the link): the own reads of
   * subscriptions that joined from a cursor of their own and wait for their retry (failed, or answered
   * behind, or cut off by a drop and waiting for the link's read) are made now, in place of that
   * retry: the app's word that the conditions changed (back in the foreground, back online) is for
   * every subscription of the link, as the rejoin and the read it makes are (the link's read too is
   * made now, backing off or not). Not waited for: the link's read is what the call resolves with (a
   * subscription's own syncNow() waits for its own read too: Subscription.syncNow).
   */
  #readWaitingOwnReadsNow(): void {
    for (const [subscription, own] of [...this.#ownReads]) {
      if (own.timer !== undefined || own.afterLinkRead) void this.readOwnNow(subscription);
    }
  }

  /** A subscription left a link that others keep: its own read is made again no more. */
  subscriptionLeft(subscription: Subscription<Row>): void {
    const own = this.#ownReads.get(subscription);
    if (!own) return;
    this.service.timers.clear(own.timer);
    this.#ownReads.delete(subscription);
  }

  apply(kind: ChangeKind, row: Row, source: ChangeSource, messageId?: string): ProgressChange<Row> | null {
    if (this.#closed) return null;
    const verdict = this.merge.merge(kind, row, messageId);
    const counters = this.service.counters;
    if (verdict !== "applied") {
      if (verdict === "stale") counters.stale++;
      else counters.duplicates++;
      this.#log("debug", `change_${verdict}`, { source, series_id: row.series_id, message_id: messageId });
      return null;
    }
    counters.applied++;
    const change: ProgressChange<Row> = { kind, row, source, ...(messageId ? { messageId } : {}) };
    for (const subscription of [...this.subscriptions]) subscription.deliver(change);
    return change;
  }

  /**
   * compareRows threw for `row`, a broadcast's or one a read brought (through the link's merge, or a
   * subscription's that reads for itself): the app's bug on that one row, not a failure of the link or
   * of the broadcast. The row is taken as invalid, the same whichever way it came: skipped (the read
   * goes on, its cursor past the row; the channel stays), counted (stats().invalid) and logged
   * invalid_row with by: "compareRows" at error, as a handler that throws is (the app must fix it, and
   * nothing retries it), where a row parseRow refuses is a warning (the data, not the app's code).
   * `counted`: a subscription's own merge state refused a row the link applied (Subscription.deliver):
   * refused for that subscription only, the others handed it; counted once, as applied, not invalid
   * too. `for: "subscription"`: the merge state that threw was a subscription's, not the link's.
   */
  compareRowsFailed(
    error: unknown,
    row: Row,
    source: ChangeSource,
    { counted = false, for: readFor }: { counted?: boolean; for?: "subscription" } = {},
  ): void {
    // A subscription's own merge state refusing a row the link applied: the change is counted once,
    // as applied (the other subscriptions were handed it), and logged for the one that refused it.
    if (!counted) this.service.counters.invalid++;
    this.#log("error", "invalid_row", {
      error: describeError(error, "message"),
      by: "compareRows",
      series_id: row.series_id,
      source,
      ...(readFor ? { for: readFor } : {}),
    });
  }

  /**
   * A new access token: a link whose last read was refused for its token reads now (#readAgainForNewToken),
   * and one whose channel is not joined retries the join now instead of waiting out its backoff.
   */
  onTokenChanged(): void {
    if (this.#closed) return;
    this.#readAgainForNewToken();
    for (const [subscription, own] of [...this.#ownReads]) this.#readOwnAgainForNewToken(subscription, own);
    if (this.#joined) return;
    this.#attempt = 0;
    if (!this.#channel) this.#reconnectSoon();
    else {
      this.service.timers.clear(this.#reconnectTimer);
      this.#reconnectTimer = undefined;
    }
  }

  /**
   * No heartbeat reply within heartbeatReplyTimeoutMs: a live link reads now (what a dead socket
   * did not bring), and keeps reading every pollIntervalMs until heartbeatReplied() or a drop.
   */
  heartbeatReplyLate(timeoutMs: number, sentAt: number): void {
    if (this.#closed || !(this.#joined && this.#caughtUp) || this.#heartbeatLate) return;
    // Joined after that heartbeat went out: the join's reply came after it, so the socket carried
    // then (or the heartbeat went out on a socket that closed since, which phoenix reports to no
    // heartbeat callback).
    if (this.#joinedAt > sentAt) return;
    this.#heartbeatLate = true;
    this.#log("warn", "heartbeat_reply_late", { waited_ms: timeoutMs });
    this.service.timers.clear(this.#pollTimer);
    this.#pollTimer = undefined;
    void this.#poll();
  }

  /** A heartbeat reply came: the socket carries again, the safety read goes back to its own pace. */
  heartbeatReplied(): void {
    if (!this.#heartbeatLate) return;
    this.#heartbeatLate = false;
    this.#log("info", "heartbeat_reply_came", {});
    // (A read the app is owed, or one made again after a failed read, keeps its time: the safety
    // read's pace does not put it off.)
    if (this.#pollTimer !== undefined && !this.#readOwed && this.#pollTimer !== this.#readAgainTimer) {
      this.service.timers.clear(this.#pollTimer);
      this.#pollTimer = undefined;
      this.#scheduleLivePoll();
    }
  }

  /** See RealtimeService.syncNow; resolves with how its read ended ("failed" when none was made). */
  async syncNow(): Promise<ReadOutcome> {
    if (this.#closed) return "failed";
    this.#readsAsked++; // owed until a read that begins now reads to the end
    this.#readWaitingOwnReadsNow();
    // The app's word that the conditions changed (back in the foreground, back online): the failures
    // before it say little about now, so the join ladder starts again at its first step. A join
    // already in flight is not doubled: it counts as that first step (if it fails, its retry waits
    // the first step's backoff). A channel that looks joined may sit on a socket that died while the
    // app was away and that realtime-js has not given up yet: its drop, which may come just after,
    // is rejoined at the first step too, as it would be had the drop come before this call.
    if (this.#reconnectTimer !== undefined) {
      this.#attempt = 0; // the join made now is the first
      this.#reconnectSoon();
    } else if (this.#joined) {
      this.#attempt = 0; // as after a channel that held (#fail)
    } else {
      this.#attempt = Math.min(this.#attempt, 1);
      this.#waitBeforeJoinMs = this.#firstStepWaitMs(); // the join in flight is the first step
    }
    const wait = this.#retryAfterLeftMs();
    if (wait > 0) {
      // The API asked to be left alone for a while (Retry-After): the read is made when it ends, in
      // place of the one due then or later (a live link's safety read may be a minute off, or off).
      // A read running now is held by the same wait and finds this one scheduled.
      this.service.timers.clear(this.#pollTimer);
      this.#pollTimer = undefined;
      this.#startPolling(wait);
      return "failed";
    }
    // The read that was due later (a poll, or the safety read while live) is made now instead; it
    // schedules the next one as usual. A round already in flight is followed by a fresh one: it may
    // have read before what made the app call this.
    this.service.timers.clear(this.#pollTimer);
    this.#pollTimer = undefined;
    return await this.#poll();
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#closed = true;
      this.#generation++;
      this.service.linkClosed(this);
      this.service.timers.clear(this.#reconnectTimer);
      this.service.timers.clear(this.#pollTimer);
      this.service.timers.clear(this.#joinGraceTimer);
      this.#reconnectTimer = this.#pollTimer = this.#joinGraceTimer = undefined;
      const ownReads = [...this.#ownReads.values()];
      for (const own of ownReads) this.service.timers.clear(own.timer);
      this.#ownReads.clear();
      this.#endCutReads("failed");
      this.#releaseChannel();
      // A request that hangs must not hold the unsubscribe (or a round queued after it) hostage.
      this.#lifetime.abort(new Error("unsubscribed"));
      await this.service.removalsSettled(this.topic);
      await this.#fetchChain.catch(() => {});
      await Promise.allSettled(ownReads.map((own) => own.running));
      this.status = "offline";
      this.#log("info", "unsubscribed", {});
    })();
    return this.#closing;
  }

  // ------------------------------------------------------------------------------ live channel

  async #connect(): Promise<void> {
    if (this.#closed || this.#channel) return;
    const generation = ++this.#generation;
    this.#attempt++;
    this.service.watchHeartbeats();
    await this.service.refreshRealtimeAuth();
    // A channel for this topic that is still being left would be handed back by client.channel().
    await this.service.removalsSettled(this.topic);
    if (this.#closed || generation !== this.#generation) return;

    const client = this.service.client;
    // Realtime said this token has expired (closed the channel or refused a join for it): a join with
    // it would be refused too, and only after Supabase's 5 s join-error backoff, during which the socket
    // answers nothing else (heartbeats, the app's other channels). That is the window while the app
    // fetches the next token (a token keeper's check, a refresh that waits for the network): the join
    // waits for that token instead, joined at once when it comes (setAccessToken(), TOKEN_REFRESHED:
    // onTokenChanged), the token asked for again at each step of the backoff; the link polls meanwhile.
    const token = this.service.observeToken();
    if (this.service.tokenKnownExpired(token)) {
      this.#log("info", "join_held_token_expired", {});
      this.#joinToken = token; // no token replaced in flight: #fail keeps the backoff
      this.#fail(generation, "its token has expired: waiting for a new one");
      return;
    }
    const existing = client.getChannels().find((c) => c.topic === `realtime:${this.topic}`);
    if (existing) {
      // Someone else on this client uses the topic (the app's own channel for it, or another service
      // on the client subscribed to the same user: subscribeToProgress shares one); joining it twice is
      // impossible in realtime-js. A condition of the app, not a failure of the service: the link polls
      // meanwhile and retries after the backoff. A warning, as Supabase Realtime logs what a client sent
      // that it cannot take (an expired token at a join); its server takes a second join of a topic on
      // one socket as replacing the first (Phoenix, logged at debug), which realtime-js never sends.
      this.#log("warn", "topic_in_use", { channel_state: existing.state });
      this.#fail(generation, "topic already used by another channel on this client");
      return;
    }
    this.#log("info", "join_attempt", {});
    const channel = client.channel(this.topic, {
      config: { private: true, broadcast: { self: false, ack: false } },
    });
    this.#channel = channel;
    this.service.counters.channels++;
    this.service.counters.joinAttempts++;
    channel
      .on("broadcast", { event: "*" }, (message) => {
        if (generation !== this.#generation) return;
        // Called from realtime-js's socket message handler: whatever still throws (the callbacks'
        // failures are caught where they are called: a compareRows that throws refuses its row) is
        // logged here, not thrown into realtime-js, where nothing catches it.
        try {
          this.service.handleProgressUpdate(message, "realtime");
        } catch (error) {
          this.#log("error", "broadcast_failed", { error: describeError(error) });
        }
      })
      .on("system", {}, (payload: { status?: string; message?: string }) => {
        if (generation !== this.#generation) return;
        this.#log(payload?.status === "error" ? "warn" : "info", "system_message", {
          message: payload?.message,
        });
        // Supabase's shutdown for an expired token (its phx_close follows: the channel's CLOSED).
        if (payload?.status === "error" && TOKEN_EXPIRED.test(String(payload?.message))) {
          this.service.tokenExpiredOnChannel();
        }
      });
    this.#joinToken = client.realtime.accessTokenValue;
    channel.subscribe(
      (state, error) => this.#onChannelState(generation, state, error),
      this.service.options.joinTimeoutMs,
    );
    // subscribe() opens the socket when none is open: the join waits in realtime-js's buffer meanwhile.
    this.#socketOpeningAtJoin = this.service.noteJoinPushed();
    this.#startJoinGrace(generation);
  }

  /**
   * A join made while nothing reads the changes (the link's first, or one a new token started while
   * not polling) gets joinGraceMs to be answered; then the link polls meanwhile. A refusal comes
   * only after Supabase's 5 s join-error backoff, and an unanswered join fails only at the join
   * timeout: until then the device would read nothing. Polls that began before the join never
   * count as its catch-up (#pollOnce), so reading early cannot skip a change.
   */
  #startJoinGrace(generation: number): void {
    const graceMs = this.service.options.joinGraceMs ?? DEFAULT_JOIN_GRACE_MS;
    if (!Number.isFinite(graceMs) || this.#pollTimer !== undefined || this.#pollsRunning > 0) return;
    this.service.timers.clear(this.#joinGraceTimer);
    this.#joinGraceTimer = this.service.timers.set(() => {
      this.#joinGraceTimer = undefined;
      if (this.#closed || generation !== this.#generation || this.#joined) return;
      // Reading already (a syncNow() meanwhile): that read schedules the next one itself.
      if (this.#pollTimer !== undefined || this.#pollsRunning > 0) return;
      this.#log("info", "join_unanswered", { waited_ms: graceMs });
      this.#startPolling();
    }, Math.max(0, graceMs));
  }

  #onChannelState(generation: number, state: string, error?: Error): void {
    if (this.#closed || generation !== this.#generation) return;
    this.service.timers.clear(this.#joinGraceTimer);
    this.#joinGraceTimer = undefined;
    if (state === "SUBSCRIBED") {
      this.service.noteSocketOpened();
      this.#joined = true;
      this.#joinedAt = monotonicNow();
      this.#caughtUp = false;
      this.#heartbeatLate = false;
      this.#tokenRetryUsed = false;
      this.#log("info", "joined", {});
      if (this.#channel) this.#sendTokenIfChangedSinceJoin(this.#channel);
      // A read begun before the join (the poll while rejoining, the join grace's, a syncNow() made
      // while joining) cannot catch the link up, and the catch-up would queue behind it: one that
      // hangs would hold the changes missed while the channel was down for up to requestTimeoutMs.
      // It is cut off (what it was answered stays read) and the catch-up, queued next, reads in its
      // place from the cursor as its answered pages left it.
      this.#cutReadsOff("the channel joined");
      this.#cutOwnReadsOff("the channel joined", false);
      void this.#catchUp(generation);
      return;
    }
    // CHANNEL_ERROR (refused join, dropped socket), TIMED_OUT, or CLOSED by the server (expired token).
    // A join refused for an expired token ("InvalidJWTToken: Token has expired N seconds ago"): the
    // join's token, when the client's token has not changed since it was sent (realtime-js rewrites a
    // join's token only when the client's token changes), is not sent again.
    const token = this.service.client.realtime.accessTokenValue;
    if (
      !this.#joined && state === "CHANNEL_ERROR" && error && TOKEN_EXPIRED.test(error.message) &&
      token && token === this.#joinToken
    ) {
      this.service.tokenRefusedAtJoin(token);
    }
    // A join that timed out while the socket it waits for was opening all along: that socket is stuck.
    if (state === "TIMED_OUT" && this.#socketOpeningAtJoin) this.service.giveUpOpeningSocket();
    this.#fail(generation, `${state}${error ? `: ${error.message}` : ""}`);
  }

  /**
   * realtime-js sends a new token only to channels already joined (RealtimeClient.setAuth): one set
   * while this channel's join was in flight never reached it, and the server would close the
   * channel when the join's token expires (a flap, with polling until the rejoin). Send the current
   * token on the channel now, as setAuth does for joined channels: Phoenix event `access_token`
   * under the join's ref.
   */
  #sendTokenIfChangedSinceJoin(channel: RealtimeChannel): void {
    const realtime = this.service.client.realtime;
    const current = realtime.accessTokenValue;
    const joinRef = channel.joinPush.ref;
    if (!current || current === this.#joinToken || !joinRef) return;
    realtime.push({
      topic: channel.topic,
      event: "access_token",
      payload: { access_token: current },
      ref: `readsync-access-token-${++tokenSends}`,
      join_ref: joinRef,
    });
    this.#joinToken = current;
    this.#log("info", "access_token_sent_after_join", {});
  }

  /** Realtime is unavailable: drop the channel, poll meanwhile, and retry after a jittered backoff. */
  #fail(generation: number, reason: string): void {
    if (this.#closed || generation !== this.#generation) return;
    const wasJoined = this.#joined;
    const backedOff = this.#backingOff; // before the drop below ends the live state and clears the timers
    // The join ladder starts again only after a channel that held: one that stayed joined at least
    // as long as the wait before its join (the delay as drawn, not its step's ceiling), and in any
    // case one joined for a whole backoff cap. A channel closed sooner (a server that closes every
    // join it accepts: Realtime's shutdown with a system error, a token it does not take) is one more
    // step up, or such a server would see this device join and read again every SOCKET_TEARDOWN_MS
    // for as long as it goes on: its joins come further and further apart. A network that drops the
    // channel every so often has mostly let it live longer than it waited: the rejoin is at the first
    // step, and the device is live most of the time. The drawn delay, not the ceiling: once failed
    // joins (an outage) have raised the ceiling to backoff.maxMs, channels that hold 10-20 s would
    // never beat it, and the ladder would stay at the top; a drawn delay, uniform below the ceiling,
    // is shorter than such a hold about every other time, and the ladder comes back down. Never less
    // than SOCKET_TEARDOWN_MS, though (set below): a failed join's retry is drawn from 0, and a join
    // after a wait near 0 that such a server closed 1 s later would count as held and send the
    // device back to the first step; every other join's wait is at least that floor already.
    const heldMs = monotonicNow() - this.#joinedAt;
    const backoff = this.service.backoffOptions;
    if (wasJoined && heldMs >= Math.min(this.#waitBeforeJoinMs, backoff.maxMs)) this.#attempt = 0;
    this.#generation++;
    this.#joined = false;
    this.#caughtUp = false;
    this.#heartbeatLate = false;
    this.#releaseChannel();
    // A link whose channel held has attempt 0: its first retry is still jittered (never 0 for everyone
    // at once, which is what a Realtime restart would otherwise cause across all devices). A join
    // that failed (never joined) after its token was replaced in flight is retried once at once:
    // that is one device's refresh, not a crowd. Only once per join cycle (a token source that
    // answers a new token on every call must not remove the backoff), and never for a channel that
    // was joined (realtime-js sent it every new token itself).
    const current = this.service.client.realtime.accessTokenValue;
    const tokenChanged = !wasJoined && !this.#tokenRetryUsed && current !== null &&
      current !== this.#joinToken;
    if (tokenChanged) this.#tokenRetryUsed = true;
    const step = Math.max(1, this.#attempt);
    // A joined channel that dropped may have dropped with its socket: after a missed heartbeat reply
    // (a network path that died) realtime-js first fails the channel, then tears the socket down, and
    // waits up to 1.5 s for its send buffer to drain before closing it. Until then the dead socket
    // still reads as open, so a join pushed meanwhile is written to it and lost, and the channel sits
    // out the whole join timeout (10 s). Rejoining after SOCKET_TEARDOWN_MS, the join waits for the
    // next socket instead. The wait is drawn above that floor, not raised to it: a draw below it
    // raised to it put every device dropped together (a Realtime restart) back at 1.6 s exactly at
    // the first step (its 1 s ceiling is under the floor) and most of them at the next ones.
    const delay = tokenChanged
      ? 0
      : wasJoined
      ? rejoinAfterDropDelay(step, backoff, this.service.random)
      : fullJitterDelay(step, backoff, this.service.random);
    // The join retried at once for a replaced token stands for the one that failed: it keeps its wait.
    // A delay drawn below the teardown floor (a failed join's retry) counts as the floor (see above).
    if (!tokenChanged) this.#waitBeforeJoinMs = Math.max(delay, SOCKET_TEARDOWN_MS);
    this.#log("warn", "realtime_unavailable", { reason, retry_in_ms: delay });
    // No longer live: changes flow only by polling until the channel is joined and caught up again.
    if (this.status === "live") this.#setStatus("connecting");
    this.service.timers.clear(this.#reconnectTimer);
    this.#reconnectTimer = this.service.timers.set(() => {
      this.#reconnectTimer = undefined;
      void this.#connect();
    }, delay);
    // A join that failed while the link was polling anyway keeps the polls' own pace (their backoff,
    // a Retry-After); a link that dropped from a channel, or is not polling yet, polls now while the
    // API has been answering (that closes the gap fastest). While it backs off (#backingOff: its last
    // read failed, and it reads again for that; a cut read is none) it polls as the next poll after
    // that failure would: after the polls' backoff, at least a Retry-After still running
    // (#nextPollDelay). A Realtime restart drops every device's channel at once, and those whose API
    // fails or refuses would otherwise all ask it again at that moment. A live link whose failed read
    // nothing makes again (the safety read off, no syncNow() owed, no heartbeat reply late) polls now,
    // as one with no failure does: its count stays up while its channel carries the changes, and says
    // nothing of the API since (hours, with the safety read off); the own reads the drop cuts off are
    // read again at once for the same reason (#readOwn), and the link's subscriptions must not wait a
    // backoff (up to its cap) for the changes the drop's gap let through, while the API answers.
    const pollsNow = wasJoined || (this.#pollTimer === undefined && this.#pollsRunning === 0);
    const wait = !pollsNow ? 0 : backedOff ? this.#nextPollDelay("failed") : this.#retryAfterLeftMs();
    // The count of such a live link (not backing off, its count up) starts again at the drop: the poll it
    // makes at once treats that count as saying nothing of the API, and so does the poll after it when
    // this one fails: it waits the backoff for one failure (the API's first seen since), not for one more
    // than a count that is hours old (before, the stale count plus one: up to the backoff's cap, though
    // the poll at the drop was the first read to fail in all that time). The backoff after it is the
    // link's again: the link is not live until a read is answered (which ends the count anyway), so a
    // later drop finds it backing off and makes no call (one call per drop at most, the first). A
    // Retry-After still running is kept (#retryAfterUntil): the poll waits for its end as before.
    if (wasJoined && !backedOff) this.#failedReadsInRow = 0;
    if (wasJoined) {
      this.#droppedAt = monotonicNow();
      // A safety read scheduled while live would hold off the polling below for its whole interval,
      // and a read in flight or queued (a safety read, the catch-up or its retry, a read queued
      // behind them; the join cut off those begun before it) would hold it (the rounds queue) until
      // it answered or timed out.
      this.service.timers.clear(this.#pollTimer);
      this.#pollTimer = undefined;
      this.#cutReadsOff("the channel dropped");
      this.#cutOwnReadsOff("the channel dropped", true, backedOff ? wait : undefined);
    }
    if (pollsNow) {
      this.#startPolling(wait);
      // A read the drop cut off (a syncNow()'s: the app's "Sync now" waits for it) ends as the poll
      // the drop starts when that reads at once; one that waits (the polls' backoff, a Retry-After:
      // minutes) is no read made now, and the cut read ends at once, "failed", as a syncNow() that a
      // Retry-After holds does. The poll keeps its time, and its end is heard (onRead) as usual. But
      // when the last read was refused 401 for a token replaced since, the link reads now with it, in
      // place of that poll (#readAgainForNewToken; the cut reads are out of #readsInFlight already),
      // and the cut read ends as that read does, as the read in its place made at once.
      if (wasJoined && wait > 0 && !this.#readAgainForNewToken()) this.#endCutReads("failed");
    }
  }

  /**
   * Aborts every read in flight or queued (#readsInFlight): each ends as the first read after it that
   * is not cut off ends (#readAfterCut; "failed" at once after a drop whose poll waits, or a close),
   * and is neither heard (onRead) nor counted as a failure. A page it was answered before stays read
   * (the cursor moved with it); an answer that comes after is ignored (#changesSince stops waiting at
   * the abort), so it can neither move the cursor back nor skip what the read after it reads from the
   * cursor.
   */
  #cutReadsOff(reason: string): void {
    if (this.#readsInFlight.size > 0 && !this.#readAfterCutEnded) {
      this.#readAfterCut = new Promise((resolve) => this.#readAfterCutEnded = resolve);
    }
    for (const read of this.#readsInFlight) read.abort(new Error(reason));
    this.#readsInFlight.clear();
  }

  /** Ends the reads cut off (#cutReadsOff) and still waiting for the read after them, with `outcome`. */
  #endCutReads(outcome: ReadOutcome): void {
    this.#readAfterCutEnded?.(outcome);
    this.#readAfterCutEnded = null;
  }

  /**
   * How long a Retry-After the API sent (its jittered wait: retryAfterWaitMs) still runs (ms; 0 when
   * none does, or when it ends within RETRY_AFTER_SLACK_MS: a timer set for its end may fire that much
   * early, and its read would be skipped for a fraction of a millisecond and come a whole interval
   * later).
   */
  #retryAfterLeftMs(): number {
    const left = this.#retryAfterUntil - monotonicNow();
    return left > RETRY_AFTER_SLACK_MS ? left : 0;
  }

  /**
   * The first step's ceiling, at least the teardown floor (the shortest a wait after a drop can be;
   * rejoinAfterDropDelay draws up to the floor plus that ceiling): what a channel whose join came
   * without a backoff wait must stay joined to count as held.
   */
  #firstStepWaitMs(): number {
    return Math.max(backoffCeiling(1, this.service.backoffOptions), SOCKET_TEARDOWN_MS);
  }

  /**
   * Joins now, unless a live channel dropped less than SOCKET_TEARDOWN_MS ago: then after the wait the
   * first step draws for a rejoin after a drop (rejoinAfterDropDelay, counted from the drop; see
   * #fail), not at the teardown's end exactly: the devices a Realtime restart dropped together and
   * whose apps call syncNow() at once (a browser's "online" event, a network change) or get a new
   * token then would otherwise all rejoin at that same moment. That step's ceiling is taken as at
   * most SOCKET_TEARDOWN_MS: the app asked for now, and a long first step configured for the backoff
   * (backoff.initialMs of minutes) must not put it off (1.6-2.6 s with the defaults, at most 3.2 s).
   */
  #reconnectSoon(): void {
    this.service.timers.clear(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    this.#waitBeforeJoinMs = this.#firstStepWaitMs(); // a join the ladder did not wait for
    const sinceDrop = monotonicNow() - this.#droppedAt;
    if (sinceDrop >= SOCKET_TEARDOWN_MS) {
      void this.#connect();
      return;
    }
    const backoff = this.service.backoffOptions;
    const firstStep = { ...backoff, initialMs: Math.min(backoff.initialMs, SOCKET_TEARDOWN_MS) };
    const wait = rejoinAfterDropDelay(1, firstStep, this.service.random) - sinceDrop;
    this.#reconnectTimer = this.service.timers.set(() => {
      this.#reconnectTimer = undefined;
      void this.#connect();
    }, wait);
  }

  #releaseChannel(): void {
    const channel = this.#channel;
    if (!channel) return;
    this.#channel = null;
    const removal = (async () => {
      try {
        await this.service.client.removeChannel(channel);
      } catch (error) {
        this.#log("warn", "remove_channel_failed", { error: describeError(error) });
      } finally {
        // removeChannel only tears down after an "ok" leave; make sure timers and bindings go. What
        // teardown throws is logged: the removal still ends (a join of the topic waits for it).
        try {
          channel.teardown();
        } catch (error) {
          this.#log("warn", "channel_teardown_failed", { error: describeError(error) });
        }
        this.service.counters.channels--;
      }
    })();
    this.service.trackRemoval(this.topic, removal);
  }

  // ----------------------------------------------------------------------- catch-up and polling

  async #catchUp(generation: number): Promise<void> {
    await this.#catchUpOnce(generation);
    this.#readAgainForNewToken(); // refused 401 for a token replaced while it was under way
  }

  async #catchUpOnce(generation: number): Promise<void> {
    const wait = this.#retryAfterLeftMs();
    if (wait > 0) {
      // The API asked to be left alone: the catch-up is the first poll after that (#poll catches a
      // joined link up). Offline meanwhile: the last call made was refused, and nothing is read.
      // Still the join's catch-up, made as soon as the API lets it, not a poll after the link's backoff
      // (whose timer it replaces, sooner): failing, it releases no own read a drop left waiting for that
      // (#poll's `scheduled`), as the catch-up made at once does not.
      this.service.timers.clear(this.#pollTimer);
      this.#pollTimer = undefined;
      this.#setStatus("offline");
      this.#startPolling(wait, false);
      return;
    }
    // Always a fresh round that starts after the join: one that started earlier may have read
    // before a change whose broadcast was sent before the channel was subscribed (the join cut
    // such reads off: none holds this one up). The channel's drop cuts it off (#fail).
    const cut = new AbortController();
    this.#readsInFlight.add(cut);
    const { outcome, round, held } = await this.#fetchChanges("catchup", cut.signal);
    this.#readsInFlight.delete(cut);
    // A read of the API like any other: a failure is one more in a row for the polls' backoff (the
    // polls after a drop too), an answer ends them; one the drop cut off is none.
    if (!(outcome === "failed" && cut.signal.aborted)) this.#countRead(outcome, held);
    if (this.#closed || generation !== this.#generation) return;
    if (outcome === "done") {
      this.#caughtUpNow();
    } else if (this.#newerReadQueued(round)) {
      // A read queued behind it (a syncNow(), a poll whose timer fired meanwhile) reads at once and
      // catches up too: it decides the next read (#pollOnce), not one more poll queued behind it.
      this.service.timers.clear(this.#pollTimer);
      this.#pollTimer = undefined;
    } else {
      // Joined but not caught up: keep the channel, finish the catch-up by polling, and say so (the
      // status the link had before the join may be a poll's "polling" or the join's "connecting"):
      // "offline" while the API fails or refuses, "polling" while a long transaction holds the cursor
      // back. A request that failed is made again after the polls' backoff (a failure more in a row,
      // counted above; at least the Retry-After), as a failed poll is: a failing API is not asked
      // again at once by every device that joined; a cursor held back after a poll interval (asking
      // again sooner would get the same page). This decides the next read.
      this.#setStatus(outcome === "failed" ? "offline" : "polling");
      this.service.timers.clear(this.#pollTimer);
      this.#pollTimer = undefined;
      this.#startPolling(this.#nextPollDelay(outcome));
    }
  }

  /** A round that began after the join read to the end: live, with the safety read scheduled. */
  #caughtUpNow(): void {
    this.#caughtUp = true;
    this.#failedReadsInRow = 0;
    this.service.timers.clear(this.#pollTimer);
    this.#pollTimer = undefined;
    // A heartbeat sent after the join is still unanswered (it became late while catching up).
    const lateSince = this.service.lateHeartbeatSentAt;
    if (lateSince !== null && this.#joinedAt <= lateSince) {
      this.#heartbeatLate = true;
      this.#log("warn", "heartbeat_reply_late", { while: "catching up" });
    }
    this.#setStatus("live");
    this.#scheduleLivePoll();
  }

  get #pollIntervalMs(): number {
    return this.service.options.pollIntervalMs ?? 10_000;
  }

  get #requestTimeoutMs(): number {
    return this.service.options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  }

  /** A syncNow() is owed its read: none that began after it has read to the end yet. */
  get #readOwed(): boolean {
    return this.#readsSettled < this.#readsAsked;
  }

  /**
   * The link backs off: its last read failed (#failedReadsInRow) and it reads again for that after the
   * polls' backoff. Not a live link (joined, caught up) that makes that read again no more (the safety
   * read off, no syncNow() owed, no heartbeat reply late: #scheduleNextLiveRead): its count stays up
   * while its channel carries the changes, and says nothing of the API since (hours, with the safety
   * read off). A live link reading again for a failure (a read again scheduled, or a read under way)
   * backs off. Decides how soon the poll a drop starts comes and how an own read the drop cuts off
   * is read again (#fail, #readOwn), and how long an own read's retry after a failure waits (#readOwn).
   */
  get #backingOff(): boolean {
    if (this.#failedReadsInRow === 0) return false;
    if (!(this.#joined && this.#caughtUp)) return true;
    const readAgainScheduled = this.#pollTimer !== undefined && this.#pollTimer === this.#readAgainTimer;
    return readAgainScheduled || this.#readsInFlight.size > 0;
  }

  /**
   * While live: the wait before the next safety read (livePollIntervalMs, or pollIntervalMs while a
   * heartbeat reply is late; Infinity when turned off), not before a Retry-After the API sent has run out.
   */
  #livePollWaitMs(): number {
    const livePollIntervalMs = this.service.options.livePollIntervalMs ?? 60_000;
    const interval =
      this.#heartbeatLate && !(livePollIntervalMs > 0 && livePollIntervalMs < this.#pollIntervalMs)
        ? this.#pollIntervalMs
        : livePollIntervalMs;
    return interval > 0 ? Math.max(interval, this.#retryAfterLeftMs()) : Infinity;
  }

  /** While live: the next safety read, unless one is scheduled or it is turned off. */
  #scheduleLivePoll(): void {
    const wait = this.#livePollWaitMs();
    if (this.#closed || this.#pollTimer !== undefined || wait === Infinity) return;
    this.#pollTimer = this.service.timers.set(() => void this.#poll(true), wait);
  }

  /**
   * While live, after a read that ended with `outcome` with none queued behind it (#pollOnce): a read
   * the app asked for (syncNow) that has not read to the end yet, and a read that failed, are made
   * again as a polling link would make them (when a Retry-After ends, after pollIntervalMs when
   * answered behind, after the polls' backoff when failed), or at the safety read when that comes
   * sooner, in place of the read scheduled. The app's read even with the safety read off, so it is
   * never lost; a failed one not owed to the app only while the safety read is on (it stands for that
   * read: the channel may have missed a broadcast). Otherwise the safety read as usual.
   */
  #scheduleNextLiveRead(outcome: ReadOutcome, held: boolean): void {
    this.#countRead(outcome, held);
    const readAgain = !this.#closed && outcome !== "done" &&
      (this.#readOwed || (outcome === "failed" && this.#livePollWaitMs() !== Infinity));
    if (!readAgain) {
      // A read scheduled again for a read that a read begun after it (queued behind this one: a second
      // syncNow(), the late heartbeat's read) has since settled is due no more: the newest read
      // decides, so the safety read's pace again, not one more read at the earlier one's time (with
      // the safety read off, a read nobody asked for).
      if (!this.#readOwed && this.#pollTimer !== undefined && this.#pollTimer === this.#readAgainTimer) {
        this.service.timers.clear(this.#pollTimer);
        this.#pollTimer = undefined;
      }
      return this.#scheduleLivePoll();
    }
    const left = this.#retryAfterLeftMs();
    const wait = left > 0
      ? left
      : outcome === "failed"
      ? this.#nextPollDelay("failed")
      : this.#pollIntervalMs;
    this.service.timers.clear(this.#pollTimer);
    this.#pollTimer = this.#readAgainTimer = this.service.timers.set(
      () => void this.#poll(true),
      Math.min(wait, this.#livePollWaitMs()),
    );
  }

  /** `scheduled`: the poll counts as made at its time (#poll); not the join's catch-up put off (#catchUpOnce). */
  #startPolling(delayMs = 0, scheduled = true): void {
    if (this.#closed || this.#pollTimer !== undefined) return;
    this.#pollTimer = this.service.timers.set(() => void this.#poll(scheduled), delayMs);
  }

  /**
   * One poll (or the safety read while live); resolves with how its read ended. `scheduled`: made by
   * its timer, at its time (after the polls' backoff, a Retry-After's end, the poll interval), not at
   * once (a syncNow(), a late heartbeat, a new token), nor the catch-up of a join that a Retry-After
   * put off to its end (#catchUpOnce: made as soon as the API lets it, before the polls' backoff).
   */
  async #poll(scheduled = false): Promise<ReadOutcome> {
    this.#pollTimer = undefined;
    if (this.#closed) return "failed";
    this.#pollsRunning++;
    try {
      return await this.#pollOnce(scheduled);
    } finally {
      this.#pollsRunning--;
      this.#readAgainForNewToken(); // refused 401 for a token replaced while it was under way
    }
  }

  /**
   * The last read was refused for its token (401: it expired) and the token has changed since
   * (setAccessToken(), supabase.auth's TOKEN_REFRESHED): read now, in place of the read scheduled
   * after the polls' backoff, which would leave a joined link offline (and a live one reading late)
   * for that long with a token that works. Once per new token: the read made now is sent with it, and
   * a 401 for it waits for the next token (or the backoff), never a loop. Nothing while a read is in
   * flight or queued (it ends by its own token: when refused for one replaced meanwhile, this runs at
   * its end) or while a Retry-After runs (its end's read comes with the new token). Called when a
   * token comes (onTokenChanged) and when a catch-up or poll has ended and scheduled what follows.
   */
  #readAgainForNewToken(): boolean {
    const refusedWith = this.#authRefusedWith;
    if (this.#closed || refusedWith === undefined || this.service.readToken === refusedWith) return false;
    if (this.#readsInFlight.size > 0 || this.#retryAfterLeftMs() > 0) return false;
    this.#authRefusedWith = undefined;
    this.#log("info", "read_after_new_token", {});
    this.service.timers.clear(this.#pollTimer);
    this.#pollTimer = undefined;
    void this.#poll();
    return true;
  }

  async #pollOnce(scheduled: boolean): Promise<ReadOutcome> {
    // A join cuts it off, and so does a joined channel's drop, whether it began while joined or before
    // the join (#cutReadsOff), and whether its round is in flight, queued, or not queued yet (waiting
    // below for the round in flight).
    const cut = new AbortController();
    this.#readsInFlight.add(cut);
    if (this.#fetchInFlight) { // a catch-up is running: poll after it
      this.#pollsQueuing++;
      try {
        await this.#fetchChain;
      } finally {
        this.#pollsQueuing--;
      }
      // Cut off while it waited (a syncNow() made while joining, behind a read that hangs): the catch-up
      // the join started, or the poll the drop started, began after it and reads in its place. It ends
      // as that one does (or at once, "failed", when the drop's poll waits: #fail) without queuing a
      // round of its own (one call more, after it, for nothing). It resumes as the round it waited for
      // ends, before that catch-up or poll can end (their rounds queue behind that one), so none of
      // them finds it still waiting (#newerReadQueued) and leaves the next read to it.
      if (cut.signal.aborted && this.#readAfterCut && !this.#closed) {
        this.#readsInFlight.delete(cut);
        return await this.#readAfterCut;
      }
    }
    if (this.#closed) {
      this.#readsInFlight.delete(cut); // queued behind a round that close() cut short
      return "failed";
    }
    const live = this.#joined && this.#caughtUp; // a safety read (livePollIntervalMs)
    const { outcome, joinedGeneration, round, held } = await this.#fetchChanges(
      this.#joined && !live ? "catchup" : "poll",
      cut.signal,
      scheduled,
    );
    this.#readsInFlight.delete(cut);
    if (this.#closed) return outcome;
    if (cut.signal.aborted && outcome === "failed" && this.#readAfterCut) {
      // A join or drop cut this read off (#cutReadsOff): the catch-up or poll it started reads in its
      // place, and this one ends as that one does (a syncNow() whose read it was resolves with it); when
      // the drop's poll waits (the backoff after a failed read, a Retry-After: #fail), at once, "failed".
      return await this.#readAfterCut;
    }
    // A read queued behind this one (a syncNow(), a late heartbeat's read, a catch-up after a
    // scheduled poll) settles after it and schedules the next read by its own outcome: the newest
    // decides, not this one's failure (a poll put off by the backoff although the API answered
    // since; while live, a read again whose timer would fire while that read is in flight and queue
    // one more behind it, made the moment it ends) or answer.
    const newerQueued = this.#newerReadQueued(round);
    if (this.#joined && this.#caughtUp) {
      // Live now, whatever this read found or whether it failed: the channel is up. A safety read, or
      // a read that began before the link went live and ends once it is (queued behind the catch-up
      // that made it live: a syncNow() made while that one was in flight or by an onRead listener
      // hearing it end, a poll whose timer fired meanwhile): it ends as a read made while live does,
      // or a read owed to the app that failed would be made again only at the next safety read, and
      // never with that off (the polling path below schedules nothing once live).
      if (newerQueued) this.#countRead(outcome, held);
      else this.#scheduleNextLiveRead(outcome, held);
      return outcome;
    }
    // A safety read whose link dropped meanwhile: #fail has taken over the status and the polling.
    if (live) return outcome;
    // Only a round that began after this join catches the link up: one that began before it (a
    // poll started while the rejoin was in flight) may have read before a change whose broadcast
    // went out before the channel was subscribed. Such a round only polls; the catch-up queued
    // behind it decides.
    if (this.#joined && joinedGeneration === this.#generation && outcome === "done") {
      this.#caughtUpNow();
      return outcome;
    }
    this.#countRead(outcome, held);
    // A round a Retry-After held back is "offline" too: the last call made was refused (an answer ends
    // the Retry-After), and nothing is read until it ends. Joined but not caught up (this round was
    // the catch-up's retry, or began before the join) is not live either: the same statuses, but a
    // read queued behind this one decides (it may catch the link up: no "polling" in between).
    if (!this.#joined || !newerQueued) this.#setStatus(outcome === "failed" ? "offline" : "polling");
    if (newerQueued) return outcome; // the newest decides (above)
    if (this.#pollTimer === undefined) {
      this.#pollTimer = this.service.timers.set(
        () => void this.#poll(true),
        this.#nextPollDelay(outcome),
      );
    }
    return outcome;
  }

  /** Whether a read was queued after the round numbered `round`, or a poll waits to queue one. */
  #newerReadQueued(round: number): boolean {
    return round !== this.#roundsQueued || this.#pollsQueuing > 0;
  }

  /**
   * Counts a read that failed (#failedReadsInRow); an answer ("done", "behind") starts the count again. A
   * round a Retry-After held back (`held`: no call made, its "failed" only says so) counts nothing: the
   * polls back off for failures of the API, and reads asked for while a refused one was in flight
   * (several syncNow() calls, a late heartbeat's read) would each raise the backoff one more step.
   * The read after it waits for the Retry-After's end anyway (#nextPollDelay).
   */
  #countRead(outcome: ReadOutcome, held: boolean): void {
    if (held) return;
    this.#failedReadsInRow = outcome === "failed" ? this.#failedReadsInRow + 1 : 0;
  }

  /**
   * The wait before the next poll: the poll interval after an answer; after n failures in a row (#countRead)
   * a time drawn between 2^(n-1) and 2^n poll intervals (between half and all of a ceiling that doubles each
   * time) until that ceiling reaches the cap, then between half the cap and the cap, and never shorter than
   * the API asked for. The first failure's wait is drawn too, between one and two intervals: devices that
   * read together (a Realtime restart drops every channel at once, and each device whose API answered polls
   * at once) and meet a failing API together do not all retry one interval later; never below the interval:
   * the jitter spreads the backoff, it does not shorten it.
   */
  #nextPollDelay(outcome: ReadOutcome, failedInRow = this.#failedReadsInRow): number {
    if (outcome !== "failed") return this.#pollIntervalMs;
    // At least twice the interval, so that the draw has room above the interval whatever the cap.
    const cap = Math.max(2 * this.#pollIntervalMs, this.service.backoffOptions.maxMs);
    const failures = Math.max(1, failedInRow); // counted before (#countRead)
    const ceiling = Math.min(cap, this.#pollIntervalMs * 2 ** Math.min(30, failures));
    const jittered = ceiling / 2 + (this.service.random() * ceiling) / 2;
    return Math.max(Math.round(jittered), this.#pollIntervalMs, this.#retryAfterLeftMs());
  }

  /**
   * One "changes since" round (following pages), after any round in flight: "done" when it read
   * to the end (has_more false), "behind" when more changes remain that it could not read yet (a
   * long transaction anywhere in the database holds the cursor: the API answers has_more with the
   * cursor it was sent), "failed" when a call failed or timed out. joinedGeneration: the link's
   * generation if its channel was joined when the round began reading; round: its place in the queue.
   * `scheduled`: a poll made at its time (#poll).
   */
  async #fetchChanges(source: ChangeSource, signal?: AbortSignal, scheduled = false): Promise<Round> {
    const sequence = ++this.#roundsQueued;
    let joinedGeneration: number | undefined;
    let called = false;
    let held = false;
    const round = this.#fetchChain.then(async (): Promise<ReadOutcome> => {
      if (this.#closed) return "failed"; // queued behind a round that close() cut short
      if (signal?.aborted) return "failed"; // a read a join or drop ended while it waited its turn
      // The round before it was told to wait (Retry-After): no call until then; the caller
      // schedules the next round after it (#retryAfterLeftMs).
      if (this.#retryAfterLeftMs() > 0) {
        held = true;
        return "failed";
      }
      joinedGeneration = this.#joined ? this.#generation : undefined;
      const asked = this.#readsAsked; // the syncNow() calls this round began after
      const begun = ++this.#roundsBegun;
      this.#fetchInFlight = true;
      called = true;
      let sentToken = this.service.readToken;
      try {
        const outcome = await this.#readPages(
          source,
          () => this.#cursor,
          (kind, row) => this.apply(kind, row, source),
          (next) => {
            this.#cursor = next;
            // Its rows were handed to the handlers above: a cursor an app may persist. A subscription
            // that unsubscribed meanwhile (a handler did it mid-page) is no longer among them, and
            // keeps the cursor before the rows it was not given.
            for (const subscription of [...this.subscriptions]) subscription.emitCursor(next);
          },
          signal,
          undefined,
          (token) => sentToken = token,
        );
        if (outcome === "closed") return "failed";
        if (outcome === "done") {
          for (const subscription of [...this.subscriptions]) {
            subscription.linkReadToEnd(begun, this.#cursor);
          }
          this.#log("debug", `${source}_done`, {});
          this.#readsSettled = Math.max(this.#readsSettled, asked);
        }
        return outcome;
      } catch (error) {
        if (signal?.aborted && !this.#closed) {
          // A read the channel's join or drop cut off (#cutReadsOff): no failure of the API, and the
          // catch-up the join starts or the poll the drop starts reads in its place (#pollOnce), so
          // not ${source}_failed, which an app may count.
          this.#log("info", `${source}_cut_off`, { reason: String(signal.reason?.message ?? signal.reason) });
          return "failed";
        }
        // Refused for its token: read again as soon as a new one comes (#readAgainForNewToken); any
        // other failure only after the polls' backoff.
        this.#authRefusedWith = refusedForToken(error) ? sentToken : undefined;
        const retryFields = this.#heedReadFailure(error, sentToken);
        if (!this.#closed) {
          this.#log("warn", `${source}_failed`, { error: describeError(error, "message"), ...retryFields });
        }
        return "failed";
      } finally {
        this.#fetchInFlight = false;
      }
    });
    this.#fetchChain = round;
    const outcome = await round;
    // A read a join or drop cut off (#cutReadsOff) did not end by itself: the read after it stands for it.
    const cutOff = outcome === "failed" && signal?.aborted === true;
    // A round that called the API is a read: the subscriptions hear how it ended (onRead), whatever
    // made it; not one that made no call (a Retry-After held it) or that close(), a join or a drop cut short.
    if (called && !this.#closed && !cutOff) {
      for (const subscription of [...this.subscriptions]) subscription.emitRead(outcome);
      if (!this.#hasRead) this.#readOwnAfterFirstRead();
      // Answered, or made after the link's backoff whatever its end: own reads a drop cut off while the
      // link backed off wait no longer (#readOwnAfterLinkRead).
      if (outcome !== "failed" || scheduled) this.#readOwnAfterLinkRead();
    }
    if (!cutOff) this.#endCutReads(this.#closed ? "failed" : outcome);
    return { outcome, joinedGeneration, round: sequence, held };
  }

  /**
   * What a failed read (the link's or a subscription's own) tells the link beyond its own outcome: a
   * refusal because the token it was sent with expired (no join is made with that token either:
   * UserLink#connect), and a Retry-After (no read of this link's user before then). Returns the log
   * fields for it (README: Logs), empty when the answer asked for no wait.
   */
  #heedReadFailure(
    error: unknown,
    sentToken: string | null | undefined,
  ): { retry_after_ms?: number; wait_ms?: number } {
    if (typeof sentToken === "string" && refusedAsExpired(error)) this.service.tokenRefusedByApi(sentToken);
    const retryAfterMs = retryAfterMsOf(error);
    if (!retryAfterMs) return {};
    const waitMs = retryAfterWaitMs(retryAfterMs, this.#pollIntervalMs, this.service.random);
    this.#retryAfterUntil = Math.max(this.#retryAfterUntil, monotonicNow() + waitMs);
    return { retry_after_ms: retryAfterMs, wait_ms: waitMs };
  }

  /**
   * Reads pages from `at()` until the end ("done"), a page that cannot move the cursor or the page
   * limit ("behind"), or the link's close ("closed"); each answered page's rows go to `hand`, then
   * its cursor to `moved`. `stop`: what aborts its calls (the round's signal, or the subscription's
   * unsubscribe). `subscription`: the one whose own read it is (logged so; it ends, "done", once that
   * one has unsubscribed), none for the link's. `sentWith`: hears the token each call is sent with
   * (the service's read token, or the one changesSince says it sent again with).
   */
  async #readPages(
    source: ChangeSource,
    at: () => unknown,
    hand: (kind: ChangeKind, row: Row) => void,
    moved: (next: unknown) => void,
    stop: AbortSignal | undefined,
    subscription?: Subscription<Row>,
    sentWith?: (token: string | null) => void,
  ): Promise<ReadOutcome | "closed"> {
    const fields = subscription ? { for: "subscription" } : {};
    // Once per read: a later page may start over again (the cursor a failed read of the system
    // identifier hands out is read as untagged, and starts over after a restore's adoption or past
    // timeline 1), and that cursor is the API's own, not the one the app should look into.
    let startedOverLogged = false;
    for (let page = 0; page < 1000; page++) {
      sentWith?.(this.service.readToken);
      const previous = at();
      const result = await this.#changesSince(previous, stop, sentWith);
      if (this.#closed) return "closed";
      if (!startedOverLogged && (result.startedOver ?? result.started_over) === true) {
        startedOverLogged = true;
        // The API read from the beginning: the cursor sent was not taken as this user's on this
        // cluster and timeline. Nothing is lost (the rows come again), but an app that stored another
        // user's cursor (by device, or under one key for whoever signs in) reads everything again at
        // every switch: this line is how it finds out.
        this.#log("warn", "cursor_started_over", { cursor: String(previous), ...fields });
      }
      for (const raw of result.changes ?? []) {
        const row = this.service.parseRow(raw);
        if (!row) continue;
        if ((row as { user_id?: unknown }).user_id !== this.userId) {
          // The API answers for its token's user: another user's rows mean a token/user mix-up.
          this.service.counters.invalid++;
          this.#log("warn", "foreign_row", { row_user_id: (row as { user_id?: unknown }).user_id });
          continue;
        }
        try {
          hand(isDeleted(raw) ? "delete" : "upsert", row);
        } catch (error) {
          // A compareRows that throws (handlers' failures are caught where they are called): the row
          // is refused, instead of failing the read, which would read the same page again and fail
          // at it every time.
          this.compareRowsFailed(error, row, source);
        }
      }
      const next = result.cursor ?? result.next_cursor;
      if (next !== undefined && next !== null && !Object.is(next, previous)) moved(next);
      this.#retryAfterUntil = 0; // the API answered
      // (A link's read refused for its token is read again for a new one: an own read's answer, with
      // the link's read under way beside it, says nothing of that read's.)
      if (!subscription) this.#authRefusedWith = undefined;
      if (subscription && !subscription.ownReadPending) return "done"; // unsubscribed meanwhile
      const hasMore = result.hasMore ?? result.has_more ?? false;
      if (!hasMore) return "done";
      if (Object.is(at(), previous)) {
        // The cursor cannot move (a long transaction holds the horizon): not caught up.
        this.#log("info", `${source}_behind`, { cursor: String(at()), ...fields });
        return "behind";
      }
    }
    this.#log("info", `${source}_behind`, { cursor: String(at()), reason: "page limit", ...fields });
    return "behind";
  }

  /**
   * One changesSince call that cannot hang the link: after requestTimeoutMs (or on close, or when
   * `stop` aborts) its signal aborts and the service stops waiting for it, whether or not the call
   * honours the signal. `sentWith` hears the token the call says it was sent again with (ChangesSince),
   * until then.
   */
  async #changesSince(
    cursor: unknown,
    stop?: AbortSignal,
    sentWith?: (token: string | null) => void,
  ): Promise<ChangesPage> {
    const controller = new AbortController();
    // Listening before anything can abort it: a round queued behind another may start with its
    // signal already aborted (a drop ended the read it was), and must fail at once, not hang.
    const aborted = new Promise<never>((_, reject) => {
      controller.signal.addEventListener("abort", () => reject(controller.signal.reason), { once: true });
    });
    aborted.catch(() => {});
    const lifetime = this.#lifetime.signal;
    const onClose = () => controller.abort(lifetime.reason);
    if (lifetime.aborted) onClose();
    else lifetime.addEventListener("abort", onClose, { once: true });
    const onStop = () => controller.abort(stop?.reason);
    if (stop?.aborted) onStop();
    else stop?.addEventListener("abort", onStop, { once: true });
    const timeoutMs = this.service.options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    const timer = this.service.timers.set(
      () => controller.abort(new Error(`changesSince did not answer within ${timeoutMs} ms`)),
      timeoutMs,
    );
    try {
      if (controller.signal.aborted) throw controller.signal.reason;
      // A changesSince that throws instead of rejecting (a plain function's argument check) fails
      // the read too, and the timer and listeners go as after any other failure.
      const call = Promise.resolve(this.service.options.changesSince(cursor, {
        userId: this.userId,
        signal: controller.signal,
        // Not once the service stopped waiting: the round has ended, and a later one reads its own.
        sentWith: (token) => {
          if (!controller.signal.aborted) sentWith?.(token);
        },
      }));
      call.catch(() => {}); // when abandoned, its late failure is nobody's business
      return await Promise.race([call, aborted]);
    } finally {
      this.service.timers.clear(timer);
      lifetime.removeEventListener("abort", onClose);
      stop?.removeEventListener("abort", onStop);
    }
  }

  // -------------------------------------------------------------------------------- plumbing

  #setStatus(status: RealtimeStatus): void {
    if (this.status === status) return;
    const previous = this.status;
    this.status = status;
    this.#log("info", "status", { from: previous, to: status });
    this.#emitStatus();
  }

  #emitStatus(): void {
    for (const subscription of [...this.subscriptions]) subscription.emitStatus(this.status);
  }

  #log(level: "debug" | "info" | "warn" | "error", event: string, fields: Record<string, unknown>): void {
    this.service.logEvent(level, event, { channel: this.topic, attempt: this.#attempt, ...fields });
  }
}

/** A subscription's own read (UserLink#readOwn) until it reads to the end. */
interface OwnRead {
  /** The read in flight. */
  running?: Promise<ReadOutcome>;
  /**
   * Its retry, after it failed or was answered behind (UserLink#scheduleOwnRead), or its wait for
   * linkReadDeadline (UserLink#scheduleLinkReadDeadline): its one timer.
   */
  timer?: ReturnType<typeof setTimeout>;
  /** `timer` waits for linkReadDeadline, not for its own retry. */
  timerForDeadline?: boolean;
  /** Its reads that failed in a row: the retry's backoff. */
  failuresInRow: number;
  /**
   * Its last read that ended by itself (answered or failed; one a join or drop cut off leaves it) was
   * refused for its token (401): the token it was sent with; undefined otherwise
   * (UserLink#readOwnAgainForNewToken).
   */
  authRefusedWith?: string | null;
  /** Joined before the link's first read ended: it reads once that has (UserLink#readOwnAfterFirstRead). */
  afterFirstRead: boolean;
  /**
   * Cut off by a joined channel's drop while the link was backing off (UserLink#backingOff): read again
   * once the link reads again after its backoff, answered or not, or a read of the link is answered,
   * whichever comes first (UserLink#readOwnAfterLinkRead), not at once against an API that may be
   * failing, and at linkReadDeadline at the latest (UserLink#scheduleLinkReadDeadline); with failures
   * of its own, not before its own retry's timer has ended too (UserLink#scheduleOwnRead): the later
   * of the two reads it.
   */
  afterLinkRead?: boolean;
  /** Aborts the read in flight: a join or drop cutting it off (UserLink#cutOwnReadsOff), or its unsubscribe. */
  cut?: AbortController;
  /** The last cut of the read in flight was a joined channel's drop (not a join). */
  cutByDrop?: boolean;
  /**
   * That drop came while the link was backing off (UserLink#backingOff, as the drop found it): when
   * (monotonicNow) it waits for the link's read no longer (the drop's poll wait and requestTimeoutMs
   * after the cut: UserLink#cutOwnReadsOff); undefined when it did not.
   */
  linkReadDeadline?: number;
  /**
   * Its linkReadDeadline came while a read of the link was under way: it is read once the link's
   * rounds queued then have ended (UserLink#readOwnAfterLinkReadUnderWay), unless read before.
   */
  deadlinePassed?: boolean;
}

interface Round {
  outcome: ReadOutcome;
  joinedGeneration: number | undefined;
  /** Its place in the order the link's rounds were queued (and settle in): 1, 2, ... */
  round: number;
  /** A Retry-After held it back: no call was made ("failed" says no more), and it counts as no read. */
  held: boolean;
}

/**
 * Milliseconds that only go forward (the time of a drop, a Retry-After's end): a device clock set
 * back by an hour just after a drop would otherwise put the rejoin or the next read off by that hour.
 */
const monotonicNow = (): number => performance.now();

/** How many tokens Realtime said have expired a service keeps (RealtimeService#expiredTokens). */
const EXPIRED_TOKENS_KEPT = 4;

/** How early a timer may fire (performance.now() against the timer's whole milliseconds). */
const RETRY_AFTER_SLACK_MS = 2;

/**
 * A socket still opening after a join timed out is given up only once it has been opening for one
 * join timeout, then 2, 4 and at most 2 ** SOCKET_OPENING_MAX_DOUBLINGS join timeouts (80 s by
 * default) while none opens in between: a slow handshake still gets through, a stuck one is replaced.
 */
const SOCKET_OPENING_MAX_DOUBLINGS = 3;

/** WebSocket readyState values, and the close code phoenix uses for a close of its own. */
const WS_CONNECTING = 0;
const WS_OPEN = 1;
const WS_CLOSE_NORMAL = 1000;

/** The WebSocket phoenix's Socket holds (a browser's or Deno's). */
interface PhoenixConn {
  readyState: number;
  close(code?: number, reason?: string): void;
  onopen: unknown;
  onerror: unknown;
  onmessage: unknown;
  onclose: unknown;
}

/** What the service uses of phoenix's Socket (realtime-js 2.1xx: RealtimeClient.socketAdapter.getSocket()). */
interface PhoenixSocket {
  conn: PhoenixConn | null;
  /** Set by disconnect() (a close the socket is not to recover from), cleared when it connects. */
  closeWasClean?: boolean;
  triggerChanError(reason: unknown): void;
}

/** The phoenix Socket under a RealtimeClient; null when this realtime-js has none where 2.1xx keeps it. */
function phoenixSocketOf(realtime: unknown): PhoenixSocket | null {
  try {
    const adapter = (realtime as { socketAdapter?: { getSocket?: () => unknown } }).socketAdapter;
    const socket = typeof adapter?.getSocket === "function" ? adapter.getSocket() : null;
    if (!socket || typeof socket !== "object" || !("conn" in socket)) return null;
    if (typeof (socket as { triggerChanError?: unknown }).triggerChanError !== "function") return null;
    return socket as PhoenixSocket;
  } catch {
    return null;
  }
}

/** When each WebSocket was first seen opening (monotonicNow): shared by every service on a client. */
const openingSeenAt = new WeakMap<object, number>();

/**
 * Sockets given up in a row on each phoenix Socket with none opened since (each one after is allowed
 * twice as long): kept per client, not per service, so that two services on one client (a component
 * remounting) do not each allow the next socket only one join timeout and cut a slow handshake twice.
 */
const giveUpsInARow = new WeakMap<PhoenixSocket, number>();

/** How Supabase Realtime says a token expired (a join's refusal reason, a channel's shutdown message). */
const TOKEN_EXPIRED = /token has expired/i;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A UUID as PostgreSQL prints it (lower case); any other id as given. */
function normalizeUserId(userId: string): string {
  return UUID.test(userId) ? userId.toLowerCase() : userId;
}

/**
 * A changesSince failure that says its token was refused (an expired one): `status` 401, as the
 * progress API client's AuthError (ProgressApiError) has it.
 */
function refusedForToken(error: unknown): boolean {
  return (error as { status?: unknown } | null)?.status === 401;
}

/**
 * A changesSince failure that says its token has expired: 401 with the progress API's code
 * token_expired (ProgressApiError's `code`), not any other 401 (a bad signature, a missing token).
 */
function refusedAsExpired(error: unknown): boolean {
  return refusedForToken(error) && (error as { code?: unknown }).code === "token_expired";
}

/**
 * Whether the session token `token` was issued before `than`: both JWTs of the same user (`sub`), and
 * `token`'s `iat` earlier (or, issued in the same second or without `iat`, its `exp` earlier). A token
 * that cannot be read so (not a JWT, another user's, no such claims) is not: the one announced last is
 * taken, as before. Read, not verified: only the order of two tokens the client was given is judged.
 */
function issuedBefore(token: string, than: string): boolean {
  const a = jwtClaims(token);
  const b = jwtClaims(than);
  if (!a || !b || typeof a.sub !== "string" || a.sub !== b.sub) return false;
  const number = (value: unknown) => typeof value === "number" && Number.isFinite(value);
  if (number(a.iat) && number(b.iat) && a.iat !== b.iat) return (a.iat as number) < (b.iat as number);
  return number(a.exp) && number(b.exp) && (a.exp as number) < (b.exp as number);
}

/** A JWT's claims (its payload, base64url JSON), unverified; null when it is not one. */
function jwtClaims(token: string): Record<string, unknown> | null {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "=")));
    return claims !== null && typeof claims === "object" && !Array.isArray(claims) ? claims : null;
  } catch {
    return null;
  }
}

/** A "changes since" row that stands for a hard delete (the API may mark them; rows normally aren't). */
function isDeleted(raw: unknown): boolean {
  return !!raw && typeof raw === "object" && (raw as { deleted?: unknown }).deleted === true;
}
