#!/usr/bin/env python3
"""Timing Python code: function tracing, spans and logging, three tables from one run.

Every figure is measured in this run:

  1. function tracing: three small programs written into a temporary directory,
       * fib: 4 x fib(25), recursive (971,140 calls of fib);
       * json: json.dumps / json.loads of 50 records, 2000 times, with a `default=`
         function and an `object_hook` (a Python call per object);
       * regex: 250 passes over 500 access-log lines, parsed with a compiled regex,
         re.sub, str.split / join / capitalize and a dict of counts;
     (`--scale F` multiplies the three sizes), each run untraced, under `hypertrace
     record --functions` (the accelerator's C hook, the default: the tracer column names
     the one functions.tracing() reported, eval or profile), with
     HYPERTRACE_FUNCTIONS_HOOK=profile (the C profile function), with
     HYPERTRACE_PURE=1 (the pure-Python sys.setprofile function), and under VizTracer
     (`--ignore_c_function`, so that it records what hypertrace does: Python functions
     only; `--viz-c` to trace C functions too). The program times its own work with
     time.perf_counter and prints it, so the interpreter's start-up and the tracer's
     set-up and teardown are left out of "work s"; "command s" is the wall time of the
     whole command (recorder start and drain, or VizTracer's JSON dump, included).
     Both are the best of K rounds; a round runs every program under every tracer in
     turn. A hypertrace run that recorded fewer calls than
     the workload makes (or than another round did), or that used the wrong hook, is
     left out of the best-of and said so (it would be the fastest). Trace size: the
     session directory's bytes, or VizTracer's JSON file. Calls: `hypertrace_call`
     records, or VizTracer's complete ("X") entries. Lost: `totals.discarded` (the worst
     round), from `hypertrace stats --json` in the last round and, in the others, from
     the same function (analysis/stats.compute) in this process without its pass over
     the events, which costs seconds per million records; for VizTracer, whether its
     ring buffer overflowed (its JSON's metadata says) and, if it did, how many fewer
     calls than hypertrace it kept.
  2. span cost: ns per iteration of `with sp(i): pass` (a span with one uint32 field),
     of `begin(i, 0, i); end(i, 0, "")` (two tracepoints declared like the span's own
     begin and end events), and of an empty loop, in a process under a real
     `hypertrace record`, accelerated and pure (HYPERTRACE_PURE=1): the median of R
     repetitions, the cases taking turns, with the cost net of the empty loop.
  3. logging: ns per `log.info("x %d", i)` on a logger with hypertrace's
     loghandler.Handler (accelerated and pure), with a logging.FileHandler (a file in the
     temporary directory, formatter "%(asctime)s %(levelname)s %(name)s %(message)s"),
     and with no handler, under `hypertrace record`; with the ratios.

Each table is followed by the checks made on the recordings (events expected against
events recorded, losses); a check that fails is printed, never hidden.

Usage: python benchmarks/bench_python.py [--rounds K] [--repeat R] [--spans N] [--logs N]
       [--scale F] [--viz-c] [--viz-entries N] [--raw FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time

from _common import ROOT, SRC, Unavailable, check, ht, last_line, py_env, run  # noqa: F401,E402

HERE = os.path.dirname(os.path.abspath(__file__))
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
VIZ_DEFAULT_ENTRIES = 1000000       # VizTracer's own default for --tracer_entries


# ---------------------------------------------------------------------------------
# the programs of table 1: each prints "WORK_S seconds" and "TRACER how": how hypertrace
# traced its functions (functions.tracing(): eval, profile, setprofile; none)

TRAILER = r'''

def _tracer():
    m = sys.modules.get("hypertrace.guest.functions")
    if m is None:
        return "none"
    try:
        how = m.tracing()
        if how is True:         # an older tracing(), a bool
            how = "profile" if m._c_path(m._state) else "setprofile"
        return how or "none"
    except Exception as e:
        return "?" + type(e).__name__


t0 = time.perf_counter()
work(SIZE)
print("WORK_S %r" % (time.perf_counter() - t0))
print("TRACER " + _tracer())
'''

FIB = r'''
import sys
import time


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def work(times):
    for _ in range(times):
        fib(25)
'''

JSON = r'''
import json
import sys
import time


class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y


def default(o):
    if isinstance(o, Point):
        return {"__point__": [o.x, o.y]}
    raise TypeError(type(o).__name__)


def hook(d):
    p = d.get("__point__")
    return Point(*p) if p is not None else d


def record(i):
    return {"id": i, "name": "item-%d" % i, "tags": ["a", "b", str(i % 7)],
            "where": Point(i, -i), "price": i * 0.25, "ok": i % 2 == 0}


def work(rounds):
    n = 0
    for r in range(rounds):
        doc = {"round": r, "items": [record(i) for i in range(50)]}
        s = json.dumps(doc, default=default)
        back = json.loads(s, object_hook=hook)
        n += len(back["items"])
    return n
'''

REGEX = r'''
import re
import sys
import time

LINE = re.compile(r"(?P<ip>\d+\.\d+\.\d+\.\d+) - - \[(?P<ts>[^\]]+)\] "
                  r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/1\.[01]" (?P<status>\d{3}) '
                  r"(?P<size>\d+)")
WORDS = ("alpha", "beta", "gamma", "delta", "epsilon")


def make_line(i):
    return '10.0.%d.%d - - [03/Dec/2025:10:%02d:%02d +0000] "%s /%s/%d?q=%s HTTP/1.1" %d %d' % (
        i % 256, i % 199, i % 60, i % 59, ("GET", "POST", "PUT")[i % 3], WORDS[i % 5], i,
        WORDS[(i * 7) % 5].upper(), (200, 404, 500)[i % 3], i * 13 % 9000)


def normalise(path):
    path = re.sub(r"/\d+", "/N", path)
    return path.split("?", 1)[0].lower()


def parse(line):
    m = LINE.match(line)
    if m is None:
        return None
    d = m.groupdict()
    d["path"] = normalise(d["path"])
    d["status"] = int(d["status"])
    return d


def work(rounds):
    lines = [make_line(i) for i in range(500)]
    counts = {}
    for _ in range(rounds):
        for line in lines:
            d = parse(line)
            key = "%s %s" % (d["method"], d["path"])
            counts[key] = counts.get(key, 0) + 1
            " ".join(w.capitalize() for w in d["path"].split("/") if w)
    return counts
'''


def fib_calls(n: int) -> int:
    """Calls of the recursive fib(n): 2 fib(n + 1) - 1."""
    a, b = 0, 1
    for _ in range(n + 1):
        a, b = b, a + b
    return 2 * a - 1


def timed(cmd, timeout: float, env=None) -> tuple:
    """run(), and its wall seconds."""
    t = time.perf_counter()
    cp = run(cmd, timeout, env)
    return cp, time.perf_counter() - t


def programs(scale: float) -> list:
    """(key, label, source, expected calls of the workload or None)."""
    fibs = max(1, round(4 * scale))
    js = max(1, round(2000 * scale))
    rx = max(1, round(250 * scale))
    return [
        ("fib", "fib: %d x fib(25)" % fibs, FIB + TRAILER.replace("SIZE", str(fibs)),
         fibs * fib_calls(25)),
        ("json", "json: %d x dumps+loads of 50 records" % js,
         JSON + TRAILER.replace("SIZE", str(js)), None),
        ("regex", "regex: %d x 500 log lines" % rx, REGEX + TRAILER.replace("SIZE", str(rx)),
         None),
    ]


# ---------------------------------------------------------------------------------
# subprocesses: each in its own process group, killed (group and all) on timeout

def stats(session: str, cli: bool = True) -> dict:
    """`hypertrace stats SESSION --json`; with cli False, the same counts and totals from
    the same function in this process without its pass over the events (spans and
    functions, seconds for a million function records)."""
    if not cli:
        from hypertrace.analysis import stats as ht_stats
        from hypertrace.read.session import Session
        return ht_stats.compute(Session(session), with_spans=False)
    cp = run(ht("stats", session, "--json"), 600, py_env())
    check(cp, "hypertrace stats")
    return json.loads(cp.stdout)


def dir_bytes(path: str) -> int:
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def tagged(stdout: str, tag: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(tag + " "):
            return line[len(tag) + 1:].strip()
    raise Unavailable("no %s line in the program's output: %s" % (tag, last_line(stdout)))


# ---------------------------------------------------------------------------------
# table 1: function tracing

LOSS_KEYS = ("malformed", "torn", "unwritten", "lost_without_ring", "lost_in_refused_claims",
             "declarations_refused")
TRACERS = (("none", "untraced"), ("accel", "hypertrace --functions (C)"),
           ("profile", "hypertrace --functions, HYPERTRACE_FUNCTIONS_HOOK=profile"),
           ("pure", "hypertrace --functions, HYPERTRACE_PURE=1"), ("viz", "VizTracer"))
HT_KINDS = ("accel", "profile", "pure")
HT_ENV = {"accel": {}, "profile": {"HYPERTRACE_FUNCTIONS_HOOK": "profile"},
          "pure": {"HYPERTRACE_PURE": "1"}}


def run_traced(kind: str, script: str, tmp: str, a, cli_stats: bool) -> dict:
    """One run of `script` under tracer `kind`: work and command seconds, trace facts."""
    out = os.path.join(tmp, "trace-" + kind)
    shutil.rmtree(out, ignore_errors=True)
    if kind == "none":
        cmd, env = [sys.executable, script], py_env()
    elif kind in HT_KINDS:
        cmd = ht("record", "-o", out, "--functions", "--", sys.executable, script)
        env = py_env(**HT_ENV[kind])
    else:
        out += ".json"
        cmd = [sys.executable, "-m", "viztracer", "--quiet", "-o", out]
        if not a.viz_c:
            cmd.append("--ignore_c_function")
        if a.viz_entries:
            cmd += ["--tracer_entries", str(a.viz_entries)]
        cmd.append(script)
        env = py_env()
    cp, wall = timed(cmd, a.timeout, env)
    check(cp, "%s run of %s" % (kind, os.path.basename(script)))
    r = {"work_s": float(tagged(cp.stdout, "WORK_S")), "cmd_s": wall,
         "tracer": tagged(cp.stdout, "TRACER"),
         "warnings": [x.strip()[:200] for x in cp.stderr.splitlines()
                      if x.startswith("hypertrace")][:3]}
    if kind in HT_KINDS:
        st = stats(out, cli_stats)
        ev = st.get("events", {})
        tot = st.get("totals", {})
        r.update(size=dir_bytes(out), calls=ev.get("hypertrace_call", {}).get("count", 0),
                 returns=ev.get("hypertrace_return", {}).get("count", 0),
                 codes=ev.get("hypertrace_code", {}).get("count", 0),
                 recorded=tot.get("recorded", 0), lost=tot.get("discarded", 0),
                 other={k: tot[k] for k in LOSS_KEYS if tot.get(k)})
        shutil.rmtree(out, ignore_errors=True)
    elif kind == "viz":
        with open(out, "rb") as f:
            data = f.read()
        os.unlink(out)
        m = re.search(rb'"overflow":\s*(true|false)', data)
        r.update(size=len(data), calls=data.count(b'"ph": "X"') + data.count(b'"ph":"X"'),
                 overflow=None if m is None else m.group(1) == b"true")
        del data
    return r


def function_table(a, tmp: str, notes: list) -> tuple:
    progs = programs(a.scale)
    scripts = {}
    for key, _, src, _ in progs:
        scripts[key] = os.path.join(tmp, "prog_%s.py" % key)
        with open(scripts[key], "w") as f:
            f.write(src)
    try:
        import viztracer  # noqa: F401
        have_viz = True
    except ImportError:
        have_viz = False
    runs = {(p[0], t[0]): [] for p in progs for t in TRACERS}
    failed = {}
    for rnd in range(a.rounds):
        for key, _, _, _ in progs:
            for kind, _ in TRACERS:
                if (key, kind) in failed:
                    continue
                if kind == "viz" and not have_viz:
                    failed[(key, kind)] = "unavailable: viztracer is not importable"
                    continue
                try:
                    runs[(key, kind)].append(run_traced(kind, scripts[key], tmp, a,
                                                        rnd == a.rounds - 1))
                except Unavailable as e:
                    failed[(key, kind)] = "unavailable: %s" % e
        print("  (function tracing: round %d of %d done)" % (rnd + 1, a.rounds),
              file=sys.stderr)

    want_hook = {"none": ("none",), "accel": ("eval", "profile"), "profile": ("profile",),
                 "pure": ("setprofile",),
                 "viz": ("none",)}
    lines = ["| program | tracer | work s | slowdown | command s | trace size | calls recorded "
             "| events lost |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for key, label, _, expected in progs:
        base = None
        ht_calls = None
        for kind, tname in TRACERS:
            first = label if kind == "none" else ""
            rs = runs[(key, kind)]
            if (key, kind) in failed and not rs:
                lines.append("| %s | %s | %s | | | | | |" % (first, tname, failed[(key, kind)]))
                continue
            if (key, kind) in failed:
                notes.append("%s, %s: a later round failed: %s" % (key, tname,
                                                                 failed[(key, kind)]))
            hooks = sorted({r["tracer"] for r in rs})
            if kind in HT_KINDS:
                tname += " [%s]" % "/".join(hooks)
            # a run is kept for the best-of only if it traced what it should have: the
            # right hook and, for hypertrace, every call (a run that recorded nothing
            # would otherwise be the fastest)
            bad = []
            most = max((r.get("calls", 0) for r in rs), default=0)
            for i, r in enumerate(rs):
                why = []
                if r["tracer"] not in want_hook[kind]:
                    why.append("function tracer %r, not %s" % (r["tracer"],
                                                               "/".join(want_hook[kind])))
                if kind in HT_KINDS:
                    if expected is not None and r["calls"] < expected:
                        why.append("%d calls recorded, the workload alone makes %d"
                                   % (r["calls"], expected))
                    elif r["calls"] < 0.99 * most:
                        why.append("%d calls recorded, %d in another round" % (r["calls"], most))
                if why:
                    why += ["stderr: %r" % w for w in r["warnings"]]
                    bad.append(r)
                    notes.append("%s, %s, round %d: %s: not counted in the best-of" % (
                        key, tname, i + 1, "; ".join(why)))
            good = [r for r in rs if not any(r is b for b in bad)]
            if not good:
                lines.append("| %s | %s | no complete run in %d | | | | | |" % (first, tname,
                                                                               len(rs)))
                continue
            work = min(r["work_s"] for r in good)
            cmd = min(r["cmd_s"] for r in good)
            excluded = "; %d of %d rounds left out (notes)" % (len(bad), len(rs)) if bad else ""
            if kind == "none":
                base = work
                lines.append("| %s | %s | %.3f | 1.00 | %.2f | | | %s |" % (
                    first, tname, work, cmd, excluded.lstrip("; ")))
                continue
            slow = "%.2f" % (work / base) if base else "n/a"
            last = good[-1]
            if kind in HT_KINDS:
                lost_s = "%d" % max(r["lost"] for r in rs)
                if kind == "accel":
                    ht_calls = last["calls"]
                for i, r in enumerate(rs):
                    if r["other"]:
                        notes.append("%s, %s, round %d: other loss counters: %s" % (
                            key, tname, i + 1, r["other"]))
                    if r["calls"] != r["returns"]:
                        notes.append("%s, %s, round %d: %d hypertrace_call but %d "
                                     "hypertrace_return records" % (key, tname, i + 1,
                                                                    r["calls"], r["returns"]))
            else:
                entries = a.viz_entries or VIZ_DEFAULT_ENTRIES
                full = [r for r in rs if r["overflow"]]
                if any(r["overflow"] is None for r in rs):
                    lost_s = "n/a (no overflow flag in the JSON)"
                elif not full:
                    lost_s = "0 (buffer of %d entries not full)" % entries
                else:
                    kept = min(r["calls"] for r in full)
                    lost_s = "buffer of %d entries full in %d of %d rounds" % (
                        entries, len(full), len(rs))
                    if ht_calls and not a.viz_c and ht_calls > kept:
                        lost_s += ": ~%d calls lost (vs hypertrace's count)" % (ht_calls - kept)
            lines.append("| %s | %s | %.3f | %s | %.2f | %.1f MB | %d | %s%s |" % (
                first, tname, work, slow, cmd, last["size"] / 1e6, last["calls"], lost_s,
                excluded))
        if expected is not None:
            notes.append("%s: the workload itself makes %d Python calls" % (key, expected))
        acc = [r for r in runs[(key, "accel")] if r["calls"]]
        pur = [r for r in runs[(key, "pure")] if r["calls"]]
        if acc and pur and abs(acc[-1]["calls"] - pur[-1]["calls"]) > 0.001 * max(
                acc[-1]["calls"], pur[-1]["calls"]):
            notes.append("%s: the C hook recorded %d calls, the pure-Python hook %d (%+d)" % (
                key, acc[-1]["calls"], pur[-1]["calls"], acc[-1]["calls"] - pur[-1]["calls"]))
    raw = {"%s/%s" % k: v for k, v in runs.items()}
    return lines, raw


# ---------------------------------------------------------------------------------
# tables 2 and 3: worker processes under `hypertrace record` (`--worker KIND`)

def interleaved(cases, n: int, repeat: int, pause: float) -> dict:
    """ns per iteration of each case (a function of n returning seconds), `repeat`
    times, the cases taking turns; one untimed warm-up of n // 10 first."""
    out = {k: [] for k, _ in cases}
    for rep in range(repeat + 1):
        for key, fn in cases:
            number = max(1, n // 10) if rep == 0 else n
            t = fn(number)
            if rep:
                out[key].append(t / number * 1e9)
            if pause:
                time.sleep(pause)
    return out


def worker_span(n: int, repeat: int) -> dict:
    from hypertrace import guest

    sp = guest.span("bench_span", "uint32_t k")
    begin = guest.event("bench_pair_begin", "uint64_t span, uint64_t task, uint32_t k")
    end = guest.event("bench_pair_end", "uint64_t span, uint64_t task, const char *error")
    if not guest.connected():
        return {"error": "the tracepoints found no channel (HYPERTRACE_CHANNEL: %r)"
                % os.environ.get("HYPERTRACE_CHANNEL")}
    clock = time.perf_counter

    def empty(k):
        t = clock()
        for _i in range(k):
            pass
        return clock() - t

    def span(k):
        t = clock()
        for i in range(k):
            with sp(i):
                pass
        return clock() - t

    def pair(k):
        t = clock()
        for i in range(k):
            begin(i, 0, i)
            end(i, 0, "")
        return clock() - t

    res = interleaved([("empty", empty), ("span", span), ("pair", pair)], n, repeat,
                      n * 0.5e-6)
    return {"accelerated": bool(guest.ACCELERATED), "ns": res,
            "emitted": max(1, n // 10) + n * repeat}


def worker_logging(n: int, repeat: int, tmp: str) -> dict:
    import logging

    from hypertrace import guest
    from hypertrace.guest.loghandler import Handler

    def logger(name, handler):
        log = logging.getLogger(name)
        log.propagate = False
        log.setLevel(logging.INFO)
        if handler is not None:
            log.addHandler(handler)
        return log

    fh = logging.FileHandler(os.path.join(tmp, "bench_python_%d.log" % os.getpid()))
    fh.setFormatter(logging.Formatter(LOG_FORMAT))
    logs = {"none": logger("bench.none", None), "hypertrace": logger("bench.ht", Handler()),
            "file": logger("bench.file", fh)}
    if not guest.connected():
        return {"error": "the tracepoints found no channel (HYPERTRACE_CHANNEL: %r)"
                % os.environ.get("HYPERTRACE_CHANNEL")}
    clock = time.perf_counter

    def case(log):
        def f(k):
            t = clock()
            for i in range(k):
                log.info("x %d", i)
            return clock() - t
        return f

    res = interleaved([(k, case(v)) for k, v in logs.items()], n, repeat, n * 1e-6)
    fh.close()
    size = os.path.getsize(fh.baseFilename)
    os.unlink(fh.baseFilename)
    return {"accelerated": bool(guest.ACCELERATED), "ns": res,
            "emitted": max(1, n // 10) + n * repeat, "file_bytes": size}


def worker_main(a) -> None:
    if a.worker == "span":
        r = worker_span(a.spans, a.repeat)
    else:
        r = worker_logging(a.logs, a.repeat, a.tmp)
    print("RESULT " + json.dumps(r))


def run_worker(kind: str, pure: bool, a, tmp: str) -> tuple:
    """The worker under `hypertrace record`: its result and the session's stats."""
    out = os.path.join(tmp, "worker-%s-%s" % (kind, "pure" if pure else "accel"))
    shutil.rmtree(out, ignore_errors=True)
    cmd = ht("record", "-o", out, "--", sys.executable, os.path.abspath(__file__),
             "--worker", kind, "--spans", str(a.spans), "--logs", str(a.logs),
             "--repeat", str(a.repeat), "--tmp", tmp)
    env = py_env(HYPERTRACE_PURE="1") if pure else py_env()
    cp = run(cmd, a.timeout, env)
    check(cp, "the %s worker" % kind)
    r = json.loads(tagged(cp.stdout, "RESULT"))
    if "error" in r:
        raise Unavailable(r["error"])
    st = stats(out)
    shutil.rmtree(out, ignore_errors=True)
    if r["accelerated"] == pure:
        raise Unavailable("the worker's tracepoints were %saccelerated with HYPERTRACE_PURE %s"
                          % ("" if r["accelerated"] else "not ", "set" if pure else "unset"))
    return r, st


def med(xs: list) -> float:
    return statistics.median(xs)


def count_check(st: dict, names: list, want: int, what: str, notes: list) -> None:
    ev = st.get("events", {})
    tot = st.get("totals", {})
    got = {nm: ev.get(nm, {}).get("count", 0) for nm in names}
    lost = tot.get("discarded", 0)
    other = {k: tot[k] for k in LOSS_KEYS if tot.get(k)}
    if any(v != want for v in got.values()) or lost or other:
        notes.append("%s: expected %d of each of %s; recorded %s, discarded %d%s" % (
            what, want, ", ".join(names), got, lost, (", other: %s" % other) if other else ""))
    else:
        notes.append("%s: all %d of each of %s recorded, 0 lost" % (what, want,
                                                                  ", ".join(names)))


def span_table(a, tmp: str, notes: list) -> tuple:
    lines = ["| per iteration | ns (median) | min | net of empty loop | x two tracepoints |",
             "|---|---:|---:|---:|---:|"]
    raw = {}
    for pure in (False, True):
        mode = "pure" if pure else "accelerated"
        try:
            r, st = run_worker("span", pure, a, tmp)
        except Unavailable as e:
            lines.append("| %s | unavailable: %s | | | |" % (mode, e))
            continue
        raw[mode] = r
        ns = r["ns"]
        e = med(ns["empty"])
        net_pair = med(ns["pair"]) - e
        for key, label in (("empty", "empty loop `for i in range(n): pass`"),
                           ("span", "`with sp(i): pass`, span of one uint32 field"),
                           ("pair", '`begin(i, 0, i); end(i, 0, "")`, two tracepoints')):
            m = med(ns[key])
            if key == "empty":
                lines.append("| %s, %s | %.1f | %.1f | | |" % (mode, label, m, min(ns[key])))
            else:
                lines.append("| %s, %s | %.1f | %.1f | %.1f | %.2f |" % (
                    mode, label, m, min(ns[key]), m - e, (m - e) / net_pair if net_pair > 0
                    else float("nan")))
        count_check(st, ["bench_span_begin", "bench_span_end", "bench_pair_begin",
                         "bench_pair_end"], r["emitted"], "span, %s" % mode, notes)
    return lines, raw


def logging_table(a, tmp: str, notes: list) -> tuple:
    lines = ["| `log.info(\"x %d\", i)` | ns (median) | min | x no handler | "
             "FileHandler / this | handler's own ns | FileHandler's own / this own |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    raw = {}
    rows = []
    for pure in (False, True):
        mode = "pure" if pure else "accelerated"
        try:
            r, st = run_worker("logging", pure, a, tmp)
        except Unavailable as e:
            rows.append(("hypertrace Handler, %s: unavailable: %s" % (mode, e), None, None))
            continue
        raw[mode] = r
        ns = r["ns"]
        if not pure:
            rows.append(("no handler", ns["none"], ns))
        rows.append(("hypertrace loghandler.Handler, %s" % mode, ns["hypertrace"], ns))
        if not pure:
            rows.append(("logging.FileHandler (%.1f MB written)" % (r["file_bytes"] / 1e6),
                         ns["file"], ns))
        count_check(st, ["python_log"], r["emitted"], "logging, %s" % mode, notes)
    for label, xs, ns in rows:
        if xs is None:
            lines.append("| %s | | | | | | |" % label)
            continue
        m = med(xs)
        # a handler's own cost: net of the logger's (a record made, no handler to take it)
        own, file_own = m - med(ns["none"]), med(ns["file"]) - med(ns["none"])
        lines.append("| %s | %.0f | %.0f | %.1f | %.1f | %s | %s |" % (
            label, m, min(xs), m / med(ns["none"]), med(ns["file"]) / m,
            "%.0f" % own if xs is not ns["none"] else "",
            "%.1f" % (file_own / own) if xs is not ns["none"] and own > 0 else ""))
    return lines, raw


# ---------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of table 1 (best of)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="repetitions of each case of tables 2 and 3 (median of)")
    ap.add_argument("--spans", type=int, default=100000, help="iterations per repetition")
    ap.add_argument("--logs", type=int, default=20000, help="log calls per repetition")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the size of the three programs of table 1")
    ap.add_argument("--viz-c", action="store_true",
                    help="VizTracer traces C functions too (its default)")
    ap.add_argument("--viz-entries", type=int, default=0,
                    help="VizTracer's --tracer_entries (default: its own, %d)"
                    % VIZ_DEFAULT_ENTRIES)
    ap.add_argument("--timeout", type=float, default=300.0, help="per command, seconds")
    ap.add_argument("--raw", metavar="FILE", help="write every measurement as JSON")
    ap.add_argument("--worker", choices=("span", "logging"), help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker_main(a)
        return
    if a.rounds < 1 or a.repeat < 1 or a.spans < 10 or a.logs < 10 or a.scale <= 0:
        ap.error("--rounds and --repeat must be >= 1, --spans and --logs >= 10, --scale > 0")

    sys.path.insert(0, SRC)
    import hypertrace
    try:
        import viztracer
        viz = viztracer.__version__
    except ImportError:
        viz = "not installed"
    tmp = tempfile.mkdtemp(prefix="ht-bench-python-")
    t_start = time.perf_counter()
    raw = {}
    try:
        print("hypertrace %s on %s, %s, Python %s, %d CPUs, VizTracer %s" % (
            hypertrace.__version__, platform.node(), platform.processor() or platform.machine(),
            platform.python_version(), os.cpu_count() or 0, viz))
        print(flush=True)
        def show(title: str, lines: list, notes: list) -> None:
            print("\n".join(["### " + title, ""] + lines + [""] + ["- " + x for x in notes]
                            + [""]), flush=True)

        notes: list = []
        t1, raw["functions"] = function_table(a, tmp, notes)
        show("function tracing (best of %d rounds)" % a.rounds, t1, notes)
        notes = []
        t2, raw["spans"] = span_table(a, tmp, notes)
        show("span cost (%d iterations x %d repetitions, under `hypertrace record`)"
             % (a.spans, a.repeat), t2, notes)
        notes = []
        t3, raw["logging"] = logging_table(a, tmp, notes)
        show("logging (%d calls x %d repetitions, under `hypertrace record`)"
             % (a.logs, a.repeat), t3, notes)
        print("(whole run: %.0f s)" % (time.perf_counter() - t_start))
        if a.raw:
            with open(a.raw, "w") as f:
                json.dump(raw, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
