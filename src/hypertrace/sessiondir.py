"""Opening the files of a session directory, which is untrusted input.

A session directory may come from elsewhere (a copy, a tarball, another user's
directory): any entry in it may be a symbolic link (to /dev/zero, to a file of
the reader's), a FIFO (an open or read that never returns), a device or a
directory. Every file is therefore opened relative to a descriptor of the
session directory, with O_NOFOLLOW (a symlink is refused, not followed) and
O_NONBLOCK (opening a FIFO does not wait for a writer), and then fstat'ed: only
a regular file is read. Small files are read with a size bound; stream files
are read in bounded pieces by their readers.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from typing import Optional

#: a session index is a few KiB per stream: 64 MiB is far beyond any real one
MAX_INDEX_BYTES = 64 << 20
INDEX = os.path.join(".hypertrace", "session.json")

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)


class SessionError(Exception):
    """The directory is not a readable hypertrace session (the message says why)."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_dir(path: str, dir_fd: Optional[int] = None, follow: bool = False) -> int:
    """A descriptor of directory `path` (relative to dir_fd if given). Only the
    directory the user named may be reached through a symlink (`follow`)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(path, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            # O_NOFOLLOW|O_DIRECTORY on a symlink fails with either, depending on the kernel
            try:
                link = stat.S_ISLNK(os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            except OSError:
                link = False
            if link and not follow:
                raise SessionError("%s is a symbolic link (refused: a session's files are "
                                   "never reached through one)" % path) from None
            raise SessionError("%s is %s, not a directory" % (path, "a symbolic link loop"
                               if e.errno == errno.ELOOP else "a file")) from None
        raise


def open_regular(dir_fd: int, name: str, shown: str) -> int:
    """A read-only descriptor of the regular file `name` in dir_fd; SessionError if
    it is anything else (a symlink, a FIFO, a device, a directory). OSError (e.g.
    ENOENT) passes through for the caller to report."""
    try:
        fd = os.open(name, _OPEN, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SessionError("%s is a symbolic link (refused)" % shown) from None
        if e.errno in (errno.ENXIO, errno.EISDIR):     # a socket; a directory
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            raise SessionError("%s is %s, not a regular file (refused)" % (
                shown, _kind(st.st_mode))) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SessionError("%s is %s, not a regular file (refused)" % (shown, _kind(mode)))
    return fd


def check_regular(dir_fd: int, name: str, shown: str) -> bool:
    """Whether `name` exists as a regular file in dir_fd (False if missing);
    SessionError if it is something else. Nothing is opened."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        raise SessionError("%s is %s, not a regular file (refused)" % (shown, _kind(st.st_mode)))
    return True


def read_bounded(fd: int, limit: int, shown: str) -> bytes:
    """The whole content of regular file fd, refused if larger than `limit` bytes
    (checked before reading, and again while reading: the file may grow)."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise SessionError("%s is too large (%d bytes; at most %d)" % (shown, size, limit))
    parts = []
    have = 0
    while True:
        b = os.read(fd, min(1 << 20, limit + 1 - have))
        if not b:
            break
        parts.append(b)
        have += len(b)
        if have > limit:
            raise SessionError("%s is too large (more than %d bytes)" % (shown, limit))
    return b"".join(parts)


class WindowBudget:
    """A bound on the bytes that the windows of many StreamBytes hold together (a
    merge reads every stream of a session at once, and the index may list 2^20 of
    them): when a window is loaded beyond the bound, the windows used least recently
    are dropped, to be read again if needed."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self.held: OrderedDict[StreamBytes, int] = OrderedDict()

    def charge(self, sb: StreamBytes, n: int) -> None:
        self.total += n - self.held.pop(sb, 0)
        self.held[sb] = n
        while self.total > self.limit and len(self.held) > 1:
            victim = next(iter(self.held))
            victim.drop()           # releases its charge

    def release(self, sb: StreamBytes) -> None:
        self.total -= self.held.pop(sb, 0)


def read_regular(dir_fd: int, name: str, shown: str, limit: int) -> bytes:
    """The whole of a regular file under dir_fd, at most `limit` bytes (the index)."""
    fd = open_regular(dir_fd, name, shown)
    try:
        return read_bounded(fd, limit, shown)
    finally:
        os.close(fd)


class StreamBytes:
    """A stream file of a session read in bounded pieces (pread), without keeping it
    open between pieces: a session may have more streams than a process may have
    open files, and every stream of a merge is being read at once. Each reopening
    goes through open_regular and must find the same file (device and inode).
    Windows of streams read together share a WindowBudget."""

    def __init__(self, dir_fd: int, name: str, shown: str, chunk: int = 1 << 20,
                 budget: Optional[WindowBudget] = None):
        self.dir_fd, self.name, self.shown, self.chunk = dir_fd, name, shown, chunk
        self.budget = budget
        fd = open_regular(dir_fd, name, shown)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self.ident = (st.st_dev, st.st_ino)
        self.size = st.st_size
        self.buf = b""
        self.base = 0

    def read(self, off: int, n: int) -> bytes:
        """Up to n bytes at off (fewer only at the end of the file)."""
        fd = open_regular(self.dir_fd, self.name, self.shown)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != self.ident:
                raise SessionError("%s was replaced while being read" % self.shown)
            return os.pread(fd, n, off)
        finally:
            os.close(fd)

    def window(self, off: int, n: int):
        """(buf, i): buf[i:i + n] are the file's bytes at off, fewer at its end. The
        buffer holds at most max(n, chunk) bytes: a record is at most 64 KiB."""
        if not (self.base <= off and off + n <= self.base + len(self.buf)):
            self.drop()                 # the old piece goes before the new one comes
            self.buf = self.read(off, max(n, self.chunk))
            self.base = off
            if self.budget is not None:
                self.budget.charge(self, len(self.buf))
        return self.buf, off - self.base

    def drop(self) -> None:
        self.buf = b""
        if self.budget is not None:
            self.budget.release(self)
