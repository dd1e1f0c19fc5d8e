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
import { devSignIn, supabaseConfig } from "./config.ts";
import { DEV_SESSION_COOKIE, verifyDevAccessToken } from "./devAuth.ts";

export interface Session {
  mode: "supabase" | "dev";
  userId: string;
  email: string | null;
  accessToken: string;
  /** Seconds since the epoch. */
  expiresAt: number;
}

/** realtime-js refuses to construct on Node 20 without a WebSocket; the server never opens one. */
class NoServerWebSocket {
  constructor() {
    throw new Error("the readsync web server does not open Realtime connections");
  }
}

/** A @supabase/ssr client over this request's cookies (cookie writes are ignored where Next forbids them). */
export async function supabaseServerClient() {
  const { supabaseUrl, anonKey } = supabaseConfig();
  const store = await cookies();
  return createServerClient(supabaseUrl, anonKey, {
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
    realtime: { transport: NoServerWebSocket as unknown as typeof WebSocket },
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
