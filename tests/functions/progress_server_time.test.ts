// X-Server-Time follows the database's clock when a request reached the database, and the function
// host's only when it did not. On a hosted project the function and PostgreSQL are different machines,
// and it is the database's clock that judges a write's date (the 5 s tolerance for clocks ahead, the
// now() stamps), so a device corrected by the host's clock could still be refused or re-keyed.
//
// Here both run on this machine, so the handler is given a host clock an hour behind (hostClock) and
// served over real HTTP against the real database: an answer dated by the host is an hour off the
// database's clock, one dated by the database lies between two readings of the database's clock taken
// before the request was sent and after its answer arrived (by the test's own admin connection).

import assert from "node:assert/strict";
import { createClient } from "@supabase/supabase-js";
import postgres from "postgres";
import { createJwtVerifier } from "../../shared/auth/jwt.ts";
import { AuthError, createProgressApi, ProgressApiError } from "../../shared/progress/api.ts";
import { createProgressHandler } from "../../shared/progress/handler.ts";
import { writeResultSchema } from "../../shared/progress/schemas.ts";
import { ServerClock } from "../../shared/progress/serverClock.ts";
import { createPostgresProgressStore } from "../../shared/progress/store.ts";
import { createTestUser, mintsTokens } from "../support/env.ts";
import { adminSql, call, closedPort, errorOf, seriesId, serveLocal, testEnv, write } from "./support.ts";

/** How far behind the database the handler's host clock is made to run. */
const HOST_BEHIND_MS = 60 * 60 * 1000;
/** Slack for the brackets below (a clock that is slewed, not stepped): far less than HOST_BEHIND_MS. */
const SLACK_MS = 1_000;

function hostClock(): number {
  return Date.now() - HOST_BEHIND_MS;
}

/** The database's clock in epoch ms, by the test's own connection. */
async function databaseNow(sql: postgres.Sql): Promise<number> {
  const [{ ms }] = await sql<{ ms: number }[]>`
    select pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()) * 1000) as ms`;
  return ms;
}

function serverTime(headers: Headers): number {
  const value = headers.get("x-server-time");
  assert.ok(value, "the answer carries X-Server-Time");
  // The format stays Date#toISOString's: milliseconds, UTC.
  assert.match(value, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  return Date.parse(value);
}

function assertWithin(label: string, value: number, lo: number, hi: number) {
  assert.ok(
    value >= lo - SLACK_MS && value <= hi + SLACK_MS,
    `${label}: X-Server-Time ${new Date(value).toISOString()} is not within ` +
      `[${new Date(lo).toISOString()}, ${new Date(hi).toISOString()}]`,
  );
}

/** The handler over real HTTP with a host clock an hour behind; `run` gets the function's base URL. */
async function withSkewedFunction(
  dbUrl: string,
  run: (base: string) => Promise<void>,
  storeOptions: { lockTimeoutMs?: number } = {},
): Promise<void> {
  const env = testEnv();
  const pool = postgres(dbUrl, { max: 2, prepare: false, onnotice: () => {}, connect_timeout: 5 });
  const handler = createProgressHandler({
    verifier: createJwtVerifier({ secret: env.jwtSecret, audience: "authenticated" }),
    store: createPostgresProgressStore(pool, storeOptions),
    log: () => {},
    hostClock,
  });
  // Also under supabase-js's path (/functions/v1/progress), for the progress API client.
  const server = serveLocal((req) => {
    const url = new URL(req.url);
    if (!url.pathname.startsWith("/functions/v1/")) return handler(req);
    url.pathname = url.pathname.slice("/functions/v1".length);
    return handler(new Request(url, req));
  });
  try {
    await run(`${server.url}/progress`);
  } finally {
    await server.shutdown();
    await pool.end({ timeout: 5 });
  }
}

Deno.test({
  name: "X-Server-Time: the database's clock on every answer that reached the database, not the host's",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const user = await createTestUser();
    const series = seriesId("clock");
    try {
      await withSkewedFunction(testEnv().dbUrl, async (base) => {
        const token = user.accessToken;
        const newer = new Date(Date.now() - 60_000).toISOString();
        const older = new Date(Date.now() - 120_000).toISOString();
        const requests: [string, string, string, unknown, number][] = [
          ["a write", "POST", "", write({ series_id: series, updated_at: newer }), 200],
          // A stale write: refused by the database's rule (200, won false), dated by its clock too.
          [
            "a stale write",
            "POST",
            "",
            write({ series_id: series, updated_at: older, device_id: "dev-other" }),
            200,
          ],
          ["a batch", "POST", "/batch", { writes: [write({ series_id: seriesId("clock-b") })] }, 200],
          ["the library", "GET", "", undefined, 200],
          ["changes", "GET", "/changes", undefined, 200],
          ["one series", "GET", `/series/${series}`, undefined, 200],
          // Not found by the database: it was asked, so its clock.
          ["a series without progress", "GET", `/series/${seriesId("none")}`, undefined, 404],
          [
            "a reset",
            "DELETE",
            `/series/${series}?device_id=dev-test&updated_at=${encodeURIComponent(new Date().toISOString())}`,
            undefined,
            200,
          ],
        ];
        for (const [label, method, path, body, status] of requests) {
          const before = await databaseNow(admin);
          const answer = await call(method, path, { base, token, body });
          const after = await databaseNow(admin);
          assert.equal(answer.status, status, `${label}: ${JSON.stringify(answer.body)}`);
          const at = serverTime(answer.headers);
          assertWithin(label, at, before, after);
          if (label === "a stale write") {
            assert.equal(writeResultSchema.parse(answer.body).conflict, "stale");
          }
          if (label === "a write") {
            // Read in the same transaction as the row's synced_at (the stamp trigger's
            // clock_timestamp()), and before it: no slack needed, both are the database's clock.
            const result = writeResultSchema.parse(answer.body);
            assert.ok(result.won);
            assert.ok(
              at <= Date.parse(result.progress.synced_at),
              `X-Server-Time ${new Date(at).toISOString()} after synced_at ${result.progress.synced_at}`,
            );
          }
        }
      });
    } finally {
      await admin.end();
    }
  },
});

Deno.test({
  name:
    "X-Server-Time: a request refused after it reached the database (a lock timeout, 503) carries the database's clock",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 2 });
    const user = await createTestUser();
    const series = seriesId("clock-locked");
    try {
      await withSkewedFunction(testEnv().dbUrl, async (base) => {
        const token = user.accessToken;
        assert.equal(
          (await call("POST", "", { base, token, body: write({ series_id: series }) })).status,
          200,
        );
        const before = await databaseNow(admin);
        // The row is held by another transaction for as long as the request takes: its write waits
        // for the lock until the store's lock_timeout (55P03) and is answered 503.
        const answer = await admin.begin(async (tx) => {
          await tx`select 1 from public.reading_progress
                    where user_id = ${user.id} and series_id = ${series} for update`;
          return await call("POST", "", {
            base,
            token,
            body: write({ series_id: series, updated_at: new Date().toISOString(), chapter: 2 }),
          });
        });
        const after = await databaseNow(admin);
        assert.equal(answer.status, 503, JSON.stringify(answer.body));
        assert.equal(errorOf(answer).code, "service_unavailable");
        assert.match(errorOf(answer).message, /locked/);
        assertWithin("a lock timeout", serverTime(answer.headers), before, after);
      }, { lockTimeoutMs: 200 });
    } finally {
      await admin.end();
    }
  },
});

Deno.test({
  name:
    "X-Server-Time: the host's clock on answers that never reached the database, corrected once the function has read the database's",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const user = await createTestUser();
    const token = user.accessToken;
    const cases: [
      string,
      string,
      string,
      { token?: string; body?: unknown; headers?: Record<string, string> },
    ][] = [
      ["a preflight", "OPTIONS", "", {
        headers: { origin: "https://reader.example", "access-control-request-method": "POST" },
      }],
      ["no token (401)", "GET", "", {}],
      ["no such route (404)", "GET", "/nowhere", { token }],
      ["a bad body (400)", "POST", "", { token, body: { nope: 1 } }],
    ];
    await withSkewedFunction(testEnv().dbUrl, async (base) => {
      for (const [label, method, path, options] of cases) {
        const before = hostClock();
        const answer = await call(method, path, { base, ...options });
        const after = hostClock();
        assert.ok(answer.status < 500, `${label}: ${answer.status}`);
        assertWithin(label, serverTime(answer.headers), before, after);
      }
      // Once a request has read the database's clock, the same answers carry the host's clock
      // corrected by it: a device hears one clock.
      assert.equal((await call("GET", "", { base, token })).status, 200);
      for (const [label, method, path, options] of cases) {
        const before = await databaseNow(admin);
        const answer = await call(method, path, { base, ...options });
        const after = await databaseNow(admin);
        assert.ok(answer.status < 500, `${label}: ${answer.status}`);
        assertWithin(`${label}, after a reading`, serverTime(answer.headers), before, after);
      }
    }).finally(() => admin.end());
    // The database unreachable (a closed port): 503, and no database clock to give.
    const dead = `postgresql://postgres:postgres@127.0.0.1:${closedPort()}/postgres`;
    await withSkewedFunction(dead, async (base) => {
      const before = hostClock();
      const answer = await call("POST", "", { base, token, body: write({ series_id: seriesId("down") }) });
      const after = hostClock();
      assert.equal(answer.status, 503, JSON.stringify(answer.body));
      assertWithin("the database unreachable", serverTime(answer.headers), before, after);
    });
  },
});

Deno.test({
  name:
    "X-Server-Time: a device that hears an answer refused before the database keeps the database's clock, and its next page turn wins",
  ignore: !mintsTokens,
  fn: async () => {
    const admin = adminSql({ max: 1 });
    const user = await createTestUser();
    const series = seriesId("clock-mixed");
    try {
      await withSkewedFunction(testEnv().dbUrl, async (base) => {
        const origin = base.slice(0, -"/progress".length);
        const clientFor = (token: string) =>
          createClient(origin, testEnv().anonKey, { accessToken: () => Promise.resolve(token) });
        // The reader's device: one clock for its calls, as an app keeps one.
        const clock = new ServerClock();
        const reader = createProgressApi(clientFor(user.accessToken), { clock });
        const tablet = createProgressApi(clientFor(user.accessToken));
        const first = await reader.updateProgress(
          write({ series_id: series, device_id: "reader", chapter: 1, updated_at: reader.now() }),
        );
        assert.ok(first.won);
        // The tablet reads on, after the reader's page (by the database's clock).
        const firstKey = Date.parse(first.progress.updated_at);
        while (await databaseNow(admin) <= firstKey + 1) await new Promise((r) => setTimeout(r, 5));
        const onTablet = await tablet.updateProgress(
          write({ series_id: series, device_id: "tablet", chapter: 2, updated_at: tablet.now() }),
        );
        assert.ok(onTablet.won, JSON.stringify(onTablet));
        // The reader's device then hears an answer that never reached the database (a token the
        // function refuses: 401), then turns the page later than the tablet did.
        const refused = createProgressApi(clientFor("not-a-token"), { clock, retry: { attempts: 1 } });
        await assert.rejects(
          refused.listProgress({ limit: 1 }),
          (e) => e instanceof ProgressApiError && e.status === 401,
        );
        const tabletKey = Date.parse(onTablet.progress.updated_at);
        while (await databaseNow(admin) <= tabletKey + SLACK_MS) await new Promise((r) => setTimeout(r, 20));
        assert.ok(Math.abs(clock.offsetMs) < SLACK_MS, `the reader's clock is off by ${clock.offsetMs} ms`);
        const second = await reader.updateProgress(
          write({ series_id: series, device_id: "reader", chapter: 3, updated_at: reader.now() }),
        );
        assert.ok(second.won, `the page turn after the tablet's was refused: ${JSON.stringify(second)}`);
        assert.equal(second.progress.chapter, 3);
      });
    } finally {
      await admin.end();
    }
  },
});

Deno.test({
  name:
    "the API client's clock: a 401 dated by a host an hour behind does not date the next page turn an hour early",
  ignore: !mintsTokens,
  fn: async () => {
    const user = await createTestUser();
    const series = seriesId("clock-turn");
    await withSkewedFunction(testEnv().dbUrl, async (base) => {
      // The web app's client: supabase-js asking for the current token per request, one clock for
      // every call (createProgressApi). This machine's clock is the database's: nothing to correct.
      let token = user.accessToken;
      const client = createClient(base.replace(/\/progress$/, ""), testEnv().anonKey, {
        accessToken: () => Promise.resolve(token),
      });
      const ereader = createProgressApi(client, { retry: { attempts: 1 } });
      const first = await ereader.updateProgress(
        write({ series_id: series, device_id: "ereader", chapter: 3, page: 5, updated_at: ereader.now() }),
      );
      assert.ok(first.won);
      // The phone turns to page 50, dated by its own (right) clock.
      const phone = await call("POST", "", {
        base,
        token: user.accessToken,
        body: write({
          series_id: series,
          device_id: "phone",
          chapter: 3,
          page: 50,
          updated_at: new Date().toISOString(),
        }),
      });
      assert.equal(phone.status, 200, JSON.stringify(phone.body));
      assert.ok(writeResultSchema.parse(phone.body).won);
      // The e-reader's token ran out (a laptop that slept past it): a 401, refused before the
      // database was asked, by a function instance that has not read the database yet (a hosted
      // project runs many; a cold one dates its answers by its host's own clock, an hour behind the
      // database's, having no reading to correct it by). Same device, same clock.
      token = await user.newAccessToken(-600);
      await withSkewedFunction(testEnv().dbUrl, async (coldBase) => {
        const coldClient = createClient(coldBase.replace(/\/progress$/, ""), testEnv().anonKey, {
          accessToken: () => Promise.resolve(token),
        });
        const onColdInstance = createProgressApi(coldClient, {
          clock: ereader.clock,
          retry: { attempts: 1 },
        });
        await assert.rejects(
          onColdInstance.listProgress(),
          (error) => error instanceof AuthError && error.status === 401,
        );
      });
      token = await user.newAccessToken();
      // The reader, who saw page 50, turns to 51: dated by the database's clock it is the newest
      // write; dated by the host's, an hour before the phone's page 50, it loses and the reader is
      // dragged back.
      const phoneAt = writeResultSchema.parse(phone.body).progress.updated_at;
      const stamp = Date.parse(ereader.now());
      assert.ok(
        stamp > Date.parse(phoneAt),
        `the page turn dated ${new Date(stamp).toISOString()}, page 50 ${phoneAt}`,
      );
      const turn = await ereader.updateProgress(
        write({
          series_id: series,
          device_id: "ereader",
          chapter: 3,
          page: 51,
          updated_at: new Date(stamp).toISOString(),
        }),
      );
      assert.ok(turn.won, `the page turn lost to ${JSON.stringify(turn.progress)}`);
      assert.equal(turn.progress.page, 51);
    });
  },
});
