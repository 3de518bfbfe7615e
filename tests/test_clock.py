"""Clock correlation: simulated guest clocks over the real control socket, and real runs."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from conftest import ROOT, babeltrace, env, hypertrace, local, record, stats

from hypertrace import abi
from hypertrace.host import clock
from hypertrace.read import clockmap
from hypertrace.read.session import Session

SIM = os.path.join(ROOT, "tests", "apps", "simclock.py")


@pytest.mark.parametrize("offset_s,ppm,pause", [(5, 200, 0.0), (-3, -200, 0.0), (2, 150, 0.4)],
                         ids=["+5s+200ppm", "-3s-200ppm", "+2s+150ppm-paused"])
def test_simulated_clock_is_mapped_within_the_reported_uncertainty(session, offset_s, ppm,
                                                                    pause):
    r = record(session, sys.executable, SIM, str(offset_s * 10**9), str(ppm), "2.5", "1.2",
               str(pause), opts=("--sync-interval", "0.05"))
    pause_g = int(r.stdout.split("PAUSE_G ")[1].split()[0]) if pause else None
    s = Session(session)
    host_off = s.index["host_clock_offset_ns"]
    c = s.clocks["local"]
    assert c["kind"] == "estimated" and c["causality_violations"] == 0
    assert c["samples"] > 40
    assert len(c["segments"]) == (2 if pause else 1), c["segments"]
    # the drift is known as well as the samples allow: within the band they leave
    main = max(c["segments"], key=lambda x: x["samples"])
    tol = 2e6 * main["uncertainty_ns"] / (main["g_end"] - main["g_start"]) + 1
    assert abs(c["drift_ppm"] - ppm) <= tol, (c["drift_ppm"], tol)
    worst = 0.0
    n = 0
    for e in s.events("local"):
        g = e.raw_ts
        truth = (g - offset_s * 10**9) / (1 + ppm * 1e-6)
        if pause_g is not None and g > pause_g:
            truth += pause * 1e9
        err = abs(e.ts - (truth + host_off))
        assert err <= e.ts_uncertainty + 2, (e.name, g, err, e.ts_uncertainty)
        worst = max(worst, err)
        n += 1
    assert n > 1000
    st = stats(session)
    sp = st["sync_points"]["local"]
    # a sync point's mapped send never follows its host receive
    assert sp["count"] >= 5 and sp["latency_ns"]["min"] >= -c["uncertainty_ns"]
    print("sim %+ds %+dppm pause %.1fs: %d events, worst error %.0f ns, reported uncertainty "
          "%d ns, drift %.2f ppm" % (offset_s, ppm, pause, n, worst, c["uncertainty_ns"],
                                      c["drift_ppm"]))


def test_estimator_on_synthetic_exchanges():
    rng = np.random.default_rng(3)
    h1 = np.sort(rng.uniform(1e9, 9e9, 400)).astype(np.int64)
    h1 = h1[(h1 < 4e9) | (h1 > 5e9)]                    # the guest was paused for 1 s at 4 s
    n = len(h1)

    def g(h):
        return np.where(h > 4e9, h - 10**9, h) * (1 - 80e-6) + 7 * 10**9

    t2 = h1 + rng.exponential(30_000, n).astype(np.int64) + 2_000
    t3 = t2 + 500
    h4 = t3 + rng.exponential(30_000, n).astype(np.int64) + 2_000
    samples = list(zip(g(h1).astype(np.int64), t2, t3, g(h4).astype(np.int64)))
    fit = clock.fit("sim", samples)
    summ = fit.summary()
    assert len(fit.segments) == 2 and summ["causality_violations"] == 0
    assert abs(summ["drift_ppm"] + 80) < 5
    for h in rng.uniform(1.1e9, 8.9e9, 2000):
        if 3.9e9 < h < 5.1e9:
            continue
        m, unc = clockmap.map_time(fit.segments, int(g(np.int64(h))))
        assert abs(m - h) <= unc + 1


def test_same_host_offset_is_zero_within_the_uncertainty(session):
    record(session, sys.executable, os.path.join(ROOT, "tests", "apps", "workload.py"), "2",
           "1", "20000", opts=("--sync-interval", "0.02"))
    c = stats(session)["clocks"]["local"]
    assert c["kind"] == "estimated" and c["causality_violations"] == 0
    assert abs(c["offset_ns"]) <= c["uncertainty_ns"], c
    print("same host: offset %d ns, uncertainty %d ns, %d samples, min rtt %d ns" % (
        c["offset_ns"], c["uncertainty_ns"], c["samples"], c["min_rtt_ns"]))


PINGPONG = r"""
import os, subprocess, sys, time
from hypertrace import guest
OFF = 7 * 10**9
guest.connect(clock=lambda: time.monotonic_ns() + OFF, sync_interval=0.05)
ping = guest.event("ping", "uint32_t i")
ack = guest.event("ping_ack", "uint32_t i")
hostenv = dict(os.environ, HYPERTRACE_CHANNEL=os.environ["HYPERTRACE_HOST_CHANNEL"])
p = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=hostenv,
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
for i in range(200):
    ping(i)
    p.stdin.write("%d\n" % i)
    p.stdin.flush()
    assert int(p.stdout.readline()) == i
    ack(i)
p.stdin.close()
p.wait()
"""
PONG = r"""
import sys
from hypertrace import guest
pong = guest.event("pong", "uint32_t i")
for line in sys.stdin:
    pong(int(line))
    print(line.strip(), flush=True)
"""


def test_guest_and_host_events_interleave_in_causal_order(session, tmp_path):
    app = tmp_path / "pingpong.py"
    app.write_text(PINGPONG)
    record(session, sys.executable, str(app), PONG, opts=("--sync-interval", "0.05"))
    evs = [json.loads(x) for x in hypertrace("report", session, "--json").stdout.splitlines()]
    order = [(e["name"], e["fields"]["i"]) for e in evs if e["name"] in ("ping", "pong",
                                                                          "ping_ack")]
    assert len(order) == 600
    # causality holds up to the stated uncertainty: an effect is never placed before its
    # cause by more than the guest timestamps' uncertainty (events closer than that may
    # legitimately swap; on a quiet machine none do)
    at = {(e["name"], e["fields"]["i"]): e for e in evs if e["name"] in ("ping", "pong",
                                                                          "ping_ack")}
    swapped = 0
    for i in range(200):
        ping, pong, ack = at[("ping", i)], at[("pong", i)], at[("ping_ack", i)]
        assert ping["ts"] <= pong["ts"] + ping["ts_uncertainty_ns"]
        assert pong["ts"] <= ack["ts"] + ack["ts_uncertainty_ns"]
        swapped += not (ping["ts"] <= pong["ts"] <= ack["ts"])
    doms = {e["name"]: e["domain"] for e in evs}
    assert doms["ping"] == "local" and doms["pong"] == "host"
    # babeltrace2 places them with the CTF clock offset (no drift): the same events, each
    # within uncertainty + drift over the run of where report puts it
    bt = subprocess.run(["babeltrace2", "--clock-seconds", session], capture_output=True,
                        text=True, check=True).stdout.splitlines()
    c = stats(session)["clocks"]["local"]
    slack = c["uncertainty_ns"] + abs(c["drift_ppm"]) * 1e-6 * 3e9 + 1000
    n = 0
    for line in bt:
        m = re.match(r"\[(\d+)\.(\d{9})\] .* (ping|pong|ping_ack): \{ i = (\d+) \}", line)
        if m:
            ts = int(m.group(1)) * 10**9 + int(m.group(2))
            assert abs(ts - at[(m.group(3), int(m.group(4)))]["ts"]) <= slack
            n += 1
    assert n == 600
    print("ping/pong: %d of 200 round trips placed out of order within the uncertainty"
          % swapped)
    # raw guest time is 7 s ahead of the host timeline
    ping0 = next(e for e in evs if e["name"] == "ping")
    assert abs((ping0["raw_ts"] - 7 * 10**9) + Session(session).index["host_clock_offset_ns"]
               - ping0["ts"]) <= ping0["ts_uncertainty_ns"] + 1


SYNCER = r"""
import sys
from hypertrace import guest
rtts = [guest.sync_point("mark", i, "label %d" % i) for i in range(20)]
assert all(r > 0 for r in rtts)
print("RTT_MIN", min(rtts))
"""


def test_sync_points_are_recorded_on_both_sides(session, tmp_path):
    app = tmp_path / "syncer.py"
    app.write_text(SYNCER)
    r = record(session, sys.executable, str(app))
    assert int(r.stdout.split("RTT_MIN ")[1].split()[0]) > 0
    events, _ = babeltrace(session, internal=True)
    guest_side = [f for n, f in events if n == "hypertrace_sync"]
    host_side = [f for n, f in events if n == "hypertrace_sync_host"]
    assert [int(f["sync_id"]) for f in guest_side] == list(range(1, 21))
    assert [int(f["sync_id"]) for f in host_side] == list(range(1, 21))
    assert all(f["name"] == "mark" for f in guest_side + host_side)
    assert json.loads(guest_side[3]["args"]) == [3, "label 3"]
    # both timestamps: the host record carries the guest's send time
    assert [int(f["guest_send"]) for f in host_side] == [int(f["t_send"]) for f in guest_side]
    s = Session(session)
    syncs = s.index["syncs"]["local"]
    assert len(syncs) == 20
    off = s.index["host_clock_offset_ns"]
    for x in syncs:
        # never received before it was sent, on the one timeline
        assert s.to_host("local", x["guest_send"]) <= x["host_recv"] + off + \
            s.clocks["local"]["uncertainty_ns"]
        assert x["guest_recv"] > x["guest_send"]
    st = stats(session)
    assert st["sync_points"]["local"]["count"] == 20


FORKER = r"""
import os, signal
from hypertrace import guest
guest.sync_point("parent")
ctl = guest._control
ctl.lock.acquire()          # held, as by the clock thread during an exchange ...
pid = os.fork()             # ... when another thread forks
if pid == 0:
    signal.alarm(20)        # a deadlock would end here, with a failing status
    guest.sync_point("child")
    os._exit(0)
ctl.lock.release()
_, status = os.waitpid(pid, 0)
print("CHILD", status)
"""


def test_fork_while_the_control_lock_is_held_does_not_deadlock_the_child(session, tmp_path):
    """A process forked while its clock thread held the control lock (a worker pool
    started during the first burst of clock exchanges) can still make sync points."""
    app = tmp_path / "forker.py"
    app.write_text(FORKER)
    r = record(session, sys.executable, str(app))
    assert "CHILD 0" in r.stdout, r.stdout + r.stderr
    events, _ = babeltrace(session, internal=True)
    assert sorted(f["name"] for n, f in events if n == "hypertrace_sync") == ["child", "parent"]


def _ctl_path(proc_out: str) -> str:
    return proc_out.split("control=unix:")[1].split()[0].rstrip(",;")


def test_hostile_control_peers_are_dropped_and_others_carry_on(tmp_path):
    out = str(tmp_path / "attach")
    chan = "/dev/shm/ht-ctl-%s" % uuid.uuid4().hex[:8]
    col = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--channel", "shm:" + chan], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env())
    try:
        line = col.stdout.readline()
        # the control socket is in the private runtime directory, named in the serving line
        ctl = _ctl_path(line)
        assert "control=unix:" + ctl in line and os.path.dirname(ctl) != "/dev/shm", line
        good = tmp_path / "good.py"
        good.write_text(SYNCER)
        gp = subprocess.Popen([sys.executable, str(good)], stdout=subprocess.PIPE, text=True,
                              env=env(HYPERTRACE_CHANNEL="shm:%s,control=unix:%s" % (chan, ctl)))
        replies = {}

        def peer(name, data, wait=0.5, close=True):
            s = socket.socket(socket.AF_UNIX)
            s.connect(ctl)
            s.sendall(data)
            s.settimeout(wait)
            got = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            except socket.timeout:
                pass
            replies[name] = got
            s.close()

        sid = b"\0" * 16
        peer("garbage", os.urandom(64))
        peer("oversize", abi.CTL_HEADER.pack(abi.CTL_MAGIC, 1, abi.MSG_HELLO, 1, 10**6))
        peer("unknown_type", abi.CTL_HEADER.pack(abi.CTL_MAGIC, 1, 77, 1, 0))
        peer("no_hello", abi.frame(abi.MSG_CLOCK, 1, abi.pack_u64s(5)))
        peer("bad_session", abi.frame(abi.MSG_HELLO, 1, sid + abi.pack_u64s(1)))
        peer("truncated", abi.frame(abi.MSG_HELLO, 1, b"x" * 40)[:20], wait=7.0)
        assert gp.wait(timeout=120) == 0
        assert "RTT_MIN" in gp.stdout.read()
    finally:
        col.send_signal(2)
        outp, err = col.communicate(timeout=60)
    assert col.returncode == 0, err
    for name, got in replies.items():
        frames = abi.FrameReader().feed(got)
        assert frames and frames[0][0] == abi.MSG_ERROR, (name, got)
        text = abi.unpack_str(frames[0][2], 0)[0]
        print(name, "->", text)
    assert "incomplete" in abi.unpack_str(abi.FrameReader().feed(replies["truncated"])[0][2],
                                          0)[0]
    st = stats(out)
    assert st["sync_points"]["local"]["count"] == 20     # the good peer got through
    assert sum(s["recorded"] for s in local(st)) == 20


def test_a_host_that_never_answers_is_a_clear_timeout(tmp_path):
    from hypertrace.host.region import Region
    path = "/dev/shm/ht-mute-%s" % uuid.uuid4().hex[:8]
    region = Region.create(path, "mute", n_rings=2, ring_size=4096)
    mute = socket.socket(socket.AF_UNIX)
    mute.bind(path + ".ctl")
    mute.listen(1)
    # tracing goes on without the control channel (the rings do not need it); what
    # needs it fails clearly
    code = ("from hypertrace import guest\n"
            "guest.connect()\nprint('CONNECTED', guest.connected())\n"
            "try:\n    guest.sync_point('x')\nexcept guest.ControlError as e:\n"
            "    print('ERR', e)\n")
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env(HYPERTRACE_CHANNEL="shm:%s,control=unix:%s.ctl" % (path, path)))
    mute.close()
    os.unlink(path + ".ctl")
    region.close()
    assert "CONNECTED True" in r.stdout, r.stdout + r.stderr
    assert "ERR the host did not answer within 5 s" in r.stdout, r.stdout + r.stderr
    assert "control channel unavailable (the host did not answer within 5 s)" in r.stderr
    assert time.monotonic() - t < 30 and "Traceback" not in r.stderr


REBOOT = r"""
import os, signal, subprocess, sys, time
from hypertrace import guest
from hypertrace.guest import control

if len(sys.argv) == 1:          # the "machine": boot A, then boot B
    for boot in ("a", "b"):
        subprocess.run([sys.executable, __file__, boot])
    sys.exit(0)
boot = sys.argv[1]
# what /proc/sys/kernel/random/boot_id would say in each boot of a VM, and a clock
# that restarted: boot b's guest times overlap boot a's
control.boot_id = lambda: bytes([ord(boot)]) * 16
offset = {"a": 100 * 10**9, "b": 100 * 10**9 - 600 * 10**6}[boot]
guest.connect(clock=lambda: time.monotonic_ns() + offset, sync_interval=0.05)
tick = guest.event("boot_tick", "const char *boot, uint32_t i")
for i in range(500):
    tick(boot, i)
    if i % 100 == 0:
        guest.sync_point("boot_mark", boot, i)
    time.sleep(0.001)
guest.sync_point("boot_last", boot)
if boot == "a":
    os.kill(os.getpid(), signal.SIGKILL)      # a reboot says no goodbye
"""


def test_a_rebooted_guest_gets_a_domain_and_clock_per_boot(session, tmp_path):
    """A guest's clock restarts at reboot: one mapping cannot serve both boots. The
    second boot (another boot id in its hello) becomes domain local.boot2 with its own
    clock; each boot's events land in order on the host timeline."""
    app = tmp_path / "reboot.py"
    app.write_text(REBOOT)
    record(session, sys.executable, str(app), opts=("--sync-interval", "0.05"))
    st = stats(session)
    for dom, boot in (("local", "a"), ("local.boot2", "b")):
        ss = [s for s in local(st, dom) if s["per_event"].get("boot_tick")]
        assert sum(s["per_event"]["boot_tick"] for s in ss) == 500, (dom, st["streams"])
        c = st["clocks"][dom]
        assert c["kind"] == "estimated" and c["causality_violations"] == 0, c
        assert len(c["segments"]) == 1, c["segments"]     # no step inside a boot
        assert abs(c["offset_ns"] + (100 * 10**9 if boot == "a" else 99_400_000_000)) \
            <= c["uncertainty_ns"] + 1, c
    evs = [json.loads(x) for x in hypertrace("report", session, "--json").stdout.splitlines()]
    ticks = [(e["fields"]["boot"], e["ts"], e["raw_ts"]) for e in evs if e["name"] == "boot_tick"]
    assert [b for b, _, _ in ticks] == ["a"] * 500 + ["b"] * 500
    raw_a = [r for b, _, r in ticks if b == "a"]
    raw_b = [r for b, _, r in ticks if b == "b"]
    assert min(raw_b) < max(raw_a), "the test must make the boots' raw clocks overlap"
    events, _ = babeltrace(session)
    assert [f["boot"] for n, f in events if n == "boot_tick"] == ["a"] * 500 + ["b"] * 500
    idx = Session(session).index
    retired = [d for d in idx["domains"] if d.get("retired")]
    assert [d["name"] for d in retired] == ["local"] and retired[0]["guest"] == "local"


BOOTS = r"""
import os, socket
from hypertrace import abi
from hypertrace.guest.channel import parse_spec, Channel
import time
path, opts = parse_spec(os.environ["HYPERTRACE_CHANNEL"])
sid = Channel(path, time.monotonic_ns).header.session_id
ok = refused = 0
for b in range(70):
    s = socket.socket(socket.AF_UNIX)
    s.connect(opts["control"][5:])
    s.sendall(abi.frame(abi.MSG_HELLO, 1, sid + abi.pack_u64s(os.getpid()) + bytes([b + 1]) * 16))
    r = abi.FrameReader()
    frames = []
    while not frames:
        data = s.recv(4096)
        if not data:
            break
        frames = r.feed(data)
    kind = frames[0][0] if frames else None
    ok += kind == abi.MSG_HELLO_OK
    refused += kind == abi.MSG_ERROR
    s.close()
print("OK", ok, "REFUSED", refused)
"""


def test_a_guest_cycling_boot_ids_gets_at_most_64_domains(session, tmp_path):
    """Each new boot id is a new domain (its clock restarted); a guest that keeps
    changing it is refused past 64 boots, and the recording goes on."""
    app = tmp_path / "boots.py"
    app.write_text(BOOTS)
    r = record(session, sys.executable, str(app))
    assert "OK 64 REFUSED 6" in r.stdout, r.stdout + r.stderr
    doms = [d["name"] for d in Session(session).index["domains"]]
    assert "local.boot64" in doms and "local.boot65" not in doms
