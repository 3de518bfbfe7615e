"""The optional C accelerator (hypertrace/native/accel.c, built as guest/_accel).

`ACCELERATED` says whether tracepoints built from now on take the C path. The pure
Python path is used when the extension is absent (no compiler at install, a guest
interpreter it was not built for: Python's import only loads an extension whose
file name carries its own ABI tag) or when HYPERTRACE_PURE is set to anything but
"" or "0".

The default clock of the process's records and clock exchanges is CLOCK_MONOTONIC:
read by time.monotonic_ns, or with the accelerator, where the TSC is invariant and
the kernel keeps time with it, read from the TSC by a line that tracks
CLOCK_MONOTONIC (native/accel.c; HYPERTRACE_TSC=0: never).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

_accel = None
if os.environ.get("HYPERTRACE_PURE", "") in ("", "0"):
    try:
        from . import _accel  # type: ignore[no-redef]
    except ImportError:
        _accel = None

ACCELERATED = _accel is not None


class _PureWriter:
    """The hot fields of a ring writer, as the C tracepoint's WriterBase has them."""

    __slots__ = ("pos", "lim", "delta", "seq", "ci", "busy")


WriterBase = _accel.WriterBase if _accel is not None else _PureWriter


def invalidate() -> None:
    """A thread's writer went away (released, forked, a new channel): no thread may
    keep using a cached one."""
    if _accel is not None:
        _accel.invalidate()


def fork_done() -> int:
    """In a forked child whose rings are its own again: C records go out again; the
    count of those dropped since the fork (native/accel.c's at-fork hook)."""
    if _accel is not None and hasattr(_accel, "fork_done"):
        return _accel.fork_done()
    return 0


def default_clock() -> Callable[[], int]:
    """CLOCK_MONOTONIC in ns: from the TSC where the accelerator can, else time's."""
    return getattr(_accel, "tsc_ns", None) or time.monotonic_ns


def clock_info() -> dict:
    """How the default clock is read: `source` "tsc" (with its largest error against
    CLOCK_MONOTONIC seen so far, `max_error_ns`, and its corrections) or "monotonic"."""
    if _accel is not None and hasattr(_accel, "tsc_ns"):
        return dict(_accel.tsc_info(), source="tsc")
    return {"source": "monotonic", "max_error_ns": 0.0}


_setprofile = sys.setprofile        # before guest/functions.py wraps the program's


def untraced_thread() -> None:
    """The calling thread (one of hypertrace's own) is never function-traced
    (guest/functions.py): its calls are the tracer's, not the program's."""
    if _accel is not None and hasattr(_accel, "profile_ignore_thread"):
        _accel.profile_ignore_thread()
    _setprofile(None)
