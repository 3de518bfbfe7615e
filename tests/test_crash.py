"""Crashes and resources: a full disk, other local users."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
from conftest import ROOT, babeltrace, env, hypertrace, small_disk, stats, totals

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                               reason="needs root (to mount a small tmpfs / switch users)")


@ROOT_ONLY
def test_full_disk_stops_recording_with_a_clear_error_and_a_readable_trace(tmp_path):
    with small_disk(tmp_path / "small", "2m") as mnt:
        out = str(mnt / "s")
        # ~30 MB of records into a 2 MiB file system
        r = hypertrace("record", "-o", out, "--", sys.executable,
                       os.path.join(ROOT, "examples", "workload.py"), "2", "150000", check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
        assert "recording stopped" in r.stderr
        # everything written up to then is whole: babeltrace2 reads it without an error
        events, _ = babeltrace(out, allow_discarded=True)
        # the disk refuses a whole ring's packet early on: what fits of it is kept
        # (most of the 2 MiB), and the index counts exactly what the files hold
        assert len(events) > 10000
        st = stats(out)
        assert sum(totals(st, d)["recorded"] for d in ("local", "host")) == len(events)
        assert not glob.glob(os.path.join(out, ".metadata.tmp"))


@ROOT_ONLY
def test_other_local_users_cannot_attach_read_or_control(tmp_path):
    os.chmod(tmp_path, 0o755)
    out = str(tmp_path / "s")
    app = tmp_path / "app.py"
    app.write_text("import os, sys\nfrom hypertrace import guest\n"
                   "guest.event('x', 'uint32_t i')(1)\n"
                   "print('READY', os.environ['HYPERTRACE_CHANNEL'], flush=True)\n"
                   "sys.stdin.readline()\n")
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out, "--",
                            sys.executable, str(app)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        line = rec.stdout.readline()
        assert line.startswith("READY"), line
        region = line.split()[1].split(",")[0][len("shm:"):]
        paths = [region, region + ".ctl", region + "-host",
                 os.path.join(out, ".hypertrace", "ctl.sock")]
        for p in paths:
            st = os.stat(p)
            assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.geteuid(), (p, oct(st.st_mode))
        probe = (
            "import os, socket, sys\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "bad = []\n"
            "for p in sys.argv[1:3] + [sys.argv[4]]:\n"
            "    try:\n"
            "        open(p, 'rb').read(1); bad.append('read ' + p)\n"
            "    except PermissionError:\n"
            "        pass\n"
            "for p in (sys.argv[2], sys.argv[3]):\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            "    try:\n"
            "        s.connect(p); bad.append('connect ' + p)\n"
            "    except PermissionError:\n"
            "        pass\n"
            "print('BAD', bad)\n")
        r = subprocess.run([sys.executable, "-c", probe, region, region + ".ctl",
                            os.path.join(out, ".hypertrace", "ctl.sock"), region + "-host"],
                           capture_output=True, text=True)
        assert "BAD []" in r.stdout, r.stdout + r.stderr
        # the guest library, run as that user, refuses the channel with a clear message
        r = subprocess.run([sys.executable, "-c",
                            "import os\nfrom hypertrace import guest\n"
                            "os.setgid(65534); os.setuid(65534)\n"
                            "try:\n    guest.connect('shm:' + %r)\n"
                            "except guest.ChannelError as e:\n    print('REFUSED', e)\n"
                            % region], capture_output=True, text=True, env=env())
        assert "REFUSED" in r.stdout and "ermission" in r.stdout, r.stdout + r.stderr
    finally:
        rec.stdin.write("\n")
        rec.stdin.flush()
        rec.communicate(timeout=60)
    assert rec.returncode == 0


KILLED = r"""
import os, sys, threading, time
from hypertrace import guest
tp = guest.event("work", "uint32_t thread, uint32_t i, const char *tag")

def run(t, a, b):
    for i in range(a, b):
        tp(t, i, "t%d-%d" % (t, i))

def phase(a, b):
    ts = [threading.Thread(target=run, args=(t, a, b)) for t in range(2)]
    for t in ts: t.start()
    for t in ts: t.join()

phase(0, 20000)
open(sys.argv[1] + ".ready", "w").close()
while not os.path.exists(sys.argv[1]):   # the recorder is killed meanwhile
    time.sleep(0.01)
phase(20000, 22000)                      # committed while no collector runs
print("APP DONE", flush=True)
"""


def test_collector_killed_then_recover_loses_no_committed_event(tmp_path):
    import signal
    import time
    app = tmp_path / "app.py"
    app.write_text(KILLED)
    flag = tmp_path / "go"
    out = str(tmp_path / "s")
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--mode", "block", "--", sys.executable, str(app), str(flag)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    deadline = time.monotonic() + 120
    while not os.path.exists(str(flag) + ".ready"):
        assert time.monotonic() < deadline and rec.poll() is None
        time.sleep(0.02)
    time.sleep(1.5)                        # an index written; records in the reader's buffers
    os.kill(rec.pid, signal.SIGKILL)
    rec.wait()
    flag.write_text("")
    deadline = time.monotonic() + 60
    # the app (orphaned, still running) finishes into the rings
    while any(str(app) in open("/proc/%s/cmdline" % p, "rb").read().decode(errors="replace")
              for p in os.listdir("/proc") if p.isdigit() and _readable(p)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    import json
    channels = [d["channel"] for d in json.load(open(os.path.join(
        out, ".hypertrace", "session.json")))["domains"]]
    assert all(os.path.exists(c) for c in channels)       # the dead recorder's regions
    r = hypertrace("recover", out)
    assert "recovered" in r.stdout, r.stdout + r.stderr
    assert not any(os.path.exists(c) for c in channels)   # drained, then removed
    events, _ = babeltrace(out, internal=True)
    work = [(int(f["thread"]), int(f["i"])) for n, f in events if n == "work"]
    assert sorted(work) == [(t, i) for t in range(2) for i in range(22000)]   # each once
    st = json.loads(hypertrace("stats", out, "--json").stdout)
    streams = [s for s in st["streams"] if s["domain"] == "local" and s.get("file")]
    assert sum(s["recorded"] for s in streams) == 44000
    assert sum(s["discarded"] for s in streams) == 0
    assert st["clocks"]["local"]["kind"] == "estimated"
    assert hypertrace("recover", out, check=False).returncode == 2   # only once
    print("recover: %s" % r.stdout.strip())


def _readable(pid: str) -> bool:
    try:
        open("/proc/%s/cmdline" % pid, "rb").close()
        return True
    except OSError:
        return False
