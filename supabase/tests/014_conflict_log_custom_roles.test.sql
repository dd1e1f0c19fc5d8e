-- A custom role granted `authenticated` (Supabase lets a token's `role` claim name one; PostgREST
-- switches to it) is a signed-in user for readsync: the grants and RLS policies `to authenticated`
-- apply to it, last write wins on its direct writes, and its refused and replaced writes are logged
-- as authenticated's are (migration …_conflict_log_members_of_authenticated.sql; before it the two
-- logging triggers asked current_user = 'authenticated' and logged none of them). Roles that bypass
-- row level security (postgres, a member of authenticated given BYPASSRLS) are refused the same way
-- and still not logged: no policy ties their writes to auth.uid(). Every statement of a role runs
-- through readsync_tests.run_as ('rows <n>' or the SQLSTATE); pgTAP runs as the session's user.

begin;
create extension if not exists pgtap with schema extensions;
select plan(24);

insert into auth.users (id, email) values
  ('a1400000-0000-4000-8000-000000000014', 'premium-a@readsync.test'),
  ('b1400000-0000-4000-8000-000000000014', 'other-b@readsync.test');
-- B's row, which A must neither see nor change.
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
values ('b1400000-0000-4000-8000-000000000014', 'b-series', 9, 'b-phone', now() - interval '1 hour');

-- The custom role, as Supabase's guides make one: granted authenticated (INHERIT, the default).
create role readsync_test_premium nologin;
grant authenticated to readsync_test_premium;
grant readsync_test_premium to current_user;
-- A member that does not inherit (NOINHERIT): neither authenticated's grants nor its policies reach it.
create role readsync_test_noinherit nologin noinherit;
grant authenticated to readsync_test_noinherit;
grant readsync_test_noinherit to current_user;
-- A member given BYPASSRLS (an administrator's role): creating it needs a superuser before
-- PostgreSQL 16 (npm test runs as one); elsewhere its checks are skipped.
create temp table bypass_ready (ready boolean) on commit drop;
do $$
begin
  create role readsync_test_bypass_member nologin bypassrls;
  grant authenticated to readsync_test_bypass_member;
  execute pg_catalog.format('grant readsync_test_bypass_member to %I', current_user);
  insert into bypass_ready values (true);
exception when insufficient_privilege then
  insert into bypass_ready values (false);
end
$$;

-- What the roles' calls of write_reading_progress answered (run_as returns a row count only).
create temp table answers (label text primary key, answer jsonb) on commit drop;
grant insert, select on answers to readsync_test_premium;

create function pg_temp.as_premium(p_sql text) returns text language sql as $fn$
  select readsync_tests.run_as('readsync_test_premium',
    '{"sub":"a1400000-0000-4000-8000-000000000014","role":"readsync_test_premium"}', '', p_sql)
$fn$;
-- A's log, oldest first: '<kind> <losing device> refused|replaced'.
create function pg_temp.logged() returns text[] language sql as $fn$
  select coalesce(array_agg(kind || ' ' || losing_device_id || case when rejected then ' refused' else ' replaced' end
                            order by id), '{}')
    from public.reading_progress_conflicts where user_id = 'a1400000-0000-4000-8000-000000000014'
$fn$;

-- Runs p_sql as p_role with p_claims: 'rows <n>' or the SQLSTATE, and how many rows it added to A's log.
create function pg_temp.logged_by(p_role text, p_claims jsonb, p_sql text) returns text language plpgsql as $fn$
declare
  v_before integer := cardinality(pg_temp.logged());
  v_result text := readsync_tests.run_as(p_role, p_claims, '', p_sql);
begin
  return v_result || ', ' || (cardinality(pg_temp.logged()) - v_before) || ' logged';
end
$fn$;

select ok(pg_has_role('readsync_test_premium', 'authenticated', 'usage'),
  'setup: the custom role has authenticated''s privileges');

-- ---------------------------------------------------------------------------------------------
-- The grants and policies of authenticated hold for it.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.as_premium($$
  insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
  values ('a1400000-0000-4000-8000-000000000014', 'op', 12, 30, 0.12, 'tablet', now() - interval '1 hour')$$),
  'rows 1', 'the custom role inserts its user''s own row (the insert policy applies to it)');
select is(pg_temp.as_premium($$select 1 from public.reading_progress$$), 'rows 1',
  'and sees that row only, not another user''s');
select is(pg_temp.as_premium($$
  insert into public.reading_progress (user_id, series_id, device_id, updated_at)
  values ('b1400000-0000-4000-8000-000000000014', 'planted', 'x', now())$$),
  '42501', 'it may not insert a row for another user');
select is(pg_temp.as_premium($$update public.reading_progress set chapter = 1 where series_id = 'b-series'$$),
  'rows 0', 'nor update another user''s row');
select is(pg_temp.as_premium($$truncate public.reading_progress$$), '42501',
  'nor truncate the table (authenticated''s four privileges, no more)');
select is(pg_temp.as_premium($$delete from public.reading_progress_conflicts$$), '42501',
  'nor change the conflict log itself');

-- ---------------------------------------------------------------------------------------------
-- Direct writes (the Data API's path): refused as authenticated's are, and now logged.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.as_premium($$
  update public.reading_progress set chapter = 5, page = 1, percentage = 0.05, device_id = 'ereader',
         updated_at = now() - interval '7 days' where series_id = 'op'$$),
  'rows 0', 'a stale direct UPDATE of the custom role is refused');
select is(pg_temp.as_premium($$
  update public.reading_progress set chapter = 7, device_id = 'phone',
         updated_at = (select updated_at from public.reading_progress where series_id = 'op')
   where series_id = 'op'$$),
  'rows 0', 'so is a same-millisecond UPDATE from a smaller device id');
select is(pg_temp.logged(), array['stale ereader refused', 'tie phone refused'],
  'both refused writes are logged for the user, as authenticated''s are');
select is(pg_temp.as_premium($$
  update public.reading_progress set chapter = 14, device_id = 'tv',
         updated_at = (select updated_at from public.reading_progress where series_id = 'op')
   where series_id = 'op'$$),
  'rows 1', 'a same-millisecond UPDATE from a greater device id lands');
select is(pg_temp.logged(), array['stale ereader refused', 'tie phone refused', 'tie tablet replaced'],
  'and the write it replaced is logged as the tie''s loser');
select is((select row(chapter, device_id)::text from public.reading_progress where series_id = 'op'), '(14,tv)',
  'the stored version is the tie''s winner');

-- ---------------------------------------------------------------------------------------------
-- write_reading_progress (PostgREST's /rpc/ lets the custom role call it: authenticated may).
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.as_premium($$
  insert into pg_temp.answers select 'tie', public.write_reading_progress('op', 15, 1, 0.15, false, 'tw',
    (select updated_at from public.reading_progress where series_id = 'op'))$$),
  'rows 1', 'the custom role calls write_reading_progress');
select is((select answer ->> 'conflict' from answers where label = 'tie'), 'tie',
  'a same-millisecond write from a greater device id wins and is answered as a tie');
select is(pg_temp.logged(), array['stale ereader refused', 'tie phone refused', 'tie tablet replaced', 'tie tv replaced'],
  'the write it replaced is logged (the answer said tie, so must the log)');
select is(pg_temp.as_premium($$
  insert into pg_temp.answers select 'replay', public.write_reading_progress('op', 15, 1, 0.15, false, 'tw',
    (select updated_at from public.reading_progress where series_id = 'op'))$$),
  'rows 1', 'the same write sent again (a retry)');
select is(
  (select jsonb_build_object('won', answer -> 'won', 'conflict', answer -> 'conflict',
                             'with', answer #>> '{conflict_with,device_id}') from answers where label = 'replay'),
  '{"won": true, "conflict": "tie", "with": "tv"}'::jsonb,
  'its replay is answered as the first time: a tie against the same write (read back from the log)');
select is(pg_temp.as_premium($$
  insert into pg_temp.answers select 'stale', public.write_reading_progress('op', 3, 1, 0.03, false, 'old-tablet',
    now() - interval '3 days')$$),
  'rows 1', 'a stale write through write_reading_progress');
select is(
  (select jsonb_build_object('won', answer -> 'won', 'conflict', answer -> 'conflict',
                             'last logged', (pg_temp.logged())[cardinality(pg_temp.logged())])
     from answers where label = 'stale'),
  '{"won": false, "conflict": "stale", "last logged": "stale old-tablet refused"}'::jsonb,
  'is refused and logged, as before this migration too (the function logs it itself)');

-- ---------------------------------------------------------------------------------------------
-- Roles outside RLS are no user: refused, never logged (and never an error for want of a user).
-- ---------------------------------------------------------------------------------------------
select is(
  pg_temp.logged_by(session_user::text, '{"sub":"a1400000-0000-4000-8000-000000000014","role":"authenticated"}',
    $$update public.reading_progress set chapter = 1, device_id = 'admin', updated_at = now() - interval '30 days'
       where user_id = 'a1400000-0000-4000-8000-000000000014' and series_id = 'op'$$),
  'rows 0, 0 logged',
  'the session''s own role (the table''s owner, a user''s claims set) is refused and not logged');
select case when (select ready from bypass_ready)
  then is(
    pg_temp.logged_by('readsync_test_bypass_member', '{}',
      $$update public.reading_progress set chapter = 1, device_id = 'admin', updated_at = now() - interval '30 days'
         where user_id = 'a1400000-0000-4000-8000-000000000014' and series_id = 'op'$$),
    'rows 0, 0 logged',
    'a member of authenticated with BYPASSRLS and no user in its claims: refused, not logged, no error')
  else skip('a BYPASSRLS role could not be created here', 1) end;
select case when (select ready from bypass_ready)
  then is(
    pg_temp.logged_by('readsync_test_bypass_member',
      '{"sub":"a1400000-0000-4000-8000-000000000014","role":"readsync_test_bypass_member"}',
      $$update public.reading_progress set chapter = 1, device_id = 'a-admin',
               updated_at = (select updated_at from public.reading_progress where series_id = 'op')
         where user_id = 'a1400000-0000-4000-8000-000000000014' and series_id = 'op'$$),
    'rows 0, 0 logged',
    'nor with a user''s claims: its writes are an administrator''s, not the user''s')
  else skip('a BYPASSRLS role could not be created here', 1) end;
select is(
  readsync_tests.run_as('readsync_test_noinherit',
    '{"sub":"a1400000-0000-4000-8000-000000000014","role":"readsync_test_noinherit"}', '',
    $$select 1 from public.reading_progress$$),
  '42501', 'a NOINHERIT member of authenticated gets none of its grants (so writes nothing to log)');

select * from finish();
rollback;
