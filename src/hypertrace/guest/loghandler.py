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
`record.getMessage()`, with the formatted traceback when the record has exc_info.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

LOG_ARGS = ("uint32_t level, const char *logger, const char *message, const char *file, "
            "uint32_t line, const char *function")
_fmt = logging.Formatter()


def _event() -> Callable:
    from . import event
    return event("python_log", LOG_ARGS)


def _emit(tp: Callable, record: logging.LogRecord) -> None:
    msg = record.getMessage()
    if record.exc_info:
        msg = "%s\n%s" % (msg, _fmt.formatException(record.exc_info))
    elif record.exc_text:
        msg = "%s\n%s" % (msg, record.exc_text)
    lv = record.levelno
    tp(lv if 0 <= lv <= 0xFFFFFFFF else 0, record.name, msg, record.pathname,
       record.lineno if 0 <= record.lineno <= 0xFFFFFFFF else 0, record.funcName or "")


class Handler(logging.Handler):
    """A handler whose output is one event per record (no formatting, no lock: the
    tracepoint is thread-safe and never blocks)."""

    def __init__(self, level: int = logging.NOTSET):
        super().__init__(level)
        self._tp = _event()

    def handle(self, record: logging.LogRecord) -> bool:
        rv = self.filter(record)
        if rv:
            self.emit(record)
        return bool(rv)

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

    def call_handlers(self: logging.Logger, record: logging.LogRecord) -> None:
        try:
            _emit(tp, record)
        except Exception:       # tracing never breaks the program's logging
            pass
        original(self, record)

    _captured = original
    logging.Logger.callHandlers = call_handlers   # type: ignore[method-assign]
