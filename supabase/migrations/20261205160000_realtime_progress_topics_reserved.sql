-- Realtime: the progress:<user_id> topics stay readsync's, whatever other policies the project keeps on
-- realtime.messages.
--
-- realtime.messages serves every Realtime feature of a project, and RLS policies are permissive unless
-- declared otherwise: PostgreSQL ORs them. Migration 012's progress_topic_receive_own (receive only on
-- one's own progress:<uid>) and its absence of any send policy therefore decided nothing once the project
-- had a broader policy of its own, such as the two Supabase's Realtime guides begin with
-- ("for select to authenticated using (true)", "for insert to authenticated with check (true)"): every
-- signed-in user could join another reader's progress:<uid> channel and follow their reading, read their
-- stored broadcasts (broadcast replay), and send forged progress events on it.
--
-- The policies below are RESTRICTIVE (ANDed with every permissive policy) and bind PUBLIC, every role RLS
-- binds, on topics that start with 'progress:' only:
--   * select (a join's read probe): only one's own progress:<auth.uid()>;
--   * insert (send, presence track), update, delete: nothing.
-- Every role, not only anon and authenticated: Realtime takes the role from the token's `role` claim,
-- whatever it names (its set_conn_config runs set_config('role', <claim>) before the join and send
-- probes), and Supabase supports custom Postgres roles there (a custom access token hook, third-party
-- auth); a policy binds only the roles it names and their members.
-- Every other topic keeps exactly what the project's policies allow. readsync's own writes are not
-- bound: the broadcast trigger (reading_progress_broadcast, SECURITY DEFINER) inserts as its owner, and
-- Realtime's own connection inserts the join probes; both already bypass RLS on realtime.messages, as
-- migration 012 requires (it gives no role a policy to insert): postgres, service_role and the table's
-- owner do. Broadcast replay reads as Realtime's own connection for a private channel whose join passed
-- the check, so the join check is what guards it. The row's topic is what is tested: Realtime's probe
-- row carries the channel's own sub-topic (realtime.topic()). The CASE keeps auth.uid() (which casts sub
-- to uuid) out of every other topic's decision, and on progress: topics it is asked only for a sub of
-- UUID syntax: a third-party auth provider's sub (not a UUID) finds no progress: row its own, instead
-- of an error 22P02 (pgTAP 012). A custom role that may not call auth.uid() gets an error on progress:
-- topics only (Realtime refuses the join).
--
-- Idempotent: each policy is dropped if it exists and created again.

drop policy if exists progress_topics_receive_own_only on realtime.messages;
create policy progress_topics_receive_own_only on realtime.messages
  as restrictive
  for select
  to public
  using (
    case when pg_catalog.starts_with(topic, 'progress:')
         -- auth.uid() is asked only for a sub of UUID syntax (uuid_in's: any case, hyphens between
         -- groups of four optional, braces); any other sub (a third-party auth provider's) is null
         -- here, so a progress: row is not its own, instead of an error.
         then topic = 'progress:'
                      || (select case when coalesce(nullif(pg_catalog.current_setting('request.jwt.claim.sub', true), ''),
                                                   (nullif(pg_catalog.current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))
                                          operator(pg_catalog.~*) '^(\{[0-9a-f]{4}(-?[0-9a-f]{4}){7}\}|[0-9a-f]{4}(-?[0-9a-f]{4}){7})$'
                                     then auth.uid() end)::text
         else true end
  );

drop policy if exists progress_topics_no_send on realtime.messages;
create policy progress_topics_no_send on realtime.messages
  as restrictive
  for insert
  to public
  with check (not pg_catalog.starts_with(topic, 'progress:'));

drop policy if exists progress_topics_no_update on realtime.messages;
create policy progress_topics_no_update on realtime.messages
  as restrictive
  for update
  to public
  using (not pg_catalog.starts_with(topic, 'progress:'))
  with check (not pg_catalog.starts_with(topic, 'progress:'));

drop policy if exists progress_topics_no_delete on realtime.messages;
create policy progress_topics_no_delete on realtime.messages
  as restrictive
  for delete
  to public
  using (not pg_catalog.starts_with(topic, 'progress:'));
