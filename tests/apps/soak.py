"""Soak workload: P processes emit `job` events as fast as they can for S seconds, then
print how many each emitted. Usage: soak.py P SECONDS"""

import multiprocessing as mp
import sys
import time

from hypertrace import guest

job = guest.event("soak_job", "uint32_t proc, uint64_t i, const char *tag")


def run(p: int, seconds: float, q) -> None:
    end = time.monotonic() + seconds
    i = 0
    while True:
        for _ in range(1000):
            job(p, i, "soak %d" % i)
            i += 1
        if time.monotonic() >= end:
            break
    q.put((p, i))


if __name__ == "__main__":
    procs, seconds = int(sys.argv[1]), float(sys.argv[2])
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ps = [ctx.Process(target=run, args=(p, seconds, q)) for p in range(procs)]
    for p in ps:
        p.start()
    counts = dict(q.get() for _ in ps)
    for p in ps:
        p.join()
    print("EMITTED", " ".join("%d:%d" % kv for kv in sorted(counts.items())), flush=True)
