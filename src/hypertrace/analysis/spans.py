"""Slices: which events begin or end one, what it is called, and how ends pair with begins.

Three kinds of edges, one mechanism for every view (JSON, Perfetto, HTML, stats):
- `X_begin`/`X_end` declared by hand: paired last-in first-out per stream;
- a `guest.span`'s pair, whose first two fields are `span` (an id unique in its
  process) and `task` (its asyncio task, 0 outside one): paired by id, so spans of
  interleaved tasks on one thread pair right, nested per (stream, task); an end
  recorded by another thread of the process (a generator finalized elsewhere) ends
  its begin's span;
- function tracing's `hypertrace_call`/`hypertrace_return(uint32_t code)`: named after
  the `hypertrace_code` record that declared the code object in that process, paired
  last-in first-out per stream. Calls nest strictly: a return closes the calls
  still open above its own, whose returns were lost (counted unfinished).

An end without its begin is unmatched; a begin without its end (lost, cut off by
the recording's end, os._exit, or a thread never returning) is unfinished: both are
counted per name, neither gives a duration. Slices nested deeper than MAX_OPEN (a
recursion 300 000 deep) are paired by name alone and counted, as slices of no
duration: their time is their caller's self time.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from ..read.columns import Batch, Columns

CODE = "hypertrace_code"        # (uint32_t code, const char *name, const char *file, uint32_t line)
CALL = "hypertrace_call"        # (uint32_t code)
RETURN = "hypertrace_return"    # (uint32_t code)
SPAN_FIELDS = ("span", "task")  # the first fields of a guest.span's begin and end
MAX_OPEN = 1 << 18              # open slices timed per stream (deeper ones: counted, not timed)
MAX_DEEP = 1 << 24              # and counted: a hostile guest's never-ending begins
SEARCH = 256                    # how far below the newest open slice an end looks for its begin


def edge(name: str) -> Optional[Tuple[str, str]]:
    """('X', 'B') for X_begin, ('X', 'E') for X_end, else None."""
    for suffix, ph in (("_begin", "B"), ("_end", "E")):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)], ph
    return None


def code_name(name: str, file: str, line: int) -> str:
    """A traced function's slice name, as VizTracer writes it: `qualname (file:line)`."""
    return "%s (%s:%d)" % (name, file, line)


class Slice(NamedTuple):
    stream: int
    key: str            # "domain/name"
    t0: int             # begin and end, ns on the host timeline
    t1: int
    depth: int
    self_ns: int
    call: bool          # a traced function's call (not a span or a hand-made pair)
    outer: bool         # no slice of the same name was open below it (recursion)


class Edge(NamedTuple):
    row: int            # index in the batch
    ph: str             # "B" or "E"
    name: str           # the slice's name (without the domain)
    stream: int
    span: Optional[int]  # a guest.span's id (pairs by it), else None (last in, first out)
    task: int           # its asyncio task (0: the thread itself)
    call: bool = False


class Edges:
    """The edge rows of each batch, fed in time order (a code object's declaration
    comes before its first call in time, whatever thread declared it)."""

    def __init__(self, c: Columns):
        self.c = c
        self._modes: List[Optional[tuple]] = []
        #: (domain, pid, code id) -> slice name
        self.codes: Dict[Tuple[str, object, int], str] = {}

    def mode(self, k: int) -> Optional[tuple]:
        """(ph, name, how) for kind k: how is "lifo", "span", "call" or "code" (a
        declaration, not an edge); None for any other event."""
        while len(self._modes) <= k:
            kind = self.c.kinds[len(self._modes)]
            self._modes.append(self._mode_of(kind))
        return self._modes[k]

    @staticmethod
    def _mode_of(kind) -> Optional[tuple]:
        fields = kind.codec.decl.fields
        names = tuple(a for a, _, _ in fields)
        if kind.name in (CALL, RETURN) and names == ("code",) and fields[0][2].kind == "int":
            return ("B" if kind.name == CALL else "E", None, "call")
        if kind.name == CODE and names[:4] == ("code", "name", "file", "line"):
            return ("", None, "code")
        e = edge(kind.name)
        if e is None:
            return None
        ints = all(ft.kind == "int" for _, _, ft in fields[:2])
        how = "span" if names[:2] == SPAN_FIELDS and ints else "lifo"
        return (e[1], e[0], how)

    def rows(self, b: Batch) -> List[Edge]:
        modes = {int(k): self.mode(int(k)) for k in np.unique(b.kind)}
        modes = {k: m for k, m in modes.items() if m is not None}
        if not modes:
            return []
        streams = self.c.streams
        for k, m in modes.items():        # declarations first: they precede their calls
            if m[2] != "code":
                continue
            dom = self.c.kinds[k].domain
            cols = [col.to_pylist() for col in b.fields[k][:4]]
            sel = np.flatnonzero(b.kind == k)
            for i in sel.tolist():
                code, name, file, line = (col[b.pos[i]] for col in cols)
                pid = streams[int(b.stream[i])].get("pid")
                self.codes[(dom, pid, code)] = code_name(name, file, line)
        out: List[Edge] = []
        rows = np.flatnonzero(np.isin(b.kind, [k for k, m in modes.items() if m[2] != "code"]))
        cols = {k: [col.to_pylist() for col in b.fields[k][:2]] for k, m in modes.items()
                if m[2] in ("span", "call")}
        for i, k, st, pos in zip(rows.tolist(), b.kind[rows].tolist(),
                                 b.stream[rows].tolist(), b.pos[rows].tolist()):
            ph, name, how = modes[k]
            if how == "lifo":
                out.append(Edge(i, ph, name, st, None, 0))
            elif how == "span":
                c = cols[k]
                out.append(Edge(i, ph, name, st, c[0][pos], c[1][pos]))
            else:
                code = cols[k][0][pos]
                key = (self.c.kinds[k].domain, streams[st].get("pid"), code)
                out.append(Edge(i, ph, self.codes.get(key) or "code %d" % code, st, None, 0,
                                True))
        return out


class Pairer:
    """Feed batches in time order; each feed returns the Slices it closed: depth counts the
    slices of its kind (functions, or spans) still open on the same stream and task
    when it began; self time is its
    duration less that of the slices that closed inside it. An end pairs with the
    newest open begin of the same name (a guest.span's: of the same id), so pairs of
    different names may overlap."""

    def __init__(self, c: Columns):
        self.c = c
        self.edges = Edges(c)
        # (stream, task, call) -> open slices as [t0, key, child ns, depth, span id, outer]
        self.stacks: Dict[tuple, list] = {}
        self.unmatched: Dict[str, int] = {}         # per span: ends without a begin
        self.unmatched_calls: Dict[str, int] = {}   # per function: the same
        self.unfinished: Dict[str, int] = {}        # per span: begins without an end
        self.unfinished_calls: Dict[str, int] = {}  # per function: the same
        self.open_keys: Dict[tuple, Dict[str, int]] = {}   # the same -> key -> open
        # (domain, pid, span id) -> where its begin is open: an end pairs across streams
        self.span_at: Dict[tuple, tuple] = {}
        # the same -> names of the begins open deeper than MAX_OPEN, newest last
        self.deep: Dict[tuple, List[str]] = {}

    def _miss(self, key: str, call: bool) -> None:
        u = self.unmatched_calls if call else self.unmatched
        u[key] = u.get(key, 0) + 1

    def _cut(self, key: str, call: bool) -> None:
        u = self.unfinished_calls if call else self.unfinished
        u[key] = u.get(key, 0) + 1

    def finish(self) -> None:
        """After the last batch: the slices still open are unfinished."""
        for (_, _, call), stack in self.stacks.items():
            for x in stack:
                self._cut(x[1], call)
        for (_, _, call), keys in self.deep.items():
            for k in keys:
                self._cut(k, call)
        self.deep.clear()
        self.stacks.clear()
        self.open_keys.clear()
        self.span_at.clear()

    def feed(self, b: Batch) -> List[Slice]:
        out = []
        ts = b.ts
        kinds = self.c.kinds
        streams = self.c.streams
        for e in self.edges.rows(b):
            dom = kinds[int(b.kind[e.row])].domain
            key = "%s/%s" % (dom, e.name)
            # functions and spans nest apart: a hostile stream of calls never returned
            # fills only the calls' stack, and a span's depth counts spans only
            where = (e.stream, e.task, e.call)
            sid = None
            if e.span is not None:
                sid = (dom, streams[e.stream].get("pid"), e.span)
                if e.ph == "E":
                    where = self.span_at.pop(sid, where)
            stack = self.stacks.setdefault(where, [])
            keys = self.open_keys.setdefault(where, {})
            t = int(ts[e.row])
            deep = self.deep.get(where)
            if e.ph == "B":
                if len(stack) >= MAX_OPEN:
                    if deep is None:
                        deep = self.deep[where] = []
                    if len(deep) < MAX_DEEP:
                        deep.append(key)
                    else:
                        self._miss(key, e.call)
                else:
                    n = keys.get(key, 0)
                    keys[key] = n + 1
                    stack.append([t, key, 0, len(stack), e.span, n == 0])
                    if sid is not None:
                        self.span_at[sid] = where
                continue
            if deep and deep[-1] == key:
                deep.pop()
                out.append(Slice(e.stream, key, t, t, MAX_OPEN + len(deep), 0, e.call, False))
                continue
            j = len(stack) - 1
            low = max(-1, j - SEARCH)
            while j > low and (stack[j][1] != key or stack[j][4] != e.span):
                j -= 1
            if j <= low:
                self._miss(key, e.call)
                continue
            if e.call:
                while len(stack) - 1 > j:       # calls whose returns were lost
                    x = stack.pop()
                    keys[x[1]] -= 1
                    self._cut(x[1], True)
            t0, _, child, depth, _, outer = stack.pop(j)
            keys[key] -= 1
            dur = t - t0
            if j > 0:
                stack[j - 1][2] += dur
            out.append(Slice(e.stream, key, t0, t, depth, dur - child, e.call, outer))
        return out
