-- The changes read's cursor checks move into one helper, private.reading_progress_changes_cursor, which
-- public.reading_progress_changes calls once per read, instead of living inside the read's body: five
-- migrations (…_changes_cursor_names_timeline.sql to …_changes_cursor_started_over_reported.sql) each
-- restated the read's ~200 lines to change which cursors are taken, and a change of the rules now
-- restates the helper alone (the read's statement, its paging and its answer stay where they are).
--
-- Nothing a caller sees changes: the helper is the former body's cursor part, verbatim (the same
-- rules in the same order: the user's tags, the origin, the timeline, the system identifier read once
-- per connection and its failed read, the cursor's parse and its 22023, the tag checks, the million-ids
-- rule), and hands the read what that part left in its variables: the position (xid, series), the
-- prefix every cursor handed out carries, and whether the cursor given was not taken as it stands
-- (started_over). The read keeps its own 42501 for a caller without a user (before the helper is
-- called, as before), its snapshot horizon (read at its start, as before), the statement that reads
-- the rows (the same text, the same variables of the same types: the same plans, pgTAP 004 and
-- tests/functions/changes_cursor_helper.test.ts, which compares the inner statement's plan and the
-- answers for every kind of cursor with those of …_changes_cursor_started_over_reported.sql's read), and
-- its answer.
--
-- The helper is STABLE and SECURITY INVOKER, as the read is: it runs in the read's snapshot, and what
-- the caller may call (pg_control_system(), pg_current_wal_lsn(), pg_control_checkpoint(), asked with
-- has_function_privilege) decides the tags as it did. A SECURITY DEFINER helper would ask those of its
-- owner and tag cursors where this role may not read the system identifier, a change of every cursor
-- handed out there. search_path '' and qualified names, as the read; in `private`, which the Data API
-- does not expose (no /rpc/ for it); executable by the roles that may execute the read
-- (authenticated, and service_role through Supabase's default privileges on public), not by public
-- or anon. It takes the caller's user id from the read (auth.uid(), asked once): called by a
-- user directly with another id, it only computes that id's tags, which read no row.
--
-- Idempotent (CREATE OR REPLACE keeps the grants; the revoke and grant are repeated). local/test.ts
-- re-runs it after every migration that restates the read. pgTAP 034.

create or replace function private.reading_progress_changes_cursor(
  p_uid uuid,
  p_cursor text,
  out since_xid xid8,
  out since_series text,
  out tag_prefix text,
  out started_over boolean)
language plpgsql
stable
security invoker
set search_path = ''
as $$
declare
  v_uid uuid := p_uid;
  v_system text;
  -- The timeline this cluster writes on (8 hex digits), as ':<timeline>', and '' on the first: a
  -- point-in-time restore (or a replica's promotion) starts a new one (…_changes_cursor_names_timeline.sql).
  v_history text := '';
  v_timeline text;
  v_read_failed boolean := false;
  v_origin text;
  v_tag text;
  -- What the cluster tag is made of ('' where there is none), and the caller folded into it: the tag
  -- every cursor handed out carries (the user's alone after a failed read of the system identifier).
  v_cluster text;
  v_folded_tag text;
  -- The caller's tag of the user alone (what the folded tag is where no cluster tag can be computed),
  -- handed out after a failed read of the system identifier, and read as an untagged cursor of theirs.
  v_user_alone_tag text;
  -- The caller's tag as …_changes_cursor_names_user.sql wrote it ("u<user tag>."), still read.
  v_user_tag text;
  v_given_tag text; -- the incoming cursor's tag, the caller's folded one read as this cluster's
  v_prefix text := '';
  v_parts text[];
  v_since xid8;
  -- The cursor given was not taken as it stands: the read starts over from the beginning (the page
  -- says so, "started_over": true).
  v_started_over boolean := false;
  v_after text := ''; -- '' sorts before every series_id: '<xid>' means every row of <xid> and above
begin
  v_user_tag := pg_catalog.left(pg_catalog.md5(v_uid::text), 8);
  v_user_alone_tag := pg_catalog.left(pg_catalog.md5(':' || v_uid::text), 8);
  -- The system identifier is read once per connection and kept in a session setting: PostgreSQL 15
  -- reads pg_control without a lock, so a read that meets a checkpoint rewriting it can fail its CRC
  -- check. Such a failure gives a cursor tagged by the user alone this time (read as untagged by this
  -- user), never an error, and any other tagged cursor starts over (its tag cannot be checked: it may
  -- be another cluster's); a platform that does not
  -- let this role call pg_control_system() gives untagged cursors (read as before tags), or ones
  -- tagged by the origin alone once a restore was adopted. The origin is read on every
  -- call (a table of at most one row): a connection open across a restore adoption must not go on
  -- taking the old project's cursors for its own.
  select o.origin into v_origin from private.reading_progress_cursor_origin o;
  -- The timeline, on every call (a promotion changes it under open connections): on a primary the
  -- one its WAL is written on (shared memory, no file read); on a standby (a read replica) the one of
  -- its last restartpoint, from pg_control (read without a lock: a failed read counts as none). Where
  -- neither may be called, nothing: cursors then name no timeline, as before this migration.
  if not pg_catalog.pg_is_in_recovery() then
    if pg_catalog.has_function_privilege('pg_catalog.pg_current_wal_lsn()', 'execute')
       and pg_catalog.has_function_privilege('pg_catalog.pg_walfile_name(pg_lsn)', 'execute') then
      v_timeline := pg_catalog.left(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 8);
    end if;
  elsif pg_catalog.has_function_privilege('pg_catalog.pg_control_checkpoint()', 'execute') then
    begin
      -- In upper case, as pg_walfile_name() writes it (%08X): on timeline 10 and others with a hex
      -- letter, to_hex's lower case gave a standby another tag than its primary's.
      select pg_catalog.upper(pg_catalog.lpad(pg_catalog.to_hex(c.timeline_id), 8, '0')) into v_timeline
        from pg_catalog.pg_control_checkpoint() c;
    exception when others then
      v_timeline := null;
    end;
  end if;
  if v_timeline is not null and v_timeline <> '00000001' then
    v_history := ':' || v_timeline;
  end if;
  v_system := nullif(pg_catalog.current_setting('readsync.system_identifier', true), '');
  if v_system is null and pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'execute') then
    begin
      select c.system_identifier::text into v_system from pg_catalog.pg_control_system() c;
      perform pg_catalog.set_config('readsync.system_identifier', v_system, false);
    exception when others then
      v_system := null;
      v_read_failed := true; -- a failed read: the user's tag alone this time, another tag starts over
    end;
  end if;
  if v_read_failed then
    null;
  elsif v_system is not null then
    v_cluster := v_system || coalesce(v_origin, '') || v_history;
    v_tag := pg_catalog.left(pg_catalog.md5(v_cluster), 8);
  elsif v_origin is not null or v_history <> '' then
    -- Where pg_control_system() may never be called, an adopted project's origin and the timeline
    -- past the first tag its cursors (so the old project's, and those of the history a point-in-time
    -- restore left, start over there too); with neither, cursors are untagged.
    v_cluster := coalesce(v_origin, '') || v_history;
    v_tag := pg_catalog.left(pg_catalog.md5(v_cluster), 8);
  else
    v_cluster := ''; -- no cluster tag: the folded tag is made from the user alone
  end if;
  -- One 8-hex tag, so the cursor keeps the form every client and function takes ("[<tag>.]<xid>..."):
  -- app bundles in users' hands check it, and refuse any other for good.
  if v_cluster is not null then
    v_folded_tag := pg_catalog.left(pg_catalog.md5(v_cluster || ':' || v_uid::text), 8);
  else
    -- A failed read of the system identifier: the cluster tag is not known this time, but the cursor
    -- still names its user (untagged, another user's read would take it as its own).
    v_folded_tag := v_user_alone_tag;
  end if;
  v_prefix := coalesce(v_folded_tag || '.', '');

  if p_cursor is null or p_cursor = '' then
    v_since := '0'::xid8;
  else
    v_parts := pg_catalog.regexp_match(p_cursor,
      '^(?:([0-9a-f]{8})\.)?(?:u([0-9a-f]{8})\.)?([0-9]{1,19})(?::([A-Za-z0-9][A-Za-z0-9._:-]{0,127}))?$');
    if v_parts is null then
      raise exception using errcode = '22023', message = 'reading_progress_changes: invalid cursor';
    end if;
    v_since := v_parts[3]::xid8;
    v_after := coalesce(v_parts[4], '');
    -- The caller's folded tag is read as this cluster's plain tag (untagged where there is none), so
    -- the rules below take it as this cluster's. Any other tag of the old form is then another user's,
    -- another cluster's or another timeline's (they cannot be told apart; the remedy is the same) and
    -- starts over, unless it is this cluster's plain tag (handed out before the user was folded in:
    -- its user cannot be told, and it is taken as before). Where no cluster tag can be computed the
    -- folded tag is made from the user alone: the caller's own is taken, any other tag starts over, as
    -- every tagged cursor did there before. After a failed read of the system identifier the folded
    -- tag is the caller's tag of the user alone (the cluster's part is not known), and every other
    -- tagged cursor starts over, as before. Wherever it is not the folded tag, the caller's tag of the
    -- user alone (handed out after such a failure) is read as an untagged cursor of theirs: its
    -- cluster cannot be told. The u-form is read as …_changes_cursor_names_user.sql read it.
    v_given_tag := v_parts[1];
    if v_parts[2] is null and v_given_tag = v_folded_tag then
      v_given_tag := v_tag;
    elsif v_parts[2] is null and v_given_tag = v_user_alone_tag then
      v_given_tag := null;
    end if;
    if v_parts[2] is not null and v_parts[2] <> v_user_tag then
      -- Another user's cursor (an app that stored it by device, or under one key for whoever signs
      -- in): its position says nothing of this user's changes, and taken as it stands it would skip
      -- every one of them made before it. Start over from the beginning, as for another cluster's.
      -- An untagged cursor (handed out before cursors named their user) cannot be told whose it is
      -- and is read as before.
      v_since := '0'::xid8;
      v_after := '';
      v_started_over := true;
    elsif (v_given_tag is not null and v_tag is not null and v_given_tag <> v_tag)
       or (v_given_tag is not null and v_tag is null)
       or (v_given_tag is null and (v_origin is not null or v_history <> '')) then
      -- Another cluster's cursor, or another timeline's (handed out before a point-in-time restore
      -- took this cluster back): its ids say nothing here. Start over from the beginning (clients
      -- merge by the LWW key, so what they hold is dropped as duplicates). Once a restore was adopted,
      -- or on a timeline past the first, an untagged cursor may be the old project's or the old
      -- history's (handed out where pg_control_system() may not be called, or before the timeline
      -- was named) and starts over too; one this cluster handed out after a failed read of the system
      -- identifier only costs a read from the beginning. A tagged cursor met by a failed read of the
      -- system identifier cannot be checked (the tag it would be compared with is not known this
      -- time): it may be another cluster's or another timeline's, so it starts over too; that costs
      -- this cluster's own cursors a read from the beginning, once per such failure. So does a tagged
      -- cursor where no cluster tag can be computed at all (no pg_control_system(), no adoption,
      -- timeline 1), unless it is the caller's folded tag (made there from the user alone), read as
      -- untagged above: any other was handed out to another user or elsewhere.
      v_since := '0'::xid8;
      v_after := '';
      v_started_over := true;
    -- This cluster's, or untagged: every cursor this cluster handed out lies at or below a later
    -- snapshot's xmax (latest completed transaction + 1; transactions still running, the caller's
    -- own among them, may hold ids a little above it, hence the margin of a million). One far
    -- beyond comes from another cluster, or from this one before a point-in-time restore took it
    -- back where the timeline cannot be read (the tag stays): nothing here would be newer for a
    -- long time, and the device would hear nothing meanwhile. (numeric: a 19-digit cursor may
    -- exceed bigint.)
    elsif v_since::text::numeric
          > pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::numeric + 1000000 then
      v_since := '0'::xid8;
      v_after := '';
      v_started_over := true;
    end if;
  end if;
  since_xid := v_since;
  since_series := v_after;
  tag_prefix := v_prefix;
  started_over := v_started_over;
end;
$$;
revoke all on function private.reading_progress_changes_cursor(uuid, text) from public, anon;
-- As the read: authenticated, and service_role, which Supabase's default privileges on public give the read.
grant execute on function private.reading_progress_changes_cursor(uuid, text) to authenticated, service_role;

create or replace function public.reading_progress_changes(p_cursor text default null, p_limit integer default 100)
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
set extra_float_digits to 1
as $$
declare
  v_uid uuid := auth.uid();
  v_limit integer := least(greatest(coalesce(p_limit, 100), 1), 999);
  v_horizon xid8 := pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot());
  -- The cursor as taken (private.reading_progress_changes_cursor): the position to read from, the
  -- tag every cursor handed out carries ('<tag>.' or ''), and whether the cursor given was not taken
  -- as it stands (the read starts over from the beginning; the page says so, "started_over": true).
  v_since xid8;
  v_after text; -- '' sorts before every series_id: '<xid>' means every row of <xid> and above
  v_prefix text;
  v_started_over boolean;
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
  -- Once per read: which cursor is taken as it stands, and which starts over, is decided there alone.
  select c.since_xid, c.since_series, c.tag_prefix, c.started_over
    into v_since, v_after, v_prefix, v_started_over
    from private.reading_progress_changes_cursor(v_uid, p_cursor) c;
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

  -- The key only where the read started over: every other page is the JSON it was before.
  return pg_catalog.jsonb_build_object(
    'changes', coalesce(pg_catalog.to_jsonb(v_items), '[]'::jsonb),
    'next_cursor', v_next,
    'has_more', v_has_more)
    || case when v_started_over then '{"started_over": true}'::jsonb else '{}'::jsonb end;
end;
$$;
revoke all on function public.reading_progress_changes(text, integer) from public, anon;
grant execute on function public.reading_progress_changes(text, integer) to authenticated;
