"""The numbers of the HTML timeline (`hypertrace view`): one pass over a session's
events gives each lane's event density, a sample of the events and spans, the
sync pairs and the loss marks; the stats tables come with them. Events of kinds
declared `counter` are not ticks but series (a time and value list per numeric
field, the counter track of the stream's process). `focus` is where the view
opens: the shortest stretch of the session holding most (FOCUS_SHARE) of the
events outside the host domain (the guests' activity, without a boot's or a
shutdown's stragglers), with a margin; the whole session when there are none.
formats/html.py draws what this returns.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa

from ..read import jsonfields
from ..read.columns import Columns
from ..read.events import SYNC_GUEST, SYNC_HOST
from . import stats
from .spans import Pairer

MAX_EVENTS = 40_000
MAX_SPANS = 40_000
MAX_SYNCS = 10_000
BUCKETS = 1000
MAX_COUNTER_POINTS = 20_000     # per series: more are thinned to every n-th
FOCUS_SHARE = 0.9               # of the non-host events, in the stretch the view opens on
FOCUS_MARGIN = 0.05             # of that stretch, on each side


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
    # counter series: (kind, field index) -> [stream, kind, field name, times, values]
    series: Dict[tuple, list] = {}
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
            if getattr(kind.codec.decl, "counter", False) and \
                    _counter(series, k, kind, b, mine, t0):
                continue            # drawn as its counter tracks, not as ticks
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
    guest = [i for i, x in enumerate(c.streams) if x.get("domain") != "host"]
    focus = _focus(density.reshape(nl, BUCKETS)[guest].sum(axis=0), t1 - t0)
    counters = []
    # by stream, then kind, then field: each thread's tracks together
    for (k, _f, _s), (si, name, ts, vs) in sorted(series.items(),
                                                  key=lambda x: (x[0][2], x[0][0], x[0][1])):
        step = max(1, math.ceil(len(ts) / MAX_COUNTER_POINTS))
        if not vs:
            continue
        counters.append({"lane": si, "kind": k, "field": name, "t": ts[::step],
                         "v": vs[::step], "min": min(vs), "max": max(vs)})
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
            "focus": focus, "counters": counters,
            "lanes": [{"domain": st["domain"], "pid": st.get("pid"), "tid": st.get("tid"),
                       "label": "%s (tid %s)" % (st.get("thread") or st["file"], st.get("tid"))}
                      for st in c.streams]}


def _focus(per_bucket: np.ndarray, span: int) -> List[int]:
    """[from, to] (ns since the start) of the fewest consecutive buckets holding
    FOCUS_SHARE of the events counted in `per_bucket`, widened by FOCUS_MARGIN."""
    total = int(per_bucket.sum())
    if total == 0:
        return [0, span]
    cum = np.concatenate([[0], np.cumsum(per_bucket)])
    need = math.ceil(total * FOCUS_SHARE)
    # for each first bucket a, the first end b with cum[b] - cum[a] >= need
    ends = np.searchsorted(cum, cum[:-1] + need, side="left")
    ok = np.flatnonzero(ends <= BUCKETS)
    a = int(ok[np.argmin(ends[ok] - ok)])
    b = int(ends[a])
    m = max(1, (b - a) * FOCUS_MARGIN)
    lo, hi = max(0.0, a - m), min(float(BUCKETS), b + m)
    return [int(lo * span / BUCKETS), int(math.ceil(hi * span / BUCKETS))]


def _counter(series: Dict[tuple, list], k: int, kind, b, mine, t0: int) -> bool:
    """Append a counter kind's rows of batch `b` to its series, one per numeric field
    and stream; False when it has no numeric field (its events stay ticks)."""
    numeric = False
    for f, col in enumerate(b.fields[k]):
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            continue
        numeric = True
        vals = col.take(pa.array(b.pos[mine])).to_pylist()
        for si in np.unique(b.stream[mine]).tolist():
            sel = b.stream[mine] == si
            key = (k, f, si)
            ent = series.get(key)
            if ent is None:
                ent = series[key] = [si, kind.codec.names[f], [], []]
            for t, v, ok in zip((b.ts[mine] - t0).tolist(), vals, sel.tolist()):
                # NaN and infinities have no place on a scale (nor in JSON)
                if ok and v is not None and math.isfinite(v) and \
                        len(ent[2]) < 64 * MAX_COUNTER_POINTS:
                    ent[2].append(t)
                    ent[3].append(v)
    return numeric
