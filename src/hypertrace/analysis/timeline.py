"""The numbers of the HTML timeline (`hypertrace view`): one pass over a session's
events gives each lane's event density, a sample of the events and spans, the
sync pairs and the loss marks; the stats tables come with them.
formats/html.py draws what this returns.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np

from ..read import jsonfields
from ..read.columns import Columns
from ..read.events import SYNC_GUEST, SYNC_HOST
from . import stats
from .spans import Pairer

MAX_EVENTS = 40_000
MAX_SPANS = 40_000
MAX_SYNCS = 10_000
BUCKETS = 1000


def collect(c: Columns, progress: Optional[Callable[[int], None]] = None) -> dict:
    """One pass over the events: density, a sample of events, spans, sync pairs, losses."""
    t0, t1 = stats.time_range(c.s)          # from the index, before reading the events
    t0 = t0 or 0
    t1 = max(t1 or 0, t0 + 1)
    total = sum(int(st.get("recorded") or 0) for st in c.streams)
    stride = max(1, math.ceil(total / MAX_EVENTS))
    nl = len(c.streams)
    density = np.zeros(nl * BUCKETS, dtype=np.int64)
    ev_t: List[int] = []
    ev_lane: List[int] = []
    ev_kind: List[int] = []
    ev_args: List[str] = []
    spans: List[list] = []
    totals = stats.SliceTotals()
    span_seen = 0
    sync_g: Dict[tuple, tuple] = {}
    sync_h: Dict[tuple, tuple] = {}
    pairer = Pairer(c)
    seen = 0
    for b in c.batches():
        n = len(b)
        bucket = np.clip((b.ts - t0) * BUCKETS // (t1 - t0 + 1), 0, BUCKETS - 1)
        density += np.bincount(b.stream.astype(np.int64) * BUCKETS + bucket,
                               minlength=nl * BUCKETS)
        keep = np.flatnonzero((np.arange(seen, seen + n) % stride) == 0)
        seen += n
        for k in np.unique(b.kind):
            k = int(k)
            kind = c.kinds[k]
            mine = np.flatnonzero(b.kind == k)
            if kind.name in (SYNC_GUEST, SYNC_HOST):
                rows = list(zip(*[col.to_pylist() for col in b.fields[k]]))
                for i in mine:
                    f = dict(zip(kind.codec.names, rows[b.pos[i]]))
                    if kind.name == SYNC_GUEST:
                        sync_g[(kind.domain, f.get("sync_id"))] = (int(b.stream[i]), int(b.ts[i]))
                    else:
                        sync_h[(f.get("domain"), f.get("sync_id"))] = (int(b.stream[i]),
                                                                       int(b.ts[i]))
            sel = np.intersect1d(mine, keep)
            if not len(sel):
                continue
            cols = [col.take(b.pos[sel]) for col in b.fields[k]]
            ev_args += jsonfields.objects(kind.codec.decl, cols, len(sel)).to_pylist()
            ev_t += (b.ts[sel] - t0).tolist()
            ev_lane += b.stream[sel].tolist()
            ev_kind += [k] * len(sel)
        for x in pairer.feed(b):
            totals.add(x)
            if span_seen % stride == 0:
                spans.append([x.stream, x.key, x.t0 - t0, x.t1 - t0, x.depth])
            span_seen += 1
        if progress is not None:
            progress(n)
    pairer.finish()
    syncs = [[g[0], g[1] - t0, h[0], h[1] - t0] for key, g in sync_g.items()
             for h in [sync_h.get(key)] if h is not None][:MAX_SYNCS]
    lost = []
    for si, marks in c.losses.items():
        dom = c.streams[si]["domain"]
        lost += [[si, c.s.to_host(dom, raw) - t0, cnt] for raw, cnt in marks]
    st = stats.compute(c.s, with_spans=False)
    t = st["totals"]
    summary = ("%d events in %.3f s, %d discarded, %d malformed, %d torn" % (
        t["recorded"], st["duration_s"], t["discarded"], t["malformed"], t["torn"]))
    return {"session": c.s.path, "stats": st, "summary": summary, "t0": t0,
            "span_ns": t1 - t0,
            "events": {"t": ev_t, "lane": ev_lane, "kind": ev_kind, "args": ev_args},
            "kinds": [[k.domain, k.name] for k in c.kinds], "spans": spans[:MAX_SPANS],
            "span_stats": totals.spans(pairer.unmatched, pairer.unfinished),
            "functions": totals.functions(pairer.unmatched_calls,
                                          unfinished=pairer.unfinished_calls),
            "unmatched": pairer.unmatched,
            "syncs": syncs,
            "lost": lost, "density": density.reshape(nl, BUCKETS).tolist(),
            "buckets": BUCKETS, "total": seen, "sampled_every": stride,
            "lanes": [{"domain": st["domain"], "label": "%s %s" % (
                st["file"], st.get("thread") or "pid %s tid %s" % (st.get("pid"), st.get("tid")))}
                for st in c.streams]}
