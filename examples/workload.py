"""Demo workload: several processes, two threads each, emitting typed events."""

import multiprocessing as mp
import os
import sys
import threading

from hypertrace import guest

tick = guest.event("app_tick", "uint64_t n, int32_t delta, const char *msg")
work = guest.event("work_done", "uint32_t worker, double seconds, bool ok")


def thread_main(worker: int, count: int) -> None:
    for i in range(count):
        tick(i, worker - i % 7, "worker %d step %d" % (worker, i))
        if i % 100 == 0:
            work(worker, i / 1000.0, i % 200 == 0)


def process_main(p: int, count: int) -> None:
    ts = [threading.Thread(target=thread_main, args=(p * 10 + t, count), name="w%d.%d" % (p, t))
          for t in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    procs = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=process_main, args=(p, count)) for p in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    print("workload: %d processes x 2 threads x %d events, pid %d" % (procs, count, os.getpid()))
