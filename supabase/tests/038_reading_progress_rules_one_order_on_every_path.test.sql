-- reading_progress's rules are stated in three places: the table (its NOT NULL columns and CHECK
-- constraints, and the reset triggers that raise reading_progress_cleared_is_zero on an UPDATE), the
-- refused branch of write_reading_progress (…_write_function_refuses_invalid_losers.sql) and the stale
-- branch of the stamp trigger (…_stale_invalid_update_refused.sql). This file proves they agree: every
-- rule, each NULL and the combinations whose order matters are sent through every path a write takes
-- (INSERT, an upsert's INSERT half onto a stored position and onto a stored reset, a newer UPDATE of each,
-- a stale UPDATE of each, an UPDATE losing the stored millisecond's tie, and write_reading_progress
-- writing a series first, newer onto each, stale onto each, and losing the tie; a write dated ahead of
-- the clock, which every path takes as newer, too), by each role that can reach them (authenticated under
-- RLS, service_role and postgres bypassing it, a project's role without USAGE on `private`), and each path
-- must answer the same SQLSTATE naming the same rule: the reset rule first (with its one hint), then NOT NULL in
-- column order, then the checks by constraint name. Before …_reset_inserted_with_position_refused_first.sql
-- the INSERT paths (INSERT, upsert, the write function's first write) named a check sorting before
-- reading_progress_cleared_is_zero (chapter_range; 23502 for a NULL) where the UPDATE paths named the reset
-- rule, and refused the reset rule itself without its hint.
--
-- Every attempt runs in a subtransaction that is rolled back (an attempt that succeeds is answered
-- 'no error (<n> rows)' and undone too), so each case meets the same stored rows. `cleared` NULL is the
-- table's 23502; write_reading_progress takes a NULL `cleared` as false (not sent), so its paths are left
-- out of those cases.

begin;
-- The lock its ALTER TABLE … DISABLE/ENABLE TRIGGER takes (SHARE ROW EXCLUSIVE), taken first: taken later, after this transaction has
-- written, it is an upgrade that deadlocks with a session holding a weaker lock on the table and
-- waiting for this transaction (pgTAP 038 failed so once in a full run).
lock table public.reading_progress in share row exclusive mode;
create extension if not exists pgtap with schema extensions;
select plan(210);

insert into auth.users (id, email)
values ('a3800000-0000-4000-8000-000000000038', 'one-order@readsync.test'),
       ('b3800000-0000-4000-8000-000000000038', 'one-order-other@readsync.test');
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
values ('a3800000-0000-4000-8000-000000000038', 'position', 12, 30, 0.12, false, 'tablet', now() - interval '1 hour'),
       ('a3800000-0000-4000-8000-000000000038', 'reset', 0, 0, 0, true, 'tablet', now() - interval '1 hour'),
       ('b3800000-0000-4000-8000-000000000038', 'position', 5, 6, 0.05, false, 'tablet', now() - interval '1 hour');

-- Runs p_sql as p_role with the first user's claims (p_claims: false, none) and undoes it: the error as
-- '<SQLSTATE> <constraint or column or ->' (' +hint' when it carries the reset rule's one hint, ' hint: <text>'
-- for another), or 'no error (<n> rows)'.
create function pg_temp.attempt(p_role text, p_sql text, p_claims boolean default true) returns text
language plpgsql as $fn$
declare
  v_rows bigint;
  v_state text;
  v_message text;
  v_constraint text;
  v_column text;
  v_hint text;
begin
  begin
    if p_claims then
      perform set_config('request.jwt.claims',
        jsonb_build_object('sub', 'a3800000-0000-4000-8000-000000000038', 'role', p_role)::text, true);
    else
      perform set_config('request.jwt.claims', '', true);
    end if;
    -- Each attempt as its role meets no plan an earlier role's attempt left: PostgreSQL checks a
    -- schema's USAGE when it looks a name up (planning), not when it runs a cached plan, so a plpgsql
    -- function (write_reading_progress's auth.uid(), a helper in `private`) planned as postgres would
    -- answer a role without that USAGE as if it had it; a real session of that role plans afresh.
    execute 'discard plans';
    perform set_config('role', p_role, true);
    execute p_sql;
    get diagnostics v_rows = row_count;
    raise exception using errcode = 'RBACK', message = pg_catalog.format('no error (%s rows)', v_rows);
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
      v_constraint = constraint_name, v_column = column_name, v_hint = pg_exception_hint;
    if v_state = 'RBACK' then
      return v_message;
    end if;
    return v_state || ' ' || coalesce(nullif(v_constraint, ''), nullif(v_column, ''), '-')
      || case when coalesce(v_hint, '') = '' then ''
              when v_hint = 'A reset (cleared: true) has chapter, page and percentage 0; a position is sent with '
                            || 'cleared false or without it.' then ' +hint'
              else ' hint: ' || v_hint end;
  end;
end
$fn$;

create function pg_temp.stored() returns text language sql as $fn$
  select string_agg(format('%s %s %s/%s/%s %s %s %s', user_id, series_id, chapter, page, percentage, cleared,
                           device_id, updated_at), ', ' order by user_id, series_id)
    from public.reading_progress
   where user_id in ('a3800000-0000-4000-8000-000000000038', 'b3800000-0000-4000-8000-000000000038')
$fn$;
create temp table before_writes on commit drop as select pg_temp.stored() as stored;

-- The paths. %1$s the user, %2$s..%6$s chapter, page, percentage, cleared and device id (SQL literals),
-- %7$s updated_at, %8$s the series. The date a path sends unless the case dates the write itself:
-- now() (newer than the stored rows, an hour old), three days ago (stale), or the stored rows' own
-- millisecond (a tie; the cases' device ids all sort before the stored 'tablet', so the tie is lost).
create temp table paths (n integer, path text, series text, sent_at text, via_function boolean, template text)
  on commit drop;
insert into paths
select p.n, p.path, p.series,
       case p.dated when 'newer' then 'now()' when 'stale' then $$now() - interval '3 days'$$
                    else format('%L::timestamptz', (select updated_at from public.reading_progress
                                                     where user_id = 'a3800000-0000-4000-8000-000000000038'
                                                       and series_id = 'position')) end,
       p.kind = 'function', t.template
  from (values
    (1, 'INSERT', 'fresh', 'newer', 'insert'),
    (2, 'upsert onto the position', 'position', 'newer', 'upsert'),
    (3, 'upsert onto the reset', 'reset', 'newer', 'upsert'),
    (4, 'newer UPDATE of the position', 'position', 'newer', 'update'),
    (5, 'newer UPDATE of the reset', 'reset', 'newer', 'update'),
    (6, 'stale UPDATE of the position', 'position', 'stale', 'update'),
    (7, 'stale UPDATE of the reset', 'reset', 'stale', 'update'),
    (8, 'UPDATE losing the position''s tie', 'position', 'tie', 'update'),
    (9, 'write function, first write', 'fresh', 'newer', 'function'),
    (10, 'write function, newer onto the position', 'position', 'newer', 'function'),
    (11, 'write function, newer onto the reset', 'reset', 'newer', 'function'),
    (12, 'write function, stale onto the position', 'position', 'stale', 'function'),
    (13, 'write function, stale onto the reset', 'reset', 'stale', 'function'),
    (14, 'write function losing the position''s tie', 'position', 'tie', 'function')
  ) as p(n, path, series, dated, kind)
  cross join lateral (select case p.kind
    when 'insert' then
      'insert into public.reading_progress (user_id, series_id, chapter, page, percentage, cleared, device_id, '
      || 'updated_at) values (%1$L, %8$L, %2$s, %3$s, %4$s, %5$s, %6$s, %7$s)'
    when 'upsert' then
      'insert into public.reading_progress (user_id, series_id, chapter, page, percentage, cleared, device_id, '
      || 'updated_at) values (%1$L, %8$L, %2$s, %3$s, %4$s, %5$s, %6$s, %7$s) on conflict (user_id, series_id) '
      || 'do update set chapter = excluded.chapter, page = excluded.page, percentage = excluded.percentage, '
      || 'cleared = excluded.cleared, device_id = excluded.device_id, updated_at = excluded.updated_at'
    when 'update' then
      'update public.reading_progress set chapter = %2$s, page = %3$s, percentage = %4$s, cleared = %5$s, '
      || 'device_id = %6$s, updated_at = %7$s where user_id = %1$L and series_id = %8$L'
    else 'select public.write_reading_progress(%8$L, %2$s, %3$s, %4$s, %5$s, %6$s, %7$s)'
  end as template) as t;

-- The cases: a valid write (chapter 3, page 0, percentage 0.03, not cleared, device 'old-phone', the path's
-- date) with the values named changed, and the answer every path must give.
create temp table cases (k integer, description text, chapter integer, page integer, percentage float8,
                         cleared boolean, device text, dated timestamptz, expected text) on commit drop;
insert into cases
select c.k, c.description,
       case when c.changes ? 'chapter' then (c.changes ->> 'chapter')::integer else 3 end,
       case when c.changes ? 'page' then (c.changes ->> 'page')::integer else 0 end,
       case when c.changes ? 'percentage' then (c.changes ->> 'percentage')::float8 else 0.03 end,
       case when c.changes ? 'cleared' then (c.changes ->> 'cleared')::boolean else false end,
       case when c.changes ? 'device' then c.changes ->> 'device' else 'old-phone' end,
       (c.changes ->> 'dated')::timestamptz,
       c.expected
  from (values
    (0, 'a valid write', '{}'::jsonb, 'no error'),
    -- Each rule alone.
    (1, 'a chapter below its range', '{"chapter": -1}', '23514 reading_progress_chapter_range'),
    (2, 'a chapter above its range', '{"chapter": 100001}', '23514 reading_progress_chapter_range'),
    (3, 'a page below its range', '{"page": -1}', '23514 reading_progress_page_range'),
    (4, 'a page above its range', '{"page": 1000001}', '23514 reading_progress_page_range'),
    (5, 'a percentage below 0', '{"percentage": -0.01}', '23514 reading_progress_percentage_range'),
    (6, 'a percentage above 1', '{"percentage": 1.5}', '23514 reading_progress_percentage_range'),
    (7, 'a NaN percentage', '{"percentage": "NaN"}', '23514 reading_progress_percentage_range'),
    (8, 'a percentage of -Infinity', '{"percentage": "-Infinity"}', '23514 reading_progress_percentage_range'),
    (9, 'a device id with a space', '{"device": "old phone"}', '23514 reading_progress_device_id_format'),
    (10, 'an empty device id', '{"device": ""}', '23514 reading_progress_device_id_format'),
    (11, 'a device id of 129 characters', jsonb_build_object('device', repeat('a', 129)),
     '23514 reading_progress_device_id_format'),
    (12, 'a device id starting with a dot', '{"device": ".phone"}', '23514 reading_progress_device_id_format'),
    (13, 'dated -infinity', '{"dated": "-infinity"}', '23514 reading_progress_updated_at_range'),
    (14, 'dated a millisecond before 1970', '{"dated": "1969-12-31 23:59:59.999+00"}',
     '23514 reading_progress_updated_at_range'),
    (15, '`cleared: true` with a chapter', '{"cleared": true}', '23514 reading_progress_cleared_is_zero +hint'),
    (16, '`cleared: true` with a percentage alone', '{"cleared": true, "chapter": 0, "percentage": 0.5}',
     '23514 reading_progress_cleared_is_zero +hint'),
    (17, '`cleared: true` with a page alone', '{"cleared": true, "chapter": 0, "page": 7, "percentage": 0}',
     '23514 reading_progress_cleared_is_zero +hint'),
    -- Each NULL.
    (18, 'a NULL chapter', '{"chapter": null}', '23502 chapter'),
    (19, 'a NULL page', '{"page": null}', '23502 page'),
    (20, 'a NULL percentage', '{"percentage": null}', '23502 percentage'),
    (21, 'a NULL cleared', '{"cleared": null}', '23502 cleared'),
    (22, 'a NULL device id', '{"device": null}', '23502 device_id'),
    -- Two checks: the one whose name sorts first.
    (23, 'a chapter and a page out of range', '{"chapter": -1, "page": -1}', '23514 reading_progress_chapter_range'),
    (24, 'a page out of range and a device id of another format', '{"page": -1, "device": "old phone"}',
     '23514 reading_progress_device_id_format'),
    (25, 'a chapter out of range and a device id of another format', '{"chapter": -1, "device": "old phone"}',
     '23514 reading_progress_chapter_range'),
    (26, 'a NaN percentage and a device id of another format', '{"percentage": "NaN", "device": "old phone"}',
     '23514 reading_progress_device_id_format'),
    (27, 'a page and a percentage out of range', '{"page": -1, "percentage": 2}', '23514 reading_progress_page_range'),
    (28, 'a percentage out of range, dated -infinity', '{"percentage": 2, "dated": "-infinity"}',
     '23514 reading_progress_percentage_range'),
    (29, 'a device id of another format, dated -infinity', '{"device": "old phone", "dated": "-infinity"}',
     '23514 reading_progress_device_id_format'),
    -- NOT NULL before the checks, in column order.
    (30, 'a NULL chapter and a page out of range', '{"chapter": null, "page": -1}', '23502 chapter'),
    (31, 'a NULL page and a chapter out of range', '{"page": null, "chapter": -1}', '23502 page'),
    (32, 'a NULL device id and a chapter out of range', '{"device": null, "chapter": -1}', '23502 device_id'),
    (33, 'a NULL chapter and a NULL page', '{"chapter": null, "page": null}', '23502 chapter'),
    (34, 'a NULL percentage and a NULL device id', '{"percentage": null, "device": null}', '23502 percentage'),
    (35, 'a NULL cleared and a page out of range', '{"cleared": null, "page": -1}', '23502 cleared'),
    (36, 'a NULL cleared and a NULL device id', '{"cleared": null, "device": null}', '23502 cleared'),
    (37, 'a NULL chapter, dated -infinity', '{"chapter": null, "dated": "-infinity"}', '23502 chapter'),
    -- The reset rule before NOT NULL and the checks.
    (38, '`cleared: true` with a chapter out of range', '{"cleared": true, "chapter": -1}',
     '23514 reading_progress_cleared_is_zero +hint'),
    (39, '`cleared: true` with a chapter and a device id of another format', '{"cleared": true, "device": "old phone"}',
     '23514 reading_progress_cleared_is_zero +hint'),
    (40, '`cleared: true` with a chapter and a NULL page', '{"cleared": true, "chapter": 5, "page": null}',
     '23514 reading_progress_cleared_is_zero +hint'),
    (41, '`cleared: true` with a NaN percentage', '{"cleared": true, "chapter": 0, "percentage": "NaN"}',
     '23514 reading_progress_cleared_is_zero +hint'),
    (42, '`cleared: true` with a NULL chapter and a zero page and percentage',
     '{"cleared": true, "chapter": null, "percentage": 0}', '23502 chapter'),
    (43, '`cleared: true` with a NULL chapter and a page', '{"cleared": true, "chapter": null, "page": 3}',
     '23514 reading_progress_cleared_is_zero +hint'),
    (44, '`cleared: true` with a chapter, dated -infinity', '{"cleared": true, "dated": "-infinity"}',
     '23514 reading_progress_cleared_is_zero +hint'),
    (45, '`cleared: true` with a chapter and a NULL device id', '{"cleared": true, "device": null}',
     '23514 reading_progress_cleared_is_zero +hint'),
    (46, 'a reset (zero position) with a device id of another format',
     '{"cleared": true, "chapter": 0, "percentage": 0, "device": "old phone"}', '23514 reading_progress_device_id_format'),
    -- Dated a day ahead of the clock (recorded as now(): newer than any stored row, on the stale paths too).
    (47, 'a chapter out of range, dated a day ahead', jsonb_build_object('chapter', -1, 'dated', now() + interval '1 day'),
     '23514 reading_progress_chapter_range'),
    (48, '`cleared: true` with a chapter and a NULL page, dated a day ahead',
     jsonb_build_object('cleared', true, 'page', null, 'dated', now() + interval '1 day'),
     '23514 reading_progress_cleared_is_zero +hint')
  ) as c(k, description, changes, expected);

-- Each path's answer to a case as p_role, one line per path; and the lines every path must give.
create function pg_temp.answers(p_role text, p_k integer) returns text language sql as $fn$
  select string_agg(p.path || ': ' || pg_temp.attempt(p_role, format(p.template,
           'a3800000-0000-4000-8000-000000000038',
           format('%L::integer', c.chapter), format('%L::integer', c.page), format('%L::double precision', c.percentage),
           format('%L::boolean', c.cleared), format('%L::text', c.device),
           case when c.dated is null then p.sent_at else format('%L::timestamptz', c.dated) end, p.series)),
           E'\n' order by p.n)
    from cases c, paths p
   where c.k = p_k and not (p.via_function and c.cleared is null)
$fn$;
create function pg_temp.expected(p_k integer) returns text language sql as $fn$
  select string_agg(p.path || ': ' || c.expected, E'\n' order by p.n)
    from cases c, paths p
   where c.k = p_k and not (p.via_function and c.cleared is null)
$fn$;

-- A project's own role that writes for users (an import) and has no USAGE on `private`, where the
-- triggers' functions live: a rule checked through a `private` helper would answer it 42501 instead.
create role readsync_038_importer nologin bypassrls;
grant select, insert, update on public.reading_progress to readsync_038_importer;
-- What such a role needs besides the table, for write_reading_progress (auth.uid()): USAGE on auth, as
-- Supabase's API roles have. Nothing on the deletions log: the triggers read it as its owner
-- (…_deletions_read_as_owner_on_insert.sql; before, every INSERT path answered this role 42501).
grant usage on schema auth to readsync_038_importer;
grant execute on function public.write_reading_progress(text, integer, integer, double precision, boolean, text,
  timestamptz) to readsync_038_importer;
select is(has_schema_privilege('readsync_038_importer', 'private', 'usage'), false,
          'premise: the importer role has no USAGE on private');

-- The rules the cases send are the table's, read from pg_catalog: a CHECK constraint or NOT NULL column
-- added (or a check changed) by a later migration without a rule in the two hand-written lists and a case
-- here fails these three, naming it. Left out on purpose: checks on the row's name alone (user_id,
-- series_id: no stale or refused path can change them, the stamp trigger refuses a rename, so the table
-- itself refuses such a write on every path), and the NOT NULL columns the stamp trigger sets on every
-- path (updated_at, a NULL being a write without a key, dated now(); synced_at, change_xid, created_at).
select is(
  (select array_agg(c.conname::text order by c.conname)
     from pg_catalog.pg_constraint c
    where c.conrelid = 'public.reading_progress'::regclass and c.contype = 'c'
      and exists (select 1 from pg_catalog.pg_attribute a
                   where a.attrelid = c.conrelid and a.attnum = any (c.conkey)
                     and a.attname not in ('user_id', 'series_id'))),
  (select array_agg(distinct split_part(expected, ' ', 2) order by split_part(expected, ' ', 2))
     from cases where expected like '23514 %'),
  'every CHECK constraint of reading_progress (pg_catalog), but the row name''s, is a rule a case breaks');
select is(
  (select array_agg(a.attname::text order by a.attname)
     from pg_catalog.pg_attribute a
    where a.attrelid = 'public.reading_progress'::regclass and a.attnum > 0 and not a.attisdropped
      and a.attnotnull
      and a.attname not in ('user_id', 'series_id', 'updated_at', 'synced_at', 'change_xid', 'created_at')),
  (select array_agg(distinct split_part(expected, ' ', 2) order by split_part(expected, ' ', 2))
     from cases where expected like '23502 %'),
  'every NOT NULL column of reading_progress (pg_catalog) a write sets is a rule a case breaks');
-- The definitions both lists (write_reading_progress's refused branch, the stamp trigger's stale one)
-- were written against: a check changed in place (another range) fails here, not only where a case
-- happens to cross the new bound.
-- Printed in UTC and ISO (the dates in updated_at_range's text follow the session's TimeZone and DateStyle).
create function pg_temp.check_definitions() returns text[] language sql set timezone = 'UTC' set datestyle = 'ISO'
as $fn$
  select array_agg(c.conname || ': ' || pg_catalog.pg_get_constraintdef(c.oid) order by c.conname)
    from pg_catalog.pg_constraint c
   where c.conrelid = 'public.reading_progress'::regclass and c.contype = 'c'
$fn$;
select is(
  pg_temp.check_definitions(),
  array[
    'reading_progress_chapter_range: CHECK (((chapter >= 0) AND (chapter <= 100000)))',
    'reading_progress_cleared_is_zero: CHECK (((NOT cleared) OR ((chapter = 0) AND (page = 0) AND '
      || '(percentage = (0)::double precision))))',
    'reading_progress_device_id_format: CHECK ((device_id ~ ''^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$''::text))',
    'reading_progress_page_range: CHECK (((page >= 0) AND (page <= 1000000)))',
    'reading_progress_percentage_range: CHECK (((percentage >= (0)::double precision) AND '
      || '(percentage <= (1)::double precision)))',
    'reading_progress_series_id_format: CHECK ((series_id ~ ''^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$''::text))',
    'reading_progress_updated_at_range: CHECK (((updated_at >= ''1970-01-01 00:00:00+00''::timestamp with time '
      || 'zone) AND (updated_at < ''10000-01-01 00:00:00+00''::timestamp with time zone)))'
  ],
  'the CHECK constraints are the ones the rule lists state (a changed one needs both lists and the cases changed)');

select is(pg_temp.answers(r.role, c.k), pg_temp.expected(c.k),
          format('%s, by %s: every path refuses it naming %s', c.description, r.label, c.expected))
  from cases c,
       (values (1, 'authenticated', 'a user (authenticated)'), (2, 'service_role', 'service_role'),
               (3, session_user::text, 'postgres'),
               (4, 'readsync_038_importer', 'a role without USAGE on private')) as r(n, role, label)
 where c.k > 0
 order by r.n, c.k;

-- The premise that the paths are reached: a valid write lands on the newer paths, is skipped by the
-- stale UPDATEs and answered by the function (the function's answers are not compared here).
select is(pg_temp.answers(r.role, 0), string_agg(p.path || ': ' || case
            when p.path like 'write function%' then 'no error (1 rows)'
            when p.sent_at = 'now()' then 'no error (1 rows)'
            else 'no error (0 rows)' end, E'\n' order by p.n),
          format('premise, by %s: a valid write lands on the newer paths and is skipped by the stale ones', r.role))
  from (values (1, 'authenticated'), (2, 'service_role'), (3, session_user::text), (4, 'readsync_038_importer'))
         as r(n, role), paths p
 group by r.n, r.role
 order by r.n;

-- Denied paths: anon has neither the table nor the function (42501 before any rule), on every path.
select is(pg_temp.answers('anon', k), string_agg(p.path || ': 42501 -', E'\n' order by p.n),
          format('anon, %s: refused on every path (42501) before any rule', description))
  from cases, paths p
 where k in (1, 38, 22)
 group by k, description
 order by k;

-- A user and another user's rows, impersonated as PostgREST does (set local role + request.jwt.claims).
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "a3800000-0000-4000-8000-000000000038", "role": "authenticated"}', true);
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, page, percentage, cleared, device_id)
    values ('b3800000-0000-4000-8000-000000000038', 'fresh', -1, 0, 0, false, 'old-phone')$$,
  '42501', null,
  'a user''s INSERT of another user''s row with a chapter out of range: row level security refuses it (42501) first');
select throws_ok(
  $$insert into public.reading_progress (user_id, series_id, chapter, page, percentage, cleared, device_id)
    values ('b3800000-0000-4000-8000-000000000038', 'fresh', 3, 0, 0, true, 'old-phone')$$,
  '23514', 'new row for relation "reading_progress" violates check constraint "reading_progress_cleared_is_zero"',
  'a user''s INSERT of another user''s row, `cleared: true` with a position: refused by the reset''s BEFORE INSERT '
  || 'trigger, which runs before row level security''s check (nothing stored either way)');
select is_empty(
  $$update public.reading_progress set chapter = -1, updated_at = now() - interval '3 days', device_id = 'old-phone'
     where user_id = 'b3800000-0000-4000-8000-000000000038' returning 1$$,
  'a user''s invalid stale UPDATE of another user''s row: no row to update (RLS), nothing raised');
select set_config('request.jwt.claims', '', true);
select throws_ok(
  $$select public.write_reading_progress('position', -1, 0, 0, false, 'old-phone', now() - interval '3 days')$$,
  '42501', 'write_reading_progress: no authenticated user',
  'write_reading_progress without a user''s claims: refused (42501) before any rule');
reset role;

-- The reset rule with the reset triggers disabled (a table owner's ALTER TABLE; no API role can): the
-- table's own order is then NOT NULL and the checks by name, reading_progress_chapter_range before
-- reading_progress_cleared_is_zero, and the stamp trigger's refused branch keeps the reset rule first,
-- the order every path has with the triggers on. Left so on purpose (see the migration): stated here so
-- that a change of it is seen.
alter table public.reading_progress disable trigger reading_progress_reset_marked_with_position,
  disable trigger reading_progress_reset_marked_zeroes_position;
select is(pg_temp.attempt(session_user::text,
  $$update public.reading_progress set cleared = true, chapter = -1, updated_at = now(), device_id = 'old-phone'
     where user_id = 'a3800000-0000-4000-8000-000000000038' and series_id = 'position'$$),
  '23514 reading_progress_chapter_range',
  'reset triggers disabled, a newer `cleared: true` with a chapter out of range: the table names its first check');
select is(pg_temp.attempt(session_user::text,
  $$update public.reading_progress set cleared = true, chapter = -1, updated_at = now() - interval '3 days',
       device_id = 'old-phone' where user_id = 'a3800000-0000-4000-8000-000000000038' and series_id = 'position'$$),
  '23514 reading_progress_cleared_is_zero +hint',
  'reset triggers disabled, the same write stale: the stamp trigger names the reset rule first, as every path does '
  || 'with the triggers on');
alter table public.reading_progress enable trigger reading_progress_reset_marked_with_position,
  enable trigger reading_progress_reset_marked_zeroes_position;

select is(pg_temp.stored(), (select stored from before_writes), 'no stored row changed');

select * from finish();
rollback;
