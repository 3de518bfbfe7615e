"""Runs inside a QEMU guest for benchmarks/bench_guest_native.py: the per-event cost of
a C tracepoint (2 x uint64_t) and of a Python tracepoint (2 ints) writing into the
ivshmem BAR, beside an empty C loop and an empty Python call, measured one after the
other (never at once: 2 vCPUs). Best of ROUNDS rounds of N events each.

Usage: vmbenchnative.py C_PROGRAM N ROUNDS (HYPERTRACE_CHANNEL=ivshmem)
"""

import json
import subprocess
import sys
import time

print("HT-BOOTED", flush=True)

app, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# the C program first, alone
c = subprocess.run([app, str(n), str(rounds)], capture_output=True, text=True, timeout=1200)

from hypertrace import guest  # noqa: E402

tp = guest.event("bn_py", "uint64_t a, uint64_t b")


def empty(a, b):
    pass


tp(0, 0)            # attach, declare, claim a ring: not measured
time.sleep(1.0)     # the clock thread's first burst of exchanges is over
best_empty = best_tp = float("inf")
for _ in range(rounds):
    t = time.perf_counter_ns()
    for i in range(n):
        empty(i, i)
    best_empty = min(best_empty, (time.perf_counter_ns() - t) / n)
    t = time.perf_counter_ns()
    for i in range(n):
        tp(i, i)
    best_tp = min(best_tp, (time.perf_counter_ns() - t) / n)
print("HT-RESULT " + json.dumps({
    "c_rc": c.returncode, "c_out": c.stdout, "c_err": c.stderr,
    "py_empty_ns": best_empty, "py_tp_ns": best_tp, "py_enabled": bool(tp.enabled),
    "accelerated": bool(getattr(guest, "ACCELERATED", False)),
    "python": sys.version.split()[0]}), flush=True)
guest.disconnect()
