"""A guest with a simulated clock: known offset and drift, jittery reads, a pause.

guest time g = (h - paused) * (1 + ppm 1e-6) + offset, where h is the host's
CLOCK_MONOTONIC and `paused` the time the "VM" spent paused so far. During the
pause nothing in the guest runs: no events, no clock exchanges.
Usage: simclock.py OFFSET_NS PPM SECONDS PAUSE_AT_S PAUSE_S
Prints PAUSE_G <guest time at the pause> so a test can invert the clock.
"""

import random
import sys
import time

from hypertrace import guest

OFF, PPM = int(sys.argv[1]), float(sys.argv[2])
SECONDS, PAUSE_AT, PAUSE = (float(x) for x in sys.argv[3:6])
state = {"paused": 0}
rng = random.Random(1234)


def f(h: int) -> int:
    return int((h - state["paused"]) * (1 + PPM * 1e-6)) + OFF


def clock() -> int:
    g = f(time.monotonic_ns())
    if rng.random() < 0.05:
        time.sleep(rng.uniform(0, 0.002))    # jitter: the reading is late to be used
    return g


guest.connect(clock=clock, sync_interval=0.05)
tick = guest.event("sim_tick", "uint64_t i")
start = time.monotonic()
paused = PAUSE <= 0
i = 0
while time.monotonic() - start < SECONDS:
    if not paused and time.monotonic() - start >= PAUSE_AT:
        ctl = guest._control
        with ctl.lock, ctl.mbox_lock:       # no exchange can run while "paused"
            print("PAUSE_G", f(time.monotonic_ns()), flush=True)
            time.sleep(PAUSE)
            state["paused"] += int(PAUSE * 1e9)
        paused = True
    tick(i)
    i += 1
    if i % 200 == 0:
        guest.sync_point("checkpoint", i)
    time.sleep(0.0005)
print("EMITTED", i)
