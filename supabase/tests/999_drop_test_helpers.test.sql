-- Drops the pgTAP files' shared helpers (schema readsync_tests, made by 000_test_helpers.test.sql)
-- once the other files have run, so that a database the tests ran on keeps nothing of theirs:
-- `supabase db diff` and `db pull` compare every schema, and would take the helpers (security
-- definer functions that rewrite the migrations' functions) for part of the project. It runs last
-- (pg_prove and `supabase test db` take the files in name order; `npm test -- <file>.sql` runs it
-- after the files it is given) and, like 000, commits.

begin;
select plan(2);

drop schema if exists readsync_tests cascade;

select hasnt_schema('readsync_tests', 'the shared test helpers are gone');
-- The clock setting lives only in a test's own transaction: nothing of it is left to drop.
select is(current_setting('readsync_test.clock_us', true), null, 'no test clock is set outside a test');

select * from finish();
commit;
