// shared/http/body.ts: what a body that ends before it is complete, stops arriving or takes too long
// in all is answered with. Over real HTTP: tests/functions/progress_errors.test.ts ("400: a body cut
// short", "408") and progress_handler.test.ts ("408").

import assert from "node:assert/strict";
import { hasBody, readBodyLimited, readJsonBody } from "../../../shared/http/body.ts";
import { HttpError } from "../../../shared/http/errors.ts";

/** The real setTimeout, for the bodies below that drip: trackTimers counts the body reader's own only. */
const realSetTimeout = globalThis.setTimeout;

/** A JSON POST whose body hands over `chunks` and then fails, as a dropped connection does. */
function cutOff(chunks: string[]): Request {
  const queue = chunks.map((c) => new TextEncoder().encode(c));
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      const next = queue.shift();
      if (next) controller.enqueue(next);
      else controller.error(new Error("connection closed before message completed"));
    },
  });
  return new Request("http://localhost/progress/batch", {
    method: "POST",
    headers: { "content-type": "application/json", "transfer-encoding": "chunked" },
    body,
  });
}

Deno.test("a body that fails midway: 400 invalid_json, received_bytes counts every byte handed over", async () => {
  for (
    const [chunks, received] of [
      [[], 0],
      [['{"writes":['], 11],
      [['{"writes":[', '{"series_id"', ": "], 25],
    ] as const
  ) {
    const error = await readJsonBody(cutOff([...chunks])).then(
      () => assert.fail("a cut-off body was read"),
      (e: unknown) => e,
    );
    assert.ok(error instanceof HttpError, String(error));
    assert.equal(error.status, 400);
    assert.equal(error.code, "invalid_json");
    assert.match(error.message, /ended before it was complete/);
    assert.deepEqual(error.details, {
      reason: "connection closed before message completed",
      received_bytes: received,
    }, JSON.stringify(chunks));
  }
});

Deno.test("a body that stops arriving: 408 request_timeout after the idle bound, and its stream is cancelled", async () => {
  let cancelled: unknown = undefined;
  const first = new TextEncoder().encode('{"writes":[');
  let pulls = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      // One chunk, then nothing more ever (a pull that never enqueues leaves the read pending).
      if (pulls++ === 0) controller.enqueue(first);
      return new Promise(() => {});
    },
    cancel(reason) {
      cancelled = reason;
    },
  });
  const req = new Request("http://localhost/progress/batch", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
  const error = await readJsonBody(req, { idleTimeoutMs: 50 }).then(
    () => assert.fail("a stalled body was read"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof HttpError, String(error));
  assert.deepEqual([error.status, error.code], [408, "request_timeout"]);
  assert.deepEqual(error.details, {
    bound: "idle",
    idle_timeout_ms: 50,
    total_timeout_ms: 30_000,
    received_bytes: first.byteLength,
  });
  assert.deepEqual(error.headers, { connection: "close" });
  assert.ok(cancelled instanceof Error, "the body stream was cancelled: nothing goes on reading it");
  assert.equal(body.locked, false, "the reader was released");
});

/**
 * A JSON POST whose body is `{"writes":[` and then one space every 2 ms (a real timer each), never
 * ending: valid JSON so far, and never idle for long. `sent()` counts the bytes handed to the stream.
 */
function dripping() {
  let sent = 0;
  let cancelled: unknown = undefined;
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      if (sent > 0) await new Promise((resolve) => realSetTimeout(resolve, 2));
      const chunk = new TextEncoder().encode(sent === 0 ? '{"writes":[' : " ");
      sent += chunk.byteLength;
      controller.enqueue(chunk);
    },
    cancel(reason) {
      cancelled = reason;
    },
  });
  const req = new Request("http://localhost/progress/batch", {
    method: "POST",
    headers: { "content-type": "application/json", "transfer-encoding": "chunked" },
    body,
  });
  return { req, body, sent: () => sent, cancelled: () => cancelled };
}

Deno.test("a body that keeps dripping under the idle bound: 408 request_timeout after the total bound, stream cancelled", async () => {
  const drip = dripping();
  // 200 bytes at 2 ms each take 400 ms or more: the 50 ms total bound ends the body well before its
  // 413, which is what a reader with the idle bound only (60 s here) answers.
  const error = await readJsonBody(drip.req, { idleTimeoutMs: 60_000, totalTimeoutMs: 50, maxBytes: 200 })
    .then(
      () => assert.fail("a dripping body was read"),
      (e: unknown) => e,
    );
  assert.ok(error instanceof HttpError, String(error));
  assert.deepEqual([error.status, error.code], [408, "request_timeout"], error.message);
  assert.match(error.message, /did not arrive in full within 50 ms/);
  const { received_bytes, ...bounds } = error.details as { received_bytes: number };
  assert.deepEqual(bounds, { bound: "total", idle_timeout_ms: 60_000, total_timeout_ms: 50 });
  assert.ok(received_bytes > 11 && received_bytes <= drip.sent(), String(received_bytes));
  assert.deepEqual(error.headers, { connection: "close" });
  assert.ok(drip.cancelled() instanceof Error, "the body stream was cancelled");
  assert.equal(drip.body.locked, false, "the reader was released");
  // With no idle bound at all, the total bound alone ends it (null: no such bound, as in JSON).
  const alone = dripping();
  const e2 = await readJsonBody(alone.req, { idleTimeoutMs: Infinity, totalTimeoutMs: 50, maxBytes: 200 })
    .then(() => assert.fail("a dripping body was read"), (e: unknown) => e as HttpError);
  assert.equal(e2.status, 408, e2.message);
  assert.deepEqual(
    [(e2.details as Record<string, unknown>).bound, (e2.details as Record<string, unknown>).idle_timeout_ms],
    ["total", null],
  );
});

Deno.test("hasBody: a declared body is known from its Content-Length, unread; chunked, at its first byte", async () => {
  const declared = new Request("http://localhost/progress/series/s", {
    method: "DELETE",
    headers: { "content-length": "10" },
    body: new ReadableStream({ pull: () => new Promise(() => {}) }),
  });
  assert.equal(await hasBody(declared, { idleTimeoutMs: Infinity, totalTimeoutMs: Infinity }), true);
  assert.equal(declared.bodyUsed, false, "nothing of a declared body is read");
  // Chunked: the first byte tells, and the stream is cancelled (the rest never arrives here).
  let cancelled = false;
  let pulls = 0;
  const chunked = new Request("http://localhost/progress/series/s", {
    method: "DELETE",
    body: new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulls++ === 0) controller.enqueue(new TextEncoder().encode("{"));
        return new Promise(() => {});
      },
      cancel() {
        cancelled = true;
      },
    }),
  });
  assert.equal(await hasBody(chunked, { idleTimeoutMs: Infinity, totalTimeoutMs: Infinity }), true);
  assert.ok(cancelled, "the stream is cancelled at the first byte");
  for (
    const empty of [
      new Request("http://localhost/", { method: "DELETE" }),
      new Request("http://localhost/", {
        method: "DELETE",
        body: new ReadableStream({ start: (c) => c.close() }),
      }),
      new Request("http://localhost/", { method: "DELETE", headers: { "content-length": "0" }, body: "" }),
    ]
  ) {
    assert.equal(await hasBody(empty), false);
  }
});

/**
 * Counts the timers set through the global setTimeout (the one body.ts's bounds use) that are
 * still pending: neither fired nor cleared. Deno 2.9's test sanitizers do not report a pending timer,
 * and deno test does not wait for one, so a leaked idle timer would pass unseen.
 */
function trackTimers() {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const pending = new Set<ReturnType<typeof setTimeout>>();
  let started = 0;
  globalThis.setTimeout = ((fn: (...args: unknown[]) => void, ms?: number, ...args: unknown[]) => {
    started++;
    const id = realSet(() => {
      pending.delete(id);
      fn(...args);
    }, ms);
    pending.add(id);
    return id;
  }) as typeof setTimeout;
  globalThis.clearTimeout = ((id?: ReturnType<typeof setTimeout>) => {
    if (id !== undefined) pending.delete(id);
    realClear(id);
  }) as typeof clearTimeout;
  return {
    pending: () => pending.size,
    started: () => started,
    restore() {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
      for (const id of pending) realClear(id);
    },
  };
}

/** A JSON POST whose body hands over `chunks` (one per pull, each a task later) and then ends. */
function streamed(chunks: string[]): Request {
  const queue = chunks.map((c) => new TextEncoder().encode(c));
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      await new Promise((resolve) => queueMicrotask(() => resolve(null)));
      const next = queue.shift();
      if (next) controller.enqueue(next);
      else controller.close();
    },
  });
  return new Request("http://localhost/progress", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body,
  });
}

Deno.test("the bounds leave no timer behind: body read to its end, 413, a failed body, 408 (either bound), no body, hasBody", async () => {
  const timers = trackTimers();
  try {
    const long = { idleTimeoutMs: 60_000 };
    const cases: [string, () => Promise<unknown>, number | null][] = [
      ["read to its end", () => readJsonBody(streamed(['{"a":', "1", "}"]), long), null],
      [
        "413 while streaming",
        () => readJsonBody(streamed(['{"a":', '"xxxxxxxxxx"}']), { ...long, maxBytes: 8 }),
        413,
      ],
      ["400 a body that fails midway", () => readJsonBody(cutOff(['{"a":']), long), 400],
      [
        "408 a body that stops arriving",
        () => readJsonBody(cutOffNever('{"a":'), { idleTimeoutMs: 20 }),
        408,
      ],
      [
        "a reset with no body",
        () => readBodyLimited(new Request("http://localhost/", { method: "DELETE" }), 10, long),
        null,
      ],
      [
        "408 a body that keeps dripping (the total bound)",
        () => readJsonBody(dripping().req, { idleTimeoutMs: 60_000, totalTimeoutMs: 20, maxBytes: 10_000 }),
        408,
      ],
      [
        "read to its end under the total bound alone",
        () =>
          readJsonBody(streamed(['{"a":', "1", "}"]), { idleTimeoutMs: Infinity, totalTimeoutMs: 60_000 }),
        null,
      ],
      [
        "hasBody: the first byte of a chunked body",
        () => hasBody(streamed(["{", "}"]), long).then(() => {}),
        null,
      ],
      ["hasBody: an empty chunked body", () => hasBody(streamed([]), long).then(() => {}), null],
    ];
    for (const [what, run, status] of cases) {
      const before = timers.started();
      const outcome = await run().then(() => null, (e: unknown) => e instanceof HttpError ? e.status : e);
      assert.equal(outcome, status, what);
      if (what !== "a reset with no body") {
        assert.ok(timers.started() > before, `${what}: the bound was armed`);
      }
      assert.equal(timers.pending(), 0, `${what}: no timer is left pending`);
    }
  } finally {
    timers.restore();
  }
});

/** A JSON POST whose body hands over `first` and then nothing, ever (the read stays pending). */
function cutOffNever(first: string): Request {
  let pulls = 0;
  return new Request("http://localhost/progress", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: new ReadableStream<Uint8Array>({
      pull(controller) {
        if (pulls++ === 0) controller.enqueue(new TextEncoder().encode(first));
        return new Promise(() => {});
      },
    }),
  });
}

Deno.test("an idle bound that is not a positive timer delay is refused (RangeError), before anything is read", async () => {
  // 0 or a negative bound fires at once, and setTimeout runs one above 2^31-1 ms (24.8 days) after 1 ms:
  // either would answer 408 to a body still on its way (0 reads as "no bound" in Node's own servers).
  // NaN would silently mean no bound. Infinity is the way to say none.
  for (const idleTimeoutMs of [0, -1, NaN, 2 ** 31, 1e10, Number.MAX_SAFE_INTEGER]) {
    const req = new Request("http://localhost/progress", { method: "POST", body: "{}" });
    await assert.rejects(readBodyLimited(req, 100, { idleTimeoutMs }), RangeError, String(idleTimeoutMs));
    assert.equal(req.bodyUsed, false, `${idleTimeoutMs}: nothing was read`);
    await assert.rejects(
      readJsonBody(
        new Request("http://localhost/progress", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: "{}",
        }),
        { idleTimeoutMs },
      ),
      RangeError,
      String(idleTimeoutMs),
    );
  }
  for (const idleTimeoutMs of [1, 2 ** 31 - 1, Infinity]) {
    const req = new Request("http://localhost/progress", { method: "POST", body: "{}" });
    assert.equal((await readBodyLimited(req, 100, { idleTimeoutMs })).byteLength, 2, String(idleTimeoutMs));
  }
});

Deno.test("a total bound that is not a positive timer delay is refused (RangeError), before anything is read", async () => {
  for (const totalTimeoutMs of [0, -1, NaN, 2 ** 31, 1e10, Number.MAX_SAFE_INTEGER]) {
    const req = new Request("http://localhost/progress", { method: "POST", body: "{}" });
    await assert.rejects(readBodyLimited(req, 100, { totalTimeoutMs }), RangeError, String(totalTimeoutMs));
    assert.equal(req.bodyUsed, false, `${totalTimeoutMs}: nothing was read`);
    await assert.rejects(hasBody(req, { totalTimeoutMs }), RangeError, String(totalTimeoutMs));
  }
  for (const totalTimeoutMs of [1_000, 2 ** 31 - 1, Infinity]) {
    const req = new Request("http://localhost/progress", { method: "POST", body: "{}" });
    assert.equal((await readBodyLimited(req, 100, { totalTimeoutMs })).byteLength, 2, String(totalTimeoutMs));
  }
});

Deno.test("readJsonBody refuses a bad maxBytes or bound before its media-type checks, not only for a JSON body", async () => {
  // The same option is refused alike whatever the request: a body that is not JSON, or is compressed,
  // does not answer 415 for an option that a JSON body would have thrown for.
  const requests: [string, () => Request][] = [
    ["text/plain", () => new Request("http://localhost/progress", { method: "POST", body: "{}" })],
    [
      "gzip",
      () =>
        new Request("http://localhost/progress", {
          method: "POST",
          headers: { "content-type": "application/json", "content-encoding": "gzip" },
          body: "{}",
        }),
    ],
    [
      "json",
      () =>
        new Request("http://localhost/progress", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: "{}",
        }),
    ],
  ];
  const bad: [string, Record<string, unknown>, ErrorConstructor][] = [
    ["maxBytes NaN", { maxBytes: NaN }, RangeError],
    ["maxBytes -1", { maxBytes: -1 }, RangeError],
    ['maxBytes "1000"', { maxBytes: "1000" }, TypeError],
    ["maxBytes null", { maxBytes: null }, TypeError],
    ["idleTimeoutMs 0", { idleTimeoutMs: 0 }, RangeError],
    ["totalTimeoutMs null", { totalTimeoutMs: null }, TypeError],
  ];
  for (const [kind, request] of requests) {
    for (const [label, options, ErrorClass] of bad) {
      const req = request();
      const error = await readJsonBody(req, options as { maxBytes?: number }).then(
        () => assert.fail(`${kind}, ${label}: taken`),
        (e) => e,
      );
      assert.equal(error.constructor, ErrorClass, `${kind}, ${label}: ${ErrorClass.name} (got ${error})`);
      assert.equal(req.bodyUsed, false, `${kind}, ${label}: nothing was read`);
    }
  }
});
