"""Findings of the adversarial review (issue 11, round 2): fake reboots, held
declaration-slot locks, held counter-slot locks.

* F2: a co-producer's hello with a new boot id makes the collector drop no live
  producer's ring: every event of the honest producer is recorded or counted,
  summed over the guest's boot domains;
* F5: declaring never waits per slot another process holds: a co-producer holding
  every empty declaration slot costs an honest app's first declaration a few ms at
  most; the refusal says so, and the event is declared once the locks are gone;
* F6: a co-producer holding every ring and every counter slot costs an honest app no
  sleeping per emit, and its losses still reach the index (its BYE carries them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import env, hypertrace, record, stats

PY = sys.executable


def _domains(st: dict, guest: str = "local") -> list:
    """The guest's boot domains: `local`, `local.boot2`, ..."""
    return [d for d in st["domains"] if d == guest or d.startswith(guest + ".boot")]


def _reconcile_boots(session: str, emitted: int, event: str, guest: str = "local") -> dict:
    """emitted = recorded + discarded + ringless losses, summed over every boot domain of
    the guest, counting only the streams that hold `event` (the honest producer's)."""
    st = stats(session)
    doms = _domains(st, guest)
    ss = [s for s in st["streams"] if s["domain"] in doms and s["per_event"].get(event)]
    fig = {"emitted": emitted, "domains": len(doms),
           "recorded": sum(s["per_event"][event] for s in ss),
           "discarded": sum(s["discarded"] for s in ss),
           "lost_without_ring": sum(st["domains"][d]["lost_without_ring"] for d in doms),
           "lost_in_refused_claims": sum(st["domains"][d]["lost_in_refused_claims"]
                                         for d in doms)}
    print("FIGURES", json.dumps(fig))
    assert fig["recorded"] + fig["discarded"] + fig["lost_without_ring"] + \
        fig["lost_in_refused_claims"] == emitted, fig
    return fig


# -- F2: fake reboots ----------------------------------------------------------------
HONEST_REBOOT = r"""
import os, sys, time
from hypertrace import guest
started, attacked = sys.argv[1], sys.argv[2]
tp = guest.event("honest_ev", "uint64_t i")
n = 0
def emit(k):
    global n
    for _ in range(k):
        tp(n)
        n += 1
        if n % 100 == 0:
            time.sleep(0.001)
emit(2000)
open(started, "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(attacked) and time.monotonic() < deadline:
    emit(100)                      # writing all along, while the hellos come
emit(5000)                         # and after them
print("HONEST EMITTED", n, os.path.exists(attacked))
"""

REBOOT_ATTACK = r"""
import os, socket, struct, sys, time
from hypertrace import abi
from hypertrace.guest.channel import parse_spec
started, attacked, n, alternate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
path, opts = parse_spec(os.environ["HYPERTRACE_CHANNEL"])
with open(path, "rb") as f:
    sid = f.read(40)[24:40]            # anyone who can read the region can say hello
deadline = time.monotonic() + 60
while not os.path.exists(started) and time.monotonic() < deadline:
    time.sleep(0.005)
boots = [os.urandom(16), os.urandom(16)]
answers = []
for k in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(opts["control"][5:])
    boot = boots[k % 2] if alternate == "1" else os.urandom(16)
    s.sendall(abi.frame(abi.MSG_HELLO, 1, sid + struct.pack("<Q", os.getpid()) + boot))
    answers.append(abi.unpack_str(s.recv(4096)[12:], 0)[0])
    s.close()
    time.sleep(0.03)
print("ATTACK", " ".join(answers))
open(attacked, "w").close()
"""

REBOOT_DRIVER = r"""
import subprocess, sys
honest, attack, tmp, n, alternate = sys.argv[1:6]
started, attacked = tmp + "/started", tmp + "/attacked"
a = subprocess.Popen([sys.executable, attack, started, attacked, n, alternate])
h = subprocess.run([sys.executable, honest, started, attacked], capture_output=True,
                   text=True, timeout=120)
a.wait(timeout=120)
print(h.stdout, h.stderr)
"""


def _fake_reboots(session: str, tmp_path, n: int, alternate: bool) -> dict:
    for name, text in (("honest.py", HONEST_REBOOT), ("attack.py", REBOOT_ATTACK),
                       ("driver.py", REBOOT_DRIVER)):
        (tmp_path / name).write_text(text)
    r = record(session, PY, str(tmp_path / "driver.py"), str(tmp_path / "honest.py"),
               str(tmp_path / "attack.py"), str(tmp_path), str(n), "1" if alternate else "0",
               timeout=300)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    out = r.stdout.split()
    assert "ATTACK" in out and "local.boot2" in out, r.stdout + r.stderr
    i = out.index("EMITTED")
    assert out[i + 2] == "True", r.stdout         # the hellos came while it was writing
    fig = _reconcile_boots(session, int(out[i + 1]), "honest_ev")
    assert fig["domains"] == n + 1
    # the honest producer's clock exchanges stay with its own boot's domain: nobody's
    # mailbox is answered into the clock of a boot someone else announced
    clocks = stats(session)["clocks"]
    assert clocks["local"]["samples"] > 0, clocks
    assert all(clocks[d]["samples"] == 0 for d in clocks if d.startswith("local.boot")), clocks
    return fig


def test_fake_reboot_hellos_lose_no_live_producers_events(session, tmp_path):
    """F2: a co-producer says hello three times with fresh boot ids while an honest
    producer writes (before: its ring was freed under it at the first hello; what it
    wrote afterwards was never drained nor counted: 10 799 of 50 000 vanished)."""
    fig = _fake_reboots(session, tmp_path, 3, alternate=False)
    assert fig["lost_without_ring"] == 0 and fig["discarded"] == 0, fig


def test_alternating_fake_boot_ids_lose_nothing_either(session, tmp_path):
    """F2: two boot ids in turn, each hello a "new boot" (before: repeated up to the 64
    boots a guest is served)."""
    _fake_reboots(session, tmp_path, 8, alternate=True)


# -- F5 and F6: a co-producer holding locks --------------------------------------------
LOCKER = r"""
import mmap, os, signal, struct, sys
from hypertrace import abi
from hypertrace.guest.channel import parse_spec
from hypertrace.guest.locks import ByteLocks
what, flag = sys.argv[1].split(","), sys.argv[2]
path, _ = parse_spec(os.environ["HYPERTRACE_CHANNEL"])
fd = os.open(path, os.O_RDWR)
mm = mmap.mmap(fd, os.fstat(fd).st_size)
os.close(fd)
hdr, lay = abi.parse_header(mm, len(mm))
locks = ByteLocks(path)
n = 0
if "decl" in what:                 # every empty declaration slot
    for i in range(lay.max_events):
        if struct.unpack_from("<I", mm, lay.decl(i))[0] == 0:
            n += locks.try_lock(lay.decl(i))
if "cnt" in what:                  # every counter slot
    for c in range(abi.N_CNT):
        n += locks.try_lock(abi.CNT_OFF + abi.CNT_SIZE * c)
if "rings" in what:                # every ring
    for i in range(lay.n_rings):
        n += locks.try_lock(lay.desc(i))
print("LOCKED", n, flush=True)
open(flag, "w").close()
os.kill(os.getpid(), signal.SIGSTOP)    # holds them, stopped, until killed
"""

# the honest application counts its main thread's sleeps: the library's waits for others
COUNTING_APP = r"""
import os, sys, threading, time
real_sleep = time.sleep
sleeps = [0]
def counted(s):
    if threading.current_thread() is threading.main_thread():
        sleeps[0] += 1
    real_sleep(s)
time.sleep = counted
n, released = int(sys.argv[1]), sys.argv[2]
from hypertrace import guest
tp = guest.event("honest_ev", "uint64_t i")
print("DECLARE_SLEEPS", sleeps[0], "ENABLED", tp.enabled, flush=True)
print("REFUSED", tp.refused, flush=True)
sleeps[0] = 0
for i in range(n):
    tp(i)
print("EMIT_SLEEPS", sleeps[0], flush=True)
if released != "-":
    open(released + ".go", "w").close()         # the driver may release the locks now
    deadline = time.monotonic() + 60
    while not tp.enabled and time.monotonic() < deadline:
        real_sleep(0.01)
    print("LATER_ENABLED", tp.enabled, tp.event_id, flush=True)
    for i in range(n):
        tp(n + i)
"""

LOCK_DRIVER = r"""
import os, signal, subprocess, sys, time
locker, app, what, n, tmp, release = sys.argv[1:7]
flag = tmp + "/locked"
p = subprocess.Popen([sys.executable, locker, what, flag])
deadline = time.monotonic() + 60
while not os.path.exists(flag) and time.monotonic() < deadline:
    time.sleep(0.01)
a = subprocess.Popen([sys.executable, app, n, tmp + "/released" if release == "1" else "-"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
if release == "1":
    while not os.path.exists(tmp + "/released.go") and a.poll() is None:
        time.sleep(0.01)
    p.kill()                        # its locks die with it
    p.wait()
try:
    out, err = a.communicate(timeout=120)
    print(out, err)
except subprocess.TimeoutExpired:
    a.kill()
    print("HONEST HUNG")
p.kill()
p.wait()
"""


def _locked(session: str, tmp_path, what: str, n: int, release: bool, opts=()) -> tuple:
    for name, text in (("locker.py", LOCKER), ("app.py", COUNTING_APP),
                       ("driver.py", LOCK_DRIVER)):
        (tmp_path / name).write_text(text)
    r = record(session, PY, str(tmp_path / "driver.py"), str(tmp_path / "locker.py"),
               str(tmp_path / "app.py"), what, str(n), str(tmp_path), "1" if release else "0",
               opts=opts, timeout=300)
    out = r.stdout
    assert "HONEST HUNG" not in out and "Traceback" not in out + r.stderr, out + r.stderr
    words = out.split()
    return r, {k: words[words.index(k) + 1] for k in ("DECLARE_SLEEPS", "ENABLED",
                                                        "EMIT_SLEEPS") if k in words}


def test_held_declaration_slots_cost_the_first_declaration_no_wait_per_slot(session,
                                                                           tmp_path):
    """F5: a co-producer holds the lock of every empty declaration slot. The honest app's
    first guest.event() sleeps a handful of times in all (before: 20 ms per slot, 5.3 s
    for 256 slots: thousands of sleeps); the refusal says the slots are held, not that
    the table is full; its records meanwhile are counted lost; and once the locks are
    gone the event is declared and recorded (before: refused for good)."""
    r, fig = _locked(session, tmp_path, "decl", 500, release=True)
    print("FIGURES", fig)
    assert int(fig["DECLARE_SLEEPS"]) <= 50, fig    # 2 declarations: 2 ms each at most
    assert fig["ENABLED"] == "False", fig
    refused = next(ln for ln in r.stdout.splitlines() if ln.startswith("REFUSED"))
    assert "held by other processes" in refused and "full" not in refused, refused
    assert "LATER_ENABLED True" in r.stdout, r.stdout + r.stderr
    # the 500 emitted while it waited for a slot: counted, not dropped silently
    fig = _reconcile_boots(session, 1000, "honest_ev")
    assert fig["recorded"] == 500 and fig["lost_without_ring"] == 500, fig
    assert stats(session)["domains"]["local"]["declarations_refused"] == 0


def test_every_ring_and_counter_slot_held_costs_no_sleep_and_loses_no_count(session,
                                                                           tmp_path):
    """F6: a stopped co-producer holds every ring and every counter slot. 2 000 emits of
    the honest app sleep 0 times (before: 10 rounds of 0.2 ms per emit, 10 s) and all
    2 000 are counted: its goodbye carries what no counter slot could take (before:
    lost_without_ring 0, recorded 0)."""
    _, fig = _locked(session, tmp_path, "rings,cnt", 2000, release=False)
    print("FIGURES", fig)
    assert fig["EMIT_SLEEPS"] == "0", fig
    st = stats(session)
    assert st["domains"]["local"]["lost_without_ring"] == 2000, st["domains"]
    assert not [s for s in st["streams"] if s["per_event"].get("honest_ev")]


CRASH_APP = r"""
import os, socket, struct, sys, time
from hypertrace import abi, guest
from hypertrace.guest.channel import parse_spec
flag = sys.argv[1]
tp = guest.event("honest_ev", "uint64_t i")
for i in range(2000):
    tp(i)
path, opts = parse_spec(os.environ["HYPERTRACE_CHANNEL"])
with open(path, "rb") as f:
    sid = f.read(40)[24:40]
s = socket.socket(socket.AF_UNIX)              # anyone's hello from a "new boot"
s.connect(opts["control"][5:])
s.sendall(abi.frame(abi.MSG_HELLO, 1, sid + struct.pack("<Q", os.getpid()) + os.urandom(16)))
print("FAKE", abi.unpack_str(s.recv(4096)[12:], 0)[0], flush=True)
s.close()
time.sleep(1.5)                                # the index names the claim's domain
open(flag + ".ready", "w").close()
deadline = time.monotonic() + 60
while not os.path.exists(flag) and time.monotonic() < deadline:   # the recorder dies
    time.sleep(0.01)
for i in range(2000, 4000):
    tp(i)                                      # into its ring, with no collector
open(flag + ".done", "w").close()
"""


def test_recover_after_a_fake_reboot_keeps_each_claim_in_its_boot(tmp_path):
    """F2 and recovery: the recorder dies after a fake-boot hello while the honest
    producer still writes into the ring it claimed before; `recover` drains that ring
    into the producer's own domain (the index names it), not the latest boot's."""
    app = tmp_path / "app.py"
    app.write_text(CRASH_APP)
    flag = str(tmp_path / "go")
    out = str(tmp_path / "s")
    rec = subprocess.Popen([PY, "-m", "hypertrace.cli", "record", "-o", out, "--",
                            PY, str(app), flag], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(flag + ".ready"):
            assert time.monotonic() < deadline and rec.poll() is None, rec.communicate()
            time.sleep(0.02)
        time.sleep(1.2)                        # an index written after the switch
    finally:
        os.kill(rec.pid, signal.SIGKILL)
        rec.wait()
    open(flag, "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(flag + ".done"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)                            # the app's exit releases its ring
    r = hypertrace("recover", out)
    assert "recovered" in r.stdout, r.stdout + r.stderr
    st = stats(out)
    ss = [s for s in st["streams"] if s["per_event"].get("honest_ev")]
    assert {s["domain"] for s in ss} == {"local"}, ss
    assert sum(s["per_event"]["honest_ev"] for s in ss) == 4000, ss
    assert "local.boot2" in st["domains"]


def test_a_real_reboots_new_boot_keeps_its_clock_mailbox(session, tmp_path):
    """F2, mailboxes: the host no longer zeroes them at a new boot; the slots claimed
    before the hello are retired, but a rebooted guest's process that takes a dead boot's
    slot (without it ever being seen free) is served again: its exchanges go through the
    mailbox, into its own boot's clock."""
    from test_clock import REBOOT

    from hypertrace.read.session import Session
    app = tmp_path / "reboot.py"
    app.write_text(REBOOT)
    record(session, PY, str(app), opts=("--sync-interval", "0.05"))
    clocks = Session(session).index["clocks"]
    print("FIGURES", {d: clocks[d].get("mailbox_samples") for d in ("local", "local.boot2")})
    assert clocks["local"]["mailbox_samples"] > 0, clocks["local"]
    assert clocks["local.boot2"]["mailbox_samples"] > 0, clocks["local.boot2"]
