"""Test workload: P processes x T threads, each emitting N `job` events as fast as it can.

Every event's fields are derived from (process, thread, i) so that a reader can
check each value. Usage: workload.py P T N [sleep_every]
"""

import multiprocessing as mp
import sys
import threading

from hypertrace import guest

job = guest.event("job", "uint32_t proc, uint32_t thread, uint64_t i, int64_t neg, "
                         "double half, bool odd, const char *tag")


def run_thread(p: int, t: int, n: int) -> None:
    for i in range(n):
        job(p, t, i, -i, i / 2, i % 2 == 1, "p%d-t%d-%d" % (p, t, i))


def run_process(p: int, threads: int, n: int) -> None:
    ts = [threading.Thread(target=run_thread, args=(p, t, n), name="w%d.%d" % (p, t))
          for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    P, T, N = (int(x) for x in sys.argv[1:4])
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=run_process, args=(p, T, N)) for p in range(P)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    sys.exit(max(p.exitcode for p in ps))
