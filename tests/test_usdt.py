"""The collector's USDT probes, seen by the real bpftrace attached to a real recorder.

bpftrace attaches with -p to `hypertrace record` (the probes live in its collector's
native library, host/_probes); the traced program waits until bpftrace has seen one
of its events before it emits what is counted, so nothing is emitted before the
probes are attached. What bpftrace prints is compared with what the session holds.
Needs root and a bpftrace that can attach: skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, env, hypertrace, local, stats

SDT_HEADER = any(os.path.exists(p) for p in ("/usr/include/sys/sdt.h",
                                              "/usr/include/x86_64-linux-gnu/sys/sdt.h"))
MAP_LINE = re.compile(r"^@(\w+)(?:\[(.*)\])?: (-?\d+)$")
ATTACH_S = 60


def _need_bpftrace() -> None:
    from hypertrace.host import probes
    if not probes.built():
        if SDT_HEADER and probes.library() is not None:
            pytest.fail("sys/sdt.h is installed but the probes were built without it: %s"
                        % probes.why_not())
        pytest.skip("no USDT probes in this build: %s" % probes.why_not())
    if os.geteuid() != 0:
        pytest.skip("bpftrace needs root")
    if shutil.which("bpftrace") is None:
        pytest.skip("bpftrace is not installed (Debian bpftrace)")
    r = subprocess.run(["bpftrace", "-e", "BEGIN { exit(); }"], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0:
        pytest.skip("bpftrace cannot run here: %s" % (r.stderr.strip().splitlines() or
                                                      ["exit %d" % r.returncode])[-1])


def lib() -> str:
    return hypertrace("usdt", "--lib").stdout.strip()


def maps(text: str) -> dict:
    """bpftrace's printed maps: {map: {key tuple: value}}; a map without keys is its
    value."""
    out: dict = {}
    for line in text.splitlines():
        m = MAP_LINE.match(line.strip())
        if m and m.group(2) is None:
            out[m.group(1)] = int(m.group(3))
        elif m:
            key = tuple(k.strip() for k in m.group(2).split(","))
            out.setdefault(m.group(1), {})[key] = int(m.group(3))
    return out


class Traced:
    """`hypertrace record` of an app, with bpftrace attached to the recorder."""

    def __init__(self, tmp_path, app: str, script: str, opts=(), app_args=(),
                 bt_args=(), attached=()):
        """`script`: bpftrace's program text, or with `bt_args` a script file and its
        arguments; attached: probes whose semaphores say bpftrace is in (else the
        script's `seen` line says so)."""
        self.go = str(tmp_path / "go")
        self.out = str(tmp_path / "session")
        path = tmp_path / "app.py"
        path.write_text(app)
        self.rec = subprocess.Popen(
            [sys.executable, "-m", "hypertrace.cli", "record", "-o", self.out, *opts, "--",
             sys.executable, str(path), self.go, *app_args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
            start_new_session=True)
        self.bt = None
        try:
            pid = self._recorder_pid()
            prog = [script, *bt_args] if bt_args else ["-e", script]
            self.bt = subprocess.Popen(["bpftrace", "-p", str(pid), *prog],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
            self._wait_seen(pid, attached)
        except BaseException:
            self.kill()
            raise

    def _recorder_pid(self) -> int:
        deadline = time.monotonic() + ATTACH_S
        while time.monotonic() < deadline:
            r = hypertrace("usdt", "--pid", self.out, check=False)
            if r.returncode == 0:
                return int(r.stdout)
            assert self.rec.poll() is None, self.rec.communicate()
            time.sleep(0.05)
        raise AssertionError("the recorder wrote no pid file")

    def _wait_seen(self, pid: int, attached) -> None:
        """Until bpftrace printed `seen`: it took one of the app's `ready` events (which
        the app emits until it is told to go), so every probe is attached; or until
        the semaphores of the `attached` probes are raised in the recorder."""
        self.lines: list = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.bt.stdout),
                                       daemon=True)
        self.reader.start()
        deadline = time.monotonic() + ATTACH_S
        while time.monotonic() < deadline:
            if attached and all(semaphore(pid, p) for p in attached):
                return
            if "seen\n" in list(self.lines):
                return
            if self.bt.poll() is not None:
                self.reader.join(5)
                raise AssertionError("bpftrace ended: %s%s" % ("".join(self.lines),
                                                               self.bt.stderr.read()))
            time.sleep(0.05)
        raise AssertionError("bpftrace saw no ready event in %d s: %s" % (
            ATTACH_S, "".join(self.lines)))

    def finish(self):
        """Tell the app to go; the recorder's end ends bpftrace (-p), which prints its
        maps. Returns (the app's stdout, bpftrace's maps, bpftrace's stderr)."""
        open(self.go, "w").close()
        rout, rerr = self.rec.communicate(timeout=300)
        assert self.rec.returncode == 0, rerr
        self.bt.wait(timeout=120)
        self.reader.join(30)
        berr = self.bt.stderr.read()
        return rout, maps("".join(self.lines)), berr

    def kill(self) -> None:
        """After a failure: the recorder, its app and bpftrace go (the app holds the
        recorder's pipes: its whole session is killed)."""
        if self.rec.poll() is None:
            try:
                os.killpg(self.rec.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in (self.bt, self.rec):
            if p is not None:
                if p.poll() is None:
                    p.kill()
                try:
                    p.communicate(timeout=30)
                except (subprocess.TimeoutExpired, ValueError):
                    pass


def semaphore(pid: int, probe: str) -> int:
    """Probe hypertrace:`probe`'s semaphore in process pid's memory: the library's
    load address (its first mapping, /proc/PID/maps) + the semaphore's address in the
    library's ELF notes (readelf -n)."""
    path = lib()
    notes = subprocess.run(["readelf", "-n", path], capture_output=True, text=True,
                           check=True).stdout
    sem = int(re.search(r"Name: %s\s+Location: \S+, Base: \S+, Semaphore: (0x[0-9a-f]+)"
                        % probe, notes).group(1), 16)
    with open("/proc/%d/maps" % pid) as f:
        base = min(int(line.split("-")[0], 16) for line in f
                   if line.rstrip().endswith(path) or line.rstrip().endswith(
                       os.path.basename(path)))
    with open("/proc/%d/mem" % pid, "rb") as f:
        f.seek(base + sem)
        return int.from_bytes(f.read(2), "little")


READY = '''
import os, sys, time
from hypertrace import guest
ready = guest.event("ready", "uint32_t n")
n = 0
while not os.path.exists(sys.argv[1]):
    ready(n)
    n += 1
    time.sleep(0.005)
'''

SEEN = 'usdt:%(lib)s:hypertrace:event /str(arg1) == "ready" && @said == 0/ ' \
       '{ @said = 1; printf("seen\\n"); }\n'

COUNTS_APP = READY + r'''
import threading
t0 = time.monotonic_ns()
alpha = guest.event("alpha", "uint64_t i")
beta = guest.event("beta", "const char *s, int32_t k")
for i in range(3000):
    alpha(i)
for i in range(1234):
    beta("b" * (i % 40), -i)
def other():
    g = guest.event("gamma", "bytes raw")
    for i in range(777):
        g(bytes(range(i % 50)))
th = threading.Thread(target=other)
th.start()
th.join()
for i in range(3):
    guest.sync_point("mark", i)
print("WINDOW", t0, time.monotonic_ns(), threading.get_native_id(), flush=True)
'''

COUNTS_SCRIPT = SEEN + '''
usdt:%(lib)s:hypertrace:event /str(arg0) == "local"/ { @ev[str(arg1)] = count();
    @tmax[str(arg1)] = max(arg2); @tid[str(arg1), arg5] = count();
    if (@tmin[str(arg1)] == 0 || arg2 < @tmin[str(arg1)]) { @tmin[str(arg1)] = arg2; } }
usdt:%(lib)s:hypertrace:event /str(arg0) == "local" && str(arg1) == "alpha"/ {
    @alpha_sum = sum(*(uint64 *)arg3); @alpha_len = max(arg4); }
usdt:%(lib)s:hypertrace:event /str(arg0) == "local" && str(arg1) == "gamma"/ {
    @gamma_bytes = sum(*(uint16 *)arg3); }
usdt:%(lib)s:hypertrace:sync { @sync[str(arg0), str(arg1)] = count();
    @sync_late[str(arg0)] = sum(arg4 >= arg3 ? 0 : 1); }
usdt:%(lib)s:hypertrace:declare { printf("decl %%s|%%d|%%s|%%s\\n", str(arg0), arg1, str(arg2),
    str(arg3)); }
usdt:%(lib)s:hypertrace:lost { @lost[str(arg0), str(arg1)] = sum(arg2); }
'''


def test_bpftrace_counts_each_event_name_as_the_session_does(tmp_path):
    _need_bpftrace()
    t = Traced(tmp_path, COUNTS_APP, COUNTS_SCRIPT % {"lib": lib()})
    try:
        rout, m, berr = t.finish()
    finally:
        t.kill()
    st = stats(t.out)
    per: dict = {}
    for s in local(st):
        for name, n in s["per_event"].items():
            per[name] = per.get(name, 0) + n
    seen = {k[0]: v for k, v in m["ev"].items()}
    # every event after the handshake, by name, as bpftrace counted them = the session's
    # (ready events before bpftrace attached are the session's only)
    assert {k: v for k, v in seen.items() if k != "ready"} == \
        {k: v for k, v in per.items() if k != "ready"}, (m, berr)
    assert seen["alpha"] == 3000 and seen["beta"] == 1234 and seen["gamma"] == 777
    assert per["ready"] >= seen["ready"] >= 1
    assert "lost" not in m and sum(s["discarded"] for s in local(st)) == 0
    # the payload pointer: alpha's uint64 field summed in the probe; gamma's bytes
    # field starts with its u16 length
    assert m["alpha_sum"] == sum(range(3000)) and m["alpha_len"] == 8
    assert m["gamma_bytes"] == sum(i % 50 for i in range(777))
    # the producer's thread: the main thread's events and the other thread's apart
    main_tid = int(re.search(r"WINDOW \d+ \d+ (\d+)", rout).group(1))
    tids = {k[0]: int(k[1]) for k in m["tid"]}
    assert tids["alpha"] == tids["beta"] == main_tid != tids["gamma"] > 0
    # timestamps on the host's clock, inside the app's window (the live clock estimate
    # of a same-host domain is within the exchanges' uncertainty: 1 ms is generous)
    t0, t1 = map(int, re.search(r"WINDOW (\d+) (\d+)", rout).groups())
    for name in ("alpha", "beta", "gamma"):
        assert t0 - 10**6 <= m["tmin"][(name,)] <= m["tmax"][(name,)] <= t1 + 10**6
    # sync points: each one, guest time before host time (one clock)
    assert m["sync"] == {("local", "mark"): 3} and m["sync_late"] == {("local",): 0}
    # declarations after the probes attached, with their canonical signatures
    from hypertrace.read.session import Session
    events = next(d["events"] for d in Session(t.out).index["domains"]
                  if d["name"] == "local")
    decl = {}
    for line in t.lines:
        if line.startswith("decl local|"):
            _, eid, name, sig = line.rstrip("\n").split("|")
            assert name not in decl
            decl[name] = sig
            assert events[eid] == {"name": name, "signature": sig}
    assert decl["alpha"] == "alpha(uint64_t i)"
    assert decl["beta"] == "beta(const char *s, int32_t k)"
    assert decl["gamma"] == "gamma(bytes raw)"


LOSSES_APP = READY + r'''
import threading
go = threading.Barrier(2)
held = threading.Barrier(2)
tp = guest.event("burst", "uint64_t i, uint64_t t")
def run(t):
    go.wait()
    tp(0, t)
    held.wait()      # both have emitted while both live: with --rings 1, one had no ring
    for i in range(1, 50000):
        tp(i, t)
ths = [threading.Thread(target=run, args=(t,)) for t in range(2)]
for th in ths: th.start()
for th in ths: th.join()
'''

LOSSES_SCRIPT = SEEN + '''
usdt:%(lib)s:hypertrace:lost { @lost[str(arg0), str(arg1)] = sum(arg2); @calls = count(); }
'''


def test_bpftrace_sees_every_loss_the_session_counts(tmp_path):
    """Under pressure (a 16 KiB ring, a second thread with no ring at all), the sums of
    hypertrace:lost by kind equal the session's discarded and lost_without_ring."""
    _need_bpftrace()
    # the ready thread holds the ring (the main thread's claim lasts): two rings, so
    # that of the burst threads one gets the other ring and one gets none
    t = Traced(tmp_path, LOSSES_APP, LOSSES_SCRIPT % {"lib": lib()},
               opts=("--rings", "2", "--buffer-size", "16K"))
    try:
        _, m, berr = t.finish()
    finally:
        t.kill()
    st = stats(t.out)
    discarded = sum(s["discarded"] for s in local(st))
    no_ring = st["domains"]["local"]["lost_without_ring"]
    assert discarded > 0 and no_ring > 0, st
    assert m["lost"][("local", "discarded")] == discarded, (m, berr)
    assert m["lost"][("local", "no_ring")] == no_ring
    assert set(m["lost"]) == {("local", "discarded"), ("local", "no_ring")}


def test_usdt_lists_the_probes_the_library_holds():
    """`hypertrace usdt` names the library and each probe with its arguments; the
    library's ELF notes (readelf) hold those probes, each with a semaphore."""
    from hypertrace.host import probes
    if not probes.built():
        if SDT_HEADER:
            pytest.fail("sys/sdt.h is installed but the probes are not built: %s"
                        % probes.why_not())
        pytest.skip(probes.why_not())
    out = hypertrace("usdt").stdout
    path = lib()
    for name, args in probes.PROBES:
        assert "usdt:%s:hypertrace:%s" % (path, name) in out
        for i, (arg, _, _) in enumerate(args):
            assert re.search(r"arg%d\s+%s\s" % (i, arg), out)
    # the example it prints counts by the argument that is the event's name
    used = re.search(r"hypertrace:event \{ @\[str\(arg(\d)\)\] = count\(\); \}", out)
    names = [a for a, _, _ in dict(probes.PROBES)["event"]]
    assert used and names[int(used.group(1))] == "name", out
    js = json.loads(hypertrace("usdt", "--json").stdout)
    assert js["built"] and js["library"] == path
    notes = subprocess.run(["readelf", "-n", path], capture_output=True, text=True,
                           check=True).stdout
    found = re.findall(r"Provider: (\w+)\s+Name: (\w+)\s+Location: \S+, Base: \S+, "
                       r"Semaphore: (0x[0-9a-f]+)\s+Arguments: (.*)", notes)
    got = {n: (int(sem, 16), len(a.split())) for p, n, sem, a in found if p == "hypertrace"}
    assert {n: k for n, (_, k) in got.items()} == {n: len(a) for n, a in probes.PROBES}
    assert all(sem for sem, _ in got.values())


def test_usdt_errors_are_one_line(tmp_path):
    r = hypertrace("usdt", "--pid", str(tmp_path), check=False)
    assert r.returncode == 2 and r.stderr.startswith("hypertrace: error: no live recording")
    assert r.stderr.count("\n") == 1
    # a build without sys/sdt.h: the same module, firing nothing, and saying so
    r = subprocess.run([sys.executable, "-c", "import sys; sys.modules['hypertrace.host._probes']"
                        " = None\nfrom hypertrace import cli\nsys.exit(cli.main(['usdt']))"],
                       capture_output=True, text=True, env=env())
    assert r.returncode == 1 and "probes: not available: the probes' module" in r.stdout
    # ctl qemu-*: a guest of the recording with a QMP socket of ours, else one line
    out = str(tmp_path / "live")
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out, "--",
                            sys.executable, "-c", "import time; time.sleep(60)"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while hypertrace("ctl", out, "status", check=False).returncode != 0:
            assert time.monotonic() < deadline and rec.poll() is None
            time.sleep(0.1)
        for dom, msg in (("local", "guest local has no QMP socket of ours at "),
                         ("nope", "--domain must name a guest of the recording at "),
                         ("../x", "--domain must name a guest of the recording at ")):
            r = hypertrace("ctl", out, "qemu-enable", "virtio_*", "--domain", dom,
                           check=False)
            assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1, \
                r.stderr
        r = hypertrace("ctl", out, "qemu-disable", check=False)
        assert r.returncode == 2 and "needs a QEMU trace event name pattern" in r.stderr
    finally:
        os.killpg(rec.pid, signal.SIGINT)         # the app and its recorder, as Ctrl-C
        try:
            rec.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(rec.pid, signal.SIGKILL)
            rec.communicate()


def test_the_roi_example_steers_qemu_tracing_from_a_guest_event(tmp_path):
    """examples/usdt/roi-qemu.bt, the seed author's scenario: a guest's roi_begin, seen
    by bpftrace on the host through hypertrace:event, switches a QEMU trace event on
    (system() -> `hypertrace ctl qemu-enable` -> QMP); roi_end switches it off. QEMU's
    events land in the session only inside the region."""
    _need_bpftrace()
    from test_qemu import qemu_events_inside_roi, run_guest, start_recorder
    name = "htusdt%d" % os.getpid()
    out = str(tmp_path / "roi")
    rec = start_recorder(out, "--qemu", name)
    bt = None
    try:
        bin_dir = os.path.dirname(sys.executable)      # where `hypertrace` is installed
        bt = subprocess.Popen(
            [os.path.join(ROOT, "examples", "usdt", "roi-qemu.sh"), out, name],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env(PATH=bin_dir + os.pathsep + os.environ.get("PATH", "")))
        first = bt.stdout.readline()
        assert first.startswith("Attaching 2 probes"), first + bt.stderr.read()
        gp = hypertrace("guest-path").stdout.strip()
        lines, mode = run_guest(name, "HYPERTRACE_CHANNEL=ivshmem HYPERTRACE_SYNC_INTERVAL="
                                      "100000 PYTHONPATH=%s /usr/bin/python3 %s 4" % (
                                          gp, os.path.join(ROOT, "tests", "apps", "vmroi.py")))
    finally:
        rec.send_signal(signal.SIGINT)
        _, rerr = rec.communicate(timeout=120)
        if bt is not None:
            bout, berr = bt.communicate(timeout=60)
    assert rec.returncode == 0, rerr
    assert any(x.startswith("HT-RESULT") for x in lines), "\n".join(lines[-40:])
    said = first + bout
    assert re.search(r"%s: roi_begin at \d+ ns: enabling QEMU tracing" % name, said), said
    assert "qemu-enabled QEMU trace events virtio_console_flush_buf of %s: 1 event(s)" % \
        name in said, (said, berr[-3000:])
    assert "qemu-disabled QEMU trace events virtio_console_flush_buf of %s" % name in said
    _, qemu = qemu_events_inside_roi(out, name)
    print("QEMU %s guest: roi_begin -> bpftrace -> ctl -> QMP: %d QEMU events, all inside "
          "the region" % (mode, len(qemu)))


def test_the_count_example_counts_what_the_session_holds(tmp_path):
    """examples/usdt/count-events.bt as its header says to run it: its event counts by
    domain and name, and its losses by kind, are the session's."""
    _need_bpftrace()
    t = Traced(tmp_path, LOSSES_APP, os.path.join(ROOT, "examples", "usdt",
                                                  "count-events.bt"),
               opts=("--rings", "2", "--buffer-size", "16K"), bt_args=(lib(),),
               attached=("event", "lost"))
    try:
        _, m, berr = t.finish()
    finally:
        t.kill()
    st = stats(t.out)
    got = {k[1]: v for k, v in m["events"].items() if k[0] == "local" and k[1] != "ready"}
    per: dict = {}
    for s in local(st):
        for name, n in s["per_event"].items():
            if name != "ready":
                per[name] = per.get(name, 0) + n
    assert got == per and got["burst"] > 0, (m, berr)
    assert m["lost"][("local", "discarded")] == sum(s["discarded"] for s in local(st)) > 0
    assert m["lost"][("local", "no_ring")] == st["domains"]["local"]["lost_without_ring"] > 0
