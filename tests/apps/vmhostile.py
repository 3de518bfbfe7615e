"""Runs inside a QEMU guest and attacks its own channel: garbage records, nonsense
positions, a bad declaration, and garbage bytes on the control port."""

import os
import random
import struct
import sys
import time

print("HT-BOOTED", flush=True)

from hypertrace import abi, guest  # noqa: E402
from hypertrace.guest.control import PortTransport  # noqa: E402
from hypertrace.guest.devices import PORT_PREFIX, find_port  # noqa: E402

rnd = random.Random(99)
tp = guest.event("looks_honest", "uint64_t i")
ch = guest.channel()
tp(0)
w = guest._tls.w
mm, lay = ch.mm, ch.layout
free = next(i for i in range(lay.max_events) if struct.unpack_from("<I", mm, lay.decl(i))[0] == 0)
bad = b"evil(((int"
mm[lay.decl(free) + 8:lay.decl(free) + 8 + len(bad)] = bad
struct.pack_into("<II", mm, lay.decl(free), 1, len(bad))
end = time.monotonic() + 3
n = 0
while time.monotonic() < end:
    off = w.pos & w.mask
    k = min(rnd.choice([16, 24, 64, 512]), lay.ring_size - off)
    mm[w.base + off:w.base + off + k] = bytes(rnd.getrandbits(8) for _ in range(k))
    w.pos += k
    struct.pack_into("<Q", mm, w.desc, rnd.choice([w.pos, w.pos, 2**63, 0]))
    n += 1
    time.sleep(0.001)
port = find_port(PORT_PREFIX + ch.header.name)
# the port is exclusive: open it as the library does, waiting while this process's own
# clock thread holds it for an exchange (EBUSY)
t = PortTransport(port)
t.sendall(os.urandom(256))
try:       # the host drops this peer on the garbage and may stop reading the port
    t.sendall(abi.CTL_HEADER.pack(abi.CTL_MAGIC, 1, abi.MSG_HELLO, 1, 10**6))
except OSError:
    pass
t.close()
print("HT-RESULT {\"attacks\": %d}" % n, flush=True)
sys.exit(0)
