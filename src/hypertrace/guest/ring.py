"""One producer's ring: the slow paths of the emit protocol (room, wrap, loss, release).

The fast path, generated inline into each tracepoint by tracepoint.py, is:

    if pos + size > w.lim: pos = w.make_room(size)    # rare
    pack the record at mapping offset pos + w.delta
    w.pos = pos + size; w.seq += 1; commit word = pos + size

`lim` is the furthest position the producer may write to without looking at
anything else: the end of the current lap of the ring, and (discard/block)
the collector's consumed position plus the ring size, or (overwrite) the
oldest intact record plus the ring size.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

from .. import abi
from .accel import WriterBase, invalidate

MADV_POPULATE_WRITE = 23     # Linux 5.14; Python's mmap module does not name it


def populate(mm: mmap.mmap, start: int, end: int) -> None:
    """Map pages [start, end) of the region now: a first-touch fault per page on the
    emit path costs more than the emit itself, worse under nested virtualisation. Only
    what this process uses: the tables once the header is valid (a file that is not a
    region is never read in whole), a ring when a thread claims it."""
    start &= ~(mmap.PAGESIZE - 1)
    try:
        mm.madvise(MADV_POPULATE_WRITE, start, min(end, len(mm)) - start)
    except (AttributeError, OSError, ValueError):
        pass                     # an older kernel or Python: the pages fault in on use


_PAD = struct.Struct("<HH")


class RingWriter(WriterBase):
    """State of the calling thread's ring; only that thread touches it. The fields
    the emit path uses (pos, lim, delta, seq, ci) are WriterBase's: C fields the C
    tracepoint reads directly when the accelerator is built (guest/accel.py)."""

    __slots__ = ("ch", "mm", "index", "desc", "base", "size", "mask", "tail", "mode",
                 "discarded", "pid", "generation", "blocked_heartbeat", "released", "words")

    def __init__(self, ch, index: int, generation: int, pid: int, seq: int = 0,
                 discarded: int = 0):
        lay = ch.layout
        self.ch = ch
        self.mm = ch.mm
        self.words = ch.words        # the descriptor's words, each in one store
        self.index = index
        self.desc = lay.desc(index)
        self.ci = (self.desc + abi.D_COMMIT) // 8   # index of the commit word in ch.q
        self.base = lay.data(index)
        self.size = lay.ring_size
        populate(ch.mm, self.base, self.base + self.size)
        self.mask = lay.ring_size - 1
        self.pos = 0
        self.delta = self.base      # mapping offset of position p is p + delta (this lap)
        self.seq = seq
        self.busy = 0               # an emit is between reading pos and its commit
        self.tail = 0               # consumed (discard/block) or first intact (overwrite)
        self.lim = self.size
        self.mode = ch.header.mode
        self.discarded = discarded
        self.pid = pid
        self.generation = generation
        self.blocked_heartbeat = -1
        self.released = False

    def _set_lim(self) -> None:
        lap_end = (self.pos | self.mask) + 1
        self.lim = min(lap_end, self.tail + self.size)
        self.delta = self.base - (self.pos & ~self.mask)

    # -- slow path: the record does not fit before the ring end or the reader --
    def make_room(self, size: int) -> int:
        """Make room for `size` bytes; returns the write position or -1 if dropped."""
        pos = self.pos
        off = pos & self.mask
        pad = self.size - off if off + size > self.size else 0
        need = pad + size
        if size > self.size >> 1:
            return self._drop()       # a record larger than half the ring never fits
        if self.mode == abi.MODE_OVERWRITE:
            self._overwrite(pos + need)
        elif pos + need - self.tail > self.size:
            self.tail = self._consumed(pos)
            if pos + need - self.tail > self.size and self.mode == abi.MODE_BLOCK:
                self._block(pos + need)
            if pos + need - self.tail > self.size:
                return self._drop()
        if pad:
            _PAD.pack_into(self.mm, self.base + off, abi.PAD_ID, pad)
            pos += pad
            self.pos = pos
        self._set_lim()
        return pos

    def _consumed(self, pos: int) -> int:
        c = self.words.u64(self.desc + abi.D_CONSUMED)
        # a consumed position outside [pos - size, pos] is nonsense: treat the ring as full
        return c if pos - self.size <= c <= pos else pos - self.size

    def _block(self, end: int) -> None:
        ch = self.ch
        deadline = time.monotonic() + ch.header.block_timeout_ns / 1e9
        delay = 20e-6
        while end - self.tail > self.size:
            hb = ch.heartbeat()
            if ch.collector_state() != abi.COLLECTOR_RUNNING or hb == self.blocked_heartbeat:
                return  # no collector, or it stalled through our whole last wait: don't wait
            if time.monotonic() >= deadline:
                self.blocked_heartbeat = hb
                return
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
            self.tail = self._consumed(self.pos)
        self.blocked_heartbeat = -1

    def _overwrite(self, end: int) -> None:
        # advance `first` past the oldest records until `end` fits, plus an eighth of
        # the ring so that this slow path runs rarely; publish it before the bytes
        # are overwritten so that a concurrent reader can detect the overlap
        first = self.tail
        if end - first <= self.size:
            return
        goal = end + (self.size >> 3)
        mm, base, mask = self.mm, self.base, self.mask
        while goal - first > self.size and first < self.pos:
            o = base + (first & mask)
            sz = (mm[o + 2] | mm[o + 3] << 8) & 0xFFF8
            first += sz if sz else self.size  # a zero size cannot happen; never spin
        first = min(first, self.pos)
        self.tail = first
        self.words.set_u64(self.desc + abi.D_FIRST, first)

    def nested(self) -> None:
        """An emit made while another emit of this thread was between reading `pos`
        and its commit (by a signal handler, an argument's __index__, a __del__ that
        traces): it would write over the outer record, so it is dropped, counted as
        discarded like a record that found no room (the outer one takes the next
        seq after it: the collector sees the gap)."""
        self._drop()

    def _drop(self) -> int:
        self.seq += 1
        self.discarded += 1
        self.words.set_u64(self.desc + abi.D_EMITTED, self.seq)
        self.words.set_u64(self.desc + abi.D_DISCARDED, self.discarded)
        return -1

    def release(self) -> None:
        """Hand the ring back (thread or process exit); only its owning process may,
        once."""
        invalidate()                       # no thread keeps a writer cached past this
        if os.getpid() != self.pid or self.released:
            return                         # a forked child: the parent's ring, not ours
        self.released = True
        try:
            if not (self.ch.closed_mm or self.mm.closed):
                wd, d = self.words, self.desc
                wd.set_u64(d + abi.D_EMITTED, self.seq)
                if (wd.u32(d + abi.D_STATE) == abi.RING_ACTIVE
                        and wd.u32(d + abi.D_GENERATION) == self.generation):
                    wd.set_u32(d + abi.D_STATE, abi.RING_RELEASED)
        except (ValueError, OSError):
            pass
        self.ch.release_ring(self.index)   # after the state: the lock says "owner alive"


class _Holder:
    """Kept in the thread-local; releases the ring when the thread's locals die."""

    __slots__ = ("w",)

    def __init__(self, w: RingWriter):
        self.w = w

    def __del__(self):
        self.w.release()
