-- What the user-lock trigger itself raises when a user's write waits too long for another write of the same
-- user (migration …_user_write_wait_answered_429.sql): SQLSTATE PGRST, the DETAIL exactly
-- {"status": 429, "headers": {"Retry-After": "1"}} (PostgREST's status and headers, sent as they are), the
-- MESSAGE the body PostgREST sends, with "code" "PT503", its message, details and hint and nothing else;
-- under a lock timeout and under a statement timeout alike; and the same write lands once the other one
-- has ended. pgTAP 025 and 026 check the function's comment only;
-- tests/functions/user_writes_serialized.test.ts reads the same error as PostgREST reads it.
--
-- The wait needs two other sessions: this file's transaction has a transaction id (pgTAP's plan() fills
-- temporary tables, the helpers below are created in it), so its own writes only try the lock and never
-- wait. dblink opens them (the holder: a write of the user in a transaction left open; the writer: the
-- same user's write that must wait), as this session's user, to this server. Where dblink cannot connect
-- (a role that is not a superuser connects only with a password, which this file does not have; the
-- local stack's pg_prove runs as its superuser), the file skips its tests and says why. Nothing is
-- stored: the writes are UPDATEs that match no row (the trigger fires before each statement, rows or not:
-- pgTAP 020), the holder's and the writer's transactions are rolled back, and CREATE EXTENSION dblink
-- (when this file made it) with this one.

begin;
create extension if not exists pgtap with schema extensions;
select plan(7);

-- dblink where it can be had: a server without it, or a role that may not create it, skips below.
do $$
begin
  create extension if not exists dblink with schema extensions;
exception when others then
  perform pg_catalog.set_config('readsync_test.no_dblink', sqlerrm, true);
end
$$;

-- The connection string of this server and database for this session's user: the TCP address this
-- session came in on, else the first Unix socket directory.
create function pg_temp.this_server() returns text language sql as $fn$
  select pg_catalog.format('host=%s port=%s dbname=%s user=%s application_name=readsync_pgtap_027',
    coalesce(pg_catalog.host(pg_catalog.inet_server_addr()),
             pg_catalog.split_part(pg_catalog.current_setting('unix_socket_directories'), ',', 1)),
    pg_catalog.current_setting('port'), pg_catalog.current_database(), session_user)
$fn$;

-- A statement as the user (role authenticated, the claims' sub) in a transaction of the connection's own.
create function pg_temp.as_user_sql(p_user uuid) returns text language sql as $fn$
  select pg_catalog.format('set local request.jwt.claims = %L; set local role authenticated',
    pg_catalog.jsonb_build_object('sub', p_user, 'role', 'authenticated')::text)
$fn$;
create function pg_temp.user_write_sql(p_user uuid) returns text language sql as $fn$
  select pg_catalog.format(
    'update public.reading_progress set chapter = chapter where user_id = %L and series_id = %L',
    p_user, 'pgtap-027')
$fn$;

-- `p_text` as JSON, or null where it is none (the message of a migration before the PGRST form).
create function pg_temp.json_or_null(p_text text) returns jsonb language plpgsql as $fn$
begin
  return p_text::jsonb;
exception when invalid_text_representation then
  return null;
end
$fn$;

-- The writer's write under `timeouts` (SET LOCAL statements), in a transaction of its own rolled back
-- after it: 'ok' if it went through, else {sqlstate, message, detail} of the error dblink raises here as
-- the writer's server raised it (SQLSTATE, message and detail carried over), message and detail as JSON
-- where they are JSON, else as strings.
create function pg_temp.writer_outcome(p_user uuid, p_timeouts text) returns jsonb language plpgsql as $fn$
declare
  v_state text;
  v_message text;
  v_detail text;
  v_outcome jsonb;
begin
  perform dblink_exec('rs027_writer', 'begin');
  perform dblink_exec('rs027_writer', pg_temp.as_user_sql(p_user));
  perform dblink_exec('rs027_writer', p_timeouts);
  begin
    perform dblink_exec('rs027_writer', pg_temp.user_write_sql(p_user));
    v_outcome := '"ok"';
  exception when others then
    get stacked diagnostics
      v_state = returned_sqlstate, v_message = message_text, v_detail = pg_exception_detail;
    v_outcome := pg_catalog.jsonb_build_object(
      'sqlstate', v_state,
      'message', coalesce(pg_temp.json_or_null(v_message), pg_catalog.to_jsonb(v_message)),
      'detail', coalesce(pg_temp.json_or_null(v_detail), pg_catalog.to_jsonb(v_detail)));
  end;
  perform dblink_exec('rs027_writer', 'rollback');
  return v_outcome;
end
$fn$;

create function pg_temp.wait_answered() returns setof text language plpgsql as $fn$
declare
  v_user constant uuid := 'a2700000-0000-4000-8000-000000000027';
  v_why text := pg_catalog.current_setting('readsync_test.no_dblink', true);
  v_by_lock jsonb;
  v_by_statement jsonb;
  v_after jsonb;
begin
  if v_why is null then
    begin
      perform dblink_connect('rs027_holder', pg_temp.this_server());
      perform dblink_connect('rs027_writer', pg_temp.this_server());
    exception when others then
      v_why := sqlerrm;
    end;
  end if;
  if v_why is not null then
    return next skip(pg_catalog.format('no second session through dblink: %s', v_why), 7);
    return;
  end if;

  -- The holder: the user's write in a transaction that stays open, holding the user's lock.
  perform dblink_exec('rs027_holder', 'begin');
  perform dblink_exec('rs027_holder', pg_temp.as_user_sql(v_user));
  perform dblink_exec('rs027_holder', pg_temp.user_write_sql(v_user));

  -- The writer's wait ended by its lock timeout, then by its statement timeout (no lock timeout): the
  -- holder holds the lock all the while, so each wait ends by its timer whatever the machine's speed.
  v_by_lock := pg_temp.writer_outcome(v_user, $q$set local lock_timeout = '20ms'$q$);
  v_by_statement := pg_temp.writer_outcome(v_user,
    $q$set local lock_timeout = 0; set local statement_timeout = '1s'$q$);

  perform dblink_exec('rs027_holder', 'rollback');
  v_after := pg_temp.writer_outcome(v_user, $q$set local lock_timeout = '20ms'$q$);
  perform dblink_disconnect('rs027_holder');
  perform dblink_disconnect('rs027_writer');

  return next is(v_by_lock ->> 'sqlstate', 'PGRST',
    'the wait ended by its lock timeout is raised as SQLSTATE PGRST');
  if v_by_lock ->> 'sqlstate' is distinct from 'PGRST' then
    return next diag('raised: ' || v_by_lock::text);
  end if;
  return next is(
    v_by_lock -> 'detail',
    '{"status": 429, "headers": {"Retry-After": "1"}}'::jsonb,
    'its DETAIL: HTTP status 429 and the one header Retry-After: 1');
  return next is(
    case pg_catalog.jsonb_typeof(v_by_lock -> 'message')
      when 'object' then (v_by_lock -> 'message') - 'details'
      else v_by_lock -> 'message'
    end,
    pg_catalog.jsonb_build_object(
      'code', 'PT503',
      'message', 'Another write of this user is in progress',
      'hint', 'Nothing of this write was stored: send it again. One user''s writes run one after the other.'),
    'its MESSAGE, the body: code PT503, the message and the hint, no other member but details');
  return next matches(
    v_by_lock -> 'message' ->> 'details',
    '^This statement waited [0-9]+ ms for a transaction of the same user writing to '
      || 'public\.reading_progress, which has not ended\.$',
    'its details: how long the statement waited, for which table');
  return next is(v_by_statement ->> 'sqlstate', 'PGRST',
    'the wait ended by its statement timeout is raised as SQLSTATE PGRST too');
  if v_by_statement ->> 'sqlstate' is distinct from 'PGRST' then
    return next diag('raised: ' || v_by_statement::text);
  end if;
  return next is(
    pg_catalog.jsonb_build_array(v_by_statement -> 'detail', v_by_statement -> 'message' -> 'code'),
    '[{"status": 429, "headers": {"Retry-After": "1"}}, "PT503"]'::jsonb,
    'with the same DETAIL (429, Retry-After: 1) and code PT503');
  return next is(v_after, '"ok"'::jsonb,
    'the same write, sent again once the other one has ended, goes through');
end
$fn$;

select * from pg_temp.wait_answered();

select * from finish();
rollback;
