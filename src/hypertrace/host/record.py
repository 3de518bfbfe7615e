"""`hypertrace record`: create or attach a channel, run or wait, drain, stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import List, Optional

from .. import abi
from ..guest.channel import ChannelError, resolve
from .collector import SESSION_DIR, Collector
from .region import Region

IDLE_SLEEP_S = 0.001


class RecordError(Exception):
    pass


def record(outdir: str, command: Optional[List[str]], channel: Optional[str] = None,
           mode: str = "discard", ring_size: int = abi.DEFAULT_RING_SIZE,
           rings: int = abi.DEFAULT_RINGS, max_events: int = abi.DEFAULT_MAX_EVENTS,
           block_timeout_ms: float = 1000.0, name: str = "local",
           out=sys.stdout) -> Collector:
    if os.path.exists(os.path.join(outdir, "metadata")):
        raise RecordError("%s already holds a trace; choose a new output directory" % outdir)
    if mode not in abi.MODES:
        raise RecordError("unknown mode %r (discard, block or overwrite)" % mode)
    if channel:
        path = resolve(channel)
    else:
        path = "/dev/shm/hypertrace-%s" % uuid.uuid4().hex[:12]
    try:
        if channel and os.path.exists(path):
            region = Region.open(path)
        else:
            region = Region.create(path, name, abi.MODES[mode], rings, ring_size, max_events,
                                   int(block_timeout_ms * 1e6))
    except (OSError, ValueError, ChannelError) as e:
        raise RecordError("cannot set up channel %s: %s" % (path, e)) from None
    os.makedirs(outdir, exist_ok=True)
    col = Collector(outdir)
    col.add_region(region, name)
    with open(os.path.join(outdir, SESSION_DIR, "collector.pid"), "w") as f:
        f.write(str(os.getpid()))

    flags = {"stop": False, "snapshot": 0}

    def on_stop(signum, _frame):
        flags["stop"] = True
        if child is not None and child.poll() is None and signum == signal.SIGTERM:
            child.send_signal(signal.SIGTERM)

    def on_usr1(_signum, _frame):
        flags["snapshot"] += 1

    child = None
    old = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_usr1)
    spec = "shm:" + path
    try:
        if command:
            env = dict(os.environ, HYPERTRACE_CHANNEL=spec)
            try:
                child = subprocess.Popen(command, env=env)
            except OSError as e:
                raise RecordError("cannot run %s: %s" % (command[0], e.strerror)) from None
        else:
            out.write("hypertrace: serving channel %s (HYPERTRACE_CHANNEL=%s); "
                      "Ctrl-C to stop\n" % (path, spec))
            out.flush()
        _loop(col, child, flags)
    finally:
        col.stop()
        region.close(remove=region.owned)
        for s, h in old.items():
            signal.signal(s, h)
    rc = child.wait() if child is not None else 0
    col.exit_code = rc
    return col


def _loop(col: Collector, child, flags: dict) -> None:
    idle = 0
    last_flush = time.monotonic()
    snaps = 0
    while not flags["stop"]:
        if child is not None and child.poll() is not None:
            break
        if flags["snapshot"] != snaps:
            snaps = flags["snapshot"]
            col.snapshot()
        n = col.poll()
        now = time.monotonic()
        if now - last_flush > 1.0:
            col.flush()
            col.write_index()
            last_flush = now
        if n:
            idle = 0
        else:
            idle += 1
            time.sleep(IDLE_SLEEP_S if idle < 100 else 4 * IDLE_SLEEP_S)
    if flags["snapshot"] != snaps:
        col.snapshot()


def summary(col: Collector) -> str:
    streams = col.streams()
    lines = ["%-16s %8s %8s %-16s %10s %10s %9s %5s" % (
        "stream", "pid", "tid", "thread", "recorded", "discarded", "malformed", "torn")]
    for s in streams:
        lines.append("%-16s %8d %8d %-16s %10d %10d %9d %5d" % (
            s["file"] or "(none)", s["pid"], s["tid"], s["thread"][:16], s["recorded"],
            s["discarded"], s["malformed"], s["torn"]))
    tot = [sum(s[k] for s in streams) for k in ("recorded", "discarded", "malformed", "torn")]
    lines.append("total: %d events recorded, %d lost (discarded), %d malformed, %d torn, "
                 "from %d producer streams" % (*tot, len(streams)))
    return "\n".join(lines)
