"""Columnar decoding of a session (numpy + pyarrow): the path every export reads.

Session.events() decodes one record at a time, which is simple and slow. Here a
stream file is read a few MiB of packets at a time; record boundaries are found
by checking every 8-byte word for a plausible header at once (a record walk in
Python only where that is ambiguous), each event type's fields are
gathered for all its records at once, and guest timestamps are mapped onto the
host timeline with array arithmetic. Streams are merged into time order in
bounded batches, so memory does not grow with the trace.

A session directory is input like any other: a record that does not fit its
declaration ends its stream with a warning (as in Session.stream_events).

The fields are gathered in C (native/gather.c, built as read/_gather) when it is
built and HYPERTRACE_PURE is "" or "0", else with numpy (`numpy_fields`, the
reference the C gather must agree with: tests/test_native_gather.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from .. import abi
from . import packets
from .ahead import ahead
from .session import MONO_LIMIT, UNC_LIMIT, Session

_native = None
if os.environ.get("HYPERTRACE_PURE", "") in ("", "0"):
    try:
        from . import _gather as _native  # type: ignore[no-redef]
    except ImportError:
        _native = None

CHUNK_BYTES = 1 << 20          # record bytes decoded per stream per step, at most
SPLIT_BYTES = 4 << 20          # packets with more content are read in pieces of records
BATCH_BUDGET = 8 << 20         # ... and across all streams (a batch is cut from these)
SPLIT_BUDGET = 64 << 20        # the pieces of every stream's current chunk together
CHUNK_MIN = 16 << 10           # per stream, however many streams
_NP = {"b": "i1", "B": "u1", "h": "<i2", "H": "<u2", "i": "<i4", "I": "<u4", "q": "<i8",
       "Q": "<u8", "f": "<f4", "d": "<f8", "?": "u1"}


@dataclass
class Kind:
    """One event type of one domain."""
    domain: str
    event_id: int
    codec: abi.Codec

    @property
    def name(self) -> str:
        return self.codec.decl.name


@dataclass
class Batch:
    """Events in host-timeline order. Row i is of kind `kind[i]`; its fields are row
    `pos[i]` of `fields[kind[i]]` (one pyarrow array per declared argument)."""
    ts: np.ndarray          # int64, ns on the host timeline
    raw_ts: np.ndarray      # uint64, the producer's clock
    unc: np.ndarray         # int64 ns, -1 where the domain's clock is exact
    stream: np.ndarray      # int32, index into Columns.streams
    kind: np.ndarray        # int32, index into Columns.kinds
    truncated: np.ndarray   # bool
    pos: np.ndarray         # int64
    fields: Dict[int, List[pa.Array]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts)


class Columns:
    """Batches of a session's events, decoded with array operations."""

    def __init__(self, session: Session, chunk_bytes: int = CHUNK_BYTES):
        self.s = session
        self.kinds: List[Kind] = []
        self._kind_ids: Dict[Tuple[str, int], int] = {}
        self.streams = [st for st in session.streams if st.get("file")]
        # each stream holds one chunk while the merge runs: bound their sum (its file's
        # window is dropped before the chunk goes out: only the decoded chunk stays)
        n = max(1, len(self.streams))
        self.chunk_bytes = min(chunk_bytes, max(CHUNK_MIN, BATCH_BUDGET // n))
        # larger packets are cut into pieces of records (a walk in Python): past a few
        # streams, sooner, so that the pieces held at once stay within SPLIT_BUDGET
        self.split_bytes = max(self.chunk_bytes, min(SPLIT_BYTES, SPLIT_BUDGET // n))
        self._bounds = {d: size_bounds(cs) for d, cs in session.codecs.items()}
        #: stream index -> [(raw time, events lost just before it)], filled while reading
        self.losses: Dict[int, List[Tuple[int, int]]] = {}
        self.warnings = session.warnings
        self.segments = {d: (np.array([[s.g_start, s.g_end, s.g0, s.offset_ns, s.drift_ppm,
                                        s.uncertainty_ns] for s in segs], dtype=np.float64)
                             if segs else None, off)
                         for d, (segs, off) in session.clock_params.items()}

    def kind_id(self, domain: str, eid: int) -> int:
        k = self._kind_ids.get((domain, eid))
        if k is None:
            k = self._kind_ids[(domain, eid)] = len(self.kinds)
            self.kinds.append(Kind(domain, eid, self.s.codecs[domain][eid]))
        return k

    # -- time ---------------------------------------------------------------------------
    def map_time(self, domain: str, raw: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Vectorised Session.to_host: (host ns int64, uncertainty ns int64 or -1)."""
        seg, off = self.segments[domain]
        # as Session._mapper: raw <= abi.MAX_TS and |off| < 2^62, so nothing overflows
        if seg is None:
            return (np.maximum(raw.astype(np.int64) + off, 0),
                    np.full(len(raw), -1, dtype=np.int64))
        g = raw.astype(np.float64)
        g_start, g_end, g0, offs, drift, unc = seg.T
        # the first segment whose g_end >= g (the scalar walk's rule), else the last
        i = np.minimum(np.searchsorted(g_end, g, side="left"), len(seg) - 1)
        host = g + offs[i] + drift[i] * 1e-6 * (g - g0[i])
        u = unc[i].copy()
        between = (g < g_start[i]) & (i > 0) & (g <= g_end[i])
        if between.any():
            j = i[between] - 1
            gb = g[between]
            a = gb + offs[j] + drift[j] * 1e-6 * (gb - g0[j])
            host[between] = (a + host[between]) / 2
            u[between] = np.abs(a - host[between]) + np.maximum(unc[j], unc[i[between]])
        host = np.clip(host, -MONO_LIMIT, MONO_LIMIT)
        return (np.maximum(np.rint(host).astype(np.int64) + off, 0),
                np.ceil(np.clip(u, 0, UNC_LIMIT)).astype(np.int64))

    # -- one stream -----------------------------------------------------------------------
    def _chunks(self, si: int) -> Iterator[np.ndarray]:
        """Record bytes of stream si, a few MiB at a time, each packet's content padded
        to 8 bytes (the file keeps only up to the last payload byte). The file is read
        in bounded pieces (Session.open_stream), whatever sizes its packets claim."""
        st = self.streams[si]
        f = self.s.open_stream(st, self.chunk_bytes)
        if f is None:
            return
        try:
            yield from self._packets(f, st["file"], self.losses.setdefault(si, []))
        finally:
            f.drop()

    def _packets(self, f, name: str, losses: list) -> Iterator[np.ndarray]:
        parts: List[bytes] = []
        have = 0
        lost = 0
        # a packet may claim any size: content beyond this is cut at record boundaries
        split = self.split_bytes
        try:
            for p in packets.packets_in(f):
                if p.discarded > lost:   # a running total: it grows where events were lost
                    losses.append((p.ts_begin, p.discarded - lost))
                    lost = p.discarded
                for a, b in _pieces(f, p.start, p.content_end, split):
                    buf, i = f.window(a, b - a)
                    content = buf[i:i + b - a]
                    buf = None
                    parts.append(content + bytes(-len(content) % 8))
                    have += len(parts[-1])
                    if have >= self.chunk_bytes:
                        # a suspended stream holds its decoded chunk only, not its window
                        f.drop()
                        data, content, parts, have = b"".join(parts), None, [], 0
                        yield np.frombuffer(data, dtype=np.uint8)
        except packets.PacketDamage as e:
            self.warnings.append("%s: %s" % (name, e))
        if parts:
            f.drop()
            data, parts = b"".join(parts), []
            yield np.frombuffer(data, dtype=np.uint8)

    def _decode(self, si: int, b: np.ndarray) -> Tuple[Optional[dict], bool]:
        """Decode one chunk of stream si: (columns, ok). ok=False: damage, stop the stream."""
        name = self.streams[si]["file"]
        dom = self.streams[si]["domain"]
        codecs = self.s.codecs[dom]
        w = b.view("<u8")
        starts, ok = record_starts(b, w, *self._bounds[dom])
        hdr = w[starts]
        h16 = hdr.view(np.uint16)
        eid = h16[0::4]
        size = (h16[1::4] & np.uint16(abi.REC_SIZE_MASK)).astype(np.int64)
        off = starts.astype(np.int64) * 8
        # a timestamp the collector would have refused (abi.MAX_TS) is damage too
        bad = (eid == abi.PAD_ID) | (w[starts + 1] > np.uint64(abi.MAX_TS))
        kinds = np.full(len(starts), -1, dtype=np.int32)
        ends = off + size
        bad |= ends > len(b)     # runs past the packet's content: the scalar reader stops too
        tables: Dict[int, List[pa.Array]] = {}
        for e in np.unique(eid):
            c = codecs.get(int(e))
            sel = np.flatnonzero(eid == e)
            if c is None:
                bad[sel] = True
                continue
            cols, good = _fields(b, off[sel], ends[sel], size[sel], c)
            if not good.all():
                bad[sel[~good]] = True
                cut = sel[~good][0]
                sel = sel[sel < cut]
                cols = [col.slice(0, len(sel)) for col in cols]
            kinds[sel] = k = self.kind_id(dom, int(e))
            tables[k] = cols
        if bad.any():
            first = int(np.argmax(bad))
            self.warnings.append("%s: undecodable record in a chunk at record %d" % (name, first))
            ok = False
            starts, hdr, kinds = starts[:first], hdr[:first], kinds[:first]
            for k in list(tables):
                n = int((kinds == k).sum())
                tables[k] = [col.slice(0, n) for col in tables[k]]
        elif not ok:
            self.warnings.append("%s: records do not end where the packet content does" % name)
        raw = w[starts + 1]
        ts, unc = self.map_time(dom, raw)
        trunc = (hdr.view(np.uint16)[1::4] & np.uint16(abi.REC_FLAG_TRUNCATED)) != 0
        return {"ts": ts, "raw": raw, "unc": unc, "kind": kinds, "trunc": trunc,
                "tables": tables}, ok

    def stream_chunks(self, si: int) -> Iterator[dict]:
        for b in self._chunks(si):
            cols, ok = self._decode(si, b)
            if len(cols["ts"]):
                yield cols
            if not ok:
                return

    # -- every stream, in time order --------------------------------------------------------
    def batches(self) -> Iterator[Batch]:
        """Every event of the session in host-timeline order, in batches of bounded size
        (decoded in a thread of their own, two batches ahead of the caller: read/ahead.py)."""
        return ahead(self._batches())

    def _batches(self) -> Iterator[Batch]:
        its = {si: self.stream_chunks(si) for si in range(len(self.streams))}
        cur: Dict[int, dict] = {}
        at: Dict[int, int] = {}

        def refill(si: int) -> None:
            c = next(its[si], None)
            if c is None:
                del its[si]
                cur.pop(si, None)
            else:
                cur[si], at[si] = c, 0
        for si in list(its):
            refill(si)
        while cur:
            # everything up to the earliest of the streams' last loaded times can go out
            horizon = min(int(c["ts"][-1]) for c in cur.values())
            pieces = []
            for si in sorted(cur):
                c, a = cur[si], at[si]
                b = a + int(np.searchsorted(c["ts"][a:], horizon, side="right"))
                if b > a:
                    pieces.append((si, c, a, b))
                at[si] = b
            if not pieces:
                # times that go back inside a chunk (a damaged or crafted stream file):
                # the search found nothing to hand out; the stream whose next time is the
                # earliest gives its whole chunk, so that every pass makes progress
                si = min(cur, key=lambda s: int(cur[s]["ts"][at[s]]))
                pieces.append((si, cur[si], at[si], len(cur[si]["ts"])))
                at[si] = len(cur[si]["ts"])
            yield _merge(pieces)
            for si in [si for si in cur if at[si] >= len(cur[si]["ts"])]:
                refill(si)


def size_bounds(codecs: Dict[int, abi.Codec], into: Optional[Tuple[np.ndarray, np.ndarray]]
                = None, ids=None) -> Tuple[np.ndarray, np.ndarray]:
    """Smallest and largest record size of each event id (0 and -1 for unknown ids);
    with `into` and `ids`, only those ids are filled in (the others stay as they are)."""
    lo, hi = into if into is not None else (np.zeros(65536, dtype=np.int32),
                                            np.full(65536, -1, dtype=np.int32))
    for e in (codecs if ids is None else ids):
        c = codecs.get(e)
        if c is None:
            continue
        fixed = sum(st.size for k, st in c.steps if k == "fixed")  # type: ignore[union-attr]
        nvar = sum(1 for k, _ in c.steps if k != "fixed")
        lo[e] = abi.align(abi.REC_HEADER_SIZE + fixed + 2 * nvar, abi.REC_ALIGN)
        hi[e] = abi.align(abi.REC_HEADER_SIZE + fixed + (2 + abi.STR_MAX) * nvar, abi.REC_ALIGN)
    return lo, hi


def record_starts(b: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray
                   ) -> Tuple[np.ndarray, bool]:
    """Word indices of the records in b, and whether they end exactly at its end.

    Every word whose header is plausible (a declared id, a size its declaration
    allows) is a candidate; if the candidates chain one to the next and end at
    the end, they are the records. Otherwise (payload bytes that look like a
    header, or damage) walk the sizes one record at a time."""
    if _native is not None:
        # the C walk of the size chain: what both paths below compute
        out, ok = _native.starts(b)
        return np.frombuffer(out, dtype=np.int64), ok
    h16 = w.view(np.uint16)
    sz = (h16[1::4] & np.uint16(abi.REC_SIZE_MASK)).astype(np.int32)
    eid = h16[0::4]
    cand = np.flatnonzero((sz >= lo[eid]) & (sz <= hi[eid]) & (sz >= abi.REC_HEADER_SIZE))
    nw = cand + (sz[cand] >> 3)
    if len(cand) and cand[0] == 0 and nw[-1] == len(w) and (nw[:-1] == cand[1:]).all():
        return cand, True
    view = memoryview(b).cast("H")
    n = len(b)
    out = []
    off = 0
    while off + abi.REC_HEADER_SIZE <= n:
        size = view[(off >> 1) + 1] & abi.REC_SIZE_MASK
        if size < abi.REC_HEADER_SIZE:
            break
        out.append(off >> 3)
        off += size
    return np.array(out, dtype=np.int64), off == n


def _pieces(f, start: int, cend: int, most: int) -> Iterator[Tuple[int, int]]:
    """[a, b) ranges of a packet's content of at most about `most` bytes each, cut at
    record boundaries (a walk of the record sizes: only for packets larger than
    `most`, which the collector writes only with very large rings). A size that
    breaks the walk ends the piece there; the decoder then finds the damage."""
    if cend - start <= most:
        yield start, cend
        return
    H = abi.REC_HEADER_SIZE
    a = off = start
    while off + H <= cend:
        buf, i = f.window(off, H)
        if len(buf) - i < 4:
            yield a, min(cend, off + H)
            return
        size = int.from_bytes(buf[i + 2:i + 4], "little") & abi.REC_SIZE_MASK
        buf = None                  # not held while this generator is suspended
        if size < H:
            # damage: the decoder stops at this record, the rest is never read
            yield a, min(cend, off + H)
            return
        if off + size - a > most and off > a:
            yield a, off
            a = off
        off += size
    yield a, cend


def _merge(pieces) -> Batch:
    cat = {k: np.concatenate([c[k][a:b] for _, c, a, b in pieces])
           for k in ("ts", "raw", "unc", "kind", "trunc")}
    stream = np.concatenate([np.full(b - a, si, dtype=np.int32) for si, _, a, b in pieces])
    order = np.argsort(cat["ts"], kind="stable")
    kind = cat["kind"][order]
    pos = np.empty(len(order), dtype=np.int64)
    fields: Dict[int, List[pa.Array]] = {}
    for k in np.unique(kind):
        k = int(k)
        parts = []             # this kind's rows in concatenation order, piece by piece
        for _, c, a, b in pieces:
            ks = c["kind"]
            lo, hi = int((ks[:a] == k).sum()), int((ks[:b] == k).sum())
            if hi > lo:
                parts.append([col.slice(lo, hi - lo) for col in c["tables"][k]])
        in_cat = np.flatnonzero(cat["kind"] == k)
        rank = np.empty(len(cat["kind"]), dtype=np.int64)
        rank[in_cat] = np.arange(len(in_cat))
        sel = np.flatnonzero(kind == k)
        take = pa.array(rank[order[sel]])
        ncols = len(parts[0])
        fields[k] = [pa.concat_arrays([p[i] for p in parts]).take(take) for i in range(ncols)]
        pos[sel] = np.arange(len(sel))
    return Batch(cat["ts"][order], cat["raw"][order], cat["unc"][order], stream[order], kind,
                 cat["trunc"][order], pos, fields)


def _fields(b: np.ndarray, off: np.ndarray, end: np.ndarray, size: np.ndarray,
            c: abi.Codec) -> Tuple[List[pa.Array], np.ndarray]:
    """The fields of the records of one event type at byte offsets `off`: one pyarrow
    array per argument, and which records fit their declaration."""
    if _native is None:
        return numpy_fields(b, off, end, size, c)
    steps = tuple(st.size if kind == "fixed" else -1 for kind, st in c.steps)  # type: ignore
    good, outs = _native.fields(b, np.ascontiguousarray(off, dtype=np.int64),
                                np.ascontiguousarray(end, dtype=np.int64),
                                np.ascontiguousarray(size, dtype=np.int64), steps)
    n = len(off)
    cols: List[pa.Array] = []
    for (kind, st), out in zip(c.steps, outs):
        if kind == "fixed":
            _fixed_columns(np.frombuffer(out, dtype=np.uint8).reshape(n, st.size),  # type: ignore
                           st.format[1:], cols)  # type: ignore[union-attr]
        else:
            cols.append(_var_column(kind, n, out[0], out[1]))
    return cols, np.frombuffer(good, dtype=bool)


def _fixed_columns(raw: np.ndarray, codes: str, cols: List[pa.Array]) -> None:
    """Split an (n, width) byte matrix of one fixed run into its fields' arrays."""
    o = 0
    for code in codes:
        dt = np.dtype(_NP[code])
        v = raw[:, o:o + dt.itemsize].copy().view(dt).ravel()
        if code == "?":
            v = v != 0
        elif code == "f":
            v = v.astype(np.float64)
        cols.append(pa.array(v))
        o += dt.itemsize


def _var_column(kind: str, n: int, offsets: bytes, data: bytes) -> pa.Array:
    bufs = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    if kind == "bytes":
        return pa.Array.from_buffers(pa.binary(), n, bufs)
    arr = pa.Array.from_buffers(pa.string(), n, bufs)
    try:
        arr.validate(full=True)
    except pa.ArrowInvalid:        # invalid UTF-8: as the scalar decoder does
        arr = pa.array([bytes(x).decode("utf-8", "replace")
                        for x in pa.Array.from_buffers(pa.binary(), n, bufs)
                        .to_pylist()], pa.string())
    return arr


def numpy_fields(b: np.ndarray, off: np.ndarray, end: np.ndarray, size: np.ndarray,
                 c: abi.Codec) -> Tuple[List[pa.Array], np.ndarray]:
    """_fields with numpy: the reference."""
    n = len(off)
    good = np.ones(n, dtype=bool)
    p = off + abi.REC_HEADER_SIZE
    cols: List[pa.Array] = []
    for kind, st in c.steps:
        if kind == "fixed":
            width = st.size  # type: ignore[union-attr]
            good &= p + width <= end
            idx = np.minimum(p, len(b) - width)[:, None] + np.arange(width)
            _fixed_columns(np.ascontiguousarray(b[idx]), st.format[1:], cols)  # type: ignore
            p = p + width
            continue
        q = np.minimum(p, len(b) - 2)
        ln = b[q].astype(np.int64) | (b[q + 1].astype(np.int64) << 8)
        # within the record and within the bytes at hand (a crafted size may reach past
        # the chunk: the record is bad, never an index past the buffer)
        good &= (p + 2 <= end) & (ln <= abi.STR_MAX) & (p + 2 + ln <= end) & \
            (p + 2 + ln <= len(b))
        ln = np.where(good, ln, 0)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(ln, out=offsets[1:])
        total = int(offsets[-1])
        src = np.repeat(p + 2 - offsets[:-1], ln) + np.arange(total)
        cols.append(_var_column(kind, n, offsets.tobytes(), b[src].tobytes()))
        p = p + 2 + ln
    good &= ((p - off + 7) & ~7) == size
    return cols, good
