"""Timing Python code: spans, logging, function tracing (issue 16), through the real
recorder, babeltrace2, and every export."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from functools import lru_cache

import pytest
from apps import vmboot
from conftest import ROOT, babeltrace, env, hypertrace, record, stats

APPS = os.path.join(ROOT, "tests", "apps")
PYFUNCS = os.path.join(APPS, "pyfuncs.py")


@lru_cache(maxsize=None)
def fib_calls(n: int) -> int:
    """Calls of fib(n) made by the naive recursion, fib(n) included."""
    return 1 if n < 2 else 1 + fib_calls(n - 1) + fib_calls(n - 2)


def counts(out: str) -> Counter:
    st = json.loads(hypertrace("stats", out, "--json", "--top", "0").stdout)
    return Counter({k: v["count"] for k, v in st["events"].items()}), st


def functions_of(st: dict) -> dict:
    return {f["function"].split("/", 1)[1].split(" (")[0]: f for f in st["functions"]}


def json_events(out: str, tmp_path) -> list:
    path = str(tmp_path / "t.json")
    hypertrace("export", "--format", "json", "-o", path, out)
    with open(path) as f:
        return json.load(f)["traceEvents"]


def perfetto_packets(out: str, tmp_path) -> list:
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
    path = str(tmp_path / "t.pftrace")
    hypertrace("export", "--format", "perfetto", "-o", path, out)
    t = pb.Trace()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return list(t.packet)


def well_nested(evs: list, begin: str, end: str, key) -> int:
    """Checks that begin/end events nest per key (a stack each); returns the pairs."""
    stacks: dict = {}
    pairs = 0
    for e in sorted(evs, key=lambda e: float(e["ts"])):
        if e["ph"] == begin:
            stacks.setdefault(key(e), []).append(e)
        elif e["ph"] == end:
            st = stacks.get(key(e))
            assert st, "an end without its begin: %r" % e
            b = st.pop()
            assert float(b["ts"]) <= float(e["ts"])
            pairs += 1
    assert not any(stacks.values()), "begins never ended"
    return pairs


SPANS = r'''
import asyncio
from hypertrace import guest
db = guest.span("db_query", "uint32_t k, const char *table")
step = guest.span("step")

@step
def work():
    with db(1, "inner"):
        pass

with db(0, "outer"):
    work()
    work()
for i in range(3):
    try:
        with db(10 + i, "failing"):
            raise KeyError(i)
    except KeyError:
        pass

@db(99, "deco")
def decorated(x):
    return x * 2
assert decorated(21) == 42
try:
    step(lambda: 1 / 0)()
except ZeroDivisionError:
    pass

async def job(i):
    with db(100 + i, "task"):
        await asyncio.sleep(0.01)
        with db(200 + i, "task-inner"):
            await asyncio.sleep(0.01)

@db(7, "async-deco")
async def adeco():
    await asyncio.sleep(0.005)

async def main():
    await asyncio.gather(*(job(i) for i in range(4)), adeco())
asyncio.run(main())
print("SPANS DONE")
'''


def test_spans_nest_pair_and_record_exceptions_in_every_view(tmp_path):
    app = tmp_path / "spans.py"
    app.write_text(SPANS)
    out = str(tmp_path / "s")
    r = record(out, sys.executable, str(app))
    assert "SPANS DONE" in r.stdout
    # 1 outer + 2 inner + 3 failing + 1 decorated + 4 + 4 task + 1 async-deco = 16 db spans;
    # 2 work + 1 failing lambda = 3 step spans
    ev, _ = babeltrace(out)
    c = Counter(name for name, _ in ev)
    assert c["db_query_begin"] == c["db_query_end"] == 16
    assert c["step_begin"] == c["step_end"] == 3
    rep = [json.loads(x) for x in hypertrace("report", "--json", "--all", out).stdout.splitlines()]
    ends = [e for e in rep if e.get("name") == "db_query_end"]
    errors = Counter(e["fields"]["error"] for e in ends)
    assert errors == {"": 13, "KeyError": 3}
    assert [e["fields"]["error"] for e in rep if e.get("name") == "step_end"].count(
        "ZeroDivisionError") == 1
    begins = {e["fields"]["span"]: e for e in rep if e.get("name") == "db_query_begin"}
    assert len(begins) == 16                     # ids unique
    for e in ends:                               # each end with its begin, same task
        assert begins[e["fields"]["span"]]["fields"]["task"] == e["fields"]["task"]
    tasks = {b["fields"]["task"] for b in begins.values() if b["fields"]["table"] == "task"}
    assert len(tasks) == 4 and 0 not in tasks
    # stats: spans paired by id, nothing unmatched (the tasks interleave on one thread)
    st = stats(out)
    assert st["spans"]["local/db_query"]["count"] == 16
    assert st["spans"]["local/db_query"]["unmatched"] == 0
    assert st["spans"]["local/step"]["count"] == 3
    # JSON: thread spans B/E nest per thread, task spans b/e per task
    evs = json_events(out, tmp_path)
    sync = [e for e in evs if e.get("name") in ("db_query", "step") and e["ph"] in "BE"]
    assert well_nested(sync, "B", "E", lambda e: e["tid"]) == 10      # 7 db + 3 step
    asy = [e for e in evs if e.get("name") == "db_query" and e["ph"] in "be"]
    assert well_nested(asy, "b", "e", lambda e: e["id2"]["local"]) == 9    # 4 + 4 + 1
    assert len({e["id2"]["local"] for e in asy}) == 5
    # Perfetto: each task on a track of its own under the thread's
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
    pk = perfetto_packets(out, tmp_path)
    task_tracks = {p.track_descriptor.uuid for p in pk if p.HasField("track_descriptor")
                   and p.track_descriptor.name.startswith("asyncio task")}
    assert len(task_tracks) == 5
    te = [p.track_event for p in pk if p.HasField("track_event")]
    b = [t for t in te if t.type == pb.TrackEvent.TYPE_SLICE_BEGIN]
    e = [t for t in te if t.type == pb.TrackEvent.TYPE_SLICE_END]
    assert len(b) == len(e) == 19
    assert sum(t.track_uuid in task_tracks for t in b) == 9


def test_a_span_refuses_its_own_field_names_and_works_untraced(tmp_path):
    code = ("from hypertrace import guest\n"
            "try:\n    guest.span('x', 'uint32_t task')\nexcept ValueError as e:\n"
            "    print('REFUSED', e)\n"
            "s = guest.span('y', 'uint32_t k')\n"
            "with s(1):\n    pass\n"
            "print('UNTRACED OK')\n")
    r = __import__("subprocess").run([sys.executable, "-c", code], capture_output=True,
                                     text=True, env=env())
    assert "REFUSED" in r.stdout and "task" in r.stdout and "UNTRACED OK" in r.stdout, r.stderr


LOGS = r'''
import logging, sys, subprocess, threading
logging.basicConfig(level=logging.INFO, format="APP %(levelname)s %(message)s")
log = logging.getLogger("app.db")
log.info("hello %d", 5)
log.debug("not shown")
logging.getLogger("app.quiet").setLevel(logging.ERROR)
logging.getLogger("app.quiet").warning("filtered out")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom")
t = threading.Thread(target=lambda: log.warning("from a thread"))
t.start(); t.join()
if len(sys.argv) < 2:
    subprocess.run([sys.executable, __file__, "child"], check=True)
'''


def test_record_logging_captures_every_process_without_changing_its_output(tmp_path):
    app = tmp_path / "logs.py"
    app.write_text(LOGS)
    out = str(tmp_path / "s")
    r = record(out, sys.executable, str(app), opts=("--logging",))
    # the program's own basicConfig still took effect (the hook adds no handler)
    assert r.stderr.count("APP INFO hello 5") == 2, r.stderr
    assert "not shown" not in r.stderr and "filtered out" not in r.stderr
    rep = [json.loads(x) for x in hypertrace("report", "--json", "--all", out).stdout.splitlines()]
    logs = [e["fields"] for e in rep if e.get("name") == "python_log"]
    assert len(logs) == 6, logs                  # 3 per process
    assert Counter(x["message"].split("\n")[0] for x in logs) == {
        "hello 5": 2, "boom": 2, "from a thread": 2}
    boom = [x for x in logs if x["message"].startswith("boom")][0]
    assert boom["level"] == 40 and "ZeroDivisionError" in boom["message"]
    assert boom["logger"] == "app.db" and boom["file"] == str(app)
    assert boom["line"] == LOGS.split("\n").index('    log.exception("boom")') + 1
    assert len({e["stream"] for e in rep if e.get("name") == "python_log"}) >= 3


def test_the_logging_handler_records_what_reaches_it(tmp_path):
    app = tmp_path / "h.py"
    app.write_text("import logging\nfrom hypertrace.guest.loghandler import Handler\n"
                   "log = logging.getLogger('h')\nlog.propagate = False\n"
                   "log.addHandler(Handler(logging.WARNING))\nlog.setLevel(logging.DEBUG)\n"
                   "log.info('below the handler level')\nlog.error('e %s', 'x')\n"
                   "log.critical('c')\n")
    out = str(tmp_path / "s")
    record(out, sys.executable, str(app))
    rep = [json.loads(x) for x in hypertrace("report", "--json", "--all", out).stdout.splitlines()]
    logs = [(e["fields"]["level"], e["fields"]["message"], e["fields"]["function"])
            for e in rep if e.get("name") == "python_log"]
    assert logs == [(40, "e x", "<module>"), (50, "c", "<module>")]


def _fib_record(tmp_path, ns, opts=(), extra=(), **kw):
    out = str(tmp_path / "s")
    r = record(out, sys.executable, PYFUNCS, ",".join(map(str, ns)), *extra,
               opts=("--functions",) + tuple(opts), **kw)
    assert "PYFUNCS" in r.stdout, r.stdout + r.stderr
    return out


@pytest.mark.parametrize("pure", ["0", "1"])
def test_function_calls_are_exact_per_thread_and_in_child_processes(tmp_path, pure):
    ns = [24, 15, 12]      # fib(24): 7 MB of records, more than a ring holds
    out = _fib_record(tmp_path, ns, extra=("child",), env=env(HYPERTRACE_PURE=pure))
    c, st = counts(out)
    assert st["totals"]["discarded"] == 0
    assert c["hypertrace_call"] == c["hypertrace_return"]
    fn = functions_of(st)
    # the parent's fib in three threads, then the child's fib(20)
    assert fn["fib"]["calls"] == sum(fib_calls(n) for n in ns) + fib_calls(ns[0])
    assert fn["fib"]["unmatched"] == 0
    assert fn["other"]["calls"] == 2 and fn["leaf"]["calls"] == 200
    # a recursive function's total counts its outermost frames only; self <= total
    assert 0 < fn["fib"]["self_ns"] <= fn["fib"]["total_ns"]
    assert fn["main"]["total_ns"] >= fn["fib"]["total_ns"] // 2
    # per thread: each fib thread's calls are in its own stream
    rep = [json.loads(x) for x in hypertrace("report", "--json", "--all", out).stdout.splitlines()]
    pid = {x["file"]: x["pid"] for x in st["streams"]}      # code ids are per process
    codes = {(pid[e["stream"]], e["fields"]["code"]): e["fields"]["name"]
             for e in rep if e.get("name") == "hypertrace_code"}
    assert not any("hypertrace" in n for n in codes.values())
    per_stream = Counter(e["stream"] for e in rep if e.get("name") == "hypertrace_call"
                         and codes.get((pid[e["stream"]], e["fields"]["code"])) == "fib")
    assert sorted(per_stream.values()) == sorted(
        [fib_calls(ns[0])] * 2 + [fib_calls(n) for n in ns[1:]])


def test_function_slices_in_json_perfetto_and_html(tmp_path):
    ns = [16, 11]
    out = _fib_record(tmp_path, ns)
    total = sum(fib_calls(n) for n in ns)
    evs = json_events(out, tmp_path)
    fib = [e for e in evs if e.get("name", "").startswith("fib (") and e["ph"] in "BE"]
    assert well_nested(fib, "B", "E", lambda e: e["tid"]) == total
    assert fib[0]["name"] == "fib (%s:10)" % PYFUNCS
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
    pk = perfetto_packets(out, tmp_path)
    names = {}
    for p in pk:
        for n in p.interned_data.event_names:
            names[n.iid] = n.name
    begins = Counter(names.get(p.track_event.name_iid) for p in pk
                     if p.HasField("track_event")
                     and p.track_event.type == pb.TrackEvent.TYPE_SLICE_BEGIN)
    assert begins["fib (%s:10)" % PYFUNCS] == total
    ends = sum(1 for p in pk if p.HasField("track_event")
               and p.track_event.type == pb.TrackEvent.TYPE_SLICE_END)
    assert ends == sum(begins.values())
    page = str(tmp_path / "v.html")
    hypertrace("export", "--format", "html", "-o", page, out)
    html = open(page, encoding="utf-8").read()
    assert "Functions (top by total" in html and "fib (" in html
    text = hypertrace("stats", out).stdout
    assert "function (top by total" in text and "fib (" in text


def test_include_and_exclude_select_functions(tmp_path):
    out = _fib_record(tmp_path, [12], opts=("--include", "*pyfuncs.py", "--exclude", "leaf"))
    c, st = counts(out)
    fn = functions_of(st)
    assert fn["fib"]["calls"] == fib_calls(12) and "leaf" not in fn and "other" in fn
    assert all(PYFUNCS in f["function"] for f in st["functions"])
    r = hypertrace("record", "-o", str(tmp_path / "x"), "--include", "a", "--", sys.executable,
                   "-c", "pass", check=False)
    assert r.returncode == 2 and "--functions" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_hook_setting_is_one_warning_and_the_program_runs(tmp_path):
    out = str(tmp_path / "s")
    r = record(out, sys.executable, "-c", "print('RAN')",
               env=env(HYPERTRACE_PYTHON="functions,bogus",
                       PYTHONPATH=os.path.join(ROOT, "src", "hypertrace", "guest", "boot")
                       + os.pathsep + os.path.join(ROOT, "src")))
    assert "RAN" in r.stdout and "bogus" in r.stderr and "Traceback" not in r.stderr


def test_a_tcg_guests_function_calls_land_on_the_host_timeline(tmp_path):
    name = "htpy%d" % os.getpid()
    out = str(tmp_path / "session")
    gp = hypertrace("guest-path").stdout.strip()
    boot = os.path.join(gp, "hypertrace", "guest", "boot")
    ns = [14, 12]
    lines, rc, rerr = vmboot.record_guest(
        out, name, "echo HT-BOOTED; HYPERTRACE_CHANNEL=ivshmem HYPERTRACE_PYTHON=functions "
        "PYTHONPATH=%s:%s /usr/bin/python3 %s %s" % (boot, gp, PYFUNCS, ",".join(map(str, ns))),
        env())
    assert lines is not None, "the TCG guest did not boot within %d s" % vmboot.TCG_BOOT_TIMEOUT
    assert rc == 0 and "Traceback" not in rerr, rerr
    assert any("PYFUNCS" in x for x in lines), "\n".join(lines[-30:])
    st = stats(out)
    fn = {f["function"]: f for f in st["functions"]}
    fib = [f for k, f in fn.items() if k.startswith(name + "/fib (")]
    assert len(fib) == 1 and fib[0]["calls"] == sum(fib_calls(n) for n in ns), fn
    assert st["totals"]["discarded"] == 0
    assert st["clocks"][name]["samples"] > 0
    # on the host timeline: every fib slice ends before the host took the guest's
    # sync point made after them, within the mapping's stated uncertainty
    rep = [json.loads(x) for x in hypertrace("report", "--json", "--all", out).stdout.splitlines()]
    mine = [e for e in rep if e.get("domain") == name]
    fib_ids = {e["fields"]["code"] for e in mine if e.get("name") == "hypertrace_code"
               and e["fields"]["name"] == "fib"}        # one guest process: ids unique
    ret = max(e["ts"] for e in mine if e.get("name") == "hypertrace_return"
              and e["fields"]["code"] in fib_ids)
    host = [e["ts"] for e in rep if e.get("name") == "hypertrace_sync_host"
            and e["fields"].get("name") == "fib_done"]
    assert len(host) == 1
    unc = st["clocks"][name]["uncertainty_ns"] or 0
    assert ret <= host[0] + unc


MODES = r'''
import asyncio, sys, threading
async def co(n):
    for i in range(n):
        await asyncio.sleep(0)
def gen(n):
    for i in range(n):
        yield i
def boom(k):
    if k == 0:
        raise ValueError("x")
    return boom(k - 1)
def deep(n):
    return 0 if n == 0 else 1 + deep(n - 1)
def main():
    total = sum(gen(50))
    asyncio.run(co(3))
    for _ in range(10):
        try:
            boom(5)
        except ValueError:
            pass
    t = threading.Thread(target=deep, args=(200,))
    t.start(); t.join()
    if len(sys.argv) > 1:
        sys.setrecursionlimit(100000)    # past it the C hook gives way to the profile one
        deep(50000)
    print("MODES", total, flush=True)
main()
'''


@pytest.mark.parametrize("deep", [False, True])
def test_every_hook_records_the_same_calls(tmp_path, deep):
    app = tmp_path / "modes.py"
    app.write_text(MODES)
    seen = {}
    for mode, extra in (("eval", {}), ("profile", {"HYPERTRACE_FUNCTIONS_HOOK": "profile"}),
                        ("pure", {"HYPERTRACE_PURE": "1"})):
        out = str(tmp_path / mode)
        r = record(out, sys.executable, str(app), *(["deep"] if deep else []),
                   opts=("--functions", "--include", str(app)), env=env(**extra))
        assert "MODES 1225" in r.stdout and "Traceback" not in r.stderr, r.stderr
        c, st = counts(out)
        fn = functions_of(st)
        assert all(f["unmatched"] == 0 for f in fn.values()), fn
        seen[mode] = {k: f["calls"] for k, f in fn.items()}
        # hypertrace's own threads (clock exchanges, the poller) are never traced
        assert {x["thread"] for x in st["streams"] if x["domain"] == "local"} <= {
            "MainThread", "Thread-1 (deep)"}, st["streams"]
    # a generator or coroutine: a call per resumption (51, 4); boom: 6 frames x 10;
    # deep: 201 (+ 50 001)
    want = {"main": 1, "<module>": 1, "gen": 51, "co": 4, "boom": 60,
            "deep": 201 + (50_001 if deep else 0)}
    for mode, got in seen.items():
        assert got == want, (mode, seen)


# function tracing's three events, declared by hand (a program that lies with them)
CALL_EVENTS = r'''
from hypertrace import guest
call = guest.event("hypertrace_call", "uint32_t code")
ret = guest.event("hypertrace_return", "uint32_t code")
code = guest.event("hypertrace_code",
                   "uint32_t code, const char *name, const char *file, uint32_t line")
'''
HOSTILE = CALL_EVENTS + r'''
code(1, "<b>x</b>\x1b[31m", "\n/evil", 4294967295)
for i in range(300000):
    call(1)                         # never returned: more than the views keep open
for i in range(1000):
    ret(7)                          # never called, never declared
b = guest.event("x_begin", "uint64_t span, uint64_t task")
e = guest.event("x_end", "uint64_t span, uint64_t task, const char *error")
for i in range(1000):
    b(5, 0)
    e(5, 0, "")                     # one id over and over
e(99, 3, "nope")                    # an end without a begin
'''


def test_lying_call_records_only_cost_their_own_pairing(tmp_path):
    app = tmp_path / "h.py"
    app.write_text(HOSTILE)
    out = str(tmp_path / "s")
    record(out, sys.executable, str(app))
    st = json.loads(hypertrace("stats", out, "--json", "--top", "0").stdout)
    assert st["spans"]["local/x"]["count"] == 1000 and st["spans"]["local/x"]["unmatched"] == 1
    fn = {f["function"]: f for f in st["functions"]}
    assert fn["local/code 7"]["unmatched"] == 1000
    assert fn["local/<b>x</b>\x1b[31m (\n/evil:4294967295)"]["calls"] == 0
    text = hypertrace("stats", out).stdout
    assert "\x1b" not in text and "\\x1b[31m" in text
    evs = json_events(out, tmp_path)
    assert sum(e["ph"] == "E" and e["name"] == "x" for e in evs) == 1000
