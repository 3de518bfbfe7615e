"""Tracepoints: one generated Python function per event (as QEMU's tracetool generates C).

The generated function takes exactly the declared arguments, so a call costs a
plain function call. Its first statement tests a global flag that the channel
updates from the host-written enable table; when enabled it reserves, writes
and commits one record in the calling thread's ring, with no lock and no
syscall.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, List

from .. import abi


class TraceArgumentError(TypeError, ValueError):
    """An argument does not fit the event's declared type."""


def _cut(b: bytes) -> bytes:
    """Truncate to STR_MAX bytes without splitting a UTF-8 sequence."""
    n = abi.STR_MAX
    while n > 0 and (b[n] & 0xC0) == 0x80:
        n -= 1
    return b[:n]


def _source(decl: abi.EventDecl) -> tuple:
    """Python source of the emit function and the Structs it uses.

    Locals are named __x: the ABI rejects argument names starting with "__".
    """
    args = [a for a, _, _ in decl.fields]
    structs: Dict[str, struct.Struct] = {}
    prep: List[str] = []
    writes: List[str] = []
    has_var = any(ft.kind in ("str", "bytes") for _, _, ft in decl.fields)
    # fixed-size fields are packed in runs with one Struct each; a string or bytes
    # field puts its u16 length at the end of the run before it, then its bytes
    run_codes = "HHIQ"           # the record header starts the first run
    run_vals = ["_id", "__size | __f" if has_var else "__size", "__seq & 0xFFFFFFFF",
                "_clock()"]
    offset = "__o"
    var_len: List[str] = []
    nvar = 0

    def flush_run(tail: str = "") -> None:
        nonlocal run_codes, run_vals, offset
        if run_codes:
            sname = "_S%d" % len(structs)
            st = struct.Struct("<" + run_codes)
            structs[sname] = st
            writes.append("%s(_mm, %s, %s)" % (sname, offset, ", ".join(run_vals)))
            offset = "%s + %d" % (offset, st.size)
        if tail:
            writes.append("_mm[%s:%s + __l%d] = %s" % (offset, offset, nvar, tail))
            offset = "(%s + __l%d)" % (offset, nvar)
        run_codes, run_vals = "", []

    fixed = abi.REC_HEADER_SIZE
    for name, _ctype, ft in decl.fields:
        if ft.kind not in ("str", "bytes"):
            run_codes += ft.code
            run_vals.append(name)
            fixed += ft.size
            continue
        i = nvar
        if ft.kind == "str":
            prep += ["try:",
                     "    __s%d = %s.encode('utf-8', 'replace')" % (i, name),
                     "except AttributeError:",
                     "    raise _argerr(%r, 'str', %s) from None" % (name, name),
                     "__l%d = len(__s%d)" % (i, i),
                     "if __l%d > %d:" % (i, abi.STR_MAX),
                     "    __s%d = _cut(__s%d); __l%d = len(__s%d); __f = 1" % (i, i, i, i)]
        else:
            prep += ["if %s.__class__ is bytes:" % name,
                     "    __s%d = %s" % (i, name),
                     "elif isinstance(%s, (bytes, bytearray, memoryview)):" % name,
                     "    __s%d = bytes(%s)" % (i, name),
                     "else:",
                     "    raise _argerr(%r, 'bytes', %s)" % (name, name),
                     "__l%d = len(__s%d)" % (i, i),
                     "if __l%d > %d:" % (i, abi.STR_MAX),
                     "    __s%d = __s%d[:%d]; __l%d = %d; __f = 1" % (i, i, abi.STR_MAX, i,
                                                                   abi.STR_MAX)]
        run_codes += "H"
        run_vals.append("__l%d" % i)
        fixed += 2
        var_len.append("__l%d" % i)
        flush_run("__s%d" % i)
        nvar += 1
    flush_run()
    body = ["if not _on:", "    return",
            "try:", "    __w = _tls.w", "except AttributeError:",
            "    __w = _claim()", "    if __w is None:", "        return"]
    if has_var:
        body += ["__f = 0"] + prep
        body += ["__size = (%d + %s) & -8" % (fixed + 7, " + ".join(var_len)),
                 "if __size > %d:" % abi.REC_MAX,
                 "    raise _argerr(None, 'record of at most %d bytes', __size)" % abi.REC_MAX]
    else:
        body += ["__size = %d" % abi.align(fixed, abi.REC_ALIGN)]
    body += ["__pos = __w.pos",
             "__end = __pos + __size",
             "if __end > __w.lim:",
             "    __pos = __w.make_room(__size)",
             "    if __pos < 0:",
             "        return",
             "    __end = __pos + __size",
             "__o = __pos + __w.delta",
             "__seq = __w.seq",
             "try:"]
    body += ["    " + x for x in writes]
    body += ["except _SE as __e:",
             "    raise _argerr(None, str(__e), None) from None",
             "__w.pos = __end",
             "__w.seq = __seq + 1",
             "_cq[__w.ci] = __end"]
    src = "def %s(%s):\n" % (decl.name, ", ".join(args))
    src += "".join("    %s\n" % line for line in body)
    return src, structs


def build(decl: abi.EventDecl, tls, claim: Callable, clock: Callable) -> Callable:
    """Create the tracepoint function for `decl` (disabled until a channel enables it)."""
    src, structs = _source(decl)

    def argerr(arg, expected, value):
        if arg is None:
            return TraceArgumentError("%s: %s (signature %s)" % (
                decl.name, expected, decl.signature))
        return TraceArgumentError("%s: argument %r must be %s, not %s" % (
            decl.name, arg, expected, type(value).__name__))

    # each tracepoint gets its own globals: the channel flips `_on` there, and a
    # global load is cheaper on entry than closure cells (no per-call copy)
    ns: dict = {"_on": False, "_id": 0, "_clock": clock, "_tls": tls, "_claim": claim,
                "_mm": None, "_cq": None, "_argerr": argerr, "_cut": _cut,
                "_SE": struct.error, "__builtins__": __builtins__}
    ns.update({k: v.pack_into for k, v in structs.items()})
    exec(compile(src, "<tracepoint %s>" % decl.name, "exec"), ns)
    fn = ns[decl.name]
    fn.decl = decl
    fn.name = decl.name
    fn.signature = decl.signature
    fn.enabled = False
    fn.event_id = None
    fn.refused = None          # why the channel refused its declaration, if it did
    fn.__doc__ = "Tracepoint %s; call to emit." % decl.signature
    return fn


def set_cell(fn: Callable, name: str, value) -> None:
    """Rebind one of the tracepoint's globals (_on, _id, _clock, _tls, _mm, _cq)."""
    fn.__globals__[name] = value
