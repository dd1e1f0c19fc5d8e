// Next.js proxy (formerly middleware): in Supabase mode, refreshes the Auth session cookies before
// server components run (they cannot write cookies themselves), as @supabase/ssr recommends.
// Development sign-in needs nothing here.
import { createServerClient } from "@supabase/ssr";
import { type NextRequest, NextResponse } from "next/server";
import { devSignIn, supabaseConfig } from "@/lib/server/config.ts";

class NoServerWebSocket {
  constructor() {
    throw new Error("the readsync web server does not open Realtime connections");
  }
}

export async function proxy(request: NextRequest) {
  if (devSignIn().enabled) return NextResponse.next({ request });
  let response = NextResponse.next({ request });
  const { supabaseUrl, anonKey } = supabaseConfig();
  const supabase = createServerClient(supabaseUrl, anonKey, {
    cookies: {
      getAll: () => request.cookies.getAll(),
      setAll: (toSet) => {
        for (const { name, value } of toSet) request.cookies.set(name, value);
        response = NextResponse.next({ request });
        for (const { name, value, options } of toSet) response.cookies.set(name, value, options);
      },
    },
    realtime: { transport: NoServerWebSocket as unknown as typeof WebSocket },
  });
  await supabase.auth.getUser();
  return response;
}

export const config = {
  matcher: ["/((?!_next/static|_next/image|favicon.ico|.*\\.(?:png|svg|ico|css|js)$).*)"],
};
