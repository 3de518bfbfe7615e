#!/usr/bin/env python3
"""Does every event reconcile, whatever the producers' lifetimes? One table.

Runs three workloads under `hypertrace record` (discard mode, the default 32
rings) and prints, for each, what was emitted against what `stats --json`
reports: recorded + discarded (in streams) + lost_without_ring (the region's
shared counters: events emitted while the thread had no ring). `unaccounted`
must be 0. Usage: python benchmarks/bench_losses.py [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PY = sys.executable

FORKS = r"""
import os
from hypertrace import guest
tp = guest.event("forked", "uint32_t child, uint32_t i")
kids = []
for k in range(200):
    pid = os.fork()
    if pid == 0:
        for i in range(50):
            tp(k, i)
        os._exit(0)          # no atexit, no thread-local destructor
    kids.append(pid)
for p in kids:
    os.waitpid(p, 0)
"""

THREADS = r"""
import threading
from hypertrace import guest
tp = guest.event("short", "uint32_t t, uint32_t i")
def run(t):
    for i in range(10):
        tp(t, i)
for t in range(1000):
    th = threading.Thread(target=run, args=(t,))
    th.start()
    th.join()
"""

HOG = r"""
import subprocess, sys, threading
from hypertrace import guest
tp = guest.event("hog", "uint32_t t")
held, done = threading.Barrier(33), threading.Event()
def run(t):
    tp(t)
    held.wait()
    done.wait()
ts = [threading.Thread(target=run, args=(t,)) for t in range(32)]
for t in ts:
    t.start()
held.wait()
subprocess.run([sys.executable, "-c", "from hypertrace import guest\n"
                "tp = guest.event('honest', 'uint32_t i')\n"
                "for i in range(1000):\n    tp(i)\n"], check=True, timeout=120)
done.set()
"""

CASES = [("200 forked children x 50, each leaving by os._exit", FORKS, 200 * 50),
         ("1 000 sequential threads x 10", THREADS, 1000 * 10),
         ("32 threads holding every ring + an honest process x 1 000", HOG, 32 + 1000)]


def run_case(code: str, tmp: str) -> dict:
    app = os.path.join(tmp, "app.py")
    with open(app, "w") as f:
        f.write(code)
    out = os.path.join(tmp, "s")
    hp = [PY, "-m", "hypertrace.cli"]
    subprocess.run(hp + ["record", "-o", out, "--", PY, app], check=True,
                   capture_output=True, timeout=600)
    st = json.loads(subprocess.run(hp + ["stats", out, "--json"], check=True,
                                   capture_output=True, text=True).stdout)
    ss = [s for s in st["streams"] if s["domain"] == "local"]
    dom = st.get("domains", {}).get("local", {})
    return {"recorded": sum(s["recorded"] for s in ss),
            "discarded": sum(s["discarded"] for s in ss),
            "lost_without_ring": dom.get("lost_without_ring", 0),
            "lost_in_refused_claims": dom.get("lost_in_refused_claims", 0)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    print("| workload | emitted | recorded | discarded | lost_without_ring | unaccounted |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, code, emitted in CASES:
        for _ in range(a.runs):
            with tempfile.TemporaryDirectory() as tmp:
                r = run_case(code, tmp)
            left = emitted - r["recorded"] - r["discarded"] - r["lost_without_ring"] - \
                r["lost_in_refused_claims"]
            print("| %s | %d | %d | %d | %d | %d |" % (
                name, emitted, r["recorded"], r["discarded"], r["lost_without_ring"], left))


if __name__ == "__main__":
    main()
