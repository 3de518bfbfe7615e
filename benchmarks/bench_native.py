#!/usr/bin/env python3
"""Native emitters against their peers: one table from one run (issue 13, section 4).

Every figure is ns per event measured in this run: the median (and the minimum) of
R repetitions in each of K rounds, every measuring process running once per round in
turn with the others, with its ratio to a baseline measured in the same processes,
repetition by repetition (the empty Python call for Python rows, a bare clock_gettime
loop for C rows):

  * an empty Python call, `def f(a, b): pass` with 2 ints;
  * the hypertrace Python tracepoint, accelerated (`hypertrace.guest._accel`) and pure
    (HYPERTRACE_PURE=1), 2 ints and int + string, each variant in its own process
    under a real `hypertrace record`; a disabled tracepoint;
  * `logging` to a FileHandler; the LTTng Python agent (python3-lttngust under
    /usr/bin/python3, an lttng session with `enable-event --python` recording);
    VizTracer's `log_instant` with a tracer running;
  * a C tracepoint (2 x uint64) from `hypertrace gen-c` under `hypertrace record`
    (discard mode with a ring that holds a repetition; block mode with the default
    ring), beside a bare clock_gettime(CLOCK_MONOTONIC) loop and an LTTng-UST C
    tracepoint recorded by an lttng session;
  * the in-guest rows of benchmarks/bench_guest_native.py (`measure(n)`), if present;

then the issue's targets with met / not met. A baseline whose tool is missing gets a
row "unavailable: why". lttng-sessiond is started if none is running and stopped
after; every lttng session made here is destroyed, whatever happens.

Usage: python benchmarks/bench_native.py [--events N] [--repeat R] [--rounds K] [--no-vm]
       [--raw FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

from _common import ROOT, SRC, Unavailable, _kill_group, check, ht, last_line, py_env, run  # noqa: F401,E402,I001

HERE = os.path.dirname(os.path.abspath(__file__))
SYSTEM_PYTHON = "/usr/bin/python3"       # where Debian's python3-lttngust is importable
STRING = "hello world"                   # the string argument: 11 characters

# the targets of issue 13, section 4
T_ACCEL_INT = 1.5           # x empty call, 2 ints
T_ACCEL_STR = 2.5           # x empty call, int + string
T_VS_LOGGING = 100.0        # times cheaper than logging, and than the LTTng agent
T_VS_VIZTRACER = 10.0       # times cheaper than VizTracer's log_instant
T_C_NS = 30.0               # ns per C event
T_VS_LTTNG_UST = 4.0        # times cheaper than an LTTng-UST C tracepoint


# ---------------------------------------------------------------------------------
# subprocesses: each in its own process group, killed (group and all) on timeout

def pow2_at_least(n: int, floor: int = 1 << 20) -> int:
    return 1 << max(floor.bit_length() - 1, (max(n, 1) - 1).bit_length())


# ---------------------------------------------------------------------------------
# worker side: what the subprocesses run (`--worker KIND`); standard library only at
# import, so /usr/bin/python3 runs the LTTng agent's worker from this same file

def _empty(a, b):
    pass


def interleaved(cases, repeat: int) -> dict:
    """ns per call of each case, `repeat` times, the cases taking turns so that a noisy
    moment hits them all alike. A case: (key, stmt, globals, calls, before, after,
    pause_s); one untimed warm-up of a tenth of the calls each."""
    out = {c[0]: [] for c in cases}
    for rep in range(repeat + 1):
        for key, stmt, g, calls, before, after, pause in cases:
            number = max(1, calls // 10) if rep == 0 else calls
            if before:
                before()
            t = timeit.timeit(stmt, globals=g, number=number)
            if after:
                after()
            if rep:
                out[key].append(t / number * 1e9)
            if pause:
                time.sleep(pause)
    return out


def emitted(calls: int, repeat: int) -> int:
    return max(1, calls // 10) + calls * repeat


def worker_tracepoint(a) -> dict:
    from hypertrace import guest

    acc = bool(getattr(guest, "ACCELERATED", False))
    if a.probe:
        return {"accelerated": acc}
    tick = guest.event("bench_int", "uint64_t n, int32_t v")
    msg = guest.event("bench_str", "uint64_t n, const char *s")
    off = guest.event("bench_off", "uint64_t n, int32_t v", disabled=True)
    if not guest.connected():
        return {"error": "the tracepoints found no channel (HYPERTRACE_CHANNEL: %r)"
                % os.environ.get("HYPERTRACE_CHANNEL")}
    if not tick.enabled or not msg.enabled or off.enabled:
        return {"error": "unexpected enable state: bench_int %s, bench_str %s, bench_off %s"
                % (tick.enabled, msg.enabled, off.enabled)}
    g = {"empty": _empty, "tick": tick, "msg": msg, "off": off}
    n = a.events
    pause = n * 0.4e-6            # lets the collector drain a repetition before the next
    res = interleaved([
        ("empty", "empty(1, 2)", g, n, None, None, 0),
        ("int2", "tick(1, 2)", g, n, None, None, pause),
        ("str", "msg(1, %r)" % STRING, g, n, None, None, pause),
        ("disabled", "off(1, 2)", g, n, None, None, 0),
    ], a.repeat)
    return {"accelerated": acc, "ns": res, "emitted": emitted(n, a.repeat)}


def worker_logging(a) -> dict:
    import logging

    log = logging.getLogger("bench_native")
    log.propagate = False
    h = logging.FileHandler(os.path.join(a.tmp, "logging.txt"))
    log.addHandler(h)
    log.setLevel(logging.INFO)
    n = a.events
    res = interleaved([
        ("empty", "empty(1, 2)", {"empty": _empty}, n * 10, None, None, 0),
        ("logging", "log.info('tick %d %d', 1, 2)", {"log": log}, n, None, None, 0),
    ], a.repeat)
    log.removeHandler(h)
    h.close()
    return {"ns": res, "emitted": emitted(n, a.repeat)}


def worker_lttng_agent(a) -> dict:
    import logging

    try:
        import lttngust  # noqa: F401  (registers with lttng-sessiond, adds its handler)
    except ImportError as e:
        return {"error": "python3-lttngust not importable by %s: %s" % (sys.executable, e)}
    log = logging.getLogger("bench_native")
    log.setLevel(logging.INFO)
    n = a.events
    res = interleaved([
        ("empty", "empty(1, 2)", {"empty": _empty}, n * 10, None, None, 0),
        ("agent", "log.info('tick %d %d', 1, 2)", {"log": log}, n, None, None, 0),
    ], a.repeat)
    return {"ns": res, "emitted": emitted(n, a.repeat), "python": platform.python_version()}


def worker_viztracer(a) -> dict:
    try:
        import viztracer
        from viztracer import VizTracer
    except ImportError as e:
        return {"error": "viztracer not installed (pip install viztracer): %s" % e}
    tr = VizTracer(verbose=0, output_file=os.path.join(a.tmp, "viztracer.json"))
    n = a.events
    res = interleaved([
        ("empty", "empty(1, 2)", {"empty": _empty}, n, None, None, 0),
        ("instant", "tr.log_instant('tick', args={'n': 1, 'v': 2})", {"tr": tr}, n,
         tr.start, tr.stop, 0),
    ], a.repeat)
    return {"ns": res, "version": viztracer.__version__}


def worker_guest(a) -> dict:
    sys.path.insert(0, HERE)
    import bench_guest_native

    rows = []
    for label, ns, note in bench_guest_native.measure(a.events):
        rows.append([str(label), ns if isinstance(ns, (int, float)) else None,
                     "" if note is None else str(note)])
    return {"rows": rows}


WORKERS = {"tracepoint": worker_tracepoint, "logging": worker_logging,
           "lttng-agent": worker_lttng_agent, "viztracer": worker_viztracer,
           "guest": worker_guest}


def worker_main(a) -> None:
    try:
        res = WORKERS[a.worker](a)
    except Exception as e:  # reported as the row's reason, in one line
        res = {"error": "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")}
    tmp = a.out + ".part"
    with open(tmp, "w") as f:
        json.dump(res, f)
    os.replace(tmp, a.out)


# ---------------------------------------------------------------------------------
# driver side. Each measuring process runs once per round, the processes taking
# turns round after round, so that a noisy minute of the shared machine falls on
# all rows alike; a row's figure is the median over all its repetitions.

class Row:
    def __init__(self, label, ns=None, base=None, base_ns=None, note="", status=None,
                 min_ns=None):
        self.label, self.ns, self.base, self.base_ns = label, ns, base, base_ns
        self.note, self.status, self.min_ns = note, status, min_ns

    @property
    def ratio(self):
        if self.ns is None or not self.base_ns:
            return None
        return self.ns / self.base_ns


class Sample:
    """One process's repetitions of one row: its figures and its baseline's, taken in
    turns; what it emitted and what the tracer recorded of it; the note, where
    `{counts}` stands for the counts pooled over the rounds."""

    def __init__(self, ns, base, note="", recorded=None, emitted=None, discarded=0):
        self.ns, self.base, self.note = list(ns), list(base), note
        self.recorded, self.emitted, self.discarded = recorded, emitted, discarded


class Measurement:
    """A process to run once per round: `run()` gives {row key: Sample}."""

    def __init__(self, keys, run, base):
        self.keys, self.run, self.base = keys, run, base   # base: "empty call", "clock"
        self.samples = {k: [] for k in keys}
        self.failed = None


PY_LABELS = {"int2": "Python tracepoint, %s, 2 ints",
             "str": "Python tracepoint, %%s, int + %d-char string" % len(STRING),
             "disabled": "Python tracepoint, %s, disabled"}
LABELS = {"logging": "Python logging to a FileHandler, logger.info with 2 args",
          "lttng_agent": "LTTng Python agent (logging handler), logger.info with 2 args",
          "viztracer": "VizTracer log_instant, 2-int args dict, tracer running",
          "c_nochan": "C tracepoint (2 x u64), hypertrace, no channel",
          "c_discard": "C tracepoint (2 x u64), hypertrace, record --mode discard",
          "c_block": "C tracepoint (2 x u64), hypertrace, record --mode block",
          "c_lttng": "C tracepoint (2 x u64), LTTng-UST, session recording"}
for _v in ("accelerated", "pure"):
    for _k, _l in PY_LABELS.items():
        LABELS["py_%s_%s" % (_v, _k)] = _l % _v


class Bench:
    def __init__(self, a, tmp: str, lt):
        self.a, self.tmp, self.lt = a, tmp, lt
        self.n, self.repeat = a.events, a.repeat
        self.slow_n = max(100, a.events // 10)   # logging, the LTTng agent
        self.seq = 0
        self.cdir = os.path.join(tmp, "c")
        os.makedirs(self.cdir)
        self.apps = {}
        self.pause_ms = max(50, int(self.n * 0.5e-3))   # collectors drain between repetitions
        self.ht_ring = pow2_at_least(4 * self.n * 32)
        self.lttng_subbuf = max(4096, pow2_at_least(2 * self.n * 32) // 8)
        self.py_ring = pow2_at_least(4 * self.n * 48)
        self.probed = {}
        py = "empty call"
        self.measurements = [
            Measurement(["py_accelerated_int2", "py_accelerated_str",
                         "py_accelerated_disabled"], lambda: self.py_tracepoint("accelerated"),
                        py),
            Measurement(["py_pure_int2", "py_pure_str", "py_pure_disabled"],
                        lambda: self.py_tracepoint("pure"), py),
            Measurement(["logging"], self.logging, py),
            Measurement(["lttng_agent"], self.lttng_agent, py),
            Measurement(["viztracer"], self.viztracer, py),
            Measurement(["c_nochan"], self.c_nochan, "clock"),
            Measurement(["c_discard"], lambda: self.c_record("discard"), "clock"),
            Measurement(["c_block"], lambda: self.c_record("block"), "clock"),
            Measurement(["c_lttng"], self.c_lttng, "clock"),
        ]

    def path(self, stem: str) -> str:
        self.seq += 1
        return os.path.join(self.tmp, "%03d-%s" % (self.seq, stem))

    def measure(self, rounds: int) -> None:
        for r in range(rounds):
            for m in self.measurements:
                if m.failed:
                    continue
                try:
                    got = m.run()
                except Unavailable as e:
                    m.failed = str(e) if r == 0 else "round %d of %d: %s" % (r + 1, rounds, e)
                    continue
                for k, s in got.items():
                    m.samples[k].append(s)

    def worker(self, kind: str, *, python=None, env=None, prefix=(), timeout=None,
               events=None, extra=()) -> dict:
        out = self.path(kind + ".json")
        cmd = list(prefix) + [python or sys.executable, os.path.abspath(__file__),
                              "--worker", kind, "--out", out, "--tmp", self.tmp,
                              "--events", str(events or self.n),
                              "--repeat", str(self.repeat), *extra]
        cp = run(cmd, timeout or self.a.timeout, env=env or py_env())
        if not os.path.exists(out):
            check(cp, kind + " run")
            raise Unavailable("%s run wrote no result: %s" % (kind, last_line(cp.stderr)))
        with open(out) as f:
            res = json.load(f)
        if "error" in res:
            raise Unavailable(res["error"])
        check(cp, kind + " run")
        return res

    def stats(self, session: str) -> dict:
        cp = check(run(ht("stats", session, "--json"), 120, env=py_env()), "hypertrace stats")
        return json.loads(cp.stdout)

    # ---- Python ----------------------------------------------------------------
    def py_tracepoint(self, variant: str) -> dict:
        env = py_env(HYPERTRACE_PURE="1") if variant == "pure" else py_env()
        if variant == "accelerated":
            env.pop("HYPERTRACE_PURE", None)
        if variant not in self.probed:
            probe = self.worker("tracepoint", env=env, extra=["--probe"], timeout=60)
            self.probed[variant] = probe["accelerated"]
        if variant == "accelerated" and not self.probed[variant]:
            raise Unavailable("not built (hypertrace.guest.ACCELERATED is False)")
        if variant == "pure" and self.probed[variant]:
            raise Unavailable("HYPERTRACE_PURE=1 did not force the pure path")
        session = self.path("py-%s" % variant)
        res = self.worker("tracepoint", env=env, prefix=ht(
            "record", "-o", session, "--mode", "discard", "--rings", "2",
            "--buffer-size", str(self.py_ring), "--"))
        counts = self.stats(session)["events"]
        ns, out = res["ns"], {}
        for key, name in (("int2", "bench_int"), ("str", "bench_str"),
                          ("disabled", "bench_off")):
            got = counts.get(name, {}).get("count", 0)
            if key == "disabled":
                s = Sample(ns[key], ns["empty"], "declared disabled; {counts}", got, 0)
            else:
                s = Sample(ns[key], ns["empty"], "{counts} (record --mode discard, %s ring)"
                           % size_text(self.py_ring), got, res["emitted"])
            out["py_%s_%s" % (variant, key)] = s
        return out

    def logging(self) -> dict:
        res = self.worker("logging", events=self.slow_n)
        return {"logging": Sample(res["ns"]["logging"], res["ns"]["empty"],
                                  "%d calls per repetition" % self.slow_n)}

    def viztracer(self) -> dict:
        res = self.worker("viztracer")
        return {"viztracer": Sample(
            res["ns"]["instant"], res["ns"]["empty"],
            "viztracer %s, default options (function tracing on, 1 M-entry circular buffer)"
            % res["version"])}

    def lttng_agent(self) -> dict:
        if not os.path.exists(SYSTEM_PYTHON):
            raise Unavailable("%s not found (the agent is Debian's python3-lttngust)"
                              % SYSTEM_PYTHON)
        lt = self.lt
        lt.ready()
        trace = self.path("lttng-agent-trace")
        with lt.session(trace) as sess:
            lt.cmd("enable-event", "-s", sess, "--python", "bench_native")
            lt.cmd("start", sess)
            res = self.worker("lttng-agent", python=SYSTEM_PYTHON, env=lt.env,
                              events=self.slow_n)
            discarded = lt.stop(sess)
        return {"lttng_agent": Sample(
            res["ns"]["agent"], res["ns"]["empty"],
            "%s Python %s; {counts}; ratio to that interpreter's empty call"
            % (SYSTEM_PYTHON, res["python"]), count_ctf(trace), res["emitted"], discarded)}

    # ---- C ---------------------------------------------------------------------
    def app(self, kind: str) -> str:
        if kind not in self.apps:
            try:
                build = build_hypertrace_app if kind == "hypertrace" else build_lttng_app
                self.apps[kind] = build(self.cdir)
            except Unavailable as e:
                self.apps[kind] = e
        if isinstance(self.apps[kind], Unavailable):
            raise self.apps[kind]
        return self.apps[kind]

    def c_args(self, pause: bool = True) -> list:
        return [str(self.n), str(self.repeat), str(self.pause_ms if pause else 0)]

    def c_nochan(self) -> dict:
        r = run_c([self.app("hypertrace")] + self.c_args(), self.a.timeout, py_env(),
                  "the C program")
        return {"c_nochan": Sample(r["tp"], r["clock"], "HYPERTRACE_CHANNEL unset: tracing off")}

    def c_record(self, mode: str) -> dict:
        app = self.app("hypertrace")
        session = self.path("c-" + mode)
        how = ["--buffer-size", str(self.ht_ring)] if mode == "discard" else []
        r = run_c(ht("record", "-o", session, "--mode", mode, "--rings", "2", *how, "--", app,
                     *self.c_args(mode == "discard")), self.a.timeout, py_env(),
                  "hypertrace record (C program)")
        if not r["enabled"]:
            raise Unavailable("the tracepoint was not enabled under record")
        got = self.stats(session)["events"].get("bench_u64", {}).get("count", 0)
        if mode == "discard":
            note = "{counts}; %s ring (a repetition fits), %d ms pauses" % (
                size_text(self.ht_ring), self.pause_ms)
        else:
            paced = (": more than it holds, so at the collector's pace"
                     if self.n * 32 > 512 * 1024 else ": it holds a repetition")
            default = __import__("hypertrace.abi").abi.DEFAULT_RING_SIZE
            note = "{counts}; default %s ring, no pauses%s" % (size_text(default), paced)
        return {"c_" + mode: Sample(r["tp"], r["clock"], note, got, r["emitted"])}

    def c_lttng(self) -> dict:
        app = self.app("lttng")
        lt = self.lt
        lt.ready()
        trace = self.path("lttng-ust-trace")
        with lt.session(trace) as sess:
            lt.cmd("enable-channel", "-s", sess, "--userspace", "--subbuf-size",
                   str(self.lttng_subbuf), "--num-subbuf", "8", "htbench")
            lt.cmd("enable-event", "-s", sess, "--userspace", "-c", "htbench", "htbench:tick")
            lt.cmd("start", sess)
            r = run_c([app] + self.c_args(), self.a.timeout, lt.env, "the LTTng-UST program")
            discarded = lt.stop(sess)
        if not r["enabled"]:
            raise Unavailable("the LTTng tracepoint was not enabled (app not registered?)")
        return {"c_lttng": Sample(
            r["tp"], r["clock"], "lttng-ust %s; {counts}; channel 8 x %s per CPU, same pauses"
            % (lt.ust_version(), size_text(self.lttng_subbuf)), count_ctf(trace),
            r["emitted"], discarded)}

    # ---- the rows ----------------------------------------------------------------
    def rows(self):
        """(Python rows, C rows, {key: Row} of the measured ones), baselines first."""
        by_key, pooled = {}, {"empty call": [], "clock": []}
        for m in self.measurements:
            for k in m.keys:
                ss = m.samples[k]
                if m.failed or not ss:
                    by_key[k] = Row(LABELS[k], status=m.failed or "not measured")
                    continue
                ns = [x for s in ss for x in s.ns]
                base = [x for s in ss for x in s.base]
                if k != "lttng_agent":       # another interpreter: its own baseline only
                    pooled[m.base] += base
                rec = [s.recorded for s in ss]
                counts = ""
                if all(isinstance(x, int) for x in rec):
                    counts = "%d" % sum(rec)
                elif rec[0] is not None:
                    counts = next(x for x in rec if not isinstance(x, int))
                if rec[0] is not None and ss[0].emitted:
                    counts += "/%d recorded" % sum(s.emitted for s in ss)
                elif rec[0] is not None:
                    counts += " recorded"
                disc = sum(s.discarded for s in ss)
                if disc:
                    counts += ", %d discarded" % disc
                by_key[k] = Row(LABELS[k], statistics.median(ns),
                                "empty call" if m.base == "empty call" else "clock_gettime",
                                statistics.median(base), ss[0].note.format(counts=counts),
                                min_ns=min(ns))
        empty = Row("empty Python call, def f(a, b): pass with 2 ints",
                    note="median over every repetition in the venv's processes")
        clock = Row("bare clock_gettime(CLOCK_MONOTONIC) loop",
                    note="median over every repetition in the C processes")
        for row, key in ((empty, "empty call"), (clock, "clock")):
            if pooled[key]:
                row.ns = row.base_ns = statistics.median(pooled[key])
                row.min_ns = min(pooled[key])
                row.base = "empty call" if key == "empty call" else "clock_gettime"
            else:
                row.status = "nothing measured it"
        py = [empty] + [by_key[k] for k in (
            "py_accelerated_int2", "py_accelerated_str", "py_accelerated_disabled",
            "py_pure_int2", "py_pure_str", "py_pure_disabled", "logging", "lttng_agent",
            "viztracer")]
        c = [clock] + [by_key[k] for k in ("c_nochan", "c_discard", "c_block", "c_lttng")]
        return py, c, {k: r for k, r in by_key.items() if r.ns is not None}

    def write_raw(self, path: str) -> None:
        out = {}
        for m in self.measurements:
            for k in m.keys:
                out[k] = {"failed": m.failed, "rounds": [
                    {"ns": s.ns, "base": s.base, "recorded": s.recorded, "emitted": s.emitted,
                     "discarded": s.discarded} for s in m.samples[k]]}
        with open(path, "w") as f:
            json.dump({"events": self.n, "repeat": self.repeat, "rows": out}, f, indent=1)

    # ---- in the guest --------------------------------------------------------------
    def guest_rows(self) -> list:
        if self.a.no_vm:
            return [Row("in-guest rows", status="skipped (--no-vm)")]
        if not os.path.exists(os.path.join(HERE, "bench_guest_native.py")):
            return [Row("in-guest rows", status="skipped: benchmarks/bench_guest_native.py "
                                                "is not there")]
        try:
            res = self.worker("guest", events=self.a.vm_events, timeout=self.a.vm_timeout)
        except Unavailable as e:
            return [Row("in-guest rows", status=str(e))]
        rows = []
        for label, ns, note in res["rows"]:
            if not label.lower().startswith(("guest", "in guest", "in the guest")):
                label = "guest: " + label
            if ns is None:      # the reason is the note
                rows.append(Row(label, status=note or "no figure"))
            else:
                rows.append(Row(label, ns, note=note))
        return rows


def size_text(b: int) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if b >= 1 << k and b % (1 << k) == 0:
            return "%d %s" % (b >> k, unit)
    return "%d B" % b


# ---------------------------------------------------------------------------------
# C programs

TRACE_EVENTS = 'bench_u64(uint64_t a, uint64_t b) "a=%" PRIu64 " b=%" PRIu64\n'

LTTNG_TP_H = r"""
#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER htbench
#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./tp.h"
#if !defined(HTBENCH_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define HTBENCH_TP_H
#include <lttng/tracepoint.h>
LTTNG_UST_TRACEPOINT_EVENT(htbench, tick,
    LTTNG_UST_TP_ARGS(uint64_t, a, uint64_t, b),
    LTTNG_UST_TP_FIELDS(
        lttng_ust_field_integer(uint64_t, a, a)
        lttng_ust_field_integer(uint64_t, b, b)))
#endif
#include <lttng/tracepoint-event.h>
"""

APP_C = r"""
/* bench_native.py: N events per repetition, R repetitions, P ms pauses between them.
 * Prints "rep CLOCK_NS TP_NS" per repetition, then "end ENABLED EMITTED". */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef BENCH_LTTNG
#define LTTNG_UST_TRACEPOINT_CREATE_PROBES
#define LTTNG_UST_TRACEPOINT_DEFINE
#include "tp.h"
#define TP(a, b) lttng_ust_tracepoint(htbench, tick, a, b)
#define TP_ENABLED() (lttng_ust_tracepoint_enabled(htbench, tick) != 0)
#else
#include "trace.h"
#define TP(a, b) trace_bench_u64(a, b)
#define TP_ENABLED() (trace_bench_u64_enabled() != 0)
#endif

static volatile uint64_t sink;

static uint64_t now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void pause_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (ms > 0 && nanosleep(&t, &t))
        ;
}

__attribute__((noinline)) static double clock_loop(uint64_t n)
{
    struct timespec ts;
    uint64_t acc = 0, t0 = now();
    for (uint64_t i = 0; i < n; i++) {
        clock_gettime(CLOCK_MONOTONIC, &ts);
        acc += (uint64_t)ts.tv_nsec;
    }
    uint64_t t1 = now();
    sink = acc;
    return (double)(t1 - t0) / (double)n;
}

__attribute__((noinline)) static double tp_loop(uint64_t n, uint64_t base)
{
    uint64_t t0 = now();
    for (uint64_t i = base; i < base + n; i++)
        TP(i, i ^ 0x5a5a5a5aull);
    return (double)(now() - t0) / (double)n;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    uint64_t n = strtoull(argv[1], NULL, 10), emitted = 0;
    int reps = atoi(argv[2]);
    long pause = atol(argv[3]);
    if (n < 1 || reps < 1)
        return 2;
    clock_loop(n / 10 + 1);                  /* warm-up, not printed */
    tp_loop(n, 0);
    emitted += n;
    pause_ms(pause);
    for (int r = 0; r < reps; r++) {
        double c = clock_loop(n);
        double t = tp_loop(n, emitted);
        emitted += n;
        printf("rep %.3f %.3f\n", c, t);
        fflush(stdout);
        pause_ms(pause);
    }
    printf("end %d %llu\n", TP_ENABLED() ? 1 : 0, (unsigned long long)emitted);
    return 0;
}
"""


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise Unavailable("no C compiler (cc, gcc)")
    return cc


def sources(d: str, files: dict) -> str:
    """A new directory d holding each of `files` (name: text)."""
    os.makedirs(d)
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    return d


def build_hypertrace_app(cdir: str) -> str:
    cc = compiler()
    d = sources(os.path.join(cdir, "hypertrace"), {"trace-events": TRACE_EVENTS, "app.c": APP_C})
    check(run(ht("gen-c", "trace-events", "-o", "trace.h"), 60, env=py_env(), cwd=d),
          "hypertrace gen-c")
    flags = check(run(ht("c-config", "--cflags", "--libs"), 60, env=py_env()),
                  "hypertrace c-config").stdout
    check(run([cc, "-O2", "-o", "app", "app.c", *shlex.split(flags)], 180, cwd=d),
          "cc (hypertrace app)")
    return os.path.join(d, "app")


def build_lttng_app(cdir: str) -> str:
    cc = compiler()
    d = sources(os.path.join(cdir, "lttng"), {"tp.h": LTTNG_TP_H, "app.c": APP_C})
    cp = run([cc, "-O2", "-DBENCH_LTTNG", "-I.", "-o", "app", "app.c", "-llttng-ust", "-ldl"],
             180, cwd=d)
    if cp.returncode:
        if "lttng/tracepoint.h" in cp.stderr or "-llttng-ust" in cp.stderr:
            raise Unavailable("liblttng-ust-dev not installed (%s)" % last_line(cp.stderr))
        check(cp, "cc (LTTng-UST app)")
    return os.path.join(d, "app")


def run_c(cmd, timeout: float, env, what: str) -> dict:
    cp = check(run(cmd, timeout, env=env), what)
    clock, tp, end = [], [], None
    for line in cp.stdout.splitlines():
        w = line.split()
        if len(w) == 3 and w[0] == "rep":
            clock.append(float(w[1]))
            tp.append(float(w[2]))
        elif len(w) == 3 and w[0] == "end":
            end = (w[1] == "1", int(w[2]))
    if not tp or end is None:
        raise Unavailable("the C program printed no result: %s" % last_line(cp.stderr))
    return {"clock": clock, "tp": tp, "clock_ns": statistics.median(clock),
            "tp_ns": statistics.median(tp), "enabled": end[0], "emitted": end[1]}


def count_ctf(trace: str):
    """Events in a CTF trace, counted by babeltrace2 (a str saying why not, otherwise)."""
    if not shutil.which("babeltrace2"):
        return "? (no babeltrace2 to count)"
    cp = run(["babeltrace2", trace, "-c", "sink.utils.counter", "-p", "step=+0"], 300)
    m = re.search(r"^\s*(\d+) Event messages?", cp.stdout, re.M)
    if cp.returncode or not m:
        return "? (babeltrace2: %s)" % last_line(cp.stderr)
    return int(m.group(1))


# ---------------------------------------------------------------------------------
# LTTng: a session daemon (ours if none runs) and sessions destroyed whatever happens

class Lttng:
    def __init__(self, tmp: str):
        self.tmp = tmp
        self.home = os.path.join(tmp, "lttng-home")
        os.makedirs(self.home)
        # a private LTTNG_HOME: a user's own ~/.lttngrc and per-user daemon are left
        # alone (root's daemon lives in /var/run/lttng whatever LTTNG_HOME says)
        self.env = dict(os.environ, LTTNG_HOME=self.home)
        self.env.pop("HYPERTRACE_CHANNEL", None)
        self.daemon = None
        self.sessions = []
        self.failed = None
        self.seq = 0

    def cmd(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        return check(run(["lttng", "--no-sessiond", *args], timeout, env=self.env),
                     "lttng " + args[0])

    def _ping(self) -> bool:
        return run(["lttng", "--no-sessiond", "list"], 15, env=self.env).returncode == 0

    def ready(self) -> None:
        """Make sure a session daemon answers (start one once); raise Unavailable if not."""
        if self.failed:
            raise Unavailable(self.failed)
        try:
            self._ready()
        except Unavailable as e:
            self.failed = str(e)
            raise

    def _ready(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            return
        for tool in ("lttng", "lttng-sessiond"):
            if not shutil.which(tool):
                raise Unavailable("%s not found (Debian lttng-tools)" % tool)
        if self._ping():
            return                                  # someone's daemon: used, left running
        log = open(os.path.join(self.tmp, "lttng-sessiond.log"), "w")
        try:
            self.daemon = subprocess.Popen(["lttng-sessiond", "--no-kernel"],
                                           stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while not self._ping():
            if self.daemon.poll() is not None:
                with open(os.path.join(self.tmp, "lttng-sessiond.log")) as f:
                    raise Unavailable("lttng-sessiond exited (%d): %s" % (
                        self.daemon.returncode, last_line(f.read())))
            if time.monotonic() > deadline:
                raise Unavailable("lttng-sessiond did not answer within 20 s")
            time.sleep(0.1)

    @contextlib.contextmanager
    def session(self, output: str):
        self.seq += 1
        name = "htbench-%d-%d" % (os.getpid(), self.seq)
        self.cmd("create", name, "--output", output)
        self.sessions.append(name)
        try:
            yield name
        finally:
            self.destroy(name)

    def stop(self, name: str) -> int:
        """Stop a session (its data flushed); the events it reports discarded."""
        cp = self.cmd("stop", name, timeout=120)
        m = re.search(r"(\d+) events? (?:were |was )?discarded", cp.stdout + cp.stderr)
        return int(m.group(1)) if m else 0

    def destroy(self, name: str) -> None:
        if name in self.sessions:
            self.sessions.remove(name)
            try:
                run(["lttng", "--no-sessiond", "destroy", name], 120, env=self.env)
            except Unavailable as e:
                print("warning: lttng destroy %s: %s" % (name, e), file=sys.stderr)

    def ust_version(self) -> str:
        try:
            cp = run(["dpkg-query", "-W", "-f=${Version}", "liblttng-ust-dev"], 30)
            return cp.stdout.strip() or "?"
        except Unavailable:
            return "?"

    def close(self) -> None:
        for name in list(self.sessions):
            self.destroy(name)
        if self.daemon is not None:
            p, self.daemon = self.daemon, None
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(p)     # its consumer daemons too, should any be left


# ---------------------------------------------------------------------------------
# the table

def fmt_ns(x: float) -> str:
    return "%.1f" % x if x < 100 else "%.0f" % x


def print_table(sections) -> None:
    print("| per-event cost | ns/event (median) | min | ratio | note |")
    print("|---|---:|---:|---:|---|")
    for title, rows in sections:
        print("| **%s** | | | | |" % title)
        for r in rows:
            if r.ns is None:
                st = r.status or "unavailable"
                if not st.startswith(("not built", "skipped", "unavailable")):
                    st = "unavailable: " + st
                print("| %s | %s | | | %s |" % (r.label, st, r.note))
                continue
            ratio = "%.2f× %s" % (r.ratio, r.base) if r.ratio is not None else ""
            low = fmt_ns(r.min_ns) if r.min_ns is not None else ""
            print("| %s | %s | %s | %s | %s |" % (r.label, fmt_ns(r.ns), low, ratio, r.note))


def targets(res: dict) -> list:
    """(target, measured, verdict) for each target of the issue."""
    out = []
    pure_int, pure_str = res.get("py_pure_int2"), res.get("py_pure_str")
    acc_int, acc_str = res.get("py_accelerated_int2"), res.get("py_accelerated_str")

    def vs_empty(limit, acc, pure, what):
        name = "Python accelerated, %s: ≤ %.1f× empty call" % (what, limit)
        if acc is None:
            extra = " (pure: %.2f×)" % pure.ratio if pure is not None else ""
            return (name, "not measured%s" % extra, "n/a")
        return (name, "%.2f×" % acc.ratio, "met" if acc.ratio <= limit else "not met")

    out.append(vs_empty(T_ACCEL_INT, acc_int, pure_int, "2 ints"))
    out.append(vs_empty(T_ACCEL_STR, acc_str, pure_str, "int + string"))

    def cheaper(limit, key, what, mine, pure, mine_what):
        name = "%s ≥ %.0f× cheaper than %s" % (mine_what, limit, what)
        other = res.get(key)
        if other is None:
            return (name, "not measured (%s unavailable)" % what, "n/a")
        if mine is None:
            extra = " (pure: %.1f×)" % (other.ns / pure.ns) if pure is not None else ""
            return (name, "not measured%s" % extra, "n/a")
        k = other.ns / mine.ns
        return (name, "%.1f× (%s / %s ns)" % (k, fmt_ns(other.ns), fmt_ns(mine.ns)),
                "met" if k >= limit else "not met")

    py = "Python accelerated (2 ints)"
    out.append(cheaper(T_VS_LOGGING, "logging", "logging to a FileHandler", acc_int, pure_int,
                       py))
    out.append(cheaper(T_VS_LOGGING, "lttng_agent", "the LTTng Python agent", acc_int,
                       pure_int, py))
    out.append(cheaper(T_VS_VIZTRACER, "viztracer", "VizTracer log_instant", acc_int,
                       pure_int, py))
    c = res.get("c_discard")
    name = "C tracepoint (record --mode discard): ≤ %.0f ns per event" % T_C_NS
    if c is None:
        out.append((name, "not measured", "n/a"))
    else:
        out.append((name, "%s ns" % fmt_ns(c.ns), "met" if c.ns <= T_C_NS else "not met"))
    out.append(cheaper(T_VS_LTTNG_UST, "c_lttng", "an LTTng-UST C tracepoint", c, None,
                       "C tracepoint"))
    return out


def header(a) -> None:
    cc = ""
    try:
        cc = last_line(run([compiler(), "--version"], 30).stdout.splitlines()[0])
    except (Unavailable, IndexError):
        cc = "no C compiler"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    print("bench_native: %s, %d CPUs, %s, Python %s, %s" % (
        platform.node(), os.cpu_count() or 0, cpu, platform.python_version(), cc))
    print("%d events per repetition (logging and the LTTng agent: %d); each measuring process "
          "runs %d repetitions, once in each of %d rounds, the processes taking turns; "
          "figures are medians over the %d repetitions"
          % (a.events, max(100, a.events // 10), a.repeat, a.rounds, a.repeat * a.rounds))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(
        description="Native hypertrace emitters against their peers: one table, one run.")
    ap.add_argument("--events", type=int, default=200_000, metavar="N",
                    help="events (calls) per repetition (default 200000; logging and the "
                         "LTTng agent: N/10)")
    ap.add_argument("--repeat", type=int, default=5, metavar="R",
                    help="repetitions in each measuring process (default 5)")
    ap.add_argument("--rounds", type=int, default=3, metavar="K",
                    help="times each measuring process runs, in turns with the others; a "
                         "figure is the median of its K x R repetitions (default 3)")
    ap.add_argument("--no-vm", action="store_true", help="skip the in-guest rows")
    ap.add_argument("--vm-events", type=int, default=5000, metavar="N",
                    help="n for bench_guest_native.measure(n) (default 5000)")
    ap.add_argument("--vm-timeout", type=float, default=1200, metavar="S",
                    help="longest the in-guest rows may take (default 1200 s)")
    ap.add_argument("--timeout", type=float, default=300, metavar="S",
                    help="longest any other measuring subprocess may take (default 300 s)")
    ap.add_argument("--raw", metavar="FILE",
                    help="also write every repetition's figures (and baselines) as JSON")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker_main(a)
    if a.events < 10 or a.repeat < 1 or a.rounds < 1:
        ap.error("--events must be at least 10, --repeat and --rounds at least 1")

    # SIGTERM and SIGHUP unwind like Ctrl-C: sessions destroyed, our daemon stopped
    def bye(sig, frame):
        raise SystemExit(128 + sig)

    signal.signal(signal.SIGTERM, bye)
    signal.signal(signal.SIGHUP, bye)
    tmp = tempfile.mkdtemp(prefix="ht-bench-native-")
    lt = Lttng(tmp)
    try:
        b = Bench(a, tmp, lt)
        header(a)
        b.measure(a.rounds)
        lt.close()          # nothing LTTng from here on: our session daemon stopped now
        guest = b.guest_rows()
        py, c, measured = b.rows()
        if a.raw:
            b.write_raw(a.raw)
        print_table([("Python", py), ("C", c), ("inside a TCG guest", guest)])
        print()
        print("ratio: median over the row's repetitions / median of the baseline measured in "
              "the same processes, the two taking turns (empty call: Python rows; "
              "clock_gettime loop: C rows). min: the fastest repetition (the machine is "
              "shared: a wide gap between min and median is other work).")
        print()
        print("| target (issue 13) | measured | |")
        print("|---|---|---|")
        for name, got, verdict in targets(measured):
            print("| %s | %s | %s |" % (name, got, verdict))
    finally:
        lt.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
