"""Runs inside a QEMU guest: a region of interest that steers QEMU's own tracing.

roi_begin makes the host's trigger enable a QEMU trace event (over QMP); the
guest then does activity that fires it (writes on its virtio-serial port, as
every sync point does); roi_end makes the trigger disable it again. Activity
before and after the region must leave no QEMU event. Periodic clock exchanges
are off (HYPERTRACE_SYNC_INTERVAL is large) so that only this activity writes.
"""

import json
import sys
import time

print("HT-BOOTED", flush=True)

from hypertrace import guest  # noqa: E402

roi_b = guest.event("roi_begin", "uint32_t id")
roi_e = guest.event("roi_end", "uint32_t id")
WAIT = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0

for i in range(3):
    guest.sync_point("before", i)
time.sleep(WAIT)
roi_b(1)
time.sleep(WAIT)          # the collector sees roi_begin, the trigger asks QEMU over QMP
for i in range(10):
    guest.sync_point("inside", i)
time.sleep(WAIT)
roi_e(1)
time.sleep(WAIT)          # ... and the trigger switches the QEMU event off again
for i in range(3):
    guest.sync_point("after", i)
print("HT-RESULT " + json.dumps({"ok": True}), flush=True)
guest.disconnect()
