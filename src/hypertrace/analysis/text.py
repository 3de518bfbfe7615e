"""Untrusted text made safe to print on a terminal.

Thread names, clock kinds, trigger errors and event fields come from a session
directory, and so from whoever made it: printed raw, an escape sequence in them
would retitle the terminal, clear it or move the cursor. Every control
character (C0, DEL and C1, where CSI \\x9b is) is shown escaped instead.
"""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(value: object) -> str:
    """str(value) with each control character written as \\xNN."""
    return _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()), str(value))
