// CORS for browser clients of the edge functions. The API authenticates with a bearer token, never
// with cookies, so any origin may call it (no credentials mode); preflights are answered without
// authentication (the Supabase gateway lets OPTIONS through unauthenticated too).

export interface CorsOptions {
  /** Allowed origin: "*" (default) or a list; a listed origin is echoed back. */
  origins?: "*" | readonly string[];
  methods?: readonly string[];
  /** Request headers a browser may send (default: every header supabase-js 2.119 may send). */
  headers?: readonly string[];
  maxAgeSeconds?: number;
}

// supabase-js's own list (its `cors` module: SUPABASE_HEADERS: retries and trace propagation add
// x-retry-count, traceparent, tracestate, baggage), functions-js's x-region (a client created with a
// `region`), and our x-request-id. A header missing here fails the browser's preflight: every call
// of such a client would end in a NetworkError.
const DEFAULT_HEADERS = [
  "authorization",
  "apikey",
  "content-type",
  "x-client-info",
  "x-retry-count",
  "traceparent",
  "tracestate",
  "baggage",
  "x-region",
  "x-request-id",
] as const;

// Answer headers a browser's script may read: the request id, a 503's wait, the server's clock, and
// the two that say more than the JSON body's code: a 401's challenge (RFC 6750 `error=...`) and a
// 405's allowed methods. Beyond these a browser shows a script only the CORS-safelisted ones.
const EXPOSED_HEADERS = [
  "x-request-id",
  "retry-after",
  "x-server-time",
  "www-authenticate",
  "allow",
] as const;

export function corsHeaders(req: Request, options: CorsOptions = {}): Headers {
  const h = new Headers();
  const origins = options.origins ?? "*";
  if (origins === "*") {
    h.set("access-control-allow-origin", "*");
  } else {
    const origin = req.headers.get("origin");
    if (origin && origins.includes(origin)) h.set("access-control-allow-origin", origin);
    h.set("vary", "Origin");
  }
  h.set("access-control-allow-methods", (options.methods ?? ["GET", "POST", "DELETE", "OPTIONS"]).join(", "));
  h.set("access-control-allow-headers", (options.headers ?? DEFAULT_HEADERS).join(", "));
  h.set("access-control-expose-headers", EXPOSED_HEADERS.join(", "));
  h.set("access-control-max-age", String(options.maxAgeSeconds ?? 86_400));
  return h;
}

/** The answer to a preflight (OPTIONS): 204 with the CORS headers. */
export function preflightResponse(req: Request, options: CorsOptions = {}): Response {
  return new Response(null, { status: 204, headers: corsHeaders(req, options) });
}

/** Copies the CORS headers onto a response (a new Response, so immutable headers are no problem). */
export function withCors(res: Response, req: Request, options: CorsOptions = {}): Response {
  const headers = new Headers(res.headers);
  for (const [k, v] of corsHeaders(req, options)) headers.set(k, v);
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers });
}
