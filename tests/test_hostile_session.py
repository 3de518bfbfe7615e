"""A session directory is untrusted input (issue 11, items 7-8): crafted names, files
that are not regular files, sizes, nesting and numbers, read by every read command.

Each case records a small real session, corrupts a copy, and runs the real CLI
under an address-space limit (a reader that slurps /dev/zero fails rather than
taking the machine's memory) and a timeout (a reader that waits on a FIFO fails
rather than hangs)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys

import pytest
from conftest import env, hypertrace, record

APP = r"""
from hypertrace import guest
tick = guest.event("tick", "uint64_t n, const char *s")
for i in range(200):
    tick(i, "t%d" % i)
"""
AS_LIMIT = 3 << 30          # numpy + pyarrow + duckdb start in well under this
READERS = [("report",), ("stats",), ("export", "--format", "json"), ("view",),
           ("sql", "select count(*) from events"), ("report", "--format", "qemu")]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    app = d / "app.py"
    app.write_text(APP)
    out = str(d / "s")
    record(out, sys.executable, str(app))
    return out


def _copy(src: str, dst) -> str:
    shutil.copytree(src, str(dst), symlinks=True)
    shutil.rmtree(os.path.join(str(dst), ".hypertrace", "parquet"), ignore_errors=True)
    return str(dst)


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run(cmd, d: str, tmp_path, timeout: float = 120, **kw):
    """One read command on d, bounded in memory and time; outputs go to tmp_path."""
    argv = [cmd[0], d] + list(cmd[1:])
    if cmd[0] in ("export", "view"):
        argv += ["-o", str(tmp_path / ("out-" + cmd[0]))]
    e = env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "-m", "hypertrace.cli", *argv], capture_output=True,
                          text=True, env=e, timeout=timeout, preexec_fn=_limit, **kw)


def one_error(r, *words: str) -> None:
    """Exit 2 and one clear line naming the problem, no traceback."""
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("hypertrace: error: "), r.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]


def _index(d: str) -> str:
    return os.path.join(d, ".hypertrace", "session.json")


def _edit(d: str, fn) -> None:
    doc = json.load(open(_index(d)))
    fn(doc)
    with open(_index(d), "w") as f:
        json.dump(doc, f)


def _rename_domain(doc: dict, old: str, new: str) -> None:
    for x in doc["domains"]:
        if x["name"] == old:
            x["name"] = new
    for st in doc["streams"]:
        if st["domain"] == old:
            st["domain"] = new
    for k in ("clocks", "syncs"):
        if old in doc.get(k, {}):
            doc[k][new] = doc[k].pop(old)


def _local_file(d: str) -> str:
    return max((f for f in os.listdir(d) if f.startswith("local-")),
               key=lambda f: os.path.getsize(os.path.join(d, f)))


# -- item 7: names reaching SQL and paths ------------------------------------------------
def test_a_domain_name_cannot_inject_sql(recorded, tmp_path):
    """A domain name closing the view's quoted identifier made DuckDB run a COPY."""
    victim = tmp_path / "pwned.csv"
    d = _copy(recorded, tmp_path / "s")
    evil = 'x" AS SELECT 1; COPY (SELECT 42) TO \'%s\'; CREATE VIEW "y' % victim
    _edit(d, lambda doc: _rename_domain(doc, "local", evil))
    for cmd in READERS:
        r = run(cmd, d, tmp_path)
        one_error(r, "malformed session index", "domains[0].name")
    assert not victim.exists()


@pytest.mark.parametrize("name", ["../../../../escape", "a/b", "..", "x\x00y", "é", "a b",
                                  "'", ";", ""])
def test_domain_names_outside_the_character_set_are_refused(recorded, tmp_path, name):
    d = _copy(recorded, tmp_path / "s")
    _edit(d, lambda doc: _rename_domain(doc, "local", name))
    if name == "..":
        # allowed by the writer's character set: it must stay a plain name everywhere
        r = run(("sql", "select count(*) from \"event_.._tick\""), d, tmp_path)
        assert r.returncode == 0 and r.stdout.split()[-1] == "200", r.stderr
        assert not any("escape" in f or f.endswith(".parquet") for f in os.listdir(tmp_path))
        return
    r = run(("sql", "select count(*) from events"), d, tmp_path)
    one_error(r, "malformed session index")
    r = run(("export", "--format", "parquet"), d, tmp_path)
    one_error(r, "malformed session index")
    assert not os.path.exists(str(tmp_path / "escape_tick.parquet"))


@pytest.mark.parametrize("how", ["event", "field", "per_event", "file"])
def test_event_field_and_file_names_are_validated(recorded, tmp_path, how):
    d = _copy(recorded, tmp_path / "s")

    def edit(doc):
        dom = next(x for x in doc["domains"] if x["name"] == "local")
        ev = next(e for e in dom["events"].values() if e["name"] == "tick")
        st = next(s for s in doc["streams"] if s["domain"] == "local")
        if how == "event":
            ev["name"] = 'tick"; DROP'
            ev["signature"] = ev["signature"].replace("tick(", 'tick"; DROP(')
        elif how == "field":
            ev["signature"] = ev["signature"].replace("uint64_t n", 'uint64_t "n')
        elif how == "per_event":
            st["per_event"]["../x"] = 1
        else:
            st["file"] = "/etc/passwd"
    _edit(d, edit)
    for cmd in READERS:
        one_error(run(cmd, d, tmp_path), "malformed session index")


def test_a_symlinked_cache_directory_deletes_nothing(recorded, tmp_path):
    """`.hypertrace/parquet` pointing elsewhere made `sql` delete *.parquet there."""
    d = _copy(recorded, tmp_path / "s")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.parquet").write_text("mine")
    os.symlink(str(victim), os.path.join(d, ".hypertrace", "parquet"))
    r = run(("sql", "select count(*) from events", "--csv"), d, tmp_path)
    assert r.returncode == 0 and int(r.stdout.split()[-1]) > 200, r.stderr
    assert sorted(os.listdir(str(victim))) == ["precious.parquet"]
    assert (victim / "precious.parquet").read_text() == "mine"


def test_a_foreign_cache_is_not_trusted(recorded, tmp_path, other_user):
    """A session of another user that carries a forged Parquet cache (a stamp newer
    than the index, events.parquet with one row): `sql` builds its own."""
    d = _copy(recorded, tmp_path / "s")
    cache = os.path.join(d, ".hypertrace", "parquet")
    os.mkdir(cache, 0o700)
    import duckdb
    con = duckdb.connect()
    con.execute("COPY (SELECT 1 AS x) TO '%s' (FORMAT parquet)" % os.path.join(cache,
                                                                              "events.parquet"))
    for f in ("streams", "clocks", "sync"):
        con.execute("COPY (SELECT 1 AS discarded, 1 AS malformed, 1 AS torn, 'f' AS file, "
                    "'d' AS domain, 1 AS pid, 1 AS tid, 't' AS thread) TO '%s' "
                    "(FORMAT parquet)" % os.path.join(cache, f + ".parquet"))
    stamp = os.path.join(cache, ".done")
    open(stamp, "w").close()
    os.utime(stamp, (4e9, 4e9))
    subprocess.run(["chown", "-R", "%d:%d" % (other_user.uid, other_user.gid), d], check=True)
    r = run(("sql", "select count(*) from events", "--csv"), d, tmp_path)
    assert r.returncode == 0 and int(r.stdout.split()[-1]) > 200, (r.stdout, r.stderr)
    assert sorted(os.listdir(cache)) == [".done", "clocks.parquet", "events.parquet",
                                         "streams.parquet", "sync.parquet"]


# -- item 8: files that are not regular files, sizes, nesting ----------------------------
@pytest.mark.parametrize("what", ["fifo-stream", "zero-stream", "zero-index", "fifo-index",
                                  "dir-stream", "symlinked-meta"])
def test_files_that_are_not_regular_files_are_refused(recorded, tmp_path, what):
    d = _copy(recorded, tmp_path / "s")
    target = os.path.join(d, _local_file(d)) if what.endswith("stream") else _index(d)
    if what == "symlinked-meta":
        meta = os.path.join(d, ".hypertrace")
        shutil.move(meta, str(tmp_path / "elsewhere"))
        os.symlink(str(tmp_path / "elsewhere"), meta)
    else:
        os.unlink(target)
        if what.startswith("fifo"):
            os.mkfifo(target)
        elif what.startswith("zero"):
            os.symlink("/dev/zero", target)
        else:
            os.mkdir(target)
    word = {"fifo": "FIFO", "zero": "symbolic link", "dir": "directory",
            "symlinked": "symbolic link"}[what.split("-")[0]]
    for cmd in READERS:
        one_error(run(cmd, d, tmp_path, timeout=60), word)


def test_recover_refuses_a_fifo_among_the_streams(recorded, tmp_path):
    d = _copy(recorded, tmp_path / "s")
    doc = json.load(open(_index(d)))
    doc.pop("stopped", None)           # as a killed recorder leaves it: recover goes on
    with open(_index(d), "w") as f:
        json.dump(doc, f)
    os.mkfifo(os.path.join(d, "local-0099"))
    r = subprocess.run([sys.executable, "-m", "hypertrace.cli", "recover", d], text=True,
                       capture_output=True, env=env(), timeout=60, preexec_fn=_limit)
    one_error(r, "FIFO")


@pytest.mark.parametrize("depth", [40, 100_000])
def test_a_deeply_nested_index_is_one_error(recorded, tmp_path, depth):
    d = _copy(recorded, tmp_path / "s")
    doc = json.load(open(_index(d)))
    text = json.dumps(doc)[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    open(_index(d), "w").write(text)
    for cmd in READERS[:2]:
        one_error(run(cmd, d, tmp_path), "nested")


def test_an_oversized_index_is_refused_before_it_is_read(recorded, tmp_path):
    d = _copy(recorded, tmp_path / "s")
    with open(_index(d), "r+b") as f:
        f.truncate(65 << 20)        # sparse: nothing to write
    one_error(run(("stats",), d, tmp_path), "too large")


def _maxrss_kib(argv) -> int:
    """Peak resident size of the command, in KiB (measured by the kernel)."""
    code = ("import resource, subprocess, sys\n"
            "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                       env=env(), timeout=600)
    rc, rss = r.stdout.split()
    assert rc == "0", r.stderr
    return int(rss)


@pytest.mark.parametrize("how", ["sparse-tail", "one-huge-packet"])
def test_report_and_export_read_a_huge_stream_in_bounded_memory(recorded, tmp_path, how):
    """A 1 GiB stream file (sparse): `report` read it whole (1 GB resident); a packet
    claiming 1 GiB of content made the exports copy it whole."""
    d = _copy(recorded, tmp_path / "s")
    path = os.path.join(d, _local_file(d))
    if how == "one-huge-packet":
        import struct

        from hypertrace.formats import ctf
        head = bytearray(open(path, "rb").read(ctf.PACKET_HEAD.size))
        fields = list(ctf.PACKET_HEAD.unpack(bytes(head)))
        fields[6] = fields[7] = (1 << 30) * 8         # content_size, packet_size (bits)
        with open(path, "r+b") as f:
            f.write(ctf.PACKET_HEAD.pack(*fields))
        assert struct.calcsize("<I") == 4
    with open(path, "r+b") as f:
        f.truncate(1 << 30)
    py = [sys.executable, "-m", "hypertrace.cli"]
    rss = _maxrss_kib(py + ["report", d])
    assert rss < 300 << 10, rss
    rss = _maxrss_kib(py + ["export", d, "--format", "json", "-o", str(tmp_path / "o.json")])
    assert rss < 400 << 10, rss


@pytest.mark.parametrize("edit", [
    "recorded-as-text", "offset-huge", "offset-float", "nan", "infinity-offset",
    "segment-extra-key", "segment-text", "clock-of-unknown-domain", "sync-of-unknown-domain",
    "stream-id-negative", "domains-not-a-list", "events-bad-id", "thread-not-text",
    "first-without-last"])
def test_numbers_of_the_wrong_type_or_out_of_range_are_one_error(recorded, tmp_path, edit):
    d = _copy(recorded, tmp_path / "s")
    text = open(_index(d)).read()
    doc = json.loads(text)
    loc = next(s for s in doc["streams"] if s["domain"] == "local")
    dom = doc["domains"][0]
    if edit == "recorded-as-text":
        loc["recorded"] = "200"
    elif edit == "offset-huge":
        doc["host_clock_offset_ns"] = 1 << 70
    elif edit == "offset-float":
        dom["clock_offset_ns"] = 1e300
    elif edit in ("nan", "infinity-offset"):
        doc["host_clock_offset_ns"] = "@@"
    elif edit == "segment-extra-key":
        doc["clocks"]["local"]["segments"][0]["x"] = 1
    elif edit == "segment-text":
        doc["clocks"]["local"]["segments"][0]["offset_ns"] = "0"
    elif edit == "clock-of-unknown-domain":
        doc["clocks"]["nowhere"] = doc["clocks"]["local"]
    elif edit == "sync-of-unknown-domain":
        doc["syncs"]["nowhere"] = [{"sync_id": 1, "guest_send": 1, "host_recv": 2}]
    elif edit == "stream-id-negative":
        dom["stream_id"] = -1
    elif edit == "domains-not-a-list":
        doc["domains"] = {"a": 1}
    elif edit == "events-bad-id":
        dom["events"]["70000"] = dom["events"].pop(next(iter(dom["events"])))
    elif edit == "thread-not-text":
        loc["thread"] = {"a": 1}
    elif edit == "first-without-last":
        loc["last_ts"] = None
    text = json.dumps(doc)
    text = text.replace('"@@"', "NaN" if edit == "nan" else "Infinity")
    open(_index(d), "w").write(text)
    for cmd in READERS[:3]:
        one_error(run(cmd, d, tmp_path), "session index")


def test_record_timestamps_beyond_the_abi_bound_end_the_stream_with_a_warning(recorded,
                                                                             tmp_path):
    """A record timestamp above 2^62 (the collector refuses those) would overflow the
    exports' signed 64-bit times: it is damage, like any undecodable record."""
    from hypertrace import abi
    from hypertrace.read import packets
    d = _copy(recorded, tmp_path / "s")
    path = os.path.join(d, _local_file(d))
    data = bytearray(open(path, "rb").read())
    p = next(packets.packets(bytes(data), len(data)))
    abi.REC_HEADER.pack_into(data, p.start + 8 * 0, *abi.REC_HEADER.unpack_from(data, p.start)[:3],
                             (1 << 64) - 1)
    open(path, "wb").write(bytes(data))
    for cmd in (("report",), ("export", "--format", "perfetto"),
                ("export", "--format", "json")):
        r = run(cmd, d, tmp_path)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "hypertrace: warning:" in r.stderr and "local-" in r.stderr, r.stderr


def test_hostile_sessions_checked_in_process_match_the_cli(recorded, tmp_path):
    """The loader is one layer: Session() refuses what the CLI refuses."""
    from hypertrace.read.session import Session, SessionError
    d = _copy(recorded, tmp_path / "s")
    os.unlink(os.path.join(d, _local_file(d)))
    os.mkfifo(os.path.join(d, _local_file(recorded)))
    with pytest.raises(SessionError, match="FIFO"):
        Session(d)
    r = hypertrace("stats", d, check=False, timeout=60)
    one_error(r, "FIFO")
