#!/usr/bin/env bash
# Set up hypertrace and run the demo: the collector records a workload of four
# processes (two threads each) emitting typed events, then reports on the trace.
# No VM needed. Usage: ./demo.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")"
OUT="${1:-demo-trace}"

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -e . >/dev/null
rm -rf "$OUT"

echo "== hypertrace record -o $OUT -- python examples/workload.py 4 5000"
.venv/bin/hypertrace record -o "$OUT" -- .venv/bin/python examples/workload.py 4 5000
echo
echo "== hypertrace report $OUT | head"
.venv/bin/hypertrace report "$OUT" | head -8
echo
echo "== hypertrace stats $OUT"
.venv/bin/hypertrace stats "$OUT" | head -6
if command -v babeltrace2 >/dev/null; then
    echo
    echo "== babeltrace2 $OUT | head -3"
    babeltrace2 "$OUT" | head -3
fi
echo
echo "CTF trace: $(cd "$OUT" && pwd)"
