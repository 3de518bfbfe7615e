"""Guest-side tracing API (standard library only, Python >= 3.8).

    from hypertrace import guest
    tick = guest.event("app_tick", "uint64_t n, int32_t delta, const char *msg")
    tick(1, -2, "hello")            # no-op unless a channel is connected and enabled

    ev = guest.load("trace-events")  # QEMU trace-events syntax
    ev.app_tick(1, -2, "hello")

    db = guest.span("db_query", "uint32_t k")   # db_query_begin / db_query_end
    with db(7):
        ...

The channel comes from $HYPERTRACE_CHANNEL (set by `hypertrace record`) or
from guest.connect(spec, clock=...). With no channel, tracepoints stay
disabled and never raise.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Callable, Dict, List, Optional

from .. import abi
from .accel import ACCELERATED, clock_info, default_clock, fork_done, invalidate
from .channel import Channel, ChannelError, parse_spec, warn
from .control import Control, ControlError
from .spans import RESERVED as _SPAN_FIELDS
from .spans import Span
from .spans import make as _make_span
from .tracepoint import TraceArgumentError, build, set_cell

__all__ = ["event", "span", "load", "connect", "disconnect", "connected", "channel", "sync_point",
           "Events", "Span", "ChannelError", "ControlError", "TraceArgumentError", "ACCELERATED",
           "clock_info"]

_lock = threading.Lock()
_tls = threading.local()
_tracepoints: Dict[str, Callable] = {}
_channel: Optional[Channel] = None
_control: Optional[Control] = None
_sync_tp: Optional[Callable] = None
_env_checked = False
# connecting (from the environment or by connect()) is one step for every other thread:
# one that declares meanwhile waits for it, instead of getting a tracepoint that is
# not attached yet and drops its records uncounted
_connecting = threading.RLock()
_in_connect = False
_env_done = False
_default_clock = default_clock()


def _claim():
    ch = _channel
    if ch is None:
        return None
    return ch.claim(_tls)


def _fresh_tls() -> None:
    """Forget every thread's ring (connect, disconnect): writers never outlive a channel."""
    global _tls
    _tls = threading.local()
    invalidate()
    for tp in _tracepoints.values():
        set_cell(tp, "_tls", _tls)


class Events:
    """The tracepoints of a trace-events file: `ev.NAME`, or `ev["NAME"]` for every
    name (one such as `__class__` is the object's own attribute), in file order when
    iterated. Its own state is kept under names no C identifier can be."""

    def __init__(self, tps: List[Callable]):
        self.__dict__["\u0127list"] = tps
        self.__dict__["\u0127names"] = {tp.name: tp for tp in tps}

    def __getattr__(self, name: str) -> Callable:
        try:
            return self.__dict__["\u0127names"][name]
        except KeyError:
            raise AttributeError("no event %r in this file" % name) from None

    def __getitem__(self, name: str) -> Callable:
        return self.__dict__["\u0127names"][name]

    def __contains__(self, name: object) -> bool:
        return name in self.__dict__["\u0127names"]

    def __dir__(self) -> List[str]:
        return sorted(self.__dict__["\u0127names"])

    def __iter__(self):
        return iter(self.__dict__["\u0127list"])

    def __len__(self) -> int:
        return len(self.__dict__["\u0127list"])


def event(name: str, args: str = "void", disabled: bool = False,
          counter: bool = False, fmt: str = "") -> Callable:
    """Declare an event (`args` in C syntax as in QEMU trace-events); returns its tracepoint.
    A `counter` event's numeric arguments are also drawn as counter tracks by the views.
    `fmt` is its printf format (`"x=%d"`, as C's printf takes it; a trace-events file
    writes the same with quotes and PRI macros): `hypertrace report --format qemu`
    prints the event with it. Raises ValueError for a bad declaration, or one that
    conflicts with an event of the same name already declared in this process."""
    for what, v in (("name", name), ("args", args), ("fmt", fmt)):
        if not isinstance(v, str):
            raise ValueError("event %s must be a str, not %s" % (what, type(v).__name__))
    if fmt.endswith("\n"):
        raise ValueError("event %s: format must not end with a newline character (as "
                         "QEMU's tracetool says: the log adds one)" % name)
    if fmt:
        fmt = '"%s"' % fmt.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return _register([abi.make_decl(name, args, disabled, fmt=fmt, counter=counter)])[0]


def span(name: str, args: str = "void") -> Span:
    """Declare a span: the events NAME_begin (`uint64_t span, uint64_t task`, then
    `args`) and NAME_end (`uint64_t span, uint64_t task, const char *error`), which
    the views pair into slices. `with sp(values...):` or `@sp(values...)` emits the
    pair around a block or each call (guest/spans.py). Raises ValueError as event()
    does, or when `args` declares a field named span or task."""
    if not isinstance(name, str) or not isinstance(args, str):
        raise ValueError("span name and args must be str")
    fields = abi.make_decl(name + "_begin", args).fields
    taken = [a for a, _, _ in fields if a in _SPAN_FIELDS]
    if taken:
        raise ValueError("span %s: field %r is the span's own (span and task are)"
                         % (name, taken[0]))
    user = ", ".join("%s %s" % (ct, a) for a, ct, _ in fields)
    begin = event(name + "_begin", "uint64_t span, uint64_t task" + (", " + user if user else ""))
    end = event(name + "_end", "uint64_t span, uint64_t task, const char *error")
    return _make_span(name, begin, end, len(fields))


def load(path: str) -> Events:
    """Declare every event of a QEMU-style trace-events file, all or none: the whole
    file is parsed and checked against the events already declared before the first
    is declared. Raises OSError if unreadable, ValueError `path:line: cause` (also for a
    file over abi.MAX_FILE_SIZE bytes or a line over abi.MAX_LINE: read in bounded
    chunks, so /dev/zero or an endless FIFO is refused, not read into memory)."""
    found = abi.load_file(path)
    return Events(_register([d for _, d in found],
                            lambda i: "%s:%d: " % (path, found[i][0])))


def _register(decls: List[abi.EventDecl], where: Callable[[int], str] = lambda i: ""
              ) -> List[Callable]:
    """Tracepoints for `decls`: checked all first (a conflict with an event already
    declared raises before anything is declared), then built and attached."""
    _connect_from_env()
    with _lock:
        for i, decl in enumerate(decls):
            tp = _tracepoints.get(decl.name)
            if tp is not None and tp.signature != decl.signature:
                raise ValueError("%sevent %s already declared as %s"
                                 % (where(i), decl.name, tp.signature))
        out = []
        new = []
        for decl in decls:
            tp = _tracepoints.get(decl.name)
            if tp is None:
                if decl.fmt and decl.slot_text == decl.signature:
                    warn("event %s: its format is left out of the declaration (signature "
                         "and format exceed %d bytes): it records, QEMU-style printing "
                         "shows its fields" % (decl.name, abi.DECL_TEXT_MAX))
                tp = build(decl, _tls, _claim, _default_clock)
                _tracepoints[decl.name] = tp
                new.append(tp)
            elif tp.refused:
                # declared again: say again why it records nothing
                warn("event %s records nothing: %s" % (tp.name, tp.refused))
            out.append(tp)
        if _channel is not None:
            _channel.attach_all(new, _tls)
        return out


def connect(spec: Optional[str] = None, clock: Optional[Callable[[], int]] = None,
            sync_interval: Optional[float] = None) -> Channel:
    """Connect to a channel; `clock` returns the guest time in ns (CLOCK_MONOTONIC by default).

    The default clock is CLOCK_MONOTONIC, read from the TSC where the accelerator can
    (guest/accel.py; clock_info() says how and to what error).
    `spec` is `shm:/dev/shm/NAME[,control=unix:PATH]`; with a control address, a
    daemon thread runs clock exchanges every `sync_interval` seconds and
    sync_point() is available.
    """
    global _in_connect, _env_done
    with _connecting:
        _in_connect = True
        try:
            return _connect(spec, clock, sync_interval)
        finally:
            _in_connect = False
            _env_done = True


def _connect(spec: Optional[str], clock: Optional[Callable[[], int]],
             sync_interval: Optional[float]) -> Channel:
    global _channel, _env_checked, _control, _sync_tp
    _env_checked = True
    spec = spec or os.environ.get("HYPERTRACE_CHANNEL")
    if not spec:
        raise ChannelError("no channel given and HYPERTRACE_CHANNEL is not set")
    path, options = parse_spec(spec)
    clock = clock or _default_clock
    if sync_interval is None:
        try:
            sync_interval = float(os.environ.get("HYPERTRACE_SYNC_INTERVAL", "1.0"))
        except ValueError:
            raise ChannelError("HYPERTRACE_SYNC_INTERVAL must be a number of seconds") from None
    with _lock:
        if _channel is not None:
            raise ChannelError("already connected to %s; disconnect() first" % _channel.path)
        ch = Channel(path, clock)
    if "control" not in options and spec.split(",")[0].split(":")[0] == "ivshmem":
        # in a QEMU guest the control path is the virtio-serial port named after the region
        from .devices import PORT_PREFIX, find_port
        port = find_port(PORT_PREFIX + ch.header.name)
        if port:
            options["control"] = "virtio:" + port
    control = None
    if "control" in options:
        _sync_tp = event("hypertrace_sync",
                         "const char *name, uint64_t sync_id, uint64_t t_send, const char *args")
        # hello before any tracepoint is attached: the host learns this process's boot
        # before the process claims a ring
        try:
            control = Control(options["control"], clock, ch.header.session_id, sync_interval,
                              on_sync=lambda n, i, t, a: _sync_tp(n, i, t, a),
                              # HYPERTRACE_CLOCK=socket: exchanges over the control
                              # connection even where the host serves mailboxes
                              mailbox=None if os.environ.get("HYPERTRACE_CLOCK") == "socket"
                              else ch.claim_mailbox)
        except ControlError:
            ch.close()
            raise
    with _lock:
        if _channel is not None:        # another thread connected meanwhile
            ch.close()
            if control is not None:
                control.closed.set()
            raise ChannelError("already connected to %s; disconnect() first" % _channel.path)
        _fresh_tls()
        ch.attach_all(list(_tracepoints.values()), _tls)
        _channel = ch
        ch.start_poller()
        _control = control
    if control is not None:
        control.start()
    return ch


def sync_point(name: str, *args) -> int:
    """A synchronous reference point: recorded in this guest's stream (guest clock) and
    in the host's stream (host clock); blocks until the host acknowledges and
    returns the round trip in ns of the guest clock. Raises ControlError without a
    control channel or when the host does not answer."""
    _connect_from_env()
    ctl = _control
    if ctl is None:
        raise ControlError("sync_point needs a channel with a control connection "
                           "(spec ...,control=unix:PATH, as `hypertrace record` sets)")
    return ctl.sync(str(name), args)


def disconnect() -> None:
    """Final clock exchanges, then release this process's rings and disable every tracepoint."""
    global _channel, _control
    ctl, _control = _control, None
    _goodbye(ctl, _channel)
    with _lock:
        ch, _channel = _channel, None
        if ch is None:
            return
        ch.close()
        for tp in _tracepoints.values():
            set_cell(tp, "_on", False)
            tp.enabled = False
        _release_thread()
        _fresh_tls()


def connected() -> bool:
    return _channel is not None


def channel() -> Optional[Channel]:
    """The connected channel (connecting from $HYPERTRACE_CHANNEL if set), or None."""
    _connect_from_env()
    return _channel


def ring_room() -> Optional[int]:
    """Bytes the calling thread's ring takes now without dropping a record, for a producer
    that can hold its data back rather than lose it (the kernel agent: ftrace's own ring
    then waits, and counts what it overwrites). None: no ring yet, or overwrite mode
    (nothing is dropped there, the oldest records are)."""
    w = getattr(_tls, "w", None)
    if w is None or w.released or w.mode == abi.MODE_OVERWRITE:
        return None
    return w.size - (w.pos - w._consumed(w.pos))


def _emit_mark() -> tuple:
    """This thread's writer and its drop count now: with _written_since, whether a
    record emitted in between reached a ring (function tracing's declarations)."""
    w = getattr(_tls, "w", None)
    return w, (w.discarded if w is not None else 0)


def _written_since(mark: tuple) -> bool:
    w = getattr(_tls, "w", None)
    if w is None or w.released:
        return False
    return w.discarded == (mark[1] if w is mark[0] else 0)


def _release_thread() -> None:
    w = getattr(_tls, "w", None)
    if w is not None:
        w.release()
        del _tls.w
        del _tls.holder
        invalidate()


def _connect_from_env() -> None:
    global _env_checked, _env_done
    if _env_done:
        return
    with _connecting:                 # another thread's connect: wait for its end
        if _env_done or _in_connect:  # done, or re-entered from this thread's connect
            return
        if not _env_checked:
            _env_checked = True
            spec = os.environ.get("HYPERTRACE_CHANNEL")
            if spec and _channel is None:
                try:
                    connect(spec)
                except (ChannelError, OSError, ValueError) as e:
                    warn("tracing disabled: %s" % e)
        _env_done = True


def _after_fork_in_child() -> None:
    # Only the forking thread exists in the child: a lock another thread held at the
    # fork (the clock thread's, during an exchange) would stay locked for ever.
    global _lock, _connecting
    _lock = threading.Lock()
    _connecting = threading.RLock()
    if _control is not None:
        _control.after_fork()
    # the child must never write into the parent's rings: forget this thread's
    # writer (without releasing it: the parent still owns it) and restart the poller
    for attr in ("w", "holder"):
        if hasattr(_tls, attr):
            delattr(_tls, attr)   # the holder's release() sees another pid: a no-op
    invalidate()
    ch = _channel
    if ch is not None:
        try:
            ch.after_fork()
        except OSError:
            pass                  # reopened lazily by the next claim, which reports it
    dropped = fork_done()         # C records of at-fork hooks that ran before this one
    if dropped and ch is not None:
        ch.count(lost=dropped)
    if ch is not None and not ch.closed:
        ch.start_poller()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
def _goodbye(ctl: Optional[Control], ch: Optional[Channel]) -> None:
    """The closing burst of clock exchanges and the goodbye. Counts that found every
    counter slot of the region held (a co-producer can hold them all) go to the host
    in the goodbye instead (ABI 1.4), so that they are never lost with the process."""
    counts = (0, 0)
    if ch is not None:
        ch.give_up_declarations()      # still waiting for a slot: refused after all
        ch.publish()                   # one more pass over the counter slots
        counts = ch.take_pending()
    sent = ctl.close(*counts) if ctl is not None else False
    if ch is not None and not sent:
        ch.give_back(counts)           # no goodbye: left for a later publish
        ch.publish()


def _at_exit() -> None:
    _release_thread()
    _goodbye(_control, _channel)


atexit.register(_at_exit)
