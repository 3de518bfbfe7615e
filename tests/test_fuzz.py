"""Fuzzing what the collector reads from guests (hypothesis; bounded for CI: set
HYPERTRACE_FUZZ_EXAMPLES for longer runs, tests/fuzz_atheris.py for coverage-guided).

Ring contents and descriptors, region headers, declarations and control frames,
random or mutated from valid ones, and ring memory rewritten by another thread
while the collector reads it. Each case checks: no exception escapes, bad input
is counted, the honest producer next to it loses nothing, and the collector's
buffers stay within a stated bound.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hypertrace import abi
from hypertrace.guest.channel import Channel
from hypertrace.guest.control import Control
from hypertrace.guest.tracepoint import build
from hypertrace.host import reader as reader_mod
from hypertrace.host.collector import Collector
from hypertrace.host.control import ControlServer, DomainClock
from hypertrace.host.region import Region
from hypertrace.read.session import Session

EXAMPLES = int(os.environ.get("HYPERTRACE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
RING = 8192
HONEST = 300


class Honest:
    """An honest in-process producer on ring 0 of a region."""

    def __init__(self, path: str):
        self.ch = Channel(path, time.monotonic_ns)
        self.tls = threading.local()
        decl = abi.make_decl("honest", "uint32_t i, const char *tag")
        self.tp = build(decl, self.tls, lambda: self.ch.claim(self.tls), time.monotonic_ns)
        self.ch.attach(self.tp, self.tls)

    def emit(self, a: int, b: int) -> None:
        for i in range(a, b):
            self.tp(i, "honest %d" % i)

    def release(self) -> None:
        w = getattr(self.tls, "w", None)
        if w is not None:
            w.release()
        self.ch.close()


def _fresh(tmp_path, prefix: str) -> str:
    """A session directory no earlier example used (hypothesis seeds `random`, so
    random names repeat; `record` never reuses a directory that holds a trace)."""
    return str(tmp_path / ("%s%s" % (prefix, uuid.uuid4().hex)))


def _setup(tmp_path, rings: int = 3):
    path = "/dev/shm/ht-fuzz-%s" % uuid.uuid4().hex[:10]
    region = Region.create(path, "fuzz", n_rings=rings, ring_size=RING)
    return path, region, Honest(path)


def _hostile_ring(region: Region, i: int, desc: bytes, data: bytes) -> None:
    """Ring i claimed by a 'producer' that then writes whatever it likes."""
    lay = region.layout
    d = lay.desc(i)
    region.mm[d:d + len(desc)] = desc
    struct.pack_into("<III", region.mm, d + abi.D_STATE, abi.RING_ACTIVE, 7, os.getpid())
    region.mm[lay.data(i):lay.data(i) + len(data)] = data


def _honest_intact(out: str, n: int) -> None:
    """The honest producer's stream (ring 0) holds exactly its events. (A hostile ring
    may emit valid `honest` records of its own: that is its right, in its own stream.)"""
    s = Session(out)
    mine = {st["file"] for st in s.streams if st["ring"] == 0 and st.get("file")}
    got = [e.fields for e in s.events() if e.name == "honest" and e.stream in mine]
    assert [f["i"] for f in got] == list(range(n))
    assert all(f["tag"] == "honest %d" % f["i"] for f in got)


def _valid_records(k: int) -> bytes:
    out = b""
    for i in range(k):
        body = struct.pack("<I", i) + struct.pack("<H", 5) + b"hello"
        size = abi.align(16 + len(body), 8)
        rec = abi.REC_HEADER.pack(0, size, i, 1000 + i) + body
        out += rec + b"\0" * (size - len(rec))
    return out


ring_bytes = st.one_of(
    st.binary(max_size=RING),
    st.builds(lambda flips, k: (flips, k), st.lists(st.tuples(st.integers(0, 4095),
                                                              st.integers(0, 255)),
                                                    max_size=20), st.integers(1, 60)))
positions = st.one_of(st.integers(0, 2 * RING), st.integers(0, 2 ** 64 - 1),
                      st.sampled_from([0, 8, RING, RING + 8, 2 ** 63, 2 ** 64 - 8]))


@FUZZ
@given(data=ring_bytes, commit=positions, emitted=positions, first=positions,
       consumed=positions)
def test_random_and_mutated_rings_next_to_an_honest_producer(tmp_path, data, commit,
                                                             emitted, first, consumed):
    if isinstance(data, tuple):
        flips, k = data
        buf = bytearray(_valid_records(k))
        for pos, val in flips:
            if pos < len(buf):
                buf[pos] = val
        data = bytes(buf)
        if commit > 2 * RING:
            commit = len(data)
    path, region, honest = _setup(tmp_path)
    out = _fresh(tmp_path, "s")
    try:
        honest.emit(0, HONEST // 2)
        desc = struct.pack("<QQQQ", commit, emitted, first, 0)
        _hostile_ring(region, 1, desc, data)
        struct.pack_into("<Q", region.mm, region.layout.desc(1) + abi.D_CONSUMED, consumed)
        col = Collector(out)
        col.add_region(region, "fuzz")
        for _ in range(3):
            col.poll()
        honest.emit(HONEST // 2, HONEST)
        honest.release()
        col.poll()
        col.stop()
        # the collector's own buffers: at most a packet plus a ring per reader
        assert all(len(r.buf) <= reader_mod.PACKET_TARGET + RING
                   for src in col.sources for r in src.finished)
        _honest_intact(out, HONEST)
    finally:
        region.close()


@FUZZ
@given(slots=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4),
                                st.one_of(st.binary(max_size=40),
                                          st.sampled_from([b"x(int a)", b"a b(c)", b"\xff(void)",
                                                           b"honest(uint32_t i)", b"y(" * 30,
                                                           b"counter z(void)",
                                                           b"ok(uint8_t q, bytes r)"])),
                                st.integers(0, 600)), max_size=8))
def test_random_declarations_are_counted_not_fatal(tmp_path, slots):
    path, region, honest = _setup(tmp_path)
    out = _fresh(tmp_path, "s")
    try:
        lay = region.layout
        for slot, state, text, ln in slots:
            off = lay.decl(1 + slot)             # slot 0 is the honest producer's
            region.mm[off + abi.DECL_TEXT:off + abi.DECL_TEXT + len(text)] = text
            struct.pack_into("<II", region.mm, off, state, ln)
        col = Collector(out)
        src = col.add_region(region, "fuzz")
        for a in range(0, HONEST, 100):         # a ring-full at most between two drains
            honest.emit(a, a + 100)
            col.poll()
        honest.release()
        col.stop()
        assert all(isinstance(v, str) for v in src.events.bad.values())
        _honest_intact(out, HONEST)
    finally:
        region.close()


@FUZZ
@given(offset=st.integers(0, 255), junk=st.binary(min_size=1, max_size=64))
def test_mutated_region_headers_are_refused_or_served(tmp_path, offset, junk):
    path = "/dev/shm/ht-fuzz-%s" % uuid.uuid4().hex[:10]
    region = Region.create(path, "fuzz", n_rings=2, ring_size=RING)
    try:
        region.mm[offset:offset + len(junk)] = junk[:max(0, 4096 - offset)]
        try:
            r2 = Region.open(path)
        except (abi.ABIError, ValueError) as e:
            assert str(e)
            return
        col = Collector(_fresh(tmp_path, "h"))
        col.add_region(r2, "fuzz")
        col.poll()
        col.stop()
        r2.close(remove=False)
    finally:
        region.close()


def test_memory_rewritten_while_the_collector_reads_it(tmp_path):
    """Time of check to time of use: another thread rewrites a hostile ring's bytes and
    descriptor at random while the collector drains it and an honest producer writes."""
    path, region, honest = _setup(tmp_path, rings=4)
    out = str(tmp_path / "s")
    stop = threading.Event()
    rnd = random.Random(7)
    lay = region.layout
    d = lay.desc(2)
    _hostile_ring(region, 2, struct.pack("<QQQQ", 0, 0, 0, 0), _valid_records(100))
    mutations = [0]

    def mutate():
        valid = _valid_records(100)
        while not stop.is_set():
            for _ in range(200):
                what = rnd.random()
                if what < 0.4:
                    p = rnd.randrange(RING)
                    region.mm[lay.data(2) + p] = rnd.randrange(256)
                elif what < 0.7:
                    struct.pack_into("<Q", region.mm, d, rnd.choice(
                        [rnd.randrange(4 * RING), len(valid), 2 ** 64 - 8, 0]))
                elif what < 0.85:
                    p = rnd.randrange(0, RING - len(valid), 8)
                    region.mm[lay.data(2) + p:lay.data(2) + p + len(valid)] = valid
                else:
                    struct.pack_into("<Q", region.mm, d + abi.D_FIRST, rnd.randrange(4 * RING))
                mutations[0] += 1
            time.sleep(0)

    col = Collector(out)
    col.add_region(region, "fuzz")
    t = threading.Thread(target=mutate, daemon=True)
    t.start()
    try:
        n = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            honest.emit(n, n + 20)
            n += 20
            col.poll()
        stop.set()
        t.join()
        honest.release()
        col.poll()
        col.stop()
        hostile = [s for s in col.streams() if s["ring"] == 2]
        assert mutations[0] > 1000
        assert sum(s["malformed"] + s["torn"] for s in hostile) > 0   # the damage is counted
        _honest_intact(out, n)
        print("concurrent mutation: %d mutations, honest %d events intact" % (mutations[0], n))
    finally:
        stop.set()
        region.close()


frames = st.lists(st.one_of(
    st.binary(max_size=64),
    st.builds(lambda t, rid, body: abi.CTL_HEADER.pack(abi.CTL_MAGIC, abi.CTL_VERSION, t, rid,
                                                       len(body)) + body,
              st.sampled_from(sorted(abi.MSG_NAMES)), st.integers(0, 2 ** 32 - 1),
              st.binary(max_size=80)),
    st.builds(lambda ln: abi.CTL_HEADER.pack(abi.CTL_MAGIC, abi.CTL_VERSION, abi.MSG_SYNC, 1,
                                             ln), st.integers(0, 2 ** 32 - 1))), max_size=6)


@pytest.fixture(scope="module")
def server():
    sid = os.urandom(16)
    path = "/dev/shm/ht-fuzz-%s.ctl" % uuid.uuid4().hex[:10]
    dc = DomainClock("fuzz", sid)
    srv = ControlServer("unix:" + path, [dc])
    yield srv, dc, path, sid
    srv.close()


@FUZZ
@given(stream=frames, hello_first=st.booleans())
def test_random_control_frames_drop_the_peer_only(server, stream, hello_first):
    srv, dc, path, sid = server
    errors = []
    old = threading.excepthook
    threading.excepthook = lambda a: errors.append(a)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(path)
        if hello_first:
            s.sendall(abi.frame(abi.MSG_HELLO, 1, sid + abi.pack_u64s(1)))
        for f in stream:
            try:
                s.sendall(f)
            except OSError:
                break
        s.close()
        # an honest peer is served right after
        c = Control("unix:" + path, time.monotonic_ns, sid)
        assert c.exchange() > 0
        c.close()
    finally:
        threading.excepthook = old
    assert not errors, errors
    json.dumps(dc.errors)      # what is kept about bad peers is plain data


@FUZZ
@given(slots=st.lists(st.binary(min_size=abi.MBOX_SIZE, max_size=abi.MBOX_SIZE),
                      min_size=1, max_size=abi.N_MBOX),
       rounds=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_fuzz_clock_mailboxes(tmp_path_factory, slots, rounds, seed):
    """Random slot contents, rewritten between polls, next to an honest guest process
    doing real exchanges in slot 0: nothing escapes, and every sample kept satisfies
    what a sample must (t1 <= t4 within 10 s; t2 <= t3, the host's own reading)."""
    from hypertrace.guest.mailbox import Mailbox
    from hypertrace.host.mailbox import MailboxServer
    path = "/dev/shm/ht-fuzz-mbox-%d-%s" % (os.getpid(), uuid.uuid4().hex[:6])
    region = Region.create(path, "fuzz", n_rings=2, ring_size=RING)
    try:
        dc = DomainClock("fuzz", region.header.session_id)
        srv = MailboxServer({dc.session_id: dc})
        srv.add(region)
        srv.start()
        rnd = random.Random(seed)
        honest = Mailbox(region.mm, 0, time.monotonic_ns)
        struct.pack_into("<II", region.mm, abi.MBOX_OFF, abi.MBOX_CLAIMED, os.getpid())
        ok = 0
        for _ in range(rounds):
            for i, raw in enumerate(slots):
                if i:           # slot 0 is the honest one
                    o = abi.MBOX_OFF + i * abi.MBOX_SIZE
                    region.mm[o:o + abi.MBOX_SIZE] = bytes(raw)
                    if rnd.random() < 0.5:     # claimed, so the server looks at it
                        struct.pack_into("<I", region.mm, o, abi.MBOX_CLAIMED)
            # the server thread shares this process's GIL with the spinning exchange: on a
            # loaded machine one exchange can miss its 50 ms; a server the hostile slots
            # stalled would miss every try
            ok += any(honest.exchange() is not None for _ in range(5))
            srv.poll()
        time.sleep(0.01)
        srv.close()
        assert ok == rounds, "the honest exchanges were answered"
        assert dc.samples, "and sampled"
        for t1, t2, t3, t4 in dc.samples:
            assert t1 <= t4 <= t1 + 10**10 and t2 <= t3
    finally:
        region.close(remove=True)


# -- the read side: crafted session directories -------------------------------------------
READ_APP = r"""
from hypertrace import guest
a = guest.event("req_begin", "uint32_t id, const char *path")
b = guest.event("req_end", "uint32_t id, int32_t status")
c = guest.event("tick", "uint64_t n, double load, bool busy, bytes raw")
for i in range(150):
    a(i, "/x/%d" % i)
    c(i, i / 3, i % 2 == 0, bytes([i % 256]) * (i % 5))
    b(i, 200)
    if i % 50 == 0:
        guest.sync_point("cp", i)
"""


@pytest.fixture(scope="module")
def read_session(tmp_path_factory):
    import subprocess
    import sys

    from conftest import record
    d = tmp_path_factory.mktemp("readfuzz")
    (d / "app.py").write_text(READ_APP)
    out = str(d / "s")
    record(out, sys.executable, str(d / "app.py"))
    subprocess.run(["rm", "-rf", os.path.join(out, ".hypertrace", "parquet")], check=True)
    return out


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
                       st.floats(allow_nan=False), st.text(max_size=12),
                       st.sampled_from(["local", "host", "../x", 'a"b', "tick", "x-0001",
                                        "estimated", "tick(uint64_t n)", "", "\x00"]))
_JSON = st.recursive(_JSON_LEAF, lambda ch: st.one_of(
    st.lists(ch, max_size=4), st.dictionaries(st.text(max_size=8), ch, max_size=4)), max_leaves=12)


def _paths(doc, prefix=()):
    """Every (container, key) in a JSON document, for mutation."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((doc, k))
            out += _paths(v)
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((doc, i))
            out += _paths(v)
    return out


def _read_everything(path: str) -> None:
    """What report, stats and the exports do, in process: only SessionError may
    escape, and only from loading or from a file refused while being read."""
    from hypertrace.analysis import stats, timeline
    from hypertrace.formats import chrome_json, html, perfetto
    from hypertrace.read.columns import Columns
    from hypertrace.read.session import Session, SessionError
    try:
        s = Session(path)
    except SessionError:
        return
    try:
        n = sum(1 for _ in s.events())
        stats.format_text(stats.compute(s))
        out = path + ".out"
        for mod in (perfetto, chrome_json):
            assert mod.write(Columns(s), out) >= 0
        assert html.write(timeline.collect(Columns(s)), out) >= 0
        assert n >= 0
    except SessionError:
        pass
    finally:
        s.close()


@FUZZ
@given(muts=st.lists(st.tuples(st.integers(0, 10 ** 6), st.sampled_from(
    ["set", "del", "dup"]), _JSON), min_size=1, max_size=4))
def test_fuzz_session_index(read_session, tmp_path_factory, muts):
    """Mutated session indexes (values replaced by random JSON, keys removed, entries
    duplicated): every reader either refuses the session with SessionError or reads
    it; nothing else escapes."""
    import shutil
    d = str(tmp_path_factory.mktemp("fi") / "s")
    shutil.copytree(read_session, d)
    idx = os.path.join(d, ".hypertrace", "session.json")
    doc = json.load(open(idx))
    for where, op, val in muts:
        spots = _paths(doc)
        box, key = spots[where % len(spots)]
        if op == "set":
            box[key] = val
        elif op == "del":
            del box[key]
        elif isinstance(box, list):
            box.append(box[key])
        else:
            box[str(key) + "_"] = box[key]
    open(idx, "w").write(json.dumps(doc))
    _read_everything(d)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
                      min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 1 << 16)), which=st.integers(0, 7))
@example(edits=[(19538, b"\x00")], cut=None, which=0)     # times going back: no progress
@example(edits=[(120, b"\x00" * 10 + b"X")], cut=None, which=0)   # a length past the chunk
@example(edits=[(5352, b"\x00")], cut=None, which=0)     # a record past its packet
@example(edits=[(33, b"\x00" * 15 + b"H")], cut=None, which=1)  # a packet context zeroed
def test_fuzz_stream_files(read_session, tmp_path_factory, edits, cut, which):
    """Stream files with bytes overwritten (packet headers, sizes, record headers,
    payloads) and cut short: readers end the damaged stream with a warning, the
    scalar and the vectorised decoders agree on the events, nothing escapes."""
    import shutil

    from hypertrace.read.columns import Columns
    from hypertrace.read.session import Session
    d = str(tmp_path_factory.mktemp("fs") / "s")
    shutil.copytree(read_session, d)
    files = sorted(f for f in os.listdir(d) if "-" in f and not f.startswith("."))
    path = os.path.join(d, files[which % len(files)])
    data = bytearray(open(path, "rb").read())
    for off, b in edits:
        off %= max(1, len(data))
        data[off:off + len(b)] = b
    if cut is not None:
        data = data[:cut % (len(data) + 1)]
    open(path, "wb").write(bytes(data))
    with Session(d) as s:
        ref = sorted((e.ts, e.stream, e.name, tuple(e.fields.values())) for e in s.events())
    with Session(d) as s:
        c = Columns(s, chunk_bytes=4096)
        got = []
        for b in c.batches():
            rows = {k: list(zip(*[x.to_pylist() for x in v])) for k, v in b.fields.items()}
            for i in range(len(b)):
                got.append((int(b.ts[i]), c.streams[b.stream[i]]["file"],
                            c.kinds[b.kind[i]].name, tuple(rows[int(b.kind[i])][b.pos[i]])))
    assert ref == sorted(got)
    _read_everything(d)
