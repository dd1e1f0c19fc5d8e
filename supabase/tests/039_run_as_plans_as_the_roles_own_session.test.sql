-- readsync_tests.run_as answers a role's statement as a session of that role would, also after another
-- role ran the same function in this session. PostgreSQL checks a schema's USAGE when it looks a name
-- up (planning) and an inlined SQL function's EXECUTE when it inlines it, not when it runs a cached
-- plan, and plpgsql keeps each function's plans for the session. Before run_as discarded the session's
-- plans, a role without USAGE on `auth` ran write_reading_progress's `auth.uid()` on the plan the
-- session's own role (postgres) had made, and passed: pgTAP 015's BYPASSRLS member of authenticated
-- still passed with authenticated's USAGE on `auth` revoked, where a session of its own is refused
-- 42501. So every file that asserts a role's denial or allowance through run_as (011, 012, 014, 015)
-- checks that role's own grants; 038 discards plans in its own attempt helper.

begin;
create extension if not exists pgtap with schema extensions;
select plan(4);

-- The case that hid a grant: write_reading_progress (auth.uid()) by a role that writes for users without
-- USAGE on `auth`, after the session's own role called it. (A plpgsql function created in the test's
-- own transaction did not show it: its plans were made again for the other role.) A BYPASSRLS role needs a superuser to create
-- before PostgreSQL 16 (npm test runs as one); elsewhere these checks are skipped.
insert into auth.users (id, email) values ('a3900000-0000-4000-8000-000000000039', 'planned@readsync.test');
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
values ('a3900000-0000-4000-8000-000000000039', 'planned', 1, 'tablet', now() - interval '1 hour');
create temp table bypass_ready (ready boolean) on commit drop;
do $$
begin
  create role readsync_039_importer nologin bypassrls;
  insert into bypass_ready values (true);
exception when insufficient_privilege then
  insert into bypass_ready values (false);
end
$$;
do $$
begin
  if (select ready from bypass_ready) then
    grant select, insert, update on public.reading_progress to readsync_039_importer;
    grant select on public.reading_progress_deletions to readsync_039_importer;
    grant execute on function public.write_reading_progress(text, integer, integer, double precision, boolean, text,
      timestamptz) to readsync_039_importer;
  end if;
end
$$;
select case when (select ready from bypass_ready)
  then is(has_schema_privilege('readsync_039_importer', 'auth', 'usage'), false,
    'premise: the importer role has no USAGE on auth')
  else skip('a BYPASSRLS role could not be created here', 1) end;
select set_config('request.jwt.claims', '{"sub": "a3900000-0000-4000-8000-000000000039"}', true);
select is(public.write_reading_progress('planned', 2, 0, 0, false, 'tablet', now() - interval '30 minutes') ->> 'won',
  'true', 'the session''s own role writes through write_reading_progress (planning its auth.uid())');
select case when (select ready from bypass_ready)
  then is(readsync_tests.run_as('readsync_039_importer', '{"sub": "a3900000-0000-4000-8000-000000000039"}', '',
      $$select public.write_reading_progress('planned', 3, 0, 0, false, 'tablet', now() - interval '20 minutes')$$),
    '42501', 'a role without USAGE on auth is refused by auth.uid(), as a session of its own is')
  else skip('a BYPASSRLS role could not be created here', 1) end;
do $$
begin
  if (select ready from bypass_ready) then
    grant usage on schema auth to readsync_039_importer;
  end if;
end
$$;
select case when (select ready from bypass_ready)
  then is(readsync_tests.run_as('readsync_039_importer', '{"sub": "a3900000-0000-4000-8000-000000000039"}', '',
      $$select public.write_reading_progress('planned', 4, 0, 0, false, 'tablet', now() - interval '10 minutes')$$),
    'rows 1', 'given USAGE on auth, it writes')
  else skip('a BYPASSRLS role could not be created here', 1) end;

select * from finish();
rollback;
