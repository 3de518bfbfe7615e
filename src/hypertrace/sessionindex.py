"""Parsing and validating a session index (`.hypertrace/session.json`), which is
untrusted input: whoever made the directory chose every byte.

The text is bounded in size (sessiondir.MAX_INDEX_BYTES) and its nesting depth is
measured before it is parsed; NaN is refused. Then every field a reader uses is
checked for its type and range, and every name for a strict character set,
because names become file names (stream files, Parquet files), SQL identifiers
(`hypertrace sql` views) and labels: domain and stream file names
`[A-Za-z0-9_.-]`, event and field names C identifiers (what abi.parse_signature
accepts, the grammar the collector enforces on guests). What is not checked here
is not read by any reader: the sections only the recorder writes for people to
read (errors, write_error, control, qemu_clock, trigger_problems, started_ns...)
are left as they are and no command reads them. Text is checked for its type and
length only: whoever prints it escapes its control characters (analysis/text.py).
Errors raise IndexInvalid naming the field.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List

import numpy as np

from . import abi

MAX_DEPTH = 32            # the writer nests 6 deep (clocks / domain / segments / [i] / key)
MAX_DOMAINS = 4096
MAX_STREAMS = 1 << 20
MAX_SEGMENTS = 20_000     # host/clock.py MAX_SAMPLES: a segment has at least one sample
MAX_SYNCS = 1 << 20
MAX_NAME = 64             # a channel name is < 32 characters; boots add `.bootK` and `_`s
MAX_TEXT = 4096
MAX_TRIGGERS = 4096       # rules in one file; each has a few actions
MAX_ACTIONS = 256
I64 = 1 << 63
OFF_MAX = 1 << 62         # epoch offsets: a mapped time (raw <= abi.MAX_TS) fits in i64
TS_MAX = abi.MAX_TS + 1   # producer timestamps: the collector refuses larger ones
U64 = 1 << 64
UNC_MAX = float(1 << 62)  # an unbounded uncertainty (no feasible line) is shown as this

DOMAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,%d}\Z" % MAX_NAME)
STREAM_FILE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}\Z")   # never `.x`, `..`
EVENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
EVENT_ID = re.compile(r"(0|[1-9][0-9]{0,4})\Z")
#: the recording machine's name (`hostname`; read/identity.py): no control characters
HOSTNAME = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,255}\Z")
SEGMENT_KEYS = ("g_start", "g_end", "g0", "offset_ns", "drift_ppm", "uncertainty_ns",
                "samples", "margin_ns")


class IndexInvalid(ValueError):
    """The index is not one the collector writes (the message names the field)."""


def loads(raw: bytes) -> dict:
    """The index document from its bytes: depth-checked, then parsed (no NaN)."""
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:
        raise IndexInvalid("nested %d levels deep (at most %d)" % (depth, MAX_DEPTH))
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_constant)
    except RecursionError:
        raise IndexInvalid("nested too deeply") from None
    except UnicodeDecodeError as e:
        raise IndexInvalid("not UTF-8 (%s)" % e.reason) from None
    except ValueError as e:      # JSONDecodeError, and integers of > 4300 digits
        raise IndexInvalid("not JSON (%s)" % str(e).splitlines()[0][:200]) from None
    return doc


def _constant(name: str) -> float:
    # the fit writes Infinity for an uncertainty without bound; NaN means nothing
    if name == "Infinity":
        return math.inf
    raise IndexInvalid("%s is not a number" % name)


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in JSON text, brackets inside
    strings excluded (array operations: a 64 MiB index is scanned in well under a
    second, and nothing recurses)."""
    b = np.frombuffer(raw, dtype=np.uint8)
    if not len(b):
        return 0
    idx = np.arange(len(b))
    bs = b == 0x5C
    # a quote is escaped when an odd number of backslashes precede it
    last_other = np.maximum.accumulate(np.where(bs, -1, idx))
    q = np.flatnonzero(b == 0x22)
    prev = q - 1
    run = np.where(prev >= 0, prev - last_other[np.maximum(prev, 0)], 0)
    real = q[run % 2 == 0]
    inside = np.zeros(len(b) + 1, dtype=np.int8)
    np.add.at(inside, real + 1, 1)           # parity of real quotes up to each byte
    outside = (np.cumsum(inside[:-1]) % 2) == 0
    step = np.zeros(len(b), dtype=np.int64)
    step[((b == 0x5B) | (b == 0x7B)) & outside] = 1
    step[((b == 0x5D) | (b == 0x7D)) & outside] = -1
    return int(max(0, np.cumsum(step).max()))


# -- field checks -------------------------------------------------------------------
def _int(v: Any, where: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v < hi:
        raise IndexInvalid("%s: expected an integer in [%d, %d), got %s" % (
            where, lo, hi, _show(v)))
    return v


def _opt_int(v: Any, where: str, lo: int, hi: int):
    return None if v is None else _int(v, where, lo, hi)


def _num(v: Any, where: str, lo: float, hi: float) -> float:
    if type(v) not in (int, float) or not lo <= v <= hi:
        raise IndexInvalid("%s: expected a number in [%g, %g], got %s" % (
            where, lo, hi, _show(v)))
    return v


def _str(v: Any, where: str, pattern=None, maxlen: int = MAX_TEXT) -> str:
    if type(v) is not str or len(v) > maxlen or (pattern is not None and not pattern.match(v)):
        raise IndexInvalid("%s: %s is not %s" % (
            where, _show(v), "a valid name" if pattern is not None else
            "a text of at most %d characters" % maxlen))
    return v


def _opt_str(v: Any, where: str, maxlen: int = MAX_TEXT):
    return None if v is None else _str(v, where, maxlen=maxlen)


def _dict(v: Any, where: str) -> dict:
    if type(v) is not dict:
        raise IndexInvalid("%s: expected an object, got %s" % (where, _show(v)))
    return v


def _list(v: Any, where: str, most: int) -> list:
    if type(v) is not list:
        raise IndexInvalid("%s: expected a list, got %s" % (where, _show(v)))
    if len(v) > most:
        raise IndexInvalid("%s: %d entries (at most %d)" % (where, len(v), most))
    return v


def _show(v: Any) -> str:
    t = json.dumps(v, default=str) if not isinstance(v, (dict, list)) else type(v).__name__
    return t if len(t) <= 60 else t[:57] + "..."


# -- the document ----------------------------------------------------------------------
def validate(doc: Any) -> dict:
    """Check everything a reader uses; returns the document with its clocks' and
    clock segments' unbounded uncertainties capped (the only values rewritten)."""
    if type(doc) is not dict or doc.get("format") != "hypertrace-session":
        raise IndexInvalid("not a hypertrace session index")
    if "trace_uuid" in doc:
        _str(doc["trace_uuid"], "trace_uuid", re.compile(r"[0-9a-f]{32}\Z"))
    h = doc.get("hostname")
    if h is not None and not (type(h) is str and HOSTNAME.match(h)):
        # it only labels the session (read/identity.py): one that is not a name is left
        # out, it does not make the session unreadable
        doc.pop("hostname")
    _opt_int(doc.get("host_clock_offset_ns"), "host_clock_offset_ns", -OFF_MAX, OFF_MAX)
    domains = _list(doc.get("domains"), "domains", MAX_DOMAINS)
    names: Dict[str, dict] = {}
    sids = set()
    for i, d in enumerate(domains):
        w = "domains[%d]" % i
        _dict(d, w)
        name = _str(d.get("name"), w + ".name", DOMAIN_NAME)
        if name in names:
            raise IndexInvalid("%s.name: domain %r listed twice" % (w, name))
        names[name] = d
        sid = _int(d.get("stream_id"), w + ".stream_id", 0, 1 << 32)
        if sid in sids:
            raise IndexInvalid("%s.stream_id: %d used twice" % (w, sid))
        sids.add(sid)
        _int(d.get("clock_offset_ns"), w + ".clock_offset_ns", -OFF_MAX, OFF_MAX)
        _events(_dict(d.get("events"), w + ".events"), w + ".events")
        for k in ("lost_without_ring", "lost_in_refused_claims", "declarations_refused"):
            _opt_int(d.get(k), "%s.%s" % (w, k), 0, I64)      # ABI 1.4 loss counters
    streams = _list(doc.get("streams"), "streams", MAX_STREAMS)
    files = set()
    for i, st in enumerate(streams):
        w = "streams[%d]" % i
        _dict(st, w)
        f = st.get("file")
        if f is not None:
            if type(f) is not str or not STREAM_FILE.match(f):
                raise IndexInvalid("%s.file: stream file %s is not a file name in the session"
                                   % (w, _show(f)))
            if f in files:
                raise IndexInvalid("%s.file: %r listed twice" % (w, f))
            files.add(f)
        dom = _str(st.get("domain"), w + ".domain", DOMAIN_NAME)
        if dom not in names:
            raise IndexInvalid("%s.domain: stream of unknown domain %r" % (w, dom))
        for k in ("recorded", "discarded", "malformed", "torn"):
            _int(st.get(k), "%s.%s" % (w, k), 0, I64)
        for k in ("clamped", "emitted", "generation", "ring", "unwritten"):
            _opt_int(st.get(k), "%s.%s" % (w, k), 0, I64)
        for k in ("pid", "tid"):
            _opt_int(st.get(k), "%s.%s" % (w, k), -I64, I64)
        _opt_str(st.get("thread"), w + ".thread", 256)
        first, last = st.get("first_ts"), st.get("last_ts")
        if (first is None) != (last is None):
            raise IndexInvalid("%s: first_ts and last_ts go together" % w)
        _opt_int(first, w + ".first_ts", 0, TS_MAX)
        _opt_int(last, w + ".last_ts", 0, TS_MAX)
        per = _dict(st.get("per_event", {}), w + ".per_event")
        if len(per) > abi.MAX_EVENT_ID:
            raise IndexInvalid("%s.per_event: %d entries" % (w, len(per)))
        for k, n in per.items():
            # the recounting of `recover` names an undeclared id by its number
            if not (EVENT_NAME.match(k) or EVENT_ID.match(k)):
                raise IndexInvalid("%s.per_event: %s is not an event name" % (w, _show(k)))
            _int(n, "%s.per_event.%s" % (w, k), 0, I64)
    clocks = _dict(doc.get("clocks", {}), "clocks")
    for name, c in clocks.items():
        w = "clocks.%s" % _show(name)
        if name not in names:
            raise IndexInvalid("%s: clock of unknown domain" % w)
        _clock(_dict(c, w), w)
    syncs = _dict(doc.get("syncs", {}), "syncs")
    for name, xs in syncs.items():
        w = "syncs.%s" % _show(name)
        if name not in names:
            raise IndexInvalid("%s: sync points of unknown domain" % w)
        for j, x in enumerate(_list(xs, w, MAX_SYNCS)):
            wx = "%s[%d]" % (w, j)
            _dict(x, wx)
            _int(x.get("sync_id"), wx + ".sync_id", 0, U64)
            _opt_str(x.get("name"), wx + ".name")
            # guest_send and guest_recv are what the guest said: any u64
            for k in ("guest_send", "host_recv"):
                _int(x.get(k), "%s.%s" % (wx, k), 0, U64)
            for k in ("host_send", "guest_recv"):
                _opt_int(x.get(k), "%s.%s" % (wx, k), 0, U64)
    # sync points the index no longer holds (the recorder keeps the last ones)
    for name, n in _dict(doc.get("syncs_dropped", {}), "syncs_dropped").items():
        w = "syncs_dropped.%s" % _show(name)
        if name not in names:
            raise IndexInvalid("%s: sync points of unknown domain" % w)
        _int(n, w, 0, I64)
    if doc.get("triggers") is not None:
        _triggers(_list(doc["triggers"], "triggers", MAX_TRIGGERS))
    return doc


def _triggers(rules: list) -> None:
    """The trigger rules' summary (host/actions.py Engine.summary), which `stats` shows."""
    for i, t in enumerate(rules):
        w = "triggers[%d]" % i
        _dict(t, w)
        for k in ("trigger", "fired", "predicate_errors"):
            _opt_int(t.get(k), "%s.%s" % (w, k), 0, I64)
        for k in ("event", "domain", "when", "last_predicate_error"):
            _opt_str(t.get(k), "%s.%s" % (w, k))
        if t.get("actions") is not None:
            for j, a in enumerate(_list(t["actions"], w + ".actions", MAX_ACTIONS)):
                _str(a, "%s.actions[%d]" % (w, j))
        for k in ("actions_ran", "actions_coalesced", "actions_dropped"):
            if t.get(k) is None:
                continue
            counts = _dict(t[k], "%s.%s" % (w, k))
            if len(counts) > MAX_ACTIONS:
                raise IndexInvalid("%s.%s: %d entries (at most %d)" % (w, k, len(counts),
                                                                      MAX_ACTIONS))
            for a, n in counts.items():
                _int(n, "%s.%s.%s" % (w, k, _show(a)), 0, I64)


def _events(events: dict, where: str) -> None:
    if len(events) > abi.MAX_EVENT_ID:
        raise IndexInvalid("%s: %d declarations (at most %d)" % (
            where, len(events), abi.MAX_EVENT_ID))
    seen: Dict[str, str] = {}
    for k, e in events.items():
        w = "%s.%s" % (where, _show(k))
        if not EVENT_ID.match(k) or int(k) >= abi.MAX_EVENT_ID:
            raise IndexInvalid("%s: not an event id" % w)
        _dict(e, w)
        sig = _str(e.get("signature"), w + ".signature", maxlen=abi.DECL_TEXT_MAX)
        fmt = _opt_str(e.get("format"), w + ".format", abi.DECL_TEXT_MAX) or ""
        try:
            abi.parse_format(fmt)
        except ValueError:
            # the format only describes the event: one that does not parse is left out
            # (the event prints its fields), it does not make the session unreadable
            e.pop("format", None)
        try:
            decl = abi.parse_signature(sig)
        except ValueError as x:
            raise IndexInvalid("%s: %s" % (w, x)) from None
        if e.get("name", decl.name) != decl.name:
            raise IndexInvalid("%s.name: does not match its signature" % w)
        # two processes racing to declare one event may fill two slots with the same
        # text (ABI §3): one event under two ids; another signature is a conflict
        if seen.setdefault(decl.name, sig) != sig:
            raise IndexInvalid("%s: event %r declared twice" % (w, decl.name))


def _clock(c: dict, where: str) -> None:
    _opt_str(c.get("kind"), where + ".kind", 64)
    _opt_str(c.get("reason"), where + ".reason")       # why an "unfitted" clock is
    _opt_int(c.get("offset_ns"), where + ".offset_ns", -I64, I64)
    if c.get("drift_ppm") is not None:
        _num(c["drift_ppm"], where + ".drift_ppm", -1e6, 1e6)
    u = c.get("uncertainty_ns")
    if u is not None:
        # unbounded (Infinity) is capped as in the segments: every reader prints a number
        c["uncertainty_ns"] = min(_num(u, where + ".uncertainty_ns", 0, math.inf), UNC_MAX)
    for k in ("samples", "causality_violations", "min_rtt_ns"):
        _opt_int(c.get(k), "%s.%s" % (where, k), -I64, I64)
    segs: List[dict] = _list(c.get("segments", []), where + ".segments", MAX_SEGMENTS)
    if segs and c.get("kind") != "estimated":
        raise IndexInvalid("%s.segments: only an estimated clock has segments" % where)
    for j, s in enumerate(segs):
        w = "%s.segments[%d]" % (where, j)
        if type(s) is not dict or sorted(s) != sorted(SEGMENT_KEYS):
            raise IndexInvalid("%s: expected the fields %s" % (w, ", ".join(SEGMENT_KEYS)))
        for k in ("g_start", "g_end", "g0"):       # from the guest's t1/t4: any u64
            _int(s[k], "%s.%s" % (w, k), 0, U64)
        if s["g_start"] > s["g_end"]:
            raise IndexInvalid("%s: g_start after g_end" % w)
        _num(s["offset_ns"], w + ".offset_ns", -2.0 ** 63, 2.0 ** 63)
        _num(s["drift_ppm"], w + ".drift_ppm", -1e6, 1e6)
        _num(s["uncertainty_ns"], w + ".uncertainty_ns", 0, math.inf)
        s["uncertainty_ns"] = min(s["uncertainty_ns"], UNC_MAX)
        _int(s["samples"], w + ".samples", 0, I64)
        _num(s["margin_ns"], w + ".margin_ns", -math.inf, math.inf)
