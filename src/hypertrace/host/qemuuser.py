"""QEMU's own trace events in user mode: `record --qemu-trace PATTERN -- qemu-ARCH ...`.

QEMU's user-mode emulators (`qemu-x86_64`, `qemu-aarch64`...) take `-trace` and `-D`
as the system emulators do, but have no `-msg timestamp=on`: their log lines are
`name args` with no time at all. So the recorder passes QEMU a pipe as its log
file (`-D /dev/fd/N`; QEMU's log is line-buffered, so each line is one write, and
lines shorter than PIPE_BUF from several QEMU processes never interleave) and a
reader process of its own stamps each read with CLOCK_MONOTONIC the moment it
returns. The emulated program's `clock_gettime` is the host's, so its events and
QEMU's share one clock; a QEMU line's stamp is an upper bound (QEMU wrote the line
before it), later than the event by the reader's wake-up (a process with one
thread blocked in `read`, so no GIL and no poll interval in between).

Only lines whose first word is an event name the patterns select are events (the
log also carries `-d` output); every other line is counted. The events go into the
`qemu` domain as system mode's do (`name(uint32_t tid, const char *args)`, stream
`qemu-user`); user-mode lines carry no thread id: `tid` is 0.

The pipe must never stall or kill QEMU: the recorder keeps a read end of its own, so
if the reader dies QEMU does not get SIGPIPE, and the recorder then reads the pipe
itself, counting what it throws away as lost.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from typing import List, Optional, Tuple

QEMU_USER = re.compile(r"qemu-(?!system-)[A-Za-z0-9_]+(?:-static)?\Z")
PATTERN = re.compile(r"[A-Za-z0-9_*?]{1,128}\Z")
NAME = re.compile(rb"([A-Za-z_][A-Za-z0-9_]{0,127})(?: (.*))?\Z", re.S)
MAX_LINE = 4096
READ_BYTES = 1 << 20
PIPE_SIZE = 1 << 20           # room for QEMU to write while the reader is descheduled
SOURCE = "user"
READER_STOP_S = 5.0


class QemuUserError(ValueError):
    """A bad --qemu-trace request: one line for the user."""


def check(command: List[str], patterns: List[str]) -> None:
    """The command must be a QEMU user-mode emulator and leave -D to us."""
    if not command or not QEMU_USER.match(os.path.basename(command[0])):
        raise QemuUserError("--qemu-trace needs a QEMU user-mode command (qemu-x86_64, "
                            "qemu-aarch64, ...), not %r" % (command[0] if command else ""))
    for p in patterns:
        if not PATTERN.match(p):
            raise QemuUserError("bad --qemu-trace pattern %r: 1-128 characters of "
                                "[A-Za-z0-9_*?]" % p)
    if "-D" in command[1:]:
        raise QemuUserError("--qemu-trace gives QEMU its log file: drop -D from the command")


def wire(command: List[str], patterns: List[str]) -> Tuple[List[str], int, int]:
    """The command with QEMU's trace options (after argv[0], where QEMU reads its own
    options) and the pipe: (command, read end, write end for QEMU)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass                  # above /proc/sys/fs/pipe-max-size: the default 64 KiB
    opts: List[str] = []
    for p in patterns:
        opts += ["-trace", "enable=" + p]
    opts += ["-D", "/dev/fd/%d" % w]
    return [command[0]] + opts + list(command[1:]), r, w


class Reader:
    """The recorder's side: the reader process, and the pipe read by the recorder itself
    if that process dies while QEMU still writes."""

    def __init__(self, region_path: str, patterns: List[str], r: int):
        self.r = r
        self.lost_bytes = 0
        self.lost_lines = 0
        self.summary: dict = {"kind": "arrival", "source": "QEMU user-mode log lines (no "
                              "timestamps), stamped with CLOCK_MONOTONIC as they arrive: "
                              "upper bounds", "patterns": list(patterns)}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "hypertrace.host.qemuuser", region_path] + patterns,
            stdin=r, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))

    def poll(self) -> None:
        """From the recorder's loop: if the reader died, empty the pipe (counted)."""
        if self.p.poll() is None:
            return
        # the read end is shared with the reader's stdin: never made non-blocking here
        while select.select([self.r], [], [], 0)[0]:
            try:
                data = os.read(self.r, READ_BYTES)
            except OSError:
                return
            if not data:
                return
            self.lost_bytes += len(data)
            self.lost_lines += data.count(b"\n")

    def stop(self, child_done: bool) -> dict:
        """The end of the recording. Once QEMU has exited, the reader reaches the pipe's
        end (every writer gone) and reports; if a writer lives on (QEMU still running, or
        a background child of the program holding QEMU's log descriptor) it is told to
        stop: it reports what it recorded, then goes on reading and throwing away until
        the pipe's end, so that QEMU never meets a closed pipe (SIGPIPE) or a full one."""
        self._wait_exit(READER_STOP_S if child_done else 0.05)
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            out = self._summary_line(READER_STOP_S)
        else:
            out = self.p.stdout.read() or b""
            self.poll()
            if not child_done:
                # the reader died and QEMU runs on: something must keep reading the pipe
                subprocess.Popen([sys.executable, "-c", "import os\nwhile os.read(0, 1 << 20):"
                                  "\n    pass"], stdin=self.r, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(self.r)
        last = out.decode("utf-8", "replace").strip().splitlines()
        try:
            counts = json.loads(last[-1]) if last else {}
            if not isinstance(counts, dict):
                counts = {}
        except ValueError:
            counts = {}
        self.summary.update({k: int(v) for k, v in counts.items()
                             if k in ("lines", "events", "other_lines", "rejected", "bytes")
                             and type(v) is int})
        code = self.p.poll()
        if not counts or (code not in (None, 0)) or self.lost_lines:
            why = b""
            if code is not None:
                why = self.p.stderr.read() or b""
            why_l = why.decode("utf-8", "replace").strip().splitlines()
            self.summary["reader_error"] = (why_l[-1] if why_l else "exit %s" % code)[:500]
        self.summary["lost_lines"] = self.lost_lines
        return self.summary

    def _wait_exit(self, timeout: float) -> None:
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass

    def _summary_line(self, timeout: float) -> bytes:
        """The reader's report, printed as soon as it is told to stop."""
        end = time.monotonic() + timeout
        buf = b""
        fd = self.p.stdout.fileno()
        while b"\n" not in buf and time.monotonic() < end:
            if select.select([fd], [], [], max(0.0, end - time.monotonic()))[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                buf += chunk
        return buf


# -- the reader process --------------------------------------------------------------
class _Stop(Exception):
    """Raised by the stop signal: it breaks a blocked read (os.read would retry it)."""


def _stop(*_) -> None:
    raise _Stop()


def _run(region_path: str, patterns: List[str]) -> dict:
    from .qemulog import QemuEmitter
    out = QemuEmitter(region_path, [SOURCE])
    counts = {"lines": 0, "events": 0, "other_lines": 0, "rejected": 0, "bytes": 0}
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    buf = b""

    def take(data: bytes) -> None:
        # one read: its lines stamped with the time the read returned
        nonlocal buf
        t = time.monotonic_ns()
        counts["bytes"] += len(data)
        lines = (buf + data).split(b"\n")
        buf = lines.pop()[-MAX_LINE:]
        for ln in lines:
            _line(out, counts, patterns, ln, t)
    try:
        try:
            while True:
                data = os.read(0, READ_BYTES)
                if not data:
                    break
                take(data)
        except _Stop:
            # told to stop: what is in the pipe now is the recording's, then the end
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            while select.select([0], [], [], 0)[0]:
                data = os.read(0, READ_BYTES)
                if not data:
                    break
                take(data)
        if buf:
            _line(out, counts, patterns, buf, time.monotonic_ns())
    finally:
        out.close()
    counts["events"], counts["rejected"] = out.events, out.bad
    return counts


def _line(out, counts: dict, patterns: List[str], ln: bytes, t: int) -> None:
    counts["lines"] += 1
    m = NAME.match(ln[:MAX_LINE].rstrip(b"\r"))
    if m is None or not any(fnmatch.fnmatchcase(m.group(1).decode(), p) for p in patterns):
        counts["other_lines"] += 1
        return
    try:
        out.emit(SOURCE, m.group(1), 0, m.group(2), t)
    except Exception:             # one line's trouble is counted, never the reader's end
        counts["other_lines"] += 1


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        sys.stderr.write("usage: python -m hypertrace.host.qemuuser REGION PATTERN...\n")
        return 2
    counts = _run(argv[0], argv[1:])
    sys.stdout.write(json.dumps(counts) + "\n")
    sys.stdout.flush()
    # the recording has its report; QEMU (or a child holding its log) may write on:
    # read and throw away to the pipe's end, so it never meets a closed or full pipe
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            if not os.read(0, READ_BYTES):
                break
        except OSError:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
