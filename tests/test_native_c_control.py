"""The control side of the native C producer: HELLO, sync points (ht_sync_point), the
clock thread's exchanges (mailbox or socket), BYE with the counts still pending; a C
program built with gen-c, recorded by the real `hypertrace record`, read back by
babeltrace2 and `stats --json`."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from conftest import babeltrace, build_c, env, record, stats

from hypertrace.read.session import Session

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc/gcc)")

TRACE_EVENTS = "ct_tick(uint64_t n)\n"

APP = r'''
#define _DEFAULT_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include "trace.h"

static long n_per;

static int64_t mark(const char *name, int i)
{
    char a[64];
    snprintf(a, sizeof a, "[%d, \"c %d\"]", i, i);
    int64_t r = ht_sync_point(name, a);
    printf("rtt %s %d %" PRId64 "\n", name, i, r);
    fflush(stdout);
    return r;
}

static void *run(void *arg)
{
    for (long i = 0; i < n_per; i++)
        trace_ct_tick((uint64_t)(uintptr_t)arg * 1000000 + (uint64_t)i);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "sync";
    int n = argc > 2 ? atoi(argv[2]) : 5;
    if (!strcmp(mode, "sync")) {
        for (int i = 0; i < n; i++) {
            trace_ct_tick((uint64_t)i);
            mark("cmark", i);
            usleep(20000);
        }
    } else if (!strcmp(mode, "fork")) {
        trace_ct_tick(1);
        mark("cparent", 0);
        pid_t pid = fork();
        if (pid == 0) {
            trace_ct_tick(2);
            mark("cchild", 1);
            usleep(300000);          /* the child's own clock thread runs meanwhile */
            mark("cchild", 2);
            exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        mark("cafter", 3);
    } else if (!strcmp(mode, "threads")) {
        /* more threads than rings: the ringless ones' records are counted as lost */
        n_per = n;
        trace_ct_tick(0);
        pthread_t th[2];
        for (int t = 0; t < 2; t++)
            pthread_create(&th[t], NULL, run, (void *)(uintptr_t)(t + 1));
        for (int t = 0; t < 2; t++)
            pthread_join(th[t], NULL);
    }
    return 0;
}
'''


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return build_c(tmp_path_factory.mktemp("native_ctl"), TRACE_EVENTS, APP, cc=CC,
                   cflags=("-pthread",))


def rtts(stdout: str) -> dict:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("rtt "):
            _, name, i, r = line.split()
            out[(name, int(i))] = int(r)
    return out


def sync_events(out: str):
    events, _ = babeltrace(out, internal=True)
    guest = [f for n, f in events if n == "hypertrace_sync"]
    host = [f for n, f in events if n == "hypertrace_sync_host"]
    return events, guest, host


def matched(guest: list, host: list) -> None:
    """Every guest-side sync record has its host-side one: same name, id and send time."""
    g = sorted((f["name"], int(f["sync_id"]), int(f["t_send"]), f["args"]) for f in guest)
    h = sorted((f["name"], int(f["sync_id"]), int(f["guest_send"]), f["args"]) for f in host)
    assert g == h, (g, h)


def estimated(st: dict, at_least: int = 1) -> dict:
    c = st["clocks"]["local"]
    assert c["kind"] == "estimated", c
    assert c["samples"] >= at_least and c["causality_violations"] == 0, c
    return c


def test_c_sync_points_on_both_sides_and_clock_estimated(app, tmp_path):
    out = str(tmp_path / "s")
    r = record(out, app, "sync", "5")
    assert "hypertrace:" not in r.stderr, r.stderr
    rt = rtts(r.stdout)
    assert len(rt) == 5 and all(v > 0 for v in rt.values()), r.stdout
    events, guest, host = sync_events(out)
    assert [int(f["sync_id"]) for f in guest] == [1, 2, 3, 4, 5]
    assert all(f["name"] == "cmark" for f in guest + host)
    assert json.loads(guest[3]["args"]) == [3, "c 3"]
    assert all(f["domain"] == "local" for f in host)
    matched(guest, host)
    assert sorted(int(f["n"]) for n, f in events if n == "ct_tick") == [0, 1, 2, 3, 4]
    st = stats(out)
    c = estimated(st, 5)
    idx = Session(out).clocks["local"]
    # the clock thread's exchanges go through the mailbox the host serves; nothing rejected
    assert idx["mailbox_samples"] > 0 and idx["rejected_samples"] == 0, idx
    assert idx["control_connections"] == 1 and idx["control_errors"] == [], idx
    assert st["sync_points"]["local"]["count"] == 5
    assert st["sync_points"]["local"]["latency_ns"]["min"] >= -c["uncertainty_ns"]


def test_c_clock_exchanges_over_the_socket(app, tmp_path):
    """HYPERTRACE_CLOCK=socket: CLOCK/CLOCK_OK + SAMPLE on the connection, no mailbox."""
    out = str(tmp_path / "s")
    e = env(HYPERTRACE_CLOCK="socket")
    r = record(out, app, "sync", "3", opts=("--sync-interval", "0.02"), env=e)
    assert "hypertrace:" not in r.stderr, r.stderr
    estimated(stats(out), 6)
    idx = Session(out).clocks["local"]
    assert idx["mailbox_samples"] == 0 and idx["rejected_samples"] == 0, idx
    _, guest, host = sync_events(out)
    assert len(guest) == 3
    matched(guest, host)


def test_c_bogus_control_path_still_records_and_warns_once(app, tmp_path):
    out = str(tmp_path / "s")
    sh = 'HYPERTRACE_CHANNEL="${HYPERTRACE_CHANNEL%%,*},control=unix:/nonexistent/ht.sock" ' \
         'exec "$0" sync 3'
    r = record(out, "sh", "-c", sh, app)
    warnings = [x for x in r.stderr.splitlines() if x.startswith("hypertrace:")
                and "control channel unavailable" in x]
    assert len(warnings) == 1, r.stderr
    assert "/nonexistent/ht.sock" in warnings[0]
    rt = rtts(r.stdout)
    assert len(rt) == 3 and all(v < 0 for v in rt.values()), r.stdout
    events, guest, host = sync_events(out)
    assert sorted(int(f["n"]) for n, f in events if n == "ct_tick") == [0, 1, 2]
    assert guest == [] and host == []


def test_c_unsupported_control_address_warns_once(app, tmp_path):
    out = str(tmp_path / "s")
    sh = 'HYPERTRACE_CHANNEL="${HYPERTRACE_CHANNEL%%,*},control=vsock:2:5000" exec "$0" sync 2'
    r = record(out, "sh", "-c", sh, app)
    assert r.stderr.count("control channel unavailable") == 1 and "vsock" in r.stderr, r.stderr
    events, _ = babeltrace(out)
    assert len([1 for n, _ in events if n == "ct_tick"]) == 2


PY_SYNC = r"""
import time
from hypertrace import guest
tick = guest.event("ct_tick", "uint64_t n")
for i in range(4):
    tick(100 + i)
    assert guest.sync_point("pymark", i) > 0
    time.sleep(0.02)
"""


def test_mixed_c_and_python_sync_points(app, tmp_path):
    out = str(tmp_path / "s")
    py = tmp_path / "p.py"
    py.write_text(PY_SYNC)
    sh = '"$1" "$2" & "$0" sync 4; wait $!'
    r = record(out, "sh", "-c", sh, app, sys.executable, str(py))
    assert "hypertrace:" not in r.stderr, r.stderr
    assert len(rtts(r.stdout)) == 4 and all(v > 0 for v in rtts(r.stdout).values())
    events, guest, host = sync_events(out)
    assert sorted(f["name"] for f in guest) == ["cmark"] * 4 + ["pymark"] * 4
    matched(guest, host)
    assert json.loads([f for f in guest if f["name"] == "pymark"][2]["args"]) == [2]
    ticks = sorted(int(f["n"]) for n, f in events if n == "ct_tick")
    assert ticks == [0, 1, 2, 3, 100, 101, 102, 103]
    st = stats(out)
    estimated(st, 8)
    assert st["sync_points"]["local"]["count"] == 8


def test_c_fork_child_has_its_own_connection(app, tmp_path):
    out = str(tmp_path / "s")
    r = record(out, app, "fork")
    assert "hypertrace:" not in r.stderr, r.stderr
    rt = rtts(r.stdout)
    assert len(rt) == 4 and all(v > 0 for v in rt.values()), r.stdout
    _, guest, host = sync_events(out)
    matched(guest, host)
    ids = {f["name"]: int(f["sync_id"]) for f in guest}
    assert ids["cparent"] == 1 and ids["cafter"] == 2
    # a child's sync ids are its own: (pid << 32) + k
    assert sorted(int(f["sync_id"]) & 0xFFFFFFFF for f in guest if f["name"] == "cchild") \
        == [1, 2]
    assert all(int(f["sync_id"]) >> 32 > 0 for f in guest if f["name"] == "cchild")
    st = stats(out)
    estimated(st, 10)
    assert Session(out).clocks["local"]["control_connections"] == 2


HOLDER = r"""
import fcntl, os, subprocess, sys
path = os.environ["HYPERTRACE_CHANNEL"].split(",")[0][4:]
fd = os.open(path, os.O_RDWR)
for c in range(16):          # every counter slot held (ABI §11): nothing can be added
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 3072 + 64 * c)
sys.exit(subprocess.call(sys.argv[1:]))
"""


def test_c_bye_carries_counts_no_counter_slot_took(app, tmp_path):
    """Every counter slot is held by another process for the whole run: the ringless
    thread's lost records reach the host in the BYE."""
    out = str(tmp_path / "s")
    holder = tmp_path / "holder.py"
    holder.write_text(HOLDER)
    n = 3000
    record(out, sys.executable, str(holder), app, "threads", str(n),
           opts=("--rings", "1", "--mode", "discard"))
    st = stats(out)
    ss = [s for s in st["streams"] if s["domain"] == "local"]
    lost = st["domains"]["local"]["lost_without_ring"]
    assert lost > 0
    assert sum(s["recorded"] + s["discarded"] for s in ss) + lost == 2 * n + 1
