-- A cursor handed out after a failed read of the system identifier names its user (the tag of the user
-- alone, left(md5(':' || <user id>), 8); migration …_changes_cursor_failed_read_names_user.sql), instead
-- of being untagged: another user's read took an untagged cursor as its own, and every change of that
-- user made before it was skipped. The caller's own is read as an untagged cursor of theirs (taken as
-- it stands on timeline 1 without an adoption, started over after one), whether the read fails again
-- or not; another user's starts over from the beginning.
--
-- The failed read is made as pgTAP 019 makes it (see its top): a cast from bigint to text that raises,
-- which the function's read statement (system_identifier::text) takes when it is first planned in the
-- session. The real identifier is kept in the session setting the function reads until the cast is in
-- place, so that statement is first planned under the cast. Both readers write in this test's one
-- transaction, so their rows share its transaction id: a cursor above it ("ahead", within the
-- million-ids margin) says "nothing newer yet" when it is taken, and a read that starts over reports
-- the rows.

begin;
create extension if not exists pgtap with schema extensions;
select plan(8);

insert into auth.users (id, email) values
  ('a3000000-0000-4000-8000-000000000030', 'failed-read-owner@readsync.test'),
  ('b3000000-0000-4000-8000-000000000030', 'failed-read-other@readsync.test');

create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;
create temp table cursors on commit drop as
  select system_identifier::text as system,
         left(md5(':a3000000-0000-4000-8000-000000000030'), 8) as owner_alone,
         (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text as ahead
    from pg_control_system();
grant select on cursors to authenticated;

-- The identifier as a read that succeeded keeps it for the session: no read until it is forgotten.
select set_config('readsync.system_identifier', (select system from cursors), false);
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "b3000000-0000-4000-8000-000000000030", "role": "authenticated"}', true);
select public.write_reading_progress('other-series', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
insert into res values ('other full', public.reading_progress_changes('', 100));
select set_config('request.jwt.claims',
  '{"sub": "a3000000-0000-4000-8000-000000000030", "role": "authenticated"}', true);
select public.write_reading_progress('owned-1', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
insert into res values ('full', public.reading_progress_changes('', 100));
reset role;

-- The read fails from here on, and the identifier is forgotten, so it is read again.
create function pg_temp.control_file_read_fails(bigint) returns text language plpgsql as $fn$
begin
  raise exception 'calculated CRC checksum does not match value stored in file';
end
$fn$;
grant execute on function pg_temp.control_file_read_fails(bigint) to authenticated;
create cast (bigint as text) with function pg_temp.control_file_read_fails(bigint);
select set_config('readsync.system_identifier', '', false);

set local role authenticated;
insert into res values ('failed', public.reading_progress_changes('', 100));
-- The cursor the failed read handed out, moved above every row: its tag (if any) kept.
create temp table handed_out on commit drop as
  select coalesce(substring(r ->> 'next_cursor' from '^([0-9a-f]{8}\.)'), '') || (select ahead from cursors) as cursor
    from res where label = 'failed';
insert into res values ('own, failing', public.reading_progress_changes((select cursor from handed_out), 100));
select set_config('request.jwt.claims',
  '{"sub": "b3000000-0000-4000-8000-000000000030", "role": "authenticated"}', true);
insert into res values ('other, failing', public.reading_progress_changes((select cursor from handed_out), 100));
reset role;

select is(current_setting('readsync.system_identifier', true), '', 'premise: the read failed (nothing kept)');
select matches((select r ->> 'next_cursor' from res where label = 'failed'),
  (select '^' || owner_alone || '\.[0-9]+$' from cursors),
  'a failed read hands out <tag of the user alone>.<xid>, the older form (was: an untagged <xid>)');
select is((select r -> 'changes' from res where label = 'other, failing'),
  (select r -> 'changes' from res where label = 'other full'),
  'another user''s read of it, failing too, starts over from the beginning (was: taken as it stands, nothing reported)');
select is((select r -> 'changes' from res where label = 'own, failing'), '[]'::jsonb,
  'the caller''s own, met by a failed read again, is taken as it stands');

-- The read succeeds again (the cast and its function gone: the statement is planned anew).
drop cast (bigint as text);
drop function pg_temp.control_file_read_fails(bigint);
set local role authenticated;
insert into res values ('other', public.reading_progress_changes((select cursor from handed_out), 100));
select set_config('request.jwt.claims',
  '{"sub": "a3000000-0000-4000-8000-000000000030", "role": "authenticated"}', true);
insert into res values ('own', public.reading_progress_changes((select cursor from handed_out), 100));
reset role;

select is((select r -> 'changes' from res where label = 'other'),
  (select r -> 'changes' from res where label = 'other full'),
  'another user''s read of it starts over from the beginning (was: taken as it stands, nothing reported)');
select is(
  jsonb_build_object('changes', (select r -> 'changes' from res where label = 'own'),
                     'next', (select r ->> 'next_cursor'
                                ~ ('^' || left(md5((select system from cursors)
                                                   || coalesce((select origin from private.reading_progress_cursor_origin), '')
                                                   || ':a3000000-0000-4000-8000-000000000030'), 8) || '\.[0-9]+$')
                              from res where label = 'own')),
  jsonb_build_object('changes', '[]'::jsonb, 'next', true),
  'the caller''s own is taken as it stands by a read that succeeds (as untagged), which hands out the folded tag');

-- A restore adopted (a new cursor origin, as private.reading_progress_adopt_restored_rows() draws): the
-- cluster of the caller's own cannot be told, so it starts over, as an untagged cursor does there.
update private.reading_progress_cursor_origin set origin = 'pgtap-030-adopted';
insert into private.reading_progress_cursor_origin (origin)
  select 'pgtap-030-adopted' where not exists (select 1 from private.reading_progress_cursor_origin);
set local role authenticated;
insert into res values ('own, adopted', public.reading_progress_changes((select cursor from handed_out), 100));
insert into res values ('untagged, adopted', public.reading_progress_changes((select ahead from cursors), 100));
reset role;
select is((select r -> 'changes' from res where label = 'own, adopted'),
  (select r -> 'changes' from res where label = 'full'),
  'after a restore''s adoption, the caller''s own starts over from the beginning');
select is((select r -> 'changes' from res where label = 'untagged, adopted'),
  (select r -> 'changes' from res where label = 'full'),
  'premise: as an untagged cursor does there');

select * from finish();
rollback;
