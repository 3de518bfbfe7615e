"""`hypertrace export --format parquet --dataset ROOT DIR...`: many sessions as one
Hive-partitioned Parquet dataset, which DuckDB, Spark and Trino read as is:

  ROOT/.hypertrace-dataset                         marks ROOT as a dataset
  ROOT/host=<host>/session=<id>/<table>.parquet    one partition per session

<table> and the files' columns are a session's Parquet export (formats/parquet.py,
written by it); <host> and <id> are read/identity.py's. A partition value is
escaped as Hive and Spark escape one (`%` and two hex digits for control
characters and "#%'*/:=?[\\]^{ and DEL), so it is one path component, never `/`,
and `host=..` is no parent directory. Readers take the values back from the path.

Writing follows formats/output.py: nothing is written through a name someone
else could have made. ROOT is the directory the user named (made if missing);
below it no symlink is followed (every name is opened relative to a descriptor,
O_NOFOLLOW). A partition is written into a fresh directory made exclusively in
its host directory, its files created O_EXCL under names no reader's glob takes
(`events.parquet.partial`), renamed to their names when complete, and the
directory then swapped in whole: renameat2(RENAME_EXCHANGE) with a previous
partition of the session (atomic: a reader sees the old one or the new one),
else renamed onto the free name (RENAME_NOREPLACE). A previous partition is
replaced only if it is this user's (output.py's marker file in it, owned by
us), and only the files with a Parquet export's names are removed from it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import stat
from typing import BinaryIO, Callable, List, Optional, Tuple

from ..read import identity
from ..read.columns import Columns
from ..read.session import Session
from . import parquet
from .output import (
    MARKER,
    MARKER_FORMAT,
    PARQUET_FILE,
    OutputError,
    is_our_export,
    remove_export,
    within,
)

DATASET_MARKER = ".hypertrace-dataset"
DATASET_FORMAT = "hypertrace-parquet-dataset"
PARTIAL = ".partial"                 # a file's suffix until its partition is complete
#: what Hive (FileUtils.escapePathName) and Spark (ExternalCatalogUtils) escape
_ESCAPE = set(range(0x20)) | {0x7F} | set(b"\"#%'*/:=?[\\]^{")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_NAME_MAX = 255


class DatasetError(OutputError):
    """ROOT or a partition cannot be written (the message says why, in one line)."""


def partition_value(text: str) -> str:
    """`text` as a Hive partition value in a path (see the module's docstring)."""
    return "".join("%%%02X" % ord(c) if ord(c) in _ESCAPE else c for c in text)


def partition(host: str, sid: str) -> Tuple[str, str]:
    """The two path components of a session's partition."""
    out = ("host=" + partition_value(host), "session=" + partition_value(sid))
    for c in out:
        if len(c.encode("utf-8")) > _NAME_MAX - len(".partial-") - 32:
            raise DatasetError("partition %s is too long for a file name" % c[:60])
    return out


def _rename2(src_fd: int, src: str, dst_fd: int, dst: str, flags: int) -> bool:
    """renameat2(2); False where the C library or the file system lacks it."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is None:
        return False
    if fn(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), flags) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(e, os.strerror(e), dst)


_LIBC: List[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL:
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


class Dataset:
    """An open dataset ROOT (made, and marked, if missing or empty)."""

    def __init__(self, root: str):
        self.root = root
        self.real = os.path.realpath(root)
        try:
            os.mkdir(root, 0o777)
        except FileExistsError:
            pass
        except OSError as e:
            raise DatasetError("cannot make %s: %s" % (root, e.strerror)) from None
        try:
            # the directory the user named: reached as a session directory is (followed)
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise DatasetError("cannot open %s: %s" % (root, e.strerror)) from None
        try:
            self._check_marker()
        except BaseException:
            self.close()
            raise

    def _check_marker(self) -> None:
        for _ in range(2):
            try:
                m = os.open(DATASET_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                            | os.O_CLOEXEC, dir_fd=self.fd)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise DatasetError("%s: %s is not a readable file (%s): nothing was written"
                                   % (self.root, DATASET_MARKER, e.strerror)) from None
            else:
                try:
                    ok = stat.S_ISREG(os.fstat(m).st_mode) and json.loads(
                        os.read(m, 1 << 16) or b"null").get("format") == DATASET_FORMAT
                except (ValueError, AttributeError):
                    ok = False
                finally:
                    os.close(m)
                if not ok:
                    raise DatasetError("%s: %s is not a dataset marker: nothing was written"
                                       % (self.root, DATASET_MARKER))
                return
            if os.listdir(self.fd):
                raise DatasetError("%s is not empty and not a hypertrace dataset (no %s): "
                                   "nothing was written" % (self.root, DATASET_MARKER))
            try:
                with os.fdopen(os.open(DATASET_MARKER, _NEW, 0o666, dir_fd=self.fd), "w") as f:
                    json.dump({"format": DATASET_FORMAT,
                               "layout": "host=<host>/session=<id>/<table>.parquet"}, f)
                return
            except FileExistsError:          # another export made it meanwhile: check it
                continue
        raise DatasetError("%s: cannot mark it as a dataset" % self.root)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- a session --------------------------------------------------------------------------
    def check(self, s: Session) -> Tuple[str, str]:
        """The partition of session s; DatasetError if it cannot go there."""
        sess = os.path.realpath(s.path)
        if within(self.real, sess) or within(sess, self.real):
            raise DatasetError("%s: the dataset %s and the session directory %s must not be "
                               "inside one another (a reader's glob would take the session's "
                               "own Parquet cache): nothing was written"
                               % (s.path, self.root, s.path))
        host_dir, part = partition(identity.host(s), identity.session_id(s))
        for name in os.listdir(self.fd):
            if name.startswith("host=") and name != host_dir and self._has(name, part):
                raise DatasetError("%s: session %s is already in %s under %s (another host "
                                   "name): remove that partition first" % (
                                       s.path, identity.session_id(s), self.root, name))
        return host_dir, part

    def _has(self, host_dir: str, part: str) -> bool:
        try:
            fd = os.open(host_dir, _DIR, dir_fd=self.fd)
        except OSError:
            return False
        try:
            os.stat(part, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)

    def add(self, s: Session, progress: Optional[Callable[[int], None]] = None
            ) -> Tuple[str, int, Optional[str]]:
        """Write session s as its partition (replacing a previous one of it): (the
        partition's path, events written, a previous partition left in place because
        it held other files, or None)."""
        host_dir, part = self.check(s)
        try:
            os.mkdir(host_dir, 0o777, dir_fd=self.fd)
        except FileExistsError:
            pass
        try:
            hfd = os.open(host_dir, _DIR, dir_fd=self.fd)
        except OSError as e:
            raise DatasetError("%s/%s: %s (refused: a dataset's directories are real "
                               "directories)" % (self.root, host_dir, e.strerror)) from None
        try:
            with _Partition(hfd, part, "%s/%s/%s" % (self.root, host_dir, part)) as p:
                n = parquet.write(Columns(s), "", progress,
                                  files_out=parquet.Files("", p.opener))
                leftover = p.commit(identity.session_id(s), identity.host(s))
        finally:
            os.close(hfd)
        return os.path.join(self.root, host_dir, part), n, leftover


class _Partition:
    """One partition on its way in: a fresh directory in the host directory."""

    def __init__(self, parent_fd: int, name: str, shown: str):
        self.parent_fd, self.name, self.shown = parent_fd, name, shown
        self.names: List[str] = []        # files made, under their final names
        self.done: List[str] = []         # ... those already renamed to them
        self.dir_fd = -1
        self.tmp: Optional[str] = None
        self._old()                       # refuse a partition not ours before writing
        for _ in range(100):
            tmp = ".partial-%s" % secrets.token_hex(16)
            try:
                os.mkdir(tmp, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                continue
            self.tmp = tmp
            break
        else:
            raise DatasetError("%s: no free temporary name" % shown)
        try:
            self.dir_fd = os.open(self.tmp, _DIR, dir_fd=parent_fd)
            st = os.fstat(self.dir_fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise DatasetError("%s: its temporary directory was replaced" % shown)
        except BaseException:
            self.close()
            raise

    def _old(self) -> Optional[os.stat_result]:
        """The stat of a previous partition of ours to replace, None if there is none."""
        try:
            os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        old = is_our_export(self.parent_fd, self.name)
        if old is None:
            raise DatasetError("%s exists and is not a partition you exported (no %s of "
                               "yours in it): nothing was replaced" % (self.shown, MARKER))
        return old

    def opener(self, name: str) -> BinaryIO:
        if not PARQUET_FILE.match(name):
            raise OSError(errno.EINVAL, "unexpected Parquet file name %r" % name)
        f = os.fdopen(os.open(name + PARTIAL, _NEW, 0o666, dir_fd=self.dir_fd), "wb")
        self.names.append(name)
        return f

    def commit(self, sid: str, host: str) -> Optional[str]:
        for n in self.names:
            os.rename(n + PARTIAL, n, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            self.done.append(n)
        with os.fdopen(os.open(MARKER, _NEW, 0o666, dir_fd=self.dir_fd), "w") as f:
            json.dump({"format": MARKER_FORMAT, "files": self.names, "session": sid,
                       "host": host}, f)
        self.done.append(MARKER)
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(self.dir_fd, 0o777 & ~mask)
        assert self.tmp is not None
        old = self._old()                 # again: it may have changed meanwhile
        if old is None:
            if not _rename2(self.parent_fd, self.tmp, self.parent_fd, self.name,
                            _RENAME_NOREPLACE):
                if self._old() is not None:
                    raise DatasetError("%s appeared while the export ran" % self.shown)
                os.rename(self.tmp, self.name, src_dir_fd=self.parent_fd,
                          dst_dir_fd=self.parent_fd)
            self.tmp = None
            return None
        if _rename2(self.parent_fd, self.tmp, self.parent_fd, self.name, _RENAME_EXCHANGE):
            aside = self.tmp              # now holds the previous partition
        else:
            aside = ".old-%s" % secrets.token_hex(16)
            os.mkdir(aside, 0o700, dir_fd=self.parent_fd)
            # onto our own empty directory, then the new one onto the free name
            os.rename(self.name, aside, src_dir_fd=self.parent_fd, dst_dir_fd=self.parent_fd)
            os.rename(self.tmp, self.name, src_dir_fd=self.parent_fd,
                      dst_dir_fd=self.parent_fd)
        self.tmp = None
        left = remove_export(self.parent_fd, aside, old)
        return None if left is None else self.shown.rsplit("/", 1)[0] + "/" + left

    def close(self) -> None:
        """Remove an uncommitted partition (only the names made here). Never raises."""
        if self.tmp is not None:
            try:
                for n in self.names:
                    for name in (n, n + PARTIAL) if n in self.done else (n + PARTIAL,):
                        try:
                            os.unlink(name, dir_fd=self.dir_fd)
                        except FileNotFoundError:
                            pass
                if MARKER in self.done:
                    os.unlink(MARKER, dir_fd=self.dir_fd)
                os.rmdir(self.tmp, dir_fd=self.parent_fd)
            except OSError:
                pass
            self.tmp = None
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> _Partition:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
