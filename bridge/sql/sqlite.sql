-- agent-supervisor: the embedded SQLite job store (bridge/stores/sqlite.py), schema version 2.
--
-- Idempotent: every statement is "if not exists", so any number of supervisors may open the
-- same file at once. The store sets PRAGMA user_version = 2 in the same transaction; a version 1
-- file first gets the columns version 2 added (bridge/stores/sqlite_db.py, _migrate).
-- Status changes are NOT decided here: the store runs supervisor.lifecycle in Python and
-- writes the resulting row, so this file holds data and indexes only, never transition rules.
--
-- Times are REAL seconds since the epoch on the store's clock; payload, result, progress and
-- command are JSON text; statuses and kinds are the StrEnum values of supervisor.lifecycle.
-- Partial indexes spell their WHERE exactly as the store's queries do: SQLite uses a partial
-- index only when the query's terms imply the index's (https://sqlite.org/partialindex.html).

create table if not exists jobs (
    -- AUTOINCREMENT: an id is never reused after a purge, because logs, the state file and
    -- users' notes refer to jobs by id.
    id integer primary key autoincrement,
    status text not null check (status in
        ('pending', 'preparing', 'running', 'waiting_retry', 'completed', 'failed', 'cancelled')),
    created_at real not null,
    updated_at real not null,
    kind text,
    command text,               -- JSON array of strings, or NULL
    payload text,               -- JSON
    priority integer not null default 0,
    concurrency_key text,
    dedup_key text,
    attempt integer not null default 0,
    max_attempts integer not null,
    attempt_offset integer not null default 0,
    backoff_s real not null,
    timeout_s real,
    idle_timeout_s real,
    stuck_after_s real,
    queue_timeout_s real,
    run_after real not null default 0,
    lease_owner text,
    lease_expires_at real,
    cancel_requested text check (cancel_requested in ('cancel', 'kill')),
    pid integer,
    exit_code integer,
    signal integer,
    error_kind text,
    error text,
    result text,                -- JSON
    output_tail text,
    progress text,              -- JSON
    stats text,                 -- JSON
    started_at real,
    finished_at real,
    finished_by text,
    repo text,                  -- the repository source as submitted (schema version 2)
    ref text,
    unique_key text,            -- at most one job per key, whatever its status
    last_activity_at real,
    version integer not null default 1
);

-- The claim path: pending jobs in claim order (priority desc, oldest first, then id).
create index if not exists jobs_claim
    on jobs (status, priority desc, created_at, id) where status = 'pending';

-- Keys held by live jobs: the per-key rule of claim. (Promotion of due retries and reap_stale
-- find their few rows through jobs_status_id below.)
create index if not exists jobs_live_key
    on jobs (concurrency_key) where status in ('preparing', 'running');

-- Reconciliation asks for the jobs leased to one worker.
create index if not exists jobs_lease_owner
    on jobs (lease_owner) where lease_owner is not null;

-- Idempotent submit: find a pending or waiting_retry job with the same dedup_key.
create index if not exists jobs_dedup
    on jobs (dedup_key) where dedup_key is not null;

-- Listing newest first by status, and counts by status (covering). The unfiltered listing
-- walks the rowid (= id) backwards and needs no index of its own.
create index if not exists jobs_status_id
    on jobs (status, id desc);

create table if not exists job_events (
    seq integer primary key,
    job_id integer not null references jobs (id) on delete cascade,
    at real not null,
    from_status text,
    to_status text not null,
    reason text not null,
    decided_by text not null,
    worker text,
    attempt integer not null default 0,
    facts text not null default '{}'  -- JSON object
);

create index if not exists job_events_job on job_events (job_id, seq);

-- Schema version 2 ------------------------------------------------------------------------

-- Listing by kind, key, creation or finish time, newest first, at any history size.
create index if not exists jobs_kind_id on jobs (kind, id desc);
create index if not exists jobs_key_id on jobs (concurrency_key, id desc) where concurrency_key is not null;
create index if not exists jobs_created on jobs (created_at);
create index if not exists jobs_finished on jobs (finished_at) where finished_at is not null;

-- When waiting jobs become claimable (delayed jobs, retries in backoff): next_due.
create index if not exists jobs_due on jobs (run_after) where status in ('pending', 'waiting_retry');

-- unique_key: at most one job per key, in any status (recurring schedules key each slot).
create unique index if not exists jobs_unique_key on jobs (unique_key) where unique_key is not null;

-- What never changes about this store: its identity (a random id made with the schema), so a
-- data dir notices when its store was replaced or emptied.
create table if not exists store_meta (
    name text primary key,
    value text not null
);

-- Jobs per status, kept by the triggers below in the same transaction as each change: counts()
-- (health) reads seven rows instead of counting a history of a million jobs.
create table if not exists job_counts (
    status text primary key,
    n integer not null default 0
);

create trigger if not exists jobs_count_insert after insert on jobs begin
    insert into job_counts (status, n) values (new.status, 1)
        on conflict (status) do update set n = n + 1;
end;

create trigger if not exists jobs_count_delete after delete on jobs begin
    update job_counts set n = n - 1 where status = old.status;
end;

create trigger if not exists jobs_count_update after update of status on jobs
when old.status is not new.status begin
    update job_counts set n = n - 1 where status = old.status;
    insert into job_counts (status, n) values (new.status, 1)
        on conflict (status) do update set n = n + 1;
end;

-- Rows that could not be read (damaged bytes, a value this version cannot decode): moved here
-- with every column's raw bytes (hex) and their events, so the rest of the queue keeps running.
create table if not exists jobs_quarantine (
    id integer primary key,
    at real not null,
    reason text not null,
    row text not null           -- JSON: column -> hex of its raw value; "events" -> their rows
);
