"""Triggers: a rules file, guest events that make the host act (no VM here; see
test_qemu.py for QMP against a real QEMU)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from conftest import babeltrace, hypertrace, record

APP = r"""
import time
from hypertrace import guest
roi_b = guest.event("roi_begin", "uint32_t id, const char *tag")
roi_e = guest.event("roi_end", "uint32_t id")
work = guest.event("work_item", "uint32_t i")

def wait_for(tp, state):
    t = time.monotonic()
    while tp.enabled != state and time.monotonic() - t < 60:
        time.sleep(0.0002)
    return tp.enabled == state

for i in range(50):
    work(i)                                  # before the ROI: disabled by the host? no, on
roi_b(7, "skip")                             # the predicate does not hold: nothing happens
roi_b(1, "io")                               # disables work_item, marks, asks QMP (no QEMU)
print("DISABLED", wait_for(work, False), flush=True)
for i in range(50, 100):
    work(i)                                  # not recorded
roi_e(1)                                     # enables work_item again
print("ENABLED", wait_for(work, True), flush=True)
for i in range(100, 150):
    work(i)
"""

RULES = """
# disable work items inside the region of interest
[[trigger]]
event = "roi_begin"
when = "id == 1 and tag in ('io', 'net')"
actions = [
  { disable = "work_*" },
  { marker = "ROI begins" },
  { qemu_trace_enable = "virtio_*" },
]

[[trigger]]
event = "roi_end"
domain = "loc*"
actions = [ { enable = "work_item" }, { snapshot = true } ]
"""


def test_triggers_run_configured_actions_and_record_their_latency(tmp_path):
    app = tmp_path / "app.py"
    app.write_text(APP)
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    out = str(tmp_path / "s")
    r = record(out, sys.executable, str(app), opts=("--triggers", str(rules)))
    assert "DISABLED True" in r.stdout and "ENABLED True" in r.stdout, r.stdout + r.stderr
    events, _ = babeltrace(out, internal=True)
    work = [int(f["i"]) for n, f in events if n == "work_item"]
    assert work == list(range(50)) + list(range(100, 150))
    assert [f["text"] for n, f in events if n == "hypertrace_marker"] == ["ROI begins"]
    trig = [f for n, f in events if n == "hypertrace_trigger"]
    acts = sorted((int(f["rule"]), f["action"], f["ok"]) for f in trig)
    assert [(r_, a) for r_, a, _ in acts] == [
        (1, "disable work_*"), (1, "marker ROI begins"), (1, "qemu_trace_enable virtio_*"),
        (2, "enable work_item"), (2, "snapshot")]
    qmp = next(f for f in trig if f["action"].startswith("qemu_trace_enable"))
    # a local process has no QEMU: the error is in the trace, and recording went on
    assert int(qmp["ok"]) == 0 and "not a QEMU guest" in qmp["error"]
    st = json.loads(hypertrace("stats", out, "--json").stdout)
    tr = st["triggers"]
    assert tr["actions"]["disable work_*"]["count"] == 1
    assert tr["actions"]["disable work_*"]["latency_ns"]["min"] > 0
    assert tr["errors"] == 1
    idx = json.load(open(os.path.join(out, ".hypertrace", "session.json")))
    assert [t["fired"] for t in idx["triggers"]] == [1, 1]
    assert "roi_begin" in hypertrace("stats", out).stdout


@pytest.mark.parametrize("text,where,msg", [
    ('[[trigger]]\nevent = "a"\nactions = [ { shell = "rm -rf /" } ]\n', ":3:",
     "unknown action 'shell'"),
    ('[[trigger]]\nevent = "a"\n\nwhen = "__import__(\'os\')"\nactions = [{stop = true}]\n',
     ":4:", "unsupported syntax"),
    ('[[trigger]]\nevent = "a b"\nactions = [{stop = true}]\n', ":2:", "event name or glob"),
    ('[[trigger]]\nevent = "a"\nwhen = "x =="\nactions = [{stop = true}]\n', ":3:",
     "bad predicate"),
    ('[[trigger]]\nevent = "a"\nactions = [{ enable = "x;y" }]\n', ":3:", "bad event pattern"),
    ('[[trigger]]\nevent = "a"\nactions = []\n', ":3:", "non-empty list"),
    ('[trigger\n', ":", "Expected"),
    ('[[trigger]]\nevent = "a"\nactions = [{stop = true}]\n[[trigger]]\nevent = "b"\n'
     'colour = "red"\nactions = [{stop = true}]\n', ":6:", "unknown key colour"),
])
def test_bad_rules_files_are_clear_errors_naming_the_line(tmp_path, text, where, msg):
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    r = hypertrace("record", "-o", str(tmp_path / "s"), "--triggers", str(rules), "--",
                   sys.executable, "-c", "pass", check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(rules) + where in r.stderr and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "s" / "metadata")


def test_the_example_rules_file_loads():
    from conftest import ROOT

    from hypertrace.host.triggers import load
    ts = load(os.path.join(ROOT, "examples", "triggers.toml"))
    assert [t.event for t in ts] == ["roi_begin", "roi_end", "request_end", "panic*"]
    assert ts[2].when({"status": 503, "elapsed_us": 10}) and \
        not ts[2].when({"status": 200, "elapsed_us": 10})


def test_predicates_reach_fields_named_with_python_keywords():
    """A field may be named `from` or `in` (QEMU's files do): a predicate writes it with
    `_` appended, as a tracepoint's keyword call does; check_fields agrees."""
    from hypertrace.host.triggers import Trigger, check_fields, compile_predicate
    p = compile_predicate("from_ > 3 and in_ == 'x' and from__ == 1")
    assert p({"from": 1, "in": "x", "from_": 9})      # from_ is the field from_ itself
    assert not p({"from": 2, "in": "x", "from_": 9})
    assert compile_predicate("class_ == 7")({"class": 7})
    trig = Trigger(1, 1, "e", when=p, when_text="from_ > 3 and nothere_ == 1")
    assert check_fields(trig, ("from", "in")) == "no field nothere_"
