"""Reading a recorded session directory: its index, its streams, its events in time order."""

from __future__ import annotations

import heapq
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

from . import abi
from .formats import ctf
from .host import clock


class SessionError(Exception):
    """The directory is not a readable hypertrace session (the message says why)."""


@dataclass
class Event:
    ts: int            # ns on the session's host timeline (since the Unix epoch)
    raw_ts: int        # the producer's own clock
    domain: str
    stream: str
    name: str
    fields: Dict[str, object]
    truncated: bool = False
    ts_uncertainty: Optional[int] = None   # ns, for domains mapped by clock exchanges

    def to_json(self) -> dict:
        f = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in self.fields.items()}
        d = {"ts": self.ts, "raw_ts": self.raw_ts, "domain": self.domain, "stream": self.stream,
             "name": self.name, "fields": f}
        if self.ts_uncertainty is not None:
            d["ts_uncertainty_ns"] = self.ts_uncertainty
        if self.truncated:
            d["truncated"] = True
        return d


class Session:
    def __init__(self, path: str):
        self.path = path
        idx = os.path.join(path, ".hypertrace", "session.json")
        if not os.path.isdir(path):
            raise SessionError("%s: no such directory" % path)
        if not os.path.exists(idx):
            raise SessionError("%s: not a hypertrace session (no .hypertrace/session.json)" % path)
        try:
            with open(idx, encoding="utf-8") as f:
                self.index = json.load(f)
        except (OSError, ValueError) as e:
            raise SessionError("%s: unreadable session index: %s" % (idx, e)) from None
        if not isinstance(self.index, dict) or self.index.get("format") != "hypertrace-session":
            raise SessionError("%s: not a hypertrace session index" % idx)
        try:
            self._load_index()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SessionError("%s: malformed session index (%s: %s)" % (
                idx, type(e).__name__, e)) from None

    def _load_index(self) -> None:
        self.domains = {d["name"]: d for d in self.index["domains"]}
        self.codecs: Dict[str, Dict[int, abi.Codec]] = {}
        for d in self.index["domains"]:
            self.codecs[d["name"]] = {int(i): abi.Codec(abi.parse_signature(e["signature"]))
                                      for i, e in d["events"].items()}
        self.streams = self.index["streams"]
        for st in self.streams:
            f = st.get("file")
            if f is not None and (not isinstance(f, str) or os.path.basename(f) != f
                                  or f.startswith(".") or not f):
                raise ValueError("stream file %r is not a file name in the session" % (f,))
            if st["domain"] not in self.domains:
                raise ValueError("stream of unknown domain %r" % (st["domain"],))
        self.warnings: List[str] = []
        self.clocks = self.index.get("clocks", {})
        host_off = self.index.get("host_clock_offset_ns")
        self.mappers = {}
        self.clock_params = {}      # domain -> (clock segments, offset to the epoch)
        for name, d in self.domains.items():
            summ = self.clocks.get(name, {})
            segs = clock.segments_from(summ) if summ.get("kind") == "estimated" else []
            off = int(host_off if host_off is not None else d["clock_offset_ns"])
            self.clock_params[name] = (segs, off)
            self.mappers[name] = self._mapper(segs, off)

    @staticmethod
    def _mapper(segs, off: int):
        if not segs:
            return lambda raw: (raw + off, None)

        def m(raw: int):
            h, unc = clock.map_time(segs, raw)
            return int(round(h)) + off, int(-(-unc // 1))
        return m

    def to_host(self, domain: str, raw: int) -> int:
        """A domain's raw timestamp on the session's host timeline (ns since the epoch)."""
        return self.mappers[domain](raw)[0]

    def stream_events(self, st: dict) -> Iterator[Event]:
        """Decode one stream file; damage ends the stream with a warning."""
        if not st.get("file"):
            return
        path = os.path.join(self.path, st["file"])
        dom = st["domain"]
        codecs = self.codecs[dom]
        mapper = self.mappers[dom]
        name = st["file"]
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            self.warnings.append("%s: %s" % (path, e.strerror))
            return
        try:
            for p in ctf.packets(data, len(data)):
                off, cend = p.start, p.content_end
                # the file keeps the content up to the last payload byte: pad to whole records
                rend = off + abi.align(cend - off, abi.REC_ALIGN)
                while off + abi.REC_HEADER_SIZE <= cend:
                    eid, sf, _sq, ts = abi.REC_HEADER.unpack_from(data, off)
                    size = sf & abi.REC_SIZE_MASK
                    c = codecs.get(eid)
                    try:
                        if c is None or size < abi.REC_HEADER_SIZE or off + size > rend:
                            raise ValueError("bad header")
                        vals, pend = c.decode(data, off + abi.REC_HEADER_SIZE,
                                              min(off + size, len(data)))
                        if abi.align(pend - off, abi.REC_ALIGN) != size:
                            raise ValueError("size does not match the declaration")
                    except ValueError:
                        self.warnings.append("%s: undecodable record at byte %d" % (name, off))
                        return
                    host_ts, unc = mapper(ts)
                    yield Event(host_ts, ts, dom, name, c.decl.name, dict(zip(c.names, vals)),
                                bool(sf & abi.REC_FLAG_TRUNCATED), unc)
                    off += size
        except ctf.PacketDamage as e:
            self.warnings.append("%s: %s" % (name, e))

    def events(self, domain: Optional[str] = None) -> Iterator[Event]:
        """Every event of the session in host-timeline order."""
        its = [self.stream_events(s) for s in self.streams
               if domain is None or s["domain"] == domain]
        return heapq.merge(*its, key=lambda e: e.ts)
