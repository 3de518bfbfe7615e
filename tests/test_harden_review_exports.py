"""Findings of the adversarial review on the read side (issue 11 follow-up, brief H):
exports' output paths (items 1, 2), readers' memory with many streams (6), index
fields readers crashed on (7), terminal escapes (8), guest-path without a
writable HOME (9). Real CLI, real sessions, real files."""

from __future__ import annotations

import json
import os
import resource
import shutil
import stat
import subprocess
import sys

import pytest
from conftest import env, hypertrace, record

APP = r"""
from hypertrace import guest
tick = guest.event("tick", "uint64_t n, const char *s")
for i in range(20):
    tick(i, "t%d" % i)
tick(99, "csi \x9b2J here")
guest.sync_point("cp", 1)
"""
FORMATS = ["html", "json", "parquet", "perfetto"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    (d / "app.py").write_text(APP)
    out = str(d / "s")
    record(out, sys.executable, str(d / "app.py"))
    shutil.rmtree(os.path.join(out, ".hypertrace", "parquet"), ignore_errors=True)
    return out


def _copy(src: str, dst) -> str:
    shutil.copytree(src, str(dst), symlinks=True)
    return str(dst)


def _index(d: str) -> str:
    return os.path.join(d, ".hypertrace", "session.json")


def _edit(d: str, fn) -> None:
    doc = json.load(open(_index(d)))
    fn(doc)
    with open(_index(d), "w") as f:
        json.dump(doc, f)


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def one_error(r, *words: str) -> None:
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("hypertrace: error: "), r.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]


def _suffix(fmt: str) -> str:
    # perfetto's SUFFIX, whatever it is: read from the module, not assumed
    import importlib
    mod = importlib.import_module("hypertrace.formats." + {"json": "chrome_json"}.get(fmt, fmt))
    return mod.SUFFIX


# -- item 1: a symlink planted at the predictable OUT.partial ------------------------------
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_never_writes_through_a_planted_partial(recorded, tmp_path, fmt):
    """`ln -s ~/precious DIR.json.partial` made `export DIR` overwrite precious (and
    end in a traceback); for Parquet, a `.partial` link to a directory got the
    files written into it."""
    pub = tmp_path / "pub"
    pub.mkdir()
    d = _copy(recorded, pub / "vtrace")
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    out = d + _suffix(fmt)
    os.symlink(str(victim_dir if fmt == "parquet" else precious), out + ".partial")
    r = hypertrace("export", d, "--format", fmt, check=False)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert precious.read_text() == "keep me\n"
    assert os.listdir(str(victim_dir)) == []
    assert os.path.islink(out + ".partial")            # not ours: left alone
    assert (os.path.isdir(out) if fmt == "parquet" else os.path.getsize(out) > 0)
    # nothing of ours is left next to it
    assert sorted(os.listdir(str(pub))) == sorted(["vtrace", os.path.basename(out),
                                                  os.path.basename(out) + ".partial"])


def test_view_of_another_users_session_never_writes_through_its_links(recorded, tmp_path,
                                                                       other_user):
    """The attacker's session in the attacker's directory, with sess.html.partial
    pointing at the victim's file: `view` overwrote it."""
    pub = tmp_path / "pub"
    pub.mkdir()
    d = _copy(recorded, pub / "sess")
    subprocess.run(["chown", "-R", "%d:%d" % (other_user.uid, other_user.gid), str(pub)],
                   check=True)
    precious = tmp_path / "precious2"
    precious.write_text("mine\n")
    # the attacker's link in the attacker's directory (made here: the test's directories
    # are not reachable by that user)
    os.symlink(str(precious), d + ".html.partial")
    os.lchown(d + ".html.partial", other_user.uid, other_user.gid)
    r = hypertrace("view", d, check=False)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert precious.read_text() == "mine\n"
    assert "<!DOCTYPE html>" in open(d + ".html").read()


# -- item 2: -o an existing directory ---------------------------------------------------------
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_export_to_an_existing_directory_deletes_nothing(recorded, tmp_path, fmt):
    d = _copy(recorded, tmp_path / "s")
    docs = tmp_path / "c" / "docs"
    docs.mkdir(parents=True)
    (docs / "notes.txt").write_text("notes\n")
    r = hypertrace("export", d, "--format", fmt, "-o", str(docs), check=False)
    one_error(r, "is a directory")
    assert (docs / "notes.txt").read_text() == "notes\n"
    assert os.listdir(str(tmp_path / "c")) == ["docs"]     # no temporary left


def test_export_to_the_current_directory_deletes_nothing(recorded, tmp_path):
    d = _copy(recorded, tmp_path / "s")
    here = tmp_path / "work"
    here.mkdir()
    (here / "a.txt").write_text("a\n")
    r = hypertrace("export", d, "--format", "parquet", "-o", ".", cwd=str(here), check=False)
    one_error(r, "is a directory")
    assert os.listdir(str(here)) == ["a.txt"]


@pytest.mark.parametrize("where", ["the-session", "inside", "parent"])
def test_export_into_or_around_the_session_is_refused(recorded, tmp_path, where):
    d = _copy(recorded, tmp_path / "s")
    before = sorted(os.listdir(d))
    out = {"the-session": d, "inside": os.path.join(d, "x.json"),
           "parent": str(tmp_path)}[where]
    for fmt in ("json", "parquet"):
        r = hypertrace("export", d, "--format", fmt, "-o", out, check=False)
        one_error(r, "session directory")
    assert sorted(os.listdir(d)) == before
    assert hypertrace("stats", d).returncode == 0


def test_a_previous_parquet_export_is_replaced_and_nothing_else_removed(recorded, tmp_path):
    d = _copy(recorded, tmp_path / "s")
    pq = str(tmp_path / "pq")
    hypertrace("export", d, "--format", "parquet", "-o", pq)
    first = sorted(os.listdir(pq))
    assert "events.parquet" in first and ".hypertrace-export" in first
    hypertrace("export", d, "--format", "parquet", "-o", pq)      # ours: replaced
    assert sorted(os.listdir(pq)) == first
    assert sorted(os.listdir(str(tmp_path))) == ["pq", "s"]
    # a file the user put there is kept, with the old export's directory
    with open(os.path.join(pq, "notes.txt"), "w") as f:
        f.write("notes\n")
    r = hypertrace("export", d, "--format", "parquet", "-o", pq)
    assert "kept as" in r.stderr, r.stderr
    assert sorted(os.listdir(pq)) == first
    kept = [n for n in os.listdir(str(tmp_path)) if n not in ("pq", "s")]
    assert len(kept) == 1
    assert os.listdir(str(tmp_path / kept[0])) == ["notes.txt"]


def test_a_parquet_export_of_another_user_is_not_replaced(recorded, tmp_path, other_user):
    d = _copy(recorded, tmp_path / "s")
    pq = str(tmp_path / "pq")
    hypertrace("export", d, "--format", "parquet", "-o", pq)
    subprocess.run(["chown", "-R", "%d:%d" % (other_user.uid, other_user.gid), pq], check=True)
    before = sorted(os.listdir(pq))
    r = hypertrace("export", d, "--format", "parquet", "-o", pq, check=False)
    one_error(r, "not a previous Parquet export of yours")
    assert sorted(os.listdir(pq)) == before


def test_an_existing_file_is_replaced_and_nothing_else_at_out(recorded, tmp_path):
    d = _copy(recorded, tmp_path / "s")
    out = tmp_path / "t.json"
    out.write_text("old")
    hypertrace("export", d, "--format", "json", "-o", str(out))
    assert json.loads(out.read_text())["traceEvents"]
    # a link is neither followed nor replaced; a FIFO or a device node is not replaced
    # by a file (a hostile review: as root, -o /dev/null deleted /dev/null)
    precious = tmp_path / "precious"
    precious.write_text("keep\n")
    link = tmp_path / "l.json"
    os.symlink(str(precious), str(link))
    fifo = tmp_path / "f.pftrace"
    os.mkfifo(str(fifo))
    cases = [(link, "json", "symbolic link"), (fifo, "perfetto", "FIFO")]
    if os.geteuid() == 0:
        dev = tmp_path / "null"
        os.mknod(str(dev), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        cases.append((dev, "html", "character device"))
    for path, fmt, says in cases:
        before = os.lstat(str(path))
        one_error(hypertrace("export", d, "--format", fmt, "-o", str(path), check=False),
                  says, "nothing was written")
        after = os.lstat(str(path))
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode), path
    assert precious.read_text() == "keep\n"
    one_error(hypertrace("view", d, "-o", str(fifo), check=False), "FIFO")


# -- item 6: many streams, bounded memory -------------------------------------------------------
AS_LIMIT = 512 << 20


def _many_streams(src: str, dst, n: int) -> str:
    """n copies of the session's local stream, each a sparse 1 MiB file (a few KiB of
    records, then zeros: damage that ends the stream after its events)."""
    d = _copy(src, dst)
    doc = json.load(open(_index(d)))
    loc = max((s for s in doc["streams"] if s["domain"] == "local" and s.get("file")),
              key=lambda s: s["recorded"])
    data = open(os.path.join(d, loc["file"]), "rb").read()
    for k in range(n):
        name = "copy-%05d" % k
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
            f.truncate(1 << 20)
        doc["streams"].append(dict(loc, file=name))
    with open(_index(d), "w") as f:
        json.dump(doc, f)
    return d


def _maxrss_mib(argv) -> int:
    code = ("import resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       env=env(), timeout=600)
    rc, rss = r.stdout.split()
    assert rc == "0", r.stderr
    return int(rss) >> 10


def test_readers_of_thousands_of_streams_stay_in_bounded_memory(recorded, tmp_path):
    """report kept a 1 MiB window per stream for the whole merge (4000 streams: 4 GiB);
    the columnar reader 64 KiB per stream (export json of 4000 streams: 448 MiB)."""
    d = _many_streams(recorded, tmp_path / "many", 4000)
    py = [sys.executable, "-m", "hypertrace.cli"]

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    r = subprocess.run(py + ["report", d], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, env=env(), timeout=600, preexec_fn=limit)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _maxrss_mib(py + ["report", d]) < 200
    assert _maxrss_mib(py + ["stats", d]) < 280
    assert _maxrss_mib(py + ["export", d, "--format", "json",
                             "-o", str(tmp_path / "o.json")]) < 320


def test_report_reads_every_event_of_many_streams(recorded, tmp_path):
    """The window budget drops and rereads windows: no event is lost doing so."""
    d = _many_streams(recorded, tmp_path / "many", 300)
    from hypertrace.read import session as session_mod
    from hypertrace.read.session import Session
    with Session(d) as s:
        want = sorted((e.stream, e.raw_ts) for st in s.streams for e in s.stream_events(st))
    old = session_mod.READ_BUDGET
    session_mod.READ_BUDGET = 64 << 10     # far fewer windows than streams: LRU rereads
    try:
        with Session(d) as s:
            got = sorted((e.stream, e.raw_ts) for e in s.events())
    finally:
        session_mod.READ_BUDGET = old
    assert got == want and len(got) > 300 * 20


# -- item 7: index fields readers crashed on ----------------------------------------------------
def _sync(doc):
    return doc["syncs"]["local"][0]


@pytest.mark.parametrize("edit", ["guest-recv-null", "host-send-null", "uncertainty-inf",
                                  "host-offset-null", "triggers-valid"])
def test_index_fields_the_validator_allows_are_read(recorded, tmp_path, edit):
    d = _copy(recorded, tmp_path / "s")

    def fn(doc):
        if edit == "guest-recv-null":
            _sync(doc)["guest_recv"] = None
        elif edit == "host-send-null":
            _sync(doc)["host_send"] = None
            _sync(doc)["guest_recv"] = None
        elif edit == "uncertainty-inf":
            doc["clocks"]["local"]["uncertainty_ns"] = float("inf")
        elif edit == "host-offset-null":
            doc["host_clock_offset_ns"] = None
        else:
            doc["triggers"] = [{"trigger": 1, "event": "tick", "domain": "local",
                                "when": None, "actions": ["marker x"], "fired": 3,
                                "predicate_errors": 1, "last_predicate_error": "no field",
                                "actions_coalesced": {"marker x": 1},
                                "actions_dropped": {"marker x": 2}}]
    _edit(d, fn)
    for cmd in (["stats", d], ["stats", d, "--json"], ["report", d],
                ["export", d, "--format", "html", "-o", str(tmp_path / "o.html")],
                ["export", d, "--format", "parquet", "-o", str(tmp_path / "pq")],
                ["sql", d, "select * from sync"]):
        r = hypertrace(*cmd, check=False)
        no_traceback(r)
        assert r.returncode == 0, (cmd, r.stderr[-2000:])
        shutil.rmtree(str(tmp_path / "pq"), ignore_errors=True)
    if edit == "triggers-valid":
        assert "actions run 0, merged 1, dropped 2" in hypertrace("stats", d).stdout


@pytest.mark.parametrize("edit", ["triggers-number", "dropped-text", "trigger-text",
                                  "actions-not-list", "coalesced-list"])
def test_malformed_triggers_are_one_error(recorded, tmp_path, edit):
    d = _copy(recorded, tmp_path / "s")
    rule = {"trigger": 1, "event": "tick", "fired": 0, "predicate_errors": 0,
            "actions_coalesced": {}, "actions_dropped": {}}

    def fn(doc):
        if edit == "triggers-number":
            doc["triggers"] = 5
            return
        if edit == "dropped-text":
            rule["actions_dropped"] = {"a": "x"}
        elif edit == "trigger-text":
            rule["fired"] = "3"
        elif edit == "actions-not-list":
            rule["actions"] = "marker"
        else:
            rule["actions_coalesced"] = [1]
        doc["triggers"] = [rule]
    _edit(d, fn)
    for cmd in (["stats", d], ["export", d, "--format", "html", "-o", str(tmp_path / "o")]):
        one_error(hypertrace(*cmd, check=False), "triggers")


def test_sync_times_beyond_int64_reach_parquet_and_sql_exactly(recorded, tmp_path):
    d = _copy(recorded, tmp_path / "s")
    big = (1 << 64) - 5

    def fn(doc):
        _sync(doc)["guest_send"] = big
        _sync(doc)["sync_id"] = (1 << 63) + 1
    _edit(d, fn)
    r = hypertrace("sql", d, "select sync_id, guest_send from sync", "--json", check=False)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0]) == {"sync_id": (1 << 63) + 1, "guest_send": big}
    r = hypertrace("export", d, "--format", "parquet", "-o", str(tmp_path / "pq"), check=False)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    import pyarrow.parquet as pq
    t = pq.read_table(str(tmp_path / "pq" / "sync.parquet"))
    assert t.column("guest_send").to_pylist() == [big]
    assert hypertrace("stats", d, "--json").returncode == 0


# -- item 8: terminal escapes -------------------------------------------------------------------
RAW_CONTROLS = [chr(c) for c in range(0x20) if c != 0x0a] + [chr(c) for c in range(0x7f, 0xa0)]


def _raw_controls(text: str) -> list:
    return sorted({repr(c) for c in text if c in RAW_CONTROLS})


def test_stats_report_and_sql_print_no_raw_control_characters(recorded, tmp_path):
    d = _copy(recorded, tmp_path / "s")

    def fn(doc):
        for st in doc["streams"]:
            st["thread"] = "\x1b]0;PWNED\x07\x1b[31m"
        doc["clocks"]["host"]["kind"] = "\x1b[2J"
        doc["triggers"] = [{"trigger": 1, "event": "tick\x1b[2J", "fired": 1,
                            "predicate_errors": 1, "last_predicate_error": "bad \x9b2J",
                            "actions_coalesced": {}, "actions_dropped": {"x": 1}}]
    _edit(d, fn)
    out = hypertrace("stats", d).stdout
    assert _raw_controls(out) == [], out
    assert "\\x1b]0;PWNED\\x07" in out and "\\x1b[2J" in out and "\\x9b2J" in out
    out = hypertrace("report", d).stdout
    assert _raw_controls(out) == []
    assert "\\x9b2J" in out                 # the guest's C1 CSI, shown escaped
    out = hypertrace("report", d, "--format", "qemu").stdout
    assert _raw_controls(out) == [] and "\\x9b2J" in out
    out = hypertrace("sql", d, "select thread from streams").stdout
    assert _raw_controls(out) == [] and "\\x1b]0;PWNED" in out


# -- item 9: guest-path without a writable cache --------------------------------------------------
@pytest.mark.parametrize("home", ["/sys", "/dev/null"])
def test_guest_path_without_a_writable_home_is_one_error(home):
    e = env(HOME=home)
    e.pop("XDG_CACHE_HOME", None)
    r = hypertrace("guest-path", check=False, env=e)
    one_error(r, "guest library", "XDG_CACHE_HOME")
