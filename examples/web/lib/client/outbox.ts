// Sending the outbox: this device's unacknowledged writes (one per series, the newest) go to the
// API in batches (POST /progress/batch, up to PROGRESS_LIMITS.batchMax writes per request), so a
// device back from a week offline with edits in 40 series makes one request, not 40. Each answer
// settles its write in the SyncStore (won, or lost to which version).
//
// Failures, per batch:
//   - retryable (anything but a refusal of the write itself: no network, 5xx, 429, an expired
//     token, a 404 or 403 from a gateway): stop, keep everything, and answer the failure (with how
//     many writes the API answered before it), so the caller can decide when to try again
//     (lib/client/outboxSchedule.ts: backoff, Retry-After).
//     A 401 starts a refresh of the token (refreshToken), not waited for here: the flush ends at once,
//     and the caller's next send waits for it (syncSession.ts: OutboxSchedule's ready, without the tabs'
//     Web Lock, which a refresh of up to 10 s held). A failure that does not clear by itself (isTransient
//     false) is shown to the reader meanwhile, until a write is answered (a passing outage after
//     it does not take the message away: the writes still wait).
//   - signed out: stop.
//   - refused (a ValidationError: a write the API will never take): that batch is sent again one
//     write at a time, so the refused write is dropped with a message and the others are still saved.
//   - a batch that something in the way refused as a whole (splitMayHelp: a proxy's 413 or 400 for a
//     body over its limit, not the API's own error): sent again one write at a time too,
//     each kept when it fails alike (it may go through later), so one limit cannot stall the outbox.
//
// A page turn made while a write dated beyond the server's 5 s tolerance was on its way is dated at most 5 s
// ahead, and that write, landing later, is stored at the server's now(), after it. When the key it was
// stored under is known here (the tabs' list of answered writes, storedAt), the page turn is sent dated
// 1 ms after it (SyncStore.sendAfterEarlier). When it is not, the page turn is refused as older than this
// device's own stored version ('self'), and then, as that version is an earlier write of this device
// (SyncStore.sendAgainAfter: no later one of the series known by number), sent again dated 1 ms after it.
// Also under the id this browser had before its site data was cleared (a page open through the clear still
// writes with it, a tab opened then with a new one): the ids it wrote with are kept beside its id
// (deviceId.ts), and the tabs' lists are this browser's alone.
//
// A write dated while the server clock had no measured offset in force (PendingWrite.unmeasured: a
// device an hour ahead that slept dates it an hour late) is re-dated before it is sent, by the first
// offset measured after it (ServerClock.redate), never later than it was dated nor before its
// `afterMs`. When no answer has measured one yet, one request (`redate.measure`) goes first (not again
// in the visit once one taught the clock nothing: `redate.unmeasurable`). The
// write keeps its date in the outbox (which orders and names writes by their numbers, PendingWrite.seq,
// not by their dates): only what is sent changes.
// Framework-free so it can be tested against the real API without React (tests/web/outbox.test.ts).

import type { ProgressWriteInput } from "@shared/progress/schemas.ts";
import { REDATE_SLACK_MS, type ServerClock } from "@shared/progress/serverClock.ts";
import { PROGRESS_LIMITS, type WriteResult } from "@shared/progress/types.ts";
import type { PendingWrite, SyncStore } from "./syncStore.ts";

export interface OutboxTransport {
  updateProgress(write: ProgressWriteInput): Promise<WriteResult>;
  updateProgressBatch(writes: ProgressWriteInput[]): Promise<WriteResult[]>;
}

export interface OutboxOptions {
  isRetryable(error: unknown): boolean;
  /** A retryable failure that clears by itself (nothing to show); default: every retryable one. */
  isTransient?(error: unknown): boolean;
  /** The session is gone (the caller has already sent the reader to sign in): stop quietly. */
  isSignedOut(error: unknown): boolean;
  /** A retryable failure of a whole batch that single writes may not meet (a proxy's size limit). */
  splitMayHelp?(error: unknown): boolean;
  /**
   * Started on a 401 as the flush stops, and not waited for (the flush ends at once): the caller's next
   * attempt waits for it, so that it carries a fresh token.
   */
  refreshToken(): Promise<void>;
  /** True once the owner is gone (unmounted): stop between requests. */
  isDisposed(): boolean;
  batchSize?: number;
  /**
   * Re-dates the writes dated without a measured offset (PendingWrite.unmeasured): the clock that
   * dated them, and a request whose 2xx answer teaches it, made first when one of them waits for it.
   * Without it they are sent as dated.
   */
  redate?: {
    clock: Pick<ServerClock, "redate" | "redatable" | "leadMs" | "answers">;
    measure(): Promise<unknown>;
    /**
     * Kept by the caller for the visit (one object for all its flushes): `answers` is set to the clock's
     * count when an answer to `measure` taught it nothing (no readable X-Server-Time: a proxy strips it,
     * or CORS does not expose it), and no read is made again while the count is that (the writes go as
     * dated, as they did after that read); an answer that does teach the clock ends it. Without it, a
     * read is made at every flush while a write waits.
     */
    unmeasurable?: { answers?: number };
  };
}

/** How a flush ended. */
export type FlushResult =
  /** Every write that was pending when it began has been settled (saved, lost, or refused). */
  | { outcome: "done" }
  /**
   * Stopped at a retryable failure; that write and every later one are kept. `answered`: writes the
   * API answered in this flush before it (saved, lost or refused), so it was up a moment ago.
   */
  | { outcome: "failed"; error: unknown; answered?: number }
  /** The session is gone; everything is kept for the next sign-in. */
  | { outcome: "signed out" }
  /** The owner went away (isDisposed) between requests. */
  | { outcome: "disposed" };

/** Of one request: its writes settled, send them again one by one, or stop the flush with this result. */
type Outcome = "sent" | "one by one" | FlushResult;

/** Sends every pending write; resolves when done or when it stopped at a retryable failure. */
export async function flushOutbox(
  store: SyncStore,
  api: OutboxTransport,
  options: OutboxOptions,
): Promise<FlushResult> {
  const size = Math.min(options.batchSize ?? PROGRESS_LIMITS.batchMax, PROGRESS_LIMITS.batchMax);
  const pending = store.pendingWrites();
  // Refused writes are dropped at the end: every settled write clears the store's error, and the
  // reader must still see which write could not be saved. Not once the flush was stopped (signed out,
  // its owner gone: isDisposed): nothing of the old user is applied after the sign-out, and the refused
  // write stays queued, in the user's saved outbox, as the rest of a stopped send does.
  const refused: { write: PendingWrite; message: string }[] = [];
  const answered = { count: 0 };
  const stop = (result: FlushResult): FlushResult =>
    result.outcome === "failed" && answered.count > 0 ? { ...result, answered: answered.count } : result;
  const redate = options.redate;
  const unmeasurable = redate?.unmeasurable;
  const hopeless = unmeasurable?.answers !== undefined && unmeasurable.answers === redate!.clock.answers;
  if (redate && !hopeless && pending.some((write) => waitsForAnswer(write, redate.clock))) {
    // Sent as dated, such a write would be stored an hour late; the answer to it comes too late.
    try {
      const before = redate.clock.answers;
      await redate.measure();
      // Answered, and the clock learnt nothing from it (its X-Server-Time unreadable): no read again for
      // it in this visit until an answer does teach the clock.
      if (unmeasurable && redate.clock.answers === before) unmeasurable.answers = before;
      store.sendDatesChanged(); // the writes waiting for it are shown as they will be sent
    } catch (error) {
      if (options.isSignedOut(error)) return { outcome: "signed out" };
      if (options.isRetryable(error)) return retryableFailure(store, options, error);
      // A refused read says nothing of the writes: they go as dated.
    }
  }
  // Sent again after this device's earlier write it met ('self', SyncStore.sendAgainAfter): dated no
  // earlier than just after that write's key, and so at most SEND_AGAIN_MAX times in this flush.
  const after = new Map<PendingWrite, { atMs: number; times: number }>();
  const toSend = (write: PendingWrite) => {
    // Sent again after a lost answer, a write keeps its key (a replay): its own stored copy is no floor.
    const sentAtMs = Date.parse(sendable(write, redate?.clock).updated_at);
    const sent = sendable(write, redate?.clock, store.ownStoredFloor(write, Number.isFinite(sentAtMs) ? sentAtMs : undefined));
    // After the key an earlier write of this device was stored under, when known; else after the one met.
    const notBeforeMs = Math.max(store.sendAfterEarlier(write) ?? -Infinity, after.get(write)?.atMs ?? -Infinity);
    return Number.isFinite(notBeforeMs) && !(Date.parse(sent.updated_at) >= notBeforeMs)
      ? { ...sent, updated_at: new Date(notBeforeMs).toISOString() }
      : sent;
  };
  const flush: Flush = { store, api, options, toSend, after, refused, answered };
  // Ended stopped (signed out, its owner gone), the flush applies none of the refusals it heard.
  let stopped = false;
  const end = (result: FlushResult): FlushResult => {
    stopped = result.outcome === "signed out" || result.outcome === "disposed";
    return stop(result);
  };
  try {
    for (let i = 0; i < pending.length; i += size) {
      if (options.isDisposed()) return end({ outcome: "disposed" });
      const batch = pending.slice(i, i + size);
      const send = () => api.updateProgressBatch(batch.map(toSend));
      const outcome = await attempt(flush, batch, send);
      if (typeof outcome === "object") return end(outcome);
      // A batch of one that comes back "one by one" was refused as such: it is not sent again alone.
      if (outcome === "one by one" && batch.length > 1) {
        const one = await oneByOne(flush, batch);
        if (typeof one === "object") return end(one);
      }
    }
    return { outcome: "done" };
  } finally {
    if (!stopped && !options.isDisposed()) for (const { write, message } of refused) store.reject(write, message);
  }
}

/**
 * How many times one flush sends a write again after this device's own earlier write it met ('self'):
 * once is enough unless another tab (without Web Locks) stores one of the series meanwhile; a bound
 * all the same, after which the write is settled as refused, as before.
 */
const SEND_AGAIN_MAX = 2;

/** What the requests of one flush share. */
interface Flush {
  store: SyncStore;
  api: OutboxTransport;
  options: OutboxOptions;
  toSend(write: PendingWrite): ProgressWriteInput;
  after: Map<PendingWrite, { atMs: number; times: number }>;
  refused: { write: PendingWrite; message: string }[];
  answered: { count: number };
}

/** Sends `writes` one request each (after their batch was refused as a whole, or split). */
async function oneByOne(flush: Flush, writes: PendingWrite[]): Promise<Outcome> {
  for (const write of writes) {
    if (flush.options.isDisposed()) return { outcome: "disposed" };
    const sendOne = async () => [await flush.api.updateProgress(flush.toSend(write))];
    const one = await attempt(flush, [write], sendOne);
    if (typeof one === "object") return one;
  }
  return "sent";
}

async function attempt(flush: Flush, writes: PendingWrite[], send: () => Promise<WriteResult[]>): Promise<Outcome> {
  const { store, options, refused, answered, after } = flush;
  // A write refused as older than an earlier write of this device, stored later than the write's date (one
  // dated beyond the server's 5 s tolerance, which lands at the server's now()), is sent again just after it.
  const again: PendingWrite[] = [];
  try {
    const results = await send();
    writes.forEach((write, k) => {
      const times = after.get(write)?.times ?? 0;
      const atMs = times < SEND_AGAIN_MAX ? store.sendAgainAfter(write, results[k]) : undefined;
      if (atMs === undefined) return store.settle(write, results[k]);
      after.set(write, { atMs, times: times + 1 });
      again.push(write);
    });
  } catch (error) {
    if (options.isSignedOut(error)) return { outcome: "signed out" };
    if (options.isRetryable(error)) {
      if (writes.length > 1 && options.splitMayHelp?.(error)) return "one by one";
      return retryableFailure(store, options, error);
    }
    if (writes.length > 1) return "one by one";
    const message = error instanceof Error ? error.message : String(error);
    refused.push({ write: writes[0], message: `Could not save ${writes[0].series_id}: ${message}` });
    answered.count++;
    return "one by one";
  }
  answered.count += writes.length - again.length;
  if (again.length === 0) return "sent";
  const outcome = await attempt(flush, again, () => flush.api.updateProgressBatch(again.map(flush.toSend)));
  // Its batch refused as a whole: one by one (a batch of one is not sent again alone).
  if (outcome === "one by one") return again.length > 1 ? await oneByOne(flush, again) : "sent";
  return outcome;
}

/**
 * A retryable failure stops the flush: a 401 starts a refresh of the token (not waited for: the flush's caller
 * holds the tabs' Web Lock until it ends), a lasting one is said.
 */
function retryableFailure(store: SyncStore, options: OutboxOptions, error: unknown): FlushResult {
  if ((error as { status?: number }).status === 401) {
    try {
      void options.refreshToken().catch(() => {});
    } catch {
      // (a refresh that could not start: the next attempt goes with the token held)
    }
  }
  // A passing outage says nothing by itself, and takes nothing away: what the page says (that
  // writes wait, asked by the reader or after a lasting failure; a refused write) is still true.
  if (!(options.isTransient?.(error) ?? true)) {
    const message = error instanceof Error ? error.message : String(error);
    store.setError(`Not saved yet (will retry): ${message}`, { untilAnswered: true });
  }
  return { outcome: "failed", error };
}

/**
 * Whether `write` is to be re-dated and the clock has no answer after its reading yet. A reading that
 * can never be re-dated (malformed, edited, not its write's: ServerClock.redatable) waits for nothing:
 * the write goes as dated, and no read is made for it (once, or at every flush).
 */
export function waitsForAnswer(write: PendingWrite, clock: Pick<ServerClock, "redate" | "redatable">): boolean {
  if (write.unmeasured === undefined || Number.isFinite(write.sentAtMs)) return false;
  const dated = Date.parse(write.updated_at);
  return clock.redatable(write.unmeasured, dated) && clock.redate(write.unmeasured, dated) === undefined;
}

/**
 * The write as the API takes it: without `unmeasured`, `sentAtMs`, `storedAt` and `seq`, and re-dated by them
 * (by `unmeasured` once the clock can; never later than it was dated, never before its `afterMs` nor
 * `notBeforeMs`, the device's own stored versions; by `sentAtMs` no further back than the clock has
 * known the device ahead, ServerClock.leadMs, plus REDATE_SLACK_MS).
 */
export function sendable(
  write: PendingWrite,
  clock?: Pick<ServerClock, "redate" | "leadMs">,
  notBeforeMs?: number,
): ProgressWriteInput {
  const { unmeasured, sentAtMs, storedAt: _storedAt, seq: _seq, ...sent } = write;
  const dated = Date.parse(write.updated_at);
  if (!Number.isFinite(dated)) return sent;
  let redated = dated;
  if (Number.isFinite(sentAtMs)) {
    // Dated under a measured offset after a write re-dated (saved with it): before its date by what that
    // write was late, which the lead the clock knew bounds. A stored value (hand-editable: a sentAtMs of 0
    // would send the page turn dated 1970, and it would lose to every version) goes no further back.
    const earliest = clock && Number.isFinite(clock.leadMs) ? dated - clock.leadMs - REDATE_SLACK_MS : -Infinity;
    redated = Math.min(dated, Math.max(sentAtMs!, earliest));
  } else {
    // Checked against this write's date: a reading that does not agree with it (edited, corrupted) is not re-dated.
    const at = unmeasured && clock ? clock.redate(unmeasured, dated) : undefined;
    if (at === undefined) return sent;
    const after = typeof unmeasured!.afterMs === "number" && Number.isFinite(unmeasured!.afterMs)
      ? unmeasured!.afterMs
      : -Infinity;
    redated = Math.min(dated, Math.max(at, after));
  }
  // After this device's versions the server is known to store (SyncStore.ownStoredFloor): a re-date by
  // this tab's clock must not put it before the one another tab just sent ('self').
  if (notBeforeMs !== undefined && Number.isFinite(notBeforeMs)) redated = Math.min(dated, Math.max(redated, notBeforeMs));
  return redated === dated ? sent : { ...sent, updated_at: new Date(redated).toISOString() };
}
