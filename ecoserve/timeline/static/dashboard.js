// EcoServe timelines: one renderer for the live dashboard (GET /ecoserve/dashboard),
// a simulated run and a benchmarked run (--timeline FILE.html). It reads the
// timeline document (ecoserve/timeline/document.py: bulk items are arrays, by
// position) and draws SVG by hand: no library, no network, and every mark is a
// DOM element a test (or a user's devtools) can find by its data attributes.
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";
  const KIND = { prefill: "#e8871e", decode: "#3b7dd8", mixed: "#8e5cc4" };
  const PHASE = { prefill: "#e8871e", decode: "#3b7dd8", mixed: "#8e5cc4", chunked: "#2a9d8f", temporal: "#9aa0a6" };
  const STATE = { draining: "#c9c9c9", failed: "#d62828" };
  const SERIES = ["#3b7dd8", "#e8871e", "#2a9d8f", "#8e5cc4", "#d62828", "#6c757d", "#b5838d", "#588157"];
  const GUTTER = 120, LANE = 26, CHART_H = 130;
  const KEY_STORE = "ecoserve-api-key";

  function el(tag, attrs, parent) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, attrs) {
    const t = el("text", Object.assign({ x: x, y: y }, attrs || {}), parent);
    t.textContent = s;
    return t;
  }
  function fmtSec(v) {
    if (v === null || v === undefined || !isFinite(v)) return "-";
    if (v === 0) return "0";
    return v >= 1 ? v.toFixed(2) + " s" : (v * 1000).toFixed(v >= 0.01 ? 0 : 1) + " ms";
  }

  // ---- the data: one document, or a live stream of deltas merged in ----------------
  class Store {
    constructor() {
      this.segments = new Map(); // "engine@start" -> segment: a closed one replaces its open self
      this.marks = []; this.phases = []; this.latencies = []; this.samples = [];
      this.events = []; this.macros = []; this.meta = null; this.seq = 0; this.receivedAt = 0;
    }
    apply(doc) {
      this.meta = doc;
      this.macros = doc.macros;
      for (const s of doc.segments) this.segments.set(s[0] + "@" + s[1] + "@" + s[3], s);
      this.marks.push(...doc.marks); this.phases.push(...doc.phases);
      this.latencies.push(...doc.latencies); this.samples.push(...doc.samples);
      this.events = doc.events;
      this.seq = doc.seq;
      this.receivedAt = Date.now() / 1000;
    }
    prune(before) {
      for (const [k, s] of this.segments) if (s[2] < before) this.segments.delete(k);
      const keep = (xs, i) => { let n = 0; while (n < xs.length && xs[n][i] < before) n++; if (n) xs.splice(0, n); };
      keep(this.marks, 1); keep(this.latencies, 0); keep(this.samples, 0);
      // phases: keep the last change before the window, it says what the window starts in
      const last = {}; const kept = [];
      for (const p of this.phases) { if (p[1] < before) last[p[0]] = p; else kept.push(p); }
      this.phases = Object.values(last).concat(kept);
    }
    engines() {
      const seen = [];
      for (const m of this.macros) for (const e of m.engines) if (!seen.includes(e)) seen.push(e);
      for (const s of this.segments.values()) if (!seen.includes(s[0])) seen.push(s[0]);
      return seen;
    }
    groups() {
      const inMacro = new Set(this.macros.flatMap(m => m.engines));
      const rest = this.engines().filter(e => !inMacro.has(e));
      const gs = this.macros.map(m => ({ name: m.name, engines: m.engines }));
      if (rest.length) gs.push({ name: gs.length ? "other" : "engines", engines: rest });
      return gs;
    }
  }

  // ---- drawing ------------------------------------------------------------------------
  function scale(t0, t1, width) {
    const w = Math.max(50, width - GUTTER - 10);
    const f = t => GUTTER + ((t - t0) / (t1 - t0)) * w;
    f.w = w; f.t0 = t0; f.t1 = t1;
    return f;
  }
  function axis(svg, x, y, live) {
    // Ticks at round seconds: "seconds ago" live, "seconds since the start" offline.
    const span = x.t1 - x.t0, steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];
    const step = steps.find(s => span / s <= 8) || 7200;
    for (let k = 0; k * step <= span + 1e-9; k++) {
      const t = live ? x.t1 - k * step : x.t0 + k * step;
      el("line", { x1: x(t), x2: x(t), y1: y - 4, y2: y, class: "tick" }, svg);
      const label = live ? (k ? "-" + k * step + " s" : "now") : k * step + " s";
      text(svg, x(t), y + 12, label, { class: "axis", "text-anchor": k || !live ? "middle" : "end" });
    }
  }
  function phaseRuns(store, engine, t0, t1) {
    const ps = store.phases.filter(p => p[0] === engine);
    const runs = [];
    for (let i = 0; i < ps.length; i++) {
      const a = Math.max(ps[i][1], t0), b = Math.min(i + 1 < ps.length ? ps[i + 1][1] : t1, t1);
      if (b > a) runs.push([a, b, ps[i][2]]);
    }
    return runs;
  }
  function stateRuns(store, engine, t0, t1) {
    const runs = []; let cur = null;
    for (const s of store.samples) {
      const st = s[3][engine] ? s[3][engine][1] : null;
      if (cur && (st !== cur[2] || s[0] > t1)) { cur[1] = Math.min(s[0], t1); runs.push(cur); cur = null; }
      if (!cur && (st === "draining" || st === "failed") && s[0] <= t1) cur = [Math.max(s[0], t0), t1, st];
    }
    if (cur) runs.push(cur);
    return runs.filter(r => r[1] > r[0]);
  }

  function byEngine(items, keep) { // engine -> its items that pass keep, in one pass
    const m = new Map();
    for (const it of items) {
      if (!keep(it)) continue;
      const e = it[0];
      if (!m.has(e)) m.set(e, []);
      m.get(e).push(it);
    }
    return m;
  }

  function drawLanes(root, store, x, live) {
    const groups = store.groups();
    const segsOf = byEngine(store.segments.values(), s => s[2] >= x.t0 && s[1] <= x.t1);
    const marksOf = byEngine(store.marks, m => m[1] >= x.t0 && m[1] <= x.t1);
    const rows = groups.reduce((n, g) => n + 1 + g.engines.length, 0);
    const h = rows * LANE + 30;
    const svg = el("svg", { width: x.w + GUTTER + 10, height: h, class: "lanes", id: "lanes" }, root);
    let y = 4;
    for (const g of groups) {
      text(svg, 4, y + 16, g.name, { class: "group" });
      el("line", { x1: 0, x2: x.w + GUTTER, y1: y + LANE - 2, y2: y + LANE - 2, class: "sep" }, svg);
      y += LANE;
      for (const eng of g.engines) {
        const lane = el("g", { class: "lane", "data-engine": eng, transform: "translate(0," + y + ")" }, svg);
        text(lane, 12, 16, eng, { class: "label" });
        el("rect", { x: GUTTER, y: 3, width: x.w, height: 18, class: "idle" }, lane);
        for (const r of stateRuns(store, eng, x.t0, x.t1))
          el("rect", { x: x(r[0]), y: 3, width: Math.max(1, x(r[1]) - x(r[0])), height: 18, fill: STATE[r[2]],
                       class: "state", "data-state": r[2] }, lane);
        for (const r of phaseRuns(store, eng, x.t0, x.t1))
          el("rect", { x: x(r[0]), y: 0, width: Math.max(1, x(r[1]) - x(r[0])), height: 3, fill: PHASE[r[2]] || "#999",
                       class: "phase", "data-phase": r[2] }, lane).appendChild(title("commanded phase: " + r[2]));
        for (const s of segsOf.get(eng) || []) {
          const a = Math.max(s[1], x.t0), b = Math.min(s[2], x.t1);
          el("rect", { x: x(a), y: 5, width: Math.max(1, x(b) - x(a)), height: 14, fill: KIND[s[3]],
                       class: "seg", "data-engine": eng, "data-kind": s[3] }, lane)
            .appendChild(title(s[3] + ": " + s[4] + " steps, " + s[5] + " prompt tokens, " + fmtSec(s[2] - s[1])));
        }
        for (const m of marksOf.get(eng) || []) {
          el("path", { d: "M" + x(m[1]) + " 21 l-3 4 h6 z", class: "mark" }, lane);
        }
        y += LANE;
      }
    }
    for (const ev of store.events) {
      if (ev.time < x.t0 || ev.time > x.t1) continue;
      const g = el("g", { class: "event", "data-event": ev.event }, svg);
      el("line", { x1: x(ev.time), x2: x(ev.time), y1: 0, y2: y, class: "event-line" }, g);
      text(g, x(ev.time) + 3, 10, ev.event + (ev.instance ? " " + ev.instance : ""), { class: "event-label" });
      g.appendChild(title(ev.event + " " + (ev.instance || "") + (ev.detail ? ": " + ev.detail : "")));
    }
    axis(svg, x, y + 4, live);
  }
  function title(s) { const t = document.createElementNS(NS, "title"); t.textContent = s; return t; }

  // One chart: series of [t, v] as lines or dots, an optional SLO line.
  function drawChart(root, x, name, series, slo, fmt, live) {
    const box = document.createElement("div");
    box.className = "chart"; box.dataset.chart = name;
    root.appendChild(box);
    const svg = el("svg", { width: x.w + GUTTER + 10, height: CHART_H + 24 }, box);
    let ymax = slo ? slo * 1.25 : 0;
    for (const s of series) for (const p of s.points) if (p[0] >= x.t0 && p[0] <= x.t1 && p[1] > ymax) ymax = p[1];
    if (!(ymax > 0)) ymax = 1;
    const y = v => 8 + CHART_H - (Math.min(v, ymax) / ymax) * CHART_H;
    text(svg, 4, 16, name, { class: "group" });
    el("line", { x1: GUTTER, x2: GUTTER + x.w, y1: y(0), y2: y(0), class: "sep" }, svg);
    text(svg, GUTTER - 4, y(ymax) + 4, fmt(ymax), { class: "axis", "text-anchor": "end" });
    text(svg, GUTTER - 4, y(0), fmt(0), { class: "axis", "text-anchor": "end" });
    let ly = 30;
    series.forEach((s, i) => {
      const color = s.color || SERIES[i % SERIES.length];
      const pts = s.points.filter(p => p[0] >= x.t0 && p[0] <= x.t1 && p[1] !== null);
      if (s.dots) {
        for (const p of pts) el("circle", { cx: x(p[0]), cy: y(p[1]), r: 2, fill: color, class: "dot" }, svg);
      } else if (pts.length) {
        el("polyline", { points: pts.map(p => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" "),
                         stroke: color, class: "line", "data-series": s.name }, svg);
      }
      el("rect", { x: 4, y: ly - 8, width: 8, height: 8, fill: color }, svg);
      text(svg, 16, ly, s.name, { class: "legend" });
      ly += 12;
    });
    if (slo) {
      el("line", { x1: GUTTER, x2: GUTTER + x.w, y1: y(slo), y2: y(slo), class: "slo-line", "data-slo": name }, svg);
      text(svg, GUTTER + x.w - 2, y(slo) - 3, "SLO " + fmt(slo), { class: "slo-label", "text-anchor": "end" });
    }
    axis(svg, x, CHART_H + 12, live);
  }

  function summary(store, t0, t1) {
    const ls = store.latencies.filter(l => l[0] >= t0 && l[0] <= t1);
    const m = store.meta;
    const ok = ls.filter(l => l[1] !== null && l[1] <= m.slo_ttft && (l[2] === null || l[2] <= m.slo_tpot)).length;
    return ls.length ? ls.length + " finished, " + Math.round((100 * ok) / ls.length) + "% within both SLOs"
                     : "no request finished in this window";
  }

  function render(store, root, t0, t1, live) {
    root.textContent = "";
    const x = scale(t0, t1, (root.clientWidth || 1232) - 32); // less main's padding
    const m = store.meta;
    const info = document.createElement("p");
    info.className = "summary"; info.id = "summary";
    info.textContent = summary(store, t0, t1) + " · SLOs: TTFT " + fmtSec(m.slo_ttft) + ", TPOT " + fmtSec(m.slo_tpot);
    root.appendChild(info);
    drawLanes(root, store, x, live);
    const legend = document.createElement("p");
    legend.className = "legend-row";
    legend.innerHTML = Object.keys(KIND).map(k => '<span style="background:' + KIND[k] + '"></span>' + k + " steps").join(" ")
      + ' <span class="idle-key"></span>idle · thin strip above: commanded phase · ▲ request routed';
    root.appendChild(legend);
    const s = store.samples;
    drawChart(root, x, "queue", [{ name: "pending", points: s.map(v => [v[0], v[1]]) },
                                 { name: "in flight", points: s.map(v => [v[0], v[2]]) }], null, v => String(Math.round(v)), live);
    drawChart(root, x, "ttft", [{ name: "TTFT per request", dots: true, points: store.latencies.map(l => [l[0], l[1]]) }],
              m.slo_ttft, fmtSec, live);
    drawChart(root, x, "tpot", [{ name: "TPOT per request", dots: true, points: store.latencies.map(l => [l[0], l[2]]) }],
              m.slo_tpot, fmtSec, live);
    const engines = store.engines();
    drawChart(root, x, "kv use", engines.map(e => ({ name: e, points: s.filter(v => v[3][e]).map(v => [v[0], v[3][e][0]]) })),
              null, v => (v >= 0.1 || v === 0 ? Math.round(v * 100) : (v * 100).toFixed(v >= 0.01 ? 1 : 2)) + "%", live);
  }

  // ---- live: key, first document, then a stream of deltas ------------------------------
  function live(cfg) {
    const root = document.getElementById("timeline");
    const status = document.getElementById("status");
    const auth = document.getElementById("auth");
    const state = window.ecoserveDashboard;
    const store = state.store;
    let windowS = Number(document.getElementById("window").value);
    document.getElementById("window").onchange = e => { windowS = Number(e.target.value); draw(); };
    const headers = () => {
      const k = sessionStorage.getItem(KEY_STORE);
      return k ? { Authorization: "Bearer " + k } : {};
    };
    function refused(msg) {
      state.state = "refused";
      sessionStorage.removeItem(KEY_STORE);
      root.textContent = "";
      auth.hidden = false;
      document.getElementById("auth-msg").textContent = msg;
      status.textContent = "not connected";
    }
    document.getElementById("auth-form").onsubmit = e => {
      e.preventDefault();
      sessionStorage.setItem(KEY_STORE, document.getElementById("key").value);
      document.getElementById("key").value = "";
      auth.hidden = true;
      start();
    };
    function draw() {
      if (!store.meta || state.state === "refused") return; // no data under the key form
      const now = store.meta.end + (Date.now() / 1000 - store.receivedAt);
      store.prune(now - 900);
      render(store, root, now - windowS, now, true);
      state.renders++;
      status.textContent = "live · " + store.meta.title + " · updated " + (Date.now() / 1000 - store.receivedAt).toFixed(1) + " s ago";
    }
    async function start() {
      state.state = "loading";
      const hadKey = !!sessionStorage.getItem(KEY_STORE);
      let resp;
      try {
        // relative to the page (/ecoserve/dashboard): right behind a proxy that adds a path prefix too
        resp = await fetch(cfg.base + "timeline/stream?after=" + store.seq, { headers: headers(), cache: "no-store" });
      } catch (err) {
        status.textContent = "cannot reach the server; retrying"; setTimeout(start, 2000); return;
      }
      if (resp.status === 401) {
        refused(hadKey ? "The server refused this key." : "This server needs its API key.");
        return;
      }
      if (!resp.ok) { status.textContent = "error " + resp.status + "; retrying"; setTimeout(start, 2000); return; }
      state.state = "live";
      const reader = resp.body.getReader(), dec = new TextDecoder();
      let buf = "", ended = false;
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) { ended = true; break; } // the server ends each stream after a while: go on at once
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf("\n\n")) >= 0) {
            const frame = buf.slice(0, i); buf = buf.slice(i + 2);
            const data = frame.split("\n").filter(l => l.startsWith("data: ")).map(l => l.slice(6)).join("\n");
            if (data) { store.apply(JSON.parse(data)); draw(); }
          }
        }
      } catch (err) { /* the connection broke: reconnect below */ }
      if (ended) { start(); return; }
      state.state = "reconnecting";
      status.textContent = "disconnected; reconnecting";
      setTimeout(start, 1000);
    }
    setInterval(draw, 1000); // keep the window sliding between pushes
    start();
  }

  function main() {
    const store = new Store();
    window.ecoserveDashboard = { store: store, state: "loading", renders: 0 };
    const cfg = JSON.parse(document.getElementById("timeline-config").textContent);
    if (cfg.live) return live(cfg);
    const doc = JSON.parse(document.getElementById("timeline-data").textContent);
    store.apply(doc);
    document.body.classList.add("offline");
    document.getElementById("status").textContent = doc.source + " run · " + doc.title;
    const draw = () => { render(store, document.getElementById("timeline"), doc.start, doc.end, false); window.ecoserveDashboard.renders++; };
    window.ecoserveDashboard.state = "offline";
    window.addEventListener("resize", draw);
    draw();
  }
  document.addEventListener("DOMContentLoaded", main);
})();
