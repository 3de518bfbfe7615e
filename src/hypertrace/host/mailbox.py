"""The host end of the clock mailboxes (ABI §10): answers guests' exchanges in shared
memory. A thread polls the claimed slots every 2 ms (every 0.2 ms while exchanges
are under way); t2 is read just after the guest's latest t1, t3 just before the
answer is published. Only the host's own t1/t2/t3 are kept: the guest supplies
nothing but t4, accepted for the request this side answered and only if t4 >= t1.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from .. import abi
from .control import DomainClock
from .region import Region

MAX_RTT_NS = 10 * 10**9                   # a slower "exchange" is a lie or a pause
FAST_S, SLOW_S = 0.0002, 0.002
AREA = slice(abi.MBOX_OFF, abi.MBOX_OFF + abi.N_MBOX * abi.MBOX_SIZE)


def _clear(mm) -> None:
    """Every slot free, no request pending."""
    mm[AREA] = bytes(AREA.stop - AREA.start)


class MailboxServer:
    def __init__(self, registry: Dict[bytes, DomainClock],
                 on_sample: Optional[Callable] = None):
        self.registry = registry          # session id -> clock (shared with the sockets)
        self.on_sample = on_sample
        self.regions: List[Region] = []
        self.lock = threading.Lock()
        self.answered: Dict[Tuple[bytes, int], int] = {}
        self.pending: Dict[Tuple[bytes, int], tuple] = {}     # -> (req, t1, t2, t3)
        #: slots claimed before a guest's latest new-boot hello -> their claimant's pid:
        #: not answered again until claimed anew (see retire)
        self.retired: Dict[Tuple[bytes, int], int] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hypertrace-mailbox",
                                       daemon=True)

    def add(self, region: Region) -> None:
        """Serve this region's mailboxes and tell its guests so (the header flag)."""
        _clear(region.mm)
        wd = region.words
        wd.set_u32(abi.HDR_FLAGS, wd.u32(abi.HDR_FLAGS) | abi.FLAG_MAILBOXES)
        with self.lock:
            self.regions.append(region)

    def start(self) -> None:
        self.thread.start()

    def retire(self, session_id: bytes) -> None:
        """A hello from a new boot of the guest (called before it is answered): the slots
        claimed now are not answered any more. Nothing is written into the region: a
        claim is held by its lock, so a dead boot's slots are free for the taking, and
        a hello proves nothing (any co-producer can send one). A live claimant of
        before that hello gives up on its slot after 50 ms and exchanges over its
        control connection, which stays bound to the domain of its own boot; its
        samples never go to the clock of a "boot" someone else announced. A slot is
        served again once claimed anew: seen free (state 0), or with another pid (a
        rebooted guest's process claims a dead boot's slot without freeing it)."""
        with self.lock:
            for region in self.regions:
                if region.header.session_id != session_id:
                    continue
                wd = region.words
                for i in range(abi.N_MBOX):
                    o = abi.MBOX_OFF + i * abi.MBOX_SIZE
                    state, pid = wd.u32(o + abi.M_STATE), wd.u32(o + abi.M_PID)
                    # an exchange answered before the hello is the old boot's, even if
                    # its slot is free by now: its sample goes to no clock (the registry
                    # names the new boot's)
                    self.pending.pop((session_id, i), None)
                    if state == abi.MBOX_CLAIMED:
                        self.retired[(session_id, i)] = pid

    def _run(self) -> None:
        busy_until = 0.0
        while not self.stopping.is_set():
            if self.poll():
                busy_until = time.monotonic() + 0.01
            time.sleep(FAST_S if time.monotonic() < busy_until else SLOW_S)

    def poll(self) -> bool:
        """One pass over every claimed slot; whether any exchange is under way."""
        active = False
        with self.lock:
            for region in self.regions:
                sid = region.header.session_id
                wd = region.words
                for i in range(abi.N_MBOX):
                    o = abi.MBOX_OFF + i * abi.MBOX_SIZE
                    # each word in one load, `state` first (the guest writes it last)
                    state = wd.u32(o + abi.M_STATE)
                    _pid, req, done = (wd.u32(o + abi.M_PID), wd.u32(o + abi.M_REQ),
                                       wd.u32(o + abi.M_DONE))
                    key = (sid, i)
                    if state != abi.MBOX_CLAIMED:
                        self.retired.pop(key, None)    # free: the next claim is served
                        # a guest frees its slot right after its last `done`: that
                        # exchange is still taken (`done` is read after `state`, and
                        # the guest wrote `done` before freeing)
                        self._done(wd, o, key, sid, done)
                        continue
                    if key in self.retired:
                        if self.retired[key] == _pid:
                            continue                   # the claim of before the hello
                        del self.retired[key]          # claimed anew
                    # before answering a new request: a slot freed and claimed anew
                    # since still holds the previous claimant's `done` and `t4` (a new
                    # claimant writes `t4` only once this side answered its request)
                    self._done(wd, o, key, sid, done)
                    if req and req != self.answered.get(key):
                        self._answer(wd, o, key, req)
                        active = True
                    active = active or key in self.pending
        return active

    def _done(self, wd: abi.Words, o: int, key: tuple, sid: bytes, done: int) -> None:
        """The exchange this side answered in slot `key` is done: take its sample."""
        p = self.pending.get(key)
        if p is not None and done == p[0]:
            del self.pending[key]
            # t4 read again now: the copy may hold the previous exchange's t4 next to
            # this one's `done` (written after t4)
            self._sample(sid, p[1], p[2], p[3], wd.u64(o + abi.M_T4))

    def _answer(self, wd: abi.Words, o: int, key: tuple, req: int) -> None:
        t1 = wd.u64(o + abi.M_T1)                   # the guest wrote it before we read it
        t2 = time.monotonic_ns()
        wd.set_u64(o + abi.M_T2, t2)
        t3 = time.monotonic_ns()
        wd.set_u64(o + abi.M_T3, t3)
        wd.set_u32(o + abi.M_ANS, req)              # after t2/t3: the guest then takes t4
        self.answered[key] = req
        self.pending[key] = (req, t1, t2, t3)

    def _sample(self, sid: bytes, t1: int, t2: int, t3: int, t4: int) -> None:
        dc = self.registry.get(sid)
        if dc is None:
            return
        if not (t1 <= t4 and t4 - t1 <= MAX_RTT_NS):
            dc.rejected_samples += 1
            return
        if not dc.add_sample(t1, t2, t3, t4):
            return
        dc.mailbox_samples += 1
        if self.on_sample is not None:
            self.on_sample(dc, t1, t2, t3, t4)

    def close(self) -> None:
        """Stop answering; guests fall back to the control socket."""
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2)
        with self.lock:
            for region in self.regions:
                try:
                    wd = region.words
                    wd.set_u32(abi.HDR_FLAGS, wd.u32(abi.HDR_FLAGS) & ~abi.FLAG_MAILBOXES)
                except (ValueError, TypeError):
                    pass            # the region is already unmapped
