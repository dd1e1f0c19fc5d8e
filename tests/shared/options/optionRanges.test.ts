// Every numeric option the client and the server range-check, as a table: for each option and each value
// (NaN, -1, -0, 0, 0.5, 1, 1.5, 2^31-1, 2^31, 2^53-1, 2^53, ±Infinity, strings, null, true, 1n, undefined)
// whether it is taken or refused, and when refused, with which error class and a message naming the option
// and the value. It pins each option's accepted range through the entry points that check it
// (readBodyLimited, readJsonBody, hasBody, createProgressHandler and createProgressHandlerFromEnv, new
// RealtimeService, createProgressApi, the plain calls, a first and a later subscribeToProgress on a client),
// so a change to the shared checks cannot move a range unnoticed, and one entry point cannot take what
// another refuses. A value of the wrong type (not a number; retry not an object) and a number out of range
// are told apart by class (WRONG_TYPE, RangeError). Likewise the one number the function reads from its
// environment (PROGRESS_DB_POOL_MAX, a text: when the handler is made, at a request, booting the function),
// the tokens (accessToken, setAccessToken) and what the random options' draws give. And the numeric options
// of the local stack's Realtime endpoint (createRealtimeEndpoint), which stands in for Supabase's.

import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { hasBody, readBodyLimited, readJsonBody } from "../../../shared/http/body.ts";
import { HttpError } from "../../../shared/http/errors.ts";
import { createProgressHandler } from "../../../shared/progress/handler.ts";
import { FunctionsFetchError, type SupabaseClient } from "@supabase/supabase-js";
import {
  createProgressApi,
  getProgress,
  NetworkError,
  subscribeToProgress,
  type SubscribeToProgressOptions,
} from "../../../shared/progress/api.ts";
import { createProgressHandlerFromEnv } from "../../../shared/progress/server.ts";
import { RealtimeService, type RealtimeServiceOptions } from "../../../shared/realtime/realtimeService.ts";
import { fakeClient } from "../realtime/fakeRealtimeClient.ts";
import { createRealtimeEndpoint, type RealtimeEndpointOptions } from "../../../local/realtime/endpoint.ts";
import { createTestUser, localRealtime, testEnv } from "../../support/env.ts";
import { call, errorOf, serveLocal } from "../../functions/support.ts";

const MAX_TIMER = 2 ** 31 - 1;
const USER = "00000000-0000-4000-8000-0000000000e1";
const noSanitize = { sanitizeOps: false, sanitizeResources: false } as const;

/** The error class of a value of the wrong type (a number out of range is a RangeError). */
const WRONG_TYPE: ErrorConstructor = TypeError;

const VALUES: [string, unknown][] = [
  ["NaN", NaN],
  ["-1", -1],
  ["-0", -0],
  ["0", 0],
  ["0.5", 0.5],
  ["1", 1],
  ["1.5", 1.5],
  ["500", 500],
  ["501", 501],
  ["2^31-1", MAX_TIMER],
  ["2^31", 2 ** 31],
  ["2^53-1", Number.MAX_SAFE_INTEGER],
  ["2^53", 2 ** 53],
  ["Infinity", Infinity],
  ["-Infinity", -Infinity],
  ['"1000"', "1000"],
  ['""', ""],
  ["null", null],
  ["true", true],
  ["1n", 1n],
  ["undefined", undefined],
];

/** How an entry point took a value: "ok", or the error it threw (or rejected with). */
type Outcome = "ok" | Error;

/**
 * What the object options (the API client's retry, RealtimeService's backoff, subscribeToProgress's
 * api) are given; each takes an object or nothing (OBJECT_ACCEPTED) and refuses the rest with a TypeError.
 */
/** A class whose instances hold an option's fields as their own (taken before, their fields read). */
class OwnFields {
  initialMs = 1_000;
  attempts = 2;
}
const OBJECT_VALUES: [string, unknown][] = [
  ["undefined", undefined],
  ["{}", {}],
  ["Object.create(null)", Object.create(null)],
  ["a Date", new Date(0)],
  ["a Map", new Map<string, unknown>([["initialMs", 1_000], ["attempts", 2], ["X-Act-As-User", "u1"]])],
  ["a Headers", new Headers({ "X-Act-As-User": "u1" })],
  ["an OwnFields", new OwnFields()],
  ["[]", []],
  ["null", null],
  ["5", 5],
  ['"x"', "x"],
  ["true", true],
  ["a function", () => {}],
];
const OBJECT_ACCEPTED = ["undefined", "{}", "Object.create(null)"];
/** The class instances of OBJECT_VALUES, each shown in a refusal by its class, as its label reads. */
const CLASS_INSTANCES = ["a Date", "a Map", "a Headers", "an OwnFields"];

/**
 * Throws unless `outcome` is "ok" when `taken`, else an error of class `expected` (a TypeError unless
 * said) reading `message`; `at` names the case.
 */
function expectTakenOrTypeError(
  at: string,
  taken: boolean,
  message: string,
  outcome: Outcome,
  expected: ErrorConstructor = WRONG_TYPE,
): void {
  if (taken) {
    assert.equal(outcome, "ok", `${at}: taken (got ${outcome})`);
    return;
  }
  assert.ok(outcome instanceof Error, `${at}: refused`);
  assert.equal(outcome.constructor, expected, `${at}: ${expected.name} (got ${outcome})`);
  assert.equal(outcome.message, message, at);
}

/**
 * Throws unless `outcome` is what an object option given OBJECT_VALUES' `label` should give: "ok" when
 * OBJECT_ACCEPTED has it, else a TypeError "<option> must be a plain object (got <value>)" (a class's
 * instance, a Date, a Map or a Headers, was taken before, its fields read or none). `where` names the
 * check in messages ("subscribeToProgress retry").
 */
function expectObjectOutcome(
  where: string,
  option: string,
  label: string,
  value: unknown,
  outcome: Outcome,
): void {
  const got = CLASS_INSTANCES.includes(label) ? label : shown(value);
  const message = `${option} must be a plain object (got ${got})`;
  expectTakenOrTypeError(`${where} = ${label}`, OBJECT_ACCEPTED.includes(label), message, outcome);
}

/**
 * Throws unless `outcome` is what a function option (random) given OBJECT_VALUES' `label` should give:
 * "ok" for a function or undefined, else a TypeError "<option> must be a function (got <its type>)".
 */
function expectFunctionOutcome(
  where: string,
  option: string,
  label: string,
  value: unknown,
  outcome: Outcome,
): void {
  const taken = label === "undefined" || label === "a function";
  expectTakenOrTypeError(
    `${where} = ${label}`,
    taken,
    `${option} must be a function (got ${typeof value})`,
    outcome,
  );
}

/** A value as the messages show it. */
function shown(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "function") return "a function";
  if (Array.isArray(value)) return "an array";
  if (value !== null && typeof value === "object") return "an object";
  return String(value);
}

/**
 * Throws unless `outcome` is what `label` should give for an option taking `accepted`: a refusal
 * reads "<what> option <name> must be ... (got <value>)". `via` names the entry point in messages.
 */
function expectOutcome(
  what: string,
  name: string,
  label: string,
  value: unknown,
  accepted: readonly string[],
  outcome: Outcome,
  via = what,
) {
  const at = `${via} ${name} = ${label}`;
  if (accepted.includes(label)) {
    assert.equal(outcome, "ok", `${at}: taken (got ${outcome})`);
    return;
  }
  assert.ok(outcome instanceof Error, `${at}: refused`);
  const expected = typeof value === "number" ? RangeError : WRONG_TYPE;
  assert.equal(outcome.constructor, expected, `${at}: ${expected.name} (got ${outcome})`);
  const escaped = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  assert.match(
    outcome.message,
    new RegExp(`^${escaped(`${what} option ${name} must be `)}.+ ${escaped(`(got ${shown(value)})`)}$`),
    at,
  );
}

async function outcomeOf(fn: () => unknown): Promise<Outcome> {
  try {
    await fn();
    return "ok";
  } catch (error) {
    if (error instanceof Error) return error;
    throw error;
  }
}

// ------------------------------------------------------------------------------------ server

/** Positive delays a timer can hold, or Infinity (no bound); under 1 ms is taken. */
const BODY_BOUND = ["0.5", "1", "1.5", "500", "501", "2^31-1", "Infinity", "undefined"];

/** A POST of an empty JSON body: once the options are checked, the read ends at once. */
const emptyJsonPost = () =>
  new Request("http://localhost/progress", {
    method: "POST",
    headers: { "content-type": "application/json" },
  });

/** readJsonBody's 400 for an empty body is an answer, not a refusal of the option. */
const answered = (outcome: Outcome) => outcome instanceof HttpError ? "ok" : outcome;

// The same bounds, and the same rule (null refused as any value not a number), every way they are
// given, each refusal naming the function called.
for (
  const [name, handlerName] of [
    ["idleTimeoutMs", "bodyIdleTimeoutMs"],
    ["totalTimeoutMs", "bodyTotalTimeoutMs"],
  ] as const
) {
  Deno.test(`option ranges: readBodyLimited, readJsonBody and hasBody ${name} and createProgressHandlerFromEnv ${handlerName}`, async () => {
    for (const [label, value] of VALUES) {
      // No body: once the bounds are checked, nothing is read (no timer runs).
      const req = () => new Request("http://localhost/progress", { method: "POST" });
      const read = await outcomeOf(() => readBodyLimited(req(), 100, { [name]: value as number }));
      expectOutcome("readBodyLimited", name, label, value, BODY_BOUND, read);
      const json = answered(
        await outcomeOf(() => readJsonBody(emptyJsonPost(), { [name]: value as number })),
      );
      expectOutcome("readJsonBody", name, label, value, BODY_BOUND, json);
      const has = await outcomeOf(() => hasBody(req(), { [name]: value as number }));
      expectOutcome("hasBody", name, label, value, BODY_BOUND, has);
      const made = await outcomeOf(() =>
        createProgressHandlerFromEnv({ get: () => undefined }, { [handlerName]: value as number })
      );
      expectOutcome("createProgressHandler", handlerName, label, value, BODY_BOUND, made);
    }
  });
}

/** A whole number of bytes from 0 (to 2^53-1), or Infinity (no limit). */
const BODY_BYTES = ["-0", "0", "1", "500", "501", "2^31-1", "2^31", "2^53-1", "Infinity", "undefined"];

Deno.test("option ranges: the body's byte limit, readBodyLimited and readJsonBody maxBytes and createProgressHandler maxBodyBytes", async () => {
  for (const [label, value] of VALUES) {
    const read = await outcomeOf(() => readBodyLimited(emptyJsonPost(), value as number));
    expectOutcome("readBodyLimited", "maxBytes", label, value, BODY_BYTES, read);
    const json = answered(
      await outcomeOf(() => readJsonBody(emptyJsonPost(), { maxBytes: value as number })),
    );
    expectOutcome("readJsonBody", "maxBytes", label, value, BODY_BYTES, json);
    const made = await outcomeOf(() =>
      createProgressHandler({
        verifier: () => assert.fail("no request"),
        store: () => assert.fail("no request"),
        maxBodyBytes: value as number,
      })
    );
    expectOutcome("createProgressHandler", "maxBodyBytes", label, value, BODY_BYTES, made);
  }
});

/**
 * PROGRESS_DB_POOL_MAX as the function's environment gives it (a text, or not set), and whether it is
 * taken: a whole number from 1 to 100 written in decimal digits without a fraction or leading zeros,
 * surrounding spaces ignored; not set or empty is the default (5). A text not so written is a TypeError
 * (hexadecimal, binary, octal and exponent forms too, which Number() reads: "0x10" was 16 connections,
 * "1e1" 10; and "007", "010" and "5.0", taken before as 7, 10 and 5: "010" is octal 8 to a shell), a
 * whole number out of the range a RangeError.
 */
const POOL_MAX_VALUES: [string | undefined, true | ErrorConstructor][] = [
  [undefined, true],
  ["", true],
  ["  ", true],
  ["1", true],
  ["5", true],
  [" 7 ", true],
  ["100", true],
  ["0", RangeError],
  ["-0", RangeError],
  ["-1", RangeError],
  ["101", RangeError],
  ["100000000000000000000", RangeError],
  ["Infinity", RangeError],
  ["007", TypeError],
  ["010", TypeError],
  ["00", TypeError],
  ["5.0", TypeError],
  ["2.5", TypeError],
  ["0x10", TypeError],
  ["0X10", TypeError],
  ["0b11", TypeError],
  ["0o7", TypeError],
  ["1e1", TypeError],
  ["1e9", TypeError],
  ["1E1", TypeError],
  ["+5", TypeError],
  [".5", TypeError],
  ["5.", TypeError],
  ["1_0", TypeError],
  ["abc", TypeError],
  ["5 connections", TypeError],
  ["NaN", TypeError],
];
/** The rows also booted as the function itself (a process each, so a few). */
const POOL_MAX_BOOTED = [" 7 ", "-1", "abc", "0x10", "007"];
const ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** The error a log line or a process's output names ("RangeError: ..."), as an Error of that class. */
function errorNamed(text: string): Error {
  const [, name, message] = /(TypeError|RangeError|Error): (.*)/.exec(text) ?? ["", "Error", text];
  return new ({ TypeError, RangeError, Error } as Record<string, ErrorConstructor>)[name](message);
}

/**
 * supabase/functions/progress/index.ts run as a process with PROGRESS_DB_POOL_MAX set to `text`: "ok"
 * once it listens (on a free port: DENO_SERVE_ADDRESS; then stopped), else the error it failed to boot
 * with, as the function's log shows it.
 */
async function bootOutcome(text: string): Promise<Outcome> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-check", "-A", "supabase/functions/progress/index.ts"],
    cwd: ROOT,
    env: { PROGRESS_DB_POOL_MAX: text, DENO_SERVE_ADDRESS: "tcp:127.0.0.1:0", NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let output = "";
  let listening = false;
  const guard = setTimeout(() => child.kill(), 60_000); // a hang guard only
  try {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      output += chunk;
      if (/Listening on/.test(output)) {
        listening = true;
        child.kill();
        break;
      }
    }
  } finally {
    clearTimeout(guard);
    await child.status;
  }
  if (listening) return "ok";
  const uncaught = /Uncaught[^\n]*?((?:TypeError|RangeError|Error): [^\n]*)/.exec(output);
  return uncaught ? errorNamed(uncaught[1]) : new Error(`neither listening nor an error: ${output}`);
}

Deno.test({
  name:
    "option ranges: PROGRESS_DB_POOL_MAX, when createProgressHandlerFromEnv makes the handler, when set before its first request, and booting the function",
  ...noSanitize,
  fn: async () => {
    const env = testEnv();
    const user = await createTestUser();
    for (const [text, expected] of POOL_MAX_VALUES) {
      const vars: Record<string, string | undefined> = {
        SUPABASE_DB_URL: env.dbUrl,
        SUPABASE_JWT_SECRET: env.jwtSecret,
        PROGRESS_DB_POOL_MAX: text,
      };
      const outcomes: [string, Outcome][] = [];
      // When the handler is made (as the function boots).
      outcomes.push([
        "createProgressHandlerFromEnv",
        await outcomeOf(() => createProgressHandlerFromEnv({ get: (name) => vars[name] }).close()),
      ]);
      // Not set then, set before the first request: that request reads it and, refused, answers 500
      // internal_error, the error in its request_failed log line. Taken, the pool it sizes reaches the
      // database (no progress for the series: 404).
      const later: Record<string, string | undefined> = { ...vars, PROGRESS_DB_POOL_MAX: undefined };
      const logs: Record<string, unknown>[] = [];
      const handler = createProgressHandlerFromEnv({ get: (name) => later[name] }, {
        log: (e) => logs.push(e),
      });
      const server = serveLocal(handler);
      later.PROGRESS_DB_POOL_MAX = text;
      try {
        const answer = await call("GET", "/series/pool-max", {
          base: `${server.url}/progress`,
          token: user.accessToken,
        });
        const failed = logs.find((entry) => entry.event === "request_failed");
        const code = errorOf(answer).code;
        outcomes.push([
          "the first request",
          answer.status === 404 && code === "progress_not_found"
            ? "ok"
            : answer.status === 500 && code === "internal_error" && failed
            ? errorNamed(String(failed.error))
            : new Error(`answered ${answer.status} ${code}`),
        ]);
      } finally {
        await server.shutdown();
        await handler.close();
      }
      if (text !== undefined && POOL_MAX_BOOTED.includes(text)) {
        outcomes.push(["the function booting", await bootOutcome(text)]);
      }
      const message = "createProgressHandlerFromEnv environment variable PROGRESS_DB_POOL_MAX must be a " +
        `whole number from 1 to 100, written in decimal digits without a fraction or leading zeros (got ${
          JSON.stringify(text)
        })`;
      for (const [where, outcome] of outcomes) {
        expectTakenOrTypeError(
          `${where} PROGRESS_DB_POOL_MAX = ${JSON.stringify(text)}`,
          expected === true,
          message,
          outcome,
          expected === true ? undefined : expected,
        );
      }
    }
  },
});

// ------------------------------------------------------------------------------------ RealtimeService

/** 1 to 2^31-1 (not whole only); some options also take 0 (-0 too) or Infinity. */
const TIMER = ["1", "1.5", "500", "501", "2^31-1", "undefined"];
const REALTIME: [string, readonly string[]][] = [
  ["pollIntervalMs", TIMER],
  ["livePollIntervalMs", [...TIMER, "0", "-0", "Infinity"]],
  ["heartbeatReplyTimeoutMs", [...TIMER, "0", "-0"]],
  ["joinTimeoutMs", TIMER],
  ["joinGraceMs", [...TIMER, "0", "-0", "Infinity"]],
  ["requestTimeoutMs", TIMER],
  ["backoff.initialMs", TIMER],
  ["backoff.maxMs", TIMER],
];

function realtimeOption(name: string, value: unknown): Partial<RealtimeServiceOptions> {
  if (name === "backoff.initialMs") return { backoff: { initialMs: value as number } };
  if (name === "backoff.maxMs") return { backoff: { maxMs: value as number } };
  return { [name]: value };
}

/**
 * The three ways RealtimeService options are checked: by `new RealtimeService`, by the first
 * subscribeToProgress on a client (which makes the shared service), and by a later one on a client
 * whose shared service was made with the same options when the first call took them, else with none.
 * A later call is refused for a bad option as the first is, before its options are compared with the
 * shared service's (which refused it with another Error, "not the one ... runs with", or not at all).
 */
async function serviceOutcomes(options: Partial<RealtimeServiceOptions>): Promise<[string, Outcome][]> {
  const { client } = fakeClient();
  let service: RealtimeService | undefined;
  const direct = await outcomeOf(() =>
    service = new RealtimeService(client, {
      changesSince: () => Promise.resolve({ changes: [], next_cursor: "1", has_more: false }),
      log: () => {},
      ...options,
    })
  );
  await service?.close();
  const subscriptions: { unsubscribe(): Promise<void> }[] = [];
  // api.timeoutMs given: without it, a requestTimeoutMs under 4 ms leaves its 4 attempts under 1 ms each.
  const subscribe = (on: typeof client, given: Partial<RealtimeServiceOptions>) =>
    outcomeOf(() => {
      subscriptions.push(subscribeToProgress(on, USER, () => {}, {
        log: () => {},
        accessToken: "T",
        api: { timeoutMs: 1_000 },
        ...given,
      }));
    });
  const first = await subscribe(fakeClient().client, options);
  const { client: shared } = fakeClient();
  assert.equal(await subscribe(shared, first === "ok" ? options : {}), "ok", "the shared service made");
  const later = await subscribe(shared, options);
  for (const subscription of subscriptions.reverse()) await subscription.unsubscribe();
  return [["new RealtimeService", direct], ["subscribeToProgress", first], [
    "a later subscribeToProgress",
    later,
  ]];
}

for (const [name, accepted] of REALTIME) {
  Deno.test({
    name:
      `option ranges: RealtimeService ${name}, directly and through a first and a later subscribeToProgress`,
    ...noSanitize,
    fn: async () => {
      for (const [label, value] of VALUES) {
        for (const [where, outcome] of await serviceOutcomes(realtimeOption(name, value))) {
          expectOutcome("RealtimeService", name, label, value, accepted, outcome, where);
        }
      }
    },
  });
}

Deno.test({
  name:
    "option ranges: RealtimeService backoff (a plain object, or not given), directly and through a first and a later subscribeToProgress",
  ...noSanitize,
  fn: async () => {
    // As the API client's retry: an array, null and a non-object are refused (each was taken as no
    // fields given, every backoff default, silently).
    for (const [label, backoff] of OBJECT_VALUES) {
      for (
        const [where, outcome] of await serviceOutcomes({
          backoff: backoff as RealtimeServiceOptions["backoff"],
        })
      ) {
        expectObjectOutcome(`${where} backoff`, "RealtimeService option backoff", label, backoff, outcome);
      }
    }
  },
});

Deno.test({
  name:
    "option ranges: RealtimeService random (a function, or not given), directly and through a first and a later subscribeToProgress",
  ...noSanitize,
  fn: async () => {
    for (const [label, random] of OBJECT_VALUES) {
      for (const [where, outcome] of await serviceOutcomes({ random: random as () => number })) {
        expectFunctionOutcome(`${where} random`, "RealtimeService option random", label, random, outcome);
      }
    }
  },
});

/**
 * What a token (RealtimeService's accessToken option, setAccessToken's argument) is given: a
 * non-empty string, or for the option nothing; "" is no token, refused as null is (the option took it
 * as not given, setAccessToken installed it).
 */
const TOKEN_VALUES: [string, unknown][] = [
  ['"T2"', "T2"],
  ["undefined", undefined],
  ['""', ""],
  ["null", null],
  ["5", 5],
  ["true", true],
  ["{}", {}],
  ["a function", () => Promise.resolve("T2")],
];

Deno.test({
  name:
    "option ranges: RealtimeService accessToken (directly, through a first and a later subscribeToProgress) and setAccessToken (open or closed): a non-empty string",
  ...noSanitize,
  fn: async () => {
    for (const [label, token] of TOKEN_VALUES) {
      const refusal = (subject: string) => `${subject} must be a non-empty string (got ${shown(token)})`;
      for (const [where, outcome] of await serviceOutcomes({ accessToken: token as string })) {
        const taken = label === '"T2"' || label === "undefined";
        expectTakenOrTypeError(
          `${where} accessToken = ${label}`,
          taken,
          refusal("RealtimeService option accessToken"),
          outcome,
        );
      }
      const service = new RealtimeService(fakeClient().client, {
        changesSince: () => Promise.resolve({ changes: [], next_cursor: "1", has_more: false }),
        log: () => {},
        accessToken: "T1",
      });
      const open = await outcomeOf(() => service.setAccessToken(token as string));
      await service.close();
      const closed = await outcomeOf(() => service.setAccessToken(token as string));
      for (
        const [where, outcome] of [["setAccessToken", open], ["setAccessToken, closed,", closed]] as const
      ) {
        expectTakenOrTypeError(
          `${where} token = ${label}`,
          label === '"T2"',
          refusal("RealtimeService setAccessToken() argument token"),
          outcome,
        );
      }
      // A refused token is not installed: the one in force is still the option's.
      assert.equal(service.accessToken, label === '"T2"' ? "T2" : "T1", `setAccessToken(${label}): in force`);
    }
  },
});

// ------------------------------------------------------------------------------------ the API client

const API: [string, readonly string[]][] = [
  ["timeoutMs", TIMER],
  // 0 (-0 too) is a wait of none; under 1 ms is taken.
  ["retry.baseDelayMs", [...TIMER, "-0", "0", "0.5"]],
  ["retry.maxDelayMs", [...TIMER, "-0", "0", "0.5"]],
  // A whole number from 1 (to 2^53-1).
  ["retry.attempts", ["1", "500", "501", "2^31-1", "2^31", "2^53-1", "undefined"]],
];

function apiOption(name: string, value: unknown): Record<string, unknown> {
  const [first, second] = name.split(".");
  return second === undefined ? { [first]: value } : { [first]: { [second]: value } };
}

/**
 * What subscribeToProgress does with `options` on a fresh fake client (beside a token and a silent
 * log), the subscription it made, if any, ended.
 */
async function subscribeOutcome(options: Partial<SubscribeToProgressOptions>): Promise<Outcome> {
  const { client } = fakeClient();
  let subscription: { unsubscribe(): Promise<void> } | undefined;
  const outcome = await outcomeOf(() =>
    subscription = subscribeToProgress(client, USER, () => {}, {
      log: () => {},
      accessToken: "T",
      ...options,
    })
  );
  await subscription?.unsubscribe();
  return outcome;
}

/** The three ways an API option is checked, each its own "where" in the message. */
async function apiOutcomes(options: Record<string, unknown>): Promise<[string, Outcome][]> {
  const { client } = fakeClient();
  const aborted = AbortSignal.abort(new Error("stop"));
  const outcomes: [string, Outcome][] = [];
  outcomes.push(["createProgressApi", await outcomeOf(() => createProgressApi(client, options))]);
  // A plain call with its signal already aborted: checked, then aborted before any request.
  const plain = await outcomeOf(() => getProgress(client, "s1", { ...options, signal: aborted }));
  outcomes.push(["progress API", plain instanceof Error && /aborted/.test(plain.message) ? "ok" : plain]);
  // subscribeToProgress: its own attempt timeout given, so that many attempts still leave each 1 ms.
  const sub = { timeoutMs: 1_000, ...options };
  outcomes.push(["subscribeToProgress", await subscribeOutcome({ api: sub })]);
  return outcomes;
}

for (const [name, accepted] of API) {
  Deno.test({
    name: `option ranges: API client ${name}`,
    ...noSanitize,
    fn: async () => {
      for (const [label, value] of VALUES) {
        for (const [where, outcome] of await apiOutcomes(apiOption(name, value))) {
          const path = where === "subscribeToProgress" ? `api.${name}` : name;
          expectOutcome(where, path, label, value, accepted, outcome);
        }
      }
    },
  });
}

// retry: an array is refused as null and non-objects are (it was taken, its fields all defaults).
// headers: a Headers or a Map was spread into the request's headers as none.
// random: null was taken as Math.random, any other value thrown at the first retry's draw.
for (
  const [option, kind, expect] of [
    ["retry", "a plain object", expectObjectOutcome],
    ["headers", "a plain object", expectObjectOutcome],
    ["random", "a function", expectFunctionOutcome],
  ] as const
) {
  Deno.test({
    name: `option ranges: API client ${option} (${kind}, or not given)`,
    ...noSanitize,
    fn: async () => {
      for (const [label, value] of OBJECT_VALUES) {
        for (const [where, outcome] of await apiOutcomes({ [option]: value })) {
          const path = where === "subscribeToProgress" ? `api.${option}` : option;
          expect(`${where} ${option}`, `${where} option ${path}`, label, value, outcome);
        }
      }
    },
  });
}

// headers' values: each is sent as the header's text, whatever it is (fetch wrote 5 as "5", an object
// as "[object Object]", undefined as "undefined"), so only a string is taken.
Deno.test({
  name: "option ranges: API client headers' values (strings only)",
  ...noSanitize,
  fn: async () => {
    for (const [label, value] of [...OBJECT_VALUES, ['""', ""]] as [string, unknown][]) {
      for (const [where, outcome] of await apiOutcomes({ headers: { "X-Act-As-User": value } })) {
        const path = where === "subscribeToProgress" ? "api.headers" : "headers";
        const got = CLASS_INSTANCES.includes(label) ? label : shown(value);
        expectTakenOrTypeError(
          `${where} headers.X-Act-As-User = ${label}`,
          typeof value === "string",
          `${where} option ${path}.X-Act-As-User must be a string (got ${got})`,
          outcome,
        );
      }
    }
  },
});

// headers' names and values: one that fetch's Headers refuses (a CR or LF within it, a space or colon in
// a name, a character above U+00FF) reached fetch at every call, which failed as a network_error and
// was retried, its message quoting the value. Refused as the option is checked, the value not shown
// (a header may carry a secret); what Headers takes as it normalizes it (a value's surrounding
// whitespace, a trailing newline included) is taken.
Deno.test({
  name: "option ranges: API client headers' names and values (as fetch's Headers takes them)",
  ...noSanitize,
  fn: async () => {
    const VALUE = "X-Act-As-User";
    const cases: [string, string, "taken" | "name" | "value"][] = [
      [VALUE, "u1", "taken"],
      [VALUE, " padded\t", "taken"],
      [VALUE, "token-read-with-its-newline\n", "taken"],
      [VALUE, "\r\nleading", "taken"],
      [VALUE, "a\tb", "taken"],
      [VALUE, "\u00e9", "taken"],
      ["x-lower_and.marks!#$%&'*+^`|~", "v", "taken"],
      [VALUE, "u1\r\nX-Injected: 1", "value"],
      [VALUE, "a\nb", "value"],
      [VALUE, "a\rb", "value"],
      [VALUE, "a\u0000b", "value"],
      [VALUE, "\u20ac", "value"],
      ["X Act", "v", "name"],
      ["X-Act:", "v", "name"],
      ["", "v", "name"],
      ["X-Act\r\n", "v", "name"],
      ["X-Injected: 1\r\nX-Act", "v", "name"],
      ["\u00e9", "v", "name"],
    ];
    for (const [field, value, expected] of cases) {
      const at = `headers ${JSON.stringify(field)}: ${JSON.stringify(value)}`;
      // The runtime's own Headers agrees (the check is to refuse what fetch would, no more).
      let headersTake = true;
      try {
        new Headers([[field, value]]);
      } catch {
        headersTake = false;
      }
      assert.equal(headersTake, expected === "taken", `${at}: Headers itself`);
      for (const [where, outcome] of await apiOutcomes({ headers: { [field]: value } })) {
        const path = where === "subscribeToProgress" ? "api.headers" : "headers";
        const message = expected === "name"
          ? `${where} option ${path} has a field whose name is no header name (got ${
            JSON.stringify(field)
          }): a header name is one or more of the letters, digits and !#$%&'*+-.^_\`|~`
          : `${where} option ${path}.${field} must be a header value: no NUL, CR or LF within it and no ` +
            "character above U+00FF (the string given has one; not shown, as a header may carry a secret)";
        expectTakenOrTypeError(`${where} ${at}`, expected === "taken", message, outcome);
      }
    }
  },
});

/**
 * What a `random` option may return, and the retry's wait each gives out of a 1000 ms ceiling: a draw
 * outside [0, 1) is taken into it as RealtimeService's are (tests/shared/realtime/options.test.ts):
 * below 0 as 0, 1 or more as just below 1, NaN or a non-number as 0.5.
 */
const DRAWS: [string, unknown, number][] = [
  ["0", 0, 0],
  ["0.25", 0.25, 250],
  ["NaN", NaN, 500],
  ["-1", -1, 0],
  ["-Infinity", -Infinity, 0],
  ["1", 1, 999],
  ["7", 7, 999],
  ["Infinity", Infinity, 999],
  ['"0.25"', "0.25", 500],
  ["undefined", undefined, 500],
];

Deno.test("option ranges: API client random draws outside [0, 1) are taken into it, as RealtimeService's", async () => {
  // Every attempt fails at the network: one retry, its wait recorded and not slept.
  const down = {
    functions: {
      invoke: () =>
        Promise.resolve({
          data: null,
          error: new FunctionsFetchError(new Error("down")),
          response: undefined,
        }),
    },
  } as unknown as SupabaseClient;
  for (const [label, draw, expected] of DRAWS) {
    const waits: [string, number][] = [];
    const options = (where: string) => ({
      retry: { attempts: 2, baseDelayMs: 1_000, maxDelayMs: 1_000 },
      random: () => draw as number,
      sleep: () => Promise.resolve(),
      onRetry: ({ delayMs }: { delayMs: number }) => void waits.push([where, delayMs]),
    });
    await assert.rejects(
      createProgressApi(down, options("createProgressApi")).getProgress("s1"),
      NetworkError,
    );
    await assert.rejects(getProgress(down, "s1", options("progress API")), NetworkError);
    assert.deepEqual(waits, [["createProgressApi", expected], ["progress API", expected]], `draw ${label}`);
  }
});

Deno.test({
  name: "option ranges: subscribeToProgress api (a plain object, or not given)",
  ...noSanitize,
  fn: async () => {
    // As retry and backoff: an array, null and a non-object are refused (each was taken as no api
    // options given, every default, silently).
    for (const [label, api] of OBJECT_VALUES) {
      const outcome = await subscribeOutcome({ api: api as SubscribeToProgressOptions["api"] });
      expectObjectOutcome("subscribeToProgress api", "subscribeToProgress option api", label, api, outcome);
    }
  },
});

Deno.test({
  name: "option ranges: subscribeToProgress's options argument (a plain object, or not given)",
  ...noSanitize,
  fn: async () => {
    // A class's instance or a Map was passed over when a later call's options were compared with the
    // shared service's (null threw reading options.api).
    for (const [label, options] of OBJECT_VALUES) {
      const { client } = fakeClient();
      let subscription: { unsubscribe(): Promise<void> } | undefined;
      const outcome = await outcomeOf(() =>
        subscription = subscribeToProgress(client, USER, () => {}, options as SubscribeToProgressOptions)
      );
      await subscription?.unsubscribe();
      expectObjectOutcome(
        "subscribeToProgress options",
        "subscribeToProgress argument options",
        label,
        options,
        outcome,
      );
    }
  },
});

Deno.test({
  name: "option ranges: subscribeToProgress changesLimit (a whole number from 1 to 500)",
  ...noSanitize,
  fn: async () => {
    for (const [label, value] of VALUES) {
      const outcome = await subscribeOutcome({ changesLimit: value as number });
      expectOutcome("subscribeToProgress", "changesLimit", label, value, ["1", "500", "undefined"], outcome);
    }
  },
});

// ------------------------------------------------------------------------------------ local Realtime endpoint

/**
 * createRealtimeEndpoint's numeric options: 1 to 2^31-1 ms (a timer's delay), 0 too where it means none (no
 * wait, no throttle, no bound), Infinity too for the two timeouts it means no bound for; the pool a whole
 * number of connections from 1 to 100. Before, only upgradeTimeoutMs was checked: a negative or NaN
 * idleTimeoutMs silently stopped the idle sweep, a confirmTokenIntervalMs of 0 confirmed at every turn.
 */
const ENDPOINT: [keyof RealtimeEndpointOptions, readonly string[]][] = [
  ["idleTimeoutMs", [...TIMER, "0", "-0", "Infinity"]],
  ["confirmTokenIntervalMs", TIMER],
  ["channelErrorBackoffMs", [...TIMER, "0", "-0"]],
  ["connectErrorBackoffMs", [...TIMER, "0", "-0"]],
  ["accessTokenThrottleMs", [...TIMER, "0", "-0"]],
  ["bodyIdleTimeoutMs", TIMER],
  ["upgradeTimeoutMs", [...TIMER, "0", "-0", "Infinity"]],
  ["poolSize", ["1", "undefined"]],
];

Deno.test({
  name: "option ranges: createRealtimeEndpoint's numeric options, refused before it starts anything",
  ...noSanitize,
  // It makes endpoints of its own on the suite's database: only where Realtime is the stand-in.
  ignore: !localRealtime,
  fn: async () => {
    const make = (options: RealtimeEndpointOptions) => endpointOutcome(options);
    for (const [label, value] of VALUES) {
      // A refusal comes before the endpoint's pool and WAL stream exist: one try for each option refusing
      // the value. The options taking it are given it together, in one endpoint made and closed.
      const taking = ENDPOINT.filter(([, accepted]) => accepted.includes(label)).map(([name]) => name);
      if (taking.length > 0) {
        const outcome = await make(Object.fromEntries(taking.map((name) => [name, value])));
        expectOutcome("createRealtimeEndpoint", taking.join(", "), label, value, [label], outcome);
      }
      for (const [name, accepted] of ENDPOINT) {
        if (accepted.includes(label)) continue;
        expectOutcome("createRealtimeEndpoint", name, label, value, accepted, await make({ [name]: value }));
      }
    }
  },
});

/** Makes an endpoint on the suite's database with `options` (and `ctx` over the suite's context), then closes it. */
function endpointOutcome(options: unknown, ctx: Record<string, unknown> = {}): Promise<Outcome> {
  const env = testEnv();
  return outcomeOf(async () => {
    let guard: ReturnType<typeof setTimeout> | undefined;
    const made = createRealtimeEndpoint(
      { dbUrl: env.dbUrl, jwtSecret: env.jwtSecret!, ...ctx } as Parameters<typeof createRealtimeEndpoint>[0],
      options as RealtimeEndpointOptions,
    );
    try {
      // A hang guard only (a pool of no connections would wait for good at its first query).
      const endpoint = await Promise.race([
        made,
        new Promise<never>((_, reject) =>
          guard = setTimeout(() => reject(new Error("neither made nor refused within 30 s")), 30_000)
        ),
      ]);
      await endpoint.close();
    } finally {
      clearTimeout(guard);
    }
  });
}

/**
 * createRealtimeEndpoint's options that are no numbers, and its context's fields, each value refused with
 * the TypeError it gets: `[case, options, context fields over the suite's, message]`. Before, none was
 * checked: a privateOnly of "false" refused every public channel, a frameForm of "JSON" framed binary, a
 * jwtSecret left out verified every token against the secret "undefined", a log that is no function threw
 * at the first event (in a socket's handler or a timer).
 */
const ENDPOINT_REFUSED: [string, unknown, Record<string, unknown>, string][] = [
  [
    'privateOnly "false"',
    { privateOnly: "false" },
    {},
    'option privateOnly must be true or false (got "false")',
  ],
  ["privateOnly 1", { privateOnly: 1 }, {}, "option privateOnly must be true or false (got 1)"],
  ["privateOnly null", { privateOnly: null }, {}, "option privateOnly must be true or false (got null)"],
  ['frameForm "JSON"', { frameForm: "JSON" }, {}, 'option frameForm must be "binary" or "json" (got "JSON")'],
  ['frameForm ""', { frameForm: "" }, {}, 'option frameForm must be "binary" or "json" (got "")'],
  ["frameForm null", { frameForm: null }, {}, 'option frameForm must be "binary" or "json" (got null)'],
  ['log "stderr"', { log: "stderr" }, {}, "option log must be a function (got string)"],
  ["log {}", { log: {} }, {}, "option log must be a function (got object)"],
  ["log null", { log: null }, {}, "option log must be a function (got object)"],
  ["onPhase true", { onPhase: true }, {}, "option onPhase must be a function (got boolean)"],
  ["options null", null, {}, "argument options must be a plain object (got null)"],
  ["options []", [], {}, "argument options must be a plain object (got an array)"],
  [
    "dbUrl not given",
    {},
    { dbUrl: undefined },
    "context field dbUrl must be a postgres:// or postgresql:// URL (got undefined)",
  ],
  [
    'dbUrl ""',
    {},
    { dbUrl: "" },
    "context field dbUrl must be a postgres:// or postgresql:// URL (got a string that is no URL)",
  ],
  [
    "dbUrl http://",
    {},
    { dbUrl: "http://postgres:secret@127.0.0.1:54322/postgres" },
    "context field dbUrl must be a postgres:// or postgresql:// URL (got a URL of protocol http:)",
  ],
  // The protocol without its "//" parses as a URL too (no host part): postgres.js connected to localhost
  // (PGHOST) and took the rest, the password with it, as the database's name.
  [
    "dbUrl postgresql:/ (one slash)",
    {},
    { dbUrl: "postgresql:/postgres:secret@127.0.0.1:54322/postgres" },
    'context field dbUrl must be a postgres:// or postgresql:// URL (got a postgresql: URL without "//")',
  ],
  [
    "dbUrl postgres: (no slash)",
    {},
    { dbUrl: "postgres:postgres:secret@127.0.0.1:54322/postgres" },
    'context field dbUrl must be a postgres:// or postgresql:// URL (got a postgres: URL without "//")',
  ],
  [
    "dbUrl 5432",
    {},
    { dbUrl: 5432 },
    "context field dbUrl must be a postgres:// or postgresql:// URL (got number)",
  ],
  [
    "jwtSecret not given",
    {},
    { jwtSecret: undefined },
    "context field jwtSecret must be a non-empty string (got undefined)",
  ],
  ['jwtSecret ""', {}, { jwtSecret: "" }, 'context field jwtSecret must be a non-empty string (got "")'],
  ["anonKey 5", {}, { anonKey: 5 }, "context field anonKey must be a non-empty string (got 5)"],
  [
    'serviceRoleKey ""',
    {},
    { serviceRoleKey: "" },
    'context field serviceRoleKey must be a non-empty string (got "")',
  ],
];

Deno.test({
  name:
    "option ranges: createRealtimeEndpoint's options that are no numbers and its context, refused before it starts anything",
  // Sanitizers on: a refusal leaves nothing started (no pool, no WAL stream, no timer).
  ignore: !localRealtime,
  fn: async () => {
    for (const [at, options, ctx, message] of ENDPOINT_REFUSED) {
      const outcome = await endpointOutcome(options, ctx);
      expectTakenOrTypeError(
        `createRealtimeEndpoint ${at}`,
        false,
        `createRealtimeEndpoint ${message}`,
        outcome,
      );
    }
    // The context by its type, never the text given (a database URL given as the context may carry a password).
    const asContext = await outcomeOf(() =>
      createRealtimeEndpoint(
        "postgresql://postgres:secret@127.0.0.1/postgres" as unknown as Parameters<
          typeof createRealtimeEndpoint
        >[0],
      )
    );
    expectTakenOrTypeError(
      "createRealtimeEndpoint ctx a string",
      false,
      "createRealtimeEndpoint argument ctx must be a plain object (got string)",
      asContext,
    );
  },
});

Deno.test({
  name: "option ranges: createRealtimeEndpoint's options that are no numbers, the values taken",
  ...noSanitize,
  ignore: !localRealtime,
  fn: async () => {
    const env = testEnv();
    // Both protocols postgres.js reads, whichever the suite's URL has.
    const otherProtocol = new URL(env.dbUrl);
    otherProtocol.protocol = otherProtocol.protocol === "postgres:" ? "postgresql:" : "postgres:";
    const taken: [string, unknown, Record<string, unknown>][] = [
      ["privateOnly true, frameForm json, log and onPhase functions", {
        privateOnly: true,
        frameForm: "json",
        log: () => {},
        onPhase: () => {},
      }, {}],
      [
        "privateOnly false, frameForm binary, the other protocol",
        { privateOnly: false, frameForm: "binary" },
        {
          dbUrl: otherProtocol.toString(),
        },
      ],
      ["the project's keys", {}, { anonKey: env.anonKey, serviceRoleKey: env.serviceRoleKey }],
    ];
    for (const [at, options, ctx] of taken) {
      expectTakenOrTypeError(`createRealtimeEndpoint ${at}`, true, "", await endpointOutcome(options, ctx));
    }
  },
});

Deno.test({
  name: "option ranges: createRealtimeEndpoint poolSize 100 is taken (PROGRESS_DB_POOL_MAX), 101 refused",
  ...noSanitize,
  ignore: !localRealtime,
  fn: async () => {
    assert.equal(await endpointOutcome({ poolSize: 100 }), "ok", "poolSize 100 taken");
    const refused = await endpointOutcome({ poolSize: 101 });
    assert.ok(refused instanceof RangeError, `poolSize 101: a RangeError (got ${refused})`);
    assert.equal(
      refused.message,
      "createRealtimeEndpoint option poolSize must be a whole number from 1 to 100 (got 101)",
    );
  },
});

/** The delays of the intervals createRealtimeEndpoint sets as it makes an endpoint with `options`, sorted. */
async function intervalsSetMaking(options: RealtimeEndpointOptions): Promise<number[]> {
  const env = testEnv();
  const delays: number[] = [];
  const original = globalThis.setInterval;
  globalThis.setInterval = ((...args: Parameters<typeof setInterval>) => {
    delays.push(args[1] ?? 0);
    return original(...args);
  }) as typeof setInterval;
  let endpoint: Awaited<ReturnType<typeof createRealtimeEndpoint>>;
  try {
    endpoint = await createRealtimeEndpoint({ dbUrl: env.dbUrl, jwtSecret: env.jwtSecret! }, options);
  } finally {
    globalThis.setInterval = original;
  }
  await endpoint.close();
  return delays.sort((a, b) => a - b);
}

Deno.test({
  name: "option ranges: createRealtimeEndpoint idleTimeoutMs Infinity sets no idle sweep at all, as 0",
  ...noSanitize,
  ignore: !localRealtime,
  fn: async () => {
    const none = await intervalsSetMaking({ idleTimeoutMs: 0 });
    // The sweep is seen where there is one: every 5 s for a 60 s bound (a quarter of it, at most 5 s).
    const bounded = await intervalsSetMaking({ idleTimeoutMs: 60_000 });
    assert.deepEqual(bounded, [...none, 5_000].sort((a, b) => a - b), "a 60 s bound sweeps every 5 s");
    // Infinity: no bound, so no sweep (before 26632fc it swept every 5 s and closed nothing).
    assert.deepEqual(await intervalsSetMaking({ idleTimeoutMs: Infinity }), none, "no interval beside 0's");
  },
});
