"""Function tracing: every Python call and return of every thread, as small records.

    from hypertrace.guest import functions
    functions.start(include=["*/myapp/*"], exclude=["*/site-packages/*"])

(`hypertrace record --functions -- python app.py` does this in every Python process
it starts, through the start-up hook in guest/boot/.) A code object is declared once,
at its first call, by a `hypertrace_code(code, name, file, line)` record; each call
and return is then a 24-byte `hypertrace_call(code)` / `hypertrace_return(code)`
record. With the accelerator the profile function is C (native/accel.c: the id
lives in the code object's co_extra slot, the record is written by the C
tracepoint); without it, a pure-Python `sys.setprofile` function does the same,
several times slower. New threads are traced from their first call
(threading.setprofile); a thread's frames that began before tracing started are
not (their returns would have no call). C functions are not traced.

Globs (fnmatch) match a code object's file name or its qualified name: a function
is traced when it matches an --include (all are, with none) and no --exclude;
hypertrace's own code never is.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import sys
import threading
from typing import Dict, Iterable, List, Optional

from . import accel

CODE_ARGS = "uint32_t code, const char *name, const char *file, uint32_t line"
_OWN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # hypertrace/

_state: Optional[_Tracer] = None


class _Tracer:
    def __init__(self, include: List[str], exclude: List[str]):
        from . import event
        self.include, self.exclude = include, exclude
        self.code = event("hypertrace_code", CODE_ARGS)
        self.call = event("hypertrace_call", "uint32_t code")
        self.ret = event("hypertrace_return", "uint32_t code")
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.py_ids: Dict[object, int] = {}     # pure path: code object -> id (kept alive)
        self.local = threading.local()
        self.how = ""           # eval (C, every thread), profile (C), setprofile (Python)

    def wanted(self, code) -> bool:
        file = code.co_filename
        if file.startswith(_OWN) and file[len(_OWN):len(_OWN) + 1] in (os.sep, ""):
            return False
        name = getattr(code, "co_qualname", code.co_name)
        if self.include and not any(fnmatch.fnmatchcase(file, g) or fnmatch.fnmatchcase(name, g)
                                    for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(file, g) or fnmatch.fnmatchcase(name, g)
                       for g in self.exclude)

    def on_code(self, code) -> int:
        """A code object's first call: its id (0: not traced), declared by a record."""
        if not self.wanted(code):
            return 0
        with self.lock:
            i = next(self.ids)
        if i > 0xFFFFFFFF:
            return 0
        self.code(i, getattr(code, "co_qualname", code.co_name), code.co_filename,
                  code.co_firstlineno)
        return i

    # -- the pure-Python profile function ---------------------------------------
    def py_hook(self, frame, event: str, arg) -> None:
        if event == "call":
            code = frame.f_code
            i = self.py_ids.get(code)
            if i is None:
                i = self.py_ids[code] = self.on_code(code)
            if i:
                loc = self.local
                loc.depth = getattr(loc, "depth", 0) + 1
                self.call(i)
        elif event == "return":
            loc = self.local
            depth = getattr(loc, "depth", 0)
            if depth:
                i = self.py_ids.get(frame.f_code)
                if i:
                    loc.depth = depth - 1
                    self.ret(i)


def _thread_boot(frame, event: str, arg) -> None:
    """threading.setprofile's function: a new thread's first event puts the C profile
    function in its place."""
    accel._accel.profile_thread()


def start(include: Iterable[str] = (), exclude: Iterable[str] = ()) -> bool:
    """Trace every Python call from now on, in this thread and threads started later.
    Returns False (with a warning) when tracing cannot start."""
    global _state
    from .channel import warn
    if _state is not None:
        return True
    try:
        t = _Tracer(list(include), list(exclude))
    except (ValueError, OSError) as e:
        warn("function tracing off: %s" % e)
        return False
    try:
        if _c_path(t):
            # the frame-evaluation hook is opt-in: under it every call recurses in C,
            # and a thread with a small stack can overflow it where it would not
            # untraced (a review crashed one at depth 950 with 256 KiB)
            eval_ok = os.environ.get("HYPERTRACE_FUNCTIONS_HOOK", "") == "eval"
            t.how = accel._accel.profile_start(t.call, t.ret, t.on_code, _thread_boot,
                                               eval_ok)
            if t.how == "profile":      # the eval hook covers every thread itself
                threading.setprofile(_thread_boot)
        else:
            t.how = "setprofile"
            threading.setprofile(t.py_hook)
            sys.setprofile(t.py_hook)
    except (TypeError, ValueError, RuntimeError) as e:
        warn("function tracing off: %s" % e)
        return False
    _state = t
    return True


def _c_path(t: _Tracer) -> bool:
    a = accel._accel
    return a is not None and hasattr(a, "profile_start") and isinstance(t.call, a.Tracepoint)


def stop() -> None:
    """No more function records (from any thread)."""
    global _state
    t, _state = _state, None
    if t is None:
        return
    threading.setprofile(None)
    if _c_path(t):
        accel._accel.profile_stop()
    else:
        sys.setprofile(None)


def errors() -> int:
    """Records the C profile function could not write (an error it cleared)."""
    a = accel._accel
    return a.profile_errors() if a is not None and hasattr(a, "profile_errors") else 0


def tracing() -> str:
    """How functions are traced now: "eval" (C frame-evaluation hook, CPython 3.11),
    "profile" (C profile function), "setprofile" (pure Python), or "" (they are not)."""
    if _state is None:
        return ""
    if _state.how in ("eval", "profile"):
        return accel._accel.profile_mode()    # eval gives way to profile (accel.c)
    return _state.how
