"""Perfetto protobuf trace (ui.perfetto.dev, trace_processor), written streaming with
the `perfetto` package's protos.

Tracks: a process per domain (each guest, the host, QEMU), a thread per stream
(producer), and a counter track per numeric field of events declared `counter`.
Events are track events on the host timeline: instants with their fields as
debug annotations, slice edges (analysis/spans.py: `X_begin`/`X_end`, guest.span,
traced functions) as slice begin/end, an asyncio task's spans on a track of its
own, counter values, and
each sync point as a flow from the guest's record to the host's. Event and
argument names are interned on one packet sequence.

Most events are encoded in bulk (formats/protobulk.py: a batch's instants and
counter values of one event type at once, ~20x cheaper than a message each);
slice edges and sync points, which need per-event state, are messages of the
`perfetto` package's protos, reused per event type.
"""

from __future__ import annotations

from typing import BinaryIO, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from ..analysis.spans import Edge, Edges
from ..read.columns import Columns, Kind
from ..read.events import SYNC_GUEST, SYNC_HOST
from . import protobulk as pbk
from .output import binary_out

SUFFIX = ".pftrace"
SEQ = 1                    # trusted_packet_sequence_id of every packet
_NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
_CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
MAX_OPEN_SPANS = 1 << 20   # guest.span begins remembered for an end on another thread
MAX_OPEN = 1 << 20         # open slices in all (begins past it are written as instants)
SEARCH = 256               # how far below a track's newest open slice an end looks


def _value_attr(kind: str, signed: bool, hexa: bool) -> str:
    if kind == "int":
        return "pointer_value" if hexa else ("int_value" if signed else "uint_value")
    return {"bool": "bool_value", "float": "double_value"}.get(kind, "string_value")


class _Reusable:
    """One packet of one event type, kept in a one-packet Trace: each event sets its
    timestamp, track and values and serializes the Trace again. The bytes of Trace
    messages concatenate into one Trace, and this is ~3x cheaper than a new message
    per event (the per-event path: slice edges, sync points)."""

    def __init__(self, packet: pb.TracePacket):
        self.trace = pb.Trace()
        self.p = self.trace.packet.add()
        self.p.CopyFrom(packet)
        self.te = self.p.track_event
        self.anns = list(self.te.debug_annotations)
        self.serialize = self.trace.SerializeToString


# field numbers, from the protos' descriptors
_F_PACKET = pbk.number(pb.Trace, "packet")
_F_TS = pbk.number(pb.TracePacket, "timestamp")
_F_TE = pbk.number(pb.TracePacket, "track_event")
_F_SEQ = pbk.number(pb.TracePacket, "trusted_packet_sequence_id")
_F_FLAGS = pbk.number(pb.TracePacket, "sequence_flags")
_F_TYPE = pbk.number(pb.TrackEvent, "type")
_F_TRACK = pbk.number(pb.TrackEvent, "track_uuid")
_F_NAME = pbk.number(pb.TrackEvent, "name_iid")
_F_ANN = pbk.number(pb.TrackEvent, "debug_annotations")
_F_COUNT = pbk.number(pb.TrackEvent, "counter_value")
_F_DCOUNT = pbk.number(pb.TrackEvent, "double_counter_value")
_F_ANN_NAME = pbk.number(pb.DebugAnnotation, "name_iid")
_TS_TAG = pbk.tag(_F_TS, pbk.VARINT)
_SEQ_TAIL = pbk.tag(_F_SEQ, pbk.VARINT) + pbk.varint_bytes(SEQ)
_EVENT_TAIL = _SEQ_TAIL + pbk.tag(_F_FLAGS, pbk.VARINT) + pbk.varint_bytes(_NEEDS)


def _value(m: pbk.Message, attr: str, col: pa.Array, hexed: bool) -> None:
    """Add a debug annotation's value field, for all rows of `col`."""
    f = pbk.number(pb.DebugAnnotation, attr)
    if attr == "double_value":
        m.add(pbk.tag(f, pbk.FIXED64), pbk.fixed64(col.to_numpy().astype(np.float64)))
    elif attr == "string_value":
        m.text(f, pbk.binary(col, as_hex=hexed))
    else:
        v = col.to_numpy(zero_copy_only=False)
        v = v.astype(np.int64) if attr == "int_value" else v.astype(np.uint64)
        m.add(pbk.tag(f, pbk.VARINT), pbk.varints(v))


class _Writer:
    def __init__(self, c: Columns, out):
        self.c, self.out = c, out
        self.chunks: List[bytes] = []
        self.names: Dict[str, int] = {}          # interned event names
        self.args: Dict[str, int] = {}           # interned debug annotation names
        self.interned = self._sequence_packet(_NEEDS)   # names not written yet
        self.kinds: Dict[int, tuple] = {}
        self.templates: Dict[int, tuple] = {}
        self.counters: Dict[Tuple[int, int], Tuple[int, _Reusable]] = {}
        self.flows: Dict[Tuple[str, int], int] = {}
        self.edges = Edges(c)
        self.task_tracks: Dict[Tuple[int, int], int] = {}
        # track -> its open slices, oldest first: (name, guest.span key or None)
        self.open: Dict[int, List[tuple]] = {}
        self.n_open = 0
        self.span_track: Dict[tuple, int] = {}       # (domain, pid, span id) -> its track
        self.next_uuid = 1
        self.domain_uuid: Dict[str, int] = {}
        self.stream_uuid: List[int] = []
        self.track_varints = None

    def uuid(self) -> int:
        self.next_uuid += 1
        return self.next_uuid

    @staticmethod
    def _sequence_packet(flags: int) -> pb.TracePacket:
        p = pb.TracePacket()
        p.trusted_packet_sequence_id = SEQ
        p.sequence_flags = flags
        return p

    def emit(self, packet: pb.TracePacket) -> None:
        t = pb.Trace()
        t.packet.append(packet)
        self.chunks.append(t.SerializeToString())

    def flush(self) -> None:
        """Write what is pending: track descriptors, then the names interned since the
        last flush (before the events that use them: interning is in file order)."""
        if self.interned.HasField("interned_data"):
            self.emit(self.interned)
            self.interned = self._sequence_packet(_NEEDS)
        self.out.write(b"".join(self.chunks))
        self.chunks = []

    def tracks(self) -> None:
        # the sequence starts here: its interned names are valid from this packet on
        self.emit(self._sequence_packet(_CLEARED))
        for i, d in enumerate(self.c.s.domains, 1):
            u = self.domain_uuid[d] = self.uuid()
            p = pb.TracePacket()
            p.track_descriptor.uuid = u
            p.track_descriptor.process.pid = i
            p.track_descriptor.process.process_name = d
            self.emit(p)
        pids = {d: i for i, d in enumerate(self.c.s.domains, 1)}
        # tids after the pids: a tid equal to some pid would make trace_processor take
        # the stream for that process's main thread (and add a thread to the process)
        for j, st in enumerate(self.c.streams, len(pids) + 1):
            u = self.uuid()
            self.stream_uuid.append(u)
            p = pb.TracePacket()
            td = p.track_descriptor
            td.uuid = u
            td.parent_uuid = self.domain_uuid[st["domain"]]
            td.thread.pid = pids[st["domain"]]
            td.thread.tid = j
            td.thread.thread_name = "%s %s (pid %s tid %s)" % (
                st["file"], st.get("thread", ""), st.get("pid"), st.get("tid"))
            self.emit(p)
        self.track_varints = pbk.varints(np.array(self.stream_uuid or [0], dtype=np.uint64))

    def _intern(self, table: Dict[str, int], name: str, field: str) -> int:
        iid = table.get(name)
        if iid is None:
            iid = table[name] = len(table) + 1
            e = getattr(self.interned.interned_data, field).add()
            e.iid, e.name = iid, name
        return iid

    def kind(self, k: int) -> tuple:
        """(reusable packet, per field (annotation, attribute, as hex), sync, counter)
        of kind k, for the per-event path; the bulk path's constants are made with it."""
        t = self.kinds.get(k)
        if t is not None:
            return t
        kind = self.c.kinds[k]
        tpl = self._sequence_packet(_NEEDS)
        te = tpl.track_event
        te.type = pb.TrackEvent.TYPE_INSTANT
        te.name_iid = self._intern(self.names, kind.name, "event_names")
        attrs = []
        for a, _, ft in kind.codec.decl.fields:
            te.debug_annotations.add().name_iid = self._intern(
                self.args, a, "debug_annotation_names")
            attrs.append((_value_attr(ft.kind, ft.signed, ft.hex), ft.kind == "bytes"))
        self.templates[k] = (tpl, attrs)
        return self._fresh(k)

    def _fresh(self, k: int) -> tuple:
        tpl, attrs = self.templates[k]
        r = _Reusable(tpl)
        setters = [(ann, attr, hexed) for ann, (attr, hexed) in zip(r.anns, attrs)]
        name = self.c.kinds[k].name
        t = self.kinds[k] = (r, setters, name in (SYNC_GUEST, SYNC_HOST),
                             getattr(self.c.kinds[k].codec.decl, "counter", False))
        return t

    def counter(self, k: int, field: int, kind: Kind) -> Tuple[int, _Reusable]:
        """(track uuid, reusable packet) of the counter track of one numeric field."""
        r = self.counters.get((k, field))
        if r is None:
            u = self.uuid()
            p = pb.TracePacket()
            td = p.track_descriptor
            td.uuid = u
            td.parent_uuid = self.domain_uuid[kind.domain]
            td.name = "%s.%s" % (kind.name, kind.codec.decl.fields[field][0])
            td.counter.SetInParent()
            self.emit(p)
            p = pb.TracePacket()
            p.trusted_packet_sequence_id = SEQ
            p.track_event.type = pb.TrackEvent.TYPE_COUNTER
            p.track_event.track_uuid = u
            r = self.counters[(k, field)] = (u, _Reusable(p))
        return r

    def flow(self, domain: str, sync_id) -> int:
        key = (domain, int(sync_id or 0))
        f = self.flows.get(key)
        if f is None:
            f = self.flows[key] = len(self.flows) + 1
        return f

    # -- a batch ------------------------------------------------------------------------------
    def batch(self, b) -> None:
        edge_at = {e.row: e for e in self.edges.rows(b)}
        one_by_one = np.zeros(len(b), dtype=bool)
        if edge_at:
            one_by_one[np.fromiter(edge_at, dtype=np.int64, count=len(edge_at))] = True
        parts, where = [], []
        for k in np.unique(b.kind):
            k = int(k)
            sync = self.kind(k)[2]
            rows = np.flatnonzero(b.kind == k)
            if sync:
                one_by_one[rows] = True
                continue
            rows = rows[~one_by_one[rows]]
            if len(rows):
                parts.append(self.bulk(b, k, rows))
                where.append(rows)
        slow = np.flatnonzero(one_by_one)
        if len(slow):
            parts.append(pa.array(self.one_by_one(b, slow, edge_at), pa.binary()))
            where.append(slow)
        self.flush()
        if parts:
            order = np.argsort(np.concatenate(where), kind="stable")
            self.out.write(pbk.values_of(pa.concat_arrays(parts).take(pa.array(order))))

    def bulk(self, b, k: int, rows: np.ndarray) -> pa.Array:
        """The packets of rows (all of kind k, none an edge or a sync point): instants
        with their fields, and for a counter event its counter values after each."""
        kind = self.c.kinds[k]
        tpl, attrs = self.templates[k]
        pos = b.pos[rows]
        cols = b.fields[k]
        if len(cols) and not (len(pos) == len(cols[0]) and (pos == np.arange(len(pos))).all()):
            cols = [col.take(pa.array(pos)) for col in cols]
        te = pbk.Message().add(
            pbk.tag(_F_TYPE, pbk.VARINT) + pbk.varint_bytes(pb.TrackEvent.TYPE_INSTANT)
            + pbk.tag(_F_NAME, pbk.VARINT) + pbk.varint_bytes(tpl.track_event.name_iid)
            + pbk.tag(_F_TRACK, pbk.VARINT), pbk.take(self.track_varints, b.stream[rows]))
        for ann, (attr, hexed), col in zip(tpl.track_event.debug_annotations, attrs, cols):
            inner = pbk.Message().add(pbk.tag(_F_ANN_NAME, pbk.VARINT)
                                      + pbk.varint_bytes(ann.name_iid))
            _value(inner, attr, col, hexed)
            te.field(_F_ANN, inner)
        ts = pbk.varints(b.ts[rows])
        out = pbk.Message().field(_F_PACKET, pbk.Message().add(_TS_TAG, ts, _EVENT_TAIL)
                                  .field(_F_TE, te))
        if self.kinds[k][3]:
            for j, (_, _, ft) in enumerate(kind.codec.decl.fields):
                if ft.kind not in ("int", "float", "bool"):
                    continue
                u, _r = self.counter(k, j, kind)
                v = cols[j].to_numpy(zero_copy_only=False)
                cte = pbk.Message().add(pbk.tag(_F_TYPE, pbk.VARINT)
                                        + pbk.varint_bytes(pb.TrackEvent.TYPE_COUNTER)
                                        + pbk.tag(_F_TRACK, pbk.VARINT) + pbk.varint_bytes(u))
                if ft.kind == "float":
                    cte.add(pbk.tag(_F_DCOUNT, pbk.FIXED64), pbk.fixed64(v.astype(np.float64)))
                else:
                    cte.add(pbk.tag(_F_COUNT, pbk.VARINT), pbk.varints(v.astype(np.int64)))
                out.field(_F_PACKET, pbk.Message().add(_TS_TAG, ts, _SEQ_TAIL).field(_F_TE, cte))
        return out.rows(len(rows))

    def one_by_one(self, b, rows: np.ndarray, edge_at: Dict[int, Edge]) -> List[bytes]:
        """The packets of rows that need per-event state (slice edges, sync points),
        one reused message per event type."""
        out = []
        kinds = b.kind[rows].tolist()
        cache: Dict[int, list] = {}
        for i, k, ts, st, pos in zip(rows.tolist(), kinds, b.ts[rows].tolist(),
                                     b.stream[rows].tolist(), b.pos[rows].tolist()):
            vals = cache.get(k)
            if vals is None:
                cols = [col.to_pylist() for col in b.fields[k]]
                vals = cache[k] = list(zip(*cols)) if cols else [()] * (int(b.pos[
                    b.kind == k].max()) + 1)
            v = vals[pos]
            r, setters, sync, counter = self.kinds[k]
            p, te = r.p, r.te
            p.timestamp = ts
            te.track_uuid = self.stream_uuid[st]
            e = edge_at.get(i)
            before = after = b""
            if e is not None:
                before, after = self.edge(r, e, k, ts)
            for (ann, attr, hexed), x in zip(setters, v):
                setattr(ann, attr, x.hex() if hexed else x)
            if sync:
                self.sync_flow(k, te, v)
            data = before + r.serialize() + after
            if counter:
                data += self.counter_values(k, ts, v)
            out.append(data)
        # a message keeps every string it was given until it is freed: start afresh
        for k in set(kinds):
            self._fresh(k)
        return out

    def edge(self, r: _Reusable, e: Edge, k: int, ts: int) -> Tuple[bytes, bytes]:
        """Make r a slice's begin (named per event: a traced function's code) or end;
        an asyncio task's spans go on a track of their own under the thread's. Returns
        the packets to write before and after r's (a split, below).

        Ends are named: trace_processor closes the newest open slice of that name on
        the track, and an unnamed end would close whatever is newest (an unfinished
        begin, or the enclosing slice of an end whose begin was lost). A guest.span's
        end goes to its begin's track (another thread may record it). An end with no
        begin of its name open there is an instant, as the event it is. Slices on a
        track must nest: an end whose begin is not the newest open one (`a_begin
        b_begin a_end b_end`) ends the slices above it too and begins them again
        right after, so b shows as two slices, the second marked `continued`."""
        te = r.te
        if e.task:
            te.track_uuid = self.task_track(e.stream, e.task)
        sid = None
        if e.span is not None:
            sid = (self.c.kinds[k].domain, self.c.streams[e.stream].get("pid"), e.span)
        if e.ph == "B":
            stack = self.open.setdefault(te.track_uuid, [])
            if self.n_open >= MAX_OPEN:
                return self._as_instant(te, k)
            stack.append((e.name, sid))
            self.n_open += 1
            if sid is not None and len(self.span_track) < MAX_OPEN_SPANS:
                self.span_track[sid] = te.track_uuid
            te.type = pb.TrackEvent.TYPE_SLICE_BEGIN
            te.name_iid = self._intern(self.names, e.name, "event_names")
            return b"", b""
        if sid is not None:
            te.track_uuid = self.span_track.pop(sid, te.track_uuid)
        stack = self.open.get(te.track_uuid, [])
        # a guest.span's end closes its own begin (two spans of one name may overlap on
        # a thread: generators, callbacks), any other end the newest of its name
        at = next((j for j in range(len(stack) - 1, max(-1, len(stack) - 1 - SEARCH), -1)
                   if stack[j][0] == e.name and (sid is None or stack[j][1] == sid)), None)
        if at is None:
            return self._as_instant(te, k)
        above = stack[at + 1:]
        del stack[at:]
        self.n_open -= 1
        te.type = pb.TrackEvent.TYPE_SLICE_END
        te.name_iid = self._intern(self.names, e.name, "event_names")
        if not above:
            return b"", b""
        stack.extend(above)
        before = b"".join(self._slice_edge(ts, te.track_uuid, pb.TrackEvent.TYPE_SLICE_END,
                                           n, False) for n, _ in reversed(above))
        after = b"".join(self._slice_edge(ts, te.track_uuid, pb.TrackEvent.TYPE_SLICE_BEGIN,
                                          n, True) for n, _ in above)
        return before, after

    def _as_instant(self, te, k: int) -> Tuple[bytes, bytes]:
        te.type = pb.TrackEvent.TYPE_INSTANT
        te.name_iid = self._intern(self.names, self.c.kinds[k].name, "event_names")
        return b"", b""

    def _slice_edge(self, ts: int, track: int, typ: int, name: str, continued: bool) -> bytes:
        """One packet of a split slice's end or its continuation's begin."""
        t = pb.Trace()
        p = t.packet.add()
        p.timestamp = ts
        p.trusted_packet_sequence_id = SEQ
        p.sequence_flags = _NEEDS
        p.track_event.type = typ
        p.track_event.track_uuid = track
        p.track_event.name_iid = self._intern(self.names, name, "event_names")
        if continued:
            a = p.track_event.debug_annotations.add()
            a.name_iid = self._intern(self.args, "continued", "debug_annotation_names")
            a.bool_value = True
        return t.SerializeToString()

    def task_track(self, stream: int, task: int) -> int:
        u = self.task_tracks.get((stream, task))
        if u is None:
            u = self.task_tracks[(stream, task)] = self.uuid()
            p = pb.TracePacket()
            p.track_descriptor.uuid = u
            p.track_descriptor.parent_uuid = self.stream_uuid[stream]
            p.track_descriptor.name = "asyncio task 0x%x" % task
            self.emit(p)
        return u

    def sync_flow(self, k: int, te, vals) -> None:
        kind = self.c.kinds[k]
        f = dict(zip(kind.codec.names, vals))
        te.ClearField("flow_ids")
        te.ClearField("terminating_flow_ids")
        if kind.name == SYNC_GUEST:
            te.flow_ids.append(self.flow(kind.domain, f.get("sync_id")))
        else:
            te.terminating_flow_ids.append(self.flow(f.get("domain", ""), f.get("sync_id")))

    def counter_values(self, k: int, ts: int, vals) -> bytes:
        kind = self.c.kinds[k]
        out = b""
        for j, (_, _, ft) in enumerate(kind.codec.decl.fields):
            if ft.kind not in ("int", "float", "bool"):
                continue
            _u, r = self.counter(k, j, kind)
            r.p.timestamp = ts
            if ft.kind == "float":
                r.te.double_counter_value = vals[j]
            else:
                r.te.counter_value = int(vals[j])
            out += r.serialize()
        return out


def write(c: Columns, path: Union[str, BinaryIO],
          progress: Optional[Callable[[int], None]] = None) -> int:
    """Write the session to `path` (or an open binary file); returns the number of
    events written."""
    n = 0
    with binary_out(path) as out:
        w = _Writer(c, out)
        w.tracks()
        for b in c.batches():
            w.batch(b)
            n += len(b)
            if progress is not None:
                progress(len(b))
        w.flush()
    return n
