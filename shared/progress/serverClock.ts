// The server's clock as seen from this device, for stamping writes.
//
// Last-write-wins compares the updated_at a device stamps. Device clocks drift, and a misconfigured
// one (a time zone applied twice) runs hours ahead; the server clamps a future updated_at to its
// now(), so a position read on such a device, sent later, would win at sync time over newer reading
// on other devices: the reader is dragged back. So clients stamp writes with their clock corrected
// by the server's. Every answer of the progress API carries X-Server-Time (the server's clock when
// it answered: the database's, which judges writes' dates, when the request reached it, else the
// function host's corrected by the database's as last read, so that it is one clock). The API
// client (api.ts) learns only from 2xx answers, which all reached the database: an error answer from
// a function instance that has not read the database yet carries its host's own clock, which judges
// no write. The answer was produced somewhere between sending the request and receiving it, so each
// answer bounds the offset (server - device) to an interval one round trip wide.
// The intersection of those intervals is kept (a clock that jumps empties it: start again from the
// newest answer). The device is corrected only when the interval excludes zero, i.e. when it is
// certainly off; a device within a round trip of the server keeps its own clock.
//
// A device clock set right while the app runs (NTP, the reader fixing the time zone) would keep the
// old correction until the next answer: a clock an hour ahead, corrected by -1 h, set back by the
// hour, stamps the next page turn an hour early, and it loses to older reading on other devices.
// So the clock also notes, at every answer (and at its start), the device clock against a monotonic
// one (performance.now(), which never steps). When the two have since drifted apart by more than
// STEP_TOLERANCE_MS, the device clock stepped, or the monotonic clock paused (most stop while the
// device sleeps, and a phone's clock is often set right just after it wakes), or both, and the two
// cannot be told apart: a step back is added back, and a correction that would date writes before
// the device clock is no longer trusted. Until the next answer measures afresh, stamps may be late,
// never early; a stamp more than 5 s ahead of the server is stored at the server's now(). Without a
// monotonic clock (no performance.now(), or a deviceNow given without monotonicNow) nothing of this
// is noticed.
//
// Late is still wrong for a write queued offline: a device an hour ahead that slept has its page turns
// dated an hour late, and sent a week later they beat the reading other devices did in that hour. So a
// write dated while no measured offset is in force (none yet, or dropped after a drift) keeps
// unmeasuredReading(), and is re-dated before it is sent by redate(): the device reading plus the first
// offset measured after it (a sleep: the device is still an hour ahead, the dates move back by it; a
// real step: the new offset is about 0, nothing moves). A step back noticed between the reading and
// that answer is counted; the re-date never goes before the offset measured before the reading would
// have dated it (a lower one means the clock stepped forward somewhere, which cannot be placed). With
// no offset measured before the reading, a drift forward between it and the answer counts as a step
// too (a pause of the monotonic clock looks the same), and a reading nothing links to the answer
// (another visit's or tab's) goes no earlier than the device's own clock: late at worst, never early.
// A reading is kept with its write (localStorage, hand-editable), so redate() given the write's date
// checks the two agree: the reading's own clock no later than the date, and the re-date moving the
// date back by no more than the lead over the server the answers measured (and a step back noticed)
// plus REDATE_SLACK_MS; one that does not (edited, corrupted, not this write's) is never re-dated
// (redatable() false), so the write goes as dated: late at worst.

import { PROGRESS_LIMITS } from "./types.ts";

export interface ClockSample {
  /** X-Server-Time of an answer, epoch ms. */
  serverMs: number;
  /** Device clock when the request was sent and when the answer arrived. */
  sentMs: number;
  receivedMs: number;
  /**
   * The monotonic clock (ServerClock.monotonicNow) at the same two moments, when there is one: a
   * sample during which the device clock stepped is dropped (its two ends disagree).
   */
  sentMonotonicMs?: number;
  receivedMonotonicMs?: number;
}

/** How far the device clock may drift from the monotonic clock before it counts as a step. */
export const STEP_TOLERANCE_MS = 1_000;

/**
 * How much further back than the measured lead (and a step back noticed) a re-date may move a write
 * from its date: what dated it after its reading's own clock (a saved write of another tab up to the
 * server's 5 s tolerance ahead, the few ms between now() and the reading), and the drift tolerance.
 */
export const REDATE_SLACK_MS = PROGRESS_LIMITS.futureToleranceMs + STEP_TOLERANCE_MS;

/** How many recent stamps stamp() remembers so as never to give one twice. */
const MAX_REMEMBERED_STAMPS = 10_000;

/** How many answers' first offsets after unmeasured readings the clock remembers for redate(). */
const MAX_REMEMBERED_FIRST_OFFSETS = 1_000;

/**
 * A device reading taken while no measured offset was in force (ServerClock.unmeasuredReading):
 * what redate() needs, plain JSON so that a queued write can keep it (e.g. in localStorage).
 */
export interface UnmeasuredReading {
  /** The device clock then (epoch ms). */
  deviceMs: number;
  /** The monotonic clock then, when there is one (counts only in the same clock). */
  monotonicMs?: number;
  /** The offset the answers had measured before (measuredOffsetMs), absent when there were none. */
  measuredMs?: number;
  /** The clock that took it (ServerClock.id: one per page visit) and how many answers it had taken. */
  clock: string;
  answers: number;
}

/** Whether `value` has the shape of an UnmeasuredReading (plain JSON read back from storage may not). */
export function isUnmeasuredReading(value: unknown): value is UnmeasuredReading {
  if (typeof value !== "object" || value === null) return false;
  const r = value as Record<string, unknown>;
  const finiteOrAbsent = (x: unknown) => x === undefined || (typeof x === "number" && Number.isFinite(x));
  return typeof r.deviceMs === "number" && Number.isFinite(r.deviceMs) && finiteOrAbsent(r.monotonicMs) &&
    finiteOrAbsent(r.measuredMs) && typeof r.clock === "string" && typeof r.answers === "number" &&
    Number.isInteger(r.answers) && r.answers >= 0;
}

export class ServerClock {
  #lo = -Infinity;
  #hi = Infinity;
  /** The interval holds a saved estimate, not answers: the next answer replaces it. */
  #fromSaved = false;
  /** The latest key the server stored for a write of this device (epoch ms). */
  #ownStoredMs = -Infinity;
  /** The latest stamp() given out (epoch ms). */
  #lastStampMs = -Infinity;
  /** Recent stamps given out: after a correction back the clock reads them again, stamp() skips them. */
  readonly #stamps = new Set<number>();
  readonly #deviceNow: () => number;
  readonly #monotonicNow: (() => number) | null;
  /** The device clock and the monotonic clock at the newest answer (at the start before one). */
  #anchor: { deviceMs: number; monotonicMs: number } | null = null;
  /** This clock, among the clocks whose readings redate() may be given (another visit's, tab's). */
  readonly id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  /** Answers taken (observe() calls that changed the estimate). */
  #answers = 0;
  /** The most the device clock was known ahead of the server (leadMs). */
  #leadMs = 0;
  /** Answer counts at which unmeasured readings were taken, waiting for the next answer. */
  readonly #awaiting = new Set<number>();
  /**
   * Per answer count of unmeasured readings: the offset the next answer measured, and when; and the step
   * back noticed since the answer before (the most a reading of that count can have been set back).
   */
  readonly #firstAfter = new Map<
    number,
    { offsetMs: number; deviceMs: number; monotonicMs?: number; stepBackMs: number }
  >();

  /**
   * `offsetMs`: a previous estimate (e.g. saved on the device), used until answers say otherwise.
   * `monotonicNow`: a clock in ms that never steps (performance.now() by default; with a deviceNow of
   * the caller's own only when given too, as the two must tell the same time's passing).
   */
  constructor(options: { deviceNow?: () => number; monotonicNow?: () => number; offsetMs?: number } = {}) {
    this.#deviceNow = options.deviceNow ?? (() => Date.now());
    this.#monotonicNow = options.monotonicNow ??
      (options.deviceNow === undefined && typeof performance !== "undefined"
        ? () => performance.now()
        : null);
    if (options.offsetMs !== undefined && Number.isFinite(options.offsetMs) && options.offsetMs !== 0) {
      this.#lo = this.#hi = options.offsetMs;
      this.#fromSaved = true;
      this.#leadMs = Math.max(0, -this.measuredOffsetMs);
    }
    this.#anchor = this.#anchorNow();
  }

  #anchorNow(): { deviceMs: number; monotonicMs: number } | null {
    return this.#monotonicNow ? { deviceMs: this.#deviceNow(), monotonicMs: this.#monotonicNow() } : null;
  }

  /** The device clock, in epoch ms (what `sentMs` / `receivedMs` are measured with). */
  deviceNow(): number {
    return this.#deviceNow();
  }

  /** The monotonic clock in ms, undefined without one (`sentMonotonicMs` / `receivedMonotonicMs`). */
  monotonicNow(): number | undefined {
    return this.#monotonicNow?.();
  }

  /** Narrows the offset with one answer; ignored when the sample is malformed. */
  observe(sample: ClockSample): void {
    const { serverMs, sentMs, receivedMs, sentMonotonicMs, receivedMonotonicMs } = sample;
    if (![serverMs, sentMs, receivedMs].every(Number.isFinite) || receivedMs < sentMs) return;
    if (
      Number.isFinite(sentMonotonicMs) && Number.isFinite(receivedMonotonicMs) &&
      Math.abs((receivedMs - sentMs) - (receivedMonotonicMs! - sentMonotonicMs!)) > STEP_TOLERANCE_MS
    ) {
      // The device clock stepped while the request was out: the sample mixes the two clocks. The
      // anchor stays, so the step still shows (see offsetMs); the next answer measures.
      return;
    }
    const lo = serverMs - receivedMs;
    const hi = serverMs - sentMs;
    const stepBackMs = Math.max(0, -this.#driftMs()); // since the answer before
    this.#anchor = this.#anchorNow();
    if (this.#fromSaved || lo > this.#hi || hi < this.#lo) {
      // First answer after a saved estimate, or a clock that jumped: this answer alone decides.
      this.#fromSaved = false;
      this.#lo = lo;
      this.#hi = hi;
    } else {
      this.#lo = Math.max(this.#lo, lo);
      this.#hi = Math.min(this.#hi, hi);
    }
    // Ahead by the lead this answer measured, and before a step back noticed since the answer before by that too.
    this.#leadMs = Math.max(this.#leadMs, -this.measuredOffsetMs + stepBackMs);
    this.#answerTaken(receivedMs, receivedMonotonicMs, stepBackMs);
  }

  /**
   * The most this clock has known the device clock ahead of the server (a saved estimate, the answers,
   * with a step back noticed before one): how far before its date a write it dated may rightly be sent
   * (PendingWrite.sentAtMs in the web app; add REDATE_SLACK_MS). A stored value claiming more (edited,
   * corrupted) is not to be believed.
   */
  get leadMs(): number {
    return this.#leadMs;
  }

  /** Answers taken so far (observe() calls that measured): it changes when one taught this clock. */
  get answers(): number {
    return this.#answers;
  }

  /** Counts an answer; the unmeasured readings taken before it learn their first offset measured after. */
  #answerTaken(
    deviceMs: number,
    monotonicMs: number | undefined,
    stepBackMs: number,
  ): void {
    const at = {
      offsetMs: this.measuredOffsetMs,
      deviceMs,
      monotonicMs: monotonicMs ?? this.monotonicNow(),
      stepBackMs,
    };
    for (const answers of this.#awaiting) this.#firstAfter.set(answers, at);
    this.#awaiting.clear();
    while (this.#firstAfter.size > MAX_REMEMBERED_FIRST_OFFSETS) {
      this.#firstAfter.delete(this.#firstAfter.keys().next().value!);
    }
    this.#answers++;
  }

  /**
   * Whether a measured offset is in force: an answer (or a saved estimate) and no drift against the
   * monotonic clock since. When not, a write dated now should keep unmeasuredReading().
   */
  get measured(): boolean {
    return Number.isFinite(this.#lo) && this.#driftMs() === 0;
  }

  /**
   * The device's reading now, for re-dating (redate()) a write dated now once an offset is measured;
   * undefined while a measured offset is in force (the write's date needs none).
   */
  unmeasuredReading(): UnmeasuredReading | undefined {
    if (this.measured) return undefined;
    this.#awaiting.add(this.#answers);
    const monotonicMs = this.monotonicNow();
    return {
      deviceMs: this.#deviceNow(),
      ...(monotonicMs !== undefined ? { monotonicMs } : {}),
      // A step back since that answer is added back (as offsetMs does): the offset at the reading is at
      // most this, unless the clock stepped forward, which cannot be placed (see redate()).
      ...(Number.isFinite(this.#lo)
        ? { measuredMs: this.measuredOffsetMs + Math.max(0, -this.#driftMs()) }
        : {}),
      clock: this.id,
      answers: this.#answers,
    };
  }

  /**
   * The server's time at `reading` (unmeasuredReading(), of this clock or of another visit's or tab's),
   * by the first offset this clock measured after it: undefined until an answer has (for another
   * clock's reading: while no offset this clock measured is in force), or for a reading that is not
   * one or can never be re-dated (redatable() false). Taken in this clock, a step back of the device
   * clock between the reading and that answer is taken off; never before what the offset measured
   * before the reading gives. The same reading gives the same time every time (a write sent again
   * keeps its key). `datedMs`: the date its write was given then, which the reading must agree with
   * (see the top).
   */
  redate(reading: UnmeasuredReading, datedMs?: number): number | undefined {
    if (!this.#possible(reading, datedMs)) return undefined;
    const own = reading.clock === this.id;
    let first = own ? this.#firstAfter.get(reading.answers) : undefined;
    if (!first && (!own || reading.answers < this.#answers) && this.#answers > 0 && this.measured) {
      // Another visit's reading (or one this clock no longer remembers): the offset in force now.
      first = { offsetMs: this.measuredOffsetMs, deviceMs: NaN, stepBackMs: 0 };
    }
    if (!first) return undefined;
    let offset = first.offsetMs;
    const bounded = reading.measuredMs !== undefined;
    const linked = own && reading.monotonicMs !== undefined && first.monotonicMs !== undefined;
    if (linked) {
      const drift = (first.deviceMs - reading.deviceMs) - (first.monotonicMs! - reading.monotonicMs!);
      // Stepped back after the reading: it ran that much further ahead. Without an offset measured
      // before the reading to bound it, a drift forward counts too: a step forward after the reading
      // (the clock set an hour ahead) looks like a pause of the monotonic clock (a sleep), and only
      // taken as a step is the re-date never early (late at worst: never later than dated).
      if (drift < -STEP_TOLERANCE_MS || (!bounded && drift > STEP_TOLERANCE_MS)) offset += drift;
    }
    if (bounded) offset = Math.max(offset, reading.measuredMs!);
    // Nothing measured before it and nothing linking it to the answer (another visit's or tab's, no
    // monotonic clock): a step between the two cannot be noticed; never before the device's own clock.
    else if (!linked) offset = Math.max(offset, 0);
    const redated = Math.round(reading.deviceMs + offset);
    if (datedMs !== undefined) {
      // Moved back by more than the lead the answers measured and a step back noticed can explain: the
      // reading is not what dated this write (edited, corrupted).
      const lead = Math.max(0, -first.offsetMs) + (own ? first.stepBackMs : 0);
      if (redated < datedMs - lead - REDATE_SLACK_MS) return undefined;
    }
    return redated;
  }

  /**
   * Whether redate() can ever re-date `reading` (now, or once an answer comes): false for something that
   * is not a reading, one this clock never gave (more answers than it has taken), one dated after its
   * write (`datedMs`, see redate()), and, once the answer after it came, one the re-date shows to be not
   * this write's. A write whose reading is not redatable goes as dated; nothing needs measuring for it.
   */
  redatable(reading: unknown, datedMs?: number): boolean {
    if (!isUnmeasuredReading(reading) || !this.#possible(reading, datedMs)) return false;
    const own = reading.clock === this.id;
    // As redate() finds what to re-date it by: the first offset after it, or the offset in force.
    const answered = (own && this.#firstAfter.has(reading.answers)) ||
      ((!own || reading.answers < this.#answers) && this.#answers > 0 && this.measured);
    return !answered || this.redate(reading, datedMs) !== undefined;
  }

  /** The checks of a reading that need no answer after it: its shape, its count, its write's date. */
  #possible(reading: UnmeasuredReading, datedMs: number | undefined): boolean {
    if (!isUnmeasuredReading(reading)) return false;
    if (reading.clock === this.id && reading.answers > this.#answers) return false;
    if (datedMs === undefined) return true;
    // The clock read at least this then (now(): the offset in force, never below 0 while unmeasured), and
    // a write is dated at least now(): a reading after its write's date is not what dated it.
    return Number.isFinite(datedMs) &&
      reading.deviceMs + Math.max(0, reading.measuredMs ?? 0) <= datedMs + STEP_TOLERANCE_MS;
  }

  /**
   * Server minus device, in ms: 0 unless the answers so far prove the device is off. When the device
   * clock and the monotonic clock have drifted apart since (see the top): that plus any step back
   * of the device clock, but never below 0.
   */
  get offsetMs(): number {
    const measured = this.measuredOffsetMs;
    const drift = this.#driftMs();
    if (drift === 0) return measured;
    return Math.max(measured + Math.max(0, -drift), 0);
  }

  /**
   * The offset the answers measured, without what the clock assumes after a drift since the newest
   * of them: what to save for the next visit (a sleep must not erase a known offset).
   */
  get measuredOffsetMs(): number {
    return this.#lo > 0 || this.#hi < 0 ? Math.round((this.#lo + this.#hi) / 2) : 0;
  }

  /**
   * How much further the device clock went than the monotonic clock since the anchor: negative for
   * a step back, positive for a step forward or a pause of the monotonic clock; 0 within the tolerance
   * or without a monotonic clock.
   */
  #driftMs(): number {
    if (!this.#anchor || !this.#monotonicNow) return 0;
    const drift = (this.#deviceNow() - this.#anchor.deviceMs) -
      (this.#monotonicNow() - this.#anchor.monotonicMs);
    return Math.abs(drift) > STEP_TOLERANCE_MS ? Math.round(drift) : 0;
  }

  /**
   * Tells the clock the server stored one of this device's writes at `updatedAtMs` (the answer's
   * progress.updated_at, when its device_id is this device's). The server re-keys a write dated more
   * than 5 s ahead to its own now(), which the device could not know; a next write dated by the
   * corrected clock can fall in that same millisecond, and under the same key as a write it does not
   * replace the server must guess. `now()` never returns that key or anything before it again.
   */
  storedOwnWrite(updatedAtMs: number): void {
    if (Number.isFinite(updatedAtMs)) {
      this.#ownStoredMs = Math.max(this.#ownStoredMs, Math.floor(updatedAtMs));
    }
  }

  /** The server's clock now, estimated on this device (epoch ms), after every key stored for it. */
  now(): number {
    return Math.max(this.#deviceNow() + this.offsetMs, this.#ownStoredMs + 1);
  }

  /**
   * now() for dating a write: also after every stamp this clock gave before. Two page turns in one
   * millisecond (or sent without waiting for each other's answer) would otherwise share a key, and
   * under one key the server cannot tell which position came later (arrival order decides).
   */
  stamp(): number {
    const now = this.now();
    const last = this.#lastStampMs;
    // At or after the last stamp by less than the server's tolerance for clocks ahead (5 s): the next
    // instant. Such a stamp (several in one millisecond, or one taken before an answer corrected the
    // estimate back by a few seconds) is stored under its own date, so the page turned after it must be
    // dated after it: dated before, the server refuses it as older than the device's own write
    // ('self') and the reader is left a page back. A last stamp further ahead (the first stamps of a
    // device an hour ahead, before its first answer) is stored at the server's now() when it arrives:
    // following it would date every write that far ahead.
    let stamp = last >= now && last - now < PROGRESS_LIMITS.futureToleranceMs ? last + 1 : now;
    while (this.#stamps.has(stamp)) stamp++; // a correction back: not an instant given before
    this.#stamps.add(stamp);
    if (this.#stamps.size > MAX_REMEMBERED_STAMPS) this.#stamps.delete(this.#stamps.values().next().value!);
    this.#lastStampMs = stamp;
    return stamp;
  }
}
