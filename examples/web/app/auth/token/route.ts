// The current access token for the browser's own calls (progress function, Realtime). Same-origin
// only (cookies are SameSite=Lax and the response is never cached). In Supabase mode, reading the
// session here refreshes it when due and writes the new cookies.
import { NextResponse } from "next/server";
import { AuthUnavailableError, getSession } from "@/lib/server/session.ts";

export const dynamic = "force-dynamic";

export async function GET() {
  let session;
  try {
    session = await getSession();
  } catch (error) {
    if (!(error instanceof AuthUnavailableError)) throw error;
    // Not "signed out": the tab keeps its token and tries again later.
    return NextResponse.json({ error: "auth_unavailable" }, { status: 503, headers: { "Cache-Control": "no-store" } });
  }
  if (!session) {
    return NextResponse.json({ error: "signed_out" }, { status: 401, headers: { "Cache-Control": "no-store" } });
  }
  return NextResponse.json(
    { accessToken: session.accessToken, expiresAt: session.expiresAt, userId: session.userId },
    { headers: { "Cache-Control": "no-store" } },
  );
}
