-- Indexes on public.reading_progress (migration 012) and the plans of the three API queries:
--   point lookup   where user_id = $1 and series_id = $2                          -> reading_progress_pkey
--   library        where user_id = $1 [and (updated_at, series_id) < ($2, $3)]
--                  order by updated_at desc, series_id desc limit 50              -> reading_progress_user_recent_idx
--   changes since  where user_id = $1 and change_xid >= $2::xid8 order by change_xid
--                                                                                 -> reading_progress_user_changes_idx
-- An index on user_id alone (or updated_at alone) is deliberately absent: every index leads with
-- user_id already.
-- public.reading_progress_deletions (migration 013): the primary key (user_id, series_id) for its
-- trigger's upsert and (user_id, deleted_xid) for the changes read -> reading_progress_deletions_user_xid_idx
--
-- The plans are checked on 20,000 rows over 200 users. Both triggers are disabled for the bulk load
-- (inside this transaction only): the broadcast would add 20,000 messages, and the stamp trigger
-- would give every row this transaction's change_xid and now(), which is not what a real table
-- looks like (each row changed in its own transaction at its own time).

begin;
-- The lock its ALTER TABLE … DISABLE/ENABLE TRIGGER takes (SHARE ROW EXCLUSIVE), taken first: taken later, after this transaction has
-- written, it is an upgrade that deadlocks with a session holding a weaker lock on the table and
-- waiting for this transaction (pgTAP 038 failed so once in a full run).
lock table public.reading_progress in share row exclusive mode;
create extension if not exists pgtap with schema extensions;
select plan(33);

-- ---------------------------------------------------------------------------------------------
-- Index definitions
-- ---------------------------------------------------------------------------------------------
select indexes_are(
  'public', 'reading_progress',
  array['reading_progress_pkey', 'reading_progress_user_recent_idx', 'reading_progress_user_changes_idx'],
  'reading_progress has exactly the three query indexes'
);

select has_index('public', 'reading_progress', 'reading_progress_pkey', array['user_id', 'series_id'],
  'reading_progress_pkey is on (user_id, series_id)');

select index_is_primary('public', 'reading_progress', 'reading_progress_pkey',
  'reading_progress_pkey is the primary key');

select has_index('public', 'reading_progress', 'reading_progress_user_recent_idx',
  array['user_id', 'updated_at', 'series_id'],
  'reading_progress_user_recent_idx is on (user_id, updated_at, series_id)');

select is(
  pg_get_indexdef('public.reading_progress_user_recent_idx'::regclass),
  'CREATE INDEX reading_progress_user_recent_idx ON public.reading_progress USING btree (user_id, updated_at DESC, series_id DESC)',
  'reading_progress_user_recent_idx is btree (user_id, updated_at DESC, series_id DESC): the library order, keyset-paginable'
);

select has_index('public', 'reading_progress', 'reading_progress_user_changes_idx',
  array['user_id', 'change_xid'],
  'reading_progress_user_changes_idx is on (user_id, change_xid)');

select is(
  pg_get_indexdef('public.reading_progress_user_changes_idx'::regclass),
  'CREATE INDEX reading_progress_user_changes_idx ON public.reading_progress USING btree (user_id, change_xid)',
  'reading_progress_user_changes_idx is btree (user_id, change_xid) ascending'
);

select hasnt_index('public', 'reading_progress', 'reading_progress_user_id_idx',
  'the user_id-only index reading_progress_user_id_idx is absent');

select is(
  (select count(*)::int from pg_index i
    where i.indrelid = 'public.reading_progress'::regclass
      and i.indnkeyatts = 1
      and i.indkey[0] in (select attnum from pg_attribute
                           where attrelid = 'public.reading_progress'::regclass
                             and attname in ('user_id', 'updated_at'))),
  0,
  'no index of any name on user_id alone or updated_at alone'
);

-- ---------------------------------------------------------------------------------------------
-- Data: 200 users x 100 series, distinct updated_at and change_xid per row
-- ---------------------------------------------------------------------------------------------
insert into auth.users (id, email)
select ('0a0a0a0a-0000-4000-8000-' || lpad(u::text, 12, '0'))::uuid, 'idx-' || u || '@readsync.test'
  from generate_series(1, 200) u;

alter table public.reading_progress disable trigger reading_progress_broadcast;
alter table public.reading_progress disable trigger reading_progress_stamp;

insert into public.reading_progress
  (user_id, series_id, chapter, page, percentage, device_id, updated_at, synced_at, change_xid, created_at)
select ('0a0a0a0a-0000-4000-8000-' || lpad((1 + g % 200)::text, 12, '0'))::uuid,
       'series-' || g, g % 500, g % 300, 0.5, 'device-' || (g % 3),
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',
       (100000 + g)::text::xid8,
       timestamptz '2026-01-01 00:00:00+00'
  from generate_series(1, 20000) g;

alter table public.reading_progress enable trigger reading_progress_stamp;
alter table public.reading_progress enable trigger reading_progress_broadcast;

analyze public.reading_progress;

-- The plan of a query as text (one line per plan line).
create function pg_temp.plan_of(query text) returns text
language plpgsql
as $$
declare
  line text;
  result text := '';
begin
  for line in execute 'explain (costs off) ' || query loop
    result := result || line || E'\n';
  end loop;
  return result;
end;
$$;

select isnt(
  (select count(*)::int from public.reading_progress where user_id = '0a0a0a0a-0000-4000-8000-000000000007'),
  0,
  'fixture: user 7 has rows to plan against'
);

-- ---------------------------------------------------------------------------------------------
-- Point lookup
-- ---------------------------------------------------------------------------------------------
select matches(
  pg_temp.plan_of($$select * from public.reading_progress
                    where user_id = '0a0a0a0a-0000-4000-8000-000000000007' and series_id = 'series-7'$$),
  'Index Scan using reading_progress_pkey on reading_progress',
  'point lookup by (user_id, series_id) is an index scan on reading_progress_pkey'
);

-- ---------------------------------------------------------------------------------------------
-- Library (first page and a keyset page). The keyset cursor leaves ~94 of user 7's 100 rows, more
-- than the limit; when fewer rows than the limit remain, a bitmap scan plus a small sort is the
-- planner's rational choice and not a defect, so that case is not asserted.
-- ---------------------------------------------------------------------------------------------
select matches(
  pg_temp.plan_of($$select * from public.reading_progress
                    where user_id = '0a0a0a0a-0000-4000-8000-000000000007'
                    order by updated_at desc, series_id desc limit 50$$),
  'Index Scan using reading_progress_user_recent_idx on reading_progress',
  'library query scans reading_progress_user_recent_idx'
);

select doesnt_match(
  pg_temp.plan_of($$select * from public.reading_progress
                    where user_id = '0a0a0a0a-0000-4000-8000-000000000007'
                    order by updated_at desc, series_id desc limit 50$$),
  'Sort',
  'library query has no Sort node (not even an Incremental Sort): the index yields the order'
);

select matches(
  pg_temp.plan_of($$select * from public.reading_progress
                    where user_id = '0a0a0a0a-0000-4000-8000-000000000007'
                      and (updated_at, series_id) < ('2026-01-14 00:00:00+00'::timestamptz, 'series-9000')
                    order by updated_at desc, series_id desc limit 50$$),
  'Index Scan using reading_progress_user_recent_idx on reading_progress\s+Index Cond: \(\(user_id = [^)]+\) AND \(ROW\(updated_at, series_id\) < ROW',
  'library keyset page: the (updated_at, series_id) cursor is an index condition on reading_progress_user_recent_idx'
);

select doesnt_match(
  pg_temp.plan_of($$select * from public.reading_progress
                    where user_id = '0a0a0a0a-0000-4000-8000-000000000007'
                      and (updated_at, series_id) < ('2026-01-14 00:00:00+00'::timestamptz, 'series-9000')
                    order by updated_at desc, series_id desc limit 50$$),
  'Sort',
  'library keyset page has no Sort node'
);

-- ---------------------------------------------------------------------------------------------
-- Changes since a cursor
-- ---------------------------------------------------------------------------------------------
select matches(
  pg_temp.plan_of($$select * from public.reading_progress
                    where user_id = '0a0a0a0a-0000-4000-8000-000000000007' and change_xid >= '119000'::xid8
                    order by change_xid$$),
  'Index Cond: \(\(user_id = [^)]+\) AND \(change_xid >= ',
  'changes-since query uses both user_id and the change_xid cursor as index conditions'
);

select matches(
  pg_temp.plan_of($$select * from public.reading_progress
                    where user_id = '0a0a0a0a-0000-4000-8000-000000000007' and change_xid >= '119000'::xid8
                    order by change_xid$$),
  'Index Scan using reading_progress_user_changes_idx|Bitmap Index Scan on reading_progress_user_changes_idx',
  'changes-since query scans reading_progress_user_changes_idx'
);

select doesnt_match(
  pg_temp.plan_of($$select * from public.reading_progress
                    where user_id = '0a0a0a0a-0000-4000-8000-000000000007' and change_xid >= '119000'::xid8
                    order by change_xid$$),
  'Seq Scan',
  'changes-since query does not scan the table sequentially'
);

-- ---------------------------------------------------------------------------------------------
-- The same queries as the API sends them: parameters, generic plan
-- ---------------------------------------------------------------------------------------------
prepare rp_point(uuid, text) as
  select * from public.reading_progress where user_id = $1 and series_id = $2;
prepare rp_library(uuid) as
  select * from public.reading_progress where user_id = $1 order by updated_at desc, series_id desc limit 50;
prepare rp_changes(uuid, xid8) as
  select * from public.reading_progress where user_id = $1 and change_xid >= $2 order by change_xid;
set local plan_cache_mode = force_generic_plan;

select matches(
  pg_temp.plan_of($$execute rp_point('0a0a0a0a-0000-4000-8000-000000000007', 'series-7')$$),
  'Index Scan using reading_progress_pkey on reading_progress\s+Index Cond: \(\(user_id = \$1\) AND \(series_id = \$2\)\)',
  'generic plan: point lookup ($1, $2) uses reading_progress_pkey'
);

select matches(
  pg_temp.plan_of($$execute rp_library('0a0a0a0a-0000-4000-8000-000000000007')$$),
  '^Limit\s+->  Index Scan using reading_progress_user_recent_idx on reading_progress\s+Index Cond: \(user_id = \$1\)\s*$',
  'generic plan: library ($1) is Limit over an index scan of reading_progress_user_recent_idx, nothing else'
);

select matches(
  pg_temp.plan_of($$execute rp_changes('0a0a0a0a-0000-4000-8000-000000000007', '119000')$$),
  'Index Cond: \(\(user_id = \$1\) AND \(change_xid >= \$2\)\)',
  'generic plan: changes since ($1, $2) has both as index conditions'
);

select matches(
  pg_temp.plan_of($$execute rp_changes('0a0a0a0a-0000-4000-8000-000000000007', '119000')$$),
  'reading_progress_user_changes_idx',
  'generic plan: changes since ($1, $2) uses reading_progress_user_changes_idx'
);

deallocate rp_point;
deallocate rp_library;
deallocate rp_changes;
reset plan_cache_mode;

-- ---------------------------------------------------------------------------------------------
-- reading_progress_deletions: 200 users x 100 remembered hard deletes
-- ---------------------------------------------------------------------------------------------
select indexes_are('public', 'reading_progress_deletions',
  array['reading_progress_deletions_pkey', 'reading_progress_deletions_user_xid_idx'],
  'reading_progress_deletions has exactly the primary key and (user_id, deleted_xid)');

insert into public.reading_progress_deletions (user_id, series_id, deleted_xid, deleted_at, version)
select ('0a0a0a0a-0000-4000-8000-' || lpad(u::text, 12, '0'))::uuid, 'gone-' || s, (200000 + u * 100 + s)::text::xid8,
       now(), '{}'::jsonb
  from generate_series(1, 200) u, generate_series(1, 100) s;
analyze public.reading_progress_deletions;

select matches(
  pg_temp.plan_of($$select * from public.reading_progress_deletions d
                    where d.user_id = '0a0a0a0a-0000-4000-8000-000000000007'
                      and (d.deleted_xid, d.series_id) > ('200750'::xid8, '' collate "C")
                    order by d.deleted_xid, d.series_id limit 101$$),
  'Index (Only )?Scan using reading_progress_deletions_user_xid_idx|Bitmap Index Scan on reading_progress_deletions_user_xid_idx',
  'changes since on remembered deletions scans reading_progress_deletions_user_xid_idx'
);

-- ---------------------------------------------------------------------------------------------
-- The statements inside the API's SQL functions, called as a signed-in user (row level security
-- on). The plans above are of the same queries written out here; these checks count the scans the
-- functions themselves start, from this transaction's own statistics (pg_stat_get_xact_numscans),
-- so they fail when a function's statement stops using its index or scans a table sequentially.
-- ---------------------------------------------------------------------------------------------
-- Scans started by one statement: {"<index>": n, "seq <table>": n} for every count that moved.
create function pg_temp.scans_of(statement text) returns jsonb
language plpgsql
as $$
declare
  before jsonb;
  after jsonb;
begin
  select jsonb_object_agg(name, n) into before from pg_temp.scan_counts();
  execute statement;
  select jsonb_object_agg(name, n) into after from pg_temp.scan_counts();
  return (select coalesce(jsonb_object_agg(key, (value::text)::bigint - (before ->> key)::bigint), '{}')
            from jsonb_each(after) where (value::text)::bigint > (before ->> key)::bigint);
end;
$$;

create function pg_temp.scan_counts() returns table (name text, n bigint)
language sql
as $$
  -- pg_stat_get_xact_numscans: scans started in this transaction (of an index: index scans; of a
  -- table: sequential scans). PostgreSQL 15 has no pg_stat_xact view for indexes.
  select c.relname::text, pg_stat_get_xact_numscans(c.oid)
    from pg_index i join pg_class c on c.oid = i.indexrelid
   where i.indrelid in ('public.reading_progress'::regclass, 'public.reading_progress_deletions'::regclass)
  union all
  select 'seq ' || c.relname, pg_stat_get_xact_numscans(c.oid)
    from pg_class c
   where c.oid in ('public.reading_progress'::regclass, 'public.reading_progress_deletions'::regclass)
$$;

set local role authenticated;
set local request.jwt.claims = '{"sub": "0a0a0a0a-0000-4000-8000-000000000007", "role": "authenticated"}';

select is(
  pg_temp.scans_of($$select count(*) from public.get_reading_progress('series-7')$$),
  '{"reading_progress_pkey": 1}'::jsonb,
  'get_reading_progress as the user: one scan of reading_progress_pkey, nothing else'
);

select is(
  pg_temp.scans_of($$select count(*) from public.list_reading_progress(50)$$),
  '{"reading_progress_user_recent_idx": 1}'::jsonb,
  'list_reading_progress (first page) as the user: one scan of reading_progress_user_recent_idx, nothing else'
);

select is(
  pg_temp.scans_of($$select count(*) from public.list_reading_progress(50, '2026-01-14 00:00:00+00', 'series-9000')$$),
  '{"reading_progress_user_recent_idx": 1}'::jsonb,
  'list_reading_progress (keyset page) as the user: one scan of reading_progress_user_recent_idx, nothing else'
);

-- The changes read: each side's index, and its anti-join probes by index; which index the
-- planner picks for the deletions side depends on how many of them the cursor leaves (all of a
-- user's 100: the primary key and a sort is as cheap), so that is asserted only for a cursor in the
-- middle of the user's deletions (xids 200701..200800 for user 7); no sequential scan either way.
create function pg_temp.changes_scans(p_cursor text) returns jsonb
language sql
as $$
  select jsonb_build_object(
    'sequential scan', d ?| array['seq reading_progress', 'seq reading_progress_deletions'],
    'reading_progress_user_changes_idx', d ? 'reading_progress_user_changes_idx',
    'reading_progress_deletions_user_xid_idx', d ? 'reading_progress_deletions_user_xid_idx')
  from pg_temp.scans_of(format('select public.reading_progress_changes(%L, 100)', p_cursor)) d
$$;

select is(
  pg_temp.changes_scans('200760'),
  '{"sequential scan": false, "reading_progress_user_changes_idx": true, "reading_progress_deletions_user_xid_idx": true}'::jsonb,
  'reading_progress_changes as the user, cursor among the deletions: reading_progress_user_changes_idx and reading_progress_deletions_user_xid_idx, no sequential scan'
);

select is(
  pg_temp.changes_scans('119000') ->> 'sequential scan',
  'false',
  'reading_progress_changes as the user, cursor before every deletion: no sequential scan'
);

-- Cursors that name their user (migration …_changes_cursor_names_user.sql): the user's own is read
-- by the same statement, the same plans; another user's starts over (a read from the beginning).
select is(
  pg_temp.changes_scans('u' || left(md5('0a0a0a0a-0000-4000-8000-000000000007'), 8) || '.200760'),
  '{"sequential scan": false, "reading_progress_user_changes_idx": true, "reading_progress_deletions_user_xid_idx": true}'::jsonb,
  'reading_progress_changes as the user, its own user-tagged cursor among the deletions: the same indexes, no sequential scan'
);

select is(
  pg_temp.changes_scans('u' || left(md5('0a0a0a0a-0000-4000-8000-000000000008'), 8) || '.200760') ->> 'sequential scan',
  'false',
  'reading_progress_changes as the user, another user''s cursor (a read from the beginning): no sequential scan'
);

-- Cursors whose tag folds in their user (migration …_changes_cursor_user_folded_into_tag.sql, the
-- form handed out now): the user's own is read by the same statement, the same plans; another
-- user's starts over (a read from the beginning).
select is(
  pg_temp.changes_scans((select left(md5(c.system_identifier::text
                                         || coalesce((select origin from private.reading_progress_cursor_origin), '')
                                         || ':0a0a0a0a-0000-4000-8000-000000000007'), 8)
                           from pg_control_system() c) || '.200760'),
  '{"sequential scan": false, "reading_progress_user_changes_idx": true, "reading_progress_deletions_user_xid_idx": true}'::jsonb,
  'reading_progress_changes as the user, its own folded-tag cursor among the deletions: the same indexes, no sequential scan'
);

select is(
  pg_temp.changes_scans((select left(md5(c.system_identifier::text
                                         || coalesce((select origin from private.reading_progress_cursor_origin), '')
                                         || ':0a0a0a0a-0000-4000-8000-000000000008'), 8)
                           from pg_control_system() c) || '.200760') ->> 'sequential scan',
  'false',
  'reading_progress_changes as the user, another user''s folded-tag cursor (a read from the beginning): no sequential scan'
);

reset role;

select * from finish();
rollback;
