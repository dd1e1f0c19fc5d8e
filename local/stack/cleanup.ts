// One place that knows what the local stack must undo when the process ends: normally, on Ctrl-C
// (SIGINT), on SIGTERM, on SIGHUP (its terminal closed: the web app's steps, in a session of their own,
// do not get that SIGHUP themselves), when the parent process is gone, or when a test run fails. Each
// cleanup runs once: those registered before the run-down newest first, one after another; one registered
// once it has begun (by a step that was under way when the stop came) at once (see onCleanup), the older
// ones only once it has run.

type Cleanup = () => Promise<void> | void;

const cleanups: Cleanup[] = [];
let signalsInstalled = false;
/** Whether the run-down has begun (runCleanups): a cleanup registered since runs at once (onCleanup). */
let begun = false;
/** The run-down of the cleanups registered before it (runCleanups); null until it has begun. */
let runDown: Promise<void> | null = null;
/**
 * Cleanups registered once the run-down had begun, in batches: those registered together (before the code
 * registering them reached its next await) run newest first, a microtask later. `lateBatch` gathers the
 * next one (null between batches); `lateBatches` are those not yet ended, oldest first: each goes on to its
 * next older cleanup only once those begun after it have ended (the run-down likewise, after all of them).
 */
let lateBatch: Cleanup[] | null = null;
type LateBatch = { cleanups: Cleanup[]; ended: Promise<void> };
const lateBatches: LateBatch[] = [];
/** How many cleanups are running now (pendingCleanups counts them). */
let running = 0;
/** What stopped this process, once a signal (or its parent's end) has started the cleanups. */
let stop: { by: string; code: number } | null = null;
let stopped: (stop: { by: string; code: number }) => void = () => {};
const whenStoppedPromise = new Promise<{ by: string; code: number }>((resolve) => stopped = resolve);

/**
 * Registers `fn` to run when the process ends; returns its removal. Once the run-down has begun (a stop,
 * or the end of a run: runCleanups), `fn` runs at once instead: as soon as the code registering it has run
 * on to its next await (that code may still be setting up what `fn` ends), without waiting for the cleanup
 * under way (npm start's last one waits for its start to end, which can wait for `fn`'s child) and also
 * once the run-down has ended, where it would never have run. Those registered together run newest first
 * (a step's end before the release of the build lock it held), and the run-down goes on to the older ones
 * only once they have run; so does a batch of such late ones under way when more are registered (npm ci
 * exiting 0 as its end came, and its start going on to next build: that build ends before the lock's
 * release). Its removal, called before it runs, stops it.
 */
export function onCleanup(fn: Cleanup): () => void {
  installSignalHandlers();
  const into = begun ? lateBatch ?? newLateBatch() : cleanups;
  into.push(fn);
  return () => {
    const i = into.indexOf(fn);
    if (i >= 0) into.splice(i, 1);
  };
}

/** A batch of late cleanups, run a microtask from now (what is registered until then joins it). */
function newLateBatch(): Cleanup[] {
  const batch: LateBatch = { cleanups: lateBatch = [], ended: Promise.resolve() };
  lateBatches.push(batch);
  batch.ended = Promise.resolve().then(async () => {
    lateBatch = null;
    await runNewestFirst(batch.cleanups, batch);
    lateBatches.splice(lateBatches.indexOf(batch), 1);
  });
  return batch.cleanups;
}

/**
 * Runs `list` newest first (the run-down's, `after` null; or the late batch `after`'s own), going on to the
 * next older one only once the late batches begun after `after` have ended: what the one before made a
 * start register (a step it ran on to after the stop) ends before the next older one (the release of the
 * build lock that start holds).
 */
async function runNewestFirst(list: Cleanup[], after: LateBatch | null): Promise<void> {
  while (list.length > 0) {
    await runOne(list.pop()!);
    // Only when there are any: no turn more between one cleanup and the next than needed. (What a cleanup
    // ends may be ending already, by its owner: its owner removes it only once that has run, so the
    // run-down finds it still registered and waits for the same end; see postgres.ts's abandon and stop.)
    if (batchesAfter(after).length > 0) await lateOnesRun(after);
  }
}

/** The late batches not yet ended that began after `after` (null: all of them). */
function batchesAfter(after: LateBatch | null): LateBatch[] {
  return lateBatches.slice(after ? lateBatches.indexOf(after) + 1 : 0);
}

/**
 * What stopped this process ("SIGINT", "SIGTERM", "SIGHUP" or "its parent gone") and the code it exits with
 * once its cleanups have run; null while it was not stopped. npm start announces no stack once stopped.
 */
export function stoppedBy(): { by: string; code: number } | null {
  return stop;
}

/**
 * Resolves with stoppedBy() once this process is stopped, before the stop begins its cleanups: a stop
 * resolves it and lets what waits for it run (up to its first await) before its run-down starts the
 * newest cleanup, so what is told is told as the stop begins, not once a cleanup has begun removing
 * things. (A run-down begun before the stop, the end of a run or a failed start's, has begun them
 * already.) Never, while not stopped.
 */
export function whenStopped(): Promise<{ by: string; code: number }> {
  return whenStoppedPromise;
}

/**
 * Whether the run-down has begun (a stop, or the end of a run: runCleanups): what is registered now runs at
 * once, so a start that has not begun a step yet (the web app's install or build) begins none.
 */
export function cleanupsBegun(): boolean {
  return begun;
}

/**
 * How many cleanups are registered and have not yet ended (what a stopped stack must have removed again):
 * those still to run, also those registered once the run-down had begun, and those running now.
 */
export function pendingCleanups(): number {
  return cleanups.length + lateBatches.reduce((sum, batch) => sum + batch.cleanups.length, 0) + running;
}

/**
 * Runs the cleanups (each once, however often this is called) and resolves once all have run: those
 * registered before, newest first, each after those registered while the one before it ran (onCleanup
 * runs them at once), and any registered while it waited for those. The newest starts before this returns:
 * the unload listener's last resort for a synchronous exit (Deno.exit) gets no later turn.
 */
export async function runCleanups(): Promise<void> {
  if (!runDown) {
    // Set before the first cleanup runs: what that one registers runs at once too (see onCleanup).
    begun = true;
    runDown = runNewestFirst(cleanups, null);
  }
  await runDown;
  await lateOnesRun(null);
}

/**
 * Resolves once the late batches begun after `after` (null: all) have ended, also those begun while it
 * waited.
 */
async function lateOnesRun(after: LateBatch | null): Promise<void> {
  for (let newer = batchesAfter(after); newer.length > 0; newer = batchesAfter(after)) {
    await Promise.all(newer.map((batch) => batch.ended));
  }
}

async function runOne(fn: Cleanup): Promise<void> {
  running++;
  try {
    await fn();
  } catch (error) {
    console.error(`cleanup failed: ${error instanceof Error ? error.message : error}`);
  } finally {
    running--;
  }
}

/**
 * Resolves whenStopped() with `by` and resolves once what waited for it has run (to its first await):
 * its reactions were queued as it resolved, this await's after them. runCleanups() would otherwise start
 * the newest cleanup at once, before any of them (whenStopped's comment).
 */
async function toldStopped(by: { by: string; code: number }): Promise<void> {
  stopped(by);
  await whenStoppedPromise;
}

function installSignalHandlers(): void {
  if (signalsInstalled) return;
  signalsInstalled = true;
  for (const [signal, code] of [["SIGINT", 130], ["SIGHUP", 129], ["SIGTERM", 143]] as const) {
    Deno.addSignalListener(signal, async () => {
      stop ??= { by: signal, code };
      await toldStopped(stop);
      await runCleanups();
      Deno.exit(code);
    });
  }
  // A parent that dies without signalling us (an IDE's stop button sends SIGTERM to `npm`, which
  // exits without passing it on) leaves this process re-parented: clean up as for SIGTERM.
  const parent = Deno.ppid;
  if (parent > 1) {
    const orphanCheck = setInterval(async () => {
      if (Deno.ppid === parent) return;
      clearInterval(orphanCheck);
      stop ??= { by: "its parent gone", code: 143 };
      await toldStopped(stop);
      await runCleanups();
      Deno.exit(143);
    }, 1_000);
    Deno.unrefTimer(orphanCheck);
  }
  globalThis.addEventListener("unload", () => {
    // Last resort for synchronous exits; the postgres watchdog covers hard kills.
    void runCleanups();
  });
}
