// A small harness for the browser tests: Chromium through playwright-core (Debian's /usr/bin/chromium,
// no browser download), a test list run in order, screenshots into test-artifacts/browser/, and one
// summary line at the end: `browser: N passed, N failed` (`, N skipped` when skipped).

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const ARTIFACTS = path.join(REPO_ROOT, "test-artifacts", "browser");
export const WEB_APP_DIR = path.join(REPO_ROOT, "examples", "web");

/** playwright-core and postgres come from the web app's packages (examples/web/package-lock.json). */
export function requireFromWebApp(name) {
  return createRequire(path.join(WEB_APP_DIR, "package.json"))(name);
}

export const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * The Chromium to drive: READSYNC_CHROMIUM, else /usr/bin/chromium, installed with apt when missing
 * and running as root. Returns { path } or { skip: reason }.
 */
export function findChromium(log) {
  const wanted = process.env.READSYNC_CHROMIUM || "/usr/bin/chromium";
  if (existsSync(wanted)) return { path: wanted };
  if (process.env.READSYNC_CHROMIUM) return { skip: `READSYNC_CHROMIUM=${wanted} does not exist` };
  if (typeof process.getuid !== "function" || process.getuid() !== 0) {
    return { skip: "Chromium is not installed and this is not root: run `sudo apt-get install -y chromium`" };
  }
  try {
    log("installing Chromium: apt-get install -y chromium");
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    try {
      execFileSync("apt-get", ["install", "-y", "-q", "chromium"], {
        env,
        stdio: ["ignore", "pipe", "pipe"],
      });
    } catch {
      execFileSync("apt-get", ["update", "-q"], { env, stdio: ["ignore", "pipe", "pipe"] });
      execFileSync("apt-get", ["install", "-y", "-q", "chromium"], {
        env,
        stdio: ["ignore", "pipe", "pipe"],
      });
    }
  } catch (error) {
    return {
      skip: `apt-get install chromium failed: ${String(error?.stderr ?? error).trim().split("\n").pop()}`,
    };
  }
  return existsSync(wanted) ? { path: wanted } : { skip: `apt installed chromium but ${wanted} is missing` };
}

/** Polls `fn` until it returns without throwing (returns its value) or `timeoutMs` passes (rethrows). */
export async function eventually(fn, { timeoutMs = 15_000, intervalMs = 100, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      return await fn();
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      const message = lastError instanceof Error ? lastError.message : String(lastError);
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}: ${message}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

export function assertEqual(actual, expected, message) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${message}: expected ${e}, got ${a}`);
}

/** Thrown by a test that cannot run in this setup; counted as skipped, with its reason printed. */
export class SkipTest extends Error {}

/**
 * Runs tests in order; a failure does not stop the rest. Returns { passed, failed, skipped }. A test
 * may set its own `timeoutMs` (a hang guard for the whole test; `timeoutMs` here is the default).
 */
export async function runTests(tests, { log, onFailure, timeoutMs = 90_000, filter } = {}) {
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  for (const test of tests) {
    if (filter && !test.name.includes(filter)) continue;
    const started = Date.now();
    let timer;
    try {
      await Promise.race([
        test.fn(),
        new Promise((_, reject) => {
          const ms = test.timeoutMs ?? timeoutMs;
          timer = setTimeout(() => reject(new Error(`test timed out after ${ms} ms`)), ms);
        }),
      ]);
      passed++;
      log(`ok     ${test.name} (${Date.now() - started} ms)`);
    } catch (error) {
      if (error instanceof SkipTest) {
        skipped++;
        log(`skip   ${test.name}: ${error.message}`);
        continue;
      }
      failed++;
      log(
        `FAILED ${test.name} (${Date.now() - started} ms)\n${error instanceof Error ? error.stack : error}`,
      );
      try {
        await onFailure?.(test, error);
      } catch (e) {
        log(`(could not save failure artifacts: ${e})`);
      }
    } finally {
      clearTimeout(timer);
    }
  }
  return { passed, failed, skipped };
}

export function ensureArtifactsDir() {
  mkdirSync(ARTIFACTS, { recursive: true });
  return ARTIFACTS;
}

export function writeArtifact(name, data) {
  ensureArtifactsDir();
  const file = path.join(ARTIFACTS, name);
  writeFileSync(file, data);
  return file;
}
