// Which path `supabase start`'s Kong (2.8.1) routes a request on, for the local API server to route on the
// same one. Kong's router (kong/router.lua, exec) takes nginx's `$request_uri` (the request target as
// sent), cuts the query at the first `?`, and matches the routes' paths against
// `kong.tools.uri.normalize(path, true)` (since Kong 2.4, "to prevent trivial Route match bypass"; the
// docs' proxy reference, Normalization behavior), which:
// 1. decodes every percent-encoded byte but the reserved characters `!#$%&'()*+,/:;=?@[]`, which stay
//    encoded in upper case (`%2e` is `.`, `%70` is `p`, `%2f` stays `%2F`: no encoded slash splits a segment);
// 2. removes dot segments (RFC 3986 5.2.4: `/a/../b` is `/b`, `/..` at the root stays `/`) and merges
//    repeated slashes (`//functions` is `/functions`);
// 3. escapes what is not safe in a URI again (`%XX`, upper case): a space, `"`, `<`, `\`, a byte past 0x7F.
// The upstream is then asked for that normalized path (the route's strip_path cutting its prefix).
//
// A WHATWG URL parser (`new URL(req.url)`, what the services here read) differs: it takes `\` for `/`,
// so `/rest/v1\..\..\functions/v1/progress` is `/functions/v1/progress` to it and `/rest/v1%5C..%5C..` (the
// Data API's route) to Kong; it keeps `%70` and `//` as sent, so `/functions/v1/%70rogress` names no
// function to it and `progress` to Kong. Routing on this path sends a request to the service Kong sends it
// to and no other, and the service reads that path, as Kong's upstream does: KongRouted.

/** The reserved characters Kong's percent-decoding leaves encoded (kong/tools/uri.lua, 2.8). */
const RESERVED = new Set("!#$%&'()*+,/:;=?@[]".split("").map((c) => c.charCodeAt(0)));

/** What Kong's escape() percent-encodes again: anything but these (its ESCAPE_PATTERN, case-insensitive). */
const UNSAFE = /[^!#$&'()*+,/:;=?@[\]A-Za-z0-9\-_.~%]/g;

/** Step 1: percent-decodes every byte but a reserved character's (which is upper-cased). Bytes as chars. */
function unescapeBytes(path: string): string {
  return path.replace(/%([0-9A-Fa-f]{2})/g, (triplet, hex: string) => {
    const byte = parseInt(hex, 16);
    return RESERVED.has(byte) ? triplet.toUpperCase() : String.fromCharCode(byte);
  });
}

/** Step 2: removes dot segments and merges repeated slashes, as Kong's unescape loop does. */
function removeDotSegments(path: string): string {
  if (!path.includes(".") && !path.includes("//")) return path;
  const output: string[] = [];
  let rest = path;
  while (rest.length > 0) {
    if (rest === "/.") rest = "/";
    else if (rest === "/..") {
      rest = "/";
      output.pop();
    } else if (rest === "." || rest === "..") rest = "";
    else if (rest.startsWith("../")) rest = rest.slice(3);
    else if (rest.startsWith("./")) rest = rest.slice(2);
    else if (rest.startsWith("/./")) rest = rest.slice(2);
    else if (rest.startsWith("/../")) {
      rest = rest.slice(3);
      output.pop();
    } else if (rest.startsWith("//")) rest = rest.slice(1);
    else {
      const next = rest.indexOf("/", 1);
      output.push(next === -1 ? rest : rest.slice(0, next));
      rest = next === -1 ? "" : rest.slice(next);
    }
  }
  return output.join("");
}

/** Step 3: percent-encodes (upper case) each byte that is not safe in a URI. */
function escapeBytes(path: string): string {
  return path.replace(UNSAFE, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}`);
}

/** `kong.tools.uri.normalize(path, true)` of Kong 2.8: the path Kong's router matches routes against. */
export function kongNormalizedPath(rawPath: string): string {
  if (rawPath === "" || rawPath === "/") return rawPath;
  // Kong reads bytes: a character past ASCII (as a URL string may hold it) is its UTF-8 bytes.
  const bytes = rawPath.replace(
    /[\u0080-\u{10FFFF}]+/gu,
    (text) => Array.from(new TextEncoder().encode(text), (byte) => String.fromCharCode(byte)).join(""),
  );
  return escapeBytes(removeDotSegments(unescapeBytes(bytes)));
}

/**
 * The request target of `url` (a Deno.serve Request's url: the scheme, the Host and the target as sent,
 * not parsed) split into its path, as sent, and the query from the first `?` (with it; "" without one).
 */
export function rawTarget(url: string): { path: string; query: string } {
  const afterScheme = url.indexOf("://");
  const pathAt = afterScheme === -1 ? -1 : url.indexOf("/", afterScheme + 3);
  const target = pathAt === -1 ? "/" : url.slice(pathAt);
  const queryAt = target.indexOf("?");
  return queryAt === -1
    ? { path: target, query: "" }
    : { path: target.slice(0, queryAt), query: target.slice(queryAt) };
}

/**
 * Whether nginx refuses `host` (a Host header's value) with its 400 before any of Kong's routing, as
 * `ngx_http_validate_host` does (Kong's proxy is OpenResty's nginx; `supabase start` publishes Kong's port
 * with nothing in front of it): empty, or empty once its port and one trailing dot are cut (`:80`, `.`);
 * two dots in a row (`a..b`, `..`); a `/` (which would move the path read from req.url) or a NUL.
 */
export function nginxRefusesHost(host: string): boolean {
  let hostLength = host.length;
  let lastDot = -2;
  let state: "usual" | "literal" | "rest" = "usual";
  for (let i = 0; i < host.length; i++) {
    const ch = host[i];
    if (ch === ".") {
      if (lastDot === i - 1) return true;
      lastDot = i;
    } else if (ch === ":") {
      if (state === "usual") {
        hostLength = i;
        state = "rest";
      }
    } else if (ch === "[") {
      if (i === 0) state = "literal";
    } else if (ch === "]") {
      if (state === "literal") {
        hostLength = i + 1;
        state = "rest";
      }
    } else if (ch === "/" || ch === "\0") return true;
  }
  if (lastDot === hostLength - 1) hostLength--;
  return hostLength <= 0;
}

/**
 * The 400 of a request whose Host header nginx (Kong's core, before its router) refuses (nginxRefusesHost)
 * or no URL parser reads, or null for any other. Deno writes the Host into req.url before the request
 * target, unchecked: with a `/` in it the path read from req.url would start inside the Host (`Host:
 * a/functions/v1/progress?` made `GET /rest/v1/x` the function's), and a Host no URL parser takes (`a b`,
 * `a%b`, `a:b:c`) leaves no URL for a service to read (a 500 before). An empty Host or one with `..` moved
 * nothing (Deno puts `localhost:<port>` in the URL for an empty one) but is nginx's 400 all the same, so a
 * client learns here what `supabase start` answers it. A request without any Host passes: Deno does not
 * say whether it came as HTTP/1.0, where nginx takes it too, or 1.1, where nginx refuses it.
 * A JSON 400 with PostgREST's error fields, as the local stack's 404s, and no CORS header: nginx refuses it
 * before any route's plugin.
 */
export function refusedHost(req: Request): Response | null {
  const host = req.headers.get("host");
  let readable = host === null || !nginxRefusesHost(host);
  try {
    new URL(req.url);
  } catch {
    readable = false;
  }
  if (readable) return null;
  return Response.json({
    code: "bad_request",
    message: `Bad request: the Host header ${JSON.stringify(host)} names no host`,
    details: null,
    hint: null,
  }, { status: 400 });
}

/** Where Kong routes a request (kongRouted). */
export interface KongRouted {
  /** The normalized path Kong matches its routes against. */
  pathname: string;
  /** The request's URL with that path (the query as sent). */
  url: URL;
  /**
   * The request as a service reading req.url is to see it, at the path Kong hands its upstream: `req` itself
   * when its URL already reads that path (most requests: a browser and fetch remove dot segments themselves),
   * else a copy at `url` (same method, headers, body and signal; `/functions/v1/%70rogress` is one). A copy
   * cannot be upgraded to a WebSocket: Realtime is handed `req` and `url` instead.
   */
  forwarded: Request;
}

/**
 * The path Kong routes `req` on, its URL with that path and the request at it. A `#` Kong keeps in the path
 * (a reserved character) is `%23` in the URL, so a service reads it inside the segment Kong routed, never
 * as the end of the path.
 */
export function kongRouted(req: Request): KongRouted {
  const { path, query } = rawTarget(req.url);
  const pathname = kongNormalizedPath(path);
  const parsed = new URL(req.url);
  const url = new URL(parsed.origin);
  url.pathname = pathname;
  url.search = query;
  // The request as sent where a URL parser reads Kong's path from it, else a copy at Kong's path: Kong hands
  // the upstream the normalized path (router.lua builds upstream_uri from it), so behind `supabase start`
  // the edge runtime's main service names the function from `/%70rogress` decoded (`progress`) and the
  // function reads `/series/%%36%35` as `/series/%65`, which it decodes once more itself.
  if (parsed.pathname === pathname) return { pathname, url, forwarded: req };
  const hasBody = req.method !== "GET" && req.method !== "HEAD";
  return {
    pathname,
    url,
    forwarded: new Request(url, {
      method: req.method,
      headers: req.headers,
      body: hasBody ? req.body : null,
      signal: req.signal,
    }),
  };
}
