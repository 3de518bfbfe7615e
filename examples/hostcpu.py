"""A host-side producer: samples the host's CPU use every 50 ms into the session's host
domain, beside the guest's events. Run with HYPERTRACE_CHANNEL set to the recorder's
host channel (`record --qemu NAME` serves shm:/dev/shm/hypertrace-UID/NAME-host).
Stops on SIGINT/SIGTERM."""

import signal
import time

from hypertrace import guest

busy = guest.event("host_cpu_busy", "double percent", counter=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
signal.signal(signal.SIGINT, lambda *_: stop.append(1))


def sample() -> tuple:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]          # total, idle + iowait


last = sample()
while not stop:
    time.sleep(0.05)
    now = sample()
    total, idle = now[0] - last[0], now[1] - last[1]
    if total:
        busy(100.0 * (total - idle) / total)
    last = now
guest.disconnect()
