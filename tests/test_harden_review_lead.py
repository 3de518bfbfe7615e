"""Findings of the adversarial review (issue 11 follow-up): state that grows with a
guest's trigger firings, problems noted once per declaration, bad recorder options
that left a region behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import env, hypertrace, record, write

PY = sys.executable


def _index(out: str) -> dict:
    with open(os.path.join(out, ".hypertrace", "session.json")) as f:
        return json.load(f)


ROI = r"""
import time
from hypertrace import guest
roi = guest.event("roi", "uint32_t i")
for i in range(25000):
    roi(i)
    if i % 10 == 0:
        time.sleep(0.002)     # spread over many drain passes: each runs the action again
"""


def test_a_trigger_firing_forever_adds_no_state(session, tmp_path):
    """Every run of an `enable` action used to append a rule and a log entry (134 335 of
    each in the review, a 15.6 MB index rewritten every second): the same pattern now
    replaces its rule, and the index lists the latest changes with a total."""
    rules = write(tmp_path, "r.toml", '[[trigger]]\nevent = "roi"\n'
                                      'actions = [ { enable = "io_*" } ]\n')
    app = write(tmp_path, "roi.py", ROI)
    record(session, PY, app, opts=("--triggers", rules), timeout=300)
    idx = _index(session)
    ran = idx["control_changes"]
    assert ran > 1000, ran                  # the flood really ran the action that often
    assert len(idx["control"]) == 1000      # the latest changes, bounded
    trig = idx["triggers"][0] if isinstance(idx["triggers"], list) else idx["triggers"]
    assert json.dumps(trig)                 # the per-action counts are still there


DECLS = r"""
import time
from hypertrace import guest
for k in range(120):
    guest.event("ev%d" % k, "uint32_t y")(k)
    time.sleep(0.003)         # declarations trickle in over many drain passes
"""


def test_a_rule_that_never_holds_is_noted_once_per_declaration(session, tmp_path):
    """The problem list was rebuilt and re-appended at every new declaration
    (12 967 entries for 250 events in the review): one note per event now."""
    rules = write(tmp_path, "r.toml", '[[trigger]]\nevent = "ev*"\nwhen = "x > 1"\n'
                                      'actions = [ { marker = "m" } ]\n')
    app = write(tmp_path, "decls.py", DECLS)
    record(session, PY, app, opts=("--triggers", rules), timeout=300)
    probs = _index(session)["trigger_problems"]
    assert len(probs) == 120 == len(set(probs)), len(probs)


@pytest.mark.parametrize("opt", [("--block-timeout", "-5"), ("--block-timeout", "1e300"),
                                 ("--block-timeout", "nan"), ("--sync-interval", "0")])
def test_bad_recorder_options_are_one_line_and_leave_nothing(tmp_path, opt):
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    r = hypertrace("record", "-o", str(tmp_path / "s"), *opt, "--", "true", check=False,
                   env=dict(os.environ, HYPERTRACE_RUNTIME_DIR=str(rt),
                            PYTHONPATH=os.path.join(os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))), "src")))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("hypertrace: error:") and len(r.stderr.splitlines()) == 1, \
        r.stderr
    assert os.listdir(rt) == []            # no region left behind
    assert not os.path.exists(tmp_path / "s")


def test_recover_refuses_a_session_its_recorder_stopped(session, tmp_path):
    app = write(tmp_path, "one.py", "from hypertrace import guest\n"
                                    "guest.event('one', 'uint32_t i')(1)\n")
    record(session, PY, app)
    r = hypertrace("recover", session, check=False)
    assert r.returncode == 2 and "stopped cleanly" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_recover_never_robs_a_live_recording_of_the_same_channel(tmp_path):
    """A copy of a running session's directory (its index names the live region, which
    a later recording of a guest reuses too) must not be 'recovered' out of the live
    recording's rings: recover refuses, the live one loses nothing."""
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    e = env(HYPERTRACE_RUNTIME_DIR=str(rt))
    live = str(tmp_path / "live")
    rec = subprocess.Popen([PY, "-m", "hypertrace.cli", "record", "-o", live, "--qemu", "vm1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    try:
        idx = os.path.join(live, ".hypertrace", "session.json")
        for _ in range(200):
            if os.path.exists(idx):
                break
            time.sleep(0.05)
        time.sleep(1.2)                    # an index written by the loop, not yet 'stopped'
        old = str(tmp_path / "old")
        shutil.copytree(live, old, ignore=shutil.ignore_patterns("*.sock", "collector.pid"))
        before = sorted(os.listdir(rt))
        r = hypertrace("recover", old, check=False, env=e)
        assert r.returncode == 2 and "live recorder" in r.stderr, r.stdout + r.stderr
        assert sorted(os.listdir(rt)) == before      # nothing of the live one removed
    finally:
        rec.send_signal(signal.SIGINT)
        out, err = rec.communicate(timeout=120)
    assert rec.returncode == 0, err
    assert _index(live)["stopped"] is True


FAKE_CTL = r"""
import json, os, socket, sys, threading
d, mode, log = sys.argv[1], sys.argv[2], sys.argv[3]
os.makedirs(os.path.join(d, ".hypertrace"), exist_ok=True)
path = os.path.join(d, ".hypertrace", "ctl.sock")
s = socket.socket(socket.AF_UNIX)
s.bind(path)
os.chmod(path, 0o777)
s.listen(4)
print("READY", flush=True)
replies = {"list": b"[1]\n",
           "shape": b'{"ok": true, "status": {"domains": [{"x": 1}]}}\n',
           "escape": json.dumps({"ok": True, "status": {"domains": [{
               "domain": "d\x1b[2J", "events": [{"name": "e\x1b]0;PWNED\x07", "enabled": True,
               "recorded": 1}], "producers": []}]}}).encode() + b"\n"}
while True:
    c, _ = s.accept()
    got = c.recv(4096)
    with open(log, "ab") as f:
        f.write(got)
    try:
        if mode == "endless":
            while True:
                c.sendall(b"x" * (1 << 20))
        c.sendall(replies[mode])
    except OSError:
        pass
    c.close()
"""


def _fake_ctl(run, d, mode, log):
    p = subprocess.Popen(run + [PY, "-c", FAKE_CTL, d, mode, log], stdout=subprocess.PIPE,
                         text=True, env=env())
    assert p.stdout.readline().startswith("READY")
    return p


def test_ctl_sends_nothing_to_a_socket_in_someone_elses_directory(tmp_path, other_user):
    import pathlib
    import tempfile
    base = pathlib.Path(tempfile.mkdtemp(prefix="ht-pub-", dir="/tmp"))   # reachable by them
    os.chmod(base, 0o755)
    os.chown(base, other_user.uid, other_user.gid)
    log = base / "log"
    run = ["setpriv", "--reuid=%d" % other_user.uid, "--regid=%d" % other_user.gid,
           "--clear-groups", "--"]
    fake = _fake_ctl(run, str(base), "shape", str(log))
    try:
        r = hypertrace("ctl", str(base), "status", check=False)
    finally:
        fake.kill()
        fake.wait()
        got = log.read_bytes() if log.exists() else b""
        shutil.rmtree(base, ignore_errors=True)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "not a private directory of yours" in r.stderr, r.stderr
    assert got == b""                       # not even the request reached it


@pytest.mark.parametrize("mode", ["endless", "list", "shape", "escape"])
def test_ctl_bad_replies_are_one_line_and_text_is_made_safe(tmp_path, mode):
    d = tmp_path / "s"
    d.mkdir()
    fake = _fake_ctl([], str(d), mode, str(tmp_path / "log"))
    try:
        r = hypertrace("ctl", str(d), "status", check=False, timeout=60)
    finally:
        fake.kill()
        fake.wait()
    if mode == "escape":
        assert r.returncode == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout
        assert "\\x1b[2J" in r.stdout, r.stdout
    else:
        assert r.returncode == 2 and r.stderr.startswith("hypertrace: error:"), r.stderr
        assert len(r.stderr.splitlines()) == 1, r.stderr
