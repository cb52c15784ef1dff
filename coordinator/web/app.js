// carryon dashboard: polls api/status and draws everything itself (no
// library, no external URL). Untrusted strings (device names, ban reasons
// come from volunteers) only ever go through textContent.
"use strict";

const POLL_MS = 1000;
const $ = (id) => document.getElementById(id);

function setText(id, v) {
  const el = $(id);
  if (el) el.textContent = v;
}

function fmtNum(x, digits) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  return x.toFixed(digits);
}

function fmtInt(x) {
  return (x === null || x === undefined) ? "–" : Math.round(x).toLocaleString("en-US");
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function fmtSI(x) {
  if (!isFinite(x)) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-2 || a >= 1e5)) return x.toExponential(2);
  return Number(x.toPrecision(4)).toString();
}

function shortID(s) {
  return s && s.length > 16 ? s.slice(0, 8) + "…" + s.slice(-6) : (s || "–");
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

// niceTicks returns about n round tick values covering [lo, hi].
function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(v);
  return out;
}

// drawChart plots series [{points: [[x, y]...], color, dash, dots, axis}] on
// canvas; axis "right" series get their own scale on the right.
function drawChart(canvas, series, xLabel) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const g = canvas.getContext("2d");
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const css = getComputedStyle(document.documentElement);
  const muted = css.getPropertyValue("--muted").trim() || "#666";
  const line = css.getPropertyValue("--line").trim() || "#ddd";
  const pad = { l: 56, r: 56, t: 10, b: 30 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const all = series.flatMap((s) => s.points);
  g.font = "11px system-ui, sans-serif";
  if (all.length === 0) {
    g.fillStyle = muted;
    g.fillText("no data yet", pad.l + pw / 2 - 30, pad.t + ph / 2);
    return;
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  const yRange = (side) => {
    const ys = series.filter((s) => (s.axis || "left") === side).flatMap((s) => s.points.map((p) => p[1]));
    if (ys.length === 0) return null;
    let lo = Math.min(...ys), hi = Math.max(...ys);
    if (hi === lo) { lo -= Math.abs(lo) * 0.1 + 1e-9; hi += Math.abs(hi) * 0.1 + 1e-9; }
    const m = (hi - lo) * 0.05;
    return [lo - m, hi + m];
  };
  const ranges = { left: yRange("left"), right: yRange("right") };
  const X = (x) => pad.l + (x - x0) / (x1 - x0) * pw;
  const Y = (y, side) => { const r = ranges[side]; return pad.t + (1 - (y - r[0]) / (r[1] - r[0])) * ph; };
  g.strokeStyle = line;
  g.fillStyle = muted;
  g.lineWidth = 1;
  for (const t of niceTicks(x0, x1, 6)) {
    const x = X(t);
    g.beginPath(); g.moveTo(x, pad.t); g.lineTo(x, pad.t + ph); g.stroke();
    g.fillText(fmtSI(t), x - 10, pad.t + ph + 14);
  }
  g.fillText(xLabel, pad.l + pw / 2 - 12, h - 3);
  for (const side of ["left", "right"]) {
    const r = ranges[side];
    if (!r) continue;
    const color = series.find((s) => (s.axis || "left") === side).color;
    for (const t of niceTicks(r[0], r[1], 5)) {
      const y = Y(t, side);
      if (side === "left") {
        g.strokeStyle = line;
        g.beginPath(); g.moveTo(pad.l, y); g.lineTo(pad.l + pw, y); g.stroke();
      }
      g.fillStyle = ranges.right ? color : muted;
      g.fillText(fmtSI(t), side === "left" ? 4 : pad.l + pw + 6, y + 4);
    }
  }
  for (const s of series) {
    if (s.points.length === 0) continue;
    const side = s.axis || "left";
    g.strokeStyle = s.color;
    g.fillStyle = s.color;
    g.lineWidth = 1.8;
    g.setLineDash(s.dash || []);
    g.beginPath();
    s.points.forEach((p, i) => (i ? g.lineTo(X(p[0]), Y(p[1], side)) : g.moveTo(X(p[0]), Y(p[1], side))));
    g.stroke();
    g.setLineDash([]);
    if (s.dots) {
      for (const p of s.points) { g.beginPath(); g.arc(X(p[0]), Y(p[1], side), 3, 0, 2 * Math.PI); g.fill(); }
    }
  }
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function render(s) {
  const phase = $("phase");
  phase.textContent = s.phase;
  phase.className = "phase " + s.phase;
  const err = $("error");
  err.hidden = !s.error;
  err.textContent = s.error || "";
  setText("coord-peer", shortID(s.coordinator.peer));
  $("coord-peer").title = s.coordinator.peer || "";
  setText("coord-base", shortID(s.coordinator.base));
  $("coord-base").title = s.coordinator.base;
  setText("coord-codec", s.coordinator.codec);

  const j = s.job;
  setText("job-id", j.id || "–");
  setText("chunks-done", fmtInt(j.chunks_done));
  setText("chunks-total", fmtInt(j.chunks_total));
  setText("chunks-leased", fmtInt(j.chunks_leased));
  setText("chunks-left", fmtInt(j.chunks_left));
  setText("chunks-verifying", fmtInt(j.chunks_verifying));
  $("chunks-bar").style.width = (j.chunks_total ? 100 * j.chunks_done / j.chunks_total : 0) + "%";
  setText("bytes", fmtBytes(j.bytes_received));
  setText("cache-hits", fmtInt(j.cache_hits));
  setText("job-tokens", fmtInt(j.tokens));
  const v = j.verify;
  setText("v-sampled", fmtInt(v.sampled));
  setText("v-verified", fmtInt(v.verified));
  setText("v-disagree", fmtInt(v.disagreements));
  setText("v-bans", fmtInt(v.bans));
  setText("v-dropped", fmtInt(v.dropped));
  setText("v-extra", (100 * j.extra_compute_fraction).toFixed(1) + "%");
  const dv = j.data || {};
  setText("data-read", dv.format ? fmtInt(dv.records_read) : "–");
  setText("data-used", dv.format ? fmtInt(dv.records_used) : "–");
  setText("data-cut", dv.format ? fmtInt(dv.records_cut) : "–");
  setText("data-dropped", dv.format ? fmtInt(dv.records_dropped) : "–");

  const nodes = s.nodes || [];
  setText("node-count", String(nodes.length));
  setText("node-eligible", String(nodes.filter((n) => n.eligible).length));
  setText("node-banned", String(nodes.filter((n) => n.banned).length));
  setText("peer-count", String(s.coordinator.connected_peers));
  const nb = $("nodes").tBodies[0];
  nb.replaceChildren();
  for (const n of nodes) {
    const tr = document.createElement("tr");
    if (n.banned) tr.className = "banned";
    tr.dataset.peer = n.peer;
    cell(tr, shortID(n.peer)).title = n.peer;
    cell(tr, n.device || "–");
    cell(tr, (n.bases || []).map((b) => b.name + " " + (b.hash || "").slice(0, 8)).join(", ") || "–");
    cell(tr, fmtSI(n.tokens_per_sec || n.advert_tokens_per_sec), "num");
    cell(tr, n.leases + " / " + n.lease_cap, "num");
    cell(tr, fmtInt(n.chunks), "num");
    cell(tr, fmtInt(n.verified), "num");
    cell(tr, fmtInt(n.failures), "num");
    cell(tr, (100 * n.sampling_rate).toFixed(0) + "% (" + fmtInt(n.clean || 0) + " clean" + (n.suspect ? ", suspect" : "") + ")", "num");
    const state = n.banned ? "banned: " + (n.ban_reason || "") : n.eligible ? "eligible" : n.in_job ? "idle" : "seen";
    cell(tr, state);
    nb.appendChild(tr);
  }

  const t = s.training;
  setText("train-step", fmtInt(t.step));
  setText("train-total", fmtInt(t.total_steps));
  setText("train-lr", t.loss === null ? "–" : fmtSI(t.lr));
  setText("train-tps", t.loss === null ? "–" : fmtSI(t.tokens_per_sec));
  setText("latest-loss", fmtNum(t.loss, 4));
  $("latest-loss").dataset.value = t.loss === null ? "" : String(t.loss);
  setText("val-loss", fmtNum(t.val_loss, 4));
  $("val-loss").dataset.value = t.val_loss === null ? "" : String(t.val_loss);
  setText("val-base-loss", fmtNum(t.val_base_loss, 4));
  drawChart($("loss-chart"), [
    { points: t.steps.map((p) => [p.step, p.loss]), color: cssVar("--train") },
    { points: t.evals.map((p) => [p.step, p.loss]), color: cssVar("--val"), dots: true },
    { points: t.evals.map((p) => [p.step, p.base_loss]), color: cssVar("--base"), dash: [5, 4], dots: true },
  ], "step");
  drawChart($("lr-chart"), [
    { points: t.steps.map((p) => [p.step, p.lr]), color: cssVar("--lr") },
    { points: t.steps.map((p) => [p.step, p.tokens_per_sec]), color: cssVar("--tps"), axis: "right" },
  ], "step");

  const vs = s.versions || [];
  setText("version-count", String(vs.length));
  const latest = vs.length ? vs[vs.length - 1] : null;
  setText("latest-cid", latest ? latest.cid : "–");
  setText("latest-version-step", latest ? fmtInt(latest.step) : "–");
  const vb = $("versions").tBodies[0];
  vb.replaceChildren();
  for (const x of vs.slice().reverse()) {
    const tr = document.createElement("tr");
    tr.dataset.cid = x.cid;
    cell(tr, x.cid, "cid");
    cell(tr, x.parent ? shortID(x.parent) : "–").title = x.parent || "";
    cell(tr, String(x.depth), "num");
    cell(tr, fmtInt(x.step), "num");
    cell(tr, fmtBytes(x.size), "num");
    const m = x.metrics || {};
    cell(tr, fmtNum(m.train_loss, 4), "num");
    cell(tr, fmtNum(m.val_loss, 4), "num");
    cell(tr, x.served ? "yes" : "no");
    cell(tr, new Date(x.unix_ms).toISOString().replace("T", " ").slice(0, 19));
    vb.appendChild(tr);
  }
  document.body.dataset.ready = "1";
  document.body.dataset.updated = s.time;
}

async function poll() {
  try {
    const r = await fetch("api/status", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    $("conn").textContent = "";
    $("conn").className = "conn";
  } catch (e) {
    $("conn").textContent = "coordinator unreachable: " + e.message;
    $("conn").className = "conn down";
  }
  setTimeout(poll, POLL_MS);
}

poll();
