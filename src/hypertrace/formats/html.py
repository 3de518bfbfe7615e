"""A self-contained HTML timeline of a session (`hypertrace view`, `export --format html`).

One file, no network: the data is embedded as JSON and drawn on a canvas by the
script in view.js. A lane per stream, grouped by domain; events as ticks,
begin/end pairs as bars, sync points as lines from the guest lane to the host
lane, lost events as red marks, and behind them each lane's event density over
the whole session. Large sessions keep every density bucket but embed a
sample of the events and spans (the page says how many). Below: the stats
tables. Guest strings are data, never markup: the JSON is escaped for a script
element and the page sets text with textContent only.
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import BinaryIO, Callable, Dict, List, Optional, Union

import numpy as np

from ..analysis import stats
from ..analysis.spans import Pairer
from ..columns import Columns
from . import jsonfields
from .chrome_json import SYNC_GUEST, SYNC_HOST
from .output import binary_out

SUFFIX = ".html"
MAX_EVENTS = 40_000
MAX_SPANS = 40_000
MAX_SYNCS = 10_000
BUCKETS = 1000


def collect(c: Columns, progress: Optional[Callable[[int], None]] = None) -> dict:
    """One pass over the events: density, a sample of events, spans, sync pairs, losses."""
    t0, t1 = stats.time_range(c.s)          # from the index, before reading the events
    t0 = t0 or 0
    t1 = max(t1 or 0, t0 + 1)
    total = sum(int(st.get("recorded") or 0) for st in c.streams)
    stride = max(1, math.ceil(total / MAX_EVENTS))
    nl = len(c.streams)
    density = np.zeros(nl * BUCKETS, dtype=np.int64)
    ev_t: List[int] = []
    ev_lane: List[int] = []
    ev_kind: List[int] = []
    ev_args: List[str] = []
    spans: List[list] = []
    totals = stats.SliceTotals()
    span_seen = 0
    sync_g: Dict[tuple, tuple] = {}
    sync_h: Dict[tuple, tuple] = {}
    pairer = Pairer(c)
    seen = 0
    for b in c.batches():
        n = len(b)
        bucket = np.clip((b.ts - t0) * BUCKETS // (t1 - t0 + 1), 0, BUCKETS - 1)
        density += np.bincount(b.stream.astype(np.int64) * BUCKETS + bucket,
                               minlength=nl * BUCKETS)
        keep = np.flatnonzero((np.arange(seen, seen + n) % stride) == 0)
        seen += n
        for k in np.unique(b.kind):
            k = int(k)
            kind = c.kinds[k]
            mine = np.flatnonzero(b.kind == k)
            if kind.name in (SYNC_GUEST, SYNC_HOST):
                rows = list(zip(*[col.to_pylist() for col in b.fields[k]]))
                for i in mine:
                    f = dict(zip(kind.codec.names, rows[b.pos[i]]))
                    if kind.name == SYNC_GUEST:
                        sync_g[(kind.domain, f.get("sync_id"))] = (int(b.stream[i]), int(b.ts[i]))
                    else:
                        sync_h[(f.get("domain"), f.get("sync_id"))] = (int(b.stream[i]),
                                                                       int(b.ts[i]))
            sel = np.intersect1d(mine, keep)
            if not len(sel):
                continue
            cols = [col.take(b.pos[sel]) for col in b.fields[k]]
            ev_args += jsonfields.objects(kind.codec.decl, cols, len(sel)).to_pylist()
            ev_t += (b.ts[sel] - t0).tolist()
            ev_lane += b.stream[sel].tolist()
            ev_kind += [k] * len(sel)
        for x in pairer.feed(b):
            totals.add(x)
            if span_seen % stride == 0:
                spans.append([x.stream, x.key, x.t0 - t0, x.t1 - t0, x.depth])
            span_seen += 1
        if progress is not None:
            progress(n)
    pairer.finish()
    syncs = [[g[0], g[1] - t0, h[0], h[1] - t0] for key, g in sync_g.items()
             for h in [sync_h.get(key)] if h is not None][:MAX_SYNCS]
    lost = []
    for si, marks in c.losses.items():
        dom = c.streams[si]["domain"]
        lost += [[si, c.s.to_host(dom, raw) - t0, cnt] for raw, cnt in marks]
    return {"t0": t0, "span_ns": t1 - t0, "events": {"t": ev_t, "lane": ev_lane,
                                                     "kind": ev_kind, "args": ev_args},
            "kinds": [[k.domain, k.name] for k in c.kinds], "spans": spans[:MAX_SPANS],
            "span_stats": totals.spans(pairer.unmatched, pairer.unfinished),
            "functions": totals.functions(pairer.unmatched_calls,
                                          unfinished=pairer.unfinished_calls),
            "unmatched": pairer.unmatched,
            "syncs": syncs,
            "lost": lost, "density": density.reshape(nl, BUCKETS).tolist(),
            "buckets": BUCKETS, "total": seen, "sampled_every": stride,
            "lanes": [{"domain": st["domain"], "label": "%s %s" % (
                st["file"], st.get("thread") or "pid %s tid %s" % (st.get("pid"), st.get("tid")))}
                for st in c.streams]}


def _table(head: List[str], rows: List[list]) -> str:
    h = "".join("<th>%s</th>" % html.escape(str(x)) for x in head)
    body = "".join("<tr>%s</tr>" % "".join("<td>%s</td>" % html.escape(
        "-" if v is None else str(v)) for v in r) for r in rows)
    return "<table><thead><tr>%s</tr></thead><tbody>%s</tbody></table>" % (h, body)


def _tables(st: dict, data: dict) -> str:
    out = ["<h2>Events</h2>", _table(["event", "count", "rate/s"], [
        [k, v["count"], None if v["rate_per_s"] is None else "%.0f" % v["rate_per_s"]]
        for k, v in st["events"].items()])]
    if data["span_stats"]:
        out += ["<h2>Spans (ns)</h2>", _table(
            ["span", "count", "min", "p50", "p99", "max", "unmatched ends",
             "unfinished begins"],
            [[k, v["count"], v["min"], v["p50"], v["p99"], v["max"], v["unmatched"],
              v["unfinished"]] for k, v in data["span_stats"].items()])]
    if data["functions"]:
        out += ["<h2>Functions (top by total, then self time; ns)</h2>", _table(
            ["function", "calls", "total", "self", "unmatched returns", "unfinished calls"],
            [[f["function"], f["calls"], f["total_ns"], f["self_ns"], f["unmatched"],
              f["unfinished"]] for f in data["functions"]])]
    out += ["<h2>Streams</h2>", _table(
        ["stream", "domain", "pid", "tid", "thread", "recorded", "discarded", "malformed",
         "torn"], [[x["file"], x["domain"], x["pid"], x["tid"], x["thread"], x["recorded"],
                    x["discarded"], x["malformed"], x["torn"]] for x in st["streams"]])]
    if st["clocks"]:
        out += ["<h2>Clocks</h2>", _table(
            ["domain", "clock", "offset ns", "drift ppm", "uncertainty ns", "samples",
             "causality violations"],
            [[d, c["kind"], c["offset_ns"], None if c["drift_ppm"] is None else
              "%.3f" % c["drift_ppm"], c["uncertainty_ns"], c["samples"],
              c["causality_violations"]] for d, c in st["clocks"].items()])]
    if st["sync_points"]:
        out += ["<h2>Sync points (guest → host latency, ns)</h2>", _table(
            ["domain", "count", "min", "p50", "p99", "max"],
            # a domain whose sync points were all dropped from the index has no latency
            [[d, v["count"], *[(v["latency_ns"] or {}).get(k)
                               for k in ("min", "p50", "p99", "max")]]
             for d, v in st["sync_points"].items()])]
    return "\n".join(out)


def write(c: Columns, path: Union[str, BinaryIO],
          progress: Optional[Callable[[int], None]] = None) -> int:
    """Write the page to `path` (or an open binary file); returns the number of events
    read."""
    st = stats.compute(c.s, with_spans=False)
    data = collect(c, progress)
    data["session"] = c.s.path
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    here = os.path.dirname(__file__)
    with open(os.path.join(here, "view.js"), encoding="utf-8") as f:
        script = f.read()
    t = st["totals"]
    summary = ("%d events in %.3f s, %d discarded, %d malformed, %d torn" % (
        t["recorded"], st["duration_s"], t["discarded"], t["malformed"], t["torn"]))
    page = _PAGE % {"title": html.escape(os.path.basename(c.s.path.rstrip("/")) or "session"),
                    "summary": html.escape(summary), "tables": _tables(st, data),
                    "data": blob, "script": script}
    with binary_out(path) as f:
        f.write(page.encode("utf-8"))
    return data["total"]


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<title>hypertrace: %(title)s</title>
<style>
body { font: 13px system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 8px 14px; background: #263238; color: #eceff1; }
header h1 { font-size: 16px; margin: 0 0 2px 0; }
#status { font-size: 12px; color: #b0bec5; }
#errors { color: #b71c1c; white-space: pre-wrap; }
#wrap { position: relative; margin: 8px 14px; border: 1px solid #cfd8dc; background: #fff; }
canvas { display: block; width: 100%%; }
#tip { position: absolute; pointer-events: none; background: #263238; color: #fff;
       padding: 4px 6px; font: 12px monospace; border-radius: 3px; display: none;
       max-width: 600px; white-space: pre-wrap; z-index: 2; }
#help { margin: 0 14px; color: #607d8b; font-size: 12px; }
section { margin: 8px 14px 24px 14px; }
table { border-collapse: collapse; margin-bottom: 10px; }
th, td { border: 1px solid #cfd8dc; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eceff1; }
h2 { font-size: 14px; margin: 14px 0 4px 0; }
</style></head>
<body>
<header><h1>hypertrace — %(title)s</h1><div>%(summary)s</div><div id="status">loading…</div>
<div id="errors"></div></header>
<div id="help">wheel: zoom at the pointer · drag: pan · double-click: whole session ·
hover: event fields</div>
<div id="wrap"><canvas id="tl"></canvas><div id="tip"></div></div>
<section>%(tables)s</section>
<script>window.addEventListener("error", function (e) {
  document.getElementById("errors").textContent += "error: " + e.message + "\\n"; });</script>
<script type="application/json" id="data">%(data)s</script>
<script>%(script)s</script>
</body></html>
"""
