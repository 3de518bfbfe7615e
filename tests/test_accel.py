"""The CPython accelerator (native/accel.c) against the pure-Python tracepoints.

The rest of the suite runs with whichever path the environment selects (test.sh
runs it accelerated, then again with HYPERTRACE_PURE=1); these tests run both
paths side by side and require the extension to be built, as it is wherever a C
compiler is (setup.sh installs gcc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, babeltrace, env, hypertrace, record, stats, totals

APPS = os.path.join(ROOT, "tests", "apps")


def _run_cases(tmp_path, pure: str):
    out = str(tmp_path / ("s" + pure))
    r = record(out, sys.executable, os.path.join(APPS, "accel_cases.py"),
               env=env(HYPERTRACE_PURE=pure))
    said = json.loads(r.stdout.splitlines()[0])
    events = [(e["name"], e["fields"]) for e in
              map(json.loads, hypertrace("report", out, "--json").stdout.splitlines())
              if e["domain"] == "local"]
    return said, events, out


def test_both_paths_record_the_same_and_raise_the_same(tmp_path):
    fast, fast_events, out = _run_cases(tmp_path, "0")
    pure, pure_events, _ = _run_cases(tmp_path, "1")
    assert fast["accelerated"] and fast["type"] == "Tracepoint", \
        "the C accelerator is not built (pip install -e . with gcc and Python headers)"
    assert not pure["accelerated"] and pure["type"] == "function"
    assert fast["outcomes"] == pure["outcomes"]
    assert fast_events == pure_events
    # what the program did is there: every "ok" call is one record (the keyword
    # calls included) but the two to the disabled event, nothing else
    assert len(fast_events) == fast["outcomes"].count("ok") - 2
    assert "off" not in {n for n, _ in fast_events}
    names = [n for n, _ in fast_events]
    assert names.count("ints") == 4 and names.count("none") == 1
    ints = [f for n, f in fast_events if n == "ints"]
    assert ints[1] == {"a": -128, "b": 255, "c": -32768, "d": 65535, "e": -2 ** 31,
                       "f": 2 ** 32 - 1, "g": -2 ** 63, "h": 2 ** 64 - 1}
    bt, _ = babeltrace(out)
    assert len(bt) == len(fast_events)


SPEED = r"""
from hypertrace import guest
from hypertrace.guest import _accel
tp = guest.event("pair", "uint64_t a, int32_t b")
ts = guest.event("named", "int32_t n, const char *s")
before = _accel.counts()
for i in range(20000):
    tp(i, -i)
    ts(i, "s%d" % (i % 7))
try:
    tp(1, 2.5)                  # a float for an int: the Python path raises
except TypeError:
    pass
after = _accel.counts()
print(after[0] - before[0], after[1] - before[1])
"""


def test_the_common_case_takes_the_c_path(tmp_path):
    out = str(tmp_path / "s")
    prog = tmp_path / "speed.py"
    prog.write_text(SPEED)
    r = record(out, sys.executable, str(prog), opts=("--mode", "block"),
               env=env(HYPERTRACE_PURE="0"))
    fast, slow = map(int, r.stdout.split()[:2])
    assert (fast, slow) == (40000, 1)
    assert totals(stats(out)) == {"recorded": 40000, "discarded": 0, "torn": 0,
                                  "malformed": 0}


THREADS = r"""
import os, sys, threading
from hypertrace import guest
tp = guest.event("th", "uint64_t t, uint64_t i, const char *who")
def run(t):
    for i in range(N):
        tp(t, i, "t%d" % t)
N = int(sys.argv[1])
ts = [threading.Thread(target=run, args=(t,)) for t in range(4)]
for t in ts: t.start()
for t in ts: t.join()
pid = os.fork()
if pid == 0:
    for i in range(1000):
        tp(9, i, "child")
    os._exit(0)
os.waitpid(pid, 0)
guest.disconnect()
guest.connect()
for i in range(10):
    tp(8, i, "again")
print(guest.ACCELERATED)
"""


def test_threads_fork_and_reconnect_exact_in_block_mode(tmp_path):
    """4 threads in block mode (every record kept), a forked child and a second
    connection: every value exact, so no thread ever wrote through another's or a
    stale cached writer."""
    out = str(tmp_path / "s")
    prog = tmp_path / "threads.py"
    prog.write_text(THREADS)
    n = 50000
    r = record(out, sys.executable, str(prog), str(n), opts=("--mode", "block"),
               env=env(HYPERTRACE_PURE="0"))
    assert r.stdout.split()[0] == "True"
    events, _ = babeltrace(out)
    seen: dict = {}
    for name, f in events:
        assert name == "th"
        seen.setdefault(int(f["t"]), []).append((int(f["i"]), f["who"]))
    for t in range(4):
        assert seen[t] == [(i, "t%d" % t) for i in range(n)]
    assert seen[9] == [(i, "child") for i in range(1000)]
    assert seen[8] == [(i, "again") for i in range(10)]
    assert totals(stats(out))["discarded"] == 0


def test_guest_path_carries_the_extension_for_the_same_interpreter(tmp_path):
    d = hypertrace("guest-path", env=env(HYPERTRACE_PURE="")).stdout.strip()
    files = os.listdir(os.path.join(d, "hypertrace", "guest"))
    assert any(f.startswith("_accel.") and f.endswith(".so") for f in files), files
    # nothing else of the host package: the guest sees its own part only
    assert set(os.listdir(os.path.join(d, "hypertrace"))) - {"__pycache__"} == {
        "__init__.py", "abi", "guest"}
    code = "from hypertrace import guest; print(guest.ACCELERATED)"
    for pure, want in (("", "True"), ("1", "False")):
        r = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, %r); "
                            % d + code], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, HYPERTRACE_PURE=pure))
        assert r.stdout.strip() == want, r.stderr


def test_pure_guest_path_leaves_the_extension_out():
    d = hypertrace("guest-path", env=env(HYPERTRACE_PURE="1")).stdout.strip()
    files = os.listdir(os.path.join(d, "hypertrace", "guest"))
    assert "tracepoint.py" in files and not [f for f in files if f.endswith(".so")]


TSC = r"""
import json, time
from hypertrace import guest
tp = guest.event("bracket", "uint64_t before, uint64_t i")
after = []
for i in range(30000):
    a = time.monotonic_ns()
    tp(a, i)
    after.append(time.monotonic_ns())
    if i % 3000 == 0:
        time.sleep(0.03)        # corrections after idle gaps too
print(json.dumps({"info": guest.clock_info(), "after": after}))
"""


def test_tsc_clock_is_clock_monotonic(tmp_path):
    """Where the TSC clock is used, each record's time lies between CLOCK_MONOTONIC
    read just before and just after the call (within a margin far wider than its
    tracking error and far narrower than the line's errors fixed during its
    development), and never goes backwards."""
    out = str(tmp_path / "s")
    prog = tmp_path / "tsc.py"
    prog.write_text(TSC)
    r = record(out, sys.executable, str(prog), opts=("--mode", "block"),
               env=env(HYPERTRACE_PURE="0"))
    said = json.loads(r.stdout.splitlines()[0])
    info = said["info"]
    if info["source"] != "tsc":
        pytest.skip("no invariant TSC used as the kernel's clocksource here")
    ev = [e for e in map(json.loads, hypertrace("report", out, "--json").stdout.splitlines())
          if e["name"] == "bracket"]
    assert [e["fields"]["i"] for e in ev] == list(range(30000))
    margin = 50_000
    raw = [e["raw_ts"] for e in ev]
    assert raw == sorted(raw)
    for e, after in zip(ev, said["after"]):
        assert e["fields"]["before"] - margin <= e["raw_ts"] <= after + margin, e
    assert 0 <= info["max_error_ns"] < margin and info["updates"] > 5
    clock = stats(out)["clocks"]["local"]
    assert clock["kind"] == "estimated" and clock["causality_violations"] == 0
