// When RealtimeService retries a failed channel at once (a join whose token was replaced while it
// was in flight) and when it keeps the jittered backoff. The decision only, against a stand-in of
// the few supabase-js calls the service makes for a channel (the real client is exercised by
// tests/integration/realtime-auth-refresh.test.ts): an immediate retry for anything else would
// bring back the reconnect herd the backoff exists to prevent.

import assert from "node:assert/strict";
import type { SupabaseClient } from "@supabase/supabase-js";
import { RealtimeService } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
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

/**
 * A service on the stand-in with the token T1 and a quick backoff (50-100 ms), the names of the
 * events it logs in `events`; its reads find nothing new until refuse(code, message) has them
 * refused 401 with that API code (refuse() lets them through again).
 */
function quickService(client: SupabaseClient) {
  const events: string[] = [];
  let refusal: { code: string; message: string } | undefined;
  const service = new RealtimeService(client, {
    changesSince: () =>
      refusal
        ? Promise.reject(Object.assign(new Error(refusal.message), { status: 401, code: refusal.code }))
        : Promise.resolve({ changes: [], cursor: "1", has_more: false }),
    accessToken: "T1",
    backoff: { initialMs: 50, maxMs: 100 },
    random: () => 0.5,
    pollIntervalMs: 60_000,
    log: (line) => events.push(JSON.parse(line).event),
  });
  const refuse = (code?: string, message = "") => {
    refusal = code === undefined ? undefined : { code, message };
  };
  return { service, events, refuse };
}

/** Channel #n of the stand-in answered SUBSCRIBED, and the subscription live. */
async function joinLive(
  channel: ReturnType<typeof fakeClient>["channel"],
  n: number,
  subscription: { status: string },
) {
  const joined = await channel(n);
  joined.state!("SUBSCRIBED");
  await waitFor("live", () => subscription.status === "live");
  return joined;
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

Deno.test("token retry: a join refused because its token expired is not made again with that token: held (polling meanwhile) until a new one comes, then made at once", async () => {
  const { client, channel } = fakeClient();
  const { service, events } = quickService(client);
  const subscription = service.subscribeToProgress("00000000-0000-4000-8000-000000000004", () => {});
  try {
    // The app's token ran out while it fetches the next one (a laptop that slept past its expiry).
    (await channel(1)).state!("CHANNEL_ERROR", new Error("InvalidJWTToken: Token has expired 3 seconds ago"));
    const held = () => events.filter((e) => e === "join_held_token_expired").length;
    // Each step of the backoff asks for the token again, and holds the join while it is T1.
    await waitFor("held at two steps of the backoff", () => held() >= 2);
    assert.equal(service.stats().joinAttempts, 1, "no join made again with the expired token");
    assert.equal(client.getChannels().length, 0);
    await waitFor("polling meanwhile", () => subscription.status === "polling");
    await service.setAccessToken("T2");
    await joinLive(channel, 2, subscription);
    assert.equal(service.stats().joinAttempts, 2);
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});

Deno.test("token retry: a token the progress API refused as expired (401 token_expired) is not sent in a rejoin: held (polling meanwhile) until a new one comes, then joined at once", async () => {
  // A laptop waking after its token ran out: the dropped socket's poll reaches the API before the
  // rejoin, and Realtime has not said anything of the token yet.
  const { client, channel } = fakeClient();
  const { service, events, refuse } = quickService(client);
  const subscription = service.subscribeToProgress("00000000-0000-4000-8000-000000000005", () => {});
  const count = (event: string) => events.filter((e) => e === event).length;
  try {
    const first = await joinLive(channel, 1, subscription);
    refuse("token_expired", "Token has expired"); // asleep past the token's expiry
    first.state!("CHANNEL_ERROR", new Error("socket closed")); // woken: the socket is gone
    await waitFor("the poll refused for the expired token", () => count("poll_failed") >= 1);
    // Each step of the backoff holds the join while the token is T1 (before: channel #2 made with T1).
    await waitFor("held at two steps of the backoff", () => count("join_held_token_expired") >= 2);
    assert.equal(service.stats().joinAttempts, 1, "no join made with the token the API refused as expired");
    assert.equal(client.getChannels().length, 0);
    refuse();
    await service.setAccessToken("T2");
    await joinLive(channel, 2, subscription);
    assert.equal(service.stats().joinAttempts, 2);
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});

Deno.test("token retry: a read refused 401 for another reason than expiry (invalid_token) does not hold the rejoin", async () => {
  const { client, channel } = fakeClient();
  const { service, events, refuse } = quickService(client);
  const subscription = service.subscribeToProgress("00000000-0000-4000-8000-000000000006", () => {});
  try {
    const first = await joinLive(channel, 1, subscription);
    refuse("invalid_token", "bad signature");
    first.state!("CHANNEL_ERROR", new Error("socket closed"));
    await waitFor("the poll refused", () => events.includes("poll_failed"));
    await channel(2); // the rejoin goes (Realtime judges the token itself)
    assert.equal(events.includes("join_held_token_expired"), false);
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});
