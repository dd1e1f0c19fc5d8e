-- write_reading_progress refuses a losing write that reading_progress could not hold naming the rule the
-- table names for the same write when it is newer, also when the write breaks more than one rule
-- (migration …_write_function_refuses_invalid_losers.sql). Each write below is sent twice onto the same
-- stored row, newer (the table refuses it: the reset triggers, NOT NULL, the checks by name) and older
-- (the function's refused branch), and the two refusals are compared. A first version of that
-- migration (never released) took the rules in an order of its own: `cleared: true` with a device id of another
-- format was refused naming reading_progress_device_id_format when older and
-- reading_progress_cleared_is_zero when newer.

begin;
create extension if not exists pgtap with schema extensions;
select plan(16);

insert into auth.users (id, email) values ('a3500000-0000-4000-8000-000000000035', 'first-rule@readsync.test');
insert into public.reading_progress (user_id, series_id, chapter, page, percentage, cleared, device_id, updated_at)
values ('a3500000-0000-4000-8000-000000000035', 's', 12, 30, 0.12, false, 'tablet', now() - interval '1 hour'),
       ('a3500000-0000-4000-8000-000000000035', 'reset', 0, 0, 0, true, 'tablet', now() - interval '1 hour');

-- Runs write_reading_progress as p_role with the user's claims: the answer's {won, conflict}, or the
-- error as '<SQLSTATE> <constraint or column>'.
create function pg_temp.write_as(p_role text, p_series text, p_chapter integer, p_page integer,
  p_percentage double precision, p_cleared boolean, p_device text, p_updated_at timestamptz) returns text
language plpgsql as $fn$
declare
  v_answer jsonb;
  v_state text;
  v_constraint text;
  v_column text;
begin
  perform set_config('request.jwt.claims',
    jsonb_build_object('sub', 'a3500000-0000-4000-8000-000000000035', 'role', p_role)::text, true);
  begin
    perform set_config('role', p_role, true);
    v_answer := public.write_reading_progress(p_series, p_chapter, p_page, p_percentage, p_cleared, p_device,
                                              p_updated_at);
    perform set_config('role', 'none', true);
    return jsonb_build_object('won', v_answer -> 'won', 'conflict', v_answer -> 'conflict')::text;
  exception when others then
    get stacked diagnostics v_state = returned_sqlstate, v_constraint = constraint_name, v_column = column_name;
    return v_state || ' ' || coalesce(nullif(v_constraint, ''), nullif(v_column, ''), '-');
  end;
end
$fn$;
-- The refusal of the write sent older than the stored row, then the same write sent newer.
create function pg_temp.older_and_newer(p_role text, p_series text, p_chapter integer, p_page integer,
  p_percentage double precision, p_cleared boolean, p_device text) returns text[]
language sql as $fn$
  select array[
    pg_temp.write_as(p_role, p_series, p_chapter, p_page, p_percentage, p_cleared, p_device, now() - interval '3 days'),
    pg_temp.write_as(p_role, p_series, p_chapter, p_page, p_percentage, p_cleared, p_device, now())]
$fn$;
create function pg_temp.stored() returns text language sql as $fn$
  select string_agg(format('%s %s/%s/%s %s %s', series_id, chapter, page, percentage, cleared, device_id), ', '
                    order by series_id)
    from public.reading_progress where user_id = 'a3500000-0000-4000-8000-000000000035'
$fn$;
create temp table before_writes on commit drop as select pg_temp.stored() as stored;

-- For each write: [older, newer]; the test is that both name the same rule (the newer one's is the table's).
create temp table cases (n serial, description text, answers text[]) on commit drop;
insert into cases (description, answers)
select format('%s, by %s', w.description, r.role),
       pg_temp.older_and_newer(r.role, w.series, w.chapter, w.page, w.percentage, w.cleared, w.device)
  from (values ('authenticated'), (session_user::text)) as r(role),
       (values
         (1, '`cleared: true` with a position and a device id of another format', 's', 3, 0, 0.03::float8, true, 'old phone'),
         (2, 'the same onto a stored reset', 'reset', 3, 0, 0.03::float8, true, 'old phone'),
         (3, '`cleared: true` with a position and a percentage out of range', 's', 0, 0, 2::float8, true, 'old-phone'),
         (4, '`cleared: true` with a chapter and a NULL page', 's', 5, null, 0::float8, true, 'old-phone'),
         (5, 'a page out of range and a device id of another format', 's', 3, -1, 0.03::float8, false, 'old phone'),
         (6, 'a NaN percentage and a device id of another format', 's', 3, 0, 'NaN'::float8, false, 'old phone'),
         (7, 'a chapter out of range and a NULL device id', 's', -1, 0, 0.03::float8, false, null::text)
       ) as w(k, description, series, chapter, page, percentage, cleared, device)
 order by r.role = 'authenticated' desc, w.k;

select is(c.answers[1], c.answers[2], 'older, refused naming what the table names when newer: ' || c.description)
  from cases c order by c.n;
-- The premise that makes the first cases tell the orders apart: newer, the table names the reset's check.
select is((select answers[2] from cases where n = 1), '23514 reading_progress_cleared_is_zero',
  'premise: newer, `cleared: true` with a device id of another format is refused naming the reset''s check');
select is(pg_temp.stored(), (select stored from before_writes), 'no stored row changed');

select * from finish();
rollback;
