#!/usr/bin/env python3
"""Synchronous vs asynchronous tracing: the numbers behind hypertrace's design.

Under a real `hypertrace record` (collector + control server), 1 and 4 producer
processes each emit N events either
  * synchronously: every event is a sync_point() round trip to the host (what
    the original hypertrace did with an MMIO exit per event), or
  * asynchronously: a tracepoint writing into the process's ring.
Prints per-event cost and aggregate rate, the sync_point round trip
distribution, and the clock estimate of the run.

Usage: python benchmarks/bench_sync.py [--quick]
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src")
sys.path.insert(0, SRC)

import hypertrace  # noqa: E402

PRODUCER = r"""
import sys, time
from hypertrace import guest
mode, n = sys.argv[1], int(sys.argv[2])
tp = guest.event("bench_async", "uint64_t i, int32_t v")
guest.sync_point("warmup")
rtts = []
t = time.perf_counter()
if mode == "sync":
    for i in range(n):
        rtts.append(guest.sync_point("bench_sync", i))
else:
    for i in range(n):
        tp(i, 7)
dt = time.perf_counter() - t
print(repr((dt, rtts)))
"""


def run(mode: str, procs: int, n: int, tmp: str) -> dict:
    out = os.path.join(tmp, "%s-%d" % (mode, procs))
    script = os.path.join(tmp, "producer.py")
    with open(script, "w") as f:
        f.write(PRODUCER)
    driver = ("import subprocess, sys\n"
              "ps = [subprocess.Popen([sys.executable, %r, %r, '%d'], stdout=subprocess.PIPE, "
              "text=True) for _ in range(%d)]\n"
              "print([p.communicate()[0].strip() for p in ps])\n" % (script, mode, n, procs))
    env = dict(os.environ, PYTHONPATH=SRC)
    r = subprocess.run([sys.executable, "-m", "hypertrace.cli", "record", "-o", out, "--",
                        sys.executable, "-c", driver], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(r.stderr)
    results = [ast.literal_eval(x) for x in ast.literal_eval(r.stdout.splitlines()[0])]
    wall = max(dt for dt, _ in results)
    rtts = sorted(x for _, rt in results for x in rt)
    st = json.loads(subprocess.run([sys.executable, "-m", "hypertrace.cli", "stats", out,
                                    "--json"], capture_output=True, text=True, env=env).stdout)
    return {"per_event_ns": sum(dt for dt, _ in results) / (procs * n) * 1e9,
            "rate": procs * n / wall, "rtts": rtts, "clock": st["clocks"]["local"]}


def pct(v, p):
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    n_sync = 500 if a.quick else 3000
    n_async = 20_000 if a.quick else 200_000
    tmp = tempfile.mkdtemp(prefix="ht-bsync-")
    try:
        print("hypertrace %s on %s, %s, Python %s, %d CPUs" % (
            hypertrace.__version__,
            platform.node(), platform.machine(), platform.python_version(), os.cpu_count()))
        print()
        print("| path | producers | ns/event (per producer) | events/s (all) |")
        print("|---|---:|---:|---:|")
        rows = {}
        for mode, n in (("sync", n_sync), ("async", n_async)):
            for procs in (1, 4):
                r = rows[(mode, procs)] = run(mode, procs, n, tmp)
                label = ("sync_point() per event (synchronous, as the original hypertrace)"
                         if mode == "sync" else "tracepoint into the ring (asynchronous)")
                print("| %s | %d | %.0f | %.0f |" % (label, procs, r["per_event_ns"], r["rate"]))
        for procs in (1, 4):
            print()
            rt = rows[("sync", procs)]["rtts"]
            print("sync_point round trip, %d producer(s), %d calls: min %.1f us, p50 %.1f us, "
                  "p90 %.1f us, p99 %.1f us" % (procs, len(rt), rt[0] / 1e3, pct(rt, 50) / 1e3,
                                                pct(rt, 90) / 1e3, pct(rt, 99) / 1e3))
        for procs in (1, 4):
            s, a_ = rows[("sync", procs)]["rate"], rows[("async", procs)]["rate"]
            print("asynchronous / synchronous throughput with %d producer(s): %.0fx"
                  % (procs, a_ / s))
        c = rows[("sync", 1)]["clock"]
        print()
        print("clock estimate of the 1-producer sync run: offset %d ns, drift %.3f ppm, "
              "uncertainty %d ns, %d samples, %d causality violations" % (
                  c["offset_ns"], c["drift_ppm"], c["uncertainty_ns"], c["samples"],
                  c["causality_violations"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
