#!/usr/bin/env python3
"""Decode + export of a large session, per format: events/s and peak memory.

Records a session of N events (default 10 M) with `hypertrace record` running
examples/workload.py (2 processes x 2 threads; `app_tick` carries a string,
`work_done` a double and a bool), then runs, each in its own process so that
its peak RSS is its own:
  * decode only: the columnar decoder (numpy) over every event, no output;
  * decode, scalar: Session.events() (one record at a time, what `report`
    uses) over the first events, for comparison;
  * `hypertrace export --format perfetto | json | parquet | html`;
  * the decode and the Perfetto export again with HYPERTRACE_PURE=1: the numpy
    code the C gather and encoder (native/gather.c, native/pbwire.c) replace.
Wall time includes Python start-up and imports.

Usage: python benchmarks/bench_export.py [--events N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable

DECODE = """
import sys, time
from hypertrace.read.session import Session
from hypertrace.read.columns import Columns
n = 0
for b in Columns(Session(sys.argv[1])).batches():
    n += len(b)
print(n)
"""
SCALAR = """
import itertools, sys
from hypertrace.read.session import Session
print(sum(1 for _ in itertools.islice(Session(sys.argv[1]).events(), int(sys.argv[2]))))
"""


def run(args: list, pure: bool = False) -> tuple:
    """(seconds, peak RSS in MiB, stdout) of one child process."""
    env = dict(os.environ, HYPERTRACE_PURE="1" if pure else "0")
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=env)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    dt = time.perf_counter() - t
    if p.returncode:
        raise SystemExit("failed: %s" % " ".join(args))
    return dt, ru.ru_maxrss / 1024, out


def size_of(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return os.path.getsize(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--keep", help="record into this directory and keep it")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="ht-bench-export-")
    sess = os.path.join(work, "session")
    per_thread = a.events // 4 * 100 // 101       # work_done adds 1 % more events
    if not os.path.exists(sess):
        print("recording %d events ..." % a.events, flush=True)
        subprocess.run([PY, "-m", "hypertrace.cli", "record", "-o", sess, "--mode", "block",
                        "--", PY, os.path.join(ROOT, "examples", "workload.py"), "2",
                        str(per_thread)], check=True, stdout=subprocess.DEVNULL)
    stored = sum(os.path.getsize(os.path.join(sess, f)) for f in os.listdir(sess)
                 if os.path.isfile(os.path.join(sess, f)))
    print("machine: %s, %d CPUs, Python %s" % (platform.processor() or platform.machine(),
                                               os.cpu_count(), platform.python_version()))
    print("session: %s, %.0f MB of CTF streams" % (sess, stored / 1e6))
    print()
    print("%-34s %11s %9s %11s %10s %10s" % ("step", "events", "seconds", "events/s",
                                            "peak MiB", "output MB"))
    rows = []
    dt, rss, out = run([PY, "-c", DECODE, sess])
    n = int(out)
    rows.append(("decode only (columnar)", n, dt, rss, None))
    k = min(n, 1_000_000)
    dt, rss, out = run([PY, "-c", SCALAR, sess, str(k)])
    rows.append(("decode, scalar (first %dk)" % (k // 1000), int(out), dt, rss, None))
    dt, rss, _ = run([PY, "-c", DECODE, sess], pure=True)
    rows.append(("decode only (numpy, no C)", n, dt, rss, None))
    for fmt, suffix, pure in (("perfetto", ".pftrace", False), ("json", ".json", False),
                              ("parquet", "-pq", False), ("html", ".html", False),
                              ("perfetto", ".pftrace", True)):
        out_path = os.path.join(work, "out" + suffix)
        dt, rss, _ = run([PY, "-m", "hypertrace.cli", "export", sess, "--format", fmt,
                          "-o", out_path], pure)
        rows.append(("decode + export --format %s%s" % (fmt, " (no C)" if pure else ""), n,
                     dt, rss, size_of(out_path)))
        if os.path.isdir(out_path):
            shutil.rmtree(out_path)
        else:
            os.unlink(out_path)
    for name, ev, dt, rss, size in rows:
        print("%-34s %11d %9.2f %11.0f %10.0f %10s" % (
            name, ev, dt, ev / dt, rss, "-" if size is None else "%.0f" % (size / 1e6)))
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
