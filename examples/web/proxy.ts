// Next.js proxy (formerly middleware): in Supabase mode, refreshes the Auth session cookies before
// server components run (they cannot write cookies themselves), as @supabase/ssr recommends.
// Development sign-in needs nothing here.
import { createServerClient } from "@supabase/ssr";
import { type NextRequest, NextResponse } from "next/server";
import { noServerWebSocket } from "@/lib/noServerWebSocket.ts";
import { devSignIn, supabaseConfig } from "@/lib/server/config.ts";
import { sessionCookieOptions } from "@/lib/server/session.ts";

export async function proxy(request: NextRequest) {
  // Next.js decodes a dynamic segment before any page code runs and answers a plain 500 when it is
  // not valid percent-encoded UTF-8 (`/series/%FF`): refuse such an address here, as what it is.
  if (!isDecodable(request.nextUrl.pathname)) {
    return new NextResponse("Bad request: the address is not valid percent-encoded UTF-8.\n", {
      status: 400,
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  }
  if (devSignIn().enabled) return NextResponse.next({ request });
  let response = NextResponse.next({ request });
  const { supabaseUrl, anonKey } = supabaseConfig();
  const supabase = createServerClient(supabaseUrl, anonKey, {
    cookieOptions: sessionCookieOptions(),
    cookies: {
      getAll: () => request.cookies.getAll(),
      setAll: (toSet, headers) => {
        for (const { name, value } of toSet) request.cookies.set(name, value);
        response = NextResponse.next({ request });
        for (const { name, value, options } of toSet) response.cookies.set(name, value, options);
        // @supabase/ssr asks for these with new session cookies (no-store: a shared cache must
        // never keep one reader's tokens for the next).
        for (const [name, value] of Object.entries(headers ?? {})) response.headers.set(name, value);
      },
    },
    realtime: { transport: noServerWebSocket },
  });
  await supabase.auth.getUser();
  return response;
}

function isDecodable(pathname: string): boolean {
  try {
    decodeURIComponent(pathname);
    return true;
  } catch {
    return false;
  }
}

// Everything but Next's own assets: a series id may end in ".png" or ".js" (ids allow dots), and a
// page whose session refresh is skipped here cannot save the new cookies itself.
export const config = {
  matcher: ["/((?!_next/static|_next/image|favicon.ico$).*)"],
};
