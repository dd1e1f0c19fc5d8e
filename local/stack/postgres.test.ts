// The throwaway cluster's initdb template: the first start makes it, later starts copy it, and every
// copy is a cluster of its own.

import assert from "node:assert/strict";
import postgres from "postgres";
import { startPostgres } from "./postgres.ts";

Deno.test({
  name: "initdb template: made once, then copied; each copy is an independent cluster",
  sanitizeOps: false,
  sanitizeResources: false,
}, async () => {
  const tmp = await Deno.makeTempDir({ prefix: "readsync-template-test-" });
  await Deno.chmod(tmp, 0o711); // the cluster's OS user must reach the template below it
  const previous = Deno.env.get("TMPDIR");
  Deno.env.set("TMPDIR", tmp);
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
    if (previous === undefined) Deno.env.delete("TMPDIR");
    else Deno.env.set("TMPDIR", previous);
    await Deno.remove(tmp, { recursive: true });
  }
});

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
