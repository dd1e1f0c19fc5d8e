// Database access of the progress API: postgres.js on SUPABASE_DB_URL, one transaction per request
// that first switches to the `authenticated` role and installs the verified JWT claims
// (request.jwt.claims), exactly as PostgREST does, clearing the legacy per-claim settings that
// auth.uid() and its siblings would prefer. From then on auth.uid() is the caller and RLS
// decides what the SQL functions of migration 20261120090200_progress_writes.sql may touch.
//
// Errors leave this module as HttpError: bad values the database rejects -> 422, the database down,
// overloaded or too slow -> 503, a transaction not begun in time -> BeginTimeoutError (503), a call
// cancelled by its signal -> CallCancelledError (503), everything else -> 500 (a bug, logged by the handler).

import { setImmediate } from "node:timers";
import postgres from "postgres";
import type { JwtClaims } from "../auth/jwt.ts";
import { HttpError } from "../http/errors.ts";
import { checkNumberOption, MAX_TIMER_MS, type NumberRule } from "../options/checkOptions.ts";
import { microsecondIso } from "./instant.ts";
import type { ValidProgressWrite } from "./schemas.ts";
import type { ChangesResponse, ConflictKind, Progress, WriteResult } from "./types.ts";

export interface ListQuery {
  limit: number;
  before?: { updated_at: string; series_id: string };
  includeCleared: boolean;
}

export interface ChangesQuery {
  cursor: string;
  limit: number;
}

/**
 * The database's clock as a call read it: `ms` (epoch milliseconds) is set once the call's
 * transaction has begun, read in the statement that sets the role and claims (no statement or
 * round trip of its own), and stays set when the call then fails. The handler dates its answer with
 * it (X-Server-Time): the database judges a write's date (the 5 s tolerance, now() stamps) by its own
 * clock, which on a hosted project is another machine's than the function's.
 */
export interface DatabaseClock {
  ms?: number;
}

/**
 * What the HTTP handler needs from storage; every call acts as the user of `claims` and fills in `clock`
 * (when given) with the database's clock once it reached the database. `signal` (the request's: it aborts
 * when the client leaves) ends a call early when it aborts before the call began, while it waits for a pooled
 * connection, between two of its statements, or while one runs and the database acts on the cancel request:
 * the call then rejects with CallCancelledError, its transaction rolled back, and nothing of it is stored.
 * Not every abort before COMMIT does. The call commits, and answers as if its signal had not aborted, when the
 * signal aborts once its last statement has answered (no request is sent), or while that statement runs and
 * the database does not act on the request (refused, or reaching the backend between two messages of the
 * statement: sendCancel), so that it runs on and answers; an earlier statement that so runs on is followed by
 * no other, and the call is cancelled then.
 *
 * Until its transaction has begun (a pooled connection opened for it and its BEGIN answered) a call waits on
 * postgres.js alone, and stops waiting when its signal aborts (CallCancelledError) or when it has waited
 * beginTimeoutMs since it took its turn (BeginTimeoutError): it gives its turn back and answers at once, and
 * nothing of it is ever sent (its BEGIN, answered later, is rolled back: beginWait).
 */
export interface ProgressStore {
  write(
    claims: JwtClaims,
    write: ValidProgressWrite,
    clock?: DatabaseClock,
    signal?: AbortSignal,
  ): Promise<WriteResult>;
  writeBatch(
    claims: JwtClaims,
    writes: ValidProgressWrite[],
    clock?: DatabaseClock,
    signal?: AbortSignal,
  ): Promise<WriteResult[]>;
  get(
    claims: JwtClaims,
    seriesId: string,
    clock?: DatabaseClock,
    signal?: AbortSignal,
  ): Promise<Progress | null>;
  /** Up to `limit` rows (the handler asks for one more to know whether a next page exists). */
  list(claims: JwtClaims, query: ListQuery, clock?: DatabaseClock, signal?: AbortSignal): Promise<Progress[]>;
  changes(
    claims: JwtClaims,
    query: ChangesQuery,
    clock?: DatabaseClock,
    signal?: AbortSignal,
  ): Promise<ChangesResponse>;
}

/**
 * A store call given up because its signal aborted: the client left (the request's signal), or the
 * server that runs the function is closing (the local gateway's close()). The statement it was running
 * was cancelled in the database (or failed otherwise once the signal had aborted), or no further statement
 * was sent (the call still waited for a pooled connection and left the line, or for its transaction to
 * begin, or the signal aborted between two statements), and its transaction rolled back, so nothing of the
 * call is stored; its connection went back to the pool at once (for a call whose BEGIN postgres.js still
 * held, once that BEGIN is answered, then rolled back, or failed: beginWait). A 503 with Retry-After, as a
 * client still there (a closing server) may send it again; a client that left gets no answer. `reason` is
 * the signal's.
 */
export class CallCancelledError extends HttpError {
  readonly reason: unknown;

  constructor(reason: unknown, cause?: unknown) {
    super(
      503,
      "service_unavailable",
      "The request was cancelled before the database answered: nothing was stored",
      {
        headers: { "retry-after": "1" },
        cause: cause ?? reason,
      },
    );
    this.name = "CallCancelledError";
    this.reason = reason;
  }
}

/**
 * A store call whose transaction had not begun (a pooled connection opened for it and its BEGIN answered)
 * `timeoutMs` after the call took its turn at the pool's connections (PostgresStoreOptions.beginTimeoutMs),
 * or when its deadline signal aborted (PostgresStoreOptions.beginDeadline): nothing of it was sent but that
 * BEGIN, which is rolled back once answered (beginWait). A 503 with Retry-After, as for a database that
 * could not be reached. Its cause says how long it waited, or that its deadline passed.
 */
export class BeginTimeoutError extends HttpError {
  /** `timeoutMs`: beginTimeoutMs; undefined for a call whose beginDeadline signal aborted first. */
  constructor(timeoutMs: number | undefined) {
    super(
      503,
      "service_unavailable",
      "The database did not take the request in time: nothing was stored",
      {
        headers: { "retry-after": "1" },
        cause: new Error(
          `the call's transaction had not begun ${
            timeoutMs === undefined
              ? "when its begin deadline passed"
              : `${timeoutMs} ms after it took its turn`
          } (no pooled connection opened for it, or its BEGIN not answered)`,
        ),
      },
    );
    this.name = "BeginTimeoutError";
  }
}

/**
 * The wait of a call for its transaction to begin, from its turn until begin() runs the transaction's
 * function (`stop()`): `stopped` rejects, and `gaveUp` is set, when the call's signal aborts
 * (CallCancelledError) or `timeoutMs` has passed (BeginTimeoutError, none for Infinity) before that; or,
 * where `deadline` is given (PostgresStoreOptions.beginDeadline), when it aborts instead of that timer.
 *
 * A call with its turn finds a connection free, but postgres.js may still make it wait without end, and
 * nothing it waits for then is one of the call's statements, which its signal cancels (cancellable) and the
 * database's timeouts bound. postgres.js 3.4.9 keeps a connection's current query when its socket closes under
 * it (connection.js closed() leaves `query` set; only a ReadyForQuery clears it), so on the connection the
 * next call's BEGIN reopens, an ErrorResponse that refuses the startup (53300 too many connections, a role's
 * or database's connection limit; 57P03 the database starting up, as after a restart that ended the backend
 * under a statement) is kept as that stale query's error instead of failing the BEGIN, and the close that
 * follows reconnects at once (`initial` still set), again and again, each attempt's connect_timeout started
 * anew: the call waited until the server took a startup (its turn held, so the calls in line behind it waited
 * too, its signal unheard), then answered 503 with the refusal's kept error. A connection whose reconnect
 * waits out postgres.js's backoff (up to 20 s after repeated failures) holds a BEGIN likewise. Bounded here
 * from outside, whatever postgres.js waits for: the call stops waiting, gives its turn back (the pool's
 * connections are then no longer all the line's: a call behind it may wait in postgres.js's queue, which this
 * bounds the same way) and answers; its BEGIN, wherever postgres.js holds it, is left to settle: failed with
 * the kept refusal once the server takes a startup (the connection then serves the next query), or, answered,
 * it runs the transaction's function, which sends nothing (gaveUp) and begin() rolls back. So nothing of the
 * call is ever stored. The store cannot end the refused connection's reconnects itself (postgres.js exposes
 * none of its connections): they go on until the server takes a startup or the pool ends. So a call that gave
 * up for beginTimeoutMs has the pool's owner replace the pool (PostgresStoreOptions.replacePool): the next
 * calls take the new one, and the owner ends the stuck one, whose connection then opens nothing more and
 * whose queued BEGINs are never sent (server.ts, pool.ts, which also paces the reconnects meanwhile).
 */
function beginWait(signal: AbortSignal | undefined, timeoutMs: number, deadline?: AbortSignal) {
  const { promise: stopped, reject } = Promise.withResolvers<never>();
  stopped.catch(() => {}); // raced only while a transaction is awaited; never unhandled
  let timer: ReturnType<typeof setTimeout> | undefined;
  let done = false;
  const wait = {
    /** Why the call gave up, once it did: thrown by a transaction's function that runs after that. */
    gaveUp: undefined as HttpError | undefined,
    stopped,
    /** The transaction has begun (or the call has ended): nothing more is heard. */
    stop,
  };
  const giveUp = (error: HttpError) => {
    if (done) return;
    stop();
    wait.gaveUp = error;
    reject(error);
  };
  const aborted = () => giveUp(new CallCancelledError(signal!.reason));
  const deadlinePassed = () => giveUp(new BeginTimeoutError(undefined));
  function stop() {
    done = true;
    clearTimeout(timer);
    signal?.removeEventListener("abort", aborted);
    deadline?.removeEventListener("abort", deadlinePassed);
  }
  if (signal?.aborted) aborted();
  else if (deadline?.aborted) deadlinePassed();
  else {
    signal?.addEventListener("abort", aborted);
    if (deadline) deadline.addEventListener("abort", deadlinePassed);
    else if (timeoutMs !== Infinity) {
      timer = setTimeout(() => giveUp(new BeginTimeoutError(timeoutMs)), timeoutMs);
    }
  }
  return wait;
}

/**
 * Runs one statement of a call, cancelled in the database if `signal` aborts while it runs: PostgreSQL's
 * cancel request is sent (sendCancel, on a connection of its own, not one of the pool's), the statement
 * fails with 57014 and the call's transaction rolls back, instead of the request holding its pooled
 * connection until its wait ended (for a lock: the lock or statement timeout). A request that the database
 * does not act on (refused, or one that came between two messages of the statement: sendCancel) leaves the
 * statement to run on and answer. A signal that aborted before the statement is sent sends none: the
 * statement is not sent, and the transaction rolls back. The listener is there only while the statement
 * runs, so a signal that aborts after the last one answered cancels nothing: the transaction commits.
 *
 * A cancel request names a backend (its pid and secret key), not a statement: it cancels whatever that
 * backend runs when it arrives. So a statement that ends on its own while the request is on its way
 * settles only once the request has arrived: until then nothing else is sent on the connection, and the
 * request finds its backend idle in the transaction (which PostgreSQL ignores) instead of meeting the
 * COMMIT or, the connection back in the pool, another request's statement (which it cancelled: a 503
 * for a request whose client was still there).
 *
 * That wait is the one moment a call's transaction, its statement settled, waits for something else, so the
 * one moment its connection can close between two of its statements: elsewhere the call's next statement,
 * COMMIT or ROLLBACK is handed to postgres.js in the same turn of the event loop as the answer before it, and
 * a close comes in a turn of its own. So once the request has ended, a connection that closed meanwhile
 * (`connectionClosed`) is met as one that closed under a statement (connectionGone): nothing settles, and
 * postgres.js writes nothing on it; before, the call's next statement, COMMIT or ROLLBACK was written on the
 * closed socket, porsager/postgres#1208's uncaught TypeError.
 */
async function cancellable<T extends readonly postgres.MaybeRow[]>(
  query: postgres.PendingQuery<T>,
  signal: AbortSignal | undefined,
  canceller: Canceller | undefined,
  connectionClosed: () => boolean,
): Promise<postgres.RowList<T>> {
  if (!signal) return await query;
  if (signal.aborted) throw new CallCancelledError(signal.reason);
  let cancelSent: Promise<void> | undefined;
  const cancel = () => {
    cancelSent = sendCancel(query, canceller);
  };
  signal.addEventListener("abort", cancel, { once: true });
  try {
    return await query;
  } finally {
    signal.removeEventListener("abort", cancel);
    if (cancelSent) {
      await cancelSent;
      // Its connection may have closed during the wait (see above). A setImmediate first, so that a close
      // that came before has reached connectionClosed (begin() hears of it in its connection's onclose and
      // rejects a few promise jobs later); then nothing settles, as in run for a statement whose connection
      // closed.
      await new Promise((drained) => setImmediate(drained));
      if (connectionClosed()) await new Promise<never>(() => {});
    }
  }
}

/** postgres.js's cancel(query) of a pool (a query's `canceller`): PostgreSQL's cancel request for it. */
type Canceller = (query: unknown) => unknown;

/**
 * Sends PostgreSQL's cancel request for `query` while it runs on its connection, and settles (never rejects)
 * once the request has ended: delivered (the server closes the request's connection once it has signalled the
 * backend) or failed (the server refused or reset the connection; the statement then runs on).
 *
 * Not query.cancel(): postgres.js 3.4 sends the same request there but drops its promise, so a request whose
 * connection failed was an unhandled rejection, which ends a Deno process (the function's isolate), and no
 * one could wait for a request to arrive. This calls what query.cancel() wraps, a pool's cancel(query) (the
 * query's `canceller`, which returns that promise): `canceller` when given (cancellerApart's), else the
 * query's own. Internals of postgres.js (pinned in deno.json); were they gone (another version),
 * query.cancel() is called as before, unwaited and its failure unhandled, and
 * tests/functions/progress_client_gone.test.ts fails. The wait is bounded: postgres.js gives the request's
 * connection the pool's connect_timeout.
 *
 * Only for a query that runs (postgres.js's `state` set and `active`): the signal can abort in either gap
 * around it, and there postgres.js's cancel(query) wedges the transaction for good. A query awaited but not
 * yet handed to its connection (postgres.js does that a microtask later) it rejects itself, as if it were
 * still in the pool's queue; the transaction's connection then skips it and takes nothing more, so the
 * transaction's ROLLBACK waits forever (the call never ends, its turn and connection never come back). For a
 * query that has answered (its await not yet gone on) it keeps the request for when the query runs, which it
 * never will, and the promise never settles. So an abort before the handover waits for it (a timer: after
 * every microtask) and one after the answer sends nothing: the statement answered, and as after any abort
 * that comes once a statement answered, the call's next statement is not sent (cancellable: the transaction
 * rolls back) or, after its last, the transaction commits. (A query sent behind another on its connection
 * would be `state` set, not `active`: a call's statements run one at a time here, each alone on the
 * transaction's connection; if one ever were, it would get no request and run to its end. Were `state` or
 * `active` gone, in another version, no request would be sent at all, and the cancelling tests of
 * progress_client_gone.test.ts fail.)
 *
 * A request sent during the statement's first round trip (postgres.js sends a statement with parameters as
 * Parse and Describe, then Bind and Execute: executeWritten) may reach the backend while it waits for the
 * Bind, where PostgreSQL ignores it: the statement then ran to its end or its timeouts. So such a request,
 * once it has arrived, is sent a second time once the Execute is written, if the statement still runs; a
 * statement's cancel costs at most two requests. The second one, like the first, may find the statement ended
 * (the backend idle in the transaction: ignored) but nothing else, as the call waits for it too.
 */
async function sendCancel(query: { cancel(): void }, canceller: Canceller | undefined): Promise<void> {
  const internal = query as unknown as QueryInternals;
  if (typeof internal.canceller !== "function") {
    query.cancel();
    return;
  }
  if (!internal.state) await new Promise((handedOver) => setTimeout(handedOver, 0));
  const own = internal.canceller;
  if (!internal.state || internal.active !== true || typeof own !== "function") return;
  internal.canceller = null; // as query.cancel() does: one cancel request per query (two: see below)
  const send = canceller ?? (own as Canceller);
  // Sent in the statement's first round trip (Parse and Describe, postgres.js's `describeFirst`), the
  // request may find the backend waiting for the Bind: ignored there. So it is sent once more once the
  // Execute is written (see executeWritten), unless the statement has ended by then.
  const executing = internal.describeFirst === true ? executeWritten(internal) : undefined;
  try {
    await send(query);
  } catch {
    // Refused or reset: the statement runs on, and the call ends as it would have.
    return;
  }
  if (!executing || !(await executing)) return;
  // postgres.js hands the buffered Bind and Execute to its socket in a setImmediate (write()), queued before
  // this one: the request goes after them.
  await new Promise((written) => setImmediate(written));
  if (internal.active !== true) return;
  try {
    await send(query);
  } catch {
    // As above.
  }
}

/** What sendCancel reads of a postgres.js 3.4.9 Query (query.js) that is not in its types. */
interface QueryInternals {
  canceller?: unknown;
  /** Set (to its connection's pid and secret key) once handed to its connection. */
  state?: unknown;
  /** True while the query is its connection's current query, until it settles. */
  active?: unknown;
  /** True until the Bind and Execute of a statement sent in two round trips are written. */
  describeFirst?: unknown;
}

/**
 * Resolves true once postgres.js has written the Bind and Execute of `query`, a statement it sends in two
 * round trips, or false if the query settles first (failed in its Parse, its connection lost).
 *
 * postgres.js 3.4.9 (connection.js build()) sends a statement that has parameters and is not prepared
 * already (always so with `prepare: false`, server.ts's: every statement of a store call) as Parse and
 * Describe with a Flush, and only when the server has described its parameters (ParameterDescription)
 * writes the Bind, Execute and Sync and sets `describeFirst` to false. Between the two the backend waits for
 * the Bind, reading from its client, and there PostgreSQL ignores a cancel request (postgres.c,
 * ProcessInterrupts: "If we are reading a command from the client, just ignore the cancel request"; so it
 * does for one that came while it parsed, once it reads the next message), so the statement then ran to its
 * end as if no one had asked. Watched through an accessor on the query (postgres.js assigns the property,
 * it never defines it), put back as a plain property once the query settles or the Execute was written.
 * The Execute, buffered when this resolves, is handed to the socket at the next setImmediate (at once when
 * large); sendCancel sends the second request after that, on a connection still to be opened, which the
 * server must accept and read before it signals the backend, so the backend has the Execute long before.
 * The request can still come too early if the backend has not read the Execute by then (a backend or link
 * that stalls just then), and then it is ignored as the first was: the statement runs to its end or its
 * timeouts, as every statement did before.
 */
function executeWritten(query: QueryInternals): Promise<boolean> {
  let value = query.describeFirst;
  const { promise, resolve } = Promise.withResolvers<boolean>();
  let settled = false;
  const settle = (written: boolean) => {
    if (settled) return;
    settled = true;
    Object.defineProperty(query, "describeFirst", {
      value,
      writable: true,
      enumerable: true,
      configurable: true,
    });
    resolve(written);
  };
  Object.defineProperty(query, "describeFirst", {
    enumerable: true,
    configurable: true,
    get: () => value,
    set: (next) => {
      value = next;
      if (next === false) settle(true);
    },
  });
  // Not the query's own then() (postgres.js's, which would hand it over): Promise's, as a listener only.
  Promise.prototype.then.call(query, () => settle(false), () => settle(false));
  return promise;
}

/**
 * A pool's cancel(query) that counts its failures apart from the pool's connections, made once per pool.
 *
 * postgres.js 3.4.9 sends a cancel request on a Connection made with the pool's own options, and a
 * connection that closes with an error adds one to `options.shared.retries`, the count the pool's
 * connections share: each of them, when it closes, waits backoff(retries) before it may connect again
 * (0.5 to 1 times 3^retries / 100 s, at most 20 s), and only a pool connection that completes its startup
 * sets the count back to 0. So every cancel request whose connection was refused or reset (a database
 * restarting, a pooler that refuses them) lengthened the next reconnect of the pool: after one, 15 to 30 ms
 * instead of 5 to 10; after seven, 10 to 20 s, for a request that found its connection closed (idle for 20 s:
 * server.ts's idle_timeout, or at its max_lifetime) within that time of the close. The count does not
 * touch a connection that stays open, and a refused cancel request is no sign that the pool's own
 * connections fail (the pooler or the server may refuse only those). Here the requests go through a second
 * postgres() made from the pool's parsed options (postgres() takes them as they are) with a `shared` of its
 * own and no subscription pool: it never opens a connection of its own, and the failures it counts slow no
 * one. Undefined when `sql` has no such options (a transaction, another version of postgres.js): the
 * query's own canceller is used then.
 */
function cancellerApart(sql: postgres.Sql): Canceller | undefined {
  const cached = cancellers.get(sql);
  if (cached) return cached;
  const options = (sql as unknown as { options?: { shared?: { retries?: unknown } } }).options;
  if (!options?.shared || typeof options.shared.retries !== "number") return undefined;
  const apart = postgres({
    ...options,
    shared: { ...options.shared, retries: 0 },
    max: 1,
    no_subscribe: true,
  } as unknown as postgres.Options<Record<string, postgres.PostgresType>>);
  // A query is never run on `apart`: made only to reach the pool's cancel(query), which its queries carry.
  const canceller = (apart`select 1` as unknown as { canceller?: unknown }).canceller;
  if (typeof canceller !== "function") return undefined;
  cancellers.set(sql, canceller as Canceller);
  return canceller as Canceller;
}

const cancellers = new WeakMap<postgres.Sql, Canceller>();

/**
 * The turns of the calls on one pool at its connections: at most `size` (the pool's max) transactions at
 * once, the other calls waiting in the order they came. A call waits here, not in postgres.js's queue, for a
 * query cannot be taken back from there once sql.begin() has queued its BEGIN (the pool's cancel(query)
 * removes a queued query, but begin() keeps its BEGIN to itself): a call whose signal aborted while it waited
 * stayed in line, and once a connection was free it sent BEGIN and ROLLBACK and only then answered. Here it
 * leaves the line at once (CallCancelledError), has sent nothing and takes no one's turn. `take` adds an
 * abort listener to the signal only while the call waits and removes it when the call gets its turn or
 * leaves.
 *
 * A turn is given back once its transaction has ended (committed, rolled back, or its connection lost), by
 * then postgres.js has put the connection back in the pool, so the next call finds it free; or once the call
 * gave up waiting for its transaction to begin (its signal, beginTimeoutMs: beginWait).
 *
 * Queries on the pool made outside a store take no turn, and the function makes none: server.ts makes its
 * pool for its store alone and hands it to no one else (index.ts gets the handler), and every database call
 * of the handler, reads and writes alike, is a store call; there is no health check or query of the server's
 * own. What postgres.js sends by itself takes no connection of another call: the array types it reads when a
 * connection opens (fetch_types) go on the connection a turn's BEGIN opens, before that BEGIN; cancel
 * requests go on connections of their own, never the pool's (cancellerApart); end() (server.ts's close, or a
 * pool replaced when the environment changed) ends connections as their transactions end, and a call that
 * still waits in the line then fails as on an ended pool (CONNECTION_ENDED: a 503). So a call with its turn
 * finds a connection free (open, or closed and opened for it), but after a call that gave up before its
 * transaction began (beginWait): its BEGIN, still held by postgres.js, keeps its connection until answered or
 * failed, and a call behind it may wait in postgres.js's queue meanwhile, bounded as that call's wait was
 * (beginWait again), unless the call gave up for beginTimeoutMs and the store's pool was replaced
 * (replacePool): the calls in the line take the new pool then, and the line, the first pool's, goes on.
 * tests/functions/progress_client_gone.test.ts shows it for the function's own pool: with its one connection
 * busy, a read waits here, listening to its signal, and leaves at once. A program that also queries a store's
 * pool directly (tests do, one thing at a time) takes connections without a turn: a call with its turn may
 * then wait in postgres.js's queue behind those queries, first come first served (there an abort cannot take
 * its BEGIN back, as before this line), and they wait behind at most the line's `size` transactions, each
 * bounded by its lock and statement timeouts.
 */
interface ConnectionTurns {
  /** Resolves, once the call may begin its transaction, with the function that gives the turn back. */
  take(signal: AbortSignal | undefined): Promise<() => void>;
}

function connectionTurns(size: number): ConnectionTurns {
  let free = size;
  const waiting: { admit(): void }[] = [];
  return {
    take(signal) {
      if (signal?.aborted) return Promise.reject(new CallCancelledError(signal.reason));
      let returned = false;
      const giveBack = () => {
        if (returned) return;
        returned = true;
        const next = waiting.shift();
        if (next) next.admit();
        else free++;
      };
      if (free > 0) {
        free--;
        return Promise.resolve(giveBack);
      }
      return new Promise((resolve, reject) => {
        const waiter = {
          admit() {
            signal?.removeEventListener("abort", leave);
            resolve(giveBack);
          },
        };
        // Runs only while the call waits: admit() removes it before the turn is given.
        const leave = () => {
          signal!.removeEventListener("abort", leave);
          const place = waiting.indexOf(waiter);
          if (place >= 0) waiting.splice(place, 1);
          reject(new CallCancelledError(signal!.reason));
        };
        signal?.addEventListener("abort", leave);
        waiting.push(waiter);
      });
    },
  };
}

/**
 * The turns of `sql`'s calls (one line per pool, whichever store takes them, and kept by a store for the pools
 * replacePool makes in place of `sql`); undefined without a max.
 */
function turnsOf(sql: postgres.Sql): ConnectionTurns | undefined {
  const cached = turnsByPool.get(sql);
  if (cached) return cached;
  const max = (sql as unknown as { options?: { max?: unknown } }).options?.max;
  if (typeof max !== "number" || !Number.isInteger(max) || max < 1) return undefined;
  const turns = connectionTurns(max);
  turnsByPool.set(sql, turns);
  return turns;
}

const turnsByPool = new WeakMap<postgres.Sql, ConnectionTurns>();

/**
 * Whether `error`, a statement's, says that its transaction's connection closed under it: postgres.js
 * 3.4.9's CONNECTION_CLOSED (its socket closed while the statement ran), or a socket error, after which the
 * socket closes. postgres.js's begin() then rejects by itself (its connection's onclose: CONNECTION_CLOSED, a
 * 503), but once the transaction's function rejects too it sends ROLLBACK on that connection, whose socket it
 * has dropped: the write, made in a setImmediate, throws a TypeError ("Cannot read properties of null
 * (reading 'write')", porsager/postgres#1208) that no caller can catch, which ended the function's process
 * (every request in it), and left the ROLLBACK on the connection for when the pool opened it again. So the
 * store's statement never settles then (run): the function never ends, begin() sends nothing more, and the
 * promises are garbage once begin() has rejected. Not CONNECTION_DESTROYED (the pool ended: postgres.js
 * refuses the ROLLBACK itself, and the close may come late).
 *
 * The socket errors (SOCKET_LOST_CODES) are all that an established connection's socket reports when its
 * peer or the route to it is lost; a socket closes after any error it emits, and postgres.js, which hands the
 * error to the running statement first, closes the connection then, so each meets #1208 as a close does.
 */
function connectionGone(error: unknown): boolean {
  const code = (error as { code?: unknown })?.code;
  return code === "CONNECTION_CLOSED" || (typeof code === "string" && SOCKET_LOST_CODES.has(code));
}

/**
 * The error codes of a TCP socket whose connection was lost once established: the peer reset it (ECONNRESET)
 * or is gone (EPIPE on a write), the kernel gave up retransmitting or keepalive went unanswered (ETIMEDOUT),
 * the route to the peer was lost (an ICMP host or network unreachable: EHOSTUNREACH, ENETUNREACH; the host
 * reported down: EHOSTDOWN; the local interface gone: ENETDOWN), or the kernel aborted it (ECONNABORTED;
 * ENOTCONN for a write after that). Before, only ECONNRESET, EPIPE and ETIMEDOUT were among connectionGone's
 * codes: for the others (EHOSTUNREACH and ENETUNREACH: a failover that moved the database's address, a VPN or
 * network that went away) the statement's error went on to begin()'s ROLLBACK for the lost connection,
 * which postgres.js writes from a setImmediate when the transaction's connection is free for it (a statement
 * sent in one round trip: one prepared already, on a pool that prepares), on a socket it has dropped if the
 * close came first (porsager/postgres#1208). (With prepare: false, as server.ts's, every statement of the
 * store has parameters and takes two round trips, during which postgres.js parks the connection as full: the
 * ROLLBACK then waits in the transaction's own queue, which the close drops unsent.)
 */
const SOCKET_LOST_CODES = new Set([
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "EHOSTDOWN",
  "ENETDOWN",
  "ECONNABORTED",
  "ENOTCONN",
]);

/**
 * Whether `error`, the rejection of a call's BEGIN before its transaction's function ran, is the error of
 * the backend that ended under the connection's last statement, which postgres.js 3.4.9 hands to the first
 * query of the reopened connection: the ended backend's message (57P01 admin_shutdown: a database restart,
 * pg_terminate_backend), read while that statement ran, is kept (connection.js: `errorResponse`, cleared
 * only by a ReadyForQuery, which never came), and the reopened connection's startup ReadyForQuery rejects
 * with it the query it opened for (`initial`, sent only after that). So the BEGIN was not sent, the
 * connection is open and back in the pool, and the call sends its BEGIN again, once, to the store's pool now
 * (the one that replaced it, if another call gave up on that pool meanwhile: replacePool); before, it
 * answered 503 with nothing sent. Whichever way such an error reaches a BEGIN, no statement of the call was
 * sent (its transaction's function never ran), so the BEGIN sent again can store nothing twice. (57P02
 * crash_shutdown, another backend crashed, PostgreSQL sends as a WARNING, a notice, as it does an immediate
 * shutdown's 57P01: postgres.js keeps neither, and the next BEGIN is sent as it is. The check takes 57P02
 * for a server that would send it as an error.)
 *
 * Only when the reopened connection's first startup is taken: postgres.js also keeps the ended statement as
 * the connection's current query (closed() leaves it), so a startup the server refuses (53300 too many
 * connections, 57P03 starting up) fails no query either: postgres.js reconnects at once, again and again, and
 * the startup the server takes then fails the BEGIN with the refusal's error, kept, which is not sent again.
 * The call does not wait for that: it stops waiting when its signal aborts or beginTimeoutMs has passed
 * (beginWait).
 */
function replayedBackendEnd(error: unknown): boolean {
  return error instanceof postgres.PostgresError && (error.code === "57P01" || error.code === "57P02");
}

/**
 * Whether `error`, the rejection of a call's BEGIN before its transaction's function ran, says that the BEGIN
 * was never sent because its pool had ended: CONNECTION_ENDED, which postgres.js 3.4.9 gives a query asked of
 * a pool it has ended (handler(), unqueued), and pool.ts a connection attempt of an ended pool (poolEnded:
 * the connection opening for the BEGIN, `initial`, sent only once a startup completes, fails it). So a BEGIN
 * postgres.js had queued behind the pool's other connections, or handed to one reopening (a refused startup,
 * a kept query), before the pool was replaced and ended. Not CONNECTION_DESTROYED: postgres.js gives that to
 * a BEGIN on its way too (terminate(): the connection's current query), which may have been sent.
 */
function endedUnsent(error: unknown): boolean {
  return (error as { code?: unknown })?.code === "CONNECTION_ENDED";
}

/** Runs a statement of the call's transaction, cancellable by the call's signal (see cancellable). */
type Run = <T extends readonly postgres.MaybeRow[]>(
  query: postgres.PendingQuery<T>,
) => Promise<postgres.RowList<T>>;

export interface PostgresStoreOptions {
  /** statement_timeout inside each request transaction (ms); a timeout answers 503. */
  statementTimeoutMs?: number;
  /**
   * lock_timeout inside each request transaction (ms); a timeout answers 503. Shorter than the
   * statement timeout: a request that meets a lock held for long (an operator's ALTER TABLE or
   * maintenance, a transaction left open on the row) gives its pooled connection back soon instead
   * of holding it for the whole statement timeout, so a few such requests cannot stall every other
   * user's requests on the isolate (a pool of 5).
   */
  lockTimeoutMs?: number;
  /** Attempts for a transaction that hit a deadlock or serialization failure. */
  attempts?: number;
  /**
   * How long a call waits, once it has its turn at the pool's connections, for its transaction to begin (a
   * pooled connection opened for it and its BEGIN answered) before it answers 503 (BeginTimeoutError; the
   * wait: beginWait). Default 10 s: twice the function's connect_timeout (server.ts), which bounds each
   * attempt to open a connection, so a wait this long is postgres.js's without end (a startup the server
   * refuses again and again) or its reconnect backoff, and the client, which gives an attempt 20 s,
   * gets an answer it retries. Above 0 and up to 2^31-1 ms, or Infinity for no bound; another number throws
   * a RangeError when the store is made, a value that is not a number a TypeError.
   */
  beginTimeoutMs?: number;
  /**
   * Called once per attempt of a call, when its wait for its transaction to begin starts: a signal whose
   * abort ends that wait as beginTimeoutMs's timer would (BeginTimeoutError, its cause "had not begun when
   * its begin deadline passed", replacePool called), in place of that timer; undefined, the timer. One
   * aborted already ends the call at once with that error, its BEGIN never asked and the pool not replaced
   * (nothing was asked of it). For a program that decides itself when a call has waited long enough:
   * tests/functions/progress_client_gone.test.ts gives one call of the function's pool a deadline it aborts
   * once the scene is set, and the other calls the timer of beginTimeoutMs Infinity, where the calls' timers
   * (beginTimeoutMs from each one's turn) left the test the pacing's spacing between two turns as its
   * margin. Without it, the timer for every call.
   */
  beginDeadline?: () => AbortSignal | undefined;
  /**
   * The pool's owner's (server.ts's): called, with the store's pool, when a call gave up waiting for its
   * transaction to begin (BeginTimeoutError), once per pool; returns the pool the store's calls take from
   * then on, made with the same max for this store alone, the owner ending the stuck one. Without it the
   * store keeps its pool, whose connection may go on reopening for the BEGIN the call left behind, and the
   * BEGINs of the calls after it queue in postgres.js behind that connection, each sent (then rolled back)
   * once the server takes a startup (beginWait). With it the next calls, those in the line included, open a
   * connection of the new pool (whose connections carry no query of a lost socket: a startup the server
   * refuses fails their BEGIN at once, a 503), and the stuck pool's queued BEGINs are never sent.
   */
  replacePool?: (stuck: postgres.Sql) => postgres.Sql;
}

/** PostgresStoreOptions.beginTimeoutMs: a delay a timer can hold, or Infinity. */
const BEGIN_TIMEOUT_MS: NumberRule = {
  min: 0,
  aboveMin: true,
  max: MAX_TIMER_MS,
  infinity: true,
  unit: "milliseconds",
};

type Row = Record<string, unknown>;

function iso(v: unknown): string {
  if (v instanceof Date) return v.toISOString();
  return new Date(String(v)).toISOString();
}

/** created_at keeps its microseconds: rows come as to_jsonb text (a Date would have lost them). */
function lifeIso(v: unknown): string {
  const value = microsecondIso(String(v));
  if (value === null) throw new Error(`created_at is not an instant: ${String(v)}`);
  return value;
}

/** A row from the database (to_jsonb output) in the API's shape. */
export function toProgress(r: Row): Progress {
  return {
    user_id: String(r.user_id),
    series_id: String(r.series_id),
    chapter: Number(r.chapter),
    page: Number(r.page),
    percentage: Number(r.percentage),
    cleared: r.cleared === true,
    device_id: String(r.device_id),
    updated_at: iso(r.updated_at),
    synced_at: iso(r.synced_at),
    change_xid: String(r.change_xid),
    created_at: lifeIso(r.created_at),
  };
}

function toWriteResult(r: Row): WriteResult {
  const other = r.conflict_with as Row | null | undefined;
  return {
    won: r.won === true,
    conflict: (r.conflict ?? null) as ConflictKind | null,
    conflict_with: other ? { updated_at: iso(other.updated_at), device_id: String(other.device_id) } : null,
    progress: toProgress(r.progress as Row),
  };
}

const RETRYABLE = new Set(["40001", "40P01"]);

export function createPostgresProgressStore(
  sql: postgres.Sql,
  options: PostgresStoreOptions = {},
): ProgressStore {
  const timeout = String(options.statementTimeoutMs ?? 8_000);
  const lockTimeout = String(options.lockTimeoutMs ?? 2_000);
  const attempts = options.attempts ?? 3;
  const beginTimeoutMs = options.beginTimeoutMs === undefined ? 10_000 : checkNumberOption(
    options.beginTimeoutMs,
    BEGIN_TIMEOUT_MS,
    "createPostgresProgressStore",
    "beginTimeoutMs",
  );
  // The pool the calls take from now on: `sql`, until a call gave up waiting for its BEGIN and replacePool
  // made another (a retry's attempt, or a call in the line, takes the new one once its turn comes). The line
  // stays the first pool's: the replacement is made with the same max and serves this store alone.
  let pool = sql;
  const turns = turnsOf(sql);

  async function asUser<T>(
    claims: JwtClaims,
    mode: "read write" | "read only",
    clock: DatabaseClock | undefined,
    signal: AbortSignal | undefined,
    fn: (tx: postgres.TransactionSql, run: Run) => Promise<T>,
  ): Promise<T> {
    // One transaction of the call, in its turn, and once more (in the same turn) if postgres.js failed its
    // BEGIN with the error of the connection's previous backend (replayedBackendEnd). Until it has begun, the
    // call stops waiting for it when its signal aborts or beginTimeoutMs has passed (beginWait).
    const transaction = async (): Promise<T> => {
      const waiting = beginWait(signal, beginTimeoutMs, options.beginDeadline?.());
      // A beginDeadline signal aborted already: the call answers at once (BeginTimeoutError), asks nothing
      // of the pool and leaves it in place, which it has not seen stuck. Before, it asked its BEGIN (a
      // connection opened for a call that had answered, its turn given back, a ROLLBACK once answered) and
      // replaced the pool, a new one for every such call.
      const passedAlready = waiting.gaveUp;
      if (passedAlready) throw passedAlready;
      // The pool the call's BEGIN was last asked of (begunTransaction): the store's pool then.
      const taken = { sql: pool };
      try {
        return await begunTransaction(taken, waiting);
      } finally {
        waiting.stop();
        // The call gave up for beginTimeoutMs: the pool is stuck (replacePool). Once per pool: a call that
        // gave up on a pool already replaced leaves the new one alone.
        if (waiting.gaveUp instanceof BeginTimeoutError && options.replacePool && pool === taken.sql) {
          pool = options.replacePool(taken.sql);
        }
      }
    };
    const begunTransaction = async (
      taken: { sql: postgres.Sql },
      waiting: ReturnType<typeof beginWait>,
    ): Promise<T> => {
      for (let replayed = false;;) {
        // The store's pool now: a BEGIN sent again (replayedBackendEnd) goes to the pool that replaced the
        // one it failed on, if another call gave up on that one meanwhile (replacePool), which is ending
        // (server.ts), and refuses it (CONNECTION_ENDED). Before, the BEGIN went to the pool it had failed on
        // whatever happened meanwhile, and the write was answered 503 with the server back.
        taken.sql = pool;
        const canceller = cancellerApart(taken.sql);
        // Set once begin() runs the transaction's function: from then on a statement of the call may have
        // been sent.
        let began = false;
        // Set once begin() has settled. While the transaction's function still runs that happens only when
        // its connection closed: begin() rejects then from its connection's onclose (CONNECTION_CLOSED).
        let ended = false;
        const run: Run = async (query) => {
          try {
            return await cancellable(query, signal, canceller, () => ended);
          } catch (error) {
            // The transaction's connection is gone: its statement never settles, so neither does the
            // transaction's function, and postgres.js's begin() sends no ROLLBACK (connectionGone).
            if (connectionGone(error)) return await new Promise<never>(() => {});
            throw error;
          }
        };
        const begun = taken.sql.begin(mode, async (tx) => {
          // The call gave up before its transaction began, and has answered: nothing is sent, and begin()
          // rolls the transaction back (beginWait).
          if (waiting.gaveUp) throw waiting.gaveUp;
          began = true;
          waiting.stop();
          // TimeZone UTC: dates come back as to_jsonb text in the session's TimeZone, and a project's
          // database or role may set a zone whose offset has seconds (Africa/Monrovia before 1972
          // prints -00:44:30), which Date and microsecondIso cannot read (an accepted write answered
          // 500). Set here with the rest, not as a startup parameter: behind a transaction-mode pooler
          // (Supavisor, PgBouncer) the server connection is another client's between transactions.
          // extra_float_digits 1 (PostgreSQL's default) likewise: a database or role set to 0 or below
          // prints a double (the rows' percentage, to_jsonb) rounded to 15 + that many digits.
          // now_ms: the database's clock for the answer's X-Server-Time (DatabaseClock), in this
          // statement so that reading it costs no round trip; epoch milliseconds as a double, which
          // no TimeZone setting changes. Each attempt reads it afresh.
          // The legacy request.jwt.claim.sub/.role/.email and request.jwt.claim are cleared (empty:
          // the auth.* helpers read '' as unset): Supabase's auth.uid(), auth.role(), auth.email()
          // and auth.jwt() prefer them to request.jwt.claims, and behind a transaction-mode pooler
          // another client may have left one set on the connection at session level (older RLS
          // testing advice set request.jwt.claim.sub), which made auth.uid() that client's user.
          const [{ now_ms }] = await run(tx<{ now_ms: unknown }[]>`
            select set_config('role', 'authenticated', true),
                   set_config('request.jwt.claims', ${JSON.stringify(claims)}, true),
                   set_config('request.jwt.claim.sub', '', true),
                   set_config('request.jwt.claim.role', '', true),
                   set_config('request.jwt.claim.email', '', true),
                   set_config('request.jwt.claim', '', true),
                   set_config('statement_timeout', ${timeout}, true),
                   set_config('lock_timeout', ${lockTimeout}, true),
                   set_config('TimeZone', 'UTC', true),
                   set_config('extra_float_digits', '1', true),
                   pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000) as now_ms`);
          if (clock && typeof now_ms === "number" && Number.isFinite(now_ms)) clock.ms = now_ms;
          return await fn(tx, run);
        }) as Promise<T>;
        const end = () => {
          ended = true;
        };
        begun.then(end, end);
        try {
          return await Promise.race([begun, waiting.stopped]);
        } catch (error) {
          // Nothing of the call was sent (its transaction's function never ran), and the turn is still its
          // own: the connection postgres.js reopened and put back in the pool is free for the BEGIN again.
          if (!began && !replayed && !signal?.aborted && !waiting.gaveUp && replayedBackendEnd(error)) {
            replayed = true;
            continue;
          }
          // The pool it was asked of was replaced meanwhile (another call gave up on it) and has ended: its
          // connection opened nothing for the BEGIN, which failed unsent (endedUnsent). Sent to the store's
          // pool now; before, the call answered 503, the server back or not. Each time to a pool made since
          // (replacePool, once per pool), so a bounded number of times.
          if (!began && !signal?.aborted && !waiting.gaveUp && taken.sql !== pool && endedUnsent(error)) {
            continue;
          }
          throw error;
        }
      }
    };
    for (let attempt = 1;; attempt++) {
      let giveBack: (() => void) | undefined;
      try {
        // Not begun for a signal that aborted already (before the first attempt, or during a retry's pause).
        if (signal?.aborted) throw new CallCancelledError(signal.reason);
        // A turn at the pool's connections, per attempt: given back once the transaction ended, before a
        // retry's pause. A signal that aborts while the call waits for it ends the call at once.
        giveBack = turns ? await turns.take(signal) : undefined;
        if (signal?.aborted) throw new CallCancelledError(signal.reason);
        return await transaction();
      } catch (error) {
        giveBack?.();
        if (error instanceof CallCancelledError) throw error;
        // A statement the signal cancelled (57014), or any other failure once the signal aborted: the
        // transaction did not commit (it rolled back whole), and no one waits for a retry. A cancel request
        // sent as the statement was ending met no COMMIT: cancellable waited until it had arrived.
        if (signal?.aborted) throw new CallCancelledError(signal.reason, error);
        const code = (error as { code?: unknown })?.code;
        if (typeof code === "string" && RETRYABLE.has(code) && attempt < attempts) {
          await new Promise((r) => setTimeout(r, Math.random() * 20 * attempt));
          continue;
        }
        throw mapDatabaseError(error);
      } finally {
        giveBack?.();
      }
    }
  }

  return {
    write: (claims, w, clock, signal) =>
      asUser(claims, "read write", clock, signal, async (tx, run) => {
        const [{ result }] = await run(tx<{ result: Row }[]>`
          select public.write_reading_progress(
            ${w.series_id}::text, ${w.chapter}::integer, ${w.page}::integer, ${w.percentage}::double precision,
            ${w.cleared}::boolean, ${w.device_id}::text, ${w.updated_at}::timestamptz) as result`);
        return toWriteResult(result);
      }),

    writeBatch: (claims, writes, clock, signal) =>
      asUser(claims, "read write", clock, signal, async (tx, run) => {
        // tx.json: postgres.js serialises it once as jsonb (a JSON.stringify'd string with ::jsonb
        // would be encoded again, as a JSON string, once the parameter is typed jsonb).
        const [{ results }] = await run(tx<{ results: Row[] }[]>`
          select public.write_reading_progress_batch(${
          tx.json(writes as unknown as postgres.JSONValue)
        }) as results`);
        return results.map(toWriteResult);
      }),

    get: (claims, seriesId, clock, signal) =>
      asUser(claims, "read only", clock, signal, async (tx, run) => {
        // As JSON, like every other read: postgres.js would turn created_at into a Date (milliseconds).
        const rows = await run(tx<{ row: Row }[]>`
          select to_jsonb(p) as row from public.get_reading_progress(${seriesId}::text) p`);
        return rows.length ? toProgress(rows[0].row) : null;
      }),

    list: (claims, q, clock, signal) =>
      asUser(claims, "read only", clock, signal, async (tx, run) => {
        const rows = await run(tx<{ row: Row }[]>`
          select to_jsonb(p) as row from public.list_reading_progress(
            ${q.limit}::integer, ${q.before?.updated_at ?? null}::timestamptz,
            ${q.before?.series_id ?? null}::text, ${q.includeCleared}::boolean) p`);
        return rows.map((r) => toProgress(r.row));
      }),

    changes: (claims, q, clock, signal) =>
      asUser(claims, "read only", clock, signal, async (tx, run) => {
        const [{ page }] = await run(tx<{ page: Row }[]>`
          select public.reading_progress_changes(${q.cursor}::text, ${q.limit}::integer) as page`);
        return {
          changes: (page.changes as Row[]).map((r) =>
            r.deleted === true ? { ...toProgress(r), deleted: true as const } : toProgress(r)
          ),
          next_cursor: String(page.next_cursor),
          has_more: page.has_more === true,
          // Only where the read started over (the cursor given was not taken as it stands: another
          // user's, cluster's or timeline's; migration …_changes_cursor_started_over_reported.sql):
          // every other page is the JSON it was before.
          ...(page.started_over === true ? { started_over: true } : {}),
        };
      }),
  };
}

// ------------------------------------------------------------------------------------ errors

const UNAVAILABLE_NETWORK_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  ...SOCKET_LOST_CODES,
  "CONNECT_TIMEOUT",
  "CONNECTION_CLOSED",
  "CONNECTION_ENDED",
  "CONNECTION_DESTROYED",
]);

function unavailable(message: string, cause: unknown): HttpError {
  return new HttpError(503, "service_unavailable", message, { headers: { "retry-after": "1" }, cause });
}

/**
 * The body's code and message of an error raised as SQLSTATE PGRST, PostgREST's form for an error whose
 * status and headers the database chooses (docs: Errors, "Raise errors with HTTP Status Codes"): its
 * message is JSON with a string "code" and "message" (PostgREST's parseRaisePGRST). Undefined for one
 * whose message is not that JSON, which PostgREST answers with a 500 of its own (PGRST121), and for a
 * code that is not SQLSTATE-shaped (five digits or capitals), which could not stand for one.
 */
function raisedForPostgrest(message: string): { code: string; message: string } | undefined {
  let body: unknown;
  try {
    body = JSON.parse(message);
  } catch {
    return undefined;
  }
  const { code, message: bodyMessage } = (body ?? {}) as { code?: unknown; message?: unknown };
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) && typeof bodyMessage === "string"
    ? { code, message: bodyMessage }
    : undefined;
}

/** A postgres.js / network error as the HttpError the API answers with. */
export function mapDatabaseError(error: unknown): HttpError {
  if (error instanceof HttpError) return error;
  const e = error as {
    code?: unknown;
    message?: unknown;
    detail?: unknown;
    constraint_name?: unknown;
    column_name?: unknown;
  };
  let code = typeof e?.code === "string" ? e.code : "";
  let message = typeof e?.message === "string" ? e.message : String(error);
  // Raised for PostgREST as SQLSTATE PGRST (the user-lock trigger's wait that waited too long, migration
  // …_user_write_wait_retry_after.sql): the body's code stands for the SQLSTATE, as it does for a Data API
  // client; one whose message is not that JSON stays PGRST (class PG: a 500).
  const raised = code === "PGRST" ? raisedForPostgrest(message) : undefined;
  if (raised) ({ code, message } = raised);

  if (
    UNAVAILABLE_NETWORK_CODES.has(code) ||
    error instanceof Deno.errors.ConnectionRefused ||
    error instanceof Deno.errors.ConnectionReset ||
    error instanceof Deno.errors.TimedOut
  ) {
    return unavailable("The database is unavailable", error);
  }
  if (/^[0-9A-Z]{5}$/.test(code)) {
    const cls = code.slice(0, 2);
    const details: Record<string, unknown> = { sqlstate: code };
    if (typeof e.constraint_name === "string") details.constraint = e.constraint_name;
    if (typeof e.column_name === "string") details.column = e.column_name;
    if (cls === "23") {
      return new HttpError(422, "constraint_violation", `The database rejected the values: ${message}`, {
        details,
        cause: error,
      });
    }
    if (cls === "22") {
      return new HttpError(422, "validation_failed", `Invalid value: ${message}`, { details, cause: error });
    }
    if (code === "42501") {
      return new HttpError(403, "forbidden", "Not allowed", { details, cause: error });
    }
    // PT503: the lock timeout of a wait for another write of the same user, which the user-lock trigger
    // raises again for PostgREST: as SQLSTATE PGRST with "code": "PT503" in its message, whatever status
    // its detail gives the Data API (429 since migration …_user_write_wait_answered_429.sql, 503 under
    // …_user_write_wait_retry_after.sql), before that as SQLSTATE PT503
    // (…_user_write_wait_answered_503.sql, still read: a database not yet migrated): a lock timeout like
    // 55P03, answered the same, 503 with Retry-After 1 as the API client retries (it retries no 429).
    const lockTimeout = code === "55P03" || code === "PT503";
    if (
      cls === "08" || cls === "53" || cls === "57" || code === "40001" || code === "40P01" || lockTimeout ||
      code === "XX000" && /shutting down/i.test(message)
    ) {
      return unavailable(
        code === "57014"
          ? "The database took too long to answer"
          : lockTimeout
          ? "The data is locked by another operation; try again"
          : "The database is unavailable or busy",
        error,
      );
    }
  }
  return new HttpError(500, "internal_error", "Internal error", { cause: error });
}
