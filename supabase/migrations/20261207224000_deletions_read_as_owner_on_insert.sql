-- A writer of reading_progress needs the table's privileges only, whatever its role: the remembered
-- deletion an INSERT is dated after is read as the table's owner, instead of as the writer. Before, the
-- stamp trigger (its INSERT branch) and the new-life check (AFTER INSERT) read
-- public.reading_progress_deletions as the role writing, so a role given SELECT, INSERT and UPDATE on
-- reading_progress and nothing more (a project's importer, BYPASSRLS or not; authenticated and service_role
-- have SELECT on the deletions by the migrations' grants) had every INSERT, an upsert included, refused
-- 42501 naming reading_progress_deletions, a table it never asked for (and one given SELECT on it under
-- row level security but no policy of it saw no deletion to date its new life after). That read is
-- bookkeeping of the table, not the writer's data access. pgTAP 044.
--
-- How: the read moves out of the stamp trigger (restated here with its INSERT branch dating the life by
-- the wall clock alone) into a BEFORE INSERT trigger of its own, reading_progress_stamp_after_deletion,
-- which fires right after the stamp (triggers fire in name order) and is SECURITY DEFINER: a trigger
-- function is called without EXECUTE or schema USAGE checks and cannot be called outside a trigger, so
-- it opens nothing to any role. The new-life check becomes SECURITY DEFINER too. Both name pg_temp last
-- in their search_path, as every readsync definer function does (pgTAP 009). The cost is one more
-- trigger call (as its owner) on an INSERT and on every upsert's INSERT half (the Data API's write; the
-- progress function's writes to a stored row are UPDATEs and do not pay it), the read itself being the
-- one the stamp made: bench/write_steps.ts, step stamp against stamp_inline_deletion_read (README, Lives
-- of a row, has the figures).
--
-- write_reading_progress still reads the deletions and the conflict log as its caller in its replay
-- branch (a write sent again with the stored key): a role calling it needs SELECT on both (README, The
-- conflict log). Idempotent (CREATE OR REPLACE keeps the triggers and grants; the trigger is dropped and
-- created again; the revokes are repeated). local/test.ts re-runs it.

create or replace function public.reading_progress_stamp() returns trigger
language plpgsql
set search_path = ''
as $$
declare
  -- Dated beyond the tolerance for clock skew (see the else branch).
  v_ahead boolean := false;
  -- The claim an earlier row of this statement left, dated ahead (readsync.dated_ahead, see the end).
  v_claim jsonb;
  -- This is the DO UPDATE of an upsert whose INSERT half was dated ahead, still ahead now (see below).
  v_claimed_ahead boolean := false;
  -- The date a write judged ahead was sent with.
  v_sent timestamptz;
  -- The rule a refused write breaks (see the refused branch).
  v_invalid text;
begin
  if tg_op = 'UPDATE'
     and (new.user_id, new.series_id) is distinct from (old.user_id, old.series_id) then
    -- (user_id, series_id) names the row. Renaming it would be a delete of the old series that no
    -- device hears of: the UPDATE is broadcast as the new series only, and "changes since" keeps no
    -- deletion for the old one. Delete and insert instead (both are broadcast and remembered).
    raise exception using
      errcode = '23514',
      message = 'reading_progress: user_id and series_id identify a row and cannot change',
      hint = 'Delete the row and insert the new one.';
  end if;
  -- The key is kept to the millisecond, and compared so from here on: a write sent with microseconds
  -- (e.g. Python's isoformat()) under the stored millisecond is that key, not a newer one.
  new.updated_at := pg_catalog.date_trunc('milliseconds', new.updated_at);
  if pg_catalog.current_setting('readsync.dated_ahead', true) <> '' then -- the common path: one test
    -- An INSERT row of this statement was judged ahead before this row began (the claim: see the end).
    v_claim := pg_catalog.current_setting('readsync.dated_ahead', true)::jsonb;
    if tg_op = 'UPDATE'
       and v_claim @> pg_catalog.jsonb_build_object('user_id', new.user_id, 'series_id', new.series_id,
                                                    'updated_at', new.updated_at, 'device_id', new.device_id) then
      -- The DO UPDATE of an upsert dated ahead: its INSERT half left the claim (this row, its stamped
      -- key and device). That half judged "ahead" before the upsert waited for any concurrent writer
      -- of the row; judged again now, by the date it was sent with: still ahead, it is newer by its
      -- own date than whatever version it met, so it lands 1 ms after that version when that one
      -- lies at or after the "now" its INSERT half was given (never a tie with it, never a replay of
      -- it; the value is the claim's by construction, now(), so a session that set the setting
      -- itself cannot place a row in the far future); no longer ahead (it waited), it is judged by
      -- that date like any write (below), so it cannot replace a version written meanwhile by a
      -- device whose clock is right.
      perform pg_catalog.set_config('readsync.dated_ahead', '', true);
      v_sent := (v_claim ->> 'sent')::timestamptz;
      if v_sent <= pg_catalog.clock_timestamp() + interval '5 seconds' then
        new.updated_at := v_sent;
      else
        v_claimed_ahead := true;
        new.updated_at := greatest(
          pg_catalog.date_trunc('milliseconds', pg_catalog.now()), old.updated_at + interval '1 millisecond');
      end if;
    else
      -- The claimed row is in the table by now, or was left out (ON CONFLICT DO NOTHING, a DO UPDATE
      -- that did not take the claim): a statement moves to its next row only once the previous one is
      -- in, after any wait in the unique index. So it is judged again now, as the statement's last
      -- such row is by reading_progress_end_claims (below), the same way.
      perform pg_catalog.set_config('readsync.dated_ahead', '', true);
      if (v_claim ->> 'sent')::timestamptz <= pg_catalog.clock_timestamp() + interval '4.9 seconds'
         and exists (select 1 from public.reading_progress rp
                      where rp.user_id = (v_claim ->> 'user_id')::uuid
                        and rp.series_id = (v_claim ->> 'series_id') collate "C"
                        and rp.synced_at = (v_claim ->> 'synced_at')::timestamptz
                        -- this transaction's row, not a concurrent writer's stamped in the same µs
                        -- that made this one be skipped (ON CONFLICT DO NOTHING)
                        and rp.change_xid = pg_catalog.pg_current_xact_id()) then
        raise exception using
          errcode = '40001',
          message = 'reading_progress: this insert''s date is no longer ahead of the clock; retry it',
          hint = 'Retry the write: it will be stored under its own date.';
      end if;
    end if;
  end if;
  if v_claimed_ahead then
    null; -- placed above
  elsif tg_op = 'UPDATE'
     and new.updated_at is not distinct from old.updated_at
     and new.device_id is not distinct from old.device_id then
    if (new.user_id, new.series_id, new.chapter, new.page, new.percentage, new.cleared)
       is not distinct from (old.user_id, old.series_id, old.chapter, old.page, old.percentage, old.cleared) then
      -- Nothing changes: a replay of the stored write (a client's retried upsert) or a no-op update.
      -- No new version (re-dating it to now() would make it beat writes read after it) and no broadcast.
      return null;
    end if;
    -- An edit that did not bring its own LWW key (e.g. a direct SQL update) happens now, and never
    -- before the version it edits (a stored updated_at may lie up to 5 s ahead): it always wins.
    new.updated_at := greatest(
      pg_catalog.date_trunc('milliseconds', pg_catalog.now()), old.updated_at + interval '1 millisecond');
  else
    if new.updated_at is null then
      new.updated_at := pg_catalog.now();
    elsif new.updated_at > pg_catalog.clock_timestamp() + interval '5 seconds' then
      -- A device clock ahead. Every stored updated_at was at most 5 s ahead of the wall clock when it
      -- was stored, so by its own date this write is newer than any of them: it wins. The wall clock
      -- (clock_timestamp()), not the transaction's start (now()): a BEFORE ROW trigger runs once the
      -- row is locked, so after any wait for a concurrent writer, and a transaction that waited (or
      -- began long ago) would otherwise take a write that is no longer more than 5 s ahead of the
      -- versions committed meanwhile for one ahead of them all, and let it replace newer reading.
      -- It is recorded as happening now, but never at or before the version it replaces (which may lie up to 5 s
      -- ahead, or be another such write of this millisecond: with the same device id the two would
      -- share a key, and the second would pass for a replay of the first and be dropped).
      v_ahead := true;
      if tg_op = 'UPDATE' then
        new.updated_at := greatest(
          pg_catalog.date_trunc('milliseconds', pg_catalog.now()), old.updated_at + interval '1 millisecond');
      else
        -- An INSERT runs this trigger before it waits for any concurrent first write of the row: the
        -- date it was sent with goes into the claim (at the end) for the judgement after that wait.
        v_sent := new.updated_at;
        new.updated_at := pg_catalog.date_trunc('milliseconds', pg_catalog.now());
      end if;
    end if;
    new.updated_at := pg_catalog.date_trunc('milliseconds', new.updated_at);

    if tg_op = 'UPDATE' and not v_ahead
       and (new.updated_at, new.device_id collate "C") <= (old.updated_at, old.device_id collate "C") then
      -- Last write wins on every path, not only through the progress API: RLS lets users update
      -- their rows through the Data API, and an offline device's stale write (or a same-millisecond
      -- write from a smaller device id, or a replay) must not replace the stored version. The row is
      -- left as it is (no UPDATE, so no broadcast); a user's rejected write is logged as the API
      -- logs it (stale or tie; a replay is not a conflict and is not logged). The log function comes
      -- with migration 013; plpgsql resolves it at the first refused write, after every migration ran.
      -- A user's: a role with authenticated's privileges, under RLS (see the top of
      -- …_conflict_log_members_of_authenticated.sql).
      --
      -- But first: a write reading_progress could not hold is refused as the table refuses it when it is
      -- newer, whoever sends it (see the top of this migration), instead of skipped as a valid loser.
      -- The rules in the order the table applies them to this row: the reset triggers' (they fire
      -- before this one and have refused `cleared` with a position already; tested again here so that
      -- a write they did not see, their triggers disabled, is not skipped either), then NOT NULL in
      -- column order, then the checks by constraint name. The same rules, order and errors as
      -- write_reading_progress's refused branch (…_write_function_refuses_invalid_losers.sql; `cleared`
      -- NULL too, which that function takes as false); user_id and series_id cannot have changed (above).
      v_invalid := case
        when new.cleared and (new.chapter <> 0 or new.page <> 0 or new.percentage <> 0)
          then 'reading_progress_cleared_is_zero'
        when new.chapter is null then 'chapter'
        when new.page is null then 'page'
        when new.percentage is null then 'percentage'
        when new.cleared is null then 'cleared'
        when new.device_id is null then 'device_id'
        when not (new.chapter between 0 and 100000) then 'reading_progress_chapter_range'
        when not (new.device_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$') then 'reading_progress_device_id_format'
        when not (new.page between 0 and 1000000) then 'reading_progress_page_range'
        when not (new.percentage >= 0 and new.percentage <= 1) then 'reading_progress_percentage_range'
        when not (new.updated_at >= '1970-01-01 00:00:00+00' and new.updated_at < '10000-01-01 00:00:00+00')
          then 'reading_progress_updated_at_range'
      end;
      if v_invalid in ('chapter', 'page', 'percentage', 'cleared', 'device_id') then
        raise exception using
          errcode = '23502',
          message = pg_catalog.format(
            'null value in column "%s" of relation "reading_progress" violates not-null constraint', v_invalid),
          column = v_invalid,
          table = 'reading_progress',
          schema = 'public';
      elsif v_invalid = 'reading_progress_cleared_is_zero' then
        raise exception using
          errcode = '23514',
          message = 'new row for relation "reading_progress" violates check constraint "reading_progress_cleared_is_zero"',
          constraint = 'reading_progress_cleared_is_zero',
          table = 'reading_progress',
          schema = 'public',
          hint = 'A reset (cleared: true) has chapter, page and percentage 0; a position is sent with cleared false or without it.';
      elsif v_invalid is not null then
        raise exception using
          errcode = '23514',
          message = pg_catalog.format('new row for relation "reading_progress" violates check constraint "%s"', v_invalid),
          constraint = v_invalid,
          table = 'reading_progress',
          schema = 'public';
      end if;
      if current_user = 'authenticated'
         or (pg_catalog.pg_has_role(current_user, 'authenticated', 'USAGE')
             and pg_catalog.row_security_active(tg_relid)) then
        perform private.log_reading_progress_conflict(
          old.series_id, new.chapter, new.page, new.percentage, new.cleared, new.device_id,
          new.updated_at, true);
      end if;
      return null;
    end if;
  end if;

  new.synced_at := pg_catalog.clock_timestamp();
  new.change_xid := pg_catalog.pg_current_xact_id();
  if v_ahead and tg_op = 'INSERT' then
    -- The claim. An INSERT runs this trigger before it may wait in the unique index for a concurrent
    -- writer of the row, so what was judged here is judged again after that wait, by the date the
    -- write was sent with:
    --   * in an upsert (INSERT ... ON CONFLICT DO UPDATE, supabase-js .upsert()) that meets the row,
    --     by the DO UPDATE's trigger (above), which sees only excluded.*, the key stamped here, and
    --     must place a write still ahead after whatever version it met (up to 5 s ahead: it may be
    --     newer than "now" by then);
    --   * an inserted row (its INSERT may have waited for an uncommitted first write of the row that
    --     rolled back), by the trigger of the statement's next row (above: a statement moves on only
    --     once a row is in) or, for the statement's last row, by reading_progress_end_claims. Clearly
    --     no longer ahead (by more than 100 ms, so that a row merely near the limit is not refused for
    --     the time its INSERT took), it is refused with 40001 (its RETURNING has already answered: it
    --     cannot be re-dated), and the retry stores it under its own date. write_reading_progress
    --     leaves no claim (it sends such a write as now()) and re-dates its own row.
    -- One transaction-local setting, as JSON (dates ISO 8601 with a numeric offset, so a session's
    -- DateStyle cannot change them): the row, named by its synced_at too (two rows of one statement,
    -- e.g. a duplicate skipped by ON CONFLICT DO NOTHING, never share it), the key and device stamped
    -- here, and the date it was sent with. It ends with the statement (reading_progress_end_claims).
    perform pg_catalog.set_config('readsync.dated_ahead', pg_catalog.jsonb_build_object(
      'user_id', new.user_id, 'series_id', new.series_id, 'updated_at', new.updated_at,
      'device_id', new.device_id, 'synced_at', new.synced_at, 'sent', v_sent)::text, true);
  end if;
  if tg_op = 'INSERT' then
    -- The wall clock, not now(): a row deleted and inserted again in one transaction (or by a
    -- transaction that began before the deleted life did) must still start a later life. Never at or
    -- before the life last deleted, should the clock have stepped back since: the next BEFORE INSERT
    -- trigger (reading_progress_stamp_after_deletion) reads the remembered deletion as its owner, so
    -- a writer needs no privilege on reading_progress_deletions (see the top of
    -- …_deletions_read_as_owner_on_insert.sql). An INSERT that then waits for a concurrent
    -- transaction is checked after the wait (reading_progress_new_life_after_deletion).
    new.created_at := new.synced_at;
  else
    new.created_at := old.created_at;
  end if;
  return new;
end;
$$;
revoke all on function public.reading_progress_stamp() from public, anon, authenticated;

create or replace function private.reading_progress_stamp_after_deletion() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_after timestamptz;
begin
  -- 1 µs after the life last deleted (remembered by migration 013's AFTER DELETE trigger), when the
  -- stamp's wall clock lies at or before it.
  select (d.version ->> 'created_at')::timestamptz + interval '1 microsecond' into v_after
    from public.reading_progress_deletions d
   where d.user_id = new.user_id and d.series_id = new.series_id;
  if v_after > new.created_at then
    new.created_at := v_after;
  end if;
  return new;
end;
$$;
revoke all on function private.reading_progress_stamp_after_deletion() from public, anon, authenticated, service_role;

drop trigger if exists reading_progress_stamp_after_deletion on public.reading_progress;
create trigger reading_progress_stamp_after_deletion
  before insert on public.reading_progress
  for each row execute function private.reading_progress_stamp_after_deletion();

-- The check after an INSERT's wait (…_new_life_created_at_tie.sql's body), as the owner.
create or replace function private.reading_progress_new_life_after_deletion() returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from public.reading_progress_deletions d
              where d.user_id = new.user_id and d.series_id = new.series_id
                and (d.version ->> 'created_at')::timestamptz >= new.created_at) then
    raise exception using
      errcode = '40001',
      message = 'reading_progress: the series was deleted while this insert waited; retry it',
      hint = 'Retry the write: it will start a life after the deleted one.';
  end if;
  return null;
end;
$$;
revoke all on function private.reading_progress_new_life_after_deletion() from public, anon, authenticated, service_role;
