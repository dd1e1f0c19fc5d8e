// The stack's children that talk to its database, the Supabase CLI and psql: the CLI's binary is run
// itself (not through its npm package's node launcher), and both are registered with the exit cleanups
// while they run, so that a stop ends them (cleanup.ts).

import assert from "node:assert/strict";
import net from "node:net";
import { lastJsonLine, runDenoChild } from "../../tests/support/denoChild.ts";
import type postgres from "postgres";
import {
  applyBootstrapIfNeeded,
  cliDbUrl,
  connectionUsesTls,
  databaseConnection,
  loopbackClientUid,
  openDatabaseRelay,
  passwordFromFile,
  psql,
  psqlPath,
  pushMigrations,
  supabaseCliBinary,
  supabaseLauncher,
} from "./database.ts";
import type { LocalPostgres } from "./postgres.ts";

const databaseModule = new URL("./database.ts", import.meta.url).href;

/** `promise`, or a failure naming `what` after 60 s (a hang guard, not a timing). */
function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within 60 s`)), 60_000);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * `body` run with a cluster of its own (startPostgres) and one connection to it; both ended after, also when
 * it throws.
 */
async function withCluster(body: (pg: LocalPostgres, sql: postgres.Sql) => Promise<void>): Promise<void> {
  const { startPostgres } = await import("./postgres.ts");
  const connect = (await import("postgres")).default;
  const pg = await startPostgres({ log: () => {} });
  const sql = connect(pg.url, { max: 1, onnotice: () => {} });
  try {
    await body(pg, sql);
  } finally {
    await sql.end();
    await pg.stop();
  }
}

/**
 * `body` run with the environment variables `vars` set (undefined: unset), then put back as they were, also
 * when it throws.
 */
async function withEnv<T>(vars: Record<string, string | undefined>, body: () => T | Promise<T>): Promise<T> {
  const before = Object.fromEntries(Object.keys(vars).map((name) => [name, Deno.env.get(name)]));
  const set = (values: Record<string, string | undefined>) => {
    for (const [name, value] of Object.entries(values)) {
      if (value === undefined) Deno.env.delete(name);
      else Deno.env.set(name, value);
    }
  };
  set(vars);
  try {
    return await body();
  } finally {
    set(before);
  }
}

/**
 * The cluster's pg_hba.conf replaced by its own socket's trust and `tcp` (the lines for 127.0.0.1), the
 * configuration reloaded (with `ssl = on` too when `ssl`); resolves once the server has read it: a connection
 * to `refusedUrl` is refused (a hang guard: 60 s).
 */
async function reconfigure(
  pg: LocalPostgres,
  sql: postgres.Sql,
  tcp: string,
  refusedUrl: string,
  ssl = false,
): Promise<void> {
  const connect = (await import("postgres")).default;
  await Deno.writeTextFile(`${pg.dataDir}/data/pg_hba.conf`, `local all all trust\n${tcp}\n`);
  if (ssl) await sql`alter system set ssl = on`;
  await sql`select pg_reload_conf()`;
  for (let i = 0;; i++) {
    const probe = connect(refusedUrl, { max: 1, onnotice: () => {}, connect_timeout: 10 });
    const refused = await probe`select 1`.then(() => false, () => true);
    await probe.end();
    if (refused) return;
    if (i >= 600) throw new Error(`the server still takes ${refusedUrl} (pg_hba: ${tcp})`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A self-signed certificate for the cluster (its server's own user's: the cluster runs as another when root). */
async function selfSignedCertificate(pg: LocalPostgres): Promise<void> {
  const data = `${pg.dataDir}/data`;
  const made = await new Deno.Command("openssl", {
    args: ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
      .concat(["-keyout", `${data}/server.key`, "-out", `${data}/server.crt`]),
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(made.success, new TextDecoder().decode(made.stderr));
  const { uid, gid } = Deno.statSync(`${data}/PG_VERSION`);
  for (const file of ["server.key", "server.crt"]) {
    Deno.chownSync(`${data}/${file}`, uid, gid);
    Deno.chmodSync(`${data}/${file}`, 0o600);
  }
}

/** The cluster's URL with `password` (empty: none). */
function withPassword(pg: LocalPostgres, password: string): string {
  const url = new URL(pg.url);
  url.password = password;
  return url.href;
}

/**
 * `body` run with a cluster (withCluster) whose TCP connections need `password` (scram-sha-256; its own socket
 * stays trusted), and no PGPASSWORD or password file (PGPASSFILE a path with none).
 */
function withPasswordCluster(
  password: string,
  body: (pg: LocalPostgres, sql: postgres.Sql) => Promise<void>,
): Promise<void> {
  return withCluster((pg, sql) =>
    withEnv({ PGPASSWORD: undefined, PGPASSFILE: `${pg.dataDir}/no-password-file` }, async () => {
      await sql.unsafe(`alter role postgres password '${password}'`);
      await reconfigure(pg, sql, "host all all 127.0.0.1/32 scram-sha-256", withPassword(pg, ""));
      await body(pg, sql);
    })
  );
}

/** What a `supabase db push` came to, by its output: "applied", "found applied", or why neither. */
function pushOutcome(push: PromiseSettledResult<string>): string {
  if (push.status === "rejected") return `failed: ${push.reason}`;
  if (/Applying migration/.test(push.value)) return "applied";
  if (/up to date/i.test(push.value)) return "found applied";
  return `neither: ${push.value}`;
}

/**
 * A stack started in a process of its own against the database at 127.0.0.1:`port` (SUPABASE_DB_URL: no
 * cluster of its own, psql its first child), which prints `startedLine` if its start ends.
 */
function stackAgainst(port: number, startedLine: string) {
  const stackModule = new URL("./stack.ts", import.meta.url).href;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { startLocalStack } = await import(${JSON.stringify(stackModule)});
       await startLocalStack({ apiPort: 0, log: () => {} });
       console.log(${JSON.stringify(startedLine)});`,
    ],
    env: { SUPABASE_DB_URL: `postgresql://postgres:postgres@127.0.0.1:${port}/postgres` },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  return { child, output: child.output() };
}

Deno.test({
  name: "supabaseCli runs the CLI's binary itself (SUPABASE_CLI_BINARY_OVERRIDE here), not through the npm " +
    "package's node launcher: the binary's parent is the process that ran it",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const dir = await Deno.makeTempDir({ prefix: "readsync-cli-binary-" });
  try {
    // A stand-in for the binary that prints its parent's pid.
    const binary = `${dir}/supabase`;
    await Deno.writeTextFile(binary, `#!/bin/sh\necho "parent $PPID"\n`);
    await Deno.chmod(binary, 0o755);
    // In a process of its own: the override is read from the environment.
    const report = lastJsonLine(
      await runDenoChild([
        "eval",
        `const { supabaseCli } = await import(${JSON.stringify(databaseModule)});
         Deno.env.set("SUPABASE_CLI_BINARY_OVERRIDE", ${JSON.stringify(binary)});
         const ran = await supabaseCli(["--version"]);
         console.log(JSON.stringify({ pid: Deno.pid, ran }));
         Deno.exit(0);`,
      ], { timeoutMs: 60_000 }),
    ) as { pid: number; ran: unknown };
    assert.deepEqual(report.ran, { ok: true, output: `parent ${report.pid}` });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("supabaseCliBinary without SUPABASE_CLI_BINARY_OVERRIDE: this platform's package's binary", () => {
  const override = Deno.env.get("SUPABASE_CLI_BINARY_OVERRIDE");
  Deno.env.delete("SUPABASE_CLI_BINARY_OVERRIDE");
  try {
    // npm ci installs it, where the launcher (node_modules/supabase/dist/supabase.js) finds it.
    const installed = supabaseCliBinary();
    assert.match(installed ?? "", /\/node_modules\/@supabase\/cli-[a-z0-9-]+\/bin\/supabase$/);
    assert.ok(Deno.statSync(installed!).isFile, installed!);
  } finally {
    if (override !== undefined) Deno.env.set("SUPABASE_CLI_BINARY_OVERRIDE", override);
  }
});

Deno.test("supabaseCliBinary in a project inside a monorepo: the packages hoisted to a parent's node_modules", () => {
  const override = Deno.env.get("SUPABASE_CLI_BINARY_OVERRIDE");
  Deno.env.delete("SUPABASE_CLI_BINARY_OVERRIDE");
  // Its real path: node resolves from the launcher's, and so does supabaseCliBinary.
  const dir = Deno.realPathSync(Deno.makeTempDirSync({ prefix: "readsync-cli-monorepo-" }));
  try {
    // npm workspaces: the project (packages/app) has no node_modules of its own that holds the CLI; the
    // launcher (supabase) and this platform's binary package are in the monorepo's.
    const platform = supabaseCliBinary()!.match(/@supabase\/(cli-[a-z0-9-]+)\/bin\//)![1];
    const project = `${dir}/packages/app`;
    const pkg = (path: string) => {
      Deno.mkdirSync(path, { recursive: true });
      Deno.writeTextFileSync(`${path}/package.json`, "{}\n");
    };
    pkg(project);
    Deno.mkdirSync(`${project}/node_modules/.bin`, { recursive: true }); // the project's own, without them
    pkg(`${dir}/node_modules/supabase`);
    pkg(`${dir}/node_modules/@supabase/${platform}`);
    assert.equal(supabaseCliBinary(project), `${dir}/node_modules/@supabase/${platform}/bin/supabase`);
    assert.equal(supabaseLauncher(project), `${dir}/node_modules/.bin/supabase`);
    // A binary package nested in the launcher's own node_modules comes first, as node resolves it.
    pkg(`${dir}/node_modules/supabase/node_modules/@supabase/${platform}`);
    assert.equal(
      supabaseCliBinary(project),
      `${dir}/node_modules/supabase/node_modules/@supabase/${platform}/bin/supabase`,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
    if (override !== undefined) Deno.env.set("SUPABASE_CLI_BINARY_OVERRIDE", override);
  }
});

Deno.test({
  name:
    "two first starts against one fresh plain PostgreSQL at once, both having found it without the platform " +
    "bootstrap: one applies it, the other (serialized in the database) finds it applied; neither fails",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    // Each start, once it has found the database without the bootstrap, waits until the other has too:
    // both then run it, as two starts do that look at once.
    let found = 0;
    let bothFound!: () => void;
    const both = new Promise<void>((resolve) => bothFound = resolve);
    const onFoundWithout = () => {
      if (++found === 2) bothFound();
      return both;
    };
    const starts = await within(
      Promise.allSettled([
        applyBootstrapIfNeeded(pg.url, { onFoundWithout }),
        applyBootstrapIfNeeded(pg.url, { onFoundWithout }),
      ]),
      "the two bootstraps",
    );
    const outcomes = starts.map((start) =>
      start.status === "fulfilled" ? `applied: ${start.value}` : `failed: ${start.reason}`
    );
    assert.deepEqual(outcomes.toSorted(), ["applied: false", "applied: true"], outcomes.join("\n"));
    const [whole] = await sql`select to_regprocedure('auth.uid()') is not null as uid,
      to_regprocedure('realtime.send(jsonb, text, text, boolean)') is not null as send,
      exists (select from pg_publication where pubname = 'readsync_realtime_messages') as publication`;
    assert.deepEqual(whole, { uid: true, send: true, publication: true }, "the bootstrap is whole");
  }));

Deno.test({
  name:
    "two first starts' supabase db push against one fresh database at once, serialized in the database: " +
    "both succeed, one applies the migrations and the other finds them applied",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg) => {
    await applyBootstrapIfNeeded(pg.url);
    const pushes = await within(
      Promise.allSettled([pushMigrations(pg.url), pushMigrations(pg.url)]),
      "the two pushes",
    );
    const outcomes = pushes.map(pushOutcome);
    assert.deepEqual(outcomes.toSorted(), ["applied", "found applied"], outcomes.join("\n"));
  }));

/** `text` as one word of sh, whatever it holds (a quote in a TMPDIR's name too). */
const shellWord = (text: string) => `'${text.replaceAll("'", `'\\''`)}'`;

/**
 * `body` run with the CLI's binary behind a stand-in (SUPABASE_CLI_BINARY_OVERRIDE) that runs it only once
 * `release` is called: a push is held with its lock taken. `restore` puts the override back (pushes begun
 * after it run the CLI unheld); both are done after `body` too, also when it throws, and the stand-in's
 * directory (`dir`) is removed then: a stand-in still waiting ends once it is gone, instead of waiting on
 * for a release it missed (written and removed between two of its looks) after its test had failed.
 */
async function withHeldCli(
  body: (cli: { release: () => Promise<void>; restore: () => void; dir: string }) => Promise<void>,
): Promise<void> {
  const real = supabaseCliBinary()!;
  const dir = await Deno.makeTempDir({ prefix: "readsync-held-cli-" });
  const gate = `${dir}/released`;
  const binary = `${dir}/supabase`;
  const override = Deno.env.get("SUPABASE_CLI_BINARY_OVERRIDE");
  const cli = {
    dir,
    release: async () => await Deno.writeTextFile(gate, ""),
    restore: () => {
      if (override === undefined) Deno.env.delete("SUPABASE_CLI_BINARY_OVERRIDE");
      else Deno.env.set("SUPABASE_CLI_BINARY_OVERRIDE", override);
    },
  };
  try {
    await Deno.writeTextFile(
      binary,
      `#!/bin/sh\nwhile [ ! -e ${shellWord(gate)} ]; do [ -d ${
        shellWord(dir)
      } ] || exit 1; sleep 0.05; done\n` +
        `exec ${shellWord(real)} "$@"\n`,
    );
    await Deno.chmod(binary, 0o755);
    Deno.env.set("SUPABASE_CLI_BINARY_OVERRIDE", binary);
    await body(cli);
  } finally {
    cli.restore();
    await cli.release().catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** The processes whose command line names `dir` (pids). */
async function processesIn(dir: string): Promise<number[]> {
  const ps = await new Deno.Command("ps", { args: ["-eo", "pid=,args="], stdout: "piped" }).output();
  return new TextDecoder().decode(ps.stdout).split("\n").filter((line) => line.includes(dir))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

/** Resolves once `done` holds (looked at every 100 ms; a hang guard: 60 s, naming `what`). */
async function until(done: () => Promise<boolean>, what: string): Promise<void> {
  const guard = Date.now() + 60_000;
  while (!(await done())) {
    if (Date.now() > guard) throw new Error(`${what}: not within 60 s`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

Deno.test({
  name:
    "withHeldCli (this file's helper) whose body fails while a push is held: its stand-in ends with it, " +
    "instead of waiting on for a release it missed",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    let dir = "";
    let push: Promise<string> | undefined;
    try {
      await assert.rejects(
        withHeldCli(async (cli) => {
          dir = cli.dir;
          push = pushMigrations(pg.url);
          push.catch(() => {});
          await within(pushLockHolder(sql), "the push's lock");
          await until(async () => (await processesIn(dir)).length > 0, "the held stand-in");
          throw new Error("the test failed here");
        }),
        /the test failed here/,
      );
      await until(async () => (await processesIn(dir)).length === 0, "the held stand-in's end");
      await assert.rejects(within(push!, "the push"), /supabase db push failed/);
    } finally {
      // A stand-in left waiting (the old helper's): ended, so that its push and the cluster can end.
      for (const pid of dir ? await processesIn(dir) : []) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
      await push?.catch(() => {});
    }
  }));

/** The backend holding the push's advisory lock, once one does (a hang guard: 60 s). */
async function pushLockHolder(sql: postgres.Sql): Promise<number> {
  for (let i = 0; i < 600; i++) {
    const [holder] = await sql`select pid from pg_locks where locktype = 'advisory' and granted
      and objsubid = 1 and ((objid::bigint) | (classid::bigint << 32))
        = hashtextextended('readsync: supabase db push', 0)`;
    if (holder) return holder.pid;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error("no backend took the push's lock within 60 s");
}

Deno.test({
  name:
    "supabase db push whose lock's connection goes while the CLI runs (terminated, as a pooler or a server " +
    "may end it): the push is the CLI's, answered once it has ended and applied, not failed at once",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster((pg, sql) =>
    withHeldCli(async (cli) => {
      await applyBootstrapIfNeeded(pg.url);
      const push = pushMigrations(pg.url);
      push.catch(() => {});
      const holder = await within(pushLockHolder(sql), "the push's lock");
      await sql`select pg_terminate_backend(${holder})`;
      await cli.release();
      const output = await within(push, "the push");
      assert.match(output, /Applying migration/);
      const migrations = [...Deno.readDirSync(new URL("../../supabase/migrations", import.meta.url))]
        .filter((entry) => entry.name.endsWith(".sql")).length;
      const [{ applied }] = await sql`select count(*)::int as applied
        from supabase_migrations.schema_migrations`;
      assert.equal(applied, migrations, "every migration applied");
    })
  ));

Deno.test({
  name:
    "supabase db push's lock against a server that ends idle transactions and defaults to repeatable read: " +
    "its transaction is kept for the whole push and holds no snapshot (a CREATE INDEX CONCURRENTLY would " +
    "wait for it); two pushes at once: one applied, one found them applied",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await applyBootstrapIfNeeded(pg.url);
    // For every later session: an idle transaction is ended after 1 s (the CLI's own never idle that long),
    // and a transaction's default isolation is repeatable read.
    await sql`alter role postgres set idle_in_transaction_session_timeout = '1s'`;
    await sql`alter role postgres set default_transaction_isolation = 'repeatable read'`;
    await withHeldCli(async (cli) => {
      const first = pushMigrations(pg.url);
      first.catch(() => {});
      const holder = await within(pushLockHolder(sql), "the first push's lock");
      const [{ xmin }] =
        await sql`select backend_xmin::text as xmin from pg_stat_activity where pid = ${holder}`;
      assert.equal(xmin, null, "the lock's transaction holds no snapshot");
      // The second push, its CLI not held, waits for the first's lock; the first's CLI is held until the
      // second waits and the lock's transaction has been idle past the server's 1 s (or was ended by it).
      cli.restore();
      const second = pushMigrations(pg.url);
      second.catch(() => {});
      for (let i = 0;; i++) {
        const [waiting] = await sql`select from pg_locks where locktype = 'advisory' and not granted`;
        const [held] = await sql`select clock_timestamp() - state_change > interval '1500 ms' as past
          from pg_stat_activity where pid = ${holder}`;
        if (!held || (waiting && held.past)) break;
        if (i >= 600) throw new Error("the second push did not wait for the lock within 60 s");
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await cli.release();
      const pushes = await within(Promise.allSettled([first, second]), "the two pushes");
      const outcomes = pushes.map(pushOutcome);
      assert.deepEqual(outcomes, ["applied", "found applied"], outcomes.join("\n"));
    });
  }));

Deno.test({
  name: "supabase db push against a server on this machine that takes TLS connections only (as a Supabase " +
    "project enforcing SSL does), its URL without sslmode: the lock's connection and the CLI (told " +
    "sslmode=require, not disable) use TLS, and the push runs",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await applyBootstrapIfNeeded(pg.url);
    assert.equal(await connectionUsesTls(pg.url), false, "the cluster has no TLS yet");
    await selfSignedCertificate(pg);
    await reconfigure(pg, sql, "hostssl all all 127.0.0.1/32 trust", `${pg.url}?sslmode=disable`, true);
    assert.equal(await connectionUsesTls(pg.url), true, "a connection as psql makes it uses TLS");
    // The real CLI, as npm start runs it (no stand-in).
    assert.match(await within(pushMigrations(pg.url), "the push"), /Applying migration/);
  }));

Deno.test({
  name:
    "supabase db push against a server that offers TLS but whose pg_hba.conf takes connections without it " +
    "only (hostnossl), its URL without sslmode: the lock's connection falls back to one without TLS, as " +
    "psql's prefer does, the CLI is told sslmode=disable, and the push runs",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await applyBootstrapIfNeeded(pg.url);
    await selfSignedCertificate(pg);
    await reconfigure(pg, sql, "hostnossl all all 127.0.0.1/32 trust", `${pg.url}?sslmode=require`, true);
    assert.equal(
      await connectionUsesTls(pg.url),
      false,
      "the connection psql makes (its TLS refused) has none",
    );
    assert.match(await within(pushMigrations(pg.url), "the push"), /Applying migration/);
  }));

Deno.test({
  name:
    "a SUPABASE_DB_URL whose sslmode lets libpq choose (prefer, allow) against a server without TLS: the " +
    "lock's connection goes without it and the CLI is told sslmode=disable (it has no fallback of its own), " +
    "and the push runs; so it does to a socket directory given as ?host= or %2F-encoded as the URL's host " +
    "(the lock's connection and the CLI there too)",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg) => {
    await applyBootstrapIfNeeded(pg.url);
    const pushes: Record<string, string> = {};
    for (
      const url of [
        `${pg.url}?sslmode=prefer`,
        `${pg.url}?sslmode=allow`,
        `postgresql:///postgres?host=${encodeURIComponent(pg.dataDir)}&port=${pg.port}&user=postgres`,
        `postgresql://postgres@${encodeURIComponent(pg.dataDir)}:${pg.port}/postgres`,
      ]
    ) {
      pushes[url] = pushOutcome((await Promise.allSettled([within(pushMigrations(url), url)]))[0]);
    }
    assert.deepEqual(
      Object.values(pushes),
      ["applied", "found applied", "found applied", "found applied"],
      JSON.stringify(pushes),
    );
  }));

Deno.test("cliDbUrl: a URL's sslmode=prefer or allow becomes what the lock's connection came to (require with TLS, disable without) on any host; PGSSLMODE is the sslmode where the URL has none", async () => {
  const remote = "postgresql://postgres@db.example:5432/postgres";
  const sslmode = (url: string) => new URL(url).searchParams.get("sslmode");
  await withEnv({ PGSSLMODE: undefined }, () => {
    assert.equal(sslmode(cliDbUrl(`${remote}?sslmode=prefer`, false)), "disable");
    assert.equal(sslmode(cliDbUrl(`${remote}?sslmode=prefer`, true)), "require");
    assert.equal(sslmode(cliDbUrl(`${remote}?sslmode=allow`, false)), "disable");
    assert.equal(sslmode(cliDbUrl(`${remote}?sslmode=verify-full`, true)), "verify-full");
    assert.equal(
      cliDbUrl("postgresql://postgres:p%40ss@%2Ftmp%2Fsockets:6543/postgres?application_name=x", false),
      "postgresql:///postgres?application_name=x&sslmode=disable&host=%2Ftmp%2Fsockets&port=6543&user=postgres" +
        "&password=p%40ss",
      "a %2F-encoded socket directory as ?host=",
    );
    assert.equal(sslmode(cliDbUrl(remote, false)), "disable");
  });
  await withEnv({ PGSSLMODE: "verify-full" }, () => {
    assert.equal(sslmode(cliDbUrl("postgresql://postgres@127.0.0.1:5432/postgres", true)), "verify-full");
    assert.equal(sslmode(cliDbUrl(`${remote}?sslmode=prefer`, true)), "require", "the URL's comes first");
  });
  await withEnv({ PGSSLMODE: "disable" }, () => {
    assert.equal(sslmode(cliDbUrl("postgresql://postgres@127.0.0.1:5432/postgres", false)), "disable");
  });
});

Deno.test({
  name: "PGSSLMODE, which psql reads, is the lock's connection's sslmode where the URL has none: disable " +
    "goes without TLS to a server that offers it, require refuses a server whose pg_hba.conf takes " +
    "connections without TLS only (instead of falling back)",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await selfSignedCertificate(pg);
    await reconfigure(pg, sql, "hostssl all all 127.0.0.1/32 trust", `${pg.url}?sslmode=disable`, true);
    await withEnv({ PGSSLMODE: undefined }, async () => {
      assert.equal(await connectionUsesTls(pg.url), true, "without PGSSLMODE: prefer, TLS offered");
    });
    await withEnv({ PGSSLMODE: "disable" }, async () => {
      await assert.rejects(connectionUsesTls(pg.url), /no pg_hba\.conf entry/, "disable: no TLS asked for");
    });
    await reconfigure(pg, sql, "hostnossl all all 127.0.0.1/32 trust", `${pg.url}?sslmode=require`, true);
    await withEnv({ PGSSLMODE: "require" }, async () => {
      await assert.rejects(connectionUsesTls(pg.url), /no pg_hba\.conf entry/, "require: no fallback");
    });
    await withEnv({ PGSSLMODE: undefined }, async () => {
      assert.equal(await connectionUsesTls(pg.url), false, "without PGSSLMODE: prefer falls back");
    });
  }));

Deno.test({
  name: "sslmode=require where the server offers no TLS: the start says so; where nothing answers at the " +
    "URL's port: the connection's own error (refused), not that the server takes no TLS",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg) => {
    const { freePort } = await import("./postgres.ts");
    await withEnv({ PGSSLMODE: undefined }, async () => {
      await assert.rejects(
        within(connectionUsesTls(`${pg.url}?sslmode=require`), "the connection"),
        /does not take TLS connections, and its sslmode \(require\) asks for one/,
      );
      const nobody = new URL(pg.url);
      nobody.port = String(freePort());
      await assert.rejects(
        within(connectionUsesTls(`${nobody}?sslmode=require`), "the connection"),
        (error: Error) => {
          assert.match(error.message, /ECONNREFUSED/);
          return true;
        },
      );
    });
  }));

Deno.test({
  name:
    "a SUPABASE_DB_URL whose host is an IPv6 address ([::1]): the lock's connection goes there, as psql " +
    "and the CLI do, and the push runs",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg) => {
    await applyBootstrapIfNeeded(pg.url);
    // The cluster listens on 127.0.0.1 only: a relay on ::1 passes each connection on to it.
    const relay = Deno.listen({ hostname: "::1", port: 0 });
    const relayed: Promise<unknown>[] = [];
    const accepting = (async () => {
      for await (const client of relay) {
        const server = await Deno.connect({ hostname: "127.0.0.1", port: pg.port });
        relayed.push(client.readable.pipeTo(server.writable).catch(() => {}));
        relayed.push(server.readable.pipeTo(client.writable).catch(() => {}));
      }
    })();
    try {
      const url = new URL(pg.url);
      url.hostname = "[::1]";
      url.port = String((relay.addr as Deno.NetAddr).port);
      // A list of hosts (libpq's ?host=a,b), the first refusing: the next one is tried, as libpq does.
      const hosts = `postgresql:///postgres?host=${encodeURIComponent("::1,127.0.0.1")}&port=${pg.port}` +
        "&user=postgres";
      await withEnv({ PGSSLMODE: undefined }, async () => {
        assert.equal(await within(connectionUsesTls(url.href), "the connection"), false);
        assert.equal(await within(connectionUsesTls(hosts), "the connection to two hosts"), false);
        assert.equal(
          pushOutcome((await Promise.allSettled([within(pushMigrations(url.href), "the push")]))[0]),
          "applied",
        );
      });
    } finally {
      relay.close();
      await accepting.catch(() => {});
      await Promise.all(relayed);
    }
  }));

Deno.test({
  name:
    "a SUPABASE_DB_URL without the password its server asks for: the start says to put it in the URL, set " +
    "PGPASSWORD or give it a line in the password file (psql cannot ask for it), instead of a bare psql error",
  sanitizeOps: false,
  sanitizeResources: false,
}, () => {
  const password = "readsync-test-password";
  return withPasswordCluster(password, async (pg) => {
    await assert.rejects(applyBootstrapIfNeeded(withPassword(pg, "")), (error: Error) => {
      assert.match(error.message, /asks for a password and its URL \(SUPABASE_DB_URL\) has none/);
      assert.match(error.message, /put the password in the URL .*, set PGPASSWORD, or give it a line in /s);
      assert.match(error.message, /no password supplied/, "what psql said");
      return true;
    });
    // Either way it then runs.
    await withEnv({ PGPASSWORD: password }, async () => {
      assert.equal(await applyBootstrapIfNeeded(withPassword(pg, "")), true, "with PGPASSWORD");
    });
    assert.equal(
      await applyBootstrapIfNeeded(withPassword(pg, password)),
      false,
      "with the password in the URL",
    );
  });
});

Deno.test({
  name:
    "a password the server refuses (in the URL, in PGPASSWORD, in the password file): the start says which " +
    "one it was and where it came from, instead of a bare psql error",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withPasswordCluster("readsync-test-password", async (pg) => {
    const refused = (url: string, which: RegExp) =>
      assert.rejects(applyBootstrapIfNeeded(url), (error: Error) => {
        assert.match(error.message, /^the database at 127\.0\.0\.1:\d+ \(user postgres\) refused /);
        assert.match(error.message, which);
        assert.match(error.message, /password authentication failed for user "postgres"/, "what psql said");
        return true;
      });
    await refused(withPassword(pg, "wrong"), /refused the password in its URL \(SUPABASE_DB_URL; /);
    await withEnv({ PGPASSWORD: "wrong" }, async () => {
      await refused(withPassword(pg, ""), /refused the password in PGPASSWORD \(its URL has none\)/);
    });
    const file = `${pg.dataDir}/pgpass`;
    await Deno.writeTextFile(file, `127.0.0.1:${pg.port}:postgres:postgres:wrong\n`, { mode: 0o600 });
    await withEnv({ PGPASSFILE: file }, async () => {
      await refused(
        withPassword(pg, ""),
        new RegExp(`refused the password its line in ${file} gives \\(its URL has none, and PGPASSWORD`),
      );
    });
  }));

Deno.test({
  name:
    "a password kept only in the password file (PGPASSFILE, else ~/.pgpass), as psql and the CLI read it: " +
    "the lock's connection reads it too, and the start bootstraps and pushes",
  sanitizeOps: false,
  sanitizeResources: false,
}, () => {
  const password = "readsync:test\\password";
  return withPasswordCluster(password, async (pg) => {
    const file = `${pg.dataDir}/pgpass`;
    // Comments, a line for another port and one for another user first; `:` and `\` escaped in the password.
    await Deno.writeTextFile(
      file,
      `# readsync\n127.0.0.1:1:*:postgres:other\n*:*:*:someone:other\n` +
        `127.0.0.1:${pg.port}:*:postgres:${password.replace(/[:\\]/g, "\\$&")}\n`,
      { mode: 0o600 },
    );
    await withEnv({ PGPASSFILE: file }, async () => {
      const url = withPassword(pg, "");
      assert.equal(await applyBootstrapIfNeeded(url), true, "psql found it");
      assert.match(await within(pushMigrations(url), "the push"), /Applying migration/);
    });
  });
});

Deno.test({
  name:
    "PGPASSFILE set but empty: the password file is ~/.pgpass, as libpq and the CLI's pgx take it, and the " +
    "lock's connection reads it there too",
  sanitizeOps: false,
  sanitizeResources: false,
}, () => {
  const password = "readsync-test-password";
  return withPasswordCluster(password, async (pg) => {
    const home = `${pg.dataDir}/home`;
    await Deno.mkdir(home);
    await Deno.writeTextFile(`${home}/.pgpass`, `127.0.0.1:${pg.port}:*:postgres:${password}\n`, {
      mode: 0o600,
    });
    await withEnv({ PGPASSFILE: "", HOME: home }, async () => {
      const url = withPassword(pg, "");
      assert.equal(await applyBootstrapIfNeeded(url), true, "psql found it");
      assert.match(await within(pushMigrations(url), "the push"), /Applying migration/);
    });
  });
});

/**
 * What passwordFromFile finds for each of `urls` with the password file `lines` (PGASSFILE, mode 0600) and
 * the environment `vars` (set for the look-ups; undefined: unset), by URL: the password, or null.
 */
async function passwordsFound(
  lines: string[],
  vars: Record<string, string | undefined>,
  urls: string[],
): Promise<Record<string, string | null>> {
  const dir = await Deno.makeTempDir({ prefix: "readsync-pgpass-" });
  try {
    const file = `${dir}/pgpass`;
    await Deno.writeTextFile(file, lines.join("\n") + "\n", { mode: 0o600 });
    const unset = { PGHOST: undefined, PGPORT: undefined, PGDATABASE: undefined, PGUSER: undefined };
    return await withEnv(
      { ...unset, ...vars, PGPASSFILE: file },
      () => Object.fromEntries(urls.map((url) => [url, passwordFromFile(new URL(url))?.password ?? null])),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("the password file's host, as libpq matches it: ?host= over the URL's, PGHOST where the URL has none, a %2F-encoded socket directory decoded, the default socket directory or none as localhost", async () => {
  const lines = [
    "db.example:5432:postgres:postgres:from-pghost",
    "/tmp/readsync-socket:5432:postgres:postgres:from-socket-dir",
    "query.example:6543:postgres:postgres:from-query-host",
    "localhost:5432:postgres:postgres:from-localhost",
  ];
  assert.deepEqual(
    await passwordsFound(lines, { PGHOST: "db.example" }, [
      "postgresql:///postgres?user=postgres",
      "postgresql://postgres@%2Ftmp%2Freadsync-socket/postgres",
      "postgresql://postgres@elsewhere.example/postgres?host=query.example&port=6543",
      "postgresql:///postgres?host=/tmp/readsync-socket&user=postgres",
    ]),
    {
      "postgresql:///postgres?user=postgres": "from-pghost",
      "postgresql://postgres@%2Ftmp%2Freadsync-socket/postgres": "from-socket-dir",
      "postgresql://postgres@elsewhere.example/postgres?host=query.example&port=6543": "from-query-host",
      "postgresql:///postgres?host=/tmp/readsync-socket&user=postgres": "from-socket-dir",
    },
  );
  assert.deepEqual(
    await passwordsFound(lines, {}, [
      "postgresql:///postgres?user=postgres",
      "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql/postgres",
    ]),
    {
      "postgresql:///postgres?user=postgres": "from-localhost",
      "postgresql://postgres@%2Fvar%2Frun%2Fpostgresql/postgres": "from-localhost",
    },
  );
});

Deno.test("the password file's line with an empty password gives none (libpq sends none), not an empty one; later lines are not looked at", async () => {
  assert.deepEqual(
    await passwordsFound(["127.0.0.1:5432:*:postgres:", "*:*:*:*:later"], {}, [
      "postgresql://postgres@127.0.0.1/postgres",
    ]),
    { "postgresql://postgres@127.0.0.1/postgres": null },
  );
});

Deno.test("the password file's user where the URL and PGUSER give none: the effective OS user's name, as libpq takes it, not $USER", async () => {
  const { userInfo } = await import("node:os");
  const me = userInfo().username;
  const url = "postgresql://127.0.0.1/postgres";
  assert.deepEqual(
    await passwordsFound(
      [
        `127.0.0.1:5432:postgres:readsync-not-${me}:from-user-variable`,
        `127.0.0.1:5432:postgres:${me}:from-os`,
      ],
      { USER: `readsync-not-${me}` },
      [url],
    ),
    { [url]: "from-os" },
  );
});

Deno.test({
  name:
    "a stop (SIGTERM, to the stack's process alone) during the stack's platform bootstrap ends its psql: the " +
    "connection psql holds is closed once the stopped process has exited",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  // A database that accepts and never answers holds the bootstrap's first psql (SUPABASE_DB_URL: the stack
  // starts no cluster of its own, and psql is the first child it runs).
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  const { child, output } = stackAgainst(port, "the stack started: its psql was answered");
  let connection: Deno.Conn | undefined;
  try {
    // psql has connected: the stack is in its bootstrap.
    connection = await within(listener.accept(), "psql's connection");
    child.kill("SIGTERM");
    const { code, stdout, stderr } = await within(output, "the stopped process's exit");
    const decoder = new TextDecoder();
    assert.equal(code, 143, `stopped by SIGTERM:\n${decoder.decode(stdout)}\n${decoder.decode(stderr)}`);
    // psql ended with it: its end of the connection is closed (a psql left running would hold it open).
    const buffer = new Uint8Array(1024);
    await within(
      (async () => {
        while (await connection!.read(buffer).catch(() => null) !== null) { /* what psql sent */ }
      })(),
      "psql's connection closed",
    );
  } finally {
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
    await output.catch(() => {});
    connection?.close();
    listener.close();
  }
});

Deno.test({
  name:
    "a stop (SIGTERM) during the platform bootstrap of a plain PostgreSQL (SUPABASE_DB_URL) leaves none of it: " +
    "no half-applied bootstrap that a later start, finding auth.uid() and realtime.messages, takes for whole",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    // A proxy in front of it that forwards everything until a client sends the bootstrap's last statement
    // (the publication's, after auth.uid() and realtime.messages), which it holds: the stop comes there.
    const marker = "create publication readsync_realtime_messages";
    let held!: () => void;
    const heldThere = new Promise<void>((resolve) => held = resolve);
    const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const { port } = listener.addr as Deno.NetAddr;
    const connections: Deno.Conn[] = [];
    const clientsGone: Promise<void>[] = [];
    void (async () => {
      for await (const client of listener) {
        const server = await Deno.connect({ hostname: "127.0.0.1", port: pg.port });
        connections.push(client, server);
        void server.readable.pipeTo(client.writable).catch(() => {});
        clientsGone.push((async () => {
          let sent = "";
          let holding = false;
          const buffer = new Uint8Array(65536);
          for (;;) {
            const n = await client.read(buffer).catch(() => null);
            if (n === null) break;
            if (holding) continue;
            sent = (sent + new TextDecoder("latin1").decode(buffer.subarray(0, n))).slice(-4096);
            if (sent.includes(marker)) {
              holding = true;
              held();
              continue;
            }
            await server.write(buffer.slice(0, n)).catch(() => {});
          }
          // The client is gone: so is its session (a transaction it had open is rolled back).
          try {
            server.close();
          } catch { /* closed */ }
        })());
      }
    })();
    const { child, output } = stackAgainst(port, "the stack started: its bootstrap was not held");
    try {
      await within(Promise.race([heldThere, output.then(() => {})]), "the bootstrap's last statement");
      child.kill("SIGTERM");
      const { code, stdout, stderr } = await within(output, "the stopped process's exit");
      const decoder = new TextDecoder();
      assert.equal(code, 143, `stopped by SIGTERM:\n${decoder.decode(stdout)}\n${decoder.decode(stderr)}`);
      // Once the stopped psql's session has ended (its connection closed by the proxy as psql's was).
      await within(Promise.all(clientsGone), "psql's connections closed");
      for (let i = 0; i < 600; i++) { // a hang guard: 60 s
        const [{ sessions }] = await sql`select count(*)::int as sessions from pg_stat_activity
          where backend_type = 'client backend' and pid <> pg_backend_pid()`;
        if (sessions === 0) break;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const [left] = await sql`select to_regprocedure('auth.uid()') is not null as uid,
        to_regclass('realtime.messages') is not null as messages,
        exists (select from pg_publication where pubname = 'readsync_realtime_messages') as publication`;
      assert.deepEqual(
        left,
        { uid: false, messages: false, publication: false },
        "nothing of the bootstrap is left",
      );
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* ended */ }
      await output.catch(() => {});
      listener.close();
      for (const connection of connections) {
        try {
          connection.close();
        } catch { /* closed */ }
      }
    }
  }));

/** A stack started in a process of its own (stackChild): where its API is, and its keys. */
interface StackChild {
  apiUrl: string;
  anonKey: string;
  jwtSecret: string;
  /** Has the stack stop (its stdin closed) and waits for the process's end (a hang guard: 60 s, then killed). */
  stop(): Promise<void>;
}

/**
 * A stack started in a process of its own (its environment `env` alone, with PATH and HOME: not npm test's,
 * which points SUPABASE_URL at the run's API) against `dbUrl` as SUPABASE_DB_URL; it stops when its stdin is
 * closed (stop()). Rejects with the stack's output when its start fails.
 */
async function stackChild(dbUrl: string, env: Record<string, string>): Promise<StackChild> {
  const stackModule = new URL("./stack.ts", import.meta.url).href;
  const keep = ["PATH", "HOME", "TMPDIR", "DENO_DIR", "SUPABASE_CLI_BINARY_OVERRIDE", "READSYNC_PG_TEMPLATE"];
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `const { startLocalStack } = await import(${JSON.stringify(stackModule)});
       let stack;
       try {
         stack = await startLocalStack({ apiPort: 0, log: (line) => console.error(line) });
       } catch (error) {
         console.log(JSON.stringify({ failed: String(error?.stack ?? error) }));
         Deno.exit(1);
       }
       console.log(JSON.stringify({ apiUrl: stack.apiUrl, anonKey: stack.anonKey, jwtSecret: stack.jwtSecret }));
       for await (const _ of Deno.stdin.readable) { /* until the test closes it */ }
       await stack.stop();
       Deno.exit(0);`,
    ],
    clearEnv: true,
    env: {
      ...Object.fromEntries(keep.flatMap((name) => Deno.env.get(name) ? [[name, Deno.env.get(name)!]] : [])),
      ...env,
      SUPABASE_DB_URL: dbUrl,
    },
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const stop = async () => {
    await child.stdin.close().catch(() => {});
    await within(child.status, "the stack's stop").catch(() => child.kill("SIGKILL"));
    await child.status;
    await stderr;
  };
  // The child's first line: the stack it started, or why its start failed.
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  try {
    while (!out.includes("\n")) {
      const { value, done } = await within(reader.read(), "the stack's start");
      if (done) break;
      out += value;
    }
  } finally {
    reader.releaseLock();
  }
  const started = JSON.parse(out.split("\n")[0] || "{}") as Partial<StackChild> & { failed?: string };
  if (!started.apiUrl) {
    child.kill("SIGKILL");
    await stop();
    throw new Error(`the stack did not start: ${started.failed}\n${await stderr}`);
  }
  return { apiUrl: started.apiUrl, anonKey: started.anonKey!, jwtSecret: started.jwtSecret!, stop };
}

/**
 * A stack started in a process of its own (stackChild) against `dbUrl`; once it has started, a user of its
 * database (inserted by `sql`, a connection of the test's own) writes through the stack's function and is
 * sent the write's broadcast over its Realtime, with supabase-js. Resolves with what the write answered and
 * what the broadcast carried; rejects with the stack's output when its start fails.
 */
async function writeAndBroadcastThrough(
  sql: postgres.Sql,
  dbUrl: string,
  env: Record<string, string>,
): Promise<{ status: number; series: unknown; broadcast: unknown }> {
  const { createClient } = await import("@supabase/supabase-js");
  const { mintUserAccessToken } = await import("./keys.ts");
  const started = await stackChild(dbUrl, env);
  let client: ReturnType<typeof createClient> | undefined;
  try {
    const [{ id }] = await sql`insert into auth.users (email)
      values (${`reader-${crypto.randomUUID()}@readsync.test`}) returning id`;
    const token = await mintUserAccessToken(id, { secret: started.jwtSecret });
    client = createClient(started.apiUrl, started.anonKey, { accessToken: () => Promise.resolve(token) });
    await client.realtime.setAuth();
    const broadcasts: unknown[] = [];
    let subscribed!: (status: string) => void;
    const joined = new Promise<string>((resolve) => subscribed = resolve);
    client.channel(`progress:${id}`, { config: { private: true } })
      .on("broadcast", { event: "*" }, (message) => broadcasts.push(message.payload))
      .subscribe((status) => subscribed(status));
    assert.equal(await within(joined, "the channel's join"), "SUBSCRIBED");
    const response = await fetch(`${started.apiUrl}/functions/v1/progress`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: JSON.stringify(connectionTestWrite()),
    });
    const answer = await response.json();
    if (response.status !== 200) return { status: response.status, series: answer, broadcast: null };
    await until(() => Promise.resolve(broadcasts.length > 0), "the write's broadcast");
    return {
      status: response.status,
      series: answer.progress?.series_id,
      broadcast: (broadcasts[0] as { record?: { series_id?: unknown } })?.record?.series_id ??
        JSON.stringify(broadcasts[0]),
    };
  } finally {
    if (client) {
      await client.removeAllChannels().catch(() => {});
      await client.realtime.disconnect();
    }
    await started.stop();
  }
}

/** The progress write these tests send (series `connection-test`), dated now. */
function connectionTestWrite() {
  return {
    series_id: "connection-test",
    device_id: "phone",
    chapter: 3,
    page: 30,
    percentage: 0.125,
    updated_at: new Date().toISOString(),
  };
}

/**
 * `pg`'s pg_hba.conf replaced by `lines`, the configuration `settings` set, and both reloaded; resolves once
 * the server has read them: a connection with `refused` (postgres.js's options) is refused (a hang guard: 60 s).
 */
async function serverConfiguration(
  pg: LocalPostgres,
  sql: postgres.Sql,
  lines: string[],
  refused: postgres.Options<Record<string, never>>,
  settings: Record<string, string> = {},
): Promise<void> {
  await Deno.writeTextFile(`${pg.dataDir}/data/pg_hba.conf`, lines.join("\n") + "\n");
  for (const [name, value] of Object.entries(settings)) {
    await sql.unsafe(`alter system set ${name} = '${value}'`);
  }
  await sql`select pg_reload_conf()`;
  const connect = (await import("postgres")).default;
  await until(async () => {
    const probe = connect({ max: 1, onnotice: () => {}, connect_timeout: 10, ...refused });
    const wasRefused = await probe`select 1`.then(() => false, () => true);
    await probe.end();
    return wasRefused;
  }, `the server's new pg_hba.conf (${lines.join("; ")})`);
}

/** `pg` with a self-signed certificate, taking TCP connections with TLS only (its socket as before). */
async function takesTlsOnly(pg: LocalPostgres, sql: postgres.Sql): Promise<void> {
  await selfSignedCertificate(pg);
  await serverConfiguration(
    pg,
    sql,
    ["local all all trust", "hostssl all all 127.0.0.1/32 trust"],
    { host: "127.0.0.1", port: pg.port, username: "postgres", database: "postgres", ssl: false },
    { ssl: "on" },
  );
}

Deno.test({
  name: "a stack started with a SUPABASE_DB_URL whose password is in the password file only, whose server " +
    "offers TLS in versions the client does not speak (its handshake fails: prefer falls back without TLS, as " +
    "libpq does), and that carries libpq's own parameters (keepalives, sslrootcert, target_session_attrs): " +
    "the function's write is served and its broadcast delivered over Realtime",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    const password = "readsync-connection-password";
    await sql.unsafe(`alter role postgres password '${password}'`);
    await selfSignedCertificate(pg);
    // The test's own connection (pg.url: 127.0.0.1, its password postgres) stays trusted over TCP only from
    // its session, already open; every new TCP one needs the password, which the URL does not carry.
    await serverConfiguration(
      pg,
      sql,
      ["local all all trust", "host all all 127.0.0.1/32 scram-sha-256"],
      { host: "127.0.0.1", port: pg.port, username: "postgres", database: "postgres", pass: "" },
      { ssl: "on", ssl_min_protocol_version: "TLSv1", ssl_max_protocol_version: "TLSv1.1" },
    );
    const file = `${pg.dataDir}/pgpass`;
    await Deno.writeTextFile(file, `127.0.0.1:${pg.port}:postgres:postgres:${password}\n`, { mode: 0o600 });
    const url = `postgresql://postgres@127.0.0.1:${pg.port}/postgres?keepalives=1` +
      `&sslrootcert=${encodeURIComponent(`${pg.dataDir}/absent-root.crt`)}&target_session_attrs=read-write`;
    const outcome = await writeAndBroadcastThrough(sql, url, { PGPASSFILE: file });
    assert.deepEqual(outcome, { status: 200, series: "connection-test", broadcast: "connection-test" });
  }));

Deno.test({
  name: "a stack started with a SUPABASE_DB_URL to a socket directory (?host=, a list of one port) whose " +
    "server asks for a password that the password file gives: the function (through the stack's relay) " +
    "and Realtime connect there, the write is served and its broadcast delivered",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    const password = "readsync-socket-password";
    await sql.unsafe(`alter role postgres password '${password}'`);
    await serverConfiguration(
      pg,
      sql,
      ["local all all scram-sha-256", "host all all 127.0.0.1/32 trust"],
      { path: `${pg.dataDir}/.s.PGSQL.${pg.port}`, username: "postgres", database: "postgres", pass: "" },
    );
    const file = `${pg.dataDir}/pgpass`;
    await Deno.writeTextFile(file, `${pg.dataDir}:${pg.port}:*:postgres:${password}\n`, { mode: 0o600 });
    const url = `postgresql:///postgres?host=${encodeURIComponent(pg.dataDir)}&port=${pg.port}&user=postgres`;
    const outcome = await writeAndBroadcastThrough(sql, url, { PGPASSFILE: file });
    assert.deepEqual(outcome, { status: 200, series: "connection-test", broadcast: "connection-test" });
  }));

Deno.test({
  name:
    "a stack stopped while a write through its relay (a SUPABASE_DB_URL to a socket directory) waits on " +
    "its COMMIT: the relay stays until the API server has let the write finish, which is answered 200 and " +
    "kept, instead of its connection cut as the functions close (a 503 for a write the server committed)",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    const url = `postgresql:///postgres?host=${encodeURIComponent(pg.dataDir)}&port=${pg.port}&user=postgres`;
    const { mintUserAccessToken } = await import("./keys.ts");
    const stack = await stackChild(url, {});
    let stopping: Promise<void> | null = null;
    try {
      // Every COMMIT of a row of reading_progress waits for an advisory lock the test holds (a deferred
      // constraint trigger runs at COMMIT), so the write is in its COMMIT when the stack is stopped.
      const LOCK = 480048;
      await sql.unsafe(`
        create function public.readsync_test_commit_waits() returns trigger language plpgsql as
          $$ begin perform pg_advisory_xact_lock(${LOCK}); return null; end $$;
        grant execute on function public.readsync_test_commit_waits() to public;
        create constraint trigger readsync_test_commit_waits after insert or update on public.reading_progress
          deferrable initially deferred for each row execute function public.readsync_test_commit_waits();`);
      await sql`select pg_advisory_lock(${LOCK})`;
      const [{ id }] = await sql`insert into auth.users (email)
        values (${`reader-${crypto.randomUUID()}@readsync.test`}) returning id`;
      const token = await mintUserAccessToken(id, { secret: stack.jwtSecret });
      const answered = fetch(`${stack.apiUrl}/functions/v1/progress`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify(connectionTestWrite()),
      }).then(async (response) => ({ status: response.status, body: await response.json() }));
      await until(async () => {
        const [{ waiting }] = await sql`select count(*)::int as waiting from pg_stat_activity
          where wait_event_type = 'Lock' and wait_event = 'advisory' and query ilike 'commit%'`;
        return waiting === 1;
      }, "the write's COMMIT waiting on the test's lock");
      stopping = stack.stop();
      // The API server has stopped listening: the functions have closed (their request signals aborted),
      // and the server waits for the running request.
      const port = Number(new URL(stack.apiUrl).port);
      await until(
        () => Deno.connect({ hostname: "127.0.0.1", port }).then((conn) => (conn.close(), false), () => true),
        "the API server's shutdown",
      );
      await sql`select pg_advisory_unlock(${LOCK})`;
      const { status, body } = await within(answered, "the write's answer");
      assert.equal(status, 200, JSON.stringify(body));
      const [{ kept }] = await sql`select count(*)::int as kept from public.reading_progress
        where user_id = ${id} and series_id = 'connection-test'`;
      assert.equal(kept, 1);
    } finally {
      await sql`select pg_advisory_unlock_all()`;
      await (stopping ?? stack.stop());
    }
  }));

/**
 * `npm test -- <files>` (local/test.ts) run in a process of its own against `dbUrl` as SUPABASE_DB_URL, its
 * environment `env` alone with PATH and HOME (not this run's, which points SUPABASE_URL at the run's API):
 * its last line ("N passed, N failed") and its whole output. A hang guard only: killed after 10 minutes.
 */
async function npmTestAgainst(
  dbUrl: string,
  env: Record<string, string>,
  files: string[],
): Promise<{ summary: string; output: string }> {
  const root = new URL("../../", import.meta.url);
  const keep = ["PATH", "HOME", "TMPDIR", "DENO_DIR", "SUPABASE_CLI_BINARY_OVERRIDE", "READSYNC_PG_TEMPLATE"];
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL("local/test.ts", root).pathname, ...files],
    cwd: root.pathname,
    clearEnv: true,
    env: {
      ...Object.fromEntries(keep.flatMap((name) => Deno.env.get(name) ? [[name, Deno.env.get(name)!]] : [])),
      ...env,
      NO_COLOR: "1",
      SUPABASE_DB_URL: dbUrl,
    },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const out = await Promise.race([
      child.output(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error("npm test did not end within 10 minutes")), 600_000);
      }),
    ]);
    const decoder = new TextDecoder();
    const output = decoder.decode(out.stdout) + decoder.decode(out.stderr);
    return { summary: decoder.decode(out.stdout).trim().split("\n").pop() ?? "", output };
  } finally {
    clearTimeout(timer);
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
  }
}

Deno.test({
  name:
    "npm test against a SUPABASE_DB_URL to a socket directory whose server asks for a password that the " +
    "password file alone gives: the suites' own connections (adminSql, the test users' rows) are the stack's " +
    "decided connection (here through its relay), and the suite passes, instead of failing on the URL itself " +
    "handed to postgres.js",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    const password = "readsync-suites-password";
    await sql.unsafe(`alter role postgres password '${password}'`);
    // Every new connection needs the password (the test's own, open already, stays); only the password file
    // gives it, and only for the socket directory.
    await serverConfiguration(
      pg,
      sql,
      ["local all all scram-sha-256", "host all all 127.0.0.1/32 scram-sha-256"],
      { path: `${pg.dataDir}/.s.PGSQL.${pg.port}`, username: "postgres", database: "postgres", pass: "" },
    );
    const file = `${pg.dataDir}/pgpass`;
    await Deno.writeTextFile(file, `${pg.dataDir}:${pg.port}:*:postgres:${password}\n`, { mode: 0o600 });
    const url = `postgresql:///postgres?host=${encodeURIComponent(pg.dataDir)}&port=${pg.port}&user=postgres`;
    const { summary, output } = await npmTestAgainst(url, { PGPASSFILE: file }, [
      "tests/functions/progress_security.test.ts",
    ]);
    const [, passed, failed] = summary.match(/^(\d+) passed, (\d+) failed$/) ?? [];
    assert.ok(Number(passed) > 0 && failed === "0", `${summary}\n${output.slice(-6000)}`);
  }));

Deno.test({
  name: "a stack started with a SUPABASE_DB_URL whose server takes TLS connections only, its sslmode " +
    "verify-ca with the server's root certificate in sslrootcert: Realtime and the function (through the " +
    "stack's relay, which checks it) connect with TLS, the write is served and its broadcast delivered",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await takesTlsOnly(pg, sql);
    const root = `${pg.dataDir}/root.crt`;
    await Deno.copyFile(`${pg.dataDir}/data/server.crt`, root);
    const url = `${pg.url}?sslmode=verify-ca&sslrootcert=${encodeURIComponent(root)}`;
    const outcome = await writeAndBroadcastThrough(sql, url, {});
    assert.deepEqual(outcome, { status: 200, series: "connection-test", broadcast: "connection-test" });
  }));

Deno.test({
  name:
    "a SUPABASE_DB_URL with a list of ports (?host=a,b&port=a,b: one per host, as libpq pairs them), the " +
    "first refusing: the connection goes to the second host's port, instead of the ports read as one number",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg) => {
    const { freePort } = await import("./postgres.ts");
    const url =
      `postgresql:///postgres?host=127.0.0.1,127.0.0.1&port=${freePort()},${pg.port}&user=postgres` +
      "&password=postgres";
    await withEnv({ PGSSLMODE: undefined }, async () => {
      assert.equal(await within(connectionUsesTls(url), "the connection"), false);
    });
  }));

Deno.test({
  name:
    "a SUPABASE_DB_URL with a list of hosts whose first refuses and whose second takes TLS connections only, " +
    "its sslmode prefer (none given): the connection uses TLS, as psql's (libpq asks each host it tries), " +
    "instead of going without TLS for the first host could not be asked, and being refused",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await takesTlsOnly(pg, sql);
    const { freePort } = await import("./postgres.ts");
    const url = `postgresql:///postgres?host=127.0.0.1,127.0.0.1&port=${freePort()},${pg.port}&user=postgres`;
    await withEnv({ PGSSLMODE: undefined }, async () => {
      assert.equal(await within(connectionUsesTls(url), "the connection"), true);
    });
  }));

Deno.test({
  name: "a connection made as psql makes it (sslmode prefer) refused after its authentication over TLS (a " +
    "role at its connection limit: 53300) fails with that error, as psql's does, instead of connecting " +
    "again without TLS (libpq does so only on an error before AuthenticationOk) and failing on pg_hba.conf",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await selfSignedCertificate(pg);
    await sql`create role readsync_limited login connection limit 0`;
    await serverConfiguration(
      pg,
      sql,
      ["local all all trust", "hostssl all all 127.0.0.1/32 trust", "hostnossl all all 127.0.0.1/32 reject"],
      { host: "127.0.0.1", port: pg.port, username: "postgres", database: "postgres", ssl: false },
      { ssl: "on" },
    );
    const url = `postgresql://readsync_limited@127.0.0.1:${pg.port}/postgres`;
    await withEnv({ PGSSLMODE: undefined }, async () => {
      const psqlSaid = await psql(url, ["-c", "select 1"]).then(() => "connected", (e: Error) => e.message);
      assert.match(psqlSaid, /too many connections for role "readsync_limited"/);
      await assert.rejects(within(connectionUsesTls(url), "the connection"), (error: Error) => {
        assert.equal((error as Error & { code?: string }).code, "53300", error.message);
        assert.match(error.message, /too many connections for role "readsync_limited"/);
        return true;
      });
    });
  }));

Deno.test({
  name:
    "a password refused over a socket directory given as ?host= (the password as ?password=): the start " +
    "names the socket it connected to (the directory's .s.PGSQL.<port>), not an empty host, and the URL's " +
    "password as the one refused",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await sql`alter role postgres password 'readsync-socket-password'`;
    await Deno.writeTextFile(
      `${pg.dataDir}/data/pg_hba.conf`,
      "local all all scram-sha-256\nhost all all 127.0.0.1/32 trust\n",
    );
    await sql`select pg_reload_conf()`;
    const url =
      `postgresql:///postgres?host=${encodeURIComponent(pg.dataDir)}&port=${pg.port}&user=postgres` +
      "&password=wrong";
    await withEnv({ PGPASSWORD: undefined, PGPASSFILE: `${pg.dataDir}/no-password-file` }, async () => {
      await until(
        () => applyBootstrapIfNeeded(url).then(() => false, (error: Error) => /refused/.test(error.message)),
        "the server's new pg_hba.conf",
      );
      await assert.rejects(applyBootstrapIfNeeded(url), (error: Error) => {
        assert.match(
          error.message,
          new RegExp(
            `^the database at ${
              pg.dataDir.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")
            }/\\.s\\.PGSQL\\.${pg.port} ` +
              `\\(user postgres\\) refused the password in its URL`,
          ),
        );
        return true;
      });
    });
  }));

Deno.test({
  name:
    "the stack's database relay (a locally served function's way to a socket directory) passes on this OS " +
    "user's connections only: another user's is closed before it reaches the server, which would take it for " +
    "this user's (the socket's trust or peer line)",
  // runuser, to connect as another user, needs root.
  ignore: Deno.uid() !== 0,
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg) => {
    const url = `postgresql:///postgres?host=${encodeURIComponent(pg.dataDir)}&port=${pg.port}&user=postgres`;
    const relay = await openDatabaseRelay(await databaseConnection(url));
    try {
      const psql = psqlPath();
      const query = ["-X", "-w", "-At", "-d", relay.url, "-c", "select current_user"];
      const asked = async (command: string, args: string[]) => {
        const out = await new Deno.Command(command, { args, stdin: "null", stdout: "piped", stderr: "piped" })
          .output();
        const decoder = new TextDecoder();
        return { ok: out.success, said: (decoder.decode(out.stdout) + decoder.decode(out.stderr)).trim() };
      };
      assert.deepEqual(await within(asked(psql, query), "this user's psql"), { ok: true, said: "postgres" });
      const other = await within(asked("runuser", ["-u", "nobody", "--", psql, ...query]), "nobody's psql");
      assert.equal(other.ok, false, other.said);
      assert.match(other.said, /server closed the connection unexpectedly/);
      // The relay's IPv4 port reached from an IPv6 socket (the v4-mapped address): /proc/net/tcp6 lists it.
      const mapped = new URL(relay.url);
      mapped.hostname = "[::ffff:127.0.0.1]";
      const viaV6 = ["-X", "-w", "-At", "-d", mapped.href, "-c", "select current_user"];
      const otherV6 = await within(
        asked("runuser", ["-u", "nobody", "--", psql, ...viaV6]),
        "nobody's psql (v6)",
      );
      assert.equal(otherV6.ok, false, otherV6.said);
      assert.match(otherV6.said, /server closed the connection unexpectedly/);
    } finally {
      await relay.close();
    }
  }));

/**
 * A TCP listener on 127.0.0.1 that accepts connections and never answers (a server that hangs, as one
 * behind a dead network path would to a connection made): its port, the connections it accepted (each
 * resolved as it arrives), and its close.
 */
async function silentServer() {
  const accepted: net.Socket[] = [];
  let arrived = Promise.withResolvers<net.Socket>();
  const listener = net.createServer((socket) => {
    socket.on("error", () => {});
    socket.resume(); // read (and drop) what is sent: the socket's end is seen
    accepted.push(socket);
    arrived.resolve(socket);
    arrived = Promise.withResolvers<net.Socket>();
  });
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", () => resolve()));
  return {
    port: (listener.address() as net.AddressInfo).port,
    next: () => arrived.promise,
    close: async () => {
      for (const socket of accepted) socket.destroy();
      await new Promise<void>((resolve) => listener.close(() => resolve()));
    },
  };
}

Deno.test({
  name: "the stack's database relay with a list of hosts whose first accepts and never answers its TLS " +
    "request: with connect_timeout, it gives that host up and passes the connection on to the next (as " +
    "libpq does), instead of waiting on it for good",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster(async (pg, sql) => {
    await takesTlsOnly(pg, sql);
    const silent = await silentServer();
    const decided = await databaseConnection(`${pg.url}?sslmode=require`);
    const listed = {
      ...decided,
      options: { ...decided.options, host: ["127.0.0.1", "127.0.0.1"], port: [silent.port, pg.port] },
    };
    listed.options.connect_timeout = 2;
    const relay = await openDatabaseRelay(listed);
    try {
      const out = await within(
        new Deno.Command(psqlPath(), {
          // psql's own connect_timeout (the relay's URL has none: the relay keeps the host's) well above 2 s.
          args: ["-X", "-w", "-At", "-d", relay.url.replace(/connect_timeout=\d+/, "connect_timeout=60")]
            .concat(["-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()"]),
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output(),
        "psql through the relay",
      );
      const decoder = new TextDecoder();
      assert.equal(decoder.decode(out.stdout).trim(), "t", decoder.decode(out.stderr));
    } finally {
      await relay.close();
      await silent.close();
    }
  }));

Deno.test({
  name:
    "the stack's database relay for a list of hosts with target_session_attrs=read-write (TLS with a root " +
    "certificate: no URL can say it), the first host read-only: its connections reach the second, as libpq's " +
    "would, instead of the first that answers (where the client, given the relay's one address, cannot move on)",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster((readOnly, readOnlySql) =>
    withCluster(async (readWrite, readWriteSql) => {
      await takesTlsOnly(readOnly, readOnlySql);
      await takesTlsOnly(readWrite, readWriteSql);
      await readOnlySql`alter system set default_transaction_read_only = on`;
      await readOnlySql`select pg_reload_conf()`;
      const roots = `${readWrite.dataDir}/roots.crt`;
      await Deno.writeTextFile(
        roots,
        (await Deno.readTextFile(`${readOnly.dataDir}/data/server.crt`)) +
          (await Deno.readTextFile(`${readWrite.dataDir}/data/server.crt`)),
      );
      const url = `postgresql:///postgres?host=127.0.0.1,127.0.0.1&port=${readOnly.port},${readWrite.port}` +
        `&user=postgres&password=postgres&sslmode=verify-ca&sslrootcert=${encodeURIComponent(roots)}` +
        "&target_session_attrs=read-write";
      // The read-only server says so to a new session (the reload read).
      await until(async () => {
        const out = await psql(
          `postgresql://postgres:postgres@127.0.0.1:${readOnly.port}/postgres?sslmode=require`,
          ["-At", "-c", "show transaction_read_only"],
        );
        return out.trim() === "on";
      }, "the first server read-only");
      const relay = await openDatabaseRelay(await within(databaseConnection(url), "the decided connection"));
      try {
        const out = await within(
          new Deno.Command(psqlPath(), {
            args: ["-X", "-w", "-At", "-d", relay.url, "-c", "show port"],
            stdin: "null",
            stdout: "piped",
            stderr: "piped",
          }).output(),
          "psql through the relay",
        );
        const decoder = new TextDecoder();
        assert.equal(decoder.decode(out.stdout).trim(), String(readWrite.port), decoder.decode(out.stderr));
      } finally {
        await relay.close();
      }
    })
  ));

Deno.test({
  name: "the stack's database relay closed while it waits for a host's answer to its TLS request: that " +
    "connection is ended with it, instead of left open to the host",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const silent = await silentServer();
  const relay = await openDatabaseRelay({
    options: {
      host: ["127.0.0.1"],
      port: [silent.port],
      database: "postgres",
      username: "postgres",
      connection: {},
      ssl: "require",
    },
    server: `127.0.0.1:${silent.port}`,
  });
  const client = net.connect(Number(new URL(relay.url).port), "127.0.0.1");
  client.on("error", () => {});
  // A startup's first 8 bytes (its length, protocol 3.0): the relay connects upstream once it has them.
  client.write(new Uint8Array([0, 0, 0, 80, 0, 3, 0, 0]));
  try {
    const upstream = await within(silent.next(), "the relay's connection to the host");
    const ended = new Promise<void>((resolve) => upstream.once("close", () => resolve()));
    await relay.close();
    await within(ended, "the relay's connection to the host ended");
  } finally {
    client.destroy();
    await relay.close();
    await silent.close();
  }
});

Deno.test({
  name:
    "the relay's OS-user check (loopbackClientUid) on a client's end that its process closed: no user's, " +
    "instead of root's (the kernel lists such an end, once it waits out FIN_WAIT2 or TIME_WAIT, with uid 0), " +
    "so that another user's startup and query, sent with a close at once, do not pass a relay run as root",
  // setpriv, to connect as another user, needs root.
  ignore: Deno.uid() !== 0,
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  let accepted!: (socket: net.Socket) => void;
  const arrived = new Promise<net.Socket>((resolve) => accepted = resolve);
  const listener = net.createServer((socket) => accepted(socket));
  await new Promise<void>((resolve) => listener.listen(0, "127.0.0.1", () => resolve()));
  const port = (listener.address() as net.AddressInfo).port;
  // nobody's psql connects and waits for the answer to its startup, which never comes, until it is killed.
  const child = new Deno.Command("setpriv", {
    args: ["--reuid=65534", "--regid=65534", "--clear-groups", psqlPath(), "-X", "-w", "-d"]
      .concat([
        `host=127.0.0.1 port=${port} user=postgres dbname=postgres sslmode=disable`,
        "-c",
        "select 1",
      ]),
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  let socket: net.Socket | undefined;
  try {
    socket = await within(arrived, "nobody's psql's connection");
    const clientPort = socket.remotePort!;
    assert.equal(loopbackClientUid(clientPort, port, socket.remoteAddress), 65534);
    child.kill("SIGKILL");
    await child.status;
    const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, "0");
    await until(
      () =>
        Promise.resolve(
          Deno.readTextFileSync("/proc/net/tcp").split("\n").some((line) => {
            const fields = line.trim().split(/\s+/);
            return fields[1] === `0100007F:${hex(clientPort)}` && fields[2] === `0100007F:${hex(port)}` &&
              fields[7] === "0";
          }),
        ),
      "the closed end listed as uid 0 (FIN_WAIT2 or TIME_WAIT)",
    );
    assert.equal(loopbackClientUid(clientPort, port, socket.remoteAddress), "closed");
  } finally {
    socket?.destroy();
    try {
      child.kill("SIGKILL");
    } catch { /* ended already */ }
    await child.status;
    await new Promise<void>((resolve) => listener.close(() => resolve()));
  }
});

/** psql run once against `url` (`-c query`): whether it connected, and what it printed (stdout, then stderr). */
async function psqlOnce(url: string, query: string): Promise<{ ok: boolean; said: string }> {
  const out = await within(
    new Deno.Command(psqlPath(), {
      args: ["-X", "-w", "-At", "-d", url, "-c", query],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output(),
    `psql against ${url}`,
  );
  const decoder = new TextDecoder();
  return { ok: out.success, said: (decoder.decode(out.stdout) + decoder.decode(out.stderr)).trim() };
}

Deno.test({
  name: "a connection made as psql makes it to a list of hosts (sslmode=verify-ca) whose first host's " +
    "certificate the root certificates do not check: it fails as psql's does (a failed TLS handshake ends " +
    "libpq's connection), instead of connecting to the second host",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster((untrusted, untrustedSql) =>
    withCluster(async (trusted, trustedSql) => {
      await takesTlsOnly(untrusted, untrustedSql);
      await takesTlsOnly(trusted, trustedSql);
      const roots = `${trusted.dataDir}/roots.crt`;
      await Deno.writeTextFile(roots, await Deno.readTextFile(`${trusted.dataDir}/data/server.crt`));
      const url = `postgresql:///postgres?host=127.0.0.1,127.0.0.1&port=${untrusted.port},${trusted.port}` +
        `&user=postgres&sslmode=verify-ca&sslrootcert=${encodeURIComponent(roots)}`;
      const byPsql = await psqlOnce(url, "show port");
      assert.equal(byPsql.ok, false, `psql connected: ${byPsql.said}`);
      const decided = await within(
        databaseConnection(url).then((db) => `connected: ${db.server}`, (error) => `failed: ${error}`),
        "the decided connection",
      );
      assert.match(decided, /^failed: /);
    })
  ));

Deno.test({
  name: "the stack's database relay for a list of hosts with TLS (sslmode=require) whose first host takes " +
    "no TLS: its clients are refused, as psql given the list is (an 'N' under require ends libpq's " +
    "connection), instead of passed on to the second host",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster((plain) =>
    withCluster(async (secure, secureSql) => {
      await takesTlsOnly(secure, secureSql);
      const listedUrl = `postgresql://postgres@127.0.0.1:${plain.port},127.0.0.1:${secure.port}/postgres` +
        "?sslmode=require";
      const byPsql = await psqlOnce(listedUrl, "show port");
      assert.equal(byPsql.ok, false, `psql connected: ${byPsql.said}`);
      assert.match(byPsql.said, /server does not support SSL, but SSL was required/);
      const decided = await databaseConnection(`${secure.url}?sslmode=require`);
      const relay = await openDatabaseRelay({
        ...decided,
        options: { ...decided.options, host: ["127.0.0.1", "127.0.0.1"], port: [plain.port, secure.port] },
      });
      try {
        const throughRelay = await psqlOnce(relay.url, "show port");
        assert.equal(throughRelay.ok, false, `connected through the relay: ${throughRelay.said}`);
      } finally {
        await relay.close();
      }
    })
  ));

Deno.test({
  name: "the stack's database relay for a list of hosts with target_session_attrs=read-write whose first " +
    "host refuses the login (its pg_hba.conf): its clients meet that refusal, as psql given the list does " +
    "(libpq stops at a host that refuses), instead of reaching the second host",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster((refusing, refusingSql) =>
    withCluster(async (taking) => {
      await serverConfiguration(
        refusing,
        refusingSql,
        ["local all all trust", "host all all 127.0.0.1/32 reject"],
        { host: "127.0.0.1", port: refusing.port, username: "postgres", database: "postgres" },
      );
      const listedUrl = `postgresql://postgres@127.0.0.1:${refusing.port},127.0.0.1:${taking.port}/postgres` +
        "?sslmode=disable&target_session_attrs=read-write";
      const byPsql = await psqlOnce(listedUrl, "show port");
      assert.equal(byPsql.ok, false, `psql connected: ${byPsql.said}`);
      assert.match(byPsql.said, /pg_hba\.conf rejects connection/);
      const decided = await databaseConnection(
        `${taking.url}?sslmode=disable&target_session_attrs=read-write`,
      );
      const relay = await openDatabaseRelay({
        ...decided,
        options: { ...decided.options, host: ["127.0.0.1", "127.0.0.1"], port: [refusing.port, taking.port] },
      });
      try {
        const throughRelay = await psqlOnce(relay.url, "show port");
        assert.equal(throughRelay.ok, false, `connected through the relay: ${throughRelay.said}`);
        assert.match(throughRelay.said, /pg_hba\.conf rejects connection/);
      } finally {
        await relay.close();
      }
    })
  ));

Deno.test({
  name: "the stack's database relay for a list of hosts with target_session_attrs=read-write, the hosts' " +
    "roles swapped while a query runs: its client's cancel request reaches the host the query runs on (as " +
    "libpq's goes to the session's own address) and cancels it, instead of the host a new login would reach",
  sanitizeOps: false,
  sanitizeResources: false,
}, () =>
  withCluster((first, firstSql) =>
    withCluster(async (second, secondSql) => {
      const readOnly = async (sql: postgres.Sql, pg: LocalPostgres, on: boolean) => {
        await sql.unsafe(`alter system set default_transaction_read_only = ${on ? "on" : "off"}`);
        await sql`select pg_reload_conf()`;
        await until(async () => {
          const out = await psql(`${pg.url}?sslmode=disable`, ["-At", "-c", "show transaction_read_only"]);
          return out.trim() === (on ? "on" : "off");
        }, `the server at ${pg.port} ${on ? "read-only" : "read-write"}`);
      };
      await readOnly(firstSql, first, true);
      const url = `postgresql:///postgres?host=127.0.0.1,127.0.0.1&port=${first.port},${second.port}` +
        "&user=postgres&password=postgres&sslmode=disable&target_session_attrs=read-write";
      const decided = await within(databaseConnection(url), "the decided connection");
      const relay = await openDatabaseRelay(decided);
      const connect = (await import("postgres")).default;
      const client = connect(relay.url, { max: 1, onnotice: () => {} });
      try {
        const [{ port }] = await client`select current_setting('port')::int as port`;
        assert.equal(port, second.port);
        const sleeping = client`select pg_sleep(600)`;
        const outcome = sleeping.then(() => "finished", (error) => `failed: ${error.code} ${error.message}`);
        await until(async () => {
          const [{ n }] = await secondSql`select count(*)::int as n from pg_stat_activity
            where query = 'select pg_sleep(600)' and state = 'active'`;
          return n === 1;
        }, "the query running on the second host");
        // The roles swap: a new login through the relay would now be taken to the first host.
        await readOnly(firstSql, first, false);
        await readOnly(secondSql, second, true);
        sleeping.cancel();
        assert.match(await within(outcome, "the cancelled query's end"), /^failed: 57014 /);
      } finally {
        await client.end({ timeout: 0 });
        await relay.close();
      }
    })
  ));
