// RealtimeService between two devices of one reader, over the real client and endpoint: every
// change reaches the other device once, deletes arrive as deletes, stale and duplicate deliveries
// are dropped, invalid payloads are refused, and a stranger cannot follow someone else's progress.

import assert from "node:assert/strict";
import { type ProgressChange, RealtimeService } from "../../shared/realtime/realtimeService.ts";
import { adminSql, createTestUser } from "../support/env.ts";
import {
  asUser,
  deleteProgress,
  newClient,
  noSanitize,
  sqlChangesSince,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

/** One reader's device: a supabase-js client and a RealtimeService catching up over SQL. */
async function oneReader() {
  const sql = adminSql();
  const a = await createTestUser();
  const client = newClient();
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    log: () => {},
  });
  const close = async () => {
    await service.close();
    await client.realtime.disconnect();
    await sql.end();
  };
  return { sql, a, client, service, close };
}

Deno.test({
  name: "realtime service: device B follows device A (upsert, newer, delete), each once",
  ...noSanitize,
}, async () => {
  const { sql, a, service, close } = await oneReader();
  const changes: ProgressChange[] = [];
  // Written before the subscription exists, so only the catch-up can deliver it (written after
  // subscribeToProgress, the join could win the race and the broadcast would deliver it instead).
  await writeProgress(sql, a.id, { series_id: "before-subscribe", chapter: 1, device_id: "a" });
  const sub = service.subscribeToProgress(a.id, (c) => changes.push(c));
  try {
    await waitFor("live", () => sub.status === "live");
    // The catch-up delivered what was written before the join.
    assert.ok(changes.some((c) => c.row.series_id === "before-subscribe" && c.source === "catchup"));

    const t0 = Date.now() - 10_000;
    await writeProgress(sql, a.id, {
      series_id: "frieren",
      chapter: 1,
      device_id: "a",
      updated_at: new Date(t0).toISOString(),
    });
    await writeProgress(sql, a.id, {
      series_id: "frieren",
      chapter: 2,
      device_id: "a",
      updated_at: new Date(t0 + 1).toISOString(),
    });
    await deleteProgress(sql, a.id, "frieren");
    await waitFor(
      "3 frieren changes",
      () => changes.filter((c) => c.row.series_id === "frieren").length === 3,
    );
    const frieren = changes.filter((c) => c.row.series_id === "frieren");
    assert.deepEqual(frieren.map((c) => [c.kind, c.row.chapter, c.source]), [
      ["upsert", 1, "realtime"],
      ["upsert", 2, "realtime"],
      ["delete", 2, "realtime"],
    ]);
    assert.ok(frieren.every((c) => typeof c.messageId === "string"));

    // Replaying a broadcast (same message) or an older version changes nothing.
    const stats = service.stats();
    const replay = {
      type: "broadcast",
      event: "INSERT",
      meta: { id: frieren[0].messageId },
      payload: { operation: "INSERT", record: frieren[0].row },
    };
    assert.equal(service.handleProgressUpdate(replay), null);
    assert.equal(
      service.handleProgressUpdate({ operation: "UPDATE", record: { ...frieren[1].row }, old_record: null }),
      null,
    );
    assert.equal(service.stats().duplicates, stats.duplicates + 1);
    assert.equal(service.stats().stale, stats.stale + 1, "a late copy of the deleted version is stale");
    // Invalid payloads are refused and counted.
    for (
      const bad of [null, { operation: "TRUNCATE" }, { operation: "INSERT", record: { series_id: "x" } }]
    ) {
      assert.equal(service.handleProgressUpdate(bad), null);
    }
    assert.equal(service.stats().invalid, stats.invalid + 3);
    assert.equal(changes.filter((c) => c.row.series_id === "frieren").length, 3);

    // After the hard DELETE a device that was offline writes its old position: the series has no
    // row, so the server inserts it (a new life of the row) although its updated_at is older than
    // the deleted version's. B must follow the server, not drop it as stale.
    await writeProgress(sql, a.id, {
      series_id: "frieren",
      chapter: 7,
      device_id: "ereader",
      updated_at: new Date(t0 - 5_000).toISOString(),
    });
    await waitFor(
      "the re-inserted frieren",
      () => changes.filter((c) => c.row.series_id === "frieren").length === 4,
    );
    const reinserted = changes.filter((c) => c.row.series_id === "frieren")[3];
    assert.deepEqual([reinserted.kind, reinserted.row.chapter, reinserted.row.device_id], [
      "upsert",
      7,
      "ereader",
    ]);
    assert.ok(Date.parse(reinserted.row.created_at) > Date.parse(frieren[0].row.created_at));
    // A late copy of the first life (a redelivered broadcast, an old poll page) stays stale.
    assert.equal(
      service.handleProgressUpdate({ operation: "UPDATE", record: { ...frieren[1].row }, old_record: null }),
      null,
    );
  } finally {
    await sub.unsubscribe();
    await close();
  }
});

Deno.test({
  name: "realtime service: a row deleted and inserted again within one millisecond still starts a later life",
  ...noSanitize,
}, async () => {
  // A script that replaces a row (delete, then insert an older position) in one transaction: both
  // lives begin within the same millisecond, and the second one's updated_at is older. The server
  // keeps the second life, so every device must too, which needs created_at finer than a millisecond.
  const { sql, a, service, close } = await oneReader();
  const device = new Map<string, ProgressChange["row"]>();
  const sub = service.subscribeToProgress(a.id, (c) => {
    if (c.kind === "delete") device.delete(c.row.series_id);
    else device.set(c.row.series_id, c.row);
  });
  const series: string[] = [];
  try {
    await waitFor("live", () => sub.status === "live");
    const t0 = Date.now() - 60_000;
    // Replace rows until one replacement began both lives within one millisecond (about one in ten
    // here: the statements and their triggers take a fraction of a millisecond each).
    let sameMillisecond = false;
    while (!sameMillisecond && series.length < 400) {
      const s = `relife-${series.length}`;
      series.push(s);
      // One round trip (simple query protocol): the three statements run back to back.
      await asUser(sql, a.id, (tx) =>
        tx.unsafe(`
          insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
          values ('${a.id}', '${s}', 9, 'phone', '${new Date(t0).toISOString()}');
          delete from public.reading_progress where user_id = '${a.id}' and series_id = '${s}';
          insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
          values ('${a.id}', '${s}', 2, 'ereader', '${new Date(t0 - 5_000).toISOString()}');`));
      const [lives] = await sql<{ same_ms: boolean }[]>`
        select date_trunc('milliseconds', p.created_at)
                 = date_trunc('milliseconds', (d.version ->> 'created_at')::timestamptz) as same_ms
          from public.reading_progress p
          join public.reading_progress_deletions d using (user_id, series_id)
         where p.user_id = ${a.id} and p.series_id = ${s}`;
      sameMillisecond = lives.same_ms;
    }
    assert.ok(sameMillisecond, `no replacement of ${series.length} began both lives in one millisecond`);
    await writeProgress(sql, a.id, { series_id: "relife-done", device_id: "phone" });
    await waitFor("the last write", () => device.has("relife-done"));
    for (const s of series) {
      assert.deepEqual(
        [device.get(s)?.chapter, device.get(s)?.device_id],
        [2, "ereader"],
        `${s} (of ${series.length}): the device follows the server's second life`,
      );
    }
  } finally {
    await sub.unsubscribe();
    await close();
  }
});

Deno.test({
  name: "realtime service: two subscriptions share one channel; the second gets the current state",
  ...noSanitize,
}, async () => {
  const { sql, a, client, service, close } = await oneReader();
  const first: ProgressChange[] = [];
  const second: ProgressChange[] = [];
  const s1 = service.subscribeToProgress(a.id, (c) => first.push(c));
  try {
    await waitFor("live", () => s1.status === "live");
    await writeProgress(sql, a.id, { series_id: "mob", chapter: 4, device_id: "a" });
    await waitFor("first has it", () => first.length === 1);
    const s2 = service.subscribeToProgress(a.id, (c) => second.push(c));
    assert.equal(second.length, 1, "replayed at once");
    assert.equal(client.getChannels().length, 1);
    await writeProgress(sql, a.id, { series_id: "mob", chapter: 5, device_id: "a" });
    await waitFor("both", () => first.length === 2 && second.length === 2);
    await s2.unsubscribe();
    assert.equal(s1.status, "live", "the other subscription keeps the link");
    assert.equal(service.stats().links, 1);
  } finally {
    await s1.unsubscribe();
    await close();
  }
  assert.equal(service.stats().links, 0);
});

Deno.test({
  name: "realtime service: user C subscribing to A's progress is refused live and hears nothing of A",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const c = await createTestUser();
  const client = newClient();
  const logs: Record<string, unknown>[] = [];
  // C's device, C's token, A's id (a bug or an attack): RLS refuses the join, and C's own
  // "changes since" (the API answers for the token's user) never yields A's rows.
  const polls = { calls: 0 };
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, c.id, polls),
    accessToken: c.accessToken,
    pollIntervalMs: 100,
    backoff: { initialMs: 100, maxMs: 300 },
    log: (l) => logs.push(JSON.parse(l)),
  });
  const heard: ProgressChange[] = [];
  const sub = service.subscribeToProgress(a.id, (x) => heard.push(x));
  try {
    await writeProgress(sql, c.id, { series_id: "c-own", device_id: "c" }); // C's rows are not A's
    await waitFor("polling", () => sub.status === "polling");
    await writeProgress(sql, a.id, { series_id: "secret", device_id: "a" });
    // Two complete polls that started after A's write, and a refused rejoin after it.
    const callsAfterWrite = polls.calls;
    const refusalsAfterWrite = logs.filter((l) => l.event === "realtime_unavailable").length;
    await waitFor(
      "two polls and a refused rejoin after A's write",
      () =>
        polls.calls >= callsAfterWrite + 3 &&
        logs.filter((l) => l.event === "realtime_unavailable").length > refusalsAfterWrite,
    );
    assert.deepEqual(heard, []);
    assert.ok(logs.some((l) => l.event === "foreign_row"));
    assert.ok(
      logs.some((l) => l.event === "realtime_unavailable" && String(l.reason).includes("Unauthorized")),
    );
    assert.notEqual(sub.status, "live");
  } finally {
    await sub.unsubscribe();
    await service.close();
    await client.realtime.disconnect();
    await sql.end();
  }
});
