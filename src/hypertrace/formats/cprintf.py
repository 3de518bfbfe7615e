"""C printf, as glibc does it on x86-64 Linux, applied to an event's recorded fields.

QEMU's `log` trace backend prints an event with `qemu_log(fmt, args...)`: the
format of its trace-events line, the arguments with their declared C types. This
module reproduces those bytes from a record, host side and standard library only:

    f = compile_format(decl.fmt, decl.fields)     # FormatError if it cannot apply
    f.format(values)                              # bytes, exactly as printf writes them

The format text is read as the C compiler reads it: string literals have their
escapes expanded (\\n, \\x41, \\101, \\u00e9...), macro names are glibc's
<inttypes.h> PRI macros for LP64 (PRIx64 is "lx", PRIdFAST16 "ld"), and the pieces
are joined before printf sees them (so `"%" PRIx64` is one conversion). Every
conversion tracetool formats use is supported: d i u x X o c s p e E f F g G and
%%, flags `- + space # 0` (and `'`, which the C locale ignores), width and
precision including `*` (which take an argument, read as an int), and length
modifiers hh h l ll q L j z Z t.

Arguments. Each conversion reads its argument as the C type it names (`%hhu` an
unsigned char, `%d` an int, `%lx` an unsigned long) and the field's value is
converted to that type as a C cast would: modulo 2^bits, then read signed or
unsigned. An int -1 with `%x` is ffffffff, with `%lx` ffffffffffffffff; a uint32_t
0xffffffff with `%d` is -1. (Where the widths differ C leaves the call undefined;
a cast is what the author meant, and it is what x86-64 does when narrowing.)
`%p` takes any integer field (pointers are recorded as their address) and prints
`0x...` in lower case, `(nil)` for 0. `%s` takes a string field, printed as its
UTF-8 bytes (precision counts bytes, as in C); hypertrace's own `bytes` type has
no C counterpart and `%s` prints it as lower-case hex digits (two per byte, so a
precision cuts in the middle of a byte only if it is odd), as `report` shows it.

Anything C would not accept, or that cannot be reproduced without the guest's
memory, raises FormatError at compile time: too few arguments, an unknown macro
or conversion, `%n`, `%m`, positional `%1$d`, wide `%lc`/`%ls`, `%Lf` (long
double: no field holds one), `%a` (hex floats: not implemented), a conversion
whose kind does not fit its field (`%s` on an int, `%d` on a string or a double).
Extra arguments are ignored, as printf ignores them.

Bounds. A session is untrusted: its formats are at most abi.DECL_TEXT_MAX bytes,
but one `%1000000000d` would be a gigabyte. Widths and precisions are capped at
MAX_WIDTH (glibc would print more); with at most abi.MAX_FIELDS conversions and
strings of at most abi.STR_MAX bytes, an event's text stays under about 200 KB.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from .. import abi

__all__ = ["MAX_WIDTH", "PRI_MACROS", "FormatError", "Conversion", "Format", "expand_escapes",
           "expand_format", "compile_format"]

MAX_WIDTH = 4096        # cap on a width or precision, written or from `*`


class FormatError(ValueError):
    """The format cannot be applied to the event's fields (the text says why)."""


def _pri_macros() -> Dict[str, str]:
    """glibc <inttypes.h> on an LP64 target (__PRI64_PREFIX and __PRIPTR_PREFIX are "l")."""
    out = {}
    for conv in "diouxX":
        for n in ("8", "16", "32", "64"):
            plain = "l" if n == "64" else ""
            out["PRI%s%s" % (conv, n)] = plain + conv
            out["PRI%sLEAST%s" % (conv, n)] = plain + conv
            # int_fast16_t and int_fast32_t are long on LP64, int_fast8_t a char
            out["PRI%sFAST%s" % (conv, n)] = ("" if n == "8" else "l") + conv
        out["PRI%sMAX" % conv] = "l" + conv
        out["PRI%sPTR" % conv] = "l" + conv
    return out


#: macro name -> the string literal it expands to
PRI_MACROS: Dict[str, str] = _pri_macros()

_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "e": 27,
                   "E": 27, "\\": 92, "'": 39, '"': 34, "?": 63}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]+)|u([0-9A-Fa-f]{4})|"
                     r"U([0-9A-Fa-f]{8})|(.))", re.S)


def expand_escapes(literal: str) -> bytes:
    """The bytes of a C string literal's body (escapes as written): what gcc puts in
    the program, the source and execution character sets being UTF-8. An octal or
    hex escape beyond a byte keeps its low 8 bits (gcc warns or refuses); an unknown
    escape `\\q` is the character itself (gcc warns and does the same)."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(literal):
        out += literal[pos:m.start()].encode("utf-8", "surrogatepass")
        octal, hexa, u4, u8, other = m.groups()
        if octal is not None:
            out.append(int(octal, 8) & 0xFF)
        elif hexa is not None:
            out.append(int(hexa[-2:], 16))      # only the low byte survives the mask
        elif u4 is not None or u8 is not None:
            cp = int(u4 or u8, 16)
            out += chr(cp).encode("utf-8", "surrogatepass") if cp <= 0x10FFFF else b"?"
        else:
            out += bytes([_SIMPLE_ESCAPES[other]]) if other in _SIMPLE_ESCAPES \
                else other.encode("utf-8", "surrogatepass")
        pos = m.end()
    out += literal[pos:].encode("utf-8", "surrogatepass")
    return bytes(out)


def expand_format(fmt: str) -> bytes:
    """A trace-events format (literals and PRI macros, as written) as the one byte
    string C's printf receives. FormatError for text that is not literals and
    macros, or a macro that is not one of glibc's PRI macros."""
    try:
        pieces = abi.parse_format(fmt)
    except ValueError as e:
        raise FormatError(str(e)) from None
    out = bytearray()
    for kind, text in pieces:
        if kind == "str":
            out += expand_escapes(text)
        elif text in PRI_MACROS:
            out += PRI_MACROS[text].encode()
        else:
            raise FormatError("unknown macro %s (glibc's PRI macros are known)" % text[:40])
    # a C string ends at its first NUL: printf never sees what follows
    return bytes(out).split(b"\0", 1)[0]


# --- the conversions --------------------------------------------------------------
# glibc's grammar: %[flags][width][.precision][length]conversion
_SPEC = re.compile(rb"%([-+ #0'I]*)(\*|[0-9]+)?(?:\.(\*|[0-9]*))?(hh|h|ll|l|q|L|j|z|Z|t)?(.)?",
                   re.S)
# bits a length modifier gives an integer conversion on LP64 (glibc reads `L` and `q`
# on an integer conversion as long long)
_INT_BITS = {None: 32, b"hh": 8, b"h": 16, b"l": 64, b"ll": 64, b"q": 64, b"L": 64,
             b"j": 64, b"z": 64, b"Z": 64, b"t": 64}
_INT_CONV = b"diouxX"
_FLOAT_CONV = b"eEfFgG"


class Conversion(NamedTuple):
    flags: str
    width: Union[int, str, None]       # "*" takes an argument
    precision: Union[int, str, None]   # None: none given
    length: Optional[str]
    conv: str


Piece = Union[bytes, Tuple[Conversion, Optional[int], Optional[int], int]]


def _fits(conv: Conversion, ft: abi.FieldType) -> bool:
    c = conv.conv
    if c in "diouxXc":
        return ft.kind in ("int", "bool")
    if c == "p":
        return ft.kind == "int"
    if c == "s":
        return ft.kind in ("str", "bytes")
    return ft.kind == "float"           # eEfFgG


def _parse(data: bytes) -> List[Union[bytes, Conversion]]:
    out: List[Union[bytes, Conversion]] = []
    pos = 0
    while True:
        i = data.find(b"%", pos)
        if i < 0:
            break
        if i > pos:
            out.append(data[pos:i])
        m = _SPEC.match(data, i)
        assert m is not None            # every group is optional
        flags, width, prec, length, conv = m.groups()
        if conv is None:
            raise FormatError("the format ends inside a conversion")
        spec = data[i:m.end()].decode("latin-1")
        if conv == b"$" or (width and width != b"*" and data[m.end(2):m.end(2) + 1] == b"$"):
            raise FormatError("positional arguments (%s) are not supported" % spec)
        if conv == b"%":
            out.append(b"%")            # glibc prints one '%', whatever came between
            pos = m.end()
            continue
        c = conv.decode("latin-1")
        ln = length.decode() if length else None
        if c in "nm":
            raise FormatError("%%%s is not printable from a record" % c)
        if c in "CS" or (c in "cs" and ln is not None):
            raise FormatError("wide characters (%s) are not supported" % spec)
        if c in "aA":
            raise FormatError("hex floats (%s) are not supported" % spec)
        if c in "p" and ln is not None:
            raise FormatError("%s: a length modifier on %%p" % spec)
        if c in _FLOAT_CONV.decode() and ln not in (None, "l"):
            raise FormatError("%s: no field holds a long double" % spec)
        if c not in "diouxXcspeEfFgG":
            raise FormatError("unknown conversion %r" % spec)

        def num(t: Optional[bytes]) -> Union[int, str, None]:
            if t is None:
                return None
            if t == b"*":
                return "*"
            return min(int(t or b"0"), MAX_WIDTH)
        out.append(Conversion(flags.decode("latin-1"), num(width), num(prec), ln, c))
        pos = m.end()
    if pos < len(data):
        out.append(data[pos:])
    return out


def _to_c(value: int, bits: int, signed: bool) -> int:
    """`(type)value` for a C integer type of `bits` bits."""
    v = int(value) & ((1 << bits) - 1)
    if signed and v >> (bits - 1):
        v -= 1 << bits
    return v


def _pad(body: bytes, width: int, left: bool) -> bytes:
    if len(body) >= width:
        return body
    return body.ljust(width) if left else body.rjust(width)


def _integer(conv: Conversion, value: int, width: int, prec: Optional[int]) -> bytes:
    c, flags = conv.conv, conv.flags
    if c == "p":
        v = _to_c(value, 64, False)
        if v == 0:
            # glibc prints the whole of "(nil)" whatever the precision, padded with spaces
            return _pad(b"(nil)", width, "-" in flags)
        base, signed, alt, upper = 16, True, True, False   # glibc: %#lx, sign flags kept
    else:
        signed = c in "di"
        v = _to_c(value, _INT_BITS[conv.length and conv.length.encode()], signed)
        base = 10 if c in "diu" else 8 if c == "o" else 16
        alt, upper = "#" in flags, c == "X"
    neg = v < 0
    mag = -v if neg else v
    digits = b"" if prec == 0 and mag == 0 else (
        b"%o" % mag if base == 8 else b"%X" % mag if upper else b"%x" % mag
        if base == 16 else b"%d" % mag)
    if prec is not None and len(digits) < prec:
        digits = digits.rjust(prec, b"0")
    if alt and base == 8 and not digits.startswith(b"0"):
        digits = b"0" + digits
    prefix = (b"0X" if upper else b"0x") if alt and base == 16 and mag else b""
    sign = b""
    if signed:
        sign = b"-" if neg else b"+" if "+" in flags else b" " if " " in flags else b""
    head = sign + prefix
    if "-" not in flags and "0" in flags and prec is None:
        return head + digits.rjust(width - len(head), b"0")
    return _pad(head + digits, width, "-" in flags)


def _floating(conv: Conversion, value: float, width: int, prec: Optional[int]) -> bytes:
    c, flags = conv.conv, conv.flags
    left = "-" in flags
    v = float(value)
    if math.isinf(v) or math.isnan(v):
        # glibc: "inf"/"nan" (upper case for E F G), a sign as for a number ("-nan" when
        # the sign bit is set), padded with spaces even with the 0 flag
        text = b"inf" if math.isinf(v) else b"nan"
        if c in "EFG":
            text = text.upper()
        neg = math.copysign(1.0, v) < 0
        sign = b"-" if neg else b"+" if "+" in flags else b" " if " " in flags else b""
        return _pad(sign + text, width, left)
    # Python's %-formatting of a double is glibc's for finite values: both print the
    # exact binary value correctly rounded, with C's flag rules
    spec = "%" + "".join(f for f in "-+ #0" if f in flags)
    spec += (str(width) if width else "") + ("." + str(prec) if prec is not None else "") + c
    return (spec % v).encode("ascii")


class Format:
    """A format compiled against an event's fields: `format(values)` gives printf's bytes."""

    def __init__(self, pieces: List[Piece], nargs: int):
        self._pieces = pieces
        self.nargs = nargs          # arguments the format reads (the rest are ignored)
        #: the arguments read as a `*` width or precision
        self.star_args = frozenset(i for p in pieces if not isinstance(p, bytes)
                                   for i in p[1:3] if i is not None)

    def format(self, values: Sequence[object]) -> bytes:
        """printf's output for the record's values (in declaration order). Values that
        are not of their field's kind (not from the codec) raise FormatError."""
        out = []
        try:
            for p in self._pieces:
                if isinstance(p, bytes):
                    out.append(p)
                    continue
                conv, wi, pi, ai = p
                width = conv.width if isinstance(conv.width, int) else 0
                prec = conv.precision if not isinstance(conv.precision, str) else None
                left = "-" in conv.flags
                if wi is not None:
                    w = _to_c(values[wi], 32, True)        # `*` reads an int
                    left = left or w < 0                   # a negative width is `-`
                    width = min(abs(w), MAX_WIDTH)
                if pi is not None:
                    q = _to_c(values[pi], 32, True)
                    prec = None if q < 0 else min(q, MAX_WIDTH)   # negative: as if none
                if left and "-" not in conv.flags:
                    conv = conv._replace(flags=conv.flags + "-")
                out.append(self._one(conv, values[ai], width, prec))
        except (TypeError, ValueError, OverflowError, IndexError) as e:
            raise FormatError("a value does not fit its conversion (%s)" % e) from None
        return b"".join(out)

    @staticmethod
    def _one(conv: Conversion, v: object, width: int, prec: Optional[int]) -> bytes:
        c = conv.conv
        left = "-" in conv.flags
        if c == "s":
            if isinstance(v, str):
                # the argument is a C string too: it ends at its first NUL
                data = v.encode("utf-8", "surrogatepass").split(b"\0", 1)[0]
            elif isinstance(v, (bytes, bytearray)):
                data = bytes(v).hex().encode()
            else:
                raise TypeError("%s is not a string" % type(v).__name__)
            if prec is not None:
                data = data[:prec]
            return _pad(data, width, left)
        if c == "c":
            if isinstance(v, float):
                raise TypeError("float for %c")
            return _pad(bytes([_to_c(v, 8, False)]), width, left)   # type: ignore[arg-type]
        if c in "eEfFgG":
            if not isinstance(v, (float, int)) or isinstance(v, bool):
                raise TypeError("%s is not a double" % type(v).__name__)
            return _floating(conv, v, width, prec)
        if not isinstance(v, int):
            raise TypeError("%s is not an integer" % type(v).__name__)
        return _integer(conv, v, width, prec)


def compile_format(fmt: str, fields: Sequence[Tuple[str, str, abi.FieldType]]) -> Format:
    """Compile trace-events format `fmt` (as written: quotes, PRI macros) for an event
    whose arguments are `fields` (EventDecl.fields). FormatError says why it cannot
    apply: the format is then not used at all (no partial output)."""
    pieces: List[Piece] = []
    arg = 0

    def take(what: str, check: Callable[[abi.FieldType], bool]) -> int:
        nonlocal arg
        if arg >= len(fields):
            raise FormatError("too few arguments: %s wants argument %d, the event has %d"
                              % (what, arg + 1, len(fields)))
        name, ctype, ft = fields[arg]
        if not check(ft):
            raise FormatError("%s does not fit argument %d (%s %s)" % (what, arg + 1, ctype,
                                                                      name))
        arg += 1
        return arg - 1

    def is_int(ft: abi.FieldType) -> bool:
        return ft.kind in ("int", "bool")

    for p in _parse(expand_format(fmt)):
        if isinstance(p, bytes):
            if pieces and isinstance(pieces[-1], bytes):
                pieces[-1] += p
            else:
                pieces.append(p)
            continue
        spec = "%" + p.conv
        wi = take("the width * of " + spec, is_int) if p.width == "*" else None
        pi = take("the precision .* of " + spec, is_int) if p.precision == "*" else None
        ai = take(spec, lambda ft, p=p: _fits(p, ft))
        pieces.append((p, wi, pi, ai))
    return Format(pieces, arg)
