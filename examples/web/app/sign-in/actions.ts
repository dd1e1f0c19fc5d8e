"use server";

import { cookies } from "next/headers";
import { redirect } from "next/navigation";
import { devSignIn, siteUrl } from "@/lib/server/config.ts";
import {
  DEV_SESSION_COOKIE,
  DEV_TOKEN_LIFETIME_SECONDS,
  EMAIL_PATTERN,
  ensureDevUser,
  mintDevAccessToken,
} from "@/lib/server/devAuth.ts";
import { supabaseServerClient } from "@/lib/server/session.ts";

export interface SignInState {
  error?: string;
  message?: string;
}

function readEmail(form: FormData): string | null {
  const email = String(form.get("email") ?? "").trim().toLowerCase();
  return EMAIL_PATTERN.test(email) ? email : null;
}

/** DEVELOPMENT ONLY: signs in as any email on the local stack by minting a local token. */
export async function devSignInAction(_prev: SignInState, form: FormData): Promise<SignInState> {
  const dev = devSignIn();
  if (!dev.enabled) return { error: `Development sign-in is disabled (${dev.reason}).` };
  const email = readEmail(form);
  if (!email) return { error: "Enter an email address." };
  if (!dev.dbUrl) return { error: "Development sign-in needs SUPABASE_DB_URL (the local stack's database)." };
  let token: string;
  try {
    const userId = await ensureDevUser(dev.dbUrl, email);
    token = await mintDevAccessToken(dev.jwtSecret, { userId, email });
  } catch (error) {
    // The details are for the server's log, not the page (they name hosts and database errors).
    console.error("development sign-in failed:", error);
    return { error: "Development sign-in failed: the local stack's database did not answer. Is `npm start` running?" };
  }
  (await cookies()).set(DEV_SESSION_COOKIE, token, {
    httpOnly: true,
    sameSite: "lax",
    path: "/",
    maxAge: DEV_TOKEN_LIFETIME_SECONDS,
  });
  redirect("/");
}

/** Supabase Auth: email + password. */
export async function passwordSignInAction(_prev: SignInState, form: FormData): Promise<SignInState> {
  const email = readEmail(form);
  const password = String(form.get("password") ?? "");
  if (!email || password.length === 0) return { error: "Enter your email address and password." };
  const supabase = await supabaseServerClient();
  const { error } = await supabase.auth.signInWithPassword({ email, password });
  if (error) return { error: error.message };
  redirect("/");
}

/** Supabase Auth: a magic link to the email; /auth/callback completes the sign-in. */
export async function magicLinkAction(_prev: SignInState, form: FormData): Promise<SignInState> {
  const email = readEmail(form);
  if (!email) return { error: "Enter an email address." };
  const origin = siteUrl();
  if (!origin) {
    return { error: "Sign-in links are not set up on this site (READSYNC_SITE_URL). Use your password." };
  }
  const supabase = await supabaseServerClient();
  const { error } = await supabase.auth.signInWithOtp({
    email,
    options: { emailRedirectTo: `${origin}/auth/callback` },
  });
  if (error) return { error: error.message };
  return { message: `Check ${email} for a sign-in link.` };
}
