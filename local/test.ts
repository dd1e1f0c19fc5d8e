// `npm test`: starts the local stack (PostgreSQL + migrations through the Supabase CLI + API server)
// and runs every suite against it, then prints one summary line: `N passed, N failed`.
//
//   npm test                               everything
//   npm test -- tests/integration/x.ts     only the named deno test files (and/or .sql pgTAP files)
//   npm test -- tests/browser              only the browser tests (and/or with other files)
//
// The browser tests (tests/browser/run.mjs, Node + playwright-core + Debian's Chromium) run last,
// against the same stack: they install examples/web's packages and build it when needed, serve it
// on free ports and drive two devices of one reader and a second reader. Without Chromium (and no
// root to apt-get it) they are skipped with the reason printed.
//
// With SUPABASE_DB_URL (and optionally SUPABASE_URL + keys) the same suites run against a real
// Supabase stack instead; see README.md.

import { fileURLToPath } from "node:url";
import { runCleanups } from "./stack/cleanup.ts";
import { cliDbUrl, connectionUsesTls, psql, pushMigrations, supabaseCli } from "./stack/database.ts";
import { startLocalStack } from "./stack/stack.ts";
import { databaseTypesDrift } from "./typegen.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

interface SuiteResult {
  name: string;
  passed: number;
  failed: number;
}
const results: SuiteResult[] = [];
const log = (line: string) => console.log(`[readsync] ${line}`);

function check(name: string, ok: boolean, detail = ""): void {
  results.push({ name, passed: ok ? 1 : 0, failed: ok ? 0 : 1 });
  log(`${ok ? "ok    " : "FAILED"} ${name}${detail && !ok ? `\n${detail}` : ""}`);
}

async function listFiles(dir: string, suffix: string): Promise<string[]> {
  const found: string[] = [];
  async function walk(path: string) {
    for await (const entry of Deno.readDir(`${ROOT}${path}`)) {
      if (entry.name === "node_modules" || entry.name.startsWith(".")) continue;
      const rel = `${path}/${entry.name}`;
      if (entry.isDirectory) await walk(rel);
      else if (entry.name.endsWith(suffix)) found.push(rel);
    }
  }
  try {
    await walk(dir);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  return found.sort();
}

/** Runs a command with its output shown live and returned for parsing. */
async function runStreaming(cmd: string, args: string[], env: Record<string, string>) {
  const child = new Deno.Command(cmd, { args, env, cwd: ROOT, stdout: "piped", stderr: "piped" }).spawn();
  let text = "";
  const pump = async (stream: ReadableStream<Uint8Array>, sink: typeof Deno.stdout) => {
    for await (const chunk of stream) {
      text += new TextDecoder().decode(chunk);
      await sink.write(chunk);
    }
  };
  const [status] = await Promise.all([
    child.status,
    pump(child.stdout, Deno.stdout),
    pump(child.stderr, Deno.stderr),
  ]);
  return { ok: status.success, text };
}

/**
 * Schema fingerprint of what migrations 012 and 013 define: triggers, policies, indexes, functions (their
 * bodies, settings, volatility, security definer or not, and grants).
 */
async function schemaFingerprint(dbUrl: string): Promise<string> {
  return await psql(dbUrl, [
    "-At",
    "-c",
    `select string_agg(x, E'\\n' order by x) from (
       select 'policy ' || schemaname || '.' || tablename || ' ' || policyname || ' ' || permissive || ' ' ||
              cmd || ' ' || array_to_string(roles, ',') || ' ' || coalesce(qual, '') || ' ' ||
              coalesce(with_check, '') as x
         from pg_policies where schemaname in ('public', 'realtime')
       union all select 'trigger ' || tgname || ' ' || pg_get_triggerdef(oid) from pg_trigger
         where tgrelid = 'public.reading_progress'::regclass and not tgisinternal
       union all select 'index ' || indexdef from pg_indexes where schemaname = 'public'
       union all select 'function ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) || ' ' ||
              coalesce(p.proconfig::text, '-') || ' ' || p.provolatile::text || ' definer=' || p.prosecdef ||
              ' acl=' || coalesce(p.proacl::text, '-')
         from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname in ('public', 'private')
     ) s`,
  ]);
}

/**
 * The stack as every suite sees it. The JWT secret only when it is known to sign for the API the
 * suites talk to: the local API's own, or the one given with SUPABASE_JWT_SECRET (without it, against
 * another API the stack's development default would mint tokens that API refuses; the suites then
 * sign users in through Auth). READSYNC_LOCAL_REALTIME=1 when Realtime is the local endpoint: tests
 * that run an endpoint of their own (to kill it, or to look inside it) test the stand-in, not a
 * real stack's Realtime, and are skipped otherwise (tests/support/env.ts `localRealtime`).
 */
function stackEnv(stack: Awaited<ReturnType<typeof startLocalStack>>): Record<string, string> {
  const jwtSecretKnown = stack.ownsApi || Boolean(Deno.env.get("SUPABASE_JWT_SECRET"));
  return {
    SUPABASE_URL: stack.apiUrl,
    SUPABASE_ANON_KEY: stack.anonKey,
    SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey,
    // The stack's connection as a URL postgres.js reads (a relay's where none can say it): the suites hand it
    // to postgres.js (adminSql, their own pools and endpoints), which misreads a password file's, a socket
    // directory's or a certificate's URL that psql and the start take.
    SUPABASE_DB_URL: stack.postgresJsDbUrl,
    ...(jwtSecretKnown ? { SUPABASE_JWT_SECRET: stack.jwtSecret } : {}),
    READSYNC_LOCAL_REALTIME: stack.ownsApi ? "1" : "0",
    NO_COLOR: "1",
  };
}

async function main(): Promise<number> {
  const isBrowserSuite = (f: string) => /^(\.\/)?tests\/browser(\/|$)/.test(f);
  const selected = Deno.args.filter((a) => a !== "--");
  const fullRun = selected.length === 0;
  const browserSuite = fullRun || selected.some(isBrowserSuite);
  // The pgTAP files share helpers that the first file (in name order, as `supabase test db` runs
  // them) creates and commits, and the last one drops: they run first and last whenever a pgTAP
  // file runs, selected or not.
  const sqlHelpers = "supabase/tests/000_test_helpers.test.sql";
  const sqlHelpersDrop = "supabase/tests/999_drop_test_helpers.test.sql";
  const withHelpers = (files: string[]) => {
    const tests = files.filter((f) => ![sqlHelpers, sqlHelpersDrop].includes(f.replace(/^\.\//, "")));
    return files.length === 0 ? files : [sqlHelpers, ...tests, sqlHelpersDrop];
  };
  const sqlFiles = withHelpers(
    fullRun ? await listFiles("supabase/tests", ".sql") : selected.filter((f) => f.endsWith(".sql")),
  );
  const denoFiles = fullRun
    ? (await Promise.all(
      ["shared", "tests", "local", "supabase/functions", "bench"].map((d) => listFiles(d, ".test.ts")),
    )).flat()
    : selected.filter((f) => !f.endsWith(".sql") && !isBrowserSuite(f));

  const started = performance.now();
  const stack = await startLocalStack({ apiPort: 0, log });
  log(`stack up in ${Math.round(performance.now() - started)} ms: db ${stack.dbUrl}, api ${stack.apiUrl}`);
  const applied = stack.migrationLog.match(/Applying migration/g)?.length ?? 0;
  check(
    `supabase db push applied the migrations (${applied} applied now)`,
    /up to date/i.test(stack.migrationLog) || applied > 0,
    stack.migrationLog,
  );

  if (fullRun) {
    const second = await pushMigrations(stack.dbUrl);
    check("a second supabase db push is a no-op", !/Applying migration/.test(second), second);

    // The idempotent migrations (012: realtime setup, 013: progress writes, the reserved progress
    // topics, the receive policy on progress: topics only, the new life's strict check) must survive a
    // second run and leave the same schema behind. 012 re-run alone puts its own receive policy back
    // (the one the fifth replaces), so the fifth runs after it in the same step; 013 likewise puts its
    // own new-life check back (the one the sixth replaces). Both also recreate a trigger function
    // without the TimeZone UTC the dates-printed-in-UTC migration gives it, which therefore runs after
    // them too; 013 puts back the changes read whose cursor names no timeline, so the
    // cursor-names-the-timeline migration runs after it. Both put back their conflict-logging trigger
    // (the stamp, the replaced-tie log) that logs for `authenticated` only, so the migration that logs
    // for its members too runs after each; 013 also puts back the write function that logs for any
    // caller with claims, so the migration that logs a user's writes only runs after it. Both put back
    // functions without the extra_float_digits that the percentages-printed-exactly migration sets
    // (the broadcast; the write function, the changes read, the remember-deletion), which runs after
    // them and after the two later migrations that re-create the changes read and the write function
    // (the migrations restating the changes read since, named below, run after it in turn). Its
    // own row needs none after it: it only alters those functions' settings (ALTER FUNCTION ... SET,
    // no body), so alone it leaves each definition it finds in place, the current one (every row
    // before it puts the current ones back, as its check that the schema is the same shows). The
    // migration that starts a tagged cursor over after a failed read restates the changes read (with
    // that setting), so it runs after every migration that puts back an earlier one, and the one whose
    // cursors name their user restates it again (with that check), and the one that folds the user into
    // the cursor's tag once more, and the one that tags a failed read's cursor by its user once more, and
    // the one whose page says when the read started over once more, so each runs after those before it.
    // The two reset rules' migrations put back their triggers' whole WHEN clauses (and functions without
    // that test), so the migration that guards those triggers by one column runs after each. The user-lock
    // migration puts back its trigger function without the wait's PT503, the PT503 one puts it back
    // without the PGRST answer's Retry-After, and the Retry-After one puts it back answering 503 instead
    // of 429, so each later one runs after it. The write function's migration that refuses a loser the
    // table could not hold restates that function (with its extra_float_digits), so it runs after every
    // row that puts an earlier one back; the one that moves the changes read's cursor checks into
    // a helper restates the read, so it runs after every migration that restates the read. The one that
    // refuses a stale update the table could not hold restates the stamp trigger, so it runs after every
    // row that puts an earlier stamp back (012, and the members-of-authenticated one, also in 013's row);
    // the one that gives the reset refusals one hint restates the marked trigger's function, so it runs
    // after every row that puts an earlier one back (the two reset rules', the one-column guard's). The
    // one that refuses an inserted reset with a position first adds a trigger and its function, which no
    // other migration restates. The one that reads the deletions as the owner on an INSERT restates the
    // stamp trigger and the new-life check, so it runs after every row that puts an earlier one back.
    for (
      const [label, ...suffixes] of [
        [
          "012",
          "_realtime_setup.sql",
          "_realtime_receive_policy_progress_topics_only.sql",
          "_progress_dates_printed_in_utc.sql",
          "_conflict_log_members_of_authenticated.sql",
          "_percentages_printed_exactly.sql",
          "_stale_invalid_update_refused.sql",
          "_deletions_read_as_owner_on_insert.sql",
        ],
        [
          "013",
          "_progress_writes.sql",
          "_new_life_created_at_tie.sql",
          "_progress_dates_printed_in_utc.sql",
          "_changes_cursor_names_timeline.sql",
          "_conflict_log_members_of_authenticated.sql",
          "_write_function_logs_users_only.sql",
          "_percentages_printed_exactly.sql",
          "_changes_cursor_unchecked_tag_starts_over.sql",
          "_changes_cursor_names_user.sql",
          "_changes_cursor_user_folded_into_tag.sql",
          "_changes_cursor_failed_read_names_user.sql",
          "_changes_cursor_started_over_reported.sql",
          "_write_function_refuses_invalid_losers.sql",
          "_changes_cursor_checks_in_helper.sql",
          "_stale_invalid_update_refused.sql",
          "_deletions_read_as_owner_on_insert.sql",
        ],
        ["reserving progress topics", "_realtime_progress_topics_reserved.sql"],
        ["receiving on progress: topics only", "_realtime_receive_policy_progress_topics_only.sql"],
        [
          "a new life strictly after the deleted one",
          "_new_life_created_at_tie.sql",
          "_deletions_read_as_owner_on_insert.sql",
        ],
        ["TRUNCATE as a DELETE for devices", "_truncate_reading_progress_as_delete.sql"],
        ["dates printed in UTC", "_progress_dates_printed_in_utc.sql"],
        [
          "the changes cursor names the timeline",
          "_changes_cursor_names_timeline.sql",
          "_percentages_printed_exactly.sql",
          "_changes_cursor_unchecked_tag_starts_over.sql",
          "_changes_cursor_names_user.sql",
          "_changes_cursor_user_folded_into_tag.sql",
          "_changes_cursor_failed_read_names_user.sql",
          "_changes_cursor_started_over_reported.sql",
          "_changes_cursor_checks_in_helper.sql",
        ],
        [
          "conflicts logged for members of authenticated",
          "_conflict_log_members_of_authenticated.sql",
          "_stale_invalid_update_refused.sql",
          "_deletions_read_as_owner_on_insert.sql",
        ],
        [
          "the write function logs a user's writes only",
          "_write_function_logs_users_only.sql",
          "_percentages_printed_exactly.sql",
          "_write_function_refuses_invalid_losers.sql",
        ],
        [
          "a position write supersedes a reset",
          "_position_write_supersedes_reset.sql",
          "_reset_rule_triggers_one_column_when.sql",
          "_reset_refusals_one_hint.sql",
        ],
        [
          "a reset marked without a position takes the zero position",
          "_reset_marked_zeroes_position.sql",
          "_reset_rule_triggers_one_column_when.sql",
          "_reset_refusals_one_hint.sql",
        ],
        ["percentages printed exactly", "_percentages_printed_exactly.sql"],
        [
          "a tagged cursor met by a failed read starts over",
          "_changes_cursor_unchecked_tag_starts_over.sql",
          "_changes_cursor_names_user.sql",
          "_changes_cursor_user_folded_into_tag.sql",
          "_changes_cursor_failed_read_names_user.sql",
          "_changes_cursor_started_over_reported.sql",
          "_changes_cursor_checks_in_helper.sql",
        ],
        [
          "the changes cursor names its user",
          "_changes_cursor_names_user.sql",
          "_changes_cursor_user_folded_into_tag.sql",
          "_changes_cursor_failed_read_names_user.sql",
          "_changes_cursor_started_over_reported.sql",
          "_changes_cursor_checks_in_helper.sql",
        ],
        [
          "the changes cursor's user folded into its tag",
          "_changes_cursor_user_folded_into_tag.sql",
          "_changes_cursor_failed_read_names_user.sql",
          "_changes_cursor_started_over_reported.sql",
          "_changes_cursor_checks_in_helper.sql",
        ],
        [
          "a cursor handed out after a failed read names its user",
          "_changes_cursor_failed_read_names_user.sql",
          "_changes_cursor_started_over_reported.sql",
          "_changes_cursor_checks_in_helper.sql",
        ],
        [
          "the changes page says when the read started over",
          "_changes_cursor_started_over_reported.sql",
          "_changes_cursor_checks_in_helper.sql",
        ],
        [
          "the changes read's cursor checks in one helper",
          "_changes_cursor_checks_in_helper.sql",
        ],
        [
          "one user's writes serialized",
          "_user_writes_serialized.sql",
          "_user_write_wait_answered_503.sql",
          "_user_write_wait_retry_after.sql",
          "_user_write_wait_answered_429.sql",
        ],
        [
          "a user's write that waited too long answered 503",
          "_user_write_wait_answered_503.sql",
          "_user_write_wait_retry_after.sql",
          "_user_write_wait_answered_429.sql",
        ],
        [
          "a user's write that waited too long answered with Retry-After",
          "_user_write_wait_retry_after.sql",
          "_user_write_wait_answered_429.sql",
        ],
        ["a user's write that waited too long answered 429", "_user_write_wait_answered_429.sql"],
        [
          "the reset rules' triggers guarded by one column",
          "_reset_rule_triggers_one_column_when.sql",
          "_reset_refusals_one_hint.sql",
        ],
        [
          "the write function refuses a loser the table could not hold",
          "_write_function_refuses_invalid_losers.sql",
        ],
        [
          "a stale update the table could not hold is refused",
          "_stale_invalid_update_refused.sql",
          "_deletions_read_as_owner_on_insert.sql",
        ],
        ["the reset refusals' one hint", "_reset_refusals_one_hint.sql"],
        [
          "an inserted reset with a position refused first",
          "_reset_inserted_with_position_refused_first.sql",
        ],
        ["the deletions read as the owner on an INSERT", "_deletions_read_as_owner_on_insert.sql"],
      ]
    ) {
      const migrations = await Promise.all(
        suffixes.map(async (suffix) => (await listFiles("supabase/migrations", suffix))[0]),
      );
      const before = await schemaFingerprint(stack.dbUrl);
      // 013 on a project whose `private` schema (Supabase's guides use that name too) lets anon
      // call the project's own helpers: the migration must leave that grant alone.
      const anonUsesPrivate = `select has_schema_privilege('anon', 'private', 'usage')`;
      if (label === "013") await psql(stack.dbUrl, ["-c", "grant usage on schema private to anon"]);
      let rerunError = "";
      try {
        for (const migration of migrations) await psql(stack.dbUrl, ["-1", "-f", `${ROOT}${migration}`]);
      } catch (e) {
        rerunError = (e as Error).message;
      }
      if (label === "013") {
        const kept = (await psql(stack.dbUrl, ["-At", "-c", anonUsesPrivate])).trim() === "t";
        await psql(stack.dbUrl, ["-c", "revoke usage on schema private from anon"]);
        check("migration 013 leaves an existing private schema's grants alone", kept);
      }
      const after = await schemaFingerprint(stack.dbUrl);
      check(`migration ${label} applied a second time succeeds`, rerunError === "", rerunError);
      check(
        `migration ${label} applied a second time leaves the same schema`,
        before === after,
        `${before}\n---\n${after}`,
      );
    }

    // Both schemas the migrations write functions into: `public` (the API's) and `private` (the
    // triggers' and helpers' functions, most of the plpgsql). The CLI lints `public` alone by default.
    const lint = await supabaseCli([
      "db",
      "lint",
      "--db-url",
      cliDbUrl(stack.dbUrl, await connectionUsesTls(stack.dbUrl)),
      "--schema",
      "public,private",
      "--fail-on",
      "error",
    ]);
    log(`supabase db lint: ${lint.output.split("\n").slice(-1)[0]}`);
    check("supabase db lint reports no error on public and private", lint.ok, lint.output);

    // shared/database.types.ts is what `supabase gen types typescript` gives for these migrations
    // (on a database of the stack's own: SUPABASE_DB_URL's public schema may hold more than ours).
    if (stack.ownsDatabase) {
      let typesError: string | null;
      try {
        typesError = await databaseTypesDrift(stack.dbUrl);
      } catch (e) {
        typesError = (e as Error).message;
      }
      check(
        "shared/database.types.ts matches the migrations (postgres-meta, as supabase gen types)",
        !typesError,
        typesError ?? "",
      );
    }

    // The TypeScript stays formatted and lint-clean (deno.json's fmt and lint settings; Markdown is
    // wrapped by hand and the benchmark's generated tables are wider than any line width).
    for (const [name, args] of [["deno fmt --check", ["fmt", "--check"]], ["deno lint", ["lint"]]] as const) {
      const out = await new Deno.Command(`${ROOT}node_modules/.bin/deno`, { args: [...args], cwd: ROOT })
        .output();
      const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      check(`${name} is clean`, out.success, text.slice(-4000));
    }
  }

  // What the pgTAP files may leave behind: 999 drops their helpers' schema, and pgTAP when 000 created it.
  const testLeftovers = `select coalesce(string_agg(extname, ', ' order by extname), '')
      || ' / readsync_tests: ' || (to_regnamespace('readsync_tests') is not null) from pg_extension`;
  const extensionsOnly = (state: string) => state.replace(/ \/ readsync_tests: \w+$/, "");
  const beforePgTap = sqlFiles.length > 0
    ? (await psql(stack.dbUrl, ["-At", "-c", testLeftovers])).trim()
    : "";

  if (sqlFiles.length > 0) {
    log(`pg_prove: ${sqlFiles.length} pgTAP files`);
    const prove = await runStreaming("pg_prove", [
      "--verbose",
      "--ext",
      ".sql",
      "-d",
      stack.dbUrl,
      ...sqlFiles,
    ], {
      PGOPTIONS: "-c search_path=public,extensions",
    });
    const passed = prove.text.match(/^\s*ok \d+/gm)?.length ?? 0;
    let failed = prove.text.match(/^\s*not ok \d+/gm)?.length ?? 0;
    if (!prove.ok && failed === 0) failed = 1; // a plan mismatch or a file that died
    results.push({ name: "pgTAP", passed, failed });
    log(`pgTAP: ${passed} passed, ${failed} failed`);
  }

  const privateSchemaFile = sqlFiles.find((f) => f.endsWith("006_progress_writes.test.sql"));
  if (privateSchemaFile) {
    // A project that already keeps helpers of its own in a schema named `private` (Supabase's guides
    // use that name), open to anon: the migrations leave them alone (see above) and the pgTAP file
    // that checks readsync's part of that schema must still pass beside them.
    const projectHelper = "private.project_owned_helper()";
    await psql(stack.dbUrl, [
      "-c",
      `create function ${projectHelper} returns int language sql as 'select 1';
       grant usage on schema private to anon; grant execute on function ${projectHelper} to anon`,
    ]);
    const beside = await runStreaming("pg_prove", [
      "--ext",
      ".sql",
      "-d",
      stack.dbUrl,
      ...withHelpers([privateSchemaFile]),
    ], { PGOPTIONS: "-c search_path=public,extensions" });
    await psql(stack.dbUrl, [
      "-c",
      `drop function ${projectHelper}; revoke usage on schema private from anon`,
    ]);
    check("pgTAP 006 passes beside a project's own helper in private, open to anon", beside.ok, beside.text);
  }

  if (sqlFiles.length > 0) {
    const afterPgTap = (await psql(stack.dbUrl, ["-At", "-c", testLeftovers])).trim();
    check(
      "the pgTAP files leave the database's extensions as they found them, and no schema readsync_tests",
      extensionsOnly(afterPgTap) === extensionsOnly(beforePgTap) &&
        afterPgTap.endsWith("readsync_tests: false"),
      `before: ${beforePgTap}\nafter:  ${afterPgTap}`,
    );
  }

  if (denoFiles.length > 0) {
    const env = stackEnv(stack);
    const denoBin = `${ROOT}node_modules/.bin/deno`;
    const run = await runStreaming(denoBin, ["test", "-A", "--no-check=remote", ...denoFiles], env);
    const summary = run.text.match(/(\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed/g)?.pop();
    const [, passedText, failedText] = summary?.match(/(\d+) passed.*\| (\d+) failed/) ?? [];
    let passed = Number(passedText ?? 0);
    let failed = Number(failedText ?? 0);
    if (!run.ok && failed === 0) {
      failed = 1; // type errors or a crash before any test ran
      passed = summary ? passed : 0;
    }
    results.push({ name: "deno test", passed, failed });
  }

  if (browserSuite) {
    log("browser tests: node tests/browser/run.mjs");
    const run = await runStreaming("node", [`${ROOT}tests/browser/run.mjs`], stackEnv(stack));
    const counts = run.text.match(/^browser: (\d+) passed, (\d+) failed(?:, (\d+) skipped)?$/m);
    let passed = Number(counts?.[1] ?? 0);
    let failed = Number(counts?.[2] ?? 0);
    const skipped = Number(counts?.[3] ?? 0);
    if (!run.ok && failed === 0) {
      failed = 1; // crashed before its summary
      passed = counts ? passed : 0;
    }
    if (skipped > 0) {
      const reason = run.text.match(/SKIPPED: (.*)$/m)?.[1] ?? "see above";
      log(`browser tests: ${skipped} skipped: ${reason}`);
    }
    results.push({ name: "browser", passed, failed });
  }

  const passed = results.reduce((n, r) => n + r.passed, 0);
  const failed = results.reduce((n, r) => n + r.failed, 0);
  log(`suite time ${Math.round((performance.now() - started) / 1000)} s`);
  console.log(`${passed} passed, ${failed} failed`);
  return failed === 0 && passed > 0 ? 0 : 1;
}

let code = 1;
try {
  code = await main();
} catch (error) {
  console.error(error instanceof Error ? error.stack ?? error.message : error);
  console.log("0 passed, 1 failed");
} finally {
  await runCleanups();
}
Deno.exit(code);
