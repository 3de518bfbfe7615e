"""The kernel agent: ftrace's events through the channel, a page at a time.

    python3 -m hypertrace.guest.kernel --events 'sched:sched_switch,irq:*' [--channel SPEC]

As root, in the guest (or on the host, for `hypertrace record --kernel`): an ftrace
instance of its own (`instances/hypertrace-PID`, so the user's own ftrace and
trace-cmd are undisturbed), its `trace_clock` set to `mono` (kernel timestamps are
then CLOCK_MONOTONIC, the clock of the user events beside them), the events enabled
there only. The kernel's own description of its formats (`header_page`,
`header_event`, each enabled event's `format`) is sent once, then each CPU's raw
ring-buffer pages (`per_cpu/cpuN/trace_pipe_raw`) as they fill: no work per event
here, the host decodes (hypertrace.host.ftrace). At the end (SIGINT, SIGTERM, the
channel's end) tracing stops, what is left is sent, ftrace's own counts of lost
events (`per_cpu/cpuN/stats`) with it, and the instance is removed.

Records carry at most abi.STR_MAX bytes of a bytes field: a text or a page goes in
parts (`part` of `parts`, in order, on the thread of its CPU).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from .. import abi

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
CHUNK = abi.STR_MAX
POLL_S = 0.05                      # how often each CPU's pipe is read when idle
PAGE_ROOM = 16 << 10               # ring room that one page's records always fit in
FINAL_WAIT_S = 5.0                 # at the end: longest wait for room for what is left
TEXT_WAIT_S = 30.0                 # longest wait for room for one part of the formats
TEXT_HEADER_PAGE, TEXT_HEADER_EVENT, TEXT_FORMAT = 0, 1, 2
AGENT_THREAD = "ftrace-"           # its threads' names: the host reads its records there only
_SPEC = re.compile(r"^[A-Za-z0-9_*?]{1,64}(:[A-Za-z0-9_*?]{1,128})?$")

SIGNATURES = {
    "hypertrace_ftrace_text": "uint32_t kind, uint32_t part, uint32_t parts, "
                              "const char *name, bytes chunk",
    "hypertrace_ftrace_page": "uint32_t cpu, uint64_t page, uint32_t part, uint32_t parts, "
                              "bytes chunk",
    "hypertrace_ftrace_stats": "uint32_t cpu, uint64_t overrun, uint64_t dropped, "
                               "uint64_t pages",
}


class KernelError(Exception):
    """Why kernel tracing cannot start (one line)."""


def find_tracefs(mount: bool = True) -> str:
    """The tracefs mount point, mounting it if it is not (root only)."""
    for d in TRACEFS:
        if os.path.isdir(os.path.join(d, "instances")):
            return d
    if mount and os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS[0]], capture_output=True,
                       timeout=30)
        if os.path.isdir(os.path.join(TRACEFS[0], "instances")):
            return TRACEFS[0]
    if os.geteuid() != 0:
        raise KernelError("kernel tracing needs root (tracefs)")
    raise KernelError("no tracefs: mount -t tracefs nodev /sys/kernel/tracing failed")


def parse_events(spec: str) -> List[Tuple[str, str]]:
    """'sched:sched_switch,irq:*,syscalls' -> [(system, name pattern)]."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if not _SPEC.match(part):
            raise KernelError("bad kernel event %r (SYSTEM:NAME, * and ? allowed)" % part[:80])
        sysname, _, name = part.partition(":")
        if (sysname, name or "*") not in out:        # a repeat adds nothing
            out.append((sysname, name or "*"))
    if not out:
        raise KernelError("no kernel events given")
    return out


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str, limit: int = 1 << 20) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        out = b""
        while len(out) < limit:
            b = os.read(fd, 65536)
            if not b:
                break
            out += b
        return out[:limit].decode("utf-8", "replace")
    finally:
        os.close(fd)


class Instance:
    """An ftrace instance of ours: created here, removed by close()."""

    def __init__(self, events: List[Tuple[str, str]], tracefs: Optional[str] = None,
                 buffer_kb: int = 0, name: Optional[str] = None):
        self.root = tracefs or find_tracefs()
        self.name = name or "hypertrace-%d" % os.getpid()
        self.dir = os.path.join(self.root, "instances", self.name)
        try:
            os.mkdir(self.dir)            # fails if it exists: never someone else's
        except FileExistsError:
            raise KernelError("ftrace instance %s exists already" % self.name) from None
        except OSError as e:
            raise KernelError("cannot create ftrace instance %s: %s"
                              % (self.name, e.strerror)) from None
        self.enabled: List[str] = []
        try:
            _write(self.path("tracing_on"), "0")
            if "mono" not in _read(self.path("trace_clock")).replace("[", " ").replace(
                    "]", " ").split():
                raise KernelError("this kernel has no 'mono' trace clock")
            _write(self.path("trace_clock"), "mono")
            if buffer_kb:
                _write(self.path("buffer_size_kb"), str(buffer_kb))
            self._enable(events)
        except OSError as e:
            self.close()
            raise KernelError("cannot set up ftrace instance %s: %s"
                              % (self.name, e.strerror)) from None
        except BaseException:
            self.close()
            raise

    def path(self, *p: str) -> str:
        return os.path.join(self.dir, *p)

    def exclude(self, tid: int) -> None:
        """Leave this thread's own events out (set_event_notrace_pid, Linux 5.8 on) when
        syscalls are traced: each read of a CPU's pipe is a `read` syscall, and tracing
        it would feed a page per read back into the pipe for ever. Only then: the filter
        also drops the scheduler's events around the thread (ftrace skips events while
        a filtered task runs), which would leave holes in a sched_switch trace."""
        if not any(e.split("/")[0] in ("syscalls", "raw_syscalls") for e in self.enabled):
            return
        try:
            fd = os.open(self.path("set_event_notrace_pid"),
                         os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except OSError:
            return                        # an older kernel: nothing to exclude with
        try:
            os.write(fd, b"%d " % tid)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _enable(self, events: List[Tuple[str, str]]) -> None:
        ev_dir = self.path("events")
        systems = sorted(d for d in os.listdir(ev_dir)
                         if os.path.isdir(os.path.join(ev_dir, d)))
        for sysname, pat in events:
            found = False
            for s in fnmatch.filter(systems, sysname):
                names = sorted(n for n in os.listdir(os.path.join(ev_dir, s))
                               if os.path.isdir(os.path.join(ev_dir, s, n)))
                for n in fnmatch.filter(names, pat):
                    found = True
                    if "%s/%s" % (s, n) in self.enabled:
                        continue                      # matched by an earlier pattern
                    _write(os.path.join(ev_dir, s, n, "enable"), "1")
                    self.enabled.append("%s/%s" % (s, n))
            if not found:
                raise KernelError("no kernel event %s:%s" % (sysname, pat))

    def texts(self) -> List[Tuple[int, str, str]]:
        """(kind, name, text) of the layout and of every enabled event's format."""
        out = [(TEXT_HEADER_PAGE, "header_page",
                _read(os.path.join(self.root, "events", "header_page"))),
               (TEXT_HEADER_EVENT, "header_event",
                _read(os.path.join(self.root, "events", "header_event")))]
        for e in self.enabled:
            out.append((TEXT_FORMAT, e, _read(self.path("events", e, "format"))))
        return out

    def cpus(self) -> List[int]:
        return sorted(int(d[3:]) for d in os.listdir(self.path("per_cpu"))
                      if d.startswith("cpu") and d[3:].isdigit())

    def stats(self, cpu: int) -> Tuple[int, int]:
        """ftrace's own counts for one CPU: (overrun, dropped events + unread ones)."""
        st: Dict[str, int] = {}
        for line in _read(self.path("per_cpu", "cpu%d" % cpu, "stats")).splitlines():
            k, _, v = line.partition(":")
            v = v.strip().split(" ")[0]
            if v.isdigit():
                st[k.strip()] = int(v)
        # events still in the ring at the end were never read: lost as well
        return (st.get("overrun", 0) + st.get("commit overrun", 0),
                st.get("dropped events", 0) + st.get("entries", 0))

    def close(self) -> None:
        """Stop, disable and remove the instance (a second call does nothing)."""
        if not os.path.isdir(self.dir):
            return
        for step in (lambda: _write(self.path("tracing_on"), "0"),
                     lambda: _write(self.path("events", "enable"), "0")):
            try:
                step()
            except OSError:
                pass
        for _ in range(500):              # a reader still closing its pipe: EBUSY
            try:
                os.rmdir(self.dir)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)


def _parts(data: bytes) -> List[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]


class Agent:
    """Sends the instance's texts, then one thread per CPU streams its pages."""

    def __init__(self, inst: Instance, emit: Dict[str, Callable]):
        self.inst = inst
        self.emit = emit
        self.stop = threading.Event()
        self.pages = 0
        self.threads: List[threading.Thread] = []
        self.final_deadline: Optional[float] = None

    def send_texts(self) -> None:
        """On a thread of the agent's own (the host looks at those threads only)."""
        tp = self.emit["hypertrace_ftrace_text"]
        texts = self.inst.texts()

        def send():
            self.inst.exclude(threading.get_native_id())
            for kind, name, text in texts:
                parts = _parts(text.encode())
                for k, chunk in enumerate(parts):
                    # thousands of formats outgrow a ring: wait for the collector
                    self._wait_room(False, TEXT_WAIT_S)
                    tp(kind, k, len(parts), name, chunk)
        t = threading.Thread(target=send, name=AGENT_THREAD + "formats", daemon=True)
        t.start()
        t.join()

    def start(self) -> None:
        _write(self.inst.path("tracing_on"), "1")
        for cpu in self.inst.cpus():
            t = threading.Thread(target=self._cpu, args=(cpu,), daemon=True,
                                 name="%scpu%d" % (AGENT_THREAD, cpu))
            t.start()
            self.threads.append(t)

    def _cpu(self, cpu: int) -> None:
        self.inst.exclude(threading.get_native_id())
        tp = self.emit["hypertrace_ftrace_page"]
        path = self.inst.path("per_cpu", "cpu%d" % cpu, "trace_pipe_raw")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        seq = 0
        try:
            while True:
                done = self.stop.is_set()   # then one last pass takes what is left
                while True:
                    if not self._wait_room(done):
                        break
                    try:
                        page = os.read(fd, 1 << 20)
                    except BlockingIOError:
                        break
                    except OSError:
                        page = b""
                    if not page:
                        break
                    parts = _parts(page)
                    for k, chunk in enumerate(parts):
                        tp(cpu, seq, k, len(parts), chunk)
                    seq += 1
                if done:
                    break
                self.stop.wait(POLL_S)
        finally:
            os.close(fd)
            overrun, dropped = self.inst.stats(cpu)
            self._wait_room(False, FINAL_WAIT_S)   # ftrace's losses must not be lost too
            self.emit["hypertrace_ftrace_stats"](cpu, overrun, dropped, seq)
            self.pages += seq

    def _wait_room(self, final: bool, limit: Optional[float] = None) -> bool:
        """Hold a page back while this thread's ring has no room for it: the page waits in
        ftrace's ring, whose losses ftrace counts event by event, rather than be dropped
        here as one record (a page's worth of events counted as one). False: asked to
        stop meanwhile (the final pass comes next), or, in the final pass, FINAL_WAIT_S
        (one deadline for the whole pass) went by: what is still in ftrace's ring is then
        left there and counted from its `entries`. With `limit` (the format texts): True
        after that long anyway (a drop is then counted as a discarded record)."""
        from . import ring_room
        until = time.monotonic() + limit if limit is not None else None
        while True:
            room = ring_room()
            if room is None or room >= PAGE_ROOM:
                return True
            now = time.monotonic()
            if until is not None:
                if now > until:
                    return True
            elif final:
                if self.final_deadline is None:
                    self.final_deadline = now + FINAL_WAIT_S
                if now > self.final_deadline:
                    return False
            elif self.stop.is_set():
                return False
            time.sleep(0.001)

    def finish(self) -> None:
        try:
            _write(self.inst.path("tracing_on"), "0")
        except OSError:
            pass
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2 * FINAL_WAIT_S + 5)


def run(events: str, buffer_kb: int = 0, until: Optional[Callable[[], bool]] = None,
        ready: Optional[Callable[[], None]] = None) -> int:
    """Trace `events` into the connected channel until SIGINT/SIGTERM or `until()`;
    returns the pages sent."""
    from . import event
    emit = {name: event(name, sig) for name, sig in SIGNATURES.items()}
    inst = Instance(parse_events(events), buffer_kb=buffer_kb)
    inst.exclude(os.getpid())
    stop = threading.Event()
    old = {}
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, lambda *_: stop.set())
    agent = Agent(inst, emit)
    try:
        agent.send_texts()
        agent.start()
        if ready is not None:
            ready()
        while not stop.is_set() and not (until is not None and until()):
            stop.wait(0.1)
    finally:
        agent.finish()
        inst.close()
        for s, h in old.items():
            signal.signal(s, h)
    return agent.pages


DEAD_S = 60.0                      # a collector whose heartbeat stood still this long is gone


def _recording_ended(ch, parent: int = 0) -> Callable[[], bool]:
    """Whether the recording this agent sends to has ended: its collector, once seen
    running, stopped (a clean end) or its heartbeat stood still for DEAD_S (killed). So
    an agent whose recorder is gone does not trace on for ever."""
    state = {"seen": False, "hb": None, "t": time.monotonic()}

    def ended() -> bool:
        if parent and os.getppid() != parent:
            return True                   # the recorder that started it is gone
        st, hb, now = ch.collector_state(), ch.heartbeat(), time.monotonic()
        if st == abi.COLLECTOR_RUNNING:
            state["seen"] = True
        if hb != state["hb"]:
            state["hb"], state["t"] = hb, now
        return state["seen"] and (st == abi.COLLECTOR_STOPPED or now - state["t"] > DEAD_S)
    return ended


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m hypertrace.guest.kernel",
                                 description="Kernel events (ftrace) through the channel.")
    ap.add_argument("--events", required=True,
                    help="SYSTEM:NAME,... (e.g. 'sched:sched_switch,irq:*')")
    ap.add_argument("--channel", help="the channel (default: $HYPERTRACE_CHANNEL)")
    ap.add_argument("--buffer-kb", type=int, default=0,
                    help="the instance's per-CPU buffer (KiB; default: the kernel's)")
    ap.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)  # record's pid
    a = ap.parse_args(argv)
    from . import channel, connect, connected
    from .channel import ChannelError
    try:
        if a.channel:
            connect(a.channel)
        elif not os.environ.get("HYPERTRACE_CHANNEL"):
            raise KernelError("no channel: give --channel or set HYPERTRACE_CHANNEL")
        else:
            connect()
        if not connected():
            raise KernelError("the channel could not be attached")
        pages = run(a.events, a.buffer_kb, until=_recording_ended(channel(), a.parent),
                    ready=lambda: print("hypertrace kernel agent: tracing", flush=True))
    except (KernelError, ChannelError, ValueError) as e:
        sys.stderr.write("hypertrace kernel agent: error: %s\n" % e)
        return 1
    sys.stderr.write("hypertrace kernel agent: %d pages sent\n" % pages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
