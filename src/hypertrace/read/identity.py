"""Which session a directory holds and which machine recorded it: the `session`
and `host` columns of a query over many sessions (analysis/fleet.py) and the
partitions of a dataset (formats/dataset.py).

session: the index's trace_uuid (32 hex digits, made fresh by every `record`: two
copies of one directory are one session, two runs that share a directory name are
two). An index without one (not written by `record`) is named by its content:
`index-` and 32 hex digits of its SHA-256.

host: the index's `hostname` (written by `record` since this field exists), else
the `hostname` of the CTF metadata's env block (which every `record` has
written), else UNKNOWN_HOST. Either must be 1-255 characters without control
characters (sessionindex.HOSTNAME), or it is not used.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional

from .. import sessionindex
from ..sessiondir import SessionError, open_regular
from .session import Session

UNKNOWN_HOST = "unknown"
#: the env block follows the trace block at the top of the metadata: far within this
_METADATA_HEAD = 64 << 10
_ENV = re.compile(r"^env \{\n(.*?)^\};", re.S | re.M)
_ENV_HOST = re.compile(r'^\thostname = "((?:[^"\\\n]|\\.)*)";$', re.M)


def session_id(s: Session) -> str:
    """The session's name in the `session` column and partition (see above)."""
    return s.index.get("trace_uuid") or "index-" + s.index_digest[:32]


def host(s: Session) -> str:
    """The machine the session was recorded on (see above)."""
    h = s.index.get("hostname")        # checked by sessionindex.validate
    return h or _metadata_host(s) or UNKNOWN_HOST


def _metadata_host(s: Session) -> Optional[str]:
    try:
        fd = open_regular(s.dir_fd, "metadata", os.path.join(s.path, "metadata"))
    except (OSError, SessionError):
        return None
    try:
        head = os.pread(fd, _METADATA_HEAD, 0).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    env = _ENV.search(head)
    m = _ENV_HOST.search(env.group(1)) if env else None
    if m is None:
        return None
    name = re.sub(r"\\(.)", r"\1", m.group(1))      # formats/ctf.py _escape, undone
    return name if sessionindex.HOSTNAME.match(name) else None


def distinct(sessions: List[Session]) -> None:
    """SessionError if one session is given twice: the same directory, or two
    directories holding one session (a copy)."""
    seen_dir, seen_id = {}, {}
    for s in sessions:
        st = os.fstat(s.dir_fd)
        key = (st.st_dev, st.st_ino)
        if key in seen_dir:
            raise SessionError("%s and %s are the same directory: give each session once"
                               % (seen_dir[key], s.path))
        sid = session_id(s)
        if sid in seen_id:
            raise SessionError("%s and %s hold the same session (%s; a copy?): give each "
                               "session once" % (seen_id[sid], s.path, sid))
        seen_dir[key] = seen_id[sid] = s.path
