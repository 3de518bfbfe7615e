"""Perfetto protobuf trace (ui.perfetto.dev, trace_processor), written streaming with
the `perfetto` package's protos.

Tracks: a process per domain (each guest, the host, QEMU), a thread per stream
(producer), and a counter track per numeric field of events declared `counter`.
Events are track events on the host timeline: instants with their fields as
debug annotations, `X_begin`/`X_end` as slice begin/end, counter values, and
each sync point as a flow from the guest's record to the host's. Event and
argument names are interned on one packet sequence.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from ..analysis.spans import edge as span_edge
from ..columns import Columns, Kind
from .chrome_json import SYNC_GUEST, SYNC_HOST

SUFFIX = ".pftrace"
SEQ = 1                    # trusted_packet_sequence_id of every packet
FLUSH = 20000              # packets per write
_NEEDS = pb.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
_CLEARED = pb.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED


def _value_attr(kind: str, signed: bool, hexa: bool) -> str:
    if kind == "int":
        return "pointer_value" if hexa else ("int_value" if signed else "uint_value")
    return {"bool": "bool_value", "float": "double_value"}.get(kind, "string_value")


class _Writer:
    def __init__(self, c: Columns, out):
        self.c, self.out = c, out
        self.trace = pb.Trace()
        self.count = 0
        self.names: Dict[str, int] = {}          # interned event names
        self.args: Dict[str, int] = {}           # interned debug annotation names
        self.templates: Dict[int, Tuple[pb.TracePacket, list]] = {}
        self.counters: Dict[Tuple[int, int], int] = {}
        self.flows: Dict[Tuple[str, int], int] = {}
        self.next_uuid = 1
        self.domain_uuid: Dict[str, int] = {}
        self.stream_uuid: List[int] = []
        self.first = True

    def uuid(self) -> int:
        self.next_uuid += 1
        return self.next_uuid

    def packet(self) -> pb.TracePacket:
        p = self.trace.packet.add()
        self.count += 1
        return p

    def flush(self) -> None:
        self.out.write(self.trace.SerializeToString())
        self.trace = pb.Trace()

    def tracks(self) -> None:
        for i, d in enumerate(self.c.s.domains, 1):
            u = self.domain_uuid[d] = self.uuid()
            td = self.packet().track_descriptor
            td.uuid = u
            td.process.pid = i
            td.process.process_name = d
        pids = {d: i for i, d in enumerate(self.c.s.domains, 1)}
        for j, st in enumerate(self.c.streams, 1):
            u = self.uuid()
            self.stream_uuid.append(u)
            td = self.packet().track_descriptor
            td.uuid = u
            td.parent_uuid = self.domain_uuid[st["domain"]]
            td.thread.pid = pids[st["domain"]]
            td.thread.tid = j
            td.thread.thread_name = "%s %s (pid %s tid %s)" % (
                st["file"], st.get("thread", ""), st.get("pid"), st.get("tid"))

    def _intern(self, table: Dict[str, int], name: str, p: pb.TracePacket, field: str) -> int:
        iid = table.get(name)
        if iid is None:
            iid = table[name] = len(table) + 1
            e = getattr(p.interned_data, field).add()
            e.iid, e.name = iid, name
        return iid

    def template(self, k: int, p: pb.TracePacket) -> Tuple[pb.TracePacket, list]:
        """The constant part of kind k's packets, and per field the annotation attribute;
        interned names go into packet p (the first of the kind)."""
        t = self.templates.get(k)
        if t is not None:
            return t
        kind = self.c.kinds[k]
        tpl = pb.TracePacket()
        tpl.trusted_packet_sequence_id = SEQ
        tpl.sequence_flags = _NEEDS
        te = tpl.track_event
        edge = span_edge(kind.name)
        te.type = (pb.TrackEvent.TYPE_SLICE_BEGIN if edge and edge[1] == "B" else
                   pb.TrackEvent.TYPE_SLICE_END if edge else pb.TrackEvent.TYPE_INSTANT)
        if te.type != pb.TrackEvent.TYPE_SLICE_END:     # an end closes the open slice
            te.name_iid = self._intern(self.names, edge[0] if edge else kind.name, p,
                                       "event_names")
        attrs = []
        for a, _, ft in kind.codec.decl.fields:
            ann = te.debug_annotations.add()
            ann.name_iid = self._intern(self.args, a, p, "debug_annotation_names")
            attrs.append((_value_attr(ft.kind, ft.signed, ft.hex), ft.kind == "bytes"))
        t = self.templates[k] = (tpl, attrs)
        return t

    def counter_track(self, k: int, field: int, kind: Kind) -> int:
        u = self.counters.get((k, field))
        if u is None:
            u = self.counters[(k, field)] = self.uuid()
            td = self.packet().track_descriptor
            td.uuid = u
            td.parent_uuid = self.domain_uuid[kind.domain]
            td.name = "%s.%s" % (kind.name, kind.codec.decl.fields[field][0])
            td.counter.SetInParent()
        return u

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
        ts, kinds, streams, pos = (b.ts.tolist(), b.kind.tolist(), b.stream.tolist(),
                                   b.pos.tolist())
        for i in range(len(ts)):
            k = kinds[i]
            kind = self.c.kinds[k]
            vals = rows[k][pos[i]]
            p = self.packet()
            if self.first:
                p.sequence_flags = _CLEARED
            tpl, attrs = self.template(k, p)
            p.MergeFrom(tpl)
            if self.first:
                p.sequence_flags = _CLEARED | _NEEDS
                self.first = False
            p.timestamp = ts[i]
            te = p.track_event
            te.track_uuid = self.stream_uuid[streams[i]]
            anns = te.debug_annotations
            for j, (attr, hexed) in enumerate(attrs):
                v = vals[j]
                setattr(anns[j], attr, v.hex() if hexed else v)
            if kind.name in (SYNC_GUEST, SYNC_HOST):
                f = dict(zip(kind.codec.names, vals))
                if kind.name == SYNC_GUEST:
                    te.flow_ids.append(self.flow(kind.domain, f.get("sync_id")))
                else:
                    te.terminating_flow_ids.append(self.flow(f.get("domain", ""),
                                                             f.get("sync_id")))
            if getattr(kind.codec.decl, "counter", False):
                self.counter_values(k, kind, ts[i], vals)
            if self.count >= FLUSH:
                self.flush()
                self.count = 0

    def counter_values(self, k: int, kind: Kind, ts: int, vals) -> None:
        for j, (_, _, ft) in enumerate(kind.codec.decl.fields):
            if ft.kind not in ("int", "float", "bool"):
                continue
            u = self.counter_track(k, j, kind)
            p = self.packet()
            p.trusted_packet_sequence_id = SEQ
            p.timestamp = ts
            te = p.track_event
            te.type = pb.TrackEvent.TYPE_COUNTER
            te.track_uuid = u
            if ft.kind == "float":
                te.double_counter_value = vals[j]
            else:
                te.counter_value = int(vals[j])


def write(c: Columns, path: str, progress: Optional[Callable[[int], None]] = None) -> int:
    """Write the session to `path`; returns the number of events written."""
    n = 0
    with open(path, "wb") as out:
        w = _Writer(c, out)
        w.tracks()
        for b in c.batches():
            w.batch(b)
            n += len(b)
            if progress is not None:
                progress(len(b))
        w.flush()
    return n
