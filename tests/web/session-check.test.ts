// The web app's session checks (examples/web/lib/client/sessionCheck.ts and TokenKeeper.refresh):
// when another tab says the session changed, and when a tab is shown again or back online. GET
// /auth/token is stubbed (the web server's route; a relative URL has no server in Deno).

import assert from "node:assert/strict";
import { SignedOutError, TokenKeeper } from "../../examples/web/lib/client/tokenKeeper.ts";
import { createSessionCheck, SHOWN_CHECK_INTERVAL_MS } from "../../examples/web/lib/client/sessionCheck.ts";

const realFetch = globalThis.fetch;
const USER = "11111111-1111-4111-8111-111111111111";
const inSeconds = (s: number) => Math.floor(Date.now() / 1000) + s;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Leaves recorded instead of navigating. */
function leaves() {
  const left: string[] = [];
  const leaveIfSignedOut = (error: unknown) => {
    if (error instanceof SignedOutError) left.push(error.userChanged ? "reload" : "/sign-in");
  };
  return { left, leaveIfSignedOut };
}

Deno.test("a sign-out heard while a token request is under way is checked with a request of its own", async () => {
  let signedIn = true;
  // The first request is held until the test lets it answer: the sign-out is heard while it is under
  // way, by order rather than by how long Auth takes.
  const firstArrived = Promise.withResolvers<void>();
  const answerFirst = Promise.withResolvers<void>();
  let requests = 0;
  globalThis.fetch = (async () => {
    const wasSignedIn = signedIn; // the server reads the session when the request arrives
    if (++requests === 1) {
      firstArrived.resolve();
      await answerFirst.promise; // and Auth is slow to answer
    }
    return wasSignedIn
      ? Response.json({ accessToken: "tok-2", expiresAt: inSeconds(3600), userId: USER })
      : Response.json({ error: "signed_out" }, { status: 401 });
  }) as typeof fetch;
  try {
    const tokens = new TokenKeeper("tok-1", inSeconds(3600), { userId: USER });
    const { left, leaveIfSignedOut } = leaves();
    const session = createSessionCheck({ tokens, leaveIfSignedOut, syncNow: () => Promise.resolve("done") });
    const shown = session.shown(); // the tab was shown: a check is under way
    await firstArrived.promise;
    signedIn = false; // another tab signs out and says so
    const changed = session.sessionChanged();
    answerFirst.resolve();
    await Promise.all([shown, changed]);
    assert.deepEqual(left, ["/sign-in"]);
    assert.equal(requests, 2, "the sign-out was checked with a request of its own");
  } finally {
    globalThis.fetch = realFetch;
  }
});

Deno.test("a tab shown again reads at once while Auth is slow, and asks /auth/token at most every 30 s", async () => {
  let requests = 0;
  // Auth is slow: a token request is answered only when the test lets it (after it has seen the read).
  const unanswered: Array<() => void> = [];
  const answerAll = () => unanswered.splice(0).forEach((answer) => answer());
  globalThis.fetch = ((_: unknown, init?: RequestInit) => {
    requests++;
    return new Promise((resolve, reject) => {
      init?.signal?.addEventListener("abort", () => reject(init.signal!.reason));
      unanswered.push(() =>
        resolve(Response.json({ accessToken: "tok-1", expiresAt: inSeconds(3600), userId: USER }))
      );
    });
  }) as typeof fetch;
  try {
    let clock = 1_000_000;
    const tokens = new TokenKeeper("tok-1", inSeconds(3600), { userId: USER });
    let reads = 0;
    const session = createSessionCheck({
      tokens,
      leaveIfSignedOut: () => {},
      syncNow: () => {
        reads++;
        return Promise.resolve("done");
      },
      now: () => clock,
    });
    const first = session.shown();
    assert.equal(reads, 1, "the read went out before /auth/token answered");
    assert.equal(requests, 1, "and the session is checked beside it");
    answerAll();
    await guarded(first, "the first shown()");
    clock += SHOWN_CHECK_INTERVAL_MS - 1;
    await guarded(session.shown(), "shown() again within 30 s");
    assert.deepEqual([reads, requests], [2, 1], "shown again within 30 s: read, no new check");
    clock += 2;
    const third = session.shown();
    assert.deepEqual([reads, requests], [3, 2], "after 30 s: checked again");
    answerAll();
    await guarded(third, "shown() after 30 s");
  } finally {
    globalThis.fetch = realFetch;
  }
});

Deno.test("a tab shown again with a token about to run out reads only once it has a fresh one", async () => {
  const order: string[] = [];
  // The token's answer is held until the test has seen the request arrive with nothing read yet,
  // by order rather than by how long Auth takes: a read that does not wait for it has gone by then.
  const arrived = Promise.withResolvers<void>();
  const answer = Promise.withResolvers<void>();
  globalThis.fetch = (async () => {
    arrived.resolve();
    await answer.promise;
    order.push("token");
    return Response.json({ accessToken: "tok-2", expiresAt: inSeconds(3600), userId: USER });
  }) as typeof fetch;
  try {
    const tokens = new TokenKeeper("tok-1", inSeconds(30), { userId: USER });
    const session = createSessionCheck({
      tokens,
      leaveIfSignedOut: () => {},
      syncNow: () => {
        order.push(`read with ${tokens.current}`);
        return Promise.resolve("done");
      },
    });
    const shown = session.shown();
    await guarded(arrived.promise, "the token request");
    assert.deepEqual(order, [], "nothing read while the token request is under way");
    answer.resolve();
    await guarded(shown, "shown() to end");
    assert.deepEqual(order, ["token", "read with tok-2"]);
  } finally {
    globalThis.fetch = realFetch;
  }
});

Deno.test("a tab shown again with a token about to expire: the read after the check ends failed, and shown() ends as before", async () => {
  globalThis.fetch = (() =>
    Promise.resolve(
      Response.json({ accessToken: "tok-2", expiresAt: inSeconds(3600), userId: USER }),
    )) as typeof fetch;
  try {
    const tokens = new TokenKeeper("tok-1", inSeconds(5), { userId: USER }); // below the read's wait
    const { left, leaveIfSignedOut } = leaves();
    const read = Promise.withResolvers<string>();
    const session = createSessionCheck({
      tokens,
      leaveIfSignedOut,
      // As a subscription's syncNow(): a read that fails resolves "failed" (it never rejects).
      syncNow: () => {
        read.resolve(tokens.current);
        return Promise.resolve("failed");
      },
    });
    await session.shown();
    assert.equal(await read.promise, "tok-2", "the read was made after the check, with the fresh token");
    assert.deepEqual(left, []);
  } finally {
    globalThis.fetch = realFetch;
  }
});

Deno.test("the read is a subscription's syncNow(): a function resolving anything but how a read ended does not fit", () => {
  const tokens = new TokenKeeper("tok-1", inSeconds(3600), { userId: USER });
  createSessionCheck({
    tokens,
    leaveIfSignedOut: () => {},
    // @ts-expect-error: resolves no ReadOutcome ("done" | "behind" | "failed")
    syncNow: () => Promise.resolve(),
  });
});

/** Timers of the test's own that never run by themselves (the backoff's waits stay waiting). */
function stoppedTimers() {
  const armed = new Set<number>();
  let next = 1;
  return {
    setTimeout: (_run: () => void, _ms: number): unknown => (armed.add(next), next++),
    clearTimeout: (handle: unknown) => void armed.delete(handle as number),
    armed,
  };
}

/** Resolves once `done()` holds, polled; fails after `ms` (a hang guard, not a measurement). */
async function until(what: string, done: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(5);
  }
}

/** Settles with `promise`, or fails after `ms` (a hang guard, not a measurement). */
function guarded<T>(promise: Promise<T>, what: string, ms = 20_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

Deno.test("another tab's word whose check gets no answer is asked again at once when the tab is shown again (not at the backoff's wait); another user's answer reloads", async () => {
  let requests = 0;
  globalThis.fetch = (() => {
    requests++;
    if (requests === 1) return Promise.reject(new TypeError("Failed to fetch"));
    if (requests === 2) return Promise.resolve(Response.json({ error: "auth_unavailable" }, { status: 503 }));
    const other = "22222222-2222-4222-8222-222222222222";
    return Promise.resolve(
      Response.json({ accessToken: "tok-b", expiresAt: inSeconds(3600), userId: other }),
    );
  }) as typeof fetch;
  try {
    const tokens = new TokenKeeper("tok-1", inSeconds(3600), { userId: USER });
    const { left, leaveIfSignedOut } = leaves();
    const timers = stoppedTimers();
    const session = createSessionCheck({
      tokens,
      leaveIfSignedOut,
      syncNow: () => Promise.resolve("done"),
      timers,
    });
    const changed = session.sessionChanged();
    assert.ok(session.unsure(), "not sure until answered");
    // Failures that say nothing: each leaves a backoff wait armed (on timers that never run).
    await until("the first failure's wait", () => requests === 1 && timers.armed.size === 1);
    assert.deepEqual(left, [], "no answer yet, nothing decided");
    session.sessionChanged(); // another word meanwhile: the same check, its wait cut short
    await until("the second failure's wait", () => requests === 2 && timers.armed.size === 1);
    assert.deepEqual(left, [], "a 503 decides nothing either");
    session.shown(); // shown again: asked now, not when the wait runs out
    await guarded(changed, "the check to be answered");
    assert.deepEqual([...new Set(left)], ["reload"], "signed in as another user: the page reloads");
    assert.equal(session.unsure(), null);
    assert.equal(timers.armed.size, 0, "no wait left armed");
  } finally {
    globalThis.fetch = realFetch;
  }
});
