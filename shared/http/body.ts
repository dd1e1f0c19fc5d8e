// Reading a JSON request body safely: the media type must be JSON with no charset but UTF-8 and the
// body neither compressed nor transfer-coded other than chunked (415), the body may not exceed a byte
// limit (413; checked on Content-Length first and again while streaming, so a chunked or lying client
// cannot push more), and it must be UTF-8 JSON (400) in which no object names a member twice (400
// invalid_request, issue code duplicate_member). A body that stops arriving (no byte for idleTimeoutMs)
// or does not arrive in full within totalTimeoutMs (a sender dripping a byte now and then, under the
// idle bound) is answered 408 request_timeout and its stream cancelled, instead of holding the request
// open until the sender closes or the platform ends the worker.

import { findDuplicateMember } from "./duplicateMember.ts";
import { HttpError } from "./errors.ts";
import { nonUtf8Charsets } from "./mediaType.ts";
import { checkNumberOption, MAX_TIMER_MS, type NumberRule } from "../options/checkOptions.ts";

export const DEFAULT_MAX_BODY_BYTES = 64 * 1024;

/**
 * How long a body may go without a byte arriving, from the first read on (10 s). An idle bound: a
 * slow but working link (a phone on a weak signal, a full 64 KiB batch at a few KB/s) keeps sending
 * and is read to the end (within DEFAULT_BODY_TOTAL_TIMEOUT_MS), while a sender that stalls mid-way (a
 * dropped mobile link the server has not noticed, a client holding the connection open) is cut off. 10 s is
 * above any pause of a working TCP connection short of a lost link (retransmissions after 1, 2, 4 s
 * add up to 7 s), above the database's own bounds (8 s statement timeout, 2 s lock timeout: a
 * request is never cut off for a shorter wait than the server allows itself), and below the API
 * client's 20 s per attempt (DEFAULT_TIMEOUT_MS in shared/progress/api.ts), so the client gets the
 * 408 and retries before it would give up on its own, and the platform's wall-clock limit (150 s
 * and more), which would end the worker with a platform error instead of an answer.
 */
export const DEFAULT_BODY_IDLE_TIMEOUT_MS = 10_000;

/**
 * How long the whole body may take, from the first read on (30 s), however steadily it arrives. The
 * idle bound alone lets a sender that drips a byte every few seconds hold the request (and an isolate's
 * slot) open for as long as it likes; this ends it. 30 s is above anything an honest client needs: the
 * API client's bodies are under 1 KB, and it gives up an attempt after 20 s in all (DEFAULT_TIMEOUT_MS
 * in shared/progress/api.ts), so it aborts before this bound could cut it off; the largest body this
 * API takes (64 KiB) still gets through at about 2 KB/s. And it is well below the hosted platform's
 * limits (150 s request idle timeout, answered 504; 150 s wall clock on the free plan, 400 s on paid
 * plans), so the sender gets this 408 rather than a platform error.
 */
export const DEFAULT_BODY_TOTAL_TIMEOUT_MS = 30_000;

export interface ReadBodyOptions {
  /** See DEFAULT_BODY_IDLE_TIMEOUT_MS; Infinity waits forever. Anything else: see BODY_BOUND_MS. */
  idleTimeoutMs?: number;
  /** See DEFAULT_BODY_TOTAL_TIMEOUT_MS; Infinity for none. Anything else: see BODY_BOUND_MS. */
  totalTimeoutMs?: number;
}

/** Which bound a 408 request_timeout met (details.bound). */
export type BodyTimeoutBound = "idle" | "total";

// setTimeout's longest delay (2^31-1 ms), kept in shared/options; exported here too for the bounds' users.
export { MAX_TIMER_MS };

/**
 * The body bounds' range: a positive number of milliseconds a timer can hold (above 0, up to
 * MAX_TIMER_MS), or Infinity (no bound). 0 or a negative bound would fire at once and one past
 * 2^31-1 after 1 ms (setTimeout's own clamping), either answering 408 to a body still on its way, and
 * 0 is what Node's servers read as "no bound"; NaN would mean no bound unannounced.
 */
export const BODY_BOUND_MS: NumberRule = {
  min: 0,
  aboveMin: true,
  max: MAX_TIMER_MS,
  infinity: true,
  unit: "milliseconds",
};

/**
 * The byte limit's range (readBodyLimited's and readJsonBody's maxBytes, createProgressHandler's
 * maxBodyBytes): a whole number of bytes from 0 (no byte taken: hasBody) up to 2^53-1, or Infinity
 * (no limit). Unchecked, NaN or a string that is not a number took any body (every comparison with it
 * false), a string of digits was compared as the number it spells, and null, where the handler read
 * it as the default, was 0 to readJsonBody (every body with a byte refused).
 */
export const BODY_BYTES: NumberRule = {
  min: 0,
  max: Number.MAX_SAFE_INTEGER,
  whole: true,
  infinity: true,
  unit: "bytes",
};

/** application/json, or application/<x>+json, with any parameters (charset=utf-8). */
export function isJsonMediaType(contentType: string | null): boolean {
  if (!contentType) return false;
  const type = contentType.split(";")[0].trim().toLowerCase();
  return type === "application/json" || /^application\/[a-z0-9.!#$&^_-]+\+json$/.test(type);
}

/**
 * The Content-Encoding header when it names a coding other than identity (gzip, br, ...), else null.
 * Nothing here decodes one (Supabase's edge runtime hands a function the body as sent): such a body
 * is refused with 415 (RFC 9110, 15.5.16) instead of being read as JSON, where a gzip body failed as
 * "not valid UTF-8" and an uncompressed body labelled gzip was taken as it was.
 */
export function contentCoding(req: Request): string | null {
  const value = req.headers.get("content-encoding");
  if (value === null) return null;
  const codings = value.split(",").map((c) => c.trim().toLowerCase()).filter((c) => c !== "");
  return codings.some((c) => c !== "identity") ? value : null;
}

/**
 * The Transfer-Encoding header when it names a coding other than chunked (gzip, deflate, ...), else
 * null. Deno's HTTP server undoes only chunked: a `gzip, chunked` body reaches the function still
 * gzip-coded (it failed as "not valid UTF-8", and an uncoded body labelled so was taken as it was), so
 * it is refused with 415 as a Content-Encoding is. (With chunked not last, `gzip` alone included,
 * the server answers 400 itself before the function runs: RFC 9112, 6.3.)
 */
export function transferCoding(req: Request): string | null {
  const value = req.headers.get("transfer-encoding");
  if (value === null) return null;
  const codings = value.split(",").map((c) => c.trim().toLowerCase()).filter((c) => c !== "");
  return codings.some((c) => c !== "chunked" && c !== "identity") ? value : null;
}

/** The Content-Length header as a number, or null when there is none (or it is not digits). */
export function declaredLength(req: Request): number | null {
  const declared = req.headers.get("content-length");
  return declared !== null && /^\d+$/.test(declared) ? Number(declared) : null;
}

/**
 * Throws for a byte limit (BODY_BYTES) or a bound (BODY_BOUND_MS) out of range (a RangeError) or not
 * a number (a TypeError, null too), naming it as an option of `where`, the function the caller called
 * (readBodyLimited, readJsonBody, hasBody); undefined is not given. Made by readJsonBody too before its
 * media-type checks, so that a bad option is refused for any request, not answered 415 for one that is
 * not JSON and thrown for the next.
 */
function checkReadOptions(
  maxBytes: unknown,
  { idleTimeoutMs, totalTimeoutMs }: ReadBodyOptions,
  where: "readBodyLimited" | "readJsonBody" | "hasBody",
): void {
  if (where !== "hasBody") checkNumberOption(maxBytes, BODY_BYTES, where, "maxBytes");
  checkNumberOption(idleTimeoutMs, BODY_BOUND_MS, where, "idleTimeoutMs");
  checkNumberOption(totalTimeoutMs, BODY_BOUND_MS, where, "totalTimeoutMs");
}

/**
 * Reads at most maxBytes of the body (BODY_BYTES; undefined: DEFAULT_MAX_BODY_BYTES, as for
 * readJsonBody); throws 413 beyond that (and stops reading), and 408
 * request_timeout when no byte arrives for idleTimeoutMs or the body is not complete totalTimeoutMs
 * after the first read (the stream is cancelled: nothing goes on reading it, and the answer carries
 * Connection: close, as the rest of the body will never be read). A limit or bound out of range is a
 * RangeError, one not a number (null too) a TypeError, before anything is read.
 */
export async function readBodyLimited(
  req: Request,
  maxBytes: number = DEFAULT_MAX_BODY_BYTES,
  { idleTimeoutMs = DEFAULT_BODY_IDLE_TIMEOUT_MS, totalTimeoutMs = DEFAULT_BODY_TOTAL_TIMEOUT_MS }:
    ReadBodyOptions = {},
): Promise<Uint8Array> {
  checkReadOptions(maxBytes, { idleTimeoutMs, totalTimeoutMs }, "readBodyLimited");
  const declared = declaredLength(req);
  if (declared !== null && declared > maxBytes) throw tooLarge(maxBytes);
  if (!req.body) return new Uint8Array(0);
  const reader = req.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  // One timer per read, for whichever bound ends first: the idle bound, or what is left of the whole.
  const deadline = performance.now() + totalTimeoutMs;
  try {
    while (true) {
      const left = Math.max(0, deadline - performance.now());
      const bound: BodyTimeoutBound = left < idleTimeoutMs ? "total" : "idle";
      let next: ReadableStreamReadResult<Uint8Array> | "timeout";
      try {
        next = await readWithin(reader, Math.min(idleTimeoutMs, left));
      } catch (error) {
        // The sender stopped early: fewer bytes than its Content-Length, an unfinished chunked body,
        // a dropped connection. Its fault, not ours: a 400 (not logged, as no 4xx but the 408 is).
        // received_bytes is what the server handed this reader before the failure, which can be fewer
        // than were sent: Deno 2.9's server drops the body bytes it has not handed over yet when the
        // sender's side closes, such as a short body that came in with the request head (0 then; a
        // bare Deno.serve that reads at once shows the same).
        throw new HttpError(400, "invalid_json", "The request body ended before it was complete", {
          details: { reason: error instanceof Error ? error.message : String(error), received_bytes: total },
        });
      }
      if (next === "timeout") {
        // The pending read ends (done) once the stream is cancelled; a failure of it is no news.
        await reader.cancel(new Error("request body timed out")).catch(() => {});
        throw new HttpError(
          408,
          "request_timeout",
          bound === "idle"
            ? `The request body stopped arriving: no data for ${idleTimeoutMs} ms`
            : `The request body did not arrive in full within ${totalTimeoutMs} ms`,
          {
            // A bound that is Infinity (none) is null, as it would be in JSON anyway.
            details: {
              bound,
              idle_timeout_ms: Number.isFinite(idleTimeoutMs) ? idleTimeoutMs : null,
              total_timeout_ms: Number.isFinite(totalTimeoutMs) ? totalTimeoutMs : null,
              received_bytes: total,
            },
            headers: { connection: "close" },
          },
        );
      }
      const { done, value } = next;
      if (done) break;
      total += value.byteLength;
      if (total > maxBytes) {
        await reader.cancel().catch(() => {});
        throw tooLarge(maxBytes);
      }
      chunks.push(value);
    }
  } finally {
    reader.releaseLock();
  }
  const out = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}

/**
 * Whether the body holds a byte, read no further than its first one: true at once, unread, when its
 * Content-Length is above 0; otherwise (chunked, whose headers cannot tell an empty body from another)
 * true at the first byte that arrives (the stream is then cancelled), false when it ends without one.
 * The same bounds as readBodyLimited (408) until then, refused as its are but named as hasBody's.
 */
export async function hasBody(req: Request, options: ReadBodyOptions = {}): Promise<boolean> {
  // Its own bounds named as its own (readBodyLimited would name them as its).
  checkReadOptions(0, options, "hasBody");
  try {
    // A limit of 0 bytes: the 413 comes from the Content-Length, or at the first byte read.
    await readBodyLimited(req, 0, options);
    return false;
  } catch (error) {
    if (error instanceof HttpError && error.status === 413) return true;
    throw error;
  }
}

/** The next read, or "timeout" when it has not settled within ms (the read is left pending). */
function readWithin(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  ms: number,
): Promise<ReadableStreamReadResult<Uint8Array> | "timeout"> {
  const read = reader.read();
  if (!Number.isFinite(ms)) return read;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), ms)));
  // Once it has lost the race, the read settles when the stream is cancelled (or fails): unobserved.
  read.catch(() => {});
  return Promise.race([read, timeout]).finally(() => clearTimeout(timer));
}

/**
 * The parsed JSON body, after the media-type (415), size (413), time (408), syntax (400) and
 * duplicate member name (400) checks. A maxBytes or bound out of range or not a number is refused
 * first, as readBodyLimited refuses it (a RangeError or TypeError naming it as readJsonBody's option),
 * whatever the request.
 */
export async function readJsonBody(
  req: Request,
  { maxBytes = DEFAULT_MAX_BODY_BYTES, idleTimeoutMs, totalTimeoutMs }:
    & { maxBytes?: number }
    & ReadBodyOptions = {},
): Promise<unknown> {
  // The options first: a bad one is refused for any request, not answered 415 for a body not JSON.
  checkReadOptions(maxBytes, { idleTimeoutMs, totalTimeoutMs }, "readJsonBody");
  if (!isJsonMediaType(req.headers.get("content-type"))) {
    throw new HttpError(
      415,
      "unsupported_media_type",
      "The body must be JSON (Content-Type: application/json)",
      {
        details: { content_type: req.headers.get("content-type") },
      },
    );
  }
  // RFC 8259, 8.1: JSON between systems is UTF-8. A body labelled with another charset (utf-16,
  // iso-8859-1) would be misread, or fail as "not valid UTF-8": refused for its media type instead.
  const charsets = nonUtf8Charsets(req.headers.get("content-type"));
  if (charsets.length > 0) {
    throw new HttpError(
      415,
      "unsupported_media_type",
      `The body must be UTF-8 JSON (charset=${charsets[0]} is not supported)`,
      { details: { content_type: req.headers.get("content-type"), charset: charsets[0] } },
    );
  }
  const coding = contentCoding(req);
  if (coding !== null) {
    throw new HttpError(
      415,
      "unsupported_media_type",
      `The body must be sent uncompressed (Content-Encoding: ${coding} is not supported)`,
      { details: { content_encoding: coding }, headers: { "accept-encoding": "identity" } },
    );
  }
  const transfer = transferCoding(req);
  if (transfer !== null) {
    throw new HttpError(
      415,
      "unsupported_media_type",
      `Transfer-Encoding: ${transfer} is not supported: send the body uncoded (chunked only)`,
      { details: { transfer_encoding: transfer } },
    );
  }
  const bytes = await readBodyLimited(req, maxBytes, { idleTimeoutMs, totalTimeoutMs });
  if (bytes.byteLength === 0) throw new HttpError(400, "invalid_json", "The request body is empty");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new HttpError(400, "invalid_json", "The request body is not valid UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new HttpError(400, "invalid_json", "The request body is not valid JSON", {
      details: { reason: error instanceof Error ? error.message : String(error) },
    });
  }
  // JSON.parse keeps the last of two equal names; other readers keep the first: refuse, never guess.
  const duplicate = findDuplicateMember(text);
  if (duplicate !== null) {
    const path = [...duplicate.path, duplicate.name].map(String).join(".");
    const message = `The member "${duplicate.name}" is given more than once in the same object`;
    throw new HttpError(400, "invalid_request", `Invalid body: ${path}: ${message}`, {
      details: { issues: [{ path, code: "duplicate_member", message }] },
    });
  }
  return value;
}

function tooLarge(maxBytes: number): HttpError {
  return new HttpError(413, "payload_too_large", `The request body exceeds ${maxBytes} bytes`, {
    details: { max_bytes: maxBytes },
  });
}
