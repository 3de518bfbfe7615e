"""Mapping a guest clock onto the host's: the segments a clock fit found
(host/clock.py fits them while recording; the session index keeps them) and
the host time, with its uncertainty, of a guest timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

PPM = 1e-6


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
