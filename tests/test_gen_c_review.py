"""What a review of `hypertrace gen-c` found (review 13), checked with the real gcc and
the real `hypertrace record`:

1. include guards came from the input's basename: QEMU's per-directory `trace-events`
   files gave every header one guard, and the second header included was skipped;
2. headers that did not compile: events `foo` and `foo_enabled` (two functions
   `trace_foo_enabled`), arguments named as libc macros (`errno`, `stdin`, `I`...);
3. unbounded input: `gen-c /dev/zero` ran out of memory, a long line of blanks took
   cubic time (the same parser runs in guests, `guest.load`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest
from conftest import hypertrace, record

from hypertrace import abi, guest

CC = shutil.which("gcc") or shutil.which("cc")
STRICT = ["-std=c11", "-pedantic", "-Wall", "-Wextra", "-Werror"]
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (gcc/cc)")


def write(path, text) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def gen(src, out) -> str:
    hypertrace("gen-c", str(src), "-o", str(out))
    with open(str(out)) as f:
        return f.read()


def build(d, sources, extra=()) -> subprocess.CompletedProcess:
    """The program `d/app` from `sources` (in d) and the runtime, every warning an error;
    the runtime is built without -pedantic's strict ISO, as `c-config` gives it."""
    flags = hypertrace("c-config", "--cflags", "--libs").stdout.split()
    objs = []
    for s in sources:
        o = os.path.join(str(d), s + ".o")
        r = subprocess.run([CC, *STRICT, "-O1", "-c", "-o", o, s, flags[0], *extra],
                           capture_output=True, text=True, cwd=str(d), timeout=120)
        if r.returncode:
            return r
        objs.append(o)
    return subprocess.run([CC, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", "-o",
                           "app", *objs, *flags], capture_output=True, text=True,
                          cwd=str(d), timeout=120)


def events(out: str) -> list:
    got = [json.loads(x) for x in hypertrace("report", out, "--json", "--domain",
                                             "local").stdout.splitlines()]
    return [(g["name"], g["fields"]) for g in got if not g["name"].startswith("hypertrace_")]


def guard_of(text: str) -> str:
    m = re.search(r"^#ifndef (\S+)\n#define \1\n", text, re.M)
    assert m, text[:300]
    return m.group(1)


# --- 1. two headers in one translation unit, and linked -------------------------------

NET = 'net_rx(int n) "n=%d"\nnet_tx(const char *dev, uint64_t len) "%s %" PRIu64\n'
BLK = 'blk_rd(int n) "n=%d"\nblk_wr(uint64_t sector, bool sync)\n'
MAIN = r'''
#include "net_trace.h"
#include "blk_trace.h"
#include "net_trace.h"      /* again: its guard skips it */
void other(void);
int main(void)
{
    trace_net_rx(1);
    trace_blk_rd(2);
    other();
    return !(trace_net_rx_enabled() && trace_blk_wr_enabled());
}
'''
OTHER = r'''
#include <stdbool.h>
#include "blk_trace.h"
#include "net_trace.h"
void other(void);
void other(void)
{
    trace_blk_wr(7, true);
    trace_net_tx("eth0", 1500);
}
'''


@needs_cc
def test_headers_of_two_trace_events_files_coexist(tmp_path):
    """QEMU's layout: net/trace-events and block/trace-events. Both headers in one
    translation unit (and twice), both in another, linked into one program: every
    event of both is recorded."""
    net = gen(write(tmp_path / "net" / "trace-events", NET), tmp_path / "net_trace.h")
    blk = gen(write(tmp_path / "block" / "trace-events", BLK), tmp_path / "blk_trace.h")
    g1, g2 = guard_of(net), guard_of(blk)
    assert g1 != g2 and IDENT.match(g1) and IDENT.match(g2)
    assert "NET_TRACE_H" in g1
    # the same events give the same guard wherever the file is (a build tree's copy)
    os.makedirs(str(tmp_path / "c"))
    again = gen(write(tmp_path / "copy" / "trace-events", NET), tmp_path / "c" / "net_trace.h")
    assert guard_of(again) == g1
    # standard output: a guard of the input's name, still the events' hash
    assert IDENT.match(guard_of(hypertrace("gen-c", str(tmp_path / "net" / "trace-events")
                                           ).stdout))
    write(tmp_path / "main.c", MAIN)
    write(tmp_path / "other.c", OTHER)
    r = build(tmp_path, ["main.c", "other.c"])
    assert r.returncode == 0, r.stderr
    out = str(tmp_path / "rec")
    record(out, str(tmp_path / "app"))
    assert events(out) == [("net_rx", {"n": 1}), ("blk_rd", {"n": 2}),
                           ("blk_wr", {"sector": 7, "sync": True}),
                           ("net_tx", {"dev": "eth0", "len": 1500})]


@needs_cc
def test_one_event_in_two_headers_fails_to_compile_by_name(tmp_path):
    """An event of one name in two files is the user's error: the compiler says so,
    naming the event, before any redefinition."""
    gen(write(tmp_path / "a" / "trace-events", "dup(int x)\nonly_a(int y)\n"),
        tmp_path / "a_trace.h")
    gen(write(tmp_path / "b" / "trace-events", "dup(int x)\n"), tmp_path / "b_trace.h")
    write(tmp_path / "main.c", '#include "a_trace.h"\n#include "b_trace.h"\n'
          "int main(void) { trace_dup(1); return 0; }\n")
    r = build(tmp_path, ["main.c"])
    assert r.returncode != 0
    first = [x for x in r.stderr.splitlines() if "error" in x][0]
    assert "hypertrace: event dup is declared by two generated headers" in first, r.stderr
    assert "b/trace-events" in first


# --- 2a. foo and foo_enabled ------------------------------------------------------------

@pytest.mark.parametrize("text,line,other", [
    ("foo(int x)\n# comment\nfoo_enabled(int y)\n", 3, 1),
    ("foo_enabled(int y)\n\nbar(int z)\nfoo(int x)\n", 1, 4),
])
def test_event_and_its_enabled_name_refused(tmp_path, text, line, other):
    src = write(tmp_path / "trace-events", text)
    out = tmp_path / "trace.h"
    r = hypertrace("gen-c", src, "-o", str(out), check=False)
    assert r.returncode == 2 and not out.exists() and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("hypertrace: error: %s:%d: event foo_enabled: " % (src, line))
    assert "event foo (line %d)" % other in r.stderr


def test_nul_in_format_refused(tmp_path):
    """A NUL character in a format: the C declaration text would be cut at it."""
    src = write(tmp_path / "trace-events", 'a(int x)\nb(int y) "y\x00"\n')
    r = hypertrace("gen-c", src, check=False)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1
    assert r.stderr.startswith("hypertrace: error: %s:2: event b: its format holds a NUL"
                               % src), r.stderr


# --- 2b. argument names that are macros, keywords, reserved or the header's own ----------

NAMES = [
    "errno", "stdin", "stdout", "stderr", "assert", "NULL", "EOF", "offsetof", "bool",
    "true", "false", "static_assert", "alignof", "alignas", "noreturn", "complex", "I",
    "int", "char", "return", "sizeof", "_Bool", "_Pragma", "__func__", "__LINE__",
    "__FILE__", "__VA_ARGS__", "__x", "_X", "SIZE_MAX", "INT_MAX", "EINVAL", "memcpy",
    "uint64_t", "size_t", "HT_STR_MAX", "HT_FLAG_TRUNCATED", "HT_EVENT_INIT", "ht_enabled",
    "ht__begin", "ht_event", "_ht_a0", "_ht_a1", "_ht_a0_len", "_ht_f", "_ht_q", "_ht_w",
    "_ht_v", "_ht_id", "_ht_size", "_ht_l0", "_ht_s0", "_ht_ev_errno", "trace_errno",
    "trace_errno_enabled", "HT_GEN_EVENT_errno", "size", "id", "f", "q", "w", "v", "a0",
    "l0", "s0", "main", "defined",
]
TYPES = ["int32_t", "uint64_t", "const char *", "bool", "double", "int8_t", "unsigned long",
         "float"]
INCLUDES = ["assert.h", "complex.h", "errno.h", "limits.h", "stdalign.h", "stdbool.h",
            "stddef.h", "stdint.h", "stdio.h", "stdnoreturn.h", "string.h"]


def _value(t: str, k: int):
    """(C literal, value report --json shows) of argument k of type t."""
    if t == "int32_t":
        return "%d" % (-1000 - k), -1000 - k
    if t in ("uint64_t", "unsigned long"):
        return "%dull" % (2 ** 63 + k), 2 ** 63 + k
    if t == "const char *":
        return '"v%d"' % k, "v%d" % k
    if t == "bool":
        return "%d" % (k % 2), bool(k % 2)
    if t in ("double", "float"):
        return "%d.5" % k, k + 0.5
    return "%d" % (k - 64), k - 64


def test_names_are_all_parsed():
    """Every name above is an argument name the parser takes (else the test proves
    nothing about the generator)."""
    for n in NAMES:
        assert abi.make_decl("e", "int " + n).fields[0][0] == n


@needs_cc
def test_any_argument_name_compiles_and_records(tmp_path):
    events_text, calls, want = [], [], []
    per = 8
    for e in range(0, len(NAMES), per):
        name = ["errno", "NULL", "I", "int", "assert", "stdin", "_ht_ev_x", "HT_STR_MAX",
                "e8", "e9"][e // per]
        args, lits, fields = [], [], {}
        for j, n in enumerate(NAMES[e:e + per]):
            k = e + j
            t = TYPES[k % len(TYPES)]
            args.append("%s %s" % (t, n) if not t.endswith("*") else t + n)
            lit, val = _value(t, k)
            lits.append(lit)
            fields[n] = val
        events_text.append("%s(%s)" % (name, ", ".join(args)))
        calls.append("    trace_%s(%s);" % (name, ", ".join(lits)))
        want.append((name, fields))
    # a bytes argument (two C parameters) and a pointer, both named as macros
    events_text.append("raw(bytes stdin, void *NULL, int errno)")
    calls.append('    trace_raw("ab\\001", 3, (void *)0x1234, 5);')
    # a format that is hostile in a comment: `/*`, `*/`, `/*/`, control characters
    events_text.append('odd(int x) "a /* b */ c /*/ d \x01 \x1b\x7f ??/ \\\\"')
    calls.append("    trace_odd(9);")
    src = write(tmp_path / "trace-events", "\n".join(events_text) + "\n")
    header = gen(src, tmp_path / "trace.h")
    assert "/* void trace_raw(const void *stdin, size_t stdin_len, void *NULL, int " \
           "errno) */" in header
    app = "".join("#include <%s>\n" % h for h in INCLUDES) + '#include "trace.h"\n' + \
        "int main(void)\n{\n    errno = 0;\n" + "\n".join(calls) + \
        "\n    return errno;\n}\n"
    write(tmp_path / "app.c", app)
    r = build(tmp_path, ["app.c"])
    assert r.returncode == 0, r.stderr[-3000:]
    out = str(tmp_path / "rec")
    record(out, str(tmp_path / "app"))
    got = events(out)
    assert got[:-2] == want and got[-1] == ("odd", {"x": 9})
    raw = got[-2]
    assert raw == ("raw", {"stdin": "616201", "NULL": 0x1234, "errno": 5})    # bytes: hex


# --- 3. bounded input -------------------------------------------------------------------

def _one_error(r, start: str) -> str:
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout[:200])
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.startswith("hypertrace: error: " + start), r.stderr
    return r.stderr


def test_dev_zero_refused_at_its_first_line(tmp_path):
    t = time.monotonic()
    r = hypertrace("gen-c", "/dev/zero", "-o", str(tmp_path / "t.h"), check=False)
    _one_error(r, "/dev/zero:1: line longer than %d bytes" % abi.MAX_LINE)
    assert time.monotonic() - t < 20
    assert not (tmp_path / "t.h").exists()
    with pytest.raises(ValueError, match=r"^/dev/zero:1: line longer than 65536 bytes"):
        guest.load("/dev/zero")


@pytest.mark.parametrize("lines", [True, False])
def test_endless_fifo_refused(tmp_path, lines):
    """A FIFO whose writer never stops: read until the file is over its limit (lines of
    40 000 bytes), or its first line over-long (no line break after the first)."""
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    sent = [0]

    def writer():
        try:
            with open(fifo, "wb") as f:
                f.write(b"# a comment\n")
                while sent[0] < 1 << 30:
                    f.write(b"x" * 39999 + (b"\n" if lines else b"x"))
                    sent[0] += 40000
        except BrokenPipeError:
            pass

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    r = hypertrace("gen-c", fifo, check=False, timeout=60)
    if lines:
        _one_error(r, "%s: larger than %d bytes" % (fifo, abi.MAX_FILE_SIZE))
    else:
        _one_error(r, "%s:2: line longer than %d bytes" % (fifo, abi.MAX_LINE))
    th.join(30)
    assert not th.is_alive()
    assert sent[0] < (abi.MAX_FILE_SIZE + (1 << 20) if lines else 1 << 20)


def test_file_size_and_line_limits(tmp_path):
    # at the limits: accepted (a line of MAX_LINE bytes, a file of MAX_FILE_SIZE)
    line = "#" * (abi.MAX_LINE - 1) + "\n"            # MAX_LINE bytes and its break
    ok = write(tmp_path / "ok", "e(int x)\r\n" + "#" * abi.MAX_LINE + "\r\n" + "f(int y)\n")
    assert [d.name for d in abi.parse_trace_events(abi.read_file(ok))] == ["e", "f"]
    size = tmp_path / "size"
    with open(str(size), "w") as f:
        n = abi.MAX_FILE_SIZE // len(line)
        f.write(line * n)
        pad = abi.MAX_FILE_SIZE - n * len(line)
        f.write("#" * (pad - 1) + "\n" if pad else "")
    assert os.path.getsize(str(size)) == abi.MAX_FILE_SIZE
    assert abi.load_file(str(size)) == []
    with open(str(size), "a") as f:
        f.write("\n")
    r = hypertrace("gen-c", str(size), check=False)
    _one_error(r, "%s: larger than %d bytes" % (size, abi.MAX_FILE_SIZE))
    with pytest.raises(ValueError, match="larger than"):
        abi.parse_trace_events(open(str(size)).read())

    # one byte over, at line 3, with \r\n, \r and \n breaks; the long line starting or
    # ending anywhere in a chunk: the line named is the parser's
    for pre in ("e(int x)\r\n\n", "#\r\r", "#\n" + "#" * 65000 + "\r"):
        for pad in (0, 1, 100, 65535):
            text = "#" * pad + "\n" + pre + "#" * (abi.MAX_LINE + 1) + "\nf(int y)\n"
            p = write(tmp_path / "long", text)
            with pytest.raises(ValueError) as e:
                abi.read_file(p)
            assert str(e.value) == "%s:4: line longer than %d bytes (the limit of a " \
                                   "trace-events line)" % (p, abi.MAX_LINE), (pre, pad)
            with pytest.raises(ValueError, match=r"^x:4: line longer"):
                abi.parse_trace_events(text, "x")
    r = hypertrace("gen-c", p, check=False)
    _one_error(r, "%s:4: line longer than" % p)
    # bytes, not characters: 2-byte characters
    with pytest.raises(ValueError, match=r"^x:1: line longer"):
        abi.parse_trace_events("# " + "é" * (abi.MAX_LINE // 2), "x")
    p = write(tmp_path / "utf", "# " + "é" * (abi.MAX_LINE // 2) + "\n")
    with pytest.raises(ValueError, match=r":1: line longer"):
        guest.load(p)


def test_event_count_bounded():
    text = "".join("e%d()\n" % i for i in range(abi.MAX_EVENTS + 1))
    with pytest.raises(ValueError, match=r"^x:%d: more than %d events"
                       % (abi.MAX_EVENTS + 1, abi.MAX_EVENTS)):
        abi.parse_trace_events(text, "x")


@pytest.mark.parametrize("line", [
    "a" + " " * 65000 + "a",              # was cubic: minutes
    "a" + " \t" * 32000 + "(",
    "e(int a)" + " " * 65000 + "x",
    ("a " * 10 + " " * 50) * 900 + "(",
    "disable " * 8000 + "e(int a)",
    'e(int a) "' + "x" * 65000 + '"',
    'e(int a) "x" ' + "PRIx64 " * 9000,
    "e(" + "int a, " * 9000 + ")",
])
def test_long_lines_parse_in_linear_time(line):
    assert len(line.encode()) <= abi.MAX_LINE
    t = time.perf_counter()
    try:
        abi.parse_trace_events(line)
    except ValueError:
        pass
    assert time.perf_counter() - t < 1.0
