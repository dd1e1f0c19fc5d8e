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

/**
 * A service on the stand-in client whose compareRows throws for series "bad" (the others ordered by
 * updated_at), every read answered with the rows `changes` makes, at cursor "9"; what it logs is kept in
 * `logs`.
 */
function serviceThrowingForBad(changes: () => ProgressRow[]) {
  const { client, channel } = fakeClient();
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(client, {
    pollIntervalMs: 60_000,
    parseRow: (value) => value as ProgressRow,
    compareRows: (a, b) => {
      if (a.series_id === "bad") throw new Error("cannot order");
      return String(a.updated_at).localeCompare(String(b.updated_at));
    },
    changesSince: () => Promise.resolve({ changes: changes(), cursor: "9" }),
    log: (line) => logs.push(JSON.parse(line)),
  });
  return { channel, logs, service };
}

Deno.test("compareRows throws: the row is skipped as invalid (logged), the read goes on and the link goes live", async () => {
  // Two versions of "bad" (the second is compared with the first), then "good".
  const { channel, logs, service } = serviceThrowingForBad(
    () => [row("bad", 1), row("bad", 2), row("good", 3)],
  );
  const delivered: string[] = [];
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
  // The catch-up brings one version of "bad" (nothing to compare it with yet).
  const { channel, logs, service } = serviceThrowingForBad(() => [row("bad", 1)]);
  const delivered: string[] = [];
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

Deno.test("compareRows throws in one subscription's own merge state: that row is refused for it alone, the others (after it too) are handed it, counted once as applied", async () => {
  const { client, channel } = fakeClient();
  const logs: Record<string, unknown>[] = [];
  const version = (chapter: number) => ({ ...row("bad", chapter), change_xid: String(100 + chapter) });
  // The link's reads: its catch-up (from 100) finds nothing, its next read (from 105) bad@3. The
  // newcomer's own read (from 90) brings bad@1, which only its own merge state then holds.
  const pages: Record<string, { changes: unknown[]; next_cursor: string; has_more: boolean }> = {
    "100": { changes: [], next_cursor: "105", has_more: false },
    "90": { changes: [version(1)], next_cursor: "106", has_more: false },
    "105": { changes: [version(3)], next_cursor: "107", has_more: false },
  };
  const service = new RealtimeService(client, {
    accessToken: "T1",
    pollIntervalMs: 600_000,
    livePollIntervalMs: 0,
    joinGraceMs: Infinity,
    heartbeatReplyTimeoutMs: 0,
    parseRow: (value) => value as ProgressRow,
    // Bad@1 cannot be ordered against any other version: only a merge state that holds it throws.
    compareRows: (a, b) => {
      if (a.chapter === 1 || b.chapter === 1) throw new Error("cannot order");
      return String(a.updated_at).localeCompare(String(b.updated_at));
    },
    changesSince: (cursor) => Promise.resolve(pages[String(cursor)]),
    log: (line) => logs.push(JSON.parse(line)),
  });
  const delivered: Record<string, string[]> = { first: [], newcomer: [], third: [] };
  const handler = (name: string) => (c: { row: ProgressRow; source: string }) =>
    delivered[name].push(`${c.row.chapter}@${c.source}`);
  const first = service.subscribeToProgress(USER, handler("first"), { initialCursor: "100" });
  try {
    const joined = await channel(1);
    joined.state!("SUBSCRIBED");
    await waitFor("live", () => first.status === "live");
    const newcomer = service.subscribeToProgress(USER, handler("newcomer"), { initialCursor: "90" });
    await waitFor("the newcomer's own read", () => newcomer.status === "live");
    // After the newcomer in the link's subscriptions: handed each change after it.
    service.subscribeToProgress(USER, handler("third"), { initialCursor: "100" });
    assert.deepEqual(delivered, { first: [], newcomer: ["1@catchup"], third: [] });

    joined.broadcast!({
      type: "broadcast",
      event: "UPDATE",
      payload: { operation: "UPDATE", record: version(2) },
    });
    assert.equal(await first.syncNow(), "done"); // the link's read brings bad@3
    assert.deepEqual(delivered, {
      first: ["2@realtime", "3@poll"],
      newcomer: ["1@catchup"],
      third: ["2@realtime", "3@poll"],
    });
    const { applied, invalid } = service.stats();
    assert.deepEqual({ applied, invalid }, { applied: 2, invalid: 0 });
    assert.deepEqual(
      logs.filter((l) => l.event === "invalid_row").map((l) => [l.level, l.by, l.for, l.source, l.series_id]),
      [
        ["error", "compareRows", "subscription", "realtime", "bad"],
        ["error", "compareRows", "subscription", "poll", "bad"],
      ],
    );
    assert.deepEqual(logs.filter((l) => l.event === "broadcast_failed" || l.event === "poll_failed"), []);
  } finally {
    await service.close();
  }
});
