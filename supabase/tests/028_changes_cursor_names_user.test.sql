-- The changes cursor names its user (migration …_changes_cursor_names_user.sql): every cursor handed
-- out carries "u<user tag>." after the cluster's tag, the user tag 8 hex digits of the md5 of the user
-- id; another user's cursor starts over from the beginning, as another cluster's does, instead of
-- being taken as the caller's (which skipped every change of the caller made before it). A cursor
-- without a user tag (handed out before) is taken as before.
--
-- Since migration …_changes_cursor_user_folded_into_tag.sql the cursors handed out name their user
-- by one tag in the older form ("<tag>.<xid>", the user folded into the cluster's tag: pgTAP 029);
-- this file checks that the cursors in the "u" form handed out before are read as they were, and that
-- the cursors handed out name the caller (the folded tag).
--
-- Both readers write in this test's one transaction, so their rows share its transaction id: a cursor
-- above it ("ahead": within the million-ids margin, so it is taken as it stands when it is taken) says
-- "nothing newer yet", and a read that starts over reports the rows.

begin;
create extension if not exists pgtap with schema extensions;
select plan(14);

insert into auth.users (id, email) values
  ('a2800000-0000-4000-8000-000000000028', 'cursor-owner@readsync.test'),
  ('b2800000-0000-4000-8000-000000000028', 'cursor-other@readsync.test');

create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;
-- This cluster's tag (as the function computes it on timeline 1, as pgTAP 010 does), each reader's
-- user tag, the owner's folded tag (what its cursors carry now), and a position above every row (the caller's own id included) within the margin.
create temp table cursors on commit drop as
  select left(md5(system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')), 8)
           as cluster,
         left(md5('a2800000-0000-4000-8000-000000000028'), 8) as owner,
         left(md5(system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')
                  || ':a2800000-0000-4000-8000-000000000028'), 8) as folded,
         left(md5('b2800000-0000-4000-8000-000000000028'), 8) as other,
         (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text as ahead
    from pg_control_system();
grant select on cursors to authenticated;

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "b2800000-0000-4000-8000-000000000028", "role": "authenticated"}', true);
select public.write_reading_progress('other-series', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
select set_config('request.jwt.claims',
  '{"sub": "a2800000-0000-4000-8000-000000000028", "role": "authenticated"}', true);
select public.write_reading_progress('owned-1', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
select public.write_reading_progress('owned-2', 2, 2, 0.2, false, 'phone', '2026-01-01 00:00:02+00');
insert into res values ('full', public.reading_progress_changes('', 100));
insert into res values ('page', public.reading_progress_changes('', 1));
insert into res values ('own ahead',
  public.reading_progress_changes((select cluster || '.u' || owner || '.' || ahead from cursors), 100));
insert into res values ('other ahead',
  public.reading_progress_changes((select cluster || '.u' || other || '.' || ahead from cursors), 100));
insert into res values ('other ahead after a series',
  public.reading_progress_changes((select cluster || '.u' || other || '.' || ahead || ':zzz' from cursors), 100));
insert into res values ('other without cluster tag',
  public.reading_progress_changes((select 'u' || other || '.' || ahead from cursors), 100));
insert into res values ('untagged user ahead',
  public.reading_progress_changes((select cluster || '.' || ahead from cursors), 100));
reset role;

select is((select jsonb_path_query_array(r, '$.changes[*].series_id') from res where label = 'full'),
  '["owned-1", "owned-2"]'::jsonb, 'premise: a read from the beginning reports the caller''s rows, not the other''s');

-- ---------------------------------------------------------------------------------------------
-- Cursors carry the user's tag
-- ---------------------------------------------------------------------------------------------
select matches((select r ->> 'next_cursor' from res where label = 'full'),
  (select '^' || folded || '\.[0-9]+$' from cursors),
  'a last page''s cursor is <tag>.<xid>, the tag the md5 of the cluster''s and the user id (was: the cluster''s only; then u<user tag>)');
select matches((select r ->> 'next_cursor' from res where label = 'page'),
  (select '^' || folded || '\.[0-9]+(:owned-1)?$' from cursors),
  'a full page''s cursor carries it too (here the horizon: the rows are this open transaction''s)');
select matches((select r ->> 'next_cursor' from res where label = 'other ahead'),
  (select '^' || folded || '\.[0-9]+$' from cursors),
  'the cursor handed out for another user''s is the caller''s');

-- ---------------------------------------------------------------------------------------------
-- The caller's own cursor is taken as it stands; another user's starts over
-- ---------------------------------------------------------------------------------------------
select is((select r -> 'changes' from res where label = 'own ahead'), '[]'::jsonb,
  'the caller''s own cursor above every row is taken as it stands (nothing newer yet)');
select is((select r -> 'changes' from res where label = 'other ahead'),
  (select r -> 'changes' from res where label = 'full'),
  'another user''s cursor starts over from the beginning (was: refused as malformed; untagged, taken as it stands and nothing reported)');
select is((select r -> 'changes' from res where label = 'other ahead after a series'),
  (select r -> 'changes' from res where label = 'full'),
  'so does its <xid>:<series> form');
select is((select r -> 'changes' from res where label = 'other without cluster tag'),
  (select r -> 'changes' from res where label = 'full'),
  'so does one without a cluster tag');
select is((select r -> 'changes' from res where label = 'untagged user ahead'), '[]'::jsonb,
  'a cursor without a user tag (handed out before) is taken as it stands, as before');
select matches((select r ->> 'next_cursor' from res where label = 'untagged user ahead'),
  (select '^' || folded || '\.' || ahead || '$' from cursors),
  'and the cursor handed out for it names the user');

set local role authenticated;
select throws_ok($$select public.reading_progress_changes('u0badc0d.5', 10)$$, '22023',
  'reading_progress_changes: invalid cursor', 'a 7-digit user tag is refused');
select throws_ok($$select public.reading_progress_changes('u0BADC0DE.5', 10)$$, '22023',
  'reading_progress_changes: invalid cursor', 'a user tag must be 8 lower-case hex digits');
select throws_ok(
  format('select public.reading_progress_changes(%L, 10)', (select 'u' || owner || '.' || cluster || '.5' from cursors)),
  '22023', 'reading_progress_changes: invalid cursor', 'the user tag comes after the cluster''s');
reset role;

-- Where no cluster tag can be computed (this role may not call pg_control_system(), no restore was
-- adopted, timeline 1), cursors name their user all the same (a tag of the user alone), and another
-- user's starts over.
revoke execute on function pg_control_system() from public;
delete from private.reading_progress_cursor_origin;
select set_config('readsync.system_identifier', '', false);
set local role authenticated;
insert into res values ('untaggable',
  public.reading_progress_changes((select 'u' || other || '.' || ahead from cursors), 100));
reset role;
grant execute on function pg_control_system() to public;
select is(
  (select jsonb_build_object('next', r ->> 'next_cursor'
                                        ~ ('^' || left(md5(':a2800000-0000-4000-8000-000000000028'), 8) || '\.[0-9]+$'),
                             'changes', r -> 'changes') from res where label = 'untaggable'),
  jsonb_build_object('next', true, 'changes', (select r -> 'changes' from res where label = 'full')),
  'no cluster tag: the cursor is <tag of the user alone>.<xid>, and another user''s u-form starts over');

select * from finish();
rollback;
