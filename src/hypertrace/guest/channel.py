"""The guest end of a channel: maps the shared region, claims rings, declares events.

Claims and declarations are rare and serialised by an exclusive flock() on the
region file (a C emitter must take the same lock); the emit path never locks.
A daemon thread mirrors the host-written enable table into the tracepoints'
globals every few milliseconds so that a disabled tracepoint costs one
function call.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import sys
import threading
import time
from typing import Callable, Optional

from .. import abi
from .ring import RingWriter, _Holder
from .tracepoint import set_cell

POLL_S = 0.005
_U32 = struct.Struct("<I")
_Q = struct.Struct("<Q")


class ChannelError(OSError):
    """The channel could not be opened or is not a usable hypertrace region."""


def parse_spec(spec: str) -> tuple:
    """`shm:/dev/shm/NAME[,control=unix:PATH]` -> (region path, {option: value})."""
    head, *opts = spec.split(",")
    options = {}
    for o in opts:
        k, sep, v = o.partition("=")
        if not sep or k not in ("control",):
            raise ChannelError("bad channel option %r in %r (known: control=ADDRESS)" % (o, spec))
        options[k] = v
    return resolve(head), options


def resolve(spec: str) -> str:
    """Map a channel spec (`shm:/dev/shm/NAME`, `shm:NAME`, a path, or `ivshmem[:NAME]`
    inside a QEMU guest) to a file path."""
    if spec == "ivshmem" or spec.startswith("ivshmem:"):
        from .devices import find_ivshmem
        try:
            return find_ivshmem(spec[8:] or None)
        except OSError as e:
            raise ChannelError(str(e)) from None
    if spec.startswith("shm:"):
        spec = spec[4:]
        return spec if "/" in spec else "/dev/shm/" + spec
    if spec.startswith("file:"):
        return spec[5:]
    if spec.startswith("/"):
        return spec
    raise ChannelError("unknown channel spec %r (expected shm:/dev/shm/NAME, ivshmem[:NAME] "
                       "or a path)" % spec)


class Channel:
    def __init__(self, path: str, clock: Callable[[], int]):
        self.path = path
        self.clock = clock
        try:
            self.fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise ChannelError("cannot open channel %s: %s" % (path, e.strerror)) from None
        try:
            size = os.fstat(self.fd).st_size
            if size < abi.HEADER_SIZE:
                raise ChannelError("%s is too small to be a hypertrace region" % path)
            # populate the page tables now: a first-touch fault per page on the emit
            # path costs more than the emit itself (worse under nested virtualisation)
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            self.mm = mmap.mmap(self.fd, size, flags=flags)
            try:
                self.header, self.layout = abi.parse_header(self.mm, size)
            except abi.ABIError as e:
                raise ChannelError("%s: %s" % (path, e)) from None
        except BaseException:
            os.close(self.fd)
            raise
        self.q = memoryview(self.mm).cast("Q")   # 8-byte words: the commit stores
        self.closed_mm = False
        self.lock_fd = self.fd
        self.lock_pid = os.getpid()
        # flock() excludes other processes only (threads share the open file
        # description): this lock excludes the other threads of this process
        self.thread_lock = threading.Lock()
        self.tracepoints: list = []
        self.last_enable = b""
        self.closed = False
        self._next_claim = 0.0
        self.poller: Optional[threading.Thread] = None

    # -- host-written state --------------------------------------------------
    def collector_state(self) -> int:
        return _U32.unpack_from(self.mm, abi.HDR_COLLECTOR)[0]

    def heartbeat(self) -> int:
        return _Q.unpack_from(self.mm, abi.HDR_HEARTBEAT)[0]

    # -- the region lock -----------------------------------------------------
    def after_fork(self) -> None:
        """In a forked child, while it has one thread: a lock of its own. flock() is per
        open file description, which the child shares with its parent, and a thread
        lock may have been held at the fork by a thread that does not exist here."""
        self.thread_lock = threading.Lock()
        self.lock_fd = os.open(self.path, os.O_RDWR)
        self.lock_pid = os.getpid()

    def _locked(self):
        ch = self

        class _L:
            def __enter__(self):
                ch.thread_lock.acquire()
                try:
                    if ch.lock_pid != os.getpid():
                        ch.lock_fd = os.open(ch.path, os.O_RDWR)   # no at-fork hook ran
                        ch.lock_pid = os.getpid()
                    self.fd = ch.lock_fd          # unlock the descriptor we locked
                    fcntl.flock(self.fd, fcntl.LOCK_EX)
                except BaseException:
                    ch.thread_lock.release()
                    raise

            def __exit__(self, *exc):
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_UN)
                finally:
                    ch.thread_lock.release()
        return _L()

    # -- event declarations --------------------------------------------------
    def declare(self, decl: abi.EventDecl) -> int:
        """Find or add `decl` in the declaration table; returns its event id."""
        sig = decl.signature.encode()
        lay = self.layout
        with self._locked():
            for i in range(lay.max_events):
                off = lay.decl(i)
                state, ln = struct.unpack_from("<II", self.mm, off)
                if state == abi.DECL_EMPTY:
                    self.mm[off + abi.DECL_TEXT:off + abi.DECL_TEXT + len(sig)] = sig
                    struct.pack_into("<I", self.mm, off + abi.DECL_LEN, len(sig))
                    self.mm[lay.enable_off + i] = 0 if decl.disabled else 1
                    struct.pack_into("<I", self.mm, off, abi.DECL_VALID)
                    return i
                if ln <= abi.DECL_TEXT_MAX:
                    text = bytes(self.mm[off + abi.DECL_TEXT:off + abi.DECL_TEXT + ln])
                    if text == sig:
                        return i
                    if text.split(b"(", 1)[0] == decl.name.encode():
                        raise ValueError("event %s is already declared in this channel as %s"
                                         % (decl.name, text.decode("utf-8", "replace")))
        raise ValueError("channel %s: no room for event %s (max_events %d)"
                         % (self.path, decl.name, lay.max_events))

    def attach(self, fn: Callable, tls) -> None:
        fn.event_id = self.declare(fn.decl)
        for k, v in (("_id", fn.event_id), ("_clock", self.clock), ("_tls", tls),
                     ("_mm", self.mm), ("_cq", self.q)):
            set_cell(fn, k, v)
        self.tracepoints.append(fn)
        self.sync_enables(force=True)

    def sync_enables(self, force: bool = False) -> None:
        """Mirror the enable table into the tracepoints (poller thread and attach)."""
        lay = self.layout
        table = bytes(self.mm[lay.enable_off:lay.enable_off + lay.max_events])
        if table == self.last_enable and not force:
            return
        self.last_enable = table
        for fn in list(self.tracepoints):
            on = table[fn.event_id] != 0
            if fn.enabled != on:
                set_cell(fn, "_on", on)
                fn.enabled = on

    def start_poller(self) -> None:
        def run():
            while not self.closed:
                try:
                    self.sync_enables()
                except (ValueError, OSError):
                    return
                time.sleep(POLL_S)
        self.poller = threading.Thread(target=run, name="hypertrace-poll", daemon=True)
        self.poller.start()

    # -- ring claims ---------------------------------------------------------
    def claim(self, tls) -> Optional[RingWriter]:
        """Claim a free ring for the calling thread; None if none is free (counted)."""
        now = time.monotonic()
        if now < self._next_claim or self.closed:
            tls.drops = getattr(tls, "drops", 0) + 1
            return None
        lay = self.layout
        pid = os.getpid()
        tid = threading.get_native_id() if hasattr(threading, "get_native_id") else 0
        name = threading.current_thread().name.encode("utf-8", "replace")[:abi.THREAD_NAME_LEN]
        with self._locked():
            idx = self._find_free(lay)
            if idx is None:
                self._next_claim = now + 0.01
                tls.drops = getattr(tls, "drops", 0) + 1
                return None
            d = lay.desc(idx)
            drops = getattr(tls, "drops", 0)
            gen = (_U32.unpack_from(self.mm, d + abi.D_GENERATION)[0] + 1) & 0xFFFFFFFF
            struct.pack_into("<QQQQ", self.mm, d, 0, drops, 0, drops)
            _Q.pack_into(self.mm, d + abi.D_CONSUMED, 0)
            struct.pack_into("<IIIQ16s", self.mm, d + abi.D_GENERATION, gen, pid, tid,
                             self.clock() & 0xFFFFFFFFFFFFFFFF, name)
            _U32.pack_into(self.mm, d + abi.D_STATE, abi.RING_ACTIVE)
        tls.drops = 0
        w = RingWriter(self, idx, gen, pid, drops, drops)
        tls.w = w
        tls.holder = _Holder(w)
        return w

    def _find_free(self, lay) -> Optional[int]:
        dead = None
        for i in range(lay.n_rings):
            d = lay.desc(i)
            state, _gen, pid = struct.unpack_from("<III", self.mm, d + abi.D_STATE)
            if state == abi.RING_FREE and _Q.unpack_from(self.mm, d + abi.D_CONSUMED)[0] == 0:
                return i
            if state == abi.RING_ACTIVE and dead is None and not pid_alive(pid):
                dead = i
        if dead is not None:
            # a producer died without releasing: hand its ring to the collector,
            # which drains it and frees it for a later claim
            _U32.pack_into(self.mm, lay.desc(dead) + abi.D_STATE, abi.RING_RELEASED)
        return None

    # -- clock mailboxes -------------------------------------------------------
    def claim_mailbox(self):
        """A clock mailbox for this process, or None (the host does not serve them, or
        every slot is taken by a live process)."""
        from .mailbox import Mailbox, serving
        if self.closed or not serving(self.mm):
            return None
        with self._locked():
            for i in range(abi.N_MBOX):
                o = abi.MBOX_OFF + i * abi.MBOX_SIZE
                state, pid = struct.unpack_from("<II", self.mm, o)
                if state == abi.MBOX_CLAIMED and pid_alive(pid):
                    continue
                struct.pack_into("<II", self.mm, o, abi.MBOX_CLAIMED, os.getpid())
                return Mailbox(self.mm, i, self.clock)
        return None

    def close(self) -> None:
        self.closed = True


def pid_alive(pid: int) -> bool:
    """Whether a local process exists (pids outside 1..2**22 are scribble: no)."""
    if not 0 < pid < 1 << 22:      # PID_MAX_LIMIT: anything else is scribble
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def warn(msg: str) -> None:
    sys.stderr.write("hypertrace: %s\n" % msg)
