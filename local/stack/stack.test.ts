// startLocalStack registers what it runs with the cleanups (cleanup.ts) while it runs, as startPostgres
// does its cluster: the API server too, so that Ctrl-C, SIGTERM, a parent gone or the end of a test run
// (runCleanups) closes it; and the stack's stop() removes them again (a process that starts and stops
// stacks keeps none of them).

import assert from "node:assert/strict";
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
