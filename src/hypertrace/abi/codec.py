"""Records in a ring: the header every record starts with, and the payload codec
built from an event's declaration (docs/abi.md)."""

from __future__ import annotations

import struct
from typing import List, Tuple

from .layout import align
from .signature import EventDecl

__all__ = ["REC_HEADER", "REC_HEADER_SIZE", "REC_ALIGN", "REC_MAX", "REC_SIZE_MASK",
           "REC_FLAG_TRUNCATED", "PAD_ID", "MAX_TS", "STR_MAX", "Codec"]

# --- records --------------------------------------------------------------
REC_HEADER = struct.Struct("<HHIQ")  # event id, size|flags, seq, timestamp
REC_HEADER_SIZE = 16
REC_ALIGN = 8
REC_MAX = 0xFFF8
REC_SIZE_MASK = 0xFFF8
REC_FLAG_TRUNCATED = 1
PAD_ID = 0xFFFF

MAX_TS = 1 << 62         # larger timestamps are rejected: ns + clock offset must fit in i64
STR_MAX = 1024           # bytes kept of a string or bytes argument


# --- record codec ----------------------------------------------------------
class Codec:
    """Decodes one event's payload; built from its declaration (host and tests)."""

    def __init__(self, decl: EventDecl):
        self.decl = decl
        self.names = [a for a, _, _ in decl.fields]
        # split the payload into runs of fixed-size fields and variable fields
        self.steps: List[Tuple[str, object]] = []
        run = ""
        for _, _, ft in decl.fields:
            if ft.kind in ("str", "bytes"):
                if run:
                    self.steps.append(("fixed", struct.Struct("<" + run)))
                    run = ""
                self.steps.append((ft.kind, None))
            else:
                run += ft.code
        if run:
            self.steps.append(("fixed", struct.Struct("<" + run)))
        var = any(k != "fixed" for k, _ in self.steps)
        fixed = sum(s.size for k, s in self.steps if k == "fixed")  # type: ignore[union-attr]
        #: total record size when the event has no variable field, else None
        self.fixed_size = None if var else align(REC_HEADER_SIZE + fixed, REC_ALIGN)

    def decode(self, buf, off: int, end: int) -> Tuple[list, int]:
        """Decode the payload at buf[off:end]; returns (values, payload end).

        Raises ValueError when a length runs past `end` (the record's size).
        """
        vals: list = []
        for kind, st in self.steps:
            if kind == "fixed":
                n = st.size  # type: ignore[union-attr]
                if off + n > end:
                    raise ValueError("payload overruns record")
                vals.extend(st.unpack_from(buf, off))  # type: ignore[union-attr]
                off += n
            else:
                if off + 2 > end:
                    raise ValueError("payload overruns record")
                ln = buf[off] | buf[off + 1] << 8
                off += 2
                if ln > STR_MAX or off + ln > end:
                    raise ValueError("string length %d overruns record" % ln)
                raw = bytes(buf[off:off + ln])
                off += ln
                vals.append(raw.decode("utf-8", "replace") if kind == "str" else raw)
        return vals, off
