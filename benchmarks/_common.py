"""What the benchmarks share: running a subprocess with a deadline (its whole process
group killed on timeout), a row that could not be measured, this tree's hypertrace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")


class Unavailable(Exception):
    """A row that could not be measured: its one-line reason."""


def _kill_group(p: subprocess.Popen, grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass


def run(cmd, timeout: float, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run `cmd` to its end within `timeout` seconds, output captured."""
    try:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                             start_new_session=True)
    except OSError as e:
        raise Unavailable("cannot run %s: %s" % (cmd[0], e.strerror))
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(p)
        raise Unavailable("%s timed out after %.0f s" % (os.path.basename(cmd[0]), timeout))
    except BaseException:
        _kill_group(p)
        raise
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def last_line(text: str) -> str:
    lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
    return lines[-1][:160] if lines else "no output"


def check(cp: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if cp.returncode:
        raise Unavailable("%s failed (exit %d): %s" % (what, cp.returncode,
                                                       last_line(cp.stderr or cp.stdout)))
    return cp


def py_env(**extra) -> dict:
    """This tree's package first on the path, no hypertrace setting inherited."""
    env = dict(os.environ, PYTHONPATH=SRC)
    for k in ("HYPERTRACE_CHANNEL", "HYPERTRACE_PURE", "HYPERTRACE_PYTHON"):
        env.pop(k, None)
    env.update(extra)
    return env


def ht(*args) -> list:
    """The `hypertrace` command of this tree."""
    return [sys.executable, "-m", "hypertrace.cli", *args]
