// The progress store answers percentages exactly whatever the database's extra_float_digits. At 0
// or below PostgreSQL prints a double (to_jsonb too) with 15 + extra_float_digits significant digits,
// so a project that set it on its database or role got rounded percentages in every answer: the
// write's (built in write_reading_progress), get and list (to_jsonb in the store's own statement)
// and the changes read. Now the SQL functions run with extra_float_digits 1 (migration
// …_percentages_printed_exactly.sql) and the store sets it for its transactions, as it sets
// TimeZone. Here the setting comes from ALTER ROLE ... SET on a login role of the test's own, so
// nothing else on the database sees it; the role is dropped afterwards.

import assert from "node:assert/strict";
import postgres from "postgres";
import { createPostgresProgressStore } from "../../shared/progress/store.ts";
import { createTestUser } from "../support/env.ts";
import { adminSql, seriesId, testEnv } from "./support.ts";

// 17 significant digits: printed with 15 (0.123456789012346) it is another number.
const PERCENTAGE = 0.12345678901234568;
const OTHER = 0.9876543210987654;

for (const digits of [0, -15]) {
  Deno.test(`store: a database extra_float_digits of ${digits} still answers percentages exactly`, async () => {
    const admin = adminSql({ max: 1 });
    const role = `readsync_efd_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    const password = crypto.randomUUID();
    await admin.unsafe(`create role ${role} login password '${password}'`);
    let pool: postgres.Sql | null = null;
    try {
      await admin.unsafe(`grant authenticated to ${role}`);
      await admin.unsafe(`alter role ${role} set extra_float_digits = ${digits}`);
      const url = new URL(testEnv().dbUrl);
      url.username = role;
      url.password = password;
      pool = postgres(url.toString(), { max: 1, prepare: false, onnotice: () => {} });

      // The premise: a session of this role prints the percentage rounded.
      const [{ printed }] = await pool<{ printed: string }[]>`
        select to_jsonb(${PERCENTAGE}::double precision)::text as printed`;
      assert.notEqual(Number(printed), PERCENTAGE, `the session prints ${printed}`);

      const user = await createTestUser();
      const claims = { sub: user.id, role: "authenticated" };
      const store = createPostgresProgressStore(pool);
      const series = seriesId("efd");
      const write = {
        series_id: series,
        chapter: 2,
        page: 7,
        percentage: PERCENTAGE,
        cleared: false,
        device_id: "efd-phone",
        updated_at: new Date(Date.now() - 60_000).toISOString(),
      };
      const result = await store.write(claims, write);
      assert.equal(result.won, true);
      assert.equal(result.progress.percentage, PERCENTAGE, "the write's answer");

      const stale = await store.write(claims, {
        ...write,
        percentage: OTHER,
        device_id: "efd-tablet",
        updated_at: new Date(Date.now() - 3_600_000).toISOString(),
      });
      assert.equal(stale.won, false);
      assert.equal(stale.progress.percentage, PERCENTAGE, "a refused write's answer (the stored row)");

      const [batched] = await store.writeBatch(claims, [{
        ...write,
        series_id: `${series}-b`,
        percentage: OTHER,
      }]);
      assert.equal(batched.progress.percentage, OTHER, "a batch's answer");

      assert.equal((await store.get(claims, series))?.percentage, PERCENTAGE, "get");
      const listed = await store.list(claims, { limit: 10, includeCleared: true });
      assert.deepEqual(
        listed.map((p) => [p.series_id, p.percentage]).sort(),
        [[series, PERCENTAGE], [`${series}-b`, OTHER]],
        "list",
      );
      const changes = await store.changes(claims, { cursor: "", limit: 10 });
      assert.deepEqual(
        changes.changes.map((p) => [p.series_id, p.percentage]).sort(),
        [[series, PERCENTAGE], [`${series}-b`, OTHER]],
        "changes",
      );
    } finally {
      await pool?.end();
      await admin.unsafe(`drop role if exists ${role}`);
      await admin.end();
    }
  });
}
