-- One user's writes to reading_progress wait for each other instead of deadlocking.
--
-- A statement locks its rows one after the other, in the order it meets them: a Data API bulk upsert
-- (supabase-js .upsert([...]), one INSERT ... ON CONFLICT DO UPDATE of the rows in the order sent) or a
-- multi-row UPDATE or DELETE in its plan's order, the API's batch (write_reading_progress_batch) in
-- series_id order. Two of one user's such writes that meet the same rows in opposite orders (two bulk
-- upserts from two devices; a bulk upsert and a batch) each held a row the other waited for: one was
-- aborted with 40P01 (deadlock detected), which PostgREST answers with HTTP 500, and its writes were
-- lost unless the client sent them again. The README asked clients to send rows in series_id order.
--
-- Now every statement a user makes on the table first takes a transaction-level advisory lock keyed on
-- that user: a BEFORE ... FOR EACH STATEMENT trigger, which PostgreSQL fires before the statement meets
-- its first row. A row-level trigger would come too late: a BEFORE UPDATE row trigger (and the DO UPDATE
-- of an upsert) runs once its row is locked, and a statement's second row's trigger once its first row
-- is. The statement-level trigger fires for INSERT (an upsert fires the INSERT and the UPDATE ones),
-- UPDATE, DELETE, COPY and MERGE, and for write_reading_progress, whose first statement is always an
-- UPDATE (its SELECT ... FOR UPDATE comes after it). The lock is held to the end of the transaction, so
-- one user's writing transactions run one after the other, and two of them can no longer hold rows the
-- other waits for: any order of rows is safe. Other users' writes take other keys and never wait.
--
-- Whose writes: a statement made under row level security (the role authenticated, or a member that a
-- token's role claim names), whose rows the policies bind to auth.uid(): the key is that user, read
-- once per statement as the policies read it. Roles that bypass RLS (service_role, postgres) may write
-- any user's rows in one statement, and a statement-level trigger cannot know which; they take no lock
-- and lock rows as before (README, How the database enforces it: send their bulk writes in series_id
-- order). Taking the lock per row for them, keyed on each row's user, would come after the row is
-- locked on UPDATE, and two statements writing several users' rows in opposite user orders would then
-- deadlock on the advisory locks where their rows never met.
--
-- A transaction that already holds a lock of its own when the statement begins (it has a transaction
-- id: it wrote or row-locked something, e.g. SELECT ... FOR UPDATE as the user before its first write)
-- only tries the lock and goes on without it: waiting for the lock while holding a row a writer that
-- holds the lock waits for would be a deadlock this migration made. Such a transaction holds the lock
-- already when an earlier statement of it took it (advisory locks are reentrant): the batch's later
-- writes, write_reading_progress's statements after its first UPDATE.
--
-- The key: two int4 (pg_locks: locktype advisory, objsubid 2), the table's oid and uuid_hash of the
-- user's id; two users whose ids hash alike share a lock (their writes wait for each other, nothing
-- else). Costs the API's single write one trigger call, auth.uid() and the advisory lock (README, How the
-- database enforces it).
--
-- SECURITY INVOKER (current_user and row_security_active must be the writer's), search_path '' with
-- every name qualified (pgTAP 020). Idempotent (CREATE OR REPLACE, drop trigger if exists + create
-- trigger, the revoke repeated).

create or replace function private.reading_progress_serialize_user_writes() returns trigger
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_uid uuid;
  -- The lock functions' results, assigned rather than PERFORMed: an assignment of a simple expression
  -- is evaluated directly, where PERFORM runs a whole SELECT through the executor (3.5 against 0.3 us
  -- a call measured in a loop on 2026-12-06).
  v_locked text;
begin
  -- 'authenticated' by name first: the API's and the Data API's writes pay no catalog lookup.
  if current_user = 'authenticated' or pg_catalog.row_security_active(tg_relid) then
    v_uid := auth.uid();
    if v_uid is null then
      return null; -- the policies let no row through
    end if;
    if pg_catalog.pg_current_xact_id_if_assigned() is null then
      -- Nothing locked yet by this transaction: waiting here cannot close a cycle.
      v_locked := pg_catalog.pg_advisory_xact_lock(tg_relid::integer, pg_catalog.uuid_hash(v_uid))::text;
    else
      v_locked := pg_catalog.pg_try_advisory_xact_lock(tg_relid::integer, pg_catalog.uuid_hash(v_uid))::text;
    end if;
  end if;
  return null;
end;
$$;
revoke all on function private.reading_progress_serialize_user_writes() from public, anon, authenticated, service_role;

drop trigger if exists reading_progress_serialize_user_writes on public.reading_progress;
create trigger reading_progress_serialize_user_writes
  before insert or update or delete on public.reading_progress
  for each statement execute function private.reading_progress_serialize_user_writes();
