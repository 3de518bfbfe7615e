"""CTF 1.8 writer: the metadata text and the packets of data stream files.

Records are copied into packets verbatim: the event header below describes the
ring record header (docs/abi.md). Its 64-bit alignment makes the reader skip
each record's tail padding, and the record's size_flags/seq words fall in the
alignment gap between `id` and `timestamp`, which a CTF reader skips.
"""

from __future__ import annotations

import os
import re
import uuid as _uuid
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional

from .. import abi
from ..read.packets import PACKET_HEAD, PACKET_MAGIC


@dataclass
class Domain:
    """A clock domain: one CTF stream class and one clock class."""

    name: str
    stream_id: int
    clock_offset_ns: int = 0         # added to raw timestamps to get ns since the epoch
    description: str = ""
    events: Dict[int, abi.EventDecl] = field(default_factory=dict)


def _int(bits: int, signed: bool, align: int = 8, base: int = 10, extra: str = "") -> str:
    return "integer { size = %d; align = %d; signed = %s; base = %d;%s }" % (
        bits, align, "true" if signed else "false", base, extra)


# TSDL's keywords (CTF 1.8 §7.3, and babeltrace2's lexer): never a field's name. Every
# name written starts with `_`, so only the last three could be hit (argument `Bool`).
TSDL_KEYWORDS = frozenset((
    "align", "callsite", "const", "char", "clock", "double", "enum", "env", "event",
    "floating_point", "float", "integer", "int", "long", "short", "signed", "stream",
    "string", "struct", "trace", "typealias", "typedef", "unsigned", "variant", "void",
    "_Bool", "_Complex", "_Imaginary"))


class FieldNames(NamedTuple):
    """An argument's names in the metadata (babeltrace2 shows each without its first
    `_`: `shown` is what it prints)."""
    field: str                  # `_x` for argument `x`
    length: Optional[str]       # a string's or bytes' u16 length: `__x_length`

    @property
    def shown(self) -> str:
        return self.field[1:]

    @property
    def length_shown(self) -> Optional[str]:
        return None if self.length is None else self.length[1:]


def field_names(decl: abi.EventDecl) -> List[FieldNames]:
    """The metadata's names for each argument of `decl`, in order (docs/abi.md §8,
    "Names in the outputs").

    An argument `a` is the field `_a`, which babeltrace2 shows as `a`; the length of a
    string or bytes argument `a` is `__a_length` (shown `_a_length`). Every name starts
    with `_` (so none is a TSDL keyword but `_Bool`, `_Complex`, `_Imaginary`), and
    babeltrace2 drops that `_` and then refuses a field whose written name is the shown
    name of an earlier one (`_y` after `__y`, shown `_y`). So the shown names are kept
    apart from the written ones, whatever the order: no two shown names `n` and `_n`.
    Of two arguments `a` and `_a`, `a` keeps its name (decided from the fewest leading
    underscores up: of `a`, `_a` and `__a`, only `_a` yields). An argument
    that yields, one whose `_a` is a keyword (`Bool`), and a length whose name is taken
    get `_`s appended to the shown name until it is free: `_a_`, `Bool_`, `_x_length_`
    (beside an argument `x_length`). Computed per event, from its arguments only."""
    args = [a for a, _, _ in decl.fields]
    natural: set = set()
    for a in sorted(args, key=lambda a: len(a) - len(a.lstrip("_"))):
        if "_" + a not in TSDL_KEYWORDS and not (a.startswith("_") and a[1:] in natural):
            natural.add(a)
    shown = set(natural)                 # every shown name given, the natural ones first

    def free(base: str) -> str:
        n = base
        while (n in shown or "_" + n in shown or "_" + n in TSDL_KEYWORDS
               or (n.startswith("_") and n[1:] in shown)):
            n += "_"
        shown.add(n)
        return n
    out = []
    for a, _, ft in decl.fields:
        f = a if a in natural else free(a + "_")
        ln = free("_%s_length" % a) if ft.kind in ("str", "bytes") else None
        out.append(FieldNames("_" + f, None if ln is None else "_" + ln))
    return out


def _field_decl(names: FieldNames, ft: abi.FieldType) -> List[str]:
    n = names.field
    if ft.kind == "int":
        return ["%s %s;" % (_int(ft.size * 8, ft.signed, base=16 if ft.hex else 10), n)]
    if ft.kind == "bool":
        return ["%s %s;" % (_int(8, False), n)]
    if ft.kind == "float":
        exp, mant = (8, 24) if ft.size == 4 else (11, 53)
        return ["floating_point { exp_dig = %d; mant_dig = %d; align = 8; } %s;" % (exp, mant, n)]
    ln = names.length
    elem = _int(8, False, extra=" encoding = UTF8;" if ft.kind == "str" else "")
    return ["%s %s;" % (_int(16, False), ln), "%s %s[%s];" % (elem, n, ln)]


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def metadata(trace_uuid: bytes, domains: List[Domain], env: Dict[str, object]) -> str:
    u = str(_uuid.UUID(bytes=trace_uuid))
    out = ["/* CTF 1.8 */", "",
           "trace {", "\tmajor = 1;", "\tminor = 8;", '\tuuid = "%s";' % u, "\tbyte_order = le;",
           "\tpacket.header := struct {",
           "\t\t%s magic;" % _int(32, False, 32, 16),
           "\t\t%s uuid[16];" % _int(8, False),
           "\t\t%s stream_id;" % _int(32, False, 32),
           "\t\t%s stream_instance_id;" % _int(64, False, 64),
           "\t};", "};", "", "env {"]
    for k, v in env.items():
        out.append('\t%s = %s;' % (k, v if isinstance(v, int) else '"%s"' % _escape(str(v))))
    out += ["};", ""]
    for d in domains:
        off_s, off_ns = divmod(d.clock_offset_ns, 1_000_000_000)
        ck = "clock_" + d.name
        if not ck.isidentifier() or not ck.isascii():
            # `vm1.boot2`: a clock name is a CTF identifier (the stream id keeps it unique)
            ck = "clock_%d_%s" % (d.stream_id, re.sub(r"\W", "_", d.name, flags=re.ASCII))
        out += ["clock {", "\tname = %s;" % ck,
                '\tdescription = "%s";' % _escape(d.description or d.name + " clock"),
                "\tfreq = 1000000000;", "\tprecision = 1;",
                "\toffset_s = %d;" % off_s, "\toffset = %d;" % off_ns,
                "\tabsolute = FALSE;", "};", ""]
        ts = _int(64, False, 64, extra=" map = clock.%s.value;" % ck)
        out += ["stream {", "\tid = %d;" % d.stream_id,
                "\tpacket.context := struct {",
                "\t\t%s timestamp_begin;" % ts,
                "\t\t%s timestamp_end;" % ts,
                "\t\t%s content_size;" % _int(64, False, 64),
                "\t\t%s packet_size;" % _int(64, False, 64),
                "\t\t%s packet_seq_num;" % _int(64, False, 64),
                "\t\t%s events_discarded;" % _int(64, False, 64),
                "\t};",
                "\tevent.header := struct {",
                # the record's size_flags and seq words sit in the alignment gap
                # before the 64-bit timestamp: CTF readers skip them as padding
                "\t\t%s id;" % _int(16, False, 64),
                "\t\t%s timestamp;" % ts,
                "\t};", "};", ""]
        for eid in sorted(d.events):
            ev = d.events[eid]
            out += ["event {", '\tname = "%s";' % ev.name, "\tid = %d;" % eid,
                    "\tstream_id = %d;" % d.stream_id, "\tfields := struct {"]
            for names, (_, _, ft) in zip(field_names(ev), ev.fields):
                out += ["\t\t" + x for x in _field_decl(names, ft)]
            out += ["\t};", "};", ""]
    return "\n".join(out)


def write_metadata(directory, text: str) -> None:
    """`metadata` in `directory` (a host.runtime.Dir), whole or not at all: through a
    temporary file created exclusively and renamed (the previous metadata stays whole
    when the disk is full)."""
    directory.replace("metadata", text.encode("utf-8"), tmp=".metadata.tmp", fsync=True)


class StreamFile:
    """A data stream file: packets of verbatim records with their timestamp range."""

    def __init__(self, fd: int, path: str, trace_uuid: bytes, stream_id: int,
                 instance_id: int):
        """`fd`: the stream file, opened for writing by the caller (created exclusively
        in the session directory); `path` names it in messages."""
        self.path = path
        # unbuffered, one write per packet: a failed write (a full disk) is undone by
        # cutting the file back to the last whole packet, so the trace stays readable
        self.f = open(fd, "wb", buffering=0)
        self.uuid = trace_uuid
        self.stream_id = stream_id
        self.instance = instance_id
        self.seq = 0
        self.bytes = 0

    def packet(self, content, ts_begin: int, ts_end: int, discarded_total: int,
               tail_pad: int = 0) -> None:
        """Write one packet; `tail_pad` bytes after the last event's payload are padding."""
        size = (PACKET_HEAD.size + len(content)) * 8
        head = PACKET_HEAD.pack(PACKET_MAGIC, self.uuid, self.stream_id, self.instance,
                                ts_begin, ts_end, size - tail_pad * 8, size, self.seq,
                                discarded_total)
        total = len(head) + len(content)
        try:
            # one system call, no concatenated copy of the content
            n = os.writev(self.f.fileno(), [head, content])
            if n != total:
                raise OSError(28, os.strerror(28))       # a short write: the disk is full
        except OSError:
            try:
                # and back to the end: the next packet must not leave a hole of zeros
                os.ftruncate(self.f.fileno(), self.bytes)
                os.lseek(self.f.fileno(), self.bytes, os.SEEK_SET)
            except OSError:
                pass
            raise
        self.seq += 1
        self.bytes += total

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()
