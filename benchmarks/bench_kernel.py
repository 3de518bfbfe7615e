"""Kernel events through hypertrace: how many per second are drained without loss, what the
agent and the collector cost, and what ftrace loses as the rate rises (issue 15).

A C program calls getppid(2) at a paced rate (batches every millisecond) for a few seconds
under `hypertrace record --kernel syscalls:sys_enter_getppid`; each call is one kernel
event. Per rate, one table row from one run: the calls made (the program counts them), the
events of that program recorded (SQL over the session, by common_pid), the losses ftrace
reports (overruns: the instance's ring was full before the agent read it), the agent's CPU
(from the session index) and the collector's (the recording's CPU minus the agent's and the
program's), both as a share of one core. The last row is the program's full speed.

Beside it, the same rates with trace-cmd's own recorder where it can run (it cannot in some
sandboxes: "Can't enable ftrace"; the row then says so).

Usage: python benchmarks/bench_kernel.py [--seconds S] [--rates R,R,...] [--buffer-kb N]
Root and tracefs needed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HT = [sys.executable, "-m", "hypertrace.cli"]

SPIN = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
                          return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    double rate = atof(argv[1]), secs = atof(argv[2]);   /* rate 0: as fast as it can */
    long n = 0; double t0 = now(), end = t0 + secs;
    for (long ms = 0;; ms++) {
        double t = now();
        if (t >= end) break;
        if (rate > 0) {
            long want = (long)(rate * (t - t0 + 0.001));
            while (n < want) { syscall(SYS_getppid); n++; }
            struct timespec d = {0, 200000};
            nanosleep(&d, NULL);
        } else {
            for (int i = 0; i < 1000; i++) { syscall(SYS_getppid); n++; }
        }
    }
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    printf("CALLS %ld %d %.6f %.6f\n", n, (int)getpid(),
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6, now() - t0);
    return 0;
}
"""


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.path.join(ROOT, "src") + (os.pathsep + e["PYTHONPATH"]
                                                   if e.get("PYTHONPATH") else "")
    return e


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sql(out: str, q: str) -> list:
    r = subprocess.run(HT + ["sql", out, q], capture_output=True, text=True, env=env(),
                       timeout=600)
    if r.returncode != 0:
        raise SystemExit("sql failed: " + r.stderr)
    return r.stdout.splitlines()[1:]


def one(tmp: str, spin: str, rate: float, secs: float, buffer_kb: int) -> dict:
    out = os.path.join(tmp, "s%d" % int(rate))
    shutil.rmtree(out, ignore_errors=True)
    before = children_cpu()
    t0 = time.monotonic()
    cmd = HT + ["record", "-o", out, "--kernel", "syscalls:sys_enter_getppid", "--", spin,
                str(rate), str(secs)]
    if buffer_kb:
        cmd[cmd.index("--kernel"):cmd.index("--kernel")] = ["--kernel-buffer", "%dK" % buffer_kb]
    e = env()
    r = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=secs * 20 + 120)
    wall = time.monotonic() - t0
    total_cpu = children_cpu() - before
    if r.returncode != 0:
        raise SystemExit("record failed: " + r.stderr[-2000:])
    line = [x for x in r.stdout.splitlines() if x.startswith("CALLS ")][0].split()
    calls, pid, prog_cpu, prog_wall = int(line[1]), int(line[2]), float(line[3]), float(line[4])
    with open(os.path.join(out, ".hypertrace", "session.json")) as f:
        idx = json.load(f)
    agent_cpu = (idx.get("kernel_agent") or {}).get("cpu_s") or 0.0
    got = int(sql(out, "select count(*) from event_host_sys_enter_getppid where "
                       "f_common_pid = %d" % pid)[0].split()[0])
    lost = sum(s["discarded"] for s in idx["streams"]
               if s.get("thread", "").startswith("kernel-cpu"))
    shutil.rmtree(out, ignore_errors=True)
    return {"rate": rate, "calls": calls, "recorded": got, "lost": lost,
            "achieved": calls / prog_wall, "agent": agent_cpu / prog_wall,
            "collector": max(0.0, total_cpu - agent_cpu - prog_cpu) / wall, "wall": wall}


def in_guest(tmp: str, spin: str, rates: list, secs: float) -> list:
    """The same in one TCG guest: its agent sends through the ivshmem BAR."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from apps import vmboot
    name = "htbk%d" % os.getpid()
    out = os.path.join(tmp, "vm")
    gp = subprocess.run(HT + ["guest-path"], capture_output=True, text=True, env=env(),
                        check=True).stdout.strip()
    lines, _rc, err = vmboot.record_guest(
        out, name, "PYTHONPATH=%s /usr/bin/python3 %s %s %g %s" % (
            gp, os.path.join(ROOT, "benchmarks", "vmkernelbench.py"), spin, secs,
            " ".join("%g" % r for r in rates)), env(), vng_args=("--rwdir=%s" % tmp,))
    if lines is None:
        raise SystemExit("the TCG guest did not boot")
    res = [x for x in lines if x.startswith("HT-RESULT ")]
    if not res:
        raise SystemExit("no result from the guest:\n" + "\n".join(lines[-30:]) + err[-2000:])
    res = json.loads(res[0][len("HT-RESULT "):])
    rows = []
    stats_lost = {}
    rep = subprocess.run(HT + ["report", out, "--json", "--domain", name], capture_output=True,
                         text=True, env=env(), timeout=1200).stdout.splitlines()
    with open(os.path.join(out, ".hypertrace", "session.json")) as f:
        idx = json.load(f)
    pid_of = {s["file"]: s["pid"] for s in idx["streams"]}
    for ln in rep:
        e = json.loads(ln)
        if e["name"] == "hypertrace_ftrace_stats":
            p = pid_of.get(e["stream"])
            stats_lost[p] = stats_lost.get(p, 0) + e["fields"]["overrun"] + e["fields"]["dropped"]
    for r in res["runs"]:
        got = int(sql(out, "select count(*) from \"event_%s_sys_enter_getppid\" where "
                           "f_common_pid = %d" % (name, r["pid"]))[0].split()[0])
        rows.append({"rate": r["rate"], "calls": r["calls"], "recorded": got,
                     "lost": stats_lost.get(r["agent_pid"], 0),
                     "achieved": r["calls"] / r["wall"], "agent": r["agent_cpu"] / r["wall"],
                     "collector": float("nan"), "wall": r["wall"]})
    shutil.rmtree(out, ignore_errors=True)
    return rows


def table(rows: list, where: str) -> None:
    print("%s:\n" % where)
    print("| target rate (events/s) | achieved | calls | recorded | lost (ftrace overruns) "
          "| agent CPU | collector CPU |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        miss = r["calls"] - r["recorded"]
        print("| %s | %.0f | %d | %d | %d%s | %.1f %% | %s |" % (
            "full speed" if r["rate"] == 0 else "%d" % r["rate"], r["achieved"], r["calls"],
            r["recorded"], r["lost"],
            "" if miss == r["lost"] else " (calls - recorded = %d)" % miss,
            100 * r["agent"], "-" if r["collector"] != r["collector"] else
            "%.1f %%" % (100 * r["collector"])))
    print()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rates", default="10000,100000,300000,1000000,0",
                    help="calls per second, 0 = as fast as the program can")
    ap.add_argument("--vm", action="store_true",
                    help="also in one TCG guest (virtme-ng; its agent through ivshmem)")
    ap.add_argument("--vm-rates", default="1000,10000,30000,0")
    ap.add_argument("--buffer-kb", type=int, default=0,
                    help="the agent's per-CPU ftrace buffer (default: the kernel's)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (tracefs)")
        return 2
    tmp = tempfile.mkdtemp(prefix="ht-bench-kernel-")
    os.chmod(tmp, 0o755)            # the guest runs the program from here (9p)
    try:
        spin = os.path.join(tmp, "spin")
        with open(spin + ".c", "w") as f:
            f.write(SPIN)
        subprocess.run(["cc", "-O2", "-o", spin, spin + ".c"], check=True)
        rows = [one(tmp, spin, float(x), a.seconds, a.buffer_kb) for x in a.rates.split(",")]
        vm = in_guest(tmp, spin, [float(x) for x in a.vm_rates.split(",")], a.seconds) \
            if a.vm else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table(rows, "host")
    if vm is not None:
        table(vm, "inside a TCG guest (2 vCPUs; collector: the host's, shared with QEMU)")
    print("CPU as a share of one core over the program's run; lost: ftrace's own count of "
          "events its ring dropped before the agent read them (also in `hypertrace stats`).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
