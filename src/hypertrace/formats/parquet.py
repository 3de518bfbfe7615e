"""Parquet (pyarrow), written streaming: one file set per session that DuckDB,
pandas or Spark read as is.

  events.parquet        every event: session, domain, stream, name, ts (host ns),
                        raw_ts (producer clock), ts_uncertainty_ns, truncated, fields (JSON)
  event_NAME.parquet    one per event type with a typed column per field
  streams.parquet, clocks.parquet, sync.parquet   the session index as tables
"""

from __future__ import annotations

import json
import os
from typing import Dict, List

import pyarrow as pa
import pyarrow.parquet as pq

from .. import abi
from ..session import Session

BATCH = 65536
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


class _Table:
    def __init__(self, path: str, schema: pa.Schema):
        self.schema = schema
        self.w = pq.ParquetWriter(path, schema)
        self.cols: List[list] = [[] for _ in schema]

    def add(self, row) -> None:
        for c, v in zip(self.cols, row):
            c.append(v)
        if len(self.cols[0]) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.cols[0]:
            self.w.write_batch(pa.record_batch(self.cols, schema=self.schema))
            self.cols = [[] for _ in self.schema]

    def close(self) -> None:
        self.flush()
        self.w.close()


def write(s: Session, outdir: str, progress=None) -> int:
    os.makedirs(outdir, exist_ok=True)
    sess = s.index.get("trace_uuid", "")
    events = _Table(os.path.join(outdir, "events.parquet"), EVENTS)
    typed: Dict[tuple, _Table] = {}
    n = 0
    for e in s.events():
        f = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in e.fields.items()}
        events.add((sess, e.domain, e.stream, e.name, e.ts, e.raw_ts, e.ts_uncertainty,
                    e.truncated, json.dumps(f)))
        key = (e.domain, e.name)
        t = typed.get(key)
        if t is None:
            decl = s.codecs[e.domain][_event_id(s, e.domain, e.name)].decl
            schema = pa.schema([("domain", pa.string()), ("stream", pa.string()),
                                ("ts", pa.int64()), ("raw_ts", pa.uint64())] +
                               [("f_" + a, _arrow_type(ft)) for a, _, ft in decl.fields])
            name = "event_%s_%s.parquet" % (e.domain, e.name)
            t = typed[key] = _Table(os.path.join(outdir, name), schema)
        t.add([e.domain, e.stream, e.ts, e.raw_ts] + list(e.fields.values()))
        n += 1
        if progress is not None and n % BATCH == 0:
            progress(n)
    events.close()
    for t in typed.values():
        t.close()
    _index_tables(s, outdir)
    return n


def _event_id(s: Session, domain: str, name: str) -> int:
    for i, c in s.codecs[domain].items():
        if c.decl.name == name:
            return i
    raise KeyError(name)


def _index_tables(s: Session, outdir: str) -> None:
    keys = ("file", "domain", "ring", "pid", "tid", "thread", "recorded", "discarded",
            "malformed", "torn", "emitted")
    streams = [{k: st.get(k) for k in keys} for st in s.streams]
    pq.write_table(pa.Table.from_pylist(streams) if streams else pa.table({"file": []}),
                   os.path.join(outdir, "streams.parquet"))
    clocks = [{"domain": d, **{k: c.get(k) for k in (
        "kind", "offset_ns", "drift_ppm", "uncertainty_ns", "samples",
        "causality_violations")}} for d, c in s.clocks.items()]
    pq.write_table(pa.Table.from_pylist(clocks) if clocks else pa.table({"domain": []}),
                   os.path.join(outdir, "clocks.parquet"))
    cols = ("sync_id", "name", "guest_send", "host_recv", "host_send", "guest_recv")
    sync = [{"domain": d, **{k: x.get(k) for k in cols}}
            for d, xs in s.index.get("syncs", {}).items() for x in xs]
    pq.write_table(pa.Table.from_pylist(sync) if sync else pa.table(
        {"domain": pa.array([], pa.string())}), os.path.join(outdir, "sync.parquet"))
