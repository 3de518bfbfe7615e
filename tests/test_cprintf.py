"""formats/cprintf against the real thing: gcc compiles a program that printf()s the
same formats with the same typed values, and the bytes must be the same."""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess

import pytest

from hypertrace import abi
from hypertrace.formats import cprintf
from hypertrace.formats.cprintf import FormatError, compile_format

TRACE_EVENTS_ALL = "/usr/share/qemu/trace-events-all"
SEP = b"\x1e"           # between cases in the program's output (no case prints it)

C_HEAD = r"""
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
typedef uint64_t hwaddr;
typedef uint64_t vaddr;
typedef uint64_t ram_addr_t;
int main(void)
{
"""


def c_string(data: bytes) -> str:
    """A C string literal holding exactly `data` (octal escapes: they never run on)."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\?' else "\\%03o" % b
                         for b in data) + '"'


def c_value(ctype: str, ft: abi.FieldType, v) -> str:
    """A C expression of type `ctype` (pointers: void *) with the value the record holds."""
    if ft.kind == "str":
        return c_string(v.encode("utf-8"))
    if ft.kind == "float":
        t = "float" if ft.code == "f" else "double"
        if v != v:
            return "(%s)(%sNAN)" % (t, "-" if struct.pack("<d", v)[7] & 0x80 else "")
        if v in (float("inf"), float("-inf")):
            return "(%s)(%sINFINITY)" % (t, "-" if v < 0 else "")
        return "(%s)(%s)" % (t, v.hex())
    if ft.kind == "bool":
        return "(bool)%d" % v
    if "*" in ctype:
        return "(void *)(uintptr_t)0x%xULL" % v
    return "(%s)0x%xULL" % (ctype, v & (1 << 64) - 1)


def gcc_printf(cases, tmp_path, name: str = "cases") -> list:
    """Run one C program with a `printf(fmt, args...)` per case (fmt as written in
    trace-events, args as (ctype, FieldType, value)); returns each case's bytes."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    src = tmp_path / (name + ".c")
    with open(src, "w") as f:
        f.write(C_HEAD)
        for fmt, args in cases:
            f.write('fputs("\\036", stdout); printf(%s%s);\n' % (
                fmt, "".join(", " + c_value(t, ft, v) for t, ft, v in args)))
        f.write("return 0;\n}\n")
    exe = str(tmp_path / name)
    r = subprocess.run([gcc, "-O0", "-w", "-std=gnu11", "-o", exe, str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = subprocess.run([exe], capture_output=True, timeout=120, check=True).stdout
    parts = out.split(SEP)
    assert parts[0] == b"" and len(parts) == len(cases) + 1
    return parts[1:]


def fields_of(ctypes):
    return tuple(("a%d" % i, t, abi.field_type(t)) for i, t in enumerate(ctypes))


def py_printf(fmt: str, args) -> bytes:
    return compile_format(fmt, fields_of([t for t, _, _ in args])).format(
        [v for _, _, v in args])


def A(ctype: str, value):
    ft = abi.field_type(ctype)
    assert ft is not None, ctype
    if ft.kind == "float":     # the value a record holds: a float is stored in 4 bytes
        value = struct.unpack("<" + ft.code, struct.pack("<" + ft.code, value))[0]
    return (ctype, ft, value)


NAN = float("nan")
NEG_NAN = struct.unpack("<d", struct.pack("<Q", 0xFFF8000000000000))[0]
INF = float("inf")

# (format as written in trace-events, arguments)
TRICKY = [
    ('"plain text, no conversion"', []),
    ('"%d %i %u %x %X %o"', [A("int", -1)] * 6),
    ('"%x"', [A("int", -1)]),
    ('"%" PRIx64', [A("int64_t", -1)]),
    ('"%d"', [A("uint32_t", 0xFFFFFFFF)]),
    ('"%u"', [A("int", -2147483648)]),
    ('"%hhd %hhu %hhx"', [A("int", 300), A("int", -1), A("uint32_t", 0x1FF)]),
    ('"%hd %hu %hx"', [A("int", 70000), A("int", -1), A("uint32_t", 0x12345)]),
    ('"%ld %lu %lld %llu %qd %Ld %jd %zd %zu %td %Zu"',
     [A("int64_t", -(1 << 63)), A("uint64_t", (1 << 64) - 1), A("long long", -5),
      A("unsigned long long", 1 << 63), A("int64_t", 7), A("long", -9), A("int64_t", 3),
      A("ssize_t", -1), A("size_t", 12345678901), A("ptrdiff_t", -4), A("size_t", 1)]),
    ('"[%5d] [%-5d] [%05d] [%+d] [% d] [%+5d] [%-+5d] [% 05d] [%+05d]"',
     [A("int", 42)] * 9),
    ('"[%5d] [%-5d] [%05d] [%+d] [% d] [%+5d] [%-+5d] [% 05d] [%+05d]"',
     [A("int", -42)] * 9),
    ('"[%.0d] [%.0x] [%#.0x] [%#.0o] [%5.0d] [%.3d] [%08.3d] [%-8.3d|] [%.10d]"',
     [A("int", 0)] * 9),
    ('"[%.3d] [%08.3d] [%+.3d] [%.3x] [%#.3x] [%#.3o] [%#o] [%#x] [%#X] [%#08x] [%#-8x|]"',
     [A("int", 7)] * 11),
    ('"[%#x] [%#o] [%#5x] [%#05x]"', [A("int", 0)] * 4),
    ('"[%+u] [% u] [%+x] [% o]"', [A("int", 5)] * 4),
    ('"[%p] [%p] [%20p] [%-20p|] [%020p] [%.20p] [%+p] [% p] [%#p]"',
     [A("void *", 0), A("void *", 0x7FFF1234ABCD), A("void *", 0xDEAD),
      A("void *", 0xDEAD), A("void *", 0xDEAD), A("void *", 0xDEAD), A("void *", 1),
      A("void *", 1), A("void *", 1)]),
    ('"[%10p] [%-10p|] [%.2p] [%010p] [%3p]"', [A("void *", 0)] * 5),
    ('"[%p]"', [A("void *", (1 << 64) - 1)]),
    ('"[%s] [%10s] [%-10s|] [%.2s] [%5.1s] [%05s] [%.0s] [%.*s]"',
     [A("const char *", "abc")] * 7 + [A("int", 2), A("const char *", "xyz")]),
    ('"[%s] [%.1s] [%.2s] [%8s]"', [A("const char *", "é€😀")] * 4),
    ('"[%s]"', [A("const char *", "100% %s %d %n\t\\")]),
    ('"[%s]"', [A("const char *", "")]),
    ('"[%c] [%3c] [%-3c|] [%c] [%c]"',
     [A("char", 65), A("char", 66), A("char", 67), A("int", 0x141), A("char", -23)]),
    ('"[%*d] [%-*d|] [%*d|] [%.*d] [%.*d] [%*.*x] [%*s]"',
     [A("int", 6), A("int", 1), A("int", 6), A("int", 2), A("int", -6), A("int", 3),
      A("int", 4), A("int", 5), A("int", -1), A("int", 5), A("int", 8), A("int", 3),
      A("int", 255), A("unsigned", 4), A("const char *", "ab")]),
    ('"100%% %%d %5%|%-5%|"', []),
    ('"esc: \\" \\\\ \\n \\t \\a\\b\\f\\r\\v \\x41\\x4a \\101\\60\\0609 \\e \\? \\\' \\u00e9 '
     '\\U0001F600 é"', []),
    ('"\\x25d" "\\045x"', [A("int", 10), A("int", 11)]),
    ('"a" "b" "%" "d" "c"', [A("int", 3)]),
    ('"%" PRId8 " %" PRIi16 " %" PRIu32 " %" PRIo64 " %" PRIX64 " %" PRIxPTR " %" '
     'PRIdMAX " %" PRIuLEAST8 " %" PRIxFAST8 " %" PRIdFAST16 " %" PRIuFAST32 " %" '
     'PRIxFAST64 " %" PRIXLEAST64',
     [A("int8_t", -128), A("int16_t", -32768), A("uint32_t", 0xFFFFFFFF),
      A("uint64_t", (1 << 64) - 1), A("uint64_t", 0xABCDEF), A("uintptr_t", 0xFFFF),
      A("intmax_t", -(1 << 63)), A("uint8_t", 255), A("uint8_t", 200),
      A("int64_t", -(1 << 40)), A("uint64_t", 1 << 40), A("uint64_t", 17),
      A("uint64_t", 0xFEED)]),
    ('"%d %d %u %x"', [A("bool", True), A("bool", False), A("uint8_t", 255),
                       A("uint16_t", 0xFFFF)]),
    ('"%d %x"', [A("int64_t", (1 << 40) + 5), A("uint64_t", 0x1234567890)]),
    ('"%f %e %g %E %G %F"', [A("double", 3.14159265358979)] * 6),
    ('"[%10.3f] [%-10.2e|] [%+g] [% f] [%010.4f] [%#g] [%#.0f] [%.0e] [%g] [%g] [%.3g]"',
     [A("double", -2.5), A("double", 12345.678), A("double", 1e-5), A("double", 0.5),
      A("double", -1.25), A("double", 1.0), A("double", 2.0), A("double", 15.5),
      A("double", 1e100), A("double", 123456789.0), A("double", 0.0001234)]),
    ('"[%f] [%.20f] [%.0f] [%.0f] [%.0f] [%g] [%e]"',
     [A("double", 1e300), A("double", 0.1), A("double", 0.5), A("double", 1.5),
      A("double", 2.5), A("double", 5e-324), A("double", -0.0)]),
    ('"[%f] [%F] [%+e] [% g] [%5f] [%-6f|] [%06f] [%f] [%F] [%010e] [%G]"',
     [A("double", INF), A("double", INF), A("double", INF), A("double", INF),
      A("double", -INF), A("double", NAN), A("double", NAN), A("double", NEG_NAN),
      A("double", NEG_NAN), A("double", -INF), A("double", NAN)]),
    ('"%f %lf %g"', [A("float", 0.1), A("float", -3.4e38), A("float", 1.5)]),
    ('"%\'d %Id"', [A("int", 1234567), A("int", 7654321)]),
]


def test_tricky_cases_match_gcc_byte_for_byte(tmp_path):
    want = gcc_printf(TRICKY, tmp_path)
    for (fmt, args), w in zip(TRICKY, want):
        assert py_printf(fmt, args) == w, fmt


# --- every event of QEMU's trace-events-all ----------------------------------------
def _int_range(ft: abi.FieldType):
    bits = ft.size * 8
    return (-(1 << bits - 1), (1 << bits - 1) - 1) if ft.signed else (0, (1 << bits) - 1)


STRINGS = ["", "é€😀 ü", "100% %s %d %n", "a\tb\"c\\d", "x" * 40]


def values_for(ft: abi.FieldType, profile: int, rnd: random.Random):
    """Profile 0: zeros; 1: -1 (the maximum if unsigned); 2: the minimum (signed) or a
    top bit alone; 3: the maximum; 4 and later: random."""
    if ft.kind == "str":
        return STRINGS[profile] if profile < len(STRINGS) else "r%d" % rnd.randrange(1000)
    if ft.kind == "bool":
        return bool(profile) if profile < 4 else rnd.random() < 0.5
    if ft.kind == "float":
        return [0.0, -1.0, -1e300, 1e-300][profile] if profile < 4 else rnd.uniform(-1e6, 1e6)
    lo, hi = _int_range(ft)
    bits = ft.size * 8
    if profile == 0:
        return 0
    if profile == 1:
        return -1 if ft.signed else hi
    if profile == 2:
        return lo if ft.signed else 1 << bits - 1
    if profile == 3:
        return hi
    return rnd.randint(lo, hi)


PROFILES = 6


def test_every_event_of_qemu_trace_events_all_matches_gcc(tmp_path):
    if not os.path.exists(TRACE_EVENTS_ALL):
        pytest.skip("%s is not installed (Debian package qemu-system-data)"
                    % TRACE_EVENTS_ALL)
    with open(TRACE_EVENTS_ALL) as f:
        decls = abi.parse_trace_events(f.read(), TRACE_EVENTS_ALL)
    rnd = random.Random(12)
    cases, compiled, refused = [], [], {}
    for d in decls:
        try:
            fm = compile_format(d.fmt, d.fields)
        except FormatError as e:
            refused[d.name] = str(e)
            continue
        for p in range(PROFILES):
            # a `*` width is printed as that many spaces: kept small (C is not capped)
            args = [(t, ft, [0, -1, 7, -9][p % 4] if i in fm.star_args
                     else values_for(ft, p, rnd)) for i, (_, t, ft) in enumerate(d.fields)]
            cases.append(('"%s " %s' % (d.name, d.fmt or '""'), args))
            compiled.append((d, fm, [v for _, _, v in args]))
    want = gcc_printf(cases, tmp_path, "trace_events_all")
    bad = []
    for (d, fm, vals), w in zip(compiled, want):
        got = d.name.encode() + b" " + fm.format(vals)
        if got != w:
            bad.append((d.name, d.fmt, vals, got, w))
    matched = len({d.name for d, _, _ in compiled} - {b[0] for b in bad})
    print("trace-events-all: %d events, %d match gcc byte for byte on %d value sets each, "
          "%d differ, %d refused" % (len(decls), matched, PROFILES, len(bad), len(refused)))
    assert not bad, bad[:5]
    # the formats refused are the ones that print a string argument's address (%p of a
    # const char *: the guest's memory is not in the record) or its first character
    for name, why in refused.items():
        assert "does not fit" in why and "char *" in why, (name, why)
    assert len(refused) < 30, refused


def test_bytes_format_as_hex_and_mismatches_are_refused():
    f = compile_format('"[%s] [%.3s] [%6s]"', fields_of(["bytes"] * 3))
    assert f.format([b"\x00\xab", b"\x01\x02", b"\xff"]) == b"[00ab] [010] [    ff]"
    for fmt, types, why in [
            ('"%d %d"', ["int"], "too few arguments"),
            ('"%*d"', ["int"], "too few arguments"),
            ('"%s"', ["int"], "does not fit"),
            ('"%d"', ["const char *"], "does not fit"),
            ('"%f"', ["int"], "does not fit"),
            ('"%d"', ["double"], "does not fit"),
            ('"%p"', ["const char *"], "does not fit"),
            ('"%n"', ["int"], "not printable"),
            ('"%m"', [], "not printable"),
            ('"%1$d"', ["int"], "positional"),
            ('"%ls"', ["const char *"], "wide"),
            ('"%Lf"', ["double"], "long double"),
            ('"%a"', ["double"], "hex floats"),
            ('"%y"', ["int"], "unknown conversion"),
            ('"50%"', [], "ends inside"),
            ('"%" TARGET_FMT_lx', ["int"], "unknown macro"),
            ('"x" oops "', ["int"], "format"),
    ]:
        with pytest.raises(FormatError, match=why):
            compile_format(fmt, fields_of(types))


def test_widths_and_precisions_are_capped():
    f = compile_format('"%999999999999d|%.999999999s|%*d|%-*d|%.*f"',
                       fields_of(["int", "const char *", "int", "int", "int", "int",
                                  "int", "double"]))
    out = f.format([1, "abc", 2**31 - 1, 5, -(2**31), 6, 10**9 - 1, 1.5])
    parts = out.split(b"|")
    assert [len(p) for p in parts[:4]] == [cprintf.MAX_WIDTH, 3, cprintf.MAX_WIDTH,
                                           cprintf.MAX_WIDTH]
    assert parts[0].endswith(b" 1") and parts[3].startswith(b"6 ")
    assert parts[4] == b"1." + b"5".ljust(cprintf.MAX_WIDTH, b"0")


# --- end to end: guest.load, record, report --format qemu ---------------------------
E2E_EVENTS = r'''# trace-events with PRI macros, as QEMU writes them
hvf_vm_unmap(uint64_t paddr, uint64_t size) "paddr:0x%016"PRIx64" size:0x%08"PRIx64
fmt_mix(int32_t delta, uint8_t b, const char *msg, void *p, bool on, int w, uint16_t v) MIX
fmt_float(double d, float f) "%.3f %g"
fmt_ctl(const char *s) "ctl:\t%s\x1b[0m"
fmt_none(int n, const char *s)
fmt_void(void)
fmt_empty(void) ""
fmt_bad(int n) "n=%d s=%s"
fmt_wrong(int n) "%s"
'''.replace("MIX", r'''"delta=%" PRId32 " b=%02" PRIx8 " msg='%-6s' p=%p on=%d '''
                         r'''[%*" PRIu16 "] 100%%"''')
E2E_APP = r'''import sys, threading
from hypertrace import guest
ev = guest.load(sys.argv[1])
open(sys.argv[2], "w").write(str(threading.get_native_id()))
ev.hvf_vm_unmap(0, 0)
ev.hvf_vm_unmap(2**64 - 1, 0x1000)
ev.fmt_mix(-1, 255, "héllo", 0, True, 8, 65535)
ev.fmt_mix(-2**31, 7, "a much longer message", 0x7fff1234abcd, False, -3, 0)
ev.fmt_float(-2.0 / 3, 0.1)
ev.fmt_ctl("\x1b]0;title\x07")
ev.fmt_none(5, "x")
ev.fmt_void()
ev.fmt_empty()
ev.fmt_bad(3)
ev.fmt_wrong(4)
'''
# the values above, for the C program (those of events whose format applies)
E2E_C = {
    "hvf_vm_unmap": [[A("uint64_t", 0), A("uint64_t", 0)],
                     [A("uint64_t", 2**64 - 1), A("uint64_t", 0x1000)]],
    "fmt_mix": [[A("int32_t", -1), A("uint8_t", 255), A("const char *", "héllo"),
                 A("void *", 0), A("bool", True), A("int", 8), A("uint16_t", 65535)],
                [A("int32_t", -2**31), A("uint8_t", 7),
                 A("const char *", "a much longer message"), A("void *", 0x7fff1234abcd),
                 A("bool", False), A("int", -3), A("uint16_t", 0)]],
    "fmt_float": [[A("double", -2.0 / 3), A("float", 0.1)]],
    "fmt_ctl": [[A("const char *", "\x1b]0;title\x07")]],
    "fmt_empty": [[]],
}


def test_report_format_qemu_prints_what_qemu_log_would(tmp_path):
    import json
    import sys

    from conftest import hypertrace, record

    from hypertrace.analysis.text import printable
    te = tmp_path / "trace-events"
    te.write_text(E2E_EVENTS)
    app = tmp_path / "app.py"
    app.write_text(E2E_APP)
    session, tidfile = str(tmp_path / "s"), tmp_path / "tid"
    record(session, sys.executable, str(app), str(te), str(tidfile))
    tid = int(tidfile.read_text())
    decls = {d.name: d for d in abi.parse_trace_events(E2E_EVENTS)}
    cases = [(decls[n].fmt, args) for n, sets in E2E_C.items() for args in sets]
    gcc = iter(gcc_printf(cases, tmp_path, "e2e"))
    texts = {n: [printable(next(gcc).decode()) for _ in sets] for n, sets in E2E_C.items()}
    texts["fmt_none"] = ['n=5 s="x"']
    texts["fmt_void"] = [None]
    texts["fmt_bad"] = ["[format not applied: too few arguments: %s wants argument 2, the "
                        "event has 1] n=3"]
    texts["fmt_wrong"] = ["[format not applied: %s does not fit argument 1 (int n)] n=4"]
    events = [json.loads(x) for x in hypertrace("report", session, "--json", "--domain",
                                                "local").stdout.splitlines()]
    want = []
    for e in events:
        t = texts[e["name"]].pop(0)
        head = "%d@%d.%06d:%s" % (tid, e["ts"] // 10**9, e["ts"] % 10**9 // 1000, e["name"])
        want.append(head if t is None else head + " " + t)
    assert len(want) == 11 and not any(texts.values())
    r = hypertrace("report", session, "--format", "qemu", "--domain", "local")
    assert r.stdout.splitlines() == want
    assert "\x1b" not in r.stdout and "\t" not in r.stdout and r.stderr == ""
    # what gcc printed, and so the report, for the lines one can read (%-6s pads bytes:
    # "héllo" is 6 of them)
    assert want[0].endswith(":hvf_vm_unmap paddr:0x0000000000000000 size:0x00000000")
    assert ":fmt_mix delta=-1 b=ff msg='héllo' p=(nil) on=1 [   65535] 100%" in r.stdout
    assert ":fmt_ctl ctl:\\x09\\x1b]0;title\\x07\\x1b[0m" in r.stdout
    assert ":fmt_empty \n" in r.stdout
    # text and JSON are unchanged; --json and --format are one choice
    assert hypertrace("report", session, "--format", "json").stdout == \
        hypertrace("report", session, "--json").stdout
    assert hypertrace("report", session, "--format", "text").stdout == \
        hypertrace("report", session).stdout
    r = hypertrace("report", session, "--json", "--format", "qemu", check=False)
    assert r.returncode == 2 and "exclusive" in r.stderr


HOSTILE = [   # (format put in the index, what the line shows after "name ")
    ('"%999999999d|"', " " * (cprintf.MAX_WIDTH - 1) + "7|"),
    ('"%n"', "[format not applied: %n is not printable from a record] n=7"),
    ('"%s"', "[format not applied: %s does not fit argument 1 (int n)] n=7"),
    ('"x" NOT_A_PRI', "[format not applied: unknown macro NOT_A_PRI (glibc's PRI macros are "
                      "known)] n=7"),
    ('"%*d"', "[format not applied: too few arguments: %d wants argument 2, the event "
              "has 1] n=7"),
    # a lone byte 0x9b (not UTF-8) and U+009B (CSI) are both shown \x9b
    ('"\\x1b]0;pwned\\a%d\\n\\x9b\\u009b"', "\\x1b]0;pwned\\x077\\x0a\\x9b\\x9b"),
    ('"50%"', "[format not applied: the format ends inside a conversion] n=7"),
]


def test_report_format_qemu_on_a_session_with_hostile_formats(tmp_path):
    import json
    import sys

    from conftest import hypertrace, record
    app = tmp_path / "app.py"
    app.write_text("from hypertrace import guest\n" + "".join(
        "guest.event('h%d', 'int n', fmt='n=%%d')(7)\n" % i for i in range(len(HOSTILE))))
    session = str(tmp_path / "s")
    record(session, sys.executable, str(app))
    idx = os.path.join(session, ".hypertrace", "session.json")
    with open(idx) as f:
        doc = json.load(f)
    for d in doc["domains"]:
        for e in d["events"].values():
            if re.match(r"h\d\(", e["signature"]):
                e["format"] = HOSTILE[int(e["signature"][1:].split("(")[0])][0]
    with open(idx, "w") as f:
        json.dump(doc, f)
    r = hypertrace("report", session, "--format", "qemu", "--domain", "local")
    assert r.stderr == ""
    lines = sorted(r.stdout.splitlines(), key=lambda x: x.split(":", 1)[1])
    assert len(lines) == len(HOSTILE)
    for i, (line, (_, text)) in enumerate(zip(lines, HOSTILE)):
        assert line.split(":", 1)[1] == "h%d %s" % (i, text)


def test_qemu_log_lines_of_qemu_domain_events_tids_and_truncation():
    from types import SimpleNamespace

    from hypertrace.formats.qemu_log import QemuLog
    from hypertrace.read.session import Event
    qe = abi.make_decl("virtio_notify", "uint32_t tid, const char *args")
    fm = abi.make_decl("tick", "uint64_t n, const char *s", fmt='"n=%" PRIu64 " s=%s"')
    sess = SimpleNamespace(
        streams=[{"file": "qemu-1", "tid": None}, {"file": "local-1", "tid": 4242},
                 {"file": "local-2"}],
        codecs={"qemu": {0: abi.Codec(qe)}, "local": {0: abi.Codec(fm)}})
    q = QemuLog(sess)
    ts = 1_700_000_000 * 10**9 + 123_456_789
    # QEMU's own line comes back as QEMU wrote it: its tid, its text
    assert q.line(Event(ts, 0, "qemu", "qemu-1", "virtio_notify",
                        {"tid": 77, "args": "vdev 0x55d0 vq 0x7f"})) == \
        "77@1700000000.123456:virtio_notify vdev 0x55d0 vq 0x7f"
    assert q.line(Event(ts, 0, "local", "local-1", "tick", {"n": 2**64 - 1, "s": "é\x1b"},
                        truncated=True)) == \
        "4242@1700000000.123456:tick n=18446744073709551615 s=é\\x1b [truncated]"
    # a stream without a known tid: 0; an event the index does not declare: raw fields
    assert q.line(Event(999, 0, "local", "local-2", "other", {"a": b"\x01"})) == \
        "0@0.000000:other a=01"
