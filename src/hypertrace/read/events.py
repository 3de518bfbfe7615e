"""hypertrace's own events, as a reader tells them from the program's.

The sync pair: a guest's `sync_point()` records `hypertrace_sync` in its own
stream, and the host records `hypertrace_sync_host` with the guest's domain and
sync id when the request arrives: the exports draw a flow between them.
INTERNAL are the records hypertrace makes for its own bookkeeping (the host half
of a sync pair, clock exchanges, function declarations): `report` leaves them out
unless asked for them (`--all`), every other view keeps them.
"""

from __future__ import annotations

SYNC_GUEST = "hypertrace_sync"
SYNC_HOST = "hypertrace_sync_host"
INTERNAL = frozenset({SYNC_HOST, "hypertrace_clock_sample", "hypertrace_code"})
