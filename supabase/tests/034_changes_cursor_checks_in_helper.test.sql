-- The changes read's cursor checks live in one helper, private.reading_progress_changes_cursor, which
-- public.reading_progress_changes calls once per read (migration …_changes_cursor_checks_in_helper.sql),
-- so a change of the rules restates the helper alone. The helper is what the read was: security
-- invoker (what the caller may call decides the tags), stable, search_path '', executable by the roles
-- that may execute the read and no other. The answers are the read's of before for every kind of
-- cursor (tests/functions/changes_cursor_helper.test.ts compares them and the inner statement's plans
-- with the read of …_changes_cursor_started_over_reported.sql; pgTAP 004, 019 and 028 to 031 hold).

begin;
create extension if not exists pgtap with schema extensions;
select plan(10);

insert into auth.users (id, email) values
  ('a3400000-0000-4000-8000-000000000034', 'helper-owner@readsync.test'),
  ('b3400000-0000-4000-8000-000000000034', 'helper-other@readsync.test');

create temp table res (label text primary key, r jsonb) on commit drop;
grant all on res to authenticated;
-- Each reader's folded tag (timeline 1, as pgTAP 031 computes it) and a position above every row.
create temp table cursors on commit drop as
  select left(md5(c.made_of || ':a3400000-0000-4000-8000-000000000034'), 8) as owner,
         left(md5(c.made_of || ':b3400000-0000-4000-8000-000000000034'), 8) as other,
         (pg_snapshot_xmax(pg_current_snapshot())::text::bigint + 1000)::text as ahead
    from (select system_identifier::text || coalesce((select origin from private.reading_progress_cursor_origin), '')
                   as made_of
            from pg_control_system()) c;
grant select on cursors to authenticated;

select results_eq(
  $$select p.prosecdef, p.provolatile::text, p.proconfig::text collate "default"
      from pg_proc p where p.oid = 'private.reading_progress_changes_cursor(uuid, text)'::regprocedure$$,
  $$values (false, 's', '{"search_path=\"\""}')$$,
  'the helper is security invoker, stable, with search_path '''' (as the read)');
select is(
  (select array_agg(r order by r) from unnest(array['public', 'anon', 'authenticated', 'service_role']) r
    where r <> 'public'
      and has_function_privilege(r, 'public.reading_progress_changes(text, integer)', 'execute')
          is distinct from has_function_privilege(r, 'private.reading_progress_changes_cursor(uuid, text)', 'execute')),
  null,
  'the API roles that may execute the read, and only they, may execute the helper');
select ok(
  not has_function_privilege('anon', 'private.reading_progress_changes_cursor(uuid, text)', 'execute')
  and not exists (select from pg_proc p, aclexplode(p.proacl) a
                   where p.oid = 'private.reading_progress_changes_cursor(uuid, text)'::regprocedure
                     and a.grantee = 0),
  'neither anon nor PUBLIC may execute the helper');
select ok(
  (select prosrc !~ 'regexp_match|pg_control_system|md5' from pg_proc
    where oid = 'public.reading_progress_changes(text, integer)'::regprocedure)
  and (select prosrc ~ 'regexp_match' and prosrc ~ 'pg_control_system' and prosrc ~ 'md5' from pg_proc
        where oid = 'private.reading_progress_changes_cursor(uuid, text)'::regprocedure),
  'the read holds no cursor rule: the parse, the tags and the system identifier are the helper''s');
select ok(
  (select prosecdef = false and proconfig @> array['search_path=""', 'extra_float_digits=1']
     from pg_proc where oid = 'public.reading_progress_changes(text, integer)'::regprocedure),
  'the read is security invoker with search_path '''' and extra_float_digits 1, as before');

-- One call of the helper per read, by this transaction's function statistics (track_functions).
set local track_functions = 'pl';
create function pg_temp.helper_calls() returns bigint language sql as $fn$
  select coalesce(pg_stat_get_xact_function_calls('private.reading_progress_changes_cursor(uuid, text)'::regprocedure), 0)
$fn$;
grant execute on function pg_temp.helper_calls() to authenticated;
create temp table calls (label text primary key, n bigint) on commit drop;
grant all on calls to authenticated;

set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "a3400000-0000-4000-8000-000000000034", "role": "authenticated"}', true);
select public.write_reading_progress('owned-1', 1, 1, 0.1, false, 'phone', '2026-01-01 00:00:01+00');
insert into calls values ('before', pg_temp.helper_calls());
insert into res values ('full', public.reading_progress_changes('', 100));
insert into res values ('own', public.reading_progress_changes((select owner || '.' || ahead from cursors), 100));
insert into res values ('other''s', public.reading_progress_changes((select other || '.' || ahead from cursors), 100));
insert into calls values ('after', pg_temp.helper_calls());
-- What the helper hands the read, asked directly: the caller's own cursor taken, another's started over.
insert into res select 'helper own', to_jsonb(c)
  from private.reading_progress_changes_cursor('a3400000-0000-4000-8000-000000000034',
                                               (select owner || '.' || ahead || ':s-1' from cursors)) c;
insert into res select 'helper other''s', to_jsonb(c)
  from private.reading_progress_changes_cursor('a3400000-0000-4000-8000-000000000034',
                                               (select other || '.' || ahead from cursors)) c;
reset role;

select is((select n from calls where label = 'after') - (select n from calls where label = 'before'), 3::bigint,
  'three reads: three calls of the helper, one each');
select is(
  (select jsonb_build_object('own', (select r ? 'started_over' from res where label = 'own'),
                             'other''s', (select r -> 'started_over' from res where label = 'other''s'),
                             'reported', (select r -> 'changes' = (select r -> 'changes' from res where label = 'full')
                                            from res where label = 'other''s'))),
  '{"own": false, "other''s": true, "reported": true}'::jsonb,
  'premise: the caller''s own cursor is taken, another user''s starts over from the beginning (pgTAP 031)');
select is((select r from res where label = 'helper own'),
  jsonb_build_object('since_xid', (select ahead from cursors), 'since_series', 's-1',
                     'tag_prefix', (select owner || '.' from cursors), 'started_over', false),
  'the helper hands over the caller''s own cursor as it stands, and the caller''s tag');
select is((select r from res where label = 'helper other''s'),
  jsonb_build_object('since_xid', '0', 'since_series', '',
                     'tag_prefix', (select owner || '.' from cursors), 'started_over', true),
  'and another user''s from the beginning, started over');
select throws_ok(
  $$select * from private.reading_progress_changes_cursor('a3400000-0000-4000-8000-000000000034', 'not a cursor')$$,
  '22023', 'reading_progress_changes: invalid cursor',
  'an invalid cursor: the read''s 22023 and message, raised by the helper');

select * from finish();
rollback;
