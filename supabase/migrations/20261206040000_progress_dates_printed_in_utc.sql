-- Dates a writing session prints for others are printed in UTC, whatever that session's TimeZone.
--
-- Two trigger functions print a row's dates as text for someone else to read later:
-- reading_progress_broadcast (realtime.broadcast_changes: the record/old_record every device of the
-- user receives) and reading_progress_remember_deletion (to_jsonb(old) into reading_progress_
-- deletions.version, which the changes read hands back as stored). PostgreSQL prints a timestamptz in
-- the session's TimeZone, and the session was the writer's: a Data API client's takes its role's
-- TimeZone (ALTER ROLE ... SET timezone; PostgREST's Prefer: timezone=... too), a SQL editor the
-- database's. A zone whose offset has seconds (Africa/Monrovia before 1972 prints -00:44:30) is read
-- by neither Date nor the clients' schemas: a row dated 1971 written or deleted in such a session was
-- broadcast in a form every device refused, and its remembered deletion made every later changes
-- read of that user answer 500 through the progress function (whose own transactions run in UTC).
-- Now both functions run with TimeZone UTC (a SET clause: the writer's session is left as it was),
-- as the progress function's reads do; every offset they print is +00:00.
--
-- Deletions remembered before this migration under another zone are printed again in UTC (the same
-- instants; only the text of updated_at, synced_at and created_at changes), so the changes read can
-- report them too.
--
-- Idempotent (ALTER FUNCTION ... SET, and an UPDATE that finds nothing left to change on a re-run).

alter function public.reading_progress_broadcast() set timezone to 'UTC';
alter function private.reading_progress_remember_deletion() set timezone to 'UTC';

-- Printed in UTC by a function of this migration's own, dropped at once (a set_config here would
-- change the zone of the rest of the migrating transaction).
create or replace function private.reading_progress_version_in_utc(p_version jsonb) returns jsonb
language sql
set search_path = ''
set timezone to 'UTC'
as $$
  select p_version || pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
    'updated_at', pg_catalog.to_jsonb((p_version ->> 'updated_at')::timestamptz),
    'synced_at', pg_catalog.to_jsonb((p_version ->> 'synced_at')::timestamptz),
    'created_at', pg_catalog.to_jsonb((p_version ->> 'created_at')::timestamptz)));
$$;

update public.reading_progress_deletions d
   set version = private.reading_progress_version_in_utc(d.version)
 where d.version is distinct from private.reading_progress_version_in_utc(d.version);

drop function private.reading_progress_version_in_utc(jsonb);
