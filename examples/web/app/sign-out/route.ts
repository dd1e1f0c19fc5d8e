import { cookies } from "next/headers";
import { NextResponse } from "next/server";
import { devSignIn } from "@/lib/server/config.ts";
import { DEV_SESSION_COOKIE } from "@/lib/server/devAuth.ts";
import { isSameOrigin, redirectTo } from "@/lib/server/requests.ts";
import { supabaseServerClient } from "@/lib/server/session.ts";

export async function POST(request: Request) {
  // Only this site's own Sign out button: a form on another site must not sign the reader out.
  if (!isSameOrigin(request)) return NextResponse.json({ error: "cross_site_request" }, { status: 403 });
  if (devSignIn().enabled) (await cookies()).delete(DEV_SESSION_COOKIE);
  // This browser only: the reader's other devices keep their sessions (the default scope, "global",
  // would revoke every session of the user).
  else await (await supabaseServerClient()).auth.signOut({ scope: "local" });
  return redirectTo("/sign-in");
}
