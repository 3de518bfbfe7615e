"""A real booted Linux guest under qemu-system-x86_64: ivshmem rings, virtio-serial control.

The guest runs this checkout's Python over 9p (virtme-ng). KVM is tried first
where /dev/kvm exists; if the guest has not reached user space within the boot
timeout (nested KVM hangs on this machine class) it falls back to TCG.
"""

from __future__ import annotations

import json
import os
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


def test_booted_guest_two_processes_events_and_sync_points(tmp_path):
    name = "htvm%d" % os.getpid()
    out = str(tmp_path / "vm-session")
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--qemu", name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env())
    gp = hypertrace("guest-path").stdout.strip()
    N = 3000
    try:
        time.sleep(1.0)
        assert rec.poll() is None, rec.stderr.read()
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
    rec = subprocess.Popen([sys.executable, "-m", "hypertrace.cli", "record", "-o", out,
                            "--qemu", good, "--qemu", evil], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env())
    gp = hypertrace("guest-path").stdout.strip()
    apps = os.path.join(ROOT, "tests", "apps")
    results = {}
    try:
        time.sleep(1.0)
        assert rec.poll() is None, rec.stderr.read()

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
    from hypertrace.session import Session
    sess = Session(out)
    dom = {d["name"]: d for d in sess.index["domains"]}
    assert dom[evil]["rejected_declarations"] and not dom[good]["rejected_declarations"]
    assert sess.clocks[evil]["control_errors"], "the garbage on the port is reported"
    events, _ = babeltrace(out, allow_discarded=True)
    jobs = [f for n, f in events if n == "vm_job"]
    assert len(jobs) == sum(s["per_event"]["vm_job"] for s in honest)
    assert all(f["tag"] == "vm p%s #%s" % (f["proc"], f["i"]) for f in jobs)
