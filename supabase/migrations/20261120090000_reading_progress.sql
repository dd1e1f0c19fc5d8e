-- reading_progress: where each user is in each series, one row per (user, series).
--
-- The task list says this table "already exists from Story 2-5"; this repository starts empty, so
-- this migration creates it. Triggers, policies and query indexes come in migration 012
-- (20261120090100_realtime_setup.sql). RLS is enabled here, in the same migration as the table, so
-- the table is never exposed: until the policies exist it is deny-all for API roles.
--
-- Last-write-wins key: (updated_at, device_id). updated_at is when the progress happened on the
-- device (not when the server saw it); device_id breaks exact ties. Both are compared byte-wise
-- (collate "C", ASCII-only ids) so SQL and the TypeScript ConflictResolver order them identically.
-- synced_at / change_xid are server-side: when, and in which transaction, the row last changed;
-- change_xid is the gap-free cursor for "changes since" (see migration 012).

create table if not exists public.reading_progress (
  user_id uuid not null references auth.users (id) on delete cascade,
  series_id text collate "C" not null
    constraint reading_progress_series_id_format check (series_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
  chapter integer not null default 0
    constraint reading_progress_chapter_range check (chapter between 0 and 100000),
  page integer not null default 0
    constraint reading_progress_page_range check (page between 0 and 1000000),
  -- Fraction of the series read, 0..1 (NaN fails the check too: NaN sorts above 1).
  percentage double precision not null default 0
    constraint reading_progress_percentage_range check (percentage >= 0 and percentage <= 1),
  -- Tombstone: the reader reset this series. It is a last-write-wins write like any other, so a
  -- stale offline write cannot resurrect cleared progress.
  cleared boolean not null default false,
  device_id text collate "C" not null
    constraint reading_progress_device_id_format check (device_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'),
  updated_at timestamptz not null default now(), -- 1970..9999 UTC: reading_progress_updated_at_range below
  synced_at timestamptz not null default now(),
  change_xid xid8 not null default pg_current_xact_id(),
  created_at timestamptz not null default now(),
  constraint reading_progress_pkey primary key (user_id, series_id),
  constraint reading_progress_cleared_is_zero
    check (not cleared or (chapter = 0 and page = 0 and percentage = 0))
);

-- updated_at lies in 1970..9999 UTC, as the API accepts (shared/progress/schemas.ts): '-infinity' or a
-- BC date through the Data API would be stored as sent (the stamp trigger clamps only future dates)
-- and no client could read the row back (JavaScript has no such Date). Far-future dates never get
-- here: the trigger records them as now(). Added here rather than inline so a table that predates
-- the check gets it too (this file stays idempotent).
do $$
begin
  if not exists (select 1 from pg_catalog.pg_constraint
                  where conrelid = 'public.reading_progress'::regclass
                    and conname = 'reading_progress_updated_at_range') then
    alter table public.reading_progress add constraint reading_progress_updated_at_range
      check (updated_at >= '1970-01-01 00:00:00+00' and updated_at < '10000-01-01 00:00:00+00');
  end if;
end;
$$;

comment on table public.reading_progress is
  'Reading position per user and series; last write wins on (updated_at, device_id).';
comment on column public.reading_progress.updated_at is
  'When the progress happened on the device (LWW key, ms precision, clamped to now() if in the future).';
comment on column public.reading_progress.synced_at is 'Server time of the last change (clock_timestamp()).';
comment on column public.reading_progress.change_xid is 'Transaction that last changed the row; cursor for changes since.';

alter table public.reading_progress enable row level security;

-- Supabase grants every API role everything on public by default; anon gets nothing here.
revoke all on table public.reading_progress from anon;
