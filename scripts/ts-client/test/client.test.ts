// The TypeScript client against the REAL bridge: `python -m bridge bridge` from this repository,
// on a fresh data dir per test. Run by ../run-tests.sh (npm ci, tsc, node --test).

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { test, type TestContext } from "node:test";
import { fileURLToPath } from "node:url";

import {
  BridgeClient,
  BridgeError,
  BridgeExitedError,
  ErrorCode,
  type BridgeClientOptions,
  type JobChanged,
} from "../src/client.js";

// dist/test/client.test.js → the repository root, four levels up.
const REPO = resolve(fileURLToPath(import.meta.url), "../../../../..");
const PYTHON = process.env.PYTHON ?? "python3";
const SLEEPER = [PYTHON, "-c", "import time; time.sleep(60)"];

function startBridge(t: TestContext, options: BridgeClientOptions = {}): BridgeClient {
  const dataDir = mkdtempSync(join(tmpdir(), "bridge-client-"));
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("AGENT_SUPERVISOR_")) env[k] = v;
  Object.assign(env, {
    PYTHONPATH: REPO,
    AGENT_SUPERVISOR_DATA_DIR: dataDir,
    AGENT_SUPERVISOR_CONFIG: join(dataDir, "missing-config.toml"),
    // Fast stops, and a cancel seen within a second (the early heartbeat can skip one).
    AGENT_SUPERVISOR_HEARTBEAT_S: "1",
    AGENT_SUPERVISOR_DRAIN_TIMEOUT_S: "0.2",
    AGENT_SUPERVISOR_STOP_GRACE_S: "0.5",
    AGENT_SUPERVISOR_ORPHAN_POLICY: "kill",
  });
  const client = new BridgeClient({
    command: PYTHON,
    args: ["-m", "bridge", "bridge"],
    cwd: REPO,
    env,
    requestTimeoutMs: 15_000,
    ...options,
  });
  t.after(async () => {
    await client.close({ timeoutMs: 15_000 });
    rmSync(dataDir, { recursive: true, force: true });
  });
  return client;
}

/** The first job.changed matching `predicate`, or a rejection after `timeoutMs`. */
function nextChange(client: BridgeClient, predicate: (c: JobChanged) => boolean, timeoutMs = 15_000): Promise<JobChanged> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`no matching job.changed within ${timeoutMs} ms`));
    }, timeoutMs);
    const stop = client.onJobChanged((change) => {
      if (!predicate(change)) return;
      clearTimeout(timer);
      stop();
      resolve(change);
    });
  });
}

function once<T>(subscribe: (listener: (value: T) => void) => () => void, timeoutMs: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`${what}: nothing within ${timeoutMs} ms`));
    }, timeoutMs);
    const stop = subscribe((value) => {
      clearTimeout(timer);
      stop();
      resolve(value);
    });
  });
}

test("submit a job and receive its job.changed notifications to completed", { timeout: 60_000 }, async (t) => {
  const client = startBridge(t);
  const seen: JobChanged[] = [];
  client.onJobChanged((change) => seen.push(change));
  assert.equal((await client.subscribe(["job.changed"])).mode, "run");
  const { id } = await client.submit({ command: ["sh", "-c", "echo hello from the agent"] });
  const job = await client.waitForJob(id, { timeoutMs: 15_000 });
  assert.equal(job.status, "completed");
  assert.equal(job.exit_code, 0);
  assert.deepEqual(
    seen.filter((c) => c.id === id).map((c) => c.to),
    ["preparing", "running", "completed"],
  );
  assert.equal((await client.logs({ id })).data, "hello from the agent\n");
  const listed = await client.list({ status: "completed" });
  assert.deepEqual(listed.map((j) => j.id), [id]);
});

test("unsubscribe stops job.changed notifications", { timeout: 60_000 }, async (t) => {
  const client = startBridge(t);
  const seen: JobChanged[] = [];
  client.onJobChanged((change) => seen.push(change));
  await client.subscribe();
  assert.deepEqual((await client.unsubscribe(["job.changed"])).events, ["bridge.mode", "health.alert"]);
  const { id } = await client.submit({ command: ["sh", "-c", "echo quiet"] });
  const deadline = Date.now() + 15_000; // waitForJob needs job.changed: ask instead
  while ((await client.get(id)).status !== "completed") {
    assert.ok(Date.now() < deadline, `job ${id} not completed within 15 s`);
    await new Promise((r) => setTimeout(r, 50));
  }
  // preparing and running were sent long before the job completed, had they been sent at all
  assert.deepEqual(seen.filter((c) => c.id === id), []);
});

test("cancel a running job while another keeps running", { timeout: 60_000 }, async (t) => {
  const client = startBridge(t);
  await client.subscribe(["job.changed"]);
  const keep = await client.submit({ command: SLEEPER });
  const victimRunning = nextChange(client, (c) => c.to === "running" && c.id !== keep.id);
  const victim = await client.submit({ command: SLEEPER });
  await victimRunning;
  const cancelled = nextChange(client, (c) => c.id === victim.id && c.to === "cancelled");
  const answer = await client.cancel(victim.id);
  assert.equal(answer.cancel_requested, "cancel");
  await cancelled;
  assert.equal((await client.get(keep.id)).status, "running");
  const events = (await client.get(victim.id)).events.map((e) => e.to);
  assert.equal(events.at(-1), "cancelled");
});

test("errors carry the documented codes and name the bad field", { timeout: 60_000 }, async (t) => {
  const client = startBridge(t, { args: ["-m", "bridge", "bridge", "--no-run"] });
  await assert.rejects(client.get(999), (e: unknown) => e instanceof BridgeError && e.code === ErrorCode.NotFound);
  await assert.rejects(
    client.list({ limit: 0 }),
    (e: unknown) => e instanceof BridgeError && e.code === ErrorCode.InvalidParams && e.data?.field === "limit",
  );
  await assert.rejects(
    client.submit({ kind: "nope" }),
    (e: unknown) => e instanceof BridgeError && e.code === ErrorCode.InvalidJob,
  );
  await assert.rejects(
    client.request("frobnicate"),
    (e: unknown) => e instanceof BridgeError && e.code === ErrorCode.MethodNotFound,
  );
  assert.equal((await client.health()).pending, 0);
});

test("reconnects after the bridge dies: in-flight requests fail, the subscription is renewed", { timeout: 60_000 }, async (t) => {
  const client = startBridge(t, { reconnectDelayMs: 50 });
  await client.subscribe(["job.changed"]);
  const firstPid = client.pid;
  assert.ok(firstPid);
  const exited = once(client.onExit.bind(client), 10_000, "exit");
  const reconnected = once(client.onReconnect.bind(client), 15_000, "reconnect");
  // Stopped first, so the request below is surely in flight when the bridge dies.
  process.kill(firstPid, "SIGSTOP");
  const inFlight = client.health();
  process.kill(firstPid, "SIGKILL");
  await assert.rejects(inFlight, BridgeExitedError);
  assert.equal((await exited).signal, "SIGKILL");
  const { pid } = await reconnected;
  assert.ok(pid && pid !== firstPid);
  // The new bridge got our subscription back: a new job's changes reach us.
  const { id } = await client.submit({ command: ["true"] });
  assert.equal((await client.waitForJob(id, { timeoutMs: 15_000 })).status, "completed");
});

test("close ends the bridge gracefully and later requests are refused", { timeout: 60_000 }, async (t) => {
  const client = startBridge(t);
  const exited = once(client.onExit.bind(client), 15_000, "exit");
  await client.health();
  await client.close();
  assert.deepEqual(await exited, { code: 0, signal: null });
  await assert.rejects(client.health(), BridgeExitedError);
});
