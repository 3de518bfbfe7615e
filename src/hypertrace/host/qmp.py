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


def set_trace_state(guest: str, pattern: str, enable: bool,
                    timeout: float = QMP_TIMEOUT_S) -> int:
    """Enable or disable QEMU's trace events matching `pattern` in guest's QEMU;
    returns how many QEMU has of that pattern. Every step (connect, greeting, each
    command, goodbye) within `timeout`: a silent or stuck monitor is an error, never
    a wait without end."""
    try:
        path = socket_path(guest)
    except (OSError, ValueError) as e:
        raise QmpError("guest %s: %s" % (guest, e)) from None
    if not os.path.lexists(path) or not runtime.our_socket(path):
        raise QmpError("guest %s has no QMP socket of ours at %s (was it started with "
                       "`hypertrace qemu-args --name %s`?)" % (guest, path, guest))
    try:
        return asyncio.run(_set(path, pattern, enable, timeout))
    except asyncio.TimeoutError:
        raise QmpError("QMP of guest %s: no answer within %g s" % (guest, timeout)) from None
    except QmpError:
        raise
    except Exception as e:      # QMPError (QEMU's refusal: ExecuteError), OSError, garbage
        raise QmpError("QMP of guest %s: %s" % (guest, str(e) or describe(e))) from None


async def _set(path: str, pattern: str, enable: bool, timeout: float) -> int:
    from qemu.qmp import QMPClient
    c = QMPClient("hypertrace")
    await asyncio.wait_for(c.connect(path), timeout)
    try:
        found = await asyncio.wait_for(
            c.execute("trace-event-get-state", {"name": pattern}), timeout)
        await asyncio.wait_for(
            c.execute("trace-event-set-state", {"name": pattern, "enable": enable}), timeout)
    finally:
        try:
            await asyncio.wait_for(c.disconnect(), timeout)
        except Exception:
            pass
    return len(found) if isinstance(found, list) else 0
