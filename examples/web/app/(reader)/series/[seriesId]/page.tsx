import { notFound, redirect } from "next/navigation";
import { SeriesEditor } from "@/components/SeriesEditor.tsx";
import { loadSeries } from "@/lib/server/progress.ts";
import { getSession } from "@/lib/server/session.ts";
import { SERIES_ID } from "@/lib/seriesHref.ts";

export const dynamic = "force-dynamic";

export default async function SeriesPage({ params }: { params: Promise<{ seriesId: string }> }) {
  const { seriesId: raw } = await params;
  const seriesId = decodedSegment(raw);
  if (seriesId === null || !SERIES_ID.test(seriesId)) notFound();
  const session = await getSession();
  if (!session) redirect("/sign-in");
  const row = await loadSeries(session.accessToken, seriesId);
  return <SeriesEditor key={seriesId} seriesId={seriesId} initialRow={row} renderedFor={session.userId} />;
}

/** The route segment as text, or null when it is not valid percent-encoded UTF-8 (`/series/%FF`). */
function decodedSegment(raw: string): string | null {
  try {
    return decodeURIComponent(raw);
  } catch {
    return null; // a URIError here was a 500; such an address names no series
  }
}
