// dynastore dashboard: polls this node's own JSON routes once a second and draws the page.
// No libraries and nothing fetched from elsewhere; every name that comes from the cluster is put in
// the page as text (textContent), never as markup.
"use strict";

const POLL_MS = 1000;
const FETCH_TIMEOUT_MS = 3000;
const HISTORY_POINTS = 120; // two minutes of one-second samples
const STALE_MS = 3500;
const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = [
  "#3b6fd8", "#e07b39", "#2f9e6e", "#c4458d", "#8a63d2",
  "#c9a227", "#1aa3b8", "#d2493f", "#6b8e23", "#7a5c43",
];

const state = {
  colors: new Map(), // member name -> colour, kept stable across polls
  ringEpoch: null,
  history: [], // {t, gets, puts, deletes, get95, get99, put95, put99}
  lastCounts: null, // {t, gets, puts, deletes}
  lastOk: 0,
};

function $(id) {
  return document.getElementById(id);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function colorOf(name) {
  if (!state.colors.has(name)) state.colors.set(name, PALETTE[state.colors.size % PALETTE.length]);
  return state.colors.get(name);
}

function swatch(color) {
  const s = el("span", { class: "swatch" });
  s.style.background = color; // CSSOM, which the page's Content-Security-Policy allows
  return s;
}

// --- Fetching ------------------------------------------------------------------------------------

class Refused extends Error {}

async function getJson(path) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  // Against the origin, not the page's address: a page opened as http://user:password@host/... has
  // credentials in its address, and fetch refuses a URL that carries them (the browser sends them anyway).
  const target = new URL(path, window.location.origin).href;
  let response;
  try {
    response = await fetch(target, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "application/json" },
      signal: abort.signal,
    });
  } catch (err) {
    throw new Error(`cannot reach this node for ${path} (${err.name === "AbortError" ? "timed out" : err.message})`);
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 401 || response.status === 403) {
    const reason = (await response.text()).trim();
    const hint =
      response.status === 401
        ? "sign in (reload the page) as a user granted dynastore.status"
        : "the user you signed in as needs the dynastore.status permission";
    throw new Refused(`This node refused ${path} (${response.status}: ${reason}): ${hint}.`);
  }
  if (!response.ok) {
    throw new Error(`${path} answered ${response.status}: ${(await response.text()).trim()}`);
  }
  return response.json();
}

// --- Members -------------------------------------------------------------------------------------

function renderMembers(status) {
  const body = $("members").tBodies[0];
  const rows = [];
  for (const m of status.members) {
    const me = m.name === status.node;
    const up = Boolean(m.reachable);
    const health = el("span", { class: `badge ${up ? "up" : "down"}` }, up ? "up" : "down");
    const name = el("td", {}, swatch(colorOf(m.name)), m.name, me ? el("span", { class: "muted" }, " (this node)") : "");
    const row = el(
      "tr",
      { class: up ? "up" : "down", "data-member": m.name, "data-up": String(up), "data-status": m.status },
      name,
      el("td", {}, `${m.host}:${m.http_port}`),
      el("td", {}, m.status),
      el("td", { class: "health" }, health),
      el("td", { class: "num phi" }, me ? "–" : Number(m.phi).toFixed(2)),
      el("td", { class: "num" }, m.partitions),
      el("td", { class: "num" }, m.hints_pending ?? 0),
    );
    rows.push(row);
  }
  body.replaceChildren(...rows);
  $("node-name").textContent = status.node;
  $("cluster-name").textContent = status.cluster;
  $("ring-version").textContent = status.ring_version;
  $("claimant").textContent = status.claimant ?? "–";
}

// --- Ring ----------------------------------------------------------------------------------------

function wedge(cx, cy, r0, r1, a0, a1) {
  const p = (r, a) => `${(cx + r * Math.cos(a)).toFixed(2)} ${(cy + r * Math.sin(a)).toFixed(2)}`;
  const large = a1 - a0 > Math.PI ? 1 : 0;
  return `M ${p(r1, a0)} A ${r1} ${r1} 0 ${large} 1 ${p(r1, a1)} L ${p(r0, a1)} A ${r0} ${r0} 0 ${large} 0 ${p(r0, a0)} Z`;
}

function drawRingBand(root, owners, r0, r1, done) {
  const q = owners.length;
  for (let i = 0; i < q; i++) {
    const a0 = (i / q) * 2 * Math.PI - Math.PI / 2;
    const a1 = ((i + 1) / q) * 2 * Math.PI - Math.PI / 2;
    const path = svg("path", {
      d: wedge(150, 150, r0, r1, a0, a1),
      fill: colorOf(owners[i]),
      stroke: "#fff",
      "stroke-width": q > 128 ? 0.3 : 1,
      "data-partition": i,
      "data-owner": owners[i],
    });
    if (done && !done.has(i)) path.setAttribute("fill-opacity", "0.35");
    const title = svg("title");
    title.textContent = `partition ${i}: ${owners[i]}`;
    path.append(title);
    root.append(path);
  }
}

function renderRing(ring) {
  if (ring.epoch === state.ringEpoch) return;
  state.ringEpoch = ring.epoch;
  const root = $("ring");
  root.replaceChildren();
  const moving = Array.isArray(ring.next_owners);
  drawRingBand(root, ring.owners, moving ? 70 : 80, moving ? 115 : 140, null);
  if (moving) {
    // The ring being moved to, outside: faint where the partition's new owner has not received it yet.
    const done = new Set(ring.done.map(([p, n]) => `${p}/${n}`));
    const arrived = new Set();
    ring.next_owners.forEach((owner, p) => {
      if (owner === ring.owners[p] || done.has(`${p}/${owner}`)) arrived.add(p);
    });
    drawRingBand(root, ring.next_owners, 120, 145, arrived);
  }
  const label = svg("text", { x: 150, y: 146, "text-anchor": "middle", "font-size": 22, "font-weight": 700 });
  label.textContent = `${ring.ring_size}`;
  const sub = svg("text", { x: 150, y: 166, "text-anchor": "middle", "font-size": 11, fill: "#667085" });
  sub.textContent = moving ? "partitions (outer: next)" : "partitions";
  root.append(label, sub);

  const counts = new Map();
  for (const o of ring.owners) counts.set(o, (counts.get(o) || 0) + 1);
  const names = Object.keys(ring.members).sort();
  $("ring-legend").replaceChildren(
    ...names.map((n) => el("li", {}, swatch(colorOf(n)), `${n}: ${counts.get(n) || 0}`)),
  );
  $("ring-caption").textContent = `n_val ${ring.n_val}, version ${ring.version}${moving ? ", moving" : ""}`;
}

// --- Charts --------------------------------------------------------------------------------------

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function drawChart(id, legendId, series, unit) {
  const root = $(id);
  const W = 480, H = 200, left = 44, right = 8, top = 8, bottom = 20;
  root.replaceChildren();
  const points = state.history;
  let max = 0;
  for (const s of series) for (const p of points) max = Math.max(max, p[s.key] || 0);
  max = niceMax(max);
  for (let i = 0; i <= 4; i++) {
    const y = top + ((H - top - bottom) * i) / 4;
    root.append(svg("line", { class: "grid", x1: left, x2: W - right, y1: y, y2: y }));
    const label = svg("text", { class: "axis", x: left - 4, y: y + 3, "text-anchor": "end" });
    const v = max * (1 - i / 4);
    label.textContent = v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
    root.append(label);
  }
  const span = HISTORY_POINTS - 1;
  const now = points.length ? points[points.length - 1].t : 0;
  const xOf = (t) => left + (W - left - right) * (1 - Math.min(span, (now - t) / 1000) / span);
  const yOf = (v) => top + (H - top - bottom) * (1 - (v || 0) / max);
  for (const label of [["-2 min", left], ["now", W - right]]) {
    const t = svg("text", { class: "axis", x: label[1], y: H - 5, "text-anchor": label[0] === "now" ? "end" : "start" });
    t.textContent = label[0];
    root.append(t);
  }
  for (const s of series) {
    if (points.length < 2) break;
    const d = points.map((p, i) => `${i ? "L" : "M"} ${xOf(p.t).toFixed(1)} ${yOf(p[s.key]).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, stroke: s.color, "data-series": s.key }));
  }
  const last = points[points.length - 1] || {};
  $(legendId).replaceChildren(
    ...series.map((s) => el("li", {}, swatch(s.color), `${s.label}: ${(last[s.key] || 0).toFixed(s.digits)} ${unit}`)),
  );
}

function recordStats(stats) {
  const t = Date.now();
  const counts = {
    t,
    gets: stats.node_gets_total || 0,
    puts: stats.node_puts_total || 0,
    deletes: stats.node_deletes_total || 0,
  };
  const ms = (name) => (stats[name] || 0) / 1000; // the node reports microseconds
  const previous = state.lastCounts;
  state.lastCounts = counts;
  if (previous === null) return;
  const seconds = Math.max(0.001, (t - previous.t) / 1000);
  // A restarted node starts its counters again: a negative rate is no rate.
  const rate = (k) => Math.max(0, (counts[k] - previous[k]) / seconds);
  state.history.push({
    t,
    gets: rate("gets"),
    puts: rate("puts"),
    deletes: rate("deletes"),
    get95: ms("node_get_fsm_time_95"),
    get99: ms("node_get_fsm_time_99"),
    put95: ms("node_put_fsm_time_95"),
    put99: ms("node_put_fsm_time_99"),
  });
  while (state.history.length > HISTORY_POINTS) state.history.shift();
}

function renderCharts() {
  drawChart("throughput", "throughput-legend", [
    { key: "gets", label: "gets", color: "#3b6fd8", digits: 1 },
    { key: "puts", label: "puts", color: "#e07b39", digits: 1 },
    { key: "deletes", label: "deletes", color: "#8a63d2", digits: 1 },
  ], "/s");
  drawChart("latency", "latency-legend", [
    { key: "get95", label: "get p95", color: "#7fa3ea", digits: 2 },
    { key: "get99", label: "get p99", color: "#2a4fa0", digits: 2 },
    { key: "put95", label: "put p95", color: "#f0b088", digits: 2 },
    { key: "put99", label: "put p99", color: "#b0541c", digits: 2 },
  ], "ms");
}

// --- Transfers, hints, anti-entropy --------------------------------------------------------------

function facts(id, pairs) {
  const items = [];
  for (const [k, v] of pairs) items.push(el("dt", {}, k), el("dd", {}, v));
  $(id).replaceChildren(...items);
}

function renderTransfers(status) {
  const t = status.transition;
  const box = $("transition");
  if (!t) {
    box.replaceChildren(el("p", { class: "muted" }, "No ring transition: every partition is where the ring says."));
  } else {
    const bar = el("div", { class: "bar" }, el("div"));
    bar.firstChild.style.width = `${(100 * t.partitions_switched) / Math.max(1, t.partitions_total)}%`;
    box.replaceChildren(
      el("p", {}, `Ring moving: ${t.partitions_switched} of ${t.partitions_total} partitions switched, `
        + `${t.transfers_pending} transfers pending (to ${t.receivers.join(", ") || "–"}).`),
      bar,
    );
  }
  const rows = (status.receiving || []).map((r) =>
    el("tr", { "data-partition": r.partition },
      el("td", { class: "num" }, r.partition),
      el("td", {}, r.sources.join(", ")),
      el("td", { class: "num" }, r.keys_received),
      el("td", {}, r.active ? "streaming" : "waiting")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { class: "muted", colSpan: 4 }, "This node receives nothing.")));
  $("receiving").tBodies[0].replaceChildren(...rows);
}

function renderHints(status, stats) {
  const pairs = [["pending here", String(status.hints_pending)]];
  for (const m of status.members) if (m.hints_pending) pairs.push([`for ${m.name}`, String(m.hints_pending)]);
  if (stats) {
    pairs.push(["written (total)", String(stats.hinted_writes_total ?? "–")]);
    pairs.push(["delivered (total)", String(stats.hints_delivered_total ?? "–")]);
  }
  facts("hints", pairs);
}

function renderAae(status) {
  const a = status.anti_entropy;
  const ages = Object.values(a.last_exchange_age_s || {});
  const oldest = ages.length ? `${Math.max(...ages).toFixed(1)} s ago` : "none yet";
  const newest = ages.length ? `${Math.min(...ages).toFixed(1)} s ago` : "none yet";
  facts("aae", [
    ["trees ready", `${a.trees_ready} of ${a.trees}`],
    ["exchanges", String(a.exchanges)],
    ["keys repaired", String(a.keys_repaired)],
    ["tree builds", String(a.tree_builds)],
    ["latest exchange", newest],
    ["oldest partition's exchange", oldest],
    ["background rate", `${a.background_rate_per_s} /s (${a.background_deferred} deferred)`],
    ["foreground p99 / limit", `${a.foreground_p99_ms ?? "–"} / ${a.background_latency_limit_ms} ms`],
  ]);
}

// --- The loop ------------------------------------------------------------------------------------

function showProblem(messages) {
  const box = $("problem");
  if (!messages.length) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.hidden = false;
  box.textContent = [...new Set(messages)].join(" ");
}

async function poll() {
  const [status, stats, ring] = await Promise.allSettled([
    getJson("/admin/status"),
    getJson("/stats"),
    getJson("/ring"),
  ]);
  const problems = [];
  for (const r of [status, stats, ring]) if (r.status === "rejected") problems.push(r.reason.message);
  const statsValue = stats.status === "fulfilled" ? stats.value : null;
  if (status.status === "fulfilled") {
    renderMembers(status.value);
    renderTransfers(status.value);
    renderHints(status.value, statsValue);
    renderAae(status.value);
  }
  if (ring.status === "fulfilled") renderRing(ring.value);
  if (statsValue) {
    recordStats(statsValue);
    renderCharts();
  }
  showProblem(problems);
  if (!problems.length) state.lastOk = Date.now();
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}

function renderFreshness() {
  const box = $("updated");
  if (!state.lastOk) return;
  const age = Date.now() - state.lastOk;
  box.textContent = `updated ${new Date(state.lastOk).toLocaleTimeString()}`;
  box.classList.toggle("stale", age > STALE_MS);
  // What is shown is old: say so, and dim it.
  document.body.classList.toggle("stale", age > STALE_MS);
  if (age > STALE_MS) box.textContent += ` (no fresh data for ${Math.round(age / 1000)} s)`;
}

async function loop() {
  const started = Date.now();
  try {
    await poll();
  } catch (err) {
    showProblem([`dashboard error: ${err.message}`]);
  }
  renderFreshness();
  setTimeout(loop, Math.max(0, POLL_MS - (Date.now() - started)));
}

loop();
