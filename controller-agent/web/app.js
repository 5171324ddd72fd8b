// The System Upgrade page. Plain JavaScript, no build step: it talks to the
// same REST API as the molt CLI (token in sessionStorage) and polls the
// status once a second. While the leader reboots the polls fail; the page
// says so and keeps polling until the leader answers again.
"use strict";

const $ = (sel) => document.querySelector(sel);
const POLL_MS = 1000;

// What the page has seen; the browser test reads it.
window.molt = { connected: false, generations: [], lastOk: 0 };

let token = sessionStorage.getItem("molt-token") || "";
let uploaded = null; // the answer of POST /api/upload
let lastStatus = null;
let pollTimer = null;

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

function badge(text, cls) {
  return `<span class="badge ${esc(cls ?? text)}">${esc(text)}</span>`;
}

function bytes(n) {
  if (n == null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "";
}

function took(a, b) {
  if (!a) return "";
  const s = Math.max(0, (b || Date.now() / 1000) - a);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

// The time left of a running operation, from the status's estimate.
function eta(s) {
  if (s.state === "paused") return " · no end while paused";
  if (s.eta_seconds == null) return "";
  const left = s.eta_seconds < 60 ? `${s.eta_seconds} s` : `${Math.floor(s.eta_seconds / 60)} min ${s.eta_seconds % 60} s`;
  const end = s.expected_end ? new Date(s.expected_end * 1000).toLocaleTimeString() : "";
  return ` · <span id="op-eta" title="${esc(s.eta_basis || "")}">about ${left} left${end ? `, ends about ${esc(end)}` : ""}</span>`;
}

// An SE group's health gates and each SE's result.
function gatesText(gates) {
  if (!gates || !(gates.checks || []).length) return "";
  const results = (gates.results || []).map((r) => `<li>${esc(r.se)} ${badge(r.status === "done" ? "passed" : r.status)}
    ${esc(r.message || "")}</li>`).join("");
  return `<div class="gates"><b>Health gates</b>: ${esc(gates.checks.join("; "))}${results ? `<ul>${results}</ul>` : ""}</div>`;
}

// The upgrade profile when it is not the default one.
function profileText(p) {
  if (!p) return "";
  const parts = [];
  const par = Object.entries(p.max_parallel_ses || {}).filter(([, k]) => k > 1).map(([g, k]) => `${g} ${k}`);
  if (par.length) parts.push(`SEs at once: ${par.join(", ")}`);
  if (p.groups_in_series) parts.push("SE groups in series");
  if (p.max_transfers) parts.push(`${p.max_transfers} transfers at once`);
  if (p.transfer_rate_mib) parts.push(`transfers capped at ${p.transfer_rate_mib} MiB/s`);
  return parts.length ? ` · profile: ${esc(parts.join("; "))}` : "";
}

// Whether a status document describes an operation still running.
function isRunning(s) {
  return !!s && ["in_progress", "prechecking", "paused"].includes(s.state);
}

class Unauthorized extends Error {}

// One REST call. Throws Unauthorized on 401, TypeError when the leader
// cannot be reached; otherwise returns {status, body}.
async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" });
  if (resp.status === 401) throw new Unauthorized();
  let json = null;
  try { json = await resp.json(); } catch (_) { json = { error: `HTTP ${resp.status}` }; }
  return { status: resp.status, body: json };
}

// ---- login -----------------------------------------------------------------

function showLogin(message) {
  clearTimeout(pollTimer);
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

let loginRetry = null;

async function login(candidate) {
  token = candidate.trim();
  try {
    const r = await api("GET", "/api/cluster");
    if (r.status !== 200) throw new Error(r.body.error);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("That token is not this cluster's admin token, nor one made by `molt pki token`.");
    // The leader may be rebooting (an upgrade): keep trying with this token
    // while the login form is up and nobody typed another one.
    showLogin(`The leader did not answer (${e.message}); trying again every second…`);
    $("#token").value = candidate;
    loginRetry = setTimeout(() => {
      if (!$("#login").hidden && $("#token").value.trim() === token) login(token);
    }, 1000);
    return;
  }
  clearTimeout(loginRetry);
  sessionStorage.setItem("molt-token", token);
  // A read-only token (`molt pki token --role read-only`) sees everything and is offered no change.
  document.body.classList.toggle("read-only", token.startsWith("molt.read-only."));
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  poll();
}

// ---- polling ---------------------------------------------------------------

async function poll() {
  clearTimeout(pollTimer);
  try {
    const [cluster, status] = await Promise.all([api("GET", "/api/cluster"), api("GET", "/api/cluster/upgrade/status")]);
    if (cluster.status === 200) renderCluster(cluster.body);
    if (status.status === 200) renderStatus(status.body);
    connected(cluster.body);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
    disconnected(e);
  }
  pollTimer = setTimeout(poll, POLL_MS);
}

function connected(cluster) {
  const m = window.molt;
  const gens = m.generations;
  const restarted = gens.length && gens[gens.length - 1] !== cluster.generation;
  if (!gens.length || restarted) gens.push(cluster.generation);
  const wasDown = !m.connected && m.lastOk;
  m.connected = true;
  m.lastOk = Date.now();
  $("#conn").textContent = `leader ${cluster.leader} · generation ${cluster.generation}`;
  if (wasDown || restarted) {
    banner(restarted ? `Reconnected: the leader ${cluster.leader} restarted and answers again.`
      : `Reconnected to the leader ${cluster.leader}.`, true);
    setTimeout(() => { if (window.molt.connected) $("#banner").hidden = true; }, 8000);
  }
}

function disconnected(e) {
  const m = window.molt;
  m.connected = false;
  const since = m.lastOk ? Math.round((Date.now() - m.lastOk) / 1000) : 0;
  const upgrading = isRunning(lastStatus);
  $("#conn").textContent = "leader not answering";
  banner((upgrading
    ? `Waiting for the leader: it is not answering (${since} s), as expected while it reboots into the new version. `
    : `The leader at ${location.host} is not answering (${since} s). `)
    + "Reconnecting every second; nothing is lost meanwhile." + (e && e.message ? ` (${e.message})` : ""), false);
}

function banner(text, good) {
  const b = $("#banner");
  b.textContent = text;
  b.className = good ? "banner good" : "banner";
  b.hidden = false;
}

// ---- rendering ---------------------------------------------------------------

let clusterVersion = "?";

function renderCluster(c) {
  const leader = c.nodes.find((n) => n.id === c.leader);
  if (leader) clusterVersion = leader.version;
  $("#cluster-name").textContent = `cluster ${c.cluster}`;
  const rows = c.nodes.map((n) => `<tr><td>${esc(n.id)}</td><td>${esc(n.role)}</td><td>${esc(n.deployment || "")}</td><td>${esc(n.se_group || "")}</td>
    <td class="mono">${esc(n.version || "?")}</td><td>${badge(n.state)}</td>
    <td class="mono">${n.staged.map((s) => esc(s.version)).join(", ")}</td></tr>`);
  $("#nodes tbody").innerHTML = rows.join("");
  const groups = {};
  for (const n of c.nodes) {
    const key = n.role === "controller" ? "Controllers" : `SE group ${n.se_group}`;
    (groups[key] ||= new Set()).add(n.version || "?");
  }
  $("#groups-summary").innerHTML = Object.entries(groups)
    .map(([k, v]) => `<span class="badge">${esc(k)}: ${esc([...v].join(" / "))}</span>`).join(" ");
}

function eventsText(events) {
  return (events || []).map((e) => `${esc(e.task)} ${e.status === "done" ? "✓" : e.status === "failed" ? "✗" : "…"}`
    + (e.end && e.start ? ` ${(e.end - e.start).toFixed(1)}s` : "")).join(" → ");
}

function lastMessage(events) {
  const e = (events || []).filter((x) => x.message).pop();
  return e ? esc(e.message) : "";
}

function renderStatus(s) {
  const wasRunning = isRunning(lastStatus);
  lastStatus = s;
  const running = isRunning(s);
  // The cluster changed under the uploaded image: check it again.
  if (wasRunning && !running && uploaded) setTimeout(prechecks, 0);
  $("#begin").disabled = running || !uploaded;
  if (s.state === "idle" && !s.operation) {
    $("#op-summary").textContent = "No upgrade has run since this leader's store was created.";
  } else {
    $("#op-summary").innerHTML = `${esc(s.operation)} ${esc(s.from_version)} → ${esc(s.to_version)} ${badge(s.state)}
      phase <b>${esc(s.phase || "-")}</b> · ${s.progress}% · started ${esc(when(s.started_at))}
      · ${esc(took(s.started_at, s.ended_at))}${eta(s)}${s.force ? " · forced" : ""}${s.disruptive ? " · disruptive" : ""}${profileText(s.profile)}`;
  }
  $("#op-summary").dataset.state = s.state;
  $("#op-bar").style.width = `${s.progress || 0}%`;
  $("#op-reason").textContent = s.reason || "";
  // A reason is an error only when the operation did not complete.
  $("#op-reason").className = ["aborted", "suspended"].includes(s.state) ? "failed" : "muted";
  controls(s);
  $("#phases").innerHTML = s.operation ? phases(s) : "";
  $("#history tbody").innerHTML = (s.history || []).slice().reverse().map((h) => `<tr><td>${esc(h.operation)}</td>
    <td>${esc(h.from_version)}</td><td>${esc(h.to_version)}</td><td>${badge(h.state)}</td><td>${esc(when(h.started_at))}</td>
    <td>${esc(took(h.started_at, h.ended_at))}</td><td>${esc(h.reason)}</td></tr>`).join("")
    || `<tr><td colspan="7" class="muted">No operation has run on this cluster yet.</td></tr>`;
}

/** A refused action, or a leader that did not answer, in the error color. */
function opError(text) {
  const e = $("#op-reason");
  e.textContent = text;
  e.className = "failed";
}

function phaseState(rows) {
  if (!rows.length) return "pending";
  if (rows.some((r) => r === "failed")) return "failed";
  if (rows.every((r) => r === "done")) return "done";
  if (rows.some((r) => r === "running" || r === "done")) return "running";
  return "pending";
}

function phases(s) {
  const out = [];
  const checks = s.prechecks || [];
  const worst = checks.some((c) => c.result === "error") ? "error" : checks.some((c) => c.result === "warning") ? "warning" : "ok";
  out.push(`<div class="phase" id="phase-prechecks"><h3>Pre-checks ${badge(worst)}</h3>
    <div class="events">${checks.map((c) => `${esc(c.check)}: ${esc(c.message)}`).join("<br>")}</div></div>`);

  const stage = s.nodes.map((n) => ({ n, e: (n.events || []).find((e) => e.task === "stage") }));
  const size = s.image_size || 0;
  out.push(`<div class="phase" id="phase-distribution"><h3>Distribution ${badge(phaseState(stage.map((x) => x.e ? x.e.status : "pending")))}</h3>
    <table><tbody>${stage.map(({ n, e }) => {
      const got = e && e.status === "done" ? size : Math.min(n.received || 0, size);
      const pct = size ? Math.round((100 * got) / size) : 0;
      // While it receives: where each stripe comes from (the leader, or a relay).
      const from = n.source && !(e && e.status === "done") ? ` from <span class="mono">${esc(n.source)}</span>` : "";
      return `<tr><td>${esc(n.id)}</td><td><span class="progress small"><div style="width:${pct}%"></div></span>${pct}% of ${esc(bytes(size))}${from}</td>
        <td>${e ? badge(e.status) : badge("pending")}</td><td class="events">${esc(e && e.message)}</td></tr>`;
    }).join("")}</tbody></table></div>`);

  if (s.operation !== "prestage") {
    const ctrls = s.nodes.filter((n) => n.role === "controller");
    const ctrlState = (n) => {
      const ev = (n.events || []).filter((e) => e.task !== "stage");
      if (!ev.length) return "pending";
      return ev.some((e) => e.status === "failed") ? "failed" : ev.some((e) => e.task === "commit" && e.status === "done") ? "done" : "running";
    };
    out.push(`<div class="phase" id="phase-controllers"><h3>Controllers ${badge(phaseState(ctrls.map(ctrlState)))}</h3>
      <table><tbody>${ctrls.map((n) => `<tr><td>${esc(n.id)}</td><td class="mono">${esc(n.version)}</td><td>${badge(ctrlState(n))}</td>
        <td class="events">${eventsText((n.events || []).filter((e) => e.task !== "stage"))}<br>${lastMessage(n.events)}</td></tr>`).join("")}
      </tbody></table></div>`);

    for (const g of s.se_groups || []) {
      // Actionable only once the operation has ended suspended (the API answers 409 before).
      const suspended = g.state === "suspended" && s.state === "suspended";
      const ses = (g.ses || []).map((id) => s.nodes.find((n) => n.id === id)).filter(Boolean);
      out.push(`<div class="phase se-group" data-group="${esc(g.name)}"><h3>SE group ${esc(g.name)} ${badge(g.state)}
        <span class="muted">${esc(g.ha_mode)}</span></h3>
        <div><span class="progress small"><div style="width:${g.progress || 0}%"></div></span>${g.progress || 0}%
        ${(g.vs_disrupted || []).length ? ` · traffic lost: ${esc(g.vs_disrupted.join(", "))}` : ""}</div>
        ${gatesText(g.gates)}
        <table><tbody>${ses.map((n) => `<tr><td>${esc(n.id)}</td><td class="mono">${esc(n.version)}</td><td>${badge(n.state)}</td>
          <td class="events">${eventsText((n.events || []).filter((e) => e.task !== "stage"))}<br>${lastMessage(n.events)}</td></tr>`).join("")}</tbody></table>
        ${suspended ? `<div class="row"><button data-act="resume" data-group="${esc(g.name)}">Resume</button>
          <button data-act="skip" data-group="${esc(g.name)}">Resume, leaving failed SEs on the old version</button>
          <button data-act="rollback" data-group="${esc(g.name)}">Roll back group</button></div>` : ""}
      </div>`);
    }

    const vss = s.virtual_services || [];
    if (vss.length) {
      out.push(`<div class="phase" id="phase-traffic"><h3>Virtual services</h3><table><thead><tr><th>Service</th><th>Predicted</th>
        <th>Measured downtime</th><th>Why</th></tr></thead><tbody>${vss.map((v) => `<tr><td>${esc(v.name)}</td>
        <td>${v.predicted_disruption ? badge("disrupted") : badge("no downtime", "ok")}</td>
        <td>${v.measured_downtime_ms == null ? "" : `${v.measured_downtime_ms} ms`}</td><td class="events">${esc(v.reason)}</td></tr>`).join("")}
        </tbody></table></div>`);
    }
  }
  return out.join("");
}

// ---- pause, resume, abort; the groups left behind; system rollback ---------

function controls(s) {
  const running = s.state === "in_progress" || s.state === "paused";
  const rollback = s.operation === "se_group_rollback" || s.operation === "system_rollback";
  const holdable = running && !rollback && !s.abort_requested && s.phase !== "rollback";
  const behind = s.se_groups_behind || [];
  const committed = (s.nodes || []).filter((n) => n.role === "controller").every((n) => (n.events || []).some((e) => e.task === "commit" && e.status === "done"));
  $("#op-pause").hidden = !(holdable && s.state === "in_progress");
  $("#op-resume").hidden = !(holdable && s.state === "paused");
  $("#op-abort").hidden = !holdable;
  $("#op-segroup").hidden = running || rollback || !behind.length || !committed;
  $("#op-segroup").dataset.groups = behind.join(" ");
  $("#op-segroup").textContent = `Upgrade SE groups ${behind.join(", ")} to ${s.to_version || ""}`;
  $("#op-rollback-system").hidden = running || rollback || s.state !== "completed" || !committed;
  const inFlight = (s.nodes || []).filter((n) => n.state === "running").map((n) => n.id);
  $("#op-hint").textContent = s.state === "paused"
    ? (inFlight.length ? `Pausing: ${inFlight.join(", ")} finish what they are doing first.` : "Paused: nothing is in flight.")
    : s.abort_requested ? "Aborting: what is in flight finishes, then partly upgraded groups roll back." : "";
}

async function opAction(op, groups) {
  const what = { "pause": ["/api/cluster/upgrade/pause", {}], "resume": ["/api/cluster/upgrade/resume", {}],
    "abort": ["/api/cluster/upgrade/abort", {}], "segroup": ["/api/cluster/upgrade/segroup", { se_groups: groups }],
    "rollback-system": ["/api/cluster/upgrade/rollback", { system: true }] }[op];
  const sure = { "abort": "Abort the upgrade? Before the controllers commit they roll back; after, partly upgraded SE groups roll back.",
    "rollback-system": "Return every SE group, then the controllers, to the previous version?" }[op];
  if (sure && !window.confirm(sure)) return;
  try {
    const r = await api("POST", what[0], what[1]);
    if (r.status >= 300) opError(`${op} refused (${r.status}): ${r.body.error}`);
    else renderStatus(r.body);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
    opError(`The leader did not answer: ${e.message}`);
  }
}

// ---- upload, pre-checks, begin --------------------------------------------

function upload() {
  const file = $("#file").files[0];
  if (!file) return;
  const name = file.name.replace(/[^A-Za-z0-9._-]/g, "_");
  const xhr = new XMLHttpRequest();
  const started = Date.now();
  uploaded = null;
  $("#image").hidden = true;
  $("#upload").disabled = true;
  $("#upload-text").className = "muted";
  $("#upload-text").textContent = `Uploading ${file.name} (${bytes(file.size)})…`;
  xhr.upload.onprogress = (ev) => {
    if (!ev.lengthComputable) return;
    const pct = (100 * ev.loaded) / ev.total;
    const rate = ev.loaded / Math.max(0.001, (Date.now() - started) / 1000);
    $("#upload-bar").style.width = `${pct}%`;
    $("#upload-text").textContent = `Uploading ${file.name}: ${bytes(ev.loaded)} of ${bytes(ev.total)} (${pct.toFixed(0)}%, ${bytes(rate)}/s)`;
  };
  xhr.onerror = () => {
    $("#upload").disabled = false;
    $("#upload-text").className = "error";
    $("#upload-text").textContent = "The upload was cut off: the leader stopped answering. Choose the file and upload again.";
  };
  xhr.onload = () => {
    $("#upload").disabled = false;
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (_) { body = { error: xhr.responseText }; }
    if (xhr.status === 401) return showLogin("The token was refused. Log in again.");
    if (xhr.status !== 200) {
      $("#upload-bar").style.width = "0";
      $("#upload-text").className = "error";
      $("#upload-text").textContent = `Upload refused (${xhr.status}): ${body.error}`;
      return;
    }
    uploaded = body;
    $("#upload-bar").style.width = "100%";
    const secs = (Date.now() - started) / 1000;
    $("#upload-text").textContent = `Upload complete: ${bytes(body.size)} in ${secs.toFixed(1)} s, verified.`;
    const m = body.manifest || {};
    $("#image-info").innerHTML = [["Image", body.image_path], ["Version", m.version], ["Compatible from", m.min_compatible],
      ["Kind", m.kind], ["Size", bytes(body.size)], ["SHA-256", body.sha256]]
      .map(([k, v]) => `<tr><td>${esc(k)}</td><td class="mono">${esc(v)}</td></tr>`).join("");
    $("#image").hidden = false;
    prechecks();
  };
  xhr.open("POST", `/api/upload?name=${encodeURIComponent(name)}`);
  xhr.setRequestHeader("Authorization", `Bearer ${token}`);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.send(file);
}

function request(prechecksOnly) {
  const r = {
    image_path: uploaded.image_path,
    force: $("#opt-force").checked,
    disruptive: $("#opt-disruptive").checked,
    prechecks_only: prechecksOnly,
  };
  const words = (id) => $(id).value.split(/[\s,]+/).filter(Boolean);
  if (words("#opt-se-groups").length) r.se_groups = words("#opt-se-groups");
  if (words("#opt-pause-after").length) r.pause_after = words("#opt-pause-after")[0];
  const parallel = parseInt($("#opt-parallel").value, 10);
  if (parallel > 0) r.max_parallel_ses = parallel;
  if ($("#opt-series").checked) r.se_group_order = "series";
  // Begin starts the plan the checks showed, or is refused if it changed since.
  if (!prechecksOnly && planHash) r.plan_hash = planHash;
  return r;
}

let predicted = [];
let planHash = null;

async function prechecks() {
  if (!uploaded) return;
  $("#begin").disabled = true;
  $("#begin-error").textContent = "";
  let r;
  try { r = await api("POST", "/api/cluster/upgrade", request(true)); } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
    $("#begin-error").textContent = `The leader did not answer: ${e.message}`;
    return;
  }
  const b = r.body;
  planHash = b.plan_hash || null;
  $("#plan-hash").textContent = planHash ? `Plan ${planHash}` : "";
  const checks = b.prechecks || [];
  $("#prechecks tbody").innerHTML = checks.map((c) => `<tr><td>${esc(c.check)}</td><td>${badge(c.result)}</td><td>${esc(c.message)}</td></tr>`).join("");
  predicted = b.virtual_services || [];
  $("#impact tbody").innerHTML = predicted.length ? predicted.map((v) => `<tr><td>${esc(v.name)}</td>
    <td>${v.predicted_disruption ? badge("disrupted") : badge("no downtime", "ok")}</td><td>${esc(v.reason)}</td></tr>`).join("")
    : `<tr><td colspan="3" class="muted">No virtual services are configured.</td></tr>`;
  if (r.status !== 200 || !b.ok) {
    $("#begin-error").textContent = b.error || "A pre-check failed: see above. Fix it (or choose Force if the version check is what failed) and the checks run again.";
    return;
  }
  $("#begin").disabled = isRunning(lastStatus);
}

function confirmBegin() {
  const o = request(false);
  const hit = predicted.filter((v) => v.predicted_disruption).map((v) => v.name);
  $("#confirm-text").innerHTML = `<p>Upgrade the cluster from <b>${esc(clusterVersion)}</b> to <b>${esc(uploaded.manifest.version)}</b>
    from <code>${esc(uploaded.image_path)}</code>.</p>
    <p>The controllers install it and reboot together; this page waits and reconnects while the leader reboots.
    The configuration is read-only until the upgrade ends. Then the SE groups upgrade ${o.se_group_order === "series" ? "one after the other" : "in parallel"},
    ${o.disruptive || o.force ? "<b>all SEs of a group at once, without moving traffic</b>"
      : o.max_parallel_ses > 1 ? `up to ${o.max_parallel_ses} SEs of a group at a time (never two of one virtual service), moving traffic first`
      : "one SE of a group at a time (or each group's own max_parallel_ses), moving traffic first"}.</p>
    <p>${hit.length ? `Virtual services that will lose traffic: <b>${esc(hit.join(", "))}</b>.` : "No virtual service is predicted to lose traffic."}</p>
    ${o.se_groups ? `<p>Only SE groups <b>${esc(o.se_groups.join(", "))}</b>; the others stay on ${esc(clusterVersion)}.</p>` : ""}
    ${o.pause_after ? `<p>SE group <b>${esc(o.pause_after)}</b> first, alone; then the upgrade pauses.</p>` : ""}
    ${o.force ? "<p><b>Forced</b>: version compatibility is not checked.</p>" : ""}`;
  $("#confirm").showModal();
}

async function begin() {
  $("#confirm").close();
  $("#begin").disabled = true;
  $("#begin-error").textContent = "";
  try {
    const r = await api("POST", "/api/cluster/upgrade", request(false));
    if (r.status !== 202) {
      $("#begin-error").textContent = `Not started (${r.status}): ${r.body.error}`;
      // A changed plan: show the new one, to be approved again.
      if (r.status === 409 && /plan changed/.test(r.body.error || "")) prechecks().then(() => {
        $("#begin-error").textContent = `Not started (${r.status}): ${r.body.error}`;
      });
      else $("#begin").disabled = false;
      return;
    }
    renderStatus(r.body);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
    $("#begin-error").textContent = `The leader did not answer: ${e.message}`;
  }
}

async function groupAction(act, group) {
  const path = act === "rollback" ? "/api/cluster/upgrade/rollback" : "/api/cluster/upgrade/resume";
  const body = act === "rollback" ? { se_groups: [group] } : { se_groups: [group], skip_suspended: act === "skip" };
  try {
    const r = await api("POST", path, body);
    if (r.status !== 202) opError(`${act} ${group} refused (${r.status}): ${r.body.error}`);
    else renderStatus(r.body);
  } catch (e) {
    if (e instanceof Unauthorized) return showLogin("The token was refused. Log in again.");
    opError(`The leader did not answer: ${e.message}`);
  }
}

// ---- wiring --------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (ev) => { ev.preventDefault(); login($("#token").value); });
  $("#logout").addEventListener("click", () => { sessionStorage.removeItem("molt-token"); token = ""; showLogin(""); });
  $("#file").addEventListener("change", () => { $("#upload").disabled = !$("#file").files.length; });
  $("#upload").addEventListener("click", upload);
  $("#opt-force").addEventListener("change", prechecks);
  $("#opt-disruptive").addEventListener("change", prechecks);
  $("#opt-parallel").addEventListener("change", prechecks);
  $("#opt-series").addEventListener("change", prechecks);
  $("#opt-se-groups").addEventListener("change", prechecks);
  $("#opt-pause-after").addEventListener("change", prechecks);
  $("#begin").addEventListener("click", confirmBegin);
  $("#confirm-cancel").addEventListener("click", () => $("#confirm").close());
  $("#confirm-go").addEventListener("click", begin);
  $("#op-controls").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-op]");
    if (b) opAction(b.dataset.op, (b.dataset.groups || "").split(" ").filter(Boolean));
  });
  $("#phases").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-act]");
    if (b) groupAction(b.dataset.act, b.dataset.group);
  });
  if (token) login(token); else showLogin("");
});
