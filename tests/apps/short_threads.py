"""1 000 sequential short-lived threads x 10 events."""
import threading

from hypertrace import guest

tp = guest.event("short", "uint32_t t, uint32_t i")
def run(t):
    for i in range(10):
        tp(t, i)
for t in range(1000):
    th = threading.Thread(target=run, args=(t,))
    th.start()
    th.join()
print("DONE")
