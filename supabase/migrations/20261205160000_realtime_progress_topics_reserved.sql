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
-- The policies below are RESTRICTIVE: ANDed with every permissive policy, for the roles a client's token
-- gives Realtime and the Data API (anon, authenticated), on topics that start with 'progress:' only:
--   * select (a join's read probe, replay): only one's own progress:<auth.uid()>;
--   * insert (send, presence track), update, delete: nothing.
-- Every other topic keeps exactly what the project's policies allow. readsync's database broadcasts are
-- unaffected: its trigger (reading_progress_broadcast, SECURITY DEFINER) inserts as the function's owner,
-- which these policies do not name (and which RLS does not bind: postgres, as service_role, bypasses it).
-- The row's topic is what is tested: Realtime's probe row and the rows a channel replays carry the
-- channel's own sub-topic (realtime.topic()). The CASE keeps auth.uid() (which casts sub to uuid) out of
-- every other topic's decision.
--
-- Idempotent: each policy is dropped if it exists and created again.

drop policy if exists progress_topics_receive_own_only on realtime.messages;
create policy progress_topics_receive_own_only on realtime.messages
  as restrictive
  for select
  to anon, authenticated
  using (
    case when pg_catalog.starts_with(topic, 'progress:')
         then topic = 'progress:' || (select auth.uid())::text
         else true end
  );

drop policy if exists progress_topics_no_send on realtime.messages;
create policy progress_topics_no_send on realtime.messages
  as restrictive
  for insert
  to anon, authenticated
  with check (not pg_catalog.starts_with(topic, 'progress:'));

drop policy if exists progress_topics_no_update on realtime.messages;
create policy progress_topics_no_update on realtime.messages
  as restrictive
  for update
  to anon, authenticated
  using (not pg_catalog.starts_with(topic, 'progress:'))
  with check (not pg_catalog.starts_with(topic, 'progress:'));

drop policy if exists progress_topics_no_delete on realtime.messages;
create policy progress_topics_no_delete on realtime.messages
  as restrictive
  for delete
  to anon, authenticated
  using (not pg_catalog.starts_with(topic, 'progress:'));
