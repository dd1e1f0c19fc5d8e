-- The conflict log counts a signed-in user's writes whatever role their token names, when that role acts
-- with authenticated's rights.
--
-- Supabase lets an access token's `role` claim name a custom Postgres role (a "premium" tier, say) that
-- is granted `authenticated`: PostgREST switches to it, and the table grants and RLS policies
-- `to authenticated` apply to it too (PostgreSQL applies a policy to every role that has the privileges
-- of the one it names). Migration 012's stamp trigger and migration 013's replaced-tie trigger logged a
-- conflict only when current_user = 'authenticated': such a role's stale and same-millisecond direct
-- writes were refused as they must be but never logged, nor was a tie it won by replacing the stored
-- write, through the Data API or write_reading_progress alike (whose answer said 'tie' while the log,
-- which its replay answer reads, had nothing: the replay was answered conflict null). pgTAP 014.
--
-- A user's write, for both triggers, is now one of a role that (a) has authenticated's privileges,
-- pg_has_role(current_user, 'authenticated', 'USAGE'): 'authenticated' itself or a member that
-- inherits it, exactly the roles the policies `to authenticated` apply to ('MEMBER' would also take a
-- NOINHERIT member, to which neither those grants nor those policies apply), and (b) is subject to
-- row level security on reading_progress, row_security_active(the table): not a superuser, not
-- BYPASSRLS, not the table's owner. (b) keeps out those who act as administrators, not as a user:
-- postgres (the owner; a superuser, or on hosted projects a member of authenticated), supabase_admin,
-- service_role (BYPASSRLS; it is no member of authenticated anyway) and any custom role given
-- BYPASSRLS. No policy binds their writes to auth.uid(), so a token-less maintenance UPDATE would reach
-- the log function with auth.uid() null (42501, the refused write turned into an error) or log for
-- whichever user the session's claims name; they are refused and not logged, as before. For a role
-- under RLS, a row it can update is one whose user_id = auth.uid(), so the log is that user's.
-- 'authenticated' is tested first by name: the API's and the benchmarks' writes (role authenticated)
-- pay nothing more, and the other two calls run only where a write is refused or replaces a tie.
--
-- Only the two trigger functions are replaced, nothing else of them changes: reading_progress_stamp is
-- migration 012's function with that one test, reading_progress_log_replaced_tie migration 013's.
-- Idempotent (CREATE OR REPLACE keeps the triggers and the grants; the revokes are repeated).

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
      -- A user's: a role with authenticated's privileges, under RLS (see the top of this migration).
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
    -- transaction that began before the deleted life did) must still start a later life; and never
    -- at or before the life last deleted (remembered by migration 013), should the clock have
    -- stepped back since. An INSERT that then waits for a concurrent transaction is checked after
    -- the wait (migration 013, reading_progress_new_life_after_deletion).
    new.created_at := greatest(new.synced_at, (
      select (d.version ->> 'created_at')::timestamptz + interval '1 microsecond'
        from public.reading_progress_deletions d
       where d.user_id = new.user_id and d.series_id = new.series_id));
  else
    new.created_at := old.created_at;
  end if;
  return new;
end;
$$;
revoke all on function public.reading_progress_stamp() from public, anon, authenticated;

-- Migration 013's trigger (AFTER UPDATE, WHEN a same-millisecond write was replaced by a greater
-- device id): the replaced write lost a tie, logged for the user by the same test as above.
create or replace function private.reading_progress_log_replaced_tie() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_user = 'authenticated'
     or (pg_catalog.pg_has_role(current_user, 'authenticated', 'USAGE')
         and pg_catalog.row_security_active(tg_relid)) then
    perform private.log_reading_progress_conflict(
      old.series_id, old.chapter, old.page, old.percentage, old.cleared, old.device_id, old.updated_at, false);
  end if;
  return null;
end;
$$;
revoke all on function private.reading_progress_log_replaced_tie() from public, anon, authenticated;
