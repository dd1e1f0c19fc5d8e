// realtime.messages is partitioned by day, as on Supabase, and the partitions are Realtime's
// business (local/realtime/partitions.ts): yesterday's, today's and tomorrow's are created, those
// older than 72 hours dropped. When no partition covers the moment of a write (on Supabase: after a
// database reset, until Realtime reconnects), the write still commits (realtime.send only warns), the
// broadcast is lost, and devices still converge through their changes reads: a live device by its
// safety read, a device that cannot join by polling.
//
// Both tests change realtime.messages' partitions of the shared test database (deno test runs the
// files one at a time), so they run only on the local stack (READSYNC_LOCAL_REALTIME), never against
// someone else's Supabase.

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { maintainMessagePartitions, partitionsOf } from "../../local/realtime/partitions.ts";
import { changesSince } from "../../shared/progress/api.ts";
import { type ProgressChange, RealtimeService } from "../../shared/realtime/realtimeService.ts";
import { adminSql, createTestUser, testEnv } from "../support/env.ts";
import { newClient, ownEndpoint, sleep, type Sql, waitFor, writeThroughApi } from "./realtime_support.ts";

/** Waits past the next UTC midnight when it is near: a write just after it lands in the next day's partition. */
async function awayFromMidnight(): Promise<void> {
  const msToMidnight = 86_400_000 - (Date.now() % 86_400_000);
  if (msToMidnight < 30_000) await sleep(msToMidnight + 2_000);
}

/** The partition of today (UTC) + `offsetDays` and its bound clause, to detach and attach it again. */
async function partitionOfDay(sql: Sql, offsetDays: number): Promise<{ name: string; bound: string }> {
  const [{ name }] = await sql<{ name: string }[]>`
    select 'messages_' || to_char((now() at time zone 'utc')::date + ${offsetDays}::int, 'YYYY_MM_DD') as name`;
  const [{ bound }] = await sql<{ bound: string }[]>`
    select pg_catalog.pg_get_expr(c.relpartbound, c.oid) as bound from pg_catalog.pg_class c
    where c.oid = ${`realtime.${name}`}::regclass`;
  return { name, bound };
}

Deno.test({
  name:
    "realtime partitions: yesterday's, today's and tomorrow's are created, those older than 72 hours dropped",
  ...ownEndpoint,
}, async () => {
  const sql = adminSql();
  // A "now" long before the shared database's own partitions, so none of those counts as old.
  const now = new Date("2020-01-10T12:00:00Z");
  try {
    await sql.unsafe(`create table realtime.messages_2020_01_05 partition of realtime.messages
                        for values from ('2020-01-05') to ('2020-01-06');
                      create table realtime.messages_2020_01_07 partition of realtime.messages
                        for values from ('2020-01-07') to ('2020-01-08');
                      create table realtime.messages_2020_01_11 (stray integer)`);
    const logged: Record<string, unknown>[] = [];
    const first = await maintainMessagePartitions(sql, now, (fields) => logged.push(fields));
    // A table of tomorrow's name that is no partition is not taken for one: logged, not "created".
    assert.deepEqual(first.created, ["messages_2020_01_09", "messages_2020_01_10"]);
    assert.deepEqual(logged[0]?.event, "partition_create_failed");
    assert.deepEqual(logged[0]?.partition, "messages_2020_01_11");
    // 01-05 ended 4.5 days before; 01-07 ended 2.5 days before (inside the 72 hours): kept.
    assert.deepEqual(first.dropped, ["messages_2020_01_05"]);
    await sql.unsafe(`drop table realtime.messages_2020_01_11`);
    assert.deepEqual((await maintainMessagePartitions(sql, now)).created, ["messages_2020_01_11"]);
    const left = (await partitionsOf(sql)).filter((name) => name.startsWith("messages_2020_"));
    assert.deepEqual(left, [
      "messages_2020_01_07",
      "messages_2020_01_09",
      "messages_2020_01_10",
      "messages_2020_01_11",
    ]);
    // A message of that day lands in its partition.
    await sql`insert into realtime.messages (topic, extension, event, payload, private, inserted_at)
              values ('readsync:partition-test', 'broadcast', 'probe', '{}', true, '2020-01-10 23:59:59')`;
    const [{ count }] = await sql<
      { count: number }[]
    >`select count(*)::int from realtime.messages_2020_01_10`;
    assert.equal(count, 1);
    // Run again: nothing to do.
    assert.deepEqual(await maintainMessagePartitions(sql, now), { created: [], dropped: [] });

    // A transaction that wrote a message and stays open: the janitor does not wait for it (every
    // broadcast would queue behind its lock), it gives up on the partition and logs why.
    const holder = adminSql({ max: 1 });
    const release = Promise.withResolvers<void>();
    const locked = Promise.withResolvers<void>();
    const held = holder.begin(async (tx) => {
      await tx`insert into realtime.messages (topic, extension, event, payload, private, inserted_at)
               values ('readsync:partition-test', 'broadcast', 'probe', '{}', true, '2020-01-10 12:00:00')`;
      locked.resolve(); // the insert has returned: its transaction holds its lock until it ends
      await release.promise;
    });
    try {
      // The janitor starts only once the insert holds its lock (or the transaction failed).
      await Promise.race([locked.promise, held]);
      const [{ holding }] = await sql<{ holding: boolean }[]>`
        select exists (select 1 from pg_catalog.pg_locks
                       where relation = 'realtime.messages'::regclass and granted
                         and pid <> pg_catalog.pg_backend_pid()) as holding`;
      assert.ok(holding, "the open transaction holds a lock on realtime.messages");
      const logged: Record<string, unknown>[] = [];
      const later = new Date("2020-01-20T12:00:00Z"); // 01-19..21 missing, the others old
      // Seven lock timeouts of 100 ms; without them the janitor would wait for the open
      // transaction for good. The bound only ends such a hang (it is no speed limit; a loaded
      // machine takes a few seconds).
      const outcome = await Promise.race([
        maintainMessagePartitions(sql, later, (fields) => logged.push(fields)),
        sleep(30_000).then(() => "still waiting" as const),
      ]);
      assert.notEqual(outcome, "still waiting", "the janitor waited for the open transaction");
      assert.deepEqual(outcome, { created: [], dropped: [] });
      assert.deepEqual(logged.map((f) => [f.event, f.partition]), [
        ["partition_create_failed", "messages_2020_01_19"],
        ["partition_create_failed", "messages_2020_01_20"],
        ["partition_create_failed", "messages_2020_01_21"],
        // By 01-20 all of them are older than 72 hours; dropping one waits for the same lock.
        ["partition_drop_failed", "messages_2020_01_07"],
        ["partition_drop_failed", "messages_2020_01_09"],
        ["partition_drop_failed", "messages_2020_01_10"],
        ["partition_drop_failed", "messages_2020_01_11"],
      ]);
      assert.match(String(logged[0].error), /lock timeout/);
    } finally {
      release.resolve();
      await held.catch(() => {});
      await holder.end();
    }
  } finally {
    // Every 2020 partition this test made (also one a janitor that waited after all made late).
    for (const name of await partitionsOf(sql)) {
      if (name.startsWith("messages_2020_")) await sql.unsafe(`drop table realtime.${name}`);
    }
    await sql.unsafe(`drop table if exists realtime.messages_2020_01_11`); // the stray one
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime partitions: an endpoint creates a missing partition when it starts, as Realtime does when it connects",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  // Tomorrow's: no message lands there yet, so taking it away for a moment disturbs nothing.
  await awayFromMidnight();
  const { name, bound } = await partitionOfDay(sql, 1);
  await sql.unsafe(`alter table realtime.messages detach partition realtime.${name};
                    alter table realtime.${name} rename to ${name}_aside`);
  let server: Awaited<ReturnType<typeof startRealtimeServer>> | undefined;
  try {
    assert.ok(!(await partitionsOf(sql)).includes(name));
    server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
    assert.ok((await partitionsOf(sql)).includes(name), `${name} made at start`);
  } finally {
    await server?.close();
    await sql.unsafe(`drop table if exists realtime.${name};
                      alter table realtime.${name}_aside rename to ${name};
                      alter table realtime.messages attach partition realtime.${name} ${bound}`);
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime partitions: with no partition for now, an API write still commits and a live device and a device that cannot join both converge",
  ...ownEndpoint,
}, async () => {
  const sql = adminSql();
  const reader = await createTestUser();
  const devices: { service: RealtimeService; close(): Promise<void>; changes: ProgressChange[] }[] = [];
  const device = async (livePollIntervalMs: number) => {
    // The late device's refused joins are not what this tests: no 5 s wait for each.
    const client = newClient({ joinErrorBackoffMs: 0 });
    await client.functions.setAuth(reader.accessToken);
    const service = new RealtimeService(client, {
      changesSince: (cursor) => changesSince(client, typeof cursor === "string" ? cursor : null),
      accessToken: reader.accessToken,
      livePollIntervalMs,
      pollIntervalMs: 200,
      backoff: { initialMs: 200, maxMs: 400 },
      log: () => {},
    });
    const changes: ProgressChange[] = [];
    const subscription = service.subscribeToProgress(reader.id, (c) => changes.push(c));
    const handle = {
      service,
      changes,
      subscription,
      close: async () => {
        await service.close();
        await client.realtime.disconnect();
      },
    };
    devices.push(handle);
    return handle;
  };
  await awayFromMidnight();
  const { name: today, bound } = await partitionOfDay(sql, 0);
  let detached = false;
  try {
    const live = await device(300);
    await waitFor("the first device live", () => live.subscription.status === "live");

    await sql.unsafe(`alter table realtime.messages detach partition realtime.${today}`);
    detached = true;
    const written = await writeThroughApi(reader.accessToken, {
      series_id: "dungeon-meshi",
      chapter: 40,
      page: 12,
      device_id: "phone",
    });
    assert.equal(written.won, true, "the write commits although its broadcast cannot be stored");
    const [stored] = await sql<{ chapter: number }[]>`
      select chapter from public.reading_progress where user_id = ${reader.id} and series_id = 'dungeon-meshi'`;
    assert.equal(stored?.chapter, 40);

    // The live device hears nothing over Realtime; its safety read brings the row.
    await waitFor(
      "the live device to converge",
      () => live.changes.some((c) => c.row.series_id === "dungeon-meshi"),
    );
    assert.notEqual(live.changes.find((c) => c.row.series_id === "dungeon-meshi")!.source, "realtime");

    // A device starting now cannot join (the join probe cannot store its message): it polls.
    const late = await device(60_000);
    await waitFor("the late device to poll", () => late.subscription.status === "polling");
    await waitFor(
      "the late device to converge",
      () => late.changes.some((c) => c.row.series_id === "dungeon-meshi"),
    );

    // The partition is back (Realtime's janitor): broadcasts flow again, and the late device goes live.
    await sql.unsafe(`alter table realtime.messages attach partition realtime.${today} ${bound}`);
    detached = false;
    await waitFor("the late device live", () => late.subscription.status === "live");
    await writeThroughApi(reader.accessToken, {
      series_id: "dungeon-meshi",
      chapter: 41,
      device_id: "phone",
    });
    for (const { changes } of [live, late]) {
      await waitFor(
        "chapter 41 over Realtime",
        () => changes.some((c) => c.row.chapter === 41 && c.source === "realtime"),
      );
    }
  } finally {
    if (detached) {
      await sql.unsafe(`alter table realtime.messages attach partition realtime.${today} ${bound}`);
    }
    for (const d of devices) await d.close();
    await sql.end();
  }
});
