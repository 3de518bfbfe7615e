"""Findings of the adversarial review (issue 11 follow-up): state that grows with a
guest's trigger firings, problems noted once per declaration, bad recorder options
that left a region behind."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import hypertrace, record, write

PY = sys.executable


def _index(out: str) -> dict:
    with open(os.path.join(out, ".hypertrace", "session.json")) as f:
        return json.load(f)


ROI = r"""
import time
from hypertrace import guest
roi = guest.event("roi", "uint32_t i")
for i in range(25000):
    roi(i)
    if i % 10 == 0:
        time.sleep(0.002)     # spread over many drain passes: each runs the action again
"""


def test_a_trigger_firing_forever_adds_no_state(session, tmp_path):
    """Every run of an `enable` action used to append a rule and a log entry (134 335 of
    each in the review, a 15.6 MB index rewritten every second): the same pattern now
    replaces its rule, and the index lists the latest changes with a total."""
    rules = write(tmp_path, "r.toml", '[[trigger]]\nevent = "roi"\n'
                                      'actions = [ { enable = "io_*" } ]\n')
    app = write(tmp_path, "roi.py", ROI)
    record(session, PY, app, opts=("--triggers", rules), timeout=300)
    idx = _index(session)
    ran = idx["control_changes"]
    assert ran > 1000, ran                  # the flood really ran the action that often
    assert len(idx["control"]) == 1000      # the latest changes, bounded
    trig = idx["triggers"][0] if isinstance(idx["triggers"], list) else idx["triggers"]
    assert json.dumps(trig)                 # the per-action counts are still there


DECLS = r"""
import time
from hypertrace import guest
for k in range(120):
    guest.event("ev%d" % k, "uint32_t y")(k)
    time.sleep(0.003)         # declarations trickle in over many drain passes
"""


def test_a_rule_that_never_holds_is_noted_once_per_declaration(session, tmp_path):
    """The problem list was rebuilt and re-appended at every new declaration
    (12 967 entries for 250 events in the review): one note per event now."""
    rules = write(tmp_path, "r.toml", '[[trigger]]\nevent = "ev*"\nwhen = "x > 1"\n'
                                      'actions = [ { marker = "m" } ]\n')
    app = write(tmp_path, "decls.py", DECLS)
    record(session, PY, app, opts=("--triggers", rules), timeout=300)
    probs = _index(session)["trigger_problems"]
    assert len(probs) == 120 == len(set(probs)), len(probs)


@pytest.mark.parametrize("opt", [("--block-timeout", "-5"), ("--block-timeout", "1e300"),
                                 ("--block-timeout", "nan"), ("--sync-interval", "0")])
def test_bad_recorder_options_are_one_line_and_leave_nothing(tmp_path, opt):
    rt = tmp_path / "rt"
    rt.mkdir(mode=0o700)
    r = hypertrace("record", "-o", str(tmp_path / "s"), *opt, "--", "true", check=False,
                   env=dict(os.environ, HYPERTRACE_RUNTIME_DIR=str(rt),
                            PYTHONPATH=os.path.join(os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))), "src")))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("hypertrace: error:") and len(r.stderr.splitlines()) == 1, \
        r.stderr
    assert os.listdir(rt) == []            # no region left behind
    assert not os.path.exists(tmp_path / "s")
