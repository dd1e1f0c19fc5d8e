-- A Data API write of a position onto a reset series, without `cleared` in its body, lands as a
-- position (cleared = false) instead of being refused 400.
--
-- A reset is a tombstone: cleared = true with a zero position (check reading_progress_cleared_is_zero).
-- PostgREST's upsert (supabase-js .upsert(), Prefer: resolution=merge-duplicates) inserts the body's
-- columns (the others take their defaults) and, on a conflict, sets only those columns (ON CONFLICT
-- DO UPDATE SET col = excluded.col for each): a column left out keeps its stored value. So a device
-- that upserts {series_id, chapter, page, percentage, device_id, updated_at}, as it does on every other
-- row, met a reset series with a row whose cleared stayed true under a non-zero position: the check
-- refused it (23514, HTTP 400), a newer write and a stale one alike (a stale one while its refusal was
-- logged: the log's check refuses that loser too); a plain .update({ page }) the same. The progress API
-- takes a missing `cleared` as false, and so does write_reading_progress: a position after a reset is
-- reading again, which wins or loses by its key like any write.
--
-- Now, on an UPDATE (a DO UPDATE included) of a row that is cleared, a new version that would keep
-- cleared = true under a non-zero position is taken for such a write when `cleared` is not among the
-- statement's SET columns: cleared becomes false, before the stamp trigger decides (and logs a refused
-- one as the position it is). Named (`cleared: true` sent with a position, a contradiction), it is
-- refused as before: 23514, constraint reading_progress_cleared_is_zero. An upsert of a zero position
-- without `cleared` leaves the reset as it is (a valid row: PostgREST's merge keeps the stored value).
-- Two BEFORE UPDATE triggers, named to run in this order and before reading_progress_stamp (BEFORE
-- triggers fire in name order): ..._reset_sent_with_position (UPDATE OF cleared: it fires only when
-- the statement sets cleared) refuses the named case, ..._reset_superseded clears the flag. Their WHEN
-- clauses ask old.cleared first: every other UPDATE (the write path's) evaluates that one column and
-- calls nothing. pgTAP 016.
--
-- Idempotent (CREATE OR REPLACE, DROP TRIGGER IF EXISTS).

create or replace function private.reading_progress_reset_sent_with_position() returns trigger
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
    hint = 'A reset (cleared: true) has chapter, page and percentage 0; a position is sent with cleared false or without it.';
end;
$$;
revoke all on function private.reading_progress_reset_sent_with_position() from public, anon, authenticated;

create or replace function private.reading_progress_reset_superseded() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.cleared := false;
  return new;
end;
$$;
revoke all on function private.reading_progress_reset_superseded() from public, anon, authenticated;

drop trigger if exists reading_progress_reset_sent_with_position on public.reading_progress;
create trigger reading_progress_reset_sent_with_position
  before update of cleared on public.reading_progress
  for each row
  when (old.cleared and new.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0))
  execute function private.reading_progress_reset_sent_with_position();

drop trigger if exists reading_progress_reset_superseded on public.reading_progress;
create trigger reading_progress_reset_superseded
  before update on public.reading_progress
  for each row
  when (old.cleared and new.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0))
  execute function private.reading_progress_reset_superseded();
