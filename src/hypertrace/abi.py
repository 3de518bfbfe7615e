"""The channel ABI: shared-region layout, event signatures and the record codec.

This module is the executable form of docs/abi.md and is shared by the guest
(stdlib-only, Python >= 3.8) and the host. Everything is little-endian and
fixed-offset; nothing here depends on Python-specific encodings.
"""

from __future__ import annotations

import re
import struct
from typing import Dict, List, NamedTuple, Optional, Tuple

ABI_MAJOR = 1
ABI_MINOR = 4
MAGIC = 0x4543415254505948  # b"HYPTRACE" read as a little-endian u64
PAGE = 4096
HEADER_SIZE = PAGE

# --- region header (written by the host; the guest only reads it) ---------
HDR_MAGIC = 0            # u64
HDR_ABI_MAJOR = 8        # u16
HDR_ABI_MINOR = 10       # u16
HDR_HEADER_SIZE = 12     # u32
HDR_REGION_SIZE = 16     # u64
HDR_SESSION_ID = 24      # u8[16]
HDR_NAME = 40            # char[32], NUL padded
HDR_N_RINGS = 72         # u32
HDR_RING_SIZE = 76       # u32
HDR_MAX_EVENTS = 80      # u32
HDR_MODE = 84            # u32
HDR_BLOCK_TIMEOUT = 88   # u64 ns
HDR_ENABLE_OFF = 96      # u64
HDR_DECL_OFF = 104       # u64
HDR_DESC_OFF = 112       # u64
HDR_DATA_OFF = 120       # u64
HDR_COLLECTOR = 128      # u32 collector state
HDR_FLAGS = 132          # u32, bit 0: the collector serves the clock mailboxes
HDR_HEARTBEAT = 136      # u64, bumped by the collector on every poll
NAME_LEN = 32

HEADER_STRUCT = struct.Struct("<QHHIQ16s32sIIIIQQQQQ")  # offsets 0..127

# --- clock mailboxes (ABI 1.3): clock exchanges through shared memory --------
# In the header page, written by both sides. A guest process claims one slot
# (like a ring) and runs 4-timestamp exchanges through it with no syscall and
# no VM exit; while it waits it keeps rewriting t1, so whenever the host reads
# the request, t1 is at most one loop iteration old: a band of a few µs.
FLAG_MAILBOXES = 1
MBOX_OFF = 1024
MBOX_SIZE = 64
N_MBOX = 32
M_STATE = 0              # u32 0 free, 1 claimed (guest, under the region lock)
M_PID = 4                # u32 the claiming process (guest)
M_REQ = 8                # u32 sequence of the pending request, never 0 (guest)
M_ANS = 12               # u32 the request answered (host, after t2 and t3)
M_T1 = 16                # u64 guest clock, rewritten while the guest waits
M_T2 = 24                # u64 host: request seen
M_T3 = 32                # u64 host: answer written
M_T4 = 40                # u64 guest clock, once it saw M_ANS == M_REQ
M_DONE = 48              # u32 = M_REQ once M_T4 is written (guest)
MBOX_FREE = 0
MBOX_CLAIMED = 1

# --- shared loss counters (ABI 1.4): in the header page, written by producers -----
# A drop that has no ring to be counted in (no ring free, a claim that could not
# lock, a declaration refused) is added at once to one of these slots, so that it
# outlives the thread and the process. With no atomic add in Python, each slot has
# one writer at a time: the holder of the slot's lock (LOCKING below). The host
# sums every slot.
CNT_OFF = 3072
CNT_SIZE = 64
N_CNT = 16
C_LOST = 0               # u64 records dropped while the thread had no ring
C_DECL_REFUSED = 8       # u64 tracepoints disabled: declaration refused (conflict, full)
CNT_FIELDS = 2
CNT_MAX = 1 << 48        # a slot above this is scribble: the host ignores it

# --- locking (ABI 1.4) -------------------------------------------------------
# Producers exclude each other with Linux open-file-description locks
# (fcntl F_OFD_SETLK: never waits) on single bytes of the region file: the lock of
# an object is a write lock on its own first byte (ring i: desc(i); declaration
# slot j: decl(j); mailbox k: MBOX_OFF + 64k; counter slot c: CNT_OFF + 64c).
# A ring's and a mailbox's lock is held for as long as the claim lasts: a
# claimed object whose lock is free has lost its owner.
F_OFD_GETLK = 36
F_OFD_SETLK = 37

COLLECTOR_NONE = 0
COLLECTOR_RUNNING = 1
COLLECTOR_STOPPED = 2

MODE_DISCARD = 0
MODE_BLOCK = 1
MODE_OVERWRITE = 2
MODES = {"discard": MODE_DISCARD, "block": MODE_BLOCK, "overwrite": MODE_OVERWRITE}
MODE_NAMES = {v: k for k, v in MODES.items()}

# --- event declaration slots ---------------------------------------------
DECL_SLOT = 512
DECL_STATE = 0           # u32: 0 empty, 1 valid
DECL_LEN = 4             # u32: text length in bytes
DECL_TEXT = 8            # UTF-8 signature text, DECL_SLOT - 8 bytes at most
DECL_TEXT_MAX = DECL_SLOT - DECL_TEXT
DECL_EMPTY = 0
DECL_VALID = 1

# --- ring descriptors -----------------------------------------------------
DESC_SIZE = 256
# producer cache line
D_COMMIT = 0             # u64 byte position up to which records are complete
D_EMITTED = 8            # u64 records attempted (committed + discarded)
D_FIRST = 16             # u64 overwrite mode: position of the oldest intact record
D_DISCARDED = 24         # u64 records dropped by the producer (discard/block)
# consumer cache line
D_CONSUMED = 64          # u64 byte position the collector has read up to
# identity (written by the producer when it claims the ring)
D_STATE = 128            # u32
D_GENERATION = 132       # u32
D_PID = 136              # u32
D_TID = 140              # u32
D_CLAIM_TS = 144         # u64 guest clock
D_THREAD_NAME = 152      # char[16]
THREAD_NAME_LEN = 16

RING_FREE = 0
RING_ACTIVE = 1
RING_RELEASED = 2

# --- records --------------------------------------------------------------
REC_HEADER = struct.Struct("<HHIQ")  # event id, size|flags, seq, timestamp
REC_HEADER_SIZE = 16
REC_ALIGN = 8
REC_MAX = 0xFFF8
REC_SIZE_MASK = 0xFFF8
REC_FLAG_TRUNCATED = 1
PAD_ID = 0xFFFF
MAX_EVENT_ID = 0xFFFE

MAX_TS = 1 << 62         # larger timestamps are rejected: ns + clock offset must fit in i64
STR_MAX = 1024           # bytes kept of a string or bytes argument
MAX_FIELDS = 32

DEFAULT_RINGS = 32
DEFAULT_RING_SIZE = 512 * 1024
DEFAULT_MAX_EVENTS = 256
DEFAULT_BLOCK_TIMEOUT_NS = 1_000_000_000


def align(value: int, to: int) -> int:
    return (value + to - 1) & -to


class Layout(NamedTuple):
    """Offsets of the region's parts, derived from its three sizing parameters."""

    n_rings: int
    ring_size: int
    max_events: int
    enable_off: int
    decl_off: int
    desc_off: int
    data_off: int
    region_size: int

    def desc(self, ring: int) -> int:
        return self.desc_off + ring * DESC_SIZE

    def data(self, ring: int) -> int:
        return self.data_off + ring * self.ring_size

    def decl(self, event_id: int) -> int:
        return self.decl_off + event_id * DECL_SLOT


def make_layout(n_rings: int = DEFAULT_RINGS, ring_size: int = DEFAULT_RING_SIZE,
                max_events: int = DEFAULT_MAX_EVENTS) -> Layout:
    """Lay out a region; the total is rounded up to a power of two (ivshmem needs one)."""
    if not 1 <= n_rings <= 4096:
        raise ValueError("n_rings must be within 1..4096")
    if ring_size < PAGE or ring_size & (ring_size - 1) or ring_size > 1 << 30:
        raise ValueError("ring size must be a power of two between 4 KiB and 1 GiB")
    if not 1 <= max_events <= MAX_EVENT_ID:
        raise ValueError("max_events must be within 1..%d" % MAX_EVENT_ID)
    enable_off = HEADER_SIZE
    decl_off = align(enable_off + max_events, PAGE)
    desc_off = align(decl_off + max_events * DECL_SLOT, PAGE)
    data_off = align(desc_off + n_rings * DESC_SIZE, PAGE)
    end = data_off + n_rings * ring_size
    size = 1 << (end - 1).bit_length()
    return Layout(n_rings, ring_size, max_events, enable_off, decl_off, desc_off, data_off, size)


class Header(NamedTuple):
    magic: int
    abi_major: int
    abi_minor: int
    header_size: int
    region_size: int
    session_id: bytes
    name: str
    n_rings: int
    ring_size: int
    max_events: int
    mode: int
    block_timeout_ns: int
    enable_off: int
    decl_off: int
    desc_off: int
    data_off: int


class ABIError(ValueError):
    """The region is not a hypertrace region, or not one this code understands."""


def parse_header(buf, expect_size: Optional[int] = None) -> Tuple[Header, Layout]:
    """Copy and validate a region header; the layout must match the sizing fields."""
    raw = bytes(buf[:HEADER_STRUCT.size])
    if len(raw) < HEADER_STRUCT.size:
        raise ABIError("region smaller than its header")
    f = list(HEADER_STRUCT.unpack(raw))
    f[6] = f[6].split(b"\0", 1)[0].decode("ascii", "replace")
    hdr = Header(*f)
    if hdr.magic != MAGIC:
        raise ABIError("bad magic: not a hypertrace region")
    if hdr.abi_major != ABI_MAJOR:
        raise ABIError("ABI major version %d, this code speaks %d" % (hdr.abi_major, ABI_MAJOR))
    try:
        lay = make_layout(hdr.n_rings, hdr.ring_size, hdr.max_events)
    except ValueError as e:
        raise ABIError("bad sizing fields: %s" % e) from None
    got = (hdr.enable_off, hdr.decl_off, hdr.desc_off, hdr.data_off)
    if got != (lay.enable_off, lay.decl_off, lay.desc_off, lay.data_off):
        raise ABIError("region offsets disagree with its sizing fields")
    if hdr.region_size < lay.data_off + lay.n_rings * lay.ring_size:
        raise ABIError("region_size too small for its rings")
    if expect_size is not None and hdr.region_size > expect_size:
        raise ABIError("region_size %d exceeds the mapping (%d)" % (hdr.region_size, expect_size))
    if hdr.mode not in MODE_NAMES:
        raise ABIError("unknown mode %d" % hdr.mode)
    return hdr, lay


def pack_header(buf, lay: Layout, session_id: bytes, name: str, mode: int,
                block_timeout_ns: int) -> None:
    nm = name.encode("ascii")
    if len(nm) >= NAME_LEN or not re.fullmatch(rb"[A-Za-z0-9_.-]*", nm):
        raise ValueError("channel name must be < 32 characters of [A-Za-z0-9_.-]")
    HEADER_STRUCT.pack_into(
        buf, 0, MAGIC, ABI_MAJOR, ABI_MINOR, HEADER_SIZE, lay.region_size, session_id,
        nm, lay.n_rings, lay.ring_size, lay.max_events, mode, block_timeout_ns,
        lay.enable_off, lay.decl_off, lay.desc_off, lay.data_off)


# --- event signatures (QEMU trace-events grammar) --------------------------
class FieldType(NamedTuple):
    kind: str        # "int", "bool", "float", "str", "bytes"
    code: str        # struct code for fixed-size kinds, "" for str/bytes
    size: int        # bytes in the record (0 for variable)
    signed: bool
    hex: bool        # pointers: shown in base 16


def _int(code: str, hexa: bool = False) -> FieldType:
    return FieldType("int", code, struct.calcsize("<" + code), code.islower(), hexa)


_TYPES: Dict[str, FieldType] = {
    "int8_t": _int("b"), "uint8_t": _int("B"), "int16_t": _int("h"), "uint16_t": _int("H"),
    "int32_t": _int("i"), "uint32_t": _int("I"), "int64_t": _int("q"), "uint64_t": _int("Q"),
    "char": _int("b"), "signed char": _int("b"), "unsigned char": _int("B"),
    "short": _int("h"), "unsigned short": _int("H"),
    "int": _int("i"), "signed": _int("i"), "unsigned": _int("I"), "unsigned int": _int("I"),
    "long": _int("q"), "unsigned long": _int("Q"),
    "long long": _int("q"), "unsigned long long": _int("Q"),
    "size_t": _int("Q"), "ssize_t": _int("q"), "off_t": _int("q"),
    "hwaddr": _int("Q", True), "vaddr": _int("Q", True), "ram_addr_t": _int("Q", True),
    "bool": FieldType("bool", "?", 1, False, False),
    "float": FieldType("float", "f", 4, True, False),
    "double": FieldType("float", "d", 8, True, False),
    "const char *": FieldType("str", "", 0, False, False),
    "char *": FieldType("str", "", 0, False, False),
    "bytes": FieldType("bytes", "", 0, False, False),
}
_POINTER = _int("Q", True)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# [properties] name(args) ["format"]; properties: disable, counter
_LINE = re.compile(r"\s*((?:(?:disable|counter)\s+)*)([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*"
                   r"(\".*\")?\s*\Z")


class EventDecl(NamedTuple):
    name: str
    fields: Tuple[Tuple[str, str, FieldType], ...]   # (arg name, canonical C type, type)
    disabled: bool = False
    fmt: str = ""
    counter: bool = False      # numeric fields are also values of counter tracks

    @property
    def signature(self) -> str:
        """Canonical text stored in the region's declaration slot."""
        return "%s%s(%s)" % ("counter " if self.counter else "", self.name, ", ".join(
            (t + a if t.endswith("*") else t + " " + a) for a, t, _ in self.fields) or "void")


def _canon_type(text: str) -> str:
    """`const  char*` -> `const char *`: single spaces, stars separated by one space."""
    return " ".join(text.replace("*", " * ").split()).replace("* *", "**")


def parse_args(args: str, where: str = "") -> Tuple[Tuple[str, str, FieldType], ...]:
    """Parse `type name, ...` as in QEMU trace-events; raises ValueError naming the problem."""
    args = args.strip()
    if args in ("", "void"):
        return ()
    out = []
    seen = set()
    for part in args.split(","):
        part = part.strip()
        m = re.fullmatch(r"(.*?[\s*])([A-Za-z_][A-Za-z0-9_]*)", part)
        if not m or not m.group(1).strip():
            raise ValueError("%sbad argument %r: expected 'type name'" % (where, part))
        ctype, name = _canon_type(m.group(1)), m.group(2)
        ft = _TYPES.get(ctype)
        if ft is None:
            if ctype.endswith("*"):
                ft = _POINTER
            else:
                raise ValueError("%sunsupported type %r for argument %r" % (where, ctype, name))
        if name in seen:
            raise ValueError("%sduplicate argument %r" % (where, name))
        if name.startswith("__"):
            raise ValueError("%sargument names must not start with '__': %r" % (where, name))
        seen.add(name)
        out.append((name, ctype, ft))
    for name, _, ft in out:
        # CTF names fields _NAME and the length of a string NAME __NAME_length
        if ft.kind in ("str", "bytes") and "_%s_length" % name in seen:
            raise ValueError("%sargument _%s_length clashes with the length of %s"
                             % (where, name, name))
    if len(out) > MAX_FIELDS:
        raise ValueError("%stoo many arguments (%d > %d)" % (where, len(out), MAX_FIELDS))
    return tuple(out)


def make_decl(name: str, args: str, disabled: bool = False, fmt: str = "",
              counter: bool = False) -> EventDecl:
    if not _IDENT.match(name) or len(name) > 128:
        raise ValueError("bad event name %r: must be a C identifier of at most 128 characters"
                         % name)
    decl = EventDecl(name, parse_args(args, "event %s: " % name), disabled, fmt, counter)
    if counter and not any(ft.kind in ("int", "float", "bool") for _, _, ft in decl.fields):
        raise ValueError("counter event %s needs a numeric argument" % name)
    if len(decl.signature.encode()) > DECL_TEXT_MAX:
        raise ValueError("event %s: signature longer than %d bytes" % (name, DECL_TEXT_MAX))
    return decl


def parse_signature(text: str) -> EventDecl:
    """Parse a declaration slot's text (`name(type a, ...)`); ValueError if malformed."""
    m = _LINE.match(text)
    if not m or m.group(1) not in ("", "counter ") or m.group(4):
        raise ValueError("malformed signature %r" % text[:80])
    return make_decl(m.group(2), m.group(3), counter=bool(m.group(1)))


def parse_trace_events(text: str, source: str = "<string>") -> List[EventDecl]:
    """Parse a QEMU trace-events file: `[disable] [counter] name(type arg, ...) "format"`
    lines."""
    decls = []
    names = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        where = "%s:%d: " % (source, lineno)
        m = _LINE.match(s)
        if not m:
            raise ValueError(where + "expected 'name(type arg, ...) \"format\"', got %r" % s[:80])
        try:
            props = m.group(1).split()
            if len(set(props)) != len(props):
                raise ValueError("repeated property in %r" % m.group(1).strip())
            d = make_decl(m.group(2), m.group(3), "disable" in props,
                          (m.group(4) or '""')[1:-1], "counter" in props)
        except ValueError as e:
            raise ValueError(where + str(e)) from None
        if d.name in names:
            raise ValueError(where + "event %r declared twice" % d.name)
        names.add(d.name)
        decls.append(d)
    return decls


# --- record codec ----------------------------------------------------------
class Codec:
    """Decodes one event's payload; built from its declaration (host and tests)."""

    def __init__(self, decl: EventDecl):
        self.decl = decl
        self.names = [a for a, _, _ in decl.fields]
        # split the payload into runs of fixed-size fields and variable fields
        self.steps: List[Tuple[str, object]] = []
        run = ""
        for _, _, ft in decl.fields:
            if ft.kind in ("str", "bytes"):
                if run:
                    self.steps.append(("fixed", struct.Struct("<" + run)))
                    run = ""
                self.steps.append((ft.kind, None))
            else:
                run += ft.code
        if run:
            self.steps.append(("fixed", struct.Struct("<" + run)))
        var = any(k != "fixed" for k, _ in self.steps)
        fixed = sum(s.size for k, s in self.steps if k == "fixed")  # type: ignore[union-attr]
        #: total record size when the event has no variable field, else None
        self.fixed_size = None if var else align(REC_HEADER_SIZE + fixed, REC_ALIGN)

    def decode(self, buf, off: int, end: int) -> Tuple[list, int]:
        """Decode the payload at buf[off:end]; returns (values, payload end).

        Raises ValueError when a length runs past `end` (the record's size).
        """
        vals: list = []
        for kind, st in self.steps:
            if kind == "fixed":
                n = st.size  # type: ignore[union-attr]
                if off + n > end:
                    raise ValueError("payload overruns record")
                vals.extend(st.unpack_from(buf, off))  # type: ignore[union-attr]
                off += n
            else:
                if off + 2 > end:
                    raise ValueError("payload overruns record")
                ln = buf[off] | buf[off + 1] << 8
                off += 2
                if ln > STR_MAX or off + ln > end:
                    raise ValueError("string length %d overruns record" % ln)
                raw = bytes(buf[off:off + ln])
                off += ln
                vals.append(raw.decode("utf-8", "replace") if kind == "str" else raw)
        return vals, off


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
