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
"""

from __future__ import annotations

from typing import BinaryIO, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from ..analysis.spans import Edge, Edges
from ..read.columns import Columns, Kind
from ..read.events import SYNC_GUEST, SYNC_HOST
from .output import binary_out

SUFFIX = ".pftrace"
SEQ = 1                    # trusted_packet_sequence_id of every packet
_NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
_CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
MAX_OPEN_SPANS = 1 << 20   # guest.span begins remembered for an end on another thread


def _value_attr(kind: str, signed: bool, hexa: bool) -> str:
    if kind == "int":
        return "pointer_value" if hexa else ("int_value" if signed else "uint_value")
    return {"bool": "bool_value", "float": "double_value"}.get(kind, "string_value")


class _Reusable:
    """One packet of one event type, kept in a one-packet Trace: each event sets its
    timestamp, track and values and serializes the Trace again. The bytes of Trace
    messages concatenate into one Trace, and this is ~3x cheaper than a new message
    per event."""

    def __init__(self, packet: pb.TracePacket):
        self.trace = pb.Trace()
        self.p = self.trace.packet.add()
        self.p.CopyFrom(packet)
        self.te = self.p.track_event
        self.anns = list(self.te.debug_annotations)
        self.serialize = self.trace.SerializeToString


class _Writer:
    def __init__(self, c: Columns, out):
        self.c, self.out = c, out
        self.chunks: List[bytes] = []
        self.names: Dict[str, int] = {}          # interned event names
        self.args: Dict[str, int] = {}           # interned debug annotation names
        self.kinds: Dict[int, tuple] = {}
        self.templates: Dict[int, tuple] = {}
        self.counters: Dict[Tuple[int, int], _Reusable] = {}
        self.flows: Dict[Tuple[str, int], int] = {}
        self.edges = Edges(c)
        self.task_tracks: Dict[Tuple[int, int], int] = {}
        self.open: Dict[Tuple[int, str], int] = {}     # (track, slice name) -> begins open
        self.span_track: Dict[tuple, int] = {}         # (domain, pid, span id) -> its track
        self.next_uuid = 1
        self.domain_uuid: Dict[str, int] = {}
        self.stream_uuid: List[int] = []
        self.first = True

    def uuid(self) -> int:
        self.next_uuid += 1
        return self.next_uuid

    def emit(self, packet: pb.TracePacket) -> None:
        t = pb.Trace()
        t.packet.append(packet)
        self.chunks.append(t.SerializeToString())

    def flush(self) -> None:
        self.out.write(b"".join(self.chunks))
        self.chunks = []

    def tracks(self) -> None:
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

    def _intern(self, table: Dict[str, int], name: str, p: pb.TracePacket, field: str) -> int:
        iid = table.get(name)
        if iid is None:
            iid = table[name] = len(table) + 1
            e = getattr(p.interned_data, field).add()
            e.iid, e.name = iid, name
        return iid

    def kind(self, k: int) -> tuple:
        """(reusable packet, per field (annotation, attribute, as hex)) of kind k. The
        first packet of a kind carries the names it interns."""
        t = self.kinds.get(k)
        if t is not None:
            return t
        kind = self.c.kinds[k]
        tpl = pb.TracePacket()
        tpl.trusted_packet_sequence_id = SEQ
        tpl.sequence_flags = _NEEDS | (_CLEARED if self.first else 0)
        self.first = False
        te = tpl.track_event
        te.type = pb.TrackEvent.TYPE_INSTANT
        mode = self.edges.mode(k)
        if mode is None or mode[2] == "code":   # an edge's type and name: per event (edge)
            te.name_iid = self._intern(self.names, kind.name, tpl, "event_names")
        attrs = []
        for a, _, ft in kind.codec.decl.fields:
            te.debug_annotations.add().name_iid = self._intern(
                self.args, a, tpl, "debug_annotation_names")
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

    def counter(self, k: int, field: int, kind: Kind) -> _Reusable:
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
            r = self.counters[(k, field)] = _Reusable(p)
        return r

    def flow(self, domain: str, sync_id) -> int:
        key = (domain, int(sync_id or 0))
        f = self.flows.get(key)
        if f is None:
            f = self.flows[key] = len(self.flows) + 1
        return f

    def batch(self, b) -> None:
        rows = {}
        for k in np.unique(b.kind):
            k = int(k)
            cols = [col.to_pylist() for col in b.fields[k]]
            rows[k] = list(zip(*cols)) if cols else [()] * int((b.kind == k).sum())
        append = self.chunks.append
        suuid = self.stream_uuid
        edge_at = {e.row: e for e in self.edges.rows(b)}
        for i, (ts, k, st, pos) in enumerate(zip(b.ts.tolist(), b.kind.tolist(),
                                                 b.stream.tolist(), b.pos.tolist())):
            r, setters, sync, counter = self.kind(k)
            vals = rows[k][pos]
            p, te = r.p, r.te
            p.timestamp = ts
            te.track_uuid = suuid[st]
            if edge_at:
                e = edge_at.get(i)
                if e is not None:
                    self.edge(r, e, k)
            for (ann, attr, hexed), v in zip(setters, vals):
                setattr(ann, attr, v.hex() if hexed else v)
            if sync:
                self.sync_flow(k, te, vals)
            append(r.serialize())
            if p.HasField("interned_data"):
                p.ClearField("interned_data")
                p.sequence_flags = _NEEDS
                tpl = self.templates[k][0]
                tpl.ClearField("interned_data")
                tpl.sequence_flags = _NEEDS
            if counter:
                self.counter_values(k, ts, vals)
        self.flush()
        # a message keeps every string it was given until it is freed: start afresh
        for k in list(self.kinds):
            self._fresh(k)
        for key, r in list(self.counters.items()):
            self.counters[key] = _Reusable(r.p)

    def edge(self, r: _Reusable, e: Edge, k: int) -> None:
        """A slice's begin (named per event: a traced function's code) or end; an
        asyncio task's spans on a track of their own under the thread's. An end is
        named: trace_processor closes the newest open slice of that name on the track
        (an unnamed end closes the newest of any name: an unfinished begin, or an end
        whose begin was lost, would close another slice). A guest.span's end goes to
        its begin's track (it may be recorded by another thread); an end with no begin
        of its name open there is an instant, as the event it is."""
        te = r.te
        if e.task:
            te.track_uuid = self.task_track(e.stream, e.task)
        sid = None
        if e.span is not None:
            kind = self.c.kinds[k]
            sid = (kind.domain, self.c.streams[e.stream].get("pid"), e.span)
        if e.ph == "B":
            key = (te.track_uuid, e.name)
            self.open[key] = self.open.get(key, 0) + 1
            if sid is not None and len(self.span_track) < MAX_OPEN_SPANS:
                self.span_track[sid] = te.track_uuid
            te.type = pb.TrackEvent.TYPE_SLICE_BEGIN
            te.name_iid = self._intern(self.names, e.name, r.p, "event_names")
            return
        if sid is not None:
            te.track_uuid = self.span_track.pop(sid, te.track_uuid)
        key = (te.track_uuid, e.name)
        if self.open.get(key):
            self.open[key] -= 1
            te.type = pb.TrackEvent.TYPE_SLICE_END
            te.name_iid = self._intern(self.names, e.name, r.p, "event_names")
        else:
            te.type = pb.TrackEvent.TYPE_INSTANT
            te.name_iid = self._intern(self.names, self.c.kinds[k].name, r.p, "event_names")

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

    def counter_values(self, k: int, ts: int, vals) -> None:
        kind = self.c.kinds[k]
        for j, (_, _, ft) in enumerate(kind.codec.decl.fields):
            if ft.kind not in ("int", "float", "bool"):
                continue
            r = self.counter(k, j, kind)
            r.p.timestamp = ts
            if ft.kind == "float":
                r.te.double_counter_value = vals[j]
            else:
                r.te.counter_value = int(vals[j])
            self.chunks.append(r.serialize())


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
