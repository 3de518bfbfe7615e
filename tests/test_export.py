"""Exports and SQL agree with babeltrace2 on the same session."""

from __future__ import annotations

import csv
import io
import json
import sys

import duckdb
from conftest import babeltrace, hypertrace, record

APP = r"""
from hypertrace import guest
req_b = guest.event("request_begin", "uint32_t id, const char *path")
req_e = guest.event("request_end", "uint32_t id, int32_t status")
tick = guest.event("tick", "uint64_t n, double load, bool busy")
for i in range(300):
    req_b(i, "/item/%d" % i)
    tick(i, i / 7, i % 3 == 0)
    req_e(i, 200 if i % 10 else 500)
    if i % 100 == 0:
        guest.sync_point("checkpoint", i)
"""


def _session(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    out = str(tmp_path / "s")
    record(out, sys.executable, str(app))
    return out


def test_chrome_json_parquet_and_sql_agree_with_babeltrace(tmp_path):
    s = _session(tmp_path)
    bt, _ = babeltrace(s, internal=True)
    # Chrome JSON: valid, one trace event per event (+ process/thread names, sync flows)
    hypertrace("export", s, "--format", "json", "-o", str(tmp_path / "t.json"))
    doc = json.loads((tmp_path / "t.json").read_text())
    evs = doc["traceEvents"]
    assert len([e for e in evs if e["ph"] in ("i", "B", "E")]) == len(bt)
    assert len([e for e in evs if e["ph"] == "B"]) == len([e for e in evs if e["ph"] == "E"]) \
        == 300
    flows_s = [e for e in evs if e["ph"] == "s"]
    flows_f = [e for e in evs if e["ph"] == "f"]
    assert len(flows_s) == len(flows_f) == 3
    assert sorted(e["id"] for e in flows_s) == sorted(e["id"] for e in flows_f)
    names = {e["args"]["name"] for e in evs if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"local", "host"}
    ticks = [e for e in evs if e.get("name") == "tick"]
    assert [e["args"]["n"] for e in ticks] == list(range(300))
    # Parquet, counted and checked with DuckDB
    hypertrace("export", s, "--format", "parquet", "-o", str(tmp_path / "pq"))
    con = duckdb.connect()
    pq = str(tmp_path / "pq")
    assert con.execute("select count(*) from '%s/events.parquet'" % pq).fetchone()[0] == len(bt)
    rows = con.execute("select f_n, f_load, f_busy from '%s/event_local_tick.parquet' order by ts"
                       % pq).fetchall()
    bt_ticks = [f for n, f in bt if n == "tick"]
    assert [r[0] for r in rows] == [int(f["n"]) for f in bt_ticks]
    # babeltrace2 prints doubles with 6 significant digits
    assert all(abs(r[1] - float(f["load"])) <= 1e-5 * max(1, r[1]) for r, f in zip(rows, bt_ticks))
    assert [r[2] for r in rows] == [bool(int(f["busy"])) for f in bt_ticks]
    # SQL through the command line
    out = hypertrace("sql", s, "select name, count(*) as n from events group by name "
                     "order by name", "--json").stdout
    got = {json.loads(x)["name"]: json.loads(x)["n"] for x in out.splitlines()}
    want: dict = {}
    for n, _ in bt:
        want[n] = want.get(n, 0) + 1
    assert got == want
    out = hypertrace("sql", s, "select count(*) as n from sync", "--csv").stdout
    assert list(csv.reader(io.StringIO(out))) == [["n"], ["3"]]
    out = hypertrace("sql", s, "select kind, causality_violations from clocks where "
                     "domain = 'local'").stdout
    assert "estimated" in out and out.split()[-1] == "0"
    assert hypertrace("sql", s, "select count(*) from lost", "--csv").stdout.split()[-1] == "0"


def test_bad_directories_and_queries_are_clear_errors(tmp_path):
    r = hypertrace("export", str(tmp_path), "--format", "json", check=False)
    assert r.returncode == 2 and "not a hypertrace session" in r.stderr
    s = _session(tmp_path)
    r = hypertrace("sql", s, "select nope from nowhere", check=False)
    assert r.returncode == 2 and "SQL error" in r.stderr and "Traceback" not in r.stderr


def test_stats_pairs_spans(tmp_path):
    s = _session(tmp_path)
    st = json.loads(hypertrace("stats", s, "--json").stdout)
    sp = st["spans"]["local/request"]
    assert sp["count"] == 300 and sp["unmatched"] == 0
    assert 0 < sp["min"] <= sp["p50"] <= sp["p99"] <= sp["max"]
    # the same durations from the Chrome export's B/E pairs
    hypertrace("export", s, "--format", "json", "-o", str(tmp_path / "t.json"))
    evs = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    b = [e["ts"] for e in evs if e["ph"] == "B"]
    e = [x["ts"] for x in evs if x["ph"] == "E"]
    d = sorted(round((y - x) * 1000) for x, y in zip(b, e))
    # JSON timestamps are µs since the session's first second, with ns digits
    assert d[0] == sp["min"] and d[-1] == sp["max"]
    assert "local/request" in hypertrace("stats", s).stdout
