"""The native C producer (src/hypertrace/native): gen-c tracepoints compiled into real
programs, recorded by the real `hypertrace record`, read back by babeltrace2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import BT_FIELD, BT_LINE, bt_string, build_c, env, record, stats

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc/gcc)")

TRACE_EVENTS = r'''# events of the C test programs
nt_tick(uint64_t n, uint64_t v) "n=%" PRIu64 " v=%" PRIu64
nt_msg(uint64_t n, const char *msg, int32_t d) "n=%" PRIu64 " msg=%s d=%d"
nt_misc(bool b, double x, float y, char c, hwaddr a, void *p, int8_t i8, uint16_t u16, long l)
nt_str(const char *s, unsigned int n)
disable nt_off(int x)
'''

APP = r'''
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "trace.h"

static long n_per;

static void *run(void *arg)
{
    uint64_t t = (uint64_t)(uintptr_t)arg;
    char buf[64];
    for (long i = 0; i < n_per; i++) {
        if (i % 100 == 0) {
            snprintf(buf, sizeof buf, "t%llu-%ld", (unsigned long long)t, i);
            trace_nt_msg(t, buf, (int32_t)i);
        } else {
            trace_nt_tick(t, (uint64_t)i * 3 + t);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int nt = argc > 1 ? atoi(argv[1]) : 4;
    n_per = argc > 2 ? atol(argv[2]) : 1000;
    int forks = argc > 3 ? atoi(argv[3]) : 0;
    pthread_t th[64];
    trace_nt_misc(true, 1.5, 2.25f, 'x', 0x1234, (void *)0xdead, -5, 65535, -1234567890123L);
    trace_nt_off(3);
    /* 600 x "é" (2 bytes): 1200 bytes, cut at 1024 on a character boundary */
    static char big[1300];
    for (int i = 0; i < 600; i++)
        memcpy(big + 2 * i, "\xc3\xa9", 2);
    trace_nt_str(big, 1);
    trace_nt_str(NULL, 2);
    trace_nt_str("", 3);
    printf("enabled %d %d\n", trace_nt_tick_enabled(), trace_nt_off_enabled());
    fflush(stdout);
    for (int k = 0; k < forks; k++) {
        pid_t pid = fork();
        if (pid == 0) {
            run((void *)(uintptr_t)(100 + k));
            if (k % 2)
                _exit(0);
            exit(0);
        }
    }
    for (int t = 0; t < nt; t++)
        pthread_create(&th[t], NULL, run, (void *)(uintptr_t)(t + 1));
    for (int t = 0; t < nt; t++)
        pthread_join(th[t], NULL);
    int st;
    while (wait(&st) > 0) {
    }
    return 0;
}
'''


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    d = tmp_path_factory.mktemp("native")
    build_c(d, TRACE_EVENTS, APP, cc=CC)
    return d


def check_stream(path: str, threads: dict, n_per: int) -> dict:
    """Read the session with babeltrace2 line by line (a million events: never all in
    memory); every nt_tick/nt_msg of producer `n` in `threads` must come in order with
    exact values. Returns {event name: fields} of the other events (their last)."""
    p = subprocess.Popen(["babeltrace2", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    nxt = {t: 0 for t in threads}
    others: dict = {}
    for line in p.stdout:
        m = BT_LINE.match(line.rstrip("\n"))
        assert m, "unexpected babeltrace2 line %r" % line
        name = m.group(1)
        if name not in ("nt_tick", "nt_msg"):
            if not name.startswith("hypertrace_"):
                others.setdefault(name, []).append(
                    {k: bt_string(v) if v.startswith('"') else v
                     for k, v in BT_FIELD.findall(m.group(2))})
            continue
        f = dict(BT_FIELD.findall(m.group(2)))
        t = int(f["n"])
        i = nxt[t]
        if name == "nt_tick":
            assert i % 100 and int(f["v"]) == 3 * i + t, (t, i, line)
        else:
            assert i % 100 == 0 and int(f["d"]) == i and f["msg"] == '"t%d-%d"' % (t, i) \
                and int(f["_msg_length"]) == len("t%d-%d" % (t, i)), (t, i, line)
        nxt[t] = i + 1
    err = p.stderr.read()
    assert p.wait() == 0 and not err.strip(), err
    assert nxt == {t: n_per for t in threads}, nxt
    return others


def run_app(build, out, *args, mode="block", prefix=(), opts=()):
    r = record(out, *prefix, str(build / "app"), *[str(a) for a in args],
               opts=("--mode", mode, *opts))
    return r


def test_threads_block_mode_exact(build, tmp_path):
    """(a) 4 threads x 250 000 events (every 100th with a string), block mode: every
    field exact through babeltrace2, recorded == emitted, nothing lost."""
    out = str(tmp_path / "s")
    r = run_app(build, out, 4, 250000)
    assert "enabled 1 0" in r.stdout
    assert "hypertrace:" not in r.stderr, r.stderr
    others = check_stream(out, {1: 0, 2: 0, 3: 0, 4: 0}, 250000)
    misc = others["nt_misc"][0]
    assert misc == {"b": "1", "x": "1.5", "y": "2.25", "c": "120", "a": "0x1234",
                    "p": "0xDEAD", "i8": "-5", "u16": "65535", "l": "-1234567890123"}, misc
    assert "nt_off" not in others          # declared `disable`: off until enabled
    strs = others["nt_str"]
    assert [s["n"] for s in strs] == ["1", "2", "3"]
    assert strs[0]["s"] == "\u00e9" * 512 and strs[0]["_s_length"] == "1024"
    assert strs[1]["s"] == "(null)" and strs[2]["s"] == ""
    st = stats(out)
    ss = [s for s in st["streams"] if s["domain"] == "local"]
    assert sum(s["recorded"] for s in ss) == 4 * 250000 + 4
    assert sum(s["discarded"] + s["malformed"] + s["torn"] for s in ss) == 0
    assert all(s["emitted"] == s["recorded"] for s in ss)
    assert st["domains"]["local"] == {"lost_without_ring": 0, "lost_in_refused_claims": 0,
                                      "declarations_refused": 0}
    # the truncated flag is in the record: the Python reader sees it
    code = ("import sys; from hypertrace.read.session import Session; "
            "s = Session(sys.argv[1]); "
            "print([e.truncated for e in s.events() if e.name == 'nt_str'])")
    flags = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True,
                           env=env())
    assert flags.returncode == 0, flags.stderr
    assert flags.stdout.strip() == "[True, False, False]", flags.stdout


def test_discard_mode_accounts_for_every_record(build, tmp_path):
    """Discard mode with small rings: what is not recorded is counted discarded."""
    out = str(tmp_path / "s")
    run_app(build, out, 2, 200000, mode="discard", opts=("--buffer-size", "4K"))
    st = stats(out)
    ss = [s for s in st["streams"] if s["domain"] == "local"]
    assert sum(s["recorded"] + s["discarded"] for s in ss) == 2 * 200000 + 4
    assert sum(s["malformed"] + s["torn"] for s in ss) == 0


PY = r'''
import sys
from hypertrace import guest
ev = guest.load(sys.argv[1])
for i in range(3000):
    ev.nt_tick(7, 3 * i + 7)
ev.nt_msg(7, "from python", -1)
'''


def test_mixed_c_and_python_share_events(build, tmp_path):
    """(b) a C program and a Python program of the same trace-events file in one session:
    one declaration per event (the same id), both streams read back exactly."""
    out = str(tmp_path / "s")
    py = tmp_path / "p.py"
    py.write_text(PY)
    sh = "%s %s %s & %s 2 5000; wait" % (sys.executable, py, build / "trace-events",
                                          build / "app")
    r = record(out, "sh", "-c", sh, opts=("--mode", "block"))
    assert "hypertrace:" not in r.stderr, r.stderr
    idx = json.load(open(os.path.join(out, ".hypertrace", "session.json")))
    dom = [d for d in idx["domains"] if d["name"] == "local"][0]
    assert not dom["rejected_declarations"], dom["rejected_declarations"]
    names = [e["name"] for e in dom["events"].values()]
    assert sorted(names) == sorted(set(names)), names
    assert {"nt_tick", "nt_msg"} <= set(names)
    n_py = 3000
    events_py = []
    p = subprocess.run(["babeltrace2", out], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    for line in p.stdout.splitlines():
        m = BT_LINE.match(line)
        f = dict(BT_FIELD.findall(m.group(2)))
        if m.group(1) in ("nt_tick", "nt_msg") and f["n"] == "7":
            events_py.append((m.group(1), f))
    assert len(events_py) == n_py + 1
    assert [int(f["v"]) for _, f in events_py[:-1]] == [3 * i + 7 for i in range(n_py)]
    assert events_py[-1][1]["msg"] == '"from python"'
    st = stats(out)
    ss = [s for s in st["streams"] if s["domain"] == "local"]
    assert sum(s["recorded"] for s in ss) == n_py + 1 + 2 * 5000 + 4
    assert sum(s["discarded"] for s in ss) == 0


def test_fork_children_normal_and_underscore_exit(build, tmp_path):
    """(c) children forked by a C program emit and leave by exit() or _exit(): every one
    of their records is recorded (their own rings, their own locks)."""
    out = str(tmp_path / "s")
    n_fork, n_per = 6, 20000
    run_app(build, out, 1, n_per, n_fork)
    others = check_stream(out, {1: 0, **{100 + k: 0 for k in range(n_fork)}}, n_per)
    assert len(others["nt_misc"]) == 1
    st = stats(out)
    ss = [s for s in st["streams"] if s["domain"] == "local"]
    pids = {s["pid"] for s in ss}
    assert len(pids) == 1 + n_fork
    assert sum(s["recorded"] for s in ss) == (1 + n_fork) * n_per + 4
    assert sum(s["discarded"] + s["torn"] + s["malformed"] for s in ss) == 0
    assert st["domains"]["local"]["lost_without_ring"] == 0


CONFLICT = r'''
from hypertrace import guest
guest.event("nt_tick", "uint32_t n")(1)
'''


def test_refused_declaration_is_warned_and_counted(build, tmp_path):
    """(d) a Python producer declared nt_tick with another signature first: the C
    program warns once, its nt_tick records nothing, the refusal is counted, and its
    other events record."""
    out = str(tmp_path / "s")
    py = tmp_path / "c.py"
    py.write_text(CONFLICT)
    sh = "%s %s && %s 1 500" % (sys.executable, py, build / "app")
    r = record(out, "sh", "-c", sh, opts=("--mode", "block"))
    warnings = [x for x in r.stderr.splitlines() if "nt_tick" in x and "disabled" in x]
    assert len(warnings) == 1, r.stderr
    assert "enabled 0 0" in r.stdout
    st = stats(out)
    assert st["domains"]["local"]["declarations_refused"] == 1
    per = {}
    for s in st["streams"]:
        for k, v in s.get("per_event", {}).items():
            per[k] = per.get(k, 0) + v
    assert per.get("nt_tick") == 1               # the Python one's
    assert per.get("nt_msg") == 5 and per.get("nt_misc") == 1


QEMU = shutil.which("qemu-x86_64") or (os.path.exists("/usr/bin/qemu-x86_64")
                                      and "/usr/bin/qemu-x86_64")


@pytest.mark.skipif(not QEMU, reason="qemu-x86_64 (qemu-user) is not installed")
def test_under_qemu_user(build, tmp_path):
    """(e) the same program under qemu-x86_64 (user mode), recorded the same way:
    4 threads x 250 000 events, block mode, every field exact."""
    out = str(tmp_path / "s")
    n_per = 250000
    r = run_app(build, out, 4, n_per, prefix=(QEMU,))
    assert "hypertrace:" not in r.stderr, r.stderr
    check_stream(out, {1: 0, 2: 0, 3: 0, 4: 0}, n_per)
    st = stats(out)
    ss = [s for s in st["streams"] if s["domain"] == "local"]
    assert sum(s["recorded"] for s in ss) == 4 * n_per + 4
    assert sum(s["discarded"] for s in ss) == 0


def test_no_channel_and_bad_channel(build, tmp_path):
    """Without a channel the program runs untraced and silent; with a bad one, it runs
    and warns once."""
    e = env()
    r = subprocess.run([str(build / "app"), "2", "1000"], capture_output=True, text=True,
                       env=e)
    assert r.returncode == 0 and r.stderr == "" and "enabled 0 0" in r.stdout
    e["HYPERTRACE_CHANNEL"] = "shm:/dev/shm/no-such-hypertrace-channel"
    r = subprocess.run([str(build / "app"), "2", "1000"], capture_output=True, text=True,
                       env=e)
    assert r.returncode == 0 and r.stderr.count("hypertrace:") == 1, r.stderr
    junk = tmp_path / "junk"
    junk.write_bytes(b"x" * 8192)
    e["HYPERTRACE_CHANNEL"] = str(junk)
    r = subprocess.run([str(build / "app"), "1", "10"], capture_output=True, text=True, env=e)
    assert r.returncode == 0 and "bad magic" in r.stderr


def test_gen_c_text_matches_python_declarations(build):
    """The declaration text compiled into the program is the Python library's."""
    from hypertrace import abi
    text = (build / "trace.h").read_text()
    for d in abi.parse_trace_events(TRACE_EVENTS):
        lit = re.search(r"static ht_event _ht_ev_%s = HT_EVENT_INIT\((\".*?\"), \"" % d.name,
                        text).group(1)
        got = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), lit[1:-1])
        got = got.replace('\\"', '"').replace("\\\\", "\\")
        assert got == d.slot_text


def test_no_free_ring_counts_lost(build, tmp_path):
    """More threads than rings: a thread without a ring counts its records in the
    shared loss counters; everything emitted is accounted for."""
    out = str(tmp_path / "s")
    run_app(build, out, 4, 20000, mode="discard", opts=("--rings", "2"))
    st = stats(out)
    ss = [s for s in st["streams"] if s["domain"] == "local"]
    lost = st["domains"]["local"]["lost_without_ring"]
    assert lost > 0
    assert sum(s["recorded"] + s["discarded"] for s in ss) + lost == 4 * 20000 + 4
