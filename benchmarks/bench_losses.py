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

APPS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                    "apps")                  # the workloads the tests reconcile

CASES = [("200 forked children x 50, each leaving by os._exit", "forks.py", 1 + 200 * 50),
         ("1 000 sequential threads x 10", "short_threads.py", 1000 * 10),
         ("32 threads holding every ring + an honest process x 1 000", "ring_hog.py",
          32 + 1000)]


def run_case(app: str, tmp: str) -> dict:
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
    for name, app, emitted in CASES:
        for _ in range(a.runs):
            with tempfile.TemporaryDirectory() as tmp:
                r = run_case(os.path.join(APPS, app), tmp)
            left = emitted - r["recorded"] - r["discarded"] - r["lost_without_ring"] - \
                r["lost_in_refused_claims"]
            print("| %s | %d | %d | %d | %d | %d |" % (
                name, emitted, r["recorded"], r["discarded"], r["lost_without_ring"], left))


if __name__ == "__main__":
    main()
