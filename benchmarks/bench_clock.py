"""Clock correlation accuracy, side by side in one run: exchanges through the
shared-memory mailboxes (the default) against the same exchanges over the
control socket (HYPERTRACE_CLOCK=socket), for an idle and a busy producer, each
under a real `hypertrace record` on the same host (where the true offset is 0).

Usage: python benchmarks/bench_clock.py [SECONDS]   (prints a Markdown table)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
APP = r"""
import sys, threading, time
from hypertrace import guest
guest.connect(sync_interval=0.05)
tp = guest.event("bench_tick", "uint64_t i")
end = time.monotonic() + float(sys.argv[2])
def spin():
    i = 0
    while time.monotonic() < end:
        tp(i)
        i += 1
if sys.argv[1] == "busy":           # a thread emitting flat out beside the clock thread
    t = threading.Thread(target=spin)
    t.start()
    t.join()
else:
    while time.monotonic() < end:
        tp(0)
        time.sleep(0.01)
"""


def run(path: str, load: str, seconds: float, tmp: str) -> dict:
    out = os.path.join(tmp, "%s-%s" % (path, load))
    env = dict(os.environ, HYPERTRACE_CLOCK=path,
               PYTHONPATH=os.path.join(HERE, "..", "src"))
    subprocess.run([sys.executable, "-m", "hypertrace.cli", "record", "-o", out, "--",
                    sys.executable, "-c", APP, load, str(seconds)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    st = subprocess.run([sys.executable, "-m", "hypertrace.cli", "stats", out, "--json"],
                        env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(st)["clocks"]["local"]


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    tmp = tempfile.mkdtemp(prefix="ht-bench-clock-")
    print("| exchanges through | producer | samples | min round trip | offset (true: 0) "
          "| reported uncertainty | violations |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for load in ("idle", "busy"):
        for path in ("socket", "mailbox"):
            c = run(path, load, seconds, tmp)
            print("| %s | %s | %d | %.1f µs | %+.2f µs | %.1f µs | %d |" % (
                "control socket" if path == "socket" else "shared-memory mailbox", load,
                c["samples"], c["min_rtt_ns"] / 1e3, c["offset_ns"] / 1e3,
                c["uncertainty_ns"] / 1e3, c["causality_violations"]))


if __name__ == "__main__":
    main()
