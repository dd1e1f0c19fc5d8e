// Supabase Auth magic-link landing: exchanges the one-time code for a session (cookies) and goes home.
import type { NextRequest } from "next/server";
import { redirectTo } from "@/lib/server/requests.ts";
import { supabaseServerClient } from "@/lib/server/session.ts";

export async function GET(request: NextRequest) {
  const code = request.nextUrl.searchParams.get("code");
  if (code) {
    const supabase = await supabaseServerClient();
    const { error } = await supabase.auth.exchangeCodeForSession(code);
    if (!error) return redirectTo("/", 307);
  }
  return redirectTo("/sign-in?error=link", 307);
}
