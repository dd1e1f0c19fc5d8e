// examples/web/serve.mjs outside a browser: what `node serve.mjs` takes as PORT, that a stop during the
// first use's `npm ci` or `next build` ends them and everything they started, the build lock a SIGKILLed
// start leaves (or one whose holder file is half-written), and how npm start's wiring of the web app
// (local/web.ts) tells a stop from a failure. Each run uses a copy of serve.mjs in a folder of its own (its
// APP_DIR), with a fake `npm` on PATH and a fake `next` that block until signalled, so nothing real is
// installed or built and the step under way is known, not raced. Every process a test starts has the
// folder in its command line: none may be left when the test ends (leftovers()).

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { startWebAppBesideStack } from "../../local/web.ts";
import { startWebAppAndAnnounce } from "../../local/announce.ts";
import type { WebAppOptions } from "../../examples/web/serve.mjs";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const GUARD_MS = 30_000;

type Step = "npm ci" | "next build" | "next start";

/**
 * <tmp>/examples/web with serve.mjs, a package-lock.json and, for "next build", node_modules already
 * installed (stamp and a fake next), for "next start" a build too (.next/BUILD_ID and the stamp of the
 * sources' hash); <tmp>/bin/npm. Both fakes run <tmp>/fake-step.cjs, which writes its
 * pid to `pidFile` once it runs and `pidFile`.term when it gets SIGTERM, then exits, and otherwise runs
 * until signalled. A `stubborn` one ignores SIGTERM and has started a worker of its own (`pidFile`.worker,
 * sharing its output, as npm's scripts and next build's workers do) that ignores SIGTERM too.
 */
async function fixture(step: Step, { stubborn = false } = {}) {
  const root = await Deno.makeTempDir({ prefix: "readsync-serve-" });
  const appDir = path.join(root, "examples", "web");
  const binDir = path.join(root, "bin");
  await Deno.mkdir(appDir, { recursive: true });
  await Deno.mkdir(binDir);
  await Deno.copyFile(path.join(REPO_ROOT, "examples/web/serve.mjs"), path.join(appDir, "serve.mjs"));
  await Deno.copyFile(path.join(REPO_ROOT, "examples/web/serve.d.ts"), path.join(appDir, "serve.d.ts"));
  const lock = '{"lockfileVersion":3}\n';
  await Deno.writeTextFile(path.join(appDir, "package-lock.json"), lock);
  const pidFile = path.join(root, "step.pid");
  const fakeStep = path.join(root, "fake-step.cjs");
  const worker = path.join(root, "worker.cjs");
  const publish =
    `(file, text) => { fs.writeFileSync(file + ".tmp", text); fs.renameSync(file + ".tmp", file); }`;
  await Deno.writeTextFile(
    worker,
    `const fs = require("node:fs");
     process.on("SIGTERM", () => {});
     (${publish})(${JSON.stringify(`${pidFile}.worker`)}, String(process.pid));
     setInterval(() => {}, 1e9);`,
  );
  await Deno.writeTextFile(
    fakeStep,
    `const fs = require("node:fs");
     const pidFile = ${JSON.stringify(pidFile)};
     const publish = ${publish};
     process.on("SIGTERM", () => {
       fs.writeFileSync(pidFile + ".term", "");
       if (!${stubborn}) process.exit(143);
     });
     if (${stubborn}) {
       require("node:child_process").spawn(process.execPath, [${
      JSON.stringify(worker)
    }], { stdio: "inherit" });
       // Running once its worker runs (and ignores SIGTERM).
       const poll = setInterval(() => {
         if (!fs.existsSync(pidFile + ".worker")) return;
         clearInterval(poll);
         publish(pidFile, String(process.pid));
       }, 20);
     } else publish(pidFile, String(process.pid));
     setInterval(() => {}, 1e9);`,
  );
  await Deno.writeTextFile(path.join(binDir, "npm"), `#!/bin/sh\nexec node "${fakeStep}" "$@"\n`, {
    mode: 0o755,
  });
  if (step !== "npm ci") {
    const nextBin = path.join(appDir, "node_modules/next/dist/bin");
    await Deno.mkdir(nextBin, { recursive: true });
    await Deno.writeTextFile(
      path.join(appDir, "node_modules/.readsync-lock-hash"),
      createHash("sha256").update(lock).digest("hex"),
    );
    await Deno.writeTextFile(path.join(nextBin, "next"), `require(${JSON.stringify(fakeStep)});`);
  }
  if (step === "next start") {
    const { sourceHash } = await import(pathToFileURL(path.join(appDir, "serve.mjs")).href);
    await Deno.mkdir(path.join(appDir, ".next"));
    await Deno.writeTextFile(path.join(appDir, ".next/BUILD_ID"), "fake");
    await Deno.writeTextFile(path.join(appDir, ".next/readsync-build-hash"), sourceHash());
  }
  const env = {
    PATH: `${binDir}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`,
    HOME: Deno.env.get("HOME") ?? "/root",
    TMPDIR: Deno.env.get("TMPDIR") ?? "/tmp",
    SUPABASE_URL: "http://127.0.0.1:9",
    SUPABASE_ANON_KEY: "anon",
  };
  const exists = (file: string) => Deno.stat(file).then(() => true, () => false);
  const alive = async (pid: number) =>
    (await new Deno.Command("sh", { args: ["-c", `kill -0 ${pid}`], stderr: "null" }).output()).success;
  /** The processes (pid and command line) that mention this folder: the parents, fakes and worker. */
  const leftovers = async () => {
    const ps = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdout: "piped" }).output();
    return new TextDecoder().decode(ps.stdout).split("\n").filter((line) => line.includes(root))
      .map((line) => line.trim());
  };
  return {
    root,
    appDir,
    env,
    lockDir: path.join(appDir, ".readsync-build.lock"),
    pidFile,
    exists,
    alive,
    leftovers,
    /** The fake step's pid once it runs; throws at once if `parent` ended first. */
    async stepRunning(ended: () => Deno.CommandStatus | null, printed: () => string): Promise<number> {
      const upBy = Date.now() + GUARD_MS;
      for (;;) {
        const done = ended();
        if (await exists(pidFile)) return Number((await Deno.readTextFile(pidFile)).trim());
        assert.ok(!done, `the parent exited (${JSON.stringify(done)}) before ${step} ran:\n${printed()}`);
        assert.ok(Date.now() < upBy, `${step} did not run within ${GUARD_MS / 1000} s:\n${printed()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    /** Asserts that nothing this fixture started still runs. */
    async assertNothingLeft(what: string) {
      assert.deepEqual(await leftovers(), [], `${what}: processes of this test still run`);
    },
    /** Ends what a failed run may have left (the parents, fakes, worker) and removes the folder. */
    async remove() {
      for (const line of await leftovers()) {
        await new Deno.Command("kill", { args: ["-KILL", line.split(/\s+/)[0]], stderr: "null" }).output();
      }
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}

type Fixture = Awaited<ReturnType<typeof fixture>>;

/** A child process whose output is collected; `status` resolves when it exits. */
function spawnCollecting(
  command: string,
  args: string[],
  options: { env: Record<string, string>; cwd: string },
) {
  const child = new Deno.Command(command, {
    args,
    cwd: options.cwd,
    clearEnv: true,
    env: options.env,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let out = "";
  let err = "";
  const decoder = () => new TextDecoder();
  const read = async (stream: ReadableStream<Uint8Array>, add: (s: string) => void) => {
    const d = decoder();
    for await (const chunk of stream) add(d.decode(chunk, { stream: true }));
  };
  const outDone = read(child.stdout, (s) => out += s);
  const errDone = read(child.stderr, (s) => err += s);
  let exited: Deno.CommandStatus | null = null;
  const status = child.status.then(async (s) => {
    await Promise.all([outDone, errDone]);
    exited = s;
    return s;
  });
  return {
    child,
    status,
    ended: () => exited,
    stdout: () => out,
    stderr: () => err,
    printed: () => `stdout:\n${out}\nstderr:\n${err}`,
    /** Waits until its output (stdout and stderr) matches `pattern`; throws at once if it exits first. */
    async untilPrinted(pattern: RegExp): Promise<void> {
      const upBy = Date.now() + GUARD_MS;
      while (!pattern.test(out + err)) {
        assert.ok(
          !exited,
          `it exited (${JSON.stringify(exited)}) before it printed ${pattern}:\n${this.printed()}`,
        );
        assert.ok(
          Date.now() < upBy,
          `it did not print ${pattern} within ${GUARD_MS / 1000} s:\n${this.printed()}`,
        );
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    /** Its status, or throws after `ms` (the child killed) when it has not exited by then. */
    async exitWithin(ms: number, what: string): Promise<Deno.CommandStatus> {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const result = await Promise.race([
        status,
        new Promise<null>((r) => timer = setTimeout(() => r(null), ms)),
      ]);
      clearTimeout(timer);
      if (result) return result;
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await status;
      throw new Error(`${what}: still running after ${ms / 1000} s\n${this.printed()}`);
    },
  };
}

Deno.test("node serve.mjs: a PORT that is no port is refused before anything starts, naming it", async () => {
  const f = await fixture("npm ci");
  try {
    for (const text of ["abc", "5.0", "03000", "70000", "-1", "1e3", " 0x10"]) {
      const run = spawnCollecting("node", [path.join(f.appDir, "serve.mjs")], {
        env: { ...f.env, PORT: text },
        cwd: f.appDir,
      });
      // A taken PORT would go on to install (the fake npm, which blocks): the guard ends that.
      const status = await run.exitWithin(GUARD_MS, `PORT=${JSON.stringify(text)}`);
      assert.equal(
        run.stderr(),
        `serve.mjs environment variable PORT must be a whole number from 0 to 65535, written in decimal ` +
          `digits without a fraction or leading zeros (got ${JSON.stringify(text)})\n`,
        `PORT=${JSON.stringify(text)}: the one line naming it\n${run.printed()}`,
      );
      assert.equal(run.stdout(), "", `PORT=${JSON.stringify(text)}: nothing else printed`);
      assert.equal(status.code, 1, `PORT=${JSON.stringify(text)}: exit 1`);
      assert.equal(await f.exists(f.pidFile), false, `PORT=${JSON.stringify(text)}: no npm ci was run`);
    }
  } finally {
    await f.remove();
  }
});

/**
 * Runs `script` (an ES module) with node in the repository, in a process of its own (PATH and HOME only),
 * checks it exited 0 within 120 s and returns its last line of output, parsed, and what it printed.
 */
async function nodeScriptEnded(script: string): Promise<{ lastLine: unknown; printed(): string }> {
  const run = spawnCollecting("node", ["--input-type=module", "-e", script], {
    env: { PATH: Deno.env.get("PATH") ?? "/usr/bin:/bin", HOME: Deno.env.get("HOME") ?? "/root" },
    cwd: REPO_ROOT,
  });
  const status = await run.exitWithin(120_000, "the script");
  assert.equal(status.code, 0, run.printed());
  return { lastLine: JSON.parse(run.stdout().trim().split("\n").pop()!), printed: () => run.printed() };
}

/**
 * Runs `body` (module code) with nodeScriptEnded after serve.mjs's `exitCleanups({ log: console.error })` is
 * set up — in scope: `spawn`, `onCleanup`, `runCleanups`, `removeSignalHandlers` and an empty list `ran` —
 * then removes its signal handlers and prints `ran` (the result's lastLine).
 */
function exitCleanupsScriptEnded(body: string): Promise<{ lastLine: unknown; printed(): string }> {
  const serveModule = pathToFileURL(path.join(REPO_ROOT, "examples/web/serve.mjs")).href;
  return nodeScriptEnded(`
      import { spawn } from "node:child_process";
      import { exitCleanups } from ${JSON.stringify(serveModule)};
      const { onCleanup, runCleanups, removeSignalHandlers } = exitCleanups({ log: console.error });
      const ran = [];
${body}
      removeSignalHandlers();
      console.log(JSON.stringify(ran));`);
}

/**
 * A Deno process that does what npm start does once its stack is up (local/announce.ts's
 * startWebAppAndAnnounce, which local/main.ts calls, given a stand-in for the stack and this fixture's
 * startWebApp). `startAfterStop`: it prints "[parent] stop me" and starts the web app only once stopped
 * (whenStopped, which resolves before the exit cleanups begin), as a start that comes to the web app's build
 * after a stop.
 */
async function npmStartParent(f: Fixture, { startAfterStop = false } = {}) {
  const script = path.join(f.root, "parent.ts");
  await Deno.writeTextFile(
    script,
    `import { holdExitUntilSaid } from ${JSON.stringify(path.join(REPO_ROOT, "local/main.ts"))};
     import { startWebAppAndAnnounce } from ${JSON.stringify(path.join(REPO_ROOT, "local/announce.ts"))};
     import { whenStopped } from ${JSON.stringify(path.join(REPO_ROOT, "local/stack/cleanup.ts"))};
     import { startWebApp } from ${JSON.stringify(path.join(f.appDir, "serve.mjs"))};
     // npm start's own: a stopped process exits once what npm start prints is printed, not before.
     const said = holdExitUntilSaid();
     if (${startAfterStop}) {
       console.log("[parent] stop me");
       await whenStopped();
     }
     await startWebAppAndAnnounce(
       {
         apiUrl: "http://127.0.0.1:9",
         dbUrl: "postgresql://postgres:postgres@127.0.0.1:9/postgres",
         jwtSecret: "",
         anonKey: "anon",
         serviceRoleKey: "service",
       },
       {
         webPort: 0,
         log: (line) => console.log("[readsync] " + line),
         started: performance.now(),
         demo: { userId: "demo", email: "demo@readsync.local", token: "demo-token" },
       },
       startWebApp,
     );
     said();
     await new Promise(() => {});`,
  );
  // The repository's configuration: main.ts imports "postgres" through its import map.
  const config = path.join(REPO_ROOT, "deno.json");
  return spawnCollecting(Deno.execPath(), ["run", "-A", "--no-lock", "--config", config, script], {
    env: f.env,
    cwd: f.root,
  });
}

// The stopped parent (while the web app installs, builds or starts): npm start's (npmStartParent) and
// `node serve.mjs`.
const parents = {
  "npm start's exit cleanups": (f: Fixture) => npmStartParent(f),
  "node serve.mjs": (f: Fixture) =>
    Promise.resolve(
      spawnCollecting("node", [path.join(f.appDir, "serve.mjs")], {
        env: { ...f.env, PORT: "0" },
        cwd: f.appDir,
      }),
    ),
  // The browser tests' own web app (tests/browser/run.mjs, copied beside this serve.mjs as it sits in the
  // repository): Chromium stands in as any file that exists (it is not run before the web app serves).
  "the browser tests (run.mjs)": async (f: Fixture) => {
    const testsDir = path.join(f.root, "tests", "browser");
    await Deno.mkdir(testsDir, { recursive: true });
    for (const file of ["run.mjs", "harness.mjs"]) {
      await Deno.copyFile(path.join(REPO_ROOT, "tests/browser", file), path.join(testsDir, file));
    }
    return spawnCollecting("node", [path.join(testsDir, "run.mjs")], {
      env: { ...f.env, SUPABASE_SERVICE_ROLE_KEY: "service", READSYNC_CHROMIUM: Deno.execPath() },
      cwd: f.root,
    });
  },
};

/** Runs `body` with the parent started; SIGKILLs it if still running after, and waits for it. */
async function withParent(
  f: Fixture,
  startParent: (f: Fixture) => Promise<ReturnType<typeof spawnCollecting>>,
  body: (parent: ReturnType<typeof spawnCollecting>) => Promise<void>,
) {
  const parent = await startParent(f);
  try {
    await body(parent);
  } finally {
    if (!parent.ended()) {
      try {
        parent.child.kill("SIGKILL");
      } catch { /* gone */ }
    }
    await parent.status;
  }
}

/** The exit code of a parent stopped by `signal`. */
const STOPPED_CODE = { SIGINT: 130, SIGTERM: 143, SIGHUP: 129 };

/** SIGTERM to a start holding the build lock: it exits as stopped (143) and frees the lock. */
async function stopFreesTheLock(f: Fixture, start: ReturnType<typeof spawnCollecting>, what: string) {
  start.child.kill("SIGTERM");
  assert.equal((await start.exitWithin(GUARD_MS, `${what} after SIGTERM`)).code, 143);
  assert.equal(await f.exists(f.lockDir), false, "the build lock was left behind");
}

for (const [parentName, startParent] of Object.entries(parents)) {
  // SIGHUP: the terminal closed. Since the steps run in a session of their own, the terminal's SIGHUP
  // reaches only the parent, which must end them as for SIGTERM.
  const cases = [
    ...(["npm ci", "next build", "next start"] as const).flatMap((step) =>
      [false, true].map((stubborn) => ({ step, stubborn, signal: "SIGTERM" as const }))
    ),
    { step: "next build" as const, stubborn: false, signal: "SIGHUP" as const },
  ];
  for (const { step, stubborn, signal } of cases) {
    const how = stubborn
      ? `a ${step} that ignores SIGTERM, and the worker it started that ignores it too, are killed`
      : `ends ${step}`;
    Deno.test(`${parentName}: ${signal} during the web app's ${step}: ${how}, and frees the build lock`, async () => {
      const f = await fixture(step, { stubborn });
      try {
        await withParent(f, startParent, async (parent) => {
          const pid = await f.stepRunning(parent.ended, parent.printed);
          const worker = stubborn ? Number((await Deno.readTextFile(`${f.pidFile}.worker`)).trim()) : null;
          // (next start runs once the build is done and its lock released.)
          assert.equal(
            await f.exists(f.lockDir),
            step !== "next start",
            "the build lock is held while it builds",
          );
          parent.child.kill(signal);
          const status = await parent.exitWithin(GUARD_MS, `the parent after ${signal}`);
          assert.equal(status.code, STOPPED_CODE[signal], `the parent exits as stopped\n${parent.printed()}`);
          assert.ok(
            await f.exists(`${f.pidFile}.term`),
            `${step} was told to end (SIGTERM)\n${parent.printed()}`,
          );
          assert.equal(
            await f.alive(pid),
            false,
            `${step} (pid ${pid}) still runs after its parent was stopped`,
          );
          if (worker !== null) {
            assert.equal(
              await f.alive(worker),
              false,
              `the worker (pid ${worker}) that ${step} started still runs after its parent was stopped`,
            );
          }
          assert.equal(await f.exists(f.lockDir), false, "the build lock was left behind");
          if (parentName === "npm start's exit cleanups") {
            // Stopped before it was up: no summary announcing the stack (it is being torn down), but that
            // it was stopped and what it had started. A stop is not a failure of the step it ended.
            assert.doesNotMatch(parent.stdout(), /stack is up|Demo token|Try it/, parent.printed());
            assert.match(
              parent.stdout(),
              new RegExp(
                `^\\[readsync\\] npm start was stopped \\(${signal}\\) before the stack was up: tearing down ` +
                  `what it started: the API \\(http://127\\.0\\.0\\.1:9\\), the database \\(postgresql://\\S+, ` +
                  `removed with its data\\) and the web app's ${step} \\(ended\\)$`,
                "m",
              ),
              parent.printed(),
            );
            assert.doesNotMatch(parent.printed(), /failed/, parent.printed());
          }
        });
        await f.assertNothingLeft("after the stopped parent exited");
      } finally {
        await f.remove();
      }
    });
  }

  Deno.test(
    `${parentName}: the build lock of a start SIGKILLed during next build is taken as soon as it and its build are gone`,
    async () => {
      const f = await fixture("next build");
      try {
        let orphan = 0;
        await withParent(f, startParent, async (killed) => {
          orphan = await f.stepRunning(killed.ended, killed.printed);
          killed.child.kill("SIGKILL");
          await killed.status;
        });
        assert.ok(await f.exists(f.lockDir), "the SIGKILLed start left its build lock");
        assert.ok(await f.alive(orphan), "its next build runs on (orphaned)");
        await Deno.remove(f.pidFile);
        await withParent(f, startParent, async (next) => {
          // While the orphaned build runs it still holds the lock (both would write .next).
          await next.untilPrinted(
            new RegExp(
              `waiting for another build of the web app to finish \\(pid \\d+, next build pid ${orphan}\\)`,
            ),
          );
          assert.equal(await f.exists(f.pidFile), false, "no second build while the orphaned one runs");
          await new Deno.Command("kill", { args: ["-KILL", String(orphan)] }).output();
          // Gone: its lock is taken now (it used to be waited for until 10 minutes old).
          const pid = await f.stepRunning(next.ended, next.printed);
          assert.notEqual(pid, orphan);
          assert.match(next.printed(), /taking the build lock of a start that is gone/, next.printed());
          await stopFreesTheLock(f, next, "the second start");
        });
        await f.assertNothingLeft("after both starts");
      } finally {
        await f.remove();
      }
    },
  );
}

/** This process's start time as serve.mjs records it (field 22 of /proc/<pid>/stat). */
async function ownStartTime(): Promise<string> {
  const stat = await Deno.readTextFile(`/proc/${Deno.pid}/stat`);
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
}

Deno.test({
  name:
    "node serve.mjs: a build lock whose holder is not recorded, is on another machine or runs is waited " +
    "for; one whose pid is another process's now (another start time) is taken at once",
  ignore: Deno.build.os !== "linux", // start times from /proc
}, async () => {
  const f = await fixture("next build");
  const writeHolder = (holder: unknown) =>
    Deno.writeTextFile(path.join(f.lockDir, "holder.json"), JSON.stringify(holder));
  const here = {
    host: Deno.hostname(),
    boot: (await Deno.readTextFile("/proc/sys/kernel/random/boot_id")).trim(),
  };
  try {
    // A lock with no holder file (an older serve.mjs's, or its holder killed before it wrote it): waited
    // for until 10 minutes old, as before.
    await Deno.mkdir(f.lockDir);
    await withParent(f, parents["node serve.mjs"], async (parent) => {
      await parent.untilPrinted(
        /waiting for another build of the web app to finish \(its holder not recorded\)/,
      );
      // Its holder on another machine (a shared folder): its pid, gone here, says nothing there. (The
      // waiting line is printed every 10 s.)
      const ended = new Deno.Command("true").spawn();
      await ended.status;
      await writeHolder({ host: "elsewhere", boot: "x", holder: { pid: ended.pid, start: "1", token: "t" } });
      await parent.untilPrinted(
        new RegExp(`waiting for another build of the web app to finish \\(pid ${ended.pid} on elsewhere\\)`),
      );
      // Its holder here: this test process, which runs.
      const holder = { pid: Deno.pid, start: await ownStartTime(), token: "the test's" };
      await writeHolder({ ...here, holder });
      await parent.untilPrinted(
        new RegExp(`waiting for another build of the web app to finish \\(pid ${Deno.pid}\\)`),
      );
      assert.equal(await f.exists(f.pidFile), false, "no build while the lock's holder runs");
      // The same pid with another start time: the holder has gone and its pid was given to another process.
      await writeHolder({ ...here, holder: { ...holder, start: `${Number(holder.start) + 1}` } });
      await f.stepRunning(parent.ended, parent.printed);
      assert.match(
        parent.printed(),
        /taking the build lock of a start that is gone \(pid \d+\)/,
        parent.printed(),
      );
      await stopFreesTheLock(f, parent, "the parent");
    });
    await f.assertNothingLeft("after the start");
  } finally {
    await f.remove();
  }
});

Deno.test({
  name:
    "npm start's exit cleanups: a stop while the web app waits for another start's build lock ends the wait " +
    "at once: it exits with the signal's code saying so, leaving that lock alone and building nothing",
  ignore: Deno.build.os !== "linux", // start times from /proc
}, async () => {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const f = await fixture("next build");
    try {
      // Another start holds the lock: this test process, which runs.
      await Deno.mkdir(f.lockDir);
      const holderFile = path.join(f.lockDir, "holder.json");
      const holder = JSON.stringify({
        host: Deno.hostname(),
        boot: (await Deno.readTextFile("/proc/sys/kernel/random/boot_id")).trim(),
        holder: { pid: Deno.pid, start: await ownStartTime(), token: "the test's" },
      });
      await Deno.writeTextFile(holderFile, holder);
      await withParent(f, parents["npm start's exit cleanups"], async (parent) => {
        await parent.untilPrinted(
          new RegExp(`waiting for another build of the web app to finish \\(pid ${Deno.pid}\\)`),
        );
        parent.child.kill(signal);
        const status = await parent.exitWithin(GUARD_MS, `the parent after ${signal}`);
        assert.equal(status.code, STOPPED_CODE[signal], `${signal}: exits as stopped\n${parent.printed()}`);
        // Said as a stop during the web app's other steps is (it used to exit, 15 s later, saying nothing).
        assert.match(
          parent.stdout(),
          new RegExp(
            `^\\[readsync\\] npm start was stopped \\(${signal}\\) before the stack was up: tearing down ` +
              `what it started: the API \\(http://127\\.0\\.0\\.1:9\\), the database \\(postgresql://\\S+, ` +
              `removed with its data\\) and the web app's wait for another start's build \\(ended\\)$`,
            "m",
          ),
          `${signal}: says so\n${parent.printed()}`,
        );
        assert.doesNotMatch(parent.printed(), /failed|stack is up/, `${signal}\n${parent.printed()}`);
        assert.equal(
          await Deno.readTextFile(holderFile),
          holder,
          `${signal}: the other start's lock was touched`,
        );
        assert.equal(
          await f.exists(f.pidFile),
          false,
          `${signal}: no build while another start holds the lock`,
        );
      });
      await f.assertNothingLeft(`after the parent stopped by ${signal}`);
    } finally {
      await f.remove();
    }
  }
});

Deno.test({
  name:
    "startWebApp with `stopping`: a wait for another start's build lock that finds it free once its process is " +
    "stopping, before the run-down has come to the wait's cleanup, takes no lock and spawns no npm ci",
  ignore: Deno.build.os !== "linux", // start times from /proc
}, async () => {
  const f = await fixture("npm ci");
  try {
    // Another start holds the lock: this test process, which runs.
    await Deno.mkdir(f.lockDir);
    await Deno.writeTextFile(
      path.join(f.lockDir, "holder.json"),
      JSON.stringify({
        host: Deno.hostname(),
        boot: (await Deno.readTextFile("/proc/sys/kernel/random/boot_id")).trim(),
        holder: { pid: Deno.pid, start: await ownStartTime(), token: "the test's" },
      }),
    );
    // The parent: serve.mjs's exit cleanups and `stopping`, as node serve.mjs and the browser tests pass them.
    // Once the start waits, a cleanup newer than the wait's is registered and the parent stops (SIGINT): the
    // run-down runs that one first, which frees the lock (the other start ends) and holds until the start
    // has ended (a hang guard of 20 s), then prints how it ended.
    const script = `
      import { rmSync } from "node:fs";
      import { exitCleanups, startWebApp } from ${
      JSON.stringify(pathToFileURL(path.join(f.appDir, "serve.mjs")).href)
    };
      const { onCleanup, stopping } = exitCleanups({ log: console.error });
      const lines = [];
      let waiting = () => {};
      const waits = new Promise((resolve) => waiting = resolve);
      const ended = startWebApp({
        apiUrl: "http://127.0.0.1:9",
        anonKey: "anon",
        port: 0,
        log: (line) => {
          lines.push(line);
          if (/waiting for another build/.test(line)) waiting();
        },
        onCleanup,
        stopping,
      }).then(() => null, (error) => error);
      await waits;
      onCleanup(async () => {
        rmSync(${JSON.stringify(f.lockDir)}, { recursive: true, force: true });
        let guard;
        const error = await Promise.race([ended, new Promise((r) => guard = setTimeout(() => r("hung"), 20_000))]);
        clearTimeout(guard);
        console.log(JSON.stringify({ stopped: error?.stopped, step: error?.step ?? String(error), lines }));
      });
      process.kill(process.pid, "SIGINT");`;
    const run = spawnCollecting("node", ["--input-type=module", "-e", script], { env: f.env, cwd: f.root });
    const status = await run.exitWithin(GUARD_MS, "the script");
    assert.equal(status.code, 130, run.printed());
    const report = JSON.parse(run.stdout().trim().split("\n").pop()!);
    assert.deepEqual(
      { stopped: report.stopped, step: report.step },
      { stopped: true, step: "wait for another start's build" },
      run.printed(),
    );
    assert.ok(!report.lines.some((line: string) => /installing packages/.test(line)), run.printed());
    assert.equal(await f.exists(f.pidFile), false, "npm ci ran");
    assert.equal(await f.exists(f.lockDir), false, "a build lock was left behind");
    await f.assertNothingLeft("after the script ended");
  } finally {
    await f.remove();
  }
});

Deno.test(
  "npm start's exit cleanups: a web app start that comes after the stop, the build lock free, takes no lock " +
    "and runs no npm ci: it exits with the signal's code, saying the web app's start was ended",
  async () => {
    const f = await fixture("npm ci");
    try {
      await withParent(f, (f) => npmStartParent(f, { startAfterStop: true }), async (parent) => {
        await parent.untilPrinted(/\[parent\] stop me/);
        parent.child.kill("SIGINT");
        const status = await parent.exitWithin(GUARD_MS, "the parent after SIGINT");
        assert.equal(status.code, 130, `exits as stopped\n${parent.printed()}`);
        assert.match(
          parent.stdout(),
          new RegExp(
            `^\\[readsync\\] npm start was stopped \\(SIGINT\\) before the stack was up: tearing down what it ` +
              `started: the API \\(http://127\\.0\\.0\\.1:9\\), the database \\(postgresql://\\S+, removed with ` +
              `its data\\) and the web app's start \\(ended\\)$`,
            "m",
          ),
          parent.printed(),
        );
        // Not taken only to be released, npm ci not spawned only to be ended.
        assert.doesNotMatch(parent.printed(), /installing packages|npm ci|failed/, parent.printed());
        assert.equal(await f.exists(f.pidFile), false, "npm ci ran");
        assert.equal(await f.exists(f.lockDir), false, "the build lock was left behind");
      });
      await f.assertNothingLeft("after the stopped parent exited");
    } finally {
      await f.remove();
    }
  },
);

/**
 * Makes the fixture's (a "next build" one) `step` one that stops its parent (SIGINT: the stop comes while it
 * runs) and, ended by the stop's cleanup (SIGTERM), exits 0 all the same, its work done just then (a real
 * next build leaves .next/BUILD_ID). For "npm ci" the packages are not installed yet, so npm ci runs.
 */
async function stepExitingAsStopped(f: Fixture, step: "npm ci" | "next build") {
  const exitsAsStopped = path.join(f.root, "exits-as-stopped.cjs");
  await Deno.writeTextFile(
    exitsAsStopped,
    `const fs = require("node:fs");
     process.on("SIGTERM", () => process.exit(0));
     if (process.argv[2] === "build") {
       fs.mkdirSync(".next", { recursive: true });
       fs.writeFileSync(".next/BUILD_ID", "fake");
     }
     process.kill(process.ppid, "SIGINT");
     setInterval(() => {}, 1e9);`,
  );
  if (step === "npm ci") {
    await Deno.remove(path.join(f.appDir, "node_modules/.readsync-lock-hash"));
    await Deno.writeTextFile(path.join(f.root, "bin/npm"), `#!/bin/sh\nexec node "${exitsAsStopped}"\n`);
  } else {
    const fakeStep = path.join(f.root, "fake-step.cjs");
    await Deno.writeTextFile(
      path.join(f.appDir, "node_modules/next/dist/bin/next"),
      `require(process.argv[2] === "build" ? ${JSON.stringify(exitsAsStopped)} : ${
        JSON.stringify(fakeStep)
      });`,
    );
  }
}

for (const [step, next] of [["npm ci", "next build"], ["next build", "next start"]] as const) {
  Deno.test(
    `startWebApp with \`stopping\`: ${step} exiting 0 as a stop (SIGINT) ends it goes on to no ${next}: ` +
      `it rejects as stopped (step "start"), spawning nothing more, and the build lock is released`,
    async () => {
      const f = await fixture("next build");
      try {
        // What comes next is the fixture's fake step (pidFile): it must never be spawned.
        await stepExitingAsStopped(f, step);
        // The parent: its own exit cleanups (serve.mjs's), run by its SIGINT, which also says it is stopping.
        const script = `
          import { exitCleanups, startWebApp } from ${
          JSON.stringify(pathToFileURL(path.join(f.appDir, "serve.mjs")).href)
        };
          const { onCleanup, runCleanups, removeSignalHandlers } = exitCleanups({ log: console.error });
          removeSignalHandlers();
          let stopping = false;
          process.once("SIGINT", () => {
            stopping = true;
            void runCleanups();
          });
          const lines = [];
          const error = await startWebApp({
            apiUrl: "http://127.0.0.1:9",
            anonKey: "anon",
            port: 0,
            log: (line) => lines.push(line),
            onCleanup,
            stopping: () => stopping,
          }).then(() => null, (error) => error);
          await runCleanups();
          console.log(JSON.stringify({ stopped: error?.stopped, step: error?.step, error: String(error), lines }));`;
        const run = spawnCollecting("node", ["--input-type=module", "-e", script], {
          env: f.env,
          cwd: f.root,
        });
        const status = await run.exitWithin(GUARD_MS, "the script");
        assert.equal(status.code, 0, run.printed());
        const report = JSON.parse(run.stdout().trim().split("\n").pop()!);
        assert.deepEqual(
          { stopped: report.stopped, step: report.step },
          { stopped: true, step: "start" },
          run.printed(),
        );
        if (step === "npm ci") assert.ok(!report.lines.includes("web: building (next build)"), run.printed());
        assert.equal(await f.exists(f.pidFile), false, `${next} ran`);
        assert.equal(await f.exists(f.lockDir), false, "the build lock was left behind");
        await f.assertNothingLeft("after the script ended");
      } finally {
        await f.remove();
      }
    },
  );
}

// The Node parents pass their exit cleanups' `stopping` to startWebApp (the browser tests' since it was
// found missing there: their npm ci exiting 0 as the stop ended it went on to next build).
for (const parentName of ["node serve.mjs", "the browser tests (run.mjs)"] as const) {
  Deno.test(
    `${parentName}: npm ci exiting 0 as a stop (SIGINT) ends it goes on to no next build: it exits with the ` +
      "signal's code, the build lock released",
    async () => {
      const f = await fixture("next build");
      try {
        await stepExitingAsStopped(f, "npm ci");
        await withParent(f, parents[parentName], async (parent) => {
          const status = await parent.exitWithin(GUARD_MS, `${parentName} after SIGINT`);
          assert.equal(status.code, 130, parent.printed());
          assert.match(parent.printed(), /installing packages/, parent.printed());
          assert.doesNotMatch(parent.printed(), /building|next build/, parent.printed());
          assert.equal(await f.exists(f.pidFile), false, "next build ran");
          assert.equal(await f.exists(f.lockDir), false, "the build lock was left behind");
        });
        await f.assertNothingLeft(`after ${parentName} exited`);
      } finally {
        await f.remove();
      }
    },
  );
}

Deno.test(
  "serve.mjs's exitCleanups (node serve.mjs, the browser tests): one registered once the run-down has begun " +
    "runs at once, not after the cleanup under way (which may wait for it) nor never once the run-down has " +
    "ended; none runs twice",
  async () => {
    const run = await exitCleanupsScriptEnded(`
      // A hang guard: what a wait that never ends gives instead.
      const within = (promise, ms, otherwise) => {
        let timer;
        return Promise.race([promise, new Promise((r) => timer = setTimeout(() => r(otherwise), ms))])
          .finally(() => clearTimeout(timer));
      };
      // A step's child process, registered (as run() does) as soon as it runs; "ended" resolves once its
      // cleanup has ended it.
      const startChild = (name) => {
        const child = spawn("sleep", ["600"], { stdio: "ignore" });
        const exited = new Promise((r) => child.once("exit", r));
        let endedBy = () => {};
        const ended = new Promise((r) => endedBy = r);
        onCleanup(async () => {
          child.kill("SIGKILL");
          await exited;
          ran.push(name + " ended by its cleanup");
          endedBy("the child ended");
        });
        return { child, ended };
      };
      // A last cleanup that waits for the start under way to end, whose step had started a child as the
      // stop came.
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
      after.child.kill("SIGKILL");
    `);
    assert.deepEqual(run.lastLine, [
      "last cleanup begins",
      "the child started under way ended by its cleanup",
      "last cleanup: the child ended",
      "the child started after ended by its cleanup",
      "after: the child ended",
    ], run.printed());
  },
);

Deno.test(
  "serve.mjs's exitCleanups: those registered together once the run-down has begun run newest first (a " +
    "step's end before the release of the build lock it holds), and an older cleanup only once they have run",
  async () => {
    const run = await exitCleanupsScriptEnded(`
      // Registered before the run-down: as the browser tests' own (their browser, their database connection).
      onCleanup(() => ran.push("older cleanup"));
      // The cleanup under way as a start runs on (withBuildLock after a stop): it takes the lock, registers
      // its release, then starts its step (a child) and registers that step's end.
      onCleanup(() => {
        ran.push("under way");
        onCleanup(() => ran.push("lock released"));
        const step = spawn("sleep", ["600"], { stdio: "ignore" });
        const exited = new Promise((r) => step.once("exit", r));
        onCleanup(async () => {
          step.kill("SIGKILL");
          await exited;
          ran.push("step ended");
        });
      });
      await runCleanups();
    `);
    assert.deepEqual(
      run.lastLine,
      ["under way", "step ended", "lock released", "older cleanup"],
      run.printed(),
    );
  },
);

Deno.test(
  "serve.mjs's exitCleanups: late ones registered while an earlier late batch runs (npm ci exiting 0 as its " +
    "end comes) run before that batch's older ones (the build lock's release), not beside them",
  async () => {
    const run = await exitCleanupsScriptEnded(`
      onCleanup(() => ran.push("older cleanup"));
      // A start that runs on after the stop (withBuildLock): it takes the lock and registers its release,
      // then runs npm ci and registers its end (one late batch). npm ci exits 0 just as its end comes: the
      // start goes on to next build and registers that step's end (a second late batch) while the first
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
        const build = spawn("sleep", ["600"], { stdio: "ignore" });
        const exited = new Promise((r) => build.once("exit", r));
        onCleanup(async () => {
          build.kill("SIGKILL");
          await exited;
          ran.push("next build ended");
        });
        nextStepStarted();
      };
      onCleanup(() => {
        ran.push("under way");
        void start();
      });
      await runCleanups();
    `);
    assert.deepEqual(
      run.lastLine,
      ["under way", "npm ci ended", "next build ended", "lock released", "older cleanup"],
      run.printed(),
    );
  },
);

Deno.test("npm start with READSYNC_API_HOST: the web app listens where the API does, hands other devices' pages the API at their address, and the summary names where a phone opens both", async () => {
  const stack = {
    apiUrl: "http://127.0.0.1:54321",
    dbUrl: "postgresql://postgres:postgres@127.0.0.1:54322/postgres",
    jwtSecret: "secret",
    anonKey: "anon",
    serviceRoleKey: "service",
  };
  const interfaces = (): Deno.NetworkInterfaceInfo[] => [
    {
      family: "IPv4",
      name: "lo",
      address: "127.0.0.1",
      netmask: "255.0.0.0",
      scopeid: null,
      cidr: "127.0.0.1/8",
      mac: "",
    },
    {
      family: "IPv4",
      name: "wlan0",
      address: "192.168.1.5",
      netmask: "255.255.255.0",
      scopeid: null,
      cidr: "192.168.1.5/24",
      mac: "",
    },
    {
      family: "IPv6",
      name: "wlan0",
      address: "fe80::1",
      netmask: "ffff::",
      scopeid: 3,
      cidr: "fe80::1/64",
      mac: "",
    },
  ];
  /** What the summary printed and the options the web app was started with, for `apiHost`. */
  const announced = async (apiHost: string | undefined) => {
    const given: WebAppOptions[] = [];
    const printed: string[] = [];
    const log = console.log;
    console.log = (text: string) => printed.push(text);
    try {
      await startWebAppAndAnnounce(stack, {
        webPort: 3000,
        apiHost,
        log: () => {},
        started: performance.now(),
        demo: { userId: "u", email: "demo@readsync.local", token: "t" },
      }, (options) => {
        given.push(options);
        const host = options.host === "0.0.0.0" ? "127.0.0.1" : options.host;
        return Promise.resolve({
          url: `http://${host}:3000`,
          port: 3000,
          devSignIn: true,
          stop: () => Promise.resolve(),
          output: () => "",
        });
      }, interfaces);
    } finally {
      console.log = log;
    }
    return { options: given[0], summary: printed.join("\n") };
  };
  const open = await announced("0.0.0.0");
  assert.equal(open.options.host, "0.0.0.0", "the web app on every interface, as the API");
  assert.equal(open.options.browserApiPort, 54321, "a page asked for at an address gets the API there");
  assert.equal(open.options.apiUrl, stack.apiUrl, "the app's own calls stay on 127.0.0.1");
  const lines = (summary: string) => summary.split("\n");
  assert.ok(
    lines(open.summary).includes(
      "  Other devices    http://192.168.1.5:54321 (API), http://192.168.1.5:3000 (web app)",
    ),
    open.summary,
  );
  assert.match(open.summary, /READSYNC_API_HOST=0\.0\.0\.0: .*the database stays on 127\.0\.0\.1/);
  assert.doesNotMatch(
    open.summary,
    /127\.0\.0\.1:54321 \(API\)|fe80/,
    "no loopback or IPv6 address for a phone",
  );
  const closed = await announced(undefined);
  assert.equal(closed.options.host, "127.0.0.1");
  assert.equal(closed.options.browserApiPort, undefined, "every page gets the API URL as given");
  assert.ok(
    lines(closed.summary).some((line) =>
      line.startsWith(
        "  Other devices    none: this machine only (READSYNC_API_HOST=0.0.0.0 opens the API and the web app",
      )
    ),
    closed.summary,
  );
});

Deno.test("npm start's web app (local/web.ts): a step is reported as ended by a stop only when its error says it was stopped", async () => {
  const stack = {
    apiUrl: "http://127.0.0.1:9",
    anonKey: "anon",
    jwtSecret: "",
    dbUrl: "postgresql://127.0.0.1:9/x",
  };
  const beside = (error: Error) =>
    startWebAppBesideStack(stack, { port: 0, log: () => {} }, () => Promise.reject(error));
  // A failure that names its step (as serve.mjs's StoppedError does, without being one): the failure.
  const failed = await beside(
    Object.assign(new Error("next build failed (exit 1):\nType error"), { step: "next build" }),
  );
  assert.deepEqual(failed, {
    web: null,
    line: "  Web app          not started: next build failed (exit 1):",
    stoppedDuring: null,
  });
  // serve.mjs's StoppedError: the step the stop ended.
  const stopped = await beside(
    Object.assign(new Error("next build was stopped (the process running it is stopping)"), {
      stopped: true,
      step: "next build",
    }),
  );
  assert.deepEqual(stopped, {
    web: null,
    line: "  Web app          not started: npm start was stopped during its next build",
    stoppedDuring: "next build",
  });
});

Deno.test({
  name:
    "node serve.mjs: a build lock whose holder file is half-written is waited for (never taken as having no " +
    "holder, however old the lock), until that file itself is 10 minutes old",
  ignore: Deno.build.os !== "linux", // start times from /proc
}, async () => {
  const f = await fixture("next build");
  const holderFile = path.join(f.lockDir, "holder.json");
  try {
    // A holder (this test process, which runs) as a writer in place would leave it part-way: cut short.
    // The lock itself is 11 minutes old (a long npm ci), which without a holder makes it stale.
    const whole = JSON.stringify({
      host: Deno.hostname(),
      boot: (await Deno.readTextFile("/proc/sys/kernel/random/boot_id")).trim(),
      holder: { pid: Deno.pid, start: await ownStartTime(), token: "the test's" },
    });
    await Deno.mkdir(f.lockDir);
    await Deno.writeTextFile(holderFile, whole.slice(0, Math.floor(whole.length / 2)));
    const elevenMinutesAgo = new Date(Date.now() - 11 * 60_000);
    await Deno.utime(f.lockDir, elevenMinutesAgo, elevenMinutesAgo);
    await withParent(f, parents["node serve.mjs"], async (parent) => {
      // Its first look at the lock decides: it waits or it takes it.
      await parent.untilPrinted(/waiting for another build of the web app to finish|taking the build lock/);
      assert.match(
        parent.printed(),
        /waiting for another build of the web app to finish \(its holder file unreadable: being written, or left half-written\)/,
        parent.printed(),
      );
      assert.doesNotMatch(parent.printed(), /taking the build lock/, parent.printed());
      assert.equal(await f.exists(f.pidFile), false, "no build while the holder file is being written");
      // Left half-written (10 minutes without being finished): taken.
      await Deno.utime(holderFile, elevenMinutesAgo, elevenMinutesAgo);
      await f.stepRunning(parent.ended, parent.printed);
      assert.match(
        parent.printed(),
        /taking the build lock of a start that is gone \(its holder file unreadable/,
        parent.printed(),
      );
      await stopFreesTheLock(f, parent, "the parent");
    });
    await f.assertNothingLeft("after the start");
  } finally {
    await f.remove();
  }
});
