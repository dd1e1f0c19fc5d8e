// The changes cursor a subscription has been given everything before (ProgressSubscription.cursor and
// onCursor), the value an app persists and gives back as initialCursor: it starts at initialCursor,
// moves with each answered page once that page's rows reached the handler, never with a broadcast,
// a failed read or one answered "behind"; frozen at unsubscribe (another subscription's link reads
// on), and never past rows a handler that unsubscribed mid-page did not get. subscribeToProgress
// refuses an initialCursor that is not the progress API's (a TypeError naming it). Against the
// stand-in client, with changesSince answered by hand.

import assert from "node:assert/strict";
import { subscribeToProgress } from "../../../shared/progress/api.ts";
import {
  type ChangesPage,
  type ProgressChange,
  RealtimeService,
  type RealtimeServiceOptions,
} from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { type PendingCall, USER, version } from "./handAnsweredService.ts";

/**
 * A service on the stand-in client whose changesSince calls wait to be answered by hand, recording
 * the cursor each was asked with; no read but the ones a test makes (no join grace, safety read or
 * heartbeat watch).
 */
function cursorService(options: Partial<RealtimeServiceOptions> = {}) {
  const fake = fakeClient();
  const calls: (PendingCall & { cursor: unknown; userId: string })[] = [];
  const lines: Record<string, unknown>[] = [];
  const service = new RealtimeService(fake.client, {
    changesSince: (cursor, { userId }) =>
      new Promise((resolve, reject) => calls.push({ cursor, userId, resolve, reject })),
    accessToken: "T1",
    requestTimeoutMs: 60_000,
    joinGraceMs: Infinity,
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    backoff: { initialMs: 60_000, maxMs: 60_000 },
    pollIntervalMs: 600_000,
    log: (line) => lines.push(JSON.parse(line)),
    ...options,
  });
  const end = async () => {
    for (const call of calls) call.resolve({ changes: [], next_cursor: "999", has_more: false });
    await service.close();
  };
  return { service, channel: fake.channel, calls, lines, end };
}

const page = (rows: unknown[], next_cursor: string, has_more = false): ChangesPage => ({
  changes: rows,
  next_cursor,
  has_more,
});

const OTHER = "00000000-0000-4000-8000-0000000000c2";
const THIRD = "00000000-0000-4000-8000-0000000000c3";

/** A version of `series` (chapter `chapter`, written at `xid`), of USER; `deleted`: as the API reports a hard delete. */
const row = (series: string, chapter: number, xid: string, deleted = false) => ({
  ...version(chapter),
  series_id: series,
  change_xid: xid,
  ...(deleted ? { deleted: true } : {}),
});

const said = (change: ProgressChange) => `${change.kind} ${change.row.series_id} ${change.row.chapter}`;

Deno.test("cursor: starts at initialCursor, moves with each answered page after its rows reached the handler (onCursor before onRead), never with a broadcast", async () => {
  const { service, channel, calls, end } = cursorService({ initialCursor: "100" });
  const events: string[] = [];
  const sub = service.subscribeToProgress(USER, (change) => events.push(`row ${change.row.chapter}`));
  sub.onCursor((cursor) => events.push(`cursor ${cursor}`));
  sub.onRead((outcome) => events.push(`read ${outcome}`));
  try {
    assert.equal(sub.cursor, "100", "before any read: initialCursor");
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    assert.equal(calls[0].cursor, "100", "the catch-up reads from initialCursor");

    // A first page, more to come: the cursor moves to it once its rows were handed to the handler.
    calls[0].resolve(page([version(1), version(2)], "102:series-1", true));
    await waitFor("the second page asked", () => calls.length === 2);
    assert.equal(calls[1].cursor, "102:series-1");
    assert.equal(sub.cursor, "102:series-1");
    assert.deepEqual(events, ["row 1", "row 2", "cursor 102:series-1"]);

    calls[1].resolve(page([version(3)], "104"));
    await waitFor("the catch-up's end", () => events.includes("read done"));
    assert.deepEqual(events.slice(3), ["row 3", "cursor 104", "read done"]);
    assert.equal(sub.cursor, "104");
    await waitFor("live", () => sub.status === "live");

    // A broadcast reaches the handler but moves no cursor: its transaction id is no safe cursor (an
    // older transaction may still commit below it), and only a read confirms what lies before.
    const change = service.handleProgressUpdate({
      operation: "UPDATE",
      record: version(5),
      old_record: null,
    });
    assert.ok(change, "the broadcast was delivered");
    assert.equal(sub.cursor, "104");
    assert.deepEqual(events.slice(6), ["row 5"]);

    // A read answered with the cursor it was asked with (nothing newer): no onCursor.
    const read = sub.syncNow();
    await waitFor("the read", () => calls.length === 3);
    assert.equal(calls[2].cursor, "104");
    calls[2].resolve(page([], "104"));
    assert.equal(await read, "done");
    assert.deepEqual(events.slice(7), ["read done"]);
    assert.equal(sub.cursor, "104");
  } finally {
    await sub.unsubscribe();
    await end();
  }
  assert.equal(sub.cursor, "104", "kept after unsubscribe, to be persisted then");
});

Deno.test("cursor: a failed read and one answered behind (its cursor held by a long transaction) leave it where it was; without initialCursor it starts at null", async () => {
  const { service, channel, calls, end } = cursorService({ pollIntervalMs: 20 });
  const heard: unknown[] = [];
  const reads: string[] = [];
  const sub = service.subscribeToProgress(USER, () => {});
  sub.onCursor((cursor) => heard.push(cursor));
  sub.onRead((outcome) => reads.push(outcome));
  try {
    assert.equal(sub.cursor, null);
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    assert.equal(calls[0].cursor, null);
    calls[0].reject(new Error("503"));
    await waitFor("the catch-up failed", () => reads.length === 1);
    assert.equal(sub.cursor, null);

    // Made again (after the polls' backoff, held at 20 ms here): a page with more to come, then the
    // next answered with the cursor it was sent (has_more: a long transaction holds the horizon).
    await waitFor("the catch-up again", () => calls.length === 2, { timeoutMs: 20_000 });
    calls[1].resolve(page([version(1)], "101", true));
    await waitFor("the next page", () => calls.length === 3);
    calls[2].resolve(page([], "101", true));
    await waitFor("behind", () => reads.length === 2);
    assert.deepEqual(reads, ["failed", "behind"]);
    assert.deepEqual(heard, ["101"], "heard once, for the page that moved it");
    assert.equal(sub.cursor, "101");
  } finally {
    await sub.unsubscribe();
    await end();
  }
});

Deno.test("cursor: frozen at unsubscribe while another subscription's link reads on; onCursor listeners counted, dropped at unsubscribe, one that throws is logged and the rest still hear", async () => {
  const { service, channel, calls, lines, end } = cursorService({ initialCursor: "100" });
  const first = service.subscribeToProgress(USER, () => {});
  const second = service.subscribeToProgress(USER, () => {});
  const heard: string[] = [];
  first.onCursor(() => {
    throw new Error("storage full");
  });
  first.onCursor((cursor) => heard.push(`first ${cursor}`));
  const offSecond = second.onCursor((cursor) => heard.push(`second ${cursor}`));
  try {
    assert.equal(service.stats().statusListeners, 3);
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve(page([version(1)], "101"));
    await waitFor("live", () => first.status === "live");
    assert.deepEqual(heard, ["first 101", "second 101"]);
    const failures = lines.filter((l) => l.event === "cursor_listener_failed");
    assert.equal(failures.length, 1);
    assert.match(String(failures[0].error), /storage full/);

    await second.unsubscribe();
    assert.equal(service.stats().statusListeners, 2, "the second's listener went with it");
    offSecond(); // removing it again is harmless
    // The link reads on for the first: the second keeps the cursor it had been given everything before.
    const read = first.syncNow();
    await waitFor("the read", () => calls.length === 2);
    calls[1].resolve(page([version(2)], "102"));
    assert.equal(await read, "done");
    assert.equal(first.cursor, "102");
    assert.equal(second.cursor, "101", "the second was given nothing past 101");
    assert.deepEqual(heard, ["first 101", "second 101", "first 102"]);
    second.onCursor(() => {});
    assert.equal(service.stats().statusListeners, 2, "none added once it is gone");
  } finally {
    await first.unsubscribe();
    await end();
  }
});

Deno.test("cursor: a handler that unsubscribes mid-page leaves the cursor before the rows it was not given", async () => {
  const { service, channel, calls, end } = cursorService({ initialCursor: "100" });
  const got: number[] = [];
  const sub = service.subscribeToProgress(USER, (change) => {
    got.push(change.row.chapter);
    void sub.unsubscribe(); // the screen closes on the first row
  });
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve(page([version(1), version(2)], "102"));
    await waitFor("the link closed", () => service.stats().links === 0);
    assert.deepEqual(got, [1]);
    assert.equal(sub.cursor, "100", "not past chapter 2, which it never got");
  } finally {
    await end();
  }
});

Deno.test('cursor: subscribeToProgress refuses an initialCursor that is not a changes cursor (a TypeError naming it), on a first and a later call; null, "" and the API\'s cursors are taken', async () => {
  const refused: unknown[] = [
    42,
    {},
    ["1"],
    true,
    "abc",
    "c1",
    "1.2",
    "12:",
    "0123ABCD.12",
    " 12",
    "12 ",
    // User tags: 8 lower-case hex digits after a "u", after the cluster tag, before the xid.
    "u0123abc.12",
    "u0123ABCD.12",
    "0123abcd.0123abcd.12",
    "u0123abcd.0123abcd.12",
    "0123abcd.u89abcdef",
    "0123abcd.u89abcdef.",
  ];
  const taken: unknown[] = [
    undefined,
    null,
    "",
    "12",
    "1234567890123456789",
    "0123abcd.12",
    "0123abcd.12:series-1",
    "12:a.b_c:d-e",
    // Cursors in the form migration …_changes_cursor_names_user.sql handed out (still read by the API).
    "u89abcdef.12",
    "0123abcd.u89abcdef.12",
    "0123abcd.u89abcdef.12:series-1",
  ];
  for (const initialCursor of refused) {
    const { client } = fakeClient();
    assert.throws(
      () => subscribeToProgress(client, USER, () => {}, { log: () => {}, initialCursor }),
      (error: unknown) =>
        error instanceof TypeError &&
        error.message.startsWith(
          "subscribeToProgress option initialCursor must be a next_cursor of GET /progress/changes",
        ),
      `${JSON.stringify(initialCursor)} refused`,
    );
    assert.equal(client.getChannels().length, 0, "nothing subscribed");
  }
  const { client } = fakeClient();
  const first = subscribeToProgress(client, USER, () => {}, { log: () => {}, initialCursor: "7" });
  try {
    // A later call on the client: refused as the first would be, not as "not the shared service's".
    assert.throws(
      () => subscribeToProgress(client, USER, () => {}, { log: () => {}, initialCursor: "abc" }),
      TypeError,
    );
    assert.equal(first.cursor, "7");
  } finally {
    await first.unsubscribe();
  }
  for (const initialCursor of taken) {
    const { client } = fakeClient();
    const sub = subscribeToProgress(client, USER, () => {}, { log: () => {}, initialCursor });
    assert.equal(sub.cursor, initialCursor ?? null);
    await sub.unsubscribe();
  }
  // RealtimeService itself takes any cursor its changesSince does (opaque to it).
  const { service, end } = cursorService({ initialCursor: { page: 3 } });
  const sub = service.subscribeToProgress(USER, () => {});
  assert.deepEqual(sub.cursor, { page: 3 });
  await sub.unsubscribe();
  await end();
});

Deno.test("cursor: one user's initialCursor is not another's: the service's option starts the first subscribed user's link only (another user's reads from the beginning, logged initial_cursor_not_applied), and a subscription's own initialCursor starts its user's link", async () => {
  const { service, channel, calls, lines, end } = cursorService({ initialCursor: "100" });
  const a = service.subscribeToProgress(USER, () => {});
  const b = service.subscribeToProgress(OTHER, () => {});
  const c = service.subscribeToProgress(THIRD, () => {}, { initialCursor: "50" });
  const a2 = service.subscribeToProgress(USER, () => {}); // the same user: the option is theirs
  try {
    assert.equal(a.cursor, "100");
    assert.equal(b.cursor, null, "another user's link does not start from the first user's cursor");
    assert.equal(c.cursor, "50");
    assert.equal(a2.cursor, "100");
    const warned = lines.filter((l) => l.event === "initial_cursor_not_applied");
    assert.deepEqual(warned.map((l) => [l.level, l.channel]), [["warn", `progress:${OTHER}`]]);
    // The stand-in's channel(n) is its newest once n are made: join the three links' channels.
    await channel(3);
    const channels = service.client.getChannels() as unknown as { state?: (state: string) => void }[];
    await waitFor("the three channels subscribed", () => channels.every((c) => c.state));
    for (const joined of channels) joined.state!("SUBSCRIBED");
    await waitFor("the three links' catch-ups", () => calls.length === 3);
    const readFrom = new Map(calls.map((call) => [call.userId, call.cursor]));
    assert.deepEqual(readFrom, new Map<string, unknown>([[USER, "100"], [OTHER, null], [THIRD, "50"]]));
  } finally {
    for (const sub of [a, b, c, a2]) await sub.unsubscribe();
    await end();
  }
});

Deno.test("cursor: subscribeToProgress's initialCursor is each call's (its user's), not the shared service's: a later call for another user without one starts from the beginning, one with its own is taken", async () => {
  const { client } = fakeClient();
  const options = { log: () => {}, joinGraceMs: Infinity };
  const a = subscribeToProgress(client, USER, () => {}, { ...options, initialCursor: "0123abcd.4242" });
  const b = subscribeToProgress(client, OTHER, () => {});
  let c: ReturnType<typeof subscribeToProgress> | undefined;
  try {
    assert.equal(a.service, b.service);
    assert.equal(a.cursor, "0123abcd.4242");
    assert.equal(b.cursor, null, "not the first call's user's cursor");
    c = subscribeToProgress(client, THIRD, () => {}, { initialCursor: "0123abcd.4343" });
    assert.equal(c.service, a.service);
    assert.equal(c.cursor, "0123abcd.4343");
  } finally {
    for (const sub of [a, b, c]) await sub?.unsubscribe();
  }
});

Deno.test("cursor: a later subscription from the cursor the link started from is handed what the link handed its subscriptions, deletions as deletions, and has the link's cursor (no read made for it)", async () => {
  const { service, channel, calls, end } = cursorService({ initialCursor: "100" });
  const first: string[] = [];
  const sub1 = service.subscribeToProgress(USER, (change) => first.push(said(change)));
  const second: string[] = [];
  let sub2: ReturnType<typeof service.subscribeToProgress> | undefined;
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve(page([row("gone", 1, "101", true), row("kept", 2, "102")], "105"));
    await waitFor("live", () => sub1.status === "live");
    assert.deepEqual(first, ["delete gone 1", "upsert kept 2"]);

    sub2 = service.subscribeToProgress(USER, (change) => second.push(said(change)));
    assert.deepEqual(second.sort(), ["delete gone 1", "upsert kept 2"], "the deletion too");
    assert.equal(sub2.cursor, "105");
    assert.equal(sub2.status, "live");
    assert.equal(calls.length, 1, "nothing read for it");
  } finally {
    await sub2?.unsubscribe();
    await sub1.unsubscribe();
    await end();
  }
});

Deno.test("cursor: a later subscription from an older cursor reads the changes after it for itself: every change after it, deletions too, each once and none older after a newer; connecting and its cursor its own until then; a failed read of it is made again; the first is handed nothing again", async () => {
  const { service, channel, calls, lines, end } = cursorService({ initialCursor: "100", pollIntervalMs: 20 });
  const first: string[] = [];
  const sub1 = service.subscribeToProgress(USER, (change) => first.push(said(change)));
  const second: string[] = [];
  const statuses: string[] = [];
  const cursors: unknown[] = [];
  let sub2: ReturnType<typeof service.subscribeToProgress> | undefined;
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve(page([row("kept", 2, "102")], "105"));
    await waitFor("live", () => sub1.status === "live");

    sub2 = service.subscribeToProgress(USER, (change) => second.push(said(change)), { initialCursor: "90" });
    sub2.onStatus((status) => statuses.push(status));
    sub2.onCursor((cursor) => cursors.push(cursor));
    assert.equal(sub2.cursor, "90");
    assert.equal(sub2.status, "connecting", "not live before it has read from its cursor");
    assert.equal(sub1.status, "live");
    assert.deepEqual(second, [], "the link's rows are not its catch-up");

    // Its own read is made, from its cursor (no read of the link: the link's pages are not its catch-up).
    await waitFor("its read", () => calls.length === 2);
    assert.equal(calls[1].cursor, "90");
    calls[1].reject(new Error("503"));
    // Made again by itself (the polls' backoff, 20 ms here), from its cursor.
    await waitFor("its read again", () => calls.length === 3, { timeoutMs: 20_000 });
    assert.equal(calls[2].cursor, "90");

    // Meanwhile a newer version of kept comes by broadcast: both are handed it.
    assert.ok(
      service.handleProgressUpdate({ operation: "UPDATE", record: row("kept", 3, "107"), old_record: null }),
    );
    assert.deepEqual(first, ["upsert kept 2", "upsert kept 3"]);
    assert.deepEqual(second, ["upsert kept 3"]);

    // Its read: a series written before the link's cursor, a deletion, then kept's older version.
    calls[2].resolve(page([row("old", 1, "92"), row("gone", 1, "96", true)], "96:gone", true));
    await waitFor("its second page asked", () => calls.length === 4);
    assert.equal(calls[3].cursor, "96:gone");
    assert.equal(sub2.cursor, "96:gone", "its own page moved its own cursor");
    assert.equal(sub2.status, "connecting");
    calls[3].resolve(page([row("kept", 2, "102")], "106"));
    await waitFor("its read's end", () => sub2!.status === "live");
    assert.deepEqual(second, ["upsert kept 3", "upsert old 1", "delete gone 1"], "kept 2 not after kept 3");
    assert.deepEqual(first, ["upsert kept 2", "upsert kept 3"], "nothing of its read");
    assert.equal(sub2.cursor, "106");
    assert.deepEqual(cursors, ["96:gone", "106"]);
    assert.deepEqual(statuses, ["live"]);
    assert.equal(sub1.cursor, "105", "the first's cursor is the link's");
    assert.equal(lines.filter((l) => l.event === "subscription_caught_up").length, 1);

    // From now on it follows the link: one read for both, both cursors move.
    const read = sub1.syncNow();
    await waitFor("the next read", () => calls.length === 5);
    assert.equal(calls[4].cursor, "105");
    calls[4].resolve(page([], "108"));
    assert.equal(await read, "done");
    assert.equal(calls.length, 5, "nothing read for it any more");
    assert.equal(sub1.cursor, "108");
    assert.equal(sub2.cursor, "108");
  } finally {
    await sub2?.unsubscribe();
    await sub1.unsubscribe();
    await end();
  }
});

Deno.test("cursor: a later subscription's own read that fails does not hold back the link: the first goes live, hears its read done, and the failed own read is made again by itself", async () => {
  const { service, channel, calls, lines, end } = cursorService({ initialCursor: "100", pollIntervalMs: 20 });
  const sub1 = service.subscribeToProgress(USER, () => {});
  const reads1: string[] = [];
  sub1.onRead((outcome) => reads1.push(outcome));
  const second: string[] = [];
  // Joins while the link connects: its own read comes with the link's catch-up.
  const sub2 = service.subscribeToProgress(USER, (change) => second.push(said(change)), {
    initialCursor: "90",
  });
  const reads2: string[] = [];
  sub2.onRead((outcome) => reads2.push(outcome));
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    assert.equal(calls[0].cursor, "100");
    calls[0].resolve(page([row("kept", 2, "102")], "105"));
    await waitFor("its own read", () => calls.length === 2);
    assert.equal(calls[1].cursor, "90");
    calls[1].reject(new Error("503 from its own read"));
    await waitFor("the first live", () => sub1.status === "live");
    await waitFor("its own read's end", () => reads2.length === 1);
    assert.deepEqual(reads1, ["done"], "the link's read ended done");
    assert.deepEqual(reads2, ["failed"], "its own read failed: not done for it");
    assert.equal(sub1.cursor, "105");
    assert.equal(sub2.status, "connecting");
    assert.equal(sub2.cursor, "90");
    assert.ok(lines.some((l) => l.event === "catchup_failed" && l.for === "subscription"));
    // Made again by itself (20-40 ms here): its own read only.
    await waitFor("its read again", () => calls.length === 3, { timeoutMs: 20_000 });
    assert.equal(calls[2].cursor, "90");
    calls[2].resolve(page([row("old", 1, "92")], "106"));
    await waitFor("it is live", () => sub2.status === "live");
    assert.deepEqual(second, ["upsert kept 2", "upsert old 1"]);
    assert.equal(sub1.status, "live");
    assert.deepEqual(reads2, ["failed", "done"]);
    assert.deepEqual(reads1, ["done"], "no read of the link made for it");
    // Answered behind (a long transaction holds its cursor): a syncNow() of it is not done either.
    const sub3 = service.subscribeToProgress(USER, () => {}, { initialCursor: "80" });
    let settled = false;
    const synced = sub3.syncNow().finally(() => settled = true);
    // Answer every call: the link's to the end, the third's own behind (held at its cursor).
    for (let answered = 3; !settled;) {
      await waitFor("a call, or the syncNow's end", () => settled || calls.length > answered);
      while (answered < calls.length) {
        const call = calls[answered++];
        call.resolve(call.cursor === "80" ? page([], "80", true) : page([], "105"));
      }
    }
    assert.equal(await synced, "behind");
    assert.equal(sub1.status, "live", "the first still live");
    await sub3.unsubscribe();
  } finally {
    await sub2.unsubscribe();
    await sub1.unsubscribe();
    await end();
  }
});

Deno.test("cursor: a subscription that unsubscribes while its own read is in flight lets that call go (aborted): the link's next read is not held by it", async () => {
  const { service, channel, calls, end } = cursorService({ initialCursor: "100", requestTimeoutMs: 600_000 });
  const signals: AbortSignal[] = [];
  const sub1 = service.subscribeToProgress(USER, () => {});
  let sub2: ReturnType<typeof service.subscribeToProgress> | undefined;
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve(page([], "105"));
    await waitFor("live", () => sub1.status === "live");
    const options = service.options;
    const changesSince = options.changesSince;
    options.changesSince = (cursor, context) => {
      signals.push(context.signal!);
      return changesSince(cursor, context);
    };
    sub2 = service.subscribeToProgress(USER, () => {}, { initialCursor: "90" });
    await waitFor("its own read", () => calls.length === 2);
    assert.equal(calls[1].cursor, "90");
    await sub2.unsubscribe(); // its read never answers
    assert.equal(signals[0].aborted, true, "its call is aborted");
    const read = sub1.syncNow();
    await waitFor("the first's read, not behind the one nobody waits for", () => calls.length === 3, {
      timeoutMs: 20_000,
    });
    assert.equal(calls[2].cursor, "105");
    calls[2].resolve(page([], "107"));
    assert.equal(await read, "done");
    assert.equal(sub1.cursor, "107");
  } finally {
    await sub2?.unsubscribe();
    await sub1.unsubscribe();
    await end();
  }
});

Deno.test("cursor: a subscription joining while another's own read is under way (the link still connecting) is read for in that round, not left connecting", async () => {
  const { service, channel, calls, end } = cursorService({ initialCursor: "100" });
  const sub1 = service.subscribeToProgress(USER, () => {});
  const sub2 = service.subscribeToProgress(USER, () => {}, { initialCursor: "90" });
  let sub3: ReturnType<typeof service.subscribeToProgress> | undefined;
  const third: string[] = [];
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve(page([], "105"));
    await waitFor("the second's own read", () => calls.length === 2);
    assert.equal(calls[1].cursor, "90");
    sub3 = service.subscribeToProgress(USER, (change) => third.push(said(change)), { initialCursor: "80" });
    assert.equal(sub3.status, "connecting");
    calls[1].resolve(page([], "105"));
    await waitFor("the third's own read", () => calls.length === 3, { timeoutMs: 20_000 });
    assert.equal(calls[2].cursor, "80");
    calls[2].resolve(page([row("old", 1, "85")], "105"));
    await waitFor("all live", () => [sub1, sub2, sub3!].every((s) => s.status === "live"));
    assert.deepEqual(third, ["upsert old 1"]);
  } finally {
    await sub3?.unsubscribe();
    await sub2.unsubscribe();
    await sub1.unsubscribe();
    await end();
  }
});

Deno.test("cursor: after its own read a subscription's cursor never goes back: the link's pages before where its own read ended are not passed on, the end of the link's next read to the end is", async () => {
  const { service, channel, calls, end } = cursorService({ initialCursor: "100" });
  const sub1 = service.subscribeToProgress(USER, () => {});
  let sub2: ReturnType<typeof service.subscribeToProgress> | undefined;
  const cursors: unknown[] = [];
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve(page([], "105"));
    await waitFor("live", () => sub1.status === "live");
    sub2 = service.subscribeToProgress(USER, () => {}, { initialCursor: "90" });
    sub2.onCursor((cursor) => cursors.push(cursor));
    await waitFor("its own read", () => calls.length === 2);
    // Written meanwhile: its own read ends past the link's cursor.
    calls[1].resolve(page([row("a", 1, "107")], "110"));
    await waitFor("it is live", () => sub2!.status === "live");
    assert.equal(sub2.cursor, "110");
    // The link's next read: a first page before 110, then the end.
    const read = sub1.syncNow();
    await waitFor("the link's next read", () => calls.length === 3);
    assert.equal(calls[2].cursor, "105");
    calls[2].resolve(page([row("a", 1, "107")], "107:a", true));
    await waitFor("its second page", () => calls.length === 4);
    assert.equal(sub1.cursor, "107:a");
    assert.equal(sub2.cursor, "110", "not back to the link's page");
    calls[3].resolve(page([], "112"));
    assert.equal(await read, "done");
    assert.equal(sub2.cursor, "112");
    assert.deepEqual(cursors, ["110", "112"]);
  } finally {
    await sub2?.unsubscribe();
    await sub1.unsubscribe();
    await end();
  }
});

Deno.test("cursor: a read whose pages the API started over more than once (the cursor a failed read of the system identifier hands out, after a restore's adoption or past timeline 1) logs cursor_started_over once, with the cursor sent at its first such page; the next read that starts over logs it again", async () => {
  const { service, channel, calls, lines, end } = cursorService({ initialCursor: "0badc0de.100" });
  const sub = service.subscribeToProgress(USER, () => {});
  const reads: string[] = [];
  sub.onRead((outcome) => reads.push(outcome));
  const startedOver = () =>
    lines.filter((line) => line.event === "cursor_started_over").map((line) => line.cursor);
  try {
    (await channel(1)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    // As reading_progress_changes answers it (checked in SQL): the first page from the cursor it could
    // not check, and the next from the cursor that page handed out, read as untagged after an adoption.
    calls[0].resolve({ ...page([version(1)], "d0267641.101:series-1", true), started_over: true });
    await waitFor("the second page asked", () => calls.length === 2);
    calls[1].resolve({ ...page([version(1)], "f17d5157.101:series-1", true), started_over: true });
    await waitFor("the third page asked", () => calls.length === 3);
    calls[2].resolve(page([version(2)], "f17d5157.102"));
    await waitFor("the catch-up's end", () => reads.includes("done"));
    assert.deepEqual(
      startedOver(),
      ["0badc0de.100"],
      "one line for the read, with the cursor sent at its first page that started over (was: one a page)",
    );

    // Another read that starts over is another line.
    const read = sub.syncNow();
    await waitFor("the read", () => calls.length === 4);
    calls[3].resolve({ ...page([version(1), version(2)], "f17d5157.102"), started_over: true });
    assert.equal(await read, "done");
    assert.deepEqual(startedOver(), ["0badc0de.100", "f17d5157.102"], "the next read's own line");
  } finally {
    await sub.unsubscribe();
    await end();
  }
});
