"""A bounded log of problems for the session index: distinct messages with counts, a total.

Peers choose what goes wrong and how often, so the log cannot grow with them: the
first MAX_DISTINCT distinct messages are kept with how often each occurred, later
new messages only add to `total` (and to `not_listed`). It serialises as a JSON
list (it is one), so the index's `errors` stays a list of {"error", "count"}.
"""

from __future__ import annotations

import threading
from typing import Dict

MAX_DISTINCT = 100
MAX_TEXT = 300


class ErrorLog(list):
    """A list of {"error": text, "count": n}, bounded; add() is safe from any thread."""

    def __init__(self, limit: int = MAX_DISTINCT):
        super().__init__()
        self.limit = limit
        self.total = 0
        self.not_listed = 0
        self._where: Dict[str, dict] = {}
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        text = str(text)[:MAX_TEXT]
        with self._lock:
            self.total += 1
            e = self._where.get(text)
            if e is not None:
                e["count"] += 1
            elif len(self) < self.limit:
                e = self._where[text] = {"error": text, "count": 1}
                self.append(e)
            else:
                self.not_listed += 1

    def summary(self) -> dict:
        """The totals that go next to the list in the index."""
        with self._lock:
            return {"total": self.total, "not_listed": self.not_listed}

    def snapshot(self) -> list:
        with self._lock:
            return [dict(e) for e in self]


def describe(e: BaseException) -> str:
    """`Type: message` in one line, for an exception from a component."""
    text = str(e).replace("\n", " ")
    return "%s: %s" % (type(e).__name__, text) if text else type(e).__name__
