"""Finding hypertrace's stock QEMU devices inside a Linux guest.

Data path: an `ivshmem-plain` PCI device (vendor 0x1af4, device 0x1110) whose
BAR2 holds the region; several may exist, so the one whose header carries
hypertrace's magic (and the wanted name) is chosen. Control path: a
virtio-serial port named `org.hypertrace.NAME`, found as
/dev/virtio-ports/NAME (udev) or through /sys/class/virtio-ports/*/name.
"""

from __future__ import annotations

import glob
import mmap
import os
from typing import List, Optional

from .. import abi

IVSHMEM_VENDOR = "0x1af4"
IVSHMEM_DEVICE = "0x1110"
PORT_PREFIX = "org.hypertrace."
SYSFS_PCI = "/sys/bus/pci/devices"
SYSFS_PORTS = "/sys/class/virtio-ports"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def ivshmem_regions(root: str = SYSFS_PCI) -> List[tuple]:
    """(resource2 path, region name) of every ivshmem BAR holding a hypertrace region."""
    out = []
    for dev in sorted(glob.glob(os.path.join(root, "*"))):
        if (_read(os.path.join(dev, "vendor")) != IVSHMEM_VENDOR
                or _read(os.path.join(dev, "device")) != IVSHMEM_DEVICE):
            continue
        res = os.path.join(dev, "resource2")
        if _read(os.path.join(dev, "enable")) == "0":
            try:
                with open(os.path.join(dev, "enable"), "w") as f:
                    f.write("1")
            except OSError:
                pass
        try:
            fd = os.open(res, os.O_RDWR)
        except OSError:
            continue
        try:
            mm = mmap.mmap(fd, abi.PAGE)
            try:
                hdr, _ = abi.parse_header(mm)
            finally:
                mm.close()
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
        out.append((res, hdr.name))
    return out


def find_ivshmem(name: Optional[str] = None) -> str:
    found = ivshmem_regions()
    for res, nm in found:
        if name is None or nm == name:
            return res
    if not found:
        raise OSError("no ivshmem-plain device (1af4:1110) with a hypertrace region; start QEMU "
                      "with the options of `hypertrace qemu-args --name NAME`")
    raise OSError("no hypertrace region named %r among ivshmem devices (found: %s)"
                  % (name, ", ".join(n for _, n in found)))


def find_port(name: str) -> Optional[str]:
    """The character device of virtio-serial port `name`, or None."""
    p = os.path.join("/dev/virtio-ports", name)
    if os.path.exists(p):
        return p
    for d in sorted(glob.glob(os.path.join(SYSFS_PORTS, "*"))):
        if _read(os.path.join(d, "name")) == name:
            dev = os.path.join("/dev", os.path.basename(d))
            if os.path.exists(dev):
                return dev
    return None
