// The control room: signs in with an API key, follows GET /v1/live (server-sent events read
// with fetch, so that the key goes in a header: EventSource cannot send one), and reads the
// rest from the /v1 API. Whatever comes from the API is inserted as text (textContent and
// attributes), never as markup. The key lives in this tab's sessionStorage only.
"use strict";

const KEY = "tryfleet.key", PERSON = "tryfleet.person";
const FEED_MAX = 2000;
const FAILED = ["FAILED", "TIMED_OUT", "INFRA_ERROR"];
const TERMINAL = ["SUCCEEDED", "CANCELLED", ...FAILED];
const S = { me: null, live: null, snap: null, feed: [], cursor: null, suite: null,
            iteration: null, itTimer: null, suiteSig: "" };
const $ = (id) => document.getElementById(id);

// ---- building the page from data, as text ----------------------------------------------
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
    else if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = String(dv);
    else e.setAttribute(k, String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function fill(node, ...kids) { node.replaceChildren(...kids.flat()); }
function when(t) { return t ? new Date(t * 1000).toLocaleTimeString([], { hour12: false }) : "-"; }
function secs(s) { return s === null || s === undefined ? "-" : `${Number(s).toFixed(1)} s`; }
function sum(counts, states) { return states.reduce((n, s) => n + (counts[s] || 0), 0); }
function status(text, down) { $("status").textContent = text; $("status").classList.toggle("down", !!down); }

// ---- the API ------------------------------------------------------------------------------
class Refused extends Error {
  constructor(status, problem) { super(problem.detail || `HTTP ${status}`); this.status = status; }
}
function headers(extra) {
  return { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`, ...extra };
}
async function api(path, options) {
  const r = await fetch(path, { cache: "no-store", credentials: "omit", ...options,
                                headers: headers(options && options.headers) });
  if (r.status === 401 && S.me) signOut("the key is not valid any more: sign in again");
  const body = r.status === 204 ? null : await r.json().catch(() => ({}));
  if (!r.ok) throw new Refused(r.status, body || {});
  return body;
}
function post(path, body) {
  return api(path, { method: "POST", body: JSON.stringify(body),
                     headers: { "Content-Type": "application/json" } });
}
function q(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") u.set(k, v);
  const s = u.toString();
  return s ? `?${s}` : "";
}

// ---- signing in and out -------------------------------------------------------------------
async function signIn(ev) {
  ev.preventDefault();
  const key = $("key").value.trim();
  $("key").value = "";
  sessionStorage.setItem(KEY, key);
  sessionStorage.setItem(PERSON, $("person").value.trim());
  await start().catch((err) => {
    sessionStorage.removeItem(KEY);
    $("signin-error").textContent = err.message;
  });
}
async function start() {
  S.me = await api("/v1/me");
  $("signin-error").textContent = "";
  document.body.classList.add("in");
  document.body.classList.toggle("admin", S.me.scopes.includes("admin"));
  const person = sessionStorage.getItem(PERSON);
  $("whoami").textContent = `${S.me.tenant} · key ${S.me.key_id} · ${S.me.scopes.join(", ")}` +
    (person ? ` · ${person}` : "");
  follow();
}
function signOut(why) {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(PERSON);
  if (S.live) S.live.abort();
  clearInterval(S.itTimer);
  Object.assign(S, { me: null, live: null, snap: null, feed: [], cursor: null, suite: null,
                     iteration: null, suiteSig: "" });
  for (const id of ["hosts", "suites", "iterations"]) fill($(id).tBodies[0]);
  for (const id of ["switches", "switch-history", "sandboxes", "commands", "audit", "chart", "limits",
                    "it-stdout", "it-stderr", "trace-list", "trace-chart", "whoami"]) fill($(id));
  for (const id of ["iteration", "trace", "confirm"]) if ($(id).open) $(id).close();
  $("iterations-panel").hidden = true;
  $("commands-box").hidden = true;
  for (const part of Object.keys(drawn)) delete drawn[part];
  document.body.classList.remove("in", "admin");
  $("signin-error").textContent = typeof why === "string" ? why : "";
  status("signed out");
}

// ---- the live stream ----------------------------------------------------------------------
async function follow() {
  let pause = 1000;
  while (S.me) {
    const ctl = new AbortController();
    S.live = ctl;
    try {
      const r = await fetch(`/v1/live${q({ audit_cursor: S.cursor })}`,
                            { headers: headers(), signal: ctl.signal, cache: "no-store" });
      if (r.status === 401) { signOut("the key is not valid: sign in again"); return; }
      if (!r.ok) throw new Error(`the live view answered ${r.status}`);
      status("live");
      pause = 1000;
      await readEvents(r.body, onEvent);
    } catch (err) {
      if (ctl.signal.aborted || !S.me) return;
      status(`reconnecting (${err.message})`, true);
    }
    if (!S.me) return;
    status("reconnecting", true);
    await new Promise((done) => setTimeout(done, pause));
    pause = Math.min(pause * 2, 10000);
  }
}
async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
      }
      if (data) handle(event, JSON.parse(data));
    }
  }
}
function onEvent(event, data) {
  if (event === "snapshot") render(data);
  else if (event === "audit") addAudit(data.items);
  else if (event === "error") signOut(data.detail);
}

// ---- the fleet at a glance ----------------------------------------------------------------
function render(snap) {
  S.snap = snap;
  const c = snap.counts || {};
  $("queued").textContent = c.QUEUED || 0;
  $("running").textContent = sum(c, ["PLACED", "RUNNING"]);
  $("succeeded").textContent = c.SUCCEEDED || 0;
  $("failed").textContent = sum(c, FAILED);
  // each part drawn again only when what it shows changed: what is under a pointer stays put
  const sw = snap.switches || [];
  if (snap.fleet) {
    $("in-flight").textContent = snap.fleet.in_flight;
    const limits = Object.entries(snap.fleet.limits || {});
    $("limits").textContent = limits.length
      ? `limits: ${limits.map(([k, v]) => `${k} ${v.in_use}/${v.size}`).join(" · ")}` : "";
    changed("hosts", [snap.fleet.hosts, sw], () => fill($("hosts").tBodies[0], snap.fleet.hosts.map(hostRow)));
  }
  if (snap.throughput) changed("chart", snap.throughput.points, () => chart(snap.throughput));
  changed("suites", [snap.suites, sw, S.suite], () => renderSuites(snap.suites || []));
  changed("sandboxes", [snap.sandboxes, sw], () => renderSandboxes(snap.sandboxes || []));
  if (snap.switches) changed("switches", sw, () => renderSwitches(sw));
}
const drawn = {};
function changed(part, data, draw) {
  const sig = JSON.stringify(data);
  if (drawn[part] === sig) return;
  drawn[part] = sig;
  draw();
}
function pressure(p) {
  if (!p) return "-";
  return `${Math.round(p.cpu_some_avg10 || 0)}% · ${Math.round(p.memory_some_avg10 || 0)}%`;
}
function hostRow(h) {
  const sw = switchOn("host", h.host);
  return el("tr", { data: { host: h.host } },
    el("td", { class: h.lost ? "bad" : h.pressured ? "pressured" : null, title: h.host }, h.host,
       h.lost ? " (lost)" : h.pressured ? " (pressured)" : "",
       sw ? el("span", { class: sw.strength === "kill" ? "killed" : "frozen" }, ` ${sw.strength === "kill" ? "killed" : "frozen"}`) : ""),
    el("td", {}, h.accel || "-"),
    el("td", { title: `${h.cpus ?? "-"} vCPUs, ${h.mem_mib ?? "-"} MiB for VMs` },
       `${h.cpus ?? "-"} · ${h.mem_mib == null ? "-" : (h.mem_mib / 1024).toFixed(1) + " GiB"}`),
    el("td", { title: "VMs running (pooled ones too) · attempts running" }, `${h.vms ?? "-"} · ${h.running ?? "-"}`),
    el("td", { title: `PSI avg10 (cpu, memory); memory in use ${Math.round((h.pressure || {}).mem_used_pct || 0)}%` }, pressure(h.pressure)),
    el("td", {}, controls("host", h.host, null)));
}
function chart(tp) {
  const box = $("chart"), W = 360, H = 100, n = tp.points.length;
  const totals = tp.points.map((p) => sum(p.counts, TERMINAL));
  const top = Math.max(1, ...totals), bw = W / n;
  const parts = [svg("line", { x1: 0, y1: H, x2: W, y2: H, class: "axis" })];
  tp.points.forEach((p, i) => {
    let y = H;
    for (const [cls, states] of [["ok", ["SUCCEEDED"]], ["bad", FAILED], ["gone", ["CANCELLED"]]]) {
      const v = sum(p.counts, states);
      if (!v) continue;
      const h = (v / top) * (H - 10);
      y -= h;
      const r = svg("rect", { x: (i * bw + 0.5).toFixed(1), y: y.toFixed(1), width: Math.max(bw - 1, 1).toFixed(1),
                              height: h.toFixed(1), class: cls });
      r.append(svg("title", {}, `${when(p.at)}: ${v} ${cls === "ok" ? "succeeded" : cls === "bad" ? "failed" : "cancelled"}`));
      parts.push(r);
    }
  });
  parts.push(svg("text", { x: 0, y: H + 9 }, "-60 min"), svg("text", { x: W - 18, y: H + 9 }, "now"));
  fill(box, parts);
  box.dataset.total = String(totals.reduce((a, b) => a + b, 0));
  $("chart-max").textContent = `(max ${top}/min)`;
}

// ---- suites, iterations, sandboxes --------------------------------------------------------
function renderSuites(suites) {
  fill($("suites").tBodies[0], suites.map((s) => {
    const done = sum(s.counts, TERMINAL), sw = switchOn("suite", `${s.tenant}/${s.name}`);
    const label = S.snap.tenant === null && S.me.scopes.includes("admin") ? `${s.tenant}/${s.name}` : s.name;
    return el("tr", { class: `clickable${S.suite && S.suite.name === s.name && S.suite.tenant === s.tenant ? " picked" : ""}`,
                      data: { suite: s.name, tenant: s.tenant, done, total: s.total },
                      on: { click: () => pickSuite(s) } },
      el("td", { title: `${s.tenant}/${s.name}` }, label, sw ? el("span", { class: sw.strength === "kill" ? "killed" : "frozen" }, ` ${sw.strength === "kill" ? "killed" : "frozen"}`) : ""),
      el("td", { title: `${done} of ${s.total} ended` }, el("progress", { max: Math.max(s.total, 1), value: done }),
         ` ${done}/${s.total}`, sum(s.counts, FAILED) ? el("span", { class: "bad" }, ` ${sum(s.counts, FAILED)} failed`) : ""),
      el("td", { class: "queued" }, s.queued), el("td", { class: "running" }, s.running),
      el("td", {}, controls("suite", s.name, s.tenant)));
  }));
  const picked = S.suite && suites.find((s) => s.name === S.suite.name && s.tenant === S.suite.tenant);
  if (picked) {
    const sig = JSON.stringify(picked.counts);
    if (sig !== S.suiteSig) { S.suiteSig = sig; loadIterations(); }
  }
}
function pickSuite(s) {
  S.suite = { name: s.name, tenant: s.tenant };
  S.suiteSig = JSON.stringify(s.counts);
  $("its-suite").textContent = s.name;
  $("iterations-panel").hidden = false;
  if (S.snap) render(S.snap);
  loadIterations();
}
async function loadIterations() {
  const s = S.suite;
  const page = await api(`/v1/iterations${q({ suite: s.name, limit: 500, tenant: S.me.scopes.includes("admin") ? s.tenant : null })}`);
  if (S.suite !== s) return;
  fill($("iterations").tBodies[0], page.items.map((it) => el("tr",
    { class: "clickable", data: { iteration: it.id, state: it.state }, on: { click: () => openIteration(it.id, it.tenant) } },
    el("td", { class: "mono" }, it.id), el("td", { class: FAILED.includes(it.state) ? "bad" : null }, it.state),
    el("td", {}, it.exit_code ?? "-"), el("td", {}, it.attempt), el("td", {}, secs(it.duration_s)),
    el("td", { on: { click: (e) => e.stopPropagation() } }, controls("iteration", it.id, it.tenant)))));
}
async function openIteration(id, tenant) {
  S.iteration = { id, tenant };
  clearInterval(S.itTimer);
  S.itTimer = setInterval(() => showIteration().catch(() => {}), 2000);  // while it runs
  await showIteration();
  if (!$("iteration").open) $("iteration").showModal();
}
async function showIteration() {
  const { id, tenant } = S.iteration;
  const it = await api(`/v1/iterations/${encodeURIComponent(id)}${q({ tenant: S.me.scopes.includes("admin") ? tenant : null })}`);
  $("it-id").textContent = it.id;
  const facts = [["state", it.state], ["exit code", it.exit_code ?? "-"], ["suite", `${it.tenant}/${it.suite}`],
    ["host", it.host ?? "-"], ["submitted", when(it.submitted_at)], ["started", when(it.started_at)],
    ["ended", when(it.ended_at)], ["took", secs(it.duration_s)], ["attempts", it.attempt],
    ["request", it.request_id], ["error", it.error || "-"]];
  fill($("it-facts"), facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  fill($("it-attempts").tBodies[0], (it.attempts || []).map((a) => el("tr", {},
    el("td", {}, a.attempt), el("td", {}, a.host ?? "-"), el("td", {}, when(a.placed_at)),
    el("td", {}, when(a.ended_at)), el("td", {}, a.outcome ?? "-"), el("td", { title: a.error || "" }, a.error || ""))));
  $("it-stdout").textContent = it.stdout;
  $("it-stderr").textContent = it.stderr;
  $("iteration").dataset.state = it.state;
  if (TERMINAL.includes(it.state)) clearInterval(S.itTimer);
}
function closeIteration() { clearInterval(S.itTimer); $("iteration").close(); }

function renderSandboxes(boxes) {
  fill($("sandboxes"), boxes.map((b) => {
    const sw = switchOn("sandbox", b.id);
    return el("li", { data: { sandbox: b.id } },
      el("a", { class: "mono link sid", title: "its recent commands", on: { click: () => commands(b.id).catch(alertError) } }, b.id), ` ${b.tenant} · ${b.image} · ${b.cpus} vCPU · ${b.mem_mib} MiB`,
      b.host ? ` · ${b.host}` : "", ` · until ${when(b.expires_at)}`,
      sw ? el("span", { class: "frozen" }, ` ${sw.strength}`) : "", " ", controls("sandbox", b.id, null));
  }));
}
async function commands(sid) {
  $("commands-of").textContent = sid;
  $("commands-box").hidden = false;
  const page = await api(`/v1/audit${q({ sandbox: sid, action: "exec.start", since: "1d", limit: 1000 })}`);
  fill($("commands"), page.items.slice(-20).reverse().map((r) => el("li", {},
    el("span", { class: "dim" }, `${when(r.at)} `), (r.details.argv || []).join(" "))));
}

// ---- kill switches ------------------------------------------------------------------------
function switchOn(level, target) {
  return ((S.snap && S.snap.switches) || []).find((s) => s.level === level && s.target === target);
}
function controls(level, target, tenant) {
  if (!S.me || !S.me.scopes.includes("admin")) return "";
  const key = level === "suite" || level === "iteration" ? `${tenant}/${target}` : target;
  const on = switchOn(level, key);
  const b = (label, act, cls) => el("button", { type: "button", class: `small ${cls || ""}`,
    data: { act: label.toLowerCase() }, on: { click: (e) => { e.stopPropagation(); act(); } } }, label);
  if (on) return el("span", {}, b("Thaw", () => thaw(on)));
  return el("span", {}, b("Freeze", () => flip(level, target, tenant, "freeze")),
            " ", b("Kill", () => flip(level, target, tenant, "kill"), "danger"));
}
// What a switch will stop, in words, from what the page knows now.
function consequence(level, target, tenant, strength, tenants) {
  const snap = S.snap || {}, kill = strength === "kill";
  const say = (q, r) => kill
    ? `${q} queued iteration${q === 1 ? "" : "s"} will be cancelled; ${r} running will be stopped and their VMs destroyed.`
    : `${q} queued iteration${q === 1 ? "" : "s"} will not start; ${r} running continue.`;
  if (level === "suite") {
    const s = (snap.suites || []).find((x) => x.name === target && x.tenant === tenant) || { queued: 0, running: 0 };
    return say(s.queued, s.running);
  }
  if (level === "tenant") {
    const c = (tenants || {})[target] || {};
    return `${say(c.QUEUED || 0, sum(c, ["PLACED", "RUNNING"]))} Its open sandboxes ${kill ? "will be closed" : "stay open"}; nothing new of it is admitted.`;
  }
  if (level === "everything") {
    const c = snap.counts || {}, boxes = (snap.sandboxes || []).length;
    return `${say(c.QUEUED || 0, sum(c, ["PLACED", "RUNNING"]))} ${kill ? `${boxes} open sandbox(es) will be closed and the warm pools emptied.` : "Open sandboxes stay open."} Nothing new is admitted.`;
  }
  if (level === "host") {
    const h = ((snap.fleet || {}).hosts || []).find((x) => x.host === target) || {};
    return kill ? `${h.running ?? 0} running on ${target} will be stopped and retried on other hosts; nothing new is placed there.`
      : `Nothing new will be placed on ${target}; its ${h.running ?? 0} running continue.`;
  }
  if (level === "iteration") return kill ? `Iteration ${target} will be cancelled (stopped and its VM destroyed if it runs).`
    : `Iteration ${target} will not start if it is queued; if it runs, it continues.`;
  if (level === "sandbox") return kill ? `Sandbox ${target} will be closed and its VM destroyed.`
    : `Sandbox ${target} starts no new command and takes no file; it stays open.`;
  if (level === "key") return kill ? `Key ${target} will be revoked for good, its queued and running work cancelled, its sandboxes closed.`
    : `Nothing new from key ${target} will be admitted; what runs continues.`;
  return "";
}
function confirmDialog(title, text) {
  const d = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-reason").value = "";
  d.showModal();
  return new Promise((resolve) => {
    const done = (ok) => { d.close(); $("confirm-form").onsubmit = null; $("confirm-cancel").onclick = null; d.oncancel = null; resolve(ok); };
    $("confirm-form").onsubmit = (e) => { e.preventDefault(); done(true); };
    $("confirm-cancel").onclick = () => done(false);
    d.oncancel = () => done(false);
  });
}
async function flip(level, target, tenant, strength) {
  const what = level === "everything" ? "everything" : `${level} ${target}${tenant ? ` (tenant ${tenant})` : ""}`;
  const verb = strength === "kill" ? "Kill" : "Freeze";
  // a tenant's counts come from the fleet's status (a scan of the ledger: not in every snapshot)
  const tenants = level === "tenant" ? (await api("/v1/fleet").catch(() => ({}))).tenants : null;
  const ok = await confirmDialog(`${verb} ${what}?`, `${verb} ${what}: ${consequence(level, target, tenant, strength, tenants)}`);
  if (!ok) return;
  const person = sessionStorage.getItem(PERSON);
  const body = { level, target: level === "everything" ? "" : target, strength, reason: $("confirm-reason").value };
  if (tenant && (level === "suite" || level === "iteration")) body.tenant = tenant;
  if (person) body.person = person;
  try { await post("/v1/switches", body); } catch (err) { alertError(err); }
}
async function thaw(sw) {
  const what = sw.level === "everything" ? "everything" : `${sw.level} ${sw.target}`;
  const ok = await confirmDialog(`Thaw ${what}?`, `Lift the ${sw.strength} on ${what} (flipped by ${sw.flipped_by} at ${when(sw.flipped_at)}): what it held starts again.`);
  if (!ok) return;
  const person = sessionStorage.getItem(PERSON);
  try {
    await api(`/v1/switches/${sw.id}${q({ reason: $("confirm-reason").value, person })}`, { method: "DELETE" });
  } catch (err) { alertError(err); }
}
function alertError(err) { status(`refused: ${err.message}`, true); }
function renderSwitches(list) {
  fill($("switches"), list.length ? list.map((s) => el("li", { data: { switch: s.id, level: s.level, target: s.target } },
    el("span", { class: s.strength === "kill" ? "killed" : "frozen" }, s.strength), ` ${s.level} ${s.target || "(all)"} · by ${s.flipped_by} at ${when(s.flipped_at)}`,
    s.reason ? ` · “${s.reason}”` : "", " ", el("button", { type: "button", class: "small", data: { act: "thaw" }, on: { click: () => thaw(s) } }, "Thaw")))
    : [el("li", { class: "dim" }, "none")]);
}
async function switchHistory() {
  if (!$("switch-history-box").open) return;
  const got = await api("/v1/switches?history=true");
  fill($("switch-history"), got.items.slice(0, 50).map((s) => el("li", {},
    `${s.strength} ${s.level} ${s.target || "(all)"} · by ${s.flipped_by} at ${when(s.flipped_at)}`,
    s.lifted_at ? ` · lifted by ${s.lifted_by} at ${when(s.lifted_at)}` : " · in force")));
}
function switchForm(ev) {
  ev.preventDefault();
  const strength = ev.submitter && ev.submitter.dataset.strength === "kill" ? "kill" : "freeze";
  flip($("sw-level").value, $("sw-target").value.trim(), $("sw-tenant").value.trim() || null, strength);
}

// ---- the audit feed and traces ------------------------------------------------------------
function addAudit(items, older) {
  if (!items.length) return;
  if (!older) S.cursor = items[items.length - 1].seq;  // where the live feed resumes
  const known = new Set(S.feed.map((r) => r.seq));
  S.feed.push(...items.filter((r) => !known.has(r.seq)));
  S.feed.sort((a, b) => a.seq - b.seq);
  if (S.feed.length > FEED_MAX) S.feed.splice(0, S.feed.length - FEED_MAX);
  renderFeed();
}
function matches(r) {
  if (!$("audit-calls").checked && (r.action === "api.request" || r.action === "api.response")) return false;
  const action = $("audit-action").value.trim(), tenant = $("audit-tenant").value.trim();
  const text = $("audit-text").value.trim().toLowerCase();
  if (action && !(action.endsWith(".*") ? r.action.startsWith(action.slice(0, -1)) : r.action === action)) return false;
  if (tenant && r.tenant !== tenant) return false;
  return !text || JSON.stringify(r).toLowerCase().includes(text);
}
function renderFeed() {
  const shown = S.feed.filter(matches).slice(-300).reverse();
  fill($("audit"), shown.map((r) => el("li", { class: r.action.startsWith("switch.") ? "switch" : null,
                                                data: { seq: r.seq, action: r.action } },
    el("span", { class: "when" }, when(r.at)), el("span", { class: "action" }, r.action),
    el("span", { class: "who" }, r.actor), r.tenant ? `tenant=${r.tenant} ` : "",
    r.outcome ? `→ ${r.outcome} ` : "", r.sandbox || r.iteration || r.host ? `on ${r.sandbox || r.iteration || r.host} ` : "",
    r.request_id ? el("a", { class: "link", title: "the request's trace", on: { click: () => trace(r.request_id) } }, "trace") : "",
    el("span", { class: "details" }, JSON.stringify(r.details)))));
}
let searching = null;
function filtered() {  // the feed filtered now; the trail searched once typing pauses
  renderFeed();
  clearTimeout(searching);
  searching = setTimeout(() => searchAudit().catch(alertError), 400);
}
async function searchAudit(ev) {
  if (ev) ev.preventDefault();
  const action = $("audit-action").value.trim(), tenant = $("audit-tenant").value.trim();
  if (action || tenant) {
    try {
      const got = await api(`/v1/audit${q({ action, tenant, since: "1d", limit: 1000 })}`);
      addAudit(got.items, true);
    } catch (err) { alertError(err); }
  }
  renderFeed();
}
async function trace(rid) {
  const got = await api(`/v1/audit/trace/${encodeURIComponent(rid)}`);
  $("trace-id").textContent = rid;
  const items = got.items, t0 = items[0].at, span = Math.max(items[items.length - 1].at - t0, 0.001);
  const W = 900, row = 20, left = 330, box = $("trace-chart");
  box.setAttribute("viewBox", `0 0 ${W} ${items.length * row + 10}`);
  box.setAttribute("height", String(items.length * row + 10));
  fill(box, items.map((r, i) => {
    const y = i * row + 14, x = left + ((r.at - t0) / span) * (W - left - 70);
    const g = svg("g", {});
    g.append(svg("line", { x1: left, y1: y - 4, x2: W - 60, y2: y - 4, class: "lane" }),
             svg("text", { x: 0, y }, `${r.action} ${r.outcome || ""}`.slice(0, 44)),
             svg("circle", { cx: x.toFixed(1), cy: y - 4, r: 5, class: "dot" }),
             svg("text", { x: W - 56, y, class: "t" }, `+${((r.at - t0) * 1000).toFixed(1)} ms`));
    return g;
  }));
  fill($("trace-list"), items.map((r) => el("li", {}, `${when(r.at)} ${r.action} ${r.actor} ${r.outcome || ""} `,
    el("span", { class: "dim" }, JSON.stringify(r.details)))));
  if (!$("trace").open) $("trace").showModal();
}

// ---- wiring -------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("signin").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut());
  $("switch-form").addEventListener("submit", switchForm);
  $("switch-history-box").addEventListener("toggle", () => switchHistory().catch(alertError));
  $("audit-filter").addEventListener("submit", searchAudit);
  for (const id of ["audit-action", "audit-tenant"]) $(id).addEventListener("input", filtered);
  $("audit-text").addEventListener("input", renderFeed);
  $("audit-calls").addEventListener("change", renderFeed);
  $("it-close").addEventListener("click", closeIteration);
  $("iteration").addEventListener("close", () => clearInterval(S.itTimer));
  $("trace-close").addEventListener("click", () => $("trace").close());
  if (sessionStorage.getItem(KEY)) start().catch((err) => signOut(err.message));
});
