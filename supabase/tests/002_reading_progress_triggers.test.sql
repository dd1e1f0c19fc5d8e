-- Triggers on public.reading_progress (migration 012):
--   reading_progress_stamp      BEFORE INSERT/UPDATE: updated_at (LWW key) rules, synced_at, change_xid,
--                               created_at
--   reading_progress_broadcast  AFTER INSERT/UPDATE/DELETE: one realtime.messages row per change on
--                               the private topic progress:<user_id>
--
-- now() is constant inside this test transaction while clock_timestamp() is not; the assertions
-- are written with that in mind (rows get old updated_at values where "bumped to now()" must be
-- told apart from "kept").

begin;
create extension if not exists pgtap with schema extensions;
select plan(50);

insert into auth.users (id, email) values
  ('c3c3c3c3-0000-4000-8000-000000000003', 'trig-a@readsync.test'),
  ('d4d4d4d4-0000-4000-8000-000000000004', 'trig-b@readsync.test');

-- On Supabase realtime.messages is partitioned by day, and Realtime, not the database, creates the
-- partitions (yesterday, today, tomorrow; local/realtime/partitions.ts does it locally): right after a
-- database reset they can be missing until Realtime has connected. Then no message can be stored
-- (realtime.send only warns) and every broadcast check below fails; this check says why.
select lives_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('readsync:partition-probe', 'broadcast', 'probe', '{}', true)$$,
  'realtime.messages can store a message now (a day partition covers now(); on Supabase, Realtime creates them)');

-- Messages that existed before this test (from other runs on a shared database) are ignored.
create temp table msgs_before on commit drop as select id from realtime.messages;
create temp view new_msgs as
  select m.* from realtime.messages m where not exists (select 1 from msgs_before b where b.id = m.id);

-- ---------------------------------------------------------------------------------------------
-- Trigger and function definitions
-- ---------------------------------------------------------------------------------------------
select triggers_are(
  'public', 'reading_progress',
  array['reading_progress_stamp', 'reading_progress_end_claims', 'reading_progress_broadcast',
        'reading_progress_remember_deletion', 'reading_progress_log_replaced_tie',
        'reading_progress_new_life_after_deletion', 'reading_progress_truncate_as_delete',
        'reading_progress_reset_sent_with_position', 'reading_progress_reset_superseded',
        'reading_progress_reset_marked_with_position', 'reading_progress_reset_marked_zeroes_position',
        'reading_progress_serialize_user_writes', 'reading_progress_reset_inserted_with_position',
        'reading_progress_stamp_after_deletion'],
  'reading_progress has exactly the stamp, end-of-claims, broadcast, remember-deletion, replaced-tie log and new-life check (the last three migration 013), truncate-as-delete (pgTAP 013), the two reset triggers (pgTAP 016), the two marked-reset triggers (pgTAP 018), the user-writes lock (pgTAP 020), the inserted-reset trigger (pgTAP 038) and the stamp''s deletion read as the owner (pgTAP 044)'
);

-- tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update (32 truncate, 64 instead of)
select results_eq(
  $$select tgname::text collate "default", tgtype::int, tgenabled::text collate "default",
           tgfoid::regprocedure::text collate "default"
      from pg_trigger where tgrelid = 'public.reading_progress'::regclass and not tgisinternal
     order by tgname$$,
  $$values ('reading_progress_broadcast',         1 + 4 + 8 + 16, 'O', 'reading_progress_broadcast()'),
           ('reading_progress_end_claims',        4,              'O', 'reading_progress_end_claims()'),
           ('reading_progress_log_replaced_tie',  1 + 16,         'O', 'private.reading_progress_log_replaced_tie()'),
           ('reading_progress_new_life_after_deletion', 1 + 4,    'O', 'private.reading_progress_new_life_after_deletion()'),
           ('reading_progress_remember_deletion', 1 + 8,          'O', 'private.reading_progress_remember_deletion()'),
           ('reading_progress_reset_inserted_with_position', 1 + 2 + 4, 'O', 'private.reading_progress_reset_inserted_with_position()'),
           ('reading_progress_reset_marked_with_position', 1 + 2 + 16, 'O', 'private.reading_progress_reset_marked_with_position()'),
           ('reading_progress_reset_marked_zeroes_position', 1 + 2 + 16, 'O', 'private.reading_progress_reset_marked_zeroes_position()'),
           ('reading_progress_reset_sent_with_position', 1 + 2 + 16, 'O', 'private.reading_progress_reset_sent_with_position()'),
           ('reading_progress_reset_superseded',  1 + 2 + 16,     'O', 'private.reading_progress_reset_superseded()'),
           ('reading_progress_serialize_user_writes', 2 + 4 + 8 + 16, 'O', 'private.reading_progress_serialize_user_writes()'),
           ('reading_progress_stamp',             1 + 2 + 4 + 16, 'O', 'reading_progress_stamp()'),
           ('reading_progress_stamp_after_deletion', 1 + 2 + 4,   'O', 'private.reading_progress_stamp_after_deletion()'),
           ('reading_progress_truncate_as_delete', 2 + 32,        'O', 'private.reading_progress_truncate_as_delete()')$$,
  'stamp is BEFORE INSERT OR UPDATE, the four reset triggers BEFORE UPDATE and the inserted-reset one BEFORE INSERT (firing before stamp: name order), the stamp''s deletion read BEFORE INSERT (after stamp), broadcast AFTER INSERT OR UPDATE OR DELETE, replaced-tie log AFTER UPDATE, new-life check AFTER INSERT, remember-deletion AFTER DELETE, all FOR EACH ROW; end-of-claims AFTER INSERT, truncate-as-delete BEFORE TRUNCATE and the user-writes lock BEFORE INSERT OR UPDATE OR DELETE, FOR EACH STATEMENT; all enabled'
);

-- No WHEN on the end-of-claims trigger: PostgreSQL prepares a WHEN anew for every statement, which
-- costs about as much as the call whose first test (no claim set) ends it (migration 012).
select is(
  (select pg_get_triggerdef(oid) from pg_trigger
    where tgrelid = 'public.reading_progress'::regclass and tgname = 'reading_progress_end_claims'),
  'CREATE TRIGGER reading_progress_end_claims AFTER INSERT ON public.reading_progress FOR EACH STATEMENT EXECUTE FUNCTION reading_progress_end_claims()',
  'the end-of-claims trigger runs once per INSERT statement, without a WHEN'
);

select is(
  (select substring(pg_get_triggerdef(oid) from 'WHEN \((.*)\) EXECUTE') from pg_trigger
    where tgrelid = 'public.reading_progress'::regclass and tgname = 'reading_progress_log_replaced_tie'),
  '((new.updated_at = old.updated_at) AND (new.device_id <> old.device_id))',
  'the replaced-tie log runs only for an UPDATE that keeps updated_at and changes device_id (no call otherwise)'
);

select is_definer('public', 'reading_progress_broadcast', array[]::name[],
  'the broadcast function is security definer (writers may not insert into realtime.messages)');

select isnt_definer('public', 'reading_progress_stamp', array[]::name[],
  'the stamp function is not security definer (it needs no privileges)');

select results_eq(
  $$select proname::text collate "default", proconfig::text collate "default" from pg_proc
     where oid in ('public.reading_progress_stamp()'::regprocedure, 'public.reading_progress_broadcast()'::regprocedure,
                   'public.reading_progress_end_claims()'::regprocedure)
     order by proname$$,
  $$values ('reading_progress_broadcast', '{"search_path=pg_catalog, pg_temp",TimeZone=UTC,extra_float_digits=1}'),
           ('reading_progress_end_claims', '{"search_path=\"\""}'),
           ('reading_progress_stamp', '{"search_path=\"\""}')$$,
  'the trigger functions pin search_path: empty for the stamp and end-of-claims, pg_temp last for the definer broadcast (pgTAP 009); the broadcast prints dates in UTC (migration …_progress_dates_printed_in_utc) and percentages exactly (…_percentages_printed_exactly)'
);
select is(
  (select proconfig::text collate "default" from pg_proc
    where oid = 'private.reading_progress_remember_deletion()'::regprocedure),
  '{"search_path=pg_catalog, pg_temp",TimeZone=UTC,extra_float_digits=1}',
  'the remember-deletion function pins search_path (pgTAP 009) and prints the deleted version in UTC, its percentage exactly'
);

select ok(
  not has_function_privilege('authenticated', 'public.reading_progress_broadcast()', 'execute')
  and not has_function_privilege('anon', 'public.reading_progress_broadcast()', 'execute')
  and not has_function_privilege('authenticated', 'public.reading_progress_stamp()', 'execute')
  and not has_function_privilege('anon', 'public.reading_progress_stamp()', 'execute')
  and not has_function_privilege('authenticated', 'public.reading_progress_end_claims()', 'execute')
  and not has_function_privilege('anon', 'public.reading_progress_end_claims()', 'execute'),
  'anon and authenticated cannot execute the trigger functions directly'
);

-- ---------------------------------------------------------------------------------------------
-- Broadcast: INSERT, UPDATE, DELETE -> exactly one message each
-- ---------------------------------------------------------------------------------------------
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('c3c3c3c3-0000-4000-8000-000000000003', 'bc-series', 2, 20, 0.2, 'dev-1', '2026-01-02 03:04:05+00');

select results_eq(
  $$select topic, event, payload->>'operation', private, extension from new_msgs$$,
  $$values ('progress:c3c3c3c3-0000-4000-8000-000000000003', 'INSERT', 'INSERT', true, 'broadcast')$$,
  'INSERT broadcasts exactly one private message on progress:<user_id> with event and operation INSERT'
);

select is(
  (select payload->'record' from new_msgs where event = 'INSERT'),
  (select to_jsonb(p) from public.reading_progress p
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'bc-series'),
  'INSERT message: record is the stored row (after the stamp trigger)'
);

select is(
  (select jsonb_typeof(payload->'old_record') from new_msgs where event = 'INSERT'),
  'null',
  'INSERT message: old_record is null'
);

select is(
  (select jsonb_build_object('table', payload->'table', 'schema', payload->'schema') from new_msgs where event = 'INSERT'),
  '{"table": "reading_progress", "schema": "public"}'::jsonb,
  'INSERT message: names table reading_progress in schema public'
);

create temp table snap on commit drop as
  select 'before_update'::text as label, to_jsonb(p) as row from public.reading_progress p
   where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'bc-series';

update public.reading_progress set page = 21, percentage = 0.21, updated_at = '2026-01-02 03:04:06+00'
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'bc-series';

select results_eq(
  $$select topic, event, payload->>'operation', private from new_msgs where event <> 'INSERT'$$,
  $$values ('progress:c3c3c3c3-0000-4000-8000-000000000003', 'UPDATE', 'UPDATE', true)$$,
  'UPDATE broadcasts exactly one private message with event and operation UPDATE'
);

select is(
  (select payload->'record' from new_msgs where event = 'UPDATE'),
  (select to_jsonb(p) from public.reading_progress p
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'bc-series'),
  'UPDATE message: record is the row after the update'
);

select is(
  (select payload->'old_record' from new_msgs where event = 'UPDATE'),
  (select row from snap where label = 'before_update'),
  'UPDATE message: old_record is the row before the update'
);

insert into snap
  select 'before_delete', to_jsonb(p) from public.reading_progress p
   where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'bc-series';

delete from public.reading_progress
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'bc-series';

select results_eq(
  $$select topic, event, payload->>'operation', private from new_msgs where event not in ('INSERT', 'UPDATE')$$,
  $$values ('progress:c3c3c3c3-0000-4000-8000-000000000003', 'DELETE', 'DELETE', true)$$,
  'DELETE broadcasts exactly one private message with event and operation DELETE'
);

select is(
  (select payload->'old_record' from new_msgs where event = 'DELETE'),
  (select row from snap where label = 'before_delete'),
  'DELETE message: old_record is the deleted row'
);

select is(
  (select jsonb_typeof(payload->'record') from new_msgs where event = 'DELETE'),
  'null',
  'DELETE message: record is null'
);

select is(
  (select count(*)::int from new_msgs),
  3,
  'three writes, three messages: nothing on any other topic'
);

-- ---------------------------------------------------------------------------------------------
-- updated_at: the last-write-wins key
-- ---------------------------------------------------------------------------------------------
insert into public.reading_progress (user_id, series_id, page, device_id, updated_at) values
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-null',     1, 'dev-1', null),
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-day',      1, 'dev-1', now() + interval '1 day'),
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-2s',       1, 'dev-1', now() + interval '2 seconds'),
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-5s',       1, 'dev-1', now() + interval '5 seconds'),
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-past-us',  1, 'dev-1', '2026-01-02 03:04:05.123789+00'),
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-plain',    1, 'dev-1', '2026-01-02 03:04:05+00'),
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-newkey',   1, 'dev-1', '2026-01-02 03:04:05+00'),
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-newdev',   1, 'dev-1', '2026-01-02 03:04:05+00');

-- Just past the limit by the clock the trigger reads (clock_timestamp(), not now()): told by order,
-- not by how soon a loaded machine gets from computing the date to running the trigger, so the
-- triggers run here on the test clock (readsync_tests.use_test_clock, supabase/tests/000_test_helpers.test.sql:
-- copies of migration 012's stamp and end-of-claims functions reading a clock that moves 1 us a
-- reading). 'ts-5s-edge' is dated exactly at the limit as the trigger computes it: the trigger
-- truncates updated_at to the millisecond, then compares it with its first clock reading + 5 s
-- (that reading is not truncated). The clock is set 1 us before a millisecond M, so that reading is
-- M, and the row is dated M + 5 s, which truncation leaves as it is: kept only if a date equal to
-- the limit is kept ('>' in the trigger, not '>='). Its synced_at (the trigger's next reading,
-- M + 1 us) shows the comparison read M. 'ts-5s1ms' is dated 5 s and 1 ms after the clock's reading.
select readsync_tests.use_test_clock(date_trunc('milliseconds', now()) - interval '1 microsecond');
insert into public.reading_progress (user_id, series_id, page, device_id, updated_at) values
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-5s-edge',  1, 'dev-1',
   date_trunc('milliseconds', now()) + interval '5 seconds');
insert into public.reading_progress (user_id, series_id, page, device_id, updated_at) values
  ('c3c3c3c3-0000-4000-8000-000000000003', 'ts-5s1ms',    1, 'dev-1', readsync_tests.test_clock() + interval '5.001 seconds');
select readsync_tests.use_real_clock();

create temp view ts as
  select series_id, updated_at from public.reading_progress
   where user_id = 'c3c3c3c3-0000-4000-8000-000000000003';

select is(
  (select updated_at from ts where series_id = 'ts-null'),
  date_trunc('milliseconds', now()),
  'insert with updated_at null gets now() (truncated to ms)'
);

select is(
  (select updated_at from ts where series_id = 'ts-day'),
  date_trunc('milliseconds', now()),
  'insert with updated_at one day in the future is clamped to now()'
);

select is(
  (select updated_at from ts where series_id = 'ts-2s'),
  date_trunc('milliseconds', now() + interval '2 seconds'),
  'insert with updated_at 2 s in the future is kept (clock skew tolerance), truncated to ms'
);

select is(
  (select updated_at from ts where series_id = 'ts-5s'),
  date_trunc('milliseconds', now() + interval '5 seconds'),
  'insert with updated_at 5 s after now() (the transaction''s start) is kept'
);

select is(
  (select (updated_at, synced_at)::text from public.reading_progress
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'ts-5s-edge'),
  (date_trunc('milliseconds', now()) + interval '5 seconds',
   date_trunc('milliseconds', now()) + interval '1 microsecond')::text,
  'insert with updated_at exactly the trigger''s clock reading + 5 s is kept (the limit is inclusive)'
);

select is(
  (select updated_at from ts where series_id = 'ts-5s1ms'),
  date_trunc('milliseconds', now()),
  'insert with updated_at more than 5 s after the wall clock (its clock + 5.001 s) is clamped to now()'
);

select is(
  (select updated_at from ts where series_id = 'ts-past-us'),
  '2026-01-02 03:04:05.123+00'::timestamptz,
  'updated_at is truncated (not rounded) to milliseconds: .123789 -> .123'
);

update public.reading_progress set page = 2
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'ts-plain';

select is(
  (select updated_at from ts where series_id = 'ts-plain'),
  date_trunc('milliseconds', now()),
  'a plain update (no new updated_at / device_id) bumps updated_at to now()'
);

update public.reading_progress set page = 2, updated_at = '2026-01-03 00:00:00.987654+00'
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'ts-newkey';

select is(
  (select updated_at from ts where series_id = 'ts-newkey'),
  '2026-01-03 00:00:00.987+00'::timestamptz,
  'an update that brings its own updated_at keeps it (truncated to ms)'
);

update public.reading_progress set page = 2, device_id = 'dev-2'
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'ts-newdev';

select is(
  (select updated_at from ts where series_id = 'ts-newdev'),
  '2026-01-02 03:04:05+00'::timestamptz,
  'an update that brings a new device_id (a new LWW key) keeps the given updated_at'
);

update public.reading_progress set page = 3, updated_at = now() + interval '1 day'
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'ts-newkey';

select is(
  (select updated_at from ts where series_id = 'ts-newkey'),
  date_trunc('milliseconds', now()),
  'an update with updated_at one day in the future is clamped to now() as well'
);

-- A row stored 5 s ahead (the edge of the tolerance) and an update dated a day ahead: by its own
-- date the update is newer, so it lands, 1 ms after the stored version rather than at now() (where
-- it would be older than the row it replaces and be refused).
update public.reading_progress set page = 4, device_id = 'dev-0', updated_at = now() + interval '1 day'
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'ts-5s';

select is(
  (select (updated_at, page, device_id)::text from public.reading_progress
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'ts-5s'),
  (date_trunc('milliseconds', now() + interval '5 seconds') + interval '1 millisecond', 4, 'dev-0')::text,
  'an update dated beyond the tolerance over a row stored ahead lands 1 ms after it (it wins)'
);

-- ---------------------------------------------------------------------------------------------
-- synced_at (clock_timestamp), created_at (immutable), change_xid (this transaction)
-- ---------------------------------------------------------------------------------------------
select pg_sleep(0.01);

insert into public.reading_progress (user_id, series_id, page, device_id, synced_at, created_at, change_xid)
values ('c3c3c3c3-0000-4000-8000-000000000003', 'meta', 1, 'dev-1',
        '2000-01-01 00:00:00+00', '2000-01-01 00:00:00+00', '1'::xid8);

create temp table meta_before on commit drop as
  select synced_at, created_at from public.reading_progress
   where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'meta';

select cmp_ok(
  (select synced_at from meta_before), '>', now(),
  'synced_at is the wall clock (clock_timestamp), not the transaction start, and not the supplied value'
);

select is(
  (select created_at from meta_before),
  (select synced_at from meta_before),
  'a supplied created_at is ignored on insert: created_at = the insert''s wall clock (its synced_at)'
);

select is(
  (select change_xid from public.reading_progress
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'meta'),
  pg_current_xact_id(),
  'a supplied change_xid is ignored on insert: change_xid = pg_current_xact_id()'
);

select pg_sleep(0.01);

update public.reading_progress
   set page = 2, created_at = '2000-01-01 00:00:00+00', synced_at = '2000-01-01 00:00:00+00', change_xid = '1'::xid8
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'meta';

select cmp_ok(
  (select synced_at from public.reading_progress
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'meta'),
  '>',
  (select synced_at from meta_before),
  'synced_at advances on update (later clock_timestamp in the same transaction)'
);

select is(
  (select created_at from public.reading_progress
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'meta'),
  (select created_at from meta_before),
  'created_at is immutable: an update that sets it keeps the original'
);

select is(
  (select change_xid from public.reading_progress
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'meta'),
  pg_current_xact_id(),
  'a supplied change_xid is ignored on update: change_xid = pg_current_xact_id()'
);

-- A hard DELETE ends a life of the row; the next INSERT begins a later one, even in the same
-- transaction and with an older updated_at (clients order versions by created_at first).
delete from public.reading_progress
 where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'meta';
insert into public.reading_progress (user_id, series_id, page, device_id, updated_at)
values ('c3c3c3c3-0000-4000-8000-000000000003', 'meta', 1, 'dev-offline', '2000-01-01 00:00:00+00');

select cmp_ok(
  (select created_at from public.reading_progress
    where user_id = 'c3c3c3c3-0000-4000-8000-000000000003' and series_id = 'meta'),
  '>',
  (select created_at from meta_before),
  'a row inserted again after a hard DELETE (same transaction, older updated_at) starts a later life'
);

-- ---------------------------------------------------------------------------------------------
-- Writes by an authenticated user broadcast too (security definer), but the user cannot write to
-- realtime.messages themselves, neither directly nor through realtime.send.
-- ---------------------------------------------------------------------------------------------
truncate msgs_before;
insert into msgs_before select id from realtime.messages;

set local role authenticated;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('sub', 'd4d4d4d4-0000-4000-8000-000000000004', 'role', 'authenticated')::text, true));

select lives_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id)
    values ('d4d4d4d4-0000-4000-8000-000000000004', 'user-write', 1, 5, 0.05, 'b-phone')$$,
  'B inserts their own row as authenticated'
);

select lives_ok(
  $$update public.reading_progress set page = 6 where series_id = 'user-write'$$,
  'B updates their own row as authenticated'
);

select lives_ok(
  $$delete from public.reading_progress where series_id = 'user-write'$$,
  'B deletes their own row as authenticated'
);

select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:d4d4d4d4-0000-4000-8000-000000000004', 'broadcast', 'UPDATE', '{"forged": true}', true)$$,
  '42501', null,
  'B cannot insert into realtime.messages directly, not even on their own topic: 42501'
);

-- B tries realtime.send on A's topic. Locally (and on Supabase) realtime.send turns the RLS error
-- into a WARNING; where B may not even execute it, the attempt fails outright. Either way only the
-- outcome matters: no message (asserted as postgres below).
set local client_min_messages = error;
do $$
begin
  perform realtime.send('{"forged": true}'::jsonb, 'FORGED', 'progress:c3c3c3c3-0000-4000-8000-000000000003', true);
exception when insufficient_privilege then
  null;
end
$$;
reset client_min_messages;

reset role;

select is(
  (select count(*)::int from new_msgs where event = 'FORGED' or payload ? 'forged'),
  0,
  'as postgres: B''s realtime.send on A''s topic left no message in realtime.messages'
);

select results_eq(
  $$select topic, event, coalesce(payload->'record'->>'series_id', payload->'old_record'->>'series_id')
      from new_msgs order by event = 'DELETE', event = 'UPDATE'$$,
  $$values ('progress:d4d4d4d4-0000-4000-8000-000000000004', 'INSERT', 'user-write'),
           ('progress:d4d4d4d4-0000-4000-8000-000000000004', 'UPDATE', 'user-write'),
           ('progress:d4d4d4d4-0000-4000-8000-000000000004', 'DELETE', 'user-write')$$,
  'as postgres: B''s own insert, update and delete each broadcast one message on B''s topic'
);

select is(
  (select (payload->'record'->>'page')::int from new_msgs where event = 'UPDATE'),
  6,
  'the broadcast of B''s update carries B''s new page'
);

-- ---------------------------------------------------------------------------------------------
-- Deleting the auth user cascades to reading_progress; the cascade is broadcast as DELETE too.
-- ---------------------------------------------------------------------------------------------
truncate msgs_before;
insert into msgs_before select id from realtime.messages;

delete from auth.users where id = 'c3c3c3c3-0000-4000-8000-000000000003';

select is(
  (select count(*)::int from public.reading_progress where user_id = 'c3c3c3c3-0000-4000-8000-000000000003'),
  0,
  'deleting the auth user deletes their progress (on delete cascade)'
);

select is(
  (select count(*)::int from new_msgs
    where topic = 'progress:c3c3c3c3-0000-4000-8000-000000000003' and event = 'DELETE'),
  11,
  'each cascaded row delete is broadcast as DELETE on the user''s topic (11 rows, 11 messages)'
);

select is(
  (select count(*)::int from new_msgs),
  11,
  'the cascade broadcasts nothing else'
);

select * from finish();
rollback;
