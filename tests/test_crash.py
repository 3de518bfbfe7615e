"""Crashes and resources: a full disk, other local users."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
from conftest import ROOT, babeltrace, env, hypertrace

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0 and not os.environ.get("CI"),
                               reason="needs root (to mount a small tmpfs / switch users)")


@ROOT_ONLY
def test_full_disk_stops_recording_with_a_clear_error_and_a_readable_trace(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    assert r.returncode == 0, "cannot mount a tmpfs: %s" % r.stderr
    try:
        out = str(mnt / "s")
        # ~30 MB of records into a 2 MiB file system
        r = hypertrace("record", "-o", out, "--", sys.executable,
                       os.path.join(ROOT, "examples", "workload.py"), "2", "150000", check=False)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
        assert "recording stopped" in r.stderr
        # everything written up to then is whole: babeltrace2 reads it without an error
        events, _ = babeltrace(out, allow_discarded=True)
        assert len(events) > 1000
        assert not glob.glob(os.path.join(out, ".metadata.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


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
