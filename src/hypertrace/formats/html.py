"""A self-contained HTML timeline of a session (`hypertrace view`, `export --format html`).

One file, no network: the data is embedded as JSON and drawn on a canvas by the
script in view.js. A lane per stream (thread), grouped by domain and in it by
process (pid order, then tid order), each process's counter tracks (events
declared `counter`: a filled step line per numeric field, min and max labelled)
under its threads; other events as ticks, begin/end pairs as bars, sync points
as lines from the guest lane to the host lane, lost events as red marks, and
behind them each lane's event density over the whole session. It opens on the
guests' activity (analysis/timeline.py's `focus`); double-click shows it all.
Large sessions keep every density bucket but embed a sample of the events and
spans (the page says how many). Below: the stats
tables. Guest strings are data, never markup: the JSON is escaped for a script
element and the page sets text with textContent only.
"""

from __future__ import annotations

import html
import json
import os
from typing import BinaryIO, List, Union

from .output import binary_out

SUFFIX = ".html"


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


def write(data: dict, path: Union[str, BinaryIO]) -> int:
    """Write the page of a timeline (analysis/timeline.py's collect()) to `path` (or
    an open binary file); returns the number of events it covers."""
    st = data.pop("stats")
    summary = data.pop("summary")
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    here = os.path.dirname(__file__)
    with open(os.path.join(here, "view.js"), encoding="utf-8") as f:
        script = f.read()
    page = _PAGE % {"title": html.escape(os.path.basename(data["session"].rstrip("/"))
                                         or "session"),
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
