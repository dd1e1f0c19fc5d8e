// A catch-up or poll refused 401 (its token expired) is made again as soon as a new token comes
// (setAccessToken(), supabase.auth's TOKEN_REFRESHED), not after the polls' backoff: a joined link
// would otherwise show offline for that long (10-20 s by default) with a token that works. Once per
// new token: a read refused again waits for the next one (the same token set again is none), and a
// read that failed for anything else keeps the backoff. Against the stand-in client, changesSince
// answered by hand; the polls' backoff is 15 minutes here, so a read that comes within the tests' hang
// guards (waitFor) is one the new token made, and the read scheduled is read off the timers pending
// (watchTimers): no timer runs by itself, none is fired, nothing sleeps.

import assert from "node:assert/strict";
import type { SupabaseClient } from "@supabase/supabase-js";
import type { RealtimeStatus } from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";
import { handAnsweredService, version } from "./handAnsweredService.ts";
import { pendingFor, watchTimers } from "./watchTimers.ts";

const MINUTES = 600_000;
/** The first failed read's wait: 1.5 poll intervals with random() = 0.5 (the polls' backoff). */
const BACKOFF_MS = 900_000;

const answered = (chapter: number) => ({
  changes: [version(chapter)],
  next_cursor: String(100 + chapter),
  has_more: false,
});
const expired = () => Object.assign(new Error("token_expired"), { status: 401, code: "token_expired" });

/** A service joined, its catch-up in flight (call 1), with the polls' backoff minutes long. */
async function joinedCatchingUp(options = {}, fake = fakeClient()) {
  const link = handAnsweredService({
    pollIntervalMs: MINUTES,
    livePollIntervalMs: 0,
    heartbeatReplyTimeoutMs: 0,
    backoff: { initialMs: MINUTES, maxMs: MINUTES },
    random: () => 0.5,
    ...options,
  }, fake);
  const statuses: RealtimeStatus[] = [];
  link.subscription.onStatus((status) => statuses.push(status));
  (await link.channel(1)).state!("SUBSCRIBED");
  await waitFor("the catch-up", () => link.calls.length === 1);
  return { link, statuses };
}

/**
 * `body` run on a service joined with its catch-up in flight (joinedCatchingUp), the timers watched
 * from before it was made; afterwards the timers are restored and the service ended. `makeFake` (run
 * once the timers are watched) gives the stand-in client, e.g. one with a session.
 */
async function withJoinedLink(
  body: (
    joined: Awaited<ReturnType<typeof joinedCatchingUp>> & { timers: ReturnType<typeof watchTimers> },
  ) => Promise<void>,
  options = {},
  makeFake = fakeClient,
) {
  const timers = watchTimers();
  let joined: Awaited<ReturnType<typeof joinedCatchingUp>> | undefined;
  try {
    joined = await joinedCatchingUp(options, makeFake());
    await body({ ...joined, timers });
  } finally {
    timers.restore();
    await joined?.link.end();
  }
}

/** Refuses call `n` (1-based) and waits until the read after it is scheduled after the backoff. */
async function refuse(
  link: ReturnType<typeof handAnsweredService>,
  timers: ReturnType<typeof watchTimers>,
  n: number,
  error: Error = expired(),
) {
  link.calls[n - 1].reject(error);
  await waitFor("offline", () => link.subscription.status === "offline");
  await waitFor("the backoff's read scheduled", () => pendingFor(timers, BACKOFF_MS));
}

Deno.test("401 catch-up: a new token (setAccessToken) reads at once and the link goes live, not after the backoff", () =>
  withJoinedLink(async ({ link, statuses, timers }) => {
    await refuse(link, timers, 1);
    await link.service.setAccessToken("T2");
    await waitFor("the read with the new token", () => link.calls.length === 2, { timeoutMs: 5_000 });
    assert.ok(!pendingFor(timers, BACKOFF_MS), "made in place of the backoff's read");
    link.calls[1].resolve(answered(3));
    await waitFor("live", () => link.subscription.status === "live");
    assert.deepEqual(link.changes, [{ chapter: 3, source: "catchup" }]);
    assert.deepEqual(statuses, ["offline", "live"]);
  }));

Deno.test("401 catch-up: once per new token: refused again it waits (the same token set again is none), the next token reads once more", () =>
  withJoinedLink(async ({ link, timers }) => {
    await refuse(link, timers, 1);
    await link.service.setAccessToken("T2");
    await waitFor("the read with T2", () => link.calls.length === 2, { timeoutMs: 5_000 });
    await refuse(link, timers, 2); // T2 refused too: the backoff's read, no loop
    await link.service.setAccessToken("T2");
    // A read made for a token replaces the backoff's read before setAccessToken() resolves: still pending.
    assert.ok(pendingFor(timers, BACKOFF_MS), "the same token again makes no read");
    assert.equal(link.calls.length, 2);
    await link.service.setAccessToken("T3");
    await waitFor("the read with T3", () => link.calls.length === 3, { timeoutMs: 5_000 });
    link.calls[2].resolve(answered(4));
    await waitFor("live", () => link.subscription.status === "live");
    assert.equal(link.calls.length, 3);
  }));

Deno.test("401 catch-up: a read that failed for anything else keeps the polls' backoff when a token comes", () =>
  withJoinedLink(async ({ link, timers }) => {
    await refuse(link, timers, 1, Object.assign(new Error("service_unavailable"), { status: 503 }));
    await link.service.setAccessToken("T2");
    assert.ok(pendingFor(timers, BACKOFF_MS), "the backoff's read still scheduled: no read now");
    assert.equal(link.calls.length, 1);
    assert.equal(link.subscription.status, "offline");
  }));

Deno.test("401 catch-up: refused for a token replaced while it was under way, it is read again at once", () =>
  withJoinedLink(async ({ link, timers }) => {
    await link.service.setAccessToken("T2"); // while the catch-up (sent with T1) is in flight
    assert.equal(link.calls.length, 1, "the read in flight decides");
    link.calls[0].reject(expired());
    await waitFor("the read with T2", () => link.calls.length === 2, { timeoutMs: 5_000 });
    link.calls[1].resolve(answered(3));
    await waitFor("live", () => link.subscription.status === "live");
    assert.ok(!pendingFor(timers, BACKOFF_MS));
  }));

Deno.test("401 catch-up: supabase.auth's TOKEN_REFRESHED reads at once too (a client with a session)", () => {
  let announce: (event: string, session: { access_token: string } | null) => void = () => {};
  const withSession = () => {
    const fake = fakeClient();
    (fake.client as unknown as { auth: Pick<SupabaseClient["auth"], "onAuthStateChange"> }).auth = {
      onAuthStateChange: ((callback: typeof announce) => {
        announce = callback;
        return { data: { subscription: { unsubscribe: () => {} } } };
      }) as unknown as SupabaseClient["auth"]["onAuthStateChange"],
    };
    return fake;
  };
  return withJoinedLink(
    async ({ link, timers }) => {
      await refuse(link, timers, 1);
      announce("TOKEN_REFRESHED", { access_token: "S2" });
      await waitFor("the read with the refreshed session", () => link.calls.length === 2, {
        timeoutMs: 5_000,
      });
      await refuse(link, timers, 2);
      announce("SIGNED_IN", { access_token: "S2" }); // the same token again (a tab shown again)
      assert.ok(pendingFor(timers, BACKOFF_MS), "the same token again makes no read");
      assert.equal(link.calls.length, 2);
      announce("TOKEN_REFRESHED", { access_token: "S3" });
      await waitFor("the read with S3", () => link.calls.length === 3, { timeoutMs: 5_000 });
      link.calls[2].resolve(answered(3));
      await waitFor("live", () => link.subscription.status === "live");
    },
    { accessToken: undefined },
    withSession,
  );
});

Deno.test("401 poll: a link polling while its channel is down reads at once with a new token", () =>
  withJoinedLink(async ({ link, timers }) => {
    link.calls[0].resolve(answered(1));
    await waitFor("live", () => link.subscription.status === "live");
    (await link.channel(1)).state!("CHANNEL_ERROR", new Error("socket closed")); // polls at once
    await waitFor("the poll", () => link.calls.length === 2);
    await refuse(link, timers, 2);
    await link.service.setAccessToken("T2");
    await waitFor("the read with T2", () => link.calls.length === 3, { timeoutMs: 5_000 });
    link.calls[2].resolve(answered(2));
    await waitFor("polling", () => link.subscription.status === "polling");
    assert.deepEqual(link.changes.map((c) => c.chapter), [1, 2]);
  }));
