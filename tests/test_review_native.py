"""Findings of the review of issue 13 (native emitters), each a test that failed before:
emits from Python code running inside another emit, the accelerated tracepoint as a
Python object, the clock fit of a short-lived producer, C++ inclusion, a sparse file
given as the channel, and losses explained with the setting that avoids them."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import weakref

import pytest
from conftest import build_c, env, hypertrace, local, record, stats

from hypertrace import guest
from hypertrace.guest import accel
from hypertrace.host import clock

REENTER = r"""
from hypertrace import guest
outer = guest.event("outer", "uint64_t v")
inner = guest.event("inner", "uint64_t a, uint64_t b, uint64_t c")
class Evil:
    # an argument whose conversion emits (a traced helper, a logging hook, a __del__)
    def __index__(self):
        inner(1, 2, 3)
        return 5
for i in range(3):
    outer(Evil())
outer(7)
inner(8, 9, 10)
"""

SIGNALS = r"""
import signal, sys, time
from hypertrace import guest
main_ev = guest.event("main_ev", "uint64_t i, const char *s")
sig_ev = guest.event("sig_ev", "uint64_t n")
n = 0
def handler(signum, frame):
    global n
    n += 1
    sig_ev(n)
signal.signal(signal.SIGALRM, handler)
main_ev(0, "")             # the thread's ring claimed before the first signal
sig_ev(0)
# every 0.5 ms: a handler interrupted by the next signal before it returns nests, and
# the first pure-Python emit of a handler can take longer than 0.1 ms on a busy machine
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
i = 0
while n < 1500:
    main_ev(i, "x" * (i % 50))
    i += 1
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print("EMITTED", i + n + 2)
"""


@pytest.mark.parametrize("pure", ["0", "1"])
def test_an_emit_inside_an_emit_is_dropped_and_counted(tmp_path, pure):
    app = tmp_path / "reenter.py"
    app.write_text(REENTER)
    out = str(tmp_path / "s")
    record(out, sys.executable, str(app), env=env(HYPERTRACE_PURE=pure))
    got = [json.loads(x) for x in hypertrace("report", out, "--json").stdout.splitlines()]
    got = [(e["name"], e["fields"]) for e in got if e["domain"] == "local"]
    # the outer records are whole and in place; each inner one was dropped, counted
    assert got == [("outer", {"v": 5})] * 3 + [("outer", {"v": 7}),
                                               ("inner", {"a": 8, "b": 9, "c": 10})]
    s = local(stats(out))
    assert len(s) == 1 and s[0]["malformed"] == 0 and s[0]["torn"] == 0
    assert (s[0]["recorded"], s[0]["discarded"], s[0]["emitted"]) == (5, 3, 8)


@pytest.mark.parametrize("pure", ["0", "1"])
def test_a_signal_handler_that_traces_loses_nothing_uncounted(tmp_path, pure):
    app = tmp_path / "signals.py"
    app.write_text(SIGNALS)
    out = str(tmp_path / "s")
    r = record(out, sys.executable, str(app), opts=("--buffer-size", "64K"),
               env=env(HYPERTRACE_PURE=pure))
    emitted = int(r.stdout.split("EMITTED ")[1].split()[0])
    st = stats(out)
    s = local(st)
    assert sum(x["malformed"] for x in s) == 0 and sum(x["torn"] for x in s) == 0
    assert sum(x["clamped"] for x in s) == 0        # no record written over another
    lost = st["domains"]["local"]["lost_without_ring"]
    assert sum(x["recorded"] + x["discarded"] for x in s) + lost == emitted


def _tracepoint():
    return guest.event("review_obj_%d" % os.getpid(), "uint64_t a")


def test_the_tracepoint_copies_and_weakly_references_as_a_function():
    tp = _tracepoint()
    assert copy.copy(tp) is tp and copy.deepcopy([tp])[0] is tp
    assert weakref.ref(tp)() is tp
    assert tp.__module__ == "hypertrace.guest"


@pytest.mark.skipif(not accel.ACCELERATED, reason="the accelerator is not built or is off")
def test_an_uninitialised_accelerated_tracepoint_raises():
    t = type(_tracepoint())
    with pytest.raises(TypeError, match="uninitialised"):
        t.__new__(t)(1)


def test_one_clock_exchange_fixes_the_offset_not_a_drift():
    # one exchange: every drift fits it as well; the fit must not pick 1 %
    seg = clock.fit("x", [(1000, 6300, 6400, 1700)]).segments
    assert len(seg) == 1 and seg[0].drift_ppm == 0.0
    assert abs(seg[0].offset_ns - 5000) <= seg[0].uncertainty_ns
    # many exchanges still find the drift they show (30 ppm)
    rows = []
    for i in range(50):
        t1 = i * 10_000_000
        t2 = int(t1 + 123_456 + 30e-6 * t1 + 5000)
        rows.append((t1, t2, t2 + 1000, t1 + 20_000))
    seg = clock.fit("x", rows).segments
    assert len(seg) == 1 and abs(seg[0].drift_ppm - 30) < 1.5


def test_a_cpp_translation_unit_is_told_the_header_is_c(tmp_path):
    if subprocess.run(["sh", "-c", "command -v g++"], capture_output=True).returncode:
        pytest.skip("g++ is not installed")
    (tmp_path / "trace-events").write_text("ev(int a)\n")
    hypertrace("gen-c", str(tmp_path / "trace-events"), "-o", str(tmp_path / "trace.h"))
    (tmp_path / "a.cc").write_text('#include "trace.h"\nint main() { trace_ev(1); }\n')
    flags = hypertrace("c-config", "--cflags").stdout.split()
    r = subprocess.run(["g++", "-std=c++17", *flags, "-c", "-o", str(tmp_path / "a.o"),
                        str(tmp_path / "a.cc")], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "are C11, not C++" in r.stderr


C_APP = r"""
#include <stdio.h>
#include "trace.h"
int main(void) { trace_sparse_ev(1); puts("ran"); return 0; }
"""


def test_a_sparse_file_as_channel_is_refused_without_reading_it(tmp_path):
    """A hostile or mistaken HYPERTRACE_CHANNEL naming a huge sparse file: refused by its
    header, in one line, without mapping the whole file in (memory, not time, checked)."""
    exe = build_c(tmp_path, "sparse_ev(int a)\n", C_APP)
    big = tmp_path / "sparse"
    with open(big, "wb") as f:
        f.truncate(8 << 30)
    for spec in ("shm:" + str(big), str(big)):
        # each program run under a fresh interpreter that reports its child's peak RSS
        # (this process's RUSAGE_CHILDREN is the peak of every child it ever had)
        for cmd in ([exe], [sys.executable, "-c", "from hypertrace import guest\n"
                            "guest.event('e', 'int a')(1)\nprint('ran')"]):
            r = subprocess.run([sys.executable, "-c", RSS_OF_CHILD, *cmd],
                               env=env(HYPERTRACE_CHANNEL=spec), capture_output=True,
                               text=True, timeout=300)
            out, _, rss = r.stdout.rpartition("RSS ")
            assert r.returncode == 0 and out == "ran\n", (r.stdout, r.stderr)
            assert r.stderr.count("\n") == 1 and "magic" in r.stderr, r.stderr
            assert int(rss) < 200_000, "%s KiB resident for a refused channel" % rss


RSS_OF_CHILD = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:])\n"
    "print('RSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n")


BURST = r"""
import sys, threading
from hypertrace import guest
tp = guest.event("burst", "uint64_t i, uint64_t t")
go = threading.Barrier(int(sys.argv[1]))
held = threading.Barrier(int(sys.argv[1]))
def run(t):
    go.wait()
    tp(0, t)
    # every thread has emitted once while all are alive: with --rings 1 one of them
    # holds the ring and the other's first record finds none, however they are scheduled
    held.wait()
    for i in range(1, 20000):
        tp(i, t)
ths = [threading.Thread(target=run, args=(t,)) for t in range(int(sys.argv[1]))]
for t in ths: t.start()
for t in ths: t.join()
"""


def test_losses_are_explained_with_the_setting_that_avoids_them(tmp_path):
    app = tmp_path / "burst.py"
    app.write_text(BURST)
    out = str(tmp_path / "full")
    r = record(out, sys.executable, str(app), "1", opts=("--buffer-size", "16K"))
    st = stats(out)
    discarded = sum(s["discarded"] for s in local(st))
    assert discarded > 0, "a 16 KiB ring should overflow"
    causes = st["losses"]["local"]
    assert causes[0]["kind"] == "ring_full" and causes[0]["count"] == discarded
    assert "--buffer-size 64K" in causes[0]["avoid"] and "--mode block" in causes[0]["avoid"]
    assert "local: %d lost: rings full of 16K per thread" % discarded in r.stderr
    assert "--buffer-size 64K" in hypertrace("stats", out).stdout
    # two threads, one ring: the other's records are lost without a ring
    out = str(tmp_path / "norings")
    r = record(out, sys.executable, str(app), "2", opts=("--rings", "1"))
    st = stats(out)
    lost = st["domains"]["local"]["lost_without_ring"]
    assert lost > 0
    kinds = {x["kind"]: x for x in st["losses"]["local"]}
    assert kinds["no_ring"]["count"] == lost
    assert kinds["no_ring"]["avoid"].startswith("--rings 2 or more,")
    assert "lost: emitted while the thread had no ring" in r.stderr
    # nothing lost, nothing said
    out = str(tmp_path / "fine")
    r = record(out, sys.executable, str(app), "1", opts=("--buffer-size", "4M"))
    assert stats(out)["losses"] == {} and "to avoid" not in r.stdout


def test_each_cause_is_named_and_advised_within_what_record_accepts():
    from hypertrace import losses
    dom = {"mode": "discard", "rings": 32, "ring_size": 4 << 20}
    # malformed records leave seq gaps: counted as such, not as a full ring
    got = losses.explain(dom, [{"recorded": 100, "discarded": 3, "malformed": 3}])
    assert [(x["kind"], x["count"]) for x in got] == [("malformed", 3)]
    # a burst past the ring: a bigger ring first; a sustained overload: block mode first
    burst = losses.explain(dom, [{"recorded": 1000, "discarded": 10}])[0]["avoid"]
    assert burst.startswith("--buffer-size 16M")
    flood = losses.explain(dom, [{"recorded": 10, "discarded": 1000}])[0]["avoid"]
    assert flood.startswith("--mode block")
    # after a write error, full rings are the disk's doing
    disk = losses.explain(dom, [{"recorded": 10, "discarded": 50}], "cannot write x: full")
    assert disk[0]["kind"] == "disk" and "while the disk was full" in disk[0]["why"]
    # never a setting record refuses
    top = {"mode": "discard", "rings": 4096, "ring_size": 1 << 30, "lost_without_ring": 5}
    for x in losses.explain(top, [{"recorded": 1, "discarded": 9}]):
        assert "--rings 8192" not in x["avoid"] and "--buffer-size 4G" not in x["avoid"]
        assert "1G" not in x["avoid"]
    # refused declarations are tracepoints, said so, and not summed as events
    dec = losses.explain({"declarations_refused": 3}, [])
    assert dec[0]["kind"] == "declarations_refused" and "not events" in dec[0]["why"]
    assert losses.lines("local", dec)[0].startswith("local: 3 refused:")
    # counts no producer could reach in the recording's time: forged, no advice (review:
    # a co-producer scribbling on the region had 1.4e9 "rings full" advised away)
    forged = losses.explain(dom, [{"recorded": 100, "discarded": 1_430_061_126},
                                  {"recorded": 100, "discarded": 4}], duration_s=3.8)
    assert [(x["kind"], x["count"]) for x in forged] == [("implausible", 1_430_061_126),
                                                        ("ring_full", 4)]
    assert forged[0]["avoid"].startswith("nothing to set")
    honest = losses.explain(dom, [{"recorded": 10, "discarded": 50_000_000}], duration_s=1.0)
    assert honest[0]["kind"] == "ring_full"


def test_a_program_killed_by_a_signal_exits_as_a_shell_says(tmp_path):
    r = record(str(tmp_path / "s"), sys.executable, "-c", "import os; os.kill(os.getpid(), 9)",
               check=False)
    assert r.returncode == 128 + 9, (r.returncode, r.stderr)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_sparse_qemu_region_on_a_full_shm_fails_at_setup_not_with_sigbus(tmp_path):
    """QEMU (started first) created the region file, sparse; /dev/shm has no room for its
    rings: the recorder must say so in one line at setup, never fault on first touch."""
    from conftest import small_disk
    with small_disk(tmp_path / "shm", "200m") as shm:
        rt = shm / "rt"
        rt.mkdir(mode=0o700)
        (rt / "vm1").touch(mode=0o600)
        with open(shm / "filler", "wb") as f:        # room for the host's region only
            f.write(b"\0" * (100 << 20))
        # before: the sparse file was attached, and the recording served it (until the
        # guest's first write into a ring page faulted)
        r = hypertrace("record", "-o", str(tmp_path / "s"), "--qemu", "vm1", check=False,
                       env=env(HYPERTRACE_RUNTIME_DIR=str(rt)), timeout=60)
        assert r.returncode not in (0, -7, 135) and "Traceback" not in r.stderr, r.stderr
        assert "No space left on device" in r.stderr and r.stderr.count("\n") == 1, r.stderr
