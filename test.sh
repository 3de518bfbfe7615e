#!/usr/bin/env bash
# Set up everything the tests need (setup.sh), then run the whole suite (lint + pytest).
# Usage: ./test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
echo "== ruff"
.venv/bin/ruff check src tests benchmarks examples
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
