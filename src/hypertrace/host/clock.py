"""Guest clock -> host clock: a piecewise linear fit with exact causality bounds.

Each exchange gives four timestamps: guest send t1, host receive t2, host send
t3, guest receive t4. Whatever the delays, the true mapping h(g) satisfies
h(t1) <= t2 and h(t4) >= t3. With h(g) = g + c + d (g - g0) (offset c, drift d)
every exchange is two half-planes in (c, d); their intersection is the set of
mappings consistent with causality, the convex-hull view of Trace Compass'
fully incremental synchronisation. We take the line deepest inside that set
(largest margin s to every constraint) and report as uncertainty the largest
distance, over the segment, from that line to any feasible line (at the
segment's ends: the distance is convex in g). Both are LPs in two variables,
solved as 1-D searches over the drift (_Bands). A clock step (a paused VM)
makes the set empty: the samples are split where consecutive exchanges cannot
both hold, then each run into its longest prefixes that one line fits, each
piece a segment of its own. Whatever a guest sends, the cost is bounded (fit()).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np

from ..read.clockmap import PPM, Segment
from .errors import describe


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
MAX_SAMPLES = 20_000           # fitted per domain, spread over the session
MAX_SEGMENTS = 64              # clock steps (VM pauses) one domain may have
SOLVE_BUDGET = 4096            # feasibility questions to find the segments of one domain
MAX_TS = 1 << 62               # abi.MAX_TS: a guest time beyond cannot be mapped
MARGIN_TOL = 1e-3              # ns: a margin this little below 0 is rounding
REFITS = 3                     # rounds adding the exchanges a decimated fit contradicts
SOLVES = 0                     # feasibility questions so far (a cost measure for tests)


@dataclass
class ClockFit:
    domain: str
    segments: List[Segment]
    samples: int
    causality_violations: int
    min_rtt_ns: Optional[int]
    reason: Optional[str] = None     # why there are no segments
    solves: int = 0                  # what the fit cost (questions asked)

    def summary(self) -> dict:
        """The index's clock summary: kind "estimated", or "unfitted" with the reason
        (then the domain's events keep their raw timestamps, without uncertainty)."""
        if not self.segments:
            return {"kind": "unfitted", "reason": self.reason or "no consistent segment",
                    "offset_ns": None, "drift_ppm": None, "uncertainty_ns": None,
                    "samples": self.samples, "causality_violations": 0,
                    "min_rtt_ns": self.min_rtt_ns, "segments": []}
        main = max(self.segments, key=lambda s: s.samples)
        mid = (main.g_start + main.g_end) // 2
        unc = max(s.uncertainty_ns for s in self.segments)
        return {
            "kind": "estimated",
            "offset_ns": int(round(main.map(mid) - mid)),     # host - guest, mid-session
            # how fast the guest clock runs relative to the host's (fast: positive)
            "drift_ppm": float(-main.drift_ppm),
            # no bound found: unbounded (JSON Infinity), never an exception
            "uncertainty_ns": int(np.ceil(unc)) if np.isfinite(unc) else float("inf"),
            "samples": self.samples,
            "causality_violations": self.causality_violations,
            "min_rtt_ns": self.min_rtt_ns,
            "segments": [asdict(s) for s in self.segments],
        }


GOLDEN = (5 ** 0.5 - 1) / 2
STEPS = 80        # golden-section steps: the 2 % drift range narrowed to ~1e-12 ppm


def _argmax(f, a: float, b: float, stop: Optional[float] = None) -> tuple:
    """(x, f(x)) maximising a concave f on [a, b] by golden-section search: a fixed number
    of evaluations whatever the data. With `stop`, returns as soon as f reaches it."""
    best = max(((a, f(a)), (b, f(b))), key=lambda t: t[1])
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(STEPS):
        if stop is not None and max(fc, fd, best[1]) >= stop:
            break
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + GOLDEN * (b - a)
            fd = f(d)
    return max((best, (c, fc), (d, fd)), key=lambda t: t[1])


def _edge(g, inside: float, outside: float) -> float:
    """The end of the interval where a concave g >= 0, between a point inside it and one
    outside (bisection, kept on the inside)."""
    for _ in range(STEPS):
        mid = (inside + outside) / 2
        if g(mid) >= 0:
            inside = mid
        else:
            outside = mid
    return inside


class _Bands:
    """The constraints of a run of exchanges for h(g) = g + c + d (g - g0), d in ppm:
    c + d x1 <= U and c + d x4 >= L. For a drift d the feasible offsets are
    [lo(d), hi(d)], lo convex and hi concave: each question about the feasible set (the
    LPs of this 2-variable problem) is a 1-D search over d, a fixed number of O(n) array
    passes whatever the data (a general LP solver's time depends on the data)."""

    def __init__(self, part: np.ndarray):
        global SOLVES
        SOLVES += 1
        t1, t2, t3, t4 = part.T
        self.g0 = int(t1[0])
        self.x1 = (t1 - self.g0).astype(np.float64) * PPM
        self.x4 = (t4 - self.g0).astype(np.float64) * PPM
        U_abs = t2 - t1                     # offset upper bounds (int64, exact)
        L_abs = t3 - t4                     # offset lower bounds
        self.ref = int(np.median((U_abs + L_abs) // 2))
        self.U = (U_abs - self.ref).astype(np.float64)
        self.L = (L_abs - self.ref).astype(np.float64)
        self.n = len(part)
        self.g_start, self.g_end = int(t1.min()), int(t4.max())

    def lo(self, d: float) -> float:
        return float(np.max(self.L - d * self.x4))

    def hi(self, d: float) -> float:
        return float(np.min(self.U - d * self.x1))

    def width(self, d: float) -> float:
        return self.hi(d) - self.lo(d)

    def margin(self, quick: bool = False):
        """(c, d, s): the line deepest inside the bands (largest margin s to every bound),
        or None when no line within MAX_DRIFT_PPM satisfies them all. `quick`: any line
        that satisfies them will do (a yes/no question)."""
        d, w = _argmax(self.width, -MAX_DRIFT_PPM, MAX_DRIFT_PPM,
                       stop=0.0 if quick else None)
        if w < -MARGIN_TOL:
            return None
        if not quick:
            # few exchanges, or close together, leave the drift loose: every drift of
            # a wide interval has (nearly) the deepest margin, and the search's pick is
            # arbitrary (one exchange: -1 %, 2 ms off 200 ms later). Of those, the one
            # nearest 0: clocks tick at the same rate until the exchanges say otherwise
            target = w - (1.0 + 0.02 * abs(w))   # 2 % of the margin: a bias far inside it
            if self.width(0.0) >= target:
                d = 0.0
            else:
                d = _edge(lambda e: self.width(e) - target, d, 0.0)
            w = self.width(d)
        return (self.hi(d) + self.lo(d)) / 2, d, w / 2


def _fits(part: np.ndarray) -> bool:
    """Whether one line within the drift limit satisfies every exchange of `part`."""
    return _Bands(part).margin(quick=True) is not None


def _segment(part: np.ndarray) -> Optional[Segment]:
    """The segment of a run (None if no line fits it), with its uncertainty: the farthest
    feasible line from ours at both ends of the segment (the distance is convex in g)."""
    global SOLVES
    b = _Bands(part)
    m = b.margin()
    if m is None:
        return None
    c, d, s = m
    D = MAX_DRIFT_PPM
    # the drifts with a feasible offset: an interval around d (width is concave)
    dl = -D if b.width(-D) >= -MARGIN_TOL else _edge(b.width, d, -D)
    dr = D if b.width(D) >= -MARGIN_TOL else _edge(b.width, d, D)
    worst = 0.0
    for x in (float(np.min(b.x1)), float(np.max(b.x4))):
        SOLVES += 2
        ours = c + d * x
        top = _argmax(lambda e, x=x: b.hi(e) + e * x, dl, dr)[1]
        bottom = -_argmax(lambda e, x=x: -(b.lo(e) + e * x), dl, dr)[1]
        worst = max(worst, top - ours, ours - bottom)
    return Segment(b.g_start, b.g_end, b.g0, b.ref + c, d, worst, b.n, s)


def _fit(t1, t2, t3, t4) -> Optional[Segment]:
    """Fit one segment; None when no line satisfies every exchange."""
    return _segment(np.stack([t1, t2, t3, t4], axis=1))


def _slack(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # how far the offset may move between guest times a and b at the largest drift
    return MAX_DRIFT_PPM * PPM * np.abs(a - b).astype(np.float64) + 1.0


def _runs(arr: np.ndarray) -> List[np.ndarray]:
    """Split (in one linear pass) between consecutive exchanges that no line within
    MAX_DRIFT_PPM can satisfy together: the lower bound of one is above the other's upper
    bound by more than the drift allows over the time between them. A necessary
    condition only: a run may still need splitting (_longest_prefix)."""
    U = arr[:, 1] - arr[:, 0]
    L = arr[:, 2] - arr[:, 3]
    t1, t4 = arr[:, 0], arr[:, 3]
    bad = ((L[:-1] - U[1:]) > _slack(t4[:-1], t1[1:])) | \
          ((L[1:] - U[:-1]) > _slack(t4[1:], t1[:-1]))
    cuts = np.flatnonzero(bad) + 1
    return np.split(arr, cuts)


def _longest_prefix(run: np.ndarray, budget: List[int]) -> int:
    """The length of the longest prefix of `run` that one line fits, by galloping then
    bisection: O(log n) questions on at most twice the prefix. Every exchange fits alone
    (checked before), so the answer is at least 1."""
    n = len(run)
    budget[0] -= 1
    if _fits(run):                      # the usual case: the whole run is one line
        return n
    good, bad, k = 1, n, 2              # prefix lengths known to fit / not to fit
    while k < bad and budget[0] > 0:
        budget[0] -= 1
        if not _fits(run[:k]):
            bad = k
            break
        good, k = k, 2 * k
    while bad - good > 1 and budget[0] > 0:
        k = (good + bad) // 2
        budget[0] -= 1
        if _fits(run[:k]):
            good = k
        else:
            bad = k
    return good


def _decimate(arr: np.ndarray, most: int) -> np.ndarray:
    """At most `most` exchanges spread over the whole session: of each run of consecutive
    ones, the tightest (narrowest offset band). Every one kept is a real exchange, so
    the causality bounds stay exact; only some tightness is given up."""
    n = len(arr)
    if n <= most:
        return arr
    bucket = (np.arange(n) * most) // n
    width = (arr[:, 1] - arr[:, 0]) - (arr[:, 2] - arr[:, 3])
    order = np.lexsort((width, bucket))
    first = np.flatnonzero(np.diff(bucket[order], prepend=-1) != 0)
    return arr[np.sort(order[first])]


def fit(domain: str, samples) -> ClockFit:
    """samples: iterable of (t1, t2, t3, t4) in ns; returns the piecewise mapping.

    The cost is bounded whatever the samples: at most MAX_SAMPLES are fitted (spread over
    the session), the runs are found by one linear scan, each segment takes O(log n)
    questions of a fixed cost per exchange (at most SOLVE_BUDGET in all), and a clock
    that needs more than MAX_SEGMENTS segments is not fitted at all (a real clock steps
    a few times: when its VM was paused). Exchanges the decimation left out and the fit
    contradicts are added for another round (REFITS at most)."""
    t0 = SOLVES
    # timestamps beyond abi.MAX_TS cannot be mapped (a reader refuses larger offsets)
    rows = [tuple(x) for x in samples]
    rows = [x for x in rows if len(x) == 4 and all(0 <= v <= MAX_TS for v in x)]
    arr = np.array(sorted(rows), dtype=np.int64).reshape(-1, 4)
    ok = (arr[:, 0] <= arr[:, 3]) & (arr[:, 1] <= arr[:, 2])
    arr = arr[ok]
    if len(arr) == 0:
        return ClockFit(domain, [], 0, 0, None, "no valid exchange")
    rtt = (arr[:, 3] - arr[:, 0]) - (arr[:, 2] - arr[:, 1])
    # an exchange that no line within the drift limit satisfies even alone (its guest
    # round trip is shorter than the host's answer took) fits no segment: a violation
    alone = (arr[:, 2] - arr[:, 3]) - (arr[:, 1] - arr[:, 0]) <= _slack(arr[:, 3], arr[:, 0])
    fitted = arr[alone]
    usable = _decimate(fitted, MAX_SAMPLES)
    if len(usable) == 0:
        reason = ("no line within the %g %% drift limit satisfies any of the %d exchanges"
                  % (MAX_DRIFT_PPM / 1e4, len(arr)))
        return ClockFit(domain, [], len(arr), 0, int(rtt.min()), reason, SOLVES - t0)
    budget = [SOLVE_BUDGET]
    for _ in range(REFITS):
        segments, reason = _segments(usable, budget)
        if reason is not None or len(usable) == len(fitted):
            break
        # exchanges left out by the decimation that the fit contradicts: fitted too
        # (a cutting-plane round; few, and bounded)
        bad = fitted[_violations(segments, fitted)][:MAX_SAMPLES // 4]
        if not len(bad):
            break
        usable = np.unique(np.concatenate([usable, bad]), axis=0)   # sorted by t1
    if reason is not None:
        segments = []
    viol = int(np.count_nonzero(_violations(segments, arr))) if segments else 0
    return ClockFit(domain, segments, len(arr), viol, int(rtt.min()), reason,
                    SOLVES - t0)


def _segments(usable: np.ndarray, budget: List[int]) -> tuple:
    """(segments in time order, None) or ([], the reason there are none)."""
    runs = _runs(usable)
    if len(runs) > MAX_SEGMENTS:
        return [], ("the exchanges need more than %d segments (%d clock steps): no clock "
                    "steps that often" % (MAX_SEGMENTS, len(runs) - 1))
    segments: List[Segment] = []
    for run in runs:
        while len(run):
            if len(segments) >= MAX_SEGMENTS:
                return [], ("the exchanges need more than %d segments: no clock steps "
                            "that often" % MAX_SEGMENTS)
            if budget[0] <= 0:
                return [], "no consistent segments found within %d questions" % SOLVE_BUDGET
            k = _longest_prefix(run, budget)
            seg = _segment(run[:k])
            if seg is not None:         # None: numerically borderline, left unfitted
                segments.append(seg)
            run = run[k:]
    segments.sort(key=lambda s: s.g_start)
    return segments, None


def fit_summary(domain: str, samples) -> dict:
    """fit(...).summary(), guarded: whatever the samples, a summary (kind "unfitted" with
    the reason when the fit failed), never an exception."""
    try:
        return fit(domain, samples).summary()
    except Exception as e:      # the fit of one domain never breaks another's, or the stop
        return ClockFit(domain, [], len(samples), 0, None,
                        "the fit failed: %s" % describe(e)).summary()


def _violations(segments: List[Segment], arr: np.ndarray) -> np.ndarray:
    """Which exchanges their segment (pick()'s choice) does not satisfy, in one
    vectorised pass."""
    starts = np.array([s.g_start for s in segments], dtype=np.int64)
    ends = np.array([s.g_end for s in segments], dtype=np.int64)
    t1 = arr[:, 0]
    i = np.searchsorted(starts, t1, side="right") - 1        # last segment starting <= g
    nxt = np.minimum(i + 1, len(segments) - 1)
    i0 = np.maximum(i, 0)
    inside = (i >= 0) & (t1 <= ends[i0])
    # between segments (or past one): the nearer, the earlier one on a tie; before all: the first
    to_next = np.where(i + 1 < len(segments), starts[nxt] - t1, np.iinfo(np.int64).max)
    choose = np.where(i < 0, 0, np.where(inside | (t1 - ends[i0] <= to_next), i0, nxt))
    bad = np.zeros(len(arr), dtype=bool)
    for k, s in enumerate(segments):
        sel = choose == k
        part = arr[sel]
        hi = s.map(part[:, 0].astype(np.float64)) > part[:, 1] + 0.5
        lo = s.map(part[:, 3].astype(np.float64)) < part[:, 2] - 0.5
        bad[sel] = hi | lo
    return bad


