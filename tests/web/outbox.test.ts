// The web app's outbox (examples/web/lib/client/outbox.ts) against the real progress function over
// HTTP: pending writes go out in batches (one request for a device back from offline), every answer
// settles its write (won, or lost with a notice), a write the API refuses is dropped alone while the
// rest of its batch is still saved, and a network failure keeps everything for the next try, which
// the outbox's schedule (lib/client/outboxSchedule.ts) makes no sooner than a Retry-After asks.

import assert from "node:assert/strict";
import { createClient, type SupabaseClient } from "@supabase/supabase-js";
import {
  createProgressApi,
  NetworkError,
  ProgressApiError,
  ServiceUnavailableError,
  ValidationError,
} from "@shared/progress/api.ts";
import { retryAfterMsOf } from "@shared/http/retryAfter.ts";
import { defaultCompareRows } from "@shared/realtime/progressContract.ts";
import {
  flushOutbox,
  type FlushResult,
  type OutboxOptions,
  type OutboxTransport,
  sendable,
} from "../../examples/web/lib/client/outbox.ts";
import { OutboxSchedule } from "../../examples/web/lib/client/outboxSchedule.ts";
import { SyncStore } from "../../examples/web/lib/client/syncStore.ts";
import { datedWrite } from "../../examples/web/lib/client/syncSession.ts";
import { REDATE_SLACK_MS, ServerClock } from "@shared/progress/serverClock.ts";
import { isSignedOut, SignedOutError } from "../../examples/web/lib/client/tokenKeeper.ts";
import {
  isNetworkFailure,
  isRetryable,
  isTransient,
  splitMayHelp,
} from "../../examples/web/lib/progressClient.ts";
import { createTestUser, testEnv } from "../support/env.ts";
import { closedPort, seriesId, serveLocal } from "../functions/support.ts";
import { memoryStorage, pendingWrite, virtualTimers } from "./support.ts";

const noSanitize = { sanitizeOps: false, sanitizeResources: false } as const;

/** A client as the web app builds it, counting the function requests by path. */
function countingClient(token: string, url = testEnv().url): { client: SupabaseClient; requests: string[] } {
  const requests: string[] = [];
  const client = createClient(url, testEnv().anonKey, {
    accessToken: () => Promise.resolve(token),
    global: {
      fetch: (input: RequestInfo | URL, init?: RequestInit) => {
        const href = input instanceof Request ? input.url : String(input);
        if (href.includes("/functions/v1/")) requests.push(new URL(href).pathname);
        return fetch(input, init);
      },
    },
  });
  return { client, requests };
}

/** An outbox write of this device ("web-outbox" unless said otherwise). */
/** Sends `req` on to `upstream` (the stack's API) as it came: the pass-through of the tests' proxies. */
async function forwardTo(upstream: string, req: Request): Promise<Response> {
  const url = new URL(req.url);
  return await fetch(`${upstream}${url.pathname}${url.search}`, {
    method: req.method,
    headers: req.headers,
    body: req.method === "GET" ? undefined : await req.arrayBuffer(),
  });
}

const pending = (series: string, at: number, chapter: number, device = "web-outbox") =>
  pendingWrite(series, at, device, chapter);

/** A signed-in device: its API over HTTP (requests counted) and an empty SyncStore. */
async function device(url?: string) {
  const user = await createTestUser();
  const { client, requests } = countingClient(user.accessToken, url);
  const api = createProgressApi(client, url ? { retry: { attempts: 1 } } : {});
  return { user, client, requests, api, store: new SyncStore(user.id, defaultCompareRows) };
}

const options = (extra: Partial<OutboxOptions> = {}): OutboxOptions => ({
  isRetryable,
  isSignedOut: () => false,
  refreshToken: () => Promise.resolve(),
  isDisposed: () => false,
  ...extra,
});

/**
 * Two tabs of one browser on one storage: tab B queues a page turn, tab A takes it over, turns the next
 * page (a higher number) and sends it. Tab B still holds its earlier page turn, not having taken over what
 * tab A did.
 */
async function tabsWithLaterPageTurnSent(userId: string, api: OutboxTransport, series: string) {
  const storage = memoryStorage();
  const tab = () => {
    const store = new SyncStore(userId, defaultCompareRows);
    store.attachStorage(storage);
    return store;
  };
  const tabA = tab();
  const tabB = tab();
  const now = Date.now();
  tabB.addPending(pending(series, now - 2_000, 4, "e-reader"));
  tabA.reloadOutbox();
  tabA.addPending(pending(series, now - 1_000, 5, "e-reader"));
  assert.deepEqual(await flushOutbox(tabA, api, options()), { outcome: "done" });
  return { storage, tabA, tabB, now };
}

/**
 * A saved write dated far ahead (edited, a clock years ahead; the server stores it at its now()) queued in
 * `store`, for the test's transport to hold on its way: it resolves `onItsWay` when it holds the write and
 * waits for `release`. `clock` dates the page turn made meanwhile: made 10 s before the held write reaches
 * the server, it reads 10 s back (the saved offset in force), instead of the test holding the request for
 * 10 s.
 */
function farAheadWriteToHold(store: SyncStore, series: string) {
  const clock = new ServerClock({
    deviceNow: () => Date.now() - 10_000,
    monotonicNow: () => performance.now(),
    offsetMs: 0,
  });
  store.addPending(pending(series, Date.parse("2999-01-01T00:00:00.000Z"), 4, "e-reader"));
  const onItsWay = Promise.withResolvers<void>();
  const release = Promise.withResolvers<void>();
  return { clock, onItsWay, release };
}

Deno.test(
  { name: "outbox: a device back from offline sends its edits in one request", ...noSanitize },
  async () => {
    const { client, requests, api, store } = await device();
    const now = Date.now();
    // Another device already saved a newer position for one of the series.
    const contested = seriesId("contested");
    await api.updateProgress({ ...pending(contested, now, 9, "phone") });
    requests.length = 0;

    const series = Array.from({ length: 6 }, (_, i) => seriesId(`offline-${i}`));
    series.forEach((s, i) => store.addPending(pending(s, now - 60_000 + i, i + 1)));
    store.addPending(pending(contested, now - 60_000, 2));

    assert.deepEqual(await flushOutbox(store, api, options()), { outcome: "done" });
    assert.deepEqual(requests, ["/functions/v1/progress/batch"]);
    const view = store.getSnapshot();
    assert.equal(view.pendingCount, 0);
    for (const [i, s] of series.entries()) assert.equal(view.bySeries.get(s)?.chapter, i + 1);
    // The older offline edit lost to the phone's: the device shows the winner and says so.
    assert.equal(view.bySeries.get(contested)?.chapter, 9);
    assert.equal(view.notices.get(contested)?.winner.device_id, "phone");
    // What the server has is what the device shows.
    for (const s of series) assert.equal((await api.getProgress(s))?.chapter, view.bySeries.get(s)?.chapter);
    await client.realtime.disconnect();
  },
);

Deno.test({ name: "outbox: more edits than one batch holds go out in several", ...noSanitize }, async () => {
  const { client, requests, api, store } = await device();
  for (let i = 0; i < 5; i++) store.addPending(pending(seriesId(`many-${i}`), Date.now() - 1_000 + i, i));
  await flushOutbox(store, api, options({ batchSize: 2 }));
  assert.deepEqual(requests, Array(3).fill("/functions/v1/progress/batch"));
  assert.equal(store.getSnapshot().pendingCount, 0);
  await client.realtime.disconnect();
});

Deno.test(
  { name: "outbox: a refused write is dropped alone; the rest of its batch is saved", ...noSanitize },
  async () => {
    const { client, requests, api, store } = await device();
    const good = [seriesId("good-a"), seriesId("good-b")];
    const bad = seriesId("bad");
    store.addPending(pending(good[0], Date.now() - 2_000, 3));
    store.addPending({ ...pending(bad, Date.now() - 1_500, 4), percentage: 7 }); // percentage is 0..1
    store.addPending(pending(good[1], Date.now() - 1_000, 5));

    await flushOutbox(store, api, options());
    const view = store.getSnapshot();
    assert.equal(view.pendingCount, 0);
    assert.equal((await api.getProgress(good[0]))?.chapter, 3);
    assert.equal((await api.getProgress(good[1]))?.chapter, 5);
    assert.equal(await api.getProgress(bad), null);
    assert.match(view.lastError ?? "", new RegExp(`Could not save ${bad}`));
    // The batch was refused, then the writes went one by one (the bad one is refused before sending).
    assert.deepEqual(requests.filter((p) => p.endsWith("/progress")).length, 2);
    await client.realtime.disconnect();
  },
);

Deno.test({ name: "outbox: no network keeps every write for the next try", ...noSanitize }, async () => {
  const { client, api, store } = await device(`http://127.0.0.1:${closedPort()}`);
  store.addPending(pending(seriesId("later-a"), Date.now() - 2_000, 1));
  store.addPending(pending(seriesId("later-b"), Date.now() - 1_000, 2));
  const result = await flushOutbox(store, api, options());
  assert.ok(
    result.outcome === "failed" && result.error instanceof NetworkError && isNetworkFailure(result.error),
    "the failure is answered, for the caller to schedule the next try",
  );
  assert.equal(store.getSnapshot().pendingCount, 2);
  assert.equal(store.getSnapshot().lastError, null);
  await client.realtime.disconnect();
});

Deno.test({ name: "outbox: signed out, it stops and keeps every write", ...noSanitize }, async () => {
  const { client, api, store } = await device(`http://127.0.0.1:${closedPort()}`);
  store.addPending(pending(seriesId("signed-out"), Date.now() - 1_000, 1));
  const result = await flushOutbox(store, api, options({ isSignedOut: () => true }));
  assert.deepEqual(result, { outcome: "signed out" });
  assert.equal(store.getSnapshot().pendingCount, 1);
  await client.realtime.disconnect();
});

Deno.test(
  {
    name:
      "outbox: signed out while sending (the token callback throws through supabase-js) answers 'signed out', not a network failure",
    ...noSanitize,
  },
  async () => {
    // The web app's client asks TokenKeeper for the token on every request (userClient); once the
    // session is gone that throws SignedOutError, which reaches flushOutbox wrapped: supabase-js
    // makes it a FunctionsFetchError, the API client a NetworkError with it as the cause.
    const client = createClient(`http://127.0.0.1:${closedPort()}`, testEnv().anonKey, {
      accessToken: () => Promise.reject(new SignedOutError("signed out")),
    });
    const api = createProgressApi(client, { retry: { attempts: 1 } });
    const store = new SyncStore("signed-out-user", defaultCompareRows);
    store.addPending(pending(seriesId("signed-out-wrapped"), Date.now() - 1_000, 1));
    const result = await flushOutbox(store, api, options({ isSignedOut })); // as SyncProvider passes it
    assert.deepEqual(
      result,
      { outcome: "signed out" },
      "the schedule's 'signed out', not a failure of the API",
    );
    assert.equal(store.getSnapshot().pendingCount, 1);
    await client.realtime.disconnect();
  },
);

Deno.test("outbox: a re-dated write goes no later than it was dated and never before the version the reader was looking at; what re-dates it is not sent", () => {
  const HOUR = 3_600_000;
  const T0 = 1_800_000_000_000;
  const store = new SyncStore("reader", defaultCompareRows);
  // The reader looks at the phone's version of T0, on a device an hour ahead with no answer yet.
  store.applyServerRow(
    {
      ...pending("book", T0, 3, "phone"),
      user_id: "reader",
      synced_at: new Date(T0).toISOString(),
      change_xid: "1",
      created_at: new Date(T0).toISOString(),
    } as unknown as Parameters<SyncStore["applyServerRow"]>[0],
  );
  const t = { device: T0 + HOUR + 60_000, monotonic: 0 };
  const clock = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const position = (chapter: number) => ({ chapter, page: 1, percentage: 0.5 });
  const first = datedWrite(store, clock, "book", position(4), "e-reader");
  store.addPending(first);
  t.device += 60_000;
  t.monotonic += 60_000;
  const second = datedWrite(store, clock, "book", position(5), "e-reader");
  store.addPending(second);
  assert.equal(
    second.unmeasured?.afterMs,
    T0 + 1,
    "after the phone's version, not after the write it replaces",
  );

  // The answers say the device is 1 h 10 min ahead: re-dated, the page turns would lie before the
  // phone's version the reader turned them after.
  clock.observe({ serverMs: t.device - HOUR - 10 * 60_000, sentMs: t.device, receivedMs: t.device });
  const sent = sendable(second, clock);
  assert.equal(sent.updated_at, new Date(T0 + 1).toISOString());
  assert.equal("unmeasured" in sent, false);
  // Answers that say the device is behind move nothing later than it was dated.
  const behind = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  behind.observe({ serverMs: t.device + HOUR, sentMs: t.device, receivedMs: t.device });
  assert.equal(
    sendable({ ...second, unmeasured: { ...second.unmeasured!, clock: "another visit" } }, behind).updated_at,
    second.updated_at,
  );
  // A write saved before (no `unmeasured`) or a reading that is none goes as it was dated.
  assert.equal(
    sendable({ ...second, unmeasured: { ...second.unmeasured!, deviceMs: Number.NaN } }, clock).updated_at,
    second.updated_at,
  );
});

/** `api` as a transport that keeps every write request's answers, in order: [chapter, won]. */
function answersKept(api: OutboxTransport): { answers: [number, boolean][]; counted: OutboxTransport } {
  const answers: [number, boolean][] = [];
  const counted: OutboxTransport = {
    updateProgress: async (write) => {
      const result = await api.updateProgress(write);
      answers.push([write.chapter, result.won]);
      return result;
    },
    updateProgressBatch: async (writes) => {
      const results = await api.updateProgressBatch(writes);
      results.forEach((result, i) => answers.push([writes[i].chapter, result.won]));
      return results;
    },
  };
  return { answers, counted };
}

/** A transport that takes every write as sent (won), keeping what it was sent. */
function takingTransport(sent: { updated_at: string; series_id: string }[]): OutboxTransport {
  const take = (write: Parameters<OutboxTransport["updateProgress"]>[0]) => {
    sent.push(write);
    const progress = {
      ...write,
      user_id: "reader",
      synced_at: write.updated_at,
      change_xid: "1",
      created_at: write.updated_at,
    };
    return { won: true, progress } as unknown as Awaited<ReturnType<OutboxTransport["updateProgress"]>>;
  };
  return {
    updateProgress: (write) => Promise.resolve(take(write)),
    updateProgressBatch: (writes) => Promise.resolve(writes.map(take)),
  };
}

/**
 * An hour ahead, measured; asleep offline: a device whose clock is an hour ahead of the server's, that
 * hour measured by an answer, then eight hours on with no answer since (`t`: the device's clocks, the
 * test's to move), and an empty outbox; with `datesSentBy`, the outbox judges a write by the date it is
 * sent with, as the session does.
 */
function asleepAnHourAhead(options: { datesSentBy?: boolean } = {}) {
  const HOUR = 3_600_000;
  const t = { device: 1_800_000_000_000 + HOUR, monotonic: 0 };
  const clock = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  clock.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  t.device += 8 * HOUR;
  const store = new SyncStore("reader", defaultCompareRows);
  if (options.datesSentBy) store.datesSentBy((write) => sendable(write, clock).updated_at);
  return { t, clock, store };
}

Deno.test("outbox: a stored reading that does not agree with its write (edited, corrupted) is not re-dated and makes no read; the write goes as dated", async () => {
  const HOUR = 3_600_000;
  // An hour ahead, measured; asleep offline: two page turns dated an hour late keep their readings.
  const { t, clock, store } = asleepAnHourAhead();
  const position = (chapter: number) => ({ chapter, page: 1, percentage: 0.5 });
  const kept = datedWrite(store, clock, "kept", position(1), "e-reader");
  const early = datedWrite(store, clock, "early", position(1), "e-reader");
  const broken = datedWrite(store, clock, "broken", position(1), "e-reader");
  assert.ok(kept.unmeasured && early.unmeasured && broken.unmeasured);
  // The saved outbox edited by hand (or corrupted): one reading a day early, one that is no reading.
  store.addPending(kept);
  store.addPending({
    ...early,
    unmeasured: { ...early.unmeasured, deviceMs: early.unmeasured.deviceMs - 24 * HOUR },
  });
  store.addPending({
    ...broken,
    unmeasured: { ...broken.unmeasured, deviceMs: "soon" as unknown as number },
  });

  // Offline, flushed again and again: the readable ones ask for a read each time (the answer to it
  // re-dates them, or shows the edited one is not its write's); the malformed one alone asks for none.
  let reads = 0;
  const measure = () => {
    reads++;
    return Promise.reject(new NetworkError(0, "network_error", "offline"));
  };
  const offline: OutboxTransport = {
    updateProgress: () => Promise.reject(new NetworkError(0, "network_error", "offline")),
    updateProgressBatch: () => Promise.reject(new NetworkError(0, "network_error", "offline")),
  };
  const flushes = async (outbox: SyncStore) => {
    for (let flush = 0; flush < 3; flush++) {
      assert.equal(
        (await flushOutbox(outbox, offline, options({ redate: { clock, measure } }))).outcome,
        "failed",
      );
    }
  };
  await flushes(store);
  assert.equal(reads, 3, "the readable one: a read per flush");
  reads = 0;
  const unreadable = new SyncStore("reader", defaultCompareRows);
  unreadable.addPending(store.pendingWrites().find((write) => write.series_id === "broken")!);
  await flushes(unreadable);
  assert.equal(reads, 0, "a reading that can never be re-dated waits for no answer");

  // The answer after them: still an hour ahead. The readable one goes back by the hour; the edited one
  // is not taken a day back (nor an hour: it is not its write's reading), the malformed one neither.
  t.device += 60_000;
  t.monotonic += 60_000;
  clock.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  const sent: { updated_at: string; series_id: string }[] = [];
  const result = await flushOutbox(store, takingTransport(sent), options({ redate: { clock, measure } }));
  assert.deepEqual(result, { outcome: "done" });
  const at = (series: string) => Date.parse(sent.find((w) => w.series_id === series)!.updated_at);
  assert.equal(at("kept"), Date.parse(kept.updated_at) - HOUR);
  assert.equal(at("early"), Date.parse(early.updated_at), "sent as dated");
  assert.equal(at("broken"), Date.parse(broken.updated_at), "sent as dated");
  assert.equal(reads, 0);
});

Deno.test("outbox: a page turned once the offset is measured again, while a write dated without it waits, is dated by the corrected clock, after what that write is sent as", () => {
  const HOUR = 3_600_000;
  // An hour ahead, measured; asleep offline: a page turn dated an hour late waits in the outbox.
  const { t, clock, store } = asleepAnHourAhead();
  const position = (chapter: number) => ({ chapter, page: 1, percentage: 0.5 });
  const slept = datedWrite(store, clock, "book", position(4), "e-reader");
  assert.ok(slept.unmeasured);
  store.addPending(slept);
  // An answer (a catch-up read) measures the -1 h again before the outbox is sent; the next page turn:
  t.device += 60_000;
  t.monotonic += 60_000;
  clock.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  t.device += 1_000;
  t.monotonic += 1_000;
  const next = datedWrite(store, clock, "book", position(5), "e-reader");
  assert.equal(next.unmeasured, undefined, "dated under a measured offset");
  const sent = sendable(next, clock);
  const late = Date.parse(sent.updated_at) - (t.device - HOUR);
  assert.ok(
    Math.abs(late) <= 20,
    `sent dated by the corrected clock, not after the waiting write's late date (${late} ms)`,
  );
  assert.equal(next.sentAtMs, undefined, "its date is the one it is sent with");
  assert.equal(sent.updated_at, next.updated_at);
  // Still after the waiting write as it is sent (it may be on its way): never refused as older ('self');
  // and after it in the outbox's order, which its number keeps (not its date, an hour before that write's).
  assert.ok(Date.parse(sent.updated_at) > Date.parse(sendable(slept, clock).updated_at));
  store.addPending(next);
  assert.ok(next.seq! > slept.seq!, `numbered after it: ${next.seq} > ${slept.seq}`);
  assert.deepEqual(store.pendingWrites(), [next]);
  assert.equal(store.getSnapshot().bySeries.get("book")?.chapter, 5);
  // The page turn after it follows it as it is sent, not its place in the outbox.
  t.device += 1_000;
  t.monotonic += 1_000;
  const third = sendable(datedWrite(store, clock, "book", position(6), "e-reader"), clock);
  assert.ok(Math.abs(Date.parse(third.updated_at) - (t.device - HOUR)) <= 20, third.updated_at);
  // While the clock cannot re-date it yet (another visit's, nothing measured here): after it in the
  // outbox's order, but sent dated by the corrected clock (it replaces the waiting write, which is never
  // sent; a key another tab got it stored under would go first: ownStoredFloor).
  const fresh = new ServerClock({
    deviceNow: () => t.device,
    monotonicNow: () => t.monotonic,
    offsetMs: -HOUR,
  });
  const other = new SyncStore("reader", defaultCompareRows);
  other.addPending(slept);
  const behind = datedWrite(other, fresh, "book", position(5), "e-reader");
  other.addPending(behind);
  assert.deepEqual(other.pendingWrites(), [behind], "after it in the outbox's order");
  const sentBehind = Date.parse(sendable(behind, fresh).updated_at) - (t.device - HOUR);
  assert.ok(Math.abs(sentBehind) <= 20, `${sentBehind} ms`);
});

Deno.test("outbox: a page turn re-dated by this tab's clock to just before this device's earlier write another tab got stored is shown as it is sent, after that write's key, not behind it (the reader a page back until it is answered)", async () => {
  const HOUR = 3_600_000;
  // An hour ahead, measured; asleep offline: the page turn (chapter 5) is dated an hour late, to be re-dated.
  const { t, clock, store } = asleepAnHourAhead({ datesSentBy: true });
  const turn = datedWrite(store, clock, "book", { chapter: 5, page: 1, percentage: 0.5 }, "e-reader");
  assert.ok(turn.unmeasured);
  store.addPending(turn);
  // Back online, an answer measures the hour again: the page turn goes re-dated to when it was turned.
  t.device += 1_000;
  t.monotonic += 1_000;
  clock.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  store.sendDatesChanged();
  const redated = Date.parse(sendable(turn, clock).updated_at);
  // Another tab's earlier page turn (chapter 4) was stored 5 ms after that date (its clock's estimate, within a
  // round trip of this one's): its row arrives.
  const earlierAt = new Date(redated + 5).toISOString();
  store.applyServerRow({
    ...pendingWrite("book", earlierAt, "e-reader", 4),
    user_id: "reader",
    synced_at: earlierAt,
    change_xid: "1",
    created_at: earlierAt,
  });
  const shown = store.getSnapshot().bySeries.get("book");
  assert.deepEqual(
    [shown?.chapter, shown?.updatedAt, shown?.pending],
    [5, new Date(redated + 6).toISOString(), true],
    "the page turn, as it will be sent: just after the earlier write's key (on the code before: chapter 4)",
  );
  const sent: { updated_at: string; series_id: string }[] = [];
  assert.deepEqual(
    await flushOutbox(
      store,
      takingTransport(sent),
      options({ redate: { clock, measure: () => Promise.resolve() } }),
    ),
    {
      outcome: "done",
    },
  );
  assert.deepEqual(sent.map((write) => write.updated_at), [shown?.updatedAt], "sent with the date shown");
});

Deno.test("outbox: a page turn dated under a saved offset while another visit's late-dated write waits is sent dated by the corrected clock, not after that write's late date: the phone's reading made in that hour wins", async () => {
  const HOUR = 3_600_000;
  // Visit 1: an hour ahead, measured; asleep offline: a page turn dated an hour late, then the page closed.
  const t = { device: 1_800_000_000_000 + HOUR, monotonic: 0 };
  const clocks = { deviceNow: () => t.device, monotonicNow: () => t.monotonic };
  const visit1 = new ServerClock(clocks);
  visit1.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  t.device += 8 * HOUR;
  const position = (chapter: number) => ({ chapter, page: 1, percentage: 0.5 });
  const slept = datedWrite(
    new SyncStore("reader", defaultCompareRows),
    visit1,
    "book",
    position(4),
    "e-reader",
  );
  assert.ok(slept.unmeasured);
  // Visit 2, still offline: the saved -1 h is in force (measured), nothing answered yet. The next page turn:
  t.device += 60_000;
  t.monotonic = 0;
  const clock = new ServerClock({ ...clocks, offsetMs: -HOUR });
  const store = new SyncStore("reader", defaultCompareRows);
  store.datesSentBy((write) => sendable(write, clock).updated_at);
  store.addPending(slept);
  const turnedAt = t.device - HOUR; // the server's clock then
  const next = datedWrite(store, clock, "book", position(5), "e-reader");
  assert.equal(next.unmeasured, undefined, "dated under the saved offset");
  store.addPending(next);
  assert.ok(
    next.seq! > slept.seq!,
    "after it in the outbox's order (its number; its date is an hour before)",
  );
  assert.equal(store.pendingWrites().length, 1, "it replaces the waiting write, which is never sent");
  // Ten minutes later the phone reads on to chapter 9; then the e-reader is online: its read answers -1 h.
  t.device += 10 * 60_000;
  t.monotonic += 10 * 60_000;
  const phoneAt = t.device - HOUR;
  const measure = () => {
    clock.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
    return Promise.resolve();
  };
  const sent: { updated_at: string; series_id: string }[] = [];
  assert.deepEqual(await flushOutbox(store, takingTransport(sent), options({ redate: { clock, measure } })), {
    outcome: "done",
  });
  assert.equal(sent.length, 1);
  const late = Date.parse(sent[0].updated_at) - turnedAt;
  assert.ok(Math.abs(late) <= 20, `sent ${late} ms after it was turned`);
  assert.ok(Date.parse(sent[0].updated_at) < phoneAt, "the phone's later reading wins");
});

Deno.test("outbox: a stored sentAtMs (hand-editable) moves its page turn back by no more than the device was measured ahead: a sentAtMs of 0 is neither sent nor shown dated 1970", async () => {
  const HOUR = 3_600_000;
  // An hour ahead, measured; asleep offline: a page turn dated an hour late waits; an answer measures the
  // hour again, and the next page turn is dated by the corrected clock. Saved before writes were numbered
  // (PendingWrite.seq), it was dated after the waiting write's late date, for its place in the outbox,
  // and kept the corrected date as sentAtMs, an hour before; such a saved outbox still loads.
  const { t, clock, store } = asleepAnHourAhead({ datesSentBy: true });
  const position = (chapter: number) => ({ chapter, page: 1, percentage: 0.5 });
  const waiting = datedWrite(store, clock, "book", position(4), "e-reader");
  store.addPending(waiting);
  t.device += 60_000;
  t.monotonic += 60_000;
  clock.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
  const corrected = datedWrite(store, clock, "book", position(5), "e-reader");
  const next = {
    ...corrected,
    updated_at: new Date(Date.parse(waiting.updated_at) + 1).toISOString(),
    sentAtMs: Date.parse(corrected.updated_at),
  };
  assert.ok(next.sentAtMs < Date.parse(next.updated_at) - HOUR + 60_000);
  assert.equal(
    sendable(next, clock).updated_at,
    new Date(next.sentAtMs).toISOString(),
    "a true one is sent as is",
  );
  // The saved outbox edited by hand (or corrupted): its sentAtMs is 0.
  store.addPending({ ...next, sentAtMs: 0 });
  const earliest = Date.parse(next.updated_at) - HOUR - REDATE_SLACK_MS;
  const shown = Date.parse(store.getSnapshot().bySeries.get("book")!.updatedAt);
  assert.ok(shown >= earliest, `shown dated ${new Date(shown).toISOString()}`);
  const sent: { updated_at: string; series_id: string }[] = [];
  const measure = () => Promise.resolve();
  assert.deepEqual(await flushOutbox(store, takingTransport(sent), options({ redate: { clock, measure } })), {
    outcome: "done",
  });
  assert.equal(sent.length, 1);
  const at = Date.parse(sent[0].updated_at);
  assert.ok(at >= earliest && at <= Date.parse(next.updated_at), `sent dated ${sent[0].updated_at}`);
});

Deno.test(
  {
    name:
      "outbox: a page turned offline on a device an hour ahead that slept is re-dated by the first answer after it: it loses to the phone's later reading, and is stored under its true date",
    ...noSanitize,
  },
  async () => {
    const HOUR = 3_600_000;
    const { client, requests, api: phone, store } = await device();
    // The e-reader's clock runs an hour ahead of the server's (this machine's real clock), moved by
    // hand on top of it: `shift` for its device clock, `paused` for what its monotonic clock missed
    // while asleep. Its last visit saved the -1 h; this one starts three hours ago, offline.
    const t = { shift: -3 * HOUR, paused: 0 };
    const clock = new ServerClock({
      deviceNow: () => Date.now() + HOUR + t.shift,
      monotonicNow: () => performance.now() - t.paused,
      offsetMs: -HOUR,
    });
    const ereader = createProgressApi(client, { clock });
    assert.equal(clock.measured, true, "the saved offset is in force");
    t.shift += HOUR; // asleep an hour: the monotonic clock stops, the -1 h is dropped
    t.paused += HOUR;
    assert.equal(clock.measured, false);
    const contested = seriesId("slept-contested");
    const alone = seriesId("slept-alone");
    const turnedAt = Date.now() - 2 * HOUR; // the server's time of the two page turns
    const position = { chapter: 2, page: 1, percentage: 0.02 };
    const writes = [contested, alone].map((s) => datedWrite(store, clock, s, position, "e-reader"));
    for (const write of writes) {
      assert.ok(write.unmeasured, "dated without a measured offset");
      const late = Date.parse(write.updated_at) - turnedAt;
      assert.ok(Math.abs(late - HOUR) <= 5_000, `dated an hour late (${late} ms)`);
      store.addPending(write);
    }
    t.shift += 2 * HOUR; // asleep two hours more: the device clock reads the server's + 1 h again
    t.paused += 2 * HOUR;
    // Half an hour after the page turns the reader went on on the phone, which saved it then.
    const phoneAt = turnedAt + HOUR / 2;
    await phone.updateProgress({
      ...pending(contested, phoneAt, 7, "phone"),
      updated_at: new Date(phoneAt).toISOString(),
    });
    requests.length = 0;

    // Back online: the first answer (a read made for it) measures the -1 h again, then the batch goes.
    const measure = () => ereader.listProgress({ limit: 1 });
    assert.deepEqual(await flushOutbox(store, ereader, options({ redate: { clock, measure } })), {
      outcome: "done",
    });
    assert.deepEqual(requests, ["/functions/v1/progress", "/functions/v1/progress/batch"]);
    const onServer = await phone.getProgress(contested);
    assert.equal(onServer?.device_id, "phone", "the phone's later reading is not beaten by the older page");
    assert.equal(onServer?.chapter, 7);
    assert.equal(store.getSnapshot().notices.get(contested)?.winner.device_id, "phone");
    const stored = await phone.getProgress(alone);
    assert.equal(stored?.device_id, "e-reader");
    const off = Date.parse(stored!.updated_at) - turnedAt;
    assert.ok(Math.abs(off) <= 5_000, `stored at the page turn's time, not an hour late (${off} ms)`);
    assert.equal(store.getSnapshot().pendingCount, 0);
    await client.realtime.disconnect();
  },
);

Deno.test(
  {
    name:
      "outbox: a 429 with Retry-After (an HTTP-date): no request until it has passed, whatever asks; then all is saved",
    ...noSanitize,
  },
  async () => {
    const { user } = await device();
    const upstream = testEnv().url;
    // In front of the function: a rate limit that asks for two minutes (by its own clock, which is
    // not this machine's: an hour ahead), until the test lifts it.
    let limited = true;
    let requests = 0;
    const proxy = serveLocal(async (req) => {
      requests++;
      if (limited) {
        await req.body?.cancel();
        const serverNow = Date.now() + 3_600_000;
        return Response.json({ error: { code: "rate_limited", message: "Too many requests" } }, {
          status: 429,
          headers: {
            "x-server-time": new Date(serverNow).toISOString(),
            "retry-after": new Date(serverNow + 120_000).toUTCString(),
          },
        });
      }
      return await forwardTo(upstream, req);
    });
    try {
      const { client } = countingClient(user.accessToken, proxy.url);
      const api = createProgressApi(client);
      const store = new SyncStore(user.id, defaultCompareRows);
      const clock = virtualTimers();
      const results: FlushResult[] = [];
      const schedule = new OutboxSchedule({
        send: async () => {
          const result = await flushOutbox(store, api, options({ isTransient }));
          results.push(result);
          return result;
        },
        hasPending: () => store.getSnapshot().pendingCount > 0,
        isOnline: () => true,
        retryAfterMs: (error) => retryAfterMsOf(error),
        isNetworkFailure,
        random: () => 0.5,
        timers: clock.timers,
      });
      const series = [seriesId("limited-a"), seriesId("limited-b"), seriesId("limited-c")];
      store.addPending(pending(series[0], Date.now() - 2_000, 1));
      store.addPending(pending(series[1], Date.now() - 1_000, 2));
      schedule.request("edit");
      await schedule.settled();
      assert.equal(requests, 1);
      const first = results[0];
      assert.ok(first.outcome === "failed" && first.error instanceof ProgressApiError);
      assert.equal(first.error.status, 429);
      assert.equal(schedule.retryAfterUntil - clock.now, 120_000, "two minutes, by the server's clock");
      assert.deepEqual([store.getSnapshot().pendingCount, store.getSnapshot().lastError], [2, null]);

      // A minute later: a new edit, back online, the reader's own request. Not one request.
      clock.advance(60_000);
      store.addPending(pending(series[2], Date.now(), 3));
      for (const reason of ["edit", "reachable", "queued", "online", "user"] as const) {
        schedule.request(reason);
      }
      await schedule.settled();
      assert.equal(requests, 1, "nothing sent within the Retry-After");

      limited = false;
      clock.advance(59_999);
      await schedule.settled();
      assert.equal(requests, 1);
      clock.advance(1);
      await schedule.settled();
      assert.equal(requests, 2, "one batch, as soon as the wait was over");
      assert.deepEqual(results.at(-1), { outcome: "done" });
      assert.deepEqual([store.getSnapshot().pendingCount, schedule.failures, clock.armed], [0, 0, 0]);
      for (const [i, s] of series.entries()) assert.equal((await api.getProgress(s))?.chapter, i + 1);
      await client.realtime.disconnect();
    } finally {
      await proxy.shutdown();
    }
  },
);

Deno.test(
  {
    name:
      "outbox: a flush that saved some batches before a 503 says how many writes the API answered, and the backoff starts again from its first step",
    ...noSanitize,
  },
  async () => {
    const { user } = await device();
    const upstream = testEnv().url;
    // In front of the function: the first batch goes through, then the API is down.
    let batches = 0;
    const proxy = serveLocal(async (req) => {
      if (req.method === "POST" && ++batches > 1) {
        await req.body?.cancel();
        return Response.json({ error: { code: "service_unavailable", message: "down" } }, { status: 503 });
      }
      return await forwardTo(upstream, req);
    });
    try {
      const { client } = countingClient(user.accessToken, proxy.url);
      const api = createProgressApi(client, { retry: { attempts: 1 } });
      const store = new SyncStore(user.id, defaultCompareRows);
      const series = [seriesId("partly-a"), seriesId("partly-b"), seriesId("partly-c")];
      series.forEach((s, i) => store.addPending(pending(s, Date.now() - 3_000 + i, i + 1)));
      const clock = virtualTimers();
      const results: FlushResult[] = [];
      const schedule = new OutboxSchedule({
        send: async () => {
          const result = await flushOutbox(store, api, options({ isTransient, batchSize: 2 }));
          results.push(result);
          return result;
        },
        hasPending: () => store.getSnapshot().pendingCount > 0,
        isOnline: () => true,
        retryAfterMs: (error) => retryAfterMsOf(error),
        isNetworkFailure,
        random: () => 0.999,
        timers: clock.timers,
      });
      schedule.request("queued");
      await schedule.settled();
      const first = results[0];
      assert.ok(first.outcome === "failed" && first.error instanceof ProgressApiError);
      assert.equal(first.error.status, 503);
      assert.equal(first.answered, 2, "the first batch was saved");
      assert.equal(store.getSnapshot().pendingCount, 1);
      // The next try fails outright: the run of failures counts from there.
      clock.advance(schedule.nextSendAt! - clock.now);
      await schedule.settled();
      assert.deepEqual([results.length, results[1].outcome, schedule.failures], [2, "failed", 2]);
      assert.equal(schedule.nextSendAt! - clock.now, Math.floor(0.999 * 6_000), "the second step");
      await client.realtime.disconnect();
    } finally {
      await proxy.shutdown();
    }
  },
);

Deno.test(
  {
    name: "outbox: an answer that says nothing about the writes (function not found) keeps them all",
    ...noSanitize,
  },
  async () => {
    // What a reader meets while the function is being deployed (or behind a misrouted gateway):
    // 404 for the function itself. Dropping the outbox then would lose offline reading for good.
    const user = await createTestUser();
    const { client } = countingClient(user.accessToken);
    const missing = createProgressApi(client, {
      functionName: "progress-not-deployed",
      retry: { attempts: 1 },
    });
    const store = new SyncStore(user.id, defaultCompareRows);
    const series = [seriesId("kept-a"), seriesId("kept-b")];
    series.forEach((s, i) => store.addPending(pending(s, Date.now() - 1_000 + i, i + 1)));
    await flushOutbox(store, missing, options({ isTransient }));
    assert.equal(store.getSnapshot().pendingCount, 2);
    assert.match(store.getSnapshot().lastError ?? "", /^Not saved yet \(will retry\)/);
    // Once the function answers again, the same outbox is saved and the message goes.
    const api = createProgressApi(client);
    await flushOutbox(store, api, options({ isTransient }));
    assert.equal(store.getSnapshot().pendingCount, 0);
    assert.equal(store.getSnapshot().lastError, null);
    for (const [i, s] of series.entries()) assert.equal((await api.getProgress(s))?.chapter, i + 1);
    await client.realtime.disconnect();
  },
);

Deno.test(
  {
    name: "outbox: a 400 from a gateway or proxy (not the API's error body) keeps every write",
    ...noSanitize,
  },
  async () => {
    // ValidationError by its status, but with code http_400: the API never saw the writes.
    const proxy = serveLocal(() =>
      new Response("<html><body>400 Bad Request</body></html>", {
        status: 400,
        headers: { "content-type": "text/html" },
      })
    );
    try {
      const { user, client, api, store } = await device(proxy.url);
      const series = [seriesId("proxy-a"), seriesId("proxy-b")];
      series.forEach((s, i) => store.addPending(pending(s, Date.now() - 1_000 + i, i + 1)));
      await flushOutbox(store, api, options({ isTransient }));
      assert.equal(store.getSnapshot().pendingCount, 2, "nothing dropped");
      assert.match(store.getSnapshot().lastError ?? "", /^Not saved yet \(will retry\)/);
      // Through the real function the same outbox is saved.
      const real = createProgressApi(countingClient(user.accessToken).client);
      await flushOutbox(store, real, options({ isTransient }));
      assert.equal(store.getSnapshot().pendingCount, 0);
      for (const [i, s] of series.entries()) assert.equal((await real.getProgress(s))?.chapter, i + 1);
      await client.realtime.disconnect();
    } finally {
      await proxy.shutdown();
    }
  },
);

Deno.test(
  {
    name:
      "outbox: a proxy that refuses large bodies (413 on every batch) does not stall it: writes go one by one",
    ...noSanitize,
  },
  async () => {
    const { user } = await device();
    const upstream = testEnv().url;
    // In front of the function: batches are "too large", single writes pass.
    const proxy = serveLocal(async (req) => {
      const url = new URL(req.url);
      if (url.pathname.endsWith("/batch")) {
        await req.body?.cancel();
        return new Response("<html>413 Request Entity Too Large</html>", {
          status: 413,
          headers: { "content-type": "text/html" },
        });
      }
      return await forwardTo(upstream, req);
    });
    try {
      const { client } = countingClient(user.accessToken, proxy.url);
      const api = createProgressApi(client, { retry: { attempts: 1 } });
      const store = new SyncStore(user.id, defaultCompareRows);
      const series = [seriesId("big-a"), seriesId("big-b"), seriesId("big-c")];
      series.forEach((s, i) => store.addPending(pending(s, Date.now() - 1_000 + i, i + 1)));
      await flushOutbox(store, api, options({ isTransient, splitMayHelp }));
      assert.equal(store.getSnapshot().pendingCount, 0, "every write saved");
      for (const [i, s] of series.entries()) assert.equal((await api.getProgress(s))?.chapter, i + 1);
      await client.realtime.disconnect();
    } finally {
      await proxy.shutdown();
    }
  },
);

Deno.test("outbox: a write the API refuses in a batch of its own is not sent a second time, and counts once as answered", async () => {
  // The API's own refusal of the write (its error body: not a proxy's), e.g. a rule only the server checks.
  const refusal = () => new ValidationError(422, "validation_failed", "not this write");
  const calls: string[] = [];
  const api: OutboxTransport = {
    updateProgress: (write) => {
      calls.push(`one ${write.series_id}`);
      return Promise.reject(refusal());
    },
    updateProgressBatch: (writes) => {
      calls.push(`batch ${writes.map((w) => w.series_id).join(",")}`);
      if (writes[0].series_id === "refused") return Promise.reject(refusal());
      return Promise.reject(new ServiceUnavailableError(503, "service_unavailable", "down"));
    },
  };
  const store = new SyncStore("reader", defaultCompareRows);
  store.addPending(pending("refused", Date.now() - 2_000, 1));
  store.addPending(pending("later", Date.now() - 1_000, 2));
  const result = await flushOutbox(store, api, options({ batchSize: 1 }));
  assert.deepEqual(calls, ["batch refused", "batch later"]);
  assert.ok(result.outcome === "failed");
  assert.equal(result.answered, 1);
  assert.deepEqual(store.pendingWrites().map((w) => w.series_id), ["later"]);
  assert.match(store.getSnapshot().lastError ?? "", /Could not save refused/);
});

Deno.test("outbox: while a page turn dated an hour late waits, the page shows the phone's later reading once the clock can re-date it, and it stays ordered after it", async () => {
  const HOUR = 3_600_000;
  // An hour ahead, measured; asleep offline: a page turn of chapter 4, dated an hour late, waits.
  const { t, clock, store } = asleepAnHourAhead({ datesSentBy: true }); // as the session does
  const turned = datedWrite(store, clock, "book", { chapter: 4, page: 1, percentage: 0.5 }, "e-reader");
  store.addPending(turned);
  // The phone's reading of chapter 9, ten minutes later (by the server's clock), reaches the page.
  const phoneMs = t.device - HOUR + 10 * 60_000;
  const phoneAt = new Date(phoneMs).toISOString();
  store.applyServerRow(
    {
      ...pending("book", phoneMs, 9, "phone"),
      user_id: "reader",
      synced_at: phoneAt,
      change_xid: "1",
      created_at: phoneAt,
    } as unknown as Parameters<SyncStore["applyServerRow"]>[0],
  );
  const shown = () => store.getSnapshot().bySeries.get("book")!;
  assert.equal(shown().chapter, 4, "no answer yet: the page turn is judged by its date");
  // The outbox's read measures the -1 h: the page turn will go an hour back and lose to the phone.
  t.device += 60_000;
  t.monotonic += 60_000;
  const offline = () => Promise.reject(new NetworkError(0, "network_error", "offline"));
  const measure = () => {
    clock.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
    return Promise.resolve();
  };
  const result = await flushOutbox(
    store,
    { updateProgress: offline, updateProgressBatch: offline },
    options({ redate: { clock, measure } }),
  );
  assert.equal(result.outcome, "failed", "the send itself failed: the page turn still waits");
  assert.deepEqual([shown().chapter, shown().deviceId, shown().pending], [9, "phone", true]);
  // Its place in the outbox is unchanged: the next page turn is still after it there (by its number:
  // dated by the corrected clock, an hour before the page turn's late date).
  assert.deepEqual(store.pendingWrites(), [turned]);
  const next = datedWrite(store, clock, "book", { chapter: 10, page: 1, percentage: 0.5 }, "e-reader");
  assert.ok(Date.parse(next.updated_at) < Date.parse(turned.updated_at), next.updated_at);
  store.addPending(next);
  assert.ok(next.seq! > turned.seq!);
  assert.deepEqual(store.pendingWrites(), [next]);
});

Deno.test("outbox: a page turn re-dated by one tab's clock is sent after the write another tab just got stored, never refused as older than this device's own ('self')", async () => {
  const HOUR = 3_600_000;
  // One browser, a device an hour ahead; two tabs of a fresh visit, no answer yet in either.
  const storage = memoryStorage();
  const t = { device: 1_800_000_000_000 + HOUR, monotonic: 0 };
  const tab = () => {
    const store = new SyncStore("reader", defaultCompareRows);
    store.attachStorage(storage);
    return { store, clock: new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic }) };
  };
  const tabA = tab();
  const tabB = tab();
  // Each tab's first answer (its read before the batch): 40 ms round trips answered at different points
  // of them, both within their round trip of the true -1 h, A's estimate 30 ms above B's.
  const answerAt = (clock: ServerClock, atMs: number) => () => {
    clock.observe({ serverMs: t.device - HOUR + atMs, sentMs: t.device - 40, receivedMs: t.device });
    return Promise.resolve();
  };
  // The server, as it judges one device's writes: one older than its own stored version is refused
  // ('self'). Tab A's batch is answered when the test says.
  const stored = new Map<string, { updated_at: string; chapter: number }>();
  const server = (write: Parameters<OutboxTransport["updateProgress"]>[0]) => {
    const current = stored.get(write.series_id);
    const won = !current || Date.parse(write.updated_at) > Date.parse(current.updated_at);
    if (won) stored.set(write.series_id, { ...write });
    const progress = {
      ...stored.get(write.series_id)!,
      series_id: write.series_id,
      device_id: "e-reader",
      user_id: "reader",
    };
    return { won, conflict: won ? null : "self", progress } as unknown as Awaited<
      ReturnType<OutboxTransport["updateProgress"]>
    >;
  };
  let answerA = () => {};
  const onItsWay = Promise.withResolvers<void>();
  const held: OutboxTransport = {
    updateProgress: (write) => Promise.resolve(server(write)),
    updateProgressBatch: (writes) =>
      new Promise((resolve) => {
        answerA = () => resolve(writes.map(server));
        onItsWay.resolve();
      }),
  };
  const api: OutboxTransport = {
    updateProgress: (write) => Promise.resolve(server(write)),
    updateProgressBatch: (writes) => Promise.resolve(writes.map(server)),
  };
  const position = (chapter: number) => ({ chapter, page: 1, percentage: 0.5 });

  // Tab A's page turn goes out (its read answered first); while it is on its way, 20 ms later, tab B
  // turns the next page (dated after A's saved one in the outbox's order).
  tabA.store.addPending(datedWrite(tabA.store, tabA.clock, "book", position(4), "e-reader"));
  const sending = flushOutbox(
    tabA.store,
    held,
    options({ redate: { clock: tabA.clock, measure: answerAt(tabA.clock, 35) } }),
  );
  await onItsWay.promise;
  t.device += 20;
  t.monotonic += 20;
  tabB.store.reloadOutbox();
  tabB.store.addPending(datedWrite(tabB.store, tabB.clock, "book", position(5), "e-reader"));
  answerA();
  assert.deepEqual(await sending, { outcome: "done" });
  assert.equal(stored.get("book")?.chapter, 4);
  // Tab B sends its page turn, re-dated by its own clock's first answer (30 ms below A's estimate).
  tabB.store.reloadOutbox();
  const result = await flushOutbox(
    tabB.store,
    api,
    options({ redate: { clock: tabB.clock, measure: answerAt(tabB.clock, 5) } }),
  );
  assert.deepEqual(result, { outcome: "done" });
  assert.equal(stored.get("book")?.chapter, 5, "tab B's later page turn is what the server keeps");
});

Deno.test("outbox: a re-dated write sent again after its answer was lost goes under the same key (a replay), not 1 ms after its own stored copy", async () => {
  const HOUR = 3_600_000;
  // A fresh visit on a device an hour ahead, no answer yet: the page turn keeps its reading.
  const t = { device: 1_800_000_000_000 + HOUR, monotonic: 0 };
  const clock = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic });
  const store = new SyncStore("reader", defaultCompareRows);
  store.addPending(datedWrite(store, clock, "book", { chapter: 4, page: 1, percentage: 0.5 }, "e-reader"));
  const measure = () => {
    clock.observe({ serverMs: t.device - HOUR, sentMs: t.device, receivedMs: t.device });
    return Promise.resolve();
  };
  // The server stores every write under its key (a write under a key it stores with the same position
  // is a replay, not stored again); the first answer is lost on its way back.
  const versions: { updated_at: string; chapter: number }[] = [];
  const sent: string[] = [];
  let loseAnswer = true;
  const row = (write: Parameters<OutboxTransport["updateProgress"]>[0]) => ({
    ...write,
    user_id: "reader",
    synced_at: write.updated_at,
    change_xid: String(versions.length),
    created_at: write.updated_at,
  });
  const server = (write: Parameters<OutboxTransport["updateProgress"]>[0]) => {
    sent.push(write.updated_at);
    const last = versions.at(-1);
    if (!last || last.updated_at !== write.updated_at || last.chapter !== write.chapter) {
      versions.push({ ...write });
    }
    return { won: true, progress: row(write) } as unknown as Awaited<
      ReturnType<OutboxTransport["updateProgress"]>
    >;
  };
  const api: OutboxTransport = {
    updateProgress: (write) => Promise.resolve(server(write)),
    updateProgressBatch: (writes) => {
      const answers = writes.map(server);
      if (!loseAnswer) return Promise.resolve(answers);
      loseAnswer = false;
      // Stored, then the connection drops; the stored row reaches the device by Realtime meanwhile.
      store.applyServerRow(row(writes[0]) as unknown as Parameters<SyncStore["applyServerRow"]>[0]);
      return Promise.reject(new NetworkError(0, "network_error", "Failed to fetch"));
    },
  };
  const first = await flushOutbox(store, api, options({ redate: { clock, measure } }));
  assert.equal(first.outcome, "failed");
  assert.equal(store.getSnapshot().pendingCount, 1, "its answer lost: still waiting");
  t.device += 60_000;
  t.monotonic += 60_000;
  assert.deepEqual(await flushOutbox(store, api, options({ redate: { clock, measure } })), {
    outcome: "done",
  });
  const turnedAt = new Date(1_800_000_000_000).toISOString();
  assert.deepEqual(sent, [turnedAt, turnedAt], "sent again under the key it was stored under");
  assert.equal(versions.length, 1, "stored once");
});

Deno.test("outbox: a saved write dated far ahead (edited, a clock years ahead) or an hour late by design does not carry its date into the page turns after it: they are dated and sent by the clock, after it in the outbox by their numbers", async () => {
  const HOUR = 3_600_000;
  const FAR = "2999-01-01T00:00:00.000Z";
  const t = { device: 1_800_000_000_000, monotonic: 0 };
  // A visit whose saved offset is in force (measured): writes are dated by the clock, not re-dated.
  const clock = new ServerClock({ deviceNow: () => t.device, monotonicNow: () => t.monotonic, offsetMs: 0 });
  const storage = memoryStorage();
  // The saved outbox an earlier visit left, in the format before writes were numbered: "book" dated far
  // ahead; and the tabs' list of answered writes names "atlas" dated an hour late, still to be re-dated
  // when another tab sent it (its date then ordered the page turns after it).
  const reading = { deviceMs: t.device + HOUR, clock: "another tab", answers: 0 };
  storage.setItem(
    "readsync.outbox.reader",
    JSON.stringify([pending("book", Date.parse(FAR), 4, "e-reader")]),
  );
  storage.setItem(
    "readsync.outboxAnswered.reader",
    JSON.stringify([{ ...pending("atlas", t.device + HOUR, 1, "e-reader"), unmeasured: reading }]),
  );
  const store = new SyncStore("reader", defaultCompareRows);
  store.attachStorage(storage);
  store.datesSentBy((write) => sendable(write, clock).updated_at);
  const position = (chapter: number) => ({ chapter, page: 1, percentage: 0.5 });
  const book = datedWrite(store, clock, "book", position(5), "e-reader");
  // At most the server's 5 s tolerance ahead: the far-ahead write may be on its way (stored at the server's
  // now), and the page turn must not fall before it; never after its date.
  const bookAt = Date.parse(book.updated_at) - t.device;
  assert.ok(bookAt > 0 && bookAt <= 5_000, `dated ${bookAt} ms ahead of the clock`);
  const atlas = datedWrite(store, clock, "atlas", position(2), "e-reader");
  assert.equal(
    atlas.updated_at,
    new Date(t.device).toISOString(),
    "by the clock, not after the hour-late one",
  );
  store.addPending(book);
  store.addPending(atlas);
  assert.deepEqual(store.pendingWrites().map((w) => [w.series_id, w.chapter]).sort(), [["atlas", 2], [
    "book",
    5,
  ]]);
  // The page turn after it is dated by the clock again once it has passed, not carried on by the first.
  t.device += 10_000;
  t.monotonic += 10_000;
  const again = datedWrite(store, clock, "book", position(6), "e-reader");
  assert.equal(again.updated_at, new Date(t.device).toISOString());
  store.addPending(again);
  const sent: { updated_at: string; series_id: string }[] = [];
  const measure = () => Promise.resolve();
  assert.deepEqual(await flushOutbox(store, takingTransport(sent), options({ redate: { clock, measure } })), {
    outcome: "done",
  });
  assert.deepEqual(
    sent.map((w) => [w.series_id, w.updated_at]).sort(),
    [["atlas", atlas.updated_at], ["book", again.updated_at]],
  );
  assert.equal(storage.getItem("readsync.outbox.reader"), null, "nothing left in the saved outbox");
});

Deno.test(
  {
    name:
      "outbox: when a proxy strips X-Server-Time, the read made for the clock is made once in the visit, not at every flush; an answer that carries it again ends that",
    ...noSanitize,
  },
  async () => {
    const HOUR = 3_600_000;
    const { user } = await device();
    const upstream = testEnv().url;
    let strip = true;
    const reads: string[] = [];
    const proxy = serveLocal(async (req) => {
      if (req.method === "GET" && new URL(req.url).pathname === "/functions/v1/progress") reads.push(req.url);
      const answer = await forwardTo(upstream, req);
      if (!strip) return answer;
      const headers = new Headers(answer.headers);
      headers.delete("x-server-time");
      return new Response(answer.body, { status: answer.status, headers });
    });
    try {
      const { client } = countingClient(user.accessToken, proxy.url);
      // A fresh visit, no saved offset: page turns are dated by the device clock (right, here) and wait for
      // an answer to re-date them by.
      const t = { shift: 0, paused: 0 };
      const clock = new ServerClock({
        deviceNow: () => Date.now() + t.shift,
        monotonicNow: () => performance.now() - t.paused,
      });
      const api = createProgressApi(client, { clock, retry: { attempts: 1 } });
      const store = new SyncStore(user.id, defaultCompareRows);
      const unmeasurable = {};
      const redate = { clock, measure: () => api.listProgress({ limit: 1 }), unmeasurable };
      const series = seriesId("stripped");
      const turn = async (chapter: number) => {
        const write = datedWrite(store, clock, series, { chapter, page: 1, percentage: 0.1 }, "e-reader");
        assert.ok(write.unmeasured, "dated without a measured offset");
        store.addPending(write);
        assert.deepEqual(await flushOutbox(store, api, options({ redate })), { outcome: "done" });
        assert.equal(store.getSnapshot().pendingCount, 0);
      };
      // Three page turns, each sent at once: the first flush reads (its answer teaches the clock nothing),
      // the next two do not.
      for (const chapter of [1, 2, 3]) await turn(chapter);
      assert.equal(reads.length, 1, `reads made: ${reads.length}`);
      assert.equal(clock.answers, 0);
      // The proxy passes it again: the next answer (a batch's) teaches the clock, which ends it. After a sleep
      // (the correction dropped), a page turn waits again, and a read is made for it.
      strip = false;
      await turn(4);
      assert.equal(reads.length, 1);
      assert.ok(clock.answers > 0, "the batch's answer taught the clock");
      t.shift += HOUR;
      t.paused += HOUR;
      await turn(5);
      assert.equal(reads.length, 2, "read again once an answer carried the header");
      await client.realtime.disconnect();
    } finally {
      await proxy.shutdown();
    }
  },
);

Deno.test(
  {
    name:
      "outbox: a page turn made while this device's far-ahead write is on its way is not lost when that write lands later than its date (stored at the server's now) and the key it was stored under is not known here (its answer lost): refused as older than it ('self'), it is sent again just after it",
    ...noSanitize,
  },
  async () => {
    const { client, api, store } = await device();
    const series = seriesId("far-ahead-on-its-way");
    const { clock, onItsWay, release } = farAheadWriteToHold(store, series);
    // Stored, and its answer lost on the way back: the key it was stored under is not known here.
    const slowAndLost: OutboxTransport = {
      updateProgress: (write) => api.updateProgress(write),
      updateProgressBatch: async (writes) => {
        onItsWay.resolve();
        await release.promise;
        await api.updateProgressBatch(writes);
        throw new NetworkError(0, "network_error", "Failed to fetch");
      },
    };
    const sending = flushOutbox(store, slowAndLost, options());
    await onItsWay.promise;
    const turn = datedWrite(store, clock, series, { chapter: 5, page: 1, percentage: 0.5 }, "e-reader");
    store.addPending(turn);
    release.resolve();
    assert.equal((await sending).outcome, "failed");
    const landed = await api.getProgress(series);
    assert.equal(landed?.chapter, 4);
    assert.ok(
      Date.parse(landed!.updated_at) > Date.parse(turn.updated_at),
      "the far-ahead write is stored at the server's now, after the page turn's date",
    );
    assert.equal(store.getSnapshot().pendingCount, 1, "the page turn still waits");
    const { answers, counted } = answersKept(api);
    assert.deepEqual(await flushOutbox(store, counted, options()), { outcome: "done" });
    assert.deepEqual(
      answers,
      [[5, false], [5, true]],
      "refused as older than the write it met, then sent again",
    );
    const kept = await api.getProgress(series);
    assert.equal(kept?.chapter, 5, "the page turn is what the server keeps");
    assert.equal(
      Date.parse(kept!.updated_at),
      Date.parse(landed!.updated_at) + 1,
      "just after the write it met",
    );
    const view = store.getSnapshot();
    assert.equal(view.pendingCount, 0);
    assert.equal(view.bySeries.get(series)?.chapter, 5);
    assert.equal(view.notices.size, 0);
    assert.equal(view.lastError, null);
    await client.realtime.disconnect();
  },
);

Deno.test(
  {
    name:
      "outbox: a write refused as older than this device's later page turn ('self', another tab's, a higher number) is not sent again after it",
    ...noSanitize,
  },
  async () => {
    const { user, client, api } = await device();
    const series = seriesId("own-later");
    // Tab B queues a page turn; tab A takes it over and turns the next page (a higher number), and sends it.
    const { tabB } = await tabsWithLaterPageTurnSent(user.id, api, series);
    // Tab B sends its earlier page turn without having taken over what tab A did (tabs without Web Locks):
    // refused as older than the later one, which is what the server keeps.
    assert.deepEqual(await flushOutbox(tabB, api, options()), { outcome: "done" });
    assert.equal((await api.getProgress(series))?.chapter, 5, "the later page turn is kept");
    assert.equal(tabB.getSnapshot().pendingCount, 0);
    await client.realtime.disconnect();
  },
);

Deno.test(
  {
    name:
      "outbox: a page kept in the back/forward cache while the site's data was cleared, the tab that got a later page turn answered closed since, does not send its stale page turn again after that later one ('self') when it is restored: the reader is not taken back a page",
    ...noSanitize,
  },
  async () => {
    const { user, client, api } = await device();
    const series = seriesId("kept-through-clear");
    // Tab B queues a page turn and is kept in the back/forward cache (it hears nothing more); tab A takes it
    // over, turns the next page (a higher number) and gets it answered, then closes.
    const { storage, tabB } = await tabsWithLaterPageTurnSent(user.id, api, series);
    storage.clear(); // the reader clears the site's data: nothing names the later page turn answered any more
    tabB.rereadStorage(); // tab B's page is restored (pageshow, persisted): it finds the clear
    assert.deepEqual(
      tabB.pendingWrites().map((w) => w.chapter),
      [4],
      "its page turn, held while kept, waits",
    );
    const { answers, counted } = answersKept(api);
    assert.deepEqual(await flushOutbox(tabB, counted, options()), { outcome: "done" });
    assert.equal((await api.getProgress(series))?.chapter, 5, "the later page turn is kept");
    assert.deepEqual(answers, [[4, false]], "refused as older than the later page turn, and not sent again");
    const view = tabB.getSnapshot();
    assert.equal(view.pendingCount, 0);
    assert.equal(view.bySeries.get(series)?.chapter, 5, "tab B shows the later page turn");
    assert.equal(view.notices.size, 0, "this device's own later write: no conflict to tell");
    await client.realtime.disconnect();
  },
);

Deno.test(
  {
    name:
      "outbox: a page kept in the back/forward cache while the site's data was cleared writes its stale page turn back when it is restored; a tab that takes it from the saved outbox (opened then, or that page reloaded before it sent) does not send it again after the later one ('self') either",
    ...noSanitize,
  },
  async () => {
    const { user, client, api } = await device();
    const series = seriesId("kept-through-clear-taken");
    const { storage, tabB } = await tabsWithLaterPageTurnSent(user.id, api, series);
    storage.clear(); // the reader clears the site's data: nothing names the later page turn answered any more
    tabB.rereadStorage(); // tab B's page is restored: it finds the clear and writes its page turn back
    // Before tab B sends it (offline), the reader reloads that page (or opens another tab): the new page
    // takes the page turn from the saved outbox.
    const tabC = new SyncStore(user.id, defaultCompareRows);
    tabC.attachStorage(storage);
    assert.deepEqual(tabC.pendingWrites().map((w) => w.chapter), [4], "taken from the saved outbox");
    const { answers, counted } = answersKept(api);
    assert.deepEqual(await flushOutbox(tabC, counted, options()), { outcome: "done" });
    assert.equal((await api.getProgress(series))?.chapter, 5, "the later page turn is kept");
    assert.deepEqual(answers, [[4, false]], "refused as older than the later page turn, and not sent again");
    assert.equal(tabC.getSnapshot().pendingCount, 0);
    await client.realtime.disconnect();
  },
);

Deno.test("outbox: a page turn sent again after the write of this device it met ('self') and whose answer was lost is not stored a second time when it goes again", async () => {
  // The server as it judges one device's writes: refused when older than the stored key ('self'), a replay
  // when the same key and position. The far-ahead write is stored at 10_000; the page turn was dated 5_000.
  const versions: { updated_at: string; chapter: number }[] = [];
  const row = (write: { updated_at: string; chapter: number; series_id: string }) => ({
    ...pendingWrite(write.series_id, write.updated_at, "e-reader", write.chapter),
    user_id: "reader",
    synced_at: write.updated_at,
    change_xid: String(versions.length),
    created_at: write.updated_at,
  });
  versions.push({ updated_at: new Date(10_000).toISOString(), chapter: 4 });
  const server = (write: Parameters<OutboxTransport["updateProgress"]>[0]) => {
    const last = versions.at(-1)!;
    const order = Date.parse(write.updated_at) - Date.parse(last.updated_at);
    if (order < 0) {
      return {
        won: false,
        conflict: null,
        conflict_with: null,
        progress: row({ ...last, series_id: write.series_id }),
      };
    }
    if (order > 0 || last.chapter !== write.chapter) {
      versions.push({ updated_at: write.updated_at, chapter: write.chapter });
    }
    return { won: true, conflict: null, conflict_with: null, progress: row(write) };
  };
  // The second request (the page turn sent again) is stored, and its answer lost on its way back.
  const sent: string[] = [];
  const request = <T>(writes: Parameters<OutboxTransport["updateProgress"]>[0][], results: () => T) => {
    sent.push(...writes.map((w) => w.updated_at));
    const answered = results();
    if (sent.length === 2) return Promise.reject(new NetworkError(0, "network_error", "Failed to fetch"));
    return Promise.resolve(answered);
  };
  type Result = Awaited<ReturnType<OutboxTransport["updateProgress"]>>;
  const api: OutboxTransport = {
    updateProgress: (write) => request([write], () => server(write) as unknown as Result),
    updateProgressBatch: (writes) => request(writes, () => writes.map(server) as unknown as Result[]),
  };
  const store = new SyncStore("reader", defaultCompareRows);
  store.addPending(pending("book", 5_000, 5, "e-reader"));
  const first = await flushOutbox(store, api, options());
  assert.equal(first.outcome, "failed");
  assert.equal(store.getSnapshot().pendingCount, 1);
  assert.deepEqual(await flushOutbox(store, api, options()), { outcome: "done" });
  assert.deepEqual(
    versions.map((v) => [v.chapter, Date.parse(v.updated_at)]),
    [[4, 10_000], [5, 10_001]],
    "stored once, just after",
  );
  assert.equal(store.getSnapshot().pendingCount, 0);
  assert.equal(store.getSnapshot().bySeries.get("book")?.chapter, 5);
});

Deno.test(
  {
    name:
      "outbox: a stale write of another tab is not sent again after this device's later page turn ('self') once that page turn's name left the tabs' list of answered writes and the latest answered of each series kept (more than 200 answered since)",
    ...noSanitize,
  },
  async () => {
    const { user, client, api } = await device();
    const series = seriesId("own-later-rolled-over");
    // Tab B queues a page turn; tab A takes it over, turns the next page (a higher number) and sends it.
    const { storage, tabA, tabB, now } = await tabsWithLaterPageTurnSent(user.id, api, series);
    // Then more writes of other series are answered than the list remembers (200): the page turn's name is
    // no longer in it.
    const others = Array.from({ length: 201 }, (_, i) => seriesId(`other-${i}`));
    others.forEach((other, i) => tabA.addPending(pending(other, now - 1_000 + i, 1, "e-reader")));
    assert.deepEqual(await flushOutbox(tabA, api, options()), { outcome: "done" });
    const list = JSON.parse(storage.getItem(tabA.answeredKey) ?? "[]") as { series_id: string }[];
    assert.ok(!list.some((named) => named.series_id === series), "the later page turn left the list");
    // Nor is it among the latest answered write of each series, kept for the 200 highest numbered series.
    const latest = JSON.parse(storage.getItem(tabA.latestAnsweredKey) ?? "[]") as { series_id: string }[];
    assert.ok(
      !latest.some((named) => named.series_id === series),
      "the later page turn left the latest kept",
    );
    assert.equal(latest.length, 200);
    // Tab B sends its earlier page turn without having taken over what tab A did (tabs without Web Locks):
    // refused as older than the later one, which is what the server keeps.
    assert.deepEqual(await flushOutbox(tabB, api, options()), { outcome: "done" });
    assert.equal((await api.getProgress(series))?.chapter, 5, "the later page turn is kept");
    assert.equal(tabB.getSnapshot().pendingCount, 0);
    assert.equal(tabB.getSnapshot().bySeries.get(series)?.chapter, 5);
    await client.realtime.disconnect();
  },
);

for (const site of ["storage", "site data blocked"] as const) {
  Deno.test(
    {
      name:
        `outbox (${site}): a page turn made while this device's far-ahead write is on its way is sent after the key that write was stored under, once it is known: no request is refused ('self'), and the view shows the page turn throughout`,
      ...noSanitize,
    },
    async () => {
      const { client, api, store } = await device();
      if (site === "storage") store.attachStorage(memoryStorage());
      const series = seriesId("far-ahead-key-known");
      const { clock, onItsWay, release } = farAheadWriteToHold(store, series);
      let hold = true;
      // Every write request's answers, in order: [chapter, won].
      const answers: [number, boolean][] = [];
      const counted: OutboxTransport = {
        updateProgress: async (write) => {
          const result = await api.updateProgress(write);
          answers.push([write.chapter, result.won]);
          return result;
        },
        updateProgressBatch: async (writes) => {
          if (hold) {
            hold = false;
            onItsWay.resolve();
            await release.promise;
          }
          const results = await api.updateProgressBatch(writes);
          results.forEach((result, i) => answers.push([writes[i].chapter, result.won]));
          return results;
        },
      };
      const sending = flushOutbox(store, counted, options());
      await onItsWay.promise;
      const turn = datedWrite(store, clock, series, { chapter: 5, page: 1, percentage: 0.5 }, "e-reader");
      store.addPending(turn);
      // What the view shows of the series from the page turn on: now, and at every change after.
      const shown = [store.getSnapshot().bySeries.get(series)?.chapter];
      const unsubscribe = store.subscribe(() =>
        shown.push(store.getSnapshot().bySeries.get(series)?.chapter)
      );
      try {
        release.resolve();
        assert.deepEqual(await sending, { outcome: "done" });
        const landed = await api.getProgress(series);
        assert.equal(landed?.chapter, 4);
        assert.ok(
          Date.parse(landed!.updated_at) > Date.parse(turn.updated_at),
          "the far-ahead write is stored at the server's now, after the page turn's date",
        );
        // Between the two sends: the page turn waits, and it is what the view shows (it will be sent after
        // the far-ahead write's key), not the position it replaced.
        let view = store.getSnapshot();
        assert.equal(view.pendingCount, 1, "the page turn still waits");
        assert.equal(view.bySeries.get(series)?.chapter, 5, "the view shows the page turn while it waits");
        assert.equal(view.bySeries.get(series)?.pending, true);
        assert.deepEqual(await flushOutbox(store, counted, options()), { outcome: "done" });
        const kept = await api.getProgress(series);
        assert.equal(kept?.chapter, 5, "the page turn is what the server keeps");
        assert.equal(
          Date.parse(kept!.updated_at),
          Date.parse(landed!.updated_at) + 1,
          "just after the write it met",
        );
        assert.deepEqual(answers, [[4, true], [5, true]], "one request each, none refused");
        assert.deepEqual(shown.filter((chapter) => chapter !== 5), [], `shown: ${shown.join(", ")}`);
        view = store.getSnapshot();
        assert.equal(view.pendingCount, 0);
        assert.equal(view.bySeries.get(series)?.chapter, 5);
        assert.equal(view.notices.size, 0);
        assert.equal(view.lastError, null);
      } finally {
        unsubscribe();
        await client.realtime.disconnect();
      }
    },
  );
}
