// The progress function's pool (shared/progress/pool.ts) on the real database: the pacing of its connection
// attempts is told of each startup one of its connections completes (postgres.js 3.4.9 sets the count its
// connections share, options.shared.retries, to 0 then, which the pool hears), and not of a startup the
// server refuses. Without that, the pacing would never let the pool's attempts go at once again after an
// outage (or, were the count gone in another postgres.js, the pool would not be paced at all).

import assert from "node:assert/strict";
import { type ConnectionPacing, connectionPacing, createProgressPool } from "../../shared/progress/pool.ts";
import { testEnv } from "./support.ts";

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
