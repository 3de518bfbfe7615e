#!/usr/bin/env python3
"""Per-event costs inside a booted QEMU guest (TCG: nested KVM hangs on this machine class).

Boots the Debian kernel once with `hypertrace qemu-args` under `hypertrace record
--qemu`, and measures in the guest, one after the other, best of 3 rounds of N
events each:

  * a C tracepoint (gen-c, 2 x uint64_t) writing into the ivshmem BAR, beside the
    same loop with nothing in it (the loop and its arguments: the floor);
  * a Python tracepoint (2 ints) writing into the BAR, beside an empty Python call
    with the same arguments. The guest imports what `hypertrace guest-path` gives:
    the pure-Python tracepoint, or its C extension where one is built
    (`hypertrace.guest.ACCELERATED`); the note says which was measured.

Every event is checked to have reached the host (recorded + discarded = emitted). The
C program is built on the host (the guest sees the host's root filesystem).

`measure(n)` returns the rows (label, ns per event, note) for another benchmark's
table; `main()` prints them. Usage: python benchmarks/bench_guest_native.py [N]
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "apps"))

import vmboot  # noqa: E402

ROUNDS = 3
TRACE_EVENTS = "bn_c(uint64_t a, uint64_t b)\n"
APP = r'''
#define _DEFAULT_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "trace.h"

static uint64_t now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000;
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    double best_empty = 1e300, best_tp = 1e300;
    trace_bn_c(0, 0);       /* attach, declare, claim a ring: not measured */
    sleep(1);               /* the clock thread's first burst of exchanges is over */
    for (int r = 0; r < rounds; r++) {
        uint64_t t = now();
        for (long i = 0; i < n; i++) {
            uint64_t a = (uint64_t)i, b = (uint64_t)i * 3;
            __asm__ volatile("" : : "r"(a), "r"(b) : "memory");    /* kept, not folded */
        }
        double e = (double)(now() - t) / (double)n;
        t = now();
        for (long i = 0; i < n; i++)
            trace_bn_c((uint64_t)i, (uint64_t)i * 3);
        double tp = (double)(now() - t) / (double)n;
        best_empty = e < best_empty ? e : best_empty;
        best_tp = tp < best_tp ? tp : best_tp;
    }
    printf("C-BENCH %.3f %.3f %d\n", best_empty, best_tp, trace_bn_c_enabled());
    return 0;
}
'''


def _ht(*args: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    env.pop("HYPERTRACE_CHANNEL", None)
    return subprocess.run([sys.executable, "-m", "hypertrace.cli", *args], check=True,
                          capture_output=True, text=True, env=env).stdout


def _build(d: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc)")
    with open(os.path.join(d, "trace-events"), "w") as f:
        f.write(TRACE_EVENTS)
    with open(os.path.join(d, "app.c"), "w") as f:
        f.write(APP)
    _ht("gen-c", os.path.join(d, "trace-events"), "-o", os.path.join(d, "trace.h"))
    exe = os.path.join(d, "bench")
    subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-o", exe,
                    os.path.join(d, "app.c"), *_ht("c-config", "--cflags", "--libs").split()],
                   check=True, cwd=d)
    return exe


def measure(n: int) -> list[tuple[str, float, str]]:
    """Boot one TCG guest; rows (label, ns per event, note) measured inside it."""
    tmp = tempfile.mkdtemp(prefix="ht-bgn-")
    try:
        return _measure(n, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _measure(n: int, tmp: str) -> list[tuple[str, float, str]]:
    shared = os.path.join(tmp, "shared")        # seen by the guest (--rwdir)
    os.mkdir(shared)
    exe = _build(shared)
    name = "htbgn%d" % os.getpid()
    out = os.path.join(tmp, "session")
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    env.pop("HYPERTRACE_CHANNEL", None)
    # rings big enough for every round: the cost measured is the record's, not a drop's
    # (QEMU's BAR is sized by qemu-args: the same sizes)
    sizes = ("--rings", "8", "--buffer-size", "4M")
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--qemu", name, *sizes],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(1)
        if rec.poll() is not None:
            raise RuntimeError("hypertrace record failed: %s" % rec.stderr.read())
        cmd = "HYPERTRACE_CHANNEL=ivshmem HYPERTRACE_SYNC_INTERVAL=1000 PYTHONPATH=%s " \
              "/usr/bin/python3 %s %s %d %d" % (
                  _ht("guest-path").strip(),
                  os.path.join(ROOT, "tests", "apps", "vmbenchnative.py"), exe, n, ROUNDS)
        r = vmboot.boot(_ht("qemu-args", "--name", name, *sizes).strip(), cmd, False, env,
                        ("--rwdir=%s" % shared,))
    finally:
        rec.send_signal(signal.SIGINT)
        _, rerr = rec.communicate(timeout=300)
    if r is None:
        raise RuntimeError("the TCG guest did not boot within %d s" % vmboot.TCG_BOOT_TIMEOUT)
    lines, mode = r
    res = [x for x in lines if x.startswith("HT-RESULT ")]
    if not res:
        raise RuntimeError("the guest gave no result:\n" + "\n".join(lines[-30:]))
    res = json.loads(res[0][len("HT-RESULT "):])
    c = [x for x in res["c_out"].splitlines() if x.startswith("C-BENCH ")]
    if res["c_rc"] != 0 or not c or "hypertrace:" in res["c_err"]:
        raise RuntimeError("the C program failed in the guest: %r %r" % (res["c_out"],
                                                                        res["c_err"]))
    c_empty, c_tp, c_on = c[0].split()[1:]
    # every event reached the host: otherwise a no-op would have been measured
    st = json.loads(_ht("stats", out, "--json"))
    want = 1 + ROUNDS * n
    notes = {}
    for ev, on in (("bn_c", c_on == "1"), ("bn_py", res["py_enabled"])):
        ss = [s for s in st["streams"] if s["domain"] == name and s["per_event"].get(ev)]
        got = sum(s["per_event"][ev] for s in ss)
        lost = sum(s["discarded"] for s in ss)
        if not on or got + lost != want:
            raise RuntimeError("%s: %d of %d events reached the host (enabled: %s)"
                               % (ev, got + lost, want, on))
        notes[ev] = "%s guest, %d x %d events, %d dropped" % (mode, ROUNDS, n, lost)
    path = "C extension" if res["accelerated"] else "pure Python"
    return [
        ("guest: C tracepoint (2 x uint64_t) into the ivshmem BAR", float(c_tp), notes["bn_c"]),
        ("guest: empty C loop (its 2 arguments)", float(c_empty),
         "%s guest, best of %d" % (mode, ROUNDS)),
        ("guest: Python tracepoint (2 ints) into the ivshmem BAR", res["py_tp_ns"],
         "%s, %s %s" % (notes["bn_py"], path, res["python"])),
        ("guest: empty Python call (2 ints)", res["py_empty_ns"],
         "%s guest, best of %d" % (mode, ROUNDS)),
    ]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rows = measure(n)
    w = max(len(label) for label, _, _ in rows)
    print("| %-*s | %12s | %s |" % (w, "inside the guest", "per event", "note"))
    print("|%s|%s|---|" % ("-" * (w + 2), "-" * 13 + ":"))
    for label, ns, note in rows:
        cost = "%.1f us" % (ns / 1e3) if ns >= 1000 else "%.1f ns" % ns
        print("| %-*s | %12s | %s |" % (w, label, cost, note))


if __name__ == "__main__":
    main()
