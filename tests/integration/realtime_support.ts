// Helpers shared by the Realtime integration tests: real supabase-js clients, writes as a user
// straight to the database (RLS applies), a "changes since" for RealtimeService, and waiting.

import { createClient, type RealtimeChannel, type SupabaseClient } from "@supabase/supabase-js";
import type postgres from "postgres";
import { LOWER_JOIN_ERROR_BACKOFF_PARAM } from "../../local/realtime/endpoint.ts";
import { localRealtime, testEnv } from "../support/env.ts";

export type Sql = postgres.Sql;

export interface ProgressInput {
  series_id: string;
  chapter?: number;
  page?: number;
  percentage?: number;
  cleared?: boolean;
  device_id: string;
  /** ISO time; defaults to now (the LWW key). */
  updated_at?: string;
}

/** Runs `fn` in a transaction as the user (role authenticated + JWT claims), as PostgREST would. */
export async function asUser<T>(
  sql: Sql,
  userId: string,
  fn: (tx: postgres.TransactionSql) => Promise<T>,
): Promise<T> {
  return await sql.begin(async (tx) => {
    await tx`select set_config('role', 'authenticated', true),
                    set_config('request.jwt.claims', ${
      JSON.stringify({ sub: userId, role: "authenticated" })
    }, true)`;
    return await fn(tx);
  }) as T;
}

/** Upsert of one series' progress as the user: last write wins on (updated_at, device_id). */
export async function writeProgress(sql: Sql, userId: string, input: ProgressInput): Promise<void> {
  const row = {
    chapter: 0,
    page: 0,
    percentage: 0,
    cleared: false,
    updated_at: new Date().toISOString(),
    ...input,
  };
  await asUser(sql, userId, (tx) =>
    tx`insert into public.reading_progress
         (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
       values (${userId}, ${row.series_id}, ${row.chapter}, ${row.page}, ${row.percentage}, ${row.cleared},
               ${row.device_id}, ${row.updated_at})
       on conflict (user_id, series_id) do update set
         chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
         cleared = excluded.cleared, device_id = excluded.device_id, updated_at = excluded.updated_at
       where (excluded.updated_at, excluded.device_id) > (reading_progress.updated_at, reading_progress.device_id)`);
}

/**
 * One write through the progress API (POST /functions/v1/progress) with a user's access token, as
 * a device does it. Returns the API's WriteResult; throws on any non-200 answer.
 */
export async function writeThroughApi(
  accessToken: string,
  input: Omit<ProgressInput, "cleared"> & { cleared?: boolean },
): Promise<{ won: boolean; conflict: string | null; progress: Record<string, unknown> }> {
  const env = testEnv();
  const res = await fetch(`${env.url}/functions/v1/progress`, {
    method: "POST",
    headers: {
      apikey: env.anonKey,
      Authorization: `Bearer ${accessToken}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify({
      chapter: 0,
      page: 0,
      percentage: 0,
      updated_at: new Date().toISOString(),
      ...input,
    }),
  });
  const body = await res.json();
  if (res.status !== 200) {
    throw new Error(`POST /functions/v1/progress: ${res.status} ${JSON.stringify(body)}`);
  }
  return body;
}

export async function deleteProgress(sql: Sql, userId: string, seriesId: string): Promise<void> {
  await asUser(
    sql,
    userId,
    (tx) => tx`delete from public.reading_progress where user_id = ${userId} and series_id = ${seriesId}`,
  );
}

/** The user's rows as the server has them, keyed by series. */
export async function serverState(sql: Sql, userId: string): Promise<Map<string, Record<string, unknown>>> {
  const rows = await sql<Record<string, unknown>[]>`
    select to_jsonb(p) as row from public.reading_progress p where user_id = ${userId} order by series_id`;
  return new Map(
    rows.map((r) => [(r.row as { series_id: string }).series_id, r.row as Record<string, unknown>]),
  );
}

/**
 * "Changes since" over SQL, standing in for the progress API's: rows whose change_xid is at or
 * after the cursor, and as next cursor the oldest transaction still running (so a slow transaction
 * that commits later is not skipped). Re-reads are possible; RealtimeService drops duplicates.
 */
export function sqlChangesSince(sql: Sql, userId: string, counters?: { calls: number; failNext?: number }) {
  return async (cursor: unknown): Promise<{ changes: unknown[]; cursor: string }> => {
    if (counters) {
      counters.calls++;
      if (counters.failNext && counters.failNext > 0) {
        counters.failNext--;
        throw new Error("changesSince unavailable (test)");
      }
    }
    return await asUser(sql, userId, async (tx) => {
      const [{ next }] = await tx<
        { next: string }[]
      >`select pg_snapshot_xmin(pg_current_snapshot())::text as next`;
      const from = typeof cursor === "string" ? cursor : "0";
      const rows = await tx<{ row: unknown }[]>`
        select to_jsonb(p) as row from public.reading_progress p
        where user_id = ${userId} and change_xid >= ${from}::xid8 order by change_xid`;
      return { changes: rows.map((r) => r.row), cursor: next };
    });
  };
}

/**
 * A WebSocket constructor for supabase-js's `realtime.transport` option that opens the socket on
 * another origin: the client keeps the stack's URL for the functions while its Realtime socket
 * goes to an endpoint the test can kill and restart.
 */
export function realtimeAt(origin: string): typeof WebSocket {
  const target = new URL(origin);
  return class RedirectedWebSocket extends WebSocket {
    constructor(url: string | URL, protocols?: ConstructorParameters<typeof WebSocket>[1]) {
      const redirected = new URL(url);
      redirected.host = target.host;
      super(redirected, protocols);
    }
  };
}

export interface ClientOptions {
  /** Base URL (default: the stack's SUPABASE_URL). */
  url?: string;
  vsn?: "1.0.0" | "2.0.0";
  /** realtime-js socket reconnect schedule (default: supabase-js's 1 s, 2 s, 5 s, 10 s). */
  reconnectAfterMs?: (tries: number) => number;
  heartbeatIntervalMs?: number;
  timeout?: number;
  /** How long realtime-js keeps its socket after the last channel is removed (default 2 heartbeats). */
  disconnectOnEmptyChannelsAfterMs?: number;
  /** Realtime socket on another origin than `url` (see realtimeAt). */
  realtimeOrigin?: string;
  /**
   * Lowers the wait before a refused join's reply on this client's socket (the stand-in's
   * LOWER_JOIN_ERROR_BACKOFF_PARAM; Supabase and the stand-in wait 5 s). Only for tests whose
   * refusals are not what they test; Supabase ignores it, so their timeouts must allow 5 s a refusal.
   */
  joinErrorBackoffMs?: number;
}

/** realtime-js options shared by the clients below. */
function realtimeOptions(options: ClientOptions) {
  return {
    ...(options.vsn ? { vsn: options.vsn } : {}),
    ...(options.reconnectAfterMs ? { reconnectAfterMs: options.reconnectAfterMs } : {}),
    ...(options.heartbeatIntervalMs ? { heartbeatIntervalMs: options.heartbeatIntervalMs } : {}),
    ...(options.timeout ? { timeout: options.timeout } : {}),
    ...(options.joinErrorBackoffMs !== undefined
      ? { params: { [LOWER_JOIN_ERROR_BACKOFF_PARAM]: String(options.joinErrorBackoffMs) } }
      : {}),
  };
}

/** A supabase-js client with no session (like createTestUser's), pointed at `url`. */
export function newClient(options: ClientOptions = {}): SupabaseClient {
  const env = testEnv();
  return createClient(options.url ?? env.url, env.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: {
      ...realtimeOptions(options),
      ...(options.disconnectOnEmptyChannelsAfterMs !== undefined
        ? { disconnectOnEmptyChannelsAfterMs: options.disconnectOnEmptyChannelsAfterMs }
        : {}),
    },
  });
}

/** A client whose Realtime (and API) token is whatever `token()` returns (supabase-js `accessToken`). */
export function clientWithToken(token: () => string, options: ClientOptions = {}): SupabaseClient {
  const env = testEnv();
  return createClient(options.url ?? env.url, env.anonKey, {
    accessToken: () => Promise.resolve(token()),
    realtime: {
      ...realtimeOptions(options),
      ...(options.realtimeOrigin ? { transport: realtimeAt(options.realtimeOrigin) } : {}),
    },
  });
}

export interface Received {
  event: string;
  payload: Record<string, unknown>;
  meta?: Record<string, unknown>;
}

export interface JoinedChannel {
  channel: RealtimeChannel;
  received: Received[];
  system: Record<string, unknown>[];
  states: string[];
}

/** Joins a channel with raw realtime-js and collects what arrives. Resolves with the first outcome. */
export async function joinChannel(
  client: SupabaseClient,
  topic: string,
  config: { private?: boolean; broadcast?: { self?: boolean; ack?: boolean } } = { private: true },
): Promise<{ joined: JoinedChannel; status: string; error?: Error }> {
  await client.realtime.setAuth();
  const joined: JoinedChannel = {
    channel: null as unknown as RealtimeChannel,
    received: [],
    system: [],
    states: [],
  };
  return await new Promise((resolve) => {
    let settled = false;
    joined.channel = client
      .channel(topic, { config })
      .on("broadcast", { event: "*" }, (m) => {
        joined.received.push({ event: m.event, payload: m.payload, ...(m.meta ? { meta: m.meta } : {}) });
      })
      .on("system", {}, (p) => joined.system.push(p))
      .subscribe((status, error) => {
        joined.states.push(status);
        if (!settled) {
          settled = true;
          resolve({ joined, status, error });
        }
      });
  });
}

/**
 * Waits until `predicate` holds, checking every `intervalMs`; throws after `timeoutMs` (20 s unless
 * said). The bound is a hang guard only: a test that passes returns as soon as the predicate holds,
 * so a generous one costs nothing, and 10 s (the default before) could run out for a wait a loaded
 * 2-core CI machine makes slow. No test relies on it running out: none catches or races a waitFor.
 */
export async function waitFor(
  what: string,
  predicate: () => boolean | Promise<boolean>,
  { timeoutMs = 20_000, intervalMs = 20 } = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** Settles with `done`, or fails naming `what` if it has not within 20 s (a hang guard only). */
export async function within<T>(what: string, done: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hung = new Promise<never>((_, reject) =>
    timer = setTimeout(() => reject(new Error(`${what}: not within 20 s`)), 20_000)
  );
  try {
    return await Promise.race([done, hung]);
  } finally {
    clearTimeout(timer);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Closes a client's Realtime side: channels left and socket closed. */
export async function closeClient(client: SupabaseClient): Promise<void> {
  await client.removeAllChannels().catch(() => {});
  await client.realtime.disconnect().catch(() => {});
}

/** Test option shorthand: supabase-js keeps timers and sockets around; only the leak test checks. */
export const noSanitize = { sanitizeOps: false, sanitizeResources: false } as const;

/** Options of a test that runs a Realtime endpoint of its own: the local stand-in only (env.ts `localRealtime`). */
export const ownEndpoint = { ...noSanitize, ignore: !localRealtime } as const;

/**
 * A TCP proxy to `target` (host:port of an http URL) whose open connections can be frozen: from then
 * on nothing passes either way and nothing is closed or read, as on a network path that died (a
 * phone changing networks): the peers' send buffers fill and neither side hears of it. Connections
 * made after the freeze pass. `freeze({ drain: true })` reads and discards instead: the peers' writes
 * keep succeeding and every frame is dropped without a word, as on a path that loses packets both ways.
 */
export function freezableProxy(target: string) {
  const { hostname, port } = new URL(target);
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<{ frozen: boolean; drain: boolean; close(): void }>();
  let freezeOnAccept = 0;
  let holdOnAcceptMs = 0;
  let release = () => {};
  const closed = new Promise<void>((resolve) => release = resolve);
  void (async () => {
    for await (const down of listener) {
      const up = await Deno.connect({ hostname, port: Number(port) }).catch(() => null);
      if (!up) {
        down.close();
        continue;
      }
      const conn = {
        frozen: false,
        drain: false,
        close() {
          for (const c of [down, up]) {
            try {
              c.close();
            } catch { /* closed already */ }
          }
        },
      };
      if (freezeOnAccept > 0) {
        freezeOnAccept--;
        conn.frozen = true; // nothing of it ever passes, not even a WebSocket's opening handshake
      }
      conns.add(conn);
      // A slow path: nothing of the connection passes either way until holdOnAcceptMs have passed.
      const held = holdOnAcceptMs > 0 ? new Promise((resolve) => setTimeout(resolve, holdOnAcceptMs)) : null;
      const pipe = async (from: Deno.Conn, to: Deno.Conn) => {
        const buffer = new Uint8Array(16 * 1024);
        try {
          if (held) await held;
          for (;;) {
            if (conn.frozen && !conn.drain) return await closed;
            const n = await from.read(buffer);
            if (n === null) return;
            if (conn.frozen) {
              if (!conn.drain) return;
              continue; // dropped
            }
            for (let sent = 0; sent < n;) sent += await to.write(buffer.subarray(sent, n));
          }
        } catch { /* a side closed */ }
      };
      void Promise.all([pipe(down, up), pipe(up, down)]).then(() => {
        if (conn.frozen) return;
        conn.close();
        conns.delete(conn);
      });
    }
  })().catch(() => {});
  return {
    url: `http://127.0.0.1:${(listener.addr as Deno.NetAddr).port}`,
    /** Freezes every connection open now; returns how many. */
    freeze({ drain = false } = {}): number {
      let frozen = 0;
      for (const conn of conns) {
        if (conn.frozen) continue;
        frozen++;
        conn.frozen = true;
        conn.drain = drain;
      }
      return frozen;
    },
    /**
     * Freezes the next `count` connections as they are made: a path that died while the client was
     * opening it (a WebSocket stays CONNECTING, its handshake unanswered and never refused).
     */
    freezeNew(count = 1): void {
      freezeOnAccept += count;
    },
    /** Cancels the freezes asked by freezeNew() that no connection has taken yet (the path is healthy again). */
    cancelFreezeNew(): void {
      freezeOnAccept = 0;
    },
    /**
     * Holds every connection made from now on for `ms` before anything of it passes (0: no more): a
     * slow but healthy path, whose WebSocket opening handshake takes `ms` and then succeeds.
     */
    slowNew(ms: number): void {
      holdOnAcceptMs = ms;
    },
    close(): void {
      release();
      listener.close();
      for (const conn of conns) conn.close();
    },
  };
}

/**
 * The statuses a RealtimeService link went through from its first "live" on (deduplicated), read from
 * its log (`status` events, in order with the rest), once what came before that first "live" is
 * checked: nothing, or only "polling" after the first join was left unanswered for the join grace
 * or failed (join_unanswered or realtime_unavailable logged before it). On a loaded machine a first
 * join can be that slow, and the link then polls meanwhile, as it should; anything else before the
 * first "live" is wrong, and throws.
 */
export function statusesFromFirstLive(logs: readonly Record<string, unknown>[]): string[] {
  const changes = logs.filter((l) => l.event === "status");
  const first = changes.findIndex((l) => l.to === "live");
  const seen = JSON.stringify(changes.map((l) => l.to));
  if (first < 0) throw new Error(`never live: ${seen}`);
  const before = changes.slice(0, first).map((l) => l.to);
  const joinSlow = logs.slice(0, logs.indexOf(changes[first]))
    .some((l) => l.event === "join_unanswered" || l.event === "realtime_unavailable");
  if (!before.every((s) => s === "polling") || (before.length > 0 && !joinSlow)) {
    throw new Error(`before the first live: ${seen} (a slow first join logged: ${joinSlow})`);
  }
  return changes.slice(first).map((l) => String(l.to)).filter((s, i, all) => i === 0 || all[i - 1] !== s);
}
