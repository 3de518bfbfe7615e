"""Exports and SQL agree with babeltrace2 on the same session."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys

import duckdb
from conftest import babeltrace, hypertrace, record

APP = r"""
from hypertrace import guest
req_b = guest.event("request_begin", "uint32_t id, const char *path")
req_e = guest.event("request_end", "uint32_t id, int32_t status")
tick = guest.event("tick", "uint64_t n, double load, bool busy")
depth = guest.event("queue_depth", "uint32_t depth, double fill", counter=True)
for i in range(300):
    req_b(i, "/item/%d" % i)
    tick(i, i / 7, i % 3 == 0)
    if i % 10 == 0:
        depth(i % 17, i / 300)
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


def _perfetto(path):
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
    with open(path, "rb") as f:
        return pb, pb.Trace.FromString(f.read()).packet


def test_perfetto_export_parsed_with_perfettos_protos(tmp_path):
    s = _session(tmp_path)
    bt, _ = babeltrace(s, internal=True)
    hypertrace("export", s, "--format", "perfetto", "-o", str(tmp_path / "t.pftrace"))
    pb, packets = _perfetto(tmp_path / "t.pftrace")
    tracks = {p.track_descriptor.uuid: p.track_descriptor for p in packets
              if p.HasField("track_descriptor")}
    procs = {t.process.process_name for t in tracks.values() if t.HasField("process")}
    assert procs == {"local", "host"}
    threads = [t for t in tracks.values() if t.HasField("thread")]
    st = json.loads(hypertrace("stats", s, "--json").stdout)
    assert len(threads) == len([x for x in st["streams"] if x.get("file")])
    names, args = {}, {}
    for p in packets:
        for e in p.interned_data.event_names:
            names[e.iid] = e.name
        for e in p.interned_data.debug_annotation_names:
            args[e.iid] = e.name
    assert packets[len(tracks) - 2].sequence_flags or True
    evs = [p for p in packets if p.HasField("track_event")]
    assert all(p.trusted_packet_sequence_id == 1 for p in evs)
    T = pb.TrackEvent
    plain = [p for p in evs if p.track_event.type != T.TYPE_COUNTER]
    assert len(plain) == len(bt)                       # one track event per event
    assert all(tracks[p.track_event.track_uuid].HasField("thread") for p in plain)
    begins = [p for p in plain if p.track_event.type == T.TYPE_SLICE_BEGIN]
    ends = [p for p in plain if p.track_event.type == T.TYPE_SLICE_END]
    assert len(begins) == len(ends) == 300
    assert {names[p.track_event.name_iid] for p in begins} == {"request"}

    def fields(p):
        out = {}
        for a in p.track_event.debug_annotations:
            out[args[a.name_iid]] = getattr(a, a.WhichOneof("value"))
        return out
    ticks = [fields(p) for p in plain if names.get(p.track_event.name_iid) == "tick"]
    bt_ticks = [f for n, f in bt if n == "tick"]
    assert [t["n"] for t in ticks] == [int(f["n"]) for f in bt_ticks]
    assert [t["busy"] for t in ticks] == [bool(int(f["busy"])) for f in bt_ticks]
    assert [fields(p)["path"] for p in begins] == ["/item/%d" % i for i in range(300)]
    # the same host timestamps as the Parquet export
    hypertrace("export", s, "--format", "parquet", "-o", str(tmp_path / "pq"))
    pq_ts = [r[0] for r in duckdb.connect().execute(
        "select ts from '%s/event_local_tick.parquet' order by ts" % (tmp_path / "pq")
    ).fetchall()]
    assert [p.timestamp for p in plain if names.get(p.track_event.name_iid) == "tick"] == pq_ts
    # sync points: a flow from each guest record to the host's
    starts = [f for p in plain for f in p.track_event.flow_ids]
    stops = [f for p in plain for f in p.track_event.terminating_flow_ids]
    assert len(starts) == len(stops) == 3 and sorted(starts) == sorted(stops)
    # counters: one track per numeric field of the counter event, values as recorded
    ctr = [p for p in evs if p.track_event.type == T.TYPE_COUNTER]
    by_track: dict = {}
    for p in ctr:
        t = tracks[p.track_event.track_uuid]
        assert t.HasField("counter")
        by_track.setdefault(t.name, []).append(p.track_event)
    assert sorted(by_track) == ["queue_depth.depth", "queue_depth.fill"]
    assert [e.counter_value for e in by_track["queue_depth.depth"]] == \
        [i % 17 for i in range(0, 300, 10)]
    assert [e.double_counter_value for e in by_track["queue_depth.fill"]] == \
        [i / 300 for i in range(0, 300, 10)]


def test_columnar_decode_matches_the_scalar_decoder_even_on_damage(tmp_path):
    """The vectorised decoder (every export) and Session.events() (report) agree, also
    on a stream file that was cut short and one with bytes overwritten."""
    from hypertrace.read.columns import Columns
    from hypertrace.read.session import Session
    s = _session(tmp_path)
    files = [x for x in os.listdir(s) if x.startswith("local-")]
    big = max(files, key=lambda f: os.path.getsize(os.path.join(s, f)))

    def both():
        ref = [(e.ts, e.raw_ts, e.stream, e.name, tuple(e.fields.values()), e.ts_uncertainty)
               for e in Session(s).events()]
        c = Columns(Session(s), chunk_bytes=4096)
        got = []
        for b in c.batches():
            rows = {k: list(zip(*[x.to_pylist() for x in v])) for k, v in b.fields.items()}
            for i in range(len(b)):
                k = c.kinds[b.kind[i]]
                u = int(b.unc[i])
                got.append((int(b.ts[i]), int(b.raw_ts[i]), c.streams[b.stream[i]]["file"],
                            k.name, rows[int(b.kind[i])][b.pos[i]], None if u < 0 else u))
        return sorted(ref, key=repr), sorted(got, key=repr), c.warnings
    ref, got, warn = both()
    assert ref == got and len(ref) > 500 and not warn
    path = os.path.join(s, big)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2 + 40:len(data) // 2 + 48] = b"\xff" * 8      # a record header
    open(path, "wb").write(bytes(data[:len(data) - 100]))             # and a cut tail
    ref2, got2, warn2 = both()
    assert ref2 == got2 and len(ref2) < len(ref) and warn2


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_bad_directories_and_queries_are_clear_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for cmd in (("export", str(empty), "--format", "json"), ("sql", str(empty), "select 1"),
                ("view", str(empty))):
        r = hypertrace(*cmd, check=False)
        assert r.returncode == 2 and "not a hypertrace session" in r.stderr, r.stderr
    s = _session(tmp_path)
    r = hypertrace("sql", s, "select nope from nowhere", check=False)
    assert r.returncode == 2 and "SQL error" in r.stderr and "Traceback" not in r.stderr
    # foreign or damaged indexes
    idx = os.path.join(".hypertrace", "session.json")
    for i, (text, msg) in enumerate([
            ("{not json", "unreadable session index"),
            ("[]", "not a hypertrace session index"),
            ('{"format": "hypertrace-session", "domains": 5}', "malformed session index"),
            (None, "is not a file name in the session")]):
        d = _copy(s, tmp_path / ("bad%d" % i))
        if text is None:
            doc = json.load(open(os.path.join(d, idx)))
            doc["streams"][0]["file"] = "../../etc/passwd"
            text = json.dumps(doc)
        open(os.path.join(d, idx), "w").write(text)
        for cmd in (("export", d, "--format", "perfetto", "-o", d + ".pf"), ("view", d),
                    ("sql", d, "select count(*) from events")):
            r = hypertrace(*cmd, check=False)
            assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, \
                (cmd, r.stderr)
            assert not os.path.exists(d + ".pf")


def test_truncated_session_gives_a_partial_result_with_warnings(tmp_path):
    """A stream cut short (a copy taken while recording, a full disk) and a stream file
    missing: every view exports what is intact and says what was skipped."""
    s = _session(tmp_path)
    full = int(hypertrace("sql", s, "select count(*) from events", "--csv").stdout.split()[-1])
    d = _copy(s, tmp_path / "cut")
    shutil.rmtree(os.path.join(d, ".hypertrace", "parquet"), ignore_errors=True)
    locals_ = sorted(f for f in os.listdir(d) if f.startswith("local-"))
    path = os.path.join(d, locals_[0])
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) * 2 // 3])
    if len(locals_) > 1:
        os.unlink(os.path.join(d, locals_[1]))
    for fmt in ("perfetto", "json", "parquet", "html"):
        r = hypertrace("export", d, "--format", fmt, "-o", str(tmp_path / ("o." + fmt)))
        assert "warning" in r.stderr and "truncated" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        n = int(r.stdout.split(": ")[1].split()[0])
        assert 0 < n < full
    r = hypertrace("sql", d, "select count(*) from events", "--csv")
    assert 0 < int(r.stdout.split()[-1]) < full and "truncated" in r.stderr


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


GENERATORS = r"""
import time
from hypertrace import guest
sp = guest.span("job", "uint32_t k")
def gen(k):
    with sp(k):
        yield
        time.sleep(0.001 * k)
        yield
a = gen(1); next(a)
time.sleep(0.002)
b = gen(5); next(b)
for g in (a, a, b, b):
    next(g, None)
"""


def _generators_session(tmp_path):
    """GENERATORS recorded; its spans' durations as `hypertrace sql` pairs them by id."""
    app = tmp_path / "gen.py"
    app.write_text(GENERATORS)
    out = str(tmp_path / "s")
    record(out, sys.executable, str(app))
    r = hypertrace("sql", out, "--json", "select e.ts - b.ts as d from event_local_job_end e "
                   "join event_local_job_begin b on e.f_span = b.f_span")
    return out, sorted(json.loads(x)["d"] for x in r.stdout.splitlines())


def test_perfetto_same_name_spans_that_overlap_keep_their_durations(tmp_path):
    # two generators' spans of one name on one thread, the older ending first: each
    # end closes its own span (by its id), the other is split, and the pieces add up to
    # the durations `stats` pairs by id (a hostile review found them swapped)
    out, want = _generators_session(tmp_path)
    assert len(want) == 2 and want[0] != want[1]
    pf = str(tmp_path / "s.pftrace")
    hypertrace("export", out, "--format", "perfetto", "-o", pf)
    names, args, stack, pieces = {}, {}, {}, []
    for p in _perfetto(pf)[1]:
        for n in p.interned_data.event_names:
            names[n.iid] = n.name
        for n in p.interned_data.debug_annotation_names:
            args[n.iid] = n.name
        te = p.track_event
        if p.HasField("track_event") and te.type in (1, 2):
            st = stack.setdefault(te.track_uuid, [])
            if te.type == 1:
                st.append((names[te.name_iid], p.timestamp, any(
                    args.get(a.name_iid) == "continued" for a in te.debug_annotations)))
            else:
                n, t0, cont = st.pop()      # trace_processor's nesting: the newest closes
                assert n == "job"
                pieces.append((p.timestamp - t0, cont))
    assert len(pieces) == 3 and sum(c for _, c in pieces) == 1
    whole = [d for d, c in pieces if not c]
    split = sum(d for d, _ in pieces) - max(whole)
    assert sorted([max(whole), split]) == want, (pieces, want)


def test_chrome_json_same_name_spans_that_overlap_keep_their_durations(tmp_path):
    # the Chrome JSON export nests its B/E slices by the same rules (Chrome pairs them
    # by stack): the pieces of each span add up to its duration as `stats` pairs it
    out, want = _generators_session(tmp_path)
    js = str(tmp_path / "s.json")
    hypertrace("export", out, "--format", "json", "-o", js)
    with open(js) as f:
        evs = json.load(f)["traceEvents"]
    stack, pieces = {}, []
    for e in evs:
        if e["ph"] == "B":
            stack.setdefault(e["tid"], []).append(e)
        elif e["ph"] == "E":
            b = stack[e["tid"]].pop()
            assert b["name"] == e["name"] == "job"
            # µs with ns digits: back to whole ns
            pieces.append((round(e["ts"] * 1000) - round(b["ts"] * 1000),
                           b["args"].get("continued", False), b["args"].get("k")))
    assert not any(stack.values()) and len(pieces) == 3
    whole = {k: d for d, cont, k in pieces if not cont}
    cont = sum(d for d, c, _ in pieces if c)
    # job 1 (k=1) ends first, whole; job 5 is its first piece plus the continued one
    assert sorted([whole[1], whole[5] + cont]) == want, (pieces, want)
