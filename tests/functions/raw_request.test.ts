// The test helper rawRequest (support.ts) itself, against a hand-written local TCP server (no stack
// needed): with sendWhileReading, a body send that fails while the answer is still being read is
// reported as the call's own failure, never as an unhandled rejection (which would fail this whole
// file, whatever the test expected).

import assert from "node:assert/strict";
import { rawRequest } from "./support.ts";

/**
 * A one-connection HTTP server on a free port that answers 200 `{"ok":true}` only once `answerWhen`
 * resolves (or closes without answering when `answer` is false), then waits for the client to close.
 */
function oneAnswer(answerWhen: Promise<void>, answer = true) {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const served = (async () => {
    const conn = await listener.accept();
    try {
      await answerWhen;
      if (!answer) return;
      const body = '{"ok":true}';
      const bytes = new TextEncoder().encode(
        `HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n\r\n${body}`,
      );
      for (let n = 0; n < bytes.byteLength;) n += await conn.write(bytes.subarray(n));
      const buffer = new Uint8Array(1024);
      while ((await conn.read(buffer).catch(() => null)) !== null) { /* until the client closes */ }
    } finally {
      conn.close();
      listener.close();
    }
  })();
  return { url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}/`, served };
}

const HEAD = "POST / HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 10";

Deno.test("rawRequest, sendWhileReading: a send failing before the answer is the call's failure, not an unhandled rejection", async () => {
  let failed!: () => void;
  const sendFailed = new Promise<void>((resolve) => failed = resolve);
  // The server answers only after the send has failed: the failure comes while the answer is read.
  const server = oneAnswer(sendFailed);
  await assert.rejects(
    rawRequest(server.url, HEAD, () => {
      failed();
      return Promise.reject(new Error("the write failed"));
    }, { sendWhileReading: true, guardMs: 20_000 }),
    /^Error: the write failed$/,
  );
  await server.served;
});

Deno.test("rawRequest, sendWhileReading: a send that failed is named when no answer comes", async () => {
  let failed!: () => void;
  const sendFailed = new Promise<void>((resolve) => failed = resolve);
  const server = oneAnswer(sendFailed, false); // closes without answering, once the send has failed
  await assert.rejects(
    rawRequest(server.url, HEAD, () => {
      failed();
      return Promise.reject(new Error("the write failed"));
    }, { sendWhileReading: true, guardMs: 20_000 }),
    (error: Error) => {
      assert.match(
        error.message,
        /^no complete answer before the connection closed .*; the send failed: Error: the write failed$/,
      );
      assert.equal((error.cause as Error).message, "the write failed");
      return true;
    },
  );
  await server.served;
});

Deno.test("rawRequest, sendWhileReading: a send that ends normally still gives the answer", async () => {
  let sent!: () => void;
  const sendDone = new Promise<void>((resolve) => sent = resolve);
  const server = oneAnswer(sendDone);
  const answer = await rawRequest(server.url, HEAD, async (write) => {
    await write("0123456789");
    sent();
  }, { sendWhileReading: true, guardMs: 20_000 });
  assert.deepEqual([answer.status, answer.body], [200, { ok: true }]);
  await server.served;
});
