"""Timing Python code at its edges (issue 16's review): forks, a program's own profile
function, calls cut off, threads without a ring, spans that change threads, log
records that do not format -- each recorded or counted, never lost silently."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pytest
from conftest import env, hypertrace, record
from test_python_timing import CALL_EVENTS, fib_calls

MODES = {"profile": {"HYPERTRACE_FUNCTIONS_HOOK": "profile"}, "pure": {"HYPERTRACE_PURE": "1"},
         "eval": {}}


def stats_of(out: str) -> dict:
    return json.loads(hypertrace("stats", out, "--json", "--top", "0").stdout)


def functions_of(st: dict) -> dict:
    """name -> row; a call named after no declaration shows as "code N"."""
    return {f["function"].split("/", 1)[1].split(" (")[0]: f for f in st["functions"]}


def run(tmp_path, name: str, src: str, *args: str, opts=("--functions",), mode="eval",
        clean=True):
    app = tmp_path / (name + ".py")
    app.write_text(src)
    out = str(tmp_path / name)
    r = record(out, sys.executable, str(app), *args, opts=opts, env=env(**MODES[mode]))
    assert not clean or not ("Traceback" in r.stderr or "Exception ignored" in r.stderr), r.stderr
    return out, r


FORK = r'''
import os, random, sys
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
def in_child():
    fib(10)
def at_fork_child():
    fib(3)                  # an at-fork hook of the program's
os.register_at_fork(after_in_child=at_fork_child)
fib(12)
pid = os.fork()
if pid == 0:
    in_child()
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
fib(12)
print("FORKED", flush=True)
'''


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_forked_child_names_its_own_calls_and_writes_only_its_own_rings(tmp_path, mode):
    out, r = run(tmp_path, "fork", FORK, mode=mode)
    assert "FORKED" in r.stdout
    st = stats_of(out)
    assert st["totals"]["discarded"] == 0 and st["totals"]["malformed"] == 0
    fn = functions_of(st)
    assert not [k for k in fn if k.startswith("code ")], fn
    # the parent's two fib(12), the child's fib(10) and its at-fork hook's fib(3) (the
    # program's hook runs after hypertrace's, which gave the child rings of its own)
    assert fn["fib"]["calls"] == 2 * fib_calls(12) + fib_calls(10) + fib_calls(3)
    assert fn["in_child"]["calls"] == 1 and fn["at_fork_child"]["calls"] == 1
    assert all(f["unmatched"] == 0 for f in fn.values()), fn
    pids = {x["pid"] for x in st["streams"] if x["domain"] == "local" and x["recorded"]}
    assert len(pids) == 2


OVERRIDE = r'''
import cProfile, sys
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
fib(10)
if sys.argv[1] == "setprofile":
    sys.setprofile(lambda *a: None)
else:
    p = cProfile.Profile()
    p.enable()
fib(10)
print("DONE", flush=True)
'''


@pytest.mark.parametrize("how", ["setprofile", "cprofile"])
@pytest.mark.parametrize("mode", ["profile", "pure"])
def test_the_programs_own_profile_function_ends_tracing_loudly(tmp_path, how, mode):
    out, r = run(tmp_path, "o", OVERRIDE, how, mode=mode)
    assert "DONE" in r.stdout
    assert r.stderr.count("function tracing of thread 'MainThread' ended early") == 1, r.stderr
    st = stats_of(out)
    assert st["events"]["hypertrace_functions_off"]["count"] == 1
    assert functions_of(st)["fib"]["calls"] == fib_calls(10)    # before, not after


CUT = r'''
import os
def deep(k):
    if k == 0:
        os._exit(0)
    deep(k - 1)
deep(5)
'''


@pytest.mark.parametrize("mode", ["profile", "pure"])
def test_calls_cut_off_by_os_exit_are_counted_unfinished(tmp_path, mode):
    out, _ = run(tmp_path, "cut", CUT, mode=mode)
    deep = functions_of(stats_of(out))["deep"]
    assert (deep["calls"], deep["unfinished"], deep["unmatched"]) == (0, 6, 0)
    text = hypertrace("stats", out).stdout
    assert "unfinished" in text


LOST_RETURN = CALL_EVENTS + r'''
code(1, "outer", "f.py", 1)
code(2, "inner", "f.py", 2)
for i in range(10):
    call(1)
    call(2)                 # its return lost
    ret(1)
call(1)
ret(1)
'''


def test_a_lost_return_closes_only_its_own_call(tmp_path):
    out, _ = run(tmp_path, "lr", LOST_RETURN, opts=())
    fn = functions_of(stats_of(out))
    assert (fn["outer"]["calls"], fn["outer"]["unfinished"]) == (11, 0)
    assert (fn["inner"]["calls"], fn["inner"]["unfinished"]) == (0, 10)
    # outer's self time is its own: no inner call closed inside it
    assert fn["outer"]["self_ns"] == fn["outer"]["total_ns"]


THREADS = r'''
import threading, time
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
def shared(k):
    return fib(k)
def work():
    for _ in range(3):
        shared(8)
        time.sleep(0.01)
ts = [threading.Thread(target=work) for i in range(10)]
[t.start() for t in ts]
[t.join() for t in ts]
for i in range(3):
    t = threading.Thread(target=work)
    t.start()
    t.join()
print("THREADS", flush=True)
'''


@pytest.mark.parametrize("mode", ["profile", "pure"])
def test_threads_without_a_ring_lose_counted_calls_and_no_names(tmp_path, mode):
    out, r = run(tmp_path, "th", THREADS, opts=("--functions", "--rings", "3"), mode=mode)
    assert "THREADS" in r.stdout
    st = stats_of(out)
    assert st["totals"]["lost_without_ring"] > 0
    fn = functions_of(st)
    assert not [k for k in fn if k.startswith("code ")], fn
    # the three threads run one at a time after the others had rings: all recorded
    assert fn["shared"]["calls"] >= 9 and fn["fib"]["calls"] >= 9 * fib_calls(8)


SPANS = r'''
import threading
from hypertrace import guest
sp = guest.span("gen", "uint32_t k")
def g():
    with sp(1):
        yield 1
        yield 2
it = g()
next(it)
t = threading.Thread(target=it.close)    # the generator's span ends on another thread
t.start()
t.join()
use = sp(2)                               # one use, entered by two threads at once
b1, b2 = threading.Barrier(2), threading.Barrier(2)
def w(first):
    if not first:
        b1.wait()
    use.__enter__()
    if first:
        b1.wait()
    b2.wait()
    use.__exit__(None, None, None)
ts = [threading.Thread(target=w, args=(i == 0,)) for i in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
print("SPANS", flush=True)
'''


@pytest.mark.parametrize("mode", ["profile", "pure"])
def test_spans_that_change_threads_pair(tmp_path, mode):
    out, r = run(tmp_path, "sp", SPANS, opts=(), mode=mode)
    assert "SPANS" in r.stdout
    g = stats_of(out)["spans"]["local/gen"]
    assert (g["count"], g["unmatched"], g["unfinished"]) == (3, 0, 0)
    rep = [json.loads(x) for x in hypertrace("report", "--json", out).stdout.splitlines()]
    ends = Counter(e["stream"] for e in rep if e["name"] == "gen_end")
    begins = Counter(e["stream"] for e in rep if e["name"] == "gen_begin")
    assert ends != begins               # the test did move spans between threads


LOGS = r'''
import logging
logging.basicConfig(level=logging.INFO)
log = logging.getLogger("app")
class Boom:
    def __str__(self):
        raise RuntimeError("boom")
def f():
    log.info("two %s %s", "args")         # a bad format: logging reports it too
f()
log.info("x" * 5000)                      # (logging prints it in full)
log.info(Boom())
log.info("fine %d", 3)
'''


def test_log_records_that_do_not_format_or_fit_say_so(tmp_path):
    app = tmp_path / "lg.py"
    app.write_text(LOGS)
    untraced = subprocess.run([sys.executable, str(app)], capture_output=True, text=True,
                              env=env())
    out, r = run(tmp_path, "lg", LOGS, opts=("--logging",), clean=False)
    # the program's own handler's error reports, as untraced (no frame of hypertrace's)
    assert r.stdout == untraced.stdout
    mine = [x for x in r.stderr.splitlines() if not re.match(
        r"(stream |\s*(local|host)|trace: )", x)]
    addr = re.compile(r" at 0x[0-9a-f]+")
    assert [addr.sub("", x) for x in mine] == [
        addr.sub("", x) for x in untraced.stderr.splitlines()]
    assert "--- Logging error ---" in r.stderr and "loghandler" not in r.stderr
    rep = [json.loads(x) for x in hypertrace("report", "--json", out).stdout.splitlines()]
    msgs = [e["fields"]["message"] for e in rep if e["name"] == "python_log"]
    assert len(msgs) == 4, msgs
    assert msgs[0].startswith("two %s %s [not formatted: TypeError")
    assert msgs[1].startswith("xxx") and msgs[1].endswith("bytes cut]") and "4016" in msgs[1]
    assert msgs[2] == "<Boom: str raised RuntimeError> [not formatted: RuntimeError: boom; args ()]"
    assert msgs[3] == "fine 3"


def test_functions_warn_when_no_python_process_was_traced(tmp_path):
    out = str(tmp_path / "i")
    r = record(out, sys.executable, "-I", "-c", "print('ISOLATED')", opts=("--functions",))
    assert "ISOLATED" in r.stdout
    assert "--functions traced no Python process" in r.stderr
    r = record(str(tmp_path / "ok"), sys.executable, "-c", "print(1)", opts=("--functions",))
    assert "traced no Python process" not in r.stderr


SMALL_STACK = r'''
import threading
def deep(k):
    return 0 if k == 0 else 1 + deep(k - 1)
threading.stack_size(256 * 1024)          # runs untraced; each hooked call takes C stack
out = []
t = threading.Thread(target=lambda: out.append(deep(950)))
t.start()
t.join()
print("STACK", out, flush=True)
'''


def test_the_eval_hook_gives_way_on_a_small_thread_stack(tmp_path):
    out, r = run(tmp_path, "stk", SMALL_STACK, mode="eval")
    assert "STACK [950]" in r.stdout, r.stderr
    assert "ended early" not in r.stderr        # hypertrace's own switch, not the program's
    deep = functions_of(stats_of(out))["deep"]
    assert (deep["calls"], deep["unfinished"]) == (951, 0)


GENERATORS = r'''
import gc
def g():
    yield 1
try:
    g().throw(KeyError("k"))              # thrown into before it began
except KeyError as e:
    print("KeyError", e)
g().close()
g()                                       # dropped: its finalizer closes it
gc.collect()
async def agen():
    yield 1
try:
    agen().athrow(ValueError()).send(None)
except ValueError:
    print("athrow")
import sys
h = g()
sys.setrecursionlimit(10000)              # the eval hook gives way at the next frame:
try:                                      # one thrown into
    h.throw(ValueError("boom"))
except ValueError as e:
    print(e)
print("GENERATORS", flush=True)
'''


@pytest.mark.parametrize("mode", sorted(MODES))
def test_generators_thrown_into_before_they_begin(tmp_path, mode):
    out, r = run(tmp_path, "gen", GENERATORS, mode=mode)
    assert r.stdout.split() == ["KeyError", "'k'", "athrow", "boom", "GENERATORS"], r.stderr
    fn = functions_of(stats_of(out))
    assert fn["g"]["unmatched"] == 0 and fn["g"]["unfinished"] == 0


DEEP = r'''
import sys
sys.setrecursionlimit(10 ** 6)
def down(n):
    return 0 if n == 0 else 1 + down(n - 1)
print("DEEP", down(300000), flush=True)
'''


def test_a_recursion_deeper_than_the_views_time_is_still_counted(tmp_path):
    out, r = run(tmp_path, "deep", DEEP)
    assert "DEEP 300000" in r.stdout
    down = functions_of(stats_of(out))["down"]
    assert (down["calls"], down["unmatched"], down["unfinished"]) == (300001, 0, 0)
    assert 0 < down["self_ns"] <= down["total_ns"]
