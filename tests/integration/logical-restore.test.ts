// A project moved by pg_dump and restore into another cluster (README, "Changes cursors"): the rows
// keep the old cluster's change_xid / deleted_xid, which can lie above every transaction id the new
// cluster has assigned, so its changes reads take them for writes still in flight and a reader with
// more of them than a page never gets past them. The documented step, run once as postgres after the
// restore, `select private.reading_progress_adopt_restored_rows()`, must free them. pgTAP 010 checks
// the function on ids set inside its own transaction; this test does the real thing: a data dump of
// the test stack restored into a fresh stack of its own, read through that stack's progress API.
//
// Local stack only (it starts a second stack and dumps the test database with pg_dump).

import assert from "node:assert/strict";
import postgres from "postgres";
import { psql } from "../../local/stack/database.ts";
import { mintUserAccessToken } from "../../local/stack/keys.ts";
import { startLocalStack } from "../../local/stack/stack.ts";
import { findPostgresBinaries } from "../../local/stack/system.ts";
import { adminSql, createTestUser, testEnv } from "../support/env.ts";
import { asUser, ownEndpoint } from "./realtime_support.ts";
import type { ChangesResponse } from "../../shared/progress/types.ts";

Deno.test({
  name:
    "logical restore: after pg_dump and restore into another cluster, the adoption frees the changes feed",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const source = adminSql();
  const reader = await createTestUser();
  const target = await startLocalStack({ apiPort: 0, dbPort: 0, ownStackOnly: true, log: () => {} });
  const targetSql = postgres(target.dbUrl, { max: 2, onnotice: () => {} });
  const dumpFile = await Deno.makeTempFile({ suffix: ".sql" });
  try {
    // Both stacks copy one cached initdb data directory (local/stack/postgres.ts), so they share a
    // system identifier, as copies of a provider's prepared image would: the case in which only the
    // adoption's new cursor origin tells the old project's cursors apart (pgTAP 010 checks it too).
    const systemOf = async (sql: postgres.Sql) =>
      (await sql`select system_identifier::text as id from pg_control_system()`)[0].id;
    if (Deno.env.get("READSYNC_PG_TEMPLATE") !== "0") {
      assert.equal(await systemOf(targetSql), await systemOf(source), "both stacks from the initdb template");
    }
    // The source's ids must lie above everything the fresh target will have assigned (as between two
    // projects of different ages): spend ids in the source until they do.
    const xid = async (sql: postgres.Sql) => BigInt((await sql`select pg_current_xact_id()::text as x`)[0].x);
    const lead = (await xid(targetSql)) + 5_000n - (await xid(source));
    if (lead > 0n) {
      await source.unsafe(
        `do $$ begin for i in 1..${lead} loop perform pg_current_xact_id(); commit; end loop; end $$`,
      );
    }

    // 150 series through the API (two batches), one of them then deleted by the reader (remembered).
    const api = async (
      base: string,
      anonKey: string,
      token: string,
      path: string,
      init: RequestInit = {},
    ) => {
      const res = await fetch(`${base}/functions/v1/progress${path}`, {
        ...init,
        headers: { apikey: anonKey, Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      });
      const body = await res.json();
      assert.equal(res.status, 200, JSON.stringify(body));
      return body;
    };
    const at = Date.now() - 60_000;
    for (const first of [0, 75]) {
      const writes = Array.from({ length: 75 }, (_, k) => ({
        series_id: `moved-${String(first + k).padStart(3, "0")}`,
        chapter: first + k,
        page: 1,
        percentage: 0.1,
        device_id: "phone",
        updated_at: new Date(at + first + k).toISOString(),
      }));
      await api(env.url, env.anonKey, reader.accessToken, "/batch", {
        method: "POST",
        body: JSON.stringify({ writes }),
      });
    }
    await asUser(
      source,
      reader.id,
      (tx) =>
        tx`delete from public.reading_progress where user_id = ${reader.id} and series_id = 'moved-007'`,
    );
    const oldCursor =
      (await api(env.url, env.anonKey, reader.accessToken, "/changes?since=") as ChangesResponse)
        .next_cursor;

    // The move: a data-only dump (triggers off while it loads, as pg_dump's --disable-triggers writes
    // it) of the users and readsync's tables, loaded into the target, whose migrations already ran.
    const pgDump = `${findPostgresBinaries()!.binDir}/pg_dump`;
    const dumped = await new Deno.Command(pgDump, {
      args: [
        "--data-only",
        "--disable-triggers",
        "--table=auth.users",
        "--table=public.reading_progress",
        "--table=public.reading_progress_deletions",
        "--table=public.reading_progress_conflicts",
        `--file=${dumpFile}`,
        `--dbname=${env.dbUrl}`,
      ],
      stderr: "piped",
    }).output();
    assert.ok(dumped.success, new TextDecoder().decode(dumped.stderr));
    await psql(target.dbUrl, ["-f", dumpFile]);

    const token = await mintUserAccessToken(reader.id, { email: reader.email, secret: target.jwtSecret });
    const changes = (since: string) =>
      api(target.apiUrl, target.anonKey, token, `/changes?since=${encodeURIComponent(since)}`) as Promise<
        ChangesResponse
      >;
    /** Follows next_cursor for at most `pages` pages; what was seen, and whether it reached the end. */
    const readFrom = async (since: string, pages: number) => {
      const seen = new Map<string, ChangesResponse["changes"][number]>();
      let cursor = since;
      for (let i = 0; i < pages; i++) {
        const page = await changes(cursor);
        for (const item of page.changes) seen.set(item.series_id, item);
        cursor = page.next_cursor;
        if (!page.has_more) return { seen, done: true, cursor };
      }
      return { seen, done: false, cursor };
    };

    // Restored as they were: 149 rows and the deletion, all with the source's ids.
    const [{ rows, deletions }] = await targetSql<{ rows: number; deletions: number }[]>`
      select (select count(*)::int from public.reading_progress where user_id = ${reader.id}) as rows,
             (select count(*)::int from public.reading_progress_deletions where user_id = ${reader.id}) as deletions`;
    assert.deepEqual([rows, deletions], [149, 1]);
    const stuck = await readFrom("", 5);
    assert.equal(
      stuck.done,
      false,
      "before the adoption the feed cannot get past rows with ids from the future",
    );
    assert.ok(stuck.seen.size < 150, `saw ${stuck.seen.size} of 150 in 5 pages`);

    const [{ adopted }] = await targetSql<{ adopted: { rows: number; deletions: number } }[]>`
      select private.reading_progress_adopt_restored_rows() as adopted`;
    assert.ok(adopted.rows >= 149 && adopted.deletions >= 1, JSON.stringify(adopted));

    // Now the feed reads to the end: every row as restored, and the deletion.
    const freed = await readFrom("", 10);
    assert.equal(freed.done, true);
    assert.equal(freed.seen.size, 150);
    assert.equal(freed.seen.get("moved-007")?.deleted, true);
    assert.equal(freed.seen.get("moved-149")?.chapter, 149);
    // A device's cursor from the old project starts over here (another cluster's tag).
    assert.equal((await readFrom(oldCursor, 10)).seen.size, 150);
    // Nothing more until something changes; then exactly that.
    assert.deepEqual((await changes(freed.cursor)).changes, []);
    await api(target.apiUrl, target.anonKey, token, "", {
      method: "POST",
      body: JSON.stringify({
        series_id: "moved-149",
        chapter: 150,
        page: 2,
        percentage: 0.2,
        device_id: "tablet",
        updated_at: new Date().toISOString(),
      }),
    });
    const next = await changes(freed.cursor);
    assert.deepEqual(next.changes.map((c) => [c.series_id, c.chapter]), [["moved-149", 150]]);
    assert.equal(next.has_more, false);
  } finally {
    await Deno.remove(dumpFile).catch(() => {});
    await targetSql.end();
    await target.stop();
    await source.end();
  }
});
