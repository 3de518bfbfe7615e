"""Clock exchanges through a mailbox in the shared region (ABI §10): no syscall, no
VM exit. The guest rewrites t1 while it waits, so the host's reading of t1 is at
most one loop iteration old, and it sees the answer within one iteration: each
exchange bounds the clock offset to a few µs, where a socket round trip through
two Python processes leaves tens of µs.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from .. import abi

WAIT_S = 0.05          # the host polls every few ms; longer means it is not serving


class Mailbox:
    def __init__(self, mm, index: int, clock: Callable[[], int],
                 on_release: Optional[Callable[[int], None]] = None):
        self.mm = mm
        self.words = abi.Words(mm)        # t1 and req read by the host as we write them
        self.index = index
        self.on_release = on_release      # drops the slot's lock (the channel's)
        self.off = abi.MBOX_OFF + index * abi.MBOX_SIZE
        self.clock = clock
        self.req = self.words.u32(self.off + abi.M_REQ)

    def exchange(self) -> Optional[int]:
        """One exchange; returns its round trip (guest ns), or None when the host did
        not answer within WAIT_S."""
        wd, o, clock = self.words, self.off, self.clock
        req = self.req % 0xFFFFFFFF + 1            # 1..2**32-1: 0 means none
        self.req = req
        set_t1 = wd.set_u64
        ans = wd.u32
        t1 = clock()
        set_t1(o + abi.M_T1, t1)
        wd.set_u32(o + abi.M_REQ, req)             # after t1: the host reads both
        deadline = time.monotonic() + WAIT_S
        n = 0
        while True:
            set_t1(o + abi.M_T1, clock())
            if ans(o + abi.M_ANS) == req:
                t4 = clock()
                break
            n += 1
            # no sleep(0) here: holding the GIL keeps t1 fresh while the host may read
            # it (other threads of this process wait at most one switch interval, once
            # per exchange: the host answers within a few ms)
            if n & 63 == 0 and time.monotonic() > deadline:
                return None
        wd.set_u64(o + abi.M_T4, t4)
        wd.set_u32(o + abi.M_DONE, req)            # after t4: the host takes the sample
        return t4 - t1

    def release(self) -> None:
        """Free the slot; at once after the last `done` is fine: the host still takes
        that exchange (ABI §10)."""
        try:
            self.words.set_u32(self.off + abi.M_STATE, abi.MBOX_FREE)
        finally:
            if self.on_release is not None:
                self.on_release(self.index)     # after the state, as for a ring


def serving(mm) -> bool:
    """Whether the collector serves the region's mailboxes."""
    return bool(abi.Words(mm).u32(abi.HDR_FLAGS) & abi.FLAG_MAILBOXES)
