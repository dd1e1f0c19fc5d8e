// `npm start`: the local readsync stack in the foreground, on the ports `supabase start` uses
// (API 54321, database 54322; override with READSYNC_API_PORT / READSYNC_DB_PORT), until Ctrl-C. The API
// listens on 127.0.0.1 unless READSYNC_API_HOST says another IPv4 address (0.0.0.0: every interface).
// Everything it starts is removed on exit. Beside it, the web app (examples/web) on port 3000
// (READSYNC_WEB_PORT; READSYNC_WEB=0 leaves it out), installed and built on first use.

import postgres from "postgres";
import { checkEnvNumber, type NumberRule } from "../shared/options/checkOptions.ts";
import { startWebAppAndAnnounce } from "./announce.ts";
import { onCleanup, runCleanups, stoppedBy, whenStopped } from "./stack/cleanup.ts";
import { mintUserAccessToken } from "./stack/keys.ts";
import { EXTERNAL_TARGET_VARIABLES, startLocalStack } from "./stack/stack.ts";
import { IPV4 } from "./api/server.ts";

const DEMO_USER_ID = "00000000-0000-4000-8000-00000000d3e0";
const DEMO_EMAIL = "demo@readsync.local";

const log = (line: string) => console.log(`[readsync] ${line}`);
const withWeb = Deno.env.get("READSYNC_WEB") !== "0";

/** A TCP port; 0: one the OS picks (printed). */
const PORT: NumberRule = { min: 0, max: 65535, whole: true };
/**
 * The port an environment variable asks for, or `fallback` when it is not set (or empty): written in
 * decimal digits (shared/options checkEnvNumber), so "abc", "5.0", "054321" or "70000" is refused
 * naming the variable, instead of becoming NaN, 5 or 54321.
 */
const portFromEnv = (name: string, fallback: number) =>
  checkEnvNumber(Deno.env.get(name), PORT, "npm start", name) ?? fallback;

/**
 * READSYNC_API_HOST, the IPv4 address the API listens on (unset or empty: 127.0.0.1, this machine only;
 * 0.0.0.0: every interface, as `supabase start` publishes its port), refused naming the variable when it
 * is not one (a host name, an IPv6 address, `127.1`), before anything starts.
 */
function apiHostFromEnv(): string | undefined {
  const value = Deno.env.get("READSYNC_API_HOST");
  if (!value) return undefined;
  if (!IPV4.test(value)) {
    throw new TypeError(
      "npm start environment variable READSYNC_API_HOST must be an IPv4 address, such as 0.0.0.0 (every " +
        `interface) or 127.0.0.1 (this machine only) (got ${JSON.stringify(value)})`,
    );
  }
  return value;
}

/**
 * Registers npm start's last exit cleanup (registered first, so run last): a stopped npm start exits once
 * it has said so (what npmStart says while the stack starts, what announce.ts says once the web app's start
 * has ended), not before. Returns `said`, to call once that is said (or there is nothing to say). Every step
 * of the web app's start ends when stopped (its npm ci, next build and next start, and the wait for another
 * start's build lock), so this waits only for that; at most 15 s, as a hang guard should one ever not.
 * Registering it also installs the signal handlers. tests/web/serve.test.ts's stand-in for npm start uses it.
 */
export function holdExitUntilSaid(): () => void {
  let said = () => {};
  const saying = new Promise<void>((resolve) => said = resolve);
  onCleanup(async () => {
    let guard: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([saying, new Promise((resolve) => guard = setTimeout(resolve, 15_000))]);
    clearTimeout(guard);
  });
  return said;
}

/**
 * npm start, until a signal ends it (cleanup.ts's exit cleanups, which exit with the signal's code) or its
 * start fails (exit 1). `startStack` is startLocalStack, or a stand-in in local/stack/cleanup.test.ts.
 */
export async function npmStart(startStack: typeof startLocalStack = startLocalStack): Promise<void> {
  // First, before anything starts: its exit cleanup runs last, and the signal handlers are installed.
  const said = holdExitUntilSaid();
  /** Until the stack is up (the web app's start then reports a stop itself: announce.ts). */
  let stackStarting = true;
  void whenStopped().then((stop) => {
    if (!stackStarting) return;
    log(
      `npm start was stopped (${stop.by}) while its stack was starting: tearing down what it had started`,
    );
    said();
  });
  try {
    // Checked before anything starts: a mistyped port stops npm start at once, saying which and why.
    const apiPort = portFromEnv("READSYNC_API_PORT", 54321);
    const dbPort = portFromEnv("READSYNC_DB_PORT", 54322);
    const webPort = portFromEnv("READSYNC_WEB_PORT", 3000);
    const apiHost = apiHostFromEnv();
    const started = performance.now();
    const ignored = EXTERNAL_TARGET_VARIABLES.filter((name) => Deno.env.get(name));
    if (ignored.length > 0) {
      log(
        `${
          ignored.join(", ")
        } set: npm start ignores them and runs a stack of its own (npm test and npm run bench use them)`,
      );
    }
    const stack = await startStack({ apiPort, apiHost, dbPort, log, ownStackOnly: true });
    // The stack's connection as decided (its password, TLS, host or socket as psql's), not the URL handed to
    // postgres.js, which reads it otherwise.
    const sql = postgres({ ...stack.db.options, max: 1, onnotice: () => {} } as postgres.Options<
      Record<string, postgres.PostgresType>
    >);
    await sql`insert into auth.users (id, email) values (${DEMO_USER_ID}, ${DEMO_EMAIL}) on conflict (id) do nothing`;
    await sql.end();
    const demoToken = await mintUserAccessToken(DEMO_USER_ID, {
      email: DEMO_EMAIL,
      expiresInSeconds: 24 * 3600,
      secret: stack.jwtSecret,
    });
    // Stopped meanwhile (said above; the exit cleanups are tearing the stack down): nothing to announce.
    if (!stoppedBy()) {
      stackStarting = false;
      await startWebAppAndAnnounce(stack, {
        webPort: withWeb ? webPort : null,
        apiHost,
        log,
        started,
        demo: { userId: DEMO_USER_ID, email: DEMO_EMAIL, token: demoToken },
      });
      said();
    }
    await new Promise(() => {}); // until a signal; cleanup.ts stops the stack
  } catch (error) {
    // A start that a stop made fail (its database or a step of it gone; Ctrl-C also reaches the stack's
    // own processes, which can fail of it before this process's signal listener has run) is the stop's:
    // said as such, exiting with the signal's code whichever of this and the signal's exit runs first.
    if (!stoppedBy()) console.error(error instanceof Error ? error.message : error);
    said();
    await runCleanups();
    Deno.exit(stoppedBy()?.code ?? 1);
  }
}

if (import.meta.main) await npmStart();
