-- A Data API update that marks a series reset without a position (supabase-js
-- `.update({ cleared: true })`, PostgREST's PATCH: SET only the body's columns) takes the reset's zero
-- position (migration …_reset_marked_zeroes_position.sql): it was refused 23514 (HTTP 400), the row
-- keeping its position under cleared = true. It then wins or loses by its key like any write: a stale
-- one is refused and logged as the reset it is. `cleared: true` named with a non-zero position is still
-- refused (23514). Writes are sent as PostgREST sends them, as the signed-in user under RLS
-- (readsync_tests.run_as: 'rows <n>' or the SQLSTATE).

begin;
create extension if not exists pgtap with schema extensions;
select plan(20);

insert into auth.users (id, email) values ('a1800000-0000-4000-8000-000000000018', 'marked-a@readsync.test');

-- Messages that existed before this test (other runs on a shared database) are ignored.
create temp table msgs_before on commit drop as select id from realtime.messages;

-- A position: chapter 12 on the tablet, an hour ago.
create function pg_temp.reading(p_series text) returns void language sql as $fn$
  insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
  values ('a1800000-0000-4000-8000-000000000018', p_series, 12, 30, 0.12, 'tablet', now() - interval '1 hour')
$fn$;
-- Runs p_sql as the user (role authenticated).
create function pg_temp.as_user(p_sql text) returns text language sql as $fn$
  select readsync_tests.run_as('authenticated',
    '{"sub":"a1800000-0000-4000-8000-000000000018","role":"authenticated"}', '', p_sql)
$fn$;
-- The SQL PostgREST runs for PATCH /reading_progress?series_id=eq.<series> (supabase-js
-- .update(body).eq('series_id', series)): the body's keys are the only columns set.
create function pg_temp.api_update(p_series text, p_body jsonb) returns text language sql as $fn$
  select format(
    'update public.reading_progress set %s from json_populate_record(null::public.reading_progress, %L::json) pgrst_body '
    'where public.reading_progress.series_id = %L',
    string_agg(format('%1$I = pgrst_body.%1$I', k), ', ' order by k), p_body, p_series)
  from jsonb_object_keys(p_body) k
$fn$;
-- POST /reading_progress with Prefer: resolution=merge-duplicates (supabase-js .upsert(body)): the
-- body's keys are the columns inserted and, on a conflict, the only ones set.
create function pg_temp.api_upsert(p_body jsonb) returns text language sql as $fn$
  select format(
    'insert into public.reading_progress (%1$s) select %1$s from json_populate_record(null::public.reading_progress, %2$L::json) '
    'on conflict (user_id, series_id) do update set %3$s',
    string_agg(quote_ident(k), ', ' order by k), p_body || '{"user_id":"a1800000-0000-4000-8000-000000000018"}',
    string_agg(format('%1$I = excluded.%1$I', k), ', ' order by k))
  from jsonb_object_keys(p_body || '{"user_id":"a1800000-0000-4000-8000-000000000018"}') k
$fn$;
create function pg_temp.stored(p_series text) returns text language sql as $fn$
  select row(chapter, page, percentage, cleared, device_id)::text from public.reading_progress where series_id = p_series
$fn$;
create function pg_temp.key_of(p_series text) returns timestamptz language sql as $fn$
  select updated_at from public.reading_progress where series_id = p_series
$fn$;
create function pg_temp.log_of(p_series text) returns text[] language sql as $fn$
  select coalesce(array_agg(kind || ' ' || losing_device_id || ' ' || row(losing_chapter, losing_cleared)::text
                            || case when rejected then ' refused' else ' replaced' end order by id), '{}')
    from public.reading_progress_conflicts where series_id = p_series
$fn$;
-- The UPDATE broadcasts of a series (the set-up's INSERT left out): the record's position and the old
-- record's chapter.
create function pg_temp.broadcasts(p_series text) returns text[] language sql as $fn$
  select coalesce(array_agg(
           coalesce(row(m.payload -> 'record' -> 'chapter', m.payload -> 'record' -> 'page',
                        m.payload -> 'record' -> 'percentage', m.payload -> 'record' -> 'cleared')::text, '-')
           || ' after ' ||
           coalesce(row(m.payload -> 'old_record' -> 'chapter', m.payload -> 'old_record' -> 'cleared')::text, '-')
           order by m.inserted_at, m.id), '{}')
    from realtime.messages m
   where m.topic = 'progress:a1800000-0000-4000-8000-000000000018'
     and m.event = 'UPDATE' and m.payload -> 'record' ->> 'series_id' = p_series
     and not exists (select 1 from msgs_before b where b.id = m.id)
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Marked reset, the position left out: the reset's zero position.
-- ---------------------------------------------------------------------------------------------
select pg_temp.reading('patch');
select is(pg_temp.as_user(pg_temp.api_update('patch', '{"cleared": true}')), 'rows 1',
  '.update({ cleared: true }) on a row with a position lands (was 23514: HTTP 400)');
select is(pg_temp.stored('patch'), '(0,0,0,t,tablet)', 'as a reset: cleared, chapter, page and percentage 0');
select ok(pg_temp.key_of('patch') > now() - interval '1 minute',
  'dated now, as any edit without a key of its own (it beats the version it edits)');
select is(pg_temp.broadcasts('patch'), array['(0,0,0,true) after (12,false)'],
  'broadcast once, as the reset replacing the position');

select pg_temp.reading('newer');
select is(pg_temp.as_user(pg_temp.api_update('newer', jsonb_build_object(
    'cleared', true, 'device_id', 'phone', 'updated_at', now() - interval '1 minute'))), 'rows 1',
  'a newer .update({ cleared, device_id, updated_at }) lands');
select is(pg_temp.stored('newer'), '(0,0,0,t,phone)', 'as the phone''s reset');

select pg_temp.reading('stale');
select is(pg_temp.as_user(pg_temp.api_update('stale', jsonb_build_object(
    'cleared', true, 'device_id', 'old-phone', 'updated_at', now() - interval '3 days'))), 'rows 0',
  'a stale one is refused as any stale write (was 23514: its logged loser failed the log''s check)');
select is(pg_temp.stored('stale'), '(12,30,0.12,f,tablet)', 'the position stays');
select is(pg_temp.log_of('stale'), array['stale old-phone (0,t) refused'],
  'and the refused reset is logged as the reset it is');
select is(pg_temp.broadcasts('stale'), '{}', 'and nothing is broadcast');

select pg_temp.reading('tie');
select is(pg_temp.as_user(pg_temp.api_update('tie', jsonb_build_object(
    'cleared', true, 'device_id', 'zz-phone', 'updated_at', pg_temp.key_of('tie')))), 'rows 1',
  'a same-millisecond reset from a greater device id lands');
select is(jsonb_build_object('stored', pg_temp.stored('tie'), 'log', pg_temp.log_of('tie')),
  jsonb_build_object('stored', '(0,0,0,t,zz-phone)', 'log', array['tie tablet (12,f) replaced']),
  'and the position it replaced is logged as the tie''s loser');

select pg_temp.reading('upsert');
select is(pg_temp.as_user(pg_temp.api_upsert(jsonb_build_object(
    'series_id', 'upsert', 'cleared', true, 'device_id', 'phone', 'updated_at', now() - interval '1 minute'))),
  'rows 1', 'an upsert of a reset without a position onto a position lands (was 23514)');
select is(pg_temp.stored('upsert'), '(0,0,0,t,phone)', 'as a reset');

-- ---------------------------------------------------------------------------------------------
-- What stays as it was.
-- ---------------------------------------------------------------------------------------------
select pg_temp.reading('zeros');
select is(pg_temp.as_user(pg_temp.api_update('zeros', '{"cleared": true, "chapter": 0, "page": 0, "percentage": 0}')),
  'rows 1', 'a reset sent with the three zeros lands, as before');

select pg_temp.reading('named');
select is(pg_temp.as_user(pg_temp.api_update('named', '{"cleared": true, "chapter": 4}')), '23514',
  'cleared: true named with a position is refused (23514), as before');
select is(pg_temp.as_user(pg_temp.api_update('named', '{"cleared": true, "chapter": 12, "page": 30, "percentage": 0.12}')),
  '23514', 'even with the stored position named (a position and a reset at once; the API answers 422)');
select is(pg_temp.as_user(pg_temp.api_upsert(jsonb_build_object(
    'series_id', 'named', 'chapter', 4, 'page', 0, 'percentage', 0, 'cleared', true, 'device_id', 'phone',
    'updated_at', now() - interval '1 minute'))),
  '23514', 'in an upsert too');
select is(pg_temp.as_user(pg_temp.api_update('named', jsonb_build_object(
    'cleared', true, 'page', 0, 'device_id', 'old-phone', 'updated_at', now() - interval '3 days'))),
  '23514', 'and a stale one with part of a position named (chapter still 12)');
select is(pg_temp.stored('named'), '(12,30,0.12,f,tablet)', 'the position stays');

select * from finish();
rollback;
