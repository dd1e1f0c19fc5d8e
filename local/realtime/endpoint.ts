// The local Realtime endpoint: what `supabase start` serves under /realtime/v1 for the Broadcast
// surface readsync uses, spoken to the unmodified supabase-js / realtime-js client.
//
//   GET  /realtime/v1/websocket?apikey=...&vsn=2.0.0         Phoenix channels over WebSocket
//   POST /realtime/v1/api/broadcast                          REST broadcast (realtime-js send() fallback)
//   POST /realtime/v1/api/broadcast/<topic>/events/<event>   REST broadcast (realtime-js httpSend())
//   anything else under /realtime/v1                         404 Not Found, as Phoenix's router answers
//
// See README.md in this folder for what is and is not emulated.

import postgres from "postgres";
import type { GatewayContext, Service } from "../functions/gateway.ts";
import { type JwtClaims, TokenVerifier } from "./auth.ts";
import { canWrite, PolicyError, probeFailure } from "./authorization.ts";
import { CHANNEL_ERROR_BACKOFF_MS, CONNECT_ERROR_BACKOFF_MS, Connection } from "./connection.ts";
import { BroadcastHub, subscriptionKey } from "./hub.ts";
import { ensurePublication } from "./wal.ts";
import { maintainMessagePartitions, startPartitionJanitor } from "./partitions.ts";
import { SUPPORTED_VSNS, type Vsn } from "./protocol.ts";
import {
  BODY_IDLE_TIMEOUT_MS,
  bodyIdleTimeout,
  type BodyParams,
  castBatch,
  closingAnswer,
  ConnectionClosedAfterAnswer,
  elixirBlank,
  elixirUriDecode,
  phoenixError,
  readBodyParams,
  unreadBody,
  unsupportedMediaType,
} from "./rest.ts";
import { upgradeRefusal } from "./upgrade.ts";
import {
  checkBooleanOption,
  checkChoiceOption,
  checkFunctionOption,
  checkNumberOption,
  checkObjectOption,
  checkTokenOption,
  isPlainObject,
  type NumberRule,
  TIMER_MS,
} from "../../shared/options/checkOptions.ts";
import { type OnPhase, timed } from "../stack/phases.ts";
import { withKongCors } from "../api/kongCors.ts";
import { kongRouted, refusedHost } from "../api/kongRouter.ts";
import { databaseConnection } from "../stack/database.ts";

export interface RealtimeEndpointOptions {
  /** Refuse public (non-private) channels, like the dashboard's "Allow public access" switched off. */
  privateOnly?: boolean;
  /**
   * How database broadcasts are framed (HubOptions.frameForm): "binary" by default, as the Realtime
   * v2.130.0 that the Supabase CLI 2.117.0 runs (a vsn 2.0.0 client gets a binary user-broadcast frame
   * with metadata `{id}`, no `id` in the payload); "json" for older releases' JSON text form.
   */
  frameForm?: "binary" | "json";
  /**
   * Connections used for policy checks (the WAL replication connection is separate): a whole number from
   * 1 to 100 (POOL_SIZE_RULE), 8 by default.
   */
  poolSize?: number;
  /** Structured log sink; silent by default (READSYNC_REALTIME_LOG=1 logs JSON lines to stderr). */
  log?: (fields: Record<string, unknown>) => void;
  /**
   * A socket that sends nothing (not even a heartbeat) for this long is closed, as Phoenix's
   * WebSocket transport does (its `timeout`, 60 s): realtime-js heartbeats every 25 s, so only a
   * client that stopped (a suspended device, a dead network path) is cut. 0 or Infinity: no bound (no
   * sweep); from 1 to MAX_TIMER_MS otherwise (NUMBER_OPTION_RULES).
   */
  idleTimeoutMs?: number;
  /**
   * How often a joined channel's token is re-verified before its expiry (Supabase's confirm_token
   * cap, @confirm_token_ms_max_interval, 1 hour; tests shorten it). The token only: the read policy
   * is asked at join and on an access_token push, as on Supabase. From 1 to MAX_TIMER_MS (a confirm is
   * a timer of at most this: 0 would confirm at every turn, and so would Infinity for a token expiring
   * past MAX_TIMER_MS, whose timer Deno fires after 1 ms).
   */
  confirmTokenIntervalMs?: number;
  /**
   * How long a refused join waits before its error reply (Supabase's CHANNEL_ERROR_BACKOFF_MS, 5 s
   * by default, which `npm start` keeps: an app meets the same wait as on Supabase). A socket may
   * ask for less with the stand-in's own `local_channel_error_backoff_ms` query parameter (see
   * LOWER_JOIN_ERROR_BACKOFF_PARAM). 0: no wait; from 1 to MAX_TIMER_MS otherwise.
   */
  channelErrorBackoffMs?: number;
  /**
   * How long a refused socket (missing apikey, bad or expired token) waits before the upgrade is
   * answered with 403 (Supabase's CONNECT_ERROR_BACKOFF_MS, 2 s by default, which `npm start`
   * keeps). No socket parameter lowers it (unlike the join's): one test opens a refused socket, and
   * it tests this wait. 0: no wait; from 1 to MAX_TIMER_MS otherwise.
   */
  connectErrorBackoffMs?: number;
  /**
   * A channel's token-refresh window (Supabase's ACCESS_TOKEN_THROTTLE_MS, 10 s): a token pushed
   * within it of the last one applied is held until it ends (or until the current token's confirm).
   * 0: every token applied at once; from 1 to MAX_TIMER_MS otherwise.
   */
  accessTokenThrottleMs?: number;
  /**
   * How long a REST request's body read waits for the client's next bytes before it is given up and
   * answered 408 (rest.ts BODY_IDLE_TIMEOUT_MS: Cowboy's idle_timeout, 60 s; tests shorten it). From 1
   * to MAX_TIMER_MS (each read of the body waits on a timer of this).
   */
  bodyIdleTimeoutMs?: number;
  /**
   * How long after its upgrade a socket may stay CONNECTING before the endpoint lets it go
   * (DEFAULT_UPGRADE_TIMEOUT_MS; tests shorten it): see releaseUnopened. 0 or Infinity: no bound (the
   * client's leaving and a failed upgrade still let it go); from 1 to MAX_TIMER_MS otherwise.
   */
  upgradeTimeoutMs?: number;
  /** Told how long each step of the start took (the benchmark's cold-start phases: local/stack/phases.ts). */
  onPhase?: OnPhase;
}

const DEFAULT_IDLE_TIMEOUT_MS = 60_000;

/**
 * The longest a socket may stay CONNECTING after the endpoint made its upgrade (10 s). Deno.serve
 * completes a healthy upgrade as soon as it has sent the 101, well within this even on a loaded machine
 * (Cowboy writes its 101 before the socket exists, so Realtime has nothing like it); one still
 * CONNECTING by then belongs to a client Deno will never open it for (releaseUnopened).
 */
export const DEFAULT_UPGRADE_TIMEOUT_MS = 10_000;

/** A timeout that 0 or Infinity turns off ("no bound"): a timer's delay otherwise (1 ms to MAX_TIMER_MS). */
const TIMEOUT_OR_NO_BOUND: NumberRule = { ...TIMER_MS, zero: true, infinity: true };

/** A wait that 0 skips: a timer's delay otherwise (1 ms to MAX_TIMER_MS). */
const WAIT_OR_NONE: NumberRule = { ...TIMER_MS, zero: true };

/**
 * The policy pool's size (postgres.js's `max`): a whole number of connections from 1 to 100, as the progress
 * function's PROGRESS_DB_POOL_MAX (PostgreSQL's default max_connections; postgres.js makes that many
 * connection objects up front). Unchecked, 0, a negative, a fraction or NaN went to postgres.js as it was.
 */
const POOL_SIZE_RULE: NumberRule = { min: 1, max: 100, whole: true };

/**
 * What each numeric option takes, checked by createRealtimeEndpoint (checkedNumberOptions) before it starts
 * anything, as the shared options' checks refuse theirs: a number out of range is a RangeError, a value of
 * another type (a string, null) a TypeError, each naming the option. Unchecked, a value no timer can hold
 * went to setTimeout, which Deno fires at once (0, a fraction below 1, a negative or NaN delay) or after
 * 1 ms (past MAX_TIMER_MS, Infinity), or to a comparison that silently turned the thing off: a negative or
 * NaN idleTimeoutMs stopped the idle sweep, as 0 does on purpose; an upgradeTimeoutMs of 0 let every socket
 * go as it was upgraded; a confirmTokenIntervalMs of 0 or NaN re-verified a channel's token at every turn.
 */
const NUMBER_OPTION_RULES = {
  poolSize: POOL_SIZE_RULE,
  idleTimeoutMs: TIMEOUT_OR_NO_BOUND,
  confirmTokenIntervalMs: TIMER_MS,
  channelErrorBackoffMs: WAIT_OR_NONE,
  connectErrorBackoffMs: WAIT_OR_NONE,
  accessTokenThrottleMs: WAIT_OR_NONE,
  bodyIdleTimeoutMs: TIMER_MS,
  upgradeTimeoutMs: TIMEOUT_OR_NO_BOUND,
} as const satisfies { readonly [name in keyof RealtimeEndpointOptions]?: NumberRule };

type NumberOptions = { -readonly [name in keyof typeof NUMBER_OPTION_RULES]: number | undefined };

/**
 * The numeric options as given (undefined: not given, the default applies), each checked against its
 * NUMBER_OPTION_RULES rule; throws for the first one its rule does not take.
 */
function checkedNumberOptions(options: RealtimeEndpointOptions): NumberOptions {
  const checked: Partial<NumberOptions> = {};
  for (const name of Object.keys(NUMBER_OPTION_RULES) as (keyof NumberOptions)[]) {
    checked[name] = checkNumberOption(
      options[name],
      NUMBER_OPTION_RULES[name],
      "createRealtimeEndpoint",
      name,
    );
  }
  return checked as NumberOptions;
}

/** The protocols of a database URL postgres.js connects with. */
const DATABASE_URL_PROTOCOLS = ["postgres:", "postgresql:"];

/**
 * Throws a TypeError unless `ctx` and `options` are what createRealtimeEndpoint reads, each refusal naming
 * the argument or field (the numeric options: checkedNumberOptions): both plain objects; the context's dbUrl
 * a postgres:// or postgresql:// URL, its jwtSecret a non-empty string, its anonKey and serviceRoleKey
 * non-empty strings when given; privateOnly true or false, frameForm "binary" or "json", log and onPhase
 * functions. Unchecked, each failed later or not at all: a privateOnly of "false" refused every public
 * channel, a frameForm of "JSON" framed binary, a jwtSecret left out verified tokens against the secret
 * "undefined" (TextEncoder's text of it), a dbUrl that is no URL failed inside postgres.js with its own
 * words, and a log that is no function threw at the first event, in a socket's handler or a timer.
 */
function checkOtherOptions(ctx: unknown, options: unknown): void {
  const where = "createRealtimeEndpoint";
  // The context by its type only, not checkObjectOption's showing of a string: a database URL given as the
  // context may carry a password.
  if (!isPlainObject(ctx)) {
    throw new TypeError(
      `${where} argument ctx must be a plain object (got ${ctx === null ? "null" : typeof ctx})`,
    );
  }
  checkObjectOption(options, where, "options", { kind: "argument" });
  const context = ctx as Record<string, unknown>;
  const given = (options ?? {}) as Record<string, unknown>;
  checkDatabaseUrl(context.dbUrl);
  checkTokenOption(context.jwtSecret, where, "jwtSecret", { kind: "context field", required: true });
  checkTokenOption(context.anonKey, where, "anonKey", { kind: "context field" });
  checkTokenOption(context.serviceRoleKey, where, "serviceRoleKey", { kind: "context field" });
  checkBooleanOption(given.privateOnly, where, "privateOnly");
  checkChoiceOption(given.frameForm, ["binary", "json"], where, "frameForm");
  checkFunctionOption(given.log, where, "log");
  checkFunctionOption(given.onPhase, where, "onPhase");
}

/**
 * Throws a TypeError unless `value` is a URL of a DATABASE_URL_PROTOCOLS protocol with "//" after it. The
 * refusal says what was given by its kind only: a database URL may carry a password. Without its "//"
 * (`postgresql:/user:password@host/db`, a slash short) it still parses as a URL, one with no host part:
 * postgres.js then connected to localhost (PGHOST) and took the rest, the password with it, as the
 * database's name. `postgres:///db?host=/socket` (an empty host) has its "//" and is taken.
 */
function checkDatabaseUrl(value: unknown): void {
  let url: URL | undefined;
  if (typeof value === "string") {
    try {
      url = new URL(value);
    } catch { /* no URL */ }
  }
  const protocol = url?.protocol;
  const known = protocol !== undefined && DATABASE_URL_PROTOCOLS.includes(protocol);
  // href, not the text given: the URL parser drops leading spaces and tabs or newlines within.
  if (known && url!.href.startsWith(`${protocol}//`)) return;
  const got = typeof value !== "string"
    ? value === null ? "null" : typeof value
    : protocol === undefined
    ? "a string that is no URL"
    : known
    ? `a ${protocol} URL without "//"`
    : `a URL of protocol ${protocol}`;
  throw new TypeError(
    `createRealtimeEndpoint context field dbUrl must be a postgres:// or postgresql:// URL (got ${got})`,
  );
}

/**
 * Query parameter of the WebSocket URL with which a socket lowers its own join-error wait (never
 * raises it): for tests whose refusals are not what they test, so the suite does not wait 5 s per
 * refusal. Supabase ignores unknown socket parameters and keeps its 5 s, so such a test still
 * passes there, only slower. realtime-js sends it when given as `realtime.params`.
 */
export const LOWER_JOIN_ERROR_BACKOFF_PARAM = "local_channel_error_backoff_ms";

export interface RealtimeEndpointStats {
  /** Sockets the endpoint keeps, CONNECTING ones included. */
  connections: number;
  /** Of those, the ones whose upgrade Deno.serve has not completed yet (see releaseUnopened). */
  upgrading: number;
  channels: number;
  subscribers: number;
  /** realtime.messages inserts received from the WAL (every topic). */
  walMessages: number;
  /** Messages whose topic had a subscriber: each was encoded once per protocol version. */
  matched: number;
  delivered: number;
  skippedNoSubscriber: number;
  /** Rows without topic, event, payload or private: dropped, as Supabase drops them. */
  skippedIncomplete: number;
}

export interface RealtimeEndpoint extends Service {
  /** Service.handle, reading the path of `url` (req.url's unless given) instead of req.url's. */
  handle(req: Request, info?: Deno.ServeHandlerInfo, url?: URL): Promise<Response>;
  stats(): RealtimeEndpointStats;
}

type EndpointContext = Pick<GatewayContext, "dbUrl" | "db" | "jwtSecret">;

export async function createRealtimeEndpoint(
  ctx: EndpointContext & Partial<GatewayContext>,
  options: RealtimeEndpointOptions = {},
): Promise<RealtimeEndpoint> {
  // Checked before anything is started (the pool, the WAL stream): a refused value leaves nothing to close.
  checkOtherOptions(ctx, options);
  const numbers = checkedNumberOptions(options);
  const upgradeTimeoutMs = numbers.upgradeTimeoutMs ?? DEFAULT_UPGRADE_TIMEOUT_MS;
  const log = options.log ?? defaultLog();
  // Connected as psql connects to the URL (its password, TLS, host or socket, no libpq parameter sent as a
  // server setting: database.ts, DatabaseConnection), not by handing postgres.js the URL.
  const db = ctx.db ?? await databaseConnection(ctx.dbUrl);
  const sql = postgres({
    ...db.options,
    max: numbers.poolSize ?? 8,
    onnotice: () => {},
    connection: { ...db.options.connection, application_name: "readsync-local-realtime" },
  } as postgres.Options<Record<string, postgres.PostgresType>>);
  // Delivery reads realtime.messages from the WAL on a replication connection of its own (hub.ts,
  // wal.ts): a burst of joins, whose policy probes use this pool, never delays it.
  const hub = new BroadcastHub(db, { frameForm: options.frameForm, log });
  try {
    await timed(options.onPhase, "Realtime: publication checked", () => ensurePublication(sql));
    await timed(options.onPhase, "Realtime: WAL stream started", () => hub.start());
  } catch (error) {
    await Promise.all([hub.close(), sql.end({ timeout: 1 })]);
    throw error;
  }
  // As Supabase Realtime does when it connects to a database: the day partitions of realtime.messages
  // for yesterday, today and tomorrow, then hourly by the janitor (partitions.ts). A role that may not
  // make them only loses the broadcasts no partition can hold, as on Supabase: logged, start goes on.
  await timed(
    options.onPhase,
    "Realtime: message partitions",
    () =>
      maintainMessagePartitions(sql, new Date(), log)
        .catch((error) => log({ event: "partition_maintenance_failed", error: String(error) })),
  );
  const verifier = new TokenVerifier(ctx.jwtSecret);
  // The project's keys verified now and kept for good (realtime-js sends the anon key as its apikey): a
  // socket connecting with one is a look-up, however many users' tokens the verifier has seen since.
  await timed(options.onPhase, "Realtime: project keys verified", async () => {
    for (const key of [ctx.anonKey, ctx.serviceRoleKey]) if (key) await verifier.pin(key);
  });
  const deps = {
    sql,
    hub,
    verifier,
    privateOnly: options.privateOnly ?? false,
    log,
    confirmTokenIntervalMs: numbers.confirmTokenIntervalMs,
    accessTokenThrottleMs: numbers.accessTokenThrottleMs,
  };
  const channelErrorBackoffMs = numbers.channelErrorBackoffMs ?? CHANNEL_ERROR_BACKOFF_MS;
  const connectErrorBackoffMs = numbers.connectErrorBackoffMs ?? CONNECT_ERROR_BACKOFF_MS;
  const bodyIdleTimeoutMs = numbers.bodyIdleTimeoutMs ?? BODY_IDLE_TIMEOUT_MS;
  const connections = new Set<Connection>();
  /** The Connections whose socket is still CONNECTING, with what ends the watch on it (releaseUnopened). */
  const upgrading = new Map<Connection, () => void>();
  let closed = false;
  const idleTimeoutMs = numbers.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  // 0 or Infinity: no bound, so no sweep (Infinity would have swept every 5 s and closed nothing).
  const idleSweep = idleTimeoutMs > 0 && idleTimeoutMs !== Infinity
    ? setInterval(() => {
      const now = Date.now();
      for (const connection of connections) {
        if (now - connection.lastReceivedAt < idleTimeoutMs) continue;
        log({ event: "socket_idle_timeout", idle_ms: now - connection.lastReceivedAt });
        connection.close(1000, "idle timeout");
        connections.delete(connection);
        upgrading.get(connection)?.();
      }
    }, Math.max(50, Math.min(5_000, Math.floor(idleTimeoutMs / 4))))
    : undefined;
  if (idleSweep !== undefined) Deno.unrefTimer(idleSweep);
  const partitionJanitor = startPartitionJanitor(sql, log);

  function json(status: number, body: unknown): Response {
    return Response.json(body, { status });
  }

  /**
   * Requests answered without their body being read, whose connection Cowboy would close after the
   * answer (rest.ts unreadBody): handle() sends their answer with closingAnswer.
   */
  const closeAfterAnswer = new WeakSet<Request>();

  /** A body Realtime answers without reading, left as Cowboy leaves it (rest.ts unreadBody). */
  async function leaveUnread(req: Request): Promise<void> {
    if (await unreadBody(req) === "close") closeAfterAnswer.add(req);
  }

  /**
   * A refused socket's answer, as on `supabase start`, whose gateway (supabase/cli's kong.yml) has no
   * key-auth on the realtime-v1-ws route and leaves the refusal to Realtime: user_socket.ex
   * connect_error/1 sleeps CONNECT_ERROR_BACKOFF_MS before connect/3 returns {:error, reason}, and
   * Phoenix's WebSocket transport then answers the upgrade with its default error handler
   * (Phoenix.Transports.WebSocket.handle_error/2: 403, empty body; RealtimeWeb.Endpoint sets no
   * other). The reason goes to the log only. The wait does not watch the request's signal: a client
   * that leaves meanwhile costs one timer, and its 403 goes nowhere; nothing is upgraded, so nothing is
   * left half-open as a socket upgraded for a client gone would be (see upgrade()).
   */
  async function refuseConnect(reason: string): Promise<Response> {
    const ms = connectErrorBackoffMs;
    if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
    log({ event: "socket_refused", status: 403, reason, waited_ms: ms });
    return new Response(null, { status: 403 });
  }

  /**
   * The socket's route, as Phoenix's WebSocket transport serves it on Realtime (upgrade.ts): a method
   * other than GET is 400 with an empty body at once; a GET goes through the socket's connect (the
   * serializer for `vsn`, the token) first, and only a request it accepts is checked for being a
   * WebSocket upgrade, 400 with WebSockAdapter's reason as the body when it is none.
   */
  async function upgrade(req: Request, url: URL): Promise<Response> {
    if (req.method !== "GET") {
      await leaveUnread(req);
      return new Response(null, { status: 400 });
    }
    const vsn = (url.searchParams.get("vsn") ?? "1.0.0") as Vsn;
    // Phoenix negotiates the serializer before the socket's connect/3 runs (Phoenix.Socket.__connect__
    // returns :error): refused at once, 403 with an empty body, without the connect-error wait.
    if (!SUPPORTED_VSNS.includes(vsn)) {
      log({ event: "socket_refused", status: 403, reason: `unsupported protocol version ${vsn}` });
      return new Response(null, { status: 403 });
    }
    // user_socket.ex access_token/2: the x-api-key header, else the apikey query parameter (not an
    // apikey header: Realtime sees only the x-* headers of the request).
    const apikey = req.headers.get("x-api-key") ?? url.searchParams.get("apikey");
    if (!apikey) return await refuseConnect("no apikey");
    const verified = await verifier.verify(apikey);
    if (!verified.ok) return await refuseConnect(`${verified.failure.code}: ${verified.failure.message}`);
    const notAnUpgrade = upgradeRefusal(req.headers);
    if (notAnUpgrade !== null) {
      log({ event: "socket_not_upgraded", status: 400, reason: notAnUpgrade });
      // A byte body: Plug's send_resp sets no Content-Type (a string body would be text/plain here).
      return new Response(new TextEncoder().encode(notAnUpgrade), { status: 400 });
    }
    if (closed) return json(503, { message: "Realtime is shutting down" });
    // A client that left while the connect was being checked is not upgraded. Deno.serve (2.9) would
    // neither complete nor fail the upgrade of such a request: its socket stays CONNECTING without an event,
    // and the server keeps its end of the TCP connection open (CLOSE_WAIT) until the process ends, which
    // also holds Deno.serve's graceful shutdown. Nothing is sent: the client is gone. The check itself
    // waits for nothing (auth.ts computes the HMAC at once, and the project's keys are looked up), so no
    // turn of the event loop passes between the request's arrival and the upgrade in which the client could
    // leave: Deno sets the signal a turn after it has seen a client go, which a wait for WebCrypto here used
    // to let pass unseen. The signal still catches a client gone before the handler ran. deno.json turns
    // off Deno.serve's legacy abort mode, in which a signal that was read also aborted after a delivered
    // answer and Deno printed a warning about it once per process (realtime-signal-mode.test.ts).
    if (req.signal.aborted) {
      log({ event: "socket_client_left", during: "connect" });
      return new Response(null, { status: 499 });
    }
    const headers = xHeaders(req); // the request is consumed by the upgrade
    let upgraded: Deno.WebSocketUpgrade;
    try {
      upgraded = Deno.upgradeWebSocket(req);
    } catch (error) {
      // Deno reads the client's own Connection header, which Kong replaces (upgrade.ts): an upgrade
      // whose Connection lacks `upgrade` is taken on `supabase start` and cannot be here (README).
      if (!(error instanceof TypeError)) throw error;
      log({ event: "socket_not_upgraded", status: 400, reason: error.message });
      return new Response(new TextEncoder().encode(error.message), { status: 400 });
    }
    const { socket, response } = upgraded;
    const lowered = Number(url.searchParams.get(LOWER_JOIN_ERROR_BACKOFF_PARAM) ?? NaN);
    const connection = new Connection(socket, vsn, apikey, {
      ...deps,
      channelErrorBackoffMs: lowered >= 0 ? Math.min(lowered, channelErrorBackoffMs) : channelErrorBackoffMs,
    }, headers);
    connections.add(connection);
    releaseUnopened(socket, connection, req.signal);
    return response;
  }

  /**
   * Watches a socket until its upgrade completes, and lets its Connection go if it never does. Deno.serve
   * (2.9) opens the socket once it has sent the 101; for a client gone before that (after the connect's
   * checks, which no longer wait for anything, but before Deno has written the answer) it may neither open
   * nor close it: the socket stays CONNECTING without an event, and the server keeps its end of the TCP
   * connection (CLOSE_WAIT) until the process ends. Its Connection was kept with it: counted in stats(), in
   * the set the idle sweep goes through (with idleTimeoutMs 0, for good), and held by the socket's handlers,
   * so that a close the endpoint asked for (c20920c: sent when the socket opens) never went out and nothing
   * of it was released. Now it is let go (logged `socket_upgrade_abandoned`) when Deno fails the upgrade (an
   * error while CONNECTING), when the request's signal says the client left, or at the latest
   * upgradeTimeoutMs after the upgrade (with 0 or Infinity, no bound): no longer counted, its handlers taken
   * off the socket (what Deno keeps of such a socket holds nothing of the endpoint's but a close for an open
   * that may still come: Connection.close), no timer left. The token cache keeps the socket's key as it keeps
   * any other (auth.ts: bounded, least recently used first out); the socket has joined no topic.
   */
  function releaseUnopened(socket: WebSocket, connection: Connection, signal: AbortSignal): void {
    // Every listener below is taken off the socket and the signal once the watch ends: nothing they hold
    // (the Connection) stays reachable from a socket or request Deno keeps.
    const watch = new AbortController();
    const lifetime = new AbortController();
    socket.addEventListener("close", () => connections.delete(connection), { signal: lifetime.signal });
    const stopWatching = () => {
      upgrading.delete(connection);
      clearTimeout(deadline);
      watch.abort();
    };
    // Once the Connection is out of the set, its close listener has nothing left to do either.
    const forget = () => {
      stopWatching();
      lifetime.abort();
    };
    const release = (reason: string) => {
      if (!upgrading.has(connection)) return;
      forget();
      if (!connections.delete(connection)) return; // closed meanwhile (the idle sweep, the endpoint's close)
      log({ event: "socket_upgrade_abandoned", reason });
      connection.close(1001, "upgrade not completed");
    };
    // No bound (0 or Infinity): only the client's leaving or a failed upgrade lets it go.
    const bounded = upgradeTimeoutMs > 0 && upgradeTimeoutMs !== Infinity;
    const deadline = bounded
      ? setTimeout(
        () => release(`still connecting ${upgradeTimeoutMs} ms after the upgrade`),
        upgradeTimeoutMs,
      )
      : undefined;
    if (deadline !== undefined) Deno.unrefTimer(deadline);
    upgrading.set(connection, forget);
    socket.addEventListener("open", stopWatching, { signal: watch.signal });
    socket.addEventListener("close", stopWatching, { signal: watch.signal });
    socket.addEventListener("error", () => release("the upgrade failed"), { signal: watch.signal });
    signal.addEventListener("abort", () => release("the client left"), { signal: watch.signal });
  }

  /**
   * The token of a REST broadcast request, verified, as RealtimeWeb.AuthTenant (lib/realtime_web/plugs/
   * auth_tenant.ex) takes it: the `Authorization` header's token when its scheme is `bearer` (any case),
   * else the `apikey` header (not an `apikey` query parameter); a request with neither, or whose token
   * fails, is 401 `{"message":"Unauthorized"}` whatever the reason. No gateway checks the apikey first:
   * `supabase start`'s Kong has no key-auth on any route (supabase/cli internal/start/templates/kong.yml;
   * its KONG_PLUGINS are request-transformer and cors), so with a Bearer token the apikey is not read.
   */
  async function restClaims(req: Request): Promise<{ claims: JwtClaims } | { error: Response }> {
    const authorization = req.headers.get("authorization");
    let token: string | null = null;
    if (authorization) {
      // AuthTenant: `[bearer, token] = String.split(value, " ")`. A value that is not two words makes
      // that match fail (a crash, so no token); here it is the same 401 (bad input is a 4xx here).
      const parts = authorization.split(" ");
      if (parts.length === 2 && parts[0].toLowerCase() === "bearer") token = parts[1];
      else if (parts.length !== 2) return { error: json(401, { message: "Unauthorized" }) };
    }
    token ??= req.headers.get("apikey");
    if (token === null) {
      log({ event: "rest_unauthorized", reason: "no token" });
      return { error: json(401, { message: "Unauthorized" }) };
    }
    const verified = await verifier.verify(token);
    if (!verified.ok) {
      log({ event: "rest_unauthorized", reason: `${verified.failure.code}: ${verified.failure.message}` });
      return { error: json(401, { message: "Unauthorized" }) };
    }
    return { claims: verified.claims };
  }

  /**
   * A REST send's write probe: true, false, or how Supabase's single route (SingleBroadcast's
   * handle_private_message, rendered by RealtimeWeb.ErrorView as {message}) answers a probe that
   * failed. The batch route skips the message whatever the failure (BatchBroadcast sends only on
   * write: true).
   */
  async function writeAllowed(
    topic: string,
    claims: JwtClaims,
    req: Request,
  ): Promise<boolean | { status: number; message: string }> {
    try {
      return await canWrite(sql, { topic, claims, headers: xHeaders(req) });
    } catch (error) {
      if (error instanceof PolicyError) {
        log({ event: "rls_policy_error", topic, code: error.code, error: error.message });
        return { status: 422, message: "RLS policy error" };
      }
      log({ event: "policy_check_failed", topic, error: String(error) });
      switch (probeFailure(error)) {
        case "query_canceled":
          return { status: 422, message: "Query canceled" };
        case "missing_partition":
          return { status: 422, message: "Missing messages partition" };
        case "unable_to_connect_to_project":
          return { status: 422, message: "Tenant database unavailable" };
        default:
          return { status: 500, message: "Unable to authorize broadcast" };
      }
    }
  }

  /**
   * What Realtime's endpoint does to a request before its router (lib/realtime_web/endpoint.ex):
   * Plug.Parsers reads the body of a POST, PUT, PATCH or DELETE (elixir-plug/plug lib/plug/parsers.ex
   * `@methods`), whatever the route or token. A body that does not parse is Phoenix's 400, a longer one
   * than Plug.Parsers reads its 413 (not read past the limit), and one whose client stopped sending it
   * is ended (rest.ts bodyIdleTimeout); otherwise the parsed params, for the route.
   */
  async function parseBody(req: Request): Promise<Extract<BodyParams, { params: unknown }> | Response> {
    if (!["POST", "PUT", "PATCH", "DELETE"].includes(req.method)) {
      await leaveUnread(req);
      return { params: {} };
    }
    const body = await readBodyParams(req, bodyIdleTimeoutMs);
    if ("unread" in body && body.unread === "close") closeAfterAnswer.add(req);
    if ("idle" in body) {
      log({ event: "rest_body_idle_timeout", idle_ms: bodyIdleTimeoutMs });
      return bodyIdleTimeout();
    }
    if ("tooLarge" in body) return phoenixError(req, 413, "Request Entity Too Large");
    if ("parseError" in body) {
      log({ event: "rest_body_parse_error", error: body.parseError });
      return phoenixError(req, 400, "Bad Request");
    }
    return body;
  }

  /**
   * A route Realtime does not have (any method but POST on the broadcast routes, any other path under
   * /realtime/v1 but the socket's): Phoenix's router raises Phoenix.Router.NoRouteError (plug_status
   * 404), which the endpoint's RenderErrors renders with RealtimeWeb.ErrorView as the broadcast routes'
   * 400 is (phoenixError): the reason phrase `Not Found`, as text/html unless Accept asks for JSON. On
   * `supabase start` Kong sends /realtime/v1/api/* to Realtime's /api/* and the rest of /realtime/v1/* to
   * its /socket/* (supabase/cli internal/start/templates/kong.yml), where the endpoint serves only the
   * socket's transports; the body is parsed first (parseBody), as for every route.
   */
  async function noRoute(req: Request): Promise<Response> {
    const body = await parseBody(req);
    if (body instanceof Response) return body;
    return phoenixError(req, 404, "Not Found");
  }

  async function restBroadcast(req: Request, url: URL, route: BroadcastRoute): Promise<Response> {
    const body = await parseBody(req);
    if (body instanceof Response) return body;
    if (route.single) return await restSingle(req, url, route.single.topic, route.single.event, body);
    const auth = await restClaims(req);
    if ("error" in auth) return auth.error;
    // Supabase's BatchBroadcast changeset over the body params (rest.ts castBatch): a body that is not
    // JSON (another Content-Type, or none) leaves them empty, so messages "can't be blank".
    const batch = castBatch(body.params);
    if ("errors" in batch) return json(422, { errors: batch.errors });
    const allowed = new Map<string, boolean>();
    for (const m of batch.messages) {
      if (m.private) {
        // Supabase skips private messages the caller may not send and still answers 202.
        if (!allowed.has(m.topic)) {
          allowed.set(m.topic, (await writeAllowed(m.topic, auth.claims, req)) === true);
        }
        if (!allowed.get(m.topic)) {
          log({ event: "rest_broadcast_denied", topic: m.topic, sub: auth.claims.sub });
          continue;
        }
      }
      // BatchBroadcast sends a Phoenix.Socket.Broadcast with a map payload, which RealtimeWeb's V2
      // serializer writes as a JSON text frame (lib/realtime_web/socket/v2_serializer.ex), with
      // `meta: {id}` when the message had an id.
      hub.relay(
        subscriptionKey(m.private, m.topic),
        {
          fullTopic: `realtime:${m.topic}`,
          event: m.event,
          payload: m.payload,
          ...(m.id !== undefined ? { meta: { id: m.id } } : {}),
        },
        undefined,
        "json",
      );
    }
    return new Response(null, { status: 202 });
  }

  /**
   * POST /api/broadcast/:topic/events/:event, as lib/realtime_web/router.ex's broadcast_single
   * pipeline and BroadcastSingleController take it: the path decoded by Phoenix's router, then
   * ValidateBroadcastContentType (415), then the token, then SingleBroadcast's changeset (topic and
   * event required) and its write probe for a private topic.
   */
  async function restSingle(
    req: Request,
    url: URL,
    rawTopic: string,
    rawEvent: string,
    body: { params: Record<string, unknown>; binary?: Uint8Array },
  ): Promise<Response> {
    let topic: string, event: string;
    try {
      const utf8 = new TextDecoder("utf-8", { fatal: true });
      topic = utf8.decode(elixirUriDecode(rawTopic));
      event = utf8.decode(elixirUriDecode(rawEvent));
    } catch {
      // Phoenix passes such bytes on; what Supabase then answers is not established (README.md).
      return json(400, { error: "topic and event must be valid UTF-8 once percent-decoded" });
    }
    const refused = unsupportedMediaType(req);
    if (refused) return refused;
    const auth = await restClaims(req);
    if ("error" in auth) return auth.error;
    // SingleBroadcast.validate_message (lib/realtime/tenants/single_broadcast.ex): topic and event are
    // cast and required, so an empty or whitespace-only one is the changeset's 422.
    const blank: Record<string, string[]> = {};
    if (elixirBlank(topic)) blank.topic = ["can't be blank"];
    if (elixirBlank(event)) blank.event = ["can't be blank"];
    if (Object.keys(blank).length > 0) return json(422, { errors: blank });
    // BroadcastSingleController's parse_private(params["private"]): Phoenix's params are the query
    // params (Plug.Conn.Query: a repeated key's last value) with the body params merged over them
    // (Plug.Parsers), so a JSON body's "private" decides, then the query's last "private"; "true" or
    // true is private, anything else public.
    const privateParam = Object.hasOwn(body.params, "private")
      ? body.params.private
      : url.searchParams.getAll("private").at(-1);
    const isPrivate = privateParam === "true" || privateParam === true;
    // BroadcastSingleController: the octet-stream body as bytes, otherwise the body params (a JSON
    // object, `{"_json": value}` for another JSON value, `{}` without a JSON body).
    const payload: unknown = body.binary ?? body.params;
    if (isPrivate) {
      const allowed = await writeAllowed(topic, auth.claims, req);
      // SingleBroadcast's {:error, :forbidden, "Unauthorized"}, rendered by the FallbackController's
      // ErrorView as {"message"} (realtime-js's httpSend() reads `error`, then `message`).
      if (allowed === false) return json(403, { message: "Unauthorized" });
      if (allowed !== true) return json(allowed.status, { message: allowed.message });
    }
    hub.relay(subscriptionKey(isPrivate, topic), { fullTopic: `realtime:${topic}`, event, payload });
    return new Response(null, { status: 202 });
  }

  async function route(req: Request, url: URL): Promise<Response> {
    if (url.pathname === "/realtime/v1/websocket" || url.pathname === "/realtime/v1/websocket/") {
      return await upgrade(req, url);
    }
    if (url.pathname.startsWith("/realtime/v1/api/")) {
      // Realtime's own answers only: the CORS of these routes is the gateway's (Kong's cors plugin on
      // realtime-v1-rest: local/api/kongCors.ts, applied by the API server and by startRealtimeServer),
      // so an OPTIONS that is no preflight reaches Realtime, whose router has no OPTIONS route (404).
      const route = req.method === "POST" ? broadcastRoute(url.pathname) : null;
      return route ? await restBroadcast(req, url, route) : await noRoute(req);
    }
    return await noRoute(req);
  }

  return {
    /**
     * `url`: the URL whose path Realtime reads, req.url's unless given (the API server gives the path Kong
     * routed on, kongRouter.ts: the request itself stays the one Deno.serve gave, which alone upgrades).
     */
    async handle(req: Request, _info?: Deno.ServeHandlerInfo, url = new URL(req.url)): Promise<Response> {
      const response = await route(req, url);
      return closeAfterAnswer.has(req) ? closingAnswer(response) : response;
    },
    stats(): RealtimeEndpointStats {
      let channels = 0;
      for (const c of connections) channels += c.channels.size;
      return {
        connections: connections.size,
        upgrading: upgrading.size,
        channels,
        subscribers: hub.subscriberCount(),
        ...hub.stats,
      };
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      clearInterval(idleSweep);
      partitionJanitor.stop();
      for (const connection of connections) connection.close();
      connections.clear();
      for (const forget of [...upgrading.values()]) forget();
      await hub.close();
      await sql.end({ timeout: 2 });
    },
  };
}

/** Which of Realtime's two REST broadcast routes a path is: the batch, or the single one's segments. */
interface BroadcastRoute {
  single?: { topic: string; event: string };
}

/**
 * lib/realtime_web/router.ex's `post "/broadcast"` and `post "/broadcast/:topic/events/:event"` under
 * its /api scope, which Kong serves at /realtime/v1/api. Phoenix matches the path's segments as Plug
 * splits them, without the empty ones (`/broadcast/` is `/broadcast`); null for any other path.
 */
function broadcastRoute(pathname: string): BroadcastRoute | null {
  const prefix = "/realtime/v1/api/";
  if (!pathname.startsWith(prefix)) return null;
  const segments = pathname.slice(prefix.length).split("/").filter((segment) => segment !== "");
  if (segments.length === 1 && segments[0] === "broadcast") return {};
  if (segments.length === 4 && segments[0] === "broadcast" && segments[2] === "events") {
    return { single: { topic: segments[1], event: segments[3] } };
  }
  return null;
}

/**
 * What Supabase hands policies as `request.headers`: the socket's `x-*` request headers (Phoenix's
 * `x_headers` connect info), never the token-bearing ones.
 */
function xHeaders(req: Request): Record<string, string> {
  const headers: Record<string, string> = {};
  for (const [name, value] of req.headers) if (name.startsWith("x-")) headers[name] = value;
  return headers;
}

/** Silent unless READSYNC_REALTIME_LOG=1: then one JSON line per endpoint event on stderr. */
function defaultLog(): (fields: Record<string, unknown>) => void {
  let enabled = false;
  try {
    enabled = Deno.env.get("READSYNC_REALTIME_LOG") === "1";
  } catch { /* no env permission: stay silent */ }
  if (!enabled) return () => {};
  return (fields) =>
    console.error(JSON.stringify({ ts: new Date().toISOString(), component: "local-realtime", ...fields }));
}

export interface RealtimeServer {
  url: string;
  port: number;
  endpoint: RealtimeEndpoint;
  close(): Promise<void>;
}

/**
 * A Realtime endpoint on its own port (tests that kill and restart Realtime while the rest of the
 * stack keeps running; benchmarks). Serves the same /realtime/v1 routes as the API server.
 */
export async function startRealtimeServer(
  ctx: EndpointContext & { port?: number; hostname?: string },
  options: RealtimeEndpointOptions = {},
): Promise<RealtimeServer> {
  const endpoint = await createRealtimeEndpoint(ctx, options);
  const hostname = ctx.hostname ?? "127.0.0.1";
  let server: Deno.HttpServer<Deno.NetAddr>;
  try {
    server = Deno.serve(
      { hostname, port: ctx.port ?? 0, onListen: () => {}, onError: quietAboutClosingAnswers },
      // Kong's routing and cors plugin in front, as the API server has them: the endpoint is Realtime's own.
      (req, info) => {
        const refused = refusedHost(req);
        if (refused) return refused;
        const { pathname, url } = kongRouted(req);
        return withKongCors(req, pathname, () => endpoint.handle(req, info, url));
      },
    );
  } catch (error) {
    await endpoint.close();
    throw error;
  }
  const port = server.addr.port;
  return {
    url: httpUrl(server.addr.hostname, port),
    port,
    endpoint,
    async close() {
      await endpoint.close();
      await server.shutdown();
    },
  };
}

/**
 * The URL of a server listening on `hostname` (the address it bound) and `port`: an IPv6 address in
 * brackets (RFC 3986 IP-literal), so `::1` is `http://[::1]:port`, not `http://::1:port`, which no URL
 * parser takes.
 */
export function httpUrl(hostname: string, port: number): string {
  return `http://${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
}

/**
 * Deno.serve's default onError (the error on stderr, a 500), but for the failure closingAnswer gives
 * an answer on purpose to close its connection (rest.ts), which is no error: not printed. Deno calls it
 * for that failure after the answer has gone, so its 500 is never sent then.
 */
export function quietAboutClosingAnswers(error: unknown): Response {
  if (!(error instanceof ConnectionClosedAfterAnswer)) console.error(error);
  return new Response("Internal Server Error", { status: 500 });
}
