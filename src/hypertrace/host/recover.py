"""`hypertrace recover DIR`: finish a session whose recorder died (kill -9, OOM, a crash).

The recorder publishes a ring's consumed position only for records it has
written to the trace, so what a dead recorder had read but not yet written is
still in the ring, as is everything producers committed afterwards. Recovery
re-attaches to the channel regions named in the session index, drains every
committed record after the published position into new streams of the same
trace (same UUID, same stream classes), recounts the streams already written
from their packets (the index on disk is up to a second old), re-fits the clock
mappings from the clock samples the host domain recorded, and writes metadata
and index again. Producers still running are told the collector has stopped.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from typing import Dict, List

from .. import abi, sessiondir, sessionindex
from ..formats import ctf
from ..read import packets
from . import clock as clockfit
from . import pidfile, runtime
from .collector import SESSION_DIR, Collector
from .reader import RingReader
from .region import Region


class RecoverError(Exception):
    pass


def _file_stats(dir_fd: int, name: str, shown: str, codecs: Dict[int, abi.Codec]) -> dict:
    """Counts of a stream file already written: records, losses, per event, times.
    Read in bounded pieces through the session directory's descriptor (sessiondir):
    a symlink, FIFO or device there is refused, not followed or waited on."""
    st = {"recorded": 0, "discarded": 0, "malformed": 0, "torn": 0, "clamped": 0,
          "first_ts": None, "last_ts": None, "per_event": {}}
    f = sessiondir.StreamBytes(dir_fd, name, shown)

    def head(off: int, n: int) -> bytes:
        buf, i = f.window(off, n)
        return buf[i:i + n]
    try:
        for p in packets.packets_at(head, f.size):
            st["discarded"] = p.discarded
            off = p.start
            while off + abi.REC_HEADER_SIZE <= p.content_end:
                buf, i = f.window(off, abi.REC_HEADER_SIZE)
                eid, sf, _sq, ts = abi.REC_HEADER.unpack_from(buf, i)
                size = sf & abi.REC_SIZE_MASK
                if size < abi.REC_HEADER_SIZE:
                    break
                st["recorded"] += 1
                c = codecs.get(eid)
                name = c.decl.name if c else str(eid)
                st["per_event"][name] = st["per_event"].get(name, 0) + 1
                if st["first_ts"] is None:
                    st["first_ts"] = ts
                st["last_ts"] = ts
                off += size
    except packets.PacketDamage:
        pass                       # counts stop at the damage, where every reader stops
    st["emitted"] = st["recorded"] + st["discarded"]
    return st


def load_index(outdir: str) -> dict:
    """The session index of a directory to recover, read and validated as every
    reader does (sessionindex), plus what recovery itself uses: the trace UUID and
    each domain's channel (an absolute path, opened only if it is a regular file)."""
    idx = os.path.join(outdir, SESSION_DIR, "session.json")
    try:
        dfd = sessiondir.open_dir(outdir, follow=True)
        try:
            meta = sessiondir.open_dir(SESSION_DIR, dfd)
            try:
                raw = sessiondir.read_regular(meta, "session.json", idx,
                                              sessiondir.MAX_INDEX_BYTES)
            finally:
                os.close(meta)
        finally:
            os.close(dfd)
        doc = sessionindex.validate(sessionindex.loads(raw))
        if not re.fullmatch(r"[0-9a-f]{32}", str(doc.get("trace_uuid"))):
            raise sessionindex.IndexInvalid("trace_uuid: missing")
        for i, d in enumerate(doc["domains"]):
            ch = d.get("channel")
            if type(ch) is not str or not ch.startswith("/") or "\0" in ch or len(ch) > 4096:
                raise sessionindex.IndexInvalid("domains[%d].channel: not an absolute path" % i)
    except (OSError, sessiondir.SessionError, sessionindex.IndexInvalid) as e:
        raise RecoverError("%s: no usable session index (%s); the recorder died before "
                           "writing one" % (outdir, getattr(e, "strerror", None) or e)) from None
    return doc


def _own_region(d: dict) -> Region:
    """The channel of domain entry d, if it is still this session's and nobody serves
    it: the region must carry the session id the index recorded (a channel path is
    predictable and reused: `--qemu vm1` by the next recording of vm1), and no live
    collector may be beating in it (another recording's, which recovering would rob
    of its records and files)."""
    sid = d.get("session_id")
    if type(sid) is not str or not re.fullmatch(r"[0-9a-f]{32}", sid):
        raise ValueError("the index names no session id for it")
    region = Region.open(_regular_channel(d["channel"]))
    try:
        if region.header.session_id.hex() != sid:
            raise ValueError("it now belongs to another session")
        if _collector_alive(region):
            raise RecoverError("channel %s is served by a live recorder (not the one of this "
                               "session): refused" % d["channel"])
    except BaseException:
        region.close(remove=False)
        raise
    return region


def _collector_alive(region: Region, wait_s: float = 0.5) -> bool:
    """A running collector bumps the heartbeat at every pass (several per ms when idle);
    one killed leaves it still."""
    def state():
        return region.words.u32(abi.HDR_COLLECTOR), region.words.u64(abi.HDR_HEARTBEAT)
    st, hb = state()
    if st != abi.COLLECTOR_RUNNING:
        return False
    time.sleep(wait_s)
    return state() != (st, hb)


def _regular_channel(path: str) -> str:
    """A channel path from the index, if it is a regular file (not a symlink, FIFO or
    device: the index may come from elsewhere); else ValueError (counted missing)."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("%s is not a regular file" % path)
    return path


def _resume(r: RingReader) -> None:
    """Start reading at the position the dead recorder published, expecting the
    sequence number of the record found there."""
    pos = r.region.words.u64(r.desc + abi.D_CONSUMED)
    commit = r.region.words.u64(r.desc + abi.D_COMMIT)
    r.consumed = r.published = pos
    if commit > pos:
        a = r.base + (pos & (r.lay.ring_size - 1))
        eid, _sf, seq, _ts = abi.REC_HEADER.unpack_from(r.mm, a)
        if eid == abi.PAD_ID:       # the lap's padding: the next record starts the lap
            a = r.base
            eid, _sf, seq, _ts = abi.REC_HEADER.unpack_from(r.mm, a)
        r.seq = seq


def recover(outdir: str, out=None) -> dict:
    try:
        # used through checked descriptors: a symlink planted in it redirects nothing
        top = runtime.Dir.existing(outdir)
        if "metadata" not in top.listdir():
            raise RecoverError("%s holds no trace (no metadata): nothing to recover" % outdir)
        meta = top.sub(SESSION_DIR)
    except OSError as e:
        raise RecoverError("%s: %s" % (outdir, e) if not isinstance(e, runtime.PathError)
                           else str(e)) from None
    old = load_index(outdir)
    domains = old["domains"]
    trace_uuid = bytes.fromhex(old["trace_uuid"])
    try:
        pid = pidfile.recorder_pid(meta)
    except ValueError:
        pid = 0                    # no pid file, or a stale one: the recorder is gone
    if pid and pid != os.getpid():
        raise RecoverError("the recorder of %s (pid %d) is still running: stop it with "
                           "Ctrl-C or SIGTERM instead" % (outdir, pid))
    if old.get("recovered"):
        raise RecoverError("%s was already recovered" % outdir)
    if old.get("stopped"):
        raise RecoverError("%s was stopped cleanly by its recorder: nothing to recover"
                           % outdir)

    try:
        col = Collector(outdir, trace_uuid, fresh=False)
    except OSError as e:
        raise RecoverError(str(e)) from None
    col.started_ns = old.get("started_ns", col.started_ns)
    col.host_offset = old.get("host_clock_offset_ns", col.host_offset)
    existing = sorted(f for f in col.dir.listdir() if re.fullmatch(r".+-\d{4,}", f))
    col.next_instance = 1 + max((int(f.rsplit("-", 1)[1]) for f in existing), default=-1)
    missing: List[str] = []
    regions: List[Region] = []
    for d in sorted(domains, key=lambda d: d["stream_id"]):
        try:
            if d.get("retired"):
                # an earlier boot of a guest: served through the latest boot's region
                raise ValueError("an earlier boot")
            region = _own_region(d)
        except (OSError, ValueError) as e:
            if not d.get("retired"):
                missing.append("%s (%s)" % (d["name"], e))
            dom = ctf.Domain(d["name"], d["stream_id"], d["clock_offset_ns"],
                             "domain %s (its channel is gone)" % d["name"])
            dom.events = {int(i): abi.parse_signature(e["signature"], e.get("format", ""))
                          for i, e in d["events"].items()}
            col.static_domains.append(dom)
            continue
        regions.append(region)
        col.add_region(region, d["name"], pid_check=False, clock_offset=d["clock_offset_ns"],
                       stream_id=d["stream_id"])
    recovered_from: Dict[int, int] = {}
    # a claim made before a boot switch stays its boot's (the collector frees no ring at
    # a switch): the claims the index names keep the domain it gives them
    earlier = {d.name: d for d in col.static_domains}
    bound = {(s.get("ring"), s.get("generation")): earlier[s.get("domain")]
             for s in old.get("streams", []) if s.get("domain") in earlier}
    for src in col.sources:
        src.events.refresh()
        for i in range(src.region.layout.n_rings):
            ident = col._identity(src, i)
            if ident["state"] not in (abi.RING_ACTIVE, abi.RING_RELEASED):
                continue
            r = col._reader(src, i, ident)
            dom = bound.get((i, ident["generation"]))
            if dom is not None and dom.stream_id != src.domain.stream_id:
                r.domain = dom
            _resume(r)
            recovered_from[id(r)] = r.consumed
    col.stop()                     # drains every reader, accounts, writes metadata and index
    new_streams = col.streams()
    # the streams written before the crash, recounted from their packets
    codecs = {s.domain.name: s.events.codecs for s in col.sources}
    for dom in col.static_domains:
        codecs[dom.name] = {i: abi.Codec(d) for i, d in dom.events.items()}
    by_file = {s.get("file"): s for s in old.get("streams", []) if s.get("file")}
    new_files = {s["file"] for s in new_streams if s.get("file")}
    streams = []
    for f in existing:
        if f in new_files:
            continue
        dom = f.rsplit("-", 1)[0]
        st = dict(by_file.get(f, {"file": f, "domain": dom, "ring": None, "pid": None,
                                   "tid": None, "thread": "", "generation": None}))
        try:
            st.update(_file_stats(col.dir.fd, f, os.path.join(outdir, f),
                                  codecs.get(dom, {})))
        except (OSError, sessiondir.SessionError) as e:
            raise RecoverError("%s: %s" % (outdir, getattr(e, "strerror", None) or e)) from None
        streams.append(st)
    for s in new_streams:
        s["recovered"] = True
    index = _index(col, old, streams + new_streams, missing)
    col.meta.replace("session.json", json.dumps(index, indent=1).encode("utf-8"),
                     tmp="session.json.tmp")
    pidfile.remove(col.meta)       # the dead recorder's
    for region in regions:
        region.close(remove=False)
        # the recording is over: the dead recorder's files, only ever in the private
        # runtime directory (the index may come from elsewhere and name any path)
        if runtime.in_runtime_dir(region.path):
            for leftover in (region.path, region.path + ".ctl"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
    rec = sum(s["recorded"] for s in new_streams)
    return {"recovered_events": rec, "recovered_streams": len([s for s in new_streams
                                                               if s.get("file")]),
            "streams_recounted": len(streams), "missing_channels": missing,
            "clocks": {k: v.get("kind") for k, v in index["clocks"].items()}}


def _index(col: Collector, old: dict, streams: List[dict], missing: List[str]) -> dict:
    index = dict(old)
    fresh = json.loads(col.meta.read("session.json"))
    by_name = {d["name"]: d for d in fresh["domains"]}
    index["domains"] = [by_name.get(d["name"], d) for d in old["domains"]]
    index["streams"] = streams
    index["stopped_ns"] = fresh["stopped_ns"]
    index["recovered"] = {"missing_channels": missing,
                          "recovered_events": sum(s["recorded"] for s in streams
                                                  if s.get("recovered"))}
    index["clocks"] = _refit(col, index, streams)
    return index


def _refit(col: Collector, index: dict, streams: List[dict]) -> dict:
    """Clock mappings from the samples the host domain recorded (hypertrace_clock_sample)."""
    from ..read.session import Session, SessionError
    clocks = dict(index.get("clocks") or {})
    tmp = dict(index, clocks={}, streams=streams)
    col.meta.replace("session.json", json.dumps(tmp).encode("utf-8"), tmp="session.json.tmp")
    try:
        s = Session(col.outdir)
    except SessionError:
        return clocks
    samples: Dict[str, list] = {}
    if "host" in s.domains:
        for e in s.events("host"):
            if e.name == "hypertrace_clock_sample":
                f = e.fields
                samples.setdefault(f["domain"], []).append((f["t1"], f["t2"], f["t3"], f["t4"]))
    for d in index["domains"]:
        name = d["name"]
        if name in samples:
            # guarded and bounded like the recorder's own fit (host/clock.py)
            clocks[name] = dict(clockfit.fit_summary(name, samples[name]), refit_by="recover")
        elif name not in clocks:
            clocks[name] = {"kind": "host" if name == "host" else "assumed-host-clock",
                            "offset_ns": 0, "drift_ppm": 0.0,
                            "uncertainty_ns": 0 if name == "host" else None, "samples": 0,
                            "causality_violations": 0, "segments": []}
    return clocks

