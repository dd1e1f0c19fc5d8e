// End to end through the product's own client: device A writes with updateProgress() (POST
// /functions/v1/progress); device B follows with subscribeToProgress() from shared/progress/api.ts
// (RealtimeService, its catch-up and polling going through GET /functions/v1/progress/changes?since=),
// live over Realtime and, while Realtime is killed, by polling the function. Device B ends with
// exactly the server state and every version written while it was live.

import assert from "node:assert/strict";
import { startRealtimeServer } from "../../local/realtime/endpoint.ts";
import { subscribeToProgress, updateProgress } from "../../shared/progress/api.ts";
import type { ProgressChange, RealtimeStatus } from "../../shared/realtime/realtimeService.ts";
import { adminSql, createTestUser, testEnv } from "../support/env.ts";
import {
  clientWithToken,
  ownEndpoint,
  serverState,
  sleep,
  statusesFromFirstLive,
  waitFor,
} from "./realtime_support.ts";

Deno.test({
  name: "realtime e2e: api.ts subscribeToProgress: Realtime killed -> polling the function -> live, 0 missed",
  ...ownEndpoint,
}, async () => {
  const env = testEnv();
  const sql = adminSql();
  const a = await createTestUser();
  let server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! });
  const port = server.port;
  // Device A: a plain client of the stack. Device B: functions at the stack, Realtime at the
  // endpoint this test kills and restarts.
  const deviceA = clientWithToken(() => a.accessToken);
  const deviceB = clientWithToken(() => a.accessToken, {
    realtimeOrigin: server.url,
    reconnectAfterMs: () => 250,
  });
  const logs: Record<string, unknown>[] = [];
  const changes: ProgressChange[] = [];
  const statuses: RealtimeStatus[] = [];
  const subscription = subscribeToProgress(deviceB, a.id, (change) => changes.push(change), {
    pollIntervalMs: 200,
    backoff: { initialMs: 200, maxMs: 1_000 },
    joinTimeoutMs: 2_000,
    log: (line) => logs.push(JSON.parse(line)),
  });
  subscription.onStatus((s) => statuses.push(s));
  const polls = () => logs.filter((l) => l.event === "poll_done").length;

  const written: { series_id: string; updated_at: string; phase: string }[] = [];
  let phase = "before";
  let writing = true;
  let writer: Promise<void> = Promise.resolve();
  const seenVersion = (w: { series_id: string; updated_at: string }) =>
    changes.some((c) => c.row.series_id === w.series_id && c.row.updated_at === w.updated_at);
  try {
    await waitFor("live", () => subscription.status === "live");

    // Device A: 4 series, a new version every ~20 ms through the progress function.
    const t0 = Date.now() - 60_000;
    writer = (async () => {
      for (let i = 0; writing; i++) {
        const updated_at = new Date(t0 + i).toISOString();
        const result = await updateProgress(deviceA, {
          series_id: `e2e-${i % 4}`,
          chapter: i,
          page: i % 50,
          percentage: Math.min(1, i / 10_000),
          device_id: "device-a",
          updated_at,
        });
        assert.equal(result.won, true);
        written.push({ series_id: `e2e-${i % 4}`, updated_at, phase });
        await sleep(20);
      }
    })();

    await waitFor("15 versions written while live", () => written.length >= 15);
    phase = "outage";
    await waitFor(
      "the pre-outage versions on device B",
      () => written.filter((w) => w.phase === "before").every(seenVersion),
    );
    await server.close();
    await waitFor("polling", () => subscription.status === "polling");
    const pollsAtOutage = polls();
    await waitFor(
      "15 versions written during the outage",
      () => written.filter((w) => w.phase === "outage").length >= 15,
    );
    // The outage's versions reach device B through the function while Realtime is still down.
    const outageSoFar = written.filter((w) => w.phase === "outage");
    const lastOutage = outageSoFar[outageSoFar.length - 1];
    await waitFor(
      "an outage version delivered by polling",
      () =>
        changes.some((c) =>
          c.source === "poll" && c.row.series_id === lastOutage.series_id &&
          c.row.updated_at >= lastOutage.updated_at
        ),
    );
    assert.ok(polls() > pollsAtOutage, "device B polled the progress function");
    assert.equal(subscription.status, "polling");

    server = await startRealtimeServer({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret!, port });
    await waitFor("live again", () => subscription.status === "live", { timeoutMs: 15_000 });
    phase = "after";
    const afterFrom = written.length;
    await waitFor("15 versions written after the return", () => written.length >= afterFrom + 15);
    writing = false;
    await writer;

    const expected = await serverState(sql, a.id);
    const deviceState = () =>
      new Map(changes.filter((c) => c.kind === "upsert").map((c) => [c.row.series_id, c.row]));
    await waitFor("device B = server", () => {
      const mine = deviceState();
      return mine.size === expected.size &&
        [...expected].every(([series, row]) =>
          mine.get(series)?.updated_at === new Date(row.updated_at as string).toISOString() &&
          mine.get(series)?.chapter === row.chapter
        );
    });
    const missed = written.filter((w) => w.phase !== "outage").filter((w) => !seenVersion(w));
    const count = (p: string) => written.filter((w) => w.phase === p).length;
    console.log(
      `written ${written.length} (live ${count("before")}, outage ${count("outage")}, live ${
        count("after")
      }); ` +
        `delivered ${changes.length} (${changes.filter((c) => c.source === "poll").length} by polling); ` +
        `${polls()} polls of /progress/changes; missed ${missed.length}`,
    );
    assert.equal(missed.length, 0, `missed: ${JSON.stringify(missed.slice(0, 5))}`);
    // Live, then (Realtime killed) connecting and polling, then live again; before the first live only
    // a first join slower than the join grace (or timed out) may add "polling" (statusesFromFirstLive).
    assert.deepEqual(statusesFromFirstLive(logs), ["live", "connecting", "polling", "live"]);
    assert.deepEqual(
      dedupe(statuses).slice(-4),
      ["live", "connecting", "polling", "live"],
      "as onStatus heard them",
    );
    // Nothing older after something newer, per series.
    const last = new Map<string, string>();
    for (const c of changes) {
      assert.ok((last.get(c.row.series_id) ?? "") < c.row.updated_at, "a stale version was delivered");
      last.set(c.row.series_id, c.row.updated_at);
    }
    const failures = logs.filter((l) => l.event === "realtime_unavailable");
    assert.ok(failures.length >= 1);
    for (const line of failures) {
      assert.equal(line.channel, `progress:${a.id}`);
      assert.equal(typeof line.attempt, "number");
    }
  } finally {
    writing = false;
    await writer.catch(() => {});
    await subscription.unsubscribe(); // closes the service too
    const stats = subscription.service.stats();
    await deviceB.realtime.disconnect();
    await server.close();
    await sql.end();
    assert.equal(stats.timers, 0);
    assert.equal(stats.channels, 0);
  }
});

function dedupe<T>(values: T[]): T[] {
  return values.filter((v, i) => i === 0 || values[i - 1] !== v);
}
