-- TRUNCATE of reading_progress tells devices what a DELETE of every row would tell them.
--
-- TRUNCATE fires no row triggers: when service_role or postgres truncated the table (an admin clearing
-- data, a dashboard's "truncate"), nothing was broadcast on the users' progress:<uid> topics and no
-- deletion was remembered in reading_progress_deletions, so a live device kept showing rows that were
-- gone and a device offline or polling never learned of it ("changes since" had nothing to report).
-- Now a BEFORE TRUNCATE trigger, once per statement, first deletes every row with a plain DELETE: the
-- row triggers of migrations 012 and 013 broadcast each deletion and remember it (reading_progress_
-- broadcast, reading_progress_remember_deletion: the same payloads, the same skip of a user already
-- gone), in the truncating transaction, and the TRUNCATE then empties a table already empty. It costs
-- what that DELETE costs (a row and a broadcast per row, not TRUNCATE's constant time). SECURITY
-- DEFINER, run as the owner (not bound by RLS): TRUNCATE removes every row whatever the truncating
-- role's policies, so every row is told, also for a role that may TRUNCATE but not DELETE. Only roles
-- that may truncate the table fire it (postgres, service_role; authenticated and anon may not, pgTAP
-- 001), and nothing it removes is not removed by their TRUNCATE anyway. search_path pg_catalog,
-- pg_temp like the other definer functions (pgTAP 009); every name is qualified.
-- To empty the table without telling devices (fixtures of a test database), disable the trigger first:
-- alter table public.reading_progress disable trigger reading_progress_truncate_as_delete.
--
-- Not guarded: TRUNCATE of reading_progress_deletions (only its owner may: service_role may select and
-- delete). It forgets every remembered deletion, as a DELETE of them all would, so a device whose
-- changes cursor is older never hears of those deletions (README, The conflict log: retention). It is
-- also what TRUNCATE auth.users CASCADE (wiping every user) does, which must keep working.
--
-- Idempotent (CREATE OR REPLACE, drop trigger if exists + create trigger, the revoke repeated).

create or replace function private.reading_progress_truncate_as_delete() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from public.reading_progress;
  return null;
end;
$$;
revoke all on function private.reading_progress_truncate_as_delete() from public, anon, authenticated, service_role;

drop trigger if exists reading_progress_truncate_as_delete on public.reading_progress;
create trigger reading_progress_truncate_as_delete
  before truncate on public.reading_progress
  for each statement execute function private.reading_progress_truncate_as_delete();
