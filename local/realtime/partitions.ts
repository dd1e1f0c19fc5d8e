// realtime.messages partitions, kept as Supabase Realtime keeps them. On Supabase the table is
// partitioned by day on inserted_at (UTC), and the database never makes a partition itself: the
// Realtime service creates the ones for yesterday, today and tomorrow when it connects to the
// database (Connect.CreatePartitions) and again from its janitor, which also drops every partition
// older than 72 hours (Janitor.MaintenanceTask, Messages.delete_old_messages). Without a partition
// for the moment of a broadcast, realtime.send cannot store the message; it turns the error into a
// WARNING, so the write commits and that broadcast is lost (devices converge by catch-up).
//
// The local Realtime endpoint runs this at its start and then hourly (Supabase's janitor runs every
// few hours; yesterday..tomorrow always covers the next day, so any interval under 24 h is enough).

import type postgres from "postgres";

/** Messages older than this go, a whole partition (day) at a time, as on Supabase. */
export const MESSAGE_RETENTION_HOURS = 72;
export const PARTITION_JANITOR_INTERVAL_MS = 60 * 60 * 1000;

const DAY_MS = 24 * 60 * 60 * 1000;

/** The UTC day of `at` as YYYY-MM-DD (what a partition's bounds and name are made of). */
function utcDay(at: Date): string {
  return at.toISOString().slice(0, 10);
}

/** `messages_2026_12_04` for the UTC day of `at`. */
export function partitionName(at: Date): string {
  return `messages_${utcDay(at).replaceAll("-", "_")}`;
}

export interface PartitionMaintenance {
  created: string[];
  dropped: string[];
}

/**
 * Creates the partitions for yesterday, today and tomorrow (UTC) that are missing and drops the
 * ones whose day ended more than MESSAGE_RETENTION_HOURS before `now`. Does nothing to a
 * realtime.messages that is not partitioned (logged). Each partition is its own statement: one that
 * fails (a table of that name that is not a partition, an overlapping range, the lock timeout) is
 * logged and does not stop the others.
 */
export async function maintainMessagePartitions(
  sql: postgres.Sql,
  now: Date = new Date(),
  log: (fields: Record<string, unknown>) => void = () => {},
): Promise<PartitionMaintenance> {
  const result: PartitionMaintenance = { created: [], dropped: [] };
  const [table] = await sql<{ partitioned: boolean }[]>`
    select c.relkind = 'p' as partitioned from pg_catalog.pg_class c
    where c.oid = to_regclass('realtime.messages')`;
  if (!table?.partitioned) {
    // A database set up before the local bootstrap partitioned it (or not by it at all): nothing to keep.
    log({ event: "messages_not_partitioned" });
    return result;
  }

  const existing = new Set(await partitionsOf(sql));
  for (const offset of [-1, 0, 1]) {
    const day = new Date(
      Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()) + offset * DAY_MS,
    );
    const name = partitionName(day);
    if (existing.has(name)) continue;
    const from = utcDay(day);
    const to = utcDay(new Date(day.getTime() + DAY_MS));
    try {
      // No IF NOT EXISTS: a table of that name that is not a partition must not pass for one.
      await underLockTimeout(
        sql,
        `create table realtime.${name} partition of realtime.messages for values from ('${from}') to ('${to}')`,
      );
      result.created.push(name);
    } catch (error) {
      // Another endpoint made it meanwhile: nothing to report.
      if ((await partitionsOf(sql)).includes(name)) continue;
      log({ event: "partition_create_failed", partition: name, error: String(error) });
    }
  }

  // A partition named for a day before this date holds only messages older than the retention.
  const oldestKept = utcDay(new Date(now.getTime() - MESSAGE_RETENTION_HOURS * 60 * 60 * 1000));
  for (const name of existing) {
    const match = /^messages_(\d{4})_(\d{2})_(\d{2})$/.exec(name);
    if (!match || `${match[1]}-${match[2]}-${match[3]}` >= oldestKept) continue;
    try {
      await underLockTimeout(sql, `drop table if exists realtime.${name}`);
      result.dropped.push(name);
    } catch (error) {
      log({ event: "partition_drop_failed", partition: name, error: String(error) });
    }
  }
  if (result.created.length + result.dropped.length > 0) log({ event: "partitions_maintained", ...result });
  return result;
}

/**
 * Creating or dropping a partition locks realtime.messages (ACCESS EXCLUSIVE): it waits for every
 * transaction that wrote a message, and every broadcast, so every write of reading_progress, queues
 * behind it meanwhile. A transaction held open (a psql session, a pgTAP run) would stall them all;
 * with a short lock timeout the janitor gives up instead (the writers waited at most that long) and
 * tries again at its next run (tomorrow's partition is made a day early).
 */
export const PARTITION_LOCK_TIMEOUT = "100ms";

async function underLockTimeout(sql: postgres.Sql, statement: string): Promise<void> {
  await sql.begin(async (tx) => {
    await tx`select pg_catalog.set_config('lock_timeout', ${PARTITION_LOCK_TIMEOUT}, true)`;
    await tx.unsafe(statement);
  });
}

/** Names of realtime.messages' partitions. */
export async function partitionsOf(sql: postgres.Sql): Promise<string[]> {
  const rows = await sql<{ name: string }[]>`
    select c.relname as name from pg_catalog.pg_inherits i
    join pg_catalog.pg_class c on c.oid = i.inhrelid
    where i.inhparent = to_regclass('realtime.messages')
    order by c.relname`;
  return rows.map((r) => r.name);
}

/** Runs maintainMessagePartitions every `intervalMs` (unref'd: it never keeps the process alive). */
export function startPartitionJanitor(
  sql: postgres.Sql,
  log: (fields: Record<string, unknown>) => void,
  intervalMs = PARTITION_JANITOR_INTERVAL_MS,
): { stop(): void } {
  let running = false;
  const timer = setInterval(() => {
    if (running) return;
    running = true;
    maintainMessagePartitions(sql, new Date(), log)
      .catch((error) => log({ event: "partition_janitor_failed", error: String(error) }))
      .finally(() => running = false);
  }, intervalMs);
  Deno.unrefTimer(timer);
  return { stop: () => clearInterval(timer) };
}
