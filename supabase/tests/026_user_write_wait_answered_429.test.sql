-- How a user's write that waited too long for another write of the same user is answered through the Data
-- API (migration …_user_write_wait_answered_429.sql), as the trigger function's comment states it: SQLSTATE
-- PGRST with the JSON PostgREST answers as HTTP 429 Too Many Requests with one Retry-After: 1, the body's
-- code still PT503; why not 503 (PostgREST puts a Retry-After of its own before the raised one on every
-- 503, and 12.0 to 14.x start their connection worker, which flushes the pool and reloads the schema
-- cache); and the correction of …_user_write_wait_retry_after.sql's header (applied migrations are not
-- edited): RAISE SQLSTATE 'PGRST' came in PostgREST 12.0, not 11.2. The wait itself needs two sessions:
-- tests/functions/user_writes_serialized.test.ts (the answer read as PostgREST 12 to 14 read and send it,
-- under each shape of timeouts; the progress function's 503).

begin;
create extension if not exists pgtap with schema extensions;
select plan(3);

select matches(
  pg_catalog.obj_description('private.reading_progress_serialize_user_writes()'::regprocedure, 'pg_proc'),
  'and then raises SQLSTATE PGRST with the JSON PostgREST answers as HTTP 429 Too Many Requests, '
    || 'Retry-After: 1 and the body \{"code": "PT503", \.\.\.\} \(a cancel stays 57014\)',
  'the comment: the wait ends as PostgREST''s 429 with Retry-After: 1, the body''s code still PT503');
select matches(
  pg_catalog.obj_description('private.reading_progress_serialize_user_writes()'::regprocedure, 'pg_proc'),
  '429, not 503: PostgREST \(12\.0 and later\) puts a Retry-After of its own before the raised one on every '
    || '503 \(Retry-After: 0, then 1\), and from 12\.0 to 14\.x starts its connection worker, which flushes its '
    || 'pool and reloads its configuration and schema cache; the body''s code stays PT503, the code clients '
    || 'read\.',
  'the comment: why not 503 (PostgREST''s own Retry-After, its connection worker), why the code stays');
select matches(
  pg_catalog.obj_description('private.reading_progress_serialize_user_writes()'::regprocedure, 'pg_proc'),
  'Correction to …_user_write_wait_retry_after\.sql: its header says RAISE SQLSTATE ''PGRST'' needs PostgREST '
    || '11\.2; it came in 12\.0 \(PostgREST 11 answers it with HTTP 400\)\.',
  'the comment corrects …_user_write_wait_retry_after.sql''s header: the PGRST form came in PostgREST 12.0');

select * from finish();
rollback;
