"""Control channel frames (docs/abi.md)."""

from __future__ import annotations

import struct
from typing import Tuple

__all__ = ["CTL_MAGIC", "CTL_VERSION", "CTL_HEADER", "CTL_MAX_PAYLOAD", "MSG_HELLO",
           "MSG_HELLO_OK", "MSG_SYNC", "MSG_SYNC_OK", "MSG_CLOCK", "MSG_CLOCK_OK", "MSG_SAMPLE",
           "MSG_ERROR", "MSG_BYE", "MSG_NAMES", "ProtocolError", "frame", "FrameReader",
           "pack_str", "unpack_str", "pack_u64s", "unpack_u64s"]

# --- control channel messages (docs/abi.md section 9) ---------------------------
CTL_MAGIC = 0x5448          # b"HT" little-endian
CTL_VERSION = 1
CTL_HEADER = struct.Struct("<HBBII")   # magic, version, type, request id, payload length
CTL_MAX_PAYLOAD = 4096

MSG_HELLO = 1        # g->h: session_id[16], u64 pid[, boot_id[16] (1.2)]
MSG_HELLO_OK = 2     # h->g: u16 len + domain name
MSG_SYNC = 3         # g->h: u64 sync_id, u64 t1, u16 len + name, u16 len + args
MSG_SYNC_OK = 4      # h->g: u64 t2, u64 t3
MSG_CLOCK = 5        # g->h: u64 t1
MSG_CLOCK_OK = 6     # h->g: u64 t2, u64 t3
MSG_SAMPLE = 7       # g->h: u64 t1, t2, t3, t4, u64 sync_id (0: a clock exchange); no reply
MSG_ERROR = 8        # h->g: u16 len + text
MSG_BYE = 9          # g->h: nothing; no reply
MSG_NAMES = {MSG_HELLO: "hello", MSG_HELLO_OK: "hello_ok", MSG_SYNC: "sync",
             MSG_SYNC_OK: "sync_ok", MSG_CLOCK: "clock", MSG_CLOCK_OK: "clock_ok",
             MSG_SAMPLE: "sample", MSG_ERROR: "error", MSG_BYE: "bye"}


class ProtocolError(ValueError):
    """A control message that breaks the framing rules; the connection must be closed."""


def frame(mtype: int, req_id: int, payload: bytes = b"") -> bytes:
    if len(payload) > CTL_MAX_PAYLOAD:
        raise ProtocolError("payload of %d bytes exceeds %d" % (len(payload), CTL_MAX_PAYLOAD))
    return CTL_HEADER.pack(CTL_MAGIC, CTL_VERSION, mtype, req_id & 0xFFFFFFFF,
                           len(payload)) + payload


class FrameReader:
    """Splits a byte stream into (type, request id, payload); bounded and strict."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes) -> list:
        self.buf += data
        out = []
        while len(self.buf) >= CTL_HEADER.size:
            magic, ver, mtype, req, ln = CTL_HEADER.unpack_from(self.buf)
            if magic != CTL_MAGIC:
                raise ProtocolError("bad magic 0x%04x: not a hypertrace control stream" % magic)
            if ver != CTL_VERSION:
                raise ProtocolError("control protocol version %d, expected %d"
                                    % (ver, CTL_VERSION))
            if mtype not in MSG_NAMES:
                raise ProtocolError("unknown message type %d" % mtype)
            if ln > CTL_MAX_PAYLOAD:
                raise ProtocolError("message of %d bytes exceeds the %d-byte limit"
                                    % (ln, CTL_MAX_PAYLOAD))
            if len(self.buf) < CTL_HEADER.size + ln:
                break
            payload = bytes(self.buf[CTL_HEADER.size:CTL_HEADER.size + ln])
            del self.buf[:CTL_HEADER.size + ln]
            out.append((mtype, req, payload))
        return out

    @property
    def pending(self) -> int:
        return len(self.buf)


def pack_str(s: str, limit: int = 1024) -> bytes:
    b = s.encode("utf-8", "replace")[:limit]
    return struct.pack("<H", len(b)) + b


def unpack_str(buf: bytes, off: int) -> Tuple[str, int]:
    if off + 2 > len(buf):
        raise ProtocolError("truncated string length")
    n = buf[off] | buf[off + 1] << 8
    if off + 2 + n > len(buf):
        raise ProtocolError("string of %d bytes runs past the message" % n)
    return buf[off + 2:off + 2 + n].decode("utf-8", "replace"), off + 2 + n


def pack_u64s(*vals: int) -> bytes:
    return struct.pack("<%dQ" % len(vals), *vals)


def unpack_u64s(buf: bytes, n: int, off: int = 0) -> tuple:
    if off + 8 * n > len(buf):
        raise ProtocolError("message too short: %d bytes" % len(buf))
    return struct.unpack_from("<%dQ" % n, buf, off)
