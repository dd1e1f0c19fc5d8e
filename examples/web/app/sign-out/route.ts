import { cookies } from "next/headers";
import { type NextRequest, NextResponse } from "next/server";
import { devSignIn } from "@/lib/server/config.ts";
import { DEV_SESSION_COOKIE } from "@/lib/server/devAuth.ts";
import { supabaseServerClient } from "@/lib/server/session.ts";

export async function POST(request: NextRequest) {
  if (devSignIn().enabled) (await cookies()).delete(DEV_SESSION_COOKIE);
  else await (await supabaseServerClient()).auth.signOut();
  return NextResponse.redirect(new URL("/sign-in", request.url), { status: 303 });
}
