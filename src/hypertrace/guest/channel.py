"""The guest end of a channel: maps the shared region, claims rings, declares events.

Claims, declarations, mailboxes and the shared loss counters are excluded
between processes by non-blocking byte locks on the region file (locks.py; a C
emitter must take the same ones, docs/abi.md §5); nothing here waits for
another process for longer than a few milliseconds, and the emit path never
locks. Whatever goes wrong with tracing (no ring, a lock held by a stopped
co-producer, a declaration table that is full or holds the same name with
another signature) costs the application the traced call, never an exception:
the loss is counted in the region, where the host reports it.
A daemon thread mirrors the host-written enable table into the tracepoints'
globals every few milliseconds so that a disabled tracepoint costs one
function call.
"""

from __future__ import annotations

import mmap
import os
import random
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from .. import abi
from .accel import untraced_thread
from .locks import ByteLocks, LockUnsupported
from .ring import RingWriter, _Holder, populate
from .tracepoint import get_cell, set_cell

POLL_S = 0.005
CLAIM_RETRY_S = 0.001     # after a failed claim, emits are dropped (and counted) this long
GUARD_S = 0.2             # longest wait for another thread of this process (never another
                          # process): its critical sections are short; a signal handler
                          # that traces while its own thread holds the guard gives up
DECL_WAIT_S = 0.002       # longest wait, per declaration in all, for slots other
                          # processes are writing: a writer takes microseconds; one that
                          # holds its slot longer (stopped, hostile) is skipped at once
COUNT_RETRY_S = 0.001     # after a pass found every counter slot held, the emit path
                          # leaves the count pending this long (the poller retries)
DECL_RETRY_S = (0.01, 1.0)   # a declaration refused for held slots: retried by the
                             # poller, first after 10 ms, then less and less often
_warned: Set[Tuple[str, str]] = set()    # (event, what) warned about once


class ChannelError(OSError):
    """The channel could not be opened or is not a usable hypertrace region."""


class DeclarationRefused(ValueError):
    """The region cannot take this declaration: the name is declared there with another
    signature, or the table is full. Not the caller's mistake: the tracepoint is
    disabled (with a warning) and the refusal counted, the application goes on."""


class DeclarationBusy(DeclarationRefused):
    """Every slot left is held by another process (or the guard by another thread): not
    for good. The declaration is tried again later; meanwhile the tracepoint's records
    are dropped and counted as lost."""


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
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            raise ChannelError("cannot open channel %s: %s" % (path, e.strerror)) from None
        try:
            size = os.fstat(fd).st_size
            if size < abi.HEADER_SIZE:
                raise ChannelError("%s is too small to be a hypertrace region" % path)
            self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            try:
                self.header, self.layout = abi.parse_header(self.mm, size)
            except abi.ABIError as e:
                raise ChannelError("%s: %s" % (path, e)) from None
            populate(self.mm, 0, self.layout.data_off)
        finally:
            os.close(fd)
        try:
            self.locks = ByteLocks(path)
        except (LockUnsupported, OSError) as e:
            raise ChannelError("cannot lock channel %s: %s" % (path, e.strerror or e)) from None
        self.q = memoryview(self.mm).cast("Q")   # 8-byte words: the commit stores
        self.words = abi.Words(self.mm)          # every other shared word, untorn
        self.closed_mm = False
        self.lock_pid = os.getpid()
        # byte locks exclude other processes only (threads share the open file
        # description): this lock excludes the other threads of this process
        self.thread_lock = threading.Lock()
        self._guard_owner: Optional[int] = None  # the thread holding it (signal handlers)
        self.rings_held: Set[int] = set()       # rings this process claimed: their locks
        self.mbox_held: Set[int] = set()
        # counts not yet added to a counter slot: list.append is atomic, so a thread
        # that cannot take the guard still leaves its count for the next publisher
        self.pending: List[Tuple[int, int]] = []
        self._publish_at = 0.0                  # the emit path's next try (COUNT_RETRY_S)
        # declarations seen in the region: name -> (first slot, its signature)
        self.decl_names: Dict[bytes, Tuple[int, bytes]] = {}
        self.decl_next = 0                      # slots below are learnt or skipped
        self.decl_skipped: Set[int] = set()     # empty but locked (being written) then
        self.tracepoints: list = []
        self.decl_waiting: list = []            # tracepoints refused for held slots
        self.decl_retry_lock = threading.RLock()   # _attach may retry the others
        self._decl_gap = DECL_RETRY_S[0]
        self._decl_retry_at = 0.0
        self.last_enable = bytearray()
        self.closed = False
        self._next_claim = 0.0
        self._next_ring = 0
        self.poller: Optional[threading.Thread] = None

    # -- host-written state --------------------------------------------------
    def collector_state(self) -> int:
        return self.words.u32(abi.HDR_COLLECTOR)

    def heartbeat(self) -> int:
        return self.words.u64(abi.HDR_HEARTBEAT)

    # -- exclusion -------------------------------------------------------------
    def after_fork(self) -> None:
        """In a forked child, while it has one thread: locks of its own. OFD locks belong
        to the open file description the child shares with its parent, and a thread
        lock may have been held at the fork by a thread that does not exist here."""
        self.thread_lock = threading.Lock()
        self.decl_retry_lock = threading.RLock()   # the poller holds it 5 ms in 5 ms
        self._guard_owner = None
        self._forked()

    def _forked(self) -> None:
        self.rings_held = set()          # the parent's, released by the parent
        self.mbox_held = set()
        self.pending = []                # the parent's counts: the parent publishes them
        self._next_claim = 0.0
        self.locks.reopen()
        self.lock_pid = os.getpid()      # last: a failed reopen is tried again

    def _enter(self, wait: bool = True) -> bool:
        """Take this process's guard, waiting at most GUARD_S for another thread (not at
        all unless `wait`, nor when this thread holds it: a signal handler that traces);
        False if not taken."""
        me = threading.get_ident()
        if self._guard_owner == me:
            return False
        if not (self.thread_lock.acquire(timeout=GUARD_S) if wait
                else self.thread_lock.acquire(False)):
            return False
        self._guard_owner = me
        if self.lock_pid != os.getpid():
            try:
                self._forked()           # forked with no at-fork hook run
            except OSError:
                self._leave()            # no descriptor to be had: try again later
                return False
        return True

    def _leave(self) -> None:
        self._guard_owner = None
        self.thread_lock.release()

    # -- shared loss counters (ABI 1.4) ------------------------------------------
    def count(self, lost: int = 0, refused: int = 0) -> None:
        """Add to the region's shared counters now: the count must outlive this thread
        and this process (a forked child may leave by os._exit). On the emit path: one
        pass over the slots, never a wait for another process (when all are held, the
        count stays pending for the poller, the exit, and the goodbye to the host:
        take_pending). It does wait for another thread of this process that holds the
        guard (the poller; GUARD_S at most): left to that thread, the count is lost if
        this one leaves by os._exit before the GIL lets that thread publish it."""
        self.pending.append((lost, refused))
        if time.monotonic() >= self._publish_at:
            self.publish()

    def publish(self, wait: bool = True) -> bool:
        """Add every pending count to a free counter slot, in one pass over the slots
        (a slot whose lock is held is skipped); True if nothing is left pending. Never
        waits for another process; for another thread of this one only if `wait`."""
        if not self.pending:
            return True
        if self.closed_mm or not self._enter(wait):
            return False
        try:
            if self._publish_once():
                return True
            self._collapse()         # one entry, however long every slot stays held
            self._publish_at = time.monotonic() + COUNT_RETRY_S
        except (OSError, ValueError):
            pass                          # the region is unmapped: nothing to count in
        finally:
            self._leave()
        return False

    def _collapse(self) -> None:
        lost = refused = 0
        while self.pending:              # pop, not clear: another thread may append
            dl, dr = self.pending.pop()
            lost += dl
            refused += dr
        if lost or refused:
            self.pending.append((lost, refused))

    def take_pending(self) -> Tuple[int, int]:
        """(lost, refused) not yet in the region, now taken out of it: the caller hands
        them to the host another way (the goodbye on the control channel, ABI 1.4) or
        gives them back with give_back()."""
        if not self._enter():
            return 0, 0
        try:
            self._collapse()
            return self.pending.pop() if self.pending else (0, 0)
        finally:
            self._leave()

    def give_back(self, counts: Tuple[int, int]) -> None:
        if counts != (0, 0):
            self.pending.append(counts)

    def _publish_once(self) -> bool:
        first = random.randrange(abi.N_CNT)    # spread processes over the slots
        for k in range(abi.N_CNT):
            off = abi.CNT_OFF + abi.CNT_SIZE * ((first + k) % abi.N_CNT)
            if not self.locks.try_lock(off):
                continue
            try:
                lost = self.words.u64(off)
                refused = self.words.u64(off + 8)
                if lost >= abi.CNT_MAX or refused >= abi.CNT_MAX:
                    continue              # scribble: the host ignores this slot
                while self.pending:
                    dl, dr = self.pending.pop()
                    lost += dl
                    refused += dr
                self.words.set_u64(off, lost)
                self.words.set_u64(off + 8, refused)
                return True
            finally:
                self.locks.unlock(off)
        return False

    # -- event declarations --------------------------------------------------
    def declare(self, decl: abi.EventDecl) -> int:
        """Find or add `decl` in the declaration table; returns its event id. Raises
        DeclarationRefused when the region cannot take it (DeclarationBusy when only
        for now). Linear in the slots it has not seen yet; waits at most DECL_WAIT_S in
        all for slots other processes are writing."""
        sig = decl.slot_text.encode()
        name = decl.name.encode()
        if not self._enter():
            raise DeclarationBusy("event %s: the channel is busy in another thread"
                                  % decl.name)
        try:
            self._learn_new()
            eid = self._lookup(name, sig, decl)
            if eid is not None:
                return eid
            return self._append(name, sig, decl)
        finally:
            self._leave()

    def _slot_text(self, j: int) -> Optional[bytes]:
        """Slot j's text, None while empty, b"" if unusable."""
        off = self.layout.decl(j)
        state = self.words.u32(off + abi.DECL_STATE)
        ln = self.words.u32(off + abi.DECL_LEN)
        if state == abi.DECL_EMPTY:
            return None
        if state != abi.DECL_VALID or ln > abi.DECL_TEXT_MAX:
            return b""
        return bytes(self.mm[off + abi.DECL_TEXT:off + abi.DECL_TEXT + ln])

    def _learn(self, j: int, text: bytes) -> None:
        if not text:
            return
        sig = text.split(b'"', 1)[0].rstrip()           # without the format (§3)
        nm = sig.split(b"(", 1)[0].split(b" ")[-1]      # after a "counter " property
        self.decl_names.setdefault(nm, (j, sig))

    def _learn_new(self) -> None:
        for j in sorted(self.decl_skipped):
            text = self._slot_text(j)
            if text is not None:
                self.decl_skipped.discard(j)
                self._learn(j, text)
        while self.decl_next < self.layout.max_events:
            text = self._slot_text(self.decl_next)
            if text is None:
                return
            self._learn(self.decl_next, text)
            self.decl_next += 1

    def _lookup(self, name: bytes, sig: bytes, decl: abi.EventDecl) -> Optional[int]:
        seen = self.decl_names.get(name)
        if seen is None:
            return None
        if seen[1] == sig.split(b'"', 1)[0].rstrip():     # formats may differ
            return seen[0]
        raise DeclarationRefused("event %s is already declared in this channel as %s"
                                 % (decl.name, seen[1].decode("ascii", "replace")))

    def _append(self, name: bytes, sig: bytes, decl: abi.EventDecl) -> int:
        """Write `decl` into the first empty slot whose lock can be had: the slots left
        earlier because another process held them (they may be free now), then the
        ones never looked at. A held slot is waited for only while the call's budget
        (DECL_WAIT_S in all) lasts, then skipped at once: its writer may be stopped, or
        hostile (a duplicate of the same text in two slots is one event, §3)."""
        lay = self.layout
        deadline = time.monotonic() + DECL_WAIT_S
        for j in sorted(self.decl_skipped):
            eid = self._try_slot(j, name, sig, decl, deadline)
            if eid is not None:
                return eid
        while self.decl_next < lay.max_events:
            j = self.decl_next
            self.decl_next += 1               # learnt, written, or left in decl_skipped
            eid = self._try_slot(j, name, sig, decl, deadline)
            if eid is not None:
                return eid
        if self.decl_skipped:
            raise DeclarationBusy(
                "channel %s: no declaration slot for event %s now: the %d empty slot(s) "
                "left are held by other processes (tried again later; its records are "
                "counted as lost meanwhile)" % (self.path, decl.name, len(self.decl_skipped)))
        raise DeclarationRefused("channel %s: no room for event %s: the declaration table "
                                 "is full (max_events %d)"
                                 % (self.path, decl.name, lay.max_events))

    def _try_slot(self, j: int, name: bytes, sig: bytes, decl: abi.EventDecl,
                  deadline: float) -> Optional[int]:
        """Slot j for `decl`: its id if the slot now declares it (written by us, or found
        written); None to go on with the next slot (j is in decl_skipped if it is
        empty and held). Raises DeclarationRefused if j declares the name otherwise."""
        off = self.layout.decl(j)
        while True:
            text = self._slot_text(j)
            if text is None and self.locks.try_lock(off):
                try:
                    if self._slot_text(j) is None:
                        self.mm[off + abi.DECL_TEXT:off + abi.DECL_TEXT + len(sig)] = sig
                        self.words.set_u32(off + abi.DECL_LEN, len(sig))
                        self.mm[self.layout.enable_off + j] = 0 if decl.disabled else 1
                        self.words.set_u32(off + abi.DECL_STATE, abi.DECL_VALID)
                        self.decl_skipped.discard(j)
                        self._learn(j, sig)
                        return j
                finally:
                    self.locks.unlock(off)
                continue                          # written meanwhile: read it again
            if text is not None:                  # taken: learn it, look again
                self.decl_skipped.discard(j)
                self._learn(j, text)
                return self._lookup(name, sig, decl)
            # another process holds the slot: an honest writer is done in microseconds
            if time.monotonic() >= deadline:
                self.decl_skipped.add(j)
                return None
            time.sleep(0.0002)

    def attach(self, fn: Callable, tls) -> None:
        self.attach_all([fn], tls)

    def attach_all(self, fns: List[Callable], tls) -> None:
        """Bind tracepoints to this channel; a refused declaration disables its
        tracepoint (warned once per event, counted in the region) instead of failing
        the application. A declaration refused only for now (slots held by other
        processes) is tried again by the poller and at the next declaration; meanwhile
        each of the tracepoint's records is dropped and counted as lost. Linear in the
        tracepoints and in the slots not seen yet (a QEMU-scale file: thousands)."""
        ok = False
        with self.decl_retry_lock:      # one declaring thread at a time, the poller too
            for fn in fns:
                ok = self._attach(fn, tls) or ok
        if ok:
            self.retry_declarations(force=True)   # a slot could be had: maybe more

    def _attach(self, fn: Callable, tls) -> bool:
        try:
            fn.event_id = self.declare(fn.decl)
        except DeclarationBusy as e:
            if fn not in self.decl_waiting:
                wait_for_slot(fn, str(e), tls, self._lost_emit)
                self.decl_waiting.append(fn)
            return False
        except (DeclarationRefused, OSError) as e:
            refuse(fn, str(e))
            self.count(refused=1)
            return False
        fn.refused = None
        if getattr(fn, "decl_wait", None) is not None:
            set_cell(fn, "_claim", fn.decl_wait[1])     # the real one again
            fn.decl_wait = None
        for k, v in (("_id", fn.event_id), ("_clock", self.clock), ("_tls", tls),
                     ("_mm", self.mm), ("_cq", self.q)):
            set_cell(fn, k, v)
        self.tracepoints.append(fn)
        on = self.mm[self.layout.enable_off + fn.event_id]
        if fn.event_id < len(self.last_enable):
            self.last_enable[fn.event_id] = on     # what the poller compares against
        self._sync_enable(fn, on != 0)
        return True

    def _lost_emit(self) -> None:
        """The emit path of a tracepoint waiting for a declaration slot: no ring, no id;
        the record is counted lost (docs/abi.md §11)."""
        self.count(lost=1)

    def retry_declarations(self, force: bool = False) -> None:
        """Declare the tracepoints refused for held slots, if their time has come (the
        poller's backoff) or `force` (a new declaration: the table moved)."""
        if not self.decl_waiting or self.closed:
            return
        now = time.monotonic()
        if not force and now < self._decl_retry_at:
            return
        with self.decl_retry_lock:      # the poller and a new declaration both retry
            waiting, self.decl_waiting = self.decl_waiting, []
            for fn in waiting:
                if getattr(fn, "event_id", None) is None:
                    self._attach(fn, fn.decl_wait[0])    # busy again: back in decl_waiting
        if self.decl_waiting:
            self._decl_gap = min(self._decl_gap * 2, DECL_RETRY_S[1])
        else:
            self._decl_gap = DECL_RETRY_S[0]
        self._decl_retry_at = now + self._decl_gap

    def give_up_declarations(self) -> None:
        """At exit: tracepoints never declared count as refused declarations, after one
        last try (the slots may have been freed since the poller's last retry)."""
        self.retry_declarations(force=True)
        with self.decl_retry_lock:
            waiting, self.decl_waiting = self.decl_waiting, []
        for fn in waiting:
            if getattr(fn, "event_id", None) is not None:
                continue                  # declared meanwhile by the other retrier
            refuse(fn, fn.refused or "no declaration slot")
            self.count(refused=1)

    def sync_enables(self, force: bool = False) -> None:
        """Mirror the enable table into the tracepoints (the poller). Serialised with
        declarations: a table read before a declaration wrote its enable byte must not
        be applied to the tracepoint after (it would switch it off until the next
        poll, its records dropped uncounted)."""
        lay = self.layout
        with self.decl_retry_lock:
            table = bytearray(self.mm[lay.enable_off:lay.enable_off + lay.max_events])
            if table == self.last_enable and not force:
                return
            self.last_enable = table
            for fn in list(self.tracepoints):
                self._sync_enable(fn, table[fn.event_id] != 0)

    @staticmethod
    def _sync_enable(fn: Callable, on: bool) -> None:
        if fn.enabled != on:
            set_cell(fn, "_on", on)
            fn.enabled = on

    def start_poller(self) -> None:
        def run():
            untraced_thread()
            while not self.closed:
                try:
                    self.sync_enables()
                    self.publish()        # counts a busy guard or busy slots left over
                    self.retry_declarations()
                except (ValueError, OSError):
                    return
                time.sleep(POLL_S)
        self.poller = threading.Thread(target=run, name="hypertrace-poll", daemon=True)
        self.poller.hypertrace_own = True   # never function-traced
        self.poller.start()

    # -- ring claims ---------------------------------------------------------
    def claim(self, tls) -> Optional[RingWriter]:
        """Claim a free ring for the calling thread; None if none can be had now (the
        dropped record is counted). Never waits for another process."""
        now = time.monotonic()
        got = None
        if now >= self._next_claim and not self.closed and self._enter():
            try:
                got = self._claim_free()
                if got is None:
                    self._reap_dead()
            except (OSError, ValueError):
                got = None               # no descriptor left, an unmapped region
            finally:
                self._leave()
        if got is None:
            self._next_claim = now + CLAIM_RETRY_S
            self.count(lost=1)
            return None
        idx, gen, pid = got
        w = RingWriter(self, idx, gen, pid, 0, 0)
        tls.w = w
        tls.holder = _Holder(w)
        return w

    def _states(self) -> list:
        lay = self.layout
        with memoryview(self.mm) as mv:
            words = mv[lay.desc_off:lay.desc_off + lay.n_rings * abi.DESC_SIZE].cast("I")
            try:
                return words[abi.D_STATE // 4::abi.DESC_SIZE // 4].tolist()
            finally:
                words.release()

    def _claim_free(self) -> Optional[tuple]:
        lay = self.layout
        n = lay.n_rings
        states = self._states()
        # round robin from the ring after this process's last claim: a process's first
        # claim takes the lowest free ring, and a series of short-lived threads spreads
        # its claims over the rings (each ring has a claim budget of its own, §7)
        first = self._next_ring % n
        for k in range(n):
            i = (first + k) % n
            if states[i] != abi.RING_FREE or i in self.rings_held:
                continue
            d = lay.desc(i)
            if self.words.u64(d + abi.D_CONSUMED) != 0:
                continue
            if not self.locks.try_lock(d):
                continue                 # another process is claiming it, or holds it
            st = self.words.u32(d + abi.D_STATE)
            if st != abi.RING_FREE or self.words.u64(d + abi.D_CONSUMED) != 0:
                self.locks.unlock(d)
                continue
            pid = os.getpid()
            tid = threading.get_native_id() if hasattr(threading, "get_native_id") else 0
            name = threading.current_thread().name.encode("utf-8", "replace")[
                :abi.THREAD_NAME_LEN]
            wd = self.words
            gen = (wd.u32(d + abi.D_GENERATION) + 1) & 0xFFFFFFFF
            for off in (abi.D_COMMIT, abi.D_EMITTED, abi.D_FIRST, abi.D_DISCARDED,
                        abi.D_CONSUMED):
                wd.set_u64(d + off, 0)
            wd.set_u32(d + abi.D_GENERATION, gen)
            wd.set_u32(d + abi.D_PID, pid)
            wd.set_u32(d + abi.D_TID, tid)
            wd.set_u64(d + abi.D_CLAIM_TS, self.clock() & 0xFFFFFFFFFFFFFFFF)
            nm = d + abi.D_THREAD_NAME
            self.mm[nm:nm + abi.THREAD_NAME_LEN] = name.ljust(abi.THREAD_NAME_LEN, b"\0")
            wd.set_u32(d + abi.D_STATE, abi.RING_ACTIVE)
            self.rings_held.add(i)       # the lock stays ours while the claim lasts
            self._next_ring = i + 1
            return i, gen, pid
        return None

    def _reap_dead(self) -> None:
        """No ring free: hand the rings of vanished producers to the collector, which
        drains and frees them for later claims. An active ring whose lock nobody holds
        has lost its owner (the lock died with it), whatever its pid says."""
        lay = self.layout
        for i, st in enumerate(self._states()):
            if st != abi.RING_ACTIVE or i in self.rings_held:
                continue
            d = lay.desc(i)
            if self.locks.try_lock(d):
                try:
                    if self.words.u32(d + abi.D_STATE) == abi.RING_ACTIVE:
                        self.words.set_u32(d + abi.D_STATE, abi.RING_RELEASED)
                finally:
                    self.locks.unlock(d)

    def release_ring(self, index: int) -> None:
        """The ring was handed back (state released): its lock goes, then our claim on
        it, in that order, so that no thread of ours reclaims it with the lock held."""
        self.locks.unlock(self.layout.desc(index))
        self.rings_held.discard(index)

    # -- clock mailboxes -------------------------------------------------------
    def claim_mailbox(self):
        """A clock mailbox for this process, or None (the host does not serve them, or
        every slot is taken by a live process)."""
        from .mailbox import Mailbox, serving
        if self.closed or not serving(self.mm) or not self._enter():
            return None
        try:
            for i in range(abi.N_MBOX):
                o = abi.MBOX_OFF + i * abi.MBOX_SIZE
                if i in self.mbox_held or not self.locks.try_lock(o):
                    continue             # claimed by a live process (its lock is held)
                self.words.set_u32(o + abi.M_PID, os.getpid())
                self.words.set_u32(o + abi.M_STATE, abi.MBOX_CLAIMED)
                self.mbox_held.add(i)
                return Mailbox(self.mm, i, self.clock, on_release=self._release_mailbox)
        except (OSError, ValueError):
            pass
        finally:
            self._leave()
        return None

    def _release_mailbox(self, index: int) -> None:
        self.locks.unlock(abi.MBOX_OFF + index * abi.MBOX_SIZE)
        self.mbox_held.discard(index)

    def close(self) -> None:
        self.closed = True


def refuse(fn: Callable, reason: str) -> None:
    """Disable a tracepoint for good on this channel; warn once per event."""
    set_cell(fn, "_on", False)
    if getattr(fn, "decl_wait", None) is not None:
        set_cell(fn, "_tls", fn.decl_wait[0])
        set_cell(fn, "_claim", fn.decl_wait[1])
        fn.decl_wait = None
    fn.enabled = False
    fn.event_id = None
    fn.refused = reason
    if (fn.name, "refused") not in _warned:
        _warned.add((fn.name, "refused"))
        warn("event %s disabled: %s" % (fn.name, reason))


def wait_for_slot(fn: Callable, reason: str, tls, lost: Callable[[], None]) -> None:
    """A tracepoint whose declaration must wait for a slot: on (unless declared
    disabled), but with no ring to write to, so that each record it is given is
    counted as lost (`lost`, through the claim hook) rather than dropped silently."""
    old = getattr(fn, "decl_wait", None)     # waiting on an earlier channel already
    fn.decl_wait = (tls, old[1] if old is not None else get_cell(fn, "_claim"))
    fn.event_id = None
    fn.refused = reason
    set_cell(fn, "_tls", _NoRing())
    set_cell(fn, "_claim", lost)
    set_cell(fn, "_on", not fn.decl.disabled)
    fn.enabled = False
    if (fn.name, "waiting") not in _warned:
        _warned.add((fn.name, "waiting"))
        warn("event %s not declared yet: %s" % (fn.name, reason))


class _NoRing:
    """A thread-local stand-in with no writer: the tracepoint asks its claim hook."""


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
