"""Coverage-guided fuzzing of what the collector parses, with atheris (run by hand):

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz_atheris.py -atheris_runs=500000     # or -max_total_time=600

The first input byte picks a target:
  0  a piece of ring data through the scalar, the numpy and the C record walks
     (they must agree on the records taken, and none may raise);
  1  a declaration slot (must parse or be refused with ValueError);
  2  a control byte stream through the frame reader and the message decoders
     (must yield frames or raise ProtocolError);
  3  a region header (must parse or be refused with ABIError/ValueError);
  4  a session index (must load or be refused with IndexInvalid);
  5  a stream file's packets (must walk or raise PacketDamage).
Anything else that escapes is a finding. Not a pytest module (no test_ prefix);
tests/test_fuzz.py is the bounded hypothesis suite that runs in CI.
"""

from __future__ import annotations

import atexit
import struct
import sys
import uuid

import atheris

with atheris.instrument_imports():
    import numpy as np

    from hypertrace import abi, sessionindex
    from hypertrace.host import walk
    from hypertrace.host.reader import EventTable, RingReader
    from hypertrace.host.region import Region
    from hypertrace.read import packets

DECLS = ["fixed(uint64_t a, int32_t b)", "one_str(uint32_t n, const char *s)",
         "two(const char *a, bytes b, uint16_t c)", "empty(void)"]
REGION = Region.create("/dev/shm/ht-atheris-%s" % uuid.uuid4().hex[:8], "fz", n_rings=2,
                       ring_size=1 << 16)
for _i, _t in enumerate(DECLS):
    _off = REGION.layout.decl(_i)
    REGION.mm[_off + 8:_off + 8 + len(_t)] = _t.encode()
    struct.pack_into("<II", REGION.mm, _off, 1, len(_t))
atexit.register(REGION.close)   # libFuzzer ends the process from inside Fuzz()
EVENTS = EventTable(REGION)
EVENTS.refresh()
IDENT = {"pid": 1, "tid": 1, "thread": "fz", "generation": 1, "state": 1}


def _reader() -> RingReader:
    return RingReader(REGION, EVENTS, 0, 1, IDENT, lambda *a: None)


def ring_piece(data: bytes) -> None:
    buf = bytearray(data[: len(data) & ~7])
    a = _reader()
    n_scalar = a._walk(bytearray(buf))
    res = walk.walk(bytearray(buf), EVENTS.np_sizes, EVENTS.codecs, 0, 0)
    if res is not None:
        assert sum(r.count for r in res.runs) == n_scalar, (n_scalar, res)
    # the C walk (walk.walk when built) and the numpy walk: the same result, or the
    # numpy walk leaving the piece to the scalar walk (a seq going backwards, which the
    # C walk takes as the scalar walk does: its count is checked above)
    ref = walk.numpy_walk(bytearray(buf), EVENTS.np_sizes, EVENTS.codecs, 0, 0)
    if ref is None and (res is None or walk.native()):
        return
    if (res is None) != (ref is None) or (res is not None and (
            res.runs, res.malformed, res.clamped, res.next_seq, res.last_ts) != (
            ref.runs, ref.malformed, ref.clamped, ref.next_seq, ref.last_ts)):
        raise AssertionError("C and numpy walks disagree: %r / %r" % (res, ref))


def declaration(data: bytes) -> None:
    try:
        abi.parse_signature(data.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        pass


def control(data: bytes) -> None:
    r = abi.FrameReader()
    try:
        for mtype, _rid, body in r.feed(data):
            if mtype in (abi.MSG_SYNC,):
                abi.unpack_u64s(body, 2)
                _, off = abi.unpack_str(body, 16)
                abi.unpack_str(body, off)
            elif mtype in (abi.MSG_CLOCK, abi.MSG_SAMPLE):
                abi.unpack_u64s(body, 1 if mtype == abi.MSG_CLOCK else 5)
            elif mtype == abi.MSG_HELLO_OK:
                abi.unpack_str(body, 0)
    except abi.ProtocolError:
        pass


def header(data: bytes) -> None:
    buf = bytearray(4096 * 4)
    buf[:len(data)] = data[:len(buf)]
    try:
        abi.parse_header(buf, len(buf))
    except (abi.ABIError, ValueError):
        pass


def session_index(data: bytes) -> None:
    """The read side: index bytes (depth pre-scan, parse, field checks) must load or
    be refused with IndexInvalid."""
    try:
        sessionindex.validate(sessionindex.loads(data))
    except sessionindex.IndexInvalid:
        pass


def stream_file(data: bytes) -> None:
    """The read side: stream file bytes through the packet walk (PacketDamage only)."""
    try:
        for _p in packets.packets(data, len(data)):
            pass
    except packets.PacketDamage:
        pass


TARGETS = [ring_piece, declaration, control, header, session_index, stream_file]


def one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


if __name__ == "__main__":
    np.seterr(all="ignore")
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
