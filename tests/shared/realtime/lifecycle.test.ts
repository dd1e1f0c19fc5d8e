// What a RealtimeService leaves on its supabase-js client once it is done with it: close() hands the
// client its own token source back, and nothing done later (a late token callback, a refused
// subscribe through the shared api.ts entry point) may take it again or keep the service open.

import assert from "node:assert/strict";
import { subscribeToProgress } from "../../../shared/progress/api.ts";
import { RealtimeService } from "../../../shared/realtime/realtimeService.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";

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
