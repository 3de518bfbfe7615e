"""Paths the recorder or QEMU opens (issue 11, items 1-6 and setup failures of 18).

Another local user (the `other_user` fixture) plants symlinks, files, FIFOs and
sockets where hypertrace's names go; the recorder must never follow, reuse or
talk to any of it, and refuse what it cannot use in one line."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest
from conftest import env, hypertrace, record, small_disk

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (other users, tmpfs)")
EMIT = "from hypertrace import guest\nguest.event('x', 'uint32_t i')(1)\n"


def qemu_paths(name: str, **kw) -> dict:
    """The paths `qemu-args --name NAME` hands to QEMU, and the recorder's own next to them."""
    a = hypertrace("qemu-args", "--name", name, **kw).stdout
    p = {"region": re.search(r"mem-path=([^,\s]+)", a).group(1),
         "ctl": re.search(r"-chardev socket,[^\s]*path=([^,\s]+)", a).group(1),
         "qmp": re.search(r"-qmp unix:([^,\s]+)", a).group(1),
         "log": re.search(r"-D (\S+)", a).group(1)}
    p["host"], p["qemu"] = p["region"] + "-host", p["region"] + "-qemu"
    return p


def start(out: str, *args: str, **kw) -> subprocess.Popen:
    """`hypertrace record -o OUT ARGS` in the background, once it serves (or has failed)."""
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out, *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=kw.pop("env", None) or env(), **kw)
    line = rec.stdout.readline()
    assert "serving channel" in line, (line, rec.stderr.read() if rec.poll() is not None
                                       else "")
    return rec


def stop(rec: subprocess.Popen, timeout: float = 30) -> tuple:
    """SIGINT, then its output; a recorder that does not stop fails the test."""
    rec.send_signal(signal.SIGINT)
    try:
        out, err = rec.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        rec.kill()
        out, err = rec.communicate()
        raise AssertionError("the recorder did not stop on SIGINT:\n" + err[-2000:])
    return out, err


def one_line_error(r, *words: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hypertrace: error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def listing(path: str) -> set:
    return set(os.listdir(path)) if os.path.isdir(path) else set()


@pytest.fixture
def victim(tmp_path):
    """A root file another user would like root to damage, and a directory they own."""
    os.chmod(tmp_path, 0o755)
    v = tmp_path / "victim"
    v.write_text("precious\n")
    os.chmod(v, 0o644)
    return v


def unchanged(v) -> None:
    st = os.stat(v)
    assert v.read_text() == "precious\n" and stat.S_IMODE(st.st_mode) == 0o644, (
        "the victim was written through a planted path", oct(st.st_mode), st.st_size)


# -- 1, 2: the names of a QEMU guest -------------------------------------------------

PLANT = r"""
import os, socket, sys, json
victim, paths = sys.argv[1], json.loads(sys.argv[2])
done, socks = [], []
for what, p in paths.items():
    try:
        if what in ("ctl", "qmp"):
            s = socket.socket(socket.AF_UNIX)
            s.bind(p); s.listen(4); socks.append(s)
        elif what == "log":
            os.mkfifo(p)
        else:
            os.symlink(victim, p)
        done.append(what)
    except OSError as e:
        pass
print("PLANTED", json.dumps(done), flush=True)
sys.stdin.readline()
"""


@ROOT_ONLY
def test_another_user_can_plant_nothing_where_qemu_and_the_recorder_look(tmp_path, victim,
                                                                         other_user):
    """Item 1 and 2: symlinks at the region, -host and -qemu names, a FIFO at the log,
    listening sockets at .ctl and .qmp - planted before anything runs. None of it may be
    possible, and the recording works and leaves the victim alone."""
    name = "htplant%d" % os.getpid()
    paths = qemu_paths(name)
    planter = subprocess.Popen(["setpriv", "--reuid=%d" % other_user.uid,
                                "--regid=%d" % other_user.gid, "--clear-groups", "--",
                                sys.executable, "-c", PLANT, str(victim), json.dumps(paths)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env=env())
    try:
        planted = json.loads(planter.stdout.readline().split(" ", 1)[1])
        # the private runtime directory: another user cannot even look inside
        looked = other_user.python("import os, sys\nos.listdir(os.path.dirname(sys.argv[1]))",
                                   paths["region"])
        rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o",
                                str(tmp_path / "s"), "--qemu", name], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env())
        served = "serving channel" in rec.stdout.readline()
        out, err = stop(rec)
    finally:
        planter.communicate("\n", timeout=30)
    unchanged(victim)
    assert planted == [], "another user planted %s in the recorder's paths" % planted
    assert served and rec.returncode == 0 and "Traceback" not in err, err
    assert looked.returncode != 0 and "PermissionError" in looked.stderr, looked.stdout
    st = os.stat(os.path.dirname(paths["region"]))
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()


def qmp(path: str, *cmds: str) -> list:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    f = s.makefile("rw")
    json.loads(f.readline())                        # the greeting
    out = []
    for c in ("qmp_capabilities",) + cmds:
        f.write(json.dumps({"execute": c}) + "\n")
        f.flush()
        while True:
            m = json.loads(f.readline())
            if "event" not in m:
                out.append(m.get("return"))
                break
    s.close()
    return out


def wait_for(pred, what: str, timeout: float = 30) -> None:
    t = time.monotonic()
    while not pred():
        assert time.monotonic() - t < timeout, "timed out waiting for " + what
        time.sleep(0.05)


@ROOT_ONLY
@pytest.mark.parametrize("first", ["qemu", "recorder"])
def test_qemu_args_safe_whichever_starts_first(tmp_path, other_user, first):
    """Item 2, with a real qemu-system-x86_64 (paused, nothing booted): its memory-backend
    file, QMP socket and log are out of other users' reach whichever side starts first,
    its chardev connects to the recorder's control socket, and the recorder serves the
    region QEMU created."""
    name = "htorder%d%s" % (os.getpid(), first[0])
    paths = qemu_paths(name)
    out = str(tmp_path / "s")
    args = shlex.split(hypertrace("qemu-args", "--name", name).stdout)
    qemu = rec = None

    def start_qemu():
        q = subprocess.Popen(["qemu-system-x86_64", "-S", "-display", "none", "-nodefaults",
                              "-machine", "accel=tcg", "-m", "64"] + args,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: os.path.exists(paths["qmp"]) or q.poll() is not None, "QEMU")
        assert q.poll() is None, q.stderr.read()
        return q
    try:
        if first == "qemu":
            qemu = start_qemu()
            rec = start(out, "--qemu", name)
        else:
            rec = start(out, "--qemu", name)
            qemu = start_qemu()
        # the chardev is connected: QEMU reaches the recorder's socket
        wait_for(lambda: any(c["label"] == "htctl-" + name and
                             not c["filename"].startswith("disconnected")
                             for c in qmp(paths["qmp"], "query-chardev")[1]), "the chardev")
        for what in ("region", "qmp", "log"):
            assert os.path.exists(paths[what]), what
        r = other_user.python(
            "import os, socket, sys\nbad = []\n"
            "for p in sys.argv[1:4]:\n"
            "    try:\n        open(p, 'rb').read(1); bad.append('read ' + p)\n"
            "    except OSError:\n        pass\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[4]); bad.append('connect qmp')\n"
            "except OSError:\n    pass\n"
            "print('BAD', bad)\n", paths["region"], paths["log"], paths["ctl"], paths["qmp"])
        assert "BAD []" in r.stdout, r.stdout + r.stderr
        st = os.stat(paths["region"])
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        o, err = stop(rec)
        rec = None
        assert "Traceback" not in err, err
    finally:
        if rec is not None:
            stop(rec)
        if qemu is not None:
            qemu.kill()
            qemu.wait()
        for what in ("region", "qmp", "log"):       # QEMU's files: QEMU's to remove
            if os.path.lexists(paths[what]):
                os.unlink(paths[what])
    from hypertrace.read.session import Session
    idx = Session(out).index
    assert idx["domains"][0]["name"] == name
    assert idx["qemu_clock"]["refused_logs"] == {}


# -- 2: QMP only to a socket of ours --------------------------------------------------

class FakeQMP(threading.Thread):
    """A QMP server that answers everything and remembers what it was sent."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.got: list = []
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            c.settimeout(5)
            try:
                c.sendall(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},'
                          b' "package": ""}, "capabilities": []}}\n')
                buf, dec = "", json.JSONDecoder()
                while True:
                    data = c.recv(65536)     # QMP frames need not end in a newline
                    if not data:
                        break
                    buf += data.decode(errors="replace")
                    while buf.strip():
                        try:
                            msg, end = dec.raw_decode(buf.lstrip())
                        except ValueError:
                            break
                        buf = buf.lstrip()[end:]
                        self.got.append(msg.get("execute"))
                        c.sendall(json.dumps({"return": {}, "id": msg.get("id")}).encode()
                                  + b"\n")
            except OSError:
                pass
            finally:
                c.close()


QMP_RULES = """
[[trigger]]
event = "go"
actions = [ { qemu_trace_enable = "virtio_*" } ]
"""


@ROOT_ONLY
def test_qmp_goes_only_to_a_socket_of_ours(tmp_path, other_user):
    """Item 2: a listening socket at the .qmp path that is not ours (owned by another
    user) gets nothing from the recorder's triggers."""
    name = "htqmp%d" % os.getpid()
    paths = qemu_paths(name)
    fake = FakeQMP(paths["qmp"])
    os.chown(paths["qmp"], other_user.uid, other_user.gid)
    fake.start()
    rules = tmp_path / "rules.toml"
    rules.write_text(QMP_RULES)
    try:
        rec = start(str(tmp_path / "s"), "--qemu", name, "--triggers", str(rules))
        try:
            # a producer in the guest's region (as root, like the guest's own events)
            subprocess.run([sys.executable, "-c", "from hypertrace import guest\n"
                            "import sys\nguest.connect('shm:' + sys.argv[1])\n"
                            "guest.event('go', 'uint32_t i')(1)\nguest.disconnect()\n",
                            paths["region"]], check=True, env=env(), timeout=60)
            time.sleep(1.5)
        finally:
            out, err = stop(rec)
    finally:
        fake.stopping = True
        fake.join(5)
        fake.sock.close()
        os.unlink(paths["qmp"])
    assert rec.returncode == 0, err
    assert "trace-event-set-state" not in fake.got, "the recorder talked to a foreign QMP"
    st = json.loads(hypertrace("stats", str(tmp_path / "s"), "--json").stdout)
    acts = st["triggers"]["actions"]
    assert acts["qemu_trace_enable virtio_*"]["count"] == 1
    assert acts["qemu_trace_enable virtio_*"]["errors"] == 1


# -- 3: QEMU's log ------------------------------------------------------------------------

@ROOT_ONLY
@pytest.mark.parametrize("plant", ["fifo", "foreign"])
def test_qemu_log_that_is_a_fifo_or_anothers_file_is_refused(tmp_path, other_user, plant):
    """Item 3: a FIFO at the log path must not hang the recorder (SIGINT still stops it);
    another user's file there must not inject events. The refusal is in the index."""
    name = "htlog%d%s" % (os.getpid(), plant)
    paths = qemu_paths(name)
    out = str(tmp_path / "s")
    rec = start(out, "--qemu", name)
    try:
        if plant == "fifo":
            os.mkfifo(paths["log"])
        else:
            with open(paths["log"], "w") as f:
                f.write("4242@%d.000001:forged_event pwned=1\n" % int(time.time()))
            os.chown(paths["log"], other_user.uid, other_user.gid)
        time.sleep(1.0)
    finally:
        try:
            o, err = stop(rec)
        finally:
            if os.path.lexists(paths["log"]):
                os.unlink(paths["log"])
    assert rec.returncode == 0 and "Traceback" not in err, err
    from hypertrace.read.session import Session
    s = Session(out)
    assert not [e for e in s.events() if e.name == "forged_event"]
    refused = s.index["qemu_clock"]["refused_logs"]
    assert name in refused and ("regular file" if plant == "fifo" else "uid") in refused[name]


# -- 4: attach mode -----------------------------------------------------------------------

MAKE_REGION = ("import os, sys\nfrom hypertrace.host.region import Region\n"
               "r = Region.create(sys.argv[1], 'foreign', n_rings=2, ring_size=4096)\n"
               "os.chmod(sys.argv[1], int(sys.argv[2], 8))\n")


@ROOT_ONLY
@pytest.mark.parametrize("case", ["foreign", "world-readable", "symlink"])
def test_attach_refuses_a_region_that_is_not_privately_ours(tmp_path, other_user, case):
    """Item 4: `record --channel shm:PATH` attaches only to a regular file of ours with
    no group/other permission bits, never through a symlink."""
    path = "/dev/shm/ht-foreign-%s" % uuid.uuid4().hex[:8]
    made = []
    try:
        if case == "foreign":
            r = other_user.python(MAKE_REGION, path, "666")
            assert r.returncode == 0, r.stderr
            made.append(path)
        else:
            target = path + ("-target" if case == "symlink" else "")
            subprocess.run([sys.executable, "-c", MAKE_REGION, target,
                            "600" if case == "symlink" else "644"], env=env(), check=True)
            made.append(target)
            if case == "symlink":
                os.symlink(target, path)
                made.append(path)
        try:
            r = hypertrace("record", "-o", str(tmp_path / "s"), "--channel", "shm:" + path,
                           check=False, timeout=20)
        except subprocess.TimeoutExpired:
            raise AssertionError("the recorder served %s" % case) from None
        one_line_error(r, path, {"foreign": "uid", "world-readable": "0644",
                                 "symlink": "symbolic link"}[case])
        assert not os.path.exists(tmp_path / "s"), "a refused start leaves no session"
    finally:
        for p in made:
            os.unlink(p)


# -- 5: the output directory ------------------------------------------------------------

@ROOT_ONLY
def test_output_directory_planted_by_another_user_is_refused(tmp_path, victim, other_user):
    """Item 5: an existing DIR another user made (in a world-writable place), with symlinks
    at the stream file, metadata temp and .hypertrace names: refused, nothing written
    through them."""
    pub = pathlib.Path(tempfile.mkdtemp(prefix="htpub-", dir="/tmp"))   # like /tmp itself
    os.chmod(pub, 0o1777)
    try:
        _planted_output_dir(pub, victim, other_user)
    finally:
        shutil.rmtree(pub)


def _planted_output_dir(pub, victim, other_user) -> None:
    out, evil = pub / "out", pub / "evil"
    r = other_user.python(
        "import os, sys\nout, evil, victim = sys.argv[1:4]\n"
        "os.mkdir(evil); os.chmod(evil, 0o777); os.mkdir(out); os.chmod(out, 0o777)\n"
        "for n in ('local-0000', 'host-0001', '.metadata.tmp', 'metadata.tmp'):\n"
        "    os.symlink(victim, os.path.join(out, n))\n"
        "os.symlink(evil, os.path.join(out, '.hypertrace'))\n", str(out), str(evil),
        str(victim))
    assert r.returncode == 0, r.stderr
    r = record(str(out), sys.executable, "-c", EMIT, check=False)
    one_line_error(r, str(out))
    unchanged(victim)
    assert os.listdir(evil) == [], "root wrote into the attacker's directory"


@ROOT_ONLY
def test_output_directory_must_be_new_or_empty_and_ours(tmp_path, victim):
    """Item 5, our own directories: a symlink as DIR, a non-empty DIR and a world-writable
    DIR are refused; an empty one of ours is used."""
    link = tmp_path / "link"
    os.symlink(tmp_path, link)
    one_line_error(record(str(link), sys.executable, "-c", EMIT, check=False), "symbolic link")
    busy = tmp_path / "busy"
    busy.mkdir()
    os.symlink(victim, busy / "local-0000")
    one_line_error(record(str(busy), sys.executable, "-c", EMIT, check=False), "not empty")
    unchanged(victim)
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o777)
    one_line_error(record(str(wide), sys.executable, "-c", EMIT, check=False), "writable")
    empty = tmp_path / "empty"
    empty.mkdir()
    record(str(empty), sys.executable, "-c", EMIT)
    assert os.path.exists(empty / "metadata")


# -- 6: the pid file --------------------------------------------------------------------

@ROOT_ONLY
def test_snapshot_never_signals_a_process_that_is_not_the_recorder(tmp_path):
    """Item 6: the pid file is removed at stop; a stale or planted one (an unrelated
    process's pid, with or without its start time) makes `snapshot` refuse, and that
    process lives on."""
    out = str(tmp_path / "s")
    record(out, sys.executable, "-c", EMIT)
    pidfile = os.path.join(out, ".hypertrace", "collector.pid")
    assert not os.path.lexists(pidfile), "collector.pid outlives the recording"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with open("/proc/%d/stat" % sleeper.pid) as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
        for text in ("%d\n" % sleeper.pid, "%d %s\n" % (sleeper.pid, started)):
            with open(pidfile, "w") as f:
                f.write(text)
            r = hypertrace("snapshot", out, check=False)
            one_line_error(r, "no live recording")
            time.sleep(0.2)
            assert sleeper.poll() is None, "snapshot signalled an unrelated process"
    finally:
        sleeper.kill()
        sleeper.wait()


# -- 18: setup failures -------------------------------------------------------------------

@ROOT_ONLY
def test_a_stale_qemu_events_region_is_a_one_line_error_and_leaves_nothing(tmp_path):
    """18: the name of the QEMU-events region taken (a crashed recorder's file): one line,
    exit 2, and the regions this start made are gone again."""
    name = "htstale%d" % os.getpid()
    paths = qemu_paths(name)
    rt = os.path.dirname(paths["region"])
    with open(paths["qemu"], "wb") as f:
        f.write(b"left by a crash")
    try:
        before = listing(rt)
        r = hypertrace("record", "-o", str(tmp_path / "s"), "--qemu", name, check=False,
                       timeout=30)
        one_line_error(r, paths["qemu"])
        assert listing(rt) == before
        assert not os.path.exists(tmp_path / "s")
    finally:
        os.unlink(paths["qemu"])


@ROOT_ONLY
def test_a_guest_name_already_served_is_a_one_line_error(tmp_path):
    """18: a second `record --qemu NAME` while one serves NAME: one line, exit 2, and the
    first recording's files stay and it goes on."""
    name = "httaken%d" % os.getpid()
    paths = qemu_paths(name)
    rec = start(str(tmp_path / "a"), "--qemu", name)
    try:
        before = listing(os.path.dirname(paths["region"]))
        r = hypertrace("record", "-o", str(tmp_path / "b"), "--qemu", name, check=False,
                       timeout=30)
        one_line_error(r, "another recording of %s" % name)
        assert listing(os.path.dirname(paths["region"])) == before
        assert rec.poll() is None
    finally:
        out, err = stop(rec)
    assert rec.returncode == 0, err
    for what in ("region", "host", "qemu", "ctl"):
        assert not os.path.lexists(paths[what]), what


@ROOT_ONLY
def test_bad_guest_names_are_refused_in_one_line(tmp_path):
    """18: a --qemu name that is not a plain file name is refused before anything is made."""
    rt = os.path.dirname(qemu_paths("htany")["region"])
    before = listing(rt)
    for bad in ("..", "a/b", "x" * 40, "a,b"):
        try:
            r = hypertrace("record", "-o", str(tmp_path / "s"), "--qemu", bad, check=False,
                           timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError("--qemu %r was served" % bad) from None
        one_line_error(r, "bad guest name")
        r = hypertrace("qemu-args", "--name", bad, check=False)
        one_line_error(r)
    assert listing(rt) == before and not os.path.exists(tmp_path / "s")


@ROOT_ONLY
def test_a_full_runtime_filesystem_is_a_one_line_error_and_leaves_nothing(tmp_path):
    """18: no room for the region (a full tmpfs as the runtime directory's file system):
    one line, exit 2, no partial region left, no session directory."""
    with small_disk(tmp_path / "small", "1m") as mnt:
        rt = mnt / "rt"
        e = env(HYPERTRACE_RUNTIME_DIR=str(rt))
        r = record(str(tmp_path / "s"), sys.executable, "-c", EMIT, check=False, env=e)
        one_line_error(r, "No space left on device")
        assert os.listdir(rt) == [] and not os.path.exists(tmp_path / "s")
        # an empty output directory given is left as it was: empty, usable next time
        (tmp_path / "given").mkdir()
        r = record(str(tmp_path / "given"), sys.executable, "-c", EMIT, check=False, env=e)
        one_line_error(r, "No space left on device")
        assert os.listdir(rt) == [] and os.listdir(tmp_path / "given") == []


@ROOT_ONLY
def test_a_runtime_directory_that_is_not_private_is_refused(tmp_path, other_user):
    """1: the runtime directory itself - another user's, a symlink, or not 0700 - is
    refused in one line by the recorder and by qemu-args."""
    os.chmod(tmp_path, 0o755)
    cases = {}
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, other_user.uid, other_user.gid)
    cases["uid %d" % other_user.uid] = theirs
    link = tmp_path / "link"
    (tmp_path / "real").mkdir(mode=0o700)
    os.symlink(tmp_path / "real", link)
    cases["symbolic link"] = link
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o755)
    cases["mode 0755"] = wide
    for why, path in cases.items():
        e = env(HYPERTRACE_RUNTIME_DIR=str(path))
        one_line_error(record(str(tmp_path / "s"), sys.executable, "-c", EMIT, check=False,
                              env=e), why)
        one_line_error(hypertrace("qemu-args", "--name", "vm1", check=False, env=e), why)
        assert not os.path.exists(tmp_path / "s")
