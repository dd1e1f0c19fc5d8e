-- The progress:<user_id> topics stay readsync's beside a project's own Realtime policies
-- (migration 20261205160000_realtime_progress_topics_reserved.sql).
--
-- realtime.messages serves every Realtime feature of a project, and its RLS policies are permissive
-- unless made restrictive: PostgreSQL ORs them. Supabase's own Realtime guides begin with two such
-- policies ("authenticated users can receive" / "can send": using (true), with check (true)). With
-- them, or anything as broad, migration 012's own-topic policy decided nothing: every signed-in user
-- could join another reader's progress:<uid> channel and read their position, and send forged
-- progress events on it. The project's policies below are created inside this file's transaction
-- (rolled back at the end). Every check asks the way Realtime asks (003): role, claims in
-- request.jwt.claims and the channel's sub-topic in realtime.topic.

begin;
create extension if not exists pgtap with schema extensions;
select plan(26);

insert into auth.users (id, email) values
  ('a1a1a1a1-0011-4000-8000-000000000011', 'topics-a@readsync.test'),
  ('b2b2b2b2-0011-4000-8000-000000000011', 'topics-b@readsync.test');

-- A's write is broadcast on progress:<A> (a stored message, as Realtime's broadcast replay reads).
insert into public.reading_progress (user_id, series_id, page, device_id) values
  ('a1a1a1a1-0011-4000-8000-000000000011', 'topics-a-series', 1, 'a-phone');
-- A message of the project's own on a topic of its own.
insert into realtime.messages (topic, extension, event, payload, private)
values ('room:lobby', 'broadcast', 'chat', '{"text": "hi"}', true);
-- Realtime's join probe for B's join of progress:<A>: written as the superuser, topic and extension
-- only, every other column at its default (local/realtime/authorization.ts, Supabase's Authorization).
create temp table probe on commit drop as
  with p as (insert into realtime.messages (topic, extension)
             values ('progress:a1a1a1a1-0011-4000-8000-000000000011', 'broadcast') returning id)
  select id from p;
grant select on probe to anon, authenticated;

-- The project's policies: the two of Supabase's Realtime guides, and one opening everything to anon
-- as well (a project whose Realtime is public).
create policy project_authenticated_can_receive on realtime.messages
  for select to authenticated using (true);
create policy project_authenticated_can_send on realtime.messages
  for insert to authenticated with check (true);
create policy project_everyone_everything on realtime.messages
  for all to anon, authenticated using (true) with check (true);
-- Supabase grants anon and authenticated select, insert and update on realtime.messages; a project may
-- add delete (the policy above covers it). Where postgres holds DELETE without grant option (Supabase's
-- images, supabase test db) the grant does nothing and the delete check below is skipped.
grant delete on realtime.messages to anon, authenticated;
create function pg_temp.delete_progress_of_a() returns integer language plpgsql as $fn$
declare v_rows integer;
begin
  delete from realtime.messages where topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011';
  get diagnostics v_rows = row_count;
  return v_rows;
end $fn$;

-- ---------------------------------------------------------------------------------------------
-- The reservation itself
-- ---------------------------------------------------------------------------------------------
select results_eq(
  $$select policyname::text collate "default", permissive, cmd, array_to_string(roles, ',') collate "default"
      from pg_policies
     where schemaname = 'realtime' and tablename = 'messages' and permissive = 'RESTRICTIVE'
     order by policyname$$,
  $$values ('progress_topics_no_delete', 'RESTRICTIVE', 'DELETE', 'public'),
           ('progress_topics_no_send', 'RESTRICTIVE', 'INSERT', 'public'),
           ('progress_topics_no_update', 'RESTRICTIVE', 'UPDATE', 'public'),
           ('progress_topics_receive_own_only', 'RESTRICTIVE', 'SELECT', 'public')$$,
  'four restrictive policies reserve progress: topics for every command, for every role (PUBLIC)'
);

-- ---------------------------------------------------------------------------------------------
-- B, a signed-in user of another account
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub":"b2b2b2b2-0011-4000-8000-000000000011","role":"authenticated"}', true);
select set_config('realtime.topic', 'progress:a1a1a1a1-0011-4000-8000-000000000011', true);

select is_empty(
  $$select 1 from realtime.messages where id = (select id from probe)$$,
  'B''s join of progress:<A> is refused: the probe row is not visible, whatever the project''s policies allow'
);
select is_empty(
  $$select 1 from realtime.messages where topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011'$$,
  'B cannot read A''s stored progress broadcasts by a query of its own either (Realtime''s replay reads them over its own connection, for a channel whose join passed the probe above)'
);
select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:a1a1a1a1-0011-4000-8000-000000000011', 'broadcast', 'UPDATE',
            '{"record": {"series_id": "topics-a-series", "page": 999}}', true)$$,
  '42501', null,
  'B cannot send a forged progress event on progress:<A>: 42501'
);
select throws_ok(
  $$insert into realtime.messages (topic, extension, payload, private)
    values ('progress:a1a1a1a1-0011-4000-8000-000000000011', 'presence', '{}', true)$$,
  '42501', null,
  'B cannot track presence on progress:<A>: 42501'
);
with u as (update realtime.messages set payload = '{"tampered": true}'
            where topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011' returning 1)
select is(count(*)::int, 0, 'B cannot rewrite A''s stored progress messages (0 rows updated)') from u;
select throws_ok(
  $$update realtime.messages set topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011'
     where topic = 'room:lobby'$$,
  '42501', null,
  'B cannot move a message of the project''s into A''s progress topic: 42501'
);
-- Without a WHERE (or RETURNING) an UPDATE reads nothing, so no select policy looks at its rows: only
-- the update policy's own check stands between B and A's topic.
select throws_ok(
  $$update realtime.messages set topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011'$$,
  '42501', null,
  'B cannot move the project''s messages into A''s progress topic by an UPDATE without a WHERE either: 42501'
);

select set_config('realtime.topic', 'progress:b2b2b2b2-0011-4000-8000-000000000011', true);
select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:b2b2b2b2-0011-4000-8000-000000000011', 'broadcast', 'UPDATE', '{}', true)$$,
  '42501', null,
  'B may not send on their own progress topic either (only the database broadcasts there): 42501'
);
-- With realtime.topic() at B's own topic (as it stays for the rest of a transaction after a
-- realtime.send() of B's own write), A's rows are still not B's: the row's topic decides.
select is_empty(
  $$select 1 from realtime.messages where topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011'$$,
  'B cannot read A''s stored progress messages with realtime.topic() set to B''s own topic'
);

-- The project's own topics are untouched.
select set_config('realtime.topic', 'room:lobby', true);
select results_eq(
  $$select event from realtime.messages where topic = 'room:lobby'$$,
  $$values ('chat')$$,
  'B still receives on the project''s own topics (room:lobby) as the project''s policies allow'
);
select lives_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('room:lobby', 'broadcast', 'chat', '{"text": "from b"}', true)$$,
  'B still sends on the project''s own topics'
);
select lives_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progressive:lobby', 'broadcast', 'chat', '{}', true)$$,
  'only topics starting with "progress:" are reserved (progressive:lobby is the project''s)'
);

-- ---------------------------------------------------------------------------------------------
-- A, the owner: receives on their topic as before, sends nothing there
-- ---------------------------------------------------------------------------------------------
select set_config('request.jwt.claims',
  '{"sub":"a1a1a1a1-0011-4000-8000-000000000011","role":"authenticated"}', true);
select set_config('realtime.topic', 'progress:a1a1a1a1-0011-4000-8000-000000000011', true);
select isnt_empty(
  $$select 1 from realtime.messages where id = (select id from probe)$$,
  'A''s own join of progress:<A> is still allowed'
);
select results_eq(
  $$select event from realtime.messages
     where topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011' and event is not null$$,
  $$values ('INSERT')$$,
  'A still reads their own stored progress broadcasts'
);
select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:a1a1a1a1-0011-4000-8000-000000000011', 'broadcast', 'UPDATE', '{}', true)$$,
  '42501', null,
  'A may not send on their own progress topic, whatever the project''s policies allow: 42501'
);
-- A sees the stored messages of their topic (so neither the select policies nor a missing grant
-- hide them here): only progress_topics_no_delete keeps them.
select case when has_table_privilege('authenticated', 'realtime.messages', 'delete')
  then is(pg_temp.delete_progress_of_a(), 0,
          'A cannot delete the stored messages of their own progress topic either (0 rows deleted)')
  else skip('authenticated could not be granted DELETE on realtime.messages here', 1) end;
-- Database broadcasts are unaffected: the trigger inserts as its owner.
update public.reading_progress set page = 2 where series_id = 'topics-a-series';
select results_eq(
  $$select event from realtime.messages
     where topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011' and event is not null order by event$$,
  $$values ('INSERT'), ('UPDATE')$$,
  'A''s own write is still broadcast on progress:<A> (the trigger is not bound by these policies)'
);

-- ---------------------------------------------------------------------------------------------
-- anon, with the project's open-to-everyone policy
-- ---------------------------------------------------------------------------------------------
reset role;
set local role anon;
select set_config('request.jwt.claims', '{"role":"anon"}', true);
select set_config('realtime.topic', 'progress:a1a1a1a1-0011-4000-8000-000000000011', true);
select is_empty(
  $$select 1 from realtime.messages where topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011'$$,
  'anon cannot join or read progress:<A>'
);
select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:a1a1a1a1-0011-4000-8000-000000000011', 'broadcast', 'UPDATE', '{}', true)$$,
  '42501', null,
  'anon cannot send on progress:<A>: 42501'
);
select set_config('realtime.topic', 'room:lobby', true);
select isnt_empty(
  $$select 1 from realtime.messages where topic = 'room:lobby'$$,
  'anon still reads the project''s own topics as its policy allows'
);

-- ---------------------------------------------------------------------------------------------
-- B with a custom role: Realtime takes the role from the token's role claim, whatever it names
-- (set_config('role', ...)), and Supabase supports custom Postgres roles there. This one is not a
-- member of authenticated; the project opened realtime.messages to it with a policy that names no
-- role (PUBLIC, a policy's default).
-- ---------------------------------------------------------------------------------------------
reset role;
create role readsync_test_custom_claim_role nologin;
grant readsync_test_custom_claim_role to current_user;
-- These grants take where the tests run as a superuser (npm test); where postgres holds some without
-- grant option (Supabase's images, supabase test db) they do not, and the three checks are skipped.
grant usage on schema realtime, auth to readsync_test_custom_claim_role;
grant execute on function auth.uid() to readsync_test_custom_claim_role;
grant select, insert on realtime.messages to readsync_test_custom_claim_role;
grant select on probe to readsync_test_custom_claim_role;
create policy project_public_everything on realtime.messages
  for all using (true) with check (true);
create temp table custom_role_ready on commit drop as
  select has_schema_privilege('readsync_test_custom_claim_role', 'realtime', 'usage')
     and has_schema_privilege('readsync_test_custom_claim_role', 'auth', 'usage')
     and has_function_privilege('readsync_test_custom_claim_role', 'auth.uid()', 'execute')
     and has_table_privilege('readsync_test_custom_claim_role', 'realtime.messages', 'select, insert')
       as ready;
-- Runs p_sql as that role with B's claims and realtime.topic = p_topic, as Realtime's probes run:
-- 'rows <n>' or the SQLSTATE it failed with. (pgTAP itself is called as postgres.)
create function pg_temp.as_custom_claim_role(p_topic text, p_sql text) returns text
language sql as $fn$
  select readsync_tests.run_as('readsync_test_custom_claim_role',
    '{"sub":"b2b2b2b2-0011-4000-8000-000000000011","role":"readsync_test_custom_claim_role"}', p_topic, p_sql)
$fn$;

select case when (select ready from custom_role_ready)
  then is(pg_temp.as_custom_claim_role('progress:a1a1a1a1-0011-4000-8000-000000000011',
            $$select 1 from realtime.messages where id = (select id from probe)$$),
          'rows 0', 'B with a custom role claim cannot join progress:<A> either (the probe row is not visible)')
  else skip('the custom role could not be granted realtime.messages and auth.uid() here', 1) end;
select case when (select ready from custom_role_ready)
  then is(pg_temp.as_custom_claim_role('progress:a1a1a1a1-0011-4000-8000-000000000011',
            $$insert into realtime.messages (topic, extension, event, payload, private)
              values ('progress:a1a1a1a1-0011-4000-8000-000000000011', 'broadcast', 'UPDATE', '{}', true)$$),
          '42501', 'B with a custom role claim cannot send on progress:<A>: 42501')
  else skip('the custom role could not be granted realtime.messages and auth.uid() here', 1) end;
select case when (select ready from custom_role_ready)
  then is(pg_temp.as_custom_claim_role('room:lobby',
            $$select 1 from realtime.messages where topic = 'room:lobby' limit 1$$),
          'rows 1', 'the custom role still reads the project''s own topics as its policy allows')
  else skip('the custom role could not be granted realtime.messages and auth.uid() here', 1) end;
select is(current_user::text, session_user::text, 'back to the session''s own role after the custom role''s checks');

-- ---------------------------------------------------------------------------------------------
-- As postgres: A's messages are as the trigger wrote them
-- ---------------------------------------------------------------------------------------------
reset role;
select is(
  (select count(*)::int from realtime.messages
    where topic = 'progress:a1a1a1a1-0011-4000-8000-000000000011'
      and (event is null and id <> (select id from probe) or payload ? 'tampered'
           or payload -> 'record' ->> 'page' = '999')),
  0,
  'as postgres: nothing forged or tampered on progress:<A>'
);

select * from finish();
rollback;
