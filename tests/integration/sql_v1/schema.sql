-- agent-supervisor: the Postgres / Supabase job store, part 1 of 2: tables, indexes, privileges.
-- Apply this file, then functions.sql, in one transaction (`agent-supervisor db apply --dsn …`,
-- or paste both into the Supabase SQL editor). Both are idempotent: re-applying them to a
-- database that already has them changes nothing but the function bodies. Needs PostgreSQL 14+.
--
-- The columns mirror supervisor.lifecycle.Job; times are timestamptz on the SERVER's clock
-- (never a client's), JSON values are jsonb, the command is text[]. Status changes are made by
-- the functions of functions.sql, which mirror supervisor.lifecycle exactly; the CHECK
-- constraints below re-check the basics for rows written by hand (an INSERT from anywhere is a
-- supported way to enqueue: the insert trigger of functions.sql makes it a proper pending job).
--
-- Security model (Supabase): Row Level Security is on with NO policies, and every privilege of
-- the API roles `anon` and `authenticated` is revoked explicitly: Supabase's default privileges
-- grant both roles everything created in `public`, so `revoke ... from public` alone would
-- leave them in. Only `service_role` (the secret key, BYPASSRLS) and the owner can read or
-- write jobs. The supervisor holds the secret key; never ship that key to a browser.
-- Alternative for a project shared by several users: give jobs an `owner_id uuid not null
-- default auth.uid()` column, grant the tables and functions to `authenticated`, and add RLS
-- policies `using (owner_id = auth.uid())` for select AND update (FOR UPDATE SKIP LOCKED under
-- RLS needs both); the functions are SECURITY INVOKER, so they then see only the caller's jobs.
-- On plain Postgres, connect as the owner of these tables or as a BYPASSRLS role.

create table if not exists public.jobs (
    -- Never reused after a purge: logs, state files and people refer to jobs by id.
    id bigint generated always as identity primary key,
    status text not null default 'pending' check (status in
        ('pending', 'preparing', 'running', 'waiting_retry', 'completed', 'failed', 'cancelled')),
    -- created_at, updated_at and run_after are set by the insert trigger from the store clock.
    created_at timestamptz not null,
    updated_at timestamptz not null,
    kind text check (kind is null or char_length(kind) between 1 and 200),
    command text[] check (command is null or (cardinality(command) >= 1 and command[1] <> '')),
    payload jsonb,
    priority integer not null default 0,
    concurrency_key text check (concurrency_key is null or char_length(concurrency_key) between 1 and 200),
    dedup_key text check (dedup_key is null or char_length(dedup_key) between 1 and 200),
    attempt integer not null default 0 check (attempt >= 0),
    max_attempts integer not null default 3 check (max_attempts between 1 and 1000),
    attempt_offset integer not null default 0 check (attempt_offset between 0 and attempt),
    backoff_s double precision not null default 10 check (backoff_s between 0 and 604800),
    timeout_s double precision check (timeout_s > 0 and timeout_s <= 31536000),
    idle_timeout_s double precision check (idle_timeout_s > 0 and idle_timeout_s <= 31536000),
    stuck_after_s double precision check (stuck_after_s > 0 and stuck_after_s <= 31536000),
    queue_timeout_s double precision check (queue_timeout_s > 0 and queue_timeout_s <= 31536000),
    run_after timestamptz not null,
    lease_owner text,
    lease_expires_at timestamptz,
    -- The client-generated id of the claim that took the current lease: a claim retried after
    -- its response was lost returns the jobs it already took instead of taking more.
    claim_id uuid,
    cancel_requested text check (cancel_requested in ('cancel', 'kill')),
    pid integer,
    exit_code integer,
    signal integer,
    error_kind text check (error_kind in ('exit_code', 'timeout', 'idle_timeout', 'killed', 'lost',
        'lease_lost', 'queue_timeout', 'spawn_error', 'cancelled', 'invalid', 'resource_limit')),
    error text,
    result jsonb,
    output_tail text,
    progress jsonb,
    stats jsonb,  -- resource use of the running attempt's process tree, from heartbeats
    started_at timestamptz,
    finished_at timestamptz,
    -- Who settled the last attempt (a worker id, or 'reaper'): a replayed finish is recognised.
    finished_by text,
    version bigint not null default 1,
    constraint jobs_kind_xor_command check ((kind is null) <> (command is null)),
    constraint jobs_live_has_lease check (status not in ('preparing', 'running')
        or (lease_owner is not null and lease_expires_at is not null))
);

-- The claim path: pending jobs in claim order (priority desc, oldest first, then id).
create index if not exists jobs_claim_order
    on public.jobs (priority desc, created_at, id) where status = 'pending';
-- Due retries are promoted by claim; expired leases are found by reap_stale.
create index if not exists jobs_retry_due on public.jobs (run_after) where status = 'waiting_retry';
create index if not exists jobs_lease_expiry
    on public.jobs (lease_expires_at) where status in ('preparing', 'running');
-- The per-key rule: at most one live job per concurrency key, enforced by the database itself
-- (claim never tries to break it; this index makes a bug fail loudly instead of running twice).
create unique index if not exists jobs_one_live_per_key
    on public.jobs (concurrency_key) where status in ('preparing', 'running');
create index if not exists jobs_lease_owner on public.jobs (lease_owner) where lease_owner is not null;
create index if not exists jobs_claim_id on public.jobs (claim_id) where claim_id is not null;
create index if not exists jobs_dedup on public.jobs (dedup_key)
    where dedup_key is not null and status in ('pending', 'waiting_retry');
create index if not exists jobs_status_id on public.jobs (status, id desc);

create table if not exists public.job_events (
    seq bigint generated always as identity primary key,
    job_id bigint not null references public.jobs (id) on delete cascade,
    at timestamptz not null,
    from_status text,
    to_status text not null,
    reason text not null,
    decided_by text not null,
    worker text,
    attempt integer not null default 0,
    facts jsonb not null default '{}'
);
create index if not exists job_events_job on public.job_events (job_id, seq);

-- Answers of enqueue calls by request id, so that a submit retried after its response was lost
-- returns the same ids instead of inserting the batch twice. Kept for a day.
create table if not exists public.job_requests (
    id uuid primary key,
    response jsonb not null,
    created_at timestamptz not null
);
create index if not exists job_requests_created on public.job_requests (created_at);

alter table public.jobs enable row level security;
alter table public.job_events enable row level security;
alter table public.job_requests enable row level security;

revoke all on table public.jobs, public.job_events, public.job_requests from public;
revoke all on sequence public.jobs_id_seq, public.job_events_seq_seq from public;

-- The API roles exist on Supabase only; on plain Postgres there is nobody to revoke or grant.
do $$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated'] loop
    if exists (select 1 from pg_catalog.pg_roles where rolname = r) then
      execute format('revoke all on table public.jobs, public.job_events, public.job_requests from %I', r);
      execute format('revoke all on sequence public.jobs_id_seq, public.job_events_seq_seq from %I', r);
    end if;
  end loop;
  if exists (select 1 from pg_catalog.pg_roles where rolname = 'service_role') then
    grant select, insert, update, delete on table public.jobs, public.job_events, public.job_requests
      to service_role;
    grant usage, select on sequence public.jobs_id_seq, public.job_events_seq_seq to service_role;
  end if;
end $$;
