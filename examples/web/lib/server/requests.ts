// Small rules every route handler of the app follows.

/**
 * A redirect to a path of this site. Relative on purpose: behind a proxy (or `next start` on a
 * loopback address) the request URL Next.js sees names its own host ("localhost:3000"), not the one
 * the browser used, and an absolute redirect built from it sends the reader to another origin
 * (another device id, no outbox, no session cookie).
 */
export function redirectTo(path: `/${string}`, status: 303 | 307 = 303): Response {
  return new Response(null, { status, headers: { location: path, "cache-control": "no-store" } });
}

/**
 * Whether a state-changing request comes from this site's own pages: a browser marks a cross-site
 * request (Sec-Fetch-Site) and names its origin (Origin) on every POST; a request with neither is
 * not a browser's and carries no cookies a page could forge.
 */
export function isSameOrigin(request: Request): boolean {
  const site = request.headers.get("sec-fetch-site");
  if (site && site !== "same-origin" && site !== "none") return false;
  const origin = request.headers.get("origin");
  if (!origin) return true;
  try {
    return new URL(origin).host === request.headers.get("host");
  } catch {
    return false;
  }
}
