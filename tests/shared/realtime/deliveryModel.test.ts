// A seeded model-based test of RealtimeService's delivery promise: whatever the order in which joins,
// drops, join timeouts, refusals, changesSince answers (current or taken before writes made since),
// failures, request timeouts, broadcasts, syncNow() calls and new tokens come, a change is never
// missed and a device is never dragged back. Everything runs on a virtual clock (the service's
// setTimeout and performance.now() are the test's): a step is one event, then the microtasks it
// started run to rest; no real time passes, and a seed replays the same run.
//
// The model: one user, five series, versions numbered by the order they were committed (the changes
// cursor is that number; a page holds at most PAGE_SIZE series, the newest version of each, deletions
// as the deleted row marked deleted, as reading_progress_changes answers). A re-insert after a delete
// is a new life (a later created_at), sometimes with an older updated_at than the life deleted. A
// channel the test has joined receives a broadcast of every version committed afterwards, in commit
// order, until it drops (Supabase delivers at most once: those queued when it drops are lost).
//
// What must hold:
//   - when the link goes live, the handler holds, for every series, the version current when the
//     channel's join was answered, or a later one (the catch-up read to the end after the join);
//   - the handler never receives a version of a series older than one it received before (the
//     commit order: a delete carries the deleted version);
//   - once the faults stop (joins answered, calls answered, writes still coming), the link goes live
//     and its handler converges on the server's rows; it never stalls (not live with nothing
//     scheduled and nothing in flight); closed, it leaves no timer.
// READSYNC_DELIVERY_SEED=<seed> replays one seed; READSYNC_DELIVERY_SEEDS=<n> runs more (default 30);
// a value that is no seed (a whole number from 0 to 2^32-1) or no count (from 1) stops the run.

import assert from "node:assert/strict";
import type { SupabaseClient } from "@supabase/supabase-js";
import { type ProgressChange, RealtimeService } from "../../../shared/realtime/realtimeService.ts";
import { casesFromEnv, envSeed, type SeededRandom, seededRandom } from "../../support/seededRandom.ts";

const USER = "00000000-0000-4000-8000-0000000000d1";
const SERIES = ["a", "b", "c", "d", "e"];
const PAGE_SIZE = 3;
const FAULT_STEPS = 400;

type Row = ProgressChange["row"];

interface Version {
  seq: number;
  row: Row;
  deleted: boolean;
}

/** setTimeout and performance.now() on a clock the test moves. */
class VirtualClock {
  now = 0;
  #next = 1;
  readonly timers = new Map<number, { due: number; fn: () => void }>();
  #realSetTimeout = globalThis.setTimeout;
  #realClearTimeout = globalThis.clearTimeout;
  #realNow = performance.now;

  install(): void {
    globalThis.setTimeout = ((fn: () => void, ms = 0) => {
      const id = this.#next++;
      this.timers.set(id, { due: this.now + Math.max(0, Number(ms) || 0), fn });
      return id;
    }) as unknown as typeof setTimeout;
    globalThis.clearTimeout = ((id?: number) => {
      if (id !== undefined) this.timers.delete(id);
    }) as typeof clearTimeout;
    performance.now = () => this.now;
  }

  restore(): void {
    globalThis.setTimeout = this.#realSetTimeout;
    globalThis.clearTimeout = this.#realClearTimeout;
    performance.now = this.#realNow;
  }

  /** Runs the earliest timer (moving the clock to it); false when none is pending. */
  async fireNext(): Promise<boolean> {
    let earliest: [number, { due: number; fn: () => void }] | undefined;
    for (const entry of this.timers) if (!earliest || entry[1].due < earliest[1].due) earliest = entry;
    if (!earliest) return false;
    this.timers.delete(earliest[0]);
    this.now = Math.max(this.now, earliest[1].due);
    earliest[1].fn();
    await settle();
    return true;
  }
}

/**
 * Lets every microtask the last event started run (no timer is real and no I/O is made: nothing else
 * can happen meanwhile). A thousand turns: the longest chain of awaits a step of the service starts
 * is a few dozen.
 */
async function settle(): Promise<void> {
  for (let i = 0; i < 1_000; i++) await Promise.resolve();
}

interface FakeChannel {
  topic: string;
  joinPush: { ref: string };
  state?: (state: string, error?: Error) => void;
  broadcast?: (message: unknown) => void;
  /** The server has it subscribed (its join answered, not dropped since): broadcasts reach it. */
  joined: boolean;
  removed: boolean;
  queue: unknown[];
}

async function run(seed: number): Promise<void> {
  const random: SeededRandom = seededRandom(seed);
  const clock = new VirtualClock();
  clock.install();
  try {
    await runModel(seed, random, clock);
  } finally {
    clock.restore();
  }
}

async function runModel(seed: number, random: SeededRandom, clock: VirtualClock): Promise<void> {
  // ------------------------------------------------------------------------------ the server
  const committed: Version[] = [];
  const current = new Map<string, Version>();
  let seq = 0;
  let clockMs = Date.UTC(2026, 0, 1);
  let lives = 0;
  const channels: FakeChannel[] = [];

  const write = (series: string, remove: boolean) => {
    const before = current.get(series);
    const exists = before !== undefined && !before.deleted;
    seq++;
    clockMs += 1 + random.int(3);
    let version: Version;
    if (remove && exists) {
      version = { seq, row: before.row, deleted: true };
    } else {
      // A new life after a delete (or the first) may be dated before the life deleted (an e-reader
      // back from a week offline): the server keeps it, and devices must follow it.
      const backdated = !exists && before !== undefined && random.chance(0.5);
      const date = new Date(backdated ? clockMs - 3_600_000 : clockMs).toISOString();
      const createdAt = exists
        ? before.row.created_at
        : `${new Date(Date.UTC(2025, 0, 1) + ++lives * 1000).toISOString().slice(0, 19)}.000000Z`;
      version = {
        seq,
        deleted: false,
        row: {
          user_id: USER,
          series_id: series,
          chapter: seq % 1000,
          page: 0,
          percentage: 0,
          cleared: false,
          device_id: "writer",
          updated_at: date,
          synced_at: date,
          change_xid: String(seq),
          created_at: createdAt,
        },
      };
    }
    committed.push(version);
    current.set(series, version);
    for (const channel of channels) {
      if (!channel.joined || channel.removed) continue;
      channel.queue.push({
        type: "broadcast",
        event: version.deleted ? "DELETE" : before ? "UPDATE" : "INSERT",
        meta: { id: `message-${seq}` },
        payload: version.deleted ? { operation: "DELETE", record: null, old_record: version.row } : {
          operation: before && !before.deleted ? "UPDATE" : "INSERT",
          record: version.row,
          old_record: null,
        },
      });
    }
  };

  /** reading_progress_changes over the model: the newest version of each series changed after `cursor`. */
  const page = (cursor: unknown) => {
    const after = typeof cursor === "string" ? Number(cursor) : 0;
    const changed = [...current.values()].filter((v) => v.seq > after).sort((x, y) => x.seq - y.seq);
    const items = changed.slice(0, PAGE_SIZE);
    const hasMore = changed.length > PAGE_SIZE;
    return {
      changes: items.map((v) => v.deleted ? { ...v.row, deleted: true } : v.row),
      next_cursor: String(hasMore ? items[items.length - 1].seq : Math.max(seq, after)),
      has_more: hasMore,
    };
  };

  interface Call {
    answer: () => void;
    fail: () => void;
    open: boolean;
  }
  const calls: Call[] = [];

  // ------------------------------------------------------------------------------ the client
  const realtime = {
    accessToken: null as (() => Promise<string | null>) | null,
    accessTokenValue: "T0" as string | null,
    timeout: 10_000,
    setAuth(token: string | null = null) {
      if (token) realtime.accessTokenValue = token;
      return Promise.resolve();
    },
    push() {},
  };
  let refs = 0;
  const client = {
    realtime,
    channel(name: string) {
      const channel: FakeChannel & Record<string, unknown> = {
        topic: `realtime:${name}`,
        joinPush: { ref: String(++refs) },
        joined: false,
        removed: false,
        queue: [],
        on(type: string, _filter: unknown, callback: (message: unknown) => void) {
          if (type === "broadcast") channel.broadcast = callback;
          return channel;
        },
        subscribe(callback: FakeChannel["state"]) {
          channel.state = callback;
          return channel;
        },
        teardown() {},
      };
      channels.push(channel);
      return channel;
    },
    getChannels: () => channels.filter((c) => !c.removed),
    removeChannel(channel: FakeChannel) {
      channel.removed = true;
      channel.joined = false;
      return Promise.resolve("ok");
    },
    auth: { onAuthStateChange: () => ({ data: { subscription: { unsubscribe() {} } } }) },
  };

  const logs: string[] = [];
  const service = new RealtimeService(client as unknown as SupabaseClient, {
    changesSince: (cursor, { signal }) =>
      new Promise((resolve, reject) => {
        // Half the calls are answered as the database saw it when the request arrived (writes made
        // meanwhile are missing), half as it is when the answer is given.
        const early = random.chance(0.5) ? page(cursor) : null;
        const call: Call = {
          open: true,
          answer: () => resolve(early ?? page(cursor)),
          fail: () => reject(new Error("503 from the model")),
        };
        calls.push(call);
        signal.addEventListener("abort", () => {
          call.open = false;
          reject(signal.reason);
        });
      }),
    accessToken: "T0",
    pollIntervalMs: 1_000,
    livePollIntervalMs: 0, // convergence must not need the safety read
    heartbeatReplyTimeoutMs: 0,
    requestTimeoutMs: 5_000,
    joinTimeoutMs: 3_000,
    backoff: { initialMs: 500, maxMs: 4_000 },
    random: random.next,
    log: (line) => logs.push(line),
  });

  // ------------------------------------------------------------------------------ the device
  const view = new Map<string, Row>();
  /** The newest version number the handler received per series (a delete's is the deleted version's). */
  const newest = new Map<string, number>();
  const problems: string[] = [];
  const subscription = service.subscribeToProgress(USER, (change) => {
    const series = change.row.series_id;
    const number = Number(change.row.change_xid);
    if (number < (newest.get(series) ?? 0)) {
      problems.push(`${series}: ${change.kind} of version ${number} after version ${newest.get(series)}`);
    }
    newest.set(series, number);
    if (change.kind === "upsert") view.set(series, change.row);
    else view.delete(series);
  });

  let seqAtJoin = 0;
  subscription.onStatus((status) => {
    if (status !== "live") return;
    for (const series of SERIES) {
      const atJoin = committed.findLast((v) => v.row.series_id === series && v.seq <= seqAtJoin);
      if (!atJoin) continue;
      const held = view.get(series);
      // The version current at the join, or any later one (a delete: the series absent).
      const fine = committed.some((v) =>
        v.row.series_id === series && v.seq >= atJoin.seq &&
        (v.deleted ? held === undefined : held !== undefined && Number(held.change_xid) === v.seq)
      );
      if (!fine) {
        problems.push(
          `live at ${clock.now} ms without ${series}'s version ${atJoin.seq} (holds ${held?.change_xid}), joined at ${seqAtJoin}`,
        );
      }
    }
  });
  await settle();

  const pending = () => channels.find((c) => !c.removed && c.state && !c.joined);
  const joined = () => channels.find((c) => !c.removed && c.joined);
  const answerJoin = (channel: FakeChannel) => {
    channel.joined = true;
    seqAtJoin = seq;
    channel.state!("SUBSCRIBED");
  };

  // ------------------------------------------------------------------------------ faults
  for (let step = 0; step < FAULT_STEPS && problems.length === 0; step++) {
    const r = random.next();
    if (r < 0.2) {
      write(random.pick(SERIES), random.chance(0.15));
    } else if (r < 0.35) {
      const open = calls.filter((c) => c.open);
      if (open.length > 0) {
        const call = random.pick(open);
        call.open = false;
        if (random.chance(0.3)) call.fail();
        else call.answer();
      }
    } else if (r < 0.45) {
      const waiting = pending();
      const live = joined();
      if (waiting && random.chance(0.7)) answerJoin(waiting);
      else if (waiting ?? live) {
        const channel = (waiting ?? live)!;
        channel.joined = false;
        channel.queue = []; // at most once: what was not delivered yet is lost with the channel
        channel.state!(random.pick(["CHANNEL_ERROR", "TIMED_OUT", "CLOSED"]), new Error("the model's drop"));
      }
    } else if (r < 0.6) {
      for (const channel of channels) {
        while (channel.joined && !channel.removed && channel.queue.length > 0 && random.chance(0.7)) {
          channel.broadcast?.(channel.queue.shift());
        }
      }
    } else if (r < 0.63) {
      void subscription.syncNow();
    } else if (r < 0.65) {
      void service.setAccessToken(`T${random.int(1000)}`);
    } else {
      await clock.fireNext();
    }
    await settle();
  }

  // ------------------------------------------------------------------------------ no more faults
  const viewKey = () => JSON.stringify([...view].map(([s, row]) => [s, row.change_xid]).sort());
  const serverKey = () =>
    JSON.stringify([...current].filter(([, v]) => !v.deleted).map(([s, v]) => [s, v.row.change_xid]).sort());
  let converged = false;
  let liveWrites = 0;
  for (let step = 0; step < 5_000 && problems.length === 0 && !converged; step++) {
    const open = calls.find((c) => c.open);
    const waiting = pending();
    const queued = channels.find((c) => c.joined && !c.removed && c.queue.length > 0);
    if (open) {
      open.open = false;
      open.answer();
    } else if (waiting) {
      answerJoin(waiting);
    } else if (queued) {
      queued.broadcast?.(queued.queue.shift());
    } else if (subscription.status === "live") {
      // Live: writes go on, and arrive by broadcast alone (the safety read is off).
      if (liveWrites < 10) {
        liveWrites++;
        write(random.pick(SERIES), random.chance(0.15));
      } else {
        converged = viewKey() === serverKey();
        if (!converged) break;
      }
    } else if (!(await clock.fireNext())) {
      problems.push(`stalled ${subscription.status}: nothing scheduled, nothing in flight`);
    }
    await settle();
  }
  if (problems.length === 0 && !converged) {
    problems.push(`did not converge (${subscription.status}): holds ${viewKey()}, server ${serverKey()}`);
  }

  await subscription.unsubscribe();
  await service.close();
  if (problems.length > 0) {
    throw new Error(
      `seed ${seed}: ${problems.slice(0, 3).join("; ")}\nlast log lines:\n${logs.slice(-15).join("\n")}`,
    );
  }
  assert.equal(service.stats().timers, 0, `seed ${seed}: timers left after close`);
}

Deno.test("realtime service delivery model: seeded runs of joins, drops, failures and stale answers miss nothing and never go back", async () => {
  // Both read, so that a bad count is refused even when one seed is given.
  const one = envSeed("READSYNC_DELIVERY_SEED");
  const count = casesFromEnv("READSYNC_DELIVERY_SEEDS", 30);
  const seeds = one !== undefined ? [one] : Array.from({ length: count }, (_, i) => 20261206 + i);
  for (const seed of seeds) await run(seed);
});
