// What a RealtimeService leaves on its supabase-js client once it is done with it: close() hands the
// client its own token source back, and nothing done later (a late token callback, a refused
// subscribe through the shared api.ts entry point) may take it again or keep the service open.

import assert from "node:assert/strict";
import { subscribeToProgress } from "../../../shared/progress/api.ts";
import { RealtimeService } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { watchTimers } from "./watchTimers.ts";

const USER = "00000000-0000-4000-8000-0000000000d1";
const quiet = { log: () => {}, pollIntervalMs: 60_000 };

Deno.test("lifecycle: a token set after close() is ignored (the client keeps its own token source)", async () => {
  const { client, realtime } = fakeClient();
  const service = new RealtimeService(client, {
    ...quiet,
    accessToken: "T1",
    changesSince: () => Promise.resolve({ changes: [], next_cursor: "1", has_more: false }),
  });
  assert.notEqual(realtime.accessToken, null, "the service's token source is installed while it lives");
  await service.close();
  assert.equal(realtime.accessToken, null, "close() restores the client's own source");
  await service.setAccessToken("T2-late"); // a session refresh landing after the app unmounted
  assert.equal(realtime.accessToken, null, "still the client's own source");
  assert.notEqual(realtime.accessTokenValue, "T2-late", "the late token was not set on the client");
});

Deno.test("lifecycle: a refused subscribeToProgress does not keep the shared service open", async () => {
  const { client, realtime } = fakeClient();
  const options = {
    ...quiet,
    accessToken: "T1",
    api: { timeoutMs: 1_000, retry: { attempts: 1 } },
  };
  assert.throws(() => subscribeToProgress(client, "", () => {}, options), /userId is required/);
  const live = subscribeToProgress(client, USER, () => {}, options);
  await live.unsubscribe();
  assert.throws(
    () => live.service.subscribeToProgress(USER, () => {}),
    /closed/,
    "the last unsubscribe closed the shared service",
  );
  assert.equal(realtime.accessToken, null, "and gave the client its own token source back");
});

Deno.test("lifecycle: a changesSince that throws instead of returning a rejected promise fails the read and leaves no request timer behind", async () => {
  const timers = watchTimers();
  const { client, channel } = fakeClient();
  const service = new RealtimeService(client, {
    ...quiet,
    accessToken: "T1",
    heartbeatReplyTimeoutMs: 0,
    requestTimeoutMs: 77_000, // its timer, told apart from the others by its delay
    backoff: { initialMs: 600_000, maxMs: 600_000 }, // no rejoin within the test
    random: () => 0.5,
    // A plain (not async) function whose argument check throws at once.
    changesSince: () => {
      throw new Error("bad cursor");
    },
  });
  const subscription = service.subscribeToProgress(USER, () => {});
  const heard: string[] = [];
  subscription.onRead((outcome) => heard.push(outcome));
  try {
    (await channel(1)).state!("CHANNEL_ERROR", new Error("Realtime down")); // polls at once
    await waitFor(
      "the failed poll, its end handled",
      () => heard.length === 1 && subscription.status === "offline",
    );
    assert.deepEqual(heard, ["failed"]);
    // The next poll's timer (a minute and a half: the first failure's step) and the rejoin's, not the
    // failed call's timeout, which nothing would clear until it fired.
    assert.deepEqual(timers.pending().sort((a, b) => a - b), [90_000, 300_000]);
    assert.equal(service.stats().timers, 2);
  } finally {
    await service.close();
    timers.restore();
  }
});

Deno.test("lifecycle: a channel whose teardown() throws is still removed: logged, counted out, the rejoin and unsubscribe() go on, and no promise is left to reject unheard", async () => {
  const { client, channel } = fakeClient();
  // realtime-js's teardown failing (a socket gone in a state it did not expect): every channel's.
  const makeChannel = client.channel.bind(client);
  (client as unknown as { channel: typeof client.channel }).channel = (...args) => {
    const made = makeChannel(...args);
    (made as unknown as { teardown(): void }).teardown = () => {
      throw new Error("teardown failed");
    };
    return made;
  };
  const events: string[] = [];
  const service = new RealtimeService(client, {
    pollIntervalMs: 60_000,
    backoff: { initialMs: 50, maxMs: 100 },
    random: () => 0.5,
    changesSince: () => Promise.resolve({ changes: [], next_cursor: "1", has_more: false }),
    log: (line) => events.push(JSON.parse(line).event),
  });
  const subscription = service.subscribeToProgress(USER, () => {});
  try {
    const first = await channel(1);
    first.state!("SUBSCRIBED");
    await waitFor("live", () => subscription.status === "live");
    first.state!("CHANNEL_ERROR", new Error("socket closed")); // released: its teardown throws
    const second = await channel(2); // the rejoin waited for that removal, failed or not
    second.state!("SUBSCRIBED");
    await waitFor("live again", () => subscription.status === "live");
    assert.equal(events.filter((e) => e === "channel_teardown_failed").length, 1);
    assert.equal(service.stats().channels, 1, "the first channel counted out");
  } finally {
    await subscription.unsubscribe(); // its channel's teardown throws too: unsubscribe still resolves
    await service.close();
  }
  assert.equal(events.filter((e) => e === "channel_teardown_failed").length, 2);
  assert.equal(service.stats().channels, 0);
  // A rejection left unheard is reported by Deno after the test's own microtasks: let them run.
  await new Promise((resolve) => setTimeout(resolve, 0));
});
