-- One user's writes are serialized (migration …_user_writes_serialized.sql): a BEFORE ... FOR EACH
-- STATEMENT trigger on reading_progress takes a transaction-level advisory lock keyed on the writing
-- user (the table's oid, uuid_hash of auth.uid()) before the statement locks any row. Here: the trigger
-- and its function as they must be (before each INSERT, UPDATE and DELETE statement; SECURITY INVOKER,
-- so that it sees the writer's role; search_path ''; no API role may call it), which writes take the
-- lock (a statement made as the user, also one that touches no row) and which do not (a role that
-- bypasses RLS, a user's role without a user in its claims). That two writers then wait for each other
-- needs two sessions: tests/functions/user_writes_serialized.test.ts.

begin;
create extension if not exists pgtap with schema extensions;
select plan(10);

insert into auth.users (id, email) values
  ('a2000000-0000-4000-8000-000000000020', 'serialized-a@readsync.test'),
  ('b2000000-0000-4000-8000-000000000020', 'serialized-b@readsync.test');

-- The users whose write lock this transaction holds (pg_locks: advisory, the table's oid and the hash).
create function pg_temp.locked_users() returns text[] language sql as $fn$
  select coalesce(array_agg(u.id::text order by u.id), '{}')
    from auth.users u
    join pg_catalog.pg_locks l
      on l.locktype = 'advisory' and l.pid = pg_catalog.pg_backend_pid() and l.granted
     and l.mode = 'ExclusiveLock' and l.objsubid = 2
     and l.classid = 'public.reading_progress'::regclass
     and l.objid = pg_catalog.uuid_hash(u.id)::oid
   where u.id in ('a2000000-0000-4000-8000-000000000020', 'b2000000-0000-4000-8000-000000000020')
$fn$;
create function pg_temp.claims(p_user text) returns jsonb language sql as $fn$
  select pg_catalog.jsonb_build_object('sub', p_user, 'role', 'authenticated')
$fn$;

select is(
  (select pg_catalog.pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text
     from pg_catalog.pg_trigger t
    where t.tgrelid = 'public.reading_progress'::regclass and t.tgname = 'reading_progress_serialize_user_writes'),
  'CREATE TRIGGER reading_progress_serialize_user_writes BEFORE INSERT OR DELETE OR UPDATE ON public.reading_progress '
    || 'FOR EACH STATEMENT EXECUTE FUNCTION private.reading_progress_serialize_user_writes() O',
  'the trigger fires before each INSERT, UPDATE and DELETE statement (enabled)');
select is(
  (select p.prosecdef from pg_catalog.pg_proc p
    where p.oid = 'private.reading_progress_serialize_user_writes()'::regprocedure),
  false,
  'its function is SECURITY INVOKER: current_user and row level security are the writer''s');
select is(
  (select p.proconfig from pg_catalog.pg_proc p
    where p.oid = 'private.reading_progress_serialize_user_writes()'::regprocedure),
  array['search_path=""'],
  'its function runs with search_path '''' (every name qualified)');
select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated', 'service_role']) r
    where has_function_privilege(r, 'private.reading_progress_serialize_user_writes()', 'execute')),
  null,
  'no API role may call the trigger function');

-- Roles that bypass RLS may write any user's rows in one statement: they take no lock.
select is(
  readsync_tests.run_as('service_role', pg_temp.claims('a2000000-0000-4000-8000-000000000020'), '',
    $$insert into public.reading_progress (user_id, series_id, device_id, updated_at)
      values ('a2000000-0000-4000-8000-000000000020', 'held', 'admin', '2026-01-01 00:00:00+00')$$),
  'rows 1',
  'service_role writes a user''s row');
select is(pg_temp.locked_users(), '{}', 'service_role''s write took no user''s lock');
-- A user's role with no user in its claims: no row passes the policies, nothing to lock.
select is(
  readsync_tests.run_as('authenticated', '{"role": "authenticated"}', '',
    $$update public.reading_progress set page = 1$$),
  'rows 0',
  'authenticated without a sub changes nothing');
select is(pg_temp.locked_users(), '{}', 'and took no lock');

-- The user's statement takes the user's lock, also when it touches no row; another user's takes theirs.
select is(
  readsync_tests.run_as('authenticated', pg_temp.claims('a2000000-0000-4000-8000-000000000020'), '',
    $$update public.reading_progress set page = 2 where series_id = 'none'$$)
  || ', ' ||
  readsync_tests.run_as('authenticated', pg_temp.claims('b2000000-0000-4000-8000-000000000020'), '',
    $$insert into public.reading_progress (user_id, series_id, device_id, updated_at)
      values ('b2000000-0000-4000-8000-000000000020', 'own', 'phone', '2026-01-01 00:00:00+00')$$),
  'rows 0, rows 1',
  'user A updates no row, user B inserts one');
select is(
  pg_temp.locked_users(),
  array['a2000000-0000-4000-8000-000000000020', 'b2000000-0000-4000-8000-000000000020'],
  'each holds their own lock to the end of the transaction');

select * from finish();
rollback;
