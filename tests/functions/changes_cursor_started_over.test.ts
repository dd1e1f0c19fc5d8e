// The changes page says when the read started over (migration
// …_changes_cursor_started_over_reported.sql), over real HTTP against the progress function and the
// real database: `started_over: true` where the cursor given was not taken as it stands (another
// reader's, another cluster's) and the page holds the caller's changes from the beginning; no such key
// for no cursor, the caller's own, or the pages read on from a read that started over. Before, such a
// page looked like any other, and an app that stored another user's cursor could not find out.
//
// Safe both ways, checked with the zod schemas: a client of before (its changes page schema copied
// here, as those clients keep it) parses a page with the key, and this client parses a page without it
// (what a function or database of before answers).

import assert from "node:assert/strict";
import { z } from "zod";
import { changesSince } from "../../shared/progress/api.ts";
import { changeItemSchema, changesResponseSchema } from "../../shared/progress/schemas.ts";
import { createTestUser, type TestUser } from "../support/env.ts";
import { call, seriesId, write } from "./support.ts";

/** GET /progress/changes as `user` from `since` (absent: from the beginning): the JSON body as sent. */
async function rawPage(user: TestUser, since?: string, limit?: number): Promise<Record<string, unknown>> {
  const params = new URLSearchParams();
  if (since !== undefined) params.set("since", since);
  if (limit !== undefined) params.set("limit", String(limit));
  const answer = await call("GET", `/changes${params.size ? `?${params}` : ""}`, { token: user.accessToken });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  return answer.body as Record<string, unknown>;
}

/** The cursor a read of `user` from the beginning ends at. */
async function cursorAtEnd(user: TestUser): Promise<string> {
  let cursor: string | undefined;
  for (let i = 0; i < 100; i++) {
    const body = changesResponseSchema.parse(await rawPage(user, cursor));
    cursor = body.next_cursor;
    if (!body.has_more) return cursor;
  }
  throw new Error("more than 100 pages");
}

async function writeAs(user: TestUser, series_id: string): Promise<void> {
  const answer = await call("POST", "", { token: user.accessToken, body: write({ series_id }) });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
}

/**
 * The changes page's schema as app bundles before migration …_changes_cursor_started_over_reported.sql
 * parse it (shared/progress/schemas.ts then): copied, not imported, because those clients keep it
 * whatever this repository's becomes.
 */
const OLD_CLIENT_CHANGES_PAGE = z.object({
  changes: z.array(changeItemSchema),
  next_cursor: z.string(),
  has_more: z.boolean(),
});

Deno.test("GET /progress/changes from another reader's cursor says started_over: true; the caller's own cursor, none, and the pages read on from it have no such key; clients of before and after parse both", async () => {
  const a = await createTestUser();
  const b = await createTestUser();
  const early = seriesId("b-early");
  await writeAs(b, early); // B's progress, written before A's cursor is handed out
  await writeAs(b, seriesId("b-next"));
  await writeAs(a, seriesId("a"));
  const cursorA = await cursorAtEnd(a);

  // B's device was given A's cursor (an app that stored it by device, not by user).
  const fromA = await rawPage(b, cursorA, 1);
  assert.equal(
    fromA.started_over,
    true,
    `B's read of A's cursor ${cursorA} says it started over (was: no key)`,
  );
  const fromAPage = changesResponseSchema.parse(fromA);
  assert.equal(fromAPage.started_over, true, "the client's schema keeps it");
  assert.ok(fromAPage.has_more, "premise: B's read from the beginning has a second page");
  const next = await rawPage(b, fromAPage.next_cursor, 1);
  assert.ok(!("started_over" in next), `the page read on from it has no key: ${JSON.stringify(next)}`);
  assert.equal((await rawPage(b, "0badc0de.1")).started_over, true, "another cluster's cursor: started over");

  // No cursor, and B's own: no key, the page as it always was.
  const fromStart = await rawPage(b);
  assert.deepEqual(
    Object.keys(fromStart).sort(),
    ["changes", "has_more", "next_cursor"],
    "no cursor: no key",
  );
  const own = await rawPage(b, await cursorAtEnd(b));
  assert.deepEqual(Object.keys(own).sort(), ["changes", "has_more", "next_cursor"], "B's own cursor: no key");

  // A client of before parses the page with the key (z.object drops a key it does not know) …
  const old = OLD_CLIENT_CHANGES_PAGE.safeParse(fromA);
  assert.ok(old.success, `a client of before parses a page that started over: ${JSON.stringify(old.error)}`);
  const { started_over: _startedOver, ...asBefore } = fromAPage;
  assert.deepEqual(old.data, asBefore, "… and reads it as the page it knows, the key dropped");
  // … and this client parses a page without it (what a function or database of before answers), or
  // with it false.
  const { started_over: _sent, ...fromOldFunction } = fromA;
  const parsed = changesResponseSchema.safeParse(fromOldFunction);
  assert.ok(parsed.success, `this client parses a page of before: ${JSON.stringify(parsed.error)}`);
  assert.equal(parsed.data.started_over, undefined);
  assert.equal(changesResponseSchema.parse({ ...fromOldFunction, started_over: false }).started_over, false);
});

Deno.test("changesSince (shared/progress/api.ts, real supabase-js) passes started_over on: true from another reader's cursor, absent from the caller's own", async () => {
  const a = await createTestUser();
  const b = await createTestUser();
  await writeAs(b, seriesId("b"));
  await writeAs(a, seriesId("a"));
  const cursorA = await cursorAtEnd(a);
  const cursorB = await cursorAtEnd(b);

  const fromA = await changesSince(b.client, cursorA);
  assert.equal(
    fromA.started_over,
    true,
    `B's read of A's cursor ${cursorA} says it started over (was: undefined)`,
  );
  assert.ok(fromA.changes.length > 0, "premise: B's rows from the beginning");
  const own = await changesSince(b.client, cursorB);
  assert.ok(!("started_over" in own), `B's own cursor: no key (${JSON.stringify(own)})`);
  const fromStart = await changesSince(b.client, null);
  assert.ok(!("started_over" in fromStart), "no cursor: no key");
});
