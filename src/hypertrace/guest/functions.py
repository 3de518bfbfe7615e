"""Function tracing: every Python call and return of every thread, as small records.

    from hypertrace.guest import functions
    functions.start(include=["*/myapp/*"], exclude=["*/site-packages/*"])

(`hypertrace record --functions -- python app.py` does this in every Python process
it starts, through the start-up hook in guest/boot/.) A code object is declared once,
at its first call, by a `hypertrace_code(code, name, file, line)` record; each call
and return is then a 24-byte `hypertrace_call(code)` / `hypertrace_return(code)`
record. With the accelerator the hook is C (native/accel.c: the id lives in the
code object's co_extra slot, the record is written by the C tracepoint): a
frame-evaluation hook (PEP 523) on CPython 3.11, else (or with
HYPERTRACE_FUNCTIONS_HOOK=profile) a C profile function; without it, a pure-Python
`sys.setprofile` function does the same, several times slower. New threads are
traced from their first call (threading.setprofile); a thread's frames that began
before tracing started are not (their returns would have no call). C functions are not traced.

Globs (fnmatch) match a code object's file name or its qualified name: a function
is traced when it matches an --include (all are, with none) and no --exclude;
hypertrace's own code never is.

A forked child declares its code objects again (the views name calls after their
own process's declarations); calls made by at-fork hooks, which run before the
child has rings of its own, are not traced. A program that puts its own profile
function in place (sys.setprofile, cProfile, a debugger) ends tracing of that
thread: a warning says so, and a `hypertrace_functions_off(why)` record marks the
moment where it can be seen (sys.setprofile), else the end of the thread's tracing.
"""

from __future__ import annotations

import fnmatch
import itertools
import os
import sys
import threading
import weakref
from typing import Dict, Iterable, List, Optional

from . import accel

CODE_ARGS = "uint32_t code, const char *name, const char *file, uint32_t line"
_setprofile = accel._setprofile     # the interpreter's own (the program's is wrapped)
HOOK_ENV = "HYPERTRACE_FUNCTIONS_HOOK"     # eval (the default where built) or profile
_OWN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # hypertrace/

_state: Optional[_Tracer] = None


class _Tracer:
    def __init__(self, include: List[str], exclude: List[str]):
        from . import _emit_mark, _written_since, event
        # (kept: on_code runs at interpreter shutdown too, when imports fail)
        self._mark, self._written = _emit_mark, _written_since
        self.include, self.exclude = include, exclude
        self.code = event("hypertrace_code", CODE_ARGS)
        self.call = event("hypertrace_call", "uint32_t code")
        self.ret = event("hypertrace_return", "uint32_t code")
        self.off = event("hypertrace_functions_off", "const char *why")
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        # code object -> id: two threads that meet a code at once give it one id
        self.known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.py_ids: Dict[object, int] = {}     # pure path: code object -> id (kept alive)
        self.local = threading.local()
        self.how = ""           # eval (C, every thread), profile (C), setprofile (Python)
        self.warned = False
        self.reported: set = set()      # threads whose end was recorded

    def wanted(self, code) -> bool:
        file = code.co_filename
        if file.startswith(_OWN) and file[len(_OWN):len(_OWN) + 1] in (os.sep, ""):
            return False
        if file.startswith("<tracepoint "):     # guest/tracepoint.py's generated code
            return False
        name = getattr(code, "co_qualname", code.co_name)
        if self.include and not any(fnmatch.fnmatchcase(file, g) or fnmatch.fnmatchcase(name, g)
                                    for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(file, g) or fnmatch.fnmatchcase(name, g)
                       for g in self.exclude)

    def on_code(self, code) -> int:
        """A code object's first call in this process: its id (0: not traced),
        declared by a record; -id when that record did not reach a ring (no ring
        for this thread, a full one), to be declared again at the next call."""
        if not self.wanted(code):
            return 0
        with self.lock:
            i = self.known.get(code)
            if i is None:
                i = self.known[code] = next(self.ids)
        if i > 0xFFFFFFFF:
            return 0
        mark = self._mark()
        self.code(i, getattr(code, "co_qualname", code.co_name), code.co_filename,
                  code.co_firstlineno)
        return i if self._written(mark) else -i

    def installed(self) -> bool:
        """Whether the calling thread is still traced."""
        if self.how in ("eval", "profile"):
            return accel._accel.profile_installed()
        return sys.getprofile() == self.py_hook     # (a new bound method each time)

    def replaced(self, why: str) -> None:
        """The program ended tracing of a thread (its own profile function): say so."""
        from .channel import warn
        me = threading.get_ident()
        if me in self.reported:
            return
        self.reported.add(me)
        try:
            self.off(why)
        except Exception:           # never the program's problem
            pass
        if not self.warned:
            self.warned = True
            warn("function tracing of thread %r ended early: %s; its later calls are "
                 "not recorded" % (threading.current_thread().name, why))

    # -- the pure-Python profile function ---------------------------------------
    def py_hook(self, frame, event: str, arg) -> None:
        if event == "call":
            code = frame.f_code
            i = self.py_ids.get(code)
            if i is None:
                i = self.on_code(code)
                if i < 0:
                    i = -i                  # not declared yet: asked again next call
                else:
                    self.py_ids[code] = i
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


def _program_setprofile(fn) -> None:
    """sys.setprofile as the program sees it while functions are traced: the same,
    and a record and a warning that tracing of this thread ends there."""
    t = _state
    # threading's bootstrap passes threading.setprofile's function (ours) through it
    ours = fn is _thread_boot or (t is not None and fn == t.py_hook)
    if t is not None and not ours and t.installed():
        t.replaced("the program called sys.setprofile(%s)" % getattr(fn, "__qualname__", "?"))
    _setprofile(fn)


def _check(t: Optional[_Tracer]) -> None:
    """At the end (exit, stop()): whether the calling thread was traced to it."""
    if t is not None and not t.installed():
        t.replaced("a profile function of the program's own (cProfile, a debugger) or an "
                   "error in the pure-Python hook took its place")


def _at_exit() -> None:
    _check(_state)


# -- fork: at-fork hooks run before the child has rings of its own (guest/__init__.py
# registered its hook first, so in the child it runs before ours)
def _before_fork() -> None:
    t = _state
    if t is None:
        return
    if t.how in ("eval", "profile"):
        t.local.paused = accel._accel.profile_pause(True)
    elif sys.getprofile() == t.py_hook:
        t.local.paused = True
        _setprofile(None)


def _after_fork(child: bool) -> None:
    t = _state
    if t is None or not hasattr(t.local, "paused"):
        return
    paused = t.local.paused
    del t.local.paused
    if child:
        t.py_ids = {}               # the pure path's ids, declared again in this process
        t.local.depth = 0           # the frames begun in the parent return untraced
    if t.how in ("eval", "profile"):
        accel._accel.profile_pause(paused)
    elif paused:
        _setprofile(t.py_hook)


_fork_hooks = False


def _thread_boot(frame, event: str, arg) -> None:
    """threading.setprofile's function: a new thread's first event puts the profile
    function in its place; hypertrace's own threads (`hypertrace_own`) are never
    traced."""
    t = _state
    if t is None or getattr(threading.current_thread(), "hypertrace_own", False):
        accel.untraced_thread()
    elif t.how == "setprofile":
        _setprofile(t.py_hook)
        t.py_hook(frame, event, arg)
    else:
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
            # the frame-evaluation hook where the build has it (CPython 3.11), unless
            # HYPERTRACE_FUNCTIONS_HOOK=profile: under it every call recurses in C,
            # and it gives way to the profile function before a thread's stack runs
            # short (native/accel.c)
            hook = os.environ.get(HOOK_ENV, "")
            if hook not in ("", "eval", "profile"):
                warn("%s=%s ignored: eval or profile" % (HOOK_ENV, hook[:40]))
            eval_ok = hook != "profile"
            threading.setprofile(_thread_boot)      # (before: this call is not traced)
            t.how = accel._accel.profile_start(t.call, t.ret, t.on_code, _thread_boot,
                                               eval_ok)
            if t.how == "eval":         # the eval hook covers every thread itself
                threading.setprofile(None)
        else:
            t.how = "setprofile"
            threading.setprofile(_thread_boot)
            _setprofile(t.py_hook)
    except (TypeError, ValueError, RuntimeError) as e:
        warn("function tracing off: %s" % e)
        return False
    _state = t
    global _fork_hooks
    if not _fork_hooks:
        _fork_hooks = True
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=_before_fork,
                                after_in_parent=lambda: _after_fork(False),
                                after_in_child=lambda: _after_fork(True))
        import atexit
        atexit.register(_at_exit)
    sys.setprofile = _program_setprofile
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
    if sys.setprofile is _program_setprofile:
        sys.setprofile = _setprofile
    _check(t)
    threading.setprofile(None)
    if _c_path(t):
        accel._accel.profile_stop()
    else:
        _setprofile(None)


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
