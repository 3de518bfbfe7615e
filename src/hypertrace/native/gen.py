"""`hypertrace gen-c`: a C header of tracepoints from a trace-events file (as QEMU's
tracetool generates its backends), and `hypertrace c-config`: the compiler flags
that build a program with them.

Each event NAME becomes `static inline void trace_NAME(args...)` and
`static inline int trace_NAME_enabled(void)`. The declaration text is the Python
library's (`EventDecl.slot_text`), byte for byte, so C and Python producers of
one channel share their events. The record is stored inline (hypertrace.h) in
the encoding of docs/abi.md §3-§4; the runtime (hypertrace.c) is compiled into
the program: `c-config --libs` names its source, so nothing is built at install
time and nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from typing import List, Tuple

from .. import abi

__all__ = ["NATIVE_DIR", "generate", "cflags", "libs", "c_type"]

NATIVE_DIR = os.path.dirname(os.path.abspath(__file__))

C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto "
    "if inline int long register restrict return short signed sizeof static struct switch "
    "typedef union unsigned void volatile while _Bool _Complex _Imaginary _Alignas _Alignof "
    "_Atomic _Generic _Noreturn _Static_assert _Thread_local bool true false alignas alignof "
    "nullptr static_assert thread_local typeof typeof_unqual constexpr".split())
QUALIFIERS = ("const", "volatile", "restrict")
STD_NAMES = frozenset(
    "int8_t uint8_t int16_t uint16_t int32_t uint32_t int64_t uint64_t intptr_t uintptr_t "
    "ptrdiff_t intmax_t uintmax_t size_t ssize_t off_t pid_t bool _Bool float double void "
    "signed unsigned char short int long".split())
INT_C = {"b": "int8_t", "B": "uint8_t", "h": "int16_t", "H": "uint16_t", "i": "int32_t",
         "I": "uint32_t", "q": "int64_t", "Q": "uint64_t", "?": "uint8_t", "f": "float",
         "d": "double"}


def cflags() -> str:
    return "-I%s" % NATIVE_DIR


def libs() -> str:
    """The runtime, compiled into the program (no library to build or install)."""
    return "%s -pthread" % os.path.join(NATIVE_DIR, "hypertrace.c")


def c_type(ctype: str, ft: abi.FieldType) -> str:
    """The parameter type of an argument: its declared C type when plain C spells it
    (with <stdint.h>, <stdbool.h>, <sys/types.h>), else what its record stores
    (QEMU's hwaddr -> uint64_t; a pointer to a type C does not know -> const void *)."""
    words = [w for w in ctype.replace("*", " ").split() if w not in QUALIFIERS]
    known = all(w in STD_NAMES for w in words)
    if "*" in ctype:
        return ctype if known else "const void *"
    if known:
        return ctype
    return INT_C[ft.code]


def _c_string(text: str) -> str:
    out = []
    for b in text.encode("utf-8"):
        c = chr(b)
        if c in '"\\':
            out.append("\\" + c)
        elif 0x20 <= b < 0x7F and c != "?":     # `?`: no trigraphs
            out.append(c)
        else:
            out.append("\\%03o" % b)
    return '"' + "".join(out) + '"'


def _param_names(decl: abi.EventDecl) -> List[str]:
    """C parameter names: the argument's own, unless a keyword or one of ours (`_ht_`)."""
    taken = {a for a, _, _ in decl.fields}
    out = []
    for a, _, _ in decl.fields:
        p = a
        if p in C_KEYWORDS or p.startswith("_ht_"):
            p = a + "_"
            while p in taken or p.startswith("_ht_"):
                p = "x" + p
            taken.add(p)
        out.append(p)
    return out


def _event(decl: abi.EventDecl) -> str:
    n = decl.name
    ev = "_ht_ev_%s" % n
    names = _param_names(decl)
    params: List[str] = []        # the public prototype
    inner: List[str] = []         # the emitter's own parameters: a0, a1...
    call: List[str] = []
    body: List[str] = []
    stores: List[str] = []
    fixed = abi.REC_HEADER_SIZE
    var: List[str] = []
    for k, ((_, ctype, ft), pname) in enumerate(zip(decl.fields, names)):
        a = "a%d" % k
        if ft.kind == "bytes":
            t = "const void *"
            params += [t + pname, "size_t %s_len" % pname]
            inner += [t + a, "size_t %sn" % a]
            call += [pname, "%s_len" % pname]
            body += ["size_t l%d = %s ? %sn : 0;" % (k, a, a),
                     "if (l%d > HT_STR_MAX) { l%d = HT_STR_MAX; f |= HT_FLAG_TRUNCATED; }"
                     % (k, k)]
            stores.append("q = ht__put_str(q, (const char *)%s, l%d);" % (a, k))
            fixed += 2
            var.append("l%d" % k)
            continue
        t = c_type(ctype, ft)
        sep = "" if t.endswith("*") else " "
        params.append(t + sep + pname)
        inner.append(t + sep + a)
        call.append(pname)
        if ft.kind == "str":
            body += ["const char *s%d = %s;" % (k, a), "size_t l%d = ht__strlen(&s%d, &f);"
                     % (k, k)]
            stores.append("q = ht__put_str(q, s%d, l%d);" % (k, k))
            fixed += 2
            var.append("l%d" % k)
            continue
        st = INT_C[ft.code]
        if "*" in ctype:
            val = "(uint64_t)(uintptr_t)(%s)" % a
        elif ft.kind == "bool":
            val = "(uint8_t)((%s) ? 1 : 0)" % a
        else:
            val = "(%s)(%s)" % (st, a)
        stores.append("{ %s v = %s; memcpy(q, &v, %d); q += %d; }" % (st, val, ft.size,
                                                                      ft.size))
        fixed += ft.size
    if var:
        size = "(uint32_t)((%d + %s) & ~(size_t)7)" % (fixed + 7, " + ".join(var))
    else:
        size = "%du" % abi.align(fixed, abi.REC_ALIGN)
    lines = ["/* %s */" % decl.slot_text.replace("*/", "* /"),
             "static ht_event %s = HT_EVENT_INIT(%s, %s, %d);" % (
                 ev, _c_string(decl.slot_text), _c_string(n), 1 if decl.disabled else 0),
             "static inline int trace_%s_enabled(void) { return ht_enabled(&%s); }" % (n, ev),
             "static inline void _ht_emit_%s(%s)" % (n, ", ".join(inner) or "void"),
             "{",
             "    int id = ht__id(&%s, 1);" % ev,
             "    if (__builtin_expect(id < 0, 1))" if decl.disabled else
             "    if (__builtin_expect(id < 0, 0))",
             "        return;",
             "    unsigned f = 0;"]
    lines += ["    " + x for x in body]
    lines += ["    (void)f;",
              "    uint32_t size = %s;" % size,
              "    ht_writer *w;",
              "    uint8_t *q = ht__begin(&w, id, size, f);",
              "    if (!q)",
              "        return;"]
    lines += ["    " + x for x in stores]
    lines += ["    (void)q;", "    ht__end(w, size);", "}",
              "static inline void trace_%s(%s)" % (n, ", ".join(params) or "void"),
              "{",
              "    _ht_emit_%s(%s);" % (n, ", ".join(call)),
              "}", ""]
    return "\n".join(lines)


def generate(decls: List[abi.EventDecl], source: str = "trace-events") -> str:
    guard = "HT_TRACE_%s_H" % re.sub(r"[^A-Za-z0-9]", "_", os.path.basename(source)).upper()
    out = ["/* Generated by `hypertrace gen-c %s`: do not edit. */" % os.path.basename(source),
           "#ifndef %s" % guard, "#define %s" % guard, "",
           "#include <stdbool.h>", "#include <stddef.h>", "#include <stdint.h>",
           "#include <string.h>", "#include <sys/types.h>", '#include "hypertrace.h"', ""]
    out += [_event(d) for d in decls]
    out += ["#endif /* %s */" % guard, ""]
    return "\n".join(out)


def generate_file(path: str) -> Tuple[str, List[str]]:
    """(header text, warnings) for a trace-events file; ValueError `path:line: cause`."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError("%s:%d: not UTF-8 text (byte 0x%02x)" % (
            path, raw.count(b"\n", 0, e.start) + 1, raw[e.start])) from None
    decls = abi.parse_trace_events(text, path)
    warnings = ["event %s: its format is left out of the declaration (signature and format "
                "exceed %d bytes)" % (d.name, abi.DECL_TEXT_MAX)
                for d in decls if d.fmt and d.slot_text == d.signature]
    return generate(decls, path), warnings
