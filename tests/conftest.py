"""Shared helpers: run the real `hypertrace` CLI and the real babeltrace2 on its output."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

from hypertrace.host import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
TIMEOUT = 600

BT_LINE = re.compile(r"^\[[^\]]+\] \(\+[^)]+\) \S+ (\w+): \{ ?(.*?) ?\}$")
BT_FIELD = re.compile(r'(\w+) = ("(?:[^"\\]|\\.)*"|[^,]+)(?:, |$)')
BT_DISCARDED = re.compile(r"Tracer discarded (\d+) events? .* within stream \"([^\"]+)\"")


def env(**extra) -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("HYPERTRACE_CHANNEL", None)
    e.update(extra)
    return e


def hypertrace(*args, check: bool = True, timeout: float = TIMEOUT, **kw):
    """Run the real command line; returns the CompletedProcess."""
    r = subprocess.run([sys.executable, "-m", "hypertrace.cli", *args], capture_output=True,
                       text=True, env=kw.pop("env", None) or env(), timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise AssertionError("hypertrace %s failed (%d):\n%s\n%s" % (
            " ".join(args), r.returncode, r.stdout[-3000:], r.stderr[-3000:]))
    return r


def record(out: str, *command: str, opts=(), **kw):
    return hypertrace("record", "-o", out, *opts, "--", *command, **kw)


def build_c(d, trace_events: str, app: str, cc: str = "cc", cflags=()) -> str:
    """A C producer as README's C section builds one: trace.h from `gen-c`, flags from
    `c-config`, every warning an error; returns the program's path (in directory d)."""
    d = str(d)
    with open(os.path.join(d, "trace-events"), "w") as f:
        f.write(trace_events)
    with open(os.path.join(d, "app.c"), "w") as f:
        f.write(app)
    hypertrace("gen-c", os.path.join(d, "trace-events"), "-o", os.path.join(d, "trace.h"))
    flags = hypertrace("c-config", "--cflags", "--libs").stdout.split()
    exe = os.path.join(d, "app")
    r = subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", *cflags, "-o",
                        exe, os.path.join(d, "app.c"), *flags], capture_output=True,
                       text=True, cwd=d, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    return exe


def stats(out: str) -> dict:
    return json.loads(hypertrace("stats", out, "--json").stdout)


def local(st: dict, domain: str = "local") -> list:
    """The streams of one domain in `stats --json` (the host domain holds the
    collector's own records: clock samples and the host side of sync points)."""
    return [s for s in st["streams"] if s["domain"] == domain]


def totals(st: dict, domain: str = "local") -> dict:
    ss = local(st, domain)
    return {k: sum(s[k] for s in ss) for k in ("recorded", "discarded", "malformed", "torn")}


_BT_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "a": "\a",
               "b": "\b", "0": "\0", "e": "\x1b"}


def bt_string(v: str) -> str:
    """A string field as babeltrace2 prints it, quoted and C-escaped (`\\'` too)."""
    out, i, body = [], 0, v[1:-1]
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            i += 1
            out.append(_BT_ESCAPES.get(body[i], body[i]))
        else:
            out.append(c)
        i += 1
    return "".join(out)


def babeltrace(path: str, allow_discarded: bool = False, internal: bool = False):
    """Run babeltrace2; returns (events, discarded per stream path). Fails on any
    error or warning other than babeltrace2's report of discarded events.
    hypertrace's own records (hypertrace_*) are left out unless `internal`."""
    bt = shutil.which("babeltrace2")
    assert bt, "babeltrace2 is not installed: run ./test.sh (apt-get install babeltrace2)"
    r = subprocess.run([bt, path], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    discarded: dict = {}
    for line in r.stderr.splitlines():
        m = BT_DISCARDED.search(line)
        if m and allow_discarded:
            discarded[m.group(2)] = discarded.get(m.group(2), 0) + int(m.group(1))
        elif line.strip():
            raise AssertionError("babeltrace2 said: %s" % line)
    events = []
    for line in r.stdout.splitlines():
        m = BT_LINE.match(line)
        assert m, "unexpected babeltrace2 line: %r" % line
        fields = {}
        for k, v in BT_FIELD.findall(m.group(2)):
            fields[k] = bt_string(v) if v.startswith('"') else v
        if internal or not m.group(1).startswith("hypertrace_"):
            events.append((m.group(1), fields))
    return events, discarded


def _runtime_entries() -> set:
    try:
        # the recorder's own choice of the directory (HYPERTRACE_RUNTIME_DIR, euid)
        return set(os.listdir(runtime.runtime_dir()))
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_leftover_regions(request):
    """What a test leaves in the private runtime directory (a region there is shared
    memory, hundreds of MB, that outlives the suite) is named in the file HT_LEFTOVERS
    when that is set; nothing is removed (a leftover is a bug to find, not to hide)."""
    before = _runtime_entries()
    yield
    left = sorted(_runtime_entries() - before)
    if left and os.environ.get("HT_LEFTOVERS"):
        with open(os.environ["HT_LEFTOVERS"], "a") as f:
            f.write("%s %s\n" % (request.node.nodeid, " ".join(left)))


@pytest.fixture
def session(tmp_path):
    return str(tmp_path / "session")


@contextlib.contextmanager
def small_disk(path, size: str):
    """A tmpfs of `size` (e.g. "2m") mounted at directory `path` (created) for the
    duration: a disk that fills up. Root only (see ROOT_ONLY in the tests)."""
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, "cannot mount a tmpfs: %s" % r.stderr
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])


def write(tmp_path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


class OtherUser:
    """A throwaway local user (created by the test run, removed after): the 'another
    local user' of docs/security.md. `run` executes a command as that user."""

    def __init__(self, name: str):
        import pwd
        pw = pwd.getpwnam(name)
        self.name, self.uid, self.gid = name, pw.pw_uid, pw.pw_gid

    def run(self, argv, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 120)
        kw.setdefault("env", env())
        return subprocess.run(["setpriv", "--reuid=%d" % self.uid, "--regid=%d" % self.gid,
                               "--clear-groups", "--"] + list(argv), **kw)

    def python(self, code: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run([sys.executable, "-c", code, *args], **kw)


@pytest.fixture
def other_user():
    """Root only (CI runs as root): skips elsewhere."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a throwaway user")
    name = "htx%d" % os.getpid()
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    name], check=True, capture_output=True)
    try:
        yield OtherUser(name)
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], capture_output=True)
        subprocess.run(["userdel", name], capture_output=True)


def encode_record(signature: str, eid: int, seq: int, ts: int, vals: list) -> bytes:
    """One record as docs/abi.md §4 lays it out, for tests that write ring contents
    themselves: header, fields (strings and bytes with their u16 length), padding 0xAA."""
    from hypertrace import abi
    decl = abi.parse_signature(signature)
    body = b""
    for (_n, _t, ft), v in zip(decl.fields, vals):
        if ft.kind in ("str", "bytes"):
            raw = v.encode() if ft.kind == "str" else v
            body += struct.pack("<H", len(raw)) + raw
        else:
            body += struct.pack("<" + ft.code, v)
    size = abi.align(16 + len(body), 8)
    rec = abi.REC_HEADER.pack(eid, size, seq & 0xFFFFFFFF, ts) + body
    return rec + b"\xaa" * (size - len(rec))


def declared_region(name: str, decls: list, **kw):
    """A region of the host's own (Region.create) with `decls` written into declaration
    slots 0, 1, ... as a producer would (docs/abi.md §3), for tests of the readers."""
    import uuid

    from hypertrace.host.region import Region
    r = Region.create("/dev/shm/ht-%s-%s" % (name, uuid.uuid4().hex[:8]), name, n_rings=2,
                      ring_size=4096, **kw)
    for i, text in enumerate(decls):
        off = r.layout.decl(i)
        t = text.encode()
        r.mm[off + 8:off + 8 + len(t)] = t
        struct.pack_into("<II", r.mm, off, 1, len(t))
    return r


def tracefs() -> bool:
    """Whether this host's tracefs can be used (root; mounted by the library's own
    find_tracefs when it is not)."""
    from hypertrace.guest.kernel import KernelError, find_tracefs
    try:
        return os.geteuid() == 0 and find_tracefs() == "/sys/kernel/tracing"
    except KernelError:
        return False


_FTRACE_KV = re.compile(r"(\w+)=(.*?)(?=\s+(?:==>\s+)?\w+=|\s*$)")


def ftrace_fields(text: str) -> dict:
    """The key=value fields of an ftrace text line's event part. A value runs up to
    the next key (a task's comm may hold spaces: a JVM's `C2 CompilerThre`)."""
    return dict(_FTRACE_KV.findall(text))
