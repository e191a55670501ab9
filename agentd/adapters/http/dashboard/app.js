// agentd dashboard: plain JS, no build step. It uses only the public HTTP API and EventSource.
//
// - Jobs are listed live (GET /jobs, polled) and filtered by project and status.
// - Opening a job follows its event stream (the `stream_url` the API gives; EventSource cannot send
//   headers, so with API keys on that URL carries the server's short-lived stream token).
// - Every event seen is kept per stream in sessionStorage, so a reload renders them again and resumes
//   after the last one (`?after=<seq>`): no text is shown twice.
"use strict";

const KEY_STORE = "agentd.key";
const STREAM_STORE = "agentd.stream.";
const URL_STORE = "agentd.stream_url.";
const POLL_MS = 1500;
const EVENT_TYPES = ["status", "session", "text", "reasoning", "tool_use", "tool_result", "output", "error", "done"];

const $ = (id) => document.getElementById(id);

// --- the API ---------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

let keyWaiters = null;

function askForKey() {
  // One dialog for every request that met a 401; they all retry with the new key.
  if (!keyWaiters) {
    keyWaiters = [];
    $("key-input").value = "";
    $("key-dialog").showModal();
  }
  return new Promise((resolve) => keyWaiters.push(resolve));
}

function keyEntered() {
  const key = $("key-input").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORE, key);
  $("key-button").hidden = false;
  const waiters = keyWaiters || [];
  keyWaiters = null;
  waiters.forEach((w) => w());
}

async function api(method, path, body) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const headers = { Accept: "application/json" };
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers["X-API-Key"] = key;
    const init = { method, headers };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body || {});
    }
    const resp = await fetch(path, init);
    const data = await resp.json().catch(() => null);
    if (resp.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      await askForKey();
      continue;
    }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }
  throw new ApiError(401, { message: "the API key was refused" });
}

// --- helpers -----------------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function setBadge(node, status) {
  node.className = `badge ${status}`;
  node.textContent = status;
}

function fmtDuration(ms) {
  if (ms == null) return "–";
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  return s < 120 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function fmtCost(usd) {
  return usd == null ? "–" : `$${Number(usd).toFixed(4)}`;
}

function pretty(value) {
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

const FINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);

// --- the job list ----------------------------------------------------------------------------------------

let current = null; // {project, jobId, streamId, status, ...}

async function refreshJobs() {
  const params = new URLSearchParams({ limit: "50" });
  const project = $("filter-project").value.trim();
  const status = $("filter-status").value;
  if (status) params.set("status", status);
  // One project: its own route (what a key scoped to that project may read); else every project's jobs.
  const path = project ? `/projects/${encodeURIComponent(project)}/jobs` : "/jobs";
  try {
    const data = await api("GET", `${path}?${params}`);
    $("jobs-error").textContent = "";
    renderJobs(data.jobs);
  } catch (e) {
    $("jobs-error").textContent = e.message;
  }
}

function renderJobs(jobs) {
  const list = $("jobs");
  list.replaceChildren(
    ...jobs.map((job) => {
      const badge = el("span");
      setBadge(badge, job.status);
      const li = el(
        "li",
        { "data-job": job.job_id, "data-status": job.status },
        badge,
        el("span", { class: "muted", text: `${job.project_id} · ${job.provider} · ${job.created_at.slice(11, 19)}` }),
        el("span", { class: "prompt", text: job.request.prompt }),
      );
      if (current && current.jobId === job.job_id) li.classList.add("selected");
      li.addEventListener("click", () => openJob(job.project_id, job.job_id));
      return li;
    }),
  );
  if (current) {
    const mine = jobs.find((j) => j.job_id === current.jobId);
    if (mine && !current.done) showStatus(mine.status);
    else if (current.done) showStatus(current.status); // the listing may lag behind the stream
  }
}

// --- one job and its stream ----------------------------------------------------------------------------

function streamUrlFor(job) {
  // The API's stream_url when it gives one (it carries the stream token when keys are on).
  return job.stream_url || sessionStorage.getItem(URL_STORE + job.stream_id) ||
    `/projects/${encodeURIComponent(job.project_id)}/events/${encodeURIComponent(job.stream_id)}`;
}

function loadSaved(streamId) {
  try {
    return JSON.parse(sessionStorage.getItem(STREAM_STORE + streamId)) || [];
  } catch {
    return [];
  }
}

function save() {
  if (!current) return;
  try {
    sessionStorage.setItem(STREAM_STORE + current.streamId, JSON.stringify(current.events));
  } catch {
    // storage full: a reload then replays the stream from its start instead (still no duplicates)
    sessionStorage.removeItem(STREAM_STORE + current.streamId);
  }
}

let saveTimer = null;
function saveSoon() {
  if (!saveTimer) saveTimer = setTimeout(() => { saveTimer = null; save(); }, 300);
}

function closeJob() {
  if (!current) return;
  if (current.source) current.source.close();
  save();
  current = null;
}

async function openJob(project, jobId) {
  closeJob();
  location.hash = `#/projects/${encodeURIComponent(project)}/jobs/${encodeURIComponent(jobId)}`;
  let job;
  try {
    job = await api("GET", `/projects/${encodeURIComponent(project)}/jobs/${encodeURIComponent(jobId)}`);
  } catch (e) {
    $("jobs-error").textContent = `job ${jobId}: ${e.message}`;
    return;
  }
  current = {
    project, jobId, streamId: job.stream_id, events: [], lastSeq: 0, done: false,
    texts: new Map(), tools: new Map(), source: null,
  };
  $("empty").hidden = true;
  $("job").hidden = false;
  $("job-id").textContent = job.job_id;
  $("job-meta").textContent = `${job.project_id} · ${job.provider}${job.request.model ? " · " + job.request.model : ""}`;
  $("job-prompt").textContent = job.request.prompt;
  $("transcript").replaceChildren();
  $("summary").hidden = true;
  showStatus(job.status);
  for (const li of $("jobs").children) li.classList.toggle("selected", li.dataset.job === jobId);
  for (const [seq, type, data] of loadSaved(job.stream_id)) handle(seq, type, data);
  connect(job);
}

function connect(job) {
  const state = current;
  if (state.done) return;
  const url = new URL(streamUrlFor(job), location.href);
  if (state.lastSeq > 0) url.searchParams.set("after", String(state.lastSeq));
  const source = new EventSource(url.toString());
  state.source = source;
  $("conn").textContent = "";
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (e) => {
      if (current !== state) return;
      if (type === "error" && !e.data) return; // a connection error, not an event from the server
      const seq = Number(e.lastEventId);
      handle(seq, type, JSON.parse(e.data));
      saveSoon();
    });
  }
  source.addEventListener("error", (e) => {
    if (current !== state || e.data) return;
    if (source.readyState !== EventSource.CLOSED) {
      $("conn").textContent = "reconnecting…"; // EventSource resumes on its own (Last-Event-ID)
      return;
    }
    // Refused (e.g. an expired stream token): ask the API for the job again, which gives a fresh
    // stream_url, and resume after the last event shown.
    state.failures = (state.failures || 0) + 1;
    if (state.failures > 5) {
      $("conn").textContent = "the stream was refused: reopen the job to retry";
      return;
    }
    $("conn").textContent = "reconnecting…";
    setTimeout(() => reopen(state), 1000 * state.failures);
  });
  source.addEventListener("open", () => { $("conn").textContent = ""; state.failures = 0; });
}

async function reopen(state) {
  if (current !== state || state.done) return;
  try {
    const job = await api("GET", `/projects/${encodeURIComponent(state.project)}/jobs/${encodeURIComponent(state.jobId)}`);
    if (current === state) connect(job);
  } catch (e) {
    $("conn").textContent = `stream: ${e.message}`;
  }
}

function handle(seq, type, data) {
  const state = current;
  if (seq && seq <= state.lastSeq) return; // already shown (a resume or a reconnect)
  if (seq) state.lastSeq = seq;
  state.events.push([seq, type, data]);
  render(type, data);
  if (type === "done") {
    state.done = true;
    if (state.source) state.source.close();
    save();
  }
}

function render(type, data) {
  const box = $("transcript");
  switch (type) {
    case "status":
      showStatus(data.status);
      box.append(el("div", { class: "status-line", text: `● ${data.status}${data.detail ? " — " + data.detail : ""}` }));
      break;
    case "session":
      box.append(el("div", { class: "status-line", text: `session ${data.session_id}${data.model ? " · " + data.model : ""}` }));
      break;
    case "text":
    case "reasoning":
      renderChunk(type, data);
      break;
    case "tool_use": {
      const input = el("pre", { class: "input", text: pretty(data.input) });
      const result = el("pre", { class: "result", text: "…running" });
      const node = el("details", { class: "tool", open: "" },
        el("summary", { text: `tool ${data.name}` }), el("div", { class: "muted", text: "input" }), input,
        el("div", { class: "muted", text: "result" }), result);
      current.tools.set(data.tool_use_id, { node, result });
      box.append(node);
      break;
    }
    case "tool_result": {
      const tool = current.tools.get(data.tool_use_id);
      if (!tool) break;
      tool.result.textContent = data.output;
      tool.node.classList.toggle("is-error", !!data.is_error);
      break;
    }
    case "output":
      box.append(el("div", { class: "output", text: `[${data.type}] ${data.content}` }));
      break;
    case "error":
      box.append(el("div", { class: "stream-error", text: `error ${data.code}: ${data.message}` }));
      break;
    case "done":
      showStatus(data.status);
      showSummary(data);
      break;
  }
}

function renderChunk(type, data) {
  const key = `${type}:${data.message_id}:${data.index || 0}`;
  let block = current.texts.get(key);
  if (!block) {
    if (type === "reasoning") {
      const body = el("div", { class: "text" });
      const node = el("details", { class: "reasoning" }, el("summary", { text: "reasoning" }), body);
      block = { node, body };
    } else {
      const node = el("div", { class: "text", "data-message": data.message_id });
      block = { node, body: node };
    }
    current.texts.set(key, block);
    $("transcript").append(block.node);
  }
  if (data.abandoned) {
    block.node.remove(); // the provider dropped this message; its replacement comes under a new id
    return;
  }
  block.body.append(data.chunk);
}

function showStatus(status) {
  if (!current) return;
  current.status = status;
  setBadge($("job-status"), status);
  // The list is polled; the open job's row follows its stream at once.
  const row = [...$("jobs").children].find((li) => li.dataset.job === current.jobId);
  if (row && (status === "running" || FINAL.has(status))) {
    row.dataset.status = status;
    setBadge(row.firstChild, status);
  }
  $("cancel").disabled = FINAL.has(status) || current.done;
}

function showSummary(done) {
  const s = $("summary");
  s.replaceChildren(
    el("span", {}, "status ", el("b", { id: "summary-status", text: done.status })),
    el("span", {}, "duration ", el("b", { text: fmtDuration(done.duration_ms) })),
    el("span", {}, "cost ", el("b", { text: fmtCost(done.cost_usd) })),
  );
  if (done.error) s.append(el("span", { class: "error", text: done.error }));
  s.hidden = false;
  $("cancel").disabled = true;
}

async function cancelCurrent() {
  if (!current) return;
  const { project, jobId } = current;
  $("cancel").disabled = true;
  try {
    const job = await api("POST", `/projects/${encodeURIComponent(project)}/jobs/${encodeURIComponent(jobId)}/cancel`);
    if (current && current.jobId === jobId && !current.done) showStatus(job.status);
  } catch (e) {
    $("conn").textContent = `cancel: ${e.message}`;
    $("cancel").disabled = false;
  }
}

// --- the submit form ---------------------------------------------------------------------------------------

let providers = [];

async function loadProviders() {
  try {
    const data = await api("GET", "/providers");
    providers = data.providers;
    $("f-provider").replaceChildren(
      ...providers.map((p) => el("option", { value: p.name, text: p.name + (p.availability.available ? "" : " (unavailable)") })),
    );
    if (data.default) $("f-provider").value = data.default;
    fillModels();
  } catch (e) {
    $("submit-error").textContent = `providers: ${e.message}`;
  }
}

function fillModels() {
  const p = providers.find((x) => x.name === $("f-provider").value);
  const models = (p && p.capabilities.models) || [];
  $("models").replaceChildren(...models.map((m) => el("option", { value: m })));
}

async function submitJob(ev) {
  ev.preventDefault();
  $("submit-error").textContent = "";
  const project = $("f-project").value.trim();
  const body = { prompt: $("f-prompt").value, provider: $("f-provider").value || null };
  const model = $("f-model").value.trim();
  if (model) body.model = model;
  $("f-submit").disabled = true;
  try {
    const job = await api("POST", `/projects/${encodeURIComponent(project)}/jobs`, body);
    sessionStorage.setItem(URL_STORE + job.stream_id, job.stream_url);
    localStorage.setItem("agentd.project", project);
    await openJob(project, job.job_id);
    refreshJobs();
  } catch (e) {
    $("submit-error").textContent = e.message;
  } finally {
    $("f-submit").disabled = false;
  }
}

// --- start -------------------------------------------------------------------------------------------------

function routeFromHash() {
  const m = location.hash.match(/^#\/projects\/([^/]+)\/jobs\/([^/]+)$/);
  return m ? [decodeURIComponent(m[1]), decodeURIComponent(m[2])] : null;
}

function start() {
  $("key-form").addEventListener("submit", keyEntered);
  $("key-button").hidden = !sessionStorage.getItem(KEY_STORE);
  $("key-button").addEventListener("click", () => { sessionStorage.removeItem(KEY_STORE); askForKey(); });
  $("submit-form").addEventListener("submit", submitJob);
  $("f-provider").addEventListener("change", fillModels);
  $("f-project").value = localStorage.getItem("agentd.project") || "";
  $("filter-project").addEventListener("input", refreshJobs);
  $("filter-status").addEventListener("change", refreshJobs);
  $("cancel").addEventListener("click", cancelCurrent);
  window.addEventListener("pagehide", save);
  loadProviders();
  refreshJobs();
  setInterval(refreshJobs, POLL_MS);
  const route = routeFromHash();
  if (route) openJob(route[0], route[1]);
}

document.addEventListener("DOMContentLoaded", start);
