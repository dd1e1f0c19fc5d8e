// The stack's children that talk to its database, the Supabase CLI and psql: the CLI's binary is run
// itself (not through its npm package's node launcher), and both are registered with the exit cleanups
// while they run, so that a stop ends them (cleanup.ts).

import assert from "node:assert/strict";
import { lastJsonLine, runDenoChild } from "../../tests/support/denoChild.ts";
import { supabaseCliBinary } from "./database.ts";

const databaseModule = new URL("./database.ts", import.meta.url).href;

Deno.test({
  name: "supabaseCli runs the CLI's binary itself (SUPABASE_CLI_BINARY_OVERRIDE here), not through the npm " +
    "package's node launcher: the binary's parent is the process that ran it",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "readsync-cli-binary-" });
  try {
    // A stand-in for the binary that prints its parent's pid.
    const binary = `${dir}/supabase`;
    await Deno.writeTextFile(binary, `#!/bin/sh\necho "parent $PPID"\n`);
    await Deno.chmod(binary, 0o755);
    // In a process of its own: the override is read from the environment.
    const report = lastJsonLine(
      await runDenoChild([
        "eval",
        `const { supabaseCli } = await import(${JSON.stringify(databaseModule)});
         Deno.env.set("SUPABASE_CLI_BINARY_OVERRIDE", ${JSON.stringify(binary)});
         const ran = await supabaseCli(["--version"]);
         console.log(JSON.stringify({ pid: Deno.pid, ran }));
         Deno.exit(0);`,
      ], { timeoutMs: 60_000 }),
    ) as { pid: number; ran: unknown };
    assert.deepEqual(report.ran, { ok: true, output: `parent ${report.pid}` });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("supabaseCliBinary without SUPABASE_CLI_BINARY_OVERRIDE: this platform's package's binary", () => {
  const override = Deno.env.get("SUPABASE_CLI_BINARY_OVERRIDE");
  Deno.env.delete("SUPABASE_CLI_BINARY_OVERRIDE");
  try {
    // npm ci installs it, where the launcher (node_modules/supabase/dist/supabase.js) finds it.
    const installed = supabaseCliBinary();
    assert.match(installed ?? "", /\/node_modules\/@supabase\/cli-[a-z0-9-]+\/bin\/supabase$/);
    assert.ok(Deno.statSync(installed!).isFile, installed!);
  } finally {
    if (override !== undefined) Deno.env.set("SUPABASE_CLI_BINARY_OVERRIDE", override);
  }
});

Deno.test({
  name:
    "a stop (SIGTERM, to the stack's process alone) during the stack's platform bootstrap ends its psql: the " +
    "connection psql holds is closed once the stopped process has exited",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // A database that accepts and never answers holds the bootstrap's first psql (SUPABASE_DB_URL: the stack
  // starts no cluster of its own, and psql is the first child it runs).
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  const stackModule = new URL("./stack.ts", import.meta.url).href;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { startLocalStack } = await import(${JSON.stringify(stackModule)});
       await startLocalStack({ apiPort: 0, log: () => {} });
       console.log("the stack started: its psql was answered");`,
    ],
    env: { SUPABASE_DB_URL: `postgresql://postgres:postgres@127.0.0.1:${port}/postgres` },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = child.output();
  let connection: Deno.Conn | undefined;
  const guard = <T>(promise: Promise<T>, what: string) => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    return Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not within 60 s`)), 60_000);
      }),
    ]).finally(() => clearTimeout(timer));
  };
  try {
    // psql has connected: the stack is in its bootstrap.
    connection = await guard(listener.accept(), "psql's connection");
    child.kill("SIGTERM");
    const { code, stdout, stderr } = await guard(output, "the stopped process's exit");
    const decoder = new TextDecoder();
    assert.equal(code, 143, `stopped by SIGTERM:\n${decoder.decode(stdout)}\n${decoder.decode(stderr)}`);
    // psql ended with it: its end of the connection is closed (a psql left running would hold it open).
    const buffer = new Uint8Array(1024);
    await guard(
      (async () => {
        while (await connection!.read(buffer).catch(() => null) !== null) { /* what psql sent */ }
      })(),
      "psql's connection closed",
    );
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
    await output.catch(() => {});
    connection?.close();
    listener.close();
  }
});
