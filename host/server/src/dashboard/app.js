// The Toka dashboard: reads the /v1 API with the operator token kept in
// this tab's session storage, and follows the log through the event stream
// (opened with single-use tickets, so the token never goes into a URL).
// Every live view is driven by the stream; only the commit-latency chart
// reads /metrics.
"use strict";

const TOKEN_KEY = "toka.operator-token";
const TROUBLE = new Set(["capability_denied", "agent_faulted", "agent_quarantined", "quota_exceeded", "task_failed", "host_condition"]);
const EVENTS_SHOWN = 500;
const $ = (id) => document.getElementById(id);

const ui = {
  agents: new Map(),      // id -> agent view (kept current from events)
  packages: new Map(),    // component digest -> {name, version, publisher}
  lastSeq: 0,
  selected: null,
  stream: null,
  trouble: 0,
  opsNow: 0,
  opsSeries: [],
  latencySeries: [],
  lastCommit: null,
  eventsSeen: [],
};

// ---- the API ----

class Unauthorized extends Error {}

// Where this host's API is: "" on a single host, "/cells/N" for a cell of a
// cluster (the dashboard is then served at /cells/N/).
const BASE = location.pathname.replace(/\/(index\.html)?$/, "");

async function api(path, options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = Object.assign({ "Authorization": "Bearer " + token }, options.headers || {});
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(BASE + path, { method: options.method || "GET", headers, body: options.body });
  if (response.status === 401) throw new Unauthorized((await response.json()).error.message);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// ---- elements ----

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "data") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

const short = (id) => (id || "").slice(0, 8);
const nameOf = (id) => (ui.agents.get(id) || {}).name || short(id);

// ---- start ----

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    start();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $("detail-close").addEventListener("click", () => select(null));
  $("filter-agent").addEventListener("change", renderEvents);
  $("filter-kind").addEventListener("change", renderEvents);
  $("verify-button").addEventListener("click", startVerify);
  if (sessionStorage.getItem(TOKEN_KEY)) start(); else showLogin("");
});

function showLogin(message) {
  if (ui.stream) { ui.stream.close(); ui.stream = null; }
  $("main").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  setConnection(false);
}

async function start() {
  try {
    const status = await api("/v1/status");
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = false;
    $("whoami").textContent = "operator " + status.operator;
    await loadAgents();
    await loadRecentEvents(status.head.seq, status.log_start || 1);
    loadVerify();
    connect();
    setInterval(tick, 1000);
    setInterval(sampleLatency, 2000);
    sampleLatency();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(e instanceof Unauthorized ? "That token was refused: " + e.message : "Cannot reach the server: " + e.message);
  }
}

async function loadAgents() {
  for (const p of await api("/v1/packages")) ui.packages.set(p.component, { name: p.name, version: p.version, publisher: p.publisher });
  let cursor = null;
  do {
    const page = await api("/v1/agents?limit=1000" + (cursor ? "&cursor=" + cursor : ""));
    for (const agent of page.items) ui.agents.set(agent.id, agent);
    cursor = page.next_cursor;
  } while (cursor && ui.agents.size < 10000);
  renderAgents();
}

async function loadRecentEvents(head, start) {
  const from = Math.max(start, head - 199);
  let next = from;
  while (next && next <= head) {
    const page = await api("/v1/events?from=" + next + "&limit=1000");
    for (const event of page.events) remember(event);
    ui.lastSeq = Math.max(ui.lastSeq, ...page.events.map((e) => e.seq), next - 1);
    next = page.next_from;
  }
  ui.lastSeq = Math.max(ui.lastSeq, head);
  setHead(head);
  renderEvents();
}

// ---- the stream ----

async function connect() {
  if (ui.stream) ui.stream.close();
  let ticket;
  try {
    ticket = (await api("/v1/events/tickets", { method: "POST" })).ticket;
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The token no longer works: " + e.message);
    setConnection(false);
    setTimeout(connect, 2000);
    return;
  }
  const source = new EventSource(BASE + "/v1/events/stream?from=" + (ui.lastSeq + 1) + "&ticket=" + encodeURIComponent(ticket));
  ui.stream = source;
  source.onopen = () => setConnection(true);
  source.addEventListener("record", (message) => {
    const record = JSON.parse(message.data);
    ui.lastSeq = record.seq;
    ui.opsNow += 1;
    setHead(record.seq);
    for (const event of record.events) {
      apply(event);
      remember(event);
    }
    if (!$("pause").checked) renderEvents();
    renderAgents();
    refreshDetail(record.events);
  });
  // A ticket opens one stream: reconnect with a new one, from the last
  // record received.
  source.onerror = () => {
    source.close();
    setConnection(false);
    setTimeout(connect, 1000);
  };
}

function setConnection(on) {
  $("connection").className = "pill " + (on ? "on" : "off");
  $("connection").textContent = on ? "live" : "offline";
}

function setHead(seq) {
  $("head").textContent = "log head #" + seq;
}

// ---- keeping the agents current from events ----

function apply(event) {
  const a = event.agent && ui.agents.get(event.agent);
  switch (event.kind) {
    case "agent_spawned":
      ui.agents.set(event.agent, {
        id: event.agent, name: event.name, parent: event.parent === "00000000000000000000000000000000" ? null : event.parent,
        component: event.component, status: "active", reason: null, queued: 0, running: null,
        completed: 0, failed: 0, consecutive_faults: 0, state_keys: 0, state_bytes: 0, token: event.token, fresh: true,
        package: ui.packages.get(event.component) || null,
      });
      break;
    case "package_installed":
      ui.packages.set(event.component, { name: event.name, version: event.version, publisher: event.publisher });
      break;
    case "agent_rebound": if (a) { a.component = event.component; a.token = event.token; a.package = ui.packages.get(event.component) || null; } break;
    case "task_scheduled": if (a) a.queued += 1; break;
    case "task_started": if (a) { a.queued = Math.max(0, a.queued - 1); a.running = event.task; } break;
    case "task_completed": if (a) { a.running = null; a.completed += 1; a.consecutive_faults = 0; } break;
    case "task_failed": if (a) { a.running = null; a.failed += 1; } break;
    case "agent_faulted": if (a) a.consecutive_faults = event.consecutive; break;
    case "agent_quarantined": if (a) { a.status = "quarantined"; a.reason = event.reason; } break;
    case "agent_resumed": if (a) { a.status = "active"; a.reason = null; a.consecutive_faults = 0; } break;
    case "agent_terminated": if (a) { a.status = "terminated"; a.reason = event.reason; a.queued = 0; a.running = null; } break;
    case "agent_forgotten": ui.agents.delete(event.agent); break;
    case "state_put": if (a) a.touched = true; break;
  }
  if (a) a.fresh = true;
  if (TROUBLE.has(event.kind)) ui.trouble += 1;
}

function remember(event) {
  ui.eventsSeen.push(event);
  if (ui.eventsSeen.length > EVENTS_SHOWN) ui.eventsSeen.splice(0, ui.eventsSeen.length - EVENTS_SHOWN);
}

// ---- rendering ----

function renderAgents() {
  const body = $("agents").tBodies[0];
  const agents = [...ui.agents.values()].sort((x, y) => (x.status === "terminated") - (y.status === "terminated") || x.name.localeCompare(y.name));
  $("agents-empty").hidden = agents.length > 0;
  const rows = new Map([...body.rows].map((row) => [row.dataset.agent, row]));
  body.textContent = "";
  let active = 0, quarantined = 0, terminated = 0, queued = 0, running = 0;
  for (const a of agents) {
    if (a.status === "active") active++; else if (a.status === "quarantined") quarantined++; else terminated++;
    queued += a.queued; running += a.running ? 1 : 0;
    let row = rows.get(a.id);
    if (!row || a.fresh) {
      row = el("tr", { data: { agent: a.id }, class: a.fresh && rows.has(a.id) ? "flash" : "" },
        el("td", {}, a.name),
        el("td", {}, el("code", {}, short(a.id))),
        el("td", {}, a.package ? a.package.name + " " + a.package.version : "–"),
        el("td", {}, a.package ? a.package.publisher : "–"),
        el("td", { class: "status-" + a.status, title: a.reason || "" }, a.status),
        el("td", { class: "num" }, a.queued),
        el("td", {}, a.running ? el("code", {}, short(a.running)) : "–"),
        el("td", { class: "num" }, a.completed),
        el("td", { class: "num" }, a.failed));
      row.addEventListener("click", () => select(a.id));
      a.fresh = false;
    }
    row.classList.toggle("selected", a.id === ui.selected);
    body.append(row);
  }
  $("tile-agents").textContent = String(active);
  $("tile-agents-sub").textContent = quarantined + " quarantined · " + terminated + " terminated";
  $("tile-tasks").textContent = queued + " · " + running;
  $("tile-trouble").textContent = String(ui.trouble);
  const filter = $("filter-agent");
  const chosen = filter.value;
  if (filter.options.length - 1 !== agents.length) {
    filter.textContent = "";
    filter.append(el("option", { value: "" }, "all agents"));
    for (const a of agents) filter.append(el("option", { value: a.id }, a.name + " (" + short(a.id) + ")"));
    filter.value = chosen;
  }
}

function keeps(event) {
  const agent = $("filter-agent").value;
  const kind = $("filter-kind").value;
  if (agent && event.agent !== agent && event.origin !== agent && event.parent !== agent) return false;
  if (!kind) return true;
  if (kind === "trouble") return TROUBLE.has(event.kind);
  if (kind === "task" || kind === "agent") return event.kind.startsWith(kind + "_");
  return event.kind === kind;
}

function describe(event) {
  const who = event.agent ? nameOf(event.agent) + " " : "";
  switch (event.kind) {
    case "observation_emitted": return who + "observed: " + (event.data ?? "<" + (event.data_hex || "").length / 2 + " bytes>");
    case "task_scheduled": return "task " + short(event.task) + " for " + who + ": " + JSON.stringify(event.description);
    case "task_started": return "task " + short(event.task) + " started by " + who;
    case "task_completed": return "task " + short(event.task) + " completed by " + who + (event.output ? ": " + event.output : "");
    case "task_failed": return "task " + short(event.task) + " of " + who + "failed: " + event.reason;
    case "agent_spawned": return (event.name || "") + " (" + short(event.agent) + ") spawned";
    case "capability_denied": return who + "denied " + event.operation + (event.target ? " on " + event.target : "") + ": " + event.reason;
    case "agent_quarantined": return who + "quarantined: " + event.reason;
    case "agent_faulted": return who + "faulted (" + event.consecutive + " in a row): " + event.reason;
    case "quota_exceeded": return who + "hit a quota: " + (event.reason || event.quota || "");
    case "state_put": return who + "set " + event.key;
    case "component_installed": return "component " + event.name + " (" + short(event.digest) + ") installed";
    case "component_removed": return "component " + event.name + " (" + short(event.digest) + ") removed";
    case "agent_forgotten": return "terminated agent " + short(event.agent) + " forgotten";
    case "package_installed": return "package " + event.name + " " + event.version + " by " + event.publisher + (event.previous ? " upgraded from " + event.previous : " installed") + "; approved: " + (event.approved.join(", ") || "nothing");
    case "package_uninstalled": return "package " + event.name + " uninstalled";
    case "publisher_trusted": return "publisher " + event.name + " trusted";
    case "publisher_distrusted": return "publisher " + event.name + " removed; tokens revoked for: " + (event.packages.join(", ") || "no packages");
    case "agent_rebound": return who + "now runs component " + short(event.component);
    default: {
      const rest = Object.entries(event).filter(([k]) => !["seq", "time", "kind", "origin", "cause"].includes(k));
      return rest.map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(" ");
    }
  }
}

function eventItem(event) {
  const classes = ["kind-" + event.kind];
  if (TROUBLE.has(event.kind)) classes.push("trouble");
  return el("li", { class: classes.join(" "), data: { seq: event.seq, kind: event.kind } },
    el("span", { class: "seq" }, "#" + event.seq),
    el("span", { class: "kind" }, event.kind),
    el("span", { class: "text" }, describe(event)));
}

function renderEvents() {
  const list = $("events");
  list.textContent = "";
  const shown = ui.eventsSeen.filter(keeps).slice(-200).reverse();
  for (const event of shown) list.append(eventItem(event));
}

// ---- an agent's detail ----

let detailTimer = null;

function select(id) {
  ui.selected = id;
  $("detail").hidden = !id;
  renderAgents();
  if (id) loadDetail();
}

function refreshDetail(events) {
  if (!ui.selected || !events.some((e) => e.agent === ui.selected || e.origin === ui.selected)) return;
  clearTimeout(detailTimer);
  detailTimer = setTimeout(loadDetail, 250);
}

function facts(target, pairs) {
  target.textContent = "";
  for (const [k, v] of pairs) target.append(el("dt", {}, k), el("dd", {}, v));
}

async function loadDetail() {
  const id = ui.selected;
  let detail;
  try {
    detail = await api("/v1/agents/" + id);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin(e.message);
    $("detail-facts").textContent = e.message;
    return;
  }
  if (id !== ui.selected) return;
  const a = detail;
  $("detail-name").textContent = a.name;
  $("detail-id").textContent = a.id;
  facts($("detail-facts"), [
    ["status", a.status + (a.reason ? ": " + a.reason : "")],
    ["parent", a.parent ? nameOf(a.parent) : "operator"],
    ["component", short(a.component)],
    ["queued · running", a.queued + " · " + (a.running ? short(a.running) : "–")],
    ["completed · failed", a.completed + " · " + a.failed],
    ["state", a.state_keys + " keys, " + a.state_bytes + " bytes"],
  ]);
  const g = detail.grants;
  facts($("detail-token"), [
    ["rights", g.rights.join(", ") || "none"],
    ["delegates", g.delegated ? g.delegated.join(", ") : "what it holds"],
    ["budgets", g.budgets.join(", ") || "the host's defaults"],
    ["revoked", g.revoked ? "yes" : "no"],
  ]);
  const tasks = $("detail-tasks");
  tasks.textContent = "";
  for (const t of detail.tasks) tasks.append(el("li", {}, el("code", {}, short(t.id)), " " + t.status + (t.description ? " — " + t.description : "")));
  if (!detail.tasks.length) tasks.append(el("li", { class: "muted" }, "none waiting or running"));
  const unshown = a.queued + (a.running ? 1 : 0) - detail.tasks.length;
  if (unshown > 0) tasks.append(el("li", { class: "muted" }, "and " + unshown + " more"));
  const keys = $("detail-state");
  keys.textContent = "";
  for (const k of detail.keys) keys.append(el("li", {}, el("code", {}, k)));
  if (!detail.keys.length) keys.append(el("li", { class: "muted" }, "no keys"));
  if (a.state_keys > detail.keys.length) keys.append(el("li", { class: "muted" }, "and " + (a.state_keys - detail.keys.length) + " more"));
  const recent = $("detail-events");
  recent.textContent = "";
  for (const e of ui.eventsSeen.filter((e) => e.agent === id || e.origin === id).slice(-30).reverse()) recent.append(eventItem(e));
}

// ---- charts ----

function tick() {
  ui.opsSeries.push(ui.opsNow);
  if (ui.opsSeries.length > 60) ui.opsSeries.shift();
  $("tile-ops").textContent = String(ui.opsNow);
  ui.opsNow = 0;
  plot($("ops-chart"), ui.opsSeries);
}

function plot(svg, series) {
  const max = Math.max(1, ...series);
  const step = 120 / 59;
  const offset = 60 - series.length;
  const points = series.map((v, i) => ((offset + i) * step).toFixed(1) + "," + (29 - (v / max) * 28).toFixed(1));
  svg.querySelector("polyline").setAttribute("points", points.join(" "));
}

async function sampleLatency() {
  let text;
  try { text = await api("/metrics"); } catch (_) { return; }
  const value = (name) => {
    const line = text.split("\n").find((l) => l.startsWith(name + " "));
    return line ? Number(line.split(" ")[1]) : 0;
  };
  const sum = value("toka_commit_seconds_sum");
  const count = value("toka_commit_seconds_count");
  if (ui.lastCommit) {
    const batches = count - ui.lastCommit.count;
    const mean = batches > 0 ? (sum - ui.lastCommit.sum) / batches : null;
    if (mean !== null) $("tile-latency").textContent = (mean * 1000).toFixed(2) + " ms";
    ui.latencySeries.push(mean === null ? 0 : mean * 1000);
    if (ui.latencySeries.length > 60) ui.latencySeries.shift();
    plot($("latency-chart"), ui.latencySeries);
  }
  ui.lastCommit = { sum, count };
}

// ---- verify ----

function showVerify(job) {
  if (!job) { $("verify-state").textContent = "never"; $("verify-detail").textContent = "no verification since the server started"; return; }
  $("verify-state").textContent = job.state;
  $("verify-state").className = "value " + (job.state === "ok" ? "status-active" : job.state === "failed" ? "error" : "");
  const parts = [job.done + (job.total ? " / " + job.total : "") + " records"];
  if (job.seconds != null) parts.push(job.seconds.toFixed(1) + " s");
  if (job.problems.length) parts.push(job.problems[0]);
  $("verify-detail").textContent = parts.join(" · ");
  if (job.state === "running") setTimeout(() => api("/v1/verify/" + job.id).then(showVerify, () => {}), 500);
}

async function loadVerify() {
  try { showVerify(await api("/v1/verify")); } catch (e) { if (e.status === 404) showVerify(null); }
}

async function startVerify() {
  try { showVerify(await api("/v1/verify", { method: "POST", json: { auth: true } })); } catch (e) { $("verify-detail").textContent = e.message; }
}
