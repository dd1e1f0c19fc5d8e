-- A role given the privileges of reading_progress alone (SELECT, INSERT, UPDATE: a project's importer)
-- writes it, INSERTs and upserts included: the remembered deletion a new life is dated after is read as
-- the table's owner (migration …_deletions_read_as_owner_on_insert.sql). Before, the stamp trigger's
-- INSERT branch and the new-life check read public.reading_progress_deletions as the writer, and such
-- a role's every INSERT was refused 42501 naming that table. A new life still begins after the life
-- deleted before it, whoever writes, when the clock lies behind that life (it stepped back).

begin;
create extension if not exists pgtap with schema extensions;
select plan(8);

insert into auth.users (id, email) values ('a4400000-0000-4000-8000-000000000044', 'imported@readsync.test');
-- A life deleted and remembered, dated an hour ahead of the clock (as if the clock stepped back since).
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
values ('a4400000-0000-4000-8000-000000000044', 'gone', 4, 'tablet', now() - interval '1 hour'),
       ('a4400000-0000-4000-8000-000000000044', 'gone-too', 4, 'tablet', now() - interval '1 hour');
delete from public.reading_progress where user_id = 'a4400000-0000-4000-8000-000000000044';
update public.reading_progress_deletions
   set version = jsonb_set(version, '{created_at}', to_jsonb(now() + interval '1 hour'))
 where user_id = 'a4400000-0000-4000-8000-000000000044';

-- The importer: BYPASSRLS (creating it needs a superuser before PostgreSQL 16; npm test runs as one,
-- elsewhere its checks are skipped) and the table's privileges, nothing on the deletions.
create temp table bypass_ready (ready boolean) on commit drop;
do $$
begin
  create role readsync_044_importer nologin bypassrls;
  grant select, insert, update on public.reading_progress to readsync_044_importer;
  insert into bypass_ready values (true);
exception when insufficient_privilege then
  insert into bypass_ready values (false);
end
$$;

create function pg_temp.as_importer(p_sql text) returns text language sql as $fn$
  select readsync_tests.run_as('readsync_044_importer', '{}', '', p_sql)
$fn$;
-- How far after the remembered deletion's life a series' stored life begins.
create function pg_temp.after_deletion(p_series text) returns interval language sql as $fn$
  select rp.created_at - (d.version ->> 'created_at')::timestamptz
    from public.reading_progress rp
    join public.reading_progress_deletions d using (user_id, series_id)
   where rp.user_id = 'a4400000-0000-4000-8000-000000000044' and rp.series_id = p_series
$fn$;

select case when (select ready from bypass_ready)
  then ok(not has_table_privilege('readsync_044_importer', 'public.reading_progress_deletions', 'select')
          and not has_schema_privilege('readsync_044_importer', 'private', 'usage'),
    'premise: the importer has no privilege on reading_progress_deletions and no USAGE on private')
  else skip('a BYPASSRLS role could not be created here', 1) end;
select case when (select ready from bypass_ready)
  then is(pg_temp.as_importer($$
    insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
    values ('a4400000-0000-4000-8000-000000000044', 'fresh', 1, 2, 0.01, 'importer', now())$$),
    'rows 1', 'the importer inserts a row (was 42501: the stamp read the deletions as the writer)')
  else skip('a BYPASSRLS role could not be created here', 1) end;
select case when (select ready from bypass_ready)
  then is(pg_temp.as_importer($$
    insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
    values ('a4400000-0000-4000-8000-000000000044', 'fresh', 2, 3, 0.02, 'importer', now() + interval '1 second')
    on conflict (user_id, series_id) do update set chapter = excluded.chapter, page = excluded.page,
      percentage = excluded.percentage, device_id = excluded.device_id, updated_at = excluded.updated_at$$),
    'rows 1', 'and upserts onto it (its INSERT half fires the same triggers)')
  else skip('a BYPASSRLS role could not be created here', 1) end;
select case when (select ready from bypass_ready)
  then is(pg_temp.as_importer($$
    insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
    values ('a4400000-0000-4000-8000-000000000044', 'gone', 5, 0, 0.05, 'importer', now())$$),
    'rows 1', 'the importer inserts a series deleted before')
  else skip('a BYPASSRLS role could not be created here', 1) end;
select case when (select ready from bypass_ready)
  then is(pg_temp.after_deletion('gone'), interval '1 microsecond',
    'its new life begins 1 µs after the deleted one, which lies ahead of the clock')
  else skip('a BYPASSRLS role could not be created here', 1) end;

-- A user (authenticated, under RLS) as before.
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "a4400000-0000-4000-8000-000000000044", "role": "authenticated"}', true);
select lives_ok($$
  insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
  values ('a4400000-0000-4000-8000-000000000044', 'gone-too', 6, 0, 0.06, 'phone', now())$$,
  'a user inserts a series deleted before');
reset role;
select is(pg_temp.after_deletion('gone-too'), interval '1 microsecond',
  'and its new life begins 1 µs after the deleted one too');

select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated', 'service_role']) r
    where has_function_privilege(r, 'private.reading_progress_stamp_after_deletion()', 'execute')
       or has_function_privilege(r, 'private.reading_progress_new_life_after_deletion()', 'execute')),
  null, 'no API role may call the two trigger functions that read the deletions as their owner');

select * from finish();
rollback;
