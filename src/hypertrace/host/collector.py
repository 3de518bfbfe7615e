"""The collector: drains every ring of every region into one CTF session directory."""

from __future__ import annotations

import collections
import errno
import json
import os
import socket
import threading
import time
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from .. import __version__, abi
from ..formats import ctf
from ..guest.channel import pid_alive as _alive
from . import clock as clockfit
from . import runtime
from .control import DomainClock
from .errors import ErrorLog, describe
from .kernel import AGENT_THREAD, KernelSource
from .probes import Probes
from .reader import EventTable, RingReader, count_records, packet_parts
from .region import Region

SESSION_DIR = ".hypertrace"          # side files: babeltrace2 ignores hidden folders' files
PID_CHECK_S = 0.5
RESERVE = "room.reserve"             # in SESSION_DIR: room held back for the index
RESERVE_BYTES = 1 << 20
PART_BYTES = 64 * 1024    # packets written after the disk refused a larger one
METADATA_GAP_S = 0.25                # new declarations reach the metadata this late at most
MAX_STREAMS = 4096                   # claims per region served: a guest cannot make more
LOSSES = ("lost_without_ring", "declarations_refused", "lost_in_refused_claims")
#: the losses of records among them, as hypertrace:lost names them (a refused
#: declaration counts tracepoints, not records)
PROBE_KINDS = {"lost_without_ring": "no_ring", "lost_in_refused_claims": "claims_refused"}
MAX_BOOTS = 64                       # boots of one guest served in a session (one domain each)
#: stream files kept open at once: the least recently written are closed (and reopened
#: for appending when written again), so producers cannot exhaust descriptors
MAX_OPEN_FILES = 64


def clock_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few samples."""
    return clockfit.realtime_offset(9)[0]


class Source:
    """One region being served: its event table, rings and CTF stream class."""

    def __init__(self, region: Region, domain: ctf.Domain, pid_check: bool):
        self.region = region
        self.domain = domain
        self.events = EventTable(region)
        self.readers: List[Optional[RingReader]] = [None] * region.layout.n_rings
        self.pid_check = pid_check
        self.next_pid_check = 0.0
        self.finished: List[RingReader] = []
        self.claims = 0
        self.refused = 0
        # the claim budget (MAX_STREAMS in all): each ring has a reserve of its own,
        # the rest is shared, so one ring's churn (a producer rewriting its generation
        # word) cannot use up the claims of the others
        n = region.layout.n_rings
        self.reserve = max(1, MAX_STREAMS // (2 * n))
        self.pool = max(0, MAX_STREAMS - self.reserve * n)
        self.ring_claims = [0] * n
        self.ring_refused = [0] * n
        self.refused_gen: List[Optional[int]] = [None] * n   # the claim refused on ring i
        # the claim last finished on ring i: never read twice (a claim's stream is one
        # stream, whatever its state word says after)
        self.done_gen: List[Optional[int]] = [None] * n
        # losses the producers counted in the region (ABI 1.4 counter slots), per domain
        self.losses: Dict[str, Dict[str, int]] = {}
        self.counted = (0, 0)                # the slots' sums at the last look
        self.guest = domain.name             # the domain's name at its first boot
        self.past: List[ctf.Domain] = []     # domains of earlier boots of this guest
        #: boots handed over by a control thread: (domain, the claims made before its hello)
        self.boots_pending: List[Tuple[ctf.Domain, Dict[int, int]]] = []
        #: the kernel events its kernel agent sends (host/kernel.py), once it sends any
        self.kernel: Optional[KernelSource] = None

    def all_domains(self) -> List[ctf.Domain]:
        return self.past + [self.domain]


class Collector:
    def __init__(self, outdir: str, trace_uuid: Optional[bytes] = None, fresh: bool = True):
        """`fresh`: a new session directory (created now, or empty and ours); else an
        existing session of ours (recovery). Every file goes through the checked
        descriptors `dir` and `meta` (host/runtime.py), never through a path."""
        self.outdir = outdir
        self.dir = runtime.Dir.fresh(outdir) if fresh else runtime.Dir.existing(outdir)
        try:
            self.meta = self.dir.sub(SESSION_DIR, create=fresh)
        except BaseException:
            self.dir.close()
            raise
        self._keep_room()
        self.trace_uuid = trace_uuid or os.urandom(16)
        #: domains in the metadata without a region (recovery, when a channel is gone)
        self.static_domains: List[ctf.Domain] = []
        self.sources: List[Source] = []
        self.files: Dict[int, ctf.StreamFile] = {}
        self.stream_info: Dict[int, dict] = {}
        self.next_instance = 0
        self.beats = 0
        self.metadata_due = 0.0
        self.started_ns = time.time_ns()
        self.snapshots = 0
        #: problems of components and peers (bounded; the index's `errors`)
        self.errors = ErrorLog()
        self.host_offset = clock_offset_ns()       # CLOCK_REALTIME - CLOCK_MONOTONIC
        self.clocks: Dict[str, DomainClock] = {}   # domains whose clock is estimated
        self.clock_summary: Dict[str, dict] = {}
        #: losses of a domain that no region counts (QEMU user mode's log lines): name ->
        #: a function giving counts the domain's index entry carries (losses.explain)
        self.domain_losses: Dict[str, Callable[[], dict]] = {}
        self.extra_index: Dict[str, object] = {     # sections other parts add (control, ...)
            "errors_total": lambda: self.errors.summary()}
        #: ids of readers whose stream file is open now, least recently written first
        self.open_files: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.file_ids: Dict[int, tuple] = {}        # reader id -> (st_dev, st_ino) of its file
        self.unwritten_records = 0                  # records of packets that were not written
        #: set when the trace cannot be written (a full disk): recording must stop
        self.write_error: Optional[str] = None
        self.unwritten = 0          # packets dropped after a write error
        #: called with (source, validated records) as rings are drained (triggers)
        self.watch: Optional[Callable[[Source, bytes], None]] = None
        #: the USDT probes (bpftrace, SystemTap): events, losses, declarations, syncs
        self.probes = Probes()
        self.boot_lock = threading.Lock()
        self.stopped = False         # stop() drained and accounted for everything
        #: (session id, domain, lost, refused) from producers' goodbyes (control threads)
        self.reported: List[tuple] = []

    # -- setup -----------------------------------------------------------------
    def add_region(self, region: Region, domain: str, pid_check: bool = True,
                   clock_offset: Optional[int] = None, description: str = "",
                   stream_id: Optional[int] = None) -> Source:
        dom = ctf.Domain(domain, len(self.sources) if stream_id is None else stream_id,
                         self.host_offset if clock_offset is None else clock_offset,
                         description or "CLOCK_MONOTONIC of domain %s" % domain)
        src = Source(region, dom, pid_check)
        if self.probes.mod is not None:
            src.events.on_declare = lambda i, d, src=src: self.probes.declare(
                src.domain.name, i, d.name, d.signature)
        self.sources.append(src)
        region.set_collector(abi.COLLECTOR_RUNNING)
        self.write_metadata()
        return src

    def new_boot(self, src: Source) -> Optional[str]:
        """A guest rebooted (its clock restarted): name the domain of its new boot, which
        the collector loop switches to at its next pass; None past MAX_BOOTS. Called
        from a control connection's thread, before the hello is answered: the claims
        on the rings now are the previous boots' (the guest library says hello before
        it claims), the ones made after belong to the new boot."""
        with self.boot_lock:
            k = len(src.past) + len(src.boots_pending) + 2
            if k > MAX_BOOTS:
                return None
            doms = [d for s in self.sources for d in s.all_domains()] + [
                d for s in self.sources for d, _ in s.boots_pending]
            sid = 1 + max(d.stream_id for d in doms + self.static_domains)
            name = "%s.boot%d" % (src.guest, k)
            while any(d.name == name for d in doms + self.static_domains):
                name += "_"            # a guest already named like that
            dom = ctf.Domain(name, sid, self.host_offset,
                             "CLOCK_MONOTONIC of boot %d of guest %s" % (k, src.guest))
            src.boots_pending.append((dom, self._claims_now(src)))
            return dom.name

    @staticmethod
    def _claims_now(src: Source) -> Dict[int, int]:
        """ring -> generation of every claim in the region now (one copy of the table)."""
        lay = src.region.layout
        raw = bytes(src.region.mm[lay.desc_off:lay.desc_off + lay.n_rings * abi.DESC_SIZE])
        words = np.frombuffer(raw, dtype="<u4")
        state = words[abi.D_STATE // 4::abi.DESC_SIZE // 4]
        gen = words[abi.D_GENERATION // 4::abi.DESC_SIZE // 4]
        busy = np.flatnonzero((state == abi.RING_ACTIVE) | (state == abi.RING_RELEASED))
        return {int(i): int(gen[i]) for i in busy}

    def _switch_boot(self, src: Source) -> None:
        """Serve the source as the new boot's domain. No ring is freed: a hello names a
        boot, it proves nothing about who is alive (any co-producer can send one), and
        since ABI 1.4 a dead producer's ring is found by the guest library (its lock is
        free) and handed back like any released one. The claims made before the hello
        stay bound to the domain of their boot, drained and finished as usual (released,
        reclaimed, their pid dead, or at the stop); only claims seen after it are the
        new boot's."""
        with self.boot_lock:
            pending, src.boots_pending = src.boots_pending, []
        for dom, claimed in pending:
            for i, gen in sorted(claimed.items()):
                r = src.readers[i]
                if r is not None and r.generation == gen:
                    continue                     # bound to its domain already
                ident = self._identity(src, i)
                if ident["generation"] != gen or ident["state"] not in (
                        abi.RING_ACTIVE, abi.RING_RELEASED):
                    continue                     # gone since: the loop deals with it
                if r is not None:                # reclaimed behind our back
                    self._finish(src, r, gone=False)
                    src.readers[i] = None
                if self._serve(src, i, gen):
                    self._reader(src, i, ident)  # the boot before this hello's
            src.past.append(src.domain)
            src.domain = dom
        self.write_metadata()

    def _reader(self, src: Source, i: int, ident: dict) -> RingReader:
        """A reader for ring i's current claim, bound to the source's current domain."""
        r = src.readers[i] = RingReader(src.region, src.events, i, ident["generation"],
                                        ident, self._sink)
        r.domain = src.domain
        if self.probes.mod is not None:
            r.probes = self.probes
        watch = self.watch
        if ident["thread"].startswith(AGENT_THREAD):
            # the kernel agent's thread (guest/kernel.py): its pages are decoded
            if src.kernel is None:
                src.kernel = KernelSource(src, self._sink, src.region.layout.max_events)
            kern = src.kernel

            def both(content, src=src, r=r):
                if watch is not None:
                    watch(src, content)
                try:
                    kern.feed(r, content)
                except Exception as e:           # peer data: counted, never raised
                    kern.bad += 1
                    self.errors.add("kernel events of %s: %s" % (src.domain.name,
                                                                 describe(e)))
            r.watch = both
        elif watch is not None:
            r.watch = lambda content, src=src: watch(src, content)
        return r

    def domain_guest(self, name: str) -> str:
        """The guest a domain belongs to (`vm1` for `vm1.boot2`)."""
        for src in self.sources:
            if any(d.name == name for d in src.all_domains()):
                return src.guest
        return name

    # -- the loop body --------------------------------------------------------------
    def poll(self, drain_overwrite: bool = False) -> int:
        """One pass over every ring; returns the number of records taken."""
        n = 0
        self.beats += 1
        now = time.monotonic()
        for src in self.sources:
            self._count_losses(src)      # before a boot switch: the counts are the old boot's
            if src.boots_pending:
                self._switch_boot(src)
            src.region.beat(self.beats)
            src.events.refresh()
            check = src.pid_check and now >= src.next_pid_check
            if check:
                src.next_pid_check = now + PID_CHECK_S
            # a guest declaring thousands of events (QEMU's trace-events-all: 1.4 MB of
            # metadata, 35 ms to write) would have it rewritten at every poll: at most
            # every METADATA_GAP_S here; a packet that uses a new id still gets it
            # written first (_sink)
            if src.events.changed and now >= self.metadata_due:
                self.write_metadata()
            for i in self._busy_rings(src):
                n += self._poll_ring(src, i, check, drain_overwrite)
        return n

    @staticmethod
    def _busy_rings(src: Source):
        """Rings worth a look: claimed ones and ones we still read (one copy of the
        descriptor table instead of a read per ring)."""
        lay = src.region.layout
        raw = src.region.mm[lay.desc_off:lay.desc_off + lay.n_rings * abi.DESC_SIZE]
        state = np.frombuffer(raw, dtype="<u4")[abi.D_STATE // 4::abi.DESC_SIZE // 4]
        busy = set(np.flatnonzero(state != abi.RING_FREE).tolist())
        busy.update(i for i, r in enumerate(src.readers) if r is not None)
        return sorted(busy)

    def _identity(self, src: Source, i: int) -> dict:
        d = src.region.layout.desc(i)
        wd = src.region.words
        # the state first: the producer writes it last (a claim) or alone (a release)
        state = wd.u32(d + abi.D_STATE)
        gen = wd.u32(d + abi.D_GENERATION)
        pid, tid = wd.u32(d + abi.D_PID), wd.u32(d + abi.D_TID)
        claim_ts = wd.u64(d + abi.D_CLAIM_TS)
        nm = d + abi.D_THREAD_NAME
        raw = bytes(src.region.mm[nm:nm + abi.THREAD_NAME_LEN])
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        name = "".join(c if c.isprintable() else "?" for c in name)
        return {"state": state, "generation": gen, "pid": pid, "tid": tid,
                "claim_ts": claim_ts, "thread": name}

    def _poll_ring(self, src: Source, i: int, check_pids: bool, drain_overwrite: bool) -> int:
        ident = self._identity(src, i)
        state = ident["state"]
        r = src.readers[i]
        if r is None and state not in (abi.RING_ACTIVE, abi.RING_RELEASED):
            return 0
        if r is None and src.done_gen[i] == ident["generation"]:
            if state == abi.RING_RELEASED:
                self._free_ring(src, i)          # finished already: only hand it back
            return 0
        if r is not None and (r.generation != ident["generation"] or state == abi.RING_FREE):
            self._finish(src, r, gone=False)     # reclaimed behind our back
            r = src.readers[i] = None
            if state not in (abi.RING_ACTIVE, abi.RING_RELEASED):
                return 0
        gone = state == abi.RING_RELEASED or (
            check_pids and state == abi.RING_ACTIVE and not _alive(ident["pid"]))
        if r is None:
            if not self._serve(src, i, ident["generation"]):
                if gone:
                    # not drained, but counted: the producer's own count of its records
                    emitted = src.region.words.u64(src.region.layout.desc(i) + abi.D_EMITTED)
                    self._loss(src, "lost_in_refused_claims", min(emitted, abi.CNT_MAX))
                    src.refused_gen[i] = None
                    self._free_ring(src, i)    # so that the ring serves later claims
                return 0
            r = self._reader(src, i, ident)
        n = 0
        if gone or not r.overwrite or drain_overwrite:
            n = r.drain()
        if gone:
            self._finish(src, r, gone=True)
            src.readers[i] = None
            self._free_ring(src, i)
        return n

    def _serve(self, src: Source, i: int, gen: int) -> bool:
        """Whether claim `gen` of ring i is drained: admitted once, when first seen, or
        refused (and counted as such) for as long as it lasts."""
        if src.refused_gen[i] != gen and not self._admit(src, i):
            src.refused_gen[i] = gen
            src.refused += 1
            src.ring_refused[i] += 1
        return src.refused_gen[i] != gen

    @staticmethod
    def _admit(src: Source, i: int) -> bool:
        """Whether a new claim on ring i is served: within the ring's reserve, or while
        the shared part of the budget lasts."""
        if src.ring_claims[i] >= src.reserve:
            if src.pool <= 0:
                return False
            src.pool -= 1
        src.ring_claims[i] += 1
        src.claims += 1
        return True

    def _loss(self, src: Source, kind: str, n: int) -> None:
        if n > 0:
            d = src.losses.setdefault(src.domain.name, dict.fromkeys(LOSSES, 0))
            d[kind] += n
            if kind in PROBE_KINDS:
                self.probes.lost(src.domain.name, -1, -1, n, PROBE_KINDS[kind])

    def reported_losses(self, session_id: bytes, domain: str, lost: int,
                        refused: int) -> None:
        """A producer's goodbye carried the counts it could not add to the region's
        counter slots (ABI 1.4: every slot held by someone else). Called from a control
        connection's thread; taken into the domain's counts by the collector loop. Each
        value is bounded like a slot's: a guest can only inflate its own domain's."""
        self.reported.append((session_id, domain, min(lost, abi.CNT_MAX - 1),
                              min(refused, abi.CNT_MAX - 1)))

    def _take_reported(self, src: Source) -> None:
        sid = src.region.header.session_id
        mine = [x for x in list(self.reported) if x[0] == sid]
        for x in mine:
            self.reported.remove(x)
            d = src.losses.setdefault(x[1], dict.fromkeys(LOSSES, 0))
            d["lost_without_ring"] += x[2]
            d["declarations_refused"] += x[3]
            self.probes.lost(x[1], -1, -1, x[2], PROBE_KINDS["lost_without_ring"])

    def _count_losses(self, src: Source) -> None:
        """Take what the producers added to the region's counter slots since the last
        look (ABI 1.4). Slots beyond CNT_MAX are scribble and left out; a sum that went
        down (a slot scribbled or zeroed) only moves the baseline."""
        wd = src.region.words
        lost = refused = 0
        for c in range(abi.N_CNT):
            off = abi.CNT_OFF + c * abi.CNT_SIZE
            a, b = wd.u64(off), wd.u64(off + 8)
            if a < abi.CNT_MAX and b < abi.CNT_MAX:
                lost += a
                refused += b
        self._loss(src, "lost_without_ring", lost - src.counted[0])
        self._loss(src, "declarations_refused", refused - src.counted[1])
        src.counted = (lost, refused)
        if self.reported:
            self._take_reported(src)

    @staticmethod
    def _free_ring(src: Source, i: int) -> None:
        """Hand a drained ring back for the next claim: consumed back to 0 first."""
        d = src.region.layout.desc(i)
        src.region.words.set_u64(d + abi.D_CONSUMED, 0)
        src.region.words.set_u32(d + abi.D_STATE, abi.RING_FREE)

    def _finish(self, src: Source, r: RingReader, gone: bool) -> None:
        src.done_gen[r.index] = r.generation
        r.finish(gone)
        src.finished.append(r)
        # the stream ended (its producer is gone or its ring was reclaimed): this reader
        # never writes again, so its file is closed now, not at the end of the session
        self._park(id(r))

    # -- stream files: a bounded set open at once ---------------------------------------
    def _park(self, key: int) -> None:
        """Close a stream file's descriptor; _reopen appends to it if it is written again."""
        self.open_files.pop(key, None)
        f = self.files.get(key)
        if f is not None and not f.f.closed:
            try:
                f.f.close()
            except OSError:
                pass

    def _reopen(self, r: RingReader):
        """The reader's open stream file, reopened for appending if it was parked; None
        if it has none yet. The file must still be the one created (same inode, not a
        symlink put in its place): otherwise OSError, and the packet is counted lost."""
        key = id(r)
        f = self.files.get(key)
        if f is None or not f.f.closed:
            return f
        self._bound_open(MAX_OPEN_FILES - 1)
        # through the session directory's descriptor, never blocking (a FIFO put there)
        fd = os.open(os.path.basename(f.path), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW |
                     os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self.dir.fd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.file_ids.get(key) or st.st_size != f.bytes:
                raise OSError(errno.ESTALE, "stream file %s was replaced or changed" % f.path)
            f.f = os.fdopen(fd, "wb", buffering=0)
        except BaseException:
            os.close(fd)
            raise
        return f

    def _bound_open(self, n: int) -> None:
        """Park the least recently written stream files until at most n are open."""
        while len(self.open_files) > n:
            self._park(next(iter(self.open_files)))

    def _written(self, r: RingReader) -> None:
        key = id(r)
        f = self.files.get(key)
        if key not in self.file_ids and f is not None:
            st = os.fstat(f.f.fileno())
            self.file_ids[key] = (st.st_dev, st.st_ino)
        self.open_files[key] = None
        self.open_files.move_to_end(key)
        self._bound_open(MAX_OPEN_FILES)

    def _lost_packet(self, r: RingReader, content, why: str) -> None:
        """A packet that was not written: its records are counted as unwritten, not
        recorded, so the index says what the files hold."""
        n = count_records(r, content)
        self.unwritten += 1
        self.unwritten_records += n
        if n and isinstance(r, RingReader):
            self.probes.lost(r.domain.name, r.index, r.identity.get("tid", -1), n,
                             "unwritten")
        if why:
            self.errors.add(why)

    def _write_failed(self, what: str, e: OSError) -> None:
        if self.write_error is None:
            self.write_error = "cannot write %s: %s" % (what, e.strerror or e)
        self._free_room()         # the index that says so must still fit

    def _keep_room(self) -> None:
        """Hold back some room for the session index: streams that fill the disk stop
        being written (counted as unwritten), the index is still written whole. A
        placeholder file, given back at the first write error and at the end."""
        size = RESERVE_BYTES
        while size >= 4096:
            try:
                fd = self.meta.create(RESERVE)
            except OSError:
                return
            try:
                os.posix_fallocate(fd, 0, size)
                return
            except OSError:
                self.meta.unlink(RESERVE)
                size //= 2
            finally:
                os.close(fd)

    def _free_room(self) -> None:
        try:
            self.meta.unlink(RESERVE)
        except OSError:
            pass

    def _sink(self, r: RingReader, content: bytes, ts_begin: int, ts_end: int,
              discarded: int, tail_pad: int) -> None:
        if self.write_error is not None:
            self._lost_packet(r, content, "")
            return
        if any(s.events.changed or (s.kernel is not None and s.kernel.changed)
               for s in self.sources):
            self.write_metadata()   # before any packet that may use a new event id
            if self.write_error is not None:
                self._lost_packet(r, content, "")
                return
        for attempt in range(2):
            try:
                self._write_packet(r, content, ts_begin, ts_end, discarded, tail_pad)
                self._written(r)
                return
            except OSError as e:
                name = self.stream_info.get(id(r), {}).get("file", "a stream")
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    # out of descriptors: not the end of the recording. Close the other
                    # stream files and try once more, else this packet is lost (counted)
                    if attempt == 0:
                        self._bound_open(0)
                        continue
                    self._lost_packet(r, content, "cannot open stream file %s: %s" % (
                        name, e.strerror or e))
                elif e.errno == errno.ESTALE:
                    self._lost_packet(r, content, str(e))
                else:
                    kept = 0
                    if e.errno == errno.ENOSPC and isinstance(r, RingReader):
                        kept = self._write_parts(r, content, discarded)
                    self._write_failed(name, e)
                    self._lost_packet(r, content[kept:], "")
                return

    def _write_parts(self, r: RingReader, content, discarded: int) -> int:
        """A packet the disk could not take whole (a drain of a full ring is one packet
        of megabytes): write it in small packets while they fit, so a nearly full disk
        keeps what it has room for. Returns the bytes of `content` written."""
        if len(content) <= PART_BYTES:
            return 0
        kept = 0
        for start, end, last, ts0, ts1 in packet_parts(content, PART_BYTES):
            part = content[start:end]
            try:
                self._write_packet(r, part, ts0, ts1, discarded,
                                   len(part) - r.payload_end(part, last - start))
            except OSError:
                break
            kept = end
        if kept:
            self._written(r)
        return kept

    def _write_packet(self, r: RingReader, content: bytes, ts_begin: int, ts_end: int,
                      discarded: int, tail_pad: int) -> None:
        f = self._reopen(r)
        if f is None:
            inst = self.next_instance
            self.next_instance += 1
            name = "%s-%04d" % (r.domain.name, inst)
            f = self.files[id(r)] = ctf.StreamFile(self.dir.create(name), self.dir.join(name),
                                                   self.trace_uuid, r.domain.stream_id, inst)
            self.stream_info[id(r)] = {"file": name, "domain": r.domain.name,
                                       "ring": r.index, "reader": r}
            if discarded:
                # babeltrace2 can only place losses between two packets: open the
                # stream with an empty packet that has lost nothing yet
                f.packet(b"", ts_begin, ts_begin, 0)
        f.packet(content, ts_begin, ts_end, discarded, tail_pad)

    def flush(self) -> None:
        for src in self.sources:
            for r in src.readers:
                if r is not None:
                    r.flush()
            if src.kernel is not None:
                src.kernel.flush()
        for key in self.open_files:
            self.files[key].flush()

    def snapshot(self) -> int:
        """Overwrite mode: write the rings' current contents into the session."""
        n = self.poll(drain_overwrite=True)
        self.flush()
        self.snapshots += 1
        self.write_index()
        return n

    # -- the end --------------------------------------------------------------------
    def stop(self) -> None:
        """Drain everything committed, account for every producer, write the index."""
        for src in self.sources:
            if src.boots_pending:
                self._switch_boot(src)
            src.events.refresh()
            for i, r in enumerate(src.readers):
                # one ring's failure must not cost the others their final drain
                try:
                    ident = self._identity(src, i)
                    if r is None:
                        if ident["state"] not in (abi.RING_ACTIVE, abi.RING_RELEASED):
                            continue
                        r = self._reader(src, i, ident)
                    r.drain()
                    gone = ident["state"] == abi.RING_RELEASED or not (
                        src.pid_check and _alive(ident["pid"]))
                    self._finish(src, r, gone)
                except Exception as e:
                    self.errors.add("final drain of %s ring %d: %s" % (src.domain.name, i,
                                                                       describe(e)))
                src.readers[i] = None
            if src.kernel is not None:
                try:
                    src.kernel.flush()
                except Exception as e:
                    self.errors.add("kernel events of %s: %s" % (src.domain.name, describe(e)))
                if src.kernel.bad:
                    self.errors.add("kernel events of %s: %d texts, pages or events could "
                                    "not be decoded" % (src.domain.name, src.kernel.bad))
            self._count_losses(src)
            src.region.set_collector(abi.COLLECTOR_STOPPED)
        for key in list(self.open_files):
            self._park(key)
        self.fit_clocks()
        self.write_metadata()
        self.stopped = True          # the index says so: `recover` has nothing to do
        self.write_index()
        self._free_room()

    def fit_clocks(self) -> None:
        """Map every domain onto the host clock; CTF clocks get the offset (not the drift).
        Each domain on its own: one whose exchanges fit no mapping (or whose fit fails) is
        "unfitted", with the reason, and keeps the host clock's offset (its events show
        their raw timestamps, without an uncertainty); the others are fitted as usual."""
        for dom in [d for src in self.sources for d in src.all_domains()]:
            name = dom.name
            dc = self.clocks.get(name)
            try:
                summ = self._fit_clock(dom, dc)
            except Exception as e:      # never the stop's failure, nor another domain's
                summ = {"kind": "unfitted", "reason": "the fit failed: %s" % describe(e),
                        "offset_ns": None, "drift_ppm": None, "uncertainty_ns": None,
                        "samples": len(dc.samples) if dc is not None else 0,
                        "causality_violations": 0, "segments": []}
                dom.clock_offset_ns = self.host_offset
            if summ["kind"] == "unfitted":
                self.errors.add("clock of domain %s not fitted: %s" % (name, summ["reason"]))
                dom.description = ("domain %s clock: not fitted (%s); raw timestamps on "
                                   "the host's clock" % (name, summ["reason"]))
            if dc is not None:
                summ.update(rejected_samples=dc.rejected_samples, control_errors=dc.errors,
                            mailbox_samples=dc.mailbox_samples,
                            control_connections=dc.connections,
                            sync_points=dc.syncs_seen,
                            # messages of this guest (all its boots) that waited for tokens
                            control_throttled=dc.budget.throttled)
            self.clock_summary[name] = summ

    def _fit_clock(self, dom: ctf.Domain, dc: Optional[DomainClock]) -> dict:
        name = dom.name
        if name == "host":
            return {"kind": "host", "offset_ns": 0, "drift_ppm": 0.0, "uncertainty_ns": 0,
                    "samples": 0, "causality_violations": 0, "segments": []}
        if dc is None or not dc.samples:
            # no exchanges: a same-host producer shares the host's CLOCK_MONOTONIC
            return {"kind": "assumed-host-clock", "offset_ns": 0, "drift_ppm": 0.0,
                    "uncertainty_ns": None, "samples": 0, "causality_violations": 0,
                    "segments": []}
        summ = clockfit.fit_summary(name, dc.samples)
        if summ["kind"] == "estimated":
            offset = self.host_offset + summ["offset_ns"]
            if abs(offset) >= clockfit.MAX_TS:      # what a reader accepts (sessionindex)
                return dict(summ, kind="unfitted", offset_ns=None, drift_ppm=None,
                            uncertainty_ns=None, segments=[], reason=(
                                "offset %d ns out of range" % summ["offset_ns"]))
            dom.clock_offset_ns = offset
            dom.description = (
                "domain %s clock: host offset %d ns, drift %.3f ppm (not expressible "
                "in CTF 1.8), uncertainty %s ns" % (name, summ["offset_ns"],
                                                    summ["drift_ppm"], summ["uncertainty_ns"]))
        return summ

    # -- session files ------------------------------------------------------------------
    def write_metadata(self) -> None:
        for src in self.sources:
            kern = src.kernel.events.decls if src.kernel is not None else {}
            for d in src.all_domains():
                d.events = {**src.events.decls, **kern}
            src.events.changed = False
            if src.kernel is not None:
                src.kernel.changed = False
        if self.write_error is not None:
            return        # no packet is written any more: the room is the index's
        env = {"tracer_name": "hypertrace", "tracer_version": __version__,
               "hostname": socket.gethostname(), "trace_name": os.path.basename(
                   os.path.abspath(self.outdir))}
        try:
            doms = sorted([d for s in self.sources for d in s.all_domains()] +
                          self.static_domains,
                          key=lambda d: d.stream_id)
            ctf.write_metadata(self.dir, ctf.metadata(self.trace_uuid, doms, env))
        except OSError as e:
            self._write_failed("the trace metadata", e)
        self.metadata_due = time.monotonic() + METADATA_GAP_S

    def streams(self) -> List[dict]:
        out = []
        for info in self.stream_info.values():
            r = info["reader"]
            st = asdict(r.stats)
            per: Dict[str, int] = {}
            for k, v in st["per_event"].items():   # two ids may name one event (§3)
                if k in r.events.decls:
                    per[r.events.decls[k].name] = per.get(r.events.decls[k].name, 0) + v
            st["per_event"] = per
            out.append({"file": info["file"], "domain": info["domain"], "ring": info["ring"],
                        **{k: r.identity[k] for k in ("pid", "tid", "thread", "generation")},
                        **st})
        # producers that never got a packet (everything lost) still count
        for src in self.sources:
            for r in src.finished:
                if id(r) not in self.stream_info and (r.stats.discarded or r.stats.malformed
                                                      or r.stats.torn or r.stats.unwritten):
                    st = asdict(r.stats)
                    st["per_event"] = {}
                    out.append({"file": None, "domain": r.domain.name, "ring": r.index,
                                **{k: r.identity[k] for k in ("pid", "tid", "thread",
                                                              "generation")}, **st})
        return out

    def domain_entries(self) -> List[dict]:
        """The index's entry of every domain: its channel's settings, events, claims
        and the losses no stream holds."""
        doms = []
        for src, dom in [(s, d) for s in self.sources for d in s.all_domains()]:
            h = src.region.header
            doms.append({
                "name": dom.name, "stream_id": dom.stream_id,
                "clock_offset_ns": dom.clock_offset_ns,
                # an earlier boot's domain: new claims go to the latest boot's
                **({"guest": src.guest, "retired": True} if dom is not src.domain else {}),
                "channel": src.region.path, "session_id": h.session_id.hex(),
                "mode": abi.MODE_NAMES[h.mode],
                "rings": h.n_rings, "ring_size": h.ring_size,
                # the producers' events, then the kernel's (ids above the region's)
                "events": {str(i): {"name": d.name, "signature": d.signature,
                                    **({"format": d.fmt} if d.fmt else {})}
                           for i, d in sorted({**src.events.decls, **(
                               src.kernel.events.decls if src.kernel is not None else {})
                           }.items())},
                "rejected_declarations": {str(k): v for k, v in src.events.bad.items()},
                "claims": src.claims, "claims_refused": src.refused,
                "claims_refused_per_ring": {str(i): n for i, n in enumerate(src.ring_refused)
                                            if n},
                # records no stream holds: dropped while the producer had no ring, and in
                # claims past the budget; tracepoints whose declaration was refused
                **src.losses.get(dom.name, dict.fromkeys(LOSSES, 0)),
                **(self.domain_losses[dom.name]() if dom.name in self.domain_losses else {}),
            })
        return doms

    def write_index(self) -> None:
        doms = self.domain_entries()
        index = {"format": "hypertrace-session", "version": 1, "hypertrace": __version__,
                 "trace_uuid": self.trace_uuid.hex(), "hostname": socket.gethostname(),
                 "started_ns": self.started_ns,
                 "stopped_ns": time.time_ns(), "snapshots": self.snapshots,
                 "host_clock_offset_ns": self.host_offset,
                 "clocks": self.clock_summary,
                 # a control thread may add a rebooted guest's clock meanwhile; the
                 # last sync points of each (bounded: host/control.py), and how many not
                 "syncs": {k: v.sync_list() for k, v in list(self.clocks.items())},
                 "syncs_dropped": {k: v.syncs_dropped for k, v in list(self.clocks.items())
                                   if v.syncs_dropped},
                 "domains": doms, "streams": self.streams(), "errors": self.errors,
                 **{k: (v() if callable(v) else v) for k, v in self.extra_index.items()}}
        if self.stopped:
            index["stopped"] = True
        if self.write_error is not None:
            index["write_error"] = self.write_error
        if self.unwritten:
            index["packets_not_written"] = self.unwritten
            index["records_not_written"] = self.unwritten_records
        data = json.dumps(index, indent=1).encode("utf-8")
        try:
            try:
                self.meta.replace("session.json", data, tmp="session.json.tmp")
            except OSError:
                self._free_room()          # no room left: the held-back room is for this
                self.meta.replace("session.json", data, tmp="session.json.tmp")
        except OSError as e:
            # the previous index (a second old at most) stays in place
            self._write_failed("the session index", e)
