-- agent-supervisor: server-side housekeeping with pg_cron (optional; Supabase: Database →
-- Extensions → pg_cron, or `create extension pg_cron`). Apply after schema.sql and
-- functions.sql, in the database where pg_cron lives (on Supabase: `postgres`). Idempotent:
-- cron.schedule replaces a job of the same name.
--
-- * Every 30 seconds, settle the jobs whose lease expired 30 s ago (their supervisor stopped
--   heartbeating) and fail those past their queue timeout, on the server's clock. Supervisors
--   can then stop reaping themselves (setting reap_s = 0).
-- * Every night, delete finished jobs (completed, failed, cancelled) older than 14 days, with
--   their events. Supervisors delete their local files of a job on their own retention.
--
-- Each procedure works in pages of 500 and commits after each, so no transaction grows with
-- the backlog and no lock is held for long. Change the numbers here, or schedule your own.

create or replace procedure public.jobs_cron_reap(p_grace_s double precision default 30)
language plpgsql as $$
declare
  v_more boolean;
begin
  loop
    select r.more into v_more from public.jobs_reap_stale(p_grace_s, 3600, 500) r;
    commit;
    exit when not coalesce(v_more, false);
  end loop;
end $$;

create or replace procedure public.jobs_cron_retention(p_older_than_s double precision default 1209600)
language plpgsql as $$
declare
  v_more boolean;
begin
  loop
    select p.more into v_more from public.jobs_purge(
      p_statuses => array['completed', 'failed', 'cancelled'], p_older_than_s => p_older_than_s,
      p_limit => 500) p;
    commit;
    exit when not coalesce(v_more, false);
  end loop;
end $$;

revoke all on procedure public.jobs_cron_reap(double precision), public.jobs_cron_retention(double precision)
  from public;

-- '30 seconds' needs pg_cron 1.5 or newer (Supabase has it); on an older pg_cron use '* * * * *'.
select cron.schedule('agent-supervisor-reap', '30 seconds', 'call public.jobs_cron_reap(30)');
select cron.schedule('agent-supervisor-retention', '17 3 * * *', 'call public.jobs_cron_retention(1209600)');
