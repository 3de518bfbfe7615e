"""hypertrace: trace events from guests (VMs, QEMU user mode, processes) into one host trace.

This package file stays stdlib-only and imports nothing: the guest side
(`hypertrace.guest`, `hypertrace.abi`) must work when the package directory is
copied into a guest with no dependencies installed.
"""

__version__ = "0.1.0"
