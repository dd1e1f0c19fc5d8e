// RealtimeService between two devices of one reader, over the real client and endpoint: every
// change reaches the other device once, deletes arrive as deletes, stale and duplicate deliveries
// are dropped, invalid payloads are refused, and a stranger cannot follow someone else's progress.

import assert from "node:assert/strict";
import { mintUserAccessToken } from "../../local/stack/keys.ts";
import {
  DEFAULT_JOIN_GRACE_MS,
  type ProgressChange,
  RealtimeService,
} from "../../shared/realtime/realtimeService.ts";
import { fireWhenSet, watchTimers } from "../shared/realtime/watchTimers.ts";
import { adminSql, createTestUser } from "../support/env.ts";
import {
  asUser,
  type ClientOptions,
  clientWithToken,
  closeClient,
  deleteProgress,
  joinChannel,
  newClient,
  noSanitize,
  sqlChangesSince,
  waitFor,
  writeProgress,
} from "./realtime_support.ts";

/** One reader's device: a supabase-js client and a RealtimeService catching up over SQL. */
async function oneReader(clientOptions: ClientOptions = {}) {
  const sql = adminSql();
  const a = await createTestUser();
  const client = newClient(clientOptions);
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

/**
 * Realtime delivers a broadcast to the channels joined when it reads the row from the replication
 * stream, which lags under load: a write committed before a subscription may still be broadcast after
 * its join, and arrive before the catch-up reads it. Runs `write` while another device of the user is
 * joined, and returns once that device has received `count` broadcasts: a channel joined afterwards
 * cannot receive them, so only a read delivers those writes.
 */
async function writeBeforeSubscribing(
  user: { id: string; accessToken: string },
  count: number,
  write: () => Promise<void>,
): Promise<void> {
  const observer = clientWithToken(() => user.accessToken);
  try {
    const { joined, status } = await joinChannel(observer, `progress:${user.id}`);
    assert.equal(status, "SUBSCRIBED");
    await write();
    await waitFor(`the ${count} broadcasts gone out`, () => joined.received.length >= count);
  } finally {
    await closeClient(observer);
  }
}

Deno.test({
  name: "realtime service: device B follows device A (upsert, newer, delete), each once",
  ...noSanitize,
}, async () => {
  const { sql, a, service, close } = await oneReader();
  const changes: ProgressChange[] = [];
  // Written (and broadcast) before the subscription exists, so only the catch-up can deliver it
  // (written after subscribeToProgress, the join could win the race and the broadcast would deliver
  // it instead).
  await writeBeforeSubscribing(
    a,
    1,
    () => writeProgress(sql, a.id, { series_id: "before-subscribe", chapter: 1, device_id: "a" }),
  );
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
    // on a quiet machine: the statements and their triggers take a fraction of a millisecond each;
    // far fewer on a loaded one, where the backend is preempted between them, so the bound is wide:
    // the loop ends at the first such replacement, the bound only decides when to give up).
    let sameMillisecond = false;
    while (!sameMillisecond && series.length < 3000) {
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
  name: "realtime service: a user id given in upper case is the same user (joins live, rows are not foreign)",
  ...noSanitize,
}, async () => {
  const { sql, a, service, close } = await oneReader();
  const got: ProgressChange[] = [];
  const sub = service.subscribeToProgress(a.id.toUpperCase(), (c) => got.push(c));
  try {
    assert.equal(sub.userId, a.id);
    await waitFor("live", () => sub.status === "live");
    await writeProgress(sql, a.id, { series_id: "caps", chapter: 1, device_id: "a" });
    await waitFor("the write", () => got.some((c) => c.row.series_id === "caps" && c.source === "realtime"));
    assert.equal(service.stats().invalid, 0);
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
  // The refusals' 5 s wait is not what this tests (Supabase keeps it: hence the longer timeouts).
  const client = newClient({ joinErrorBackoffMs: 0 });
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
    await waitFor("polling", () => sub.status === "polling", { timeoutMs: 15_000 });
    await writeProgress(sql, a.id, { series_id: "secret", device_id: "a" });
    // Two complete polls that started after A's write, and a refused rejoin after it.
    const callsAfterWrite = polls.calls;
    const refusalsAfterWrite = logs.filter((l) => l.event === "realtime_unavailable").length;
    await waitFor(
      "two polls and a refused rejoin after A's write",
      () =>
        polls.calls >= callsAfterWrite + 3 &&
        logs.filter((l) => l.event === "realtime_unavailable").length > refusalsAfterWrite,
      { timeoutMs: 20_000 },
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

Deno.test({
  name:
    "realtime service: a first join that Realtime refuses only after its 5 s backoff does not leave the device unread: it polls meanwhile",
  ...noSanitize,
}, async () => {
  // Supabase answers a refused join after CHANNEL_ERROR_BACKOFF_MS (5 s), which this test keeps.
  // The link reads by polling once the join has gone unanswered for joinGraceMs (2 s by default),
  // instead of reading nothing until the refusal. The grace's timer is ended by hand as soon as it
  // is set (watchTimers), so the read is made long before the refusal can come, whatever the
  // machine's pace; what the link does is then read in order of events and from its timers.
  const timers = watchTimers();
  const sql = adminSql();
  const a = await createTestUser();
  const c = await createTestUser();
  const client = newClient();
  // What happened, in order: reads, statuses and log lines (the refusal's), each with its place.
  let seq = 0;
  const logs: { seq: number; entry: Record<string, unknown> }[] = [];
  const calls: number[] = [];
  const changesSince = sqlChangesSince(sql, c.id);
  const isRefusal = (entry: Record<string, unknown>) =>
    entry.event === "realtime_unavailable" && String(entry.reason).includes("Unauthorized");
  // The link as the refusal left it: taken in the next turn of the event loop, after the refusal's
  // handling has ended and the promises it started have run (a read made at once has called
  // changesSince by then), and before any timer it set can run (they were set after this one).
  let atRefusal: { calls: number; pollTimers: number } | undefined;
  const service = new RealtimeService(client, {
    changesSince: (cursor) => {
      calls.push(seq++);
      return changesSince(cursor);
    },
    accessToken: c.accessToken,
    pollIntervalMs: 60_000,
    log: (l) => {
      const entry = JSON.parse(l);
      logs.push({ seq: seq++, entry });
      if (isRefusal(entry) && atRefusal === undefined) {
        setTimeout(() => {
          atRefusal = {
            calls: calls.length,
            pollTimers: timers.pending().filter((ms) => ms === 60_000).length,
          };
        }, 0);
      }
    },
  });
  const statuses: { seq: number; status: string }[] = [];
  const reads: string[] = [];
  const sub = service.subscribeToProgress(a.id, () => {}); // C's token, A's topic: refused
  sub.onStatus((status) => statuses.push({ seq: seq++, status }));
  sub.onRead((outcome) => reads.push(outcome));
  try {
    const refusal = () => logs.find((l) => isRefusal(l.entry));
    await fireWhenSet(timers, "the join grace", DEFAULT_JOIN_GRACE_MS);
    assert.equal(refusal(), undefined, "the grace ended before the refusal");
    const unanswered = logs.find((l) => l.entry.event === "join_unanswered");
    assert.ok(unanswered, "the grace ended with the join unanswered");
    await waitFor("the grace's read", () => reads.length === 1, { timeoutMs: 20_000 });
    await waitFor("the refusal", () => refusal() !== undefined && atRefusal !== undefined, {
      timeoutMs: 20_000,
    });
    // Before the refusal by order (the grace's end, its read, polling), not by a time.
    assert.ok(unanswered.seq < refusal()!.seq);
    assert.ok(calls.length >= 1 && calls[0] < refusal()!.seq, "a read before the refusal");
    const polling = statuses.find((s) => s.status === "polling");
    assert.ok(polling && polling.seq < refusal()!.seq, `statuses ${JSON.stringify(statuses)}`);
    // The refusal found the link polling: it keeps the polls' own pace, no second read at once. The
    // next read is still the one a poll interval after the first (its timer pending, no other).
    assert.deepEqual(atRefusal, { calls: 1, pollTimers: 1 }, JSON.stringify(timers.pending()));
    assert.deepEqual(reads, ["done"]);
  } finally {
    timers.restore();
    await sub.unsubscribe();
    await service.close();
    await client.realtime.disconnect();
    await sql.end();
  }
});

/** The changes read of the progress API (the SQL function), as the user, with a small page. */
function sqlChangesPages(sql: ReturnType<typeof adminSql>, userId: string, limit: number, calls: string[]) {
  return async (cursor: unknown) => {
    const [{ page }] = await asUser(
      sql,
      userId,
      (tx) =>
        tx<{ page: { changes: unknown[]; next_cursor: string; has_more: boolean } }[]>`
          select public.reading_progress_changes(${
          typeof cursor === "string" ? cursor : null
        }, ${limit}) as page`,
    );
    calls.push(`${String(cursor)} -> ${page.next_cursor}${page.has_more ? " more" : ""}`);
    return page;
  };
}

Deno.test({
  name:
    "realtime service: a catch-up held back by a long transaction is not live, keeps polling, and reads every change once it can",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  // Any write transaction left open in the database (here an unrelated one) holds the cursor of
  // "changes since" below its xid; with more changed rows above it than a page holds, the API
  // answers has_more with the cursor it was sent.
  const long = await sql.reserve();
  await long`begin`;
  await long`select pg_current_xact_id()`;
  const client = newClient();
  const calls: string[] = [];
  let committed = false;
  let readFailed = false;
  let channelFailed = false;
  const service = new RealtimeService(client, {
    changesSince: sqlChangesPages(sql, a.id, 2, calls),
    accessToken: a.accessToken,
    pollIntervalMs: 100,
    // What is asserted is the status while the catch-up is held back; a join slower than the grace
    // on a loaded machine would add a "polling" of its own before it (tests/shared/realtime/joinGrace.test.ts).
    joinGraceMs: Infinity,
    log: (line) => {
      if (JSON.parse(line).event === "realtime_unavailable") channelFailed = true;
    },
  });
  const got = new Map<string, string>();
  // Each status with what had happened when it came: how many rows were heard, whether the long
  // transaction was (being) committed. A failed read ("offline" until the next answered one) and a
  // channel that failed (a join that timed out, a drop) are what a loaded machine may add; both are
  // recorded, from the service's own signals (onRead, its log), to tell them from a wrong status.
  const statuses: { status: string; heard: number; committed: boolean }[] = [];
  let sub: ReturnType<typeof service.subscribeToProgress> | undefined;
  try {
    // Broadcast before the service joins: their broadcasts would bring the rows the held-back
    // catch-up cannot read.
    await writeBeforeSubscribing(a, 5, async () => {
      for (let i = 0; i < 5; i++) {
        await writeProgress(sql, a.id, { series_id: `held-${i}`, chapter: i, device_id: "phone" });
      }
    });
    sub = service.subscribeToProgress(a.id, (c) => got.set(c.row.series_id, c.source));
    sub.onStatus((status) => statuses.push({ status, heard: got.size, committed }));
    sub.onRead((outcome) => readFailed ||= outcome === "failed");
    // It reads the first page, finds the cursor stuck, and asks again (three calls at least), polling.
    await waitFor(
      "the catch-up retried, polling",
      () => calls.length >= 4 && sub!.status === "polling",
      { timeoutMs: 20_000 },
    );
    assert.ok(got.size < 5, "the rest was not readable yet");
    committed = true;
    await long`commit`;
    await waitFor("every change, and live", () => got.size === 5 && sub!.status === "live", {
      timeoutMs: 20_000,
    });
    assert.deepEqual([...got.keys()].sort(), ["held-0", "held-1", "held-2", "held-3", "held-4"]);
    assert.ok([...got.values()].every((source) => source !== "realtime"), "read, not broadcast");
    // Joined but behind: polling (the catch-up keeps polling; "offline" only while a read failed),
    // then live once, when caught up: only after the commit, with every row heard.
    const seen = JSON.stringify({ statuses, readFailed, channelFailed, calls });
    const live = statuses.findIndex((s) => s.status === "live");
    assert.ok(live > 0, `polling before live: ${seen}`);
    assert.ok(
      statuses.slice(0, live).every((s) => s.status === "polling" || (s.status === "offline" && readFailed)),
      `polling (or offline after a failed read) while behind: ${seen}`,
    );
    assert.deepEqual(
      { committed: statuses[live].committed, heard: statuses[live].heard },
      { committed: true, heard: 5 },
      `live only once caught up: ${seen}`,
    );
    // Live once: another status after it only if the channel failed since (it is live again now).
    assert.ok(live === statuses.length - 1 || channelFailed, `live once: ${seen}`);
  } finally {
    await long`rollback`.catch(() => {});
    long.release();
    await sub?.unsubscribe();
    await service.close();
    await client.realtime.disconnect();
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime service: a changesSince call that never answers is aborted after requestTimeoutMs and retried; unsubscribe does not wait for a hung call",
  ...noSanitize,
}, async () => {
  const { sql, a, client, close } = await oneReader();
  const signals: AbortSignal[] = [];
  let hang = true;
  const real = sqlChangesPages(sql, a.id, 100, []);
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: (cursor, { signal }) => {
      signals.push(signal);
      return hang ? new Promise(() => {}) : real(cursor);
    },
    accessToken: a.accessToken,
    requestTimeoutMs: 300,
    pollIntervalMs: 100,
    log: (l) => logs.push(JSON.parse(l)),
  });
  try {
    await writeProgress(sql, a.id, { series_id: "late", chapter: 2, device_id: "phone" });
    const got: string[] = [];
    const sub = service.subscribeToProgress(a.id, (c) => got.push(c.row.series_id));
    await waitFor("the first call timed out", () => signals.length >= 1 && signals[0].aborted);
    assert.match(String(signals[0].reason), /did not answer within 300 ms/);
    assert.ok(logs.some((l) => String(l.event).endsWith("_failed")));
    hang = false;
    await waitFor("caught up and live", () => got.includes("late") && sub.status === "live");

    // A second reader whose every call hangs: its unsubscribe aborts the call and returns at once.
    hang = true;
    const stuck = new RealtimeService(newClient(), {
      changesSince: (_cursor, { signal }) => {
        signals.push(signal);
        return new Promise(() => {});
      },
      accessToken: a.accessToken,
      requestTimeoutMs: 60_000,
      log: () => {},
    });
    const seen = signals.length;
    const stuckSub = stuck.subscribeToProgress(a.id, () => {});
    await waitFor("its catch-up is in flight", () => signals.length > seen);
    // Had unsubscribe waited for the hung call, it would return once the call's 60 s timeout had
    // aborted it: the abort's reason tells which came first. The bound only catches a hang.
    await returnsWithin("unsubscribe", stuckSub.unsubscribe(), 20_000);
    await stuck.close();
    await (stuck.client as ReturnType<typeof newClient>).realtime.disconnect();
    const hung = signals[signals.length - 1];
    assert.ok(hung.aborted, "the hung call was aborted");
    assert.match(String(hung.reason), /unsubscribed/, "aborted by the unsubscribe, not by its timeout");
    assert.equal(stuck.stats().timers, 0);
    await sub.unsubscribe();
  } finally {
    await service.close();
    await close();
  }
  assert.equal(service.stats().timers, 0);
});

Deno.test({
  name:
    "realtime service: a join cuts off a poll that hangs (the catch-up reads at once); unsubscribe while the catch-up hangs too returns at once, and no call starts after it",
  ...noSanitize,
}, async () => {
  // The refusal's wait is not what this tests.
  const { a, client, close } = await oneReader({ joinErrorBackoffMs: 0 });
  const calls: { signal: AbortSignal; afterClose: boolean }[] = [];
  let closed = false;
  const logs: Record<string, unknown>[] = [];
  // A token signed with a secret of our own: the join is refused (JwtSignatureError) on every
  // stack, the link polls, and that poll never answers. (An expired token is refused only where
  // tests mint tokens: against a hosted project newAccessToken() signs in and ignores the lifetime,
  // and the join would succeed.)
  const foreign = await mintUserAccessToken(a.id, { secret: "another-project-secret-with-32-characters!!" });
  const service = new RealtimeService(client, {
    changesSince: (_cursor, { signal }) => {
      calls.push({ signal, afterClose: closed });
      return new Promise(() => {});
    },
    accessToken: foreign,
    requestTimeoutMs: 30_000,
    backoff: { initialMs: 600_000, maxMs: 600_000 },
    log: (l) => logs.push(JSON.parse(l)),
  });
  const sub = service.subscribeToProgress(a.id, () => {});
  try {
    await waitFor("the poll is in flight", () => calls.length === 1);
    // A valid token: the link rejoins; the join cuts the hung poll off and its catch-up calls at once
    // (it would otherwise queue behind the poll for its 30 s timeout), and hangs as well.
    await service.setAccessToken(await a.newAccessToken(3600));
    await waitFor("joined", () => logs.some((l) => l.event === "joined"));
    await waitFor("the catch-up, while the poll's 30 s run", () => calls.length === 2);
    assert.ok(calls[0].signal.aborted, "the hung poll was cut off");
    assert.match(String(calls[0].signal.reason), /the channel joined/, "by the join, not by its timeout");
    const refusedAt = logs.findIndex((l) =>
      l.event === "realtime_unavailable" && String(l.reason).startsWith("CHANNEL_ERROR")
    );
    assert.ok(
      refusedAt >= 0 && refusedAt < logs.findIndex((l) => l.event === "joined"),
      `the first join was refused before the link joined: ${JSON.stringify(logs.map((l) => l.event))}`,
    );
    closed = true;
    // The hung catch-up's timeout is 30 s; the bound (under it) only catches a wait for it (or a hang).
    await returnsWithin("unsubscribe", sub.unsubscribe(), 20_000);
    assert.ok(calls[1].signal.aborted, "the hung catch-up was aborted");
    assert.match(
      String(calls[1].signal.reason),
      /unsubscribed/,
      "aborted by the unsubscribe, not by its timeout",
    );
    assert.deepEqual(calls.filter((c) => c.afterClose), [], "no call after close");
    assert.equal(service.stats().timers, 0);
  } finally {
    await service.close();
    await close();
  }
});

Deno.test({
  name:
    "realtime service: a service closing while another starts on the same client leaves the new one's token",
  ...noSanitize,
}, async () => {
  // A component remount (React StrictMode, a route change): the old service is closed, not
  // awaited, while the new one installs its token source on the same session-less client.
  const sql = adminSql();
  const a = await createTestUser();
  const client = newClient();
  const source = () =>
    (client.realtime as unknown as { accessToken: (() => Promise<string | null>) | null }).accessToken;
  const ownSource = source();
  const make = () =>
    new RealtimeService(client, {
      changesSince: sqlChangesSince(sql, a.id),
      accessToken: a.accessToken,
      log: () => {},
    });
  try {
    const first = make();
    const sub1 = first.subscribeToProgress(a.id, () => {});
    await waitFor("first live", () => sub1.status === "live");
    const closing = first.close();
    const second = make();
    const got: ProgressChange[] = [];
    const sub2 = second.subscribeToProgress(a.id, (c) => got.push(c));
    await closing;
    assert.equal(await source()!(), a.accessToken, "the new service's token, not the client's anon key");
    await waitFor("second live", () => sub2.status === "live");
    await writeProgress(sql, a.id, { series_id: "after-remount", chapter: 2, device_id: "phone" });
    await waitFor("the write arrives", () => got.some((c) => c.row.series_id === "after-remount"));
    await second.close();
    assert.equal(source(), ownSource, "the client's own token source is back once both are closed");
  } finally {
    await client.realtime.disconnect();
    await sql.end();
  }
});

/** Fails if `done` has not settled within `ms` (a hang guard, not a speed limit: waitFor's 20 s). */
async function returnsWithin(what: string, done: Promise<unknown>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<"hung">((resolve) => timer = setTimeout(() => resolve("hung"), ms));
  try {
    assert.equal(await Promise.race([done.then(() => "done" as const), hang]), "done", `${what} hung`);
  } finally {
    clearTimeout(timer);
  }
}

Deno.test({
  name:
    "realtime service: a handler that throws (an Error, or a value String() cannot print) is logged; the user's other handlers still get every change, and the link goes live and moves its cursor",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const client = newClient();
  const lines: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    log: (line) => lines.push(JSON.parse(line)),
  });
  try {
    await writeProgress(sql, a.id, { series_id: "before-subscribe", chapter: 1, device_id: "a" });
    // Subscribed first, so the throwing handlers are called before the recording one each time.
    const unprintable = service.subscribeToProgress(a.id, () => {
      throw Object.create(null); // String() of it throws a TypeError
    });
    const failing = service.subscribeToProgress(a.id, () => {
      throw new Error("the app's render failed");
    });
    const got: ProgressChange[] = [];
    const recorder = service.subscribeToProgress(a.id, (c) => got.push(c));
    await waitFor("live", () => recorder.status === "live");
    await waitFor(
      "the catch-up's row",
      () => got.some((c) => c.row.series_id === "before-subscribe"),
    );
    assert.notEqual(recorder.cursor, null, "the catch-up's page moved the cursor");
    assert.equal(unprintable.cursor, recorder.cursor, "for the throwing subscriptions too");
    assert.equal(failing.status, "live");

    // A broadcast: delivered from realtime-js's message handler.
    await writeProgress(sql, a.id, { series_id: "after-live", chapter: 2, device_id: "phone" });
    await waitFor("the broadcast", () => got.some((c) => c.row.series_id === "after-live"));
    assert.equal(recorder.status, "live");
    const failures = lines.filter((l) => l.event === "handler_failed");
    assert.ok(failures.every((l) => l.level === "error"), JSON.stringify(failures));
    assert.ok(failures.some((l) => l.error === "Error: the app's render failed"), JSON.stringify(failures));
    assert.ok(failures.some((l) => l.error === "[object Object]"), JSON.stringify(failures));
    assert.deepEqual(
      lines.filter((l) => /_failed$/.test(String(l.event)) && l.event !== "handler_failed"),
      [],
    );
  } finally {
    await service.close();
    await client.realtime.disconnect();
    await sql.end();
  }
});

Deno.test({
  name:
    "realtime service: the app's own channel on the user's topic is a warning (topic_in_use, with its state), not an error; the link polls and joins once the app's channel is gone",
  ...noSanitize,
}, async () => {
  const sql = adminSql();
  const a = await createTestUser();
  const client = newClient();
  await client.realtime.setAuth(a.accessToken);
  const lines: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    changesSince: sqlChangesSince(sql, a.id),
    accessToken: a.accessToken,
    backoff: { initialMs: 200, maxMs: 1_000 },
    log: (line) => lines.push(JSON.parse(line)),
  });
  try {
    const own = client.channel(`progress:${a.id}`, { config: { private: true } });
    const joined = new Promise<string>((resolve) => own.subscribe((state) => resolve(state)));
    assert.equal(await joined, "SUBSCRIBED");
    const sub = service.subscribeToProgress(a.id, () => {});
    await waitFor("topic_in_use", () => lines.some((l) => l.event === "topic_in_use"));
    const inUse = lines.find((l) => l.event === "topic_in_use")!;
    assert.equal(inUse.level, "warn");
    assert.equal(inUse.channel_state, "joined");
    await waitFor("polling meanwhile", () => sub.status === "polling");
    await client.removeChannel(own);
    await waitFor("live once the app's channel is gone", () => sub.status === "live");
    assert.deepEqual(lines.filter((l) => l.level === "error"), []);
  } finally {
    await service.close();
    await client.realtime.disconnect();
    await sql.end();
  }
});
