"""Demo service: worker processes handle requests (spans), report a queue depth
(a counter) and mark checkpoints with sync points. Usage: service.py [PROCS] [REQUESTS]"""

import multiprocessing as mp
import random
import sys
import threading
import time

from hypertrace import guest

req_b = guest.event("request_begin", "uint32_t id, const char *path")
req_e = guest.event("request_end", "uint32_t id, int32_t status, uint32_t bytes")
db_b = guest.event("db_query_begin", "uint32_t id, const char *table")
db_e = guest.event("db_query_end", "uint32_t id, uint32_t rows")
depth = guest.event("queue_depth", "uint32_t waiting", counter=True)


def serve(worker: int, n: int) -> None:
    rnd = random.Random(worker)
    for i in range(n):
        rid = worker * 100000 + i
        req_b(rid, "/api/item/%d" % rnd.randrange(1000))
        time.sleep(rnd.uniform(0.0002, 0.001))
        if rnd.random() < 0.5:
            db_b(rid, rnd.choice(["users", "orders", "items"]))
            time.sleep(rnd.uniform(0.0002, 0.002))
            db_e(rid, rnd.randrange(50))
        req_e(rid, 200 if rnd.random() < 0.95 else 500, rnd.randrange(200, 20000))
        depth(rnd.randrange(8))
        if i % 50 == 0:
            guest.sync_point("checkpoint", worker, i)


def process_main(p: int, n: int) -> None:
    ts = [threading.Thread(target=serve, args=(p * 10 + t, n), name="worker-%d.%d" % (p, t))
          for t in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


if __name__ == "__main__":
    procs = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    ctx = mp.get_context("fork")
    ps = [ctx.Process(target=process_main, args=(p, n)) for p in range(procs)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    print("service: %d processes x 2 threads x %d requests" % (procs, n))
