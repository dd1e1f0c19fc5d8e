// The local API gateway: one HTTP port serving what `supabase start` serves on 54321 and we use:
//   /functions/v1/<name>       edge functions (local/functions)
//   /realtime/v1/websocket     Realtime broadcast (local/realtime)
//   /auth/v1/.well-known/jwks.json  the project's public signing keys, as Supabase Auth publishes them
//                              (SUPABASE_JWKS when set; else none: the local stack signs with the
//                              HS256 secret only), so functions verifying asymmetric tokens get 401
//                              for a foreign key instead of failing to load keys
// Anything else is a JSON 404, so a client pointed at the wrong path learns it at once: with PostgREST's
// error fields (code, message, details, hint; docs.postgrest.org, references/errors), which supabase-js's
// Data API client reads as its error and Auth's reads the message of, so `.from()`, `.rpc()` and
// `supabase.auth.*` against the local stack report why (the stack serves no Data API and no Auth).
// CORS as `supabase start`'s Kong adds it (kongCors.ts): on every path under one of its routes
// (`/functions/v1/`, `/realtime/v1/`, `/rest/v1/`, `/auth/v1/`, ...) every answer carries
// `Access-Control-Allow-Origin: *` (a 500 of a service that failed included) and a preflight is answered
// by the gateway (but a function's: the function answers it, as it must on a hosted project; a name no
// function has, or a function that failed to load: the gateway's again); elsewhere none, as Kong's no-route
// 404 has none. Routes are matched on the path Kong matches (kongRouter.ts, which says what the services read).

import { createFunctionsGateway, type FunctionsGateway } from "../functions/gateway.ts";
import {
  createRealtimeEndpoint,
  quietAboutClosingAnswers,
  type RealtimeEndpoint,
} from "../realtime/endpoint.ts";
import { type OnPhase, timed } from "../stack/phases.ts";
import { type DatabaseConnection, type DatabaseRelay, openPostgresJsUrl } from "../stack/database.ts";
import { isKongPreflight, kongPreflight, onKongCorsRoute, withKongAllowOrigin } from "./kongCors.ts";
import { type KongRouted, kongRouted, refusedHost } from "./kongRouter.ts";
import { checkNumberOption, TIMER_MS } from "../../shared/options/checkOptions.ts";

export interface ApiContext {
  /** The port to listen on; 0: one the OS picks as the server binds it (see startApiServer). */
  port: number;
  /**
   * The IPv4 address to listen on: 127.0.0.1 unless given (this machine only); 0.0.0.0 for every interface,
   * as `supabase start` publishes its gateway (`docker run -p 54321:8000`), so that another device (a
   * phone on the same network) can reach the stack; npm start reads it from READSYNC_API_HOST. The URL
   * handed out (and the functions' SUPABASE_URL) names 127.0.0.1 for 0.0.0.0.
   */
  hostname?: string;
  /** The supabase/ directory whose functions are served (the repository's unless given: tests give theirs). */
  supabaseDir?: string;
  dbUrl: string;
  /**
   * The connection to dbUrl that Realtime and the functions make (databaseConnection: as psql makes it);
   * decided from dbUrl by the Realtime endpoint when not given.
   */
  db?: DatabaseConnection;
  jwtSecret: string;
  anonKey: string;
  serviceRoleKey: string;
  /**
   * How long close() lets requests still running finish (Deno.serve's graceful shutdown) before it
   * returns without them; 5 s unless given. 0 to 2^31-1 ms; other values are refused when the server starts.
   */
  closeGraceMs?: number;
  /** Told how long each step of the start took (the benchmark's cold-start phases: local/stack/phases.ts). */
  onPhase?: OnPhase;
  /**
   * Told of each request as the server takes it (pending() lists it from then on), before it is routed and
   * before it waits for the services still starting: a test waits on it for a request to be under way, where
   * a start that fails would otherwise race it (the server stops listening once its start has failed).
   */
  onRequest?: (request: PendingRequest) => void;
  /**
   * Reads the kernel's table of TCP connections (the text of /proc/net/tcp, readProcNetTcp unless given)
   * when the server looks which client connections are open (openConnections); a throw is taken as no
   * table. Tests give a table of their own.
   */
  readTcpTable?: () => string;
}

export interface ApiServer {
  url: string;
  /**
   * Closes Realtime and the functions, then the server: bounded by closeGraceMs, so one connection that
   * never finishes (a request body the client stopped sending half-way; Deno.serve's graceful shutdown
   * waits for it) cannot hold the stack's stop, and with it the test run's exit, for good.
   */
  close(): Promise<void>;
  /**
   * The requests being handled now, oldest first (a diagnostic: close() names them if it gives up, so
   * the test that left one can be found: its route and topic, when it came, and which client sent it).
   */
  pending(): PendingRequest[];
  /**
   * The client connections the server remembers the last request of, oldest first: what close() names
   * for a connection still open when it gives up (a diagnostic). Those still open, and at most as many
   * again that have ended since the server last looked (see rememberConnection).
   */
  lastRequests(): LastRequest[];
}

/** The last request a client connection carried (ApiServer.lastRequests). */
export interface LastRequest {
  /** The client's address and port. */
  from: string;
  request: PendingRequest;
  /** Its handler has answered (a socket's 101 included). */
  answered: boolean;
}

/**
 * How many client connections the server remembers the last request of before it looks which of them
 * are still open (/proc/net/tcp) and forgets the others; it looks again once it remembers twice as many
 * as were open then, or this many, whichever is more, so at least half this many new connections come
 * between two looks (128 open at a look: 129 more; none open: 255), and at least as many as were open.
 */
export const CONNECTIONS_REMEMBERED = 256;

/** A request the server is still handling, as pending() and close()'s give-up message name it. */
export interface PendingRequest {
  method: string;
  /** The path only: a query may carry a key (the socket's `apikey`). */
  path: string;
  /** When the handler got it. */
  since: Date;
  /** Which client sent it: `Deno/…` (deno test), `node` (the browser tests' runner, Next.js), a browser. */
  userAgent: string | null;
  /** The client's address and port (as `ss -tnp` lists the client's end, when it is still open). */
  from: string;
}

/** E.g. `POST /realtime/v1/api/broadcast since 2026-12-06T16:40:01.123Z (12.3 s ago), user-agent Deno/2.9.6` */
function describeRequest(request: PendingRequest, now: Date): string {
  const ago = ((now.getTime() - request.since.getTime()) / 1000).toFixed(1);
  return `${request.method} ${request.path} since ${request.since.toISOString()} (${ago} s ago), user-agent ` +
    (request.userAgent ?? "none");
}

/** Linux's TCP states as /proc/net/tcp numbers them (include/net/tcp_states.h). */
const TCP_STATES: Record<string, string> = {
  "01": "ESTABLISHED",
  "02": "SYN_SENT",
  "03": "SYN_RECV",
  "04": "FIN_WAIT1",
  "05": "FIN_WAIT2",
  "06": "TIME_WAIT",
  "07": "CLOSE",
  "08": "CLOSE_WAIT",
  "09": "LAST_ACK",
  "0A": "LISTEN",
  "0B": "CLOSING",
};

/** The kernel's table of IPv4 TCP connections, as Linux writes it (its text; throws where there is none). */
export function readProcNetTcp(): string {
  return Deno.readTextFileSync("/proc/net/tcp");
}

/**
 * A connection's line of /proc/net/tcp (`   3: 0100007F:D431 0100007F:8AE2 01 ...`): its number, the local
 * and the remote address as hexadecimal IPv4 (the bytes little-endian) and port, and the state. A line not
 * of this form (the header, a line cut short) names no connection.
 */
const TCP_TABLE_LINE =
  /^\s*\d+:\s+([0-9A-Fa-f]{8}):([0-9A-Fa-f]{4})\s+([0-9A-Fa-f]{8}):([0-9A-Fa-f]{4})\s+([0-9A-Fa-f]{2})(?:\s|$)/;

/** `0100007F` (as /proc/net/tcp writes 127.0.0.1) as `127.0.0.1`. */
function hexIpv4(hex: string): string {
  return [6, 4, 2, 0].map((at) => parseInt(hex.slice(at, at + 2), 16)).join(".");
}

/**
 * The connections open on `address`:`port` (the server's end) that one read of the table lists: the
 * client's address and port, and the state; the listening socket and TIME_WAIT ones left out. Both the
 * address and the port are matched: a socket of another process on the same port number of another
 * address (another interface's, a container's) is no connection to this server, and where its client's
 * address and port were those of a connection this server had seen, the port alone took it for that one,
 * still open. A line not of the table's form is skipped, so no text can make this throw.
 */
function connectionsListed(table: string, address: string, port: number): Map<string, string> {
  const open = new Map<string, string>();
  for (const line of table.split("\n")) {
    const fields = TCP_TABLE_LINE.exec(line);
    if (!fields || parseInt(fields[2], 16) !== port) continue;
    // A server on 0.0.0.0 is reached at any of the machine's addresses: each is its connection's local end.
    if (address !== "0.0.0.0" && hexIpv4(fields[1]) !== address) continue;
    const state = fields[5].toUpperCase();
    if (state === "0A" || state === "06") continue;
    open.set(`${hexIpv4(fields[3])}:${parseInt(fields[4], 16)}`, TCP_STATES[state] ?? state);
  }
  return open;
}

/**
 * The connections still open on the server's address (127.0.0.1 unless said: the API server's default;
 * 0.0.0.0: any local address) and port, as the kernel lists them (/proc/net/tcp): the client's address and port, and the
 * state (CLOSE_WAIT: the client has closed its end). Deno.serve's graceful shutdown waits for these, also
 * once their handlers have answered, which pending() cannot show. Null where there is no such file (not
 * Linux) or neither read of it succeeds (`readTable` threw both times); never throws.
 *
 * The table is read twice in a row, and a connection either read lists is open; when one of the two reads
 * fails, what the other lists (before, one failed read made the look null, and the server forgot every
 * connection it remembered, the open ones too). Linux hands the file over
 * a page at a time (seq_file: some 27 of its 150-character lines per read, whatever the reader asks for),
 * each read resuming at a hash bucket of the kernel's table and a count of entries into it, so a
 * connection closing or opening in that bucket between two reads shifts the entries after it: one open
 * connection may be left out of that read (or one listed twice). A connection open all along is left out
 * only if that happens in both reads; before, one read leaving it out made the server forget its last
 * request, and close() then said "no request seen on it".
 */
export function openConnections(
  port: number,
  readTable: () => string = readProcNetTcp,
  address = "127.0.0.1",
): { from: string; state: string }[] | null {
  const open = new Map<string, string>();
  let readsDone = 0;
  for (let read = 0; read < 2; read++) {
    let table: string;
    try {
      table = readTable();
    } catch {
      continue;
    }
    readsDone++;
    for (const [from, state] of connectionsListed(table, address, port)) open.set(from, state);
  }
  if (readsDone === 0) return null;
  return [...open].map(([from, state]) => ({ from, state }));
}

function localJwks(): { keys: unknown[] } {
  try {
    const set = JSON.parse(Deno.env.get("SUPABASE_JWKS") ?? "");
    if (Array.isArray(set?.keys)) return { keys: set.keys };
  } catch { /* not set or not JSON */ }
  return { keys: [] };
}

/** The 404 of a path the local stack does not serve, with a hint for the two services people look for. */
function notServed(pathname: string): { code: string; message: string; details: null; hint: string | null } {
  const hint = /^\/rest\/v1(\/|$)/.test(pathname)
    ? "The local stack serves no Data API: readsync's clients use the progress function and Realtime " +
      "(README, Two commands); run `supabase start` for PostgREST"
    : /^\/auth\/v1(\/|$)/.test(pathname)
    ? "The local stack serves no Auth: use a token from local/stack/keys.ts (npm start prints a demo user's)"
    : null;
  return { code: "not_found", message: `No local service at ${pathname}`, details: null, hint };
}

/**
 * Listens first, then makes the functions and Realtime for the URL it listens on (the functions read it
 * as SUPABASE_URL); a request that comes before they are made waits for them. With port 0 the OS picks
 * the port as the server binds it, so no other process can take it between a pick and the bind (as
 * several test runs starting stacks at once on one machine did with a port picked and then released).
 */
/** An IPv4 address in dotted decimal, each part 0 to 255 without a leading zero (what hostname takes). */
export const IPV4 = /^((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** closeGraceMs: a timer's delay, or 0 (close() gives running requests no time). */
const CLOSE_GRACE_MS = { ...TIMER_MS, zero: true };

export async function startApiServer(ctx: ApiContext): Promise<ApiServer> {
  // Checked before anything starts: a negative or NaN grace gave up at once and Infinity after 1 ms (the
  // timer's clamp), each without a word.
  checkNumberOption(ctx.closeGraceMs, CLOSE_GRACE_MS, "startApiServer", "closeGraceMs");
  const hostname = ctx.hostname ?? "127.0.0.1";
  if (!IPV4.test(hostname)) {
    throw new TypeError(
      `startApiServer option hostname must be an IPv4 address (got ${JSON.stringify(hostname)})`,
    );
  }
  const services = Promise.withResolvers<{ functions: FunctionsGateway; realtime: RealtimeEndpoint }>();
  const running = new Map<Request, PendingRequest>();
  // The last request each client connection (its address and port) sent, and whether it was answered:
  // what close() names for a connection still open, oldest first. Deno.serve tells no connection's end,
  // so those that have ended are forgotten when the server looks which are open (rememberConnection);
  // before, one entry stayed per client port ever seen, for as long as the server ran (npm start: days).
  const lastOnConnection = new Map<string, LastRequest>();
  let lookAtConnectionsAbove = CONNECTIONS_REMEMBERED;
  const readTcpTable = ctx.readTcpTable ?? readProcNetTcp;
  /**
   * Remembers `last` as its connection's last request (a client port used again is a new connection),
   * and once more connections are remembered than lookAtConnectionsAbove, forgets those the kernel no
   * longer lists as open (its table gone or unreadable: all of them, as close() cannot name any then).
   */
  const rememberConnection = (last: LastRequest) => {
    lastOnConnection.delete(last.from); // newest last
    lastOnConnection.set(last.from, last);
    if (lastOnConnection.size <= lookAtConnectionsAbove) return;
    const open = openConnections(server.addr.port, readTcpTable, server.addr.hostname);
    const stillOpen = new Set(open?.map(({ from }) => from));
    for (const from of lastOnConnection.keys()) {
      if (from !== last.from && !stillOpen.has(from)) lastOnConnection.delete(from);
    }
    lookAtConnectionsAbove = Math.max(CONNECTIONS_REMEMBERED, 2 * lastOnConnection.size);
  };
  /**
   * The service `routed.pathname` names, or the 404 of a path the local stack does not serve: a function is
   * handed the request at that path (routed.forwarded), Realtime the request Deno.serve gave (which alone
   * can be upgraded to a WebSocket) with the URL to read (routed.url).
   */
  const route = async (req: Request, info: Deno.ServeHandlerInfo, routed: KongRouted): Promise<Response> => {
    const { pathname } = routed;
    if (pathname.startsWith("/functions/v1/")) {
      return await (await services.promise).functions.handle(routed.forwarded, info);
    }
    if (pathname.startsWith("/realtime/v1/")) {
      return await (await services.promise).realtime.handle(req, info, routed.url);
    }
    if (pathname === "/auth/v1/.well-known/jwks.json") return Response.json(localJwks());
    return Response.json(notServed(pathname), { status: 404 });
  };
  /**
   * route(), or a 500 when it throws (a service that failed to start, a handler's bug), answered here
   * rather than by Deno.serve's onError so that Kong's cors plugin marks it as it marks any answer on its
   * route: on `supabase start` a service's 500 passes Kong's header filter, and so do Kong's own error
   * pages (its 502 for a service that is down: nginx's error_page goes to /kong_error_handler, which
   * overrides only the rewrite and access phases, so the route's header_filter, cors included, runs).
   */
  const routeOrFail = async (req: Request, info: Deno.ServeHandlerInfo, routed: KongRouted) => {
    try {
      return await route(req, info, routed);
    } catch (error) {
      console.error(error);
      return new Response("Internal Server Error", { status: 500 });
    }
  };
  /**
   * Whether a preflight routed to the functions goes to a function the gateway serves: the one named by the
   * path the gateway reads (routed.forwarded's: Kong's, so `/functions/v1/%70rogress` is `progress`'s, as
   * behind `supabase start`).
   */
  const functionAnswersPreflight = async (routed: KongRouted): Promise<boolean> => {
    if (!routed.pathname.startsWith("/functions/v1/")) return false;
    try {
      return (await services.promise).functions.servesFunction(new URL(routed.forwarded.url).pathname);
    } catch {
      return false; // the functions failed to start: no function to answer it, Kong's plugin does
    }
  };
  const server = Deno.serve(
    { hostname, port: ctx.port, onListen: () => {}, onError: quietAboutClosingAnswers },
    async (req, info) => {
      // A Host nginx refuses or no URL parser reads: its 400 (kongRouter.ts), before any route.
      const refused = refusedHost(req);
      if (refused) return refused;
      // Routed on the path Kong routes on (kongRouter.ts), and the service handed a request at that path: a
      // path Kong sends to one service never reaches another here (`\` is no `/` to Kong, `//` is one).
      const routed = kongRouted(req);
      const { pathname } = routed;
      const from = info.remoteAddr.transport === "tcp"
        ? `${info.remoteAddr.hostname}:${info.remoteAddr.port}`
        : info.remoteAddr.transport;
      const request = {
        method: req.method,
        path: pathname,
        since: new Date(),
        userAgent: req.headers.get("user-agent"),
        from,
      };
      running.set(req, request);
      const onConnection = { from, request, answered: false };
      try {
        // A diagnostic that cannot throw (openConnections reads any text); within the try all the same, so
        // that nothing it might throw could leave the request in `running` for good.
        rememberConnection(onConnection);
        ctx.onRequest?.(request);
        // Kong's cors plugin on the route (kongCors.ts), as on `supabase start`: a browser reads every
        // answer there, the 401s and 404s of the functions gateway and the 404 of a service not served
        // here included, instead of failing the fetch. Not on a path no Kong route matches (Kong's own
        // 404 has none). A function's preflight stays the function's to answer (README, Two commands);
        // a path naming no function (the gateway's 404) or one that failed to load (its 503) has none to
        // answer it, so Kong's plugin does.
        if (!onKongCorsRoute(pathname)) return await routeOrFail(req, info, routed);
        if (isKongPreflight(req) && !(await functionAnswersPreflight(routed))) return kongPreflight(req);
        return withKongAllowOrigin(await routeOrFail(req, info, routed));
      } finally {
        running.delete(req);
        onConnection.answered = true;
      }
    },
  );
  const port = server.addr.port;
  const url = `http://${hostname === "0.0.0.0" ? "127.0.0.1" : hostname}:${port}`;
  let functions: FunctionsGateway;
  let realtime: RealtimeEndpoint;
  // The functions' way to the database (a relay where no URL can say the connection: openPostgresJsUrl),
  // closed once the server has shut down: a request still in a function when close() begins finishes its
  // statements and its COMMIT through it, instead of having its connections cut under it (a write answered
  // 503, or committed and answered 503). Closed too when the start fails after it opened.
  let functionsDb: DatabaseRelay | null = null;
  try {
    functionsDb = ctx.db ? await openPostgresJsUrl(ctx.db) : null;
    functions = await timed(
      ctx.onPhase,
      "API: functions gateway (functions loaded)",
      () =>
        createFunctionsGateway(
          { ...ctx, port, apiUrl: url, functionsDbUrl: functionsDb?.url },
          { supabaseDir: ctx.supabaseDir },
        ),
    );
    try {
      realtime = await timed(
        ctx.onPhase,
        "API: Realtime endpoint",
        () => createRealtimeEndpoint({ ...ctx, port, apiUrl: url }, { onPhase: ctx.onPhase }),
      );
    } catch (error) {
      await functions.close();
      throw error;
    }
  } catch (error) {
    services.promise.catch(() => {}); // the requests that wait for them are answered 500
    services.reject(error);
    await server.shutdown();
    await functionsDb?.close();
    throw error;
  }
  services.resolve({ functions, realtime });
  return {
    url,
    close: async () => {
      await realtime.close();
      // Aborts the signal of every request still in a function: the progress function cancels its database
      // call and answers 503 at once, instead of after a database wait (up to its 8 s statement timeout,
      // beyond the grace below).
      await functions.close();
      // shutdown() stops listening at once and then waits for every running handler to answer.
      const graceMs = ctx.closeGraceMs ?? 5_000;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const gaveUp = new Promise<true>((resolve) => timer = setTimeout(() => resolve(true), graceMs));
      const ended = await Promise.race([server.shutdown().then(() => false as const), gaveUp]);
      clearTimeout(timer);
      // Every request has been answered (or the grace is over): the functions' relay is no longer needed.
      await functionsDb?.close();
      if (ended) {
        // What holds the shutdown, named so that the test that left it can be found: each connection
        // still open with the last request it carried (route, when, which client), and the requests
        // whose handlers have not answered.
        const now = new Date();
        const handled = [...running.values()].map((r) => `${describeRequest(r, now)}, from ${r.from}`);
        const open = openConnections(port, readTcpTable, server.addr.hostname);
        const connections = open === null ? "connections not listed (no /proc/net/tcp)" : `${open.length} ` +
          `connection(s) open${open.length ? ": " : ""}${
            open.map(({ from, state }) => {
              const last = lastOnConnection.get(from);
              return `from ${from} ${state}, ${
                last
                  ? `its last request ${describeRequest(last.request, now)}, ${
                    last.answered ? "answered" : "not answered"
                  }`
                  : "no request seen on it"
              }`;
            }).join("; ")
          }`;
        console.error(
          `local API server: stopped waiting for its connections after ${graceMs} ms, left to end with the ` +
            `process (${connections}; ${running.size} request(s) still being handled${
              handled.length ? `: ${handled.join("; ")}` : ""
            })`,
        );
      }
    },
    pending: () => [...running.values()],
    lastRequests: () => [...lastOnConnection.values()],
  };
}
