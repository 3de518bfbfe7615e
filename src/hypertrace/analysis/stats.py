"""Per-event counts and rates, and per-stream losses, from a session's index."""

from __future__ import annotations

from typing import Dict, List, Optional

from .. import losses as why
from ..read.session import Session
from .text import printable

LOSSES = ("lost_without_ring", "lost_in_refused_claims", "declarations_refused")
TOP_FUNCTIONS = 20


def time_range(s: Session) -> tuple:
    """(first, last) event time on the host timeline, from the index; (None, None) if
    nothing was recorded."""
    t0 = t1 = None
    for st in s.streams:
        if st.get("first_ts") is not None:
            a = s.to_host(st["domain"], st["first_ts"])
            b = s.to_host(st["domain"], st["last_ts"])
            t0 = a if t0 is None else min(t0, a)
            t1 = b if t1 is None else max(t1, b)
    return t0, t1


def compute(s: Session, with_spans: bool = True, top: Optional[int] = TOP_FUNCTIONS) -> dict:
    """Counts, rates, losses, clocks and sync latency from the index; spans and traced
    functions (a pass over the events; `top`: as slices() takes it) unless with_spans
    is False."""
    events: Dict[str, int] = {}
    streams: List[dict] = []
    t0, t1 = time_range(s)
    sl = slices(s, top) if with_spans else ({}, [])
    for st in s.streams:
        for name, n in st.get("per_event", {}).items():
            if n:            # an event whose every record went unwritten (a full disk)
                events[name] = events.get(name, 0) + n
        streams.append({k: st.get(k) for k in (
            "file", "domain", "ring", "pid", "tid", "thread", "recorded", "discarded",
            "malformed", "torn", "clamped", "emitted", "unwritten", "per_event")})
    dur = (t1 - t0) / 1e9 if t0 is not None and t1 > t0 else 0.0
    total = sum(events.values())
    # losses no stream holds (ABI 1.4 counters): emitted = recorded + discarded + these
    losses = {d["name"]: {k: int(d.get(k) or 0) for k in LOSSES}
              for d in s.index.get("domains", []) if isinstance(d, dict) and "name" in d}
    # why each loss happened, and the setting that would have avoided it
    werr = s.index.get("write_error")
    t_start, t_stop = s.index.get("started_ns"), s.index.get("stopped_ns")
    wall = (t_stop - t_start) / 1e9 if isinstance(t_start, int) and isinstance(
        t_stop, int) and t_stop > t_start else 0.0
    causes = {d["name"]: why.explain(d, [x for x in streams if x["domain"] == d["name"]],
                                     werr if isinstance(werr, str) else None,
                                     max(dur, wall))
              for d in s.index.get("domains", []) if isinstance(d, dict) and "name" in d}
    return {
        "session": s.path,
        "duration_s": dur,
        "events": {k: {"count": v, "rate_per_s": (v / dur if dur else None)}
                   for k, v in sorted(events.items())},
        "streams": streams,
        "domains": losses,
        "losses": {k: v for k, v in causes.items() if v},
        "clocks": {k: {x: v.get(x) for x in (
            "kind", "offset_ns", "drift_ppm", "uncertainty_ns", "samples",
            "causality_violations", "min_rtt_ns", "segments")} for k, v in s.clocks.items()},
        "sync_points": _sync_latency(s),
        "spans": sl[0],
        "functions": sl[1],
        "triggers": triggers(s),
        "totals": {
            "recorded": total,
            "discarded": sum(x["discarded"] or 0 for x in streams),
            "malformed": sum(x["malformed"] or 0 for x in streams),
            "torn": sum(x["torn"] or 0 for x in streams),
            # validated but never written (a full disk, no descriptor): not in the files
            "unwritten": sum(x["unwritten"] or 0 for x in streams),
            **{k: sum(d[k] for d in losses.values()) for k in LOSSES},
            "rate_per_s": total / dur if dur else None,
        },
    }


def format_text(st: dict) -> str:
    # text from the session directory is escaped (text.py); names were validated
    lines = ["session %s: %d events in %.3f s" % (printable(st["session"]),
                                                  st["totals"]["recorded"], st["duration_s"])]
    lines.append("")
    lines.append("%-32s %12s %14s" % ("event", "count", "rate/s"))
    for name, e in st["events"].items():
        rate = "%.0f" % e["rate_per_s"] if e["rate_per_s"] else "-"
        lines.append("%-32s %12d %14s" % (name, e["count"], rate))
    lines.append("")
    lines.append("%-18s %-8s %8s %8s %-16s %10s %10s %9s %5s" % (
        "stream", "domain", "pid", "tid", "thread", "recorded", "discarded", "malformed", "torn"))
    for x in st["streams"]:
        lines.append("%-18s %-8s %8s %8s %-16s %10d %10d %9d %5d" % (
            x["file"] or "(none)", x["domain"], x["pid"], x["tid"],
            printable(x["thread"] or "")[:16],
            x["recorded"], x["discarded"], x["malformed"], x["torn"]))
    if st.get("spans"):
        lines.append("")
        lines.append("%-32s %8s %12s %12s %12s %12s %10s %10s" % (
            "span", "count", "min ns", "p50 ns", "p99 ns", "max ns", "unmatched",
            "unfinished"))
        for k, v in st["spans"].items():
            lines.append("%-32s %8d %12s %12s %12s %12s %10d %10d" % (
                printable(k)[:32], v["count"], _n(v["min"]), _n(v["p50"]), _n(v["p99"]),
                _n(v["max"]), v["unmatched"], v.get("unfinished", 0)))
    if st.get("functions"):
        lines.append("")
        lines.append("%-60s %10s %14s %14s %9s %10s" % (
            "function (top by total, then self time)", "calls", "total ns", "self ns",
            "unmatched", "unfinished"))
        for f in st["functions"]:
            lines.append("%-60s %10d %14d %14d %9d %10d" % (
                printable(f["function"])[:60], f["calls"], f["total_ns"], f["self_ns"],
                f["unmatched"], f.get("unfinished", 0)))
    if st.get("triggers"):
        lines.append("")
        lines.append("%-32s %-24s %6s %6s %12s %12s" % ("trigger action", "on event", "count",
                                                     "errors", "p50 ns", "max ns"))
        for k, v in st["triggers"]["actions"].items():
            lat = v["latency_ns"] or {}
            lines.append("%-32s %-24s %6d %6d %12s %12s" % (
                printable(k)[:32], printable(v["event"])[:24], v["count"], v["errors"],
                _n(lat.get("p50")), _n(lat.get("max"))))
            if v["last_error"]:
                lines.append("    error: %s" % printable(v["last_error"]))
        for t in st["triggers"].get("rules", []):
            lost = sum((t.get("actions_dropped") or {}).values())
            merged = sum((t.get("actions_coalesced") or {}).values())
            ran = sum((t.get("actions_ran") or {}).values())
            if t.get("predicate_errors") or lost or merged:
                lines.append("trigger %s (%s): fired %s, %s predicate errors%s; actions run "
                             "%d, merged %d, dropped %d" % (
                                 t["trigger"], printable(t["event"]), t["fired"],
                                 t["predicate_errors"],
                                 " (%s)" % printable(t["last_predicate_error"])
                                 if t.get("last_predicate_error") else "", ran, merged, lost))
    if st.get("clocks"):
        lines.append("")
        lines.append("%-12s %-20s %14s %12s %14s %8s %10s" % (
            "domain", "clock", "offset ns", "drift ppm", "uncertainty ns", "samples",
            "violations"))
        for dom, c in st["clocks"].items():
            lines.append("%-12s %-20s %14s %12s %14s %8s %10s" % (
                dom, printable(c["kind"]), _n(c["offset_ns"]), _n(c["drift_ppm"], "%.3f"),
                _n(c["uncertainty_ns"]), c["samples"], c["causality_violations"]))
    t = st["totals"]
    lines.append("")
    lines.append("total: %d recorded, %d discarded, %d malformed, %d torn" % (
        t["recorded"], t["discarded"], t["malformed"], t["torn"]) +
        (", %d not written" % t["unwritten"] if t["unwritten"] else ""))
    if any(t.get(k) for k in LOSSES):
        lines.append("lost without a ring: %d, in refused claims: %d; declarations refused: "
                     "%d" % (t["lost_without_ring"], t["lost_in_refused_claims"],
                             t["declarations_refused"]))
    for dom, causes in st.get("losses", {}).items():
        lines += [printable(x) for x in why.lines(dom, causes)]
    return "\n".join(lines)


def spans(s: Session) -> dict:
    """Durations of spans (NAME_begin/NAME_end pairs, guest.span), keyed "domain/NAME":
    count, min, p50, p99, max in ns, and unmatched ends."""
    return slices(s)[0]


class SliceTotals:
    """Spans' durations and traced functions' times, added a Slice at a time."""

    def __init__(self):
        self.dur: Dict[str, list] = {}
        self.fn: Dict[str, list] = {}

    def add(self, x) -> None:
        if x.call:
            f = self.fn.get(x.key)
            if f is None:
                f = self.fn[x.key] = [0, 0, 0]
            f[0] += 1
            f[1] += (x.t1 - x.t0) if x.outer else 0
            f[2] += x.self_ns
        else:
            self.dur.setdefault(x.key, []).append(x.t1 - x.t0)

    def spans(self, unmatched: Dict[str, int],
              unfinished: Optional[Dict[str, int]] = None) -> dict:
        """Per span: count, min, p50, p99, max (None with no span closed), unmatched
        ends (an end without its begin, or a begin past the open slices kept) and
        unfinished begins (no end recorded)."""
        out = {}
        unfinished = unfinished or {}
        for key in sorted(set(self.dur) | set(unmatched) | set(unfinished)):
            v = sorted(self.dur.get(key, []))
            out[key] = dict(_pct(v) or dict.fromkeys(("min", "p50", "p99", "max")),
                            count=len(v), unmatched=unmatched.get(key, 0),
                            unfinished=unfinished.get(key, 0))
        return out

    def functions(self, unmatched: Dict[str, int], top: Optional[int] = TOP_FUNCTIONS,
                  unfinished: Optional[Dict[str, int]] = None) -> list:
        """The top functions by total time, then by self time; calls counts the
        finished ones (an unfinished call has no duration)."""
        fn = self.fn
        unfinished = unfinished or {}
        for k in list(unmatched) + list(unfinished):    # no call of theirs finished
            fn.setdefault(k, [0, 0, 0])
        chosen = sorted(fn, key=lambda k: (-fn[k][1], k))[:top]
        taken = set(chosen)
        chosen += [k for k in sorted(fn, key=lambda k: (-fn[k][2], k))[:top] if k not in taken]
        return [{"function": k, "calls": fn[k][0], "total_ns": fn[k][1], "self_ns": fn[k][2],
                 "unmatched": unmatched.get(k, 0), "unfinished": unfinished.get(k, 0)}
                for k in chosen]


def slices(s: Session, top: Optional[int] = TOP_FUNCTIONS) -> tuple:
    """(spans, functions) in one pass over the events: spans as spans() says; the
    traced functions (record --functions): the `top` (None: all) with the most total
    time, then those of the `top` with the most self time not listed yet: calls, total
    ns (a recursive call counted once, at its outermost frame, as cProfile's
    cumulative time), self ns."""
    from ..read.columns import Columns
    from .spans import Pairer
    c = Columns(s)
    p = Pairer(c)
    t = SliceTotals()
    for b in c.batches():
        for x in p.feed(b):
            t.add(x)
    p.finish()
    return (t.spans(p.unmatched, p.unfinished),
            t.functions(p.unmatched_calls, top, p.unfinished_calls))


def triggers(s: Session) -> dict:
    """Per trigger action: how often it ran or failed, and its latency from the guest
    event that fired it (event mapped onto the host timeline) to the action done."""
    acts: Dict[str, dict] = {}
    errors = 0
    # per rule, from the index: predicate errors on guest data, firings merged or dropped
    rules = [{k: t.get(k) for k in ("trigger", "event", "fired", "predicate_errors",
                                    "last_predicate_error", "actions_ran",
                                    "actions_coalesced", "actions_dropped")}
             for t in s.index.get("triggers") or [] if isinstance(t, dict)]
    for e in (s.events("host") if "host" in s.domains else ()):
        if e.name != "hypertrace_trigger":
            continue
        f = e.fields
        if not _trigger_record(f):      # declared otherwise than the recorder does
            continue
        a = acts.setdefault(str(f["action"]), {"event": "%s/%s" % (f["domain"], f["event"]),
                                               "lat": [], "errors": 0, "last_error": None})
        if f["ok"] and f["domain"] in s.domains:
            a["lat"].append(e.ts - s.to_host(f["domain"], f["event_ts"]))
        elif not f["ok"]:
            a["errors"] += 1
            a["last_error"] = f["error"]
            errors += 1
    if not acts and not rules:
        return {}
    return {"errors": errors, "rules": rules, "actions": {k: {
        "event": v["event"], "count": len(v["lat"]) + v["errors"], "errors": v["errors"],
        "last_error": v["last_error"], "latency_ns": _pct(sorted(v["lat"]))}
        for k, v in acts.items()}}


def _sync_latency(s: Session) -> dict:
    """Per domain: guest->host latency of sync points (host receive - mapped guest send)
    and their round trips on the guest clock."""
    out = {}
    host_off = s.index.get("host_clock_offset_ns") or 0
    dropped = s.index.get("syncs_dropped", {})
    for dom in dict.fromkeys(list(s.index.get("syncs", {})) + list(dropped)):
        syncs = s.index.get("syncs", {}).get(dom, [])
        if not syncs and not dropped.get(dom):
            continue
        lat = sorted(x["host_recv"] + host_off - s.to_host(dom, x["guest_send"]) for x in syncs)
        # host_send and guest_recv are null for a sync point the guest never saw answered
        rtt = sorted(x["guest_recv"] - x["guest_send"] for x in syncs
                     if x.get("guest_recv") is not None)
        out[dom] = {"count": len(lat), "latency_ns": _pct(lat), "rtt_ns": _pct(rtt),
                    # not in the index (the trace has them: hypertrace_sync_host events)
                    "dropped": dropped.get(dom, 0)}
    return out


def _trigger_record(f: dict) -> bool:
    """Whether a hypertrace_trigger record has the recorder's field types."""
    return (all(isinstance(f.get(k), str) for k in ("domain", "event", "action", "error"))
            and type(f.get("event_ts")) is int and type(f.get("ok")) is bool)


def _pct(v: list):
    if not v:
        return None
    return {"min": v[0], "p50": v[len(v) // 2], "p99": v[min(len(v) - 1, len(v) * 99 // 100)],
            "max": v[-1]}


def _n(v, fmt: str = "%d") -> str:
    return "-" if v is None else fmt % v
