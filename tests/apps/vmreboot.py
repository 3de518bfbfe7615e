"""Runs inside a QEMU guest at each boot: emits, makes sync points, and after the
first boot reboots the guest on the spot (no goodbye, rings left claimed).

Usage: vmreboot.py STATE_DIR N_EVENTS (STATE_DIR is shared with the host: --rwdir)
"""

import json
import os
import sys

print("HT-BOOTED", flush=True)

from hypertrace import guest  # noqa: E402

state, n = sys.argv[1], int(sys.argv[2])
marker = os.path.join(state, "booted-once")
boot = 2 if os.path.exists(marker) else 1
tick = guest.event("vm_boot_tick", "uint32_t boot, uint32_t i")
ch = guest.channel()
assert ch is not None, "no channel"
rtts = []
for i in range(n):
    tick(boot, i)
    if i % (n // 4) == 0:
        rtts.append(guest.sync_point("vm_boot_mark", boot, i))
rtts.append(guest.sync_point("vm_boot_last", boot))
print("HT-BOOT %d emitted %d" % (boot, n), flush=True)
if boot == 1:
    with open(marker, "w") as f:
        f.write("1")
        f.flush()
        os.fsync(f.fileno())
    with open("/proc/sysrq-trigger", "w") as f:      # reboot now, as a crash would
        f.write("b")
else:
    print("HT-RESULT " + json.dumps({"rtts": rtts}), flush=True)
    guest.disconnect()
