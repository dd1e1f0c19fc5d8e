import assert from "node:assert/strict";
import fc from "fast-check";
import { ServerClock, STEP_TOLERANCE_MS } from "../../../shared/progress/serverClock.ts";

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

Deno.test("server clock: stamp() never gives the same instant twice; now() is left as it is", () => {
  let device = 1_800_000_000_000;
  const clock = new ServerClock({ deviceNow: () => device });
  const stamps = [clock.stamp(), clock.stamp(), clock.stamp()]; // three page turns in one millisecond
  assert.deepEqual(stamps, [device, device + 1, device + 2]);
  assert.equal(clock.now(), device);
  device += 50;
  assert.equal(clock.stamp(), device, "the clock itself once it has passed the last stamp");
  clock.storedOwnWrite(device + 10);
  assert.equal(clock.stamp(), device + 11, "and after a key stored for this device");
});

/** A device clock and a monotonic clock that advance together, and a server `skewMs` behind the device. */
function deviceWithMonotonic(skewMs: number) {
  const t = { device: 1_800_000_000_000, monotonic: 5_000 };
  const clock = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const pass = (ms: number) => {
    t.device += ms;
    t.monotonic += ms;
  };
  /** One answer taken 20 ms after sending, produced half-way; the server's true time meanwhile. */
  const answer = (serverBehindMs: number) => {
    const sent = t.device;
    const serverMs = sent - serverBehindMs + 10;
    pass(20);
    clock.observe({ serverMs, sentMs: sent, receivedMs: t.device });
  };
  answer(skewMs);
  return { t, clock, pass, answer };
}

Deno.test("server clock: a device clock set back while the app runs does not date the next write that much early", () => {
  // An hour ahead, learnt from an answer; then NTP sets the device clock right (back by the hour).
  const { t, clock, pass } = deviceWithMonotonic(HOUR);
  const server = () => t.device - HOUR; // the server's true time while the device is still ahead
  assert.ok(Math.abs(clock.now() - server()) <= 10);
  pass(30_000);
  const trueServerNow = server();
  t.device -= HOUR; // the step: device == server from now on
  assert.ok(
    Math.abs(clock.now() - trueServerNow) <= 10,
    `now() ${clock.now() - trueServerNow} ms from the server's time (was an hour early before)`,
  );
  assert.ok(Math.abs(clock.offsetMs) <= 10, "the offset kept for the next visit is right too");
  pass(5_000);
  assert.ok(Math.abs(clock.now() - t.device) <= 10, "and it keeps counting from there");
});

Deno.test("server clock: a device that slept (monotonic clock paused) or was set forward is never dated early", () => {
  // A device an hour ahead sleeps eight hours (its monotonic clock does not move). Whether its clock
  // was also set right meanwhile cannot be told, so the -1 h correction is not trusted until the next
  // answer: its stamps are an hour late then, not early.
  const asleep = deviceWithMonotonic(HOUR);
  asleep.t.device += 8 * HOUR;
  assert.equal(asleep.clock.now(), asleep.t.device, "the device clock: late by the hour it runs ahead");
  asleep.answer(HOUR);
  assert.ok(
    Math.abs(asleep.clock.now() - (asleep.t.device - HOUR)) <= 10,
    "corrected again by the next answer",
  );

  // The same device's clock set right on waking (a phone's usual order): sleep, then a step back.
  const woke = deviceWithMonotonic(HOUR);
  woke.t.device += 2 * HOUR; // two hours asleep
  woke.t.device -= HOUR; // NTP on waking: now right
  assert.equal(woke.clock.now(), woke.t.device, "not dated an hour early");

  // A device an hour behind, set right while running: the clock jumps forward by the hour. The
  // estimate is then an hour late (not early) until the next answer; the server stores a stamp that
  // far ahead at its own now().
  const behind = deviceWithMonotonic(-HOUR);
  const trueServerNow = behind.t.device + HOUR;
  behind.t.device += HOUR;
  assert.ok(behind.clock.now() >= trueServerNow);
  behind.answer(0);
  assert.ok(Math.abs(behind.clock.now() - behind.t.device) <= 10, "the next answer measures afresh");
});

Deno.test("server clock: a saved offset is dropped when the device clock is set back before the first answer", () => {
  // The web app starts with the offset saved on the last visit (-1 h); offline, NTP sets the clock right.
  const t = { device: 1_800_000_000_000 + HOUR, monotonic: 0 };
  const clock = new ServerClock({
    deviceNow: () => t.device,
    monotonicNow: () => t.monotonic,
    offsetMs: -HOUR,
  });
  assert.equal(clock.now(), t.device - HOUR);
  t.device -= HOUR;
  t.monotonic += 10;
  assert.ok(Math.abs(clock.now() - t.device) <= 10, "the step back is noticed without an answer");
});

Deno.test("server clock: stamps taken before a correction do not hold later stamps ahead", () => {
  // A device an hour ahead stamps a page turn before its first answer (its own clock), then learns.
  let device = 1_800_000_000_000 + HOUR;
  const clock = new ServerClock({ deviceNow: () => device });
  const early = clock.stamp();
  assert.equal(early, device);
  clock.observe({ serverMs: device - HOUR + 10, sentMs: device, receivedMs: device + 20 });
  device += 60_000;
  const next = clock.stamp();
  assert.ok(
    Math.abs(next - (device - HOUR)) <= 20,
    `the corrected clock, not after the stamp an hour ahead (${next - early})`,
  );
  assert.equal(clock.stamp(), next + 1, "and still never one instant twice");
});

Deno.test("server clock: small drift against the monotonic clock and answers after a step are not counted twice", () => {
  const { t, clock, pass, answer } = deviceWithMonotonic(0);
  pass(60_000);
  t.device -= STEP_TOLERANCE_MS - 1; // NTP slewing over a long while, not a step
  assert.equal(clock.offsetMs, 0);
  t.device -= 10 * 60_000; // a step back by ten minutes
  assert.ok(Math.abs(clock.offsetMs - 10 * 60_000 - STEP_TOLERANCE_MS) <= 10);
  answer(-(10 * 60_000 + STEP_TOLERANCE_MS - 1)); // the server says the same, and is the anchor now
  assert.ok(Math.abs(clock.offsetMs - 10 * 60_000 - STEP_TOLERANCE_MS) <= 20, `offset ${clock.offsetMs}`);
  // A clock given its own device time but no monotonic clock: no step detection (it cannot know).
  let device = 1_800_000_000_000;
  const plain = new ServerClock({ deviceNow: () => device });
  plain.observe({ serverMs: device - HOUR + 10, sentMs: device, receivedMs: device + 20 });
  device -= HOUR;
  assert.ok(Math.abs(plain.offsetMs + HOUR) <= 10);
});

Deno.test("server clock: an answer during which the device clock stepped is not taken; the step still shows", () => {
  // 4 s ahead, learnt from a quick answer; then NTP steps the clock back 4 s while a slow read is out.
  const t = { device: 1_800_000_000_000, monotonic: 0 };
  const clock = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const sample = (serverMs: number, sent: { device: number; monotonic: number }) =>
    clock.observe({
      serverMs,
      sentMs: sent.device,
      receivedMs: t.device,
      sentMonotonicMs: sent.monotonic,
      receivedMonotonicMs: t.monotonic,
    });
  let sent = { ...t };
  t.device += 20;
  t.monotonic += 20;
  sample(sent.device - 4_000 + 10, sent);
  assert.ok(Math.abs(clock.offsetMs + 4_000) <= 10, "-4 s");
  sent = { ...t };
  t.device += 1_000; // a second out, the step: from now on the device is right
  t.monotonic += 1_000;
  t.device -= 4_000;
  const answeredAt = t.device + 3_000; // the server answers 3 s later (its clock: right)
  t.device += 7_000;
  t.monotonic += 7_000;
  // Taken, this sample ([-4000, 0] ms) would narrow the old interval to about -4 s and wipe out the
  // step; the page turns after it would be dated 4 s early.
  sample(answeredAt, sent);
  assert.ok(clock.now() >= t.device - 10, `not dated early (${clock.now() - t.device} ms)`);
});

Deno.test("server clock: stamps stay unique across a correction back; measuredOffsetMs keeps what answers measured", () => {
  const t = { device: 1_800_000_000_000, monotonic: 0 };
  const clock = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const first = clock.stamp(); // 3 s ahead, before the first answer
  clock.observe({ serverMs: t.device - 3_000 + 10, sentMs: t.device, receivedMs: t.device + 20 });
  clock.stamp(); // the next page: after `first` (stored under its own date), not 3 s before it
  t.device += 3_000;
  t.monotonic += 3_000; // the corrected clock reads `first` again now
  const again = clock.stamp();
  assert.ok(Math.abs(again - first) <= 30, "the corrected clock");
  assert.notEqual(again, first, "but not an instant given before");
  t.device += 8 * HOUR; // asleep: offsetMs no longer trusts the -3 s, the measured offset is kept
  assert.equal(clock.offsetMs, 0);
  assert.ok(Math.abs(clock.measuredOffsetMs + 3_000) <= 20, `${clock.measuredOffsetMs}`);
});

Deno.test("server clock: a reading taken while the correction is dropped (a sleep) is re-dated by the first offset measured after it", () => {
  // An hour ahead, learnt from an answer; asleep eight hours, offline: the -1 h is dropped.
  const { t, clock, pass, answer } = deviceWithMonotonic(HOUR);
  assert.equal(clock.measured, true);
  assert.equal(clock.unmeasuredReading(), undefined, "a measured offset in force: nothing to re-date");
  t.device += 8 * HOUR;
  assert.equal(clock.measured, false);
  const reading = clock.unmeasuredReading()!;
  assert.equal(clock.now(), reading.deviceMs, "stamped an hour late meanwhile");
  assert.equal(clock.redate(reading), undefined, "no answer since: nothing to re-date it by yet");
  pass(30_000);
  answer(HOUR); // the first answer after: still an hour ahead
  const redated = clock.redate(reading)!;
  assert.ok(
    Math.abs(redated - (reading.deviceMs - HOUR)) <= 20,
    `an hour back (${redated - reading.deviceMs} ms)`,
  );
  t.device -= HOUR; // set right later: the next answer measures 0
  answer(0);
  assert.equal(clock.redate(reading), redated, "by the first answer after it, every time");
});

Deno.test("server clock: a re-date moves nothing after a real step, takes off a step back after the reading, never goes before the offset measured before", () => {
  // NTP set the clock right on waking, before the page turn: the stamp was right, the re-date keeps it.
  const woke = deviceWithMonotonic(HOUR);
  woke.t.device += 2 * HOUR;
  woke.t.device -= HOUR;
  const right = woke.clock.unmeasuredReading()!;
  woke.answer(0);
  assert.ok(Math.abs(woke.clock.redate(right)! - right.deviceMs) <= 20, "nothing moves");

  // Asleep, page turned an hour late, then NTP sets the clock right when the network comes back,
  // just before the first answer: that answer says 0, but the step back after the reading is known.
  const late = deviceWithMonotonic(HOUR);
  late.t.device += 8 * HOUR;
  const reading = late.clock.unmeasuredReading()!;
  late.pass(10_000);
  late.t.device -= HOUR;
  late.answer(0);
  const redated = late.clock.redate(reading)!;
  assert.ok(Math.abs(redated - (reading.deviceMs - HOUR)) <= 30, `${redated - reading.deviceMs} ms`);

  // A device an hour behind (+1 h, a correction that is kept across a drift) set right (forward) after
  // the page turn: the first answer says 0, which would date it an hour early; the +1 h stands.
  const behind = deviceWithMonotonic(-HOUR);
  behind.t.device += 8 * HOUR;
  const stamp = behind.clock.now();
  const turned = behind.clock.unmeasuredReading()!;
  behind.t.device += HOUR;
  behind.answer(0);
  assert.ok(behind.clock.redate(turned)! >= stamp - 20, "never before what the offset measured before gives");
});

Deno.test("server clock: readings before the first answer are re-dated by it; a saved offset is in force; another clock's readings by its measured offset", () => {
  const t = { device: 1_800_000_000_000 + HOUR, monotonic: 0 };
  const clock = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const first = clock.unmeasuredReading()!; // a fresh visit without a saved offset, offline
  assert.ok(first, "no answer yet: no measured offset");
  t.device += 1_000;
  t.monotonic += 1_000;
  const other = new ServerClock({
    deviceNow: () => t.device,
    monotonicNow: () => t.monotonic,
    offsetMs: -HOUR,
  });
  assert.equal(other.unmeasuredReading(), undefined, "a saved offset is in force until a drift");
  assert.equal(other.redate(first), undefined, "another clock's reading: not by a saved offset");
  clock.observe({ serverMs: t.device - HOUR + 10, sentMs: t.device, receivedMs: t.device + 20 });
  assert.ok(Math.abs(clock.redate(first)! - (first.deviceMs - HOUR)) <= 10);
  other.observe({ serverMs: t.device - HOUR + 10, sentMs: t.device, receivedMs: t.device + 20 });
  // Another visit's reading with nothing measured before it: a step between the visits cannot be
  // noticed, so it goes no earlier than the device's clock dated it; one with an offset measured
  // before it (dropped by a sleep) is re-dated by this clock's.
  assert.equal(other.redate(first), first.deviceMs, "another visit's reading, nothing measured before it");
  assert.ok(
    Math.abs(other.redate({ ...first, measuredMs: -HOUR })! - (first.deviceMs - HOUR)) <= 10,
    "another visit's reading",
  );
  assert.equal(clock.redate({ ...first, deviceMs: Number.NaN }), undefined, "not a reading");
});

Deno.test("server clock: a re-date never dates a reading early by a step it cannot place: none measured before, or a step back before the reading", () => {
  // A fresh visit (no saved offset: a device that is right saves none), offline: the page turn is read
  // right. Then the clock is set an hour ahead (a time zone applied twice) before the first answer,
  // which says -1 h. A pause of the monotonic clock looks the same; the page turn must not go an hour early.
  const t = { device: 1_800_000_000_000, monotonic: 5_000 };
  const fresh = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const right = fresh.unmeasuredReading()!;
  const trueTime = right.deviceMs;
  t.device += HOUR; // the step forward
  t.device += 60_000;
  t.monotonic += 60_000;
  fresh.observe({ serverMs: t.device - HOUR + 10, sentMs: t.device, receivedMs: t.device + 20 });
  assert.ok(fresh.redate(right)! >= trueTime - 20, `${fresh.redate(right)! - trueTime} ms`);
  // Without such a drift the first answer still re-dates it (an hour ahead from the start).
  const ahead = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const turned = ahead.unmeasuredReading()!;
  t.device += 60_000;
  t.monotonic += 60_000;
  ahead.observe({ serverMs: t.device - HOUR + 10, sentMs: t.device, receivedMs: t.device + 20 });
  assert.ok(Math.abs(ahead.redate(turned)! - (turned.deviceMs - HOUR)) <= 30);
  // Another visit's reading with nothing measured before it: the step may have come between the
  // visits (which nothing notices), so it is not dated before the device's own clock said.
  const later = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  later.observe({ serverMs: t.device - HOUR + 10, sentMs: t.device, receivedMs: t.device + 20 });
  assert.ok(later.redate(right)! >= trueTime - 20, `another visit: ${later.redate(right)! - trueTime} ms`);

  // An hour ahead, measured; NTP sets it right (a step back: the -1 h is dropped), the page turn is read
  // right; then the clock goes an hour ahead again before the next answer. The -1 h measured before
  // the step back is no bound: the re-date must not go an hour early.
  const twice = deviceWithMonotonic(HOUR);
  twice.pass(60_000);
  twice.t.device -= HOUR;
  const setRight = twice.clock.unmeasuredReading()!;
  twice.pass(60_000);
  twice.t.device += HOUR;
  twice.answer(HOUR);
  assert.ok(
    twice.clock.redate(setRight)! >= setRight.deviceMs - 30,
    `${twice.clock.redate(setRight)! - setRight.deviceMs} ms`,
  );
});

Deno.test("server clock: a reading checked against its write's date is re-dated only as far as it can justify; one that does not agree with it is never re-dated", () => {
  // An hour ahead, measured; asleep offline: a page turn dated (now()) an hour late keeps its reading.
  const { t, clock, pass, answer } = deviceWithMonotonic(HOUR);
  t.device += 8 * HOUR;
  const dated = clock.now();
  const reading = clock.unmeasuredReading()!;
  // Before the answer after it: the reading agrees with its date (it may be re-dated: worth a read),
  // a reading after its date, of more answers than this clock took, or not a reading does not.
  assert.equal(clock.redatable(reading, dated), true);
  // One of this clock's it no longer remembers (an earlier count): re-dated by the offset in force once
  // one is, so it waits for an answer too.
  const forgotten = { ...reading, answers: 0 };
  assert.equal(clock.redatable(forgotten, dated), true);
  assert.equal(
    clock.redatable({ ...reading, deviceMs: dated + HOUR }, dated),
    false,
    "read after its write's date",
  );
  assert.equal(
    clock.redatable({ ...reading, answers: reading.answers + 5 }, dated),
    false,
    "answers this clock never took",
  );
  for (
    const bad of [null, "reading", { ...reading, deviceMs: "1" }, { ...reading, answers: -1 }, {
      ...reading,
      clock: 7,
    }]
  ) {
    assert.equal(clock.redatable(bad, dated), false, JSON.stringify(bad));
    assert.equal(clock.redate(bad as never, dated), undefined);
  }
  pass(60_000);
  answer(HOUR); // still an hour ahead: the write goes back by the hour
  const redated = clock.redate(reading, dated)!;
  assert.ok(Math.abs(redated - (dated - HOUR)) <= 30, `${redated - dated} ms`);
  assert.equal(clock.redatable(reading, dated), true);
  assert.ok(Math.abs(clock.redate(forgotten, dated)! - (dated - HOUR)) <= 30);
  // Edited (or corrupted) storage: a device reading a day early would send the write a day early. The
  // answers measured a lead of an hour: no reading of this write can take it back further.
  const edited = { ...reading, deviceMs: reading.deviceMs - 24 * HOUR };
  assert.equal(clock.redate(edited, dated), undefined, "a day early: not this write's reading");
  assert.equal(clock.redatable(edited, dated), false);
  // A monotonic reading moved back a day, on a fresh visit's reading (no offset measured before it to
  // bound it), would count a step back a day long: not this write's either.
  const fresh = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const freshDated = fresh.now();
  const turned = fresh.unmeasuredReading()!;
  pass(60_000);
  fresh.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  assert.equal(fresh.redate(turned, freshDated), freshDated - HOUR);
  assert.equal(
    fresh.redate({ ...turned, monotonicMs: turned.monotonicMs! - 24 * HOUR }, freshDated),
    undefined,
  );
  // A step back noticed before the answer is part of what a re-date may take off: set right (back by
  // the hour) after the page turn, the first answer says 0, and the write still goes back by the hour.
  const stepped = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const steppedDated = stepped.now();
  const read = stepped.unmeasuredReading()!;
  pass(60_000);
  t.device -= HOUR;
  stepped.observe({ serverMs: t.device, sentMs: t.device, receivedMs: t.device });
  assert.equal(stepped.redate(read, steppedDated), steppedDated - HOUR);
  // Another clock's (another tab's or visit's) edited reading alike, by the offset in force there.
  const other = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  other.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  assert.ok(Math.abs(other.redate(reading, dated)! - (dated - HOUR)) <= 30);
  assert.equal(other.redate(edited, dated), undefined);
  // Without the write's date nothing is checked (the method as it was).
  assert.equal(clock.redate(edited), redated - 24 * HOUR);
});

Deno.test("server clock: leadMs is the most the device was known ahead (saved, measured, or stepped back before an answer), kept once the clock is set right", () => {
  const t = { device: 1_800_000_000_000 + HOUR, monotonic: 0 };
  const clocks = { deviceNow: () => t.device, monotonicNow: () => t.monotonic };
  assert.equal(new ServerClock({ ...clocks, offsetMs: -HOUR }).leadMs, HOUR, "a saved estimate");
  assert.equal(new ServerClock({ ...clocks, offsetMs: HOUR }).leadMs, 0, "behind is no lead");
  // Measured an hour ahead, then set right: the page turn dated before can still be sent an hour back.
  const measured = new ServerClock(clocks);
  assert.equal(measured.leadMs, 0, "nothing known");
  measured.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  assert.equal(measured.leadMs, HOUR);
  t.device -= HOUR;
  measured.observe({ serverMs: t.device, sentMs: t.device, receivedMs: t.device });
  assert.equal(measured.offsetMs, 0);
  assert.equal(measured.leadMs, HOUR, "kept once set right");
  // Never measured ahead, set back an hour before its first answer (which finds it right): it was ahead.
  t.device += HOUR;
  const stepped = new ServerClock(clocks);
  t.device -= HOUR;
  stepped.observe({ serverMs: t.device, sentMs: t.device, receivedMs: t.device });
  assert.equal(stepped.leadMs, HOUR, "the step back noticed before the answer");
});
