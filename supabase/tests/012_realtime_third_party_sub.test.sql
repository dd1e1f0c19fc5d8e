-- readsync's Realtime policies beside a project that signs its users in with a third-party auth provider
-- (Clerk, Firebase, Auth0, Cognito, ...), whose `sub` is not a UUID
-- (migration 20261205180000_realtime_receive_policy_progress_topics_only.sql).
--
-- auth.uid() casts the token's sub to uuid: for such a user it fails with 22P02 ("invalid input syntax
-- for type uuid"). Such a project authorizes its own private channels with auth.jwt() ->> 'sub'. Its
-- policy and migration 012's permissive progress_topic_receive_own are ORed, in an order PostgreSQL does
-- not promise (and an OR goes on to the next policy whenever one is false), so 012's policy, which called
-- auth.uid() for every broadcast row whatever its topic, turned the project's join probes and reads of its
-- own topics into errors: Realtime refused the project's channels. Every check asks the way Realtime asks
-- (003): role authenticated, the token's claims in request.jwt.claims, the channel's sub-topic in
-- realtime.topic. Each plan shape runs with the project's policy named to come before and after
-- readsync's, and with the planner's scans switched on and off, so no check passes by the luck of an
-- evaluation order.

begin;
create extension if not exists pgtap with schema extensions;
select plan(49);

-- A readsync reader (a Supabase Auth user) whose write is broadcast on progress:<uid>.
insert into auth.users (id, email) values ('c3c3c3c3-0012-4000-8000-000000000012', 'tp-reader@readsync.test');
insert into public.reading_progress (user_id, series_id, page, device_id)
values ('c3c3c3c3-0012-4000-8000-000000000012', 'tp-series', 1, 'phone');

-- The project's messages: its third-party user's own channel user:<sub>, another user's, and a lobby.
insert into realtime.messages (topic, extension, event, payload, private) values
  ('user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'broadcast', 'note', '{"n": 1}', true),
  ('user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'broadcast', 'note', '{"n": 2}', true),
  ('user:auth0|65a1b2c3d4e5f6a7b8c9d0e1', 'broadcast', 'note', '{"n": 3}', true),
  ('room:lobby', 'broadcast', 'chat', '{"text": "hi"}', true);
-- Realtime's join probes (inserted as the superuser, topic and extension only: local/realtime/authorization.ts).
create temp table probe on commit drop as
  with p as (insert into realtime.messages (topic, extension) values
               ('user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'broadcast'),
               ('user:auth0|65a1b2c3d4e5f6a7b8c9d0e1', 'broadcast'),
               ('progress:c3c3c3c3-0012-4000-8000-000000000012', 'broadcast')
             returning topic, id)
  select topic, id from p;
grant select on probe to authenticated;
analyze realtime.messages;

-- The project's receive policy, as a third-party-auth project writes it (no auth.uid()), under a given
-- name: permissive policies are ORed in an order of PostgreSQL's own, so each check runs with the
-- project's policy named to sort before readsync's ('Clerk users ...': capitals first) and after it.
create function pg_temp.project_policy(p_name text) returns text language plpgsql as $fn$
declare v_old text;
begin
  for v_old in select policyname from pg_policies
                where schemaname = 'realtime' and tablename = 'messages' and policyname like '%(project)'
  loop
    execute format('drop policy %I on realtime.messages', v_old);
  end loop;
  execute format($p$create policy %I on realtime.messages for select to authenticated
    using (extension in ('broadcast', 'presence')
           and (select realtime.topic()) = 'user:' || (select auth.jwt() ->> 'sub')
           and topic = (select realtime.topic()))$p$, p_name || ' (project)');
  return p_name || ' (project)';
end $fn$;

-- Runs p_sql as Realtime runs a probe: role authenticated, the claims for p_sub, realtime.topic =
-- p_topic, and the planner settings given (off). Answers 'rows <n>' or the SQLSTATE it failed with.
create function pg_temp.as_user(p_sub text, p_topic text, p_sql text, p_off text[] default '{}')
returns text language sql as $fn$
  select readsync_tests.run_as('authenticated',
    jsonb_build_object('sub', p_sub, 'role', 'authenticated', 'aud', 'authenticated'), p_topic, p_sql, p_off)
$fn$;

-- The checks: (what, sub, topic, query, expected), each with the planner as it is, with sequential scans
-- off and with index scans off.
create temp table checks (n int, what text, sub text, topic text, sql text, expected text) on commit drop;
insert into checks values
  (1, 'the third-party user''s join probe of its own channel is allowed',
   'user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC',
   $$select 1 from realtime.messages where topic = 'user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC'
       and extension = 'broadcast' and id = (select id from probe where topic = 'user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC')$$,
   'rows 1'),
  (2, 'the third-party user''s join probe of another user''s channel is refused by the project''s policy (0 rows, no error)',
   'user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'user:auth0|65a1b2c3d4e5f6a7b8c9d0e1',
   $$select 1 from realtime.messages where topic = 'user:auth0|65a1b2c3d4e5f6a7b8c9d0e1'
       and extension = 'broadcast' and id = (select id from probe where topic = 'user:auth0|65a1b2c3d4e5f6a7b8c9d0e1')$$,
   'rows 0'),
  (3, 'a replay-like read of the third-party user''s own channel sees its two stored broadcasts',
   'user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC',
   $$select id, topic, event, payload from realtime.messages
      where topic = 'user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC' and private is true and extension = 'broadcast'
        and inserted_at > now() - interval '1 day' order by inserted_at desc limit 25$$,
   'rows 2'),
  (4, 'a read of several of the project''s topics sees only what the project''s policy allows',
   'user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC',
   $$select id from realtime.messages
      where topic in ('user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'user:auth0|65a1b2c3d4e5f6a7b8c9d0e1', 'room:lobby')
        and private is true$$,
   'rows 2'),
  (5, 'an Auth0-style sub (with a |) joins its own channel',
   'auth0|65a1b2c3d4e5f6a7b8c9d0e1', 'user:auth0|65a1b2c3d4e5f6a7b8c9d0e1',
   $$select 1 from realtime.messages where topic = 'user:auth0|65a1b2c3d4e5f6a7b8c9d0e1'
       and extension = 'broadcast' and id = (select id from probe where topic = 'user:auth0|65a1b2c3d4e5f6a7b8c9d0e1')$$,
   'rows 1'),
  -- A condition that is not leakproof (like) is applied after the policies, so the policies are asked
  -- on readsync's progress: rows too: for a sub that is not a UUID they are not its own (no error).
  (6, 'a read filtered by topic like ''user:%'' (policies asked on progress: rows first) sees only its own rows',
   'user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'user:user_2NNEqL2nrIRdJ194ndJqAHwEfxC',
   $$select id from realtime.messages where topic like 'user:%' and private is true$$,
   'rows 2'),
  (7, 'a read of all of realtime.messages sees the own channel''s rows and no progress: row',
   'auth0|65a1b2c3d4e5f6a7b8c9d0e1', 'user:auth0|65a1b2c3d4e5f6a7b8c9d0e1',
   $$select id from realtime.messages$$,
   'rows 2');

-- The planner settings each check runs under (see above).
create temp table plan_shapes (k int, label text, off text[]) on commit drop;
insert into plan_shapes values (1, 'default plan', '{}'),
                               (2, 'no sequential scans', '{enable_seqscan}'),
                               (3, 'no index scans', '{enable_indexscan,enable_indexonlyscan,enable_bitmapscan}');

select pg_temp.project_policy('Clerk users receive on their own channel');
select is(pg_temp.as_user(c.sub, c.topic, c.sql, s.off), c.expected,
          format('project policy sorted first, %s: %s', s.label, c.what))
  from checks c
 cross join plan_shapes s
 order by s.k, c.n;

select pg_temp.project_policy('users_receive_on_their_own_channel');
select is(pg_temp.as_user(c.sub, c.topic, c.sql, s.off), c.expected,
          format('project policy sorted last, %s: %s', s.label, c.what))
  from checks c
 cross join plan_shapes s
 order by s.k, c.n;

-- ---------------------------------------------------------------------------------------------
-- readsync's own topics are unchanged
-- ---------------------------------------------------------------------------------------------
select is(
  pg_temp.as_user('c3c3c3c3-0012-4000-8000-000000000012', 'progress:c3c3c3c3-0012-4000-8000-000000000012',
    $$select 1 from realtime.messages where topic = 'progress:c3c3c3c3-0012-4000-8000-000000000012'
        and extension = 'broadcast' and id = (select id from probe where topic like 'progress:%')$$),
  'rows 1', 'the readsync reader still joins their own progress:<uid> channel');
select is(
  pg_temp.as_user('c3c3c3c3-0012-4000-8000-000000000012', 'progress:c3c3c3c3-0012-4000-8000-000000000012',
    $$select 1 from realtime.messages where topic = 'progress:c3c3c3c3-0012-4000-8000-000000000012'
        and event = 'INSERT'$$),
  'rows 1', 'the readsync reader still reads their own stored progress broadcast');
select is(
  pg_temp.as_user('d4d4d4d4-0012-4000-8000-000000000012', 'progress:c3c3c3c3-0012-4000-8000-000000000012',
    $$select 1 from realtime.messages where topic = 'progress:c3c3c3c3-0012-4000-8000-000000000012'$$),
  'rows 0', 'another Supabase Auth user still cannot join or read progress:<reader>');
-- A third-party user on readsync's topics: its sub has no UUID syntax, so auth.uid() is not asked and
-- the progress: rows are not its own: the join is refused (0 rows), not an error.
select is(
  pg_temp.as_user('user_2NNEqL2nrIRdJ194ndJqAHwEfxC', 'progress:c3c3c3c3-0012-4000-8000-000000000012',
    $$select 1 from realtime.messages where topic = 'progress:c3c3c3c3-0012-4000-8000-000000000012'
        and extension = 'broadcast' and id = (select id from probe where topic like 'progress:%')$$),
  'rows 0', 'a third-party user''s join of a progress: channel is refused (0 rows, no error)');
select is(
  pg_temp.as_user('auth0|c3c3c3c3-0012-4000-8000-000000000012', 'progress:c3c3c3c3-0012-4000-8000-000000000012',
    $$select 1 from realtime.messages where topic like 'progress:%'$$),
  'rows 0', 'a sub that only contains a reader''s UUID reads none of their progress: rows');
-- auth.uid()'s reading of a UUID sub is kept: any case, no hyphens, braces (uuid_in's syntax), compared
-- in canonical form with the topic (user_id::text).
select is(
  pg_temp.as_user('C3C3C3C3-0012-4000-8000-000000000012', 'progress:c3c3c3c3-0012-4000-8000-000000000012',
    $$select 1 from realtime.messages where topic = 'progress:c3c3c3c3-0012-4000-8000-000000000012'
        and extension = 'broadcast' and id = (select id from probe where topic like 'progress:%')$$),
  'rows 1', 'the reader''s sub in upper case still joins their progress:<uid> channel (as auth.uid() reads it)');
select is(
  pg_temp.as_user('{c3c3c3c3001240008000000000000012}', 'progress:c3c3c3c3-0012-4000-8000-000000000012',
    $$select 1 from realtime.messages where topic like 'progress:%' and event = 'INSERT'$$),
  'rows 1', 'the reader''s sub without hyphens, in braces, still reads their stored progress broadcast');

-- The receive policy's definition (auth.uid() under the CASE's progress: branch only) is pgTAP 003's.

select * from finish();
rollback;
