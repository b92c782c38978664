// The Infer-OS dashboard: reads /v1/dashboard every second, keeps the last two minutes in
// memory and draws them as SVG polylines. Its two controls send POST /v1/policy as JSON
// from this origin (with the admin token when one is typed in), after a confirmation.
"use strict";

const HISTORY = 120;  // points kept per series: two minutes at one a second
const NOT_MEASURED = "not measured";
const COLORS = ["#3366cc", "#dc3912", "#109618"];
const history = [];   // {t, ttft50, ttft95, tpot, agg, stream, inflight, batch, queue}
let latest = null;

const $ = (id) => document.getElementById(id);

function shown(value, unit = "", digits = 1) {
  if (value === null || value === undefined) return NOT_MEASURED;
  return Number(value).toFixed(digits) + unit;
}

function setText(id, text) { $(id).textContent = text; }

function chart(id, keys) {
  const svg = $(id);
  const values = history.flatMap((p) => keys.map((k) => p[k])).filter((v) => v !== null);
  const top = Math.max(1e-9, ...values) * 1.1;
  svg.replaceChildren();
  keys.forEach((key, i) => {
    const points = history
      // the newest point at the right edge, one step per second to the left
      .map((p, x) => (p[key] === null ? null
        : `${300 - (history.length - 1 - x) * (300 / (HISTORY - 1))},${100 - (p[key] / top) * 100}`))
      .filter((p) => p !== null);
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.dataset.series = key;
    line.dataset.count = String(points.length);
    svg.appendChild(line);
  });
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "2");
  label.setAttribute("y", "8");
  label.textContent = values.length ? `max ${(top / 1.1).toFixed(1)}` : NOT_MEASURED;
  svg.appendChild(label);
}

function rows(tbody, items) {
  const body = $(tbody).querySelector("tbody");
  body.replaceChildren(...items.map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      if (typeof cell === "object" && cell !== null) {
        td.textContent = cell.text;
        td.className = cell.cls;
      } else {
        td.textContent = String(cell);
      }
      tr.appendChild(td);
    }
    return tr;
  }));
}

function render(d) {
  const status = d.failsafe.passthrough ? "passthrough" : "ok";
  $("status").textContent = d.failsafe.passthrough
    ? (d.failsafe.user_passthrough ? "passthrough (switched on)" : "passthrough (fail-safe)")
    : "optimizing";
  $("status").className = `badge ${status}`;
  const b = d.backend;
  setText("backend", `${b.kind || "backend"} ${b.version || ""} · ${b.model || "no model"} · ` +
          `${b.device || "device not reported"}`);
  setText("updated", new Date(d.t * 1000).toLocaleTimeString());
  setText("ttft-p50", shown(d.latency.ttft_p50_ms, " ms", 0));
  setText("ttft-p95", shown(d.latency.ttft_p95_ms, " ms", 0));
  setText("tpot", shown(d.latency.tpot_p50_ms, " ms"));
  setText("agg-tps", shown(d.throughput.aggregate_tps));
  setText("stream-tps", shown(d.throughput.stream_tps));
  setText("in-flight", String(d.requests.in_flight));
  const s = d.scheduler;
  setText("batch", s ? shown(s.batch_occupancy, "", 2) + (s.max_batch ? ` of ${s.max_batch}` : "") : NOT_MEASURED);
  setText("queue", s ? shown(s.queue_depth, "", 0) : NOT_MEASURED);
  setText("spec-accept", shown(d.quality.spec_accept, "", 2));
  setText("delta-ppl", shown(d.quality.delta_ppl_est, "", 3));
  setText("hit-rate", d.kv.prefix_hit_rate === null ? NOT_MEASURED : `${(d.kv.prefix_hit_rate * 100).toFixed(0)}%`);
  setText("policy-version", `v${d.policy.version}`);
  setText("policy-profile", `${d.policy.profile} · ${d.policy.mode}`);
  setText("failsafe", d.failsafe.reason ? `tripped: ${d.failsafe.reason}` :
          `ok (trips ${d.failsafe.trips}, heartbeat ${d.failsafe.heartbeat_age_ms} ms)`);
  setText("window", String(d.window_s));
  const toggle = $("passthrough-toggle");
  toggle.disabled = false;
  toggle.dataset.mode = d.policy.mode;
  toggle.textContent = d.policy.mode === "passthrough" ? "Resume optimizing" : "Switch to passthrough";
  if (document.activeElement !== $("profile-select")) $("profile-select").value = d.policy.profile;

  rows("requests", d.requests.by_route_model.map((r) => [r.route, r.model, r.requests, r.errors]));
  rows("kv", ["L0", "L1", "L2", "L3"].map((level) => [level,
    d.kv.tokens[level] ?? NOT_MEASURED,
    d.kv.bytes[level] === undefined ? NOT_MEASURED : (d.kv.bytes[level] / 1048576).toFixed(2)]));
  const keys = Object.entries(d.policy.keys);
  setText("policy-counts", Object.entries(d.policy.counts).map(([k, n]) => `${n} ${k}`).join(", "));
  rows("policy-keys", keys.map(([key, e]) => [key, {text: e.status, cls: e.status},
    e.in_effect === null || e.in_effect === undefined ? "–" : JSON.stringify(e.in_effect), e.reason || ""]));
  $("events").replaceChildren(...d.events.slice().reverse().map((e) => {
    const li = document.createElement("li");
    const { t, event, ...rest } = e;
    li.textContent = `${new Date(t * 1000).toLocaleTimeString()} ${event} ${JSON.stringify(rest)}`;
    return li;
  }));

  history.push({t: d.t, ttft50: d.latency.ttft_p50_ms, ttft95: d.latency.ttft_p95_ms,
                tpot: d.latency.tpot_p50_ms, agg: d.throughput.aggregate_tps,
                stream: d.throughput.stream_tps, inflight: d.requests.in_flight,
                batch: s ? s.batch_occupancy : null, queue: s ? s.queue_depth : null});
  while (history.length > HISTORY) history.shift();
  chart("chart-ttft", ["ttft50", "ttft95"]);
  chart("chart-tps", ["agg", "stream"]);
  chart("chart-tpot", ["tpot"]);
  chart("chart-load", ["inflight", "batch", "queue"]);
}

async function poll() {
  try {
    const answer = await fetch("/v1/dashboard", {cache: "no-store"});
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    latest = await answer.json();
    render(latest);
  } catch (error) {
    $("status").textContent = `unreachable: ${error.message}`;
    $("status").className = "badge down";
  }
}

async function sendPolicy(patch, what) {
  if (!window.confirm(`${what}?`)) return;
  const headers = {"Content-Type": "application/json"};
  const token = $("token").value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const answer = await fetch("/v1/policy", {method: "POST", headers, body: JSON.stringify(patch)});
    const body = await answer.json().catch(() => ({}));
    setText("message", answer.ok ? `${what}: done (policy v${body.version})`
      : `${what}: refused, ${answer.status} ${(body.error && body.error.message) || ""}`);
  } catch (error) {
    setText("message", `${what}: failed, ${error.message}`);
  }
  await poll();
}

document.addEventListener("DOMContentLoaded", () => {
  $("passthrough-toggle").addEventListener("click", () => {
    const on = $("passthrough-toggle").dataset.mode !== "passthrough";
    sendPolicy({mode: on ? "passthrough" : "optimize"},
               on ? "Switch to passthrough (forward only, change nothing)" : "Resume optimizing");
  });
  $("profile-apply").addEventListener("click", () => {
    const profile = $("profile-select").value;
    sendPolicy({profile}, `Apply the ${profile} profile`);
  });
  poll();
  setInterval(poll, 1000);
});
