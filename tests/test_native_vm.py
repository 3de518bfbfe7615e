"""The native C producer on `ivshmem` channels (HYPERTRACE_CHANNEL=ivshmem[:NAME]).

On the host: the C runtime built against fake sysfs and /dev trees (-DHT_SYSFS_PCI=...)
finds the BAR (resource2) of the ivshmem-plain device holding the wanted region as
the Python library does, refuses what a hostile guest could plant there (symlinks,
FIFOs, short BARs, bad headers, names that are not names), finds its virtio-serial
port by name (here a pty playing QEMU's chardev, relayed to the collector's socket)
and never fails the program.

In a booted TCG guest (one boot): a C program and a Python program emit into the
same BAR at the same time and both make sync points over the port; the host reads
every event back with its exact fields, both sides of every sync point, and a clock
mapping without a causality violation.
"""

from __future__ import annotations

import glob
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tty

import pytest
from apps import vmboot
from conftest import ROOT, babeltrace, build_c, env, hypertrace, record, stats

from hypertrace import abi

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc/gcc)")
QEMU = shutil.which("qemu-system-x86_64")
KERNEL = sorted(glob.glob("/boot/vmlinuz-*"))

TRACE_EVENTS = r'''# events of the C program (mixed_ev is also the Python program's)
nv_tick(uint64_t n, uint64_t v) "n=%" PRIu64 " v=0x%" PRIx64
nv_msg(uint32_t i, const char *tag) "i=%u tag=%s"
mixed_ev(uint32_t who, uint64_t i)
'''

# `app N [wait]`: N nv_tick, N/10 nv_msg, N/50 mixed_ev, a sync point every N/4 events
# and one at the end; with `wait` it prints HALF half way and waits for a byte on stdin.
APP = r'''
#define _DEFAULT_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "trace.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100;
    int wait_half = argc > 2 && strcmp(argv[2], "wait") == 0;
    long quarter = n / 4 ? n / 4 : 1;
    char tag[64], a[32];
    int64_t rtt[8];
    int nr = 0;
    for (long i = 0; i < n; i++) {
        if (wait_half && i == n / 2) {
            char c;
            printf("HALF\n");
            fflush(stdout);
            if (read(0, &c, 1) != 1)
                return 3;
        }
        trace_nv_tick((uint64_t)i, (uint64_t)i * 0x9E3779B97F4A7C15ull);
        if (i % 10 == 0) {
            snprintf(tag, sizeof tag, "c #%ld \xc3\xa9", i);
            trace_nv_msg((uint32_t)i, tag);
        }
        if (i % 50 == 0)
            trace_mixed_ev(1, (uint64_t)i);
        if (i % quarter == 0 && nr < 6) {
            snprintf(a, sizeof a, "[%ld]", i);
            rtt[nr++] = ht_sync_point("c_mark", a);
        }
    }
    rtt[nr++] = ht_sync_point("c_done", NULL);
    printf("C-RTT");
    for (int k = 0; k < nr; k++)
        printf(" %" PRId64, rtt[k]);
    printf("\n");
    return 0;
}
'''

# run by `hypertrace record -- python WRAP LINKS SPEC CMD...`: hard-links the session's
# region file to each of LINKS (the fake BARs), then runs CMD with HYPERTRACE_CHANNEL=SPEC
# ("{control}" in SPEC: the session's control= option)
WRAP = r'''
import os, subprocess, sys
region, _, control = os.environ["HYPERTRACE_CHANNEL"].partition(",")
for link in filter(None, sys.argv[1].split("|")):
    os.link(region[len("shm:"):], link)
spec = sys.argv[2].replace("{control}", control)
r = subprocess.run(sys.argv[3:], env=dict(os.environ, HYPERTRACE_CHANNEL=spec),
                   capture_output=True, text=True, timeout=300)
sys.stdout.write(r.stdout)
sys.stderr.write(r.stderr)
sys.exit(r.returncode)
'''

MUL = 0x9E3779B97F4A7C15


def expected_c(n: int) -> dict:
    return {"nv_tick": sorted((i, i * MUL % 2 ** 64) for i in range(n)),
            "nv_msg": sorted((i, "c #%d \u00e9" % i) for i in range(0, n, 10)),
            "mixed_ev": sorted((1, i) for i in range(0, n, 50))}


def c_events(report: list, streams=None) -> dict:
    got: dict = {"nv_tick": [], "nv_msg": [], "mixed_ev": []}
    for e in report:
        if e["name"] in got and (streams is None or e["stream"] in streams):
            f = e["fields"]
            if e["name"] == "nv_tick":
                got["nv_tick"].append((f["n"], f["v"]))
            elif e["name"] == "nv_msg":
                got["nv_msg"].append((f["i"], f["tag"]))
            else:
                got["mixed_ev"].append((f["who"], f["i"]))
    return {k: sorted(v) for k, v in got.items()}


def c_rtts(stdout: str) -> list:
    lines = [x for x in stdout.splitlines() if x.startswith("C-RTT")]
    assert len(lines) == 1, stdout
    return [int(x) for x in lines[0].split()[1:]]


def report(out: str) -> list:
    return [json.loads(x) for x in hypertrace("report", out, "--json", "--all").stdout.splitlines()]


def build_app(d, *defines: str) -> str:
    return build_c(d, TRACE_EVENTS, APP, cc=CC, cflags=defines)


# --- on the host: fake sysfs and /dev trees ------------------------------------------

class Fake:
    """A fake /sys/bus/pci/devices, /sys/class/virtio-ports and /dev, under /dev/shm (so
    that the session's region, also under /dev/shm, can be hard-linked in as a BAR), and
    the C program built to look there."""

    def __init__(self, root: str, exe: str):
        self.root, self.exe = root, exe
        self.pci = os.path.join(root, "pci")
        self.ports = os.path.join(root, "ports")
        self.dev = os.path.join(root, "dev")
        for d in (self.pci, self.ports, self.dev):
            os.mkdir(d)

    def device(self, bdf: str, vendor="0x1af4", device="0x1110", enable="1") -> str:
        d = os.path.join(self.pci, bdf)
        os.mkdir(d)
        for attr, v in (("vendor", vendor), ("device", device), ("enable", enable)):
            if v is not None:
                with open(os.path.join(d, attr), "w") as f:
                    f.write(v + "\n")
        return d

    def attr(self, bdf: str, name: str) -> str:
        with open(os.path.join(self.pci, bdf, name)) as f:
            return f.read()

    def record(self, out: str, links, spec: str, *args: str, check=True):
        """Run the program with the session's region hard-linked at each of `links`
        (the previous run's links go first)."""
        for x in links:
            if os.path.lexists(x):
                os.unlink(x)
        wrap = os.path.join(self.root, "wrap.py")
        if not os.path.exists(wrap):
            with open(wrap, "w") as f:
                f.write(WRAP)
        return record(out, sys.executable, wrap, "|".join(links), spec, self.exe,
                      *args, check=check)


@pytest.fixture(scope="module")
def fake_exe(tmp_path_factory):
    d = tmp_path_factory.mktemp("native-fake")
    # beside the runtime directory: the session's region is hard-linked in as a BAR
    rt = os.environ.get("HYPERTRACE_RUNTIME_DIR")
    root = tempfile.mkdtemp(prefix="ht-fake-",
                            dir=os.path.dirname(os.path.abspath(rt)) if rt else "/dev/shm")
    try:
        yield root, build_app(d, '-DHT_SYSFS_PCI="%s/pci"' % root,
                              '-DHT_SYSFS_PORTS="%s/ports"' % root,
                              '-DHT_DEV_DIR="%s/dev"' % root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fake(fake_exe):
    root, exe = fake_exe
    for x in os.listdir(root):
        p = os.path.join(root, x)
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
    return Fake(root, exe)


def region_file(path: str, name: bytes, ring_size: int = 4096) -> None:
    """A region header (no collector behind it) named `name`, as raw bytes."""
    lay = abi.make_layout(2, ring_size, 64)
    buf = bytearray(lay.region_size)
    abi.pack_header(buf, lay, os.urandom(16), "x", abi.MODE_DISCARD, 0)
    buf[abi.HDR_NAME:abi.HDR_NAME + abi.NAME_LEN] = name.ljust(abi.NAME_LEN, b"\0")
    with open(path, "wb") as f:
        f.write(buf)


def warnings(stderr: str) -> list:
    return [x for x in stderr.splitlines() if x.startswith("hypertrace:")]


def test_c_finds_the_bar_of_the_named_region_as_python_does(fake, tmp_path):
    N = 200
    fake.device("0000:00:02.0", vendor="0x8086", enable="0")    # not ivshmem: untouched
    fake.device("0000:00:03.0", enable="0")                     # ivshmem, not hypertrace
    with open(os.path.join(fake.pci, "0000:00:03.0", "resource2"), "wb") as f:
        f.write(bytes(1 << 16))
    fake.device("0000:00:04.0", enable="1")
    region_file(os.path.join(fake.pci, "0000:00:04.0", "resource2"), b"other", 1 << 16)
    for k, near in enumerate((b"localx", b"LOCAL", b"loca")):    # names match exactly
        fake.device("0000:00:04.%d" % (k + 1))
        region_file(os.path.join(fake.pci, "0000:00:04.%d" % (k + 1), "resource2"), near)
    fake.device("0000:00:05.0", enable="0")
    links = [os.path.join(fake.pci, "0000:00:02.0", "resource2"),
             os.path.join(fake.pci, "0000:00:05.0", "resource2")]
    out = str(tmp_path / "named")
    r = fake.record(out, links, "ivshmem:local", str(N))
    assert warnings(r.stderr) == [], r.stderr
    assert c_rtts(r.stdout) == [-107] * 5       # -ENOTCONN: no port, no control= given
    assert c_events(report(out)) == expected_c(N)
    assert all(s["discarded"] == s["malformed"] == 0 for s in stats(out)["streams"])
    # every ivshmem device was enabled on the way (Python enables each one it looks at)
    assert [fake.attr(b, "enable").strip() for b in ("0000:00:02.0", "0000:00:03.0",
                                                     "0000:00:05.0")] == ["0", "1", "1"]

    # the same regions, in the same order, as the Python library's own search finds them
    from hypertrace.guest import devices
    py_names = [nm for _, nm in devices.ivshmem_regions(fake.pci)]
    assert py_names == ["other", "localx", "LOCAL", "loca", "local"]
    out = str(tmp_path / "unknown")
    r = fake.record(out, links, "ivshmem:nope", str(N))
    assert r.returncode == 0 and c_rtts(r.stdout) == [-107] * 5
    assert warnings(r.stderr) == [
        "hypertrace: tracing disabled: no hypertrace region named 'nope' among ivshmem "
        "devices (found: %s)" % ", ".join(py_names)]
    assert c_events(report(out)) == {k: [] for k in expected_c(N)}

    # no name: the first region found, here "other" (its own declaration table shows it)
    out = str(tmp_path / "first")
    r = fake.record(out, links, "ivshmem:", str(N))
    assert warnings(r.stderr) == [], r.stderr
    assert c_events(report(out)) == {k: [] for k in expected_c(N)}
    with open(os.path.join(fake.pci, "0000:00:04.0", "resource2"), "rb") as f:
        other = f.read()
    hdr, lay = abi.parse_header(other, len(other))
    decls = other[lay.decl_off:lay.decl_off + lay.max_events * abi.DECL_SLOT]
    assert b"nv_tick(uint64_t n, uint64_t v)" in decls
    emitted = sum(int.from_bytes(other[lay.desc_off + abi.DESC_SIZE * i + abi.D_EMITTED:][:8],
                                 "little")
                  for i in range(lay.n_rings))
    assert emitted == sum(len(v) for v in expected_c(N).values())


def test_c_refuses_what_a_hostile_guest_plants_in_sysfs(fake, tmp_path):
    """Symlinks (to the real region, to an enable file), a FIFO (a read would block), an
    embedded NUL, a short BAR, a directory, a bad header, a name with controls: each is
    passed over or refused in one line; the program runs on."""
    N = 40
    real = os.path.join(fake.root, "real-region")
    d = fake.device("0000:00:01.0")
    os.symlink(real, os.path.join(d, "resource2"))                 # O_NOFOLLOW
    d = fake.device("0000:00:02.0", vendor=None)
    os.mkfifo(os.path.join(d, "vendor"))                           # never read
    fake.device("0000:00:03.0", vendor="0x1af4\0junk")             # linked to the region
    d = fake.device("0000:00:04.0")
    with open(os.path.join(d, "resource2"), "wb") as f:
        f.write(b"HYPTRACE" * 8)                                   # shorter than a page
    d = fake.device("0000:00:05.0")
    os.mkdir(os.path.join(d, "resource2"))
    d = fake.device("0000:00:06.0")
    region_file(os.path.join(d, "resource2"), b"bad")
    with open(os.path.join(d, "resource2"), "r+b") as f:
        f.seek(abi.HDR_N_RINGS)
        f.write((0).to_bytes(4, "little"))                         # bad sizing fields
    d = fake.device("0000:00:07.0", enable=None)
    with open(os.path.join(fake.root, "victim"), "w") as f:
        f.write("0\n")
    os.symlink(os.path.join(fake.root, "victim"), os.path.join(d, "enable"))
    region_file(os.path.join(d, "resource2"), b"ev\nil\x1b[2J/x\xff")
    links = [real, os.path.join(fake.pci, "0000:00:03.0", "resource2")]
    out = str(tmp_path / "hostile")
    r = fake.record(out, links, "ivshmem:local", str(N))
    assert r.returncode == 0 and c_rtts(r.stdout) == [-107] * 5
    assert warnings(r.stderr) == [
        "hypertrace: tracing disabled: no hypertrace region named 'local' among ivshmem "
        "devices (found: ev?il?[2J/x?)"], r.stderr
    with open(os.path.join(fake.root, "victim")) as f:
        assert f.read() == "0\n", "an enable file behind a symlink was written"
    assert c_events(report(out)) == {k: [] for k in expected_c(N)}

    # the oddly named region is a region: attached (and its events kept there), but its
    # name makes no port path
    out = str(tmp_path / "oddname")
    r = fake.record(out, links, "ivshmem", str(N))
    assert r.returncode == 0 and c_rtts(r.stdout) == [-107] * 5
    assert warnings(r.stderr) == [
        "hypertrace: control channel unavailable (the region's name is not [A-Za-z0-9_.-]: "
        "no port to look for): events are still recorded; clock exchanges and sync points "
        "are not"], r.stderr

    # no device at all: the Python library's own words
    shutil.rmtree(fake.pci)
    os.mkdir(fake.pci)
    from hypertrace.guest import devices
    assert devices.ivshmem_regions(fake.pci) == []
    out = str(tmp_path / "none")
    r = fake.record(out, [], "ivshmem", str(N))
    assert r.returncode == 0
    assert warnings(r.stderr) == [
        "hypertrace: tracing disabled: no ivshmem-plain device (1af4:1110) with a hypertrace "
        "region; start QEMU with the options of `hypertrace qemu-args --name NAME`"]


def test_c_finds_the_port_by_name_and_checks_it(fake, tmp_path):
    """/dev/virtio-ports/org.hypertrace.NAME first, else the /sys/class/virtio-ports entry
    of that name; what is found must be a character device. An explicit control= wins."""
    N = 20
    fake.device("0000:00:05.0")
    bar = os.path.join(fake.pci, "0000:00:05.0", "resource2")
    fake_port = os.path.join(fake.dev, "vport3p1")
    with open(fake_port, "w"):
        pass
    os.mkdir(os.path.join(fake.dev, "virtio-ports"))
    os.symlink("../vport3p1", os.path.join(fake.dev, "virtio-ports", "org.hypertrace.local"))
    r = fake.record(str(tmp_path / "udev"), [bar], "ivshmem", str(N))
    assert r.returncode == 0 and all(x < 0 for x in c_rtts(r.stdout))
    assert warnings(r.stderr) == [
        "hypertrace: control channel unavailable (control port %s is not a character "
        "device): events are still recorded; clock exchanges and sync points are not"
        % os.path.realpath(fake_port)], r.stderr

    # no udev: the sysfs entry whose name it is (not the one of another region)
    os.unlink(bar)
    shutil.rmtree(os.path.join(fake.dev, "virtio-ports"))
    for port, nm in (("vport0p1", "org.hypertrace.other"), ("vport0p2", "org.hypertrace.local"),
                     ("vport0p3", "org.hypertrace.local")):
        os.mkdir(os.path.join(fake.ports, port))
        with open(os.path.join(fake.ports, port, "name"), "w") as f:
            f.write(nm + "\n")
        with open(os.path.join(fake.dev, port), "w"):
            pass
    r = fake.record(str(tmp_path / "sysfs"), [bar], "ivshmem", str(N))
    assert warnings(r.stderr) == [
        "hypertrace: control channel unavailable (control port %s is not a character "
        "device): events are still recorded; clock exchanges and sync points are not"
        % os.path.realpath(os.path.join(fake.dev, "vport0p2"))], r.stderr

    # control= given: no port is looked for, the session's socket serves
    os.unlink(bar)
    out = str(tmp_path / "explicit")
    r = fake.record(out, [bar], "ivshmem:local,{control}", str(N))
    assert warnings(r.stderr) == [], r.stderr
    assert all(x >= 0 for x in c_rtts(r.stdout)), r.stdout
    evs = report(out)
    assert c_events(evs) == expected_c(N)
    guest = sorted(e["fields"]["name"] for e in evs if e["name"] == "hypertrace_sync")
    host = sorted(e["fields"]["name"] for e in evs if e["name"] == "hypertrace_sync_host")
    assert guest == host == ["c_done"] + ["c_mark"] * 4


class PtyChardev:
    """QEMU's side of a virtio-serial port, played by a pty: the C program opens the pty's
    slave as its port (a character device), this relays its bytes to and from the
    collector's control socket, which QEMU's chardev would connect to."""

    def __init__(self, sock_path: str):
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)           # no line discipline: a byte pipe, as a port is
        self.path = os.ttyname(self.slave)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(sock_path)
                break
            except OSError:
                self.sock.close()
                assert time.monotonic() < deadline, "no control socket at %s" % sock_path
                time.sleep(0.1)
        self.stop = False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self) -> None:
        while not self.stop:
            r, _, _ = select.select([self.master, self.sock], [], [], 0.1)
            if self.master in r:
                data = os.read(self.master, 65536)
                self.sock.sendall(data)
            if self.sock in r:
                data = self.sock.recv(65536)
                if not data:
                    return
                while data:
                    data = data[os.write(self.master, data):]

    def close(self) -> None:
        self.stop = True
        self.t.join(timeout=5)
        self.sock.close()
        os.close(self.master)
        os.close(self.slave)


def test_c_sync_points_over_a_port_found_by_name(fake, tmp_path):
    """The whole guest path on the host: `record --qemu NAME` serves the region and the
    chardev socket; the C program finds the BAR (a hard link of the region) and the
    port /dev/virtio-ports/org.hypertrace.NAME (a pty relayed to the socket) by itself,
    emits, makes its sync points there and exchanges clocks through the mailboxes."""
    N = 300
    name = "htpty%d" % os.getpid()
    out = str(tmp_path / "pty")
    qargs = hypertrace("qemu-args", "--name", name).stdout
    region = qargs.split("mem-path=")[1].split(",")[0]
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--qemu", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env())
    chardev = None
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(region + ".ctl"):
            assert rec.poll() is None and time.monotonic() < deadline, rec.stderr.read()
            time.sleep(0.05)
        chardev = PtyChardev(region + ".ctl")
        fake.device("0000:00:05.0")
        os.link(region, os.path.join(fake.pci, "0000:00:05.0", "resource2"))
        os.mkdir(os.path.join(fake.dev, "virtio-ports"))
        os.symlink(chardev.path, os.path.join(fake.dev, "virtio-ports",
                                              "org.hypertrace." + name))
        r = subprocess.run([fake.exe, str(N)], capture_output=True, text=True, timeout=120,
                           env=env(HYPERTRACE_CHANNEL="ivshmem:" + name))
    finally:
        rec.send_signal(signal.SIGINT)
        rout, rerr = rec.communicate(timeout=120)
        if chardev is not None:
            chardev.close()
    assert rec.returncode == 0, rerr
    assert r.returncode == 0 and warnings(r.stderr) == [], r.stderr
    rtts = c_rtts(r.stdout)
    assert len(rtts) == 5 and all(x >= 0 for x in rtts), rtts
    evs = report(out)
    assert c_events([e for e in evs if e["domain"] == name]) == expected_c(N)
    guest = sorted((e["fields"]["name"], e["fields"]["sync_id"], e["fields"]["t_send"])
                   for e in evs if e["name"] == "hypertrace_sync" and e["domain"] == name)
    host = sorted((e["fields"]["name"], e["fields"]["sync_id"], e["fields"]["guest_send"])
                  for e in evs if e["name"] == "hypertrace_sync_host"
                  and e["fields"]["domain"] == name)
    assert guest == host and [g[0] for g in guest] == ["c_done"] + ["c_mark"] * 4
    c = stats(out)["clocks"][name]
    # at least the 8 exchanges made at exit (the program may end before its first burst)
    assert c["kind"] == "estimated" and c["causality_violations"] == 0 and c["samples"] >= 8


# --- in a booted guest ---------------------------------------------------------------

@pytest.mark.skipif(QEMU is None or not KERNEL,
                    reason="needs qemu-system-x86_64 and a kernel in /boot")
def test_c_and_python_in_one_guest_emit_into_the_bar_at_once(tmp_path):
    N = 2000
    d = tmp_path / "shared"          # seen by the guest (--rwdir): the C program is here
    d.mkdir()
    exe = build_app(d)
    name = "htnv%d" % os.getpid()
    out = str(tmp_path / "session")
    gp = hypertrace("guest-path").stdout.strip()
    lines, rc, rerr = vmboot.record_guest(
        out, name, "HYPERTRACE_CHANNEL=ivshmem PYTHONPATH=%s /usr/bin/python3 %s %s %d" % (
            gp, os.path.join(ROOT, "tests", "apps", "vmnative.py"), exe, N),
        env(), vng_args=("--rwdir=%s" % d,))
    assert lines is not None, "the TCG guest did not boot within %d s" % vmboot.TCG_BOOT_TIMEOUT
    assert rc == 0, rerr
    assert "Traceback" not in rerr, rerr
    res = [x for x in lines if x.startswith("HT-RESULT ")]
    assert res, "\n".join(lines[-40:])
    res = json.loads(res[0][len("HT-RESULT "):])
    assert res["errors"] == [], res
    assert res["c_rc"] == 0 and warnings(res["c_err"]) == [], res["c_err"]
    assert res["region"].endswith("/resource2")
    crtt = c_rtts(res["c_out"])
    assert len(crtt) == 5 and all(x >= 0 for x in crtt), crtt
    assert len(res["py_rtts"]) == 5 and all(x >= 0 for x in res["py_rtts"])

    st = stats(out)
    vm = [s for s in st["streams"] if s["domain"] == name]
    c_streams = {s["file"] for s in vm if s["pid"] == res["c_pid"]}
    py_streams = {s["file"] for s in vm if s["pid"] == res["py_pid"]}
    assert c_streams and py_streams, vm
    for s in vm:
        assert s["discarded"] == s["malformed"] == s["torn"] == 0, s
        assert s["recorded"] == s["emitted"], s
    evs = report(out)
    mine = [e for e in evs if e["domain"] == name]
    # every event of both programs, with its exact fields, in the stream of its process
    assert c_events(mine, c_streams) == expected_c(N)
    py = sorted((e["fields"]["i"], e["fields"]["v"], e["fields"]["tag"])
                for e in mine if e["name"] == "py_tick" and e["stream"] in py_streams)
    assert py == [(i, -i * 12345 - 7, "py #%d \u00fc" % i) for i in range(N)]
    assert c_events(mine, py_streams)["mixed_ev"] == sorted((2, i) for i in range(0, N, 50))
    assert len([e for e in mine if e["name"] in ("nv_tick", "nv_msg", "mixed_ev", "py_tick")]
               ) == sum(len(v) for v in expected_c(N).values()) + N + len(range(0, N, 50))
    # babeltrace2 reads the same session: as many of each, the same values
    bt, _ = babeltrace(out)
    assert sorted(int(f["v"]) for n, f in bt if n == "nv_tick") == sorted(
        v for _, v in expected_c(N)["nv_tick"])
    assert sorted(f["tag"] for n, f in bt if n == "py_tick") == sorted(
        "py #%d \u00fc" % i for i in range(N))
    # both ran at once: each one's events span a stretch of the other's
    c_ts = [e["ts"] for e in mine if e["stream"] in c_streams and e["name"] == "nv_tick"]
    p_ts = [e["ts"] for e in mine if e["stream"] in py_streams and e["name"] == "py_tick"]
    assert max(min(c_ts), min(p_ts)) < min(max(c_ts), max(p_ts))

    # sync points: in the guest stream of each program and in the host's stream
    def guest_syncs(streams):
        return sorted((e["fields"]["name"], e["fields"]["sync_id"], e["fields"]["t_send"])
                      for e in mine if e["name"] == "hypertrace_sync" and e["stream"] in streams)
    gc, gp_ = guest_syncs(c_streams), guest_syncs(py_streams)
    assert [g[0] for g in gc] == ["c_done"] + ["c_mark"] * 4
    assert [g[0] for g in gp_] == ["py_done"] + ["py_mark"] * 4
    host = sorted((e["fields"]["name"], e["fields"]["sync_id"], e["fields"]["guest_send"])
                  for e in evs if e["name"] == "hypertrace_sync_host"
                  and e["fields"]["domain"] == name)
    assert host == sorted(gc + gp_)
    # one clock mapping for the guest, no sample against causality
    c = st["clocks"][name]
    assert c["kind"] == "estimated" and c["causality_violations"] == 0 and c["samples"] >= 16, c
    print("QEMU %s guest: C + Python producers in one BAR, %d + %d events; C sync point RTT "
          "min %.2f ms; clock %d samples, uncertainty %s ns, 0 violations; Python path %s" % (
              "tcg", len(c_ts), len(p_ts), min(crtt) / 1e6, c["samples"], c["uncertainty_ns"],
              "accelerated" if res["accelerated"] else "pure Python"))
