"""QEMU's own trace events in user mode (`record --qemu-trace`): a real qemu-x86_64 running
the host's Python, its `guest_user_syscall` events interleaved with the program's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import babeltrace, env, hypertrace, record, stats, totals

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/bin/qemu-x86_64"),
                                reason="needs qemu-user (Debian qemu-user)")

GETPPID = 0x6e                 # x86_64's getppid: the program calls it between ticks

APP = r"""
import os, sys, time
from hypertrace import guest
tick = guest.event("tick", "uint32_t i")
n, pause = int(sys.argv[1]), float(sys.argv[2])
for i in range(n):
    tick(i)
    os.getppid()
    time.sleep(pause)
print("APP DONE", flush=True)
"""


def _qemu_cmd(tmp_path, n: int, pause: float):
    app = tmp_path / "app.py"
    app.write_text(APP)
    gp = hypertrace("guest-path").stdout.strip()
    return ["qemu-x86_64", "-E", "PYTHONPATH=%s" % gp, "/usr/bin/python3", str(app), str(n),
            str(pause)]


def _report(out: str):
    return [json.loads(ln) for ln in hypertrace("report", out, "--json").stdout.splitlines()]


def _index(out: str) -> dict:
    with open(os.path.join(out, ".hypertrace", "session.json")) as f:
        return json.load(f)


def test_qemu_user_events_interleave_with_the_programs_on_one_clock(tmp_path):
    N = 60
    out = str(tmp_path / "s")
    r = record(out, *_qemu_cmd(tmp_path, N, 0.005), opts=("--qemu-trace", "guest_user_sysc*"))
    assert "APP DONE" in r.stdout
    evs = _report(out)
    ticks = [e for e in evs if e["domain"] == "local" and e["name"] == "tick"]
    assert [e["fields"]["i"] for e in ticks] == list(range(N))
    q = [e for e in evs if e["domain"] == "qemu"]
    assert {e["name"] for e in q} == {"guest_user_syscall", "guest_user_syscall_ret"}
    assert all(e["stream"].startswith("qemu-") for e in q)
    calls = [e for e in q if e["name"] == "guest_user_syscall" and
             "num=0x%016x " % GETPPID in e["fields"]["args"] + " "]
    assert len(calls) == N, len(calls)
    # QEMU's stamp is when its line reached the recorder: never before the tick the
    # program emitted before the call (one clock; the bound holds however loaded)
    for t, c in zip(ticks, calls):
        assert c["ts"] > t["ts"], (t, c)
    # and, unless the reader was descheduled for longer than the program's pause, before
    # the next tick: the two sources interleave as they ran
    inside = sum(c["ts"] < t2["ts"] for c, t2 in zip(calls, ticks[1:]))
    delays = sorted(c["ts"] - t["ts"] for t, c in zip(ticks, calls))
    print("QEMU user mode: %d/%d getppid events between their ticks; tick -> QEMU line "
          "median %.1f us, max %.1f us" % (inside, N - 1, delays[N // 2] / 1e3,
                                           delays[-1] / 1e3))
    assert inside >= (N - 1) // 2, (inside, delays)
    # counted in the index; babeltrace2 reads the QEMU events as typed CTF events
    qc = _index(out)["qemu_clock"]
    assert qc["kind"] == "arrival" and qc["events"] == len(q) and qc["lost_lines"] == 0, qc
    assert qc["lines"] == qc["events"] + qc["other_lines"] and qc["rejected"] == 0, qc
    st = stats(out)
    assert totals(st, "qemu") == {"recorded": len(q), "discarded": 0, "malformed": 0,
                                  "torn": 0}
    assert st["clocks"]["local"]["causality_violations"] == 0
    bt, _ = babeltrace(out)
    assert len([1 for n, _ in bt if n == "guest_user_syscall"]) == len(
        [e for e in q if e["name"] == "guest_user_syscall"])


def test_qemu_user_a_dead_reader_neither_stalls_nor_kills_qemu(tmp_path):
    """The reader process killed mid-run: QEMU keeps running (no SIGPIPE, no full pipe),
    the program's events are all recorded, and the lines nobody recorded are counted."""
    out = str(tmp_path / "s")
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--qemu-trace", "guest_user_syscall", "--",
                            *_qemu_cmd(tmp_path, 1500, 0.002)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env())
    reader = None
    deadline = time.monotonic() + 60
    while reader is None and time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmd = f.read().split(b"\0")
                with open("/proc/%s/stat" % pid) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == rec.pid and b"hypertrace.host.qemuuser" in cmd:
                reader = int(pid)
        time.sleep(0.05)
    assert reader is not None, "no reader process"
    time.sleep(1.0)
    os.kill(reader, signal.SIGKILL)
    o, e = rec.communicate(timeout=300)
    assert rec.returncode == 0, e
    assert "APP DONE" in o and "Traceback" not in e, e
    qc = _index(out)["qemu_clock"]
    assert qc["lost_lines"] > 0 and "reader_error" in qc, qc
    st = stats(out)
    assert totals(st, "local")["recorded"] == 1500
    why = [x for x in st["losses"]["qemu"] if x["kind"] == "qemu_log"]
    assert why and why[0]["count"] == qc["lost_lines"], st["losses"]


@pytest.mark.parametrize("opts, cmd, why", [
    (("--qemu-trace", "guest_*"), ["/bin/true"], "needs a QEMU user-mode command"),
    (("--qemu-trace", "guest_*"), ["qemu-system-x86_64", "-nographic"],
     "needs a QEMU user-mode command"),
    (("--qemu-trace", "a,file=/tmp/x"), ["qemu-x86_64", "/bin/true"], "bad --qemu-trace"),
    (("--qemu-trace", "guest_*"), ["qemu-x86_64", "-D", "/tmp/l", "/bin/true"], "drop -D"),
])
def test_qemu_user_bad_requests_are_one_line_errors(tmp_path, opts, cmd, why):
    out = str(tmp_path / "s")
    r = record(out, *cmd, opts=opts, check=False)
    assert r.returncode == 2 and why in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not os.path.exists(out)


def test_qemu_user_stopping_the_recorder_alone_never_kills_the_program(tmp_path):
    """SIGINT to the recorder only, while the emulated program runs on and QEMU keeps
    logging: the reader reports, then reads and throws away to the pipe's end, so QEMU
    never writes into a closed pipe (SIGPIPE) nor a full one (a hang)."""
    done = tmp_path / "survived"
    out = str(tmp_path / "s")
    script = ("for i in $(seq 300); do echo x > /dev/null; done; sleep 2; "
              "for i in $(seq 3000); do echo x > /dev/null; done; echo ok > %s" % done)
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--qemu-trace", "guest_user_syscall*", "--", "qemu-x86_64",
                            "/bin/sh", "-c", script], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env())
    time.sleep(1.0)
    rec.send_signal(signal.SIGINT)
    o, e = rec.communicate(timeout=300)
    assert rec.returncode == 0 and "Traceback" not in e, e
    assert done.read_text() == "ok\n"            # the program ran to its end
    qc = _index(out)["qemu_clock"]
    assert qc["events"] > 0 and "reader_error" not in qc, qc
