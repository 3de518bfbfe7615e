"""The host end of the control channel: answers clock exchanges and sync points.

One thread per connection. Host timestamps are taken as close to the socket
operations as Python allows: t2 right after recv() returns, t3 right before
sendall(). Only the host's own t2/t3 are trusted: a sample is accepted when it
echoes a (t1, t2, t3) that this connection really answered. Every message is
bounded and checked (abi.FrameReader); a peer that breaks the rules gets an
ERROR message and is disconnected, and the other peers carry on.

No peer can hold the server: a connection that has not said hello within
HELLO_TIMEOUT_S of its accept is dropped, a message started must be complete
within PARTIAL_TIMEOUT_S of its first byte (more bytes do not extend it), and
when MAX_CONNECTIONS are open a new one is taken by evicting the oldest
connection that never said hello, else the one idle longest (an honest producer
reconnects when it next needs the channel; its ring events never depend on it).
A virtio-serial chardev (`long_lived`) is one connection from QEMU carrying
every process of the guest: it is exempt from the hello and idle rules, and a
new connection from QEMU replaces the oldest. Every peer error, hello or not,
is counted in the session index's `errors`.

No guest can take the recorder's time or memory: the messages of one guest (all its
connections and boots) draw on one token bucket (GuestBudget, RATE tokens a second, a
message costing one token per started KiB), and a connection that has used them up
waits, unread, until it may go on: never an error, and the drain keeps the
interpreter. The index keeps the last MAX_SYNCS sync points of a domain and
MAX_GUEST_SYNCS of a guest, their names cut to SYNC_TEXT characters, with a count of
those dropped (the trace holds every sync point: hypertrace_sync_host events).
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

from .. import abi
from .errors import ErrorLog, describe

PARTIAL_TIMEOUT_S = 5.0        # a message started but not finished within this: drop the peer
HELLO_TIMEOUT_S = 5.0          # from accept to a hello
MAX_CONNECTIONS = 256
MAX_PENDING = 64
MAX_SAMPLES = 200_000          # clock exchanges kept per domain
MAX_GUEST_SAMPLES = 2 * MAX_SAMPLES     # ... and over all the boots of one guest
MAX_SYNCS = 4096               # sync points kept per domain for the index
MAX_GUEST_SYNCS = 2 * MAX_SYNCS         # ... and over all the boots of one guest
SYNC_TEXT = 128                # characters of a sync point's name kept in the index
RATE = 20_000                  # tokens a second for the control messages of one guest
BURST = 2_000                  # tokens a guest may spend at once after a quiet time
TOKEN_BYTES = 1024             # a message costs a token per started KiB of its body


class GuestBudget:
    """What one guest may use of the recorder, shared by its connections and by the
    domains of its boots: a token bucket for its messages, the sync points and clock
    exchanges it has kept."""

    def __init__(self, rate: float = RATE, burst: float = BURST):
        self.lock = threading.Lock()
        self.rate, self.burst = float(rate), float(burst)
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.syncs = 0            # sync points kept, over the guest's domains
        self.samples = 0          # clock exchanges kept, likewise
        self.throttled = 0        # messages that had to wait for their tokens

    def take(self, body: int) -> float:
        """Spend the tokens of a message of `body` bytes: the seconds to wait before it is
        served (0: at once). The bucket goes into debt, so that the guest's connections
        wait their turns."""
        cost = 1 + body // TOKEN_BYTES
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= cost
            if self.tokens >= 0:
                return 0.0
            self.throttled += 1
            return -self.tokens / self.rate


@dataclass
class DomainClock:
    """What the control channel learns about one domain's clock."""

    name: str
    session_id: bytes
    samples: List[tuple] = field(default_factory=list)    # (t1, t2, t3, t4)
    #: the last sync points (the index's `syncs`), bounded; see add_sync
    syncs: Deque[dict] = field(default_factory=lambda: collections.deque(maxlen=MAX_SYNCS))
    errors: ErrorLog = field(default_factory=ErrorLog)
    rejected_samples: int = 0
    connections: int = 0
    boot_id: Optional[bytes] = None         # the guest boot this clock belongs to
    mailbox_samples: int = 0                # of `samples`, taken through the mailboxes
    syncs_seen: int = 0                     # sync points answered
    syncs_dropped: int = 0                  # of those, not (or no longer) in `syncs`
    #: the guest's budget: a new boot's domain is given its predecessor's (_hello)
    budget: GuestBudget = field(default_factory=GuestBudget)

    def add_sample(self, t1: int, t2: int, t3: int, t4: int) -> bool:
        """Keep one validated exchange; False (counted as rejected) once MAX_SAMPLES are
        kept, or MAX_GUEST_SAMPLES over the guest's boots. The one way in for the socket
        and the mailbox exchanges alike."""
        b = self.budget
        with b.lock:
            if len(self.samples) >= MAX_SAMPLES or b.samples >= MAX_GUEST_SAMPLES:
                self.rejected_samples += 1
                return False
            b.samples += 1
            self.samples.append((t1, t2, t3, t4))
        return True

    def add_sync(self, entry: dict) -> None:
        """Keep a sync point for the index: the domain's oldest goes when it has
        MAX_SYNCS, or when the guest has MAX_GUEST_SYNCS (none of this domain's: the
        new one goes). Every one not kept is counted."""
        b = self.budget
        with b.lock:
            self.syncs_seen += 1
            full = len(self.syncs) == self.syncs.maxlen
            if not full and b.syncs >= MAX_GUEST_SYNCS:
                if not self.syncs:
                    self.syncs_dropped += 1
                    return
                self.syncs.popleft()
                full = True
            if full:
                self.syncs_dropped += 1
            else:
                b.syncs += 1
            self.syncs.append(entry)

    def sync_list(self) -> List[dict]:
        """A copy of the kept sync points (control threads add to them meanwhile)."""
        with self.budget.lock:
            return list(self.syncs)


def listen(address: str) -> socket.socket:
    """A listening socket for `unix:PATH` (created 0600) or `vsock:PORT` (any CID: a
    guest is bound to its domain by the session id in its hello, which only its own
    region holds)."""
    if address.startswith("unix:"):
        path = address[5:]
        old = os.umask(0o177)            # the socket is created 0600
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind(path)
            except OSError:
                s.close()
                raise
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
    elif address.startswith("vsock:"):
        try:
            port = int(address[6:])
        except ValueError:
            raise ValueError("bad vsock address %r (vsock:PORT)" % address) from None
        if not hasattr(socket, "AF_VSOCK"):
            raise OSError("AF_VSOCK is not supported by this Python")
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            s.bind((socket.VMADDR_CID_ANY, port))
        except OSError as e:
            s.close()
            raise OSError(e.errno, "cannot listen on vsock port %d: %s" % (port, e.strerror)
                          ) from None
    else:
        raise ValueError("control address must be unix:PATH or vsock:PORT")
    s.listen(16)
    s.settimeout(0.2)
    return s


class _Peer:
    """What the acceptor needs to know of one connection to choose whom to evict."""

    def __init__(self, conn: socket.socket):
        self.conn = conn
        self.accepted = self.last = time.monotonic()
        self.hello = False
        self.evicted = False


class ControlServer:
    #: one lock for every server: servers of one recording share their domain registry
    boot_lock = threading.Lock()
    #: called with (domain, lost, refused) for a BYE that carries counts (ABI 1.4)
    on_bye: Optional[Callable[[DomainClock, int, int], None]] = None

    def __init__(self, address: str, domains,
                 on_sync: Optional[Callable] = None, on_sample: Optional[Callable] = None,
                 on_boot: Optional[Callable[[DomainClock, bytes], DomainClock]] = None,
                 errors: Optional[ErrorLog] = None, long_lived: bool = False):
        self.address = address
        self.path = address[5:] if address.startswith("unix:") else None
        #: session id -> clock; a dict given here is shared (several transports, one guest)
        self.domains: Dict[bytes, DomainClock] = (
            domains if isinstance(domains, dict) else {d.session_id: d for d in domains})
        self.on_sync = on_sync
        self.on_sample = on_sample
        #: called (on a connection's thread) when a guest says hello from a new boot;
        #: returns the clock of the domain that boot's records go to
        self.on_boot = on_boot
        #: every peer's errors (the session index's `errors`: shared with the collector)
        self.errors = errors if errors is not None else ErrorLog()
        self.long_lived = long_lived
        self.stopping = threading.Event()
        self.threads: List[threading.Thread] = []
        self.peers: Dict[int, _Peer] = {}
        self.lock = threading.Lock()
        self.sock = listen(address)
        self.acceptor = threading.Thread(target=self._accept, name="hypertrace-ctl", daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            peer = _Peer(conn)
            with self.lock:
                if len(self.peers) >= MAX_CONNECTIONS:
                    self._evict()
                self.peers[id(peer)] = peer
            t = threading.Thread(target=self._serve, args=(peer,), daemon=True,
                                 name="hypertrace-ctl-conn")
            self.threads = [x for x in self.threads if x.is_alive()]
            self.threads.append(t)
            t.start()

    def _evict(self) -> None:
        """Make room (the caller holds the lock): the oldest connection that never said
        hello, else the one idle longest; for a QEMU chardev, the oldest."""
        peers = list(self.peers.values())
        if self.long_lived:
            victim = min(peers, key=lambda p: p.accepted)
        else:
            silent = [p for p in peers if not p.hello]
            victim = (min(silent, key=lambda p: p.accepted) if silent
                      else min(peers, key=lambda p: p.last))
        del self.peers[id(victim)]
        victim.evicted = True
        self._note(None, "control connection evicted: %d connections open" % MAX_CONNECTIONS)
        self._error(victim.conn, 0, "too many control connections: this one is closed")
        try:
            victim.conn.shutdown(socket.SHUT_RDWR)    # its thread sees the end and exits
        except OSError:
            pass

    def _note(self, dom: Optional[DomainClock], text: str) -> None:
        self.errors.add("control %s: %s" % (self.address, text))
        if dom is not None:
            dom.errors.add(text)

    def _error(self, conn, rid: int, text: str) -> None:
        try:
            conn.setblocking(False)        # a last word, if it fits: never waits
            conn.send(abi.frame(abi.MSG_ERROR, rid, abi.pack_str(text, 512)))
        except OSError:
            pass

    def _serve(self, peer: _Peer) -> None:
        conn = peer.conn
        reader = abi.FrameReader()
        dom: Optional[DomainClock] = None
        #: (t2, t3) we answered -> (the guest's t1, the sync point's index entry or None)
        pending: Dict[tuple, tuple] = {}
        partial_since = None               # when the first byte of an unfinished message came
        conn.settimeout(0.25)
        try:
            while not self.stopping.is_set() and not peer.evicted:
                try:
                    data = conn.recv(65536)
                    t_recv = time.monotonic_ns()
                except socket.timeout:
                    now = time.monotonic()
                    if partial_since is not None and now - partial_since > PARTIAL_TIMEOUT_S:
                        raise abi.ProtocolError("incomplete message for %.0f s"
                                                % PARTIAL_TIMEOUT_S) from None
                    if not peer.hello and not self.long_lived and partial_since is None \
                            and now - peer.accepted > HELLO_TIMEOUT_S:
                        raise abi.ProtocolError("no hello within %.0f s" % HELLO_TIMEOUT_S)
                    continue
                if not data:
                    return
                frames = reader.feed(data)
                now = time.monotonic()
                if not reader.pending:
                    partial_since = None
                elif partial_since is None or frames:
                    partial_since = now        # a new message began: its own deadline
                if frames:
                    peer.last = now
                for mtype, rid, body in frames:
                    if dom is not None:
                        # the guest's share of the recorder: past it, this connection
                        # waits (unread: its sender blocks), then goes on
                        wait = dom.budget.take(len(body))
                        if wait > 0 and self.stopping.wait(wait):
                            return
                    if dom is None or mtype == abi.MSG_HELLO:
                        # a virtio port carries one process after another: each says hello
                        dom = self._hello(conn, mtype, rid, body)
                        peer.hello = True
                        pending.clear()
                        continue
                    if mtype == abi.MSG_CLOCK:
                        (t1,) = abi.unpack_u64s(body, 1)
                        t3 = time.monotonic_ns()
                        conn.sendall(abi.frame(abi.MSG_CLOCK_OK, rid,
                                               abi.pack_u64s(t_recv, t3)))
                        self._remember(pending, t_recv, t3, (t1, None))
                    elif mtype == abi.MSG_SYNC:
                        sid, t1 = abi.unpack_u64s(body, 2)
                        name, off = abi.unpack_str(body, 16)
                        args, _ = abi.unpack_str(body, off)
                        if self.on_sync is not None:
                            self.on_sync(dom, name, sid, t1, t_recv, args)
                        t3 = time.monotonic_ns()
                        conn.sendall(abi.frame(abi.MSG_SYNC_OK, rid,
                                               abi.pack_u64s(t_recv, t3)))
                        entry = {"sync_id": sid, "name": name[:SYNC_TEXT], "guest_send": t1,
                                 "host_recv": t_recv, "host_send": t3}
                        # the sample that follows completes this entry (guest_recv)
                        self._remember(pending, t_recv, t3, (t1, entry))
                        dom.add_sync(entry)
                    elif mtype == abi.MSG_SAMPLE:
                        t1, t2, t3, t4, sid = abi.unpack_u64s(body, 5)
                        asked, entry = pending.pop((t2, t3), (None, None))
                        if asked != t1 or t4 < t1:
                            dom.rejected_samples += 1   # not an exchange we answered
                            continue
                        if dom.add_sample(t1, t2, t3, t4):
                            if sid and entry is not None and entry["sync_id"] == sid:
                                entry["guest_recv"] = t4
                            if self.on_sample is not None:
                                self.on_sample(dom, t1, t2, t3, t4)
                    elif mtype == abi.MSG_BYE:
                        if len(body) >= 16 and self.on_bye is not None:
                            # losses the process could not add to the region (ABI 1.4)
                            self.on_bye(dom, *abi.unpack_u64s(body, 2))
                        return
                    else:
                        raise abi.ProtocolError("unexpected %s message from a guest"
                                                % abi.MSG_NAMES[mtype])
        except abi.ProtocolError as e:
            self._note(dom, "control peer dropped%s: %s" % (
                "" if dom else " before its hello", e))
            self._error(conn, 0, str(e))
        except OSError as e:
            if not peer.evicted:
                self._note(dom, "control peer I/O: %s" % e)
        except Exception as e:             # a callback's failure: this peer only
            self._note(dom, "control peer dropped: %s" % describe(e))
        finally:
            conn.close()
            with self.lock:
                self.peers.pop(id(peer), None)

    def _hello(self, conn, mtype: int, rid: int, body: bytes) -> DomainClock:
        if mtype != abi.MSG_HELLO:
            raise abi.ProtocolError("the first message must be hello, not %s"
                                    % abi.MSG_NAMES[mtype])
        if len(body) < 24:
            raise abi.ProtocolError("hello too short")
        sid = bytes(body[:16])
        dom = self.domains.get(sid)
        if dom is None:
            raise abi.ProtocolError("hello names no session served here")
        boot = bytes(body[24:40]) if len(body) >= 40 else bytes(16)
        if boot != bytes(16):
            with self.boot_lock:
                dom = self.domains[sid]
                if dom.boot_id is None:
                    dom.boot_id = boot
                elif dom.boot_id != boot:
                    if self.on_boot is None:
                        raise abi.ProtocolError("hello from another boot of the guest")
                    new = self.on_boot(dom, boot)    # raises ProtocolError past the limit
                    new.boot_id = boot
                    new.budget = dom.budget          # one guest, one share, every boot
                    self.domains[sid] = dom = new
        dom.connections += 1
        conn.sendall(abi.frame(abi.MSG_HELLO_OK, rid, abi.pack_str(dom.name)))
        return dom

    @staticmethod
    def _remember(pending: dict, t2: int, t3: int, asked: tuple) -> None:
        pending[(t2, t3)] = asked
        while len(pending) > MAX_PENDING:
            pending.pop(next(iter(pending)))

    def close(self) -> None:
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        self.acceptor.join(timeout=2)
        for t in self.threads:
            t.join(timeout=2)
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
