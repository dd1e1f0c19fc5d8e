-- Percentages printed as JSON for others are exact whatever the writer's extra_float_digits
-- (migration …_percentages_printed_exactly.sql). At 0 or below PostgreSQL prints a double with 15 +
-- extra_float_digits significant digits (to_jsonb, jsonb_build_object), so a database or role that set
-- it rounded the percentage in write_reading_progress's answers, the changes read, every broadcast and
-- a remembered deletion's version. Each call here runs as the signed-in user with the session's
-- extra_float_digits at 0 or -15, as ALTER DATABASE ... SET would leave it; every percentage printed
-- must be the shortest text that reads back as the stored number (PostgreSQL's default output).

begin;
create extension if not exists pgtap with schema extensions;
select plan(13);

insert into auth.users (id, email) values ('a1700000-0000-4000-8000-000000000017', 'digits-a@readsync.test');

-- Messages that existed before this test (other runs on a shared database) are ignored.
create temp table msgs_before on commit drop as select id from realtime.messages;
create temp view new_msgs as
  select m.* from realtime.messages m where not exists (select 1 from msgs_before b where b.id = m.id)
     and m.topic = 'progress:a1700000-0000-4000-8000-000000000017';
create temp table answers (label text primary key, answer jsonb) on commit drop;
grant select, insert on answers to authenticated;
grant select on msgs_before, new_msgs to authenticated;

-- Shortest exact text 0.12345678901234568: 17 significant digits, 15 print as 0.123456789012346.
create function pg_temp.p() returns float8 language sql immutable as 'select 0.1234567890123456789::float8';
create function pg_temp.p2() returns float8 language sql immutable as 'select 0.9876543210987654321::float8';

set local role authenticated;
select set_config('request.jwt.claims', '{"sub":"a1700000-0000-4000-8000-000000000017","role":"authenticated"}', true);
set local extra_float_digits = 0;

select is(to_jsonb(pg_temp.p())::text, '0.123456789012346',
  'premise: at extra_float_digits 0 the session prints the percentage with 15 digits');

insert into answers select 'first', public.write_reading_progress('s', 3, 4, pg_temp.p(), false, 'phone',
  now() - interval '1 hour');
select is((select answer #>> '{progress,percentage}' from answers where label = 'first'), '0.12345678901234568',
  'write_reading_progress answers the percentage exactly');
select is(current_setting('extra_float_digits'), '0', 'and leaves the caller''s setting as it was');

insert into answers select 'stale', public.write_reading_progress('s', 1, 1, 0.5, false, 'tablet',
  now() - interval '2 hours');
select is((select answer #>> '{progress,percentage}' from answers where label = 'stale'), '0.12345678901234568',
  'a refused write''s answer carries the stored percentage exactly');

-- (The batch's JSON is written as text: this session would print pg_temp.p2() rounded into it.)
insert into answers select 'batch', public.write_reading_progress_batch(jsonb_build_array(jsonb_build_object(
  'series_id', 'b', 'chapter', 1, 'page', 1, 'percentage', '0.9876543210987654'::jsonb, 'device_id', 'phone',
  'updated_at', now() - interval '1 hour')));
select is((select answer #>> '{0,progress,percentage}' from answers where label = 'batch'), '0.9876543210987654',
  'write_reading_progress_batch too');

select is(
  (select array_agg(c ->> 'percentage' order by c ->> 'series_id')
     from jsonb_array_elements(public.reading_progress_changes(null, 10) -> 'changes') c),
  array['0.9876543210987654', '0.12345678901234568'],
  'the changes read prints each row''s percentage exactly');

select is(
  (select array_agg(payload #>> '{record,percentage}' order by payload #>> '{record,series_id}') from new_msgs
    where event = 'INSERT'),
  array['0.9876543210987654', '0.12345678901234568'],
  'the broadcasts of both inserts carry it exactly');

set local extra_float_digits = -15;
select is(to_jsonb(pg_temp.p())::text, '0.1', 'premise: at -15 the session prints one digit');
update public.reading_progress set percentage = pg_temp.p2(), device_id = 'tablet', updated_at = now() - interval '30 minutes'
 where series_id = 's';
select is(
  (select payload #>> '{record,percentage}' from new_msgs where event = 'UPDATE'),
  '0.9876543210987654', 'a direct UPDATE''s broadcast carries the new percentage exactly');
select is(
  (select payload #>> '{old_record,percentage}' from new_msgs where event = 'UPDATE'),
  '0.12345678901234568', 'and the old one');

delete from public.reading_progress where series_id = 'b';
select is(
  (select c ->> 'percentage' from jsonb_array_elements(public.reading_progress_changes(null, 10) -> 'changes') c
    where c ->> 'series_id' = 'b' and (c ->> 'deleted')::boolean),
  '0.9876543210987654', 'a deletion remembered in such a session is reported with its percentage exactly');
select is(
  (select version ->> 'percentage' from public.reading_progress_deletions where series_id = 'b'),
  '0.9876543210987654', 'as it is stored');
select is(current_setting('extra_float_digits'), '-15', 'the session''s setting is still its own');

reset role;
select * from finish();
rollback;
