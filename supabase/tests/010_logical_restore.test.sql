-- Moving a project by pg_dump and restore (migration 013): changes cursors name the cluster that
-- handed them out, so another cluster's cursor starts over; private.reading_progress_adopt_restored_rows()
-- re-stamps rows and deletions that arrived with the other cluster's transaction ids.

begin;
-- The lock its ALTER TABLE … DISABLE/ENABLE TRIGGER takes (SHARE ROW EXCLUSIVE), taken first: taken later, after this transaction has
-- written, it is an upgrade that deadlocks with a session holding a weaker lock on the table and
-- waiting for this transaction (pgTAP 038 failed so once in a full run).
lock table public.reading_progress in share row exclusive mode;
create extension if not exists pgtap with schema extensions;
select plan(30);

insert into auth.users (id, email) values
  ('a1a1a1a1-0000-4000-8000-000000000010', 'restore-a@readsync.test');

create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;
create temp table msgs_before on commit drop as select id from realtime.messages;

-- This cluster's tag, as the function computes it, and the tag its cursors carry: the user folded in.
create temp table cluster on commit drop as
  select left(md5(system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')), 8)
           as tag,
         left(md5(system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')
                  || ':a1a1a1a1-0000-4000-8000-000000000010'), 8) as folded
    from pg_control_system();
grant select on cluster to authenticated;

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "a1a1a1a1-0000-4000-8000-000000000010", "role": "authenticated"}', true);
select public.write_reading_progress('kept-1', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
select public.write_reading_progress('kept-2', 2, 2, 0.2, false, 'phone', '2026-01-01 00:00:02+00');
select public.write_reading_progress('gone', 3, 3, 0.3, false, 'phone', '2026-01-01 00:00:03+00');
delete from public.reading_progress where series_id = 'gone';
insert into res values ('first', public.reading_progress_changes('', 100));

-- ---------------------------------------------------------------------------------------------
-- Cursors carry the cluster's tag
-- ---------------------------------------------------------------------------------------------
select is(
  (select split_part(r ->> 'next_cursor', '.', 1) from res where label = 'first'),
  (select folded from cluster),
  'next_cursor starts with this cluster''s tag, its user folded in (md5 of the system identifier and the user id, 8 hex digits)');
select ok(
  (select r ->> 'next_cursor' ~ '^[0-9a-f]{8}\.[0-9]+$' from res where label = 'first'),
  'a last page''s cursor is <tag>.<xid>');
select is(
  (public.reading_progress_changes((select r ->> 'next_cursor' from res where label = 'first'), 100) -> 'changes'),
  (public.reading_progress_changes(
     pg_snapshot_xmin(pg_current_snapshot())::text, 100) -> 'changes'),
  'a tagged cursor reads as its untagged form here (rows at or above the horizon)');
select ok(
  (public.reading_progress_changes('', 2) ->> 'next_cursor') ~ '^[0-9a-f]{8}\.[0-9]+(:[A-Za-z0-9._:-]+)?$',
  'a full page''s cursor is tagged too');
-- A cursor of another cluster, just above this one's xmax: without tags it would read as "nothing
-- new yet" until this cluster's ids caught up with it, so the device would miss every change.
select is(
  (public.reading_progress_changes(
     '0badc0de.' || (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text, 100) -> 'changes'),
  (public.reading_progress_changes('', 100) -> 'changes'),
  'another cluster''s cursor (another tag) starts over from the beginning');
select is(
  (public.reading_progress_changes(
     '0badc0de.' || (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text || ':kept-1', 100)
   ->> 'next_cursor'),
  (public.reading_progress_changes('', 100) ->> 'next_cursor'),
  'so does its <xid>:<series> form, and the next cursor is this cluster''s');
select is(
  (public.reading_progress_changes(
     (select tag from cluster) || '.' || (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text, 100)
   -> 'changes'),
  '[]'::jsonb,
  'this cluster''s own tag above xmax is taken as it stands (nothing newer yet)');
select is(
  (public.reading_progress_changes(
     (select tag from cluster) || '.' || (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 10000000)::text, 100)
   -> 'changes'),
  (public.reading_progress_changes('', 100) -> 'changes'),
  'this cluster''s tag far above xmax (a point-in-time restore took the cluster back) starts over too');
select throws_ok($$select public.reading_progress_changes('0BADC0DE.5', 10)$$, '22023',
  'reading_progress_changes: invalid cursor', 'a tag must be 8 lower-case hex digits');
select throws_ok($$select public.reading_progress_changes('badc0de.5', 10)$$, '22023',
  'reading_progress_changes: invalid cursor', 'a 7-digit tag is refused');
reset role;

-- Where this role may not call pg_control_system() (a platform may revoke it), cursors carry a tag of
-- their user alone and read as before. The system identifier is kept per session, so the test forgets it first.
revoke execute on function pg_control_system() from public;
select set_config('readsync.system_identifier', '', false);
set local role authenticated;
select ok(
  (public.reading_progress_changes('', 100) ->> 'next_cursor')
    ~ ('^' || left(md5(':a1a1a1a1-0000-4000-8000-000000000010'), 8) || '\.[0-9]+$'),
  'without pg_control_system(): a cursor tagged by its user alone');
select is(
  (public.reading_progress_changes(public.reading_progress_changes('', 1) ->> 'next_cursor', 100) -> 'changes'),
  (public.reading_progress_changes(pg_snapshot_xmin(pg_current_snapshot())::text, 100) -> 'changes'),
  'which pages on as before');
reset role;
grant execute on function pg_control_system() to public;

-- ---------------------------------------------------------------------------------------------
-- A restore from another cluster: two rows and the deletion keep that cluster's (higher) ids
-- ---------------------------------------------------------------------------------------------
create temp table foreign_xid on commit drop as
  select (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 5000000)::text::xid8 as xid;
alter table public.reading_progress disable trigger user;
update public.reading_progress set change_xid = (select xid from foreign_xid)
 where user_id = 'a1a1a1a1-0000-4000-8000-000000000010';
alter table public.reading_progress enable trigger user;
update public.reading_progress_deletions set deleted_xid = (select xid from foreign_xid)
 where user_id = 'a1a1a1a1-0000-4000-8000-000000000010';
create temp table before_adopt on commit drop as
  select series_id, updated_at, synced_at, created_at, chapter from public.reading_progress
   where user_id = 'a1a1a1a1-0000-4000-8000-000000000010';

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "a1a1a1a1-0000-4000-8000-000000000010", "role": "authenticated"}', true);
select is(
  (select count(*)::int from jsonb_array_elements(public.reading_progress_changes(
     public.reading_progress_changes('', 1) ->> 'next_cursor', 100) -> 'changes')),
  3,
  'before adoption: rows with ids from the future are read again from any cursor');
select throws_ok($$select private.reading_progress_adopt_restored_rows()$$, '42501', null,
  'authenticated may not run the adoption');
reset role;

-- The operator had the broadcast trigger firing ALWAYS and the tie log off: both stay so.
alter table public.reading_progress enable always trigger reading_progress_broadcast;
alter table public.reading_progress disable trigger reading_progress_log_replaced_tie;
select is(
  private.reading_progress_adopt_restored_rows(),
  '{"rows": 2, "deletions": 1}'::jsonb,
  'the adoption stamps the two rows and the deletion that carried another cluster''s ids');
select is(
  (select count(*)::int from public.reading_progress
    where user_id = 'a1a1a1a1-0000-4000-8000-000000000010' and change_xid = pg_current_xact_id())
  + (select count(*)::int from public.reading_progress_deletions
    where user_id = 'a1a1a1a1-0000-4000-8000-000000000010' and deleted_xid = pg_current_xact_id()),
  3,
  'they now carry the adopting transaction''s id');
select results_eq(
  $$select series_id, updated_at, synced_at, created_at, chapter from public.reading_progress
     where user_id = 'a1a1a1a1-0000-4000-8000-000000000010' order by series_id$$,
  $$select * from before_adopt order by series_id$$,
  'nothing else about the rows changed (no stamp trigger ran)');
select is(
  (select count(*)::int from realtime.messages m where not exists (select 1 from msgs_before b where b.id = m.id)
      and m.payload ->> 'operation' = 'UPDATE'),
  0, 'nothing was broadcast');
select is(
  (select string_agg(tgname || '=' || tgenabled::text, ',' order by tgname) from pg_trigger
    where tgrelid = 'public.reading_progress'::regclass and not tgisinternal),
  'reading_progress_broadcast=A,reading_progress_end_claims=O,reading_progress_log_replaced_tie=D,reading_progress_new_life_after_deletion=O,reading_progress_remember_deletion=O,reading_progress_reset_inserted_with_position=O,reading_progress_reset_marked_with_position=O,reading_progress_reset_marked_zeroes_position=O,reading_progress_reset_sent_with_position=O,reading_progress_reset_superseded=O,reading_progress_serialize_user_writes=O,reading_progress_stamp=O,reading_progress_stamp_after_deletion=O,reading_progress_truncate_as_delete=O',
  'every trigger is back in the state it was in (enabled, ALWAYS, disabled)');
alter table public.reading_progress enable trigger reading_progress_broadcast;
alter table public.reading_progress enable trigger reading_progress_log_replaced_tie;
select is(
  private.reading_progress_adopt_restored_rows(),
  '{"rows": 0, "deletions": 0}'::jsonb,
  'a second run finds nothing to adopt');

-- ---------------------------------------------------------------------------------------------
-- The adoption draws a new cursor origin: cursors from before it start over, even where the old
-- and the new cluster share a system identifier (copies of one prepared data directory do)
-- ---------------------------------------------------------------------------------------------
select is(
  (select count(*)::int from private.reading_progress_cursor_origin), 1,
  'the adoption keeps one cursor origin');
select isnt(
  (select left(md5(system_identifier::text || (select origin from private.reading_progress_cursor_origin)), 8)
     from pg_control_system()),
  (select tag from cluster),
  'so this cluster''s tag is a new one');
set local role authenticated;
select is(
  (public.reading_progress_changes(
     (select tag from cluster) || '.' || (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text, 100)
   -> 'changes'),
  (public.reading_progress_changes('', 100) -> 'changes'),
  'a cursor of the old tag above every row (the old project''s ids ran ahead; read as this cluster''s it would say nothing new) starts over from the beginning');
select is(
  (public.reading_progress_changes(
     (select folded from cluster) || '.' || (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text, 100)
   -> 'changes'),
  (public.reading_progress_changes('', 100) -> 'changes'),
  'so does one the old project handed out to this user (the old tag, the user folded in)');
select is(
  split_part(public.reading_progress_changes('', 100) ->> 'next_cursor', '.', 1),
  (select left(md5(system_identifier::text || (select origin from private.reading_progress_cursor_origin)
                   || ':a1a1a1a1-0000-4000-8000-000000000010'), 8)
     from pg_control_system()),
  'new cursors carry the new tag (the origin is read on every call, not kept per connection)');
select throws_ok($$update private.reading_progress_cursor_origin set origin = 'mine'$$, '42501', null,
  'a signed-in user may read the origin (the tag is computed as the caller) but not change it');
reset role;
set local role anon;
select throws_ok($$select 1 from private.reading_progress_cursor_origin$$, '42501', null,
  'anon may not read it');
reset role;
-- Where pg_control_system() may not be called, the origin alone tags the cursors.
revoke execute on function pg_control_system() from public;
select set_config('readsync.system_identifier', '', false);
set local role authenticated;
select is(
  split_part(public.reading_progress_changes('', 100) ->> 'next_cursor', '.', 1),
  (select left(md5(origin || ':a1a1a1a1-0000-4000-8000-000000000010'), 8) from private.reading_progress_cursor_origin),
  'without pg_control_system(), an adopted project''s cursors carry the origin''s tag (the user folded in)');
select is(
  (public.reading_progress_changes(
     (select tag from cluster) || '.' || (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text, 100)
   -> 'changes'),
  (public.reading_progress_changes('', 100) -> 'changes'),
  'so the old project''s cursors start over there too');
select is(
  (public.reading_progress_changes(
     (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text, 100) -> 'changes'),
  (public.reading_progress_changes('', 100) -> 'changes'),
  'an untagged cursor (what the old project handed out on such a platform) starts over once a restore was adopted');
reset role;
grant execute on function pg_control_system() to public;

select * from finish();
rollback;
