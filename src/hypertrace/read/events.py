"""hypertrace's own events, as a reader tells them from the program's.

The sync pair: a guest's `sync_point()` records `hypertrace_sync` in its own
stream, and the host records `hypertrace_sync_host` with the guest's domain and
sync id when the request arrives: the exports draw a flow between them.
INTERNAL are the records hypertrace makes for its own bookkeeping, that a user
did not ask for by name and that mean nothing read one by one: the host half of
a sync pair (the guest's half is the user's `sync_point()`), clock exchanges,
function declarations (the calls and returns that use them are the user's), and
the guest kernel agent's transport records (ftrace text and page chunks, its
loss counts: the host decodes them into the kernel streams' own events and the
losses).  `report` leaves them out unless asked for them (`--all`) and says how
many it left out; every other view keeps them.  What stays shown: the user's
events and the records of what the user asked hypertrace to do or that change
how to read the trace (`hypertrace_ctl`, `_trigger`, `_marker`, `_sync`,
`_call`/`_return`, `_functions_off`).
"""

from __future__ import annotations

SYNC_GUEST = "hypertrace_sync"
SYNC_HOST = "hypertrace_sync_host"
INTERNAL = frozenset({SYNC_HOST, "hypertrace_clock_sample", "hypertrace_code",
                      "hypertrace_ftrace_text", "hypertrace_ftrace_page",
                      "hypertrace_ftrace_stats"})
