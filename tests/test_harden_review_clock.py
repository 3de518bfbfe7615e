"""Review r2: a lying clock cannot move the others or stall the stop (F1); a sync-point
flood is throttled and bounded (F3)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from conftest import env, hypertrace, record, stats

from hypertrace.host import clock, control

# a hostile guest on the control socket of region argv[1]: hello, then argv[2] clock
# exchanges whose guest time moves 1 s per exchange while the host's moves microseconds
# (no line within the drift limit joins two of them), and one beyond the timestamp range
LIAR = r"""
import os, socket, struct, sys
from hypertrace import abi
path, n, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "rb") as f:
    sid = f.read(40)[24:40]
boot = bytes.fromhex(open("/proc/sys/kernel/random/boot_id").read().strip().replace("-", ""))
s = socket.socket(socket.AF_UNIX)
s.connect(path + ".ctl")
s.sendall(abi.frame(abi.MSG_HELLO, 1, sid + struct.pack("<Q", os.getpid()) + boot))
rd = abi.FrameReader()
got = []
while not got:
    got = rd.feed(s.recv(4096))
t1s = [(k + 1) * 10**9 for k in range(n)] + [(1 << 63) + 5]
rid = 2
for k in range(0, len(t1s), 32):
    batch = t1s[k:k + 32]
    s.sendall(b"".join(abi.frame(abi.MSG_CLOCK, rid + j, struct.pack("<Q", t))
                       for j, t in enumerate(batch)))
    replies = []
    while len(replies) < len(batch):
        replies += rd.feed(s.recv(65536))
    s.sendall(b"".join(abi.frame(abi.MSG_SAMPLE, 0, struct.pack(
        "<QQQQQ", batch[r - rid], *struct.unpack("<QQ", body[:16]), batch[r - rid] + gap, 0))
        for _, r, body in replies))
    rid += len(batch)
s.sendall(abi.frame(abi.MSG_BYE, 0, b""))
s.close()
print("LIED", len(t1s), flush=True)
"""

# an honest guest on region argv[1] whose clock runs 5 s ahead of the host's
HONEST_VM = r"""
import sys, time
from hypertrace import guest
path = sys.argv[1]
OFF = 5 * 10**9
guest.connect("shm:%s,control=unix:%s.ctl" % (path, path),
              clock=lambda: time.monotonic_ns() + OFF)
tp = guest.event("honest_ev", "uint64_t i")
for i in range(3):
    print("REALTIME", i, time.clock_gettime_ns(time.CLOCK_REALTIME), flush=True)
    tp(i)
    time.sleep(0.3)
guest.disconnect()
"""


def _runtime(tmp_path) -> dict:
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    return env(HYPERTRACE_RUNTIME_DIR=str(rt))


def _index(out: str) -> dict:
    with open(os.path.join(out, ".hypertrace", "session.json")) as f:
        return json.load(f)


def test_a_lying_guest_clock_is_unfitted_and_moves_no_other_domain(tmp_path):
    e = _runtime(tmp_path)
    rt = e["HYPERTRACE_RUNTIME_DIR"]
    out = str(tmp_path / "s")
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--qemu", "vm1", "--qemu", "vm2"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=e)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(rt, "vm2.ctl")):
            assert rec.poll() is None and time.monotonic() < deadline, rec.communicate()
            time.sleep(0.05)
        liar = tmp_path / "liar.py"
        liar.write_text(LIAR)
        r = subprocess.run([sys.executable, str(liar), os.path.join(rt, "vm1"), "300", "1000"],
                           capture_output=True, text=True, env=e, timeout=120)
        assert "LIED 301" in r.stdout, r.stdout + r.stderr
        honest = tmp_path / "honest.py"
        honest.write_text(HONEST_VM)
        h = subprocess.run([sys.executable, str(honest), os.path.join(rt, "vm2")],
                           capture_output=True, text=True, env=e, timeout=120)
        assert h.returncode == 0, h.stderr
        real = {int(i): int(t) for i, t in re.findall(r"REALTIME (\d+) (\d+)", h.stdout)}
    finally:
        rec.send_signal(signal.SIGINT)
        _, err = rec.communicate(timeout=300)
    assert rec.returncode == 0 and "Traceback" not in err, err
    idx = _index(out)
    c1, c2 = idx["clocks"]["vm1"], idx["clocks"]["vm2"]
    # the liar's clock: unfitted, with why; its events would keep their raw timestamps
    assert c1["kind"] == "unfitted" and c1["offset_ns"] is None, c1
    assert "drift limit" in c1["reason"] and c1["segments"] == [], c1
    assert c1["uncertainty_ns"] is None and c1["samples"] == 300    # the one beyond 2^62: out
    # the honest guest next to it: fitted, and its CTF clock carries the fit
    assert c2["kind"] == "estimated" and abs(c2["offset_ns"] + 5 * 10**9) < 10**6, c2
    doms = {d["name"]: d for d in idx["domains"]}
    assert doms["vm2"]["clock_offset_ns"] == idx["host_clock_offset_ns"] + c2["offset_ns"]
    assert doms["vm1"]["clock_offset_ns"] == idx["host_clock_offset_ns"]
    assert "clock of domain vm1 not fitted" in " | ".join(x["error"] for x in idx["errors"])
    # babeltrace2 places vm2's events when they happened (they were 5 s late)
    bt = subprocess.run([shutil.which("babeltrace2"), "--clock-seconds", out],
                        capture_output=True, text=True, timeout=120)
    assert bt.returncode == 0, bt.stderr
    seen = {}
    for line in bt.stdout.splitlines():
        m = re.match(r"\[(\d+)\.(\d{9})\].* honest_ev: \{ i = (\d+) \}", line)
        if m:
            seen[int(m.group(3))] = int(m.group(1)) * 10**9 + int(m.group(2))
    assert sorted(seen) == [0, 1, 2], bt.stdout[-2000:]
    for i, t in seen.items():
        assert abs(t - real[i]) < 10**9, (i, t, real[i])
    # and so do the readers
    assert stats(out)["clocks"]["vm1"]["kind"] == "unfitted"


def _liar_samples(n: int, gap: int) -> list:
    # guest time 1 s per exchange, host time 50 us: the reviewer's lying clock
    return [((k + 1) * 10**9, 10**12 + k * 50_000, 10**12 + k * 50_000 + 3000,
             (k + 1) * 10**9 + gap) for k in range(n)]


def _zigzag(n: int, period: int) -> list:
    # pairwise consistent (0.9 % slopes), but no line fits more than `period` of them
    out, off = [], 0.0
    for k in range(n):
        g = 10**12 + k * 10**6
        if k:
            off += (0.009 if (k // period) % 2 == 0 else -0.009) * 10**6
        h = g + int(off)
        out.append((g - 2000, h, h + 100, g + 2100))
    return out


def _honest_samples(n: int, steps=(), seed: int = 1) -> list:
    rng = np.random.default_rng(seed)
    h1 = 10**10 + np.cumsum(rng.uniform(1e6, 2e6, n)).astype(np.int64)
    off = np.full(n, 7 * 10**9, dtype=np.int64)
    for at in steps:               # the guest stood still for 1 s (a paused VM): a step
        h1[int(at * n):] += 10**9
        off[int(at * n):] -= 10**9
    t2 = h1 + rng.exponential(20_000, n).astype(np.int64) + 2000
    t3 = t2 + 500
    h4 = t3 + rng.exponential(20_000, n).astype(np.int64) + 2000
    return [tuple(int(v) for v in r) for r in zip(h1 + off, t2, t3, h4 + off)]


def test_the_fit_of_garbage_is_bounded_in_work_and_unfitted():
    n = 200_000
    bound = clock.SOLVE_BUDGET + 5 * clock.MAX_SEGMENTS
    for name, smp in [("alone-infeasible", _liar_samples(n, 1000)),
                      ("every-pair-inconsistent", _liar_samples(n, 10**7)),
                      ("zigzag-50", _zigzag(n, 50)), ("zigzag-300", _zigzag(n, 300))]:
        f = clock.fit(name, smp)
        s = f.summary()
        assert s["kind"] == "unfitted" and s["offset_ns"] is None and s["reason"], (name, s)
        assert f.solves <= bound, (name, f.solves)
        print("%s: %d samples, %d questions: %s" % (name, n, f.solves, s["reason"]))
    # a real clock with 3 steps over as many samples: 4 segments, a handful of questions
    f = clock.fit("steps", _honest_samples(n, steps=(0.25, 0.5, 0.75)))
    assert len(f.segments) == 4 and f.causality_violations == 0, f.summary()
    assert f.solves <= clock.REFITS * 4 * 6, f.solves


def test_more_samples_than_are_fitted_are_spread_over_the_whole_session():
    smp = _honest_samples(3 * clock.MAX_SAMPLES)
    f = clock.fit("long", smp)
    assert len(f.segments) == 1 and f.causality_violations == 0
    seg = f.segments[0]
    # the fit covers the session's end, not only its first MAX_SAMPLES exchanges
    assert seg.g_end > smp[-100][0] and seg.samples == clock.MAX_SAMPLES
    assert abs(seg.map(smp[-1][0]) - smp[-1][0] - -7 * 10**9) <= seg.uncertainty_ns + 1


def test_a_sample_beyond_the_timestamp_range_is_left_out_of_the_fit():
    smp = _honest_samples(200)
    f = clock.fit("x", smp + [((1 << 63) + 5, 10**12, 10**12 + 100, (1 << 63) + 10**6)])
    assert f.summary()["kind"] == "estimated" and f.samples == 200
    assert clock.fit_summary("x", [((1 << 64) + 1, 1, 2, 3)])["kind"] == "unfitted"


# -- F3 ------------------------------------------------------------------------------------
# argv: connections per boot, boots, sync points per boot. Pipelines 32 SYNCs with a
# 4050-byte name per connection, reads every answer (an ERROR would end the run), takes no
# samples; each boot after the first says hello with a new boot id
FLOOD = r"""
import os, socket, struct, sys
from hypertrace import abi
from hypertrace.guest.channel import parse_spec
path, opts = parse_spec(os.environ["HYPERTRACE_CHANNEL"])
ctl = opts["control"][5:]
with open(path, "rb") as f:
    sid = f.read(40)[24:40]
nconn, boots, per_boot = map(int, sys.argv[1:4])
name = "N" * 4050
ok = errors = 0
for b in range(boots):
    boot = bytes([b + 1]) * 16
    socks = []
    for _ in range(nconn):
        s = socket.socket(socket.AF_UNIX)
        s.connect(ctl)
        s.sendall(abi.frame(abi.MSG_HELLO, 1, sid + struct.pack("<Q", os.getpid()) + boot))
        rd = abi.FrameReader()
        got = []
        while not got:
            got = rd.feed(s.recv(4096))
        socks.append((s, rd))
    sent = 0
    while sent < per_boot:
        k = min(32, (per_boot - sent) // nconn) or 1
        for s, _ in socks:
            s.sendall(b"".join(abi.frame(abi.MSG_SYNC, 2 + j, struct.pack("<QQ", sent + j, 1)
                                         + abi.pack_str(name, 4096) + abi.pack_str("", 10))
                               for j in range(k)))
        for s, rd in socks:
            n = 0
            while n < k:
                data = s.recv(65536)
                assert data, "closed by the host"
                for mt, _, _ in rd.feed(data):
                    n += 1
                    ok += mt == abi.MSG_SYNC_OK
                    errors += mt == abi.MSG_ERROR
        sent += k * nconn
    for s, _ in socks:
        s.close()
print("FLOOD ok %d errors %d" % (ok, errors), flush=True)
"""


# the bounds of host/control.py (literal here too, so that the test says what failed on a
# recorder without them)
MAX_SYNCS = getattr(control, "MAX_SYNCS", 4096)
MAX_GUEST_SYNCS = getattr(control, "MAX_GUEST_SYNCS", 8192)
SYNC_TEXT = getattr(control, "SYNC_TEXT", 128)


def test_a_sync_flood_waits_for_its_tokens_and_is_bounded_in_the_index(tmp_path):
    app = tmp_path / "flood.py"
    app.write_text(FLOOD)
    out = str(tmp_path / "s")
    per_boot = 5000
    r = record(out, sys.executable, str(app), "2", "3", str(per_boot), timeout=300)
    m = re.search(r"FLOOD ok (\d+) errors (\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    sent = int(m.group(1))
    assert sent == 3 * per_boot and m.group(2) == "0"   # every one answered, none refused
    idx = _index(out)
    doms = [d for d in idx["clocks"] if d == "local" or d.startswith("local.boot")]
    assert len(doms) == 3, sorted(idx["clocks"])
    kept = {d: idx["syncs"].get(d, []) for d in doms}
    dropped = idx.get("syncs_dropped", {})
    # bounded per domain and over the guest's boots, every one counted
    assert all(len(v) <= MAX_SYNCS for v in kept.values())
    assert sum(len(v) for v in kept.values()) <= MAX_GUEST_SYNCS
    assert sum(len(v) for v in kept.values()) + sum(dropped.get(d, 0) for d in doms) == sent
    assert sum(idx["clocks"][d]["sync_points"] for d in doms) == sent
    assert all(len(x["name"]) == SYNC_TEXT for v in kept.values() for x in v)
    # the flood waited for its tokens (it sent faster than RATE allows)
    assert idx["clocks"]["local"]["control_throttled"] > 0
    assert os.path.getsize(os.path.join(out, ".hypertrace", "session.json")) < 8 << 20
    st = stats(out)
    assert sum(v["dropped"] for v in st["sync_points"].values()) == sum(dropped.values())
    # the trace itself has every sync point, full names and all
    n_host = sum(s["per_event"].get("hypertrace_sync_host", 0) for s in st["streams"])
    assert n_host == sent


def test_an_index_with_a_bad_syncs_dropped_is_refused(tmp_path):
    out = str(tmp_path / "s")
    record(out, sys.executable, "-c", "from hypertrace import guest; guest.sync_point('a')")
    p = os.path.join(out, ".hypertrace", "session.json")
    idx = _index(out)
    for bad in ({"nobody": 1}, {"local": -1}, {"local": "many"}, []):
        idx["syncs_dropped"] = bad
        with open(p, "w") as f:
            json.dump(idx, f)
        r = hypertrace("stats", out, check=False)
        assert r.returncode == 2 and "syncs_dropped" in r.stderr, (bad, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
