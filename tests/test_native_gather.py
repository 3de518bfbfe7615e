"""The C field gather and record walk of the columnar decoder (native/gather.c) and
the C varints, decimals and row join of the encoders (native/rows.c) against their
numpy and pyarrow references, on honest and on random or mutated bytes."""

from __future__ import annotations

import os
import random
import struct

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypertrace import abi
from hypertrace.abi.signature import EventDecl, parse_args
from hypertrace.formats import protobulk as pbk
from hypertrace.read import columns
from hypertrace.read import rows as rowjoin

gather = pytest.importorskip("hypertrace.read._gather")
crows = pytest.importorskip("hypertrace.read._rows")

DECL = EventDecl("ev", parse_args("uint32_t a, const char *s, double d, bool b, "
                                  "bytes raw, int16_t z"))
CODEC = abi.Codec(DECL)


def test_the_c_code_is_taken_unless_pure():
    pure = os.environ.get("HYPERTRACE_PURE") == "1"
    assert (columns._native is None) == pure and (rowjoin.native is None) == pure


def _record(rng: random.Random) -> bytes:
    s = bytes(rng.randrange(32, 127) for _ in range(rng.randrange(0, 40)))
    raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 20)))
    body = struct.pack("<I", rng.randrange(1 << 32)) + struct.pack("<H", len(s)) + s + \
        struct.pack("<d?", rng.random(), rng.random() < 0.5) + \
        struct.pack("<H", len(raw)) + raw + struct.pack("<h", rng.randrange(-9999, 9999))
    size = abi.align(abi.REC_HEADER_SIZE + len(body), abi.REC_ALIGN)
    rec = struct.pack("<HHIQ", 3, size, 0, rng.randrange(1 << 40)) + body
    return rec + bytes(size - len(rec))


def _chunk(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    return b"".join(_record(rng) for _ in range(n))


def _both(data: bytes):
    """(C, numpy) results: record starts, and each kept record's fields."""
    b = np.frombuffer(bytes(data) + bytes(-len(data) % 8), dtype=np.uint8)
    w = b.view("<u8")
    lo, hi = columns.size_bounds({3: CODEC})
    out = []
    for native in (gather, None):
        columns._native = native
        try:
            starts, ok = columns.record_starts(b, w, lo, hi)
            off = starts.astype(np.int64) * 8
            h16 = w[starts].view(np.uint16)
            size = (h16[1::4] & np.uint16(abi.REC_SIZE_MASK)).astype(np.int64)
            sel = np.flatnonzero(h16[0::4] == 3)
            cols, good = columns._fields(b, off[sel], off[sel] + size[sel], size[sel], CODEC)
        finally:
            columns._native = gather if os.environ.get("HYPERTRACE_PURE") != "1" else None
        # what the decoder keeps: the records before the first that does not fit or
        # runs past the bytes at hand (_decode's own check)
        good = good & (off[sel] + size[sel] <= len(b))
        keep = int(np.argmin(good)) if not good.all() else len(good)
        rows = list(zip(*[c.slice(0, keep).to_pylist() for c in cols]))
        out.append((starts.tolist(), ok, keep, rows))
    return out


def test_honest_records_decode_alike_and_as_the_scalar_codec_does():
    data = _chunk(1, 500)
    c, n = _both(data)
    assert c == n and c[1] and c[2] == 500
    vals = [tuple(CODEC.decode(data, off * 8 + 16, off * 8 + len(data))[0]) for off in c[0][:3]]
    assert [tuple(r) for r in c[3][:3]] == vals


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 1 << 30), n=st.integers(0, 40),
       edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.binary(min_size=1, max_size=8)),
                      max_size=5),
       cut=st.one_of(st.none(), st.integers(0, 1 << 16)))
def test_mutated_chunks_decode_alike(seed, n, edits, cut):
    data = bytearray(_chunk(seed, n))
    for off, junk in edits:
        off %= max(1, len(data))
        data[off:off + len(junk)] = junk
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    c, np_ = _both(bytes(data))
    assert c == np_


def test_the_gather_reads_nothing_outside_its_buffer():
    b = np.frombuffer(_chunk(2, 4), dtype=np.uint8)
    n = 3
    off = np.array([0, len(b) - 8, 1 << 40], dtype=np.int64)
    end = off + 4096
    good, outs = gather.fields(b, off, end, np.full(n, 4096, dtype=np.int64),
                               tuple(s.size if k == "fixed" else -1 for k, s in CODEC.steps))
    assert list(good) == [0, 0, 0]
    with pytest.raises(ValueError):
        gather.fields(b, off[:2], end, end, (4,))
    with pytest.raises(ValueError):
        gather.fields(b, off, end, end, (0,))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, (1 << 64) - 1), max_size=200))
def test_c_varints_equal_the_numpy_ones(values):
    v = np.array(values, dtype=np.uint64)
    rowjoin.native = crows
    try:
        c = pbk.varints(v)
        rowjoin.native = None
        n = pbk.varints(v)
    finally:
        rowjoin.native = crows if os.environ.get("HYPERTRACE_PURE") != "1" else None
    assert c.arr.to_pylist() == n.arr.to_pylist() and c.lens.tolist() == n.lens.tolist()


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(st.binary(max_size=9), st.binary(max_size=3)), max_size=50),
       const=st.binary(max_size=5), start=st.integers(0, 3))
def test_c_join_equals_pyarrows(rows, const, start):
    a = pa.array([b"x"] * start + [r[0] for r in rows], pa.binary()).slice(start)
    b = pa.array([r[1] for r in rows], pa.binary())
    m = pbk.Message().add(const, pbk.Col(a, np.array([len(r[0]) for r in rows])), const,
                          pbk.Col(b, np.array([len(r[1]) for r in rows])))
    rowjoin.native = crows
    try:
        c = m.rows(len(rows))
        rowjoin.native = None
        n = m.rows(len(rows))
    finally:
        rowjoin.native = crows if os.environ.get("HYPERTRACE_PURE") != "1" else None
    assert c.to_pylist() == n.to_pylist() == [const + x + const + y for x, y in rows]


def test_join_refuses_offsets_outside_their_data():
    offs = np.array([0, 5, 99], dtype=np.int32).tobytes()
    with pytest.raises(ValueError):
        crows.join(2, [(offs, b"12345")])
    with pytest.raises(ValueError):
        crows.join(3, [(offs, b"12345")])
    with pytest.raises(ValueError):
        crows.varints(b"1234567")


@settings(max_examples=200, deadline=None)
@given(ints=st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=60),
       frac=st.integers(0, 18), text=st.text(max_size=4), start=st.integers(0, 2))
def test_c_decimals_equal_pyarrows(ints, frac, text, start):
    n = len(ints)
    signed = np.array(ints, dtype=np.int64)
    unsigned = signed.view(np.uint64)
    strs = pa.array(["x"] * start + [text] * n, pa.string()).slice(start)
    parts = ["{", rowjoin.Decimals(signed, frac), ",", strs, ":", rowjoin.Decimals(unsigned, frac),
             "}"]
    rowjoin.native = crows
    try:
        c = rowjoin.join(n, parts)
        rowjoin.native = None
        ref = rowjoin.join(n, parts)
    finally:
        rowjoin.native = crows if os.environ.get("HYPERTRACE_PURE") != "1" else None
    assert c.to_pylist() == ref.to_pylist()
    # and both are the numbers: value / 10**frac, exactly
    from decimal import Decimal
    for row, v in zip(c.to_pylist(), ints):
        a, _, rest = row[1:-1].partition(",")
        assert Decimal(a) == Decimal(v).scaleb(-frac)
        assert Decimal(rest.rpartition(":")[2]) == Decimal(v % (1 << 64)).scaleb(-frac)
        assert ("." in a) == (frac > 0)


def test_join_refuses_bad_integer_parts():
    with pytest.raises(ValueError):
        crows.join(2, [(np.zeros(3, dtype=np.int64), True, 0)])
    with pytest.raises(ValueError):
        crows.join(1, [(np.zeros(1, dtype=np.int64), True, 19)])
    with pytest.raises(TypeError):
        crows.join(1, [(1, 2, 3, 4)])
