"""Protocol Buffers encoding of many messages at once (numpy + pyarrow).

A Perfetto trace is millions of small TracePackets that differ only in a few
values (timestamp, track, arguments). Encoding them one message at a time from
Python costs ~2 µs each; here every field of a message is encoded for all rows
as one pyarrow binary array (tags as constants, varints and fixed64s with array
arithmetic, strings as they are), a message's length is summed from its fields'
lengths, and every row's message is one row-wise concatenation of its parts,
nested messages included. The wire format is protobuf's own
(https://protobuf.dev/programming-guides/encoding/); the field numbers come
from the message descriptors of the `perfetto` package's protos, so they agree
with them by construction, and the Perfetto export test parses the result back
with those protos.

Varints and the row-wise join are done in C (native/rows.c, built as read/_rows,
through read/rows.py) when it is built and HYPERTRACE_PURE is "" or "0"; the numpy
and pyarrow code is the reference (tests/test_protobulk.py checks both against the
protobuf library).
"""

from __future__ import annotations

from typing import List, Union

import numpy as np
import pyarrow as pa

from ..read import rows as _rows

VARINT, FIXED64, LEN = 0, 1, 2
_BIN = pa.binary()
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def number(message, name: str) -> int:
    """The field number of `name` in a generated message class."""
    return message.DESCRIPTOR.fields_by_name[name].number


def varint_bytes(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint_bytes(field << 3 | wire)


class Col:
    """One value per row: a pyarrow binary array and its values' lengths."""

    __slots__ = ("arr", "lens")

    def __init__(self, arr: pa.Array, lens: np.ndarray):
        self.arr, self.lens = arr, lens


Part = Union[bytes, Col]           # a constant (every row) or one value per row


class Message:
    """The fields of a message for every row, kept as flat parts with their lengths,
    so that nested messages are joined once, at the end."""

    def __init__(self) -> None:
        self.parts: List[Part] = []
        self.lens: Union[int, np.ndarray] = 0

    def add(self, *parts: Part) -> Message:
        for p in parts:
            if isinstance(p, (bytes, bytearray)):
                if self.parts and isinstance(self.parts[-1], bytes):
                    self.parts[-1] += bytes(p)      # constants run together
                else:
                    self.parts.append(bytes(p))
                self.lens = self.lens + len(p)
            else:
                self.parts.append(p)
                self.lens = self.lens + p.lens
        return self

    def field(self, number: int, inner: Message) -> Message:
        """Add `inner` as a length-delimited field (a sub-message)."""
        if isinstance(inner.lens, int):
            self.add(tag(number, LEN) + varint_bytes(inner.lens))
        else:
            self.add(tag(number, LEN), varints(inner.lens))
        self.parts += inner.parts
        self.lens = self.lens + inner.lens
        return self

    def text(self, number: int, col: Col) -> Message:
        """Add a string or bytes field."""
        return self.add(tag(number, LEN), varints(col.lens), col)

    def rows(self, n: int) -> pa.Array:
        """The encoded messages, one per row (a binary array)."""
        return _rows.join(n, [p if isinstance(p, bytes) else p.arr for p in self.parts],
                          binary=True)


def _binary(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(_BIN, len(lengths), [None, pa.py_buffer(offsets),
                                                     pa.py_buffer(np.ascontiguousarray(data))])


def varints(values: np.ndarray) -> Col:
    """One varint per value (uint64; an int64 is encoded as its two's complement,
    as protobuf does for int64 fields)."""
    v = np.ascontiguousarray(values).view(np.uint64) if values.dtype.itemsize == 8 \
        else values.astype(np.uint64)
    n = len(v)
    if n == 0:
        return Col(pa.array([], _BIN), np.zeros(0, dtype=np.int64))
    if _rows.native is not None:
        offs, data, widths = _rows.native.varints(v)
        return Col(pa.Array.from_buffers(_BIN, n, [None, pa.py_buffer(offs),
                                                   pa.py_buffer(data)]),
                   np.frombuffer(widths, dtype=np.int64))
    lo, hi = int(v.min()), int(v.max())
    if hi < 1 << 14:
        # lengths, ids, small values: one or two bytes, without the general matrix
        if hi < 1 << 7:
            width = np.ones(n, dtype=np.int64)
            return Col(_binary(v.astype(np.uint8), width), width)
        two = v >= 128
        pair = np.empty((n, 2), dtype=np.uint8)
        pair[:, 0] = (v & np.uint64(0x7F)) | (two.astype(np.uint64) << np.uint64(7))
        pair[:, 1] = v >> np.uint64(7)
        width = 1 + two.astype(np.int64)
        if lo >= 128:
            return Col(_binary(pair.ravel(), width), width)
        keep = np.ones((n, 2), dtype=bool)
        keep[:, 1] = two
        return Col(_binary(pair[keep], width), width)
    most = max(1, (hi.bit_length() + 6) // 7)
    shifts = np.arange(most, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    if max(1, (lo.bit_length() + 6) // 7) == most:
        # every value is as long (timestamps, ids): a fixed-width matrix
        groups[:, :-1] |= 0x80
        width = np.full(n, most, dtype=np.int64)
        return Col(_binary(groups.ravel(), width), width)
    width = np.ones(n, dtype=np.int64)
    for i in range(1, most):
        width += (v >> np.uint64(7 * i)) != 0
    col = np.arange(most, dtype=np.int64)
    groups |= np.where(col < (width - 1)[:, None], np.uint8(0x80), np.uint8(0))
    return Col(_binary(groups[col < width[:, None]], width), width)


def fixed64(values: np.ndarray) -> Col:
    """Eight little-endian bytes per value (double, fixed64)."""
    v = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))
    width = np.full(len(v), 8, dtype=np.int64)
    return Col(_binary(v.view(np.uint8), width), width)


def binary(a: pa.Array, as_hex: bool = False) -> Col:
    """A string or binary array's values as they are, or as lower-case hex text."""
    a = a.cast(_BIN)
    offs = np.frombuffer(a.buffers()[1], dtype=np.int32, count=len(a) + 1,
                         offset=a.offset * 4)
    lens = np.diff(offs).astype(np.int64)
    if not as_hex:
        return Col(a, lens)
    data = np.frombuffer(a.buffers()[2] or b"", dtype=np.uint8)[offs[0]:offs[-1]]
    pairs = np.empty((len(data), 2), dtype=np.uint8)
    pairs[:, 0], pairs[:, 1] = _HEX[data >> 4], _HEX[data & 15]
    return Col(_binary(pairs.ravel(), lens * 2), lens * 2)


def take(col: Col, index: np.ndarray) -> Col:
    return Col(col.arr.take(pa.array(index)), col.lens[index])


def values_of(a: pa.Array) -> memoryview:
    """The bytes of a binary array's values, back to back (no per-row objects)."""
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    offs = np.frombuffer(a.buffers()[1], dtype=np.int32, count=len(a) + 1, offset=a.offset * 4)
    buf = a.buffers()[2]
    return memoryview(buf if buf is not None else b"")[offs[0]:offs[-1]]
