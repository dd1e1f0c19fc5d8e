// The progress function's handler served on its own local port (real HTTP, real database) with an
// environment the shared gateway cannot give it: a database that is down (503), asymmetric signing
// keys (ES256 / RS256 through SUPABASE_JWKS or a JWKS URL), a key server that is down (503), a
// capturing log sink for the structured conflict and 408 lines, and short body time limits (408).

import assert from "node:assert/strict";
import { base64url, exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";
import { createJwtVerifier, JwtError } from "../../shared/auth/jwt.ts";
import { defaultLog } from "../../shared/progress/handler.ts";
import { createProgressHandlerFromEnv } from "../../shared/progress/server.ts";
import { writeResultSchema } from "../../shared/progress/schemas.ts";
import { createTestUser } from "../support/env.ts";
import {
  adminSql,
  call,
  closedPort,
  errorOf,
  rawRequest,
  seriesId,
  serveLocal,
  snapshot,
  testEnv,
  write,
} from "./support.ts";

type Entry = Record<string, unknown>;

/** createProgressHandlerFromEnv behind a local Deno.serve; `run` gets the function's base URL. */
async function withFunction(
  vars: Record<string, string>,
  run: (base: string, logs: Entry[]) => Promise<void>,
  options: { bodyIdleTimeoutMs?: number; bodyTotalTimeoutMs?: number } = {},
): Promise<void> {
  const logs: Entry[] = [];
  const handler = createProgressHandlerFromEnv(
    { get: (name) => vars[name] },
    { log: (entry) => logs.push(entry), ...options },
  );
  const server = serveLocal(handler);
  try {
    await run(`${server.url}/progress`, logs);
  } finally {
    await server.shutdown();
    await handler.close();
  }
}

async function esKey(kid: string) {
  const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid, alg: "ES256", use: "sig" };
  return { privateKey, jwk };
}

function userClaims(userId: string) {
  return { sub: userId, role: "authenticated", aud: "authenticated", email: `${userId}@readsync.test` };
}

async function signAs(
  alg: "ES256" | "RS256",
  kid: string,
  key: CryptoKey,
  claims: Record<string, unknown>,
  expiresIn: string | number = "1h",
) {
  return await new SignJWT(claims).setProtectedHeader({ alg, kid, typ: "JWT" }).setIssuedAt()
    .setExpirationTime(expiresIn).sign(key);
}

Deno.test("503 when the database is unreachable (a closed port), with Retry-After, and no 500", async () => {
  const env = testEnv();
  const user = await createTestUser();
  await withFunction(
    {
      SUPABASE_DB_URL: `postgresql://postgres:postgres@127.0.0.1:${closedPort()}/postgres`,
      SUPABASE_JWT_SECRET: env.jwtSecret!,
    },
    async (base, logs) => {
      for (
        const [method, path, body] of [
          ["POST", "", write({ series_id: seriesId("down") })],
          ["POST", "/batch", { writes: [write({ series_id: seriesId("down") })] }],
          ["GET", "", undefined],
          ["GET", "/changes", undefined],
          ["GET", "/series/x", undefined],
          ["DELETE", `/series/x?device_id=d&updated_at=2026-01-01T00:00:00Z`, undefined],
        ] as const
      ) {
        const answer = await call(method, path, { base, token: user.accessToken, body });
        assert.equal(answer.status, 503, `${method} ${path}: ${JSON.stringify(answer.body)}`);
        assert.equal(errorOf(answer).code, "service_unavailable");
        assert.ok(answer.headers.get("retry-after"), "Retry-After tells the client when to try again");
      }
      assert.ok(logs.length >= 6);
      assert.ok(
        logs.every((l) => l.event === "dependency_unavailable" && l.level === "warn"),
        JSON.stringify(logs[0]),
      );
      // Validation and auth still answer first: a bad body is 400/422 and a bad token 401, never 503.
      assert.equal(
        (await call("POST", "", { base, token: user.accessToken, body: { nope: 1 } })).status,
        400,
      );
      assert.equal((await call("GET", "", { base })).status, 401);
    },
  );
});

Deno.test("PROGRESS_DB_URL (e.g. the transaction pooler) is used instead of SUPABASE_DB_URL when set", async () => {
  // SUPABASE_DB_URL points at a closed port: the write lands only if PROGRESS_DB_URL is the one used.
  const env = testEnv();
  const user = await createTestUser();
  await withFunction(
    {
      SUPABASE_DB_URL: `postgresql://postgres:postgres@127.0.0.1:${closedPort()}/postgres`,
      PROGRESS_DB_URL: env.dbUrl,
      SUPABASE_JWT_SECRET: env.jwtSecret!,
    },
    async (base) => {
      const answer = await call("POST", "", {
        base,
        token: user.accessToken,
        body: write({ series_id: seriesId("pooler") }),
      });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
    },
  );
});

Deno.test("asymmetric tokens: ES256 through SUPABASE_JWKS works end to end; a foreign key or no JWKS is 401", async () => {
  const env = testEnv();
  const user = await createTestUser();
  const good = await esKey("key-2026");
  const rogue = await esKey("key-2026"); // same kid, different key
  const jwks = JSON.stringify({ keys: [good.jwk] });

  await withFunction(
    { SUPABASE_DB_URL: env.dbUrl, SUPABASE_JWKS: jwks, SUPABASE_JWT_SECRET: env.jwtSecret! },
    async (base) => {
      const token = await signAs("ES256", "key-2026", good.privateKey, userClaims(user.id));
      const series = seriesId("es256");
      const posted = await call("POST", "", { base, token, body: write({ series_id: series, chapter: 4 }) });
      assert.equal(posted.status, 200, JSON.stringify(posted.body));
      assert.equal(writeResultSchema.parse(posted.body).progress.user_id, user.id);
      const got = await call("GET", `/series/${series}`, { base, token: user.accessToken });
      assert.equal(got.status, 200, "HS256 tokens still work beside the JWKS (legacy secret configured)");

      const forged = await signAs("ES256", "key-2026", rogue.privateKey, userClaims(user.id));
      const refused = await call("GET", "", { base, token: forged });
      assert.equal(refused.status, 401);
      assert.deepEqual(errorOf(refused).details, { reason: "invalid_signature" });
      const unknownKid = await signAs("ES256", "key-1999", good.privateKey, userClaims(user.id));
      assert.equal((await call("GET", "", { base, token: unknownKid })).status, 401);
      const expired = await signAs(
        "ES256",
        "key-2026",
        good.privateKey,
        userClaims(user.id),
        Math.floor(Date.now() / 1000) - 60,
      );
      const late = await call("GET", "", { base, token: expired });
      assert.equal(late.status, 401);
      assert.equal(errorOf(late).code, "token_expired");
    },
  );

  // Only a JWKS (no legacy secret): HS256 tokens are refused.
  await withFunction({ SUPABASE_DB_URL: env.dbUrl, SUPABASE_JWKS: jwks }, async (base) => {
    const hs = await call("GET", "", { base, token: user.accessToken });
    assert.equal(hs.status, 401);
    assert.deepEqual(errorOf(hs).details, { reason: "unsupported_algorithm" });
  });
});

Deno.test("as `supabase functions serve` (CLI 2.x) configures it: the HS256 secret comes as an oct key in SUPABASE_JWKS or as SUPABASE_INTERNAL_JWT_SECRET", async () => {
  // The CLI sets neither SUPABASE_JWT_SECRET nor JWT_SECRET: only SUPABASE_INTERNAL_JWT_SECRET and a
  // SUPABASE_JWKS whose symmetric key is that secret (beside any signing keys of the project).
  const env = testEnv();
  const user = await createTestUser();
  const es = await esKey("es-serve");
  const octJwk = { kty: "oct", k: base64url.encode(env.jwtSecret!) };
  const asServe: Record<string, string>[] = [
    { SUPABASE_DB_URL: env.dbUrl, SUPABASE_JWKS: JSON.stringify({ keys: [es.jwk, octJwk] }) },
    { SUPABASE_DB_URL: env.dbUrl, SUPABASE_INTERNAL_JWT_SECRET: env.jwtSecret! },
  ];
  for (const vars of asServe) {
    await withFunction(vars, async (base) => {
      const series = seriesId("served");
      const mine = await call("POST", "", {
        base,
        token: user.accessToken,
        body: write({ series_id: series }),
      });
      assert.equal(mine.status, 200, `${Object.keys(vars)}: ${JSON.stringify(mine.body)}`);
      // The service_role key (HS256) acting for the user, as a server of the app would.
      const asUser = await call("GET", `/series/${series}`, {
        base,
        token: env.serviceRoleKey,
        headers: { "x-act-as-user": user.id },
      });
      assert.equal(asUser.status, 200, `${Object.keys(vars)}: ${JSON.stringify(asUser.body)}`);
      // Still a signature check: a token signed with another secret is refused.
      const forged = await new SignJWT(userClaims(user.id)).setProtectedHeader({ alg: "HS256", typ: "JWT" })
        .setIssuedAt().setExpirationTime("1h")
        .sign(new TextEncoder().encode("another-secret-of-at-least-thirty-two-chars"));
      const refused = await call("GET", "", { base, token: forged });
      assert.equal(refused.status, 401);
      assert.deepEqual(errorOf(refused).details, { reason: "invalid_signature" });
    });
  }
  if (env.jwtSecret) {
    const es256 = await signAs("ES256", "es-serve", es.privateKey, userClaims(user.id));
    await withFunction(asServe[0], async (base) => {
      assert.equal(
        (await call("GET", "", { base, token: es256 })).status,
        200,
        "the signing key still works",
      );
    });
  }
});

Deno.test("asymmetric tokens: RS256 through the JWKS URL (<SUPABASE_URL>/auth/v1/.well-known/jwks.json); key server down is 503", async () => {
  const env = testEnv();
  const user = await createTestUser();
  const { publicKey, privateKey } = await generateKeyPair("RS256", { extractable: true });
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid: "rsa-1", alg: "RS256", use: "sig" };
  let jwksFetches = 0;
  const auth = serveLocal((req) => {
    if (new URL(req.url).pathname !== "/auth/v1/.well-known/jwks.json") {
      return new Response("not found", { status: 404 });
    }
    jwksFetches++;
    return Response.json({ keys: [jwk] });
  });
  try {
    await withFunction({ SUPABASE_DB_URL: env.dbUrl, SUPABASE_URL: auth.url }, async (base) => {
      const token = await signAs("RS256", "rsa-1", privateKey, userClaims(user.id));
      const ok = await call("GET", "", { base, token });
      assert.equal(ok.status, 200, JSON.stringify(ok.body));
      assert.equal((await call("GET", "/changes", { base, token })).status, 200);
      assert.equal(jwksFetches, 1, "the key set is fetched once and cached");
    });
  } finally {
    await auth.shutdown();
  }

  await withFunction({
    SUPABASE_DB_URL: env.dbUrl,
    SUPABASE_JWKS_URL: `http://127.0.0.1:${closedPort()}/jwks.json`,
  }, async (base) => {
    const token = await signAs("RS256", "rsa-1", privateKey, userClaims(user.id));
    const down = await call("GET", "", { base, token });
    assert.equal(down.status, 503, JSON.stringify(down.body));
    assert.equal(errorOf(down).code, "service_unavailable");
    assert.equal(down.headers.get("retry-after"), "5");
  });
});

Deno.test("the verifier directly: claims checks and key rotation from a local JWKS to the remote one", async () => {
  const old = await esKey("old");
  const fresh = await esKey("new");
  const verifier = createJwtVerifier({
    jwks: { keys: [old.jwk] },
    remoteKeySet: async (header) => {
      if (header.kid !== "new") throw new Error("unexpected kid");
      return await crypto.subtle.importKey(
        "jwk",
        fresh.jwk as JsonWebKey,
        { name: "ECDSA", namedCurve: "P-256" },
        false,
        ["verify"],
      );
    },
    audience: "authenticated",
    issuer: "https://project.supabase.co/auth/v1",
  });
  const iss = "https://project.supabase.co/auth/v1";
  const id = crypto.randomUUID();
  const claims = await verifier.verify(
    await signAs("ES256", "new", fresh.privateKey, { ...userClaims(id), iss }),
  );
  assert.equal(claims.sub, id, "a kid missing from the local set is found in the remote one");
  assert.equal(
    (await verifier.verify(await signAs("ES256", "old", old.privateKey, { ...userClaims(id), iss }))).sub,
    id,
  );

  const reasons: string[] = [];
  for (
    const token of [
      await signAs("ES256", "old", old.privateKey, { ...userClaims(id), iss: "https://evil.example" }),
      await signAs("ES256", "old", old.privateKey, { ...userClaims(id), iss, aud: "storage" }),
      await new SignJWT({ ...userClaims(id), iss }).setProtectedHeader({ alg: "ES256", kid: "old" })
        .setExpirationTime("1h")
        .setNotBefore("1h").sign(old.privateKey),
    ]
  ) {
    try {
      await verifier.verify(token);
      reasons.push("accepted");
    } catch (error) {
      reasons.push(error instanceof JwtError ? error.code : String(error));
    }
  }
  assert.deepEqual(reasons, ["invalid_issuer", "invalid_audience", "token_not_yet_valid"]);
});

Deno.test("one structured JSON log line per conflict (stale, tie lost, tie won), none for a clean write", async () => {
  const env = testEnv();
  const user = await createTestUser();
  await withFunction(
    { SUPABASE_DB_URL: env.dbUrl, SUPABASE_JWT_SECRET: env.jwtSecret! },
    async (base, logs) => {
      const token = user.accessToken;
      const s = seriesId("log");
      const at = "2026-09-01T10:00:00.000Z";
      await call("POST", "", {
        base,
        token,
        body: write({ series_id: s, chapter: 5, device_id: "dev-m", updated_at: at }),
      });
      assert.equal(logs.length, 0, "a clean write logs nothing");

      await call("POST", "", {
        base,
        token,
        headers: { "x-request-id": "req-stale-1" },
        body: write({ series_id: s, chapter: 2, device_id: "dev-z", updated_at: "2026-09-01T09:00:00Z" }),
      });
      await call("POST", "", {
        base,
        token,
        body: write({ series_id: s, chapter: 3, device_id: "dev-a", updated_at: at }),
      });
      await call("POST", "/batch", {
        base,
        token,
        body: { writes: [write({ series_id: s, chapter: 6, device_id: "dev-n", updated_at: at })] },
      });
      assert.equal(logs.length, 3, JSON.stringify(logs));
      for (const l of logs) {
        assert.equal(l.event, "progress_conflict");
        assert.equal(l.component, "progress");
        assert.equal(l.level, "info");
        assert.equal(l.user_id, user.id);
        assert.equal(l.series_id, s);
        assert.ok(typeof l.ts === "string" && !Number.isNaN(Date.parse(l.ts as string)));
        assert.ok(typeof l.request_id === "string" && (l.request_id as string).length > 0);
      }
      const pick = (
        l: Entry,
      ) => [
        l.kind,
        l.won,
        (l.incoming as Entry).device_id,
        (l.other as Entry).device_id,
        (l.stored as Entry).device_id,
      ];
      assert.deepEqual(logs.map(pick), [
        ["stale", false, "dev-z", "dev-m", "dev-m"],
        ["tie", false, "dev-a", "dev-m", "dev-m"],
        ["tie", true, "dev-n", "dev-m", "dev-n"],
      ]);
      assert.equal(logs[0].request_id, "req-stale-1", "the caller's request id ties the line to the request");
      assert.deepEqual(logs[0].incoming, {
        updated_at: "2026-09-01T09:00:00.000Z",
        device_id: "dev-z",
        chapter: 2,
        page: 1,
        percentage: 0.01,
        cleared: false,
      });
    },
  );

  // The default sink writes exactly one parseable JSON line per entry.
  const lines: string[] = [];
  const original = console.log;
  console.log = (...args: unknown[]) => lines.push(args.map(String).join(" "));
  try {
    defaultLog({ event: "progress_conflict", kind: "tie", nested: { a: 1 } });
  } finally {
    console.log = original;
  }
  assert.equal(lines.length, 1);
  assert.ok(!lines[0].includes("\n"));
  assert.deepEqual(JSON.parse(lines[0]), { event: "progress_conflict", kind: "tie", nested: { a: 1 } });
});

Deno.test("bodyIdleTimeoutMs that is not a positive timer delay is refused when the handler is made", () => {
  // 0 (Node's servers read it as "no bound") and values past setTimeout's 2^31-1 ms would answer 408
  // to a body still on its way; NaN would mean no bound unannounced. Infinity says none.
  for (const bodyIdleTimeoutMs of [0, -5, NaN, 2 ** 31, Number.MAX_SAFE_INTEGER]) {
    assert.throws(
      () => createProgressHandlerFromEnv({ get: () => undefined }, { bodyIdleTimeoutMs }),
      RangeError,
      String(bodyIdleTimeoutMs),
    );
  }
  for (const bodyIdleTimeoutMs of [undefined, 1, Infinity]) {
    createProgressHandlerFromEnv({ get: () => undefined }, { bodyIdleTimeoutMs });
  }
});

Deno.test("bodyTotalTimeoutMs is checked as bodyIdleTimeoutMs is, when the handler is made", () => {
  for (const bodyTotalTimeoutMs of [0, -5, NaN, 2 ** 31, Number.MAX_SAFE_INTEGER]) {
    assert.throws(
      () => createProgressHandlerFromEnv({ get: () => undefined }, { bodyTotalTimeoutMs }),
      (e: unknown) => e instanceof RangeError && /bodyTotalTimeoutMs/.test(e.message),
      String(bodyTotalTimeoutMs),
    );
  }
  for (const bodyTotalTimeoutMs of [undefined, 1, Infinity]) {
    createProgressHandlerFromEnv({ get: () => undefined }, { bodyTotalTimeoutMs });
  }
});

/** A request head for the raw-socket tests (`Connection: close`: the answer ends the exchange). */
function rawHead(base: string, method: string, path: string, token: string, framing: string): string {
  const url = new URL(`${base}${path}`);
  return `${method} ${url.pathname}${url.search} HTTP/1.1\nHost: ${url.host}\nAuthorization: Bearer ${token}\n` +
    `Content-Type: application/json\n${framing}\nConnection: close`;
}

Deno.test("408 request_timeout: a body that stalls mid-way is cut off after the idle bound (write, batch, reset), no row written, one info log line each", async () => {
  const env = testEnv();
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const before = await snapshot(sql, [user.id]);
    await withFunction(
      { SUPABASE_DB_URL: env.dbUrl, SUPABASE_JWT_SECRET: env.jwtSecret! },
      async (base, logs) => {
        const series = seriesId("stall");
        const one = JSON.stringify(write({ series_id: series, chapter: 9 }));
        const batch = JSON.stringify({ writes: [JSON.parse(one)] });
        const reset = `/series/${series}?device_id=d1&updated_at=2026-05-01T00:00:09Z`;
        const cases = [
          // Part of the body, then nothing: the connection stays open (no half-close).
          ["single write", "POST", "", `Content-Length: ${one.length}`, one.slice(0, 20)],
          [
            "batch, chunked",
            "POST",
            "/batch",
            "Transfer-Encoding: chunked",
            `${batch.length.toString(16)}\r\n${batch.slice(0, 15)}`,
          ],
          ["batch, nothing of the body", "POST", "/batch", `Content-Length: ${batch.length}`, ""],
          // Chunked: the headers cannot tell an empty body, so the reset waits for its first byte (a
          // Content-Length above 0 is refused at once: the next test).
          ["reset, chunked, nothing of the body", "DELETE", reset, "Transfer-Encoding: chunked", ""],
        ] as const;
        const requestIds: string[] = [];
        const received: unknown[] = [];
        for (const [what, method, path, framing, part] of cases) {
          const answer = await rawRequest(
            base,
            rawHead(base, method, path, user.accessToken, framing),
            (send) => part === "" ? Promise.resolve() : send(part),
          );
          assert.equal(answer.status, 408, `${what}: ${JSON.stringify(answer.body)}`);
          const error = errorOf(answer);
          assert.equal(error.code, "request_timeout", what);
          assert.match(error.message, /stopped arriving/, what);
          // received_bytes: what the server had handed over when the bound ran out (at most the part sent).
          const details = error.details as { idle_timeout_ms: number; received_bytes: number };
          assert.deepEqual(
            Object.keys(details).sort(),
            ["bound", "idle_timeout_ms", "received_bytes", "total_timeout_ms"],
            what,
          );
          assert.deepEqual(
            [details.idle_timeout_ms, (details as { bound?: string }).bound],
            [300, "idle"],
            what,
          );
          assert.equal((details as { total_timeout_ms?: number }).total_timeout_ms, 30_000, what);
          assert.ok(details.received_bytes >= 0 && details.received_bytes <= part.length, what);
          assert.match(answer.head, /^connection: close$/m, what);
          assert.match(answer.headers.get("content-type") ?? "", /^application\/json/, what);
          assert.ok(answer.headers.get("x-request-id"), what);
          requestIds.push(answer.headers.get("x-request-id")!);
          received.push(details.received_bytes);
        }
        // A client's stall is no failure of the server: nothing logged at warn or error, but one info line
        // per 408 (written before the answer), with the bound, what had arrived and the user: never the body.
        assert.deepEqual(logs.filter((l) => l.level !== "info"), []);
        const timeouts = logs.filter((l) => l.event === "request_timeout");
        assert.deepEqual(timeouts.map((l) => l.request_id), requestIds, JSON.stringify(logs));
        timeouts.forEach((l, i) => {
          const [what, method, path] = cases[i];
          assert.ok(typeof l.ts === "string" && !Number.isNaN(Date.parse(l.ts)), what);
          const { ts: _ts, ...rest } = l;
          assert.deepEqual(rest, {
            level: "info",
            component: "progress",
            event: "request_timeout",
            request_id: requestIds[i],
            method,
            path: new URL(`${base}${path}`).pathname,
            user_id: user.id,
            code: "request_timeout",
            bound: "idle",
            idle_timeout_ms: 300,
            total_timeout_ms: 30_000,
            received_bytes: received[i],
          }, what);
        });
      },
      { bodyIdleTimeoutMs: 300 },
    );
    assert.equal(await snapshot(sql, [user.id]), before, "a timed-out request wrote no row");
  } finally {
    await sql.end();
  }
});

Deno.test("408: the idle bound is on idleness, not on the whole body: a slow but steady body longer than it is read and written", async () => {
  const env = testEnv();
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  // The function's default idle bound (10 s), far above any stall of a loaded machine: the sender
  // below is in this process, and a stall of it as long as the bound is a real idle body to the
  // function (a 2 s bound here made a 408 of a stall). No total bound: only the idle one is tested.
  const boundMs = 10_000;
  try {
    await withFunction(
      { SUPABASE_DB_URL: env.dbUrl, SUPABASE_JWT_SECRET: env.jwtSecret! },
      async (base) => {
        const series = seriesId("slow");
        const batch = JSON.stringify({ writes: [write({ series_id: series, chapter: 11 })] });
        const answer = await rawRequest(
          base,
          rawHead(base, "POST", "/batch", user.accessToken, "Transfer-Encoding: chunked"),
          async (send) => {
            // One space (JSON whitespace before the value) every 100 ms, well inside the bound, until
            // a timer set before the first of them has fired, a second past the bound; then the batch.
            // A timer never fires early: the body took longer than the bound by construction (no
            // reading of the clock), and a bound on the whole body would have cut it off.
            let longEnough = false;
            const timer = setTimeout(() => (longEnough = true), boundMs + 1_000);
            try {
              while (!longEnough) {
                await send("1\r\n \r\n");
                await new Promise((resolve) => setTimeout(resolve, 100));
              }
            } finally {
              clearTimeout(timer);
            }
            await send(`${batch.length.toString(16)}\r\n${batch}\r\n0\r\n\r\n`);
          },
        );
        assert.equal(answer.status, 200, JSON.stringify(answer.body));
        const [row] = await sql<{ chapter: number }[]>`
          select chapter from public.reading_progress where user_id = ${user.id} and series_id = ${series}`;
        assert.equal(row?.chapter, 11);
      },
      { bodyIdleTimeoutMs: boundMs, bodyTotalTimeoutMs: Infinity },
    );
  } finally {
    await sql.end();
  }
});

Deno.test("408 request_timeout: a body that keeps dripping under the idle bound is cut off after the total bound, no row written, logged", async () => {
  const env = testEnv();
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    const before = await snapshot(sql, [user.id]);
    await withFunction(
      { SUPABASE_DB_URL: env.dbUrl, SUPABASE_JWT_SECRET: env.jwtSecret! },
      async (base, logs) => {
        // A chunked batch that opens `{"writes":[` and then sends a space every 20 ms (valid JSON so far,
        // and never idle near the 10 s idle bound) for as long as no answer has come: only a bound on
        // the whole body ends it. Without one, the hang guard does (no answer within 20 s).
        const answer = await rawRequest(
          base,
          rawHead(base, "POST", "/batch", user.accessToken, "Transfer-Encoding: chunked"),
          async (send, answered) => {
            try {
              await send(`b\r\n{"writes":[\r\n`);
              while (!answered.aborted) {
                await send("1\r\n \r\n");
                await new Promise((resolve) => setTimeout(resolve, 20));
              }
            } catch (error) {
              // The server may close the connection once it has answered; a write failing then is no news.
              if (!answered.aborted) throw error;
            }
          },
          { sendWhileReading: true, guardMs: 20_000 },
        );
        assert.equal(answer.status, 408, JSON.stringify(answer.body));
        const error = errorOf(answer);
        assert.equal(error.code, "request_timeout");
        assert.match(error.message, /did not arrive in full within 500 ms/);
        const { received_bytes, ...bounds } = error.details as { received_bytes: number };
        assert.deepEqual(bounds, { bound: "total", idle_timeout_ms: 10_000, total_timeout_ms: 500 });
        assert.ok(Number.isInteger(received_bytes) && received_bytes >= 0, String(received_bytes));
        assert.match(answer.head, /^connection: close$/m);
        const timeouts = logs.filter((l) => l.event === "request_timeout");
        assert.equal(timeouts.length, 1, JSON.stringify(logs));
        assert.deepEqual(
          [timeouts[0].level, timeouts[0].bound, timeouts[0].user_id, timeouts[0].received_bytes],
          ["info", "total", user.id, received_bytes],
        );
        assert.equal(timeouts[0].request_id, answer.headers.get("x-request-id"));
      },
      { bodyTotalTimeoutMs: 500 },
    );
    assert.equal(await snapshot(sql, [user.id]), before, "a timed-out request wrote no row");
  } finally {
    await sql.end();
  }
});

Deno.test("400 unexpected_body: a reset whose headers declare a body is refused at once, unread (no 408, no 413); chunked at its first byte", async () => {
  const env = testEnv();
  const user = await createTestUser();
  const sql = adminSql({ max: 1 });
  try {
    await withFunction(
      { SUPABASE_DB_URL: env.dbUrl, SUPABASE_JWT_SECRET: env.jwtSecret! },
      async (base, logs) => {
        const series = seriesId("reset-body");
        await call("POST", "", {
          base,
          token: user.accessToken,
          body: write({ series_id: series, chapter: 4 }),
        });
        const before = await snapshot(sql, [user.id]);
        const reset = `/series/${series}?device_id=d1&updated_at=${
          new Date(Date.now() + 1000).toISOString()
        }`;
        // No body bound at all: a request that waited for the body it declares would never be answered
        // (the hang guard would end it), so each answer here came without waiting for the body.
        const cases = [
          ["Content-Length: 10, one byte of it, then nothing", "Content-Length: 10", "{"],
          ["Content-Length: 10, nothing of it", "Content-Length: 10", ""],
          ["a Content-Length over the 64 KiB limit (400, not 413)", "Content-Length: 1000000", ""],
          ["chunked, one byte, then nothing", "Transfer-Encoding: chunked", "1\r\n{\r\n"],
        ] as const;
        const answers = await Promise.all(cases.map(([_what, framing, part]) =>
          rawRequest(
            base,
            rawHead(base, "DELETE", reset, user.accessToken, framing),
            (send) => part === "" ? Promise.resolve() : send(part),
            { guardMs: 20_000 },
          )
        ));
        answers.forEach((answer, i) => {
          const what = cases[i][0];
          assert.equal(answer.status, 400, `${what}: ${JSON.stringify(answer.body)}`);
          const error = errorOf(answer);
          assert.equal(error.code, "invalid_request", what);
          assert.match(error.message, /DELETE takes no body/, what);
          assert.deepEqual(
            (error.details as { issues: { code: string }[] }).issues.map((issue) => issue.code),
            ["unexpected_body"],
            what,
          );
          assert.match(answer.head, /^connection: close$/m, what);
        });
        assert.equal(await snapshot(sql, [user.id]), before, "a refused reset wrote nothing");
        assert.deepEqual(logs.filter((l) => l.event === "request_timeout"), []);
        // A chunked reset whose body is empty is no body: the reset is done, as before.
        const empty = await rawRequest(
          base,
          rawHead(base, "DELETE", reset, user.accessToken, "Transfer-Encoding: chunked"),
          (send) => send("0\r\n\r\n"),
          { guardMs: 20_000 },
        );
        assert.equal(empty.status, 200, JSON.stringify(empty.body));
        const [row] = await sql<{ cleared: boolean }[]>`
          select cleared from public.reading_progress where user_id = ${user.id} and series_id = ${series}`;
        assert.equal(row?.cleared, true);
      },
      { bodyIdleTimeoutMs: Infinity, bodyTotalTimeoutMs: Infinity },
    );
  } finally {
    await sql.end();
  }
});
