"""What `hypertrace record --functions/--logging` starts in every Python process.

The recorder puts guest/boot/ (a `sitecustomize` module) first on PYTHONPATH and
says what to start in HYPERTRACE_PYTHON, a JSON object: {"functions": {"include":
[...], "exclude": [...]}, "logging": true, "path": DIR}. Python imports sitecustomize at start-up,
which calls run() here and then imports the sitecustomize it hides, if any. In a
VM guest, the same two variables do the same (environment() builds them; the
short form HYPERTRACE_PYTHON=functions,logging traces every function).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

ENV = "HYPERTRACE_PYTHON"
BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")


def environment(functions: bool = False, include: Optional[List[str]] = None,
                exclude: Optional[List[str]] = None, logging: bool = False,
                boot_dir: str = BOOT_DIR, path: str = "",
                pythonpath: Optional[str] = None) -> Dict[str, str]:
    """The variables that make every Python process started with them trace its
    functions and/or logging; `path`: a directory holding the hypertrace package, put
    at the end of sys.path by the hook of an interpreter that lacks the package."""
    what: dict = {"path": path} if path else {}
    if functions:
        what["functions"] = {"include": list(include or []), "exclude": list(exclude or [])}
    if logging:
        what["logging"] = True
    if not functions and not logging:
        return {}
    old = os.environ.get("PYTHONPATH", "") if pythonpath is None else pythonpath
    parts = [boot_dir] + ([old] if old else [])
    return {ENV: json.dumps(what), "PYTHONPATH": os.pathsep.join(parts)}


def run() -> None:
    """Start what HYPERTRACE_PYTHON says; a bad value is warned about, never raised."""
    from .channel import warn
    raw = os.environ.get(ENV)
    if not raw:
        return
    try:
        if raw.lstrip().startswith("{"):
            what = json.loads(raw)
        else:       # the short form, for a shell in a guest: functions,logging
            words = [w.strip() for w in raw.split(",") if w.strip()]
            bad = [w for w in words if w not in ("functions", "logging")]
            if bad:
                raise ValueError("unknown %r (functions, logging, or a JSON object)" % bad[0])
            what = {w: ({} if w == "functions" else True) for w in words}
        if not isinstance(what, dict):
            raise ValueError("not an object")
        fn = what.get("functions")
        globs = {}
        if fn is not None:
            if not isinstance(fn, dict):
                raise ValueError("functions: not an object")
            for k in ("include", "exclude"):
                v = fn.get(k, [])
                if not isinstance(v, list) or not all(isinstance(g, str) for g in v):
                    raise ValueError("functions.%s: not a list of strings" % k)
                globs[k] = v
    except ValueError as e:
        warn("%s ignored: %s" % (ENV, e))
        return
    if what.get("logging"):
        from . import loghandler
        try:
            loghandler.capture()
        except (ValueError, OSError) as e:
            warn("logging not traced: %s" % e)
    if fn is not None:
        from . import functions
        functions.start(globs["include"], globs["exclude"])
