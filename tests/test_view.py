"""The HTML timeline, rendered by a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import hypertrace, record

APP = r"""
from hypertrace import guest
req_b = guest.event("request_begin", "uint32_t id, const char *path")
req_e = guest.event("request_end", "uint32_t id, int32_t status")
note = guest.event("note", "const char *text")
depth = guest.event("queue_depth", "uint32_t depth", counter=True)
note("</script><script>document.title='pwned'</script><img src=x onerror=alert(1)>")
for i in range(2000):
    req_b(i, "/item/%d" % i)
    depth(i % 13)
    req_e(i, 200)
    if i % 500 == 0:
        guest.sync_point("checkpoint", i)
"""

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-extensions", "--no-first-run",
         "--window-size=1400,1000", "--virtual-time-budget=5000"]


def chromium(*args, cwd):
    return subprocess.run([CHROMIUM, *FLAGS, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium is not installed (./test.sh installs it)")
def test_html_view_renders_in_chromium(tmp_path):
    assert CHROMIUM, "chromium is required in CI"
    app = tmp_path / "app.py"
    app.write_text(APP)
    s = str(tmp_path / "s")
    # a small ring in discard mode: some events are lost, and marked
    record(s, sys.executable, str(app), opts=("--buffer-size", "4K", "--mode", "discard"))
    out = hypertrace("view", s).stdout
    page = s + ".html"
    assert page in out and os.path.getsize(page) > 10000
    text = open(page, encoding="utf-8").read()
    assert "<script>document.title='pwned'" not in text     # guest text cannot close the tag
    assert "http://" not in text and "https://" not in text  # self-contained
    url = "file://" + page
    dom = chromium("--dump-dom", url, cwd=str(tmp_path)).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-rendered="' in body, dom[:2000]
    st = hypertrace("stats", s, "--json").stdout
    import json
    streams = [x for x in json.loads(st)["streams"] if x.get("file")]
    assert 'data-lanes="%d"' % len(streams) in body
    assert 'data-domains="2"' in body
    errors = re.search(r'<div id="errors">(.*?)</div>', dom, re.S).group(1)
    assert errors.strip() == "", errors
    status = re.search(r'<div id="status">(.*?)</div>', dom, re.S).group(1)
    # a sync point is drawn when both its guest and host records survived
    guest_syncs = hypertrace("sql", s, "select count(*) from events where name = "
                             "'hypertrace_sync'", "--csv").stdout.split()[-1]
    assert "spans" in status and "%s sync points" % guest_syncs in status, status
    assert int(guest_syncs) >= 1
    lost = int(re.search(r"(\d+) lost events marked", status).group(1))
    discarded = sum(x["discarded"] for x in streams)
    assert lost == discarded and discarded > 0
    assert "<title>hypertrace: s</title>" in dom and "pwned" not in dom.split("</title>")[0]
    # request spans are in the stats tables
    assert "local/request" in dom
    png = tmp_path / "shot.png"
    r = chromium("--screenshot=%s" % png, url, cwd=str(tmp_path))
    assert png.exists(), r.stderr[-2000:]
    from PIL import Image
    im = Image.open(png).convert("RGB")
    assert im.size == (1400, 1000)
    # the timeline area is drawn: many colours, and far from one flat background
    crop = im.crop((260, 100, 1380, 400))
    colours = crop.getcolors(maxcolors=1 << 20)
    assert len(colours) > 20
    top = max(colours)[0]
    assert top < 0.9 * crop.size[0] * crop.size[1], "the timeline is nearly blank"
