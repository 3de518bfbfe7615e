"""Spans: a begin/end pair of events declared once, used as a context manager or decorator.

    db = guest.span("db_query", "uint32_t k")
    with db(7):                 # db_query_begin(span, task, k) ... db_query_end(span, task, error)
        ...
    @db(7)                      # the same around every call of a function
    def lookup(): ...
    work = guest.span("work")
    @work                       # a span without fields decorates directly
    def step(): ...

The begin's first two fields are `span` (an id unique in the process, which pairs
the end with its begin whatever happens in between) and `task` (the running asyncio
task's id, 0 outside one: interleaved tasks on one thread each nest their own
spans); the end records `error`, the type name of an exception that escaped ("" if
none). The views pair them (analysis/spans.py).
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading
from typing import Any, Callable

from . import accel

RESERVED = ("span", "task")
# one id sequence per process, shared with the accelerator's spans (native/accel.c)
if accel._accel is not None and hasattr(accel._accel, "next_span_id"):
    _next_id = accel._accel.next_span_id
else:
    _next_id = functools.partial(next, itertools.count(1))   # atomic under the GIL


def _task() -> int:
    """The running asyncio task's id, 0 outside one (asyncio is not imported for it)."""
    aio = sys.modules.get("asyncio")
    if aio is None:
        return 0
    loop = aio._get_running_loop()
    if loop is None:
        return 0
    t = aio.current_task(loop)
    return 0 if t is None else id(t)


class SpanCall:
    """One use of a span with its field values: a context manager, and a decorator
    whose every call is a span of its own."""

    __slots__ = ("_begin", "_end", "_args", "_open")

    def __init__(self, begin: Callable, end: Callable, args: tuple):
        self._begin, self._end, self._args = begin, end, args
        self._open: list = []

    def __enter__(self) -> SpanCall:
        sid, task = _next_id(), _task()
        self._begin(sid, task, *self._args)
        self._open.append((sid, task, threading.get_ident()))
        return self

    def __exit__(self, et, ev, tb) -> bool:
        # one use shared by threads: each thread ends the span it began (else the
        # newest: a generator's span, closed by another thread)
        if not self._open:
            raise RuntimeError("hypertrace: a span left that was not entered")
        me = threading.get_ident()
        k = len(self._open) - 1
        while k > 0 and self._open[k][2] != me:
            k -= 1
        if self._open[k][2] != me:
            k = len(self._open) - 1
        sid, task, _ = self._open.pop(k)
        self._end(sid, task, "" if et is None else et.__qualname__)
        return False

    def __call__(self, fn: Callable) -> Callable:
        return decorate(self, fn)

    # the accelerator's SpanCall has the same three as attributes
    begin = property(lambda self: self._begin)
    end = property(lambda self: self._end)
    values = property(lambda self: self._args)


def decorate(use, fn: Callable) -> Callable:
    """`fn` wrapped in a span of its own per call (`use`: a SpanCall, Python's or C's)."""
    begin, end, args = use.begin, use.end, use.values
    if _is_coroutine(fn):
        @functools.wraps(fn)
        async def run_async(*a: Any, **kw: Any) -> Any:
            sid, task = _next_id(), _task()
            begin(sid, task, *args)
            try:
                r = await fn(*a, **kw)
            except BaseException as e:
                end(sid, task, type(e).__qualname__)
                raise
            end(sid, task, "")
            return r
        return run_async

    @functools.wraps(fn)
    def run(*a: Any, **kw: Any) -> Any:
        sid, task = _next_id(), _task()
        begin(sid, task, *args)
        try:
            r = fn(*a, **kw)
        except BaseException as e:
            end(sid, task, type(e).__qualname__)
            raise
        end(sid, task, "")
        return r
    return run


def _is_coroutine(fn: Callable) -> bool:
    import inspect
    return inspect.iscoroutinefunction(fn)


class Span:
    """A span's two tracepoints. `span(*values)` is one use (SpanCall); a span without
    fields also decorates a function directly (`@span`)."""

    def __init__(self, name: str, begin: Callable, end: Callable, nfields: int):
        self.name = name
        self.begin, self.end = begin, end
        self._nfields = nfields

    def __call__(self, *args: Any) -> Any:
        if self._nfields == 0 and len(args) == 1 and callable(args[0]):
            return decorate(SpanCall(self.begin, self.end, ()), args[0])
        if len(args) != self._nfields:
            raise TypeError("span %s takes %d values (%d given)" % (
                self.name, self._nfields, len(args)))
        return SpanCall(self.begin, self.end, args)

    def __repr__(self) -> str:
        return "<span %s: %s>" % (self.name, self.begin.signature)


def make(name: str, begin: Callable, end: Callable, nfields: int):
    """The span of these tracepoints: in C where the accelerator built them."""
    a = accel._accel
    if a is not None and hasattr(a, "Span") and isinstance(begin, a.Tracepoint) \
            and isinstance(end, a.Tracepoint):
        return a.Span(name, begin, end, nfields, decorate)
    return Span(name, begin, end, nfields)
