import assert from "node:assert/strict";
import fc from "fast-check";
import { ServerClock } from "../../../shared/progress/serverClock.ts";

const HOUR = 3_600_000;

Deno.test("server clock: a device 3 hours ahead is corrected to within half a round trip", () => {
  let device = 1_800_000_000_000 + 3 * HOUR; // the device's clock; the server is 3 h behind it
  const clock = new ServerClock({ deviceNow: () => device });
  assert.equal(clock.offsetMs, 0, "nothing known yet: the device's own clock");
  for (const rtt of [80, 40, 120]) {
    const sent = device;
    const serverMs = sent - 3 * HOUR + rtt / 2; // answered half-way
    device += rtt;
    clock.observe({ serverMs, sentMs: sent, receivedMs: device });
  }
  assert.ok(Math.abs(clock.offsetMs + 3 * HOUR) <= 20, `offset ${clock.offsetMs}`);
  assert.ok(Math.abs(clock.now() - (device - 3 * HOUR)) <= 20);
});

Deno.test("server clock: a device within a round trip of the server keeps its own clock", () => {
  let device = 1_800_000_000_000;
  const clock = new ServerClock({ deviceNow: () => device });
  for (const skew of [5, -5, 10]) {
    const sent = device;
    device += 60;
    clock.observe({ serverMs: sent + 30 + skew, sentMs: sent, receivedMs: device });
  }
  assert.equal(clock.offsetMs, 0);
});

Deno.test("server clock: a device clock that is set right starts the estimate again; bad samples are ignored", () => {
  let device = 1_800_000_000_000;
  const clock = new ServerClock({ deviceNow: () => device });
  clock.observe({ serverMs: device - HOUR + 10, sentMs: device, receivedMs: device + 20 });
  assert.ok(Math.abs(clock.offsetMs + HOUR) <= 10, "an hour ahead");
  device -= HOUR; // the reader fixes the device's clock: it jumps back by the hour
  clock.observe({ serverMs: device + 10, sentMs: device, receivedMs: device + 20 });
  assert.equal(
    clock.offsetMs,
    0,
    "the answers no longer agree with the old interval: start again, now right",
  );
  clock.observe({ serverMs: Number.NaN, sentMs: device, receivedMs: device + 1 });
  clock.observe({ serverMs: device - HOUR, sentMs: device + 5, receivedMs: device }); // received before sent
  assert.equal(clock.offsetMs, 0);
});

Deno.test("server clock: a saved offset is used until the first answer replaces it", () => {
  const device = 1_800_000_000_000;
  const clock = new ServerClock({ deviceNow: () => device, offsetMs: -2 * HOUR });
  assert.equal(clock.now(), device - 2 * HOUR);
  clock.observe({ serverMs: device - 3 * HOUR + 10, sentMs: device, receivedMs: device + 20 });
  assert.ok(Math.abs(clock.offsetMs + 3 * HOUR) <= 10);
});

Deno.test("server clock: the estimate is always within the tightest round trip of the true offset", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: -24 * HOUR, max: 24 * HOUR }),
      fc.array(
        fc.record({
          rtt: fc.integer({ min: 0, max: 2_000 }),
          at: fc.double({ min: 0, max: 1, noNaN: true }),
        }),
        {
          minLength: 1,
          maxLength: 20,
        },
      ),
      (trueOffset, answers) => {
        let device = 1_800_000_000_000;
        const clock = new ServerClock({ deviceNow: () => device });
        let tightest = Infinity;
        for (const { rtt, at } of answers) {
          const sent = device;
          const serverMs = sent + trueOffset + Math.floor(rtt * at); // answered somewhere in the trip
          device += rtt;
          clock.observe({ serverMs, sentMs: sent, receivedMs: device });
          tightest = Math.min(tightest, rtt);
          device += 1_000;
        }
        const error = Math.abs(clock.offsetMs - trueOffset);
        // Corrected: off by at most the tightest trip; not corrected: the device is within one trip.
        return clock.offsetMs !== 0 ? error <= tightest : Math.abs(trueOffset) <= 2_000;
      },
    ),
  );
});

Deno.test("server clock: never dates a write at or before a key the server stored for this device", () => {
  let device = 1_800_000_000_000;
  const clock = new ServerClock({ deviceNow: () => device });
  assert.equal(clock.now(), device);
  // A write dated ahead was stored at the server's now, 3 ms ahead of this (corrected) clock.
  clock.storedOwnWrite(device + 3);
  assert.equal(clock.now(), device + 4, "after the stored key");
  clock.storedOwnWrite(device - 1_000); // an older key changes nothing
  assert.equal(clock.now(), device + 4);
  clock.storedOwnWrite(Number.NaN);
  assert.equal(clock.now(), device + 4);
  device += 10;
  assert.equal(clock.now(), device, "the clock itself again once it has passed the key");
});
