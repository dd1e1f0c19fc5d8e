-- The changes cursor keeps the older form "[<tag>.]<xid>[:<series_id>]", its user folded into the one
-- tag (migration …_changes_cursor_user_folded_into_tag.sql), instead of the "[<cluster tag>.]u<user
-- tag>.<xid>" form, which app bundles already in users' hands refuse for good (their check is the older
-- format's) and an older progress function answers 422. The tag is left(md5(<what the cluster tag is
-- made of, '' where there is none> || ':' || <user id>), 8). The caller's own folded tag is taken as it
-- stands; another user's, another cluster's or another adoption's starts over from the beginning; the
-- plain cluster tag (handed out before cursors named their user) is taken as before; the u-form handed
-- out by …_changes_cursor_names_user.sql is read as it read it; an untagged cursor as before.
--
-- Both readers write in this test's one transaction, so their rows share its transaction id: a cursor
-- above it ("ahead": within the million-ids margin, so it is taken as it stands when it is taken) says
-- "nothing newer yet", and a read that starts over reports the rows.

begin;
create extension if not exists pgtap with schema extensions;
select plan(17);

insert into auth.users (id, email) values
  ('a2900000-0000-4000-8000-000000000029', 'fold-owner@readsync.test'),
  ('b2900000-0000-4000-8000-000000000029', 'fold-other@readsync.test');

create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;
-- What this cluster's tag is made of (on timeline 1, as pgTAP 010 and 028 compute it), its tag, each
-- reader's folded tag and u-form user tag, and a position above every row within the margin.
create temp table cursors on commit drop as
  select c.made_of,
         left(md5(c.made_of), 8) as cluster,
         left(md5(c.made_of || ':a2900000-0000-4000-8000-000000000029'), 8) as owner,
         left(md5(c.made_of || ':b2900000-0000-4000-8000-000000000029'), 8) as other,
         left(md5('a2900000-0000-4000-8000-000000000029'), 8) as owner_u,
         left(md5('b2900000-0000-4000-8000-000000000029'), 8) as other_u,
         (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text as ahead
    from (select system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')
                   as made_of
            from pg_control_system()) c;
grant select on cursors to authenticated;

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "b2900000-0000-4000-8000-000000000029", "role": "authenticated"}', true);
select public.write_reading_progress('other-series', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
select set_config('request.jwt.claims',
  '{"sub": "a2900000-0000-4000-8000-000000000029", "role": "authenticated"}', true);
select public.write_reading_progress('owned-1', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
select public.write_reading_progress('owned-2', 2, 2, 0.2, false, 'phone', '2026-01-01 00:00:02+00');
insert into res values ('full', public.reading_progress_changes('', 100));
insert into res values ('page', public.reading_progress_changes('', 1));
insert into res values ('own folded', public.reading_progress_changes((select owner || '.' || ahead from cursors), 100));
insert into res values ('other folded',
  public.reading_progress_changes((select other || '.' || ahead || ':zzz' from cursors), 100));
insert into res values ('plain cluster', public.reading_progress_changes((select cluster || '.' || ahead from cursors), 100));
insert into res values ('own u-form',
  public.reading_progress_changes((select cluster || '.u' || owner_u || '.' || ahead from cursors), 100));
insert into res values ('other u-form',
  public.reading_progress_changes((select cluster || '.u' || other_u || '.' || ahead from cursors), 100));
insert into res values ('untagged', public.reading_progress_changes((select ahead from cursors), 100));
insert into res values ('another cluster', public.reading_progress_changes((select '0badc0de.' || ahead from cursors), 100));
reset role;

select is((select jsonb_path_query_array(r, '$.changes[*].series_id') from res where label = 'full'),
  '["owned-1", "owned-2"]'::jsonb, 'premise: a read from the beginning reports the caller''s rows, not the other''s');

-- ---------------------------------------------------------------------------------------------
-- What a cursor looks like now: the older form, one tag, the user folded in
-- ---------------------------------------------------------------------------------------------
-- The format every app bundle and progress function before …_changes_cursor_names_user.sql checks.
create temp table old_format on commit drop as
  select '^(?:(?:[0-9a-f]{8}\.)?[0-9]{1,19}(?::[A-Za-z0-9][A-Za-z0-9._:-]{0,127})?)?$'::text as re;
select ok(
  (select bool_and(r ->> 'next_cursor' ~ (select re from old_format)) from res),
  'every cursor handed out has the older form, which old clients and old functions take (was: u<user tag>, refused)');
select matches((select r ->> 'next_cursor' from res where label = 'full'),
  (select '^' || owner || '\.[0-9]+$' from cursors),
  'a last page''s cursor is <tag>.<xid>, the tag the md5 of the cluster''s and the user id');
select matches((select r ->> 'next_cursor' from res where label = 'page'),
  (select '^' || owner || '\.[0-9]+(:owned-1)?$' from cursors),
  'a full page''s cursor carries it too');
select is(
  (select jsonb_agg(r ->> 'next_cursor' ~ ('^' || (select owner from cursors) || '\.') order by label) from res
    where label in ('other folded', 'other u-form', 'another cluster', 'plain cluster', 'untagged')),
  '[true, true, true, true, true]'::jsonb,
  'the cursor handed out for any other is the caller''s');

-- ---------------------------------------------------------------------------------------------
-- Incoming cursors
-- ---------------------------------------------------------------------------------------------
select is((select r -> 'changes' from res where label = 'own folded'), '[]'::jsonb,
  'the caller''s own folded tag is taken as it stands (nothing newer yet)');
select is((select r -> 'changes' from res where label = 'other folded'),
  (select r -> 'changes' from res where label = 'full'),
  'another user''s folded tag starts over from the beginning');
select is((select r -> 'changes' from res where label = 'plain cluster'), '[]'::jsonb,
  'the plain cluster tag (handed out before cursors named their user) is taken as before');
select is((select r -> 'changes' from res where label = 'own u-form'), '[]'::jsonb,
  'the caller''s own u-form cursor (handed out by …_changes_cursor_names_user.sql) is taken as it stands');
select is((select r -> 'changes' from res where label = 'other u-form'),
  (select r -> 'changes' from res where label = 'full'),
  'another user''s u-form cursor starts over from the beginning');
select is((select r -> 'changes' from res where label = 'untagged'), '[]'::jsonb,
  'an untagged cursor is taken as before');
select is((select r -> 'changes' from res where label = 'another cluster'),
  (select r -> 'changes' from res where label = 'full'),
  'another cluster''s tag starts over from the beginning');

-- A restore adopted (a new cursor origin, as private.reading_progress_adopt_restored_rows() draws; a
-- new timeline changes what the tag is made of the same way): the caller's own cursors from before
-- start over, folded or plain.
update private.reading_progress_cursor_origin set origin = 'pgtap-029-adopted';
insert into private.reading_progress_cursor_origin (origin)
  select 'pgtap-029-adopted' where not exists (select 1 from private.reading_progress_cursor_origin);
set local role authenticated;
insert into res values ('own folded, adopted',
  public.reading_progress_changes((select owner || '.' || ahead from cursors), 100));
insert into res values ('plain cluster, adopted',
  public.reading_progress_changes((select cluster || '.' || ahead from cursors), 100));
reset role;
select is(
  jsonb_build_object('folded', (select r -> 'changes' from res where label = 'own folded, adopted'),
                     'plain', (select r -> 'changes' from res where label = 'plain cluster, adopted')),
  jsonb_build_object('folded', (select r -> 'changes' from res where label = 'full'),
                     'plain', (select r -> 'changes' from res where label = 'full')),
  'after a restore''s adoption, the caller''s own cursors of before start over, folded or plain');
select matches((select r ->> 'next_cursor' from res where label = 'own folded, adopted'),
  (select '^' || left(md5(system_identifier::text || 'pgtap-029-adopted:a2900000-0000-4000-8000-000000000029'), 8)
          || '\.[0-9]+$' from pg_control_system()),
  'and the cursor handed out folds the user into the new tag');

-- Where no cluster tag can be computed (this role may not call pg_control_system(), no restore was
-- adopted, timeline 1), the tag is made from the user alone: the caller's own is taken, another
-- user's and any other tag start over (every tagged cursor did there before).
revoke execute on function pg_control_system() from public;
delete from private.reading_progress_cursor_origin;
select set_config('readsync.system_identifier', '', false);
set local role authenticated;
insert into res values ('untaggable', public.reading_progress_changes('', 100));
insert into res values ('untaggable own',
  public.reading_progress_changes(left(md5(':a2900000-0000-4000-8000-000000000029'), 8) || '.' || (select ahead from cursors), 100));
insert into res values ('untaggable other',
  public.reading_progress_changes(left(md5(':b2900000-0000-4000-8000-000000000029'), 8) || '.' || (select ahead from cursors), 100));
insert into res values ('untaggable plain cluster',
  public.reading_progress_changes((select cluster || '.' || ahead from cursors), 100));
reset role;
grant execute on function pg_control_system() to public;
select matches((select r ->> 'next_cursor' from res where label = 'untaggable'),
  '^' || left(md5(':a2900000-0000-4000-8000-000000000029'), 8) || '\.[0-9]+$',
  'no cluster tag: the cursor is <tag of the user alone>.<xid>, the older form all the same');
select is((select r -> 'changes' from res where label = 'untaggable own'), '[]'::jsonb,
  'no cluster tag: the caller''s own is taken as it stands');
select is(
  jsonb_build_object('other', (select r -> 'changes' from res where label = 'untaggable other'),
                     'plain', (select r -> 'changes' from res where label = 'untaggable plain cluster')),
  jsonb_build_object('other', (select r -> 'changes' from res where label = 'full'),
                     'plain', (select r -> 'changes' from res where label = 'full')),
  'no cluster tag: another user''s tag, and a tag handed out elsewhere, start over from the beginning');

select * from finish();
rollback;
