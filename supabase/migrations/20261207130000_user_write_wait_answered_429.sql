-- A user's write that waited too long for another write of the same user (migrations
-- …_user_writes_serialized.sql, …_user_write_wait_answered_503.sql and
-- …_user_write_wait_retry_after.sql) is now answered by PostgREST with HTTP 429 Too Many Requests and one
-- `Retry-After: 1`, instead of HTTP 503, which PostgREST sent with a second Retry-After of its own and
-- which made it flush its connection pool and reload its configuration and schema cache. The body is as
-- before: "code" "PT503", the message, details and hint. The progress function answers that wait as
-- before (503 service_unavailable, Retry-After 1): its store maps the body's code, which is unchanged.
--
-- 1. What PostgREST does with every 503 it sends (src/PostgREST/App.hs, `postgrest`, from 12.0, the
--    first version that reads SQLSTATE PGRST; Supabase's CLI ran postgrest v12.2.12 in its July 2025
--    pkg/config/templates/Dockerfile, and the CLI this project pins, 2.117.0, runs v16.2):
--    - `addRetryHint` (Response.hs in 12.x, App.hs later; still in the 16.x source) puts its own
--      ("Retry-After", <delay>) before the response's headers when the status is 503. The delay is
--      AppState's reconnection delay: 0 unless PostgREST has had to reconnect since it started. So the
--      raised `Retry-After: 1` arrived as two fields, `Retry-After: 0` then `Retry-After: 1`: fetch's
--      headers.get joins them as "0, 1", which is no valid Retry-After (RFC 9110 §10.2.3: one HTTP-date
--      or delay-seconds); postgrest-js 2.119.1 (the supabase-js this project pins; fetchWithRetry, for
--      the GET, HEAD and OPTIONS it retries) reads it with parseInt as 0.
--    - from 12.0 to 14.x, `when (isServiceUnavailable response ...) connWorker` starts the connection
--      worker (debounced, 100 ms): in 12.x internalConnectionWorker flushes the pool
--      (establishConnection: flushPool, then the server version again), re-reads the in-database
--      configuration (db-config, on by default) and reloads the schema cache; later the schema cache
--      loader does the same (AppState.hs, retryingSchemaCacheLoad: server version, in-database
--      configuration, schema cache, then the pool flushed). Later 12.2 releases on skip it only while
--      the schema cache is empty (PostgREST#3704); the 16.x source no longer starts it from a 503. That
--      is PostgREST's recovery from a lost database, made for a 503 that means the database went away
--      (08*, 53*, 57P01, a failed connection). One user's pile-up of writes had the Data API drop every
--      client's pooled connections and read its catalogs again, over and over while it lasted.
--    None of this happens for another status: PostgREST sends the raised status with exactly the
--    raised headers (Error.hs: `headers` of a PgError with SQLSTATE PGRST are the DETAIL's, nothing
--    added; the status is the DETAIL's "status").
--
-- 2. Why 429. RFC 6585 §4: the user has sent too many requests in a given amount of time; "MAY include a
--    Retry-After header indicating how long to wait before making a new request". Here the user's own
--    concurrent writes are what made this one wait: the condition is the user's, not the server's, and
--    it passes once the user's other write ends. HTTP clients' retry policies that wait out a
--    Retry-After list 429 beside 503.
--    postgrest-js (fetchWithRetry, RETRYABLE_STATUS_CODES [520, 503], RETRYABLE_METHODS GET, HEAD,
--    OPTIONS) retries no write whatever its status, so supabase-js callers see `error.code` "PT503" and
--    `status` 429 and send the write again themselves, as they did for the 503; 429 is in neither list,
--    so a 429 to a read would not be retried either (there is none: the trigger fires on INSERT, UPDATE
--    and DELETE only).
--    Not 409 Conflict: RFC 9110 §15.5.10 means a request that conflicts with the current state of the
--    resource, which the client must resolve before sending it again; PostgREST itself answers 409 for
--    unique and foreign key violations (23505, 23503), which no client retries unchanged, and RFC 9110
--    gives Retry-After a meaning for 503 and 3xx only (RFC 6585 adds 429). This write needs no change
--    at all, only a later try. Not 423 Locked (WebDAV, RFC 4918): a resource locked by a WebDAV LOCK
--    until it is unlocked, which generic clients do not retry.
--
-- 3. The body's code stays "PT503": the code is what clients branch on (supabase-js hands over `code`
--    and `status`; README has documented "PT503" for this wait), the progress function's store maps it
--    (shared/progress/store.ts), and a client that read it reads it still. Since
--    …_user_write_wait_retry_after.sql it is the body's code of a PGRST error, free text to PostgREST, no
--    longer a status (PostgREST's PT<status> convention applies to SQLSTATE PTnnn, not to this body).
--
-- 4. Correction to …_user_write_wait_retry_after.sql's header (applied migrations are never edited): it
--    says PostgREST lets SQL set the status and headers with RAISE SQLSTATE 'PGRST' from 11.2 on. That
--    came in 12.0.0 (CHANGELOG: "#2492, Allow full response control when raising exceptions",
--    2023-12-01); PostgREST 11 answers SQLSTATE PGRST as any unknown SQLSTATE, HTTP 400 with the JSON as
--    the message. Said again in the COMMENT ON FUNCTION below.
--
-- 5. A statement timeout ending the wait is still told from a cancel by the message text only, so on a
--    server whose lc_messages translates messages (Supabase's and the local stack's are English) it stays
--    57014 (PostgREST: HTTP 500). No way that does not depend on the language exists on PostgreSQL 15:
--    - both are ereport(ERROR, errcode(ERRCODE_QUERY_CANCELED), errmsg(...)) in ProcessInterrupts
--      (tcop/postgres.c), with no detail, hint or other field; the statement timeout's handler cancels
--      the statement as a cancel request does (SIGINT to itself, QueryCancelPending); the untranslated
--      message (ErrorData.message_id) is not among GET STACKED DIAGNOSTICS' items;
--    - the trigger cannot know whether the statement timer ran out: its state and finish time are kept
--      in C (timeout.c, get_timeout_indicator, get_timeout_finish_time), and when it was armed is not
--      visible (statement_timestamp() is the message's arrival, not the statement's start: see
--      …_user_write_wait_retry_after.sql, 2), so elapsed time proves nothing either way; with
--      statement_timeout 0 a 57014 is surely a cancel, which the message already says;
--    - the trigger cannot make the message English: lc_messages is superuser-only (PGC_SUSET), so a
--      function's SET lc_messages clause takes effect only with a superuser's rights (this function is
--      SECURITY INVOKER; a SECURITY DEFINER helper would need a superuser owner, which Supabase's
--      postgres is not) or after a GRANT SET ON PARAMETER, which a migration run as postgres cannot give;
--    - it cannot learn the translated text either: SQL has no gettext, and causing a cancel of its own
--      (pg_cancel_backend(pg_backend_pid())) is refused to authenticated, whose session user is
--      PostgREST's login role.
--
-- The rest is as in …_user_write_wait_retry_after.sql: who takes the lock and its key, the try first, a
-- transaction with a transaction id only trying it, the wait ended by the running timers, a cancel staying
-- 57014. SECURITY INVOKER (current_user and row_security_active must be the writer's), search_path '' with
-- every name qualified (pgTAP 020, 023, 025, 026). Idempotent (CREATE OR REPLACE, COMMENT ON); local/test.ts
-- re-runs it after the three migrations that restate the function.

create or replace function private.reading_progress_serialize_user_writes() returns trigger
language plpgsql
security invoker
set search_path = ''
as $$
declare
  v_uid uuid;
  v_key integer;
  -- The lock's result, assigned rather than PERFORMed: an assignment of a simple expression is evaluated
  -- directly, where PERFORM runs a whole SELECT through the executor.
  v_result text;
  v_waited_from timestamptz;
  v_cancel text;
begin
  -- 'authenticated' by name first: the API's and the Data API's writes pay no catalog lookup.
  if current_user = 'authenticated' or pg_catalog.row_security_active(tg_relid) then
    v_uid := auth.uid();
    if v_uid is null then
      return null; -- the policies let no row through
    end if;
    v_key := pg_catalog.uuid_hash(v_uid);
    if pg_catalog.pg_try_advisory_xact_lock(tg_relid::integer, v_key) then
      return null; -- free (or this transaction's already): taken
    end if;
    if pg_catalog.pg_current_xact_id_if_assigned() is not null then
      -- This transaction has a transaction id: it wrote or row-locked something, maybe a row the
      -- lock's holder waits for. Waiting would close a cycle: it goes on without the lock.
      return null;
    end if;
    -- No transaction id yet: this transaction has written and row-locked nothing, so no writer waits
    -- for it and waiting cannot close a cycle. It waits until its lock timeout or its statement timeout,
    -- whichever the running timers end first (neither set: until the other write ends).
    v_waited_from := pg_catalog.clock_timestamp();
    begin
      v_result := pg_catalog.pg_advisory_xact_lock(tg_relid::integer, v_key)::text;
    exception when lock_not_available or query_canceled then
      get stacked diagnostics v_cancel = message_text;
      -- The statement timeout and a cancel share SQLSTATE 57014 and nothing but the message tells them
      -- apart (on a server that translates messages, the statement timeout stays 57014 too): see this
      -- migration's header, 5.
      if sqlstate = '57014' and v_cancel <> 'canceling statement due to statement timeout' then
        raise; -- a cancel, not the statement timeout: it stays a cancel
      end if;
      -- PostgREST answers this SQLSTATE with the status and headers of the DETAIL and the body of the
      -- MESSAGE. 429, not 503: PostgREST adds a Retry-After of its own to every 503 and reloads its schema
      -- cache after it (this migration's header, 1).
      raise sqlstate 'PGRST' using
        message = pg_catalog.json_build_object(
          'code', 'PT503',
          'message', 'Another write of this user is in progress',
          'details', pg_catalog.format(
            'This statement waited %s ms for a transaction of the same user writing to %s, which has not ended.',
            pg_catalog.round(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp() - v_waited_from)::numeric * 1000),
            tg_relid::regclass),
          'hint', 'Nothing of this write was stored: send it again. One user''s writes run one after the other.'
        )::text,
        detail = pg_catalog.json_build_object(
          'status', 429,
          'headers', pg_catalog.json_build_object('Retry-After', '1')
        )::text;
    end;
  end if;
  return null;
end;
$$;
revoke all on function private.reading_progress_serialize_user_writes() from public, anon, authenticated, service_role;

comment on function private.reading_progress_serialize_user_writes() is
  'BEFORE each INSERT, UPDATE and DELETE statement on reading_progress: a statement made under RLS takes '
  'the transaction-level advisory lock keyed on its user (the table''s oid, uuid_hash(auth.uid())), so one '
  'user''s writing transactions run one after the other. A transaction with no transaction id yet (it has '
  'written and row-locked nothing) waits for it, until its lock timeout or its statement timeout ends the '
  'wait, and then raises SQLSTATE PGRST with the JSON PostgREST answers as HTTP 429 Too Many Requests, '
  'Retry-After: 1 and the body {"code": "PT503", ...} (a cancel stays 57014); one with a transaction id only '
  'tries it. 429, not 503: PostgREST (12.0 and later) puts a Retry-After of its own before the raised one on '
  'every 503 (Retry-After: 0, then 1), and from 12.0 to 14.x starts its connection worker, which flushes its '
  'pool and reloads its configuration and schema cache; the body''s code stays PT503, the code clients read. '
  'The statement '
  'timeout is told from a cancel by the message only (no other field differs on PostgreSQL 15). '
  'Correction to …_user_write_wait_retry_after.sql: its header says RAISE SQLSTATE ''PGRST'' needs PostgREST '
  '11.2; it came in 12.0 (PostgREST 11 answers it with HTTP 400). Correction to '
  '…_user_write_wait_answered_503.sql: there a statement timeout under 100 ms gave a 1 ms wait that ended as '
  'PT503, not as 57014 (its header says otherwise, wrongly). Migrations '
  '…_user_writes_serialized.sql, …_user_write_wait_answered_503.sql, …_user_write_wait_retry_after.sql and '
  '…_user_write_wait_answered_429.sql.';
