"""Chrome Trace Event JSON (chrome://tracing, Perfetto's legacy import), written streaming.

A process per domain, a thread per stream; events are instants with their
fields as args; slice edges (analysis/spans.py: `X_begin`/`X_end`, guest.span,
traced functions) become B/E slices, an asyncio task's spans async b/e slices; each sync point is a
flow from the guest's `hypertrace_sync` to the host's `hypertrace_sync_host`.
Timestamps are µs since `time_origin_ns` (the session's first second on the
host timeline, in the `hypertrace` metadata event), printed with ns digits, so
a JSON double keeps ns resolution. Lines are built a batch and an event type
at a time with array operations.
"""

from __future__ import annotations

import itertools
import json
from typing import BinaryIO, Callable, Dict, Optional, Union

import numpy as np
import pyarrow as pa

from ..analysis.spans import Edges
from ..read import jsonfields
from ..read.columns import Batch, Columns
from ..read.events import SYNC_GUEST, SYNC_HOST
from ..read.rows import Decimals, join
from .output import binary_out

SUFFIX = ".json"


def _us(ts: np.ndarray) -> Decimals:
    """ns -> µs text with three decimals, exactly (no float rounding)."""
    return Decimals(ts.astype(np.int64), 3)


def _lines(c: Columns, b: Batch, pids: Dict[str, int], origin: int, edges: Edges) -> pa.Array:
    parts, where = [], []
    for k in np.unique(b.kind):
        kind = c.kinds[int(k)]
        mode = edges.mode(int(k))
        if mode is not None and mode[2] != "code":
            continue                   # slice edges: one line each, below
        sel = np.flatnonzero(b.kind == k)
        head = ('{"ph":"i","s":"t","name":%s,"cat":%s,"pid":%d,"tid":' % (
            json.dumps(kind.name), json.dumps(kind.domain), pids[kind.domain]))
        args = jsonfields.objects(kind.codec.decl, b.fields[int(k)], len(sel))
        parts.append(join(len(sel), [",\n" + head, Decimals(b.stream[sel] + 1), ',"ts":',
                                     _us(b.ts[sel] - origin), ',"args":', args, "}"]))
        where.append(sel)
    rows = edges.rows(b)
    if rows:
        args: Dict[int, list] = {}
        for e in rows:
            k = int(b.kind[e.row])
            if k not in args:
                n = len(b.fields[k][0]) if b.fields[k] else int((b.kind == k).sum())
                args[k] = jsonfields.objects(c.kinds[k].codec.decl, b.fields[k], n).to_pylist()
        ts = join(len(rows), [_us(b.ts[[e.row for e in rows]] - origin)]).to_pylist()
        lines = []
        for e, t in zip(rows, ts):
            k = int(b.kind[e.row])
            dom = c.kinds[k].domain
            # a span of an asyncio task: an async slice of its own (tasks interleave on
            # the thread), nested by the task's id
            ph, extra = (e.ph, "") if not e.task else (
                e.ph.lower(), '"id2":{"local":"0x%x"},' % e.task)
            lines.append(',\n{"ph":"%s",%s"name":%s,"cat":%s,"pid":%d,"tid":%d,"ts":%s,'
                         '"args":%s}' % (ph, extra, json.dumps(e.name), json.dumps(dom),
                                         pids[dom], e.stream + 1, t,
                                         args[k][int(b.pos[e.row])]))
        parts.append(pa.array(lines, pa.string()))
        where.append(np.array([e.row for e in rows], dtype=np.int64))
    order = np.argsort(np.concatenate(where), kind="stable")
    return pa.concat_arrays(parts).take(pa.array(order))


def _flows(c: Columns, b: Batch, pids: Dict[str, int], origin: int) -> list:
    """A flow per sync point: it starts at the guest's record and ends at the host's."""
    out = []
    for k in np.unique(b.kind):
        kind = c.kinds[int(k)]
        if kind.name not in (SYNC_GUEST, SYNC_HOST):
            continue
        names = kind.codec.names
        sel = np.flatnonzero(b.kind == k)
        rows = list(zip(*[col.to_pylist() for col in b.fields[int(k)]]))
        for i in sel:
            f = dict(zip(names, rows[b.pos[i]]))
            dom = kind.domain if kind.name == SYNC_GUEST else f.get("domain", "")
            ev = {"ph": "s" if kind.name == SYNC_GUEST else "f", "name": "sync", "cat": "sync",
                  "id": "%s:%s" % (dom, f.get("sync_id")), "pid": pids[kind.domain],
                  "tid": int(b.stream[i]) + 1, "ts": (int(b.ts[i]) - origin) / 1000.0}
            if kind.name == SYNC_HOST:
                ev["bp"] = "e"
            out.append(json.dumps(ev, separators=(",", ":")))
    return out


def _text(a: pa.Array) -> memoryview:
    """The bytes of a string array's values, back to back (no per-row Python objects)."""
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    offs = np.frombuffer(a.buffers()[1], dtype=np.int32, count=len(a) + 1, offset=a.offset * 4)
    return memoryview(a.buffers()[2])[offs[0]:offs[-1]]


def write(c: Columns, path: Union[str, BinaryIO],
          progress: Optional[Callable[[int], None]] = None) -> int:
    """Write the whole session to `path` (or an open binary file); returns the number
    of events written."""
    pids = {d: i for i, d in enumerate(c.s.domains, 1)}
    edges = Edges(c)
    n = 0
    batches = c.batches()
    first = next(batches, None)
    origin = int(first.ts[0]) // 10**9 * 10**9 if first is not None else 0
    with binary_out(path) as out:
        meta = [{"ph": "M", "name": "process_name", "pid": i, "tid": 0, "args": {"name": d}}
                for d, i in pids.items()]
        for j, st in enumerate(c.streams, 1):
            meta.append({"ph": "M", "name": "thread_name", "pid": pids[st["domain"]], "tid": j,
                         "args": {"name": "%s %s (pid %s tid %s)" % (
                             st["file"], st.get("thread", ""), st.get("pid"), st.get("tid"))}})
        # every event line starts with ",\n": the metadata goes first and is never empty
        meta.append({"ph": "M", "name": "hypertrace", "pid": 0, "tid": 0,
                     "args": {"session": c.s.index.get("trace_uuid", ""),
                              "time_origin_ns": origin}})
        out.write(b'{"displayTimeUnit":"ns","traceEvents":[\n')
        out.write(",\n".join(json.dumps(m, separators=(",", ":")) for m in meta).encode())
        for b in itertools.chain([first] if first is not None else [], batches):
            out.write(_text(_lines(c, b, pids, origin, edges)))
            for f in _flows(c, b, pids, origin):
                out.write((",\n" + f).encode())
            n += len(b)
            if progress is not None:
                progress(len(b))
        out.write(b"\n]}\n")
    return n
