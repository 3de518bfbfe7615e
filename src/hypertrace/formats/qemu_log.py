"""`hypertrace report --format qemu`: each event as QEMU's `log` trace backend with
`-msg timestamp=on` prints it,

    TID@SECONDS.MICROSECONDS:name formatted-text

QEMU writes `qemu_log("%d@%zu.%06zu:name " fmt "\\n", tid, tv_sec, tv_usec, args...)`
with gettimeofday(). Here the time is the event's own on the session's host
timeline (ns since the epoch, truncated to the µs as tv_usec is), TID the thread
id of the stream that recorded it (0 when the index does not know it), and the
text the event's trace-events format applied to its fields by formats/cprintf,
byte for byte what glibc's printf would write.

Where the format cannot be used, nothing is guessed: an event declared without a
format prints `name k=v k=v...` (the fields as `report` shows them); one whose
format does not fit its fields (too few arguments, `%s` of an int, an unknown
macro: a session is untrusted and its formats too) prints
`name [format not applied: why] k=v...`. Events of the `qemu` domain (QEMU's own
log lines, re-emitted by the recorder as `name(uint32_t tid, const char *args)`)
print as QEMU wrote them: their own tid, then their text.

The output is for a terminal: bytes that are not UTF-8 (a `%.1s` cutting a
character) are shown as \\xNN, and so is every control character, newlines and
tabs of the format included (analysis/text.printable): one event, one line. An
event whose record was cut short (`[truncated]` in `report`) keeps that mark.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

from .. import abi
from ..analysis.text import printable
from .cprintf import Format, FormatError, compile_format

__all__ = ["QemuLog", "show_value"]


def show_value(v: object) -> str:
    """A field as `report` shows it: strings quoted as JSON, bytes as hex (not yet
    made printable)."""
    import json
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return str(v)


def _fields(fields: Dict[str, object]) -> str:
    return " ".join("%s=%s" % (k, show_value(v)) for k, v in fields.items())


# QEMU's own events in a session (host/qemulog.py): their signature
_QEMU_DOMAIN = "qemu"
_QEMU_FIELDS = (("tid", "uint32_t"), ("args", "const char *"))


class QemuLog:
    """Lines of one session (formats compiled once per event type)."""

    def __init__(self, session):
        self.tids: Dict[str, int] = {}
        for st in session.streams:
            if st.get("file") and isinstance(st.get("tid"), int):
                self.tids[st["file"]] = st["tid"]
        self.decls: Dict[Tuple[str, str], abi.EventDecl] = {
            (dom, c.decl.name): c.decl for dom, cs in session.codecs.items()
            for c in cs.values()}
        self._compiled: Dict[Tuple[str, str], Union[Format, str, None]] = {}

    def _format(self, domain: str, name: str) -> Union[Format, str, None]:
        """The compiled format, the reason it cannot be used (str), or None if none."""
        key = (domain, name)
        if key not in self._compiled:
            d = self.decls.get(key)
            if d is None or not d.fmt:
                self._compiled[key] = None
            else:
                try:
                    self._compiled[key] = compile_format(d.fmt, d.fields)
                except FormatError as e:
                    self._compiled[key] = str(e)
                except Exception as e:  # noqa: BLE001 - a bug here must not stop the report
                    self._compiled[key] = "%s: %s" % (type(e).__name__, e)
        return self._compiled[key]

    def text(self, domain: str, name: str, fields: Dict[str, object]) -> Tuple[str, bool]:
        """What follows `name ` in the line, and whether the format was applied. Never
        raises: whatever goes wrong shows the raw fields, marked."""
        f = self._format(domain, name)
        if f is None:
            return _fields(fields), False
        if isinstance(f, str):
            return "[format not applied: %s] %s" % (f, _fields(fields)), False
        try:
            out = f.format(list(fields.values()))
        except Exception as e:       # noqa: BLE001 - a report line must always come out
            return "[format not applied: %s] %s" % (e, _fields(fields)), False
        return out.decode("utf-8", "backslashreplace"), True

    def line(self, e) -> str:
        """One session.Event as a QEMU log line (no newline), safe for a terminal."""
        tid: Optional[int] = self.tids.get(e.stream)
        text: Optional[str] = None
        if e.domain == _QEMU_DOMAIN and self._format(e.domain, e.name) is None:
            d = self.decls.get((e.domain, e.name))
            if d is not None and tuple((a, t) for a, t, _ in d.fields) == _QEMU_FIELDS:
                tid, text = e.fields["tid"], str(e.fields["args"])
        if text is None:
            text, applied = self.text(e.domain, e.name, e.fields)
            if not applied and not text:
                text = None         # no format, no field: the name alone
        sec, ns = divmod(e.ts, 1_000_000_000)
        # with a format QEMU writes "name " then the text, even when the text is empty
        line = "%d@%d.%06d:%s" % (tid or 0, sec, ns // 1000, e.name)
        if text is not None:
            line += " " + text
        return printable(line) + (" [truncated]" if e.truncated else "")
