#!/usr/bin/env bash
# Re-make the README's screenshot of the HTML view from a real recording:
# examples/service.py under `hypertrace record`, `hypertrace view`, headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
T="$(mktemp -d)"
.venv/bin/hypertrace record -o "$T/service" -- .venv/bin/python examples/service.py 2 200 >/dev/null
.venv/bin/hypertrace view "$T/service" >/dev/null
# the whole session, then 30 ms of it (a view can be linked with #from=NS&to=NS)
chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=1400,900 \
    --screenshot=docs/img/view.png "file://$T/service.html" 2>/dev/null
chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage --window-size=1400,380 \
    --screenshot=docs/img/view-zoom.png "file://$T/service.html#from=95000000&to=125000000" \
    2>/dev/null
rm -rf "$T"
echo "docs/img/view.png docs/img/view-zoom.png"
