// A client that leaves while the progress function works for it, over real HTTP against the real
// database (the handler served locally by Deno.serve, whose request signal aborts when the client
// disconnects before its answer, as the local gateway's does, local/functions; Supabase's edge runtime,
// as far as its source shows, does not: README, "A client that leaves"):
//   * a batch waiting behind the same user's other write (a transaction of the user's that holds the
//     user's write lock and stays open): when the client aborts its fetch, the function cancels the
//     statement in the database, its backend stops waiting and is idle (no transaction, no lock) while
//     the other write still holds the lock, nothing of the batch is stored, and the function logs
//     request_cancelled. The function's store has lock and statement timeouts of 2 minutes here, so the
//     wait can only end sooner because it was cancelled (the tests' hang guards are far shorter); before,
//     it went on until they ended (2 s and 8 s by default), its pooled connection held all that time.
//   * a write that committed before the client left stays stored, and is logged request_aborted with
//     the answer's status (200) that no one got.
//   * a request that waits for a pooled connection (the pool's one connection busy with another user's
//     write that waits) and whose client leaves ends at once, request_cancelled, while the pool is still
//     busy, and sends nothing to the database, instead of keeping its place until the connection was free.
// And the store's cancel request itself (the store called directly, its pool of one connection through a
// TCP proxy that can refuse or hold the cancel request's connection of its own):
//   * a cancel request whose connection is refused is no unhandled rejection (which ends a Deno process):
//     the statement goes on, and the write lands once the other write has ended.
//   * a cancel request held on its way while its statement ends on its own (the other write committed)
//     arrives before anything else is sent on the connection: it finds the backend idle in the
//     transaction (ignored there) and the write commits, instead of landing, the connection back in the
//     pool, on another user's statement (a 503 "took too long" for a request whose client was there).
//   * a refused cancel request does not lengthen the pool's reconnect delay: the pool's connection, when it
//     next closes, waits backoff(0) (no failure of the pool's own), not backoff(1).
//   * a signal that aborts in the gap just before a statement is handed to its connection, or just after it
//     answered, ends the call (cancelled; answered and committed) and leaves the pool's connection and turn
//     free, instead of postgres.js's cancel wedging the transaction (the call never ended).
//   * a cancel request that reaches the backend between a statement's Parse and its Bind (prepare: false:
//     two round trips; the proxy holds the Parse's answer until the request has arrived), which PostgreSQL
//     ignores there, is sent again once the Execute is written, and cancels the write waiting for the user's
//     other write.
// And the function's own pool (createProgressHandlerFromEnv, one connection) serves store calls alone:
// with its connection busy (a write whose statement a TCP proxy holds on its way), a read waits in the
// store's line, listening to its signal, with nothing sent, and ends at once when its client leaves.
// And every store call (answered, failed in the database, thrown, aborted before it began, cancelled,
// waiting for a connection then answered or left) removes every listener it added to its signal.
// And a store call whose beginDeadline signal has aborted already answers 503 at once, nothing sent to the
// database and the pool not replaced, where it sent its BEGIN (then ROLLBACK) and replaced the pool.
// And a connection lost under the store (its backend terminated, as by a database restart), over real HTTP:
//   * while a write's statement runs: 503, and the next write is answered 200 and stored once (postgres.js
//     fails its BEGIN, unsent, with the ended backend's error; the store sends it again), where it answered
//     503 before; the process lives on (postgres.js writes no ROLLBACK on the closed connection).
//   * while a write's cancel request is on its way, its statement answered: 503, nothing stored, and the
//     process lives on to answer the next write, instead of postgres.js's uncaught TypeError when the call
//     went on to its COMMIT on the closed connection.
// And the function's own pool (createProgressHandlerFromEnv, one connection, through a proxy that counts the
// connections made to it and reads the statements sent), its backend terminated under a statement and the
// server then refusing the role's startups (connection limit 0: 53300):
//   * the connection reopened for the next write's BEGIN is paced (shared/progress/pool.ts): a handful of
//     attempts while the write waits 6 s for its BEGIN, where postgres.js reopened it at once after each
//     refusal (47 and 74 attempts in those 6 s in two runs on a loaded machine);
//   * the write that gives up replaces the pool: the write after it opens a connection of the new pool, whose
//     refused startup fails its BEGIN at once (503, "too many connections"), where its BEGIN queued behind
//     the stuck connection and it gave up too; once the server takes connections again, no BEGIN left queued
//     is sent (before, one was, and rolled back): only the next write's statements, answered 200;
//   * the pool closed while its connection reopens makes no connection attempt after close() (at most one on
//     its way), where postgres.js went on reopening it until end()'s 5 s timeout (36 and 59 attempts in two
//     runs), and once more.
// And the function's pool replaced (a write gave up waiting for its BEGIN: on a connection whose startups the
// server refuses, or held on its way when the test ends its wait, the store's beginDeadline), with two
// connections:
//   * a write whose BEGIN waited on the other connection, reopened with the 57P01 of its lost backend kept,
//     its startup held on its way until the replacement (the write's own wait has no end; the stuck write's
//     ends when the test aborts its deadline, not at a timer): the BEGIN, failed unsent with that error, is
//     sent again to the pool that replaced the stuck one, answered 200 and stored once, where it went to the
//     pool being ended (CONNECTION_ENDED, a 503);
//   * a write whose BEGIN waited on the other connection, reopened with that 57P01 kept and its startups
//     refused: the BEGIN, failed unsent as the ended pool opens nothing for it (CONNECTION_ENDED), is sent to
//     the pool that replaced the stuck one, answered 200 once the server takes startups and stored once,
//     where it was answered 503 (CONNECTION_ENDED);
//   * a write whose transaction is under way on the other connection: its client leaves, and its cancel
//     request is sent and stops the statement's wait (nothing stored), where the ended pool refused it and
//     the statement ran on to its timeout;
//   * with nothing under way on the replaced pool, close() resolves once no socket of its pools is open:
//     before the cut of another handler's close() called just before it (whose write, under way meanwhile,
//     commits after), where it waited out the replaced pool's 10 s, cut to 5 s (postgres.js ends a connection
//     with a kept query only at end()'s timeout), and the other handler's cut had destroyed that write.

import assert from "node:assert/strict";
import net from "node:net";
import postgres from "postgres";
import { createJwtVerifier } from "../../shared/auth/jwt.ts";
import { createProgressHandler } from "../../shared/progress/handler.ts";
import { progressWriteSchema } from "../../shared/progress/schemas.ts";
import { createProgressHandlerFromEnv } from "../../shared/progress/server.ts";
import { HttpError } from "../../shared/http/errors.ts";
import {
  createPostgresProgressStore,
  type PostgresStoreOptions,
  type ProgressStore,
} from "../../shared/progress/store.ts";
import { createTestUser, mintsTokens } from "../support/env.ts";
import {
  adminSql,
  type ApiAnswer,
  call,
  conflictRows,
  dataApiBulkUpsert,
  endHeld,
  errorOf,
  type Held,
  refusableRole,
  seriesId,
  serveLocal,
  testEnv,
  write,
} from "./support.ts";

/** Long enough that no wait here ends by a timeout before a hang guard fires. */
const LONG_TIMEOUT_MS = 120_000;

/** The hang guards: far below LONG_TIMEOUT_MS. */
const GUARD_MS = 30_000;

/** A store whose waits only a cancel (or the test) ends: lock and statement timeouts of LONG_TIMEOUT_MS. */
function longWaitStore(pool: postgres.Sql): ProgressStore {
  return createPostgresProgressStore(pool, {
    lockTimeoutMs: LONG_TIMEOUT_MS,
    statementTimeoutMs: LONG_TIMEOUT_MS,
  });
}

/** `userId`'s write of `series` (write()'s position) through `store`, as `authenticated`, ended by `signal`. */
function writeAs(store: ProgressStore, userId: string, series: string, signal: AbortSignal) {
  return store.write(
    { sub: userId, role: "authenticated" },
    progressWriteSchema.parse(write({ series_id: series })),
    undefined,
    signal,
  );
}

type LogEntry = Record<string, unknown>;

/** A log sink that keeps every entry, and tells when one of an event has come. */
function logRecorder() {
  const entries: LogEntry[] = [];
  const waiting: { event: string; resolve: (entry: LogEntry) => void }[] = [];
  return {
    entries,
    sink: (entry: LogEntry) => {
      entries.push(entry);
      for (const w of waiting.filter((w) => w.event === entry.event)) w.resolve(entry);
    },
    /** The first entry of `event` (one already logged, or the next), or a failure after GUARD_MS. */
    next(event: string): Promise<LogEntry> {
      const found = entries.find((e) => e.event === event);
      if (found) return Promise.resolve(found);
      const { promise, resolve } = Promise.withResolvers<LogEntry>();
      waiting.push({ event, resolve });
      return guarded(promise, `a ${event} log line (got ${JSON.stringify(entries.map((e) => e.event))})`);
    },
  };
}

/** `promise`, or a failure naming `what` when it has not settled within GUARD_MS (a hang guard). */
async function guarded<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const gaveUp = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${what} within ${GUARD_MS} ms`)), GUARD_MS);
  });
  try {
    return await Promise.race([promise, gaveUp]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `check` (every 10 ms) until it returns a value that is not undefined; a failure after GUARD_MS. */
async function until<T>(check: () => Promise<T | undefined>, what: string): Promise<T> {
  for (const deadline = Date.now() + GUARD_MS;;) {
    const value = await check();
    if (value !== undefined) return value;
    assert.ok(Date.now() < deadline, `${what}: not within ${GUARD_MS} ms`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * The progress handler over real HTTP with `store` (made on a pool whose backends carry
 * `applicationName`, so the test finds them in pg_stat_activity) and a recording log.
 */
async function withFunction(
  makeStore: (pool: postgres.Sql) => ProgressStore,
  applicationName: string,
  run: (base: string, log: ReturnType<typeof logRecorder>) => Promise<void>,
  poolOptions: { max?: number; debug?: (connection: number, query: string, parameters: unknown[]) => void } =
    {},
): Promise<void> {
  const env = testEnv();
  const pool = postgres(env.dbUrl, {
    max: 2,
    prepare: false,
    onnotice: () => {},
    connect_timeout: 5,
    connection: { application_name: applicationName },
    ...poolOptions,
  });
  const log = logRecorder();
  const handler = createProgressHandler({
    verifier: createJwtVerifier({ secret: env.jwtSecret, audience: "authenticated" }),
    store: makeStore(pool),
    log: log.sink,
  });
  const server = serveLocal(handler);
  try {
    await run(`${server.url}/progress`, log);
  } finally {
    await server.shutdown();
    await pool.end({ timeout: 5 });
  }
}

/**
 * A transaction of the user's on `holder` that wrote `series` (so it holds the user's write lock) and
 * stays open until `release()`: a device's write that does not end; `done` settles once it committed.
 */
async function userWriteInProgress(holder: postgres.Sql, userId: string, series: string): Promise<Held> {
  const release = Promise.withResolvers<void>();
  const wrote = Promise.withResolvers<void>();
  const done = holder.begin(async (tx) => {
    await tx`select set_config('role', 'authenticated', true),
      set_config('request.jwt.claims', ${JSON.stringify({ sub: userId, role: "authenticated" })}, true)`;
    await dataApiBulkUpsert(tx, [{
      user_id: userId,
      series_id: series,
      chapter: 5,
      page: 0,
      percentage: 0,
      device_id: "laptop",
      updated_at: new Date().toISOString(),
    }]);
    wrote.resolve();
    await release.promise;
  });
  done.catch(wrote.reject);
  await wrote.promise;
  return { release: () => release.resolve(), done };
}

/** The user's stored series among `series`, sorted. */
async function storedSeries(admin: postgres.Sql, userId: string, series: string[]): Promise<string[]> {
  const rows = await admin<{ series_id: string }[]>`
    select series_id from public.reading_progress where user_id = ${userId} and series_id = any(${series}::text[])
     order by series_id`;
  return rows.map((r) => r.series_id);
}

Deno.test({
  name:
    "a client that leaves while its batch waits for the user's other write: the wait is cancelled at once, " +
    "nothing is stored, request_cancelled is logged",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const applicationName = `readsync-client-gone-${crypto.randomUUID().slice(0, 8)}`;
    let held: Held | undefined;
    try {
      const user = await createTestUser();
      const [laptopSeries, s2, s3] = [seriesId("gone-held"), seriesId("gone-a"), seriesId("gone-b")];
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      held = await userWriteInProgress(holder, user.id, laptopSeries);
      const cancelledBatch = async (base: string, log: ReturnType<typeof logRecorder>) => {
        const body = { writes: [write({ series_id: s2 }), write({ series_id: s3 })] };
        const client = new AbortController();
        const sent = fetch(`${base}/batch`, {
          method: "POST",
          headers: { authorization: `Bearer ${user.accessToken}`, "content-type": "application/json" },
          body: JSON.stringify(body),
          signal: client.signal,
        });
        sent.catch(() => {}); // aborted below
        // The function's backend, seen waiting for the laptop's transaction.
        const pid = await until(async () => {
          const [row] = await admin<{ pid: number }[]>`
              select pid from pg_catalog.pg_stat_activity
               where application_name = ${applicationName}
                 and ${holderPid}::integer = any(pg_catalog.pg_blocking_pids(pid))`;
          return row?.pid;
        }, "the function's backend waiting for the user's other write");
        client.abort();
        await assert.rejects(sent, { name: "AbortError" });
        // It stops waiting while the laptop's transaction still holds the lock: idle, in no transaction,
        // holding no lock (its connection back in the pool). Before, it waited for the lock timeout.
        await until(async () => {
          const [row] = await admin<{ state: string | null; in_transaction: boolean; locks: number }[]>`
              select a.state, a.backend_xid is not null or a.xact_start is not null as in_transaction,
                     (select count(*)::integer from pg_catalog.pg_locks l where l.pid = a.pid) as locks
                from pg_catalog.pg_stat_activity a where a.pid = ${pid}::integer`;
          return row && row.state === "idle" && !row.in_transaction && row.locks === 0 ? true : undefined;
        }, "the function's backend idle, its wait ended, after the client left");
        const [{ holding }] = await admin<{ holding: boolean }[]>`
            select state = 'idle in transaction' as holding from pg_catalog.pg_stat_activity
             where pid = ${holderPid}::integer`;
        assert.ok(holding, "the laptop's transaction was still open: the wait did not end by its commit");

        const entry = await log.next("request_cancelled");
        assert.deepEqual(
          { level: entry.level, method: entry.method, path: entry.path, user_id: entry.user_id },
          { level: "info", method: "POST", path: "/progress/batch", user_id: user.id },
        );
        assert.equal(typeof entry.reason, "string");
        assert.ok(
          !log.entries.some((e) => e.event === "dependency_unavailable" || e.event === "request_failed"),
          `not logged as a failure: ${JSON.stringify(log.entries)}`,
        );

        held!.release();
        await held!.done;
        assert.deepEqual(
          await storedSeries(admin, user.id, [s2, s3]),
          [],
          "nothing of the batch was stored",
        );
        // Sent again, it lands whole.
        const again = await fetch(`${base}/batch`, {
          method: "POST",
          headers: { authorization: `Bearer ${user.accessToken}`, "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        assert.equal(again.status, 200, await again.text());
        assert.deepEqual(await storedSeries(admin, user.id, [s2, s3]), [s2, s3].sort());
      };
      await withFunction(
        longWaitStore,
        applicationName,
        async (base, log) => {
          // Released here too when an assertion fails, before the server's shutdown waits for the handler
          // (which, on code that does not cancel, still waits for the lock).
          try {
            await cancelledBatch(base, log);
          } finally {
            await endHeld(held);
          }
        },
      );
    } finally {
      await endHeld(held);
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

Deno.test({
  name:
    "a write that committed before the client left stays stored and is logged request_aborted with its 200",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    try {
      const user = await createTestUser();
      const series = seriesId("gone-committed");
      const committed = Promise.withResolvers<void>();
      await withFunction(
        (pool) => {
          const store = createPostgresProgressStore(pool);
          return {
            ...store,
            // The real write, committed; then its answer waits until the request's signal has aborted
            // (the client left in the meantime), so the abort comes after the commit, never before.
            write: async (claims, w, clock, signal) => {
              const result = await store.write(claims, w, clock, signal);
              committed.resolve();
              if (!signal) throw new Error("the handler gave the store no signal");
              if (!signal.aborted) {
                await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
              }
              return result;
            },
          };
        },
        `readsync-client-gone-${crypto.randomUUID().slice(0, 8)}`,
        async (base, log) => {
          const client = new AbortController();
          const sent = fetch(base, {
            method: "POST",
            headers: { authorization: `Bearer ${user.accessToken}`, "content-type": "application/json" },
            body: JSON.stringify(write({ series_id: series })),
            signal: client.signal,
          });
          sent.catch(() => {});
          await guarded(committed.promise, "commit of the write");
          client.abort();
          const entry = await log.next("request_aborted");
          assert.deepEqual(
            {
              level: entry.level,
              method: entry.method,
              path: entry.path,
              user_id: entry.user_id,
              status: entry.status,
            },
            { level: "info", method: "POST", path: "/progress", user_id: user.id, status: 200 },
          );
          assert.ok(!log.entries.some((e) => e.event === "request_cancelled"), JSON.stringify(log.entries));
          assert.deepEqual(
            await storedSeries(admin, user.id, [series]),
            [series],
            "the committed write stays",
          );
        },
      );
    } finally {
      await admin.end();
    }
  },
});

/**
 * A TCP proxy to the test database for a pool of one connection: the first connection (the pool's) is
 * forwarded; every later one (postgres.js's cancel requests, each on a connection of its own) is handled
 * as `later` says: "refuse" stops listening once the first came (the cancel's connection is refused),
 * "hold" forwards it only once `releaseLater()` was called (a cancel request slow on its way); the server
 * closes a cancel request's connection once it has signalled the backend.
 */
function databaseProxy(later: "refuse" | "hold") {
  const target = new URL(testEnv().dbUrl);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String((listener.addr as Deno.NetAddr).port);
  const conns: Deno.Conn[] = [];
  const laterCame = Promise.withResolvers<void>();
  const released = Promise.withResolvers<void>();
  const laterEnded = Promise.withResolvers<void>();
  const forward = async (conn: Deno.Conn) => {
    const upstream = await Deno.connect({ hostname: target.hostname, port: Number(target.port || 5432) });
    conns.push(upstream);
    await Promise.allSettled([
      conn.readable.pipeTo(upstream.writable),
      upstream.readable.pipeTo(conn.writable),
    ]);
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      if (conns.length === 1) {
        forward(conn).catch(() => {});
        if (later === "refuse") return listener.close();
      } else {
        laterCame.resolve();
        released.promise.then(() => forward(conn)).then(() => laterEnded.resolve(), () => {});
      }
    }
  })().catch(() => {});
  return {
    url: url.toString(),
    /**
     * Settles once a later connection (a cancel request) has come. Guarded from when it is asked for: a
     * guard started with the proxy rejected, unhandled, 30 s later in "refuse" mode (no later connection is
     * ever taken), failing the test module if its tests ran that long.
     */
    get laterCame() {
      return guarded(laterCame.promise, "cancel request's connection");
    },
    /** Forwards the held connections; settles once the first of them has ended (the request delivered). */
    releaseLater: () => {
      released.resolve();
      return guarded(laterEnded.promise, "end of the cancel request's connection");
    },
    async close() {
      released.resolve();
      try {
        listener.close();
      } catch { /* closed already */ }
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed already */ }
      }
      await accepting;
    },
  };
}

/**
 * A store's pool as the function makes it behind a transaction-mode pooler (`prepare: false`), of one
 * connection to `url` (the database, or a proxy in front of it), its backend named `applicationName` when
 * given; `options` adds to or overrides these.
 */
function onePool(url: string, applicationName?: string, options: postgres.Options<never> = {}): postgres.Sql {
  return postgres(url, {
    max: 1,
    prepare: false,
    onnotice: () => {},
    connect_timeout: 5,
    ...(applicationName === undefined ? {} : { connection: { application_name: applicationName } }),
    ...options,
  });
}

/** The backend of `applicationName`'s pool, once it waits for `holderPid`'s transaction. */
function waitingBackend(admin: postgres.Sql, applicationName: string, holderPid: number): Promise<number> {
  return until(async () => {
    const [row] = await admin<{ pid: number }[]>`
        select pid from pg_catalog.pg_stat_activity
         where application_name = ${applicationName}
           and ${holderPid}::integer = any(pg_catalog.pg_blocking_pids(pid))`;
    return row?.pid;
  }, "the store's backend waiting for the user's other write");
}

Deno.test({
  name: "a cancel request whose connection is refused rejects nothing unhandled: the write goes on and lands",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const proxy = databaseProxy("refuse");
    const applicationName = `readsync-cancel-refused-${crypto.randomUUID().slice(0, 8)}`;
    const pool = onePool(proxy.url, applicationName);
    let held: Held | undefined;
    try {
      const user = await createTestUser();
      const [heldSeries, series] = [seriesId("refused-held"), seriesId("refused")];
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      held = await userWriteInProgress(holder, user.id, heldSeries);
      const store = longWaitStore(pool);
      const client = new AbortController();
      const writing = writeAs(store, user.id, series, client.signal);
      writing.catch(() => {}); // awaited below
      await waitingBackend(admin, applicationName, holderPid);
      // Its cancel request's connection is refused: before, postgres.js's rejection of it was unhandled
      // (the test failed with that uncaught error: "connect ECONNREFUSED").
      client.abort();
      held.release();
      await held.done;
      const result = await guarded(writing, "answer of the write");
      assert.deepEqual({ won: result.won, series_id: result.progress.series_id }, {
        won: true,
        series_id: series,
      });
      assert.deepEqual(await storedSeries(admin, user.id, [series]), [series]);
    } finally {
      await endHeld(held);
      await pool.end({ timeout: 5 });
      await proxy.close();
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

Deno.test({
  name: "a cancel request still on its way when its statement ends cancels no one's next statement",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holders = [0, 1].map(() => postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} }));
    const proxy = databaseProxy("hold");
    const applicationName = `readsync-cancel-late-${crypto.randomUUID().slice(0, 8)}`;
    const pool = onePool(proxy.url, applicationName);
    const helds: Held[] = [];
    try {
      const [left, stayed] = [await createTestUser(), await createTestUser()];
      const [leftSeries, stayedSeries] = [seriesId("late-left"), seriesId("late-stayed")];
      const holderPids = await Promise.all(
        holders.map(async (h) => (await h<{ pid: number }[]>`select pg_backend_pid() as pid`)[0].pid),
      );
      helds.push(await userWriteInProgress(holders[0], left.id, seriesId("late-held-left")));
      helds.push(await userWriteInProgress(holders[1], stayed.id, seriesId("late-held-stayed")));
      const store = longWaitStore(pool);
      // The write of a client that leaves, waiting for its user's other write.
      const client = new AbortController();
      let leftSettled = false;
      const leaving = writeAs(store, left.id, leftSeries, client.signal).finally(() => leftSettled = true);
      leaving.catch(() => {}); // awaited below
      const pid = await waitingBackend(admin, applicationName, holderPids[0]);
      client.abort();
      await proxy.laterCame; // its cancel request, held on its way
      helds[0].release(); // so its statement ends on its own
      await helds[0].done;
      // Another user's write on the pool's one connection, waiting for that user's other write.
      const staying = writeAs(store, stayed.id, stayedSeries, new AbortController().signal);
      staying.catch(() => {}); // awaited below
      // Before, the connection went back to the pool at once and the other write ran on the same
      // backend: it waits there now. Now the backend stays idle in the first write's transaction until
      // the cancel request has arrived (seen so twice in a row, unchanged, with that write unanswered).
      let idleSince: string | undefined;
      const where = await until(async () => {
        const [row] = await admin<{ state: string; state_change: string; waits: boolean }[]>`
            select state, state_change::text,
                   ${holderPids[1]}::integer = any(pg_catalog.pg_blocking_pids(pid)) as waits
              from pg_catalog.pg_stat_activity where pid = ${pid}::integer`;
        if (row.waits) return "the other write waits on the backend";
        if (row.state === "idle in transaction" && !leftSettled) {
          if (idleSince === row.state_change) return "idle in the first write's transaction";
          idleSince = row.state_change;
        } else idleSince = undefined;
      }, "the backend running the other write, or idle in the first one's transaction");
      // The cancel request arrives, before the other user's write could end.
      await proxy.releaseLater();
      helds[1].release();
      await helds[1].done;
      const [stayedResult, leftResult] = await Promise.allSettled([
        guarded(staying, "answer of the other user's write"),
        guarded(leaving, "answer of the write of the client that left"),
      ]);
      assert.equal(
        stayedResult.status,
        "fulfilled",
        `the other user's write (${where}) is not cancelled by the first one's cancel request: ${
          stayedResult.status === "rejected" ? stayedResult.reason : ""
        }`,
      );
      assert.equal(where, "idle in the first write's transaction");
      // Its statement had ended: the cancel request, arriving with the backend idle, cancelled nothing,
      // and the write committed.
      assert.equal(leftResult.status, "fulfilled", String((leftResult as PromiseRejectedResult).reason));
      assert.deepEqual(await storedSeries(admin, left.id, [leftSeries]), [leftSeries]);
      assert.deepEqual(await storedSeries(admin, stayed.id, [stayedSeries]), [stayedSeries]);
    } finally {
      for (const held of helds) await endHeld(held);
      await pool.end({ timeout: 5 });
      await proxy.close();
      await Promise.all([...holders.map((h) => h.end()), admin.end()]);
    }
  },
});

Deno.test({
  name: "a client that leaves while its request waits for a pooled connection: the request ends at once, " +
    "request_cancelled, having sent nothing to the database",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const applicationName = `readsync-client-gone-queued-${crypto.randomUUID().slice(0, 8)}`;
    let held: Held | undefined;
    try {
      const [first, leaving] = [await createTestUser(), await createTestUser()];
      const [firstSeries, leavingSeries] = [seriesId("queued-first"), seriesId("queued-leaving")];
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      held = await userWriteInProgress(holder, first.id, seriesId("queued-held"));
      // Every statement the function's pool sends, with its parameters.
      const sent: { query: string; parameters: unknown[] }[] = [];
      // The calls that reached the store, by series.
      const reached = new Map<string, PromiseWithResolvers<void>>();
      const reachedStore = (series: string) => {
        if (!reached.has(series)) reached.set(series, Promise.withResolvers<void>());
        return reached.get(series)!;
      };
      await withFunction(
        (pool) => {
          const store = longWaitStore(pool);
          return {
            ...store,
            write: (claims, w, clock, signal) => {
              reachedStore(w.series_id).resolve();
              return store.write(claims, w, clock, signal);
            },
          };
        },
        applicationName,
        async (base, log) => {
          try {
            // The first user's write takes the pool's one connection and waits there for that user's
            // other write.
            const firstSent = fetch(base, {
              method: "POST",
              headers: { authorization: `Bearer ${first.accessToken}`, "content-type": "application/json" },
              body: JSON.stringify(write({ series_id: firstSeries })),
            });
            firstSent.catch(() => {}); // awaited below
            const firstPid = await waitingBackend(admin, applicationName, holderPid);
            // The other user's write reaches the store and waits for the connection; its client leaves.
            const client = new AbortController();
            const leavingSent = fetch(base, {
              method: "POST",
              headers: { authorization: `Bearer ${leaving.accessToken}`, "content-type": "application/json" },
              body: JSON.stringify(write({ series_id: leavingSeries })),
              signal: client.signal,
            });
            leavingSent.catch(() => {}); // aborted below
            await guarded(reachedStore(leavingSeries).promise, "the leaving write's call of the store");
            client.abort();
            await assert.rejects(leavingSent, { name: "AbortError" });
            // It ends while the pool's connection is still busy: before, it kept its place until the first
            // write had ended (here: never, the test's guard).
            const entry = await log.next("request_cancelled");
            assert.deepEqual(
              { level: entry.level, method: entry.method, path: entry.path, user_id: entry.user_id },
              { level: "info", method: "POST", path: "/progress", user_id: leaving.id },
            );
            const [{ waits }] = await admin<{ waits: boolean }[]>`
              select ${holderPid}::integer = any(pg_catalog.pg_blocking_pids(${firstPid}::integer)) as waits`;
            assert.ok(waits, "the first write still waited for the lock when the other one ended");

            held!.release();
            await held!.done;
            const firstAnswer = await guarded(firstSent, "answer of the first write");
            assert.equal(firstAnswer.status, 200, await firstAnswer.text());
            assert.deepEqual(await storedSeries(admin, first.id, [firstSeries]), [firstSeries]);
            assert.deepEqual(await storedSeries(admin, leaving.id, [leavingSeries]), [], "nothing stored");
            // Nothing of the leaving request reached the database: one transaction was begun on the pool
            // (the first write's), and no statement named the leaving user or series.
            assert.equal(sent.filter((s) => /^\s*begin\b/i.test(s.query)).length, 1, JSON.stringify(sent));
            const named = sent.filter((s) =>
              JSON.stringify(s.parameters).includes(leavingSeries) ||
              JSON.stringify(s.parameters).includes(leaving.id)
            );
            assert.deepEqual(named, [], "no statement of the leaving request");
            assert.ok(
              !log.entries.some((e) => e.event === "dependency_unavailable" || e.event === "request_failed"),
              `not logged as a failure: ${JSON.stringify(log.entries)}`,
            );
          } finally {
            await endHeld(held);
          }
        },
        { max: 1, debug: (_connection, query, parameters) => sent.push({ query, parameters }) },
      );
    } finally {
      await endHeld(held);
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

/**
 * An AbortSignal that counts the abort listeners added to it and not yet removed (`live`); a listener
 * added with `once` counts as removed once the signal aborted, as the signal drops it then.
 */
function recordingSignal() {
  const controller = new AbortController();
  const signal = controller.signal;
  const live = new Set<unknown>();
  const once = new Set<unknown>();
  let added = 0;
  const add = signal.addEventListener.bind(signal);
  const remove = signal.removeEventListener.bind(signal);
  add("abort", () => {
    for (const listener of once) live.delete(listener);
    once.clear();
  });
  signal.addEventListener = ((
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | AddEventListenerOptions,
  ) => {
    if (type === "abort" && !live.has(listener)) {
      added++;
      live.add(listener);
      if (typeof options === "object" && options.once) once.add(listener);
    }
    add(type, listener, options);
  }) as typeof signal.addEventListener;
  signal.removeEventListener = ((
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | EventListenerOptions,
  ) => {
    if (type === "abort") {
      live.delete(listener);
      once.delete(listener);
    }
    remove(type, listener, options);
  }) as typeof signal.removeEventListener;
  return {
    signal,
    abort: (reason?: unknown) => controller.abort(reason),
    get added() {
      return added;
    },
    get live() {
      return live.size;
    },
  };
}

Deno.test({
  name: "every store call removes the listeners it added to its signal: answered, failed, thrown, aborted, " +
    "cancelled, waiting for a connection then answered or left",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const applicationName = `readsync-listeners-${crypto.randomUUID().slice(0, 8)}`;
    const pool = onePool(testEnv().dbUrl, applicationName);
    const helds: Held[] = [];
    try {
      const [user, other] = [await createTestUser(), await createTestUser()];
      const claims = { sub: user.id, role: "authenticated" };
      const otherClaims = { sub: other.id, role: "authenticated" };
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      const store = longWaitStore(pool);
      const parsed = (series: string) => progressWriteSchema.parse(write({ series_id: series }));
      const outcomes: Record<string, { added: number; live: number; outcome: string }> = {};
      const settle = async (
        name: string,
        recorder: ReturnType<typeof recordingSignal>,
        call: Promise<unknown>,
      ) => {
        const outcome = await guarded(
          call.then(() => "answered", (e) => e instanceof HttpError ? `${e.name} ${e.status}` : String(e)),
          `end of the ${name} call`,
        );
        outcomes[name] = { added: recorder.added, live: recorder.live, outcome };
      };

      const answered = recordingSignal();
      await settle(
        "answered",
        answered,
        store.write(claims, parsed(seriesId("listeners-a")), undefined, answered.signal),
      );

      // The database refuses a batch of no writes (22023): a 422.
      const failed = recordingSignal();
      await settle("failed", failed, store.writeBatch(claims, [], undefined, failed.signal));

      // Claims JSON cannot write (a BigInt): a TypeError in the transaction, a 500.
      const thrown = recordingSignal();
      await settle(
        "thrown",
        thrown,
        store.get({ ...claims, n: 1n } as unknown as typeof claims, "s", undefined, thrown.signal),
      );

      const aborted = recordingSignal();
      aborted.abort(new Error("gone before"));
      await settle(
        "aborted",
        aborted,
        store.list(claims, { limit: 5, includeCleared: false }, undefined, aborted.signal),
      );

      // A write waiting for the user's other write, cancelled.
      helds.push(await userWriteInProgress(holder, user.id, seriesId("listeners-held-1")));
      const cancelled = recordingSignal();
      const cancelledCall = store.write(claims, parsed(seriesId("listeners-c")), undefined, cancelled.signal);
      cancelledCall.catch(() => {}); // settled below
      await waitingBackend(admin, applicationName, holderPid);
      cancelled.abort(new Error("gone while waiting"));
      await settle("cancelled", cancelled, cancelledCall);

      // A write waiting for the user's other write holds the pool's one connection; another user's read
      // waits for it, and gets it once that write landed.
      const ahead = store.write(
        claims,
        parsed(seriesId("listeners-ahead-1")),
        undefined,
        new AbortController().signal,
      );
      ahead.catch(() => {}); // awaited below
      await waitingBackend(admin, applicationName, holderPid);
      const queued = recordingSignal();
      const queuedCall = store.get(otherClaims, "s", undefined, queued.signal);
      queuedCall.catch(() => {}); // settled below
      helds[0].release();
      await helds[0].done;
      await guarded(ahead, "answer of the write ahead");
      await settle("queued, answered", queued, queuedCall);

      // The same, but the read's client leaves while it waits: it ends while the connection is still busy.
      helds.push(await userWriteInProgress(holder, user.id, seriesId("listeners-held-2")));
      const ahead2 = store.write(claims, parsed(seriesId("listeners-ahead-2")), undefined, undefined);
      ahead2.catch(() => {}); // awaited below
      const aheadPid = await waitingBackend(admin, applicationName, holderPid);
      const left = recordingSignal();
      const leftCall = store.get(otherClaims, "s", undefined, left.signal);
      leftCall.catch(() => {}); // settled below
      left.abort(new Error("gone while queued"));
      await settle("queued, left", left, leftCall);
      const [{ waits }] = await admin<{ waits: boolean }[]>`
        select ${holderPid}::integer = any(pg_catalog.pg_blocking_pids(${aheadPid}::integer)) as waits`;
      assert.ok(waits, "the write ahead still held the pool's connection when the queued read ended");
      helds[1].release();
      await helds[1].done;
      await guarded(ahead2, "answer of the second write ahead");

      assert.deepEqual(
        Object.fromEntries(
          Object.entries(outcomes).map(([name, o]) => [name, { live: o.live, outcome: o.outcome }]),
        ),
        {
          answered: { live: 0, outcome: "answered" },
          failed: { live: 0, outcome: "HttpError 422" },
          thrown: { live: 0, outcome: "HttpError 500" },
          aborted: { live: 0, outcome: "CallCancelledError 503" },
          cancelled: { live: 0, outcome: "CallCancelledError 503" },
          "queued, answered": { live: 0, outcome: "answered" },
          "queued, left": { live: 0, outcome: "CallCancelledError 503" },
        },
      );
      // The calls that ran a statement listened while it ran; the one aborted before it began added none.
      for (const name of ["answered", "failed", "cancelled", "queued, answered"]) {
        assert.ok(outcomes[name].added > 0, `${name}: ${JSON.stringify(outcomes[name])}`);
      }
      assert.equal(outcomes.aborted.added, 0);
    } finally {
      for (const held of helds) await endHeld(held);
      await pool.end({ timeout: 5 });
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

Deno.test({
  name: "a refused cancel request leaves the pool's reconnect delay as it was: backoff(0), not backoff(1)",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const proxy = databaseProxy("refuse");
    const applicationName = `readsync-cancel-backoff-${crypto.randomUUID().slice(0, 8)}`;
    // The failure count each closing connection's backoff is asked for (postgres.js's `backoff` option: the
    // seconds a closed connection waits before it may connect again). 0 s here, so that nothing waits.
    const backoffs: number[] = [];
    const pool = onePool(proxy.url, applicationName, {
      backoff: (retries: number) => {
        backoffs.push(retries);
        return 0;
      },
    });
    let held: Held | undefined;
    try {
      const user = await createTestUser();
      const series = seriesId("backoff");
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      held = await userWriteInProgress(holder, user.id, seriesId("backoff-held"));
      const store = longWaitStore(pool);
      const client = new AbortController();
      const writing = writeAs(store, user.id, series, client.signal);
      writing.catch(() => {}); // awaited below
      const pid = await waitingBackend(admin, applicationName, holderPid);
      client.abort(); // its cancel request's connection is refused
      held.release();
      await held.done;
      await guarded(writing, "answer of the write");
      // The pool's connection closes (its backend ended by the server): the delay it then computes is the
      // one the pool's next request would wait for, were that connection the one it needed.
      const before = backoffs.length;
      await admin`select pg_catalog.pg_terminate_backend(${pid}::integer)`;
      const retries = await until(
        () => Promise.resolve(backoffs.length > before ? backoffs[before] : undefined),
        "the pool's connection closed",
      );
      assert.equal(
        retries,
        0,
        `the pool's closed connection counts ${retries} failed connection(s) (all backoffs: ${
          JSON.stringify(backoffs)
        }): the refused cancel request counted among the pool's own`,
      );
    } finally {
      await endHeld(held);
      await pool.end({ timeout: 5 });
      await proxy.close();
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

/** A postgres.js query as the abort hook below reads it (postgres.js 3.4.9's Query). */
interface QueryInside {
  strings?: readonly string[];
  state: unknown;
  active: boolean;
}

/**
 * Aborts `controller` at one moment of the first query whose text includes `text`, on any pool: "awaited"
 * (the store's await has asked for its answer, and postgres.js has not yet handed it to its connection:
 * that happens a microtask later) or "answered" (its answer has come, and the store's await has not yet
 * gone on). Another task's abort can come in either gap (a signal aborts from whatever code runs then).
 * Hooks postgres.js's Query#then until `restore()`; `met` tells what the query was when the abort came, so
 * that a test can tell the moment was met (were the hook to miss, under another version of postgres.js).
 */
function abortAtQuery(
  pool: postgres.Sql,
  text: string,
  moment: "awaited" | "answered",
  controller: AbortController,
) {
  const prototype = Object.getPrototypeOf(pool`select 1`) as { then: (...args: unknown[]) => unknown };
  const then = prototype.then;
  let met: { sent: boolean; active: boolean } | undefined;
  let hooked = false;
  const abort = (query: QueryInside) => {
    met = { sent: query.state !== null, active: query.active };
    controller.abort(new Error(`gone as the query was ${moment}`));
  };
  prototype.then = function (this: QueryInside, ...args: unknown[]) {
    if (!hooked && this.strings?.join("?").includes(text)) {
      hooked = true;
      if (moment === "awaited") abort(this);
      else Promise.prototype.then.call(this, () => abort(this), () => abort(this));
    }
    return then.apply(this, args);
  };
  return {
    get met() {
      return met;
    },
    restore: () => {
      prototype.then = then;
    },
  };
}

for (
  const { moment, text, outcome, met, stored } of [
    {
      moment: "awaited" as const,
      text: "set_config('role'",
      outcome: "CallCancelledError 503",
      met: { sent: false, active: false },
      stored: false,
    },
    {
      moment: "answered" as const,
      text: "public.write_reading_progress(",
      outcome: "answered",
      met: { sent: true, active: false },
      stored: true,
    },
  ]
) {
  Deno.test({
    name: `a signal that aborts as a statement is ${moment} (not running on its connection) ends the call ` +
      `(${outcome}) and leaves the pool's connection and turn free`,
    ignore: !mintsTokens,
    fn: async () => {
      const admin = adminSql({ max: 1 });
      const pool = onePool(testEnv().dbUrl);
      const client = new AbortController();
      const hook = abortAtQuery(pool, text, moment, client);
      try {
        const user = await createTestUser();
        const claims = { sub: user.id, role: "authenticated" };
        const [series, next] = [seriesId(`abort-${moment}`), seriesId(`abort-${moment}-next`)];
        const store = createPostgresProgressStore(pool);
        // Before: "awaited": postgres.js's cancel(query) rejected the statement it had not sent, which its
        // connection then skipped, and the transaction's ROLLBACK waited forever behind it; "answered": the
        // cancel of a statement that had answered waited for a turn that never came. Either way the call
        // never ended, its turn (the pool's only one) and connection never came back.
        const ended = await guarded(
          store.write(
            claims,
            progressWriteSchema.parse(write({ series_id: series })),
            undefined,
            client.signal,
          )
            .then(() => "answered", (e) => e instanceof HttpError ? `${e.name} ${e.status}` : String(e)),
          `end of the call aborted as its statement was ${moment}`,
        );
        hook.restore();
        assert.deepEqual(hook.met, met, "the abort came at the moment the test means");
        assert.equal(ended, outcome);
        assert.deepEqual(await storedSeries(admin, user.id, [series]), stored ? [series] : []);
        // The pool's one connection and turn are free: the user's next write lands.
        const result = await guarded(
          store.write(claims, progressWriteSchema.parse(write({ series_id: next }))),
          "answer of the next write on the pool",
        );
        assert.equal(result.won, true);
      } finally {
        hook.restore();
        await pool.end({ timeout: 5 });
        await admin.end();
      }
    },
  });
}

Deno.test({
  name:
    "a signal that aborts as a write that will wait for the user's other write is awaited (not yet on its " +
    "connection) still cancels it in the database once it runs",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const pool = onePool(testEnv().dbUrl);
    const client = new AbortController();
    const hook = abortAtQuery(pool, "public.write_reading_progress(", "awaited", client);
    let held: Held | undefined;
    try {
      const user = await createTestUser();
      const series = seriesId("abort-awaited-waits");
      held = await userWriteInProgress(holder, user.id, seriesId("abort-awaited-held"));
      const store = longWaitStore(pool);
      // The other write stays open until the call has ended: only a cancel request can end the wait (the
      // hang guard ends the test first). Sending none for an abort that came before the handover (dropping
      // it rather than waiting for the statement to run) would leave the write waiting there.
      const ended = await guarded(
        writeAs(store, user.id, series, client.signal).then(
          () => "answered",
          (e) => e instanceof HttpError ? `${e.name} ${e.status}` : String(e),
        ),
        "end of the write aborted as it was awaited, while the user's other write is open",
      );
      hook.restore();
      assert.deepEqual(hook.met, { sent: false, active: false }, "the abort came before the handover");
      assert.equal(ended, "CallCancelledError 503");
      held.release();
      await held.done;
      assert.deepEqual(await storedSeries(admin, user.id, [series]), []);
    } finally {
      hook.restore();
      await endHeld(held);
      await pool.end({ timeout: 5 });
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

/**
 * A TCP proxy to the test database for a pool of one connection, every connection forwarded: on the
 * first (the pool's), once the client has sent a message that holds `marker` (the Parse of the statement
 * that text names), `hold` says what is held until release(): "answer", what the server answers after it
 * (the backend has answered that statement's Parse and Describe and waits for its Bind, which postgres.js
 * sends only once it has that answer); "statement", that message and what the client sends after it (the
 * statement never reaches the backend, idle in the call's transaction: no timeout of the statement runs).
 * Every later connection (a cancel request, on a connection of its own) is forwarded, the first at once, the
 * others once letCancelsThrough() was called (so that a test can choose when they reach the backend);
 * `cancels` counts those that came, cancelsEnded(n) settles once n of them have ended (the server closes a
 * cancel request's connection once it has signalled the backend: the request has arrived).
 */
function statementHoldingProxy(marker: string, hold: "answer" | "statement" = "answer") {
  const target = new URL(testEnv().dbUrl);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const url = new URL(target);
  url.hostname = "127.0.0.1";
  url.port = String((listener.addr as Deno.NetAddr).port);
  const conns: Deno.Conn[] = [];
  const pumps: Promise<unknown>[] = [];
  const latin1 = new TextDecoder("latin1");
  let seen = ""; // the client's last bytes, so that a marker split between two reads is found
  let holding = false;
  let released = false;
  const held: Uint8Array[] = [];
  const heldCame = Promise.withResolvers<void>();
  let toClient: WritableStreamDefaultWriter<Uint8Array> | undefined;
  let toServer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  let cancels = 0;
  let ended = 0;
  const endWaiters: { n: number; resolve: () => void }[] = [];
  const connect = async () => {
    const upstream = await Deno.connect({ hostname: target.hostname, port: Number(target.port || 5432) });
    conns.push(upstream);
    return upstream;
  };
  const pool = async (conn: Deno.Conn) => {
    const upstream = await connect();
    toClient = conn.writable.getWriter();
    toServer = upstream.writable.getWriter();
    const clientToServer = (async () => {
      for await (const chunk of conn.readable) {
        if (!holding) {
          seen = (seen + latin1.decode(chunk)).slice(-(marker.length + chunk.length));
          if (seen.includes(marker)) holding = true;
        }
        if (hold === "statement" && holding && !released) {
          held.push(chunk);
          heldCame.resolve();
        } else await toServer!.write(chunk);
      }
    })();
    const serverToClient = (async () => {
      for await (const chunk of upstream.readable) {
        if (hold === "answer" && holding && !released) {
          held.push(chunk);
          heldCame.resolve();
        } else await toClient!.write(chunk);
      }
    })();
    await Promise.allSettled([clientToServer, serverToClient]);
  };
  const cancelsLetThrough = Promise.withResolvers<void>();
  const cancelRequest = async (conn: Deno.Conn) => {
    cancels++;
    if (cancels > 1) await cancelsLetThrough.promise;
    const upstream = await connect();
    await Promise.allSettled([
      conn.readable.pipeTo(upstream.writable),
      upstream.readable.pipeTo(conn.writable),
    ]);
    ended++;
    for (const waiter of endWaiters.filter((w) => w.n <= ended)) waiter.resolve();
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      conns.push(conn);
      pumps.push((conns.length === 1 ? pool(conn) : cancelRequest(conn)).catch(() => {}));
    }
  })().catch(() => {});
  return {
    url: url.toString(),
    get cancels() {
      return cancels;
    },
    /** Settles once the proxy holds something (`hold`'s). */
    get holds() {
      return guarded(heldCame.promise, `the marked statement's ${hold}, held`);
    },
    /** Settles once `n` cancel requests have ended. */
    cancelsEnded(n: number): Promise<void> {
      if (ended >= n) return Promise.resolve();
      const { promise, resolve } = Promise.withResolvers<void>();
      endWaiters.push({ n, resolve });
      return guarded(promise, `end of cancel request ${n}`);
    },
    /** Forwards the cancel requests after the first, those held and those to come. */
    letCancelsThrough: () => cancelsLetThrough.resolve(),
    /** Sends what was held on, and everything after it as it comes. */
    async release() {
      released = true;
      const to = hold === "answer" ? toClient! : toServer!;
      for (const chunk of held.splice(0)) await to.write(chunk);
    },
    async close() {
      released = true;
      cancelsLetThrough.resolve();
      try {
        listener.close();
      } catch { /* closed already */ }
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed already */ }
      }
      await accepting;
      await Promise.allSettled(pumps);
    },
  };
}

Deno.test({
  name:
    "a cancel request that reaches the backend between a statement's Parse and its Bind (prepare: false) " +
    "is sent again once the Execute is written: the write waiting for the user's other write is cancelled",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const proxy = statementHoldingProxy("public.write_reading_progress(");
    const applicationName = `readsync-cancel-parse-${crypto.randomUUID().slice(0, 8)}`;
    const pool = onePool(proxy.url, applicationName);
    let held: Held | undefined;
    try {
      const user = await createTestUser();
      const series = seriesId("cancel-parse");
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      held = await userWriteInProgress(holder, user.id, seriesId("cancel-parse-held"));
      const store = longWaitStore(pool);
      const client = new AbortController();
      const writing = writeAs(store, user.id, series, client.signal);
      writing.catch(() => {}); // awaited below
      // The write's Parse and Describe answered, that answer held: its backend waits for the Bind.
      await proxy.holds;
      client.abort(new Error("gone during the write's Parse round trip"));
      // Its cancel request has arrived at a backend reading from its client: PostgreSQL ignored it.
      await proxy.cancelsEnded(1);
      // The answer goes on, postgres.js sends the Bind and Execute, and the write waits for the lock; a
      // cancel request sent after that one reaches the backend only then (the store sends it once the
      // Execute is written: in the function it would come after it, here the test sees to that). The
      // user's other write stays open until the call has ended: only a cancel request can end the wait
      // (the hang guard ends the test first). Before, the one request had been ignored and the write
      // waited on.
      await proxy.release();
      await waitingBackend(admin, applicationName, holderPid);
      proxy.letCancelsThrough();
      const ended = await guarded(
        writing.then(() => "answered", (e) => e instanceof HttpError ? `${e.name} ${e.status}` : String(e)),
        "end of the write whose cancel request came during its Parse round trip, while the user's other " +
          "write is open",
      );
      assert.equal(ended, "CallCancelledError 503");
      assert.equal(proxy.cancels, 2, "the request, and once more when the Execute was written");
      held.release();
      await held.done;
      assert.deepEqual(await storedSeries(admin, user.id, [series]), [], "nothing of the write was stored");
    } finally {
      await endHeld(held);
      await pool.end({ timeout: 5 });
      await proxy.close();
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

/**
 * `req` with a signal of its own that aborts when req's does (with its reason), and that resolves
 * `listened` when the function first adds an abort listener to it.
 */
function withListenedSignal(req: Request, listened: () => void): Request {
  const follows = new AbortController();
  const original = req.signal;
  if (original.aborted) follows.abort(original.reason);
  else original.addEventListener("abort", () => follows.abort(original.reason), { once: true });
  const signal = follows.signal;
  const add = signal.addEventListener.bind(signal);
  signal.addEventListener = ((...args: Parameters<AbortSignal["addEventListener"]>) => {
    if (args[0] === "abort") listened();
    add(...args);
  }) as AbortSignal["addEventListener"];
  Object.defineProperty(req, "signal", { value: signal });
  return req;
}

Deno.test({
  name:
    "the function's own pool (createProgressHandlerFromEnv) is reached through its store alone: with its " +
    "one connection busy, a read waits in the store's line, sends nothing, and ends at once when its client leaves",
  ignore: !mintsTokens,
  fn: async () => {
    const env = testEnv();
    const admin = adminSql({ max: 1 });
    // The pool's one connection is kept busy by a write whose statement the proxy holds on its way: the
    // call runs it, its backend idle in the transaction, with no timeout of the database running.
    const proxy = statementHoldingProxy("public.write_reading_progress(", "statement");
    const applicationName = `readsync-own-pool-${crypto.randomUUID().slice(0, 8)}`;
    // The pool server.ts makes, its backends named so (the URL's application_name wins in postgres.js).
    const dbUrl = new URL(proxy.url);
    dbUrl.searchParams.set("application_name", applicationName);
    const vars: Record<string, string> = {
      PROGRESS_DB_URL: dbUrl.toString(),
      PROGRESS_DB_POOL_MAX: "1",
      SUPABASE_JWT_SECRET: env.jwtSecret ?? "",
    };
    const log = logRecorder();
    const handler = createProgressHandlerFromEnv({ get: (name) => vars[name] }, { log: log.sink });
    // The function listens to a request's signal, by the request's x-test-request header.
    const listened = new Map<string, PromiseWithResolvers<void>>();
    const listenedTo = (name: string) => {
      if (!listened.has(name)) listened.set(name, Promise.withResolvers<void>());
      return listened.get(name)!;
    };
    const server = serveLocal((req) => {
      const name = req.headers.get("x-test-request");
      return handler(name ? withListenedSignal(req, () => listenedTo(name).resolve()) : req);
    });
    const base = `${server.url}/progress`;
    try {
      const [first, reader] = [await createTestUser(), await createTestUser()];
      const firstSeries = seriesId("own-pool-first");
      // The first user's write takes the pool's one connection; its statement is held on its way.
      let firstSettled = false;
      const firstSent = fetch(base, {
        method: "POST",
        headers: { authorization: `Bearer ${first.accessToken}`, "content-type": "application/json" },
        body: JSON.stringify(write({ series_id: firstSeries })),
      }).finally(() => firstSettled = true);
      firstSent.catch(() => {}); // awaited below
      await proxy.holds;
      const [{ pid: firstPid }] = await admin<{ pid: number }[]>`
        select pid from pg_catalog.pg_stat_activity where application_name = ${applicationName}`;
      const reads = { get: `${base}/series/${seriesId("own-pool-read")}`, list: `${base}?limit=5` };
      for (const [name, readUrl] of Object.entries(reads)) {
        const client = new AbortController();
        const sent = fetch(readUrl, {
          headers: { authorization: `Bearer ${reader.accessToken}`, "x-test-request": name },
          signal: client.signal,
        });
        sent.catch(() => {}); // aborted below
        // The first listener the function adds to a read's signal is the store's: its turn's, while it
        // waits in the line (a statement's comes only once it has the connection). A query of the pool
        // outside the store (a health check, the server's own) would wait in postgres.js's queue, where
        // nothing listens and nothing leaves, and this would not come.
        await guarded(listenedTo(name).promise, `the ${name} read listening to its signal`);
        const backends = await admin<{ pid: number; state: string }[]>`
          select pid, state from pg_catalog.pg_stat_activity where application_name = ${applicationName}`;
        assert.deepEqual(
          backends.map(({ pid, state }) => ({ pid, state })),
          [{ pid: firstPid, state: "idle in transaction" }],
          "the pool's one backend, in the first write's transaction: nothing of the read was sent",
        );
        client.abort();
        await assert.rejects(sent, { name: "AbortError" });
        const path = new URL(readUrl).pathname;
        const entry = await until(
          () => Promise.resolve(log.entries.find((e) => e.event === "request_cancelled" && e.path === path)),
          `a request_cancelled line for the ${name} read`,
        );
        assert.equal(entry.user_id, reader.id);
        assert.ok(!firstSettled, `the first write still held the connection when the ${name} read ended`);
      }
      await proxy.release();
      const firstAnswer = await guarded(firstSent, "answer of the first write");
      assert.equal(firstAnswer.status, 200, await firstAnswer.text());
      // The line gave every turn back: the reads, sent again, are answered.
      const answered: Record<string, number> = {};
      for (const [name, readUrl] of Object.entries(reads)) {
        const again = await fetch(readUrl, { headers: { authorization: `Bearer ${reader.accessToken}` } });
        await again.body?.cancel();
        answered[name] = again.status;
      }
      assert.deepEqual(answered, { get: 404, list: 200 }, "the series was never written: 404");
    } finally {
      await proxy.release();
      await server.shutdown();
      await handler.close();
      await proxy.close();
      await admin.end();
    }
  },
});

/**
 * `store` served over real HTTP by the progress handler, with a recording log. A request that carries
 * `x-test-signal: <name>` runs with `signals[name]` as its signal instead of its own: the test aborts it
 * (as the local gateway's close() does) while the client stays to read the answer.
 */
function servedStore(store: ProgressStore, signals: Record<string, AbortSignal> = {}) {
  const env = testEnv();
  const log = logRecorder();
  const handler = createProgressHandler({
    verifier: createJwtVerifier({ secret: env.jwtSecret, audience: "authenticated" }),
    store,
    log: log.sink,
  });
  const server = serveLocal((req) => {
    const name = req.headers.get("x-test-signal");
    if (name !== null) Object.defineProperty(req, "signal", { value: signals[name] });
    return handler(req);
  });
  return { base: `${server.url}/progress`, log, shutdown: () => server.shutdown() };
}

/** A write of `series` (write()'s position) over HTTP to `base` with `token`: its status and body. */
async function postWrite(base: string, token: string, series: string, headers: Record<string, string> = {}) {
  const answer = await call("POST", "", { base, token, body: write({ series_id: series }), headers });
  return { status: answer.status, body: answer.body as Record<string, unknown> };
}

/** The status and error code of an answer, as "503 service_unavailable" ("200" for a success). */
function statusOf(answer: { status: number; body: Record<string, unknown> }): string {
  return answer.status < 400
    ? String(answer.status)
    : `${answer.status} ${errorOf(answer as ApiAnswer).code}`;
}

/** `userId`'s stored rows of `series` with their change_xid, and the conflict-log rows of it. */
async function storedOnce(admin: postgres.Sql, userId: string, series: string) {
  const rows = await admin<{ change_xid: string }[]>`
    select change_xid::text from public.reading_progress where user_id = ${userId} and series_id = ${series}`;
  return {
    rows: rows.map((r) => r.change_xid),
    conflicts: (await conflictRows(admin, userId, series)).length,
  };
}

Deno.test({
  name:
    "a write whose backend is terminated while its statement runs answers 503, the function's process lives " +
    "on (no ROLLBACK written on the closed connection), and the next write is answered 200, stored once " +
    "(its BEGIN, failed unsent with the ended backend's error, sent again)",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const applicationName = `readsync-terminated-${crypto.randomUUID().slice(0, 8)}`;
    const pool = onePool(testEnv().dbUrl, applicationName);
    const served = servedStore(longWaitStore(pool));
    let held: Held | undefined;
    try {
      const user = await createTestUser();
      const series = seriesId("terminated");
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      held = await userWriteInProgress(holder, user.id, seriesId("terminated-held"));
      const writing = postWrite(served.base, user.accessToken, series);
      writing.catch(() => {}); // awaited below
      const pid = await waitingBackend(admin, applicationName, holderPid);
      // As a database restart, a failover or an administrator would: postgres.js's socket closes while the
      // statement runs. Before, begin()'s ROLLBACK on that connection threw from a setImmediate (the
      // process's uncaught TypeError, "Cannot read properties of null (reading 'write')").
      await admin`select pg_catalog.pg_terminate_backend(${pid}::integer)`;
      const ended = await guarded(writing, "answer of the write whose backend was terminated");
      assert.equal(statusOf(ended), "503 service_unavailable");
      held.release();
      await held.done;
      assert.deepEqual(await storedOnce(admin, user.id, series), { rows: [], conflicts: 0 });
      // The pool's connection opens again for the next write. postgres.js 3.4.9 kept the terminated
      // backend's error (57P01) and fails the query the connection reopened for, its BEGIN, with it, unsent:
      // the store sends the BEGIN again. Before, this write answered 503 (nothing sent), and only the one
      // after it was answered.
      const next = await guarded(
        postWrite(served.base, user.accessToken, series),
        "answer of the next write",
      );
      assert.equal(statusOf(next), "200", JSON.stringify(next.body));
      const progress = next.body.progress as { change_xid: string };
      assert.deepEqual(await storedOnce(admin, user.id, series), {
        rows: [progress.change_xid],
        conflicts: 0,
      });
    } finally {
      await endHeld(held);
      await served.shutdown();
      await pool.end({ timeout: 5 });
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

/**
 * postgres.js's `socket` option (in its source, not its types) for a pool on `url`: every connection the
 * pool opens, its cancel requests' too, is a TCP socket made here as postgres.js makes its own (it writes
 * at once; the socket keeps that until it has connected), and `closed(n)` settles once the n-th one made
 * (from 0; `made` counts them) has emitted its close, which this hears before postgres.js does.
 */
function observedSockets(url: string) {
  const target = new URL(url);
  const closes: PromiseWithResolvers<void>[] = [];
  const closeOf = (n: number) => (closes[n] ??= Promise.withResolvers<void>());
  let made = 0;
  return {
    get made() {
      return made;
    },
    socket: () => {
      const closed = closeOf(made++);
      const socket = net.connect(Number(target.port), target.hostname);
      socket.once("close", () => closed.resolve());
      return socket;
    },
    closed: (n: number) => guarded(closeOf(n).promise, `close of the pool's socket ${n}`),
  };
}

Deno.test({
  name:
    "a write whose connection closes while its cancel request is on its way, its statement answered, answers " +
    "503 with nothing stored, and the function's process lives on (no COMMIT written on the closed connection) " +
    "to answer the next write",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const proxy = databaseProxy("hold");
    const applicationName = `readsync-closed-cancel-${crypto.randomUUID().slice(0, 8)}`;
    // postgres.js calls a pool's onclose once it has handled its connection's close (closed()).
    const closed = Promise.withResolvers<void>();
    const sockets = observedSockets(proxy.url);
    const pool = onePool(
      proxy.url,
      applicationName,
      { onclose: () => closed.resolve(), socket: sockets.socket } as postgres.Options<never>,
    );
    const closing = new AbortController();
    const served = servedStore(longWaitStore(pool), { closing: closing.signal });
    let held: Held | undefined;
    try {
      const user = await createTestUser();
      const [series, nextSeries] = [seriesId("closed-cancel"), seriesId("closed-cancel-next")];
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      held = await userWriteInProgress(holder, user.id, seriesId("closed-cancel-held"));
      const writing = postWrite(served.base, user.accessToken, series, { "x-test-signal": "closing" });
      writing.catch(() => {}); // awaited below
      const pid = await waitingBackend(admin, applicationName, holderPid);
      // The write's signal aborts (its client stays, as when the local gateway closes); its cancel request is
      // held on its way, and its statement ends on its own once the user's other write has committed. The
      // call then waits for the request (cancellable), the write's transaction open on its backend.
      const cancelSocket = sockets.made; // the next one the pool makes: the cancel request's
      closing.abort(new Error("the server closing"));
      await proxy.laterCame;
      held.release();
      await held.done;
      await until(async () => {
        const [row] = await admin<{ state: string }[]>`
          select state from pg_catalog.pg_stat_activity where pid = ${pid}::integer`;
        return row?.state === "idle in transaction" ? true : undefined;
      }, "the write's statement answered, its backend idle in the transaction");
      // Its connection closes then: the backend's answer reached postgres.js before the close (one stream).
      await admin`select pg_catalog.pg_terminate_backend(${pid}::integer)`;
      await guarded(closed.promise, "close of the pool's connection");
      const ended = await guarded(writing, "answer of the write whose connection closed");
      assert.equal(statusOf(ended), "503 service_unavailable");
      assert.equal((await served.log.next("request_cancelled")).user_id, user.id);
      // The request arrives (its backend has ended), and the call's wait ends when its socket closes. Before,
      // the call went on to its COMMIT, written on the closed connection from a setImmediate: the process's
      // uncaught TypeError, "Cannot read properties of null (reading 'write')", before the next write is
      // answered (the pool opens its connection again for it only in a timer).
      await proxy.releaseLater();
      await sockets.closed(cancelSocket);
      const next = await guarded(
        postWrite(served.base, user.accessToken, nextSeries),
        "answer of the next write",
      );
      assert.equal(statusOf(next), "200", JSON.stringify(next.body));
      assert.deepEqual(
        await storedSeries(admin, user.id, [series, nextSeries]),
        [nextSeries],
        "nothing of the write whose connection closed was stored",
      );
    } finally {
      await endHeld(held);
      await served.shutdown();
      await pool.end({ timeout: 5 });
      await proxy.close();
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

/**
 * A write of `series` over `served`, whose backend (of `applicationName`'s pool) is terminated while it waits
 * for the user's other write: answered 503. postgres.js 3.4.9 then keeps that statement as its connection's
 * current query, and the terminated backend's error with it (see replayedBackendEnd in store.ts).
 */
async function writeTerminatedUnderStatement(
  served: { base: string },
  admin: postgres.Sql,
  holder: postgres.Sql,
  applicationName: string,
  user: { id: string; accessToken: string },
  series: string,
): Promise<void> {
  const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
  const held = await userWriteInProgress(holder, user.id, `${series}-held`);
  try {
    const writing = postWrite(served.base, user.accessToken, series);
    writing.catch(() => {}); // awaited below
    const pid = await waitingBackend(admin, applicationName, holderPid);
    await admin`select pg_catalog.pg_terminate_backend(${pid}::integer)`;
    const ended = await guarded(writing, "answer of the write whose backend was terminated");
    assert.equal(statusOf(ended), "503 service_unavailable");
  } finally {
    await endHeld(held);
  }
}

/**
 * The scene of the two tests below: a pool of one connection, as `role`, its sockets observed; its backend
 * terminated under a write's statement; then the server refusing the role's connections. `run` gets the
 * socket count and the served store; the server takes the role's connections again before the check that
 * the next write is answered 200, and nothing else of the user's is stored.
 */
async function withRefusedReconnect(
  name: string,
  storeOptions: PostgresStoreOptions,
  run: (
    scene: {
      served: ReturnType<typeof servedStore>;
      user: Awaited<ReturnType<typeof createTestUser>>;
      sockets: ReturnType<typeof observedSockets>;
      series: string;
    },
  ) => Promise<void>,
): Promise<void> {
  const admin = adminSql({ max: 1 });
  const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  const role = await refusableRole(admin);
  const applicationName = `readsync-${name}-${crypto.randomUUID().slice(0, 8)}`;
  const sockets = observedSockets(role.url);
  const pool = onePool(role.url, applicationName, { socket: sockets.socket } as postgres.Options<never>);
  const served = servedStore(createPostgresProgressStore(pool, storeOptions));
  try {
    const user = await createTestUser();
    const [terminated, series, next] = [
      seriesId(name),
      seriesId(`${name}-refused`),
      seriesId(`${name}-next`),
    ];
    await writeTerminatedUnderStatement(served, admin, holder, applicationName, user, terminated);
    await role.refuse();
    await run({ served, user, sockets, series });
    // The server takes the role's connections again: the pool's connection opens (postgres.js fails the
    // BEGIN it held with the kept refusal, which no one waits for any more) and serves the next write.
    await role.accept();
    const answered = await guarded(
      postWrite(served.base, user.accessToken, next),
      "answer of the next write",
    );
    assert.equal(statusOf(answered), "200", JSON.stringify(answered.body));
    assert.deepEqual(
      await storedSeries(admin, user.id, [terminated, series, next]),
      [next],
      "nothing of the terminated write or of the one that gave up was stored",
    );
  } finally {
    await role.accept().catch(() => {});
    await served.shutdown();
    await pool.end({ timeout: 5 });
    await role.drop();
    await Promise.all([holder.end(), admin.end()]);
  }
}

/** Waits until the pool of `sockets` has opened `count` more sockets than `before`: its startups refused. */
function refusedStartups(sockets: ReturnType<typeof observedSockets>, before: number, count: number) {
  return until(
    () => Promise.resolve(sockets.made >= before + count ? true : undefined),
    `${count} reconnects of the pool's connection (its startups refused)`,
  );
}

Deno.test({
  name:
    "a write whose BEGIN waits on a connection whose startups the server refuses (its backend terminated " +
    "under a statement, then connection limit 0) ends when its client leaves: request_cancelled, its turn " +
    "given back, nothing stored; the next write once the server takes connections again is answered 200",
  ignore: !mintsTokens,
  fn: async () => {
    // No beginTimeoutMs within the test's reach: only the client's leaving can end the wait.
    await withRefusedReconnect(
      "refused-left",
      BEGIN_NEVER_GIVES_UP,
      async ({ served, user, sockets, series }) => {
        const before = sockets.made;
        const client = new AbortController();
        const sent = fetch(served.base, {
          method: "POST",
          headers: { authorization: `Bearer ${user.accessToken}`, "content-type": "application/json" },
          body: JSON.stringify(write({ series_id: series })),
          signal: client.signal,
        });
        sent.catch(() => {}); // aborted below
        // postgres.js reopens the connection for the write's BEGIN, the server refuses its startup (53300),
        // and it reopens it at once, over and over: the write waits.
        await refusedStartups(sockets, before, 3);
        client.abort();
        // Before, the write went on waiting (its signal unheard) until the server took a startup.
        const entry = await served.log.next("request_cancelled");
        assert.deepEqual(
          { method: entry.method, path: entry.path, user_id: entry.user_id },
          { method: "POST", path: "/progress", user_id: user.id },
        );
      },
    );
  },
});

/** The store's options of the tests where only the client's leaving or close() ends a BEGIN's wait: no
 * beginTimeoutMs, the lock and statement timeouts out of reach. (Not a literal in the call: the store before
 * beginTimeoutMs took such options, and ignored this one.) */
const BEGIN_NEVER_GIVES_UP = {
  lockTimeoutMs: LONG_TIMEOUT_MS,
  statementTimeoutMs: LONG_TIMEOUT_MS,
  beginTimeoutMs: Infinity,
};

/** The store's options of the tests where a call gives up waiting for its BEGIN: 3 s, the lock and statement
 * timeouts out of reach (not a literal in the call, as above). */
const BEGIN_GIVES_UP_AFTER_3_S = {
  lockTimeoutMs: LONG_TIMEOUT_MS,
  statementTimeoutMs: LONG_TIMEOUT_MS,
  beginTimeoutMs: 3_000,
};

Deno.test({
  name: "a write whose BEGIN waits on a connection whose startups the server refuses answers 503 " +
    "service_unavailable with Retry-After once beginTimeoutMs has passed, nothing stored, its turn given " +
    "back; the next write once the server takes connections again is answered 200",
  ignore: !mintsTokens,
  fn: async () => {
    await withRefusedReconnect(
      "refused-deadline",
      BEGIN_GIVES_UP_AFTER_3_S,
      async ({ served, user, sockets, series }) => {
        const before = sockets.made;
        const writing = call("POST", "", {
          base: served.base,
          token: user.accessToken,
          body: write({ series_id: series }),
        });
        writing.catch(() => {}); // awaited below
        await refusedStartups(sockets, before, 3);
        // Before, the write waited until the server took a startup (after this test's hang guard).
        const answer = await guarded(writing, "answer of the write whose startups were refused");
        assert.equal(
          statusOf(answer as { status: number; body: Record<string, unknown> }),
          "503 service_unavailable",
          JSON.stringify(answer.body),
        );
        assert.equal(answer.headers.get("retry-after"), "1");
        // Logged as the database unavailable (the terminated write's line comes first).
        const logged = served.log.entries.filter((e) => e.event === "dependency_unavailable");
        assert.match(String(logged.at(-1)?.error), /had not begun 3000 ms after it took its turn/);
        assert.ok(
          sockets.made > before + 3,
          "the server still refused the role's connections when the write answered",
        );
      },
    );
  },
});

Deno.test("store: beginTimeoutMs takes a delay a timer can hold, or Infinity", async () => {
  // A pool that never connects (nothing is queried): the options are checked when the store is made.
  const pool = postgres("postgres://127.0.0.1:1/none", { max: 1 });
  try {
    // Options as a value, not a literal: the store before beginTimeoutMs took them (and ignored this one).
    const options = (beginTimeoutMs: unknown) => ({ beginTimeoutMs }) as PostgresStoreOptions;
    for (const bad of [0, -1, Number.NaN, 2 ** 31]) {
      assert.throws(
        () => createPostgresProgressStore(pool, options(bad)),
        (e: unknown) =>
          e instanceof RangeError &&
          e.message.startsWith("createPostgresProgressStore option beginTimeoutMs must be"),
        `beginTimeoutMs ${bad}`,
      );
    }
    assert.throws(() => createPostgresProgressStore(pool, options("1000")), TypeError);
    for (const good of [1, 0.5, 2 ** 31 - 1, Infinity]) createPostgresProgressStore(pool, options(good));
  } finally {
    await pool.end();
  }
});

const DEADLINE_PASSED_NAME = "store: a call whose beginDeadline signal has aborted already when its turn " +
  "comes answers 503 at once, sends nothing to the database and does not replace the pool";

Deno.test(DEADLINE_PASSED_NAME, async () => {
  const sent: string[] = [];
  const pool = postgres(testEnv().dbUrl, {
    max: 1,
    onnotice: () => {},
    // Every query postgres.js writes to a connection of the pool (its array types, a BEGIN, a ROLLBACK).
    debug: (_connection, query) => sent.push(query),
  });
  const replaced: postgres.Sql[] = [];
  const store = createPostgresProgressStore(pool, {
    beginDeadline: () => AbortSignal.abort(),
    replacePool: (stuck) => {
      replaced.push(stuck);
      return stuck;
    },
  });
  try {
    await assert.rejects(
      writeAs(store, crypto.randomUUID(), seriesId("deadline-passed"), new AbortController().signal),
      (e: unknown) =>
        e instanceof HttpError && e.status === 503 &&
        /had not begun when its begin deadline passed/.test(String((e.cause as Error)?.message)),
    );
  } finally {
    // Once ended, every query asked of the pool has been sent or failed: the list is whole.
    await pool.end();
  }
  // Before, the call asked its BEGIN (a connection opened for it, then BEGIN and ROLLBACK sent), and the
  // pool was replaced.
  assert.deepEqual(sent, [], "nothing sent");
  assert.deepEqual(replaced, [], "the pool not replaced");
});

Deno.test({
  name: "a write whose connection's socket fails with a lost route's error (EHOSTUNREACH, ENETUNREACH, " +
    "EHOSTDOWN, ENETDOWN, ECONNABORTED) while its statement runs answers 503, nothing stored, postgres.js is " +
    "handed nothing more for the lost connection (no ROLLBACK), and the next write is answered 200",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
    const applicationName = `readsync-route-lost-${crypto.randomUUID().slice(0, 8)}`;
    const target = new URL(testEnv().dbUrl);
    // postgres.js's `socket` option (see observedSockets), keeping the last socket the pool made: the
    // test fails it as the kernel would when the route to the database is lost (a socket error event,
    // then its close; which errno a lost route gives the kernel decides, so each is injected here).
    // postgres.js's `debug` option hears every statement it builds to send, the store's and its own.
    // prepare: true (a pool on a direct connection may prepare): a statement already prepared on its
    // connection goes out in one round trip, and the transaction's connection stays free for the next
    // one, so a ROLLBACK begin() is handed goes to the connection at once. (With prepare: false every
    // statement of the store, all with parameters, takes two round trips, during which postgres.js parks
    // the connection as full: a ROLLBACK handed over then waits in the transaction's own queue, which the
    // close drops unsent.)
    let last: net.Socket | undefined;
    const built: string[] = [];
    const pool = onePool(testEnv().dbUrl, applicationName, {
      prepare: true,
      socket: () => (last = net.connect(Number(target.port || 5432), target.hostname)),
      debug: (_connection: number, query: string) => built.push(query.trim().toLowerCase()),
    } as postgres.Options<never>);
    const served = servedStore(longWaitStore(pool));
    let held: Held | undefined;
    try {
      const user = await createTestUser();
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      // A first write prepares the store's statements on the pool's connection (as each next write below
      // does on the connection opened again).
      const first = await postWrite(served.base, user.accessToken, seriesId("route-lost-first"));
      assert.equal(statusOf(first), "200", JSON.stringify(first.body));
      for (const code of ["EHOSTUNREACH", "ENETUNREACH", "EHOSTDOWN", "ENETDOWN", "ECONNABORTED"]) {
        const [series, next] = [seriesId(`route-lost-${code}`), seriesId(`route-lost-${code}-next`)];
        held = await userWriteInProgress(holder, user.id, seriesId(`route-lost-${code}-held`));
        const writing = postWrite(served.base, user.accessToken, series);
        writing.catch(() => {}); // awaited below
        const pid = await waitingBackend(admin, applicationName, holderPid);
        const builtBefore = built.length;
        last!.destroy(Object.assign(new Error(`read ${code}`), { code, syscall: "read" }));
        const ended = await guarded(writing, `answer of the write whose socket failed with ${code}`);
        assert.equal(statusOf(ended), "503 service_unavailable", code);
        // Before, for EHOSTUNREACH and the others after it, the statement's error went on to begin()'s
        // ROLLBACK, handed to postgres.js for the lost connection and written from a setImmediate: into the
        // destroyed socket here (Deno emits the close after that write), on the socket postgres.js has
        // dropped when the close comes first (porsager/postgres#1208's uncaught TypeError, "Cannot read
        // properties of null (reading 'write')", which ends the process).
        assert.deepEqual(built.slice(builtBefore), [], `${code}: nothing built after the socket failed`);
        held.release();
        await held.done;
        // The write's backend ends once it finds its client gone (after the lock it waited for), its
        // transaction never committed.
        await until(async () => {
          const [row] = await admin<{ pid: number }[]>`
            select pid from pg_catalog.pg_stat_activity where pid = ${pid}::integer`;
          return row ? undefined : true;
        }, `the end of the backend whose socket failed with ${code}`);
        const answered = await guarded(
          postWrite(served.base, user.accessToken, next),
          "answer of the next write",
        );
        assert.equal(statusOf(answered), "200", `${code}: ${JSON.stringify(answered.body)}`);
        assert.deepEqual(await storedSeries(admin, user.id, [series, next]), [next], code);
      }
    } finally {
      await endHeld(held);
      await served.shutdown();
      await pool.end({ timeout: 5 });
      await Promise.all([holder.end(), admin.end()]);
    }
  },
});

Deno.test({
  name: "a write that gave up before its transaction began, its BEGIN queued by postgres.js behind a " +
    "connection whose startups the server refuses, sends nothing of its own once that BEGIN is answered " +
    "(rolled back): answered 503, nothing stored, while the write before it gave its turn back",
  ignore: !mintsTokens,
  fn: async () => {
    await withRefusedReconnect(
      "refused-queued",
      BEGIN_GIVES_UP_AFTER_3_S,
      async ({ served, user, sockets, series }) => {
        const before = sockets.made;
        // The first write's BEGIN is the one the refused connection reopens for: failed, not answered, once
        // the server takes the startup.
        const first = postWrite(served.base, user.accessToken, series);
        first.catch(() => {}); // awaited below
        await refusedStartups(sockets, before, 3);
        const firstAnswer = await guarded(first, "answer of the first write whose startups were refused");
        assert.equal(statusOf(firstAnswer), "503 service_unavailable");
        // The second write takes the turn the first gave back; the pool's one connection still reopening for
        // the first's BEGIN, postgres.js queues the second's. It gives up too, and once the server takes the
        // startup (withRefusedReconnect) postgres.js sends that BEGIN and it is answered: the transaction's
        // function then runs for a call already answered 503, and must send nothing (begin() rolls back).
        // Before the check of gaveUp there, it sent this write and committed it (stored: a write its client
        // was told failed). Same series: stored, it would be found below.
        const second = await guarded(
          postWrite(served.base, user.accessToken, series),
          "answer of the second write, queued behind the refused connection",
        );
        assert.equal(statusOf(second), "503 service_unavailable", JSON.stringify(second.body));
        const timedOut = served.log.entries.filter((e) =>
          e.event === "dependency_unavailable" && /had not begun 3000 ms/.test(String(e.error))
        );
        assert.equal(timedOut.length, 2, "both writes gave up waiting for their transaction to begin");
      },
    );
  },
});

/**
 * A TCP proxy in front of `url`'s database that counts what goes through it: `accepted`, the connections made
 * to it (every connection attempt of a pool on its URL, a refused startup's too); `open`, those still open;
 * `statements`, the SQL of every Parse and simple Query the clients sent, in order (read from the protocol's
 * frames: a connection's first message, its startup or cancel request, has no type byte). The URL it gives
 * names `applicationName` for the backends. hold() keeps the connections made next from the database until
 * release(): a startup slow on its way.
 */
function countingProxy(url: string, applicationName: string) {
  const target = new URL(url);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const proxied = new URL(target);
  proxied.hostname = "127.0.0.1";
  proxied.port = String((listener.addr as Deno.NetAddr).port);
  proxied.searchParams.set("application_name", applicationName);
  const conns = new Set<Deno.Conn>();
  const pumps: Promise<unknown>[] = [];
  const statements: string[] = [];
  let accepted = 0;
  let open = 0;
  // While set (hold()), a connection made is accepted but reaches the database only once release() is called.
  let held: PromiseWithResolvers<void> | undefined;
  const latin1 = new TextDecoder("latin1");
  const readStatements = () => {
    let buffer = new Uint8Array(0);
    let startup = true;
    return (chunk: Uint8Array) => {
      const joined = new Uint8Array(buffer.length + chunk.length);
      joined.set(buffer);
      joined.set(chunk, buffer.length);
      buffer = joined;
      for (;;) {
        const head = startup ? 0 : 1;
        if (buffer.length < head + 4) return;
        const length = new DataView(buffer.buffer, buffer.byteOffset + head, 4).getUint32(0);
        if (buffer.length < head + length) return;
        const type = startup ? "" : String.fromCharCode(buffer[0]);
        const payload = buffer.subarray(head + 4, head + length);
        if (type === "Q") statements.push(latin1.decode(payload).split("\0")[0]);
        if (type === "P") statements.push(latin1.decode(payload).split("\0")[1]);
        buffer = buffer.subarray(head + length);
        startup = false;
      }
    };
  };
  const forward = async (conn: Deno.Conn, gate: Promise<void> | undefined) => {
    open++;
    try {
      await gate;
      const upstream = await Deno.connect({ hostname: target.hostname, port: Number(target.port || 5432) });
      conns.add(upstream);
      const read = readStatements();
      await Promise.allSettled([
        conn.readable.pipeThrough(
          new TransformStream<Uint8Array, Uint8Array>({
            transform(chunk, controller) {
              read(chunk);
              controller.enqueue(chunk);
            },
          }),
        ).pipeTo(upstream.writable),
        upstream.readable.pipeTo(conn.writable),
      ]);
    } finally {
      open--;
    }
  };
  const accepting = (async () => {
    for await (const conn of listener) {
      accepted++;
      conns.add(conn);
      pumps.push(forward(conn, held?.promise).catch(() => {}));
    }
  })().catch(() => {});
  return {
    url: proxied.toString(),
    get accepted() {
      return accepted;
    },
    get open() {
      return open;
    },
    statements,
    /** From now on a connection made waits, its startup unsent (the client's bytes kept), until release(). */
    hold() {
      held ??= Promise.withResolvers<void>();
    },
    /** The connections held reach the database, their startups sent; those made next go through at once. */
    release() {
      held?.resolve();
      held = undefined;
    },
    async close() {
      held?.resolve();
      try {
        listener.close();
      } catch { /* closed already */ }
      for (const conn of conns) {
        try {
          conn.close();
        } catch { /* closed already */ }
      }
      await accepting;
      await Promise.allSettled(pumps);
    },
  };
}

/**
 * The scene of the tests of the function's own pool below: createProgressHandlerFromEnv (a pool of `poolMax`
 * connections, PROGRESS_DB_POOL_MAX) on a role the server can refuse (refusableRole), through a counting
 * proxy, served over real HTTP with `storeOptions`, its backends named `applicationName`; `holder` holds the
 * user's other writes. `run` gets the scene; the test's own clean-up follows.
 */
async function withFunctionPool(
  name: string,
  storeOptions: PostgresStoreOptions,
  poolMax: number,
  run: (scene: FunctionPoolScene) => Promise<void>,
): Promise<void> {
  const admin = adminSql({ max: 1 });
  const holder = postgres(testEnv().dbUrl, { max: 1, onnotice: () => {} });
  const role = await refusableRole(admin);
  const applicationName = `readsync-${name}-${crypto.randomUUID().slice(0, 8)}`;
  const proxy = countingProxy(role.url, applicationName);
  const vars: Record<string, string> = {
    PROGRESS_DB_URL: proxy.url,
    PROGRESS_DB_POOL_MAX: String(poolMax),
    SUPABASE_JWT_SECRET: testEnv().jwtSecret ?? "",
  };
  const log = logRecorder();
  const handler = createProgressHandlerFromEnv({ get: (v) => vars[v] }, {
    log: log.sink,
    store: storeOptions,
  });
  const server = serveLocal(handler);
  const base = `${server.url}/progress`;
  try {
    const user = await createTestUser();
    await run({ base, handler, log, proxy, role, admin, holder, user, applicationName });
  } finally {
    await role.accept().catch(() => {});
    await server.shutdown();
    await handler.close();
    await proxy.close();
    await role.drop();
    await Promise.all([holder.end(), admin.end()]);
  }
}

interface FunctionPoolScene {
  base: string;
  handler: ReturnType<typeof createProgressHandlerFromEnv>;
  log: ReturnType<typeof logRecorder>;
  proxy: ReturnType<typeof countingProxy>;
  role: Awaited<ReturnType<typeof refusableRole>>;
  admin: postgres.Sql;
  holder: postgres.Sql;
  user: Awaited<ReturnType<typeof createTestUser>>;
  applicationName: string;
}

/**
 * withFunctionPool with one connection, whose backend is terminated under a write's statement (`terminated`,
 * its series), the server then refusing the role's connections.
 */
async function withFunctionPoolRefused(
  name: string,
  storeOptions: PostgresStoreOptions,
  run: (scene: FunctionPoolScene & { terminated: string }) => Promise<void>,
): Promise<void> {
  await withFunctionPool(name, storeOptions, 1, async (scene) => {
    const terminated = seriesId(name);
    const { base, admin, holder, applicationName, user, role } = scene;
    await writeTerminatedUnderStatement({ base }, admin, holder, applicationName, user, terminated);
    await role.refuse();
    await run({ ...scene, terminated });
  });
}

/** The dependency_unavailable lines `log` has, their `error`s in order. */
function unavailableErrors(log: ReturnType<typeof logRecorder>): string[] {
  return log.entries.filter((e) => e.event === "dependency_unavailable").map((e) => String(e.error));
}

Deno.test({
  name: "the function's pool, its connection lost under a statement and its startups then refused: the " +
    "reconnects are paced (a few, not dozens, while a write waits for its BEGIN), the write that gives up " +
    "replaces the pool (the next write's startup refused at once: 503 too many connections, not a second " +
    "wait), and once the server takes connections again no BEGIN left queued is sent: only the next " +
    "write's statements, answered 200, stored once",
  ignore: !mintsTokens,
  fn: async () => {
    // beginTimeoutMs above the pacing's longest delay (4 s, pool.ts), as the store's default (10 s) is: the
    // second write below gets its attempt before it would give up.
    const storeOptions = {
      lockTimeoutMs: LONG_TIMEOUT_MS,
      statementTimeoutMs: LONG_TIMEOUT_MS,
      beginTimeoutMs: 6_000,
    };
    await withFunctionPoolRefused(
      "pool-refused",
      storeOptions,
      async ({ base, log, proxy, role, admin, user, terminated }) => {
        const [first, second, next] = [
          seriesId("pool-refused-first"),
          seriesId("pool-refused-second"),
          seriesId("pool-refused-next"),
        ];
        const before = proxy.accepted;
        const firstAnswer = await guarded(
          postWrite(base, user.accessToken, first),
          "answer of the first write",
        );
        assert.equal(statusOf(firstAnswer), "503 service_unavailable", JSON.stringify(firstAnswer.body));
        assert.match(unavailableErrors(log).at(-1) ?? "", /had not begun 6000 ms after it took its turn/);
        // The connection reopened for the first write's BEGIN, each startup refused (53300), for the 6 s it
        // waited. Paced (pool.ts: the pool's one free attempt, then 50-100 ms, doubling up to 2-4 s): 8 at
        // most, 9 with one on its way. Before, postgres.js reopened it at once after each refusal, as fast as
        // the server answered: 47 and 74 attempts in those 6 s in two runs on a loaded machine.
        const attempts = proxy.accepted - before;
        assert.ok(
          attempts >= 2,
          `the connection was reopened after a refused startup (${attempts} attempts)`,
        );
        assert.ok(
          attempts <= 12,
          `the reconnects were paced: ${attempts} attempts in the 6 s the write waited`,
        );
        // The second write takes the turn the first gave back, on the pool made in place of the stuck one:
        // its connection's startup (once the pacing lets it) is refused and fails its BEGIN at once. Before,
        // its BEGIN queued in postgres.js behind the stuck connection, and it gave up 6 s later too.
        const secondAnswer = await guarded(
          postWrite(base, user.accessToken, second),
          "answer of the second write",
        );
        assert.equal(statusOf(secondAnswer), "503 service_unavailable", JSON.stringify(secondAnswer.body));
        assert.match(unavailableErrors(log).at(-1) ?? "", /too many connections for role/);
        // Nothing is sent while the server refuses startups: what follows is sent after it takes them again.
        const sentBefore = proxy.statements.length;
        await role.accept();
        const nextAnswer = await guarded(postWrite(base, user.accessToken, next), "answer of the next write");
        assert.equal(statusOf(nextAnswer), "200", JSON.stringify(nextAnswer.body));
        // The next write's transaction alone (its BEGIN, the role and claims, the write, COMMIT), after the
        // array types postgres.js reads on a connection it opens. Before, the BEGIN the first or second write
        // left queued was sent once the server took the startup, and rolled back.
        const sent = proxy.statements.slice(sentBefore).map((s) => s.trim().split(/\s+/)[0].toLowerCase());
        assert.equal(sent.filter((s) => s === "begin").length, 1, JSON.stringify(sent));
        assert.equal(sent.filter((s) => s === "rollback").length, 0, JSON.stringify(sent));
        assert.deepEqual(
          await storedSeries(admin, user.id, [terminated, first, second, next]),
          [next],
          "only the next write was stored",
        );
      },
    );
  },
});

Deno.test({
  name: "the function's pool closed while its connection reopens again and again for a BEGIN (its startups " +
    "refused): no connection attempt after close() is called (at most one already on its way), the waiting " +
    "write answered 503, and no socket left once close() has resolved",
  ignore: !mintsTokens,
  fn: async () => {
    // No beginTimeoutMs within the test's reach: the pool is never replaced, and only close() ends the wait.
    await withFunctionPoolRefused(
      "pool-closed",
      BEGIN_NEVER_GIVES_UP,
      async ({ base, handler, proxy, user }) => {
        const before = proxy.accepted;
        const writing = postWrite(base, user.accessToken, seriesId("pool-closed"));
        writing.catch(() => {}); // awaited below
        await until(
          () => Promise.resolve(proxy.accepted >= before + 2 ? true : undefined),
          "the connection reopened after a refused startup",
        );
        const atClose = proxy.accepted;
        await guarded(handler.close(), "close() of the function's pool");
        // Before, postgres.js went on reopening the connection for the BEGIN until end()'s 5 s timeout, and
        // once more after it had destroyed the connection (a reconnect timer set before): 36 and 59 attempts
        // in two runs on a loaded machine.
        const after = proxy.accepted - atClose;
        assert.ok(after <= 1, `${after} connection attempts after close() was called`);
        const answer = await guarded(writing, "answer of the write waiting for its BEGIN");
        assert.equal(statusOf(answer), "503 service_unavailable", JSON.stringify(answer.body));
        await until(
          () => Promise.resolve(proxy.open === 0 ? true : undefined),
          "no connection open at the proxy",
        );
        assert.equal(proxy.accepted - atClose, after, "no connection attempt once close() had resolved");
      },
    );
  },
});

/** The backends of `applicationName`'s pool waiting for a lock (a write behind the user's other write). */
function lockWaitingBackends(admin: postgres.Sql, applicationName: string, count: number): Promise<number[]> {
  return until(async () => {
    const rows = await admin<{ pid: number }[]>`
        select pid from pg_catalog.pg_stat_activity
         where application_name = ${applicationName} and wait_event_type = 'Lock' order by pid`;
    return rows.length >= count ? rows.map((r) => r.pid) : undefined;
  }, `${count} of the function's backends waiting for the user's other write`);
}

Deno.test({
  name: "the function's pool replaced while a write's BEGIN waits on its connection reopened with a 57P01 " +
    "kept: the BEGIN, failed unsent with that error, is sent again to the pool that replaced it (200, stored " +
    "once), not to the one being ended (503 CONNECTION_ENDED)",
  ignore: !mintsTokens,
  fn: async () => {
    // Each call's wait for its BEGIN ends only when the test says: the stuck write's deadline, aborted once
    // the scene is set, and none for the others (beginTimeoutMs Infinity). Before, both writes gave up 5 s
    // after their turns, and the release and the replay had to fit in the 350-700 ms the pacing put between
    // the two writes' turns.
    const deadlines: AbortSignal[] = [];
    const storeOptions = { ...BEGIN_NEVER_GIVES_UP, beginDeadline: () => deadlines.shift() };
    await withFunctionPool("replay-replaced", storeOptions, 2, async (scene) => {
      const { base, log, proxy, admin, holder, user, applicationName } = scene;
      const [lostA, lostB, stuck, replayed] = ["lost-a", "lost-b", "stuck", "replayed"].map((s) =>
        seriesId(`replay-replaced-${s}`)
      );
      // Both connections' backends end under a write's statement (each waits for the user's other write):
      // postgres.js keeps each statement, and its 57P01, on its connection.
      const held = await userWriteInProgress(holder, user.id, seriesId("replay-replaced-held"));
      try {
        const lost = [postWrite(base, user.accessToken, lostA), postWrite(base, user.accessToken, lostB)];
        lost.forEach((w) => w.catch(() => {})); // awaited below
        for (const pid of await lockWaitingBackends(admin, applicationName, 2)) {
          await admin`select pg_catalog.pg_terminate_backend(${pid}::integer)`;
        }
        for (const answer of await guarded(Promise.all(lost), "answers of the writes whose backends ended")) {
          assert.equal(statusOf(answer), "503 service_unavailable");
        }
      } finally {
        await endHeld(held);
      }
      // Every connection made from now on is held at the proxy, its startup unsent. The stuck write's BEGIN
      // reopens one connection (the pool's first free attempt), held; the next write's reopens the other
      // (the second), held too. Each waits for its BEGIN, which neither has begun.
      proxy.hold();
      const atHold = proxy.accepted;
      const stuckDeadline = new AbortController();
      deadlines.push(stuckDeadline.signal);
      const stuckWrite = postWrite(base, user.accessToken, stuck);
      stuckWrite.catch(() => {}); // awaited below
      await until(
        () => Promise.resolve(proxy.accepted >= atHold + 1 ? true : undefined),
        "the attempt of the stuck write's connection",
      );
      const replayedWrite = postWrite(base, user.accessToken, replayed);
      replayedWrite.catch(() => {}); // awaited below
      await until(
        () => Promise.resolve(proxy.accepted >= atHold + 2 ? true : undefined),
        "the attempt of the next write's connection",
      );
      assert.equal(deadlines.length, 0, "the stuck write took its deadline");
      // The stuck write gives up, and the pool is replaced; the one it replaced is ending, its transactions
      // given 10 s.
      stuckDeadline.abort();
      const stuckAnswer = await guarded(stuckWrite, "answer of the stuck write");
      assert.equal(statusOf(stuckAnswer), "503 service_unavailable", JSON.stringify(stuckAnswer.body));
      assert.match(unavailableErrors(log).at(-1) ?? "", /had not begun when its begin deadline passed/);
      // Then the held startups reach the server, which takes them: postgres.js fails each BEGIN, unsent,
      // with the 57P01 kept (the stuck write's no one waits for), and the store sends the next write's again,
      // to the pool that replaced the stuck one. Before, it went to the pool it had failed on, ended
      // meanwhile: CONNECTION_ENDED, a 503 with the server there. (The held startups have postgres.js's
      // connect_timeout, 5 s, for the few local steps since they were made.)
      const sentBefore = proxy.statements.length;
      proxy.release();
      const answer = await guarded(replayedWrite, "answer of the write whose BEGIN was sent again");
      assert.equal(statusOf(answer), "200", `${JSON.stringify(answer.body)} ${JSON.stringify(log.entries)}`);
      const writes = proxy.statements.slice(sentBefore).filter((s) => /write_reading_progress\(/.test(s));
      assert.equal(writes.length, 1, "the write was sent once");
      assert.deepEqual(
        await storedSeries(admin, user.id, [lostA, lostB, stuck, replayed]),
        [replayed],
        "only the write whose BEGIN was sent again was stored",
      );
      assert.equal((await storedOnce(admin, user.id, replayed)).rows.length, 1);
    });
  },
});

Deno.test({
  name: "the function's pool replaced while a write's BEGIN waits on its other connection, reopening " +
    "for startups the server refuses (the 57P01 of its lost backend kept): the BEGIN, failed unsent as the " +
    "ended pool opens no connection for it (CONNECTION_ENDED), is sent to the pool that replaced it (200 " +
    "once the server takes startups, stored once), not answered 503",
  ignore: !mintsTokens,
  fn: async () => {
    // As in the test above: the stuck write's wait ends when the test aborts its deadline, the others' never.
    const deadlines: AbortSignal[] = [];
    const storeOptions = { ...BEGIN_NEVER_GIVES_UP, beginDeadline: () => deadlines.shift() };
    await withFunctionPool("ended-resent", storeOptions, 2, async (scene) => {
      const { base, log, proxy, role, admin, holder, user, applicationName } = scene;
      const [lostA, lostB, stuck, resent] = ["lost-a", "lost-b", "stuck", "resent"].map((s) =>
        seriesId(`ended-resent-${s}`)
      );
      // Both connections' backends end under a write's statement: each connection keeps its statement.
      const held = await userWriteInProgress(holder, user.id, seriesId("ended-resent-held"));
      try {
        const lost = [postWrite(base, user.accessToken, lostA), postWrite(base, user.accessToken, lostB)];
        lost.forEach((w) => w.catch(() => {})); // awaited below
        for (const pid of await lockWaitingBackends(admin, applicationName, 2)) {
          await admin`select pg_catalog.pg_terminate_backend(${pid}::integer)`;
        }
        for (const answer of await guarded(Promise.all(lost), "answers of the writes whose backends ended")) {
          assert.equal(statusOf(answer), "503 service_unavailable");
        }
      } finally {
        await endHeld(held);
      }
      // The server refuses the role's startups, and the connections made from now on are held at the proxy:
      // the stuck write's BEGIN reopens one connection, the next write's the other, each attempt held.
      await role.refuse();
      proxy.hold();
      const atHold = proxy.accepted;
      const stuckDeadline = new AbortController();
      deadlines.push(stuckDeadline.signal);
      const stuckWrite = postWrite(base, user.accessToken, stuck);
      stuckWrite.catch(() => {}); // awaited below
      await until(
        () => Promise.resolve(proxy.accepted >= atHold + 1 ? true : undefined),
        "the attempt of the stuck write's connection",
      );
      let resentAnswered = false;
      const resentWrite = postWrite(base, user.accessToken, resent);
      resentWrite.then(() => resentAnswered = true, () => resentAnswered = true);
      await until(
        () => Promise.resolve(proxy.accepted >= atHold + 2 ? true : undefined),
        "the attempt of the next write's connection",
      );
      assert.equal(deadlines.length, 0, "the stuck write took its deadline");
      // The stuck write gives up: the pool is replaced, and the one it replaced is ending.
      stuckDeadline.abort();
      const stuckAnswer = await guarded(stuckWrite, "answer of the stuck write");
      assert.equal(statusOf(stuckAnswer), "503 service_unavailable", JSON.stringify(stuckAnswer.body));
      assert.match(unavailableErrors(log).at(-1) ?? "", /had not begun when its begin deadline passed/);
      // The held startups reach the server, which refuses them: each connection of the ended pool reopens for
      // its BEGIN (its kept statement) and opens nothing, failing the BEGIN unsent (CONNECTION_ENDED). The
      // next write's goes to the pool that replaced it, whose attempt the proxy holds. Before, that write was
      // answered 503 here (CONNECTION_ENDED), the server back or not.
      proxy.release();
      proxy.hold();
      const atRelease = proxy.accepted;
      await until(
        () => Promise.resolve(proxy.accepted > atRelease || resentAnswered ? true : undefined),
        "the next write's attempt on the new pool, or its answer",
      );
      if (resentAnswered) {
        const early = await resentWrite;
        assert.fail(
          `the next write was answered before its attempt on the new pool: ${JSON.stringify(early)} ` +
            String(unavailableErrors(log).at(-1)),
        );
      }
      const sentBefore = proxy.statements.length;
      await role.accept();
      proxy.release();
      const answer = await guarded(resentWrite, "answer of the write whose BEGIN was sent to the new pool");
      assert.equal(statusOf(answer), "200", `${JSON.stringify(answer.body)} ${JSON.stringify(log.entries)}`);
      const writes = proxy.statements.slice(sentBefore).filter((s) => /write_reading_progress\(/.test(s));
      assert.equal(writes.length, 1, "the write was sent once");
      assert.deepEqual(
        await storedSeries(admin, user.id, [lostA, lostB, stuck, resent]),
        [resent],
        "only the write whose BEGIN was sent to the new pool was stored",
      );
    });
  },
});

Deno.test({
  name:
    "the function's pool replaced while a write's transaction is under way on another of its connections: " +
    "the write's client leaves and its cancel request is sent (the statement stops waiting, nothing stored), " +
    "where the ended pool refused it and the statement ran on to its timeout",
  ignore: !mintsTokens,
  fn: async () => {
    await withFunctionPool("replaced-cancel", BEGIN_GIVES_UP_AFTER_3_S, 2, async (scene) => {
      const { base, log, role, admin, holder, user, applicationName } = scene;
      const [lost, leaving, stuck] = ["lost", "leaving", "stuck"].map((s) =>
        seriesId(`replaced-cancel-${s}`)
      );
      const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
      const held = await userWriteInProgress(holder, user.id, seriesId("replaced-cancel-held"));
      try {
        // One connection's backend ends under a write's statement (its 57P01 kept): it is the one the stuck
        // write reopens below. The leaving write opens the other and waits for the user's other write.
        const lostWrite = postWrite(base, user.accessToken, lost);
        lostWrite.catch(() => {}); // awaited below
        const [lostPid] = await lockWaitingBackends(admin, applicationName, 1);
        await admin`select pg_catalog.pg_terminate_backend(${lostPid}::integer)`;
        assert.equal(
          statusOf(await guarded(lostWrite, "answer of the lost write")),
          "503 service_unavailable",
        );
        const client = new AbortController();
        const leavingSent = fetch(base, {
          method: "POST",
          headers: { authorization: `Bearer ${user.accessToken}`, "content-type": "application/json" },
          body: JSON.stringify(write({ series_id: leaving })),
          signal: client.signal,
        });
        leavingSent.catch(() => {}); // aborted below
        const [leavingPid] = await lockWaitingBackends(admin, applicationName, 1);
        // The stuck write's BEGIN reopens the first connection, its startups refused, and gives up: the pool
        // is replaced, and the leaving write's transaction goes on, on the pool being ended.
        await role.refuse();
        const stuckAnswer = await guarded(
          postWrite(base, user.accessToken, stuck),
          "answer of the stuck write",
        );
        assert.equal(statusOf(stuckAnswer), "503 service_unavailable", JSON.stringify(stuckAnswer.body));
        assert.match(unavailableErrors(log).at(-1) ?? "", /had not begun 3000 ms after it took its turn/);
        // Its client leaves: the cancel request reaches the backend (a cancel request is no startup: the
        // role's refusal does not touch it), which stops waiting while the other write still holds the lock.
        client.abort();
        await assert.rejects(leavingSent, { name: "AbortError" });
        await until(async () => {
          const [row] = await admin<{ waiting: boolean }[]>`
              select wait_event_type is not distinct from 'Lock' as waiting
                from pg_catalog.pg_stat_activity where pid = ${leavingPid}::integer`;
          return row === undefined || !row.waiting ? true : undefined;
        }, "the leaving write's backend no longer waiting, its client gone");
        const [{ holding }] = await admin<{ holding: boolean }[]>`
            select state = 'idle in transaction' as holding from pg_catalog.pg_stat_activity
             where pid = ${holderPid}::integer`;
        assert.ok(holding, "the other write still held the lock: the wait did not end by its commit");
        assert.equal((await log.next("request_cancelled")).user_id, user.id);
      } finally {
        await endHeld(held);
      }
      assert.deepEqual(
        await storedSeries(admin, user.id, [lost, leaving, stuck]),
        [],
        "nothing of the three writes was stored",
      );
    });
  },
});

Deno.test({
  name: "the function's pool replaced (a write gave up on its connection reopening for refused startups), " +
    "nothing under way on it: close() resolves once no socket of its pools is open, before the cut of " +
    "another function's close() called just before it (whose write under way commits after), not at its own",
  ignore: !mintsTokens,
  fn: async () => {
    await withFunctionPoolRefused(
      "replaced-close",
      BEGIN_GIVES_UP_AFTER_3_S,
      async ({ base, handler, log, proxy, holder, admin, user }) => {
        const answer = await guarded(postWrite(base, user.accessToken, seriesId("replaced-close")), "answer");
        assert.equal(statusOf(answer), "503 service_unavailable", JSON.stringify(answer.body));
        assert.match(unavailableErrors(log).at(-1) ?? "", /had not begun 3000 ms after it took its turn/);
        // The witness: another function's handler (its own pool, on the database as it is), whose write
        // waits for the user's other write, under way on its pool. Its close() is called first: its pool's
        // end is cut 5 s (CLOSE_GRACE_S, server.ts) from then, no later than the pools of the handler
        // closed next, and a cut destroys the write's connection (a 503: it never commits).
        const witness = createProgressHandlerFromEnv({
          get: (name) =>
            ({
              PROGRESS_DB_URL: testEnv().dbUrl,
              PROGRESS_DB_POOL_MAX: "1",
              SUPABASE_JWT_SECRET: testEnv().jwtSecret ?? "",
            })[name],
        }, { store: BEGIN_NEVER_GIVES_UP });
        const witnessServer = serveLocal(witness);
        const witnessSeries = seriesId("replaced-close-witness");
        const [{ pid: holderPid }] = await holder<{ pid: number }[]>`select pg_backend_pid() as pid`;
        const held = await userWriteInProgress(holder, user.id, seriesId("replaced-close-held"));
        try {
          const witnessWrite = postWrite(`${witnessServer.url}/progress`, user.accessToken, witnessSeries);
          witnessWrite.catch(() => {}); // awaited below
          await waitingBackend(admin, "readsync-progress", holderPid);
          const witnessClosed = witness.close();
          witnessClosed.catch(() => {}); // awaited below
          // The replaced pool has nothing under way (its one connection reopens for a BEGIN no one waits
          // for, with no socket while the pacing spaces its attempts), nor has the pool that replaced it:
          // close() resolves once no socket of them is open, while the witness's write is still under way.
          // Before, the replaced pool's end waited out its 10 s (postgres.js ends such a connection only at
          // end()'s timeout), cut to 5 s by close(), and close() resolved only after that cut, by when the
          // witness's cut, which came no later, had destroyed its write's connection.
          await guarded(handler.close(), "close() of the function's pools");
          held.release();
          await held.done;
          const witnessAnswer = await guarded(witnessWrite, "answer of the witness's write");
          assert.equal(statusOf(witnessAnswer), "200", JSON.stringify(witnessAnswer.body));
          assert.deepEqual(await storedSeries(admin, user.id, [witnessSeries]), [witnessSeries]);
          await guarded(witnessClosed, "close() of the witness's pool");
        } finally {
          await endHeld(held);
          await witnessServer.shutdown();
          await witness.close();
        }
        await until(
          () => Promise.resolve(proxy.open === 0 ? true : undefined),
          "no connection open at the proxy",
        );
      },
    );
  },
});
