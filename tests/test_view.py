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


# two processes of two threads each, every thread with a counter; a lone event, a
# pause, then the burst the view should open on
GROUPED = r"""
import multiprocessing as mp, threading, time, sys
from hypertrace import guest
tick = guest.event("tick", "uint32_t i")
level = guest.event("level", "uint32_t fill, int32_t delta", counter=True)

def work(base):
    for i in range(300):
        tick(i)
        level(base + i % 50, 25 - i % 50)
        time.sleep(0.0005)

def proc(p):
    ts = [threading.Thread(target=work, args=(100 * p + 10 * k,), name="w%d.%d" % (p, k))
          for k in range(2)]
    [t.start() for t in ts]
    [t.join() for t in ts]

if __name__ == "__main__":
    tick(0)
    time.sleep(float(sys.argv[1]))
    ps = [mp.Process(target=proc, args=(p,)) for p in range(2)]
    [p.start() for p in ps]
    [p.join() for p in ps]
"""


def _page_state(url: str, dblclick: bool = False) -> dict:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            pg = b.new_page(viewport={"width": 1400, "height": 1000})
            pg.goto(url)
            pg.wait_for_function("document.body.dataset.rendered")
            if dblclick:
                box = pg.locator("#tl").bounding_box()
                pg.mouse.dblclick(box["x"] + box["width"] / 2, box["y"] + 40)
            st = pg.evaluate("Object.assign({}, document.body.dataset)")
            st["errors"] = pg.locator("#errors").text_content()
            st["shot"] = pg.locator("#tl").screenshot()
            return st
        finally:
            b.close()


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium is not installed (./test.sh installs it)")
def test_view_groups_processes_draws_counters_and_opens_on_the_activity(tmp_path):
    import io
    import json

    from PIL import Image
    app = tmp_path / "grouped.py"
    app.write_text(GROUPED)
    s = str(tmp_path / "s")
    record(s, sys.executable, str(app), "1.5")
    hypertrace("view", s)
    url = "file://" + s + ".html"
    st = _page_state(url)
    assert st["errors"].strip() == "", st["errors"]
    rows = json.loads(st["rows"])
    streams = [x for x in json.loads(hypertrace("stats", s, "--json").stdout)["streams"]
               if x["domain"] == "local"]
    workers = sorted((x["pid"], x["tid"], x["thread"]) for x in streams
                     if x["thread"].startswith("w"))
    assert len(workers) == 4 and len({p for p, _, _ in workers}) == 2
    # under the `local` domain header: each process's header, its threads by tid, then
    # one counter track per numeric field per thread that counted
    texts = [(k, t) for k, _, t in rows]
    start = texts.index(("domain", "local"))
    for pid in sorted({p for p, _, _ in workers}):
        at = texts.index(("process", "local · pid %d" % pid), start)
        mine = [x for x in workers if x[0] == pid]
        lanes = [t for k, t in texts[at + 1:at + 1 + len(mine)] if k == "lane"]
        assert lanes == ["%s (tid %d)" % (n, tid) for _, tid, n in mine], texts
        ctrs = texts[at + 1 + len(mine):at + 1 + 3 * len(mine)]
        assert ctrs == [("counter", "level.%s (tid %d)" % (f, tid))
                        for _, tid, _ in mine for f in ("fill", "delta")], texts
    assert int(st["counters"]) == 8
    # counter values are not drawn as ticks: a counter track is a filled area, so
    # many of its pixels differ from the white background
    im = Image.open(io.BytesIO(st["shot"])).convert("RGB")
    _, y, _ = next(r for r in rows if r[0] == "counter")
    band = im.crop((260, y + 4, im.size[0] - 10, y + 30))
    white = band.getcolors(1 << 20)
    n = band.size[0] * band.size[1]
    assert sum(c for c, rgb in white if rgb != (255, 255, 255)) > 0.05 * n
    # it opens on the burst, not on the whole session (the lone first event, the pause)
    span = json.loads(open(s + ".html", encoding="utf-8").read().split(
        '<script type="application/json" id="data">')[1].split("</script>")[0])["span_ns"]
    v0, v1 = map(int, st["view"].split(","))
    assert st["view"] == st["focus"] and 0 < v1 - v0 < span / 2
    # ... holding most of the guest (non-host) events, and not the lone first one
    t0 = int(hypertrace("sql", s, "select min(ts) from events", "--csv").stdout.split()[-1])
    inside, total, first = (int(x) for x in hypertrace(
        "sql", s, "select count(*) filter (where ts between %d and %d), count(*), min(ts) "
        "from events where domain <> 'host'" % (t0 + v0, t0 + v1), "--csv").stdout.split()[-1]
        .split(","))
    assert inside >= 0.9 * total and first - t0 < v0, (inside, total, first - t0, v0, v1)
    # a double-click shows the whole session; a #from=&to= link still wins
    assert _page_state(url, dblclick=True)["view"] == "0,%d" % span
    assert _page_state(url + "#from=1000&to=5000")["view"] == "1000,5000"
