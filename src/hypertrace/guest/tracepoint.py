"""Tracepoints: one generated Python function per event (as QEMU's tracetool generates C).

The generated function takes exactly the declared arguments, so a call costs a
plain function call. Its first statement tests a closure cell that the channel
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
    """Python source of the emit function and the Structs it uses."""
    args = [a for a, _, _ in decl.fields]
    structs: Dict[str, struct.Struct] = {}
    prep: List[str] = []
    writes: List[str] = []
    # group fields: fixed runs are packed with one Struct, each variable field
    # contributes its u16 length to the run before it and its bytes after it
    run_codes = "HHIQ"           # record header comes first
    run_vals = ["_id", "size | f", "seq & 0xFFFFFFFF", "_clock()"]
    offset = "o"
    var_len = []                  # expressions of variable byte lengths so far
    nvar = 0

    def flush_run(tail_bytes: str = "") -> None:
        nonlocal run_codes, run_vals, offset
        if run_codes:
            sname = "_S%d" % len(structs)
            st = struct.Struct("<" + run_codes)
            structs[sname] = st
            writes.append("%s(mm, %s, %s)" % (sname, offset, ", ".join(run_vals)))
            offset = "%s + %d" % (offset, st.size)
        if tail_bytes:
            writes.append("mm[%s:%s + l%d] = %s" % (offset, offset, nvar, tail_bytes))
            offset = "(%s + l%d)" % (offset, nvar)
        run_codes, run_vals = "", []

    fixed = abi.REC_HEADER_SIZE
    for name, _ctype, ft in decl.fields:
        if ft.kind in ("str", "bytes"):
            if ft.kind == "str":
                prep.append("try:\n    s{i} = {a}.encode('utf-8', 'replace')\n"
                            "except AttributeError:\n"
                            "    raise _argerr({a!r}, 'str', {a}) from None".format(i=nvar, a=name))
            else:
                prep.append("if {a}.__class__ is not bytes:\n"
                            "    if not isinstance({a}, (bytes, bytearray, memoryview)):\n"
                            "        raise _argerr({a!r}, 'bytes', {a})\n"
                            "    {a} = bytes({a})\n"
                            "s{i} = {a}".format(i=nvar, a=name))
            prep.append("l{i} = len(s{i})\nif l{i} > {m}:\n    s{i} = _cut(s{i}); l{i} = len(s{i}); "
                        "f = 1".format(i=nvar, m=abi.STR_MAX))
            run_codes += "H"
            run_vals.append("l%d" % nvar)
            fixed += 2
            var_len.append("l%d" % nvar)
            flush_run("s%d" % nvar)
            nvar += 1
        else:
            run_codes += ft.code
            run_vals.append(name)
            fixed += ft.size
    flush_run()
    size = "(%d + %s) & -8" % (fixed + 7, " + ".join(var_len)) if var_len else str(
        abi.align(fixed, abi.REC_ALIGN))
    body = ["if not _on:", "    return",
            "try:", "    w = _tls.w", "except AttributeError:",
            "    w = _claim()", "    if w is None:", "        return",
            "f = 0"]
    for p in prep:
        body.extend(p.splitlines())
    body += ["size = %s" % size,
             "if size > %d:" % abi.REC_MAX,
             "    raise _argerr(None, 'record of at most %d bytes', size)" % abi.REC_MAX,
             "pos = w.pos",
             "off = pos & w.mask",
             "if off + size > w.size or pos + size - w.tail > w.size:",
             "    pos = w.make_room(size)",
             "    if pos < 0:",
             "        return",
             "    off = pos & w.mask",
             "mm = w.mm",
             "o = w.base + off",
             "seq = w.seq",
             "try:"]
    body += ["    " + x for x in writes]
    body += ["except _SE as e:",
             "    raise _argerr(None, str(e), None) from None",
             "seq += 1",
             "pos += size",
             "w.pos = pos",
             "w.seq = seq",
             "_PC(mm, w.desc, pos, seq)"]
    src = "def _factory(_on, _id, _clock, _tls, _claim, _argerr, _cut, _SE, _PC, %s):\n" % (
        ", ".join(structs) or "_unused=None")
    src += "    def %s(%s):\n" % (decl.name, ", ".join(args))
    src += "".join("        %s\n" % line for line in body)
    src += "    return %s\n" % decl.name
    return src, structs


_COMMIT = struct.Struct("<QQ").pack_into


def build(decl: abi.EventDecl, tls, claim: Callable, clock: Callable) -> Callable:
    """Create the tracepoint function for `decl` (disabled until a channel enables it)."""
    src, structs = _source(decl)

    def argerr(arg, expected, value):
        if arg is None:
            return TraceArgumentError("%s: %s (signature %s)" % (decl.name, expected, decl.signature))
        return TraceArgumentError("%s: argument %r must be %s, not %s" % (
            decl.name, arg, expected, type(value).__name__))

    ns: dict = {}
    exec(compile(src, "<tracepoint %s>" % decl.name, "exec"), ns)
    packers = {k: v.pack_into for k, v in structs.items()}
    fn = ns["_factory"](False, 0, clock, tls, claim, argerr, _cut, struct.error, _COMMIT,
                        **packers)
    fn.decl = decl
    fn.name = decl.name
    fn.signature = decl.signature
    fn.enabled = False
    fn.event_id = None
    fn.__doc__ = "Tracepoint %s; call to emit." % decl.signature
    return fn


def set_cell(fn: Callable, name: str, value) -> None:
    """Rebind one of the tracepoint's closure variables (_on, _id, _clock)."""
    fn.__closure__[fn.__code__.co_freevars.index(name)].cell_contents = value
