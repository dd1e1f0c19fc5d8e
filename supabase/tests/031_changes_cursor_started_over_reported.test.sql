-- The changes page says when the read started over (migration …_changes_cursor_started_over_reported.sql):
-- `"started_over": true` where the cursor given was not taken as it stands and the read went back to
-- the beginning (another user's cursor, in either form; another cluster's; an untagged one after a
-- restore's adoption; one more than a million ids ahead), the key absent otherwise (no cursor, the
-- caller's own, the plain cluster tag and an untagged cursor taken as before, the pages that follow a
-- read that started over), instead of a page that looked like any other: an app that stored another
-- user's cursor read everything again at every switch and could not find out why.
--
-- Both readers write in this test's one transaction, so their rows share its transaction id: a cursor
-- above it ("ahead": within the million-ids margin, so it is taken as it stands when it is taken) says
-- "nothing newer yet", and a read that starts over reports the rows. On timeline 1 (as pgTAP 010, 028,
-- 029 and 030 compute the tags).

begin;
create extension if not exists pgtap with schema extensions;
select plan(13);

insert into auth.users (id, email) values
  ('a3100000-0000-4000-8000-000000000031', 'started-over-owner@readsync.test'),
  ('b3100000-0000-4000-8000-000000000031', 'started-over-other@readsync.test');

create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;
-- This cluster's tag, each reader's folded tag and u-form user tag, a position above every row within
-- the margin, and one beyond it.
create temp table cursors on commit drop as
  select left(md5(c.made_of), 8) as cluster,
         left(md5(c.made_of || ':a3100000-0000-4000-8000-000000000031'), 8) as owner,
         left(md5(c.made_of || ':b3100000-0000-4000-8000-000000000031'), 8) as other,
         left(md5('b3100000-0000-4000-8000-000000000031'), 8) as other_u,
         (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text as ahead,
         (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 2000000)::text as far_ahead
    from (select system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')
                   as made_of
            from pg_control_system()) c;
grant select on cursors to authenticated;

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "b3100000-0000-4000-8000-000000000031", "role": "authenticated"}', true);
select public.write_reading_progress('other-series', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
insert into res values ('other''s own', public.reading_progress_changes('', 100));
select set_config('request.jwt.claims',
  '{"sub": "a3100000-0000-4000-8000-000000000031", "role": "authenticated"}', true);
select public.write_reading_progress('owned-1', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
select public.write_reading_progress('owned-2', 2, 2, 0.2, false, 'phone', '2026-01-01 00:00:02+00');
insert into res values ('full', public.reading_progress_changes('', 100));
insert into res values ('own', public.reading_progress_changes((select owner || '.' || ahead from cursors), 100));
insert into res values ('plain cluster', public.reading_progress_changes((select cluster || '.' || ahead from cursors), 100));
insert into res values ('untagged', public.reading_progress_changes((select ahead from cursors), 100));
-- The cursor the other reader was handed (an app that stored it by device), and one of theirs above
-- every row.
insert into res values ('other''s handed out',
  public.reading_progress_changes((select r ->> 'next_cursor' from res where label = 'other''s own'), 100));
insert into res values ('other folded', public.reading_progress_changes((select other || '.' || ahead from cursors), 100));
insert into res values ('other u-form',
  public.reading_progress_changes((select cluster || '.u' || other_u || '.' || ahead from cursors), 100));
insert into res values ('another cluster', public.reading_progress_changes((select '0badc0de.' || ahead from cursors), 100));
insert into res values ('far ahead', public.reading_progress_changes((select owner || '.' || far_ahead from cursors), 100));
-- A read that starts over a page at a time: its first page says so, the pages after it (from the
-- cursors it handed out) do not.
insert into res values ('other folded, page 1',
  public.reading_progress_changes((select other || '.' || ahead from cursors), 1));
insert into res values ('other folded, page 2',
  public.reading_progress_changes((select r ->> 'next_cursor' from res where label = 'other folded, page 1'), 1));
reset role;

select is((select jsonb_path_query_array(r, '$.changes[*].series_id') from res where label = 'full'),
  '["owned-1", "owned-2"]'::jsonb, 'premise: a read from the beginning reports the caller''s rows, not the other''s');

-- ---------------------------------------------------------------------------------------------
-- Taken as it stands (or no cursor): the page is the JSON it was before, no key
-- ---------------------------------------------------------------------------------------------
select is(
  (select jsonb_object_agg(label, r ? 'started_over') from res
    where label in ('full', 'own', 'plain cluster', 'untagged')),
  '{"full": false, "own": false, "plain cluster": false, "untagged": false}'::jsonb,
  'no cursor, the caller''s own, the plain cluster tag and an untagged cursor: no started_over key');
select is(
  (select jsonb_object_agg(label, r -> 'changes') from res where label in ('own', 'plain cluster', 'untagged')),
  '{"own": [], "plain cluster": [], "untagged": []}'::jsonb,
  'premise: those were taken as they stand (nothing newer yet)');
select is((select array(select jsonb_object_keys(r) order by 1) from res where label = 'full'),
  array['changes', 'has_more', 'next_cursor'],
  'a page that did not start over has the three keys it always had');

-- ---------------------------------------------------------------------------------------------
-- Started over: the page says so, and holds the caller's changes from the beginning
-- ---------------------------------------------------------------------------------------------
select is(
  (select jsonb_object_agg(label, r -> 'started_over') from res
    where label in ('other''s handed out', 'other folded', 'other u-form', 'another cluster', 'far ahead')),
  '{"other''s handed out": true, "other folded": true, "other u-form": true, "another cluster": true,
    "far ahead": true}'::jsonb,
  'another user''s cursor (handed out to them, folded, u-form), another cluster''s and one far ahead: started_over true (was: no key)');
select is(
  (select jsonb_agg(distinct r -> 'changes') from res
    where label in ('other''s handed out', 'other folded', 'other u-form', 'another cluster', 'far ahead')),
  jsonb_build_array((select r -> 'changes' from res where label = 'full')),
  'premise: each of them reported the caller''s rows from the beginning');
select is((select r -> 'started_over' from res where label = 'other folded, page 1'), 'true'::jsonb,
  'the first page of a read that starts over says so');
select is(
  jsonb_build_object('more', (select r -> 'has_more' from res where label = 'other folded, page 1'),
                     'key', (select r ? 'started_over' from res where label = 'other folded, page 2'),
                     'read', (select jsonb_array_length(r -> 'changes') from res where label = 'other folded, page 2')),
  '{"more": true, "key": false, "read": 1}'::jsonb,
  'the page after it, from the cursor it handed out, is read on and has no key');
select matches((select r ->> 'next_cursor' from res where label = 'other''s handed out'),
  (select '^' || owner || '\.[0-9]+$' from cursors),
  'the cursor a read that started over hands out is the caller''s');

-- ---------------------------------------------------------------------------------------------
-- After a restore's adoption an untagged cursor starts over (its project cannot be told): it says so
-- ---------------------------------------------------------------------------------------------
update private.reading_progress_cursor_origin set origin = 'pgtap-031-adopted';
insert into private.reading_progress_cursor_origin (origin)
  select 'pgtap-031-adopted' where not exists (select 1 from private.reading_progress_cursor_origin);
set local role authenticated;
insert into res values ('untagged, adopted', public.reading_progress_changes((select ahead from cursors), 100));
insert into res values ('own before the adoption, adopted',
  public.reading_progress_changes((select owner || '.' || ahead from cursors), 100));
insert into res values ('own after the adoption',
  public.reading_progress_changes((select r ->> 'next_cursor' from res where label = 'own before the adoption, adopted'), 100));
reset role;
select is(
  (select jsonb_object_agg(label, r -> 'started_over') from res
    where label in ('untagged, adopted', 'own before the adoption, adopted')),
  '{"untagged, adopted": true, "own before the adoption, adopted": true}'::jsonb,
  'after a restore''s adoption, an untagged cursor and one of before the adoption: started_over true');
select is((select r -> 'changes' from res where label = 'untagged, adopted'),
  (select r -> 'changes' from res where label = 'full'),
  'premise: reported from the beginning');
select ok(not (select r ? 'started_over' from res where label = 'own after the adoption'),
  'the cursor handed out after the adoption is taken: no key');

-- ---------------------------------------------------------------------------------------------
-- The function stays as the migrations require it
-- ---------------------------------------------------------------------------------------------
select ok(
  (select prosecdef = false and proconfig @> array['search_path=""', 'extra_float_digits=1']
     from pg_proc where oid = 'public.reading_progress_changes(text, integer)'::regprocedure),
  'security invoker, search_path '''' and extra_float_digits 1, as before');

select * from finish();
rollback;
