-- Migration 012 (20261120090100_realtime_setup.sql) is idempotent: its DDL forms can run again on a
-- database that already has them, and doing so leaves the schema as it was.
--
-- What this file checks, honestly stated: pgTAP cannot read the migration file, so it re-runs the
-- idempotent DDL forms 012 uses (create or replace function; revoke/grant; drop trigger if exists +
-- create trigger; drop policy if exists + create policy; create index if not exists; drop index if
-- exists) with the definitions rebuilt from the live catalog, then compares a schema fingerprint
-- before and after and checks that the triggers still fire once. Applying the whole file a second
-- time is done by the test runner (local/test.ts: "migration 012 applied a second time succeeds"
-- and "... leaves the same schema"), which can read the file.

begin;
-- The lock its DROP TRIGGER and ENABLE ROW LEVEL SECURITY takes (ACCESS EXCLUSIVE), taken first: taken later, after this transaction has
-- written, it is an upgrade that deadlocks with a session holding a weaker lock on the table and
-- waiting for this transaction (pgTAP 038 failed so once in a full run).
lock table public.reading_progress in access exclusive mode;
create extension if not exists pgtap with schema extensions;
select plan(21);
set local client_min_messages = warning; -- the "already exists, skipping" notices are expected

-- Everything migration 012 defines, one line per object.
create function pg_temp.fingerprint_012() returns setof text
language sql
as $$
  select 'policy ' || schemaname || '.' || tablename || ' ' || policyname || ' ' || permissive || ' ' || cmd
         || ' ' || roles::text || ' ' || coalesce(qual, '-') || ' ' || coalesce(with_check, '-')
    from pg_policies
   where (schemaname = 'public' and tablename = 'reading_progress')
      or (schemaname = 'realtime' and tablename = 'messages')
  union all
  select 'trigger ' || pg_get_triggerdef(oid) || ' enabled=' || tgenabled::text
    from pg_trigger where tgrelid = 'public.reading_progress'::regclass and not tgisinternal
  union all
  select 'index ' || pg_get_indexdef(indexrelid)
    from pg_index where indrelid = 'public.reading_progress'::regclass
  union all
  select 'function ' || oid::regprocedure::text || ' definer=' || prosecdef || ' config=' || coalesce(proconfig::text, '-')
         || ' acl=' || coalesce(proacl::text, '-') || ' src=' || md5(prosrc)
    from pg_proc where oid in ('public.reading_progress_stamp()'::regprocedure,
                               'public.reading_progress_broadcast()'::regprocedure,
                               'public.reading_progress_end_claims()'::regprocedure)
  union all
  select 'table ' || oid::regclass::text || ' rls=' || relrowsecurity || ' acl=' || coalesce(relacl::text, '-')
    from pg_class where oid in ('public.reading_progress'::regclass, 'realtime.messages'::regclass)
$$;

create temp table fingerprint_before on commit drop as select * from pg_temp.fingerprint_012() as line;

select cmp_ok(
  (select count(*)::int from fingerprint_before), '>=', 14,
  'fixture: the fingerprint covers 012''s objects (5 policies, 3 triggers, 3 indexes, 3 functions, 2 tables)'
);

-- ---------------------------------------------------------------------------------------------
-- Functions: create or replace + revoke
-- ---------------------------------------------------------------------------------------------
select lives_ok(
  pg_get_functiondef('public.reading_progress_stamp()'::regprocedure),
  '012 rerun: create or replace function public.reading_progress_stamp() succeeds'
);

select lives_ok(
  pg_get_functiondef('public.reading_progress_broadcast()'::regprocedure),
  '012 rerun: create or replace function public.reading_progress_broadcast() succeeds'
);

select lives_ok(
  pg_get_functiondef('public.reading_progress_end_claims()'::regprocedure),
  '012 rerun: create or replace function public.reading_progress_end_claims() succeeds'
);

select lives_ok(
  $$revoke all on function public.reading_progress_stamp() from public, anon, authenticated;
    revoke all on function public.reading_progress_broadcast() from public, anon, authenticated;
    revoke all on function public.reading_progress_end_claims() from public, anon, authenticated$$,
  '012 rerun: revoking execute on the trigger functions again succeeds'
);

-- ---------------------------------------------------------------------------------------------
-- Triggers: drop trigger if exists + create trigger (one assertion per trigger, by name)
-- ---------------------------------------------------------------------------------------------
select throws_ok(
  (select pg_get_triggerdef(oid) from pg_trigger
    where tgrelid = 'public.reading_progress'::regclass and tgname = 'reading_progress_stamp'),
  '42710', null,
  'control: a bare create trigger on the existing trigger fails (42710), so the rerun needs drop ... if exists'
);

select lives_ok(
  format('drop trigger if exists %I on public.reading_progress; %s', tgname, pg_get_triggerdef(oid)),
  '012 rerun: drop trigger if exists + create trigger ' || tgname || ' succeeds'
)
  from pg_trigger
 where tgrelid = 'public.reading_progress'::regclass and not tgisinternal
   and tgname in ('reading_progress_stamp', 'reading_progress_end_claims', 'reading_progress_broadcast') -- 012's
 order by tgname;

-- ---------------------------------------------------------------------------------------------
-- Row level security, grants and policies
-- ---------------------------------------------------------------------------------------------
select lives_ok(
  $$alter table public.reading_progress enable row level security;
    revoke all on table public.reading_progress from anon;
    revoke all on table public.reading_progress from authenticated;
    grant select, insert, update, delete on table public.reading_progress to authenticated;
    grant all on table public.reading_progress to service_role$$,
  '012 rerun: enable row level security, revoke and grant on reading_progress succeed again'
);

select throws_ok(
  $$create policy reading_progress_select_own on public.reading_progress for select to authenticated using (true)$$,
  '42710', null,
  'control: a bare create policy on an existing policy fails (42710), so the rerun needs drop ... if exists'
);

select lives_ok(
  format('drop policy if exists %1$I on %2$I.%3$I; create policy %1$I on %2$I.%3$I as %4$s for %5$s to %6$s%7$s%8$s',
         policyname, schemaname, tablename, permissive, cmd,
         (select string_agg(quote_ident(r), ', ') from unnest(roles) r),
         ' using (' || qual || ')', ' with check (' || with_check || ')'),
  '012 rerun: drop policy if exists + create policy ' || policyname || ' on ' || schemaname || '.' || tablename || ' succeeds'
)
  from pg_policies
 where (schemaname = 'public' and tablename = 'reading_progress')
    or (schemaname = 'realtime' and tablename = 'messages' and policyname = 'progress_topic_receive_own')
 order by schemaname, policyname;

-- ---------------------------------------------------------------------------------------------
-- Indexes: create index if not exists, drop index if exists
-- ---------------------------------------------------------------------------------------------
select lives_ok(
  (select string_agg(replace(pg_get_indexdef(indexrelid), 'CREATE INDEX ', 'CREATE INDEX IF NOT EXISTS '), '; ')
     from pg_index
    where indrelid = 'public.reading_progress'::regclass and not indisprimary)
  || '; drop index if exists public.reading_progress_user_id_idx',
  '012 rerun: create index if not exists (recent, changes) and drop index if exists (user_id-only) succeed'
);

-- ---------------------------------------------------------------------------------------------
-- Same schema afterwards, and the triggers fire exactly once
-- ---------------------------------------------------------------------------------------------
select set_eq(
  $$select * from pg_temp.fingerprint_012()$$,
  $$select line from fingerprint_before$$,
  'after the rerun, policies, triggers, indexes, functions and grants are exactly as before'
);

select is(
  (select count(*)::int from pg_trigger where tgrelid = 'public.reading_progress'::regclass and not tgisinternal),
  14,
  'still exactly fourteen triggers on reading_progress (012''s stamp, end-of-claims and broadcast, 013''s remember-deletion, replaced-tie log and new-life check, the truncate-as-delete of pgTAP 013, the two reset triggers of pgTAP 016, the two of pgTAP 018, the user-writes lock of pgTAP 020, the inserted-reset trigger of pgTAP 038 and the stamp''s deletion read of pgTAP 044; no duplicates)'
);

insert into auth.users (id, email) values ('abababab-0000-4000-8000-00000000000a', 'rerun@readsync.test');
create temp table msgs_before on commit drop as select id from realtime.messages;

insert into public.reading_progress (user_id, series_id, page, device_id, updated_at)
values ('abababab-0000-4000-8000-00000000000a', 'rerun', 1, 'dev', now() + interval '1 day');

select is(
  (select count(*)::int from realtime.messages m
    where not exists (select 1 from msgs_before b where b.id = m.id)
      and topic = 'progress:abababab-0000-4000-8000-00000000000a' and event = 'INSERT'),
  1,
  'after the rerun an insert broadcasts exactly one message'
);

select is(
  (select updated_at from public.reading_progress
    where user_id = 'abababab-0000-4000-8000-00000000000a' and series_id = 'rerun'),
  date_trunc('milliseconds', now()),
  'after the rerun the stamp trigger still clamps a future updated_at'
);

select * from finish();
rollback;
