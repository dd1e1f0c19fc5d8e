// The progress store reads dates right whatever the database's TimeZone. PostgreSQL prints a
// timestamptz (to_jsonb too) in the session's TimeZone, and an offset that is not whole minutes with
// its seconds (Africa/Monrovia before 1972: "-00:44:30"), which Date cannot parse: the
// API answered an accepted write 500. The store's transactions now run in UTC (set_config('TimeZone',
// 'UTC', true) with the role and claims, no extra round trip), whatever TimeZone a project set on its
// database or role. Here the zone comes from ALTER ROLE ... SET timezone on a login role of the test's
// own, so nothing else on the database sees it; the role is dropped afterwards.

import assert from "node:assert/strict";
import postgres from "postgres";
import { createPostgresProgressStore } from "../../shared/progress/store.ts";
import { createTestUser } from "../support/env.ts";
import { adminSql, seriesId, testEnv } from "./support.ts";

// PostgreSQL refuses a zone whose offset in 2000 has seconds ("appears to use leap seconds", as for
// a POSIX string like '<+0030>-00:30:15'), so such offsets come from zones whose history had them:
// Liberia's until 1972, within the API's 1970..9999 range.
const cases = [
  { zone: "Africa/Monrovia", updatedAt: "1971-06-01T10:00:00.456Z", offset: "-00:44:30" },
];

for (const c of cases) {
  Deno.test(`store: a database TimeZone of ${c.zone} (offset ${c.offset}) still reads every date`, async () => {
    const admin = adminSql({ max: 1 });
    const role = `readsync_tz_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    const password = crypto.randomUUID();
    await admin.unsafe(`create role ${role} login password '${password}'`);
    let pool: postgres.Sql | null = null;
    try {
      await admin.unsafe(`grant authenticated to ${role}`);
      await admin.unsafe(`alter role ${role} set timezone = '${c.zone.replaceAll("'", "''")}'`);
      const url = new URL(testEnv().dbUrl);
      url.username = role;
      url.password = password;
      pool = postgres(url.toString(), { max: 1, prepare: false, onnotice: () => {} });

      // The premise: a session of this role prints the sent date with a seconds offset.
      const [{ printed }] = await pool<{ printed: string }[]>`
        select to_jsonb(${c.updatedAt}::timestamptz) #>> '{}' as printed`;
      assert.ok(printed.endsWith(c.offset), `the session prints ${printed}`);

      const user = await createTestUser();
      const claims = { sub: user.id, role: "authenticated" };
      const store = createPostgresProgressStore(pool);
      const series = seriesId("tz");
      const write = {
        series_id: series,
        chapter: 2,
        page: 7,
        percentage: 0.5,
        cleared: false,
        device_id: "tz-phone",
        updated_at: c.updatedAt,
      };
      const result = await store.write(claims, write);
      assert.equal(result.won, true);
      assert.equal(result.progress.updated_at, c.updatedAt, "the stored key, read back in UTC");
      assert.match(result.progress.created_at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/);

      const again = await store.write(claims, {
        ...write,
        chapter: 1,
        device_id: "tz-tablet",
        updated_at: "1970-06-01T00:00:00.000Z",
      });
      assert.equal(again.won, false);
      assert.equal(again.conflict, "stale");
      assert.equal(again.conflict_with?.updated_at, c.updatedAt, "the conflict's other key, in UTC");

      assert.equal((await store.get(claims, series))?.updated_at, c.updatedAt);
      const listed = await store.list(claims, { limit: 10, includeCleared: true });
      assert.deepEqual(listed.map((p) => [p.series_id, p.updated_at]), [[series, c.updatedAt]]);
      const changes = await store.changes(claims, { cursor: "", limit: 10 });
      assert.deepEqual(changes.changes.map((p) => [p.series_id, p.updated_at]), [[series, c.updatedAt]]);
    } finally {
      await pool?.end();
      await admin.unsafe(`drop role if exists ${role}`);
      await admin.end();
    }
  });
}
