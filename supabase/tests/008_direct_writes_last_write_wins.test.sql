-- Last write wins on direct writes too (migration 012, reading_progress_stamp): RLS lets a user
-- INSERT/UPDATE their own rows through the Data API (supabase-js .update() / .upsert()), so the
-- database, not only write_reading_progress, refuses an UPDATE whose (updated_at, device_id) is not
-- greater than the stored key: the row stays, nothing is broadcast, and a user's refused write is
-- logged as the API logs it. An edit without a key of its own still always lands.

begin;
create extension if not exists pgtap with schema extensions;
select plan(56);

insert into auth.users (id, email) values
  ('a8a8a8a8-0000-4000-8000-000000000008', 'direct-a@readsync.test'),
  ('b8b8b8b8-0000-4000-8000-000000000008', 'direct-b@readsync.test');

-- Messages that existed before this test (other runs on a shared database) are ignored.
create temp table msgs_before on commit drop as select id from realtime.messages;
create temp view new_msgs as
  select m.* from realtime.messages m where not exists (select 1 from msgs_before b where b.id = m.id);
grant select on msgs_before, new_msgs to authenticated;

-- A write as supabase-js .upsert() sends it (INSERT ... ON CONFLICT DO UPDATE), for the signed-in user
-- (RLS applies: the function runs as its caller). Returns the stored updated_at, no row when refused.
create function pg_temp.upsert(p_series text, p_chapter int, p_page int, p_percentage float8, p_device text,
                               p_updated_at timestamptz) returns setof timestamptz
language sql as $$
  insert into public.reading_progress as p (user_id, series_id, chapter, page, percentage, device_id, updated_at)
  values ((select auth.uid()), p_series, p_chapter, p_page, p_percentage, p_device, p_updated_at)
  on conflict (user_id, series_id) do update
    set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
        device_id = excluded.device_id, updated_at = excluded.updated_at
  returning p.updated_at
$$;

-- The test clock (supabase/tests/000_test_helpers.test.sql), for the tests of the claim below
-- (migration 012 judges an INSERT dated ahead by the wall clock, clock_timestamp(), when its row is
-- stamped and again once the row is in). Such a test is decided by the order of its rows, not by how
-- fast a loaded machine gets from one to the next: readsync_tests.use_test_clock(at) runs both claim triggers
-- on copies that read readsync_tests.test_clock() instead, and sets that clock to `at`;
-- readsync_tests.use_real_clock() puts the real functions back. The test clock moves 1 us a reading and
-- otherwise only when a test moves it (readsync_tests.move_test_clock, from a row's computation).
-- (Whole seconds and microseconds apart: each is exact in the double precision they pass through.)
-- The signed-in user calls the two (they replace the functions as their owner), in this
-- transaction only.
grant usage on schema readsync_tests to authenticated;
grant execute on function readsync_tests.use_test_clock(timestamptz, text[], text[]), readsync_tests.use_real_clock() to authenticated;

set local role authenticated;
select set_config('request.jwt.claims',
  json_build_object('sub', 'a8a8a8a8-0000-4000-8000-000000000008', 'role', 'authenticated')::text, true);

-- The stored version: chapter 12 on the tablet, an hour ago.
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('a8a8a8a8-0000-4000-8000-000000000008', 'op', 12, 30, 0.12, 'tablet', now() - interval '1 hour'),
       ('a8a8a8a8-0000-4000-8000-000000000008', 'ahead', 1, 1, 0.01, 'tablet', now() + interval '4 seconds');

create temp view stored as
  select chapter, page, device_id, updated_at from public.reading_progress where series_id = 'op';
grant select on stored to authenticated;
create temp table before_msgs on commit drop as select count(*) as n from new_msgs;

-- An e-reader offline for a week writes chapter 5 dated a week ago, as a plain Data API update.
with u as (
  update public.reading_progress set chapter = 5, page = 1, percentage = 0.05, device_id = 'ereader',
         updated_at = now() - interval '7 days'
   where series_id = 'op' returning 1)
select is((select count(*)::int from u), 0, 'a stale direct UPDATE updates no row');

select is((select row(chapter, device_id)::text from stored), '(12,tablet)',
  'the stored version (chapter 12 on the tablet) is kept');

select is(
  (select jsonb_build_object('kind', kind, 'rejected', rejected, 'losing_device_id', losing_device_id,
                             'losing_chapter', losing_chapter, 'winning_chapter', winning_chapter)
     from public.reading_progress_conflicts where series_id = 'op'),
  jsonb_build_object('kind', 'stale', 'rejected', true, 'losing_device_id', 'ereader',
                     'losing_chapter', 5, 'winning_chapter', 12),
  'the refused write is logged as a stale conflict, as the API logs it'
);

-- The same through an upsert, as supabase-js .upsert() sends it (INSERT ... ON CONFLICT DO UPDATE).
select is((select count(*)::int from pg_temp.upsert('op', 6, 1, 0.06, 'ereader', now() - interval '6 days')),
  0, 'a stale direct upsert returns no row');

select is((select chapter from stored), 12, 'and leaves chapter 12');

-- Same millisecond: the smaller device id loses the tie; a replay of the stored key changes nothing.
with u as (
  update public.reading_progress set chapter = 7, device_id = 'phone', updated_at = (select updated_at from stored)
   where series_id = 'op' returning 1)
select is((select count(*)::int from u), 0, 'a same-millisecond UPDATE from a smaller device id is refused');

select is(
  (select kind from public.reading_progress_conflicts where series_id = 'op' and losing_device_id = 'phone'),
  'tie', 'and logged as a tie');

with u as (
  update public.reading_progress set chapter = 12, updated_at = (select updated_at from stored) + interval '0.4 ms'
   where series_id = 'op' returning 1)
select is((select count(*)::int from u), 0,
  'an UPDATE of the stored position whose key equals the stored one after truncation to ms (a replay) changes nothing');

-- A client retrying its upsert of the stored write sends the very same row: no new version (re-dating it
-- to now() would let it beat reading done elsewhere since), no broadcast.
with u as (
  insert into public.reading_progress as p (user_id, series_id, chapter, page, percentage, device_id, updated_at)
  select user_id, series_id, chapter, page, percentage, device_id, updated_at
    from public.reading_progress where series_id = 'op'
  on conflict (user_id, series_id) do update
    set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
        device_id = excluded.device_id, updated_at = excluded.updated_at
  returning 1)
select is((select count(*)::int from u), 0, 'an exact replay of the stored row (a retried upsert) changes nothing');

select is((select count(*) from public.reading_progress_conflicts where series_id = 'op')::int, 3,
  'a replay is not a conflict: nothing more is logged (two stale writes and one tie so far)');

select is((select count(*) from new_msgs) - (select n from before_msgs), 0::bigint,
  'no refused write was broadcast');

-- Newer writes win as before.
update public.reading_progress set chapter = 13, device_id = 'phone', updated_at = now() - interval '1 minute'
 where series_id = 'op';
select is((select row(chapter, device_id)::text from stored), '(13,phone)', 'a newer direct UPDATE lands');

-- Same millisecond from a GREATER device id: that write wins the tie, and the write it replaced lost a
-- tie, logged as the API logs it (rejected = false: it was the stored row), once even if repeated.
update public.reading_progress set chapter = 14, device_id = 'tablet', updated_at = (select updated_at from stored)
 where series_id = 'op';
select is(
  (select jsonb_build_object('stored', (select row(chapter, device_id)::text from stored),
     'logged', (select jsonb_agg(jsonb_build_object('kind', kind, 'rejected', rejected,
                  'losing', losing_device_id || ':' || losing_chapter, 'winning', winning_device_id || ':' || winning_chapter))
                  from public.reading_progress_conflicts
                 where series_id = 'op' and not rejected))),
  jsonb_build_object('stored', '(14,tablet)',
     'logged', jsonb_build_array(jsonb_build_object('kind', 'tie', 'rejected', false,
                 'losing', 'phone:13', 'winning', 'tablet:14'))),
  'a same-millisecond UPDATE from a greater device id lands, and the replaced write is logged as the tie loser'
);

-- An edit without a key of its own always lands, even on a row stamped up to 5 s ahead.
update public.reading_progress set page = 2 where series_id = 'ahead';
select cmp_ok(
  (select updated_at from public.reading_progress where series_id = 'ahead'), '>',
  date_trunc('milliseconds', now() + interval '4 seconds'),
  'an edit without its own updated_at lands after the version it edits (which lay 4 s ahead)'
);

-- An edit that sets device_id but not updated_at is no keyless edit: it keeps the stored date, so it is
-- that millisecond's write of its device, a tie decided by device id. As an upsert whose payload leaves
-- updated_at to its default (supabase-js .upsert() without it: PostgREST's DO UPDATE sets the payload's
-- columns only), over a version 'm-tablet' stored an hour ago: a smaller device id is refused and logged
-- as a tie; the same device's edit lands at now(); a greater id lands under the hour-old date, and the
-- version it replaced is logged as the tie's loser (README, Schema decisions: Direct writes).
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
select (select auth.uid()), 'no-date-' || d, 1, 'm-tablet', date_trunc('milliseconds', now()) - interval '1 hour'
  from unnest(array['a-phone', 'm-tablet', 'z-reader']) d;
create temp table no_date_upserts on commit drop as select 0 as n;
grant all on no_date_upserts to authenticated;
with u as (
  insert into public.reading_progress as p (user_id, series_id, chapter, device_id)
  select (select auth.uid()), 'no-date-' || d, 7, d from unnest(array['a-phone', 'm-tablet', 'z-reader']) d
  on conflict (user_id, series_id) do update
    set chapter = excluded.chapter, device_id = excluded.device_id
  returning 1)
update no_date_upserts set n = (select count(*) from u);
select is(
  (select jsonb_build_object(
     'returned', (select n from no_date_upserts),
     'stored', (select jsonb_object_agg(series_id, chapter || ' ' || device_id || ' at '
                  || case when updated_at = date_trunc('milliseconds', now()) - interval '1 hour' then 'the old date'
                          when updated_at = date_trunc('milliseconds', now()) then 'now()' else updated_at::text end)
                  from public.reading_progress where series_id like 'no-date-%'),
     'logged', (select jsonb_agg(kind || ' ' || losing_device_id || (case when rejected then ' refused' else ' replaced' end)
                                 order by series_id)
                  from public.reading_progress_conflicts where series_id like 'no-date-%'))),
  jsonb_build_object(
    'returned', 2,
    'stored', jsonb_build_object('no-date-a-phone', '1 m-tablet at the old date',
                                 'no-date-m-tablet', '7 m-tablet at now()',
                                 'no-date-z-reader', '7 z-reader at the old date'),
    'logged', jsonb_build_array('tie a-phone refused', 'tie m-tablet replaced')),
  'an upsert that sets device_id but not updated_at is that device''s write at the stored date: a tie by device id, not a keyless edit'
);
delete from public.reading_progress where series_id like 'no-date-%';

-- A phone whose clock runs an hour ahead upserts (supabase-js .upsert(): INSERT ... ON CONFLICT DO
-- UPDATE) over the version stored 4 s ahead: by its own date it is newer, so it wins, 1 ms after that
-- version, as a plain UPDATE or the API would store it (not at now(), where it would lose).
create temp table ahead_before on commit drop as
  select updated_at from public.reading_progress where series_id = 'ahead';
grant select on ahead_before to authenticated;
select is((select count(*)::int from pg_temp.upsert('ahead', 7, 70, 0.07, 'phone', now() + interval '1 hour')),
  1, 'an upsert dated an hour ahead lands over a version stored ahead');
select is(
  (select (updated_at, device_id, chapter)::text from public.reading_progress where series_id = 'ahead'),
  ((select updated_at from ahead_before) + interval '1 millisecond', 'phone', 7)::text,
  'stored 1 ms after the version it replaced, not at the claimed hour');

-- The DO UPDATE learns of the claimed date from the claim its INSERT half leaves for this statement
-- only (readsync.dated_ahead): a later statement that sends the key the claim was stamped with is
-- judged like any write.
select is((select u from pg_temp.upsert('ahead-new', 1, 10, 0.01, 'phone', now() + interval '1 hour') u),
  date_trunc('milliseconds', now()),
  'the first version of a series, dated an hour ahead, is stored at now()');
update public.reading_progress set chapter = 2, device_id = 'tablet', updated_at = now() + interval '1 second'
 where series_id = 'ahead-new';
update public.reading_progress set chapter = 9, device_id = 'phone', updated_at = date_trunc('milliseconds', now())
 where series_id = 'ahead-new';
select is(
  (select (chapter, device_id)::text from public.reading_progress where series_id = 'ahead-new'),
  '(2,tablet)',
  'a later statement with the key an ahead upsert was stamped with is refused as stale (the claim was that statement''s)');

-- Met in the very millisecond it is stamped with: still after that version (no tie with it), and from
-- the same device with the same position not a replay of it (a dated-ahead write is always new).
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('a8a8a8a8-0000-4000-8000-000000000008', 'ahead-same-ms', 3, 30, 0.03, 'aa', date_trunc('milliseconds', now()));
select is((select u from pg_temp.upsert('ahead-same-ms', 4, 40, 0.04, 'bb', now() + interval '1 hour') u),
  date_trunc('milliseconds', now()) + interval '1 millisecond',
  'an upsert dated ahead that meets a version of its own millisecond lands 1 ms after it');
select is((select u from pg_temp.upsert('ahead-same-ms', 4, 40, 0.04, 'bb', now() + interval '1 hour') u),
  date_trunc('milliseconds', now()) + interval '2 milliseconds',
  'sent again, it is a new write (1 ms later again), not a replay');
select is(
  (select count(*)::int from public.reading_progress_conflicts where series_id = 'ahead-same-ms'),
  0, 'and no tie was logged for either');

-- The claim cannot be forged to pin a row: a session that sets the setting itself gets the claim's own
-- value (now()), not the far-future date it named.
update public.reading_progress set updated_at = '9000-01-01 00:00:00+00', device_id = 'forger'
 where series_id = 'ahead-same-ms'
   and set_config('readsync.dated_ahead',
         jsonb_build_object('user_id', user_id, 'series_id', series_id,
                            'updated_at', '9000-01-01 00:00:00+00'::timestamptz, 'device_id', 'forger',
                            'synced_at', now(), 'sent', '9000-01-01 00:00:00+00'::timestamptz)::text,
         true) is not null;
select cmp_ok((select updated_at from public.reading_progress where series_id = 'ahead-same-ms'), '<',
  now() + interval '1 day', 'a forged claim does not place the row in the far future');

-- A plain INSERT dated ahead leaves no claim behind for a later UPDATE of the same statement.
do $$
begin
  insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
  values ((select auth.uid()), 'linger', 1, 'aaa', now() + interval '1 hour');
  update public.reading_progress set chapter = 2, device_id = 'zzz', updated_at = now() + interval '4 seconds'
   where series_id = 'linger';
  update public.reading_progress set chapter = 3, device_id = 'aaa', updated_at = date_trunc('milliseconds', now())
   where series_id = 'linger';
end
$$;
select is((select chapter from public.reading_progress where series_id = 'linger'), 2,
  'a stale UPDATE with the key a plain INSERT was stamped with earlier in the statement is refused');

-- An INSERT judged ahead before it waited is judged again once it is in (migration 012's claim):
-- clearly no longer ahead (by more than 100 ms), refused with 40001 for a retry (the two-connection
-- tests in tests/functions/conflict_resolver_db.test.ts make it wait for a rolled-back first write).
-- It is in once the statement's next row begins, and that row's stamp trigger judges it; here the
-- next row's computation moves the clock 2 s on, which the trigger cannot tell from a wait in the
-- unique index (the row was in by then either way). The second row is dated 6.5 s ahead of the clock:
-- past the limit when it is first judged, and 4.5 s ahead once the next row is computed (under the
-- claim's 4.9 s). The tests from here to 'datestyle-upsert' run on the test clock (see the top).
select readsync_tests.use_test_clock(now());
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'judged-again-plain', 1, 'phone', now()),
           ((select auth.uid()), 'judged-again', 1, 'phone', readsync_tests.test_clock() + interval '6.5 seconds'),
           ((select auth.uid()), 'judged-again-slow', (select 2 from readsync_tests.move_test_clock('2 seconds')), 'phone', now())$$,
  '40001', 'reading_progress: this insert''s date is no longer ahead of the clock; retry it',
  'a first write judged ahead and no longer ahead once inserted is refused for a retry');
select is(
  (select count(*)::int from public.reading_progress where series_id like 'judged-again%'), 0,
  'and nothing of that INSERT is stored');
select readsync_tests.use_test_clock(now());
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
values ((select auth.uid()), 'still-ahead', 1, 'phone', readsync_tests.test_clock() + interval '1 hour'),
       ((select auth.uid()), 'still-ahead-slow', (select 2 from readsync_tests.move_test_clock('2 seconds')), 'phone', now());
select is((select updated_at from public.reading_progress where series_id = 'still-ahead'),
  date_trunc('milliseconds', now()), 'one still ahead once inserted is stored at now()');
delete from public.reading_progress where series_id like 'still-ahead%';
-- Judged when the next row begins, not when the statement ends: a row 6.5 s ahead followed at once by
-- another is in (and still ahead) by then, whatever the rest of the statement takes. (Judged at the
-- statement's end, as before, a long multi-row INSERT or COPY was refused for it though nothing
-- waited.) The first two rows are judged at the clock's start, and the third row's computation moves
-- it 2 s on, so the claim, judged at the statement's end, would be no longer ahead (6.5 - 2 < 4.9).
select readsync_tests.use_test_clock(now());
select lives_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'next-row', 1, 'phone', readsync_tests.test_clock() + interval '6.5 seconds'),
           ((select auth.uid()), 'next-row-fast', 1, 'phone', now()),
           ((select auth.uid()), 'next-row-slow', (select 2 from readsync_tests.move_test_clock('2 seconds')), 'phone', now())$$,
  'a row judged ahead is judged again when the next row begins, not after the rest of the statement');
select is((select updated_at from public.reading_progress where series_id = 'next-row'),
  date_trunc('milliseconds', now()), 'and stored at now(), as a write still ahead once inserted');
delete from public.reading_progress where series_id like 'next-row%';
-- Every row judged ahead is judged again, not only the statement's last one: the first is no longer
-- ahead when the next row begins, though the last (an hour ahead) still is.
select readsync_tests.use_test_clock(now());
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'every-row', 1, 'phone', readsync_tests.test_clock() + interval '6.5 seconds'),
           ((select auth.uid()), 'every-row-slow', (select 2 from readsync_tests.move_test_clock('2 seconds')), 'phone', now()),
           ((select auth.uid()), 'every-row-last', 3, 'phone', readsync_tests.test_clock() + interval '1 hour')$$,
  '40001', 'reading_progress: this insert''s date is no longer ahead of the clock; retry it',
  'each row judged ahead in a statement is judged again, not only the last one');
-- The statement's last row is judged at the statement's end (reading_progress_end_claims): here its
-- RETURNING, computed once the row is in, moves the clock 2 s on.
select readsync_tests.use_test_clock(now());
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'last-row', 1, 'phone', readsync_tests.test_clock() + interval '6.5 seconds')
    returning (select 1 from readsync_tests.move_test_clock('2 seconds'))$$,
  '40001', 'reading_progress: this insert''s date is no longer ahead of the clock; retry it',
  'the last row judged ahead in a statement is judged again at the statement''s end');
-- Right at the claim's limit: a row judged ahead is refused once it is in when it is then dated no
-- more than 4.9 s after the clock ('<=': exactly 4.9 s ahead is no longer ahead enough), and kept at
-- now() when dated 1 us more than that; by the next row's stamp trigger and by the statement's end
-- (reading_progress_end_claims) alike. The claim's date is the row's, truncated to the millisecond:
-- S, a whole millisecond 6 s after now() (past the limit when the row is stamped). The next row's
-- computation, or the last row's RETURNING, sets the clock 1 us before the re-check reads it, so that
-- reading is S - 4.9 s, or S - 4.9 s - 1 us.
create temp table claim_edge on commit drop as
  select date_trunc('milliseconds', now()) + interval '6 seconds' as s;
grant select on claim_edge to authenticated;
select readsync_tests.set_test_clock(now());
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'claim-edge-next', 1, 'phone', (select s from claim_edge)),
           ((select auth.uid()), 'claim-edge-next-2', (select 2 from readsync_tests.set_test_clock(
              (select s from claim_edge) - interval '4.9 seconds' - interval '1 microsecond')), 'phone', now())$$,
  '40001', 'reading_progress: this insert''s date is no longer ahead of the clock; retry it',
  'a row found by the next row''s stamp trigger dated exactly 4.9 s after its reading of the clock is refused (the limit is inclusive)');
select readsync_tests.set_test_clock(now());
select lives_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'claim-edge-next-1us', 1, 'phone', (select s from claim_edge)),
           ((select auth.uid()), 'claim-edge-next-1us-2', (select 2 from readsync_tests.set_test_clock(
              (select s from claim_edge) - interval '4.9 seconds' - interval '2 microseconds')), 'phone', now())$$,
  'and one dated 1 us past that limit is kept');
select readsync_tests.set_test_clock(now());
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'claim-edge-last', 1, 'phone', (select s from claim_edge))
    returning (select 1 from readsync_tests.set_test_clock(
      (select s from claim_edge) - interval '4.9 seconds' - interval '1 microsecond'))$$,
  '40001', 'reading_progress: this insert''s date is no longer ahead of the clock; retry it',
  'the statement''s last row, dated exactly 4.9 s after the clock at the statement''s end, is refused (the limit is inclusive)');
select readsync_tests.set_test_clock(now());
select lives_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'claim-edge-last-1us', 1, 'phone', (select s from claim_edge))
    returning (select 1 from readsync_tests.set_test_clock(
      (select s from claim_edge) - interval '4.9 seconds' - interval '2 microseconds'))$$,
  'and one dated 1 us past that limit is kept');
select is(
  (select array_agg(series_id || ' at ' || case updated_at when date_trunc('milliseconds', now()) then 'now()'
                                                          else updated_at::text end order by series_id)
     from public.reading_progress where series_id like 'claim-edge%'),
  array['claim-edge-last-1us at now()', 'claim-edge-next-1us at now()', 'claim-edge-next-1us-2 at now()'],
  'the rows kept: each judged ahead at now(), nothing of the refused INSERTs');
-- The DO UPDATE of an upsert whose INSERT half was judged ahead judges it again by its own limit,
-- 5 s ('<=': exactly 5 s after its reading of the clock, no longer ahead): no longer ahead, it is
-- stored under its own date S; 1 us further, still ahead, 1 ms after the version it replaces (stored
-- 1 s after now()). Its SET list sets the clock 1 us before the trigger reads it.
select readsync_tests.set_test_clock(now());
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
values ((select auth.uid()), 'claim-edge-upsert', 1, 'tablet', date_trunc('milliseconds', now()) + interval '1 second'),
       ((select auth.uid()), 'claim-edge-upsert-1us', 1, 'tablet', date_trunc('milliseconds', now()) + interval '1 second');
insert into public.reading_progress as p (user_id, series_id, chapter, device_id, updated_at)
values ((select auth.uid()), 'claim-edge-upsert', 2, 'phone', (select s from claim_edge))
on conflict (user_id, series_id) do update
  set chapter = (select excluded.chapter from readsync_tests.set_test_clock(
        (select s from claim_edge) - interval '5 seconds' - interval '1 microsecond')),
      device_id = excluded.device_id, updated_at = excluded.updated_at;
select readsync_tests.set_test_clock(now());
insert into public.reading_progress as p (user_id, series_id, chapter, device_id, updated_at)
values ((select auth.uid()), 'claim-edge-upsert-1us', 2, 'phone', (select s from claim_edge))
on conflict (user_id, series_id) do update
  set chapter = (select excluded.chapter from readsync_tests.set_test_clock(
        (select s from claim_edge) - interval '5 seconds' - interval '2 microseconds')),
      device_id = excluded.device_id, updated_at = excluded.updated_at;
create temp view claim_edge_upserts as
  select series_id, chapter || ' ' || device_id || ' at '
           || case updated_at when claim_edge.s then 'S'
                when date_trunc('milliseconds', now()) + interval '1001 milliseconds' then 'the version + 1 ms'
                else updated_at::text end as stored
    from public.reading_progress, claim_edge where series_id like 'claim-edge-upsert%';
grant select on claim_edge_upserts to authenticated;
select is((select stored from claim_edge_upserts where series_id = 'claim-edge-upsert'), '2 phone at S',
  'an upsert''s DO UPDATE dated exactly 5 s after its reading of the clock is no longer ahead: stored under its own date (the limit is inclusive)');
select is((select stored from claim_edge_upserts where series_id = 'claim-edge-upsert-1us'), '2 phone at the version + 1 ms',
  'and one dated 1 us past that limit is still ahead: stored 1 ms after the version it replaces');
delete from public.reading_progress where series_id like 'claim-edge%';
-- A duplicate skipped by ON CONFLICT DO NOTHING (supabase-js upsert with ignoreDuplicates), dated
-- past the limit (6.5 s ahead of the clock), names itself, not the row inserted before it with the
-- same key (now()): judged again once the next row has moved the clock 2 s on, it would be no longer
-- ahead.
select readsync_tests.use_test_clock(now());
select lives_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    select (select auth.uid()), 'dup', 1, 'phone', now()
    union all select (select auth.uid()), 'dup', 2, 'phone', readsync_tests.test_clock() + interval '6.5 seconds'
    union all select (select auth.uid()), 'dup-slow', (select 3 from readsync_tests.move_test_clock('2 seconds')), 'phone', now()
    on conflict (user_id, series_id) do nothing$$,
  'a write never judged ahead is not refused for a skipped duplicate''s date');
delete from public.reading_progress where series_id like 'dup%';
-- The date travels between the triggers in a form every session reads back as written: with
-- DateStyle SQL it would print as '... CST', which PostgreSQL reads as US Central (14 h later),
-- and the write would pass for still ahead. (The test clock is kept as a number: immune to both.)
set local datestyle = 'SQL, MDY';
set local timezone = 'Asia/Shanghai';
select readsync_tests.use_test_clock(now());
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values ((select auth.uid()), 'datestyle', 1, 'phone', readsync_tests.test_clock() + interval '6.5 seconds'),
           ((select auth.uid()), 'datestyle-slow', (select 2 from readsync_tests.move_test_clock('2 seconds')), 'phone', now())$$,
  '40001', null, 'under DateStyle SQL and TimeZone Asia/Shanghai too, the INSERT is judged again');
-- The same for an upsert's DO UPDATE (dated 6.5 s ahead of the clock; its SET list moves the clock on
-- until the date is 4.5 s ahead, between the INSERT half's judgement and the DO UPDATE's): no longer
-- ahead, it is decided and stored by its own date, not placed 1 ms after the stored version (4.9 s
-- ahead) as a write still ahead would be.
select readsync_tests.use_test_clock(now());
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
values ((select auth.uid()), 'datestyle-upsert', 1, 'tablet', readsync_tests.test_clock() + interval '4.9 seconds');
create temp table sent_at on commit drop as select now() + interval '6.5 seconds' as at;
grant select on sent_at to authenticated;
insert into public.reading_progress as p (user_id, series_id, chapter, device_id, updated_at)
values ((select auth.uid()), 'datestyle-upsert', 2, 'phone', (select at from sent_at))
on conflict (user_id, series_id) do update
  set chapter = (select excluded.chapter from readsync_tests.set_test_clock((select at from sent_at) - interval '4.5 seconds')),
      device_id = excluded.device_id,
      updated_at = excluded.updated_at;
reset datestyle;
reset timezone;
select is(
  (select (chapter, device_id, updated_at = date_trunc('milliseconds', (select at from sent_at)))::text
     from public.reading_progress where series_id = 'datestyle-upsert'),
  '(2,phone,t)', 'an upsert no longer ahead by its DO UPDATE is stored under its own date in any DateStyle');
select readsync_tests.use_real_clock();
delete from public.reading_progress where series_id like 'datestyle%';

-- A claim ends with its INSERT statement (migration 012, reading_progress_end_claims): one left by an
-- ahead write skipped by ON CONFLICT DO NOTHING is not taken by a later UPDATE of the same DO block
-- (one statement_timestamp()) keyed now() by the same device, which would land 1 ms after the stored
-- version it is older than.
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
values ((select auth.uid()), 'skipped-claim', 5, 'tablet', clock_timestamp() + interval '3 seconds');
do $$
begin
  insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
  values ((select auth.uid()), 'skipped-claim', 1, 'aaa', now() + interval '1 hour')
  on conflict (user_id, series_id) do nothing;
  update public.reading_progress set chapter = 3, device_id = 'aaa', updated_at = date_trunc('milliseconds', now())
   where series_id = 'skipped-claim';
end
$$;
select is((select chapter from public.reading_progress where series_id = 'skipped-claim'), 5,
  'a stale UPDATE after an ahead write skipped by DO NOTHING in the same DO block is refused');
delete from public.reading_progress where series_id = 'skipped-claim';

-- The key is compared to the millisecond: the same device's UPDATE sent with microseconds under the
-- stored millisecond is that key with another position (its later position), so it lands.
insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
values ((select auth.uid()), 'micro', 1, 'phone', '2026-12-05 01:00:00.123+00');
update public.reading_progress set chapter = 2, device_id = 'phone', updated_at = '2026-12-05 01:00:00.123900+00'
 where series_id = 'micro';
select is((select chapter from public.reading_progress where series_id = 'micro'), 2,
  'a same-device UPDATE sent with microseconds within the stored millisecond and another position lands');
delete from public.reading_progress where series_id = 'micro';

-- Not a user (postgres, service_role maintenance): refused as well, and nothing is logged for it.
reset role;
update public.reading_progress set chapter = 1, updated_at = now() - interval '30 days'
 where user_id = 'a8a8a8a8-0000-4000-8000-000000000008' and series_id = 'op';
select is(
  (select jsonb_build_object('chapter', (select chapter from stored),
                             'logged', (select count(*) from public.reading_progress_conflicts where series_id = 'op')::int)),
  jsonb_build_object('chapter', 14, 'logged', 4),
  'a stale UPDATE as postgres is refused too, and not logged (no user)'
);

update public.reading_progress set chapter = 15, device_id = 'tv', updated_at = (select updated_at from stored)
 where user_id = 'a8a8a8a8-0000-4000-8000-000000000008' and series_id = 'op';
select is(
  (select jsonb_build_object('stored', (select row(chapter, device_id)::text from stored),
     'logged', (select count(*) from public.reading_progress_conflicts where series_id = 'op')::int)),
  jsonb_build_object('stored', '(15,tv)', 'logged', 4),
  'a same-millisecond tie won as postgres lands and logs nothing (no user whose log it would be)'
);

-- A row's name does not change: renaming a series by UPDATE would delete the old series on the
-- server while every device, told only of the new one, kept it (no deletion is remembered either).
set local role authenticated;
select throws_ok(
  $$update public.reading_progress set series_id = 'op-renamed' where series_id = 'op'$$,
  '23514', 'reading_progress: user_id and series_id identify a row and cannot change',
  'a user may not rename a series by UPDATE (delete and insert instead)');
reset role;
select throws_ok(
  $$update public.reading_progress set user_id = 'b8b8b8b8-0000-4000-8000-000000000008'
     where user_id = 'a8a8a8a8-0000-4000-8000-000000000008' and series_id = 'op'$$,
  '23514', 'reading_progress: user_id and series_id identify a row and cannot change',
  'nor may postgres move a row to another user (the old user''s devices would keep it)');
select is(
  (select array_agg(series_id order by series_id) from public.reading_progress
    where user_id = 'a8a8a8a8-0000-4000-8000-000000000008'),
  array['ahead', 'ahead-new', 'ahead-same-ms', 'linger', 'op']::text[],
  'every series is still there under its name');

-- updated_at outside 1970..9999 (UTC) is refused like the API refuses it: no client could read such
-- a row back (JavaScript has no Date for '-infinity' or a BC year), so one insert would break every
-- read of the user's progress. Far-future dates are still recorded as now() (not refused).
set local role authenticated;
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, device_id, updated_at)
    values ('a8a8a8a8-0000-4000-8000-000000000008', 'minus-infinity', 'web', '-infinity')$$,
  '23514', null, 'updated_at -infinity is refused (check constraint)');
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, device_id, updated_at)
    values ('a8a8a8a8-0000-4000-8000-000000000008', 'before-1970', 'web', '1969-12-31 23:59:59.999+00')$$,
  '23514', null, 'updated_at before 1970 is refused');
insert into public.reading_progress (user_id, series_id, device_id, updated_at)
values ('a8a8a8a8-0000-4000-8000-000000000008', 'infinity', 'web', 'infinity');
select ok(
  (select updated_at between now() - interval '1 second' and now() + interval '1 second'
     from public.reading_progress where series_id = 'infinity'),
  'updated_at infinity is a clock ahead: recorded as now()');
reset role;

-- A refused write is logged before reading_progress's own checks could run, so the log checks its
-- losing side the same way: a stale write that no row could hold is refused, not logged.
set local role authenticated;
select throws_ok(
  $$update public.reading_progress set device_id = '<img src=x>' || repeat('x', 1000),
           updated_at = now() - interval '30 days' where series_id = 'op'$$,
  '23514', null, 'a stale direct UPDATE with an invalid device id is refused, not logged');
select throws_ok(
  $$update public.reading_progress set percentage = 'NaN', device_id = 'ereader',
           updated_at = now() - interval '30 days' where series_id = 'op'$$,
  '23514', null, 'a stale direct UPDATE with percentage NaN is refused');
select throws_ok(
  $$update public.reading_progress set chapter = -7, device_id = 'ereader',
           updated_at = now() - interval '30 days' where series_id = 'op'$$,
  '23514', null, 'a stale direct UPDATE with a negative chapter is refused');
select throws_ok(
  $$select public.write_reading_progress('op', 3, 1, 'Infinity', false, 'ereader', now() - interval '30 days')$$,
  '23514', null, 'a stale write_reading_progress call with percentage Infinity is refused');
select is(
  (select count(*)::int from public.reading_progress_conflicts
    where losing_updated_at < now() - interval '29 days'),
  0, 'none of them reached the conflict log');
reset role;

select * from finish();
rollback;
