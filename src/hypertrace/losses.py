"""Why events were lost, and what setting would have avoided it.

One explanation, from the session index alone (a domain's settings and counts, its
streams' counts, the recorder's write error), used by the recorder's summary and by
`stats` (text and --json), so that a user who lost events reads the cause and the
option to change, not just a number.
"""

from __future__ import annotations

from typing import List, Optional

MAX_RING = 1 << 30        # the largest ring the layout allows (abi.make_layout)
MAX_RINGS = 4096          # the most rings `record` accepts
# more than any producer emits (a C producer's busy loop: ~50 M events/s per thread):
# a count above this rate over the whole recording was written by a hostile or broken
# producer (the counts live in memory every co-producer of the domain can write)
MAX_RATE = 200_000_000


def _size(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d%s" % (n >> shift, unit)
    return str(n)


def _int(d: dict, k: str) -> int:
    v = d.get(k)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else 0


def explain(domain: dict, streams: List[dict], write_error: Optional[str] = None,
            duration_s: float = 0.0) -> List[dict]:
    """The losses of one domain, each {"kind", "count", "why", "avoid"}, largest first.
    `domain` is the index's entry (mode, rings, ring_size, max-event and loss counts);
    `streams` are that domain's streams (discarded, malformed, unwritten, recorded);
    `duration_s` the recording's: counts no producer could reach in it are reported as
    implausible, with no setting to change."""
    out = []
    cap = MAX_RATE * max(1.0, duration_s)
    forged = sum(_int(s, "discarded") for s in streams if _int(s, "discarded") > cap)
    streams = [s for s in streams if _int(s, "discarded") <= cap]
    if _int(domain, "lost_without_ring") > cap:
        forged += _int(domain, "lost_without_ring")
        domain = dict(domain, lost_without_ring=0)
    if forged:
        out.append(("implausible", forged,
                    "counts of lost events that no producer could reach in %.1f s (over %d M "
                    "events/s): a hostile or broken producer of the domain wrote them"
                    % (max(1.0, duration_s), MAX_RATE // 1_000_000),
                    "nothing to set: the domain's producers are not to be trusted"))
    # the kernel's streams (host/kernel.py): their losses are ftrace's own counts
    kern = [s for s in streams if str(s.get("thread", "")).startswith("kernel-cpu")]
    every = streams
    streams = [s for s in streams if s not in kern]
    lost_k = sum(_int(s, "discarded") for s in kern)
    if lost_k:
        out.append(("ftrace", lost_k,
                    "kernel events ftrace dropped: its ring per CPU filled before the kernel "
                    "agent read it (the agent waits while the channel has no room)",
                    "--kernel-buffer 8M or more (in a guest: the agent's --buffer-kb), or "
                    "fewer kernel events"))
    mode = domain.get("mode") if isinstance(domain.get("mode"), str) else "discard"
    ring = _int(domain, "ring_size")
    rings = _int(domain, "rings")
    if ring and ring < MAX_RING:
        bigger = "--buffer-size %s or more" % _size(
            min(MAX_RING, 1 << (ring * 4 - 1).bit_length()))
    else:
        bigger = "" if ring else "a larger --buffer-size"
    recorded = sum(_int(s, "recorded") for s in streams)
    malformed = sum(_int(s, "malformed") for s in streams)
    # a record rejected as malformed leaves a seq gap: it is in `discarded` too
    discarded = max(0, sum(_int(s, "discarded") for s in streams) - malformed)
    if malformed:
        out.append(("malformed", malformed,
                    "records rejected as malformed (a broken or hostile producer wrote them)",
                    "nothing to set: fix the producer"))
    if discarded and write_error:
        out.append(("disk", discarded,
                    "rings full while the disk was full (%s): counting records that "
                    "are not written drains more slowly" % write_error,
                    "free space on the session's file system, or -o on another one"))
    elif discarded:
        per = " of %s per thread" % _size(ring) if ring else ""
        block = "--mode block (producers wait for room instead)"
        # more lost than one ring holds: a bigger ring only delays it, waiting avoids it
        sustained = discarded > recorded
        if mode == "block":
            out.append(("ring_full", discarded,
                        "rings full%s: the collector freed no room within --block-timeout, "
                        "or was not running" % per,
                        " or ".join(x for x in (bigger, "a longer --block-timeout") if x)))
        elif mode == "overwrite":
            out.append(("overwritten", discarded,
                        "overwrite mode keeps each ring's newest records%s; older ones were "
                        "replaced" % per, (bigger or "a larger ring") + " keeps more of them"))
        else:
            out.append(("ring_full", discarded,
                        "rings full%s: producers emitted faster than the collector drained "
                        "them for longer than a ring holds" % per,
                        ", or ".join(x for x in ((block, bigger) if sustained or not bigger
                                                 else (bigger, block)) if x)))
    unwritten = sum(_int(s, "unwritten") for s in every)
    if unwritten:
        out.append(("disk", unwritten,
                    "validated but never written: %s" % (write_error or "a stream file "
                                                         "could not be written"),
                    "free space on the session's file system, or -o on another one"))
    n = _int(domain, "lost_without_ring")
    if n:
        more = ("--rings %d or more" % min(MAX_RINGS, rings * 2)
                if rings and rings < MAX_RINGS else "")
        out.append(("no_ring", n,
                    "emitted while the thread had no ring: every one of the %s rings was "
                    "held, or handed back by an exited thread and not yet freed by the "
                    "collector (many short-lived threads or processes), or the event's "
                    "declaration was still waiting for a slot" % (rings or "domain's"),
                    ", or ".join(x for x in (more, "fewer, longer-lived threads (a thread "
                                                   "pool)") if x)))
    n = _int(domain, "qemu_log_lines_lost")
    if n:
        out.append(("qemu_log", n,
                    "QEMU user-mode log lines read and thrown away by the recorder: the "
                    "reader process that records them had ended (the index's "
                    "qemu_clock.reader_error says how)",
                    "nothing to set: a reader killed from outside; report it if it died"))
    n = _int(domain, "lost_in_refused_claims")
    if n:
        out.append(("claims_refused", n,
                    "recorded by threads whose ring claim was past the session's stream "
                    "budget (many short-lived threads or processes)",
                    "fewer, longer-lived threads (a thread pool): the budget is per session"))
    n = _int(domain, "declarations_refused")
    if n:
        out.append(("declarations_refused", n,
                    "tracepoints (not events) whose declaration was refused: the declaration "
                    "table was full, or the name was declared with another signature; their "
                    "events are not recorded and not counted",
                    "a larger --max-events, or one signature per event name"))
    out.sort(key=lambda x: -x[1])
    return [{"kind": k, "count": c, "why": w, "avoid": a} for k, c, w, a in out]


def lines(domain_name: str, losses: List[dict]) -> List[str]:
    """Text lines for a terminal, one per cause."""
    return ["%s: %d %s: %s; to avoid: %s" % (
        domain_name, x["count"], "refused" if x["kind"] == "declarations_refused" else "lost",
        x["why"], x["avoid"]) for x in losses]
