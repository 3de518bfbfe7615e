#!/usr/bin/env python3
"""Per-event cost of hypertrace tracepoints against baselines, measured side by side.

Prints one table:
  * an empty Python function call with the same arguments (the floor);
  * a hypertrace tracepoint with no channel, and one disabled by the host;
  * an enabled tracepoint (integer args; with a string), while a real
    `hypertrace record --channel` collector drains the rings in another process;
  * `logging` to a FileHandler;
  * the LTTng-UST Python agent (a logging.Handler), where python3-lttngust and
    lttng-sessiond are installed: run under /usr/bin/python3;
  * aggregate events/s with 1, 2 and 4 producer processes under `hypertrace record`;
  * collector drain rate in events/s and MB/s over pre-filled rings.

Usage: python benchmarks/bench_emit.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from hypertrace import guest  # noqa: E402
from hypertrace.host.collector import Collector  # noqa: E402
from hypertrace.host.region import Region  # noqa: E402

sys.path.insert(0, HERE)
from bench_drain import poll_until_empty  # noqa: E402


def per_call(stmt: str, g: dict, n: int, repeat: int = 7) -> float:
    """Best-of-`repeat` cost in ns of one execution of `stmt`."""
    return min(timeit.repeat(stmt, globals=g, number=n, repeat=repeat)) / n * 1e9


def wait_for(path: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit("collector did not create %s" % path)
        time.sleep(0.01)
    time.sleep(0.05)


def emit_costs(n: int, tmp: str) -> list:
    rows = []

    def empty(a, b):
        pass

    tick = guest.event("bench_int", "uint64_t n, int32_t v")
    msg = guest.event("bench_str", "uint64_t n, const char *s")
    g = {"empty": empty, "tick": tick, "msg": msg}
    floor = per_call("empty(1, 2)", g, n)
    rows.append(("empty Python call (floor)", floor))
    rows.append(("tracepoint, no channel", per_call("tick(1, 2)", g, n)))

    # enabled: a real collector in another process drains while we emit
    name = "ht-bench-%d" % os.getpid()
    chan = "/dev/shm/" + name
    out = os.path.join(tmp, "emit-session")
    col = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--channel", "shm:" + chan], stdout=subprocess.DEVNULL,
                           env=dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "src")))
    try:
        wait_for(chan)
        guest.connect("shm:" + chan)
        rows.append(("tracepoint enabled, 2 int args", per_call("tick(1, 2)", g, n)))
        rows.append(("tracepoint enabled, int + 11-char string",
                     per_call("msg(1, 'hello world')", g, n)))
        region = Region.open(chan)
        region.set_enabled(tick.event_id, False)
        time.sleep(0.05)  # the guest's poller mirrors the enable table every 5 ms
        assert not tick.enabled
        rows.append(("tracepoint disabled by the host", per_call("tick(1, 2)", g, n)))
        region.close(remove=False)
        guest.disconnect()
    finally:
        col.terminate()
        col.wait()
    st = json.loads(subprocess.run(
        [sys.executable, "-m", "hypertrace.cli", "stats", out, "--json"], capture_output=True,
        text=True, env=dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "src"))).stdout)
    lost = st["totals"]["discarded"]

    log = logging.getLogger("bench")
    log.propagate = False
    h = logging.FileHandler(os.path.join(tmp, "log.txt"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    rows.append(("logging to a FileHandler", per_call("log.info('tick %d %d', 1, 2)",
                                                      {"log": log}, max(n // 10, 1000), 5)))
    log.removeHandler(h)
    h.close()
    lt = lttng_cost(max(n // 50, 500))
    rows.append(("LTTng-UST Python agent (logging handler)", lt))
    return rows, floor, lost


LTTNG_SNIPPET = r"""
import logging, timeit, sys
import lttngust  # registers with lttng-sessiond
log = logging.getLogger("bench")
log.setLevel(logging.INFO)
n = int(sys.argv[1])
print(min(timeit.repeat("log.info('tick %d %d', 1, 2)", globals={"log": log}, number=n,
                        repeat=5)) / n * 1e9)
"""


def lttng_cost(n: int):
    """ns per event through the LTTng Python agent, or a reason it was not measured."""
    py = "/usr/bin/python3"
    if not (shutil.which("lttng") and shutil.which("lttng-sessiond") and os.path.exists(py)):
        return "not installed"
    check = subprocess.run([py, "-c", "import lttngust"], capture_output=True)
    if check.returncode:
        return "python3-lttngust not importable"
    home = tempfile.mkdtemp(prefix="ht-lttng-")
    env = dict(os.environ, LTTNG_HOME=home, HOME=home)
    subprocess.run(["lttng-sessiond", "--daemonize"], env=env, capture_output=True)
    try:
        sess = "htbench%d" % os.getpid()
        for cmd in (["create", sess, "--output", os.path.join(home, "trace")],
                    ["enable-event", "--python", "bench"], ["start"]):
            r = subprocess.run(["lttng"] + cmd, env=env, capture_output=True, text=True)
            if r.returncode:
                return "lttng %s failed: %s" % (cmd[0], r.stderr.strip()[:60])
        r = subprocess.run([py, "-c", LTTNG_SNIPPET, str(n)], env=env, capture_output=True,
                           text=True, timeout=300)
        subprocess.run(["lttng", "destroy", sess], env=env, capture_output=True)
        if r.returncode:
            return "agent run failed: %s" % r.stderr.strip()[-60:]
        return float(r.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["pkill", "-f", "lttng-sessiond --daemonize"], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


PRODUCER = r"""
import sys, time
from hypertrace import guest
tp = guest.event("agg_tick", "uint64_t n, int32_t v")
n = int(sys.argv[1])
t = time.perf_counter()
for i in range(n):
    tp(i, 7)
print(time.perf_counter() - t)
"""


def aggregate(procs: int, n: int, tmp: str) -> tuple:
    """Events/s emitted by `procs` processes at full speed under `hypertrace record`."""
    out = os.path.join(tmp, "agg-%d" % procs)
    script = os.path.join(tmp, "producer.py")
    with open(script, "w") as f:
        f.write(PRODUCER)
    driver = ("import subprocess,sys\nps=[subprocess.Popen([sys.executable,%r,'%d'],"
              "stdout=subprocess.PIPE,text=True) for _ in range(%d)]\n"
              "print(max(float(p.communicate()[0]) for p in ps))\n" % (script, n, procs))
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "src"))
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "hypertrace.cli", "record", "-o", out, "--",
                        sys.executable, "-c", driver], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    emit_s = float(r.stdout.strip().splitlines()[0])
    st = json.loads(subprocess.run([sys.executable, "-m", "hypertrace.cli", "stats", out,
                                    "--json"], capture_output=True, text=True, env=env).stdout)
    tot = st["totals"]
    return procs * n / emit_s, tot["recorded"], tot["discarded"], wall


def drain_rate(events: int, tmp: str) -> tuple:
    """Collector throughput over rings filled beforehand (no producer running)."""
    rings = 4
    per_ring = events // rings
    ring_size = 1 << max(20, (per_ring * 40).bit_length())
    chan = "/dev/shm/ht-drain-%d" % os.getpid()
    region = Region.create(chan, "drain", n_rings=rings, ring_size=ring_size)
    fill = ("import sys\nfrom hypertrace import guest\nguest.connect(sys.argv[1])\n"
            "tp=guest.event('drain_tick','uint64_t n, int32_t v')\n"
            "[tp(i, 3) for i in range(int(sys.argv[2]))]\n")
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "src"))
    ps = [subprocess.Popen([sys.executable, "-c", fill, "shm:" + chan, str(per_ring)], env=env)
          for _ in range(rings)]
    for p in ps:
        p.wait()
    col = Collector(os.path.join(tmp, "drain"))
    col.add_region(region, "drain")
    t = time.perf_counter()
    n = poll_until_empty(col)
    col.flush()
    dt = time.perf_counter() - t
    col.stop()
    region.close()
    nbytes = n * 24
    return n, dt, n / dt, nbytes / dt / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    a = ap.parse_args()
    n = 20_000 if a.quick else 200_000
    tmp = tempfile.mkdtemp(prefix="ht-bench-")
    try:
        rows, floor, lost = emit_costs(n, tmp)
        print("hypertrace %s on %s, %s, Python %s, %d CPUs" % (
            __import__("hypertrace").__version__, platform.node(), platform.processor() or
            platform.machine(), platform.python_version(), os.cpu_count()))
        print()
        print("| per-event cost | ns/event | x empty call |")
        print("|---|---:|---:|")
        for label, v in rows:
            if isinstance(v, float):
                print("| %s | %.0f | %.1f |" % (label, v, v / floor))
            else:
                print("| %s | %s | |" % (label, v))
        print()
        print("(enabled rows: %d events lost to a full ring during the measurement)" % lost)
        print()
        print("| producers under `hypertrace record` | events/s emitted | recorded | "
              "discarded | wall s |")
        print("|---:|---:|---:|---:|---:|")
        per = n * 2
        for p in (1, 2, 4):
            rate, rec, disc, wall = aggregate(p, per, tmp)
            print("| %d | %.0f | %d | %d | %.2f |" % (p, rate, rec, disc, wall))
        print()
        ev, dt, rate, mbs = drain_rate(n * 4, tmp)
        print("| collector drain | events | seconds | events/s | MB/s |")
        print("|---|---:|---:|---:|---:|")
        print("| pre-filled rings, 24-byte records | %d | %.3f | %.0f | %.1f |" % (
            ev, dt, rate, mbs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
