// `npm start` stops everything when its parent goes away without passing a signal on: an IDE's
// stop button sends SIGTERM to npm, which exits and leaves its children re-parented. And it runs a
// stack of its own even when the shell points SUPABASE_DB_URL / SUPABASE_URL somewhere (it would
// push migrations to that database and insert its demo user there). Stopped while its stack starts, it says
// so and exits with the signal's code once what it started is torn down, not 1 for a start the stop made fail.

import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { lastJsonLine, runDenoChild } from "../../tests/support/denoChild.ts";
import { assertPortFree } from "./postgres.ts";

// Where nothing listens: the "hosted project" npm start must ignore (a port free a moment ago will do:
// nothing here binds it, and if another process did, npm start still must not connect to it).
const freePort = () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
};

/** The port in the line of the printed summary that starts with `label` (e.g. "API URL"). */
function printedPort(printed: string, label: string): number {
  const port = Number(printed.match(new RegExp(`^\\s*${label}\\s+\\S+?://[^\\s/]*:(\\d+)`, "m"))?.[1]);
  assert.ok(port > 0, `no port on the "${label}" line:\n${printed}`);
  return port;
}

/**
 * `npm start` (local/main.ts) in the background of a parent that stands for npm (sh), its output going
 * to a file. The parent exits 0 once `release()` is called, leaving npm start re-parented; if npm start
 * exits first, the parent exits too (3, after appending "[npm start exited with code N]" to the output),
 * so that `untilPrinted` fails at once, showing what it printed, instead of waiting out its guard.
 */
async function npmStartUnderParent(env: Record<string, string>) {
  const output = await Deno.makeTempFile({ prefix: "readsync-orphan-" });
  const releaseFile = `${output}.release`;
  const parent = new Deno.Command("sh", {
    args: [
      "-c",
      `"${Deno.execPath()}" run -A local/main.ts > "${output}" 2>&1 & pid=$!; ` +
      `while [ ! -e "${releaseFile}" ]; do ` +
      `if ! kill -0 $pid 2>/dev/null; then wait $pid; echo "[npm start exited with code $?]" >> "${output}"; exit 3; fi; ` +
      `sleep 0.1; done; exit 0`,
    ],
    clearEnv: true,
    env: {
      PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin",
      HOME: Deno.env.get("HOME") ?? "/root",
      TMPDIR: Deno.env.get("TMPDIR") ?? "/tmp",
      ...env,
    },
    stdout: "null",
    stderr: "null",
  }).spawn();
  let exited: Deno.CommandStatus | null = null;
  const parentStatus = parent.status.then((status) => exited = status);
  const printed = () => Deno.readTextFile(output);
  return {
    parent,
    printed,
    /** What npm start printed once it includes `text`; throws at once when it exits before that. */
    async untilPrinted(text: string, guardMs = 60_000): Promise<string> {
      const upBy = Date.now() + guardMs;
      for (;;) {
        const ended = exited; // read before the output: all it printed is in the file by then
        const now = await printed();
        if (now.includes(text)) return now;
        if (ended) throw new Error(`npm start exited before it printed "${text}":\n${now}`);
        assert.ok(Date.now() < upBy, `npm start did not print "${text}" within ${guardMs / 1000} s:\n${now}`);
        // The next look at the file, or at once when the parent exits (npm start ended).
        await Promise.race([parentStatus, new Promise((r) => setTimeout(r, 100))]);
      }
    },
    async release(): Promise<void> {
      await Deno.writeTextFile(releaseFile, "").catch(() => {});
    },
    /** Releases the parent, waits for it and removes the files (npm start, orphaned, cleans up itself). */
    async end(): Promise<void> {
      await Deno.writeTextFile(releaseFile, "").catch(() => {});
      await parent.status;
      await Deno.remove(output).catch(() => {});
      await Deno.remove(releaseFile).catch(() => {});
    },
  };
}

Deno.test({
  name:
    "npm start: runs its own stack whatever SUPABASE_DB_URL says, and one whose parent dies stops and frees its ports",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const hostedPort = freePort();
  // A shell pointed at a hosted project (nothing listens there: a connection would fail the start).
  const started = await npmStartUnderParent({
    SUPABASE_DB_URL: `postgresql://postgres:hosted@127.0.0.1:${hostedPort}/postgres?sslmode=disable`,
    SUPABASE_URL: `http://127.0.0.1:${hostedPort}`,
    SUPABASE_ANON_KEY: "hosted-anon-key",
    PROGRESS_DB_URL: `postgresql://postgres:hosted@127.0.0.1:${hostedPort}/postgres?sslmode=disable`,
    SUPABASE_JWKS_URL: `http://127.0.0.1:${hostedPort}/auth/v1/.well-known/jwks.json`,
    // 0: the stack binds ports the OS picks and prints them (ports picked here and released would
    // be free only a moment: another run on this machine could take one before the child binds it).
    READSYNC_API_PORT: "0",
    READSYNC_DB_PORT: "0",
    READSYNC_WEB: "0",
  });
  try {
    // The summary's last line: everything it prints (ports, token) is there.
    const printed = await started.untilPrinted("Ctrl-C stops everything");
    const apiPort = printedPort(printed, "API URL");
    const dbPort = printedPort(printed, "DB URL");
    assert.match(printed, /database: local PostgreSQL on port/, printed);
    assert.match(
      printed,
      /SUPABASE_DB_URL, SUPABASE_URL, SUPABASE_ANON_KEY set: npm start ignores them/,
      printed,
    );
    assert.match(printed, /PROGRESS_DB_URL, SUPABASE_JWKS_URL set: the local functions ignore them/, printed);
    assert.doesNotMatch(printed, /hosted-anon-key|database: SUPABASE_DB_URL|api: SUPABASE_URL/, printed);
    const res = await fetch(`http://127.0.0.1:${apiPort}/functions/v1/progress`).catch(async (e) => {
      throw new Error(`${e}\n${await started.printed()}`);
    });
    await res.body?.cancel();
    assert.equal(res.status, 401, "the stack answers while it runs");
    // The demo token's write lands in the stack's own database (not through PROGRESS_DB_URL).
    const token = printed.match(/export TOKEN=(\S+)/)?.[1];
    assert.ok(token, printed);
    const write = await fetch(`http://127.0.0.1:${apiPort}/functions/v1/progress`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        series_id: "one-piece",
        chapter: 1,
        page: 1,
        percentage: 0.01,
        device_id: "phone-1",
        updated_at: new Date().toISOString(),
      }),
    });
    assert.equal(write.status, 200, await write.text());
    await started.release();
    assert.equal((await started.parent.status).code, 0, await started.printed());
    // Its parent is gone: within a few seconds both ports are free again.
    const deadline = Date.now() + 15_000;
    let freed = false;
    while (!freed && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 250));
      try {
        assertPortFree(apiPort);
        assertPortFree(dbPort);
        freed = true;
      } catch { /* still up */ }
    }
    assert.ok(freed, `ports still held 15 s after the parent exited:\n${await started.printed()}`);
  } finally {
    await started.end();
  }
});

Deno.test({
  name:
    "npm start: a port variable not written as a whole number from 0 to 65535 in decimal digits stops it " +
    "at once, naming the variable, before anything starts",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // Number() took "abc" as NaN, "5.0" as port 5 and "054321" as 54321; 70000 is no port.
  for (
    const [name, text] of [
      ["READSYNC_API_PORT", "abc"],
      ["READSYNC_DB_PORT", "5.0"],
      ["READSYNC_WEB_PORT", "03000"],
      ["READSYNC_API_PORT", "70000"],
    ]
  ) {
    // Free ports otherwise: a start that wrongly went on would not collide with anything.
    const started = await npmStartUnderParent({
      READSYNC_API_PORT: "0",
      READSYNC_DB_PORT: "0",
      READSYNC_WEB_PORT: "0",
      READSYNC_WEB: "0",
      [name]: text,
    });
    try {
      // Its refusal ends it, which ends the wait at once (no summary will ever come).
      const error = await started.untilPrinted("Ctrl-C stops everything").then(
        (printed) => assert.fail(`${name}=${text}: npm start came up:\n${printed}`),
        (error: Error) => error,
      );
      assert.match(error.message, /^npm start exited before it printed/, error.message);
      const printed = await started.printed();
      assert.match(
        printed,
        new RegExp(
          `^npm start environment variable ${name} must be a whole number from 0 to 65535, written in ` +
            `decimal digits without a fraction or leading zeros \\(got "${text.replace(".", "\\.")}"\\)\n` +
            `\\[npm start exited with code 1\\]\n$`,
        ),
        `${name}=${text}: ${error.message}`,
      );
    } finally {
      await started.end();
    }
  }
});

Deno.test({
  name:
    "npm start: READSYNC_API_HOST that is no IPv4 address stops it at once, naming the variable, before " +
    "anything starts",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  for (const text of ["localhost", "::", "127.1"]) {
    const started = await npmStartUnderParent({
      READSYNC_API_PORT: "0",
      READSYNC_DB_PORT: "0",
      READSYNC_WEB_PORT: "0",
      READSYNC_WEB: "0",
      READSYNC_API_HOST: text,
    });
    try {
      const error = await started.untilPrinted("Ctrl-C stops everything").then(
        (printed) => assert.fail(`READSYNC_API_HOST=${text}: npm start came up:\n${printed}`),
        (error: Error) => error,
      );
      assert.match(error.message, /^npm start exited before it printed/, error.message);
      assert.equal(
        await started.printed(),
        "npm start environment variable READSYNC_API_HOST must be an IPv4 address, such as 0.0.0.0 (every " +
          `interface) or 127.0.0.1 (this machine only) (got ${JSON.stringify(text)})\n` +
          "[npm start exited with code 1]\n",
      );
    } finally {
      await started.end();
    }
  }
});

/**
 * npm start (local/main.ts's npmStart) with a stand-in for startLocalStack, in a process of its own: the
 * stand-in makes a directory (its "database"), registers its removal with the exit cleanups as
 * startPostgres does, prints `[readsync] database: stand-in` and then, by `mode`:
 * - "fails once torn down": waits until its cleanup has removed the directory, then fails as a start whose
 *   database went away does ("connection refused");
 * - "never notices": waits for ever (a step that does not notice the teardown);
 * - "failed first": fails at once, as a step that Ctrl-C reached before npm start's signal listener ran
 *   ("supabase db push failed (signal SIGINT)"), its cleanup then waiting until npm start is stopped.
 */
async function npmStartWithStandInStack(mode: "fails once torn down" | "never notices" | "failed first") {
  const root = await Deno.makeTempDir({ prefix: "readsync-npm-start-stopped-" });
  const database = `${root}/database`;
  await Deno.mkdir(database);
  const script = `${root}/npm-start.ts`;
  await Deno.writeTextFile(
    script,
    `import { npmStart } from ${JSON.stringify(new URL("../main.ts", import.meta.url).href)};
     import { onCleanup, stoppedBy } from ${JSON.stringify(new URL("./cleanup.ts", import.meta.url).href)};
     const mode = ${JSON.stringify(mode)};
     await npmStart(async (options) => {
       let removed = () => {};
       const gone = new Promise((resolve) => removed = resolve);
       onCleanup(async () => {
         if (mode === "failed first") {
           console.log("[stand-in] tearing down the failed start");
           for (let i = 0; i < 1500 && !stoppedBy(); i++) await new Promise((r) => setTimeout(r, 20));
         }
         await Deno.remove(${JSON.stringify(database)}, { recursive: true });
         console.log("[stand-in] database removed");
         removed();
       });
       options.log("database: stand-in");
       if (mode === "failed first") throw new Error("supabase db push failed (signal SIGINT)");
       if (mode === "fails once torn down") {
         await gone;
         throw new Error("connection refused: the stand-in database is gone");
       }
       return await new Promise(() => {});
     });`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    // The repository's configuration: main.ts imports "postgres" through its import map.
    args: [
      "run",
      "-A",
      "--no-lock",
      "--config",
      fileURLToPath(new URL("../../deno.json", import.meta.url)),
      script,
    ],
    env: { READSYNC_WEB: "0" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stdout = "";
  let stderr = "";
  const collect = async (stream: ReadableStream<Uint8Array>, add: (text: string) => void) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) add(text);
  };
  const collected = Promise.all([
    collect(child.stdout, (text) => stdout += text),
    collect(child.stderr, (text) => stderr += text),
  ]);
  let exited: Deno.CommandStatus | null = null;
  const status = child.status.then(async (s) => {
    await collected;
    return exited = s;
  });
  const printed = () => `stdout:\n${stdout}\nstderr:\n${stderr}`;
  return {
    child,
    database,
    printed,
    stdout: () => stdout,
    stderr: () => stderr,
    /** Waits until it printed `text` (throws at once if it exits first; 60 s hang guard). */
    async untilPrinted(text: string): Promise<void> {
      const upBy = Date.now() + 60_000;
      while (!(stdout + stderr).includes(text)) {
        assert.ok(
          !exited,
          `it exited (${JSON.stringify(exited)}) before it printed "${text}":\n${printed()}`,
        );
        assert.ok(Date.now() < upBy, `it did not print "${text}" within 60 s:\n${printed()}`);
        await Promise.race([status, new Promise((r) => setTimeout(r, 50))]);
      }
    },
    /** Its status (60 s hang guard, then SIGKILLed). */
    async exitStatus(): Promise<Deno.CommandStatus> {
      let guard: ReturnType<typeof setTimeout> | undefined;
      const result = await Promise.race([
        status,
        new Promise<null>((r) => guard = setTimeout(() => r(null), 60_000)),
      ]);
      clearTimeout(guard);
      if (result) return result;
      child.kill("SIGKILL");
      await status;
      throw new Error(`still running 60 s after it was stopped:\n${printed()}`);
    },
    async remove(): Promise<void> {
      if (!exited) {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
        await status;
      }
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}

Deno.test({
  name:
    "npm start: a stop while its stack starts exits with the signal's code (130, 143, 129), saying it was " +
    "stopped, not failed, once what it started is torn down, whether the start then fails, never ends or " +
    "had failed of it first",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const cases = [
    { mode: "fails once torn down", signal: "SIGINT", code: 130 },
    { mode: "fails once torn down", signal: "SIGTERM", code: 143 },
    { mode: "fails once torn down", signal: "SIGHUP", code: 129 },
    { mode: "never notices", signal: "SIGTERM", code: 143 },
    { mode: "failed first", signal: "SIGINT", code: 130 },
  ] as const;
  for (const { mode, signal, code } of cases) {
    const what = `${signal} while the stand-in stack starts (${mode})`;
    const started = await npmStartWithStandInStack(mode);
    try {
      await started.untilPrinted(
        mode === "failed first"
          ? "[stand-in] tearing down the failed start"
          : "[readsync] database: stand-in",
      );
      started.child.kill(signal);
      const status = await started.exitStatus();
      assert.equal(status.code, code, `${what}: exits as stopped\n${started.printed()}`);
      assert.match(
        started.stdout(),
        new RegExp(
          `^\\[readsync\\] npm start was stopped \\(${signal}\\) while its stack was starting: tearing down ` +
            `what it had started$`,
          "m",
        ),
        `${what}: says it was stopped\n${started.printed()}`,
      );
      assert.match(
        started.stdout(),
        /^\[stand-in\] database removed$/m,
        `${what}: torn down\n${started.printed()}`,
      );
      assert.equal(
        await Deno.stat(started.database).then(() => true, () => false),
        false,
        `${what}: the stand-in database was left behind`,
      );
      if (mode !== "failed first") {
        // The failure the stop caused is the stop's, not a failure to report.
        assert.doesNotMatch(started.printed(), /connection refused|failed/, `${what}\n${started.printed()}`);
      }
      assert.doesNotMatch(started.stdout(), /stack is up/, `${what}\n${started.printed()}`);
    } finally {
      await started.remove();
    }
  }
});

Deno.test({
  name:
    "exit cleanups: one registered once the run-down has begun runs at once, not after the cleanup under " +
    "way (which may wait for it) nor never once the run-down has ended; none runs twice",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  // In a process of its own: the test runner's run-down must stay unrun.
  const ran = await lastLineOf(
    `const { onCleanup, runCleanups } = await import(${JSON.stringify(cleanupModule)});
       const ran = [];
       // A hang guard: what a wait that never ends gives instead.
       const within = (promise, ms, otherwise) => {
         let timer;
         return Promise.race([promise, new Promise((r) => timer = setTimeout(() => r(otherwise), ms))])
           .finally(() => clearTimeout(timer));
       };
       /**
        * A step's child process, registered (as serve.mjs's run() does) as soon as it runs; "ended"
        * resolves once its cleanup has ended it.
        */
       const startChild = (name) => {
         const child = new Deno.Command("sleep", { args: ["600"] }).spawn();
         let endedBy = () => {};
         const ended = new Promise((r) => endedBy = r);
         onCleanup(async () => {
           child.kill("SIGKILL");
           await child.status;
           ran.push(name + " ended by its cleanup");
           endedBy("the child ended");
         });
         return { child, ended };
       };
       // As npm start's last cleanup (main.ts's holdExitUntilSaid): it waits for the start under way to
       // end, and that start's step had started a child as the stop came.
       onCleanup(async () => {
         ran.push("last cleanup begins");
         const underWay = startChild("the child started under way");
         ran.push("last cleanup: " + await within(underWay.ended, 20_000, "gave up"));
       });
       await runCleanups();
       // After the run-down has ended: a child started only now, and a cleanup removed as it is registered.
       const after = startChild("the child started after");
       const forget = onCleanup(() => ran.push("a removed cleanup ran"));
       forget();
       ran.push("after: " + await within(after.ended, 20_000, "still running"));
       await runCleanups(); // runs none again
       try {
         after.child.kill("SIGKILL");
       } catch { /* gone */ }
       console.log(JSON.stringify(ran));`,
  );
  assert.deepEqual(ran, [
    "last cleanup begins",
    "the child started under way ended by its cleanup",
    "last cleanup: the child ended",
    "the child started after ended by its cleanup",
    "after: the child ended",
  ]);
});

/** Runs `script` (TypeScript, `deno eval`) in a process of its own and returns its last line of output, parsed. */
async function lastLineOf(script: string): Promise<unknown> {
  return lastJsonLine(await runDenoChild(["eval", script], { timeoutMs: 120_000 }));
}

Deno.test({
  name:
    "exit cleanups: those registered together once the run-down has begun run newest first (a step's end " +
    "before the release of the build lock it holds), and an older cleanup only once they have run",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  const ran = await lastLineOf(
    `const { onCleanup, runCleanups } = await import(${JSON.stringify(cleanupModule)});
     const ran = [];
     // Registered before the run-down: as the stack's, which the web app's steps use.
     onCleanup(() => ran.push("older cleanup"));
     // The cleanup under way as a start runs on (serve.mjs's withBuildLock after a stop): it takes the
     // lock, registers its release, then starts its step (a child) and registers that step's end.
     onCleanup(() => {
       ran.push("under way");
       onCleanup(() => ran.push("lock released"));
       const step = new Deno.Command("sleep", { args: ["600"], stdin: "null", stdout: "null", stderr: "null" }).spawn();
       onCleanup(async () => {
         step.kill("SIGKILL");
         await step.status;
         ran.push("step ended");
       });
     });
     await runCleanups();
     console.log(JSON.stringify(ran));`,
  );
  assert.deepEqual(ran, ["under way", "step ended", "lock released", "older cleanup"]);
});

Deno.test({
  name:
    "exit cleanups: late ones registered while an earlier late batch runs (npm ci exiting 0 as its end comes) " +
    "run before that batch's older ones (the build lock's release), not beside them",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  const ran = await lastLineOf(
    `const { onCleanup, runCleanups } = await import(${JSON.stringify(cleanupModule)});
     const ran = [];
     onCleanup(() => ran.push("older cleanup"));
     // A start that runs on after the stop (serve.mjs's withBuildLock): it takes the lock and registers its
     // release, then runs npm ci and registers its end (one late batch). npm ci exits 0 just as its end comes:
     // the start goes on to next build and registers that step's end (a second late batch) while the first
     // batch's end of npm ci is still under way.
     let nextStepStarted = () => {};
     const nextStep = new Promise((resolve) => nextStepStarted = resolve);
     const start = async () => {
       onCleanup(() => ran.push("lock released"));
       await new Promise((npmCiExited) =>
         onCleanup(async () => {
           npmCiExited();
           await nextStep;
           ran.push("npm ci ended");
         })
       );
       const build = new Deno.Command("sleep", { args: ["600"], stdin: "null", stdout: "null", stderr: "null" }).spawn();
       onCleanup(async () => {
         build.kill("SIGKILL");
         await build.status;
         ran.push("next build ended");
       });
       nextStepStarted();
     };
     onCleanup(() => {
       ran.push("under way");
       void start();
     });
     await runCleanups();
     console.log(JSON.stringify(ran));`,
  );
  assert.deepEqual(ran, ["under way", "npm ci ended", "next build ended", "lock released", "older cleanup"]);
});

Deno.test({
  name:
    "exit cleanups: pendingCleanups() counts late ones, those still to run and those running, until they have " +
    "ended",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  const seen = await lastLineOf(
    `const { onCleanup, pendingCleanups, runCleanups } = await import(${JSON.stringify(cleanupModule)});
     let lateOneRuns = () => {};
     const lateOneRunning = new Promise((resolve) => lateOneRuns = resolve);
     let release = () => {};
     const released = new Promise((resolve) => release = resolve);
     onCleanup(() => {
       // Registered together once the run-down has begun: the newer runs (and is held) first.
       onCleanup(() => {});
       onCleanup(async () => {
         lateOneRuns();
         await released;
       });
     });
     const runDown = runCleanups();
     await lateOneRunning;
     // A caller waiting for the cleanups to have ended: one late cleanup runs, one is still to run.
     const whileALateOneRuns = pendingCleanups();
     release();
     await runDown;
     console.log(JSON.stringify({ whileALateOneRuns, afterTheRunDown: pendingCleanups() }));`,
  );
  assert.deepEqual(seen, { whileALateOneRuns: 2, afterTheRunDown: 0 });
});

Deno.test({
  name:
    "exit cleanups: a stop (SIGINT) tells whenStopped() before it begins its cleanups: what waits for it runs " +
    "before the newest cleanup has begun",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  const ended = await runDenoChild([
    "eval",
    `const { cleanupsBegun, onCleanup, whenStopped } = await import(${JSON.stringify(cleanupModule)});
     const seen = [];
     // The oldest cleanup, run last: the report.
     onCleanup(() => console.log(JSON.stringify(seen)));
     // The newest, run first by the run-down.
     onCleanup(() => seen.push("the newest cleanup began"));
     void whenStopped().then((stop) => seen.push("told: " + stop.by + ", run-down begun: " + cleanupsBegun()));
     // A hang guard only (the stop's exit ends this process first).
     setTimeout(() => {}, 60_000);
     Deno.kill(Deno.pid, "SIGINT");`,
  ], { timeoutMs: 120_000 });
  assert.equal(ended.code, 130, `${ended.stdout}\n${ended.stderr}`);
  assert.deepEqual(JSON.parse(ended.stdout.trim().split("\n").pop()!), [
    "told: SIGINT, run-down begun: false",
    "the newest cleanup began",
  ]);
});

Deno.test({
  name:
    "exit cleanups: a synchronous exit (Deno.exit) with cleanups pending still starts the newest one: a child " +
    "it ends at once is ended",
  ignore: Deno.build.os !== "linux", // /proc
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  const pid = await lastLineOf(
    `const { onCleanup } = await import(${JSON.stringify(cleanupModule)});
     const child = new Deno.Command("sleep", { args: ["600"], stdin: "null", stdout: "null", stderr: "null" }).spawn();
     // As postgres.ts's initdb: the child is killed first thing, then waited for (which an exit cuts short).
     onCleanup(async () => {
       Deno.kill(child.pid, "SIGKILL");
       await child.status;
     });
     console.log(JSON.stringify(child.pid));
     Deno.exit(0);`,
  ) as number;
  /** Running: neither gone nor a zombie (ended, waiting to be reaped by whoever inherited it). */
  const running = () => {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
    } catch {
      return false;
    }
  };
  try {
    // A hang guard only: SIGKILL ends it at once.
    for (let i = 0; i < 100 && running(); i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(running(), false, `the child (pid ${pid}) still runs after its parent's Deno.exit`);
  } finally {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* ended */ }
  }
});
