"""The collector's C walk (native/walk.c) against the numpy walk, its reference, and the
scalar walk: the same WalkResult, the same clamps written into the piece, on clean
pieces and on anything a hostile guest could leave in a ring."""

from __future__ import annotations

import json
import os
import random
import struct
import sys

import numpy as np
import pytest
from conftest import declared_region, encode_record, env, hypertrace, record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypertrace import abi
from hypertrace.host import walk as vwalk
from hypertrace.host.reader import EventTable, RingReader

try:
    from hypertrace.host import _walk
except ImportError:
    _walk = None

pytestmark = pytest.mark.skipif(_walk is None, reason="the C walk (host._walk) is not built")
NATIVE_BY_DEFAULT = vwalk.native()

# ids 0..6 are declared; 7 is left empty (not loaded: -1); ids >= MAX_EVENTS are -2
DECLS = ["fixed(uint64_t a, int32_t b)", "other(uint64_t a, int32_t b)",
         "one_str(uint32_t n, const char *s)", "two(const char *a, bytes b, uint16_t c)",
         "empty(void)", "wide(uint64_t a, uint64_t b, uint64_t c, double d)",
         "tail(bytes b)"]
MAX_EVENTS = 64
UNLOADED = 7


@pytest.fixture(scope="module")
def region():
    r = declared_region("nwalk", DECLS, max_events=MAX_EVENTS)
    yield r
    r.close()


@pytest.fixture(scope="module", autouse=True)
def c_walk():
    """walk.walk takes the C walk here, whatever HYPERTRACE_PURE says (test.sh runs the
    suite a second time with it set)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(vwalk, "_native", _walk)
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def table(region):
    ev = EventTable(region)
    ev.refresh()
    assert ev.np_sizes[UNLOADED] == -1 and ev.np_sizes[MAX_EVENTS] == -2
    return ev


def encode(eid: int, seq: int, ts: int, vals: list) -> bytes:
    return encode_record(DECLS[eid], eid, seq, ts, vals)


def sample_values(rng: random.Random, eid: int) -> list:
    out: list = []
    for _n, _t, ft in abi.parse_signature(DECLS[eid]).fields:
        if ft.kind == "str":
            out.append("s" * rng.randrange(0, 50))
        elif ft.kind == "bytes":
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(0, 50))))
        elif ft.code in "fd":
            out.append(rng.random())
        else:
            out.append(rng.randrange(0, 1 << (ft.size * 8 - 1)))
    return out


def make_piece(rng: random.Random, n: int, eids, seq: int = 0, ts: int = 1000,
               gaps: float = 0.0, regress: float = 0.0, pad: int = 0) -> bytearray:
    recs = []
    for _ in range(n):
        eid = rng.choice(eids)
        if rng.random() < gaps:
            seq += rng.randrange(1, 1000)
        ts += -rng.randrange(1, 100) if rng.random() < regress else rng.randrange(0, 50)
        recs.append(encode(eid, seq, max(ts, 0), sample_values(rng, eid)))
        seq += 1
    buf = bytearray(b"".join(recs))
    if pad:
        buf += struct.pack("<HH", abi.PAD_ID, pad) + b"\0" * (pad - 4)
    return buf


def norm(res):
    """A WalkResult in a form both walks give alike (per-event counts as a dict)."""
    if res is None:
        return None
    pe = res.per_event
    if pe is not None and not isinstance(pe, dict):
        pe = {int(e): int(pe[e]) for e in np.flatnonzero(pe)}
    return ([tuple(int(x) for x in r) for r in res.runs], int(res.malformed),
            int(res.clamped), int(res.next_seq), int(res.last_ts), pe)


def check(table, piece, seq: int = 0, last_ts: int = 0):
    """Both walks on their own copy of `piece`: equal results, equal bytes after. Where
    the numpy walk gives up on a seq going backwards the C walk goes on (the readers'
    comparison with the scalar walk covers that case)."""
    a, b = bytearray(piece), bytearray(piece)
    ra = vwalk.numpy_walk(a, table.np_sizes, table.codecs, seq, last_ts)
    rb = vwalk.walk(b, table.np_sizes, table.codecs, seq, last_ts, table.var_layout())
    if ra is None and rb is not None:
        return rb
    assert norm(rb) == norm(ra)
    assert a == b
    return rb


def test_walk_takes_the_c_walk_unless_pure():
    assert NATIVE_BY_DEFAULT == (os.environ.get("HYPERTRACE_PURE", "") in ("", "0"))


@pytest.mark.parametrize("n", [0, 1, 2, 31, 32, 33, 100, 1000, 4095, 5000, 20000])
@pytest.mark.parametrize("eids", [[0], [5], [4], [2], [0, 1], [0, 2, 3, 4, 5, 6]])
def test_clean_pieces(table, n, eids):
    rng = random.Random(n * 7 + len(eids))
    clean = make_piece(rng, n, eids, seq=n, ts=10 ** 9)
    for pad in (0, 8, 24):
        piece = clean + (struct.pack("<HH", abi.PAD_ID, pad) + b"\0" * (pad - 4) if pad else b"")
        r = check(table, piece, seq=n, last_ts=5)
        if n:
            assert r.malformed == 0 and r.next_seq == 2 * n and len(r.runs) == 1
            assert sum(r.per_event.values()) == n


def test_seq_gaps_and_wrap(table):
    rng = random.Random(1)
    for start in (0, 12345, (1 << 32) - 50, (1 << 40) + 3):
        piece = make_piece(rng, 3000, [0, 2, 3], seq=start, gaps=0.01)
        r = check(table, piece, seq=start, last_ts=0)
        assert r.malformed == 0 and len(r.runs) > 1 and r.next_seq > start + 3000
        assert sum(run.gap_before for run in r.runs) == r.next_seq - start - 3000


def test_seq_going_backwards_is_malformed_as_in_the_scalar_walk(region, table, c_walk):
    """The numpy walk leaves it to the scalar walk; the C walk drops such a record as
    the scalar walk does, at its own pace (a producer writing them cannot slow the
    drain down to the scalar walk's: 1-8 % lost by an honest 2 M/s producer before)."""
    rng = random.Random(2)
    piece = make_piece(rng, 500, [0, 2], seq=100)
    back = make_piece(rng, 10, [0], seq=5)
    assert vwalk.numpy_walk(bytearray(piece), table.np_sizes, table.codecs, 101, 0) is None
    cases = [(piece, 100), (piece, 101), (piece + back, 100),
             (piece + back + make_piece(rng, 50, [0, 2], seq=600), 100)]
    for p, seq in cases:
        r = vwalk.walk(bytearray(p), table.np_sizes, table.codecs, seq, 0, table.var_layout())
        assert r is not None
        got = [reader_outcome(region, table, how, [p], seq, c_walk) for how in ("c", "scalar")]
        assert got[0] == got[1]
    r = vwalk.walk(bytearray(piece + back), table.np_sizes, table.codecs, 100, 0,
                   table.var_layout())
    assert r.malformed == 10 and r.next_seq == 600 and sum(r.per_event.values()) == 500


def test_timestamp_regressions_are_clamped_in_the_piece(table):
    rng = random.Random(3)
    piece = make_piece(rng, 4000, [0, 3, 5], regress=0.2)
    r = check(table, piece, last_ts=0)
    assert r.clamped > 100
    r = check(table, piece, last_ts=1 << 40)               # every record is raised
    assert r.clamped == 4000 and r.last_ts == 1 << 40
    bad = bytearray(piece)
    struct.pack_into("<Q", bad, 8, abi.MAX_TS + 1)         # above 2^62: malformed
    assert check(table, bad).malformed == 1


def test_odd_records(table):
    rng = random.Random(4)
    good = make_piece(rng, 200, [0, 2, 3])
    rec = encode(2, 200, 5000, [1, "hello"])
    cases = {
        "pad in the middle": good + struct.pack("<HH", abi.PAD_ID, 8) + b"\0" * 4 + rec,
        "pad of size 0": good + struct.pack("<HH", abi.PAD_ID, 0) + b"\0" * 12,
        "size 0": good + b"\0" * 16 + rec,
        "size 8": good + struct.pack("<HH", 0, 8) + b"\0" * 12 + rec,
        "past the piece": good + struct.pack("<HHIQ", 0, 64, 200, 5000),
        "beyond max_events": good + struct.pack("<HHIQ", MAX_EVENTS + 3, 16, 200, 5000) + rec,
        "huge id": good + struct.pack("<HHIQ", 0xFFFE, 16, 200, 5000) + rec,
        "wrong fixed size": good + struct.pack("<HHIQ", 0, 40, 200, 5000) + b"\0" * 24,
        "string past the record": good + rec[:16] + struct.pack("<IH", 1, 900) + rec[22:],
        "string too long": good + rec[:16] + struct.pack("<IH", 1, 1025) + rec[22:],
        "size not the payload's": good + rec[:2] + struct.pack("<H", len(rec) + 8) + rec[4:] +
        b"\0" * 8,
        "unloaded event": good + struct.pack("<HHIQ", UNLOADED, 16, 200, 5000),
        "odd length": good + b"\0" * 4,
        "only padding": struct.pack("<HH", abi.PAD_ID, 16) + b"\0" * 12,
        "flags set": good + rec[:2] + bytes([rec[2] | 7]) + rec[3:],
    }
    for name, piece in cases.items():
        r = check(table, piece, seq=0)
        if name in ("unloaded event", "odd length"):
            assert r is None, name
            strict = vwalk.walk(bytearray(piece), table.np_sizes, table.codecs, 0, 0,
                                table.var_layout(), strict=True)
            assert (strict is None) == (name == "odd length"), name
            assert strict is None or strict.malformed == 1
        elif name in ("flags set", "only padding"):
            assert r.malformed == 0, name
        else:
            assert r.malformed >= 1, name


def test_a_variable_size_event_without_its_codec_is_malformed(table):
    piece = make_piece(random.Random(5), 300, [0, 2])
    codecs = {e: c for e, c in table.codecs.items() if e != 2}
    a, b = bytearray(piece), bytearray(piece)
    ra = vwalk.numpy_walk(a, table.np_sizes, codecs, 0, 0)
    rb = vwalk.walk(b, table.np_sizes, codecs, 0, 0)
    assert norm(ra) == norm(rb) and ra.malformed > 0


def test_read_only_piece_and_bad_arguments(table):
    piece = bytes(make_piece(random.Random(6), 100, [0, 2]))
    assert norm(vwalk.walk(piece, table.np_sizes, table.codecs, 0, 0)) == norm(
        vwalk.numpy_walk(bytearray(piece), table.np_sizes, table.codecs, 0, 0))
    with pytest.raises(ValueError):            # a clamp cannot be written there
        _walk.walk(piece, table.np_sizes, table.var_layout(), 0, 1 << 50)
    with pytest.raises(ValueError):
        _walk.walk(bytearray(16), np.zeros(10, dtype=np.int32), b"", 0, 0)
    with pytest.raises(ValueError):
        _walk.walk(bytearray(16), np.zeros(1 << 16, dtype=np.int64), b"", 0, 0)
    with pytest.raises(OverflowError):
        _walk.walk(bytearray(16), table.np_sizes, b"", 0, -1)


@settings(max_examples=200, deadline=None)
@given(layout=st.binary(max_size=200), piece=st.binary(max_size=600))
def test_any_layout_is_bounded(table, layout, piece):
    """The layout is the host's own, but a wrong one must still not read outside it."""
    sizes = np.zeros(1 << 16, dtype=np.int32)        # every event variable-size
    _walk.walk(bytearray(piece), sizes, layout, 0, 0)


# -- random pieces: clean, then corrupted in every way a ring can be -------------------
@st.composite
def pieces(draw):
    rng = random.Random(draw(st.integers(0, 2 ** 32)))
    n = draw(st.integers(0, 600))
    eids = draw(st.sampled_from([[0], [2], [0, 1], [0, 2, 3, 4, 5, 6], [3, 6]]))
    seq = draw(st.sampled_from([0, 7, (1 << 32) - 3]))
    buf = make_piece(rng, n, eids, seq=seq, gaps=draw(st.sampled_from([0, 0.01, 0.2])),
                     regress=draw(st.sampled_from([0, 0.05, 0.5])),
                     pad=draw(st.sampled_from([0, 0, 8, 16, 40])))
    kind = draw(st.sampled_from(["clean", "flips", "bytes", "words", "truncate", "random",
                                 "splice"]))
    if buf and kind == "flips":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(buf) * 8 - 1))
            buf[pos >> 3] ^= 1 << (pos & 7)
    elif buf and kind == "bytes":
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    elif len(buf) >= 8 and kind == "words":            # a header word made up
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, len(buf) // 8 - 1)) * 8
            buf[pos:pos + 8] = struct.pack("<HHI", draw(st.integers(0, 0xFFFF)),
                                           draw(st.integers(0, 0xFFFF)),
                                           draw(st.integers(0, 2 ** 32 - 1)))
    elif kind == "truncate":
        buf = buf[:draw(st.integers(0, len(buf)))]
    elif kind == "random":
        buf = bytearray(draw(st.binary(max_size=800)))
    elif kind == "splice" and len(buf) > 16:           # a piece of another position
        a = draw(st.integers(0, len(buf) - 1))
        buf = buf[a:] + buf[:a]
    return bytes(buf), seq, draw(st.sampled_from([0, 1000, 10 ** 6, 1 << 61]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pieces())
def test_c_walk_equals_numpy_walk(table, case):
    piece, seq, last_ts = case
    check(table, piece, seq, last_ts)


class Packets(list):
    """A reader's sink: the packets it was given, as the stream file would hold them."""

    def __call__(self, _r, content, ts_begin, ts_end, discarded, tail_pad):
        self.append((bytes(content), ts_begin, ts_end, discarded, tail_pad))


def reader_outcome(region, table, how: str, pieces_, seq: int, c_walk) -> tuple:
    """What a RingReader made of `pieces_` with the C, the numpy or the scalar walk."""
    out = Packets()
    r = RingReader(region, table, 0, 1, {}, out)
    r.seq = seq
    c_walk.setattr(vwalk, "_native", _walk if how == "c" else None)
    n = 0
    for piece in pieces_:
        n += r._walk(bytearray(piece)) if how == "scalar" else r._walk_fast(bytearray(piece))
    c_walk.setattr(vwalk, "_native", _walk)
    s = r.stats
    return (n, s.recorded, s.discarded, s.malformed, s.clamped, s.first_ts, s.last_ts,
            dict(s.per_event), r.seq, bytes(r.buf), r.pkt_begin, r.pkt_end,
            r.last_rec if r.buf else None,           # only meaningful with a buffer
            r.buf_end_pos, list(out))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=pieces())
def test_readers_agree_c_numpy_scalar(region, table, case, c_walk):
    """RingReader with the C walk, with the numpy walk and with the scalar walk: the
    same packets, buffer and counts (where the vector walks give up, the scalar one runs)."""
    piece, seq, _ = case
    got = [reader_outcome(region, table, how, [piece], seq, c_walk)
           for how in ("c", "numpy", "scalar")]
    # the scalar walk treats padding in the middle of a piece its own way (it ends the
    # run there, the vector walks drop it as one malformed record); the numpy reader
    # hands a seq going backwards to the scalar walk, the C walk takes it itself
    if not _pad_inside(piece):
        assert got[0] == got[1] == got[2]
    elif vwalk.numpy_walk(bytearray(piece), table.np_sizes, table.codecs, seq, 0) is not None:
        assert got[0] == got[1]


def test_readers_agree_on_pieces_larger_than_a_packet(region, table, c_walk):
    """Runs of a packet's size or more are written straight from the piece."""
    rng = random.Random(8)
    kinds = {"big": (12000, [0], 0, 0, 0),                  # 384 KiB: one run, one packet
             "mixed": (9000, [0, 2, 3], 0, 0.01, 8),
             "small": (100, [0, 2], 0, 0, 0)}
    for names in (["big"], ["small", "big"], ["big", "mixed", "small"], ["mixed", "big"]):
        seq, ts, ps = 0, 1000, []
        for name in names:
            n, eids, gaps, regress, pad = kinds[name]
            ps.append(make_piece(rng, n, eids, seq, ts, gaps, regress, pad))
            seq, ts = seq + n + 5, ts + 50 * n              # a loss between pieces
        got = [reader_outcome(region, table, how, ps, 0, c_walk)
               for how in ("c", "numpy", "scalar")]
        assert got[0] == got[1] == got[2]
        assert got[0][-1] and got[0][3] == 0, names


def _pad_inside(piece: bytes) -> bool:
    off = 0
    while off + 4 <= len(piece):
        eid, sf = struct.unpack_from("<HH", piece, off)
        if sf & 0xFFF8 == 0:
            return False
        if eid == abi.PAD_ID and off + (sf & 0xFFF8) < len(piece):
            return True
        off += sf & 0xFFF8
    return False


def test_large_corrupted_pieces(table):
    """Pieces larger than the numpy walk's window, with damage scattered over them."""
    rng = random.Random(7)
    bases = [make_piece(rng, 20000, eids, gaps=0.001, regress=0.01, pad=16)
             for eids in ([0], [0, 2, 3, 5])]
    for trial in range(16):
        piece = bytearray(bases[trial % 2])
        for _ in range(trial * 3):
            piece[rng.randrange(len(piece))] = rng.randrange(256)
        check(table, piece, 0, 0)


# -- end to end: a recording's report is the same whichever walk the collector takes ---
PROGRAM = r"""
import os
os.environ.pop("HYPERTRACE_PURE", None)     # the producer's path: the same in both runs
from hypertrace import guest
a = guest.event("pair", "uint64_t a, int32_t b")
s = guest.event("named", "int32_t n, const char *s")
b = guest.event("blob", "bytes raw, uint16_t k")
e = guest.event("nothing", "void")
for i in range(30000):
    a(i, -i)
    if i % 3 == 0:
        s(i, "name-%d" % (i % 97))
    if i % 5 == 0:
        b(bytes(range(i % 40)), i & 0xFFFF)
    if i % 1000 == 0:
        e()
guest.disconnect()
"""


def _report(tmp_path, pure: str):
    out = str(tmp_path / ("s" + pure))
    prog = tmp_path / "prog.py"
    prog.write_text(PROGRAM)
    record(out, sys.executable, str(prog), opts=("--mode", "block", "--buffer-size", "4M"),
           env=env(HYPERTRACE_PURE=pure))
    events = []
    for line in hypertrace("report", out, "--json").stdout.splitlines():
        e = json.loads(line)
        if e["domain"] == "local":
            events.append((e["name"], e["fields"], e.get("truncated")))
    keep = ("recorded", "discarded", "malformed", "torn", "clamped", "emitted", "unwritten",
            "per_event")
    streams = [{k: s[k] for k in keep}
               for s in json.loads(hypertrace("stats", out, "--json").stdout)["streams"]
               if s["domain"] == "local"]
    return events, streams


def test_record_reports_the_same_with_the_c_walk_and_pure(tmp_path):
    fast, fast_streams = _report(tmp_path, "0")
    pure, pure_streams = _report(tmp_path, "1")
    assert len(fast) == 30000 + 10000 + 6000 + 30
    assert fast == pure
    assert fast_streams == pure_streams and fast_streams[0]["malformed"] == 0
