-- A user's write that waited too long for another write of the same user (migrations
-- …_user_writes_serialized.sql and …_user_write_wait_answered_503.sql) is now answered by PostgREST with
-- HTTP 503 and `Retry-After: 1`, the body's "code" still "PT503"; and a write sent after other statements
-- in one simple-query message now waits as long as its own statement timeout allows, instead of having
-- the time the statements before it took counted against its wait.
--
-- 1. The answer. SQLSTATE PT503 (PostgREST's PT<status> convention) sets the status only: a Data API
--    client got 503 with no Retry-After. PostgREST (>= 11.2, as Supabase ships it) lets SQL set the
--    status and headers with RAISE SQLSTATE 'PGRST' (docs: Errors, "Raise errors with HTTP Status
--    Codes"; src/PostgREST/Error.hs, parseRaisePGRST): the MESSAGE is a JSON object with "code" and
--    "message" and optionally "details" and "hint" (strings), which PostgREST sends as the body; the
--    DETAIL a JSON object with "status" (a number), "headers" (an object of strings) and optionally
--    "status_text". The trigger now raises
--      message: {"code": "PT503", "message": "Another write of this user is in progress",
--                "details": "This statement waited … ms for …", "hint": "Nothing of this write was stored: …"}
--      detail:  {"status": 503, "headers": {"Retry-After": "1"}}
--    so the Data API answers 503, Retry-After 1 and the body it answered before (supabase-js: error.code
--    "PT503", status 503; a client that read the code reads it still). Retry-After 1 is the progress
--    function's own for the same wait. A MESSAGE or DETAIL PostgREST cannot parse would be its HTTP 500
--    PGRST121: tests/functions/user_writes_serialized.test.ts reads both as Error.hs does (the wait needs
--    two sessions; pgTAP 025 checks the comment). Other callers (psql, postgres.js, the progress
--    function) now see SQLSTATE PGRST with that JSON as the message: the progress function's store
--    (shared/progress/store.ts) reads the body's code from it and maps PGRST carrying PT503 as it mapped
--    PT503 and 55P03 (503 service_unavailable, Retry-After 1), both still mapped so.
--
-- 2. The statement's timer. Since PostgreSQL 13 the statement timeout applies to each statement of a
--    simple-query message separately (docs, statement_timeout; postgres.c, exec_simple_query: the timer is
--    disabled after each statement that does not end the message, and start_xact_command() arms a fresh
--    one as the next begins; seen on 15.18: `set statement_timeout = '1s'; select pg_sleep(0.8); select
--    pg_sleep(0.8)` in one message ends without error), while statement_timestamp() is the arrival of the
--    whole message. …_user_write_wait_answered_503.sql bounded the wait by what was left of the statement
--    timeout counted from statement_timestamp(), less 100 ms, so the statements before the write in such a
--    message were counted against its wait (`psql -c "begin; select pg_sleep(5); insert …"` under an 8 s
--    statement timeout: the wait ended after 2.9 s where the write's own timer left it 8 s; after 8 s of
--    them at once, with 1 ms). SQL can read neither the running timer (its finish time is kept in C,
--    timeout.c) nor when the statement that armed it began: counting from the trigger's call instead (for a
--    statement the client sent itself) was tried and is wrong too, since all of the statement's work before
--    its BEFORE ... FOR EACH STATEMENT trigger (parse, plan, on a new connection loading the catalogs and
--    compiling the trigger functions) runs on that timer: a Data API upsert on a new connection took more
--    than the 100 ms margin there on this machine, and its wait ended as 57014.
--    So the remaining time is not computed at all: the wait keeps the caller's lock_timeout, and the
--    running timer ends it. The statement timeout ending the wait (57014 with the message "canceling
--    statement due to statement timeout") is caught with the lock timeout and answered the same. Any other
--    57014 (a cancel: pg_cancel_backend, a client's cancel request, psql's Ctrl-C, "canceling statement due
--    to user request") is raised again as it came: a cancel stays a cancel, the reason
--    …_user_write_wait_answered_503.sql caught no query_canceled. The two are told apart by that message
--    only (same SQLSTATE): on a server whose lc_messages translates it (Supabase's and the local stack's
--    are English), the statement timeout ending a wait stays 57014 (PostgREST: HTTP 500), as before
--    …_user_write_wait_answered_503.sql. Every wait now lasts as long as its timeouts allow, no longer
--    100 ms less; one that the statement timeout had all but ended before it began waits what is left.
--    A statement timeout that fires before the wait (in the statement's work before the trigger) is 57014.
--
-- 3. Correction to …_user_write_wait_answered_503.sql's header (applied migrations are never edited):
--    it says a wait cut short by the statement timeout all the same ("a statement timeout under 100 ms,
--    or a function whose first write comes after most of its statement timeout is spent") is still a
--    57014. It is not: with less than 100 ms of the statement timeout left the wait's lock_timeout is
--    1 ms (at least 1 ms), which ends it as a wait that waited too long (PT503); only a statement timeout
--    that ran out before that 1 ms had ended was a 57014. README was right. Said again in the COMMENT ON
--    FUNCTION below (the 100 ms and the 1 ms are gone now, above).
--
-- The rest is as in …_user_write_wait_answered_503.sql: who takes the lock and its key, the try first
-- (only a statement that must wait enters the block with the EXCEPTION clause, whose subtransaction the
-- writes that do not wait do not pay for), a transaction with a transaction id only trying it. SECURITY
-- INVOKER (current_user and row_security_active must be the writer's), search_path '' with every name
-- qualified (pgTAP 020, 023, 025). Idempotent (CREATE OR REPLACE, COMMENT ON); local/test.ts re-runs it
-- after the two migrations that restate the function.

create or replace function private.reading_progress_serialize_user_writes() returns trigger
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_uid uuid;
  v_key integer;
  -- The lock's result, assigned rather than PERFORMed: an assignment of a simple expression is evaluated
  -- directly, where PERFORM runs a whole SELECT through the executor.
  v_result text;
  v_waited_from timestamptz;
  v_cancel text;
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
    -- for it and waiting cannot close a cycle. It waits until its lock timeout or its statement timeout,
    -- whichever the running timers end first (neither set: until the other write ends).
    v_waited_from := pg_catalog.clock_timestamp();
    begin
      v_result := pg_catalog.pg_advisory_xact_lock(tg_relid::integer, v_key)::text;
    exception when lock_not_available or query_canceled then
      get stacked diagnostics v_cancel = message_text;
      if sqlstate = '57014' and v_cancel <> 'canceling statement due to statement timeout' then
        raise; -- a cancel, not the statement timeout: it stays a cancel
      end if;
      -- PostgREST answers this SQLSTATE with the status and headers of the DETAIL and the body of the
      -- MESSAGE.
      raise sqlstate 'PGRST' using
        message = pg_catalog.json_build_object(
          'code', 'PT503',
          'message', 'Another write of this user is in progress',
          'details', pg_catalog.format(
            'This statement waited %s ms for a transaction of the same user writing to %s, which has not ended.',
            pg_catalog.round(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - v_waited_from)::numeric * 1000),
            tg_relid::regclass),
          'hint', 'Nothing of this write was stored: send it again. One user''s writes run one after the other.'
        )::text,
        detail = pg_catalog.json_build_object(
          'status', 503,
          'headers', pg_catalog.json_build_object('Retry-After', '1')
        )::text;
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
  'written and row-locked nothing) waits for it, until its lock timeout or its statement timeout ends the '
  'wait, and then raises SQLSTATE PGRST with the JSON PostgREST answers as HTTP 503, Retry-After: 1 and the '
  'body {"code": "PT503", ...} (a cancel stays 57014); one with a transaction id only tries it. '
  'Correction to …_user_write_wait_answered_503.sql: there a statement timeout under 100 ms gave a 1 ms wait '
  'that ended as PT503, not as 57014 (its header says otherwise, wrongly). Migrations '
  '…_user_writes_serialized.sql, …_user_write_wait_answered_503.sql and …_user_write_wait_retry_after.sql.';
