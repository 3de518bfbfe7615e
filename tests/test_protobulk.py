"""The bulk protobuf encoder (formats/protobulk.py) against the protobuf library: varints
of every width, fixed64s, strings, hex text and nested messages, byte for byte."""

import numpy as np
import pyarrow as pa
from google.protobuf.internal.encoder import _VarintBytes
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

from hypertrace.formats import protobulk as pbk


def _ref(v: int) -> bytes:
    return _VarintBytes(v % (1 << 64))


def test_varints_of_every_width_match_the_protobuf_library():
    rng = np.random.default_rng(7)
    cases = [[0], [127], [0, 1, 127], [128, 16383, 200], [0, 5, 300, 16383],
             [1 << 40, (1 << 40) | 5], [0, 1 << 63, (1 << 64) - 1, 12345678901],
             list(rng.integers(0, 1 << 63, 5000)), list(rng.integers(0, 1 << 20, 5000))]
    for vals in cases:
        c = pbk.varints(np.array(vals, dtype=np.uint64))
        assert c.arr.to_pylist() == [_ref(int(x)) for x in vals]
        assert c.lens.tolist() == [len(_ref(int(x))) for x in vals]
    neg = np.array([-1, -2, 5, -(1 << 62)], dtype=np.int64)
    assert pbk.varints(neg).arr.to_pylist() == [_ref(int(x)) for x in neg]


def test_a_bulk_message_parses_back_as_the_protos_message():
    ts = np.array([5, 1 << 50, 300], dtype=np.int64)
    names = pa.array(["a", "", "ünïcode" * 40])
    blobs = pa.array([b"\x00\xff", b"", b"\x10"], pa.binary())
    num = np.array([1.5, -0.0, float("inf")])
    F = pbk.number
    te = pbk.Message().add(pbk.tag(F(pb.TrackEvent, "type"), pbk.VARINT) + b"\x03")
    for col, hexed in ((names, False), (blobs, True)):
        ann = pbk.Message().add(pbk.tag(F(pb.DebugAnnotation, "name_iid"), pbk.VARINT) + b"\x01")
        ann.text(F(pb.DebugAnnotation, "string_value"), pbk.binary(col, as_hex=hexed))
        te.field(F(pb.TrackEvent, "debug_annotations"), ann)
    ann = pbk.Message().add(pbk.tag(F(pb.DebugAnnotation, "double_value"), pbk.FIXED64),
                            pbk.fixed64(num))
    te.field(F(pb.TrackEvent, "debug_annotations"), ann)
    pkt = pbk.Message().add(pbk.tag(F(pb.TracePacket, "timestamp"), pbk.VARINT),
                            pbk.varints(ts)).field(F(pb.TracePacket, "track_event"), te)
    out = pbk.Message().field(F(pb.Trace, "packet"), pkt).rows(3)
    trace = pb.Trace.FromString(bytes(pbk.values_of(out)))
    assert [p.timestamp for p in trace.packet] == ts.tolist()
    for p, s, b, x in zip(trace.packet, names.to_pylist(), blobs.to_pylist(), num):
        a = p.track_event.debug_annotations
        assert (a[0].string_value, a[1].string_value, a[2].double_value) == (s, b.hex(), x)
