"""Where an export writes its result (`export`, `view`): never through a name
that someone else could have made.

OUT's directory may be shared (/tmp) or another user's, and OUT's name is
predictable (DIR.json next to DIR): any fixed temporary name there could be a
symlink planted in advance. So the result is written under a fresh random name
in OUT's directory, created exclusively (O_CREAT|O_EXCL|O_NOFOLLOW; for Parquet
a directory made by mkdir, its files created the same way through its
descriptor), and renamed onto OUT only when complete: a failed export leaves
nothing behind. Every name is used relative to one descriptor of OUT's
directory, opened once.

OUT itself is checked first: a regular file (or a symlink, which the rename
replaces without following) is replaced; a directory is never deleted, except
a previous Parquet export of this user (it holds the marker file below, owned
by us), whose files are removed by their own names once the new export is in
place. OUT inside the session directory, or containing it, is refused.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
from typing import BinaryIO, List, Optional, Union

#: written last into a Parquet export: what makes a directory ours to replace
MARKER = ".hypertrace-export"
MARKER_FORMAT = "hypertrace-parquet-export"
#: file names a Parquet export holds (parquet.typed_name makes the event_ ones)
PARQUET_FILE = re.compile(r"(events|streams|clocks|sync|event_[A-Za-z0-9_.~-]{1,300})\.parquet\Z")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputError(Exception):
    """OUT cannot be used (the message says why, in one line)."""


def binary_out(target: Union[str, BinaryIO]):
    """A writable binary file for a format's write(): `target` itself if it is a
    file (an export's exclusive temporary), else the path opened without following
    a symlink (library callers)."""
    if not isinstance(target, str):
        return _Borrowed(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o666)
    return os.fdopen(fd, "wb")


class _Borrowed:
    """A file given by the caller: used in a `with`, not closed by it."""

    def __init__(self, f: BinaryIO):
        self.f = f

    def __enter__(self) -> BinaryIO:
        return self.f

    def __exit__(self, *exc) -> None:
        self.f.flush()


def _split(out: str) -> tuple:
    full = os.path.abspath(out)
    parent, name = os.path.split(full)
    if not name or name in (".", ".."):
        raise OutputError("%s: not a file name" % out)
    return parent, name


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def within(a: str, b: str) -> bool:
    """Whether path a is b or inside it (both real paths)."""
    return os.path.commonpath([a, b]) == b


def is_our_export(parent_fd: int, name: str) -> Optional[os.stat_result]:
    """The stat of directory `name` if it is a previous Parquet export of this user
    (a real directory owned by us holding our marker file), else None."""
    try:
        fd = os.open(name, _DIR, dir_fd=parent_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            return None
        try:
            m = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                        dir_fd=fd)
        except OSError:
            return None
        try:
            mst = os.fstat(m)
            if not stat.S_ISREG(mst.st_mode) or mst.st_uid != os.geteuid():
                return None
            doc = json.loads(os.read(m, 1 << 20) or b"null")
        except ValueError:
            return None
        finally:
            os.close(m)
        return st if isinstance(doc, dict) and doc.get("format") == MARKER_FORMAT else None
    finally:
        os.close(fd)


class Output:
    """The result of one export on its way to OUT: `file` (a binary file) for the
    single-file formats, or `opener(name)` for Parquet's directory. Call commit()
    when complete; close() removes whatever was not committed."""

    def __init__(self, out: str, session_dir: str, directory: bool):
        self.out, self.directory = out, directory
        parent, self.name = _split(out)
        real_parent = os.path.realpath(parent)
        target = os.path.join(real_parent, self.name)
        sess = os.path.realpath(session_dir)
        if within(target, sess) or within(sess, target):
            raise OutputError("%s: the output would %s the session directory %s: nothing was "
                              "written" % (out, "be" if target == sess else "be inside"
                                           if within(target, sess) else "contain",
                                           session_dir))
        try:
            self.parent_fd = os.open(real_parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise OutputError("cannot write %s: %s" % (out, e.strerror)) from None
        self.tmp: Optional[str] = None
        self.file: Optional[BinaryIO] = None
        self.dir_fd = -1
        self.names: List[str] = []
        #: a previous export that could not be removed entirely (left under this name)
        self.leftover: Optional[str] = None
        try:
            self._check_target()
            self._create()
        except BaseException:
            self.close()
            raise

    # -- OUT as it is now --------------------------------------------------------------------
    def _check_target(self) -> Optional[os.stat_result]:
        """Refuse an OUT the rename must not replace; the stat of a previous Parquet
        export that may be replaced, else None."""
        try:
            st = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OutputError("cannot write %s: %s" % (self.out, e.strerror)) from None
        if stat.S_ISDIR(st.st_mode):
            ours = is_our_export(self.parent_fd, self.name) if self.directory else None
            if ours is None:
                raise OutputError("%s is a directory%s: nothing was written (give -o a file "
                                  "name, or remove it yourself)" % (
                                      self.out, "" if not self.directory else
                                      " that is not a previous Parquet export of yours"))
            return ours
        if self.directory:
            raise OutputError("%s exists and is not a directory: nothing was written (a Parquet "
                              "export is a directory)" % self.out)
        if not stat.S_ISREG(st.st_mode):
            # the rename would replace a device node, FIFO, socket or link with a file
            # (as root, -o /dev/null would delete /dev/null): only a regular file is
            # replaced, as `-o` of other tools overwrites one
            raise OutputError("%s is %s, not a regular file: nothing was written (give -o a "
                              "file name)" % (self.out, _kind(st.st_mode)))
        return None

    # -- the temporary -----------------------------------------------------------------------
    def _fresh(self, what: str) -> str:
        return ".%s.%s-%s" % (self.name, what, secrets.token_hex(6))

    def _create(self) -> None:
        for _ in range(100):
            name = self._fresh("partial")
            try:
                if self.directory:
                    os.mkdir(name, 0o700, dir_fd=self.parent_fd)
                else:
                    fd = os.open(name, _NEW, 0o666, dir_fd=self.parent_fd)
            except FileExistsError:
                continue
            except OSError as e:
                raise OutputError("cannot write %s: %s" % (self.out, e.strerror)) from None
            self.tmp = name
            break
        else:
            raise OutputError("cannot write %s: no free temporary name" % self.out)
        if not self.directory:
            self.file = os.fdopen(fd, "wb")
            return
        try:
            self.dir_fd = os.open(self.tmp, _DIR, dir_fd=self.parent_fd)
        except OSError as e:
            raise OutputError("cannot write %s: %s" % (self.out, e.strerror)) from None
        st = os.fstat(self.dir_fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            # what we made is not what is there now: someone swapped it
            raise OutputError("cannot write %s: its temporary directory was replaced" % self.out)

    def opener(self, name: str) -> BinaryIO:
        """A new file in the Parquet export's directory (only a Parquet file name)."""
        if not PARQUET_FILE.match(name):
            raise OSError(errno.EINVAL, "unexpected Parquet file name %r" % name)
        f = os.fdopen(os.open(name, _NEW, 0o666, dir_fd=self.dir_fd), "wb")
        self.names.append(name)
        return f

    # -- putting it in place -----------------------------------------------------------------
    def commit(self) -> None:
        """Rename the complete result onto OUT (replacing a previous Parquet export)."""
        assert self.tmp is not None
        if self.file is not None:
            self.file.flush()
        else:
            with os.fdopen(os.open(MARKER, _NEW, 0o666, dir_fd=self.dir_fd), "w") as f:
                json.dump({"format": MARKER_FORMAT, "files": self.names}, f)
            self.names.append(MARKER)
            mask = os.umask(0)
            os.umask(mask)
            os.fchmod(self.dir_fd, 0o777 & ~mask)
        old = self._check_target()       # again: OUT may have changed during the export
        aside = None
        if old is not None:
            aside = self._fresh("old")
            os.mkdir(aside, 0o700, dir_fd=self.parent_fd)
            # onto our own empty directory: atomic, and OUT's name is free for the new one
            os.rename(self.name, aside, src_dir_fd=self.parent_fd, dst_dir_fd=self.parent_fd)
        try:
            os.rename(self.tmp, self.name, src_dir_fd=self.parent_fd,
                      dst_dir_fd=self.parent_fd)
        except OSError as e:
            if aside is not None:       # put the old one back
                os.rename(aside, self.name, src_dir_fd=self.parent_fd,
                          dst_dir_fd=self.parent_fd)
            if e.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise OutputError("%s appeared as %s while the export ran: nothing was "
                                  "replaced" % (self.out, "a directory" if e.errno != errno.ENOTDIR
                                                else "a file")) from None
            raise
        self.tmp = None
        if aside is not None:
            self.leftover = remove_export(self.parent_fd, aside, old)

    def close(self) -> None:
        """Remove an uncommitted result (only the names this export made) and the
        descriptors. Never raises: a cleanup failure is not the export's error."""
        if self.file is not None:
            self.file.close()
            self.file = None
        if self.tmp is not None:
            try:
                if self.directory:
                    for n in self.names:
                        _unlink(self.dir_fd, n)
                    os.rmdir(self.tmp, dir_fd=self.parent_fd)
                else:
                    os.unlink(self.tmp, dir_fd=self.parent_fd)
            except OSError:
                pass
            self.tmp = None
        for attr in ("dir_fd", "parent_fd"):
            fd = getattr(self, attr, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)      # a symlink is removed itself, never followed
    except FileNotFoundError:
        pass


def remove_export(parent_fd: int, name: str, was: os.stat_result) -> Optional[str]:
    """Remove a previous Parquet export moved aside: only its marker and the files
    with Parquet export names, then the directory. Returns the name if something
    else was in it (it is then left there)."""
    try:
        fd = os.open(name, _DIR, dir_fd=parent_fd)
    except OSError:
        return name
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (was.st_dev, was.st_ino):
            return name
        for n in os.listdir(fd):
            if n == MARKER or PARQUET_FILE.match(n):
                try:
                    _unlink(fd, n)
                except OSError:            # a directory of that name: not ours
                    pass
    finally:
        os.close(fd)
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except OSError:
        return name
    return None
