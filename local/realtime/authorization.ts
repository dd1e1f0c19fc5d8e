// Private-channel authorization the way Supabase Realtime does it: RLS on realtime.messages decides.
//
// Mirrors Realtime.Tenants.Authorization (supabase/realtime): in one transaction that always rolls
// back, the probe row is inserted as the superuser with only `topic` (the channel's sub-topic,
// without the `realtime:` prefix) and `extension` set, every other column at its default (event and
// payload null, private false); then the session takes the token's role and exactly the settings
// Supabase's set_conn_config sets: `role`, `realtime.topic` (the same sub-topic), `request.jwt.claims`
// and `request.headers`. Not the legacy `request.jwt.claim.sub`/`.role`: a policy that read those
// would pass here and fail on Supabase. Read: SELECT the probe (where topic and extension match,
// as Supabase queries it); visible => may receive. Write: INSERT a (topic, extension) row in a
// savepoint; 42501 => may not send.
//
// So on a probe, the row's `topic` column and realtime.topic() are always the same string: a policy
// may test either (Supabase's docs use realtime.topic()). They differ only for reads of
// realtime.messages outside Realtime (its delivery reads the WAL and never asks the SELECT policy).
// NOTIFY fired by the probe inserts is only delivered on commit, so the rolled-back probes
// broadcast nothing.

import type postgres from "postgres";
import type { JwtClaims } from "./auth.ts";

/** The API roles a verified JWT may switch into (Supabase's PostgREST/Realtime roles). */
const API_ROLES = new Set(["anon", "authenticated", "service_role"]);

export class RoleNotAllowed extends Error {}

class Rollback extends Error {}

export interface AuthorizationContext {
  /** Topic without the `realtime:` prefix, as realtime.topic() returns it. */
  topic: string;
  claims: JwtClaims;
  /** Request headers of the socket / REST call (Supabase passes them as `request.headers`). */
  headers?: Record<string, string>;
}

async function asUser(tx: postgres.TransactionSql, ctx: AuthorizationContext): Promise<void> {
  const role = ctx.claims.role;
  if (!API_ROLES.has(role)) throw new RoleNotAllowed(`role ${role} is not an API role`);
  await tx`select
      set_config('role', ${role}, true),
      set_config('realtime.topic', ${ctx.topic}, true),
      set_config('request.jwt.claims', ${JSON.stringify(ctx.claims)}, true),
      set_config('request.headers', ${JSON.stringify(ctx.headers ?? {})}, true)`;
}

/** May this user receive broadcasts on the topic? */
export async function canRead(sql: postgres.Sql, ctx: AuthorizationContext): Promise<boolean> {
  let allowed = false;
  try {
    await sql.begin(async (tx) => {
      const [probe] = await tx<{ id: string }[]>`
        insert into realtime.messages (topic, extension) values (${ctx.topic}, 'broadcast')
        returning id`;
      await asUser(tx, ctx);
      const rows = await tx`
        select 1 from realtime.messages
        where topic = ${ctx.topic} and extension = 'broadcast' and id = ${probe.id}`;
      allowed = rows.length === 1;
      throw new Rollback();
    });
  } catch (error) {
    if (!(error instanceof Rollback)) throw error;
  }
  return allowed;
}

/** May this user send broadcasts on the topic? (RLS insert policy on realtime.messages.) */
export async function canWrite(sql: postgres.Sql, ctx: AuthorizationContext): Promise<boolean> {
  let allowed = false;
  try {
    await sql.begin(async (tx) => {
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
    });
  } catch (error) {
    if (!(error instanceof Rollback)) throw error;
  }
  return allowed;
}
