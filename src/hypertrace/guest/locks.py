"""Non-blocking byte locks on the region file (docs/abi.md §5, "Locking").

Linux open-file-description locks (fcntl F_OFD_SETLK): a write lock on one byte
per shared object (a ring descriptor, a declaration slot, a mailbox, a counter
slot). F_OFD_SETLK never waits, so a co-producer stopped (SIGSTOP, a debugger)
while holding a lock only makes the others skip that one object; the lock dies
with the last descriptor of its open file description, so it also says whether
the claimant of a ring or a mailbox still exists. They work on any local file
(a /dev/shm file, a VM's sysfs resource2: kernfs has no lock operation of its
own, so the generic VFS locks apply).

OFD locks belong to the open file description, not to a thread: the threads of
one process share them, so they exclude other processes only. The caller
excludes its own threads with a threading lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from .. import abi

F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", abi.F_OFD_GETLK)    # Python < 3.9 lacks them
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", abi.F_OFD_SETLK)
# struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid}, with the
# C struct's tail padding (l_pid must be 0 for OFD locks)
_FMT = "hhqqi"
_FLOCK = struct.Struct(_FMT + "x" * (-struct.calcsize(_FMT) % struct.calcsize("P")))
_BUSY = (errno.EAGAIN, errno.EACCES)


class LockUnsupported(OSError):
    """The region file does not take OFD locks (a kernel before 3.15, an odd file system)."""


class ByteLocks:
    """OFD locks on single bytes of one file, through a descriptor of our own."""

    def __init__(self, path: str):
        self.path = path
        # an open file description of its own: never the one the mapping keeps (mmap
        # dup()s it), so that closing ours in a forked child releases nothing of the
        # parent's, and the parent's locks die with the parent
        self.fd = os.open(path, os.O_RDWR)
        try:
            self.probe(0)
        except LockUnsupported:
            os.close(self.fd)
            raise

    def try_lock(self, off: int) -> bool:
        """Take the write lock on byte `off`; False at once if another process holds it."""
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, off, 1, 0))
        except OSError as e:
            if e.errno in _BUSY:
                return False
            raise
        return True

    def unlock(self, off: int) -> None:
        try:
            fcntl.fcntl(self.fd, F_OFD_SETLK, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, off, 1, 0))
        except OSError:
            pass        # a closed descriptor: its locks are gone with it

    def probe(self, off: int) -> bool:
        """Whether another open file description holds a lock on byte `off` (no wait)."""
        try:
            out = fcntl.fcntl(self.fd, F_OFD_GETLK,
                              _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, off, 1, 0))
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                raise LockUnsupported(e.errno, "%s: no OFD byte locks (%s)"
                                      % (self.path, e.strerror)) from None
            raise
        return _FLOCK.unpack(out)[0] != fcntl.F_UNLCK

    def reopen(self) -> None:
        """In a forked child: drop the parent's description (the child must never hold,
        nor keep alive, the parent's locks) and open one of our own."""
        old, self.fd = self.fd, -1        # -1 until reopened: never a reused number
        try:
            os.close(old)
        except OSError:
            pass
        self.fd = os.open(self.path, os.O_RDWR)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
