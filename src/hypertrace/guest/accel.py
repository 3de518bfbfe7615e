"""The optional C accelerator (hypertrace/native/accel.c, built as guest/_accel).

`ACCELERATED` says whether tracepoints built from now on take the C path. The pure
Python path is used when the extension is absent (no compiler at install, a guest
interpreter it was not built for: Python's import only loads an extension whose
file name carries its own ABI tag) or when HYPERTRACE_PURE is set to anything but
"" or "0".
"""

from __future__ import annotations

import os

_accel = None
if os.environ.get("HYPERTRACE_PURE", "") in ("", "0"):
    try:
        from . import _accel  # type: ignore[no-redef]
    except ImportError:
        _accel = None

ACCELERATED = _accel is not None


class _PureWriter:
    """The hot fields of a ring writer, as the C tracepoint's WriterBase has them."""

    __slots__ = ("pos", "lim", "delta", "seq", "ci")


WriterBase = _accel.WriterBase if _accel is not None else _PureWriter


def invalidate() -> None:
    """A thread's writer went away (released, forked, a new channel): no thread may
    keep using a cached one."""
    if _accel is not None:
        _accel.invalidate()
