"""Paths the recorder creates or opens: one mechanism for all of them.

Two kinds of place:

* The **private runtime directory** (`/dev/shm/hypertrace-UID/`, or
  `$HYPERTRACE_RUNTIME_DIR`) holds every predictable name: channel regions, the
  host and QEMU-events regions, control sockets, and what QEMU creates from
  `qemu-args` (its memory-backend file, QMP socket and log). It is created 0700
  and, when it exists, accepted only as a real directory owned by us with mode
  exactly 0700 under ancestors only root or we can change (a sticky /dev/shm
  counts: nobody else can rename our entry). Another user can then neither plant
  nor open anything in it, whichever of QEMU and the recorder starts first, and
  its path strings are as safe to hand to QEMU or a guest as a descriptor.
* A **checked directory** (`Dir`: the session directory `-o DIR` and its
  `.hypertrace/`) is used through a descriptor: every file in it is created with
  O_EXCL|O_NOFOLLOW relative to that descriptor, so a symlink planted there, or
  the directory renamed or replaced after the check, never redirects a write.

Every file opened rather than created goes through `open_file`: O_NOFOLLOW (a
symlink is refused), O_NONBLOCK (a FIFO cannot hang the open), then fstat: a
regular file with one link, owned by us. Refusals are `PathError`, one line.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import List, Optional

ENV = "HYPERTRACE_RUNTIME_DIR"
DEFAULT_PARENT = "/dev/shm"
# the path goes into QEMU options (comma-separated) and a shell's word splitting
SAFE_PATH = re.compile(r"/[A-Za-z0-9_./-]*\Z")
NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
MAX_READ = 256 << 20        # a session file read back whole (an index, a stream file)


class PathError(OSError):
    """A path is refused: its message is one line naming the path and why."""

    def __init__(self, msg: str, err: int = errno.EPERM):
        super().__init__(err, msg)
        self.msg = msg

    def __str__(self) -> str:
        return self.msg


class PathExists(PathError):
    """A file to be created exists already (never reused)."""

    def __init__(self, msg: str):
        super().__init__(msg, errno.EEXIST)


def _is_link(path: str, dir_fd: Optional[int] = None) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _why(path: str, e: OSError) -> PathError:
    if e.errno == errno.ELOOP:
        return PathError("%s is a symbolic link: refused (hypertrace never follows one)" % path)
    return PathError("cannot open %s: %s" % (path, e.strerror or e))


def check_fd(fd: int, path: str, kind: str = "file", private: bool = False) -> os.stat_result:
    """fstat an open descriptor: the expected type, owned by us, one link for a file,
    and with `private` no group/other permission bits."""
    st = os.fstat(fd)
    want = stat.S_ISDIR if kind == "dir" else stat.S_ISREG
    if not want(st.st_mode):
        raise PathError("%s is not a %s: refused" % (
            path, "directory" if kind == "dir" else "regular file"))
    if st.st_uid != os.geteuid():
        raise PathError("%s belongs to uid %d, not to us (uid %d): refused"
                        % (path, st.st_uid, os.geteuid()))
    if kind != "dir" and st.st_nlink != 1:
        raise PathError("%s has %d hard links: refused" % (path, st.st_nlink))
    if private and st.st_mode & 0o077:
        raise PathError("%s has mode %04o: other users can read or write it; refused "
                        "(chmod 600 it)" % (path, stat.S_IMODE(st.st_mode)))
    return st


def open_file(path: str, flags: int = os.O_RDONLY, private: bool = False,
              dir_fd: Optional[int] = None, shown: str = "") -> int:
    """Open an existing file without following a symlink or blocking on a FIFO; it must
    be a regular file of ours (see check_fd). Returns the descriptor."""
    shown = shown or path
    try:
        fd = os.open(path, flags | NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO):
            raise _why(shown, e) from None
        raise
    try:
        check_fd(fd, shown, private=private)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_file(path: str, flags: int = os.O_RDWR, mode: int = 0o600,
                dir_fd: Optional[int] = None, shown: str = "") -> int:
    """Create a new file, never reusing one: O_CREAT|O_EXCL|O_NOFOLLOW."""
    try:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL | NOFOLLOW, mode, dir_fd=dir_fd)
    except FileExistsError:
        raise PathExists("%s already exists: refused (hypertrace creates its files afresh)"
                        % (shown or path)) from None


def _check_ancestors(real: str) -> None:
    """Each directory from / down to `real` (no symlinks left) can only be changed by
    root or us, or is sticky (then nobody else can rename or remove our entry)."""
    me = os.geteuid()
    parts = real.strip("/").split("/") if real != "/" else []
    cur = "/"
    for p in [""] + parts:
        cur = os.path.join(cur, p) if p else cur
        st = os.stat(cur)
        if st.st_uid not in (0, me) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            raise PathError("%s can be changed by other users: it cannot hold the private "
                            "runtime directory (set %s to a path of yours)" % (cur, ENV))


def runtime_dir() -> str:
    """The private runtime directory, created 0700 if missing, checked every time."""
    path = os.environ.get(ENV) or os.path.join(DEFAULT_PARENT, "hypertrace-%d" % os.geteuid())
    path = os.path.normpath(path)
    if not SAFE_PATH.match(path) or path == "/":
        raise PathError("runtime directory %r: use an absolute path of [A-Za-z0-9_./-] "
                        "(it goes into QEMU options)" % path)
    parent = os.path.realpath(os.path.dirname(path))
    _check_ancestors(parent)
    path = os.path.join(parent, os.path.basename(path))
    try:
        os.mkdir(path, 0o700)
        made = True
    except FileExistsError:
        made = False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    except OSError as e:
        raise _not_private(path, "a symbolic link" if e.errno == errno.ELOOP or _is_link(path)
                           else "not a directory") from None
    try:
        if made:
            os.fchmod(fd, 0o700)         # whatever the umask
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise _not_private(path, "owned by uid %d" % st.st_uid)
        if stat.S_IMODE(st.st_mode) != 0o700:
            raise _not_private(path, "mode %04o" % stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)
    return path


def _not_private(path: str, why: str) -> PathError:
    return PathError("%s is not a private directory of yours (%s; it must be a directory "
                     "owned by uid %d with mode 0700): refused; remove it, or set %s"
                     % (path, why, os.geteuid(), ENV))


def in_runtime_dir(path: str) -> bool:
    """Whether `path` names an entry directly inside the runtime directory."""
    try:
        return os.path.dirname(os.path.abspath(path)) == runtime_dir()
    except OSError:
        return False


def our_socket(path: str) -> bool:
    """A unix socket of ours inside the runtime directory (lstat: no symlink)."""
    if not in_runtime_dir(path):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_uid == os.geteuid()


class Dir:
    """A directory used through a checked descriptor (see the module docstring)."""

    def __init__(self, fd: int, path: str, created: bool = False):
        self.fd, self.path, self.created = fd, path, created

    @classmethod
    def fresh(cls, path: str) -> Dir:
        """A new session directory: created now, or an existing empty directory of ours
        that other users cannot write to."""
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        try:
            os.mkdir(path)
            created = True
        except FileExistsError:
            created = False
        d = cls.existing(path)
        d.created = created
        try:
            st = os.fstat(d.fd)
            if not created and st.st_mode & 0o022:
                raise PathError("%s is writable by other users (mode %04o): refused; choose "
                                "a new output directory" % (path, stat.S_IMODE(st.st_mode)))
            names = d.listdir()
            if "metadata" in names:
                raise PathError("%s already holds a trace; choose a new output directory"
                                % path)
            if names:
                raise PathError("%s exists and is not empty: refused; choose a new output "
                                "directory" % path)
        except BaseException:
            d.close()
            raise
        return d

    @classmethod
    def existing(cls, path: str, dir_fd: Optional[int] = None, shown: str = "") -> Dir:
        shown = shown or path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ENOTDIR and _is_link(path, dir_fd):
                e = OSError(errno.ELOOP, "")
            elif e.errno == errno.ENOTDIR:
                raise PathError("%s is not a directory: refused" % shown) from None
            raise _why(shown, e) from None
        try:
            check_fd(fd, shown, kind="dir")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, shown)

    def sub(self, name: str, create: bool = False) -> Dir:
        """A subdirectory, made now (`create`: it must not exist) or existing."""
        if create:
            try:
                os.mkdir(name, dir_fd=self.fd)
            except FileExistsError:
                raise PathError("%s already exists: refused" % self.join(name)) from None
        d = Dir.existing(name, dir_fd=self.fd, shown=self.join(name))
        d.created = create
        return d

    def join(self, name: str) -> str:
        return os.path.join(self.path, name)

    def listdir(self) -> List[str]:
        return os.listdir(self.fd)

    def create(self, name: str, mode: int = 0o666, flags: int = os.O_WRONLY) -> int:
        return create_file(name, flags, mode, dir_fd=self.fd, shown=self.join(name))

    def open(self, name: str, flags: int = os.O_RDONLY) -> int:
        return open_file(name, flags, dir_fd=self.fd, shown=self.join(name))

    def read(self, name: str, limit: int = MAX_READ) -> bytes:
        fd = self.open(name)
        try:
            if os.fstat(fd).st_size > limit:
                raise PathError("%s is larger than %d bytes: refused" % (self.join(name), limit))
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    return b"".join(chunks)
                chunks.append(b)
        finally:
            os.close(fd)

    def replace(self, name: str, data: bytes, tmp: str = "", fsync: bool = False,
                mode: int = 0o666) -> None:
        """Write `name` whole or not at all: a temporary file created exclusively, then
        renamed over it (rename replaces a symlink there, it never follows one)."""
        tmp = tmp or "." + name + ".tmp"
        try:
            fd = self.create(tmp, mode)
        except PathExists:
            self.unlink(tmp)             # our own leftover (a crash): in a directory of ours
            fd = self.create(tmp, mode)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.unlink(tmp)
            raise

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def rmdir(self, name: str) -> None:
        try:
            os.rmdir(name, dir_fd=self.fd)
        except OSError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


GUEST_NAME = re.compile(r"[A-Za-z0-9_.-]{1,31}\Z")


def check_guest_name(name: str) -> None:
    """A guest name names files in the runtime directory and goes into QEMU options."""
    if not GUEST_NAME.match(name) or name in (".", ".."):
        raise ValueError("bad guest name %r: 1-31 characters of [A-Za-z0-9_.-], not . or .."
                         % name)


def qemu_region_path(name: str) -> str:
    """Guest NAME's region in the private runtime directory (created and checked here:
    `qemu-args` may run before the recorder, and QEMU creates files in it)."""
    check_guest_name(name)
    return os.path.join(runtime_dir(), name)
