"""Tracepoints: one generated Python function per event (as QEMU's tracetool generates C).

The generated function takes exactly the declared arguments, so a call costs a
plain function call. Its first statement tests a global flag that the channel
updates from the host-written enable table; when enabled it reserves, writes
and commits one record in the calling thread's ring, with no lock and no
syscall.
"""

from __future__ import annotations

import keyword
import operator
import struct
from typing import Callable, Dict, List

from .. import abi
from . import accel


class TraceArgumentError(TypeError, ValueError):
    """An argument does not fit the event's declared type."""


# Every name the generated code uses for itself starts with this letter, which no C
# identifier (hence no argument name) can contain: arguments named `len`, `str`,
# `_on` or `__w` shadow nothing, whatever else they are called.
P = "\u0127"          # LATIN SMALL LETTER H WITH STROKE


def _cut(b: bytes) -> bytes:
    """Truncate to STR_MAX bytes without splitting a UTF-8 sequence."""
    n = abi.STR_MAX
    while n > 0 and (b[n] & 0xC0) == 0x80:
        n -= 1
    return b[:n]


def param_names(decl: abi.EventDecl) -> List[str]:
    """The Python parameter of each argument: its C name, unless that is a Python
    keyword (`from`, `in`, `None`) or `__debug__`, which get underscores appended until
    they clash with no other argument (`from` -> `from_`)."""
    taken = {a for a, _, _ in decl.fields}
    out = []
    for a, _, _ in decl.fields:
        p = a
        if keyword.iskeyword(a) or a == "__debug__":
            p = a + "_"
            while p in taken:
                p += "_"
            taken.add(p)
        out.append(p)
    return out


def _char(value: str, signed: bool, err: Callable, arg: str) -> int:
    """A C char given as a one-character str: its code (a byte, as C would store it)."""
    if len(value) != 1 or ord(value) > 0xFF:
        raise err(arg, "one character of code 0..255 or an int", value)
    c = ord(value)
    return c - 0x100 if signed and c > 0x7F else c


_ZERO16 = struct.Struct("<QQ")


def _bool_arg(value, err: Callable, arg: str) -> bool:
    """A bool argument given as something else: an integer (0 or not, as C converts),
    or anything with __index__ (numpy's integers and bools); nothing else."""
    try:
        return operator.index(value) != 0
    except TypeError:
        raise err(arg, "a bool or an int", value) from None


def _source(decl: abi.EventDecl) -> tuple:
    """Python source of the emit function and the Structs it uses."""
    args = param_names(decl)
    structs: Dict[str, struct.Struct] = {}
    prep: List[str] = []
    writes: List[str] = []
    has_var = any(ft.kind in ("str", "bytes") for _, _, ft in decl.fields)
    # fixed-size fields are packed in runs with one Struct each; a string or bytes
    # field puts its u16 length at the end of the run before it, then its bytes
    run_codes = "HHIQ"           # the record header starts the first run
    run_vals = [P + "id", P + "size | %sf" % P if has_var else P + "size",
                P + "seq & 0xFFFFFFFF", P + "clock()"]
    offset = P + "o"
    var_len: List[str] = []
    nvar = 0

    def flush_run(tail: str = "") -> None:
        nonlocal run_codes, run_vals, offset
        if run_codes:
            sname = "%sS%d" % (P, len(structs))
            st = struct.Struct("<" + run_codes)
            structs[sname] = st
            writes.append("%s(%smm, %s, %s)" % (sname, P, offset, ", ".join(run_vals)))
            offset = "%s + %d" % (offset, st.size)
        if tail:
            ln = "%sl%d" % (P, nvar)
            writes.append("%smm[%s:%s + %s] = %s" % (P, offset, offset, ln, tail))
            offset = "(%s + %s)" % (offset, ln)
        run_codes, run_vals = "", []

    fixed = abi.REC_HEADER_SIZE
    for (cname, _ctype, ft), name in zip(decl.fields, args):
        if ft.kind not in ("str", "bytes"):
            if ft.char:
                prep += ["if %sisinstance(%s, %sstr):" % (P, name, P),
                         "    %s = %schar(%s, %r, %sargerr, %r)" % (name, P, name, ft.signed,
                                                               P, cname)]
            elif ft.hex:
                prep += ["if %s is None:" % name, "    %s = 0" % name]   # NULL
            elif ft.kind == "bool":
                # struct's "?" takes any object's truth: "false" would record True
                prep += ["if %s.__class__ is not %sbool:" % (name, P),
                         "    %s = %sbool_arg(%s, %sargerr, %r)" % (name, P, name, P, cname)]
            run_codes += ft.code
            run_vals.append(name)
            fixed += ft.size
            continue
        i = nvar
        sv, lv = "%ss%d" % (P, i), "%sl%d" % (P, i)
        if ft.kind == "str":
            # str.encode itself, not the argument's: a str subclass's own encode (or
            # any object with one) must not decide what is recorded
            prep += ["try:",
                     "    %s = %sencode(%s, 'utf-8', 'replace')" % (sv, P, name),
                     "except %sTypeError:" % P,
                     "    raise %sargerr(%r, 'str', %s) from None" % (P, cname, name),
                     "%s = %slen(%s)" % (lv, P, sv),
                     "if %s > %d:" % (lv, abi.STR_MAX),
                     "    %s = %scut(%s); %s = %slen(%s); %sf = 1" % (sv, P, sv, lv, P, sv, P)]
        else:
            prep += ["if %s.__class__ is %sbytes:" % (name, P),
                     "    %s = %s" % (sv, name),
                     "elif %sisinstance(%s, (%sbytes, %sbytearray, %smemoryview)):"
                     % (P, name, P, P, P),
                     "    %s = %sbytes(%s)" % (sv, P, name),
                     "else:",
                     "    raise %sargerr(%r, 'bytes', %s)" % (P, cname, name),
                     "%s = %slen(%s)" % (lv, P, sv),
                     "if %s > %d:" % (lv, abi.STR_MAX),
                     "    %s = %s[:%d]; %s = %d; %sf = 1" % (sv, sv, abi.STR_MAX, lv,
                                                          abi.STR_MAX, P)]
        run_codes += "H"
        run_vals.append(lv)
        fixed += 2
        var_len.append(lv)
        flush_run(sv)
        nvar += 1
    flush_run()
    w, pos, end, o, seq, size = (P + x for x in ("w", "pos", "end", "o", "seq", "size"))
    body = ["if not %son:" % P, "    return",
            "try:", "    %s = %stls.w" % (w, P), "except %sAttributeError:" % P,
            "    %s = %sclaim()" % (w, P), "    if %s is None:" % w, "        return"]
    if has_var:
        body += ["%sf = 0" % P]
    body += prep
    if has_var:
        body += ["%s = (%d + %s) & -8" % (size, fixed + 7, " + ".join(var_len)),
                 "if %s > %d:" % (size, abi.REC_MAX),
                 "    raise %sargerr(None, 'record of at most %d bytes', %s)"
                 % (P, abi.REC_MAX, size)]
    else:
        body += ["%s = %d" % (size, abi.align(fixed, abi.REC_ALIGN))]
    # from reading pos to the commit the writer is busy: Python code that runs in
    # between (a signal handler, an argument's __index__, make_room) and emits finds
    # it so and drops its record, counted (RingWriter.nested); the outer record then
    # takes seq + 1 whatever that code did (w.seq += 1, not the local's + 1)
    inner = ["%s = %s.pos" % (pos, w),
             "%s = %s + %s" % (end, pos, size),
             "if %s > %s.lim:" % (end, w),
             "    %s = %s.make_room(%s)" % (pos, w, size),
             "    if %s < 0:" % pos,
             "        return",
             "    %s = %s + %s" % (end, pos, size),
             "%s = %s + %s.delta" % (o, pos, w),
             "%s = %s.seq" % (seq, w),
             "try:"]
    inner += ["    " + x for x in writes]
    inner += ["except (%sSE, %sOverflowError) as %se:" % (P, P, P),
              # nothing half written may look like a record to the collector (a header
              # with the expected seq after the commit point reads as a torn record)
              "    %sZ(%smm, %so, 0, 0)" % (P, P, P),
              "    raise %sargerr(None, %sstr(%se), None) from None" % (P, P, P),
              "%s.pos = %s" % (w, end),
              "%s.seq += 1" % w,
              "%scq[%s.ci] = %s" % (P, w, end)]
    body += ["if %s.busy:" % w,
             "    %s.nested()" % w,
             "    return",
             "%s.busy = 1" % w,
             "try:"]
    body += ["    " + x for x in inner]
    body += ["finally:", "    %s.busy = 0" % w]
    src = "def %stp(%s):\n" % (P, ", ".join(args))
    src += "".join("    %s\n" % line for line in body)
    return src, structs


# the globals the channel rebinds (set_cell), by their short names
CELLS = ("_on", "_id", "_clock", "_tls", "_claim", "_mm", "_cq")


def build(decl: abi.EventDecl, tls, claim: Callable, clock: Callable) -> Callable:
    """Create the tracepoint function for `decl` (disabled until a channel enables it)."""
    src, structs = _source(decl)

    def argerr(arg, expected, value):
        if arg is None:
            return TraceArgumentError("%s: %s (signature %s)" % (
                decl.name, expected, decl.signature))
        return TraceArgumentError("%s: argument %r must be %s, not %s" % (
            decl.name, arg, expected, type(value).__name__))

    # each tracepoint gets its own globals: the channel flips `on` there, and a
    # global load is cheaper on entry than closure cells (no per-call copy)
    ns: dict = {P + "on": False, P + "id": 0, P + "clock": clock, P + "tls": tls,
                P + "claim": claim, P + "mm": None, P + "cq": None, P + "argerr": argerr,
                P + "cut": _cut, P + "char": _char, P + "SE": struct.error,
                P + "len": len, P + "isinstance": isinstance, P + "str": str,
                P + "bytes": bytes, P + "bytearray": bytearray, P + "memoryview": memoryview,
                P + "AttributeError": AttributeError, P + "TypeError": TypeError,
                P + "OverflowError": OverflowError, P + "encode": str.encode,
                P + "bool": bool, P + "bool_arg": _bool_arg, P + "Z": _ZERO16.pack_into,
                "__builtins__": {}}
    ns.update({k: v.pack_into for k, v in structs.items()})
    exec(compile(src, "<tracepoint %s>" % decl.name, "exec"), ns)
    py = ns[P + "tp"]
    fn = py
    if accel.ACCELERATED:
        # the same tracepoint with its common case in C; every other case (and every
        # error) is the Python function's, which keeps the cells in step (set_cell)
        fn = accel._accel.Tracepoint(py, _codes(decl), _fixed(decl), abi.STR_MAX,
                                     abi.REC_MAX)
        for k in CELLS:
            fn._set(k, ns[P + k[1:]])
        fn.__wrapped__ = py        # inspect.signature() shows the declared arguments
    for f in {id(py): py, id(fn): fn}.values():
        f.__name__ = f.__qualname__ = decl.name
        f.__module__ = __package__      # both kinds say where they come from alike
        f.decl = decl
        f.name = decl.name
        f.signature = decl.signature
        f.__doc__ = "Tracepoint %s; call to emit." % decl.signature
    fn.enabled = False
    fn.event_id = None
    fn.refused = None          # why the channel refused its declaration, if it did
    return fn


def _codes(decl: abi.EventDecl) -> str:
    """The C path's field codes: struct's for fixed sizes, s for str, y for bytes."""
    return "".join(ft.code or ("s" if ft.kind == "str" else "y") for _, _, ft in decl.fields)


def _fixed(decl: abi.EventDecl) -> int:
    """Record header, fixed-size fields and the u16 length of each str/bytes field."""
    return abi.REC_HEADER_SIZE + sum(ft.size or 2 for _, _, ft in decl.fields)


def _py(fn: Callable) -> Callable:
    return fn.__wrapped__ if not hasattr(fn, "__globals__") else fn


def get_cell(fn: Callable, name: str):
    return _py(fn).__globals__[P + name[1:]]


def set_cell(fn: Callable, name: str, value) -> None:
    """Rebind one of the tracepoint's globals (CELLS: _on, _id, _clock, _tls, ...), in
    the C path too when it has one."""
    if not hasattr(fn, "__globals__"):
        fn._set(name, value)
        fn = fn.__wrapped__
    fn.__globals__[P + name[1:]] = value
