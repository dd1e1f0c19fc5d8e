import { NextResponse } from "next/server";
import { redirectTo } from "@/lib/server/requests.ts";
import { SERIES_ID, SERIES_ID_RULE, seriesHref } from "@/lib/seriesHref.ts";

/**
 * The library's Open series form, submitted before the page's script has run (a slow device): its own
 * GET (`/open-series?id=…`) comes here and is sent on to the series page. Once the script runs, the
 * form opens the series itself (a client-side navigation) and never asks this. The series page checks
 * the session, as for any other address.
 *
 * An invalid id is a 400 either way: a page the reader can read (what was typed, what an id is, the
 * form again with it) for a browser's navigation (its Accept names text/html), and the JSON code
 * (`invalid_series_id`) for any other caller (`*∕*`, application/json), as before.
 */
export function GET(request: Request): Response {
  const id = (new URL(request.url).searchParams.get("id") ?? "").trim();
  if (SERIES_ID.test(id)) return redirectTo(seriesHref(id));
  const headers = { "cache-control": "no-store", vary: "Accept" };
  if (wantsHtml(request)) {
    return new Response(invalidIdPage(id), {
      status: 400,
      headers: { ...headers, "content-type": "text/html; charset=utf-8" },
    });
  }
  return NextResponse.json({
    error: "invalid_series_id",
    message: SERIES_ID_RULE,
  }, { status: 400, headers });
}

/** A browser's navigation asks for text/html by name; fetch() and API clients send *∕* or JSON. */
function wantsHtml(request: Request): boolean {
  return /(^|,)\s*text\/html\s*(;|,|$)/i.test(request.headers.get("accept") ?? "");
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * A page of its own, without the app's script or stylesheet (it is answered here, not rendered by a
 * page): readable as it arrives on the slowest device, and the form works without any script.
 */
function invalidIdPage(id: string): string {
  const said = id === ""
    ? "Enter a series id."
    : `“${escapeHtml(id)}” is not a series id.`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Not a series id · readsync</title>
<style>
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; background: #f7f5f0; }
main { max-width: 760px; margin: 0 auto; padding: 20px 16px 48px; }
a { color: #2f5d8a; }
.card { background: #fff; border: 1px solid #e2ded5; border-radius: 10px; padding: 16px; margin: 16px 0; }
.notice { padding: 10px 12px; border-radius: 8px; border: 1px solid #f5a8a0; background: #fdecea; font-size: 0.9rem; overflow-wrap: anywhere; }
form { display: flex; gap: 8px; flex-wrap: wrap; }
input, button { font: inherit; padding: 8px 14px; border-radius: 6px; }
input { flex: 1; min-width: 12em; border: 1px solid #e2ded5; }
button { border: 1px solid #2f5d8a; background: #fff; color: #2f5d8a; cursor: pointer; }
</style>
</head>
<body>
<main>
<p><a href="/">← Library</a></p>
<section class="card">
<h1>Open series</h1>
<p class="notice" role="alert" data-error="invalid_series_id">${said} ${escapeHtml(SERIES_ID_RULE)}</p>
<form action="/open-series" method="get">
<input name="id" aria-label="Series id" value="${escapeHtml(id)}" autofocus>
<button type="submit">Open series</button>
</form>
</section>
</main>
</body>
</html>
`;
}
