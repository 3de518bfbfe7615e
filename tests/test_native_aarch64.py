"""The native C producer cross-built for aarch64 (Debian's gcc-aarch64-linux-gnu, a
static binary) and run under qemu-aarch64 (user mode) inside the host's
`hypertrace record`: the aarch64 build of hypertrace.c and of the generated fast
path (ldar/stlr, dmb) speaks the channel ABI with the x86-64 collector.

Caveat: qemu-user translates aarch64 code into host code that keeps the host's (x86)
memory order, so these tests prove the build and the ABI on an aarch64 userland, not
that the barriers are sufficient on a weakly ordered CPU (that needs real arm64
hardware; docs/abi.md §5-§6 say which orderings the code must and does ask for)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest
from conftest import BT_DISCARDED, BT_FIELD, BT_LINE, build_c, local, record, stats

CROSS_CC = shutil.which("aarch64-linux-gnu-gcc")
QEMU = shutil.which("qemu-aarch64")
pytestmark = pytest.mark.skipif(
    CROSS_CC is None or QEMU is None,
    reason="needs aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross) "
    "and qemu-aarch64 (qemu-user)")

TRACE_EVENTS = r'''# events of the aarch64 test program
a64_tick(uint64_t n, uint64_t i, uint64_t v) "n=%" PRIu64 " i=%" PRIu64 " v=0x%" PRIx64
a64_msg(uint64_t n, uint64_t i, const char *msg, int32_t d)
disable a64_off(uint64_t n, uint64_t i)
disable a64_off_str(const char *s)
'''

APP = r'''
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "trace.h"

static long n_per, burst, pause_us;

static void *run(void *arg)
{
    uint64_t t = (uint64_t)(uintptr_t)arg;
    char buf[96];
    for (long i = 0; i < n_per; i++) {
        if (burst && i % burst == 0 && i) { /* let the collector drain: the ring wraps */
            struct timespec ts = { 0, pause_us * 1000 };
            nanosleep(&ts, NULL);
        }
        if (i % 5 == 0) {               /* disabled: no record, no seq */
            trace_a64_off(t, (uint64_t)i);
            trace_a64_off_str("never");
        }
        if (i % 7 == 0) {               /* strings of 8..60 bytes: records of varied sizes */
            int k = snprintf(buf, sizeof buf, "t%llu-%ld-", (unsigned long long)t, i);
            int pad = (int)(i % 41);
            memset(buf + k, 'a' + (int)(i % 26), (size_t)pad);
            buf[k + pad] = 0;
            trace_a64_msg(t, (uint64_t)i, buf, -(int32_t)i);
        } else {                        /* all 64 bits in use */
            trace_a64_tick(t, (uint64_t)i, (uint64_t)i * 0x9E3779B97F4A7C15ull + t);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int nt = argc > 1 ? atoi(argv[1]) : 4;
    n_per = argc > 2 ? atol(argv[2]) : 1000;
    burst = argc > 3 ? atol(argv[3]) : 0;
    pause_us = argc > 4 ? atol(argv[4]) : 0;
    pthread_t th[64];
    printf("enabled %d %d\n", trace_a64_tick_enabled(), trace_a64_off_enabled());
    fflush(stdout);
    for (int t = 0; t < nt; t++)
        pthread_create(&th[t], NULL, run, (void *)(uintptr_t)(t + 1));
    for (int t = 0; t < nt; t++)
        pthread_join(th[t], NULL);
    return 0;
}
'''

N_THREADS, N_PER = 4, 50000
M64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    d = tmp_path_factory.mktemp("aarch64")
    build_c(d, TRACE_EVENTS, APP, cc=CROSS_CC, cflags=("-static",))
    head = (d / "app").read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64
    return d


def check_events(path: str, gaps: bool) -> tuple:
    """babeltrace2, line by line: every a64_tick/a64_msg field exact, each thread's `i`
    in order (consecutive unless `gaps`). Returns ({thread: records}, {stream file:
    discarded as babeltrace2 reports it}, {thread: (first i, last i)}); any other
    babeltrace2 warning fails."""
    errf = tempfile.TemporaryFile("w+")      # a pipe could fill up while stdout is read
    p = subprocess.Popen(["babeltrace2", path], stdout=subprocess.PIPE, stderr=errf, text=True)
    last = {t: -1 for t in range(1, N_THREADS + 1)}
    first = dict(last)
    got = {t: 0 for t in last}
    for line in p.stdout:
        m = BT_LINE.match(line.rstrip("\n"))
        assert m, "unexpected babeltrace2 line %r" % line
        name = m.group(1)
        if name.startswith("hypertrace_"):
            continue
        f = dict(BT_FIELD.findall(m.group(2)))
        t, i = int(f["n"]), int(f["i"])
        assert i > last[t] if gaps else i == last[t] + 1, (t, last[t], line)
        if name == "a64_tick":
            assert i % 7 and int(f["v"]) == (i * 0x9E3779B97F4A7C15 + t) & M64, line
        else:
            assert name == "a64_msg" and i % 7 == 0, line
            s = "t%d-%d-" % (t, i) + chr(ord("a") + i % 26) * (i % 41)
            assert f["msg"] == '"%s"' % s and int(f["_msg_length"]) == len(s), line
            assert int(f["d"]) == -i, line
        if first[t] < 0:
            first[t] = i
        last[t] = i
        got[t] += 1
    rc = p.wait()
    errf.seek(0)
    err = errf.read()
    assert rc == 0, err
    bt_discarded: dict = {}
    for x in err.splitlines():
        mm = BT_DISCARDED.search(x)
        if mm and gaps:
            f = os.path.basename(mm.group(2))
            bt_discarded[f] = bt_discarded.get(f, 0) + int(mm.group(1))
        elif x.strip():
            raise AssertionError("babeltrace2 said: %s" % x)
    return got, bt_discarded, {t: (first[t], last[t]) for t in last}


def run(build, out, mode, *burst, n_per=N_PER, buffer="4096"):
    r = record(out, QEMU, str(build / "app"), str(N_THREADS), str(n_per), *map(str, burst),
               opts=("--mode", mode, "--buffer-size", buffer))
    assert "enabled 1 0" in r.stdout, r.stdout
    assert "hypertrace:" not in r.stderr, r.stderr
    ss = local(stats(out))
    assert len(ss) == N_THREADS, ss          # one ring (stream) per thread
    for s in ss:                             # recorded + discarded = emitted, per thread
        assert s["emitted"] == n_per and s["recorded"] + s["discarded"] == n_per, s
        assert s["malformed"] == 0 and s["torn"] == 0, s
    return ss


def test_aarch64_block_mode_small_rings_exact(build, tmp_path):
    """4 threads x 50 000 events into 4 KiB rings (each ring wraps ~350 times, with
    padding records), block mode: the producer waits for room, nothing is dropped,
    every field is exact."""
    out = str(tmp_path / "s")
    ss = run(build, out, "block")
    assert all(s["discarded"] == 0 for s in ss), ss
    got, _, _ = check_events(out, gaps=False)
    assert got == {t: N_PER for t in got}, got


def test_aarch64_block_mode_4x250000_exact(build, tmp_path):
    """The issue's workload under qemu-aarch64: 4 threads x 250 000 events in block
    mode with the default rings, every field exact, nothing dropped."""
    out = str(tmp_path / "s")
    ss = run(build, out, "block", n_per=250000, buffer="512K")
    assert all(s["discarded"] == 0 for s in ss), ss
    got, _, _ = check_events(out, gaps=False)
    assert got == {t: 250000 for t in got}, got


def test_aarch64_discard_mode_small_rings_accounted(build, tmp_path):
    """The same into 4 KiB rings in discard mode, in bursts of 400 events 2 ms apart
    (a ring holds ~95: each burst fills it, the collector drains it between bursts):
    full rings drop records, the rings wrap, what is recorded is exact and in order,
    what is not is counted, per thread, and babeltrace2 reports the same drops."""
    out = str(tmp_path / "s")
    ss = run(build, out, "discard", 400, 2000)
    got, bt_discarded, _ = check_events(out, gaps=True)
    assert sorted(got.values()) == sorted(s["recorded"] for s in ss), (got, ss)
    for s in ss:
        assert s["discarded"] > 0, s          # the ring-full path ran...
        assert s["recorded"] > 4096 // 40, s  # ...and the ring wrapped
        assert bt_discarded.get(os.path.basename(s["file"]), 0) == s["discarded"], (
            bt_discarded, s)


def test_aarch64_overwrite_mode_keeps_the_newest(build, tmp_path):
    """Overwrite mode (flight recorder) into 4 KiB rings: the producer advances `first`
    (then a release fence: hypertrace.c overwrite()) over its oldest records ~500
    times; at the end each ring holds its thread's newest records, consecutive and
    exact up to the last one."""
    out = str(tmp_path / "s")
    ss = run(build, out, "overwrite")
    got, bt_discarded, span = check_events(out, gaps=True)
    for t, (lo, hi) in span.items():
        assert hi == N_PER - 1 and got[t] == hi - lo + 1 and got[t] > 4096 // 100, (t, span)
    assert sorted(got.values()) == sorted(s["recorded"] for s in ss), (got, ss)
    for s in ss:
        assert bt_discarded.get(os.path.basename(s["file"]), 0) == s["discarded"], (
            bt_discarded, s)
