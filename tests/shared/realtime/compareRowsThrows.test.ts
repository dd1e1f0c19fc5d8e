// A compareRows that throws for a row: the app's bug on that row, not a failure of the link. The row is
// taken as invalid (skipped, counted, logged invalid_row by compareRows at error, as a handler that throws
// is logged) whether a read or a broadcast brought it. In a read it used to fail the read, which then read
// the same page again and failed at it every time (the link offline for good), and was then a warning; a
// broadcast's was logged broadcast_failed, as if the broadcast had failed.

import assert from "node:assert/strict";
import { RealtimeService } from "../../../shared/realtime/realtimeService.ts";
import type { ProgressRow } from "../../../shared/realtime/progressContract.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";

const USER = "00000000-0000-4000-8000-0000000000c7";

function row(series_id: string, chapter: number): ProgressRow {
  return {
    user_id: USER,
    series_id,
    chapter,
    device_id: "phone",
    updated_at: `2026-01-01T00:00:0${chapter}.000Z`,
    created_at: "2026-01-01T00:00:00.000Z",
  } as unknown as ProgressRow;
}

Deno.test("compareRows throws: the row is skipped as invalid (logged), the read goes on and the link goes live", async () => {
  const { client, channel } = fakeClient();
  const logs: Record<string, unknown>[] = [];
  const delivered: string[] = [];
  const service = new RealtimeService(client, {
    pollIntervalMs: 60_000,
    parseRow: (value) => value as ProgressRow,
    compareRows: (a, b) => {
      if (a.series_id === "bad") throw new Error("cannot order");
      return String(a.updated_at).localeCompare(String(b.updated_at));
    },
    // Two versions of "bad" (the second is compared with the first), then "good".
    changesSince: () =>
      Promise.resolve({ changes: [row("bad", 1), row("bad", 2), row("good", 3)], cursor: "9" }),
    log: (line) => logs.push(JSON.parse(line)),
  });
  const subscription = service.subscribeToProgress(
    USER,
    (c) => delivered.push(`${c.row.series_id}@${c.row.chapter}`),
  );
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("live", () => subscription.status === "live");
    assert.deepEqual(delivered, ["bad@1", "good@3"]);
    assert.equal(subscription.cursor, "9");
    assert.equal(service.stats().invalid, 1);
    const invalid = logs.filter((l) => l.event === "invalid_row");
    assert.equal(invalid.length, 1);
    assert.equal(invalid[0].by, "compareRows");
    assert.equal(invalid[0].level, "error");
    assert.equal(invalid[0].source, "catchup");
    assert.equal(logs.some((l) => l.event === "catchup_failed"), false);
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});

Deno.test("compareRows throws for a broadcast: the row is skipped as invalid, logged as in a read, the channel stays live", async () => {
  const { client, channel } = fakeClient();
  const logs: Record<string, unknown>[] = [];
  const delivered: string[] = [];
  const service = new RealtimeService(client, {
    pollIntervalMs: 60_000,
    parseRow: (value) => value as ProgressRow,
    compareRows: (a, b) => {
      if (a.series_id === "bad") throw new Error("cannot order");
      return String(a.updated_at).localeCompare(String(b.updated_at));
    },
    // The catch-up brings one version of "bad" (nothing to compare it with yet).
    changesSince: () => Promise.resolve({ changes: [row("bad", 1)], cursor: "9" }),
    log: (line) => logs.push(JSON.parse(line)),
  });
  const subscription = service.subscribeToProgress(
    USER,
    (c) => delivered.push(`${c.row.series_id}@${c.row.chapter}@${c.source}`),
  );
  const broadcast = (r: ProgressRow) => ({
    type: "broadcast",
    event: "UPDATE",
    payload: { operation: "UPDATE", record: r },
  });
  try {
    const joined = await channel(1);
    joined.state!("SUBSCRIBED");
    await waitFor("live", () => subscription.status === "live");
    // realtime-js hands the channel's binding a broadcast whose row compareRows throws for (the second
    // version of "bad"), then one of another series.
    joined.broadcast!(broadcast(row("bad", 2)));
    joined.broadcast!(broadcast(row("good", 3)));
    assert.deepEqual(delivered, ["bad@1@catchup", "good@3@realtime"]);
    assert.equal(service.stats().invalid, 1);
    const invalid = logs.filter((l) => l.event === "invalid_row");
    assert.deepEqual(
      invalid.map((l) => [l.level, l.by, l.series_id, l.source, l.error]),
      [["error", "compareRows", "bad", "realtime", "cannot order"]],
    );
    assert.deepEqual(logs.filter((l) => l.event === "broadcast_failed"), []);
    assert.equal(subscription.status, "live");
    assert.equal(service.stats().joinAttempts, 1);
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});
