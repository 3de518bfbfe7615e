"""Running triggers: watch the records the collector copies, fire the configured actions.

The collector hands every packet of validated records to `Engine.on_content`.
Only records of event ids that some trigger names are decoded (the others are
skipped by their sizes), so a session without triggers pays nothing. Actions
that change the recording (enable/disable patterns, snapshot, stop, marker) run
in the recorder's loop; QMP commands run on their own thread so that a slow or
dead QEMU monitor never stalls draining. Each action, done or failed, becomes a
`hypertrace_trigger` host event carrying the triggering event's timestamp.
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import threading
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import abi
from ..columns import record_starts, size_bounds
from .collector import Collector, Source
from .triggers import Trigger, check_fields

QMP_TIMEOUT_S = 2.0


class Engine:
    def __init__(self, triggers: List[Trigger], col: Collector, run_local: Callable,
                 emit: Callable, qmp_path: Callable[[str], Optional[str]]):
        self.triggers = triggers
        self.col = col
        self.run_local = run_local      # (action, domain) -> None; raises on failure
        self.emit = emit                # (domain, event, raw_ts, rule, action, ok, error)
        self.qmp_path = qmp_path
        self.tables: Dict[int, tuple] = {}     # id(source) -> (n decls, {eid: [triggers]})
        self.pending: collections.deque = collections.deque()
        self.problems: List[str] = []
        self.qmp_jobs: queue.Queue = queue.Queue()
        self.qmp_thread: Optional[threading.Thread] = None

    # -- watching -----------------------------------------------------------------------
    def _table(self, src: Source) -> Dict[int, List[Trigger]]:
        decls = src.events.decls
        t = self.tables.get(id(src))
        if t is not None and t[0] == len(decls):
            return t[1]
        table: Dict[int, List[Trigger]] = {}
        for eid, d in decls.items():
            for trig in self.triggers:
                if trig.matches(src.domain.name, d.name):
                    why = check_fields(trig, tuple(a for a, _, _ in d.fields))
                    if why:
                        self.problems.append("trigger %d never holds for %s/%s: %s" % (
                            trig.index, src.domain.name, d.name, why))
                        continue
                    table.setdefault(eid, []).append(trig)
        self.tables[id(src)] = (len(decls), table, size_bounds(src.events.codecs))
        return table

    def on_content(self, src: Source, content: bytes) -> None:
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
                    except (KeyError, TypeError):
                        trig.misses += 1
                        continue
                trig.fires += 1
                for act in trig.actions:
                    self.pending.append((trig, act, src.domain.name, c.decl.name, ts))

    # -- acting -------------------------------------------------------------------------
    def run_pending(self) -> None:
        """Run the actions fired since the last call (from the recorder's loop)."""
        while self.pending:
            trig, act, dom, name, ts = self.pending.popleft()
            if act.kind.startswith("qemu_trace"):
                self._start_qmp()
                self.qmp_jobs.put((trig, act, dom, name, ts))
                continue
            try:
                self.run_local(act, dom)
                ok, err = True, ""
            except Exception as e:    # an action's failure is reported, never fatal
                ok, err = False, str(e) or type(e).__name__
            self.emit(dom, name, ts, trig.index, act.describe(), ok, err)

    def _start_qmp(self) -> None:
        if self.qmp_thread is None:
            self.qmp_thread = threading.Thread(target=self._qmp_loop, name="hypertrace-qmp",
                                               daemon=True)
            self.qmp_thread.start()

    def _qmp_loop(self) -> None:
        from qemu.qmp import QMPError
        from qemu.qmp.legacy import QEMUMonitorProtocol
        asyncio.set_event_loop(asyncio.new_event_loop())
        monitors: Dict[str, QEMUMonitorProtocol] = {}
        while True:
            job = self.qmp_jobs.get()
            if job is None:
                break
            trig, act, dom, name, ts = job
            ok, err = False, ""
            path = self.qmp_path(dom)
            try:
                if path is None:
                    raise RuntimeError("domain %s is not a QEMU guest of this recording" % dom)
                m = monitors.get(dom)
                if m is None:
                    if not os.path.exists(path):
                        raise RuntimeError("no QMP socket at %s" % path)
                    m = QEMUMonitorProtocol(path)
                    m.settimeout(QMP_TIMEOUT_S)
                    m.connect()
                    monitors[dom] = m
                m.cmd("trace-event-set-state", name=act.arg,
                      enable=act.kind == "qemu_trace_enable")
                ok = True
            except (QMPError, OSError, RuntimeError, asyncio.TimeoutError, EOFError) as e:
                err = "QMP %s: %s" % (path, str(e) or type(e).__name__)
                m = monitors.pop(dom, None)
                if m is not None:
                    try:
                        m.close()
                    except Exception:
                        pass
            self.emit(dom, name, ts, trig.index, act.describe(), ok, err)
        for m in monitors.values():
            try:
                m.close()
            except Exception:
                pass

    def close(self) -> None:
        self.run_pending()
        if self.qmp_thread is not None:
            self.qmp_jobs.put(None)
            self.qmp_thread.join(timeout=2 * QMP_TIMEOUT_S + 1)

    def summary(self) -> List[dict]:
        return [{"trigger": t.index, "event": t.event, "domain": t.domain, "when": t.when_text,
                 "actions": [a.describe() for a in t.actions], "fired": t.fires,
                 "predicate_errors": t.misses} for t in self.triggers]
