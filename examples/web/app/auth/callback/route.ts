// Supabase Auth magic-link landing: exchanges the one-time code for a session (cookies) and goes home.
import { type NextRequest, NextResponse } from "next/server";
import { supabaseServerClient } from "@/lib/server/session.ts";

export async function GET(request: NextRequest) {
  const code = request.nextUrl.searchParams.get("code");
  if (code) {
    const supabase = await supabaseServerClient();
    const { error } = await supabase.auth.exchangeCodeForSession(code);
    if (!error) return NextResponse.redirect(new URL("/", request.url));
  }
  return NextResponse.redirect(new URL("/sign-in?error=link", request.url));
}
