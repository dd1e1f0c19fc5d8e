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

export interface ClockSample {
  /** X-Server-Time of an answer, epoch ms. */
  serverMs: number;
  /** Device clock when the request was sent and when the answer arrived. */
  sentMs: number;
  receivedMs: number;
}

export class ServerClock {
  #lo = -Infinity;
  #hi = Infinity;
  /** The interval holds a saved estimate, not answers: the next answer replaces it. */
  #fromSaved = false;
  /** The latest key the server stored for a write of this device (epoch ms). */
  #ownStoredMs = -Infinity;
  readonly #deviceNow: () => number;

  /** `offsetMs`: a previous estimate (e.g. saved on the device), used until answers say otherwise. */
  constructor(options: { deviceNow?: () => number; offsetMs?: number } = {}) {
    this.#deviceNow = options.deviceNow ?? (() => Date.now());
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

  /** Server minus device, in ms: 0 unless the answers so far prove the device is off. */
  get offsetMs(): number {
    if (this.#lo > 0 || this.#hi < 0) return Math.round((this.#lo + this.#hi) / 2);
    return 0;
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
}
