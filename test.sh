#!/usr/bin/env bash
# Set up everything the tests need (setup.sh), then run the whole suite (lint + pytest)
# twice: with the C accelerator of the Python tracepoints, then with HYPERTRACE_PURE=1
# (pure-Python tracepoints, in the guests too: guest-path leaves the extension out).
# Usage: ./test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
echo "== ruff"
.venv/bin/ruff check src tests benchmarks examples
echo "== pytest (accelerated tracepoints: $(.venv/bin/python -c 'from hypertrace import guest; print(guest.ACCELERATED)'))"
.venv/bin/python -m pytest "$@"
echo "== pytest, pure-Python tracepoints (HYPERTRACE_PURE=1)"
HYPERTRACE_PURE=1 exec .venv/bin/python -m pytest "$@"
