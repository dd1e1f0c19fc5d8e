// The throwaway cluster's initdb template: the first start makes it, later starts copy it, and every
// copy is a cluster of its own.

import assert from "node:assert/strict";
import postgres from "postgres";
import { freePort, type LocalPostgres, startPostgres } from "./postgres.ts";
import { exists, findPostgresBinaries } from "./system.ts";
import { runDenoChild } from "../../tests/support/denoChild.ts";

/** `promise`, or an error naming `what` once a hang guard (30 s) has passed (a guard, not a timing). */
async function guarded<T>(promise: Promise<T>, what: string, guardMs = 30_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what} did not end within ${guardMs / 1000} s`)),
          guardMs,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Reads `conn` (named `what` in the hang guard's error) until its other end closes it, then closes it. */
async function drainAndClose(conn: Deno.Conn, what: string): Promise<void> {
  const buffer = new Uint8Array(1024);
  await guarded(
    (async () => {
      while (await conn.read(buffer).catch(() => null) !== null) { /* whatever it sends */ }
    })(),
    what,
  );
  conn.close();
}

/**
 * The SIGINT tests' steps: accepts the connection (`what`) by which `starter`'s start holds on to
 * `listener`, interrupts the start (SIGINT), waits for it to end, and reads that connection until it closes.
 */
async function interruptWhileHeld(
  starter: Deno.ChildProcess,
  listener: Deno.Listener,
  what: string,
): Promise<void> {
  const conn = await guarded(listener.accept(), what);
  starter.kill("SIGINT");
  await guarded(starter.status, "the interrupted start");
  await drainAndClose(conn, what);
}

/**
 * The SIGINT tests' set-up: a listener the start is made to connect to (and be held by), a private
 * TMPDIR (0711, as the cluster's user needs), and `startPostgres(<options>)` run in a process of its own
 * (`start` gives the options' source text and any extra environment); the process, listener and TMPDIR
 * are ended after `body`, also when it throws.
 */
async function withStartInItsOwnProcess(
  prefix: string,
  start: (port: number, tmp: string) => Promise<{ options: string; env?: Record<string, string> }>,
  body: (starter: Deno.ChildProcess, listener: Deno.Listener, tmp: string) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  const tmp = await Deno.makeTempDir({ prefix });
  let starter: Deno.ChildProcess | undefined;
  try {
    await Deno.chmod(tmp, 0o711);
    const { options, env } = await start(port, tmp);
    const module = new URL("./postgres.ts", import.meta.url).href;
    starter = new Deno.Command(Deno.execPath(), {
      args: [
        "eval",
        `const { startPostgres } = await import(${JSON.stringify(module)});
       await startPostgres(${options});`,
      ],
      env: { TMPDIR: tmp, ...env },
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    await body(starter, listener, tmp);
  } finally {
    try {
      starter?.kill("SIGKILL");
    } catch { /* ended */ }
    listener.close();
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test({
  name: "initdb template: made once, then copied; each copy is an independent cluster",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPrivateTmpDir("readsync-template-test-", async () => {
    const lines: string[] = [];
    const log = (line: string) => lines.push(line);
    const clusters = [];
    try {
      clusters.push(await startPostgres({ log }));
      assert.equal(lines.filter((l) => l.includes("initdb template made")).length, 1, lines.join("\n"));
      clusters.push(await startPostgres({ log }));
      assert.equal(
        lines.filter((l) => l.includes("initdb template made")).length,
        1,
        "the second start copied it",
      );
      assert.ok(!lines.some((l) => l.includes("no initdb template")), lines.join("\n"));

      const [first, second] = clusters.map((c) => postgres(c.url, { max: 1, onnotice: () => {} }));
      try {
        await first`create table only_in_first (x int)`;
        const [{ found }] = await second<{ found: boolean }[]>`
        select exists (select 1 from pg_class where relname = 'only_in_first') as found`;
        assert.equal(found, false);
        const [{ db }] = await second<{ db: string }[]>`select current_database() as db`;
        assert.equal(db, "postgres");
      } finally {
        await first.end();
        await second.end();
      }
    } finally {
      for (const c of clusters) await c.stop();
    }
  }));

Deno.test({
  name: "a port another server holds is refused up front (its pg_isready must not pass for ours)",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const other = await startPostgres({ log: () => {} });
  try {
    const port = Number(new URL(other.url).port);
    await assert.rejects(startPostgres({ port, log: () => {} }), /port \d+ is already in use/);
  } finally {
    await other.stop();
  }
});

/**
 * `start` run with the temp dir a private one: what it threw, what it left in that directory and the
 * processes whose command line still names it (a pg_basebackup, a cluster's watchdog).
 */
function failedStart(start: () => Promise<{ stop(): Promise<void> }>) {
  return withPrivateTmpDir("readsync-failed-start-test-", async (tmp) => {
    const error = await start().then(
      async (started) => {
        await started.stop();
        return null;
      },
      (e: unknown) => e instanceof Error ? e : new Error(String(e)),
    );
    const left = [...Deno.readDirSync(tmp)].map((entry) => entry.name);
    const ps = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdout: "piped" }).output();
    const processes = new TextDecoder().decode(ps.stdout).split("\n").filter((line) => line.includes(tmp));
    return { error, left, processes };
  });
}

/** `body` run with a cluster of its own (the source of a restore) and one connection to it; both ended after. */
async function withSourceCluster(
  body: (source: LocalPostgres, sql: postgres.Sql) => Promise<void>,
): Promise<void> {
  const source = await startPostgres({ log: () => {} });
  const sql = postgres(source.url, { max: 1, onnotice: () => {} });
  try {
    await body(source, sql);
  } finally {
    await sql.end();
    await source.stop();
  }
}

/** `body` run with TMPDIR a fresh directory of its own (so what a start leaves there is seen), then removed. */
async function withPrivateTmpDir<T>(prefix: string, body: (tmp: string) => Promise<T>): Promise<T> {
  const tmp = await Deno.makeTempDir({ prefix });
  await Deno.chmod(tmp, 0o711); // the cluster's OS user must reach its directory below it
  const previous = Deno.env.get("TMPDIR");
  Deno.env.set("TMPDIR", tmp);
  try {
    return await body(tmp);
  } finally {
    if (previous === undefined) Deno.env.delete("TMPDIR");
    else Deno.env.set("TMPDIR", previous);
    await Deno.remove(tmp, { recursive: true });
  }
}

Deno.test({
  name:
    "a derived template removed between its look-up and its copy (a start pruning it as unused): the start " +
    "copies the initdb template instead and tells the derived one so, instead of failing",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPrivateTmpDir("readsync-derived-gone-test-", async (tmp) => {
    const lines: string[] = [];
    const log = (line: string) => lines.push(line);
    // A real derived template: a cluster with a table of its own, stopped, copied and started again.
    const source = await startPostgres({ log });
    try {
      const sql = postgres(source.url, { max: 1, onnotice: () => {} });
      await sql`create table only_in_derived (x int)`;
      await sql.end();
      await Deno.mkdir(`${tmp}/derived`, { mode: 0o711 });
      await source.copyStopped(`${tmp}/derived/data`);
    } finally {
      await source.stop();
    }
    let notCopied = 0;
    const cluster = await startPostgres({
      log,
      derivedTemplate: {
        name: "probe",
        // Found, then removed as a pruning start removes one (renamed away first) before this start copies it.
        find: async () => {
          await Deno.rename(`${tmp}/derived`, `${tmp}/derived.removing`);
          return `${tmp}/derived/data`;
        },
        notCopied: () => notCopied++,
      },
    });
    try {
      assert.equal(notCopied, 1, "the derived template was told it was not copied");
      assert.ok(lines.some((l) => l.includes("probe template not copied")), lines.join("\n"));
      const sql = postgres(cluster.url, { max: 1, onnotice: () => {} });
      try {
        const [{ found }] = await sql<{ found: boolean }[]>`
          select exists (select 1 from pg_class where relname = 'only_in_derived') as found`;
        assert.equal(found, false, "the cluster is the initdb template's");
      } finally {
        await sql.end();
      }
    } finally {
      await cluster.stop();
    }
  }));

Deno.test({
  name: "a restore whose base backup fails says why and leaves no directory behind",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withSourceCluster(async (source, sql) => {
    await sql`create role readsync_no_replication login`;
    const { port } = source;
    for (
      const [restoreOf, reason] of [
        // Nothing listens there.
        [`postgresql://postgres@127.0.0.1:${freePort()}/postgres`, /Connection refused/],
        // A running cluster that refuses this role a replication connection.
        [
          `postgresql://readsync_no_replication@127.0.0.1:${port}/postgres`,
          /must be superuser or replication role to start walsender/,
        ],
      ] as const
    ) {
      const { error, left, processes } = await failedStart(() => startPostgres({ restoreOf, log: () => {} }));
      assert.ok(error, `the restore of ${restoreOf} failed`);
      assert.deepEqual(left, [], "the restore's temp dir was removed");
      assert.deepEqual(processes, [], "no process is left behind");
      assert.match(error.message, /^pg_basebackup failed \(exit code 1;/, error.message);
      assert.match(error.message, reason, error.message);
    }
  }));

Deno.test({
  name: "a base backup that never ends is killed after stepTimeoutMs: a clear error, no directory left",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // A server that accepts and never answers: pg_basebackup waits for it forever.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  const accepted = listener.accept();
  try {
    const { error, left, processes } = await guarded(
      failedStart(() =>
        // 5 s: pg_basebackup must have connected before it is killed (0.1–0.3 s here under load 10–14).
        startPostgres({ restoreOf: `postgresql://postgres@127.0.0.1:${port}/postgres`, stepTimeoutMs: 5_000 })
      ),
      "startPostgres",
    );
    assert.ok(error, "the restore failed");
    assert.deepEqual(left, [], "the restore's temp dir was removed");
    assert.deepEqual(processes, [], "no process is left behind");
    assert.match(error.message, /^pg_basebackup did not finish within 5 s and was killed/, error.message);
    // Its connection ended with it.
    await drainAndClose(await guarded(accepted, "pg_basebackup's connection"), "pg_basebackup's connection");
  } finally {
    listener.close();
  }
});

Deno.test({
  name: "a start interrupted (SIGINT) during a base backup ends the backup and removes its directory",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  // A server that accepts and never answers holds the base backup; the start runs in a process of its own.
  withStartInItsOwnProcess(
    "readsync-interrupted-start-test-",
    (port) =>
      Promise.resolve({
        options: `{ restoreOf: "postgresql://postgres@127.0.0.1:${port}/postgres", log: () => {} }`,
      }),
    async (starter, listener, tmp) => {
      await interruptWhileHeld(starter, listener, "pg_basebackup's connection");
      assert.deepEqual([...Deno.readDirSync(tmp)].map((entry) => entry.name), [], "its temp dir was removed");
    },
  ));

Deno.test({
  name:
    "a stop (SIGINT) whose run-down ends while a failed start has yet to tear down waits for that tear-down",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPrivateTmpDir("readsync-failed-start-stopped-test-", async (tmp) => {
    // The start fails (nothing listens where its base backup connects) and is held before its tear-down
    // until the stop's run-down has ended: the worst order for a start failing as the stop comes. The stop
    // must still remove its directory (the run-down runs or waits for that tear-down) before the exit.
    const { report, code, stderr } = await inOwnProcess(
      `await startPostgres({
         restoreOf: "postgresql://postgres@127.0.0.1:${freePort()}/postgres",
         log: () => {},
         beforeTearDown: async () => {
           console.log(JSON.stringify({ failed: true }));
           await whenStopped();
           await runCleanups();
           await new Promise(() => {}); // the stop's exit ends this process
         },
       });`,
      "SIGINT",
    );
    assert.deepEqual(report, { failed: true }, "the start failed");
    assert.equal(code, 130, stderr);
    assert.deepEqual([...Deno.readDirSync(tmp)].map((entry) => entry.name), [], "its temp dir was removed");
    const ps = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdout: "piped" }).output();
    const processes = new TextDecoder().decode(ps.stdout).split("\n").filter((line) => line.includes(tmp));
    assert.deepEqual(processes, [], "no process is left behind");
  }));

Deno.test({
  name: "a run-down that begins while a cluster's stop() is under way waits for that stop to have ended",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // The stop begins (not awaited) and the run-down (the end of a run; a Ctrl-C's is the same) begins at
  // once after it: once the run-down has ended, the server must have stopped and its directory be gone.
  const { report, code, stderr } = await inOwnProcess(
    `const pg = await startPostgres({ log: () => {} });
     void pg.stop();
     await runCleanups();
     let left = true;
     try { Deno.statSync(pg.dataDir); } catch { left = false; }
     console.log(JSON.stringify({ left, dataDir: pg.dataDir, port: pg.port }));`,
    "itself",
  );
  assert.equal(code, 0, stderr);
  assert.equal(report.left, false, `its directory ${report.dataDir} was removed before the run-down ended`);
  Deno.listen({ hostname: "127.0.0.1", port: report.port }).close(); // its port is free
});

Deno.test({
  name:
    "a start torn down by a run-down launches no server more: a port retry after it fails at once, launching " +
    "nothing, and leaves no process behind",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPrivateTmpDir("readsync-late-retry-test-", async (tmp) => {
    // The first port picked is taken (held by the script); before the second pick, a run-down (the end of a
    // run; a stop's is the same) runs the start's tear-down to its end. The retry must then launch nothing
    // (it used to launch a server, which exited at once, its directory gone, and a watchdog, for its own
    // tear-down to end again) and the start fail saying so, leaving nothing behind.
    const { report, code, stderr } = await inOwnProcess(
      `const held = Deno.listen({ hostname: "127.0.0.1", port: 0 });
       let picks = 0;
       const error = await startPostgres({
         log: () => {},
         pickPort: async () => {
           if (picks++ === 0) return held.addr.port;
           await runCleanups();
           return freePort();
         },
       }).then(() => null, (e) => e.message);
       held.close();
       const tmp = Deno.env.get("TMPDIR");
       const ps = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdout: "piped" }).output();
       const processes = new TextDecoder().decode(ps.stdout).split("\\n").filter((line) => line.includes(tmp));
       console.log(JSON.stringify({ picks, error, processes }));`,
      "itself",
    );
    assert.equal(code, 0, stderr);
    assert.equal(report.picks, 2, "one port taken, one more picked");
    assert.match(
      report.error,
      /^the PostgreSQL start was torn down \(a stop, or the end of a run\) before it launched a server on port \d+: none launched$/,
      report.error,
    );
    assert.deepEqual(report.processes, [], "no process is left behind (the retry's watchdog neither)");
    assert.deepEqual(
      [...Deno.readDirSync(tmp)].map((entry) => entry.name),
      [`readsync-pg-templates-${Deno.uid() ?? "user"}`],
      "no cluster directory is left",
    );
  }));

/**
 * The options and environment of a start (withStartInItsOwnProcess) whose PATH finds an initdb that runs the
 * real one into the template's build directory and then holds a connection to 127.0.0.1:`port` open until
 * it is killed or the other end closes it: a start held while it builds the template.
 */
async function startWithHeldInitdb(port: number, tmp: string) {
  const real = findPostgresBinaries()!.binDir;
  const bin = `${tmp}/bin`;
  await Deno.mkdir(bin, { mode: 0o755 });
  await Deno.chmod(bin, 0o755);
  for (const name of ["postgres", "pg_isready"]) await Deno.symlink(`${real}/${name}`, `${bin}/${name}`);
  await Deno.writeTextFile(
    `${bin}/initdb`,
    `#!/bin/bash\n"${real}/initdb" "$@" || exit 1\nexec 3<>/dev/tcp/127.0.0.1/${port}\nread -r -u 3 _\n`,
  );
  await Deno.chmod(`${bin}/initdb`, 0o755);
  return {
    options: "{ log: () => {} }",
    env: { PATH: `${bin}:${Deno.env.get("PATH") ?? "/usr/bin:/bin"}`, READSYNC_PG_TEMPLATE: "1" },
  };
}

Deno.test({
  name:
    "a first start interrupted (SIGINT) while it builds the initdb template leaves no half-built template",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  // The start runs in a process of its own whose PATH finds an initdb that runs the real one into the
  // template's build directory and then holds a connection to this listener open until it is killed.
  withStartInItsOwnProcess(
    "readsync-interrupted-template-test-",
    startWithHeldInitdb,
    async (starter, listener, tmp) => {
      await interruptWhileHeld(starter, listener, "the initdb's connection");
      const templates = `readsync-pg-templates-${Deno.uid() ?? "user"}`;
      assert.deepEqual(
        [...Deno.readDirSync(tmp)].map((entry) => entry.name).sort(),
        ["bin", templates],
        "no cluster directory is left",
      );
      // (The binary's version, kept there once asked, is no template.)
      assert.deepEqual(
        [...Deno.readDirSync(`${tmp}/${templates}`)].map((entry) => entry.name).filter((name) =>
          !name.startsWith("version-")
        ),
        [],
        "no half-built template is left",
      );
    },
  ));

Deno.test({
  name:
    "a half-built initdb template a start killed (kill -9) during its build left is removed by the next start " +
    "that builds one; a live start's build is kept",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withStartInItsOwnProcess(
    "readsync-killed-template-test-",
    startWithHeldInitdb,
    async (starter, listener, tmp) => {
      const held = await guarded(listener.accept(), "the initdb's connection");
      starter.kill("SIGKILL"); // no cleanup runs: its build directory stays
      await guarded(starter.status, "the killed start");
      held.close(); // its held initdb (a process group of its own, ended by no one) ends
      const root = `${tmp}/readsync-pg-templates-${Deno.uid() ?? "user"}`;
      const builds = () =>
        [...Deno.readDirSync(root)].map((entry) => entry.name).filter((name) => name.includes(".building-"))
          .sort();
      const [killed, ...others] = builds();
      assert.ok(killed && others.length === 0, `the killed start left its build: ${builds()}`);
      // Beside it: a live start's build under way (this process's pid), and two named as an older start
      // named them (no pid), one begun two hours ago, one just now.
      const key = killed.split(".")[0];
      const live = `${key}.building-${Deno.pid}-underway`;
      const olderLeft = `${key}.building-olderleft`;
      const olderUnderWay = `${key}.building-olderunderway`;
      for (const name of [live, olderLeft, olderUnderWay]) {
        Deno.mkdirSync(`${root}/${name}/data`, { recursive: true });
      }
      const twoHoursAgo = new Date(Date.now() - 7_200_000);
      Deno.utimeSync(`${root}/${olderLeft}`, twoHoursAgo, twoHoursAgo);
      // The next start, in a process of its own with the same temp dir and the real binaries: a template
      // of other binaries, so it builds one.
      const next = new Deno.Command(Deno.execPath(), {
        args: [
          "eval",
          `const { startPostgres } = await import(${
            JSON.stringify(new URL("./postgres.ts", import.meta.url).href)
          });
           const pg = await startPostgres({ log: (line) => console.log(line) });
           await pg.stop();
           Deno.exit(0);`,
        ],
        env: { TMPDIR: tmp, READSYNC_PG_TEMPLATE: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      try {
        const { code, stdout, stderr } = await guarded(next.output(), "the next start", 120_000);
        const said = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
        assert.equal(code, 0, said);
        assert.match(said, /initdb template made/, "the next start built a template");
      } finally {
        try {
          next.kill("SIGKILL");
        } catch { /* ended */ }
      }
      assert.deepEqual(
        builds(),
        [live, olderUnderWay].sort(),
        "the killed start's build and the older one begun two hours ago are removed, the live ones kept",
      );
    },
  ));

Deno.test({
  name: "a restored cluster that cannot start says why and leaves nothing behind (its watchdog neither)",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withSourceCluster(async (source, sql) => {
    // Taken by the base backup; the source itself only reads it at a restart.
    await sql`alter system set shared_preload_libraries = 'readsync_no_such_library'`;
    const { error, left, processes } = await failedStart(() =>
      startPostgres({ restoreOf: source.url, log: () => {} })
    );
    assert.ok(error, "the restore failed");
    assert.deepEqual(left, [], "the restore's temp dir was removed");
    assert.deepEqual(processes, [], "no process is left behind");
    assert.match(
      error.message,
      /^the restored cluster \(a base backup of .*\) exited before it was ready/,
      error.message,
    );
    assert.match(error.message, /readsync_no_such_library/, error.message);
  }));

/**
 * Runs `script` in a process of its own (deno eval, the modules `postgres` and `cleanup` imported), reads
 * the JSON line it prints once it has a cluster running, then ends it by `ending`: a SIGINT (Ctrl-C),
 * or nothing (the script ends itself, as `npm test` does, with runCleanups()).
 */
async function inOwnProcess(script: string, ending: "SIGINT" | "itself") {
  const postgresModule = new URL("./postgres.ts", import.meta.url).href;
  const cleanupModule = new URL("./cleanup.ts", import.meta.url).href;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { freePort, startPostgres } = await import(${JSON.stringify(postgresModule)});
       const { onCleanup, pendingCleanups, runCleanups, whenStopped } = await import(${
        JSON.stringify(cleanupModule)
      });
       ${script}`,
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  try {
    let printed = "";
    while (!printed.includes("\n")) {
      // Four cluster starts come before it: a generous guard for a loaded machine.
      const { value, done } = await guarded(lines.read(), "the script's report", 120_000);
      if (done) throw new Error(`the script ended without a report:\n${printed}\n${await stderr}`);
      printed += value;
    }
    if (ending === "SIGINT") child.kill("SIGINT");
    const status = await guarded(child.status, "the script's end");
    return { report: JSON.parse(printed), code: status.code, stderr: await stderr };
  } finally {
    lines.releaseLock();
    await child.stdout.cancel().catch(() => {});
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
  }
}

for (const ending of ["SIGINT", "itself"] as const) {
  Deno.test({
    name: `start/stop cycles leave no cleanup registered; a cluster still running is stopped by the ` +
      `cleanups (${ending === "SIGINT" ? "Ctrl-C" : "runCleanups at the end of a run"})`,
    sanitizeOps: false,
    sanitizeResources: false,
  }, async () => {
    const checked = await Deno.makeTempFile({ prefix: "readsync-cleanup-check-" });
    try {
      // The check is registered first, so it runs last (newest first): after the running cluster's stop.
      const { report, code, stderr } = await inOwnProcess(
        `let dataDir = "";
         onCleanup(async () => {
           let left = true;
           try { Deno.statSync(dataDir); } catch { left = false; }
           await Deno.writeTextFile(${JSON.stringify(checked)}, JSON.stringify({ left }));
         });
         const before = pendingCleanups();
         const afterEach = [];
         for (let i = 0; i < 3; i++) {
           const pg = await startPostgres({ log: () => {} });
           const whileRunning = pendingCleanups();
           await pg.stop();
           afterEach.push({ whileRunning, stopped: pendingCleanups() });
         }
         const running = await startPostgres({ log: () => {} });
         dataDir = running.dataDir;
         console.log(JSON.stringify({ before, afterEach, running: pendingCleanups(), port: running.port, dataDir }));
         ${ending === "itself" ? "await runCleanups();" : "await new Promise(() => {});"}`,
        ending,
      );
      const { before, afterEach, running, port, dataDir } = report;
      assert.deepEqual(
        afterEach,
        [1, 2, 3].map(() => ({ whileRunning: before + 1, stopped: before })),
        "each running cluster had its stop registered, and each stop removed it",
      );
      assert.equal(running, before + 1, "the cluster still running has its stop registered");
      assert.equal(code, ending === "SIGINT" ? 130 : 0, stderr);
      assert.deepEqual(
        JSON.parse(await Deno.readTextFile(checked)),
        { left: false },
        `the running cluster was stopped and its directory ${dataDir} removed by the cleanups`,
      );
      Deno.listen({ hostname: "127.0.0.1", port }).close(); // its port is free
    } finally {
      await Deno.remove(checked).catch(() => {});
    }
  });
}

Deno.test({
  name:
    "a readiness probe that never answers fails the start for the readiness deadline, not the probe's time",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // PATH finds the real initdb and postgres, and a pg_isready that never answers (killed by the start).
  const real = findPostgresBinaries()!.binDir;
  const bin = await Deno.makeTempDir({ prefix: "readsync-hung-probe-bin-" });
  await Deno.chmod(bin, 0o755);
  for (const name of ["initdb", "postgres"]) await Deno.symlink(`${real}/${name}`, `${bin}/${name}`);
  await Deno.writeTextFile(`${bin}/pg_isready`, "#!/bin/sh\nexec sleep 600\n");
  await Deno.chmod(`${bin}/pg_isready`, 0o755);
  const path = Deno.env.get("PATH");
  Deno.env.set("PATH", `${bin}:${path ?? "/usr/bin:/bin"}`);
  try {
    const { error, left, processes } = await guarded(
      failedStart(() => startPostgres({ readyTimeoutMs: 3_000, log: () => {} })),
      "the start",
    );
    assert.ok(error, "the start failed");
    assert.match(
      error.message,
      /^PostgreSQL was not ready on port \d+ within 3 s \(the last pg_isready did not answer within [\d.]+ s\)/,
      error.message,
    );
    assert.deepEqual(left, [`readsync-pg-templates-${Deno.uid() ?? "user"}`], "no cluster directory is left");
    assert.deepEqual(processes, [], "no process is left behind");
  } finally {
    if (path === undefined) Deno.env.delete("PATH");
    else Deno.env.set("PATH", path);
    await Deno.remove(bin, { recursive: true });
  }
});

Deno.test({
  name:
    "a picked port taken before postgres binds it (another run's stack): the start goes on on another port",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // The port picker returns the port of another cluster, as when another run's stack took it after the pick.
  const other = await startPostgres({ log: () => {} });
  const heldPort = other.port;
  const picked: number[] = [];
  const pickPort = () => {
    const port = picked.length === 0 ? heldPort : freePort();
    picked.push(port);
    return port;
  };
  const lines: string[] = [];
  let pg: LocalPostgres | null = null;
  try {
    pg = await guarded(startPostgres({ pickPort, log: (line) => lines.push(line) }), "the start");
    assert.equal(picked.length, 2, `one port taken, one more picked: ${picked.join(", ")}`);
    assert.equal(pg.port, picked[1]);
    assert.deepEqual(lines.filter((l) => l.includes("was taken")), [
      `database: port ${heldPort} was taken before PostgreSQL could bind it; starting it on another`,
    ]);
    const sql = postgres(pg.url, { max: 1, onnotice: () => {} });
    try {
      const [{ dir }] = await sql<{ dir: string }[]>`select current_setting('data_directory') as dir`;
      assert.equal(dir, `${pg.dataDir}/data`, "the cluster on that port is this start's");
    } finally {
      await sql.end();
    }
  } finally {
    await pg?.stop();
    await other.stop();
  }
});

Deno.test({
  name:
    "a start whose every picked port is taken gives up after 5 attempts, saying so, and leaves nothing behind",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const held = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const heldPort = (held.addr as Deno.NetAddr).port;
  let picks = 0;
  try {
    const { error, left, processes } = await guarded(
      failedStart(() => startPostgres({ pickPort: () => (picks++, heldPort), log: () => {} })),
      "the start",
    );
    assert.ok(error, "the start failed");
    assert.equal(picks, 5);
    assert.match(
      error.message,
      new RegExp(
        `^PostgreSQL could not listen on a free port in 5 attempts: ports ${
          Array(5).fill(heldPort).join(", ")
        } were each taken`,
      ),
      error.message,
    );
    assert.deepEqual(left, [`readsync-pg-templates-${Deno.uid() ?? "user"}`], "no cluster directory is left");
    assert.deepEqual(processes, [], "no process is left behind");
  } finally {
    held.close();
  }
});

/**
 * A directory of PostgreSQL binaries under `tmp` that findPostgresBinaries picks once it leads PATH: the
 * real ones (symlinks), but `postgres` a script that appends a line to `${tmp}/calls` for each
 * `--version` asked of it (then runs `onVersion`, shell text) before it runs the real binary, and `id` a
 * script that appends its arguments there before it runs the real `id`. Readable by the cluster's OS user
 * (the server and initdb run as it when root).
 */
async function binariesThatLogTheirCalls(tmp: string, onVersion = ""): Promise<string> {
  const real = findPostgresBinaries()!.binDir;
  const dir = `${tmp}/bin`;
  await Deno.mkdir(dir, { mode: 0o755 });
  await Deno.chmod(dir, 0o755);
  for (const bin of ["initdb", "pg_isready", "psql", "pg_basebackup"]) {
    await Deno.symlink(`${real}/${bin}`, `${dir}/${bin}`);
  }
  const id = ["/usr/bin/id", "/bin/id"].find((path) => {
    try {
      return Deno.statSync(path).isFile;
    } catch {
      return false;
    }
  })!;
  await Deno.writeTextFile(
    `${dir}/postgres`,
    `#!/bin/sh\nif [ "$1" = "--version" ]; then echo "postgres --version" >> '${tmp}/calls'; ${onVersion}\nfi\n` +
      `exec '${real}/postgres' "$@"\n`,
  );
  await Deno.writeTextFile(`${dir}/id`, `#!/bin/sh\necho "id $*" >> '${tmp}/calls'\nexec '${id}' "$@"\n`);
  for (const bin of ["postgres", "id"]) await Deno.chmod(`${dir}/${bin}`, 0o755);
  return dir;
}

/** What a Deno process that puts `bin` first in PATH and then runs `script` (startPostgres imported) does. */
function startWithBinaries(bin: string, script: string) {
  const module = new URL("./postgres.ts", import.meta.url).href;
  return runDenoChild([
    "eval",
    `Deno.env.set("PATH", ${JSON.stringify(bin)} + ":" + Deno.env.get("PATH"));
     const { startPostgres } = await import(${JSON.stringify(module)});
     ${script}`,
  ], { timeoutMs: 120_000 });
}

Deno.test({
  name:
    "a start asks neither postgres --version (once asked of that binary) nor id (the cluster's OS user listed " +
    "in /etc/passwd): a later start, in a process of its own, runs neither; a binary replaced is asked again",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPrivateTmpDir("readsync-asked-once-test-", async (tmp) => {
    const bin = await binariesThatLogTheirCalls(tmp);
    const calls = () => {
      try {
        return Deno.readTextFileSync(`${tmp}/calls`).trim().split("\n").filter(Boolean);
      } catch {
        return [];
      }
    };
    // Each start is a process of its own, as each cold start of the stack (npm start, the benchmark) is.
    const startAndStop = async () => {
      const { code, stdout, stderr } = await startWithBinaries(
        bin,
        `const pg = await startPostgres({ log: () => {} });
         await pg.stop();
         Deno.exit(0);`,
      );
      assert.equal(code, 0, `${stdout}\n${stderr}`);
    };
    await startAndStop();
    const first = calls();
    // The first start asks the binary its version (and, the first time on a machine, makes the OS user).
    assert.deepEqual(
      first.filter((call) => call === "postgres --version"),
      ["postgres --version"],
      first.join("\n"),
    );
    await startAndStop();
    assert.deepEqual(
      calls().slice(first.length),
      [],
      "the second start asked neither postgres --version nor id",
    );
    // A package upgrade replaces the binary: a new modification time (and inode) is a binary asked anew.
    const later = new Date(Date.now() + 60_000);
    await Deno.utime(`${bin}/postgres`, later, later);
    const before = calls().length;
    await startAndStop();
    assert.deepEqual(
      calls().slice(before),
      ["postgres --version"],
      "the replaced binary was asked its version",
    );
  }));

/** The lines `binariesThatLogTheirCalls` logged under `tmp` so far. */
function loggedCalls(tmp: string): string[] {
  try {
    return Deno.readTextFileSync(`${tmp}/calls`).trim().split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

/** A start and stop of a cluster in a process of its own, with `bin` first in PATH: it must succeed. */
async function startAndStopWith(bin: string): Promise<void> {
  const { code, stdout, stderr } = await startWithBinaries(
    bin,
    `const pg = await startPostgres({ log: () => {} });
     await pg.stop();
     Deno.exit(0);`,
  );
  assert.equal(code, 0, `${stdout}\n${stderr}`);
}

Deno.test({
  name:
    "a binary overwritten in place with cp -p (same inode, size and modification time) is asked its version " +
    "again: its status change time is in the key",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPrivateTmpDir("readsync-cp-p-test-", async (tmp) => {
    const bin = await binariesThatLogTheirCalls(tmp);
    const binary = `${bin}/postgres`;
    await startAndStopWith(bin);
    assert.deepEqual(loggedCalls(tmp).filter((call) => call === "postgres --version"), [
      "postgres --version",
    ]);
    // Another file of the same size (a build that differs in a byte), given the binary's modification time
    // and copied over it in place, keeping that time: cp -p, as a hand-made upgrade may do.
    const text = Deno.readTextFileSync(binary);
    const other = `${tmp}/postgres.other`;
    Deno.writeTextFileSync(other, text.replace(`"$1" = "--version"`, `"--version" = "$1"`));
    Deno.chmodSync(other, 0o755); // cp -p gives the binary its mode too
    const run = async (cmd: string, args: string[]) =>
      assert.ok((await new Deno.Command(cmd, { args }).output()).success, `${cmd} ${args.join(" ")}`);
    await run("touch", ["-r", binary, other]);
    const before = Deno.statSync(binary);
    await run("cp", ["-p", other, binary]);
    const after = Deno.statSync(binary);
    assert.notEqual(Deno.readTextFileSync(binary), text, "the binary was overwritten");
    assert.deepEqual(
      [after.ino, after.size, after.mtime?.getTime()],
      [before.ino, before.size, before.mtime?.getTime()],
      "same inode, size and modification time",
    );
    const asked = loggedCalls(tmp).length;
    await startAndStopWith(bin);
    assert.deepEqual(
      loggedCalls(tmp).slice(asked),
      ["postgres --version"],
      "the overwritten binary was asked",
    );
  }));

Deno.test({
  name:
    "a start that writes a binary's version removes the version files being written that a process which " +
    "died mid-write left, not a live process's",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPrivateTmpDir("readsync-version-sweep-test-", async (tmp) => {
    const root = `${tmp}/readsync-pg-templates-${Deno.uid() ?? "user"}`;
    await Deno.mkdir(root, { mode: 0o711 });
    await Deno.chmod(root, 0o711);
    // The pid of a process that has ended (its file was left between the write and the rename), and this
    // test's own (a live process whose write is under way).
    const ended = new Deno.Command("true").spawn();
    await ended.status;
    const left = `version-0123456789abcdef.${ended.pid}.${crypto.randomUUID()}`;
    const underWay = `version-0123456789abcdef.${Deno.pid}.${crypto.randomUUID()}`;
    for (const name of [left, underWay]) {
      Deno.writeTextFileSync(`${root}/${name}`, "postgres (PostgreSQL) 15\n");
    }
    // A binary never asked before: the start asks it its version and writes it.
    await startAndStopWith(await binariesThatLogTheirCalls(tmp));
    assert.deepEqual(
      loggedCalls(tmp).filter((call) => call === "postgres --version"),
      ["postgres --version"],
    );
    const names = [...Deno.readDirSync(root)].map((entry) => entry.name);
    assert.ok(names.some((name) => /^version-[0-9a-f]+$/.test(name)), `the version was kept: ${names}`);
    assert.deepEqual(
      names.filter((name) => name.startsWith("version-0123456789abcdef.")),
      [underWay],
      "the ended process's file is removed, the live one's kept",
    );
  }));

Deno.test({
  name:
    "a stop (SIGTERM) during the initdb template's look-up ends the start saying it was torn down, not that " +
    "it runs initdb, and leaves nothing behind",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPrivateTmpDir("readsync-lookup-stopped-test-", async (tmp) => {
    // postgres --version says it has begun (with its pid) and never ends: the stop comes during the look-up.
    const began = `${tmp}/began`;
    const bin = await binariesThatLogTheirCalls(
      tmp,
      `echo $$ > '${began}.tmp'; mv '${began}.tmp' '${began}'; exec sleep 300`,
    );
    const { code, stdout, stderr } = await startWithBinaries(
      bin,
      `const began = ${JSON.stringify(began)};
       const exists = () => { try { Deno.statSync(began); return true; } catch { return false; } };
       void (async () => {
         // A hang guard bounds the wait for the look-up to have begun.
         for (let i = 0; i < 3000 && !exists(); i++) await new Promise((r) => setTimeout(r, 20));
         Deno.kill(Deno.pid, "SIGTERM");
       })();
       await startPostgres({ log: (line) => console.log(line) });
       console.log("the cluster started: the stop did not come during the look-up");`,
    );
    assert.equal(code, 143, `stopped by SIGTERM:\n${stdout}\n${stderr}`);
    assert.doesNotMatch(stdout, /running initdb/, "no initdb is said to run once stopped");
    const lookUp = Number(Deno.readTextFileSync(began).trim()); // the look-up had begun
    assert.deepEqual(
      [...Deno.readDirSync(tmp)].map((entry) => entry.name).filter((name) =>
        name.startsWith("readsync-pg-") &&
        !name.startsWith("readsync-pg-templates-")
      ),
      [],
      "no cluster directory is left",
    );
    const ps = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdout: "piped" }).output();
    const processes = new TextDecoder().decode(ps.stdout).split("\n").filter((line) =>
      !line.includes("<defunct>") && (line.includes(tmp) || Number(line.trim().split(" ")[0]) === lookUp)
    );
    assert.deepEqual(processes, [], "no process is left behind (the look-up's neither)");
  }));

Deno.test({
  name:
    "a process killed outright (SIGKILL) whose TMPDIR has a quote in its name: the watchdog still stops its " +
    "cluster and removes its directory",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const tmp = await Deno.makeTempDir({ prefix: "readsync-o'brien-" });
  await Deno.chmod(tmp, 0o711); // the cluster's OS user must reach its directory below it
  const module = new URL("./postgres.ts", import.meta.url).href;
  const starter = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { startPostgres } = await import(${JSON.stringify(module)});
       const pg = await startPostgres({ log: () => {}, template: false });
       const postmaster = Number(Deno.readTextFileSync(pg.dataDir + "/data/postmaster.pid").split("\\n")[0]);
       console.log(JSON.stringify({ dataDir: pg.dataDir, postmaster }));
       await new Promise(() => {});`,
    ],
    env: { TMPDIR: tmp },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(starter.stderr).text();
  let started: { dataDir: string; postmaster: number } | undefined;
  const alive = (pid: number) => {
    try {
      Deno.kill(pid, "SIGCONT");
      return true;
    } catch {
      return false;
    }
  };
  try {
    const lines = starter.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let printed = "";
    while (!printed.includes("\n")) {
      const { value, done } = await guarded(lines.read(), "the start's report", 120_000);
      if (done) throw new Error(`the start ended without a report:\n${printed}\n${await stderr}`);
      printed += value;
    }
    lines.releaseLock();
    started = JSON.parse(printed);
    assert.ok(started!.dataDir.startsWith(`${tmp}/`), started!.dataDir);
    starter.kill("SIGKILL"); // no exit cleanups: the watchdog alone is left to stop the cluster
    await starter.status;
    await guarded(
      (async () => {
        while (exists(started!.dataDir) || alive(started!.postmaster)) {
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      })(),
      "the watchdog's stop and removal",
      60_000,
    );
  } finally {
    try {
      starter.kill("SIGKILL");
    } catch { /* ended */ }
    await starter.stdout.cancel().catch(() => {});
    await stderr.catch(() => {});
    // What a watchdog that never ran left (the old quoting): its cluster too.
    if (started && alive(started.postmaster)) {
      Deno.kill(started.postmaster, "SIGQUIT");
      while (alive(started.postmaster)) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await Deno.remove(tmp, { recursive: true });
  }
});
