// Types of serve.mjs (Deno picks them up through its @ts-self-types comment).

export interface WebAppOptions {
  /** The stack's API URL (SUPABASE_URL): functions + Realtime, e.g. http://127.0.0.1:54321. */
  apiUrl: string;
  anonKey: string;
  /** The local stack's JWT secret: enables development sign-in (only for a loopback apiUrl). */
  jwtSecret?: string;
  /** The local stack's database: development sign-in creates users in auth.users there. */
  dbUrl?: string;
  /**
   * 0 or undefined: a port the OS picks as the server binds it (read from what it prints). A port asked
   * for that is already in use is refused ("port N (host) is already in use"), never retried elsewhere.
   */
  port?: number;
  /**
   * The IPv4 address to listen on; default 127.0.0.1 (this machine only). 0.0.0.0: every interface, for other
   * devices (its url then names 127.0.0.1).
   */
  host?: string;
  /**
   * The API's port as other devices reach it (READSYNC_BROWSER_API_PORT): a page requested at an IPv4
   * address is handed the API at that address and this port instead of apiUrl (lib/server/config.ts). npm
   * start sets it when READSYNC_API_HOST opens the stack to the network; unset: every page gets apiUrl.
   */
  browserApiPort?: number;
  /** Default true (still requires jwtSecret and a loopback apiUrl). */
  devSignIn?: boolean;
  /** "auto" (default): npm ci / next build only when stale; "always": rebuild; "never": use what is there. */
  build?: "auto" | "always" | "never";
  /** Default 60 s. */
  startTimeoutMs?: number;
  /** Forward the server's own output to log. */
  verbose?: boolean;
  log?: (line: string) => void;
  /** Extra environment for the server. */
  env?: Record<string, string>;
  /**
   * Registers a cleanup to run when the calling process is stopped (local/stack/cleanup.ts's onCleanup
   * in npm start) and returns its removal: each npm ci, next build and next start is registered while it
   * runs (next start until stop()), with the build lock and the wait for another start's, so a stop during
   * the first build ends them too.
   * Each runs in a process group of its own (POSIX), which its cleanup ends (SIGTERM, SIGKILL after 5 s).
   * A start that such a cleanup ended rejects with a StoppedError, not a failure.
   */
  onCleanup?: OnCleanup;
  /**
   * Whether the calling process is stopping (stopped, or its exit cleanups begun: local/stack/cleanup.ts's
   * stoppedBy and cleanupsBegun in npm start). A start that comes to its install or build then rejects with a StoppedError
   * (step "start") without taking the build lock, instead of taking it and spawning npm ci or next build only
   * for their cleanups to end them at once; so does one that comes to next build (npm ci exited 0 as the
   * stop came) or to next start (the build did, or build "never"). A wait for another start's build lock
   * that wakes once stopping ends too (step "wait for another start's build"), before its own cleanup has
   * run (the run-down runs newer ones first), taking no lock and spawning no npm ci.
   */
  stopping?: () => boolean;
}

/** What startWebApp / ensureWebAppBuilt reject with when a cleanup (a stop of the process) ended a step. */
export interface StoppedError extends Error {
  stopped: true;
  /**
   * "npm ci", "next build", "next start", "wait for another start's build" (for its build lock), or "start"
   * (stopping already as it came to its install, its build or its server: see WebAppOptions.stopping).
   */
  step: string;
}

export type OnCleanup = (fn: () => Promise<void> | void) => () => void;

export interface WebApp {
  url: string;
  port: number;
  devSignIn: boolean;
  stop(): Promise<void>;
  /** The last 8000 characters the server printed. */
  output(): string;
}

export const APP_DIR: string;
export function sourceHash(): string;
export function ensureWebAppBuilt(
  options?: { log?: (line: string) => void; force?: boolean; onCleanup?: OnCleanup; stopping?: () => boolean },
): Promise<{ installed: boolean; built: boolean }>;
export function startWebApp(options: WebAppOptions): Promise<WebApp>;
export function exitCleanups(
  options?: { exitCode?: (code: number) => number; log?: (line: string) => void },
): {
  onCleanup: OnCleanup;
  runCleanups(): Promise<void>;
  stopping(): boolean;
  removeSignalHandlers(): void;
};
