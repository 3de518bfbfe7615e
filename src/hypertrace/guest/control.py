"""The guest end of the control channel: sync points and clock exchanges.

One connection per process (a forked child opens its own), used by the
caller's sync_point() and by a daemon thread that runs clock exchanges: a
burst when the channel opens, one every `interval` seconds, a burst at close.
Nothing here touches the emit path.

The rings never depend on this channel: when the host refuses or drops the
connection, or does not answer, tracing goes on. The failure is reported once on
stderr and counted (`failures`, `sync_failures`); sync_point() raises a
ControlError saying why; the connection is tried again at most every RETRY_S,
by the next exchange or sync point. A connection the host closed meanwhile (to
make room, say) is noticed before it is used, and reopened.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import sys
import threading
import time
from typing import Callable, Optional

from .. import abi
from .accel import untraced_thread

TIMEOUT_S = 5.0
RETRY_S = 1.0                   # a failed control connection is tried again after this
PORT_OPEN_TIMEOUT_S = 30.0      # a port busy in other processes of a slow (TCG) guest
BURST = 16


def boot_id() -> bytes:
    """This boot's id (16 bytes; zeros where unknown): the host starts a new clock
    domain when a guest says hello from another boot (its clock restarted)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            b = bytes.fromhex(f.read(64).decode("ascii", "replace").strip().replace("-", ""))
    except (OSError, ValueError):
        return bytes(16)
    return b if len(b) == 16 else bytes(16)


class ControlError(OSError):
    """The control channel failed: no answer in time, an error from the host, or I/O."""


class PortTransport:
    """A virtio-serial port (/dev/vportNpM) with the socket methods Control uses.

    A port can be open in one process at a time, so the owner closes it after
    every operation and others retry while it is busy (EBUSY)."""

    per_operation = True

    def __init__(self, path: str, timeout: float = TIMEOUT_S):
        deadline = time.monotonic() + PORT_OPEN_TIMEOUT_S
        while True:
            try:
                self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise ControlError("cannot open control port %s: %s"
                                       % (path, e.strerror)) from None
                time.sleep(0.0005)
        self.timeout = timeout

    def settimeout(self, t: float) -> None:
        self.timeout = t

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            _, w, _ = select.select([], [self.fd], [], self.timeout)
            if not w:
                raise socket.timeout("control port not writable")
            n = os.write(self.fd, view)
            view = view[n:]

    def recv(self, n: int) -> bytes:
        r, _, _ = select.select([self.fd], [], [], self.timeout)
        if not r:
            raise socket.timeout("no answer on the control port")
        return os.read(self.fd, n)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def detach(self) -> None:
        self.fd = -1


def open_transport(address: str):
    """Open a control transport: `unix:PATH`, or `virtio:/dev/vportNpM` in a QEMU guest."""
    if address.startswith("virtio:"):
        return PortTransport(address[7:])
    if address.startswith("vsock:"):
        # vsock:CID:PORT (the host is CID 2); needs vhost-vsock on the host
        try:
            cid, port = (int(x) for x in address[6:].split(":"))
        except ValueError:
            raise ControlError("bad vsock address %r (vsock:CID:PORT)" % address) from None
        try:
            s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        except (AttributeError, OSError) as e:
            raise ControlError("AF_VSOCK is not available here: %s" % e) from None
        try:
            s.connect((cid, port))
        except OSError as e:
            s.close()
            raise ControlError("cannot connect to vsock %d:%d: %s" % (cid, port, e.strerror)
                               ) from None
        return s
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(address[5:])
        except OSError as e:
            s.close()
            raise ControlError("cannot connect to control socket %s: %s"
                               % (address[5:], e.strerror)) from None
        return s
    raise ControlError("unknown control address %r (expected unix:PATH, virtio:DEVICE or "
                       "vsock:CID:PORT)" % address)


class Control:
    def __init__(self, address: str, clock: Callable[[], int], session_id: bytes,
                 interval: float = 1.0, on_sync: Optional[Callable] = None,
                 mailbox: Optional[Callable] = None):
        self.address = address
        self.clock = clock
        self.session_id = session_id
        self.interval = interval
        self.on_sync = on_sync          # emits the guest-side sync record
        self.boot = boot_id()
        # clock exchanges through a shared-memory mailbox when the host serves one
        # (tighter: no socket, no syscall); the socket otherwise, and for sync points
        self.claim_mailbox = mailbox
        self.mailbox = None
        self.mbox_lock = threading.Lock()
        self.mailbox_exchanges = 0
        self.lock = threading.Lock()
        self.sock: Optional[socket.socket] = None
        self.pid = -1
        self.req = 0
        self.next_sync = 1
        self.reader = abi.FrameReader()
        self.domain = ""
        self.closed = threading.Event()
        self.thread: Optional[threading.Thread] = None
        self.exchanges = 0
        self.failures = 0
        self.sync_failures = 0
        self.down: Optional[str] = None     # why the last connection attempt failed
        self.retry_at = 0.0
        with self.lock:
            try:
                self._ensure()
                self._release()
            except ControlError:
                pass                        # counted and reported: tracing goes on

    def after_fork(self) -> None:
        """In a forked child: new lock (the parent's may have been held by a thread that
        does not exist here); the connection is reopened by the next use (_ensure)."""
        self.lock = threading.Lock()
        self.thread = None
        self.mailbox = None              # the parent's: never ours to use
        self.mbox_lock = threading.Lock()
        # close our copy of the parent's connection now: a virtio port stays open (and
        # busy for every other process) while any descriptor of it lives, so a child
        # forked during one of the parent's exchanges would lock everyone out
        s, self.sock = self.sock, None
        if s is not None:
            try:
                s.close()            # this process's descriptor only: the parent's stays
            except OSError:
                pass

    # -- connection ----------------------------------------------------------------
    def _ensure(self) -> None:
        if self.sock is not None and self.pid == os.getpid():
            if not self._stale():
                return
            self._drop()                     # the host closed it: open a new one
        if self.down is not None and time.monotonic() < self.retry_at:
            self.failures += 1
            raise ControlError(self.down)
        try:
            self._connect()
        except ControlError as e:
            self.failures += 1
            if self.down is None:
                sys.stderr.write("hypertrace: control channel unavailable (%s): events are "
                                 "still recorded; clock exchanges and sync points are not\n"
                                 % e)
            self.down = str(e)
            self.retry_at = time.monotonic() + RETRY_S
            raise
        self.down = None

    def _stale(self) -> bool:
        """The host never speaks first: a connection readable before a request is one it
        closed (or refused with an ERROR)."""
        if getattr(self.sock, "per_operation", False):
            return False
        try:
            r, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(r)

    def _connect(self) -> None:
        if self.sock is not None:
            # a forked child: the socket is the parent's; leave it to the parent
            try:
                self.sock.detach()
            except OSError:
                pass
        self.sock = None
        if self.pid not in (-1, os.getpid()):
            # sync ids are unique per process: a forked child must not reuse its parent's
            self.next_sync = (os.getpid() << 32) + 1
        s = open_transport(self.address)
        s.settimeout(TIMEOUT_S)
        self.sock, self.pid, self.reader = s, os.getpid(), abi.FrameReader()
        payload = self.session_id + abi.pack_u64s(os.getpid()) + self.boot
        reply = self._request(abi.MSG_HELLO, payload, abi.MSG_HELLO_OK)
        self.domain = abi.unpack_str(reply, 0)[0]

    def _drop(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def _request(self, mtype: int, payload: bytes, expect: int) -> bytes:
        """Send one request and wait for its reply (the caller holds the lock)."""
        self.req = (self.req + 1) & 0xFFFFFFFF
        rid = self.req
        try:
            self.sock.sendall(abi.frame(mtype, rid, payload))
            while True:
                for rtype, rrid, body in self.reader.feed(self._recv()):
                    if rtype == abi.MSG_ERROR:
                        raise ControlError("host refused %s: %s" % (
                            abi.MSG_NAMES[mtype], abi.unpack_str(body, 0)[0]))
                    if rrid == rid and rtype == expect:
                        return body
        except (OSError, abi.ProtocolError) as e:
            self._drop()
            if isinstance(e, ControlError):
                raise
            raise ControlError("control channel %s: %s" % (self.address, e)) from None

    def _recv(self) -> bytes:
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise ControlError("the host did not answer within %.0f s" % TIMEOUT_S) from None
        if not data:
            raise ControlError("the host closed the control channel")
        return data

    def _send(self, mtype: int, payload: bytes) -> None:
        self.req = (self.req + 1) & 0xFFFFFFFF
        try:
            self.sock.sendall(abi.frame(mtype, self.req, payload))
        except OSError as e:
            self._drop()
            raise ControlError("control channel %s: %s" % (self.address, e)) from None

    # -- exchanges -------------------------------------------------------------------
    def _timed(self, mtype: int, expect: int, sync_id: int, build: Callable[[int], bytes]) -> int:
        """One timed round trip (the caller holds the lock and has called _ensure):
        t1, the request built from it, the reply's t2/t3, t4, then the SAMPLE handing
        all four to the host. Returns t4 - t1 in guest ns."""
        try:
            t1 = self.clock()
            body = self._request(mtype, build(t1), expect)
            t4 = self.clock()
            t2, t3 = abi.unpack_u64s(body, 2)
            self._send(abi.MSG_SAMPLE, abi.pack_u64s(t1, t2, t3, t4, sync_id))
        finally:
            self._release()
        return t4 - t1

    def exchange(self) -> int:
        """One 4-timestamp clock exchange; returns its round trip in guest ns."""
        with self.mbox_lock:
            if self.mailbox is not None:
                rtt = self.mailbox.exchange()
                if rtt is not None:
                    self.mailbox_exchanges += 1
                    return rtt
                self.mailbox.release()       # the host stopped serving it
                self.mailbox = None
        with self.lock:
            self._ensure()
            rtt = self._timed(abi.MSG_CLOCK, abi.MSG_CLOCK_OK, 0, abi.pack_u64s)
            self.exchanges += 1
            return rtt

    def sync(self, name: str, args: tuple) -> int:
        """A synchronous reference point recorded on both sides; returns the round trip."""
        try:
            return self._sync(name, args)
        except ControlError:
            self.sync_failures += 1
            raise

    def _sync(self, name: str, args: tuple) -> int:
        text = json.dumps(list(args), default=str)[:1000]
        with self.lock:
            self._ensure()          # first: a forked child gets its own sync ids here
            sid = self.next_sync
            self.next_sync += 1

            def build(t1: int) -> bytes:
                if self.on_sync is not None:
                    self.on_sync(name, sid, t1, text)   # the guest-side record, at t1
                return abi.pack_u64s(sid, t1) + abi.pack_str(name, 256) + abi.pack_str(text)
            return self._timed(abi.MSG_SYNC, abi.MSG_SYNC_OK, sid, build)

    def _release(self) -> None:
        """Per-operation transports (a virtio port) are handed back after each use."""
        if getattr(self.sock, "per_operation", False):
            self._drop()

    # -- the background thread ---------------------------------------------------------
    def _yield_port(self, rtt: int) -> None:
        """Between the exchanges of a burst, leave a shared port free for about one round
        trip: re-opening at once would starve other processes waiting on EBUSY."""
        if self.address.startswith("virtio:"):
            time.sleep(min(rtt, 50_000_000) / 1e9)

    def start(self) -> None:
        def run():
            untraced_thread()
            if self.claim_mailbox is not None:
                with self.mbox_lock:
                    self.mailbox = self.claim_mailbox()
            for _ in range(BURST):
                try:
                    self._yield_port(self.exchange())
                except ControlError:
                    break                # counted; tried again at the next interval
            while not self.closed.wait(self.interval):
                try:
                    self.exchange()
                except ControlError:
                    pass                 # counted (failures), reported once
        self.thread = threading.Thread(target=run, name="hypertrace-clock", daemon=True)
        self.thread.hypertrace_own = True   # never function-traced
        self.thread.start()

    def close(self, lost: int = 0, refused: int = 0) -> bool:
        """A final burst of exchanges (only from the owning process), then goodbye,
        carrying `lost` records and `refused` declarations this process could not add to
        the region's counter slots (ABI 1.4; the host adds them to the domain). Returns
        whether those counts reached the host (True when there are none)."""
        self.closed.set()
        counts = bool(lost or refused)
        ours = self.pid == os.getpid()
        if not ours and not counts:
            return True              # a forked child with nothing to say: not ours
        sent = False
        try:
            if ours and self.down is None:
                for _ in range(BURST // 2):
                    self._yield_port(self.exchange())
            with self.lock:
                if counts:
                    self._ensure()   # a virtio port is reopened per use; a child connects
                if self.sock is not None and self.pid == os.getpid():
                    self._send(abi.MSG_BYE, abi.pack_u64s(min(lost, abi.CNT_MAX - 1),
                                                          min(refused, abi.CNT_MAX - 1))
                               if counts else b"")
                    sent = True
        except ControlError:
            pass
        with self.lock:
            self._drop()
        with self.mbox_lock:
            if self.mailbox is not None:
                self.mailbox.release()
                self.mailbox = None
        return sent or not counts
