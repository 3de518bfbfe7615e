"""QEMU's trace events switched over a guest's QMP socket, from outside the recorder:
`hypertrace ctl DIR qemu-enable|qemu-disable PATTERN --domain NAME` (what a bpftrace
script reacting to a guest's probe runs, examples/usdt/roi-qemu.bt).

Only the QMP socket `qemu-args` gave guest NAME's QEMU is tried: a socket of ours in
the private runtime directory (runtime.our_socket), never a path from elsewhere.
"""

from __future__ import annotations

import asyncio
import os

from . import runtime
from .errors import describe

QMP_TIMEOUT_S = 2.0


class QmpError(Exception):
    """No QMP socket of that guest, or QEMU refused or did not answer (one line)."""


def socket_path(guest: str) -> str:
    """Guest `guest`'s QMP socket (a name `qemu-args` accepts; ValueError otherwise)."""
    return runtime.qemu_region_path(guest) + ".qmp"


def set_trace_state(guest: str, pattern: str, enable: bool) -> int:
    """Enable or disable QEMU's trace events matching `pattern` in guest's QEMU;
    returns how many QEMU has of that pattern."""
    from qemu.qmp import QMPError
    from qemu.qmp.legacy import QEMUMonitorProtocol
    try:
        path = socket_path(guest)
    except (OSError, ValueError) as e:
        raise QmpError("guest %s: %s" % (guest, e)) from None
    if not os.path.lexists(path) or not runtime.our_socket(path):
        raise QmpError("guest %s has no QMP socket of ours at %s (was it started with "
                       "`hypertrace qemu-args --name %s`?)" % (guest, path, guest))
    asyncio.set_event_loop(asyncio.new_event_loop())
    m = QEMUMonitorProtocol(path)
    m.settimeout(QMP_TIMEOUT_S)
    try:
        m.connect()
        # qemu.qmp's cmd returns the command's "return" value; QEMU's refusal (no
        # event of that name) is an ExecuteError, a QMPError
        found = m.cmd("trace-event-get-state", name=pattern)
        m.cmd("trace-event-set-state", name=pattern, enable=enable)
        return len(found) if isinstance(found, list) else 0
    except (QMPError, OSError, asyncio.TimeoutError, EOFError) as e:
        raise QmpError("QMP of guest %s: %s" % (guest, str(e) or type(e).__name__)) from None
    except Exception as e:          # whatever else the monitor's reply made of qemu.qmp
        raise QmpError("QMP of guest %s: %s" % (guest, describe(e))) from None
    finally:
        try:
            m.close()
        except Exception:
            pass
