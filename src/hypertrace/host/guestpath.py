"""A directory holding only the stdlib-only guest part of the package, for PYTHONPATH.

Guests (VMs, `qemu-x86_64 /usr/bin/python3`, system Pythons) must not see the
host's site-packages: they get a copy of hypertrace/__init__.py, hypertrace/abi/ and
hypertrace/guest/ and nothing else, plus the built C accelerator (guest/_accel*.so)
when there is one: a guest interpreter loads it only if the file name's ABI tag is
its own (same version, ABI and architecture: a virtme-ng guest running the host's
Python), and any other guest uses the pure-Python tracepoints; with HYPERTRACE_PURE
set (as for the host's own tracepoints, guest/accel.py) it is left out, so that
guests run pure Python too. The directory is named after a hash of those
files and never rewritten once complete, so guests of two checkouts (or two
versions) never run each other's code, nor a file half copied.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import os
import shutil
import tempfile

import hypertrace

GUEST_FILES = ("__init__.py",)
GUEST_PACKAGES = ("abi", "guest", "guest/boot")


def _carried(name: str) -> bool:
    if name.endswith(".py"):
        return True
    if os.environ.get("HYPERTRACE_PURE", "") not in ("", "0"):
        return False
    return name.startswith("_accel.") and any(
        name.endswith(x) for x in importlib.machinery.EXTENSION_SUFFIXES)


def _sources() -> list:
    pkg = os.path.dirname(os.path.abspath(hypertrace.__file__))
    files = [(os.path.join(pkg, n), n) for n in GUEST_FILES]
    for sub in GUEST_PACKAGES:
        files += [(os.path.join(pkg, sub, n), os.path.join(sub, n))
                  for n in sorted(os.listdir(os.path.join(pkg, sub))) if _carried(n)]
    return files


def guest_path(base: str = "") -> str:
    files = _sources()
    h = hashlib.sha256()
    for src, rel in files:
        h.update(rel.encode() + b"\0")
        with open(src, "rb") as f:
            h.update(f.read())
    base = base or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hypertrace",
        "guest-%s-%s" % (hypertrace.__version__, h.hexdigest()[:12]))
    if os.path.isdir(os.path.join(base, "hypertrace", "guest")):
        return base
    parent = os.path.dirname(base)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=parent)
    try:
        for src, rel in files:
            dst = os.path.join(tmp, "hypertrace", rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
        try:
            os.rename(tmp, base)        # complete or absent, never half written
        except OSError:
            if not os.path.isdir(base):  # lost a race with another copy: theirs is the same
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return base
