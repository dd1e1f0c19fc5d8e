// When RealtimeService retries a failed channel at once (a join whose token was replaced while it
// was in flight) and when it keeps the jittered backoff. The decision only, against a stand-in of
// the few supabase-js calls the service makes for a channel (the real client is exercised by
// tests/integration/realtime-auth-refresh.test.ts): an immediate retry for anything else would
// bring back the reconnect herd the backoff exists to prevent.

import assert from "node:assert/strict";
import type { SupabaseClient } from "@supabase/supabase-js";
import { RealtimeService } from "../../../shared/realtime/realtimeService.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";

function serviceOn(client: SupabaseClient, accessToken?: string) {
  const retries: number[] = [];
  const service = new RealtimeService(client, {
    changesSince: () => Promise.resolve({ changes: [], cursor: "1", has_more: false }),
    ...(accessToken ? { accessToken } : {}),
    backoff: { initialMs: 5_000, maxMs: 5_000 },
    random: () => 0.5,
    pollIntervalMs: 60_000,
    log: (line) => {
      const entry = JSON.parse(line);
      if (entry.event === "realtime_unavailable") retries.push(entry.retry_in_ms);
    },
  });
  return { service, retries };
}

Deno.test("token retry: a live channel whose token was refreshed keeps the backoff when Realtime drops", async () => {
  const { client, channel } = fakeClient();
  const { service, retries } = serviceOn(client, "T1");
  const subscription = service.subscribeToProgress("00000000-0000-4000-8000-000000000001", () => {});
  try {
    const first = await channel(1);
    first.state!("SUBSCRIBED");
    await service.setAccessToken("T2"); // an hour later: realtime-js sends it to the joined channel
    first.state!("CHANNEL_ERROR", new Error("socket closed")); // Realtime restarts
    // Drawn above the 1.6 s teardown floor (a joined channel dropped): half-way from it to 5 s.
    assert.deepEqual(retries, [3_300], "jittered backoff, not an immediate rejoin");
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});

Deno.test("token retry: a join refused after its token was replaced is retried at once, but only once", async () => {
  const { client, channel } = fakeClient();
  const { service, retries } = serviceOn(client, "T1");
  const subscription = service.subscribeToProgress("00000000-0000-4000-8000-000000000002", () => {});
  try {
    const first = await channel(1);
    await service.setAccessToken("T2"); // lands while the join (with T1) is in flight
    first.state!("CHANNEL_ERROR", new Error("Token has expired"));
    assert.deepEqual(retries, [0], "the new token is tried at once");
    const second = await channel(2);
    await service.setAccessToken("T3");
    second.state!("CHANNEL_ERROR", new Error("refused again"));
    assert.deepEqual(retries, [0, 2_500], "a second failure before any join waits out the backoff");
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});

Deno.test("token retry: a token source that answers a new token on every call does not remove the backoff", async () => {
  let n = 0;
  const { client, channel } = fakeClient(() => `T${++n}`);
  const { service, retries } = serviceOn(client);
  const subscription = service.subscribeToProgress("00000000-0000-4000-8000-000000000003", () => {});
  try {
    (await channel(1)).state!("TIMED_OUT"); // Realtime unreachable; the join asked for a new token
    if (retries[0] === 0) (await channel(2)).state!("TIMED_OUT"); // the one immediate retry, also lost
    assert.equal(retries.at(-1), 2_500, `retries ${retries}: the backoff is back after one try at most`);
    assert.ok(retries.length <= 2, `retries ${retries}`);
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});
