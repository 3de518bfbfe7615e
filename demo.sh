#!/usr/bin/env bash
# Set up hypertrace and run the demo: the collector records a small service (two
# processes, two threads each: request and database spans, a queue-depth counter,
# sync points), then reports on it and writes the HTML timeline and a Perfetto
# trace. No VM needed. Usage: ./demo.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")"
OUT="${1:-demo-trace}"

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q -e . >/dev/null
rm -rf "$OUT"

echo "== hypertrace record -o $OUT -- python examples/service.py 2 300"
.venv/bin/hypertrace record -o "$OUT" -- .venv/bin/python examples/service.py 2 300
echo
echo "== hypertrace report $OUT | head"
.venv/bin/hypertrace report "$OUT" | head -8
echo
echo "== hypertrace stats $OUT"
.venv/bin/hypertrace stats "$OUT"
echo
echo "== hypertrace sql $OUT \"select name, count(*) ...\""
.venv/bin/hypertrace sql "$OUT" "select domain, name, count(*) as n from events group by all order by n desc"
echo
echo "== hypertrace view $OUT ; hypertrace export $OUT --format perfetto"
.venv/bin/hypertrace view "$OUT"
.venv/bin/hypertrace export "$OUT" --format perfetto
if command -v babeltrace2 >/dev/null; then
    echo
    echo "== babeltrace2 $OUT | head -3"
    babeltrace2 "$OUT" | head -3
fi
echo
echo "CTF trace: $(cd "$OUT" && pwd)   (babeltrace2 reads it)"
echo "timeline:  $(cd "$OUT" && pwd).html   (open in a browser)"
echo "Perfetto:  $(cd "$OUT" && pwd).pftrace   (open in ui.perfetto.dev)"
