// Helpers for the progress API tests: real HTTP against the local gateway
// (${SUPABASE_URL}/functions/v1/progress, started by `npm test`) and a superuser view of the
// database to prove what a request did or did not change.

import postgres from "postgres";
import { adminSql, testEnv } from "../support/env.ts";
import type { ProgressWriteInput } from "../../shared/progress/schemas.ts";

export const FUNCTION_URL = () => `${testEnv().url}/functions/v1/progress`;

export interface ApiAnswer {
  status: number;
  headers: Headers;
  /** Parsed JSON, or the raw text when the body is not JSON (null for an empty body). */
  body: unknown;
}

export interface CallOptions {
  token?: string | null;
  body?: unknown;
  /** Sent as is (not JSON-encoded). */
  rawBody?: BodyInit;
  headers?: Record<string, string>;
  /** Base URL of the function (default: the gateway's). */
  base?: string;
}

/** One request; the body is always read, so no response stream leaks. */
export async function call(method: string, path: string, options: CallOptions = {}): Promise<ApiAnswer> {
  const headers = new Headers(options.headers ?? {});
  if (options.token) headers.set("authorization", `Bearer ${options.token}`);
  let body: BodyInit | undefined = options.rawBody;
  if (options.body !== undefined) {
    body = JSON.stringify(options.body);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
  }
  const res = await fetch(`${options.base ?? FUNCTION_URL()}${path}`, { method, headers, body });
  const text = await res.text();
  let parsed: unknown = text === "" ? null : text;
  try {
    parsed = text === "" ? null : JSON.parse(text);
  } catch { /* not JSON: keep the text */ }
  return { status: res.status, headers: res.headers, body: parsed };
}

/** The API's error body, asserted to have the documented shape. */
export function errorOf(answer: ApiAnswer): { code: string; message: string; details?: unknown } {
  const body = answer.body as { error?: { code?: unknown; message?: unknown } } | null;
  if (
    !body || typeof body !== "object" || !body.error || typeof body.error.code !== "string" ||
    typeof body.error.message !== "string"
  ) {
    throw new Error(`not an API error body (status ${answer.status}): ${JSON.stringify(answer.body)}`);
  }
  return body.error as { code: string; message: string; details?: unknown };
}

let seq = 0;
/** A unique, valid series id. */
export function seriesId(prefix = "s"): string {
  return `${prefix}-${Date.now().toString(36)}-${(seq++).toString(36)}-${crypto.randomUUID().slice(0, 8)}`;
}

export function write(over: Partial<ProgressWriteInput> & { series_id: string }): ProgressWriteInput {
  return {
    chapter: 1,
    page: 1,
    percentage: 0.01,
    device_id: "dev-test",
    updated_at: new Date().toISOString(),
    ...over,
  };
}

/** Every reading_progress and conflict-log row of the given users, as the superuser sees them. */
export async function snapshot(sql: postgres.Sql, userIds: string[]): Promise<string> {
  const [{ state }] = await sql<{ state: string }[]>`
    select jsonb_build_object(
      'progress', (select coalesce(jsonb_agg(to_jsonb(p) order by p.user_id, p.series_id), '[]')
                     from public.reading_progress p where p.user_id = any(${userIds}::uuid[])),
      'conflicts', (select coalesce(jsonb_agg(to_jsonb(c) order by c.id), '[]')
                      from public.reading_progress_conflicts c where c.user_id = any(${userIds}::uuid[]))
    )::text as state`;
  return state;
}

/** Conflict-log rows of one user and series, oldest first. */
export async function conflictRows(sql: postgres.Sql, userId: string, series: string) {
  return [
    ...await sql<{
      kind: string;
      rejected: boolean;
      losing_updated_at: Date;
      losing_device_id: string;
      winning_updated_at: Date;
      winning_device_id: string;
    }[]>`
    select kind, rejected, losing_updated_at, losing_device_id, winning_updated_at, winning_device_id
      from public.reading_progress_conflicts where user_id = ${userId} and series_id = ${series} order by id`,
  ];
}

/**
 * The statement PostgREST runs for supabase-js .upsert(rows) on reading_progress, rows of user_id,
 * series_id, chapter, page, percentage, device_id and updated_at: one INSERT of the rows from
 * json_populate_recordset, ON CONFLICT on the primary key, DO UPDATE of every column sent; the series it
 * returned, in order. Run in `tx` as whoever `tx` is set to be.
 */
export function dataApiBulkUpsert(tx: postgres.TransactionSql, rows: object[]) {
  return tx<{ series_id: string }[]>`
    insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
    select user_id, series_id, chapter, page, percentage, device_id, updated_at
      from json_populate_recordset(null::public.reading_progress, ${JSON.stringify(rows)}::text::json)
    on conflict (user_id, series_id) do update
      set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
          device_id = excluded.device_id, updated_at = excluded.updated_at
    returning series_id`;
}

export { adminSql, testEnv };

/** A transaction a script holds open until `release()`; `done` settles once it has ended. */
export interface Held {
  release: () => void;
  done: Promise<unknown>;
}

/**
 * Lets a held transaction end and waits until it has, in a test's `finally`: after a failed assertion
 * too, so that the test fails with that assertion's message instead of hanging in the connection's
 * end() (which waits for the transaction, and the writes waiting for its locks, to finish), and leaves
 * no open transaction, lock or connection behind. How it ended was checked by the test, if it got there.
 */
export async function endHeld(held: Held | undefined): Promise<void> {
  held?.release();
  await held?.done.catch(() => {});
}

/**
 * A login role of the test's own, a member of `authenticated` (as the function's database user is), whose
 * connections the test can have the server refuse: `alter role … connection limit 0` makes every new
 * connection of the role fail its startup with 53300 (too many connections for role), as a project at its
 * connection limit does; the tests' own database user, a superuser, is never refused so, which keeps the
 * rest of the suite apart. `drop()` lets connections in again and drops the role.
 */
export async function refusableRole(admin: postgres.Sql) {
  const role = `readsync_refused_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
  const password = crypto.randomUUID();
  await admin.unsafe(`create role ${role} login password '${password}'`);
  await admin.unsafe(`grant authenticated to ${role}`);
  const url = new URL(testEnv().dbUrl);
  url.username = role;
  url.password = password;
  return {
    url: url.toString(),
    refuse: () => admin.unsafe(`alter role ${role} connection limit 0`),
    accept: () => admin.unsafe(`alter role ${role} connection limit -1`),
    drop: async () => {
      await admin.unsafe(`alter role ${role} connection limit -1`);
      await admin.unsafe(`drop role if exists ${role}`);
    },
  };
}

/** A TCP port nothing listens on (bound, then released). */
export function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Serves a fetch handler on a free local port over real HTTP; stop with `await server.shutdown()`. */
export function serveLocal(handler: (req: Request) => Response | Promise<Response>): {
  url: string;
  shutdown(): Promise<void>;
} {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, handler);
  return { url: `http://127.0.0.1:${server.addr.port}`, shutdown: () => server.shutdown() };
}

export interface RawAnswer extends ApiAnswer {
  /** The answer's head as sent, lower-cased (`name: value` lines; Headers would join repeated ones). */
  head: string;
}

/**
 * One HTTP/1.1 request written by hand on a TCP connection to `url`'s host: `head` (lines joined with
 * \n, without the blank line), then `send(write)` writes the body as it likes (part of it and stop,
 * slowly, ...). The connection is never half-closed, so a body left unfinished stays unfinished. The
 * answer is read until it is complete (its Content-Length, or the last chunk), not until the server
 * closes: Deno 2.9's server sends `Connection: close` on an answer to a request whose body it has not
 * read to the end, but leaves the socket open until the client closes it. Throws when no complete
 * answer came within guardMs (a hang guard). With `sendWhileReading`, the answer is read while `send`
 * runs, and its `answered` signal aborts once the answer is complete (or none will come): a body that
 * keeps coming until the server answers (send must then end, and a write after the answer may fail).
 * A send that fails is this call's failure (its error, once the answer is in; or named in the
 * no-answer error), never an unhandled rejection, however early it fails.
 */
export async function rawRequest(
  url: string,
  head: string,
  send: (write: (text: string) => Promise<void>, answered: AbortSignal) => Promise<void>,
  { guardMs = 30_000, sendWhileReading = false } = {},
): Promise<RawAnswer> {
  const target = new URL(url);
  const conn = await Deno.connect({ hostname: target.hostname, port: Number(target.port || 80) });
  let guarded = false;
  const guard = setTimeout(() => {
    guarded = true;
    conn.close();
  }, guardMs);
  const write = async (text: string) => {
    const bytes = new TextEncoder().encode(text);
    for (let n = 0; n < bytes.byteLength;) n += await conn.write(bytes.subarray(n));
  };
  let text = "";
  const complete = (): RawAnswer | null => {
    const end = text.indexOf("\r\n\r\n");
    if (end < 0) return null;
    const answerHead = text.slice(0, end).toLowerCase();
    const payload = text.slice(end + 4);
    let json: string;
    if (/^transfer-encoding: *chunked/m.test(answerHead)) {
      // "<hex size>\r\n<data>\r\n...0\r\n\r\n"; one data chunk is enough here.
      if (!/(^|\r\n)0\r\n\r\n$/.test(payload)) return null;
      json = payload.startsWith("0\r\n") ? "" : payload.split("\r\n")[1];
    } else {
      const length = Number(answerHead.match(/^content-length: *(\d+)$/m)?.[1] ?? 0);
      if (new TextEncoder().encode(payload).byteLength < length) return null;
      json = payload;
    }
    const headers = new Headers();
    for (const line of text.slice(0, end).split("\r\n").slice(1)) {
      const colon = line.indexOf(":");
      if (colon > 0) headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    }
    return {
      status: Number(text.match(/^HTTP\/1\.1 (\d{3})/)?.[1]),
      headers,
      head: answerHead,
      body: json === "" ? null : JSON.parse(json),
    };
  };
  const answered = new AbortController();
  // With sendWhileReading, a failure of `send` is caught the moment it happens and kept for this
  // call's own answer (thrown once the answer is in, or named in the no-answer error): left
  // unhandled while the answer is read, it would be an unhandled rejection failing the whole file.
  let sendFailure: { error: unknown } | undefined;
  let sending: Promise<void> = Promise.resolve();
  /** Waits for a send still under way to end (never rejects), and throws its failure if it failed. */
  const sendEnded = async () => {
    answered.abort();
    await sending;
    if (sendFailure) throw sendFailure.error;
  };
  try {
    await write(`${head.replaceAll("\n", "\r\n")}\r\n\r\n`);
    if (sendWhileReading) {
      sending = send(write, answered.signal).catch((error) => {
        sendFailure = { error };
      });
    } else await send(write, answered.signal);
    const buffer = new Uint8Array(16 * 1024);
    while (true) {
      const answer = complete();
      if (answer) {
        await sendEnded();
        return answer;
      }
      const n = await conn.read(buffer).catch(async (error) => {
        if (guarded) return null;
        await sendEnded().catch((sendError) => {
          throw new AggregateError(
            [error, sendError],
            `the answer's read failed (${error}), and the send (${sendError})`,
          );
        });
        throw error;
      });
      if (n === null) break;
      text += new TextDecoder().decode(buffer.subarray(0, n));
    }
    const noAnswer =
      `no complete answer ${guarded ? `within ${guardMs} ms` : "before the connection closed"} ` +
      `(got ${JSON.stringify(text.slice(0, 200))})`;
    await sendEnded().catch((sendError) => {
      throw new Error(`${noAnswer}; the send failed: ${sendError}`, { cause: sendError });
    });
    throw new Error(noAnswer);
  } finally {
    answered.abort();
    await sending; // settles, never rejects (its failure is kept in sendFailure)
    clearTimeout(guard);
    if (!guarded) conn.close();
  }
}
