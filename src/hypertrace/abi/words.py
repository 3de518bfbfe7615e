"""Loads and stores of the region's shared words, each in one aligned access
(docs/abi.md §5: "naturally aligned words, never torn").

struct.pack_into cannot do that: CPython's _struct zeroes the bytes of the whole
format first, then writes a little-endian word byte by byte, and unpack_from reads
one byte at a time. A peer looking meanwhile sees 0 or a mix of old and new bytes:
a released ring's state read as free (its stream finished early, then read again
from the start), a counter slot read as 0 (its count taken twice), a mailbox's
`req` half written. A memoryview cast to the word's C type moves the word in one
load or store, as the C producer's relaxed atomics do.
"""

from __future__ import annotations

import sys

__all__ = ["Words"]

_LITTLE = sys.byteorder == "little"


def _swap(v: int, n: int) -> int:
    return int.from_bytes(v.to_bytes(n, "little"), "big")


class Words:
    """The u32 and u64 words of a buffer (an mmap of the region), by byte offset.
    Offsets must be aligned to the word's size; values are the ABI's little-endian
    ones on any host."""

    __slots__ = ("_u32", "_u64")

    def __init__(self, buf) -> None:
        b = memoryview(buf).cast("B")
        n = len(b) & ~7
        self._u32 = b[:n].cast("I")
        self._u64 = b[:n].cast("Q")
        b.release()

    def u32(self, off: int) -> int:
        if off & 3:
            raise ValueError("unaligned u32 word at %d" % off)
        v = self._u32[off >> 2]
        return v if _LITTLE else _swap(v, 4)

    def set_u32(self, off: int, v: int) -> None:
        if off & 3:
            raise ValueError("unaligned u32 word at %d" % off)
        self._u32[off >> 2] = v if _LITTLE else _swap(v, 4)

    def u64(self, off: int) -> int:
        if off & 7:
            raise ValueError("unaligned u64 word at %d" % off)
        v = self._u64[off >> 3]
        return v if _LITTLE else _swap(v, 8)

    def set_u64(self, off: int, v: int) -> None:
        if off & 7:
            raise ValueError("unaligned u64 word at %d" % off)
        self._u64[off >> 3] = v if _LITTLE else _swap(v, 8)

    def release(self) -> None:
        """Let the buffer go (an mmap with views cannot be closed)."""
        self._u32.release()
        self._u64.release()
