"""`hypertrace sql DIR1 DIR2 ... QUERY`: DuckDB views over many sessions at once.

The views are those of one session (analysis/sql.py: events, event_<domain>_<name>,
streams, clocks, sync, lost), each with two columns first: `session` (the trace
uuid, read/identity.py) and `host` (the machine that recorded it). Each session's
tables come from its own Parquet cache (sql.cache: checked, made once), read
through the descriptor of that cache.

Typed views: a session names its tables in the order its export meets them
(parquet.typed_name: `event_local_tick~2` beside `event_local_Tick`), so the same
file name may be another event in another session. Here every table is taken for
its event, (domain, event name), and the names are given again over all the
sessions, in the order given (for the tables of one session: the names its own
export gave). A typed view is the union by column name of the sessions that have
that event: a column a session lacks is NULL there. Where sessions declare one
argument with different types, integers of any widths are widened to a type that
holds them all (DuckDB's union: exact); any other difference (an integer and a
string, a float and an integer) would give values of a type no session wrote, so
that view is left out and a query naming it gets an error that says why.
"""

from __future__ import annotations

import os
import re
from typing import Dict, List, Tuple

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ..formats import parquet
from ..read import identity
from ..read.session import Session
from .sql import cache, quote_ident, quote_literal

BASE = ("events", "streams", "clocks", "sync")
_SUFFIX = re.compile(r"~[0-9]+\Z")


class Part:
    """One session's file of one view."""

    def __init__(self, sid: str, host: str, path: str):
        self.sid, self.host, self.path = sid, host, path
        self.schema = pq.read_schema(path)


def _event_of(path: str, name: str) -> Tuple[str, str]:
    """(domain, event) of a typed table file: the domain from its rows (every row has
    the same; a file is written only for an event that has rows), the event from the
    file name after `event_<domain>_` (an event name is a C identifier: no `~`)."""
    f = pq.ParquetFile(path)
    dom = f.read_row_group(0, columns=["domain"]).column(0)[0].as_py()
    stem = name[:-len(".parquet")]
    return dom, _SUFFIX.sub("", stem[len("event_%s_" % dom):])


def _conflict(parts: List[Part]) -> str:
    """Why the sessions' files cannot be one view, or ''."""
    types: Dict[str, Dict[str, Tuple[pa.DataType, Part]]] = {}
    for p in parts:
        for f in p.schema:
            types.setdefault(f.name, {}).setdefault(str(f.type), (f.type, p))
    for col, by_type in types.items():
        if len(by_type) > 1 and not all(pa.types.is_integer(t) for t, _ in by_type.values()):
            (t1, p1), (t2, p2) = list(by_type.values())[:2]
            return ("column %s is %s in session %s (host %s) but %s in session %s (host %s)"
                    % (col, t1, p1.sid, p1.host, t2, p2.sid, p2.host))
    return ""


def _select(p: Part) -> str:
    own = [c for c in ("session", "host") if c in p.schema.names]   # events.session
    return "SELECT %s AS session, %s AS host, *%s FROM read_parquet(%s)" % (
        quote_literal(p.sid), quote_literal(p.host),
        " EXCLUDE (%s)" % ", ".join(map(quote_ident, own)) if own else "",
        quote_literal(p.path))


def views(con: duckdb.DuckDBPyConnection, sessions: List[Session],
          caches: List[Tuple[int, List[str]]]) -> Dict[str, str]:
    """Create the views; returns {lower-case view name: why it is missing} for the
    typed views left out."""
    tables: Dict[str, List[Part]] = {t: [] for t in BASE}
    names: Dict[Tuple[str, str], str] = {}
    used: set = set()
    for s, (fd, files) in zip(sessions, caches):
        sid, host = identity.session_id(s), identity.host(s)
        for f in files:                      # in the order the session's export made them
            path = "/proc/self/fd/%d/%s" % (fd, f)
            stem = f[:-len(".parquet")]
            if stem not in BASE:
                key = _event_of(path, f)
                if key not in names:
                    names[key] = parquet.typed_name(key[0], key[1], used)
                stem = names[key]
            tables.setdefault(stem, []).append(Part(sid, host, path))
    missing = {}
    for view, parts in tables.items():
        why = _conflict(parts)
        if why:
            missing[view.lower()] = "%s: %s (query those sessions apart, or the events " \
                                    "view's fields)" % (view, why)
            continue
        con.execute("CREATE VIEW %s AS %s" % (quote_ident(view), " UNION ALL BY NAME ".join(
            _select(p) for p in parts)))
    con.execute("CREATE VIEW lost AS SELECT session, host, file, domain, pid, tid, thread, "
                "discarded, malformed, torn FROM streams "
                "WHERE discarded > 0 OR malformed > 0 OR torn > 0")
    return missing


_NO_TABLE = re.compile(r'Table with name "?([^" ]+?)"? does not exist')


def query(sessions: List[Session], sql: str):
    """(column names, rows) of `sql` over all the sessions (given once each)."""
    identity.distinct(sessions)
    caches: List[Tuple[int, List[str]]] = []
    try:
        for s in sessions:
            caches.append(cache(s))
        con = duckdb.connect()
        try:
            missing = views(con, sessions, caches)
            try:
                cur = con.execute(sql)
            except duckdb.CatalogException as e:
                m = _NO_TABLE.search(str(e))
                if m and m.group(1).lower() in missing:
                    raise duckdb.CatalogException(missing[m.group(1).lower()]) from None
                raise
            cols = [d[0] for d in cur.description] if cur.description else []
            return cols, cur.fetchall()
        finally:
            con.close()
    finally:
        for fd, _ in caches:
            os.close(fd)
