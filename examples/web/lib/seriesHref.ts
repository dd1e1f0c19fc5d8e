/** What a series id may be (the progress API's rule): the library's form and the series page check it. */
export const SERIES_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** SERIES_ID in words, for a reader and for an API error's message. */
export const SERIES_ID_RULE =
  "A series id uses letters, digits, '.', '_', ':' or '-', starts with a letter or digit and is at most 128 characters long.";

/**
 * The address of a series page. Dots are percent-encoded too (encodeURIComponent keeps them): an id
 * may end in ".rsc" (ids allow dots), and Next.js reads such a path as a request for the page's
 * React Server Components payload, which a full load (a reload, a bookmark, a new tab) would show
 * as text. Next decodes "%2E" back to "." for the page's params. (Typed by hand with the dot, such
 * an address still gets the payload: Next takes the suffix before the proxy sees the path.)
 */
export function seriesHref(seriesId: string): `/series/${string}` {
  return `/series/${encodeURIComponent(seriesId).replace(/\./g, "%2E")}`;
}
