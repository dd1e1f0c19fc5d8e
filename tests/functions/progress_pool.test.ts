// The progress function's pool (shared/progress/pool.ts) on the real database: the pacing of its connection
// attempts is told of each startup the server takes for one of its connections (postgres.js 3.4.9 reads the
// server's version, which every such startup reports, where the pool hears it), and not of a startup the
// server refuses. Without that, the pacing would never let the pool's attempts go at once again after an
// outage (or, were that read gone in another postgres.js, the pool would not be paced at all). That includes
// the startups postgres.js makes by itself for a connection whose socket was lost under a statement (a
// restart, pg_terminate_backend), which it reopens, after refusals too, and whose query it then fails with
// the error kept: those ended an outage unheard before (the pool heard the reset of the shared
// options.shared.retries, skipped on that path), and every attempt after them waited its paced turn.
// And a pool ended while a statement of it still runs (a lock wait): its end finishes at its time, the socket
// closed, where it waited for the server to close it, which it does only once the statement is over.

import assert from "node:assert/strict";
import { beforeATimer } from "../support/beforeATimer.ts";
import { type ConnectionPacing, connectionPacing, createProgressPool } from "../../shared/progress/pool.ts";
import { adminSql, refusableRole, testEnv } from "./support.ts";

Deno.test("the function's pool tells its pacing of each completed startup, and not of one the server refuses", async () => {
  let heard = 0;
  const paced = connectionPacing(1);
  const pacing: ConnectionPacing = {
    turn: (ended) => paced.turn(ended),
    startupCompleted: () => {
      heard++;
      paced.startupCompleted();
    },
  };
  const options = { max: 1, connect_timeout: 5, onnotice: () => {} };
  const missing = new URL(testEnv().dbUrl);
  missing.pathname = `/readsync_missing_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const pools = [
    createProgressPool(testEnv().dbUrl, options, pacing),
    createProgressPool(missing.toString(), options, pacing),
    createProgressPool(testEnv().dbUrl, options, pacing),
  ];
  const [first, refused, second] = pools;
  try {
    assert.deepEqual([...await first.sql`select 1 as one`], [{ one: 1 }]);
    assert.equal(heard, 1, "the first pool's startup");
    // The server refuses the startup (3D000: no such database): no startup completed.
    await assert.rejects(refused.sql`select 1`, { code: "3D000" });
    assert.equal(heard, 1, "a refused startup is not heard");
    assert.deepEqual([...await second.sql`select 1 as one`], [{ one: 1 }]);
    assert.equal(heard, 2, "the second pool's startup");
  } finally {
    await Promise.all(pools.map((pool) => pool.end(5)));
  }
});

/** Polls `check` (every 10 ms) until it holds; a failure after 30 s (a hang guard, not a measure). */
async function until(check: () => Promise<boolean> | boolean, what: string): Promise<void> {
  for (const deadline = Date.now() + 30_000;;) {
    if (await check()) return;
    assert.ok(Date.now() < deadline, `${what}: not within 30 s`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

Deno.test({
  name: "the function's pool hears the startups postgres.js makes by itself for a connection whose socket " +
    "was lost under a statement (its 57P01 kept, then refusals kept), so the attempt after them goes at once",
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const role = await refusableRole(admin);
    // One pacing for both pools, as server.ts keeps one across a pool and the one that replaces it. Every
    // attempt of a pool takes a turn (counted: `attempts`), and whether it waited is recorded.
    const paced = connectionPacing(1);
    let heard = 0;
    const turns: Promise<"settled" | "timer">[] = [];
    const pacing: ConnectionPacing = {
      turn: (ended) => {
        const turn = paced.turn(ended);
        turns.push(beforeATimer(turn));
        return turn;
      },
      startupCompleted: () => {
        heard++;
        paced.startupCompleted();
      },
    };
    const options = { max: 1, connect_timeout: 5, onnotice: () => {} };
    const pool = createProgressPool(role.url, options, pacing);
    const next = createProgressPool(role.url, options, pacing);
    // Ends the pool's backend under a running statement: postgres.js keeps the statement as its connection's
    // query, and the backend's 57P01 as that query's error.
    const terminatedUnderStatement = async () => {
      const [{ pid }] = await pool.sql<{ pid: number }[]>`select pg_catalog.pg_backend_pid() as pid`;
      const sleeping = pool.sql`select pg_catalog.pg_sleep(60)`.execute();
      sleeping.catch(() => {}); // awaited below
      await until(async () => {
        const [row] = await admin<{ query: string }[]>`
          select query from pg_catalog.pg_stat_activity where pid = ${pid}::integer and state = 'active'`;
        return /pg_sleep/.test(row?.query ?? "");
      }, "the pool's statement running");
      await admin`select pg_catalog.pg_terminate_backend(${pid}::integer)`;
      await assert.rejects(sleeping, { code: "CONNECTION_CLOSED" });
    };
    try {
      await pool.sql`select 1`;
      assert.equal(heard, 1, "the pool's first startup");

      // The reopened connection's startup is taken; postgres.js fails the query it opened for with the kept
      // 57P01 and skips its reset of the count (which the pool heard before): heard now all the same.
      await terminatedUnderStatement();
      await assert.rejects(pool.sql`select 1`, { code: "57P01" });
      assert.equal(heard, 2, "the startup of the connection reopened with a 57P01 kept");

      // Again, the server now refusing the role's startups (53300): postgres.js reopens the connection by
      // itself after each refusal, kept as the query's error, paced here; once the server takes one, that
      // startup fails the query with the last refusal's error.
      await terminatedUnderStatement();
      await role.refuse();
      const attemptsBefore = turns.length;
      const reopened = pool.sql`select 1`.execute();
      reopened.catch(() => {}); // awaited below
      await until(() => turns.length >= attemptsBefore + 3, "three attempts of the refused connection");
      assert.equal(heard, 2, "no refused startup is heard");
      await role.accept();
      await assert.rejects(reopened, { code: "53300" });
      assert.equal(heard, 3, "the startup postgres.js made by itself after refusals kept");
      assert.deepEqual([...await pool.sql`select 1 as one`], [{ one: 1 }], "the connection serves again");

      // The next attempt (a pool made in place of this one, as after a call gave up) goes at once: the
      // pacing's count starts over from that startup. Before, it stood at the refused attempts (3 and more)
      // and this attempt waited its paced turn (up to 4 s, and as long again for each one after it).
      const attemptsThen = turns.length;
      assert.deepEqual([...await next.sql`select 1 as one`], [{ one: 1 }]);
      assert.equal(turns.length, attemptsThen + 1, "one attempt of the next pool");
      assert.equal(await turns.at(-1), "settled", "the next pool's attempt went at once");
      assert.equal(heard, 4, "and its startup heard");
    } finally {
      await Promise.all([pool.end(5), next.end(5)]);
      await role.drop();
      await admin.end();
    }
  },
});

Deno.test({
  name: "the function's pool ended while a statement of it still runs: its end finishes at its time, the " +
    "statement's query failed and its socket closed, not once the server has finished the statement",
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const pool = createProgressPool(testEnv().dbUrl, { max: 1, connect_timeout: 5, onnotice: () => {} }, {
      turn: () => Promise.resolve(),
      startupCompleted: () => {},
    });
    // The test's own connection holds an advisory lock; the pool's transaction waits for it (no timeout).
    const key = Math.floor(Math.random() * 2 ** 31);
    const holder = adminSql({ max: 1 });
    try {
      await holder`select pg_catalog.pg_advisory_lock(${key}::bigint)`;
      const [{ pid }] = await pool.sql<{ pid: number }[]>`select pg_catalog.pg_backend_pid() as pid`;
      const waiting = pool.sql.begin((tx) => tx`select pg_catalog.pg_advisory_xact_lock(${key}::bigint)`);
      waiting.catch(() => {}); // awaited below
      await until(async () => {
        const [row] = await admin<{ waiting: boolean }[]>`
          select wait_event_type is not distinct from 'Lock' as waiting
            from pg_catalog.pg_stat_activity where pid = ${pid}::integer`;
        return row?.waiting === true;
      }, "the pool's statement waiting for the lock");
      // The end's time is up at once: the statement is destroyed, and the end finishes with the pool's
      // socket closed, while the server still runs the statement (it reads the connection's end only once
      // the statement is over). Before, the end waited for the server to close the socket: for as long as
      // the statement ran (here until the lock is released), or a server out of reach never did.
      let endFinished = false;
      const ending = pool.end(0).then(() => endFinished = true);
      await until(() => endFinished, "the pool's end finished while the statement still ran");
      assert.equal(pool.openSockets, 0, "no socket of the pool open");
      // The transaction fails at its connection's close (postgres.js's begin() hears it so: its statement
      // destroyed, its ROLLBACK is kept for a connection that sends nothing more).
      await assert.rejects(waiting, { code: "CONNECTION_CLOSED" });
      const [row] = await admin<{ waiting: boolean }[]>`
        select wait_event_type is not distinct from 'Lock' as waiting
          from pg_catalog.pg_stat_activity where pid = ${pid}::integer`;
      assert.equal(row?.waiting, true, "the statement still ran when the end had finished");
      await ending;
    } finally {
      await holder.end();
      await pool.end(0);
      await admin.end();
    }
  },
});
