"""200 forked children x 50 events, each leaving by os._exit (no atexit, no
thread-local destructor): every event must be recorded or counted."""
import os

from hypertrace import guest

tp = guest.event("forked", "uint32_t child, uint32_t i")
tp(0, 0)
kids = []
for k in range(200):
    pid = os.fork()
    if pid == 0:
        for i in range(50):
            tp(k, i)
        os._exit(0)          # no atexit, no thread-local destructor: nothing runs after
    kids.append(pid)
print("BAD", sum(os.waitpid(p, 0)[1] != 0 for p in kids))
