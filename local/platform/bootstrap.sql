-- Local Supabase platform surface for readsync.
--
-- Supabase's own local stack (`supabase start`) needs Docker, which these machines do not have, so
-- the local stack applies this file to a throwaway PostgreSQL before the migrations run. It stands in
-- for exactly the parts of a Supabase database that our migrations, tests and services touch, and
-- nothing more. It is NEVER applied to a real Supabase database: the launcher skips it when the
-- target already has `auth.uid()` and `realtime.messages` (see local/stack/database.ts).
--
-- Each section names the Supabase documentation it follows.

-- ---------------------------------------------------------------------------------------------
-- One bootstrap at a time. The launcher runs this file in one transaction (`psql -1`,
-- local/stack/database.ts) once it has found the database without `auth.uid()` and `realtime.messages`;
-- two first starts against one fresh database at once both find it so. The first statement takes a
-- transaction-level advisory lock (held to the commit), and the look is taken again under it: the start
-- that waited for the other's commit then finds everything applied and stops here (the launcher reads the
-- line it prints), instead of running the file beside the other and failing on what the other created.
-- In a statement of its own: the next one's snapshot is taken after the lock, and sees the other's commit.
-- (psql meta-commands, \gset and \if: the file is psql's to run.)
-- ---------------------------------------------------------------------------------------------
do $$
begin
  perform pg_advisory_xact_lock(hashtextextended('readsync: local platform bootstrap', 0));
end
$$;
select to_regprocedure('auth.uid()') is not null and to_regclass('realtime.messages') is not null
  as readsync_bootstrap_found_applied \gset
\if :readsync_bootstrap_found_applied
  \echo readsync: platform bootstrap already applied
  \quit
\endif

-- ---------------------------------------------------------------------------------------------
-- Roles and grants: https://supabase.com/docs/guides/database/postgres/roles
-- anon / authenticated / service_role are NOLOGIN roles the API switches into after verifying the
-- JWT; service_role bypasses RLS. `authenticator` is the login role the API gateway uses.
-- ---------------------------------------------------------------------------------------------
do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;
grant anon, authenticated, service_role to authenticator;
grant anon, authenticated, service_role to postgres;

-- Supabase projects have an `extensions` schema where extensions such as pgTAP are installed.
create schema if not exists extensions;
grant usage on schema extensions to anon, authenticated, service_role;

-- Supabase's default privileges on `public`: every API role gets everything, and RLS decides.
-- This is why each table must enable RLS and revoke what `anon` must not have.
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Auth: https://supabase.com/docs/guides/database/postgres/row-level-security#helper-functions
-- and https://supabase.com/docs/guides/auth/jwts. The API puts the verified JWT claims into the
-- transaction setting `request.jwt.claims`; auth.uid()/auth.role()/auth.jwt() read it.
-- auth.users keeps only the columns our schema and tests use.
-- ---------------------------------------------------------------------------------------------
create schema if not exists auth;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
  id uuid primary key default gen_random_uuid(),
  aud varchar(255) default 'authenticated',
  role varchar(255) default 'authenticated',
  email varchar(255) unique,
  raw_app_meta_data jsonb default '{}'::jsonb,
  raw_user_meta_data jsonb default '{}'::jsonb,
  created_at timestamptz default now(),
  updated_at timestamptz default now()
);

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

grant execute on function auth.jwt(), auth.uid(), auth.role(), auth.email()
  to anon, authenticated, service_role;
grant select on auth.users to service_role;

-- ---------------------------------------------------------------------------------------------
-- Realtime: https://supabase.com/docs/guides/realtime/broadcast ("Broadcast from the database")
-- and https://supabase.com/docs/guides/realtime/authorization.
-- Messages for Broadcast are rows in realtime.messages; RLS on it decides who may receive (select)
-- and send (insert) on a topic, with realtime.topic() naming the channel being joined.
-- realtime.send never fails the caller's transaction: an error becomes a WARNING.
--
-- The table is Supabase's: partitioned by day on inserted_at (Realtime's tenant migration
-- "messages_partitioning"), primary key (id, inserted_at), and the partial index Realtime's replay
-- reads. The partitions are not the database's doing: Supabase Realtime creates the ones for
-- yesterday, today and tomorrow (UTC) when it connects to the database and again from its janitor,
-- which also drops those older than 72 hours; the local Realtime endpoint does the same
-- (local/realtime/partitions.ts). This file creates the first three, so a database without an
-- endpoint (pgTAP alone) can broadcast too. A message whose inserted_at no partition covers cannot
-- be stored: realtime.send turns the error into a WARNING, the write that broadcast it commits, and
-- that broadcast is lost (devices still converge by catch-up, see tests/integration/realtime-partitions.test.ts).
-- ---------------------------------------------------------------------------------------------
create schema if not exists realtime;
grant usage on schema realtime to anon, authenticated, service_role;

create table if not exists realtime.messages (
  topic text not null,
  extension text not null,
  payload jsonb,
  event text,
  private boolean default false,
  updated_at timestamp not null default now(),
  inserted_at timestamp not null default now(),
  id uuid not null default gen_random_uuid(),
  primary key (id, inserted_at)
) partition by range (inserted_at);
create index if not exists messages_inserted_at_topic_index on realtime.messages (inserted_at desc, topic)
  where extension = 'broadcast' and private is true;
do $$
declare
  day date;
begin
  for day in select (now() at time zone 'utc')::date + k from generate_series(-1, 1) k loop
    execute format('create table if not exists realtime.%I partition of realtime.messages for values from (%L) to (%L)',
      'messages_' || to_char(day, 'YYYY_MM_DD'), day, day + 1);
  end loop;
end
$$;
alter table realtime.messages enable row level security;
grant select, insert, update on realtime.messages to anon, authenticated;
grant all on realtime.messages to service_role;

create or replace function realtime.topic() returns text
language sql stable
as $$
  select nullif(current_setting('realtime.topic', true), '')::text
$$;
grant execute on function realtime.topic() to anon, authenticated, service_role;

-- As Supabase Realtime defines it (tenant migration 20260420000000): the message gets a new id,
-- which is also added to the stored payload unless the payload has an id of its own.
create or replace function realtime.send(payload jsonb, event text, topic text, private boolean default true)
returns void
language plpgsql
as $$
declare
  generated_id uuid;
  final_payload jsonb;
begin
  begin
    generated_id := gen_random_uuid();
    if payload ? 'id' then
      final_payload := payload;
    else
      final_payload := jsonb_set(payload, '{id}', to_jsonb(generated_id));
    end if;
    perform set_config('realtime.topic', topic, true);
    insert into realtime.messages (id, payload, event, topic, private, extension)
    values (generated_id, final_payload, event, topic, private, 'broadcast');
  exception when others then
    raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
  end;
end;
$$;

create or replace function realtime.broadcast_changes(
  topic_name text, event_name text, operation text, table_name text, table_schema text,
  new record, old record, level text default 'ROW'
) returns void
language plpgsql
as $$
declare
  row_data jsonb;
begin
  if level = 'STATEMENT' then
    raise exception 'function can only be triggered for each row, not for each statement';
  end if;
  if operation in ('INSERT', 'UPDATE', 'DELETE') then
    row_data := jsonb_build_object(
      'old_record', old, 'record', new, 'operation', operation,
      'table', table_name, 'schema', table_schema);
    perform realtime.send(row_data, event_name, topic_name);
  else
    raise exception 'Unexpected operation type: %', operation;
  end if;
exception when others then
  raise exception 'Failed to process the row: %', sqlerrm;
end;
$$;

-- Local delivery (local/realtime/wal.ts): like Supabase Realtime, the local Realtime endpoint reads new
-- realtime.messages rows from the WAL by logical replication (pgoutput, a temporary slot of its
-- own), which decodes only committed transactions, in commit order. This publication is what it
-- subscribes to; declared here, with the other local stand-ins, so that several endpoints starting
-- at once never race to create it (an endpoint creates it only on a database this file never saw).
-- publish_via_partition_root: Supabase partitions the table, and rows must carry the table's name.
-- The NOTIFY trigger the endpoint used before is dropped: NOTIFY serialized every broadcasting commit.
drop trigger if exists local_notify_message on realtime.messages;
drop function if exists realtime.local_notify_message();
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'readsync_realtime_messages') then
    create publication readsync_realtime_messages for table realtime.messages
      with (publish_via_partition_root = true);
  end if;
end
$$;
