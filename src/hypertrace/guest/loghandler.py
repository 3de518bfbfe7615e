"""`logging` into the trace: each record an event with its level, logger, message and
source location.

    import logging
    from hypertrace.guest.loghandler import Handler
    logging.getLogger().addHandler(Handler())

or, with no code change, `hypertrace record --logging -- python app.py` (capture():
every record any logger passes to its handlers, without adding one, so the
program's own `logging.basicConfig()` still configures the root logger).
The event is `python_log(uint32_t level, const char *logger, const char *message,
const char *file, uint32_t line, const char *function)`; the message is
`record.getMessage()`, with the formatted traceback when the record has exc_info;
one whose arguments do not format (a bad %-format) is recorded unformatted, with the
error, rather than not at all; one cut to fit a record says how much was cut.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

from ..abi.codec import STR_MAX  # a longer str is cut (guest/tracepoint.py)

LOG_ARGS = ("uint32_t level, const char *logger, const char *message, const char *file, "
            "uint32_t line, const char *function")
_fmt = logging.Formatter()
_SHORT = STR_MAX // 4   # a message of this many characters fits whatever they are


def _event() -> Callable:
    from . import event
    return event("python_log", LOG_ARGS)


def _fit(msg: str) -> str:
    """A message cut to a record's string, saying so (the tracepoint would cut it
    silently)."""
    b = msg.encode("utf-8", "surrogatepass")
    if len(b) <= STR_MAX:
        return msg
    keep = STR_MAX - 40                 # room for the note
    return b[:keep].decode("utf-8", "ignore") + " [... %d bytes cut]" % (len(b) - keep)


def _safe(how: Callable, x: object, n: int = 300) -> str:
    """str() or repr() of the program's object, whatever its methods raise."""
    try:
        return how(x)[:n]
    except Exception as e:
        return "<%s: %s raised %s>" % (type(x).__name__, how.__name__, type(e).__name__)


def _message(record: logging.LogRecord, msg: Optional[str] = None) -> str:
    """The record's message (`msg`: getMessage()'s, when the caller has it)."""
    try:
        if msg is None:
            msg = record.getMessage()
    except Exception as e:      # the program's bad format: its handlers report it too
        msg = "%s [not formatted: %s: %s; args %s]" % (
            _safe(str, record.msg), type(e).__name__, _safe(str, e), _safe(repr, record.args))
    if record.exc_info or record.exc_text:
        msg = "%s\n%s" % (msg, record.exc_text or _fmt.formatException(record.exc_info))
    return _fit(msg) if len(msg) > _SHORT else msg


def _emit(tp: Callable, record: logging.LogRecord, msg: Optional[str] = None) -> None:
    msg = _message(record, msg)
    lv, line = record.levelno, record.lineno
    try:
        tp(lv, record.name, msg, record.pathname, line, record.funcName or "")
    except (TypeError, ValueError):     # a level or line no uint32 holds, a name not a str
        tp(lv if isinstance(lv, int) and 0 <= lv <= 0xFFFFFFFF else 0, str(record.name), msg,
           str(record.pathname), line if isinstance(line, int) and 0 <= line <= 0xFFFFFFFF
           else 0, str(record.funcName or ""))


class Handler(logging.Handler):
    """A handler whose output is one event per record (no formatting, no lock: the
    tracepoint is thread-safe and never blocks)."""

    def __init__(self, level: int = logging.NOTSET):
        super().__init__(level)
        self._tp = _event()

    def handle(self, record: logging.LogRecord) -> bool:
        if self.filters:
            rv = self.filter(record)
            if not rv:
                return False
            if isinstance(rv, logging.LogRecord):       # 3.12: a filter may replace it
                record = rv
        # _emit's common case, inline: this handler's cost is a tenth of a FileHandler's
        try:
            m = record.getMessage()
            if record.exc_info or record.exc_text or len(m) > _SHORT:
                _emit(self._tp, record, m)
            else:
                self._tp(record.levelno, record.name, m, record.pathname,
                         record.lineno, record.funcName or "")
        except Exception:
            try:
                _emit(self._tp, record)     # the checked way
            except Exception:
                self.handleError(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _emit(self._tp, record)
        except Exception:
            self.handleError(record)


_captured: Optional[Callable] = None


def capture() -> None:
    """Record every log record that reaches any logger's handlers (Logger.callHandlers),
    as a handler on the root logger would, without adding one."""
    global _captured
    if _captured is not None:
        return
    tp = _event()
    original = logging.Logger.callHandlers
    # compiled under logging's own file name: a handler error's "Call stack:" report
    # (Handler.handleError) skips logging's frames, and so skips this one as well --
    # the program's stderr stays what it would be untraced
    ns = {"_emit": _emit, "_tp": tp, "_original": original}
    exec(compile(_WRAPPER, logging.__file__, "exec"), ns)
    _captured = original
    logging.Logger.callHandlers = ns["callHandlers"]   # type: ignore[method-assign]


_WRAPPER = """
def callHandlers(self, record):
    try:
        _emit(_tp, record)
    except Exception:       # tracing never breaks the program's logging
        pass
    _original(self, record)
"""
