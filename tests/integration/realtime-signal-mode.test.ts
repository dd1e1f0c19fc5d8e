// The Realtime endpoint reads each upgrade request's signal (a client that left during the connect is not
// upgraded: realtime-client-gone.test.ts). In Deno.serve's legacy abort mode (Deno 2.9's default) that
// signal also aborts once an answer has been delivered, and the first delivered answer of a request
// whose signal was read makes Deno print, once per process, "request.signal aborts on successful
// responses (legacy behavior)…": `npm start` and the test output showed it at the first WebSocket. The
// root deno.json turns the legacy mode off (`"unstable": ["no-legacy-abort"]`: the signal aborts only
// when the client leaves before its answer), so a process serving the endpoint prints nothing about it.
// Checked in processes of their own (the warning is once per process, and the mode is the process's),
// started as the repository starts its servers: `deno eval` in the repository (the tests' children),
// and `deno run --config deno.json` of a script elsewhere (cleanup.test.ts's, tests/web/serve.test.ts's);
// `npm start`, `npm test` and bench/lib/stack_child.ts run a script in the repository, whose deno.json
// Deno finds as it finds it for `deno eval` there.

import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { ownEndpoint } from "./realtime_support.ts";
import { runDenoChild } from "../support/denoChild.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** A script that serves the endpoint, opens one WebSocket to it, closes it and prints the outcome. */
const script = `
  const { createRealtimeEndpoint } = await import(${
  JSON.stringify(new URL("../../local/realtime/endpoint.ts", import.meta.url).href)
});
  const { testEnv } = await import(${JSON.stringify(new URL("../support/env.ts", import.meta.url).href)});
  const env = testEnv();
  const events = [];
  const endpoint = await createRealtimeEndpoint({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret }, {
    log: (fields) => events.push(fields),
  });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    (req, info) => endpoint.handle(req, info),
  );
  const socket = new WebSocket(
    "ws://127.0.0.1:" + server.addr.port + "/realtime/v1/websocket?apikey=" + env.anonKey + "&vsn=2.0.0",
  );
  const opened = await new Promise((resolve) => {
    socket.onopen = () => resolve(true);
    socket.onerror = () => resolve(false);
  });
  const connections = endpoint.stats().connections;
  const closed = new Promise((resolve) => socket.addEventListener("close", resolve));
  socket.close();
  await closed;
  await endpoint.close();
  await server.shutdown();
  console.log(JSON.stringify({ opened, connections, events }));
`;

/** The child serving the endpoint; a hang guard only (a Deno start, an endpoint and one socket). */
function runChild(args: string[], cwd: string) {
  return runDenoChild(args, { cwd, timeoutMs: 60_000 });
}

function assertUpgradedWithoutTheWarning(
  how: string,
  { code, stdout, stderr }: { code: number; stdout: string; stderr: string },
) {
  assert.equal(code, 0, `${how}: ${stdout}\n${stderr}`);
  const outcome = JSON.parse(stdout.trim().split("\n").pop()!);
  assert.equal(outcome.opened, true, `${how}: the socket was upgraded (${stdout}\n${stderr})`);
  assert.equal(outcome.connections, 1, `${how}: the endpoint kept it (${JSON.stringify(outcome.events)})`);
  assert.doesNotMatch(stderr, /legacy behavior/, `${how}: Deno.serve is not in its legacy abort mode`);
}

Deno.test({
  name:
    "realtime endpoint: a process that serves it upgrades a socket without Deno's legacy-abort warning (deno eval in the repository)",
  ...ownEndpoint,
}, async () => {
  assertUpgradedWithoutTheWarning("deno eval", await runChild(["eval", script], ROOT));
});

Deno.test({
  name:
    "realtime endpoint: a process that serves it upgrades a socket without Deno's legacy-abort warning (deno run --config deno.json elsewhere)",
  ...ownEndpoint,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "readsync-signal-mode-" });
  try {
    const file = `${dir}/serve.ts`;
    await Deno.writeTextFile(file, script);
    const run = await runChild(["run", "-A", "--no-lock", "--config", `${ROOT}deno.json`, file], dir);
    assertUpgradedWithoutTheWarning("deno run --config", run);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
