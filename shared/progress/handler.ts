// The progress API as a fetch handler (Request -> Response). supabase/functions/progress/index.ts
// serves it with Deno.serve; tests also serve it on a local port against the real database
// (tests/functions/progress_handler.test.ts) to reach a dead database, other keys and the log sink.
//
// Routes, relative to the function (the function sees the path /progress/..., see README):
//   POST   /progress                       one write                   -> 200 WriteResult
//   POST   /progress/batch                 {writes: [...]} (1..100)    -> 200 {results: WriteResult[]}
//   GET    /progress?limit&cursor&include_cleared   library           -> 200 {items, next_cursor}
//   GET    /progress/changes?since&limit   changes since a cursor      -> 200 {changes, next_cursor, has_more}
//                                          (started_over: true where it read from the start)
//   GET    /progress/series/:seriesId      one series                  -> 200 {progress} | 404
//   DELETE /progress/series/:seriesId?device_id&updated_at  reset (tombstone write) -> 200 WriteResult
//   OPTIONS (any path)                     CORS preflight              -> 204
//   HEAD where GET is                      the GET answer without its body (RFC 9110, 9.3.2)
// Check order: route (404/405), token (401/403), Accept (406), query string (400/422; routes without
// parameters take none), media type, charset and content coding (415), size (413), a body that stops
// arriving or takes too long in all (408), JSON (400), body schema (400/422), database (422/503). A reset
// (DELETE) refuses a body (400) before reading it when its Content-Length declares one.
// Errors: {"error": {"code", "message", "details"}}.
// A client that leaves: the request's signal aborts (Deno.serve aborts it when the client disconnects before
// its answer, and the local gateway forwards the client's; Supabase's edge runtime, as far as its source
// shows, does not before the answer is written: README, "A client that leaves"); the database call under
// way is cancelled and rolls back, or leaves the line for a pooled connection (CallCancelledError in
// store.ts), so its pooled connection is free at once instead of when a wait (a lock of the user's other
// write) would have ended. Logged as request_cancelled. A call whose last statement had answered goes on to
// commit (an abort then cancels nothing), and so does one whose last statement's cancel request the database
// did not act on (ProgressStore in store.ts): it stays, logged as request_aborted with the answer's status.
// Paths: a percent-encoded unreserved character is that character (RFC 3986, 6.2.2.2: /progress/%62atch
// is /progress/batch); any other escape stays one (an encoded slash is never a separator).
//
// Callers: a signed-in user's access token (role authenticated) acts as that user. The anon key
// (no user) is refused with 403. A service_role token (server-side jobs) must name the user in the
// X-Act-As-User header and then acts exactly as that user (role authenticated, RLS in force); it is
// never a way around RLS, and without the header it gets 403.

import { bearerCredentials, type JwtClaims, JwtError, type JwtVerifier } from "../auth/jwt.ts";
import {
  BODY_BOUND_MS,
  BODY_BYTES,
  DEFAULT_BODY_IDLE_TIMEOUT_MS,
  DEFAULT_BODY_TOTAL_TIMEOUT_MS,
  hasBody,
  readJsonBody,
} from "../http/body.ts";
import { type CorsOptions, preflightResponse, withCors } from "../http/cors.ts";
import { HttpError, httpErrorResponse, jsonResponse } from "../http/errors.ts";
import { acceptsJson } from "../http/mediaType.ts";
import { decodeUnreserved } from "../http/path.ts";
import { checkNumberOption, describeError } from "../options/checkOptions.ts";
import {
  batchWriteSchema,
  changesQuerySchema,
  encodeListCursor,
  listQuerySchema,
  noQuerySchema,
  parseOrThrow,
  progressWriteSchema,
  resetQuerySchema,
  seriesIdSchema,
  type ValidProgressWrite,
} from "./schemas.ts";
import { CallCancelledError, type DatabaseClock, mapDatabaseError, type ProgressStore } from "./store.ts";
import { PROGRESS_LIMITS, type WriteResult } from "./types.ts";

export type LogSink = (entry: Record<string, unknown>) => void;

export interface ProgressHandlerOptions {
  /** Verifies access tokens. A function is called per request (lets env-based setup fail as a response). */
  verifier: JwtVerifier | (() => JwtVerifier);
  store: ProgressStore | (() => ProgressStore);
  /** Structured log sink; default: one JSON line on stdout. */
  log?: LogSink;
  /**
   * Request bodies above this many bytes are answered 413 (default PROGRESS_LIMITS.maxBodyBytes, 64
   * KiB): a whole number from 0, or Infinity for no limit (BODY_BYTES in shared/http/body.ts), checked
   * as bodyIdleTimeoutMs is.
   */
  maxBodyBytes?: number;
  /**
   * How long a request body may go without a byte arriving before it is answered 408
   * request_timeout (default 10 s; why: DEFAULT_BODY_IDLE_TIMEOUT_MS in shared/http/body.ts): above 0
   * and up to 2^31-1 ms, or Infinity for no bound (BODY_BOUND_MS); another number (0, a negative,
   * NaN) throws a RangeError here, a value that is not a number (null too) a TypeError. Undefined is
   * not given (the default).
   */
  bodyIdleTimeoutMs?: number;
  /**
   * How long a whole request body may take, from its first read, before it is answered 408
   * request_timeout however steadily it arrives (default 30 s; why: DEFAULT_BODY_TOTAL_TIMEOUT_MS in
   * shared/http/body.ts): checked as bodyIdleTimeoutMs is.
   */
  bodyTotalTimeoutMs?: number;
  /** The function's name = first path segment (default "progress"). */
  functionName?: string;
  cors?: CorsOptions;
  /**
   * The function host's clock, epoch ms (default Date.now): X-Server-Time of the answers that never
   * reached the database, corrected by the database's clock as last read (the others carry the
   * database's clock, see DatabaseClock in store.ts).
   */
  hostClock?: () => number;
}

export const defaultLog: LogSink = (entry) => console.log(JSON.stringify(entry));

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The header in which a service_role caller names the user it acts for. A user's own token may send
 * it only with its own id; the body never names a user (a `user_id` field is rejected with 400).
 */
export const ACT_AS_USER_HEADER = "x-act-as-user";

type Route =
  | { name: "root" }
  | { name: "batch" }
  | { name: "changes" }
  /** seriesId null: the path segment is not valid percent-encoding (refused after the token check). */
  | { name: "series"; seriesId: string | null };

const ALLOWED: Record<Route["name"], string[]> = {
  root: ["GET", "POST"],
  batch: ["POST"],
  changes: ["GET"],
  series: ["GET", "DELETE"],
};

function matchRoute(pathname: string, functionName: string): Route | null {
  // Supabase hands the function /<name>/...; tolerate the public /functions/v1 prefix as well.
  let path = decodeUnreserved(pathname).replace(/^\/functions\/v1(?=\/)/, "");
  if (path.length > 1 && path.endsWith("/")) path = path.slice(0, -1);
  const base = `/${functionName}`;
  if (path === base) return { name: "root" };
  if (!path.startsWith(`${base}/`)) return null;
  const rest = path.slice(base.length + 1).split("/");
  if (rest.length === 1 && rest[0] === "batch") return { name: "batch" };
  if (rest.length === 1 && rest[0] === "changes") return { name: "changes" };
  if (rest.length === 2 && rest[0] === "series" && rest[1] !== "") {
    // The id is decoded once, from the segment as sent (the last one: decodeUnreserved adds or removes
    // no slash). Decoding rest[1] would decode twice: in `%%37%30` the unreserved escapes make `%70`,
    // an invalid escape would become the id "p".
    const sent = pathname.replace(/(?<=.)\/$/, "");
    let seriesId: string | null;
    try {
      seriesId = decodeURIComponent(sent.slice(sent.lastIndexOf("/") + 1));
    } catch {
      seriesId = null;
    }
    return { name: "series", seriesId };
  }
  return null;
}

/**
 * supabase-js adds this to every function call made with a `region` option (beside an x-region
 * header); it is the platform's routing, not a parameter of any route.
 */
const REGION_PARAMETER = "forceFunctionRegion";

/** Query parameters as an object; a repeated parameter becomes an array (and fails validation). */
function queryObject(url: URL): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of url.searchParams) {
    if (k === REGION_PARAMETER) continue;
    const prev = out[k];
    out[k] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}

function requestId(req: Request): string {
  const given = req.headers.get("x-request-id") ?? req.headers.get("sb-request-id");
  return given && /^[A-Za-z0-9._:-]{1,128}$/.test(given) ? given : crypto.randomUUID();
}

export function createProgressHandler(options: ProgressHandlerOptions): (req: Request) => Promise<Response> {
  const functionName = options.functionName ?? "progress";
  const hostClock = options.hostClock ?? (() => Date.now());
  // The database's clock minus the host's, from the last request that read it (undefined before the
  // first). A device hears both kinds of answers and keeps one estimate of the server's clock: an
  // answer dated by a host clock off the database's would move it by that much (a clock that jumps
  // restarts it from the newest answer), and a page turn stamped then, after a write another device
  // dated by the database's clock, would be refused as stale. So the answers that never reached the
  // database are dated by the host's clock plus this. Measured when the store hands the reading
  // back, so a little late: such an answer is dated early by at most that delay.
  let databaseMinusHostMs: number | undefined;
  const requestClock = (): DatabaseClock => {
    let ms: number | undefined;
    return {
      get ms() {
        return ms;
      },
      set ms(value: number | undefined) {
        ms = value;
        if (value !== undefined) databaseMinusHostMs = value - hostClock();
      },
    };
  };
  const serverNow = () => hostClock() + (databaseMinusHostMs ?? 0);
  const log = options.log ?? defaultLog;
  // A bad limit or bound fails here, when the function boots, rather than as a 500 (or a 408 or 413)
  // on each request. Only undefined is not given (the default), as for readBodyLimited: null is
  // refused (a TypeError), not read as the default, since a caller may mean it as "no bound" (a 408's
  // details show an Infinity bound as null).
  const maxBytes =
    checkNumberOption(options.maxBodyBytes, BODY_BYTES, "createProgressHandler", "maxBodyBytes") ??
      PROGRESS_LIMITS.maxBodyBytes;
  const bodyBounds = {
    idleTimeoutMs: checkNumberOption(
      options.bodyIdleTimeoutMs,
      BODY_BOUND_MS,
      "createProgressHandler",
      "bodyIdleTimeoutMs",
    ) ?? DEFAULT_BODY_IDLE_TIMEOUT_MS,
    totalTimeoutMs: checkNumberOption(
      options.bodyTotalTimeoutMs,
      BODY_BOUND_MS,
      "createProgressHandler",
      "bodyTotalTimeoutMs",
    ) ?? DEFAULT_BODY_TOTAL_TIMEOUT_MS,
  };
  const verifier = () => typeof options.verifier === "function" ? options.verifier() : options.verifier;
  const store = () => typeof options.store === "function" ? options.store() : options.store;

  async function authenticate(req: Request): Promise<JwtClaims & { sub: string }> {
    const credentials = bearerCredentials(req.headers.get("authorization"));
    const challenge = { "www-authenticate": 'Bearer realm="progress"' };
    if (credentials.kind === "malformed") {
      // A Bearer header that holds no token: a bad token (401, as Supabase's gateway answers a missing
      // or invalid JWT), not a missing one, and not a 400 (RFC 6750 permits one) that clients would take
      // for a body or query to fix rather than a session to renew.
      throw new HttpError(401, "invalid_token", credentials.message, {
        details: { reason: "malformed_token" },
        headers: { "www-authenticate": `Bearer realm="progress", error="invalid_token"` },
      });
    }
    if (credentials.kind === "missing") {
      throw new HttpError(
        401,
        "missing_token",
        "An access token is required (Authorization: Bearer <token>)",
        {
          headers: challenge,
        },
      );
    }
    let claims: JwtClaims;
    try {
      claims = await verifier().verify(credentials.token);
    } catch (error) {
      if (!(error instanceof JwtError)) throw error;
      if (error.code === "keys_unavailable") {
        throw new HttpError(503, "service_unavailable", error.message, {
          headers: { "retry-after": "5" },
          cause: error,
        });
      }
      const code = error.code === "token_expired" ? "token_expired" : "invalid_token";
      throw new HttpError(401, code, error.message, {
        details: { reason: error.code },
        headers: { "www-authenticate": `Bearer realm="progress", error="invalid_token"` },
      });
    }
    const actAs = req.headers.get(ACT_AS_USER_HEADER);
    if (claims.role === "service_role") {
      // Server-side use: the service key acts for ONE user, named in a header (never in the body),
      // and from then on exactly as that user would: role authenticated, RLS in force.
      if (!actAs || !UUID.test(actAs)) {
        throw new HttpError(
          403,
          "forbidden",
          `A service_role token must name the user it acts for in the ${ACT_AS_USER_HEADER} header (a user id)`,
        );
      }
      return {
        sub: actAs.toLowerCase(),
        role: "authenticated",
        aud: "authenticated",
        acting_role: "service_role",
      };
    }
    if (claims.role !== "authenticated") {
      throw new HttpError(
        403,
        "forbidden",
        `This API needs a signed-in user's access token, not role "${claims.role ?? "none"}"`,
      );
    }
    if (typeof claims.sub !== "string") {
      throw new HttpError(403, "forbidden", "The access token has no user (sub)");
    }
    if (!UUID.test(claims.sub)) {
      // A third-party auth provider's user (Clerk, Firebase, Auth0, Cognito): no Supabase Auth user
      // id, so no reader here (auth.uid() in the database would fail on it).
      throw new HttpError(403, "forbidden", "The access token's subject (sub) is not a user id (a UUID)");
    }
    if (actAs !== null && actAs.toLowerCase() !== claims.sub.toLowerCase()) {
      throw new HttpError(
        403,
        "forbidden",
        `Only a service_role token may act for another user (${ACT_AS_USER_HEADER})`,
      );
    }
    return claims as JwtClaims & { sub: string };
  }

  /** One JSON line per conflict (stale or tie) a write met; rows of the same story are in the DB log. */
  function logConflicts(
    ctx: { requestId: string; userId: string },
    writes: ValidProgressWrite[],
    results: WriteResult[],
  ) {
    results.forEach((r, i) => {
      if (!r.conflict) return;
      const w = writes[i];
      log({
        ts: new Date().toISOString(),
        level: "info",
        component: "progress",
        event: "progress_conflict",
        kind: r.conflict,
        // won: this request's write won (a tie it won by device id); otherwise it was rejected.
        won: r.won,
        request_id: ctx.requestId,
        user_id: ctx.userId,
        series_id: w.series_id,
        incoming: {
          updated_at: w.updated_at,
          device_id: w.device_id,
          chapter: w.chapter,
          page: w.page,
          percentage: w.percentage,
          cleared: w.cleared,
        },
        // The other write of the conflict: the stored row it lost to, or the write it replaced.
        other: r.conflict_with,
        stored: { updated_at: r.progress.updated_at, device_id: r.progress.device_id },
      });
    });
  }

  /**
   * `caller` learns the user once the token is checked (for the log line of a failure after that),
   * `clock` the database's clock once a store call reached the database (for X-Server-Time).
   */
  async function route(
    req: Request,
    url: URL,
    reqId: string,
    caller: { userId?: string },
    clock: DatabaseClock,
  ): Promise<Response> {
    const matched = matchRoute(url.pathname, functionName);
    if (!matched) throw new HttpError(404, "not_found", `No route ${req.method} ${url.pathname}`);
    const allowed = ALLOWED[matched.name];
    // HEAD is answered as GET is (the body is dropped at the end), as HTTP servers and routers do.
    const method = req.method === "HEAD" ? "GET" : req.method;
    if (!allowed.includes(method)) {
      const advertised = allowed.flatMap((m) => (m === "GET" ? ["GET", "HEAD"] : [m]));
      throw new HttpError(
        405,
        "method_not_allowed",
        `${req.method} is not allowed here; use ${advertised.join(" or ")}`,
        {
          headers: { allow: [...advertised, "OPTIONS"].join(", ") },
        },
      );
    }

    const claims = await authenticate(req);
    caller.userId = claims.sub;
    // Every answer is JSON: a request that refuses JSON gets 406 (with the JSON error body all the same,
    // as RFC 9110, 15.5.7 lets a server describe what it can send; PostgREST's PGRST107 is the same).
    const accept = req.headers.get("accept");
    if (!acceptsJson(accept)) {
      throw new HttpError(
        406,
        "not_acceptable",
        "This API answers with application/json only, which the Accept header excludes",
        { details: { accept, available: ["application/json"] } },
      );
    }
    const ctx = { requestId: reqId, userId: claims.sub };
    const db = store();

    switch (matched.name) {
      case "root": {
        if (method === "POST") {
          parseOrThrow(noQuerySchema, queryObject(url), "query");
          const body = await readJsonBody(req, { maxBytes, ...bodyBounds });
          const write = parseOrThrow(progressWriteSchema, body, "progress write");
          const result = await db.write(claims, write, clock, req.signal);
          logConflicts(ctx, [write], [result]);
          return jsonResponse(result);
        }
        const q = parseOrThrow(listQuerySchema, queryObject(url), "query");
        const limit = q.limit ?? PROGRESS_LIMITS.listDefault;
        const rows = await db.list(
          claims,
          {
            limit: limit + 1,
            before: q.cursor,
            includeCleared: q.include_cleared === "true",
          },
          clock,
          req.signal,
        );
        const items = rows.slice(0, limit);
        return jsonResponse({
          items,
          next_cursor: rows.length > limit ? encodeListCursor(items[items.length - 1]) : null,
        });
      }
      case "batch": {
        parseOrThrow(noQuerySchema, queryObject(url), "query");
        const body = await readJsonBody(req, { maxBytes, ...bodyBounds });
        const { writes } = parseOrThrow(batchWriteSchema, body, "batch");
        const results = await db.writeBatch(claims, writes, clock, req.signal);
        logConflicts(ctx, writes, results);
        return jsonResponse({ results });
      }
      case "changes": {
        const q = parseOrThrow(changesQuerySchema, queryObject(url), "query");
        return jsonResponse(
          await db.changes(
            claims,
            {
              cursor: q.since ?? "",
              limit: q.limit ?? PROGRESS_LIMITS.changesDefault,
            },
            clock,
            req.signal,
          ),
        );
      }
      case "series": {
        if (matched.seriesId === null) {
          const message = "The series id in the path is not valid percent-encoding";
          throw new HttpError(400, "invalid_request", message, {
            details: { issues: [{ path: "series_id", code: "invalid_percent_encoding", message }] },
          });
        }
        const seriesId = parseOrThrow(seriesIdSchema, matched.seriesId, "series id");
        if (method === "GET") {
          parseOrThrow(noQuerySchema, queryObject(url), "query");
          const progress = await db.get(claims, seriesId, clock, req.signal);
          if (!progress) throw new HttpError(404, "progress_not_found", `No progress for series ${seriesId}`);
          return jsonResponse({ progress });
        }
        const q = parseOrThrow(resetQuerySchema, queryObject(url), "query");
        // A reset says everything in its query; a body (say, a user_id) would be ignored, so refuse it,
        // unread: at once when its Content-Length declares one (of any size: no 413, and no 408 when it
        // never comes), else (chunked: an empty body is fine) at its first byte. Nothing more of it is
        // read, so the connection is not used again (Connection: close, as for a 408).
        if (await hasBody(req, bodyBounds)) {
          const message = "DELETE takes no body: send device_id and updated_at in the query";
          throw new HttpError(400, "invalid_request", message, {
            details: { issues: [{ path: "", code: "unexpected_body", message }] },
            headers: { connection: "close" },
          });
        }
        const write: ValidProgressWrite = {
          series_id: seriesId,
          chapter: 0,
          page: 0,
          percentage: 0,
          cleared: true,
          device_id: q.device_id,
          updated_at: q.updated_at,
        };
        const result = await db.write(claims, write, clock, req.signal);
        logConflicts(ctx, [write], [result]);
        return jsonResponse(result);
      }
    }
  }

  return async function handler(req: Request): Promise<Response> {
    const reqId = requestId(req);
    let res: Response;
    if (req.method === "OPTIONS") {
      // The preflight answers before any route or token check, but like every answer it carries
      // the request id and the server's clock (README: every answer; here the host's, corrected).
      res = preflightResponse(req, options.cors);
      res.headers.set("x-request-id", reqId);
      res.headers.set("x-server-time", new Date(serverNow()).toISOString());
      return res;
    }
    const caller: { userId?: string } = {};
    const clock = requestClock();
    let cancelled = false;
    try {
      res = await route(req, new URL(req.url), reqId, caller, clock);
    } catch (caught) {
      let error = caught instanceof HttpError ? caught : mapDatabaseError(caught);
      if (error instanceof CallCancelledError) {
        cancelled = true;
        // The client left (or the server is closing) while the database worked for it: not a failure
        // of the database (no dependency_unavailable), so info. Nothing of the call was stored.
        log({
          ts: new Date().toISOString(),
          level: "info",
          component: "progress",
          event: "request_cancelled",
          request_id: reqId,
          method: req.method,
          path: new URL(req.url).pathname,
          ...(caller.userId !== undefined ? { user_id: caller.userId } : {}),
          reason: describeError(error.reason),
        });
      } else if (error.status === 408) {
        // A body that stopped arriving or took too long in all: the client's link (or a client holding
        // the request open), not a failure here, so info; which bound and how far it got, never the body.
        const details = (error.details ?? {}) as Record<string, unknown>;
        log({
          ts: new Date().toISOString(),
          level: "info",
          component: "progress",
          event: "request_timeout",
          request_id: reqId,
          method: req.method,
          path: new URL(req.url).pathname,
          ...(caller.userId !== undefined ? { user_id: caller.userId } : {}),
          code: error.code,
          bound: details.bound,
          idle_timeout_ms: details.idle_timeout_ms,
          total_timeout_ms: details.total_timeout_ms,
          received_bytes: details.received_bytes,
        });
      }
      if (error.status >= 500 && !(error instanceof CallCancelledError)) {
        const cause = error.cause ?? caught;
        log({
          ts: new Date().toISOString(),
          level: error.status === 503 ? "warn" : "error",
          component: "progress",
          event: error.status === 503 ? "dependency_unavailable" : "request_failed",
          request_id: reqId,
          method: req.method,
          path: new URL(req.url).pathname,
          error: cause instanceof Error ? `${cause.name}: ${cause.message}` : String(cause),
          ...(error.status === 500 && cause instanceof Error ? { stack: cause.stack } : {}),
        });
        if (error.status === 500) {
          error = new HttpError(500, "internal_error", "Internal error", { details: { request_id: reqId } });
        }
      }
      res = httpErrorResponse(error);
    }
    if (req.signal.aborted && !cancelled) {
      // The signal aborted once the database call's last statement had answered (its transaction then
      // committed: a write stays stored), during the last statement, whose cancel request the database did
      // not act on (it ran on and committed), or while the function did something else (read the body,
      // checked the token): nothing was cancelled, and the answer, which a client that left never gets, is
      // logged by its status.
      log({
        ts: new Date().toISOString(),
        level: "info",
        component: "progress",
        event: "request_aborted",
        request_id: reqId,
        method: req.method,
        path: new URL(req.url).pathname,
        ...(caller.userId !== undefined ? { user_id: caller.userId } : {}),
        reason: describeError(req.signal.reason),
        status: res.status,
      });
    }
    // A HEAD answer is the GET answer itself: the HTTP server (Deno.serve, the edge runtime) sends its
    // status and headers, Content-Length the GET body's (RFC 9110 8.6), and drops the body. Dropping it
    // here would make that Content-Length 0.
    res.headers.set("x-request-id", reqId);
    // The server's clock, so clients can correct theirs before stamping updated_at (serverClock.ts):
    // the database's when the request reached it (errors too: a lock or statement timeout, a value
    // the database refused), as the database dates and judges writes by its own clock; for the rest
    // (refused before the database, or the database unreachable) the host's, corrected by the
    // database's as last read.
    res.headers.set("x-server-time", new Date(clock.ms ?? serverNow()).toISOString());
    return withCors(res, req, options.cors);
  };
}
