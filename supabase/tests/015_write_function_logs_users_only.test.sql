-- write_reading_progress logs a refused write for the callers the triggers log for, and for no one else
-- (migration …_write_function_logs_users_only.sql). A user's write (role authenticated, or a custom
-- role granted it, under RLS) is logged on both paths: the function's and a direct UPDATE's. A role
-- that bypasses RLS (the session's own role: postgres, the table's owner; a member of authenticated
-- given BYPASSRLS) with a user's claims is answered as before but logged on neither path: before the
-- migration the function logged its stale, tie and 'self' losers for that user, while a direct UPDATE
-- and a tie it won by replacing the stored write were not logged. Every statement of a role runs
-- through readsync_tests.run_as ('rows <n>' or the SQLSTATE); pgTAP runs as the session's user.

begin;
create extension if not exists pgtap with schema extensions;
select plan(22);

insert into auth.users (id, email) values ('a1500000-0000-4000-8000-000000000015', 'logged-a@readsync.test');
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('a1500000-0000-4000-8000-000000000015', 'admin-s', 12, 30, 0.12, 'tablet', now() - interval '1 hour'),
       ('a1500000-0000-4000-8000-000000000015', 'user-s', 12, 30, 0.12, 'tablet', now() - interval '1 hour');

create role readsync_test_premium15 nologin;
grant authenticated to readsync_test_premium15;
grant readsync_test_premium15 to current_user;
-- A member given BYPASSRLS: creating it needs a superuser before PostgreSQL 16 (npm test runs as
-- one); elsewhere its checks are skipped.
create temp table bypass_ready (ready boolean) on commit drop;
do $$
begin
  create role readsync_test_bypass15 nologin bypassrls;
  grant authenticated to readsync_test_bypass15;
  execute pg_catalog.format('grant readsync_test_bypass15 to %I', current_user);
  insert into bypass_ready values (true);
exception when insufficient_privilege then
  insert into bypass_ready values (false);
end
$$;

-- What each call of write_reading_progress answered (run_as returns a row count only).
create temp table answers (label text primary key, answer jsonb) on commit drop;
grant insert, select on answers to authenticated;

-- A's log rows, oldest first: '<kind> <losing device> refused|replaced'.
create function pg_temp.logged() returns text[] language sql as $fn$
  select coalesce(array_agg(kind || ' ' || losing_device_id || case when rejected then ' refused' else ' replaced' end
                            order by id), '{}')
    from public.reading_progress_conflicts where user_id = 'a1500000-0000-4000-8000-000000000015'
$fn$;
-- Runs p_sql as p_role with A's claims (role claim p_role): 'rows <n>, <m> logged'.
create function pg_temp.logged_by(p_role text, p_sql text) returns text language plpgsql as $fn$
declare
  v_before integer := cardinality(pg_temp.logged());
  v_result text := readsync_tests.run_as(p_role,
    jsonb_build_object('sub', 'a1500000-0000-4000-8000-000000000015', 'role', p_role), '', p_sql);
begin
  return v_result || ', ' || (cardinality(pg_temp.logged()) - v_before) || ' logged';
end
$fn$;
-- The answer saved under p_label, without the stored row: {won, conflict, with: the other device}.
create function pg_temp.answered(p_label text) returns jsonb language sql as $fn$
  select jsonb_build_object('won', answer -> 'won', 'conflict', answer -> 'conflict',
                            'with', answer #> '{conflict_with,device_id}')
    from answers where label = p_label
$fn$;
-- A call of write_reading_progress on p_series whose answer is saved under p_label.
create function pg_temp.write_sql(p_label text, p_series text, p_chapter int, p_device text, p_updated_at text)
returns text language sql as $fn$
  select format($q$insert into pg_temp.answers select %L, public.write_reading_progress(%L, %s, 1, 0.01, false, %L, %s)$q$,
                p_label, p_series, p_chapter, p_device, p_updated_at)
$fn$;
-- The stored key of a series, as SQL.
create function pg_temp.key_of(p_series text) returns text language sql as $fn$
  select format('(select updated_at from public.reading_progress where series_id = %L)', p_series)
$fn$;

-- ---------------------------------------------------------------------------------------------
-- The session's own role (postgres: the table's owner, a superuser here) with A's claims.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.logged_by(session_user::text,
    pg_temp.write_sql('admin stale', 'admin-s', 3, 'old-tablet', $$now() - interval '3 days'$$)),
  'rows 1, 0 logged',
  'write_reading_progress as a role that bypasses RLS, with a user''s claims: a stale write is not logged');
select is(pg_temp.answered('admin stale'), '{"won": false, "conflict": "stale", "with": "tablet"}',
  'and is answered as before: lost, stale, against the stored write');
select is(pg_temp.logged_by(session_user::text,
    pg_temp.write_sql('admin tie lost', 'admin-s', 4, 'phone', pg_temp.key_of('admin-s'))),
  'rows 1, 0 logged', 'a same-millisecond write from a smaller device id is not logged');
select is(pg_temp.answered('admin tie lost'), '{"won": false, "conflict": "tie", "with": "tablet"}',
  'and is answered as a tie it lost');
select is(pg_temp.logged_by(session_user::text,
    pg_temp.write_sql('admin self', 'admin-s', 5, 'tablet', $$now() - interval '2 hours'$$)),
  'rows 1, 0 logged', 'a write older than its own device''s stored one is not logged as ''self''');
select is(pg_temp.answered('admin self'), '{"won": false, "conflict": null, "with": null}',
  'and is answered as such: lost, no conflict between devices');
select is(pg_temp.logged_by(session_user::text,
    pg_temp.write_sql('admin tie won', 'admin-s', 14, 'tv', pg_temp.key_of('admin-s'))),
  'rows 1, 0 logged', 'a same-millisecond write from a greater device id replaces the stored one, not logged');
select is(pg_temp.answered('admin tie won'), '{"won": true, "conflict": "tie", "with": "tablet"}',
  'and is answered as a tie it won');
select is(pg_temp.logged_by(session_user::text,
    pg_temp.write_sql('admin replay', 'admin-s', 14, 'tv', pg_temp.key_of('admin-s'))),
  'rows 1, 0 logged', 'its replay changes nothing');
select is(pg_temp.answered('admin replay'), '{"won": true, "conflict": null, "with": null}',
  'and is answered won without the tie: the replay reads the log, which kept nothing of it');
select is(pg_temp.logged_by(session_user::text,
    $$update public.reading_progress set chapter = 2, device_id = 'old-tablet', updated_at = now() - interval '3 days'
       where series_id = 'admin-s'$$),
  'rows 0, 0 logged', 'the same stale write as a direct UPDATE: refused and not logged either (the triggers'' rule)');
select is((select row(chapter, device_id)::text from public.reading_progress where series_id = 'admin-s'), '(14,tv)',
  'the stored version is the tie''s winner');
select case when (select ready from bypass_ready)
  then is(pg_temp.logged_by('readsync_test_bypass15',
      pg_temp.write_sql('bypass stale', 'admin-s', 3, 'old-phone', $$now() - interval '3 days'$$)),
    'rows 1, 0 logged',
    'a member of authenticated given BYPASSRLS, with a user''s claims: a stale write is not logged')
  else skip('a BYPASSRLS role could not be created here', 1) end;
select case when (select ready from bypass_ready)
  then is(pg_temp.answered('bypass stale'), '{"won": false, "conflict": "stale", "with": "tv"}',
    'and is answered stale')
  else skip('a BYPASSRLS role could not be created here', 1) end;

-- ---------------------------------------------------------------------------------------------
-- A user's writes (role authenticated, a custom role granted it): logged on both paths.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.logged_by('authenticated',
    pg_temp.write_sql('user stale', 'user-s', 3, 'old-tablet', $$now() - interval '3 days'$$)),
  'rows 1, 1 logged', 'write_reading_progress as authenticated: a stale write is logged');
select is(pg_temp.answered('user stale'), '{"won": false, "conflict": "stale", "with": "tablet"}',
  'and answered stale');
select is(pg_temp.logged_by('authenticated',
    $$update public.reading_progress set chapter = 2, device_id = 'ereader', updated_at = now() - interval '4 days'
       where series_id = 'user-s'$$),
  'rows 0, 1 logged', 'a stale direct UPDATE as authenticated: refused and logged');
select is(pg_temp.logged_by('readsync_test_premium15',
    pg_temp.write_sql('premium tie lost', 'user-s', 4, 'phone', pg_temp.key_of('user-s'))),
  'rows 1, 1 logged', 'as a custom role granted authenticated: a tie it lost is logged');
select is(pg_temp.logged_by('authenticated',
    pg_temp.write_sql('user self', 'user-s', 5, 'tablet', $$now() - interval '2 hours'$$)),
  'rows 1, 1 logged', 'a write older than its own device''s is logged as ''self''');
select is(pg_temp.logged_by('authenticated',
    pg_temp.write_sql('user tie won', 'user-s', 14, 'tv', pg_temp.key_of('user-s'))),
  'rows 1, 1 logged', 'a tie it won by replacing the stored write is logged (by the trigger)');
select is(pg_temp.logged_by('authenticated',
    pg_temp.write_sql('user replay', 'user-s', 14, 'tv', pg_temp.key_of('user-s'))),
  'rows 1, 0 logged', 'its replay changes nothing');
select is(
  jsonb_build_object('replay', pg_temp.answered('user replay'), 'log', pg_temp.logged()),
  jsonb_build_object('replay', '{"won": true, "conflict": "tie", "with": "tablet"}'::jsonb,
    'log', array['stale old-tablet refused', 'stale ereader refused', 'tie phone refused', 'self tablet refused',
                 'tie tablet replaced']),
  'and is answered as the first time; the log holds the user''s five losers and none of the administrator''s');

select * from finish();
rollback;
