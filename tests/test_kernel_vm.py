"""One picture (issue 15): a booted TCG guest traces its kernel (the agent, through the
ivshmem BAR) beside a traced Python program while trace-cmd records the same events
in the guest; the host records its own kernel events and a host program. One session
holds all four sources: guest kernel = trace-cmd's decoding, event for event and
nanosecond for nanosecond; each source's clock agrees with the events around it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings

import pytest
from conftest import ROOT, babeltrace, env, hypertrace, stats, tracefs

sys.path.insert(0, os.path.join(ROOT, "tests", "apps"))
import vmboot  # noqa: E402

pytestmark = pytest.mark.skipif(not tracefs() or not os.path.exists("/usr/bin/trace-cmd"),
                                reason="needs root, tracefs and trace-cmd")

NAPS = 60
NAME = "htk%d" % os.getpid()     # the guest's domain

HOST_APP = r"""
import os, subprocess, sys, threading
from hypertrace import guest
tick = guest.event("host_tick", "uint32_t i, uint32_t child")
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
i = 0
while not stop.wait(0.2):
    p = subprocess.Popen(["/bin/true"])
    tick(i, p.pid)            # the host kernel's exec and exit of that pid are recorded
    p.wait()
    i += 1
print("HOST TICKS", i, flush=True)
"""

TC_LINE = re.compile(r"^HT-TC\s+(.+?)-(\d+)\s+\[(\d+)\]\s+(?:\S+\s+)?(\d+)\.(\d{9}): "
                     r"sched_switch:\s+(.*)$")
SWITCH = re.compile(r"^(.+):(\d+) \[-?\d+\] \S+ ==> (.+):(\d+) \[-?\d+\]\s*$")
_BT = re.compile(r"^\[(\d+)\] \(\+\d+\) (\S+) (\w+): \{ (.*) \}$")
_KV = re.compile(r'(\w+) = ("(?:[^"\\]|\\.)*"|[-\w.]+)')


def _bt_cycles(out: str) -> list:
    """(raw ns of the event's own domain clock, name, fields) from babeltrace2
    --clock-cycles, in its order (mapped time)."""
    r = subprocess.run(["babeltrace2", "--clock-cycles", out], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = []
    for line in r.stdout.splitlines():
        m = _BT.match(line)
        if m:
            res.append((int(m.group(1)), m.group(3), dict(_KV.findall(m.group(4)))))
    return res


def _record_with_guest(tmp_path):
    """One recording: the collector (with host kernel events), the host program, the
    booted guest. Returns (session dir, guest lines, host program's output)."""
    name = NAME
    out = str(tmp_path / "session")
    e = env()
    ht = [sys.executable, "-m", "hypertrace.cli"]
    rec = subprocess.Popen(ht + ["record", "-o", out, "--qemu", name, "--kernel",
                                 "sched:sched_process_exec,sched:sched_process_exit"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
    host = None
    host_out = ""
    try:
        first = rec.stdout.readline()
        m = re.search(r"HYPERTRACE_HOST_CHANNEL=(\S+?);", first)
        assert m, (first, rec.stderr.read() if rec.poll() is not None else "")
        app = tmp_path / "host_app.py"
        app.write_text(HOST_APP)
        host = subprocess.Popen([sys.executable, str(app)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True,
                                env=dict(e, HYPERTRACE_CHANNEL=m.group(1)))
        opts = subprocess.run(ht + ["qemu-args", "--name", name], capture_output=True,
                              text=True, env=e, check=True).stdout.strip()
        gp = hypertrace("guest-path").stdout.strip()
        r = vmboot.boot(opts, "HYPERTRACE_CHANNEL=ivshmem PYTHONPATH=%s /usr/bin/python3 %s %d"
                        % (gp, os.path.join(ROOT, "tests", "apps", "vmkernel.py"), NAPS),
                        False, e)
        assert r is not None, "the TCG guest did not boot within %d s" % vmboot.TCG_BOOT_TIMEOUT
        lines = r[0]
        (tmp_path / "guest.txt").write_text("\n".join(lines))    # for a failure's reader
    finally:
        if host is not None:
            host_out = host.communicate(timeout=60)[0]     # its stdin closed: it stops
        if rec.poll() is None:
            rec.send_signal(signal.SIGINT)
        _, rerr = rec.communicate(timeout=300)
    assert rec.returncode == 0, rerr
    return out, lines, host_out


def test_one_picture_guest_and_host_kernel_and_user_events(tmp_path):
    name = NAME
    first = tmp_path / "first"
    first.mkdir()
    out, lines, host_out = _record_with_guest(first)
    if any(x.startswith("HT-TIMEOUT") for x in lines):
        # A TCG guest on a loaded 2-core machine once stopped printing after it booted
        # (CI, 420 s): recorded once more; the first run's steps and stacks (vmkernel.py
        # dumps them) are kept in a warning so that a stall is seen even when the second
        # run passes. Two stalls fail.
        warnings.warn("the first guest run timed out; its last lines:\n"
                      + "\n".join(lines[-40:]), stacklevel=1)
        again = tmp_path / "again"
        again.mkdir()
        out, lines, host_out = _record_with_guest(again)
        tmp_path = again
    res = [x for x in lines if x.startswith("HT-RESULT ")]
    assert res, "\n".join(lines[-60:])
    res = json.loads(res[0][len("HT-RESULT "):])
    assert res["errors"] == [] and res["agent_rc"] == 0, res
    assert not any(d.startswith("hypertrace-") for d in res["instances"]), res
    tid = res["tid"]

    evs = _bt_cycles(out)
    st = stats(out)
    kfiles = {(x["domain"], x["file"]): x["tid"] for x in st["streams"]
              if x["thread"].startswith("kernel-cpu")}          # a kernel stream's tid: its CPU
    assert {d for d, _ in kfiles} == {name, "host"}, kfiles
    rep = [json.loads(x) for x in hypertrace("report", out, "--json").stdout.splitlines()]
    # -- the guest's kernel: trace-cmd's decoding of the same events ---------------------
    mine: dict = {}
    for x in rep:
        cpu = kfiles.get((x["domain"], x["stream"]))
        if x["domain"] == name and x["name"] == "sched_switch" and cpu is not None:
            f = x["fields"]
            mine.setdefault(cpu, []).append((x["raw_ts"], f["prev_pid"], f["next_pid"],
                                             f["next_comm"]))
    theirs: dict = {}
    for ln in lines:
        t = TC_LINE.match(ln)
        if t:
            # trace-cmd's sched plugin: `PREV:PID [PRIO] STATE ==> NEXT:PID [PRIO]`
            sw = SWITCH.match(t.group(6))
            assert sw, ln
            theirs.setdefault(int(t.group(3)), []).append((
                int(t.group(4)) * 10 ** 9 + int(t.group(5)), int(sw.group(2)),
                int(sw.group(4)), sw.group(3)))
    assert sorted(mine) == sorted(theirs) == [0, 1], (sorted(mine), sorted(theirs))
    # trace-cmd ran from before the agent to after it: per CPU, the agent's switches are
    # a run of trace-cmd's, the same ones in the same order. Each buffer stamps an event
    # with its own clock read (the probes run one after the other, and a TCG vCPU can be
    # descheduled in between), so the stamps of one event differ a little.
    dts = []
    for cpu in mine:
        a_, b_ = sorted(mine[cpu]), sorted(theirs[cpu])
        ka, kb = [x[1:] for x in a_], [x[1:] for x in b_]
        starts = [j for j in range(len(kb) - len(ka) + 1) if kb[j:j + len(ka)] == ka]
        assert starts, ("cpu%d: the agent's %d switches are not a run of trace-cmd's %d"
                        % (cpu, len(ka), len(kb)))
        j = min(starts, key=lambda j: abs(b_[j][0] - a_[0][0]))
        dts += [abs(x[0] - y[0]) for x, y in zip(a_, b_[j:])]
    dts.sort()
    n_sw = sum(len(v) for v in mine.values())
    assert n_sw > NAPS and dts[len(dts) // 2] < 1_000_000, (n_sw, dts[len(dts) // 2])

    # -- clock agreement in the guest: between two naps, a switch of the napping thread
    # nap and sched_switch are the guest's only (the host takes exec/exit): one clock
    order = sorted((x for x in evs if x[1] in ("nap", "sched_switch")), key=lambda x: x[0])
    g_naps = [i for i, (_, n, f) in enumerate(order) if n == "nap"]
    assert len(g_naps) == NAPS
    for x, y in zip(g_naps, g_naps[1:]):
        assert any(n == "sched_switch" and int(f["prev_pid"]) == tid
                   for _, n, f in order[x:y]), "no switch of %d between naps" % tid

    # -- the host: its program's ticks and its kernel's exec/exit of each child ---------
    ticks = int(re.search(r"HOST TICKS (\d+)", host_out).group(1))
    assert ticks >= 3
    bt, _ = babeltrace(out)
    names = [n for n, _ in bt]
    exits = {int(f["pid"]) for n, f in bt if n == "sched_process_exit"}
    execs = {int(f["pid"]) for n, f in bt if n == "sched_process_exec" and
             f["filename"].strip('"') == "/bin/true"}
    children = [int(f["child"]) for n, f in bt if n == "host_tick"]
    assert len(children) == ticks and set(children) <= exits and set(children) <= execs
    # one picture: every source in babeltrace2, report and the HTML view
    for ev in ("sched_switch", "nap", "sched_process_exec", "host_tick"):
        assert ev in names, ev
    r = hypertrace("report", out, "--all")
    assert r.stderr == "", r.stderr[-2000:]
    seen = set()
    for ln in r.stdout.splitlines():
        p = ln.split(" ", 3)
        if len(p) >= 3:
            d, _, f = p[1].partition("/")
            seen.add((d, p[2], (d, f) in kfiles))
    for want in ((name, "sched_switch", True), (name, "nap", False),
                 ("host", "sched_process_exec", True), ("host", "host_tick", False)):
        assert want in seen, want
    html = tmp_path / "view.html"
    hypertrace("export", out, "--format", "html", "-o", str(html))
    text = html.read_text()
    for ev in ("sched_switch", "nap", "sched_process_exec", "host_tick"):
        assert ev in text
    c = st["clocks"][name]
    assert c["kind"] == "estimated" and c["causality_violations"] == 0, c
    print("one picture: guest kernel %d sched_switch = trace-cmd's, per CPU in order "
          "(stamps %d ns apart at the median, %d at most), %d naps, host %d ticks; guest "
          "clock uncertainty %s ns, 0 violations" % (
              n_sw, dts[len(dts) // 2], dts[-1], NAPS, ticks, c["uncertainty_ns"]))
