"""Reading a recorded session directory: its index, its streams, its events in time order."""

from __future__ import annotations

import errno
import hashlib
import heapq
import math
import os
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional

from .. import abi, sessiondir, sessionindex
from ..sessiondir import SessionError
from . import clockmap, packets

__all__ = ["Event", "Session", "SessionError"]

MONO_LIMIT = float((1 << 62) - 4096)   # a mapped producer time, before the epoch offset
UNC_LIMIT = float(1 << 62)
#: bytes of stream files held by a merge of every stream (events()), whatever their count:
#: each stream's window is this divided by the count, at least WINDOW_MIN (beyond
#: READ_BUDGET / WINDOW_MIN streams, the least recently used windows are read again)
READ_BUDGET = 32 << 20
WINDOW_MIN = 4 << 10


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
        f = {k: json_value(v) for k, v in self.fields.items()}
        d = {"ts": self.ts, "raw_ts": self.raw_ts, "domain": self.domain, "stream": self.stream,
             "name": self.name, "fields": f}
        if self.ts_uncertainty is not None:
            d["ts_uncertainty_ns"] = self.ts_uncertainty
        if self.truncated:
            d["truncated"] = True
        return d


def json_value(v):
    """A field's value as JSON can hold it: bytes in hex, and a float that is not finite
    as JavaScript writes it ("NaN", "Infinity", "-Infinity"): JSON has no such numbers
    (json.dumps would write bare NaN, which JSON.parse and jq refuse)."""
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return v


class Session:
    """A session directory, opened and validated: every file is reached through a
    descriptor of the directory (sessiondir), the index is bounded and checked
    field by field (sessionindex). Bad input raises SessionError with one line."""

    def __init__(self, path: str):
        self.path = path
        idx = os.path.join(path, sessiondir.INDEX)
        self.dir_fd = -1
        try:
            self.dir_fd = sessiondir.open_dir(path, follow=True)
        except FileNotFoundError:
            raise SessionError("%s: no such directory" % path) from None
        except OSError as e:
            raise SessionError("%s: %s" % (path, e.strerror)) from None
        try:
            self._open_index(idx)
            self._load_index()
            self._check_files()
        except sessionindex.IndexInvalid as e:
            self.close()
            raise SessionError("%s: malformed session index (%s)" % (idx, e)) from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __del__(self):
        self.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_index(self, idx: str) -> None:
        try:
            meta = sessiondir.open_dir(".hypertrace", self.dir_fd)
        except FileNotFoundError:
            raise SessionError("%s: not a hypertrace session (no .hypertrace/session.json)"
                               % self.path) from None
        except SessionError as e:
            raise SessionError("%s: %s" % (self.path, e)) from None
        except OSError as e:
            raise SessionError("%s: %s" % (idx, e.strerror)) from None
        try:
            raw = sessiondir.read_regular(meta, "session.json", idx, sessiondir.MAX_INDEX_BYTES)
        except FileNotFoundError:
            raise SessionError("%s: not a hypertrace session (no .hypertrace/session.json)"
                               % self.path) from None
        except OSError as e:
            raise SessionError("%s: unreadable session index: %s" % (idx, e.strerror)) from None
        finally:
            os.close(meta)
        try:
            doc = sessionindex.loads(raw)
        except sessionindex.IndexInvalid as e:
            raise SessionError("%s: unreadable session index: %s" % (idx, e)) from None
        if not isinstance(doc, dict) or doc.get("format") != "hypertrace-session":
            raise SessionError("%s: not a hypertrace session index" % idx)
        self.index = sessionindex.validate(doc)
        #: identifies this index's content (the SQL cache is valid for one index only)
        self.index_digest = hashlib.sha256(raw).hexdigest()

    def _load_index(self) -> None:
        self.domains = {d["name"]: d for d in self.index["domains"]}
        self.codecs: Dict[str, Dict[int, abi.Codec]] = {}
        for d in self.index["domains"]:
            self.codecs[d["name"]] = {int(i): abi.Codec(abi.parse_signature(e["signature"],
                                                                          e.get("format", "")))
                                      for i, e in d["events"].items()}
        self.streams = self.index["streams"]
        self.warnings: List[str] = []
        self.clocks = self.index.get("clocks", {})
        host_off = self.index.get("host_clock_offset_ns")
        self.mappers = {}
        self.clock_params = {}      # domain -> (clock segments, offset to the epoch)
        for name, d in self.domains.items():
            summ = self.clocks.get(name, {})
            segs = clockmap.segments_from(summ) if summ.get("kind") == "estimated" else []
            off = int(host_off if host_off is not None else d["clock_offset_ns"])
            self.clock_params[name] = (segs, off)
            self.mappers[name] = self._mapper(segs, off)

    def _check_files(self) -> None:
        """Every stream file named in the index is a regular file or missing (a
        warning when read): a symlink, FIFO or device refuses the whole session."""
        for st in self.streams:
            if st.get("file"):
                sessiondir.check_regular(self.dir_fd, st["file"],
                                         os.path.join(self.path, st["file"]))

    def open_stream(self, st: dict, chunk: int = 1 << 20,
                    budget: Optional[sessiondir.WindowBudget] = None
                    ) -> Optional[sessiondir.StreamBytes]:
        """A bounded reader of a stream's file; None (and a warning) if it is missing
        or unreadable. SessionError if it is not a regular file."""
        path = os.path.join(self.path, st["file"])
        try:
            return sessiondir.StreamBytes(self.dir_fd, st["file"], path, chunk, budget)
        except OSError as e:
            self.warnings.append("%s: %s" % (path, e.strerror or errno.errorcode.get(
                e.errno, e)))
            return None

    @staticmethod
    def _mapper(segs, off: int):
        # raw timestamps are at most abi.MAX_TS and offsets within +-2^62 (sessionindex):
        # a mapped time always fits the signed 64-bit ns that every export writes, and
        # nothing is placed before the epoch
        if not segs:
            return lambda raw: (max(0, raw + off), None)

        def m(raw: int):
            h, unc = clockmap.map_time(segs, raw)
            h = min(max(h, -MONO_LIMIT), MONO_LIMIT)
            return max(0, int(round(h)) + off), int(-(-min(unc, UNC_LIMIT) // 1))
        return m

    def to_host(self, domain: str, raw: int) -> int:
        """A domain's raw timestamp on the session's host timeline (ns since the epoch)."""
        return self.mappers[domain](raw)[0]

    def stream_events(self, st: dict, chunk: int = 1 << 20,
                      budget: Optional[sessiondir.WindowBudget] = None) -> Iterator[Event]:
        """Decode one stream file, reading it in pieces of about `chunk` bytes (held
        within `budget` with other streams'); damage ends the stream with a warning."""
        if not st.get("file"):
            return
        dom = st["domain"]
        codecs = self.codecs[dom]
        mapper = self.mappers[dom]
        name = st["file"]
        f = self.open_stream(st, chunk, budget)
        if f is None:
            return
        H = abi.REC_HEADER_SIZE
        try:
            for p in packets.packets_in(f):
                off, cend = p.start, p.content_end
                # the file keeps the content up to the last payload byte: pad to whole records
                rend = off + abi.align(cend - off, abi.REC_ALIGN)
                while off + H <= cend:
                    buf, i = f.window(off, H)
                    eid, sf, _sq, ts = abi.REC_HEADER.unpack_from(buf, i)
                    size = sf & abi.REC_SIZE_MASK
                    c = codecs.get(eid)
                    try:
                        if c is None or size < H or off + size > rend or ts > abi.MAX_TS:
                            raise ValueError("bad header")
                        buf, i = f.window(off, size)
                        if off + size > cend:
                            # the last record's padding lies past the content: zeros,
                            # whatever the file holds there (as the columnar reader pads)
                            buf, i = bytes(buf[i:i + cend - off]) + bytes(off + size - cend), 0
                        vals, pend = c.decode(buf, i + H, min(i + size, len(buf)))
                        if abi.align(pend - i, abi.REC_ALIGN) != size:
                            raise ValueError("size does not match the declaration")
                    except (ValueError, struct.error):
                        self.warnings.append("%s: undecodable record at byte %d" % (name, off))
                        return
                    host_ts, unc = mapper(ts)
                    buf = None      # while suspended, only the budget holds the window
                    yield Event(host_ts, ts, dom, name, c.decl.name, dict(zip(c.names, vals)),
                                bool(sf & abi.REC_FLAG_TRUNCATED), unc)
                    off += size
        except packets.PacketDamage as e:
            self.warnings.append("%s: %s" % (name, e))
        finally:
            f.drop()

    def events(self, domain: Optional[str] = None) -> Iterator[Event]:
        """Every event of the session in host-timeline order, its streams read within
        READ_BUDGET bytes together."""
        sts = [s for s in self.streams if s.get("file") and (domain is None or
                                                             s["domain"] == domain)]
        chunk = min(1 << 20, max(WINDOW_MIN, READ_BUDGET // max(1, len(sts))))
        budget = sessiondir.WindowBudget(READ_BUDGET)
        its = [self.stream_events(s, chunk, budget) for s in sts]
        return heapq.merge(*its, key=lambda e: e.ts)
