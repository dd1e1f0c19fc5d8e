// One place that knows what the local stack must undo when the process ends: normally, on Ctrl-C
// (SIGINT), on SIGTERM, on SIGHUP (its terminal closed: the web app's steps, in a session of their own,
// do not get that SIGHUP themselves), when the parent process is gone, or when a test run fails. Cleanups run
// once, newest first.

type Cleanup = () => Promise<void> | void;

const cleanups: Cleanup[] = [];
let signalsInstalled = false;
let running: Promise<void> | null = null;
/** What stopped this process, once a signal (or its parent's end) has started the cleanups. */
let stop: { by: string; code: number } | null = null;
let stopped: (stop: { by: string; code: number }) => void = () => {};
const whenStoppedPromise = new Promise<{ by: string; code: number }>((resolve) => stopped = resolve);

export function onCleanup(fn: Cleanup): () => void {
  installSignalHandlers();
  cleanups.push(fn);
  return () => {
    const i = cleanups.indexOf(fn);
    if (i >= 0) cleanups.splice(i, 1);
  };
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

export function runCleanups(): Promise<void> {
  running ??= (async () => {
    while (cleanups.length > 0) {
      const fn = cleanups.pop()!;
      try {
        await fn();
      } catch (error) {
        console.error(`cleanup failed: ${error instanceof Error ? error.message : error}`);
      }
    }
  })();
  return running;
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
