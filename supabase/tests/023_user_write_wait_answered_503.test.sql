-- A user's write that waits too long for another write of the same user ends with PT503 (migration
-- …_user_write_wait_answered_503.sql). The wait itself needs two sessions
-- (tests/functions/user_writes_serialized.test.ts: PT503 under Supabase's timeouts and others, the
-- transaction's lock_timeout after a wait that got the lock, the progress function's 503). Here, in one
-- session: the function's comment says what its condition is (no transaction id yet, which migration
-- …_user_writes_serialized.sql called "nothing locked yet") and how the wait ends; a write that finds the
-- lock free (the common case, now a pg_try_advisory_xact_lock) takes it under Supabase's timeouts and
-- leaves them as they were (only a wait set the wait's own lock_timeout; since
-- …_user_write_wait_retry_after.sql, whose answer and timers pgTAP 025 covers, none does).

begin;
create extension if not exists pgtap with schema extensions;
select plan(4);

insert into auth.users (id, email) values ('a2300000-0000-4000-8000-000000000023', 'wait-503-a@readsync.test');

-- Until when it waits and how the wait ends (since …_user_write_wait_retry_after.sql: until its lock or
-- statement timeout, as SQLSTATE PGRST): pgTAP 025.
select matches(
  pg_catalog.obj_description('private.reading_progress_serialize_user_writes()'::regprocedure, 'pg_proc'),
  'A transaction with no transaction id yet \(it has written and row-locked nothing\) waits for it, until its '
    || 'lock timeout',
  'the trigger function''s comment: who waits (no transaction id yet)');

-- Supabase's Data API request: the session's lock_timeout (authenticator's 8s), the request's
-- statement_timeout (authenticated's 8s), role and claims.
set local lock_timeout = '8s';
set local statement_timeout = '8s';
select is(
  readsync_tests.run_as('authenticated',
    '{"sub": "a2300000-0000-4000-8000-000000000023", "role": "authenticated"}', '',
    $$insert into public.reading_progress (user_id, series_id, device_id, updated_at)
      values ('a2300000-0000-4000-8000-000000000023', 'free', 'phone', '2026-01-01 00:00:00+00')$$),
  'rows 1',
  'a user''s write finding the lock free lands');
select ok(
  exists (select 1 from pg_catalog.pg_locks l
           where l.locktype = 'advisory' and l.pid = pg_catalog.pg_backend_pid() and l.granted
             and l.mode = 'ExclusiveLock' and l.objsubid = 2
             and l.classid = 'public.reading_progress'::regclass
             and l.objid = pg_catalog.uuid_hash('a2300000-0000-4000-8000-000000000023')::oid),
  'it took the user''s lock');
select is(
  pg_catalog.current_setting('lock_timeout') || ' ' || pg_catalog.current_setting('statement_timeout'),
  '8s 8s',
  'and left the transaction''s timeouts as they were');

select * from finish();
rollback;
