#!/usr/bin/env python3
"""Costs measured inside a real QEMU guest (KVM where it boots, else TCG).

Boots the Debian kernel with `hypertrace qemu-args`, runs tests/apps/vmguest.py
(2 processes emitting N events each, with sync points) under `hypertrace record
--qemu`, and prints: per-event emit cost in the guest beside an empty call and a
pack into guest RAM, the sync_point round trip over virtio-serial, and the clock
mapping. Usage: python benchmarks/bench_vm.py [N]
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "apps"))

import vmboot  # noqa: E402


def ht(*args) -> str:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    return subprocess.run([sys.executable, "-m", "hypertrace.cli", *args], check=True,
                          capture_output=True, text=True, env=env).stdout


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    name = "htbench%d" % os.getpid()
    out = os.path.join(tempfile.mkdtemp(prefix="ht-bvm-"), "session")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--qemu", name], stdout=subprocess.DEVNULL, env=env)
    try:
        time.sleep(1)
        cmd = "HYPERTRACE_CHANNEL=ivshmem PYTHONPATH=%s /usr/bin/python3 %s %d" % (
            ht("guest-path").strip(), os.path.join(ROOT, "tests", "apps", "vmguest.py"), n)
        lines, mode = vmboot.run_guest(ht("qemu-args", "--name", name).strip(), cmd, env)
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait()
    res = json.loads(next(x for x in lines if x.startswith("HT-RESULT "))[10:])
    c = json.loads(ht("stats", out, "--json"))["clocks"][name]
    rtts = sorted(r for _, _, rt, _ in res["results"] for r in rt) + [res["rtt"]]
    emit = sum(ns for *_, ns in res["results"]) / len(res["results"])
    print("inside a %s guest (2 vCPUs), 2 processes x %d events" % (mode, n))
    print()
    print("| inside the guest | cost |")
    print("|---|---:|")
    print("| empty Python call | %.1f us |" % (res["empty_ns"] / 1e3))
    print("| struct.pack_into of a record into guest RAM | %.1f us |" % (res["pack_ram_ns"] / 1e3))
    print("| enabled tracepoint into the ivshmem BAR (int + string) | %.1f us |" % (emit / 1e3))
    print("| sync_point() round trip over virtio-serial, min / p50 / max | %.2f / %.2f / %.2f ms |"
          % (rtts[0] / 1e6, rtts[len(rtts) // 2] / 1e6, rtts[-1] / 1e6))
    print("| clock mapping | %d samples, uncertainty %.0f us, %d violations |" % (
        c["samples"], c["uncertainty_ns"] / 1e3, c["causality_violations"]))


if __name__ == "__main__":
    main()
