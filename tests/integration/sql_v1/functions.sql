-- agent-supervisor: the Postgres / Supabase job store, part 2 of 2: one function per JobStore
-- operation (supervisor/store.py), called by bridge/stores/postgres.py over psycopg and by
-- bridge/stores/supabase.py as `.rpc()` through PostgREST. Apply after schema.sql.
--
-- Each function mirrors supervisor.lifecycle EXACTLY (same legal moves, same columns reset,
-- same event reasons and facts); the contract suite (tests/contract) runs the same tests
-- against these functions and against the Python stores.
--
-- Rules every function keeps:
--  * `returns setof` / `returns table`, never a single composite: PostgREST turns an empty
--    single composite into an object of nulls (PostgREST #3694); setof gives [].
--  * `security invoker` (the default) and `set search_path = ''`: every name is qualified, so
--    an object planted in another schema cannot hijack a call.
--  * Time comes from public._jobs_now() (server time, read once per call), never the client.
--  * Errors use our own SQLSTATEs, mapped back to supervisor.errors by bridge/stores/policy.py:
--      ASN01 job not found, ASL01 lease lost (fencing), ASC01 version conflict,
--      AST01 illegal transition, ASV01 invalid job or change.
--    PostgREST answers them with HTTP 400 (not 5xx), so no client retries them.
--  * Every write RPC is safe to repeat after a lost response: enqueue by request id, claim by
--    claim id, mark_running and finish by (worker, attempt), heartbeat by nature.

-- The store clock. Tests replace this function in their template database to drive time.
create or replace function public._jobs_now() returns timestamptz
language sql stable set search_path = '' as $$ select pg_catalog.now() $$;

-- Functions return at least two columns: PostgREST answers a one-column result as bare
-- scalars, the other stores' rows as objects; two columns keep every answer an object.
create or replace function public.jobs_schema_version() returns table (version integer, product text)
language sql immutable set search_path = '' as $$ select 1, 'agent-supervisor' $$;

create or replace function public._jobs_legal(p_from text, p_to text) returns boolean
language sql immutable set search_path = '' as $$
  select (p_from, p_to) in (
    ('pending', 'preparing'), ('pending', 'cancelled'), ('pending', 'failed'), ('waiting_retry', 'cancelled'),
    ('waiting_retry', 'pending'), ('preparing', 'running'), ('failed', 'pending'), ('cancelled', 'pending'))
    or (p_from in ('preparing', 'running')
        and p_to in ('completed', 'failed', 'cancelled', 'waiting_retry'))
$$;

create or replace function public._jobs_retryable(p_kind text) returns boolean
language sql immutable set search_path = '' as $$
  select p_kind in ('exit_code', 'timeout', 'idle_timeout', 'killed', 'lost', 'lease_lost', 'spawn_error')
$$;

-- Full-jitter exponential backoff, as lifecycle.backoff_delay: uniform in [0, min(cap, base * 2^(n-1))].
create or replace function public._jobs_backoff(p_used integer, p_base double precision,
    p_cap double precision) returns double precision
language sql volatile set search_path = '' as $$
  select case when p_base <= 0 or p_cap <= 0 then 0::double precision
    else pg_catalog.random() * least(p_cap, p_base * 2.0::double precision
         ^ least(greatest(p_used - 1, 0), 60)) end
$$;

create or replace function public._jobs_notify() returns void
language sql volatile set search_path = '' as $$
  -- A wake-up hint for idle supervisors (PostgresStore.changed() listens); identical
  -- notifications within one transaction are delivered once.
  select pg_catalog.pg_notify('agent_supervisor_jobs', '')
$$;

create or replace function public._jobs_event(p_job public.jobs, p_from text, p_reason text,
    p_decided_by text, p_worker text, p_facts jsonb, p_at timestamptz) returns void
language sql volatile set search_path = '' as $$
  insert into public.job_events (job_id, at, from_status, to_status, reason, decided_by, worker, attempt, facts)
  values (p_job.id, p_at, p_from, p_job.status, p_reason, p_decided_by, p_worker, p_job.attempt,
          coalesce(p_facts, '{}'::jsonb))
$$;

create or replace function public._jobs_raise(p_code text, p_message text) returns void
language plpgsql volatile set search_path = '' as $$
begin
  raise exception using errcode = p_code, message = p_message;
end $$;

create or replace function public._jobs_lock(p_id bigint) returns public.jobs
language plpgsql volatile set search_path = '' as $$
declare
  v_job public.jobs;
begin
  select * into v_job from public.jobs where id = p_id for update;
  if not found then
    perform public._jobs_raise('ASN01', pg_catalog.format('no job with id %s', p_id));
  end if;
  return v_job;
end $$;

-- lifecycle.fence: (worker, attempt) must hold the live lease.
create or replace function public._jobs_fence(p_job public.jobs, p_worker text, p_attempt integer)
returns void language plpgsql volatile set search_path = '' as $$
begin
  if p_job.status not in ('preparing', 'running') or p_job.lease_owner is distinct from p_worker
     or p_job.attempt is distinct from p_attempt then
    perform public._jobs_raise('ASL01', pg_catalog.format(
      'job %s: %s attempt %s no longer holds the lease (job is %s, held by %s)', p_job.id, p_worker,
      p_attempt, p_job.status,
      case when p_job.lease_owner is null then 'nobody'
           else p_job.lease_owner || ' attempt ' || p_job.attempt end));
  end if;
end $$;

create or replace function public._jobs_check_move(p_job public.jobs, p_to text) returns void
language plpgsql volatile set search_path = '' as $$
begin
  if not public._jobs_legal(p_job.status, p_to) then
    perform public._jobs_raise('AST01',
      pg_catalog.format('job %s is %s; it cannot become %s', p_job.id, p_job.status, p_to));
  end if;
end $$;

-- Inserts: whoever inserts (enqueue, or a hand-written INSERT), the row starts as a fresh
-- pending job on the store clock and gets its "submitted" event.
create or replace function public._jobs_before_insert() returns trigger
language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
begin
  new.status := 'pending';
  new.created_at := v_now;
  new.updated_at := v_now;
  new.run_after := coalesce(new.run_after, v_now);
  new.attempt := 0;
  new.attempt_offset := 0;
  new.version := 1;
  new.lease_owner := null; new.lease_expires_at := null; new.claim_id := null;
  new.cancel_requested := null; new.pid := null; new.exit_code := null; new.signal := null;
  new.error_kind := null; new.error := null; new.result := null; new.output_tail := null;
  new.progress := null; new.stats := null; new.started_at := null; new.finished_at := null; new.finished_by := null;
  return new;
end $$;

create or replace function public._jobs_after_insert() returns trigger
language plpgsql volatile set search_path = '' as $$
begin
  perform public._jobs_event(new, null, 'submitted', 'user', null, '{}', new.created_at);
  perform public._jobs_notify();
  return null;
end $$;

create or replace trigger jobs_before_insert before insert on public.jobs
  for each row execute function public._jobs_before_insert();
create or replace trigger jobs_after_insert after insert on public.jobs
  for each row execute function public._jobs_after_insert();

-- lifecycle.settle for a locked, live job: the outcome and the retry policy. p_worker null is
-- the reaper (the caller has fenced everyone else).
create or replace function public._jobs_settle(p_job public.jobs, p_outcome jsonb, p_worker text,
    p_now timestamptz, p_backoff_cap_s double precision) returns public.jobs
language plpgsql volatile set search_path = '' as $$
declare
  v_kind text := p_outcome ->> 'error_kind';
  v_error text := p_outcome ->> 'error';
  -- `outcome.error or kind` in Python: an empty message counts as none.
  v_what text := coalesce(nullif(p_outcome ->> 'error', ''), p_outcome ->> 'error_kind');
  v_forgive boolean := coalesce((p_outcome ->> 'forgive')::boolean, false);
  v_offset integer := p_job.attempt_offset + case when v_forgive then 1 else 0 end;
  v_used integer := p_job.attempt - v_offset;
  v_exit integer := (p_outcome ->> 'exit_code')::integer;
  v_signal integer := (p_outcome ->> 'signal')::integer;
  v_facts jsonb := coalesce(nullif(p_outcome -> 'facts', 'null'::jsonb), '{}'::jsonb);
  v_run_after timestamptz := p_job.run_after;
  v_delay double precision := 0;
  v_to text;
  v_reason text;
  v_job public.jobs;
begin
  if p_job.status not in ('preparing', 'running') then
    perform public._jobs_raise('AST01', pg_catalog.format(
      'job %s is %s; there is no attempt to settle', p_job.id, p_job.status));
  end if;
  if v_kind is null then
    v_to := 'completed';
    v_reason := coalesce(nullif(v_error, ''), 'exit code 0');
  elsif v_kind = 'cancelled' then
    v_to := 'cancelled';
    v_reason := coalesce(nullif(v_error, ''), 'cancelled');
  elsif public._jobs_retryable(v_kind) and (v_forgive or v_used < p_job.max_attempts) then
    if not v_forgive then
      v_delay := public._jobs_backoff(v_used, p_job.backoff_s, p_backoff_cap_s);
    end if;
    v_run_after := p_now + pg_catalog.make_interval(secs => v_delay);
    v_to := 'waiting_retry';
    v_reason := pg_catalog.format('%s; retry in %s s (attempt %s of %s used)', v_what,
      pg_catalog.to_char(v_delay, 'FM9999999990.0'), v_used, p_job.max_attempts);
    v_facts := v_facts || pg_catalog.jsonb_build_object(
      'retry_delay_s', round(v_delay::numeric, 3), 'retry_decided_by', 'retry_policy');
  else
    v_to := 'failed';
    v_reason := v_what || '; ' || case when not public._jobs_retryable(v_kind) then 'not retryable'
      else pg_catalog.format('%s of %s attempts used', v_used, p_job.max_attempts) end;
  end if;
  -- facts.setdefault('exit_code' / 'signal'): the outcome's own facts win.
  v_facts := pg_catalog.jsonb_build_object('exit_code', v_exit, 'signal', v_signal) || v_facts;
  perform public._jobs_check_move(p_job, v_to);
  update public.jobs set
    status = v_to, updated_at = p_now, version = version + 1,
    attempt_offset = v_offset, run_after = v_run_after,
    lease_owner = null, lease_expires_at = null, cancel_requested = null,
    exit_code = v_exit, signal = v_signal, error_kind = v_kind, error = v_error,
    result = nullif(p_outcome -> 'result', 'null'::jsonb), output_tail = p_outcome ->> 'output_tail',
    finished_at = p_now, finished_by = coalesce(p_worker, 'reaper')
  where id = p_job.id returning * into v_job;
  perform public._jobs_event(v_job, p_job.status, v_reason,
    coalesce(p_outcome ->> 'decided_by', 'exit'), p_worker, v_facts, p_now);
  perform public._jobs_notify();  -- a settled job may free its concurrency key
  return v_job;
end $$;

-- JobStore.enqueue: p_specs is a JSON array of job specs (validated by the client, re-checked
-- by the table's constraints). Returns the ids in spec order. All or nothing.
create or replace function public.jobs_enqueue(p_specs jsonb, p_request_id uuid default null)
returns table (job_id bigint, created boolean) language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
  v_ids bigint[] := '{}';
  v_new boolean[] := '{}';
  v_created boolean;
  v_staged jsonb := '{}';
  v_spec jsonb;
  v_key text;
  v_id bigint;
  v_answer jsonb;
begin
  if p_request_id is not null then
    select response into v_answer from public.job_requests where id = p_request_id;
    if found then
      return query select e::bigint, false from pg_catalog.jsonb_array_elements_text(v_answer)
        with ordinality as a(e, n) order by n;
      return;
    end if;
  end if;
  if pg_catalog.jsonb_typeof(p_specs) is distinct from 'array' then
    perform public._jobs_raise('ASV01', 'p_specs must be a JSON array of job specs');
  end if;
  -- Serialise submits of the same dedup keys (in a fixed order: no deadlock between batches).
  perform pg_catalog.pg_advisory_xact_lock(1246973, pg_catalog.hashtext(k))
    from (select distinct s ->> 'dedup_key' as k from pg_catalog.jsonb_array_elements(p_specs) s
          where s ->> 'dedup_key' is not null order by 1) keys;
  for v_spec in select s from pg_catalog.jsonb_array_elements(p_specs) with ordinality as a(s, n) order by n
  loop
    v_key := v_spec ->> 'dedup_key';
    v_id := null;
    v_created := false;
    if v_key is not null then
      v_id := (v_staged ->> v_key)::bigint;
      if v_id is null then
        select id into v_id from public.jobs
          where dedup_key = v_key and status in ('pending', 'waiting_retry') order by id limit 1;
      end if;
    end if;
    if v_id is null then
      insert into public.jobs (kind, command, payload, priority, concurrency_key, dedup_key,
          max_attempts, backoff_s, timeout_s, idle_timeout_s, stuck_after_s, queue_timeout_s, run_after)
      values (v_spec ->> 'kind',
          case when pg_catalog.jsonb_typeof(v_spec -> 'command') = 'array' then
            array(select pg_catalog.jsonb_array_elements_text(v_spec -> 'command')) end,
          nullif(v_spec -> 'payload', 'null'::jsonb),
          coalesce((v_spec ->> 'priority')::integer, 0), v_spec ->> 'concurrency_key', v_key,
          coalesce((v_spec ->> 'max_attempts')::integer, 3),
          coalesce((v_spec ->> 'backoff_s')::double precision, 10),
          (v_spec ->> 'timeout_s')::double precision, (v_spec ->> 'idle_timeout_s')::double precision,
          (v_spec ->> 'stuck_after_s')::double precision, (v_spec ->> 'queue_timeout_s')::double precision,
          v_now)
      returning id into v_id;
      v_created := true;
      if v_key is not null then
        v_staged := v_staged || pg_catalog.jsonb_build_object(v_key, v_id);
      end if;
    end if;
    v_ids := v_ids || v_id;
    v_new := v_new || v_created;
  end loop;
  if p_request_id is not null then
    delete from public.job_requests where created_at < v_now - interval '1 day';
    insert into public.job_requests (id, response, created_at)
      values (p_request_id, pg_catalog.to_jsonb(v_ids), v_now);
  end if;
  return query select u.id, u.created from unnest(v_ids, v_new) with ordinality
    as u(id, created, n) order by u.n;
end $$;

-- JobStore.claim: promote due retries, then take up to p_limit pending jobs in claim order,
-- skipping keys held by live jobs and taking at most one job per key. SKIP LOCKED: concurrent
-- claims never wait for each other and never return the same job.
create or replace function public.jobs_claim(p_worker text, p_claim_id uuid, p_limit integer,
    p_lease_s double precision, p_kinds text[] default null, p_exclude_kinds text[] default null)
returns setof public.jobs language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
  v_seen text[] := '{}';
  v_taken integer := 0;
  v_job public.jobs;
  r record;
begin
  if p_claim_id is not null then  -- a replay of a claim whose answer was lost
    return query select * from public.jobs j where j.claim_id = p_claim_id
      and j.lease_owner = p_worker and j.status in ('preparing', 'running')
      order by j.priority desc, j.created_at, j.id;
    if found then
      return;
    end if;
  end if;
  for v_job in
    update public.jobs j set status = 'pending', updated_at = v_now, version = j.version + 1
    where j.id in (select w.id from public.jobs w where w.status = 'waiting_retry'
                   and w.run_after <= v_now order by w.id for update skip locked)
    returning j.*
  loop
    perform public._jobs_event(v_job, 'waiting_retry', 'backoff over', 'retry_policy', null, '{}', v_now);
  end loop;
  if p_limit <= 0 or (p_kinds is not null and cardinality(p_kinds) = 0) then
    return;
  end if;
  for r in
    select c.id, c.concurrency_key from public.jobs c
    where c.status = 'pending' and c.run_after <= v_now
      and (p_kinds is null or c.kind = any (p_kinds))
      and (c.kind is null or not (c.kind = any (coalesce(p_exclude_kinds, '{}'))))
    order by c.priority desc, c.created_at, c.id
  loop
    if r.concurrency_key is not null then
      -- Only the first pending job of a key (in claim order) is a candidate, and only when
      -- no live job holds the key. The advisory lock serialises claimers per key; the check
      -- after it is a fresh statement, so it sees every claim committed before the lock.
      continue when r.concurrency_key = any (v_seen);
      v_seen := v_seen || r.concurrency_key;
      continue when not pg_catalog.pg_try_advisory_xact_lock(1246974, pg_catalog.hashtext(r.concurrency_key));
      continue when exists (select 1 from public.jobs l where l.concurrency_key = r.concurrency_key
                            and l.status in ('preparing', 'running'));
    end if;
    select * into v_job from public.jobs j where j.id = r.id and j.status = 'pending'
      for update skip locked;
    continue when not found;
    update public.jobs j set
      status = 'preparing', updated_at = v_now, version = j.version + 1, attempt = j.attempt + 1,
      lease_owner = p_worker, lease_expires_at = v_now + pg_catalog.make_interval(secs => p_lease_s),
      claim_id = p_claim_id, cancel_requested = null, pid = null, exit_code = null, signal = null,
      error_kind = null, error = null, result = null, output_tail = null, progress = null,
      stats = null, started_at = null, finished_at = null
    where j.id = r.id returning j.* into v_job;
    perform public._jobs_event(v_job, 'pending', 'claimed', 'scheduler', p_worker, '{}', v_now);
    return next v_job;
    v_taken := v_taken + 1;
    exit when v_taken >= p_limit;
  end loop;
end $$;

-- JobStore.mark_running: preparing -> running, fenced. Repeating the call that already
-- succeeded (same worker, attempt and pid) returns the row instead of failing.
create or replace function public.jobs_mark_running(p_id bigint, p_worker text, p_attempt integer,
    p_pid integer, p_facts jsonb default null)
returns setof public.jobs language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
  v_job public.jobs := public._jobs_lock(p_id);
  v_new public.jobs;
begin
  if v_job.status = 'running' and v_job.lease_owner = p_worker and v_job.attempt = p_attempt
     and v_job.pid = p_pid then
    return next v_job;
    return;
  end if;
  perform public._jobs_fence(v_job, p_worker, p_attempt);
  perform public._jobs_check_move(v_job, 'running');
  update public.jobs set status = 'running', updated_at = v_now, version = version + 1,
    pid = p_pid, started_at = v_now
  where id = p_id returning * into v_new;
  perform public._jobs_event(v_new, v_job.status, pg_catalog.format('agent started (pid %s)', p_pid),
    'spawn', p_worker, pg_catalog.jsonb_build_object('pid', p_pid)
      || coalesce(nullif(p_facts, 'null'::jsonb), '{}'::jsonb), v_now);
  return next v_new;
end $$;

-- JobStore.heartbeat: every beat of a worker in one call (p_progress and p_stats are JSON
-- arrays aligned with p_ids; null keeps the last value). Renews each lease still held; no
-- event, and version stays, so a heartbeat never invalidates anyone's optimistic update.
create or replace function public.jobs_heartbeat(p_worker text, p_ids bigint[], p_attempts integer[],
    p_progress jsonb, p_stats jsonb, p_lease_s double precision)
returns table (job_id bigint, cancel_requested text, lease_lost boolean)
language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
begin
  return query
  with beats as (
    select b.id, b.attempt, b.n,
           nullif(p_progress -> (b.n::integer - 1), 'null'::jsonb) as progress,
           nullif(p_stats -> (b.n::integer - 1), 'null'::jsonb) as stats
    from unnest(p_ids, p_attempts) with ordinality as b(id, attempt, n)
  ), renewed as (
    update public.jobs j set
      lease_expires_at = v_now + pg_catalog.make_interval(secs => p_lease_s),
      progress = coalesce(beats.progress, j.progress),
      stats = coalesce(beats.stats, j.stats)
    from beats
    where j.id = beats.id and j.attempt = beats.attempt and j.lease_owner = p_worker
      and j.status in ('preparing', 'running')
    returning j.id, j.attempt, j.cancel_requested
  )
  select b.id, r.cancel_requested, r.id is null
  from beats b left join renewed r on r.id = b.id and r.attempt = b.attempt
  order by b.n;
end $$;

-- JobStore.finish: record an attempt's outcome, fenced by (worker, attempt); a repeat by the
-- attempt that already settled the job returns it unchanged (lifecycle.is_replayed_finish).
create or replace function public.jobs_finish(p_id bigint, p_worker text, p_attempt integer,
    p_outcome jsonb, p_backoff_cap_s double precision default 3600)
returns setof public.jobs language plpgsql volatile set search_path = '' as $$
declare
  v_job public.jobs := public._jobs_lock(p_id);
begin
  if v_job.attempt = p_attempt and v_job.finished_by = p_worker
     and v_job.status in ('completed', 'failed', 'cancelled', 'waiting_retry') then
    return next v_job;
    return;
  end if;
  perform public._jobs_fence(v_job, p_worker, p_attempt);
  return next public._jobs_settle(v_job, p_outcome, p_worker, public._jobs_now(), p_backoff_cap_s);
end $$;

-- JobStore.update: optimistic update of the editable fields (values validated by the client
-- as lifecycle.apply_update does; the table's constraints re-check them).
create or replace function public.jobs_update(p_id bigint, p_expected_version bigint, p_changes jsonb)
returns setof public.jobs language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
  v_job public.jobs := public._jobs_lock(p_id);
  v_bad text;
  v_new public.jobs;
begin
  if v_job.version <> p_expected_version then
    perform public._jobs_raise('ASC01', pg_catalog.format('job %s is at version %s, not %s',
      p_id, v_job.version, p_expected_version));
  end if;
  select k into v_bad from pg_catalog.jsonb_object_keys(p_changes) k
    where k not in ('priority', 'max_attempts', 'timeout_s', 'idle_timeout_s', 'backoff_s', 'stuck_after_s',
                    'queue_timeout_s')
    order by k limit 1;
  if v_bad is not null then
    perform public._jobs_raise('ASV01', pg_catalog.format('field %L cannot be updated', v_bad));
  end if;
  update public.jobs j set
    priority = case when p_changes ? 'priority' then (p_changes ->> 'priority')::integer else j.priority end,
    max_attempts = case when p_changes ? 'max_attempts'
                        then (p_changes ->> 'max_attempts')::integer else j.max_attempts end,
    backoff_s = case when p_changes ? 'backoff_s'
                     then (p_changes ->> 'backoff_s')::double precision else j.backoff_s end,
    timeout_s = case when p_changes ? 'timeout_s'
                     then (p_changes ->> 'timeout_s')::double precision else j.timeout_s end,
    idle_timeout_s = case when p_changes ? 'idle_timeout_s'
                          then (p_changes ->> 'idle_timeout_s')::double precision else j.idle_timeout_s end,
    stuck_after_s = case when p_changes ? 'stuck_after_s'
                         then (p_changes ->> 'stuck_after_s')::double precision else j.stuck_after_s end,
    queue_timeout_s = case when p_changes ? 'queue_timeout_s'
                           then (p_changes ->> 'queue_timeout_s')::double precision else j.queue_timeout_s end,
    version = j.version + 1, updated_at = v_now
  where j.id = p_id returning j.* into v_new;
  perform public._jobs_event(v_new, v_job.status, 'updated ' || (select pg_catalog.string_agg(k, ', ' order by k)
    from pg_catalog.jsonb_object_keys(p_changes) k), 'user', null, p_changes, v_now);
  return next v_new;
end $$;

-- JobStore.reap_stale: settle as `lost` every live job whose lease expired more than p_grace_s
-- ago on the SERVER clock (lifecycle.reap), then fail the pending jobs that waited past their
-- queue_timeout_s (lifecycle.expire). Any supervisor (or pg_cron) may call it.
create or replace function public.jobs_reap_stale(p_grace_s double precision,
    p_backoff_cap_s double precision default 3600)
returns setof public.jobs language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
  v_job public.jobs;
  v_new public.jobs;
  v_holder text;
  v_error text;
begin
  for v_job in
    select * from public.jobs j where j.status in ('preparing', 'running')
      and j.lease_expires_at + pg_catalog.make_interval(secs => p_grace_s) < v_now
    order by j.id for update skip locked
  loop
    v_holder := coalesce(v_job.lease_owner, '?');
    return next public._jobs_settle(v_job, pg_catalog.jsonb_build_object(
      'error_kind', 'lost',
      'error', pg_catalog.format('lease of %s expired; its supervisor stopped heartbeating', v_holder),
      'decided_by', 'reaper',
      'facts', pg_catalog.jsonb_build_object('lease_owner', v_holder,
               'lease_expires_at', extract(epoch from v_job.lease_expires_at))),
      null, v_now, p_backoff_cap_s);
  end loop;
  for v_job in
    select * from public.jobs j where j.status = 'pending' and j.queue_timeout_s is not null
      and extract(epoch from v_now - j.run_after) > j.queue_timeout_s
    order by j.id for update skip locked
  loop
    -- Python formats the wait with :.0f and the timeout with :g; float8::text is the same
    -- for every timeout a person writes (60, 0.5, 3600).
    v_error := pg_catalog.format('waited %s s in the queue, past its queue timeout of %s s',
      round(extract(epoch from v_now - v_job.run_after)), v_job.queue_timeout_s::text);
    perform public._jobs_check_move(v_job, 'failed');
    update public.jobs set status = 'failed', updated_at = v_now, version = version + 1,
      error_kind = 'queue_timeout', error = v_error, finished_at = v_now, finished_by = 'reaper'
    where id = v_job.id returning * into v_new;
    perform public._jobs_event(v_new, 'pending', v_error || '; not retryable', 'reaper', null, '{}', v_now);
    return next v_new;
  end loop;
end $$;

-- lifecycle.request_cancel on a locked job (shared by request_cancel and purge).
create or replace function public._jobs_cancel(p_job public.jobs, p_mode text, p_now timestamptz)
returns public.jobs language plpgsql volatile set search_path = '' as $$
declare
  v_mode text := p_mode;
  v_new public.jobs;
begin
  if p_job.status in ('pending', 'waiting_retry') then
    perform public._jobs_check_move(p_job, 'cancelled');
    update public.jobs set status = 'cancelled', updated_at = p_now, version = version + 1,
      cancel_requested = null, error_kind = 'cancelled', error = 'cancelled before it ran',
      finished_at = p_now
    where id = p_job.id returning * into v_new;
    perform public._jobs_event(v_new, p_job.status, v_mode || ' requested before it ran', 'user',
      null, '{}', p_now);
  elsif p_job.status in ('preparing', 'running') then
    if p_job.cancel_requested = 'kill' then
      v_mode := 'kill';  -- a kill request is never softened by a later cancel
    end if;
    update public.jobs set cancel_requested = v_mode, updated_at = p_now, version = version + 1
    where id = p_job.id returning * into v_new;
    perform public._jobs_event(v_new, p_job.status, v_mode || ' requested', 'user', null, '{}', p_now);
  else
    perform public._jobs_raise('AST01', pg_catalog.format(
      'job %s is already %s; nothing to cancel', p_job.id, p_job.status));
  end if;
  perform public._jobs_notify();
  return v_new;
end $$;

create or replace function public.jobs_request_cancel(p_id bigint, p_mode text default 'cancel')
returns setof public.jobs language plpgsql volatile set search_path = '' as $$
begin
  if p_mode not in ('cancel', 'kill') then
    perform public._jobs_raise('ASV01', pg_catalog.format('unknown cancel mode %L', p_mode));
  end if;
  return next public._jobs_cancel(public._jobs_lock(p_id), p_mode, public._jobs_now());
end $$;

-- JobStore.retry: lifecycle.manual_retry (failed | cancelled -> pending, budget given back).
create or replace function public.jobs_retry(p_id bigint)
returns setof public.jobs language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
  v_job public.jobs := public._jobs_lock(p_id);
  v_new public.jobs;
begin
  perform public._jobs_check_move(v_job, 'pending');
  update public.jobs set status = 'pending', updated_at = v_now, version = version + 1,
    attempt_offset = attempt, run_after = v_now, cancel_requested = null, error_kind = null,
    error = null, finished_at = null
  where id = p_id returning * into v_new;
  perform public._jobs_event(v_new, v_job.status, 'manual retry', 'user', null, '{}', v_now);
  perform public._jobs_notify();
  return next v_new;
end $$;

create or replace function public.jobs_get(p_id bigint) returns setof public.jobs
language sql stable set search_path = '' as $$
  select * from public.jobs where id = p_id
$$;

create or replace function public.jobs_list(p_statuses text[] default null, p_lease_owner text default null,
    p_limit integer default null) returns setof public.jobs
language sql stable set search_path = '' as $$
  select * from public.jobs j
  where (p_statuses is null or j.status = any (p_statuses))
    and (p_lease_owner is null or j.lease_owner = p_lease_owner)
  order by j.id desc
  limit case when p_limit is not null then greatest(p_limit, 0) end  -- limit null: no limit
$$;

-- JobStore.counts: one row per status (so the server time comes back even when empty).
create or replace function public.jobs_counts()
returns table (status text, jobs bigint, oldest_started_at timestamptz, oldest_created_at timestamptz,
    now timestamptz)
language sql stable set search_path = '' as $$
  with c as (
    select j.status, count(*) as n, min(coalesce(j.started_at, j.updated_at)) as started,
           min(j.created_at) as created
    from public.jobs j group by j.status)
  select s.status, coalesce(c.n, 0), c.started, c.created, public._jobs_now()
  from pg_catalog.unnest(array['pending', 'preparing', 'running', 'waiting_retry', 'completed',
                               'failed', 'cancelled']) as s(status)
  left join c on c.status = s.status
$$;

-- JobStore.purge: delete terminal jobs (and their events); a pending or waiting_retry job is
-- cancelled, then deleted; a live one gets a cancel request (once) and stays.
create or replace function public.jobs_purge(p_ids bigint[] default null, p_statuses text[] default null,
    p_older_than_s double precision default null)
returns table (job_id bigint, deleted boolean) language plpgsql volatile set search_path = '' as $$
declare
  v_now timestamptz := public._jobs_now();
  v_missing bigint;
  v_job public.jobs;
begin
  if p_ids is not null then
    select i into v_missing from pg_catalog.unnest(p_ids) with ordinality as u(i, n)
      where not exists (select 1 from public.jobs j where j.id = u.i) order by u.n limit 1;
    if found then
      perform public._jobs_raise('ASN01', pg_catalog.format('no job with id %s', v_missing));
    end if;
  end if;
  for v_job in
    select * from public.jobs j
    where (p_ids is null or j.id = any (p_ids))
      and (p_statuses is null or j.status = any (p_statuses))
      and (p_older_than_s is null
           or j.updated_at <= v_now - pg_catalog.make_interval(secs => p_older_than_s))
    order by j.id for update
  loop
    if v_job.status in ('preparing', 'running') then
      if v_job.cancel_requested is null then
        perform public._jobs_cancel(v_job, 'cancel', v_now);
      end if;
      job_id := v_job.id; deleted := false;
    else
      delete from public.jobs where id = v_job.id;  -- on delete cascade: its events go too
      job_id := v_job.id; deleted := true;
    end if;
    return next;
  end loop;
  perform public._jobs_notify();
end $$;

create or replace function public.jobs_events(p_id bigint) returns setof public.job_events
language plpgsql stable set search_path = '' as $$
begin
  if not exists (select 1 from public.jobs where id = p_id) then
    perform public._jobs_raise('ASN01', pg_catalog.format('no job with id %s', p_id));
  end if;
  return query select * from public.job_events e where e.job_id = p_id order by e.seq;
end $$;

create or replace function public.jobs_now() returns table (now timestamptz, schema_version integer)
language sql stable set search_path = '' as $$ select public._jobs_now(), 1 $$;

-- Privileges: EXECUTE for service_role only. Functions are granted to PUBLIC on creation, and
-- on Supabase to anon and authenticated too (default privileges): revoke all three.
do $$
declare
  f regprocedure;
  r text;
begin
  for f in select p.oid::regprocedure from pg_catalog.pg_proc p
           where p.pronamespace = 'public'::regnamespace and p.proname = any (array[
             '_jobs_now', '_jobs_legal', '_jobs_retryable', '_jobs_backoff', '_jobs_notify',
             '_jobs_event', '_jobs_raise', '_jobs_lock', '_jobs_fence', '_jobs_check_move',
             '_jobs_before_insert', '_jobs_after_insert', '_jobs_settle', '_jobs_cancel',
             'jobs_schema_version', 'jobs_enqueue', 'jobs_claim', 'jobs_mark_running',
             'jobs_heartbeat', 'jobs_finish', 'jobs_update', 'jobs_reap_stale',
             'jobs_request_cancel', 'jobs_retry', 'jobs_get', 'jobs_list', 'jobs_counts',
             'jobs_purge', 'jobs_events', 'jobs_now'])
  loop
    execute pg_catalog.format('revoke all on function %s from public', f);
    foreach r in array array['anon', 'authenticated'] loop
      if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
        execute pg_catalog.format('revoke all on function %s from %I', f, r);
      end if;
    end loop;
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
      execute pg_catalog.format('grant execute on function %s to service_role', f);
    end if;
  end loop;
end $$;
