// segsync dashboard: polls the node's JSON endpoints and redraws. No dependencies.
"use strict";

const STATE_EVERY_MS = 2000;
const LOCAL_MAP_EVERY_MS = 2000;
const PEER_MAP_EVERY_MS = 10000;  // a peer map costs the peer requests

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function age(then, now) {
  if (then === null || then === undefined) return "never";
  const s = now - then;
  if (s < 0) return "in the future";
  if (s < 120) return Math.round(s) + "s ago";
  if (s < 7200) return Math.round(s / 60) + "m ago";
  if (s < 172800) return Math.round(s / 3600) + "h ago";
  return Math.round(s / 86400) + "d ago";
}

async function getJSON(url) {
  const r = await fetch(url, {credentials: "same-origin", cache: "no-store"});
  if (r.status === 401) { location.reload(); throw new Error("logged out"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
  return body;
}

function showError(where, e) {
  const p = document.getElementById("fetch-error");
  if (e) { p.textContent = where + ": " + e.message; p.hidden = false; }
  else { p.hidden = true; }
}

function renderPeers(state) {
  const now = state.time;
  const tbody = document.querySelector("#peers tbody");
  const peers = state.peers || [];
  const deferred = peers.some(p => p.deferred !== undefined && p.deferred !== null);
  document.querySelectorAll("#peers .deferred").forEach(th => th.hidden = !deferred);
  document.getElementById("no-peers").hidden = peers.length > 0;
  tbody.replaceChildren();
  for (const p of peers) {
    const tr = el("tr", {"data-peer": p.url});
    const reach = p.reachable === null || p.reachable === undefined ? "unknown" : (p.reachable ? "yes" : "NO");
    const result = p.round_ok === null || p.round_ok === undefined ? "-" : (p.round_ok ? "ok" : "FAILED");
    const cells = [
      ["peer", p.name && p.name !== p.url ? `${p.name} (${p.url})` : p.url],
      ["kind", p.kind || "-"], ["reachable", reach],
      ["last-push", age(p.last_push, now)], ["last-round", age(p.last_round, now)],
      ["result", result], ["queue", String(p.queue_depth ?? "-")],
      ["missing", String(p.missing ?? "-")],
    ];
    for (const [cls, text] of cells) {
      const td = el("td", {"class": cls}, text);
      if (text === "NO" || text === "FAILED") td.classList.add("bad");
      tr.append(td);
    }
    if (deferred) tr.append(el("td", {"class": "deferred"}, String(p.deferred ?? "-")));
    const errors = [];
    if (p.reach_error) errors.push("unreachable: " + p.reach_error);
    if (p.push_error) errors.push("last push failed: " + p.push_error);
    if (p.round_error) errors.push("last round failed: " + p.round_error);
    if (p.push_dropped) errors.push(p.push_dropped + " pushes dropped (queue full)");
    tr.append(el("td", {"class": "errors"}, errors.join("; ")));
    tbody.append(tr);
  }
}

function renderRecorded(state) {
  const pairs = state.recorded_pairs || [];
  document.getElementById("recorded").hidden = pairs.length === 0;
  const tbody = document.querySelector("#recorded-pairs tbody");
  tbody.replaceChildren();
  for (const p of pairs) {
    const key = p.channel + "/" + p.quality;
    const tr = el("tr", {"data-pair": key});
    for (const [cls, text] of [
      ["pair", key], ["declared", p.declared ? "yes" : "no"],
      ["recording", p.recording ? "yes" : "no"],
      ["last-local", p.last_local === null || p.last_local === undefined
        ? "none yet" : age(p.last_local, state.time)],
    ]) tr.append(el("td", {"class": cls}, text));
    tbody.append(tr);
  }
}

function renderBandwidth(limits) {
  const tbody = document.querySelector("#bandwidth tbody");
  const mb = v => (v / 1e6).toFixed(2) + " MB/s";
  tbody.replaceChildren();
  for (const b of limits) {
    const tr = el("tr", {"data-direction": b.direction});
    for (const [cls, text] of [
      ["direction", b.direction], ["limit", b.limit === null ? "no limit" : mb(b.limit)],
      ["live-rate", mb(b.live_rate)], ["catchup-rate", mb(b.catchup_rate)],
      ["live-waited", b.live_waited.toFixed(1) + " s"],
      ["catchup-waited", b.catchup_waited.toFixed(1) + " s"],
    ]) tr.append(el("td", {"class": cls}, text));
    tbody.append(tr);
  }
  const problem = document.getElementById("bandwidth-problem");
  const why = limits.length ? limits[0].problem : null;
  problem.hidden = !why;
  problem.textContent = why ? "limits not changed: " + why : "";
}

function renderSparkline(latencies) {
  const line = document.querySelector("#sparkline polyline");
  const summary = document.getElementById("latency-summary");
  if (!latencies.length) { line.setAttribute("points", ""); summary.textContent = "(no pushes yet)"; return; }
  const values = latencies.map(x => x[1]);
  const max = Math.max(...values, 0.001);
  const step = latencies.length > 1 ? 600 / (latencies.length - 1) : 0;
  line.setAttribute("points", values.map((v, i) =>
    (i * step).toFixed(1) + "," + (58 - 56 * v / max).toFixed(1)).join(" "));
  const sorted = [...values].sort((a, b) => a - b);
  const ms = v => (v * 1000).toFixed(0) + " ms";
  summary.textContent = `last ${values.length}: p50 ${ms(sorted[Math.floor(sorted.length / 2)])}, max ${ms(max)}, latest ${ms(values[values.length - 1])}`;
}

function renderViews(state) {
  const select = document.getElementById("view");
  const wanted = [["", "this node"]];
  for (const p of state.peers || []) {
    const name = p.name || p.url;
    wanted.push(["peer=" + encodeURIComponent(name), "peer " + name]);
    wanted.push(["diff=1&peer=" + encodeURIComponent(name), "this node vs " + name]);
  }
  const have = [...select.options].map(o => o.value).join("\n");
  if (have === wanted.map(w => w[0]).join("\n")) return;
  const current = select.value;
  select.replaceChildren(...wanted.map(([v, t]) => el("option", {value: v}, t)));
  select.value = wanted.some(w => w[0] === current) ? current : "";
}

async function pollState() {
  try {
    const state = await getJSON("/dashboard/state");
    document.getElementById("node-name").textContent = state.node || "";
    document.getElementById("node-summary").textContent =
      `${state.url} - ${state.segments} segments` +
      (state.chat_batches != null ? ` - ${state.chat_batches} chat batches - ${state.extras_files} extras files` : "") +
      ` - updated ${new Date(state.time * 1000).toISOString()}`;
    document.getElementById("node-summary").dataset.segments = state.segments;
    renderPeers(state);
    renderRecorded(state);
    renderSparkline(state.push_latencies || []);
    renderBandwidth(state.bandwidth || []);
    renderViews(state);
    showError();
  } catch (e) { showError("state", e); }
}

function renderMaps(data) {
  const root = document.getElementById("maps");
  document.getElementById("legend-node").hidden = data.diff;
  document.getElementById("legend-diff").hidden = !data.diff;
  root.dataset.view = data.diff ? "diff" : data.node;
  const seen = new Set();
  for (const m of data.maps) {
    const key = m.channel + "/" + m.quality;
    seen.add(key);
    let section = root.querySelector(`section[data-pair="${CSS.escape(key)}"]`);
    if (!section) {
      section = el("section", {"class": "map", "data-pair": key});
      section.append(el("h3", {}, key));
      root.append(section);
    }
    const rows = [...section.querySelectorAll(".row")];
    m.hours.forEach((hour, i) => {
      let row = rows[i];
      if (row && row.dataset.hour === hour && row.dataset.cells === m.rows[i]) return;
      const fresh = el("div", {"class": "row", "data-hour": hour, "data-cells": m.rows[i]});
      fresh.append(el("span", {"class": "hour"}, hour));
      [...m.rows[i]].forEach((code, minute) => fresh.append(
        el("span", {"class": "c-" + code, "title": `${hour}:${String(minute).padStart(2, "0")} ${code}`})));
      if (row) row.replaceWith(fresh); else section.append(fresh);
    });
    rows.slice(m.hours.length).forEach(r => r.remove());
  }
  root.querySelectorAll("section.map").forEach(s => { if (!seen.has(s.dataset.pair)) s.remove(); });
  document.getElementById("coverage-status").textContent =
    data.maps.length ? `as of ${data.now}` : "nothing held in this window";
}

let mapTimer = null;
async function pollMaps() {
  clearTimeout(mapTimer);
  const view = document.getElementById("view").value;
  const hours = document.getElementById("hours").value || "24";
  try {
    renderMaps(await getJSON("/dashboard/coverage?hours=" + encodeURIComponent(hours) + (view ? "&" + view : "")));
    showError();
  } catch (e) { showError("coverage", e); }
  mapTimer = setTimeout(pollMaps, view ? PEER_MAP_EVERY_MS : LOCAL_MAP_EVERY_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("view").addEventListener("change", () => {
    document.getElementById("maps").replaceChildren(); pollMaps(); });
  document.getElementById("hours").addEventListener("change", pollMaps);
  document.getElementById("coverage-form").addEventListener("submit", e => { e.preventDefault(); pollMaps(); });
  pollState();
  setInterval(pollState, STATE_EVERY_MS);
  pollMaps();
});
