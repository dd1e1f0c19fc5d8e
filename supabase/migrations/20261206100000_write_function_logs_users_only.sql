-- write_reading_progress logs a refused write for the same callers as the triggers do: a user's.
--
-- Migration …_conflict_log_members_of_authenticated.sql made the stamp trigger (a refused direct
-- write) and the replaced-tie trigger log only a write made as a role with authenticated's
-- privileges under row level security: 'authenticated' itself, or a custom role granted it that a
-- token's role claim names. Roles that bypass RLS (postgres, the table's owner or a superuser;
-- supabase_admin; a member given BYPASSRLS) are refused the same way and not logged. But
-- write_reading_progress (migration 013) logged its refused writes (stale, tie, self) for any caller
-- with a user in its claims, itself, through private.log_reading_progress_conflict: a session of
-- postgres that set a user's claims and called it had its stale write logged for that user, while the
-- same write as a direct UPDATE was not, and a tie it won by replacing the stored write was answered
-- 'tie' but not logged (the trigger's rule), so the log held one side of that caller's ties only.
-- pgTAP 015.
--
-- The triggers' rule is kept, and the function now follows it: the conflict log is the record of a
-- user's devices meeting one another, written where the database itself ties the write to a user,
-- i.e. under the RLS policies `to authenticated` (README, The conflict log). A role that bypasses RLS
-- acts as an administrator: nothing checks that the claims its session carries are the user's own
-- (behind a pooler they may be another client's left on the connection), no policy binds its direct
-- writes to auth.uid() at all, and Supabase's ways of acting as a user (the progress function's
-- X-Act-As-User, which runs as authenticated; Studio's role impersonation; `set local role
-- authenticated` with the claims, as its docs test RLS) all run under RLS and are logged.
--
-- Such a caller's write is still decided and answered exactly as before (won, conflict 'stale' | 'tie'
-- | null for 'self', conflict_with, the stored row): the kind is computed here from the locked row,
-- as the log function computes it. Only the log row is not written, so a replay of a tie such a caller
-- won is answered conflict null (the replay reads the log), as a Data API replay of any tie is. A
-- user's call pays nothing more: 'authenticated' is tested first by name, and the test runs only for
-- a refused write.
--
-- Only the refused branch changes; the rest is migration 013's function. Idempotent (CREATE OR
-- REPLACE keeps the grants; the revoke and grant are repeated).

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

  -- Refused: the stored key is greater. A user's write (a role with authenticated's privileges,
  -- under RLS: the triggers' rule, see the top of this migration) is logged; another caller's is
  -- answered the same, its kind computed as the log function computes it, and not logged.
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
