"""Text or bytes rows joined from columns: one row per event, built for a batch at once.

The JSON export's lines, the `fields` JSON of Parquet and of the HTML view, and the
Perfetto encoder's messages are each, per row, a concatenation of constants,
per-row strings or bytes, and integers written in decimal. `join` makes them in one
pass in C (native/rows.c, built as read/_rows) when it is built and HYPERTRACE_PURE
is "" or "0"; otherwise with pyarrow's compute functions, the reference the C code
must agree with byte for byte (tests/test_native_gather.py).
"""

from __future__ import annotations

import functools
import os
from typing import List, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

native = None
if os.environ.get("HYPERTRACE_PURE", "") in ("", "0"):
    try:
        from . import _rows as native  # type: ignore[no-redef]
    except ImportError:
        native = None


class Decimals:
    """Integers written in decimal, value / 10**frac with exactly `frac` digits after
    a point ("-0.005" for -5 with frac 3; no point when frac is 0)."""

    def __init__(self, values: np.ndarray, frac: int = 0):
        if not 0 <= frac <= 18:
            raise ValueError("frac: 0..18 digits")
        kind = values.dtype.kind
        if kind not in "iu":
            raise TypeError("Decimals takes integers, not %s" % values.dtype)
        self.signed = kind != "u"
        self.values = np.ascontiguousarray(values, dtype=np.int64 if self.signed
                                           else np.uint64)
        self.frac = frac

    def text(self) -> pa.Array:
        """The reference: pyarrow's integer to string cast, the point put in by hand."""
        v = self.values
        if self.frac == 0:
            return pc.cast(pa.array(v), pa.string())
        unit = 10 ** self.frac
        if self.signed:
            neg = v < 0
            # |v| of an int64 as a uint64 (the most negative one included)
            mag = np.where(neg, (~v.view(np.uint64)) + np.uint64(1), v.view(np.uint64))
        else:
            neg = np.zeros(len(v), dtype=bool)
            mag = v
        whole = pc.cast(pa.array(mag // np.uint64(unit)), pa.string())
        frac = pc.utf8_lpad(pc.cast(pa.array(mag % np.uint64(unit)), pa.string()),
                            self.frac, "0")
        sign = pc.if_else(pa.array(neg), _scalar("-", pa.string()), _scalar("", pa.string()))
        return pc.binary_join_element_wise(sign, whole, _scalar(".", pa.string()), frac,
                                           _scalar("", pa.string()))


Part = Union[str, bytes, pa.Array, Decimals]


def join(n: int, parts: List[Part], binary: bool = False) -> pa.Array:
    """n rows, row i the concatenation of every part's row i (a constant: the same in
    every row); a string array, or binary with `binary`. Array parts must be string or
    binary arrays of n values."""
    typ = pa.binary() if binary else pa.string()
    if native is not None:
        offs, data = native.join(n, [_native_part(p, n) for p in parts])
        return pa.Array.from_buffers(typ, n, [None, pa.py_buffer(offs), pa.py_buffer(data)])
    args = []
    for p in parts:
        if isinstance(p, Decimals):
            p = p.text()
        if isinstance(p, pa.Array):
            args.append(p if p.type == typ else p.cast(typ))
        else:
            args.append(_scalar(p.encode("utf-8") if isinstance(p, str) else p, typ))
    if not any(isinstance(a, pa.Array) for a in args):
        const = b"".join(a.as_py() if binary else a.as_py().encode("utf-8") for a in args)
        return pa.array([const if binary else const.decode("utf-8")] * n, typ)
    return pc.binary_join_element_wise(*args, _scalar(b"", typ))


def _native_part(p: Part, n: int):
    if isinstance(p, str):
        return p.encode("utf-8")
    if isinstance(p, bytes):
        return p
    if isinstance(p, Decimals):
        if len(p.values) != n:
            raise ValueError("a part of %d rows in a join of %d" % (len(p.values), n))
        return (p.values, p.signed, p.frac)
    if len(p) != n:
        raise ValueError("a part of %d rows in a join of %d" % (len(p), n))
    if p.type not in (pa.string(), pa.binary()):
        p = p.cast(pa.string())
    bufs = p.buffers()
    offs = memoryview(bufs[1])[p.offset * 4:(p.offset + n + 1) * 4]
    return offs, (bufs[2] if bufs[2] is not None else b"")


@functools.lru_cache(maxsize=4096)
def _scalar(value: Union[str, bytes], typ: pa.DataType) -> pa.Scalar:
    # made once: pa.scalar() of a Python object tries an import that fails (dateutil)
    # every time, a path search that costs more than the scalar
    if typ == pa.string() and isinstance(value, bytes):
        value = value.decode("utf-8")
    return pa.scalar(value, typ)
