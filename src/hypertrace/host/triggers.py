"""Triggers: guest events that make the host act, from a TOML rules file.

    [[trigger]]
    event = "roi_begin"                 # event name (glob)
    domain = "vm1"                      # optional: domain glob (default: any)
    when = "depth > 3 and tag == 'io'"  # optional: predicate on the event's fields
    actions = [
      { qemu_trace_enable = "virtio_serial*" },  # QMP trace-event-set-state on this
      { qemu_trace_disable = "vfio_*" },          # guest's own QEMU (and no other)
      { enable = "net_*" },             # guest event patterns (default: the event's domain)
      { disable = "noisy_*", domain = "*" },
      { snapshot = true },              # flight-recorder snapshot
      { stop = true },                  # end the recording
      { marker = "ROI begins" },        # a host event in the trace
    ]

Only these actions exist: nothing a guest writes can name a command, a file or
another VM's QEMU. Predicates are a small expression language (comparisons,
`in`, `and`, `or`, `not`, literals, field names) evaluated without eval().
Every action is recorded in the host domain as `hypertrace_trigger` with the
triggering event's own timestamp, so `stats` reports each action's latency.
"""

from __future__ import annotations

import ast
import fnmatch
import keyword
import operator
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

if sys.version_info >= (3, 11):
    import tomllib
else:                                  # pragma: no cover - Python 3.10
    import tomli as tomllib

ACTIONS = ("qemu_trace_enable", "qemu_trace_disable", "enable", "disable", "snapshot", "stop",
           "marker")
MAX_TRIGGERS = 256
MAX_PREDICATE = 1000


class TriggerError(ValueError):
    """A rules file that cannot be used; the message names the file and line."""


class PredicateError(ValueError):
    """A predicate could not be evaluated on one event's fields (a missing field, values
    that do not compare, such as `300 in b"..."`): the rule does not fire for that event,
    and the engine counts it. The only exception a compiled predicate raises."""


@dataclass
class Action:
    kind: str
    arg: str = ""               # an event pattern, or the marker's text
    domain: Optional[str] = None  # enable/disable: domain glob; None = the event's domain

    def describe(self) -> str:
        return ("%s %s" % (self.kind, self.arg)) if self.arg else self.kind


@dataclass
class Trigger:
    index: int                  # 1-based, in file order
    line: int
    event: str
    domain: str = "*"
    when: Optional[Callable[[Dict[str, Any]], bool]] = None
    when_text: str = ""
    actions: List[Action] = field(default_factory=list)
    fires: int = 0
    misses: int = 0             # predicate errors (missing field, incomparable types)
    last_miss: str = ""         # the latest predicate error, for the index
    #: per action (its description): firings run (done or failed), firings merged into
    #: one already waiting, and firings dropped because the queue of waiting actions was
    #: full. Counted here, not from the host's records of them: those can be lost with
    #: the host's own ring full, and are then counted as the host domain's discarded
    ran: Dict[str, int] = field(default_factory=dict)
    coalesced: Dict[str, int] = field(default_factory=dict)
    dropped: Dict[str, int] = field(default_factory=dict)

    def matches(self, domain: str, name: str) -> bool:
        return fnmatch.fnmatchcase(domain, self.domain) and fnmatch.fnmatchcase(name, self.event)


# -- predicates -------------------------------------------------------------------------
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
        ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
        ast.NotIn: lambda a, b: a not in b}


def compile_predicate(text: str) -> Callable[[Dict[str, Any]], bool]:
    """A predicate over an event's fields; ValueError names what is not allowed."""
    if len(text) > MAX_PREDICATE:
        raise ValueError("predicate longer than %d characters" % MAX_PREDICATE)
    try:
        tree = ast.parse(text.strip(), mode="eval")
        fn = _node(tree.body)
    except SyntaxError as e:
        raise ValueError("bad predicate %r: %s" % (text, e.msg)) from None
    except (RecursionError, MemoryError):
        raise ValueError("predicate nested too deeply") from None

    def predicate(fields: Dict[str, Any]) -> bool:
        # fields are guest data of any type and value: whatever evaluating them raises
        # is one kind of error, which the caller counts (never an exception that escapes)
        try:
            return bool(fn(fields))
        except KeyError as e:
            raise PredicateError("no field %s" % e) from None
        except Exception as e:
            raise PredicateError("%s: %s" % (type(e).__name__, e)) from None
    return predicate


def _node(n: ast.AST) -> Callable[[Dict[str, Any]], Any]:
    if isinstance(n, ast.BoolOp):
        parts = [_node(v) for v in n.values]
        if isinstance(n.op, ast.And):
            return lambda f: all(p(f) for p in parts)
        return lambda f: any(p(f) for p in parts)
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.Not):
        inner = _node(n.operand)
        return lambda f: not inner(f)
    if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub) and \
            isinstance(n.operand, ast.Constant) and isinstance(n.operand.value, (int, float)):
        v = -n.operand.value
        return lambda f: v
    if isinstance(n, ast.Compare):
        left = _node(n.left)
        ops = [_CMP[type(o)] for o in n.ops if type(o) in _CMP]
        if len(ops) != len(n.ops):
            raise ValueError("unsupported comparison (use == != < <= > >= in, not in)")
        rights = [_node(c) for c in n.comparators]

        def cmp(f):
            a = left(f)
            for op, r in zip(ops, rights):
                b = r(f)
                if not op(a, b):
                    return False
                a = b
            return True
        return cmp
    if isinstance(n, ast.Name):
        name = n.id

        def get(f: Dict[str, Any]) -> Any:
            if name in f:
                return f[name]
            return f[field_of(name, f) or name]       # KeyError: PredicateError above
        return get
    if isinstance(n, ast.Constant) and isinstance(n.value, (int, float, str, bool)):
        v = n.value
        return lambda f: v
    if isinstance(n, (ast.Tuple, ast.List)):
        items = [_node(e) for e in n.elts]
        return lambda f: tuple(i(f) for i in items)
    raise ValueError("unsupported syntax in predicate: %s" % type(n).__name__)


# -- the rules file -------------------------------------------------------------------------
def load(path: str) -> List[Trigger]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise TriggerError("%s: %s" % (path, e.strerror)) from None
    text = raw.decode("utf-8", "replace")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TriggerError("%s: %s" % (path, e)) from None
    return parse(doc, text, path)


def parse(doc: dict, text: str = "", path: str = "<rules>") -> List[Trigger]:
    heads = [i for i, ln in enumerate(text.splitlines(), 1)
             if re.match(r"\s*\[\[\s*trigger\s*\]\]", ln)]
    lines = text.splitlines()

    def where(i: int, key: str = "") -> str:
        start = heads[i] if i < len(heads) else 0
        end = heads[i + 1] if i + 1 < len(heads) else len(lines) + 1
        if key and start:
            for n in range(start, end):
                if re.match(r"\s*%s\s*=" % re.escape(key), lines[n - 1]) or \
                        re.search(r"[{,]\s*%s\s*=" % re.escape(key), lines[n - 1]):
                    return "%s:%d" % (path, n)
        return "%s:%d" % (path, start) if start else path

    unknown = set(doc) - {"trigger"}
    if unknown:
        raise TriggerError("%s: unknown table %s (expected [[trigger]])"
                           % (path, ", ".join(sorted(unknown))))
    items = doc.get("trigger", [])
    if not isinstance(items, list):
        raise TriggerError("%s: `trigger` must be an array of tables ([[trigger]])" % path)
    if len(items) > MAX_TRIGGERS:
        raise TriggerError("%s: more than %d triggers" % (path, MAX_TRIGGERS))
    out = []
    for i, t in enumerate(items):
        if not isinstance(t, dict):
            raise TriggerError("%s: trigger %d is not a table" % (where(i), i + 1))
        bad = set(t) - {"event", "domain", "when", "actions"}
        if bad:
            raise TriggerError("%s: trigger %d: unknown key %s" % (
                where(i, sorted(bad)[0]), i + 1, ", ".join(sorted(bad))))
        ev = t.get("event")
        if not isinstance(ev, str) or not re.fullmatch(r"[A-Za-z0-9_*?\[\]!-]+", ev):
            raise TriggerError("%s: trigger %d: `event` must be an event name or glob"
                               % (where(i, "event"), i + 1))
        dom = t.get("domain", "*")
        if not isinstance(dom, str) or not re.fullmatch(r"[A-Za-z0-9_.*?\[\]!-]+", dom):
            raise TriggerError("%s: trigger %d: bad `domain` pattern" % (where(i, "domain"),
                                                                          i + 1))
        trig = Trigger(i + 1, heads[i] if i < len(heads) else 0, ev, dom)
        if "when" in t:
            if not isinstance(t["when"], str):
                raise TriggerError("%s: trigger %d: `when` must be a string"
                                   % (where(i, "when"), i + 1))
            try:
                trig.when, trig.when_text = compile_predicate(t["when"]), t["when"]
            except ValueError as e:
                raise TriggerError("%s: trigger %d: %s" % (where(i, "when"), i + 1, e)) from None
        acts = t.get("actions")
        if not isinstance(acts, list) or not acts:
            raise TriggerError("%s: trigger %d: `actions` must be a non-empty list"
                               % (where(i, "actions"), i + 1))
        for a in acts:
            try:
                trig.actions.append(_action(a))
            except ValueError as e:
                key = next(iter(a), "actions") if isinstance(a, dict) else "actions"
                raise TriggerError("%s: trigger %d: %s" % (where(i, key), i + 1, e)) from None
        out.append(trig)
    return out


def _action(a: Any) -> Action:
    if not isinstance(a, dict):
        raise ValueError("an action is a table, e.g. { snapshot = true }")
    kinds = [k for k in a if k in ACTIONS]
    if len(kinds) != 1:
        unknown = [k for k in a if k not in ACTIONS + ("domain",)]
        if unknown:
            raise ValueError("unknown action %r (known: %s)" % (unknown[0], ", ".join(ACTIONS)))
        raise ValueError("an action names exactly one of %s" % ", ".join(ACTIONS))
    k = kinds[0]
    allowed = {k} | ({"domain"} if k in ("enable", "disable") else set())
    extra = set(a) - allowed
    if extra:
        raise ValueError("unexpected %s in %s action" % (", ".join(sorted(extra)), k))
    v = a[k]
    if k in ("snapshot", "stop"):
        if v is not True:
            raise ValueError("%s takes `true`" % k)
        return Action(k)
    if not isinstance(v, str) or not v:
        raise ValueError("%s takes a string" % k)
    if k == "marker":
        return Action(k, v[:256])
    if not re.fullmatch(r"[A-Za-z0-9_*?\[\]!-]+", v):
        raise ValueError("bad event pattern %r" % v)
    if k.startswith("qemu_trace"):
        return Action(k, v)
    dom = a.get("domain")
    if dom is not None and (not isinstance(dom, str) or
                            not re.fullmatch(r"[A-Za-z0-9_.*?\[\]!-]+", dom)):
        raise ValueError("bad domain pattern %r" % (dom,))
    return Action(k, v, domain=dom)


def field_of(name: str, fields) -> Optional[str]:
    """The field a predicate's name stands for: itself, or for a field named with a
    Python keyword (which a predicate cannot write), that name with underscores
    appended, as the tracepoint's keyword arguments spell it (`from_` for `from`)."""
    if name in fields:
        return name
    for k in range(1, len(name)):
        base = name[:-k]
        if name[-k:].strip("_") == "" and (keyword.iskeyword(base) or base == "__debug__") \
                and base in fields:
            return base
    return None


def check_fields(trig: Trigger, names: Tuple[str, ...]) -> Optional[str]:
    """Why trig's predicate can never hold for an event with these fields, or None."""
    if trig.when is None:
        return None
    used = {n.id for n in ast.walk(ast.parse(trig.when_text.strip(), mode="eval"))
            if isinstance(n, ast.Name)}
    missing = sorted(n for n in used if field_of(n, names) is None)
    return ("no field %s" % ", ".join(missing)) if missing else None
