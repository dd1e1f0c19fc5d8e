-- The reset rules' four BEFORE UPDATE triggers on reading_progress (migrations
-- …_position_write_supersedes_reset.sql and …_reset_marked_zeroes_position.sql) are guarded by one
-- column each (WHEN (old.cleared) or WHEN (new.cleared)), with the rest of each rule's test inside its
-- function, instead of the whole rule in the WHEN clause. Same triggers (names, so the same firing
-- order; events; UPDATE OF columns), same rules, same errors.
--
-- Why: PostgreSQL does not keep a trigger's WHEN clause compiled. trigger.c (TriggerEnabled) reads it
-- back from its stored node text (stringToNode) and prepares it (ExecPrepareQual) the first time the
-- trigger is considered in each statement execution, prepared statements included; every Data API
-- write is one statement, so each write paid that for the four clauses: 7.9 kB of node text (the
-- ORs, and a row IS NOT DISTINCT FROM), although the clauses are false on every position write and
-- nothing was called. An UPDATE OF trigger skips it when its columns are not set, but an upsert sets
-- them all. One column's clause is 121 bytes of node text; the full test runs only when that column
-- says a reset is involved (old.cleared: a write onto a reset series; new.cleared: a reset), where it
-- costs a function call, as a write that acts did before.
--
-- Measured on a shared 2-core machine (interleaved paired rounds, the order alternating; the four
-- triggers as before = on, disabled = off, in this form = one column):
-- - pgbench, the bench's write shape (-M prepared, one pipeline of set_config(role, claims) and the
--   upsert, as authenticated, onto existing rows; the stamp trigger on, the broadcast trigger off),
--   1 client, 10 rounds of 5 s, medians of the per-round ratios to off: on, tps 0.91 (0.82-1.44),
--   backend CPU per write +31 us (1.16); one column, tps 1.01 (0.85-1.46), CPU +6 us (1.03); no WHEN at
--   all (a call per write, each setting search_path), tps 0.94, CPU +16 us. 4 clients (8 rounds): tps
--   on 0.94, one column 1.00, within the noise of a machine this loaded.
-- - one backend, 20000 single-row UPDATEs from a loop (CPU from /proc/self/stat), 6 rounds: on +27 us
--   per statement (15.5-31.5), one column +1.3 (-0.5-6.5), no WHEN +6.5; the same 20000 rows in ONE
--   statement: on +0 us per row, one column -0.3, no WHEN +6.0. The cost is per statement, not per row.
--
-- The triggers keep their names: BEFORE triggers fire in name order, the marked pair (new.cleared)
-- before the sent pair (old.cleared), each raising one before the one that changes the row, and all
-- four before reading_progress_stamp. Each function now starts with its rule's whole former WHEN
-- test (no effect, the row returned as it came, when it is false): the same rows act as before. pgTAP
-- 022 checks the definitions; 016 and 018 the rules.
--
-- Idempotent (CREATE OR REPLACE, DROP TRIGGER IF EXISTS). local/test.ts re-runs it after the two
-- migrations it restates.

create or replace function private.reading_progress_reset_sent_with_position() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- A row kept cleared (cleared named true) under a non-zero position: `cleared: true` sent with one.
  if old.cleared and new.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0) then
    -- As the check itself would answer (PostgREST: 400, its code and constraint in the body).
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
revoke all on function private.reading_progress_reset_sent_with_position() from public, anon, authenticated;

create or replace function private.reading_progress_reset_superseded() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- A position written onto a reset without `cleared` (it kept the stored true): reading again.
  if old.cleared and new.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0) then
    new.cleared := false;
  end if;
  return new;
end;
$$;
revoke all on function private.reading_progress_reset_superseded() from public, anon, authenticated;

create or replace function private.reading_progress_reset_marked_with_position() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- A row marked reset with a non-zero position among the statement's SET columns.
  if new.cleared and not old.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0) then
    -- As the check itself would answer (PostgREST: 400, its code and constraint in the body).
    raise exception using
      errcode = '23514',
      message = 'new row for relation "reading_progress" violates check constraint "reading_progress_cleared_is_zero"',
      constraint = 'reading_progress_cleared_is_zero',
      table = 'reading_progress',
      schema = 'public',
      hint = 'A reset (cleared: true) has chapter, page and percentage 0: send it without them, or with 0.';
  end if;
  return new;
end;
$$;
revoke all on function private.reading_progress_reset_marked_with_position() from public, anon, authenticated;

create or replace function private.reading_progress_reset_marked_zeroes_position() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  -- A row marked reset over its stored, non-zero position (left out of the SET columns): the reset.
  if new.cleared and not old.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0)
     and (new.chapter, new.page, new.percentage) is not distinct from (old.chapter, old.page, old.percentage)
  then
    new.chapter := 0;
    new.page := 0;
    new.percentage := 0;
  end if;
  return new;
end;
$$;
revoke all on function private.reading_progress_reset_marked_zeroes_position() from public, anon, authenticated;

drop trigger if exists reading_progress_reset_marked_with_position on public.reading_progress;
create trigger reading_progress_reset_marked_with_position
  before update of chapter, page, percentage on public.reading_progress
  for each row
  when (new.cleared)
  execute function private.reading_progress_reset_marked_with_position();

drop trigger if exists reading_progress_reset_marked_zeroes_position on public.reading_progress;
create trigger reading_progress_reset_marked_zeroes_position
  before update on public.reading_progress
  for each row
  when (new.cleared)
  execute function private.reading_progress_reset_marked_zeroes_position();

drop trigger if exists reading_progress_reset_sent_with_position on public.reading_progress;
create trigger reading_progress_reset_sent_with_position
  before update of cleared on public.reading_progress
  for each row
  when (old.cleared)
  execute function private.reading_progress_reset_sent_with_position();

drop trigger if exists reading_progress_reset_superseded on public.reading_progress;
create trigger reading_progress_reset_superseded
  before update on public.reading_progress
  for each row
  when (old.cleared)
  execute function private.reading_progress_reset_superseded();
