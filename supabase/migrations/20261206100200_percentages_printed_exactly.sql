-- Percentages a function prints for others are printed exactly, whatever the session's
-- extra_float_digits.
--
-- PostgreSQL prints a double precision (to_jsonb and jsonb_build_object too) by extra_float_digits:
-- above 0 (the default, 1) the shortest text that reads back as the same number; at 0 or below only
-- 15 + extra_float_digits significant digits. A project may set it for its database or a role (ALTER
-- DATABASE ... SET extra_float_digits = 0, as older tools advised for stable output), and then every
-- answer built as JSON in SQL held a rounded percentage (0.12345678901234568 as 0.123456789012346, at
-- -15 as 0.1): write_reading_progress's stored row (the progress function's answers and /rpc/), the
-- changes read, every broadcast of a row (realtime.broadcast_changes builds its payload in the
-- writer's session), and a remembered deletion's version, stored as text for good. A device that took
-- such a row for the stored version held another position than the server's: sent again under the same
-- key it is no replay but "the same key with another position", landed 1 ms later.
--
-- Now these four functions run with extra_float_digits 1 (a SET clause: the caller's session is left
-- as it was), as migration …_progress_dates_printed_in_utc.sql pins their dates' TimeZone; the progress
-- function's store sets it for its own reads (get and list print rows with to_jsonb in its statement).
-- write_reading_progress_batch prints through write_reading_progress. pgTAP 017,
-- tests/functions/progress_store_float_digits.test.ts. Values stored before this migration are not
-- touched: a remembered deletion printed under a rounding setting keeps its digits (they are lost).
--
-- Idempotent (ALTER FUNCTION ... SET).

alter function public.write_reading_progress(text, integer, integer, double precision, boolean, text, timestamptz)
  set extra_float_digits to 1;
alter function public.reading_progress_changes(text, integer) set extra_float_digits to 1;
alter function public.reading_progress_broadcast() set extra_float_digits to 1;
alter function private.reading_progress_remember_deletion() set extra_float_digits to 1;
