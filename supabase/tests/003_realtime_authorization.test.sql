-- Realtime authorization on realtime.messages (migration 012, policy progress_topic_receive_own, as
-- 20261205180000 re-created it).
--
-- Supabase Realtime decides whether a client may join a private channel by asking RLS on
-- realtime.messages as that client: role authenticated, the JWT claims in request.jwt.claims and
-- the channel topic in the `realtime.topic` setting (read by realtime.topic()). SELECT allowed =
-- may receive, INSERT allowed = may send. This file asks the same way.
--
-- realtime.send() itself sets realtime.topic for the rest of the transaction, so every check below
-- sets the topic explicitly right before it asks.

begin;
create extension if not exists pgtap with schema extensions;
select plan(26);

insert into auth.users (id, email) values
  ('e5e5e5e5-0000-4000-8000-000000000005', 'rt-a@readsync.test'),
  ('f6f6f6f6-0000-4000-8000-000000000006', 'rt-b@readsync.test');

-- One broadcast per user through the trigger, plus a non-broadcast (presence) row on A's topic.
insert into public.reading_progress (user_id, series_id, page, device_id) values
  ('e5e5e5e5-0000-4000-8000-000000000005', 'rt-a-series', 1, 'a-phone'),
  ('f6f6f6f6-0000-4000-8000-000000000006', 'rt-b-series', 1, 'b-phone');
insert into realtime.messages (topic, extension, event, payload, private)
values ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'presence', 'sync', '{}', true);

-- ---------------------------------------------------------------------------------------------
-- Policy definitions
-- ---------------------------------------------------------------------------------------------
select ok(
  (select relrowsecurity from pg_class where oid = 'realtime.messages'::regclass),
  'realtime.messages has row level security enabled'
);

select policy_cmd_is('realtime', 'messages', 'progress_topic_receive_own', 'select',
  'progress_topic_receive_own is a SELECT (receive) policy');

select policy_roles_are('realtime', 'messages', 'progress_topic_receive_own', array['authenticated'],
  'progress_topic_receive_own applies to authenticated only');

-- As migration 20261205180000 made it: auth.uid() is asked under the CASE's progress: branch only, and
-- there only for a sub of UUID syntax (else null: not one's own), so a third-party auth provider's sub
-- never reaches its cast (pgTAP 012).
select is(
  (select btrim(regexp_replace(qual, '\s+', ' ', 'g')) from pg_policies
    where schemaname = 'realtime' and tablename = 'messages' and policyname = 'progress_topic_receive_own'),
  'CASE WHEN ((extension = ''broadcast''::text) AND starts_with(topic, ''progress:''::text)) THEN ((topic = (''progress:''::text || (( SELECT CASE WHEN (COALESCE(NULLIF(current_setting(''request.jwt.claim.sub''::text, true), ''''::text), ((NULLIF(current_setting(''request.jwt.claims''::text, true), ''''::text))::jsonb ->> ''sub''::text)) ~* ''^(\{[0-9a-f]{4}(-?[0-9a-f]{4}){7}\}|[0-9a-f]{4}(-?[0-9a-f]{4}){7})$''::text) THEN auth.uid() ELSE NULL::uuid END AS "case"))::text)) AND (( SELECT realtime.topic() AS topic) = topic)) ELSE false END',
  'receive policy: broadcast rows of progress: topics only, the row''s topic must be progress:<own uid> and the channel topic the row''s, as once-per-statement subqueries (auth.uid() for a sub of UUID syntax only); false for every other row'
);

select is(
  (select count(*)::int from pg_policies
    where schemaname = 'realtime' and tablename = 'messages' and cmd <> 'SELECT' and permissive = 'PERMISSIVE'),
  0,
  'realtime.messages has no permissive INSERT/UPDATE/DELETE/ALL policy: nobody may send (the restrictive ones of pgTAP 011 only take away)'
);

-- ---------------------------------------------------------------------------------------------
-- A joins channels
-- ---------------------------------------------------------------------------------------------
set local role authenticated;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('sub', 'e5e5e5e5-0000-4000-8000-000000000005', 'role', 'authenticated')::text, true));

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:e5e5e5e5-0000-4000-8000-000000000005', true));
select results_eq(
  $$select topic, event, payload->'record'->>'series_id'
      from realtime.messages where topic = 'progress:e5e5e5e5-0000-4000-8000-000000000005'$$,
  $$values ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'INSERT', 'rt-a-series')$$,
  'A may receive on progress:<A>: sees the broadcast of their own write'
);

select is_empty(
  $$select 1 from realtime.messages where extension <> 'broadcast'$$,
  'A on progress:<A> does not get non-broadcast (presence) rows'
);

select is_empty(
  $$select 1 from realtime.messages where topic <> 'progress:e5e5e5e5-0000-4000-8000-000000000005'$$,
  'A on progress:<A> sees no row of another topic (the policy checks the row''s topic too, not only the channel''s)'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:f6f6f6f6-0000-4000-8000-000000000006', true));
select is_empty(
  $$select 1 from realtime.messages$$,
  'A may not receive on progress:<B>: 0 rows'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:%', true));
select is_empty(
  $$select 1 from realtime.messages$$,
  'A may not receive on a wildcard-looking topic progress:%'
);

select diag('realtime.topic: ' || set_config('realtime.topic', '', true));
select is_empty(
  $$select 1 from realtime.messages$$,
  'A with an empty realtime.topic (realtime.topic() is null) gets 0 rows'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:e5e5e5e5-0000-4000-8000-000000000005', true));
select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'broadcast', 'UPDATE', '{}', true)$$,
  '42501', null,
  'A may not send on their own topic (insert into realtime.messages): 42501'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:f6f6f6f6-0000-4000-8000-000000000006', true));
select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:f6f6f6f6-0000-4000-8000-000000000006', 'broadcast', 'UPDATE', '{}', true)$$,
  '42501', null,
  'A may not send on B''s topic: 42501'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:e5e5e5e5-0000-4000-8000-000000000005', true));
with u as (update realtime.messages set payload = '{"tampered": true}' returning 1)
select is(count(*)::int, 0, 'A cannot modify messages, even on their own topic (0 rows updated)') from u;

select throws_ok(
  $$delete from realtime.messages$$,
  '42501', null,
  'A cannot delete messages: 42501'
);

-- ---------------------------------------------------------------------------------------------
-- B joins channels
-- ---------------------------------------------------------------------------------------------
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('sub', 'f6f6f6f6-0000-4000-8000-000000000006', 'role', 'authenticated')::text, true));

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:e5e5e5e5-0000-4000-8000-000000000005', true));
select is_empty(
  $$select 1 from realtime.messages$$,
  'B may not receive on progress:<A>: 0 rows'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:f6f6f6f6-0000-4000-8000-000000000006', true));
select results_eq(
  $$select topic, event from realtime.messages where topic = 'progress:f6f6f6f6-0000-4000-8000-000000000006'$$,
  $$values ('progress:f6f6f6f6-0000-4000-8000-000000000006', 'INSERT')$$,
  'B may receive on progress:<B> (the same check that denies A''s topic allows B''s own)'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:e5e5e5e5-0000-4000-8000-000000000005', true));
select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'broadcast', 'INSERT', '{}', true)$$,
  '42501', null,
  'B may not send on A''s topic: 42501'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:f6f6f6f6-0000-4000-8000-000000000006', true));
select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:f6f6f6f6-0000-4000-8000-000000000006', 'broadcast', 'INSERT', '{}', true)$$,
  '42501', null,
  'B may not send on their own topic either: 42501'
);

-- ---------------------------------------------------------------------------------------------
-- authenticated without a subject
-- ---------------------------------------------------------------------------------------------
select diag('claims: ' || set_config('request.jwt.claims', json_build_object('role', 'authenticated')::text, true));

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:', true));
select is_empty(
  $$select 1 from realtime.messages$$,
  'authenticated without sub gets 0 rows on topic "progress:"'
);

-- ---------------------------------------------------------------------------------------------
-- anon: even with A's sub in forged claims and A's topic, nothing
-- ---------------------------------------------------------------------------------------------
reset role;
set local role anon;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('sub', 'e5e5e5e5-0000-4000-8000-000000000005', 'role', 'anon')::text, true));

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:e5e5e5e5-0000-4000-8000-000000000005', true));
select is_empty(
  $$select 1 from realtime.messages$$,
  'anon may not receive on progress:<A> (the policy is for authenticated only)'
);

select throws_ok(
  $$insert into realtime.messages (topic, extension, event, payload, private)
    values ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'broadcast', 'INSERT', '{}', true)$$,
  '42501', null,
  'anon may not send on progress:<A>: 42501'
);

-- ---------------------------------------------------------------------------------------------
-- As postgres: nothing was sent or changed by the attempts above
-- ---------------------------------------------------------------------------------------------
reset role;

select results_eq(
  $$select topic, extension, event, payload - 'record' - 'old_record' - 'id' from realtime.messages
     where topic in ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'progress:f6f6f6f6-0000-4000-8000-000000000006')
     order by topic, extension$$,
  $$values
    ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'broadcast', 'INSERT',
       '{"operation": "INSERT", "schema": "public", "table": "reading_progress"}'::jsonb),
    ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'presence', 'sync', '{}'::jsonb),
    ('progress:f6f6f6f6-0000-4000-8000-000000000006', 'broadcast', 'INSERT',
       '{"operation": "INSERT", "schema": "public", "table": "reading_progress"}'::jsonb)$$,
  'as postgres: only the three fixture messages exist on A''s and B''s topics, untampered'
);
-- realtime.send (Supabase's, and the local stand-in's) names each broadcast in its payload too.
select is(
  (select count(*)::int from realtime.messages
    where topic in ('progress:e5e5e5e5-0000-4000-8000-000000000005', 'progress:f6f6f6f6-0000-4000-8000-000000000006')
      and extension = 'broadcast' and payload->>'id' = id::text),
  2,
  'each broadcast''s payload carries its message id (as realtime.send stores it)'
);

-- The database-side delivery path: a broadcast from the trigger is visible to its owner as well.
set local role authenticated;
select diag('claims: ' || set_config('request.jwt.claims',
  json_build_object('sub', 'e5e5e5e5-0000-4000-8000-000000000005', 'role', 'authenticated')::text, true));
update public.reading_progress set page = 2 where series_id = 'rt-a-series';
select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:e5e5e5e5-0000-4000-8000-000000000005', true));

select results_eq(
  $$select event, (payload->'record'->>'page')::int from realtime.messages
     where topic = 'progress:e5e5e5e5-0000-4000-8000-000000000005' and extension = 'broadcast'
     order by event$$,
  $$values ('INSERT', 1), ('UPDATE', 2)$$,
  'A''s own update (as authenticated) is broadcast and A may receive it on progress:<A>'
);

select diag('realtime.topic: ' || set_config('realtime.topic', 'progress:f6f6f6f6-0000-4000-8000-000000000006', true));
select is_empty(
  $$select 1 from realtime.messages where topic = 'progress:f6f6f6f6-0000-4000-8000-000000000006'$$,
  'A still cannot receive B''s topic after writing'
);

reset role;

select * from finish();
rollback;
