// Private-channel authorization the way Supabase Realtime does it: RLS on realtime.messages decides.
//
// Read (on join, and again on every new access token): in one transaction, insert a probe message
// for the topic as the superuser, then switch to the token's role with its claims and the topic in
// `realtime.topic`, and try to SELECT the probe. Visible => the policy lets this user receive on the
// topic. Write (lazily, on the first client broadcast): try to INSERT a message for the topic as
// that user inside a savepoint. Both transactions always roll back, so nothing is left behind and
// the local NOTIFY trigger never fires (NOTIFY is delivered on commit only).

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
}

async function asUser(tx: postgres.TransactionSql, ctx: AuthorizationContext): Promise<void> {
  const role = ctx.claims.role;
  if (!API_ROLES.has(role)) throw new RoleNotAllowed(`role ${role} is not an API role`);
  const claims = JSON.stringify(ctx.claims);
  await tx`select
      set_config('role', ${role}, true),
      set_config('request.jwt.claims', ${claims}, true),
      set_config('request.jwt.claim.sub', ${typeof ctx.claims.sub === "string" ? ctx.claims.sub : ""}, true),
      set_config('request.jwt.claim.role', ${role}, true),
      set_config('realtime.topic', ${ctx.topic}, true)`;
}

/** May this user receive broadcasts on the topic? */
export async function canRead(sql: postgres.Sql, ctx: AuthorizationContext): Promise<boolean> {
  let allowed = false;
  try {
    await sql.begin(async (tx) => {
      const [probe] = await tx<{ id: string }[]>`
        insert into realtime.messages (topic, extension, event, payload, private)
        values (${ctx.topic}, 'broadcast', 'realtime_authorization_probe', '{}'::jsonb, true)
        returning id`;
      await asUser(tx, ctx);
      const rows = await tx`select 1 from realtime.messages where id = ${probe.id}`;
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
          await sp`
            insert into realtime.messages (topic, extension, event, payload, private)
            values (${ctx.topic}, 'broadcast', 'realtime_authorization_probe', '{}'::jsonb, true)`;
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
