#!/usr/bin/env python3
"""Does the collector keep up? Issue 14's tables from one run.

1. Losses with default settings for the issue's workloads: (a) 4 processes x 2
   threads x 25 000 Python events, (b) one Python thread x 30 000, (c) a C producer
   at a sustained 5 M events/s for 10 s, (d) 4 C threads x 130 000 at full speed (a
   burst within the 4 MiB rings), (e) 4 x 2 x 2 500 Python events in a booted TCG
   guest through ivshmem (--no-vm: left out).
2. Sustained rates: 1, 2 and 4 C producer processes sharing an aggregate rate, with
   default settings: emitted, recorded, lost.
3. The drain from pre-filled rings, C walk beside the numpy walk, beside the disk's
   write bandwidth (benchmarks/bench_drain.py, run here).

The C producer is tests/apps/keeps_up.c (the tests' own), the Python one
tests/apps/burst.py. Usage: python benchmarks/bench_keeps_up.py [--no-vm]
[--seconds S] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
APPS = os.path.join(ROOT, "tests", "apps")
HT = [sys.executable, "-m", "hypertrace.cli"]


def ht(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(HT + list(args), capture_output=True, text=True, check=True,
                          timeout=kw.pop("timeout", 900), **kw)


def build(tmp: str) -> str:
    d = os.path.join(tmp, "c")
    os.makedirs(d)
    with open(os.path.join(d, "trace-events"), "w") as f:
        f.write("ku_tick(uint64_t i, uint64_t who)\n")
    ht("gen-c", os.path.join(d, "trace-events"), "-o", os.path.join(d, "trace.h"))
    flags = ht("c-config", "--cflags", "--libs").stdout.split()
    exe = os.path.join(d, "keeps_up")
    subprocess.run(["cc", "-std=c11", "-O2", "-pthread", "-I" + d, "-o", exe,
                    os.path.join(APPS, "keeps_up.c"), *flags], check=True, timeout=300)
    return exe


def counts(out: str, domain: str) -> dict:
    st = json.loads(ht("stats", out, "--json").stdout)
    mine = [s for s in st["streams"] if s["domain"] == domain]
    d = st["domains"].get(domain, {})
    return {"recorded": sum(s["recorded"] for s in mine),
            "discarded": sum(s["discarded"] for s in mine),
            "no ring": d.get("lost_without_ring", 0) + d.get("lost_in_refused_claims", 0)}


def run(tmp: str, emitted: int, *cmd: str) -> dict:
    out = os.path.join(tmp, "s")
    try:
        t = time.perf_counter()
        ht("record", "-o", out, "--", *cmd)
        c = counts(out, "local")
        c["wall"] = time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
    c["emitted"] = emitted
    return c


def in_guest(tmp: str) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from apps import vmboot
    name = "htbku%d" % os.getpid()
    out = os.path.join(tmp, "vm")
    gp = ht("guest-path").stdout.strip()
    t = time.perf_counter()
    lines, _rc, _err = vmboot.record_guest(
        out, name, "HYPERTRACE_CHANNEL=ivshmem PYTHONPATH=%s /usr/bin/python3 %s 2500 2 4" % (
            gp, os.path.join(APPS, "burst.py")), dict(os.environ))
    if lines is None:
        return {"emitted": 20000, "error": "the TCG guest did not boot"}
    c = counts(out, name)
    c.update(emitted=20000, wall=time.perf_counter() - t)
    return c


def sustained(tmp: str, exe: str, procs: int, rate: float, secs: float) -> dict:
    """`procs` producer processes at rate/procs each, under one recorder."""
    script = os.path.join(tmp, "par.sh")
    with open(script, "w") as f:
        f.write("for k in $(seq %d); do %s rate %g %g & done; wait\n" % (
            procs, exe, rate / procs, secs))
    return run(tmp, int(rate / procs * secs) * procs, "sh", script)


def pct(c: dict) -> str:
    lost = c["emitted"] - c["recorded"]
    return "%.2f %%" % (100.0 * lost / c["emitted"]) if c["emitted"] else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-vm", action="store_true", help="leave out (e), the TCG guest")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="length of each sustained-rate run (default 3)")
    ap.add_argument("--quick", action="store_true", help="fewer sustained rates")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ht-bench-ku-")
    try:
        exe = build(tmp)
        py = sys.executable
        burst = os.path.join(APPS, "burst.py")
        rows = [
            ("(a) Python, 4 processes x 2 threads x 25 000", run(
                tmp, 200000, py, burst, "25000", "2", "4")),
            ("(b) Python, 1 thread x 30 000 as fast as it goes", run(
                tmp, 30000, py, burst, "30000", "1", "1")),
            ("(c) C, sustained 5 M events/s for 10 s", run(
                tmp, 50_000_000, exe, "rate", "5e6", "10")),
            ("(d) C, 4 threads x 130 000 at full speed", run(
                tmp, 520000, exe, "burst", "4", "130000")),
        ]
        if not a.no_vm:
            rows.append(("(e) Python in a TCG guest, 4 x 2 x 2 500, ivshmem", in_guest(tmp)))
        rates = (1e6, 5e6, 10e6) if a.quick else (1e6, 5e6, 10e6, 20e6)
        table2 = [(p, r, sustained(tmp, exe, p, r, a.seconds)) for p in (1, 2, 4)
                  for r in rates]
        drain = subprocess.run([sys.executable, os.path.join(HERE, "bench_drain.py")]
                               + (["--quick"] if a.quick else []), capture_output=True,
                               text=True, timeout=900)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("bench_keeps_up: %s, %d CPUs, Python %s; default settings (discard mode, 32 rings "
          "x 4 MiB)" % (platform.processor() or platform.machine(), os.cpu_count(),
                        platform.python_version()))
    print()
    print("| workload (default settings) | emitted | recorded | discarded | no ring | lost |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, c in rows:
        if "error" in c:
            print("| %s | %d | unavailable: %s | | | |" % (label, c["emitted"], c["error"]))
            continue
        print("| %s | %d | %d | %d | %d | %s |" % (label, c["emitted"], c["recorded"],
                                                   c["discarded"], c["no ring"], pct(c)))
    print()
    print("| C producers | aggregate rate | emitted | recorded | lost |")
    print("|---:|---:|---:|---:|---:|")
    for p, r, c in table2:
        print("| %d | %g M/s for %g s | %d | %d | %s |" % (p, r / 1e6, a.seconds, c["emitted"],
                                                         c["recorded"], pct(c)))
    print()
    print(drain.stdout.strip() if drain.returncode == 0 else
          "bench_drain.py failed: %s" % drain.stderr.strip()[-300:])


if __name__ == "__main__":
    main()
