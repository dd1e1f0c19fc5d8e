// What `supabase start`'s gateway adds for browsers, for the local API server to do the same: Kong 2.8.1
// (the CLI's image) with the declarative config of supabase/cli `internal/start/templates/kong.yml` (as
// embedded in the CLI 2.117.0 this repository installs), where every route carries the `cors` plugin
// with its defaults (no `origins`, `headers`, `exposed_headers`, `credentials` or `max_age` set). Kong's
// kong/plugins/cors/handler.lua then:
// * answers a preflight (OPTIONS with `Origin` and `Access-Control-Request-Method`) itself, 200 with no
//   body, before the service sees it (`preflight_continue` false): any origin (`*`), the methods
//   `GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT`, the requested headers echoed, no max-age;
// * sets `Access-Control-Allow-Origin: *` on every other answer of the route (its header_filter), the
//   service's own and Kong's alike, over any value the service gave; it exposes no header and adds no
//   `Vary` (for `*`).
// A path no route matches is Kong's own 404 (`{"message":"no Route matched with those values"}`), before
// any route's plugin runs: no CORS header (kong.yml declares no global plugin).

/**
 * The `paths` of the routes of `supabase start`'s kong.yml (CLI 2.117.0), each with the cors plugin. Kong
 * matches a route's path as a prefix of the request's (`/rest/v1/` matches `/rest/v1/x`, not `/rest/v1`).
 */
export const KONG_CORS_ROUTE_PATHS: readonly string[] = [
  "/auth/v1/verify",
  "/auth/v1/callback",
  "/auth/v1/authorize",
  "/auth/v1/",
  "/rest/v1/",
  "/rest-admin/v1/",
  "/graphql/v1",
  "/realtime/v1/",
  "/realtime/v1/api",
  "/storage/v1/s3/",
  "/storage/v1/",
  "/functions/v1/",
  "/.well-known/oauth-authorization-server",
  "/pg/",
  "/analytics/v1/",
  "/pooler/v2/",
  "/mcp",
];

/** Whether a request to `pathname` matches one of Kong's routes, each of which carries the cors plugin. */
export function onKongCorsRoute(pathname: string): boolean {
  return KONG_CORS_ROUTE_PATHS.some((prefix) => pathname.startsWith(prefix));
}

/** What Kong's cors plugin takes for a preflight and answers itself (its access phase). */
export function isKongPreflight(req: Request): boolean {
  return req.method === "OPTIONS" && req.headers.has("origin") &&
    req.headers.has("access-control-request-method");
}

/** Kong's cors plugin's answer to a preflight, with its defaults (any origin, the requested headers). */
export function kongPreflight(req: Request): Response {
  const headers = new Headers({
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT",
  });
  const requested = req.headers.get("access-control-request-headers");
  if (requested) headers.set("access-control-allow-headers", requested);
  return new Response(null, { status: 200, headers });
}

/**
 * `answer` with Kong's `Access-Control-Allow-Origin: *` (its header_filter), whatever the answer had.
 * A socket's 101 is left as it is: its upgrade is tied to that very Response, and a browser applies no
 * CORS to a WebSocket (so is a Response.error(), which has no headers to set).
 */
export function withKongAllowOrigin(answer: Response): Response {
  if (answer.status === 101 || answer.type === "error") return answer;
  try {
    answer.headers.set("access-control-allow-origin", "*");
    return answer;
  } catch {
    // Immutable headers (a Response.error(), a fetched Response): a copy with them set.
    const headers = new Headers(answer.headers);
    headers.set("access-control-allow-origin", "*");
    return new Response(answer.body, { status: answer.status, statusText: answer.statusText, headers });
  }
}

/**
 * Kong's cors plugin around a service: on a path under one of its routes a preflight is answered by the
 * plugin and every other answer (`answer()`, the service's) carries `Access-Control-Allow-Origin: *`;
 * elsewhere the answer as it is. (The API server does the same, but for a function's own preflight.)
 */
export async function withKongCors(
  req: Request,
  pathname: string,
  answer: () => Response | Promise<Response>,
): Promise<Response> {
  if (!onKongCorsRoute(pathname)) return await answer();
  if (isKongPreflight(req)) return kongPreflight(req);
  return withKongAllowOrigin(await answer());
}
