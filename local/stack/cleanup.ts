// One place that knows what the local stack must undo when the process ends: normally, on Ctrl-C
// (SIGINT), on SIGTERM, on SIGHUP (its terminal closed: the web app's steps, in a session of their own,
// do not get that SIGHUP themselves), when the parent process is gone, or when a test run fails. Each
// cleanup runs once: those registered before the run-down newest first, one after another; one registered
// once it has begun (by a step that was under way when the stop came) at once (see onCleanup).

type Cleanup = () => Promise<void> | void;

const cleanups: Cleanup[] = [];
let signalsInstalled = false;
/** Whether the run-down has begun (runCleanups): a cleanup registered since runs at once (onCleanup). */
let begun = false;
/** The run-down of the cleanups registered before it (runCleanups); null until it has begun. */
let runDown: Promise<void> | null = null;
/**
 * Cleanups registered once the run-down had begun and not yet run: those registered together (before the
 * code registering them reached its next await), run newest first a microtask later. Null between batches.
 */
let lateBatch: Cleanup[] | null = null;
/** The batches of late cleanups running now (the run-down and runCleanups wait for them too). */
const late = new Set<Promise<void>>();
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
 * only once they have run. Its removal, called before it runs, stops it.
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
  const batch: Cleanup[] = lateBatch = [];
  const running = Promise.resolve().then(async () => {
    lateBatch = null;
    while (batch.length > 0) await runOne(batch.pop()!);
  });
  late.add(running);
  void running.then(() => late.delete(running));
  return batch;
}

/**
 * What stopped this process ("SIGINT", "SIGTERM", "SIGHUP" or "its parent gone") and the code it exits with
 * once its cleanups have run; null while it was not stopped. npm start announces no stack once stopped.
 */
export function stoppedBy(): { by: string; code: number } | null {
  return stop;
}

/**
 * Resolves with stoppedBy() once this process is stopped: before its cleanups have begun (what is told
 * is told as the stop begins, not once the cleanups have removed things). Never, while not stopped.
 */
export function whenStopped(): Promise<{ by: string; code: number }> {
  return whenStoppedPromise;
}

/** How many cleanups are registered now (what a stopped stack must have removed again). */
export function pendingCleanups(): number {
  return cleanups.length;
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
    runDown = (async () => {
      while (cleanups.length > 0) {
        await runOne(cleanups.pop()!);
        // Only when there are any: no turn more between one cleanup and the next than needed. (What a cleanup
        // ends may be ending already, by its owner: its owner removes it only once that has run, so the
        // run-down finds it still registered and waits for the same end; see postgres.ts's abandon and stop.)
        if (late.size > 0) await lateOnesRun();
      }
    })();
  }
  await runDown;
  await lateOnesRun();
}

/** Resolves once the late cleanups have run, also those registered while it waited. */
async function lateOnesRun(): Promise<void> {
  while (late.size > 0) await Promise.all(late);
}

async function runOne(fn: Cleanup): Promise<void> {
  try {
    await fn();
  } catch (error) {
    console.error(`cleanup failed: ${error instanceof Error ? error.message : error}`);
  }
}

function installSignalHandlers(): void {
  if (signalsInstalled) return;
  signalsInstalled = true;
  for (const [signal, code] of [["SIGINT", 130], ["SIGHUP", 129], ["SIGTERM", 143]] as const) {
    Deno.addSignalListener(signal, async () => {
      stop ??= { by: signal, code };
      stopped(stop);
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
      stopped(stop);
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
