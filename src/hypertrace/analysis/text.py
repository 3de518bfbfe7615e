"""Untrusted text made safe to print on a terminal.

Thread names, clock kinds, trigger errors and event fields come from a session
directory, and so from whoever made it: printed raw, an escape sequence in them
would retitle the terminal, clear it or move the cursor. Every control
character (C0, DEL and C1, where CSI \\x9b is) is shown escaped instead, and so
are the Unicode controls that reorder or break what is displayed (bidirectional
overrides and isolates: "Trojan Source" spoofing; line and paragraph separators).
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape(c: str) -> str:
    n = ord(c)
    return "\\x%02x" % n if n < 0x100 else "\\u%04x" % n


def printable(value: object) -> str:
    """str(value) with each control character written as \\xNN (\\uNNNN above 0xff)."""
    return _CONTROL.sub(lambda m: _escape(m.group()), str(value))
