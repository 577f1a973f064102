// The status page: polls /status.json (the daemon's status document) and /runs.json (the
// last runs) and renders them with DOM calls and textContent only (names and errors are
// data, never markup).
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fill(id, rows) {
  const body = $(id);
  body.replaceChildren(...rows);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`;
}

function mib(n) {
  return n >= 1024 ? `${(n / 1024).toFixed(1)} GiB` : `${n} MiB`;
}

function when(rfc3339) {
  if (!rfc3339) return "—";
  const t = new Date(rfc3339);
  return isNaN(t) ? rfc3339 : t.toLocaleString();
}

function renderStatus(s) {
  $("version").textContent = s.daemon && s.daemon.version ? `v${s.daemon.version}` : "";
  const state = (s.daemon && s.daemon.state) || "unknown";
  const badge = $("state");
  badge.textContent = state;
  badge.className = `badge ${state}`;
  $("updated").textContent = s.updated_at ? `updated ${when(s.updated_at)}` : "";

  const waiting = $("waiting");
  waiting.hidden = !s.waiting;
  waiting.textContent = s.waiting ? `Runs wait: ${s.waiting}` : "";

  const q = s.queue || {};
  fill("queue", ["queued", "running", "completed", "failed", "cancelled", "pending"].map((k) =>
    el("div", { class: `tile s-${k}`, id: `queue-${k}` }, el("b", {}, q[k] ?? 0), k)));

  const cur = s.current;
  const box = $("current");
  if (cur && cur.run_id) {
    const pct = cur.steps > 0 ? Math.min(100, (100 * cur.step) / cur.steps) : 0;
    const bar = el("div", { class: "bar" }, el("div", { style: `width: ${pct.toFixed(1)}%` }));
    box.replaceChildren(
      el("p", {}, "run ", el("span", { class: "id", id: "current-run" }, cur.run_id), ` started ${when(cur.started_at)}`),
      bar,
      el("p", { id: "progress" }, cur.steps > 0 ? `step ${cur.step} of ${cur.steps} (${pct.toFixed(0)}%)` : "starting (no step reported yet)",
        " · ETA ", cur.eta_seconds !== null && cur.eta_seconds !== undefined ? duration(cur.eta_seconds) : "—"));
  } else {
    box.replaceChildren(el("p", { class: "dim" }, "no run in hand"));
  }

  fill("workers", (s.workers || []).map((w) => el("tr", {},
    el("td", {}, w.slot),
    el("td", { class: `s-${w.state}` }, w.state),
    el("td", {}, `${w.backend} (${w.runtime})`),
    el("td", {}, w.loaded_controls ? w.loaded_controls.join(", ") : "—"),
    el("td", { class: "num" }, w.loads ?? 0),
    el("td", {}, w.gpus === null || w.gpus === undefined ? "all" : w.gpus.length ? w.gpus.join(", ") : "none"),
    el("td", { class: "id" }, w.current ? w.current.run_id : (w.waiting || "—")))));

  renderHosts(s.cluster);

  $("nvml").textContent = s.nvml || "";
  const gpus = s.gpus || [];
  fill("gpus", gpus.length ? gpus.map((g) => el("tr", {},
    el("td", {}, g.index),
    el("td", {}, g.name),
    el("td", {}, `${mib(g.memory_used_mib)} of ${mib(g.memory_total_mib)}`),
    el("td", { class: "num" }, `${g.utilization_pct}%`),
    el("td", { class: "num" }, `${g.temperature_c} °C`),
    el("td", { class: "num" }, `${Number(g.power_w).toFixed(0)} W`))) :
    [el("tr", {}, el("td", { colspan: 6, class: "dim" }, "no GPU figures"))]);

  const stuck = (s.intake && s.intake.stuck) || [];
  $("stuck-section").hidden = stuck.length === 0;
  fill("stuck", stuck.map((e) => el("li", {}, typeof e === "string" ? e : JSON.stringify(e))));
}

// Several hosts on one shared queue (status.json's "cluster", only with [cluster] set):
// every host, a row per GPU slot, with its loaded control set, state and run.
function renderHosts(c) {
  $("hosts-section").hidden = !c;
  if (!c) return;
  const q = c.queue || {};
  $("cluster").textContent = c.connected
    ? `this host: ${c.host_id} · shared queue on ${c.database}: ` +
      ["queued", "running", "completed", "failed", "cancelled"].map((k) => `${q[k] ?? 0} ${k}`).join(", ")
    : `this host: ${c.host_id} · the queue database ${c.database} cannot be reached${c.error ? ` (${c.error})` : ""}`;
  // A host silent for longer than a lease holds nothing any more (its runs move on).
  const lease = c.lease_seconds ?? 90;
  const rows = [];
  for (const h of c.hosts || []) {
    const silent = h.seconds_since_heartbeat > lease;
    const slots = h.slots && h.slots.length ? h.slots : [null];
    slots.forEach((sl, i) => rows.push(el("tr", { id: sl ? `slot-${h.host_id}-${sl.slot}` : `slot-${h.host_id}-none` },
      el("td", { class: "id" }, i ? "" : h.host_id + (h.host_id === c.host_id ? " (this host)" : "")),
      el("td", {}, i ? "" : `v${h.version} pid ${h.pid}`),
      el("td", { class: silent ? "num s-down" : "num" }, i ? "" : `${duration(h.seconds_since_heartbeat)} ago${silent ? " (silent: down?)" : ""}`),
      el("td", {}, sl ? sl.slot : "no worker slot"),
      el("td", {}, sl ? (sl.gpus.length ? sl.gpus.join(", ") : "none") : ""),
      el("td", {}, sl && sl.loaded_controls ? sl.loaded_controls : "—"),
      el("td", { class: sl ? `s-${sl.state}` : "" }, sl ? sl.state : ""),
      el("td", { class: "id" }, sl && sl.run_id ? sl.run_id : "—"))));
  }
  fill("hosts", rows.length ? rows : [el("tr", {}, el("td", { colspan: 8, class: "dim" }, "no host has reported yet"))]);
}

function renderRuns(runs) {
  fill("runs", runs.length ? runs.map((r) => el("tr", { id: `run-${r.id}` },
    el("td", { class: "id" }, r.folder ? el("a", { href: r.folder }, r.id) : r.id),
    el("td", {}, r.name || ""),
    el("td", { class: `s-${r.outcome}` }, r.outcome, r.status !== r.outcome ? ` (now ${r.status})` : ""),
    el("td", {}, when(r.finished_at)),
    el("td", { class: "num" }, r.attempts ?? ""),
    el("td", { class: "err" }, r.error || ""))) :
    [el("tr", {}, el("td", { colspan: 6, class: "dim" }, "no run has finished yet"))]);
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

async function poll() {
  try {
    const [status, runs] = await Promise.all([getJson("/status.json"), getJson("/runs.json")]);
    renderStatus(status);
    renderRuns(runs);
    $("error").hidden = true;
    document.body.dataset.loaded = "1";
  } catch (e) {
    const err = $("error");
    err.hidden = false;
    err.textContent = `cannot reach cosmosd (${e.message}); showing the last figures`;
    $("state").className = "badge stale";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
