// The progress function's database pool (server.ts makes it): postgres.js on the database URL, whose every
// connection attempt goes through a connector of the function's own (postgres.js's `socket` option, in its
// source, not its types), which paces the attempts while the server refuses them and opens nothing once the
// pool is ended.
//
// Why: postgres.js 3.4.9 keeps a connection's current query when its socket closes under it (connection.js
// closed() leaves `query` set; only a ReadyForQuery clears it). On that connection the next BEGIN reopens, a
// startup the server refuses with an ErrorResponse (53300 too many connections, a role's or database's
// connection limit; 57P03 starting up) is kept as that stale query's error instead of failing the BEGIN, and
// the close that follows reconnects at once (`initial` still set, the delay of the close before long past):
// a TCP connect, authentication and a refused startup after another, without a pause, until the server takes
// a startup or the pool ends, on a database already in trouble. And end() does not stop it: the connection
// waits for its BEGIN, and postgres.js's connect() clears `terminated`, so a reconnect timer set before the
// pool's end({ timeout }) destroyed it opened a socket after end() had resolved (an idle connection held
// until its idle_timeout when the server took it). Here every attempt first takes its turn at the pacing
// (ConnectionPacing: free for the pool's first attempts, then spaced by a doubling delay up to 4 s until a
// startup completes), and an attempt once the pool is ended opens no socket (postgres.js then fails the query
// the connection opened for, CONNECTION_ENDED, a 503).

import net from "node:net";
import postgres from "postgres";

/** The first delay between two attempts once the free ones are spent; it doubles with each attempt after. */
export const PACED_FIRST_DELAY_MS = 100;

/**
 * The longest delay between two attempts (before its jitter: half to all of it is waited). Below the store's
 * beginTimeoutMs (10 s) less the pool's connect_timeout (5 s): a call that takes its turn while the server
 * refuses startups gets its attempt, and the refusal's 503, before it would give up waiting for its BEGIN.
 */
export const PACED_MAX_DELAY_MS = 4_000;

/**
 * The pacing of the connection attempts of one database target (server.ts keeps one per URL and pool size,
 * across the pools it makes and replaces for it, so a pool made anew during an outage does not start over
 * with attempts at once). `free` attempts since a startup last completed go at once (a pool opening all its
 * connections, as after an idle spell or a database restart); each one after waits until a delay has passed
 * since the attempt before it: PACED_FIRST_DELAY_MS, doubled for each further attempt, at most
 * PACED_MAX_DELAY_MS, each times 0.5 to 1 (jitter, as postgres.js's own backoff, so that isolates that met
 * the same outage do not come back in step). A startup that completes sets the count back to 0 and lets the
 * attempts waiting their turn go at once (they count as the first ones since it): the server takes startups
 * again, and a pool's connections reopening (up to 4 s a turn, one after the other) must not keep their
 * calls' BEGINs waiting, nor space a free attempt after them.
 */
export interface ConnectionPacing {
  /** Resolves once an attempt may be made; rejects when `ended` aborts first. */
  turn(ended: AbortSignal): Promise<void>;
  /** A connection of the target completed its startup: the next attempts go at once again. */
  startupCompleted(): void;
}

export function connectionPacing(free: number): ConnectionPacing {
  let sinceStartup = 0;
  let startups = 0;
  let lastAt = -Infinity;
  // The turns waiting for their time, each with the function that lets it go at once (startupCompleted).
  const waiting = new Set<() => void>();
  return {
    startupCompleted() {
      sinceStartup = 0;
      startups++;
      lastAt = Math.min(lastAt, performance.now());
      for (const goNow of [...waiting]) goNow();
    },
    async turn(ended) {
      if (ended.aborted) throw new Error("ended");
      const n = sinceStartup++;
      const now = performance.now();
      const delay = n < free
        ? 0
        : Math.min(PACED_FIRST_DELAY_MS * 2 ** (n - free), PACED_MAX_DELAY_MS) * (0.5 + Math.random() / 2);
      const before = { lastAt, startups };
      const at = Math.max(now, lastAt + delay);
      lastAt = at;
      if (at > now) {
        await new Promise<void>((resolve, reject) => {
          // A turn its pool's end stopped makes no attempt: it gives its place back (the attempt after it,
          // a replacement pool's, is spaced from the last one made, not from this one's time to come).
          const stop = () => {
            clearTimeout(timer);
            waiting.delete(goNow);
            if (lastAt === at) lastAt = before.lastAt;
            if (startups === before.startups && sinceStartup > 0) sinceStartup--;
            reject(new Error("ended"));
          };
          const go = () => {
            clearTimeout(timer);
            waiting.delete(goNow);
            ended.removeEventListener("abort", stop);
            resolve();
          };
          // A startup completed while this turn waited: it is made now, one of the free attempts after it.
          const goNow = () => {
            sinceStartup++;
            lastAt = Math.max(lastAt, performance.now());
            go();
          };
          const timer = setTimeout(go, at - now);
          waiting.add(goNow);
          ended.addEventListener("abort", stop, { once: true });
        });
      }
    },
  };
}

/** A pool made by createProgressPool: its postgres.js `sql`, and end(), which ends it for good. */
export interface ProgressPool {
  readonly sql: postgres.Sql;
  /**
   * Ends the pool: no connection of it opens a socket from now on (an attempt waiting for its turn at the
   * pacing stops waiting), so the query a connection was opening for, a BEGIN, fails (CONNECTION_ENDED)
   * unsent; its idle connections close now, and a connection with a transaction under way closes once that
   * has ended as it would (its COMMIT or ROLLBACK; its cancel requests, were its call's client to leave, are
   * still sent); a transaction asked of it from now on (sql.begin, as the store's calls make them) fails at
   * once (CONNECTION_ENDED, a 503), as on a pool postgres.js has ended. The end finishes once no socket of
   * the pool is open (nothing can be under way on a pool without one), or once `timeoutS` seconds have
   * passed: then every connection is destroyed and its socket closed (a statement still running fails, its
   * transaction's begin() with CONNECTION_CLOSED: a COMMIT already sent may have committed, a 503 that may
   * have stored the write) and the queries still queued fail (CONNECTION_DESTROYED), none of them sent
   * (before that, a connection of the pool that closes takes one to reopen for, and fails it:
   * CONNECTION_ENDED, as a connection reopening for its BEGIN does: the store sends such a BEGIN to the pool
   * that replaced this one, store.ts endedUnsent). Only BEGINs asked before end() can be queued so: server.ts
   * hands the pool's `sql` to its store alone, which asks nothing of it but begin() (every statement goes on
   * its transaction's connection, a cancel request on a connection of its own), and begin() fails at once
   * from end() on; postgres.js's own query (the array types) runs on the connection that opens, never
   * queued. A query asked of `sql` directly after end() (no code of the function asks one) would be queued
   * so too, until the end finishes.
   * Called again with a shorter time than the one left, the end finishes by then instead (server.ts's close()
   * gives a pool replaced earlier its own 5 s, not what is left of the replaced pool's 10 s). Resolves once
   * the end has finished: no socket of the pool is open, nor opened again.
   */
  end(timeoutS: number): Promise<void>;
  /** Sockets the pool has open now (its connections' and its cancel requests'): for tests. */
  readonly openSockets: number;
}

/** The error of a connection attempt of an ended pool: postgres.js's own code for a query on one (a 503). */
function poolEnded(): Error {
  return Object.assign(new Error("the database pool was ended: no connection is opened for it"), {
    code: "CONNECTION_ENDED",
  });
}

/**
 * postgres.js's pool on `url` with `options`, its connection attempts paced by `pacing` (see above). Cancel
 * requests (store.ts sends them on connections of their own, through a second postgres() made from this
 * pool's options, cancellerApart) go through the same connector: never paced nor counted (a cancel request's
 * connection completes no startup, and a cancel must not wait behind the pool's failures: postgres.js hands
 * the connector the options object it was made with, the pool's own for the pool's connections), and sent
 * until the pool's end has finished, not only until end() was called: a transaction still under way on an
 * ended pool (a pool replaced, server.ts, gives its transactions 10 s) is cancelled when its call's client
 * leaves, as on the pool that replaced it. Before, the request was refused once end() was called, and the
 * statement ran on to its timeout.
 */
export function createProgressPool(
  url: string,
  options: postgres.Options<Record<string, postgres.PostgresType>>,
  pacing: ConnectionPacing,
): ProgressPool {
  const ended = new AbortController();
  const sockets = new Set<net.Socket>();
  // Once the end has finished (end()): no socket at all is opened for the pool, a cancel request's neither.
  let finished = false;
  let nextHost = 0;
  // Set once the pool can tell the pacing of its startups (hearStartups): without that, no attempt waits.
  let paced = false;
  const open = async (parsed: { host: string[]; port: number[]; path?: string | false }) => {
    const ownConnection = parsed === poolOptions;
    if (paced && ownConnection) await pacing.turn(ended.signal).catch(() => {});
    if (finished || (ownConnection && ended.signal.aborted)) throw poolEnded();
    // As postgres.js connects when it makes the socket itself (connection.js connect()): a Unix socket's
    // path, or the next of the URL's hosts in turn. postgres.js writes its startup at once; the socket keeps
    // that until it has connected, and an error connecting reaches postgres.js as its own socket's would.
    const index = nextHost++ % parsed.host.length;
    const socket = parsed.path
      ? net.connect(parsed.path)
      : net.connect(parsed.port[index], parsed.host[index]);
    // Read by postgres.js's errors (host:port) and TLS (the server name).
    Object.assign(socket, { host: parsed.host[index], port: parsed.port[index] });
    sockets.add(socket);
    socket.once("close", () => {
      sockets.delete(socket);
      if (sockets.size === 0) { for (const resolve of lastClosed.splice(0)) resolve(); }
    });
    return socket;
  };
  const sql = postgres(url, {
    ...options,
    socket: open,
  } as unknown as postgres.Options<Record<string, postgres.PostgresType>>);
  const poolOptions = (sql as unknown as { options?: unknown }).options;
  paced = hearStartups(sql, pacing);

  // Told when the pool's last open socket closes (its end waits for that).
  const lastClosed: (() => void)[] = [];
  const noSocketOpen = () =>
    sockets.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => lastClosed.push(resolve));
  // The end (end()), once begun, and what finishes it: the last socket's close, or `deadline`.
  let ending: Promise<void> | undefined;
  let finish: (() => void) | undefined;
  let deadlineAt = Infinity;
  let deadline: ReturnType<typeof setTimeout> | undefined;
  const finishWithin = (timeoutS: number) => {
    const at = performance.now() + timeoutS * 1000;
    if (at >= deadlineAt) return;
    deadlineAt = at;
    clearTimeout(deadline);
    deadline = setTimeout(() => finish?.(), Math.max(0, timeoutS * 1000));
  };
  return {
    sql,
    get openSockets() {
      return sockets.size;
    },
    end(timeoutS) {
      if (ending) {
        if (!finished) finishWithin(timeoutS);
        return ending;
      }
      ended.abort();
      // A transaction asked of the pool from now on fails at once, unsent, as on a pool postgres.js has ended
      // (its handler refuses queries only once its end() was called, which here comes when the end finishes).
      (sql as { begin: unknown }).begin = () => Promise.reject(poolEnded());
      const due = new Promise<void>((resolve) => finish = resolve);
      finishWithin(timeoutS);
      ending = (async () => {
        // postgres.js's close(): each connection ends as its end({ timeout }) ends it (idle ones now, one
        // with a transaction under way once that has ended), but with no timeout of its own: postgres.js's
        // end() destroys its connections only at a timeout set when it is called, once, which a later,
        // shorter end() here could not bring forward. A connection whose lost socket left a query kept (see
        // above) never ends so, and has no socket: the finish destroys it. (close() is not in postgres.js's
        // types; without it, another version, the end waits for its finish.)
        const close = (sql as unknown as { close?: unknown }).close;
        if (typeof close === "function") void Promise.resolve(close()).catch(() => {});
        await Promise.race([due, noSocketOpen()]);
        clearTimeout(deadline);
        finished = true;
        // Destroys what is left (timeout 0): a statement still running fails, and so do the queries still
        // queued, unsent; postgres.js refuses queries from then on.
        await sql.end({ timeout: 0 });
        // Every socket left is closed now: one still connecting (an attempt on its way when end() was
        // called), which postgres.js leaves to the server, and one whose statement was destroyed, which
        // postgres.js only ends (its Terminate written): the server closes that one once it reads it, after
        // the statement (a lock wait, up to the statement timeout), and a server out of reach never does, and
        // the transaction's begin() rejects only at the close (its connection's onclose). Before, the end, so
        // close(), waited for that, and the call with it.
        for (const socket of sockets) socket.destroy();
        await noSocketOpen();
      })();
      return ending;
    },
  };
}

/**
 * Tells `pacing` when the server takes a startup of a connection of `sql`, on every path postgres.js 3.4.9
 * takes one: the server then reports its parameters (ParameterStatus, before its ReadyForQuery), and
 * postgres.js compares each with the value it holds, `options.parameters[name]` (connection.js
 * ParameterStatus, whatever the connection's state), so an accessor on `server_version`, which every startup
 * reports (PostgreSQL, and PgBouncer or Supavisor in front of it) and nothing reports again, hears each one.
 * A startup the server refuses (an ErrorResponse) reports none. Nothing else reads that value: the pool is
 * its store's alone (server.ts), and the store never reads the server's parameters.
 *
 * Before, the pacing heard the reset of the count the pool's connections share, `options.shared.retries`, to
 * 0 at the startup's ReadyForQuery, which postgres.js skips for a connection whose lost socket left an error
 * kept (57P01 from a restart or pg_terminate_backend, or a refusal: 57P03 starting up, 53300): it fails the
 * query it opened for with that error and clears `initial` before the reset. Those are the connections
 * postgres.js reopens by itself, again and again, while a database restarts, so the startups that ended an
 * outage went unheard: the count stayed high, and every attempt after them waited its paced turn, one after
 * the other (up to 2-4 s each: a pool's connections could keep its calls' BEGINs waiting until they gave up
 * and replaced the pool, the server back). Internals of the version pinned in deno.json; were they gone
 * (another version), false: the attempts are not paced (never told of a startup, the pacing would space
 * every attempt after the free ones for good), and tests/functions/progress_pool.test.ts fails.
 */
function hearStartups(sql: postgres.Sql, pacing: ConnectionPacing): boolean {
  const parameters = (sql as unknown as { options?: { parameters?: unknown } }).options?.parameters;
  if (!parameters || typeof parameters !== "object" || "server_version" in parameters) return false;
  let serverVersion: unknown;
  // Not enumerable: a copy or a listing of the parameters (a log line) reads it without a startup.
  Object.defineProperty(parameters, "server_version", {
    enumerable: false,
    configurable: true,
    get: () => {
      pacing.startupCompleted();
      return serverVersion;
    },
    set: (value: unknown) => {
      serverVersion = value;
    },
  });
  return true;
}
