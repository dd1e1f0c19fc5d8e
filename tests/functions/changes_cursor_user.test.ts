// The changes cursor names its user (migration …_changes_cursor_names_user.sql), over real HTTP
// against the progress function and the real database: a cursor of another reader starts over from the
// beginning, so the caller is given every change of their own (before, it was taken as the caller's
// and every change of theirs made before it was skipped); the caller's own cursor, and one handed out
// before cursors named their user, are taken as they stand. Both through raw requests and through
// shared/progress/api.ts's changesSince on a real supabase-js client.
//
// Since migration …_changes_cursor_user_folded_into_tag.sql the cursor names its user by its one tag
// in the older form ("<tag>.<xid>[:<series_id>]", the user folded into the cluster's tag), which app
// bundles and progress functions deployed before take: the last test checks every cursor handed out
// against the older format's check, copied here as those clients have it.

import assert from "node:assert/strict";
import { changesSince } from "../../shared/progress/api.ts";
import { changesResponseSchema } from "../../shared/progress/schemas.ts";
import type { ChangesResponse } from "../../shared/progress/types.ts";
import { createTestUser, type TestUser } from "../support/env.ts";
import { call, errorOf, seriesId, write } from "./support.ts";

/** GET /progress/changes as `user` from `since` (absent: from the beginning), answered 200. */
async function page(user: TestUser, since?: string, limit?: number): Promise<ChangesResponse> {
  const params = new URLSearchParams();
  if (since !== undefined) params.set("since", since);
  if (limit !== undefined) params.set("limit", String(limit));
  const answer = await call("GET", `/changes${params.size ? `?${params}` : ""}`, { token: user.accessToken });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  return changesResponseSchema.parse(answer.body);
}

/** Every page from `since` to the end; the series read, their change_xids, and the cursor it ends at. */
async function readToEnd(user: TestUser, since?: string, limit?: number) {
  const series: string[] = [];
  const xids: bigint[] = [];
  let cursor = since;
  for (let i = 0; i < 100; i++) {
    const body = await page(user, cursor, limit);
    series.push(...body.changes.map((c) => c.series_id));
    xids.push(...body.changes.map((c) => BigInt(c.change_xid)));
    cursor = body.next_cursor;
    if (!body.has_more) return { series, xids, cursor };
  }
  throw new Error("more than 100 pages");
}

/**
 * The transaction id a cursor reads from: "[<tag>.]<xid>[:<series_id>]" as handed out now, or
 * "[<cluster tag>.]u<user tag>.<xid>[:<series_id>]" as …_changes_cursor_names_user.sql handed it out.
 */
function xidOf(cursor: string): bigint {
  const match = cursor.match(/^(?:[0-9a-f]{8}\.)?(?:u[0-9a-f]{8}\.)?([0-9]+)(?::.+)?$/);
  assert.ok(match, `a changes cursor: ${cursor}`);
  return BigInt(match[1]);
}

/**
 * A read from `cursor` took it as it stands: every row it gave lies at or after the cursor's
 * transaction (a read that started over would give the user's rows before it too, where there are
 * any: the caller checks that there are).
 */
function assertTakenAsItStands(read: { series: string[]; xids: bigint[] }, cursor: string, what: string) {
  for (const [i, xid] of read.xids.entries()) {
    assert.ok(xid >= xidOf(cursor), `${what}: ${read.series[i]} at ${xid} lies before ${cursor}`);
  }
}

async function writeAs(user: TestUser, series_id: string): Promise<void> {
  const answer = await call("POST", "", { token: user.accessToken, body: write({ series_id }) });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
}

/** The tag of a cursor ("<tag>.<xid>[:<series_id>]", the user folded in), or null without one. */
const userTagOf = (cursor: string) => cursor.match(/^([0-9a-f]{8})\.[0-9]/)?.[1] ?? null;

Deno.test("GET /progress/changes from another reader's cursor starts over: the caller is given every change of their own, made before that cursor too", async () => {
  const a = await createTestUser();
  const b = await createTestUser();
  const early = seriesId("b-early");
  const later = seriesId("b-later");
  await writeAs(b, early); // B's progress, written before A's cursor is handed out
  await writeAs(a, seriesId("a"));
  const cursorA = (await readToEnd(a)).cursor!;
  await writeAs(b, later);

  // B's device was given A's cursor (an app that stored it by device, not by user).
  const fromA = await readToEnd(b, cursorA, 1);
  assert.deepEqual(
    [...new Set(fromA.series)].sort(),
    [early, later].sort(),
    `B's progress written before A's cursor ${cursorA} is reported (was: only what came after it)`,
  );
  assert.ok(userTagOf(cursorA), `A's cursor names its user: ${cursorA}`);
  assert.ok(userTagOf(fromA.cursor!), `the cursor B is handed names its user: ${fromA.cursor}`);
  assert.notEqual(userTagOf(fromA.cursor!), userTagOf(cursorA), "B's cursor is not A's user's");

  // B's own cursor is taken as it stands: nothing before it comes again. (A transaction of another
  // test still open may hold the cursors back, below B's rows: then they come again, after it.)
  const full = await readToEnd(b);
  const earlyXid = full.xids[full.series.indexOf(early)];
  assert.ok(earlyXid < xidOf(cursorA), "premise: B's early write lies before A's cursor");
  assertTakenAsItStands(await readToEnd(b, fromA.cursor), fromA.cursor!, "B's own cursor");
  // A cursor without a tag (as handed out where none could be computed, before cursors named their
  // user) is taken as it stands, as before: it cannot be told whose it is.
  const untagged = cursorA.replace(/^[0-9a-f]{8}\./, "");
  assert.notEqual(untagged, cursorA);
  const fromUntagged = await readToEnd(b, untagged);
  assertTakenAsItStands(fromUntagged, untagged, "an untagged cursor");
  assert.ok(
    !fromUntagged.series.includes(early),
    "an untagged cursor is read as before: B's early write skipped",
  );
});

Deno.test("changesSince (shared/progress/api.ts, real supabase-js) from another reader's cursor ends with every change of its user; a malformed user tag is a 422, not a 500", async () => {
  const a = await createTestUser();
  const b = await createTestUser();
  const own = [seriesId("b-1"), seriesId("b-2"), seriesId("b-3")];
  for (const id of own) await writeAs(b, id);
  await writeAs(a, seriesId("a"));
  let cursor: string | null = (await readToEnd(a)).cursor!;

  const got = new Set<string>();
  for (let i = 0; i < 100; i++) {
    const body = await changesSince(b.client, cursor, { limit: 2 });
    for (const change of body.changes) got.add(change.series_id);
    cursor = body.next_cursor;
    if (!body.has_more) break;
  }
  assert.deepEqual([...got].sort(), [...own].sort(), "every change of B (was: none, all before A's cursor)");
  assert.equal(userTagOf(cursor!)?.length, 8, `the client is handed a cursor of its user: ${cursor}`);

  for (const bad of ["u0badc0d.5", "uABCDEF01.5", "u0badc0de.", "u0badc0de5"]) {
    const answer = await call("GET", `/changes?since=${encodeURIComponent(bad)}`, { token: b.accessToken });
    assert.equal(answer.status, 422, `${bad}: ${JSON.stringify(answer.body)}`);
    assert.equal(errorOf(answer).code, "validation_failed", bad);
  }
});

/**
 * The changes cursor's format as app bundles and progress functions deployed before migration
 * …_changes_cursor_names_user.sql check it (CHANGES_CURSOR then; subscribeToProgress's initialCursor,
 * the function's `since`): copied, not imported, because those clients keep it whatever this
 * repository's becomes. A bundle that stored a cursor it refuses throws at every later subscribe.
 */
const OLD_CLIENT_CHANGES_CURSOR =
  /^(?:(?:[0-9a-f]{8}\.)?[0-9]{1,19}(?::[A-Za-z0-9][A-Za-z0-9._:-]{0,127})?)?$/;

Deno.test("every cursor GET /progress/changes and changesSince hand out is one an older client's check takes (the user folded into the one tag)", async () => {
  const a = await createTestUser();
  const b = await createTestUser();
  for (const id of [seriesId("a-1"), seriesId("a-2"), seriesId("a-3")]) await writeAs(a, id);
  await writeAs(b, seriesId("b"));

  const handedOut: string[] = [];
  const keep = (cursor: string | null | undefined) => {
    assert.ok(typeof cursor === "string", `a cursor: ${cursor}`);
    handedOut.push(cursor);
  };
  // Full pages (a cursor with its series), last pages, from the beginning, from the caller's own
  // cursor, from another user's, from a cursor of the older forms.
  let cursor: string | undefined;
  for (let i = 0; i < 100; i++) {
    const body = await page(a, cursor, 1);
    keep(body.next_cursor);
    cursor = body.next_cursor;
    if (!body.has_more) break;
  }
  const ownA = (await readToEnd(a)).cursor!;
  keep(ownA);
  keep((await readToEnd(a, ownA)).cursor);
  const fromA = await readToEnd(b, ownA, 1);
  keep(fromA.cursor);
  keep((await readToEnd(b, ownA.replace(/^[0-9a-f]{8}\./, ""))).cursor);
  keep((await readToEnd(b, `u${"0".repeat(8)}.${xidOf(ownA)}`)).cursor);
  let viaClient: string | null = null;
  for (let i = 0; i < 100; i++) {
    const body = await changesSince(a.client, viaClient, { limit: 2 });
    keep(body.next_cursor);
    viaClient = body.next_cursor;
    if (!body.has_more) break;
  }

  for (const handed of handedOut) {
    assert.match(handed, OLD_CLIENT_CHANGES_CURSOR, `an older client takes the cursor handed out: ${handed}`);
  }
  assert.ok(userTagOf(ownA), `the cursor names its user by its tag: ${ownA}`);
  assert.notEqual(userTagOf(fromA.cursor!), userTagOf(ownA), "B's cursor's tag is not A's");
});
