-- An INSERT of reading_progress (the Data API's POST, an upsert's INSERT half: supabase-js .insert() and
-- .upsert(), SQL, write_reading_progress's first write of a series) that is `cleared: true` with a
-- position is refused by a BEFORE INSERT trigger as every other path refuses it: 23514 naming
-- reading_progress_cleared_is_zero, with the one hint (…_reset_refusals_one_hint.sql), and before NOT
-- NULL and the other checks are looked at, instead of by the table's check alone, without a hint, and
-- after the checks whose names sort before it.
--
-- Before, the rules came in two orders by the verb. An UPDATE (PATCH, an upsert's DO UPDATE, the write
-- function onto a stored row, newer or stale) meets the reset triggers first (BEFORE UPDATE), then NOT
-- NULL in column order, then the checks by name; the write function's and the stamp trigger's refused
-- branches state that order (…_write_function_refuses_invalid_losers.sql, …_stale_invalid_update_refused.sql).
-- An INSERT met no trigger: NOT NULL, then the checks by name, reading_progress_chapter_range before
-- reading_progress_cleared_is_zero. So one write, `cleared: true` with chapter -1 (or with a chapter and
-- a NULL page), was refused naming reading_progress_cleared_is_zero (with the hint) as a PATCH or a write
-- onto a stored series, and naming reading_progress_chapter_range (23502 page) as a POST or an upsert,
-- whether or not the row was stored: PostgreSQL checks an upsert's INSERT half before it meets the
-- stored row. pgTAP 038 drives every rule and their combinations through every path (INSERT, upsert,
-- newer and stale UPDATE, a tie lost, write_reading_progress inserting, newer and stale) for every role
-- that can reach them, and found this the one disagreement. A Data API user meets the hint on PATCH:
-- now on POST and upsert too.
--
-- The trigger is guarded by one column (WHEN (new.cleared), false on every position write), the rest of
-- the rule in its function, as the reset triggers are (…_reset_rule_triggers_one_column_when.sql: a WHEN
-- is prepared again in every statement). Its name sorts before reading_progress_stamp, so it raises before
-- the stamp looks at the row. NULLs compare as unknown, as in the other reset triggers: `cleared: true`
-- with a NULL chapter and a zero page and percentage is NOT NULL's (23502 chapter), as on an UPDATE.
--
-- Like every BEFORE ROW trigger, it runs before row level security's WITH CHECK: a user's INSERT of
-- another user's row that is `cleared: true` with a position is refused 23514 instead of 42501 (nothing
-- is stored either way, and the error names only what the user sent).
--
-- Idempotent (CREATE OR REPLACE, DROP TRIGGER IF EXISTS; the revoke is repeated).

create or replace function private.reading_progress_reset_inserted_with_position() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- A row inserted cleared under a non-zero position: `cleared: true` sent with one.
  if new.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0) then
    -- As the check itself would answer (PostgREST: 400, its code and constraint in the body), and as
    -- the reset triggers answer an UPDATE.
    raise exception using
      errcode = '23514',
      message = 'new row for relation "reading_progress" violates check constraint "reading_progress_cleared_is_zero"',
      constraint = 'reading_progress_cleared_is_zero',
      table = 'reading_progress',
      schema = 'public',
      hint = 'A reset (cleared: true) has chapter, page and percentage 0; a position is sent with cleared false or without it.';
  end if;
  return new;
end;
$$;
revoke all on function private.reading_progress_reset_inserted_with_position() from public, anon, authenticated;

drop trigger if exists reading_progress_reset_inserted_with_position on public.reading_progress;
create trigger reading_progress_reset_inserted_with_position
  before insert on public.reading_progress
  for each row
  when (new.cleared)
  execute function private.reading_progress_reset_inserted_with_position();
