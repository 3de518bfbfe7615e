// The hypertrace timeline: draws the JSON embedded by formats/html.py on a canvas.
// Plain browser JavaScript, no libraries, no network. Text from the trace is only
// ever set with textContent.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const cv = document.getElementById("tl");
  const tip = document.getElementById("tip");
  const ctx = cv.getContext("2d");
  const LABEL = 250, AXIS = 26, DOM_H = 20, LANE_H = 26;

  // rows: a header per domain; in it a header per process (by pid), its threads (by
  // tid), then its counter tracks. Domains keep the session's order.
  const LANE_CTR = 34, PROC_H = 16;
  const rows = [];
  const laneY = new Array(D.lanes.length);
  const domains = [];
  D.lanes.forEach(function (l) { if (domains.indexOf(l.domain) < 0) domains.push(l.domain); });
  function byNum(a, b) {                 // null (not known) last, then by value
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;
    if (b === null || b === undefined) return -1;
    return a - b;
  }
  const counters = D.counters || [];
  let y = AXIS;
  domains.forEach(function (d) {
    rows.push({ kind: "domain", text: d, y: y }); y += DOM_H;
    const mine = [];
    D.lanes.forEach(function (l, i) { if (l.domain === d) mine.push(i); });
    const pids = [];
    mine.forEach(function (i) { if (pids.indexOf(D.lanes[i].pid) < 0) pids.push(D.lanes[i].pid); });
    pids.sort(byNum);
    pids.forEach(function (pid) {
      rows.push({ kind: "process", text: d + " · pid " + (pid === null ? "?" : pid), y: y });
      y += PROC_H;
      const threads = mine.filter(function (i) { return D.lanes[i].pid === pid; });
      threads.sort(function (a, b) { return byNum(D.lanes[a].tid, D.lanes[b].tid) || a - b; });
      threads.forEach(function (i) {
        rows.push({ kind: "lane", text: D.lanes[i].label, y: y, lane: i }); laneY[i] = y;
        y += LANE_H;
      });
      threads.forEach(function (i) { counters.forEach(function (c, ci) {
        if (c.lane !== i) return;
        rows.push({ kind: "counter", text: D.kinds[c.kind][1] + "." + c.field + " (tid " +
                    D.lanes[c.lane].tid + ")", y: y, c: c,
                    ci: ci });
        y += LANE_CTR;
      }); });
    });
  });
  const HEIGHT = y + 8;

  // events grouped per lane, in time order (the file is in time order)
  const E = D.events;
  const perLane = D.lanes.map(function () { return []; });
  for (let i = 0; i < E.t.length; i++) perLane[E.lane[i]].push(i);
  const spansPerLane = D.lanes.map(function () { return []; });
  D.spans.forEach(function (s) { spansPerLane[s[0]].push(s); });
  const maxDensity = D.density.map(function (r) { return Math.max(1, Math.max.apply(null, r)); });

  // opens on the guests' activity (D.focus); double-click shows the whole session
  let v0 = D.focus ? D.focus[0] : 0, v1 = D.focus ? Math.max(v0 + 1, D.focus[1]) : Math.max(1, D.span_ns);
  // a view can be linked: #from=NS&to=NS (ns since the start of the page's timeline)
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has("from") && hash.has("to") && +hash.get("to") > +hash.get("from")) {
    v0 = +hash.get("from"); v1 = +hash.get("to");
  }

  function hue(text) {                    // FNV-1a, spread by the golden angle
    let h = 2166136261;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0;
    return Math.round((h % 97) * 137.508) % 360;
  }
  const kindColour = D.kinds.map(function (k) { return "hsl(" + hue(k[1]) + ",65%,42%)"; });

  function width() { return cv.clientWidth; }
  function xOf(t) { return LABEL + (t - v0) / (v1 - v0) * (width() - LABEL - 8); }
  function tOf(x) { return v0 + (x - LABEL) / (width() - LABEL - 8) * (v1 - v0); }
  function lowerBound(idx, t) {           // first position in idx with E.t >= t
    let a = 0, b = idx.length;
    while (a < b) { const m = (a + b) >> 1; if (E.t[idx[m]] < t) a = m + 1; else b = m; }
    return a;
  }
  function fmt(ns) {
    const a = Math.abs(ns);
    if (a >= 1e9) return (ns / 1e9).toFixed(3) + " s";
    if (a >= 1e6) return (ns / 1e6).toFixed(3) + " ms";
    if (a >= 1e3) return (ns / 1e3).toFixed(3) + " µs";
    return Math.round(ns) + " ns";
  }

  function axis(w) {
    const span = v1 - v0;
    let step = Math.pow(10, Math.floor(Math.log10(span / 8)));
    if (span / step > 16) step *= 5; else if (span / step > 8) step *= 2;
    ctx.fillStyle = "#455a64"; ctx.strokeStyle = "#eceff1"; ctx.font = "11px sans-serif";
    for (let t = Math.ceil(v0 / step) * step; t <= v1; t += step) {
      const x = xOf(t);
      ctx.beginPath(); ctx.moveTo(x, AXIS - 6); ctx.lineTo(x, HEIGHT); ctx.stroke();
      ctx.fillText(fmt(t), x + 2, AXIS - 10);
    }
  }

  // a counter: a filled step line from its minimum (bottom) to its maximum (top)
  function counterTrack(r, w) {
    const c = r.c, lo = c.min, hi = c.max, span = hi - lo || 1;
    const top = r.y + 3, h = LANE_CTR - 6;
    ctx.fillStyle = "#37474f"; ctx.font = "11px sans-serif";
    ctx.fillText(r.text.length > 30 ? r.text.slice(0, 29) + "…" : r.text, 12, r.y + 14);
    ctx.fillStyle = "#78909c"; ctx.font = "10px sans-serif";
    ctx.fillText("max " + hi, LABEL - 70, r.y + 11);
    ctx.fillText("min " + lo, LABEL - 70, r.y + LANE_CTR - 4);
    ctx.save();
    ctx.beginPath(); ctx.rect(LABEL, r.y, w - LABEL - 8, LANE_CTR); ctx.clip();
    const col = hue(D.kinds[c.kind][1] + "." + c.field);
    function yOf(v) { return top + h - (v - lo) / span * h; }
    let a = 0, b = c.t.length;             // first point at or after v0, minus one
    while (a < b) { const m = (a + b) >> 1; if (c.t[m] < v0) a = m + 1; else b = m; }
    const first = Math.max(0, a - 1);
    const x0 = Math.max(LABEL, xOf(c.t[first]));
    ctx.beginPath();
    ctx.moveTo(x0, yOf(c.v[first]));
    let x = x0;
    for (let p = first + 1; p < c.t.length; p++) {
      x = Math.max(LABEL, xOf(c.t[p]));
      ctx.lineTo(x, yOf(c.v[p - 1]));    // a step: the value holds until the next one
      ctx.lineTo(x, yOf(c.v[p]));
      if (c.t[p] > v1) break;
    }
    // the line on top, then the area under it down to the minimum
    ctx.strokeStyle = "hsl(" + col + ",60%,35%)"; ctx.lineWidth = 1; ctx.stroke();
    ctx.lineTo(x, top + h); ctx.lineTo(x0, top + h); ctx.closePath();
    ctx.fillStyle = "hsla(" + col + ",60%,50%,0.35)"; ctx.fill();
    ctx.restore();
  }

  function draw() {
    const dpr = window.devicePixelRatio || 1;
    const w = width();
    cv.width = Math.round(w * dpr); cv.height = Math.round(HEIGHT * dpr);
    cv.style.height = HEIGHT + "px";
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, HEIGHT);
    axis(w);
    rows.forEach(function (r) {
      if (r.kind === "domain") {
        ctx.fillStyle = "#eceff1"; ctx.fillRect(0, r.y, w, DOM_H);
        ctx.fillStyle = "#263238"; ctx.font = "bold 12px sans-serif";
        ctx.fillText(r.text, 6, r.y + 14);
        return;
      }
      if (r.kind === "process") {
        ctx.fillStyle = "#f5f7f8"; ctx.fillRect(0, r.y, w, PROC_H);
        ctx.fillStyle = "#37474f"; ctx.font = "bold 11px sans-serif";
        ctx.fillText(r.text, 8, r.y + 12);
        return;
      }
      if (r.kind === "counter") { counterTrack(r, w); return; }
      const i = r.lane;
      ctx.fillStyle = "#37474f"; ctx.font = "11px sans-serif";
      ctx.fillText(r.text.length > 38 ? r.text.slice(0, 37) + "…" : r.text, 12, r.y + 16);
      ctx.save();
      ctx.beginPath(); ctx.rect(LABEL, r.y, w - LABEL - 8, LANE_H); ctx.clip();
      // density of every event of the lane, behind the sampled marks (not needed when
      // every event is drawn and a bucket is wider than a few pixels)
      const dens = D.density[i], bw = D.span_ns / D.buckets;
      const showDensity = D.sampled_every > 1 || xOf(bw) - xOf(0) < 3;
      for (let b = 0; showDensity && b < dens.length; b++) {
        if (!dens[b]) continue;
        const xa = xOf(b * bw), xb = xOf((b + 1) * bw);
        if (xb < LABEL || xa > w) continue;
        const a = 0.08 + 0.5 * Math.log(1 + dens[b]) / Math.log(1 + maxDensity[i]);
        ctx.fillStyle = "rgba(96,125,139," + a.toFixed(3) + ")";
        ctx.fillRect(Math.max(LABEL, xa), r.y + 3, Math.max(1, xb - Math.max(LABEL, xa)),
                     LANE_H - 6);
      }
      spansPerLane[i].forEach(function (s) {
        if (s[3] < v0 || s[2] > v1) return;
        const xa = Math.max(LABEL, xOf(s[2])), xb = Math.min(w, xOf(s[3]));
        const top = r.y + 2 + 4 * Math.min(s[4], 2);      // nested spans step down
        ctx.fillStyle = "hsla(" + hue(s[1]) + ",70%,55%,0.85)";
        ctx.fillRect(xa, top, Math.max(1, xb - xa), 10);
        if (xb - xa > 40) {
          ctx.fillStyle = "#000"; ctx.font = "10px sans-serif";
          ctx.fillText(s[1].split("/").pop(), xa + 2, top + 8, xb - xa - 4);
        }
      });
      const idx = perLane[i];
      let lastX = -1;
      for (let p = lowerBound(idx, v0); p < idx.length; p++) {
        const e = idx[p];
        if (E.t[e] > v1) break;
        const x = Math.round(xOf(E.t[e]));
        if (x === lastX) continue;
        lastX = x;
        ctx.fillStyle = kindColour[E.kind[e]];
        ctx.fillRect(x, r.y + 15, 1, 9);
      }
      ctx.restore();
    });
    ctx.strokeStyle = "rgba(21,101,192,0.8)"; ctx.lineWidth = 1;
    try {
      history.replaceState(null, "", "#from=" + Math.round(v0) + "&to=" + Math.round(v1));
    } catch (e) { /* some browsers refuse this on file: URLs; the view still works */ }
    D.syncs.forEach(function (s) {
      if (Math.max(s[1], s[3]) < v0 || Math.min(s[1], s[3]) > v1) return;
      ctx.beginPath();
      ctx.moveTo(xOf(s[1]), laneY[s[0]] + LANE_H / 2);
      ctx.lineTo(xOf(s[3]), laneY[s[2]] + LANE_H / 2);
      ctx.stroke();
    });
    ctx.fillStyle = "#c62828";
    D.lost.forEach(function (l) {
      if (l[1] < v0 || l[1] > v1) return;
      const x = xOf(l[1]), yy = laneY[l[0]];
      ctx.beginPath(); ctx.moveTo(x, yy + 2); ctx.lineTo(x - 5, yy + 12); ctx.lineTo(x + 5, yy + 12);
      ctx.fill();
    });
    document.body.dataset.rendered = String(++renders);
    document.body.dataset.view = Math.round(v0) + "," + Math.round(v1);
  }
  let renders = 0;

  function laneAt(yy) {
    for (let i = 0; i < laneY.length; i++) if (yy >= laneY[i] && yy < laneY[i] + LANE_H) return i;
    return -1;
  }

  function hover(ev) {
    const r = cv.getBoundingClientRect();
    const x = ev.clientX - r.left, yy = ev.clientY - r.top;
    const lane = laneAt(yy);
    tip.style.display = "none";
    if (lane < 0 || x < LABEL) return;
    const idx = perLane[lane], t = tOf(x), slack = 4 * (v1 - v0) / (width() - LABEL);
    let best = -1, bd = slack;
    const p = lowerBound(idx, t - slack);
    for (let q = p; q < idx.length && E.t[idx[q]] <= t + slack; q++) {
      const d = Math.abs(E.t[idx[q]] - t);
      if (d <= bd) { bd = d; best = idx[q]; }
    }
    let text = null;
    if (best >= 0) {
      const k = D.kinds[E.kind[best]];
      let args = E.args[best];
      try { args = JSON.stringify(JSON.parse(args), null, 1); } catch (e) { /* as is */ }
      text = k[0] + "/" + k[1] + " at " + fmt(E.t[best]) + "\n" + args;
    } else {
      const s = spansPerLane[lane].find(function (s) { return s[2] <= t && t <= s[3]; });
      if (s) text = s[1] + " span: " + fmt(s[3] - s[2]) + " from " + fmt(s[2]);
    }
    if (text === null) return;
    tip.textContent = text;
    tip.style.display = "block";
    tip.style.left = Math.min(x + 12, width() - 300) + "px";
    tip.style.top = (yy + 14) + "px";
  }

  cv.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    const r = cv.getBoundingClientRect(), t = tOf(ev.clientX - r.left);
    const f = ev.deltaY > 0 ? 1.25 : 0.8;
    v0 = t - (t - v0) * f; v1 = t + (v1 - t) * f;
    if (v1 - v0 < 10) v1 = v0 + 10;
    draw();
  }, { passive: false });
  let drag = null;
  cv.addEventListener("mousedown", function (ev) { drag = { x: ev.clientX, v0: v0, v1: v1 }; });
  window.addEventListener("mouseup", function () { drag = null; });
  cv.addEventListener("mousemove", function (ev) {
    if (drag) {
      const dt = (ev.clientX - drag.x) / (width() - LABEL - 8) * (drag.v1 - drag.v0);
      v0 = drag.v0 - dt; v1 = drag.v1 - dt; draw();
    } else hover(ev);
  });
  cv.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  cv.addEventListener("dblclick", function () { v0 = 0; v1 = Math.max(1, D.span_ns); draw(); });
  window.addEventListener("resize", draw);

  draw();
  const lost = D.lost.reduce(function (a, l) { return a + l[2]; }, 0);
  document.getElementById("status").textContent =
    D.lanes.length + " lanes in " + domains.length + " domains · " + E.t.length + " of " +
    D.total + " events drawn" + (D.sampled_every > 1 ? " (every " + D.sampled_every +
    "th; density shows all)" : "") + " · " + D.spans.length + " spans · " + D.syncs.length +
    " sync points · " + lost + " lost events marked";
  document.body.dataset.lanes = String(D.lanes.length);
  document.body.dataset.domains = String(domains.length);
  document.body.dataset.counters = String(counters.length);
  document.body.dataset.focus = D.focus ? D.focus.join(",") : "";
  // the rows top to bottom (kind, y, text): what a test or a script can check
  document.body.dataset.rows = JSON.stringify(rows.map(function (r) { return [r.kind, r.y, r.text]; }));
})();
