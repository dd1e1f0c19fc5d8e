-- The reset rules' four BEFORE UPDATE triggers (and, since …_reset_inserted_with_position_refused_first.sql,
-- one BEFORE INSERT trigger) on reading_progress are guarded by one column each
-- (migration …_reset_rule_triggers_one_column_when.sql): PostgreSQL reads a trigger's WHEN clause back
-- from its node text and prepares it in every statement that considers the trigger, so the rules'
-- whole tests there (7.9 kB of node text for the four) cost every position write about 30 us of CPU
-- (1 client: 0.91 of the tps without them), although false on it. The definitions are checked here,
-- so that a later migration cannot bring the whole tests back into the WHEN clauses (or drop the WHEN,
-- which calls the four functions on every write) unnoticed. The rules themselves are pgTAP 016's and
-- 018's; the writes below are the ones that now call a function whose rule is false (the one column
-- says a reset is involved, the rest does not hold): each must land as it did, untouched.

begin;
create extension if not exists pgtap with schema extensions;
select plan(11);

insert into auth.users (id, email) values ('a2200000-0000-4000-8000-000000000022', 'guard-a@readsync.test');

create function pg_temp.trigger_def(p_name text) returns text language sql as $fn$
  select pg_get_triggerdef(oid) from pg_trigger
   where tgrelid = 'public.reading_progress'::regclass and tgname = p_name
$fn$;

-- ---------------------------------------------------------------------------------------------
-- Definitions: same events, columns and functions, WHEN one column.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.trigger_def('reading_progress_reset_marked_with_position'),
  'CREATE TRIGGER reading_progress_reset_marked_with_position BEFORE UPDATE OF chapter, page, percentage ON public.reading_progress FOR EACH ROW WHEN (new.cleared) EXECUTE FUNCTION private.reading_progress_reset_marked_with_position()',
  'a reset named with a position: UPDATE OF the position, WHEN (new.cleared) only');
select is(pg_temp.trigger_def('reading_progress_reset_marked_zeroes_position'),
  'CREATE TRIGGER reading_progress_reset_marked_zeroes_position BEFORE UPDATE ON public.reading_progress FOR EACH ROW WHEN (new.cleared) EXECUTE FUNCTION private.reading_progress_reset_marked_zeroes_position()',
  'a reset marked without a position: WHEN (new.cleared) only');
select is(pg_temp.trigger_def('reading_progress_reset_sent_with_position'),
  'CREATE TRIGGER reading_progress_reset_sent_with_position BEFORE UPDATE OF cleared ON public.reading_progress FOR EACH ROW WHEN (old.cleared) EXECUTE FUNCTION private.reading_progress_reset_sent_with_position()',
  'cleared: true sent with a position onto a reset: UPDATE OF cleared, WHEN (old.cleared) only');
select is(pg_temp.trigger_def('reading_progress_reset_superseded'),
  'CREATE TRIGGER reading_progress_reset_superseded BEFORE UPDATE ON public.reading_progress FOR EACH ROW WHEN (old.cleared) EXECUTE FUNCTION private.reading_progress_reset_superseded()',
  'a position written onto a reset: WHEN (old.cleared) only');
-- The fifth, on INSERT (migration …_reset_inserted_with_position_refused_first.sql): every INSERT and
-- upsert considers it, so it too is one column, never the rule's whole test.
select is(pg_temp.trigger_def('reading_progress_reset_inserted_with_position'),
  'CREATE TRIGGER reading_progress_reset_inserted_with_position BEFORE INSERT ON public.reading_progress FOR EACH ROW WHEN (new.cleared) EXECUTE FUNCTION private.reading_progress_reset_inserted_with_position()',
  'cleared: true inserted with a position: WHEN (new.cleared) only');

-- ---------------------------------------------------------------------------------------------
-- Writes that now call a rule's function whose rule does not hold: they land as they did.
-- ---------------------------------------------------------------------------------------------
-- A reset series (cleared, position zero), an hour ago.
create function pg_temp.reset(p_series text) returns void language sql as $fn$
  insert into public.reading_progress (user_id, series_id, cleared, device_id, updated_at)
  values ('a2200000-0000-4000-8000-000000000022', p_series, true, 'tablet', now() - interval '1 hour')
$fn$;
-- Runs p_sql as the user (role authenticated): 'rows <n>' or the SQLSTATE.
create function pg_temp.as_user(p_sql text) returns text language sql as $fn$
  select readsync_tests.run_as('authenticated',
    '{"sub":"a2200000-0000-4000-8000-000000000022","role":"authenticated"}', '', p_sql)
$fn$;
create function pg_temp.stored(p_series text) returns text language sql as $fn$
  select row(chapter, page, percentage, cleared, device_id)::text from public.reading_progress where series_id = p_series
$fn$;

-- All four called (cleared and the position set, old and new cleared), none acts: a reset again.
select pg_temp.reset('again');
select is(pg_temp.as_user($$update public.reading_progress set chapter = 0, page = 0, percentage = 0,
       cleared = true, device_id = 'phone', updated_at = now() - interval '1 minute' where series_id = 'again'$$),
  'rows 1', 'a newer reset sent with the three zeros onto a reset lands');
select is(pg_temp.stored('again'), '(0,0,0,t,phone)', 'and the series stays reset (not refused, not uncleared)');

-- The write path's own shape (the progress function's, the bench's upsert): cleared false named
-- with the position; the sent pair is called (UPDATE OF cleared, old.cleared) and lets it through.
select pg_temp.reset('position');
select is(pg_temp.as_user($$insert into public.reading_progress as p
         (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
       values ('a2200000-0000-4000-8000-000000000022', 'position', 3, 40, 0.03, false, 'phone',
               now() - interval '1 minute')
       on conflict (user_id, series_id) do update
         set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage,
             cleared = excluded.cleared, device_id = excluded.device_id, updated_at = excluded.updated_at
         where (excluded.updated_at, excluded.device_id) > (p.updated_at, p.device_id)$$),
  'rows 1', 'a newer position sent with cleared false onto a reset lands');
select is(pg_temp.stored('position'), '(3,40,0.03,f,phone)', 'as that position');

-- The marked pair and the sent pair called (new and old cleared, only cleared set): a reset again.
select pg_temp.reset('marked');
select is(pg_temp.as_user($$update public.reading_progress set cleared = true, device_id = 'phone',
       updated_at = now() - interval '1 minute' where series_id = 'marked'$$),
  'rows 1', '.update({ cleared: true }) of a reset lands');
select is(pg_temp.stored('marked'), '(0,0,0,t,phone)', 'and the series stays reset');

select * from finish();
rollback;
