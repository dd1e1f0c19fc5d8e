-- A Data API update that marks a series reset (`cleared: true`) without sending a position takes the
-- reset's zero position, instead of being refused 400.
--
-- A reset is a tombstone: cleared = true with chapter, page and percentage 0 (check
-- reading_progress_cleared_is_zero). supabase-js `.update({ cleared: true })` is a PostgREST PATCH that
-- sets only the body's columns (UPDATE ... SET cleared = ...), so the row kept its stored position under
-- cleared = true and the check refused it (23514, HTTP 400): a reset had to be sent with the three zeros.
-- An upsert that leaves the position out (Prefer: resolution=merge-duplicates: its DO UPDATE sets only
-- the body's columns) was refused the same way. The API's reset (DELETE /progress/series/:id) and
-- write_reading_progress store cleared with the zero position; this is that write.
--
-- Now, on an UPDATE (a DO UPDATE included) of a row that is not cleared, a new version marked cleared
-- whose position is the stored one, left out of the statement's SET columns, takes chapter, page and
-- percentage 0, before the stamp trigger decides: a newer reset lands (and is broadcast as the reset),
-- a stale one is refused and logged as the reset it is, like any stale write. Named (`cleared: true`
-- with chapter, page or percentage among the SET columns) and not all zero, it is refused as before:
-- 23514, constraint reading_progress_cleared_is_zero (a position and a reset at once say two things;
-- the API refuses it too, 422), even where the values named are the stored ones. A reset named with the
-- three zeros lands as before.
-- Two BEFORE UPDATE triggers, named to run in this order and before reading_progress_stamp (BEFORE
-- triggers fire in name order; migration …_position_write_supersedes_reset.sql's two ask old.cleared,
-- these two not old.cleared, so at most one pair acts on a row): ..._reset_marked_with_position
-- (UPDATE OF chapter, page, percentage: it fires only when the statement sets one of them) refuses the
-- named case, ..._reset_marked_zeroes_position zeroes the position. Their WHEN clauses ask new.cleared
-- first: every other UPDATE (every position write) evaluates that one column and calls nothing.
-- pgTAP 018, tests/integration/realtime-triggers.test.ts.
--
-- Idempotent (CREATE OR REPLACE, DROP TRIGGER IF EXISTS).

create or replace function private.reading_progress_reset_marked_with_position() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- As the check itself would answer (PostgREST: 400, its code and constraint in the body).
  raise exception using
    errcode = '23514',
    message = 'new row for relation "reading_progress" violates check constraint "reading_progress_cleared_is_zero"',
    constraint = 'reading_progress_cleared_is_zero',
    table = 'reading_progress',
    schema = 'public',
    hint = 'A reset (cleared: true) has chapter, page and percentage 0: send it without them, or with 0.';
end;
$$;
revoke all on function private.reading_progress_reset_marked_with_position() from public, anon, authenticated;

create or replace function private.reading_progress_reset_marked_zeroes_position() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.chapter := 0;
  new.page := 0;
  new.percentage := 0;
  return new;
end;
$$;
revoke all on function private.reading_progress_reset_marked_zeroes_position() from public, anon, authenticated;

drop trigger if exists reading_progress_reset_marked_with_position on public.reading_progress;
create trigger reading_progress_reset_marked_with_position
  before update of chapter, page, percentage on public.reading_progress
  for each row
  when (new.cleared and not old.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0))
  execute function private.reading_progress_reset_marked_with_position();

drop trigger if exists reading_progress_reset_marked_zeroes_position on public.reading_progress;
create trigger reading_progress_reset_marked_zeroes_position
  before update on public.reading_progress
  for each row
  when (new.cleared and not old.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0)
        and (new.chapter, new.page, new.percentage) is not distinct from (old.chapter, old.page, old.percentage))
  execute function private.reading_progress_reset_marked_zeroes_position();
