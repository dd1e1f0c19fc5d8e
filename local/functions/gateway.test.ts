// The local functions gateway over real HTTP, with a throwaway supabase/ directory of small
// functions: verify_jwt per function as Supabase's gateway does it (HS256 secret, ES256 through
// SUPABASE_JWKS, OPTIONS unauthenticated), path rewriting, disabled/unknown functions, boot errors
// and functions that throw. (The progress function itself runs with verify_jwt = false and checks
// tokens on its own: tests/functions.)

import assert from "node:assert/strict";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { DEV_JWT_SECRET, signDevJwt } from "../stack/keys.ts";
import { createFunctionsGateway } from "./gateway.ts";
import { loadFunctionConfigs, parseFunctionSections } from "./config.ts";

const ECHO = `Deno.serve(async (req) => {
  const url = new URL(req.url);
  return Response.json({
    path: url.pathname + url.search,
    method: req.method,
    authorization: req.headers.get("authorization"),
    body: req.method === "GET" ? null : await req.text(),
    env_url: Deno.env.get("SUPABASE_URL"),
  });
});
`;

async function fixture(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "readsync-gateway-" });
  const fn = async (name: string, source: string) => {
    await Deno.mkdir(`${dir}/functions/${name}`, { recursive: true });
    await Deno.writeTextFile(`${dir}/functions/${name}/index.ts`, source);
  };
  await fn("secure", ECHO);
  await fn("open", ECHO);
  await fn("off", ECHO);
  await fn("broken", `throw new Error("cannot boot");\n`);
  await fn("throws", `Deno.serve(() => { throw new Error("boom"); });\n`);
  await Deno.mkdir(`${dir}/functions/_shared`, { recursive: true });
  await Deno.writeTextFile(`${dir}/functions/_shared/index.ts`, ECHO);
  await Deno.writeTextFile(
    `${dir}/config.toml`,
    `[api]\nport = 54321 # not a function section\n\n[functions.secure]\nverify_jwt = true\n\n` +
      `[functions.open]\nverify_jwt = false # "quoted # not a comment"\n\n[functions.off]\nenabled = false\n`,
  );
  return dir;
}

/** The gateway over the functions in `dir` (no API, no database behind it), served on a port of its own. */
async function servedGateway(dir: string) {
  const gateway = await createFunctionsGateway({
    port: 0,
    apiUrl: "http://127.0.0.1:1",
    dbUrl: "postgresql://unused",
    jwtSecret: DEV_JWT_SECRET,
    anonKey: "anon",
    serviceRoleKey: "service",
  }, { supabaseDir: dir });
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, gateway.handle);
  return { gateway, server };
}

Deno.test("config.toml function sections are read like the Supabase CLI reads them", async () => {
  const sections = parseFunctionSections(
    `[functions.a]\nverify_jwt = false\nentrypoint = "./x/y.ts" # c\n[auth]\nverify_jwt = true\n`,
  );
  assert.deepEqual([...sections.entries()], [["a", { verify_jwt: false, entrypoint: "./x/y.ts" }]]);
  const dir = await fixture();
  try {
    const configs = await loadFunctionConfigs(dir);
    assert.deepEqual(configs.map((c) => [c.name, c.enabled, c.verifyJwt]), [
      ["broken", true, true],
      ["off", false, true],
      ["open", true, false],
      ["secure", true, true],
      ["throws", true, true],
    ], "_shared is not a function; verify_jwt defaults to true");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the gateway: verify_jwt per function, path rewriting, 404/503/500 as on Supabase", async () => {
  const dir = await fixture();
  const { publicKey, privateKey } = await generateKeyPair("ES256", { extractable: true });
  const previousJwks = Deno.env.get("SUPABASE_JWKS");
  Deno.env.set(
    "SUPABASE_JWKS",
    JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256" }] }),
  );
  const errors: string[] = [];
  const originalError = console.error;
  console.error = (line: string) => errors.push(line); // boot_error / function_error lines
  const { gateway, server } = await servedGateway(dir);
  const base = `http://127.0.0.1:${server.addr.port}/functions/v1`;
  const get = async (path: string, init: RequestInit = {}) => {
    const res = await fetch(`${base}${path}`, init);
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch { /* text */ }
    return { status: res.status, body: body as Record<string, unknown> };
  };
  try {
    const anon = await signDevJwt({ role: "anon" });
    const forged = await signDevJwt({ role: "anon" }, { secret: "x".repeat(40) });
    const es = await new SignJWT({ role: "authenticated", sub: crypto.randomUUID() })
      .setProtectedHeader({ alg: "ES256", kid: "k1" }).setExpirationTime("1h").sign(privateKey);

    assert.deepEqual(await get("/secure"), {
      status: 401,
      body: { msg: "Error: Missing authorization header" },
    });
    assert.deepEqual(await get("/secure", { headers: { authorization: "Token abc" } }), {
      status: 401,
      body: { msg: "Error: Auth header is not 'Bearer {token}'" },
    });
    assert.deepEqual(await get("/secure", { headers: { authorization: `Bearer ${forged}` } }), {
      status: 401,
      body: { msg: "Invalid JWT" },
    });
    assert.deepEqual(await get("/secure", { headers: { authorization: "Bearer abc.def.ghi" } }), {
      status: 401,
      body: { msg: "Invalid JWT" },
    });

    const ok = await get("/secure/a/b?x=1", {
      method: "POST",
      headers: { authorization: `Bearer ${anon}` },
      body: "hello",
    });
    assert.equal(ok.status, 200);
    assert.deepEqual(
      { path: ok.body.path, method: ok.body.method, body: ok.body.body, env_url: ok.body.env_url },
      { path: "/secure/a/b?x=1", method: "POST", body: "hello", env_url: "http://127.0.0.1:1" },
      "the function sees /<name>/<rest>?query, the body and the stack's environment",
    );
    assert.equal(
      (await get("/secure", { headers: { authorization: `Bearer ${es}` } })).status,
      200,
      "ES256 via SUPABASE_JWKS",
    );
    assert.equal(
      (await get("/secure", { method: "OPTIONS" })).status,
      200,
      "preflights pass without a token",
    );

    const open = await get("/open/x");
    assert.deepEqual(
      [open.status, open.body.authorization],
      [200, null],
      "verify_jwt = false: no token needed",
    );

    // A name is read as written, as the edge runtime's main service reads it: behind Kong (the API server
    // here) `%6Fpen` arrives decoded, and an encoded slash never, so neither names `open` to the gateway.
    for (const path of ["/off", "/nope", "/_shared", "", "/%6Fpen/x", "/x%2F..%2Fopen"]) {
      assert.deepEqual(await get(path), { status: 404, body: "Function not found" }, path);
    }
    assert.deepEqual(await get("/broken", { headers: { authorization: `Bearer ${anon}` } }), {
      status: 503,
      body: { code: "BOOT_ERROR", message: "Worker failed to boot (please check logs)" },
    });
    assert.deepEqual(await get("/throws", { headers: { authorization: `Bearer ${anon}` } }), {
      status: 500,
      body: { code: "Internal Server Error", message: "Request failed due to an internal server error" },
    });
    // Methods fetch's Request will not carry as sent, over raw HTTP (fetch cannot send them either).
    const rawStatus = async (method: string) => {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
      try {
        const request = `${method} /functions/v1/open/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`;
        await conn.write(new TextEncoder().encode(request));
        let text = "";
        const buffer = new Uint8Array(4096);
        for (let n = await conn.read(buffer); n !== null; n = await conn.read(buffer)) {
          text += new TextDecoder().decode(buffer.subarray(0, n));
        }
        return { status: Number(text.slice(9, 12)), body: text.slice(text.indexOf("\r\n\r\n") + 4) };
      } finally {
        conn.close();
      }
    };
    for (const method of ["TRACE", "TRACK"]) {
      const answer = await rawStatus(method);
      assert.equal(answer.status, 405, `${method}: ${answer.body}`);
      assert.equal(JSON.parse(answer.body).code, "Method Not Allowed", method);
    }
    const lower = await rawStatus("get");
    assert.equal(lower.status, 200, `get: ${lower.body}`);
    assert.equal(JSON.parse(lower.body).method, "GET", "fetch's Request upper-cases it");

    assert.ok(errors.some((l) => JSON.parse(l).event === "boot_error"));
    assert.ok(errors.some((l) => JSON.parse(l).event === "function_error"));
  } finally {
    console.error = originalError;
    await server.shutdown();
    await gateway.close();
    if (previousJwks === undefined) Deno.env.delete("SUPABASE_JWKS");
    else Deno.env.set("SUPABASE_JWKS", previousJwks);
    await Deno.remove(dir, { recursive: true });
  }
});

/** What the "waits" function tells the test, through a global (functions run in this process). */
interface WaitHooks {
  /** Called when the function has the request. */
  started(): void;
  /** Called with the signal's reason when the function's request signal aborts. */
  aborted(reason: unknown): void;
  /** Ends a request whose signal never aborts (a test that failed), so the server can shut down. */
  released: Promise<void>;
}

const HOOKS = "readsyncGatewaySignalHooks";

/** A function that answers only once its request's signal aborts (503, naming the reason) or it is released. */
const WAITS = `Deno.serve((req) => {
  const hooks = Reflect.get(globalThis, "${HOOKS}");
  hooks.started();
  return new Promise((resolve) => {
    req.signal.addEventListener("abort", () => {
      hooks.aborted(req.signal.reason);
      resolve(Response.json({ aborted: String(req.signal.reason) }, { status: 503 }));
    }, { once: true });
    hooks.released.then(() => resolve(Response.json({ aborted: null })));
  });
});
`;

/** `promise`, or a failure naming `what` after 10 s (a hang guard). */
async function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) =>
        timer = setTimeout(() => reject(new Error(`no ${what} within 10 s`)), 10_000)
      ),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A gateway over real HTTP serving only "waits" (verify_jwt off); `run` gets its base URL and hooks. */
async function withWaitingFunction(
  run: (
    base: string,
    signals: { started: Promise<void>; aborted: Promise<unknown> },
    gateway: { close(): Promise<void> },
  ) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "readsync-gateway-signal-" });
  await Deno.mkdir(`${dir}/functions/waits`, { recursive: true });
  await Deno.writeTextFile(`${dir}/functions/waits/index.ts`, WAITS);
  await Deno.writeTextFile(`${dir}/config.toml`, `[functions.waits]\nverify_jwt = false\n`);
  const started = Promise.withResolvers<void>();
  const aborted = Promise.withResolvers<unknown>();
  const released = Promise.withResolvers<void>();
  const hooks: WaitHooks = { started: started.resolve, aborted: aborted.resolve, released: released.promise };
  Reflect.set(globalThis, HOOKS, hooks);
  const { gateway, server } = await servedGateway(dir);
  try {
    await run(
      `http://127.0.0.1:${server.addr.port}/functions/v1`,
      { started: started.promise, aborted: aborted.promise },
      gateway,
    );
  } finally {
    released.resolve();
    await server.shutdown();
    await gateway.close();
    Reflect.deleteProperty(globalThis, HOOKS);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("the gateway forwards the client's abort signal: the function's request aborts when the client leaves", () =>
  withWaitingFunction(async (base, signals) => {
    const client = new AbortController();
    const sent = fetch(`${base}/waits`, { signal: client.signal });
    sent.catch(() => {}); // aborted below
    await within(signals.started, "request at the function");
    client.abort();
    await assert.rejects(sent, { name: "AbortError" });
    await within(signals.aborted, "abort of the function's request signal after the client left");
  }));

Deno.test("the gateway's close() aborts the signal of every request still in a function, which answers at once", () =>
  withWaitingFunction(async (base, signals, gateway) => {
    const sent = fetch(`${base}/waits`);
    sent.catch(() => {}); // awaited below
    await within(signals.started, "request at the function");
    await gateway.close();
    const reason = await within(signals.aborted, "abort of the function's request signal at close()");
    assert.match(String(reason), /the local functions gateway is closing/);
    const answer = await within(sent, "answer");
    assert.equal(answer.status, 503);
    assert.deepEqual(await answer.json(), { aborted: "Error: the local functions gateway is closing" });
  }));
