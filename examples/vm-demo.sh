#!/usr/bin/env bash
# Trace a real QEMU VM, end to end, with stock QEMU devices: the recorder serves guest
# "demovm"; a Linux guest booted with `hypertrace qemu-args` (the Debian kernel, the
# host's root filesystem over 9p via virtme-ng, so it runs this checkout's Python) runs
# examples/service.py on the ivshmem rings and the virtio-serial control port, while a
# host program samples the host's CPU into the same session, and QEMU's own trace events
# for the control port land in the `qemu` domain. Then the merged trace is reported and
# written as an HTML timeline that opens on the guest's work. KVM is tried first, TCG otherwise (a few
# minutes). Installs what it needs like ./test.sh. Usage: examples/vm-demo.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-vm-trace}"
NAME=demovm
./setup.sh
rm -rf "$OUT"
H=.venv/bin/hypertrace
LOG=$(mktemp)

echo "== hypertrace record -o $OUT --qemu $NAME"
$H record -o "$OUT" --qemu "$NAME" >"$LOG" 2>&1 &
REC=$!
HOSTAPP=""
# whatever happens, stop the host program and the recorder (Ctrl-C flushes the trace)
trap 'kill -TERM $HOSTAPP 2>/dev/null || true; kill -INT $REC 2>/dev/null || true' EXIT
RUN="${HYPERTRACE_RUNTIME_DIR:-/dev/shm/hypertrace-$(id -u)}"    # the private runtime directory
for _ in $(seq 50); do [ -e "$RUN/$NAME-host" ] && break; sleep 0.1; done

echo "== host side: examples/hostcpu.py into the host domain"
HYPERTRACE_CHANNEL="shm:$RUN/$NAME-host" .venv/bin/python examples/hostcpu.py &
HOSTAPP=$!

# QEMU's own trace events for the virtio-serial control port: they fire at each of the
# guest's exchanges with the recorder (a sync point: the port opened, a write, the reply,
# closed), a few hundred in all, so `qemu` events interleave with the guest's and the
# host's on the timeline (virtio_console_chr_event is left out: it fires mostly while the
# chardev reconnects during boot)
QARGS=(--name "$NAME" --trace virtio_console_flush_buf --trace virtio_console_chr_read
       --trace 'virtio_serial_handle_control_message*')
echo "== boot a guest with: $H qemu-args ${QARGS[*]}"
$H qemu-args "${QARGS[@]}"
GUEST_CMD="echo HT-BOOTED; HYPERTRACE_CHANNEL=ivshmem PYTHONPATH=$($H guest-path) /usr/bin/python3 $PWD/examples/service.py 2 200"
status=0
PATH="$PWD/.venv/bin:$PATH" .venv/bin/python tests/apps/vmboot.py "$($H qemu-args "${QARGS[@]}")" \
    "$GUEST_CMD" || status=$?

kill -TERM $HOSTAPP; wait $HOSTAPP || true
kill -INT $REC; wait $REC || true
trap - EXIT
cat "$LOG"; rm -f "$LOG"
if [ "$status" != 0 ]; then
    echo "the guest did not finish its workload (its output is above); the trace so far: $OUT"
    exit "$status"
fi
echo
echo "== guest, QEMU, host and sync events on one timeline (hypertrace sql, from the first sync point)"
$H sql "$OUT" "select ts, domain, name, fields from events
  where ts >= (select min(ts) from events where name = 'hypertrace_sync') - 60000000
    and name in ('hypertrace_sync', 'hypertrace_sync_host', 'host_cpu_busy', 'request_begin',
                 'virtio_console_flush_buf', 'virtio_console_chr_read')
  order by ts limit 16"
echo
echo "== events per domain"
$H sql "$OUT" "select domain, count(*) as events from events group by domain order by domain"
echo
echo "== hypertrace stats $OUT (the clocks)"
$H stats "$OUT" | sed -n '/^domain .*clock/,/^$/p'
$H export "$OUT" --format html
echo
echo "CTF trace: $(cd "$OUT" && pwd)   (babeltrace2 reads it; hypertrace report lists the events, --all with hypertrace's own)"
echo "timeline:  $(cd "$OUT" && pwd).html   (it opens on the guest's work; double-click: all)"
