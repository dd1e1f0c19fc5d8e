// Ownership through the API, over real HTTP: user B can neither read nor overwrite A's progress by
// any field or route (RLS decides in the database; the user is the token's subject), and what a
// service_role caller may do (act for one user named in X-Act-As-User, exactly as that user).

import assert from "node:assert/strict";
import { createTestUser } from "../support/env.ts";
import {
  batchWriteResponseSchema,
  changesResponseSchema,
  progressListResponseSchema,
  progressResponseSchema,
  writeResultSchema,
} from "../../shared/progress/schemas.ts";
import { adminSql, call, errorOf, seriesId, snapshot, testEnv, write } from "./support.ts";

Deno.test("RLS through the API: B can neither read nor overwrite A's progress by any route", async () => {
  const sql = adminSql({ max: 1 });
  try {
    const a = await createTestUser();
    const b = await createTestUser();
    const x = seriesId("mine");
    const far = "2026-07-01T00:00:00.000Z";
    assert.equal(
      (await call("POST", "", {
        token: a.accessToken,
        body: write({ series_id: x, chapter: 5, updated_at: far }),
      })).status,
      200,
    );
    const aBefore = await snapshot(sql, [a.id]);

    // Reads: nothing of A's is visible to B.
    const get = await call("GET", `/series/${x}`, { token: b.accessToken });
    assert.equal(get.status, 404);
    assert.equal(errorOf(get).code, "progress_not_found");
    const list = progressListResponseSchema.parse(
      (await call("GET", "?include_cleared=true&limit=200", { token: b.accessToken })).body,
    );
    assert.deepEqual(list.items, []);
    const changes = changesResponseSchema.parse(
      (await call("GET", "/changes", { token: b.accessToken })).body,
    );
    assert.deepEqual(changes.changes, []);

    // Writes with A's series id, by every route: each lands in B's own row, compared with B's only.
    const older = "2026-06-01T00:00:00.000Z";
    const single = writeResultSchema.parse(
      (await call("POST", "", {
        token: b.accessToken,
        body: write({ series_id: x, chapter: 1, updated_at: older }),
      })).body,
    );
    assert.deepEqual(
      [single.won, single.conflict, single.progress.user_id],
      [true, null, b.id],
      "an older write by B is not measured against A's newer row",
    );
    const batch = batchWriteResponseSchema.parse(
      (await call("POST", "/batch", {
        token: b.accessToken,
        body: { writes: [write({ series_id: x, chapter: 2, updated_at: "2026-06-02T00:00:00Z" })] },
      })).body,
    );
    assert.equal(batch.results[0].progress.user_id, b.id);
    const reset = writeResultSchema.parse(
      (await call("DELETE", `/series/${x}?device_id=b-dev&updated_at=2026-06-03T00:00:00Z`, {
        token: b.accessToken,
      })).body,
    );
    assert.deepEqual([reset.progress.user_id, reset.progress.cleared], [b.id, true]);

    // Naming A anywhere is refused, not honoured.
    const named = await call("POST", "", {
      token: b.accessToken,
      body: { ...write({ series_id: x }), user_id: a.id },
    });
    assert.equal(named.status, 400);
    const header = await call("POST", "", {
      token: b.accessToken,
      body: write({ series_id: x }),
      headers: { "x-act-as-user": a.id },
    });
    assert.equal(header.status, 403);

    assert.equal(await snapshot(sql, [a.id]), aBefore, "A's rows and conflict log are untouched");
    const aView = progressResponseSchema.parse(
      (await call("GET", `/series/${x}`, { token: a.accessToken })).body,
    );
    assert.deepEqual([aView.progress.chapter, aView.progress.cleared, aView.progress.updated_at], [
      5,
      false,
      far,
    ]);
    const bRows =
      await sql`select user_id from public.reading_progress where series_id = ${x} order by user_id`;
    assert.deepEqual(bRows.map((r) => r.user_id).sort(), [a.id, b.id].sort(), "one row each, no shared row");
  } finally {
    await sql.end();
  }
});

Deno.test("service_role acts for the user named in X-Act-As-User, with that user's RLS, never beyond", async () => {
  const sql = adminSql({ max: 1 });
  try {
    const env = testEnv();
    const a = await createTestUser();
    const b = await createTestUser();
    const x = seriesId("srv");
    await call("POST", "", {
      token: a.accessToken,
      body: write({ series_id: x, chapter: 5, updated_at: "2026-07-01T00:00:00Z" }),
    });

    // Acting as A: reads and writes A's progress like A (last write wins applies too).
    const asA = { "x-act-as-user": a.id };
    const got = await call("GET", `/series/${x}`, { token: env.serviceRoleKey, headers: asA });
    assert.equal(got.status, 200);
    assert.equal(progressResponseSchema.parse(got.body).progress.user_id, a.id);
    const stale = writeResultSchema.parse(
      (await call("POST", "", {
        token: env.serviceRoleKey,
        headers: asA,
        body: write({ series_id: x, chapter: 1, device_id: "dev-other", updated_at: "2026-06-01T00:00:00Z" }),
      })).body,
    );
    assert.deepEqual(
      [stale.won, stale.conflict],
      [false, "stale"],
      "service_role does not bypass last-write-wins",
    );
    const newer = writeResultSchema.parse(
      (await call("POST", "", {
        token: env.serviceRoleKey,
        headers: asA,
        body: write({
          series_id: x,
          chapter: 6,
          device_id: "server-import",
          updated_at: "2026-07-02T00:00:00Z",
        }),
      })).body,
    );
    assert.deepEqual([newer.won, newer.progress.user_id, newer.progress.chapter], [true, a.id, 6]);

    // Acting as B: sees nothing of A's and writes only B's row.
    const asB = { "x-act-as-user": b.id.toUpperCase() };
    assert.equal(
      (await call("GET", `/series/${x}`, { token: env.serviceRoleKey, headers: asB })).status,
      404,
    );
    const bWrite = writeResultSchema.parse(
      (await call("POST", "", {
        token: env.serviceRoleKey,
        headers: asB,
        body: write({ series_id: x, chapter: 9, updated_at: "2026-08-01T00:00:00Z" }),
      })).body,
    );
    assert.equal(bWrite.progress.user_id, b.id);
    const [aRow] =
      await sql`select chapter from public.reading_progress where user_id = ${a.id} and series_id = ${x}`;
    assert.equal(aRow.chapter, 6);

    // A user id that does not exist: the database refuses the row (422), nothing is written.
    const ghost = crypto.randomUUID();
    const bad = await call("POST", "", {
      token: env.serviceRoleKey,
      headers: { "x-act-as-user": ghost },
      body: write({ series_id: x }),
    });
    assert.equal(bad.status, 422, JSON.stringify(bad.body));
    assert.equal(errorOf(bad).code, "constraint_violation");
    assert.equal((await sql`select 1 from public.reading_progress where user_id = ${ghost}`).length, 0);
  } finally {
    await sql.end();
  }
});
