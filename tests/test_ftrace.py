"""ftrace's ring-buffer pages decoded (host/ftrace.py, issue 15), checked against the
kernel's own rendering: two instances of this host's tracefs take the same events at
the same time, one read as raw pages (trace_pipe_raw) and decoded here, the other
through its text `trace` file. Then hostile pages and format texts: FtraceError or
a page, nothing else, never a read outside the page."""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import time

import pytest
from conftest import ftrace_fields, tracefs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypertrace.host import ftrace

T = "/sys/kernel/tracing"
EVENTS = ["sched/sched_switch", "sched/sched_wakeup", "sched/sched_process_exec",
          "sched/sched_process_fork"]


needs_tracefs = pytest.mark.skipif(not tracefs(), reason="needs root and tracefs")


def _w(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def kernel_pages():
    """Two instances with the same events, a burst of forks and execs; yields the raw
    pages of instance A per cpu, the text of instance B, the layout and formats."""
    insts = []
    try:
        for k in ("a", "b"):
            d = "%s/instances/ht-test-%s-%d" % (T, k, os.getpid())
            os.mkdir(d)
            insts.append(d)
            _w(d + "/tracing_on", "0")
            _w(d + "/trace_clock", "mono")
            for e in EVENTS:
                _w("%s/events/%s/enable" % (d, e), "1")
        for d in insts:
            _w(d + "/tracing_on", "1")
        for _ in range(30):
            subprocess.run(["/bin/true"])
        time.sleep(0.05)
        for d in insts:
            _w(d + "/tracing_on", "0")
        layout = ftrace.parse_header_page(_read(T + "/events/header_page"))
        ftrace.check_header_event(_read(T + "/events/header_event"))
        formats = {}
        for e in EVENTS:
            f = ftrace.parse_format(_read("%s/events/%s/format" % (T, e)), e.split("/")[0])
            formats[f.id] = f
        psize = layout.data_off + layout.data_size
        pages = []
        for cpu in range(os.cpu_count() or 1):
            path = "%s/per_cpu/cpu%d/trace_pipe_raw" % (insts[0], cpu)
            if not os.path.exists(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                while True:
                    try:
                        b = os.read(fd, psize)
                    except BlockingIOError:
                        break
                    if not b:
                        break
                    pages.append((cpu, b))
            finally:
                os.close(fd)
        yield pages, _read(insts[1] + "/trace"), layout, formats
    finally:
        for d in insts:
            os.rmdir(d)


_LINE = re.compile(r"^\s*(?P<task>.+?)-(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+\S+\s+"
                   r"(?P<s>\d+)\.(?P<us>\d{6}): (?P<ev>\w+): (?P<rest>.*)$")


def _kernel_text(text: str) -> list:
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            kv = ftrace_fields(m.group("rest"))
            out.append((int(m.group("cpu")), int(m.group("s")) * 10 ** 6 + int(m.group("us")),
                        m.group("ev"), int(m.group("pid")), kv))
    return sorted(out, key=lambda x: (x[0], x[1]))


@needs_tracefs
def test_decoded_pages_are_the_kernels_own_events(kernel_pages):
    pages, text, layout, formats = kernel_pages
    dec = ftrace.PageDecoder(layout, formats)
    mine = []
    for cpu, b in pages:
        p = dec.decode(b)
        assert p.unknown == 0 and p.bad == 0
        mine += [(cpu, ts, f.name, v) for ts, f, v in p.events]
    mine.sort(key=lambda x: (x[0], x[1]))
    theirs = _kernel_text(text)
    names = {x[2] for x in mine}
    assert {"sched_switch", "sched_process_exec", "sched_process_fork"} <= names
    assert len(mine) == len(theirs) > 60
    now_us = time.monotonic_ns() // 1000
    for (cpu, ts, name, v), (tcpu, tus, tname, tpid, kv) in zip(mine, theirs):
        assert (cpu, name) == (tcpu, tname)
        assert abs(ts // 1000 - tus) <= 100 and ts // 1000 <= now_us   # trace_clock mono
        assert v["common_pid"] == tpid
        if name == "sched_switch":
            assert (v["prev_pid"], v["next_pid"]) == (int(kv["prev_pid"]), int(kv["next_pid"]))
            assert v["next_comm"] == kv["next_comm"]
        elif name == "sched_process_exec":
            assert v["filename"] == kv["filename"] and v["pid"] == int(kv["pid"])
        elif name == "sched_process_fork":
            assert v["child_pid"] == int(kv["child_pid"])


def _page(events: bytes, ts: int = 1000, flags: int = 0, size: int = 4080) -> bytes:
    body = events + b"\0" * (size - len(events))
    return struct.pack("<QQ", ts, len(events) | flags) + body


LAYOUT = ftrace.PageLayout(0, 8, 8, 16, 4080)
FMT = ftrace.parse_format("""name: ev
ID: 7
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] s;\toffset:8;\tsize:4;\tsigned:0;
\tfield:u32 arr[2];\toffset:12;\tsize:8;\tsigned:0;
\tfield:__rel_loc u8[] raw;\toffset:20;\tsize:4;\tsigned:0;
""", "t")


def _ev(delta: int, s: bytes, raw: bytes = b"") -> bytes:
    fixed = 24
    payload = struct.pack("<HHiIII", 7, 0, 42, (len(s) << 16) | fixed, 5, 6)
    payload += struct.pack("<I", (len(raw) << 16) | len(s))   # rel: from the field's end
    payload += s + raw
    payload += b"\0" * (-len(payload) % 4)
    if len(payload) <= 4 * ftrace.TYPE_DATA_MAX:
        return struct.pack("<I", (delta << 5) | (len(payload) // 4)) + payload
    return struct.pack("<II", delta << 5, len(payload) + 4) + payload


def test_a_synthetic_page_decodes_timestamps_extends_and_dynamic_fields():
    dec = ftrace.PageDecoder(LAYOUT, {7: FMT})
    extend = struct.pack("<II", (5 << 5) | ftrace.TYPE_TIME_EXTEND, 2)   # + 5 + 2<<27
    long_s = b"x" * 200 + b"\0"
    events = _ev(10, b"hi\0") + extend + _ev(1, long_s, b"\1\2") + \
        struct.pack("<II", (3 << 5) | ftrace.TYPE_PADDING, 8) + b"\0" * 4 + _ev(2, b"z\0")
    p = dec.decode(_page(events, ts=1000, flags=ftrace.RB_MISSED_EVENTS))
    assert p.missed is None and p.bad == 0
    ts = [t for t, _, _ in p.events]
    assert ts == [1010, 1010 + 5 + (2 << 27) + 1, 1010 + 5 + (2 << 27) + 1 + 3 + 2]
    assert [v["s"] for _, _, v in p.events] == ["hi", "x" * 200, "z"]
    assert p.events[1][2]["raw"] == b"\1\2" and p.events[0][2]["arr"] == [5, 6]
    stored = _page(events, flags=ftrace.RB_MISSED_EVENTS | ftrace.RB_MISSED_STORED)
    stored = stored[:16 + len(events)] + struct.pack("<Q", 99) + stored[24 + len(events):]
    assert dec.decode(stored).missed == 99


@pytest.mark.parametrize("text", [
    "", "name: x\n", "name: x\nID: 99999999\n", "name: ../x\nID: 1\n",
    "name: x\nID: 1\nformat:\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n",
    "name: x\nID: 1\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;"
    "\tsigned:0;\n\tfield:__data_loc char[] s;\toffset:8;\tsize:8;\tsigned:0;\n",
    "x" * (ftrace.MAX_FORMAT_TEXT + 1),
])
def test_bad_format_texts_are_one_clear_error(text):
    with pytest.raises(ftrace.FtraceError) as e:
        ftrace.parse_format(text)
    assert "\n" not in str(e.value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32), kind=st.sampled_from(["random", "flips", "commit"]))
def test_hostile_pages_give_a_page_or_ftrace_error(seed, kind):
    rng = random.Random(seed)
    good = _page(b"".join(_ev(rng.randrange(1 << 27), b"s" * rng.randrange(30) + b"\0",
                              bytes(rng.randrange(20)))
                          for _ in range(rng.randrange(1, 40))))
    b = bytearray(good)
    if kind == "random":
        b = bytearray(rng.randbytes(rng.randrange(0, 5000)))
    elif kind == "flips":
        for _ in range(rng.randrange(1, 20)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    else:
        struct.pack_into("<Q", b, 8, rng.randrange(1 << 64))
    dec = ftrace.PageDecoder(LAYOUT, {7: FMT})
    try:
        p = dec.decode(bytes(b))
    except ftrace.FtraceError as e:
        assert "\n" not in str(e)
        return
    for _ts, _f, v in p.events:
        assert len(v["s"]) < 4096 and len(v["raw"]) < 4096
