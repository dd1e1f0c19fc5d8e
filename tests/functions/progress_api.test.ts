// The progress edge function over real HTTP (the local gateway at ${SUPABASE_URL}/functions/v1/progress)
// against the real database: every route's happy path, last-write-wins through the API (replay,
// ties, future clamp, tombstones), and CORS.

import assert from "node:assert/strict";
import { createTestUser } from "../support/env.ts";
import {
  batchWriteResponseSchema,
  changesResponseSchema,
  progressListResponseSchema,
  progressResponseSchema,
  writeResultSchema,
} from "../../shared/progress/schemas.ts";
import type { Progress } from "../../shared/progress/types.ts";
import { compareInstants } from "../../shared/progress/instant.ts";
import { adminSql, call, conflictRows, errorOf, seriesId, write } from "./support.ts";

const iso = (ms: number) => new Date(ms).toISOString();
const BASE_MS = Date.parse("2026-06-01T12:00:00.000Z");

Deno.test("POST /progress stores a write and GET /progress/series/:id reads it back", async () => {
  const a = await createTestUser();
  const series = seriesId("one");
  const sent = write({
    series_id: series,
    chapter: 12,
    page: 30,
    percentage: 0.12,
    device_id: "phone-1",
    updated_at: "2026-06-01T12:00:00.123456Z",
  });
  const posted = await call("POST", "", { token: a.accessToken, body: sent });
  assert.equal(posted.status, 200, JSON.stringify(posted.body));
  assert.match(posted.headers.get("content-type") ?? "", /^application\/json/);
  const result = writeResultSchema.parse(posted.body);
  assert.equal(result.won, true);
  assert.equal(result.conflict, null);
  assert.equal(result.conflict_with, null);
  assert.deepEqual(
    { ...result.progress, synced_at: "", created_at: "", change_xid: "" },
    {
      user_id: a.id,
      series_id: series,
      chapter: 12,
      page: 30,
      percentage: 0.12,
      cleared: false,
      device_id: "phone-1",
      updated_at: "2026-06-01T12:00:00.123Z",
      synced_at: "",
      created_at: "",
      change_xid: "",
    },
    "the answer is the stored row, updated_at truncated to ms, user from the token",
  );

  const got = await call("GET", `/series/${series}`, { token: a.accessToken });
  assert.equal(got.status, 200);
  assert.deepEqual(progressResponseSchema.parse(got.body).progress, result.progress);
});

Deno.test("GET /progress lists the library newest first, keyset-paginated, tombstones only on request", async () => {
  const a = await createTestUser();
  const ids = [0, 1, 2, 3, 4].map((i) => seriesId(`lib${i}`));
  for (const [i, id] of ids.entries()) {
    const r = await call("POST", "", {
      token: a.accessToken,
      body: write({ series_id: id, updated_at: iso(BASE_MS + i * 1000) }),
    });
    assert.equal(r.status, 200);
  }
  const seen: Progress[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const q: string = `?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
    const page = await call("GET", q, { token: a.accessToken });
    assert.equal(page.status, 200, JSON.stringify(page.body));
    const body = progressListResponseSchema.parse(page.body);
    assert.ok(body.items.length <= 2);
    seen.push(...body.items);
    cursor = body.next_cursor;
    pages++;
  } while (cursor !== null && pages < 10);
  assert.equal(pages, 3, "5 rows in pages of 2");
  assert.deepEqual(
    seen.map((p) => p.series_id),
    [...ids].reverse(),
    "newest first, nothing repeated or skipped",
  );

  const reset = await call(
    "DELETE",
    `/series/${ids[4]}?device_id=dev-test&updated_at=${encodeURIComponent(iso(BASE_MS + 9000))}`,
    {
      token: a.accessToken,
    },
  );
  assert.equal(reset.status, 200);
  const live = progressListResponseSchema.parse((await call("GET", "", { token: a.accessToken })).body);
  assert.deepEqual(
    live.items.map((p) => p.series_id),
    [ids[3], ids[2], ids[1], ids[0]],
    "the tombstone is hidden",
  );
  const all = progressListResponseSchema.parse(
    (await call("GET", "?include_cleared=true", { token: a.accessToken })).body,
  );
  assert.equal(all.items[0].series_id, ids[4]);
  assert.equal(all.items[0].cleared, true);
});

Deno.test("POST /progress/batch applies 1..100 writes and answers in input order", async () => {
  const a = await createTestUser();
  const x = seriesId("bx");
  const y = seriesId("by");
  const res = await call("POST", "/batch", {
    token: a.accessToken,
    body: {
      writes: [
        write({ series_id: y, chapter: 1, updated_at: iso(BASE_MS + 2000) }),
        write({ series_id: x, chapter: 2, updated_at: iso(BASE_MS + 2000) }),
        write({ series_id: y, chapter: 3, device_id: "dev-other", updated_at: iso(BASE_MS + 1000) }),
        write({ series_id: x, chapter: 4, updated_at: iso(BASE_MS + 3000) }),
      ],
    },
  });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const { results } = batchWriteResponseSchema.parse(res.body);
  assert.deepEqual(
    results.map((r) => [r.won, r.conflict, r.progress.series_id, r.progress.chapter]),
    [[true, null, y, 1], [true, null, x, 2], [false, "stale", y, 1], [true, null, x, 4]],
  );

  const hundred = Array.from({ length: 100 }, (_, i) => write({ series_id: `${x}-${i}` }));
  const full = await call("POST", "/batch", { token: a.accessToken, body: { writes: hundred } });
  assert.equal(full.status, 200);
  assert.equal(batchWriteResponseSchema.parse(full.body).results.length, 100);
});

Deno.test("POST /progress/batch sent twice (its answer lost): no conflict, the later write answered as the first time", async () => {
  // An e-reader's queue holds two positions of one series; the connection drops after the server
  // committed, and the client sends the batch again.
  const a = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const series = seriesId("sent-twice");
    const writes = [
      write({
        series_id: series,
        chapter: 1,
        page: 3,
        device_id: "ereader",
        updated_at: iso(BASE_MS + 1000),
      }),
      write({
        series_id: series,
        chapter: 2,
        page: 8,
        device_id: "ereader",
        updated_at: iso(BASE_MS + 2000),
      }),
    ];
    const send = async () => {
      const res = await call("POST", "/batch", { token: a.accessToken, body: { writes } });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      return batchWriteResponseSchema.parse(res.body).results;
    };
    const first = await send();
    const again = await send();
    assert.deepEqual(first.map((r) => [r.won, r.conflict]), [[true, null], [true, null]]);
    assert.deepEqual(
      [again[0].won, again[0].conflict, again[0].conflict_with, again[0].progress.page],
      [false, null, null, 8],
      "the earlier write met its own device's later one: not stored, no conflict",
    );
    assert.deepEqual(again[1], first[1], "the later write is a replay");
    assert.deepEqual(
      (await conflictRows(sql, a.id, series)).map((r) => [r.kind, r.losing_device_id, r.winning_device_id]),
      [["self", "ereader", "ereader"]],
      "logged as 'self' (once), apart from the conflicts",
    );
  } finally {
    await sql.end();
  }
});

Deno.test("GET /progress/changes: every write shows up after the cursor, paging until has_more is false", async () => {
  const a = await createTestUser();
  const first = changesResponseSchema.parse((await call("GET", "/changes", { token: a.accessToken })).body);
  assert.deepEqual(first.changes, [], "a new user has no changes");
  assert.equal(first.has_more, false);

  const ids = [0, 1, 2].map((i) => seriesId(`ch${i}`));
  for (const id of ids) await call("POST", "", { token: a.accessToken, body: write({ series_id: id }) });

  const got = new Map<string, Progress>();
  let cursor = first.next_cursor;
  for (let i = 0; i < 10; i++) {
    const page = await call("GET", `/changes?since=${encodeURIComponent(cursor)}&limit=2`, {
      token: a.accessToken,
    });
    assert.equal(page.status, 200, JSON.stringify(page.body));
    const body = changesResponseSchema.parse(page.body);
    assert.ok(body.changes.length <= 2);
    for (const row of body.changes) got.set(row.series_id, row);
    cursor = body.next_cursor;
    if (!body.has_more) break;
  }
  assert.deepEqual([...got.keys()].sort(), [...ids].sort(), "the three writes, each at least once");

  // A later write shows up from the last cursor; a row that did not change again is not needed.
  const upd = await call("POST", "", {
    token: a.accessToken,
    body: write({ series_id: ids[1], chapter: 9 }),
  });
  assert.equal(upd.status, 200);
  const next = changesResponseSchema.parse(
    (await call("GET", `/changes?since=${encodeURIComponent(cursor)}`, { token: a.accessToken })).body,
  );
  const again = next.changes.find((r) => r.series_id === ids[1]);
  assert.equal(again?.chapter, 9, "the update is in the next page");
  for (const row of next.changes) {
    assert.ok(
      BigInt(row.change_xid) >=
        BigInt(cursor.replace(/^(?:[0-9a-f]{8}\.)?(?:u[0-9a-f]{8}\.)?/, "").split(":")[0] || "0"),
      "nothing older than the cursor",
    );
  }
});

Deno.test("GET /progress/changes pages through rows and hard deletes alike: every series ends in its current state, deletes marked", async () => {
  const a = await createTestUser();
  const ids = [0, 1, 2, 3, 4].map((i) => seriesId(`mix${i}`));
  for (const id of ids) await call("POST", "", { token: a.accessToken, body: write({ series_id: id }) });
  // Two series removed by hard DELETEs (each its own transaction, as a user or the dashboard would).
  const sql = adminSql();
  try {
    for (const id of [ids[1], ids[3]]) {
      await sql`delete from public.reading_progress where user_id = ${a.id} and series_id = ${id}`;
    }
  } finally {
    await sql.end();
  }

  const seen: { series: string; deleted: boolean }[] = [];
  let cursor = "";
  for (let i = 0; i < 20; i++) {
    const page = await call("GET", `/changes?since=${encodeURIComponent(cursor)}&limit=2`, {
      token: a.accessToken,
    });
    assert.equal(page.status, 200, JSON.stringify(page.body));
    const body = changesResponseSchema.parse(page.body);
    for (const item of body.changes) seen.push({ series: item.series_id, deleted: item.deleted === true });
    cursor = body.next_cursor;
    if (!body.has_more) break;
  }
  const latest = new Map(seen.map((s) => [s.series, s.deleted]));
  assert.deepEqual(
    ids.map((id) => [id, latest.get(id)]),
    ids.map((id, i) => [id, i === 1 || i === 3]),
    "three rows and two deletions, whatever page boundaries fell between them",
  );
});

/** The row of the series the test put in readsync_test.user_id and readsync_test.series (releaseOnceWaitedOn). */
const THE_ROW = "user_id = pg_catalog.current_setting('readsync_test.user_id')::uuid " +
  "and series_id = pg_catalog.current_setting('readsync_test.series')";

/**
 * Makes `session` (a reserved connection in an open transaction that holds the lock the function's
 * write will wait for) run `work` and commit once a session waits for one of its locks, and, if set
 * (readsync_test.release_at, in the transaction), not before that instant of the server's clock. All
 * of it is ONE simple query that the server runs on its own: a DO block that waits for the signal
 * (pg_blocking_pids), then `work` (statements without parameters: values come from the transaction's
 * readsync_test.* settings), then COMMIT. So the release follows the function's wait by a few
 * statements in the server, however slow the test's process is on a loaded machine (its polling and
 * round trips no longer count against the function's fixed 2 s lock timeout). Returns once that
 * query waits (so the request can be sent: its wait cannot begin before the watcher watches), with
 * the release's promise to await after the request. Guards: 20 s each.
 */
async function releaseOnceWaitedOn(
  sql: ReturnType<typeof adminSql>,
  session: Awaited<ReturnType<ReturnType<typeof adminSql>["reserve"]>>,
  work: string,
): Promise<{ released: Promise<unknown> }> {
  const [{ pid }] = await session<{ pid: number }[]>`select pg_catalog.pg_backend_pid() as pid`;
  const released = session.unsafe(
    `do $$
     declare
       release_at timestamptz :=
         coalesce(nullif(pg_catalog.current_setting('readsync_test.release_at', true), ''), '-infinity');
       deadline timestamptz := pg_catalog.clock_timestamp() + interval '20 seconds';
     begin
       while not (exists (select from pg_catalog.pg_stat_activity
                           where pg_catalog.pg_backend_pid() = any(pg_catalog.pg_blocking_pids(pid)))
                  and pg_catalog.clock_timestamp() >= release_at) loop
         if pg_catalog.clock_timestamp() > deadline then
           raise exception 'the function''s write never waited for this transaction''s lock (20 s)';
         end if;
         perform pg_catalog.pg_sleep(0.005);
       end loop;
     end $$;
     ${work};
     commit`,
  ).simple(); // one Query message: several statements, run one after the other by the server
  released.catch(() => {}); // awaited by the test after its request; a failure is seen there
  for (const deadline = Date.now() + 20_000;;) {
    const [{ watching }] = await sql<{ watching: boolean }[]>`
      select exists (select from pg_catalog.pg_stat_activity where pid = ${pid} and wait_event = 'PgSleep')
        as watching`;
    if (watching) return { released };
    assert.ok(Date.now() < deadline, "the release never started waiting for the function's write");
    await new Promise((r) => setTimeout(r, 20));
  }
}

Deno.test("an insert that waited while another transaction deleted the series again starts a later life", async () => {
  // Devices order lives by created_at. The function's INSERT is stamped, then waits for a script's
  // uncommitted insert of the same series; the script deletes, inserts and deletes it again and
  // commits. The INSERT must not go through with a created_at older than those deleted lives
  // (every device would drop it as an older life): it is refused (40001) and retried.
  const a = await createTestUser();
  const series = seriesId("raced");
  const sql = adminSql({ max: 3 });
  const script = await sql.reserve();
  try {
    await script`begin`;
    await script`select pg_catalog.set_config('readsync_test.user_id', ${a.id}, true),
                        pg_catalog.set_config('readsync_test.series', ${series}, true)`;
    await script`insert into public.reading_progress (user_id, series_id, chapter, page, device_id, updated_at)
                 values (${a.id}, ${series}, 1, 1, 'script', '2026-01-01T00:00:00Z')`;
    // Once the function's INSERT (stamped) waits for the script's row: delete, insert, delete, commit.
    const { released } = await releaseOnceWaitedOn(
      sql,
      script,
      `delete from public.reading_progress where ${THE_ROW};
       insert into public.reading_progress (user_id, series_id, chapter, page, device_id, updated_at)
         values (pg_catalog.current_setting('readsync_test.user_id')::uuid,
                 pg_catalog.current_setting('readsync_test.series'), 2, 2, 'script', '2026-01-01T00:00:01Z');
       delete from public.reading_progress where ${THE_ROW}`,
    );
    const posted = call("POST", "", {
      token: a.accessToken,
      body: write({
        series_id: series,
        chapter: 5,
        page: 5,
        device_id: "phone",
        updated_at: "2026-01-02T00:00:00Z",
      }),
    });
    await released;
    const answer = await posted;
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(writeResultSchema.parse(answer.body).won, true);
    const [row] = await sql<{ later: boolean }[]>`
      select rp.created_at > (d.version ->> 'created_at')::timestamptz as later
        from public.reading_progress rp
        join public.reading_progress_deletions d using (user_id, series_id)
       where rp.user_id = ${a.id} and rp.series_id = ${series}`;
    assert.equal(row?.later, true, "the stored life began after the last deleted one");
  } finally {
    await script`rollback`.catch(() => {});
    script.release();
    await sql.end();
  }
});

Deno.test("an insert that waited while another transaction deleted a life stamped in the same microsecond starts a later life", async () => {
  // The clock lies behind the last remembered deletion (it stepped back), so the stamp trigger dates
  // every new life 1 us after that deletion's life: the script's uncommitted insert and the
  // function's INSERT, which waits for it, are both stamped so. The script deletes its life and
  // commits. The function's row must not begin a life with the deleted one's created_at (devices
  // order lives by created_at, then by key: they would take it for the deleted life, and drop it
  // where its key is older): it is refused (40001) and retried, after the deletion.
  const a = await createTestUser();
  const series = seriesId("same-us");
  const sql = adminSql({ max: 3 });
  const script = await sql.reserve();
  try {
    await sql`insert into public.reading_progress_deletions (user_id, series_id, deleted_xid, deleted_at, version)
              values (${a.id}, ${series}, pg_current_xact_id(), now(),
                      jsonb_build_object('series_id', ${series}::text, 'created_at', clock_timestamp() + interval '1 hour'))`;
    await script`begin`;
    await script`select pg_catalog.set_config('readsync_test.user_id', ${a.id}, true),
                        pg_catalog.set_config('readsync_test.series', ${series}, true)`;
    await script`insert into public.reading_progress (user_id, series_id, chapter, page, device_id, updated_at)
                 values (${a.id}, ${series}, 1, 1, 'script', '2026-01-03T00:00:00Z')`;
    // Once the function's INSERT (stamped) waits for the script's row: delete it and commit.
    const { released } = await releaseOnceWaitedOn(
      sql,
      script,
      `delete from public.reading_progress where ${THE_ROW}`,
    );
    const posted = call("POST", "", {
      token: a.accessToken,
      body: write({
        series_id: series,
        chapter: 5,
        page: 5,
        device_id: "phone",
        updated_at: "2026-01-02T00:00:00Z",
      }),
    });
    await released;
    const answer = await posted;
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    assert.equal(writeResultSchema.parse(answer.body).won, true);
    const [row] = await sql<{ created_at: string; deleted: string }[]>`
      select to_jsonb(rp.created_at) #>> '{}' as created_at, d.version ->> 'created_at' as deleted
        from public.reading_progress rp
        join public.reading_progress_deletions d using (user_id, series_id)
       where rp.user_id = ${a.id} and rp.series_id = ${series}`;
    assert.ok(row, "the function's write was stored");
    assert.ok(
      compareInstants(row.created_at, row.deleted) > 0,
      `the stored life (${row.created_at}) began after the deleted one (${row.deleted})`,
    );
  } finally {
    await script`rollback`.catch(() => {});
    script.release();
    await sql.end();
  }
});

Deno.test("a batch write that waited is judged by the wall clock: dated 5 s after the batch began, it does not replace a newer write made while it waited", async () => {
  // Dated 5.2 s after the batch's transaction began, the write is "more than 5 s ahead" then. The
  // batch waits for another transaction's lock on its first series until the database's clock is
  // 0.6 s past the batch's start; meanwhile a phone with a right clock writes the second series
  // (imported with the service_role key), dated after the batch's write. When the batch gets there, its write is no longer ahead of
  // anything: it loses by its own date instead of winning over it.
  const a = await createTestUser();
  const [first, second] = [seriesId("held"), seriesId("target")];
  const sql = adminSql({ max: 4 });
  const holder = await sql.reserve();
  const batch = await sql.reserve();
  const asUser = `{"sub": "${a.id}", "role": "authenticated"}`;
  try {
    for (const s of [first, second]) {
      await sql`insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
                values (${a.id}, ${s}, 1, 'seed', now() - interval '1 day')`;
    }
    await holder`begin`;
    await holder`select 1 from public.reading_progress where user_id = ${a.id} and series_id = ${first} for update`;
    await batch`begin`;
    await batch`select set_config('role', 'authenticated', true), set_config('request.jwt.claims', ${asUser}, true)`;
    const [{ t0, pid }] = await batch<
      { t0: Date; pid: number }[]
    >`select now() as t0, pg_backend_pid() as pid`;
    const at = (ms: number) => new Date(t0.getTime() + ms).toISOString();
    const writes = [
      { series_id: first, chapter: 2, page: 2, percentage: 0, device_id: "tablet", updated_at: at(0) },
      { series_id: second, chapter: 2, page: 2, percentage: 0, device_id: "tablet", updated_at: at(5_200) },
    ];
    const answered = batch`select public.write_reading_progress_batch(${sql.json(writes)}) as r`;
    answered.catch(() => {}); // awaited below; a failure meanwhile must not go unhandled
    // The batch is queued behind the holder's lock (pg_locks), not still on its way to it.
    for (let tries = 0;; tries++) {
      const [{ waiting }] = await sql<{ waiting: boolean }[]>`
        select exists (select 1 from pg_catalog.pg_locks where pid = ${pid} and not granted) as waiting`;
      if (waiting) break;
      if (tries >= 3_000) throw new Error("the batch never waited for the held lock"); // ~30 s guard
      await new Promise((r) => setTimeout(r, 10));
    }
    // Time must pass on the clock that judges "ahead" (the database's): waited for on that clock, up
    // to 0.6 s after the batch's start (a slow machine only waits longer, which changes nothing: the
    // phone's write is then less ahead, the batch's too, and the order of their dates stays).
    await sql`select pg_catalog.pg_sleep(greatest(0, extract(epoch from
                ${t0}::timestamptz + interval '600 milliseconds' - pg_catalog.clock_timestamp())))`;
    // The phone's write: 4.7 s ahead of its own clock (within the tolerance), after the batch's date.
    // Imported with the service_role key (RLS bypassed): through the user's own API or Data API it
    // would wait for the batch's whole transaction (migration …_user_writes_serialized.sql).
    const phone = await sql.begin(async (tx) => {
      await tx`select set_config('role', 'service_role', true)`;
      return await tx<{ device_id: string }[]>`
        insert into public.reading_progress (user_id, series_id, chapter, page, device_id, updated_at)
        values (${a.id}, ${second}, 9, 9, 'phone', ${at(5_300)}::timestamptz)
        on conflict (user_id, series_id) do update
          set chapter = excluded.chapter, page = excluded.page, device_id = excluded.device_id,
              updated_at = excluded.updated_at
        returning device_id`;
    });
    assert.deepEqual(phone.map((r) => r.device_id), ["phone"], "the phone's write is stored");
    await holder`commit`;
    const [{ r }] = await answered;
    await batch`commit`;
    const results = r as { won: boolean }[];
    assert.deepEqual(
      results.map((x) => x.won),
      [true, false],
      "the held series is written, the target refused",
    );
    const [stored] = await sql<{ chapter: number; device_id: string }[]>`
      select chapter, device_id from public.reading_progress where user_id = ${a.id} and series_id = ${second}`;
    assert.deepEqual(
      { ...stored },
      { chapter: 9, device_id: "phone" },
      "the newer write from the phone stays",
    );
  } finally {
    await holder`rollback`.catch(() => {});
    await batch`rollback`.catch(() => {});
    holder.release();
    batch.release();
    await sql.end();
  }
});

Deno.test("a write that waited for its row is stored under the date it was judged by once it is no longer ahead: a write dated before that cannot replace it", async () => {
  // Sent 5.3 s ahead of the server's clock ("more than 5 s ahead" when its transaction began), the
  // tablet's write waits for another transaction's lock on its row until it is under 4.7 s ahead;
  // then it is decided by its own date, and must be stored under that key, not at the now()
  // its transaction began with (2.5 s earlier than the e-reader's write below).
  const a = await createTestUser();
  const series = seriesId("rejudged");
  const sql = adminSql({ max: 2 });
  const holder = await sql.reserve();
  try {
    await sql`insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
              values (${a.id}, ${series}, 1, 'seed', now() - interval '1 day')`;
    await holder`begin`;
    await holder`select 1 from public.reading_progress where user_id = ${a.id} and series_id = ${series} for update`;
    // The server's clock now; the holder lets go once the write waits for its lock (however long the
    // request took to get there) and is no longer ahead (under 4.7 s): 600 ms from now at the latest,
    // well within the API's 2 s lock timeout, and decided in the server (releaseOnceWaitedOn).
    const [{ server_ms }] = await holder<{ server_ms: string }[]>`
      select (extract(epoch from clock_timestamp()) * 1000)::bigint::text as server_ms,
             pg_catalog.set_config('readsync_test.release_at',
                                   (clock_timestamp() + interval '600 milliseconds')::text, true)`;
    const dated = new Date(Number(server_ms) + 5_300).toISOString();
    const { released } = await releaseOnceWaitedOn(sql, holder, "select");
    const tablet = call("POST", "", {
      token: a.accessToken,
      body: write({ series_id: series, chapter: 7, page: 70, device_id: "tablet", updated_at: dated }),
    });
    await released;
    const answer = await tablet;
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const won = writeResultSchema.parse(answer.body);
    assert.equal(won.won, true);
    assert.equal(won.progress.updated_at, dated, "stored under its own date, the key it won by");
    const ereader = await call("POST", "", {
      token: a.accessToken,
      body: write({
        series_id: series,
        chapter: 2,
        page: 20,
        device_id: "ereader",
        updated_at: new Date(Date.parse(dated) - 2_500).toISOString(),
      }),
    });
    assert.equal(ereader.status, 200, JSON.stringify(ereader.body));
    const refused = writeResultSchema.parse(ereader.body);
    assert.deepEqual([refused.won, refused.conflict], [false, "stale"], "older than the tablet's write");
    const [stored] = await sql<{ device_id: string; chapter: number }[]>`
      select device_id, chapter from public.reading_progress where user_id = ${a.id} and series_id = ${series}`;
    assert.deepEqual({ ...stored }, { device_id: "tablet", chapter: 7 });
  } finally {
    await holder`rollback`.catch(() => {});
    holder.release();
    await sql.end();
  }
});

Deno.test("an identical replay answers the same and changes nothing (no broadcast, no log row)", async () => {
  const a = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const series = seriesId("replay");
    const body = write({ series_id: series, chapter: 3, device_id: "tablet", updated_at: iso(BASE_MS) });
    const count = async () =>
      (await sql`select count(*)::int as n from realtime.messages where topic = ${`progress:${a.id}`}`)[0]
        .n as number;
    const first = await call("POST", "", { token: a.accessToken, body });
    const broadcasts = await count();
    const second = await call("POST", "", { token: a.accessToken, body });
    assert.equal(second.status, 200);
    assert.deepEqual(second.body, first.body, "byte-for-byte the same answer, same synced_at and change_xid");
    assert.equal(await count(), broadcasts, "the replay broadcast nothing");
    assert.deepEqual(await conflictRows(sql, a.id, series), []);

    // A replay that differs only below the millisecond is the same write too.
    const third = await call("POST", "", {
      token: a.accessToken,
      body: { ...body, updated_at: body.updated_at.replace("Z", "").replace(/\.(\d{3})$/, ".$1999Z") },
    });
    assert.deepEqual(third.body, first.body);
  } finally {
    await sql.end();
  }
});

Deno.test("same-millisecond ties: the greater device id wins in either arrival order, and both are logged", async () => {
  const a = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const at = iso(BASE_MS + 500);
    // Order 1: the loser arrives second and is rejected.
    const s1 = seriesId("tie1");
    await call("POST", "", {
      token: a.accessToken,
      body: write({ series_id: s1, chapter: 2, device_id: "dev-b", updated_at: at }),
    });
    const lost = writeResultSchema.parse(
      (await call("POST", "", {
        token: a.accessToken,
        body: write({ series_id: s1, chapter: 1, device_id: "dev-a", updated_at: at }),
      })).body,
    );
    assert.deepEqual([lost.won, lost.conflict, lost.progress.device_id, lost.progress.chapter], [
      false,
      "tie",
      "dev-b",
      2,
    ]);
    assert.deepEqual(lost.conflict_with, { updated_at: at, device_id: "dev-b" });

    // Order 2: the winner arrives second and replaces the loser.
    const s2 = seriesId("tie2");
    await call("POST", "", {
      token: a.accessToken,
      body: write({ series_id: s2, chapter: 1, device_id: "dev-a", updated_at: at }),
    });
    const won = writeResultSchema.parse(
      (await call("POST", "", {
        token: a.accessToken,
        body: write({ series_id: s2, chapter: 2, device_id: "dev-b", updated_at: at }),
      })).body,
    );
    assert.deepEqual([won.won, won.conflict, won.progress.device_id, won.progress.chapter], [
      true,
      "tie",
      "dev-b",
      2,
    ]);
    assert.deepEqual(won.conflict_with, { updated_at: at, device_id: "dev-a" });

    const strip = (rows: Awaited<ReturnType<typeof conflictRows>>) =>
      rows.map((r) => [r.kind, r.rejected, r.losing_device_id, r.winning_device_id]);
    assert.deepEqual(strip(await conflictRows(sql, a.id, s1)), [["tie", true, "dev-a", "dev-b"]]);
    assert.deepEqual(strip(await conflictRows(sql, a.id, s2)), [["tie", false, "dev-a", "dev-b"]]);
  } finally {
    await sql.end();
  }
});

Deno.test("a write dated in the future is clamped to the server's now() before it is compared", async () => {
  const a = await createTestUser();
  const series = seriesId("future");
  const before = Date.now();
  const ahead = await call("POST", "", {
    token: a.accessToken,
    body: write({
      series_id: series,
      chapter: 50,
      device_id: "bad-clock",
      updated_at: iso(before + 7 * 24 * 3600 * 1000),
    }),
  });
  const after = Date.now();
  const stored = writeResultSchema.parse(ahead.body).progress;
  const storedMs = Date.parse(stored.updated_at);
  assert.ok(
    storedMs >= before - 1000 && storedMs <= after + 1000,
    `stored ${stored.updated_at}, not a week ahead`,
  );

  // A device with a correct clock that writes a moment later wins against it.
  const honest = await call("POST", "", {
    token: a.accessToken,
    body: write({ series_id: series, chapter: 51, device_id: "good-clock", updated_at: iso(storedMs + 1) }),
  });
  assert.deepEqual(
    [writeResultSchema.parse(honest.body).won, writeResultSchema.parse(honest.body).progress.chapter],
    [true, 51],
  );
});

Deno.test("a batch from a device whose clock runs an hour ahead: every write is recorded, the last one is stored", async () => {
  const a = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const series = seriesId("ahead-batch");
    // Read on, offline, on a phone an hour ahead: three positions a second apart, sent as one batch.
    // The server records each as now(); were they all stored at the same now(), the second and the
    // third would share the first one's key (same device) and pass for its replays: dropped, yet
    // answered "won".
    const hourAhead = Date.now() + 3600_000;
    const writes = [1, 2, 3].map((chapter, i) =>
      write({ series_id: series, chapter, device_id: "phone", updated_at: iso(hourAhead + i * 1000) })
    );
    const answer = await call("POST", "/batch", { token: a.accessToken, body: { writes } });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const { results } = batchWriteResponseSchema.parse(answer.body);
    assert.deepEqual(results.map((r) => [r.won, r.conflict, r.progress.chapter]), [
      [true, null, 1],
      [true, null, 2],
      [true, null, 3],
    ]);
    const keys = results.map((r) => Date.parse(r.progress.updated_at));
    assert.ok(keys[0] < keys[1] && keys[1] < keys[2], `each write is a newer version: ${keys.map(iso)}`);
    assert.ok(keys[2] < hourAhead, "recorded near the server's now, not at the claimed hour");
    const [row] = await sql<{ chapter: number }[]>`
      select chapter from public.reading_progress where user_id = ${a.id} and series_id = ${series}`;
    assert.equal(row.chapter, 3);
    assert.deepEqual(await conflictRows(sql, a.id, series), []);
  } finally {
    await sql.end();
  }
});

Deno.test("a later position under the key the server gave an earlier write dated ahead is stored 1 ms after it, not dropped as a replay", async () => {
  // Chaos-run finding: a phone an hour ahead writes (stored as the server's now, K); its clock is then
  // corrected (api.now()) and its next position happens to be dated K too. Same key, same device:
  // it used to be answered "won" as a replay of the stored write, and its position was dropped.
  const a = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const series = seriesId("reused-key");
    const ahead = writeResultSchema.parse(
      (await call("POST", "", {
        token: a.accessToken,
        body: write({
          series_id: series,
          chapter: 5,
          device_id: "phone",
          updated_at: iso(Date.now() + 3600_000),
        }),
      })).body,
    );
    const key = ahead.progress.updated_at;
    const later = write({ series_id: series, chapter: 40, page: 7, device_id: "phone", updated_at: key });
    const first = await call("POST", "", { token: a.accessToken, body: later });
    const answer = writeResultSchema.parse(first.body);
    assert.deepEqual([answer.won, answer.conflict, answer.progress.chapter], [true, null, 40]);
    assert.equal(
      answer.progress.updated_at,
      iso(Date.parse(key) + 1),
      "stored 1 ms after the version it met",
    );
    const retry = await call("POST", "", { token: a.accessToken, body: later });
    assert.deepEqual(retry.body, first.body, "its retry gets the same answer");
    // A third position under that key meets the landed one 1 ms later: taken for an older write of the
    // device (the key a version was sent with is not kept), so not stored, and no conflict.
    const older = writeResultSchema.parse(
      (await call("POST", "", { token: a.accessToken, body: { ...later, chapter: 5, page: 0 } })).body,
    );
    assert.deepEqual([older.won, older.conflict, older.progress.chapter], [false, null, 40]);
    const [row] = await sql<{ chapter: number; updated_at: Date }[]>`
      select chapter, updated_at from public.reading_progress where user_id = ${a.id} and series_id = ${series}`;
    assert.deepEqual([row.chapter, row.updated_at.toISOString()], [40, iso(Date.parse(key) + 1)]);
    // The same in a batch: two positions of one device in one millisecond, in queue order.
    const series2 = seriesId("reused-key-batch");
    const at = iso(BASE_MS);
    const batch = await call("POST", "/batch", {
      token: a.accessToken,
      body: {
        writes: [
          write({ series_id: series2, chapter: 1, device_id: "phone", updated_at: at }),
          write({ series_id: series2, chapter: 2, device_id: "phone", updated_at: at }),
        ],
      },
    });
    const { results } = batchWriteResponseSchema.parse(batch.body);
    assert.deepEqual(results.map((r) => [r.won, r.progress.chapter, r.progress.updated_at]), [
      [true, 1, at],
      [true, 2, iso(BASE_MS + 1)],
    ]);
    assert.deepEqual(await conflictRows(sql, a.id, series2), []);
  } finally {
    await sql.end();
  }
});

Deno.test("DELETE /progress/series/:id is a tombstone write: a stale offline write cannot resurrect it", async () => {
  const a = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const series = seriesId("tomb");
    await call("POST", "", {
      token: a.accessToken,
      body: write({ series_id: series, chapter: 7, updated_at: iso(BASE_MS) }),
    });
    const reset = await call(
      "DELETE",
      `/series/${series}?device_id=web&updated_at=${encodeURIComponent(iso(BASE_MS + 5000))}`,
      {
        token: a.accessToken,
      },
    );
    assert.equal(reset.status, 200, JSON.stringify(reset.body));
    const tomb = writeResultSchema.parse(reset.body);
    assert.deepEqual([tomb.won, tomb.progress.cleared, tomb.progress.chapter], [true, true, 0]);

    // The phone was offline and still thinks the reader is in chapter 9 (written before the reset).
    const stale = writeResultSchema.parse(
      (await call("POST", "", {
        token: a.accessToken,
        body: write({ series_id: series, chapter: 9, device_id: "phone", updated_at: iso(BASE_MS + 3000) }),
      })).body,
    );
    assert.deepEqual([stale.won, stale.conflict, stale.progress.cleared], [false, "stale", true]);
    const got = progressResponseSchema.parse(
      (await call("GET", `/series/${series}`, { token: a.accessToken })).body,
    );
    assert.equal(got.progress.cleared, true, "still cleared");

    // A reset older than the progress loses like any stale write.
    const oldReset = writeResultSchema.parse(
      (await call(
        "DELETE",
        `/series/${series}?device_id=tablet&updated_at=${encodeURIComponent(iso(BASE_MS + 1000))}`,
        {
          token: a.accessToken,
        },
      )).body,
    );
    assert.deepEqual([oldReset.won, oldReset.conflict], [false, "stale"]);

    // Reading again later (a newer write) un-clears it.
    const newer = writeResultSchema.parse(
      (await call("POST", "", {
        token: a.accessToken,
        body: write({ series_id: series, chapter: 1, device_id: "phone", updated_at: iso(BASE_MS + 6000) }),
      })).body,
    );
    assert.deepEqual([newer.won, newer.progress.cleared, newer.progress.chapter], [true, false, 1]);
    const rows = await conflictRows(sql, a.id, series);
    assert.deepEqual(rows.map((r) => [r.kind, r.losing_device_id, r.winning_device_id]), [
      ["stale", "phone", "web"],
      ["stale", "tablet", "web"],
    ]);
  } finally {
    await sql.end();
  }
});

Deno.test("HEAD is answered as GET is, without the body: same status and headers (its Content-Length too), same checks", async () => {
  const a = await createTestUser();
  const series = seriesId("head");
  assert.equal(
    (await call("POST", "", { token: a.accessToken, body: write({ series_id: series }) })).status,
    200,
  );
  for (const path of ["", "?limit=1", "/changes?limit=1", `/series/${series}`]) {
    const get = await call("GET", path, { token: a.accessToken });
    const head = await call("HEAD", path, { token: a.accessToken });
    assert.equal(get.status, 200, path);
    assert.equal(head.status, 200, `HEAD ${path}`);
    assert.equal(head.body, null, `HEAD ${path} has no body`);
    assert.equal(head.headers.get("content-type"), get.headers.get("content-type"), path);
    // Content-Length, when sent, is the GET body's (RFC 9110 8.6), never 0 for a body that has bytes.
    assert.ok(get.headers.get("content-length"), `GET ${path} carries a Content-Length`);
    assert.equal(head.headers.get("content-length"), get.headers.get("content-length"), `HEAD ${path}`);
    assert.ok(head.headers.get("x-request-id") && head.headers.get("x-server-time"), path);
    assert.equal(head.headers.get("access-control-allow-origin"), "*", path);
  }
  // The checks of GET hold: a missing series, a missing token, a bad query.
  assert.equal((await call("HEAD", "/series/never-read-this", { token: a.accessToken })).status, 404);
  const noToken = await call("HEAD", "");
  assert.equal(noToken.status, 401);
  assert.match(noToken.headers.get("www-authenticate") ?? "", /^Bearer/);
  assert.equal((await call("HEAD", "?limit=0", { token: a.accessToken })).status, 422);
});

Deno.test("CORS: the preflight needs no token, and every answer (errors too) carries the CORS headers", async () => {
  const pre = await call("OPTIONS", "/series/x", {
    headers: {
      origin: "https://app.example",
      "access-control-request-method": "DELETE",
      "access-control-request-headers":
        "authorization, content-type, apikey, x-client-info, x-retry-count, traceparent, tracestate, baggage, x-region",
    },
  });
  assert.equal(pre.status, 204);
  assert.equal(pre.headers.get("access-control-allow-origin"), "*");
  const methods = (pre.headers.get("access-control-allow-methods") ?? "").split(/,\s*/);
  for (const m of ["GET", "POST", "DELETE", "OPTIONS"]) assert.ok(methods.includes(m), m);
  const headers = (pre.headers.get("access-control-allow-headers") ?? "").split(/,\s*/);
  // Every header supabase-js 2.119 may send (its cors module's list, and functions-js's x-region for
  // a client created with a region): one missing fails the preflight, and with it every call.
  const { corsHeaders: supabaseCors } = await import("@supabase/supabase-js/cors");
  const sdkHeaders = supabaseCors["Access-Control-Allow-Headers"].split(/,\s*/);
  for (const h of [...sdkHeaders, "x-region"]) assert.ok(headers.includes(h), h);
  // Like every answer: the request id and the server's clock.
  assert.ok(pre.headers.get("x-request-id"));
  assert.ok(Math.abs(Date.parse(pre.headers.get("x-server-time") ?? "") - Date.now()) < 60_000);

  const unauth = await call("GET", "", { headers: { origin: "https://app.example" } });
  assert.equal(unauth.status, 401);
  assert.equal(unauth.headers.get("access-control-allow-origin"), "*", "a browser can read the 401 body");
  // ... and its challenge, which names the error (RFC 6750) where the body's code says the same.
  assert.ok(unauth.headers.get("www-authenticate"));
  assert.match(unauth.headers.get("access-control-expose-headers") ?? "", /(^|, )www-authenticate(,|$)/);
  const a = await createTestUser();
  const ok = await call("GET", "", { token: a.accessToken, headers: { origin: "https://app.example" } });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get("access-control-allow-origin"), "*");
  assert.match(ok.headers.get("access-control-expose-headers") ?? "", /x-request-id/);
  assert.ok(ok.headers.get("x-request-id"));
});

Deno.test("a write that meets a row lock held for long answers 503 at the lock timeout, not the statement timeout; the row is kept and the write lands after", async () => {
  const a = await createTestUser();
  const series = seriesId("locked");
  const first = write({ series_id: series, chapter: 1, device_id: "phone", updated_at: iso(BASE_MS) });
  assert.equal((await call("POST", "", { token: a.accessToken, body: first })).status, 200);
  // An operator's transaction (or one left open) holds the row.
  const holder = adminSql({ max: 1 });
  const release = Promise.withResolvers<void>();
  const locked = Promise.withResolvers<void>();
  const held = holder.begin(async (tx) => {
    await tx`select 1 from public.reading_progress where user_id = ${a.id} and series_id = ${series} for update`;
    locked.resolve();
    await release.promise;
  });
  try {
    await locked.promise;
    const next = write({
      series_id: series,
      chapter: 2,
      device_id: "tablet",
      updated_at: iso(BASE_MS + 1_000),
    });
    const blocked = await call("POST", "", { token: a.accessToken, body: next });
    assert.equal(blocked.status, 503, JSON.stringify(blocked.body));
    assert.equal(errorOf(blocked).code, "service_unavailable");
    assert.match(errorOf(blocked).message, /locked by another operation/, "the lock timeout answered");
    assert.equal(blocked.headers.get("retry-after"), "1");
    release.resolve();
    await held;
    const stored = await call("GET", `/series/${series}`, { token: a.accessToken });
    assert.equal(
      progressResponseSchema.parse(stored.body).progress.chapter,
      1,
      "the refused write changed nothing",
    );
    const retried = await call("POST", "", { token: a.accessToken, body: next });
    assert.equal(retried.status, 200);
    assert.equal(writeResultSchema.parse(retried.body).progress.chapter, 2);
  } finally {
    release.resolve();
    await held.catch(() => {});
    await holder.end();
  }
});
