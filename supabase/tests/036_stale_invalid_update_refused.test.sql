-- A direct UPDATE of reading_progress (the Data API's PATCH, or SQL) that the table could not hold is refused
-- as the table refuses it, also when last write wins would skip it as older than the stored row (migration
-- …_stale_invalid_update_refused.sql): a value out of range is 23514 naming the table's check, a NULL
-- 23502 naming its column, with the error the same write gets when it is newer. Before, the stamp trigger
-- returned NULL for such a stale write before any check ran: for a role that bypasses RLS (postgres,
-- service_role) the invalid row was skipped as a valid loser (UPDATE 0, no error; PostgREST 200 or 204),
-- and a user's failed naming the conflict log's own check (reading_progress_conflicts_loser_valid). A
-- valid stale or tie-losing write is still skipped (UPDATE 0), logged for the user only, nothing stored.

begin;
create extension if not exists pgtap with schema extensions;
select plan(27);

insert into auth.users (id, email)
values ('a3600000-0000-4000-8000-000000000036', 'stale-invalid@readsync.test'),
       ('b3600000-0000-4000-8000-000000000036', 'stale-invalid-other@readsync.test');
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
values ('a3600000-0000-4000-8000-000000000036', 's', 12, 30, 0.12, false, 'tablet', now() - interval '1 hour'),
       ('b3600000-0000-4000-8000-000000000036', 's', 5, 6, 0.05, false, 'tablet', now() - interval '1 hour');

-- Runs `update public.reading_progress set <p_set> where user_id = <p_user> and series_id = 's'` as p_role
-- with the first user's claims: the number of rows it updated, or the error as '<SQLSTATE> <constraint or
-- column>'.
create function pg_temp.update_as(p_role text, p_set text,
  p_user uuid default 'a3600000-0000-4000-8000-000000000036') returns text
language plpgsql as $fn$
declare
  v_rows integer;
  v_state text;
  v_constraint text;
  v_column text;
begin
  perform set_config('request.jwt.claims',
    jsonb_build_object('sub', 'a3600000-0000-4000-8000-000000000036', 'role', p_role)::text, true);
  begin
    perform set_config('role', p_role, true);
    execute format('update public.reading_progress set %s where user_id = %L and series_id = %L', p_set, p_user, 's');
    get diagnostics v_rows = row_count;
    perform set_config('role', 'none', true);
    return v_rows::text;
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_constraint = constraint_name, v_column = column_name;
    perform set_config('role', 'none', true);
    return v_state || ' ' || coalesce(nullif(v_constraint, ''), nullif(v_column, ''), '-');
  end;
end
$fn$;
-- The message of the error the same UPDATE raises as p_role (none: it succeeded).
create function pg_temp.message_as(p_role text, p_set text) returns text
language plpgsql as $fn$
declare
  v_message text;
begin
  perform set_config('request.jwt.claims',
    jsonb_build_object('sub', 'a3600000-0000-4000-8000-000000000036', 'role', p_role)::text, true);
  begin
    perform set_config('role', p_role, true);
    execute format('update public.reading_progress set %s where user_id = %L and series_id = %L',
                   p_set, 'a3600000-0000-4000-8000-000000000036', 's');
    perform set_config('role', 'none', true);
    return 'none';
  exception when others then
    get stacked diagnostics v_message = message_text;
    perform set_config('role', 'none', true);
    return v_message;
  end;
end
$fn$;
create function pg_temp.logged() returns integer language sql as $fn$
  select count(*)::int from public.reading_progress_conflicts where user_id = 'a3600000-0000-4000-8000-000000000036'
$fn$;
create function pg_temp.stored() returns text language sql as $fn$
  select string_agg(format('%s %s %s/%s/%s %s %s %s', user_id, series_id, chapter, page, percentage, cleared,
                           device_id, updated_at), ', ' order by user_id)
    from public.reading_progress
   where user_id in ('a3600000-0000-4000-8000-000000000036', 'b3600000-0000-4000-8000-000000000036')
$fn$;
create temp table before_writes on commit drop as select pg_temp.stored() as stored;

-- The SET of a stale write (three days older than the stored one) and of a write losing the stored
-- millisecond's tie (a smaller device id), each followed by the column values of the case.
create temp table keys on commit drop as
select $$updated_at = now() - interval '3 days', device_id = 'old-phone', $$ as stale,
       format('updated_at = %L, device_id = %L, ', date_trunc('milliseconds', now() - interval '1 hour'), 'a-phone')
         as tie;

-- ---------------------------------------------------------------------------------------------
-- postgres (the session's own role: the table's owner, bypasses RLS), as a maintenance script does.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.update_as(session_user::text, (select stale from keys) || 'chapter = -1'),
  '23514 reading_progress_chapter_range',
  'a stale UPDATE with a chapter out of range, by postgres: refused as the table''s check (was UPDATE 0)');
select is(pg_temp.update_as(session_user::text, (select stale from keys) || 'page = 1000001'),
  '23514 reading_progress_page_range', 'a page out of range: refused as the table''s check');
select is(pg_temp.update_as(session_user::text, (select stale from keys) || $$percentage = 'NaN'$$),
  '23514 reading_progress_percentage_range', 'a NaN percentage: refused as the table''s check');
select is(pg_temp.update_as(session_user::text, $$updated_at = now() - interval '3 days', device_id = 'old phone'$$),
  '23514 reading_progress_device_id_format', 'a device id of another format: refused as the table''s check');
select is(pg_temp.update_as(session_user::text, (select stale from keys) || 'chapter = null'),
  '23502 chapter', 'a NULL chapter: refused as NOT NULL refuses it');
select is(pg_temp.update_as(session_user::text, $$updated_at = '-infinity', device_id = 'old-phone'$$),
  '23514 reading_progress_updated_at_range', 'dated -infinity (before 1970): refused as the table''s check');
select is(pg_temp.update_as(session_user::text, (select tie from keys) || 'chapter = -1'),
  '23514 reading_progress_chapter_range', 'a tie lost (same millisecond, smaller device id) with a chapter out of range: refused');
select is(pg_temp.update_as(session_user::text, (select stale from keys) || 'chapter = -1, page = -1'),
  '23514 reading_progress_chapter_range', 'two rules broken: refused naming the one the table names first');
select is(pg_temp.message_as(session_user::text, (select stale from keys) || 'page = -1'),
  pg_temp.message_as(session_user::text, $$updated_at = now(), device_id = 'new-phone', page = -1$$),
  'the stale write''s error is the one the same write gets when it is newer');
select is(pg_temp.message_as(session_user::text, $$updated_at = now(), device_id = 'new-phone', page = -1$$),
  'new row for relation "reading_progress" violates check constraint "reading_progress_page_range"',
  'premise: the newer write is refused by the table''s check');
select is(pg_temp.update_as(session_user::text, (select stale from keys) || 'chapter = 3'),
  '0', 'a valid stale write is skipped (UPDATE 0), as before');
select is(pg_temp.update_as(session_user::text,
                            (select stale from keys) || 'chapter = 100000, page = 1000000, percentage = 1'),
  '0', 'a stale write at the ranges'' upper bounds is valid: skipped, not refused');
select is(pg_temp.update_as(session_user::text,
                            (select stale from keys) || 'chapter = 0, page = 0, percentage = 0, cleared = true'),
  '0', 'a valid stale reset is skipped, as before');
select is(pg_temp.update_as(session_user::text, (select tie from keys) || 'chapter = 3'),
  '0', 'a valid write losing the tie is skipped, as before');

-- ---------------------------------------------------------------------------------------------
-- service_role (the Data API with the service key: bypasses RLS).
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.update_as('service_role', (select stale from keys) || 'percentage = 1.5'),
  '23514 reading_progress_percentage_range',
  'a stale UPDATE with a percentage out of range, by service_role: refused as the table''s check (was UPDATE 0)');
select is(pg_temp.update_as('service_role', (select stale from keys) || 'page = null'),
  '23502 page', 'a NULL page by service_role: refused as NOT NULL refuses it');
select is(pg_temp.update_as('service_role', (select stale from keys) || 'percentage = null'),
  '23502 percentage', 'a NULL percentage by service_role: refused as NOT NULL refuses it');
select is(pg_temp.update_as('service_role', (select stale from keys) || 'cleared = null'),
  '23502 cleared', 'a NULL cleared by service_role: refused as NOT NULL refuses it');
select is(pg_temp.update_as('service_role', $$updated_at = now() - interval '3 days', device_id = null$$),
  '23502 device_id', 'a stale write with a NULL device id by service_role: refused as NOT NULL refuses it');
select is(pg_temp.update_as('service_role', (select stale from keys) || 'chapter = 3'),
  '0', 'a valid stale write by service_role is skipped, as before');

-- ---------------------------------------------------------------------------------------------
-- A user (authenticated, under RLS): the same refusals, naming the table's rule instead of the log's;
-- nothing logged for them. Denied paths: another user's row, and anon.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.update_as('authenticated', (select stale from keys) || 'chapter = -1'),
  '23514 reading_progress_chapter_range',
  'a user''s stale UPDATE with a chapter out of range: the table''s check (was the conflict log''s)');
select is(pg_temp.update_as('authenticated', (select tie from keys) || $$percentage = 'NaN'$$),
  '23514 reading_progress_percentage_range', 'a user''s lost tie with a NaN percentage: the table''s check');
select is(pg_temp.logged(), 0, 'no refused write was logged');
select is(pg_temp.update_as('authenticated', (select stale from keys) || 'chapter = 3') || ' ' || pg_temp.logged(),
  '0 1', 'a user''s valid stale write is skipped and logged, as before');
select is(pg_temp.update_as('authenticated', (select stale from keys) || 'chapter = -1',
                            'b3600000-0000-4000-8000-000000000036'),
  '0', 'a user''s invalid write to another user''s row: no row to update (RLS), nothing raised, nothing changed');
select is(pg_temp.update_as('anon', (select stale from keys) || 'chapter = -1'),
  '42501 -', 'anon: refused (no UPDATE on the table) before any rule');
select is(pg_temp.stored(), (select stored from before_writes), 'no stored row changed');

select * from finish();
rollback;
