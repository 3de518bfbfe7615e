"""Boot a Linux guest under qemu-system-x86_64 with virtme-ng and run one command in it.

The guest sees the host's root filesystem over 9p, so it runs this checkout's
Python. KVM is tried first where /dev/kvm exists; a guest that has not printed
HT-BOOTED within the boot timeout is killed and booted again under TCG.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import threading

KVM_BOOT_TIMEOUT = 60
TCG_BOOT_TIMEOUT = 240
RUN_TIMEOUT = 420
_KVM = {"works": None}      # learned once per process: a hanging KVM costs a boot timeout
# ... and remembered for this host boot, so the next process does not wait for it again
KVM_VERDICT = "/tmp/hypertrace-kvm-hangs"


def _host_boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _kvm_known_to_hang() -> bool:
    try:
        with open(KVM_VERDICT) as f:
            return f.read().strip() == _host_boot() != ""
    except OSError:
        return False


def kernel() -> str:
    ks = sorted(glob.glob("/boot/vmlinuz-*"))
    assert ks, "no kernel in /boot: run ./test.sh (apt-get install linux-image-amd64)"
    return ks[-1]


def vng() -> str:
    v = shutil.which("vng") or os.path.join(os.path.dirname(sys.executable), "vng")
    assert os.path.exists(v), "virtme-ng is not installed: run ./test.sh"
    return v


def boot(qemu_opts: str, command: str, kvm: bool, env: dict, vng_args=()):
    """Boot, run `command` in the guest; returns (output lines, mode), or None if the
    guest never reached user space within the boot timeout."""
    args = [vng(), "--run", kernel(), "--force-9p", "--cpus", "2", "--memory", "1G",
            *vng_args, "--qemu-opts=" + qemu_opts, "--exec", command]
    if not kvm:
        args.insert(3, "--disable-kvm")
    env = dict(env, PATH=os.path.dirname(vng()) + os.pathsep + env.get("PATH", ""))
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=env, start_new_session=True)
    lines: list = []
    booted = threading.Event()

    def read():
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            if "HT-BOOTED" in line:
                booted.set()
    t = threading.Thread(target=read, daemon=True)
    t.start()
    if not booted.wait(KVM_BOOT_TIMEOUT if kvm else TCG_BOOT_TIMEOUT):
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return None
    try:
        p.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        # hand back what the guest printed so the test fails with it, not with a traceback
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        lines.append("HT-TIMEOUT the guest was killed after %d s" % RUN_TIMEOUT)
    t.join(timeout=10)
    return lines, "KVM" if kvm else "TCG"


def run_guest(qemu_opts: str, command: str, env: dict, vng_args=()) -> tuple:
    if os.path.exists("/dev/kvm") and _KVM["works"] is not False and not _kvm_known_to_hang():
        r = boot(qemu_opts, command, True, env, vng_args)
        _KVM["works"] = r is not None
        if r is not None:
            return r
        with open(KVM_VERDICT, "w") as f:
            f.write(_host_boot())
        print("KVM guest did not boot within %d s: falling back to TCG" % KVM_BOOT_TIMEOUT)
    r = boot(qemu_opts, command, False, env, vng_args)
    assert r is not None, "the TCG guest did not boot within %d s" % TCG_BOOT_TIMEOUT
    return r


def record_guest(out: str, name: str, command: str, env: dict, vng_args=()) -> tuple:
    """`hypertrace record --qemu NAME` into `out` while one TCG guest runs `command`
    (nested KVM hangs on this machine class: not tried); returns (guest lines or None
    if it never booted, the recorder's exit code, its stderr)."""
    import time
    ht = [sys.executable, "-m", "hypertrace.cli"]
    rec = subprocess.Popen(ht + ["record", "-o", out, "--qemu", name], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
    booted = None
    try:
        time.sleep(1.0)
        if rec.poll() is None:
            opts = subprocess.run(ht + ["qemu-args", "--name", name], capture_output=True,
                                  text=True, env=env, check=True).stdout.strip()
            r = boot(opts, command, False, env, vng_args)
            booted = r[0] if r is not None else None
    finally:
        if rec.poll() is None:
            rec.send_signal(signal.SIGINT)
        _, rerr = rec.communicate(timeout=180)
    return booted, rec.returncode, rerr


if __name__ == "__main__":
    # vmboot.py QEMU_OPTS COMMAND: boot, run COMMAND (which prints HT-BOOTED first), print
    # what the guest printed (examples/vm-demo.sh uses this)
    out, how = run_guest(sys.argv[1], sys.argv[2], dict(os.environ))
    print("\n".join(x for x in out if "HT-BOOTED" not in x))
    print("(guest ran under %s)" % how)
    sys.exit(1 if any(x.startswith("HT-TIMEOUT") for x in out) else 0)
