"""Reads one ring: copy committed bytes out, then validate every record before use.

The guest can write anything, at any time, into its region. Nothing is decoded
from shared memory in place: committed bytes are copied first, then walked with
every size, id, length, sequence number and timestamp checked. Bad records are
counted and skipped; valid ones are appended to the stream's packet buffer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from .. import abi
from . import walk as vwalk
from .probes import probe_text

_HDR = abi.REC_HEADER
_Q = struct.Struct("<Q")
PACKET_TARGET = 256 * 1024
VECTOR_MIN = 2048          # pieces at least this large take the numpy walk


@dataclass
class StreamStats:
    recorded: int = 0
    discarded: int = 0       # sequence gaps and trailing drops: events the producer lost
    malformed: int = 0       # records rejected by validation
    torn: int = 0            # a record left half-written by a producer that died
    clamped: int = 0         # timestamps raised to keep the stream monotonic
    emitted: int = 0         # the producer's own count, at the end
    unwritten: int = 0       # validated, but their packet could not be written (full disk)
    first_ts: Optional[int] = None
    last_ts: Optional[int] = None
    per_event: Dict[int, int] = field(default_factory=dict)


def count_records(r: RingReader, content) -> int:
    """A packet that will not reach the stream file: move its records from `recorded`
    (and the per-event counts) to `unwritten`, so the index counts what the file holds.
    The content holds only records the reader validated: their sizes can be trusted."""
    st = r.stats
    n, off, end = 0, 0, len(content)
    per = st.per_event
    while off + abi.REC_HEADER_SIZE <= end:
        eid, sf = struct.unpack_from("<HH", content, off)
        size = sf & 0xFFF8
        if size < abi.REC_HEADER_SIZE:
            break
        if eid != abi.PAD_ID:
            n += 1
            # the vectorised walk adds a piece's per-event counts after the packets it
            # closed were sunk: the count may go below 0 until it does, never after
            per[eid] = per.get(eid, 0) - 1
        off += size
    st.recorded -= n
    st.unwritten += n
    return n


def packet_parts(content, limit: int) -> Iterator[Tuple[int, int, int, int, int]]:
    """Cut validated records into consecutive parts of about `limit` bytes at record
    boundaries: (start, end, last_rec, first_ts, last_ts) each. For a packet the disk
    cannot take whole, so the parts that fit are kept (sizes and stamps can be trusted:
    the reader validated and clamped them)."""
    off, end = 0, len(content)
    start = last = 0
    while off + abi.REC_HEADER_SIZE <= end:
        size = struct.unpack_from("<HH", content, off)[1] & 0xFFF8
        if size < abi.REC_HEADER_SIZE or off + size > end:
            break
        last = off
        off += size
        if off - start >= limit or off + abi.REC_HEADER_SIZE > end:
            yield (start, off, last, _HDR.unpack_from(content, start)[3],
                   _HDR.unpack_from(content, last)[3])
            start = off


class EventTable:
    """The host's copy of a region's declarations: parsed once, then trusted.

    Slots may fill out of order (a producer skips a slot another one is stopped in
    the middle of writing, docs/abi.md §3), so every refresh looks at every slot's
    state word, in one vector operation, and parses only the slots that became
    valid since: linear in the declarations, whatever their number. A name's first
    accepted declaration defines it; a later identical one (two producers that
    raced) is the same event under a second id, a later different one is rejected.
    """

    def __init__(self, region):
        self.region = region
        self.decls: Dict[int, abi.EventDecl] = {}
        self.codecs: Dict[int, abi.Codec] = {}
        self.bad: Dict[int, str] = {}
        self.by_name: Dict[str, int] = {}        # name -> the id that defined it
        # per id: fixed record size, 0 for variable-size events, -1 unknown
        self.sizes: List[int] = [-1] * region.layout.max_events
        # the vector walk's lookup table, indexed by any u16 id: -2 beyond max_events
        self.np_sizes = np.full(1 << 16, -2, dtype=np.int32)
        self.np_sizes[:region.layout.max_events] = -1
        self.parsed = np.zeros(region.layout.max_events, dtype=bool)   # accepted or bad
        self.changed = False
        self._layout: Optional[bytes] = None    # the C walk's view of the codecs
        self._names: Optional[List[bytes]] = None   # the probes' names, by event id
        #: called with (id, declaration) for each accepted declaration (the probes)
        self.on_declare: Optional[Callable] = None

    def var_layout(self) -> bytes:
        """The payload layouts of the codecs for the C walk (walk.var_layout), rebuilt
        only after a declaration was accepted."""
        if self._layout is None:
            self._layout = vwalk.var_layout(self.codecs)
        return self._layout

    def probe_names(self) -> List[bytes]:
        """Event names indexed by id, as the USDT probes take them (b"" for no event),
        rebuilt only after a declaration was accepted."""
        if self._names is None:
            names = [b""] * (max(self.decls, default=-1) + 1)
            for i, d in self.decls.items():
                names[i] = probe_text(d.name)
            self._names = names
        return self._names

    def refresh(self) -> None:
        """Parse every declaration that became valid since the last call."""
        lay = self.region.layout
        words = np.frombuffer(self.region.mm, dtype="<u4", offset=lay.decl_off,
                              count=lay.max_events * abi.DECL_SLOT // 4)
        states = words[abi.DECL_STATE // 4::abi.DECL_SLOT // 4].copy()
        del words                       # no export of the mapping left behind
        for i in np.flatnonzero((states == abi.DECL_VALID) & ~self.parsed).tolist():
            self._parse(i)

    def refresh_slot(self, i: int) -> None:
        """Parse slot i if it became valid (a record names an id not seen yet)."""
        if 0 <= i < len(self.parsed) and not self.parsed[i]:
            self._parse(i)

    def _parse(self, i: int) -> None:
        try:
            d = self.region.declaration(i)
        except ValueError as e:
            self.bad[i] = str(e)
            self.parsed[i] = True
            return
        if d is None:
            return                      # emptied again since the scan
        self.parsed[i] = True
        first = self.by_name.get(d.name)
        if first is not None and self.decls[first].signature != d.signature:
            self.bad[i] = "event %s already declared as %s" % (d.name,
                                                              self.decls[first].signature)
            return
        if first is None:
            self.by_name[d.name] = i
        c = abi.Codec(d)
        self.decls[i], self.codecs[i] = d, c
        self._layout = self._names = None
        self.sizes[i] = self.np_sizes[i] = c.fixed_size or 0
        self.changed = True
        if self.on_declare is not None:
            self.on_declare(i, d)


class RingReader:
    """Host-side state of one claim of one ring (one producer thread = one stream)."""

    def __init__(self, region, events: EventTable, index: int, generation: int,
                 identity: dict, sink: Callable):
        self.region = region
        self.mm = region.mm
        self.lay = region.layout
        self.events = events
        self.index = index
        self.generation = generation
        self.identity = identity
        self.domain = None       # the CTF domain (stream class) its stream belongs to
        self.desc = self.lay.desc(index)
        self.base = self.lay.data(index)
        self.consumed = 0        # read up to here (our own copy: the guest could scribble on
                                 # the shared one)
        # published to the producer as D_CONSUMED: only what is written to the trace, so
        # a collector killed with records in its buffers leaves them in the ring, where
        # `hypertrace recover` finds them
        self.published = 0
        self.piece_pos = 0       # ring position of the piece being walked
        self.buf_end_pos: Optional[int] = None   # ring position after the last buffered run
        self.seq = 0             # next expected sequence number (64-bit)
        self.stats = StreamStats()
        self.sink = sink         # sink(reader, content, ts_begin, ts_end, discarded_total)
        self.buf = bytearray()
        #: called with each run of validated records as it is taken (triggers): sooner
        #: than packets, which are written when full or once a second
        self.watch: Optional[Callable[[bytes], None]] = None
        #: the collector's USDT probes (host/probes.py): shown each run, and each loss
        self.probes = None
        self.pkt_begin: Optional[int] = None
        self.pkt_end = 0
        self.last_rec = 0
        self.overwrite = region.header.mode == abi.MODE_OVERWRITE

    # -- draining ------------------------------------------------------------
    def drain(self) -> int:
        """Copy and validate everything committed since the last call; returns records."""
        st = self.stats
        lost = st.discarded, st.malformed
        n = self._drain()
        if (st.discarded, st.malformed) != lost:
            self._lost(st.discarded - lost[0], "discarded")
            self._lost(st.malformed - lost[1], "malformed")
        return n

    def _lost(self, n: int, kind: str) -> None:
        if self.probes is not None:
            self.probes.lost(self.domain.name, self.index, self.identity.get("tid", -1), n,
                             kind)

    def _taken(self, mv, a: int, b: int) -> None:
        """A run of validated records, mv[a:b], was taken: shown to the probes, and to
        the triggers' watch (a copy: it may keep it)."""
        if self.probes is not None:
            self.probes.events(self, mv[a:b])
        if self.watch is not None:
            self.watch(bytes(mv[a:b]))

    def _drain(self) -> int:
        size = self.lay.ring_size
        wd = self.region.words
        commit = wd.u64(self.desc + abi.D_COMMIT)
        first = wd.u64(self.desc + abi.D_FIRST)
        start = self.consumed
        if commit == start:
            return 0
        if self.overwrite:
            start = max(start, commit - size, first if first <= commit else commit)
        if commit < start or commit - start > size:
            # nonsense positions: skip to the producer's commit, counting the damage
            self.stats.malformed += 1
            self._set_consumed(max(commit, self.consumed))
            return 0
        data = self._copy(start, commit)
        for _ in range(8):
            if not self.overwrite:
                break
            # bytes below the producer's `first` may have been overwritten while we
            # copied them: retry from the new `first` (a record boundary)
            first2 = wd.u64(self.desc + abi.D_FIRST)
            if first2 <= start:
                break
            start = min(first2, commit)
            data = self._copy(start, commit)
        else:
            if self.overwrite:
                data = []      # the producer kept lapping us: take nothing this time
        n = 0
        for pos, piece in data:
            self.piece_pos = pos
            n += self._walk_fast(piece) if len(piece) >= VECTOR_MIN else self._walk(piece)
        if self.buf and not self.overwrite and \
                commit - self.published >= self.lay.ring_size // 2:
            self._close_packet()     # write early: unwritten data holds the producer's room
        self._set_consumed(commit)
        return n

    def _walk_fast(self, buf) -> int:
        ev = self.events
        st = self.stats
        last = st.last_ts if st.last_ts is not None else 0
        res = vwalk.walk(buf, ev.np_sizes, ev.codecs, self.seq, last, ev.var_layout())
        if res is None:
            ev.refresh()
            res = vwalk.walk(buf, ev.np_sizes, ev.codecs, self.seq, last, ev.var_layout(),
                             strict=True)
            if res is None:
                return self._walk(buf)   # odd input: the scalar walk handles every case
        st.malformed += res.malformed
        st.clamped += res.clamped
        total = 0
        mv = memoryview(buf)
        for r in res.runs:
            if r.gap_before:
                self._close_packet()
                st.discarded += r.gap_before
            if self.pkt_begin is None:
                self.pkt_begin = r.first_ts
            if st.first_ts is None:
                st.first_ts = r.first_ts
            # a packet's worth of records in the piece itself (a drain of a full ring
            # is one run of megabytes) is written from the piece: copying it into the
            # packet buffer first would only cost time
            direct = not self.buf and r.end - r.start >= PACKET_TARGET
            if not direct:
                self.last_rec = len(self.buf) + r.last_rec - r.start
                self.buf += mv[r.start:r.end]
            self.buf_end_pos = self.piece_pos + r.end
            self._taken(mv, r.start, r.end)
            st.recorded += r.count
            total += r.count
            st.last_ts = self.pkt_end = r.last_ts
            if direct:
                self._packet(mv[r.start:r.end], r.last_rec - r.start)
            elif len(self.buf) >= PACKET_TARGET:
                self._close_packet()
        self.seq = res.next_seq
        pe = res.per_event
        if isinstance(pe, dict):            # the C walk's: only the ids it saw
            per = st.per_event
            for e, k in pe.items():
                per[e] = per.get(e, 0) + k
        elif pe is not None:
            per = st.per_event
            for e in np.flatnonzero(pe):
                per[int(e)] = per.get(int(e), 0) + int(pe[e])
        return total

    def _copy(self, start: int, end: int) -> list:
        """Copy [start, end) out of the ring in one or two pieces (split at the ring end)."""
        size, mask = self.lay.ring_size, self.lay.ring_size - 1
        a = start & mask
        n = end - start
        if n <= 0:
            return []
        b = self.base
        with memoryview(self.mm) as mv:   # one copy, straight out of the mapping
            if a + n <= size:
                return [(start, bytearray(mv[b + a:b + a + n]))]
            k = size - a
            return [(start, bytearray(mv[b + a:b + size])),
                    (start + k, bytearray(mv[b:b + n - k]))]

    def _set_consumed(self, pos: int) -> None:
        self.consumed = pos
        if self.overwrite or not self.buf:
            self._publish(pos)

    def _publish(self, pos: int) -> None:
        if pos > self.published or self.overwrite:
            self.published = pos
            self.region.words.set_u64(self.desc + abi.D_CONSUMED, pos)

    def _walk(self, buf) -> int:
        """Validate the records of one piece and append the good ones to the packet."""
        n = len(buf)
        off = 0
        st = self.stats
        sizes = self.events.sizes
        nsizes = len(sizes)
        per = st.per_event
        last_ts = st.last_ts if st.last_ts is not None else 0
        exp = self.seq
        run_start = 0          # start of the current run of accepted records
        count = 0              # records in the current run
        lastrec = 0
        total = 0
        unpack = _HDR.unpack_from
        while off < n:
            if n - off < abi.REC_HEADER_SIZE:
                # only padding that exactly fills the rest of the piece fits here
                if not (n - off >= 4 and buf[off] | buf[off + 1] << 8 == abi.PAD_ID
                        and (buf[off + 2] | buf[off + 3] << 8) & 0xFFF8 == n - off):
                    st.malformed += 1
                break
            eid, sf, seq, ts = unpack(buf, off)
            size = sf & 0xFFF8
            if eid == abi.PAD_ID:
                if size < abi.REC_ALIGN or off + size > n:
                    st.malformed += 1
                    break
                if off + size != n:
                    st.malformed += 1  # padding must fill the piece up to the ring end
                    total += self._emit_run(buf, run_start, off, count, last_ts, lastrec)
                    count = 0
                    off += size
                    run_start = off
                    continue
                break
            if size < abi.REC_HEADER_SIZE or off + size > n:
                st.malformed += 1      # cannot find the next record: give up this piece
                break
            want = sizes[eid] if eid < nsizes else -2
            if want == -1:
                self.events.refresh_slot(eid)
                want = sizes[eid]
            ok = want == size if want > 0 else (want == 0 and self._var_ok(eid, buf, off, size))
            gap = (seq - exp) & 0xFFFFFFFF
            if not ok or gap >= 0x80000000 or ts > abi.MAX_TS:   # bad, or seq went backwards
                st.malformed += 1
                total += self._emit_run(buf, run_start, off, count, last_ts, lastrec)
                count = 0
                off += size
                run_start = off
                continue
            if gap:
                # records were lost before this one: end the packet here to place the loss
                total += self._emit_run(buf, run_start, off, count, last_ts, lastrec)
                count = 0
                run_start = off
                self._close_packet()
                st.discarded += gap
                exp += gap
            if ts < last_ts:
                _Q.pack_into(buf, off + 8, last_ts)
                st.clamped += 1
                ts = last_ts
            if self.pkt_begin is None:
                self.pkt_begin = ts
            last_ts = ts
            lastrec = off
            exp += 1
            count += 1
            per[eid] = per.get(eid, 0) + 1
            off += size
        total += self._emit_run(buf, run_start, min(off, n), count, last_ts, lastrec)
        self.seq = exp
        return total

    def _var_ok(self, eid: int, buf, off: int, size: int) -> bool:
        try:
            _vals, end = self.events.codecs[eid].decode(buf, off + abi.REC_HEADER_SIZE, off + size)
        except (ValueError, KeyError):
            return False
        return abi.align(end - off, abi.REC_ALIGN) == size

    def _emit_run(self, buf, a: int, b: int, count: int, last_ts: int, lastrec: int) -> int:
        if count == 0:
            return 0
        st = self.stats
        self.last_rec = len(self.buf) + lastrec - a
        self.buf += memoryview(buf)[a:b]
        self.buf_end_pos = self.piece_pos + b
        self._taken(memoryview(buf), a, b)
        st.recorded += count
        if st.first_ts is None:
            st.first_ts = self.pkt_begin
        st.last_ts = self.pkt_end = last_ts
        if len(self.buf) >= PACKET_TARGET:
            self._close_packet()
        return count

    def _close_packet(self) -> None:
        if not self.buf:
            return
        self._packet(self.buf, self.last_rec)
        self.buf.clear()

    def _packet(self, content, last_rec: int) -> None:
        """Write `content` (validated records, the last one at `last_rec`) as a packet
        from pkt_begin to pkt_end, and publish the room it gave back."""
        # the sink writes the packet before returning: it gets the buffer itself, no copy
        self.sink(self, content, self.pkt_begin or 0, self.pkt_end, self.stats.discarded,
                  len(content) - self.payload_end(content, last_rec))
        self.pkt_begin = None
        if self.buf_end_pos is not None:
            self._publish(self.buf_end_pos)    # written: the producer may reuse it

    def payload_end(self, content, last_rec: int) -> int:
        """Where the payload of the record at `last_rec` ends: CTF readers expect a
        packet's content_size to end exactly there, not after the record's padding."""
        eid, sf = struct.unpack_from("<HH", content, last_rec)
        payload = last_rec + abi.REC_HEADER_SIZE
        rec_end = last_rec + (sf & 0xFFF8)
        return self.events.codecs[eid].decode(content, payload, rec_end)[1]

    def flush(self) -> None:
        self._close_packet()

    # -- the end of this claim --------------------------------------------------
    def finish(self, producer_gone: bool) -> None:
        """Final accounting once the producer released the ring or died, then drained."""
        st = self.stats
        commit = self.region.words.u64(self.desc + abi.D_COMMIT)
        emitted = self.region.words.u64(self.desc + abi.D_EMITTED)
        if producer_gone and commit == self.consumed:
            # a record written but never committed: count it, never decode it
            a = self.base + (commit & (self.lay.ring_size - 1))
            raw = bytes(self.mm[a:a + 16])
            if len(raw) == 16:
                eid, sf, seq, ts = _HDR.unpack(raw)
                sz = sf & 0xFFF8
                # an earlier claim of the ring left records there whose seq may be the
                # one expected (seq restarts at 0 per claim): a record of this claim is
                # no older than the claim and than the last record taken
                newest = max(self.identity.get("claim_ts", 0), st.last_ts or 0)
                if (seq == self.seq & 0xFFFFFFFF and eid < len(self.events.sizes)
                        and self.events.sizes[eid] >= 0 and sz >= 16 and ts >= newest):
                    st.torn += 1
                    self._lost(1, "torn")
        # the producer publishes `emitted` when it drops or releases, so it may lag
        # behind the records it committed since: take the larger, unless it is nonsense
        # (2^48 past what was seen: a hostile value must not reach the index, whose
        # readers accept counts below 2^63 only)
        sane = self.seq <= emitted < self.seq + (1 << 48)
        st.emitted = emitted if sane else self.seq
        self._close_packet()
        if sane and emitted > self.seq:
            st.discarded += emitted - self.seq   # dropped after the last recorded record
            self._lost(emitted - self.seq, "discarded")
            self.seq = emitted
            ts = st.last_ts if st.last_ts is not None else self.identity.get("claim_ts", 0)
            ts = ts if ts <= abi.MAX_TS else 0
            self.sink(self, b"", ts, ts, st.discarded, 0)  # an empty packet carries the count
