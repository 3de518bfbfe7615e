"""Spans: `X_begin`/`X_end` events paired per stream (nesting allowed), from column batches."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from ..columns import Batch, Columns


def edge(name: str) -> Optional[Tuple[str, str]]:
    """('X', 'B') for X_begin, ('X', 'E') for X_end, else None."""
    for suffix, ph in (("_begin", "B"), ("_end", "E")):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)], ph
    return None


class Pairer:
    """Feed batches in time order; each feed returns the spans it closed as
    (stream index, "domain/X", begin ns, end ns, depth): depth counts the spans of
    any name still open in the stream when it began."""

    def __init__(self, c: Columns):
        self.c = c
        self.open: Dict[tuple, list] = {}
        self.depth: Dict[int, int] = {}
        self.unmatched: Dict[str, int] = {}
        self._edges: List[Optional[Tuple[str, str]]] = []

    def _edge_of(self, k: int):
        while len(self._edges) <= k:
            kind = self.c.kinds[len(self._edges)]
            e = edge(kind.name)
            self._edges.append(None if e is None else ("%s/%s" % (kind.domain, e[0]), e[1]))
        return self._edges[k]

    def feed(self, b: Batch) -> List[tuple]:
        ks = np.unique(b.kind)
        want = [int(k) for k in ks if self._edge_of(int(k)) is not None]
        if not want:
            return []
        out = []
        rows = np.flatnonzero(np.isin(b.kind, want))
        for k, st, ts in zip(b.kind[rows].tolist(), b.stream[rows].tolist(),
                             b.ts[rows].tolist()):
            key, ph = self._edges[k]
            stack = self.open.setdefault((st, key), [])
            if ph == "B":
                d = self.depth.get(st, 0)
                stack.append((ts, d))
                self.depth[st] = d + 1
            elif stack:
                t0, d = stack.pop()
                self.depth[st] -= 1
                out.append((st, key, t0, ts, d))
            else:
                self.unmatched[key] = self.unmatched.get(key, 0) + 1
        return out
