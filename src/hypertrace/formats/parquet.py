"""Parquet (pyarrow), written streaming: one file set per session that DuckDB,
pandas or Spark read as is.

  events.parquet        every event: session, domain, stream, name, ts (host ns),
                        raw_ts (producer clock), ts_uncertainty_ns, truncated, fields (JSON)
  event_NAME.parquet    one per event type with a typed column per field, f_<arg>
                        (names taken but for case get ~2...: docs/abi.md §8)
  streams.parquet, clocks.parquet, sync.parquet   the session index as tables
"""

from __future__ import annotations

import errno
import os
from typing import BinaryIO, Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import abi
from ..read import jsonfields
from ..read.columns import Columns
from ..read.session import Session
from .output import PARQUET_FILE

SUFFIX = "-parquet"
_INT = {("int", 1, True): pa.int8(), ("int", 1, False): pa.uint8(),
        ("int", 2, True): pa.int16(), ("int", 2, False): pa.uint16(),
        ("int", 4, True): pa.int32(), ("int", 4, False): pa.uint32(),
        ("int", 8, True): pa.int64(), ("int", 8, False): pa.uint64()}

EVENTS = pa.schema([("session", pa.string()), ("domain", pa.string()), ("stream", pa.string()),
                    ("name", pa.string()), ("ts", pa.int64()), ("raw_ts", pa.uint64()),
                    ("ts_uncertainty_ns", pa.int64()), ("truncated", pa.bool_()),
                    ("fields", pa.string())])


def _arrow_type(ft: abi.FieldType) -> pa.DataType:
    if ft.kind == "int":
        return _INT[("int", ft.size, ft.signed)]
    return {"bool": pa.bool_(), "float": pa.float64(), "str": pa.string(),
            "bytes": pa.binary()}[ft.kind]


def column_names(decl: abi.EventDecl) -> List[str]:
    """The typed table's column of each argument: `f_<arg>` (the prefix keeps every
    argument apart from the columns domain, stream, ts and raw_ts, whatever it is
    called). SQL engines fold case (DuckDB would rename `f_x` beside `f_X` to `f_x_1`,
    which an argument `x_1` may own): a name already taken but for case gets `~2`,
    `~3`... in declaration order, which no `f_<arg>` can contain."""
    used = set()
    out = []
    for a, _, _ in decl.fields:
        base = name = "f_" + a
        k = 2
        while name.lower() in used:
            name = "%s~%d" % (base, k)
            k += 1
        used.add(name.lower())
        out.append(name)
    return out


def _typed_schema(decl: abi.EventDecl) -> pa.Schema:
    return pa.schema([("domain", pa.string()), ("stream", pa.string()), ("ts", pa.int64()),
                      ("raw_ts", pa.uint64())] +
                     [(n, _arrow_type(ft)) for n, (_, _, ft) in zip(column_names(decl),
                                                                  decl.fields)])


def typed_name(domain: str, event: str, used: set) -> str:
    """The file name (without .parquet) of an event type's table: from names the
    session index validated ([A-Za-z0-9_.-] domains, C identifier events), made
    unique (domain `a_b` event `c` and domain `a` event `b_c` would share one), also
    when case is ignored (events `Tick` and `tick`: DuckDB's view names, and files on
    a case-insensitive file system, would be one). `used` holds names in lower case."""
    base = name = "event_%s_%s" % (domain, event)
    k = 2
    while name.lower() in used:
        name = "%s~%d" % (base, k)
        k += 1
    used.add(name.lower())
    return name


class Files:
    """Where write() puts its files: through `opener`, which creates each file
    exclusively under a checked directory descriptor (an export's temporary
    directory, formats/output.py; the SQL cache). `names` lists every file written."""

    def __init__(self, outdir: str, opener: Optional[Callable[[str], BinaryIO]] = None):
        self.outdir = outdir
        self.opener = opener or self._in_dir
        self.names: List[str] = []
        self._open: List[BinaryIO] = []
        self._dir_fd = -1

    def _in_dir(self, name: str) -> BinaryIO:
        # a library caller's directory by path: made if missing, never through a symlink
        if self._dir_fd < 0:
            os.makedirs(self.outdir, exist_ok=True)
            self._dir_fd = os.open(self.outdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                   | os.O_CLOEXEC)
        return os.fdopen(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                                 | os.O_CLOEXEC, 0o666, dir_fd=self._dir_fd), "wb")

    def where(self, name: str) -> BinaryIO:
        if not PARQUET_FILE.match(name):
            raise OSError(errno.EINVAL, "unexpected Parquet file name %r" % name)
        f = self.opener(name)
        self.names.append(name)
        self._open.append(f)
        return f

    def close(self) -> None:
        for f in self._open:
            f.close()
        self._open = []
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1


def write(c: Columns, outdir: str, progress: Optional[Callable[[int], None]] = None,
          files_out: Optional[Files] = None) -> int:
    """Write the session's tables into `outdir` (or through files_out); returns the
    number of events."""
    out = files_out or Files(outdir)
    try:
        return _write(c, out, progress)
    finally:
        out.close()


def _write(c: Columns, out: Files, progress: Optional[Callable[[int], None]]) -> int:
    sess = c.s.index.get("trace_uuid", "")
    files = pa.array([st["file"] for st in c.streams], pa.string())
    # dictionary encoding only where values repeat: trying it on JSON text costs time
    events = pq.ParquetWriter(out.where("events.parquet"), EVENTS,
                              use_dictionary=["session", "domain", "stream", "name"],
                              write_statistics=[f.name for f in EVENTS if f.name != "fields"])
    used: set = set()
    typed: Dict[int, pq.ParquetWriter] = {}
    n = 0
    for b in c.batches():
        kinds = pa.array(b.kind)
        names = pa.array([k.name for k in c.kinds], pa.string())
        doms = pa.array([k.domain for k in c.kinds], pa.string())
        fields, where = [], []
        for k in np.unique(b.kind):
            k = int(k)
            kind = c.kinds[k]
            sel = np.flatnonzero(b.kind == k)
            fields.append(jsonfields.objects(kind.codec.decl, b.fields[k], len(sel)))
            where.append(sel)
            w = typed.get(k)
            if w is None:
                w = typed[k] = pq.ParquetWriter(
                    out.where(typed_name(kind.domain, kind.name, used) + ".parquet"),
                    _typed_schema(kind.codec.decl), use_dictionary=["domain", "stream"])
            w.write_batch(pa.record_batch(
                [pa.array([kind.domain] * len(sel), pa.string()),
                 files.take(pa.array(b.stream[sel])), pa.array(b.ts[sel]),
                 pa.array(b.raw_ts[sel])] +
                [col.cast(_arrow_type(ft)) for (_, _, ft), col in
                 zip(kind.codec.decl.fields, b.fields[k])], schema=w.schema))
        order = pa.array(np.argsort(np.concatenate(where), kind="stable"))
        unc = pa.array(b.unc, mask=b.unc < 0)
        events.write_batch(pa.record_batch(
            [pa.array([sess] * len(b), pa.string()), doms.take(kinds),
             files.take(pa.array(b.stream)), names.take(kinds), pa.array(b.ts),
             pa.array(b.raw_ts), unc, pa.array(b.truncated),
             pa.concat_arrays(fields).take(order)], schema=EVENTS))
        n += len(b)
        if progress is not None:
            progress(len(b))
    events.close()
    for w in typed.values():
        w.close()
    _index_tables(c.s, out)
    return n


# the index as tables, with their types stated: a value the index allows (any u64 the
# guest sent) is never left to pyarrow's inference, which stops at int64
STREAMS = pa.schema([("file", pa.string()), ("domain", pa.string()), ("ring", pa.int64()),
                     ("pid", pa.int64()), ("tid", pa.int64()), ("thread", pa.string()),
                     ("recorded", pa.int64()), ("discarded", pa.int64()),
                     ("malformed", pa.int64()), ("torn", pa.int64()), ("emitted", pa.int64())])
CLOCKS = pa.schema([("domain", pa.string()), ("kind", pa.string()), ("offset_ns", pa.int64()),
                    ("drift_ppm", pa.float64()), ("uncertainty_ns", pa.int64()),
                    ("samples", pa.int64()), ("causality_violations", pa.int64())])
SYNC = pa.schema([("domain", pa.string()), ("sync_id", pa.uint64()), ("name", pa.string()),
                  ("guest_send", pa.uint64()), ("host_recv", pa.uint64()),
                  ("host_send", pa.uint64()), ("guest_recv", pa.uint64())])


def _table(rows: List[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows],
                                schema=schema)


def _index_tables(s: Session, out: Files) -> None:
    pq.write_table(_table(s.streams, STREAMS), out.where("streams.parquet"))
    clocks = []
    for d, c in s.clocks.items():
        u = c.get("uncertainty_ns")     # a number (sessionindex caps it), shown in whole ns
        clocks.append(dict(c, domain=d, uncertainty_ns=None if u is None else
                           int(-(-u // 1))))
    pq.write_table(_table(clocks, CLOCKS), out.where("clocks.parquet"))
    sync = [dict(x, domain=d) for d, xs in s.index.get("syncs", {}).items() for x in xs]
    pq.write_table(_table(sync, SYNC), out.where("sync.parquet"))
