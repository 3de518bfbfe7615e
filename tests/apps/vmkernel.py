"""Runs inside a QEMU guest (root): the guest's kernel events through the channel beside
its user events, and trace-cmd recording the same events at the same time.

trace-cmd takes sched_switch into the top-level buffer (trace_clock mono); the kernel
agent (python3 -m hypertrace.guest.kernel) takes it into its own instance and sends
its pages through the ivshmem BAR; this program then emits `nap(i, tid)` and sleeps
after each until its thread has been switched out. trace-cmd's report
of its buffer is printed as `HT-TC` lines for the host to compare.

Usage: vmkernel.py N_NAPS
"""

import faulthandler
import json
import os
import select
import subprocess
import sys
import threading
import time

print("HT-BOOTED", flush=True)
T0 = time.monotonic()
# a stalled run shows where it stalled: every thread's stack on the console, well
# before the host kills the guest (vmboot.RUN_TIMEOUT)
faulthandler.dump_traceback_later(240, repeat=True, file=sys.stdout)


def step(what):
    # where the guest's time went, for the reader of a timed-out run
    print("HT-STEP %.1f s %s" % (time.monotonic() - T0, what), flush=True)


from hypertrace import guest  # noqa: E402

step("imported hypertrace.guest")

n = int(sys.argv[1])
errors = []
tmp = "/dev/shm/ht-tc.dat"


def run(*cmd, timeout=120):
    r = subprocess.run(list(cmd), capture_output=True, timeout=timeout)
    if r.returncode != 0:
        errors.append("%s: %s" % (" ".join(cmd), r.stderr.decode("utf-8", "replace")[-300:]))
    return r


run("trace-cmd", "start", "-C", "mono", "-e", "sched:sched_switch")
step("trace-cmd started")
agent = subprocess.Popen([sys.executable, "-m", "hypertrace.guest.kernel", "--events",
                          "sched:sched_switch", "--channel", "ivshmem"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
ready = select.select([agent.stdout], [], [], 180)[0]
line = agent.stdout.readline() if ready else b""
if b"tracing" not in line:
    errors.append("the agent did not start: %r" % line)
# its threads leave themselves out of its trace (set_event_notrace_pid)
step("agent: %r" % line[:80])
agent_tids = sorted(int(t) for t in os.listdir("/proc/%d/task" % agent.pid))
nap = guest.event("nap", "uint32_t i, uint32_t tid")
tid = threading.get_native_id()


def switches():
    # the kernel counts a thread's switches where it emits sched_switch (prev != next)
    with open("/proc/thread-self/status") as f:
        return sum(int(ln.split()[1]) for ln in f if "ctxt_switches:" in ln)


for i in range(n):
    nap(i, tid)
    # a 1 ms timeout does not always block: on a slow TCG vCPU its timer can expire
    # before the thread reaches schedule() (no sleep, no switch; CI saw it). Napping
    # until the kernel's own count of this thread's switches moves makes "switched out
    # between two naps" a fact rather than a likelihood.
    before = switches()
    while switches() == before:
        select.select([], [], [], 0.001)
step("naps done")
guest.sync_point("naps_done", n)
step("sync point sent")
agent.send_signal(2)
try:
    _out, err = agent.communicate(timeout=180)
except subprocess.TimeoutExpired:
    agent.kill()
    _out, err = agent.communicate()
    errors.append("the agent did not stop")
step("agent stopped")
run("trace-cmd", "stop")
run("trace-cmd", "extract", "-o", tmp)
rep = run("trace-cmd", "report", "-t", "-i", tmp)
run("trace-cmd", "reset")
step("trace-cmd reported")
for ln in rep.stdout.decode("utf-8", "replace").splitlines():
    if "sched_switch:" in ln:
        print("HT-TC " + ln)
print("HT-RESULT " + json.dumps({
    "errors": errors, "tid": tid, "agent_rc": agent.returncode, "agent_tids": agent_tids,
    "agent_err": err.decode("utf-8", "replace")[-1000:],
    "accelerated": guest.ACCELERATED, "instances": os.listdir(
        "/sys/kernel/tracing/instances")}), flush=True)
time.sleep(0.5)
