"""DIR/.hypertrace/collector.pid: which process records DIR, checked before it is signalled.

A pid alone names whatever process has it now: the file holds the recorder's pid
and its start time (field 22 of /proc/PID/stat, in clock ticks since boot), is
created exclusively while the recording runs and removed when it stops.
`recorder_pid` accepts a pid only if that process still has that start time,
belongs to us and runs hypertrace — else it is a stale or planted file, and
nobody is signalled.
"""

from __future__ import annotations

import os

from .runtime import Dir, PathError

NAME = "collector.pid"
MAX_SIZE = 64


def start_time(pid: int) -> int:
    with open("/proc/%d/stat" % pid, "rb") as f:
        raw = f.read()
    # the command name (field 2) may hold spaces and parentheses: fields follow the last ')'
    return int(raw[raw.rindex(b")") + 2:].split()[19])


def write(meta: Dir) -> None:
    pid = os.getpid()
    fd = meta.create(NAME, 0o644)
    try:
        os.write(fd, b"%d %d\n" % (pid, start_time(pid)))
    finally:
        os.close(fd)


def remove(meta: Dir) -> None:
    meta.unlink(NAME)


def recorder_pid(meta: Dir) -> int:
    """The pid of the live recorder of this session; ValueError (why) if there is none."""
    try:
        raw = meta.read(NAME, MAX_SIZE)
    except FileNotFoundError:
        raise ValueError("no %s: the recorder has stopped" % NAME) from None
    except PathError as e:
        raise ValueError(str(e)) from None
    try:
        pid, started = (int(x) for x in raw.split())
    except ValueError:
        raise ValueError("%s is not a recorder's pid file" % meta.join(NAME)) from None
    stale = ValueError("%s is stale: process %d is not its recorder" % (meta.join(NAME), pid))
    if not 0 < pid < 1 << 22:
        raise stale
    try:
        if start_time(pid) != started:
            raise stale
        if os.stat("/proc/%d" % pid).st_uid != os.geteuid():
            raise ValueError("process %d recording there belongs to another user: run this "
                             "as the user who records" % pid)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError, IndexError):
        raise stale from None
    if not any(a.endswith(b"hypertrace") or a == b"hypertrace.cli" for a in argv) or \
            b"record" not in argv:
        raise stale
    return pid
