// @ts-self-types="./serve.d.ts"
// Serves the readsync web app (a production `next start`) beside a readsync stack. Plain ESM over
// node: APIs, so both the Deno scripts in local/ (`npm start`, `npm test`) and the Node browser
// tests can import it.
//
//   import { startWebApp } from "../examples/web/serve.mjs";
//   const web = await startWebApp({ apiUrl, anonKey, jwtSecret, dbUrl, port: 3000 });
//   console.log(web.url); ...; await web.stop();
//
// It installs the app's own packages (`npm ci`) when node_modules is missing or stale, builds
// (`next build`) when the sources (this folder or ../../shared) changed since the last build, and
// passes the stack's URL and keys to the server at run time: one build serves any stack.

import { spawn, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

export const APP_DIR = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(APP_DIR, "../..");
const NEXT_BIN = path.join(APP_DIR, "node_modules", "next", "dist", "bin", "next");
const BUILD_STAMP = path.join(APP_DIR, ".next", "readsync-build-hash");
const INSTALL_STAMP = path.join(APP_DIR, "node_modules", ".readsync-lock-hash");
const LOCK_DIR = path.join(APP_DIR, ".readsync-build.lock");
/** Who holds the lock: {host, boot, holder: {pid, start, token}, step?: {label, pid, start}} (withBuildLock). */
const LOCK_HOLDER = path.join(LOCK_DIR, "holder.json");
/**
 * POSIX: each npm ci / next build / next start runs in a process group (and session: Node's detached) of
 * its own, which a stop signals whole (see signalGroup). Signals from the terminal (Ctrl-C, SIGHUP) then
 * reach only this process, whose stop (onCleanup) ends them.
 */
const GROUPS = process.platform !== "win32";

const SKIP_DIRS = new Set(["node_modules", ".next", "test-artifacts", ".git"]);

/** @param {string} dir @param {string[]} out */
function collectFiles(dir, out) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const entry of entries) {
    if (SKIP_DIRS.has(entry.name) || entry.name.startsWith(".readsync")) continue;
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) collectFiles(full, out);
    // Test files and tsc's incremental cache are not inputs of the build.
    else if (entry.isFile() && !entry.name.endsWith(".test.ts") && !entry.name.endsWith(".tsbuildinfo")) out.push(full);
  }
}

/** Hash of everything the build reads: this app's sources, ../../shared and the lockfile. */
export function sourceHash() {
  const files = [];
  collectFiles(APP_DIR, files);
  collectFiles(path.join(REPO_ROOT, "shared"), files);
  files.sort();
  const hash = createHash("sha256");
  for (const file of files) {
    if (file === path.join(APP_DIR, "serve.mjs") || file.startsWith(path.join(APP_DIR, "next-env.d.ts"))) continue;
    hash.update(path.relative(REPO_ROOT, file));
    hash.update("\0");
    hash.update(readFileSync(file));
    hash.update("\0");
  }
  return hash.digest("hex");
}

function lockHash() {
  return createHash("sha256").update(readFileSync(path.join(APP_DIR, "package-lock.json"))).digest("hex");
}

function readStamp(file) {
  try {
    return readFileSync(file, "utf8").trim();
  } catch {
    return null;
  }
}

/**
 * Sends `signal` (0: none, only whether any of it is left) to the child's process group: the child and
 * what it started (npm's scripts, next build's workers), which a signal to the child alone would leave
 * running when it is SIGKILLed or exits without passing the signal on. Where there are no process groups
 * (Windows), to the child. Through process.kill, not child.kill: under Deno (npm start) child.kill sends
 * one signal only, so a SIGKILL after a SIGTERM the child ignored was never sent.
 * @param {import("node:child_process").ChildProcess} child
 * @param {NodeJS.Signals | 0} signal
 * @returns {boolean} whether it was sent (false: nothing of the group is left)
 */
function signalGroup(child, signal) {
  if (!child.pid) return false;
  try {
    process.kill(GROUPS ? -child.pid : child.pid, signal);
    return true;
  } catch {
    return false;
  }
}

/**
 * Waits until the child's process group is gone (its last process reaped), at most `ms`.
 * @param {import("node:child_process").ChildProcess} child
 * @param {number} ms
 */
async function groupGone(child, ms) {
  const upBy = Date.now() + ms;
  while (signalGroup(child, 0) && Date.now() < upBy) await new Promise((r) => setTimeout(r, 50));
}

/**
 * Ends `child` and its process group: SIGTERM, then SIGKILL to whatever of the group is left after 5 s
 * (a child or grandchild that ignores SIGTERM). Resolves once the child has exited and the group is gone
 * (a grandchild is reaped by init: at most 5 s more are waited for that).
 * @param {import("node:child_process").ChildProcess} child
 * @param {Promise<unknown>} exited
 */
async function endGroup(child, exited) {
  if (signalGroup(child, "SIGTERM")) {
    await groupGone(child, 5_000);
    if (signalGroup(child, "SIGKILL")) await groupGone(child, 5_000);
  }
  await exited;
}

/** The step (StoppedError's) a stop ends while it waits for another start's build lock (withBuildLock). */
const LOCK_WAIT_STEP = "wait for another start's build";
/**
 * The step (StoppedError's) of a start that comes to the build lock, or to its next step (next build after
 * npm ci, next start after the build), once its process is stopping.
 */
const START_STEP = "start";

/**
 * The error of a step that a stop of this process ended (its onCleanup ran): not a failure of the step.
 * `stopped` and `step` say so to the caller (npm start's summary), whatever copy of this file made it.
 * @param {string} step
 */
function stoppedError(step) {
  return Object.assign(new Error(`${step} was stopped (the process running it is stopping)`), {
    stopped: true,
    step,
  });
}

/**
 * Runs a command to completion with its output forwarded line by line to `log`. While it runs, ending
 * it (and its process group) is registered with `onCleanup` (local/stack/cleanup.ts's in npm start), so
 * a stopped parent (Ctrl-C, SIGTERM, its own parent gone) ends it rather than leaving an `npm ci` or a
 * `next build` behind, and says it was stopped rather than failed; and its group is killed when this
 * process exits. `onSpawn` is told its pid (the build lock records it).
 */
function run(cmd, args, { log, env, label, onCleanup, onSpawn }) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: APP_DIR, env, stdio: ["ignore", "pipe", "pipe"], detached: GROUPS });
    const exited = new Promise((r) => child.once("exit", r));
    const killNow = () => signalGroup(child, "SIGKILL");
    process.once("exit", killNow);
    let stopped = false;
    const unregister = onCleanup?.(() => {
      stopped = true;
      return endGroup(child, exited);
    });
    if (child.pid) onSpawn?.(child.pid);
    const done = () => {
      process.removeListener("exit", killNow);
      unregister?.();
    };
    let tail = "";
    const onData = (chunk) => {
      const text = chunk.toString();
      tail = (tail + text).slice(-8000);
      for (const line of text.split("\n")) if (line.trim()) log(`${label}: ${line.trimEnd()}`);
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("error", (error) => {
      done();
      reject(error);
    });
    child.on("close", (code, signal) => {
      done();
      if (code === 0) resolve(undefined);
      else if (stopped) reject(stoppedError(label));
      else reject(new Error(`${label} failed (${code === null ? `signal ${signal}` : `exit ${code}`}):\n${tail}`));
    });
  });
}

/**
 * State and start time of process `pid` from /proc/<pid>/stat (Linux): the start time (field 22, clock
 * ticks since boot) tells the process apart from a later one given the same pid. Null where it cannot be
 * read (no such process, or no /proc).
 * @param {number} pid
 */
function procStat(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: fields 3 on follow its last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return fields.length > 19 ? { state: fields[0], start: fields[19] } : null;
  } catch {
    return null;
  }
}

/**
 * The machine and boot the lock's pids belong to: a pid says nothing about a process on another machine
 * (a folder shared with a container or a VM) or before a reboot.
 */
function thisBoot() {
  let boot = null;
  try {
    boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch { /* no /proc */ }
  return { host: hostname(), boot };
}

/** A process as the lock records it: its pid and, where known, its start time. @param {number} pid */
function processRecord(pid) {
  return { pid, start: procStat(pid)?.start ?? null };
}

/**
 * Whether a recorded process still runs: "alive", "gone", or "unknown" where that cannot be told (no
 * start time recorded or readable for a pid that exists: it may be a later process given the same pid).
 * @param {{ pid?: unknown, start?: unknown } | undefined} record
 */
function processState(record) {
  const pid = record?.pid;
  if (typeof pid !== "number" || !Number.isInteger(pid) || pid <= 0) return "unknown";
  try {
    process.kill(pid, 0);
  } catch (error) {
    if (/** @type {{code?: string}} */ (error).code === "ESRCH") return "gone";
    if (/** @type {{code?: string}} */ (error).code !== "EPERM") return "unknown";
  }
  const now = procStat(pid);
  if (now === null || typeof record?.start !== "string") return "unknown";
  // A zombie has ended (only its parent has not reaped it yet); another start time is another process.
  return now.state === "Z" || now.start !== record.start ? "gone" : "alive";
}

/**
 * The lock's holder as recorded; null when there is no holder file; `{ unreadable: true, mtimeMs }` when
 * there is one that does not parse: being written in place (by a serve.mjs from before writeHolder's
 * rename) or left half-written, which lockState judges by the file's own age, never as no holder.
 */
function readHolder() {
  let text;
  let mtimeMs;
  try {
    mtimeMs = statSync(LOCK_HOLDER).mtimeMs;
    text = readFileSync(LOCK_HOLDER, "utf8");
  } catch {
    return null;
  }
  try {
    return JSON.parse(text);
  } catch {
    return { unreadable: true, mtimeMs };
  }
}

/** Writes the holder file whole (renamed into place), so that a waiter never reads half of it. */
function writeHolder(holder) {
  const temporary = `${LOCK_HOLDER}.${process.pid}.tmp`;
  writeFileSync(temporary, JSON.stringify(holder));
  renameSync(temporary, LOCK_HOLDER);
}

/**
 * Whether the lock as found (`holder` read from it) may be taken: "held" while its holder or the step it
 * runs (npm ci, next build, orphaned by a holder SIGKILLed) still runs; "stale" once both are gone; where
 * that cannot be told (no holder file: one from an older serve.mjs, or a holder killed between creating
 * the lock and writing it; another machine or boot; no /proc), "stale" only once the lock is 10 minutes old.
 * A holder file that does not parse is "held" until it is itself 10 minutes old: one being written now is
 * recent, whereas the lock may be older than 10 minutes (a long npm ci) and its holder running.
 */
function lockState(holder, mtimeMs) {
  if (holder?.unreadable) return Date.now() - holder.mtimeMs > 600_000 ? "stale" : "held";
  const here = thisBoot();
  const checkable = holder?.host === here.host && holder?.boot === here.boot;
  const holderState = checkable ? processState(holder?.holder) : "unknown";
  const stepState = !checkable ? "unknown" : holder?.step ? processState(holder.step) : "gone";
  if (holderState === "alive" || stepState === "alive") return "held";
  if (holderState === "gone" && stepState === "gone") return "stale";
  return Date.now() - mtimeMs > 600_000 ? "stale" : "held";
}

/**
 * Removes the lock directory with inode `ino` (judged stale) unless another waiter removed it first. It is
 * moved aside before it is removed: if what was moved is not that directory (a lock taken meanwhile by
 * another waiter that removed the stale one), it is put back.
 */
function removeStaleLock(ino) {
  const aside = `${LOCK_DIR}.stale-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    renameSync(LOCK_DIR, aside);
  } catch {
    return; // gone meanwhile
  }
  if (statSync(aside).ino === ino) {
    rmSync(aside, { recursive: true, force: true });
    return;
  }
  try {
    renameSync(aside, LOCK_DIR);
  } catch {
    rmSync(aside, { recursive: true, force: true });
  }
}

/** Who holds the lock, for the waiting line: "pid N, next build pid M", "… on <host>" when not here. */
function describeHolder(holder) {
  if (holder?.unreadable) return "its holder file unreadable: being written, or left half-written";
  if (!holder?.holder) return "its holder not recorded";
  const step = holder.step ? `, ${holder.step.label} pid ${holder.step.pid}` : "";
  const host = holder.host === hostname() ? "" : ` on ${holder.host}`;
  return `pid ${holder.holder.pid}${step}${host}`;
}

/**
 * Runs `fn(recordStep)` holding the build lock (a directory, made atomically), so that two starts never
 * install or build at once. The lock records its holder (machine and boot, pid and start time, a token of
 * its own) and, while one runs, its step (`recordStep(label, pid)`), so that a lock left by a holder that
 * was SIGKILLed is taken as soon as the holder and its step are gone, not after 10 minutes. A start that
 * comes to it once `stopping()` says its process is stopping takes none (rejects as stopped).
 */
async function withBuildLock(log, fn, onCleanup, stopping) {
  // Stopping already (its cleanups have begun): a lock taken now would only be released again, and the npm
  // ci or next build spawned under it ended at once (a cleanup registered now runs at once). Checked before
  // the lock is taken; a stop that comes while this waits for another start's lock ends the wait (below).
  if (stopping?.()) throw stoppedError(START_STEP);
  const started = Date.now();
  const token = randomBytes(8).toString("hex");
  const holder = { ...thisBoot(), holder: { ...processRecord(process.pid), token } };
  let lastLogged = -Infinity;
  // While it waits for another start's lock: a stopped parent ends the wait at once (the waiter rejects as
  // stopped, leaving that lock alone), instead of waiting on until the lock is free or the parent exits. A
  // wait that wakes once its process is stopping, before the run-down has come to the wait's cleanup (a
  // newer one runs first), ends too, taking no lock that a free lock would give it: npm ci would be spawned
  // under it only for its cleanup, registered once the run-down has begun, to end it at once.
  let stopped = false;
  let wake = () => {};
  const unregisterWait = onCleanup?.(() => {
    stopped = true;
    wake();
  });
  try {
    for (;;) {
      if (stopped || stopping?.()) throw stoppedError(LOCK_WAIT_STEP);
      try {
        mkdirSync(LOCK_DIR);
      } catch (error) {
        if (/** @type {{code?: string}} */ (error).code !== "EEXIST") throw error;
        let found;
        try {
          found = statSync(LOCK_DIR);
        } catch {
          continue; // removed meanwhile: try again
        }
        const current = readHolder();
        if (lockState(current, found.mtimeMs) === "stale") {
          log(`web: taking the build lock of a start that is gone (${describeHolder(current)})`);
          removeStaleLock(found.ino);
          continue;
        }
        if (Date.now() - started > 900_000) throw new Error(`timed out waiting for ${LOCK_DIR}`);
        if (Date.now() - lastLogged >= 10_000) {
          lastLogged = Date.now();
          log(`web: waiting for another build of the web app to finish (${describeHolder(current)})`);
        }
        await new Promise((r) => {
          const timer = setTimeout(r, 500);
          wake = () => {
            clearTimeout(timer);
            r(undefined);
          };
        });
        continue;
      }
      try {
        writeHolder(holder);
      } catch (error) {
        rmSync(LOCK_DIR, { recursive: true, force: true });
        throw error;
      }
      break;
    }
  } finally {
    unregisterWait?.();
  }
  // Removed only while it is still this holder's (not one another start took as stale).
  const release = () => {
    if (readHolder()?.holder?.token === token) rmSync(LOCK_DIR, { recursive: true, force: true });
  };
  /** @param {string} label @param {number} pid */
  const recordStep = (label, pid) => {
    if (readHolder()?.holder?.token === token) {
      writeHolder({ ...holder, step: { label, ...processRecord(pid) } });
    }
  };
  // Held: a stopped parent removes it too (after ending the build, registered later, so run first), or
  // the next start would wait for this holder to be gone.
  const unregister = onCleanup?.(release);
  try {
    return await fn(recordStep);
  } finally {
    unregister?.();
    release();
  }
}

function buildEnv() {
  return { ...process.env, NEXT_TELEMETRY_DISABLED: "1", NODE_ENV: "production" };
}

/**
 * Installs the app's packages and builds it when needed. Returns what it did.
 * @param {{ log?: (line: string) => void, force?: boolean, onCleanup?: import("./serve.d.ts").OnCleanup,
 *   stopping?: () => boolean }} [options]
 */
export async function ensureWebAppBuilt({ log = console.log, force = false, onCleanup, stopping } = {}) {
  return await withBuildLock(log, async (recordStep) => {
    const did = { installed: false, built: false };
    const wantLock = lockHash();
    if (!existsSync(NEXT_BIN) || readStamp(INSTALL_STAMP) !== wantLock) {
      log("web: installing packages (npm ci in examples/web)");
      const npm = process.platform === "win32" ? "npm.cmd" : "npm";
      await run(npm, ["ci", "--no-audit", "--no-fund", "--loglevel=error"], {
        log,
        env: { ...process.env },
        label: "npm ci",
        onCleanup,
        onSpawn: (pid) => recordStep("npm ci", pid),
      });
      writeFileSync(INSTALL_STAMP, wantLock);
      did.installed = true;
    }
    const want = sourceHash();
    if (force || !existsSync(path.join(APP_DIR, ".next", "BUILD_ID")) || readStamp(BUILD_STAMP) !== want) {
      // Stopped while npm ci ran, which exited 0 all the same (as its end came): no build spawned only for
      // its cleanup, registered once the run-down has begun, to end it at once.
      if (stopping?.()) throw stoppedError(START_STEP);
      const started = Date.now();
      log("web: building (next build)");
      await run(process.execPath.includes("deno") ? "node" : process.execPath, [NEXT_BIN, "build"], {
        log: (line) => {
          if (!/Node\.js 20 and below are deprecated/.test(line)) log(line);
        },
        env: buildEnv(),
        label: "next build",
        onCleanup,
        onSpawn: (pid) => recordStep("next build", pid),
      });
      writeFileSync(BUILD_STAMP, want);
      log(`web: built in ${Math.round((Date.now() - started) / 1000)} s`);
      did.built = true;
    }
    return did;
  }, onCleanup, stopping);
}

/**
 * The port in `next start`'s "- Local: http://host:port" line: the one its server listens on (with
 * --port 0, a port the OS picked as the server bound it). Null until that line has been printed.
 * @param {string} output
 */
function listeningPort(output) {
  const port = Number(output.match(/- Local:\s+\S*?https?:\/\/\S*:(\d+)/)?.[1]);
  return port > 0 ? port : null;
}

function isLoopback(url) {
  try {
    const host = new URL(url).hostname;
    return host === "localhost" || host === "[::1]" || host === "::1" || /^127(\.\d{1,3}){3}$/.test(host);
  } catch {
    return false;
  }
}

/**
 * Starts `next start` for the app (installing and building first when needed).
 * @param {import("./serve.d.ts").WebAppOptions} options
 * @returns {Promise<import("./serve.d.ts").WebApp>}
 */
export async function startWebApp(options) {
  const log = options.log ?? console.log;
  const host = options.host ?? "127.0.0.1";
  const onCleanup = options.onCleanup;
  if (options.build !== "never") {
    await ensureWebAppBuilt({ log, force: options.build === "always", onCleanup, stopping: options.stopping });
  }
  // 0: the server binds a port the OS picks (no port picked here, released and bound later, which
  // another process could take in between); the port is read from what the server prints.
  const requestedPort = options.port ? options.port : 0;
  const apiUrl = options.apiUrl.replace(/\/+$/, "");
  // Development sign-in: only with a JWT secret and a stack on this machine (see lib/server/config.ts).
  const devSignIn = (options.devSignIn ?? true) && Boolean(options.jwtSecret) && isLoopback(apiUrl);
  const env = {
    ...buildEnv(),
    ...options.env,
    SUPABASE_URL: apiUrl,
    SUPABASE_ANON_KEY: options.anonKey,
    READSYNC_DEV_SIGNIN: devSignIn ? "1" : "0",
    SUPABASE_JWT_SECRET: devSignIn ? options.jwtSecret : "",
    SUPABASE_DB_URL: devSignIn ? options.dbUrl ?? "" : "",
    PORT: String(requestedPort),
    HOSTNAME: host,
    // Other devices' pages get the API at the address they asked for (lib/server/config.ts).
    ...(options.browserApiPort ? { READSYNC_BROWSER_API_PORT: String(options.browserApiPort) } : {}),
  };
  const nodeBin = process.execPath.includes("deno") ? "node" : process.execPath;
  // Stopped while the build ran, which exited 0 all the same (or, with build "never", before this start):
  // no server spawned only for its cleanup, registered once the run-down has begun, to end it at once.
  if (options.stopping?.()) throw stoppedError(START_STEP);
  const child = spawn(nodeBin, [NEXT_BIN, "start", "--port", String(requestedPort), "--hostname", host], {
    cwd: APP_DIR,
    env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: GROUPS,
  });
  let output = "";
  let exited = null;
  /** Where this child listens, once it has said so: only then is anything probed (never another server). */
  let port = null;
  const onData = (chunk) => {
    const text = chunk.toString();
    output = (output + text).slice(-8000);
    port ??= listeningPort(output);
    if (options.verbose) for (const line of text.split("\n")) if (line.trim()) log(`web: ${line.trimEnd()}`);
  };
  child.stdout.on("data", onData);
  child.stderr.on("data", onData);
  const exitPromise = new Promise((resolve) =>
    child.on("exit", (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    })
  );
  const killNow = () => {
    if (!exited) signalGroup(child, "SIGKILL");
  };
  process.once("exit", killNow);
  /** Set when a stop of this process (onCleanup) stops the server before it serves: not a failure. */
  let stoppedByCleanup = false;
  // From here until stop(): a stopped parent stops the server (while it starts, and once it serves).
  let unregister = onCleanup?.(() => {
    stoppedByCleanup = true;
    return stop();
  });

  // Where this machine reaches the server: on every interface (0.0.0.0), at 127.0.0.1 (as the API's URL).
  const origin = host === "0.0.0.0" ? "http://127.0.0.1" : `http://${host.includes(":") ? `[${host}]` : host}`;
  const stop = async () => {
    process.removeListener("exit", killNow);
    unregister?.();
    unregister = undefined;
    await endGroup(child, exitPromise);
  };

  /** What the server printed, for an error: "; it printed:\n<its output>", or that it printed nothing. */
  const printedSoFar = () => (output.trim() ? `; it printed:\n${output}` : "; it printed nothing");
  const deadline = Date.now() + (options.startTimeoutMs ?? 60_000);
  for (;;) {
    if (exited) {
      await stop();
      if (stoppedByCleanup) throw stoppedError("next start");
      if (requestedPort && /EADDRINUSE/.test(output)) {
        throw new Error(
          `port ${requestedPort} (${host}) is already in use: stop what holds it or choose another port ` +
            `(READSYNC_WEB_PORT for npm start; 0: a free one)`,
        );
      }
      throw new Error(`next start exited (${JSON.stringify(exited)}) before it served${printedSoFar()}`);
    }
    // Next prints "- Local: <url>" and then "Ready in <time>": ready without that line, its port can never
    // be read (a Next.js that writes that line otherwise); say so now rather than after the whole timeout.
    if (!port && /\bReady in\b/.test(output)) {
      await stop();
      throw new Error(
        `next start says it is ready but printed no "- Local: http://<host>:<port>" line to read its port ` +
          `from${printedSoFar()}`,
      );
    }
    if (port) {
      try {
        const response = await fetch(`${origin}:${port}/sign-in`, { redirect: "manual" });
        await response.arrayBuffer();
        if (response.status < 500) break;
      } catch { /* not answering yet */ }
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(
        `next start did not answer on ${port ? `${origin}:${port}` : `${host} (no port printed)`} within ` +
          `${options.startTimeoutMs ?? 60_000} ms${printedSoFar()}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const url = `${origin}:${port}`;
  log(`web: ${url} (development sign-in ${devSignIn ? "on" : "off"})`);
  return { url, port, devSignIn, stop, output: () => output };
}

/**
 * A Node process's exit cleanups (`node serve.mjs`, tests/browser/run.mjs; npm start has its own,
 * local/stack/cleanup.ts, which works the same way): `onCleanup` registers one (startWebApp's `onCleanup`:
 * its npm ci, next build, next start and build lock; or the caller's own) and returns its removal; they
 * run once each, when the process is stopped (SIGINT, SIGTERM, or SIGHUP: the terminal closed, whose
 * SIGHUP the steps, in a session of their own, do not get) or when `runCleanups()` is called: those
 * registered before, newest first; one registered after that run-down has begun (by a step under way
 * when it began) at once, once the code registering it has run on to its next await, neither waiting
 * for the cleanup under way nor left unrun once the run-down has ended; those registered together newest
 * first (a step's end before the release of the build lock it held), the older ones only once they have
 * run, also the older ones of such a late batch under way when more are registered. `runCleanups()`
 * resolves once all have run. A stop exits with `exitCode(code)` (code: 130, 143 or 129) once they have
 * run; `removeSignalHandlers()` ends that.
 * @param {{ exitCode?: (code: number) => number, log?: (line: string) => void }} [options]
 */
export function exitCleanups({ exitCode = (code) => code, log = () => {} } = {}) {
  /** @type {Array<() => unknown>} */
  const cleanups = [];
  /** @param {() => unknown} fn */
  const runOne = (fn) => Promise.resolve().then(fn).then(() => {}, (error) => log(`cleanup failed: ${error}`));
  /** Whether the run-down has begun: a cleanup registered since runs at once (onCleanup). */
  let begun = false;
  /** The run-down of the cleanups registered before it; null until it has begun. @type {Promise<void> | null} */
  let runDown = null;
  /**
   * Cleanups registered once the run-down had begun, in batches: those registered together (before the
   * code registering them reached its next await) run newest first, a microtask later. `lateBatch` gathers
   * the next one (null between batches); `lateBatches` are those not yet ended, oldest first: each goes on
   * to its next older cleanup only once those begun after it have ended (the run-down likewise, after all).
   * @type {Array<() => unknown> | null}
   */
  let lateBatch = null;
  /** @typedef {{ cleanups: Array<() => unknown>, ended: Promise<void> }} LateBatch */
  /** @type {LateBatch[]} */
  const lateBatches = [];
  /** The late batches not yet ended that began after `after` (null: all). @param {LateBatch | null} after */
  const batchesAfter = (after) => lateBatches.slice(after ? lateBatches.indexOf(after) + 1 : 0);
  /** Resolves once those have ended, also those begun while it waited. @param {LateBatch | null} after */
  const lateOnesRun = async (after) => {
    for (let newer = batchesAfter(after); newer.length > 0; newer = batchesAfter(after)) {
      await Promise.all(newer.map((batch) => batch.ended));
    }
  };
  /**
   * Runs `list` newest first (the run-down's, `after` null, or the late batch `after`'s own), going on to the
   * next older one only once the late batches begun after `after` have ended (a step a start ran on to
   * after the stop ends before the release of the build lock that start holds).
   * @param {Array<() => unknown>} list @param {LateBatch | null} after
   */
  const runNewestFirst = async (list, after) => {
    while (list.length > 0) {
      await runOne(/** @type {() => unknown} */ (list.pop()));
      if (batchesAfter(after).length > 0) await lateOnesRun(after); // only then: no turn more than needed
    }
  };
  const newLateBatch = () => {
    /** @type {LateBatch} */
    const batch = { cleanups: lateBatch = [], ended: Promise.resolve() };
    lateBatches.push(batch);
    batch.ended = Promise.resolve().then(async () => {
      lateBatch = null;
      await runNewestFirst(batch.cleanups, batch);
      lateBatches.splice(lateBatches.indexOf(batch), 1);
    });
    return batch.cleanups;
  };
  /** @type {import("./serve.d.ts").OnCleanup} */
  const onCleanup = (fn) => {
    const into = begun ? lateBatch ?? newLateBatch() : cleanups;
    into.push(fn);
    return () => {
      const i = into.indexOf(fn);
      if (i >= 0) into.splice(i, 1);
    };
  };
  const runCleanups = async () => {
    if (!runDown) {
      // Set before the first cleanup runs: what that one registers runs at once too (see onCleanup).
      begun = true;
      runDown = runNewestFirst(cleanups, null);
    }
    await runDown;
    await lateOnesRun(null);
  };
  let stopping = false;
  const handlers = /** @type {const} */ ([["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]).map(
    ([signal, code]) => {
      const handler = () => {
        if (stopping) return;
        stopping = true;
        void runCleanups().then(() => process.exit(exitCode(code)));
      };
      process.on(signal, handler);
      return /** @type {const} */ ([signal, handler]);
    },
  );
  return {
    onCleanup,
    runCleanups,
    /** Whether a signal has stopped the process (its cleanups run, then it exits). */
    stopping: () => stopping,
    removeSignalHandlers() {
      for (const [signal, handler] of handlers) process.removeListener(signal, handler);
    },
  };
}

/**
 * The port an environment variable asks for, or `fallback` when it is not set (or empty), by the rule
 * npm start reads its port variables with (shared/options checkEnvNumber, which plain Node cannot
 * import): a whole number from 0 to 65535 written in decimal digits, no fraction or leading zeros
 * (surrounding spaces ignored). Otherwise null, with `refusal` the line that says so (naming the variable), instead
 * of Number() of it ("abc" NaN, "5.0" port 5, "03000" 3000).
 * @param {string} name
 * @param {number} fallback
 * @returns {{ port: number, refusal?: undefined } | { port: null, refusal: string }}
 */
function portFromEnv(name, fallback) {
  const text = process.env[name];
  const trimmed = text?.trim();
  if (!trimmed) return { port: fallback };
  if (/^(?:0|[1-9][0-9]{0,4})$/.test(trimmed) && Number(trimmed) <= 65535) return { port: Number(trimmed) };
  const shown = text.length <= 40 ? JSON.stringify(text) : "a long string";
  return {
    port: null,
    refusal: `serve.mjs environment variable ${name} must be a whole number from 0 to 65535, written in ` +
      `decimal digits without a fraction or leading zeros (got ${shown})`,
  };
}

// `node serve.mjs` (or `npm run serve` in this folder): serve against the stack named by the
// environment (SUPABASE_URL, SUPABASE_ANON_KEY, and for development sign-in SUPABASE_JWT_SECRET +
// SUPABASE_DB_URL; PORT, default 3000, 0: a free one), until Ctrl-C, SIGTERM or SIGHUP, which also end an
// install or a build under way. `node serve.mjs --build` only installs and builds.
if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let serving = false;
  // What a stop (Ctrl-C, SIGTERM, SIGHUP) must end: npm ci, next build, next start. A stop once the app
  // serves exits 0 (as it always did); one during the install or build 130 / 143 / 129.
  const { onCleanup, stopping } = exitCleanups({ exitCode: (code) => (serving ? 0 : code) });
  // A build or start that fails because a stop ended it is not reported: the stop exits.
  const unlessStopping = (error) => (stopping() ? new Promise(() => {}) : Promise.reject(error));
  if (process.argv.includes("--build")) {
    await ensureWebAppBuilt({ force: process.argv.includes("--force"), onCleanup, stopping })
      .catch(unlessStopping);
  } else {
    // Checked before anything starts (no install or build for a server that cannot be asked for).
    const { port, refusal } = portFromEnv("PORT", 3000);
    if (port === null) {
      console.error(refusal);
      process.exit(1);
    }
    const need = (name) => {
      const value = process.env[name];
      if (!value) {
        console.error(`${name} is not set`);
        process.exit(2);
      }
      return value;
    };
    const app = await startWebApp({
      apiUrl: need("SUPABASE_URL"),
      anonKey: need("SUPABASE_ANON_KEY"),
      jwtSecret: process.env.SUPABASE_JWT_SECRET,
      dbUrl: process.env.SUPABASE_DB_URL,
      port,
      devSignIn: process.env.READSYNC_DEV_SIGNIN === "1", // as lib/server/config.ts: only when asked for
      verbose: true,
      onCleanup,
      // Once stopped, no next step is begun (npm ci or next build exiting 0 as the stop ends it).
      stopping,
    }).catch(unlessStopping);
    serving = true;
    console.log(`readsync web app: ${app.url}`);
  }
}
