-- How a user's write that waited too long for another write of the same user ends (migration
-- …_user_write_wait_retry_after.sql), as the trigger function's comment states it: its lock timeout or its
-- statement timeout ends the wait (the running timers, where …_user_write_wait_answered_503.sql counted
-- what was left of the statement timeout from statement_timestamp(), which PostgreSQL does not do for the
-- statements of a simple-query message after its first), answered as SQLSTATE PGRST with the JSON
-- PostgREST answers as HTTP 503, Retry-After: 1 and the body PT503, a cancel staying 57014; and the
-- correction of …_user_write_wait_answered_503.sql's header (applied migrations are not edited): a
-- statement timeout under 100 ms gave a 1 ms wait that ended as PT503, not 57014. Since
-- …_user_write_wait_answered_429.sql the status is 429, not 503 (pgTAP 026). The wait itself needs
-- two sessions: tests/functions/user_writes_serialized.test.ts (the answer read as PostgREST reads it
-- under each shape of timeouts, a write after other statements in one message, a cancel, the progress
-- function's 503).

begin;
create extension if not exists pgtap with schema extensions;
select plan(3);

select matches(
  pg_catalog.obj_description('private.reading_progress_serialize_user_writes()'::regprocedure, 'pg_proc'),
  'waits for it, until its lock timeout or its statement timeout ends the wait, and then raises',
  'the comment: the running timers end the wait, no bound counted from statement_timestamp()');
select matches(
  pg_catalog.obj_description('private.reading_progress_serialize_user_writes()'::regprocedure, 'pg_proc'),
  'and then raises SQLSTATE PGRST with the JSON PostgREST answers as HTTP [0-9]{3}[^,]*, Retry-After: 1 and the '
    || 'body \{"code": "PT503", \.\.\.\} \(a cancel stays 57014\)',
  'the comment: the wait ends as SQLSTATE PGRST with Retry-After: 1, the body''s code still PT503 (its status: '
    || 'pgTAP 026)');
select matches(
  pg_catalog.obj_description('private.reading_progress_serialize_user_writes()'::regprocedure, 'pg_proc'),
  'Correction to …_user_write_wait_answered_503\.sql: there a statement timeout under 100 ms gave a 1 ms '
    || 'wait that ended as PT503, not as 57014 \(its header says otherwise, wrongly\)\.',
  'the comment corrects …_user_write_wait_answered_503.sql''s header: under 100 ms left, a 1 ms wait, not 57014');

select * from finish();
rollback;
