// A point-in-time restore takes the project's cluster back to an earlier moment: a physical copy, so it
// keeps the system identifier (and the cursor origin), and its transaction ids start again from the
// restore point. A device that read the changes after that point holds a cursor above every id the
// restored cluster has assigned; the changes written after the restore get ids below that cursor, so,
// taking the cursor for its own, the feed never reported them to that device (while the ids passed
// its cursor, later writes were reported and its cursor moved on). The restore's promotion starts a
// new timeline, which the cursor's tag now names: such a cursor starts over from the beginning.
//
// This test does the real thing: a base backup of the test stack's cluster (pg_basebackup), written to
// after the backup, then recovered to the backup's end and promoted (local/stack/postgres.ts
// `restoreOf`), read through the progress function's handler over real HTTP on the restored cluster.
//
// Local stack only (it takes a base backup of the test database over a replication connection).

import assert from "node:assert/strict";
import postgres from "postgres";
import { startPostgres } from "../../local/stack/postgres.ts";
import { createProgressHandlerFromEnv } from "../../shared/progress/server.ts";
import { adminSql, createTestUser, localRealtime, testEnv } from "../support/env.ts";
import { serveLocal } from "../functions/support.ts";
import type { ChangesResponse } from "../../shared/progress/types.ts";

Deno.test({
  name:
    "point-in-time restore: a cursor read after the restore point still gets every write made after the restore",
  sanitizeOps: false,
  sanitizeResources: false,
  ignore: !localRealtime || !Deno.env.get("SUPABASE_JWT_SECRET"),
}, async () => {
  const env = testEnv();
  const source = adminSql({ max: 1 });
  const reader = await createTestUser();
  let restored: Awaited<ReturnType<typeof startPostgres>> | null = null;
  let restoredSql: postgres.Sql | null = null;
  let handler: ReturnType<typeof createProgressHandlerFromEnv> | null = null;
  let server: ReturnType<typeof serveLocal> | null = null;
  try {
    const api = async (base: string, path: string, init: RequestInit = {}) => {
      const res = await fetch(`${base}${path}`, {
        ...init,
        headers: { Authorization: `Bearer ${reader.accessToken}`, "Content-Type": "application/json" },
      });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      return body;
    };
    const write = (base: string, series_id: string, chapter: number) =>
      api(base, "", {
        method: "POST",
        body: JSON.stringify({
          series_id,
          chapter,
          page: 1,
          percentage: 0.1,
          device_id: "tablet",
          updated_at: new Date().toISOString(),
        }),
      });
    /** The device's reads from `since` to the end: every item seen, and the cursor it ends on. */
    const readToEnd = async (base: string, since: string) => {
      const seen = new Map<string, ChangesResponse["changes"][number]>();
      let cursor = since;
      for (let page = 0; page < 20; page++) {
        const answer = await api(base, `/changes?since=${encodeURIComponent(cursor)}`) as ChangesResponse;
        for (const item of answer.changes) seen.set(item.series_id, item);
        cursor = answer.next_cursor;
        if (!answer.has_more) return { seen, cursor };
      }
      throw new Error("the changes did not end within 20 pages");
    };
    const spendIds = (sql: postgres.Sql, n: number) =>
      sql.unsafe(`do $$ begin for i in 1..${n} loop perform pg_current_xact_id(); commit; end loop; end $$`);

    const stackFn = `${env.url}/functions/v1/progress`;
    await write(stackFn, "pitr-before", 1);
    const before = await readToEnd(stackFn, "");
    assert.equal(before.seen.get("pitr-before")?.chapter, 1);

    // The restore point: a base backup, now. What the project does after it is lost by the restore.
    restored = await startPostgres({ restoreOf: env.dbUrl, log: () => {} });
    restoredSql = postgres(restored.url, { max: 1, onnotice: () => {} });
    await spendIds(source, 50);
    await write(stackFn, "pitr-lost", 2);
    const after = await readToEnd(stackFn, before.cursor);
    assert.equal(after.seen.get("pitr-lost")?.chapter, 2);
    const deviceCursor = after.cursor; // above every id the restored cluster has assigned

    // The restored project: the same system identifier, a new timeline, the write after the backup gone.
    const [{ timeline, lost }] = await restoredSql<{ timeline: number; lost: number }[]>`
      select (select timeline_id from pg_control_checkpoint()) as timeline,
             (select count(*)::int from public.reading_progress
               where user_id = ${reader.id} and series_id = 'pitr-lost') as lost`;
    assert.ok(timeline > 1, `promoted to a new timeline (${timeline})`);
    assert.equal(lost, 0, "the write made after the restore point is not in the restored cluster");
    handler = createProgressHandlerFromEnv({
      get: (name) => ({ SUPABASE_DB_URL: restored!.url, SUPABASE_JWT_SECRET: env.jwtSecret })[name],
    }, { log: () => {} });
    server = serveLocal(handler);
    const restoredFn = `${server.url}/functions/v1/progress`;

    // Reading goes on after the restore: a write, then (ids passing the device's cursor) another.
    await write(restoredFn, "pitr-after-restore", 3);
    const first = await readToEnd(restoredFn, deviceCursor);
    await spendIds(restoredSql, 100);
    await write(restoredFn, "pitr-later", 4);
    const second = await readToEnd(restoredFn, first.cursor);
    const seen = new Map([...first.seen, ...second.seen]);
    assert.equal(seen.get("pitr-later")?.chapter, 4, "the later write reaches the device");
    assert.equal(
      seen.get("pitr-after-restore")?.chapter,
      3,
      `the write made right after the restore reaches the device (it saw ${
        JSON.stringify([...seen.keys()])
      })`,
    );
  } finally {
    await server?.shutdown();
    await handler?.close();
    await restoredSql?.end();
    await restored?.stop();
    await source.end();
  }
});
