"""QEMU's own trace-events files (issue 12): every line of Debian's trace-events-all
declares, the whole file loads under `hypertrace record` with default settings, and
one event of every declared event reads back field for field (report --json,
babeltrace2). Then each class of line QEMU's files hold, one test each: PRI macros
outside the quotes, Python keywords and builtins as argument names, the C type
spellings tracetool accepts, the vcpu and disable properties, atomic loading, and
refusals that are loud (a warning and a count), never silent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, babeltrace, env, hypertrace, local, record, stats, write

from hypertrace import abi

PY = sys.executable
ALL = "/usr/share/qemu/trace-events-all"      # Debian package qemu-system-data
APP = os.path.join(ROOT, "tests", "apps", "every_event.py")


def _need_all() -> None:
    assert os.path.exists(ALL), "%s is missing: run ./test.sh (apt-get install " \
                                "qemu-system-data)" % ALL


def _bt_value(ft: abi.FieldType, v):
    """A value as babeltrace2 prints it (pointers in hex, bools as integers)."""
    if ft.kind == "bool":
        return str(int(v))
    if ft.hex:
        return "0x%X" % v
    return v if ft.kind == "str" else str(v)


def test_every_line_of_trace_events_all_declares():
    _need_all()
    with open(ALL, encoding="utf-8") as f:
        text = f.read()
    lines = [s for s in (x.strip() for x in text.splitlines()) if s and not s.startswith("#")]
    decls = abi.parse_trace_events(text, ALL)
    assert len(decls) == len(lines) > 5000
    # the format is kept whole, PRI macros and all
    d = next(d for d in decls if d.name == "guest_user_syscall_ret")
    assert d.fmt == '"num=0x%016"PRIx64" ret=0x%016"PRIx64'
    assert all(len(d.slot_text.encode()) <= abi.DECL_TEXT_MAX for d in decls)


def test_trace_events_all_loads_and_every_event_reads_back(session, tmp_path):
    """One guest.load of the whole file under `hypertrace record` with default settings;
    one call of every event with extreme values; every field of every recorded event
    checked through report --json and babeltrace2, with no warning."""
    _need_all()
    emitted = str(tmp_path / "emitted.jsonl")
    r = record(session, PY, APP, ALL, emitted, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning" not in r.stderr.lower(), r.stderr[-3000:]
    decls = {d.name: d for d in abi.parse_trace_events(open(ALL).read())}
    n_decl = len(decls)
    assert "EMITTED %d DECLARED %d" % (n_decl, n_decl) in r.stdout, r.stdout[-500:]
    want = [json.loads(x) for x in open(emitted)]
    on = [w for w in want if not decls[w["name"]].disabled]
    # `disable` events are declared but off until enabled: they record nothing here
    assert len(on) < len(want)

    got = [json.loads(x) for x in hypertrace("report", session, "--json",
                                             "--domain", "local").stdout.splitlines()]
    got = [g for g in got if not g["name"].startswith("hypertrace_")]
    assert [g["name"] for g in got] == [w["name"] for w in on]
    for g, w in zip(got, on):
        assert g["fields"] == w["fields"], (g, w)
        long_str = any(len(v.encode()) > 1000 for v in w["fields"].values()
                       if isinstance(v, str))
        assert g.get("truncated", False) == long_str, g["name"]

    st = stats(session)
    assert sum(s["recorded"] for s in local(st)) == len(on)
    assert sum(s["discarded"] + s["malformed"] for s in local(st)) == 0

    events, _ = babeltrace(session)
    assert [n for n, _ in events] == [w["name"] for w in on]
    for (name, f), w in zip(events, on):
        for arg, _, ft in decls[name].fields:
            assert f[arg] == _bt_value(ft, w["fields"][arg]), (name, arg, f)


PRI_LINES = r'''
# as QEMU writes them: the macro outside the quotes, in the middle or last
hvf_vm_unmap(uint64_t paddr, uint64_t size) "paddr:0x%016"PRIx64" size:0x%08"PRIx64
x_last(uint32_t v) "v=%" PRIu32
x_mid(int16_t a, uint8_t b) "a=%"PRId16" b=0x%02"PRIx8" end"
x_noformat(int a)
x_escaped(const char *s) "say \"%s\"\t!"
x_comma(int a, const char *s) "a, " "b=%d s=\"%s\", " "end"
vcpu guest_cpu_enter(void)
disable x_off(int v) "v=%d"
'''


def test_pri_macros_vcpu_and_disable_declare(tmp_path):
    decls = {d.name: d for d in abi.parse_trace_events(PRI_LINES, "f")}
    assert decls["hvf_vm_unmap"].fmt == '"paddr:0x%016"PRIx64" size:0x%08"PRIx64'
    assert decls["x_last"].fmt == '"v=%" PRIu32'
    assert abi.parse_format(decls["x_mid"].fmt) == (
        ("str", "a=%"), ("macro", "PRId16"), ("str", " b=0x%02"), ("macro", "PRIx8"),
        ("str", " end"))
    assert decls["x_noformat"].fmt == ""
    assert decls["x_comma"].fmt == '"a, " "b=%d s=\\"%s\\", " "end"'   # one format, not two
    assert decls["guest_cpu_enter"].fields == () and not decls["guest_cpu_enter"].disabled
    assert decls["x_off"].disabled


OLD_QEMU = r'''
# QEMU <= 2.x: types before tracetool validated them, tcg events with two formats
port_in(unsigned int addr, char size, unsigned int val) "addr %#x(%c) value %u"
map_ptr(void* ptr) "%p"
nothing(void) ""
disable vcpu tcg mem_before(TCGv vaddr, uint8_t info) "info=%d", "vaddr=0x%016"PRIx64" info=%d"
tlb_fill(target_ulong addr, int mmu_idx) "addr " "0x%" PRIx64 " idx %d"
'''


def test_older_qemu_syntax_declares():
    decls = {d.name: d for d in abi.parse_trace_events(OLD_QEMU, "old")}
    mb = decls["mem_before"]
    assert mb.disabled and mb.fmt == '"vaddr=0x%016"PRIx64" info=%d"'   # execution time
    assert [(a, t, ft.code) for a, t, ft in mb.fields] == [("vaddr", "TCGv", "Q"),
                                                           ("info", "uint8_t", "B")]
    assert decls["map_ptr"].fields[0][:2] == ("ptr", "void *")
    assert decls["tlb_fill"].fields[0][2].code == "Q"


@pytest.mark.parametrize("line,cause", [
    ('x(int a) "a=%d', "unterminated string"),
    ('x(int a) "a=%d" garbage"', "where a string or a macro name"),
    ("x(int a) trailing", "unexpected text after the argument list"),
    ("x(int a", "no ')' closing"),
    ("frobnicate x(int a)", "unknown property 'frobnicate'"),
    ('x(int a) "err %m"', "'%m' is forbidden"),
    ('x(int a) "a=%d\\n"', "must not end with a newline"),
    ("x(struct Foo f)", "unsupported type 'struct Foo'"),
    ("x(int a, , int b)", "empty argument"),
    ("x(int 9a)", "not a C identifier"),
    ("1x(int a)", "bad event name"),
])
def test_bad_lines_name_file_line_and_cause(tmp_path, line, cause):
    p = write(tmp_path, "trace-events", "# header\nok(int a) \"%d\"\n" + line + "\n")
    with pytest.raises(ValueError) as e:
        abi.parse_trace_events(open(p).read(), p)
    msg = str(e.value)
    assert msg.startswith(p + ":3: "), msg
    assert cause in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize("ctype,code", [
    ("uintptr_t", "Q"), ("ptrdiff_t", "q"), ("const int", "i"), ("const char", "b"),
    ("const uint8_t", "B"), ("long unsigned int", "Q"), ("unsigned long int", "Q"),
    ("long int", "q"), ("signed long", "q"), ("short int", "h"), ("unsigned short int", "H"),
    ("long long int", "q"), ("long long unsigned int", "Q"), ("int long long", "q"),
    ("signed", "i"), ("unsigned", "I"), ("signed char", "b"), ("unsigned char", "B"),
    ("char", "b"), ("volatile unsigned", "I"), ("int const", "i"), ("_Bool", "?"),
    ("size_t", "Q"), ("ssize_t", "q"), ("int8_t", "b"), ("uint64_t", "Q"),
])
def test_c_integer_spellings(ctype, code):
    d = abi.make_decl("t", "%s v" % ctype)
    assert d.fields[0][2].code == code
    assert abi.parse_signature(d.signature).fields == d.fields   # the host reads it back


def test_a_char_takes_an_int_or_a_one_character_str(session, tmp_path):
    app = write(tmp_path, "chars.py", r'''
from hypertrace import guest
from hypertrace.guest import TraceArgumentError
tp = guest.event("chars", "char a, unsigned char b, const char c")
tp("A", "\xe9", -5)
tp(65, 233, "\xe9")
for bad in ("AB", "", "\u20ac"):
    try:
        tp(bad, 0, 0)
    except TraceArgumentError as e:
        print("REFUSED", e)
''')
    r = record(session, PY, app)
    assert r.stdout.count("REFUSED") == 3, r.stdout + r.stderr
    got = [json.loads(x)["fields"] for x in
           hypertrace("report", session, "--json", "--domain", "local").stdout.splitlines()
           if '"chars"' in x]
    # 'é' in a plain (signed) char is -23, as C stores it
    assert got == [{"a": 65, "b": 233, "c": -5}, {"a": 65, "b": 233, "c": -23}]


KEYWORDS = ("kw_event(int as, int from, const char *in, uint64_t class, int raise, "
            "int async, int global, const char *len, int str, int None, int __debug__, "
            'int from_, int _on, int __w) "%d"\n')


def test_keywords_and_builtins_as_argument_names(session, tmp_path):
    """Any C identifier is an argument name: a keyword becomes name_ for keyword calls;
    `len` and `str` shadow nothing; the record reads back under the C names."""
    te = write(tmp_path, "trace-events", KEYWORDS)
    app = write(tmp_path, "kw.py", r'''
import sys
from hypertrace import guest
from hypertrace.guest import TraceArgumentError
ev = guest.load(sys.argv[1])
ev.kw_event(1, 2, "three", 4, 5, 6, 7, "eight", 9, 10, 11, 12, 13, 14)
ev.kw_event(as_=1, from__=2, in_="x", class_=4, raise_=5, async_=6, global_=7, len="y",
            str=9, None_=10, __debug___=11, from_=12, _on=13, __w=14)
try:
    ev.kw_event(1, 2, "three", 4, 5, 6, 7, "eight", 9, 10, 11, 12, 13, 1 << 40)
except TraceArgumentError as e:
    print("RANGE", type(e).__name__)
''')
    r = record(session, PY, app, te)
    assert "RANGE TraceArgumentError" in r.stdout, r.stdout + r.stderr
    got = [json.loads(x)["fields"] for x in
           hypertrace("report", session, "--json", "--domain", "local").stdout.splitlines()
           if '"kw_event"' in x]
    names = ["as", "from", "in", "class", "raise", "async", "global", "len", "str", "None",
             "__debug__", "from_", "_on", "__w"]
    assert got[0] == dict(zip(names, [1, 2, "three", 4, 5, 6, 7, "eight", 9, 10, 11, 12, 13,
                                      14]))
    assert got[1] == dict(zip(names, [1, 2, "x", 4, 5, 6, 7, "y", 9, 10, 11, 12, 13, 14]))
    events, _ = babeltrace(session)
    assert [f["class"] for n, f in events if n == "kw_event"] == ["4", "4"]


def test_disabled_events_are_declared_and_off_until_enabled(tmp_path):
    """`disable` compiles an event out in QEMU; here it is declared and off until the
    host enables it (`hypertrace ctl enable`)."""
    out = str(tmp_path / "s")
    te = write(tmp_path, "trace-events", 'disable later(int i) "i=%d"\n')
    app = write(tmp_path, "off.py", r'''
import sys, time
from hypertrace import guest
ev = guest.load(sys.argv[1])
ev.later(1)                                   # off: not recorded
print("DECLARED", ev.later.event_id is not None, flush=True)
deadline = time.monotonic() + 60
while not ev.later.enabled and time.monotonic() < deadline:
    time.sleep(0.01)
ev.later(2)                                   # on: recorded
''')
    p = subprocess.Popen([PY, "-m", "hypertrace.cli", "record", "-o", out, "--", PY, app, te],
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = __import__("time").monotonic() + 60
        while True:
            r = hypertrace("ctl", out, "enable", "later", check=False)
            if r.returncode == 0 and "later" in r.stdout + r.stderr:
                break
            assert __import__("time").monotonic() < deadline, r.stdout + r.stderr
            __import__("time").sleep(0.2)
        so, se = p.communicate(timeout=120)
    finally:
        p.kill()
    assert "DECLARED True" in so, so + se
    got = [json.loads(x)["fields"]["i"] for x in
           hypertrace("report", out, "--json", "--domain", "local").stdout.splitlines()
           if '"later"' in x]
    assert got == [2]


def test_a_file_that_fails_half_way_declares_nothing(tmp_path):
    """Atomic load: a bad line, or a conflict with an event already declared, raises
    before anything of the file is declared."""
    good = write(tmp_path, "a", 'first_ok(int a) "%d"\n')
    bad = write(tmp_path, "b", 'b_one(int a)\nb_two(int a)\nb_three(int a\n')
    clash = write(tmp_path, "c", 'c_one(int a)\nfirst_ok(int other)\n')
    code = r'''
import sys
from hypertrace import guest
guest.load(sys.argv[1])
for f in sys.argv[2:]:
    try:
        guest.load(f)
    except ValueError as e:
        print("ERR", e)
from hypertrace.guest import _tracepoints
print("DECLARED", sorted(_tracepoints))
'''
    r = subprocess.run([PY, "-c", code, good, bad, clash], capture_output=True, text=True,
                       env=env(), timeout=60)
    assert "ERR %s:3: no ')'" % bad in r.stdout, r.stdout + r.stderr
    assert "ERR %s:2: event first_ok already declared as first_ok(int a)" % clash in r.stdout
    assert "DECLARED ['first_ok']" in r.stdout, r.stdout


def test_refusals_are_loud(session, tmp_path):
    """A declaration the region cannot take (table full) warns and is counted, and
    declaring it again warns again; the same name with another signature from another
    process is refused with a warning and a count, never reused silently."""
    app = write(tmp_path, "full.py", r'''
import subprocess, sys
from hypertrace import guest
tps = [guest.event("fill_%d" % i, "int a") for i in range(6)]
again = guest.event("fill_5", "int a")       # declared again: still says why
code = "from hypertrace import guest; guest.event('fill_0', 'int other')(1)"
subprocess.run([sys.executable, "-c", code], check=True)
print("REFUSED", [tp.name for tp in tps if tp.refused])
''')
    r = record(session, PY, app, opts=("--max-events", "4"))
    refused = json.loads(r.stdout.split("REFUSED ", 1)[1].splitlines()[0].replace("'", '"'))
    assert refused and refused[-1] == "fill_5", r.stdout + r.stderr
    assert r.stderr.count("fill_5") >= 2, r.stderr              # warned at each declaration
    assert "event fill_0 disabled" in r.stderr, r.stderr        # the other process's
    d = stats(session)["domains"]["local"]
    assert d["declarations_refused"] == len(refused) + 1, d


LOAD_CALLS = r"""
import sys, uuid
from hypertrace import abi, guest
from hypertrace.host.region import Region
n, te = int(sys.argv[1]), sys.argv[2]
with open(te, "w") as f:
    for i in range(n):
        f.write('ev%d(uint32_t a, const char *s) "a=%%u s=%%s"\n' % i)
path = "/dev/shm/ht-load-%s" % uuid.uuid4().hex[:8]
region = Region.create(path, "load", n_rings=1, ring_size=4096, max_events=abi.MAX_EVENT_ID)
try:
    guest.connect("shm:" + path)
    calls = [0]
    def prof(frame, event, arg):
        calls[0] += 1
    sys.setprofile(prof)
    ev = guest.load(te)
    sys.setprofile(None)
    assert all(tp.event_id is not None and tp.enabled for tp in ev)
    print("CALLS", calls[0])
finally:
    guest.disconnect()
    region.close()
"""


def test_loading_is_linear_in_the_events(tmp_path):
    """Function calls (not time) for guest.load of 1 000 and 4 000 events with a live
    channel: linear means x4, quadratic x16 (before: each declaration re-mirrored
    the whole enable table into every tracepoint declared so far)."""
    def calls(n: int) -> int:
        r = subprocess.run([PY, "-c", LOAD_CALLS, str(n), str(tmp_path / ("te%d" % n))],
                           capture_output=True, text=True, env=env(), timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        return int(r.stdout.split("CALLS ")[1].split()[0])
    c1, c4 = calls(1000), calls(4000)
    assert c4 < 6 * c1, (c1, c4)
