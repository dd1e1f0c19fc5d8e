// Every error path of the progress function over real HTTP, and proof that no bad request changed a
// row: each request is followed by a comparison of both users' progress and conflict-log rows with a
// snapshot taken before it.
//
// Status of a rejected body or query (shared/progress/schemas.ts):
//   400 invalid_json       not JSON / empty / not UTF-8
//   400 invalid_request    JSON of the wrong shape: a wrong type, a missing or unknown field (user_id!)
//   422 validation_failed  well-typed values outside the data model: ranges, id format, date format,
//                          a reset with a position, batch size, a malformed cursor

import assert from "node:assert/strict";
import { createClient, FunctionRegion } from "@supabase/supabase-js";
import { generateKeyPair, SignJWT } from "jose";
import { mintUserAccessToken, signDevJwt } from "../../local/stack/keys.ts";
import { createTestUser, type TestUser } from "../support/env.ts";
import { PROGRESS_LIMITS } from "../../shared/progress/types.ts";
import {
  adminSql,
  type ApiAnswer,
  call,
  errorOf,
  FUNCTION_URL,
  rawRequest,
  seriesId,
  snapshot,
  testEnv,
  write,
} from "./support.ts";

interface Ctx {
  a: TestUser;
  b: TestUser;
  series: string;
}

/** Runs `fn` with two users (A has one row and one conflict) and asserts nothing changed. */
async function unchanged(fn: (ctx: Ctx) => Promise<void>): Promise<void> {
  const sql = adminSql({ max: 1 });
  try {
    const a = await createTestUser();
    const b = await createTestUser();
    const series = seriesId("err");
    const ok = await call("POST", "", {
      token: a.accessToken,
      body: write({ series_id: series, updated_at: "2026-05-01T00:00:02Z" }),
    });
    assert.equal(ok.status, 200);
    await call("POST", "", {
      token: a.accessToken,
      body: write({ series_id: series, updated_at: "2026-05-01T00:00:01Z" }),
    });
    const before = await snapshot(sql, [a.id, b.id]);
    await fn({ a, b, series });
    assert.equal(await snapshot(sql, [a.id, b.id]), before, "a rejected request changed no row");
  } finally {
    await sql.end();
  }
}

function expectError(
  answer: ApiAnswer,
  status: number,
  code: string,
): { code: string; message: string; details?: unknown } {
  assert.equal(
    answer.status,
    status,
    `expected ${status} ${code}, got ${answer.status} ${JSON.stringify(answer.body)}`,
  );
  assert.match(answer.headers.get("content-type") ?? "", /^application\/json/);
  const error = errorOf(answer);
  assert.equal(error.code, code, JSON.stringify(answer.body));
  assert.ok(
    typeof error.details === "object" && error.details !== null,
    `details is always an object: ${JSON.stringify(answer.body)}`,
  );
  if (code === "invalid_request") {
    // README: a shape error lists its issues ({path, code, message}) in details.issues.
    assert.ok(
      issuePaths(error).length > 0,
      `invalid_request names its issues: ${JSON.stringify(answer.body)}`,
    );
  }
  return error;
}

/**
 * One request written by hand on a TCP connection, for what fetch cannot send: a body shorter than its
 * Content-Length, an unfinished chunked body (the sending side is then closed), a Transfer-Encoding
 * (halfClose false: the server answers a complete request only while the client's side is open; send
 * `Connection: close`). Returns the status and the parsed JSON body of the answer (null when empty).
 */
async function rawHttp(
  head: string,
  body: string | Uint8Array,
  { halfClose = true } = {},
): Promise<{ status: number; body: unknown }> {
  const url = new URL(FUNCTION_URL());
  const conn = await Deno.connect({ hostname: url.hostname, port: Number(url.port || 80) });
  try {
    const start = new TextEncoder().encode(`${head.replaceAll("\n", "\r\n")}\r\n`);
    const rest = typeof body === "string" ? new TextEncoder().encode(body) : body;
    const bytes = new Uint8Array(start.byteLength + rest.byteLength);
    bytes.set(start);
    bytes.set(rest, start.byteLength);
    await conn.write(bytes);
    if (halfClose) await conn.closeWrite();
    let text = "";
    const buffer = new Uint8Array(16 * 1024);
    for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const status = Number(text.match(/^HTTP\/1\.1 (\d{3})/)?.[1]);
    const payload = text.slice(text.indexOf("\r\n\r\n") + 4);
    const chunked = /^transfer-encoding: *chunked/im.test(text.slice(0, text.indexOf("\r\n\r\n")));
    // A chunked answer: "<hex size>\r\n<data>\r\n...0\r\n\r\n"; one data chunk is enough here.
    const json = chunked ? payload.split("\r\n")[1] : payload;
    return { status, body: json === "" ? null : JSON.parse(json) };
  } finally {
    conn.close();
  }
}

const issuePaths = (e: { details?: unknown }) =>
  ((e.details as { issues?: { path: string }[] })?.issues ?? []).map((i) => i.path);

Deno.test("400: malformed, empty and non-UTF-8 bodies", () =>
  unchanged(async ({ a, series }) => {
    const headers = { "content-type": "application/json" };
    expectError(
      await call("POST", "", { token: a.accessToken, headers, rawBody: `{"series_id": "${series}", ` }),
      400,
      "invalid_json",
    );
    expectError(await call("POST", "", { token: a.accessToken, headers, rawBody: "" }), 400, "invalid_json");
    expectError(
      await call("POST", "", {
        token: a.accessToken,
        headers,
        rawBody: new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]),
      }),
      400,
      "invalid_json",
    );
    expectError(
      await call("POST", "/batch", { token: a.accessToken, headers, rawBody: "[1,2" }),
      400,
      "invalid_json",
    );
  }));

Deno.test("400: a member name given twice in one object is refused, never read last-wins (write and batch)", () =>
  unchanged(async ({ a, series }) => {
    // JSON.parse would keep the last chapter (7), another reader the first (1): neither is stored.
    const headers = { "content-type": "application/json" };
    const one = JSON.stringify(write({ series_id: series, chapter: 1, updated_at: "2026-05-01T00:00:09Z" }));
    const twice = `${one.slice(0, -1)},"chapter":7}`;
    const cases: [string, string, string][] = [
      ["", twice, "chapter"],
      ["", `${one.slice(0, -1)},"chap\\u0074er":7}`, "chapter"],
      ["/batch", `{"writes":[${one},${twice}]}`, "writes.1.chapter"],
      ["/batch", `{"writes":[${one}],"writes":[${twice}]}`, "writes"],
    ];
    for (const [path, rawBody, where] of cases) {
      const e = expectError(
        await call("POST", path, { token: a.accessToken, headers, rawBody }),
        400,
        "invalid_request",
      );
      assert.deepEqual(
        (e.details as { issues: unknown[] }).issues.map((i) => ({ ...(i as object), message: "" })),
        [{ path: where, code: "duplicate_member", message: "" }],
        rawBody,
      );
    }
  }));

Deno.test("400: a body cut short (fewer bytes than its Content-Length, an unfinished chunked body)", () =>
  unchanged(async ({ a, series }) => {
    // Seen when a client drops its connection while sending: the sender's fault, so a 400, not a 500.
    const url = new URL(FUNCTION_URL());
    const body = JSON.stringify(write({ series_id: series, chapter: 70 }));
    const reset = `/series/${series}?device_id=d1&updated_at=2026-05-01T00:00:09Z`;
    const head = (method: string, path: string, framing: string) =>
      `${method} ${url.pathname}${path} HTTP/1.1\nHost: ${url.host}\nAuthorization: Bearer ${a.accessToken}\n` +
      `Content-Type: application/json\n${framing}\nConnection: close\n`;
    for (
      const [what, answer] of [
        ["single write", await rawHttp(head("POST", "", `Content-Length: ${body.length + 100}`), body)],
        [
          "batch, chunked",
          await rawHttp(head("POST", "/batch", "Transfer-Encoding: chunked"), `400\r\n{"writes":[`),
        ],
        [
          // Chunked, a chunk's size and none of its data (a Content-Length says a reset has a body: the
          // 400 unexpected_body below, unread).
          "reset, chunked",
          await rawHttp(head("DELETE", reset, "Transfer-Encoding: chunked"), "a\r\n"),
        ],
      ] as const
    ) {
      assert.equal(answer.status, 400, `${what}: ${JSON.stringify(answer.body)}`);
      const error = (answer.body as { error: { code: string; message: string } }).error;
      assert.equal(error.code, "invalid_json", what);
      assert.match(error.message, /ended before it was complete/, what);
    }
    const declared = await rawHttp(head("DELETE", reset, "Content-Length: 10"), "{}");
    assert.equal(declared.status, 400, JSON.stringify(declared.body));
    assert.match((declared.body as { error: { message: string } }).error.message, /DELETE takes no body/);
  }));

Deno.test("400: wrong types, missing and unknown fields (shape errors)", () =>
  unchanged(async ({ a, series }) => {
    const good = write({ series_id: series, updated_at: "2026-05-01T00:00:09Z" });
    let e = expectError(
      await call("POST", "", { token: a.accessToken, body: { ...good, chapter: "5" } }),
      400,
      "invalid_request",
    );
    assert.deepEqual(issuePaths(e), ["chapter"]);
    e = expectError(
      await call("POST", "", { token: a.accessToken, body: { ...good, percentage: null } }),
      400,
      "invalid_request",
    );
    assert.deepEqual(issuePaths(e), ["percentage"]);
    e = expectError(
      await call("POST", "", { token: a.accessToken, body: { ...good, chapter: 1.5 } }),
      400,
      "invalid_request",
    );
    const { device_id: _omit, ...missing } = good;
    e = expectError(await call("POST", "", { token: a.accessToken, body: missing }), 400, "invalid_request");
    assert.deepEqual(issuePaths(e), ["device_id"]);
    expectError(
      await call("POST", "", { token: a.accessToken, body: { ...good, colour: "red" } }),
      400,
      "invalid_request",
    );
    expectError(await call("POST", "", { token: a.accessToken, body: [good] }), 400, "invalid_request");
    expectError(await call("POST", "", { token: a.accessToken, body: "hello" }), 400, "invalid_request");
    expectError(
      await call("POST", "/batch", { token: a.accessToken, body: { writes: good } }),
      400,
      "invalid_request",
    );
    expectError(await call("POST", "/batch", { token: a.accessToken, body: [good] }), 400, "invalid_request");
    expectError(await call("GET", "?limit=abc", { token: a.accessToken }), 400, "invalid_request");
    expectError(await call("GET", "?colour=red", { token: a.accessToken }), 400, "invalid_request");
    expectError(await call("GET", "?limit=1&limit=2", { token: a.accessToken }), 400, "invalid_request");
    // Every repeated parameter is a shape error, whatever its schema (an enum's too), even with one value.
    for (
      const query of [
        "?include_cleared=true&include_cleared=false",
        "?include_cleared=true&include_cleared=true",
        "?cursor=a&cursor=b",
      ]
    ) {
      const e = expectError(await call("GET", query, { token: a.accessToken }), 400, "invalid_request");
      assert.deepEqual(issuePaths(e), [query.slice(1, query.indexOf("="))], query);
    }
    expectError(
      await call("GET", "/changes?since=&since=", { token: a.accessToken }),
      400,
      "invalid_request",
    );
    // A page size is decimal digits: an empty value, a sign, a space, an exponent or hex is no number.
    for (const limit of ["", "%2B5", "%205", "1e2", "0x10", "5.0"]) {
      expectError(await call("GET", `?limit=${limit}`, { token: a.accessToken }), 400, "invalid_request");
      expectError(
        await call("GET", `/changes?limit=${limit}`, { token: a.accessToken }),
        400,
        "invalid_request",
      );
    }
  }));

Deno.test("400: routes without query parameters refuse any, and a reset refuses a body", () =>
  unchanged(async ({ a, b, series }) => {
    const good = write({ series_id: series, chapter: 42, updated_at: "2026-05-01T00:00:09Z" });
    let e = expectError(
      await call("POST", `?user_id=${a.id}&colour=red`, { token: b.accessToken, body: good }),
      400,
      "invalid_request",
    );
    assert.match(e.message, /user_id must not be sent/);
    expectError(
      await call("POST", `/batch?user_id=${a.id}`, { token: b.accessToken, body: { writes: [good] } }),
      400,
      "invalid_request",
    );
    expectError(
      await call("POST", "?colour=red", { token: a.accessToken, body: good }),
      400,
      "invalid_request",
    );
    expectError(
      await call("GET", `/series/${series}?colour=red`, { token: a.accessToken }),
      400,
      "invalid_request",
    );
    e = expectError(
      await call("DELETE", `/series/${series}?device_id=web&updated_at=2026-05-01T00:00:09Z`, {
        token: a.accessToken,
        body: { user_id: b.id },
      }),
      400,
      "invalid_request",
    );
    assert.match(e.message, /DELETE takes no body/);
  }));

Deno.test("a supabase-js client with a region reaches every route (its forceFunctionRegion is not a parameter)", async () => {
  const a = await createTestUser();
  const client = createClient(testEnv().url, testEnv().anonKey, {
    accessToken: () => Promise.resolve(a.accessToken),
  });
  const series = seriesId("region");
  const region = FunctionRegion.UsEast1;
  const calls: [string, "GET" | "POST" | "DELETE", Record<string, unknown>?][] = [
    ["progress", "POST", write({ series_id: series, chapter: 2, updated_at: "2026-05-01T00:00:10Z" })],
    ["progress/batch", "POST", {
      writes: [write({ series_id: series, chapter: 3, updated_at: "2026-05-01T00:00:11Z" })],
    }],
    [`progress/series/${series}`, "GET"],
    ["progress?limit=5", "GET"],
    ["progress/changes?limit=5", "GET"],
  ];
  for (const [name, method, body] of calls) {
    const { error, response } = await client.functions.invoke(name, { method, body, region });
    assert.equal(error, null, `${method} ${name}: ${response?.status}`);
    assert.equal(
      response?.url.includes("forceFunctionRegion=us-east-1"),
      true,
      "supabase-js sent the parameter",
    );
  }
});

Deno.test("400: a user_id in the body is refused, never trusted (single write and batch)", () =>
  unchanged(async ({ a, b, series }) => {
    // B tries to write into A's progress by naming A.
    const forged = {
      ...write({ series_id: series, chapter: 99, updated_at: "2026-05-01T00:00:09Z" }),
      user_id: a.id,
    };
    const e = expectError(
      await call("POST", "", { token: b.accessToken, body: forged }),
      400,
      "invalid_request",
    );
    assert.match(e.message, /user_id must not be sent/);
    expectError(
      await call("POST", "/batch", { token: b.accessToken, body: { writes: [forged] } }),
      400,
      "invalid_request",
    );
    expectError(
      await call("POST", "/batch", {
        token: b.accessToken,
        body: { writes: [write({ series_id: series })], user_id: a.id },
      }),
      400,
      "invalid_request",
    );
    expectError(await call("GET", `?user_id=${a.id}`, { token: b.accessToken }), 400, "invalid_request");
  }));

Deno.test("422: well-typed values outside the data model", () =>
  unchanged(async ({ a, series }) => {
    const good = write({ series_id: series, updated_at: "2026-05-01T00:00:09Z" });
    const cases: [string, unknown, string][] = [
      ["percentage above 1", { ...good, percentage: 1.5 }, "percentage"],
      ["negative chapter", { ...good, chapter: -1 }, "chapter"],
      ["page beyond the limit", { ...good, page: PROGRESS_LIMITS.pageMax + 1 }, "page"],
      ["series id with a space", { ...good, series_id: "bad id" }, "series_id"],
      ["series id of 129 chars", { ...good, series_id: "x".repeat(129) }, "series_id"],
      ["device id with a slash", { ...good, device_id: "a/b" }, "device_id"],
      ["a date without a zone", { ...good, updated_at: "2026-05-01T00:00:09" }, "updated_at"],
      ["not a date", { ...good, updated_at: "yesterday" }, "updated_at"],
      ["before 1970", { ...good, updated_at: "1969-12-31T23:59:59Z" }, "updated_at"],
      // Valid ISO 8601, but in UTC the year 10000, which PostgreSQL cannot read.
      ["after 9999 in UTC", { ...good, updated_at: "9999-12-31T23:59:59.999-14:00" }, "updated_at"],
      ["a reset with a position", { ...good, cleared: true }, "cleared"],
    ];
    for (const [what, body, path] of cases) {
      const e = expectError(await call("POST", "", { token: a.accessToken, body }), 422, "validation_failed");
      assert.deepEqual(issuePaths(e), [path], what);
    }
    // An integer beyond 2^53 (JSON allows it; JavaScript reads 2^53 + 1 as 2^53) is out of range once:
    // one issue naming the field's own bound, not also the safe-integer range's.
    const one = JSON.stringify(good);
    assert.ok(one.includes('"chapter":1,') && one.includes('"page":1,'));
    const huge: [string, string, string, number][] = [
      ["", one.replace('"chapter":1,', '"chapter":9007199254740993,'), "chapter", 100000],
      ["", one.replace('"page":1,', '"page":9007199254740993,'), "page", 1000000],
      ["", one.replace('"page":1,', '"page":1e300,'), "page", 1000000],
      ["", one.replace('"chapter":1,', '"chapter":-9007199254740993,'), "chapter", 0],
      [
        "/batch",
        `{"writes":[${one},${one.replace('"chapter":1,', '"chapter":9007199254740993,')}]}`,
        "writes.1.chapter",
        100000,
      ],
    ];
    for (const [route, rawBody, path, bound] of huge) {
      const headers = { "content-type": "application/json" };
      const e = expectError(
        await call("POST", route, { token: a.accessToken, headers, rawBody }),
        422,
        "validation_failed",
      );
      const issues = (e.details as { issues: { path: string; message: string }[] }).issues;
      assert.deepEqual(issues.map((i) => i.path), [path], rawBody);
      assert.match(issues[0].message, new RegExp(`[<>]=${bound}$`), rawBody);
    }
    for (const route of ["", "/changes"]) {
      const e = expectError(
        await call("GET", `${route}?limit=9007199254740993`, { token: a.accessToken }),
        422,
        "validation_failed",
      );
      assert.deepEqual(issuePaths(e), ["limit"]);
    }
    // No date at all (Feb 30, a leap second): one issue saying so, not also "before 1970".
    for (const notADate of ["2026-02-30T00:00:00Z", "2016-12-31T23:59:60Z"]) {
      const e = expectError(
        await call("POST", "", { token: a.accessToken, body: { ...good, updated_at: notADate } }),
        422,
        "validation_failed",
      );
      assert.deepEqual(issuePaths(e), ["updated_at"], notADate);
      assert.doesNotMatch(JSON.stringify(e.details), /1970|9999/, notADate);
    }
    const tooMany = Array.from({ length: PROGRESS_LIMITS.batchMax + 1 }, (_, i) =>
      write({ series_id: `${series}-${i}` }));
    expectError(
      await call("POST", "/batch", { token: a.accessToken, body: { writes: tooMany } }),
      422,
      "validation_failed",
    );
    // Too many writes is the whole answer, whatever the elements hold (README): one issue, the size.
    const tooManyAndWrong = {
      writes: tooMany.map((w, i) => (i === 3 ? { ...w, chapter: "x" } : w)),
    };
    assert.deepEqual(
      issuePaths(
        expectError(
          await call("POST", "/batch", { token: a.accessToken, body: tooManyAndWrong }),
          422,
          "validation_failed",
        ),
      ),
      ["writes"],
    );
    expectError(
      await call("POST", "/batch", { token: a.accessToken, body: { writes: [] } }),
      422,
      "validation_failed",
    );
    // One bad element fails the whole batch: the good first element is not written either.
    const mixed = { writes: [write({ series_id: `${series}-ok` }), { ...good, percentage: 2 }] };
    const e = expectError(
      await call("POST", "/batch", { token: a.accessToken, body: mixed }),
      422,
      "validation_failed",
    );
    assert.deepEqual(issuePaths(e), ["writes.1.percentage"]);
    expectError(await call("GET", "?limit=0", { token: a.accessToken }), 422, "validation_failed");
    expectError(
      await call("GET", `?limit=${PROGRESS_LIMITS.listMax + 1}`, { token: a.accessToken }),
      422,
      "validation_failed",
    );
    expectError(await call("GET", "?cursor=garbage", { token: a.accessToken }), 422, "validation_failed");
    for (const at of ["0000-12-31T00:00:00Z", "9999-12-31T23:00:00-14:00"]) {
      const e = expectError(
        await call("GET", `?cursor=${encodeURIComponent(`${at}|${series}`)}`, { token: a.accessToken }),
        422,
        "validation_failed",
      );
      assert.doesNotMatch(e.message, /out of range|displacement/, "the database's message does not leak");
    }
    expectError(await call("GET", "/changes?since=abc", { token: a.accessToken }), 422, "validation_failed");
    expectError(await call("GET", "/series/bad%20id", { token: a.accessToken }), 422, "validation_failed");
    expectError(
      await call("DELETE", `/series/${series}?device_id=web`, { token: a.accessToken }),
      400,
      "invalid_request",
    );
    expectError(
      await call("DELETE", `/series/${series}?device_id=web&updated_at=soon`, { token: a.accessToken }),
      422,
      "validation_failed",
    );
  }));

Deno.test("401: missing, malformed, expired, forged and unsigned tokens", () =>
  unchanged(async ({ a, series }) => {
    const body = write({ series_id: series, chapter: 50, updated_at: "2026-05-01T00:00:09Z" });
    let e = expectError(await call("POST", "", { body }), 401, "missing_token");
    const missing = await call("GET", "");
    expectError(missing, 401, "missing_token");
    assert.match(missing.headers.get("www-authenticate") ?? "", /^Bearer/);
    expectError(
      await call("GET", "", { headers: { authorization: `Basic ${btoa("a:b")}` } }),
      401,
      "missing_token",
    );
    e = expectError(await call("POST", "", { token: "not-a-jwt", body }), 401, "invalid_token");
    assert.deepEqual(e.details, { reason: "malformed_token" });

    const expired = await mintUserAccessToken(a.id, { expiresInSeconds: -60, secret: testEnv().jwtSecret });
    e = expectError(await call("POST", "", { token: expired, body }), 401, "token_expired");

    const forged = await mintUserAccessToken(a.id, {
      secret: "another-secret-with-at-least-32-characters!!",
    });
    e = expectError(await call("POST", "", { token: forged, body }), 401, "invalid_token");
    assert.deepEqual(e.details, { reason: "invalid_signature" });

    // A's valid signature on a payload edited to say role service_role.
    const [h, , s] = a.accessToken.split(".");
    const payload = JSON.parse(atob(a.accessToken.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
    const edited = btoa(JSON.stringify({ ...payload, role: "service_role" })).replace(/=+$/, "").replace(
      /\+/g,
      "-",
    ).replace(/\//g, "_");
    e = expectError(await call("POST", "", { token: `${h}.${edited}.${s}`, body }), 401, "invalid_token");
    assert.deepEqual(e.details, { reason: "invalid_signature" });

    // alg "none": no signature at all.
    const none = `${btoa(JSON.stringify({ alg: "none", typ: "JWT" })).replace(/=+$/, "")}.${edited}.`;
    e = expectError(await call("POST", "", { token: none, body }), 401, "invalid_token");
    assert.deepEqual(e.details, { reason: "unsupported_algorithm" });

    // An ES256 token signed by a key the project does not publish (the local stack publishes none).
    const { privateKey } = await generateKeyPair("ES256");
    const foreignEs = await new SignJWT({ sub: a.id, role: "authenticated", aud: "authenticated" })
      .setProtectedHeader({ alg: "ES256", kid: "not-ours" }).setExpirationTime("1h").sign(privateKey);
    expectError(await call("POST", "", { token: foreignEs, body }), 401, "invalid_token");

    // A token without exp never expires: refused.
    const noExp = await new SignJWT({ sub: a.id, role: "authenticated", aud: "authenticated" })
      .setProtectedHeader({ alg: "HS256" })
      .sign(new TextEncoder().encode(testEnv().jwtSecret));
    expectError(await call("POST", "", { token: noExp, body }), 401, "invalid_token");
    // A token for another audience.
    const otherAud = await signDevJwt({ sub: a.id, role: "authenticated", aud: "some-other-api" }, {
      secret: testEnv().jwtSecret,
    });
    expectError(await call("POST", "", { token: otherAud, body }), 401, "invalid_token");
  }));

Deno.test('401: a signed token whose role or sub is not a string (role: ["authenticated"]) is an invalid token', () =>
  unchanged(async ({ a, series }) => {
    // PostgREST would take the role's JSON text as a role name and answer 401 for that unknown role.
    const body = write({ series_id: series, chapter: 51, updated_at: "2026-05-01T00:00:09Z" });
    for (
      const claims of [
        { sub: a.id, role: ["authenticated"] },
        { sub: a.id, role: { name: "authenticated" } },
        { sub: [a.id], role: "authenticated" },
        { sub: 42, role: "authenticated" },
      ]
    ) {
      const token = await signDevJwt({ ...claims, aud: "authenticated" }, { secret: testEnv().jwtSecret });
      for (const answer of [await call("POST", "", { token, body }), await call("GET", "", { token })]) {
        const e = expectError(answer, 401, "invalid_token");
        assert.deepEqual(e.details, { reason: "invalid_claims" }, JSON.stringify(claims));
        assert.match(
          e.message,
          claims.sub === a.id ? /role claim is not a string/ : /sub claim is not a string/,
        );
      }
    }
  }));

Deno.test("403: the anon key, a token without a user, and service_role without X-Act-As-User", () =>
  unchanged(async ({ a, b, series }) => {
    const env = testEnv();
    const body = write({ series_id: series, chapter: 50, updated_at: "2026-05-01T00:00:09Z" });
    let e = expectError(await call("POST", "", { token: env.anonKey, body }), 403, "forbidden");
    assert.match(e.message, /anon/);
    expectError(await call("GET", "", { token: env.anonKey }), 403, "forbidden");
    const noSub = await signDevJwt({ role: "authenticated", aud: "authenticated" }, {
      secret: env.jwtSecret,
    });
    expectError(await call("GET", "", { token: noSub }), 403, "forbidden");
    // A third-party auth provider's user (Clerk, Auth0): a sub that is no UUID is no reader here, and
    // is answered before anything reaches auth.uid(), whose cast would fail on it.
    for (const sub of ["user_2NNEqL2nrIRdJ194ndJqAHwEfxC", "auth0|65a1b2c3d4e5f6a7b8c9d0e1"]) {
      const thirdParty = await signDevJwt({ sub, role: "authenticated", aud: "authenticated" }, {
        secret: env.jwtSecret,
      });
      e = expectError(await call("POST", "", { token: thirdParty, body }), 403, "forbidden");
      assert.match(e.message, /not a user id/, sub);
      expectError(await call("GET", "/changes?since=", { token: thirdParty }), 403, "forbidden");
    }
    e = expectError(await call("POST", "", { token: env.serviceRoleKey, body }), 403, "forbidden");
    assert.match(e.message, /x-act-as-user/i);
    expectError(
      await call("GET", "", { token: env.serviceRoleKey, headers: { "x-act-as-user": "not-a-uuid" } }),
      403,
      "forbidden",
    );
    // A user cannot use the header to act for someone else.
    expectError(
      await call("POST", "", { token: b.accessToken, body, headers: { "x-act-as-user": a.id } }),
      403,
      "forbidden",
    );
    expectError(
      await call("GET", `/series/${series}`, { token: b.accessToken, headers: { "x-act-as-user": a.id } }),
      403,
      "forbidden",
    );
  }));

Deno.test("404 unknown routes and series, 405 wrong methods with Allow", () =>
  unchanged(async ({ a, series }) => {
    expectError(await call("GET", "/nope", { token: a.accessToken }), 404, "not_found");
    expectError(await call("GET", "/series", { token: a.accessToken }), 404, "not_found");
    expectError(await call("GET", `/series/${series}/extra`, { token: a.accessToken }), 404, "not_found");
    expectError(await call("GET", `/${series}`, { token: a.accessToken }), 404, "not_found");
    expectError(
      await call("GET", "/series/never-read-this", { token: a.accessToken }),
      404,
      "progress_not_found",
    );

    const cases: [string, string, string][] = [
      ["PUT", "", "GET, HEAD, POST, OPTIONS"],
      ["PATCH", "", "GET, HEAD, POST, OPTIONS"],
      ["DELETE", "", "GET, HEAD, POST, OPTIONS"],
      ["GET", "/batch", "POST, OPTIONS"],
      ["HEAD", "/batch", "POST, OPTIONS"],
      ["DELETE", "/batch", "POST, OPTIONS"],
      ["POST", "/changes", "GET, HEAD, OPTIONS"],
      ["POST", `/series/${series}`, "GET, HEAD, DELETE, OPTIONS"],
      ["PUT", `/series/${series}`, "GET, HEAD, DELETE, OPTIONS"],
    ];
    for (const [method, path, allow] of cases) {
      const body = method === "GET" || method === "HEAD"
        ? undefined
        : write({ series_id: series, chapter: 77 });
      const answer = await call(method, path, { token: a.accessToken, body });
      if (method === "HEAD") {
        // No body to read the code from: the status and Allow say it.
        assert.equal(answer.status, 405, `${method} ${path}`);
        assert.equal(answer.body, null);
      } else {
        expectError(answer, 405, "method_not_allowed");
      }
      assert.equal(answer.headers.get("allow"), allow, `${method} ${path}`);
      // A browser's script may read it (a HEAD's answer has nothing else to say it with).
      assert.match(answer.headers.get("access-control-expose-headers") ?? "", /(^|, )allow(,|$)/);
    }
  }));

Deno.test("a series id that is not valid percent-encoding: route and token are checked first, then 400", () =>
  unchanged(async ({ a }) => {
    // The check order (route 404/405, token 401/403, then the request) holds for a bad escape too.
    expectError(await call("GET", "/series/%ZZ", {}), 401, "missing_token");
    expectError(await call("POST", "/series/%ZZ", { token: a.accessToken }), 405, "method_not_allowed");
    expectError(await call("GET", "/series/%ZZ", { token: a.accessToken }), 400, "invalid_request");
    expectError(await call("DELETE", "/series/%E0%A4%A", { token: a.accessToken }), 400, "invalid_request");
  }));

Deno.test("a series id is decoded once past the gateway, which decodes all but reserved characters first: `%` + `%36%35` is `%65` to the function, `e`", () =>
  unchanged(async ({ a, series }) => {
    // Kong (supabase start's gateway; the local API server routes as it does) hands the function the path
    // with every escape of an unreserved character decoded, `%` kept as written: `%` + `%36%35` (the hex
    // digits of the id's first letter, escaped) reaches the function as `%65` (for an `e`), which the
    // function decodes once: the series itself, read.
    const hex = series.charCodeAt(0).toString(16);
    const twice = `%${[...hex].map((d) => `%${d.charCodeAt(0).toString(16)}`).join("")}${series.slice(1)}`;
    const read = await call("GET", `/series/${twice}`, { token: a.accessToken });
    assert.equal(read.status, 200, JSON.stringify(read.body));
    assert.equal((read.body as { progress: { series_id: string } }).progress.series_id, series);
    // An escaped `%` (reserved: Kong keeps `%25`) is decoded once by the function, to a `%`: `%25` + the hex
    // digits is the id "%65…" (422: no id has a `%`), never the series it would spell decoded twice.
    const escapedPercent = `%25${hex}${series.slice(1)}`;
    expectError(
      await call("GET", `/series/${escapedPercent}`, { token: a.accessToken }),
      422,
      "validation_failed",
    );
    const reset = `/series/${escapedPercent}?device_id=d&updated_at=2026-06-01T00:00:00Z`;
    expectError(await call("DELETE", reset, { token: a.accessToken }), 422, "validation_failed");
    expectError(await call("GET", "/series/%2541", { token: a.accessToken }), 422, "validation_failed");
    // `%2` + `%35` is `%25` past Kong, which the function decodes to `%`: the id "a%" (422).
    expectError(await call("GET", "/series/a%2%35", { token: a.accessToken }), 422, "validation_failed");
  }));

Deno.test("408 request_timeout: a body that stalls mid-way, as the function is served (its default 10 s bound; write and batch), but a reset that declares one is refused at once", () =>
  unchanged(async ({ a, series }) => {
    // The served function with its default bound (tests/functions/progress_handler.test.ts tries a short
    // one and a slow but steady body): both requests stall at once, so the test waits about 10 s.
    const url = new URL(FUNCTION_URL());
    const one = JSON.stringify(write({ series_id: series, chapter: 80, updated_at: "2026-05-01T00:00:09Z" }));
    const batch = JSON.stringify({ writes: [JSON.parse(one)] });
    const head = (path: string, framing: string, method = "POST") =>
      `${method} ${url.pathname}${path} HTTP/1.1\nHost: ${url.host}\nAuthorization: Bearer ${a.accessToken}\n` +
      `Content-Type: application/json\n${framing}\nConnection: close`;
    const answers = await Promise.all([
      rawRequest(FUNCTION_URL(), head("", `Content-Length: ${one.length}`), (send) => send(one.slice(0, 30))),
      rawRequest(
        FUNCTION_URL(),
        head("/batch", "Transfer-Encoding: chunked"),
        (send) => send(`${batch.length.toString(16)}\r\n${batch.slice(0, 30)}`),
      ),
      // Through the local gateway too (which passes the body on as a stream, its Content-Length kept), a
      // reset whose Content-Length declares a body that then stalls is refused before any of it is read:
      // 400 unexpected_body, not this 408 (the reset would otherwise wait out the same 10 s).
      rawRequest(
        FUNCTION_URL(),
        head(
          `/series/${series}?device_id=d1&updated_at=2026-05-01T00:00:09Z`,
          "Content-Length: 10",
          "DELETE",
        ),
        (send) => send("{"),
      ),
    ]);
    const reset = expectError(answers[2], 400, "invalid_request");
    assert.deepEqual(
      (reset.details as { issues: { code: string }[] }).issues.map((issue) => issue.code),
      ["unexpected_body"],
    );
    assert.match(answers[2].head, /^connection: close$/m, "reset");
    for (const [what, answer] of [["single write", answers[0]], ["batch", answers[1]]] as const) {
      const e = expectError(answer, 408, "request_timeout");
      // The served function's defaults: 10 s without a byte (this bound), 30 s for the whole body.
      const { bound, idle_timeout_ms, total_timeout_ms } = e.details as Record<string, unknown>;
      assert.deepEqual([bound, idle_timeout_ms, total_timeout_ms], ["idle", 10_000, 30_000], what);
      assert.match(answer.head, /^connection: close$/m, what);
    }
  }));

Deno.test("413 huge bodies (declared or streamed), 415 wrong content types", () =>
  unchanged(async ({ a, series }) => {
    const huge = {
      ...write({ series_id: series, chapter: 60 }),
      padding: "x".repeat(PROGRESS_LIMITS.maxBodyBytes),
    };
    let e = expectError(
      await call("POST", "", { token: a.accessToken, body: huge }),
      413,
      "payload_too_large",
    );
    assert.deepEqual(e.details, { max_bytes: PROGRESS_LIMITS.maxBodyBytes });
    const bigBatch = {
      writes: Array.from(
        { length: 100 },
        (_, i) => ({
          ...write({ series_id: `${series}-${i}` }),
          device_id: "d".repeat(128),
          series_id: `${series}-${"s".repeat(100)}-${i}`,
        }),
      ),
    };
    assert.ok(
      JSON.stringify(bigBatch).length < PROGRESS_LIMITS.maxBodyBytes,
      "a full batch of long ids fits the limit",
    );
    // No Content-Length: a streamed body is cut off while reading.
    const chunk = new TextEncoder().encode(" ".repeat(16 * 1024));
    let sent = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (sent++ < 8) controller.enqueue(chunk);
        else controller.close();
      },
    });
    e = expectError(
      await call("POST", "/batch", {
        token: a.accessToken,
        headers: { "content-type": "application/json" },
        rawBody: stream,
      }),
      413,
      "payload_too_large",
    );

    const body = JSON.stringify(write({ series_id: series, chapter: 61 }));
    expectError(
      await call("POST", "", {
        token: a.accessToken,
        headers: { "content-type": "text/plain" },
        rawBody: body,
      }),
      415,
      "unsupported_media_type",
    );
    expectError(
      await call("POST", "", { token: a.accessToken, rawBody: new Blob([body]) }),
      415,
      "unsupported_media_type",
    );
    expectError(
      await call("POST", "/batch", {
        token: a.accessToken,
        headers: { "content-type": "application/x-www-form-urlencoded" },
        rawBody: "writes=1",
      }),
      415,
      "unsupported_media_type",
    );
  }));

Deno.test("415 is only for non-JSON types: a charset parameter and +json types are accepted", async () => {
  const a = await createTestUser();
  for (
    const type of [
      "application/json; charset=utf-8",
      "application/json;charset=UTF-8",
      'application/json; Charset="utf-8"',
      "application/json; charset=utf8",
      "application/json; charset=us-ascii",
      "application/vnd.readsync+json",
      "Application/JSON",
    ]
  ) {
    const ok = await call("POST", "", {
      token: a.accessToken,
      headers: { "content-type": type },
      rawBody: JSON.stringify(write({ series_id: seriesId("ct") })),
    });
    assert.equal(ok.status, 200, `${type}: ${JSON.stringify(ok.body)}`);
  }
});

Deno.test("a page size of ten or more digits is a number out of range (422), not a non-number (400)", () =>
  unchanged(async ({ a }) => {
    for (const limit of ["1000000000", "99999999999999999999", "9".repeat(400)]) {
      const e = expectError(
        await call("GET", `?limit=${limit}`, { token: a.accessToken }),
        422,
        "validation_failed",
      );
      assert.doesNotMatch(e.message, /digits only/, limit);
      expectError(
        await call("GET", `/changes?limit=${limit}`, { token: a.accessToken }),
        422,
        "validation_failed",
      );
    }
    // Leading zeros are still the same number.
    for (const path of ["?limit=0000000005", "/changes?limit=00000000000000000005"]) {
      const ok = await call("GET", path, { token: a.accessToken });
      assert.equal(ok.status, 200, `${path}: ${JSON.stringify(ok.body)}`);
    }
  }));

Deno.test("415: a compressed body (Content-Encoding other than identity) is refused, not misread", () =>
  unchanged(async ({ a, series }) => {
    const body = JSON.stringify(write({ series_id: series, chapter: 62 }));
    const gzip = new Uint8Array(
      await new Response(new Blob([body]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer(),
    );
    const cases: [string, BodyInit][] = [["gzip", gzip], ["gzip", body], ["br", body], [
      "identity, gzip",
      body,
    ]];
    for (const [coding, rawBody] of cases) {
      const answer = await call("POST", "", {
        token: a.accessToken,
        headers: { "content-type": "application/json", "content-encoding": coding },
        rawBody,
      });
      const e = expectError(answer, 415, "unsupported_media_type");
      assert.deepEqual(e.details, { content_encoding: coding }, coding);
      assert.equal(answer.headers.get("accept-encoding"), "identity", coding);
    }
    const batch = await call("POST", "/batch", {
      token: a.accessToken,
      headers: { "content-type": "application/json", "content-encoding": "gzip" },
      rawBody: JSON.stringify({ writes: [write({ series_id: series, chapter: 63 })] }),
    });
    expectError(batch, 415, "unsupported_media_type");
  }));

Deno.test("415: a body with a transfer coding other than chunked is refused, not misread; without chunked last, 400 below the function", () =>
  unchanged(async ({ a, series }) => {
    const url = new URL(FUNCTION_URL());
    const body = JSON.stringify(
      write({ series_id: series, chapter: 64, updated_at: "2026-05-01T00:00:09Z" }),
    );
    const gzip = new Uint8Array(
      await new Response(new Blob([body]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer(),
    );
    const chunked = (data: Uint8Array | string) => {
      const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
      const head = new TextEncoder().encode(`${bytes.byteLength.toString(16)}\r\n`);
      const tail = new TextEncoder().encode("\r\n0\r\n\r\n");
      const out = new Uint8Array(head.byteLength + bytes.byteLength + tail.byteLength);
      out.set(head);
      out.set(bytes, head.byteLength);
      out.set(tail, head.byteLength + bytes.byteLength);
      return out;
    };
    const send = (path: string, framing: string, payload: string | Uint8Array, token = a.accessToken) =>
      rawHttp(
        `POST ${url.pathname}${path} HTTP/1.1\nHost: ${url.host}\nAuthorization: Bearer ${token}\n` +
          `Content-Type: application/json\n${framing}\nConnection: close\n`,
        payload,
        { halfClose: false },
      );
    // Deno's server undoes chunked only: the rest reached the function still coded (a gzip body was
    // "not valid UTF-8", an uncoded one labelled gzip or deflate was stored).
    const refused: [string, string, Uint8Array][] = [
      ["", "gzip, chunked", chunked(gzip)],
      ["", "gzip, chunked", chunked(body)],
      ["", "deflate, chunked", chunked(body)],
      ["/batch", "gzip, chunked", chunked(`{"writes":[${body}]}`)],
    ];
    for (const [path, coding, payload] of refused) {
      const answer = await send(path, `Transfer-Encoding: ${coding}`, payload);
      assert.equal(answer.status, 415, `${coding}: ${JSON.stringify(answer.body)}`);
      const error = (answer.body as { error: { code: string; details: unknown } }).error;
      assert.equal(error.code, "unsupported_media_type", coding);
      assert.deepEqual(error.details, { transfer_encoding: coding }, coding);
    }
    // Two header lines are one list: still refused.
    const twoLines = await send("", "Transfer-Encoding: gzip\nTransfer-Encoding: chunked", chunked(body));
    assert.equal(twoLines.status, 415, JSON.stringify(twoLines.body));
    // chunked not last (gzip alone too): the server answers 400 itself (RFC 9112, 6.3), an empty body.
    for (
      const [framing, payload] of [
        ["Transfer-Encoding: gzip", gzip],
        ["Transfer-Encoding: chunked, gzip", chunked(gzip)],
        [`Transfer-Encoding: gzip\nContent-Length: ${gzip.byteLength}`, gzip],
      ] as const
    ) {
      const answer = await send("", framing, payload);
      assert.ok(answer.status === 400 || answer.status === 415, `${framing}: ${answer.status}`);
    }
    // chunked alone is no coding of the body: it is read (as another user: A's rows stay unchanged).
    const c = await createTestUser();
    const plain = await send(
      "",
      "Transfer-Encoding: chunked",
      chunked(JSON.stringify(write({ series_id: series }))),
      c.accessToken,
    );
    assert.equal(plain.status, 200, JSON.stringify(plain.body));
  }));

Deno.test("Content-Encoding: identity is no coding: the body is read", async () => {
  const a = await createTestUser();
  const ok = await call("POST", "", {
    token: a.accessToken,
    headers: { "content-type": "application/json", "content-encoding": "Identity" },
    rawBody: JSON.stringify(write({ series_id: seriesId("ce") })),
  });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
});

Deno.test("401: an Authorization header with more than one token is an invalid token, not a missing one", () =>
  unchanged(async ({ a }) => {
    for (const header of [`Bearer ${a.accessToken} ${a.accessToken}`, `Bearer ${a.accessToken}, Bearer x`]) {
      const e = expectError(
        await call("GET", "", { headers: { authorization: header } }),
        401,
        "invalid_token",
      );
      assert.deepEqual(e.details, { reason: "malformed_token" });
    }
  }));

Deno.test("406: an Accept that excludes JSON is refused before anything runs, with the JSON error body", () =>
  unchanged(async ({ a, series }) => {
    const body = write({ series_id: series, chapter: 80, updated_at: "2026-05-01T00:00:09Z" });
    for (
      const accept of [
        "text/html",
        "text/*",
        "application/xml, text/plain;q=0.5",
        "application/json;q=0",
        "Application/JSON ; Q=0.000",
        "application/json;q=0, */*",
        "*/*;q=0",
        "application/vnd.readsync+json",
      ]
    ) {
      const calls: [string, string, unknown][] = [
        ["GET", "", undefined],
        ["GET", `/series/${series}`, undefined],
        ["GET", "/changes", undefined],
        ["POST", "", body],
        ["POST", "/batch", { writes: [body] }],
        ["DELETE", `/series/${series}?device_id=d1&updated_at=2026-05-01T00:00:09Z`, undefined],
      ];
      for (const [method, path, payload] of calls) {
        const answer = await call(method, path, { token: a.accessToken, body: payload, headers: { accept } });
        const e = expectError(answer, 406, "not_acceptable");
        assert.deepEqual(
          e.details,
          { accept, available: ["application/json"] },
          `${method} ${path} ${accept}`,
        );
      }
      const head = await call("HEAD", "", { token: a.accessToken, headers: { accept } });
      assert.equal(head.status, 406, accept);
    }
    // Route and token come first (README: check order): a 404 or 401 is answered, in JSON, as before.
    expectError(
      await call("GET", "/nope", { token: a.accessToken, headers: { accept: "text/html" } }),
      404,
      "not_found",
    );
    expectError(await call("GET", "", { headers: { accept: "text/html" } }), 401, "missing_token");
  }));

Deno.test("an Accept that admits JSON, however written, is answered as usual (also no Accept at all)", async () => {
  const a = await createTestUser();
  const series = seriesId("accept");
  for (
    const accept of [
      "*/*",
      "application/*",
      "application/json",
      "Application/JSON; charset=utf-8",
      " application/json ; q=1 ",
      "text/html, application/json;q=0.1",
      "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
      "*/*;q=0, application/json",
      "application/json;q=abc",
      "garbage",
      "",
    ]
  ) {
    const wrote = await call("POST", "", {
      token: a.accessToken,
      headers: { accept },
      body: write({ series_id: series }),
    });
    assert.equal(
      wrote.status,
      200,
      `POST with Accept ${JSON.stringify(accept)}: ${JSON.stringify(wrote.body)}`,
    );
    const read = await call("GET", `/series/${series}`, { token: a.accessToken, headers: { accept } });
    assert.equal(read.status, 200, `GET with Accept ${JSON.stringify(accept)}: ${JSON.stringify(read.body)}`);
  }
  // fetch always sends an Accept (*/*): without one, written by hand.
  const url = new URL(FUNCTION_URL());
  const none = await rawHttp(
    `GET ${url.pathname}/series/${series} HTTP/1.1\nHost: ${url.host}\nAuthorization: Bearer ${a.accessToken}\n` +
      `Connection: close\n`,
    "",
    { halfClose: false },
  );
  assert.equal(none.status, 200, JSON.stringify(none.body));
});

Deno.test("415: a JSON body labelled with a charset other than UTF-8 is refused, naming the charset", () =>
  unchanged(async ({ a, series }) => {
    const text = JSON.stringify(
      write({ series_id: series, chapter: 81, updated_at: "2026-05-01T00:00:09Z" }),
    );
    // UTF-16LE bytes of the body: what a client that means its label sends.
    const utf16 = new Uint8Array(text.length * 2);
    for (let i = 0; i < text.length; i++) utf16[i * 2] = text.charCodeAt(i);
    const cases: [string, string, BodyInit][] = [
      ["application/json; charset=utf-16", "utf-16", utf16],
      ["application/json;charset=UTF-16LE", "UTF-16LE", utf16],
      ['application/json; charset="utf-16"', "utf-16", utf16],
      ["application/json; Charset=ISO-8859-1", "ISO-8859-1", text],
      ["application/json; charset=utf-8; charset=latin1", "latin1", text],
      ["application/json; charset=no-such-charset", "no-such-charset", text],
      ["application/vnd.readsync+json; charset=utf-16", "utf-16", utf16],
    ];
    for (const [type, charset, rawBody] of cases) {
      for (const path of ["", "/batch"]) {
        const e = expectError(
          await call("POST", path, { token: a.accessToken, headers: { "content-type": type }, rawBody }),
          415,
          "unsupported_media_type",
        );
        assert.deepEqual(e.details, { content_type: type, charset }, type);
        assert.ok(e.message.includes(`charset=${charset}`), e.message);
      }
    }
  }));

Deno.test("a percent-encoded unreserved character in a path is that character (RFC 3986, 6.2.2.2); an encoded slash is no separator", async () => {
  const a = await createTestUser();
  const series = seriesId("pct");
  const body = write({ series_id: series, chapter: 82 });
  const routed: [string, string, unknown][] = [
    ["POST", "/%62atch", { writes: [body] }],
    ["POST", "/%62%61%74%63%68", { writes: [body] }],
    ["POST", "/%62%61tch", { writes: [body] }],
    ["GET", "/%63hanges?limit=1", undefined],
    ["GET", "/ch%61%6Eges", undefined],
    ["GET", `/%73eries/${series}`, undefined],
    ["GET", `/series/%${series.charCodeAt(0).toString(16)}${series.slice(1)}`, undefined],
    ["GET", `/s%65ri%65s/${series}/`, undefined],
  ];
  for (const [method, path, payload] of routed) {
    const answer = await call(method, path, { token: a.accessToken, body: payload });
    assert.equal(answer.status, 200, `${method} ${path}: ${JSON.stringify(answer.body)}`);
  }
  // Unreserved only, and case kept: %41 is "A", so /b%41tch is /bAtch, no route.
  expectError(
    await call("POST", "/b%41tch", { token: a.accessToken, body: { writes: [body] } }),
    404,
    "not_found",
  );
  // A %2F stays part of its segment: never a separator, nor dropped.
  for (const path of [`/series%2F${series}`, "/%62atch%2F", "/batch%2F"]) {
    expectError(
      await call("POST", path, { token: a.accessToken, body: { writes: [body] } }),
      404,
      "not_found",
    );
  }
  for (const path of [`/series/${series}%2F`, "/series/a%2Fb"]) {
    expectError(await call("GET", path, { token: a.accessToken }), 422, "validation_failed");
  }
  // (%2F right after the function's name makes it another name: the gateway finds no such function.)
  const fused = await call("GET", "%2Fbatch", { token: a.accessToken });
  assert.equal(fused.status, 404, JSON.stringify(fused.body));
  // An encoded route on the wrong method is a 405 like the plain one.
  expectError(await call("GET", "/%62atch", { token: a.accessToken }), 405, "method_not_allowed");
});

Deno.test("401: every malformed Authorization header; a Bearer header that holds no token is an invalid token", () =>
  unchanged(async ({ a }) => {
    const t = a.accessToken;
    // [header, code]: missing_token for no Bearer authentication at all (no header, another scheme),
    // invalid_token (reason malformed_token) for Bearer credentials that are not one token.
    const refused: [string, string][] = [
      ["Basic eDp5", "missing_token"],
      [`Token ${t}`, "missing_token"],
      [`Bearerx ${t}`, "missing_token"],
      ["Bearer", "invalid_token"],
      ["Bearer ", "invalid_token"],
      ["bearer   ", "invalid_token"],
      [`Bearer\t${t}`, "invalid_token"],
      [`Bearer \t${t}`, "invalid_token"],
      [`Bearer,${t}`, "invalid_token"],
      [`Bearer ${t} ${t}`, "invalid_token"],
      [`Bearer ${t}\t${t}`, "invalid_token"],
      [`Bearer ${t}, Bearer x`, "invalid_token"],
    ];
    for (const [header, code] of refused) {
      const answer = await call("GET", "", { headers: { authorization: header } });
      const e = expectError(answer, 401, code);
      const challenge = answer.headers.get("www-authenticate") ?? "";
      if (code === "invalid_token") {
        assert.deepEqual(e.details, { reason: "malformed_token" }, JSON.stringify(header));
        assert.match(challenge, /^Bearer realm="progress", error="invalid_token"$/, JSON.stringify(header));
      } else {
        // RFC 6750, 3.1: no Bearer authentication attempted, so the challenge names no error.
        assert.equal(challenge, 'Bearer realm="progress"', JSON.stringify(header));
      }
    }
    // The scheme in any case, one or more spaces, spaces after the token: read as the token.
    for (const header of [`bearer ${t}`, `BEARER ${t}`, `Bearer  ${t}`, `Bearer ${t}   `, `  Bearer ${t}`]) {
      const answer = await call("GET", "", { headers: { authorization: header } });
      assert.equal(answer.status, 200, `${JSON.stringify(header)}: ${JSON.stringify(answer.body)}`);
    }
  }));
