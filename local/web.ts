// The web app beside `npm start`'s stack (local/main.ts): started with the exit cleanups of
// local/stack/cleanup.ts, so that a stop during its npm ci, next build or next start ends them, and
// the summary's line for it. Its own module so that tests/web/serve.test.ts runs this wiring itself
// (with a fake app: `start`) rather than a copy of it.

import { startWebApp, type StoppedError, type WebApp } from "../examples/web/serve.mjs";
import { cleanupsBegun, onCleanup, stoppedBy } from "./stack/cleanup.ts";

export interface WebBesideStack {
  /** Null when it did not start (the stack still serves). */
  web: WebApp | null;
  /** The summary's "Web app" line. */
  line: string;
  /** The step ("npm ci", "next build", "next start") a stop of npm start ended, or null. */
  stoppedDuring: string | null;
}

/**
 * Starts the web app for the stack; one that cannot start is reported in the line (the web app is a
 * convenience beside the stack), one that a stop of npm start ended is reported as stopped, not failed.
 */
export async function startWebAppBesideStack(
  stack: { apiUrl: string; anonKey: string; jwtSecret: string; dbUrl: string },
  options: {
    port: number;
    log: (line: string) => void;
    /**
     * The IPv4 address the API listens on (READSYNC_API_HOST; 127.0.0.1 unless given): the web app listens
     * there too, so that a phone that reaches the API reaches the page as well; on an address other devices
     * reach (not 127.x), its pages requested at an IPv4 address get the API at that address.
     */
    host?: string;
  },
  start: typeof startWebApp = startWebApp,
): Promise<WebBesideStack> {
  const host = options.host ?? "127.0.0.1";
  const openToOthers = !host.startsWith("127.");
  try {
    const web = await start({
      host,
      browserApiPort: openToOthers ? Number(new URL(stack.apiUrl).port) : undefined,
      apiUrl: stack.apiUrl,
      anonKey: stack.anonKey,
      jwtSecret: stack.jwtSecret,
      dbUrl: stack.dbUrl,
      port: options.port,
      log: options.log,
      // Its npm ci, next build and next start end with npm start, also when stopped during them; once
      // stopped, it begins no install, build or server: stopped by a signal (whenStopped's awaiters run
      // before the run-down begins), or the run-down begun (the end of a run, a failed start).
      onCleanup,
      stopping: () => stoppedBy() !== null || cleanupsBegun(),
    });
    return {
      web,
      line: `  Web app          ${web.url}  (development sign-in: any email, local stack only)`,
      stoppedDuring: null,
    };
  } catch (error) {
    // A step is the stop's only when the error says it was stopped (serve.mjs's StoppedError): a failure
    // that names its step otherwise is reported as the failure, not as a step the stop ended.
    const stopped = (error as Partial<StoppedError> | null)?.stopped === true ? error as StoppedError : null;
    const problem = stopped
      ? `npm start was stopped during its ${stopped.step}`
      : (error instanceof Error ? error.message : String(error)).split("\n")[0];
    return {
      web: null,
      line: `  Web app          not started: ${problem}`,
      stoppedDuring: stopped?.step ?? null,
    };
  }
}
