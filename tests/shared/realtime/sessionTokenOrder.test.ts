// Session tokens announced out of order (two refreshes of a session racing, the older one's event
// last: another tab's, which auth-js hands on from its BroadcastChannel): the service keeps the newer
// one (it puts it back on Realtime, where supabase-js's own listener has just set the older one, and
// reads with it). Which is older is read from the tokens themselves (same user, `iat`, then `exp`);
// anything it cannot judge so is taken in the order announced, as before, and a sign-out starts over.
// The end to end case (real supabase-js, the stack's Realtime) is in
// tests/integration/realtime-auth-reread.test.ts.

import assert from "node:assert/strict";
import type { SupabaseClient } from "@supabase/supabase-js";
import { RealtimeService } from "../../../shared/realtime/realtimeService.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";

const USER = "00000000-0000-4000-8000-0000000000d1";
const OTHER = "00000000-0000-4000-8000-0000000000d2";

/** A JWT's shape with these claims (never verified here: only its claims are read). */
function jwt(claims: Record<string, unknown>): string {
  const part = (value: unknown) =>
    btoa(JSON.stringify(value)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}.signature`;
}

/**
 * A service on a stand-in client with a session: `announce` is supabase.auth announcing an event to the
 * service's listener, after doing what supabase-js's own listener does first (Realtime's setAuth with
 * any token that differs from the last it heard of).
 */
function sessionService() {
  const fake = fakeClient();
  let listener: (event: string, session: { access_token: string } | null) => void = () => {};
  let supabaseJsHeard: string | undefined;
  (fake.client as unknown as { auth: Pick<SupabaseClient["auth"], "onAuthStateChange"> }).auth = {
    onAuthStateChange: ((callback: typeof listener) => {
      listener = callback;
      return { data: { subscription: { unsubscribe: () => {} } } };
    }) as unknown as SupabaseClient["auth"]["onAuthStateChange"],
  };
  const logs: Record<string, unknown>[] = [];
  const service = new RealtimeService(fake.client, {
    changesSince: () => new Promise(() => {}),
    heartbeatReplyTimeoutMs: 0,
    joinGraceMs: Infinity,
    log: (line) => logs.push(JSON.parse(line)),
  });
  const subscription = service.subscribeToProgress(USER, () => {});
  const announce = (event: string, token: string | null) => {
    if (event === "SIGNED_OUT") supabaseJsHeard = undefined;
    else if (token !== supabaseJsHeard) {
      supabaseJsHeard = token!;
      void fake.realtime.setAuth(token);
    }
    listener(event, token === null ? null : { access_token: token });
  };
  const ignored = () => logs.filter((l) => l.event === "auth_token_older_ignored").length;
  return { fake, service, subscription, announce, ignored };
}

Deno.test("session tokens announced out of order: the newer is kept; what cannot be judged is taken as announced", async () => {
  const newest = jwt({ sub: USER, iat: 2_000, exp: 5_600 });
  const cases: [string, string[], string, number][] = [
    // [what, tokens announced in turn after `newest`, the token kept, how many were older]
    ["issued before it", [jwt({ sub: USER, iat: 1_000, exp: 4_600 })], newest, 1],
    ["issued in the same second, expiring sooner", [jwt({ sub: USER, iat: 2_000, exp: 5_000 })], newest, 1],
    [
      "issued after it",
      [jwt({ sub: USER, iat: 3_000, exp: 4_000 })],
      jwt({ sub: USER, iat: 3_000, exp: 4_000 }),
      0,
    ],
    ["the same token again", [newest], newest, 0],
    [
      "another user's",
      [jwt({ sub: OTHER, iat: 1_000, exp: 4_600 })],
      jwt({ sub: OTHER, iat: 1_000, exp: 4_600 }),
      0,
    ],
    ["no JWT", ["opaque-token"], "opaque-token", 0],
    ["without iat or exp", [jwt({ sub: USER })], jwt({ sub: USER }), 0],
  ];
  for (const [what, later, kept, older] of cases) {
    const { fake, service, subscription, announce, ignored } = sessionService();
    try {
      announce("TOKEN_REFRESHED", newest);
      for (const token of later) announce("TOKEN_REFRESHED", token);
      await Promise.resolve();
      assert.equal(fake.realtime.accessTokenValue, kept, `${what}: Realtime's token`);
      assert.equal(service.readToken, kept, `${what}: the token read with`);
      assert.equal(ignored(), older, `${what}: logged as older`);
    } finally {
      await subscription.unsubscribe();
      await service.close();
    }
  }
});

Deno.test("session tokens: after a sign-out, the next sign-in's token is taken whenever it was issued", async () => {
  const { fake, service, subscription, announce, ignored } = sessionService();
  try {
    const earlier = jwt({ sub: USER, iat: 1_000, exp: 4_600 });
    announce("SIGNED_IN", jwt({ sub: USER, iat: 2_000, exp: 5_600 }));
    announce("SIGNED_OUT", null);
    announce("SIGNED_IN", earlier);
    await Promise.resolve();
    assert.equal(fake.realtime.accessTokenValue, earlier);
    assert.equal(service.readToken, earlier);
    assert.equal(ignored(), 0);
  } finally {
    await subscription.unsubscribe();
    await service.close();
  }
});
