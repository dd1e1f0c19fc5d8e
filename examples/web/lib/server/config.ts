// Runtime configuration, read on the server at request time (never inlined into the bundle), so
// one production build serves any stack: `startWebApp()` (serve.mjs) passes the local stack's URL
// and keys, a deployment passes its project's.
//
//   SUPABASE_URL, SUPABASE_ANON_KEY    the project (NEXT_PUBLIC_* spellings accepted too)
//   READSYNC_DEV_SIGNIN=1              development sign-in (local stack only, see devSignIn())
//   SUPABASE_JWT_SECRET                the local stack's JWT secret, to mint development tokens
//   SUPABASE_DB_URL                    the local stack's database, to create development users
//   READSYNC_SITE_URL                  this site's public origin (https://app.example): where magic
//                                      links lead (one of the project's Auth redirect URLs)
//   READSYNC_BROWSER_API_PORT          the local stack's API port as other devices reach it (npm start sets
//                                      it when READSYNC_API_HOST opens the stack to the network): a page
//                                      requested at an IPv4 address gets the API at that address
//                                      (browserSupabaseUrl)

export interface PublicConfig {
  supabaseUrl: string;
  anonKey: string;
  authMode: "supabase" | "dev";
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

function env(name: string): string | undefined {
  const value = process.env[name];
  return value && value.trim() !== "" ? value.trim() : undefined;
}

export function supabaseConfig(): { supabaseUrl: string; anonKey: string } {
  const supabaseUrl = env("SUPABASE_URL") ?? env("NEXT_PUBLIC_SUPABASE_URL");
  const anonKey = env("SUPABASE_ANON_KEY") ?? env("NEXT_PUBLIC_SUPABASE_ANON_KEY");
  if (!supabaseUrl || !anonKey) {
    throw new ConfigError("SUPABASE_URL and SUPABASE_ANON_KEY must be set for the readsync web app");
  }
  return { supabaseUrl: supabaseUrl.replace(/\/+$/, ""), anonKey };
}

const LOOPBACK_HOSTS = new Set(["127.0.0.1", "localhost", "[::1]", "::1"]);

export function isLoopbackUrl(url: string): boolean {
  try {
    const host = new URL(url).hostname;
    return LOOPBACK_HOSTS.has(host) || /^127(\.\d{1,3}){3}$/.test(host);
  } catch {
    return false;
  }
}

export type DevSignIn =
  | { enabled: true; jwtSecret: string; dbUrl: string | undefined }
  | { enabled: false; reason: string };

/**
 * Development sign-in mints an access token with the local stack's JWT secret. It is on only when
 * all of these hold, so a production deployment pointed at a real project can never offer it:
 * READSYNC_DEV_SIGNIN=1 (the local stack sets it), a JWT secret in the environment, and a Supabase
 * URL on this machine (loopback).
 */
export function devSignIn(): DevSignIn {
  if (env("READSYNC_DEV_SIGNIN") !== "1") return { enabled: false, reason: "READSYNC_DEV_SIGNIN is not 1" };
  const jwtSecret = env("SUPABASE_JWT_SECRET") ?? env("READSYNC_DEV_JWT_SECRET");
  if (!jwtSecret) return { enabled: false, reason: "no SUPABASE_JWT_SECRET" };
  const { supabaseUrl } = supabaseConfig();
  if (!isLoopbackUrl(supabaseUrl)) {
    let host = supabaseUrl;
    try {
      host = new URL(supabaseUrl).host;
    } catch { /* not a URL: name it as given */ }
    return { enabled: false, reason: `SUPABASE_URL ${host} is not a local stack` };
  }
  return { enabled: true, jwtSecret, dbUrl: env("SUPABASE_DB_URL") };
}

const IPV4 = /^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])$/;
const PORT = /^(?:0|[1-9][0-9]{0,4})$/;

/**
 * The API URL the browser is handed for a page requested with Host `requestHost`: SUPABASE_URL, unless
 * READSYNC_BROWSER_API_PORT is set (npm start with READSYNC_API_HOST=0.0.0.0, the web app on every interface
 * too) and the page was requested at an IPv4 address: then the API at that address and that port. A phone
 * that opened http://192.168.1.5:3000 reaches the API at 192.168.1.5, where SUPABASE_URL's 127.0.0.1 would be
 * the phone itself; the server's own calls keep SUPABASE_URL. Only an address, never a name: a page at a
 * name (a DNS-rebinding page at evil.example, resolved to this machine) would send the reader's token to
 * whatever that name resolves to next.
 */
export function browserSupabaseUrl(requestHost: string | null | undefined): string {
  const { supabaseUrl } = supabaseConfig();
  const port = env("READSYNC_BROWSER_API_PORT");
  if (!port || !PORT.test(port) || Number(port) > 65535 || !requestHost) return supabaseUrl;
  const hostname = requestHost.replace(/:[0-9]*$/, "");
  return IPV4.test(hostname) ? `http://${hostname}:${port}` : supabaseUrl;
}

/** What the browser is handed: the project (its URL as browserSupabaseUrl says) and the sign-in mode. */
export function publicConfig(requestHost?: string | null): PublicConfig {
  const { anonKey } = supabaseConfig();
  return {
    supabaseUrl: browserSupabaseUrl(requestHost),
    anonKey,
    authMode: devSignIn().enabled ? "dev" : "supabase",
  };
}

/**
 * This site's public origin, for links that leave the site (magic links), from READSYNC_SITE_URL;
 * null when unset or not an http(s) URL. Never taken from request headers: a caller sets Host and
 * Origin to anything, and a magic link pointing at its site would hand it the reader's session.
 */
export function siteUrl(): string | null {
  const value = env("READSYNC_SITE_URL");
  if (!value) return null;
  try {
    const url = new URL(value);
    return url.protocol === "https:" || url.protocol === "http:" ? url.origin : null;
  } catch {
    return null;
  }
}
