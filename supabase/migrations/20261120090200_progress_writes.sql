-- Migration 013 (progress writes): the progress API's SQL. Why SQL: last-write-wins must be decided
-- where it cannot race, i.e. inside the single statement that writes the row.
--
-- * public.write_reading_progress(...)         one write. SECURITY INVOKER, so RLS on reading_progress
--   stays in force; the user is auth.uid(), never a parameter. A strictly newer updated_at (the
--   common case) is decided and written by one UPDATE ... WHERE stored updated_at < incoming; else
--   the decision is UPDATE ... WHERE (incoming key) > (stored key), run on the stored row after
--   SELECT ... FOR UPDATE locked it. Both compare against the newest committed version (an UPDATE
--   re-checks its WHERE after waiting for a concurrent writer) and concurrent writers serialise
--   (no row yet: INSERT ... ON CONFLICT DO NOTHING, and a lost insert race locks the winner's row).
--   Returns {won, conflict, conflict_with, progress}: a losing device gets the current row at once
--   and converges.
-- * public.write_reading_progress_batch(jsonb) 1..100 writes in one call, each resolved on its own.
-- * public.reading_progress_conflicts          log of every refused or replaced write ('stale' / 'tie', and
--                                               'self': a write older than its own device's), loser and winner.
-- * private.log_reading_progress_conflict(...) the only way rows get into that log; the AFTER UPDATE
--   trigger reading_progress_log_replaced_tie logs every replaced same-millisecond write through it.
-- * public.reading_progress_deletions          the last hard DELETE per series (an AFTER DELETE trigger),
--   so "changes since" tells devices that were offline or polling.
-- * public.get_reading_progress / list_reading_progress / reading_progress_changes: the reads.
-- * private.reading_progress_adopt_restored_rows() run once after a logical restore from another project;
--   it also draws a new private.reading_progress_cursor_origin, so every older changes cursor starts over.
--
-- The key. (updated_at, device_id), compared byte-wise (collate "C"; ids are ASCII). The incoming
-- updated_at is normalised exactly as the BEFORE trigger of migration 012 normalises it (NULL ->
-- now(), more than 5 s after the wall clock -> now(), then truncated to milliseconds) BEFORE it is compared,
-- so the key that is compared is the key that gets stored. A write dated more than 5 s ahead (a
-- device clock ahead) is newer by its own date than every stored version, so it always wins, and it
-- is stored at greatest(now(), stored updated_at + 1 ms), as the trigger stores it: two such writes
-- (say, a batch from a phone whose clock runs an hour ahead) never share a key, the later one wins.
-- Such a write has no stable key, so its retry is a new write (and wins again). "Ahead" is judged
-- against the wall clock (clock_timestamp()), never the transaction's start, and once more when the
-- write has its row locked: one that waited so long that it is no longer more than 5 s ahead is
-- decided and stored by its own date (the stamp trigger judges it the same way, after the same wait).
--
-- Outcomes of a write, for the stored key S and the normalised incoming key I:
--   no row yet                                -> inserted;   won = true,  conflict = null
--   I > S, newer updated_at                   -> updated;    won = true,  conflict = null
--   I > S, same updated_at, larger device_id  -> updated;    won = true,  conflict = 'tie', logged
--                                                (the replaced write lost the tie)
--   I = S, same position -> replay of the same write: no-op (no UPDATE, so no broadcast), the same
--            answer as the first time (won = true, the stored row, and conflict 'tie' again if that
--            write had replaced a same-millisecond one)
--   I = S, another position -> the same device's later position under a reused key (two positions
--            in one millisecond, or the key the server gave its earlier write dated ahead): updated,
--            stored 1 ms after S; won = true, conflict = null. Its retry (S = I + 1 ms, same device
--            and position) gets the same answer. A third position under I meets S + 1 ms and is
--            taken for an older write of the device ('self' below): the key a version was sent with
--            is not kept (README, Schema decisions).
--   I < S, same updated_at, smaller device_id -> no change;  won = false, conflict = 'tie',   logged
--   I < S, S written by the same device       -> no change;  won = false, conflict = null, logged as
--            'self': the device overtook itself (a retry whose answer was lost, once the device wrote
--            again; a retried batch with two writes of one series), which is no conflict between
--            devices, so the answer names none; the log keeps it (kind 'self', apart from the
--            conflicts) because a device whose clock went back loses a newer position the same way.
--            (A retry of a write landed 1 ms after a reused key is answered "won", above.)
--   I < S, older updated_at                   -> no change;  won = false, conflict = 'stale', logged
-- So every same-millisecond meeting of two different writes is logged, whichever arrived first, and
-- every stale write that is rejected. (An older write that is simply replaced by a newer one is
-- ordinary progress, not a conflict.) conflict_with is the key of the other write of a conflict.
-- A reset is a tombstone write (cleared = true, position zeros) and wins or loses like any write.
--
-- Idempotent: every object is created with IF NOT EXISTS / OR REPLACE, policies are dropped and
-- re-created. Running the file twice leaves the same schema.

-- ---------------------------------------------------------------------------------------------
-- Private schema: helpers that must not be reachable through the Data API (only `public` and
-- `graphql_public` are exposed, see config.toml [api].schemas). Supabase's guides put helpers in a
-- schema of this name too: a project that already has one keeps its own grants (anon may call its
-- own helpers there); ours are closed to anon function by function (revoke ... from public, anon).
-- ---------------------------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_catalog.pg_namespace where nspname = 'private') then
    create schema private;
    revoke all on schema private from public, anon;
  end if;
end
$$;
grant usage on schema private to authenticated, service_role;

-- The trigger's normalisation of updated_at (migration 012, reading_progress_stamp), as a function so
-- the write path compares the same value the trigger will store. Keep both in step. Volatile: it reads
-- the wall clock (the trigger, later, reads a later one; a key within 5 s of this reading is within
-- 5 s of that one too).
-- plpgsql, not LANGUAGE sql: a SQL function with SET search_path is never inlined, and called from
-- plpgsql its parsed and planned body lasted one transaction, so every write re-planned it; plpgsql
-- keeps the expression's plan per session (docs/benchmarks.md, write path: the API's function).
-- Replacing a function's language keeps its grants.
create or replace function private.reading_progress_normalize_updated_at(p_updated_at timestamptz)
returns timestamptz
language plpgsql
volatile
set search_path = ''
as $$
begin
  return pg_catalog.date_trunc(
    'milliseconds',
    case
      when p_updated_at is null or p_updated_at > pg_catalog.clock_timestamp() + interval '5 seconds'
        then pg_catalog.now()
      else p_updated_at
    end
  );
end;
$$;
revoke all on function private.reading_progress_normalize_updated_at(timestamptz) from public, anon;
grant execute on function private.reading_progress_normalize_updated_at(timestamptz) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Conflict log. One row per conflict between two different writes of one series: the losing write
-- and the winning one. `rejected` says which arrived last: true, the loser arrived and was refused
-- (stale, or a tie against the stored row); false, the loser was the stored row and an arriving tie
-- winner replaced it. Users may SELECT their own rows (a client can show "another device was
-- further"); nobody may INSERT/UPDATE directly: rows come only from
-- private.log_reading_progress_conflict, which logs for auth.uid() and checks the conflict against
-- the stored row. service_role may read and delete (retention); anon gets nothing.
-- ---------------------------------------------------------------------------------------------
create table if not exists public.reading_progress_conflicts (
  id bigint generated always as identity primary key,
  user_id uuid not null references auth.users (id) on delete cascade,
  series_id text collate "C" not null,
  kind text not null constraint reading_progress_conflicts_kind check (kind in ('stale', 'tie', 'self')),
  rejected boolean not null,
  losing_updated_at timestamptz not null,
  losing_device_id text collate "C" not null,
  losing_chapter integer not null,
  losing_page integer not null,
  losing_percentage double precision not null,
  losing_cleared boolean not null,
  winning_updated_at timestamptz not null,
  winning_device_id text collate "C" not null,
  winning_chapter integer not null,
  winning_page integer not null,
  winning_percentage double precision not null,
  winning_cleared boolean not null,
  created_at timestamptz not null default now(), -- the log function sets the wall clock of logging
  constraint reading_progress_conflicts_loser_below_winner
    check ((losing_updated_at, losing_device_id) < (winning_updated_at, winning_device_id)),
  constraint reading_progress_conflicts_kind_matches
    check ((kind = 'tie') = (losing_updated_at = winning_updated_at)),
  -- A retried losing write (client retry after a timeout, a replay) loses against the same row
  -- again: one log row per (loser, winner), not one per attempt. The unique index this creates is
  -- also what "conflicts of one series" reads use (it leads with user_id, series_id).
  constraint reading_progress_conflicts_once
    unique (user_id, series_id, losing_updated_at, losing_device_id, winning_updated_at, winning_device_id)
);

-- 'self' joined the kinds later: a log table made by an earlier version of this file keeps its old
-- check until it is replaced here (idempotent: skipped once the check names 'self').
do $$
begin
  if not exists (select 1 from pg_catalog.pg_constraint
                  where conname = 'reading_progress_conflicts_kind'
                    and conrelid = 'public.reading_progress_conflicts'::regclass
                    and pg_catalog.pg_get_constraintdef(oid) like '%self%') then
    alter table public.reading_progress_conflicts drop constraint if exists reading_progress_conflicts_kind;
    alter table public.reading_progress_conflicts add constraint reading_progress_conflicts_kind
      check (kind in ('stale', 'tie', 'self'));
  end if;
end
$$;

-- The losing side must be a version reading_progress itself could hold (its CHECKs, column by
-- column): a refused write is logged before any of reading_progress's checks run (the stamp trigger
-- skips the row, write_reading_progress returns early), so without this a stale write carrying a
-- 100 kB device id, NaN or -infinity was stored in the log and shown to the user's devices. Such a
-- write is now refused (23514) on every path instead of logged. Added NOT VALID: log rows written
-- before this check stay readable; every new row is checked. Idempotent (re-runs skip it).
do $$
begin
  if not exists (select 1 from pg_catalog.pg_constraint
                  where conname = 'reading_progress_conflicts_loser_valid'
                    and conrelid = 'public.reading_progress_conflicts'::regclass) then
    alter table public.reading_progress_conflicts add constraint reading_progress_conflicts_loser_valid check (
      losing_device_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$'
      and losing_chapter between 0 and 100000
      and losing_page between 0 and 1000000
      and losing_percentage >= 0 and losing_percentage <= 1
      and (not losing_cleared or (losing_chapter = 0 and losing_page = 0 and losing_percentage = 0))
      and losing_updated_at >= '1970-01-01 00:00:00+00' and losing_updated_at < '10000-01-01 00:00:00+00'
    ) not valid;
  end if;
end
$$;

comment on table public.reading_progress_conflicts is
  'Last-write-wins conflicts on reading_progress (stale writes rejected, same-millisecond ties; ''self'': a write older than its own device''s stored one, no conflict), written only by private.log_reading_progress_conflict.';

alter table public.reading_progress_conflicts enable row level security;

revoke all on table public.reading_progress_conflicts from public, anon, authenticated, service_role;
grant select on table public.reading_progress_conflicts to authenticated;
grant select, delete on table public.reading_progress_conflicts to service_role;
-- The identity's sequence too: Supabase's default privileges grant every API role USAGE, SELECT
-- and UPDATE on new sequences, and setval() to its maximum would make every later conflict log,
-- and with it every stale write, fail for all users. Only the log function (its owner) draws ids.
revoke all on sequence public.reading_progress_conflicts_id_seq from public, anon, authenticated, service_role;

drop policy if exists reading_progress_conflicts_select_own on public.reading_progress_conflicts;
create policy reading_progress_conflicts_select_own on public.reading_progress_conflicts
  for select to authenticated
  using ((select auth.uid()) = user_id);

-- Logs a conflict for auth.uid() in which the given write LOST, and returns its kind ('stale' |
-- 'tie' | 'self'), or null when the stored row shows no such conflict (then nothing is logged).
--   p_rejected = true:  the given write arrived and lost against the stored row (stored key greater).
--   p_rejected = false: the given write was the stored row and was replaced in THIS transaction by a
--                       write of the same millisecond and a greater device id (the stored row now).
-- SECURITY DEFINER because nobody else may insert into the log; it re-reads the stored row itself,
-- so even a direct call can only log a conflict the stored row confirms. Callers: write_reading_progress
-- (a refused write, while holding the row lock), migration 012's stamp trigger (a refused direct
-- UPDATE) and the trigger reading_progress_log_replaced_tie below (p_rejected = false).
-- search_path = pg_catalog, pg_temp: the temporary schema last, as for every definer function here
-- (why: migration 012, reading_progress_broadcast).
drop function if exists private.log_reading_progress_conflict(text, integer, integer, double precision, boolean, text, timestamptz);
create or replace function private.log_reading_progress_conflict(
  p_series_id text,
  p_chapter integer,
  p_page integer,
  p_percentage double precision,
  p_cleared boolean,
  p_device_id text,
  p_updated_at timestamptz,
  p_rejected boolean
) returns text
language plpgsql
volatile
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_uid uuid := auth.uid();
  v_key timestamptz := private.reading_progress_normalize_updated_at(p_updated_at);
  v_current public.reading_progress;
  v_kind text;
begin
  if v_uid is null then
    raise exception using errcode = '42501', message = 'log_reading_progress_conflict: no authenticated user';
  end if;

  select rp.* into v_current
  from public.reading_progress rp
  where rp.user_id = v_uid and rp.series_id = p_series_id collate "C";
  if not found then
    return null;
  end if;
  if (v_key, p_device_id collate "C") >= (v_current.updated_at, v_current.device_id collate "C") then
    return null; -- the same write (replay) or a newer one: it did not lose
  end if;
  if not coalesce(p_rejected, true)
     and (v_current.updated_at <> v_key or v_current.change_xid <> pg_catalog.pg_current_xact_id()) then
    return null; -- not a same-millisecond replacement made by this transaction
  end if;

  if coalesce(p_rejected, true) and v_current.device_id = p_device_id collate "C"
     and v_current.updated_at = v_key + interval '1 millisecond'
     and (v_current.chapter, v_current.page, v_current.percentage, v_current.cleared)
         is not distinct from (p_chapter, p_page, p_percentage, coalesce(p_cleared, false)) then
    -- A retry of a write landed 1 ms after the key it reused (write_reading_progress answers it
    -- "won"; a direct UPDATE of it is refused): the stored row is that write, nothing was lost.
    return null;
  end if;
  -- 'self': older than its own device's stored write (strictly: the same key is a replay, above).
  v_kind := case when v_current.device_id = p_device_id collate "C" then 'self'
                 when v_key = v_current.updated_at then 'tie' else 'stale' end;
  -- created_at is the wall clock of logging. The same pair of keys met again in a later life of the
  -- row (deleted and written again) is a new conflict: the old row, logged before that deletion, is
  -- taken over; within one life a retried loser changes nothing.
  insert into public.reading_progress_conflicts as c (
    user_id, series_id, kind, rejected,
    losing_updated_at, losing_device_id, losing_chapter, losing_page, losing_percentage, losing_cleared,
    winning_updated_at, winning_device_id, winning_chapter, winning_page, winning_percentage, winning_cleared,
    created_at
  ) values (
    v_uid, p_series_id, v_kind, coalesce(p_rejected, true),
    v_key, p_device_id, p_chapter, p_page, p_percentage, coalesce(p_cleared, false),
    v_current.updated_at, v_current.device_id, v_current.chapter, v_current.page, v_current.percentage,
    v_current.cleared, pg_catalog.clock_timestamp()
  )
  on conflict on constraint reading_progress_conflicts_once do update
    set kind = excluded.kind, rejected = excluded.rejected,
        losing_chapter = excluded.losing_chapter, losing_page = excluded.losing_page,
        losing_percentage = excluded.losing_percentage, losing_cleared = excluded.losing_cleared,
        winning_chapter = excluded.winning_chapter, winning_page = excluded.winning_page,
        winning_percentage = excluded.winning_percentage, winning_cleared = excluded.winning_cleared,
        created_at = excluded.created_at
    -- the old row belongs to an earlier life: the series was deleted after it was logged
    where exists (select 1 from public.reading_progress_deletions d
                   where d.user_id = c.user_id and d.series_id = c.series_id and d.deleted_at > c.created_at);
  return v_kind;
end;
$$;
revoke all on function private.log_reading_progress_conflict(text, integer, integer, double precision, boolean, text, timestamptz, boolean)
  from public, anon;
grant execute on function private.log_reading_progress_conflict(text, integer, integer, double precision, boolean, text, timestamptz, boolean)
  to authenticated;

-- A same-millisecond write replaced by one from a greater device id lost a tie, on every path: the
-- API's function and direct Data API writes alike (RLS lets users update their rows; migration 012's
-- stamp trigger lets such an UPDATE land and logs the refused side itself). Only an AFTER trigger can
-- log this side: the log function confirms the conflict against the stored row, which must already be
-- the winner. The WHEN clause keeps every other UPDATE from calling anything (the common case, a newer
-- updated_at, costs two comparisons). Logged for users only (auth.uid() names whose log it is), as the
-- stamp trigger logs refused writes.
create or replace function private.reading_progress_log_replaced_tie() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_user = 'authenticated' then
    perform private.log_reading_progress_conflict(
      old.series_id, old.chapter, old.page, old.percentage, old.cleared, old.device_id, old.updated_at, false);
  end if;
  return null;
end;
$$;
revoke all on function private.reading_progress_log_replaced_tie() from public, anon, authenticated;

drop trigger if exists reading_progress_log_replaced_tie on public.reading_progress;
create trigger reading_progress_log_replaced_tie
  after update on public.reading_progress
  for each row
  when (new.updated_at = old.updated_at and new.device_id <> old.device_id)
  execute function private.reading_progress_log_replaced_tie();

-- ---------------------------------------------------------------------------------------------
-- One write. Returns jsonb {won, conflict, conflict_with, progress}: progress = the stored row after
-- the call; conflict_with = {updated_at, device_id} of the other write of a conflict, else null.
-- ---------------------------------------------------------------------------------------------
create or replace function public.write_reading_progress(
  p_series_id text,
  p_chapter integer,
  p_page integer,
  p_percentage double precision,
  p_cleared boolean,
  p_device_id text,
  p_updated_at timestamptz
) returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  -- Dated beyond the tolerance for clock skew: wins over any stored version (see the top).
  v_ahead boolean := p_updated_at > pg_catalog.clock_timestamp() + interval '5 seconds';
  -- The normalisation (reading_progress_normalize_updated_at) from the same reading of the wall
  -- clock: a second reading could find a write ahead that the first did not, or the other way round.
  v_key timestamptz := pg_catalog.date_trunc('milliseconds',
    case when p_updated_at is null or v_ahead then pg_catalog.now() else p_updated_at end);
  v_prev public.reading_progress;
  v_row public.reading_progress;
  v_conflict text;
  v_replaced_at timestamptz;
  v_replaced_device text;
begin
  if v_uid is null then
    raise exception using errcode = '42501', message = 'write_reading_progress: no authenticated user';
  end if;

  -- The common case first: a write with a strictly newer updated_at than the stored one replaces
  -- it, and nothing is logged (ordinary progress, not a conflict), so one UPDATE decides and writes.
  -- Under READ COMMITTED an UPDATE that meets a concurrently changed row waits for that writer and
  -- re-checks its WHERE against the committed version, so this compares against the newest row.
  -- A write dated beyond the tolerance goes the slow way below: whether it is still ahead is judged
  -- again once its row is locked.
  update public.reading_progress as rp
    set chapter = p_chapter,
        page = p_page,
        percentage = p_percentage,
        cleared = coalesce(p_cleared, false),
        device_id = p_device_id,
        updated_at = v_key
    where rp.user_id = v_uid and rp.series_id = p_series_id collate "C"
      and not v_ahead and rp.updated_at < v_key
  returning rp.* into v_row;
  if found then
    return pg_catalog.jsonb_build_object(
      'won', true, 'conflict', null, 'conflict_with', null, 'progress', pg_catalog.to_jsonb(v_row));
  end if;

  -- Everything else (no row yet, the same millisecond, a replay, an older write) needs the stored
  -- version itself, so lock it first. The UPDATE below then decides against exactly this version
  -- (nobody can change it until we commit), and when it replaces a write of the same millisecond we
  -- still know which one: that write lost a tie and is logged. (RETURNING shows only the new row
  -- in PostgreSQL 15.) No row yet: insert; if a concurrent writer inserted it first, lock theirs.
  loop
    select rp.* into v_prev
    from public.reading_progress rp
    where rp.user_id = v_uid and rp.series_id = p_series_id collate "C"
    for update;
    exit when found;

    insert into public.reading_progress as rp
      (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
    values
      (v_uid, p_series_id, p_chapter, p_page, p_percentage, coalesce(p_cleared, false), p_device_id, v_key)
    on conflict (user_id, series_id) do nothing
    returning rp.* into v_row;
    if found then
      if v_ahead and p_updated_at <= pg_catalog.clock_timestamp() + interval '5 seconds' then
        -- Judged again now that it is inserted: the INSERT may have waited for a concurrent first
        -- write of the series (an uncommitted insert of the same row) that then rolled back, and
        -- the write is no longer more than 5 s ahead of the wall clock: an ordinary write, decided
        -- by its own date. Stored at now() (the key an ahead write gets), a write dated in between
        -- would replace it although older. So it gets its own date here, in the same transaction
        -- (a second broadcast, UPDATE, follows the INSERT's; devices keep the later key). The Data
        -- API refuses such an INSERT for a retry instead (migration 012's claim, readsync.dated_ahead):
        -- its RETURNING has already answered.
        update public.reading_progress as rp
          set updated_at = pg_catalog.date_trunc('milliseconds', p_updated_at)
          where rp.user_id = v_uid and rp.series_id = p_series_id collate "C"
        returning rp.* into v_row;
      end if;
      return pg_catalog.jsonb_build_object(
        'won', true, 'conflict', null, 'conflict_with', null, 'progress', pg_catalog.to_jsonb(v_row));
    end if;
  end loop;

  -- "Ahead" was judged when the function began. A write that then waited (for this row's lock)
  -- may meet versions written meanwhile by devices whose clocks are right, dated after it: by the
  -- wall clock it is not ahead of them any more, so it is judged by its own date like any write (it
  -- would otherwise replace a newer one), as the stamp trigger will judge it.
  if v_ahead and p_updated_at <= pg_catalog.clock_timestamp() + interval '5 seconds' then
    v_ahead := false;
    v_key := pg_catalog.date_trunc('milliseconds', p_updated_at);
  end if;

  -- The decision: last write wins on (updated_at, device_id), in one statement, against the row
  -- locked above. A plain UPDATE, not INSERT ... ON CONFLICT: the row exists and cannot go away
  -- (a DELETE waits for our lock), and an upsert would first run the INSERT half for nothing (the
  -- BEFORE INSERT trigger, the insert policy and the checks on the would-be new row).
  update public.reading_progress as rp
    set chapter = p_chapter,
        page = p_page,
        percentage = p_percentage,
        cleared = coalesce(p_cleared, false),
        device_id = p_device_id,
        updated_at = case when v_ahead then greatest(v_key, rp.updated_at + interval '1 millisecond') else v_key end
    where rp.user_id = v_uid and rp.series_id = p_series_id collate "C"
      and (v_ahead or (v_key, p_device_id collate "C") > (rp.updated_at, rp.device_id collate "C"))
  returning rp.* into v_row;

  if found then
    if v_row.updated_at = v_prev.updated_at then
      -- Same millisecond, greater device id: the replaced write lost a tie (logged by the trigger
      -- reading_progress_log_replaced_tie, as for every UPDATE that replaces a same-millisecond write).
      v_conflict := 'tie';
    end if;
    return pg_catalog.jsonb_build_object(
      'won', true,
      'conflict', v_conflict,
      'conflict_with', case when v_conflict is null then null
        else pg_catalog.jsonb_build_object('updated_at', v_prev.updated_at, 'device_id', v_prev.device_id) end,
      'progress', pg_catalog.to_jsonb(v_row));
  end if;

  -- Not updated: the stored key (v_prev, still locked) is >= ours.
  if (v_prev.updated_at, v_prev.device_id collate "C") = (v_key, p_device_id collate "C")
     and (v_prev.chapter, v_prev.page, v_prev.percentage, v_prev.cleared)
         is distinct from (p_chapter, p_page, p_percentage, coalesce(p_cleared, false)) then
    -- The stored version's key with another position is no replay: the device reused a key (two
    -- positions in one millisecond), or met the key the server gave its own earlier write dated
    -- ahead (stored as now()) once its clock was corrected. Either way it is that device's later
    -- position; answered "won" but dropped, it was lost without a word. It lands 1 ms after the
    -- version it met (the stamp trigger lands such a write from the Data API too, at now() or 1 ms
    -- after), and a retry of it is answered as the first time (below).
    update public.reading_progress as rp
      set chapter = p_chapter,
          page = p_page,
          percentage = p_percentage,
          cleared = coalesce(p_cleared, false),
          updated_at = rp.updated_at + interval '1 millisecond'
      where rp.user_id = v_uid and rp.series_id = p_series_id collate "C"
    returning rp.* into v_row;
    return pg_catalog.jsonb_build_object(
      'won', true, 'conflict', null, 'conflict_with', null, 'progress', pg_catalog.to_jsonb(v_row));
  end if;
  if (v_prev.updated_at, v_prev.device_id collate "C") = (v_key + interval '1 millisecond', p_device_id collate "C")
     and (v_prev.chapter, v_prev.page, v_prev.percentage, v_prev.cleared)
         is not distinct from (p_chapter, p_page, p_percentage, coalesce(p_cleared, false)) then
    -- A retry of a write that landed 1 ms after the version it met (above), still stored: the same
    -- answer as the first time, not a stale write.
    return pg_catalog.jsonb_build_object(
      'won', true, 'conflict', null, 'conflict_with', null, 'progress', pg_catalog.to_jsonb(v_prev));
  end if;
  if (v_prev.updated_at, v_prev.device_id collate "C") = (v_key, p_device_id collate "C") then
    -- A replay of the stored write: the same answer as the first time. If that write replaced a
    -- same-millisecond one, the log remembers which (the user's own rows; RLS allows reading them).
    -- The same key may have won ties in earlier lives of the row too (deleted and written again):
    -- only one logged in this life counts (no deletion of the series after it was logged).
    select c.losing_updated_at, c.losing_device_id into v_replaced_at, v_replaced_device
    from public.reading_progress_conflicts c
    where c.user_id = v_uid and c.series_id = p_series_id collate "C" and not c.rejected
      and c.winning_updated_at = v_key and c.winning_device_id = p_device_id collate "C"
      and not exists (select 1 from public.reading_progress_deletions d
                       where d.user_id = c.user_id and d.series_id = c.series_id and d.deleted_at > c.created_at)
    order by c.created_at desc
    limit 1;
    return pg_catalog.jsonb_build_object(
      'won', true,
      'conflict', case when found then 'tie' end,
      'conflict_with', case when found
        then pg_catalog.jsonb_build_object('updated_at', v_replaced_at, 'device_id', v_replaced_device) end,
      'progress', pg_catalog.to_jsonb(v_prev));
  end if;

  v_conflict := private.log_reading_progress_conflict(
    p_series_id, p_chapter, p_page, p_percentage, p_cleared, p_device_id, v_key, true);
  if v_conflict = 'self' then
    -- Older than this device's own stored write: not stored, logged as 'self', and no conflict
    -- between devices to name in the answer (see the top).
    return pg_catalog.jsonb_build_object(
      'won', false, 'conflict', null, 'conflict_with', null, 'progress', pg_catalog.to_jsonb(v_prev));
  end if;
  return pg_catalog.jsonb_build_object(
    'won', v_conflict is null,
    'conflict', v_conflict,
    'conflict_with', case when v_conflict is null then null
      else pg_catalog.jsonb_build_object('updated_at', v_prev.updated_at, 'device_id', v_prev.device_id) end,
    'progress', pg_catalog.to_jsonb(v_prev));
end;
$$;
revoke all on function public.write_reading_progress(text, integer, integer, double precision, boolean, text, timestamptz)
  from public, anon;
grant execute on function public.write_reading_progress(text, integer, integer, double precision, boolean, text, timestamptz)
  to authenticated;

-- ---------------------------------------------------------------------------------------------
-- Batch: p_writes is a JSON array of 1..100 objects {series_id, chapter, page, percentage, cleared,
-- device_id, updated_at}; returns a JSON array of {won, conflict, progress} in input order. Each
-- write is resolved on its own (writes to the same series apply in array order). Rows are locked in
-- (series_id, position) order, so two concurrent batches cannot deadlock on each other. The batch is
-- one transaction: an invalid element (a check violation) fails the whole call.
-- ---------------------------------------------------------------------------------------------
create or replace function public.write_reading_progress_batch(p_writes jsonb)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  v_count integer;
  v_results jsonb[];
  v_write record;
begin
  if p_writes is null or pg_catalog.jsonb_typeof(p_writes) <> 'array' then
    raise exception using errcode = '22023', message = 'write_reading_progress_batch: p_writes must be a JSON array';
  end if;
  v_count := pg_catalog.jsonb_array_length(p_writes);
  if v_count < 1 or v_count > 100 then
    raise exception using errcode = '22023',
      message = pg_catalog.format('write_reading_progress_batch: 1..100 writes per call, got %s', v_count);
  end if;

  v_results := pg_catalog.array_fill(null::jsonb, array[v_count]);
  for v_write in
    select e.w, e.pos
    from pg_catalog.jsonb_array_elements(p_writes) with ordinality as e(w, pos)
    order by (e.w ->> 'series_id') collate "C", e.pos
  loop
    if pg_catalog.jsonb_typeof(v_write.w) <> 'object' then
      raise exception using errcode = '22023',
        message = pg_catalog.format('write_reading_progress_batch: element %s is not an object', v_write.pos);
    end if;
    v_results[v_write.pos] := public.write_reading_progress(
      v_write.w ->> 'series_id',
      (v_write.w ->> 'chapter')::integer,
      (v_write.w ->> 'page')::integer,
      (v_write.w ->> 'percentage')::double precision,
      coalesce((v_write.w ->> 'cleared')::boolean, false),
      v_write.w ->> 'device_id',
      (v_write.w ->> 'updated_at')::timestamptz);
  end loop;
  return pg_catalog.to_jsonb(v_results);
end;
$$;
revoke all on function public.write_reading_progress_batch(jsonb) from public, anon;
grant execute on function public.write_reading_progress_batch(jsonb) to authenticated;

-- ---------------------------------------------------------------------------------------------
-- Hard deletes, remembered for "changes since". The API never hard-deletes (a reset is a tombstone
-- write), but RLS lets a user DELETE their own rows, and the dashboard or an admin script may too.
-- Realtime broadcasts the DELETE; a device that was offline, or polling while Realtime was down,
-- learns of it here: the deleted version is kept, one row per (user, series) holding that series'
-- last deletion, with the deleting transaction as its place in the changes order. The changes read
-- returns it (marked "deleted": true) while the series has no row; a row inserted later is a newer
-- life (created_at) and supersedes it, on the server and on every device.
-- Written only by the AFTER DELETE trigger below (SECURITY DEFINER); users may SELECT their own rows;
-- service_role may read and delete (retention); anon gets nothing. Indexes: the primary key (the
-- trigger's upsert) and (user_id, deleted_xid) for the changes read; nothing else reads it.
-- ---------------------------------------------------------------------------------------------
create table if not exists public.reading_progress_deletions (
  user_id uuid not null references auth.users (id) on delete cascade,
  series_id text collate "C" not null,
  -- The deleting transaction: the same kind of cursor as reading_progress.change_xid.
  deleted_xid xid8 not null,
  deleted_at timestamptz not null,
  -- The row as it was when deleted (to_jsonb: what the DELETE broadcast carries as old_record).
  version jsonb not null,
  constraint reading_progress_deletions_pkey primary key (user_id, series_id)
);

comment on table public.reading_progress_deletions is
  'Last hard DELETE per (user, series) of reading_progress, so "changes since" can report it; written only by a trigger.';

alter table public.reading_progress_deletions enable row level security;

revoke all on table public.reading_progress_deletions from public, anon, authenticated, service_role;
grant select on table public.reading_progress_deletions to authenticated;
grant select, delete on table public.reading_progress_deletions to service_role;

drop policy if exists reading_progress_deletions_select_own on public.reading_progress_deletions;
create policy reading_progress_deletions_select_own on public.reading_progress_deletions
  for select to authenticated
  using ((select auth.uid()) = user_id);

create index if not exists reading_progress_deletions_user_xid_idx
  on public.reading_progress_deletions (user_id, deleted_xid);

create or replace function private.reading_progress_remember_deletion() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  -- Deleting a user takes their progress along (ON DELETE CASCADE): their auth.users row is already
  -- gone, nothing may reference it, and no device of theirs is left to tell.
  if not exists (select 1 from auth.users u where u.id = old.user_id) then
    return null;
  end if;
  insert into public.reading_progress_deletions as d (user_id, series_id, deleted_xid, deleted_at, version)
  values (old.user_id, old.series_id, pg_catalog.pg_current_xact_id(), pg_catalog.clock_timestamp(),
          pg_catalog.to_jsonb(old))
  on conflict (user_id, series_id) do update
    set deleted_xid = excluded.deleted_xid, deleted_at = excluded.deleted_at, version = excluded.version;
  return null;
end;
$$;
revoke all on function private.reading_progress_remember_deletion() from public, anon, authenticated;

drop trigger if exists reading_progress_remember_deletion on public.reading_progress;
create trigger reading_progress_remember_deletion
  after delete on public.reading_progress
  for each row execute function private.reading_progress_remember_deletion();

-- A new life must begin after the one deleted before it: clients order lives by created_at
-- (shared/realtime/progressMerge.ts). The stamp trigger takes created_at from the clock BEFORE the
-- INSERT, which may then wait for a concurrent transaction holding the same key (an uncommitted
-- insert); if that transaction deletes the series, inserts and deletes it again and commits, the
-- waiting INSERT goes through with a created_at older than the lives deleted meanwhile, and every
-- device drops it as an older life for good. Such an INSERT fails with 40001 (serialization
-- failure): the progress function retries it, with a created_at after the deletion; a Data API
-- client sees a retryable 40001 and sends it again. Nothing else of that kind is refused: the stamp
-- trigger places a new life after the remembered deletion (even after a clock step back).
-- (An INSERT judged more than 5 s ahead before such a wait is judged again by migration 012's
-- triggers, through the claim it leaves: see reading_progress_stamp.)
create or replace function private.reading_progress_new_life_after_deletion() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if exists (select 1 from public.reading_progress_deletions d
              where d.user_id = new.user_id and d.series_id = new.series_id
                and (d.version ->> 'created_at')::timestamptz > new.created_at) then
    raise exception using
      errcode = '40001',
      message = 'reading_progress: the series was deleted while this insert waited; retry it',
      hint = 'Retry the write: it will start a life after the deleted one.';
  end if;
  return null;
end;
$$;
revoke all on function private.reading_progress_new_life_after_deletion() from public, anon, authenticated;

drop trigger if exists reading_progress_new_life_after_deletion on public.reading_progress;
create trigger reading_progress_new_life_after_deletion
  after insert on public.reading_progress
  for each row execute function private.reading_progress_new_life_after_deletion();

-- ---------------------------------------------------------------------------------------------
-- Reads. All SECURITY INVOKER (RLS applies) and filtered on auth.uid() explicitly as well, so the
-- planner can use the indexes of migration 012 (and the deletions index above):
--   get      user_id = uid and series_id = $1                          -> reading_progress_pkey
--   list     user_id = uid and (updated_at, series_id) < ($ts, $series)
--            order by updated_at desc, series_id desc                  -> reading_progress_user_recent_idx
--            (index order = result order: no sort; the row comparison is the index condition)
--   changes  user_id = uid and (change_xid, series_id) > ($xid, $series)
--            order by change_xid, series_id                            -> reading_progress_user_changes_idx
--            (index condition change_xid >= $xid; the page is sorted on series_id after that)
--            + the same on reading_progress_deletions (deleted_xid)   -> reading_progress_deletions_user_xid_idx
-- Every user predicate is a plain comparison with a parameter, never COALESCE or CASE around a
-- column's bound: under RLS only leakproof conditions can become index conditions.
-- Limits are clamped (list 1..1000, changes 1..999 + 1 look-ahead row).
-- ---------------------------------------------------------------------------------------------
-- plpgsql, not sql: a LANGUAGE sql function with SET search_path is neither inlined nor plan-cached,
-- so its query was planned on every call (docs/benchmarks.md, reads); plpgsql keeps the plan per session.
create or replace function public.get_reading_progress(p_series_id text)
returns setof public.reading_progress
language plpgsql
stable
security invoker
set search_path = ''
as $$
begin
  return query
    select rp.*
    from public.reading_progress rp
    where rp.user_id = (select auth.uid()) and rp.series_id = p_series_id collate "C";
end;
$$;
revoke all on function public.get_reading_progress(text) from public, anon;
grant execute on function public.get_reading_progress(text) to authenticated;

-- Library, newest first. Keyset pagination: pass the (updated_at, series_id) of the last row of the
-- previous page as p_before_*; NULL = first page. Tombstones (cleared) only with p_include_cleared.
-- plpgsql so the cursor bound is a plain parameter: under RLS only leakproof conditions become
-- index conditions, and an expression like COALESCE($1, ...) would be applied as a filter instead.
create or replace function public.list_reading_progress(
  p_limit integer default 50,
  p_before_updated_at timestamptz default null,
  p_before_series_id text default null,
  p_include_cleared boolean default false
) returns setof public.reading_progress
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_limit integer := least(greatest(coalesce(p_limit, 50), 1), 1000);
  -- First page: a bound above every row. Later pages: strictly after the cursor row.
  v_before_at timestamptz := coalesce(p_before_updated_at, 'infinity'::timestamptz);
  v_before_series text := case when p_before_updated_at is null then '' else coalesce(p_before_series_id, '') end;
  v_include_cleared boolean := coalesce(p_include_cleared, false);
begin
  return query
    select rp.*
    from public.reading_progress rp
    where rp.user_id = v_uid
      and (rp.updated_at, rp.series_id) < (v_before_at, v_before_series collate "C")
      and (v_include_cleared or not rp.cleared)
    order by rp.updated_at desc, rp.series_id desc
    limit v_limit;
end;
$$;
revoke all on function public.list_reading_progress(integer, timestamptz, text, boolean) from public, anon;
grant execute on function public.list_reading_progress(integer, timestamptz, text, boolean) to authenticated;

-- Where cursors come from. The changes cursor's tag names the cluster that handed it out (below);
-- the system identifier alone names a cluster only where every project ran initdb of its own, and
-- copies of one data directory (a provider's prepared image, the local stack's initdb template)
-- share it. So the restore adoption (the end of this file), which a move by pg_dump and restore
-- needs anyway, also draws a new random origin here: every cursor handed out before it starts over,
-- whatever the system identifiers. One row at most; none until the first adoption (the tag is then
-- the system identifier's alone, as before this table). Readable by signed-in users, whose changes
-- reads compute the tag (SECURITY INVOKER); written only by the adoption (as the owner).
create table if not exists private.reading_progress_cursor_origin (
  singleton boolean primary key default true constraint reading_progress_cursor_origin_one_row check (singleton),
  origin text not null
);
comment on table private.reading_progress_cursor_origin is
  'Drawn anew by each restore adoption: part of the changes cursor''s tag, so older cursors start over.';
alter table private.reading_progress_cursor_origin enable row level security;
revoke all on table private.reading_progress_cursor_origin from public, anon, authenticated, service_role;
grant select on table private.reading_progress_cursor_origin to authenticated, service_role;
drop policy if exists reading_progress_cursor_origin_read on private.reading_progress_cursor_origin;
create policy reading_progress_cursor_origin_read on private.reading_progress_cursor_origin
  for select to authenticated, service_role
  using (true);

-- Changes since a cursor, gap-free. Returns jsonb {changes: [rows], next_cursor, has_more}.
-- A series whose row was hard-deleted (and not inserted again) appears as its deleted version with
-- "deleted": true, at the deleting transaction's place in the order: a series is either a row or a
-- deletion, so (xid, series_id) stays unique across both and the cursor below works for both.
--
-- Cursor: '<tag>.<xid>' = every row with change_xid >= xid; '<tag>.<xid>:<series_id>' = continue
-- after that row of page order (change_xid, series_id). '' or NULL = from the beginning. <tag> names
-- the cluster that handed the cursor out (8 hex digits of md5 of pg_control_system()'s
-- system_identifier, which a physical copy such as a replica or a point-in-time restore keeps, and of
-- the origin the last restore adoption drew, see reading_progress_cursor_origin; the origin alone where
-- pg_control_system() may not be called): transaction ids
-- mean nothing in another cluster, so a cursor of another (the project was moved by pg_dump and
-- restore, then adopted) starts over from the beginning. Cursors
-- without a tag (handed out before tags, or where pg_control_system() may not be called) are read
-- as before: one more than a million ids above this cluster's xmax starts over.
--
-- Why it cannot miss a change: the horizon H = pg_snapshot_xmin(pg_current_snapshot()) is read in the
-- same snapshot as the rows (a STABLE function runs all its queries in its caller's snapshot).
-- Every transaction below H has finished and is visible; one at or above H may still be in flight
-- and commit later with a change_xid >= H. So:
--   * the last page returns next_cursor = H: rows >= H are read again next time (duplicates are
--     fine, clients dedupe by the LWW key), and a write still in flight shows up then;
--   * a full page whose last row is below H continues with '<xid>:<series_id>' after that row:
--     below H nothing new can appear (every transaction below H has finished; a later write or
--     hard delete of a series carries the xid of a transaction at or above H);
--   * a full page that reaches H continues from H (re-reading rows >= H).
-- If a transaction stays open for long and more than p_limit rows are at or above H, the cursor
-- cannot move (next_cursor = the cursor sent, has_more = true): clients retry later.
create or replace function public.reading_progress_changes(p_cursor text default null, p_limit integer default 100)
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  v_uid uuid := auth.uid();
  v_limit integer := least(greatest(coalesce(p_limit, 100), 1), 999);
  v_horizon xid8 := pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot());
  v_system text;
  v_origin text;
  v_tag text;
  v_prefix text := '';
  v_parts text[];
  v_since xid8;
  v_after text := ''; -- '' sorts before every series_id: '<xid>' means every row of <xid> and above
  v_cursor text;
  v_items jsonb[];
  v_xids xid8[];
  v_series text[];
  v_count integer;
  v_has_more boolean;
  v_next text;
begin
  if v_uid is null then
    raise exception using errcode = '42501', message = 'reading_progress_changes: no authenticated user';
  end if;
  -- The system identifier is read once per connection and kept in a session setting: PostgreSQL 15
  -- reads pg_control without a lock, so a read that meets a checkpoint rewriting it can fail its CRC
  -- check. Such a failure gives an untagged cursor this time, never an error; a platform that does not
  -- let this role call pg_control_system() gives untagged cursors (read as before tags), or ones
  -- tagged by the origin alone once a restore was adopted. The origin is read on every
  -- call (a table of at most one row): a connection open across a restore adoption must not go on
  -- taking the old project's cursors for its own.
  select o.origin into v_origin from private.reading_progress_cursor_origin o;
  v_system := nullif(pg_catalog.current_setting('readsync.system_identifier', true), '');
  if v_system is null and pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'execute') then
    begin
      select c.system_identifier::text into v_system from pg_catalog.pg_control_system() c;
      perform pg_catalog.set_config('readsync.system_identifier', v_system, false);
      v_tag := pg_catalog.left(pg_catalog.md5(v_system || coalesce(v_origin, '')), 8);
    exception when others then
      v_system := null; -- a failed read: untagged this time
    end;
  elsif v_system is not null then
    v_tag := pg_catalog.left(pg_catalog.md5(v_system || coalesce(v_origin, '')), 8);
  elsif v_origin is not null then
    -- Where pg_control_system() may never be called, an adopted project's origin alone tags its
    -- cursors (so the old project's start over there too); with neither, cursors are untagged.
    v_tag := pg_catalog.left(pg_catalog.md5(v_origin), 8);
  end if;
  v_prefix := coalesce(v_tag || '.', '');

  if p_cursor is null or p_cursor = '' then
    v_since := '0'::xid8;
  else
    v_parts := pg_catalog.regexp_match(p_cursor,
      '^(?:([0-9a-f]{8})\.)?([0-9]{1,19})(?::([A-Za-z0-9][A-Za-z0-9._:-]{0,127}))?$');
    if v_parts is null then
      raise exception using errcode = '22023', message = 'reading_progress_changes: invalid cursor';
    end if;
    v_since := v_parts[2]::xid8;
    v_after := coalesce(v_parts[3], '');
    if (v_parts[1] is not null and v_tag is not null and v_parts[1] <> v_tag)
       or (v_parts[1] is null and v_origin is not null) then
      -- Another cluster's cursor: its ids say nothing here. Start over from the beginning (clients
      -- merge by the LWW key, so what they hold is dropped as duplicates). Once a restore was adopted,
      -- an untagged cursor may be the old project's (handed out where pg_control_system() may not be
      -- called) and starts over too; one this cluster handed out after a failed read of the system
      -- identifier only costs a read from the beginning.
      v_since := '0'::xid8;
      v_after := '';
    -- This cluster's, or untagged: every cursor this cluster handed out lies at or below a later
    -- snapshot's xmax (latest completed transaction + 1; transactions still running, the caller's
    -- own among them, may hold ids a little above it, hence the margin of a million). One far
    -- beyond comes from another cluster, or from this one before a point-in-time restore took it
    -- back (the tag stays): nothing here would be newer for a long time, and the device would hear
    -- nothing meanwhile. (numeric: a 19-digit cursor may exceed bigint.)
    elsif v_since::text::numeric
          > pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::numeric + 1000000 then
      v_since := '0'::xid8;
      v_after := '';
    end if;
  end if;
  v_cursor := v_prefix || case when v_after = '' then v_since::text else v_since::text || ':' || v_after end;

  -- Each side is ordered and limited on its own (its index, then at most limit + 1 rows), and the
  -- two short sorted lists are merged: a sort over the whole union would read every row past the
  -- cursor (a first sync of a large library) instead of one page.
  select pg_catalog.array_agg(c.item order by c.xid, c.series_id),
         pg_catalog.array_agg(c.xid order by c.xid, c.series_id),
         pg_catalog.array_agg(c.series_id order by c.xid, c.series_id)
    into v_items, v_xids, v_series
    from (
      (select rp.change_xid as xid, rp.series_id, pg_catalog.to_jsonb(rp) as item
         from public.reading_progress rp
        where rp.user_id = v_uid
          and (rp.change_xid, rp.series_id) > (v_since, v_after collate "C")
        order by rp.change_xid, rp.series_id
        limit v_limit + 1)
      union all
      (select d.deleted_xid, d.series_id, d.version || '{"deleted": true}'::jsonb
         from public.reading_progress_deletions d
        where d.user_id = v_uid
          and (d.deleted_xid, d.series_id) > (v_since, v_after collate "C")
          and not exists (select 1 from public.reading_progress rp
                           where rp.user_id = d.user_id and rp.series_id = d.series_id)
        order by d.deleted_xid, d.series_id
        limit v_limit + 1)
      order by 1, 2
      limit v_limit + 1
    ) c;
  v_count := coalesce(pg_catalog.cardinality(v_items), 0);

  v_has_more := v_count > v_limit;
  if v_has_more then
    v_items := v_items[1:v_limit];
    if v_xids[v_limit] < v_horizon then
      v_next := v_prefix || v_xids[v_limit]::text || ':' || v_series[v_limit];
    elsif v_horizon > v_since then
      v_next := v_prefix || v_horizon::text;
    else
      v_next := v_cursor;
    end if;
  elsif v_horizon > v_since then
    v_next := v_prefix || v_horizon::text;
  else
    v_next := v_cursor;
  end if;

  return pg_catalog.jsonb_build_object(
    'changes', coalesce(pg_catalog.to_jsonb(v_items), '[]'::jsonb),
    'next_cursor', v_next,
    'has_more', v_has_more);
end;
$$;
revoke all on function public.reading_progress_changes(text, integer) from public, anon;
grant execute on function public.reading_progress_changes(text, integer) to authenticated;

-- ---------------------------------------------------------------------------------------------
-- After a logical restore. A project moved by pg_dump and restore into another (a new project, a
-- migration between regions) keeps every row's change_xid and deleted_xid, but those are the old
-- cluster's transaction ids. Where they lie above anything this cluster has assigned, every changes
-- read returns those rows again as "possibly still in flight", and a user with more such rows than
-- one page never gets past them (the cursor cannot move). Run once, as the tables' owner (postgres),
-- right after the restore:
--     select private.reading_progress_adopt_restored_rows();
-- It stamps those rows (and remembered deletions) with its own transaction id, as if they had just
-- been written, without touching anything else: the stamp, broadcast and tie-log triggers are
-- switched off for its own UPDATE and back to their previous state (ALTER TABLE, so concurrent
-- writers wait for it) and nothing is broadcast. It also draws a new cursor origin
-- (reading_progress_cursor_origin), so every cursor handed out before it, the old project's too even
-- where both clusters share a system identifier, starts over: devices learn of the rows through their
-- next changes read. Every run draws one (a restore whose ids needed no adoption still needs the old
-- cursors gone: the old project may have handed out cursors above this cluster's ids), and every run
-- makes every device read its library once more from the beginning: run it once per restore.
-- Returns the counts it stamped.
-- ---------------------------------------------------------------------------------------------
create or replace function private.reading_progress_adopt_restored_rows() returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
  -- Assigned first, so the snapshot below is taken while it runs.
  v_xid xid8 := pg_catalog.pg_current_xact_id();
  v_xmax xid8;
  v_rows bigint;
  v_deletions bigint;
  v_triggers text[];
  v_states text[];
begin
  -- Every committed id of this cluster lies below a snapshot's xmax; a row's id at or above it (other
  -- than this transaction's own) was assigned by another cluster.
  v_xmax := pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot());
  -- Each trigger is switched off and back to the state it was in (enabled, ALWAYS, REPLICA); one
  -- the caller had disabled stays disabled.
  select pg_catalog.array_agg(t.tgname::text), pg_catalog.array_agg(t.tgenabled::text)
    into v_triggers, v_states
    from pg_catalog.pg_trigger t
   where t.tgrelid = 'public.reading_progress'::pg_catalog.regclass
     and t.tgname in ('reading_progress_stamp', 'reading_progress_broadcast', 'reading_progress_log_replaced_tie')
     and t.tgenabled <> 'D';
  for i in 1 .. coalesce(pg_catalog.cardinality(v_triggers), 0) loop
    execute pg_catalog.format('alter table public.reading_progress disable trigger %I', v_triggers[i]);
  end loop;
  update public.reading_progress set change_xid = v_xid where change_xid >= v_xmax and change_xid <> v_xid;
  get diagnostics v_rows = row_count;
  for i in 1 .. coalesce(pg_catalog.cardinality(v_triggers), 0) loop
    execute pg_catalog.format('alter table public.reading_progress enable %s trigger %I',
      case v_states[i] when 'A' then 'always' when 'R' then 'replica' else '' end, v_triggers[i]);
  end loop;
  update public.reading_progress_deletions set deleted_xid = v_xid where deleted_xid >= v_xmax and deleted_xid <> v_xid;
  get diagnostics v_deletions = row_count;
  insert into private.reading_progress_cursor_origin as o (singleton, origin)
    values (true, pg_catalog.gen_random_uuid()::text)
    on conflict (singleton) do update set origin = excluded.origin;
  return pg_catalog.jsonb_build_object('rows', v_rows, 'deletions', v_deletions);
end;
$$;
revoke all on function private.reading_progress_adopt_restored_rows() from public, anon, authenticated, service_role;
