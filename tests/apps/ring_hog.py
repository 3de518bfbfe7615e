"""32 threads of this process claim every ring and keep them; an honest process
beside it emits 1 000 events, which can only be counted as lost."""
import subprocess
import sys
import threading

from hypertrace import guest

tp = guest.event("hog", "uint32_t t")
held, done = threading.Barrier(33), threading.Event()
def run(t):
    tp(t)                    # claims a ring, then keeps it
    held.wait()
    done.wait()
ts = [threading.Thread(target=run, args=(t,)) for t in range(32)]
for t in ts:
    t.start()
held.wait()
r = subprocess.run([sys.executable, "-c", "from hypertrace import guest\n"
                    "tp = guest.event('honest', 'uint32_t i')\n"
                    "for i in range(1000):\n    tp(i)\nprint('HONEST', tp.enabled)\n"],
                   capture_output=True, text=True, timeout=60)
print(r.stdout, r.stderr)
done.set()
for t in ts:
    t.join()
