-- Drops the pgTAP files' shared helpers (schema readsync_tests, made by 000_test_helpers.test.sql)
-- once the other files have run, so that a database the tests ran on keeps nothing of theirs:
-- `supabase db diff` and `db pull` compare every schema, and would take the helpers (security
-- definer functions that rewrite the migrations' functions) for part of the project. It runs last
-- (pg_prove and `supabase test db` take the files in name order; `npm test -- <file>.sql` runs it
-- after the files it is given) and, like 000, commits. pgTAP itself goes too when 000 created it.

begin;
select plan(2);

-- Whether 000 created pgTAP, read before the schema that says so goes (absent when 000 never ran).
do $$
begin
  if to_regclass('readsync_tests.created_extensions') is not null then
    perform pg_catalog.set_config('readsync_test.drop_pgtap',
      (exists (select from readsync_tests.created_extensions where name = 'pgtap'))::text, true);
  end if;
end
$$;

drop schema if exists readsync_tests cascade;

select hasnt_schema('readsync_tests', 'the shared test helpers are gone');
-- The clock setting lives only in a test's own transaction: nothing of it is left to drop.
select is(current_setting('readsync_test.clock_us', true), null, 'no test clock is set outside a test');

select * from finish();
-- Last, once this file's own checks have run on it.
do $$
begin
  if pg_catalog.current_setting('readsync_test.drop_pgtap', true) = 'true' then
    drop extension pgtap;
  end if;
end
$$;
commit;
