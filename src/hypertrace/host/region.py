"""The host's view of a shared region: create it, map it, read its untrusted parts."""

from __future__ import annotations

import errno
import mmap
import os
import uuid
from dataclasses import dataclass, field

from .. import abi
from .runtime import PathExists, create_file, open_file


def _allocate(fd: int, lay: abi.Layout) -> None:
    """Allocate the region's pages up to its last ring now, so that a full /dev/shm fails
    here, in one line, and never with SIGBUS at a producer's or the collector's first
    touch of a page (QEMU's guest among them)."""
    try:
        os.posix_fallocate(fd, 0, lay.used)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


@dataclass
class Region:
    path: str
    mm: mmap.mmap
    layout: abi.Layout
    header: abi.Header
    owned: bool          # created by us: removed when the recording ends
    words: abi.Words = field(init=False, repr=False)   # shared words, each untorn

    def __post_init__(self) -> None:
        self.words = abi.Words(self.mm)

    @classmethod
    def create(cls, path: str, name: str, mode: int = abi.MODE_DISCARD,
               n_rings: int = abi.DEFAULT_RINGS, ring_size: int = abi.DEFAULT_RING_SIZE,
               max_events: int = abi.DEFAULT_MAX_EVENTS,
               block_timeout_ns: int = abi.DEFAULT_BLOCK_TIMEOUT_NS) -> Region:
        lay = abi.make_layout(n_rings, ring_size, max_events)
        fd = create_file(path, os.O_RDWR, 0o600)     # never an existing file or a symlink
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.ftruncate(fd, lay.region_size)
            _allocate(fd, lay)
            mm = mmap.mmap(fd, lay.region_size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        try:
            abi.pack_header(mm, lay, uuid.uuid4().bytes, name, mode, block_timeout_ns)
            hdr, lay = abi.parse_header(mm, lay.region_size)
        except BaseException:
            mm.close()
            os.unlink(path)      # a header we cannot write (bad sizes, name): leave nothing
            raise
        return cls(path, mm, lay, hdr, True)

    @classmethod
    def create_or_attach(cls, path: str, name: str, **kw) -> Region:
        """For a QEMU guest: QEMU may have created the file already (mem-path), zeroed.
        A file without a valid header is formatted in place; one with a header is attached."""
        try:
            return cls.create(path, name, **kw)
        except PathExists:
            pass
        lay = abi.make_layout(kw.get("n_rings", abi.DEFAULT_RINGS),
                              kw.get("ring_size", abi.DEFAULT_RING_SIZE),
                              kw.get("max_events", abi.DEFAULT_MAX_EVENTS))
        # QEMU's memory-backend file (QEMU started first): a regular file of ours, no
        # symlink, no FIFO; the private runtime directory kept it from other users
        fd = open_file(path, os.O_RDWR)
        try:
            st = os.fstat(fd)
            os.fchmod(fd, 0o600)
            if st.st_size < lay.region_size:
                os.ftruncate(fd, lay.region_size)
            _allocate(fd, lay)       # QEMU's file is sparse (no prealloc)
            mm = mmap.mmap(fd, max(st.st_size, lay.region_size))
        finally:
            os.close(fd)
        try:
            hdr, lay2 = abi.parse_header(mm, len(mm))
            return cls(path, mm, lay2, hdr, False)
        except abi.ABIError:
            pass
        abi.pack_header(mm, lay, uuid.uuid4().bytes, name,
                        kw.get("mode", abi.MODE_DISCARD),
                        kw.get("block_timeout_ns", abi.DEFAULT_BLOCK_TIMEOUT_NS))
        hdr, lay = abi.parse_header(mm, len(mm))
        return cls(path, mm, lay, hdr, False)

    @classmethod
    def open(cls, path: str) -> Region:
        """Attach to an existing region (attach mode, recovery): a regular file of ours
        that no other user can read or write, opened without following a symlink."""
        fd = open_file(path, os.O_RDWR, private=True)
        try:
            size = os.fstat(fd).st_size
            if size < abi.HEADER_SIZE:
                raise abi.ABIError("%s is too small to be a hypertrace region" % path)
            mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        hdr, lay = abi.parse_header(mm, size)
        return cls(path, mm, lay, hdr, False)

    # -- host-written fields ---------------------------------------------------
    def set_collector(self, state: int) -> None:
        self.words.set_u32(abi.HDR_COLLECTOR, state)

    def beat(self, n: int) -> None:
        self.words.set_u64(abi.HDR_HEARTBEAT, n)

    def set_enabled(self, event_id: int, on: bool) -> None:
        self.mm[self.layout.enable_off + event_id] = 1 if on else 0

    def enabled(self, event_id: int) -> bool:
        return self.mm[self.layout.enable_off + event_id] != 0

    # -- guest-written, untrusted ------------------------------------------------
    def declaration(self, event_id: int):
        """Copy and parse one declaration slot: None if empty, ValueError if malformed."""
        off = self.layout.decl(event_id)
        # the state first, then the rest: the guest writes it last (§5)
        if self.words.u32(off + abi.DECL_STATE) != abi.DECL_VALID:
            return None
        ln = self.words.u32(off + abi.DECL_LEN)
        raw = bytes(self.mm[off:off + abi.DECL_SLOT])
        if ln > abi.DECL_TEXT_MAX:
            raise ValueError("declaration %d: length %d out of bounds" % (event_id, ln))
        try:
            text = raw[abi.DECL_TEXT:abi.DECL_TEXT + ln].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("declaration %d: not UTF-8" % event_id) from None
        return abi.parse_slot_text(text)

    def close(self, remove: bool = True) -> None:
        if remove and self.owned:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.words.release()
        try:
            self.mm.close()
        except BufferError:
            pass  # a memoryview still refers to it; the mapping dies with the process
