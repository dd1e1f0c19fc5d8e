// examples/web/serve.mjs outside a browser: what `node serve.mjs` takes as PORT, and that a stop during
// the first use's `npm ci` or `next build` ends them. Each run uses a copy of serve.mjs in a folder of
// its own (its APP_DIR), with a fake `npm` on PATH and a fake `next` that block until signalled, so nothing
// real is installed or built and the step under way is known, not raced.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const GUARD_MS = 30_000;

type Step = "npm ci" | "next build";

/**
 * <tmp>/examples/web with serve.mjs, a package-lock.json and, for "next build", node_modules already
 * installed (stamp and a fake next); <tmp>/bin/npm. The fake step writes its pid to `pidFile` once it
 * runs and `pidFile`.term when it gets SIGTERM (then exits), and otherwise runs until signalled.
 */
async function fixture(step: Step) {
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
  await Deno.writeTextFile(
    path.join(binDir, "npm"),
    `#!/bin/sh\necho $$ > "${pidFile}.tmp" && mv "${pidFile}.tmp" "${pidFile}"\n` +
      `trap 'kill $s 2>/dev/null; : > "${pidFile}.term"; exit 143' TERM\nsleep 600 & s=$!\nwait $s\n`,
    { mode: 0o755 },
  );
  if (step === "next build") {
    const nextBin = path.join(appDir, "node_modules/next/dist/bin");
    await Deno.mkdir(nextBin, { recursive: true });
    await Deno.writeTextFile(
      path.join(appDir, "node_modules/.readsync-lock-hash"),
      createHash("sha256").update(lock).digest("hex"),
    );
    await Deno.writeTextFile(
      path.join(nextBin, "next"),
      `const fs = require("node:fs");
       process.on("SIGTERM", () => { fs.writeFileSync(${
        JSON.stringify(`${pidFile}.term`)
      }, ""); process.exit(143); });
       fs.writeFileSync(${JSON.stringify(`${pidFile}.tmp`)}, String(process.pid));
       fs.renameSync(${JSON.stringify(`${pidFile}.tmp`)}, ${JSON.stringify(pidFile)});
       setInterval(() => {}, 1e9);`,
    );
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
  return {
    root,
    appDir,
    env,
    lockDir: path.join(appDir, ".readsync-build.lock"),
    pidFile,
    exists,
    alive,
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
    /** Ends what a failed run may have left (the fake step, its sleep) and removes the folder. */
    async remove() {
      if (await exists(pidFile)) {
        const pid = Number((await Deno.readTextFile(pidFile)).trim());
        if (pid > 0) await new Deno.Command("sh", { args: ["-c", `kill ${pid}`], stderr: "null" }).output();
      }
      await Deno.remove(root, { recursive: true }).catch(() => {});
    },
  };
}

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

// The stopped parent: a Deno process registering with local/stack/cleanup.ts as npm start does
// (local/main.ts passes its onCleanup to startWebApp), and `node serve.mjs` itself.
const parents = {
  "npm start's exit cleanups": async (f: Awaited<ReturnType<typeof fixture>>) => {
    const script = path.join(f.root, "parent.ts");
    await Deno.writeTextFile(
      script,
      `import { onCleanup } from ${JSON.stringify(path.join(REPO_ROOT, "local/stack/cleanup.ts"))};
       import { startWebApp } from ${JSON.stringify(path.join(f.appDir, "serve.mjs"))};
       // As local/main.ts: a web app that cannot start is reported, and the process runs until stopped.
       try {
         await startWebApp({ apiUrl: "http://127.0.0.1:9", anonKey: "anon", onCleanup });
       } catch (error) {
         console.log(\`web app not started: \${error.message.split("\\n")[0]}\`);
       }
       await new Promise(() => {});`,
    );
    return spawnCollecting(Deno.execPath(), ["run", "-A", "--no-lock", script], { env: f.env, cwd: f.root });
  },
  "node serve.mjs": (f: Awaited<ReturnType<typeof fixture>>) =>
    Promise.resolve(
      spawnCollecting("node", [path.join(f.appDir, "serve.mjs")], {
        env: { ...f.env, PORT: "0" },
        cwd: f.appDir,
      }),
    ),
};

for (const [parentName, startParent] of Object.entries(parents)) {
  for (const step of ["npm ci", "next build"] as const) {
    Deno.test(`${parentName}: SIGTERM during the web app's ${step} ends it and frees the build lock`, async () => {
      const f = await fixture(step);
      try {
        const parent = await startParent(f);
        try {
          const pid = await f.stepRunning(parent.ended, parent.printed);
          assert.ok(await f.exists(f.lockDir), "the build lock is held while it runs");
          parent.child.kill("SIGTERM");
          const status = await parent.exitWithin(GUARD_MS, "the parent after SIGTERM");
          assert.equal(status.code, 143, `the parent exits as stopped\n${parent.printed()}`);
          assert.ok(
            await f.exists(`${f.pidFile}.term`),
            `${step} was told to end (SIGTERM)\n${parent.printed()}`,
          );
          assert.equal(
            await f.alive(pid),
            false,
            `${step} (pid ${pid}) still runs after its parent was stopped`,
          );
          assert.equal(await f.exists(f.lockDir), false, "the build lock was left behind");
        } finally {
          if (!parent.ended()) {
            try {
              parent.child.kill("SIGKILL");
            } catch { /* gone */ }
          }
          await parent.status;
        }
      } finally {
        await f.remove();
      }
    });
  }
}
