"""The collector's side of the kernel agent (host/kernel.py's KernelSource) fed what a
hostile guest's agent could send: texts and pages in parts out of order, formats that
are not the kernel's, pages of random bytes, stats of any size, any CPU number. Nothing
but a counted FtraceError/ValueError leaves it (as the collector's feed catches), and
every packet it hands the sink holds whole records the session's codecs read back."""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypertrace import abi
from hypertrace.guest.kernel import TEXT_FORMAT, TEXT_HEADER_EVENT, TEXT_HEADER_PAGE
from hypertrace.host import ftrace
from hypertrace.host.kernel import KernelSource

HEADER_PAGE = """\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
"""
HEADER_EVENT = """# compressed entry header
\ttype_len    :    5 bits
\ttime_delta  :   27 bits
\tarray       :   32 bits

\tpadding     : type == 29
\ttime_extend : type == 30
\ttime_stamp : type == 31
\tdata max type_len  == 28
"""
FORMAT = """name: ev
ID: 7
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] s;\toffset:8;\tsize:4;\tsigned:0;
\tfield:u64 v;\toffset:12;\tsize:8;\tsigned:0;
"""


def _ev(delta: int, s: bytes, v: int) -> bytes:
    payload = struct.pack("<HHiIQ", 7, 0, 42, (len(s) << 16) | 20, v) + s
    payload += b"\0" * (-len(payload) % 4)
    return struct.pack("<II", delta << 5, len(payload) + 4) + payload


def _page(rng: random.Random) -> bytes:
    body = b"".join(_ev(rng.randrange(1 << 27), rng.randbytes(rng.randrange(12)) + b"\0",
                        rng.randrange(1 << 64)) for _ in range(rng.randrange(1, 30)))[:4000]
    return struct.pack("<QQ", rng.randrange(1 << 40), len(body)) + body + \
        bytes(4080 - len(body))


def _mutate(rng: random.Random, b: bytes) -> bytes:
    b = bytearray(b)
    for _ in range(rng.randrange(1, 10)):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32))
def test_a_hostile_agent_is_counted_never_raised(seed):
    rng = random.Random(seed)
    packets = []
    src = SimpleNamespace(domain=SimpleNamespace(name="vm"),
                          events=SimpleNamespace(decls={}, codecs={}))
    ks = KernelSource(src, lambda r, content, a, b, lost, tail: packets.append(content), 64)
    texts = [(TEXT_HEADER_PAGE, "header_page", HEADER_PAGE),
             (TEXT_HEADER_EVENT, "header_event", HEADER_EVENT),
             (TEXT_FORMAT, "t/ev", FORMAT)]
    msgs = []
    for kind, name, text in texts:
        data = text.encode()
        if rng.random() < 0.3:
            data = _mutate(rng, data)
        parts = [data[i:i + 100] for i in range(0, len(data), 100)] or [b""]
        for k, chunk in enumerate(parts):
            msgs.append(("hypertrace_ftrace_text", [kind, k, len(parts), name, chunk]))
    for _ in range(rng.randrange(1, 30)):
        r = rng.random()
        cpu = rng.choice([0, 1, 3, 4095, 4096, (1 << 32) - 1])
        if r < 0.6:
            page = _page(rng)
            if rng.random() < 0.3:
                page = _mutate(rng, page)
            if rng.random() < 0.1:
                page = rng.randbytes(rng.randrange(5000))
            n = rng.choice([1, 2, 5])
            step = -(-len(page) // n) or 1
            parts = [page[i:i + step] for i in range(0, len(page), step)] or [b""]
            order = list(range(len(parts)))
            if rng.random() < 0.2:
                rng.shuffle(order)
            for k in order:
                msgs.append(("hypertrace_ftrace_page", [cpu, 0, k, rng.choice(
                    [len(parts)] * 6 + [0, 1 << 31]), parts[k]]))
        elif r < 0.8:
            msgs.append(("hypertrace_ftrace_stats", [cpu, rng.randrange(1 << 64),
                                                    rng.randrange(1 << 64), 0]))
        else:
            msgs.append(("hypertrace_ftrace_text", [rng.randrange(5), rng.randrange(3),
                                                   rng.randrange(4), "x", rng.randbytes(50)]))
    if rng.random() < 0.3:
        rng.shuffle(msgs)
    for name, vals in msgs:
        try:
            # (records of one reader: the texts' thread, then the CPUs'; a few elsewhere)
            rid = 0 if name == "hypertrace_ftrace_text" else 1
            ks._take(rid if rng.random() < 0.95 else 2, name, vals)
        except (ValueError, KeyError, ftrace.FtraceError):
            ks.bad += 1         # what the collector's feed does
    ks.flush()
    # every packet is whole records of declared ids, each read back by its codec
    codecs = {cid: c for cid, c in ks.ids.values()}
    for content in packets:
        off = 0
        while off < len(content):
            eid, sf, _seq, ts = struct.unpack_from("<HHIQ", content, off)
            size = sf & abi.REC_SIZE_MASK
            assert eid in codecs and 16 <= size and off + size <= len(content) + 8
            assert ts <= abi.MAX_TS
            _vals, end = codecs[eid].decode(content, off + 16, min(off + size, len(content)))
            assert abi.align(end - off, abi.REC_ALIGN) == size
            off += size
    for s in ks.streams.values():
        assert 0 <= s.stats.discarded <= abi.CNT_MAX and s.index < 4096
