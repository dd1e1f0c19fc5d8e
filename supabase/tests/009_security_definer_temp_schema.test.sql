-- The three SECURITY DEFINER functions (migrations 012 and 013: reading_progress_broadcast,
-- log_reading_progress_conflict, reading_progress_remember_deletion) run as their owner, which
-- owns the tables and so is not bound by RLS. With search_path = '' PostgreSQL still resolves type
-- and table names in the session's temporary schema first, so a user's session could shadow a
-- type those functions (or auth.uid() and realtime.send() inside them) use unqualified with a
-- temporary domain, whose CHECK would then run as the owner. The functions name pg_temp last.
--
-- Each test below shadows the types as user A, drives one definer function through an ordinary
-- write of A's own, and asserts that the shadowing code never ran as anyone but A's role.

begin;
create extension if not exists pgtap with schema extensions;
select plan(6);

insert into auth.users (id, email) values
  ('a9a9a9a9-0000-4000-8000-000000000009', 'definer-a@readsync.test');
insert into public.reading_progress (user_id, series_id, chapter, page, device_id, updated_at)
values ('a9a9a9a9-0000-4000-8000-000000000009', 'shadowed', 3, 30, 'a-phone', '2026-01-01 00:00:10+00');

-- Who ran the shadowing domain's CHECK (written by a function of A's; any role may append).
create table public.definer_probe (runner text not null);
grant insert, select on public.definer_probe to authenticated;

select is(
  (select array_agg(p.proname::text order by p.proname)
     from pg_catalog.pg_proc p
    where p.prosecdef
      and p.pronamespace in ('public'::regnamespace, 'private'::regnamespace)
      and p.proname ~ 'reading_progress'
      and not (p.proconfig @> array['search_path=pg_catalog, pg_temp'])),
  null,
  'every readsync SECURITY DEFINER function names pg_temp last in its search_path'
);

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "a9a9a9a9-0000-4000-8000-000000000009", "role": "authenticated"}', true);

create function pg_temp.note_runner() returns boolean
language sql as $$ insert into public.definer_probe values (current_user) returning true $$;
create domain pg_temp.uuid as pg_catalog.uuid check (pg_temp.note_runner());
create domain pg_temp.jsonb as pg_catalog.jsonb check (pg_temp.note_runner());
create domain pg_temp.text as pg_catalog.text check (pg_temp.note_runner());
create domain pg_temp.timestamptz as pg_catalog.timestamptz check (pg_temp.note_runner());

-- A stale direct UPDATE: the stamp trigger refuses it and logs it through the conflict logger.
update public.reading_progress set chapter = 1, updated_at = '2026-01-01 00:00:00+00', device_id = 'a-tablet'
 where series_id = 'shadowed';
-- A newer write: broadcast through reading_progress_broadcast.
update public.reading_progress set chapter = 4, updated_at = '2026-01-01 00:00:20+00', device_id = 'a-tablet'
 where series_id = 'shadowed';
-- A hard delete: remembered by reading_progress_remember_deletion, and broadcast.
delete from public.reading_progress where series_id = 'shadowed';
reset role;
-- The domains would shadow pgTAP's own code, run as postgres, too.
drop domain pg_temp.uuid, pg_temp.jsonb, pg_temp.text, pg_temp.timestamptz;

select is(
  (select count(*)::int from public.reading_progress_conflicts
    where user_id = 'a9a9a9a9-0000-4000-8000-000000000009' and series_id = 'shadowed' and kind = 'stale'),
  1, 'the stale write was logged (the conflict logger ran)');
select is(
  (select count(*)::int from realtime.messages
    where topic = 'progress:a9a9a9a9-0000-4000-8000-000000000009' and event in ('UPDATE', 'DELETE')),
  2, 'the newer write and the delete were broadcast (the broadcast trigger ran)');
select is(
  (select count(*)::int from public.reading_progress_deletions
    where user_id = 'a9a9a9a9-0000-4000-8000-000000000009' and series_id = 'shadowed'),
  1, 'the delete was remembered (the remember-deletion trigger ran)');
select is(
  (select count(*)::int from public.definer_probe where runner <> 'authenticated'),
  0, 'a temporary domain shadowing uuid, jsonb, text or timestamptz never ran as a definer function''s owner');
select ok(
  (select count(*) from public.definer_probe) > 0,
  'the shadowing domains were in force for the session''s own code (the probe can see a run)');

select * from finish();
rollback;
