"""The packets of a CTF data stream file as hypertrace writes them
(formats/ctf.py): walking their 80-byte headers, to read a session back or to
recover one.
"""

from __future__ import annotations

import struct
from typing import Callable, Iterator, NamedTuple

PACKET_MAGIC = 0xC1FC1FC1
# packet header (magic, uuid, stream class id, stream instance id) + context (6 x u64)
PACKET_HEAD = struct.Struct("<I16sIQQQQQQQ")
assert PACKET_HEAD.size == 80


class Packet(NamedTuple):
    start: int          # byte offset of the content (just after the header)
    content_end: int    # offset after the last payload byte
    end: int            # offset after the packet
    ts_begin: int
    discarded: int      # events_discarded: a running total


class PacketDamage(ValueError):
    """A stream file is cut short or malformed here (the message names the byte)."""


def packets(buf, size: int) -> Iterator[Packet]:
    """The packets of a stream file held in `buf` (bytes or a mapping) of `size` bytes,
    in order; raises PacketDamage at the first one cut short or malformed."""
    return packets_at(lambda off, n: buf[off:off + n], size)


def packets_at(read: Callable[[int, int], bytes], size: int) -> Iterator[Packet]:
    """The packets of a stream file of `size` bytes whose bytes `read(offset, n)`
    returns: only the 80-byte headers are read, so a packet of any size costs no
    memory here. Raises PacketDamage at the first packet cut short or malformed."""
    pos = 0
    while pos < size:
        if size - pos < PACKET_HEAD.size:
            raise PacketDamage("truncated packet header at byte %d" % pos)
        head = read(pos, PACKET_HEAD.size)
        if len(head) < PACKET_HEAD.size:       # the file shrank while being read
            raise PacketDamage("truncated packet header at byte %d" % pos)
        magic, _u, _sid, _inst, tb, _te, csize, psize, _seq, disc = PACKET_HEAD.unpack_from(
            head, 0)
        if magic != PACKET_MAGIC or psize < PACKET_HEAD.size * 8 or csize > psize \
                or csize < PACKET_HEAD.size * 8:
            raise PacketDamage("bad packet at byte %d" % pos)
        end = pos + psize // 8
        if end > size:
            raise PacketDamage("truncated packet at byte %d" % pos)
        yield Packet(pos + PACKET_HEAD.size, pos + csize // 8, end, tb, disc)
        pos = end


def packets_in(f) -> Iterator[Packet]:
    """The packets of a stream file opened in windows (sessiondir's `Session.open_stream`:
    `f.window(offset, n)` returns a buffer and the offset of those bytes in it)."""
    def head(off: int, n: int) -> bytes:
        buf, i = f.window(off, n)
        return buf[i:i + n]
    return packets_at(head, f.size)
