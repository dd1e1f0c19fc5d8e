-- Migration 013 (20261120090200_progress_writes.sql): the progress API's SQL.
--   write_reading_progress          last-write-wins upsert on (updated_at, device_id), {won, conflict, progress}
--   write_reading_progress_batch    1..100 writes in one transaction, results in input order
--   reading_progress_conflicts      one row per losing write ('stale' | 'tie'), RLS: read own, insert none
--   get_/list_reading_progress, reading_progress_changes   the reads and the changes cursor
--
-- Everything runs in one transaction, so now() is constant and every row written here carries this
-- transaction's change_xid; cursor behaviour across committed transactions is covered over HTTP
-- (tests/functions/progress_api.test.ts).

begin;
create extension if not exists pgtap with schema extensions;
select plan(113);

insert into auth.users (id, email) values
  ('a6a6a6a6-0000-4000-8000-000000000006', 'writes-a@readsync.test'),
  ('b6b6b6b6-0000-4000-8000-000000000006', 'writes-b@readsync.test');

-- Broadcast messages and conflict rows that existed before this test are ignored.
create temp table msgs_before on commit drop as select id from realtime.messages;
create temp view new_msgs as
  select m.* from realtime.messages m where not exists (select 1 from msgs_before b where b.id = m.id);
create temp table conflicts_before on commit drop as select id from public.reading_progress_conflicts;
create temp view new_conflicts as
  select c.* from public.reading_progress_conflicts c
   where not exists (select 1 from conflicts_before b where b.id = c.id);

-- Answers of the functions, kept by label so the superuser can inspect them after a role switch.
create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;

-- ---------------------------------------------------------------------------------------------
-- Definitions and privileges
-- ---------------------------------------------------------------------------------------------
-- Supabase's guides keep a project's own helpers in a schema named `private` too, so the checks of
-- that schema look at readsync's functions (their names carry reading_progress) and leave the
-- project's alone (npm test runs this file once more beside such a helper, open to anon).
select results_eq(
  $$select p.proname::text collate "default" from pg_catalog.pg_proc p
     where p.pronamespace = 'private'::regnamespace and p.proname ~ 'reading_progress' order by 1$$,
  $$values ('log_reading_progress_conflict'), ('reading_progress_adopt_restored_rows'),
           ('reading_progress_changes_cursor'), ('reading_progress_log_replaced_tie'), ('reading_progress_new_life_after_deletion'),
           ('reading_progress_normalize_updated_at'), ('reading_progress_remember_deletion'),
           ('reading_progress_reset_inserted_with_position'), ('reading_progress_reset_marked_with_position'), ('reading_progress_reset_marked_zeroes_position'),
           ('reading_progress_reset_sent_with_position'), ('reading_progress_reset_superseded'),
           ('reading_progress_serialize_user_writes'), ('reading_progress_stamp_after_deletion'),
           ('reading_progress_truncate_as_delete')$$,
  'readsync keeps exactly its two helpers, the changes read''s cursor checks (pgTAP 034), the restore adoption and the remember-deletion, replaced-tie, new-life, five reset (pgTAP 016, 018, 038), user-writes lock (pgTAP 020), stamp''s deletion read (pgTAP 044) and truncate-as-delete trigger functions in private');

select results_eq(
  $$select p.oid::regprocedure::text collate "default", p.prosecdef, p.proconfig::text collate "default"
      from pg_proc p
     where p.oid in (
       'public.write_reading_progress(text, integer, integer, double precision, boolean, text, timestamptz)'::regprocedure,
       'public.write_reading_progress_batch(jsonb)'::regprocedure,
       'public.get_reading_progress(text)'::regprocedure,
       'public.list_reading_progress(integer, timestamptz, text, boolean)'::regprocedure,
       'public.reading_progress_changes(text, integer)'::regprocedure,
       'private.log_reading_progress_conflict(text, integer, integer, double precision, boolean, text, timestamptz, boolean)'::regprocedure,
       'private.reading_progress_normalize_updated_at(timestamptz)'::regprocedure)
     order by 1$$,
  $$values
    ('get_reading_progress(text)', false, '{"search_path=\"\""}'),
    ('list_reading_progress(integer,timestamp with time zone,text,boolean)', false, '{"search_path=\"\""}'),
    ('private.log_reading_progress_conflict(text,integer,integer,double precision,boolean,text,timestamp with time zone,boolean)', true, '{"search_path=pg_catalog, pg_temp"}'),
    ('private.reading_progress_normalize_updated_at(timestamp with time zone)', false, '{"search_path=\"\""}'),
    ('reading_progress_changes(text,integer)', false, '{"search_path=\"\"",extra_float_digits=1}'),
    ('write_reading_progress(text,integer,integer,double precision,boolean,text,timestamp with time zone)', false, '{"search_path=\"\"",extra_float_digits=1}'),
    ('write_reading_progress_batch(jsonb)', false, '{"search_path=\"\""}')$$,
  'only the conflict logger is security definer (RLS stays in force for every API path); all pin search_path (the definer with pg_temp last, pgTAP 009); the two that print rows as JSON print percentages exactly (pgTAP 017)'
);

select is(
  (select count(*)::int from (values
     ('public.write_reading_progress(text, integer, integer, double precision, boolean, text, timestamptz)'),
     ('public.write_reading_progress_batch(jsonb)'),
     ('public.get_reading_progress(text)'),
     ('public.list_reading_progress(integer, timestamptz, text, boolean)'),
     ('public.reading_progress_changes(text, integer)'),
     ('private.log_reading_progress_conflict(text, integer, integer, double precision, boolean, text, timestamptz, boolean)'),
     ('private.reading_progress_normalize_updated_at(timestamptz)')) f(sig)
    where has_function_privilege('anon', f.sig, 'execute')),
  0,
  'anon may execute none of the seven functions'
);

select is(
  (select count(*)::int from (values
     ('public.write_reading_progress(text, integer, integer, double precision, boolean, text, timestamptz)'),
     ('public.write_reading_progress_batch(jsonb)'),
     ('public.get_reading_progress(text)'),
     ('public.list_reading_progress(integer, timestamptz, text, boolean)'),
     ('public.reading_progress_changes(text, integer)')) f(sig)
    where has_function_privilege('authenticated', f.sig, 'execute')),
  5,
  'authenticated may execute the five API functions'
);

select ok(
  not has_schema_privilege('anon', 'private', 'usage')
    or exists (select 1 from pg_catalog.pg_proc p
                where p.pronamespace = 'private'::regnamespace and p.proname !~ 'reading_progress'),
  'anon has no usage on schema private (unless the project keeps helpers of its own there)');

select is(
  (select count(*)::int from pg_catalog.pg_proc p
    where p.pronamespace = 'private'::regnamespace and p.proname ~ 'reading_progress'
      and (has_function_privilege('anon', p.oid, 'execute')
           or has_function_privilege('authenticated', p.oid, 'execute') and p.prorettype = 'trigger'::regtype)),
  0,
  'neither anon nor authenticated may execute a readsync function in private that it does not need');

select table_privs_are('public', 'reading_progress_conflicts', 'anon', array[]::text[],
  'anon has no privilege on the conflict log');
select table_privs_are('public', 'reading_progress_conflicts', 'authenticated', array['SELECT'],
  'authenticated may only SELECT the conflict log (RLS: own rows)');
select table_privs_are('public', 'reading_progress_conflicts', 'service_role', array['SELECT', 'DELETE'],
  'service_role may read and delete (retention) but not insert or update the conflict log');
select is(
  (select array_agg(r.rolname::text order by r.rolname) from pg_catalog.pg_roles r
    where r.rolname in ('anon', 'authenticated', 'service_role')
      and (has_sequence_privilege(r.rolname, 'public.reading_progress_conflicts_id_seq', 'usage')
           or has_sequence_privilege(r.rolname, 'public.reading_progress_conflicts_id_seq', 'select')
           or has_sequence_privilege(r.rolname, 'public.reading_progress_conflicts_id_seq', 'update'))),
  null,
  'no API role may use, read or set the conflict log''s id sequence (setval to its maximum would stop all logging)');
select ok((select relrowsecurity from pg_class where oid = 'public.reading_progress_conflicts'::regclass),
  'RLS is enabled on the conflict log');
select policies_are('public', 'reading_progress_conflicts', array['reading_progress_conflicts_select_own'],
  'the conflict log has exactly the select-own policy');

-- anon cannot call the functions at all.
set local role anon;
select throws_ok(
  $$select public.write_reading_progress('anon-s', 1, 1, 0.1, false, 'dev', now())$$,
  '42501', null, 'anon calling write_reading_progress: permission denied');
select throws_ok($$select public.reading_progress_changes('', 10)$$, '42501', null,
  'anon calling reading_progress_changes: permission denied');
select throws_ok($$select count(*) from public.reading_progress_conflicts$$, '42501', null,
  'anon reading the conflict log: permission denied');
reset role;

-- authenticated without a user (no sub claim) is refused by the write.
set local role authenticated;
select set_config('request.jwt.claims', '{"role":"authenticated"}', true);
select throws_ok(
  $$select public.write_reading_progress('nouser-s', 1, 1, 0.1, false, 'dev', now())$$,
  '42501', 'write_reading_progress: no authenticated user', 'a token without sub cannot write');
reset role;

-- ---------------------------------------------------------------------------------------------
-- Last write wins, as user A
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub":"a6a6a6a6-0000-4000-8000-000000000006","role":"authenticated"}', true);

insert into res select 'first',
  public.write_reading_progress('lww', 5, 50, 0.05, false, 'dev-m', '2026-01-01 00:00:10.123456+00');
insert into res select 'newer',
  public.write_reading_progress('lww', 6, 60, 0.06, false, 'dev-m', '2026-01-01 00:00:11+00');
insert into res select 'stale',
  public.write_reading_progress('lww', 99, 990, 0.99, false, 'dev-z', '2026-01-01 00:00:10.500+00');
insert into res select 'tie-lose',
  public.write_reading_progress('lww', 98, 980, 0.98, false, 'dev-a', '2026-01-01 00:00:11+00');
reset role;

select is((select r - 'progress' from res where label = 'first'), '{"won": true, "conflict": null, "conflict_with": null}'::jsonb,
  'first write: won, no conflict');
select is((select r #>> '{progress,updated_at}' from res where label = 'first'), '2026-01-01T00:00:10.123+00:00',
  'updated_at is stored truncated to milliseconds');
select is((select r - 'progress' - 'conflict_with' from res where label = 'newer'), '{"won": true, "conflict": null}'::jsonb,
  'a newer write wins');
select is((select (r #>> '{progress,chapter}')::int from res where label = 'newer'), 6,
  'the newer write''s position is stored');
select is((select r - 'progress' from res where label = 'stale'),
  '{"won": false, "conflict": "stale", "conflict_with": {"updated_at": "2026-01-01T00:00:11+00:00", "device_id": "dev-m"}}'::jsonb,
  'an older write loses as stale, even from a "larger" device id');
select is((select r -> 'progress' from res where label = 'stale'), (select r -> 'progress' from res where label = 'newer'),
  'a stale write answers with the current row, unchanged, so the device converges at once');
select is((select r - 'progress' - 'conflict_with' from res where label = 'tie-lose'), '{"won": false, "conflict": "tie"}'::jsonb,
  'same millisecond, smaller device id: loses as tie');

set local role authenticated;
insert into res select 'tie-win',
  public.write_reading_progress('lww', 7, 70, 0.07, false, 'dev-n', '2026-01-01 00:00:11.000900+00');
reset role;
select is((select r - 'progress' from res where label = 'tie-win'),
  '{"won": true, "conflict": "tie", "conflict_with": {"updated_at": "2026-01-01T00:00:11+00:00", "device_id": "dev-m"}}'::jsonb,
  'same millisecond (sub-ms digits ignored), larger device id: wins the tie, and says which write it replaced');
select is((select r #>> '{progress,device_id}' from res where label = 'tie-win'), 'dev-n',
  'the tie winner is stored');

-- Replays: the same key again is a no-op with the same answer, and broadcasts nothing.
create temp table msgs_mid on commit drop as select count(*) as n from new_msgs;
set local role authenticated;
insert into res select 'tie-win-replay',
  public.write_reading_progress('lww', 7, 70, 0.07, false, 'dev-n', '2026-01-01 00:00:11+00');
insert into res select 'stale-replay',
  public.write_reading_progress('lww', 99, 990, 0.99, false, 'dev-z', '2026-01-01 00:00:10.500+00');
reset role;
select is((select r from res where label = 'tie-win-replay'), (select r from res where label = 'tie-win'),
  'replaying the winning write returns exactly the same answer (same row, same synced_at)');
select is((select r - 'progress' - 'conflict_with' from res where label = 'stale-replay'), '{"won": false, "conflict": "stale"}'::jsonb,
  'replaying a losing write loses the same way');
select is((select count(*) from new_msgs), (select n from msgs_mid),
  'replays broadcast nothing (no UPDATE happened)');
select is((select count(*)::int from new_msgs where topic = 'progress:a6a6a6a6-0000-4000-8000-000000000006'), 3,
  'exactly three broadcasts for lww: insert, newer, tie winner');

-- The conflict log: one row per conflict, loser and winner (a replayed loser is not logged twice).
select results_eq(
  $$select kind, rejected, losing_device_id collate "default", losing_updated_at, losing_chapter, losing_cleared,
           winning_device_id collate "default", winning_updated_at, winning_chapter
      from new_conflicts where series_id = 'lww' order by id$$,
  $$values
    ('stale', true, 'dev-z', '2026-01-01 00:00:10.5+00'::timestamptz, 99, false, 'dev-m', '2026-01-01 00:00:11+00'::timestamptz, 6),
    ('tie', true, 'dev-a', '2026-01-01 00:00:11+00'::timestamptz, 98, false, 'dev-m', '2026-01-01 00:00:11+00'::timestamptz, 6),
    ('tie', false, 'dev-m', '2026-01-01 00:00:11+00'::timestamptz, 6, false, 'dev-n', '2026-01-01 00:00:11+00'::timestamptz, 7),
    ('stale', true, 'dev-z', '2026-01-01 00:00:10.5+00'::timestamptz, 99, false, 'dev-n', '2026-01-01 00:00:11+00'::timestamptz, 7)$$,
  'the log: the stale and the tie loser (rejected), the tie loser the winner replaced (not rejected), and the stale replay once more only because it now lost to a different winner'
);

-- A write dated beyond the 5 s tolerance (a device clock ahead) is recorded as now(), and, being
-- newer by its own date than any stored version, wins: it lands 1 ms after a version stored at now()
-- instead of tying with it. Two such writes of one transaction (one device) never share a key, so
-- the later is not mistaken for a replay of the earlier and dropped.
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('a6a6a6a6-0000-4000-8000-000000000006', 'future', 3, 30, 0.3, 'dev-m', now());
set local role authenticated;
insert into res select 'future-ahead',
  public.write_reading_progress('future', 9, 90, 0.9, false, 'dev-a', now() + interval '1 day');
insert into res select 'future-first',
  public.write_reading_progress('future-twice', 1, 10, 0.1, false, 'dev-a', now() + interval '1 hour');
insert into res select 'future-second',
  public.write_reading_progress('future-twice', 2, 20, 0.2, false, 'dev-a', now() + interval '1 hour 1 second');
insert into res select 'future-near',
  public.write_reading_progress('future-near', 1, 1, 0.01, false, 'dev-a', now() + interval '3 seconds');
reset role;
select is((select r - 'progress' - 'conflict_with' from res where label = 'future-ahead'), '{"won": true, "conflict": null}'::jsonb,
  'a write dated a day ahead wins over a row stored at now() (by its own date it is newer), no conflict');
select is(
  (select (updated_at, device_id, chapter)::text from public.reading_progress where series_id = 'future'),
  (date_trunc('milliseconds', now()) + interval '1 millisecond', 'dev-a', 9)::text,
  'it is stored 1 ms after the version it replaced, not at the claimed date');
select is(
  (select array_agg(r - 'progress' - 'conflict_with' order by label) from res where label in ('future-first', 'future-second')),
  array['{"won": true, "conflict": null}', '{"won": true, "conflict": null}']::jsonb[],
  'two writes of one device dated an hour ahead in one transaction both win');
select is(
  (select (updated_at, chapter)::text from public.reading_progress where series_id = 'future-twice'),
  (date_trunc('milliseconds', now()) + interval '1 millisecond', 2)::text,
  'the later one is stored (1 ms after the earlier, which got now()): it was not taken for a replay');
select is((select count(*)::int from new_conflicts where series_id like 'future%'), 0,
  'writes dated ahead log no conflict');
select is((select (r #>> '{progress,updated_at}')::timestamptz from res where label = 'future-near'),
  date_trunc('milliseconds', now() + interval '3 seconds'),
  'a timestamp within the 5 s tolerance is kept');

-- Tombstones.
set local role authenticated;
insert into res select 'p1', public.write_reading_progress('tomb', 4, 40, 0.4, false, 'dev-m', '2026-02-01 00:00:00+00');
insert into res select 'reset', public.write_reading_progress('tomb', 0, 0, 0, true, 'dev-m', '2026-02-01 00:00:05+00');
insert into res select 'resurrect', public.write_reading_progress('tomb', 8, 80, 0.8, false, 'dev-z', '2026-02-01 00:00:03+00');
insert into res select 'old-reset', public.write_reading_progress('tomb2', 2, 20, 0.2, false, 'dev-m', '2026-02-01 00:00:09+00');
insert into res select 'old-reset2', public.write_reading_progress('tomb2', 0, 0, 0, true, 'dev-z', '2026-02-01 00:00:08+00');
reset role;
select is((select r - 'progress' - 'conflict_with' from res where label = 'reset'), '{"won": true, "conflict": null}'::jsonb,
  'a reset newer than the progress wins');
select is((select r -> 'progress' ->> 'cleared' from res where label = 'reset'), 'true', 'the row is a tombstone');
select is((select r - 'progress' - 'conflict_with' from res where label = 'resurrect'), '{"won": false, "conflict": "stale"}'::jsonb,
  'a stale offline write after the reset loses');
select is(
  (select (cleared, chapter, page, percentage) from public.reading_progress
    where user_id = 'a6a6a6a6-0000-4000-8000-000000000006' and series_id = 'tomb'),
  (true, 0, 0, 0::double precision),
  'the stale write did not resurrect the cleared progress');
select is((select r - 'progress' - 'conflict_with' from res where label = 'old-reset2'), '{"won": false, "conflict": "stale"}'::jsonb,
  'a reset older than the progress loses like any stale write');
select is((select new_conflicts.losing_cleared from new_conflicts where series_id = 'tomb2'), true,
  'the losing reset is logged as a cleared write');

-- ---------------------------------------------------------------------------------------------
-- The conflict log: nobody inserts directly, the logger logs only real losers, users see their own
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select throws_ok(
  $$insert into public.reading_progress_conflicts (user_id, series_id, kind, rejected, losing_updated_at,
      losing_device_id, losing_chapter, losing_page, losing_percentage, losing_cleared,
      winning_updated_at, winning_device_id, winning_chapter, winning_page, winning_percentage, winning_cleared)
    values ('a6a6a6a6-0000-4000-8000-000000000006', 'lww', 'tie', true, now(), 'x', 0, 0, 0, false,
      now(), 'y', 0, 0, 0, false)$$,
  '42501', null, 'a user cannot insert into the conflict log directly');
select throws_ok($$update public.reading_progress_conflicts set kind = 'tie'$$, '42501', null,
  'a user cannot update the conflict log');
select is(
  private.log_reading_progress_conflict('lww', 1, 1, 0.1, false, 'dev-zz', '2027-01-01 00:00:00+00', true),
  null, 'the logger refuses to log a write that would win');
select is(
  private.log_reading_progress_conflict('no-such-series', 1, 1, 0.1, false, 'dev-a', '2020-01-01 00:00:00+00', true),
  null, 'the logger refuses to log a write against no row');
select is(
  private.log_reading_progress_conflict('lww', 1, 1, 0.1, false, 'dev-a', '2026-01-01 00:00:10+00', false),
  null, 'the logger refuses a "replaced" loser the stored row does not confirm (different millisecond)');
select is((select count(*)::int from public.reading_progress_conflicts), 6,
  'A sees their six conflict rows (lww 4, resurrect, old reset)');
reset role;
select is((select count(*)::int from new_conflicts), 6, 'the refused logger calls added no row');

set local role service_role;
select throws_ok(
  $$insert into public.reading_progress_conflicts (user_id, series_id, kind, rejected, losing_updated_at,
      losing_device_id, losing_chapter, losing_page, losing_percentage, losing_cleared,
      winning_updated_at, winning_device_id, winning_chapter, winning_page, winning_percentage, winning_cleared)
    values ('a6a6a6a6-0000-4000-8000-000000000006', 'lww', 'tie', true, now(), 'x', 0, 0, 0, false,
      now(), 'y', 0, 0, 0, false)$$,
  '42501', null, 'service_role cannot insert into the conflict log either');
reset role;

-- ---------------------------------------------------------------------------------------------
-- User B: cannot see or overwrite A's progress or conflicts by any function
-- ---------------------------------------------------------------------------------------------
create temp table a_before on commit drop as
  select to_jsonb(p) as row from public.reading_progress p
   where user_id = 'a6a6a6a6-0000-4000-8000-000000000006' and series_id = 'lww';

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub":"b6b6b6b6-0000-4000-8000-000000000006","role":"authenticated"}', true);
select is((select count(*)::int from public.reading_progress_conflicts), 0, 'B sees none of A''s conflict rows');
select is_empty($$select * from public.get_reading_progress('lww')$$, 'B cannot get A''s series');
select is_empty($$select * from public.list_reading_progress(1000, null, null, true)$$, 'B''s library is empty');
select is((select public.reading_progress_changes('', 100) -> 'changes'), '[]'::jsonb, 'B''s changes are empty');
insert into res select 'b-write',
  public.write_reading_progress('lww', 1, 1, 0.01, false, 'dev-b', '2026-01-01 00:00:05+00');
insert into res select 'b-stale',
  public.write_reading_progress('lww', 1, 1, 0.01, false, 'dev-b2', '2026-01-01 00:00:04+00');
select is((select count(*)::int from public.reading_progress_conflicts), 1,
  'B sees exactly their own conflict row');
reset role;

select is((select r -> 'progress' ->> 'user_id' from res where label = 'b-write'), 'b6b6b6b6-0000-4000-8000-000000000006',
  'B''s write to the same series id creates B''s own row (the user is auth.uid(), never a parameter)');
select is((select r - 'progress' - 'conflict_with' from res where label = 'b-write'), '{"won": true, "conflict": null}'::jsonb,
  'B''s older write is not compared against A''s row');
select is(
  (select to_jsonb(p) from public.reading_progress p
    where user_id = 'a6a6a6a6-0000-4000-8000-000000000006' and series_id = 'lww'),
  (select row from a_before),
  'A''s row is unchanged by B');
select is(
  (select user_id::text from new_conflicts where series_id = 'lww' and losing_device_id = 'dev-b2'),
  'b6b6b6b6-0000-4000-8000-000000000006',
  'B''s losing write is logged under B');

-- ---------------------------------------------------------------------------------------------
-- Batch
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub":"a6a6a6a6-0000-4000-8000-000000000006","role":"authenticated"}', true);
insert into res select 'batch', public.write_reading_progress_batch($$[
  {"series_id": "zz-batch", "chapter": 1, "page": 1, "percentage": 0.1, "device_id": "dev-m", "updated_at": "2026-03-01T00:00:02Z"},
  {"series_id": "aa-batch", "chapter": 2, "page": 2, "percentage": 0.2, "device_id": "dev-m", "updated_at": "2026-03-01T00:00:02Z"},
  {"series_id": "zz-batch", "chapter": 3, "page": 3, "percentage": 0.3, "device_id": "dev-n", "updated_at": "2026-03-01T00:00:01Z"},
  {"series_id": "aa-batch", "chapter": 4, "page": 4, "percentage": 0.4, "device_id": "dev-m", "updated_at": "2026-03-01T00:00:03Z"},
  {"series_id": "aa-batch", "chapter": 0, "page": 0, "percentage": 0, "cleared": true, "device_id": "dev-m", "updated_at": "2026-03-01T00:00:03Z"}
]$$::jsonb);
reset role;
select is(
  (select jsonb_agg(jsonb_build_array(e ->> 'won', e ->> 'conflict', e #>> '{progress,series_id}', e #>> '{progress,chapter}')
                    order by n)
     from res, jsonb_array_elements(res.r) with ordinality as x(e, n) where label = 'batch'),
  '[["true", null, "zz-batch", "1"], ["true", null, "aa-batch", "2"], ["false", "stale", "zz-batch", "1"],
    ["true", null, "aa-batch", "4"], ["true", null, "aa-batch", "0"]]'::jsonb,
  'batch results come in input order; writes to one series apply in array order (stale loses; the same key with another position, here a reset, is the later position)');
select is(
  (select e #>> '{progress,updated_at}' from res, jsonb_array_elements(res.r) with ordinality as x(e, n)
    where label = 'batch' and n = 5),
  '2026-03-01T00:00:03.001+00:00',
  'the reset under the key of the write before it is stored 1 ms after that write, not dropped as its replay');

-- A batch sent again because its answer was lost: its earlier write of a series now meets the same
-- device's later write. The device overtook itself: not stored, no conflict in the answer, logged as
-- 'self'; the later write is a replay. The same for a direct (Data API) UPDATE older than the device's
-- own row.
set local role authenticated;
insert into res select 'sent-twice-1', public.write_reading_progress_batch($$[
  {"series_id": "sent-twice", "chapter": 1, "page": 1, "percentage": 0.1, "device_id": "dev-r", "updated_at": "2026-03-02T00:00:01Z"},
  {"series_id": "sent-twice", "chapter": 2, "page": 2, "percentage": 0.2, "device_id": "dev-r", "updated_at": "2026-03-02T00:00:02Z"}
]$$::jsonb);
insert into res select 'sent-twice-2', public.write_reading_progress_batch($$[
  {"series_id": "sent-twice", "chapter": 1, "page": 1, "percentage": 0.1, "device_id": "dev-r", "updated_at": "2026-03-02T00:00:01Z"},
  {"series_id": "sent-twice", "chapter": 2, "page": 2, "percentage": 0.2, "device_id": "dev-r", "updated_at": "2026-03-02T00:00:02Z"}
]$$::jsonb);
update public.reading_progress set chapter = 9, updated_at = '2026-03-02T00:00:01.500Z'
  where series_id = 'sent-twice' and device_id = 'dev-r';
-- The stored position again, 1 ms before its key (what a retry of a landed reused key looks like):
-- refused, and not logged (the stored row is that very position).
update public.reading_progress set chapter = 2, page = 2, percentage = 0.2, updated_at = '2026-03-02T00:00:01.999Z'
  where series_id = 'sent-twice' and device_id = 'dev-r';
reset role;
select is(
  (select jsonb_build_array((r -> 0) - 'progress', r #>> '{0,progress,chapter}', r -> 1)
     from res where label = 'sent-twice-2'),
  jsonb_build_array('{"won": false, "conflict": null, "conflict_with": null}'::jsonb, '2',
    (select r -> 1 from res where label = 'sent-twice-1')),
  'a batch sent twice: its earlier write of a series is not stored and no conflict, its later one answers as the first time');
select results_eq(
  $$select kind, rejected, losing_chapter, losing_updated_at, winning_chapter, winning_updated_at
      from public.reading_progress_conflicts where series_id = 'sent-twice' order by id$$,
  $$values ('self', true, 1, '2026-03-02 00:00:01+00'::timestamptz, 2, '2026-03-02 00:00:02+00'::timestamptz),
           ('self', true, 9, '2026-03-02 00:00:01.5+00'::timestamptz, 2, '2026-03-02 00:00:02+00'::timestamptz)$$,
  'a device overtaking itself is logged as ''self'' (once for the batch sent twice), through the function and a direct UPDATE (refused)');
set local role authenticated;
select throws_ok(
  $$select public.write_reading_progress('sent-twice', 1, 1, 'Infinity', false, 'dev-r', '2026-03-02 00:00:01+00')$$,
  '23514', null, 'an invalid write older than its own device''s is refused, not answered (a direct RPC call; the API validates first)');
reset role;

set local role authenticated;
select throws_ok($$select public.write_reading_progress_batch('[]')$$, '22023',
  'write_reading_progress_batch: 1..100 writes per call, got 0', 'an empty batch is refused');
select throws_ok(
  $$select public.write_reading_progress_batch((select jsonb_agg(jsonb_build_object('series_id', 'big-' || i,
      'chapter', 1, 'page', 1, 'percentage', 0.1, 'device_id', 'dev-m', 'updated_at', '2026-03-01T00:00:00Z'))
      from generate_series(1, 101) i))$$,
  '22023', 'write_reading_progress_batch: 1..100 writes per call, got 101', 'a batch of 101 is refused');
select lives_ok(
  $$select public.write_reading_progress_batch((select jsonb_agg(jsonb_build_object('series_id', 'max-' || i,
      'chapter', 1, 'page', 1, 'percentage', 0.1, 'device_id', 'dev-m', 'updated_at', '2026-03-01T00:00:00Z'))
      from generate_series(1, 100) i))$$,
  'a batch of exactly 100 is accepted');
select throws_ok($$select public.write_reading_progress_batch('{"writes": []}')$$, '22023', null,
  'a batch that is not an array is refused');
select throws_ok($$select public.write_reading_progress_batch('[1]')$$, '22023', null,
  'a batch element that is not an object is refused');
select throws_ok(
  $$select public.write_reading_progress_batch($j$[
    {"series_id": "ok-batch", "chapter": 1, "page": 1, "percentage": 0.1, "device_id": "dev-m", "updated_at": "2026-03-01T00:00:00Z"},
    {"series_id": "ok-batch2", "chapter": -1, "page": 1, "percentage": 0.1, "device_id": "dev-m", "updated_at": "2026-03-01T00:00:00Z"}
  ]$j$)$$,
  '23514', null, 'a batch with an out-of-range element fails');
select throws_ok(
  $$select public.write_reading_progress_batch($j$[
    {"series_id": "ok-batch", "chapter": 1, "page": 1, "percentage": 0.1, "device_id": "dev-m", "updated_at": "2026-03-01T00:00:00Z"},
    {"series_id": "ok-batch3", "chapter": 1, "page": 1, "percentage": 0.1, "updated_at": "2026-03-01T00:00:00Z"}
  ]$j$)$$,
  '23502', null, 'a batch with a missing field fails');
select is_empty($$select 1 from public.reading_progress where series_id = 'ok-batch'$$,
  'the failed batches wrote nothing, not even their valid first element');
select is(
  (select count(*)::int from public.reading_progress where series_id like 'max-%'), 100,
  'the 100-write batch stored 100 rows');
reset role;

-- ---------------------------------------------------------------------------------------------
-- Reads: get, list (keyset), changes (cursor)
-- ---------------------------------------------------------------------------------------------
delete from public.reading_progress where user_id = 'a6a6a6a6-0000-4000-8000-000000000006' and series_id like 'max-%';
set local role authenticated;
select results_eq($$select series_id collate "default", chapter from public.get_reading_progress('lww')$$,
  $$values ('lww', 7)$$, 'get returns A''s row');
select is_empty($$select * from public.get_reading_progress('nope')$$, 'get of an unknown series returns no row');

select results_eq(
  $$select series_id collate "default" from public.list_reading_progress(50, null, null, false)$$,
  $$select series_id collate "default" from public.reading_progress
     where user_id = 'a6a6a6a6-0000-4000-8000-000000000006' and not cleared
     order by updated_at desc, series_id desc$$,
  'list: every live row of the user, newest first, series id descending on ties');
select ok(
  'tomb' not in (select series_id from public.list_reading_progress(50, null, null, false)),
  'list hides tombstones by default');
select ok(
  'tomb' in (select series_id from public.list_reading_progress(50, null, null, true)),
  'list includes tombstones when asked');
select results_eq(
  $$select series_id collate "default" from public.list_reading_progress(2, null, null, true)
    union all
    select series_id collate "default" from public.list_reading_progress(2,
      (select updated_at from public.list_reading_progress(2, null, null, true) offset 1 limit 1),
      (select series_id from public.list_reading_progress(2, null, null, true) offset 1 limit 1), true)$$,
  $$select series_id collate "default" from public.list_reading_progress(4, null, null, true)$$,
  'keyset paging: page 2 continues right after the last row of page 1');
select is((select count(*)::int from public.list_reading_progress(0, null, null, true)), 1,
  'a limit below 1 is clamped to 1');

select is(
  (select jsonb_agg(c ->> 'series_id')
     from jsonb_array_elements(public.reading_progress_changes('', 1000) -> 'changes') c where not c ? 'deleted'),
  (select jsonb_agg(series_id order by change_xid, series_id) from public.reading_progress),
  'changes from the beginning: every row of the user in (change_xid, series_id) order');
-- The 100 'max-' rows were hard-deleted above: each comes back once, as its deleted version.
select is(
  (select jsonb_build_object('n', count(*), 'all_max', bool_and(c ->> 'series_id' like 'max-%'),
                             'deleted', bool_and(c -> 'deleted' = 'true'), 'positions', bool_and(c ? 'chapter'))
     from jsonb_array_elements(public.reading_progress_changes('', 1000) -> 'changes') c where c ? 'deleted'),
  jsonb_build_object('n', 100, 'all_max', true, 'deleted', true, 'positions', true),
  'hard-deleted series appear once each, as the deleted version marked "deleted": true');
select is(
  substring(public.reading_progress_changes('', 100) ->> 'next_cursor' from '^(?:[0-9a-f]{8}\.)?(?:u[0-9a-f]{8}\.)?([0-9]+)')::xid8,
  pg_snapshot_xmin(pg_current_snapshot()),
  'the last page''s next cursor is the snapshot horizon (rows of in-flight transactions are read again)');
select is(
  (public.reading_progress_changes(pg_snapshot_xmin(pg_current_snapshot())::text, 100) -> 'changes'),
  (public.reading_progress_changes('', 100) -> 'changes'),
  'rows at or above the horizon (this open transaction''s) are returned again from that cursor');
select is(
  (select jsonb_build_object('n', jsonb_array_length(p -> 'changes'), 'has_more', p -> 'has_more',
                            'next', substring(p ->> 'next_cursor' from '^(?:[0-9a-f]{8}\.)?(?:u[0-9a-f]{8}\.)?([0-9]+)'))
     from (select public.reading_progress_changes('', 2) as p) s),
  jsonb_build_object('n', 2, 'has_more', true, 'next', pg_snapshot_xmin(pg_current_snapshot())::text),
  'a full page that reaches the horizon continues from the horizon');
select is(
  (select substring(public.reading_progress_changes(pg_snapshot_xmin(pg_current_snapshot())::text, 2) ->> 'next_cursor'
                    from '^(?:[0-9a-f]{8}\.)?(?:u[0-9a-f]{8}\.)?([0-9]+)')),
  pg_snapshot_xmin(pg_current_snapshot())::text,
  'a full page that cannot pass an open transaction returns the cursor it was given');
select is(
  (select jsonb_agg(c ->> 'series_id')
     from jsonb_array_elements(public.reading_progress_changes(pg_current_xact_id()::text || ':lww', 1000) -> 'changes') c),
  (select jsonb_agg(series_id order by series_id)
     from (select series_id from public.reading_progress
            where change_xid = pg_current_xact_id() and series_id > 'lww'
           union all
           select series_id from public.reading_progress_deletions
            where deleted_xid = pg_current_xact_id() and series_id > 'lww') s),
  'an <xid>:<series> cursor continues after that row in page order (rows and deletions alike)');
select throws_ok($$select public.reading_progress_changes('abc', 10)$$, '22023',
  'reading_progress_changes: invalid cursor', 'a malformed cursor is refused');
select is(
  (select jsonb_array_length(public.reading_progress_changes((pg_current_xact_id()::text::bigint + 1)::text, 100) -> 'changes')),
  0, 'nothing has changed after this transaction');
-- A cursor from another cluster (far above every transaction id this one has assigned) starts over;
-- one just above xmax (a transaction still running, like this one, may hold such an id) does not
-- (the tests above and below).
select is(
  (public.reading_progress_changes(
     (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 10000000)::text, 1000) -> 'changes'),
  (public.reading_progress_changes('', 1000) -> 'changes'),
  'a cursor above every transaction id of this cluster (another cluster''s) gets the changes from the start');
select is(
  (public.reading_progress_changes('9999999999999999999', 1000) -> 'changes'),
  (public.reading_progress_changes('', 1000) -> 'changes'),
  'so does the largest cursor the format allows (19 digits, beyond bigint)');
select ok(
  (public.reading_progress_changes(
     (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 10000000)::text, 1000) ->> 'next_cursor')::text
     ~ ('^' || (select left(md5(c.system_identifier::text
                                 || coalesce((select origin from private.reading_progress_cursor_origin), '')
                                 || ':' || auth.uid()::text), 8)
                  from pg_control_system() c)
        || '\.' || pg_snapshot_xmin(pg_current_snapshot())::text || '$'),
  'and a next cursor of this cluster and user (tagged, the user folded in, at the horizon)');
select is(
  (public.reading_progress_changes(
     (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text, 1000) -> 'changes'),
  '[]'::jsonb,
  'a cursor just above xmax (ids running transactions may hold) is not taken for another cluster''s');
reset role;

-- A physical DELETE is still an ordinary DELETE (trigger fires), separate from the tombstone write.
set local role authenticated;
delete from public.reading_progress where series_id = 'future-near';
reset role;
select is(
  (select count(*)::int from new_msgs where event = 'DELETE' and payload -> 'old_record' ->> 'series_id' = 'future-near'),
  1, 'a physical DELETE by the user still broadcasts DELETE');

-- A replay whose key won ties in two lives of the row (deleted in between) names this life's loser:
-- the latest logged, every time (two log rows match; the answer must not depend on the plan).
set local role authenticated;
select public.write_reading_progress('lives', 1, 1, 0.01, false, 'dev-a', '2026-02-01 00:00:00+00');
select public.write_reading_progress('lives', 2, 2, 0.02, false, 'dev-n', '2026-02-01 00:00:00+00');
delete from public.reading_progress where series_id = 'lives';
select public.write_reading_progress('lives', 3, 3, 0.03, false, 'dev-b', '2026-02-01 00:00:00+00');
select public.write_reading_progress('lives', 2, 2, 0.02, false, 'dev-n', '2026-02-01 00:00:00+00');
select is(
  (select public.write_reading_progress('lives', 2, 2, 0.02, false, 'dev-n', '2026-02-01 00:00:00+00')
     #>> '{conflict_with,device_id}'),
  'dev-b',
  'a replay of a key that won ties in two lives names the tie of this life (dev-b, not dev-a)');
reset role;

-- The test clock (supabase/tests/000_test_helpers.test.sql, as in pgTAP 002 and 008), so that the
-- tests of "ahead" below are decided by the order of the clock's readings, not by how much time a
-- loaded machine lets pass between them: write_reading_progress and every function its writes here
-- reach that reads the wall clock (migration 012's stamp and end-of-claims triggers, the conflict
-- logger and its normalisation of updated_at) run on copies that read the test clock, until
-- readsync_tests.use_real_clock() (at the end). Only write_reading_progress's copy moves the clock (1 us a
-- reading); the others read it as it is, so the function's own readings are at + 1 us, at + 2 us,
-- ... whatever the triggers read in between.
--
-- "Ahead" is judged by the wall clock, not by the transaction's start. On the test clock set 0.6 s
-- after this transaction's now() (as if the writes had waited that long for a row's lock, or for
-- earlier writes of a batch), a write dated 5.5 s after now() is only 4.9 s ahead: decided and stored
-- by its own date (K), on every path. Before, it was taken for a write ahead of everything and stored
-- at now(), an earlier key than it was decided by, which a write dated in between from another device
-- then replaced. (Before the test clock, this test slept 0.6 s on the wall clock.)
create temp table k on commit drop as select date_trunc('milliseconds', now() + interval '5.5 seconds') as at;
grant select on k to authenticated;
select readsync_tests.use_test_clock(now() + interval '0.6 seconds',
  array['public.write_reading_progress(text, integer, integer, double precision, boolean, text, timestamptz)'],
  array['public.reading_progress_stamp()', 'public.reading_progress_end_claims()',
        'private.log_reading_progress_conflict(text, integer, integer, double precision, boolean, text, timestamptz, boolean)',
        'private.reading_progress_normalize_updated_at(timestamptz)']);
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub":"a6a6a6a6-0000-4000-8000-000000000006","role":"authenticated"}', true);
select public.write_reading_progress('rejudged', 1, 1, 0.01, false, 'dev-a', '2026-01-01 00:00:00+00');
insert into res select 'rejudged',
  public.write_reading_progress('rejudged', 7, 70, 0.7, false, 'tablet', (select at from k));
insert into res select 'rejudged-new',
  public.write_reading_progress('rejudged-new', 7, 70, 0.7, false, 'tablet', (select at from k));
insert into res select 'rejudged-tie',
  public.write_reading_progress('rejudged', 8, 80, 0.8, false, 'tablet-z', (select at from k));
insert into res select 'rejudged-tie-lost',
  public.write_reading_progress('rejudged', 6, 60, 0.6, false, 'tablet-0', (select at from k));
insert into res select 'rejudged-older',
  public.write_reading_progress('rejudged', 5, 50, 0.5, false, 'phone', (select at from k) - interval '0.1 seconds');
insert into res select 'rejudged-new-older',
  public.write_reading_progress('rejudged-new', 3, 30, 0.3, false, 'ereader', now() + interval '0.5 seconds');
-- A Data API write (the user's own UPDATE) dated 0.3 s before K is judged the same way: older, refused.
update public.reading_progress set chapter = 4, device_id = 'laptop', updated_at = (select at from k) - interval '0.3 seconds'
 where series_id = 'rejudged';
reset role;
select is((select (r ->> 'won')::boolean from res where label = 'rejudged'), true,
  'a write dated 5.5 s after now() but within 5 s of the wall clock wins by its own date');
select is((select r #>> '{progress,updated_at}' from res where label = 'rejudged')::timestamptz, (select at from k),
  'and is stored under that date, the key it was decided by (not at the transaction''s now())');
select is((select r #>> '{progress,updated_at}' from res where label = 'rejudged-new')::timestamptz, (select at from k),
  'the same for a series without a row yet (the INSERT path)');
select is(
  (select array_agg(event || ' ' || ((payload #>> '{record,updated_at}')::timestamptz = k.at)::text)
     from new_msgs, k where payload #>> '{record,series_id}' = 'rejudged-new'),
  array['INSERT true'],
  'and inserted under that date in one INSERT (judged by the clock at once, not first taken for a write ahead)');
select is((select (r ->> 'conflict') || ' ' || (r #>> '{conflict_with,device_id}') from res where label = 'rejudged-tie'),
  'tie tablet', 'the same millisecond from a greater device id replaces it as a tie');
select is((select (r ->> 'won') || ' ' || (r ->> 'conflict') from res where label = 'rejudged-tie-lost'),
  'false tie', 'and from a smaller device id loses as a tie');
select is((select (r ->> 'won') || ' ' || (r ->> 'conflict') || ' ' || (r #>> '{progress,device_id}')
             from res where label = 'rejudged-older'),
  'false stale tablet-z', 'a write 0.1 s older loses as stale, answered with the stored row');
select is((select (r ->> 'won') || ' ' || (r ->> 'conflict') from res where label = 'rejudged-new-older'),
  'false stale', 'an older write to the new series loses as stale (it would have replaced one stored at now())');
select is(
  (select array_agg(kind || ' ' || losing_device_id || ' ' || (losing_updated_at = k.at)::text order by id)
     from new_conflicts, k where series_id = 'rejudged'),
  array['tie tablet true', 'tie tablet-0 true', 'stale phone false', 'stale laptop false'],
  'the log has each under its own key: the replaced tie, the lost tie, the stale API write and the stale Data API write');
select is((select (chapter, device_id)::text from public.reading_progress where series_id = 'rejudged'),
  (8, 'tablet-z')::text, 'the Data API write dated before K changed nothing');

-- Right at the limit, on the test clock. write_reading_progress takes a write for one dated ahead
-- when it is dated more than 5 s after its first reading of the clock ('>': a date exactly at the
-- limit is not ahead), and judges a write taken for one ahead again by its next reading, after its
-- INSERT (a series without a row yet) or once it has locked the stored row ('<=': exactly at the
-- limit, no longer ahead): still ahead, it stays at now(); else it is decided and stored by its own
-- date. The clock is set so that those two readings are M and M + 1 us, M a whole millisecond 1 s
-- after now() (every date below truncates to M + 5 s, told apart from now()):
--   M + 5 s         not ahead: inserted under its own date, in one INSERT;
--   M + 5 s + 1 us  ahead at M, exactly at the limit at M + 1 us: inserted at now(), then re-dated to
--                   its own date (an UPDATE); over a stored row, stored under its own date;
--   M + 5 s + 2 us  ahead at both readings: stored at now(), a new series in one INSERT.
-- So each fails if a '>' becomes '>=', a '<=' becomes '<' or either limit moves by a microsecond.
create temp table edge on commit drop as select date_trunc('milliseconds', now()) + interval '1 second' as m;
grant select on edge to authenticated;
create temp view edge_msgs as
  select payload #>> '{record,series_id}' as series_id,
         event || ' at ' || case (payload #>> '{record,updated_at}')::timestamptz
                              when edge.m + interval '5 seconds' then 'M + 5 s'
                              when date_trunc('milliseconds', now()) then 'now()'
                              else payload #>> '{record,updated_at}' end as msg
    from new_msgs, edge where payload #>> '{record,series_id}' like 'edge-%';
create temp view edge_rows as
  select series_id, device_id,
         case updated_at when edge.m + interval '5 seconds' then 'M + 5 s'
                         when date_trunc('milliseconds', now()) then 'now()'
                         else updated_at::text end as at
    from public.reading_progress, edge
   where user_id = 'a6a6a6a6-0000-4000-8000-000000000006' and series_id like 'edge-%';
set local role authenticated;
select public.write_reading_progress('edge-lock-1us', 1, 1, 0.01, false, 'tablet', '2026-01-01 00:00:00+00');
select public.write_reading_progress('edge-lock-2us', 1, 1, 0.01, false, 'tablet', '2026-01-01 00:00:00+00');
-- Each write dated M + 5 s + `us` microseconds, in this order, on the clock set 1 us before M.
do $$
declare
  v_m timestamptz := (select m from edge);
  w record;
begin
  for w in select * from (values (1, 'edge-at', 0), (2, 'edge-1us', 1), (3, 'edge-2us', 2),
                                 (4, 'edge-lock-1us', 1), (5, 'edge-lock-2us', 2)) v(n, series, us) order by n
  loop
    perform readsync_tests.set_test_clock(v_m - interval '1 microsecond');
    perform public.write_reading_progress(w.series, 2, 2, 0.02, false, 'phone',
      v_m + interval '5 seconds' + w.us * interval '1 microsecond');
  end loop;
end
$$;
reset role;
select is((select array_agg(msg order by msg) from edge_msgs where series_id = 'edge-at'),
  array['INSERT at M + 5 s'],
  'a write dated exactly 5 s after the function''s reading of the clock is not ahead: inserted under its own date in one INSERT (the limit is inclusive)');
select is((select array_agg(msg order by msg) from edge_msgs where series_id = 'edge-1us'),
  array['INSERT at now()', 'UPDATE at M + 5 s'],
  'one dated 1 us past that limit is ahead (inserted at now()), and exactly at the limit of the next reading, after its INSERT, no longer (re-dated to its own date)');
select is((select array_agg(msg order by msg) from edge_msgs where series_id = 'edge-2us'),
  array['INSERT at now()'],
  'one dated 1 us past the limit of that next reading too stays at now()');
select is((select device_id || ' at ' || at from edge_rows where series_id = 'edge-lock-1us'),
  'phone at M + 5 s',
  'over a stored row, one ahead at the first reading and exactly at the limit of the next (once the row is locked) is stored under its own date');
select is((select device_id || ' at ' || at from edge_rows where series_id = 'edge-lock-2us'),
  'phone at now()',
  'and one 1 us past the limit of that reading too is stored at now(), as a write still ahead');

-- The normalisation of updated_at the conflict logger keys a losing write by
-- (private.reading_progress_normalize_updated_at) has the same limit: a date more than 5 s after its
-- reading of the clock ('>') is taken for one ahead and keyed at now(); exactly at the limit, it is
-- kept (truncated to milliseconds). Its copy reads the test clock as it is set, here M.
select readsync_tests.set_test_clock((select m from edge));
select is(
  (select case private.reading_progress_normalize_updated_at(edge.m + interval '5 seconds')
            when edge.m + interval '5 seconds' then 'M + 5 s'
            when date_trunc('milliseconds', now()) then 'now()' else 'other' end from edge),
  'M + 5 s',
  'the conflict log''s normalisation keeps a date exactly 5 s after its reading of the clock (the limit is inclusive)');
select is(
  (select case private.reading_progress_normalize_updated_at(edge.m + interval '5 seconds 1 microsecond')
            when edge.m + interval '5 seconds' then 'M + 5 s'
            when date_trunc('milliseconds', now()) then 'now()' else 'other' end from edge),
  'now()',
  'and keys one dated 1 us past that limit at now(), as a write ahead');

-- write_reading_progress judges "ahead" and keys the write from one reading of the clock. With two
-- readings, the key from the earlier and "ahead" from the later (as when the key came from
-- reading_progress_normalize_updated_at, called first), a write dated past the first + 5 s but not
-- past the second + 5 s was keyed at now() and decided as an ordinary write: refused as stale against
-- a version it is newer than by its own date. On the test clock the function's readings are M, M + 1 us,
-- ... (its normalisation's copy reads the clock as it stands: the value last read, or M - 1 us before
-- the first), so writes dated M + 5 s + 0..4 us, each over a version stored at M + 4.9 s, fall between
-- any two of its first readings. (Before the test clock, 1,220 writes dated 5 s + 0..60 us after the
-- wall clock had to meet the microseconds between two readings by timing: with the key read first,
-- 18 to 45 of them did in three runs here, at 4..56 us, so a slower or busier machine could pass it.)
-- Each wins: by its own date, or 1 ms after that version as a write still ahead.
create temp table one_reading (d int, outcome text) on commit drop;
grant all on one_reading to authenticated;
set local role authenticated;
do $$
declare
  v_m timestamptz := (select m from edge);
  v_r jsonb;
begin
  for d in 0..4 loop
    insert into public.reading_progress (user_id, series_id, chapter, device_id, updated_at)
    values (auth.uid(), 'one-reading-' || d, 1, 'tablet', v_m + interval '4.9 seconds');
    perform readsync_tests.set_test_clock(v_m - interval '1 microsecond');
    v_r := public.write_reading_progress('one-reading-' || d, 2, 2, 0.2, false, 'phone',
      v_m + interval '5 seconds' + d * interval '1 microsecond');
    insert into one_reading values (d, (v_r ->> 'won') || ' at ' ||
      case (v_r #>> '{progress,updated_at}')::timestamptz
        when v_m + interval '5 seconds' then 'M + 5 s'
        when v_m + interval '4.901 seconds' then 'M + 4.901 s'
        when v_m + interval '4.9 seconds' then 'M + 4.9 s'
        else coalesce(v_r #>> '{progress,updated_at}', 'null') end);
  end loop;
end
$$;
reset role;
select readsync_tests.use_real_clock();
select is((select array_agg(d || ': ' || outcome order by d) from one_reading),
  array['0: true at M + 5 s', '1: true at M + 5 s', '2: true at M + 4.901 s', '3: true at M + 4.901 s',
        '4: true at M + 4.901 s'],
  'writes dated M + 5 s + 0..4 us over a version stored at M + 4.9 s all win: "ahead" and the key come from one reading of the clock (not ahead, or no longer ahead once the row is locked: its own date; still ahead: 1 ms after the version)');

select * from finish();
rollback;
