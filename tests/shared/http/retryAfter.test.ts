// shared/http/retryAfter.ts: a Retry-After header read as the API client reads it (seconds or an
// HTTP-date), and read back from an error as its retrying callers do (capped).

import assert from "node:assert/strict";
import { MAX_RETRY_AFTER_MS, parseRetryAfter, retryAfterMsOf } from "../../../shared/http/retryAfter.ts";

const answeredAt = Date.parse("2015-10-21T07:28:00Z");

Deno.test("parseRetryAfter: delay-seconds, and an HTTP-date counted from the answer's own time", () => {
  const cases: [string | null, number | undefined][] = [
    ["120", 120],
    [" 5 ", 5],
    ["0", 0],
    ["Wed, 21 Oct 2015 07:29:30 GMT", 90], // IMF-fixdate
    ["Wednesday, 21-Oct-15 07:28:10 GMT", 10], // RFC 850 (obsolete)
    ["Wed Oct 21 07:28:02 2015", 2], // asctime (obsolete), GMT by definition
    ["Wed, 21 Oct 2015 07:27:00 GMT", 0], // already past: no wait
    ["Wed, 21 Oct 2015 07:28:00 GMT", 0],
    [null, undefined],
    ["", undefined],
    ["-5", undefined],
    ["1.5", undefined],
    ["2015-10-21T07:30:00Z", undefined], // Date.parse takes it; Retry-After does not
    ["soon", undefined],
    ["Wed, 99 Foo 2015", undefined],
  ];
  for (const [header, expected] of cases) {
    assert.equal(parseRetryAfter(header, answeredAt), expected, String(header));
  }
  // A fraction of a second left (the answer's clock has milliseconds) still waits for that second.
  assert.equal(parseRetryAfter("Wed, 21 Oct 2015 07:28:30 GMT", answeredAt + 250), 30);
});

Deno.test("retryAfterMsOf: details.retry_after (seconds) or retryAfterMs, capped; nothing when none is asked for", () => {
  assert.equal(retryAfterMsOf({ details: { retry_after: 30 } }), 30_000);
  assert.equal(retryAfterMsOf({ retryAfterMs: 1_500 }), 1_500);
  assert.equal(retryAfterMsOf({ details: { retry_after: 86_400 } }), MAX_RETRY_AFTER_MS);
  assert.equal(retryAfterMsOf({ details: { retry_after: 86_400 } }, 60_000), 60_000);
  for (
    const none of [null, undefined, new Error("x"), { details: "text" }, { details: { retry_after: 0 } }]
  ) {
    assert.equal(retryAfterMsOf(none), undefined, JSON.stringify(none));
  }
  assert.equal(
    retryAfterMsOf({ details: { retry_after: "30" } }),
    undefined,
    "only the number the client puts there",
  );
});

Deno.test("parseRetryAfter: an HTTP-date is GMT whatever the device's time zone (asctime has no zone, and is GMT too)", async () => {
  // Date.parse reads a date without a zone as the device's local time: a reader in New York would
  // wait 4 hours longer (the 5 minute cap), one in Tokyo not at all. Each zone in its own process,
  // as TZ is read when it starts.
  const module = new URL("../../../shared/http/retryAfter.ts", import.meta.url).href;
  const headers = [
    "Wed Oct 21 07:28:02 2015", // asctime: GMT by definition
    "Wed Oct  1 07:28:02 2015", // asctime pads a one-digit day with a space
    "Wed, 21 Oct 2015 07:29:30", // no zone: not an HTTP-date
    "Wed, 21 Oct 2015 07:29:30 +0900", // a zone other than GMT: not an HTTP-date
  ];
  const code = `import { parseRetryAfter } from ${JSON.stringify(module)};
    const at = Date.parse("2015-10-01T07:28:00Z");
    console.log(JSON.stringify(${JSON.stringify(headers)}.map((h) => parseRetryAfter(h, at) ?? null)));`;
  const expected = [20 * 86_400 + 2, 2, null, null];
  for (const tz of ["UTC", "America/New_York", "Asia/Tokyo"]) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--no-config", code],
      env: { TZ: tz },
      stdout: "piped",
      stderr: "inherit",
    }).output();
    assert.ok(out.success, tz);
    assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), expected, `TZ=${tz}`);
  }
});
