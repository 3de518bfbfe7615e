"""Function tracing's test program: fib in threads (and a child process), then a sync
point. Prints `PYFUNCS n1 n2 ...` (the fib arguments) so the test knows the calls."""

import os
import subprocess
import sys
import threading


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def other(k):
    return [leaf(i) for i in range(k)]


def leaf(i):
    return i * 2


def main() -> None:
    ns = [int(x) for x in sys.argv[1].split(",")]
    child = len(sys.argv) > 2 and sys.argv[2] == "child"
    fib(ns[0])
    ts = [threading.Thread(target=fib, args=(n,), name="fib%d" % n) for n in ns[1:]]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    other(100)
    if child:
        subprocess.run([sys.executable, os.path.abspath(__file__), str(ns[0])], check=True)
    if os.environ.get("HYPERTRACE_CHANNEL", "").startswith("ivshmem"):
        from hypertrace import guest
        guest.sync_point("fib_done")
    print("PYFUNCS", " ".join(map(str, ns)), flush=True)


if __name__ == "__main__":
    main()
