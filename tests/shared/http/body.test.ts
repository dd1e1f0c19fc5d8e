// shared/http/body.ts: what a body that ends before it is complete, or stops arriving, is answered
// with. Over real HTTP: tests/functions/progress_errors.test.ts ("400: a body cut short", "408") and
// progress_handler.test.ts ("408").

import assert from "node:assert/strict";
import { readJsonBody } from "../../../shared/http/body.ts";
import { HttpError } from "../../../shared/http/errors.ts";

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
  assert.deepEqual(error.details, { idle_timeout_ms: 50, received_bytes: first.byteLength });
  assert.deepEqual(error.headers, { connection: "close" });
  assert.ok(cancelled instanceof Error, "the body stream was cancelled: nothing goes on reading it");
  assert.equal(body.locked, false, "the reader was released");
});
