"""Protocol Buffers encoding of many messages at once (numpy + pyarrow).

A Perfetto trace is millions of small TracePackets that differ only in a few
values (timestamp, track, arguments). Encoding them one message at a time from
Python costs ~2 µs each; here every field of a message is encoded for all rows
as one pyarrow binary array (tags as constants, varints and fixed64s with array
arithmetic, strings as they are), and a message is the row-wise concatenation
of its fields' arrays. The wire format is protobuf's own
(https://protobuf.dev/programming-guides/encoding/); the field numbers come
from the message descriptors of the `perfetto` package's protos, so they agree
with them by construction, and the Perfetto export test parses the result back
with those protos.
"""

from __future__ import annotations

from typing import List, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VARINT, FIXED64, LEN = 0, 1, 2
Part = Union[bytes, pa.Array]          # a constant (every row) or one value per row
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


def _binary(data: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(_BIN, len(lengths), [None, pa.py_buffer(offsets),
                                                     pa.py_buffer(np.ascontiguousarray(data))])


def varints(values: np.ndarray) -> pa.Array:
    """One varint per value (uint64; an int64 is encoded as its two's complement,
    as protobuf does for int64 fields)."""
    v = np.ascontiguousarray(values).view(np.uint64) if values.dtype.itemsize == 8 \
        else values.astype(np.uint64)
    n = len(v)
    if n == 0:
        return pa.array([], _BIN)
    lo, hi = int(v.min()), int(v.max())
    most = max(1, (hi.bit_length() + 6) // 7)
    shifts = np.arange(most, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    if max(1, (lo.bit_length() + 6) // 7) == most:
        # every value is as long (timestamps, ids): a fixed-width matrix
        groups[:, :-1] |= 0x80
        return _binary(groups.ravel(), np.full(n, most, dtype=np.int32))
    width = np.ones(n, dtype=np.int32)
    for i in range(1, most):
        width += (v >> np.uint64(7 * i)) != 0
    col = np.arange(most, dtype=np.int32)
    groups |= np.where(col < (width - 1)[:, None], np.uint8(0x80), np.uint8(0))
    return _binary(groups[col < width[:, None]], width)


def fixed64(values: np.ndarray) -> pa.Array:
    """Eight little-endian bytes per value (double, fixed64)."""
    v = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<"), copy=False))
    return _binary(v.view(np.uint8), np.full(len(v), 8, dtype=np.int32))


def hex_text(a: pa.Array) -> pa.Array:
    """Bytes values as lower-case hex text (binary array out)."""
    a = a.cast(_BIN)
    offs = np.frombuffer(a.buffers()[1], dtype=np.int32, count=len(a) + 1,
                         offset=a.offset * 4)
    data = np.frombuffer(a.buffers()[2] or b"", dtype=np.uint8)[offs[0]:offs[-1]]
    pairs = np.empty((len(data), 2), dtype=np.uint8)
    pairs[:, 0], pairs[:, 1] = _HEX[data >> 4], _HEX[data & 15]
    return _binary(pairs.ravel(), np.diff(offs) * 2)


def join(parts: List[Part]) -> pa.Array:
    """Row-wise concatenation of the parts (at least one of them an array)."""
    args = [pa.scalar(p, _BIN) if isinstance(p, (bytes, bytearray)) else p.cast(_BIN)
            for p in parts]
    return pc.binary_join_element_wise(*args, pa.scalar(b"", _BIN))


def lengths(a: pa.Array) -> np.ndarray:
    return pc.binary_length(a).to_numpy(zero_copy_only=False).astype(np.int64)


def length_delimited(field: int, payload: pa.Array) -> List[Part]:
    """The parts of a length-delimited field (a message, string or bytes) holding
    `payload` in every row."""
    return [tag(field, LEN), varints(lengths(payload).astype(np.uint64)), payload]


def values_of(a: pa.Array) -> memoryview:
    """The bytes of a binary array's values, back to back (no per-row objects)."""
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    offs = np.frombuffer(a.buffers()[1], dtype=np.int32, count=len(a) + 1, offset=a.offset * 4)
    buf = a.buffers()[2]
    return memoryview(buf if buf is not None else b"")[offs[0]:offs[-1]]
