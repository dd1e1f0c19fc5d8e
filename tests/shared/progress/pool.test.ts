// The progress function's pool (shared/progress/pool.ts) without a database: its pacing of connection
// attempts, and a pool whose every connection a server accepts and closes at once (as a proxy or pooler in
// front of a database that is down may), over real TCP on the loopback:
//   * the pacing lets the free attempts go at once, spaces the ones after, and lets them go at once again
//     once a startup completed; a turn that its pool's end stops rejects;
//   * postgres.js 3.4.9 reopens such a connection for its query without a pause (the close of a socket
//     opened for a query reconnects at once); the pool's attempts are paced, and once the pool is ended
//     it opens no socket: the query fails (CONNECTION_ENDED) and the server is never reached again.

import assert from "node:assert/strict";
import { beforeATimer } from "../../support/beforeATimer.ts";
import { connectionPacing, createProgressPool } from "../../../shared/progress/pool.ts";

Deno.test("pool pacing: the free attempts go at once, the next waits, and a completed startup frees them again", async () => {
  const pacing = connectionPacing(2);
  const open = new AbortController();
  assert.equal(await beforeATimer(pacing.turn(open.signal)), "settled", "first free attempt");
  assert.equal(await beforeATimer(pacing.turn(open.signal)), "settled", "second free attempt");
  const third = pacing.turn(open.signal);
  assert.equal(await beforeATimer(third), "timer", "the attempt after the free ones waits");
  await third;
  pacing.startupCompleted();
  assert.equal(await beforeATimer(pacing.turn(open.signal)), "settled", "free again after a startup");
  assert.equal(await beforeATimer(pacing.turn(open.signal)), "settled", "and the second one too");
  // A turn that waits rejects when its pool ends, and a turn asked for after that rejects at once.
  const waiting = pacing.turn(open.signal);
  open.abort();
  await assert.rejects(waiting);
  await assert.rejects(pacing.turn(open.signal));
});

/**
 * A TCP server on the loopback that accepts every connection and closes it at once: `accepted` counts them,
 * `until(n)` settles once n have come.
 */
function closingServer() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let accepted = 0;
  const waiters: { n: number; resolve: () => void }[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      accepted++;
      conn.close();
      for (const waiter of waiters.filter((w) => w.n <= accepted)) waiter.resolve();
    }
  })().catch(() => {});
  return {
    port: (listener.addr as Deno.NetAddr).port,
    get accepted() {
      return accepted;
    },
    until(n: number): Promise<void> {
      if (accepted >= n) return Promise.resolve();
      const { promise, resolve } = Promise.withResolvers<void>();
      waiters.push({ n, resolve });
      return promise;
    },
    async close() {
      listener.close();
      await accepting;
    },
  };
}

Deno.test("pool: a connection the server closes at once is reopened paced, and an ended pool opens no socket", async () => {
  const server = closingServer();
  const pool = createProgressPool(
    `postgres://nobody:none@127.0.0.1:${server.port}/none`,
    { max: 1, connect_timeout: 5, onnotice: () => {} },
    connectionPacing(1),
  );
  try {
    const query = pool.sql`select 1`;
    const failed = query.then(() => undefined, (error: unknown) => error);
    // postgres.js reopens the connection for its query after each close; the pacing spaces the attempts
    // (the first at once, then 50-100 ms, doubling), so the fourth comes after at least 175 ms.
    await server.until(4);
    const atEnd = server.accepted;
    const ended = pool.end(5);
    const error = (await failed) as { code?: unknown };
    assert.equal(error?.code, "CONNECTION_ENDED", "the query fails once the pool is ended");
    await ended;
    assert.equal(pool.openSockets, 0, "no socket of the pool open once end() has resolved");
    // At most the attempt already on its way when end() was called. Before (postgres.js's own sockets), the
    // connection went on reopening until end()'s timeout destroyed it.
    assert.ok(server.accepted - atEnd <= 1, `${server.accepted - atEnd} connections after end()`);
  } finally {
    await pool.end(0);
    await server.close();
  }
});

Deno.test("pool pacing: a completed startup lets the attempts already waiting their turn go at once, and the next ones too", async () => {
  // A pool of three connections reopening while the server refuses startups (the free attempts spent): two
  // attempts wait their paced turns, the second after the first. A startup then completes (the server is
  // back): the waiting attempts go at once, as the first two since it, and a third, new, too. Before, each
  // kept its time (up to 4 s a turn after the one before it, a pool's connections in a row), and the new
  // attempt, though free, was spaced after the last one waiting: calls' BEGINs waited (and gave up, 503,
  // the pool replaced) with the server up.
  const pacing = connectionPacing(3);
  const open = new AbortController();
  for (const n of [1, 2, 3]) {
    assert.equal(await beforeATimer(pacing.turn(open.signal)), "settled", `free attempt ${n}`);
  }
  const fourth = pacing.turn(open.signal);
  const fifth = pacing.turn(open.signal);
  assert.equal(await beforeATimer(fourth), "timer", "the attempt after the free ones waits");
  pacing.startupCompleted();
  assert.equal(await beforeATimer(fourth), "settled", "a waiting attempt goes once a startup completed");
  assert.equal(await beforeATimer(fifth), "settled", "and the one after it");
  assert.equal(await beforeATimer(pacing.turn(open.signal)), "settled", "a new free attempt goes at once");
  // The free attempts since the startup spent (the two that waited count): the next one waits again.
  const paced = pacing.turn(open.signal);
  assert.equal(await beforeATimer(paced), "timer", "the attempt after the free ones waits again");
  open.abort();
  await assert.rejects(paced);
});
