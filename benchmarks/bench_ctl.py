#!/usr/bin/env python3
"""How long `hypertrace ctl enable/disable` takes to reach a running producer.

A producer under `hypertrace record` spins on one tracepoint's `enabled`
attribute (what its generated code tests) and notes CLOCK_MONOTONIC when it
flips; the script toggles the event N times with `hypertrace ctl` and compares
with the time the recorder wrote the enable byte (its reply's `at_ns`, same
host clock). Also prints the whole command's wall time (Python start-up
included). Usage: python benchmarks/bench_ctl.py [--n 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PY = sys.executable
APP = r"""
import sys, time
from hypertrace import guest
tp = guest.event("toggled", "uint32_t i")
print("READY", flush=True)
state = tp.enabled
while True:
    while tp.enabled == state:
        pass
    state = tp.enabled
    print("FLIP", int(state), time.monotonic_ns(), flush=True)
    if sys.stdin.closed:
        break
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="ht-bench-ctl-")
    app = os.path.join(d, "app.py")
    with open(app, "w") as f:
        f.write(APP)
    out = os.path.join(d, "s")
    rec = subprocess.Popen([PY, "-m", "hypertrace.cli", "record", "-o", out, "--", PY, app],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert rec.stdout.readline().startswith("READY")
    lat, wall = [], []
    for i in range(a.n):
        action = "disable" if i % 2 == 0 else "enable"
        t = time.monotonic_ns()
        r = subprocess.run([PY, "-c", "import json, sys; from hypertrace.host.live import "
                            "request; print(json.dumps(request(sys.argv[1], {'cmd': "
                            "sys.argv[2], 'pattern': 'toggled'})))", out, action],
                           capture_output=True, text=True, check=True)
        at = json.loads(r.stdout)["at_ns"]
        flip = rec.stdout.readline().split()
        assert flip[0] == "FLIP" and int(flip[1]) == (action == "enable")
        lat.append((int(flip[2]) - at) / 1e6)
        wall.append((int(flip[2]) - t) / 1e6)
        time.sleep(0.05)
    rec.kill()
    rec.wait()
    lat.sort()
    wall.sort()
    print("ctl enable/disable reaching a running producer, %d toggles (ms)" % a.n)
    print("%-44s %8s %8s %8s %8s" % ("", "min", "p50", "p90", "max"))
    for name, v in (("enable byte written -> producer sees it", lat),
                     ("ctl command started -> producer sees it", wall)):
        print("%-44s %8.2f %8.2f %8.2f %8.2f" % (name, v[0], v[len(v) // 2],
                                                 v[len(v) * 9 // 10], v[-1]))


if __name__ == "__main__":
    main()
