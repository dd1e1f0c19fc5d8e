// The server's clock as seen from this device, for stamping writes.
//
// Last-write-wins compares the updated_at a device stamps. Device clocks drift, and a misconfigured
// one (a time zone applied twice) runs hours ahead; the server clamps a future updated_at to its
// now(), so a position read on such a device, sent later, would win at sync time over newer reading
// on other devices: the reader is dragged back. So clients stamp writes with their clock corrected
// by the server's. Every answer of the progress API carries X-Server-Time (the server's clock when
// it answered); the answer was produced somewhere between sending the request and receiving the
// answer, so each answer bounds the offset (server - device) to an interval one round trip wide.
// The intersection of those intervals is kept (a clock that jumps empties it: start again from the
// newest answer). The device is corrected only when the interval excludes zero, i.e. when it is
// certainly off; a device within a round trip of the server keeps its own clock.
//
// A device clock set right while the app runs (NTP, the reader fixing the time zone) would keep the
// old correction until the next answer: a clock an hour ahead, corrected by -1 h, set back by the
// hour, stamps the next page turn an hour early, and it loses to older reading on other devices.
// So the clock also notes, with every answer, the device clock against a monotonic one (which never
// steps): when the device clock has since gone back more than STEP_TOLERANCE_MS against it, that
// step is added back. A device clock gone forward against it is left alone, because a monotonic
// clock may also just have paused (most stop while the device sleeps) and the two cannot be told
// apart; the stamp is then too late, never too early, and a stamp more than 5 s ahead of the server
// is stored at the server's now(). The next answer measures afresh either way.

export interface ClockSample {
  /** X-Server-Time of an answer, epoch ms. */
  serverMs: number;
  /** Device clock when the request was sent and when the answer arrived. */
  sentMs: number;
  receivedMs: number;
}

/** How far the device clock may drift back against the monotonic clock before it counts as a step. */
export const STEP_TOLERANCE_MS = 1_000;

export class ServerClock {
  #lo = -Infinity;
  #hi = Infinity;
  /** The interval holds a saved estimate, not answers: the next answer replaces it. */
  #fromSaved = false;
  /** The latest key the server stored for a write of this device (epoch ms). */
  #ownStoredMs = -Infinity;
  /** The latest stamp() given out (epoch ms). */
  #lastStampMs = -Infinity;
  readonly #deviceNow: () => number;
  readonly #monotonicNow: (() => number) | null;
  /** The device clock and the monotonic clock when the newest answer was taken in. */
  #anchor: { deviceMs: number; monotonicMs: number } | null = null;

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
    }
  }

  /** The device clock, in epoch ms (what `sentMs` / `receivedMs` are measured with). */
  deviceNow(): number {
    return this.#deviceNow();
  }

  /** Narrows the offset with one answer; ignored when the sample is malformed. */
  observe(sample: ClockSample): void {
    const { serverMs, sentMs, receivedMs } = sample;
    if (![serverMs, sentMs, receivedMs].every(Number.isFinite) || receivedMs < sentMs) return;
    const lo = serverMs - receivedMs;
    const hi = serverMs - sentMs;
    this.#anchor = this.#monotonicNow
      ? { deviceMs: this.#deviceNow(), monotonicMs: this.#monotonicNow() }
      : null;
    if (this.#fromSaved || lo > this.#hi || hi < this.#lo) {
      // First answer after a saved estimate, or a clock that jumped: this answer alone decides.
      this.#fromSaved = false;
      this.#lo = lo;
      this.#hi = hi;
      return;
    }
    this.#lo = Math.max(this.#lo, lo);
    this.#hi = Math.min(this.#hi, hi);
  }

  /**
   * Server minus device, in ms: 0 unless the answers so far prove the device is off, or its clock
   * has been set back since the newest answer (that step is added back; see the top).
   */
  get offsetMs(): number {
    const measured = this.#lo > 0 || this.#hi < 0 ? Math.round((this.#lo + this.#hi) / 2) : 0;
    return measured + this.#stepBackMs();
  }

  /** How far the device clock went back against the monotonic clock since the newest answer. */
  #stepBackMs(): number {
    if (!this.#anchor || !this.#monotonicNow) return 0;
    const back = (this.#monotonicNow() - this.#anchor.monotonicMs) -
      (this.#deviceNow() - this.#anchor.deviceMs);
    return back > STEP_TOLERANCE_MS ? Math.round(back) : 0;
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
    this.#lastStampMs = Math.max(this.now(), this.#lastStampMs + 1);
    return this.#lastStampMs;
  }
}
