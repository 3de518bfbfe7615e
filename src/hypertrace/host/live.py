"""Runtime control of a live recording: `hypertrace ctl DIR enable|disable|status`.

The recorder listens on DIR/.hypertrace/ctl.sock (mode 0600: the host user
only; guests never see it). A request is one JSON line, the answer one JSON
line. Enabling or disabling writes the enable bytes in the shared regions, which
every producer's poller mirrors into its tracepoints within 5 ms: nothing is
added to the emit path. Patterns are kept, in order, and applied to events
declared later too (as LTTng's enable-event does). Requests are served from the
recorder's own loop, between two drains, so they see consistent counts.

Serving never blocks the drain: every socket is non-blocking, each connection has
its own buffers and one deadline counted from its accept (not renewed by a byte),
a request is at most MAX_REQUEST bytes and MAX_DEPTH levels of JSON nesting
(checked before parsing), and at most MAX_CLIENTS connections are kept (the
oldest is dropped for a new one).
"""

from __future__ import annotations

import collections
import fnmatch
import json
import os
import socket
import stat
import time
from typing import Callable, Dict, List, Optional, Tuple

from .collector import SESSION_DIR, Collector
from .errors import describe

SOCKET = "ctl.sock"
MAX_REQUEST = 4096
MAX_DEPTH = 8                  # JSON nesting of a request ({"cmd": ...} needs 1)
MAX_CLIENTS = 8
CLIENT_DEADLINE_S = 2.0        # from accept to the last byte of the answer
MAX_ACCEPTS = 16               # new connections taken per serve() call
MAX_RULES = 1024               # distinct (domain, event) patterns kept
MAX_LOG = 1000                 # enable/disable changes listed in the index (the latest)
MAX_CHANGED = 64               # events named per change in that list


class LiveError(Exception):
    """No live recording answers at that directory, or it refused the request."""


def socket_path(outdir: str) -> str:
    return os.path.join(outdir, SESSION_DIR, SOCKET)


class Rules:
    """Enable/disable patterns; the latest rule for a (domain, event) pattern pair
    replaces an earlier one, and the last matching rule decides. Bounded: a trigger
    firing forever adds no state, and at most MAX_RULES distinct pairs are kept."""

    def __init__(self, col: Collector):
        self.col = col
        #: (domain glob, event glob) -> on, in the order last set
        self.rules: Dict[Tuple[str, str], bool] = {}
        self.seen: Dict[int, set] = {}                  # source -> declarations applied

    def add(self, pattern: str, on: bool, domain: str = "*") -> List[str]:
        """Apply now and to later declarations; returns the `domain/event`s it changed."""
        key = (domain, pattern)
        if key not in self.rules and len(self.rules) >= MAX_RULES:
            raise ValueError("too many distinct enable/disable patterns (%d)" % MAX_RULES)
        self.rules.pop(key, None)             # latest last: it decides over earlier ones
        self.rules[key] = on
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
        """Rules for events declared since the last call (from the recorder's loop): each
        declaration is looked at once."""
        if not self.rules:
            return
        for n, src in enumerate(self.col.sources):
            decls = src.events.decls
            done = self.seen.setdefault(n, set())
            if len(done) == len(decls):
                continue
            rules = [(dom, pat, on) for (dom, pat), on in self.rules.items()
                     if fnmatch.fnmatchcase(src.domain.name, dom)]
            for i, d in decls.items():
                if i in done:
                    continue
                done.add(i)
                state = None
                for _dom, pat, on in rules:
                    if fnmatch.fnmatchcase(d.name, pat):
                        state = on
                if state is not None and src.region.enabled(i) != state:
                    src.region.set_enabled(i, state)


def json_depth(data: bytes) -> int:
    """The deepest nesting of [ and { in a JSON text (outside strings), in one pass:
    json.loads recurses, so a deep request is refused before it is parsed."""
    depth = deepest = 0
    in_str = esc = False
    for c in data:
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:            # backslash
                esc = True
            elif c == 0x22:            # quote
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x5B, 0x7B):        # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest


class _Client:
    """One connection: what came in, what goes out, and when it must be done."""

    def __init__(self, conn: socket.socket, now: float):
        self.conn = conn
        self.deadline = now + CLIENT_DEADLINE_S
        self.inbuf = bytearray()
        self.out: Optional[memoryview] = None      # the answer, once there is one


class LiveServer:
    """The recorder's end: non-blocking, served by calling serve() from its loop."""

    def __init__(self, outdir: str, col: Collector, rules: Rules,
                 on_change: Optional[Callable[[str, str, str, int], None]] = None):
        self.path = socket_path(outdir)
        self.col, self.rules, self.on_change = col, rules, on_change
        # bound and removed through the session's checked `.hypertrace` descriptor: a
        # directory swapped in after the check redirects neither (the name is new there)
        self.meta_fd = col.meta.fd
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind("/proc/self/fd/%d/%s" % (self.meta_fd, SOCKET))
        finally:
            os.umask(old)
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.log: List[dict] = []
        self.log_total = 0
        self.clients: collections.OrderedDict[int, _Client] = collections.OrderedDict()
        self.dropped = 0            # connections closed unanswered (deadline, eviction)

    def serve(self) -> None:
        """Move every connection on as far as it goes without waiting: accept, read,
        answer a complete request, send; drop what is past its deadline."""
        now = time.monotonic()
        for _ in range(MAX_ACCEPTS):
            try:
                conn, _ = self.sock.accept()
            except OSError:            # BlockingIOError: nobody waiting
                break
            conn.setblocking(False)
            if len(self.clients) >= MAX_CLIENTS:
                self._drop(next(iter(self.clients)), "too many connections")
            self.clients[conn.fileno()] = _Client(conn, now)
        for key, c in list(self.clients.items()):
            try:
                self._step(c, now)
            except OSError:
                self._drop(key, "")
                continue
            if c.out is not None and not c.out:
                self._close(key)
            elif now > c.deadline:
                self._drop(key, "too slow")

    def _step(self, c: _Client, now: float) -> None:
        if c.out is None:
            while True:
                try:
                    chunk = c.conn.recv(MAX_REQUEST + 1)
                except BlockingIOError:
                    return
                if chunk:
                    c.inbuf += chunk
                if len(c.inbuf) > MAX_REQUEST:
                    c.out = self._answer(ValueError("request longer than %d bytes"
                                                    % MAX_REQUEST))
                    break
                if b"\n" in c.inbuf or not chunk:
                    c.out = self._answer(bytes(c.inbuf.split(b"\n", 1)[0]))
                    break
        while c.out:
            try:
                n = c.conn.send(c.out)
            except BlockingIOError:
                return
            c.out = c.out[n:]

    def _answer(self, req) -> memoryview:
        """The reply line to one request (or to what was wrong with it); never raises."""
        try:
            if isinstance(req, Exception):
                raise req
            reply = self.handle(self._parse(req))
        except Exception as e:       # a bad request, or a command that failed: answered
            reply = {"ok": False, "error": str(e) if isinstance(e, (ValueError, OSError))
                     else describe(e)}
        return memoryview((json.dumps(reply) + "\n").encode())

    @staticmethod
    def _parse(data: bytes) -> dict:
        if json_depth(data) > MAX_DEPTH:
            raise ValueError("request nested deeper than %d levels" % MAX_DEPTH)
        req = json.loads(data.decode("utf-8").strip() or "null")
        if not isinstance(req, dict):
            raise ValueError("a request is a JSON object")
        return req

    def _drop(self, key: int, why: str) -> None:
        c = self.clients.get(key)
        if c is not None and why and c.out is None:
            try:             # a last word if it fits in the socket buffer; never waits
                c.conn.send((json.dumps({"ok": False, "error": why}) + "\n").encode())
            except OSError:
                pass
        self.dropped += 1
        if why:
            self.col.errors.add("live control: connection dropped unanswered: %s" % why)
        self._close(key)

    def _close(self, key: int) -> None:
        c = self.clients.pop(key, None)
        if c is not None:
            try:
                c.conn.close()
            except OSError:
                pass

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
                         "domain": domain, "changed": changed[:MAX_CHANGED]})
        self.log_total += 1
        del self.log[:-MAX_LOG]            # the index lists the latest; `hypertrace_ctl`
                                           # events in the trace have every one
        if self.on_change is not None:
            self.on_change("enable" if on else "disable", pattern, domain, len(changed))
        return changed

    def close(self) -> None:
        for key in list(self.clients):
            self._close(key)
        self.sock.close()
        try:
            os.unlink(SOCKET, dir_fd=self.meta_fd)
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


MAX_REPLY = 64 << 20            # a status of 65 534 events per domain fits many times


def request(outdir: str, req: dict, timeout: float = 5.0) -> dict:
    """Send one request to the recorder writing `outdir`. The socket must be ours, in a
    `.hypertrace` directory of ours that nobody else can write (a directory from
    elsewhere could hold anyone's listening socket); it is reached through that
    directory's descriptor, so nothing can be swapped in between the check and the
    connect. The reply is bounded in size and time."""
    try:
        top = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise LiveError("no live recording at %s (%s)" % (outdir, e.strerror)) from None
    try:
        try:
            meta = os.open(SESSION_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW |
                           os.O_CLOEXEC, dir_fd=top)
        except OSError:
            raise LiveError("no live recording at %s (is `hypertrace record -o %s` "
                            "running?)" % (outdir, outdir)) from None
        try:
            st = os.fstat(meta)
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                raise LiveError("%s/%s is not a private directory of yours: its control "
                                "socket is not trusted" % (outdir, SESSION_DIR))
            try:
                sst = os.lstat(SOCKET, dir_fd=meta)
            except FileNotFoundError:
                raise LiveError("no live recording at %s (is `hypertrace record -o %s` "
                                "running?)" % (outdir, outdir)) from None
            if not stat.S_ISSOCK(sst.st_mode) or sst.st_uid != os.geteuid():
                raise LiveError("%s is not a control socket of yours: refused"
                                % socket_path(outdir))
            return _exchange("/proc/self/fd/%d/%s" % (meta, SOCKET), outdir, req, timeout)
        finally:
            os.close(meta)
    finally:
        os.close(top)


def _exchange(path: str, outdir: str, req: dict, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    chunks: List[bytes] = []
    size = 0
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((json.dumps(req) + "\n").encode())
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LiveError("the recording at %s did not answer within %g s"
                                % (outdir, timeout))
            s.settimeout(left)
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY:
                raise LiveError("the recording at %s sent a reply over %d MiB"
                                % (outdir, MAX_REPLY >> 20))
            if chunk.endswith(b"\n"):
                break
    except OSError as e:
        raise LiveError("the recording at %s does not answer: %s" % (outdir, e)) from None
    finally:
        s.close()
    try:
        reply = json.loads(b"".join(chunks).decode("utf-8"))
    except (ValueError, RecursionError):
        raise LiveError("the recording at %s sent a bad reply" % outdir) from None
    if type(reply) is not dict:
        raise LiveError("the recording at %s sent a bad reply" % outdir)
    if reply.get("ok") is not True:
        err = reply.get("error")
        raise LiveError(err[:200] if type(err) is str else "refused")   # cli escapes it
    return reply
