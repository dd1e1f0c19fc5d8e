import { NextResponse } from "next/server";
import { redirectTo } from "@/lib/server/requests.ts";
import { SERIES_ID, seriesHref } from "@/lib/seriesHref.ts";

/**
 * The library's Open series form, submitted before the page's script has run (a slow device): its own
 * GET (`/open-series?id=…`) comes here and is sent on to the series page. Once the script runs, the
 * form opens the series itself (a client-side navigation) and never asks this. The series page checks
 * the session, as for any other address.
 */
export function GET(request: Request): Response {
  const id = (new URL(request.url).searchParams.get("id") ?? "").trim();
  if (!SERIES_ID.test(id)) {
    return NextResponse.json({
      error: "invalid_series_id",
      message: "A series id uses letters, digits, '.', '_', ':' or '-' and starts with a letter or digit.",
    }, { status: 400, headers: { "cache-control": "no-store" } });
  }
  return redirectTo(seriesHref(id));
}
