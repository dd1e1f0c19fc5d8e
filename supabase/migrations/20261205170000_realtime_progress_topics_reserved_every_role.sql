-- Realtime: the progress:<user_id> topics are reserved against every role a token can name, not only
-- against anon and authenticated.
--
-- Migration 20261205160000 made its four restrictive policies on realtime.messages for anon and
-- authenticated, taking those for the only roles a client's token gives Realtime. They are not:
-- Realtime takes the role from the token's `role` claim, whatever it names (its set_conn_config runs
-- set_config('role', <claim>) before the join and send probes), and Supabase supports custom Postgres
-- roles in that claim (a custom access token hook, third-party auth). A policy binds only the roles it
-- names and their members, so a custom role that is not a member of authenticated, let into
-- realtime.messages by a project policy that names it or no role at all (PUBLIC, a policy's default),
-- could still join another reader's progress:<uid> channel and send forged progress events on it.
--
-- The same four policies now apply to PUBLIC, every role RLS binds; their expressions are unchanged.
-- readsync's own writes are not bound: the broadcast trigger's owner and Realtime's own connection
-- (which inserts the join probes) already had to bypass RLS on realtime.messages, since migration 012
-- gives no role a policy to insert; postgres, service_role and the table's owner do. A custom role that
-- may not call auth.uid() gets an error on progress: topics only (Realtime refuses the join); other
-- topics never call it.
--
-- Idempotent (ALTER POLICY ... TO). Run after 20261205160000: running that one again gives the policies
-- back their old roles (npm test re-runs the two in this order).

alter policy progress_topics_receive_own_only on realtime.messages to public;
alter policy progress_topics_no_send on realtime.messages to public;
alter policy progress_topics_no_update on realtime.messages to public;
alter policy progress_topics_no_delete on realtime.messages to public;
