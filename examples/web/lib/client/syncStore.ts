// The device's view of the reader's library, framework-free so it can be reasoned about (and
// tested) without React:
//
//   confirmed   the newest version of each row the server has shown us (initial load, Realtime,
//               catch-up/poll, write responses), merged in last-write-wins order
//   pending     this device's writes not yet acknowledged (the outbox), persisted in localStorage
//               so an offline edit survives a reload; one per series, the last to enter the outbox
//               (each is numbered as it enters: PendingWrite.seq, not its date). Every tab of the
//               browser shares that one saved outbox: a tab merges into it (never overwrites what
//               another tab saved) and reloads it when another tab changes it (storage event),
//               letting go of the writes another tab says it got answered (localStorage is no
//               transaction across tabs: a write that left the saved outbox otherwise is saved again)
//   deleted     the versions hard DELETEs removed, so a late copy of one (a server-rendered page,
//               the answer to the write that made it) does not bring the series back
//   notices     per series: our write lost to a newer one from another device
//
// What the reader sees for a series is the newer of its pending write and its confirmed row, by
// the same order the server applies, so the optimistic view already shows the eventual winner. A
// pending write sent with another date than the one it was dated with (re-dated: see datesSentBy) is
// judged by the date it is sent with.

import { ConflictResolver } from "@shared/progress/conflictResolver.ts";
import type { UnmeasuredReading } from "@shared/progress/serverClock.ts";
import type { WriteResult } from "@shared/progress/types.ts";
import { compareServerVersions } from "@shared/realtime/progressMerge.ts";
import type { ProgressRow } from "./types.ts";
import { type DeviceIdLocks, readDeviceIds, rememberDeviceIds } from "./deviceId.ts";

export interface PendingWrite {
  series_id: string;
  chapter: number;
  page: number;
  percentage: number;
  cleared: boolean;
  device_id: string;
  updated_at: string;
  /**
   * Dated while the server clock had no measured offset in force (ServerClock.unmeasuredReading; e.g.
   * an hour late on a device an hour ahead that slept): re-dated by it before it is sent (outbox.ts),
   * never after `afterMs`, the date it had to follow that is not re-dated itself (the server's version
   * the reader was looking at, a write of this device dated under a measured offset). Never sent;
   * absent in writes dated under a measured offset, and in writes saved before it existed.
   */
  unmeasured?: UnmeasuredReading & { afterMs?: number };
  /**
   * In writes saved before writes were numbered (`seq`) only: dated under a measured offset after a queued
   * write still to be re-dated (`unmeasured`, whose date is late), the date it is sent with (outbox.ts),
   * before `updated_at`, which kept it after that write in the outbox's order then. Such a write is now
   * dated by the corrected clock itself (its number orders it). Never sent.
   */
  sentAtMs?: number;
  /**
   * Its place in this device's outbox, given when it entered it (SyncStore.addPending): one more than
   * any number this browser's outbox gave before (kept under SyncStore.seqKey, and the saved lists; the
   * first, the wall clock's ms), saved with it. It alone orders this device's writes of a series (a later
   * one replaces an earlier one, in every tab) and says which an answer covers (the writes of its series up
   * to its `seq`); the dates do not (an edited or far-ahead `updated_at` would otherwise rank every later
   * page turn behind it). Absent (saved before it existed) or not a whole number in range (edited): it comes
   * before every numbered write, and such writes keep their order by date among themselves. Never sent.
   */
  seq?: number;
  /**
   * In the tabs' lists of answered writes only: the key the server stored this device's version of the
   * series under when this write was answered (the answer's updated_at, when its device is this one).
   * A re-dated write of another tab is sent after it (ownStoredFloor), and so is a later write of the
   * series (sendAfterEarlier). Never sent.
   */
  storedAt?: string;
}

export interface ConflictNotice {
  seriesId: string;
  /** The write this device made that lost. */
  lost: PendingWrite;
  /** The row that won (from another device, or newer). */
  winner: ProgressRow;
  at: number;
}

export interface SeriesView {
  seriesId: string;
  chapter: number;
  page: number;
  percentage: number;
  cleared: boolean;
  deviceId: string;
  updatedAt: string;
  /** True while this device has a write for the series the server has not acknowledged yet. */
  pending: boolean;
}

export interface SyncSnapshot {
  version: number;
  /** Every series, most recently read first. */
  library: SeriesView[];
  bySeries: ReadonlyMap<string, SeriesView>;
  notices: ReadonlyMap<string, ConflictNotice>;
  pendingCount: number;
  lastError: string | null;
  /**
   * The device ids this browser wrote with, as far as this tab knows (#browserDeviceIds): besides the tab's own,
   * the one it had before its site data was cleared, or the one a tab opened after that makes. A version saved
   * under one is this browser's, not another device's. None in the server's snapshot.
   */
  browserDevices: ReadonlySet<string>;
}

type Compare = (a: LwwKey, b: LwwKey) => number;

/** The date a queued write is sent with (outbox.ts's sendable), ISO. */
type SentAs = (write: PendingWrite) => string;

/**
 * How many of the last writes answered (or refused) in this browser it remembers, so that its other
 * tabs let go of them (SyncStore.reloadOutbox): two full batches, more than a tab hears of at once.
 * The latest write of each series answered is kept apart from this list as well
 * (SyncStore.latestAnsweredKey), so it is still known after the list rolled over.
 */
const ANSWERED_REMEMBERED = 200;

/**
 * How many series the latest answered write of each (SyncStore.latestAnsweredKey) is kept for, besides the
 * series with a write still waiting (in the saved outbox, or in the tab that writes the list): the highest
 * numbered ones. That list is read at nearly every step, and one entry per series ever answered grew
 * without end. An entry is needed only while an older copy of its series may still be sent or taken up
 * (another tab's, one written back to the saved outbox): what the entries left out covered is kept as one
 * number, the highest of theirs (latestPrunedKey), and a write numbered at or below it is never sent again
 * after this device's own stored version ('self', sendAgainAfter), as a later write of its series may have
 * been answered.
 */
const LATEST_REMEMBERED = 200;

/**
 * Numbers an outbox gives (PendingWrite.seq) stay below this: one edited beyond it is not a number (it
 * comes before every numbered write), and the next one is always in range: at the last number (reached
 * only by an edit) the next write gets that number again, and such writes go by their dates, as two tabs'
 * writes that read the same last number do.
 */
const SEQ_LIMIT = 2 ** 48;

/** The first number an outbox gives is the wall clock's ms (#nextSeq), kept this far below SEQ_LIMIT. */
const FIRST_SEQ_LIMIT = 2 ** 47;

/** Whether `seq` is an outbox's number (PendingWrite.seq), or else absent or edited. */
function validSeq(seq: unknown): seq is number {
  return typeof seq === "number" && Number.isSafeInteger(seq) && seq >= 1 && seq < SEQ_LIMIT;
}

/** A write's outbox number, 0 when it has none (saved before the numbers, or edited out of range). */
function seqOf(write: PendingWrite): number {
  return validSeq(write.seq) ? write.seq : 0;
}

/** A list of writes as saved (`raw`, JSON; none: empty); null when it does not parse as one. */
function parseList(raw: string | null): PendingWrite[] | null {
  try {
    const saved = JSON.parse(raw ?? "[]");
    if (!Array.isArray(saved)) return null;
    return saved.filter((write): write is PendingWrite =>
      Boolean(write) && typeof write.series_id === "string" && typeof write.updated_at === "string" &&
      typeof write.device_id === "string"
    );
  } catch {
    return null;
  }
}

/** The server stores a write dated more than this ahead of its clock at its own time (migration 012). */
const SERVER_AHEAD_TOLERANCE_MS = 5_000;
/** The last instant a Date can hold (a date after it has no ISO form). */
const MAX_DATE_MS = 8_640_000_000_000_000;
interface LwwKey {
  series_id: string;
  updated_at: string;
  device_id: string;
}

export class SyncStore {
  #confirmed = new Map<string, ProgressRow>();
  #pending = new Map<string, PendingWrite>();
  #notices = new Map<string, ConflictNotice>();
  #deleted = new Map<string, ProgressRow>();
  #lastError: string | null = null;
  /** lastError says writes wait to be retried: it goes once a write is answered, here or in another tab. */
  #errorUntilAnswered = false;
  /** The last refused write's message shared by the tabs (this tab's or another's), shown or not. */
  #sharedRefusal: string | null = null;
  /** The shared key's value (refusedKey) as this tab last wrote or heard it; null: none, or dismissed. */
  #refusedSeen: string | null = null;
  /**
   * Set while a page restored from the back/forward cache, or resumed after the browser froze it, reads the
   * storage again (rereadStorage): it heard nothing while kept or frozen, so a clear found then does not write
   * back the shared message it last heard (it may have been dismissed since), and marks the writes it held as
   * possibly stale for every tab (#restore).
   */
  #rereadingAfterKept = false;
  #listeners = new Set<() => void>();
  #snapshot: SyncSnapshot;
  /** The newest row of each series the server-rendered pages were seeded with (getServerSnapshot). */
  #seeded = new Map<string, ProgressRow>();
  #seededSnapshot: SyncSnapshot | null = null;
  #version = 0;

  #storage: Storage | null = null;
  /** Pending writes known to be in the saved outbox (so one missing from it later was answered elsewhere). */
  #persisted = new WeakSet<PendingWrite>();
  /** Writes saved again once after they left the saved outbox unanswered (see #dropAnsweredElsewhere). */
  #savedAgain = new WeakSet<PendingWrite>();
  /**
   * Writes this tab held while its page was kept in the back/forward cache, when it found on its restore that
   * the browser's storage had been cleared meanwhile (rereadStorage): a later write of their series another
   * tab got answered then is named nowhere any more (that tab may be closed), so this device's stored version
   * such a write is refused for ('self') may be that later write, and it is not sent again after it
   * (sendAgainAfter).
   */
  #heldThroughClear = new WeakSet<PendingWrite>();
  /** The highest outbox number (PendingWrite.seq) this store gave or read (without storage: its own). */
  #highSeq = 0;
  /** The date a pending write is sent with (datesSentBy), when it is not its updated_at. */
  #sentAs: SentAs | null = null;
  /** Without storage (site data blocked): the list of answered writes, this tab's own (see #nameAnswered). */
  #answeredHere: PendingWrite[] = [];
  /**
   * The latest write answered of each series this tab named or heard of (bounded as the saved list is:
   * #pruneLatest). Without storage, the list itself (see #readLatestAnswered); with it, what this tab
   * writes back should the browser's storage be cleared while it is open (#restore).
   */
  #latestKnown = new Map<string, PendingWrite>();
  /** The highest number of the entries #latestKnown left out (see LATEST_REMEMBERED); 0: none. */
  #prunedHere = 0;
  /**
   * The device ids this browser wrote with that this tab knows (deviceId.ts's list, read when it hears of the
   * storage, and the ids of the writes it queued): written back should the storage be cleared (#restore).
   */
  #deviceIdsKnown = new Set<string>();
  /** The device ids of the writes this tab queued (addPending): the ids it writes with, kept in the list. */
  #deviceIdsWritten = new Set<string>();
  /** navigator.locks, which deviceId.ts's list is changed under (attachStorage); null: none. */
  #locks: DeviceIdLocks | null = null;
  /**
   * The mark this store last saw under markKey (null: not looked yet; undefined: storage that could not keep
   * it, so clears are not told until a look of this tab keeps one: #markAgain). Gone, or another tab's, the
   * browser's storage was cleared meanwhile.
   */
  #mark: string | null | undefined = null;
  /** The lists saved in the storage as last parsed, by key, with the value they were parsed from (#readList). */
  #parsedLists = new Map<string, { raw: string | null; list: PendingWrite[] | null }>();
  /** Run once this store has written back what it holds after the storage was cleared (onStorageCleared). */
  #clearedListeners = new Set<() => void>();
  /** Order of two server rows: the row's life first, then `compare` (see #mergeConfirmed). */
  readonly #serverOrder: (a: ProgressRow, b: ProgressRow) => number;

  /**
   * `wallNow`: the wall clock (ms), which the first number an outbox gives starts at (#nextSeq); a test's own
   * to stand for a tab opened later.
   */
  constructor(readonly userId: string, readonly compare: Compare, readonly wallNow: () => number = Date.now) {
    this.#serverOrder = compareServerVersions<ProgressRow>(compare);
    this.#snapshot = this.#build();
  }

  /**
   * How the outbox dates what it sends (outbox.ts's sendable with the session's clock; null: by
   * updated_at). A write dated late while the clock's correction was dropped keeps that date in the
   * outbox but goes re-dated: the view judges it by the date it goes with, so a phone's reading made
   * after the page turn shows (as it will win), not the page turn an hour late. The view is built again.
   */
  datesSentBy(sentAs: SentAs | null): void {
    this.#sentAs = sentAs;
    this.#emit();
  }

  /** The clock has learnt more (an answer): what the waiting writes are sent as may have changed. */
  sendDatesChanged(): void {
    if (!(this.#sentAs && this.#pending.size > 0)) return;
    this.#noticeCleared(); // (as applyServerRow: the view is built from the storage)
    this.#emit();
  }

  /**
   * Persists the outbox from now on, after loading what an earlier visit left unsent. `locks`: navigator.locks,
   * under which deviceId.ts's list of this browser's device ids is changed (one tab at a time); none: at once.
   */
  attachStorage(storage: Storage, locks?: DeviceIdLocks): void {
    if (this.#storage === storage) return;
    this.#storage = storage;
    this.#locks = locks ?? null;
    this.#parsedLists.clear();
    this.#mark = null;
    this.#noticeCleared(); // the first look: the mark there, or a new one
    // Writes queued before storage was attached (SyncProvider: before the session opened) entered this
    // device's outbox now: numbered after everything it holds, in the order they were queued.
    const queued = this.pendingWrites().sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));
    for (const write of queued) write.seq = this.#nextSeq();
    this.#loadOutbox();
    this.#rememberSaved(); // what it writes back should the storage be cleared before it hears of more
    this.#keepDeviceIds(this.pendingWrites().map((write) => write.device_id)); // (queued before, see addPending)
    this.#saveOutbox(this.pendingWrites(), []); // writes queued before storage was attached
    // A refused write's message the tabs share and no tab took away (dismissed, a save that got through): a
    // refused page turn is said in a tab opened (or reloaded) too, until then, not only in those open when it
    // was refused.
    try {
      const refused = storage.getItem(this.refusedKey);
      if (refused !== null) this.takeRefused(refused);
    } catch {
      // storage disabled: nothing shared to read
    }
    this.#emit();
  }

  subscribe = (listener: () => void): (() => void) => {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  };

  getSnapshot = (): SyncSnapshot => this.#snapshot;

  /**
   * What the server rendered: the rows pages were seeded with and nothing of this device (no pending
   * write, notice or error); React's snapshot while it hydrates, then getSnapshot's. A page's content
   * is hydrated after the layout (a Suspense boundary of its own), so after SyncProvider's effect has
   * loaded the outbox an earlier visit left: with getSnapshot there, the library or the series showed a
   * waiting write the server's HTML did not have, a hydration error (React's #418).
   */
  getServerSnapshot = (): SyncSnapshot =>
    this.#seededSnapshot ??= this.#build({
      confirmed: this.#seeded,
      pending: new Map(),
      notices: new Map(),
      lastError: null,
      browserDevices: new Set(),
    });

  /**
   * Rows from the server-rendered page; silent (no listeners run) because it happens during render.
   * Another user's rows are left out (a page rendered for the session another tab signed in).
   */
  seed(rows: readonly ProgressRow[]): void {
    let changed = false;
    for (const row of rows) {
      if (row.user_id !== this.userId) continue;
      changed = this.#mergeConfirmed(row) || changed;
      const seeded = this.#seeded.get(row.series_id);
      if (!seeded || this.#serverOrder(row, seeded) > 0) {
        this.#seeded.set(row.series_id, row);
        this.#seededSnapshot = null;
      }
    }
    if (!changed) return;
    this.#noticeCleared(); // (as #emit: the view is read from the storage)
    this.#snapshot = this.#build();
  }

  /** A server row (Realtime, catch-up, poll, write response). Returns whether it was newer. */
  applyServerRow(row: ProgressRow): boolean {
    // Looked at first, as every other change does: after a clear, the view it builds is read from a storage without
    // the lists of answered writes (a waiting page turn shown as the earlier write's stored row, the reader taken
    // back a page, until the tab's next look), unless what this tab holds is written back before.
    this.#noticeCleared();
    const changed = this.#mergeConfirmed(row);
    // A pending write that is now known to be older than the server's row will lose: keep it in
    // the outbox (the server decides and answers), the view already shows the winner.
    if (changed) this.#emit();
    return changed;
  }

  /**
   * A hard DELETE of `deleted` (the version it removed). A newer version this device already has
   * (e.g. the answer to its own write that inserted the series again) stays.
   */
  removeServerRow(deleted: ProgressRow): void {
    this.#noticeCleared(); // (as applyServerRow)
    const tombstone = this.#deleted.get(deleted.series_id);
    if (!tombstone || this.#serverOrder(deleted, tombstone) > 0) this.#deleted.set(deleted.series_id, deleted);
    const current = this.#confirmed.get(deleted.series_id);
    if (!current || this.#serverOrder(current, deleted) > 0) return;
    this.#confirmed.delete(deleted.series_id);
    this.#emit();
  }

  /**
   * The updated_at for a new write of `seriesId` made now (`nowMs`, the server's clock as this
   * device knows it): strictly after the version the reader is looking at, whichever device made
   * it. The reader acted on that version, so the write must win over it: a version another device
   * dated a few seconds ahead (the server accepts up to its 5 s tolerance) would otherwise beat
   * the page turn made after seeing it. This device's queued write of the series is followed no
   * further than the server's 5 s tolerance for clocks ahead (see #after).
   */
  nextUpdatedAt(seriesId: string, nowMs: number, sentAs: SentAs): string {
    // The saved writes and the answered writes' keys it dates after are gone after a clear until a tab writes
    // them back: this tab first (a page turn dated before this device's stored version is refused 'self').
    this.#noticeCleared();
    return new Date(Math.max(nowMs, this.#after(seriesId, nowMs, true, sentAs))).toISOString();
  }

  /**
   * What a write of `seriesId` dated now (nextUpdatedAt) must stay after when it is re-dated
   * (PendingWrite.unmeasured.afterMs): as nextUpdatedAt, but leaving out this device's queued writes
   * that are re-dated themselves (the one it replaces never goes; each is re-dated alike).
   * Undefined when nothing.
   */
  redatingFloor(seriesId: string, nowMs: number, sentAs: SentAs): number | undefined {
    this.#noticeCleared(); // (as nextUpdatedAt)
    const after = this.#after(seriesId, nowMs, false, sentAs);
    return Number.isFinite(after) ? after : undefined;
  }

  /**
   * The first instant after what a new write of `seriesId` must follow (nextUpdatedAt), -Infinity for
   * none. `sentAs`: this device's queued writes count by the date they are sent with (outbox.ts's
   * sendable; the queued write of this tab also after the key an earlier write of it was stored under,
   * as #asSent), not the one they were dated with. Only the date sent to the server: the outbox orders
   * writes by their numbers (PendingWrite.seq), so no date here follows a write for its place there.
   */
  #after(
    seriesId: string,
    nowMs: number,
    unmeasuredToo: boolean,
    sentAs: SentAs,
  ): number {
    let at = -Infinity;
    const later = (updatedAt: string | undefined) => {
      const after = updatedAt === undefined ? NaN : Date.parse(updatedAt) + 1;
      if (Number.isFinite(after)) at = Math.max(at, after);
    };
    // The version shown is the newer of these two; a queued write to be re-dated is left out of a floor.
    later(this.#confirmed.get(seriesId)?.updated_at);
    const pending = this.#pending.get(seriesId);
    const answered = this.#readAnswered();
    if (pending && (unmeasuredToo || !pending.unmeasured)) {
      // A queued write dated beyond the server's 5 s tolerance (edited, a clock far ahead) is stored at the
      // server's now() if it is sent (it may be on its way): followed no further than that tolerance, not
      // by its date, which would carry into every later page turn.
      const sentAt = Date.parse(sentAs(pending));
      const after = Math.max(sentAt, this.#afterEarlier(pending, answered) ?? -Infinity) + 1;
      if (Number.isFinite(after)) at = Math.max(at, Math.min(after, nowMs + SERVER_AHEAD_TOLERANCE_MS));
    }
    // Another tab of this browser may have saved a write of the series that this tab has not taken
    // over yet, under the same device id: date this one after it, so the two never share a key and
    // the later save is the later write (under one key the server keeps whichever arrives last).
    // Only within the server's 5 s tolerance for clocks ahead: a saved date beyond it (a tab that
    // stamped with its own clock before it knew the server's, storage edited by hand) would carry every
    // later save past the tolerance, where the server re-dates it. So are the writes the tabs' list names
    // answered (another tab's, not heard of here yet), by the same rule: for the server's order only, as
    // which writes an answer covers is said by their numbers. Whatever their device id: the saved outbox
    // and the lists are this browser's alone, and another id there is the one it had before the site's data
    // was cleared (deviceId.ts makes a new one for a tab opened then; a page open through the clear still
    // writes with the old one). Only this tab's id counted, a page turn of such a tab, made after the old
    // page's write of the series was answered (its row not here yet), was dated at its key, where the two
    // ids break the tie (for the old page's write when its id is the greater), or before it, and lost.
    for (const saved of [...this.#readSaved(), ...answered]) {
      if (saved.series_id !== seriesId) continue;
      if (!unmeasuredToo && saved.unmeasured) continue;
      const savedAfter = Date.parse(sentAs(saved)) + 1;
      if (!Number.isFinite(savedAfter) || savedAfter > MAX_DATE_MS) continue;
      if (savedAfter <= nowMs + SERVER_AHEAD_TOLERANCE_MS) at = Math.max(at, savedAfter);
    }
    return at;
  }

  /**
   * The first instant after every key the server is known to store this device's versions of the
   * series under (the confirmed version when it is this device's, and the writes any tab of the browser
   * got answered: `storedAt`); undefined when none. A write sent re-dated goes no earlier: re-dated by
   * another tab's clock (estimates within a round trip of each other), a page turn made just after
   * the one another tab sent could fall before it and be refused as older than this device's own
   * write ('self'). `sentAtMs`: the date the write goes with otherwise (sendable without the floor); a
   * version stored under that key with the write's position is this write itself (its answer lost, the
   * row heard since): it does not count, so the write goes again under the same key (a replay), not
   * 1 ms after its own stored copy, stored a second time.
   */
  ownStoredFloor(write: PendingWrite, sentAtMs?: number): number | undefined {
    let at = -Infinity;
    const itself = (key: string, position: PendingWrite | ProgressRow) =>
      sentAtMs !== undefined && Date.parse(key) === sentAtMs && ConflictResolver.samePosition(write, position);
    const confirmed = this.#confirmed.get(write.series_id);
    if (confirmed && confirmed.device_id === write.device_id && !itself(confirmed.updated_at, confirmed)) {
      at = Date.parse(confirmed.updated_at) + 1;
    }
    for (const done of this.#readAnswered()) {
      if (done.series_id !== write.series_id || done.device_id !== write.device_id) continue;
      if (typeof done.storedAt !== "string" || itself(done.storedAt, done)) continue;
      const stored = Date.parse(done.storedAt) + 1;
      if (Number.isFinite(stored)) at = Math.max(at, stored);
    }
    return Number.isFinite(at) ? at : undefined;
  }

  /**
   * When the server refused `write` as older than this device's own stored version ('self': `won` false, the stored
   * row of this device, or of another id this browser wrote with: #browsersDevice) and that version is not known to
   * be a later write of this device, the first instant after its key, at which `write` is to be sent again;
   * undefined otherwise. A page turn made while an earlier write dated beyond the server's 5 s tolerance was on its
   * way is dated at most 5 s ahead (nextUpdatedAt), and that write, landing later than the page turn's date, is
   * stored at the server's now(): the page turn would be dropped though it came after it. Not sent again: a write
   * this tab no longer holds for its series (a later one replaced it), one of a series for which this browser knows
   * a later write of this device (by number, PendingWrite.seq: this tab's, the saved outbox, the tabs' list of
   * answered writes; it is the stored one, or goes itself), and one the stored version holds the position of (its
   * own copy, stored when it was sent again and the answer was lost: not stored a second time).
   */
  sendAgainAfter(write: PendingWrite, result: WriteResult): number | undefined {
    const stored = result.progress;
    if (result.won || stored.series_id !== write.series_id) return undefined;
    if (this.#pending.get(write.series_id) !== write || ConflictResolver.samePosition(write, stored)) return undefined;
    // Held by a page kept in the back/forward cache while the storage was cleared: the names that would tell a
    // later write of its series (another tab's, answered meanwhile) are gone with it, and the stored version
    // may be that one; sent again after it, this stale write was stored over it, the reader a page back.
    if (this.#heldThroughClear.has(write)) return undefined;
    this.#noticeCleared();
    const answered = this.#readAnswered();
    // This device's own stored version: under its id, or under another id this browser wrote with (the one it had
    // before its site data was cleared, still written with by a page open through the clear, see #after).
    // Another device's is a newer page turn of the reader's, never overtaken.
    if (stored.device_id !== write.device_id && !this.#browsersDevice(stored.device_id)) return undefined;
    if (this.#laterKnown(write, answered)) return undefined;
    // Numbered at or below a latest answered write left out of the list (LATEST_REMEMBERED): a later write
    // of its series may be the stored one, and this one a stale copy.
    const pruned = this.#readPruned();
    if (pruned > 0 && seqOf(write) <= pruned) return undefined;
    const after = Date.parse(stored.updated_at) + 1;
    return Number.isFinite(after) && after <= MAX_DATE_MS ? after : undefined;
  }

  /**
   * The first instant after the key the server stored this device's version of the series under when an
   * earlier write of it (a lower number) was answered in this browser (storedAt), at which
   * `write`, the one this tab holds for its series, is to be sent at the earliest; undefined when no such
   * key is known, or when a later write of the series is (see sendAgainAfter: `write` is then no longer
   * the one that goes). A page turn made while an earlier write dated beyond the server's 5 s tolerance was
   * on its way is dated at most 5 s ahead (nextUpdatedAt), and that write, landing later, is stored at the
   * server's now(), after it: sent as dated, the page turn was refused as older than it ('self') and sent
   * again after it (sendAgainAfter, still the way when the key is not known here), and the view showed the
   * earlier position meanwhile. The view judges it by this date too (#asSent).
   */
  sendAfterEarlier(write: PendingWrite): number | undefined {
    if (this.#pending.get(write.series_id) !== write) return undefined;
    return this.#afterEarlier(write, this.#readAnswered());
  }

  /** sendAfterEarlier for a write this tab holds, `answered` the writes answered here (#readAnswered). */
  #afterEarlier(write: PendingWrite, answered: readonly PendingWrite[]): number | undefined {
    // The write's own stored copy (its answer lost, the row heard since) is no key to go after: an earlier
    // write answered after it was stored is named with that key, and the write goes again under it (a replay).
    const confirmed = this.#confirmed.get(write.series_id);
    const ownCopyAt = confirmed && confirmed.device_id === write.device_id &&
        ConflictResolver.samePosition(write, confirmed)
      ? confirmed.updated_at
      : undefined;
    let at = -Infinity;
    // Whatever the answered write's device id (the lists are this browser's alone, see #after): a page turn of a
    // tab opened after the site's data was cleared, made while an earlier write of the page open through the
    // clear (the old id) dated beyond the 5 s tolerance was on its way, went as dated, was refused as older than
    // that write, stored at the server's now(), and lost, as 'self' is told for this tab's id only.
    for (const done of answered) {
      if (done.series_id !== write.series_id) continue;
      if (typeof done.storedAt !== "string" || done.storedAt === ownCopyAt) continue;
      if (this.#sameWrite(done, write) || !this.#enteredLater(write, done)) continue;
      const after = Date.parse(done.storedAt) + 1;
      if (Number.isFinite(after) && after <= MAX_DATE_MS) at = Math.max(at, after);
    }
    if (!Number.isFinite(at) || this.#laterKnown(write, answered)) return undefined;
    return at;
  }

  /**
   * Whether this browser knows a write of `write`'s series (under any of its device ids) that entered its
   * outbox later (by number, PendingWrite.seq): in the saved outbox, or answered (`answered`, #readAnswered:
   * also once the list rolled over). That one is the stored version, or goes itself.
   */
  #laterKnown(write: PendingWrite, answered: readonly PendingWrite[]): boolean {
    // Whatever its device id: the lists are this browser's alone (see #after), its numbers one sequence.
    const later = (other: PendingWrite) =>
      other.series_id === write.series_id && !this.#sameWrite(other, write) && this.#enteredLater(other, write);
    return [...this.#readSaved(), ...answered].some(later);
  }

  /** Whether `deviceId` is one this browser wrote with (#browserDeviceIds). */
  #browsersDevice(deviceId: string): boolean {
    return this.#browserDeviceIds().has(deviceId);
  }

  /**
   * The device ids this browser wrote with, as far as this tab knows: deviceId.ts's list, the ids of the writes
   * this tab queued or heard of (#deviceIdsKnown), and those in the saved outbox and the lists of answered writes,
   * which are this browser's alone. Another id than the tab's own is the one the browser had before its site
   * data was cleared (a page open through the clear still writes with it, see #after), or the one a tab opened
   * then made. The list is needed besides the others: a write of the old page named in no list (its answer not
   * written yet, and a page turn of the new tab replaced it in the saved outbox) left its id unknown, and the new
   * tab's page turn, refused as older than it, was settled as lost to another device. Another device's id is in
   * none of them.
   */
  #browserDeviceIds(): Set<string> {
    const ids = new Set(this.#deviceIdsKnown);
    if (!this.#storage) return ids;
    for (const id of readDeviceIds(this.#storage)) ids.add(id);
    for (const write of [...this.#readSaved(), ...this.#readAnswered()]) ids.add(write.device_id);
    return ids;
  }

  /**
   * Keeps `ids` (of writes this tab queued, or all it knows, written back after a clear) as this browser's, here
   * and in deviceId.ts's list, with the ids this tab writes with and those of the writes still queued, which the
   * list never drops (rememberDeviceIds' `keep`: the tab writes with them, or its outbox does). Only what the list
   * lacks is written: a tab without Web Locks may have written it from an older copy, leaving one out. Not every
   * id this tab knows: beyond the list's bound, that added one and dropped another at each write. `writtenBack`:
   * after a clear (#restore), older than the ids the list got since (rememberDeviceIds).
   */
  #keepDeviceIds(ids: Iterable<string>, writtenBack = false): void {
    for (const id of ids) this.#deviceIdsKnown.add(id);
    if (!this.#storage) return;
    const live = new Set(this.#deviceIdsWritten);
    for (const write of [...this.#pending.values(), ...this.#readSaved()]) live.add(write.device_id);
    // Once written (under its Web Lock, maybe after this tab's other writes): the view is built again when the ids
    // it names this browser's changed since it was built, as at another tab's change (deviceIdsChanged), which
    // a `storage` event tells; this page's own change fires none here.
    void rememberDeviceIds(this.#storage, [...ids, ...live], { keep: live, locks: this.#locks, writtenBack })
      .then(() => this.deviceIdsChanged());
  }

  /**
   * An optimistic local write: shown at once and queued for the server, with the next number of this
   * device's outbox (PendingWrite.seq, set on `write`); the same write again (key and position) keeps its number.
   */
  addPending(write: PendingWrite): void {
    this.#noticeCleared(); // numbered after what this tab knows, should the storage have been cleared
    this.#deviceIdsWritten.add(write.device_id);
    this.#keepDeviceIds([write.device_id]);
    const current = this.#pending.get(write.series_id);
    write.seq = current && validSeq(current.seq) && (current === write || this.#sameContent(current, write))
      ? current.seq
      : this.#nextSeq();
    this.#pending.set(write.series_id, write);
    this.#notices.delete(write.series_id);
    this.#saveOutbox([write], []);
    this.#emit();
  }

  pendingWrites(): PendingWrite[] {
    return [...this.#pending.values()];
  }

  /** The server answered a write: drop it from the outbox (unless a newer one replaced it meanwhile). */
  settle(write: PendingWrite, result: WriteResult): void {
    this.#noticeCleared();
    if (this.#pending.get(write.series_id) === write) this.#pending.delete(write.series_id);
    this.#mergeConfirmed(result.progress);
    // What the server stores is this device's own (a replay of this write after a lost answer, or a
    // later save of another tab of this browser, which shares the device id, or wrote with the browser's
    // other id after its site data was cleared: #browsersDevice): no other device won.
    const storedBy = result.progress.device_id;
    const storedIsOurs = storedBy === write.device_id || this.#browsersDevice(storedBy);
    if (!result.won && !storedIsOurs) {
      this.#notices.set(write.series_id, { seriesId: write.series_id, lost: write, winner: result.progress, at: Date.now() });
      this.#dropSupersededNotice(write.series_id);
    } else {
      // This write is what the server stores: an earlier "your change lost" is no longer true.
      this.#notices.delete(write.series_id);
    }
    this.#lastError = null;
    this.#errorUntilAnswered = false;
    // Named with the key the server stored this device's version under: the other tabs send their
    // re-dated writes of the series after it (ownStoredFloor).
    this.#saveOutbox([], [storedIsOurs ? { ...write, storedAt: result.progress.updated_at } : write]);
    // A save got through: a refused write's message goes here, so it goes in the other tabs too.
    this.#clearSharedRefusal();
    this.#emit();
  }

  /**
   * The server refused a write (validation, auth): it will never apply, so stop retrying it. Every tab
   * of the browser shares the outbox, so every tab of this user says so: the message is saved under
   * `refusedKey`, and the others show it when they hear of it (takeRefused).
   */
  reject(write: PendingWrite, message: string): void {
    this.#noticeCleared();
    if (this.#pending.get(write.series_id) === write) this.#pending.delete(write.series_id);
    this.#lastError = message;
    this.#errorUntilAnswered = false;
    this.#sharedRefusal = message;
    this.#saveOutbox([], [write]);
    try {
      // `at` makes a second refusal with the same message a change too (a storage event).
      const shared = JSON.stringify({ message, at: Date.now() });
      if (this.#storage) {
        this.#storage.setItem(this.refusedKey, shared);
        this.#refusedSeen = shared;
      }
    } catch {
      // storage full or disabled: this tab says it
    }
    this.#emit();
  }

  /** The key under which a refused write's message is shared with the browser's other tabs. */
  get refusedKey(): string {
    return `readsync.outboxRefused.${this.userId}`;
  }

  /**
   * Another tab changed the shared message of a refused write (`saved`: the key's new value): shown
   * here too; gone (dismissed there), it goes here as well, unless this tab shows something else.
   */
  takeRefused(saved: string | null): void {
    // The value this tab holds already: written back after a clear (#restore), not a new refusal (this tab
    // may show another message by now). A removal is always taken: a message this tab shows as its own (kept
    // through a clear, rereadStorage) goes with another tab's dismissal too.
    if (saved !== null && saved === this.#refusedSeen) return;
    this.#refusedSeen = saved;
    if (saved === null) {
      if (this.#sharedRefusal !== null && this.#lastError === this.#sharedRefusal) this.setError(null);
      this.#sharedRefusal = null;
      return;
    }
    try {
      const { message } = JSON.parse(saved) as { message?: unknown };
      if (typeof message !== "string") return;
      this.#sharedRefusal = message;
      this.setError(message);
    } catch {
      // unreadable: nothing to show
    }
  }

  /** The reader dismissed the message: in every tab, when it is the shared one of a refused write. */
  dismissError(): void {
    this.#noticeCleared(); // the shared key written back first, so that its removal reaches the other tabs
    if (this.#lastError !== null && this.#lastError === this.#sharedRefusal) this.#clearSharedRefusal();
    this.setError(null);
  }

  /**
   * Takes the shared message of a refused write away, in this tab and (its key gone) in the others. What it
   * took away is kept under refusedGoneKey first: a tab that tells a clear only now (the events of this tab's
   * writing back still on their way to it) finds the key empty, and without it took the message for cleared
   * and wrote it back, in every tab again.
   */
  #clearSharedRefusal(): void {
    this.#sharedRefusal = null;
    this.#refusedSeen = null;
    try {
      const shared = this.#storage?.getItem(this.refusedKey);
      if (shared != null) {
        this.#storage!.setItem(this.refusedGoneKey, shared);
        this.#storage!.removeItem(this.refusedKey);
      }
    } catch {
      // storage disabled: here only
    }
  }

  /**
   * The key of the last shared message of a refused write a tab took away (dismissed, or a save got through):
   * not written back after a clear (#restore).
   */
  get refusedGoneKey(): string {
    return `readsync.outboxRefusedGone.${this.userId}`;
  }

  /** The key the outbox is saved under (a tab listens for `storage` events on it). */
  get outboxKey(): string {
    return `readsync.outbox.${this.userId}`;
  }

  /** The key of the last number this browser's outbox gave a write of this user (PendingWrite.seq). */
  get seqKey(): string {
    return `readsync.outboxSeq.${this.userId}`;
  }

  /** The key of the last writes answered (or refused) here, written before they leave the outbox. */
  get answeredKey(): string {
    return `readsync.outboxAnswered.${this.userId}`;
  }

  /**
   * The key of the latest write (by number) answered (or refused) here of each series, written with
   * answeredKey, whose list keeps only the last writes of all series.
   */
  get latestAnsweredKey(): string {
    return `readsync.outboxAnsweredLatest.${this.userId}`;
  }

  /**
   * The key of the highest number among the latest answered writes left out of latestAnsweredKey's list
   * (LATEST_REMEMBERED): a write numbered at or below it may be a stale copy of a series answered later.
   */
  get latestPrunedKey(): string {
    return `readsync.outboxAnsweredPruned.${this.userId}`;
  }

  /** The key of the mark that tells a tab the browser's storage was cleared while it was open (#noticeCleared). */
  get markKey(): string {
    return `readsync.outboxMark.${this.userId}`;
  }

  /**
   * Another tab changed the saved outbox: take over the writes it queued, and let go of the ones it
   * got answered (a saved write of this tab's that the tabs' list of answered writes names, or a newer
   * one of its series: another tab sent it, or it was refused there; even while the saved outbox this
   * tab sees still holds it, as the name may reach this tab first). One that left it unnamed there was not answered: another
   * tab rewrote the outbox from a copy read before this tab saved it (localStorage is no transaction
   * across tabs); it is saved again (once: a second time it is let go, so a browser whose storage cannot
   * take the list does not send one write for ever). A write that could not be saved (storage full), or an
   * unreadable outbox, is never let go this way. Storage cleared (markKey gone) is told apart: this tab
   * writes back all it holds first (#restore), so a clear, however many, lets go of nothing.
   */
  reloadOutbox(): void {
    if (this.#reload()) this.#emit();
  }

  /**
   * The page was restored from the back/forward cache (`pageshow`, persisted), or resumed after the browser
   * froze it (Page Lifecycle, `resume`): while it was kept there (or frozen) it heard no storage event, so it
   * may hold writes another tab got answered (and send them again), lack the ones another tab queued, show a
   * refused write's message dismissed since (or not one made since), and not know the storage was cleared.
   * All of it is read again now (a clear told first: #reload), not at the next event or send.
   */
  rereadStorage(): void {
    // A message it showed may have been dismissed in another tab while it was kept: written back after a
    // clear, it came back in every tab. Not written back (a tab that heard more writes it back, should it not
    // have been dismissed).
    const markBefore = this.#mark;
    const held = this.pendingWrites();
    this.#rereadingAfterKept = true;
    try {
      this.#reload();
    } finally {
      this.#rereadingAfterKept = false;
    }
    const clearFound = this.#mark !== markBefore; // (or a mark kept at last: what happened is not known)
    // Cleared while it was kept: what it held may be stale copies of writes another tab replaced and got
    // answered, their names gone (#heldThroughClear; for the copies it wrote back, which another tab or this
    // page reloaded takes up, the number #restore kept under latestPrunedKey).
    if (clearFound) for (const write of held) this.#heldThroughClear.add(write);
    let refused: string | null | undefined;
    try {
      refused = this.#storage?.getItem(this.refusedKey);
    } catch {
      // storage disabled: nothing shared to read
    }
    if (refused === null && clearFound) {
      // Gone by the clear, which says nothing of a dismissal: still shown here (a refused page turn is not
      // hidden unread), as this tab's own, not written back at a later clear (#restore) either.
      this.#refusedSeen = null;
    } else if (refused !== undefined) this.takeRefused(refused);
    this.#emit();
  }

  /**
   * Another tab changed the lists of answered writes (answeredKey, latestAnsweredKey), which need not change
   * the saved outbox: as reloadOutbox, and the view is built again in any case, as it shows a waiting write
   * by the date it will be sent with, which an answered earlier write's stored key moves (#asSent).
   */
  takeAnswered(): void {
    this.#reload();
    this.#emit();
  }

  /** reloadOutbox's work; returns whether the pending writes changed. */
  #reload(): boolean {
    // Cleared (a storage event with no key, or seen here first): what this tab holds is written back
    // first, so its writes are still saved, not taken for answered elsewhere.
    this.#noticeCleared();
    this.#rememberSaved();
    const dropped = this.#dropAnsweredElsewhere();
    // Another tab got writes answered: a "will retry" said here is over, as it is there.
    if (dropped && this.#errorUntilAnswered) {
      this.#lastError = null;
      this.#errorUntilAnswered = false;
    }
    return this.#loadOutbox() || dropped;
  }

  /**
   * The message the page shows (null: none). `untilAnswered`: it says writes wait to be retried
   * ("Not saved yet (will retry)"), so it goes once one is answered, in this tab or another.
   */
  setError(message: string | null, options: { untilAnswered?: boolean } = {}): void {
    this.#errorUntilAnswered = message !== null && options.untilAnswered === true;
    if (this.#lastError === message) return;
    this.#lastError = message;
    // Looked at first, as applyServerRow does: the view it builds again is read from the storage (the lists of
    // answered writes), and after a clear it showed a waiting page turn as an earlier write's stored row.
    this.#noticeCleared();
    this.#emit();
  }

  dismissNotice(seriesId: string): void {
    if (!this.#notices.delete(seriesId)) return;
    this.#noticeCleared(); // (as setError)
    this.#emit();
  }

  #mergeConfirmed(row: ProgressRow): boolean {
    const tombstone = this.#deleted.get(row.series_id);
    if (tombstone && this.#serverOrder(tombstone, row) >= 0) return false; // deleted already
    const current = this.#confirmed.get(row.series_id);
    // Server rows: a row inserted after a hard DELETE is newer whatever its updated_at (see
    // shared/realtime/progressMerge.ts).
    if (current && this.#serverOrder(current, row) >= 0) return false;
    this.#confirmed.set(row.series_id, row);
    this.#dropSupersededNotice(row.series_id);
    return true;
  }

  /**
   * "Another device's newer position wins" is no longer true once a newer save of this device is
   * what the server stores. settle() sees that for the writes this tab sent; this covers the rest:
   * another tab of this browser (same device id, or the browser's other one after its site data was
   * cleared: #browsersDevice) sent it, and it arrives by Realtime, catch-up, a poll or a server-rendered
   * page; or it was already here when a late answer named the winner.
   */
  #dropSupersededNotice(seriesId: string): void {
    const notice = this.#notices.get(seriesId);
    const confirmed = this.#confirmed.get(seriesId);
    if (
      notice && confirmed && this.#serverOrder(confirmed, notice.winner) > 0 &&
      (confirmed.device_id === notice.lost.device_id || this.#browsersDevice(confirmed.device_id))
    ) {
      this.#notices.delete(seriesId);
    }
  }

  /**
   * Another tab changed deviceId.ts's list of this browser's device ids (a `storage` event on its key): the view
   * is built again when the ids this tab knows as this browser's changed. Until then it named a version saved
   * under an id the list had just gained another device's ("From device …") until the store's next change.
   */
  deviceIdsChanged(): void {
    const known = this.#snapshot.browserDevices;
    const now = this.#browserDeviceIds();
    if (now.size !== known.size || [...now].some((id) => !known.has(id))) this.#emit();
  }

  #emit(): void {
    // Looked at first, whatever changed: the view is read from the storage (the lists of answered writes, the saved
    // outbox, this browser's device ids), and one built from a cleared storage showed a waiting page turn as the
    // stored row of an earlier write (the reader a page back) until something else built it again; a look that
    // finds the clear and writes back what this tab holds builds nothing itself. The changes that build it without
    // a look of their own reached it so: the dating of the writes set (datesSentBy: a session closing, or opening
    // over the same store) and another tab's change of the device ids (a tab opened after the clear without Web
    // Locks writes its id before its mark).
    this.#noticeCleared();
    this.#snapshot = this.#build();
    for (const listener of [...this.#listeners]) listener();
  }

  /**
   * What the view is built from (#build's default): this store's state, with this browser's device ids as now
   * known. A notice of a write lost to a version whose id is, as now known, this browser's goes: settle() gives
   * none for such a version (no loss to another device), and one given before the id was known here (the page
   * that wrote it, open through a clear, named it only once this tab's answer had come) said "another device"
   * until the list told it, then "A newer position saved in this browser wins", a wording no other path reached.
   */
  #current() {
    const browserDevices = this.#browserDeviceIds();
    for (const [seriesId, notice] of this.#notices) {
      if (browserDevices.has(notice.winner.device_id)) this.#notices.delete(seriesId);
    }
    return {
      confirmed: this.#confirmed,
      pending: this.#pending,
      notices: this.#notices,
      lastError: this.#lastError,
      browserDevices,
    };
  }

  #build(
    from: {
      confirmed: ReadonlyMap<string, ProgressRow>;
      pending: ReadonlyMap<string, PendingWrite>;
      notices: ReadonlyMap<string, ConflictNotice>;
      lastError: string | null;
      browserDevices: ReadonlySet<string>;
    } = this.#current(),
  ): SyncSnapshot {
    const bySeries = new Map<string, SeriesView>();
    const ids = new Set([...from.confirmed.keys(), ...from.pending.keys()]);
    const answered = from.pending.size > 0 ? this.#readAnswered() : [];
    for (const id of ids) {
      const confirmed = from.confirmed.get(id);
      const pending = from.pending.get(id);
      // The pending write once it is newer; under the confirmed version's key with another position it
      // is this device's later save (the server stores it 1 ms after), so it is what will be shown.
      // (A third position under one key would lose as stale, README, Schema decisions; the dating in
      // nextUpdatedAt keeps this device from making one.)
      const sent = pending && this.#asSent(pending, answered);
      const usePending = sent && (!confirmed || this.#savedLater(sent, confirmed));
      const source = usePending ? sent : confirmed!;
      bySeries.set(id, {
        seriesId: id,
        chapter: source.chapter,
        page: source.page,
        percentage: source.percentage,
        cleared: source.cleared,
        deviceId: source.device_id,
        updatedAt: source.updated_at,
        pending: Boolean(usePending) || Boolean(pending),
      });
    }
    const library = [...bySeries.values()]
      .filter((v) => !v.cleared)
      .sort((a, b) => Date.parse(b.updatedAt) - Date.parse(a.updatedAt) || (a.seriesId < b.seriesId ? -1 : 1));
    return {
      version: ++this.#version,
      library,
      bySeries,
      notices: new Map(from.notices),
      pendingCount: from.pending.size,
      lastError: from.lastError,
      browserDevices: from.browserDevices,
    };
  }

  /**
   * `write` (the one this tab holds for its series) as it is sent (datesSentBy; and no earlier than
   * sendAfterEarlier, `answered` the writes answered here): its updated_at the date it goes with.
   */
  #asSent(write: PendingWrite, answered: readonly PendingWrite[]): PendingWrite {
    const redated = this.#sentAs && (write.unmeasured !== undefined || write.sentAtMs !== undefined);
    let updatedAt = redated ? this.#sentAs!(write) : write.updated_at;
    // Re-dated, no earlier than this device's own stored versions (ownStoredFloor), and never later than it was
    // dated, as the outbox sends it (outbox.ts: sendable's notBeforeMs): re-dated by this tab's clock to just
    // before another tab's earlier write, stored under its clock's estimate, the page turn was shown behind that
    // write's row (the reader a page back) until it was answered.
    const redatedMs = Date.parse(updatedAt);
    const floor = redated && Number.isFinite(redatedMs) ? this.ownStoredFloor(write, redatedMs) : undefined;
    if (floor !== undefined && !(redatedMs >= floor)) {
      const capped = Math.min(Date.parse(write.updated_at), floor);
      if (Number.isFinite(capped)) updatedAt = new Date(capped).toISOString();
    }
    const after = this.#afterEarlier(write, answered);
    const sentAt = after !== undefined && !(Date.parse(updatedAt) >= after) ? new Date(after).toISOString() : updatedAt;
    return sentAt === write.updated_at ? write : { ...write, updated_at: sentAt };
  }

  /**
   * Whether `write` is saved after `other` (same series): its key is newer, or it is the same key
   * with another position. Tabs of one browser share the device id, so two of them can date
   * different positions alike; the server stores such a write as that device's later position
   * (1 ms after the first), so the outbox keeps the last one saved rather than dropping it as a
   * copy of the first.
   */
  #savedLater(write: PendingWrite, other: PendingWrite | ProgressRow): boolean {
    const order = this.compare(write, other);
    return order > 0 || (order === 0 && !ConflictResolver.samePosition(write, other));
  }

  /**
   * Merges the saved outbox into the pending writes (the later to enter it wins); returns whether any was taken. A
   * saved write the tabs' list names answered is not taken: the tab that got it answered named it
   * before it took it out of the saved outbox, and this tab may see the name before the removal.
   */
  #loadOutbox(): boolean {
    let taken = false;
    const answered = this.#readAnswered();
    for (const write of this.#readSaved()) {
      if (this.#namedAnswered(write, answered)) continue;
      const current = this.#pending.get(write.series_id);
      if (!current || this.#enteredLater(write, current)) {
        this.#pending.set(write.series_id, write);
        this.#persisted.add(write);
        taken = true;
      } else if (!this.#enteredLater(current, write)) {
        this.#persisted.add(current); // the same write (key and position) is saved
      }
    }
    return taken;
  }

  /** Drops the saved writes answered elsewhere (see reloadOutbox); returns whether any were. */
  #dropAnsweredElsewhere(): boolean {
    const readable = this.#readSavedOrNull();
    if (!readable) return false; // unreadable is not answered: keep everything
    const saved = new Map(readable.map((write) => [write.series_id, write]));
    const answered = this.#readAnswered();
    let dropped = false;
    const unanswered: PendingWrite[] = [];
    for (const [seriesId, write] of this.#pending) {
      if (!this.#persisted.has(write)) continue;
      // Named answered: let go, even while the saved outbox this tab sees still holds it (the other
      // tab names a write before it takes it out, and this tab may see the one before the other).
      const named = this.#namedAnswered(write, answered);
      const other = saved.get(seriesId);
      if (!named && other && !this.#enteredLater(write, other)) continue; // still saved, or a newer one is
      if (named || this.#savedAgain.has(write)) {
        this.#pending.delete(seriesId);
        dropped = true;
      } else {
        unanswered.push(write);
      }
    }
    for (const write of unanswered) this.#savedAgain.add(write);
    if (unanswered.length > 0) this.#saveOutbox(unanswered, []);
    return dropped;
  }

  /** Whether `answered` names `write` (it, or a newer write of its series, was answered or refused). */
  #namedAnswered(write: PendingWrite, answered: readonly PendingWrite[]): boolean {
    return answered.some((done) => done.series_id === write.series_id && !this.#enteredLater(write, done));
  }

  /**
   * Whether `write` entered this device's outbox after `other` (same series): by their numbers
   * (PendingWrite.seq; one without a number comes before every numbered one); by key and position,
   * as #savedLater, when the numbers are alike (none, or two tabs that numbered at the same moment:
   * localStorage is no transaction across tabs, so both may have read the same last number).
   */
  #enteredLater(write: PendingWrite, other: PendingWrite): boolean {
    const seq = validSeq(write.seq) ? write.seq : 0;
    const otherSeq = validSeq(other.seq) ? other.seq : 0;
    return seq !== otherSeq ? seq > otherSeq : this.#savedLater(write, other);
  }

  /** Whether `a` and `b` hold the same series, key and position (whatever their numbers). */
  #sameContent(a: PendingWrite, b: PendingWrite): boolean {
    return a.series_id === b.series_id && this.compare(a, b) === 0 && ConflictResolver.samePosition(a, b);
  }

  /**
   * The next number of this device's outbox (PendingWrite.seq): one more than the highest this browser
   * gave this user's outbox (the last one, kept under seqKey; the numbers in the saved outbox and the
   * list of answered writes, in case that key was lost) and this store saw. Without storage, this store's own.
   */
  #nextSeq(): number {
    let high = this.#highSeq;
    const consider = (seq: unknown) => {
      if (validSeq(seq)) high = Math.max(high, seq);
    };
    if (this.#storage) {
      try {
        // The key alone at the last number (edited) is passed over: no write holds it.
        const last = Number(this.#storage.getItem(this.seqKey) ?? 0);
        if (last < SEQ_LIMIT - 1) consider(last);
      } catch {
        // storage disabled: the lists (none then) and this store's own
      }
      for (const write of this.#readSaved()) consider(write.seq);
      for (const write of this.#readAnswered()) consider(write.seq);
    }
    consider(this.#readPruned()); // the latest answered writes left out of the list were numbered too
    // No number anywhere this store sees: a first visit, or a tab opened after the site's storage was cleared
    // while older tabs still hold what was numbered before (they write back the writes they knew answered
    // once they notice: #restore). Numbered from 1, its page turn came at or below those names, was taken
    // for answered and let go in every tab. The wall clock (ms) starts it above every number given before
    // (one a write: far fewer than one a ms), unless that clock was set back meanwhile.
    const nowMs = Math.floor(this.wallNow());
    if (high === 0 && Number.isFinite(nowMs)) high = Math.min(Math.max(nowMs, 1), FIRST_SEQ_LIMIT) - 1;
    // A write at the last number (edited) is not passed by a number out of range, which would come before it.
    this.#highSeq = Math.min(high + 1, SEQ_LIMIT - 1);
    try {
      this.#storage?.setItem(this.seqKey, String(this.#highSeq));
    } catch {
      // storage full or disabled: the saved outbox still holds the numbers it was given
    }
    return this.#highSeq;
  }

  /** Whether `a` and `b` are one write: the same series, key and position, and the same outbox number. */
  #sameWrite(a: PendingWrite, b: PendingWrite): boolean {
    const seq = (write: PendingWrite) => validSeq(write.seq) ? write.seq : 0;
    return this.#sameContent(a, b) && seq(a) === seq(b);
  }

  /**
   * The writes answered (or refused) in this browser that the tabs go by: the last ones (see
   * ANSWERED_REMEMBERED), and the latest of each series (#readLatestAnswered), which the list keeps only
   * while it is among the last 200 of all series: once it rolled over, a lower-numbered write of the series
   * (another tab's stale copy, a copy written back to the saved outbox) was taken for the later one, sent
   * again after it ('self', sendAgainAfter) and stored over it. None when unreadable.
   */
  #readAnswered(): PendingWrite[] {
    return [...this.#readAnsweredList(), ...this.#readLatestAnswered().values()];
  }

  /** The last writes answered in this browser (ANSWERED_REMEMBERED); without storage, this tab's own. */
  #readAnsweredList(): PendingWrite[] {
    if (!this.#storage) return this.#answeredHere;
    return this.#readList(this.answeredKey) ?? [];
  }

  /** The latest write (by number) answered in this browser of each series; without storage, this tab's own. */
  #readLatestAnswered(): Map<string, PendingWrite> {
    if (!this.#storage) return new Map(this.#latestKnown);
    const latest = new Map<string, PendingWrite>();
    for (const write of this.#readList(this.latestAnsweredKey) ?? []) {
      const other = latest.get(write.series_id);
      if (!other || this.#enteredLater(write, other)) latest.set(write.series_id, write);
    }
    return latest;
  }

  /**
   * The highest number of the latest answered writes left out of the list (LATEST_REMEMBERED), 0 when none;
   * without storage, this tab's own.
   */
  #readPruned(): number {
    if (!this.#storage) return this.#prunedHere;
    try {
      const pruned = Number(this.#storage.getItem(this.latestPrunedKey) ?? 0);
      return validSeq(pruned) ? pruned : 0;
    } catch {
      return 0;
    }
  }

  /**
   * Leaves out of `latest` (the latest answered write of each series) all but the LATEST_REMEMBERED highest
   * numbered ones, besides the series with a write waiting (this tab's, the saved outbox): those may still
   * need its name, and its stored key to be sent after. Returns the highest number left out (0: none).
   */
  #pruneLatest(latest: Map<string, PendingWrite>): number {
    if (latest.size <= LATEST_REMEMBERED) return 0;
    // Waiting: later than its series' latest answered (the write being answered, still saved, is not).
    const waiting = new Set(
      [...this.#pending.values(), ...this.#readSaved()].filter((write) => {
        const done = latest.get(write.series_id);
        return !done || this.#enteredLater(write, done);
      }).map((write) => write.series_id),
    );
    const prunable = [...latest.values()].filter((write) => !waiting.has(write.series_id))
      .sort((a, b) => seqOf(b) - seqOf(a));
    let pruned = 0;
    for (const write of prunable.slice(LATEST_REMEMBERED)) {
      latest.delete(write.series_id);
      pruned = Math.max(pruned, seqOf(write));
    }
    return pruned;
  }

  /**
   * Keeps what the saved lists say was answered (the latest of each series, and the number summing up those
   * left out) for this tab to write back should the storage be cleared (#restore): also when it heard of
   * nothing since it opened, and what another tab left out of the list, which this tab never saw (that
   * tab may be closed by then, and a stale copy one holds was sent again over the later write, 'self').
   */
  #rememberSaved(): void {
    this.#prunedHere = Math.max(this.#prunedHere, this.#readPruned());
    this.#remember(this.#readLatestAnswered().values());
    // (And this browser's device ids, which a tab opened after a clear needs to tell this browser's versions.)
    if (this.#storage) for (const id of readDeviceIds(this.#storage)) this.#deviceIdsKnown.add(id);
  }

  /** Keeps `writes` (latest answered ones) in #latestKnown, the later of each series, bounded alike. */
  #remember(writes: Iterable<PendingWrite>): void {
    for (const write of writes) {
      const other = this.#latestKnown.get(write.series_id);
      if (!other || !this.#enteredLater(other, write)) this.#latestKnown.set(write.series_id, write);
    }
    this.#prunedHere = Math.max(this.#prunedHere, this.#pruneLatest(this.#latestKnown));
  }

  /**
   * Whether the browser's storage was cleared since this store last looked (localStorage.clear() in a tab,
   * the reader clearing the site's data: markKey gone, or another tab's mark, written when it saw that):
   * then what this tab holds is written back (#restore) before anything reads the storage for it. The first
   * look (attachStorage) takes the mark there, or writes one. A mark it could not keep (storage full) is
   * tried again at every look (#markAgain: one write refused while still full, nothing written back):
   * tried only at this tab's writes, the looks in between (a page turn's dating, which comes before its
   * write; the schedule's before it reads its shared state; a storage event's) told no clear once there was
   * room, and read the cleared storage as no failure, no answered key and their writes left unnamed.
   */
  #noticeCleared(): void {
    const storage = this.#storage;
    if (!storage) return;
    if (this.#mark === undefined) return this.#markAgain(storage);
    let mark: string | null;
    try {
      mark = storage.getItem(this.markKey);
    } catch {
      return; // storage disabled: nothing to tell
    }
    if (mark !== null && mark === this.#mark) return;
    if (this.#mark !== null) this.#restore();
    // A storage that cannot keep the mark (full) would have every tab write back all it holds at every step.
    this.#mark = mark ?? this.#newMark(storage) ?? undefined;
  }

  /** Writes a new mark under markKey; returns it, or null when the storage does not keep it (full). */
  #newMark(storage: Storage): string | null {
    const mark = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
    try {
      storage.setItem(this.markKey, mark);
      return storage.getItem(this.markKey) === mark ? mark : null;
    } catch {
      return null;
    }
  }

  /**
   * A mark this tab could not keep (storage full when it looked): taken (the mark there) or written now, if
   * the storage keeps it (at the tab's next look: #noticeCleared). Without one, the tab never told a clear.
   * What happened meanwhile is not known (space freed, or the storage cleared, which is why the mark fits
   * now): what it holds is written back as after a clear (#restore), which only adds what the storage lacks
   * (the latest answered writes and the numbers merged by the highest; its waiting writes not named answered,
   * which it would save again anyway).
   */
  #markAgain(storage: Storage): void {
    let mark: string | null;
    try {
      mark = storage.getItem(this.markKey) ?? this.#newMark(storage);
    } catch {
      return; // storage disabled: nothing to tell
    }
    if (mark === null) return; // still full: tried again at the next look
    this.#mark = mark;
    this.#restore();
  }

  /**
   * Looks whether the browser's storage was cleared (see #noticeCleared) and, if so, writes back what this
   * tab holds: the outbox's schedule looks before it reads its shared state (outboxSchedule.ts's tabs).
   */
  checkCleared(): void {
    this.#noticeCleared();
  }

  /**
   * Runs `listener` each time this store wrote back what it holds after the browser's storage was cleared
   * (#restore): the session writes the outbox's shared schedule back then (OutboxSchedule.writeBack).
   * Returns the function that stops it.
   */
  onStorageCleared(listener: () => void): () => void {
    this.#clearedListeners.add(listener);
    return () => this.#clearedListeners.delete(listener);
  }

  /**
   * After the browser's storage was cleared with this tab open: writes back what this tab holds, as it
   * held it. Before, its writes were taken for left unnamed by another tab (saved again once, and let go
   * at the next clear), a page turn was numbered after the last number its own tab gave (1 in a tab that
   * gave none: before a write another tab then saved back, which replaced it), and with the names of the
   * writes answered lost, a stale copy another tab held went again and was sent once more 1 ms after this
   * device's later write ('self'), stored over it. The latest answered writes it named or heard of go
   * first (the other tabs let go of what they name), then the last number, then its waiting writes.
   */
  #restore(): void {
    const storage = this.#storage!;
    // This browser's device ids (deviceId.ts's list): those of the writes this tab holds, answered or waiting,
    // among them. Asked first, but where Web Locks exist the list is written once its lock is granted, which can
    // be after the writes below (another tab reading in between finds the list short for that moment; writing it
    // at once would bring back the lost update between two tabs' list changes). A tab opened after the clear
    // writes with a new id, and a version stored under one of these (a write of this page named in no list: its
    // answer not written yet, and that tab's page turn replaced it in the saved outbox) is still this browser's
    // there, not another device's (#browsersDevice). (Every id it knows: the clear took the list.)
    this.#keepDeviceIds([
      ...this.#deviceIdsKnown,
      ...[...this.#pending.values(), ...this.#latestKnown.values()].map((write) => write.device_id),
    ], true);
    const latest = this.#readLatestAnswered();
    for (const write of this.#latestKnown.values()) {
      const other = latest.get(write.series_id);
      if (!other || !this.#enteredLater(other, write)) latest.set(write.series_id, write);
    }
    // Found by a page restored from the back/forward cache: the writes it held (written back below) may be stale
    // copies of writes another tab replaced and got answered while it was kept, their names gone with the
    // clear. Covered as the latest answered writes left out of the list are (written first): a tab that takes
    // one up from the saved outbox (opened now, or this page reloaded before it sent) does not send it again
    // after this device's own stored version ('self', sendAgainAfter); #heldThroughClear alone was this
    // tab's, and such a tab stored the stale page turn over the later one.
    let heldHigh = 0;
    if (this.#rereadingAfterKept) for (const write of this.#pending.values()) heldHigh = Math.max(heldHigh, seqOf(write));
    const pruned = Math.max(this.#readPruned(), this.#prunedHere, this.#pruneLatest(latest), heldHigh);
    this.#prunedHere = pruned; // written back again should the storage be cleared again
    try {
      if (pruned > 0) storage.setItem(this.latestPrunedKey, String(pruned));
      if (latest.size > 0) storage.setItem(this.latestAnsweredKey, JSON.stringify([...latest.values()]));
    } catch {
      // storage full: its waiting writes still go back below
    }
    let high = Math.max(this.#highSeq, pruned);
    for (const write of [...this.#pending.values(), ...latest.values()]) high = Math.max(high, seqOf(write));
    try {
      const last = Number(storage.getItem(this.seqKey) ?? 0);
      if (validSeq(last) && last < SEQ_LIMIT - 1) high = Math.max(high, last);
      this.#highSeq = Math.min(high, SEQ_LIMIT - 1);
      if (this.#highSeq > 0) storage.setItem(this.seqKey, String(this.#highSeq));
    } catch {
      // storage full: the saved outbox below still holds the numbers
    }
    const answered = this.#readAnswered();
    this.#saveOutbox(this.pendingWrites().filter((write) => !this.#namedAnswered(write, answered)), []);
    // A refused write's message the tabs share, as this tab last wrote or heard it (not dismissed since):
    // else gone from the storage, its dismissal in one tab (or a later save that gets through) reached no
    // other.
    // (Not by a page restored from the back/forward cache: it heard no dismissal while kept, see rereadStorage.)
    // Nor one another tab took away since it wrote it back (refusedGoneKey: its removal not heard here yet).
    const refused = this.#sharedRefusal !== null && !this.#rereadingAfterKept ? this.#refusedSeen : null;
    try {
      if (
        refused !== null && storage.getItem(this.refusedKey) === null && storage.getItem(this.refusedGoneKey) !== refused
      ) {
        storage.setItem(this.refusedKey, refused);
      }
    } catch {
      // storage full: this tab still says it
    }
    for (const listener of [...this.#clearedListeners]) listener();
  }

  #readSaved(): PendingWrite[] {
    // A corrupt outbox is dropped; the server still has everything acknowledged.
    return this.#readSavedOrNull() ?? [];
  }

  /** The saved outbox; null when it cannot be read (no storage, access denied, corrupt). */
  #readSavedOrNull(): PendingWrite[] | null {
    return this.#readList(this.outboxKey);
  }

  /**
   * The list saved under `key` (the outbox, the lists of answered writes); null when it cannot be read. Parsed
   * once per value (#parsedLists): a reload read each list 7 or 8 times, parsing it each time. The value is
   * read from the storage every time, so another tab's change (another string) is never missed. The writes
   * are shared between the reads of one value: none is changed in place (the writes numbered as storage is
   * attached were read from no list of it).
   */
  #readList(key: string): PendingWrite[] | null {
    if (!this.#storage) return null;
    let raw: string | null;
    try {
      raw = this.#storage.getItem(key);
    } catch {
      return null;
    }
    let parsed = this.#parsedLists.get(key);
    if (!parsed || parsed.raw !== raw) {
      parsed = { raw, list: parseList(raw) };
      this.#parsedLists.set(key, parsed);
    }
    return parsed.list && [...parsed.list];
  }

  /**
   * Read-merge-write of the saved outbox, which other tabs share: `added` writes replace older
   * saved ones of their series; `done` writes (answered or refused) leave it unless another tab
   * saved a newer one of their series meanwhile. Every other saved write stays. The `done` writes
   * are named in the list of answered writes first, so the other tabs let go of them.
   */
  #saveOutbox(added: PendingWrite[], done: PendingWrite[]): void {
    if (done.length > 0) this.#nameAnswered(done);
    if (!this.#storage) return;
    try {
      // Saved writes the list names answered are left out: every tab skips them already, and one written
      // back from a copy read before its answer would otherwise stay until its name left the list, and
      // then be taken up and sent once more.
      const answered = this.#readAnswered();
      const unnamed = this.#readSaved().filter((write) => !this.#namedAnswered(write, answered));
      const saved = new Map(unnamed.map((write) => [write.series_id, write]));
      for (const write of done) {
        const other = saved.get(write.series_id);
        if (other && !this.#enteredLater(other, write)) saved.delete(write.series_id);
      }
      for (const write of added) {
        const other = saved.get(write.series_id);
        if (!other || this.#enteredLater(write, other)) saved.set(write.series_id, write);
      }
      if (saved.size === 0) this.#storage.removeItem(this.outboxKey);
      else this.#storage.setItem(this.outboxKey, JSON.stringify([...saved.values()]));
      for (const write of added) if (saved.get(write.series_id) === write) this.#persisted.add(write);
    } catch {
      // Storage full or disabled: the outbox still lives in memory.
    }
  }

  /**
   * Names `done` (answered or refused) for the other tabs, before the writes leave the saved outbox: the
   * latest of each series (latestAnsweredKey), then the list of the last ones. Without storage, here.
   */
  #nameAnswered(done: PendingWrite[]): void {
    // A write named again (answered a second time, a repeat) moves to the end instead of being
    // listed twice: it is remembered as long as its last mention, and takes one of the slots.
    const answered = [...this.#readAnsweredList(), ...done].filter((named, i, list) =>
      !list.slice(i + 1).some((later) => this.#sameWrite(named, later))
    ).slice(-ANSWERED_REMEMBERED);
    const latest = this.#readLatestAnswered();
    for (const write of done) {
      const other = latest.get(write.series_id);
      // The same write answered again replaces itself (its storedAt the latest).
      if (!other || !this.#enteredLater(other, write)) latest.set(write.series_id, write);
    }
    // Bounded (LATEST_REMEMBERED): what is left out is covered by the highest number among it, written first.
    const pruned = Math.max(this.#readPruned(), this.#pruneLatest(latest));
    if (!this.#storage) {
      this.#answeredHere = answered;
      this.#latestKnown = latest;
      this.#prunedHere = pruned;
      return;
    }
    this.#prunedHere = Math.max(this.#prunedHere, pruned);
    this.#remember(latest.values());
    try {
      if (pruned > 0) this.#storage.setItem(this.latestPrunedKey, String(pruned));
      this.#storage.setItem(this.latestAnsweredKey, JSON.stringify([...latest.values()]));
    } catch {
      // Storage full or disabled: the list below still names the last ones.
    }
    try {
      this.#storage.setItem(this.answeredKey, JSON.stringify(answered));
    } catch {
      // Storage full or disabled: the other tabs keep them and save them again once (sent twice at worst).
    }
  }
}
