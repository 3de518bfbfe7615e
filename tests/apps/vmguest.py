"""Runs inside a QEMU guest: 2 processes emit events and make sync points.

The channel is found by the guest library itself (HYPERTRACE_CHANNEL=ivshmem):
the ivshmem BAR for the rings, the virtio-serial port for control.
Usage: vmguest.py N_EVENTS
"""

import json
import multiprocessing as mp
import os
import sys
import time

print("HT-BOOTED", flush=True)

from hypertrace import guest  # noqa: E402

job = guest.event("vm_job", "uint32_t proc, uint64_t i, const char *tag")


def worker(p: int, n: int, q) -> None:
    rtts = []
    spent = 0.0
    try:
        for i in range(n):
            t = time.perf_counter()
            job(p, i, "vm p%d #%d" % (p, i))
            spent += time.perf_counter() - t
            if i % (n // 4) == 0:
                rtts.append(guest.sync_point("vm_mark", p, i))
    except Exception as e:      # the parent prints it: a silent child would cost a timeout
        q.put((p, os.getpid(), "worker failed at event %d: %r" % (i, e), 0))
        return
    q.put((p, os.getpid(), rtts, spent / n * 1e9))


if __name__ == "__main__":
    n = int(sys.argv[1])
    # baselines in this guest: an empty call, and the same record packed into guest RAM
    import mmap
    import struct

    def empty(a, b, c):
        pass
    anon = mmap.mmap(-1, 1 << 20)
    pk = struct.Struct("<HHIQIQH").pack_into
    t = time.perf_counter()
    for i in range(n):
        empty(0, i, "x")
    empty_ns = (time.perf_counter() - t) / n * 1e9
    t = time.perf_counter()
    for i in range(n):
        pk(anon, (i * 40) & 0xFFFF8, 1, 40, i, 5, 0, i, 9)
    ram_ns = (time.perf_counter() - t) / n * 1e9
    ch = guest.channel()
    assert ch is not None, "no channel"
    t = time.monotonic()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    ps = [ctx.Process(target=worker, args=(p, n, q)) for p in range(2)]
    for p in ps:
        p.start()
    res = [q.get(timeout=300) for _ in ps]
    for p in ps:
        p.join()
    rtt = guest.sync_point("vm_done")
    print("HT-RESULT " + json.dumps({"region": ch.path, "results": res, "rtt": rtt,
                                      "empty_ns": empty_ns, "pack_ram_ns": ram_ns,
                                      "seconds": time.monotonic() - t}), flush=True)
    guest.disconnect()
