"""Runtime control of a live recording: `hypertrace ctl DIR enable|disable|status`.

The recorder listens on DIR/.hypertrace/ctl.sock (mode 0600: the host user
only; guests never see it). A request is one JSON line, the answer one JSON
line. Enabling or disabling writes the enable bytes in the shared regions, which
every producer's poller mirrors into its tracepoints within 5 ms: nothing is
added to the emit path. Patterns are kept, in order, and applied to events
declared later too (as LTTng's enable-event does). Requests are served from the
recorder's own loop, between two drains, so they see consistent counts.
"""

from __future__ import annotations

import fnmatch
import json
import os
import socket
import time
from typing import Callable, Dict, List, Optional, Tuple

from .collector import SESSION_DIR, Collector

SOCKET = "ctl.sock"
MAX_REQUEST = 4096
CLIENT_TIMEOUT_S = 1.0


class LiveError(Exception):
    """No live recording answers at that directory, or it refused the request."""


def socket_path(outdir: str) -> str:
    return os.path.join(outdir, SESSION_DIR, SOCKET)


class Rules:
    """Enable/disable patterns in the order given; the last match decides."""

    def __init__(self, col: Collector):
        self.col = col
        self.rules: List[Tuple[str, str, bool]] = []    # (domain glob, event glob, on)
        self.seen: Dict[int, int] = {}                  # source -> declarations applied

    def add(self, pattern: str, on: bool, domain: str = "*") -> List[str]:
        """Apply now and to later declarations; returns the `domain/event`s it changed."""
        self.rules.append((domain, pattern, on))
        changed = []
        for src in self.col.sources:
            if not fnmatch.fnmatchcase(src.domain.name, domain):
                continue
            for i, d in src.events.decls.items():
                if fnmatch.fnmatchcase(d.name, pattern):
                    if src.region.enabled(i) != on:
                        changed.append("%s/%s" % (src.domain.name, d.name))
                    src.region.set_enabled(i, on)
        return changed

    def apply_new(self) -> None:
        """Rules for events declared since the last call (from the recorder's loop)."""
        if not self.rules:
            return
        for n, src in enumerate(self.col.sources):
            decls = src.events.decls
            if self.seen.get(n, 0) == len(decls):
                continue
            self.seen[n] = len(decls)
            for i, d in decls.items():
                state = None
                for dom, pat, on in self.rules:
                    if fnmatch.fnmatchcase(src.domain.name, dom) and \
                            fnmatch.fnmatchcase(d.name, pat):
                        state = on
                if state is not None and src.region.enabled(i) != state:
                    src.region.set_enabled(i, state)


class LiveServer:
    """The recorder's end: non-blocking, served by calling serve() from its loop."""

    def __init__(self, outdir: str, col: Collector, rules: Rules,
                 on_change: Optional[Callable[[str, str, str, int], None]] = None):
        self.path = socket_path(outdir)
        self.col, self.rules, self.on_change = col, rules, on_change
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(self.path)
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.log: List[dict] = []

    def serve(self) -> None:
        """Answer the requests waiting now (each client gets CLIENT_TIMEOUT_S)."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            with conn:
                conn.settimeout(CLIENT_TIMEOUT_S)
                try:
                    req = self._read(conn)
                    reply = self.handle(req)
                except (OSError, ValueError) as e:
                    reply = {"ok": False, "error": str(e)}
                try:
                    conn.sendall((json.dumps(reply) + "\n").encode())
                except OSError:
                    pass

    @staticmethod
    def _read(conn: socket.socket) -> dict:
        data = b""
        while b"\n" not in data:
            chunk = conn.recv(MAX_REQUEST)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ValueError("request too long")
        req = json.loads(data.decode("utf-8").strip() or "null")
        if not isinstance(req, dict):
            raise ValueError("a request is a JSON object")
        return req

    def handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd in ("enable", "disable"):
            pattern, domain = req.get("pattern"), req.get("domain") or "*"
            if not isinstance(pattern, str) or not pattern or not isinstance(domain, str):
                raise ValueError("enable/disable need a pattern")
            changed = self.add(pattern, cmd == "enable", domain)
            return {"ok": True, "changed": changed, "at_ns": time.monotonic_ns()}
        if cmd == "status":
            self.col.flush()         # buffered records into packets: counts are current
            return {"ok": True, "status": status(self.col)}
        raise ValueError("unknown command %r (enable, disable, status)" % (cmd,))

    def add(self, pattern: str, on: bool, domain: str = "*") -> List[str]:
        """A rule from `ctl` or a trigger: applied, logged, and traced on the host."""
        changed = self.rules.add(pattern, on, domain)
        self.log.append({"at_ns": time.monotonic_ns(), "enable": on, "pattern": pattern,
                         "domain": domain, "changed": changed})
        if self.on_change is not None:
            self.on_change("enable" if on else "disable", pattern, domain, len(changed))
        return changed

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def status(col: Collector) -> dict:
    streams = col.streams()
    out = []
    for src in col.sources:
        dom = src.domain.name
        mine = [s for s in streams if s["domain"] == dom]
        counts: Dict[str, int] = {}
        for s in mine:
            for k, v in s.get("per_event", {}).items():
                counts[k] = counts.get(k, 0) + v
        out.append({
            "domain": dom,
            "events": [{"id": i, "name": d.name, "enabled": src.region.enabled(i),
                        "recorded": counts.get(d.name, 0)}
                       for i, d in sorted(src.events.decls.items())],
            "rejected_declarations": dict(src.events.bad),
            "producers": [{k: s.get(k) for k in ("file", "pid", "tid", "thread", "recorded",
                                                 "discarded", "malformed", "torn")}
                          for s in mine]})
    return {"domains": out}


def request(outdir: str, req: dict, timeout: float = 5.0) -> dict:
    """Send one request to the recorder writing `outdir`."""
    path = socket_path(outdir)
    if not os.path.exists(path):
        raise LiveError("no live recording at %s (is `hypertrace record -o %s` running?)"
                        % (outdir, outdir))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall((json.dumps(req) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        raise LiveError("the recording at %s does not answer: %s" % (outdir, e)) from None
    finally:
        s.close()
    try:
        reply = json.loads(data.decode("utf-8"))
    except ValueError:
        raise LiveError("the recording at %s sent a bad reply" % outdir) from None
    if not reply.get("ok"):
        raise LiveError(reply.get("error", "refused"))
    return reply
