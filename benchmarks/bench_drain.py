#!/usr/bin/env python3
"""The collector's drain: pre-filled rings through the real code path into stream files.

Rings of a region are filled directly (no producer running: what is measured is the
collector alone), then drained by Collector.poll() (RingReader.drain: copy out of
the ring, walk, packets written to the stream files of a session directory in a
temporary directory), round after round, once with the C walk (host/_walk) and once
with the numpy walk. Three loads: 24-byte records of one event, a mix of fixed
and variable-size events (strings and bytes), and a hostile producer's 24-byte
records with 1 in 64 going back in seq (the numpy walk leaves such a piece to the
scalar walk; the C walk drops those records itself, each drop ending a packet).
The disk's write bandwidth in the same directory is measured beside them (page
cache only, and with fdatasync), since the drain's writes are what it ends with.
The USDT probes (host/_probes) are measured on the 24-byte load with the C walk:
the module built without sys/sdt.h (compiled here with HT_NO_SDT), the probes
present and unattached, and attached by bpftrace counting every hypertrace:event
(root and bpftrace needed; its count is checked against the records drained).
Each row is the best of a few trials, each started after a sync, so that one row's
dirty pages being written back do not slow down the next.

Usage: python benchmarks/bench_drain.py [--quick] [--rings N] [--ring-mib M] [--rounds R]
                                        [--trials T] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from typing import List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import numpy as np  # noqa: E402

from hypertrace import abi  # noqa: E402
from hypertrace.host import probes as hprobes  # noqa: E402
from hypertrace.host import walk as vwalk  # noqa: E402
from hypertrace.host.collector import Collector  # noqa: E402
from hypertrace.host.region import Region  # noqa: E402

DECLS = ["tick(uint64_t n)", "pair(uint64_t a, int32_t b)",
         "msg(int32_t n, const char *s)", "blob(bytes raw, uint16_t k)"]


def record(eid: int, payload: bytes) -> bytes:
    size = abi.align(abi.REC_HEADER_SIZE + len(payload), abi.REC_ALIGN)
    rec = abi.REC_HEADER.pack(eid, size, 0, 0) + payload
    return rec + b"\0" * (size - len(rec))


def template(load: str) -> Tuple[bytes, np.ndarray]:
    """A block of records (at most 64 KiB: the ring is filled with copies of it, then
    padding) and the offsets of its records; seq and ts are written per fill."""
    recs: List[bytes] = []
    if load in ("fixed24", "back"):
        recs = [record(0, struct.pack("<Q", i)) for i in range(2730)]
    else:
        i = 0
        while sum(map(len, recs)) < 60000:
            k = i % 8
            if k < 4:
                recs.append(record(0, struct.pack("<Q", i)))
            elif k < 6:
                recs.append(record(1, struct.pack("<Qi", i, -i)))
            elif k == 6:
                s = ("event-%d" % i).encode() * (i % 5)
                recs.append(record(2, struct.pack("<iH", i, len(s)) + s))
            else:
                b = bytes(range(i % 48))
                recs.append(record(3, struct.pack("<H", len(b)) + b + struct.pack("<H", i)))
            i += 1
    offs = np.cumsum([0] + [len(r) for r in recs[:-1]]).astype(np.int64)
    return b"".join(recs), offs


class Filler:
    """Writes rounds of records into every ring as a producer would (seq and ts going
    on from round to round, padding to the ring end), and publishes `commit`."""

    def __init__(self, region: Region, load: str):
        self.region = region
        lay = region.layout
        self.ring = lay.ring_size
        block, offs = template(load)
        copies = self.ring // len(block)
        data = np.frombuffer(block * copies, dtype=np.uint8).copy()
        self.offs = (offs[None, :] + (np.arange(copies) * len(block))[:, None]).ravel()
        rest = self.ring - len(data)
        if rest:
            pad = np.zeros(rest, dtype=np.uint8)
            pad[:4] = np.frombuffer(struct.pack("<HH", abi.PAD_ID, rest), dtype=np.uint8)
            data = np.concatenate([data, pad])
        self.data = data
        self.per_round = len(self.offs)
        # "back": a hostile producer's ring, 1 record in 64 with a seq gone backwards
        # (malformed: the vector walks drop it, or leave the piece to the scalar walk)
        self.back = np.arange(0, len(self.offs), 64) if load == "back" else None
        self.kept_per_round = self.per_round - (len(self.back) if load == "back" else 0)
        self.bytes_per_round = self.ring - rest
        self.seq = [0] * lay.n_rings
        self.ts = 1_000_000
        self.commit = [0] * lay.n_rings
        for i in range(lay.n_rings):
            d = lay.desc(i)
            struct.pack_into("<QQQQ", region.mm, d, 0, 0, 0, 0)
            struct.pack_into("<IIIIQ", region.mm, d + abi.D_STATE, abi.RING_ACTIVE, 1,
                             os.getpid(), os.getpid(), 1)

    def fill(self) -> None:
        lay = self.region.layout
        n = self.per_round
        for i in range(lay.n_rings):
            d = self.data
            u32 = d.view("<u4")
            u64 = d.view("<u8")
            seqs = (np.arange(n, dtype=np.uint64) + self.seq[i]) & 0xFFFFFFFF
            if self.back is not None:
                seqs[self.back] = (seqs[self.back] - (1 << 20)) & 0xFFFFFFFF
            u32[(self.offs + 4) // 4] = seqs
            u64[(self.offs + 8) // 8] = np.arange(n, dtype=np.uint64) + self.ts
            base = lay.data(i)
            self.region.mm[base:base + self.ring] = d.tobytes()
            self.seq[i] += n
            self.commit[i] += self.ring
            struct.pack_into("<Q", self.region.mm, lay.desc(i), self.commit[i])
        self.ts += n


def poll_until_empty(col: Collector) -> int:
    """Poll until a pass over the rings finds nothing: the records taken."""
    n = 0
    while True:
        k = col.poll()
        n += k
        if not k:
            return n


def drain(tmp: str, load: str, rings: int, ring_mib: int, rounds: int, native: bool):
    """Events, seconds and bytes of `rounds` full drains of every ring."""
    vwalk._native = _NATIVE if native else None
    os.sync()
    chan = "/dev/shm/ht-bdrain-%s" % uuid.uuid4().hex[:8]
    region = Region.create(chan, "bdrain", n_rings=rings, ring_size=ring_mib << 20,
                           max_events=64)
    try:
        for i, text in enumerate(DECLS):
            off = region.layout.decl(i)
            t = text.encode()
            region.mm[off + abi.DECL_TEXT:off + abi.DECL_TEXT + len(t)] = t
            struct.pack_into("<II", region.mm, off, abi.DECL_VALID, len(t))
        filler = Filler(region, load)
        col = Collector(os.path.join(tmp, "s-%s-%s" % (load, "c" if native else "numpy")))
        col.add_region(region, "drain", pid_check=False)
        n, dt = 0, 0.0
        for _ in range(rounds):
            filler.fill()
            t = time.perf_counter()
            n += poll_until_empty(col)
            col.flush()
            dt += time.perf_counter() - t
        col.stop()
        expect = rounds * rings * filler.kept_per_round
        if n != expect:
            raise SystemExit("drained %d records, expected %d" % (n, expect))
        return n, dt, rounds * rings * filler.bytes_per_round
    finally:
        region.close()
        vwalk._native = _NATIVE


def disk(tmp: str, mib: int, sync: bool) -> Tuple[float, int]:
    """Seconds to write `mib` MiB in 4 MiB writes into tmp (and fdatasync it)."""
    chunk = os.urandom(4 << 20)
    path = os.path.join(tmp, "disk-probe")
    os.sync()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        t = time.perf_counter()
        for _ in range(mib // 4):
            os.write(fd, chunk)
        if sync:
            os.fdatasync(fd)
        dt = time.perf_counter() - t
    finally:
        os.close(fd)
        os.unlink(path)
    return dt, mib << 20


_NATIVE = vwalk._native
_PROBES = hprobes._probes


def probes_without_sdt(tmp: str):
    """The probes' module compiled as a build without sys/sdt.h makes it (HT_NO_SDT)."""
    import importlib.machinery
    import importlib.util
    import sysconfig
    src = os.path.join(HERE, "..", "src", "hypertrace", "native", "probes.c")
    so = os.path.join(tmp, "_probes" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["cc", "-std=c11", "-O2", "-shared", "-fPIC", "-DHT_NO_SDT",
                    "-I" + sysconfig.get_paths()["include"], src, "-o", so], check=True)
    loader = importlib.machinery.ExtensionFileLoader("hypertrace.host._probes", so)
    spec = importlib.util.spec_from_file_location("hypertrace.host._probes", so,
                                                  loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    assert not mod.built()
    return mod


class Bpftrace:
    """bpftrace attached to this process, counting hypertrace:event; None if it cannot."""

    def __init__(self):
        self.p = subprocess.Popen(
            ["bpftrace", "-p", str(os.getpid()), "-e",
             "usdt:%s:hypertrace:event { @n = count(); }" % hprobes.library()],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not _PROBES.attached()["event"]:
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.p.kill()
                raise RuntimeError("bpftrace did not attach: %s" % (
                    self.p.communicate()[1].strip().splitlines() or ["?"])[-1])
            time.sleep(0.05)

    def count(self) -> int:
        self.p.send_signal(signal.SIGINT)
        out, _ = self.p.communicate(timeout=60)
        for line in out.splitlines():
            if line.startswith("@n: "):
                return int(line[4:])
        return 0


def probe_rows(tmp: str, a, rounds: int, trials: int) -> list:
    """The 24-byte load's C-walk drain with the probes built without sys/sdt.h, present
    and unattached (trials interleaved, so that neither gets the warmer machine), and
    attached (bpftrace; every record is then a uprobe trap: one round, one trial)."""
    native = _NATIVE is not None
    session = os.path.join(tmp, "s-fixed24-%s" % ("c" if native else "numpy"))
    states = [("built without sys/sdt.h", probes_without_sdt(tmp))]
    if _PROBES is not None and _PROBES.built():
        states.append(("present, unattached", _PROBES))
    best: dict = {}
    try:
        for _ in range(trials):
            for label, mod in states:
                hprobes._probes = mod
                n, dt, nb = drain(tmp, "fixed24", a.rings, a.ring_mib, rounds, native)
                shutil.rmtree(session)
                best[label] = min(best.get(label, (dt, n, nb)), (dt, n, nb))
    finally:
        hprobes._probes = _PROBES
    rows = [("24-byte records, C walk, probes %s" % label, best[label][1], best[label][0],
             best[label][2]) for label, _ in states]
    label = "24-byte records, C walk, probes attached (bpftrace counting)"
    if len(states) < 2:
        return rows
    if os.geteuid() != 0 or shutil.which("bpftrace") is None:
        return rows + [(label + ": needs root and bpftrace", None, None, 0)]
    try:
        bt = Bpftrace()
    except RuntimeError as e:
        return rows + [("%s: %s" % (label, e), None, None, 0)]
    try:
        n, dt, nb = drain(tmp, "fixed24", a.rings, a.ring_mib, 1, native)
        shutil.rmtree(session)
    finally:
        seen = bt.count()
    if seen != n:
        raise SystemExit("bpftrace counted %d events of %d drained" % (seen, n))
    return rows + [(label, n, dt, nb)]


def profile(a) -> None:
    """Where a drain's time goes: the functions it spends most in, by their own time."""
    import cProfile
    import pstats
    tmp = tempfile.mkdtemp(prefix="ht-bench-drain-", dir=a.dir)
    try:
        pr = cProfile.Profile()
        pr.enable()
        drain(tmp, "fixed24", a.rings, a.ring_mib, a.rounds or 6, _NATIVE is not None)
        pr.disable()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pstats.Stats(pr).sort_stats("tottime").print_stats(12)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--rings", type=int, default=8)
    ap.add_argument("--ring-mib", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=None, help="drains of every ring per trial")
    ap.add_argument("--trials", type=int, default=None, help="rows are the best of these")
    ap.add_argument("--dir", default=None, help="where the session goes (default: TMPDIR)")
    ap.add_argument("--no-probes", action="store_true", help="leave out the USDT probe rows")
    ap.add_argument("--profile", action="store_true",
                    help="only profile the C walk's drain of 24-byte records (cProfile)")
    a = ap.parse_args()
    if a.profile:
        profile(a)
        return
    rounds = a.rounds or (2 if a.quick else 6)
    trials = a.trials or (1 if a.quick else 3)
    tmp = tempfile.mkdtemp(prefix="ht-bench-drain-", dir=a.dir)
    rows = []
    try:
        for load, label in (("fixed24", "24-byte records"), ("mix", "mix with strings"),
                            ("back", "24-byte, 1 in 64 seq backwards")):
            for native in ((True, False) if _NATIVE is not None else (False,)):
                best = None
                for _ in range(trials):
                    n, dt, nb = drain(tmp, load, a.rings, a.ring_mib, rounds, native)
                    shutil.rmtree(os.path.join(tmp, "s-%s-%s" % (
                        load, "c" if native else "numpy")))
                    best = min(best or (dt, n, nb), (dt, n, nb))
                dt, n, nb = best
                rows.append(("%s, %s walk" % (label, "C" if native else "numpy"), n, dt, nb))
        if not a.no_probes:
            rows += probe_rows(tmp, a, rounds, trials)
        for sync, label in ((False, "disk: write 256 MiB (page cache)"),
                            (True, "disk: write + fdatasync 256 MiB")):
            dt, nb = min(disk(tmp, 256, sync) for _ in range(trials))
            rows.append((label, None, dt, nb))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("hypertrace %s on %s, %s, Python %s, numpy %s, %d CPUs; %d rings x %d MiB, "
          "%d rounds, best of %d, in %s" % (
              __import__("hypertrace").__version__, platform.node(),
              platform.processor() or platform.machine(), platform.python_version(),
              np.__version__, os.cpu_count(), a.rings, a.ring_mib, rounds, trials,
              os.path.dirname(tmp)))
    if _NATIVE is None:
        print("(the C walk is not built, or HYPERTRACE_PURE is set: numpy rows only)")
    print()
    print("| collector drain | events | seconds | events/s | MB/s |")
    print("|---|---:|---:|---:|---:|")
    for label, n, dt, nb in rows:
        if dt is None:
            print("| %s | | | | |" % label)
            continue
        print("| %s | %s | %.3f | %s | %.0f |" % (
            label, "%d" % n if n is not None else "", dt,
            "%.1f M" % (n / dt / 1e6) if n is not None else "", nb / dt / 1e6))


if __name__ == "__main__":
    main()
