// The migrated template: the stack's cluster as it stands after the platform bootstrap and the real
// `supabase db push` of every migration, kept beside the initdb template (postgres.ts) so that a later start
// copies it instead of paying the push's 3–4 s again (the CLI's own CPU: its start and its statement
// splitter over each migration). A start that copies it still runs the real `supabase db push`, which then
// finds every migration applied: the CLI stays the judge of what is applied. Keyed by everything that decides
// that state; a start whose key has no template pushes in full and then makes it (fast shutdown, copy,
// restart), before the API starts (no replication slot, no Realtime state in it). Only for a cluster the
// stack starts itself (never with SUPABASE_DB_URL); READSYNC_PG_TEMPLATE=0 turns it off with the initdb one.

import { fileURLToPath } from "node:url";
import { BOOTSTRAP_SQL, supabaseCliBinary, supabaseLauncher } from "./database.ts";
import {
  type DerivedTemplate,
  fileIdentity,
  type LocalPostgres,
  makeTemplate,
  templateKey,
  templatesRoot,
} from "./postgres.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));

/** What the push reads besides the migrations: the project's configuration (its `[db]` settings). */
const CONFIG_TOML = `${ROOT}supabase/config.toml`;

/** The directory whose `*.sql` files `supabase db push` applies (the CLI runs in ROOT). */
const MIGRATIONS_DIR = `${ROOT}supabase/migrations`;

/** What the phases and the templates' directory call it (`migrated-<key>`). */
const NAME = "migrated";

/**
 * The key of the migrated template for a cluster of the initdb template `initdbTemplateKey`: a digest of that
 * key, local/platform/bootstrap.sql's bytes, supabase/config.toml's bytes, every migration's name and bytes
 * (`*.sql` in supabase/migrations, in name order: as the CLI applies them) and the CLI binary's path and
 * identity (postgres.ts fileIdentity: an upgrade replaces it; the launcher's when no binary is found, as the
 * push then runs it). A migration added, changed, renamed or removed, a changed bootstrap or another CLI: a
 * key with no template yet, so a full push, which makes it.
 */
export async function migratedTemplateKey(initdbTemplateKey: string): Promise<string> {
  const digest = async (bytes: Uint8Array<ArrayBuffer>) =>
    [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))]
      .map((b) => b.toString(16).padStart(2, "0")).join("");
  const migrations = [...Deno.readDirSync(MIGRATIONS_DIR)]
    .filter((entry) => entry.isFile && entry.name.endsWith(".sql"))
    .map((entry) => entry.name)
    .sort();
  const cli = supabaseCliBinary() ?? supabaseLauncher();
  const parts = [
    "readsync migrated template 1",
    `initdb template ${initdbTemplateKey}`,
    `bootstrap ${await digest(await Deno.readFile(BOOTSTRAP_SQL))}`,
    `config ${await digest(await Deno.readFile(CONFIG_TOML))}`,
    ...await Promise.all(
      migrations.map(async (name) =>
        `migration ${name} ${await digest(await Deno.readFile(`${MIGRATIONS_DIR}/${name}`))}`
      ),
    ),
    `cli ${cli} ${fileIdentity(Deno.realPathSync(cli))}`,
  ];
  return await templateKey(parts.join("\n"));
}

/** What a start found of the migrated template (MigratedTemplate.find), to make it once its push is done. */
export interface MigratedTemplate {
  /** For StartOptions.derivedTemplate: the template's data directory when there is one for the key. */
  derived: DerivedTemplate;
  /** Whether the start's cluster was copied from it (false: none was found, or none was looked for). */
  copied(): boolean;
  /** Whether it was looked up and there is none for the key (the start pushes in full: makeFrom makes it). */
  missing(): boolean;
  /**
   * Makes it from the start's cluster when it was not copied from one (a full push): the cluster is stopped
   * (fast shutdown), copied into the template's private build directory and started again (copyStopped), the
   * build renamed into place (makeTemplate). Whether it made it (false: copied from one, another start made it
   * meanwhile, or none was looked for: no initdb template). Throws ServerNotRestarted when the cluster did not
   * start again; any other error is the template's alone (the cluster runs on).
   */
  makeFrom(pg: LocalPostgres): Promise<boolean>;
}

/**
 * How long a migrated template that no start has copied or made is kept: each migration added or changed
 * makes another (≈ 40 MB), and a developer's old keys come back rarely (a branch switched back to).
 */
const UNUSED_FOR_MS = 24 * 3_600_000;

/**
 * Removes the migrated templates under `root` but `keep` that no start has copied or made for UNUSED_FOR_MS
 * (their `complete` file's modification time, which each start that copies one sets: find, below). Each is
 * renamed first (one atomic step: a start that looks it up afterwards finds none and pushes in full), to a
 * name a dead builder's would have, so that what a start killed during the removal leaves is swept as such.
 */
async function pruneUnused(root: string, keep: string): Promise<void> {
  for await (const entry of Deno.readDir(root)) {
    if (!entry.isDirectory || entry.name === keep || !new RegExp(`^${NAME}-[0-9a-f]+$`).test(entry.name)) {
      continue;
    }
    const used = (await Deno.stat(`${root}/${entry.name}/complete`).catch(() => null))?.mtime?.getTime();
    if (used === undefined || Date.now() - used < UNUSED_FOR_MS) continue;
    const removing = `${root}/${entry.name}.building-${Deno.pid}-removing`;
    try {
      await Deno.rename(`${root}/${entry.name}`, removing);
    } catch {
      continue; // another start removed it first
    }
    await Deno.remove(removing, { recursive: true }).catch(() => {});
  }
}

/** A start's migrated template: looked up by startPostgres (derived.find), made by the stack (makeFrom). */
export function migratedTemplate(): MigratedTemplate {
  let found: { root: string; key: string; dataDir: string | null } | null = null;
  return {
    derived: {
      name: NAME,
      find: async (initdbTemplateKey) => {
        const root = await templatesRoot();
        const key = await migratedTemplateKey(initdbTemplateKey);
        const dir = `${root}/${NAME}-${key}`;
        let dataDir: string | null = null;
        try {
          // Marked as used (pruneUnused keeps it), before the copy begins.
          const now = new Date();
          Deno.utimeSync(`${dir}/complete`, now, now);
          dataDir = `${dir}/data`;
        } catch { /* none yet */ }
        found = { root, key, dataDir };
        return dataDir;
      },
      // Pruned by another start before it was copied: this start pushes in full and makes it again.
      notCopied: () => {
        if (found) found = { ...found, dataDir: null };
      },
    },
    copied: () => found?.dataDir != null,
    missing: () => found !== null && found.dataDir === null,
    makeFrom: async (pg) => {
      if (!found || found.dataDir !== null || pg.initdbTemplateKey === null) return false;
      // The key was taken as the start looked the template up, before its push read the migrations: one saved
      // in between (a developer's edit during the start) was pushed as saved, so this cluster is not what the
      // key names, and a start with the files as they were would copy it. Made only when the key is unchanged.
      const now = await migratedTemplateKey(pg.initdbTemplateKey);
      if (now !== found.key) {
        throw new Error(
          `what its key is made of changed during this start (key ${found.key}, now ${now}): the next start ` +
            `pushes in full and makes it`,
        );
      }
      const { made } = await makeTemplate(
        found.root,
        `${NAME}-${found.key}`,
        (dataDir) => pg.copyStopped(dataDir),
        found.key,
      );
      // Only as a template is made (a migration added or changed): a start that copies one removes nothing.
      if (made) await pruneUnused(found.root, `${NAME}-${found.key}`).catch(() => {});
      return made;
    },
  };
}
