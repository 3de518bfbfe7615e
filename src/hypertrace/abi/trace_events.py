"""QEMU's trace-events file grammar, as QEMU's scripts/tracetool reads it.

A line is `[properties] name(arguments) [format]`: blank lines and lines whose first
non-blank character is `#` are skipped. The format runs from the first `"` to the
end of the line and is C string literals joined with macros (`"addr 0x%"
PRIx64`); QEMU <= 2.x's `tcg` events carry two formats (`"trans", "exec"`), of
which the second (execution time) is kept. Properties:

    disable   QEMU compiles the event out; here it is declared but off until
              enabled (`hypertrace ctl enable`, triggers)
    vcpu      QEMU <= 7.x passes the vCPU as a hidden first argument; a process
              has no vCPU, the property is accepted and ignored
    tcg       QEMU <= 2.x splits the event in translation and execution time; the
              event is declared once, with the execution-time format
    counter   hypertrace's own: numeric fields are drawn as counter tracks

A file is parsed whole before anything is declared (parse_trace_events raises on
the first bad line, naming file:line and the cause). Its size is bounded, as the
parser runs in guests too (`guest.load`): at most MAX_FILE_SIZE bytes, lines of at
most MAX_LINE bytes, MAX_EVENTS events; read_file reads in bounded chunks, so a
device or FIFO that never ends (/dev/zero) is refused at its first over-long line.
"""

from __future__ import annotations

import re
from typing import Iterator, List, Tuple

from .layout import MAX_EVENT_ID
from .signature import EventDecl, make_decl

__all__ = ["TRACE_EVENT_PROPERTIES", "MAX_FILE_SIZE", "MAX_LINE", "MAX_EVENTS",
           "parse_trace_events", "read_trace_events", "parse_trace_event", "read_file",
           "load_file"]

TRACE_EVENT_PROPERTIES = ("disable", "vcpu", "tcg", "counter")

# QEMU 7.2's trace-events-all (every trace-events file of the tree in one) is 0.45 MiB
# of 6 383 lines, the longest 364 bytes: the limits leave a wide margin, and keep a
# hostile file's cost (time, and the parser's memory, a few times the text) small
MAX_FILE_SIZE = 16 << 20        # bytes of a trace-events file
MAX_LINE = 64 << 10             # bytes of one line, its line break not counted
MAX_EVENTS = MAX_EVENT_ID       # events of one file: as many as event ids can name
# no break-free run inside one chunk reaches MAX_LINE, so only the line that a chunk
# starts or ends inside needs counting across chunks
_CHUNK = MAX_LINE
_BREAK = re.compile(r"\r\n|\r|\n")

# tracetool's Event._CRE, anchored at the end: it accepts trailing text after the
# closing parenthesis that is not a format; here that is an error, not ignored.
# Its split of `"trans", "exec"` (the greedy `".+,`) would also cut a format that
# merely holds `, "`; the split is done only for `tcg` events, outside the strings.
# tracetool's `((?P<props>[\w\s]+)\s+)?` is spelt `(\w+\s+)*` (the same strings, the
# line being stripped), and `\s*` is not repeated after the format: a run of blanks
# that two parts of the pattern could share made a line of blanks cubic (64 KiB:
# minutes); now no character can go to two parts, and a line costs linear time
_EVENT = re.compile(r"(?P<props>(?:\w+\s+)*)"
                    r"(?P<name>\w+)"
                    r"\((?P<args>[^)]*)\)"
                    r"\s*"
                    r"(?P<fmt>\".+)?"
                    r"\Z")
_PIECE = re.compile(r'"(?:[^"\\]|\\.)*"|[^",]+|,')


def _split_tcg(fmt: str) -> Tuple[str, str]:
    """`"trans", "exec"` -> (trans, exec) at the first comma outside a string literal;
    ("", fmt) when there is none."""
    for m in _PIECE.finditer(fmt):
        if m.group() == ",":
            return fmt[:m.start()].rstrip(), fmt[m.end():].strip()
    return "", fmt


def parse_trace_event(line: str) -> EventDecl:
    """One non-comment line; ValueError naming the cause."""
    m = _EVENT.match(line.strip())
    if m is None:
        head = re.match(r"\s*((?:\w+\s+)*)(\w+)\s*(\()?", line)
        if head is None or not head.group(3):
            raise ValueError("expected 'name(type arg, ...) \"format\"'")
        if ")" not in line:
            raise ValueError("no ')' closing the argument list")
        if re.match(r"\s*(?:\w+\s+)*\w+\s+\(", line):
            raise ValueError("no space may separate the event name from its '('")
        raise ValueError("unexpected text after the argument list: %r"
                         % line.split(")", 1)[1].strip()[:60])
    props = (m.group("props") or "").split()
    for p in props:
        if p not in TRACE_EVENT_PROPERTIES:
            raise ValueError("unknown property %r (known: %s)"
                             % (p, ", ".join(TRACE_EVENT_PROPERTIES)))
    if len(set(props)) != len(props):
        raise ValueError("repeated property in %r" % " ".join(props))
    fmt, trans = m.group("fmt") or "", ""
    if "tcg" in props:
        trans, fmt = _split_tcg(fmt)
    for f in (fmt, trans):
        # tracetool's two rules on formats (QEMU's trace backends rely on them)
        if "%m" in f:
            raise ValueError("format '%m' is forbidden, pass the error as an explicit "
                             "trace argument")
        if f.rstrip().endswith('\\n"'):
            raise ValueError("format must not end with a newline character")
    return make_decl(m.group("name"), m.group("args"), "disable" in props, fmt,
                     "counter" in props)


def parse_trace_events(text: str, source: str = "<string>") -> List[EventDecl]:
    """Parse a whole trace-events file; ValueError `source:line: cause` on the first
    bad line (nothing is declared from a file that does not parse whole)."""
    return [d for _, d in read_trace_events(text, source)]


def _utf8_over(text: str, limit: int) -> bool:
    """Whether `text` takes more than `limit` bytes in UTF-8 (encoded only if it may)."""
    return len(text) > limit or (len(text) * 4 > limit and
                                 len(text.encode("utf-8", "surrogatepass")) > limit)


def _lines(text: str) -> Iterator[str]:
    """The lines of `text`, one at a time (a list of them all would cost ~50 bytes per
    empty line). They end at \n, \r\n or \r, as Python's universal newlines
    (tracetool's open()) break them; not at the other breaks str.splitlines() knows
    (\f, \x1c, U+2028...)."""
    pos = 0
    for m in _BREAK.finditer(text):
        yield text[pos:m.start()]
        pos = m.end()
    yield text[pos:]


def read_trace_events(text: str, source: str = "<string>") -> List[Tuple[int, EventDecl]]:
    """parse_trace_events, with each event's line number."""
    if _utf8_over(text, MAX_FILE_SIZE):
        raise ValueError("%s: larger than %d bytes (%d MiB, the limit of a trace-events "
                         "file)" % (source, MAX_FILE_SIZE, MAX_FILE_SIZE >> 20))
    decls = []
    names = {}
    for lineno, line in enumerate(_lines(text), 1):
        where = "%s:%d: " % (source, lineno)
        if _utf8_over(line, MAX_LINE):
            raise ValueError(where + "line longer than %d bytes (the limit of a trace-events "
                             "line)" % MAX_LINE)
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if len(decls) == MAX_EVENTS:
            raise ValueError(where + "more than %d events (as many as event ids can name)"
                             % MAX_EVENTS)
        try:
            d = parse_trace_event(s)
        except ValueError as e:
            raise ValueError(where + str(e)) from None
        if d.name in names:
            raise ValueError(where + "event %r declared twice (first at line %d)"
                             % (d.name, names[d.name]))
        names[d.name] = lineno
        decls.append((lineno, d))
    return decls


def _line_of(data: bytearray, pos: int) -> int:
    """The number of the line holding byte `pos` of `data`, counted as _lines counts."""
    head = bytes(data[:pos])
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def _too_long(path: str, data: bytearray, start: int) -> ValueError:
    return ValueError("%s:%d: line longer than %d bytes (the limit of a trace-events line)"
                      % (path, _line_of(data, start), MAX_LINE))


def read_file(path: str) -> str:
    """The text of trace-events file `path`: OSError if unreadable; ValueError naming the
    file (and line) if larger than MAX_FILE_SIZE, a line is longer than MAX_LINE or it
    is not UTF-8. Read in chunks, checked as they come: at most MAX_FILE_SIZE + one
    chunk is ever held, whatever `path` is (a FIFO, /dev/zero)."""
    data = bytearray()
    start = 0                   # where the line being read starts
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            base = len(data)
            data += chunk
            last = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            if last >= 0:
                first = min(i for i in (chunk.find(b"\n"), chunk.find(b"\r")) if i >= 0)
                if base + first - start > MAX_LINE:
                    raise _too_long(path, data, start)
                start = base + last + 1
            if len(data) - start > MAX_LINE:
                raise _too_long(path, data, start)
            if len(data) > MAX_FILE_SIZE:
                raise ValueError("%s: larger than %d bytes (%d MiB, the limit of a "
                                 "trace-events file)" % (path, MAX_FILE_SIZE,
                                                         MAX_FILE_SIZE >> 20))
    try:
        return data.decode("utf-8-sig")     # a leading BOM is not part of the first line
    except UnicodeDecodeError as e:
        raise ValueError("%s:%d: not UTF-8 text (byte 0x%02x)" % (
            path, _line_of(data, e.start), data[e.start])) from None


def load_file(path: str) -> List[Tuple[int, EventDecl]]:
    """read_trace_events of trace-events file `path` (read_file's errors, then the
    parser's `path:line: cause`)."""
    return read_trace_events(read_file(path), path)
