-- write_reading_progress refuses a write reading_progress could not hold the same way for every caller,
-- also when the write is refused as older than the stored one (migration
-- …_write_function_refuses_invalid_losers.sql): `cleared: true` with a position is 23514 naming
-- reading_progress_cleared_is_zero, a value out of range 23514 naming its check, a NULL 23502 naming its
-- column. Before, a role whose writes are not logged (the session's own role here, postgres: it bypasses
-- RLS) with a user's claims had such a stale write answered {won: false, conflict: "stale"}, and a
-- user's failed with 23514 naming the conflict log's own check (reading_progress_conflicts_loser_valid).
-- A valid stale write is still answered stale (logged for the user only), and nothing is stored.

begin;
create extension if not exists pgtap with schema extensions;
select plan(14);

insert into auth.users (id, email) values ('a3300000-0000-4000-8000-000000000033', 'invalid-loser@readsync.test');
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
values ('a3300000-0000-4000-8000-000000000033', 's', 12, 30, 0.12, false, 'tablet', now() - interval '1 hour'),
       ('a3300000-0000-4000-8000-000000000033', 'reset', 0, 0, 0, true, 'tablet', now() - interval '1 hour');

-- Runs a call of write_reading_progress as p_role with the user's claims: the answer without the stored
-- row ({won, conflict}), or the error as '<SQLSTATE> <constraint or column>'.
create function pg_temp.write_as(p_role text, p_series text, p_chapter text, p_percentage text, p_cleared boolean,
  p_device text, p_updated_at text) returns text
language plpgsql as $fn$
declare
  v_answer jsonb;
  v_state text;
  v_constraint text;
  v_column text;
begin
  perform set_config('request.jwt.claims',
    jsonb_build_object('sub', 'a3300000-0000-4000-8000-000000000033', 'role', p_role)::text, true);
  begin
    perform set_config('role', p_role, true);
    execute format('select public.write_reading_progress(%L, %s, 0, %s, %L, %L, %s)',
                   p_series, p_chapter, p_percentage, p_cleared, p_device, p_updated_at)
      into v_answer;
    perform set_config('role', 'none', true);
    return jsonb_build_object('won', v_answer -> 'won', 'conflict', v_answer -> 'conflict')::text;
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_constraint = constraint_name, v_column = column_name;
    return v_state || ' ' || coalesce(nullif(v_constraint, ''), nullif(v_column, ''), '-');
  end;
end
$fn$;
create function pg_temp.logged() returns integer language sql as $fn$
  select count(*)::int from public.reading_progress_conflicts where user_id = 'a3300000-0000-4000-8000-000000000033'
$fn$;
create function pg_temp.stored() returns text language sql as $fn$
  select string_agg(format('%s %s/%s/%s %s %s', series_id, chapter, page, percentage, cleared, device_id), ', '
                    order by series_id)
    from public.reading_progress where user_id = 'a3300000-0000-4000-8000-000000000033'
$fn$;
create temp table before_writes on commit drop as select pg_temp.stored() as stored;

-- ---------------------------------------------------------------------------------------------
-- A role whose writes are not logged (the session's own: postgres bypasses RLS) with a user's claims.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.write_as(session_user::text, 's', '3', '0.03', true, 'old-phone', $$now() - interval '3 days'$$),
  '23514 reading_progress_cleared_is_zero',
  'a stale `cleared: true` with a position, by a role whose writes are not logged: refused as the reset''s check (was answered stale)');
select is(pg_temp.write_as(session_user::text, 'reset', '3', '0.03', true, 'old-phone', $$now() - interval '3 days'$$),
  '23514 reading_progress_cleared_is_zero',
  'the same onto a stored reset');
select is(pg_temp.write_as(session_user::text, 's', '-1', '0.03', false, 'old-phone', $$now() - interval '3 days'$$),
  '23514 reading_progress_chapter_range', 'a stale write with a chapter out of range: refused as the table''s check');
select is(pg_temp.write_as(session_user::text, 's', '3', $$'NaN'$$, false, 'old-phone', $$now() - interval '3 days'$$),
  '23514 reading_progress_percentage_range', 'a stale write with a NaN percentage: refused as the table''s check');
select is(pg_temp.write_as(session_user::text, 's', '3', '0.03', false, 'old phone', $$now() - interval '3 days'$$),
  '23514 reading_progress_device_id_format', 'a stale write with a device id of another format: refused');
select is(pg_temp.write_as(session_user::text, 's', 'null', '0.03', false, 'old-phone', $$now() - interval '3 days'$$),
  '23502 chapter', 'a stale write without a chapter: refused as NOT NULL refuses it');
select is(pg_temp.write_as(session_user::text, 's', '3', '0.03', false, 'old-phone', $$'1969-12-31 00:00:00+00'$$),
  '23514 reading_progress_updated_at_range', 'a stale write dated before 1970: refused as the table''s check');
select is(pg_temp.write_as(session_user::text, 's', '3', '0.03', false, 'old-phone', $$now() - interval '3 days'$$),
  '{"won": false, "conflict": "stale"}', 'a valid stale write is answered stale, as before');
select is(pg_temp.write_as(session_user::text, 's', '3', '0.03', true, 'new-phone', $$now()$$),
  '23514 reading_progress_cleared_is_zero', 'premise: the same reset newer than the stored write is refused so too');

-- ---------------------------------------------------------------------------------------------
-- A user's write (role authenticated): the same answers, nothing logged for a refused one.
-- ---------------------------------------------------------------------------------------------
select is(pg_temp.write_as('authenticated', 's', '3', '0.03', true, 'old-phone', $$now() - interval '3 days'$$),
  '23514 reading_progress_cleared_is_zero',
  'a user''s stale `cleared: true` with a position: the same refusal, naming the reset''s check (was the log''s)');
select is(pg_temp.write_as('authenticated', 's', '3', '0.03', false, 'old phone', $$now() - interval '3 days'$$),
  '23514 reading_progress_device_id_format', 'a user''s stale write with a device id of another format: the same refusal');
select is(pg_temp.logged(), 0, 'no refused write was logged');
select is(pg_temp.write_as('authenticated', 's', '3', '0.03', false, 'old-phone', $$now() - interval '3 days'$$)
          || ' ' || pg_temp.logged(),
  '{"won": false, "conflict": "stale"} 1', 'a user''s valid stale write is answered stale and logged, as before');
select is(pg_temp.stored(), (select stored from before_writes), 'no stored row changed');

select * from finish();
rollback;
