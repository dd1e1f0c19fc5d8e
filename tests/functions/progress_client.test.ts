// shared/progress/api.ts over real HTTP: the typed calls against the local function, typed errors,
// retries only on 503, 408 and network failures (a tiny local server answers 503 before passing the
// request on to the real function), and subscribeToProgress receiving a write another device made
// through updateProgress.

import assert from "node:assert/strict";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import {
  AuthError,
  changesSince,
  createProgressApi,
  getProgress,
  listProgress,
  NetworkError,
  NotFoundError,
  ProgressApiError,
  resetProgress,
  ServiceUnavailableError,
  subscribeToProgress,
  updateProgress,
  updateProgressBatch,
  ValidationError,
} from "../../shared/progress/api.ts";
import type { ProgressChange } from "../../shared/realtime/realtimeService.ts";
import { ServerClock } from "../../shared/progress/serverClock.ts";
import { PROGRESS_LIMITS } from "../../shared/progress/types.ts";
import { mintUserAccessToken } from "../../local/stack/keys.ts";
import { createTestUser } from "../support/env.ts";
import { closedPort, seriesId, serveLocal, testEnv, write } from "./support.ts";
import { pendingFor, watchTimers } from "../shared/realtime/watchTimers.ts";

const noSanitize = { sanitizeOps: false, sanitizeResources: false } as const;

/** A supabase-js client for `url` whose every call carries `token` (as an app with a session). */
function clientFor(token: string, url = testEnv().url, onFetch?: (url: string) => void): SupabaseClient {
  return createClient(url, testEnv().anonKey, {
    accessToken: () => Promise.resolve(token),
    global: onFetch
      ? {
        fetch: (input: RequestInfo | URL, init?: RequestInit) => {
          onFetch(input instanceof Request ? input.url : String(input));
          return fetch(input, init);
        },
      }
      : undefined,
  });
}

async function waitUntil(what: string, predicate: () => boolean, limitMs = 20_000): Promise<void> {
  const deadline = Date.now() + limitMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function rejection(promise: Promise<unknown>): Promise<ProgressApiError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ProgressApiError, `expected a ProgressApiError, got ${error}`);
    return error;
  }
  assert.fail("expected the call to fail");
}

const fast = { retry: { baseDelayMs: 1, maxDelayMs: 5 } };

Deno.test("the typed calls: update, batch, get, list, changes, reset", async () => {
  const user = await createTestUser();
  const client = clientFor(user.accessToken);
  const s1 = seriesId("api1");
  const s2 = seriesId("api2");

  const written = await updateProgress(
    client,
    write({ series_id: s1, chapter: 3, updated_at: "2026-02-01T00:00:00Z" }),
  );
  assert.deepEqual([written.won, written.progress.user_id, written.progress.chapter], [true, user.id, 3]);
  const batch = await updateProgressBatch(client, [
    write({ series_id: s2, chapter: 1, updated_at: "2026-02-02T00:00:00Z" }),
    write({ series_id: s1, chapter: 2, device_id: "dev-other", updated_at: "2026-01-01T00:00:00Z" }),
  ]);
  assert.deepEqual(batch.map((r) => [r.won, r.conflict]), [[true, null], [false, "stale"]]);

  assert.equal((await getProgress(client, s1))?.chapter, 3);
  assert.equal(await getProgress(client, "never-read"), null, "no progress is null, not an error");

  const page1 = await listProgress(client, { limit: 1 });
  assert.deepEqual(page1.items.map((p) => p.series_id), [s2]);
  const page2 = await listProgress(client, { limit: 1, cursor: page1.next_cursor });
  assert.deepEqual(page2.items.map((p) => p.series_id), [s1]);

  const changes = await changesSince(client, null);
  assert.deepEqual(changes.changes.map((c) => c.series_id).sort(), [s1, s2].sort());

  const reset = await resetProgress(client, s1, { device_id: "web", updated_at: "2026-03-01T00:00:00Z" });
  assert.deepEqual([reset.won, reset.progress.cleared], [true, true]);
  const api = createProgressApi(client);
  assert.deepEqual((await api.listProgress()).items.map((p) => p.series_id), [s2]);
  assert.deepEqual((await api.listProgress({ includeCleared: true })).items.map((p) => p.series_id), [
    s1,
    s2,
  ]);
});

Deno.test("typed errors: ValidationError (local and from the server), AuthError, NotFoundError", async () => {
  const user = await createTestUser();
  const client = clientFor(user.accessToken);
  let hits = 0;
  const counting = clientFor(user.accessToken, testEnv().url, () => hits++);

  // Refused before anything is sent, with the status and code the server would use.
  let e = await rejection(updateProgress(counting, write({ series_id: seriesId("v"), percentage: 2 }), fast));
  assert.ok(e instanceof ValidationError);
  assert.deepEqual([e.status, e.code], [422, "validation_failed"]);
  e = await rejection(
    updateProgress(counting, { ...write({ series_id: seriesId("v") }), user_id: user.id } as never, fast),
  );
  assert.deepEqual([e instanceof ValidationError, e.status, e.code], [true, 400, "invalid_request"]);
  assert.equal(hits, 0, "no request was sent for a locally invalid write");

  // Refused by the server.
  e = await rejection(listProgress(client, { cursor: "not-a-cursor" }, fast));
  assert.deepEqual([e instanceof ValidationError, e.status, e.code], [true, 422, "validation_failed"]);
  assert.ok(e.requestId, "the request id of the answer is kept");
  e = await rejection(changesSince(client, "not-a-cursor", {}, fast));
  assert.deepEqual([e instanceof ValidationError, e.status], [true, 422]);

  const expired = await mintUserAccessToken(user.id, { expiresInSeconds: -5, secret: testEnv().jwtSecret });
  e = await rejection(listProgress(clientFor(expired), {}, fast));
  assert.deepEqual([e instanceof AuthError, e.status, e.code], [true, 401, "token_expired"]);
  e = await rejection(listProgress(clientFor(testEnv().anonKey), {}, fast));
  assert.deepEqual([e instanceof AuthError, e.status, e.code], [true, 403, "forbidden"]);

  e = await rejection(listProgress(client, {}, { ...fast, functionName: "no-such-function" }));
  assert.deepEqual([e instanceof NotFoundError, e.status], [true, 404]);
});

/** A local stand-in for the functions endpoint: `answer` decides per hit; null passes the request on. */
function flakyFunctions(answer: (hit: number) => Response | null) {
  let hits = 0;
  const server = serveLocal(async (req) => {
    hits++;
    const decided = answer(hits);
    if (decided) return decided;
    const url = new URL(req.url);
    const upstream = await fetch(`${testEnv().url}${url.pathname}${url.search}`, {
      method: req.method,
      headers: req.headers,
      body: req.method === "GET" || req.method === "HEAD" ? undefined : await req.arrayBuffer(),
    });
    return new Response(await upstream.arrayBuffer(), { status: upstream.status, headers: upstream.headers });
  });
  return { url: server.url, hits: () => hits, shutdown: () => server.shutdown() };
}

const apiError = (status: number, code: string, headers: Record<string, string> = {}) =>
  Response.json({ error: { code, message: `stand-in ${status}` } }, { status, headers });

Deno.test("retry: 503 twice, then the real function answers; backoff delays grow and are jittered", async () => {
  const user = await createTestUser();
  const upstream = flakyFunctions((hit) =>
    hit <= 2 ? apiError(503, "service_unavailable", { "retry-after": "0" }) : null
  );
  try {
    const delays: number[] = [];
    const slept: number[] = [];
    const result = await updateProgress(
      clientFor(user.accessToken, upstream.url),
      write({ series_id: seriesId("retry") }),
      {
        retry: { attempts: 4, baseDelayMs: 100, maxDelayMs: 1_000 },
        random: () => 0.5,
        sleep: (ms) => {
          slept.push(ms);
          return Promise.resolve();
        },
        onRetry: ({ delayMs, error }) => {
          delays.push(delayMs);
          assert.ok(error instanceof ServiceUnavailableError);
        },
      },
    );
    assert.equal(result.won, true);
    assert.equal(result.progress.user_id, user.id, "the third attempt reached the real function");
    assert.equal(upstream.hits(), 3);
    assert.deepEqual(delays, [50, 100], "full jitter (random 0.5) of 100 ms, then of 200 ms");
    assert.deepEqual(slept, delays);
  } finally {
    await upstream.shutdown();
  }
});

Deno.test("retry: an onRetry that throws does not fail the call: the retry goes on and the real function answers", async () => {
  const user = await createTestUser();
  const upstream = flakyFunctions((hit) =>
    hit <= 1 ? apiError(503, "service_unavailable", { "retry-after": "0" }) : null
  );
  try {
    let heard = 0;
    const result = await updateProgress(
      clientFor(user.accessToken, upstream.url),
      write({ series_id: seriesId("retry-hook-throws") }),
      {
        ...fast,
        onRetry: () => {
          heard++;
          throw new Error("a logger that fails");
        },
      },
    );
    assert.equal(result.won, true);
    assert.deepEqual([heard, upstream.hits()], [1, 2], "retried once, the hook heard it");
  } finally {
    await upstream.shutdown();
  }
});

Deno.test("retry: a 503 that does not go away ends as ServiceUnavailableError after the attempts", async () => {
  const user = await createTestUser();
  const upstream = flakyFunctions(() => apiError(503, "service_unavailable"));
  try {
    const e = await rejection(
      listProgress(clientFor(user.accessToken, upstream.url), {}, {
        ...fast,
        retry: { ...fast.retry, attempts: 3 },
      }),
    );
    assert.ok(e instanceof ServiceUnavailableError);
    assert.equal(upstream.hits(), 3);
  } finally {
    await upstream.shutdown();
  }
});

Deno.test("retry: a 408 (the body stopped arriving on the way) is retried like a 503, then the real function answers", async () => {
  const user = await createTestUser();
  const upstream = flakyFunctions((hit) => hit === 1 ? apiError(408, "request_timeout") : null);
  try {
    const errors: ProgressApiError[] = [];
    const result = await updateProgress(
      clientFor(user.accessToken, upstream.url),
      write({ series_id: seriesId("retry408") }),
      { ...fast, onRetry: ({ error }) => void errors.push(error) },
    );
    assert.equal(result.progress.user_id, user.id, "the second attempt reached the real function");
    assert.equal(upstream.hits(), 2);
    assert.deepEqual(errors.map((e) => [e.status, e.code]), [[408, "request_timeout"]]);
    // One that does not go away ends the call after the attempts, a plain ProgressApiError.
    const stuck = flakyFunctions(() => apiError(408, "request_timeout"));
    try {
      const e = await rejection(
        updateProgress(clientFor(user.accessToken, stuck.url), write({ series_id: seriesId("retry408") }), {
          ...fast,
          retry: { ...fast.retry, attempts: 3 },
        }),
      );
      assert.deepEqual([e.constructor, e.status, e.code, stuck.hits()], [
        ProgressApiError,
        408,
        "request_timeout",
        3,
      ]);
    } finally {
      await stuck.shutdown();
    }
  } finally {
    await upstream.shutdown();
  }
});

Deno.test("no retry on 4xx (but 408) or 500: exactly one request", async () => {
  const user = await createTestUser();
  for (
    const [status, code, type] of [
      [400, "invalid_request", ValidationError],
      [401, "invalid_token", AuthError],
      [409, "conflict", ProgressApiError],
      [500, "internal_error", ProgressApiError],
    ] as const
  ) {
    const upstream = flakyFunctions(() => apiError(status, code));
    try {
      let retries = 0;
      const e = await rejection(
        updateProgress(clientFor(user.accessToken, upstream.url), write({ series_id: seriesId("noretry") }), {
          ...fast,
          onRetry: () => retries++,
        }),
      );
      assert.ok(e instanceof type);
      assert.deepEqual([e.status, e.code, upstream.hits(), retries], [status, code, 1, 0]);
    } finally {
      await upstream.shutdown();
    }
  }
});

Deno.test("Retry-After: a 503's wait longer than the retries' cap ends the call at once; the error carries it", async () => {
  const user = await createTestUser();
  const upstream = flakyFunctions(() => apiError(503, "service_unavailable", { "retry-after": "30" }));
  try {
    const slept: number[] = [];
    const e = await rejection(
      updateProgress(clientFor(user.accessToken, upstream.url), write({ series_id: seriesId("wait-30") }), {
        sleep: (ms) => Promise.resolve(void slept.push(ms)), // the default retries: 4 attempts, 5 s cap
      }),
    );
    assert.ok(e instanceof ServiceUnavailableError);
    assert.deepEqual([upstream.hits(), slept], [1, []], "not asked again 5 s later, against its 30 s");
    assert.equal((e.details as { retry_after?: number }).retry_after, 30);
  } finally {
    await upstream.shutdown();
  }
});

Deno.test("Retry-After: a short one is waited out in full before the next attempt", async () => {
  const user = await createTestUser();
  const upstream = flakyFunctions((hit) =>
    hit === 1 ? apiError(503, "service_unavailable", { "retry-after": "2" }) : null
  );
  try {
    const slept: number[] = [];
    const result = await updateProgress(
      clientFor(user.accessToken, upstream.url),
      write({ series_id: seriesId("wait-2") }),
      {
        retry: { attempts: 2, baseDelayMs: 100, maxDelayMs: 5_000 },
        random: () => 0.99,
        sleep: (ms) => Promise.resolve(void slept.push(ms)),
      },
    );
    assert.equal(result.won, true);
    assert.deepEqual([upstream.hits(), slept], [2, [2_000]]);
  } finally {
    await upstream.shutdown();
  }
});

Deno.test("Retry-After as an HTTP-date: counted from the answer's clock (X-Server-Time, else Date), not the device's", async () => {
  const user = await createTestUser();
  // The server's clock is years away from this device's: the wait is still what the server meant.
  const serverNow = Date.parse("2015-10-21T07:28:00.000Z");
  const answers = [
    apiError(429, "rate_limited", {
      "x-server-time": new Date(serverNow).toISOString(),
      "retry-after": new Date(serverNow + 90_000).toUTCString(),
    }),
    // A gateway's answer: no X-Server-Time, its Date header instead.
    new Response("Too Many Requests", {
      status: 429,
      headers: {
        date: new Date(serverNow).toUTCString(),
        "retry-after": new Date(serverNow + 45_000).toUTCString(),
      },
    }),
  ];
  for (const [i, answer] of answers.entries()) {
    const upstream = flakyFunctions(() => answer.clone());
    try {
      const e = await rejection(
        updateProgress(
          clientFor(user.accessToken, upstream.url),
          write({ series_id: seriesId("date") }),
          fast,
        ),
      );
      assert.deepEqual([e.status, upstream.hits()], [429, 1], `answer ${i}: a 429 is not retried here`);
      assert.equal((e.details as { retry_after?: number }).retry_after, i === 0 ? 90 : 45, `answer ${i}`);
    } finally {
      await upstream.shutdown();
    }
  }
});

Deno.test("retry: network failures are retried, then surface as NetworkError", async () => {
  const user = await createTestUser();
  let retries = 0;
  const e = await rejection(
    getProgress(clientFor(user.accessToken, `http://127.0.0.1:${closedPort()}`), "x", {
      ...fast,
      retry: { ...fast.retry, attempts: 3 },
      onRetry: ({ error }) => {
        assert.ok(error instanceof NetworkError);
        retries++;
      },
    }),
  );
  assert.ok(e instanceof NetworkError);
  assert.deepEqual([e.status, e.code, retries], [0, "network_error", 2]);
});

/**
 * A functions endpoint whose first `hanging` requests never answer (until shutdown releases them).
 * Only functions are served: anything else (a Realtime socket) gets 404 at once.
 */
function hangingFunctions(hanging: number) {
  const release: (() => void)[] = [];
  const upstream = flakyFunctions(() => null);
  let hits = 0;
  const server = serveLocal(async (req) => {
    if (!new URL(req.url).pathname.startsWith("/functions/v1/")) return new Response(null, { status: 404 });
    if (++hits <= hanging) {
      await new Promise<void>((resolve) => release.push(resolve));
      return apiError(503, "released");
    }
    const url = new URL(req.url);
    return await fetch(`${upstream.url}${url.pathname}${url.search}`, {
      method: req.method,
      headers: req.headers,
    });
  });
  return {
    url: server.url,
    hits: () => hits,
    shutdown: async () => {
      release.forEach((r) => r());
      await Promise.all([server.shutdown(), upstream.shutdown()]);
    },
  };
}

Deno.test("timeout: an attempt that never answers is aborted after timeoutMs and retried", async () => {
  // The attempts' limit is long (also the retry's, which reaches the real function), and the first
  // attempt's timer, found by its delay, is run by hand once that attempt has reached the server
  // (watchTimers): its time is up when the test says, and the retry has all of it on a loaded machine.
  const user = await createTestUser();
  const upstream = hangingFunctions(1);
  const TIMEOUT_MS = 60_000;
  const timers = watchTimers();
  try {
    const errors: ProgressApiError[] = [];
    const call = within(
      20_000,
      changesSince(clientFor(user.accessToken, upstream.url), null, {}, {
        ...fast,
        timeoutMs: TIMEOUT_MS,
        onRetry: ({ error }) => errors.push(error),
      }),
    );
    call.catch(() => {}); // awaited below; a failure meanwhile must not go unhandled
    await waitUntil(
      "the first attempt at the server, its timer set for timeoutMs",
      () => upstream.hits() === 1 && pendingFor(timers, TIMEOUT_MS),
    );
    assert.equal(errors.length, 0, "the attempt ended before its time was up");
    timers.fire(TIMEOUT_MS);
    const page = await call;
    assert.deepEqual(page.changes, []);
    assert.equal(upstream.hits(), 2);
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof NetworkError, "a timed-out attempt fails like a network error");
  } finally {
    timers.restore();
    await upstream.shutdown();
  }
});

/**
 * The first `stalls` calls get 503 headers and the start of a body that never ends (a proxy that
 * hangs mid-answer); later calls reach the real function.
 */
function stallingErrorBodies(stalls: number) {
  const bodies: ReadableStreamDefaultController<Uint8Array>[] = [];
  const upstream = flakyFunctions(() => null);
  let hits = 0;
  const server = serveLocal(async (req) => {
    if (!new URL(req.url).pathname.startsWith("/functions/v1/")) return new Response(null, { status: 404 });
    if (++hits <= stalls) {
      const body = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('{"error": {"code": "service_unavailable", '));
          bodies.push(controller);
        },
      });
      return new Response(body, { status: 503, headers: { "content-type": "application/json" } });
    }
    const url = new URL(req.url);
    return await fetch(`${upstream.url}${url.pathname}${url.search}`, {
      method: req.method,
      headers: req.headers,
    });
  });
  return {
    url: server.url,
    hits: () => hits,
    shutdown: async () => {
      for (const body of bodies) {
        try {
          body.close();
        } catch { /* the client cancelled it */ }
      }
      await Promise.all([server.shutdown(), upstream.shutdown()]);
    },
  };
}

/** The promise, or a failure after `ms` (a call that hangs must fail its test, not hang the suite). */
async function within<T>(ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test("timeout: an error answer whose body never ends is cut off after timeoutMs and retried", async () => {
  // As above: the limit is long (also the retry's, which reaches the real function), and the body
  // read's timer (set for what is left of the attempt's timeoutMs once the 503's headers are in) is run
  // by hand. functions-js clears its own timer as those headers arrive, in the same run of promise
  // callbacks that sets the body's, so once `answered` counts them, the one long timer pending is the
  // body's; the error's message says it was that one which ended the attempt.
  const user = await createTestUser();
  const upstream = stallingErrorBodies(1);
  const TIMEOUT_MS = 60_000;
  let answered = 0;
  const client = createClient(upstream.url, testEnv().anonKey, {
    accessToken: () => Promise.resolve(user.accessToken),
    global: {
      fetch: async (input: RequestInfo | URL, init?: RequestInit) => {
        const response = await fetch(input, init);
        if (
          new URL(input instanceof Request ? input.url : String(input)).pathname.startsWith("/functions/v1/")
        ) {
          answered++;
        }
        return response;
      },
    },
  });
  const timers = watchTimers();
  const bodyTimers = () => timers.pending().filter((ms) => ms > TIMEOUT_MS - 20_000 && ms <= TIMEOUT_MS);
  try {
    const errors: ProgressApiError[] = [];
    const call = within(
      20_000,
      changesSince(client, null, {}, {
        ...fast,
        timeoutMs: TIMEOUT_MS,
        onRetry: ({ error }) => errors.push(error),
      }),
    );
    call.catch(() => {}); // awaited below; a failure meanwhile must not go unhandled
    await waitUntil(
      "the 503's headers at the client, its body's read under a timer",
      () => answered === 1 && bodyTimers().length === 1,
    );
    assert.equal(errors.length, 0, "the body's read ended before its time was up");
    timers.fire(bodyTimers()[0]);
    const page = await call;
    assert.deepEqual(page.changes, []);
    assert.equal(upstream.hits(), 2);
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof NetworkError, `a stalled answer fails like a network error: ${errors[0]}`);
    assert.equal(errors[0].code, "network_error");
    assert.match(errors[0].message, /HTTP 503 answer did not finish within 60000 ms/);
  } finally {
    timers.restore();
    await upstream.shutdown();
  }
});

/**
 * A fetch that hands on each answer of /functions/v1/ with its body read through a stream of the
 * test's (read only when asked: highWaterMark 0): `stuckInBody()` is true once the caller has read
 * the body's first bytes and is waiting in a read for more that have not come (the read it started is
 * pending at the connection), `cancelled()` once it gave that read up.
 */
function watchedBodyReads() {
  let delivered = 0;
  let waiting = false;
  let cancelled = false;
  const watchedFetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const response = await fetch(input, init);
    const path = new URL(input instanceof Request ? input.url : String(input)).pathname;
    if (!response.body || !path.startsWith("/functions/v1/")) return response;
    const reader = response.body.getReader();
    const body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        waiting = true;
        try {
          const chunk = await reader.read();
          if (chunk.done) return controller.close();
          delivered += chunk.value.byteLength;
          controller.enqueue(chunk.value);
        } finally {
          waiting = false;
        }
      },
      cancel(reason) {
        cancelled = true;
        return reader.cancel(reason);
      },
    }, { highWaterMark: 0 });
    return new Response(body, {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  };
  return { watchedFetch, stuckInBody: () => delivered > 0 && waiting, cancelled: () => cancelled };
}

Deno.test("abort: the caller's signal also ends a call stuck reading an error answer's body", async () => {
  // The abort comes when the client is provably inside the error body's read: the 503's headers are
  // in (functions-js has handed the answer over), the body's first bytes have been read, and a read
  // for the rest is pending on a server that never sends it. functions-js has let go of the caller's
  // signal by then (its listener goes with the headers), so only the body read's own watch of the
  // signal can end the call before the 60 s timeout; the 20 s guard tells the two apart.
  const user = await createTestUser();
  const upstream = stallingErrorBodies(100);
  const reads = watchedBodyReads();
  const client = createClient(upstream.url, testEnv().anonKey, {
    accessToken: () => Promise.resolve(user.accessToken),
    global: { fetch: reads.watchedFetch },
  });
  try {
    const controller = new AbortController();
    const call = rejection(within(
      20_000,
      listProgress(client, {}, { timeoutMs: 60_000, signal: controller.signal }),
    ));
    await waitUntil("the client waiting in the error body's read for the rest", reads.stuckInBody);
    assert.equal(reads.cancelled(), false);
    controller.abort(new Error("the reader closed the app"));
    const e = await call;
    assert.ok(e instanceof NetworkError);
    assert.equal(e.code, "aborted");
    assert.match(e.message, /the reader closed the app/);
    assert.ok(reads.cancelled(), "the body's read was given up");
    assert.equal(upstream.hits(), 1);
  } finally {
    await upstream.shutdown();
  }
});

Deno.test("abort: the caller's signal stops the call at once, the attempt in flight and every retry", async () => {
  const user = await createTestUser();
  const upstream = hangingFunctions(100);
  try {
    const controller = new AbortController();
    let retries = 0;
    // Guards (20 s) against waiting out the 60 s timeout or backoff; the code says what ended each.
    const call = rejection(within(
      20_000,
      listProgress(clientFor(user.accessToken, upstream.url), {}, {
        retry: { attempts: 4, baseDelayMs: 10_000, maxDelayMs: 10_000 },
        timeoutMs: 60_000,
        signal: controller.signal,
        onRetry: () => retries++,
      }),
    ));
    await waitUntil("the attempt in flight", () => upstream.hits() === 1);
    controller.abort(new Error("the reader closed the app"));
    const e = await call;
    assert.ok(e instanceof NetworkError);
    assert.equal(e.code, "aborted");
    assert.match(e.message, /the reader closed the app/);
    assert.deepEqual([upstream.hits(), retries], [1, 0], "no retry after the abort");

    // Aborted while waiting to retry: the wait ends at once too.
    const second = new AbortController();
    const waiting = rejection(within(
      20_000,
      listProgress(clientFor(user.accessToken, upstream.url), {}, {
        retry: { attempts: 4, baseDelayMs: 60_000, maxDelayMs: 60_000 },
        random: () => 1,
        timeoutMs: 100,
        signal: second.signal,
        // Aborted while the 60 s backoff sleep is under way.
        onRetry: () => void setTimeout(() => second.abort(new Error("gone")), 100),
      }),
    ));
    const e2 = await waiting;
    assert.equal(e2.code, "aborted");
  } finally {
    await upstream.shutdown();
  }
});

Deno.test({
  name: "subscribeToProgress: a hung catch-up attempt is retried inside the service's request timeout",
  ...noSanitize,
  fn: async () => {
    const user = await createTestUser();
    const series = seriesId("hung-catchup");
    await updateProgress(clientFor(user.accessToken), write({ series_id: series, chapter: 5 }));
    const upstream = hangingFunctions(1);
    const client = clientFor(user.accessToken, upstream.url);
    const seen: ProgressChange[] = [];
    const retried: ProgressApiError[] = [];
    const logged: string[] = [];
    // The service waits 4 s for a call; 4 attempts share it (1 s each), so the first, hung attempt
    // is abandoned and retried by the API client within the same call.
    const sub = subscribeToProgress(client, user.id, (change) => seen.push(change), {
      accessToken: user.accessToken,
      requestTimeoutMs: 4_000,
      api: {
        retry: { attempts: 4, baseDelayMs: 1, maxDelayMs: 5 },
        onRetry: ({ error }) => retried.push(error),
      },
      backoff: { initialMs: 60_000, maxMs: 60_000 },
      log: (line) => logged.push(line),
    });
    try {
      await waitUntil(
        "the catch-up to bring the stored row",
        () => seen.some((c) => c.row.series_id === series),
      );
      assert.equal(retried.length, 1, "one attempt timed out and was retried");
      assert.ok(retried[0] instanceof NetworkError);
      // The hung attempt and its retry; a third call when that round began before the join
      // completed (only a round that began after the join catches the link up).
      assert.ok([2, 3].includes(upstream.hits()), `hits ${upstream.hits()}`);
      assert.deepEqual(
        logged.filter((l) => /"(catchup|poll)_failed"/.test(l)),
        [],
        "no catch-up round failed",
      );
    } finally {
      await sub.unsubscribe();
      await client.realtime.disconnect();
      await upstream.shutdown();
    }
  },
});

Deno.test({
  name: "subscribeToProgress: the api signal ends the subscription (as unsubscribe does)",
  ...noSanitize,
  fn: async () => {
    const user = await createTestUser();
    const client = clientFor(user.accessToken);
    const stop = new AbortController();
    const api = createProgressApi(client, { signal: stop.signal });
    const sub = api.subscribeToProgress(user.id, () => {}, { accessToken: user.accessToken, log: () => {} });
    try {
      await waitUntil("the subscription to go live", () => sub.status === "live");
      stop.abort(new Error("the screen closed"));
      await waitUntil(
        "the subscription to end",
        () => sub.status === "offline" && sub.service.stats().links === 0,
      );
      assert.equal(client.getChannels().length, 0, "its channel was removed");

      // Already aborted: the subscription ends at once.
      const late = api.subscribeToProgress(user.id, () => {}, {
        accessToken: user.accessToken,
        log: () => {},
      });
      await waitUntil("the late subscription to end", () => late.service.stats().links === 0);
      assert.equal(late.status, "offline");
    } finally {
      await sub.unsubscribe();
      await client.realtime.disconnect();
    }
  },
});

Deno.test({
  name:
    "subscribeToProgress hears a write another device made through updateProgress; catch-up goes through the API",
  ...noSanitize,
  fn: async () => {
    const user = await createTestUser();
    const functionCalls: string[] = [];
    const listener = clientFor(user.accessToken, testEnv().url, (url) => {
      if (url.includes("/functions/v1/")) functionCalls.push(new URL(url).pathname);
    });
    const writer = clientFor(user.accessToken);
    const seen: ProgressChange[] = [];
    const series = seriesId("live");
    const sub = subscribeToProgress(listener, user.id, (change) => seen.push(change), {
      accessToken: user.accessToken,
      log: () => {},
    });
    try {
      await waitUntil("the subscription to go live", () => sub.status === "live");
      assert.ok(
        functionCalls.includes("/functions/v1/progress/changes"),
        "catch-up called the API's changes route",
      );

      const sent = await updateProgress(
        writer,
        write({ series_id: series, chapter: 42, device_id: "phone" }),
      );
      await waitUntil("the write to arrive", () => seen.some((c) => c.row.series_id === series));
      const change = seen.find((c) => c.row.series_id === series)!;
      assert.equal(change.kind, "upsert");
      assert.deepEqual(change.row, sent.progress, "the live row equals the row the writer got back");
    } finally {
      await sub.unsubscribe();
      assert.equal(sub.service.stats().links, 0);
      await listener.realtime.disconnect();
      await writer.realtime.disconnect();
    }
  },
});

Deno.test({
  name: "subscribeToProgress twice on one client: both go live on one shared channel and both hear a write",
  ...noSanitize,
  fn: async () => {
    const user = await createTestUser();
    const listener = clientFor(user.accessToken);
    const writer = clientFor(user.accessToken);
    const seenFirst: ProgressChange[] = [];
    const seenSecond: ProgressChange[] = [];
    const series = seriesId("twice");
    const first = subscribeToProgress(listener, user.id, (c) => seenFirst.push(c), {
      accessToken: user.accessToken,
      log: () => {},
    });
    const second = subscribeToProgress(listener, user.id, (c) => seenSecond.push(c), { log: () => {} });
    try {
      assert.equal(first.service, second.service, "one service per client");
      await waitUntil(
        "both subscriptions to go live",
        () => first.status === "live" && second.status === "live",
      );
      assert.equal(listener.getChannels().length, 1, "one realtime-js channel for the topic");

      await updateProgress(writer, write({ series_id: series, chapter: 7, device_id: "tablet" }));
      await waitUntil(
        "the write to reach both",
        () =>
          [seenFirst, seenSecond].every((seen) =>
            seen.some((c) => c.row.series_id === series && c.row.chapter === 7)
          ),
      );

      await first.unsubscribe();
      assert.equal(second.status, "live", "the other subscription keeps the shared channel");
      assert.equal(second.service.stats().links, 1);
    } finally {
      await first.unsubscribe();
      await second.unsubscribe();
      assert.equal(second.service.stats().links, 0, "the last unsubscribe closes the shared service");
      await listener.realtime.disconnect();
      await writer.realtime.disconnect();
    }
  },
});

Deno.test("a device whose clock is 3 hours ahead learns the server's clock and no longer drags the reader back", async () => {
  const user = await createTestUser();
  const client = clientFor(user.accessToken);
  const HOURS_AHEAD = 3 * 3_600_000;
  const clock = new ServerClock({ deviceNow: () => Date.now() + HOURS_AHEAD });
  const ereader = createProgressApi(client, { clock });
  const phone = createProgressApi(client);
  const now = Date.now();
  // The phone read to chapter 30 a minute ago; the e-reader (clock 3 h ahead) was at chapter 5 two
  // minutes ago and sends that now.
  const [dragged, corrected] = [seriesId("skew-raw"), seriesId("skew-fixed")];
  for (const s of [dragged, corrected]) {
    await phone.updateProgress(
      write({
        series_id: s,
        chapter: 30,
        device_id: "phone",
        updated_at: new Date(now - 60_000).toISOString(),
      }),
    );
  }
  const ereaderReadAt = clock.deviceNow() - 120_000; // the e-reader's own stamp

  // Uncorrected, its stamp lies hours in the future: the server clamps it to now() and it wins.
  const { result: raw, ms } = await timed(() =>
    ereader.updateProgress(
      write({
        series_id: dragged,
        chapter: 5,
        device_id: "ereader",
        updated_at: new Date(ereaderReadAt).toISOString(),
      }),
    )
  );
  assert.equal(raw.won, true, "the problem this clock exists for");
  // That call's answer taught the clock the server's time (X-Server-Time): 3 h behind the device, to
  // within the call's round trip.
  assert.ok(
    Math.abs(clock.offsetMs + HOURS_AHEAD) <= ms + 1,
    `offset ${clock.offsetMs}, round trip ${ms} ms`,
  );
  const fixed = await ereader.updateProgress(
    write({
      series_id: corrected,
      chapter: 5,
      device_id: "ereader",
      updated_at: new Date(ereaderReadAt + clock.offsetMs).toISOString(),
    }),
  );
  assert.equal(fixed.won, false, "stamped with the server's clock, the older reading loses");
  assert.equal(fixed.progress.chapter, 30);
});

Deno.test("after a write the server re-keyed to its now, api.now() dates the device's next positions after that key", async () => {
  // A chaos run's case: an e-reader an hour ahead writes (stored at the server's now, K), learns the
  // server's clock from the answer, and dates its next positions with api.now(). One dated K (same
  // millisecond, same device) would meet the stored key with another position. The device clock is
  // held still here so that the corrected clock reads exactly K, as a fast answer can leave it.
  const user = await createTestUser();
  let device = Date.now() + 3_600_000;
  const clock = new ServerClock({ deviceNow: () => device });
  const ereader = createProgressApi(clientFor(user.accessToken), { clock });
  const series = seriesId("rekeyed");
  const first = await ereader.updateProgress(
    write({
      series_id: series,
      chapter: 1,
      device_id: "ereader",
      updated_at: new Date(device).toISOString(),
    }),
  );
  const key = Date.parse(first.progress.updated_at);
  assert.ok(key < device - 3_000_000, "stored at the server's now, not the device's hour ahead");
  device = key - clock.offsetMs; // the corrected clock now reads K
  assert.equal(clock.deviceNow() + clock.offsetMs, key);
  for (const chapter of [2, 3, 4]) {
    const stamp = ereader.now();
    assert.ok(
      Date.parse(stamp) > key,
      `api.now() ${stamp} after the stored key ${first.progress.updated_at}`,
    );
    const next = await ereader.updateProgress(
      write({ series_id: series, chapter, device_id: "ereader", updated_at: stamp }),
    );
    assert.deepEqual([next.won, next.progress.chapter, next.progress.updated_at], [true, chapter, stamp]);
  }
});

Deno.test("a device a few seconds ahead dates the page it turns after the correction after the page it turned before", async () => {
  // A phone 4 s ahead (within the server's 5 s tolerance, so its writes are stored under their own
  // dates) stamps a page turn before any answer; an answer (here a changes read) then teaches the clock
  // the server's time; the reader turns one more page. The two are sent in order. Dated by the
  // corrected clock alone, the later page would lie about 4 s before the earlier one, be refused as
  // older than the device's own stored write ('self') and leave the reader a page back.
  const user = await createTestUser();
  const AHEAD_MS = 4_000;
  const clock = new ServerClock({ deviceNow: () => Date.now() + AHEAD_MS });
  const phone = createProgressApi(clientFor(user.accessToken), { clock });
  const series = seriesId("few-seconds-ahead");
  const page1 = phone.now(); // by the device's own clock, 4 s ahead
  const { ms } = await timed(() => phone.changesSince(null));
  assert.ok(
    Math.abs(clock.offsetMs + AHEAD_MS) <= ms + 1,
    `the answer corrected the clock (offset ${clock.offsetMs}, round trip ${ms} ms)`,
  );
  const page2 = phone.now();
  assert.ok(Date.parse(page2) > Date.parse(page1), `page 2 (${page2}) dated after page 1 (${page1})`);
  const first = await phone.updateProgress(
    write({ series_id: series, chapter: 1, device_id: "phone", updated_at: page1 }),
  );
  assert.deepEqual([first.won, first.progress.updated_at], [true, page1], "page 1 stored under its own date");
  const second = await phone.updateProgress(
    write({ series_id: series, chapter: 2, device_id: "phone", updated_at: page2 }),
  );
  assert.deepEqual([second.won, second.progress.chapter], [true, 2], "the later page is where the reader is");
});

Deno.test("a phone whose clock is set right while the app runs keeps winning with its next page", async () => {
  // The phone's clock runs an hour ahead and the client has learnt that from an answer; then NTP sets
  // the clock right. The reader turns a page on the tablet, then one more on the phone: the phone's
  // page is the newest and must be stored (dated by the old correction it was an hour early and lost).
  const user = await createTestUser();
  const client = clientFor(user.accessToken);
  let phoneAheadMs = 3_600_000;
  const clock = new ServerClock({
    deviceNow: () => Date.now() + phoneAheadMs,
    monotonicNow: () => performance.now(),
  });
  const phone = createProgressApi(client, { clock });
  const tablet = createProgressApi(client);
  const series = seriesId("clock-set-right");
  const at = (api: typeof phone) => api.now();
  const { ms } = await timed(() =>
    phone.updateProgress(
      write({ series_id: series, chapter: 12, page: 30, device_id: "phone", updated_at: at(phone) }),
    )
  );
  assert.ok(
    Math.abs(clock.offsetMs + 3_600_000) <= ms + 1,
    `learnt offset ${clock.offsetMs}, round trip ${ms} ms`,
  );
  phoneAheadMs = 0; // NTP
  const onTablet = await tablet.updateProgress(
    write({ series_id: series, chapter: 12, page: 35, device_id: "tablet", updated_at: at(tablet) }),
  );
  // The phone's next page is turned after the tablet's on the phone's clock, waited for there rather
  // than a 5 ms pause: the phone's estimate of the server's clock may be off by up to a round trip.
  // (clock.now(), not api.now(): a stamp taken moves the next one on.)
  const tabletAt = Date.parse(onTablet.progress.updated_at);
  await waitUntil("the phone's clock past the tablet's page", () => clock.now() > tabletAt);
  const next = await phone.updateProgress(
    write({ series_id: series, chapter: 12, page: 36, device_id: "phone", updated_at: at(phone) }),
  );
  assert.deepEqual([next.won, next.conflict, next.progress.page, next.progress.device_id], [
    true,
    null,
    36,
    "phone",
  ]);
});

Deno.test("five page turns stamped with api.now() and sent at once end at the last page", async () => {
  // A phone sending each page turn without waiting for the previous answer: in one millisecond they
  // would share a key, and under one key arrival order decides (the third of them is even refused).
  const user = await createTestUser();
  const device = Date.now(); // held still: every turn in the same millisecond
  const phone = createProgressApi(clientFor(user.accessToken), {
    clock: new ServerClock({ deviceNow: () => device }),
  });
  const series = seriesId("rapid-turns");
  const turns = [1, 2, 3, 4, 5].map((page) =>
    write({ series_id: series, chapter: 1, page, device_id: "phone", updated_at: phone.now() })
  );
  assert.equal(new Set(turns.map((t) => t.updated_at)).size, 5, "five instants");
  await Promise.all(turns.map((turn) => phone.updateProgress(turn)));
  assert.equal((await phone.getProgress(series))?.page, 5);
});

Deno.test("a page queued offline by a phone an hour ahead loses to the tablet's later page, also after a stamp taken before the first answer", async () => {
  const user = await createTestUser();
  const client = clientFor(user.accessToken);
  const clock = new ServerClock({
    deviceNow: () => Date.now() + 3_600_000,
    monotonicNow: () => performance.now(),
  });
  const phone = createProgressApi(client, { clock });
  const tablet = createProgressApi(client);
  const series = seriesId("stamp-before-answer");
  const turn = (page: number, device_id: string, updated_at: string) =>
    write({ series_id: series, chapter: 1, page, device_id, updated_at });
  // Stamped by the phone's own clock (nothing learnt yet); its answer teaches the clock.
  const { ms } = await timed(() => phone.updateProgress(turn(10, "phone", phone.now())));
  const queued = turn(20, "phone", phone.now()); // read offline, sent later
  // Dated by what the answer taught (server time, to within its round trip), not an hour ahead.
  const queuedAt = Date.parse(queued.updated_at!);
  assert.ok(
    queuedAt - Date.parse(tablet.now()) <= ms + 1,
    `queued at ${queued.updated_at}, ahead of the server by more than the round trip (${ms} ms)`,
  );
  // The tablet's page is turned later: once its clock has passed the queued stamp (the estimate may
  // be ahead of the server by up to half a round trip, which is long on a loaded machine).
  await waitUntil("the tablet's clock past the queued stamp", () => Date.parse(tablet.now()) > queuedAt);
  await tablet.updateProgress(turn(80, "tablet", tablet.now()));
  const late = await phone.updateProgress(queued);
  assert.deepEqual([late.won, late.conflict, late.progress.page], [false, "stale", 80]);
});

Deno.test("a reset without its own stamp is dated by the client's server clock, not the device's", async () => {
  const user = await createTestUser();
  const sent: string[] = [];
  // A clock that has learnt (e.g. saved from an earlier session) that the server runs 90 s ahead.
  const clock = new ServerClock({ offsetMs: 90_000 });
  const api = createProgressApi(clientFor(user.accessToken, testEnv().url, (url) => sent.push(url)), {
    clock,
  });
  const before = clock.now();
  const { ms } = await timed(() => api.resetProgress(seriesId("reset-stamp"), { device_id: "ereader" }));
  const stamp = Date.parse(new URL(sent[0]).searchParams.get("updated_at") ?? "");
  // Stamped while the call was out (the answer then corrects the clock: its X-Server-Time proves the
  // saved offset wrong).
  assert.ok(
    stamp >= before && stamp <= before + ms + 1,
    `stamp ${new Date(stamp).toISOString()}, call ${ms} ms`,
  );
});

Deno.test("createProgressApi learns the server's clock by default and stamps with now()", async () => {
  const user = await createTestUser();
  const HOUR = 3_600_000;
  // A server an hour ahead of this device: a proxy shifts every answer's X-Server-Time.
  const server = serveLocal(async (req) => {
    const url = new URL(req.url);
    const upstream = await fetch(`${testEnv().url}${url.pathname}${url.search}`, {
      method: req.method,
      headers: req.headers,
    });
    const headers = new Headers(upstream.headers);
    headers.set("x-server-time", new Date(Date.parse(headers.get("x-server-time")!) + HOUR).toISOString());
    return new Response(await upstream.arrayBuffer(), { status: upstream.status, headers });
  });
  try {
    const api = createProgressApi(clientFor(user.accessToken, server.url));
    assert.equal(api.clock.offsetMs, 0, "no answer yet: the device's own clock");
    const { ms } = await timed(() => api.listProgress({ limit: 1 }));
    assert.ok(
      Math.abs(api.clock.offsetMs - HOUR) <= ms + 1,
      `offset ${api.clock.offsetMs}, round trip ${ms} ms`,
    );
    const [from, stamped, to] = [Date.now(), Date.parse(api.now()), Date.now()];
    assert.ok(stamped >= from + HOUR - ms - 1 && stamped <= to + HOUR + ms + 1, api.now());
  } finally {
    await server.shutdown();
  }
});

Deno.test("every answer carries X-Server-Time, exposed to browsers", async () => {
  const user = await createTestUser();
  const before = Date.now();
  const res = await fetch(`${testEnv().url}/functions/v1/progress?limit=1`, {
    headers: { authorization: `Bearer ${user.accessToken}`, origin: "https://reader.example" },
  });
  await res.body?.cancel();
  const serverTime = Date.parse(res.headers.get("x-server-time") ?? "");
  assert.ok(
    serverTime >= before - 1_000 && serverTime <= Date.now() + 1_000,
    res.headers.get("x-server-time") ?? "none",
  );
  assert.match(res.headers.get("access-control-expose-headers") ?? "", /x-server-time/);
  const refused = await fetch(`${testEnv().url}/functions/v1/progress`, {
    headers: { origin: "https://reader.example" },
  });
  await refused.body?.cancel();
  assert.equal(refused.status, 401);
  assert.ok(refused.headers.get("x-server-time"), "errors carry it too");
});

Deno.test("a batch answer with a result missing is refused as invalid_response, never half-applied", async () => {
  const user = await createTestUser();
  const upstream = flakyFunctions(() => Response.json({ results: [] }));
  try {
    const e = await rejection(
      updateProgressBatch(clientFor(user.accessToken, upstream.url), [
        write({ series_id: seriesId("short-a") }),
        write({ series_id: seriesId("short-b") }),
      ], fast),
    );
    assert.equal(e.code, "invalid_response");
    assert.equal(upstream.hits(), 1, "not retried: the same request would get the same answer");
  } finally {
    await upstream.shutdown();
  }
});

Deno.test({
  name:
    "subscribeToProgress with an accessToken on a session-less client: catch-up and polling use that token",
  ...noSanitize,
  fn: async () => {
    // The README's server-side / custom-auth shape: a client without a session, the user's token
    // given to the subscription. Its catch-up must read the user's changes, not call as anon.
    const user = await createTestUser();
    const env = testEnv();
    const sentTokens: (string | null)[] = []; // Authorization of each changes request
    const sessionless = createClient(env.url, env.anonKey, {
      auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      global: {
        fetch: (input: RequestInfo | URL, init?: RequestInit) => {
          const href = input instanceof Request ? input.url : String(input);
          if (href.includes("/functions/v1/progress/changes")) {
            sentTokens.push(new Headers(init?.headers).get("Authorization"));
          }
          return fetch(input, init);
        },
      },
    });
    const writer = clientFor(user.accessToken);
    const earlier = seriesId("before-subscribing");
    await updateProgress(writer, write({ series_id: earlier, chapter: 3, device_id: "phone" }));
    const seen: ProgressChange[] = [];
    const logs: Record<string, unknown>[] = [];
    const sub = subscribeToProgress(sessionless, user.id, (c) => seen.push(c), {
      accessToken: user.accessToken,
      log: (line) => logs.push(JSON.parse(line)),
    });
    try {
      await waitUntil(
        "the earlier write to arrive by catch-up",
        () => seen.some((c) => c.row.series_id === earlier),
      );
      await waitUntil("live", () => sub.status === "live");
      assert.deepEqual(logs.filter((l) => String(l.event).endsWith("_failed")), []);
      assert.ok(sentTokens.length > 0);
      assert.deepEqual(new Set(sentTokens), new Set([`Bearer ${user.accessToken}`]));
      // setAccessToken changes what the next call sends, too.
      const fresh = await user.newAccessToken(3600);
      await sub.service.setAccessToken(fresh);
      assert.equal(sub.service.accessToken, fresh);
    } finally {
      await sub.unsubscribe();
      await sessionless.realtime.disconnect();
      await writer.realtime.disconnect();
    }
  },
});

Deno.test({
  name:
    "changesLimit and changesSince's limit: the client's bound is the function's (500 read live, 501 refused here as there)",
  ...noSanitize,
  fn: async () => {
    const user = await createTestUser();
    const max = PROGRESS_LIMITS.changesMax;
    const changesUrls: string[] = [];
    const client = clientFor(user.accessToken, testEnv().url, (url) => {
      if (url.includes("/functions/v1/progress/changes")) changesUrls.push(url);
    });
    // The function: a page of `max` is answered, one more is a 422 (asked without the typed client,
    // which refuses it).
    assert.deepEqual((await changesSince(client, null, { limit: max })).changes, []);
    const { error } = await client.functions.invoke(`progress/changes?limit=${max + 1}`, { method: "GET" });
    const answer = (error as { context?: unknown } | null)?.context;
    assert.ok(answer instanceof Response, `an HTTP answer (got ${error})`);
    assert.deepEqual([answer.status, (await answer.json()).error.code], [422, "validation_failed"]);
    // The client: one more is refused at once, by changesSince before any request (was: sent, and that
    // 422) ...
    await assert.rejects(
      changesSince(client, null, { limit: max + 1 }),
      (error: Error) =>
        error instanceof RangeError &&
        error.message ===
          `changesSince option limit must be a whole number from 1 to ${max} (got ${max + 1})`,
    );
    assert.equal(changesUrls.length, 2, "the refused changesSince sent nothing");
    // ... and by subscribeToProgress (was: a service whose every catch-up and poll got that 422).
    assert.throws(
      () =>
        subscribeToProgress(client, user.id, () => {}, {
          accessToken: user.accessToken,
          changesLimit: max + 1,
        }),
      (error: Error) =>
        error instanceof RangeError &&
        error.message ===
          `subscribeToProgress option changesLimit must be a whole number from 1 to ${max} (got ${max + 1})`,
    );
    assert.equal(client.getChannels().length, 0);
    // ... and `max` reads live.
    const outcomes: string[] = [];
    const sub = subscribeToProgress(client, user.id, () => {}, {
      accessToken: user.accessToken,
      changesLimit: max,
      log: () => {},
    });
    sub.onRead((outcome) => outcomes.push(outcome));
    try {
      await waitUntil("the subscription to go live", () => sub.status === "live");
      assert.ok(!outcomes.includes("failed"), outcomes.join());
      const read = changesUrls.slice(2); // after the two direct calls above
      assert.ok(read.length > 0);
      for (const url of read) assert.equal(new URL(url).searchParams.get("limit"), String(max), url);
    } finally {
      await sub.unsubscribe();
      await client.realtime.disconnect();
    }
  },
});

Deno.test("listProgress's limit: the client's bound is the function's (200 read, 201 refused here as there)", async () => {
  const user = await createTestUser();
  const max = PROGRESS_LIMITS.listMax;
  const listUrls: string[] = [];
  const client = clientFor(user.accessToken, testEnv().url, (url) => {
    if (new URL(url).pathname === "/functions/v1/progress") listUrls.push(url);
  });
  // The function: a page of `max` is answered, one more is a 422 (asked without the typed client,
  // which refuses it).
  assert.deepEqual((await listProgress(client, { limit: max })).items, []);
  assert.equal(new URL(listUrls[0]).searchParams.get("limit"), String(max));
  const { error } = await client.functions.invoke(`progress?limit=${max + 1}`, { method: "GET" });
  const answer = (error as { context?: unknown } | null)?.context;
  assert.ok(answer instanceof Response, `an HTTP answer (got ${error})`);
  assert.deepEqual([answer.status, (await answer.json()).error.code], [422, "validation_failed"]);
  // The client: one more is refused at once, before any request (was: sent, and that 422).
  await assert.rejects(
    listProgress(client, { limit: max + 1 }),
    (error: Error) =>
      error instanceof RangeError &&
      error.message === `listProgress option limit must be a whole number from 1 to ${max} (got ${max + 1})`,
  );
  assert.equal(listUrls.length, 2, "the refused listProgress sent nothing");
});

/**
 * Runs `call` and says how long it took by the test's clock: an offset learnt from its answer lies
 * within that of the true one (the server's reading was taken while the call was out).
 */
async function timed<T>(call: () => Promise<T>): Promise<{ result: T; ms: number }> {
  const started = Date.now();
  const result = await call();
  return { result, ms: Date.now() - started };
}
