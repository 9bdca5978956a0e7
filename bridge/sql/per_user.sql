-- agent-supervisor: per-user mode for a Supabase project shared by several signed-in users.
-- Optional; apply after schema.sql and functions.sql (`agent-supervisor db apply --per-user`,
-- or `db migration DIR --per-user`). Idempotent. Needs Supabase's `auth` schema.
--
-- Without it only the secret key (service_role) can use the store. With it, a user's own
-- session (the publishable key as apikey, the user's access token as Bearer) can too, and sees,
-- claims and changes ONLY that user's jobs: Row Level Security on every table the functions
-- touch, keyed on jobs.owner_id (set from the token's `sub` claim when a job is inserted). The
-- functions are SECURITY INVOKER, so they run under these policies. Concurrency and dedup keys
-- are per owner (schema.sql, functions.sql): one user's running job never holds another's key.
-- The service role still sees everything (BYPASSRLS), so a shared supervisor keeps working.

update public.job_store_meta set per_user = true where id = 1;

grant select, insert, update, delete on table public.jobs, public.job_events, public.job_requests
  to authenticated;
grant select on table public.job_store_meta to authenticated;
grant select, insert, update on table public.job_counts to authenticated;
grant usage, select on sequence public.jobs_id_seq, public.job_events_seq_seq to authenticated;

-- `(select auth.uid())` is evaluated once per statement, not per row (Supabase's RLS
-- performance advice). FOR UPDATE SKIP LOCKED under RLS needs SELECT and UPDATE: `for all`.
drop policy if exists agent_supervisor_own_jobs on public.jobs;
create policy agent_supervisor_own_jobs on public.jobs for all to authenticated
  using (owner_id = (select auth.uid())) with check (owner_id = (select auth.uid()));
drop policy if exists agent_supervisor_own_events on public.job_events;
create policy agent_supervisor_own_events on public.job_events for all to authenticated
  using (owner_id = (select auth.uid())) with check (owner_id = (select auth.uid()));
drop policy if exists agent_supervisor_own_requests on public.job_requests;
create policy agent_supervisor_own_requests on public.job_requests for all to authenticated
  using (owner_id = (select auth.uid())) with check (owner_id = (select auth.uid()));
drop policy if exists agent_supervisor_own_counts on public.job_counts;
create policy agent_supervisor_own_counts on public.job_counts for all to authenticated
  using (owner_key = (select auth.uid())::text) with check (owner_key = (select auth.uid())::text);
drop policy if exists agent_supervisor_meta on public.job_store_meta;
create policy agent_supervisor_meta on public.job_store_meta for select to authenticated using (true);

-- The functions: EXECUTE for authenticated too (functions.sql re-grants it on every apply while
-- job_store_meta.per_user is on).
do $$
declare
  f regprocedure;
begin
  for f in select p.oid::regprocedure from pg_catalog.pg_proc p
           where p.pronamespace = 'public'::regnamespace
             and (p.proname like 'jobs\_%' or p.proname like '\_jobs\_%')
  loop
    execute pg_catalog.format('grant execute on function %s to authenticated', f);
  end loop;
end $$;

-- Realtime wake-ups (functions.sql, _jobs_broadcast): a user's supervisor joins the private
-- topic agent_supervisor:<its user id> and may read only that one; a user's writes may send to
-- it and to the shared topic `agent_supervisor` that service-role supervisors join (Supabase
-- "Realtime Authorization": policies on realtime.messages, realtime.topic() is the topic).
do $$
begin
  if pg_catalog.to_regclass('realtime.messages') is not null then
    execute 'drop policy if exists agent_supervisor_receive on realtime.messages';
    execute $p$create policy agent_supervisor_receive on realtime.messages for select to authenticated
      using (extension = 'broadcast'
             and (select realtime.topic()) = 'agent_supervisor:' || (select auth.uid())::text)$p$;
    execute 'drop policy if exists agent_supervisor_send on realtime.messages';
    execute $p$create policy agent_supervisor_send on realtime.messages for insert to authenticated
      with check (extension = 'broadcast'
                  and topic in ('agent_supervisor', 'agent_supervisor:' || (select auth.uid())::text))$p$;
  end if;
end $$;
