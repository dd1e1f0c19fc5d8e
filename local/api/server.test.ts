// The API server binds the port itself: asked for port 0, it listens on the one the OS gives it as it
// binds, and every URL it hands out names that port (no port picked, released and bound again, which
// another process starting a stack at the same moment could take in between).

import assert from "node:assert/strict";
import { localRealtime, testEnv } from "../../tests/support/env.ts";
import { startApiServer } from "./server.ts";

Deno.test({
  name: "the API server asked for port 0 serves on the port it bound, named in its URL",
  // It runs a Realtime endpoint of its own on the suite's database: only where Realtime is the stand-in.
  ignore: !localRealtime || !Deno.env.get("SUPABASE_JWT_SECRET"),
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const env = testEnv();
  const api = await startApiServer({
    port: 0,
    dbUrl: env.dbUrl,
    jwtSecret: env.jwtSecret!,
    anonKey: env.anonKey,
    serviceRoleKey: env.serviceRoleKey,
  });
  try {
    const port = Number(new URL(api.url).port);
    assert.ok(port > 0, `the URL names the port bound: ${api.url}`);
    assert.throws(
      () => Deno.listen({ hostname: "127.0.0.1", port }).close(),
      Deno.errors.AddrInUse,
      "the server holds that port",
    );
    const unknown = await fetch(`${api.url}/rest/v1/reading_progress`);
    assert.equal(unknown.status, 404);
    assert.equal((await unknown.json()).error.code, "not_found");
    const fn = await fetch(`${api.url}/functions/v1/progress`);
    await fn.body?.cancel();
    assert.equal(fn.status, 401, "the functions are served there");
  } finally {
    await api.close();
  }
});
