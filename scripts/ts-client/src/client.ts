/**
 * A typed client for `agent-supervisor bridge`: JSON-RPC 2.0 over the stdio of one long-lived
 * child process, one JSON message per line (bridge/jsonrpc/PROTOCOL.md).
 *
 * Copy this one file into a plugin (Obsidian, VS Code, Electron; Node >= 18). It has no runtime
 * dependencies beyond Node's own `child_process`. What it does:
 *
 * - spawns the bridge and matches responses to requests by id (with a per-request timeout);
 * - delivers notifications (`job.changed`, `health.alert`, `bridge.mode`) to listeners;
 * - restarts the bridge when it exits unexpectedly (backoff 250 ms doubling to 10 s), renews
 *   the subscription, and rejects the requests that were in flight with `BridgeExitedError`
 *   (they are not resent: `submit` is not idempotent unless the spec has a `dedup_key`);
 * - `close()` ends stdin, which the bridge takes as a graceful shutdown.
 *
 * @example
 * const client = new BridgeClient({ env: { ...process.env } });
 * await client.subscribe(["job.changed"]);
 * client.onJobChanged((c) => console.log(`job ${c.id}: ${c.from} -> ${c.to}`));
 * const { id } = await client.submit({ kind: "summarize", payload: { note: "Inbox.md" } });
 * const job = await client.waitForJob(id);
 * await client.close();
 */

import { spawn, type ChildProcess } from "node:child_process";

export type JobStatus =
  | "pending"
  | "preparing"
  | "running"
  | "waiting_retry"
  | "completed"
  | "failed"
  | "cancelled";

export const TERMINAL: ReadonlySet<JobStatus> = new Set<JobStatus>(["completed", "failed", "cancelled"]);

/** A job spec: the same object as one line of `agent-supervisor submit --batch`. */
export interface JobSpec {
  kind?: string | null;
  command?: string[] | null;
  payload?: unknown;
  priority?: number;
  concurrency_key?: string | null;
  key?: string | null;
  dedup_key?: string | null;
  max_attempts?: number;
  backoff_s?: number;
  timeout_s?: number | null;
  idle_timeout_s?: number | null;
  stuck_after_s?: number | null;
  queue_timeout_s?: number | null;
  /** At most one running job per repository (instead of a concurrency_key). */
  repo?: string | null;
  owner?: string | null;
}

/** One job, as `agent-supervisor show --json`. Times are ISO 8601 strings in UTC. */
export interface Job {
  id: number;
  kind: string | null;
  command: string[] | null;
  status: JobStatus;
  priority: number;
  concurrency_key: string | null;
  dedup_key: string | null;
  attempt: number;
  attempts_used: number;
  max_attempts: number;
  backoff_s: number;
  timeout_s: number | null;
  idle_timeout_s: number | null;
  stuck_after_s: number | null;
  pid: number | null;
  exit_code: number | null;
  signal: number | null;
  error_kind: string | null;
  error: string | null;
  result: unknown;
  output_tail: string | null;
  progress: unknown;
  payload: unknown;
  cancel_requested: "cancel" | "kill" | null;
  lease_owner: string | null;
  lease_expires_at: string | null;
  run_after: string | null;
  created_at: string | null;
  started_at: string | null;
  finished_at: string | null;
  updated_at: string | null;
  version: number;
}

export interface JobEvent {
  at: string;
  from: JobStatus | null;
  to: JobStatus;
  reason: string;
  decided_by: string;
  worker: string | null;
  attempt: number;
  facts: Record<string, unknown>;
}

export interface JobWithEvents extends Job {
  events: JobEvent[];
}

export interface Alert {
  kind: string;
  message: string;
  job_id: number | null;
}

/** As `agent-supervisor health --json`. */
export interface Health {
  running: number;
  pending: number;
  waiting_retry: number;
  completed: number;
  failed: number;
  cancelled: number;
  max_concurrent: number;
  running_here: number;
  utilization: number;
  oldest_running_age_s: number | null;
  oldest_pending_age_s: number | null;
  worker_id: string | null;
  outbox_depth: number;
  alerts: Alert[];
}

export interface LogPage {
  data: string;
  offset: number;
  next_offset: number;
  eof: boolean;
  size: number;
  attempt: number;
}

export type BridgeModeName = "run" | "no_run" | "locked";
export type EventName = "job.changed" | "health.alert" | "bridge.mode";

export interface JobChanged {
  id: number;
  from: JobStatus | null;
  to: JobStatus;
  reason: string;
  attempt: number;
  progress: unknown;
}

export interface BridgeMode {
  mode: BridgeModeName;
  worker_id: string | null;
  message: string;
}

export interface SubscribeResult {
  events: EventName[];
  mode: BridgeModeName;
  worker_id: string | null;
}

export interface ReconcileResult {
  ran: boolean;
  message: string;
  decisions: { job_id: number; attempt: number; action: string; why: string }[];
}

/** The bridge's error codes (bridge/jsonrpc/PROTOCOL.md). */
export const ErrorCode = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  SupervisorError: -32000,
  NotFound: -32001,
  IllegalTransition: -32002,
  StoreError: -32003,
  Conflict: -32004,
  InvalidJob: -32005,
  DataDirLocked: -32006,
} as const;

/** The bridge answered with a JSON-RPC error. `data.field` names a bad param (-32602). */
export class BridgeError extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly data?: { field?: string; reason?: string; retryable?: boolean; [key: string]: unknown },
  ) {
    super(message);
    this.name = "BridgeError";
  }
}

/** The bridge process exited (or could not start) before answering. */
export class BridgeExitedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BridgeExitedError";
  }
}

export class BridgeTimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BridgeTimeoutError";
  }
}

export interface BridgeClientOptions {
  /** The program to run (default `agent-supervisor`); e.g. a venv's python. */
  command?: string;
  /** Its arguments (default `["bridge"]`; with python: `["-m", "bridge", "bridge"]`). */
  args?: string[];
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  /** Per-request timeout in ms (default 30,000; 0 for none). */
  requestTimeoutMs?: number;
  /** Restart the bridge when it exits unexpectedly (default true). */
  reconnect?: boolean;
  /** First restart delay in ms (default 250), doubled per failed start up to `maxReconnectDelayMs`. */
  reconnectDelayMs?: number;
  maxReconnectDelayMs?: number;
  /** Each line the bridge logs on stderr (default: kept only for error messages). */
  onStderr?: (line: string) => void;
}

interface Pending {
  method: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  timer?: NodeJS.Timeout;
}

type Listener<T> = (value: T) => void;

interface Response {
  id?: number | string | null;
  result?: unknown;
  error?: { code: number; message: string; data?: BridgeError["data"] };
  method?: string;
  params?: unknown;
}

export class BridgeClient {
  private child: ChildProcess | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private buffer = "";
  private closing = false;
  private subscribed = new Set<EventName>();
  private delay: number;
  private restartTimer: NodeJS.Timeout | null = null;
  private waitingForChild: (() => void)[] = [];
  private stderrTail: string[] = [];
  private readonly listeners = {
    "job.changed": new Set<Listener<JobChanged>>(),
    "health.alert": new Set<Listener<Alert>>(),
    "bridge.mode": new Set<Listener<BridgeMode>>(),
    exit: new Set<Listener<{ code: number | null; signal: string | null }>>(),
    reconnect: new Set<Listener<{ pid: number | undefined }>>(),
  };
  private readonly options: Required<Omit<BridgeClientOptions, "env" | "cwd" | "onStderr">> &
    Pick<BridgeClientOptions, "env" | "cwd" | "onStderr">;

  constructor(options: BridgeClientOptions = {}) {
    this.options = {
      command: "agent-supervisor",
      args: ["bridge"],
      requestTimeoutMs: 30_000,
      reconnect: true,
      reconnectDelayMs: 250,
      maxReconnectDelayMs: 10_000,
      ...options,
    };
    this.delay = this.options.reconnectDelayMs;
    this.spawnChild();
  }

  /** The bridge's pid (undefined while it restarts). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  // -- the methods ------------------------------------------------------------------------
  submit(spec: JobSpec): Promise<{ id: number }> {
    return this.request("submit", spec);
  }
  get(id: number): Promise<JobWithEvents> {
    return this.request("get", { id });
  }
  list(params: { status?: JobStatus | JobStatus[]; limit?: number; offset?: number } = {}): Promise<Job[]> {
    return this.request("list", params);
  }
  cancel(id: number): Promise<Job> {
    return this.request("cancel", { id });
  }
  kill(id: number): Promise<Job> {
    return this.request("kill", { id });
  }
  retry(id: number): Promise<Job> {
    return this.request("retry", { id });
  }
  purge(params: {
    ids?: number[];
    status?: JobStatus | JobStatus[];
    older_than_s?: number;
  }): Promise<{ deleted: number[]; cancel_requested: number[] }> {
    return this.request("purge", params);
  }
  health(): Promise<Health> {
    return this.request("health");
  }
  /** A page of an attempt's output; without `offset`, the last `limit` bytes. */
  logs(params: { id: number; attempt?: number; offset?: number; limit?: number }): Promise<LogPage> {
    return this.request("logs", params);
  }
  reconcile(): Promise<ReconcileResult> {
    return this.request("reconcile");
  }
  /** Start notifications; renewed automatically after a restart of the bridge. */
  async subscribe(events: EventName[] = ["job.changed", "health.alert", "bridge.mode"]): Promise<SubscribeResult> {
    const result = await this.request<SubscribeResult>("subscribe", { events });
    for (const e of events) this.subscribed.add(e);
    return result;
  }
  /** Stop notifications (default: all); answers the events still subscribed. */
  async unsubscribe(events: EventName[] = ["job.changed", "health.alert", "bridge.mode"]): Promise<SubscribeResult> {
    for (const e of events) this.subscribed.delete(e);
    return this.request<SubscribeResult>("unsubscribe", { events });
  }

  onJobChanged(listener: Listener<JobChanged>): () => void {
    return this.listen("job.changed", listener);
  }
  onHealthAlert(listener: Listener<Alert>): () => void {
    return this.listen("health.alert", listener);
  }
  onModeChanged(listener: Listener<BridgeMode>): () => void {
    return this.listen("bridge.mode", listener);
  }
  onExit(listener: Listener<{ code: number | null; signal: string | null }>): () => void {
    return this.listen("exit", listener);
  }
  onReconnect(listener: Listener<{ pid: number | undefined }>): () => void {
    return this.listen("reconnect", listener);
  }

  /**
   * Resolve with the job once its status is one of `statuses` (default: finished). Listens
   * first, then asks once, so a job that finished before the call is not missed. Needs a
   * `job.changed` subscription.
   */
  waitForJob(
    id: number,
    { statuses = TERMINAL, timeoutMs = 0 }: { statuses?: ReadonlySet<JobStatus>; timeoutMs?: number } = {},
  ): Promise<Job> {
    return new Promise<Job>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const finish = (error: Error | null, job?: Job): void => {
        stop();
        if (timer) clearTimeout(timer);
        if (error) reject(error);
        else resolve(job as Job);
      };
      const check = (): void => {
        this.get(id).then(
          (job) => statuses.has(job.status) && finish(null, job),
          (error: Error) => finish(error),
        );
      };
      const stop = this.onJobChanged((change) => {
        if (change.id === id && statuses.has(change.to)) check();
      });
      if (timeoutMs > 0) {
        timer = setTimeout(() => finish(new BridgeTimeoutError(`job ${id} not done after ${timeoutMs} ms`)), timeoutMs);
      }
      check();
    });
  }

  /** Send a request and await its result; rejects with `BridgeError`, `BridgeExitedError` or
   * `BridgeTimeoutError`. */
  async request<T = unknown>(method: string, params?: object, timeoutMs = this.options.requestTimeoutMs): Promise<T> {
    if (this.closing) throw new BridgeExitedError("the client is closed");
    const child = await this.connected();
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const entry: Pending = { method, resolve: resolve as (value: unknown) => void, reject };
      if (timeoutMs > 0) {
        entry.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new BridgeTimeoutError(`${method}: no answer after ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.pending.set(id, entry);
      this.write(child, { jsonrpc: "2.0", id, method, ...(params === undefined ? {} : { params }) });
    });
  }

  /** Send a notification (a request without id: no answer, errors are only logged). */
  async notify(method: string, params?: object): Promise<void> {
    this.write(await this.connected(), { jsonrpc: "2.0", method, ...(params === undefined ? {} : { params }) });
  }

  /**
   * Stop: end stdin (the bridge drains or leaves its agents per its orphan policy, then exits),
   * wait up to `timeoutMs` for the exit, then SIGKILL. Pending requests are rejected.
   */
  async close({ timeoutMs = 30_000 }: { timeoutMs?: number } = {}): Promise<void> {
    this.closing = true;
    if (this.restartTimer) clearTimeout(this.restartTimer);
    for (const wake of this.waitingForChild.splice(0)) wake();
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    child.stdin?.end();
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    await exited;
    clearTimeout(timer);
  }

  // -- the process ------------------------------------------------------------------------
  private listen<K extends keyof BridgeClient["listeners"]>(
    name: K,
    listener: BridgeClient["listeners"][K] extends Set<infer L> ? L : never,
  ): () => void {
    const set = this.listeners[name] as Set<typeof listener>;
    set.add(listener);
    return () => set.delete(listener);
  }

  private emit<K extends keyof BridgeClient["listeners"]>(name: K, value: unknown): void {
    for (const listener of this.listeners[name] as Set<Listener<unknown>>) {
      try {
        listener(value);
      } catch (error) {
        // A listener's bug must not break the client's stream handling.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  private connected(): Promise<ChildProcess> {
    const child = this.child;
    if (child) return Promise.resolve(child);
    return new Promise<ChildProcess>((resolve, reject) => {
      this.waitingForChild.push(() =>
        this.child ? resolve(this.child) : reject(new BridgeExitedError("the client is closed")),
      );
    });
  }

  private spawnChild(): void {
    const child = spawn(this.options.command, this.options.args, {
      env: this.options.env,
      cwd: this.options.cwd,
      stdio: ["pipe", "pipe", "pipe"],
    });
    this.child = child;
    this.buffer = "";
    child.stdout?.setEncoding("utf8"); // decodes characters split across chunks correctly
    child.stdout?.on("data", (chunk: string) => this.onData(chunk));
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => this.onStderr(chunk));
    child.stdin?.on("error", () => undefined); // EPIPE when it died: the exit handler reports
    let gone = false;
    const onGone = (code: number | null, signal: string | null, error?: Error): void => {
      if (gone) return;
      gone = true;
      this.onChildGone(child, code, signal, error);
    };
    child.once("error", (error) => onGone(null, null, error));
    child.once("exit", (code, signal) => onGone(code, signal));
    for (const wake of this.waitingForChild.splice(0)) wake();
  }

  private onChildGone(child: ChildProcess, code: number | null, signal: string | null, error?: Error): void {
    if (this.child !== child) return;
    this.child = null;
    const why = error
      ? `could not start ${this.options.command}: ${error.message}`
      : `bridge exited (${signal ?? `code ${code}`})${this.stderrTail.length ? `: ${this.stderrTail[this.stderrTail.length - 1]}` : ""}`;
    for (const [id, entry] of this.pending) {
      if (entry.timer) clearTimeout(entry.timer);
      this.pending.delete(id);
      entry.reject(new BridgeExitedError(`${entry.method}: ${why}`));
    }
    this.emit("exit", { code, signal });
    if (this.closing || !this.options.reconnect) {
      for (const wake of this.waitingForChild.splice(0)) wake();
      return;
    }
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, this.options.maxReconnectDelayMs);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.closing) return;
      this.spawnChild();
      void this.resubscribe();
    }, delay);
  }

  private async resubscribe(): Promise<void> {
    try {
      if (this.subscribed.size) await this.request("subscribe", { events: [...this.subscribed] });
      else await this.request("health");
      this.delay = this.options.reconnectDelayMs; // it answers: the next failure starts over
      this.emit("reconnect", { pid: this.child?.pid });
    } catch {
      // It died again; onChildGone has scheduled the next attempt.
    }
  }

  private write(child: ChildProcess, message: object): void {
    child.stdin?.write(JSON.stringify(message) + "\n");
  }

  private onStderr(chunk: string): void {
    for (const line of chunk.split("\n")) {
      if (!line) continue;
      this.stderrTail = [...this.stderrTail.slice(-19), line];
      this.options.onStderr?.(line);
    }
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    let newline: number;
    while ((newline = this.buffer.indexOf("\n")) >= 0) {
      const line = this.buffer.slice(0, newline);
      this.buffer = this.buffer.slice(newline + 1);
      if (line.trim()) this.onLine(line);
    }
  }

  private onLine(line: string): void {
    let message: Response | Response[];
    try {
      message = JSON.parse(line) as Response | Response[];
    } catch {
      this.onStderr(`(not JSON on stdout) ${line.slice(0, 200)}`);
      return;
    }
    for (const m of Array.isArray(message) ? message : [message]) {
      if (m.method !== undefined && m.id === undefined) {
        if (m.method in this.listeners) this.emit(m.method as EventName, m.params);
        continue;
      }
      const entry = typeof m.id === "number" ? this.pending.get(m.id) : undefined;
      if (!entry) continue; // timed out already, or an error about a line we cannot match
      this.pending.delete(m.id as number);
      if (entry.timer) clearTimeout(entry.timer);
      if (m.error) entry.reject(new BridgeError(m.error.code, m.error.message, m.error.data));
      else entry.resolve(m.result);
    }
  }
}
