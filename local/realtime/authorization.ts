// Private-channel authorization the way Supabase Realtime does it: RLS on realtime.messages decides.
//
// Mirrors Realtime.Tenants.Authorization (supabase/realtime): in one transaction that always rolls
// back, the probe row is inserted as the superuser with only `topic` (the channel's sub-topic,
// without the `realtime:` prefix) and `extension` set, every other column at its default (event and
// payload null, private false); then the session takes the token's role and exactly the settings
// Supabase's set_conn_config sets: `role`, `realtime.topic` (the same sub-topic), `request.jwt.claims`
// and `request.headers`. Not the legacy `request.jwt.claim.sub`/`.role`: a policy that read those
// would pass here and fail on Supabase releases that do not set them. Read: SELECT the probe (where
// topic and extension match, as Supabase queries it); visible => may receive. Write: INSERT a
// (topic, extension) row in a savepoint; 42501 => may not send.
//
// The role is whatever the token's `role` claim names, as Supabase's set_conn_config takes it
// (`role: claims["role"]`, no list of allowed roles): a custom role the project created is asked its
// own policies. PostgreSQL decides whether the session may take it, as on Supabase: a role that does
// not exist (22023) or that the connection's user may not set (42501 "permission denied to set
// role") fails the probe, and so does any other error a policy raises (e.g. 22P02 from auth.uid() on
// a sub that is not a UUID). Supabase answers every such PostgreSQL error as :rls_policy_error
// (handle_policies_result): the join is refused as Unauthorized, a send is not allowed. `PolicyError`
// is that case here; errors of the connection itself are thrown as they are.
//
// So on a probe, the row's `topic` column and realtime.topic() are always the same string: a policy
// may test either (Supabase's docs use realtime.topic()). They differ only for reads of
// realtime.messages outside Realtime (its delivery reads the WAL and never asks the SELECT policy).
// NOTIFY fired by the probe inserts is only delivered on commit, so the rolled-back probes
// broadcast nothing.

import type postgres from "postgres";
import type { JwtClaims } from "./auth.ts";

class Rollback extends Error {}

/**
 * A probe PostgreSQL answered with an error (a role that does not exist or may not be set, a policy
 * that raised): Supabase's :rls_policy_error, which refuses the join as Unauthorized and the send.
 */
export class PolicyError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

/**
 * How Supabase names a probe that failed for the database's sake, not the user's (its
 * handle_policies_result): query_canceled (57014: a statement timeout, a cancel), missing_partition
 * (check_violation on realtime.messages: no partition for the probe row), and
 * unable_to_connect_to_project (its :tenant_database_unavailable: the connection's own failures,
 * class 08, admin/crash shutdown 57P0x, too many connections 53300, and postgres.js's connection
 * errors). Anything else is unable_to_set_policies.
 */
export type ProbeFailure =
  | "query_canceled"
  | "missing_partition"
  | "unable_to_connect_to_project"
  | "unable_to_set_policies";

export function probeFailure(error: unknown): ProbeFailure | null {
  const e = error as { name?: string; code?: unknown; table_name?: unknown };
  if (e?.name === "PostgresError" && typeof e.code === "string") {
    if (e.code === "57014") return "query_canceled";
    if (e.code === "23514" && e.table_name === "messages") return "missing_partition";
    if (e.code === "53300" || e.code.startsWith("08") || e.code.startsWith("57P")) {
      return "unable_to_connect_to_project";
    }
    return null; // any other error PostgreSQL raised: :rls_policy_error
  }
  // postgres.js's CONNECT_TIMEOUT and CONNECTION_CLOSED/ENDED/DESTROYED, the socket's ECONNREFUSED…
  const connection = typeof e?.code === "string" && /^(CONNECT_TIMEOUT$|CONNECTION_|E[A-Z]+$)/.test(e.code);
  return connection ? "unable_to_connect_to_project" : "unable_to_set_policies";
}

function isPolicyError(error: unknown): error is { code: string; message: string } {
  return (error as { name?: string })?.name === "PostgresError" && probeFailure(error) === null;
}

/** Runs a probe; a PostgreSQL error of the kind Supabase calls :rls_policy_error becomes PolicyError. */
async function probe(run: () => Promise<unknown>): Promise<void> {
  try {
    await run();
  } catch (error) {
    if (error instanceof Rollback) return;
    if (isPolicyError(error)) throw new PolicyError(error.code, error.message);
    throw error;
  }
}

export interface AuthorizationContext {
  /** Topic without the `realtime:` prefix, as realtime.topic() returns it. */
  topic: string;
  claims: JwtClaims;
  /** Request headers of the socket / REST call (Supabase passes them as `request.headers`). */
  headers?: Record<string, string>;
}

async function asUser(tx: postgres.TransactionSql, ctx: AuthorizationContext): Promise<void> {
  await tx`select
      set_config('role', ${ctx.claims.role}, true),
      set_config('realtime.topic', ${ctx.topic}, true),
      set_config('request.jwt.claims', ${JSON.stringify(ctx.claims)}, true),
      set_config('request.headers', ${JSON.stringify(ctx.headers ?? {})}, true)`;
}

/** May this user receive broadcasts on the topic? */
export async function canRead(sql: postgres.Sql, ctx: AuthorizationContext): Promise<boolean> {
  let allowed = false;
  await probe(() =>
    sql.begin(async (tx) => {
      const [row] = await tx<{ id: string }[]>`
        insert into realtime.messages (topic, extension) values (${ctx.topic}, 'broadcast')
        returning id`;
      await asUser(tx, ctx);
      const rows = await tx`
        select 1 from realtime.messages
        where topic = ${ctx.topic} and extension = 'broadcast' and id = ${row.id}`;
      allowed = rows.length === 1;
      throw new Rollback();
    })
  );
  return allowed;
}

/** May this user send broadcasts on the topic? (RLS insert policy on realtime.messages.) */
export async function canWrite(sql: postgres.Sql, ctx: AuthorizationContext): Promise<boolean> {
  let allowed = false;
  await probe(() =>
    sql.begin(async (tx) => {
      await asUser(tx, ctx);
      try {
        await tx.savepoint(async (sp) => {
          await sp`insert into realtime.messages (topic, extension) values (${ctx.topic}, 'broadcast')`;
        });
        allowed = true;
      } catch (error) {
        // 42501 insufficient_privilege: "new row violates row-level security policy".
        if ((error as { code?: string }).code !== "42501") throw error;
        allowed = false;
      }
      throw new Rollback();
    })
  );
  return allowed;
}
