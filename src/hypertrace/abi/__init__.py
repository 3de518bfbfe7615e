"""The channel ABI, the executable form of docs/abi.md: shared by the guest (stdlib-only,
Python >= 3.8) and the host. Everything is little-endian and fixed-offset; nothing
here depends on Python-specific encodings. One concern per module, read in order:

    layout        the region: header, mailboxes, counters, locks, slots, descriptors
    signature     event signatures: C types, canonical declaration text
    trace_events  QEMU's trace-events file grammar (as tracetool reads it)
    codec         records: header and payload codec
    control       control channel frames
    words         one aligned load or store per shared word

Everything is re-exported here: `from hypertrace import abi; abi.make_layout(...)`.
"""

from .codec import *  # noqa: F403
from .codec import __all__ as _codec
from .control import *  # noqa: F403
from .control import __all__ as _control
from .layout import *  # noqa: F403
from .layout import __all__ as _layout
from .signature import *  # noqa: F403
from .signature import __all__ as _signature
from .trace_events import *  # noqa: F403
from .trace_events import __all__ as _trace_events
from .words import *  # noqa: F403
from .words import __all__ as _words

__all__ = _layout + _signature + _trace_events + _codec + _control + _words
