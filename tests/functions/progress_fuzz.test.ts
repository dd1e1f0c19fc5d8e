// A seeded generative test of the progress function over real HTTP: valid requests for every route
// (write, batch, list, changes, one series, reset), each put through random mutations of its body,
// values, query string, path, method and headers (tokens included), then sent. What must hold for
// every answer (README, "Errors"):
//   - a 2xx, or a status of the error table with the JSON error body and the code(s) documented for
//     that status (`details` an object; an invalid_request lists its issues); never a 5xx;
//   - a 2xx body is what the response schemas (shared/progress/schemas.ts) describe;
//   - a refused request changed nothing: the user's rows, conflict log and remembered deletions, and
//     the bystander's, are as before;
//   - an accepted write changed no series but its own, and each row read back from PostgreSQL, as the
//     superuser and as the user (RLS), is the one the answer carries; a write that won stored what was
//     sent (the position as sent; the date as sent, or later when it was re-keyed, or earlier when it
//     was dated far ahead); the bystander sees none of it;
//   - the function stays up (a plain write goes through at the end, and every 50 cases).
// It prints its seed, new each run (seedFromEnv); READSYNC_FUZZ_SEED=<seed> replays the same requests (but
// for the users' ids, random UUIDs and the dates far ahead, which count from the clock),
// READSYNC_FUZZ_CASES=<n> sends more (default 300).
// Nothing here depends on how long anything took.

import assert from "node:assert/strict";
import { mintUserAccessToken, signDevJwt } from "../../local/stack/keys.ts";
import {
  batchWriteResponseSchema,
  changesResponseSchema,
  progressListResponseSchema,
  progressResponseSchema,
  writeResultSchema,
} from "../../shared/progress/schemas.ts";
import { toProgress } from "../../shared/progress/store.ts";
import type { Progress, WriteResult } from "../../shared/progress/types.ts";
import { createTestUser, type TestUser } from "../support/env.ts";
import { casesFromEnv, type SeededRandom, seededRandom, seedFromEnv } from "../support/seededRandom.ts";
import { adminSql, FUNCTION_URL, testEnv } from "./support.ts";

const SEED = seedFromEnv("READSYNC_FUZZ_SEED");
const CASES = casesFromEnv("READSYNC_FUZZ_CASES", 300);

// ------------------------------------------------------------------------------------ JSON text

/**
 * A value written into the JSON text as is (a number JSON.stringify cannot write: 1e400, -0.0, 1E2):
 * carried through JSON.stringify as a marked string and unquoted afterwards.
 */
const raw = (text: string) => `\u0001RAW:${text}\u0001`;
function toJsonText(value: unknown): string {
  return JSON.stringify(value).replace(/"\\u0001RAW:((?:[^"\\]|\\.)*?)\\u0001"/g, (_, t: string) => t);
}

// ------------------------------------------------------------------------------------ value pools

const NUMBERS: unknown[] = [
  0,
  raw("-0"),
  raw("-0.0"),
  raw("0e5"),
  raw("0E-5"),
  -1,
  1,
  raw("1.0"),
  raw("1E0"),
  raw("1e2"),
  1.5,
  0.5,
  0.9999999999999999,
  1.0000000000000002,
  5e-324,
  raw("1e-400"),
  -5e-324,
  2 ** 31 - 1,
  2 ** 31,
  2 ** 53,
  2 ** 53 + 2,
  raw("9007199254740993"),
  1e308,
  -1e308,
  raw("1e400"),
  raw("-1e400"),
  100000,
  100001,
  1000000,
  1000001,
  raw("100000.0"),
  raw("1000000.000000000001"),
  "NaN",
  "Infinity",
  "-Infinity",
  "5",
  "0x10",
  "1e2",
  "",
];

const STRINGS: unknown[] = [
  "",
  " ",
  "a",
  "A.b_c:d-e",
  "-starts-with-dash",
  ".dot",
  "has space",
  "slash/inside",
  "percent%41",
  "x".repeat(128),
  "y".repeat(129),
  "z".repeat(5000),
  "nul\u0000byte",
  "\u0000",
  "lone\ud800surrogate",
  "\udc00",
  "rtl\u202eevil",
  "\u200bzero-width",
  "emoji-📚",
  "ünïcödé",
  "tab\tnew\nline",
  "trailing ",
  "a\\b",
  'quote"d',
  "null",
  "true",
  "0",
  "user_id",
  "__proto__",
  "constructor",
  "<script>",
  "'; drop table reading_progress; --",
];

/** Dates far from now (clearly in the past or far ahead), so "ahead" is never a matter of timing. */
function dates(r: SeededRandom): string[] {
  const pastMs = Date.UTC(
    2000 + r.int(25),
    r.int(12),
    1 + r.int(28),
    r.int(24),
    r.int(60),
    r.int(60),
    r.int(1000),
  );
  const past = new Date(pastMs).toISOString();
  return [
    past,
    past.replace("Z", "+00:00"),
    past.replace("Z", "-00:00"),
    past.replace(".", ",").replace(/Z$/, "Z"),
    past.replace("Z", "+14:00"),
    past.replace("Z", "-12:00"),
    past.replace("Z", "+05:30"),
    past.replace("Z", "+0530"),
    past.replace("Z", "+05"),
    past.replace("Z", "+24:00"),
    past.replace("Z", "z"),
    past.replace("T", "t"),
    past.replace("T", " "),
    past.replace("Z", ""),
    past.slice(0, 16) + "Z",
    past.slice(0, 10),
    past.slice(0, 19) + "." + "123456789012".slice(0, 1 + r.int(12)) + "Z",
    past.slice(0, 19) + ".Z",
    "2016-12-31T23:59:60Z",
    "2026-01-01T24:00:00Z",
    "2026-02-29T12:00:00Z",
    "2024-02-29T12:00:00Z",
    "2026-02-30T12:00:00Z",
    "2026-13-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "1969-12-31T23:59:59.999Z",
    "1970-01-01T00:00:00Z",
    "1970-01-01T00:00:00.000+00:01",
    "1970-01-01T00:59:59+01:00",
    "9999-12-31T23:59:59.999Z",
    "9999-12-31T23:59:59.999-00:01",
    "9999-12-31T23:59:59.999+14:00",
    "10000-01-01T00:00:00Z",
    "+010000-01-01T00:00:00Z",
    "+002026-01-01T00:00:00Z",
    "-000001-01-01T00:00:00Z",
    "2026-W01-1T00:00:00Z",
    "20260101T000000Z",
    "now",
    "infinity",
    "epoch",
    "Sat, 05 Dec 2026 12:00:00 GMT",
    new Date(Date.now() + 86_400_000 * (1 + r.int(3000))).toISOString(), // far ahead
    "2999-01-01T00:00:00Z",
  ];
}

function junk(r: SeededRandom, depth = 0): unknown {
  switch (r.int(depth > 2 ? 4 : 8)) {
    case 0:
      return null;
    case 1:
      return r.chance(0.5);
    case 2:
      return r.pick(NUMBERS);
    case 3:
      return r.pick(STRINGS);
    case 4:
      return [];
    case 5:
      return {};
    case 6:
      return [junk(r, depth + 1), junk(r, depth + 1)];
    default:
      return { [r.pick(["a", "chapter", "user_id", "writes", ""])]: junk(r, depth + 1) };
  }
}

/** [[[[...0...]]]] or {"a":{"a":...}}, up to the body limit and beyond. */
function deep(r: SeededRandom): unknown {
  const n = r.pick([10, 1000, 20_000, 40_000]);
  return r.chance(0.5)
    ? raw("[".repeat(n) + "0" + "]".repeat(n))
    : raw('{"a":'.repeat(n) + "0" + "}".repeat(n));
}

// ------------------------------------------------------------------------------------ requests

interface Ctx {
  a: TestUser;
  b: TestUser;
  series: string[];
  devices: string[];
  tokens: Record<string, string>;
}

type WriteFields = Record<string, unknown>;

function validWrite(r: SeededRandom, ctx: Ctx): WriteFields {
  const cleared = r.chance(0.1);
  const w: WriteFields = {
    series_id: r.pick(ctx.series),
    chapter: cleared ? 0 : r.int(100_001),
    page: cleared ? 0 : r.int(1_000_001),
    percentage: cleared ? 0 : r.pick([0, 1, r.next(), Math.round(r.next() * 100) / 100]),
    device_id: r.pick(ctx.devices),
    updated_at: r.chance(0.85) ? dates(r)[0] : r.pick(dates(r).slice(0, 13)),
  };
  if (cleared || r.chance(0.2)) w.cleared = cleared;
  return w;
}

const FIELDS = ["series_id", "chapter", "page", "percentage", "cleared", "device_id", "updated_at"];

/** One random mutation of a write's fields (the object itself). */
function mutateWrite(r: SeededRandom, w: WriteFields): string {
  const field = r.pick(FIELDS);
  switch (r.int(9)) {
    case 0:
      delete w[field];
      return `drop ${field}`;
    case 1: {
      const name = r.pick([
        "user_id",
        "Chapter",
        "chapter ",
        "",
        "__proto__",
        "constructor",
        "séries_id",
        "extra",
      ]);
      // An own property even for "__proto__" (an assignment would set the prototype), as JSON.parse makes it.
      Object.defineProperty(w, name, {
        value: w[field] ?? junk(r),
        enumerable: true,
        writable: true,
        configurable: true,
      });
      if (r.chance(0.5)) delete w[field];
      return `rename ${field} -> ${JSON.stringify(name)}`;
    }
    case 2:
      w[field] = junk(r);
      return `swap ${field}`;
    case 3:
      w[r.pick(["chapter", "page", "percentage"])] = r.pick(NUMBERS);
      return `number`;
    case 4:
      w[r.pick(["series_id", "device_id", "updated_at"])] = r.pick(STRINGS);
      return `string`;
    case 5:
      w.updated_at = r.pick(dates(r));
      return `date ${w.updated_at}`;
    case 6:
      w.cleared = r.pick([true, false, null, "true", 1, 0]);
      return `cleared ${JSON.stringify(w.cleared)}`;
    case 7:
      w.user_id = r.pick([crypto.randomUUID(), "", null]);
      return "user_id";
    default:
      w[field] = deep(r);
      return `deep ${field}`;
  }
}

interface Req {
  method: string;
  /** After /progress, e.g. "/batch". */
  path: string;
  query: [string, string][] | string;
  headers: Record<string, string>;
  body?: string | Uint8Array;
  /** For checking an accepted write: the writes the request sends (as parsed by JSON.parse). */
  kind: "write" | "batch" | "reset" | "list" | "changes" | "get";
  log: string[];
}

function buildRequest(r: SeededRandom, ctx: Ctx): Req {
  const kind = r.pick(["write", "write", "batch", "batch", "reset", "list", "changes", "get"] as const);
  const headers: Record<string, string> = { authorization: `Bearer ${ctx.tokens.a}` };
  const log: string[] = [kind];
  const req: Req = { method: "GET", path: "", query: [], headers, kind, log };
  const mutations = r.chance(0.2) ? 0 : 1 + r.int(3);
  let bodyValue: unknown;
  switch (kind) {
    case "write":
      req.method = "POST";
      bodyValue = validWrite(r, ctx);
      headers["content-type"] = "application/json";
      break;
    case "batch": {
      req.method = "POST";
      req.path = "/batch";
      const n = r.pick([1, 1, 2, 3, 5, 20, 100]);
      bodyValue = { writes: Array.from({ length: n }, () => validWrite(r, ctx)) };
      headers["content-type"] = "application/json";
      break;
    }
    case "reset":
      req.method = "DELETE";
      req.path = `/series/${encodeURIComponent(r.pick(ctx.series))}`;
      req.query = [["device_id", r.pick(ctx.devices)], ["updated_at", dates(r)[0]]];
      break;
    case "list":
      req.query = r.pick([
        [],
        [["limit", String(1 + r.int(200))]],
        [["include_cleared", r.pick(["true", "false"])]],
        [["limit", "2"], ["cursor", `${dates(r)[0]}|${r.pick(ctx.series)}`]],
      ]);
      break;
    case "changes":
      req.path = "/changes";
      req.query = r.pick([[], [["since", ""]], [["since", String(r.int(1000))], [
        "limit",
        String(1 + r.int(500)),
      ]]]);
      break;
    case "get":
      req.path = `/series/${encodeURIComponent(r.pick(ctx.series))}`;
      break;
  }

  let bodyText: string | Uint8Array | undefined;
  const textMutations: ((t: string) => string | Uint8Array)[] = [];
  for (let i = 0; i < mutations; i++) {
    const target = r.int(bodyValue === undefined ? 5 : 8);
    if (target >= 5) {
      // The body.
      const plainBody = typeof bodyValue === "object" && bodyValue !== null && !Array.isArray(bodyValue);
      if (kind === "batch" && plainBody && r.chance(0.7)) {
        const writes = (bodyValue as { writes: unknown }).writes;
        if (Array.isArray(writes) && writes.length > 0 && r.chance(0.7)) {
          const el = writes[r.int(writes.length)];
          if (el && typeof el === "object" && !Array.isArray(el)) {
            log.push(`writes[]: ${mutateWrite(r, el as WriteFields)}`);
          } else writes[r.int(writes.length)] = junk(r);
        } else {
          const choice = r.int(6);
          const body = bodyValue as Record<string, unknown>;
          if (choice === 0) body.writes = [];
          else if (choice === 1) {
            body.writes = Array.from({ length: 101 }, () => validWrite(r, ctx));
          } else if (choice === 2) body.writes = junk(r);
          else if (choice === 3) body.user_id = crypto.randomUUID();
          else if (choice === 4) body.writes = Array.isArray(writes) ? writes[0] : writes;
          else body.writes = Array.isArray(writes) ? [writes] : writes;
          log.push(`batch body ${choice}`);
        }
      } else if ((kind === "write" || kind === "batch") && plainBody && r.chance(0.6)) {
        const w = kind === "write"
          ? bodyValue as WriteFields
          : ((bodyValue as { writes: WriteFields[] }).writes?.[0] ?? {}) as WriteFields;
        if (w && typeof w === "object") log.push(mutateWrite(r, w));
      } else {
        const choice = r.int(9);
        log.push(`body ${choice}`);
        if (choice === 0) bodyValue = junk(r);
        else if (choice === 1) bodyValue = [bodyValue];
        else if (choice === 2) bodyValue = deep(r);
        else if (choice === 3) {
          textMutations.push((t) =>
            t.replace(/^\{/, `{"${r.pick(["chapter", "writes", "series_id", "page"])}": 7, `)
          );
        } else if (choice === 4) textMutations.push((t) => t.slice(0, r.int(t.length)));
        else if (choice === 5) {
          textMutations.push((t) => {
            const bytes = new TextEncoder().encode(t);
            const at = r.int(bytes.length + 1);
            const bad = r.pick([[0xff], [0xed, 0xa0, 0x80], [0xc0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x00]]);
            return new Uint8Array([...bytes.subarray(0, at), ...bad, ...bytes.subarray(at)]);
          });
        } else if (choice === 6) {
          textMutations.push((t) =>
            r.pick(["\ufeff", " \n\t", ""]) + t + r.pick(["", " ", "\n", "x", ",", "}"])
          );
        } else if (choice === 7) textMutations.push((t) => t + " ".repeat(r.pick([1, 70_000])));
        else {textMutations.push(() =>
            r.pick(["", "null", "0", '""', "[]", "{}", "true", "\u0000", '{"writes":'])
          );}
      }
    } else if (target === 0) {
      // Headers (the token among them).
      const choice = r.int(14);
      log.push(`header ${choice}`);
      if (choice === 0) {
        const t = r.pick(Object.keys(ctx.tokens));
        headers.authorization = `Bearer ${ctx.tokens[t]}`;
        log.push(`token ${t}`);
      } else if (choice === 1) {
        headers.authorization = r.pick([
          "",
          "Bearer",
          "Bearer ",
          `bearer ${ctx.tokens.a}`,
          `BEARER   ${ctx.tokens.a}  `,
          `Bearer\t${ctx.tokens.a}`,
          `Bearer ${ctx.tokens.a} ${ctx.tokens.a}`,
          `Bearer ${ctx.tokens.a},`,
          `Basic ${btoa("a:b")}`,
          `Token ${ctx.tokens.a}`,
          ctx.tokens.a,
          `Bearer ${ctx.tokens.a.slice(0, -3)}`,
          `Bearer ${ctx.tokens.a}x`,
          `Bearer ${"x".repeat(5000)}`,
          "Bearer a.b.c",
          "Bearer ...",
          "Bearer e30.e30.",
        ]);
      } else if (choice === 2) delete headers.authorization;
      else if (choice === 3) {
        headers["content-type"] = r.pick([
          "text/plain",
          "application/json; charset=utf-8",
          "application/json; charset=UTF-16",
          'application/json; charset="iso-8859-1"',
          "application/json;charset=utf8",
          "application/json; charset=us-ascii",
          "APPLICATION/JSON",
          "application/vnd.api+json",
          "application/json, text/plain",
          ";;;",
          "application/x-www-form-urlencoded",
          "multipart/form-data; boundary=x",
          "application/jsonx",
          "",
        ]);
      } else if (choice === 4) delete headers["content-type"];
      else if (choice === 5) {
        headers.accept = r.pick([
          "text/html",
          "application/json;q=0",
          "*/*;q=0",
          "*/*",
          "application/*",
          "application/json; q=0.001",
          "text/html, application/json;q=0.1",
          "application/json;q=0, */*",
          ";;;q=",
          "application/json;q=abc",
          "",
          "APPLICATION/JSON",
        ]);
      } else if (choice === 6) headers["content-encoding"] = r.pick(["gzip", "identity", "br, identity", ""]);
      else if (choice === 7) {
        headers["x-act-as-user"] = r.pick([ctx.a.id, ctx.a.id.toUpperCase(), ctx.b.id, "", "x"]);
      } else if (choice === 8) headers["x-request-id"] = r.pick(["", "x".repeat(500), "a b", "ok-1"]);
      else if (choice === 9) headers.origin = r.pick(["https://evil.example", "null", ""]);
      else if (choice === 10) {
        // service_role: for A (acts as A), without the header (403), or for a user that does not exist.
        headers.authorization = `Bearer ${ctx.tokens.service}`;
        const who = r.pick(["a", "none", "nobody"]);
        delete headers["x-act-as-user"];
        if (who === "a") headers["x-act-as-user"] = ctx.a.id;
        else if (who === "nobody") headers["x-act-as-user"] = crypto.randomUUID();
        log.push(`service as ${who}`);
      } else if (choice === 11) headers["x-region"] = "us-east-1";
      else if (choice === 12) headers["content-language"] = "\u00e9";
      else headers["transfer-encoding"] = "chunked";
    } else if (target === 1) {
      // Query string.
      const choice = r.int(12);
      log.push(`query ${choice}`);
      const q = typeof req.query === "string" ? [] : req.query;
      if (choice === 0) {
        q.push([r.pick(["limit", "cursor", "since", "include_cleared", "device_id", "updated_at"]), "1"]);
      } else if (choice === 1) {
        q.push([
          r.pick(["user_id", "x", "", "Limit", "forceFunctionRegion"]),
          r.pick(["", crypto.randomUUID()]),
        ]);
      } else if (choice === 2) {
        q.push([
          "limit",
          r.pick([
            "",
            "0",
            "-1",
            "+5",
            " 5",
            "1e2",
            "0x10",
            "00000000000001",
            "99999999999999999999",
            "201",
            "501",
            "1.5",
            "٣",
          ]),
        ]);
      } else if (choice === 3) {
        q.push([
          "cursor",
          r.pick([
            "",
            "|",
            "x|y",
            `${dates(r)[0]}|`,
            `${r.pick(dates(r))}|a`,
            "0001-01-01T00:00:00Z|a",
            "9999-12-31T23:59:59.999Z|zz",
            "2026-01-01T00:00:00Z|a|b",
            `2026-01-01T00:00:00Z|${"x".repeat(200)}`,
          ]),
        ]);
      } else if (choice === 4) {
        q.push([
          "since",
          r.pick([
            "",
            "0",
            "9999999999999999999",
            "18446744073709551615",
            "99999999999999999999",
            "deadbeef.5",
            "DEADBEEF.5",
            "deadbeef.5:series",
            "5:",
            "5:-x",
            ":a",
            "-1",
            " 5",
            "00000000000000000001",
            "abc",
          ]),
        ]);
      } else if (choice === 5) q.push(["include_cleared", r.pick(["TRUE", "1", "", "yes", "false"])]);
      else if (choice === 6) q.push(["updated_at", r.pick(dates(r))]);
      else if (choice === 7) q.push(["device_id", String(r.pick(STRINGS))]);
      else if (choice === 8 && q.length > 0) q.splice(r.int(q.length), 1);
      else if (choice === 9 && q.length > 0) q.push(q[r.int(q.length)]);
      else if (choice === 10) {
        req.query = r.pick([
          "?",
          "&&",
          "=",
          "limit",
          "limit=5&&",
          "%6cimit=5",
          "limit=%35",
          "cursor=%zz",
          "a=%00",
          "since=%FF",
        ]);
        continue;
      }
      if (typeof req.query !== "string") req.query = q;
    } else if (target === 2) {
      // Path.
      const choice = r.int(10);
      log.push(`path ${choice}`);
      if (choice === 0) req.path += "/";
      else if (choice === 1) req.path = req.path.replace("batch", "%62atch").replace("changes", "%63hanges");
      else if (choice === 2) req.path += r.pick(["%2F", "/x", "/", "%00"]);
      else if (choice === 3) {
        req.path = `/series/${
          r.pick([
            "",
            "a%2Fb",
            "%zz",
            "%%37%30",
            encodeURIComponent("émoji📚"),
            "%00",
            "x".repeat(129),
            "x".repeat(5000),
            "a.b",
            "%41",
            "-a",
            encodeURIComponent(" a"),
          ])
        }`;
      } else if (choice === 4) {
        req.path = r.pick(["/Batch", "/CHANGES", "/series", "/series/a/b", "//batch", "/progress", "/x"]);
      } else if (choice === 5) req.path = r.pick(["", "/batch", "/changes", `/series/${r.pick(ctx.series)}`]);
      else if (choice === 6) req.path = `/series/${r.pick(ctx.series)}${r.pick([";x", "%3B", "%20", "+"])}`;
      else if (choice === 7) req.path = req.path.toUpperCase();
      else if (choice === 8) req.path = "/functions/v1/progress" + req.path;
      else req.path = req.path.replace(/^\/series\/.*/, `/series/${r.pick(ctx.series)}`);
    } else {
      // Method.
      req.method = r.pick(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get", "PROPFIND"]);
      log.push(`method ${req.method}`);
    }
  }
  // The function's name stays as it is: the gateway answers an unknown function with plain text (README).
  if (req.path !== "" && !req.path.startsWith("/")) req.path = `/${req.path}`;
  // service_role may act for B: that is no mutation of A's request but a write of B's (not checked here).
  if (
    headers.authorization === `Bearer ${ctx.tokens.service}` &&
    headers["x-act-as-user"]?.toLowerCase() === ctx.b.id
  ) {
    headers["x-act-as-user"] = ctx.a.id;
  }
  if (bodyValue !== undefined || textMutations.length > 0) {
    let t: string | Uint8Array = bodyValue === undefined ? "" : toJsonText(bodyValue);
    for (const m of textMutations) t = typeof t === "string" ? m(t) : t;
    bodyText = t;
  } else if (kind === "reset" && r.chance(0.05)) {
    bodyText = r.pick(["", "{}", '{"user_id":"x"}']);
    log.push("reset body");
  }
  if (bodyText !== undefined && !["GET", "HEAD", "get"].includes(req.method)) req.body = bodyText;
  return req;
}

// ------------------------------------------------------------------------------------ checks

/** The codes the README's error table documents for each status. */
const CODES: Record<number, string[]> = {
  400: ["invalid_json", "invalid_request"],
  401: ["missing_token", "invalid_token", "token_expired"],
  403: ["forbidden"],
  404: ["not_found", "progress_not_found"],
  405: ["method_not_allowed"],
  406: ["not_acceptable"],
  408: ["request_timeout"],
  413: ["payload_too_large"],
  415: ["unsupported_media_type"],
  422: ["validation_failed", "constraint_violation"],
};

interface State {
  progress: Map<string, { row: Progress; pct: string; whole_ms: boolean }>;
  conflicts: string;
  deletions: string;
}

async function state(sql: ReturnType<typeof adminSql>, userId: string): Promise<State> {
  const rows = await sql<{ row: Record<string, unknown>; pct: string; whole_ms: boolean }[]>`
    select to_jsonb(p) as row, p.percentage::text as pct,
           date_trunc('milliseconds', p.updated_at) = p.updated_at as whole_ms
      from public.reading_progress p where p.user_id = ${userId} order by p.series_id`;
  const [{ conflicts, deletions }] = await sql<{ conflicts: string; deletions: string }[]>`
    select (select count(*) || ':' || coalesce(max(id)::text, '') from public.reading_progress_conflicts
             where user_id = ${userId}) as conflicts,
           (select coalesce(jsonb_agg(to_jsonb(d) order by d.series_id), '[]')::text
              from public.reading_progress_deletions d where d.user_id = ${userId}) as deletions`;
  return {
    progress: new Map(
      rows.map((
        r,
      ) => [String(r.row.series_id), { row: toProgress(r.row), pct: r.pct, whole_ms: r.whole_ms }]),
    ),
    conflicts,
    deletions,
  };
}

/** The user's rows as the user reads them directly (role authenticated, their claims: RLS). */
async function rowsAsUser(sql: ReturnType<typeof adminSql>, userId: string): Promise<Map<string, Progress>> {
  const rows = await sql.begin(async (tx) => {
    await tx`select set_config('role', 'authenticated', true),
                    set_config('request.jwt.claims', ${
      JSON.stringify({ sub: userId, role: "authenticated" })
    }, true)`;
    return await tx<
      { row: Record<string, unknown> }[]
    >`select to_jsonb(p) as row from public.reading_progress p`;
  });
  return new Map(rows.map((r) => [String(r.row.series_id), toProgress(r.row)]));
}

const stateText = (s: State) =>
  JSON.stringify({ p: [...s.progress.values()].map((v) => [v.row, v.pct]), c: s.conflicts, d: s.deletions });

function checkErrorBody(status: number, body: unknown, contentType: string | null, what: string) {
  assert.ok(
    CODES[status],
    `${what}: status ${status} is not in the README's error table: ${JSON.stringify(body)}`,
  );
  assert.match(contentType ?? "", /^application\/json/, `${what}: an error is JSON`);
  const error = (body as { error?: { code?: unknown; message?: unknown; details?: unknown } })?.error;
  assert.ok(
    error && typeof error.code === "string" && typeof error.message === "string",
    `${what}: error body ${JSON.stringify(body)}`,
  );
  assert.ok(
    CODES[status].includes(error.code as string),
    `${what}: ${status} with code ${String(error.code)}`,
  );
  assert.ok(
    typeof error.details === "object" && error.details !== null && !Array.isArray(error.details),
    `${what}: details is an object`,
  );
  if (error.code === "invalid_request") {
    const issues = (error.details as { issues?: unknown }).issues;
    assert.ok(Array.isArray(issues) && issues.length > 0, `${what}: invalid_request lists its issues`);
  }
}

/** The writes a request sent, as the server read them (JSON.parse), or null when not a plain list. */
function sentWrites(req: Req): WriteFields[] {
  if (req.kind === "reset" || req.method === "DELETE") {
    const q = new URLSearchParams(typeof req.query === "string" ? req.query : req.query);
    return [{
      series_id: decodeURIComponent(req.path.replace(/\/$/, "").split("/").pop() ?? ""),
      chapter: 0,
      page: 0,
      percentage: 0,
      cleared: true,
      device_id: q.get("device_id"),
      updated_at: q.get("updated_at"),
    }];
  }
  // TextDecoder drops a leading BOM, as the function's does.
  const body = JSON.parse(
    typeof req.body === "string" ? req.body.replace(/^\ufeff/, "") : new TextDecoder().decode(req.body),
  );
  return isBatch(req) ? body.writes : [body];
}

function isBatch(req: Req): boolean {
  // Kong merges repeated slashes before routing (local/api/kongRouter.ts): `/batch//` is the batch route.
  return req.path.replace(/%62/i, "b").replace(/\/+$/, "").endsWith("/batch");
}

// ------------------------------------------------------------------------------------ the test

/** encodeURIComponent, but a lone surrogate is sent as its WTF-8 bytes (%ED%A0%80: not UTF-8). */
function encodeAny(s: string): string {
  return s.replace(/[\ud800-\udfff]/g, (c) => {
    const u = c.charCodeAt(0);
    return `\u0002${
      [0xe0 | (u >> 12), 0x80 | ((u >> 6) & 0x3f), 0x80 | (u & 0x3f)].map((b) =>
        `%${b.toString(16).toUpperCase()}`
      ).join("")
    }\u0002`;
  }).split("\u0002").map((part, i) => i % 2 ? part : encodeURIComponent(part)).join("");
}

async function send(req: Req): Promise<{ status: number; headers: Headers; body: unknown; text: string }> {
  const query = typeof req.query === "string"
    ? (req.query === "" ? "" : `?${req.query}`)
    : (req.query.length ? `?${req.query.map(([k, v]) => `${encodeAny(k)}=${encodeAny(v)}`).join("&")}` : "");
  const res = await fetch(`${FUNCTION_URL()}${req.path}${query}`, {
    method: req.method,
    headers: req.headers,
    body: req.body as BodyInit | undefined,
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = text === "" ? null : JSON.parse(text);
  } catch { /* kept as text */ }
  return { status: res.status, headers: res.headers, body, text };
}

Deno.test({
  name:
    `fuzz: mutated requests to every route get a documented 4xx or a 2xx that matches the database (seed ${SEED}, ${CASES} cases)`,
  // Resources: fetch's connections are pooled and outlive a test; the server is another process.
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    console.log(`progress fuzz: READSYNC_FUZZ_SEED=${SEED} READSYNC_FUZZ_CASES=${CASES}`);
    const r = seededRandom(SEED);
    const sql = adminSql({ max: 2 });
    try {
      const a = await createTestUser();
      const b = await createTestUser();
      const secret = testEnv().jwtSecret;
      const series = Array.from({ length: 6 }, (_, i) => `fz-${SEED.toString(36)}-${i}`);
      const devices = ["dev-a", "dev-b", "phone-1", "Z", "0.tablet:x_y-z"];
      const tokens: Record<string, string> = {
        a: a.accessToken,
        service: testEnv().serviceRoleKey,
        anon: testEnv().anonKey,
      };
      if (secret) {
        const now = Math.floor(Date.now() / 1000);
        tokens.expired = await mintUserAccessToken(a.id, { expiresInSeconds: -60, secret });
        tokens.forged = await mintUserAccessToken(a.id, {
          secret: "another-secret-with-at-least-32-characters!!",
        });
        const base = { sub: a.id, role: "authenticated", aud: "authenticated" };
        const sign = (claims: Record<string, unknown>) => signDevJwt({ ...base, ...claims }, { secret });
        tokens.upperSub = await sign({ sub: a.id.toUpperCase() });
        tokens.nobody = await sign({ sub: crypto.randomUUID() });
        tokens.notUuid = await sign({ sub: "user_2abc" });
        tokens.roleArray = await sign({ role: ["authenticated"] });
        tokens.roleOther = await sign({ role: "Authenticated" });
        tokens.audArray = await sign({ aud: ["x", "authenticated"] });
        tokens.audOther = await sign({ aud: "x" });
        tokens.nulClaim = await sign({ note: "nul\u0000" });
        tokens.surrogateClaim = await sign({ note: "\ud800" });
        tokens.bigClaim = await sign({ note: "n".repeat(4000) });
        tokens.nbfFuture = await sign({ nbf: now + 86_400 });
        tokens.iatFuture = await sign({ iat: now + 86_400 });
        tokens.expString = await sign({ exp: String(now + 3600) });
        tokens.subNumber = await sign({ sub: 5 });
        tokens.subEmpty = await sign({ sub: "" });
      }
      const ctx: Ctx = { a, b, series, devices, tokens };
      // B has a row, which nothing here may change.
      const seeded = await fetch(FUNCTION_URL(), {
        method: "POST",
        headers: { authorization: `Bearer ${b.accessToken}`, "content-type": "application/json" },
        body: JSON.stringify({
          series_id: series[0],
          chapter: 3,
          page: 4,
          percentage: 0.5,
          device_id: "dev-b",
          updated_at: "2026-01-01T00:00:00Z",
        }),
      });
      assert.equal(seeded.status, 200, await seeded.text());
      const bState = stateText(await state(sql, b.id));

      const seen = new Map<string, number>();
      for (let i = 0; i < CASES; i++) {
        const req = buildRequest(r, ctx);
        const what =
          `case ${i} (seed ${SEED}): ${req.method} ${req.path} ${JSON.stringify(req.query).slice(0, 200)} ` +
          `[${req.log.join("; ")}]`;
        const before = await state(sql, a.id);
        const answer = await send(req);
        const key = `${req.kind} ${answer.status} ${
          (answer.body as { error?: { code?: string } })?.error?.code ?? ""
        }`;
        seen.set(key, (seen.get(key) ?? 0) + 1);
        assert.ok(answer.status < 500, `${what}: ${answer.status} ${answer.text.slice(0, 500)}`);
        const after = await state(sql, a.id);
        const method = req.method.toUpperCase();

        if (answer.status >= 300) {
          if (method !== "HEAD") {
            checkErrorBody(answer.status, answer.body, answer.headers.get("content-type"), what);
          } else assert.ok(CODES[answer.status], `${what}: HEAD answered ${answer.status}`);
          assert.equal(stateText(after), stateText(before), `${what}: a refused request changed nothing`);
        } else if (method === "OPTIONS") {
          assert.equal(answer.status, 204, what);
          assert.equal(stateText(after), stateText(before), what);
        } else if (method === "GET" || method === "HEAD") {
          assert.equal(answer.status, 200, what);
          assert.equal(stateText(after), stateText(before), `${what}: a read changed nothing`);
          if (method === "GET") {
            const path = req.path.toLowerCase();
            const body = answer.body;
            if (path.includes("series")) {
              const { progress } = progressResponseSchema.parse(body);
              assert.deepEqual(
                progress,
                after.progress.get(progress.series_id)?.row,
                `${what}: GET series = row`,
              );
            } else if (path.includes("changes") || path.includes("%63hanges")) {
              const page = changesResponseSchema.parse(body);
              for (const c of page.changes) assert.equal(c.user_id, a.id, `${what}: only A's changes`);
            } else {
              const page = progressListResponseSchema.parse(body);
              for (const item of page.items) {
                assert.deepEqual(item, after.progress.get(item.series_id)?.row, `${what}: list item = row`);
              }
            }
          }
        } else {
          // An accepted write (single, batch or reset) as A (or as A through service_role).
          assert.equal(answer.status, 200, what);
          const writes = sentWrites(req);
          const results: WriteResult[] = isBatch(req)
            ? batchWriteResponseSchema.parse(answer.body).results
            : [writeResultSchema.parse(answer.body)];
          assert.equal(results.length, writes.length, `${what}: one result per write`);
          const last = new Map<string, Progress>();
          results.forEach((res, k) => {
            const w = writes[k];
            assert.equal(res.progress.user_id, a.id, `${what}: the row is A's`);
            assert.equal(res.progress.series_id, w.series_id, `${what}: result ${k} is for its series`);
            if (res.won) {
              const sentAt = Date.parse(String(w.updated_at));
              const storedAt = Date.parse(res.progress.updated_at);
              assert.deepEqual(
                [
                  res.progress.chapter,
                  res.progress.page,
                  res.progress.percentage,
                  res.progress.cleared,
                  res.progress.device_id,
                ],
                // -0 is stored as 0 (an integer has none; postgres.js sends a double -0 as 0).
                [
                  Number(w.chapter) + 0,
                  Number(w.page) + 0,
                  Number(w.percentage) + 0,
                  w.cleared === true,
                  w.device_id,
                ],
                `${what}: result ${k} won and stored the position sent`,
              );
              const aheadAt = Date.parse(answer.headers.get("x-server-time") ?? "") + 5_000;
              if (sentAt > aheadAt + 3_600_000) {
                assert.ok(
                  storedAt < sentAt,
                  `${what}: a write dated far ahead is stored at the server's now`,
                );
              } else {
                assert.ok(storedAt >= Math.floor(sentAt), `${what}: result ${k} stored at or after its date`);
              }
            }
            last.set(res.progress.series_id, res.progress);
          });
          const asUser = await rowsAsUser(sql, a.id);
          for (const [id, entry] of after.progress) {
            const answered = last.get(id);
            if (answered) {
              assert.deepEqual(entry.row, answered, `${what}: the row of ${id} (superuser) is the answer's`);
              assert.deepEqual(
                asUser.get(id),
                answered,
                `${what}: the row of ${id} (as the user) is the answer's`,
              );
              assert.ok(
                Object.is(Number(entry.pct), answered.percentage),
                `${what}: percentage ${entry.pct} stored, ${answered.percentage} answered`,
              );
              assert.ok(entry.whole_ms, `${what}: updated_at of ${id} is whole milliseconds`);
            } else {
              assert.deepEqual(
                entry.row,
                before.progress.get(id)?.row,
                `${what}: ${id} was not written and is unchanged`,
              );
              assert.deepEqual(asUser.get(id), entry.row, `${what}: ${id} as the user`);
            }
          }
          for (const id of last.keys()) assert.ok(after.progress.has(id), `${what}: ${id} is stored`);
          assert.equal(asUser.size, after.progress.size, `${what}: the user sees exactly their rows`);
          assert.equal(after.deletions, before.deletions, `${what}: no deletion remembered`);
        }
        assert.equal(stateText(await state(sql, b.id)), bState, `${what}: B's rows are untouched`);
        if (i % 50 === 49) await stillUp(a, series[0], what);
      }
      await stillUp(a, series[0], "after the run");
      const bRows = await rowsAsUser(sql, b.id);
      assert.equal(bRows.size, 1, "B sees B's one row only");
      console.log(
        [...seen.entries()].sort().map(([k, n]) => `${k}: ${n}`).join("\n"),
      );
    } finally {
      await sql.end();
    }
  },
});

/** A plain read and write still go through (the function is up and answering). */
async function stillUp(a: TestUser, series: string, what: string) {
  const res = await fetch(FUNCTION_URL(), {
    method: "POST",
    headers: { authorization: `Bearer ${a.accessToken}`, "content-type": "application/json" },
    body: JSON.stringify({
      series_id: series,
      chapter: 1,
      page: 1,
      percentage: 0.1,
      device_id: "probe",
      updated_at: "2001-01-01T00:00:00Z",
    }),
  });
  assert.equal(res.status, 200, `${what}: the function still answers a plain write: ${await res.text()}`);
}
