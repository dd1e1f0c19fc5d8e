-- Helpers shared by the pgTAP files, in schema `readsync_tests`. This file runs first (pg_prove and
-- `supabase test db` take the files in name order; `npm test -- <file>.sql` runs it before any
-- selected pgTAP file) and, unlike every other file, COMMITS: the later files find the helpers in
-- place; 999_drop_test_helpers.test.sql drops them after the last. Re-running it replaces them.
-- `readsync_tests` is not an API schema (supabase/config.toml [api] schemas), and no API role may use
-- anything here outside a test's own transaction.
--
-- The test clock: migration 012's claim triggers, write_reading_progress and the conflict logger
-- judge a write "ahead" by the wall clock, pg_catalog.clock_timestamp(). A test of that is decided
-- by the order of the clock's readings, not by how much time a loaded machine lets pass between
-- them, when those functions read a clock of the test's instead:
--   readsync_tests.use_test_clock(at, moving, as_is)  replaces each function named in `moving` and `as_is`
--     (regprocedure text; `moving` defaults to migration 012's stamp and end-of-claims triggers)
--     with a copy made from its definition that reads the test clock where it reads
--     pg_catalog.clock_timestamp() (aborting if it reads the wall clock in any other way), and sets
--     that clock to `at`. Copies of `moving` read readsync_tests.test_clock(), which moves 1 us a reading;
--     copies of `as_is` read readsync_tests.test_clock_as_is(), which does not move it. It also lets
--     authenticated (the signed-in user the copies run as) read and set the clock for the rest of
--     the transaction. Called again, it sets the clock and replaces the functions it is given
--     again, from the definitions kept at their first replacement.
--   readsync_tests.use_real_clock()  puts the real definitions back.
--   readsync_tests.test_clock(), readsync_tests.test_clock_as_is(), readsync_tests.set_test_clock(at),
--   readsync_tests.move_test_clock(by)  read and set the clock from a test (for instance in a row's
--     computation, between two rows' triggers).
-- The clock lives in the transaction-local setting readsync_test.clock_us as epoch microseconds (a
-- number, not a date's text: a test's DateStyle or TimeZone cannot change it). The functions
-- replaced stay replaced until use_real_clock or the test's ROLLBACK. use_test_clock and
-- use_real_clock run as their owner (they replace the migrations' functions), so they are closed
-- to every API role; a test that calls them as the signed-in user grants that in its own
-- transaction (pgTAP 008).
--
-- readsync_tests.run_as(role, claims, topic, sql, off)  runs a statement as Realtime runs its probes:
--   request.jwt.claims = claims and realtime.topic = topic (both stay set for the rest of the
--   transaction), then the role, and answers 'rows <n>' or the SQLSTATE it failed with, the role
--   put back either way; each planner setting named in `off` (enable_seqscan, ...) is off for the
--   statement and on after it (pgTAP 011, 012). It discards the session's cached plans first, so the
--   role's grants are checked as a session of its own checks them (pgTAP 039).

begin;
create schema if not exists readsync_tests;
-- pgTAP itself: 999 drops it again only when this file created it (`supabase test db` creates it
-- before the files run, and drops it after them when it did; a project may keep it on purpose).
create table if not exists readsync_tests.created_extensions (name text primary key);
insert into readsync_tests.created_extensions (name)
  select 'pgtap' where not exists (select from pg_catalog.pg_extension where extname = 'pgtap')
  on conflict (name) do nothing;
create extension if not exists pgtap with schema extensions;
select plan(4);

-- Dropped and created again, not replaced: CREATE OR REPLACE cannot change a function's return type
-- or parameter names, and a changed parameter list would leave the earlier version beside this one
-- (a call leaning on the defaults then ambiguous), where an earlier version of this file ran. Without
-- CASCADE: nothing outside this file may depend on them.
do $$
declare
  f regprocedure;
begin
  for f in select p.oid from pg_catalog.pg_proc p where p.pronamespace = 'readsync_tests'::regnamespace loop
    execute pg_catalog.format('drop function %s', f);
  end loop;
end
$$;

create function readsync_tests.from_epoch_us(p_us bigint) returns timestamptz
language sql immutable set search_path = pg_catalog, pg_temp as $$
  select to_timestamp(p_us / 1000000) + interval '1 microsecond' * (p_us % 1000000)
$$;
create function readsync_tests.test_clock() returns timestamptz
language sql volatile set search_path = pg_catalog, pg_temp as $$
  select readsync_tests.from_epoch_us(set_config('readsync_test.clock_us',
    (current_setting('readsync_test.clock_us')::bigint + 1)::text, true)::bigint)
$$;
create function readsync_tests.test_clock_as_is() returns timestamptz
language sql volatile set search_path = pg_catalog, pg_temp as $$
  select readsync_tests.from_epoch_us(current_setting('readsync_test.clock_us')::bigint)
$$;
create function readsync_tests.set_test_clock(p_at timestamptz) returns timestamptz
language sql volatile set search_path = pg_catalog, pg_temp as $$
  select readsync_tests.from_epoch_us(set_config('readsync_test.clock_us',
    ((extract(epoch from p_at) * 1000000)::bigint)::text, true)::bigint)
$$;
create function readsync_tests.move_test_clock(p_by interval) returns timestamptz
language sql volatile set search_path = pg_catalog, pg_temp as $$
  select readsync_tests.set_test_clock(readsync_tests.test_clock() + p_by)
$$;

-- The real definitions, kept from a function's first replacement in a transaction until
-- use_real_clock (rows of a test's transaction: its ROLLBACK removes them too).
create table if not exists readsync_tests.real_clock_defs (f text primary key, def text not null);

create function readsync_tests.use_test_clock(
  p_at timestamptz,
  p_moving text[] default array['public.reading_progress_stamp()', 'public.reading_progress_end_claims()'],
  p_as_is text[] default '{}'
) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  r record;
  v_fake text;
begin
  insert into readsync_tests.real_clock_defs (f, def)
    select f::regprocedure::text, pg_get_functiondef(f::regprocedure) from unnest(p_moving || p_as_is) f
    on conflict (f) do nothing;
  for r in
    select d.f, d.def, case when d.f = any (select m::regprocedure::text from unnest(p_moving) m)
                            then 'readsync_tests.test_clock()' else 'readsync_tests.test_clock_as_is()' end as clock
      from readsync_tests.real_clock_defs d
     where d.f in (select f::regprocedure::text from unnest(p_moving || p_as_is) f)
  loop
    v_fake := replace(r.def, 'pg_catalog.clock_timestamp()', r.clock);
    if v_fake = r.def or regexp_replace(v_fake, '--[^\n]*', '', 'g') ~* 'clock_timestamp|timeofday' then
      raise exception 'test clock: % does not read the wall clock as pg_catalog.clock_timestamp() only', r.f;
    end if;
    execute v_fake;
  end loop;
  grant usage on schema readsync_tests to authenticated;
  grant execute on function readsync_tests.from_epoch_us(bigint), readsync_tests.test_clock(), readsync_tests.test_clock_as_is(),
    readsync_tests.set_test_clock(timestamptz), readsync_tests.move_test_clock(interval) to authenticated;
  perform readsync_tests.set_test_clock(p_at);
end
$$;

create function readsync_tests.use_real_clock() returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  r record;
begin
  for r in delete from readsync_tests.real_clock_defs returning def loop
    execute r.def;
  end loop;
end
$$;

-- Runs p_sql as Realtime runs its probes: as p_role, with request.jwt.claims = p_claims and
-- realtime.topic = p_topic (both transaction-local, left set), and the planner settings in p_off turned
-- off meanwhile. Answers 'rows <n>' or the SQLSTATE it failed with (the role is undone with the failed
-- block). Called by the session's own role (the tests run as postgres); not for an API role. No SET
-- clause: it would make the claims and topic revert when it returns.
create function readsync_tests.run_as(p_role text, p_claims jsonb, p_topic text, p_sql text,
  p_off text[] default '{}') returns text
language plpgsql as $$
declare
  v_rows bigint;
  v_result text;
  v_setting text;
begin
  foreach v_setting in array p_off loop
    perform pg_catalog.set_config(v_setting, 'off', true);
  end loop;
  perform pg_catalog.set_config('request.jwt.claims', p_claims::text, true);
  perform pg_catalog.set_config('realtime.topic', p_topic, true);
  begin
    -- The statement meets no plan another role left: PostgreSQL checks a schema's USAGE when it looks a
    -- name up (planning), and an inlined SQL function's EXECUTE when it inlines it, not when it runs a
    -- cached plan, and plpgsql keeps its functions' plans for the session (a simple expression's state,
    -- where EXECUTE is checked, for the transaction). Without this, write_reading_progress's
    -- `auth.uid()` planned as postgres answered a role without USAGE on `auth` as if it had it (pgTAP 015:
    -- its BYPASSRLS member passed with authenticated's USAGE on auth revoked), where a session of that
    -- role plans afresh and is refused (pgTAP 039).
    execute 'discard plans';
    perform pg_catalog.set_config('role', p_role, true);
    execute p_sql;
    get diagnostics v_rows = row_count;
    v_result := 'rows ' || v_rows;
    perform pg_catalog.set_config('role', 'none', true);
  exception when others then
    v_result := sqlstate;
  end;
  foreach v_setting in array p_off loop
    perform pg_catalog.set_config(v_setting, 'on', true);
  end loop;
  return v_result;
end
$$;

-- Nothing here is for an API role (functions are executable by PUBLIC when created, and Supabase's
-- default privileges may add more): closed again on every run.
revoke all on schema readsync_tests from public, anon, authenticated, service_role;
revoke all on table readsync_tests.real_clock_defs, readsync_tests.created_extensions
  from public, anon, authenticated, service_role;
revoke all on all functions in schema readsync_tests from public, anon, authenticated, service_role;

select is(
  (select array_agg(r || ' ' || p order by r, p)
     from unnest(array['anon', 'authenticated', 'service_role']) r,
          unnest(array['readsync_tests.use_test_clock(timestamptz, text[], text[])', 'readsync_tests.use_real_clock()']) p
    where has_function_privilege(r, p, 'execute')),
  null,
  'no API role may call the helpers that replace functions (they run as their owner)');
select ok(
  not has_schema_privilege('anon', 'readsync_tests', 'usage') and not has_schema_privilege('authenticated', 'readsync_tests', 'usage'),
  'anon and authenticated have no usage on schema readsync_tests outside a test''s own transaction');
set local timezone = 'UTC';
select is(
  array[readsync_tests.set_test_clock('2026-01-02 03:04:05.999999+00')::text, readsync_tests.test_clock()::text,
        readsync_tests.test_clock_as_is()::text, readsync_tests.move_test_clock('1 second')::text],
  array['2026-01-02 03:04:05.999999+00', '2026-01-02 03:04:06+00', '2026-01-02 03:04:06+00',
        '2026-01-02 03:04:07.000001+00'],
  'the test clock moves 1 us a reading, and only then or when set or moved');
select is((select count(*)::int from readsync_tests.real_clock_defs), 0, 'no real definition is left over from a test');

select * from finish();
commit;
