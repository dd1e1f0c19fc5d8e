// The pgTAP files that ALTER (or TRUNCATE) reading_progress as its owner do it inside their one
// transaction, after writing rows. Taken there, the lock that needs is an upgrade from the ROW EXCLUSIVE
// their writes hold, and it deadlocks with a session that holds a lock on the table those statements
// conflict with and waits for the file's transaction (a full `npm test` once failed pgTAP 038 so:
// "deadlock detected", 038 waiting for SHARE ROW EXCLUSIVE on reading_progress). Each such file takes
// that lock as its first statement instead. This runs those that enable or disable a trigger beside
// such a session: it holds ROW EXCLUSIVE on the table (as a writer does) and, once the file waits for
// it, creates a logical replication slot, which waits for every transaction that has a transaction id
// (as creating the Realtime endpoint's WAL reader's slot does). A file that had already written is then
// in a cycle.

import assert from "node:assert/strict";
import postgres from "postgres";
import { psqlPath } from "../../local/stack/database.ts";
import { testEnv } from "../support/env.ts";

const testsDir = new URL("../../supabase/tests/", import.meta.url);

/**
 * The pgTAP files that enable or disable a trigger of public.reading_progress (SHARE ROW EXCLUSIVE). Not
 * those whose ALTER or TRUNCATE needs ACCESS EXCLUSIVE (005, 013; they take it first as well): a session
 * that waits for that lock has a transaction id already (PostgreSQL assigns one to log the lock for
 * standbys), so the slot below would wait for it wherever the file took it.
 */
async function filesAlteringTheTable(): Promise<string[]> {
  const files: string[] = [];
  for await (const entry of Deno.readDir(testsDir)) {
    if (!entry.name.endsWith(".sql")) continue;
    const text = await Deno.readTextFile(new URL(entry.name, testsDir));
    if (
      /\balter\s+table\s+public\.reading_progress\s+(enable|disable)(\s+(always|replica))?\s+trigger\b/i.test(
        text,
      )
    ) files.push(entry.name);
  }
  return files.sort();
}

Deno.test("pgTAP files that ALTER reading_progress cannot deadlock with a session waiting for them", async () => {
  const files = await filesAlteringTheTable();
  assert.ok(files.includes("038_reading_progress_rules_one_order_on_every_path.test.sql"), files.join(", "));
  const env = testEnv();
  const runPgTapFile = async (name: string) => {
    const out = await new Deno.Command(psqlPath(), {
      args: [
        "-X",
        "-w",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        env.dbUrl,
        "-f",
        new URL(name, testsDir).pathname,
      ],
      env: { PGOPTIONS: "-c search_path=public,extensions" },
    }).output();
    assert.ok(out.success, `${name}: ${new TextDecoder().decode(out.stderr)}`);
  };
  const failures: string[] = [];
  const sql = postgres(env.dbUrl, { max: 2, onnotice: () => {} });
  try {
    for (const file of files) {
      const appName = `readsync_lock_test_${crypto.randomUUID().slice(0, 8)}`;
      // The shared helpers (000 commits them; 999 drops them), each file in a session of its own as
      // pg_prove runs it.
      await runPgTapFile("000_test_helpers.test.sql");
      const holder = await sql.reserve();
      let child: Deno.ChildProcess | undefined;
      let holderError: unknown = null;
      try {
        await holder`begin`;
        await holder`lock table public.reading_progress in row exclusive mode`;
        child = new Deno.Command(psqlPath(), {
          args: [
            "-X",
            "-w",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            env.dbUrl,
            "-f",
            new URL(file, testsDir).pathname,
          ],
          env: { PGOPTIONS: "-c search_path=public,extensions", PGAPPNAME: appName },
          stdout: "piped",
          stderr: "piped",
        }).spawn();
        // Wait (a condition, not a time) until the file waits for a lock on reading_progress.
        for (;;) {
          const [waiting] = await sql<{ n: number }[]>`
            select count(*)::int as n from pg_catalog.pg_locks l
              join pg_catalog.pg_stat_activity a using (pid)
             where a.application_name = ${appName} and not l.granted
               and l.relation = 'public.reading_progress'::regclass`;
          if (waiting.n > 0) break;
          const status = await Promise.race([child.status, Promise.resolve(null)]);
          if (status) break; // ended without ever waiting: its output below says why
          await sql`select pg_catalog.pg_sleep(0.01)`; // a poll interval, not a synchronisation
        }
        try {
          await holder`select pg_catalog.pg_create_logical_replication_slot(
            ${appName}, 'pgoutput', true)`;
          await holder`select pg_catalog.pg_drop_replication_slot(${appName})`;
        } catch (e) {
          holderError = e;
        }
      } finally {
        await holder`rollback`.catch(() => {});
        holder.release();
      }
      const out = await child!.output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      await runPgTapFile("999_drop_test_helpers.test.sql");
      if (holderError !== null) failures.push(`${file}: the waiting session failed: ${holderError}`);
      if (!out.success || /^\s*not ok/m.test(text) || /deadlock detected/.test(text)) {
        failures.push(
          `${file}:\n${text.split("\n").filter((l) => /ERROR|DETAIL|not ok/.test(l)).join("\n")}`,
        );
      }
    }
  } finally {
    await sql.end();
  }
  assert.deepEqual(failures, [], failures.join("\n"));
});
