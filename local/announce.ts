// What `npm start` (local/main.ts) does once its stack is up: starts the web app beside it
// (local/web.ts) and prints the summary (URLs, keys, the demo user, curl lines). Its own module so
// that tests/web/serve.test.ts runs it itself (with a fake web app: `start`), stopped while the web
// app installs, builds or starts.

import { startWebApp } from "../examples/web/serve.mjs";
import { stoppedBy } from "./stack/cleanup.ts";
import { startWebAppBesideStack, type WebBesideStack } from "./web.ts";

export interface StackToAnnounce {
  apiUrl: string;
  dbUrl: string;
  jwtSecret: string;
  anonKey: string;
  serviceRoleKey: string;
}

export interface AnnounceOptions {
  /** The web app's port; null: left out (READSYNC_WEB=0). */
  webPort: number | null;
  /**
   * The IPv4 address the API listens on (READSYNC_API_HOST; 127.0.0.1 unless given), where the web app
   * listens too (local/web.ts).
   */
  apiHost?: string;
  log: (line: string) => void;
  /** performance.now() when npm start began (the summary says how long it took). */
  started: number;
  demo: { userId: string; email: string; token: string };
}

/**
 * Starts the web app (unless left out) and prints the summary; or, when npm start was stopped meanwhile
 * (during the web app's npm ci, next build or next start), that it was stopped and what it started, which
 * its exit cleanups are tearing down (they exit with the signal's code), instead of announcing the stack
 * as up.
 */
export async function startWebAppAndAnnounce(
  stack: StackToAnnounce,
  options: AnnounceOptions,
  start: typeof startWebApp = startWebApp,
  interfaces: () => Deno.NetworkInterfaceInfo[] = Deno.networkInterfaces,
): Promise<void> {
  const { demo } = options;
  const apiHost = options.apiHost ?? "127.0.0.1";
  const fn = `${stack.apiUrl}/functions/v1/progress`;
  // The web app is a convenience beside the stack: if it cannot start, the stack still serves.
  const web = options.webPort !== null
    ? await startWebAppBesideStack(stack, { port: options.webPort, log: options.log, host: apiHost }, start)
    : null;
  const stop = stoppedBy();
  if (stop) {
    options.log(
      `npm start was stopped (${stop.by}) before the stack was up: tearing down what it started: ` +
        `the API (${stack.apiUrl}), the database (${stack.dbUrl}, removed with its data)${startedWeb(web)}`,
    );
    return;
  }
  const webLine = web?.line ?? "  Web app          not started (READSYNC_WEB=0)";
  const elsewhere = otherDevicesLines(
    apiHost,
    Number(new URL(stack.apiUrl).port),
    web?.web?.port ?? null,
    apiHost === "0.0.0.0" ? interfaceAddresses(interfaces) : [],
  );
  console.log(`
readsync local stack is up (${Math.round(performance.now() - options.started)} ms). Development values only.

  API URL          ${stack.apiUrl}
  Functions        ${stack.apiUrl}/functions/v1/<name>
  Realtime         ${stack.apiUrl.replace("http", "ws")}/realtime/v1/websocket
  DB URL           ${stack.dbUrl}
  JWT secret       ${stack.jwtSecret}
  anon key         ${stack.anonKey}
  service_role key ${stack.serviceRoleKey}
${webLine}
${elsewhere.join("\n")}

  Demo user        ${demo.userId} (${demo.email})
  Demo token       ${demo.token}

Try it:
  export TOKEN=${demo.token}
  curl -s -X POST ${fn} -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
    -d '{"series_id":"one-piece","chapter":12,"page":30,"percentage":0.12,"device_id":"phone-1","updated_at":"'$(date -u +%FT%T.%3NZ)'"}'
  curl -s ${fn}/series/one-piece -H "Authorization: Bearer $TOKEN"
  curl -s "${fn}?limit=20" -H "Authorization: Bearer $TOKEN"
  curl -s "${fn}/changes?since=" -H "Authorization: Bearer $TOKEN"
  curl -s -X POST ${fn}/batch -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
    -d '{"writes":[{"series_id":"berserk","chapter":3,"page":1,"percentage":0.03,"device_id":"phone-1","updated_at":"'$(date -u +%FT%T.%3NZ)'"}]}'
  curl -s -X DELETE "${fn}/series/one-piece?device_id=phone-1&updated_at=$(date -u +%FT%T.%3NZ)" -H "Authorization: Bearer $TOKEN"

Ctrl-C stops everything and removes the database.`);
}

/** What of the web app a stopped npm start had started, for its report (nothing when it failed or was left out). */
function startedWeb(web: WebBesideStack | null): string {
  if (web?.web) return ` and the web app (${web.web.url})`;
  if (web?.stoppedDuring) return ` and the web app's ${web.stoppedDuring} (ended)`;
  return "";
}

/** This machine's IPv4 addresses but loopback ones, as its interfaces list them (none where they cannot be read). */
function interfaceAddresses(interfaces: () => Deno.NetworkInterfaceInfo[]): string[] {
  try {
    const addresses = interfaces()
      .filter((info) => info.family === "IPv4" && !info.address.startsWith("127."))
      .map((info) => info.address);
    return [...new Set(addresses)];
  } catch {
    return [];
  }
}

/**
 * The summary's "Other devices" lines: where another device (a phone on the same network) opens the web app
 * and reaches the API, for the address the API listens on (`apiHost`, READSYNC_API_HOST): each of this
 * machine's `addresses` for 0.0.0.0, the address itself for another that is not 127.x; else that the stack is
 * on this machine only, naming the variable that opens it. The database stays on 127.0.0.1 either way.
 */
export function otherDevicesLines(
  apiHost: string,
  apiPort: number,
  webPort: number | null,
  addresses: string[],
): string[] {
  const label = "  Other devices    ";
  const indent = " ".repeat(label.length);
  if (apiHost.startsWith("127.")) {
    return [
      `${label}none: this machine only (READSYNC_API_HOST=0.0.0.0 opens the API and the web app to the network)`,
    ];
  }
  const reached = apiHost === "0.0.0.0" ? addresses : [apiHost];
  if (reached.length === 0) {
    return [
      `${label}none found: this machine has no IPv4 address but loopback (READSYNC_API_HOST=${apiHost})`,
    ];
  }
  return [
    ...reached.map((address, i) =>
      `${i === 0 ? label : indent}http://${address}:${apiPort} (API)` +
      (webPort !== null ? `, http://${address}:${webPort} (web app)` : "")
    ),
    `${indent}(READSYNC_API_HOST=${apiHost}: the stack's development keys work for anyone on this network; ` +
    `the database stays on 127.0.0.1, its superuser's password being a well-known one)`,
  ];
}
