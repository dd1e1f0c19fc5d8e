-- A Data API write of a position onto a reset series (a tombstone: cleared, position zero) without
-- `cleared` in its body is a position write (migration …_position_write_supersedes_reset.sql).
-- PostgREST's upsert sets only the body's columns on a conflict, so cleared stayed true under the new
-- position and the check refused the write (23514, HTTP 400), newer and stale alike; now cleared
-- becomes false and the write wins or loses by its key like any other. `cleared: true` named with a
-- position is still refused, and a zero position without `cleared` leaves the reset as it is. Writes
-- are sent as PostgREST sends them, as the signed-in user (readsync_tests.run_as: 'rows <n>' or the
-- SQLSTATE).

begin;
create extension if not exists pgtap with schema extensions;
select plan(17);

insert into auth.users (id, email) values ('a1600000-0000-4000-8000-000000000016', 'reset-a@readsync.test');

-- A reset series: cleared, position zero, an hour ago.
create function pg_temp.reset(p_series text) returns void language sql as $fn$
  insert into public.reading_progress (user_id, series_id, cleared, device_id, updated_at)
  values ('a1600000-0000-4000-8000-000000000016', p_series, true, 'tablet', now() - interval '1 hour')
  on conflict (user_id, series_id) do update
    set chapter = 0, page = 0, percentage = 0, cleared = true, device_id = 'tablet',
        updated_at = now() - interval '1 hour'
$fn$;
-- Runs p_sql as the user (role authenticated).
create function pg_temp.as_user(p_sql text) returns text language sql as $fn$
  select readsync_tests.run_as('authenticated',
    '{"sub":"a1600000-0000-4000-8000-000000000016","role":"authenticated"}', '', p_sql)
$fn$;
-- The SQL PostgREST runs for POST /reading_progress with Prefer: resolution=merge-duplicates (supabase-js
-- .upsert(body)): the body's keys are the columns inserted and, on a conflict, the only ones set.
create function pg_temp.api_upsert(p_body jsonb) returns text language sql as $fn$
  select format(
    'insert into public.reading_progress (%1$s) select %1$s from json_populate_record(null::public.reading_progress, %2$L::json) '
    'on conflict (user_id, series_id) do update set %3$s',
    string_agg(quote_ident(k), ', ' order by k), p_body || '{"user_id":"a1600000-0000-4000-8000-000000000016"}',
    string_agg(format('%1$I = excluded.%1$I', k), ', ' order by k))
  from jsonb_object_keys(p_body || '{"user_id":"a1600000-0000-4000-8000-000000000016"}') k
$fn$;
create function pg_temp.stored(p_series text) returns text language sql as $fn$
  select row(chapter, page, percentage, cleared, device_id)::text from public.reading_progress where series_id = p_series
$fn$;
create function pg_temp.key_of(p_series text) returns text language sql as $fn$
  select to_json(updated_at)::text from public.reading_progress where series_id = p_series
$fn$;
create function pg_temp.log_of(p_series text) returns text[] language sql as $fn$
  select coalesce(array_agg(kind || ' ' || losing_device_id || ' ' || row(losing_chapter, losing_cleared)::text
                            || case when rejected then ' refused' else ' replaced' end order by id), '{}')
    from public.reading_progress_conflicts where series_id = p_series
$fn$;

-- ---------------------------------------------------------------------------------------------
-- A position without `cleared`, onto a reset: a position write.
-- ---------------------------------------------------------------------------------------------
select pg_temp.reset('newer');
select is(pg_temp.as_user(pg_temp.api_upsert(jsonb_build_object(
    'series_id', 'newer', 'chapter', 3, 'page', 40, 'percentage', 0.03, 'device_id', 'phone',
    'updated_at', now() - interval '1 minute'))),
  'rows 1', 'a newer upsert of a position without cleared onto a reset lands (was 23514: HTTP 400)');
select is(pg_temp.stored('newer'), '(3,40,0.03,f,phone)', 'the series holds that position, no longer cleared');

select pg_temp.reset('stale');
select is(pg_temp.as_user(pg_temp.api_upsert(jsonb_build_object(
    'series_id', 'stale', 'chapter', 9, 'page', 1, 'percentage', 0.09, 'device_id', 'old-phone',
    'updated_at', now() - interval '3 days'))),
  'rows 0', 'a stale one is refused as any stale write (was 23514: its logged loser failed the log''s check)');
select is(pg_temp.stored('stale'), '(0,0,0,t,tablet)', 'the reset stays');
select is(pg_temp.log_of('stale'), array['stale old-phone (9,f) refused'],
  'and the refused position is logged as the position it is');

select pg_temp.reset('tie');
select is(pg_temp.as_user(pg_temp.api_upsert(jsonb_build_object(
    'series_id', 'tie', 'chapter', 2, 'page', 2, 'percentage', 0.02, 'device_id', 'zz-phone',
    'updated_at', pg_temp.key_of('tie')::jsonb))),
  'rows 1', 'a same-millisecond position from a greater device id lands');
select is(jsonb_build_object('stored', pg_temp.stored('tie'), 'log', pg_temp.log_of('tie')),
  jsonb_build_object('stored', '(2,2,0.02,f,zz-phone)', 'log', array['tie tablet (0,t) replaced']),
  'and the reset it replaced is logged as the tie''s loser');

select pg_temp.reset('edit');
select is(pg_temp.as_user($$update public.reading_progress set page = 2 where series_id = 'edit'$$), 'rows 1',
  'a keyless edit of the position of a reset (.update({ page })) lands (was 23514)');
select is(pg_temp.stored('edit'), '(0,2,0,f,tablet)', 'as a position');

select pg_temp.reset('patch');
select is(pg_temp.as_user($$update public.reading_progress set chapter = 4, page = 1, percentage = 0.04,
       device_id = 'phone', updated_at = now() - interval '1 minute' where series_id = 'patch'$$), 'rows 1',
  'a newer .update() of a position without cleared lands');
select is(pg_temp.stored('patch'), '(4,1,0.04,f,phone)', 'as a position');

-- ---------------------------------------------------------------------------------------------
-- What stays as it was.
-- ---------------------------------------------------------------------------------------------
select pg_temp.reset('named');
select is(pg_temp.as_user($$update public.reading_progress set cleared = true, chapter = 4,
       device_id = 'phone', updated_at = now() - interval '1 minute' where series_id = 'named'$$), '23514',
  'cleared: true named with a position is refused (23514), as before');
select is(pg_temp.as_user(pg_temp.api_upsert(jsonb_build_object(
    'series_id', 'named', 'chapter', 4, 'cleared', true, 'device_id', 'phone',
    'updated_at', now() - interval '1 minute'))),
  '23514', 'in an upsert too');
select is(pg_temp.stored('named'), '(0,0,0,t,tablet)', 'the reset stays');

select pg_temp.reset('zero');
select is(pg_temp.as_user(pg_temp.api_upsert(jsonb_build_object(
    'series_id', 'zero', 'chapter', 0, 'page', 0, 'percentage', 0, 'device_id', 'phone',
    'updated_at', now() - interval '1 minute'))),
  'rows 1', 'an upsert of a zero position without cleared onto a reset lands');
select is(pg_temp.stored('zero'), '(0,0,0,t,phone)',
  'and keeps it cleared (PostgREST''s merge keeps a column the body leaves out; the row is valid)');

select pg_temp.reset('function');
select is(pg_temp.as_user($$select public.write_reading_progress('function', 5, 5, 0.05, null, 'phone',
       now() - interval '1 minute')$$), 'rows 1',
  'write_reading_progress with cleared null onto a reset lands a position, as before');

select * from finish();
rollback;
