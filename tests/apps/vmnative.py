"""Runs inside a QEMU guest: a C program (the native producer, built on the host with
gen-c) and this Python program emit into the same ivshmem BAR at the same time, and
both make sync points over the virtio-serial port. Each finds the BAR and the port
itself (HYPERTRACE_CHANNEL=ivshmem, no control= option).

The C program emits the first half of its events, prints HALF and waits; this
program emits its own first half, lets the C program go on, and emits its second
half while the C program emits its own.

Usage: vmnative.py C_PROGRAM N_EVENTS
"""

import json
import os
import select
import subprocess
import sys

print("HT-BOOTED", flush=True)

from hypertrace import guest  # noqa: E402

app, n = sys.argv[1], int(sys.argv[2])
c = subprocess.Popen([app, str(n), "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
tick = guest.event("py_tick", "uint32_t i, int64_t v, const char *tag")
mixed = guest.event("mixed_ev", "uint32_t who, uint64_t i")   # the C program's too
ch = guest.channel()
rtts, errors = [], []


def mark(name, *args):
    try:
        rtts.append(guest.sync_point(name, *args))
    except Exception as e:      # reported on the host with the rest
        errors.append("sync_point %s: %r" % (name, e))


for i in range(n):
    if i == n // 2:
        # the C program is half way (and waits): both go on from here at the same time
        r, _, _ = select.select([c.stdout], [], [], 300)
        half = c.stdout.readline() if r else b""
        if half.strip() != b"HALF":
            errors.append("the C program did not reach its half: %r" % half)
        c.stdin.write(b"g")
        c.stdin.flush()
    tick(i, -i * 12345 - 7, "py #%d \u00fc" % i)
    if i % 50 == 0:
        mixed(2, i)
    if i % (n // 4) == 0:
        mark("py_mark", i)
mark("py_done")
try:
    out, err = c.communicate(timeout=300)
except subprocess.TimeoutExpired:
    c.kill()
    out, err = c.communicate()
    errors.append("the C program did not finish")
print("HT-RESULT " + json.dumps({
    "region": ch.path if ch is not None else None, "py_pid": os.getpid(), "c_pid": c.pid,
    "py_rtts": rtts, "errors": errors, "c_rc": c.returncode,
    "c_out": out.decode("utf-8", "replace"), "c_err": err.decode("utf-8", "replace"),
    "accelerated": bool(getattr(guest, "ACCELERATED", False))}), flush=True)
guest.disconnect()
