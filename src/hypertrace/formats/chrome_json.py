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


def _line(ph: str, extra: str, name: str, dom: str, pid: int, tid: int, ts: str,
          args: str) -> str:
    return ',\n{"ph":"%s",%s"name":%s,"cat":%s,"pid":%d,"tid":%d,"ts":%s,"args":%s}' % (
        ph, extra, json.dumps(name), json.dumps(dom), pid, tid, ts, args)


class _Nesting:
    """B/E slices that nest on every thread, as Chrome's format pairs them (by stack).

    The same rules as the Perfetto export (formats/perfetto.py, Writer.edge): a
    guest.span's end closes its own begin (by id) on its begin's thread; any other
    end the newest open slice of its name. An end whose begin is not the newest open
    slice ends the slices above it too and begins them again right after, marked
    `continued`; an end with no begin open is an instant, as the event it is."""

    MAX_OPEN = 1 << 20          # open slices in all (a flood of begins never ended)
    SEARCH = 256                # how deep an end looks for its begin

    def __init__(self) -> None:
        self.open: Dict[int, list] = {}              # tid -> [(name, span key)], oldest first
        self.span_tid: Dict[tuple, int] = {}         # span key -> its begin's tid
        self.n_open = 0

    def edge(self, e, event: str, dom: str, pid: int, ts: str, args: str, os_pid) -> str:
        tid = e.stream + 1
        sid = (dom, os_pid, e.span) if e.span is not None else None
        if e.ph == "B":
            if self.n_open >= self.MAX_OPEN:
                return _line("i", '"s":"t",', event, dom, pid, tid, ts, args)
            self.open.setdefault(tid, []).append((e.name, sid))
            self.n_open += 1
            if sid is not None and len(self.span_tid) < self.MAX_OPEN:
                self.span_tid[sid] = tid
            return _line("B", "", e.name, dom, pid, tid, ts, args)
        if sid is not None:
            tid = self.span_tid.pop(sid, tid)
        stack = self.open.get(tid, [])
        at = next((j for j in range(len(stack) - 1, max(-1, len(stack) - 1 - self.SEARCH), -1)
                   if stack[j][0] == e.name and (sid is None or stack[j][1] == sid)), None)
        if at is None:
            return _line("i", '"s":"t",', event, dom, pid, tid, ts, args)
        above = stack[at + 1:]
        del stack[at:]
        stack.extend(above)
        self.n_open -= 1
        return "".join([_line("E", "", n, dom, pid, tid, ts, "{}") for n, _ in reversed(above)]
                       + [_line("E", "", e.name, dom, pid, tid, ts, args)]
                       + [_line("B", "", n, dom, pid, tid, ts, '{"continued":true}')
                          for n, _ in above])


def _lines(c: Columns, b: Batch, pids: Dict[str, int], origin: int, edges: Edges,
           nest: _Nesting) -> pa.Array:
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
            a = args[k][int(b.pos[e.row])]
            if e.task:
                # a span of an asyncio task: an async slice of its own (tasks interleave
                # on the thread), nested by the task's id
                lines.append(_line(e.ph.lower(), '"id2":{"local":"0x%x"},' % e.task, e.name,
                                   dom, pids[dom], e.stream + 1, t, a))
            else:
                lines.append(nest.edge(e, c.kinds[k].name, dom, pids[dom], t, a,
                                       c.streams[e.stream].get("pid")))
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
    nest = _Nesting()
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
            out.write(_text(_lines(c, b, pids, origin, edges, nest)))
            for f in _flows(c, b, pids, origin):
                out.write((",\n" + f).encode())
            n += len(b)
            if progress is not None:
                progress(len(b))
        out.write(b"\n]}\n")
    return n
