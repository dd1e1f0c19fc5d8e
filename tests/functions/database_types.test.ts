// The hand-written wire types (shared/progress/types.ts) and the zod row schema agree with the
// database: at compile time with the generated shared/database.types.ts (npm test regenerates it from
// the migrations and fails when the committed copy differs), and at run time with the live columns.
// A column added, dropped or retyped in a migration fails here until the TypeScript follows.

import assert from "node:assert/strict";
import type { z } from "zod";
import type { Database } from "../../shared/database.types.ts";
import type { Progress, ProgressWrite } from "../../shared/progress/types.ts";
import { progressRowSchema } from "../../shared/progress/schemas.ts";
import { adminSql } from "./support.ts";

type Tables = Database["public"]["Tables"];
type Functions = Database["public"]["Functions"];
/** Mutually assignable: the same keys, optionality and value types. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** xid8 is `unknown` to postgres-meta; the API sends it as a decimal string (schemas.ts checks that). */
type WithoutXid<T> = Omit<T, "change_xid">;

const wireRowIsTheTableRow: Same<WithoutXid<Progress>, WithoutXid<Tables["reading_progress"]["Row"]>> = true;
const sameColumns: Same<keyof Progress, keyof Tables["reading_progress"]["Row"]> = true;
const zodRowIsTheTableRow: Same<
  WithoutXid<z.output<typeof progressRowSchema>>,
  WithoutXid<Tables["reading_progress"]["Row"]>
> = true;
const readsReturnTableRows: Same<
  Functions["get_reading_progress"]["Returns"][number],
  Tables["reading_progress"]["Row"]
> = true;
// The edge function's store passes a write to public.write_reading_progress field by field.
type WriteArgs = { [K in keyof ProgressWrite as `p_${K}`]-?: ProgressWrite[K] };
const writeArgsAreTheWire: Same<WriteArgs, Functions["write_reading_progress"]["Args"]> = true;
const writeArgNames: Same<keyof WriteArgs, keyof Functions["write_reading_progress"]["Args"]> = true;

Deno.test("the API's row schema names exactly the columns of reading_progress", async () => {
  assert.ok(
    wireRowIsTheTableRow && sameColumns && zodRowIsTheTableRow && readsReturnTableRows &&
      writeArgsAreTheWire &&
      writeArgNames,
  );
  const sql = adminSql();
  try {
    const columns = await sql<{ column_name: string }[]>`
      select column_name from information_schema.columns
      where table_schema = 'public' and table_name = 'reading_progress' order by column_name`;
    assert.deepEqual(columns.map((c) => c.column_name), Object.keys(progressRowSchema.shape).sort());
  } finally {
    await sql.end();
  }
});
