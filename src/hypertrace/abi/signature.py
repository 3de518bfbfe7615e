"""Event signatures: the C argument types an event may have, the canonical text a
declaration slot holds, and the printf format that may follow it (docs/abi.md §3).

Arguments are read as QEMU's tracetool reads them (scripts/tracetool/__init__.py,
`Arguments.build`): split at commas; an argument with a `*` is a pointer whose
name follows the last `*`; otherwise the name is the last word. Any C identifier is
an argument name (the generated code and every output name their own things apart).
Types are the C integer types in any spelling (`long unsigned int`, `const int`),
the fixed-size and pointer-sized typedefs, bool, float, double, strings
(`const char *`) and any other pointer (recorded as its address).
"""

from __future__ import annotations

import re
import struct
from typing import Dict, NamedTuple, Optional, Tuple

from .layout import DECL_TEXT_MAX

__all__ = ["MAX_FIELDS", "MAX_NAME", "FieldType", "EventDecl", "field_type", "parse_args",
           "parse_format", "make_decl", "parse_signature", "parse_slot_text"]

MAX_FIELDS = 32
MAX_NAME = 128           # characters of an event or argument name


class FieldType(NamedTuple):
    kind: str        # "int", "bool", "float", "str", "bytes"
    code: str        # struct code for fixed-size kinds, "" for str/bytes
    size: int        # bytes in the record (0 for variable)
    signed: bool
    hex: bool        # pointers: shown in base 16
    char: bool = False   # a C char by value: a one-character str is taken too


def _int(code: str, hexa: bool = False, char: bool = False) -> FieldType:
    return FieldType("int", code, struct.calcsize("<" + code), code.islower(), hexa, char)


# typedef names (and our own `bytes`), after qualifiers are dropped
_NAMED: Dict[str, FieldType] = {
    "int8_t": _int("b"), "uint8_t": _int("B"), "int16_t": _int("h"), "uint16_t": _int("H"),
    "int32_t": _int("i"), "uint32_t": _int("I"), "int64_t": _int("q"), "uint64_t": _int("Q"),
    "intptr_t": _int("q"), "uintptr_t": _int("Q"), "ptrdiff_t": _int("q"),
    "intmax_t": _int("q"), "uintmax_t": _int("Q"),
    "size_t": _int("Q"), "ssize_t": _int("q"), "off_t": _int("q"), "pid_t": _int("i"),
    # QEMU's own typedefs (older trace-events files use them); a target's word as
    # on a 64-bit target; TCG values (QEMU <= 2.x `tcg` events) as tracetool's
    # execution-time transform turns them into host types
    "hwaddr": _int("Q", True), "vaddr": _int("Q", True), "ram_addr_t": _int("Q", True),
    "target_ulong": _int("Q", True), "target_long": _int("q"),
    "TCGv": _int("Q", True), "TCGv_i32": _int("I"), "TCGv_i64": _int("Q"),
    "TCGv_ptr": _int("Q", True), "TCGv_env": _int("Q", True),
    "bool": FieldType("bool", "?", 1, False, False),
    "_Bool": FieldType("bool", "?", 1, False, False),
    "float": FieldType("float", "f", 4, True, False),
    "double": FieldType("float", "d", 8, True, False),
    "bytes": FieldType("bytes", "", 0, False, False),
}
_STR = FieldType("str", "", 0, False, False)
_POINTER = _int("Q", True)
_SPECIFIERS = {"signed", "unsigned", "char", "short", "int", "long"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LINE = re.compile(r"\s*((?:(?:disable|counter)\s+)*)([A-Za-z_][A-Za-z0-9_]*)\s*\(([^)]*)\)\s*"
                   r"(\".*)?\Z", re.S)
# a format: C string literals and macro names (PRIx64...), as the compiler would join them
_FMT_TOKEN = re.compile(r'\s*(?:"((?:[^"\\\n]|\\.)*)"|([A-Za-z_][A-Za-z0-9_]*))', re.S)


def field_type(ctype: str) -> Optional[FieldType]:
    """The record type of C type `ctype` (canonical spelling), None if unsupported."""
    stars = ctype.count("*")
    words = [w for w in ctype.replace("*", " ").split() if w not in ("const", "volatile",
                                                                    "restrict")]
    if stars:
        return _STR if stars == 1 and words == ["char"] else _POINTER
    if len(words) == 1 and words[0] in _NAMED:
        return _NAMED[words[0]]
    if not words or any(w not in _SPECIFIERS for w in words):
        return None
    n = {w: words.count(w) for w in _SPECIFIERS}
    if n["signed"] + n["unsigned"] > 1 or n["char"] > 1 or n["short"] > 1 or n["int"] > 1 \
            or n["long"] > 2 or (n["short"] and n["long"]) \
            or (n["char"] and (n["short"] or n["long"] or n["int"])):
        return None
    unsigned = n["unsigned"] > 0
    if n["char"]:                  # plain char is signed on the ABIs QEMU runs on (x86)
        return _int("B" if unsigned else "b", char=True)
    code = "h" if n["short"] else "q" if n["long"] else "i"     # LP64
    return _int(code.upper() if unsigned else code)


class EventDecl(NamedTuple):
    name: str
    fields: Tuple[Tuple[str, str, FieldType], ...]   # (arg name, canonical C type, type)
    disabled: bool = False
    fmt: str = ""              # printf format as written in trace-events (quotes, PRI macros)
    counter: bool = False      # numeric fields are also values of counter tracks

    @property
    def signature(self) -> str:
        """Canonical text of the event's identity: `[counter ]name(type arg, ...)`."""
        return "%s%s(%s)" % ("counter " if self.counter else "", self.name, ", ".join(
            (t + a if t.endswith("*") else t + " " + a) for a, t, _ in self.fields) or "void")

    @property
    def slot_text(self) -> str:
        """What the declaration slot holds: the signature, then the format if it fits."""
        sig = self.signature
        if self.fmt and len((sig + " " + self.fmt).encode()) <= DECL_TEXT_MAX:
            return sig + " " + self.fmt
        return sig


def _canon_type(text: str) -> str:
    """`const  char*` -> `const char *`: single spaces, stars separated by one space."""
    return " ".join(text.replace("*", " * ").split()).replace("* *", "**")


def parse_args(args: str, where: str = "") -> Tuple[Tuple[str, str, FieldType], ...]:
    """Parse `type name, ...` as tracetool does; raises ValueError naming the problem."""
    out = []
    seen = set()
    parts = [p.strip() for p in args.split(",")]
    if parts == [""]:
        return ()                       # `name()`: no argument (tracetool wants `void`)
    for part in parts:
        if not part:
            raise ValueError("%sempty argument (did you forget to use 'void'?)" % where)
        if part == "void":
            continue
        if "*" in part:
            ctype, name = part.rsplit("*", 1)
            ctype += "*"
            # `char *const p`: qualifiers of the pointer itself go with the type
            words = name.split()
            while len(words) > 1 and words[0] in ("const", "volatile", "restrict"):
                ctype += " " + words.pop(0)
            name = " ".join(words)
        else:
            bits = part.rsplit(None, 1)
            if len(bits) < 2:
                raise ValueError("%sargument %r has no type (expected 'type name')"
                                 % (where, part))
            ctype, name = bits
        name = name.strip()
        if not _IDENT.match(name):
            raise ValueError("%sargument %r: %r is not a C identifier" % (where, part, name))
        if len(name) > MAX_NAME:
            raise ValueError("%sargument name longer than %d characters" % (where, MAX_NAME))
        ctype = _canon_type(ctype)
        ft = field_type(ctype)
        if ft is None:
            raise ValueError("%sunsupported type %r for argument %r (C integer types, "
                             "bool, float, double, [u]intN_t, size_t, uintptr_t, "
                             "const char * and pointers are)" % (where, ctype, name))
        if name in seen:
            raise ValueError("%sduplicate argument %r" % (where, name))
        seen.add(name)
        out.append((name, ctype, ft))
    if len(out) > MAX_FIELDS:
        raise ValueError("%stoo many arguments (%d > %d)" % (where, len(out), MAX_FIELDS))
    return tuple(out)


def parse_format(fmt: str, where: str = "") -> Tuple[Tuple[str, str], ...]:
    """Split a trace-events format into its pieces, in order: ("str", the literal's text
    with its C escapes as written) or ("macro", a name such as PRIx64). Raises
    ValueError unless the whole text is string literals and names, as C joins them."""
    out = []
    pos = 0
    fmt = fmt.rstrip()
    while pos < len(fmt):
        m = _FMT_TOKEN.match(fmt, pos)
        if not m or m.end() == pos:
            rest = fmt[pos:].lstrip()
            what = "an unterminated string" if rest.startswith('"') else "%r" % rest[:20]
            raise ValueError("%sformat: %s where a string or a macro name was expected"
                             % (where, what))
        out.append(("str", m.group(1)) if m.group(2) is None else ("macro", m.group(2)))
        pos = m.end()
    if out and out[0][0] != "str":
        raise ValueError("%sformat must start with a string" % where)
    return tuple(out)


def make_decl(name: str, args: str, disabled: bool = False, fmt: str = "",
              counter: bool = False) -> EventDecl:
    if not _IDENT.match(name) or len(name) > MAX_NAME:
        raise ValueError("bad event name %r: must be a C identifier of at most %d characters"
                         % (name, MAX_NAME))
    where = "event %s: " % name
    if fmt:
        parse_format(fmt, where)
    decl = EventDecl(name, parse_args(args, where), disabled, fmt.strip(), counter)
    if counter and not any(ft.kind in ("int", "float", "bool") for _, _, ft in decl.fields):
        raise ValueError("counter event %s needs a numeric argument" % name)
    if len(decl.signature.encode()) > DECL_TEXT_MAX:
        raise ValueError("event %s: signature longer than %d bytes" % (name, DECL_TEXT_MAX))
    return decl


def parse_signature(text: str, fmt: str = "") -> EventDecl:
    """Parse a signature (`[counter ]name(type a, ...)`), with its format if known;
    ValueError if malformed."""
    m = _LINE.match(text)
    if not m or m.group(1) not in ("", "counter ") or m.group(4):
        raise ValueError("malformed signature %r" % text[:80])
    return make_decl(m.group(2), m.group(3), fmt=fmt, counter=bool(m.group(1)))


def parse_slot_text(text: str) -> EventDecl:
    """Parse what a declaration slot holds: a signature, then optionally a format (the
    first `"` starts it: a signature never holds one)."""
    sig, quote, rest = text.partition('"')
    return parse_signature(sig.rstrip(), quote + rest)
