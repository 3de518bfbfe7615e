"""An event type's fields as JSON objects, one per record, built column-wise (pyarrow).

Used by the Chrome JSON export (args), the Parquet `fields` column and the HTML
timeline (hovered fields). Numbers and plain strings are joined a batch at a
time (read/rows.py: integers in decimal, floats as pyarrow writes them, strings
quoted); anything that needs more than quoting (bytes as hex, control
characters, NaN or infinities) goes through json.dumps for that batch, so the
output is always valid JSON.
"""

from __future__ import annotations

import functools
import json
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import abi
from .rows import Decimals, join
from .session import json_value


def _py(decl: abi.EventDecl, cols: List[pa.Array]) -> pa.Array:
    names = [a for a, _, _ in decl.fields]
    rows = zip(*[c.to_pylist() for c in cols])
    return pa.array([json.dumps({k: json_value(v) for k, v in zip(names, r)},
                                separators=(",", ":"), allow_nan=False)
                     for r in rows], pa.string())


def objects(decl: abi.EventDecl, cols: List[pa.Array], n: int) -> pa.Array:
    """n JSON objects (a string array), `{"arg": value, ...}` per record."""
    if not decl.fields:
        return pa.array(["{}"] * n, pa.string())
    pieces: list = []
    for i, ((name, _, ft), col) in enumerate(zip(decl.fields, cols)):
        pieces.append(("{" if i == 0 else ",") + json.dumps(name) + ":")
        if ft.kind == "bytes":
            return _py(decl, cols)
        if ft.kind == "float":
            if not pc.all(pc.is_finite(col)).as_py():
                return _py(decl, cols)
            pieces.append(pc.cast(col, pa.string()))
        elif ft.kind == "str":
            data = _data(col)
            if (data < 0x20).any():            # control characters: json.dumps escapes them
                return _py(decl, cols)
            if (data == 0x5C).any() or (data == 0x22).any():     # a backslash or a quote
                col = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
            pieces += ['"', col, '"']
        elif pa.types.is_integer(col.type):
            pieces.append(Decimals(col.to_numpy(zero_copy_only=False)))
        else:
            pieces.append(pc.cast(col, pa.string()))
    pieces.append("}")
    return join(n, pieces)


@functools.lru_cache(maxsize=4096)
def scalar(text: str) -> pa.Scalar:
    """A string scalar for pyarrow's compute functions, made once per text."""
    # made once: pa.scalar() of a Python object tries an import that fails (dateutil)
    # every time, a path search that costs more than the scalar
    return pa.scalar(text, pa.string())


def _data(col: pa.Array) -> np.ndarray:
    """The bytes of a string array's values (numpy, no copy)."""
    offs = np.frombuffer(col.buffers()[1], dtype=np.int32, count=len(col) + 1,
                         offset=col.offset * 4)
    buf = col.buffers()[2]
    return np.frombuffer(buf if buf is not None else b"", dtype=np.uint8)[offs[0]:offs[-1]]
