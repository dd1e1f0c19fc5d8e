// The changes read with its cursor checks in one helper (migration …_changes_cursor_checks_in_helper.sql)
// answers every cursor as the read it replaced did, and reads the rows with the same plan: in one
// repeatable-read transaction (one snapshot, so the same horizon and the same rows), the same calls
// are made against the read as migrated, then against …_changes_cursor_started_over_reported.sql's read
// applied again in that transaction (rolled back at the end), and the answers (or SQLSTATEs) and the
// plans of the read's inner statement (auto_explain's nested statements; costs and row estimates left
// out, which a concurrent ANALYZE may move, and parameters numbered by appearance) must be equal. The
// cursors: no tag, the caller's folded tag, another user's, this cluster's plain tag, the u-form of the
// caller and of another user, the tag of the user alone of both, another cluster's; at the beginning,
// among the rows, after a row (with its series), within the million-ids margin and beyond it; limits
// 1, 2 and 100; invalid cursors. Three settings of the database: as it is, after a restore's adoption
// (an origin drawn), and where the caller may not call pg_control_system() (the system identifier not
// read this session).

import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import type postgres from "postgres";
import { createTestUser } from "../support/env.ts";
import { adminSql } from "./support.ts";

const OLD_READ = new URL(
  "../../supabase/migrations/20261207150000_changes_cursor_started_over_reported.sql",
  import.meta.url,
);

type Json = Record<string, unknown>;

/** A plan as auto_explain reports it (JSON), without what statistics may move: costs and estimates. */
function planShape(node: Json): Json {
  const shape: Json = {};
  for (const [key, value] of Object.entries(node)) {
    if (["Startup Cost", "Total Cost", "Plan Rows", "Plan Width"].includes(key)) continue;
    shape[key] = key === "Plans" ? (value as Json[]).map(planShape) : value;
  }
  return shape;
}

/**
 * A plan's parameters numbered by their first appearance: a plpgsql variable is the parameter of its
 * number among the function's variables ($20 in the read of before, $7 in the read that calls the
 * helper), which says nothing of the plan.
 */
function renumberParams(plan: string): string {
  const seen = new Map<string, string>();
  return plan.replace(/\$\d+/g, (param) => {
    if (!seen.has(param)) seen.set(param, `$p${seen.size + 1}`);
    return seen.get(param)!;
  });
}

Deno.test("changes read: the cursor checks in a helper give every cursor the answer and the plan of the read before", async () => {
  const notices: string[] = [];
  const sql = adminSql({ max: 1, onnotice: (n) => notices.push(String(n.message)) });
  const owner = await createTestUser();
  const other = await createTestUser();
  const asUser = async (userId: string, statement: (tx: postgres.TransactionSql) => Promise<unknown>) => {
    await sql.begin(async (tx) => {
      await tx`select set_config('role', 'authenticated', true),
                      set_config('request.jwt.claims', ${
        JSON.stringify({ sub: userId, role: "authenticated" })
      }, true)`;
      await statement(tx);
    });
  };
  try {
    // Rows of both users in transactions of their own (committed before the snapshot), and a
    // remembered deletion of the owner's, so both sides of the read have rows.
    for (const [i, series] of ["a", "b", "c", "gone"].entries()) {
      await asUser(
        owner.id,
        (tx) =>
          tx`select public.write_reading_progress(${series}, ${
            i + 1
          }, 1, 0.1, false, 'phone', now() - interval '1 hour')`,
      );
    }
    await asUser(owner.id, (tx) => tx`delete from public.reading_progress where series_id = 'gone'`);
    await asUser(
      other.id,
      (tx) =>
        tx`select public.write_reading_progress('x', 1, 1, 0.1, false, 'phone', now() - interval '1 hour')`,
    );

    await sql`load 'auto_explain'`;
    await sql.begin("isolation level repeatable read", async (tx) => {
      await tx.unsafe(`set local auto_explain.log_min_duration = 0;
        set local auto_explain.log_nested_statements = on;
        set local auto_explain.log_format = json;
        set local auto_explain.log_level = notice`);
      const [{ b, xmax, cluster, origin }] = await tx<
        { b: string; xmax: string; cluster: string; origin: string | null }[]
      >`
        select (select change_xid::text from public.reading_progress where user_id = ${owner.id} and series_id = 'b') as b,
               pg_snapshot_xmax(pg_current_snapshot())::text as xmax,
               (select system_identifier::text from pg_control_system()) as cluster,
               (select o.origin from private.reading_progress_cursor_origin o) as origin`;
      const md5Hex = async (text: string) => {
        const [{ tag }] = await tx<{ tag: string }[]>`select left(md5(${text}), 8) as tag`;
        return tag;
      };
      // The tags, in every form, as this cluster (timeline 1) makes them with and without an origin.
      const tagsFor = async (originNow: string | null, withSystem: boolean) => {
        const madeOf = `${withSystem ? cluster : ""}${originNow ?? ""}`;
        const plain = madeOf === "" ? null : await md5Hex(madeOf);
        const tags: (string | null)[] = [
          null,
          await md5Hex(`${madeOf}:${owner.id}`),
          await md5Hex(`${madeOf}:${other.id}`),
          plain,
          `${plain ? `${plain}.` : ""}u${await md5Hex(owner.id)}`,
          `${plain ? `${plain}.` : ""}u${await md5Hex(other.id)}`,
          await md5Hex(`:${owner.id}`),
          await md5Hex(`:${other.id}`),
          "0badc0de",
        ];
        return tags;
      };
      const positions = ["0", b, `${b}:b`, String(BigInt(xmax) + 1000n), String(BigInt(xmax) + 2_000_000n)];
      const cursorsFor = (tags: (string | null)[]) => [
        null,
        "",
        "nope",
        `${tags[1]}.-1`,
        ...tags.flatMap((tag) => positions.map((p) => (tag === null ? p : `${tag}.${p}`))),
      ];

      const call = async (userId: string, cursor: string | null, limit: number) => {
        await tx`select set_config('role', 'authenticated', true),
                        set_config('request.jwt.claims', ${
          JSON.stringify({ sub: userId, role: "authenticated" })
        }, true)`;
        try {
          await tx`savepoint a_read`;
          const [{ page }] = await tx<{ page: string }[]>`
            select public.reading_progress_changes(${cursor}, ${limit})::text as page`;
          await tx`release savepoint a_read`;
          return page;
        } catch (e) {
          await tx`rollback to savepoint a_read`;
          return `error ${(e as { code?: string }).code}`;
        } finally {
          await tx`select set_config('role', 'none', true)`;
        }
      };
      // Every call of one read: its answers, and the plans of its inner statement in call order.
      const readAll = async () => {
        const answers: string[] = [];
        notices.length = 0;
        const settings: [string, () => Promise<unknown>, () => Promise<unknown>, string | null, boolean][] = [
          ["as it is", async () => {}, async () => {}, origin, true],
          [
            "after an adoption",
            () =>
              tx`insert into private.reading_progress_cursor_origin (singleton, origin) values (true, 'helper-test')
                 on conflict (singleton) do update set origin = excluded.origin`,
            () =>
              origin === null
                ? tx`delete from private.reading_progress_cursor_origin`
                : tx`update private.reading_progress_cursor_origin set origin = ${origin}`,
            "helper-test",
            true,
          ],
          [
            "no pg_control_system()",
            () =>
              tx.unsafe(`revoke execute on function pg_control_system() from public;
                select set_config('readsync.system_identifier', '', false)`),
            () => tx`grant execute on function pg_control_system() to public`,
            origin,
            false,
          ],
        ];
        for (const [label, enter, leave, originNow, withSystem] of settings) {
          await enter();
          for (const cursor of cursorsFor(await tagsFor(originNow, withSystem))) {
            for (const limit of [1, 2, 100]) {
              for (const [who, userId] of [["owner", owner.id], ["other", other.id]]) {
                answers.push(
                  `${label} | ${who} | ${cursor} | ${limit} => ${await call(userId, cursor, limit)}`,
                );
              }
            }
          }
          await leave();
        }
        const plans = notices
          .filter((n) => n.includes("plan:"))
          .map((n) => JSON.parse(n.slice(n.indexOf("{"))) as { "Query Text": string; Plan: Json })
          .filter((p) =>
            /from public\.reading_progress rp/.test(p["Query Text"]) && /union all/.test(p["Query Text"])
          )
          .map((p) => renumberParams(JSON.stringify(planShape(p.Plan))));
        return { answers, plans };
      };

      // The read as migrated, then the read of before, then the read as migrated again: the planner reads
      // statistics and the tables' sizes as they are now, not as of the snapshot, so an autoanalyze or
      // another test's rows between two reads may move a plan (a Sort for a Merge Append) with no change
      // of the read. Such a move happens at most once in these seconds, so of the two neighbours of the
      // read of before one saw the statistics it saw.
      const [{ migrated }] = await tx<{ migrated: string }[]>`
        select pg_get_functiondef('public.reading_progress_changes'::regproc) as migrated`;
      const now = await readAll();
      await tx.unsafe(await Deno.readTextFile(OLD_READ));
      const before = await readAll();
      await tx.unsafe(migrated);
      const nowAgain = await readAll();

      assert.ok(now.answers.length > 500, `premise: ${now.answers.length} calls`);
      assert.ok(
        now.answers.some((a) => a.includes('"started_over": true')) &&
          now.answers.some((a) => a.includes("error 22023")) &&
          now.answers.some((a) => a.includes('"has_more": true')),
        "premise: reads that started over, refused cursors and pages with more to come",
      );
      assert.deepEqual(now.answers, before.answers, "every answer is the read's of before");
      assert.equal(
        now.plans.length,
        now.answers.filter((a) => !a.includes("=> error")).length,
        "premise: one plan of the inner statement per read that ran",
      );
      assert.deepEqual(nowAgain.answers, now.answers, "premise: the read as migrated restored");
      if (!isDeepStrictEqual(now.plans, before.plans)) {
        assert.deepEqual(
          nowAgain.plans,
          before.plans,
          "the inner statement's plans are the read's of before",
        );
      }
      throw new RolledBack();
    }).catch((e) => {
      if (!(e instanceof RolledBack)) throw e;
    });
  } finally {
    await sql.end();
  }
});

class RolledBack extends Error {}
