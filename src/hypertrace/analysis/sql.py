"""`hypertrace sql`: DuckDB over a session's Parquet export.

Views: events (every event, fields as JSON), event_<domain>_<name> (typed
columns f_<arg>; a view or column name taken but for case gets ~2...: SQL folds
case, docs/abi.md §8), streams, clocks, sync, lost (streams that lost or rejected
records). The export is cached in DIR/.hypertrace/parquet, or in the user's
cache directory when that one cannot be used, and redone when the index changes.

The session directory is untrusted, so the cache is too unless this process can
tell it made it: a cache directory is used only if it is a real directory (never
a symlink) owned by this user with no access for others, reached through
descriptors (openat) so that no path is followed after the check; its stamp
names the index it was made from (a digest) and the directory itself (device and
inode: a copied or unpacked cache is never taken for ours). Files are created
with O_EXCL|O_NOFOLLOW, and only entries with the cache's own names are ever
removed, inside that directory. View names come from validated names and are
quoted; DuckDB reads the files through /proc/self/fd of the checked directory.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from typing import BinaryIO, List, Optional, Tuple

import duckdb

from ..formats import parquet
from ..read.columns import Columns
from ..read.session import Session
from ..sessiondir import SessionError, open_regular, read_bounded

STAMP = ".done"
OURS = parquet.PARQUET_FILE     # the names an export writes: nothing else is ever removed
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def quote_ident(name: str) -> str:
    """A DuckDB identifier: in double quotes, embedded quotes doubled."""
    return '"%s"' % name.replace('"', '""')


def quote_literal(text: str) -> str:
    """A DuckDB string literal: in single quotes, embedded quotes doubled."""
    if "\0" in text:
        raise ValueError("NUL in an SQL literal")
    return "'%s'" % text.replace("'", "''")


def _private_dir(parent_fd: int, name: str, create: bool) -> Optional[int]:
    """A descriptor of directory `name` under parent_fd if it is ours: a directory
    (not a symlink), owned by this user, no permission for group or others. Made
    0700 if missing and `create`. None if it is anything else (left untouched)."""
    try:
        fd = os.open(name, _DIR, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            return None
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:        # someone else made it meanwhile: check theirs
            pass
        except OSError:
            return None
        return _private_dir(parent_fd, name, False)
    except OSError:                      # ELOOP (a symlink), ENOTDIR, EACCES
        return None
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077 or not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        return None
    return fd


def _session_cache(s: Session) -> Optional[int]:
    """DIR/.hypertrace/parquet, if usable: .hypertrace must be ours and not
    writable by others too (else they could swap the cache under us)."""
    try:
        meta = os.open(".hypertrace", _DIR, dir_fd=s.dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(meta)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        return _private_dir(meta, "parquet", True)
    finally:
        os.close(meta)


def _user_cache(s: Session) -> Optional[int]:
    """~/.cache/hypertrace/sql/KEY (KEY from the session's real path), each level
    created 0700 and checked."""
    key = hashlib.sha1(os.path.realpath(s.path).encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    try:
        os.makedirs(base, 0o700, exist_ok=True)
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)   # the user's own
    except OSError:
        return None
    for part in ("hypertrace", "sql", key):
        nxt = _private_dir(fd, part, True)
        os.close(fd)
        if nxt is None:
            return None
        fd = nxt
    return fd


def _stamp(s: Session, fd: int) -> dict:
    st = os.fstat(fd)
    return {"index_sha256": s.index_digest, "dir": [st.st_dev, st.st_ino]}


def _read_stamp(fd: int) -> Optional[dict]:
    try:
        f = open_regular(fd, STAMP, STAMP)
        try:
            doc = json.loads(read_bounded(f, 1 << 20, STAMP))
        finally:
            os.close(f)
    except (OSError, ValueError, SessionError):
        return None
    return doc if isinstance(doc, dict) else None


def _files(doc: Optional[dict]) -> List[str]:
    names = doc.get("files") if doc else None
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and OURS.match(n)]


def _clear(fd: int, old: Optional[dict]) -> None:
    """Remove the entries a previous build made (unlinkat: an entry that is a
    symlink is removed itself, never what it points to), and the stamp."""
    names = set(_files(old))
    if old is None or old.get("dir") != _stamp_dir(fd):
        # no stamp of ours: only entries with the cache's own names
        names |= {n for n in os.listdir(fd) if OURS.match(n)}
    for n in sorted(names) + [STAMP]:
        try:
            os.unlink(n, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise OSError(errno.EISDIR, "%s in the Parquet cache is a directory" % n) from None


def _stamp_dir(fd: int) -> list:
    st = os.fstat(fd)
    return [st.st_dev, st.st_ino]


def _build(s: Session, fd: int) -> List[str]:
    old = _read_stamp(fd)
    want = _stamp(s, fd)
    if old is not None and all(old.get(k) == v for k, v in want.items()):
        names = _files(old)
        if names:
            return names
    _clear(fd, old)

    def opener(name: str) -> BinaryIO:
        if not OURS.match(name):
            raise OSError(errno.EINVAL, "unexpected Parquet file name %r" % name)
        return os.fdopen(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o600, dir_fd=fd), "wb")
    out = parquet.Files("", opener)
    parquet.write(Columns(s), "", files_out=out)
    want["files"] = out.names
    tmp = os.open(STAMP, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600, dir_fd=fd)
    with os.fdopen(tmp, "w") as f:
        json.dump(want, f)
    return out.names


def cache(s: Session) -> Tuple[int, List[str]]:
    """(descriptor of the cache directory, its Parquet files), made once."""
    err: Optional[OSError] = None
    for where in (_session_cache, _user_cache):
        fd = where(s)
        if fd is None:
            continue
        try:
            return fd, _build(s, fd)
        except OSError as e:
            os.close(fd)
            err = e
    raise OSError("cannot write the Parquet cache: %s" % (
        err or "no private cache directory (DIR/.hypertrace/parquet or ~/.cache/hypertrace)"))


def _views(con: duckdb.DuckDBPyConnection, fd: int, names: List[str]) -> None:
    for f in sorted(names):
        # through the checked descriptor: no path is resolved again
        path = "/proc/self/fd/%d/%s" % (fd, f)
        con.execute("CREATE VIEW %s AS SELECT * FROM read_parquet(%s)"
                    % (quote_ident(f[:-len(".parquet")]), quote_literal(path)))
    con.execute("CREATE VIEW lost AS SELECT file, domain, pid, tid, thread, discarded, malformed,"
                " torn FROM streams WHERE discarded > 0 OR malformed > 0 OR torn > 0")


def query(s: Session, sql: str):
    """(column names, rows) of `sql` over the session."""
    fd, names = cache(s)
    try:
        con = duckdb.connect()
        try:
            _views(con, fd, names)
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()
        finally:
            con.close()
    finally:
        os.close(fd)
