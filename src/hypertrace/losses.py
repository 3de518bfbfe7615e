"""Why events were lost, and what setting would have avoided it.

One explanation, from the session index alone (a domain's settings and counts, its
streams' counts, the recorder's write error), used by the recorder's summary and by
`stats` (text and --json), so that a user who lost events reads the cause and the
option to change, not just a number.
"""

from __future__ import annotations

from typing import List, Optional

MAX_RING = 1 << 30        # the largest ring the layout allows (abi.make_layout)


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d%s" % (n >> shift, unit)
    return str(n)


def _int(d: dict, k: str) -> int:
    v = d.get(k)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def explain(domain: dict, streams: List[dict], write_error: Optional[str] = None) -> List[dict]:
    """The losses of one domain, each {"kind", "count", "why", "avoid"}, largest first.
    `domain` is the index's entry (mode, rings, ring_size, max-event and loss counts);
    `streams` are that domain's streams (discarded, unwritten)."""
    out = []
    mode = domain.get("mode") if isinstance(domain.get("mode"), str) else "discard"
    ring = _int(domain, "ring_size")
    rings = _int(domain, "rings")
    bigger = ("--buffer-size %s" % _size(min(MAX_RING, ring * 4)) if ring
              else "a larger --buffer-size")
    discarded = sum(_int(s, "discarded") for s in streams)
    if discarded:
        per = " of %s per thread" % _size(ring) if ring else ""
        if mode == "block":
            out.append(("ring_full", discarded,
                        "rings full%s: the collector freed no room within --block-timeout, "
                        "or was not running" % per,
                        "%s, or a longer --block-timeout" % bigger))
        elif mode == "overwrite":
            out.append(("overwritten", discarded,
                        "overwrite mode keeps each ring's newest records%s; older ones were "
                        "replaced" % per, bigger + " keeps more of them"))
        else:
            out.append(("ring_full", discarded,
                        "rings full%s: producers emitted faster than the collector drained "
                        "them for longer than a ring holds" % per,
                        "%s, or --mode block (producers wait for room instead)" % bigger))
    unwritten = sum(_int(s, "unwritten") for s in streams)
    if unwritten:
        out.append(("disk", unwritten,
                    "validated but never written: %s" % (write_error or "a stream file "
                                                         "could not be written"),
                    "free space on the session's file system, or -o on another one"))
    n = _int(domain, "lost_without_ring")
    if n:
        out.append(("no_ring", n,
                    "emitted while the thread had no ring: all %s rings were held by other "
                    "threads or processes" % (rings or "the"),
                    "--rings %d" % (rings * 2) if rings else "more --rings"))
    n = _int(domain, "lost_in_refused_claims")
    if n:
        out.append(("claims_refused", n,
                    "recorded by threads whose ring claim was past the session's stream "
                    "budget (many short-lived threads or processes)",
                    "fewer, longer-lived threads (a thread pool); --rings spreads the budget "
                    "over more rings"))
    n = _int(domain, "declarations_refused")
    if n:
        out.append(("declarations_refused", n,
                    "tracepoints whose declaration was refused (the declaration table was "
                    "full, or the name was declared with another signature)",
                    "a larger --max-events, or one signature per event name"))
    out.sort(key=lambda x: -x[1])
    return [{"kind": k, "count": c, "why": w, "avoid": a} for k, c, w, a in out]


def lines(domain_name: str, losses: List[dict]) -> List[str]:
    """Text lines for a terminal, one per cause."""
    return ["%s: %d lost: %s; to avoid: %s" % (domain_name, x["count"], x["why"], x["avoid"])
            for x in losses]
