// The progress store acts as the user of its claims even where the connection carries another
// user's legacy claim settings. Supabase's auth.uid() prefers `request.jwt.claim.sub` over
// `request.jwt.claims` (auth.role(), auth.email() and auth.jwt() likewise prefer their legacy
// settings), and a transaction-mode pooler (Supavisor, PgBouncer) hands the store server
// connections that other clients used between its transactions: one that set
// `request.jwt.claim.sub` at session level (older RLS-testing advice did) left it there, and the
// store's request for user A, which sets the role and A's `request.jwt.claims` only, ran with
// auth.uid() = B and read and wrote B's rows under RLS. The store now clears the legacy settings in
// its first statement. Here the session-level setting comes from ALTER ROLE ... SET on a login role
// of the test's own, so nothing else on the database sees it; the role is dropped afterwards.

import assert from "node:assert/strict";
import postgres from "postgres";
import { createPostgresProgressStore } from "../../shared/progress/store.ts";
import { createTestUser } from "../support/env.ts";
import { adminSql, seriesId, testEnv } from "./support.ts";

Deno.test("store: a session-level request.jwt.claim.sub of another user does not change whose rows a request touches", async () => {
  const admin = adminSql({ max: 1 });
  const role = `readsync_claim_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const password = crypto.randomUUID();
  await admin.unsafe(`create role ${role} login password '${password}'`);
  let pool: postgres.Sql | null = null;
  try {
    const a = await createTestUser();
    const b = await createTestUser();
    const claimsA = { sub: a.id, role: "authenticated" };
    const claimsB = { sub: b.id, role: "authenticated" };
    const shared = seriesId("claim-shared");
    const bOnly = seriesId("claim-b");
    const hourAgo = new Date(Date.now() - 3_600_000).toISOString();
    const base = { chapter: 1, page: 1, percentage: 0.1, cleared: false, updated_at: hourAgo };

    // Both users' rows, written by a store on a clean connection (the superuser's; the store
    // switches to authenticated, so RLS applies as for any request).
    const clean = createPostgresProgressStore(admin);
    await clean.write(claimsA, { ...base, series_id: shared, page: 3, device_id: "a-phone" });
    await clean.write(claimsB, { ...base, series_id: shared, page: 9, device_id: "b-phone" });
    await clean.write(claimsB, { ...base, series_id: bOnly, page: 5, device_id: "b-phone" });

    await admin.unsafe(`grant authenticated to ${role}`);
    await admin.unsafe(`alter role ${role} set request.jwt.claim.sub = '${b.id}'`);
    await admin.unsafe(`alter role ${role} set request.jwt.claim.role = 'authenticated'`);
    const url = new URL(testEnv().dbUrl);
    url.username = role;
    url.password = password;
    pool = postgres(url.toString(), { max: 1, prepare: false, onnotice: () => {} });

    // The premise: in a transaction of this role that installs A's claims as the store did, auth.uid() is B.
    const premise = await pool.begin(async (tx) => {
      const [{ uid }] = await tx<{ uid: string }[]>`
        select set_config('role', 'authenticated', true),
               set_config('request.jwt.claims', ${JSON.stringify(claimsA)}, true),
               auth.uid()::text as uid`;
      return uid;
    });
    assert.equal(premise, b.id, "the session's legacy setting wins in auth.uid()");

    const store = createPostgresProgressStore(pool);

    const got = await store.get(claimsA, shared);
    assert.equal(got?.user_id, a.id, "get: A's row");
    assert.equal(got?.page, 3, "get: A's position");
    assert.equal(await store.get(claimsA, bOnly), null, "get: B's series is not A's");

    const listed = await store.list(claimsA, { limit: 10, includeCleared: true });
    assert.deepEqual(listed.map((p) => [p.user_id, p.series_id, p.page]), [[a.id, shared, 3]], "list");

    const changes = await store.changes(claimsA, { cursor: "", limit: 10 });
    assert.deepEqual(changes.changes.map((p) => [p.user_id, p.series_id]), [[a.id, shared]], "changes");

    const written = await store.write(claimsA, {
      ...base,
      series_id: shared,
      page: 4,
      device_id: "a-tablet",
      updated_at: new Date(Date.now() - 60_000).toISOString(),
    });
    assert.equal(written.won, true, "the write lands");
    assert.equal(written.progress.user_id, a.id, "the write's answer is A's row");

    const [batched] = await store.writeBatch(claimsA, [{
      ...base,
      series_id: `${shared}-batch`,
      device_id: "a-tablet",
    }]);
    assert.equal(batched.progress.user_id, a.id, "the batch's answer is A's row");

    const stored = await admin<{ user_id: string; series_id: string; page: number; device_id: string }[]>`
      select user_id::text, series_id, page, device_id from public.reading_progress
      where user_id in (${a.id}::uuid, ${b.id}::uuid) order by series_id, user_id::text`;
    const rows = stored.map((r) => [r.user_id, r.series_id, r.page, r.device_id]);
    const expected = [
      [a.id, shared, 4, "a-tablet"],
      [b.id, shared, 9, "b-phone"],
      [a.id, `${shared}-batch`, 1, "a-tablet"],
      [b.id, bOnly, 5, "b-phone"],
    ];
    const key = (r: unknown[]) => `${r[1]} ${r[0]}`;
    assert.deepEqual(
      rows.sort((x, y) => key(x).localeCompare(key(y))),
      expected.sort((x, y) => key(x).localeCompare(key(y))),
      "A's writes changed A's rows only; B's are as B left them",
    );
  } finally {
    await pool?.end();
    await admin.unsafe(`drop role if exists ${role}`);
    await admin.end();
  }
});
