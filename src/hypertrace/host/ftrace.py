"""ftrace's binary formats as the kernel describes them in tracefs, and a decoder of
its ring-buffer pages (per_cpu/cpuN/trace_pipe_raw).

The kernel states its own layout: `events/header_page` (the page: timestamp, commit,
data), `events/header_event` (the 32-bit event header: type_len 5 bits, time_delta
27 bits, the padding / time-extend / absolute-timestamp kinds) and each event's
`events/SYS/NAME/format` (`field:TYPE NAME; offset:N; size:N; signed:S;`, with
`__data_loc` / `__rel_loc` for dynamic strings and arrays). Only what those texts
say is assumed, little-endian (x86, arm64).

A page may come from a guest: it is untrusted input. Every length, offset and count
is checked against the page and the format; a bad page or format text raises
FtraceError (one line), never anything else, and a decoded event never reads
outside its own bytes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

MAX_FORMAT_TEXT = 64 * 1024       # the largest format file seen is a few KiB
MAX_FIELDS = 256
MAX_PAGE = 1 << 20                # buffer_subbuf_size_kb goes up to 1 MiB pages
TS_SHIFT = 27                     # time_delta bits (header_event)
TYPE_PADDING, TYPE_TIME_EXTEND, TYPE_TIME_STAMP = 29, 30, 31
TYPE_DATA_MAX = 28
RB_MISSED_EVENTS = 1 << 31        # commit flags: events were lost before this page
RB_MISSED_STORED = 1 << 30        # ... and their count follows the data
COMMIT_MASK = (1 << 27) - 1
TS_MSB = 0xF8 << 56               # an absolute stamp holds 59 bits: the rest from the page


class FtraceError(ValueError):
    """A format text or a page that is not what the kernel writes."""


@dataclass(frozen=True)
class Field:
    name: str
    ctype: str        # as the format file spells it, e.g. "char prev_comm[16]" -> "char"
    offset: int
    size: int
    signed: bool
    kind: str         # int | str | array | bytes | dyn_str | dyn_array (data_loc/rel_loc)
    elem: int = 0     # array element size
    rel: bool = False  # __rel_loc: offset from the field's end, not the record's start


@dataclass
class EventFormat:
    system: str
    name: str
    id: int
    fields: List[Field]                       # the event's own (common_* left out)
    common: List[Field] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes of the fixed part (every field, common ones too)."""
        return max((f.offset + f.size for f in self.common + self.fields), default=0)


@dataclass(frozen=True)
class PageLayout:
    ts_off: int
    commit_off: int
    commit_size: int
    data_off: int
    data_size: int


_FIELD = re.compile(r"^\s*field:\s*(?P<decl>[^;]+);\s*offset:\s*(?P<off>\d+);\s*"
                    r"size:\s*(?P<size>\d+);\s*(?:signed:\s*(?P<signed>-?\d+);)?")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_INT_TYPES = {1, 2, 4, 8}


def _check_text(text: str, what: str) -> None:
    if not isinstance(text, str) or len(text) > MAX_FORMAT_TEXT:
        raise FtraceError("%s: not a format text of at most %d bytes" % (what, MAX_FORMAT_TEXT))


def _field(decl: str, off: int, size: int, signed: bool) -> Field:
    decl = " ".join(decl.split())
    dyn = None
    for kw in ("__data_loc ", "__rel_loc "):
        if decl.startswith(kw):
            dyn, decl = kw.strip(), decl[len(kw):]
    m = re.match(r"^(?P<type>.*?)\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*"
                 r"(?:\[(?P<n>[^\]]*)\])?$", decl)
    if dyn is not None and m is None:
        # "__data_loc char[] name": the brackets sit on the type
        m = re.match(r"^(?P<type>.*?)\[\]\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)$", decl)
    if m is None or not _NAME_RE.match(m.group("name")):
        raise FtraceError("format: cannot read field %r" % decl)
    name, ctype = m.group("name"), m.group("type").replace("[]", "").strip()
    if off > MAX_PAGE or size > MAX_PAGE:
        raise FtraceError("format: field %s out of bounds" % name)
    is_char = ctype.split()[-1:] == ["char"] if ctype else False
    if dyn is not None:
        if size != 4:
            raise FtraceError("format: %s field %s of size %d (4 expected)" % (dyn, name, size))
        return Field(name, ctype, off, size, signed, "dyn_str" if is_char else "dyn_array",
                     rel=dyn == "__rel_loc")
    n = m.group("n")
    if n is not None:
        if is_char:
            return Field(name, ctype, off, size, signed, "str")
        count = int(n) if n.isdigit() and int(n) > 0 else 0
        if count and size % count == 0 and size // count in _INT_TYPES:
            return Field(name, ctype, off, size, signed, "array", elem=size // count)
        return Field(name, ctype, off, size, signed, "bytes")
    if size in _INT_TYPES:
        return Field(name, ctype, off, size, signed, "int")
    return Field(name, ctype, off, size, signed, "bytes")


def parse_format(text: str, system: str = "") -> EventFormat:
    """One `events/SYS/NAME/format` file."""
    _check_text(text, "format")
    name, eid, fields = None, None, []
    for line in text.splitlines():
        if line.startswith("name:"):
            name = line[5:].strip()
        elif line.startswith("ID:"):
            v = line[3:].strip()
            if not v.isdigit() or int(v) > 0xFFFF:
                raise FtraceError("format: bad ID %r" % v[:20])
            eid = int(v)
        else:
            m = _FIELD.match(line)
            if m:
                if len(fields) >= MAX_FIELDS:
                    raise FtraceError("format: more than %d fields" % MAX_FIELDS)
                fields.append(_field(m.group("decl"), int(m.group("off")),
                                     int(m.group("size")), m.group("signed") == "1"))
    if name is None or not _NAME_RE.match(name) or eid is None:
        raise FtraceError("format: no valid name and ID")
    common = [f for f in fields if f.name.startswith("common_")]
    own = [f for f in fields if not f.name.startswith("common_")]
    if not any(f.name == "common_type" and f.offset == 0 and f.size == 2 for f in common):
        raise FtraceError("format %s: no common_type u16 at offset 0" % name)
    return EventFormat(system, name, eid, own, common)


def parse_header_page(text: str) -> PageLayout:
    """`events/header_page`: where the timestamp, the commit word and the data sit."""
    _check_text(text, "header_page")
    got: Dict[str, Tuple[int, int]] = {}
    for line in text.splitlines():
        m = _FIELD.match(line)
        if m:
            nm = m.group("decl").split()[-1]
            got.setdefault(nm, (int(m.group("off")), int(m.group("size"))))
    try:
        ts, commit, data = got["timestamp"], got["commit"], got["data"]
    except KeyError as e:
        raise FtraceError("header_page: no %s field" % e.args[0]) from None
    if ts[1] != 8 or commit[1] not in (4, 8) or not 0 < data[1] <= MAX_PAGE or \
            data[0] < commit[0] + commit[1] or ts[0] + 8 > data[0]:
        raise FtraceError("header_page: an unexpected layout")
    return PageLayout(ts[0], commit[0], commit[1], data[0], data[1])


def check_header_event(text: str) -> None:
    """`events/header_event`: the event header this decoder reads, or FtraceError."""
    _check_text(text, "header_event")
    t = " ".join(text.split())
    for want in ("type_len : 5 bits", "time_delta : 27 bits", "padding : type == 29",
                 "time_extend : type == 30", "data max type_len == 28"):
        if want not in t:
            raise FtraceError("header_event: not the 5/27-bit event header (%s)" % want)


@dataclass
class Page:
    """One decoded page: its events (timestamp ns, format, values) in order, and the
    events ftrace lost just before it (None: some, count unknown)."""
    events: List[Tuple[int, EventFormat, dict]]
    missed: Optional[int]
    unknown: int = 0          # events of an id without a format (counted, not decoded)
    bad: int = 0              # events whose payload does not fit their format


TS_MAX = (1 << 64) - 1             # time sums saturate: a hostile page cannot wrap them


class PageDecoder:
    def __init__(self, layout: PageLayout, formats: Dict[int, EventFormat],
                 raw_strings: bool = False):
        self.layout = layout
        self.formats = formats
        self.raw = raw_strings        # strings as their bytes (up to the NUL), not str

    def decode(self, page: bytes) -> Page:
        """Decode one page. Raises FtraceError when its structure cannot be followed
        (the events before the break are lost with it: the caller counts the page)."""
        lay = self.layout
        if len(page) < lay.data_off or len(page) > MAX_PAGE:
            raise FtraceError("ftrace page of %d bytes" % len(page))
        ts = struct.unpack_from("<Q", page, lay.ts_off)[0]
        page_ts = ts
        commit = int.from_bytes(page[lay.commit_off:lay.commit_off + lay.commit_size],
                                "little")
        size = commit & COMMIT_MASK
        end = lay.data_off + size
        if size > lay.data_size or end > len(page):
            raise FtraceError("ftrace page: commit %d past the page" % size)
        missed: Optional[int] = 0
        if commit & RB_MISSED_EVENTS:
            missed = None
            if commit & RB_MISSED_STORED and end + 8 <= len(page):
                missed = int.from_bytes(page[end:end + 8], "little")
        out = Page([], missed)
        for delta, kind, a, b in _walk(page, lay.data_off, end):
            if kind == TYPE_TIME_STAMP:
                abs_ts = delta
                if page_ts & TS_MSB:
                    abs_ts |= page_ts & TS_MSB
                    if abs_ts < ts:
                        abs_ts = min(TS_MAX, abs_ts + (1 << 59))
                ts = abs_ts
                continue
            ts = min(TS_MAX, ts + delta)
            if kind != 0:
                continue               # padding, time extend: no event
            self._event(page, a, b, ts, out)
        return out

    def _event(self, page: bytes, a: int, b: int, ts: int, out: Page) -> None:
        if b - a < 2:
            out.bad += 1
            return
        eid = page[a] | page[a + 1] << 8
        fmt = self.formats.get(eid)
        if fmt is None:
            out.unknown += 1
            return
        rec = page[a:b]
        if fmt.size > len(rec):
            out.bad += 1
            return
        vals = {}
        for f in fmt.common + fmt.fields:
            v = _value(rec, f, self.raw)
            if v is _BAD:
                out.bad += 1
                return
            vals[f.name] = v
        out.events.append((ts, fmt, vals))


_BAD = object()


def _walk(page: bytes, off: int, end: int) -> Iterator[Tuple[int, int, int, int]]:
    """(time delta, kind, payload start, payload end) per event header in
    [off, end): kind 0 for a data event, else the header's type."""
    while off + 4 <= end:
        h = int.from_bytes(page[off:off + 4], "little")
        tl, delta = h & 0x1F, h >> 5
        if tl == TYPE_PADDING:
            if delta == 0:
                return                 # the rest of the page is empty
            if off + 8 > end:
                raise FtraceError("ftrace page: padding past the commit")
            ln = int.from_bytes(page[off + 4:off + 8], "little")
            nxt = off + 4 + ln
            if ln < 4 or nxt > end:
                raise FtraceError("ftrace page: padding of %d bytes past the commit" % ln)
            yield delta, TYPE_PADDING, 0, 0
            off = nxt
            continue
        if tl in (TYPE_TIME_EXTEND, TYPE_TIME_STAMP):
            if off + 8 > end:
                raise FtraceError("ftrace page: time stamp past the commit")
            hi = int.from_bytes(page[off + 4:off + 8], "little")
            yield delta | hi << TS_SHIFT, tl, 0, 0
            off += 8
            continue
        if tl == 0:
            if off + 8 > end:
                raise FtraceError("ftrace page: event length past the commit")
            ln = int.from_bytes(page[off + 4:off + 8], "little")
            if ln < 4:
                raise FtraceError("ftrace page: event of length %d" % ln)
            a, b = off + 8, off + 4 + ln
            nxt = off + 4 + ((ln + 3) & ~3)
        else:
            a, b = off + 4, off + 4 + 4 * tl
            nxt = b
        if b > end:
            raise FtraceError("ftrace page: event past the commit")
        yield delta, 0, a, b
        off = nxt


def _value(rec: bytes, f: Field, raw_strings: bool = False):
    n = len(rec)
    if f.offset + f.size > n:
        return _BAD
    raw = rec[f.offset:f.offset + f.size]
    if f.kind == "int":
        return int.from_bytes(raw, "little", signed=f.signed)
    if f.kind == "str":
        s = raw.split(b"\0", 1)[0]
        return bytes(s) if raw_strings else s.decode("utf-8", "replace")
    if f.kind == "array":
        return [int.from_bytes(raw[i:i + f.elem], "little", signed=f.signed)
                for i in range(0, f.size, f.elem)]
    if f.kind == "bytes":
        return bytes(raw)
    loc = int.from_bytes(raw, "little")
    start, ln = loc & 0xFFFF, loc >> 16
    if f.rel:
        start += f.offset + f.size
    if start + ln > n:
        return _BAD
    data = rec[start:start + ln]
    if f.kind == "dyn_str":
        s = data.split(b"\0", 1)[0]
        return bytes(s) if raw_strings else s.decode("utf-8", "replace")
    return bytes(data)
