// agent-supervisor dashboard. No framework, nothing from the network: the page reads the JSON
// API of the server that sent it and follows its event stream (/api/events).
//
// Every value from the store (payloads, logs, errors, kinds) reaches the page as text nodes,
// never as HTML: a job's payload may come from anyone who can write to a shared store.
"use strict";

const PAGE_SIZE = 50;
const LOG_KEEP = 512 * 1024; // characters of log kept on the page; older text is dropped
const LOG_FOLLOW_MS = 1000;
const CHART_EVERY_MS = 15000;
const CHART_MIN_GAP_MS = 3000;
const LIVE = new Set(["preparing", "running"]);
const CANCELLABLE = new Set(["pending", "waiting_retry", "preparing", "running"]);
const RETRYABLE = new Set(["failed", "cancelled"]);
const CONFIRM = {
  cancel: (id) => `Cancel job ${id}? A running agent gets SIGTERM, then SIGKILL after the grace period.`,
  kill: (id) => `Kill job ${id}? A running agent gets SIGKILL at once.`,
  retry: (id) => `Run job ${id} again, with a fresh attempt budget?`,
  purge: (id) => `Delete job ${id}, its events and its logs? A running job is cancelled first.`,
};

const $ = (id) => document.getElementById(id);
const state = {
  info: null,
  health: null,
  jobsVersion: null,
  jobs: [],
  hasMore: false,
  job: null, // the job shown, as /api/jobs/{id} answered
  log: { jobId: null, attempt: null, offset: null, live: false },
  pendingAction: null,
  chart: null,
  chartAt: 0,
};

// -- small helpers ------------------------------------------------------------------------
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function seconds(iso) {
  return iso ? Date.parse(iso) / 1000 : null;
}

function span(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.max(0, s);
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function bytes(n) {
  if (n === null || n === undefined) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(0)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function compact(value, max) {
  if (value === null || value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

function pretty(value) {
  if (value === null || value === undefined) return "—";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

// Progress is whatever JSON an agent wrote; these are the shapes worth drawing as a bar.
function progressParts(p) {
  if (p === null || p === undefined) return null;
  if (typeof p === "number") return { fraction: p <= 1 ? p : p / 100, text: p <= 1 ? `${Math.round(p * 100)}%` : `${p}%` };
  if (typeof p === "object" && !Array.isArray(p)) {
    const done = p.done ?? p.current ?? p.step ?? p.completed;
    const text = p.message ?? p.stage ?? p.status;
    if (typeof done === "number" && typeof p.total === "number" && p.total > 0) {
      return { fraction: done / p.total, text: `${done} of ${p.total}${text ? ` · ${text}` : ""}` };
    }
    if (typeof p.percent === "number") return { fraction: p.percent / 100, text: `${p.percent}%${text ? ` · ${text}` : ""}` };
    if (typeof text === "string") return { fraction: null, text };
  }
  return { fraction: null, text: compact(p, 40) };
}

function progressNode(p, final) {
  const parts = progressParts(p);
  if (!parts) return "";
  const node = el("span", { title: JSON.stringify(p) });
  if (parts.fraction !== null && isFinite(parts.fraction)) {
    const bar = el("span", { class: "progress" }, el("span"));
    bar.firstChild.style.width = `${Math.max(0, Math.min(1, parts.fraction)) * 100}%`;
    node.append(bar);
  }
  node.append(parts.text + (final ? " (final)" : ""));
  return node;
}

function badge(status) {
  return el("span", { class: `badge status-${status}`, text: status.replace("_", " ") });
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" }, ...options });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401 || response.status === 403) {
    showBanner("This page's token is not accepted (was the dashboard restarted?): open the URL it printed.");
  }
  if (!response.ok) throw new ApiError(response.status, (body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

// A refresh that is asked for again while it runs runs once more afterwards, never twice at once.
function coalesced(fn) {
  let running = false;
  let again = false;
  return async function run() {
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      do {
        again = false;
        try {
          await fn();
        } catch (err) {
          console.warn(err);
        }
      } while (again);
    } finally {
      running = false;
    }
  };
}

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text;
  banner.hidden = !text;
}

// -- the URL's hash holds the view: filters, page, the job shown ----------------------------
function view() {
  const params = new URLSearchParams(location.hash.slice(1));
  return {
    statuses: params.getAll("status"),
    kind: params.get("kind") || "",
    repo: params.get("repo") || "",
    age: params.get("age") || "",
    offset: Math.max(0, parseInt(params.get("offset") || "0", 10) || 0),
    job: parseInt(params.get("job") || "", 10) || null,
  };
}

function setView(changes) {
  const v = { ...view(), ...changes };
  const params = new URLSearchParams();
  for (const s of v.statuses) params.append("status", s);
  if (v.kind) params.set("kind", v.kind);
  if (v.repo) params.set("repo", v.repo);
  if (v.age) params.set("age", v.age);
  if (v.offset) params.set("offset", String(v.offset));
  if (v.job) params.set("job", String(v.job));
  location.hash = params.toString();
}

function filtered(v) {
  return Boolean(v.kind || v.repo || v.age);
}

// -- queue panel ----------------------------------------------------------------------------
const STORE_DOWN = "The store does not answer";

function renderHealth(health, error) {
  state.health = health;
  // Health needs no store: while the store is away it still tells what this machine knows,
  // with its counts null and a store_unreachable alert.
  const unreachable = health && health.alerts.find((a) => a.kind === "store_unreachable");
  if (!health || unreachable || error) {
    showBanner(`${STORE_DOWN}: ${unreachable ? unreachable.message : error || "unknown error"}`);
  } else if ($("banner").textContent.startsWith(STORE_DOWN)) {
    showBanner("");
  }
  if (!health) return;
  for (const key of ["pending", "running", "waiting_retry", "completed", "failed", "cancelled"]) {
    const count = health[key];
    document.querySelector(`[data-testid="count-${key}"]`).textContent = count === null ? "–" : String(count);
  }
  const admission = health.admission || {};
  const adm = $("admission");
  adm.textContent = health.supervisor_running ? admission.state || "open" : "no supervisor";
  adm.className = `badge ${health.supervisor_running ? admission.state || "open" : "blocked"}`;
  $("admission-reason").textContent = admission.reason || "";
  $("utilization").textContent =
    `${health.running_here} of ${health.max_concurrent} slots here (${Math.round(health.utilization * 100)}%)` +
    (health.recommended_concurrency ? ` · this machine sustains ~${health.recommended_concurrency}` : "");
  $("utilization-bar").style.width = `${Math.round(health.utilization * 100)}%`;
  $("outbox").textContent = health.outbox_depth ? `${plural(health.outbox_depth, "outcome")} waiting for the store` : "empty";
  $("worker").textContent = health.worker_id ? `worker ${health.worker_id}` : "";

  const alerts = $("alerts");
  alerts.replaceChildren(
    ...(health.alerts.length
      ? health.alerts.map((a) => {
          const item = el("li", { class: `alert ${a.level || "warning"}`, "data-kind": a.kind }, el("strong", { text: a.kind }), " ", a.message);
          if (a.job_id) item.append(" ", el("a", { href: `#job=${a.job_id}`, text: "show" }));
          return item;
        })
      : [el("li", { class: "muted", text: "no alerts" })])
  );

  const agents = $("agents");
  agents.replaceChildren(
    ...(health.agents.length
      ? health.agents.map((a) =>
          el(
            "tr",
            {},
            el("td", {}, el("a", { href: `#job=${a.job_id}`, text: String(a.job_id) })),
            el("td", { text: a.kind || "command" }),
            el("td", {}, progressNode(a.progress, false)),
            el("td", { class: "num", text: a.started_at ? span(Date.now() / 1000 - a.started_at) : "" }),
            el("td", { class: "num", title: "since its last output or progress", text: a.last_activity_at ? span(Date.now() / 1000 - a.last_activity_at) : "" }),
            el("td", { class: "num", text: bytes(a.rss_bytes) }),
            el("td", { class: "num", text: a.cpu_percent !== undefined && a.cpu_percent !== null ? `${a.cpu_percent.toFixed(1)}%` : "" }),
            el("td", { class: "num", text: a.processes ?? "" })
          )
        )
      : [el("tr", {}, el("td", { colspan: "8", class: "muted", text: "no agents running here" }))])
  );
  renderPageInfo();
}

// -- jobs table -----------------------------------------------------------------------------
async function loadJobs() {
  const v = view();
  const params = new URLSearchParams();
  for (const s of v.statuses) params.append("status", s);
  if (v.kind) params.set("kind", v.kind);
  if (v.repo) params.set("repo", v.repo);
  if (v.age) params.set("created_after", String(Date.now() / 1000 - Number(v.age)));
  params.set("limit", String(PAGE_SIZE));
  params.set("offset", String(v.offset));
  try {
    const page = await api(`/api/jobs?${params}`);
    state.jobs = page.jobs;
    state.hasMore = page.has_more;
    renderJobs();
  } catch (err) {
    $("jobs").replaceChildren(el("tr", {}, el("td", { colspan: "10", class: "message error", text: err.message })));
  }
}
const refreshJobs = coalesced(loadJobs);

function renderJobs() {
  const now = Date.now() / 1000;
  const selected = view().job;
  const rows = state.jobs.map((j) => {
    const created = seconds(j.created_at);
    const started = seconds(j.started_at);
    const finished = seconds(j.finished_at);
    const what = j.kind || (j.command || []).join(" ");
    const row = el(
      "tr",
      { "data-job-id": String(j.id), class: j.id === selected ? "selected" : "" },
      el("td", { class: "num" }, el("a", { href: `#job=${j.id}`, text: String(j.id) })),
      el("td", { class: "status" }, badge(j.status)),
      el("td", { class: "what", title: what, text: what }),
      el("td", { class: "repo", title: j.repo || j.concurrency_key || "", text: j.repo || j.concurrency_key || "" }),
      el("td", { class: "num", text: String(j.priority) }),
      el("td", { class: "num", text: `${j.attempts_used}/${j.max_attempts}` }),
      el("td", {}, progressNode(j.progress, !LIVE.has(j.status) && j.progress !== null)),
      el("td", { class: "num", text: span(now - created) }),
      el("td", { class: "num", text: started ? span((finished || now) - started) : "" }),
      el("td", { class: "error", title: j.error || "", text: j.error ? `${j.error_kind || "error"}: ${j.error}` : "" })
    );
    row.addEventListener("click", (event) => {
      if (event.target.tagName !== "A") setView({ job: j.id });
    });
    return row;
  });
  const v = view();
  $("jobs").replaceChildren(
    ...(rows.length ? rows : [el("tr", {}, el("td", { colspan: "10", class: "muted", text: v.offset ? "no more jobs" : "no jobs" }))])
  );
  $("newer").disabled = v.offset === 0;
  $("older").disabled = !state.hasMore;
  renderPageInfo();
}

function renderPageInfo() {
  const v = view();
  const first = state.jobs.length ? v.offset + 1 : v.offset;
  let text = state.jobs.length ? `jobs ${first}–${v.offset + state.jobs.length}` : "";
  // The total is known without a query only when the filter is statuses alone: health's counts.
  if (state.health && !filtered(v) && state.jobs.length) {
    const h = state.health;
    const counts = { pending: h.pending, waiting_retry: h.waiting_retry, completed: h.completed, failed: h.failed, cancelled: h.cancelled };
    const wanted = v.statuses.length ? v.statuses : ["pending", "preparing", "running", "waiting_retry", "completed", "failed", "cancelled"];
    const live = wanted.some((s) => LIVE.has(s)) ? h.running : 0;
    const all = wanted.filter((s) => !LIVE.has(s)).reduce((sum, s) => sum + (counts[s] || 0), live);
    text += ` of ${all}`;
  }
  $("page-info").textContent = text;
}

// -- one job --------------------------------------------------------------------------------
async function loadJob() {
  const id = view().job;
  document.body.classList.toggle("job-open", Boolean(id));
  $("job").hidden = !id;
  if (!id) {
    state.job = null;
    return;
  }
  try {
    state.job = await api(`/api/jobs/${id}`);
  } catch (err) {
    if (err.status === 404) {
      state.job = null;
      renderMissingJob(id);
      return;
    }
    throw err;
  }
  renderJob();
  await loadLog();
}
const refreshJob = coalesced(loadJob);

function renderMissingJob(id) {
  $("job-id").textContent = String(id);
  $("job-status").textContent = "gone";
  $("job-status").className = "badge";
  $("job-fields").replaceChildren(el("dt", { text: "" }), el("dd", { text: `job ${id} does not exist (purged?)` }));
  for (const button of document.querySelectorAll("[data-action]")) button.disabled = true;
}

function renderJob() {
  const j = state.job;
  $("job-id").textContent = String(j.id);
  const status = $("job-status");
  status.textContent = j.status.replace("_", " ");
  status.className = `badge status-${j.status}`;
  for (const button of document.querySelectorAll("[data-action]")) {
    const action = button.dataset.action;
    button.disabled =
      (action === "cancel" || action === "kill") ? !CANCELLABLE.has(j.status) : action === "retry" ? !RETRYABLE.has(j.status) : false;
  }
  const now = Date.now() / 1000;
  const started = seconds(j.started_at);
  const fields = [
    ["kind", j.kind],
    ["command", j.command ? j.command.join(" ") : null],
    ["repository", j.repo ? `${j.repo}${j.ref ? ` @ ${j.ref}` : ""}` : null],
    ["concurrency key", j.concurrency_key],
    ["queue position", j.queue_position],
    ["priority", j.priority],
    ["attempt", `${j.attempts_used} of ${j.max_attempts} (attempt #${j.attempt})`],
    ["created", j.created_at],
    ["started", j.started_at],
    ["finished", j.finished_at],
    ["duration", started ? span((seconds(j.finished_at) || now) - started) : null],
    ["timeout", j.timeout_s ? span(j.timeout_s) : null],
    ["run after", j.status === "waiting_retry" ? j.run_after : null],
    ["pid", j.pid],
    ["exit code", j.exit_code],
    ["signal", j.signal],
    ["error", j.error ? `${j.error_kind}: ${j.error}` : null],
    ["cancel requested", j.cancel_requested],
    ["lease", j.lease_owner ? `${j.lease_owner} until ${j.lease_expires_at}` : null],
  ];
  $("job-fields").replaceChildren(
    ...fields.filter(([, value]) => value !== null && value !== undefined && value !== "").flatMap(([key, value]) => [
      el("dt", { text: key }),
      el("dd", { text: String(value) }),
    ])
  );
  const progress = progressParts(j.progress);
  $("job-progress").textContent = progress
    ? `${progress.text}${LIVE.has(j.status) ? "" : " (final)"}\n${pretty(j.progress)}`
    : "—";
  $("job-payload").textContent = pretty(j.payload);
  $("job-result").textContent = pretty(j.result);
  $("job-events").replaceChildren(
    ...j.events.map((e) =>
      el(
        "tr",
        {},
        el("td", { class: "at", title: e.at, text: new Date(e.at).toLocaleTimeString([], { hour12: false }) }),
        el("td", {}, e.from ? badge(e.from) : "", e.from ? " → " : "", badge(e.to)),
        el(
          "td",
          {},
          e.reason,
          Object.keys(e.facts).length ? el("span", { class: "facts", text: JSON.stringify(e.facts) }) : null
        ),
        el("td", { title: e.worker || "", text: e.decided_by }),
        el("td", { class: "num", text: String(e.attempt) })
      )
    )
  );
  for (const row of document.querySelectorAll("#jobs tr")) row.classList.toggle("selected", row.dataset.jobId === String(j.id));
}

// The log: its tail when the job view opens, then what the agent writes, while it runs.
async function loadLog() {
  const j = state.job;
  if (!j) return;
  const log = state.log;
  if (log.jobId !== j.id || (log.attempt !== null && j.attempt > log.attempt)) {
    Object.assign(log, { jobId: j.id, attempt: null, offset: null, live: false });
    $("job-log").textContent = "";
  }
  if (j.attempt === 0) {
    $("log-info").textContent = "(the job has not run yet)";
    return;
  }
  const params = new URLSearchParams();
  if (log.attempt !== null) params.set("attempt", String(log.attempt));
  if (log.offset !== null) params.set("offset", String(log.offset));
  let chunk;
  try {
    chunk = await api(`/api/jobs/${j.id}/log?${params}`);
  } catch (err) {
    $("log-info").textContent = err.status === 404 ? "(no log yet)" : `(${err.message})`;
    log.live = LIVE.has(j.status);
    return;
  }
  if (state.log.jobId !== j.id) return; // another job was opened meanwhile
  const pre = $("job-log");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  if (log.offset === null && chunk.offset > 0) pre.textContent = "…\n";
  if (chunk.text) {
    let text = pre.textContent + chunk.text;
    if (text.length > LOG_KEEP) text = "…\n" + text.slice(text.length - LOG_KEEP);
    pre.textContent = text;
  }
  Object.assign(log, { attempt: chunk.attempt, offset: chunk.next_offset, live: chunk.live });
  $("log-info").textContent = `attempt ${chunk.attempt} · ${bytes(chunk.size)}${chunk.live ? " · following" : ""}`;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}
const refreshLog = coalesced(loadLog);

function ask(action) {
  const j = state.job;
  if (!j) return;
  state.pendingAction = { action, id: j.id };
  $("confirm-text").textContent = CONFIRM[action](j.id);
  $("confirm").hidden = false;
  $("confirm-yes").focus();
}

async function confirmed() {
  const pending = state.pendingAction;
  $("confirm").hidden = true;
  state.pendingAction = null;
  if (!pending) return;
  const message = $("action-message");
  message.className = "message";
  try {
    const answer = await api(`/api/jobs/${pending.id}/${pending.action}`, {
      method: "POST",
      headers: { Accept: "application/json", "Content-Type": "application/json" },
      body: "{}",
    });
    message.textContent = answer.message;
  } catch (err) {
    message.className = "message error";
    message.textContent = err.message;
  }
  refreshJob();
  refreshJobs();
}

// -- the chart: finishes per minute over the last hour, drawn as SVG ------------------------
async function loadChart() {
  state.chartAt = Date.now();
  state.chart = await api("/api/throughput");
  drawChart(state.chart);
}

function drawChart(data) {
  const n = data.completed.length;
  // Drawn at the container's size in pixels: a stretched viewBox would stretch the labels too.
  const width = Math.max(200, Math.round($("chart").clientWidth || 600));
  const height = 120;
  const top = 8;
  const bottom = 16;
  const totals = data.completed.map((c, i) => c + data.failed[i] + data.cancelled[i]);
  const peak = Math.max(1, ...totals);
  const bar = width / n;
  const scale = (height - top - bottom) / peak;
  const start = seconds(data.start);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "finished jobs per minute" });
  chart.append(svg("line", { class: "axis", x1: 0, x2: width, y1: height - bottom, y2: height - bottom }));
  for (let i = 0; i < n; i++) {
    let y = height - bottom;
    const at = new Date((start + i * data.bucket_s) * 1000);
    const label = `${at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ${data.completed[i]} completed, ${data.failed[i]} failed, ${data.cancelled[i]} cancelled`;
    for (const kind of ["completed", "failed", "cancelled"]) {
      const count = data[kind][i];
      if (!count) continue;
      const h = count * scale;
      y -= h;
      chart.append(svg("rect", { class: `bar ${kind}`, x: i * bar + 0.5, y, width: Math.max(1, bar - 1), height: h }, svg("title", {}, label)));
    }
  }
  chart.append(svg("text", { x: 0, y: height - 3 }, "−60 min"));
  chart.append(svg("text", { x: width / 2, y: height - 3, "text-anchor": "middle" }, "−30 min"));
  chart.append(svg("text", { x: width, y: height - 3, "text-anchor": "end" }, "now"));
  chart.append(svg("text", { x: 2, y: top + 2 }, `${peak}/min`));
  $("chart").replaceChildren(chart);
  const sum = (list) => list.reduce((a, b) => a + b, 0);
  const completed = sum(data.completed);
  const failed = sum(data.failed);
  const cancelled = sum(data.cancelled);
  $("chart-total").textContent =
    `${completed} completed · ${failed} failed · ${cancelled} cancelled` + (data.truncated ? " (only the newest shown)" : "");
}
const refreshChart = coalesced(loadChart);

function refreshChartSoon() {
  const wait = Math.max(0, CHART_MIN_GAP_MS - (Date.now() - state.chartAt));
  setTimeout(refreshChart, wait);
}

// -- the live stream ------------------------------------------------------------------------
function connect() {
  const source = new EventSource("/api/events");
  const connection = $("connection");
  source.addEventListener("open", () => {
    connection.textContent = state.info && state.info.mode === "run" ? "live" : `live · store read every ${state.info ? state.info.refresh_s : "?"} s`;
    connection.className = "connection live";
  });
  source.addEventListener("error", () => {
    connection.textContent = "reconnecting…";
    connection.className = "connection down";
    api("/api/info").catch(() => {}); // shows the banner when the token is no longer accepted
  });
  source.addEventListener("state", (event) => {
    const snapshot = JSON.parse(event.data);
    renderHealth(snapshot.health, snapshot.error);
    if (snapshot.jobs_version !== state.jobsVersion) {
      state.jobsVersion = snapshot.jobs_version;
      refreshJobs();
      refreshJob();
      refreshChartSoon();
    }
  });
}

// -- start ----------------------------------------------------------------------------------
function fillFilters() {
  const v = view();
  const form = $("filters");
  const fieldset = $("status-filter");
  fieldset.replaceChildren(el("legend", { text: "status" }));
  for (const status of state.info.statuses) {
    const box = el("input", { type: "checkbox", name: "status", value: status });
    box.checked = v.statuses.includes(status);
    fieldset.append(el("label", {}, box, ` ${status.replace("_", " ")}`));
  }
  form.elements.kind.value = v.kind;
  form.elements.repo.value = v.repo;
  form.elements.age.value = v.age;
}

async function start() {
  state.info = await api("/api/info");
  $("mode").textContent =
    state.info.mode === "run"
      ? `supervisor running in this process · ${state.info.store}`
      : `following the ${state.info.store} store`;
  $("kinds").replaceChildren(...state.info.kinds.map((k) => el("option", { value: k })));
  fillFilters();

  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    setView({
      statuses: [...form.querySelectorAll("input[name=status]:checked")].map((b) => b.value),
      kind: form.elements.kind.value.trim(),
      repo: form.elements.repo.value.trim(),
      age: form.elements.age.value,
      offset: 0,
    });
  });
  $("filters").addEventListener("reset", () => setTimeout(() => setView({ statuses: [], kind: "", repo: "", age: "", offset: 0 })));
  $("newer").addEventListener("click", () => setView({ offset: Math.max(0, view().offset - PAGE_SIZE) }));
  $("older").addEventListener("click", () => setView({ offset: view().offset + PAGE_SIZE }));
  $("job-close").addEventListener("click", (event) => {
    event.preventDefault();
    setView({ job: null });
  });
  for (const button of document.querySelectorAll("[data-action]")) button.addEventListener("click", () => ask(button.dataset.action));
  $("confirm-yes").addEventListener("click", confirmed);
  $("confirm-no").addEventListener("click", () => {
    $("confirm").hidden = true;
    state.pendingAction = null;
  });
  window.addEventListener("hashchange", () => {
    fillFilters();
    $("confirm").hidden = true;
    $("action-message").textContent = "";
    refreshJobs();
    refreshJob();
  });

  window.addEventListener("resize", () => state.chart && drawChart(state.chart));

  connect();
  refreshJobs();
  refreshJob();
  refreshChart();
  setInterval(() => {
    if (state.job && (state.log.live || LIVE.has(state.job.status))) refreshLog();
  }, LOG_FOLLOW_MS);
  setInterval(() => {
    if (Date.now() - state.chartAt >= CHART_EVERY_MS) refreshChart();
    if (state.jobs.length) renderJobs(); // ages and durations move on
  }, 5000);
}

start().catch((err) => showBanner(`Cannot start: ${err.message}`));
