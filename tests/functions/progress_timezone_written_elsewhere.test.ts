// Dates a session of another TimeZone wrote are told in UTC. The progress store reads in UTC
// (progress_store_timezone.test.ts), but two things are printed when a row is written or deleted, in
// the writing session's TimeZone: the broadcast's record/old_record (realtime.broadcast_changes) and
// the deleted version remembered in reading_progress_deletions (to_jsonb(old)), which the changes
// read hands back as it was stored. A Data API client's session takes its role's TimeZone (or
// PostgREST's Prefer: timezone=...), and a zone whose offset has seconds (Africa/Monrovia before 1972:
// "-00:44:30") is read by neither Date nor the clients' schemas: such a deletion made every later
// changes read of that user's function answer 500, and such a broadcast was refused by every device.
// Here the zone comes from ALTER ROLE ... SET timezone on a login role of the test's own (dropped
// afterwards), whose transactions act as the Data API does (role authenticated, the user's claims).

import assert from "node:assert/strict";
import postgres from "postgres";
import { progressRowSchema } from "../../shared/progress/schemas.ts";
import { createPostgresProgressStore } from "../../shared/progress/store.ts";
import { createTestUser } from "../support/env.ts";
import { adminSql, seriesId, testEnv } from "./support.ts";

const ZONE = "Africa/Monrovia";
const OFFSET = "-00:44:30";
const UPDATED_AT = "1971-06-01T10:00:00.456Z";

Deno.test(`a write and a DELETE made in a session of ${ZONE} are broadcast and remembered in UTC`, async () => {
  const admin = adminSql({ max: 1 });
  const role = `readsync_tz_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const password = crypto.randomUUID();
  await admin.unsafe(`create role ${role} login password '${password}'`);
  let zoned: postgres.Sql | null = null;
  try {
    await admin.unsafe(`grant authenticated to ${role}`);
    await admin.unsafe(`alter role ${role} set timezone = '${ZONE}'`);
    const url = new URL(testEnv().dbUrl);
    url.username = role;
    url.password = password;
    zoned = postgres(url.toString(), { max: 1, prepare: false, onnotice: () => {} });

    // The premise: a session of this role prints the date with a seconds offset.
    const [{ printed }] = await zoned<{ printed: string }[]>`
      select to_jsonb(${UPDATED_AT}::timestamptz) #>> '{}' as printed`;
    assert.ok(printed.endsWith(OFFSET), `the session prints ${printed}`);

    const user = await createTestUser();
    const claims = { sub: user.id, role: "authenticated" };
    const series = seriesId("tzdel");
    const asDataApi = (statement: (tx: postgres.TransactionSql) => Promise<unknown>) =>
      zoned!.begin(async (tx) => {
        await tx`select set_config('role', 'authenticated', true),
                        set_config('request.jwt.claims', ${JSON.stringify(claims)}, true)`;
        await statement(tx);
      });

    await asDataApi((tx) =>
      tx`insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
         values (${user.id}, ${series}, 2, 7, 0.5, 'tz-phone', ${UPDATED_AT}::timestamptz)`
    );
    await asDataApi((tx) => tx`delete from public.reading_progress where series_id = ${series}`);

    // The broadcasts (the user is new: every message on the topic is this test's), as a device's
    // RealtimeService parses them (progressRowSchema).
    const messages = await admin<{ event: string; payload: Record<string, unknown> }[]>`
      select event, payload from realtime.messages where topic = ${"progress:" + user.id}`;
    assert.deepEqual(messages.map((m) => m.event).sort(), ["DELETE", "INSERT"]);
    for (const m of messages) {
      const row = m.event === "DELETE" ? m.payload.old_record : m.payload.record;
      const parsed = progressRowSchema.safeParse(row);
      assert.ok(parsed.success, `the ${m.event} broadcast's row is readable: ${JSON.stringify(row)}`);
      assert.equal(parsed.data.updated_at, UPDATED_AT);
    }

    // The remembered deletion, through the store's changes read (as GET /progress/changes).
    const store = createPostgresProgressStore(admin);
    const changes = await store.changes(claims, { cursor: "", limit: 10 });
    assert.deepEqual(
      changes.changes.map((p) => [p.series_id, p.updated_at, "deleted" in p && p.deleted]),
      [[series, UPDATED_AT, true]],
    );
  } finally {
    await zoned?.end();
    await admin.unsafe(`drop role if exists ${role}`);
    await admin.end();
  }
});
