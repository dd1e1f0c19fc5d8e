// RealtimeService's millisecond options are checked at construction: a value a timer cannot hold (0
// where it means a tight loop, a negative one, NaN, Infinity where "never" is not handled, more than
// setTimeout's 2^31-1 ms) is refused with a RangeError naming the option (one that is not a number,
// with a TypeError), directly and through api.ts's subscribeToProgress; each range's ends are taken.
// A wait the service computes past 2^31-1 from valid options (a failed poll's backoff from
// pollIntervalMs at its end) is held at 2^31-1 ms, not fired at once.
// The random option must be a function (TypeError); its draws outside [0, 1) are taken into it, none NaN.

import assert from "node:assert/strict";
import { subscribeToProgress } from "../../../shared/progress/api.ts";
import {
  MAX_TIMER_MS,
  type ReadOutcome,
  RealtimeService,
  type RealtimeServiceOptions,
} from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { handAnsweredService } from "./handAnsweredService.ts";
import { watchTimers } from "./watchTimers.ts";

const USER = "00000000-0000-4000-8000-0000000000e1";
const changesSince = () => Promise.resolve({ changes: [], next_cursor: "1", has_more: false });

type MsOption =
  | "pollIntervalMs"
  | "livePollIntervalMs"
  | "heartbeatReplyTimeoutMs"
  | "joinTimeoutMs"
  | "joinGraceMs"
  | "requestTimeoutMs"
  | "backoff.initialMs"
  | "backoff.maxMs";

function withOption(name: MsOption, value: unknown): Partial<RealtimeServiceOptions> {
  if (name === "backoff.initialMs") return { backoff: { initialMs: value as number } };
  if (name === "backoff.maxMs") return { backoff: { maxMs: value as number } };
  return { [name]: value };
}

// What each option refuses and takes: 0 only where it turns the thing off (or means "at once"),
// Infinity only where it means "never" and the service treats it so.
const RANGES: { name: MsOption; refused: unknown[]; accepted: unknown[] }[] = [
  {
    name: "pollIntervalMs",
    refused: [0, -1, NaN, Infinity, MAX_TIMER_MS + 1, "1000"],
    accepted: [1, MAX_TIMER_MS],
  },
  {
    name: "livePollIntervalMs",
    refused: [-1, NaN, MAX_TIMER_MS + 1, 0.5],
    accepted: [0, 1, MAX_TIMER_MS, Infinity],
  },
  {
    name: "heartbeatReplyTimeoutMs",
    refused: [-1, NaN, Infinity, MAX_TIMER_MS + 1],
    accepted: [0, 1, MAX_TIMER_MS],
  },
  { name: "joinTimeoutMs", refused: [0, -1, NaN, Infinity, MAX_TIMER_MS + 1], accepted: [1, MAX_TIMER_MS] },
  {
    name: "joinGraceMs",
    refused: [-1, NaN, -Infinity, MAX_TIMER_MS + 1],
    accepted: [0, 1, MAX_TIMER_MS, Infinity],
  },
  {
    name: "requestTimeoutMs",
    refused: [0, -1, NaN, Infinity, MAX_TIMER_MS + 1],
    accepted: [1, MAX_TIMER_MS],
  },
  {
    name: "backoff.initialMs",
    refused: [0, -1, NaN, Infinity, MAX_TIMER_MS + 1],
    accepted: [1, MAX_TIMER_MS],
  },
  { name: "backoff.maxMs", refused: [0, -1, NaN, Infinity, MAX_TIMER_MS + 1], accepted: [1, MAX_TIMER_MS] },
];

for (const { name, refused, accepted } of RANGES) {
  Deno.test(`options: ${name} outside its range is refused at construction, its ends are taken`, async () => {
    for (const value of refused) {
      const { client } = fakeClient();
      const ErrorClass = typeof value === "number" ? RangeError : TypeError;
      assert.throws(
        () => new RealtimeService(client, { changesSince, log: () => {}, ...withOption(name, value) }),
        (error: unknown) =>
          error instanceof ErrorClass && error.message.includes(name) &&
          error.message.includes(String(value)),
        `${name}: ${String(value)} refused`,
      );
      // Through api.ts (which passes them on to the service it makes for the client).
      assert.throws(
        () => subscribeToProgress(client, USER, () => {}, { log: () => {}, ...withOption(name, value) }),
        ErrorClass,
        `${name}: ${String(value)} refused by subscribeToProgress`,
      );
    }
    for (const value of accepted) {
      const { client } = fakeClient();
      const service = new RealtimeService(client, {
        changesSince,
        log: () => {},
        ...withOption(name, value),
      });
      await service.close();
    }
  });
}

Deno.test("options: a poll backoff past 2^31-1 ms (pollIntervalMs at its end) is held there, not fired at once", async () => {
  const timers = watchTimers();
  const link = handAnsweredService({
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    pollIntervalMs: MAX_TIMER_MS,
    random: () => 0.999,
  });
  try {
    const reads: ReadOutcome[] = [];
    link.subscription.onRead((outcome) => reads.push(outcome));
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down")); // polls at once
    await waitFor("the poll", () => link.calls.length === 1);
    link.calls[0].reject(new Error("503"));
    await waitFor("the poll failed", () => reads.length === 1);
    // The failed poll's backoff draws from a ceiling of twice pollIntervalMs: held at the longest
    // delay a timer keeps. Past it, setTimeout fires after 1 ms and the link would poll again at once.
    await waitFor("the next poll scheduled", () => timers.pending().some((ms) => ms > 60_000));
    assert.deepEqual(timers.pending().filter((ms) => ms > 60_000), [MAX_TIMER_MS]);
    assert.equal(link.calls.length, 1, "no call made meanwhile");
  } finally {
    timers.restore();
    await link.end();
  }
});

Deno.test("options: a backoff field given as undefined takes its default, as an unset one does (no NaN wait)", async () => {
  // `backoff: { initialMs: config.initialMs }` with the config value unset: the check lets undefined
  // through as "not given", so the service must default it too, not spread undefined over the default.
  const timers = watchTimers();
  const link = handAnsweredService({
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    pollIntervalMs: 600_000,
    backoff: { initialMs: undefined, maxMs: 60_000 },
    random: () => 0.5,
  });
  try {
    assert.deepEqual(link.service.backoffOptions, { initialMs: 1_000, maxMs: 60_000 });
    // A join that fails (never joined) is retried after full jitter at step 1: half of 1 s, not NaN
    // (which setTimeout fires at once: a join and a failure in a tight loop).
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down"));
    await waitFor("the rejoin scheduled", () => timers.pending().includes(500));
    assert.ok(timers.pending().every((ms) => Number.isFinite(ms)), `waits ${timers.pending()}`);
  } finally {
    timers.restore();
    await link.end();
  }
  const { client } = fakeClient();
  const service = new RealtimeService(client, { changesSince, log: () => {}, backoff: { maxMs: undefined } });
  try {
    assert.deepEqual(service.backoffOptions, { initialMs: 1_000, maxMs: 30_000 });
  } finally {
    await service.close();
  }
});

Deno.test("options: random that is not a function is refused at construction (TypeError)", () => {
  const { client } = fakeClient();
  for (const random of [0.5, "0.5", null]) {
    assert.throws(
      () =>
        new RealtimeService(client, {
          changesSince,
          log: () => {},
          random: random as unknown as () => number,
        }),
      (error: unknown) =>
        error instanceof TypeError && /option random must be a function/.test(error.message),
      `random: ${String(random)}`,
    );
  }
});

Deno.test("options: a random draw that is NaN or outside [0, 1) is taken into it (NaN as 0.5, below 0 as 0, 1 or more as just below 1): no NaN wait, none outside its range; logged once", async () => {
  // A join that fails (never joined) is retried after full jitter at step 1 (a 1 s ceiling): draw x 1 s.
  for (const [draw, expected] of [[NaN, 500], [-1, 0], [1, 999], [7, 999]] as const) {
    const timers = watchTimers();
    const lines: Record<string, unknown>[] = [];
    const link = handAnsweredService({
      livePollIntervalMs: 0,
      heartbeatReplyTimeoutMs: 0,
      pollIntervalMs: 600_000,
      backoff: { initialMs: 1_000, maxMs: 60_000 },
      joinGraceMs: Infinity,
      random: () => draw,
      log: (line) => lines.push(JSON.parse(line)),
    });
    try {
      (await link.channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down"));
      await waitFor(
        `draw ${draw}: the rejoin scheduled`,
        () => lines.some((l) => l.event === "realtime_unavailable"),
      );
      const unavailable = lines.find((l) => l.event === "realtime_unavailable")!;
      assert.equal(unavailable.retry_in_ms, expected, `draw ${draw}`);
      assert.ok(
        timers.pending().every((ms) => Number.isFinite(ms)),
        `draw ${draw}: waits ${timers.pending()}`,
      );
      assert.equal(lines.filter((l) => l.event === "random_out_of_range").length, 1, `draw ${draw}`);
    } finally {
      timers.restore();
      await link.end();
    }
  }
});

Deno.test("options: callbacks that are not functions are refused by the call that takes them (TypeError naming it), not found when first called", async () => {
  const notFunctions: unknown[] = [null, "log", 1, { call: () => {} }];
  const service = (options: Record<string, unknown>) => () =>
    new RealtimeService(fakeClient().client, {
      changesSince,
      log: () => {},
      ...options,
    } as unknown as RealtimeServiceOptions);
  const refused = (what: RegExp, value: unknown) => (error: unknown) =>
    error instanceof TypeError && what.test(error.message) && error.message.includes(`(got ${typeof value})`);
  for (const value of notFunctions) {
    for (const name of ["parseRow", "compareRows", "log"]) {
      assert.throws(
        service({ [name]: value }),
        refused(new RegExp(`^RealtimeService option ${name} must be a function`), value),
        `${name}: ${String(value)}`,
      );
      // Through api.ts too, before any service is made, whatever call on the client it is.
      assert.throws(
        () => subscribeToProgress(fakeClient().client, USER, () => {}, { log: () => {}, [name]: value }),
        refused(new RegExp(`^RealtimeService option ${name} must be a function`), value),
        `subscribeToProgress ${name}: ${String(value)}`,
      );
    }
    for (const name of ["sleep", "onRetry"]) {
      assert.throws(
        () =>
          subscribeToProgress(fakeClient().client, USER, () => {}, {
            log: () => {},
            api: { [name]: value } as Record<string, unknown>,
          }),
        refused(new RegExp(`^subscribeToProgress option api\\.${name} must be a function`), value),
        `subscribeToProgress api.${name}: ${String(value)}`,
      );
    }
    // changesSince is required: undefined too.
    assert.throws(
      service({ changesSince: value }),
      refused(/^RealtimeService option changesSince must be a function/, value),
      `changesSince: ${String(value)}`,
    );
  }
  assert.throws(
    service({ changesSince: undefined }),
    refused(/^RealtimeService option changesSince must be a function/, undefined),
  );

  // The handler, at subscribeToProgress (the service's, and api.ts's before it makes a service).
  const fake = fakeClient();
  const made = new RealtimeService(fake.client, { changesSince, log: () => {} });
  try {
    for (const value of [...notFunctions, undefined]) {
      assert.throws(
        () => made.subscribeToProgress(USER, value as () => void),
        refused(/^RealtimeService subscribeToProgress\(\) argument handler must be a function/, value),
        `handler: ${String(value)}`,
      );
      assert.throws(
        () => subscribeToProgress(fake.client, USER, value as () => void, { log: () => {} }),
        refused(/^subscribeToProgress argument handler must be a function/, value),
        `api.ts handler: ${String(value)}`,
      );
    }
    assert.equal(made.stats().links, 0, "no link was made for a refused handler");

    // The listeners, at onStatus / onRead / onCursor (also once the subscription has ended).
    const sub = made.subscribeToProgress(USER, () => {});
    const live = subscribeToProgress(fakeClient().client, USER, () => {}, { log: () => {} });
    for (const target of [sub, live]) {
      for (const method of ["onStatus", "onRead", "onCursor"] as const) {
        for (const value of [...notFunctions, undefined]) {
          assert.throws(
            () => target[method](value as () => void),
            refused(
              new RegExp(`^ProgressSubscription ${method}\\(\\) argument listener must be a function`),
              value,
            ),
            `${method}: ${String(value)}`,
          );
        }
      }
    }
    assert.equal(made.stats().statusListeners, 0, "none of them was kept");
    await live.unsubscribe();
    await sub.unsubscribe();
    assert.throws(
      () => sub.onStatus(null as unknown as () => void),
      TypeError,
      "unsubscribed: still refused",
    );
  } finally {
    await made.close();
  }
});
