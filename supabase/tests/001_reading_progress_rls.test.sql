-- Row level security on public.reading_progress (migrations 20261120090000 and 012).
--
-- Users act the way the API makes them act: `set local role authenticated` plus the verified JWT
-- claims in request.jwt.claims (auth.uid() reads `sub`). Every denial is checked twice: the
-- statement fails or touches 0 rows, and afterwards, as postgres, the victim's row is unchanged.

begin;
-- The lock its ALTER TABLE … DISABLE/ENABLE TRIGGER takes (SHARE ROW EXCLUSIVE), taken first: taken later, after this transaction has
-- written, it is an upgrade that deadlocks with a session holding a weaker lock on the table and
-- waiting for this transaction (pgTAP 038 failed so once in a full run).
lock table public.reading_progress in share row exclusive mode;
create extension if not exists pgtap with schema extensions;
select plan(37);

-- ---------------------------------------------------------------------------------------------
-- Fixtures (as postgres): user A with one row, user B with one row.
-- ---------------------------------------------------------------------------------------------
insert into auth.users (id, email) values
  ('a1a1a1a1-0000-4000-8000-000000000001', 'rls-a@readsync.test'),
  ('b2b2b2b2-0000-4000-8000-000000000002', 'rls-b@readsync.test');

insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at) values
  ('a1a1a1a1-0000-4000-8000-000000000001', 'a-seed', 3, 30, 0.3, 'a-phone', '2026-01-01 10:00:00+00'),
  ('b2b2b2b2-0000-4000-8000-000000000002', 'b-seed', 5, 50, 0.5, 'b-phone', '2026-01-01 11:00:00+00');

-- ---------------------------------------------------------------------------------------------
-- Table-level facts
-- ---------------------------------------------------------------------------------------------
select ok(
  (select relrowsecurity from pg_class where oid = 'public.reading_progress'::regclass),
  'reading_progress has row level security enabled'
);

select policies_are(
  'public', 'reading_progress',
  array['reading_progress_select_own', 'reading_progress_insert_own',
        'reading_progress_update_own', 'reading_progress_delete_own'],
  'reading_progress has exactly the four own-row policies'
);

select results_eq(
  $$select policyname::text collate "default", cmd,
           array_to_string(roles, ',') collate "default", permissive,
           qual collate "default", with_check collate "default"
      from pg_policies where schemaname = 'public' and tablename = 'reading_progress'
     order by policyname$$,
  $$values
    ('reading_progress_delete_own', 'DELETE', 'authenticated', 'PERMISSIVE',
       '(( SELECT auth.uid() AS uid) = user_id)', null::text),
    ('reading_progress_insert_own', 'INSERT', 'authenticated', 'PERMISSIVE',
       null, '(( SELECT auth.uid() AS uid) = user_id)'),
    ('reading_progress_select_own', 'SELECT', 'authenticated', 'PERMISSIVE',
       '(( SELECT auth.uid() AS uid) = user_id)', null),
    ('reading_progress_update_own', 'UPDATE', 'authenticated', 'PERMISSIVE',
       '(( SELECT auth.uid() AS uid) = user_id)', '(( SELECT auth.uid() AS uid) = user_id)')$$,
  'each policy is for authenticated only and compares (select auth.uid()) with user_id'
);

select is(
  (select count(*)::int from pg_policies
    where schemaname = 'public' and tablename = 'reading_progress'
      and (replace(coalesce(qual, ''), '( SELECT auth.uid() AS uid)', '') like '%auth.uid()%'
        or replace(coalesce(with_check, ''), '( SELECT auth.uid() AS uid)', '') like '%auth.uid()%')),
  0,
  'no policy calls auth.uid() per row (always wrapped in a scalar subquery, evaluated once)'
);

select table_privs_are(
  'public', 'reading_progress', 'anon', array[]::text[],
  'anon has no privilege at all on reading_progress'
);

select table_privs_are(
  'public', 'reading_progress', 'authenticated', array['SELECT', 'INSERT', 'UPDATE', 'DELETE'],
  'authenticated has exactly select/insert/update/delete (no TRUNCATE, which RLS would not stop)'
);

-- ---------------------------------------------------------------------------------------------
-- Owner A: select, insert, update, delete own rows
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('sub', 'a1a1a1a1-0000-4000-8000-000000000001', 'role', 'authenticated')::text, true));

select results_eq(
  $$select user_id, series_id collate "default", page from public.reading_progress$$,
  $$values ('a1a1a1a1-0000-4000-8000-000000000001'::uuid, 'a-seed'::text, 30)$$,
  'A sees exactly their own row and none of B''s'
);

select lives_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id)
    values ('a1a1a1a1-0000-4000-8000-000000000001', 'a-new', 1, 10, 0.1, 'a-phone')$$,
  'A can insert a row for themselves'
);

select is(
  (select count(*)::int from public.reading_progress where series_id = 'a-new'),
  1,
  'A can read back the row they inserted'
);

with u as (update public.reading_progress set page = 11 where series_id = 'a-new' returning 1)
select is(count(*)::int, 1,
  'A can update their own row (1 row affected)') from u;

select is(
  (select page from public.reading_progress where series_id = 'a-new'),
  11,
  'A''s update is visible to A'
);

select lives_ok(
  $$insert into public.reading_progress as p (user_id, series_id, page, device_id, updated_at)
    values ('a1a1a1a1-0000-4000-8000-000000000001', 'a-new', 12, 'a-tablet', now())
    on conflict (user_id, series_id) do update set page = excluded.page, device_id = excluded.device_id,
      updated_at = excluded.updated_at$$,
  'A can upsert (insert ... on conflict do update) their own row'
);

with d as (delete from public.reading_progress where series_id = 'a-new' returning 1)
select is(count(*)::int, 1,
  'A can delete their own row (1 row affected)') from d;

-- ---------------------------------------------------------------------------------------------
-- Intruder B against A's row
-- ---------------------------------------------------------------------------------------------
reset role;
create temp table a_seed_before on commit drop as
  select to_jsonb(p) as row from public.reading_progress p
   where user_id = 'a1a1a1a1-0000-4000-8000-000000000001' and series_id = 'a-seed';

set local role authenticated;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('sub', 'b2b2b2b2-0000-4000-8000-000000000002', 'role', 'authenticated')::text, true));

select is_empty(
  $$select 1 from public.reading_progress where user_id = 'a1a1a1a1-0000-4000-8000-000000000001'$$,
  'B cannot see A''s rows, even when asking for them by user_id'
);

select results_eq(
  $$select user_id, series_id collate "default" from public.reading_progress$$,
  $$values ('b2b2b2b2-0000-4000-8000-000000000002'::uuid, 'b-seed'::text)$$,
  'B sees exactly their own row'
);

with u as (update public.reading_progress set page = 999, cleared = false
               where user_id = 'a1a1a1a1-0000-4000-8000-000000000001' returning 1)
select is(count(*)::int, 0,
  'B''s update of A''s row affects 0 rows') from u;

with u as (update public.reading_progress set page = 999 returning 1)
select is(count(*)::int, 1,
  'B''s unfiltered update touches only B''s own row') from u;

with d as (delete from public.reading_progress
               where user_id = 'a1a1a1a1-0000-4000-8000-000000000001' returning 1)
select is(count(*)::int, 0,
  'B''s delete of A''s row affects 0 rows') from d;

select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, page, device_id)
    values ('a1a1a1a1-0000-4000-8000-000000000001', 'forged', 1, 'b-phone')$$,
  '42501', null,
  'B cannot insert a row with user_id = A (forged owner): 42501'
);

select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, page, device_id)
    values ('a1a1a1a1-0000-4000-8000-000000000001', 'a-seed', 1, 'b-phone')
    on conflict (user_id, series_id) do update set page = excluded.page$$,
  '42501', null,
  'B cannot overwrite A''s row through an upsert on A''s key: 42501'
);

select throws_ok(
  $$update public.reading_progress set user_id = 'a1a1a1a1-0000-4000-8000-000000000001'
     where series_id = 'b-seed'$$,
  '23514', null,
  'B cannot hand their own row over to A (update user_id): a row''s name cannot change (stamp trigger, 23514)'
);

-- Beneath that rule, RLS refuses it on its own (the update policy's WITH CHECK).
reset role;
alter table public.reading_progress disable trigger reading_progress_stamp;
set local role authenticated;
select throws_ok(
  $$update public.reading_progress set user_id = 'a1a1a1a1-0000-4000-8000-000000000001'
     where series_id = 'b-seed'$$,
  '42501', null,
  'and with the stamp trigger off, RLS refuses the hand-over too: 42501'
);
reset role;
alter table public.reading_progress enable trigger reading_progress_stamp;
set local role authenticated;

with d as (delete from public.reading_progress returning 1)
select is(count(*)::int, 1,
  'B''s unfiltered delete removes only B''s own row') from d;

reset role;

select is(
  (select to_jsonb(p) from public.reading_progress p
    where user_id = 'a1a1a1a1-0000-4000-8000-000000000001' and series_id = 'a-seed'),
  (select row from a_seed_before),
  'as postgres: A''s row is byte-for-byte unchanged after B''s attempts'
);

select is(
  (select count(*)::int from public.reading_progress where user_id = 'a1a1a1a1-0000-4000-8000-000000000001'),
  1,
  'as postgres: A still has exactly one row (nothing forged for A)'
);

select is_empty(
  $$select 1 from public.reading_progress where user_id = 'b2b2b2b2-0000-4000-8000-000000000002'$$,
  'as postgres: B''s own row was deleted by B (the allowed delete really happened)'
);

-- ---------------------------------------------------------------------------------------------
-- Authenticated without a subject (auth.uid() is null): nothing visible, nothing writable
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('role', 'authenticated')::text, true));

select is_empty(
  $$select 1 from public.reading_progress$$,
  'authenticated without sub sees no rows'
);

select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, page, device_id)
    values ('a1a1a1a1-0000-4000-8000-000000000001', 'no-sub', 1, 'x')$$,
  '42501', null,
  'authenticated without sub cannot insert: 42501'
);

with u as (update public.reading_progress set page = 1 returning 1)
select is(count(*)::int, 0,
  'authenticated without sub updates 0 rows') from u;

-- ---------------------------------------------------------------------------------------------
-- anon: no privilege at all
-- ---------------------------------------------------------------------------------------------
reset role;
set local role anon;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('role', 'anon')::text, true));

select throws_ok(
  $$select * from public.reading_progress$$,
  '42501', null,
  'anon cannot select from reading_progress: 42501'
);

select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, page, device_id)
    values ('a1a1a1a1-0000-4000-8000-000000000001', 'anon', 1, 'x')$$,
  '42501', null,
  'anon cannot insert into reading_progress: 42501'
);

select throws_ok(
  $$update public.reading_progress set page = 0$$,
  '42501', null,
  'anon cannot update reading_progress: 42501'
);

select throws_ok(
  $$delete from public.reading_progress$$,
  '42501', null,
  'anon cannot delete from reading_progress: 42501'
);

-- ---------------------------------------------------------------------------------------------
-- TRUNCATE bypasses RLS and row triggers, so no API role but service_role may have it
-- ---------------------------------------------------------------------------------------------
reset role;
set local role authenticated;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('sub', 'b2b2b2b2-0000-4000-8000-000000000002', 'role', 'authenticated')::text, true));

select throws_ok(
  $$truncate public.reading_progress$$,
  '42501', null,
  'authenticated cannot truncate reading_progress (would wipe every user''s progress): 42501'
);

reset role;
set local role anon;

select throws_ok(
  $$truncate public.reading_progress$$,
  '42501', null,
  'anon cannot truncate reading_progress: 42501'
);

reset role;

select is(
  (select count(*)::int from public.reading_progress where user_id = 'a1a1a1a1-0000-4000-8000-000000000001'),
  1,
  'as postgres: A''s row survived every anon / no-sub / truncate attempt'
);

-- ---------------------------------------------------------------------------------------------
-- service_role bypasses RLS (the server-side escape hatch); postgres sees both users' data
-- ---------------------------------------------------------------------------------------------
set local role service_role;

select is(
  (select count(*)::int from public.reading_progress where user_id = 'a1a1a1a1-0000-4000-8000-000000000001'),
  1,
  'service_role sees A''s row without claims (bypassrls)'
);

reset role;

select * from finish();
rollback;
