"""`hypertrace gen-c`: a C header of tracepoints from a trace-events file (as QEMU's
tracetool generates its backends), and `hypertrace c-config`: the compiler flags
that build a program with them.

Each event NAME becomes `static inline void trace_NAME(args...)` and
`static inline int trace_NAME_enabled(void)` (an event `NAME_enabled` beside `NAME`
is refused). The declaration text is the Python
library's (`EventDecl.slot_text`), byte for byte, so C and Python producers of
one channel share their events. The record is stored inline (hypertrace.h) in
the encoding of docs/abi.md §3-§4; the runtime (hypertrace.c) is compiled into
the program: `c-config --libs` names its source, so nothing is built at install
time and nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import List, Optional, Tuple

from .. import abi

__all__ = ["NATIVE_DIR", "generate", "generate_file", "cflags", "libs", "c_type",
           "prototype", "check_c_names"]

NATIVE_DIR = os.path.dirname(os.path.abspath(__file__))

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


def _comment(text: str) -> str:
    """`text` inside a one-line C comment: `*/` and `/*` broken by a space (gcc -Wall
    warns of a `/*` in a comment), control characters written as `\\xNN` (a NUL
    draws a warning too, and -Werror makes warnings errors)."""
    text = re.sub(r"/(?=\*)|\*(?=/)", r"\g<0> ", text)
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: "\\x%02x" % ord(m.group()), text)


def prototype(decl: abi.EventDecl) -> str:
    """`void trace_NAME(type arg, ...)` with the argument names of trace-events: the
    function as documented (its C parameters are named `_ht_aN`, see _event)."""
    params = []
    for a, ctype, ft in decl.fields:
        if ft.kind == "bytes":
            params.append("const void *%s, size_t %s_len" % (a, a))
        else:
            t = c_type(ctype, ft)
            params.append(t + ("" if t.endswith("*") else " ") + a)
    return "void trace_%s(%s)" % (decl.name, ", ".join(params) or "void")


def _event(decl: abi.EventDecl, origin: str) -> str:
    # Every name the function's code uses is the header's own (`_ht_` then a letter, at
    # block scope: a name C leaves to programs): the argument names of trace-events
    # are only in the comment. Any C identifier is an argument name (`errno`, `stdin`,
    # `bool`, `I`, `assert`, `NULL`, a keyword, `__x`, a name of hypertrace.h), and
    # many are macros of the C library or of the program, which a parameter of that
    # name would expand.
    n = decl.name
    ev = "_ht_ev_%s" % n
    params: List[str] = []
    body: List[str] = []
    stores: List[str] = []
    fixed = abi.REC_HEADER_SIZE
    var: List[str] = []
    for k, (_, ctype, ft) in enumerate(decl.fields):
        a, ln = "_ht_a%d" % k, "_ht_l%d" % k
        if ft.kind == "bytes":
            params += ["const void *" + a, "size_t %s_len" % a]
            body += ["size_t %s = %s ? %s_len : 0;" % (ln, a, a),
                     "if (%s > HT_STR_MAX) { %s = HT_STR_MAX; _ht_f |= HT_FLAG_TRUNCATED; }"
                     % (ln, ln)]
            stores.append("_ht_q = ht__put_str(_ht_q, (const char *)%s, %s);" % (a, ln))
            fixed += 2
            var.append(ln)
            continue
        t = c_type(ctype, ft)
        params.append(t + ("" if t.endswith("*") else " ") + a)
        if ft.kind == "str":
            sk = "_ht_s%d" % k
            body += ["const char *%s = %s;" % (sk, a),
                     "size_t %s = ht__strlen(&%s, &_ht_f);" % (ln, sk)]
            stores.append("_ht_q = ht__put_str(_ht_q, %s, %s);" % (sk, ln))
            fixed += 2
            var.append(ln)
            continue
        st = INT_C[ft.code]
        if "*" in ctype:
            val = "(uint64_t)(uintptr_t)(%s)" % a
        elif ft.kind == "bool":
            val = "(uint8_t)((%s) ? 1 : 0)" % a
        else:
            val = "(%s)(%s)" % (st, a)
        stores.append("{ %s _ht_v = %s; memcpy(_ht_q, &_ht_v, %d); _ht_q += %d; }"
                      % (st, val, ft.size, ft.size))
        fixed += ft.size
    if var:
        size = "(uint32_t)((%d + %s) & ~(size_t)7)" % (fixed + 7, " + ".join(var))
    else:
        size = "%du" % abi.align(fixed, abi.REC_ALIGN)
    # the same event in two generated headers of one translation unit: said once, by
    # name, before the compiler's redefinitions of its functions
    mark = "HT_GEN_EVENT_%s" % n
    lines = ["/* %s */" % _comment(decl.slot_text),
             "/* %s */" % _comment(prototype(decl)),
             "#ifdef %s" % mark,
             "#error %s" % _c_string("hypertrace: event %s is declared by two generated "
                                     "headers (again in the one of %s)" % (n, origin)),
             "#endif",
             "#define %s 1" % mark,
             "static ht_event %s = HT_EVENT_INIT(%s, %s, %d);" % (
                 ev, _c_string(decl.slot_text), _c_string(n), 1 if decl.disabled else 0),
             "static inline int trace_%s_enabled(void) { return ht_enabled(&%s); }" % (n, ev),
             "static inline void trace_%s(%s)" % (n, ", ".join(params) or "void"),
             "{",
             "    int _ht_id = ht__id(&%s, 1);" % ev,
             "    if (__builtin_expect(_ht_id < 0, 1))" if decl.disabled else
             "    if (__builtin_expect(_ht_id < 0, 0))",
             "        return;",
             "    unsigned _ht_f = 0;"]
    lines += ["    " + x for x in body]
    lines += ["    (void)_ht_f;",
              "    uint32_t _ht_size = %s;" % size,
              "    ht_writer *_ht_w;",
              "    uint8_t *_ht_q = ht__begin(&_ht_w, _ht_id, _ht_size, _ht_f);",
              "    if (!_ht_q)",
              "        return;"]
    lines += ["    " + x for x in stores]
    lines += ["    (void)_ht_q;", "    ht__end(_ht_w, _ht_size);", "}", ""]
    return "\n".join(lines)


def check_c_names(found: List[Tuple[int, abi.EventDecl]], source: str) -> None:
    """ValueError `source:line: ...` for what C cannot hold: two events' functions of one
    name (`foo`'s trace_foo_enabled() and event `foo_enabled`'s trace_foo_enabled();
    refused, not renamed: a renamed function would not be the one the program calls),
    or a NUL in a declaration (the runtime takes its text as a C string: it would be
    declared cut, and refused)."""
    line = {d.name: n for n, d in found}
    for n, d in found:
        if "\x00" in d.slot_text:
            raise ValueError("%s:%d: event %s: its format holds a NUL character, which "
                             "the C string of its declaration cannot" % (source, n, d.name))
        if d.name.endswith("_enabled") and d.name[:-8] in line:
            raise ValueError("%s:%d: event %s: trace_%s() is also the enabled test of event "
                             "%s (line %d); rename one of them"
                             % (source, n, d.name, d.name, d.name[:-8], line[d.name[:-8]]))


def _guard_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", text).upper()


def generate(decls: List[abi.EventDecl], source: str = "trace-events",
             output: Optional[str] = None) -> str:
    """The header of `decls` (read from `source`, written to `output`; None: standard
    output). Headers of different trace-events files can be included in one
    translation unit: their include guards differ (below), every other name is the
    event's own, and everything is static (nothing to collide at link time).
    ValueError from check_c_names (lines counted as positions in `decls`)."""
    check_c_names(list(enumerate(decls, 1)), source)
    # QEMU has a `trace-events` file per directory: the guard is the output's name
    # and a hash of the events, not the input's name. A hash of the declarations, not
    # of a path: the same file gives the same guard in any build tree
    digest = hashlib.sha256("\n".join("%d %s" % (d.disabled, d.slot_text) for d in decls)
                            .encode()).hexdigest()[:16].upper()
    guard = "HT_TRACE_%s_%s_H" % (_guard_name(os.path.basename(output or source)), digest)
    body = [_event(d, source) for d in decls]
    out = ["/* Generated by `hypertrace gen-c %s`: do not edit. */" % _comment(source),
           "#ifndef %s" % guard, "#define %s" % guard, "",
           "#include <stdbool.h>", "#include <stddef.h>", "#include <stdint.h>",
           "#include <string.h>", "#include <sys/types.h>", '#include "hypertrace.h"', ""]
    out += body
    out += ["#endif /* %s */" % guard, ""]
    return "\n".join(out)


def generate_file(path: str, output: Optional[str] = None) -> Tuple[str, List[str]]:
    """(header text, warnings) for a trace-events file; ValueError `path:line: cause`
    (the file's size and line length are bounded: abi.load_file)."""
    found = abi.load_file(path)
    check_c_names(found, path)
    decls = [d for _, d in found]
    warnings = ["event %s: its format is left out of the declaration (signature and format "
                "exceed %d bytes)" % (d.name, abi.DECL_TEXT_MAX)
                for d in decls if d.fmt and d.slot_text == d.signature]
    return generate(decls, path, output), warnings
