// The web app's one door to the progress function (GET/POST /functions/v1/progress…), used by the
// server components (library, series) and by the browser (writes, changes for catch-up/polling).
// Wire types and response schemas are shared/'s; every response is validated with them.
//
// Kept deliberately small: shared/progress/api.ts (the typed client of the progress issue) replaces
// the body of this module once it is on main; callers only see the four functions below.

import {
  changesResponseSchema,
  progressListResponseSchema,
  progressResponseSchema,
  writeResultSchema,
} from "@shared/progress/schemas.ts";
import { type Progress, PROGRESS_LIMITS, type ProgressWrite, type WriteResult } from "@shared/progress/types.ts";
import type { ChangesPage } from "@shared/realtime/realtimeService.ts";

export type { Progress, ProgressWrite, WriteResult };

/** A non-2xx answer of the progress function, with its {"error": {code, message}} body. */
export class ProgressApiError extends Error {
  override name = "ProgressApiError";
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** Whether a failed call may succeed later (network down, server busy, token expired): keep it queued. */
export function isRetryable(error: unknown): boolean {
  if (error instanceof ProgressApiError) {
    return error.status === 401 || error.status === 408 || error.status === 429 || error.status >= 500;
  }
  return true; // fetch() rejects with a TypeError when offline
}

export interface ProgressClient {
  /** The whole library (every page), newest first. */
  listProgress(): Promise<Progress[]>;
  /** One series, or null when the reader has no progress there. */
  getProgress(seriesId: string): Promise<Progress | null>;
  updateProgress(write: ProgressWrite): Promise<WriteResult>;
  /** In the shape RealtimeService's changesSince option wants. */
  changesSince(cursor: unknown): Promise<ChangesPage>;
}

export interface ProgressClientOptions {
  supabaseUrl: string;
  anonKey: string;
  /** The signed-in user's access token (asked for on every call, so a refreshed one is used). */
  accessToken: () => string | Promise<string>;
  /** Server components pass no-store so a library is never served from Next's data cache. */
  cache?: RequestCache;
}

/** At most this many library pages (200 rows each) are read for one render. */
const MAX_LIST_PAGES = 25;

export function createProgressClient(options: ProgressClientOptions): ProgressClient {
  const base = `${options.supabaseUrl.replace(/\/+$/, "")}/functions/v1/progress`;

  async function call(path: string, init: RequestInit = {}): Promise<unknown> {
    const token = await options.accessToken();
    const response = await fetch(`${base}${path}`, {
      ...init,
      cache: options.cache,
      headers: {
        apikey: options.anonKey,
        Authorization: `Bearer ${token}`,
        ...(init.body ? { "Content-Type": "application/json" } : {}),
      },
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const error = (body as { error?: { code?: string; message?: string } } | null)?.error;
      throw new ProgressApiError(
        response.status,
        error?.code ?? "http_error",
        `progress function: HTTP ${response.status}${error?.message ? ` ${error.message}` : ""}`,
      );
    }
    return body;
  }

  return {
    async listProgress() {
      const rows: Progress[] = [];
      let cursor: string | null = null;
      for (let page = 0; page < MAX_LIST_PAGES; page++) {
        const query = new URLSearchParams({ limit: String(PROGRESS_LIMITS.listMax) });
        if (cursor) query.set("cursor", cursor);
        const body = progressListResponseSchema.parse(await call(`?${query}`));
        rows.push(...body.items);
        cursor = body.next_cursor;
        if (!cursor) break;
      }
      return rows;
    },
    async getProgress(seriesId) {
      try {
        return progressResponseSchema.parse(await call(`/series/${encodeURIComponent(seriesId)}`)).progress;
      } catch (error) {
        if (error instanceof ProgressApiError && error.code === "progress_not_found") return null;
        throw error;
      }
    },
    async updateProgress(write) {
      return writeResultSchema.parse(await call("", { method: "POST", body: JSON.stringify(write) }));
    },
    async changesSince(cursor) {
      const query = new URLSearchParams({ limit: String(PROGRESS_LIMITS.changesMax) });
      if (typeof cursor === "string" && cursor !== "") query.set("since", cursor);
      const body = changesResponseSchema.parse(await call(`/changes?${query}`));
      return { changes: body.changes, cursor: body.next_cursor, has_more: body.has_more };
    },
  };
}
