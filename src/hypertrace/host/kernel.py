"""Kernel events into the session: the kernel agent's records (guest/kernel.py) taken
apart as they are drained, their ftrace pages decoded (host/ftrace.py) and written as
CTF events with typed fields, one stream per CPU of the domain (`kernel-cpuN`), in the
domain's clock (the agent's instance runs on trace_clock mono: the domain's own
CLOCK_MONOTONIC, the one its user events and its clock mapping use).

The agent's records are only looked at on its own producer threads (named
`ftrace-...`): the user's streams cost nothing here. Pages that arrive before the
formats (another thread's stream, drained first) wait for them, a bounded number.
What it sends is untrusted: texts and pages are bounded, a bad one is counted (the
index's errors say how many), never raised.
"""

from __future__ import annotations

import os
import struct
from dataclasses import astuple
from typing import Dict, List, Optional, Tuple

from .. import abi
from ..guest.kernel import (
    AGENT_THREAD,
    SIGNATURES,
    TEXT_FORMAT,
    TEXT_HEADER_EVENT,
    TEXT_HEADER_PAGE,
)
from . import ftrace
from .reader import StreamStats

MAX_PARTS = 1024                   # 1 MiB in STR_MAX parts: a page or a format text
MAX_FORMATS = 4096
MAX_PENDING = 256                  # texts and pages being assembled per source
MAX_EARLY = 1024                   # pages held until the formats are known
PACKET_TARGET = 64 * 1024
_REC = struct.Struct("<HHIQ")
__all__ = ["AGENT_THREAD", "KernelSource", "KernelStream"]


class _Events:
    """What the collector reads of a stream's event table: names by id."""

    def __init__(self):
        self.decls: Dict[int, abi.EventDecl] = {}


class KernelStream:
    """One CPU's kernel events: a stream of the domain, fed decoded events. Looks to
    the collector's sink like a ring's reader (domain, identity, stats, events)."""

    def __init__(self, kernel: KernelSource, cpu: int):
        self.kernel = kernel
        self.domain = kernel.src.domain
        self.index = cpu               # the index's `ring`: the CPU, for a kernel stream
        self.generation = 0
        self.identity = {"pid": 0, "tid": cpu, "thread": "kernel-cpu%d" % cpu,
                         "generation": 0, "claim_ts": 0}
        self.stats = StreamStats()
        self.events = kernel.events
        self.buf = bytearray()
        self.seq = 0
        self.tail = 0                  # padding after the last payload in buf
        self.pkt_begin: Optional[int] = None
        self.pkt_end = 0
        self.lost = 0                  # ftrace's own losses, as reported so far

    def add_run(self, t: tuple) -> None:
        """A page's records, as transcode returns them (the stream's seq and last time
        went in: the run continues them)."""
        recs, n, seq, first, last, tail, clamped, _missed, _unknown, _bad, counts = t
        if not n:
            return
        st = self.stats
        self.buf += recs
        self.tail = tail
        self.seq = seq
        st.recorded += n
        st.clamped += clamped
        for eid, k in counts.items():
            st.per_event[eid] = st.per_event.get(eid, 0) + k
        if st.first_ts is None:
            st.first_ts = first
        st.last_ts = last
        if self.pkt_begin is None:
            self.pkt_begin = first
        self.pkt_end = last
        if len(self.buf) >= PACKET_TARGET:
            self.flush()

    def lose(self, n: int) -> None:
        """Events ftrace lost (overruns): they go between this packet and the next."""
        if n > 0:
            self.flush()
            self.stats.discarded += n

    def flush(self) -> None:
        if not self.buf and not self.stats.discarded - self.lost:
            return
        ts = self.pkt_begin if self.pkt_begin is not None else (self.stats.last_ts or 0)
        self.kernel.sink(self, bytes(self.buf), ts, self.pkt_end or ts,
                         self.stats.discarded, self.tail if self.buf else 0)
        self.lost = self.stats.discarded
        self.buf.clear()
        self.pkt_begin = None
        self.tail = 0


def _ctype(f: ftrace.Field) -> str:
    if f.kind == "int":
        return ("int%d_t" if f.signed else "uint%d_t") % (8 * f.size)
    if f.kind in ("str", "dyn_str"):
        return "const char *"
    return "bytes"


_KIND = {"int": 0, "str": 1, "array": 2, "bytes": 2, "dyn_str": 3, "dyn_array": 4}


def plan(ctf_id: int, fmt: ftrace.EventFormat, fields: List[ftrace.Field]) -> tuple:
    """How transcode lays out one event's record: (record id, 12 bytes per field, the
    format's fixed size)."""
    steps = b"".join(struct.pack("<BBHII", _KIND[f.kind], f.rel, 0, f.offset, f.size)
                     for f in fields)
    return ctf_id, steps, fmt.size


def transcode_py(page: bytes, layout: ftrace.PageLayout, formats: Dict[int, ftrace.EventFormat],
                 plans: Dict[int, tuple], seq: int, last_ts: int, str_max: int = abi.STR_MAX,
                 max_ts: int = abi.MAX_TS) -> tuple:
    """One ftrace page into records (header + payload as the record codec lays them
    out): the reference of native/ftrace.c's transcode, same arguments, same result
    (records, events, seq, first, last, tail, clamped, missed, unknown, bad, counts),
    FtraceError where it raises ValueError."""
    pg = ftrace.PageDecoder(layout, formats, raw_strings=True).decode(page)
    out = bytearray()
    n = clamped = 0
    bad = pg.bad
    first = -1
    tail = 0
    counts: Dict[int, int] = {}
    for ts, fmt, vals in pg.events:
        ctf_id = plans[fmt.id][0]
        if ts > max_ts:
            bad += 1
            continue
        payload = bytearray()
        trunc = False
        for f in record_fields(fmt):
            v = vals[f.name]
            if f.kind == "int":
                payload += (v & ((1 << 8 * f.size) - 1)).to_bytes(f.size, "little")
                continue
            if f.kind == "array":            # carried as its bytes, little-endian
                v = b"".join((x & ((1 << 8 * f.elem) - 1)).to_bytes(f.elem, "little")
                             for x in v)
            v = bytes(v)
            if len(v) > str_max:
                v, trunc = v[:str_max], True
            payload += struct.pack("<H", len(v)) + v
        size = abi.align(abi.REC_HEADER_SIZE + len(payload), abi.REC_ALIGN)
        if size > abi.REC_SIZE_MASK:
            bad += 1
            continue
        if last_ts >= 0 and ts < last_ts:
            ts = last_ts
            clamped += 1
        out += _REC.pack(ctf_id, size | (abi.REC_FLAG_TRUNCATED if trunc else 0),
                         seq & 0xFFFFFFFF, ts) + payload
        tail = size - abi.REC_HEADER_SIZE - len(payload)
        out += bytes(tail)
        seq += 1
        n += 1
        counts[ctf_id] = counts.get(ctf_id, 0) + 1
        if first < 0:
            first = ts
        last_ts = ts
    return bytes(out), n, seq & 0xFFFFFFFF, first, last_ts, tail, clamped, pg.missed, \
        pg.unknown, bad, counts


def _claim_key(r) -> tuple:
    """One agent thread's claim of a ring (id() of a reader could be reused)."""
    i = r.identity
    return (r.index, i.get("pid"), i.get("tid"), i.get("generation"), i.get("claim_ts"))


def record_fields(fmt: ftrace.EventFormat) -> List[ftrace.Field]:
    """The fields of an event's record: common_pid, then the event's own."""
    return [f for f in fmt.common if f.name == "common_pid"] + fmt.fields


try:
    if os.environ.get("HYPERTRACE_PURE", "") not in ("", "0"):
        raise ImportError("HYPERTRACE_PURE")
    from ._ftrace import transcode as _transcode_c  # type: ignore[import-not-found]
except ImportError:
    _transcode_c = None


class KernelSource:
    """The kernel events of one source (a guest's region, or the host's)."""

    def __init__(self, src, sink, base_id: int):
        self.src = src
        self.sink = sink
        self.base = base_id               # CTF ids from here: above the region's own
        self.events = _Events()
        self.parts: Dict[tuple, List[bytes]] = {}
        self.layout: Optional[ftrace.PageLayout] = None
        self.header_ok = False
        self.formats: Dict[int, ftrace.EventFormat] = {}
        self.ids: Dict[int, Tuple[int, abi.Codec]] = {}     # ftrace id -> (CTF id, codec)
        self.plans: Dict[int, tuple] = {}                    # ftrace id -> transcode plan
        self.reported: Dict[tuple, int] = {}   # (agent claim, cpu) -> ftrace's count taken
        self.streams: Dict[int, KernelStream] = {}
        self.decoder: Optional[ftrace.PageDecoder] = None
        self.bad = 0
        self.pages = 0
        self.early: List[Tuple[int, bytes]] = []
        self.changed = False              # new event classes: metadata to rewrite

    # -- the agent's records ------------------------------------------------------
    def _agent_ids(self) -> Dict[int, str]:
        out = {}
        for eid, d in self.src.events.decls.items():
            want = SIGNATURES.get(d.name)
            if want is not None and d.signature == "%s(%s)" % (d.name, want):
                out[eid] = d.name
        return out

    def feed(self, r, content) -> None:
        """A run of validated records of reader r (a thread named ftrace-cpuN)."""
        ids = self._agent_ids()
        if not ids:
            return
        codecs = self.src.events.codecs
        off, n = 0, len(content)
        while off + abi.REC_HEADER_SIZE <= n:
            eid, sf, _seq, _ts = _REC.unpack_from(content, off)
            size = sf & 0xFFF8
            if size < abi.REC_HEADER_SIZE:
                break
            name = ids.get(eid)
            if name is not None:
                try:
                    vals, _ = codecs[eid].decode(content, off + abi.REC_HEADER_SIZE,
                                                 off + size)
                    self._take(_claim_key(r), name, vals)
                except (ValueError, KeyError, ftrace.FtraceError):
                    self.bad += 1
            off += size

    def _assemble(self, key: tuple, part: int, parts: int, chunk: bytes) -> Optional[bytes]:
        if not 0 < parts <= MAX_PARTS or part >= parts:
            self.bad += 1
            return None
        have = self.parts.get(key)
        if part == 0:
            if have is not None:
                self.bad += 1               # the previous one never ended
            if len(self.parts) >= MAX_PENDING:
                self.bad += 1
                return None
            have = self.parts[key] = []
        elif have is None or len(have) != part:
            self.bad += 1                   # a part out of order: the whole is lost
            self.parts.pop(key, None)
            return None
        have.append(bytes(chunk))
        if len(have) < parts:
            return None
        del self.parts[key]
        return b"".join(have)

    def _take(self, rid, name: str, vals: list) -> None:
        if name == "hypertrace_ftrace_text":
            kind, part, parts, tname, chunk = vals
            data = self._assemble((rid, "t", kind, tname), part, parts, chunk)
            if data is not None:
                self._text(kind, data.decode("utf-8", "replace"))
        elif name == "hypertrace_ftrace_page":
            cpu, page, part, parts, chunk = vals
            data = self._assemble((rid, "p", cpu), part, parts, chunk)
            if data is not None:
                self._page(cpu, data)
        else:
            cpu, overrun, dropped, _pages = vals
            s = self._stream(cpu)
            if s is not None:
                # ftrace's counts are per instance: each agent (a restart in the guest is
                # a new one, a new claim) reports its own, added once
                key = (rid, cpu)
                total = min(overrun + dropped, abi.CNT_MAX)
                prev = self.reported.get(key, 0)
                if total > prev and len(self.reported) < MAX_PENDING * 16:
                    self.reported[key] = total
                    s.lose(min(total - prev, abi.CNT_MAX - s.stats.discarded))

    def _text(self, kind: int, text: str) -> None:
        if kind == TEXT_HEADER_PAGE:
            self.layout = ftrace.parse_header_page(text)
        elif kind == TEXT_HEADER_EVENT:
            ftrace.check_header_event(text)
            self.header_ok = True
        elif kind == TEXT_FORMAT and len(self.formats) < MAX_FORMATS:
            fmt = ftrace.parse_format(text)
            if fmt.id in self.formats:
                return
            k = len(self.ids)
            ctf_id = self.base + k
            if ctf_id >= abi.PAD_ID:
                raise ftrace.FtraceError("no event id left for kernel event %s" % fmt.name)
            fields = record_fields(fmt)
            args = ", ".join("%s %s" % (_ctype(f), f.name) for f in fields) or "void"
            decl = abi.parse_signature("%s(%s)" % (fmt.name, args))
            self.formats[fmt.id] = fmt
            self.ids[fmt.id] = (ctf_id, abi.Codec(decl))
            self.plans[fmt.id] = plan(ctf_id, fmt, fields)
            self.events.decls[ctf_id] = decl
            self.changed = True
        else:
            return
        if self.layout is not None and self.header_ok:
            self.decoder = ftrace.PageDecoder(self.layout, self.formats)
            early, self.early = self.early, []
            for cpu, data in early:
                self._page(cpu, data)

    def _stream(self, cpu: int) -> Optional[KernelStream]:
        s = self.streams.get(cpu)
        if s is None:
            if cpu >= 4096:
                self.bad += 1
                return None
            s = self.streams[cpu] = KernelStream(self, cpu)
        return s

    def _page(self, cpu: int, data: bytes) -> None:
        s = self._stream(cpu)
        if s is None:
            return
        if self.decoder is None:
            if len(self.early) < MAX_EARLY:
                self.early.append((cpu, data))   # before the layout: decoded once known
            else:
                self.bad += 1
            return
        self.pages += 1
        last = s.stats.last_ts if s.stats.last_ts is not None else -1
        if _transcode_c is not None:
            try:
                t = _transcode_c(data, astuple(self.layout), self.plans, s.seq, last,
                                 abi.STR_MAX, abi.MAX_TS)
            except ValueError as e:
                raise ftrace.FtraceError(str(e)) from None
        else:
            t = transcode_py(data, self.layout, self.formats, self.plans, s.seq, last)
        self.bad += t[8] + t[9]
        if t[7]:
            s.lose(min(t[7], abi.CNT_MAX))
        s.add_run(t)

    def flush(self) -> None:
        for s in self.streams.values():
            s.flush()


# -- the host's own kernel: the agent run by `hypertrace record --kernel` -------------------
AGENT_START_S = 30.0
AGENT_STOP_S = 15.0


def start_agent(events: str, channel: str, buffer_kb: int = 0):
    """The kernel agent on this host's tracefs, into `channel` (the host region): a
    process of its own, as in a guest. Raises KernelError (one line) if it cannot
    start; returns the process once it traces."""
    import os
    import subprocess
    import sys

    from ..guest.kernel import KernelError, parse_events
    parse_events(events)                     # a bad spec: the error before any process
    if os.geteuid() != 0:
        raise KernelError("--kernel needs root (it traces through tracefs)")
    env = dict(os.environ, HYPERTRACE_CHANNEL=channel)
    p = subprocess.Popen([sys.executable, "-m", "hypertrace.guest.kernel", "--events", events,
                          "--parent", str(os.getpid())]
                         + (["--buffer-kb", str(buffer_kb)] if buffer_kb else []),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         stdin=subprocess.DEVNULL)
    import select
    ready = select.select([p.stdout], [], [], AGENT_START_S)[0]
    line = p.stdout.readline() if ready else b""
    if b"tracing" not in line:
        try:
            p.kill()
        except OSError:
            pass
        err = p.communicate(timeout=AGENT_STOP_S)[1].decode("utf-8", "replace").strip()
        last = err.splitlines()[-1] if err else "it did not start"
        raise KernelError(last.replace("hypertrace kernel agent: error: ", ""))
    return p


def agent_cpu_s(p) -> float:
    """CPU seconds the agent has used so far (user + system), from /proc; 0 if gone."""
    import os
    try:
        with open("/proc/%d/stat" % p.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _remove_instance(pid: int) -> None:
    """A killed agent's ftrace instance (instances/hypertrace-PID, as guest/kernel.py
    names it): stopped and removed here."""
    import os

    from ..guest.kernel import Instance, find_tracefs
    try:
        d = os.path.join(find_tracefs(mount=False), "instances", "hypertrace-%d" % pid)
    except Exception:
        return
    if os.path.isdir(d) and not os.path.islink(d):
        inst = Instance.__new__(Instance)
        inst.dir = d
        inst.close()


def stop_agent(p, drain=None) -> str:
    """Stop the agent (it sends what is left first, waiting for room in its rings: so
    `drain`, the collector's poll, runs meanwhile); its last line of output."""
    import signal
    import subprocess
    import time
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + AGENT_STOP_S
    while drain is not None and p.poll() is None and time.monotonic() < deadline:
        try:
            n = drain()
        except Exception:
            n = 0
            drain = None           # the caller's drain is its own to report
        if not n:
            time.sleep(0.001)
    try:
        _out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        p.kill()
        _out, err = p.communicate()
    _remove_instance(p.pid)         # killed (by us or anyone): it could not remove its own
    text = err.decode("utf-8", "replace").strip()
    return text.splitlines()[-1] if text else ""
