// Who is signed in, checked on the server for every request that needs it.
//
// * A real Supabase project: Supabase Auth through @supabase/ssr (session in cookies), validated with
//   auth.getUser() against the Auth server, never trusted from the cookie alone.
// * The local stack (development sign-in on): a locally minted token in an httpOnly cookie,
//   verified with the local JWT secret.
//
// The browser gets the access token (it talks to the progress function and Realtime itself) from
// the server component's props and, when it runs out, from GET /auth/token.

import { createServerClient } from "@supabase/ssr";
import { cookies } from "next/headers";
import { cache } from "react";
import { noServerWebSocket } from "../noServerWebSocket.ts";
import { devSignIn, siteUrl, supabaseConfig } from "./config.ts";
import { DEV_SESSION_COOKIE, verifyDevAccessToken } from "./devAuth.ts";

export interface Session {
  mode: "supabase" | "dev";
  userId: string;
  email: string | null;
  accessToken: string;
  /** Seconds since the epoch. */
  expiresAt: number;
}

/**
 * How the Auth session cookies are written. The browser never reads them (it gets its token from
 * the server: props and GET /auth/token), so they are httpOnly: a script injected into a page cannot
 * take the refresh token. Secure whenever the site is served over https (READSYNC_SITE_URL, or
 * NODE_ENV=production behind a TLS proxy).
 */
export function sessionCookieOptions() {
  const site = siteUrl();
  const secure = site ? site.startsWith("https:") : process.env.NODE_ENV === "production" &&
    process.env.READSYNC_INSECURE_COOKIES !== "1";
  return { httpOnly: true, secure, sameSite: "lax" as const, path: "/" };
}

/** The Auth server could not say whether the session is valid (down, overloaded): not a sign-out. */
export class AuthUnavailableError extends Error {
  override name = "AuthUnavailableError";
}

/** A @supabase/ssr client over this request's cookies (cookie writes are ignored where Next forbids them). */
export async function supabaseServerClient() {
  const { supabaseUrl, anonKey } = supabaseConfig();
  const store = await cookies();
  return createServerClient(supabaseUrl, anonKey, {
    cookieOptions: sessionCookieOptions(),
    cookies: {
      getAll: () => store.getAll(),
      setAll: (toSet) => {
        try {
          for (const { name, value, options } of toSet) store.set(name, value, options);
        } catch {
          // A server component cannot set cookies; proxy.ts and the route handlers refresh them.
        }
      },
    },
    realtime: { transport: noServerWebSocket },
  });
}

/** The request's session; cached per request (the layout and the page both ask). */
export const getSession = cache(async function getSession(): Promise<Session | null> {
  const dev = devSignIn();
  if (dev.enabled) {
    const token = (await cookies()).get(DEV_SESSION_COOKIE)?.value;
    if (!token) return null;
    const identity = await verifyDevAccessToken(dev.jwtSecret, token);
    return identity ? { mode: "dev", ...identity, accessToken: token } : null;
  }
  const supabase = await supabaseServerClient();
  const { data: userData, error } = await supabase.auth.getUser();
  // Only the Auth server's "no / invalid session" is a sign-out. A 5xx or a network failure says
  // nothing about the session: signing every open tab out over an outage would be wrong (the error
  // page, or 503 from /auth/token, and the next try decides).
  if (error && (error.status === undefined || error.status === 0 || error.status >= 500)) {
    throw new AuthUnavailableError(`Supabase Auth did not answer: ${error.message}`);
  }
  if (error || !userData.user) return null;
  const { data } = await supabase.auth.getSession();
  if (!data.session) return null;
  return {
    mode: "supabase",
    userId: userData.user.id,
    email: userData.user.email ?? null,
    accessToken: data.session.access_token,
    expiresAt: data.session.expires_at ?? Math.floor(Date.now() / 1000) + 60,
  };
});
