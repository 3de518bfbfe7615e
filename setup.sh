#!/usr/bin/env bash
# Install what hypertrace's tests and VM demo need: Debian packages (when missing) and
# .venv with the package and its test extras. Sourced by test.sh and examples/vm-demo.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

APT_PACKAGES="babeltrace2 qemu-user qemu-system-x86 qemu-system-data linux-image-amd64 busybox-static python3 chromium gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross lttng-tools liblttng-ust-dev python3-lttngust trace-cmd default-jre-headless systemtap-sdt-dev bpftrace"
missing=""
command -v babeltrace2 >/dev/null || missing=1
command -v qemu-x86_64 >/dev/null || missing=1
command -v qemu-system-x86_64 >/dev/null || missing=1
[ -f /usr/share/qemu/trace-events-all ] || missing=1
ls /boot/vmlinuz-* >/dev/null 2>&1 || missing=1
[ -x /bin/busybox ] || missing=1
[ -x /usr/bin/python3 ] || missing=1
command -v chromium >/dev/null || missing=1
command -v gcc >/dev/null || missing=1
[ -f /usr/include/stdio.h ] || missing=1
command -v aarch64-linux-gnu-gcc >/dev/null || missing=1
[ -f /usr/aarch64-linux-gnu/include/stdio.h ] || missing=1
command -v lttng >/dev/null || missing=1
command -v lttng-sessiond >/dev/null || missing=1
command -v trace-cmd >/dev/null || missing=1
command -v java >/dev/null || missing=1
[ -f /usr/include/x86_64-linux-gnu/sys/sdt.h ] || [ -f /usr/include/sys/sdt.h ] || missing=1
command -v bpftrace >/dev/null || missing=1
ls /usr/include/*/lttng/tracepoint.h >/dev/null 2>&1 || missing=1
[ -f /usr/lib/python3/dist-packages/lttngust/__init__.py ] || missing=1
if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "== installing Debian packages: $APT_PACKAGES"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $APT_PACKAGES
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $($PY --version)"
    "$PY" -m venv .venv
fi
echo "== installing hypertrace and test dependencies"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
