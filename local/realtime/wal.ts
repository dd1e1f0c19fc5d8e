// New realtime.messages rows, read from the WAL by logical replication, as Supabase Realtime reads
// them: a publication on realtime.messages, a TEMPORARY logical replication slot with the built-in
// `pgoutput` plugin, one replication connection.
//
// Why this and not NOTIFY: NOTIFY takes a database-wide lock from pre-commit to the end of commit,
// so every transaction that broadcasts commits one at a time (docs/benchmarks.md, write path).
// Logical decoding reads what the WAL already holds (the cluster runs with wal_level=logical) and
// adds nothing to the writer's commit.
//
// Guarantees this gives the hub: pgoutput decodes a transaction only once it has committed and
// sends transactions in commit order (aborted ones, such as the authorization probes, never), and
// an INSERT carries the whole new row, so the hub needs no query to deliver it.
//
// A temporary slot is dropped by the server when the replication connection ends (endpoint closed,
// process killed), so nothing is left behind; the price is that rows committed while the connection
// is down are not replayed. Clients catch up by their own "changes since" on resubscribe.
//
// The replication protocol is spoken directly over postgres.js's CopyBoth stream (what its
// `sql.subscribe` does too) so that reconnects, errors and feedback stay under this file's control:
// `subscribe` reconnects from an async `onclose` whose failure would be an unhandled rejection.

import postgres from "postgres";
import { Buffer } from "node:buffer";
import type { Duplex } from "node:stream";
import type { DatabaseConnection } from "../stack/database.ts";

export const PUBLICATION = "readsync_realtime_messages";
/** How often the reader reports its position unasked (pg_recvlogical's default is 10 s). */
const STATUS_INTERVAL_MS = 1_000;

/** A realtime.messages row as decoded from the WAL, typed as a `select` by postgres.js returns it. */
export interface MessageRow {
  id: string;
  topic: string;
  event: string | null;
  payload: unknown;
  private: boolean | null;
}

export interface WalStats {
  /** realtime.messages inserts decoded from the WAL (committed only). */
  walMessages: number;
  /** Replication (re)connections made. */
  replicationStarts: number;
}

export class WalUnavailable extends Error {}

interface Relation {
  schema: string;
  table: string;
  columns: string[];
}

/**
 * Makes sure the publication exists and covers realtime.messages. The local bootstrap creates it;
 * a database the bootstrap never touched (SUPABASE_DB_URL without SUPABASE_URL) gets it here when the
 * role may create it (`publish_via_partition_root`, because Supabase partitions realtime.messages
 * by day and the hub wants rows named after the table, not its partitions).
 */
export async function ensurePublication(sql: postgres.Sql): Promise<void> {
  const covered = async () =>
    (await sql`
      select 1 from pg_catalog.pg_publication_tables
      where pubname = ${PUBLICATION} and schemaname = 'realtime' and tablename = 'messages'`).length > 0;
  if (await covered()) return;
  try {
    const [existing] = await sql`select 1 from pg_catalog.pg_publication where pubname = ${PUBLICATION}`;
    if (existing) {
      await sql.unsafe(`alter publication ${PUBLICATION} add table realtime.messages`);
    } else {
      await sql.unsafe(
        `create publication ${PUBLICATION} for table realtime.messages with (publish_via_partition_root = true)`,
      );
    }
  } catch (error) {
    // 42710: another endpoint created it between the check and the create.
    if ((error as { code?: string }).code === "42710" && await covered()) return;
    throw new WalUnavailable(
      `local Realtime: publication ${PUBLICATION} on realtime.messages is missing and could not be created ` +
        `(${(error as Error).message}); create it as the table's owner: create publication ${PUBLICATION} ` +
        `for table realtime.messages with (publish_via_partition_root = true)`,
    );
  }
}

export interface WalReaderOptions {
  /** Called for every committed realtime.messages insert, in commit order. Must not throw. */
  onMessage(row: MessageRow): void;
  log?: (fields: Record<string, unknown>) => void;
}

/** One replication connection streaming realtime.messages inserts; reconnects until closed. */
export class WalReader {
  readonly stats: WalStats = { walMessages: 0, replicationStarts: 0 };
  #sql: postgres.Sql;
  #options: WalReaderOptions;
  #relations = new Map<number, Relation>();
  #stream: Duplex | null = null;
  #starting = false;
  #closing = false;
  #closed: Promise<void> | null = null;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #retryMs = 100;
  /** Periodic standby status update, so the slot's confirmed position follows us between pings. */
  #statusTimer: ReturnType<typeof setInterval> | undefined;
  #reported = 0n;
  /** Last position whose messages were all handed over: what the server may discard. */
  #confirmed = 0n;
  #inTransaction = false;

  /** `db`: the stack's connection (database.ts), as psql makes it; its TLS and server settings kept. */
  constructor(db: DatabaseConnection, options: WalReaderOptions) {
    this.#options = options;
    this.#sql = postgres({
      ...db.options,
      max: 1,
      fetch_types: false,
      // The replication connection lives as long as the endpoint (postgres.js would otherwise
      // recycle it after 30 to 60 minutes, and a new slot would miss what commits in between).
      max_lifetime: null,
      onnotice: () => {},
      connection: {
        ...db.options.connection,
        application_name: "readsync-local-realtime-wal",
        replication: "database",
      },
      onclose: () => this.#onConnectionClosed(),
    } as postgres.Options<Record<string, postgres.PostgresType>>);
  }

  /** Resolves once the slot exists and streaming has begun: every later commit is delivered. */
  async start(): Promise<void> {
    try {
      await this.#startStreaming();
    } catch (error) {
      await this.close();
      throw new WalUnavailable(
        `local Realtime: cannot read realtime.messages from the WAL by logical replication (needs ` +
          `wal_level=logical, a role with REPLICATION and a direct connection, not a pooler): ` +
          `${(error as Error).message}`,
      );
    }
  }

  async close(): Promise<void> {
    this.#closing = true;
    clearTimeout(this.#reconnectTimer);
    clearInterval(this.#statusTimer);
    this.#closed ??= (async () => {
      const stream = this.#stream;
      this.#stream = null;
      if (stream) {
        // CopyDone ends replication; the server then drops the temporary slot with the session.
        // A server that never answers (half-open socket) must not hold the shutdown: sql.end below
        // destroys the connection after its own timeout.
        let timer: ReturnType<typeof setTimeout> | undefined;
        await new Promise<void>((resolve) => {
          timer = setTimeout(resolve, 2_000);
          stream.once("close", () => resolve());
          stream.once("error", () => resolve());
          stream.end();
        });
        clearTimeout(timer);
      }
      await this.#sql.end({ timeout: 2 });
    })();
    await this.#closed;
  }

  async #startStreaming(): Promise<void> {
    this.#starting = true;
    try {
      await this.#createSlotAndStream();
    } finally {
      this.#starting = false;
    }
  }

  async #createSlotAndStream(): Promise<void> {
    const slot = `readsync_realtime_${crypto.randomUUID().replaceAll("-", "")}`;
    const [created] = await this.#sql.unsafe(
      `CREATE_REPLICATION_SLOT ${slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT`,
    );
    if (this.#closing) return;
    const start = String(created.consistent_point);
    const stream = await this.#sql.unsafe(
      `START_REPLICATION SLOT ${slot} LOGICAL ${start} (proto_version '1', publication_names '"${PUBLICATION}"')`,
    ).writable();
    this.#relations.clear();
    this.#inTransaction = false;
    this.#confirmed = parseLsn(start);
    this.#stream = stream as unknown as Duplex;
    this.stats.replicationStarts++;
    this.#retryMs = 100;
    stream.on("data", (chunk: Buffer) => this.#onCopyData(chunk));
    clearInterval(this.#statusTimer);
    this.#statusTimer = setInterval(() => {
      if (this.#confirmed > this.#reported) this.#sendFeedback();
    }, STATUS_INTERVAL_MS);
    // An error without a listener would be thrown; the connection's close triggers the reconnect.
    stream.on("error", (error: Error) => this.#options.log?.({ event: "wal_error", error: String(error) }));
    this.#options.log?.({ event: "wal_streaming", slot, from: start });
  }

  #onConnectionClosed(): void {
    this.#stream = null;
    clearInterval(this.#statusTimer);
    if (this.#closing) return;
    this.#options.log?.({ event: "wal_disconnected", retryMs: this.#retryMs });
    this.#scheduleReconnect();
  }

  #scheduleReconnect(): void {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(async () => {
      // An attempt in flight reschedules itself if it fails.
      if (this.#closing || this.#starting) return;
      try {
        await this.#startStreaming();
      } catch (error) {
        if (this.#closing) return;
        this.#options.log?.({ event: "wal_reconnect_failed", error: String(error) });
        this.#retryMs = Math.min(this.#retryMs * 2, 5_000);
        // A failed query does not always close the connection: retry from here as well.
        this.#scheduleReconnect();
      }
    }, this.#retryMs);
  }

  #onCopyData(x: Buffer): void {
    if (x[0] === 0x77) { // 'w' XLogData: start, end, send time (3 x int64), then one pgoutput message
      this.#onPgoutput(x.subarray(25));
    } else if (x[0] === 0x6b) { // 'k' keepalive: wal end, send time, reply requested
      if (!this.#inTransaction) {
        const walEnd = x.readBigUInt64BE(1);
        if (walEnd > this.#confirmed) this.#confirmed = walEnd;
      }
      // Answer only when asked (and on the status timer). A walsender that has caught up pings
      // whenever our reported position is behind its own, i.e. after every commit anywhere in the
      // cluster; answering each ping made a ping-pong per commit that cost the database CPU under
      // write load (docs/benchmarks.md, write path). Supabase Realtime answers only when asked too.
      if (x[17] === 1) this.#sendFeedback();
    }
  }

  #onPgoutput(m: Buffer): void {
    switch (m[0]) {
      case 0x42: // 'B' begin
        this.#inTransaction = true;
        return;
      case 0x43: // 'C' commit: flags, commit lsn, end lsn, time
        this.#inTransaction = false;
        this.#confirmed = m.readBigUInt64BE(10);
        return;
      case 0x52: { // 'R' relation: oid, namespace, name, replica identity, columns
        const oid = m.readUInt32BE(1);
        let i = 5;
        const schemaEnd = m.indexOf(0, i);
        const schema = m.toString("utf8", i, schemaEnd) || "pg_catalog";
        i = schemaEnd + 1;
        const tableEnd = m.indexOf(0, i);
        const table = m.toString("utf8", i, tableEnd);
        i = tableEnd + 2; // skip the replica identity byte
        const count = m.readUInt16BE(i);
        i += 2;
        const columns: string[] = [];
        for (let c = 0; c < count; c++) {
          i += 1; // flags
          const nameEnd = m.indexOf(0, i);
          columns.push(m.toString("utf8", i, nameEnd));
          i = nameEnd + 1 + 8; // type oid, type modifier
        }
        this.#relations.set(oid, { schema, table, columns });
        return;
      }
      case 0x49: { // 'I' insert: relation oid, 'N', tuple data
        const relation = this.#relations.get(m.readUInt32BE(1));
        if (!relation || relation.schema !== "realtime" || relation.table !== "messages") return;
        const values = decodeTuple(m, 6, relation.columns);
        this.stats.walMessages++;
        this.#options.onMessage({
          id: values.id as string,
          topic: values.topic as string,
          event: values.event ?? null,
          // Parsed as postgres.js parses jsonb and boolean in a query result: same value as a select.
          payload: values.payload == null ? null : JSON.parse(values.payload),
          private: values.private == null ? null : values.private === "t",
        });
        return;
      }
      default: // type, origin, update, delete, truncate: nothing to deliver
        return;
    }
  }

  /** Standby status update: written = flushed = applied = the last fully handed-over position. */
  #sendFeedback(): void {
    const stream = this.#stream;
    if (!stream) return;
    const x = Buffer.alloc(34);
    x[0] = 0x72; // 'r'
    x.writeBigUInt64BE(this.#confirmed, 1);
    x.writeBigUInt64BE(this.#confirmed, 9);
    x.writeBigUInt64BE(this.#confirmed, 17);
    x.writeBigInt64BE(BigInt(Date.now() - Date.UTC(2000, 0, 1)) * 1000n, 25);
    x[33] = 0;
    stream.write(x);
    this.#reported = this.#confirmed;
  }
}

/** TupleData of protocol 1: every column as text ('t'), null ('n') or unchanged TOAST ('u'). */
function decodeTuple(m: Buffer, at: number, columns: string[]): Record<string, string | null> {
  const values: Record<string, string | null> = {};
  const count = m.readUInt16BE(at);
  let i = at + 2;
  for (let c = 0; c < count; c++) {
    const kind = m[i++];
    if (kind === 0x74) { // 't'
      const length = m.readUInt32BE(i);
      values[columns[c]] = m.toString("utf8", i + 4, i + 4 + length);
      i += 4 + length;
    } else {
      // An INSERT never has unchanged-TOAST ('u') columns: its new tuple is always complete.
      values[columns[c]] = null;
    }
  }
  return values;
}

function parseLsn(lsn: string): bigint {
  const [high, low] = lsn.split("/");
  return (BigInt(`0x${high}`) << 32n) | BigInt(`0x${low}`);
}
