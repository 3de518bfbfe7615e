"""Chrome Trace Event JSON (chrome://tracing, Perfetto's legacy import), written streaming.

A process per domain, a thread per stream; events are instants with their
fields as args; `X_begin`/`X_end` pairs become B/E slices; each sync point is a
flow from the guest's `hypertrace_sync` to the host's `hypertrace_sync_host`.
Timestamps are µs on the host timeline.
"""

from __future__ import annotations

import json
from typing import IO, Dict

from ..session import Session

SYNC_GUEST = "hypertrace_sync"
SYNC_HOST = "hypertrace_sync_host"


def _args(fields: dict) -> dict:
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}


def write(s: Session, out: IO[str]) -> int:
    """Write the whole session; returns the number of trace events written."""
    pids: Dict[str, int] = {}
    tids: Dict[str, int] = {}
    n = 0
    out.write('{"displayTimeUnit": "ns", "traceEvents": [\n')
    first = True

    def emit(ev: dict) -> None:
        nonlocal first, n
        out.write(("" if first else ",\n") + json.dumps(ev, separators=(",", ":")))
        first = False
        n += 1

    for i, d in enumerate(s.domains, 1):
        pids[d] = i
        emit({"ph": "M", "name": "process_name", "pid": i, "tid": 0, "args": {"name": d}})
    for j, st in enumerate(s.streams, 1):
        if not st.get("file"):
            continue
        tids[st["file"]] = j
        emit({"ph": "M", "name": "thread_name", "pid": pids[st["domain"]], "tid": j,
              "args": {"name": "%s %s (pid %s tid %s)" % (st["file"], st.get("thread", ""),
                                                         st.get("pid"), st.get("tid"))}})
    for e in s.events():
        base = {"pid": pids[e.domain], "tid": tids[e.stream], "ts": e.ts / 1000.0}
        args = _args(e.fields)
        if e.name.endswith("_begin") or e.name.endswith("_end"):
            span, _, edge = e.name.rpartition("_")
            emit(dict(base, ph="B" if edge == "begin" else "E", name=span, cat=e.domain,
                      args=args))
            continue
        emit(dict(base, ph="i", s="t", name=e.name, cat=e.domain, args=args))
        if e.name == SYNC_GUEST:
            emit(dict(base, ph="s", name="sync", cat="sync", id=_flow_id(e.domain, args)))
        elif e.name == SYNC_HOST:
            emit(dict(base, ph="f", bp="e", name="sync", cat="sync",
                      id=_flow_id(args.get("domain", ""), args)))
    out.write("\n]}\n")
    return n


def _flow_id(domain: str, args: dict) -> str:
    return "%s:%s" % (domain, args.get("sync_id"))
