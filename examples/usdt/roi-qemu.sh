#!/bin/sh
# A guest's roi_begin/roi_end switch QEMU's trace events PATTERN on and off, from the
# host, with bpftrace on the recorder's hypertrace:event probe (roi-qemu.bt):
#   hypertrace record -o DIR --qemu GUEST &     # then boot GUEST with `qemu-args`
#   examples/usdt/roi-qemu.sh DIR GUEST [PATTERN]
# As the user who records (bpftrace needs root: record as root too; `sudo` would
# also drop a virtualenv's `hypertrace` from PATH). PATTERN defaults to
# virtio_console_flush_buf (a write on the guest's virtio-serial port). Ends with
# the recording (or Ctrl-C). `hypertrace` must be on PATH.
set -eu
[ $# -ge 2 ] || { echo "usage: $0 DIR GUEST [PATTERN]" >&2; exit 2; }
D=$1 G=$2 P=${3:-virtio_console_flush_buf}
export D G P
pid=$(hypertrace usdt --pid "$D")
lib=$(hypertrace usdt --lib)
exec bpftrace --unsafe -p "$pid" "$(dirname "$0")/roi-qemu.bt" "$lib" "$G"
