// The range checks of shared/progress/api.ts's own options (timeoutMs, retry, and
// subscribeToProgress's api.* and changesLimit): no server needed. A plain call with an option out
// of range is a rejected promise with a RangeError naming it, before any request; createProgressApi
// and subscribeToProgress, which return at once, throw it. tests/functions/progress_client.test.ts
// has the real-HTTP side (changesLimit's bound is the function's).

import assert from "node:assert/strict";
import {
  createClient,
  FunctionsFetchError,
  FunctionsHttpError,
  type SupabaseClient,
} from "@supabase/supabase-js";
import {
  changesSince,
  createProgressApi,
  getProgress,
  listProgress,
  NetworkError,
  type ProgressApiOptions,
  resetProgress,
  subscribeToProgress,
  updateProgress,
  updateProgressBatch,
} from "../../shared/progress/api.ts";
import { MAX_TIMER_MS } from "../../shared/http/body.ts";
import { PROGRESS_LIMITS } from "../../shared/progress/types.ts";
import { fakeClient } from "../shared/realtime/fakeRealtimeClient.ts";
import { closedPort } from "./support.ts";

const USER = "00000000-0000-4000-8000-0000000000e1";
const noSanitize = { sanitizeOps: false, sanitizeResources: false } as const;

/** A supabase-js client whose functions URL is a closed local port; counts the requests it makes. */
function countingClient(): { client: SupabaseClient; requests: () => number } {
  let requests = 0;
  const client = createClient(`http://127.0.0.1:${closedPort()}`, "anon-key-unused", {
    auth: { persistSession: false, autoRefreshToken: false },
    global: {
      fetch: (input: RequestInfo | URL, init?: RequestInit) => {
        requests++;
        return fetch(input, init);
      },
    },
  });
  return { client, requests: () => requests };
}

const WRITE = {
  series_id: "s1",
  chapter: 1,
  page: 1,
  percentage: 0.1,
  device_id: "d1",
  updated_at: "2026-01-01T00:00:00Z",
};

/** Every plain call, with `options`. */
const CALLS: [string, (client: SupabaseClient, options: ProgressApiOptions) => Promise<unknown>][] = [
  ["updateProgress", (c, o) => updateProgress(c, WRITE, o)],
  ["updateProgressBatch", (c, o) => updateProgressBatch(c, [WRITE], o)],
  ["getProgress", (c, o) => getProgress(c, "s1", o)],
  ["listProgress", (c, o) => listProgress(c, {}, o)],
  ["changesSince", (c, o) => changesSince(c, null, {}, o)],
  ["resetProgress", (c, o) => resetProgress(c, "s1", { device_id: "d1" }, o)],
];

const MS_OUT_OF_RANGE = [0, -1, 0.5, NaN, Infinity, -Infinity, MAX_TIMER_MS + 1];
/** A wait between attempts may be 0 (retry at once) or under 1 ms; the rest as for timeoutMs. */
const DELAY_OUT_OF_RANGE = MS_OUT_OF_RANGE.filter((v) => !(v >= 0 && v < 1));
const BAD: [string, Partial<ProgressApiOptions>, unknown][] = [
  ...MS_OUT_OF_RANGE.map((v) =>
    ["timeoutMs", { timeoutMs: v }, v] as [string, Partial<ProgressApiOptions>, unknown]
  ),
  ...[0, -1, 1.5, NaN, Infinity].map((v) =>
    ["retry.attempts", { retry: { attempts: v } }, v] as [string, Partial<ProgressApiOptions>, unknown]
  ),
  ...DELAY_OUT_OF_RANGE.map((v) =>
    ["retry.baseDelayMs", { retry: { baseDelayMs: v } }, v] as [string, Partial<ProgressApiOptions>, unknown]
  ),
  ...DELAY_OUT_OF_RANGE.map((v) =>
    ["retry.maxDelayMs", { retry: { maxDelayMs: v } }, v] as [string, Partial<ProgressApiOptions>, unknown]
  ),
];

/**
 * Hang guards for the old behaviour (which retried without end for some of these): retries without
 * a wait, and a call that has retried 20 times fails (with a message no check here expects).
 */
function guarded(options: Partial<ProgressApiOptions>): ProgressApiOptions {
  let retries = 0;
  return {
    ...options,
    sleep: () => Promise.resolve(),
    onRetry: () => {
      if (++retries >= 20) throw new Error("retried 20 times");
    },
  };
}

function rangeErrorNaming(where: string, name: string, value: unknown) {
  return (error: unknown) => {
    assert.ok(error instanceof RangeError, `expected a RangeError, got ${error}`);
    assert.match(error.message, new RegExp(`^${where} option ${name.replaceAll(".", "\\.")} must be `));
    assert.ok(error.message.endsWith(`(got ${String(value)})`), error.message);
    return true;
  };
}

Deno.test("plain calls: timeoutMs or a retry field out of range is a rejected RangeError naming it, before any request", async () => {
  const { client, requests } = countingClient();
  for (const [callName, call] of CALLS) {
    for (const [name, options, value] of BAD) {
      let promise!: Promise<unknown>;
      assert.doesNotThrow(
        () => promise = call(client, guarded(options)),
        `${callName} ${name}=${value}: not thrown`,
      );
      await assert.rejects(
        promise,
        rangeErrorNaming("progress API", name, value),
        `${callName} ${name}=${value}`,
      );
    }
  }
  assert.equal(requests(), 0, "no request was made");

  // The edges of each range are taken: one attempt, made (the closed port answers nothing).
  for (
    const options of [
      { timeoutMs: 1 },
      { timeoutMs: MAX_TIMER_MS },
      { retry: { baseDelayMs: 1, maxDelayMs: 1 } },
      { retry: { baseDelayMs: MAX_TIMER_MS, maxDelayMs: MAX_TIMER_MS } },
    ]
  ) {
    const before = requests();
    await assert.rejects(
      getProgress(client, "s1", { ...options, retry: { ...options.retry, attempts: 1 } }),
      NetworkError,
      JSON.stringify(options),
    );
    assert.equal(requests(), before + 1, JSON.stringify(options));
  }
});

Deno.test("plain calls: retry.baseDelayMs or retry.maxDelayMs 0 retries at once (with the real sleep: no hang, no timer left)", async () => {
  const { client, requests } = countingClient();
  for (const retry of [{ baseDelayMs: 0 }, { maxDelayMs: 0 }, { baseDelayMs: 0, maxDelayMs: 0 }]) {
    const delays: number[] = [];
    const before = requests();
    await assert.rejects(
      getProgress(client, "s1", {
        retry: { ...retry, attempts: 3 },
        onRetry: ({ delayMs }) => {
          delays.push(delayMs);
          if (delays.length >= 20) throw new Error("retried 20 times");
        },
      }),
      NetworkError,
      JSON.stringify(retry),
    );
    assert.deepEqual(delays, [0, 0], JSON.stringify(retry));
    assert.equal(requests(), before + 3, JSON.stringify(retry));
  }
  // createProgressApi takes them too (subscribeToProgress: its test below).
  createProgressApi(client, { retry: { baseDelayMs: 0, maxDelayMs: 0 } });
});

Deno.test("plain calls: retry fields given as undefined take their defaults (4 attempts, waits from 200 ms up to 5 s)", async () => {
  const { client, requests } = countingClient();
  const delays: number[] = [];
  let retries = 0;
  await assert.rejects(
    getProgress(client, "s1", {
      retry: { attempts: undefined, baseDelayMs: undefined, maxDelayMs: undefined },
      timeoutMs: undefined,
      random: () => 0.5,
      sleep: () => Promise.resolve(),
      onRetry: ({ delayMs }) => {
        delays.push(delayMs);
        if (++retries >= 20) throw new Error("retried 20 times");
      },
    }),
    NetworkError,
  );
  // Full jitter drawn at 0.5 of ceilings 200, 400, 800 ms (DEFAULT_RETRY).
  assert.deepEqual(delays, [100, 200, 400]);
  assert.equal(requests(), 4);
});

Deno.test("createProgressApi: an option out of range throws a RangeError at once, naming it", () => {
  const { client, requests } = countingClient();
  for (const [name, options, value] of BAD) {
    assert.throws(
      () => createProgressApi(client, options),
      rangeErrorNaming("createProgressApi", name, value),
    );
  }
  assert.equal(requests(), 0);
});

/**
 * A page-size limit and whether the client takes it, for a largest page `max`: the function's range (a
 * whole number from 1 to `max`); out of it a RangeError, not a number a TypeError (the query string
 * spelled any of them, and the function answered 400 or 422).
 */
function limitValues(max: number): [unknown, true | ErrorConstructor][] {
  return [
    [undefined, true],
    [1, true],
    [max, true],
    [0, RangeError],
    [-0, RangeError],
    [-1, RangeError],
    [1.5, RangeError],
    [max + 1, RangeError],
    [1e21, RangeError],
    [NaN, RangeError],
    [Infinity, RangeError],
    ["100", TypeError],
    [null, TypeError],
    [true, TypeError],
  ];
}

/**
 * The calls taking a limit, with the largest page the function answers: changesSince (500, as
 * subscribeToProgress's changesLimit) and listProgress (200), each plain and through createProgressApi.
 */
const LIMITED_CALLS: {
  name: string;
  max: number;
  plain: (client: SupabaseClient, limit: number) => Promise<unknown>;
  bound: (api: ReturnType<typeof createProgressApi>, limit: number) => Promise<unknown>;
}[] = [
  {
    name: "changesSince",
    max: PROGRESS_LIMITS.changesMax,
    plain: (client, limit) => changesSince(client, null, { limit }, { retry: { attempts: 1 } }),
    bound: (api, limit) => api.changesSince(null, { limit }),
  },
  {
    name: "listProgress",
    max: PROGRESS_LIMITS.listMax,
    plain: (client, limit) => listProgress(client, { limit }, { retry: { attempts: 1 } }),
    bound: (api, limit) => api.listProgress({ limit }),
  },
];

for (const { name, max, plain, bound } of LIMITED_CALLS) {
  Deno.test(`${name}: a limit out of the function's range (1 to ${max}) is a rejected RangeError (not a number: TypeError) naming it, before any request`, async () => {
    const { client, requests } = countingClient();
    const api = createProgressApi(client, { retry: { attempts: 1 } });
    for (const [limit, expected] of limitValues(max)) {
      const calls: [string, () => Promise<unknown>][] = [
        [name, () => plain(client, limit as number)],
        [`createProgressApi's ${name}`, () => bound(api, limit as number)],
      ];
      for (const [where, call] of calls) {
        const before = requests();
        let promise!: Promise<unknown>;
        assert.doesNotThrow(
          () => promise = call(),
          `${where} limit ${String(limit)}: a rejection, not a throw`,
        );
        const error = await promise.then(() => assert.fail("the closed port answered"), (e: unknown) => e);
        if (expected === true) {
          // Taken: sent (to a closed port).
          assert.ok(error instanceof NetworkError, `${where} limit ${String(limit)}: sent (got ${error})`);
          assert.equal(requests(), before + 1, `${where} limit ${String(limit)}: one request`);
          continue;
        }
        assert.ok(
          error instanceof expected,
          `${where} limit ${String(limit)}: ${expected.name} (got ${error})`,
        );
        const shown = typeof limit === "string" ? JSON.stringify(limit) : String(limit);
        assert.equal(
          error.message,
          `${name} option limit must be a whole number from 1 to ${max} (got ${shown})`,
        );
        assert.equal(requests(), before, `${where} limit ${String(limit)}: no request`);
      }
    }
  });
}

Deno.test({
  name:
    "subscribeToProgress: api.timeoutMs, api.retry and changesLimit out of range throw a RangeError at once, leaving nothing",
  ...noSanitize,
  fn: async () => {
    const { client } = fakeClient();
    const quiet = { log: () => {}, pollIntervalMs: 60_000, accessToken: "T1" };
    const bad: [string, Record<string, unknown>, unknown][] = [
      ...BAD.map(([name, api, value]) =>
        [`api.${name}`, { api }, value] as [string, Record<string, unknown>, unknown]
      ),
      ...[0, -1, 1.5, NaN, Infinity, PROGRESS_LIMITS.changesMax + 1].map((v) =>
        ["changesLimit", { changesLimit: v }, v] as [string, Record<string, unknown>, unknown]
      ),
    ];
    const refusals = (later: boolean) => {
      for (const [name, options, value] of bad) {
        assert.throws(
          () => subscribeToProgress(client, USER, () => {}, { ...quiet, ...options }),
          rangeErrorNaming("subscribeToProgress", name, value),
        );
      }
      // 4 attempts cannot share a requestTimeoutMs of 3 ms (was: each given 1 ms anyway). A later call
      // runs with the shared service's options, made without a requestTimeoutMs: its 3 ms is refused
      // as not that one.
      assert.throws(
        () => subscribeToProgress(client, USER, () => {}, { ...quiet, requestTimeoutMs: 3 }),
        later
          ? /^Error: subscribeToProgress option requestTimeoutMs \(3\) is not the one this client's shared RealtimeService runs with \(not given\)/
          : /^RangeError: subscribeToProgress option api\.retry\.attempts \(4\) leaves each attempt less than 1 ms of requestTimeoutMs \(3\)/,
      );
    };
    refusals(false);
    assert.equal(client.getChannels().length, 0, "no service made a channel");
    // ... but they can with their own timeout.
    const own = subscribeToProgress(client, USER, () => {}, {
      ...quiet,
      requestTimeoutMs: 3,
      api: { timeoutMs: 1 },
    });
    await own.unsubscribe();

    // The edges are taken; a later subscription on the client (sharing the first one's service) is
    // checked too.
    const first = subscribeToProgress(client, USER, () => {}, {
      ...quiet,
      changesLimit: PROGRESS_LIMITS.changesMax,
      api: { timeoutMs: MAX_TIMER_MS, retry: { attempts: 1, baseDelayMs: 0, maxDelayMs: MAX_TIMER_MS } },
    });
    try {
      refusals(true);
      const second = subscribeToProgress(client, USER, () => {}, quiet);
      assert.equal(second.service, first.service);
      await second.unsubscribe();
    } finally {
      await first.unsubscribe();
    }
    assert.equal(client.getChannels().length, 0, "the service closed with its last subscription");
  },
});

Deno.test({
  name:
    "subscribeToProgress: a later call is judged by the options the shared service runs with: one leaving out the api.timeoutMs that lets 4 attempts share 3 ms is taken",
  ...noSanitize,
  fn: async () => {
    const { client } = fakeClient();
    const quiet = { log: () => {}, pollIntervalMs: 60_000, accessToken: "T1" };
    // 4 attempts (the default) in a requestTimeoutMs of 3 ms: taken with their own 1 ms each.
    const first = subscribeToProgress(client, USER, () => {}, {
      ...quiet,
      requestTimeoutMs: 3,
      api: { timeoutMs: 1 },
    });
    try {
      // The service runs with api.timeoutMs 1, given or not: a later call that leaves it out, alone or
      // with the same requestTimeoutMs, was refused for leaving an attempt less than 1 ms (judged by its
      // own options, as if it made a service without api.timeoutMs).
      for (const later of [{ ...quiet, requestTimeoutMs: 3 }, { ...quiet, requestTimeoutMs: 3, api: {} }]) {
        const subscription = subscribeToProgress(client, USER, () => {}, later);
        assert.equal(subscription.service, first.service, JSON.stringify(later));
        await subscription.unsubscribe();
      }
      // One giving another api.timeoutMs is refused as not the shared service's, as any data option.
      assert.throws(
        () =>
          subscribeToProgress(client, USER, () => {}, {
            ...quiet,
            requestTimeoutMs: 3,
            api: { timeoutMs: 2 },
          }),
        /^Error: subscribeToProgress option api\.timeoutMs \(2\) is not the one this client's shared RealtimeService runs with \(1\)/,
      );
      assert.equal(first.service.stats().subscriptions, 1);
    } finally {
      await first.unsubscribe();
    }
    assert.equal(client.getChannels().length, 0, "the service closed with its last subscription");
  },
});

Deno.test({
  name:
    "subscribeToProgress: a later call's api.headers are compared as fetch's Headers sends them (names in any case, values without surrounding spaces)",
  ...noSanitize,
  fn: async () => {
    const { client } = fakeClient();
    const log = () => {};
    const first = subscribeToProgress(client, USER, () => {}, {
      log,
      api: { headers: { "X-App": "1", "X-Act-As-User": "u1" } },
    });
    const later: ReturnType<typeof subscribeToProgress>[] = [];
    try {
      // The headers each call would send are the same: taken, on the shared service.
      for (
        const headers of [
          { "x-app": "1", "x-act-as-user": "u1" } as Record<string, string>,
          { "X-APP": " 1\t", "X-Act-As-User": "u1 " },
          { "X-Act-As-User": "u1", "X-App": "1" },
        ]
      ) {
        const subscription = subscribeToProgress(client, USER, () => {}, { log, api: { headers } });
        later.push(subscription);
        assert.equal(subscription.service, first.service, JSON.stringify(headers));
      }
      // Other headers are refused as before, named as Headers names them.
      const refused: [Record<string, string>, string][] = [
        [{ "x-app": "2", "X-Act-As-User": "u1" }, "api.headers.x-app (a string)"],
        [{ "X-App": "1", "X-Act-As-User": "u1", "X-Other": "1" }, "api.headers.x-other (a string)"],
        // Two fields of one name in different cases are sent as one header, its values joined.
        [{ "X-App": "1", "x-app": "1", "X-Act-As-User": "u1" }, "api.headers.x-app (a string)"],
      ];
      for (const [headers, named] of refused) {
        assert.throws(
          () => subscribeToProgress(client, USER, () => {}, { log, api: { headers } }),
          (error: Error) =>
            error.message.startsWith(
              `subscribeToProgress option ${named} is not the one this client's shared `,
            ),
          JSON.stringify(headers),
        );
      }
      assert.equal(first.service.stats().subscriptions, 4);
    } finally {
      for (const subscription of later) await subscription.unsubscribe();
      await first.unsubscribe();
    }
    assert.equal(client.getChannels().length, 0, "the service closed with its last subscription");
  },
});

Deno.test({
  name:
    "subscribeToProgress: a later call on the client giving a data option other than the shared service's is refused, naming it; the same, none, callbacks or another initialCursor (each call's own) are taken",
  ...noSanitize,
  fn: async () => {
    const { client } = fakeClient();
    const log = () => {};
    const first = subscribeToProgress(client, USER, () => {}, {
      log,
      accessToken: "T1",
      pollIntervalMs: 60_000,
      backoff: { initialMs: 1_000 },
      initialCursor: "0123abcd.4242",
      changesLimit: 200,
      api: { timeoutMs: 1_000, retry: { attempts: 2 }, headers: { "X-Act-As-User": "u1" } },
    });
    try {
      const differing: [string, Record<string, unknown>, string, string][] = [
        ["pollIntervalMs", { pollIntervalMs: 5_000 }, "5000", "60000"],
        // (One out of range is refused as on a first call: tests/shared/options/optionRanges.test.ts.)
        ["requestTimeoutMs", { requestTimeoutMs: 10_000 }, "10000", "not given"],
        ["backoff.initialMs", { backoff: { initialMs: 2_000 } }, "2000", "1000"],
        ["backoff.maxMs", { backoff: { maxMs: 5_000 } }, "5000", "not given"],
        ["changesLimit", { changesLimit: 100 }, "100", "200"],
        ["api.timeoutMs", { api: { timeoutMs: 2_000 } }, "2000", "1000"],
        ["api.retry.attempts", { api: { retry: { attempts: 3 } } }, "3", "2"],
        [
          "api.headers.x-act-as-user", // as fetch's Headers names it
          { api: { headers: { "X-Act-As-User": "u2" } } },
          "a string",
          "a string",
        ],
        ["accessToken", { accessToken: "T2-secret" }, "a string", "a string"],
      ];
      for (const [name, options, value, inForce] of differing) {
        assert.throws(
          () => subscribeToProgress(client, USER, () => {}, { log, ...options }),
          (error: Error) => {
            assert.ok(!(error instanceof RangeError), String(error));
            assert.ok(
              error.message.startsWith(
                `subscribeToProgress option ${name} (${value}) is not the one this client's shared ` +
                  `RealtimeService runs with (${inForce}):`,
              ),
              error.message,
            );
            assert.ok(!/T2-secret|u2|4343/.test(error.message), "a string's value is not shown");
            return true;
          },
          name,
        );
      }
      assert.equal(first.service.stats().subscriptions, 1, "none of them subscribed");

      // Another value held where a plain object was expected (a class's instance, a Map, a Headers) was
      // passed over by the comparison and taken without a word; it is refused, naming the option.
      class Backoff {
        initialMs = 2_000;
      }
      const notPlain: [string, Record<string, unknown>, string][] = [
        ["backoff", { backoff: new Backoff() }, "a Backoff"],
        ["backoff", { backoff: new Map([["initialMs", 2_000]]) }, "a Map"],
        ["api.retry", { api: { retry: new Map([["attempts", 3]]) } }, "a Map"],
        ["api.headers", { api: { headers: new Headers({ "X-Act-As-User": "u2" }) } }, "a Headers"],
        ["api", {
          api: new (class Api {
            timeoutMs = 2_000;
          })(),
        }, "an Api"],
      ];
      for (const [name, options, shown] of notPlain) {
        const where = name === "backoff" ? "RealtimeService" : "subscribeToProgress";
        assert.throws(
          () => subscribeToProgress(client, USER, () => {}, { log, ...options }),
          (error: Error) =>
            error instanceof TypeError &&
            error.message === `${where} option ${name} must be a plain object (got ${shown})`,
          `${name} as ${shown}`,
        );
      }
      assert.equal(first.service.stats().subscriptions, 1, "none of them subscribed");

      // The same values (other objects), none, or other callbacks and a signal are taken.
      const same = subscribeToProgress(client, USER, () => {}, {
        log: () => {},
        random: Math.random,
        accessToken: "T1",
        pollIntervalMs: 60_000,
        backoff: { initialMs: 1_000 },
        changesLimit: 200,
        api: {
          timeoutMs: 1_000,
          retry: { attempts: 2 },
          headers: { "X-Act-As-User": "u1" },
          signal: new AbortController().signal,
          onRetry: () => {},
        },
      });
      const none = subscribeToProgress(client, USER, () => {});
      // initialCursor is each call's own (its subscription's starting cursor), not the service's.
      const ownCursor = subscribeToProgress(client, USER, () => {}, { initialCursor: "0123abcd.4343" });
      assert.equal(same.service, first.service);
      assert.equal(none.service, first.service);
      assert.equal(ownCursor.service, first.service);
      assert.equal(ownCursor.cursor, "0123abcd.4343");
      await same.unsubscribe();
      await none.unsubscribe();
      await ownCursor.unsubscribe();
    } finally {
      await first.unsubscribe();
    }
    assert.equal(client.getChannels().length, 0, "the service closed with its last subscription");
  },
});

Deno.test("createProgressApi: a write's or a library read's own options (a signal, retry fields) go with that call only, over the API's", async () => {
  // The function as functions.invoke reaches it: every request answered 503 at once, unless its signal
  // has aborted (then ended as functions-js ends it).
  let requests = 0;
  const client = {
    functions: {
      invoke: (_name: string, options: { signal?: AbortSignal }) => {
        requests++;
        if (options.signal?.aborted) {
          return Promise.resolve({
            data: null,
            error: new FunctionsFetchError(options.signal.reason),
            response: undefined,
          });
        }
        const response = Response.json({ error: { code: "service_unavailable", message: "down" } }, {
          status: 503,
        });
        return Promise.resolve({ data: null, error: new FunctionsHttpError(response), response });
      },
    },
  } as unknown as SupabaseClient;
  const stopAll = new AbortController();
  const api = createProgressApi(client, {
    retry: { attempts: 3 },
    sleep: () => Promise.resolve(),
    signal: stopAll.signal,
  });
  const failure = async (call: () => Promise<unknown>) => {
    const before = requests;
    const error = await call().then(() => assert.fail("expected a failure"), (e) => e);
    return { code: (error as NetworkError).code, requests: requests - before };
  };
  // The API's three attempts; one, asked for by the call; the next call has the API's again.
  assert.deepEqual(await failure(() => api.updateProgressBatch([WRITE])), {
    code: "service_unavailable",
    requests: 3,
  });
  assert.deepEqual(await failure(() => api.updateProgressBatch([WRITE], { retry: { attempts: 1 } })), {
    code: "service_unavailable",
    requests: 1,
  });
  assert.deepEqual(await failure(() => api.updateProgress(WRITE, { retry: { attempts: 2 } })), {
    code: "service_unavailable",
    requests: 2,
  });
  assert.deepEqual(await failure(() => api.listProgress({}, { retry: { attempts: 1 } })), {
    code: "service_unavailable",
    requests: 1,
  });
  // A call's own signal ends that call; the API's still ends every call, one with a signal of its own too.
  const stopOne = new AbortController();
  stopOne.abort(new Error("this send is over"));
  assert.deepEqual(await failure(() => api.updateProgressBatch([WRITE], { signal: stopOne.signal })), {
    code: "aborted",
    requests: 0,
  });
  assert.deepEqual(await failure(() => api.updateProgress(WRITE)), {
    code: "service_unavailable",
    requests: 3,
  });
  stopAll.abort(new Error("the app closed"));
  assert.deepEqual(await failure(() => api.listProgress({}, { signal: new AbortController().signal })), {
    code: "aborted",
    requests: 0,
  });
  // A call's retry fields out of range are refused as the API's are, before any request.
  await assert.rejects(api.updateProgress(WRITE, { retry: { attempts: 0 } }), RangeError);
});
