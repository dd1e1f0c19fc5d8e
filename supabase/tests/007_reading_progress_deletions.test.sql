-- Hard deletes remembered for "changes since" (migration 013, reading_progress_deletions):
--   the AFTER DELETE trigger keeps the deleted version, one row per (user, series), the last deletion;
--   users read their own, write none; reading_progress_changes returns it marked "deleted": true
--   until the series is inserted again (a later life); deleting the user leaves nothing behind.
--   Its indexes and the plan of the changes read on it: 004_indexes.test.sql.

begin;
create extension if not exists pgtap with schema extensions;
select plan(27);

insert into auth.users (id, email) values
  ('a7a7a7a7-0000-4000-8000-000000000007', 'deletions-a@readsync.test'),
  ('b7b7b7b7-0000-4000-8000-000000000007', 'deletions-b@readsync.test');

create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;

-- ---------------------------------------------------------------------------------------------
-- Definition, privileges, policies, indexes
-- ---------------------------------------------------------------------------------------------
select has_table('public', 'reading_progress_deletions', 'reading_progress_deletions exists');
select ok((select relrowsecurity from pg_class where oid = 'public.reading_progress_deletions'::regclass),
  'RLS is enabled on reading_progress_deletions');
select table_privs_are('public', 'reading_progress_deletions', 'anon', array[]::text[],
  'anon has no privilege on reading_progress_deletions');
select table_privs_are('public', 'reading_progress_deletions', 'authenticated', array['SELECT'],
  'authenticated may only SELECT (rows come from the trigger)');
select table_privs_are('public', 'reading_progress_deletions', 'service_role', array['SELECT', 'DELETE'],
  'service_role may read and delete (retention)');
select policies_are('public', 'reading_progress_deletions', array['reading_progress_deletions_select_own'],
  'one policy: users select their own deletions');

-- ---------------------------------------------------------------------------------------------
-- A user's own hard DELETE is remembered; the user cannot write the table
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims',
  json_build_object('sub', 'a7a7a7a7-0000-4000-8000-000000000007', 'role', 'authenticated')::text, true);

insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('a7a7a7a7-0000-4000-8000-000000000007', 'gone', 3, 30, 0.3, 'phone', now() - interval '1 hour');
insert into res select 'first life', to_jsonb(rp) from public.reading_progress rp where series_id = 'gone';
delete from public.reading_progress where series_id = 'gone';

select is(
  (select jsonb_build_object('n', count(*), 'xid', bool_and(deleted_xid = pg_current_xact_id()),
                             'version', bool_and(version = (select r from res where label = 'first life')))
     from public.reading_progress_deletions),
  jsonb_build_object('n', 1, 'xid', true, 'version', true),
  'A''s DELETE is remembered: one row, the deleting transaction, the row as it was'
);

select throws_ok(
  $$insert into public.reading_progress_deletions (user_id, series_id, deleted_xid, deleted_at, version)
    values ('a7a7a7a7-0000-4000-8000-000000000007', 'forged', pg_current_xact_id(), now(), '{}')$$,
  '42501', null, 'a user cannot insert a deletion');
select throws_ok($$update public.reading_progress_deletions set version = '{}'$$, '42501', null,
  'a user cannot change a deletion');
select throws_ok($$delete from public.reading_progress_deletions$$, '42501', null,
  'a user cannot remove a deletion');

-- ---------------------------------------------------------------------------------------------
-- "changes since" reports it; B sees nothing of it
-- ---------------------------------------------------------------------------------------------
select is(
  (select jsonb_agg(c) from jsonb_array_elements(public.reading_progress_changes('', 100) -> 'changes') c),
  jsonb_build_array((select r from res where label = 'first life') || '{"deleted": true}'),
  'A''s changes: the deleted version, marked "deleted": true'
);

select set_config('request.jwt.claims',
  json_build_object('sub', 'b7b7b7b7-0000-4000-8000-000000000007', 'role', 'authenticated')::text, true);
select is((select count(*)::int from public.reading_progress_deletions), 0, 'B sees none of A''s deletions');
select is(public.reading_progress_changes('', 100) -> 'changes', '[]'::jsonb, 'B''s changes are empty');

-- ---------------------------------------------------------------------------------------------
-- Inserted again (an offline device's older position): a later life replaces the deletion
-- ---------------------------------------------------------------------------------------------
select set_config('request.jwt.claims',
  json_build_object('sub', 'a7a7a7a7-0000-4000-8000-000000000007', 'role', 'authenticated')::text, true);
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('a7a7a7a7-0000-4000-8000-000000000007', 'gone', 1, 5, 0.05, 'ereader', now() - interval '1 day');

select is(
  (select jsonb_agg(jsonb_build_object('series', c ->> 'series_id', 'deleted', c ? 'deleted', 'chapter', c -> 'chapter'))
     from jsonb_array_elements(public.reading_progress_changes('', 100) -> 'changes') c),
  jsonb_build_array(jsonb_build_object('series', 'gone', 'deleted', false, 'chapter', 1)),
  'once the series has a row again, changes return the row, not the deletion'
);
select cmp_ok(
  (select created_at from public.reading_progress where series_id = 'gone'), '>',
  ((select r from res where label = 'first life') ->> 'created_at')::timestamptz,
  'the row inserted again begins a later life than the deleted one, though its updated_at is older'
);

insert into res select 'second life', to_jsonb(rp) from public.reading_progress rp where series_id = 'gone';
delete from public.reading_progress where series_id = 'gone';
select is(
  (select jsonb_build_object('n', count(*), 'version', bool_and(version = (select r from res where label = 'second life')))
     from public.reading_progress_deletions),
  jsonb_build_object('n', 1, 'version', true),
  'a second DELETE of the series replaces the remembered one (still one row per series)'
);
reset role;

-- ---------------------------------------------------------------------------------------------
-- A hard DELETE carries no last-write-wins key: it removes whatever is stored when it arrives. A
-- device that may send its delete late (queued offline) makes it conditional on the version it saw
-- (the Data API's .eq('updated_at', seen).eq('device_id', seen)), as the README says: once another
-- device has written since, that delete removes nothing, remembers nothing and broadcasts nothing.
-- ---------------------------------------------------------------------------------------------
-- The device's delete: series 'keyed' only if the stored key is still the version saved in res under
-- p_label. Runs as the caller (RLS applies); returns how many rows it removed.
create function pg_temp.delete_keyed_if_version(p_label text) returns integer
language sql
as $$
  with gone as (
    delete from public.reading_progress
     where series_id = 'keyed'
       and (updated_at, device_id) =
           (select (r ->> 'updated_at')::timestamptz, r ->> 'device_id' from res where label = p_label)
    returning 1
  )
  select count(*)::integer from gone
$$;

set local role authenticated;
select set_config('request.jwt.claims',
  json_build_object('sub', 'a7a7a7a7-0000-4000-8000-000000000007', 'role', 'authenticated')::text, true);

insert into public.reading_progress (user_id, series_id, chapter, page, percentage, device_id, updated_at)
values ('a7a7a7a7-0000-4000-8000-000000000007', 'keyed', 2, 20, 0.2, 'ereader', now() - interval '2 hours');
insert into res select 'seen by the e-reader', to_jsonb(rp) from public.reading_progress rp where series_id = 'keyed';
update public.reading_progress
   set chapter = 8, page = 80, percentage = 0.8, device_id = 'phone', updated_at = now() - interval '1 hour'
 where series_id = 'keyed';
insert into res select 'written by the phone', to_jsonb(rp) from public.reading_progress rp where series_id = 'keyed';

insert into res select 'late conditional delete', to_jsonb(pg_temp.delete_keyed_if_version('seen by the e-reader'));

select is(
  jsonb_build_object(
    'deleted', (select r from res where label = 'late conditional delete'),
    'stored', (select jsonb_build_object('device', device_id, 'page', page)
                 from public.reading_progress where series_id = 'keyed'),
    'remembered', (select count(*) from public.reading_progress_deletions where series_id = 'keyed')),
  jsonb_build_object('deleted', 0, 'stored', jsonb_build_object('device', 'phone', 'page', 80), 'remembered', 0),
  'a delete conditional on an older version removes nothing: the newer progress stays, no deletion is remembered'
);

insert into res select 'current conditional delete', to_jsonb(pg_temp.delete_keyed_if_version('written by the phone'));
select is(
  jsonb_build_object(
    'deleted', (select r from res where label = 'current conditional delete'),
    'remembered', (select version ->> 'device_id' from public.reading_progress_deletions where series_id = 'keyed')),
  jsonb_build_object('deleted', 1, 'remembered', 'phone'),
  'the same delete conditional on the stored version removes it and is remembered'
);
reset role;

select is(
  (select count(*)::int from realtime.messages
    where topic = 'progress:a7a7a7a7-0000-4000-8000-000000000007'
      and payload ->> 'operation' = 'DELETE' and payload -> 'old_record' ->> 'series_id' = 'keyed'),
  1, 'only the delete that removed the row was broadcast'
);

-- ---------------------------------------------------------------------------------------------
-- A new life begins after the deleted one. The race the AFTER INSERT trigger
-- reading_progress_new_life_after_deletion guards against (an INSERT that waited while another
-- transaction deleted the series again; refused with 40001 and retried) needs two sessions:
-- tests/functions/progress_api.test.ts. Here: a remembered life dated after the clock (the clock
-- stepped back since), which the stamp trigger places the new life after.
-- ---------------------------------------------------------------------------------------------
insert into public.reading_progress_deletions (user_id, series_id, deleted_xid, deleted_at, version)
values ('b7b7b7b7-0000-4000-8000-000000000007', 'raced', pg_current_xact_id(), now(),
        jsonb_build_object('series_id', 'raced', 'created_at', clock_timestamp() + interval '1 hour'));
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "b7b7b7b7-0000-4000-8000-000000000007", "role": "authenticated"}', true);
select lives_ok(
  $$insert into public.reading_progress (user_id, series_id, device_id)
    values ('b7b7b7b7-0000-4000-8000-000000000007', 'raced', 'phone')$$,
  'an insert after a remembered life dated ahead of the clock is not refused');
select is(
  (select rp.created_at - (d.version ->> 'created_at')::timestamptz
     from public.reading_progress rp join public.reading_progress_deletions d using (user_id, series_id)
    where rp.series_id = 'raced'),
  interval '1 microsecond',
  'its life begins just after the deleted one, not at the (earlier) wall clock');
select lives_ok(
  $$insert into public.reading_progress (user_id, series_id, device_id)
    values ('b7b7b7b7-0000-4000-8000-000000000007', 'raced-not', 'phone');
    delete from public.reading_progress where series_id = 'raced-not';
    insert into public.reading_progress (user_id, series_id, device_id)
    values ('b7b7b7b7-0000-4000-8000-000000000007', 'raced-not', 'phone')$$,
  'a delete and a new insert in one transaction is a later life and goes through');

-- A replay answers as the first time did, in this life of the row: a tie the same key won in an
-- earlier life (deleted since) is not this life's; the same tie met again in a later life is.
select public.write_reading_progress('tie-lives', 1, 1, 0.1, false, 'd1', '2026-03-01 00:00:00+00');
insert into res values ('life1-tie',
  public.write_reading_progress('tie-lives', 2, 2, 0.2, false, 'd2', '2026-03-01 00:00:00+00'));
delete from public.reading_progress where series_id = 'tie-lives';
insert into res values ('life2-first',
  public.write_reading_progress('tie-lives', 2, 2, 0.2, false, 'd2', '2026-03-01 00:00:00+00'));
insert into res values ('life2-replay',
  public.write_reading_progress('tie-lives', 2, 2, 0.2, false, 'd2', '2026-03-01 00:00:00+00'));
delete from public.reading_progress where series_id = 'tie-lives';
select public.write_reading_progress('tie-lives', 1, 1, 0.1, false, 'd1', '2026-03-01 00:00:00+00');
insert into res values ('life3-tie',
  public.write_reading_progress('tie-lives', 2, 2, 0.2, false, 'd2', '2026-03-01 00:00:00+00'));
insert into res values ('life3-replay',
  public.write_reading_progress('tie-lives', 2, 2, 0.2, false, 'd2', '2026-03-01 00:00:00+00'));
-- A tie logged before conflicts carried the wall clock (created_at was the logging transaction's
-- start, which may lie before the life began) still answers the replay, and a retried loser of the
-- same life does not take its row over.
select public.write_reading_progress('old-log', 1, 1, 0.1, false, 'e1', '2026-04-01 00:00:00+00');
select public.write_reading_progress('old-log', 2, 2, 0.2, false, 'e2', '2026-04-01 00:00:00+00');
reset role;
update public.reading_progress_conflicts set created_at = created_at - interval '1 hour' where series_id = 'old-log';
set local role authenticated;
insert into res values ('old-log-replay',
  public.write_reading_progress('old-log', 2, 2, 0.2, false, 'e2', '2026-04-01 00:00:00+00'));
select public.write_reading_progress('old-log', 1, 1, 0.1, false, 'e1', '2026-04-01 00:00:00+00');
reset role;
select is(
  (select jsonb_build_object('replay', (select r -> 'conflict' from res where label = 'old-log-replay'),
                             'rows', count(*), 'rejected', bool_or(rejected))
     from public.reading_progress_conflicts where series_id = 'old-log'),
  '{"replay": "tie", "rows": 1, "rejected": false}'::jsonb,
  'an older log row of this life answers the replay, and a retried loser leaves it as it was');
select is(
  (select jsonb_object_agg(label, r -> 'conflict') from res where label like 'life%'),
  '{"life1-tie": "tie", "life2-first": null, "life2-replay": null, "life3-tie": "tie", "life3-replay": "tie"}'::jsonb,
  'a replay answers the conflict of its own life: none after the tie''s life was deleted, the tie again when met again');
select is(
  (select count(*)::int from public.reading_progress_conflicts
    where user_id = 'b7b7b7b7-0000-4000-8000-000000000007' and series_id = 'tie-lives'),
  1, 'the pair met in two lives is one log row, taken over by the later life');

-- ---------------------------------------------------------------------------------------------
-- Deleting the user takes everything along, and the cascade does not trip over the trigger
-- ---------------------------------------------------------------------------------------------
insert into public.reading_progress (user_id, series_id, device_id)
values ('a7a7a7a7-0000-4000-8000-000000000007', 'still-here', 'phone');
select lives_ok($$delete from auth.users where id = 'a7a7a7a7-0000-4000-8000-000000000007'$$,
  'deleting a user with progress and remembered deletions succeeds');
select is(
  (select count(*)::int from public.reading_progress_deletions where user_id = 'a7a7a7a7-0000-4000-8000-000000000007')
  + (select count(*)::int from public.reading_progress where user_id = 'a7a7a7a7-0000-4000-8000-000000000007'),
  0, 'nothing of the deleted user is left, and their cascaded rows were not remembered');

select * from finish();
rollback;
