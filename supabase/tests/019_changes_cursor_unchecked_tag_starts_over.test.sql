-- A tagged changes cursor met by a failed read of the system identifier starts over from the beginning
-- (migration …_changes_cursor_unchecked_tag_starts_over.sql), instead of being read as this cluster's:
-- with no tag to compare it with, another cluster's cursor (or another timeline's) was taken as it
-- stands, and the rows below its ids were not reported. So does one met where no tag can be computed
-- at all (no pg_control_system(), no adoption, timeline 1), which was let through the same way.
--
-- The failed read: PostgreSQL 15 reads pg_control without a lock, and pg_control_system() fails its
-- CRC check when it meets a checkpoint rewriting the file; that race cannot be made to happen on
-- purpose. What the function does with a failure is tested by making its read statement raise inside
-- this test's transaction (rolled back): a cast from bigint to text that raises, which the statement
-- (system_identifier::text) takes when it is first planned in the session, as the function's first
-- read of the identifier in it. Nothing else of the function changes; the cast is dropped again
-- before the last check. The real identifier is kept in the session setting the function reads
-- (readsync.system_identifier) for the checks before, so the read statement is first planned under
-- the cast.

begin;
create extension if not exists pgtap with schema extensions;
select plan(9);

insert into auth.users (id, email) values ('a1900000-0000-4000-8000-000000000019', 'unchecked@readsync.test');

create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;
-- This cluster's tag (as the function computes it on timeline 1, as pgTAP 010 does), the tag its
-- cursors carry (the user folded in, migration …_changes_cursor_user_folded_into_tag.sql), its system
-- identifier, and a cursor above every row (the caller's own id included) within the million-ids
-- margin, so that it is taken as it stands when it is taken: nothing newer yet.
create temp table cluster on commit drop as
  select left(md5(system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')), 8)
           as tag,
         left(md5(system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')
                  || ':a1900000-0000-4000-8000-000000000019'), 8) as folded,
         system_identifier::text as system,
         (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text as ahead
    from pg_control_system();
grant select on cluster to authenticated;

-- The identifier as a read that succeeded keeps it for the session: no read until it is forgotten.
select set_config('readsync.system_identifier', (select system from cluster), false);
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "a1900000-0000-4000-8000-000000000019", "role": "authenticated"}', true);
select public.write_reading_progress('vinland', 3, 4, 0.05, false, 'phone', '2026-01-01 00:00:01+00');
insert into res values ('full', public.reading_progress_changes('', 100));
insert into res values ('foreign read', public.reading_progress_changes('0badc0de.' || (select ahead from cluster), 100));
insert into res values ('own read', public.reading_progress_changes((select tag from cluster) || '.' || (select ahead from cluster), 100));
insert into res values ('own folded read', public.reading_progress_changes((select folded from cluster) || '.' || (select ahead from cluster), 100));
reset role;

select is((select r -> 'changes' -> 0 ->> 'series_id' from res where label = 'full'), 'vinland',
  'premise: a read from the beginning reports the row');
select is(
  jsonb_build_object('foreign', (select r -> 'changes' from res where label = 'foreign read'),
                     'own', (select r -> 'changes' from res where label = 'own read'),
                     'own folded', (select r -> 'changes' from res where label = 'own folded read')),
  jsonb_build_object('foreign', (select r -> 'changes' from res where label = 'full'), 'own', '[]'::jsonb,
                     'own folded', '[]'::jsonb),
  'premise, the identifier read: another cluster''s cursor starts over, this cluster''s (and this user''s) is taken as it stands');

-- The read fails from here on (see the top), and the identifier is forgotten, so it is read again.
create function pg_temp.control_file_read_fails(bigint) returns text language plpgsql as $fn$
begin
  raise exception 'calculated CRC checksum does not match value stored in file';
end
$fn$;
grant execute on function pg_temp.control_file_read_fails(bigint) to authenticated;
create cast (bigint as text) with function pg_temp.control_file_read_fails(bigint);
select set_config('readsync.system_identifier', '', false);

set local role authenticated;
insert into res values ('foreign failed', public.reading_progress_changes('0badc0de.' || (select ahead from cluster), 100));
insert into res values ('own failed', public.reading_progress_changes((select tag from cluster) || '.' || (select ahead from cluster), 100));
insert into res values ('own folded failed', public.reading_progress_changes((select folded from cluster) || '.' || (select ahead from cluster), 100));
reset role;

select ok((select r ->> 'next_cursor' ~ ('^' || left(md5(':a1900000-0000-4000-8000-000000000019'), 8) || '\.[0-9]+$')
           from res where label = 'foreign failed'),
  'premise: the read failed (a cursor tagged by its user alone is handed out, pgTAP 030; no error)');
select is((select r -> 'changes' from res where label = 'foreign failed'),
  (select r -> 'changes' from res where label = 'full'),
  'another cluster''s cursor met by a failed read starts over from the beginning (was: taken as it stands, nothing reported)');
select is(
  jsonb_build_object('plain', (select r -> 'changes' from res where label = 'own failed'),
                     'folded', (select r -> 'changes' from res where label = 'own folded failed')),
  jsonb_build_object('plain', (select r -> 'changes' from res where label = 'full'),
                     'folded', (select r -> 'changes' from res where label = 'full')),
  'so does one with this cluster''s tag, or with this user''s folded in: it cannot be checked that time');
select is(current_setting('readsync.system_identifier', true), '', 'a failed read keeps nothing for the session');

-- The read succeeds again (the cast and its function gone: the statement is planned anew).
drop cast (bigint as text);
drop function pg_temp.control_file_read_fails(bigint);
set local role authenticated;
insert into res values ('read again', public.reading_progress_changes('', 100));
reset role;
select is((select split_part(r ->> 'next_cursor', '.', 1) from res where label = 'read again'),
  (select folded from cluster), 'the next read that succeeds tags the cursor again (the user folded in)');

-- Where no tag can be computed at all (this role may not call pg_control_system(), no restore was
-- adopted, timeline 1: cursors carry a tag of their user alone there), a tagged cursor other than
-- the caller's cannot be checked either: it was handed out elsewhere (a device moved between
-- projects) or to another user, so it starts over too.
revoke execute on function pg_control_system() from public;
delete from private.reading_progress_cursor_origin;
select set_config('readsync.system_identifier', '', false);
set local role authenticated;
insert into res values ('untaggable', public.reading_progress_changes('', 100));
insert into res values ('foreign untaggable', public.reading_progress_changes('0badc0de.' || (select ahead from cluster), 100));
insert into res values ('untagged untaggable', public.reading_progress_changes((select ahead from cluster), 100));
reset role;
grant execute on function pg_control_system() to public;

select is(
  jsonb_build_object('next', (select r ->> 'next_cursor'
                                ~ ('^' || left(md5(':a1900000-0000-4000-8000-000000000019'), 8) || '\.[0-9]+$')
                              from res where label = 'untaggable'),
                     'untagged', (select r -> 'changes' from res where label = 'untagged untaggable')),
  jsonb_build_object('next', true, 'untagged', '[]'::jsonb),
  'premise, no cluster tag computable: cursors carry their user''s tag alone, and an untagged one is taken as it stands');
select is((select r -> 'changes' from res where label = 'foreign untaggable'),
  (select r -> 'changes' from res where label = 'full'),
  'a tagged cursor met where no tag can be computed starts over from the beginning (was: taken as it stands, nothing reported)');

select * from finish();
rollback;
