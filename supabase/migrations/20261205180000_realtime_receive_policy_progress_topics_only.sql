-- Realtime: migration 012's receive policy asks auth.uid() on progress: topics only, so a project whose
-- users sign in with a third-party auth provider keeps its own private channels.
--
-- auth.uid() casts the token's `sub` to uuid. Supabase supports third-party auth (Clerk, Firebase Auth,
-- Auth0, Cognito, WorkOS), whose `sub` is no UUID ('user_2NNEqL2n...', 'auth0|65a1...'); such a project
-- authorizes its own private channels with policies on auth.jwt() ->> 'sub'. Migration 012's permissive
-- progress_topic_receive_own called (select auth.uid()) for every broadcast row of every topic, and
-- PostgreSQL ORs permissive policies in an order of its own, going on to the next whenever one is false.
-- So for such a user the project's join probes (with the project's policy named to sort before
-- readsync's, e.g. 'Clerk users ...') and every read that met a row the project's policy refused failed
-- with 22P02 "invalid input syntax for type uuid": Realtime refused the project's channels instead of
-- asking the project's own policy (pgTAP 012).
--
-- The policy is the same grant (authenticated may receive on their own progress:<uid>, the channel topic
-- and the row's topic both), behind a CASE on the row: only broadcast rows of progress: topics reach
-- auth.uid(), still in one once-per-statement subquery (an initPlan, evaluated when first needed); every
-- other row is false here and left to the project's policies. A CASE, not an AND: PostgreSQL may reorder
-- the terms of an AND (and evaluates an index condition before the scan), a CASE's branches it does not.
-- The restrictive policies of 20261205160000 already keep auth.uid() to progress: topics the same way.
-- On a progress: row auth.uid() is asked only when the sub has UUID syntax (uuid_in's, so a UUID sub
-- reads exactly as auth.uid() reads it); for any other sub that row is not one's own (null): a
-- third-party user's join of a progress: channel is refused, and a read that reaches progress: rows
-- (a filter that is not leakproof, such as topic like 'user:%', runs after the policies) skips them,
-- instead of failing with 22P02.
--
-- Idempotent: the policy is dropped if it exists and created again. Migration 012 run again by hand puts
-- its old definition back: run this one after it (npm test re-runs the two together).

drop policy if exists progress_topic_receive_own on realtime.messages;
create policy progress_topic_receive_own on realtime.messages
  for select to authenticated
  using (
    case when extension = 'broadcast' and pg_catalog.starts_with(topic, 'progress:')
         -- auth.uid() is asked only for a sub of UUID syntax, as in 20261205160000; for any other sub
         -- (a third-party auth provider's) a progress: row is not its own (null), instead of an error.
         then topic = 'progress:' || (select case when coalesce(nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                                                   (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))
                                          operator(pg_catalog.~*) '^(\{[0-9a-f]{4}(-?[0-9a-f]{4}){7}\}|[0-9a-f]{4}(-?[0-9a-f]{4}){7})$'
                                     then auth.uid() end)::text
              -- And the channel's topic is the row's (so progress:<own uid> too): Realtime's join probe
              -- is a row of the channel's own topic, so this changes no join; it keeps any other read of
              -- realtime.messages (with realtime.topic() set to one's own topic, as every
              -- realtime.send() of one's own write does for the rest of the transaction) to one's own rows.
              and (select realtime.topic()) = topic
         else false end
  );
