-- A new life of a row must begin strictly after the life deleted before it: devices order versions
-- by created_at first and only then by the last-write-wins key (shared/realtime/progressMerge.ts), so
-- a new life with the deleted one's created_at is taken for that life, and dropped as stale where its
-- key is older. Migration 013's check (reading_progress_new_life_after_deletion, AFTER INSERT)
-- refused an INSERT whose created_at lay BELOW the deletion remembered once it was in, and let an
-- equal one through. Equal happens: while the clock lies behind the last remembered deletion (it
-- stepped back), the stamp trigger dates every new life 1 us after that deletion's life, so two
-- concurrent inserts of the series get the same created_at; when the one that went in first is
-- deleted while the other waits for it, the other went in with the deleted life's created_at
-- (tests/functions/progress_api.test.ts). Two wall-clock readings in one microsecond do the same.
-- Now an equal created_at is refused too, with the same 40001 (serialization failure) for a retry:
-- the retry's stamp reads that deletion and begins 1 us after it. Nothing else changes (an INSERT
-- whose stamp already saw the deletion is dated after it, never equal).
-- Idempotent (CREATE OR REPLACE keeps the trigger and the grants; the revoke is repeated).

create or replace function private.reading_progress_new_life_after_deletion() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if exists (select 1 from public.reading_progress_deletions d
              where d.user_id = new.user_id and d.series_id = new.series_id
                and (d.version ->> 'created_at')::timestamptz >= new.created_at) then
    raise exception using
      errcode = '40001',
      message = 'reading_progress: the series was deleted while this insert waited; retry it',
      hint = 'Retry the write: it will start a life after the deleted one.';
  end if;
  return null;
end;
$$;
revoke all on function private.reading_progress_new_life_after_deletion() from public, anon, authenticated;
