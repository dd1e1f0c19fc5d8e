-- write_reading_progress refuses a refused write that reading_progress could not hold (`cleared: true`
-- with a position, a value out of range, a NULL) the same way for every caller: SQLSTATE 23514 naming
-- the table's constraint (23502 naming the column for a NULL), as a newer such write is refused by the
-- table and the Data API refuses it, instead of answering a role whose writes are not logged "stale".
--
-- Before, the refused branch (the stored key is greater: stale, a tie lost, older than the device's
-- own) logged a user's write through private.log_reading_progress_conflict, whose table checks the
-- loser (reading_progress_conflicts_loser_valid): such a user's write failed with 23514 naming that
-- log constraint, while a role whose writes are not logged (one that bypasses RLS: postgres, a member
-- of authenticated given BYPASSRLS; …_write_function_logs_users_only.sql) with a user's claims had the
-- same write answered {won: false, conflict: "stale"}, as if it were a valid write that lost. So one
-- write was refused or answered by who sent it and by whether it was newer: a script acting for users
-- (an import) learnt that its resets were malformed only for the rows it happened to win, and the
-- rest looked like ordinary losers. The Data API refuses `cleared: true` with a position (the reset
-- triggers, 23514) for every role, stale or not. pgTAP 033.
--
-- Now the refused branch checks the write against reading_progress's own rules first, in the order the
-- table applies them to the same write when it is newer (an UPDATE of the stored row): the reset
-- triggers first (BEFORE UPDATE: `cleared` with a position), then NOT NULL in column order, then the
-- checks in the order PostgreSQL applies them, by constraint name (chapter, device id, page,
-- percentage, updated_at), so a write breaking two rules is refused naming the same one whether it is
-- newer or older (pgTAP 035 compares the two; a first version of this migration, never released, took
-- an order of its own) — for every caller, raising what the table would: 23514 with the constraint's
-- name (`reading_progress_cleared_is_zero` with the reset triggers' message and hint), 23502 with the
-- column's. The progress function answers both 422 `constraint_violation` (it refuses such a body with
-- 422 `validation_failed` before the database anyway); PostgREST answers 400 with the code. A user's
-- such write is refused by this check before the log is written: the same SQLSTATE as before, naming
-- the rule it broke instead of the log's constraint. Valid writes (every write the API sends) take the
-- same path at the same cost: the check runs only where a write was refused.
--
-- Only the refused branch changes; the rest is …_write_function_logs_users_only.sql's function, with
-- extra_float_digits 1 as …_percentages_printed_exactly.sql set it (CREATE OR REPLACE replaces a
-- function's settings with its SET clauses). Idempotent (CREATE OR REPLACE keeps the grants; the
-- revoke and grant are repeated). local/test.ts re-runs it after the migrations that restate the
-- function.

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
set extra_float_digits to 1
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
  v_invalid text; -- the rule a refused write breaks (see the refused branch)
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

  -- Refused: the stored key is greater. A write reading_progress could not hold is refused as such
  -- first, for every caller (see the top of this migration): as the
  -- table's check (or the reset triggers, for `cleared` sent with a position) refuses it when it is
  -- newer, and as the Data API refuses it. The first failing rule in the order the table applies them
  -- to the same write when it is newer (an UPDATE of the stored row), NULLs as NOT NULL refuses them.
  v_invalid := case
    -- The reset triggers first: they are BEFORE UPDATE triggers (the stored row exists), so they refuse
    -- `cleared` with a position (a non-zero one among the values sent; NULLs compare as unknown, as
    -- in the triggers) before NOT NULL and the checks are looked at.
    when coalesce(p_cleared, false) and (p_chapter <> 0 or p_page <> 0 or p_percentage <> 0)
      then 'reading_progress_cleared_is_zero'
    -- NOT NULL, in the table's column order.
    when p_chapter is null then 'chapter'
    when p_page is null then 'page'
    when p_percentage is null then 'percentage'
    when p_device_id is null then 'device_id'
    -- The checks in the order PostgreSQL applies them: by constraint name (the reset's check,
    -- reading_progress_cleared_is_zero, cannot fail here any more: a reset with a position is above).
    when not (p_chapter between 0 and 100000) then 'reading_progress_chapter_range'
    when not (p_device_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$') then 'reading_progress_device_id_format'
    when not (p_page between 0 and 1000000) then 'reading_progress_page_range'
    when not (p_percentage >= 0 and p_percentage <= 1) then 'reading_progress_percentage_range'
    when not (v_key >= '1970-01-01 00:00:00+00' and v_key < '10000-01-01 00:00:00+00')
      then 'reading_progress_updated_at_range'
  end;
  if v_invalid in ('chapter', 'page', 'percentage', 'device_id') then
    raise exception using
      errcode = '23502',
      message = pg_catalog.format('null value in column "%s" of relation "reading_progress" violates not-null constraint',
                                  v_invalid),
      column = v_invalid,
      table = 'reading_progress',
      schema = 'public';
  elsif v_invalid = 'reading_progress_cleared_is_zero' then
    -- As the reset triggers answer it on the Data API (PostgREST: 400, its code and constraint in the body).
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

  -- A user's write (a role with authenticated's privileges, under RLS: the triggers' rule, see the
  -- top of …_write_function_logs_users_only.sql) is logged; another caller's is answered the same,
  -- its kind computed as the log function computes it, and not logged.
  if current_user = 'authenticated'
     or (pg_catalog.pg_has_role(current_user, 'authenticated', 'USAGE')
         and pg_catalog.row_security_active('public.reading_progress'::regclass)) then
    v_conflict := private.log_reading_progress_conflict(
      p_series_id, p_chapter, p_page, p_percentage, p_cleared, p_device_id, v_key, true);
  else
    v_conflict := case when v_prev.device_id = p_device_id collate "C" then 'self'
                       when v_prev.updated_at = v_key then 'tie'
                       else 'stale' end;
  end if;
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
