// shared/http/body.ts: what a body that ends before it is complete is answered with. Over real HTTP:
// tests/functions/progress_errors.test.ts ("400: a body cut short").

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
