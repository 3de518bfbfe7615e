"""The collector's two record walks (scalar reference, vectorised numpy) agree on any input."""

from __future__ import annotations

import struct

import pytest
from conftest import declared_region, encode_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypertrace import abi
from hypertrace.host.reader import EventTable, RingReader

DECLS = ["fixed(uint64_t a, int32_t b)", "other(uint64_t a, int32_t b)",
         "one_str(uint32_t n, const char *s)", "two(const char *a, bytes b, uint16_t c)",
         "empty(void)"]


@pytest.fixture(scope="module")
def region():
    r = declared_region("walk", DECLS)
    yield r
    r.close()


def encode(eid: int, seq: int, ts: int, vals: list) -> bytes:
    return encode_record(DECLS[eid], eid, seq, ts, vals)


def values(draw, eid: int) -> list:
    out = []
    for _n, _t, ft in abi.parse_signature(DECLS[eid]).fields:
        if ft.kind == "str":
            out.append(draw(st.text(max_size=40)))
        elif ft.kind == "bytes":
            out.append(draw(st.binary(max_size=40)))
        else:
            lo, hi = (-(2 ** (ft.size * 8 - 1)), 2 ** (ft.size * 8 - 1) - 1) if ft.signed else (
                0, 2 ** (ft.size * 8) - 1)
            out.append(draw(st.integers(lo, hi)))
    return out


@st.composite
def pieces(draw):
    n = draw(st.integers(1, 400))
    uniform = draw(st.booleans())
    seq, ts = 0, 1000
    recs = []
    for _ in range(n):
        eid = 0 if uniform else draw(st.integers(0, len(DECLS) - 1))
        seq += 1 + (draw(st.integers(0, 3)) if draw(st.integers(0, 9)) == 0 else 0)
        ts += draw(st.integers(-5, 50))
        recs.append(encode(eid, seq, max(ts, 0), values(draw, eid)))
    buf = bytearray(b"".join(recs))
    if draw(st.booleans()):
        buf += struct.pack("<HH", abi.PAD_ID, 24) + b"\0" * 20      # padding at the end
    for _ in range(draw(st.integers(0, 4))):                          # corruption
        pos = draw(st.integers(0, len(buf) - 1))
        buf[pos] = draw(st.integers(0, 255))
    if draw(st.integers(0, 5)) == 0:                                   # truncation
        buf = buf[:draw(st.integers(1, len(buf))) & ~7 or 8]
    return bytes(buf)


def sink(*_a):
    pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(piece=pieces(), start_seq=st.integers(0, 3))
def test_vector_walk_equals_scalar_walk(region, piece, start_seq):
    ev = EventTable(region)
    ev.refresh()
    a = RingReader(region, ev, 0, 1, {}, sink)
    b = RingReader(region, ev, 0, 1, {}, sink)
    a.seq = b.seq = start_seq
    na = a._walk(bytearray(piece))
    nb = b._walk_fast(bytearray(piece))
    assert na == nb
    sa, sb = a.stats, b.stats
    assert (sa.recorded, sa.discarded, sa.malformed, sa.clamped, sa.first_ts, sa.last_ts) == (
        sb.recorded, sb.discarded, sb.malformed, sb.clamped, sb.first_ts, sb.last_ts)
    assert sa.per_event == sb.per_event
    assert a.seq == b.seq
    assert bytes(a.buf) == bytes(b.buf)
    assert (a.pkt_begin, a.pkt_end) == (b.pkt_begin, b.pkt_end)


def test_large_uniform_and_mixed_pieces_take_the_vector_path(region):
    ev = EventTable(region)
    ev.refresh()
    piece = b"".join(encode(0, i, 10 + i, [i, -i]) for i in range(5000))
    piece += b"".join(encode(2, 5000 + i, 6000 + i, [i, "x" * (i % 13)]) for i in range(5000))
    r = RingReader(region, ev, 0, 1, {}, sink)
    assert r._walk_fast(bytearray(piece)) == 10000
    assert r.stats.malformed == 0 and r.stats.discarded == 0 and r.seq == 10000
    assert r.stats.per_event == {0: 5000, 2: 5000}
