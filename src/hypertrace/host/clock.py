"""Guest clock -> host clock: a piecewise linear fit with exact causality bounds.

Each exchange gives four timestamps: guest send t1, host receive t2, host send
t3, guest receive t4. Whatever the delays, the true mapping h(g) satisfies
h(t1) <= t2 and h(t4) >= t3. With h(g) = g + c + d (g - g0) (offset c, drift d)
every exchange is two half-planes in (c, d); their intersection is the set of
mappings consistent with causality, the convex-hull view of Trace Compass'
fully incremental synchronisation. We take the line deepest inside that set
(largest margin s to every constraint, one LP) and report as uncertainty the
largest distance, over the segment, from that line to any feasible line (LPs
at the segment's ends: the distance is convex in g). A clock step (a paused
VM) makes the set empty: the samples are then split where consecutive
exchanges cannot both hold, and each piece gets its own segment.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np

PPM = 1e-6


def realtime_offset(samples: int = 9) -> tuple:
    """(CLOCK_REALTIME - CLOCK_MONOTONIC in ns, half-width of the tightest bracket), from
    the tightest of `samples` readings of the real time between two monotonic ones."""
    best = None
    for _ in range(samples):
        a = time.monotonic_ns()
        r = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, r - (a + b) // 2)
    return best[1], (best[0] + 1) // 2
MAX_DRIFT_PPM = 10_000.0       # 1 %: far beyond any real clock
MAX_SAMPLES = 20_000


@dataclass
class Segment:
    g_start: int          # guest time range covered by this segment's exchanges
    g_end: int
    g0: int               # reference guest time
    offset_ns: float      # host - guest at g0
    drift_ppm: float
    uncertainty_ns: float
    samples: int
    margin_ns: float      # half-width of the tightest band: >= 0 when causality holds

    def map(self, g):
        return g + self.offset_ns + self.drift_ppm * PPM * (g - self.g0)


@dataclass
class ClockFit:
    domain: str
    segments: List[Segment]
    samples: int
    causality_violations: int
    min_rtt_ns: Optional[int]

    def summary(self) -> dict:
        if not self.segments:
            return {"offset_ns": None, "drift_ppm": None, "uncertainty_ns": None,
                    "samples": self.samples, "causality_violations": 0, "segments": []}
        main = max(self.segments, key=lambda s: s.samples)
        mid = (main.g_start + main.g_end) // 2
        return {
            "offset_ns": int(round(main.map(mid) - mid)),     # host - guest, mid-session
            # how fast the guest clock runs relative to the host's (fast: positive)
            "drift_ppm": float(-main.drift_ppm),
            "uncertainty_ns": int(np.ceil(max(s.uncertainty_ns for s in self.segments))),
            "samples": self.samples,
            "causality_violations": self.causality_violations,
            "min_rtt_ns": self.min_rtt_ns,
            "segments": [asdict(s) for s in self.segments],
        }


def _bounds(x1, x4, U, L):
    # rows: c + d*x1 + s <= U ;  -c - d*x4 + s <= -L   (d in ppm)
    n = len(x1)
    A = np.zeros((2 * n, 3))
    A[:n, 0], A[:n, 1], A[:n, 2] = 1.0, x1 * PPM, 1.0
    A[n:, 0], A[n:, 1], A[n:, 2] = -1.0, -x4 * PPM, 1.0
    b = np.concatenate([U, -L])
    return A, b


def _fit(t1, t2, t3, t4) -> Optional[Segment]:
    """Fit one segment; None when no line satisfies every exchange."""
    from scipy.optimize import linprog  # only the collector needs it, not readers
    g0 = int(t1[0])
    x1 = (t1 - g0).astype(np.float64)
    x4 = (t4 - g0).astype(np.float64)
    U_abs = t2 - t1                     # offset upper bounds (int64, exact)
    L_abs = t3 - t4                     # offset lower bounds
    ref = int(np.median((U_abs + L_abs) // 2))
    U = (U_abs - ref).astype(np.float64)
    L = (L_abs - ref).astype(np.float64)
    A, b = _bounds(x1, x4, U, L)
    span = float(np.max(U) - np.min(L)) + 1.0
    bnds = [(None, None), (-MAX_DRIFT_PPM, MAX_DRIFT_PPM), (None, span)]
    res = linprog(c=[0, 0, -1], A_ub=A, b_ub=b, bounds=bnds, method="highs")
    if res.status != 0 or res.x[2] < 0:
        return None
    c, d, s = res.x
    # uncertainty: farthest feasible line from ours, at both ends of the segment
    A0, b0 = A[:, :2], b
    worst = 0.0
    for x in (float(np.min(x1)), float(np.max(x4))):
        ours = c + d * PPM * x
        for sign in (1.0, -1.0):
            r = linprog(c=[-sign, -sign * x * PPM], A_ub=A0, b_ub=b0, bounds=bnds[:2],
                        method="highs")
            if r.status == 0:
                worst = max(worst, abs(r.x[0] + r.x[1] * PPM * x - ours))
            else:
                worst = float("inf")
    return Segment(int(min(t1)), int(max(t4)), g0, ref + c, d, worst, len(t1), s)


def _split_point(t1, t2, t3, t4) -> int:
    """Index where consecutive exchanges are least compatible (a clock step)."""
    U = t2 - t1
    L = t3 - t4
    gap = np.maximum(L[:-1] - U[1:], L[1:] - U[:-1])  # > 0: the two bands do not overlap
    k = int(np.argmax(gap))
    return k + 1 if gap[k] > 0 else len(t1) // 2


def fit(domain: str, samples) -> ClockFit:
    """samples: iterable of (t1, t2, t3, t4) in ns; returns the piecewise mapping."""
    arr = np.array(sorted(samples), dtype=np.int64).reshape(-1, 4)
    arr = arr[:MAX_SAMPLES]
    ok = (arr[:, 0] <= arr[:, 3]) & (arr[:, 1] <= arr[:, 2])
    arr = arr[ok]
    if len(arr) == 0:
        return ClockFit(domain, [], 0, 0, None)
    rtt = (arr[:, 3] - arr[:, 0]) - (arr[:, 2] - arr[:, 1])
    segments: List[Segment] = []
    stack = [arr]
    while stack:
        part = stack.pop()
        seg = _fit(*part.T)
        if seg is not None or len(part) < 2:
            if seg is not None:
                segments.append(seg)
            continue
        k = _split_point(*part.T)
        stack += [part[k:], part[:k]]
    segments.sort(key=lambda s: s.g_start)
    viol = 0
    for t1, t2, t3, t4 in arr:
        seg = pick(segments, int(t1))
        if seg is None or seg.map(t1) > t2 + 0.5 or seg.map(t4) < t3 - 0.5:
            viol += 1
    return ClockFit(domain, segments, len(arr), viol, int(rtt.min()))


def pick(segments: List[Segment], g: int) -> Optional[Segment]:
    """The segment that maps guest time g (nearest one between segments)."""
    if not segments:
        return None
    for i, s in enumerate(segments):
        if g < s.g_start:
            if i == 0:
                return s
            prev = segments[i - 1]
            return prev if g - prev.g_end <= s.g_start - g else s
        if g <= s.g_end:
            return s
    return segments[-1]


def segments_from(summary: dict) -> List[Segment]:
    """Segments back from a session index's clock summary."""
    return [Segment(**s) for s in summary.get("segments", [])]


def map_time(segments: List[Segment], g: int) -> tuple:
    """(host time, uncertainty) of guest time g. Between two segments the clock
    stepped at an unknown moment: the answer is the middle of both mappings, and
    the uncertainty covers either."""
    if not segments:
        return g, None
    for i, s in enumerate(segments):
        if g <= s.g_end:
            if g >= s.g_start or i == 0:
                return s.map(g), s.uncertainty_ns
            prev = segments[i - 1]
            a, b = prev.map(g), s.map(g)
            return (a + b) / 2, abs(a - b) / 2 + max(prev.uncertainty_ns, s.uncertainty_ns)
    return segments[-1].map(g), segments[-1].uncertainty_ns
