"""Clock exchanges through a mailbox in the shared region (ABI §10): no syscall, no
VM exit. The guest rewrites t1 while it waits, so the host's reading of t1 is at
most one loop iteration old, and it sees the answer within one iteration: each
exchange bounds the clock offset to a few µs, where a socket round trip through
two Python processes leaves tens of µs.
"""

from __future__ import annotations

import struct
import time
from typing import Callable, Optional

from .. import abi

_U32 = struct.Struct("<I")
_Q = struct.Struct("<Q")
WAIT_S = 0.05          # the host polls every few ms; longer means it is not serving


class Mailbox:
    def __init__(self, mm, index: int, clock: Callable[[], int],
                 on_release: Optional[Callable[[int], None]] = None):
        self.mm = mm
        self.index = index
        self.on_release = on_release      # drops the slot's lock (the channel's)
        self.off = abi.MBOX_OFF + index * abi.MBOX_SIZE
        self.clock = clock
        self.req = _U32.unpack_from(mm, self.off + abi.M_REQ)[0]

    def exchange(self) -> Optional[int]:
        """One exchange; returns its round trip (guest ns), or None when the host did
        not answer within WAIT_S."""
        mm, o, clock = self.mm, self.off, self.clock
        req = self.req % 0xFFFFFFFF + 1            # 1..2**32-1: 0 means none
        self.req = req
        pack_t1 = _Q.pack_into
        ans = _U32.unpack_from
        t1 = clock()
        pack_t1(mm, o + abi.M_T1, t1)
        _U32.pack_into(mm, o + abi.M_REQ, req)     # after t1: the host reads both
        deadline = time.monotonic() + WAIT_S
        n = 0
        while True:
            pack_t1(mm, o + abi.M_T1, clock())
            if ans(mm, o + abi.M_ANS)[0] == req:
                t4 = clock()
                break
            n += 1
            # no sleep(0) here: holding the GIL keeps t1 fresh while the host may read
            # it (other threads of this process wait at most one switch interval, once
            # per exchange: the host answers within a few ms)
            if n & 63 == 0 and time.monotonic() > deadline:
                return None
        _Q.pack_into(mm, o + abi.M_T4, t4)
        _U32.pack_into(mm, o + abi.M_DONE, req)   # after t4: the host takes the sample
        return t4 - t1

    def release(self) -> None:
        """Free the slot; at once after the last `done` is fine: the host still takes
        that exchange (ABI §10)."""
        try:
            _U32.pack_into(self.mm, self.off + abi.M_STATE, abi.MBOX_FREE)
        finally:
            if self.on_release is not None:
                self.on_release(self.index)     # after the state, as for a ring


def serving(mm) -> bool:
    """Whether the collector serves the region's mailboxes."""
    return bool(_U32.unpack_from(mm, abi.HDR_FLAGS)[0] & abi.FLAG_MAILBOXES)
