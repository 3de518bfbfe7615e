"""The shared region's layout: header, clock mailboxes, loss counters, locks,
declaration slots, ring descriptors (docs/abi.md)."""

from __future__ import annotations

import re
import struct
from typing import NamedTuple, Optional, Tuple

__all__ = ["MAX_EVENT_ID", "ABI_MAJOR", "ABI_MINOR", "MAGIC", "PAGE", "HEADER_SIZE", "HDR_MAGIC",
           "HDR_ABI_MAJOR", "HDR_ABI_MINOR", "HDR_HEADER_SIZE", "HDR_REGION_SIZE",
           "HDR_SESSION_ID", "HDR_NAME", "HDR_N_RINGS", "HDR_RING_SIZE", "HDR_MAX_EVENTS",
           "HDR_MODE", "HDR_BLOCK_TIMEOUT", "HDR_ENABLE_OFF", "HDR_DECL_OFF", "HDR_DESC_OFF",
           "HDR_DATA_OFF", "HDR_COLLECTOR", "HDR_FLAGS", "HDR_HEARTBEAT", "NAME_LEN",
           "HEADER_STRUCT", "FLAG_MAILBOXES", "MBOX_OFF", "MBOX_SIZE", "N_MBOX", "M_STATE",
           "M_PID", "M_REQ", "M_ANS", "M_T1", "M_T2", "M_T3", "M_T4", "M_DONE", "MBOX_FREE",
           "MBOX_CLAIMED", "CNT_OFF", "CNT_SIZE", "N_CNT", "C_LOST", "C_DECL_REFUSED",
           "CNT_FIELDS", "CNT_MAX", "F_OFD_GETLK", "F_OFD_SETLK", "COLLECTOR_NONE",
           "COLLECTOR_RUNNING", "COLLECTOR_STOPPED", "MODE_DISCARD", "MODE_BLOCK",
           "MODE_OVERWRITE", "MODES", "MODE_NAMES", "DECL_SLOT", "DECL_STATE", "DECL_LEN",
           "DECL_TEXT", "DECL_TEXT_MAX", "DECL_EMPTY", "DECL_VALID", "DESC_SIZE", "D_COMMIT",
           "D_EMITTED", "D_FIRST", "D_DISCARDED", "D_CONSUMED", "D_STATE", "D_GENERATION",
           "D_PID", "D_TID", "D_CLAIM_TS", "D_THREAD_NAME", "THREAD_NAME_LEN", "RING_FREE",
           "RING_ACTIVE", "RING_RELEASED", "DEFAULT_RINGS", "DEFAULT_RING_SIZE",
           "DEFAULT_MAX_EVENTS", "DEFAULT_BLOCK_TIMEOUT_NS", "align", "Layout", "make_layout",
           "Header", "ABIError", "parse_header", "pack_header"]

ABI_MAJOR = 1
ABI_MINOR = 5
MAGIC = 0x4543415254505948  # b"HYPTRACE" read as a little-endian u64
PAGE = 4096
HEADER_SIZE = PAGE

# --- region header (written by the host; the guest only reads it) ---------
HDR_MAGIC = 0            # u64
HDR_ABI_MAJOR = 8        # u16
HDR_ABI_MINOR = 10       # u16
HDR_HEADER_SIZE = 12     # u32
HDR_REGION_SIZE = 16     # u64
HDR_SESSION_ID = 24      # u8[16]
HDR_NAME = 40            # char[32], NUL padded
HDR_N_RINGS = 72         # u32
HDR_RING_SIZE = 76       # u32
HDR_MAX_EVENTS = 80      # u32
HDR_MODE = 84            # u32
HDR_BLOCK_TIMEOUT = 88   # u64 ns
HDR_ENABLE_OFF = 96      # u64
HDR_DECL_OFF = 104       # u64
HDR_DESC_OFF = 112       # u64
HDR_DATA_OFF = 120       # u64
HDR_COLLECTOR = 128      # u32 collector state
HDR_FLAGS = 132          # u32, bit 0: the collector serves the clock mailboxes
HDR_HEARTBEAT = 136      # u64, bumped by the collector on every poll
NAME_LEN = 32

HEADER_STRUCT = struct.Struct("<QHHIQ16s32sIIIIQQQQQ")  # offsets 0..127

# --- clock mailboxes (ABI 1.3): clock exchanges through shared memory --------
# In the header page, written by both sides. A guest process claims one slot
# (like a ring) and runs 4-timestamp exchanges through it with no syscall and
# no VM exit; while it waits it keeps rewriting t1, so whenever the host reads
# the request, t1 is at most one loop iteration old: a band of a few µs.
FLAG_MAILBOXES = 1
MBOX_OFF = 1024
MBOX_SIZE = 64
N_MBOX = 32
M_STATE = 0              # u32 0 free, 1 claimed (guest, under the region lock)
M_PID = 4                # u32 the claiming process (guest)
M_REQ = 8                # u32 sequence of the pending request, never 0 (guest)
M_ANS = 12               # u32 the request answered (host, after t2 and t3)
M_T1 = 16                # u64 guest clock, rewritten while the guest waits
M_T2 = 24                # u64 host: request seen
M_T3 = 32                # u64 host: answer written
M_T4 = 40                # u64 guest clock, once it saw M_ANS == M_REQ
M_DONE = 48              # u32 = M_REQ once M_T4 is written (guest)
MBOX_FREE = 0
MBOX_CLAIMED = 1

# --- shared loss counters (ABI 1.4): in the header page, written by producers -----
# A drop that has no ring to be counted in (no ring free, a claim that could not
# lock, a declaration refused) is added at once to one of these slots, so that it
# outlives the thread and the process. With no atomic add in Python, each slot has
# one writer at a time: the holder of the slot's lock (LOCKING below). The host
# sums every slot.
CNT_OFF = 3072
CNT_SIZE = 64
N_CNT = 16
C_LOST = 0               # u64 records dropped while the thread had no ring
C_DECL_REFUSED = 8       # u64 tracepoints disabled: declaration refused (conflict, full)
CNT_FIELDS = 2
CNT_MAX = 1 << 48        # a slot above this is scribble: the host ignores it

# --- locking (ABI 1.4) -------------------------------------------------------
# Producers exclude each other with Linux open-file-description locks
# (fcntl F_OFD_SETLK: never waits) on single bytes of the region file: the lock of
# an object is a write lock on its own first byte (ring i: desc(i); declaration
# slot j: decl(j); mailbox k: MBOX_OFF + 64k; counter slot c: CNT_OFF + 64c).
# A ring's and a mailbox's lock is held for as long as the claim lasts: a
# claimed object whose lock is free has lost its owner.
F_OFD_GETLK = 36
F_OFD_SETLK = 37

COLLECTOR_NONE = 0
COLLECTOR_RUNNING = 1
COLLECTOR_STOPPED = 2

MODE_DISCARD = 0
MODE_BLOCK = 1
MODE_OVERWRITE = 2
MODES = {"discard": MODE_DISCARD, "block": MODE_BLOCK, "overwrite": MODE_OVERWRITE}
MODE_NAMES = {v: k for k, v in MODES.items()}

# --- event declaration slots ---------------------------------------------
DECL_SLOT = 512
DECL_STATE = 0           # u32: 0 empty, 1 valid
DECL_LEN = 4             # u32: text length in bytes
DECL_TEXT = 8            # UTF-8 signature text, DECL_SLOT - 8 bytes at most
DECL_TEXT_MAX = DECL_SLOT - DECL_TEXT
DECL_EMPTY = 0
DECL_VALID = 1
MAX_EVENT_ID = 0xFFFE      # event ids are u16; 0xFFFF is the padding record

# --- ring descriptors -----------------------------------------------------
DESC_SIZE = 256
# producer cache line
D_COMMIT = 0             # u64 byte position up to which records are complete
D_EMITTED = 8            # u64 records attempted (committed + discarded)
D_FIRST = 16             # u64 overwrite mode: position of the oldest intact record
D_DISCARDED = 24         # u64 records dropped by the producer (discard/block)
# consumer cache line
D_CONSUMED = 64          # u64 byte position the collector has read up to
# identity (written by the producer when it claims the ring)
D_STATE = 128            # u32
D_GENERATION = 132       # u32
D_PID = 136              # u32
D_TID = 140              # u32
D_CLAIM_TS = 144         # u64 guest clock
D_THREAD_NAME = 152      # char[16]
THREAD_NAME_LEN = 16

RING_FREE = 0
RING_ACTIVE = 1
RING_RELEASED = 2

DEFAULT_RINGS = 32
# 4 MiB: 174 762 records of 24 bytes, 35 ms of a C producer's sustained 5 M events/s
# and a Python thread's burst of 130 000 events, before the collector need look
DEFAULT_RING_SIZE = 4 << 20
DEFAULT_MAX_EVENTS = 8192     # QEMU's trace-events-all holds ~5 100
DEFAULT_BLOCK_TIMEOUT_NS = 1_000_000_000


def align(value: int, to: int) -> int:
    return (value + to - 1) & -to


class Layout(NamedTuple):
    """Offsets of the region's parts, derived from its three sizing parameters."""

    n_rings: int
    ring_size: int
    max_events: int
    enable_off: int
    decl_off: int
    desc_off: int
    data_off: int
    region_size: int

    def desc(self, ring: int) -> int:
        return self.desc_off + ring * DESC_SIZE

    def data(self, ring: int) -> int:
        return self.data_off + ring * self.ring_size

    @property
    def used(self) -> int:
        """The end of the last ring: the rest of region_size (up to the power of two an
        ivshmem BAR needs) is never touched."""
        return self.data(self.n_rings)

    def decl(self, event_id: int) -> int:
        return self.decl_off + event_id * DECL_SLOT


def make_layout(n_rings: int = DEFAULT_RINGS, ring_size: int = DEFAULT_RING_SIZE,
                max_events: int = DEFAULT_MAX_EVENTS) -> Layout:
    """Lay out a region; the total is rounded up to a power of two (ivshmem needs one)."""
    if not 1 <= n_rings <= 4096:
        raise ValueError("n_rings must be within 1..4096")
    if ring_size < PAGE or ring_size & (ring_size - 1) or ring_size > 1 << 30:
        raise ValueError("ring size must be a power of two between 4 KiB and 1 GiB")
    if not 1 <= max_events <= MAX_EVENT_ID:
        raise ValueError("max_events must be within 1..%d" % MAX_EVENT_ID)
    enable_off = HEADER_SIZE
    decl_off = align(enable_off + max_events, PAGE)
    desc_off = align(decl_off + max_events * DECL_SLOT, PAGE)
    data_off = align(desc_off + n_rings * DESC_SIZE, PAGE)
    end = data_off + n_rings * ring_size
    size = 1 << (end - 1).bit_length()
    return Layout(n_rings, ring_size, max_events, enable_off, decl_off, desc_off, data_off, size)


class Header(NamedTuple):
    magic: int
    abi_major: int
    abi_minor: int
    header_size: int
    region_size: int
    session_id: bytes
    name: str
    n_rings: int
    ring_size: int
    max_events: int
    mode: int
    block_timeout_ns: int
    enable_off: int
    decl_off: int
    desc_off: int
    data_off: int


class ABIError(ValueError):
    """The region is not a hypertrace region, or not one this code understands."""


def parse_header(buf, expect_size: Optional[int] = None) -> Tuple[Header, Layout]:
    """Copy and validate a region header; the layout must match the sizing fields."""
    raw = bytes(buf[:HEADER_STRUCT.size])
    if len(raw) < HEADER_STRUCT.size:
        raise ABIError("region smaller than its header")
    f = list(HEADER_STRUCT.unpack(raw))
    f[6] = f[6].split(b"\0", 1)[0].decode("ascii", "replace")
    hdr = Header(*f)
    if hdr.magic != MAGIC:
        raise ABIError("bad magic: not a hypertrace region")
    if hdr.abi_major != ABI_MAJOR:
        raise ABIError("ABI major version %d, this code speaks %d" % (hdr.abi_major, ABI_MAJOR))
    try:
        lay = make_layout(hdr.n_rings, hdr.ring_size, hdr.max_events)
    except ValueError as e:
        raise ABIError("bad sizing fields: %s" % e) from None
    got = (hdr.enable_off, hdr.decl_off, hdr.desc_off, hdr.data_off)
    if got != (lay.enable_off, lay.decl_off, lay.desc_off, lay.data_off):
        raise ABIError("region offsets disagree with its sizing fields")
    if hdr.region_size < lay.used:
        raise ABIError("region_size too small for its rings")
    if expect_size is not None and hdr.region_size > expect_size:
        raise ABIError("region_size %d exceeds the mapping (%d)" % (hdr.region_size, expect_size))
    if hdr.mode not in MODE_NAMES:
        raise ABIError("unknown mode %d" % hdr.mode)
    return hdr, lay


def pack_header(buf, lay: Layout, session_id: bytes, name: str, mode: int,
                block_timeout_ns: int) -> None:
    nm = name.encode("ascii")
    if len(nm) >= NAME_LEN or not re.fullmatch(rb"[A-Za-z0-9_.-]*", nm):
        raise ValueError("channel name must be < 32 characters of [A-Za-z0-9_.-]")
    HEADER_STRUCT.pack_into(
        buf, 0, MAGIC, ABI_MAJOR, ABI_MINOR, HEADER_SIZE, lay.region_size, session_id,
        nm, lay.n_rings, lay.ring_size, lay.max_events, mode, block_timeout_ns,
        lay.enable_off, lay.decl_off, lay.desc_off, lay.data_off)
