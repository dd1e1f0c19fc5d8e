// The web app's development sign-in (examples/web/lib/server/config.ts) mints tokens with the local
// JWT secret, so it must be impossible to switch on against anything but a stack on this machine.
// The browser tests prove the running app; this checks every rule of the gate on its own.

import assert from "node:assert/strict";
import process from "node:process";
import {
  browserSupabaseUrl,
  devSignIn,
  isLoopbackUrl,
  publicConfig,
} from "../../examples/web/lib/server/config.ts";

const NAMES = [
  "SUPABASE_URL",
  "SUPABASE_ANON_KEY",
  "READSYNC_DEV_SIGNIN",
  "SUPABASE_JWT_SECRET",
  "SUPABASE_DB_URL",
  "READSYNC_BROWSER_API_PORT",
];

function withEnv(values: Record<string, string | undefined>, fn: () => void): void {
  const saved = Object.fromEntries(NAMES.map((n) => [n, process.env[n]]));
  try {
    for (const n of NAMES) delete process.env[n];
    for (const [n, v] of Object.entries(values)) if (v !== undefined) process.env[n] = v;
    fn();
  } finally {
    for (const n of NAMES) {
      if (saved[n] === undefined) delete process.env[n];
      else process.env[n] = saved[n];
    }
  }
}

const LOCAL = {
  SUPABASE_URL: "http://127.0.0.1:54321",
  SUPABASE_ANON_KEY: "anon",
  READSYNC_DEV_SIGNIN: "1",
  SUPABASE_JWT_SECRET: "local-secret",
  SUPABASE_DB_URL: "postgresql://postgres:postgres@127.0.0.1:54322/postgres",
};

Deno.test("development sign-in is on for a local stack with READSYNC_DEV_SIGNIN=1 and its JWT secret", () => {
  withEnv(LOCAL, () => {
    const gate = devSignIn();
    assert.equal(gate.enabled, true);
    assert.equal(publicConfig().authMode, "dev");
  });
});

Deno.test("development sign-in is off without READSYNC_DEV_SIGNIN=1", () => {
  for (const flag of [undefined, "0", "true", ""]) {
    withEnv({ ...LOCAL, READSYNC_DEV_SIGNIN: flag }, () => {
      assert.equal(devSignIn().enabled, false, `READSYNC_DEV_SIGNIN=${flag}`);
      assert.equal(publicConfig().authMode, "supabase");
    });
  }
});

Deno.test("development sign-in is off without a JWT secret", () => {
  withEnv({ ...LOCAL, SUPABASE_JWT_SECRET: undefined }, () => assert.equal(devSignIn().enabled, false));
});

Deno.test("development sign-in is off for a Supabase project that is not on this machine, whatever the flag", () => {
  for (
    const url of ["https://abcdefgh.supabase.co", "http://10.0.0.5:54321", "http://127.0.0.1.example.com"]
  ) {
    withEnv({ ...LOCAL, SUPABASE_URL: url }, () => {
      const gate = devSignIn();
      assert.equal(gate.enabled, false, url);
      assert.match(gate.enabled ? "" : gate.reason, /not a local stack/);
    });
  }
});

Deno.test("loopback means 127.0.0.0/8, localhost and ::1 only", () => {
  for (
    const url of ["http://127.0.0.1:1", "http://127.1.2.3", "http://localhost:54321", "http://[::1]:54321"]
  ) {
    assert.equal(isLoopbackUrl(url), true, url);
  }
  for (const url of ["http://0.0.0.0", "http://192.168.1.2", "https://localhost.example", "not a url"]) {
    assert.equal(isLoopbackUrl(url), false, url);
  }
});

Deno.test("a page requested at an IPv4 address gets the API there only with READSYNC_BROWSER_API_PORT (npm start open to the network); a name, or no port, gets SUPABASE_URL", () => {
  withEnv({ ...LOCAL, READSYNC_BROWSER_API_PORT: "54321" }, () => {
    assert.equal(browserSupabaseUrl("192.168.1.5:3000"), "http://192.168.1.5:54321");
    assert.equal(publicConfig("10.0.0.7").supabaseUrl, "http://10.0.0.7:54321");
    assert.equal(publicConfig("192.168.1.5:3000").authMode, "dev", "the development sign-in stays on");
    // A name could be a DNS-rebinding page's: the token would go where that name resolves next.
    for (
      const host of ["evil.example:3000", "localhost:3000", "192.168.1.5.example", "[::1]:3000", "", null]
    ) {
      assert.equal(browserSupabaseUrl(host), LOCAL.SUPABASE_URL, `Host ${host}`);
    }
  });
  for (const port of [undefined, "", "abc", "70000", "054321"]) {
    withEnv({ ...LOCAL, READSYNC_BROWSER_API_PORT: port }, () => {
      assert.equal(browserSupabaseUrl("192.168.1.5:3000"), LOCAL.SUPABASE_URL, `port ${port}`);
    });
  }
});
