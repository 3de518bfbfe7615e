"""Runs inside a QEMU guest (root), for bench_kernel.py --vm: per rate, the kernel agent
(through the ivshmem BAR) around a program making getppid(2) calls at that rate; prints
one HT-RESULT line with each run's calls, the program's pid and the agent's pid and CPU.

Usage: vmkernelbench.py SPIN SECONDS RATE...
"""

import json
import os
import select
import signal
import subprocess
import sys

print("HT-BOOTED", flush=True)


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


spin, secs, rates = sys.argv[1], sys.argv[2], sys.argv[3:]
runs, errors = [], []
for rate in rates:
    agent = subprocess.Popen([sys.executable, "-m", "hypertrace.guest.kernel", "--events",
                              "syscalls:sys_enter_getppid", "--channel", "ivshmem"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ready = select.select([agent.stdout], [], [], 300)[0]
    if not ready or b"tracing" not in agent.stdout.readline():
        errors.append("agent did not start")
        agent.kill()
        continue
    cpu0 = cpu_s(agent.pid)         # its start (Python under TCG) is not the run's
    r = subprocess.run([spin, rate, secs], capture_output=True, text=True, timeout=600)
    line = r.stdout.split()
    cpu = cpu_s(agent.pid) - cpu0
    agent.send_signal(signal.SIGINT)
    try:
        agent.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        agent.kill()
        errors.append("agent did not stop")
    runs.append({"rate": float(rate), "calls": int(line[1]), "pid": int(line[2]),
                 "prog_cpu": float(line[3]), "wall": float(line[4]), "agent_pid": agent.pid,
                 "agent_cpu": cpu})
print("HT-RESULT " + json.dumps({"runs": runs, "errors": errors}), flush=True)
