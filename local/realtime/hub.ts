// Delivery of database broadcasts: realtime.messages inserts read from the WAL (wal.ts), one
// encoded frame per protocol version, the same bytes to every subscribed socket.
//
// The WAL reader hands over each committed row, whole, in commit order, on one stream, and the hub
// delivers it synchronously as it arrives: delivery order is commit order, and no message needs a
// query (a topic with no subscriber costs a map lookup).
//
// Like Supabase (where a message's `private` flag picks the tenant topic), a private message only
// reaches channels joined with `private: true` and a public one only channels joined without it.

import { encodeBroadcast, type Vsn } from "./protocol.ts";
import { type MessageRow, WalReader } from "./wal.ts";
import type { DatabaseConnection } from "../stack/database.ts";

export interface Subscriber {
  /** Joined topic including the `realtime:` prefix (what the frame must carry). */
  readonly fullTopic: string;
  readonly vsn: Vsn;
  /** Sends an already encoded frame. Must not throw. */
  deliver(frame: string | Uint8Array): void;
}

export interface HubStats {
  /** realtime.messages inserts received from the WAL (every topic). */
  walMessages: number;
  /** Of those, messages whose topic had at least one subscriber (each delivered once, encoded once). */
  matched: number;
  delivered: number;
  skippedNoSubscriber: number;
  /** Rows without topic, event, payload or private, which Supabase's replication handler drops. */
  skippedIncomplete: number;
}

export interface HubOptions {
  /**
   * How database broadcasts are framed. "binary" (default) is what supabase/realtime v2.130.0 sends,
   * the image `supabase start` runs with the Supabase CLI 2.117.0 (its pkg/config/templates/Dockerfile:
   * `FROM supabase/realtime:v2.130.0`): Realtime.Tenants.ReplicationConnection builds a
   * RealtimeWeb.Socket.UserBroadcast with `metadata: %{"id" => id}` and the row's payload bytes as
   * stored (supabase/realtime#1867, "avoid using BatchBroadcast from ReplicationConnection"), which
   * RealtimeWeb.Socket.V2Serializer writes to a vsn 2.0.0 client as a binary kind 4 frame with the
   * metadata `{"id"}`; a vsn 1.0.0 client gets it converted (UserBroadcast.convert_to_json_broadcast,
   * in MessageDispatcher) to the JSON text `{type, event, payload, meta: {id}}`. Realtime adds
   * nothing to the payload: an `id` in it is one the row has, such as the one realtime.send stores
   * (`jsonb_set(payload, '{id}', …)` unless the payload has one; local/platform/bootstrap.sql).
   * "json" is the form of older releases, whose replication handler went through BatchBroadcast:
   * a Phoenix.Socket.Broadcast (JSON text for both vsns) with `meta: {id}`, the id also put into
   * the payload when it had none (`Map.put_new(payload, "id", id)`).
   */
  frameForm?: "binary" | "json";
  log?: (fields: Record<string, unknown>) => void;
}

export function subscriptionKey(isPrivate: boolean, topic: string): string {
  return `${isPrivate ? "private" : "public"}:${topic}`;
}

export class BroadcastHub {
  #subscribers = new Map<string, Set<Subscriber>>();
  #wal: WalReader;
  #closed = false;
  #frameForm: "binary" | "json";
  #stats = { matched: 0, delivered: 0, skippedNoSubscriber: 0, skippedIncomplete: 0 };

  constructor(db: DatabaseConnection, options: HubOptions = {}) {
    this.#frameForm = options.frameForm ?? "binary";
    this.#wal = new WalReader(db, { onMessage: (row) => this.#onMessage(row), log: options.log });
  }

  get stats(): HubStats {
    return { walMessages: this.#wal.stats.walMessages, ...this.#stats };
  }

  /** Resolves once replication streams: every row committed afterwards is delivered. */
  async start(): Promise<void> {
    await this.#wal.start();
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

  /**
   * Sends a message to the subscribers of a key right away (client and REST broadcasts; no database),
   * as the binary "user broadcast" frame (Supabase's UserBroadcast: client pushes, the single REST
   * route) or, with `form` "json", the JSON text frame (the batch REST route's Phoenix broadcast).
   */
  relay(
    key: string,
    message: { fullTopic: string; event: string; payload: unknown; meta?: Record<string, unknown> },
    except?: Subscriber,
    form: "binary" | "json" = "binary",
  ): void {
    const set = this.#subscribers.get(key);
    if (!set) return;
    const frames = new Map<Vsn, string | Uint8Array>();
    for (const subscriber of set) {
      if (subscriber === except) continue;
      this.#send(subscriber, frames, form, {
        topic: message.fullTopic,
        event: message.event,
        payload: message.payload,
        ...(message.meta ? { meta: message.meta } : {}),
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
    this.#subscribers.clear();
    await this.#wal.close();
  }

  #onMessage(row: MessageRow): void {
    if (this.#closed) return;
    // Supabase Realtime's replication handler (Realtime.Tenants.ReplicationConnection) requires
    // payload, event, topic and private on the row and drops one that lacks any (logged there).
    if (row.payload == null || row.event == null || row.topic == null || row.private == null) {
      this.#stats.skippedIncomplete++;
      return;
    }
    const set = this.#subscribers.get(subscriptionKey(row.private !== false, row.topic));
    if (!set || set.size === 0) {
      this.#stats.skippedNoSubscriber++;
      return;
    }
    this.#stats.matched++;
    this.#deliver(row, set);
  }

  #deliver(row: MessageRow, set: Set<Subscriber>): void {
    // The message id goes in `meta` (the user-broadcast frame's metadata). Only the older releases'
    // JSON form also adds it to the payload (when it has none); see HubOptions.frameForm.
    let payload = row.payload;
    if (
      this.#frameForm === "json" && payload && typeof payload === "object" && !Array.isArray(payload) &&
      !("id" in payload)
    ) {
      payload = { ...(payload as Record<string, unknown>), id: row.id };
    }
    const frames = new Map<Vsn, string | Uint8Array>();
    const fullTopic = `realtime:${row.topic}`;
    for (const subscriber of set) {
      this.#send(subscriber, frames, this.#frameForm, {
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
    form: "binary" | "json",
    message: { topic: string; event: string; payload: unknown; meta?: Record<string, unknown> },
  ): void {
    let frame = frames.get(subscriber.vsn);
    if (frame === undefined) {
      frame = encodeBroadcast(message, subscriber.vsn, form);
      frames.set(subscriber.vsn, frame);
    }
    subscriber.deliver(frame);
    this.#stats.delivered++;
  }
}
