"""Vectorised validation of a piece of ring data (numpy): the collector's fast path.

A piece is a copy of committed ring bytes. Finding record boundaries is a
chain (each record's size gives the next start), so it is computed for every
8-byte word at once and the chain from word 0 is extracted by pointer
doubling. Every record on the chain is then checked with array operations:
known event id, exact size, string lengths inside the record, sequence
numbers (gaps are losses, backwards is malformed) and timestamps (clamped to
stay monotonic). The result says which byte runs are good, where losses sit,
and how many records were bad; RingReader turns it into CTF packets.

`walk` takes the C walk (native/walk.c, built as host/_walk) when it is built and
HYPERTRACE_PURE is "" or "0", else `numpy_walk`: the numpy walk is the reference
the C one must agree with, result for result (tests/test_native_walk.py).
"""

from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Union

import numpy as np

from .. import abi

_native = None
if os.environ.get("HYPERTRACE_PURE", "") in ("", "0"):
    try:
        from . import _walk as _native  # type: ignore[no-redef]
    except ImportError:
        _native = None

PAD = abi.PAD_ID
WINDOW = 4096             # words per pointer-doubling pass (32 KiB)
UNIFORM_MIN = 32


class Run(NamedTuple):
    start: int          # byte offset of the first record in the piece
    end: int            # byte offset after the last record
    count: int
    gap_before: int     # records lost just before this run
    first_ts: int
    last_ts: int
    last_rec: int       # byte offset of the last record (for the packet's content end)


class WalkResult(NamedTuple):
    runs: List[Run]
    malformed: int
    clamped: int
    next_seq: int
    last_ts: int
    # counts by event id: indexed by it (numpy walk) or a dict of the ids seen (C walk)
    per_event: Optional[Union[np.ndarray, Dict[int, int]]]


# steps of var_layout(): a fixed run of n >= 0 bytes, a u16 length + bytes, the end
STEP_VAR = -1
STEP_END = -2


def var_layout(codecs: dict) -> bytes:
    """The payload layouts of `codecs`, {event id: abi.Codec}, as the C walk reads
    them: little-endian int32 words [L, index of event 0 .. L-1, steps...], an index
    being the word where that event's steps start (-1: no codec)."""
    n = max(codecs, default=-1) + 1
    index = [-1] * n
    steps: List[int] = []
    for e, c in codecs.items():
        index[e] = 1 + n + len(steps)
        steps.extend(st.size if kind == "fixed" else STEP_VAR for kind, st in c.steps)
        steps.append(STEP_END)
    return np.array([n] + index + steps, dtype="<i4").tobytes()


def native() -> bool:
    """Whether `walk` takes the C walk."""
    return _native is not None


def walk(buf: bytearray, sizes: np.ndarray, codecs: dict, seq: int, last_ts: int,
         layout: Optional[bytes] = None, strict: bool = False) -> Optional[WalkResult]:
    """Validate one piece; None means 'use the scalar walk' (rare, odd cases), or
    with the C walk: 'an event id is not loaded, refresh the table' unless `strict`
    (then such a record is malformed, as in the scalar walk). The C walk also takes
    a seq going backwards itself, as the scalar walk does (malformed, dropped).

    `layout` is var_layout(codecs), which the caller may keep (the EventTable does)
    rather than have it rebuilt for every piece the C walk takes."""
    if _native is None:
        return numpy_walk(buf, sizes, codecs, seq, last_ts)
    r = _native.walk(buf, sizes, var_layout(codecs) if layout is None else layout, seq,
                     last_ts, strict)
    if r is None:
        return None
    runs, malformed, clamped, next_seq, last, per = r
    return WalkResult(list(map(Run._make, runs)), malformed, clamped, next_seq, last, per)


def chain(w: np.ndarray, limit: int) -> tuple:
    """Record starts (word indices) on the chain from word 0, walking at most `limit` words.

    Returns (starts, stop): `stop` is None when the chain ends exactly at the
    end of `w`, else the word index of the first record that is structurally
    bad or does not end within `limit` words (the caller decides which).
    """
    n = min(len(w), limit)
    h = w[:n]
    eid = (h & np.uint64(0xFFFF)).astype(np.int32)
    szw = ((h >> np.uint64(16)) & np.uint64(0xFFF8)).astype(np.int32) >> 3
    nxt = np.arange(n, dtype=np.int32) + szw
    bad = (szw < 2) & ~((eid == PAD) & (szw >= 1))
    nxt[bad | (nxt > n)] = n + 1
    nxt = np.concatenate([nxt, np.array([n, n + 1], dtype=np.int32)])
    tables = [nxt]
    k = 2
    while k < n:               # a record is at least 2 words: the chain has <= n/2 links
        j = tables[-1]
        tables.append(j[j])
        k <<= 1
    s = np.zeros(1, dtype=np.int32)
    for j in reversed(tables):
        s = np.concatenate([s, j[s]])
        s = s[s < n]
    s = np.sort(s)             # positions on a chain are distinct: no duplicates
    if len(s) and nxt[s[-1]] == n + 1:
        return s[:-1], int(s[-1])
    return s, (None if n == len(w) else n)


def _uniform(w: np.ndarray, base: int):
    """Speculate that records from `base` all have the same size (a hot loop emitting
    one event type): returns their starts if at least UNIFORM_MIN do, else None."""
    hdr = int(w[base])
    szw = ((hdr >> 16) & 0xFFF8) >> 3
    if szw < 2 or (hdr & 0xFFFF) == PAD:
        return None
    cand = w[base::szw]
    if len(cand) < UNIFORM_MIN:
        return None
    same = ((cand >> np.uint64(16)) & np.uint64(0xFFF8)) == np.uint64(szw << 3)
    k = len(cand) if same.all() else int(np.argmin(same))
    if base + k * szw > len(w):
        k -= 1                 # the last candidate would run past the piece
    if k < UNIFORM_MIN:
        return None
    return np.arange(base, base + k * szw, szw, dtype=np.int64)


def numpy_walk(buf: bytearray, sizes: np.ndarray, codecs: dict, seq: int,
               last_ts: int) -> Optional[WalkResult]:
    """The numpy walk of one piece (the reference); None: 'use the scalar walk'."""
    nbytes = len(buf) & ~7
    if nbytes != len(buf):
        return None
    w = np.frombuffer(buf, dtype="<u8")
    if len(w) == 0:
        return WalkResult([], 0, 0, seq, last_ts, None)
    parts = []
    malformed = 0
    base = 0
    n = len(w)
    while True:
        run = _uniform(w, base)
        if run is not None:
            parts.append(run)
            base = int(run[-1]) + int((w[run[-1]] >> np.uint64(16)) & np.uint64(0xFFF8)) // 8
            if base >= n:
                break
            continue
        # the window must hold at least the first record, or nothing would progress
        first_words = int((w[base] >> np.uint64(16)) & np.uint64(0xFFF8)) >> 3
        starts, stop = chain(w[base:], max(WINDOW, first_words + 1))
        parts.append(starts + base)
        if stop is None:
            break
        stop += base
        if stop >= len(w):
            break
        hdr0 = int(w[stop])
        sz = (hdr0 >> 16) & 0xFFF8
        if sz < abi.REC_HEADER_SIZE and not ((hdr0 & 0xFFFF) == PAD and sz >= 8):
            malformed += 1         # a size that cannot be: the rest of the piece is lost
            break
        if stop * 8 + sz > nbytes:
            malformed += 1         # runs past the committed data
            break
        if stop <= base:
            malformed += 1         # cannot happen: never loop without progress
            break
        base = stop                # the record straddles the window: continue from it
    starts = np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(starts) == 0:
        return WalkResult([], malformed, 0, seq, last_ts, None)
    hdr = w[starts]
    h16 = hdr.view(np.uint16)              # no copies: strided views of the headers
    eid = h16[0::4]
    size = h16[1::4] & np.uint16(0xFFF8)
    # padding may only end the piece
    pad = eid == PAD
    if pad.any():
        if pad[:-1].any():
            malformed += int(pad[:-1].sum())
        keep = ~pad
        starts, hdr = starts[keep], hdr[keep]
        h16 = hdr.view(np.uint16)
        eid, size = h16[0::4], h16[1::4] & np.uint16(0xFFF8)
        if len(starts) == 0:
            return WalkResult([], malformed, 0, seq, last_ts, None)
    want = sizes[eid]                       # a 65536-entry table: -2 beyond max_events
    if (want == -1).any():
        return None                 # an event the table has not loaded yet: refresh first
    ts_ok = w[starts + 1] <= np.uint64(abi.MAX_TS)
    ok = (want > 0) & (want == size) & ts_ok
    var = want == 0
    if var.any():
        ok |= var & ts_ok & _var_ok(buf, starts * 8, size.astype(np.int64), eid, var, codecs)
    nbad = int((~ok).sum())
    malformed += nbad
    if nbad:
        starts, hdr, eid, size = starts[ok], hdr[ok], eid[ok], size[ok].astype(np.int64)
        if len(starts) == 0:
            return WalkResult([], malformed, 0, seq, last_ts, None)
    # sequence numbers: gaps are losses; anything going backwards is left to the scalar walk
    sq = hdr.view(np.uint32)[1::2].astype(np.int64)
    prev = np.empty_like(sq)
    prev[0] = seq & 0xFFFFFFFF
    prev[1:] = (sq[:-1] + 1) & 0xFFFFFFFF
    gap = (sq - prev) & 0xFFFFFFFF
    if (gap >= 0x80000000).any():
        return None
    # timestamps: clamp to stay monotonic, writing the fix into the copy
    ts = w[starts + 1]
    mono = np.maximum.accumulate(np.maximum(ts, np.uint64(last_ts)))
    fix = mono != ts
    clamped = int(fix.sum())
    if clamped:
        wr = np.frombuffer(buf, dtype="<u8")
        wr[starts[fix] + 1] = mono[fix]
    # runs: consecutive good records, split where a bad record was dropped or a loss sits
    bstart = starts * 8
    bend = bstart + size.astype(np.int64)
    brk = np.flatnonzero((bstart[1:] != bend[:-1]) | (gap[1:] != 0)) + 1
    edges = np.concatenate([[0], brk, [len(starts)]])
    runs = []
    for a, b in zip(edges[:-1], edges[1:]):
        runs.append(Run(int(bstart[a]), int(bend[b - 1]), int(b - a), int(gap[a]),
                        int(mono[a]), int(mono[b - 1]), int(bstart[b - 1])))
    total_gap = int(gap.sum())
    next_seq = seq + total_gap + len(starts)
    per = np.bincount(eid)
    return WalkResult(runs, malformed, clamped, next_seq, int(mono[-1]), per)


def _var_ok(buf, off0, size, eid, var, codecs) -> np.ndarray:
    """Check string/bytes lengths of variable-size records, one event type at a time."""
    b = np.frombuffer(buf, dtype=np.uint8)
    nb = len(b)
    ok = np.zeros(len(off0), dtype=bool)
    for e in np.unique(eid[var]):
        idx = np.flatnonzero(eid == e)
        c = codecs.get(int(e))
        if c is None:
            continue
        start = off0[idx]
        end = start + size[idx]
        off = start + abi.REC_HEADER_SIZE
        good = np.ones(len(idx), dtype=bool)
        for kind, st in c.steps:
            if kind == "fixed":
                off = off + st.size
                continue
            good &= off + 2 <= end
            o = np.minimum(off, nb - 2)
            ln = b[o].astype(np.int64) | (b[o + 1].astype(np.int64) << 8)
            good &= ln <= abi.STR_MAX
            off = off + 2 + ln
            good &= off <= end
        good &= ((off - start + 7) & ~7) == size[idx]
        ok[idx] = good
    return ok
