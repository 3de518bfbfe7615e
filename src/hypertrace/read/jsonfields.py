"""An event type's fields as JSON objects, one per record, built column-wise (pyarrow).

Used by the Chrome JSON export (args), the Parquet `fields` column and the HTML
timeline (hovered fields). Numbers
and plain strings are joined with array operations; anything that needs more
than quoting (bytes as hex, control characters, NaN or infinities) goes
through json.dumps for that batch, so the output is always valid JSON.
"""

from __future__ import annotations

import json
from typing import List

import pyarrow as pa
import pyarrow.compute as pc

from .. import abi
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
            if pc.any(pc.match_substring_regex(col, "[\\x00-\\x1f]")).as_py():
                return _py(decl, cols)
            esc = pc.replace_substring(pc.replace_substring(col, "\\", "\\\\"), '"', '\\"')
            pieces += ['"', esc, '"']
        else:
            pieces.append(pc.cast(col, pa.string()))
    pieces.append("}")
    return pc.binary_join_element_wise(*[p if isinstance(p, pa.Array) else pa.scalar(p)
                                         for p in pieces], "")
