"""QEMU's own trace events in the session, as domain `qemu`.

QEMU built with the `log` trace backend (Debian's build) writes one line per
event to its `-D` file; with `-msg timestamp=on` a line is

    TID@SECONDS.MICROSECONDS:event_name args...

stamped with CLOCK_REALTIME. The recorder tails the file of each guest it serves
and re-emits every line as an event of domain `qemu` — one stream per guest —
through a region like any other producer's (one mechanism: the collector does
not know where the records came from). Each event is `name(uint32_t tid, const
char *args)`, its timestamp mapped onto the host's CLOCK_MONOTONIC with
CLOCK_REALTIME - CLOCK_MONOTONIC measured by the recorder (re-measured every
second, to follow NTP; the spread of those measurements and QEMU's 1 µs
resolution make the stated uncertainty). The file is QEMU's and unvalidated:
lines that do not parse are counted and skipped, names must be C identifiers,
and lines are cut at 1 KiB. It is opened only as a regular file of ours, without
following a symlink or blocking on a FIFO (host/runtime.py); anything else at its
path is refused and the refusal recorded in the session index (`qemu_clock`).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

from .. import abi
from ..guest.channel import Channel
from ..guest.tracepoint import build
from . import runtime
from .clock import realtime_offset

LINE = re.compile(rb"(\d{1,10})@(\d{1,12})\.(\d{6}):([A-Za-z_][A-Za-z0-9_]{0,127})(?: (.*))?\Z")
MAX_LINE = 4096
READ_BYTES = 1 << 20           # per poll: the collector drains between two polls
REMEASURE_S = 1.0


def qmp_alive(path: str) -> bool:
    """Whether a live server (QEMU's QMP, a recorder's control socket) listens on `path`:
    only ever a socket of ours in the private runtime directory is tried."""
    if not runtime.our_socket(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class QemuEmitter:
    """Re-emits QEMU's log lines as events `name(uint32_t tid, const char *args)` of the
    `qemu` region at `path`, one stream per source (named `qemu-SOURCE`), each line
    with the timestamp its caller gives. Shared by the system-mode tail below and the
    user-mode reader (host/qemuuser.py)."""

    def __init__(self, path: str, sources: List[str]):
        self.ts = 0
        self.ch = Channel(path, lambda: self.ts)
        self.tls: Dict[str, threading.local] = {g: threading.local() for g in sources}
        self.tps: Dict[tuple, Callable] = {}
        self.events = 0
        self.bad = 0             # names the region's declaration table had no room for

    def _tp(self, source: str, name: str) -> Optional[Callable]:
        tp = self.tps.get((source, name))
        if tp is None:
            decl = abi.make_decl(name, "uint32_t tid, const char *args")
            tls = self.tls[source]
            tp = build(decl, tls, lambda: self._claim(source), lambda: self.ts)
            try:
                self.ch.attach(tp, tls)
            except ValueError:
                return None          # the region's declaration table is full: counted bad
            self.tps[(source, name)] = tp
        return tp

    def _claim(self, source: str):
        # the stream is named after the source: claims record the calling thread's name
        t = threading.current_thread()
        old, t.name = t.name, "qemu-%s" % source
        try:
            return self.ch.claim(self.tls[source])
        finally:
            t.name = old

    def emit(self, source: str, name: bytes, tid: int, args: Optional[bytes], ts: int) -> bool:
        tp = self._tp(source, name.decode())
        if tp is None:
            self.bad += 1
            return False
        self.ts = ts
        tp(tid & 0xFFFFFFFF, (args or b"").decode("utf-8", "replace"))
        self.events += 1
        return True

    def close(self) -> None:
        for tls in self.tls.values():
            w = getattr(tls, "w", None)
            if w is not None:
                w.release()          # the collector drains and accounts for the stream
        self.ch.close()


class QemuLogs:
    """Tails the log files of the guests served; events go into the `qemu` region."""

    def __init__(self, region, logs: Dict[str, str]):
        self.region = region                              # the `qemu` domain's region
        self.out = QemuEmitter(region.path, list(logs))
        self.logs = logs                                  # guest name -> log path
        self.files: Dict[str, object] = {}
        self.pos: Dict[str, int] = {}
        self.buf: Dict[str, bytes] = {}
        self.offsets: List[tuple] = []                    # (monotonic ns, offset, half-width)
        self.next_measure = 0.0
        self.lines = 0
        self.other = 0           # lines that are not trace events (QEMU's other messages)
        self.refused: Dict[str, str] = {}  # guest -> why its log path was not opened
        self.measure()

    def measure(self) -> None:
        off, w = realtime_offset(32)
        self.offsets.append((time.monotonic_ns(), off, w))
        self.offset = off
        self.next_measure = time.monotonic() + REMEASURE_S

    def _open(self, guest: str):
        f = self.files.get(guest)
        path = self.logs[guest]
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if f is not None and (st.st_ino != os.fstat(f.fileno()).st_ino or
                              st.st_size < self.pos[guest]):
            f.close()                # QEMU restarted and truncated (or replaced) its log
            del self.files[guest]
            f = None
        if f is None:
            try:
                fd = runtime.open_file(path)
            except runtime.PathError as e:
                self._refuse(guest, str(e))
                return None
            except OSError:
                return None
            f = os.fdopen(fd, "rb")
            self.files[guest], self.pos[guest], self.buf[guest] = f, 0, b""
        return f

    def _refuse(self, guest: str, why: str) -> None:
        if self.refused.get(guest) != why:
            self.refused[guest] = why
            sys.stderr.write("hypertrace: warning: QEMU log of %s not read: %s\n" % (guest, why))
            sys.stderr.flush()

    def poll(self) -> int:
        """Ingest what the logs gained since the last call; returns events emitted."""
        if time.monotonic() >= self.next_measure:
            self.measure()
        n = 0
        for guest in self.logs:
            f = self._open(guest)
            if f is None:
                continue
            data = f.read(READ_BYTES)
            if not data:
                continue
            self.pos[guest] += len(data)
            lines = (self.buf[guest] + data).split(b"\n")
            self.buf[guest] = lines.pop()[-MAX_LINE:]
            for ln in lines:
                n += self._line(guest, ln)
        return n

    def _line(self, guest: str, ln: bytes) -> int:
        self.lines += 1
        m = LINE.match(ln[:MAX_LINE].rstrip(b"\r"))
        if m is None:
            self.other += 1
            return 0
        tid, sec, usec, name, args = m.groups()
        # QEMU truncates to the µs: the event lies in [t, t + 1 µs)
        real = int(sec) * 1_000_000_000 + int(usec) * 1000 + 500
        return int(self.out.emit(guest, name, int(tid), args, max(0, real - self.offset)))

    def summary(self) -> dict:
        offs = [o for _, o, _ in self.offsets]
        return {"kind": "realtime", "source": "QEMU -msg timestamp=on (CLOCK_REALTIME, µs)",
                "realtime_minus_monotonic_ns": self.offset,
                "measurements": len(offs),
                "measured_spread_ns": (max(offs) - min(offs)) if offs else 0,
                "uncertainty_ns": 500 + max((w for _, _, w in self.offsets), default=0) +
                ((max(offs) - min(offs)) if offs else 0),
                "lines": self.lines, "events": self.out.events, "other_lines": self.other,
                "rejected": self.out.bad, "logs": dict(self.logs),
                "refused_logs": dict(self.refused)}

    def remove_logs(self) -> None:
        """A guest's log once its QEMU has exited (a running QEMU keeps writing to it)."""
        for path in self.logs.values():
            if not qmp_alive(path[:-len(".qemu.log")] + ".qmp"):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.out.close()
