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
the first bad line, naming file:line and the cause).
"""

from __future__ import annotations

import re
from typing import List, Tuple

from .signature import EventDecl, make_decl

__all__ = ["TRACE_EVENT_PROPERTIES", "parse_trace_events", "read_trace_events",
           "parse_trace_event"]

TRACE_EVENT_PROPERTIES = ("disable", "vcpu", "tcg", "counter")

# tracetool's Event._CRE, anchored at the end: it accepts trailing text after the
# closing parenthesis that is not a format; here that is an error, not ignored.
# Its split of `"trans", "exec"` (the greedy `".+,`) would also cut a format that
# merely holds `, "`; the split is done only for `tcg` events, outside the strings
_EVENT = re.compile(r"((?P<props>[\w\s]+)\s+)?"
                    r"(?P<name>\w+)"
                    r"\((?P<args>[^)]*)\)"
                    r"\s*"
                    r"(?P<fmt>\".+)?"
                    r"\s*\Z")
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


def read_trace_events(text: str, source: str = "<string>") -> List[Tuple[int, EventDecl]]:
    """parse_trace_events, with each event's line number."""
    decls = []
    names = {}
    # lines end at \n, \r\n or \r, as Python's universal newlines (tracetool's open())
    # break them; not at the other breaks str.splitlines() knows (\f, \x1c, U+2028...)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for lineno, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        where = "%s:%d: " % (source, lineno)
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
