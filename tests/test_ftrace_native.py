"""The C decoder of ftrace pages (native/ftrace.c, host._ftrace) against its reference
(host/kernel.py's transcode_py over host/ftrace.py): for the kernel's own pages and for
hostile ones, the same records, counts and times, or the same error."""

from __future__ import annotations

import os
import random
import struct
import time

import pytest
from conftest import tracefs
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hypertrace import abi
from hypertrace.host import ftrace, kernel

try:
    from hypertrace.host import _ftrace
except ImportError:         # no compiler at install time: nothing to compare
    _ftrace = None

pytestmark = pytest.mark.skipif(_ftrace is None, reason="the C decoder is not built")

LAYOUT = ftrace.PageLayout(0, 8, 8, 16, 4080)
FMT_TEXT = """name: ev
ID: 7
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] s;\toffset:8;\tsize:4;\tsigned:0;
\tfield:u32 arr[2];\toffset:12;\tsize:8;\tsigned:0;
\tfield:__rel_loc u8[] raw;\toffset:20;\tsize:4;\tsigned:0;
\tfield:char comm[6];\toffset:24;\tsize:6;\tsigned:0;
\tfield:short sh;\toffset:30;\tsize:2;\tsigned:1;
\tfield:s64 big;\toffset:32;\tsize:8;\tsigned:1;
\tfield:u8 blob[3];\toffset:40;\tsize:3;\tsigned:0;
"""
FMT = ftrace.parse_format(FMT_TEXT, "t")


def _plans(formats: dict, base: int = 300) -> dict:
    return {fid: kernel.plan(base + k, f, kernel.record_fields(f))
            for k, (fid, f) in enumerate(sorted(formats.items()))}


def both(page: bytes, formats: dict, seq: int = 0, last: int = -1, str_max: int = abi.STR_MAX,
         layout: ftrace.PageLayout = LAYOUT):
    plans = _plans(formats)
    try:
        py = kernel.transcode_py(page, layout, formats, plans, seq, last, str_max)
    except ftrace.FtraceError as e:
        py = ("error", str(e))
    try:
        c = _ftrace.transcode(page, tuple(layout.__dict__.values()), plans, seq, last,
                              str_max, abi.MAX_TS)
    except ValueError as e:
        c = ("error", str(e))
    assert c == py
    return c


def _ev(delta: int, s: bytes, raw: bytes = b"", comm: bytes = b"ab\0", sh: int = -3,
        big: int = -(1 << 40)) -> bytes:
    fixed = 44
    payload = struct.pack("<HBBiIII", 7, 1, 2, 42, (len(s) << 16) | fixed, 5, 0xFFFFFFFF)
    payload += struct.pack("<I", (len(raw) << 16) | (len(s) + 20))   # from the field's end
    payload += comm.ljust(6, b"\0")[:6] + struct.pack("<hq", sh, big) + b"\1\2\3\0"
    payload += s + raw
    payload += b"\0" * (-len(payload) % 4)
    if len(payload) <= 4 * ftrace.TYPE_DATA_MAX:
        return struct.pack("<I", (delta << 5) | (len(payload) // 4)) + payload
    return struct.pack("<II", delta << 5, len(payload) + 4) + payload


def _page(events: bytes, ts: int = 1000, flags: int = 0, size: int = 4080) -> bytes:
    return struct.pack("<QQ", ts, len(events) | flags) + events + b"\0" * (size - len(events))


def test_a_synthetic_page_agrees_and_reads_back_through_the_codec():
    extend = struct.pack("<II", (5 << 5) | ftrace.TYPE_TIME_EXTEND, 2)
    events = _ev(10, b"hi\0") + extend + _ev(1, b"x" * 1500 + b"\0", b"\1\2", b"abcdefgh") + \
        struct.pack("<II", (3 << 5) | ftrace.TYPE_PADDING, 8) + b"\0" * 4 + _ev(2, b"\xff\xfez\0")
    out = both(_page(events), {7: FMT}, seq=5, last=2000)
    recs, n, seq, first, last, tail, clamped, missed, unknown, bad, counts = out
    assert (n, seq, clamped, bad, unknown, missed, counts) == (3, 8, 1, 0, 0, 0, {300: 3})
    # the records are what the record codec reads back, with the declaration record --kernel
    # gives the event
    args = ", ".join("%s %s" % (kernel._ctype(f), f.name) for f in kernel.record_fields(FMT))
    codec = abi.Codec(abi.parse_signature("ev(%s)" % args))
    off, vals = 0, []
    while off < len(recs):
        eid, sf, sq, ts = struct.unpack_from("<HHIQ", recs, off)
        v, _ = codec.decode(recs, off + 16, off + (sf & abi.REC_SIZE_MASK))
        vals.append((ts, sq, bool(sf & abi.REC_FLAG_TRUNCATED), dict(zip(codec.names, v))))
        off += sf & abi.REC_SIZE_MASK
    assert [x[:3] for x in vals] == [(2000, 5, False), (1010 + 5 + (2 << 27) + 1, 6, True),
                                     (1010 + 5 + (2 << 27) + 1 + 5, 7, False)]
    v0 = vals[0][3]
    assert v0["common_pid"] == 42 and v0["s"] == "hi" and v0["comm"] == "ab"
    assert v0["sh"] == -3 and v0["big"] == -(1 << 40) and v0["blob"] == b"\1\2\3"
    assert v0["arr"] == struct.pack("<II", 5, 0xFFFFFFFF)
    assert len(vals[1][3]["s"]) == abi.STR_MAX and vals[1][3]["raw"] == b"\1\2"
    assert vals[1][3]["comm"] == "abcdef"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32),
       kind=st.sampled_from(["clean", "random", "flips", "commit", "truncate", "stamp"]),
       last=st.sampled_from([-1, 0, 1 << 40, abi.MAX_TS]), str_max=st.sampled_from([0, 3, 1024]))
@example(seed=1, kind="commit", last=-1, str_max=1024)
def test_hostile_pages_decode_the_same_in_c_and_python(seed, kind, last, str_max):
    rng = random.Random(seed)
    evs = []
    for _ in range(rng.randrange(1, 40)):
        r = rng.random()
        if r < 0.1:
            evs.append(struct.pack("<II", (rng.randrange(1 << 27) << 5) | ftrace.TYPE_TIME_STAMP,
                                   rng.randrange(1 << 32)))
        elif r < 0.2:
            evs.append(struct.pack("<II", (rng.randrange(1 << 27) << 5) |
                                   ftrace.TYPE_TIME_EXTEND, rng.randrange(1 << 32)))
        else:
            evs.append(_ev(rng.randrange(1 << 27), rng.randbytes(rng.randrange(30)) + b"\0",
                           rng.randbytes(rng.randrange(20)), rng.randbytes(rng.randrange(9)),
                           rng.randrange(-(1 << 15), 1 << 15), rng.randrange(-(1 << 63), 1 << 63)))
    body = b"".join(evs)[:4000]
    b = bytearray(_page(body, ts=rng.choice([rng.randrange(1 << 40), rng.randrange(1 << 64)])))
    if kind == "random":
        b = bytearray(rng.randbytes(rng.randrange(0, 5000)))
    elif kind == "flips":
        for _ in range(rng.randrange(1, 20)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "commit":
        struct.pack_into("<Q", b, 8, rng.randrange(1 << 64))
    elif kind == "truncate":
        b = b[:rng.randrange(len(b))]
    elif kind == "stamp":
        struct.pack_into("<Q", b, 0, (1 << 64) - 1 - rng.randrange(1 << 30))
    both(bytes(b), {7: FMT}, seq=rng.randrange(1 << 32), last=last, str_max=str_max)


T = "/sys/kernel/tracing"


@pytest.mark.skipif(not tracefs(), reason="needs root and tracefs")
def test_the_kernels_own_pages_decode_the_same_in_c_and_python():
    inst = "%s/instances/ht-native-%d" % (T, os.getpid())
    os.mkdir(inst)
    try:
        for e in ("sched/sched_switch", "sched/sched_process_exec", "sched/sched_wakeup",
                  "syscalls/sys_enter_openat", "irq/irq_handler_entry"):
            if os.path.exists("%s/events/%s" % (inst, e)):
                with open("%s/events/%s/enable" % (inst, e), "w") as f:
                    f.write("1")
        for _ in range(20):
            os.system("/bin/true")
            open("/proc/self/status").read()
        time.sleep(0.1)
        with open(inst + "/tracing_on", "w") as f:
            f.write("0")
        layout = ftrace.parse_header_page(open(T + "/events/header_page").read())
        formats = {}
        for e in ("sched/sched_switch", "sched/sched_process_exec", "sched/sched_wakeup",
                  "syscalls/sys_enter_openat", "irq/irq_handler_entry"):
            p = "%s/events/%s/format" % (T, e)
            if os.path.exists(p):
                f = ftrace.parse_format(open(p).read())
                formats[f.id] = f
        pages = []
        for cpu in sorted(os.listdir(inst + "/per_cpu")):
            fd = os.open("%s/per_cpu/%s/trace_pipe_raw" % (inst, cpu), os.O_RDONLY | os.O_NONBLOCK)
            try:
                while True:
                    try:
                        pg = os.read(fd, 1 << 20)
                    except BlockingIOError:
                        break
                    if not pg:
                        break
                    pages.append(pg)
            finally:
                os.close(fd)
    finally:
        os.rmdir(inst)
    assert pages
    n = 0
    for pg in pages:
        out = both(pg, formats, layout=layout)
        assert out[0] != "error" and out[9] == 0 and out[8] == 0, out[1:]
        n += out[1]
    assert n > 40
