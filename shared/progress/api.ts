// Typed client of the progress edge function, for web and mobile code that holds a supabase-js
// client. Every call goes through `supabase.functions.invoke`, so the client's own session token
// (refreshed by supabase-js) and apikey are sent exactly as for any Supabase function, and the
// function URL (<SUPABASE_URL>/functions/v1/progress) comes from the client's configuration; a
// hand-rolled fetch would have to re-implement both. Responses are validated with the same zod
// schemas the function uses; errors become typed exceptions:
//
//   ValidationError          400 / 413 / 415 / 422 (also thrown before sending, for a write the schema rejects)
//   AuthError                401 / 403
//   NotFoundError            404 (getProgress answers null for a series without progress instead)
//   ServiceUnavailableError  503 (after the retries)
//   NetworkError             no HTTP answer at all (after the retries)
//   ProgressApiError         the base class (status, code, details, requestId); anything else (e.g.
//                            408 request_timeout after the retries)
//
// Retries: only 503, 408 and network failures (a timed-out attempt is one), with capped exponential
// backoff and full jitter (never another 4xx: the same request would fail again; a 408 says the body
// stopped arriving on the way, a failure of the link as a network failure is), and never once the
// caller's signal has aborted. A Retry-After (seconds or an HTTP-date) is kept on the error as
// `details.retry_after` in seconds; one longer than the retries' own cap (maxDelayMs) is not retried
// here at all (the caller waits it out), a shorter one is waited out before the next attempt.
// Retrying a write is safe: the API is last-write-wins on the write's own (updated_at, device_id),
// and an identical replay is a no-op with the same answer. (Except a write dated more than 5 s ahead
// of the server, which has no stable key: stamp writes with the server's clock, `api.now()`, and the
// API never sees one.)
//
// Options out of range (timeoutMs, retry's fields; listProgress's and changesSince's limit,
// subscribeToProgress's changesLimit) are a RangeError naming the option, and of the wrong type (not a number; a retry that
// is not an object, null or an array) a TypeError, before any request: a call's rejection, and thrown
// by createProgressApi and subscribeToProgress, which return at once (see checkApiOptions).

import type { SupabaseClient } from "@supabase/supabase-js";
import { FunctionsFetchError, FunctionsHttpError, FunctionsRelayError } from "@supabase/supabase-js";
import type { z } from "zod";
import { ServerClock } from "./serverClock.ts";
import {
  apiErrorBodySchema,
  batchWriteResponseSchema,
  batchWriteSchema,
  CHANGES_CURSOR,
  changesResponseSchema,
  progressListResponseSchema,
  progressResponseSchema,
  type ProgressWriteInput,
  progressWriteSchema,
  resetQuerySchema,
  seriesIdSchema,
  validationError,
  writeResultSchema,
} from "./schemas.ts";
import {
  type ChangesResponse,
  type Progress,
  PROGRESS_LIMITS,
  type ProgressListResponse,
  type WriteResult,
} from "./types.ts";
import {
  checkListener,
  checkRealtimeServiceOptions,
  DEFAULT_REQUEST_TIMEOUT_MS,
  type ProgressHandler,
  type ProgressSubscription,
  RealtimeService,
  type RealtimeServiceOptions,
} from "../realtime/realtimeService.ts";
import { parseRetryAfter, retryAfterMsOf } from "../http/retryAfter.ts";
import {
  checkCursorOption,
  checkFunctionOption,
  checkHeadersOption,
  checkNumberOption,
  checkObjectOption,
  drawInRange,
  MAX_TIMER_MS,
  type NumberRule,
  TIMER_MS,
  withDefaults,
} from "../options/checkOptions.ts";

// ------------------------------------------------------------------------------------ errors

export class ProgressApiError extends Error {
  /** HTTP status; 0 when there was no HTTP answer. */
  readonly status: number;
  /** The API's machine code (see the error table in the README), e.g. "validation_failed". */
  readonly code: string;
  readonly details?: unknown;
  /** x-request-id of the answer, for support and logs. */
  readonly requestId?: string;
  constructor(
    status: number,
    code: string,
    message: string,
    options: { details?: unknown; requestId?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.status = status;
    this.code = code;
    this.details = options.details;
    this.requestId = options.requestId;
  }
}
/** The request was refused as malformed or out of range (400, 413, 415, 422). */
export class ValidationError extends ProgressApiError {}
/** No, a bad, or an expired token (401), or a token that may not do this (403). */
export class AuthError extends ProgressApiError {}
export class NotFoundError extends ProgressApiError {}
/** The API or its database is unavailable (503), after all retries. */
export class ServiceUnavailableError extends ProgressApiError {}
/** The request got no HTTP answer (connection refused, DNS, reset), after all retries. */
export class NetworkError extends ProgressApiError {}

function errorFor(
  status: number,
  code: string,
  message: string,
  options: { details?: unknown; requestId?: string; cause?: unknown },
) {
  if (status === 401 || status === 403) return new AuthError(status, code, message, options);
  if (status === 404) return new NotFoundError(status, code, message, options);
  if (status === 503) return new ServiceUnavailableError(status, code, message, options);
  if (status === 400 || status === 413 || status === 415 || status === 422) {
    return new ValidationError(status, code, message, options);
  }
  return new ProgressApiError(status, code, message, options);
}

// ------------------------------------------------------------------------------------ options

export interface RetryOptions {
  /** Total attempts including the first (default 4): a whole number from 1 (no retry). */
  attempts: number;
  /** The first retry's wait ceiling, doubled for each later one (ms, 0 = retry at once, to MAX_TIMER_MS). */
  baseDelayMs: number;
  /** The cap on that ceiling, and the longest Retry-After waited out (ms, 0 to MAX_TIMER_MS). */
  maxDelayMs: number;
}

export interface ProgressApiOptions {
  /** The function's name (default "progress"). */
  functionName?: string;
  retry?: Partial<RetryOptions>;
  /** Extra headers on every call (e.g. a server using the service_role key: X-Act-As-User). */
  headers?: Record<string, string>;
  /**
   * For tests: randomness of the jitter (a function returning a number in [0, 1), as Math.random; a
   * draw outside it is taken into it as RealtimeService's random draws are: below 0 as 0, 1 or more as
   * just below 1, NaN or a non-number as 0.5) and the sleep between attempts.
   */
  random?: () => number;
  sleep?: (ms: number) => Promise<void>;
  /** Called before each retry (for logs and tests); what it throws is ignored (the call goes on). */
  onRetry?: (info: { attempt: number; delayMs: number; error: ProgressApiError }) => void;
  /** Learns the database's clock from every 2xx answer's X-Server-Time (see serverClock.ts). */
  clock?: ServerClock;
  /**
   * How long one attempt may take before it is aborted (and, like a network failure, retried): ms,
   * 1 to MAX_TIMER_MS.
   */
  timeoutMs?: number;
  /** Aborts the call: the attempt in flight and any retry (it then throws NetworkError "aborted"). */
  signal?: AbortSignal;
}

export const DEFAULT_TIMEOUT_MS = 20_000;

export const DEFAULT_RETRY: RetryOptions = { attempts: 4, baseDelayMs: 200, maxDelayMs: 5_000 };

type FunctionsCapableClient = Pick<SupabaseClient, "functions">;

/** retry.attempts: a whole number from 1 (counting the first attempt; 1 = no retry). */
const ATTEMPTS: NumberRule = { min: 1, max: Number.MAX_SAFE_INTEGER, whole: true };
/** retry.baseDelayMs and retry.maxDelayMs: 0 (a wait of none) to MAX_TIMER_MS ms. */
const DELAY_MS: NumberRule = { min: 0, max: MAX_TIMER_MS, unit: "milliseconds" };
/**
 * changesSince's limit and subscribeToProgress's changesLimit: a whole number from 1 to the API's
 * largest changes page (the function answers 422 above, and 400 for a number its query string does
 * not spell in digits, such as 1.5 or 1e+21).
 */
const CHANGES_LIMIT: NumberRule = { min: 1, max: PROGRESS_LIMITS.changesMax, whole: true };
/** listProgress's limit: a whole number from 1 to the API's largest library page (as CHANGES_LIMIT). */
const LIST_LIMIT: NumberRule = { min: 1, max: PROGRESS_LIMITS.listMax, whole: true };

/**
 * Throws for the first of `timeoutMs`, `random` (a TypeError unless a function, as RealtimeService's
 * random: null too, which was taken as Math.random, and anything else thrown at the first retry),
 * `sleep` and `onRetry` (the same: thrown at the first retry, failing the call), `headers` and `retry`
 * (a TypeError unless a plain object: not null, an array, a Headers, a Map or a class's instance; for
 * `headers`, a TypeError for a value that is not a string or a name or value that fetch's Headers
 * refuses, naming it as `headers.<name>`) and `retry`'s fields outside its range, naming it as `<where>
 * option <prefix><name>`. A field given as undefined is not given (its default applies).
 * timeoutMs takes 1 to MAX_TIMER_MS ms (TIMER_MS): below 1, Infinity or past MAX_TIMER_MS, setTimeout
 * fires at once (every attempt aborted before its answer), and functions-js takes a timeout of 0 or
 * NaN as none at all (an attempt that may hang for good). retry.baseDelayMs and retry.maxDelayMs take
 * 0 to MAX_TIMER_MS ms (DELAY_MS): 0 is a wait of none (retry at once; the attempts bound the
 * retries), while a negative one, NaN, Infinity or one past MAX_TIMER_MS is no wait the caller can
 * have meant. retry.attempts is a whole number from 1 (ATTEMPTS): 0 was silently 1, and NaN or
 * Infinity retried without end.
 */
function checkApiOptions(
  options: Pick<ProgressApiOptions, "timeoutMs" | "retry" | "random" | "sleep" | "onRetry" | "headers">,
  where: string,
  prefix = "",
) {
  checkNumberOption(options.timeoutMs, TIMER_MS, where, `${prefix}timeoutMs`);
  checkFunctionOption(options.random, where, `${prefix}random`);
  // Called between attempts: a value that is no function failed the call at its first retry.
  checkFunctionOption(options.sleep, where, `${prefix}sleep`);
  checkFunctionOption(options.onRetry, where, `${prefix}onRetry`);
  // A Headers or a Map was spread into the request's headers as none at all, a value that is not a
  // string sent as fetch writes it (5 as "5", an object as "[object Object]", undefined as "undefined"),
  // and a name or value that fetch refuses (a CR or LF in it) failed every call as a network_error.
  checkHeadersOption(options.headers, where, `${prefix}headers`);
  const retry: unknown = options.retry;
  checkObjectOption(retry, where, `${prefix}retry`);
  if (retry === undefined) return;
  const { attempts, baseDelayMs, maxDelayMs } = retry as Partial<Record<keyof RetryOptions, unknown>>;
  checkNumberOption(attempts, ATTEMPTS, where, `${prefix}retry.attempts`);
  checkNumberOption(baseDelayMs, DELAY_MS, where, `${prefix}retry.baseDelayMs`);
  checkNumberOption(maxDelayMs, DELAY_MS, where, `${prefix}retry.maxDelayMs`);
}

/** The retry options in force: each field given, or its default (one given as undefined too). */
function retryOptionsOf(options: Pick<ProgressApiOptions, "retry">): RetryOptions {
  return withDefaults(options.retry, DEFAULT_RETRY);
}

// ------------------------------------------------------------------------------------ transport

/**
 * An error answer's body, or null when it did not arrive within timeoutMs or the caller aborted:
 * functions-js stops its own timeout and abort handling once the headers are in, so a body that
 * stalls would otherwise hold the call for good.
 */
async function readErrorBody(
  response: Response,
  timeoutMs: number,
  signal?: AbortSignal,
): Promise<string | null> {
  if (!response.body) return "";
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let stop!: () => void;
  const stopped = new Promise<null>((resolve) => stop = () => resolve(null));
  const timer = setTimeout(stop, timeoutMs);
  signal?.addEventListener("abort", stop, { once: true });
  if (signal?.aborted) stop();
  let text = "";
  try {
    for (;;) {
      const chunk = await Promise.race([reader.read(), stopped]);
      if (chunk === null) {
        reader.cancel().catch(() => {});
        return null;
      }
      if (chunk.done) return text + decoder.decode();
      text += decoder.decode(chunk.value, { stream: true });
    }
  } catch {
    return text; // the connection broke mid-body: keep what arrived
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", stop);
  }
}

/** The error answer of an attempt that began at `attemptStartedMs` (its body within the attempt's time). */
async function readErrorResponse(
  response: Response,
  options: ProgressApiOptions,
  attemptStartedMs: number,
): Promise<ProgressApiError> {
  const requestId = response.headers.get("x-request-id") ?? undefined;
  let body: unknown = null;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const left = Math.max(0, timeoutMs - (Date.now() - attemptStartedMs));
  const text = await readErrorBody(response, left, options.signal);
  if (text === null) {
    return new NetworkError(
      0,
      "network_error",
      `The progress API's HTTP ${response.status} answer did not finish within ${timeoutMs} ms`,
      { details: { status: response.status }, requestId },
    );
  }
  try {
    body = text ? JSON.parse(text) : null;
  } catch { /* not JSON */ }
  const parsed = apiErrorBodySchema.safeParse(body);
  if (parsed.success) {
    const { code, message, details } = parsed.data.error;
    return errorFor(response.status, code, message, { details, requestId });
  }
  // Not the API's format (a gateway or proxy answered): keep what there is.
  const message = (body as { msg?: unknown; message?: unknown } | null)?.msg ??
    (body as { message?: unknown } | null)?.message ??
    (text || response.statusText);
  const code = response.status === 503 ? "service_unavailable" : `http_${response.status}`;
  return errorFor(response.status, code, String(message), { details: body ?? undefined, requestId });
}

/** One logical call: invoke with retries on 503 / 408 / network errors; the 2xx body parsed by `schema`. */
async function invoke<S extends z.ZodType>(
  client: FunctionsCapableClient,
  options: ProgressApiOptions,
  method: "GET" | "POST" | "DELETE",
  path: string,
  schema: S,
  body?: unknown,
): Promise<z.output<S>> {
  // In an async call, so a bad option is a rejected promise, as a write the schema refuses is.
  checkApiOptions(options, "progress API");
  const retry = retryOptionsOf(options);
  // A draw outside [0, 1) is taken into it as RealtimeService's are (drawInRange): NaN retried at once
  // and a draw of 5 waited past maxDelayMs before.
  const given = options.random;
  const random = given ? () => drawInRange(given()) : Math.random;
  const sleep = options.sleep ?? ((ms: number) => delay(ms, options.signal));
  const name = `${options.functionName ?? "progress"}${path}`;
  for (let attempt = 1;; attempt++) {
    throwIfAborted(options.signal);
    let error: ProgressApiError;
    const sentMs = options.clock?.deviceNow();
    const sentMonotonicMs = options.clock?.monotonicNow();
    const attemptStartedMs = Date.now();
    const { data, error: invokeError, response: answer } = await client.functions.invoke(name, {
      method,
      body: body === undefined ? undefined : JSON.stringify(body),
      headers: { ...options.headers, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      timeout: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      signal: options.signal,
    });
    // Only a 2xx teaches the clock: every one reached the database, whose clock dates and judges writes.
    // An error answer may be the function host's (a 401, a 503 for a database it could not reach; see
    // the README, "The server's clock"), another machine's clock: one an hour off would reset the
    // estimate (the two disagree) and date the next page turns by it until the next 2xx.
    if (options.clock && sentMs !== undefined && !invokeError) {
      const serverTime = answer instanceof Response ? answer.headers.get("x-server-time") : null;
      if (serverTime) {
        options.clock.observe({
          serverMs: Date.parse(serverTime),
          sentMs,
          receivedMs: options.clock.deviceNow(),
          sentMonotonicMs,
          receivedMonotonicMs: options.clock.monotonicNow(),
        });
      }
    }
    if (!invokeError) {
      const parsed = schema.safeParse(data);
      if (parsed.success) return parsed.data;
      throw new ProgressApiError(200, "invalid_response", "The API answered with an unexpected body", {
        details: { issues: parsed.error.issues },
      });
    }
    if (invokeError instanceof FunctionsHttpError || invokeError instanceof FunctionsRelayError) {
      const response = invokeError.context as Response;
      error = await readErrorResponse(response, options, attemptStartedMs);
      // An HTTP-date is counted from the answer's own time (X-Server-Time, else Date), not this device's.
      const answeredAt = Date.parse(
        response.headers.get("x-server-time") ?? response.headers.get("date") ?? "",
      );
      const retryAfter = parseRetryAfter(
        response.headers.get("retry-after"),
        Number.isFinite(answeredAt) ? answeredAt : Date.now(),
      );
      if (retryAfter !== undefined && !(error instanceof NetworkError)) {
        error = errorFor(error.status, error.code, error.message, {
          details: { ...(error.details as object ?? {}), retry_after: retryAfter },
          requestId: error.requestId,
        });
      }
    } else if (invokeError instanceof FunctionsFetchError) {
      const cause = (invokeError as { context?: unknown }).context ?? invokeError;
      error = new NetworkError(
        0,
        "network_error",
        `The progress API could not be reached: ${String((cause as Error)?.message ?? cause)}`,
        {
          cause,
        },
      );
    } else {
      error = new NetworkError(0, "network_error", String((invokeError as Error)?.message ?? invokeError), {
        cause: invokeError,
      });
    }

    throwIfAborted(options.signal);
    // A 408 (request_timeout: the function got no byte of the body for its idle bound, or not all of
    // it within its total bound, or a proxy's own) is the link's failure, not the request's: sent again,
    // the same body gets through.
    const retryable = error instanceof ServiceUnavailableError || error instanceof NetworkError ||
      error.status === 408;
    if (!retryable || attempt >= retry.attempts) throw error;
    // A Retry-After longer than this call waits between attempts ends the call: retrying sooner would
    // go against what the server asked, and the caller (an outbox, a poll) can wait it out, reading
    // it from the error (shared/http/retryAfter.ts).
    const retryAfterMs = retryAfterMsOf(error, Infinity) ?? 0;
    if (retryAfterMs > retry.maxDelayMs) throw error;
    // Full jitter on a capped exponential delay, and never less than a Retry-After.
    const ceiling = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** (attempt - 1));
    const delayMs = Math.max(Math.floor(random() * ceiling), retryAfterMs);
    // A hook for logs and tests: what it throws does not fail the call (it was the call's rejection,
    // the request left unretried for a logger's fault).
    try {
      options.onRetry?.({ attempt, delayMs, error });
    } catch {
      // ignored
    }
    await untilAborted(sleep(delayMs), options.signal);
  }
}

function throwIfAborted(signal: AbortSignal | undefined): void {
  if (!signal?.aborted) return;
  const reason = signal.reason;
  throw new NetworkError(
    0,
    "aborted",
    `The call was aborted: ${reason instanceof Error ? reason.message : String(reason)}`,
    {
      cause: reason,
    },
  );
}

/** A timer that an abort clears (so an aborted call leaves no timer behind). */
function delay(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    if (signal?.aborted) return done();
    signal?.addEventListener("abort", done, { once: true });
  });
}

/** Waits for `promise`, or stops at once (throwing "aborted") when the signal aborts. */
async function untilAborted(promise: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return await promise;
  throwIfAborted(signal);
  let onAbort = () => {};
  const aborted = new Promise<void>((resolve) => {
    onAbort = () => resolve();
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
  throwIfAborted(signal);
}

function validateLocally<S extends z.ZodType>(schema: S, value: unknown, where: string): z.output<S> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return parsed.data;
  const http = validationError(parsed.error, where);
  throw new ValidationError(http.status, http.code, http.message, { details: http.details });
}

// ------------------------------------------------------------------------------------ calls

/** POST /progress: one write; the answer says whether it won and carries the stored row. */
export async function updateProgress(
  client: FunctionsCapableClient,
  write: ProgressWriteInput,
  options: ProgressApiOptions = {},
): Promise<WriteResult> {
  const valid = validateLocally(progressWriteSchema, write, "progress write");
  const result = await invoke(client, options, "POST", "", writeResultSchema, valid);
  noteStoredKey(options, valid.device_id, result);
  return result;
}

/** A write of this device's that the server stored: the clock dates later writes after its key. */
function noteStoredKey(options: ProgressApiOptions, deviceId: string, result: WriteResult): void {
  if (result.progress.device_id === deviceId) {
    options.clock?.storedOwnWrite(Date.parse(result.progress.updated_at));
  }
}

/** POST /progress/batch: 1..100 writes (an offline queue), answers in input order. */
export async function updateProgressBatch(
  client: FunctionsCapableClient,
  writes: ProgressWriteInput[],
  options: ProgressApiOptions = {},
): Promise<WriteResult[]> {
  const valid = validateLocally(batchWriteSchema, { writes }, "batch");
  const { results } = await invoke(client, options, "POST", "/batch", batchWriteResponseSchema, valid);
  // One answer per write, in input order, is the contract callers index by.
  if (results.length !== writes.length) {
    throw new ProgressApiError(
      200,
      "invalid_response",
      `The API answered ${results.length} results for ${writes.length} writes`,
    );
  }
  results.forEach((result, i) => noteStoredKey(options, valid.writes[i].device_id, result));
  return results;
}

/** GET /progress/series/:id; null when the user has no progress for the series. */
export async function getProgress(
  client: FunctionsCapableClient,
  seriesId: string,
  options: ProgressApiOptions = {},
): Promise<Progress | null> {
  const id = validateLocally(seriesIdSchema, seriesId, "series id");
  try {
    return (await invoke(client, options, "GET", `/series/${encodeURIComponent(id)}`, progressResponseSchema))
      .progress;
  } catch (error) {
    if (error instanceof NotFoundError && error.code === "progress_not_found") return null;
    throw error;
  }
}

export interface ListProgressOptions {
  limit?: number;
  /** next_cursor of the previous page. */
  cursor?: string | null;
  includeCleared?: boolean;
}

/**
 * GET /progress: the library, newest first; pass next_cursor back for the next page. `limit`, the page
 * size, is checked as changesSince's is, against the function's own range (LIST_LIMIT, 1 to
 * PROGRESS_LIMITS.listMax): out of it a RangeError, not a number (null too) a TypeError, before any
 * request.
 */
export async function listProgress(
  client: FunctionsCapableClient,
  query: ListProgressOptions = {},
  options: ProgressApiOptions = {},
): Promise<ProgressListResponse> {
  checkNumberOption(query.limit, LIST_LIMIT, "listProgress", "limit");
  const params = new URLSearchParams();
  if (query.limit !== undefined) params.set("limit", String(query.limit));
  if (query.cursor) params.set("cursor", query.cursor);
  if (query.includeCleared) params.set("include_cleared", "true");
  const qs = params.size ? `?${params}` : "";
  return await invoke(client, options, "GET", qs, progressListResponseSchema);
}

/**
 * GET /progress/changes: rows changed since `cursor` ("" or null = from the beginning). Always
 * continue from next_cursor; a row may come again (dedupe by its last-write-wins key). A cursor
 * handed out to another user (it names its user) is read from the beginning, as one of another
 * cluster or timeline, and the page then says so (started_over: true; absent otherwise). `limit`, the
 * page size, is checked as subscribeToProgress's changesLimit is (CHANGES_LIMIT, the function's own
 * range): out of it a RangeError, not a number (null too) a TypeError, before any request.
 */
export async function changesSince(
  client: FunctionsCapableClient,
  cursor: string | null = null,
  query: { limit?: number } = {},
  options: ProgressApiOptions = {},
): Promise<ChangesResponse> {
  checkNumberOption(query.limit, CHANGES_LIMIT, "changesSince", "limit");
  const params = new URLSearchParams();
  if (cursor) params.set("since", cursor);
  if (query.limit !== undefined) params.set("limit", String(query.limit));
  const qs = params.size ? `?${params}` : "";
  return await invoke(client, options, "GET", `/changes${qs}`, changesResponseSchema);
}

/**
 * DELETE /progress/series/:id: the reader resets a series. A tombstone write (last-write-wins like
 * any write), so an older offline write cannot bring the progress back.
 */
export async function resetProgress(
  client: FunctionsCapableClient,
  seriesId: string,
  reset: { device_id: string; updated_at?: string },
  options: ProgressApiOptions = {},
): Promise<WriteResult> {
  const id = validateLocally(seriesIdSchema, seriesId, "series id");
  const q = validateLocally(resetQuerySchema, {
    device_id: reset.device_id,
    // Stamped now, by the server's clock when the client has learnt it (a device clock hours behind
    // would otherwise date the reset in the past, and it would lose against older reading).
    updated_at: reset.updated_at ?? new Date(options.clock?.stamp() ?? Date.now()).toISOString(),
  }, "reset");
  const qs = new URLSearchParams({ device_id: q.device_id, updated_at: q.updated_at });
  const result = await invoke(
    client,
    options,
    "DELETE",
    `/series/${encodeURIComponent(id)}?${qs}`,
    writeResultSchema,
  );
  noteStoredKey(options, q.device_id, result);
  return result;
}

// ------------------------------------------------------------------------------------ live

export interface SubscribeToProgressOptions extends Omit<RealtimeServiceOptions, "changesSince"> {
  /**
   * Options for the changesSince calls the service makes (catch-up and polling). Each call has
   * requestTimeoutMs in all, retries included, so an attempt gets requestTimeoutMs / retry.attempts
   * unless `timeoutMs` says otherwise. `signal`, when given, ends this subscription when it aborts
   * (as unsubscribe() does); the calls themselves are aborted by the service.
   */
  api?: ProgressApiOptions;
  /** Page size of those calls: 1 to PROGRESS_LIMITS.changesMax (500); default the API's (100). */
  changesLimit?: number;
  /**
   * The cursor this subscription starts from: a `cursor` of a subscription to the same userId,
   * persisted (null or "" = from the beginning; not given = from the beginning too). It is this call's
   * user's and this subscription's only (SubscribeOptions.initialCursor), not the shared service's: a
   * later call on the client may give another, or none. A string the changes cursor's format takes
   * (a TypeError otherwise). Another user's (one that names its user, as every cursor handed out
   * since migration …_changes_cursor_names_user.sql does, by its tag) is read from the beginning by
   * the API, so the subscription still gets every change of its user; one handed out before would
   * skip them.
   */
  initialCursor?: unknown;
}

export interface ProgressLiveSubscription extends ProgressSubscription {
  /** The service behind it (status, stats, setAccessToken). */
  readonly service: RealtimeService;
  /**
   * The next_cursor of GET /progress/changes this subscription has been given everything before
   * (ProgressSubscription.cursor): persist it, and give it back as initialCursor after a restart.
   */
  readonly cursor: string | null;
  /** Hears each new cursor, as ProgressSubscription.onCursor. */
  onCursor(listener: (cursor: string | null) => void): () => void;
}

/**
 * Throws for an option out of range or of the wrong type, as a first call on a client would: of
 * subscribeToProgress's own, the options argument and api itself (a TypeError unless a plain object:
 * not null, an array, a Map or a class's instance, whose fields checkSharedOptions could not compare),
 * api.timeoutMs and api.retry as for the plain calls (checkApiOptions), and changesLimit, a whole
 * number from 1 to the API's largest changes page (PROGRESS_LIMITS.changesMax, which the function
 * answers 422 above), and initialCursor, null or a string the changes cursor's format takes (a
 * TypeError: CHANGES_CURSOR, as the function checks `since`); then the service's, as its constructor
 * checks them (checkRealtimeServiceOptions, naming them `RealtimeService option ...`). Made on every
 * call, before a later one's options are compared with the shared service's (checkSharedOptions), so
 * that such an option is the same TypeError or RangeError on any call, not a later call's "not the
 * one ... runs with" Error (or, for a backoff that is an array or a function, which are not data, no
 * error at all). How the options go together (attemptTimeoutMsOf) is judged where the service is
 * made, on the options it runs with.
 */
function checkSubscribeOptions(options: SubscribeToProgressOptions): void {
  checkObjectOption(options, "subscribeToProgress", "options", { kind: "argument" });
  checkObjectOption(options.api, "subscribeToProgress", "api");
  checkApiOptions(options.api ?? {}, "subscribeToProgress", "api.");
  checkNumberOption(options.changesLimit, CHANGES_LIMIT, "subscribeToProgress", "changesLimit");
  // A persisted cursor that is not the API's (another field stored by mistake, a number from JSON):
  // the function would answer every read 422 and the link stay offline, or (not a string) it was
  // taken as no cursor, a read from the beginning.
  checkCursorOption(
    options.initialCursor,
    CHANGES_CURSOR,
    'a next_cursor of GET /progress/changes ("[<tag>.]<xid>[:<series_id>]", "" for the beginning)',
    "subscribeToProgress",
    "initialCursor",
  );
  checkRealtimeServiceOptions(options);
}

/**
 * The timeout of each attempt of the service's changesSince calls: api.timeoutMs, or else an equal
 * share of requestTimeoutMs for each of api.retry.attempts (rounded down), which must be at least 1 ms
 * (a RangeError otherwise: the service gives up on a call after requestTimeoutMs, and with a whole
 * attempt allowed that long, a hung first attempt would use up the call and its retries would never
 * run). Worked out from the options of the call that makes the shared service, the ones it runs with:
 * a later call on the client runs with those too (any data option it gives must be the same:
 * checkSharedOptions), so it is not judged by its own, which may leave out api.timeoutMs.
 */
function attemptTimeoutMsOf(options: SubscribeToProgressOptions): number {
  const { attempts } = retryOptionsOf(options.api ?? {});
  const requestTimeoutMs = options.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const given = options.api?.timeoutMs;
  if (given !== undefined) return given;
  const share = Math.floor(requestTimeoutMs / attempts);
  if (share >= 1) return share;
  throw new RangeError(
    `subscribeToProgress option api.retry.attempts (${attempts}) leaves each attempt less than 1 ms ` +
      `of requestTimeoutMs (${requestTimeoutMs}): give fewer attempts, or api.timeoutMs`,
  );
}

/**
 * The data options of a subscribeToProgress call (numbers, strings, booleans, null) by path:
 * "pollIntervalMs", "backoff.maxMs", "api.retry.attempts", "api.headers.<name>". Callbacks (log,
 * random, api.onRetry, ...) and objects that are not plain (api.signal, api.clock) are not data; the
 * options that hold data (the options themselves, api, api.retry, api.headers, backoff) are refused
 * unless plain by checkSubscribeOptions first, so none of them is passed over here. api.headers are
 * taken as fetch's Headers takes them, which is what each call sends: a name in lower case (names are
 * case-insensitive), a value without its leading and trailing spaces, tabs, CRs and LFs, the values of
 * names that differ only in case joined with ", " (checkSubscribeOptions has made sure Headers takes
 * every field).
 */
function dataOptionsOf(options: SubscribeToProgressOptions): Map<string, unknown> {
  const found = new Map<string, unknown>();
  const walk = (value: unknown, path: string) => {
    if (value === undefined || typeof value === "function") return;
    if (path === "api.headers" && value !== null && typeof value === "object") {
      const sent = new Headers(Object.entries(value as Record<string, string>));
      for (const [name, text] of sent) found.set(`${path}.${name}`, text);
      return;
    }
    if (value !== null && typeof value === "object") {
      const proto = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) return;
      for (const [key, v] of Object.entries(value)) walk(v, path ? `${path}.${key}` : key);
      return;
    }
    found.set(path, value);
  };
  walk(options, "");
  return found;
}

/**
 * Throws for a data option a later subscribeToProgress on a client gives other than the one its
 * shared service runs with (`inForce`, the first call's): it could not apply (the service, its
 * changesSince and their options are the first call's), and left unsaid the caller would believe it
 * did (another poll interval, page size, token, act-as-user header). A string's value (a token, a
 * header) is not shown. Not initialCursor: each call's is its own subscription's (the cursor of the
 * user it subscribes), whatever the service's first call gave.
 */
function checkSharedOptions(inForce: Map<string, unknown>, options: SubscribeToProgressOptions): void {
  const shown = (value: unknown) => typeof value === "string" ? "a string" : String(value);
  for (const [path, value] of dataOptionsOf(options)) {
    // Each call's own: the cursor of the user it subscribes (the service's subscribeToProgress option).
    if (path === "initialCursor") continue;
    if (Object.is(value, inForce.get(path))) continue;
    const first = inForce.has(path) ? shown(inForce.get(path)) : "not given";
    throw new Error(
      `subscribeToProgress option ${path} (${shown(value)}) is not the one this client's shared ` +
        `RealtimeService runs with (${first}): every subscribeToProgress() on one supabase client shares ` +
        `the service its first one made, with that call's options. Give the same or leave it out ` +
        `(a new token: subscription.service.setAccessToken()), or subscribe on another client`,
    );
  }
}

// realtime-js keeps one channel per topic on a client, so two services on one client could not both
// join progress:<user>: the second would never go live and only poll. Every subscribeToProgress on
// a client therefore shares one RealtimeService (whose subscriptions to the same user share one
// channel), created with the options of the first live subscription and closed with the last one;
// a later call's data options must be the same (checkSharedOptions), its callbacks are not used.
const sharedServices = new WeakMap<
  SupabaseClient,
  { service: RealtimeService; subscriptions: number; options: Map<string, unknown> }
>();

/**
 * Live progress of `userId`: Realtime broadcasts on progress:<userId>, with catch-up after every
 * (re)subscribe and polling while Realtime is down going through this API's changesSince (so RLS in
 * the function decides what is returned). Subscriptions on one client share one RealtimeService
 * (see sharedServices: the first subscription's options apply, and a later one giving another data
 * option throws); unsubscribe() closes it once the last subscription on the client is gone.
 */
export function subscribeToProgress(
  client: SupabaseClient,
  userId: string,
  handler: ProgressHandler,
  options: SubscribeToProgressOptions = {},
): ProgressLiveSubscription {
  // Checked on every call, the first on a client (whose options the shared service takes) or not,
  // before a later call's are compared with the service's; how they go together, by the first only
  // (attemptTimeoutMsOf), as the service runs with its options. The handler first, before a service
  // is made for it.
  checkFunctionOption(handler, "subscribeToProgress", "handler", { kind: "argument", required: true });
  checkSubscribeOptions(options);
  let shared = sharedServices.get(client);
  if (shared) checkSharedOptions(shared.options, options);
  else {
    // Throws, before anything is made, for options that leave an attempt less than 1 ms.
    const attemptTimeoutMs = attemptTimeoutMsOf(options);
    // initialCursor is not the service's: each call's goes with its own subscription (below).
    const { api, changesLimit, initialCursor: _initialCursor, ...serviceOptions } = options;
    const service: RealtimeService = new RealtimeService(client, {
      ...serviceOptions,
      // The service's signal, not api.signal: the service may outlive this subscription (shared
      // with later ones), so its calls end with the service, and api.signal ends the subscription.
      // The service's explicit token (the accessToken option, setAccessToken) goes with every call:
      // a session-less client would otherwise catch up and poll as anon (refused).
      // A 401 for a token that setAccessToken() replaced while the call was under way (the client's
      // own token source refreshes it on the way out, after this header was fixed: a tab shown again
      // after its token ran out) is asked again once with the new token, and the service told so
      // (sentWith): a 401 for that one too is then read again only for a newer token, not with it.
      changesSince: async (cursor, { signal, sentWith }) => {
        const read = (token: string | null) =>
          changesSince(client, typeof cursor === "string" ? cursor : null, { limit: changesLimit }, {
            ...api,
            headers: token ? { ...api?.headers, Authorization: `Bearer ${token}` } : api?.headers,
            timeoutMs: attemptTimeoutMs,
            signal,
          });
        const sent = service.accessToken;
        try {
          return await read(sent);
        } catch (error) {
          const replaced = service.accessToken;
          if (error instanceof ProgressApiError && error.status === 401 && replaced && replaced !== sent) {
            sentWith?.(replaced);
            return await read(replaced);
          }
          throw error;
        }
      },
    });
    shared = { service, subscriptions: 0, options: dataOptionsOf(options) };
    sharedServices.set(client, shared);
  }
  const entry = shared;
  let subscription: ProgressSubscription;
  try {
    subscription = entry.service.subscribeToProgress(userId, handler, {
      initialCursor: options.initialCursor,
    });
  } catch (error) {
    // Refused (no user id): counted nowhere, and a service made for it alone closes again.
    if (entry.subscriptions === 0) {
      if (sharedServices.get(client) === entry) sharedServices.delete(client);
      void entry.service.close();
    }
    throw error;
  }
  entry.subscriptions++;
  let released = false;
  const stopSignal = options.api?.signal;
  const onStop = () => void live.unsubscribe();
  const live: ProgressLiveSubscription = {
    service: entry.service,
    get userId() {
      return subscription.userId;
    },
    get channel() {
      return subscription.channel;
    },
    get status() {
      return subscription.status;
    },
    onStatus: (listener) => subscription.onStatus(listener),
    onRead: (listener) => subscription.onRead(listener),
    // The service's changesSince answers next_cursor strings, and initialCursor is checked to be one.
    get cursor() {
      return subscription.cursor as string | null;
    },
    onCursor: (listener) => {
      // (Wrapped below, so the subscription's own check would see a function.)
      checkListener(listener, "onCursor");
      return subscription.onCursor((cursor) => listener(cursor as string | null));
    },
    syncNow: () => subscription.syncNow(),
    unsubscribe: async () => {
      if (released) return;
      released = true;
      stopSignal?.removeEventListener("abort", onStop);
      await subscription.unsubscribe();
      if (--entry.subscriptions === 0) {
        if (sharedServices.get(client) === entry) sharedServices.delete(client);
        await entry.service.close();
      }
    },
  };
  if (stopSignal?.aborted) onStop();
  else stopSignal?.addEventListener("abort", onStop, { once: true });
  return live;
}

/**
 * What one call of createProgressApi's writes and library read may add to the options the API was made
 * with: a signal of its own (the call ends when either it or the API's `signal` aborts), and its own
 * retry fields over the API's (an outbox that retries on a schedule of its own makes one attempt).
 */
export interface CallOptions {
  signal?: AbortSignal;
  retry?: Partial<RetryOptions>;
}

/** `bound` with one call's own options (CallOptions) on top. */
function withCall(bound: ProgressApiOptions, call: CallOptions | undefined): ProgressApiOptions {
  if (!call) return bound;
  const signal = call.signal && bound.signal
    ? AbortSignal.any([bound.signal, call.signal])
    : call.signal ?? bound.signal;
  const retry = call.retry ? { ...bound.retry, ...call.retry } : bound.retry;
  return { ...bound, ...(signal ? { signal } : {}), ...(retry ? { retry } : {}) };
}

/**
 * The same calls bound to one client and one set of options. They share one ServerClock
 * (`options.clock`, or a new one) that every 2xx answer teaches, so a device whose clock is off is
 * corrected without asking: stamp a write's `updated_at` with `now()` when the reading happens.
 * The writes and listProgress take a call's own signal and retry fields (CallOptions).
 */
export function createProgressApi(client: SupabaseClient, options: ProgressApiOptions = {}) {
  // Here, at once (a RangeError or TypeError naming the option), rather than as every call's rejection later.
  checkApiOptions(options, "createProgressApi");
  const clock = options.clock ?? new ServerClock();
  const bound: ProgressApiOptions = { ...options, clock };
  return {
    clock,
    /**
     * The server's clock now (this device's, corrected once answers prove it off), ISO 8601, for
     * dating a write: never the same instant twice (ServerClock.stamp).
     */
    now: () => new Date(clock.stamp()).toISOString(),
    updateProgress: (write: ProgressWriteInput, call?: CallOptions) =>
      updateProgress(client, write, withCall(bound, call)),
    updateProgressBatch: (writes: ProgressWriteInput[], call?: CallOptions) =>
      updateProgressBatch(client, writes, withCall(bound, call)),
    getProgress: (seriesId: string) => getProgress(client, seriesId, bound),
    listProgress: (query?: ListProgressOptions, call?: CallOptions) =>
      listProgress(client, query, withCall(bound, call)),
    changesSince: (cursor?: string | null, query?: { limit?: number }) =>
      changesSince(client, cursor ?? null, query, bound),
    resetProgress: (seriesId: string, reset: { device_id: string; updated_at?: string }) =>
      resetProgress(client, seriesId, reset, bound),
    subscribeToProgress: (
      userId: string,
      handler: ProgressHandler,
      sub: Omit<SubscribeToProgressOptions, "api"> = {},
    ) => subscribeToProgress(client, userId, handler, { ...sub, api: bound }),
  };
}
