"""What a fresh-context review of issue 12 broke (trace-events loading, generated
tracepoints), one test per finding; each fails on the code before the fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import babeltrace, env, hypertrace, local, record, stats, write

from hypertrace import abi

PY = sys.executable


def _report(session: str, name: str) -> list:
    return [json.loads(x) for x in
            hypertrace("report", session, "--json", "--domain", "local").stdout.splitlines()
            if json.loads(x)["name"] == name]


def test_threads_declaring_while_the_first_one_connects_lose_nothing(session, tmp_path):
    """The first declaration connects from $HYPERTRACE_CHANNEL; a thread declaring and
    emitting meanwhile waits for the connection (before: its first records dropped,
    counted nowhere)."""
    app = write(tmp_path, "race.py", r'''
import threading, time
from hypertrace import guest
bar = threading.Barrier(4)
def run(k):
    bar.wait()
    e = guest.event("ev_%d" % k, "int i")
    for i in range(100):
        e(i)
ts = [threading.Thread(target=run, args=(k,)) for k in range(4)]
for t in ts: t.start()
for t in ts: t.join()
''')
    for _ in range(3):
        out = "%s-%d" % (session, _)
        record(out, PY, app)
        st = stats(out)
        ss = local(st)
        got = sum(s["recorded"] + s["discarded"] for s in ss)
        assert got + st["domains"]["local"].get("lost_without_ring", 0) == 400, ss


def test_bad_values_raise_trace_argument_error_and_leave_nothing_torn(session, tmp_path):
    app = write(tmp_path, "bad.py", r'''
from hypertrace import guest
from hypertrace.guest import TraceArgumentError
tp = guest.event("vals", "int i, float f, double d, bool b, const char *s")
class Enc(str):
    def encode(self, *a):
        return "not bytes"
class Fake:
    def encode(self, *a):
        return b"fake"
for args in ((1, 1e39, 0.0, True, "x"), (1, 0.0, 0.0, "false", "x"),
             (1, 0.0, 0.0, None, "x"), (1, 0.0, 0.0, [], "x"), (1, 0.0, 0.0, True, Fake()),
             (1, 0.0, 0.0, True, 5)):
    try:
        tp(*args)
        print("ACCEPTED", args)
    except TraceArgumentError:
        pass
tp(2, 1.5, 2.5, 1, Enc("kept"))       # a str subclass records its text
tp(3, 1.5, 2.5, False, "last")
''')
    r = record(session, PY, app)
    assert "ACCEPTED" not in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert [e["fields"] for e in _report(session, "vals")] == [
        {"i": 2, "f": 1.5, "d": 2.5, "b": True, "s": "kept"},
        {"i": 3, "f": 1.5, "d": 2.5, "b": False, "s": "last"}]
    assert sum(s["torn"] for s in local(stats(session))) == 0


def test_a_reused_ring_shows_no_torn_record(session, tmp_path):
    """Records an earlier claim left in a ring are not the new claim's torn ones."""
    app = write(tmp_path, "two.py", r'''
import subprocess, sys
code = "import sys\nfrom hypertrace import guest\nt = guest.event('r', 'int i')\n" \
       "for i in range(int(sys.argv[1])): t(i)\n"
subprocess.run([sys.executable, "-c", code, "5"], check=True)
subprocess.run([sys.executable, "-c", code, "2"], check=True)
''')
    record(session, PY, app)
    ss = local(stats(session))
    assert sum(s["recorded"] for s in ss) == 7
    assert sum(s["torn"] for s in ss) == 0, ss


def test_non_finite_floats_are_valid_json_everywhere(session, tmp_path):
    app = write(tmp_path, "nan.py", r'''
from hypertrace import guest
guest.event("flt", "float f, double d, double e")(float("nan"), float("-inf"), float("inf"))
''')
    record(session, PY, app)
    assert _report(session, "flt")[0]["fields"] == {"f": "NaN", "d": "-Infinity",
                                                    "e": "Infinity"}
    out = str(tmp_path / "x.json")
    hypertrace("export", session, "--format", "json", "-o", out)
    doc = json.loads(open(out).read(), parse_constant=lambda c: pytest.fail("bare " + c))
    args = [e["args"] for e in doc["traceEvents"] if e.get("name") == "flt"]
    assert args == [{"f": "NaN", "d": "-Infinity", "e": "Infinity"}]


def test_event_names_that_are_python_attributes(tmp_path):
    """`__class__`, `__dict__`, `_list` are C identifiers: loading them works and every
    event is reachable (by attribute, or by key for the object's own attributes)."""
    te = write(tmp_path, "te", "good_one(int x)\n__class__(int x)\n__dict__(int y)\n"
                               "_list(int z)\n__weakref__(int w)\n")
    code = r'''
import sys
from hypertrace import guest
ev = guest.load(sys.argv[1])
print(len(ev), [tp.name for tp in ev], ev["__class__"].name, ev._list.name,
      ev.good_one.name, "__dict__" in ev, type(ev).__name__)
'''
    r = subprocess.run([PY, "-c", code, te], capture_output=True, text=True, env=env(),
                       timeout=60)
    assert r.stdout.split() == ["5", "['good_one',", "'__class__',", "'__dict__',", "'_list',",
                                "'__weakref__']", "__class__", "_list", "good_one", "True",
                                "Events"], r.stdout + r.stderr


def test_lines_break_where_tracetool_breaks_them():
    text = "# a\x0cb comment\nev_a(int a) \"x\x85y\"\r\nev_b(int b)\x0b\rev_c(int c)\n"
    decls = abi.read_trace_events(text, "f")
    assert [(n, d.name) for n, d in decls] == [(2, "ev_a"), (3, "ev_b"), (4, "ev_c")]
    with pytest.raises(ValueError, match=r"^f:2: no space may separate"):
        abi.parse_trace_events("ok(int a)\nev (int a)\n", "f")


def test_load_errors_name_the_file_and_line(tmp_path):
    latin = tmp_path / "latin"
    latin.write_bytes(b"ok(int a)\n# caf\xe9\n")
    bom = tmp_path / "bom"
    bom.write_bytes(b"\xef\xbb\xbfev_bom(int a) \"%d\"\n")
    code = r'''
import sys
from hypertrace import guest
try:
    guest.load(sys.argv[1])
except ValueError as e:
    print("ERR", e)
print("BOM", [tp.name for tp in guest.load(sys.argv[2])])
for bad in ((123,), ("x", None), ("x", 5), ("x", "int a", False, False, 7)):
    try:
        guest.event(*bad)
    except ValueError as e:
        print("REFUSED", e)
'''
    r = subprocess.run([PY, "-c", code, str(latin), str(bom)], capture_output=True, text=True,
                       env=env(), timeout=60)
    assert "ERR %s:2: not UTF-8 text (byte 0xe9)" % latin in r.stdout, r.stdout + r.stderr
    assert "BOM ['ev_bom']" in r.stdout
    assert r.stdout.count("REFUSED") == 4 and "Traceback" not in r.stderr, r.stdout + r.stderr


def test_a_format_left_out_for_room_is_warned(session, tmp_path):
    te = write(tmp_path, "te", 'long_fmt(int a) "%s %%d"\n' % ("x" * 600))
    app = write(tmp_path, "f.py", "import sys\nfrom hypertrace import guest\n"
                                  "guest.load(sys.argv[1]).long_fmt(1)\n")
    r = record(session, PY, app, te)
    assert "long_fmt: its format is left out" in r.stderr, r.stderr
    assert [e["fields"] for e in _report(session, "long_fmt")] == [{"a": 1}]


def test_qualified_pointers_declare_as_tracetool_reads_them(session, tmp_path):
    te = write(tmp_path, "te", 'qp(char *const p, const char* const s, void *restrict r) '
                               '"%s %s %p"\n')
    app = write(tmp_path, "q.py", "import sys\nfrom hypertrace import guest\n"
                                  "guest.load(sys.argv[1]).qp('a', 'b', 16)\n")
    record(session, PY, app, te)
    assert [e["fields"] for e in _report(session, "qp")] == [{"p": "a", "s": "b", "r": 16}]
    events, _ = babeltrace(session)
    assert [f for n, f in events if n == "qp"] == [{"_p_length": "1", "p": "a",
                                                   "_s_length": "1", "s": "b", "r": "0x10"}]


# -- the second review ----------------------------------------------------------------

def test_sql_output_is_valid_json_and_shows_bytes_in_hex(session, tmp_path):
    app = write(tmp_path, "s.py", r'''
from hypertrace import guest
guest.event("sq", "double d, bytes b, const char *s")(float("nan"), b"\x00\xff\x1b", "ok")
''')
    record(session, PY, app)
    r = hypertrace("sql", session, 'select f_d, f_b, f_s from "event_local_sq"', "--json")
    row = json.loads(r.stdout, parse_constant=lambda c: pytest.fail("bare " + c))
    assert row == {"f_d": "NaN", "f_b": "00ff1b", "f_s": "ok"}
    csv = hypertrace("sql", session, 'select f_b from "event_local_sq"', "--csv").stdout
    assert csv.split() == ["f_b", "00ff1b"]


def test_a_format_that_does_not_parse_leaves_the_session_readable(session, tmp_path):
    app = write(tmp_path, "f.py", "from hypertrace import guest\n"
                                  "guest.event('bf', 'int a', fmt='a=%d')(5)\n")
    record(session, PY, app)
    idx = tmp_path / "session" / ".hypertrace" / "session.json"
    doc = json.loads(idx.read_text())
    for d in doc["domains"]:
        for e in d["events"].values():
            if e["name"] == "bf":
                e["format"] = '"unterminated'
    idx.write_text(json.dumps(doc))
    out = hypertrace("report", session, "--format", "qemu").stdout
    assert [x.split(":", 1)[1] for x in out.splitlines() if ":bf " in x] == ["bf a=5"]


def test_c_strings_end_at_their_first_nul(session, tmp_path):
    app = write(tmp_path, "n.py", "from hypertrace import guest\n"
                                  "guest.event('nf', 'int x', fmt='nul\\x00here %d')(1)\n"
                                  "guest.event('ns', 'const char *s', fmt='[%s]')('a\\x00b')\n")
    record(session, PY, app)
    out = hypertrace("report", session, "--format", "qemu").stdout
    lines = {x.split(":", 1)[1].split(" ", 1)[0]: x.split(":", 1)[1] for x in out.splitlines()}
    assert lines["nf"] == "nf nul" and lines["ns"] == "ns [a]"


def test_bidi_controls_are_escaped_for_the_terminal():
    from hypertrace.analysis.text import printable
    assert printable("a\u202eb\u2028c\u2066d") == "a\\u202eb\\u2028c\\u2066d"


def test_a_format_ending_in_a_newline_is_refused_as_tracetool_does():
    from hypertrace import guest
    with pytest.raises(ValueError, match="must not end with a newline"):
        guest.event("nl_fmt", "int a", fmt="a=%d\n")
