// startLocalStack registers what it runs with the cleanups (cleanup.ts) while it runs, as startPostgres
// does its cluster: the API server too (and its supabase db push while that runs), so that Ctrl-C,
// SIGTERM, a parent gone or the end of a test run (runCleanups) closes it; and the stack's stop() removes
// them again (a process that starts and stops stacks keeps none of them).

import assert from "node:assert/strict";
import { fileURLToPath, pathToFileURL } from "node:url";
import { lastJsonLine, runDenoChild } from "../../tests/support/denoChild.ts";

Deno.test({
  name:
    "a running local stack's API server is closed by the cleanups; its stop() closes it and removes the cleanup",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const stackModule = new URL("./stack.ts", import.meta.url).href;
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  // In a process of its own: runCleanups runs once per process, and the test runner's must stay unrun.
  // Two stacks (a cluster each, migrations pushed): a generous guard for a loaded machine.
  const report = lastJsonLine(
    await runDenoChild([
      "eval",
      `const { startLocalStack } = await import(${JSON.stringify(stackModule)});
       const { pendingCleanups, runCleanups } = await import(${JSON.stringify(cleanupModule)});
       // A stack of its own (npm test's environment points SUPABASE_DB_URL at the run's stack).
       const options = { apiPort: 0, dbPort: 0, log: () => {}, ownStackOnly: true };
       const portOf = (stack) => Number(new URL(stack.apiUrl).port);
       const free = (port) => {
         try {
           Deno.listen({ hostname: "127.0.0.1", port }).close();
           return true;
         } catch {
           return false;
         }
       };
       const before = pendingCleanups();
       const stopped = await startLocalStack(options);
       const whileRunning = pendingCleanups();
       await stopped.stop();
       const afterStop = pendingCleanups();
       const running = await startLocalStack(options);
       const runningCleanups = pendingCleanups();
       await runCleanups(); // as npm test's end, Ctrl-C or SIGTERM
       console.log(JSON.stringify({
         before, whileRunning, afterStop, runningCleanups, afterCleanups: pendingCleanups(),
         stoppedFree: free(portOf(stopped)), runningFree: free(portOf(running)),
       }));
       Deno.exit(0); // an API server left listening would keep the process up`,
    ], { timeoutMs: 180_000 }),
  ) as { before: number };
  const { before } = report;
  assert.deepEqual(
    report,
    {
      before,
      whileRunning: before + 2,
      afterStop: before,
      runningCleanups: before + 2,
      afterCleanups: 0,
      stoppedFree: true,
      runningFree: true,
    },
    "a running stack has its cluster's stop and its API server's close registered; stop() removes both " +
      "and frees the API port; the cleanups close a running stack's API server",
  );
});

Deno.test({
  name:
    "startLocalStack tells onPhase each step of its start as it ends (the benchmark's cold-start phases): the " +
    "database's, bootstrap, migrations, the API's and the Realtime endpoint's",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const stackModule = new URL("./stack.ts", import.meta.url).href;
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  // In a process of its own, as above.
  const phases = lastJsonLine(
    await runDenoChild([
      "eval",
      `const { startLocalStack } = await import(${JSON.stringify(stackModule)});
       const { runCleanups } = await import(${JSON.stringify(cleanupModule)});
       const phases = [];
       const stack = await startLocalStack({
         apiPort: 0,
         dbPort: 0,
         log: () => {},
         ownStackOnly: true,
         onPhase: (name, ms) => phases.push({ name, ms }),
       });
       await stack.stop();
       await runCleanups();
       console.log(JSON.stringify(phases));`,
    ], { timeoutMs: 180_000 }),
  ) as { name: string; ms: number }[];
  for (const { name, ms } of phases) assert.ok(Number.isFinite(ms) && ms >= 0, `${name}: ${ms}`);
  // As root the cluster runs as a user of its own; the first start on a machine makes the template (initdb);
  // a port another process took first makes the server start again on another.
  const names = phases.map((phase) => phase.name).filter((name) =>
    name !== "database: cluster OS user (/etc/passwd, else id)" &&
    name !== "database: initdb template made (initdb)" &&
    !/^database: server start .*, attempt \d+\)$/.test(name)
  );
  const templateOff = Deno.env.get("READSYNC_PG_TEMPLATE") === "0";
  // The migrated template (migrated_template.ts) copied when there is one for the migrations; else the
  // initdb template, and the migrated one made once the push is done (before the API starts).
  const migratedCopied = names.includes("database: migrated template copied (cp -a)");
  assert.deepEqual(names, [
    "database: system packages checked",
    ...(templateOff ? ["database: initdb"] : [
      "database: template looked up (postgres --version, kept per binary)",
      migratedCopied ? "database: migrated template copied (cp -a)" : "database: template copied (cp -a)",
    ]),
    "database: server start (launch until pg_isready answers)",
    "platform bootstrap (psql)",
    "migrations (supabase db push)",
    ...(templateOff || migratedCopied
      ? []
      : ["database: migrated template made (fast shutdown, copy, restart)"]),
    "API keys signed",
    "database connection (as psql makes it)",
    "API: functions gateway (functions loaded)",
    "Realtime: publication checked",
    "Realtime: WAL stream started",
    "Realtime: message partitions",
    "Realtime: project keys verified",
    "API: Realtime endpoint",
  ]);
});

Deno.test({
  name:
    "a stop (SIGTERM, to the stack's process alone) during the stack's supabase db push ends the push: no CLI " +
    "process (the binary, a process it started) is left once the stopped process has exited",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const stackModule = new URL("./stack.ts", import.meta.url).href;
  const dir = await Deno.makeTempDir({ prefix: "readsync-push-stop-" });
  // The CLI's binary (SUPABASE_CLI_BINARY_OVERRIDE, which the stack runs itself): a push still under way
  // when the stop comes, which would end only once its database is gone (the real one against a cluster torn
  // down) or never (this one), with a process of its own started (as the real binary may run another: the
  // whole process group is ended); it says it has begun, with its own pid and that process's.
  const binary = `${dir}/supabase`;
  const began = `${dir}/began`;
  await Deno.writeTextFile(
    binary,
    `#!/bin/sh\nsleep 300 &\necho "$$ $!" > '${began}.tmp'\nmv '${began}.tmp' '${began}'\nexec sleep 300\n`,
  );
  await Deno.chmod(binary, 0o755);
  /** Whether `pid` runs (a zombie, not yet reaped by whoever inherited it, has ended). */
  const running = (pid: number) => {
    try {
      return !/^\d+ \(.*\) Z /.test(Deno.readTextFileSync(`/proc/${pid}/stat`));
    } catch {
      return false;
    }
  };
  let pids: number[] = [];
  try {
    const ended = await runDenoChild([
      "eval",
      `const { startLocalStack } = await import(${JSON.stringify(stackModule)});
       Deno.env.set("SUPABASE_CLI_BINARY_OVERRIDE", ${JSON.stringify(binary)});
       const exists = (path) => { try { Deno.statSync(path); return true; } catch { return false; } };
       const onPhase = async (name) => {
         if (name !== "platform bootstrap (psql)") return;
         // The push comes next: stopped once it has begun (a hang guard bounds the wait).
         for (let i = 0; i < 3000 && !exists(${JSON.stringify(began)}); i++) {
           await new Promise((r) => setTimeout(r, 20));
         }
         Deno.kill(Deno.pid, "SIGTERM");
       };
       await startLocalStack({ apiPort: 0, dbPort: 0, log: () => {}, ownStackOnly: true, onPhase });
       console.log("the stack started: the stop did not come during its push");`,
    ], { timeoutMs: 180_000 });
    assert.equal(ended.code, 143, `stopped by SIGTERM:\n${ended.stdout}\n${ended.stderr}`);
    pids = (await Deno.readTextFile(began)).trim().split(" ").map(Number);
    assert.deepEqual(
      pids.filter(running),
      [],
      `the push's processes (binary ${pids[0]}, the process it started ${
        pids[1]
      }) ended with the stopped process`,
    );
  } finally {
    for (const pid of pids) {
      try {
        Deno.kill(pid, "SIGKILL");
      } catch { /* gone */ }
    }
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "a checkout whose path has a space and a non-ASCII letter starts its stack: the cluster, the platform " +
    "bootstrap (bootstrap.sql read from it), supabase db push (run in it) and the functions (loaded from it)",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const root = fileURLToPath(new URL("../../", import.meta.url));
  const parent = await Deno.makeTempDir({ prefix: "readsync-checkout-" });
  const checkout = `${parent}/my books/läsning`;
  try {
    // What a start reads: the stack's code, the shared code the functions import, supabase/ (migrations,
    // config.toml, functions) and the Deno configuration; node_modules (the CLI) is the repository's.
    await Deno.mkdir(checkout, { recursive: true });
    const copied = await new Deno.Command("cp", {
      args: [
        "-a",
        ...["deno.json", "deno.lock", "package.json", "local", "shared", "supabase"].map((name) =>
          `${root}${name}`
        ),
        `${checkout}/`,
      ],
      stderr: "piped",
    }).output();
    assert.ok(copied.success, new TextDecoder().decode(copied.stderr));
    await Deno.symlink(`${root}node_modules`, `${checkout}/node_modules`);
    const stackModule = pathToFileURL(`${checkout}/local/stack/stack.ts`).href;
    // In a process of its own, started in the checkout (its deno.json), with a temp dir of its own: no
    // migrated template (migrated_template.ts) yet, so its supabase db push applies every migration.
    const tmp = `${parent}/tmp`;
    await Deno.mkdir(tmp);
    await Deno.chmod(parent, 0o711);
    await Deno.chmod(tmp, 0o711);
    const report = lastJsonLine(
      await runDenoChild([
        "eval",
        `Deno.env.set("TMPDIR", ${JSON.stringify(tmp)});
         const { startLocalStack } = await import(${JSON.stringify(stackModule)});
         const stack = await startLocalStack({ apiPort: 0, dbPort: 0, log: () => {}, ownStackOnly: true });
         // The progress function answers its CORS preflight (404: no such function; 503: it failed to load).
         const preflight = await fetch(stack.apiUrl + "/functions/v1/progress", { method: "OPTIONS" });
         await preflight.body?.cancel();
         await stack.stop();
         const applied = stack.migrationLog.match(/Applying migration/g)?.length ?? 0;
         console.log(JSON.stringify({ applied, preflight: preflight.status }));
         Deno.exit(0);`,
      ], { timeoutMs: 180_000, cwd: checkout }),
    );
    const migrations = [...Deno.readDirSync(`${checkout}/supabase/migrations`)]
      .filter((entry) => entry.name.endsWith(".sql")).length;
    assert.deepEqual(report, { applied: migrations, preflight: 204 });
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
});

Deno.test("no module takes a file's path from its URL's pathname (percent-encoded: no such file)", async () => {
  const root = fileURLToPath(new URL("../../", import.meta.url));
  const found: string[] = [];
  const walk = async (dir: string) => {
    for await (const entry of Deno.readDir(`${root}${dir}`)) {
      if (entry.name === "node_modules" || entry.name.startsWith(".")) continue;
      const path = `${dir}/${entry.name}`;
      if (entry.isDirectory) await walk(path);
      else if (/\.(ts|mjs|js)$/.test(entry.name)) {
        const text = await Deno.readTextFile(`${root}${path}`);
        for (const [i, line] of text.split("\n").entries()) {
          if (/import\.meta\.url\)\.pathname/.test(line)) found.push(`${path}:${i + 1}`);
        }
      }
    }
  };
  for (const dir of ["local", "shared", "bench", "tests", "supabase"]) await walk(dir);
  assert.deepEqual(found, [], "use fileURLToPath(new URL(..., import.meta.url))");
});
