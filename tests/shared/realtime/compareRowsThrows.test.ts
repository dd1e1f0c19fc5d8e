// A compareRows that throws for a row during a read: the row is taken as invalid (skipped, counted,
// logged as invalid_row), as a row parseRow refuses is, and the read goes on; it used to fail the read,
// which then read the same page again and failed at it every time (the link offline for good).

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
    assert.equal(invalid[0].level, "warn");
    assert.equal(logs.some((l) => l.event === "catchup_failed"), false);
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});
