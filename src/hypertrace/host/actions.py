"""Running triggers: watch the records the collector copies, fire the configured actions.

The collector hands every packet of validated records to `Engine.on_content`.
Only records of event ids that some trigger names are decoded (the others are
skipped by their sizes), so a session without triggers pays nothing. Actions
that change the recording (enable/disable patterns, snapshot, stop, marker) run
in the recorder's loop; QMP commands run on their own thread so that a slow or
dead QEMU monitor never stalls draining. Each action, done or failed, becomes a
`hypertrace_trigger` host event carrying the triggering event's timestamp.

A guest chooses how often its events fire: waiting actions are bounded
(ActionQueue). An action whose target already has one waiting is merged into it
(the latest wins: a disable of a pattern replaces a waiting enable of it), and
past the bound new ones are dropped; both are counted per trigger and action in
the index (`triggers`) and shown by `stats`. Nothing a predicate or an action
raises on guest data leaves the engine.
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import abi
from ..read.columns import record_starts, size_bounds
from .collector import Collector, Source
from .errors import describe
from .qmp import QMP_TIMEOUT_S, QmpError, set_trace_state
from .triggers import Action, PredicateError, Trigger, check_fields

MAX_WAITING = 1024             # actions waiting to run, per queue (local, QMP)
MAX_PROBLEMS = 256             # "trigger never holds for ..." notes kept for the index


class ActionQueue:
    """Fired actions waiting to run: bounded, identical targets coalesced, counted.

    A job is (trigger, action, domain, event name, event timestamp). Its key names what
    it acts on: enable/disable of a pattern in a domain and a QEMU trace pattern of a
    domain share one key per pattern (the latest firing wins), snapshot and stop one
    each; every marker is its own. Safe to use from two threads (the QMP one waits)."""

    def __init__(self, limit: int = MAX_WAITING):
        self.limit = limit
        self.jobs: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()
        self.cv = threading.Condition()
        self.closed = False
        self._unique = itertools.count()

    def key(self, act: Action, dom: str) -> tuple:
        if act.kind in ("enable", "disable"):
            return ("events", act.domain or dom, act.arg)
        if act.kind.startswith("qemu_trace"):
            return ("qemu", dom, act.arg)
        if act.kind in ("snapshot", "stop"):
            return (act.kind,)
        return ("marker", next(self._unique))

    def put(self, job: tuple) -> None:
        trig, act, dom = job[0], job[1], job[2]
        k = self.key(act, dom)
        with self.cv:
            old = self.jobs.get(k)
            if old is not None and not self.closed:
                d = old[1].describe()
                old[0].coalesced[d] = old[0].coalesced.get(d, 0) + 1
                self.jobs[k] = job          # the latest firing wins, in the first's place
            elif len(self.jobs) >= self.limit or self.closed:
                # full, or fired by the final drain (whose actions do not run): counted
                d = act.describe()
                trig.dropped[d] = trig.dropped.get(d, 0) + 1
                return
            else:
                self.jobs[k] = job
            self.cv.notify()

    def get(self, wait: bool = False) -> Optional[tuple]:
        """The oldest waiting job; with `wait`, block until one comes or close()."""
        with self.cv:
            while wait and not self.jobs and not self.closed:
                self.cv.wait()
            if not self.jobs:
                return None
            return self.jobs.popitem(last=False)[1]

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def __len__(self) -> int:
        return len(self.jobs)


class Engine:
    def __init__(self, triggers: List[Trigger], col: Collector, run_local: Callable,
                 emit: Callable, qmp_path: Callable[[str], Optional[str]]):
        self.triggers = triggers
        self.col = col
        self.run_local = run_local      # (action, domain) -> None; raises on failure
        self.emit = emit                # (domain, event, raw_ts, rule, action, ok, error)
        self.qmp_path = qmp_path
        self.tables: Dict[int, tuple] = {}     # id(source) -> (n decls, {eid: [triggers]})
        self.pending = ActionQueue()           # local actions, run from the recorder's loop
        self.problems: List[str] = []          # rule/declaration mismatches, each once
        self.problems_not_listed = 0
        self.qmp_jobs = ActionQueue()          # QMP commands, run on their own thread
        self.qmp_thread: Optional[threading.Thread] = None

    # -- watching -----------------------------------------------------------------------
    def _table(self, src: Source) -> Dict[int, List[Trigger]]:
        """Which triggers watch which event ids of this source, extended as events are
        declared: each declaration is matched once (a guest filling its table costs
        linear time), and a trigger that can never hold for one is noted once."""
        decls = src.events.decls
        t = self.tables.get(id(src))
        if t is not None and t[0] == len(decls):
            return t[1]
        table: Dict[int, List[Trigger]] = t[1] if t is not None else {}
        done: set = t[3] if t is not None else set()
        new = [eid for eid in decls if eid not in done]
        for eid in new:
            d = decls[eid]
            done.add(eid)
            for trig in self.triggers:
                if trig.matches(src.domain.name, d.name):
                    why = check_fields(trig, tuple(a for a, _, _ in d.fields))
                    if why:
                        self._problem("trigger %d never holds for %s/%s: %s" % (
                            trig.index, src.domain.name, d.name, why))
                        continue
                    table.setdefault(eid, []).append(trig)
        # record sizes of every declared id (the record walk needs them all), updated
        # for the new ids only
        bounds = size_bounds(src.events.codecs, t[2] if t is not None else None, new)
        self.tables[id(src)] = (len(decls), table, bounds, done)
        return table

    def _problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.problems_not_listed += 1

    def on_content(self, src: Source, content: bytes) -> None:
        """Called from the collector's drain with validated records: never raises (the
        drain must go on whatever the rules make of the guest's data)."""
        try:
            self._on_content(src, content)
        except Exception as e:
            self.col.errors.add("triggers: %s" % describe(e))

    def _on_content(self, src: Source, content: bytes) -> None:
        table = self._table(src)
        if not table:
            return
        lo, hi = self.tables[id(src)][2]
        b = np.frombuffer(content + bytes(-len(content) % 8), dtype=np.uint8)
        starts, _ = record_starts(b, b.view("<u8"), lo, hi)
        if not len(starts):
            return
        eids = b.view("<u8")[starts].view(np.uint16)[0::4]
        for k in np.flatnonzero(np.isin(eids, list(table))):
            off = int(starts[k]) * 8
            eid, sf, _seq, ts = abi.REC_HEADER.unpack_from(content, off)
            c = src.events.codecs[eid]
            try:
                vals, _ = c.decode(content, off + abi.REC_HEADER_SIZE,
                                   min(off + (sf & abi.REC_SIZE_MASK), len(content)))
            except ValueError:
                continue
            fields = dict(zip(c.names, vals))
            for trig in table[eid]:
                if trig.when is not None:
                    try:
                        if not trig.when(fields):
                            continue
                    except PredicateError as e:
                        trig.misses += 1
                        trig.last_miss = str(e)
                        continue
                trig.fires += 1
                for act in trig.actions:
                    job = (trig, act, src.domain.name, c.decl.name, ts)
                    if act.kind.startswith("qemu_trace"):
                        self._start_qmp()
                        self.qmp_jobs.put(job)
                    else:
                        self.pending.put(job)

    # -- acting -------------------------------------------------------------------------
    def run_pending(self) -> None:
        """Run the actions fired since the last call (from the recorder's loop)."""
        while True:
            job = self.pending.get()
            if job is None:
                return
            trig, act, dom, name, ts = job
            try:
                self.run_local(act, dom)
                ok, err = True, ""
            except Exception as e:    # an action's failure is reported, never fatal
                ok, err = False, str(e) or type(e).__name__
            self._emit(dom, name, ts, trig, act.describe(), ok, err)

    def _emit(self, dom: str, name: str, ts: int, trig, desc: str, ok: bool,
              err: str) -> None:
        trig.ran[desc] = trig.ran.get(desc, 0) + 1
        try:
            self.emit(dom, name, ts, trig.index, desc, ok, err)
        except Exception as e:        # the host event is a report: never fatal either
            self.col.errors.add("triggers: %s" % describe(e))

    def _start_qmp(self) -> None:
        if self.qmp_thread is None and not self.qmp_jobs.closed:
            self.qmp_thread = threading.Thread(target=self._qmp_loop, name="hypertrace-qmp",
                                               daemon=True)
            self.qmp_thread.start()

    def _qmp_loop(self) -> None:
        """QMP commands, one after another: each one connects to the guest's monitor,
        with every step bounded (host/qmp.py), so a stuck QEMU delays only these."""
        while True:
            job = self.qmp_jobs.get(wait=True)
            if job is None:
                break
            trig, act, dom, name, ts = job
            ok, err = False, ""
            try:
                if self.qmp_path(dom) is None:
                    raise QmpError("domain %s is not a QEMU guest of this recording" % dom)
                set_trace_state(self.col.domain_guest(dom), act.arg,
                                act.kind == "qemu_trace_enable", QMP_TIMEOUT_S)
                ok = True
            except QmpError as e:
                err = str(e)
            except Exception as e:     # never the thread's end
                err = "QMP: %s" % describe(e)
            self._emit(dom, name, ts, trig, act.describe(), ok, err)

    def close(self) -> None:
        self.run_pending()
        self.qmp_jobs.close()         # the QMP thread runs what waits, then ends
        if self.qmp_thread is not None:
            self.qmp_thread.join(timeout=2 * QMP_TIMEOUT_S + 1)

    def summary(self) -> List[dict]:
        return [{"trigger": t.index, "event": t.event, "domain": t.domain, "when": t.when_text,
                "actions": [a.describe() for a in t.actions], "fired": t.fires,
                "predicate_errors": t.misses, "last_predicate_error": t.last_miss,
                "actions_ran": dict(t.ran), "actions_coalesced": dict(t.coalesced),
                "actions_dropped": dict(t.dropped)}
               for t in self.triggers]
