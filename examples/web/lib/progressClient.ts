// The web app's door to the progress function, for the server components (library, series) and
// the browser (writes, live updates): shared/progress/api.ts over a supabase-js client that carries
// the signed-in user's access token. This file only adds what the app needs on top: the client
// setup, reading the whole library, and which failures are worth retrying from the outbox.

import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import { createProgressApi, type ProgressApiOptions, NetworkError, ProgressApiError, ServiceUnavailableError, ValidationError } from "@shared/progress/api.ts";
import type { Database } from "@shared/database.types.ts";
import { noServerWebSocket } from "./noServerWebSocket.ts";
import type { ServerClock } from "@shared/progress/serverClock.ts";
import { type Progress, PROGRESS_LIMITS } from "@shared/progress/types.ts";

export type { Progress };
export type ProgressApi = ReturnType<typeof createProgressApi>;

/**
 * A supabase-js client whose every request (functions and Realtime) carries the user's current
 * access token. `accessToken` is asked for per request, so a refreshed token is used at once.
 * Typed with the generated `Database` (shared/database.types.ts), so a Data API call added to the
 * app (`.from("reading_progress")`, `.rpc(...)`) is checked against the migrations' schema.
 */
export function userClient(options: {
  supabaseUrl: string;
  anonKey: string;
  accessToken: () => Promise<string>;
  server?: boolean;
}): SupabaseClient<Database> {
  return createClient<Database>(options.supabaseUrl, options.anonKey, {
    accessToken: options.accessToken,
    ...(options.server ? { realtime: { transport: noServerWebSocket } } : {}),
  });
}

/** `clock` learns the server's time from every 2xx answer (the browser stamps writes with it). */
export function progressApi(
  client: SupabaseClient<Database>,
  clock?: ServerClock,
  options: Pick<ProgressApiOptions, "timeoutMs" | "retry"> = {},
): ProgressApi {
  return createProgressApi(client, { ...options, ...(clock ? { clock } : {}) });
}

/** At most this many library pages (200 rows each) are read for one render. */
const MAX_LIBRARY_PAGES = 25;

/** The whole library, newest first (every page). */
export async function readLibrary(api: ProgressApi): Promise<Progress[]> {
  const rows: Progress[] = [];
  let cursor: string | null = null;
  for (let page = 0; page < MAX_LIBRARY_PAGES; page++) {
    const body = await api.listProgress({ limit: PROGRESS_LIMITS.listMax, cursor });
    rows.push(...body.items);
    cursor = body.next_cursor;
    if (!cursor) break;
  }
  return rows;
}

/**
 * Whether an outbox write that failed may succeed later. Only a write the API refused as such
 * (ValidationError with the API's own error body: malformed or out of range, also when refused
 * before sending) never will, and
 * is dropped with a message. Everything else keeps the write for the next try: no connection, the
 * API unavailable, an expired token (refreshed before the next try), a rate limit — and answers
 * that say nothing about the write (a 404 from a gateway while the function is being deployed, a
 * 403, an unexpected body): dropping a week of offline reading over those would lose it for good.
 */
export function isRetryable(error: unknown): boolean {
  // A 400/413/415/422 whose body is not the API's error (code http_<status>: a gateway or proxy
  // answered) says nothing about the write either.
  return !(error instanceof ValidationError && !error.code.startsWith("http_"));
}

/**
 * A batch refused as a whole by something in the way of the API (a 413 or 400 without the API's own
 * error body, e.g. a proxy's limit on body size): single writes may get through.
 */
export function splitMayHelp(error: unknown): boolean {
  return error instanceof ProgressApiError && (error.status === 413 || error.status === 400) &&
    error.code.startsWith("http_");
}

/** A failure that clears by itself (no network, 5xx, 408, 429, an expired token): nothing to tell the reader. */
export function isTransient(error: unknown): boolean {
  if (error instanceof NetworkError || error instanceof ServiceUnavailableError) return true;
  if (error instanceof ProgressApiError) {
    return error.status === 401 || error.status === 408 || error.status === 429 || error.status >= 500;
  }
  return true; // not an API answer at all (e.g. a fetch that threw)
}

/**
 * A failure that got no HTTP answer at all (no network, DNS, a refused connection, a timed-out
 * attempt): mostly this device's own network, which a new edit may try again at once, where an
 * answer from the server (5xx, 429, a gateway's 404) says to leave it alone for a while.
 */
export function isNetworkFailure(error: unknown): boolean {
  return error instanceof ProgressApiError ? error.status === 0 : true;
}
