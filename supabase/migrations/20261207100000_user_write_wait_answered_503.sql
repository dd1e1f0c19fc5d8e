-- A user's write that waited too long for another write of the same user (migration
-- …_user_writes_serialized.sql: one user's writes to reading_progress run one after the other) now
-- ends with SQLSTATE PT503, which PostgREST answers with HTTP 503 and "code": "PT503", instead of an
-- error PostgREST answers with HTTP 500.
--
-- What a Data API client got before: PostgREST (src/PostgREST/Error.hs, mapSQLtoHTTP) answers class
-- 55 (55P03 lock_not_available: the lock timeout) and class 57 but 57P01 (57014 query_canceled: the
-- statement timeout) with 500. On Supabase, PostgREST logs in as authenticator, whose role settings
-- give its sessions lock_timeout 8s and statement_timeout 8s, and applies the impersonated role's
-- settings to each request (PostgREST >= 11.1): authenticated's statement_timeout 8s. The statement
-- timeout starts with the statement, the lock's wait a little later, so a write stuck behind the
-- user's other write was cancelled after 8 s with 57014: HTTP 500 "canceling statement due to
-- statement timeout", which says nothing of why and which supabase-js does not retry (it retries 503
-- and 520 for GET, HEAD and OPTIONS only, never a write). This project sets neither timeout for its
-- roles (no migration, nor supabase/config.toml); the progress function sets lock_timeout 2 s and
-- statement_timeout 8 s in each request's transaction and answered the 55P03 with its 503.
--
-- Now the trigger waits only where the wait will end by the lock timeout, and answers that end itself:
-- - it tries the lock first (pg_try_advisory_xact_lock): free, the common case, it is taken at once,
--   at the cost the lock had before. Only a statement that must wait enters the block that catches the
--   lock timeout (a PL/pgSQL block with an EXCEPTION clause starts a subtransaction each time it is
--   entered: the writes that do not wait do not pay for one);
-- - when the statement timeout would end the wait first or at the same time (lock_timeout 0 or not
--   shorter than what is left of the statement timeout, as on Supabase's Data API: 8 s and 8 s), the
--   wait's lock_timeout is set, for the wait only, to what is left of the statement timeout (counted
--   from statement_timestamp()) less 100 ms, at least 1 ms; otherwise it is the caller's (the progress
--   function's 2 s). So every wait ends when it ended before, give or take those 100 ms: this migration
--   changes how a wait ends, not how long a user's write may wait. Neither timeout set (a script's
--   session), the wait has no end, as before;
-- - the lock timeout (55P03) is caught and raised again as PT503, PostgREST's convention for a status
--   of the function's choosing (docs: Errors, "RAISE errors with HTTP Status Codes"; Error.hs maps
--   SQLSTATE 'PT' || digits to that status, the message as its reason phrase), with a detail that
--   says how long it waited and a hint that the write stored nothing and may be sent again. The body
--   supabase-js hands over as `error`: {"code": "PT503", "message": "Another write of this user is in
--   progress", "details": "...", "hint": "..."}, with `status` 503. PT503 carries no headers (no
--   Retry-After: only a RAISE of SQLSTATE 'PGRST' with JSON in the message can set them, which every
--   other caller would then have to read as JSON). The progress function's store maps PT503 as it
--   mapped 55P03: 503 service_unavailable, "The data is locked by another operation; try again",
--   Retry-After 1 (shared/progress/store.ts), so its callers see no change.
-- A wait cut short by the statement timeout all the same (a statement timeout under 100 ms, or a
-- function whose first write comes after most of its statement timeout is spent) is still a 57014:
-- catching query_canceled would turn a cancel (pg_cancel_backend, a client gone) into a 503 too.
--
-- Wording corrected from migration …_user_writes_serialized.sql (not edited: applied migrations are
-- never changed), here and in the COMMENT ON FUNCTION below: its function's comment "Nothing locked
-- yet by this transaction" means "no transaction id yet": the test is
-- pg_current_xact_id_if_assigned() is null, i.e. the transaction has written and row-locked nothing
-- (both assign one), while it may hold other locks (the table's RowExclusiveLock of this very
-- statement, advisory locks), none of which a writer of the user's rows waits for.
--
-- The rest is as in …_user_writes_serialized.sql: whose writes take the lock, its key, a transaction
-- with a transaction id only trying it. SECURITY INVOKER (current_user and row_security_active must be
-- the writer's), search_path '' with every name qualified (pgTAP 020, 023). Idempotent (CREATE OR
-- REPLACE, COMMENT ON); local/test.ts re-runs it after …_user_writes_serialized.sql, which restates
-- the function.

create or replace function private.reading_progress_serialize_user_writes() returns trigger
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_uid uuid;
  v_key integer;
  -- The results of the lock and set_config calls, assigned rather than PERFORMed: an assignment of a
  -- simple expression is evaluated directly, where PERFORM runs a whole SELECT through the executor.
  v_result text;
  v_lock_timeout text;
  v_lock_ms double precision;
  v_left_ms double precision;
  v_wait_ms double precision;
  v_waited_from timestamptz;
begin
  -- 'authenticated' by name first: the API's and the Data API's writes pay no catalog lookup.
  if current_user = 'authenticated' or pg_catalog.row_security_active(tg_relid) then
    v_uid := auth.uid();
    if v_uid is null then
      return null; -- the policies let no row through
    end if;
    v_key := pg_catalog.uuid_hash(v_uid);
    if pg_catalog.pg_try_advisory_xact_lock(tg_relid::integer, v_key) then
      return null; -- free (or this transaction's already): taken
    end if;
    if pg_catalog.pg_current_xact_id_if_assigned() is not null then
      -- This transaction has a transaction id: it wrote or row-locked something, maybe a row the
      -- lock's holder waits for. Waiting would close a cycle: it goes on without the lock.
      return null;
    end if;
    -- No transaction id yet: this transaction has written and row-locked nothing, so no writer waits
    -- for it and waiting cannot close a cycle. It waits, until the lock timeout at most.
    v_lock_timeout := pg_catalog.current_setting('lock_timeout');
    v_lock_ms := pg_catalog.date_part('epoch', v_lock_timeout::interval) * 1000;
    v_left_ms := pg_catalog.date_part('epoch', pg_catalog.current_setting('statement_timeout')::interval) * 1000;
    if v_left_ms > 0 then
      v_left_ms := v_left_ms - 100
        - pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - pg_catalog.statement_timestamp()) * 1000;
      if v_lock_ms = 0 or v_lock_ms > v_left_ms then
        v_wait_ms := greatest(pg_catalog.floor(v_left_ms), 1);
      end if;
    end if;
    v_waited_from := pg_catalog.clock_timestamp();
    begin
      if v_wait_ms is not null then
        v_result := pg_catalog.set_config('lock_timeout', v_wait_ms::bigint::text, true);
      end if;
      v_result := pg_catalog.pg_advisory_xact_lock(tg_relid::integer, v_key)::text;
      if v_wait_ms is not null then
        v_result := pg_catalog.set_config('lock_timeout', v_lock_timeout, true);
      end if;
    exception when lock_not_available then
      -- The subtransaction's rollback has put the caller's lock_timeout back.
      raise exception using
        errcode = 'PT503',
        message = 'Another write of this user is in progress',
        detail = pg_catalog.format(
          'This statement waited %s ms for a transaction of the same user writing to %s, which has not ended.',
          pg_catalog.round(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - v_waited_from)::numeric * 1000),
          tg_relid::regclass),
        hint = 'Nothing of this write was stored: send it again. One user''s writes run one after the other.';
    end;
  end if;
  return null;
end;
$$;
revoke all on function private.reading_progress_serialize_user_writes() from public, anon, authenticated, service_role;

comment on function private.reading_progress_serialize_user_writes() is
  'BEFORE each INSERT, UPDATE and DELETE statement on reading_progress: a statement made under RLS takes '
  'the transaction-level advisory lock keyed on its user (the table''s oid, uuid_hash(auth.uid())), so one '
  'user''s writing transactions run one after the other. A transaction with no transaction id yet (it has '
  'written and row-locked nothing) waits for it, until its lock timeout, or until 100 ms before its statement '
  'timeout would end the wait, and then raises PT503 (PostgREST: HTTP 503); one with a transaction id only '
  'tries it. Migrations …_user_writes_serialized.sql and …_user_write_wait_answered_503.sql.';
