"""No peer can kill, hang or stall the recorder; stream files are bounded; counts after a
full disk are what the files hold (issue 11: items 9-12, 16, 18)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT, babeltrace, env, hypertrace, record, small_disk, stats, totals

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                               reason="needs root (to mount a small tmpfs)")


def _index(out: str) -> dict:
    with open(os.path.join(out, ".hypertrace", "session.json")) as f:
        return json.load(f)


def _errors(idx: dict) -> str:
    return " | ".join(e["error"] for e in idx["errors"])


# -- item 16: stream files -------------------------------------------------------------------
THREADS = r"""
import sys, threading, time
from hypertrace import guest
tp = guest.event("t_ev", "uint32_t thread, uint32_t i")

def run(t):
    for i in range(3):
        tp(t, i)
    time.sleep(0.003)    # lets the collector free released rings: every claim succeeds

n = int(sys.argv[1])
for t in range(n):
    th = threading.Thread(target=run, args=(t,))
    th.start()
    th.join()
print("THREADS DONE", n, flush=True)
"""


def test_a_thousand_sequential_threads_under_a_256_descriptor_limit_are_all_recorded(tmp_path):
    app = tmp_path / "threads.py"
    app.write_text(THREADS)
    out = str(tmp_path / "s")
    r = subprocess.run(["prlimit", "--nofile=256", "--", sys.executable, "-m", "hypertrace.cli",
                        "record", "-o", out, "--rings", "64", "--", sys.executable, str(app),
                        "1000"],
                       capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "THREADS DONE 1000" in r.stdout and "Traceback" not in r.stderr
    idx = _index(out)
    assert "write_error" not in idx, idx.get("write_error")
    events, _ = babeltrace(out)
    got = sorted((int(f["thread"]), int(f["i"])) for n, f in events if n == "t_ev")
    assert got == [(t, i) for t in range(1000) for i in range(3)]
    assert totals(stats(out))["recorded"] >= 3000


CONCURRENT = r"""
import sys, threading
from hypertrace import guest
tp = guest.event("c_ev", "uint32_t thread, uint32_t i")
go = threading.Event()
n = int(sys.argv[1])
ready = threading.Barrier(n + 1)

def run(t):
    tp(t, 0)
    ready.wait()
    go.wait()
    tp(t, 1)

ts = [threading.Thread(target=run, args=(t,)) for t in range(n)]
for t in ts: t.start()
ready.wait()
import time; time.sleep(1.5)    # the first packets of every stream are written meanwhile
go.set()
for t in ts: t.join()
print("CONCURRENT DONE", flush=True)
"""


def test_more_concurrent_streams_than_open_files_are_all_recorded(tmp_path):
    """200 live streams at once with 96 descriptors: files are closed when idle and
    reopened for appending, none is lost."""
    app = tmp_path / "conc.py"
    app.write_text(CONCURRENT)
    out = str(tmp_path / "s")
    r = subprocess.run(["prlimit", "--nofile=96", "--", sys.executable, "-m", "hypertrace.cli",
                        "record", "-o", out, "--rings", "256", "--buffer-size", "16K", "--",
                        sys.executable, str(app), "200"],
                       capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "write_error" not in _index(out)
    events, _ = babeltrace(out)
    got = sorted((int(f["thread"]), int(f["i"])) for n, f in events if n == "c_ev")
    assert got == [(t, i) for t in range(200) for i in range(2)]


# -- item 18: counts after a full disk --------------------------------------------------------
@ROOT_ONLY
def test_after_a_full_disk_the_index_counts_what_the_files_hold(tmp_path):
    with small_disk(tmp_path / "small", "2m") as mnt:
        out = str(mnt / "s")
        r = hypertrace("record", "-o", out, "--", sys.executable,
                       os.path.join(ROOT, "examples", "workload.py"), "2", "150000", check=False)
        assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr
        events, _ = babeltrace(out, allow_discarded=True)
        in_files = {}
        for n, _f in events:
            in_files[n] = in_files.get(n, 0) + 1
        st = stats(out)
        counted = {k: v["count"] for k, v in st["events"].items()
                   if not k.startswith("hypertrace_")}
        assert counted == in_files, (counted, in_files)
        assert st["totals"]["unwritten"] > 0
        idx = _index(out)
        assert idx["records_not_written"] == sum(s.get("unwritten", 0) for s in idx["streams"])


TWO_PHASES = r"""
import threading, time
from hypertrace import guest
tick = guest.event("tick", "uint64_t i, uint32_t who")
def run(who, a, b):
    for i in range(a, b):
        tick(i, who)
def phase(a, b):
    ts = [threading.Thread(target=run, args=(w, a, b)) for w in range(2)]
    for t in ts: t.start()
    for t in ts: t.join()
phase(0, 140000)        # 11 MB: the 2 MiB disk fills
time.sleep(1.5)         # the recorder has seen the error
phase(140000, 150000)
print("EMITTED", 2 * 150000, flush=True)
"""


@ROOT_ONLY
def test_after_a_full_disk_every_event_is_still_recorded_or_counted(tmp_path):
    """The disk fills early; the program goes on emitting. The recorder keeps draining
    to the end and counts what it could not write (before: the recording stopped at
    the error and every event emitted after it was neither recorded nor counted)."""
    app = tmp_path / "two_phases.py"
    app.write_text(TWO_PHASES)
    with small_disk(tmp_path / "small", "2m") as mnt:
        out = str(mnt / "s")
        r = hypertrace("record", "-o", out, "--", sys.executable, str(app), check=False)
        assert r.returncode == 1 and "No space left on device" in r.stderr, r.stderr
        assert "EMITTED 300000" in r.stdout, r.stdout
        assert "Traceback" not in r.stderr
        st = stats(out)
        mine = [s for s in st["streams"] if s["domain"] == "local"]
        got = {k: sum(s[k] for s in mine) for k in ("recorded", "unwritten", "discarded")}
        # (under load the first packet may already be larger than the room left: then
        # nothing is recorded, and every event is counted unwritten)
        assert got["unwritten"] > 0, got
        lost = st["domains"].get("local", {}).get("lost_without_ring", 0)
        assert sum(got.values()) + lost == 300000, (got, lost)
        assert st["events"]["tick"]["count"] == got["recorded"]
        events, _ = babeltrace(out, allow_discarded=True)
        assert sum(1 for n, _ in events if n == "tick") == got["recorded"]


# -- item 9: an exception from one component never ends the session ---------------------------
PRED_APP = r"""
import sys
import time
from hypertrace import guest
blob = guest.event("blob", "uint32_t n, bytes data, const char *tag")
for i in range(2000):
    blob(i, bytes([i % 256]) * 8, "t%d" % i)
print("APP DONE", flush=True)
sys.exit(7)
"""

PRED_RULES = """
[[trigger]]
event = "blob"
when = "300 in data"            # ValueError on bytes: byte must be in range(0, 256)
actions = [ { marker = "never" } ]

[[trigger]]
event = "blob"
when = "n < tag"                # TypeError: int < str
actions = [ { marker = "never either" } ]

[[trigger]]
event = "blob"
when = "n == 1999"
actions = [ { marker = "last" } ]
"""


def test_a_predicate_that_raises_on_guest_data_is_counted_and_the_recording_goes_on(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(PRED_APP)
    rules = tmp_path / "rules.toml"
    rules.write_text(PRED_RULES)
    out = str(tmp_path / "s")
    r = record(out, sys.executable, str(app), opts=("--triggers", str(rules)), check=False)
    # the command's exit code, no traceback, the index written, the channel removed
    assert r.returncode == 7, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "APP DONE" in r.stdout
    idx = _index(out)
    assert not any(os.path.exists(d["channel"]) for d in idx["domains"])
    trig = {t["trigger"]: t for t in idx["triggers"]}
    assert trig[1]["predicate_errors"] == 2000 and trig[1]["fired"] == 0
    assert "ValueError" in trig[1]["last_predicate_error"]
    assert trig[2]["predicate_errors"] == 2000 and "TypeError" in trig[2]["last_predicate_error"]
    assert trig[3]["fired"] == 1
    events, _ = babeltrace(out, internal=True)
    assert len([n for n, _ in events if n == "blob"]) == 2000
    assert [f["text"] for n, f in events if n == "hypertrace_marker"] == ["last"]
    st = stats(out)
    rules_st = {t["trigger"]: t for t in st["triggers"]["rules"]}
    assert rules_st[1]["predicate_errors"] == 2000
    assert "2000 predicate errors" in hypertrace("stats", out).stdout


def test_predicates_on_mismatched_types_are_false_or_counted_never_raised():
    from hypertrace.host.triggers import PredicateError, compile_predicate
    cases = [("300 in data", {"data": b"ab"}), ("x < 'a'", {"x": 3}), ("'a' in n", {"n": 5}),
             ("missing == 1", {}), ("(1, 2) < x", {"x": "s"}), ("x in (1, [2])", {"x": 1.5})]
    for text, fields in cases:
        p = compile_predicate(text)
        try:
            assert p(fields) in (True, False)
        except PredicateError:
            pass                    # the one exception the engine counts


# -- item 12: waiting actions are bounded, merged and counted -----------------------------------
FLOOD_APP = r"""
from hypertrace import guest
roi = guest.event("roi", "uint32_t i")
for i in range(int(__import__("sys").argv[1])):
    roi(i)
print("FLOOD DONE", flush=True)
"""

FLOOD_RULES = """
[[trigger]]
event = "roi"
actions = [ { qemu_trace_enable = "virtio_*" }, { marker = "m" }, { disable = "nothing_*" } ]
"""


def test_a_flood_of_trigger_firings_is_bounded_coalesced_and_counted(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(FLOOD_APP)
    rules = tmp_path / "rules.toml"
    rules.write_text(FLOOD_RULES)
    out = str(tmp_path / "s")
    r = record(out, sys.executable, str(app), "300000",
               opts=("--triggers", str(rules), "--mode", "block"))
    assert "FLOOD DONE" in r.stdout
    idx = _index(out)
    t = idx["triggers"][0]
    fired = t["fired"]
    events, _ = babeltrace(out, internal=True, allow_discarded=True)
    assert fired == len([n for n, _ in events if n == "roi"]) > 20000
    recorded = {}
    for n, f in events:
        if n == "hypertrace_trigger":
            recorded[f["action"]] = recorded.get(f["action"], 0) + 1
    ran = t["actions_ran"]
    st = stats(out)
    host_lost = totals(st, "host")["discarded"] + sum(
        st["domains"]["host"].get(k, 0) for k in ("lost_without_ring", "lost_in_refused_claims"))
    for act in ("qemu_trace_enable virtio_*", "marker m", "disable nothing_*"):
        merged = t["actions_coalesced"].get(act, 0)
        dropped = t["actions_dropped"].get(act, 0)
        # every firing of every action either ran, was merged into a waiting one, or was
        # dropped with the queue full: none vanished
        assert ran.get(act, 0) + merged + dropped == fired, (act, ran, merged, dropped)
        # each run is a host record, or one the host domain counts as lost (its ring full
        # under load)
        assert recorded.get(act, 0) <= ran.get(act, 0) <= recorded.get(act, 0) + host_lost, \
            (act, recorded, ran, host_lost)
    # one target each: enable/disable of one pattern coalesce, they are never dropped
    assert t["actions_dropped"].get("qemu_trace_enable virtio_*", 0) == 0
    assert t["actions_coalesced"]["qemu_trace_enable virtio_*"] > fired // 2
    assert t["actions_coalesced"]["disable nothing_*"] > fired // 2
    # every marker is its own record: past the bound they are dropped, and counted
    assert t["actions_dropped"]["marker m"] > 0
    # the guest's own events: recorded or counted (block mode gives up on a stalled drain)
    tot = totals(st, "local")
    assert tot["recorded"] == fired and fired + tot["discarded"] + sum(
        st["domains"]["local"].get(k, 0) for k in ("lost_without_ring",
                                                   "lost_in_refused_claims")) == 300000, tot
    assert st["triggers"]["rules"][0]["actions_dropped"]["marker m"] == \
        t["actions_dropped"]["marker m"]
    print("fired %d: ran %s, merged %s, dropped %s" % (fired, ran, t["actions_coalesced"],
                                                       t["actions_dropped"]))


# -- item 10: DIR/.hypertrace/ctl.sock never stops or stalls the drain -------------------------
STEADY = r"""
import sys, time
from hypertrace import guest
tp = guest.event("steady", "uint32_t i")
print("READY", flush=True)
i = 0
while not sys.stdin.readline().startswith("go"):
    pass
t_end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < t_end:
    for _ in range(20):
        tp(i)
        i += 1
    time.sleep(0.001)
print("EMITTED", i, flush=True)
sys.stdin.readline()
sys.exit(5)
"""


def _live(tmp_path, seconds: str = "4"):
    app = tmp_path / "app.py"
    app.write_text(STEADY)
    out = str(tmp_path / "s")
    # small rings: a drain stalled for a second loses events
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--buffer-size", "16K", "--", sys.executable, str(app), seconds],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env())
    assert rec.stdout.readline().startswith("READY")
    return rec, out


def _ctl_connect(out: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX)
    s.connect(os.path.join(out, ".hypertrace", "ctl.sock"))
    return s


def _answer(s: socket.socket, timeout: float = 10.0):
    s.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        return None
    return json.loads(data) if data else {}


def test_a_deep_or_long_live_control_request_is_refused_and_the_recorder_lives(tmp_path):
    rec, out = _live(tmp_path, "0.1")
    try:
        s = _ctl_connect(out)
        s.sendall(b"[" * 2000 + b"\n")    # json.loads would recurse out of the stack
        reply = _answer(s)
        assert reply and not reply["ok"] and "nested" in reply["error"], reply
        s.close()
        s = _ctl_connect(out)
        s.sendall(b"{" * 3000)            # no newline, longer than a request may be
        s.sendall(b"x" * 2000)
        reply = _answer(s)
        assert reply and not reply["ok"] and "longer" in reply["error"], reply
        s.close()
        assert json.loads(hypertrace("ctl", out, "status", "--json", timeout=60).stdout)
        rec.stdin.write("go\n\n")
        rec.stdin.flush()
        _, err = rec.communicate(timeout=60)
    finally:
        if rec.poll() is None:
            rec.kill()
            rec.communicate(timeout=60)
    assert rec.returncode == 5, err          # the command's own exit code
    assert "Traceback" not in err


def test_idle_and_slow_live_control_clients_do_not_stall_the_drain(tmp_path):
    rec, out = _live(tmp_path)
    held = []
    try:
        rec.stdin.write("go\n")
        rec.stdin.flush()
        # while the producer runs: 15 idle connections and a slowloris one
        held = [_ctl_connect(out) for _ in range(15)]
        slow = _ctl_connect(out)
        cut = False
        for ch in b'{"cmd": "status"':   # a byte every 0.2 s, never a newline
            try:
                slow.send(bytes([ch]))
            except OSError:
                cut = True                # dropped by the recorder: the expected end
                break
            time.sleep(0.2)
        slow.close()
        # the honest client is answered meanwhile
        r = hypertrace("ctl", out, "status", "--json", timeout=60)
        assert json.loads(r.stdout)["domains"], r.stdout
        line = rec.stdout.readline()
        assert line.startswith("EMITTED"), line
        emitted = int(line.split()[1])
        rec.stdin.write("\n")
        rec.stdin.flush()
        _, err = rec.communicate(timeout=60)
    finally:
        for s in held:
            s.close()
        if rec.poll() is None:
            rec.kill()
            rec.communicate(timeout=60)
    assert rec.returncode == 5, err
    st = stats(out)
    tot = totals(st)
    # the drain never waited for a client: at a steady 20 events per ms nothing is lost
    # on an idle machine; a loaded one (CI) may lose a little, a stalled drain (before:
    # 77 %) far more than a tenth
    assert tot["recorded"] + tot["discarded"] == emitted, (tot, emitted)
    assert tot["discarded"] <= emitted // 10, (tot, emitted)
    assert cut and "dropped unanswered" in _errors(_index(out))


# -- item 11: the guest control socket --------------------------------------------------------
HONEST = r"""
import sys
from hypertrace import guest
tp = guest.event("honest", "uint32_t i")
for i in range(100):
    tp(i)
rtts = [guest.sync_point("mark", i) for i in range(5)]
print("SYNCED", len(rtts), flush=True)
"""


def _attach(tmp_path):
    import uuid
    out = str(tmp_path / "attach")
    chan = "/dev/shm/ht-hc-%s" % uuid.uuid4().hex[:8]
    col = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--channel", "shm:" + chan], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env())
    line = col.stdout.readline()
    m = re.search(r"control=unix:(\S+?)[;,\s]", line)
    if m is None:
        col.kill()
        raise AssertionError(line + col.communicate(timeout=60)[1])
    _CTL[chan] = m.group(1)          # the control socket, in the private runtime directory
    return col, out, chan


_CTL: dict = {}


def _ctl(chan: str) -> str:
    return _CTL[chan]


def _stop(col):
    col.send_signal(2)
    _, err = col.communicate(timeout=120)
    assert col.returncode == 0 and "Traceback" not in err, err
    return err


def _honest(tmp_path, chan, control=None):
    app = tmp_path / "honest.py"
    app.write_text(HONEST)
    return subprocess.run([sys.executable, str(app)], capture_output=True, text=True, timeout=120,
                          env=env(HYPERTRACE_CHANNEL="shm:%s,control=unix:%s" % (
                              chan, control or _ctl(chan))))


def test_held_silent_control_connections_cannot_lock_out_an_honest_producer(tmp_path):
    col, out, chan = _attach(tmp_path)
    held = []
    try:
        for _ in range(300):                  # more than the server keeps, never a hello
            s = socket.socket(socket.AF_UNIX)
            s.connect(_ctl(chan))
            held.append(s)
        r = _honest(tmp_path, chan)
        assert r.returncode == 0 and "SYNCED 5" in r.stdout, r.stdout + r.stderr
        # the silent ones were closed by the server (evicted, or no hello in time)
        closed = 0
        for s in held:
            s.settimeout(10)
            try:
                closed += s.recv(4096) is not None
            except OSError:
                closed += 1
        assert closed == len(held)
    finally:
        for s in held:
            s.close()
        _stop(col)
    st = stats(out)
    assert sum(s["recorded"] for s in st["streams"] if s["domain"] == "local") >= 100
    assert st["sync_points"]["local"]["count"] == 5
    errs = _errors(_index(out))
    assert "evicted" in errs and "no hello within" in errs, errs


def test_an_incomplete_control_message_has_a_deadline_from_its_first_byte(tmp_path):
    from hypertrace import abi
    from hypertrace.guest.channel import Channel
    col, out, chan = _attach(tmp_path)
    try:
        sid = Channel(chan, time.monotonic_ns).header.session_id
        s = socket.socket(socket.AF_UNIX)
        s.connect(_ctl(chan))
        s.sendall(abi.frame(abi.MSG_HELLO, 1, sid + abi.pack_u64s(os.getpid())))
        s.settimeout(10)
        assert abi.FrameReader().feed(s.recv(4096))[0][0] == abi.MSG_HELLO_OK
        msg = abi.frame(abi.MSG_SYNC, 2, abi.pack_u64s(1, 2) + abi.pack_str("x" * 40)
                        + abi.pack_str(""))
        cut = False
        for i in range(len(msg) - 1):        # a byte every 0.5 s: 30 s for the message
            try:
                s.send(msg[i:i + 1])
            except OSError:
                cut = True
                break
            time.sleep(0.5)
        s.close()
        assert cut, "a message dribbled a byte at a time was never cut"
    finally:
        _stop(col)
    assert "incomplete message" in _errors(_index(out))


def test_errors_of_peers_that_never_said_hello_are_in_the_index(tmp_path):
    col, out, chan = _attach(tmp_path)
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX)
            s.connect(_ctl(chan))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
            s.settimeout(10)
            try:
                s.recv(4096)
            except OSError:
                pass
            s.close()
    finally:
        _stop(col)
    idx = _index(out)
    e = [x for x in idx["errors"] if "before its hello" in x["error"] and "bad magic"
         in x["error"]]
    assert e and e[0]["count"] == 3, idx["errors"]
    assert idx["errors_total"]["total"] >= 3


def test_a_refused_control_connection_does_not_stop_tracing(tmp_path):
    """A host that refuses the hello: the ring events are still recorded, sync points
    fail with a clear error."""
    import threading

    from hypertrace import abi
    col, out, chan = _attach(tmp_path)
    fake = str(tmp_path / "refuse.ctl")
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(fake)
    lsock.listen(8)
    lsock.settimeout(0.2)
    stop = threading.Event()

    def refuse():
        while not stop.is_set():
            try:
                c, _ = lsock.accept()
            except socket.timeout:
                continue
            c.settimeout(5)
            try:
                c.recv(4096)            # the hello, as a real host reads it before refusing
                c.sendall(abi.frame(abi.MSG_ERROR, 1,
                                    abi.pack_str("too many control connections")))
            except OSError:
                pass
            c.close()
    t = threading.Thread(target=refuse, daemon=True)
    t.start()
    try:
        app = tmp_path / "refused.py"
        app.write_text("from hypertrace import guest\n"
                       "tp = guest.event('refused_ev', 'uint32_t i')\n"
                       "for i in range(100):\n    tp(i)\n"
                       "try:\n    guest.sync_point('x')\nexcept guest.ControlError as e:\n"
                       "    print('SYNC FAILED', e)\n")
        r = subprocess.run([sys.executable, str(app)], capture_output=True, text=True,
                           timeout=120, env=env(HYPERTRACE_CHANNEL="shm:%s,control=unix:%s"
                                                % (chan, fake)))
    finally:
        stop.set()
        t.join()
        lsock.close()
        _stop(col)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "SYNC FAILED host refused hello: too many control connections" in r.stdout, r.stdout
    assert "control channel unavailable" in r.stderr and "still recorded" in r.stderr
    events, _ = babeltrace(out)
    assert [int(f["i"]) for n, f in events if n == "refused_ev"] == list(range(100))


FILLER = r"""
import os, sys
from hypertrace import guest
tp = guest.event("before_full", "uint32_t i")
for i in range(1000):
    tp(i)
fd = os.open(os.path.join(sys.argv[1], "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
try:
    while True:
        os.write(fd, b"\0" * 65536)       # the disk is full: nothing of ours fits any more
except OSError:
    pass
print("FULL", flush=True)
"""


@ROOT_ONLY
def test_the_final_index_fits_on_a_disk_filled_by_someone_else(tmp_path):
    """Another writer fills the disk while recording: the final index (stopped, with
    the counts) is still written, in room the recorder held back from the start."""
    with small_disk(tmp_path / "small", "4m") as mnt:
        app = tmp_path / "filler.py"
        app.write_text(FILLER)
        out = str(mnt / "s")
        r = hypertrace("record", "-o", out, "--", sys.executable, str(app), str(mnt),
                       check=False)
        assert "FULL" in r.stdout, r.stdout + r.stderr
        idx = _index(out)
        assert idx.get("stopped") is True, idx.get("write_error")
        st = stats(out)
        ss = [x for x in st["streams"] if x["domain"] == "local"]
        assert sum(x["recorded"] + x.get("unwritten", 0) for x in ss) == 1000, ss
        assert not os.path.exists(os.path.join(out, ".hypertrace", "room.reserve"))
