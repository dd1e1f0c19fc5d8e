-- The refusal of `cleared: true` sent with a position has one hint on every path: a reset marked with a
-- position (reading_progress_reset_marked_with_position: a row not reset, `cleared` and a non-zero position
-- among the UPDATE's columns) now hints as the reset's other trigger, write_reading_progress and the stamp
-- trigger do, 'A reset (cleared: true) has chapter, page and percentage 0; a position is sent with cleared
-- false or without it.', instead of 'A reset (cleared: true) has chapter, page and percentage 0: send it
-- without them, or with 0.'.
--
-- Before, one refusal (23514 naming reading_progress_cleared_is_zero) came with two hints by whether the
-- stored row was a reset: through write_reading_progress, a newer such write onto a position got the
-- marked trigger's, onto a reset the sent trigger's, and a stale one the function's own (the sent one's).
-- Nothing reads the hint: the progress function and shared/ map the error by its SQLSTATE (422
-- constraint_violation), no test or client compares it; PostgREST passes it on as the body's "hint". The
-- text kept is the one three of the four places had; its first half says what a reset is, its second
-- what to send for a position, so it serves the marked case too. An INSERT with `cleared` and a
-- position, a Data API upsert's (.upsert()) included whether the row is stored or not (PostgreSQL checks
-- an upsert's INSERT half before it meets the stored row), is refused by the table's check itself, without
-- a hint (no trigger is involved). pgTAP 037.
--
-- Only the function's hint changes; the rest is …_reset_rule_triggers_one_column_when.sql's function (its
-- trigger is left as it is). Idempotent (CREATE OR REPLACE keeps the trigger; the revoke is repeated).
-- local/test.ts re-runs it after the migrations that restate the function.

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
      hint = 'A reset (cleared: true) has chapter, page and percentage 0; a position is sent with cleared false or without it.';
  end if;
  return new;
end;
$$;
revoke all on function private.reading_progress_reset_marked_with_position() from public, anon, authenticated;
