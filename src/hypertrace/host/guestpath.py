"""A directory holding only the stdlib-only guest part of the package, for PYTHONPATH.

Guests (VMs, `qemu-x86_64 /usr/bin/python3`, system Pythons) must not see the
host's site-packages: they get a copy of hypertrace/{__init__,abi}.py and
hypertrace/guest/ and nothing else.
"""

from __future__ import annotations

import os
import shutil

import hypertrace

GUEST_FILES = ("__init__.py", "abi.py")


def guest_path(base: str = "") -> str:
    pkg = os.path.dirname(os.path.abspath(hypertrace.__file__))
    base = base or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(
        "~/.cache"), "hypertrace", "guest-" + hypertrace.__version__)
    dst = os.path.join(base, "hypertrace")
    os.makedirs(os.path.join(dst, "guest"), exist_ok=True)
    for name in GUEST_FILES:
        shutil.copy2(os.path.join(pkg, name), os.path.join(dst, name))
    for name in os.listdir(os.path.join(pkg, "guest")):
        if name.endswith(".py"):
            shutil.copy2(os.path.join(pkg, "guest", name), os.path.join(dst, "guest", name))
    return base
