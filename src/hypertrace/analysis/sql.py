"""`hypertrace sql`: DuckDB over a session's Parquet export.

Views: events (every event, fields as JSON), event_<domain>_<name> (typed
columns f_<arg>), streams, clocks, sync, lost (streams that lost or rejected
records). The export is cached in DIR/.hypertrace/parquet and redone when the
session index is newer.
"""

from __future__ import annotations

import glob
import hashlib
import os
from typing import Optional

import duckdb

from ..columns import Columns
from ..formats import parquet
from ..session import Session


def _user_cache(s: Session) -> str:
    key = hashlib.sha1(os.path.realpath(s.path).encode()).hexdigest()[:16]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hypertrace", "sql", key)


def cache(s: Session) -> str:
    """The session's Parquet export, made once: in DIR/.hypertrace/parquet, or in the
    user's cache directory when the session is read-only."""
    idx = os.path.join(s.path, ".hypertrace", "session.json")
    err: Optional[OSError] = None
    for out in (os.path.join(s.path, ".hypertrace", "parquet"), _user_cache(s)):
        stamp = os.path.join(out, ".done")
        if os.path.exists(stamp) and os.path.getmtime(stamp) >= os.path.getmtime(idx):
            return out
        try:
            os.makedirs(out, exist_ok=True)
            for f in glob.glob(os.path.join(out, "*.parquet")):
                os.unlink(f)
            parquet.write(Columns(s), out)
            open(stamp, "w").close()
            return out
        except OSError as e:
            err = e
    raise OSError("cannot write the Parquet cache: %s" % err)


def connect(s: Session) -> duckdb.DuckDBPyConnection:
    d = cache(s)
    con = duckdb.connect()
    for f in sorted(glob.glob(os.path.join(d, "*.parquet"))):
        view = os.path.basename(f)[:-len(".parquet")]
        con.execute('CREATE VIEW "%s" AS SELECT * FROM read_parquet(\'%s\')'
                    % (view, f.replace("'", "''")))
    con.execute("CREATE VIEW lost AS SELECT file, domain, pid, tid, thread, discarded, malformed,"
                " torn FROM streams WHERE discarded > 0 OR malformed > 0 OR torn > 0")
    return con


def query(s: Session, sql: str):
    """(column names, rows) of `sql` over the session."""
    con = connect(s)
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description] if cur.description else []
    return cols, cur.fetchall()
