// JSON errors for HTTP handlers: every error response has the body
//   {"error": {"code": "<machine code>", "message": "<for humans>", "details": {...}}}
// details is always an object ({} when there is nothing more to say), so a client can read
// error.details.issues or error.details.reason without checking for details first.
// Handlers throw HttpError anywhere; the top level turns it into a Response with errorResponse().

export type HttpErrorCode =
  | "invalid_json" // 400: the body is not JSON
  | "invalid_request" // 400: JSON of the wrong shape (types, unknown or missing fields, bad query)
  | "missing_token" // 401: no Authorization header, or another scheme than Bearer
  | "invalid_token" // 401: a Bearer header without one token, malformed, bad signature, wrong audience/issuer, unknown key
  | "token_expired" // 401
  | "forbidden" // 403: a valid token that may not use this API (anon, no user, service_role without X-Act-As-User)
  | "not_found" // 404: no such route
  | "progress_not_found" // 404: no progress for that series
  | "method_not_allowed" // 405
  | "not_acceptable" // 406: the Accept header excludes application/json
  | "request_timeout" // 408: the request body stopped arriving (idle bound) or took too long in all (total)
  | "payload_too_large" // 413
  | "unsupported_media_type" // 415: not JSON, a charset other than UTF-8, a content or transfer coding
  | "validation_failed" // 422: well-formed values outside the data model (ranges, formats)
  | "constraint_violation" // 422: the database rejected a value (check / not-null violation)
  | "service_unavailable" // 503: database or key server unreachable, overloaded, timed out
  | "internal_error" // 500: a bug; never caused by input
  // deno-lint-ignore ban-types -- `string & {}` keeps editor completion of the known codes above
  | (string & {});

export class HttpError extends Error {
  readonly status: number;
  readonly code: HttpErrorCode;
  readonly details?: unknown;
  readonly headers?: Record<string, string>;

  constructor(
    status: number,
    code: HttpErrorCode,
    message: string,
    options: { details?: unknown; headers?: Record<string, string>; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "HttpError";
    this.status = status;
    this.code = code;
    this.details = options.details;
    this.headers = options.headers;
  }
}

export function isHttpError(error: unknown): error is HttpError {
  return error instanceof HttpError;
}

/** A JSON response with the error body; extra headers (CORS, Allow, Retry-After) are merged in. */
export function errorResponse(
  status: number,
  code: HttpErrorCode,
  message: string,
  details?: unknown,
  headers: HeadersInit = {},
): Response {
  const body = { error: { code, message, details: details ?? {} } };
  const h = new Headers(headers);
  h.set("content-type", "application/json; charset=utf-8");
  h.set("cache-control", "no-store");
  return new Response(JSON.stringify(body), { status, headers: h });
}

/** The Response for an HttpError (its own headers first, then `headers`). */
export function httpErrorResponse(error: HttpError, headers: HeadersInit = {}): Response {
  const h = new Headers(headers);
  for (const [k, v] of Object.entries(error.headers ?? {})) h.set(k, v);
  return errorResponse(error.status, error.code, error.message, error.details, h);
}

/** A JSON success response. */
export function jsonResponse(body: unknown, status = 200, headers: HeadersInit = {}): Response {
  const h = new Headers(headers);
  h.set("content-type", "application/json; charset=utf-8");
  h.set("cache-control", "no-store");
  return new Response(JSON.stringify(body), { status, headers: h });
}
