"""hypertrace's start-up hook (guest/autostart.py): put first on PYTHONPATH by
`hypertrace record --functions/--logging`. It starts what HYPERTRACE_PYTHON says,
then imports the sitecustomize module it hides, if there is one."""

import os
import sys


def _hypertrace_start() -> None:
    try:
        try:
            from hypertrace.guest import autostart
        except ImportError:
            # an interpreter without the package: the copy the recorder named
            import json
            path = json.loads(os.environ.get("HYPERTRACE_PYTHON") or "{}").get("path")
            if not isinstance(path, str) or not path:
                raise
            sys.path.append(path)
            from hypertrace.guest import autostart
    except (ImportError, ValueError, AttributeError) as e:
        sys.stderr.write("hypertrace: start-up hook: cannot import hypertrace: %s\n" % e)
        return
    try:
        autostart.run()
    except Exception as e:          # never stop the program from starting
        sys.stderr.write("hypertrace: start-up hook failed: %s: %s\n" % (type(e).__name__, e))


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    saved = sys.path[:]
    me = sys.modules.pop("sitecustomize", None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import sitecustomize  # noqa: F401  (the one this hides)
    except ImportError:
        if me is not None:
            sys.modules["sitecustomize"] = me
    finally:
        sys.path[:] = saved


_chain()                # first: the calls of an import are not the program's
_hypertrace_start()
