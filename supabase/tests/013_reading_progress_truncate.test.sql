-- TRUNCATE of reading_progress is a DELETE of every row for devices (migration
-- …_truncate_reading_progress_as_delete.sql): TRUNCATE fires no row triggers, so the BEFORE TRUNCATE
-- trigger reading_progress_truncate_as_delete deletes every row first; the row triggers broadcast each
-- deletion on its user's progress:<uid> topic and remember it in reading_progress_deletions, and the
-- changes read reports it. Broadcast checks as in 002 (messages new since this test began).
-- The table may hold other data (a shared database): every check is on this file's users.

begin;
-- The lock its TRUNCATE takes (ACCESS EXCLUSIVE), taken first: taken later, after this transaction has
-- written, it is an upgrade that deadlocks with a session holding a weaker lock on the table and
-- waiting for this transaction (pgTAP 038 failed so once in a full run).
lock table public.reading_progress in access exclusive mode;
create extension if not exists pgtap with schema extensions;
select plan(16);

insert into auth.users (id, email) values
  ('a1300000-0000-4000-8000-000000000013', 'truncate-a@readsync.test'),
  ('b1300000-0000-4000-8000-000000000013', 'truncate-b@readsync.test'),
  ('c1300000-0000-4000-8000-000000000013', 'truncate-c@readsync.test');

-- On Supabase realtime.messages is partitioned by day and Realtime creates the partitions (002).
select lives_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('readsync:partition-probe', 'broadcast', 'probe', '{}', true)$$,
  'realtime.messages can store a message now (a day partition covers now(); on Supabase, Realtime creates them)');

-- ---------------------------------------------------------------------------------------------
-- The trigger
-- ---------------------------------------------------------------------------------------------
-- tgtype bits: 1 row, 2 before, 4 insert, 8 delete, 16 update, 32 truncate
select results_eq(
  $$select tgtype::int, tgenabled::text collate "default", tgfoid::regprocedure::text collate "default"
      from pg_trigger
     where tgrelid = 'public.reading_progress'::regclass and tgname = 'reading_progress_truncate_as_delete'$$,
  $$values (2 + 32, 'O', 'private.reading_progress_truncate_as_delete()')$$,
  'reading_progress_truncate_as_delete is BEFORE TRUNCATE FOR EACH STATEMENT, enabled'
);
select results_eq(
  $$select prosecdef, proconfig::text collate "default" from pg_proc
     where oid = to_regprocedure('private.reading_progress_truncate_as_delete()')$$,
  $$values (true, '{"search_path=pg_catalog, pg_temp"}')$$,
  'its function is security definer (the owner deletes every row, RLS or not) with pg_temp last (pgTAP 009)'
);
select ok(
  not has_function_privilege('anon', to_regprocedure('private.reading_progress_truncate_as_delete()'), 'execute')
  and not has_function_privilege('authenticated', to_regprocedure('private.reading_progress_truncate_as_delete()'), 'execute')
  and not has_function_privilege('service_role', to_regprocedure('private.reading_progress_truncate_as_delete()'), 'execute'),
  'no API role may call the trigger function directly'
);

-- ---------------------------------------------------------------------------------------------
-- Fixture: A has two series, B one; C has none, and a deletion remembered earlier
-- ---------------------------------------------------------------------------------------------
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at) values
  ('a1300000-0000-4000-8000-000000000013', 'a-one', 1, 10, 0.1, 'a-phone', now() - interval '2 hours'),
  ('a1300000-0000-4000-8000-000000000013', 'a-two', 2, 20, 0.2, 'a-tablet', now() - interval '1 hour'),
  ('b1300000-0000-4000-8000-000000000013', 'b-one', 3, 30, 0.3, 'b-phone', now() - interval '3 hours'),
  ('c1300000-0000-4000-8000-000000000013', 'c-old', 4, 40, 0.4, 'c-phone', now() - interval '4 hours');
delete from public.reading_progress where user_id = 'c1300000-0000-4000-8000-000000000013';
-- C's deletion belongs to this transaction too; note it, to tell it apart after the TRUNCATE.
create temp table c_deletion_before on commit drop as
  select d.* from public.reading_progress_deletions d where d.user_id = 'c1300000-0000-4000-8000-000000000013';

create temp table rows_before on commit drop as
  select rp.user_id, rp.series_id, to_jsonb(rp) as version from public.reading_progress rp
   where rp.user_id in ('a1300000-0000-4000-8000-000000000013', 'b1300000-0000-4000-8000-000000000013');
create temp table msgs_before on commit drop as select id from realtime.messages;
create temp view new_msgs as
  select m.* from realtime.messages m where not exists (select 1 from msgs_before b where b.id = m.id);

-- ---------------------------------------------------------------------------------------------
-- TRUNCATE, as service_role (an admin script with the service key; postgres fires the same trigger)
-- ---------------------------------------------------------------------------------------------
set local role service_role;
select lives_ok($$truncate public.reading_progress$$, 'service_role truncates reading_progress');
reset role;

select is((select count(*)::int from public.reading_progress), 0, 'the table is empty afterwards');

select set_eq(
  $$select d.user_id, d.series_id, d.version from public.reading_progress_deletions d
     where d.user_id in ('a1300000-0000-4000-8000-000000000013', 'b1300000-0000-4000-8000-000000000013')$$,
  $$select user_id, series_id, version from rows_before$$,
  'every truncated row of A and B is remembered as deleted, as it was (one deletion per series)'
);
select is(
  (select bool_and(d.deleted_xid = pg_current_xact_id()) from public.reading_progress_deletions d
    where d.user_id in ('a1300000-0000-4000-8000-000000000013', 'b1300000-0000-4000-8000-000000000013')),
  true,
  'each remembered at the truncating transaction''s place in the changes order'
);
select is(
  (select to_jsonb(d) from public.reading_progress_deletions d where d.user_id = 'c1300000-0000-4000-8000-000000000013'),
  (select to_jsonb(d) from c_deletion_before d),
  'C''s deletion remembered before is left as it was (C had no row to truncate)'
);

select set_eq(
  $$select topic, event, payload -> 'old_record' ->> 'series_id' as series_id,
           payload ->> 'operation' as operation, private
      from new_msgs where topic like 'progress:%13'$$,
  $$values ('progress:a1300000-0000-4000-8000-000000000013', 'DELETE', 'a-one', 'DELETE', true),
           ('progress:a1300000-0000-4000-8000-000000000013', 'DELETE', 'a-two', 'DELETE', true),
           ('progress:b1300000-0000-4000-8000-000000000013', 'DELETE', 'b-one', 'DELETE', true)$$,
  'one private DELETE broadcast per truncated row, on its own user''s topic; none on C''s'
);
select set_eq(
  $$select (payload -> 'old_record')::jsonb as version from new_msgs where topic like 'progress:%13'$$,
  $$select version from rows_before$$,
  'each DELETE broadcast carries the truncated row as old_record (what a DELETE''s broadcast carries)'
);

-- ---------------------------------------------------------------------------------------------
-- "Changes since" reports the deletions to a device that was offline, each user only their own
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims',
  json_build_object('sub', 'a1300000-0000-4000-8000-000000000013', 'role', 'authenticated')::text, true);
select is(
  (select jsonb_agg(jsonb_build_object('series', c ->> 'series_id', 'deleted', c -> 'deleted') order by c ->> 'series_id')
     from jsonb_array_elements(public.reading_progress_changes('', 100) -> 'changes') c),
  '[{"series": "a-one", "deleted": true}, {"series": "a-two", "deleted": true}]'::jsonb,
  'A''s changes read reports both of A''s truncated series as deleted, and nothing of B''s'
);
select set_config('request.jwt.claims',
  json_build_object('sub', 'b1300000-0000-4000-8000-000000000013', 'role', 'authenticated')::text, true);
select is(
  (select jsonb_agg(jsonb_build_object('series', c ->> 'series_id', 'deleted', c -> 'deleted') order by c ->> 'series_id')
     from jsonb_array_elements(public.reading_progress_changes('', 100) -> 'changes') c),
  '[{"series": "b-one", "deleted": true}]'::jsonb,
  'B''s changes read reports B''s truncated series as deleted'
);
reset role;

-- A later write of a truncated series is a new life after the deleted one, as after a DELETE.
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('a1300000-0000-4000-8000-000000000013', 'a-one', 1, 1, 0.01, 'a-phone', now() - interval '1 day');
select cmp_ok(
  (select created_at from public.reading_progress
    where user_id = 'a1300000-0000-4000-8000-000000000013' and series_id = 'a-one'),
  '>',
  (select (version ->> 'created_at')::timestamptz from rows_before where series_id = 'a-one'),
  'a row written again after the TRUNCATE begins a later life than the truncated one'
);

-- Wiping every user (TRUNCATE auth.users CASCADE: reading_progress and reading_progress_deletions are in
-- the cascade) still works: the deletions the trigger remembers on the way are truncated with the rest.
-- Skipped where postgres may not truncate Auth's tables (a platform that keeps them to its Auth role).
create temp table wipe (outcome text) on commit drop;
do $$
begin
  truncate auth.users cascade;
  insert into wipe values ('truncated');
exception when insufficient_privilege then
  insert into wipe values ('no privilege');
end
$$;
select case when (select outcome from wipe) = 'no privilege'
  then skip('postgres may not truncate auth.users here', 2)
  else collect_tap(
    is((select outcome from wipe), 'truncated', 'TRUNCATE auth.users CASCADE still works'),
    is((select count(*)::int from public.reading_progress) + (select count(*)::int from public.reading_progress_deletions),
       0, 'and leaves neither progress nor remembered deletions'))
  end;

select * from finish();
rollback;
