// Delivery of database broadcasts: one LISTEN connection for the whole endpoint, one row fetch per
// message, one encoded frame per protocol version, the same bytes to every subscribed socket.
//
// bootstrap.sql's trigger NOTIFYs `realtime_local_messages` with {id, topic, private} for every row
// inserted into realtime.messages. NOTIFY is delivered after commit and in commit order, so
// processing notifications strictly in arrival order delivers messages in commit order. Rows are
// fetched in batches (`where id = any(...)`) only for topics somebody is subscribed to; a topic
// with no subscriber costs no query at all.
//
// Like Supabase (where a message's `private` flag picks the tenant topic), a private message only
// reaches channels joined with `private: true` and a public one only channels joined without it.

import type postgres from "postgres";
import { encodeBroadcast, type Vsn } from "./protocol.ts";

export const NOTIFY_CHANNEL = "realtime_local_messages";

export interface Subscriber {
  /** Joined topic including the `realtime:` prefix (what the frame must carry). */
  readonly fullTopic: string;
  readonly vsn: Vsn;
  /** Sends an already encoded frame. Must not throw. */
  deliver(frame: string | Uint8Array): void;
}

interface Pending {
  id: string;
  topic: string;
  private: boolean;
}

interface MessageRow {
  id: string;
  topic: string;
  event: string | null;
  payload: unknown;
  private: boolean | null;
}

export interface HubStats {
  notifications: number;
  fetched: number;
  delivered: number;
  skippedNoSubscriber: number;
}

export interface HubOptions {
  /** How server broadcasts are framed for vsn 2.0.0 clients. */
  frameForm?: "binary" | "json";
  maxBatch?: number;
  log?: (fields: Record<string, unknown>) => void;
}

export function subscriptionKey(isPrivate: boolean, topic: string): string {
  return `${isPrivate ? "private" : "public"}:${topic}`;
}

export class BroadcastHub {
  #sql: postgres.Sql;
  #subscribers = new Map<string, Set<Subscriber>>();
  #queue: Pending[] = [];
  #draining: Promise<void> | null = null;
  #listen: { unlisten(): Promise<void> } | null = null;
  #closed = false;
  #options: Required<Omit<HubOptions, "log">> & Pick<HubOptions, "log">;
  readonly stats: HubStats = { notifications: 0, fetched: 0, delivered: 0, skippedNoSubscriber: 0 };

  constructor(sql: postgres.Sql, options: HubOptions = {}) {
    this.#sql = sql;
    this.#options = {
      frameForm: options.frameForm ?? "binary",
      maxBatch: options.maxBatch ?? 500,
      log: options.log,
    };
  }

  async start(): Promise<void> {
    this.#listen = await this.#sql.listen(
      NOTIFY_CHANNEL,
      (raw) => this.#onNotify(raw),
      () => this.#options.log?.({ event: "listen", channel: NOTIFY_CHANNEL }),
    );
  }

  add(key: string, subscriber: Subscriber): void {
    let set = this.#subscribers.get(key);
    if (!set) this.#subscribers.set(key, set = new Set());
    set.add(subscriber);
  }

  remove(key: string, subscriber: Subscriber): void {
    const set = this.#subscribers.get(key);
    if (!set) return;
    set.delete(subscriber);
    if (set.size === 0) this.#subscribers.delete(key);
  }

  /** Sends a message to the subscribers of a key right away (client broadcasts; no database). */
  relay(
    key: string,
    message: { fullTopic: string; event: string; payload: unknown },
    except?: Subscriber,
  ): void {
    const set = this.#subscribers.get(key);
    if (!set) return;
    const frames = new Map<Vsn, string | Uint8Array>();
    for (const subscriber of set) {
      if (subscriber === except) continue;
      this.#send(subscriber, frames, {
        topic: message.fullTopic,
        event: message.event,
        payload: message.payload,
      });
    }
  }

  subscriberCount(): number {
    let n = 0;
    for (const set of this.#subscribers.values()) n += set.size;
    return n;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#queue = [];
    await this.#listen?.unlisten().catch(() => {});
    await this.#draining?.catch(() => {});
    this.#subscribers.clear();
  }

  #onNotify(raw: string): void {
    if (this.#closed) return;
    this.stats.notifications++;
    let note: Pending;
    try {
      const parsed = JSON.parse(raw);
      note = { id: String(parsed.id), topic: String(parsed.topic), private: parsed.private !== false };
    } catch {
      this.#options.log?.({ event: "bad_notification", payload: raw });
      return;
    }
    this.#queue.push(note);
    this.#kick();
  }

  /** One drain loop at a time: that is what keeps delivery in notification (= commit) order. */
  #kick(): void {
    this.#draining ??= this.#drain().finally(() => {
      this.#draining = null;
      if (this.#queue.length > 0 && !this.#closed) this.#kick();
    });
  }

  async #drain(): Promise<void> {
    while (this.#queue.length > 0 && !this.#closed) {
      const batch = this.#queue.splice(0, this.#options.maxBatch);
      const wanted = batch.filter((n) => this.#subscribers.has(subscriptionKey(n.private, n.topic)));
      this.stats.skippedNoSubscriber += batch.length - wanted.length;
      if (wanted.length === 0) continue;
      let rows: MessageRow[];
      try {
        rows = await this.#sql<MessageRow[]>`
          select id, topic, event, payload, private from realtime.messages
          where id = any(${wanted.map((n) => n.id)}::uuid[])`;
      } catch (error) {
        // The messages are lost for live delivery (as when Supabase Realtime cannot read the WAL);
        // clients catch up through their own "changes since" on resubscribe.
        this.#options.log?.({ event: "fetch_failed", count: wanted.length, error: String(error) });
        continue;
      }
      this.stats.fetched += rows.length;
      const byId = new Map(rows.map((r) => [r.id, r]));
      for (const note of wanted) {
        const row = byId.get(note.id);
        if (row) this.#deliver(row);
      }
    }
  }

  #deliver(row: MessageRow): void {
    const set = this.#subscribers.get(subscriptionKey(row.private !== false, row.topic));
    if (!set || set.size === 0) return;
    // Supabase adds the message id to the payload (when it has none) and to `meta`.
    let payload = row.payload;
    if (payload && typeof payload === "object" && !Array.isArray(payload) && !("id" in payload)) {
      payload = { ...(payload as Record<string, unknown>), id: row.id };
    }
    const frames = new Map<Vsn, string | Uint8Array>();
    const fullTopic = `realtime:${row.topic}`;
    for (const subscriber of set) {
      this.#send(subscriber, frames, {
        topic: fullTopic,
        event: row.event ?? "",
        payload,
        meta: { id: row.id },
      });
    }
  }

  #send(
    subscriber: Subscriber,
    frames: Map<Vsn, string | Uint8Array>,
    message: { topic: string; event: string; payload: unknown; meta?: Record<string, unknown> },
  ): void {
    let frame = frames.get(subscriber.vsn);
    if (frame === undefined) {
      frame = encodeBroadcast(message, subscriber.vsn, this.#options.frameForm);
      frames.set(subscriber.vsn, frame);
    }
    subscriber.deliver(frame);
    this.stats.delivered++;
  }
}
