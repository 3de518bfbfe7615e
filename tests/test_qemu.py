"""A real booted Linux guest under qemu-system-x86_64: ivshmem rings, virtio-serial control.

The guest runs this checkout's Python over 9p (virtme-ng). KVM is tried first
where /dev/kvm exists; if the guest has not reached user space within the boot
timeout (nested KVM hangs on this machine class) it falls back to TCG.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

from apps import vmboot
from conftest import ROOT, SRC, babeltrace, env, hypertrace, local, stats


def run_guest(name: str, command: str) -> tuple:
    return vmboot.run_guest(hypertrace("qemu-args", "--name", name).stdout.strip(), command,
                            env())


def start_recorder(out: str, *args: str) -> subprocess.Popen:
    """`hypertrace record -o OUT ARGS...` in the background, once it serves."""
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out, *args],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    time.sleep(1.0)
    assert rec.poll() is None, rec.stderr.read()
    return rec


def test_booted_guest_two_processes_events_and_sync_points(tmp_path):
    name = "htvm%d" % os.getpid()
    out = str(tmp_path / "vm-session")
    rec = start_recorder(out, "--qemu", name)
    gp = hypertrace("guest-path").stdout.strip()
    N = 3000
    try:
        t = time.monotonic()
        lines, mode = run_guest(name, "HYPERTRACE_CHANNEL=ivshmem PYTHONPATH=%s /usr/bin/python3 "
                                      "%s %d" % (gp, os.path.join(ROOT, "tests", "apps",
                                                                  "vmguest.py"), N))
        wall = time.monotonic() - t
    finally:
        rec.send_signal(signal.SIGINT)
        rout, rerr = rec.communicate(timeout=120)
    assert rec.returncode == 0, rerr
    res = [x for x in lines if x.startswith("HT-RESULT ")]
    assert res, "\n".join(lines[-40:])
    result = json.loads(res[0][len("HT-RESULT "):])
    assert result["region"].endswith("/resource2")        # the BAR, found by the guest itself
    st = stats(out)
    vm = local(st, name)
    workers = [s for s in vm if s["per_event"].get("vm_job")]
    assert len(workers) == 2
    for s in workers:
        assert s["recorded"] + s["discarded"] == N + 4 and s["malformed"] == 0
    c = st["clocks"][name]
    assert c["kind"] == "estimated" and c["causality_violations"] == 0 and c["samples"] >= 16
    events, _ = babeltrace(out, allow_discarded=True, internal=True)
    jobs = [f for n, f in events if n == "vm_job"]
    assert len(jobs) == sum(s["per_event"]["vm_job"] for s in workers)
    for f in jobs:
        assert f["tag"] == "vm p%s #%s" % (f["proc"], f["i"])
    guest_sync = [f for n, f in events if n == "hypertrace_sync"]
    host_sync = [f for n, f in events if n == "hypertrace_sync_host" and f["domain"] == name]
    assert len(guest_sync) == len(host_sync) == 9
    assert sorted(int(f["guest_send"]) for f in host_sync) == sorted(
        int(f["t_send"]) for f in guest_sync)
    assert all(isinstance(rt, list) for _, _, rt, _ in result["results"]), result["results"]
    rtts = sorted(r for _, _, rt, _ in result["results"] for r in rt) + [result["rtt"]]
    emit = [ns for *_, ns in result["results"]]
    print("QEMU %s guest: boot+run %.0f s; emit %.0f ns/event in the guest (empty call %.0f ns, "
          "struct.pack_into guest RAM %.0f ns); sync_point RTT min %.2f ms p50 %.2f ms; clock "
          "offset %d ns, drift %.1f ppm, uncertainty %d ns over %d samples" % (
              mode, wall, sum(emit) / len(emit), result["empty_ns"], result["pack_ram_ns"],
              rtts[0] / 1e6,
                       rtts[len(rtts) // 2] / 1e6, c["offset_ns"], c["drift_ppm"],
                       c["uncertainty_ns"], c["samples"]))
    assert os.path.exists(SRC)


def test_two_guests_at_once_one_hostile(tmp_path):
    """Two VMs in one session: one honest, one attacking its own region and port. The
    honest guest's stream, fields and clock are untouched; the damage is counted."""
    good, evil = "htgood%d" % os.getpid(), "htevil%d" % os.getpid()
    out = str(tmp_path / "two-vms")
    rec = start_recorder(out, "--qemu", good, "--qemu", evil)
    gp = hypertrace("guest-path").stdout.strip()
    apps = os.path.join(ROOT, "tests", "apps")
    results = {}
    try:

        def go(name, cmd):
            try:
                results[name] = run_guest(name, "HYPERTRACE_CHANNEL=ivshmem PYTHONPATH=%s "
                                                "/usr/bin/python3 %s" % (gp, cmd))
            except BaseException as e:      # reported below with the other guest's output
                results[name] = (["HT-ERROR %r" % e], None)
        ts = [threading.Thread(target=go, args=(good, os.path.join(apps, "vmguest.py") +
                                                " 1000")),
              threading.Thread(target=go, args=(evil, os.path.join(apps, "vmhostile.py")))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        rec.send_signal(signal.SIGINT)
        rout, rerr = rec.communicate(timeout=120)
    assert rec.returncode == 0, rerr
    assert "Traceback" not in rerr
    for name in (good, evil):
        assert any(x.startswith("HT-RESULT") for x in results[name][0]), results[name][0][-30:]
    st = stats(out)
    honest = [s for s in local(st, good) if s["per_event"].get("vm_job")]
    assert len(honest) == 2
    assert all(s["recorded"] + s["discarded"] == 1004 and s["malformed"] == 0 for s in honest)
    assert st["clocks"][good]["causality_violations"] == 0
    assert sum(s["malformed"] for s in local(st, evil)) > 0
    from hypertrace.read.session import Session
    sess = Session(out)
    dom = {d["name"]: d for d in sess.index["domains"]}
    assert dom[evil]["rejected_declarations"] and not dom[good]["rejected_declarations"]
    assert sess.clocks[evil]["control_errors"], "the garbage on the port is reported"
    events, _ = babeltrace(out, allow_discarded=True)
    jobs = [f for n, f in events if n == "vm_job"]
    assert len(jobs) == sum(s["per_event"]["vm_job"] for s in honest)
    assert all(f["tag"] == "vm p%s #%s" % (f["proc"], f["i"]) for f in jobs)


ROI_RULES = """
[[trigger]]
event = "roi_begin"
actions = [ { qemu_trace_enable = "virtio_console_flush_buf" }, { marker = "roi on" },
            { qemu_trace_enable = "no_such_qemu_event" } ]

[[trigger]]
event = "roi_end"
actions = [ { qemu_trace_disable = "virtio_console_flush_buf" } ]
"""


def qemu_events_inside_roi(out: str, name: str) -> tuple:
    """The merged report of a tests/apps/vmroi.py session of guest `name` as (ts,
    domain, event, fields), and QEMU's virtio_console_flush_buf events as (ts, fields),
    checked to be there (each sync point inside the region writes on the port) and all
    strictly between the guest's roi_begin and roi_end."""
    report = [json.loads(x) for x in hypertrace("report", out, "--json").stdout.splitlines()]
    seq = [(e["ts"], e["domain"], e["name"], e["fields"]) for e in report]
    begin = next(ts for ts, d, n, _ in seq if d == name and n == "roi_begin")
    end = next(ts for ts, d, n, _ in seq if d == name and n == "roi_end")
    qemu = [(ts, f) for ts, d, n, f in seq if d == "qemu" and n == "virtio_console_flush_buf"]
    assert len(qemu) >= 10, "each sync point inside the region writes on the port"
    assert all(begin < ts < end for ts, _ in qemu), (begin, end, [t for t, _ in qemu])
    return seq, qemu


def test_guest_region_of_interest_steers_qemu_tracing(tmp_path):
    """roi_begin in the guest -> trigger -> QMP enables a QEMU trace event; the guest's
    port writes fire it; roi_end -> disabled. QEMU's own events land in the session as
    domain `qemu`, and the merged report shows them only inside the region, in order."""
    name = "htroi%d" % os.getpid()
    out = str(tmp_path / "roi")
    rules = tmp_path / "rules.toml"
    rules.write_text(ROI_RULES)
    rec = start_recorder(out, "--qemu", name, "--triggers", str(rules))
    gp = hypertrace("guest-path").stdout.strip()
    try:
        lines, mode = run_guest(name, "HYPERTRACE_CHANNEL=ivshmem HYPERTRACE_SYNC_INTERVAL=100000 "
                                      "PYTHONPATH=%s /usr/bin/python3 %s 3" % (
                                          gp, os.path.join(ROOT, "tests", "apps", "vmroi.py")))
    finally:
        rec.send_signal(signal.SIGINT)
        rout, rerr = rec.communicate(timeout=120)
    assert rec.returncode == 0, rerr
    assert any(x.startswith("HT-RESULT") for x in lines), "\n".join(lines[-40:])
    # nothing left behind in the runtime directory: the QEMU-events region, and the log of
    # an exited QEMU
    region = re.search(r"mem-path=([^,\s]+)",
                       hypertrace("qemu-args", "--name", name).stdout).group(1)
    assert not os.path.exists(region + "-qemu")
    assert not os.path.exists(region + ".qemu.log")
    seq, qemu = qemu_events_inside_roi(out, name)
    inside = [ts for ts, d, n, f in seq if d == name and n == "hypertrace_sync" and
              f["name"] == "inside"]
    assert len(inside) == 10
    # in order: the first QEMU event after roi_begin, the last before roi_end
    assert [ts for ts, *_ in seq] == sorted(ts for ts, *_ in seq)
    assert all(f["args"] for _, f in qemu) and all(int(f["tid"]) > 0 for _, f in qemu)
    st = json.loads(hypertrace("stats", out, "--json").stdout)
    acts = st["triggers"]["actions"]
    assert acts["qemu_trace_enable virtio_console_flush_buf"]["count"] == 1
    assert acts["qemu_trace_enable virtio_console_flush_buf"]["errors"] == 0
    assert acts["qemu_trace_disable virtio_console_flush_buf"]["errors"] == 0
    # a command QEMU refuses is recorded with QEMU's message; recording went on
    bad = acts["qemu_trace_enable no_such_qemu_event"]
    assert bad["errors"] == 1 and "no_such_qemu_event" in bad["last_error"]
    lat = acts["qemu_trace_enable virtio_console_flush_buf"]["latency_ns"]
    from hypertrace.read.session import Session
    qc = Session(out).index["qemu_clock"]
    assert qc["events"] == len([1 for _, d, *_ in seq if d == "qemu"]) and qc["rejected"] == 0
    print("QEMU %s guest: ROI trigger -> QMP latency %.2f ms; %d QEMU events inside the "
          "region; realtime->monotonic mapping uncertainty %d ns" % (
              mode, lat["p50"] / 1e6, len(qemu), qc["uncertainty_ns"]))


def test_a_guest_rebooted_while_recorded_is_served_across_the_reboot(tmp_path):
    """The guest reboots (sysrq b: no goodbye, rings left claimed) and runs again. The
    collector closes the first boot's streams, frees their rings and serves the second
    boot as domain NAME.boot2 with its own clock: both boots' events in order."""
    name = "htboot%d" % os.getpid()
    out = str(tmp_path / "reboot-session")
    state = tmp_path / "state"
    state.mkdir()
    rec = start_recorder(out, "--qemu", name)
    gp = hypertrace("guest-path").stdout.strip()
    N = 400
    try:
        lines, mode = vmboot.run_guest(
            # stock QEMU: reset on reboot (virtme-ng asks for -no-reboot; the later wins)
            hypertrace("qemu-args", "--name", name).stdout.strip() + " -action reboot=reset",
            "HYPERTRACE_CHANNEL=ivshmem PYTHONPATH=%s /usr/bin/python3 %s %s %d" % (
                gp, os.path.join(ROOT, "tests", "apps", "vmreboot.py"), state, N),
            env(), vng_args=("--rwdir=%s" % state,))
    finally:
        rec.send_signal(signal.SIGINT)
        rout, rerr = rec.communicate(timeout=120)
    assert rec.returncode == 0, rerr
    assert "Traceback" not in rerr
    assert any(x.startswith("HT-BOOT 1 emitted") for x in lines), lines[-40:]
    assert any(x.startswith("HT-RESULT") for x in lines), lines[-40:]
    st = stats(out)
    for dom in (name, name + ".boot2"):
        ss = [s for s in local(st, dom) if s["per_event"].get("vm_boot_tick")]
        assert sum(s["recorded"] + s["discarded"] for s in ss) >= N, (dom, st["streams"])
        assert sum(s["per_event"]["vm_boot_tick"] for s in ss) + sum(
            s["discarded"] for s in ss) == N, (dom, ss)
        assert all(s["malformed"] == 0 and s["torn"] == 0 for s in ss)
        c = st["clocks"][dom]
        assert c["kind"] == "estimated" and c["causality_violations"] == 0, (dom, c)
    events, _ = babeltrace(out, allow_discarded=True)
    boots = [int(f["boot"]) for n, f in events if n == "vm_boot_tick"]
    assert boots == sorted(boots) and set(boots) == {1, 2}, "boot 2 placed before boot 1"
    evs = [json.loads(x) for x in hypertrace("report", out, "--json").stdout.splitlines()]
    ticks = [e for e in evs if e["name"] == "vm_boot_tick"]
    assert [e["fields"]["boot"] for e in ticks] == sorted(e["fields"]["boot"] for e in ticks)
    assert {(e["domain"], e["fields"]["boot"]) for e in ticks} == {(name, 1),
                                                                   (name + ".boot2", 2)}
    from hypertrace.read.session import Session
    retired = [d for d in Session(out).index["domains"] if d.get("retired")]
    assert [d["name"] for d in retired] == [name]
    c1, c2 = st["clocks"][name], st["clocks"][name + ".boot2"]
    print("QEMU %s guest rebooted: boot 1 offset %d ns (uncertainty %d), boot 2 offset %d ns "
          "(uncertainty %d): the clock restarted %.1f s later" % (
              mode, c1["offset_ns"], c1["uncertainty_ns"], c2["offset_ns"],
              c2["uncertainty_ns"], (c2["offset_ns"] - c1["offset_ns"]) / 1e9))


def test_the_readme_vm_demo_gives_a_merged_guest_and_host_trace(tmp_path):
    """README's "Tracing a QEMU VM" in one command: examples/vm-demo.sh records a booted
    guest running the demo service while a host program samples the host's CPU."""
    out = str(tmp_path / "vm-trace")
    p = subprocess.Popen([os.path.join(ROOT, "examples", "vm-demo.sh"), out], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=1200)
    finally:
        # nothing of the demo may outlive it (a leftover holding our pipes would hang us)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    r = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    assert "hypertrace_sync_host" in r.stdout and "timeline:" in r.stdout
    st = stats(out)
    guest_ev = {}
    for s in local(st, "demovm"):
        for k, v in s["per_event"].items():
            guest_ev[k] = guest_ev.get(k, 0) + v
    assert guest_ev.get("request_begin") == guest_ev.get("request_end") == 2 * 2 * 200
    assert st["clocks"]["demovm"]["kind"] == "estimated"
    assert st["clocks"]["demovm"]["causality_violations"] == 0
    assert sum(s["per_event"].get("host_cpu_busy", 0) for s in local(st, "host")) > 10
    evs = [json.loads(x) for x in hypertrace("report", out, "--json").stdout.splitlines()]
    req = [e["ts"] for e in evs if e["name"] == "request_begin"]
    host = [e["ts"] for e in evs if e["name"] == "host_cpu_busy"]
    assert any(min(req) < t < max(req) for t in host), "host events interleave the guest's"
    assert os.path.getsize(out + ".html") > 10_000
    events, _ = babeltrace(out)
    assert sum(1 for n, _ in events if n == "request_begin") == 800
