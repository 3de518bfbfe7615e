"""The collector's USDT probes: bpftrace or SystemTap on the host see guest events as
the collector takes them (native/probes.c, built as host/_probes with sys/sdt.h).

The collector calls a `Probes` at four points: each run of validated records taken
from a ring (`events`: one hypertrace:event per record), every count of records lost
(`lost`), each sync point answered (`sync`) and each declaration accepted (`declare`).
Each C function returns at once while no tracer holds its probe's semaphore, so
unattached probes cost one call per run of records. A probe's timestamp is put on the
host's clock with the live estimate of the domain's offset: the clock exchange with
the shortest round trip among the last LIVE_SAMPLES (the session's fit, done at the
end, is the better mapping; same-host domains share the host's clock, offset 0).

Nothing here raises into the collector's loop: every string given to C is bytes
without NUL, every integer within its C type.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Deque, Dict, List, Optional, Tuple

try:
    from . import _probes
except ImportError:             # not built (no C compiler at install)
    _probes = None

LIVE_SAMPLES = 16
_U64 = (1 << 64) - 1
_I64 = 1 << 63

#: (probe, [(argument, C type, meaning)]) in argument order: arg0 is the first
PROBES: List[Tuple[str, List[Tuple[str, str, str]]]] = [
    ("event", [
        ("domain", "char *", "the domain the record came from (local, a guest's name, host)"),
        ("name", "char *", "the event's name"),
        ("timestamp", "uint64", "ns on the host's CLOCK_MONOTONIC (live clock estimate)"),
        ("payload", "uint8 *", "the record's payload (its fields as the signature lays "
                               "them out, docs/abi.md §4)"),
        ("length", "uint64", "bytes at payload (the record's size less its 16-byte "
                             "header, padding to 8 included)"),
        ("tid", "int64", "the producer thread's id, as the guest says (bpftrace's own "
                         "`tid` is the collector's)"),
        ("ring", "int64", "the ring it was taken from (the index's streams[].ring)"),
        ("id", "uint16", "the event id in its domain"),
    ]),
    ("sync", [
        ("domain", "char *", "the guest's domain"),
        ("name", "char *", "the sync point's name"),
        ("sync_id", "uint64", "its id (the guest's hypertrace_sync record carries it too)"),
        ("guest_ns", "uint64", "the guest's clock when it sent the sync point"),
        ("host_ns", "uint64", "the host's CLOCK_MONOTONIC when it arrived"),
    ]),
    ("lost", [
        ("domain", "char *", "the domain whose records were lost"),
        ("kind", "char *", "discarded (the producer dropped them: ring full or "
                           "overwritten), malformed, torn, no_ring, claims_refused, "
                           "unwritten (the disk refused their packet)"),
        ("count", "uint64", "records lost"),
        ("tid", "int64", "the producer thread's id, or -1 (no_ring, claims_refused)"),
        ("ring", "int64", "the ring, or -1"),
    ]),
    ("declare", [
        ("domain", "char *", "the domain"),
        ("id", "uint32", "the event id"),
        ("name", "char *", "the event's name"),
        ("signature", "char *", "its canonical signature, e.g. 'alpha(uint64_t i, "
                                  "const char *s)'"),
    ]),
]


def library() -> Optional[str]:
    """The path of the shared object holding the probes (what bpftrace's usdt: takes)."""
    return os.path.realpath(_probes.__file__) if _probes is not None else None


def built() -> bool:
    """Whether the probes are compiled in (the module is built, with sys/sdt.h)."""
    return _probes is not None and _probes.built()


def probe_text(s: str) -> bytes:
    """`s` as a probe's C string: UTF-8, NUL-free."""
    return s.encode("utf-8", "replace").replace(b"\0", b"?")


def _u64(v: int) -> int:
    return v & _U64


def _i64(v: int) -> int:
    return v if -_I64 <= v < _I64 else -1


class Probes:
    """The collector's side of the probes; does nothing when they are not built."""

    def __init__(self) -> None:
        self.mod = _probes if built() else None
        self._names: Dict[str, bytes] = {}
        #: domain -> ns to add to its timestamps (the live estimate)
        self.offsets: Dict[str, int] = {}
        self._samples: Dict[str, Deque[Tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def _domain(self, name: str) -> bytes:
        b = self._names.get(name)
        if b is None:
            b = self._names[name] = probe_text(name)
        return b

    def events(self, reader, run) -> None:
        """hypertrace:event for each record of `run` (validated records of `reader`)."""
        m = self.mod
        if m is not None:
            m.events(self._domain(reader.domain.name), reader.index,
                     _i64(reader.identity.get("tid", -1)), run, reader.events.probe_names(),
                     self.offsets.get(reader.domain.name, 0))

    def lost(self, domain: str, ring: int, tid: int, count: int, kind: str) -> None:
        if self.mod is not None and count > 0:
            self.mod.lost(self._domain(domain), kind.encode(), _u64(count), _i64(tid),
                          _i64(ring))

    def sync(self, domain: str, name: str, sync_id: int, guest_ns: int,
             host_ns: int) -> None:
        if self.mod is not None:
            self.mod.sync(self._domain(domain), probe_text(name), _u64(sync_id),
                          _u64(guest_ns), _u64(host_ns))

    def declare(self, domain: str, event_id: int, name: str, signature: str) -> None:
        if self.mod is not None:
            self.mod.declare(self._domain(domain), event_id & 0xFFFFFFFF, probe_text(name),
                             probe_text(signature))

    def sample(self, domain: str, t1: int, t2: int, t3: int, t4: int) -> None:
        """A validated clock exchange of `domain`: the live offset follows the tightest
        of the last LIVE_SAMPLES (called from the control and mailbox threads)."""
        with self._lock:
            q = self._samples.setdefault(domain, collections.deque(maxlen=LIVE_SAMPLES))
            q.append(((t4 - t1) - (t3 - t2), ((t2 - t1) + (t3 - t4)) // 2))
            off = min(q)[1]
        self.offsets[domain] = off if -_I64 <= off < _I64 else 0


def why_not() -> str:
    """Why the probes fire nothing here ("" when they are built)."""
    if _probes is None:
        return ("the probes' module (hypertrace.host._probes) is not built: install with a C "
                "compiler and the Python headers")
    if not _probes.built():
        return ("the probes were built without sys/sdt.h (HYPERTRACE_NO_SDT, or the header "
                "missing: Debian systemtap-sdt-dev): reinstall with it")
    return ""


def listing_json() -> dict:
    return {"library": library(), "built": built(), "why_not": why_not() or None,
            "provider": "hypertrace",
            "probes": [{"name": name, "args": [{"arg": "arg%d" % i, "name": a, "type": t,
                                                "meaning": m}
                                               for i, (a, t, m) in enumerate(args)]}
                       for name, args in PROBES]}


def listing() -> str:
    """What `hypertrace usdt` prints: the library, each probe as bpftrace names it
    (`bpftrace -l 'usdt:LIB:hypertrace:*'`) with its arguments, and a first command."""
    lib = library() or "(not built)"
    out = ["library: %s" % lib]
    why = why_not()
    out.append("probes: %s" % ("not available: " + why if why else
                               "compiled in, each behind a semaphore (free while unattached)"))
    for name, args in PROBES:
        out.append("")
        out.append("usdt:%s:hypertrace:%s" % (lib, name))
        for i, (a, t, m) in enumerate(args):
            out.append("    arg%d  %-10s %-8s %s" % (i, a, t, m))
    out += ["",
            "The probes fire in the recorder's process (`hypertrace record -o DIR`), as its",
            "collector takes records from the rings; attach to it (as the user who records:",
            "bpftrace needs root, so both as root), e.g. counting events by name:",
            "  bpftrace -p \"$(hypertrace usdt --pid DIR)\" -e \\",
            "    'usdt:%s:hypertrace:event { @[str(arg1)] = count(); }'" % lib,
            "Without -p, every recorder using this library is traced. Strings are read 64",
            "bytes at a time: BPFTRACE_STRLEN=129 for event names up to 128 (at most 200).",
            "bpftrace before 0.24 (Debian 12: 0.17) reads arg0..arg5 only; SystemTap and",
            "newer bpftrace read all.", ""]
    return "\n".join(out)
