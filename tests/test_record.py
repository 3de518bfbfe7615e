"""End to end: `hypertrace record` around real producer processes, read back by babeltrace2."""

from __future__ import annotations

import os
import sys

import pytest
from conftest import ROOT, babeltrace, hypertrace, local, record, stats, totals

from hypertrace.read.events import INTERNAL

WORKLOAD = os.path.join(ROOT, "tests", "apps", "workload.py")


def check_job_fields(f: dict) -> None:
    p, t, i = int(f["proc"]), int(f["thread"]), int(f["i"])
    assert int(f["neg"]) == -i
    assert float(f["half"]) == i / 2
    assert int(f["odd"]) == i % 2
    assert f["tag"] == "p%d-t%d-%d" % (p, t, i)


def per_thread(st: dict) -> dict:
    out = {}
    for s in local(st):
        out.setdefault(s["thread"], []).append(s)
    return out


def test_processes_and_threads_babeltrace_reads_every_event(session):
    P, T, N = 3, 2, 2000
    r = record(session, sys.executable, WORKLOAD, str(P), str(T), str(N))
    assert "local: %d events recorded, 0 lost" % (P * T * N) in r.stderr
    assert "events recorded" not in r.stdout        # the program's stdout is its own
    events, _ = babeltrace(session)
    assert len(events) == P * T * N
    seen = set()
    for name, f in events:
        assert name == "job"
        check_job_fields(f)
        seen.add((int(f["proc"]), int(f["thread"]), int(f["i"])))
    assert len(seen) == P * T * N          # every event exactly once
    st = stats(session)
    assert totals(st)["recorded"] == P * T * N
    assert st["events"]["job"]["count"] == P * T * N
    assert st["clocks"]["local"]["causality_violations"] == 0
    threads = per_thread(st)
    assert sorted(threads) == sorted("w%d.%d" % (p, t) for p in range(P) for t in range(T))
    # each producing thread is its own stream, with its own pid/tid
    assert len({(s["pid"], s["tid"]) for s in local(st)}) == P * T


@pytest.mark.parametrize("mode", ["discard", "block"])
def test_million_events_four_processes_two_threads(session, mode):
    """The acceptance run: 4 processes x 2 threads, 1 M events in total."""
    P, T, N = 4, 2, 125_000
    record(session, sys.executable, WORKLOAD, str(P), str(T), str(N), opts=("--mode", mode))
    st = stats(session)
    events, bt_discarded = babeltrace(session, allow_discarded=True)
    assert len(events) == totals(st)["recorded"]
    for s in local(st):
        # exact reconciliation per producer: emitted = recorded + discarded
        assert s["recorded"] + s["discarded"] == N, s
        assert s["emitted"] == N
        assert s["malformed"] == 0 and s["torn"] == 0
        assert bt_discarded.get(os.path.join(session, s["file"]), 0) == s["discarded"]
    assert totals(st)["recorded"] + totals(st)["discarded"] == P * T * N
    if mode == "block":
        assert totals(st)["recorded"] == P * T * N      # every one of them
    seen = set()
    for _name, f in events:
        check_job_fields(f)
        seen.add((int(f["proc"]), int(f["thread"]), int(f["i"])))
    assert len(seen) == len(events)
    print("1M run (%s): recorded %d, discarded %d" % (mode, totals(st)["recorded"],
                                                 totals(st)["discarded"]))


def test_discard_under_pressure_reconciles_exactly(session):
    P, T, N = 2, 2, 20_000
    record(session, sys.executable, WORKLOAD, str(P), str(T), str(N),
           opts=("--buffer-size", "4K"))
    st = stats(session)
    assert totals(st)["discarded"] > 0, "a 4 KiB ring should overflow"
    events, bt_discarded = babeltrace(session, allow_discarded=True)
    assert len(events) == totals(st)["recorded"]
    for s in local(st):
        assert s["recorded"] + s["discarded"] == N
        assert bt_discarded.get(os.path.join(session, s["file"]), 0) == s["discarded"]
    for _name, f in events:
        check_job_fields(f)


def test_block_mode_loses_nothing_with_a_tiny_ring(session):
    P, T, N = 2, 2, 10_000
    record(session, sys.executable, WORKLOAD, str(P), str(T), str(N),
           opts=("--buffer-size", "4K", "--mode", "block", "--block-timeout", "5000"))
    st = stats(session)
    assert totals(st)["discarded"] == 0
    assert totals(st)["recorded"] == P * T * N
    events, _ = babeltrace(session)
    assert len(events) == P * T * N


def test_report_is_time_ordered_and_json(session):
    record(session, sys.executable, WORKLOAD, "2", "2", "300")
    import json
    lines = hypertrace("report", session, "--json", "--domain", "local").stdout.splitlines()
    evs = [json.loads(x) for x in lines]
    assert len(evs) == 1200
    assert all("raw_ts" in e and e["ts_uncertainty_ns"] >= 0 for e in evs)
    assert [e["ts"] for e in evs] == sorted(e["ts"] for e in evs)
    e = evs[0]
    assert set(e) >= {"ts", "domain", "stream", "name", "fields"}
    assert e["domain"] == "local" and e["name"] == "job"
    assert set(e["fields"]) == {"proc", "thread", "i", "neg", "half", "odd", "tag"}
    text = hypertrace("report", session, "--domain", "local").stdout.splitlines()
    assert len(text) == 1200
    # the host's clock samples are hypertrace's own: hidden unless --all, and counted
    r = hypertrace("report", session)
    shown = r.stdout.splitlines()
    assert not any(" hypertrace_clock_sample " in x for x in shown)
    alltext = hypertrace("report", session, "--all").stdout.splitlines()
    internal = [x for x in alltext if x.split()[2] in INTERNAL]
    assert internal and any(" hypertrace_clock_sample " in x for x in alltext)
    assert len(alltext) == len(shown) + len(internal) > 1200
    assert r.stderr.splitlines()[-1] == \
        "hypertrace: %d internal events hidden (--all shows them)" % len(internal)
    js = hypertrace("report", session, "--json")
    assert len(js.stdout.splitlines()) == len(shown) and js.stderr == r.stderr
    first = text[0].split()
    assert int(first[0]) == evs[0]["ts"] and first[2] == "job"
    assert 'tag="p' in text[0]
    # the host timeline is absolute: within a day of now
    import time
    assert abs(evs[0]["ts"] / 1e9 - time.time()) < 86400


def test_stats_text_and_json(session):
    record(session, sys.executable, WORKLOAD, "1", "2", "500")
    st = stats(session)
    assert st["events"]["job"]["count"] == 1000
    assert st["events"]["job"]["rate_per_s"] > 0
    assert {"recorded", "discarded", "malformed", "torn"} <= set(st["totals"])
    text = hypertrace("stats", session).stdout
    assert "job" in text and "1000" in text and "discarded" in text


def test_exit_right_after_last_emit_loses_nothing(session, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(
        "import os\nfrom hypertrace import guest\n"
        "tp = guest.event('last', 'uint64_t i')\n"
        "for i in range(5000):\n    tp(i)\n"
        "os._exit(0)  # no atexit, no ring release: only what was committed\n")
    record(session, sys.executable, str(app))
    st = stats(session)
    assert totals(st)["recorded"] == 5000 and totals(st)["discarded"] == 0
    events, _ = babeltrace(session)
    assert [int(f["i"]) for _, f in events] == list(range(5000))


def test_trace_events_file_and_all_types(session, tmp_path):
    te = tmp_path / "trace-events"
    te.write_text(
        "# a QEMU-style trace-events file\n\n"
        "ints(int8_t a, uint8_t b, int16_t c, uint16_t d, int32_t e, uint32_t f, int64_t g, "
        "uint64_t h) \"a=%d\"\n"
        "misc(bool yes, double d, float f, void *ptr, const char *s, bytes blob) \"s=%s\"\n"
        "disable quiet(int x)\n"
        "nothing(void)\n")
    app = tmp_path / "app.py"
    app.write_text(
        "import sys\nfrom hypertrace import guest\n"
        "ev = guest.load(sys.argv[1])\n"
        "assert ev.quiet.enabled is False and ev.ints.enabled is True\n"
        "ev.ints(-128, 255, -32768, 65535, -2**31, 2**32-1, -2**63, 2**64-1)\n"
        "ev.misc(True, 2.5, 0.25, 0xdeadbeef, 'h\u00e9llo \u2603', b'\\x00\\x01\\xff')\n"
        "ev.quiet(1)\n"
        "ev.nothing()\n"
        "ev.misc(False, -1.0, 1.0, 0, 'x' * 5000, b'y' * 3000)\n")
    record(session, sys.executable, str(app), str(te))
    events, _ = babeltrace(session)
    names = [n for n, _ in events]
    assert names == ["ints", "misc", "nothing", "misc"]      # quiet was disabled
    ints = events[0][1]
    assert [int(ints[k]) for k in "abcdefgh"] == [-128, 255, -32768, 65535, -2**31, 2**32 - 1,
                                                  -2**63, 2**64 - 1]
    misc = events[1][1]
    assert int(misc["yes"]) == 1 and float(misc["d"]) == 2.5 and float(misc["f"]) == 0.25
    assert misc["ptr"].lower() == "0xdeadbeef"
    assert misc["s"] == "h\u00e9llo \u2603"
    import json
    rep = [json.loads(x) for x in hypertrace("report", session, "--json", "--domain",
                                             "local").stdout.splitlines()]
    assert rep[1]["fields"]["blob"] == "0001ff"
    assert rep[1]["fields"]["s"] == "h\u00e9llo \u2603"
    big = rep[3]
    assert big["truncated"] is True
    assert big["fields"]["s"] == "x" * 1024 and big["fields"]["blob"] == "79" * 1024


def test_channel_files_and_control_socket_are_private(session, tmp_path):
    app = tmp_path / "app.py"
    app.write_text(
        "import os, stat\n"
        "spec = os.environ['HYPERTRACE_CHANNEL']\n"
        "region, ctl = spec[4:].split(',control=unix:')\n"
        "host = os.environ['HYPERTRACE_HOST_CHANNEL'][4:]\n"
        "for p in (region, ctl, host):\n"
        "    st = os.stat(p)\n"
        "    assert stat.S_IMODE(st.st_mode) == 0o600, (p, oct(st.st_mode))\n"
        "    assert st.st_uid == os.getuid()\n"
        "print('PRIVATE', region, ctl, host)\n")
    r = record(session, sys.executable, str(app))
    assert "PRIVATE /dev/shm/hypertrace-" in r.stdout
    paths = r.stdout.split("PRIVATE ")[1].split()[:3]
    for p in paths:
        assert not os.path.exists(p), "%s is removed when the recording ends" % p


def test_record_refuses_an_existing_trace_and_bad_commands(session):
    record(session, sys.executable, "-c", "pass")
    r = hypertrace("record", "-o", session, "--", sys.executable, "-c", "pass", check=False)
    assert r.returncode == 2 and "already holds a trace" in r.stderr
    r = hypertrace("record", "-o", session + "2", "--", "/nonexistent/cmd", check=False)
    assert r.returncode == 2 and "cannot run /nonexistent/cmd" in r.stderr
    assert "Traceback" not in r.stderr
    r = hypertrace("record", "-o", session + "3", "--buffer-size", "3000", "--", "true",
                   check=False)
    assert r.returncode == 2 and "power of two" in r.stderr


def test_command_exit_code_is_passed_through(session):
    r = record(session, sys.executable, "-c", "raise SystemExit(7)", check=False)
    assert r.returncode == 7


QEMU_USER_APP = r"""
import sys, threading
from hypertrace import guest
tp = guest.event("user_mode", "uint32_t thread, uint64_t i, const char *who")

def run(t):
    for i in range(3000):
        tp(t, i, "qemu-user t%d" % t)

ts = [threading.Thread(target=run, args=(t,), name="emu%d" % t) for t in range(2)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print("CONNECTED", guest.connected())
"""


def test_qemu_user_mode_process_emits_into_the_channel(session, tmp_path):
    import shutil
    qemu = shutil.which("qemu-x86_64")
    assert qemu, "qemu-x86_64 is not installed: run ./test.sh (apt-get install qemu-user)"
    app = tmp_path / "app.py"
    app.write_text(QEMU_USER_APP)
    gp = hypertrace("guest-path").stdout.strip()
    # the emulated /usr/bin/python3 gets only the stdlib-only guest library
    r = record(session, qemu, "-E", "PYTHONPATH=" + gp, "/usr/bin/python3", str(app))
    assert "CONNECTED True" in r.stdout
    st = stats(session)
    assert sorted(s["thread"] for s in local(st)) == ["emu0", "emu1"]
    assert totals(st)["recorded"] == 6000 and totals(st)["discarded"] == 0
    events, _ = babeltrace(session)
    for t in (0, 1):
        mine = [f for _, f in events if int(f["thread"]) == t]
        assert [int(f["i"]) for f in mine] == list(range(3000))
        assert {f["who"] for f in mine} == {"qemu-user t%d" % t}
