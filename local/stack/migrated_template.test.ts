// The migrated template (migrated_template.ts): a start with no template for its key pushes every migration
// with the real CLI and makes it; a later start copies it and its real push finds every migration applied,
// the cluster holding exactly what the full push made; a migration added or changed gives another key, so a
// full push again; a dead builder's half-built template is swept; two first starts at once both start.

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { lastJsonLine, runDenoChild } from "../../tests/support/denoChild.ts";

/** What the probe (below) reports of one start. */
interface StartReport {
  template: "copied" | "made" | null;
  applied: string[];
  upToDate: boolean;
  /** pg_dump --schema-only and pg_dumpall --roles-only of the running stack's database. */
  schema: string;
  /** supabase_migrations.schema_migrations, every row (version, name, statements), in version order. */
  migrations: { version: string; name: string; statements: string[] }[];
  answered: number;
}

/**
 * Run in a copy of the checkout (so that its migrations can be added to and changed) with a TMPDIR of its
 * own (no template yet): the starts below, each reported (StartReport); between them, what a developer does.
 */
/**
 * A checkout of the project's code under `parent` (`checkout/`, node_modules linked) and a private temp dir
 * (`tmp/`), so that a probe's starts make and copy templates of their own, never the suite's.
 */
async function copyCheckout(parent: string): Promise<void> {
  const repo = fileURLToPath(new URL("../../", import.meta.url));
  const checkout = `${parent}/checkout`;
  const tmp = `${parent}/tmp`;
  await Deno.mkdir(checkout);
  await Deno.mkdir(tmp);
  // Traversable by the cluster's OS user (as root), as the temp dir is.
  await Deno.chmod(parent, 0o711);
  await Deno.chmod(tmp, 0o711);
  const copied = await new Deno.Command("cp", {
    args: [
      "-a",
      ...["deno.json", "deno.lock", "package.json", "local", "shared", "supabase"].map((name) =>
        `${repo}${name}`
      ),
      `${checkout}/`,
    ],
    stderr: "piped",
  }).output();
  assert.ok(copied.success, new TextDecoder().decode(copied.stderr));
  await Deno.symlink(`${repo}node_modules`, `${checkout}/node_modules`);
}

const PROBE = `
import { startLocalStack } from "./local/stack/stack.ts";
import { runCleanups } from "./local/stack/cleanup.ts";
import { findPostgresBinaries } from "./local/stack/system.ts";

const bin = findPostgresBinaries().binDir;
const text = async (cmd, args) => {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  if (!out.success) throw new Error(cmd + " failed: " + new TextDecoder().decode(out.stderr));
  return new TextDecoder().decode(out.stdout);
};
// Today's Realtime partitions are made by each start (and the bootstrap): a run that crosses midnight (UTC)
// would see other dates, which are not what is compared; nor is the random key of pg_dump's \\restrict
// (each dump has its own).
const compared = (dump) => dump.split("\\n")
  .filter((l) => !/messages_\\d{4}_\\d{2}_\\d{2}|^\\\\(un)?restrict /.test(l)).join("\\n");
const report = async (stack) => {
  const answer = await fetch(stack.apiUrl + "/functions/v1/progress", { method: "OPTIONS" });
  await answer.body?.cancel();
  const schema = compared(await text(bin + "/pg_dump", ["--schema-only", "-d", stack.dbUrl])) +
    compared(await text(bin + "/pg_dumpall", ["--roles-only", "--no-role-passwords", "-d", stack.dbUrl]));
  const migrations = JSON.parse(await text(bin + "/psql", [
    "-XAt", "-d", stack.dbUrl, "-c",
    "select coalesce(json_agg(json_build_object('version', version, 'name', name, 'statements', statements) " +
      "order by version), '[]') from supabase_migrations.schema_migrations",
  ]));
  return {
    template: stack.migratedTemplate,
    applied: [...stack.migrationLog.matchAll(/Applying migration (\\S+?)\\.sql\\.\\.\\./g)].map((m) => m[1]),
    upToDate: /up to date/i.test(stack.migrationLog),
    schema,
    migrations,
    answered: answer.status,
  };
};
const options = { apiPort: 0, dbPort: 0, log: () => {}, ownStackOnly: true };
const start = async () => {
  const stack = await startLocalStack(options);
  try {
    return await report(stack);
  } finally {
    await stack.stop();
  }
};
const root = Deno.env.get("TMPDIR") + "/readsync-pg-templates-" + Deno.uid();
const templates = () => [...Deno.readDirSync(root)].map((e) => e.name).filter((n) => n.startsWith("migrated-")).sort();
const probe = "supabase/migrations/20991231235900_migrated_template_probe.sql";

const first = await start();
const second = await start();
const before = templates();
// A builder that died (its pid ended) and one that still runs (this process): the next build sweeps the first.
const ended = new Deno.Command("true").spawn();
await ended.status;
const dead = root + "/migrated-0123456789abcdef.building-" + ended.pid + "-dead";
const live = root + "/migrated-0123456789abcdef.building-" + Deno.pid + "-live";
for (const dir of [dead, live]) {
  Deno.mkdirSync(dir + "/data", { recursive: true });
  Deno.writeTextFileSync(dir + "/data/PG_VERSION", "15\\n");
}
// Two templates of other keys: one no start has copied for two days (removed as a template is made), one
// copied a minute ago (kept).
const unused = root + "/migrated-00000000000000aa";
const recent = root + "/migrated-00000000000000bb";
for (const [dir, ago] of [[unused, 2 * 86_400_000], [recent, 60_000]]) {
  Deno.mkdirSync(dir + "/data", { recursive: true });
  Deno.writeTextFileSync(dir + "/complete", "key\\n");
  const when = new Date(Date.now() - ago);
  Deno.utimeSync(dir + "/complete", when, when);
}
Deno.writeTextFileSync(probe, "create table public.migrated_template_probe (id int);\\n");
const added = await start();
const exists = (path) => { try { Deno.statSync(path); return true; } catch { return false; } };
const swept = { dead: !exists(dead), live: exists(live), unused: !exists(unused), recent: exists(recent) };
Deno.removeSync(live, { recursive: true });
Deno.removeSync(recent, { recursive: true });
const afterAdded = templates();
// The migration changed (as before it is applied anywhere that matters): two first starts at once.
Deno.writeTextFileSync(probe, "create table public.migrated_template_probe (id int, note text);\\n");
const [changedA, changedB] = await Promise.all([start(), start()]);
const afterChanged = templates();
const again = await start();
await runCleanups();
console.log(JSON.stringify({ first, second, added, changedA, changedB, again, before, afterAdded, afterChanged, swept }));
Deno.exit(0);
`;

Deno.test({
  name:
    "migrated template: made by a start's full push, copied by the next (whose real push applies nothing, and whose " +
    "cluster has the same schema and migration rows); a migration added or changed is a new key (a full push); " +
    "a dead builder's directory is swept; two first starts at once both start",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const repo = fileURLToPath(new URL("../../", import.meta.url));
  const parent = await Deno.makeTempDir({ prefix: "readsync-migrated-template-" });
  const checkout = `${parent}/checkout`;
  const tmp = `${parent}/tmp`;
  try {
    await copyCheckout(parent);
    await Deno.writeTextFile(`${checkout}/probe.ts`, PROBE);
    const run = await runDenoChild(
      ["eval", `Deno.env.set("TMPDIR", ${JSON.stringify(tmp)}); await import("./probe.ts");`],
      { timeoutMs: 900_000, cwd: checkout },
    );
    const r = lastJsonLine(run) as
      & Record<
        "first" | "second" | "added" | "changedA" | "changedB" | "again",
        StartReport
      >
      & {
        before: string[];
        afterAdded: string[];
        afterChanged: string[];
        swept: Record<"dead" | "live" | "unused" | "recent", boolean>;
      };
    const migrations = [...Deno.readDirSync(`${repo}supabase/migrations`)]
      .map((entry) => entry.name).filter((name) => name.endsWith(".sql")).sort()
      .map((name) => name.replace(/\.sql$/, ""));
    const withProbe = [...migrations, "20991231235900_migrated_template_probe"];
    for (
      const [name, start] of Object.entries(r).filter(([, v]) => typeof v === "object" && "answered" in v)
    ) {
      assert.equal((start as StartReport).answered, 204, `${name}: the functions answer`);
    }

    // The first start: no template, every migration applied by the real push, the template made.
    assert.equal(r.first.template, "made");
    assert.deepEqual(r.first.applied, migrations);
    assert.deepEqual(r.first.migrations.map((m) => `${m.version}_${m.name}`), migrations);
    assert.equal(r.before.length, 1, `one migrated template: ${r.before}`);
    // The second: copied; its real push found every migration applied; the same cluster as a full push made.
    assert.equal(r.second.template, "copied");
    assert.deepEqual(r.second.applied, []);
    assert.ok(r.second.upToDate, "the push said the database is up to date");
    assert.equal(r.second.schema, r.first.schema, "the copy's schema is the full push's");
    assert.deepEqual(
      r.second.migrations,
      r.first.migrations,
      "the copy's migration rows are the full push's",
    );

    // A migration added: another key, so a full push (the new one with the others) and a template made.
    assert.equal(r.added.template, "made");
    assert.deepEqual(r.added.applied, withProbe);
    assert.match(r.added.schema, /CREATE TABLE public\.migrated_template_probe \(\n\s+id integer\n\);/);
    assert.deepEqual(
      r.swept,
      { dead: true, live: true, unused: true, recent: true },
      "the dead builder's directory swept, the live one's kept; a template unused for two days removed, a recent " +
        "one kept",
    );
    assert.equal(r.afterAdded.length, 2, `two migrated templates, no build left: ${r.afterAdded}`);

    // The migration changed: another key again. Two first starts at once: both push in full and start; one
    // template is put in place, no build is left behind.
    for (const changed of [r.changedA, r.changedB]) {
      assert.notEqual(changed.template, "copied");
      assert.deepEqual(changed.applied, withProbe);
      assert.match(
        changed.schema,
        /CREATE TABLE public\.migrated_template_probe \(\n\s+id integer,\n\s+note text\n\);/,
      );
    }
    assert.ok([r.changedA.template, r.changedB.template].includes("made"), "one of them made the template");
    assert.equal(r.afterChanged.length, 3, `three migrated templates, no build left: ${r.afterChanged}`);
    // A start after it copies the changed migration's template: the same cluster as the full push's.
    assert.equal(r.again.template, "copied");
    assert.deepEqual(r.again.applied, []);
    assert.equal(r.again.schema, r.changedA.schema);
    assert.deepEqual(r.again.migrations, r.changedA.migrations);
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
});

Deno.test({
  name:
    "a first start interrupted (SIGINT) while it makes the migrated template leaves no half-built template, " +
    "no cluster directory and no server behind",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const stackModule = new URL("./stack.ts", import.meta.url).href;
  const tmp = await Deno.makeTempDir({ prefix: "readsync-migrated-interrupted-" });
  try {
    // Traversable by the cluster's OS user (as root), as the temp dir is.
    await Deno.chmod(tmp, 0o711);
    const root = `${tmp}/readsync-pg-templates-${Deno.uid()}`;
    // Its own temp dir: no migrated template, so the start makes one once its push is done; the interrupt
    // comes once the build's directory is there (a hang guard bounds the wait).
    const run = await runDenoChild([
      "eval",
      `Deno.env.set("TMPDIR", ${JSON.stringify(tmp)});
       const { startLocalStack } = await import(${JSON.stringify(stackModule)});
       const building = () => {
         try {
           return [...Deno.readDirSync(${
        JSON.stringify(root)
      })].some((e) => /^migrated-.*\\.building-/.test(e.name));
         } catch {
           return false;
         }
       };
       const onPhase = (name) => {
         if (name !== "migrations (supabase db push)") return;
         (async () => {
           for (let i = 0; i < 20000 && !building(); i++) await new Promise((r) => setTimeout(r, 1));
           console.log(JSON.stringify({ sawBuilding: building() }));
           Deno.kill(Deno.pid, "SIGINT");
         })();
       };
       await startLocalStack({ apiPort: 0, dbPort: 0, log: () => {}, ownStackOnly: true, onPhase });
       console.log(JSON.stringify({ started: true }));`,
    ], { timeoutMs: 300_000 });
    assert.equal(run.code, 130, `stopped by SIGINT:\n${run.stdout}\n${run.stderr}`);
    assert.ok(run.stdout.includes('{"sawBuilding":true}'), `interrupted during the build:\n${run.stdout}`);
    const left = [...Deno.readDirSync(root)].map((entry) => entry.name);
    assert.deepEqual(
      left.filter((name) => name.includes(".building-")),
      [],
      `no half-built template: ${left}`,
    );
    for (const name of left.filter((name) => name.startsWith("migrated-"))) {
      assert.ok(
        [...Deno.readDirSync(`${root}/${name}`)].some((e) => e.name === "complete"),
        `${name} is complete`,
      );
    }
    // The cluster's directory (readsync-pg-*) is gone, so no server runs in it. (The CLI, a Bun-compiled
    // program, leaves a .bun-*.node file of its own there.)
    assert.deepEqual(
      [...Deno.readDirSync(tmp)].map((entry) => entry.name).filter((name) => name.startsWith("readsync-")),
      [`readsync-pg-templates-${Deno.uid()}`],
      "only the templates are left",
    );
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test({
  name:
    "a migration saved during a start that makes the migrated template (after its look-up, before its push): no " +
    "template is made under the key of the files as they were, so a start with those files again does not copy " +
    "what the edited one pushed",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const parent = await Deno.makeTempDir({ prefix: "readsync-migrated-edited-" });
  const checkout = `${parent}/checkout`;
  const tmp = `${parent}/tmp`;
  try {
    await copyCheckout(parent);
    await Deno.writeTextFile(
      `${checkout}/probe.ts`,
      `
import { startLocalStack } from "./local/stack/stack.ts";
import { runCleanups } from "./local/stack/cleanup.ts";
import { findPostgresBinaries } from "./local/stack/system.ts";

const psql = findPostgresBinaries().binDir + "/psql";
const probe = "supabase/migrations/20991231235900_migrated_template_probe.sql";
const asCommitted = "create table public.migrated_template_probe (id int);\\n";
const asSaved = "create table public.migrated_template_probe (id int, saved_during_the_start text);\\n";
Deno.writeTextFileSync(probe, asCommitted);
const start = async (onPhase) => {
  const stack = await startLocalStack({ apiPort: 0, dbPort: 0, log: () => {}, ownStackOnly: true, onPhase });
  try {
    const out = await new Deno.Command(psql, {
      args: ["-XAt", "-d", stack.dbUrl, "-c", "select string_agg(column_name, ',' order by ordinal_position) " +
        "from information_schema.columns where table_name = 'migrated_template_probe'"],
      stdout: "piped",
    }).output();
    return { template: stack.migratedTemplate, columns: new TextDecoder().decode(out.stdout).trim() };
  } finally {
    await stack.stop();
  }
};
// Saved once the start has looked its template up (none: it will make one), before its push reads it.
const edited = await start((name) => {
  if (name === "platform bootstrap (psql)") Deno.writeTextFileSync(probe, asSaved);
});
// And saved back as it was.
Deno.writeTextFileSync(probe, asCommitted);
const reverted = await start();
await runCleanups();
console.log(JSON.stringify({ edited, reverted }));
Deno.exit(0);
`,
    );
    const run = await runDenoChild(
      ["eval", `Deno.env.set("TMPDIR", ${JSON.stringify(tmp)}); await import("./probe.ts");`],
      { timeoutMs: 600_000, cwd: checkout },
    );
    const r = lastJsonLine(run) as Record<
      "edited" | "reverted",
      { template: string | null; columns: string }
    >;
    // The edited start pushed what was saved; with the files as committed again, the next start's cluster holds
    // what they say (a full push), not what the edited start pushed.
    assert.equal(r.edited.columns, "id,saved_during_the_start");
    assert.equal(r.reverted.columns, "id", `the cluster matches the migrations (${r.reverted.template})`);
    // No template was made under the key of what was committed; the next start made it.
    assert.equal(r.edited.template, null);
    assert.equal(r.reverted.template, "made");
  } finally {
    await Deno.remove(parent, { recursive: true });
  }
});
