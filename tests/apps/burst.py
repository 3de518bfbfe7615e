"""A burst of Python events as fast as they go: PROCS processes (forked) x THREADS
threads x N events, `tick(i, who)`; what issue 14 asks to be recorded whole with
default settings. Prints HT-BOOTED first (for a guest run) and "BURST EMITTED total".

Usage: burst.py N THREADS PROCS
"""

import os
import sys
import threading

print("HT-BOOTED", flush=True)

from hypertrace import guest  # noqa: E402

n, n_threads, n_procs = (int(x) for x in sys.argv[1:4])
tick = guest.event("tick", "uint64_t i, uint32_t who")


def run(who: int) -> None:
    for i in range(n):
        tick(i, who)


kids = []
me = 0
for p in range(1, n_procs):
    pid = os.fork()
    if pid == 0:
        me = p
        kids = []
        break
    kids.append(pid)
ths = [threading.Thread(target=run, args=(me * n_threads + t,)) for t in range(n_threads)]
for t in ths:
    t.start()
for t in ths:
    t.join()
failed = 0
for k in kids:
    failed += os.waitpid(k, 0)[1] != 0
if me:
    sys.exit(0)                # atexit: the process's goodbye, as any program's
print("BURST EMITTED %d failed %d" % (n * n_threads * n_procs, failed), flush=True)
