"""Issue 12, "generated tracepoints never break": any C identifier is an event or
argument name, and every output and reader keeps every field, under a name that
collides with nothing (docs/abi.md §8, "Names in the outputs").

The names drawn: every Python keyword and builtin, `__debug__`, dunder names, TSDL
keywords, SQL reserved words, the outputs' own column and key names, the generated
tracepoint's internal names, and their relatives (`_x`, `__x`, `x_length` and
`_x_length` next to `x`, `X`, `f_x`). Hypothesis checks the naming functions and
an in-process emit -> collect -> decode round trip; one `hypertrace record`
session of ~200 such events is checked through report, babeltrace2, SQL, Perfetto,
Chrome JSON and the HTML view.
"""

from __future__ import annotations

import builtins
import json
import keyword
import math
import random
import re
import subprocess
import sys
import threading
import time
import uuid

import pyarrow as pa
from conftest import BT_LINE, babeltrace, bt_string, hypertrace, record, stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypertrace import abi
from hypertrace.formats import ctf, parquet
from hypertrace.guest.channel import Channel
from hypertrace.guest.tracepoint import build, param_names
from hypertrace.host.collector import Collector
from hypertrace.host.region import Region
from hypertrace.read import jsonfields
from hypertrace.read.columns import Columns
from hypertrace.read.session import Session

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
TSDL = sorted(ctf.TSDL_KEYWORDS) + ["Bool", "Complex", "Imaginary", "TRUE", "FALSE"]
SQL = ["select", "from", "where", "order", "group", "by", "table", "limit", "join", "union",
       "all", "as", "on", "and", "or", "not", "null", "case", "when", "then", "else", "end",
       "create", "view", "values", "distinct", "having", "offset", "default", "primary",
       "key", "column", "row", "user", "desc", "asc", "exclude", "replace", "pivot",
       "qualify", "window", "over", "filter", "like", "between", "cast", "true", "false"]
COLUMNS = ["ts", "raw_ts", "name", "domain", "stream", "pid", "tid", "seq", "dur", "args",
           "fields", "id", "cat", "ph", "s", "bp", "session", "truncated",
           "ts_uncertainty_ns", "file", "thread", "kind", "event", "tts", "value", "f_ts",
           "f_name", "debug", "track_uuid"]
# the generated code names its own things with a letter no C identifier holds (ħ):
# these are what they are called without it
INTERNAL = ["_on", "_tls", "_claim", "_mm", "_cq", "_id", "_clock", "_S0", "_S1", "__w",
            "__pos", "__size", "__f", "__s0", "__l0", "__o", "__seq", "__end", "_argerr",
            "_cut", "_char", "_SE", "_tp", "__builtins__", "__class__", "__name__",
            "__dict__", "__init__", "__debug__", "self", "cls"]
BASE = sorted(set(keyword.kwlist + list(getattr(keyword, "softkwlist", [])) +
                  [n for n in dir(builtins) if IDENT.match(n)] + TSDL + SQL + COLUMNS +
                  INTERNAL))


def relatives(n: str) -> list:
    """Names that collide with `n` in some output if nothing keeps them apart."""
    return [n, "_" + n, "__" + n, n + "_length", "_%s_length" % n, "__%s_length" % n,
            n.upper(), n.capitalize(), "f_" + n, n + "_"]


POOL = sorted({r for n in BASE for r in relatives(n)})
TYPES = ["int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t", "uint32_t", "int64_t",
         "uint64_t", "int", "unsigned", "long", "unsigned long", "size_t", "char",
         "unsigned char", "bool", "float", "double", "const char *", "bytes", "void *",
         "hwaddr"]
TEXT = 'abcXYZ019 _-.,;:=[]{}()"\\\'/éħ€🙂'
BUILTIN_COLUMNS = {"domain", "stream", "ts", "raw_ts"}

c_ident = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
names = st.one_of(st.sampled_from(POOL), st.sampled_from(BASE).flatmap(
    lambda n: st.sampled_from(relatives(n))), c_ident,
    st.just("x" * abi.MAX_NAME), st.just("_" * abi.MAX_NAME))


def _fits(name: str, pairs) -> bool:
    try:
        abi.make_decl(name, ", ".join("%s %s" % (t, a) for a, t in pairs))
        return True
    except ValueError:
        return False


@st.composite
def decls(draw, most: int = 12) -> abi.EventDecl:
    """An event whose argument names are drawn from the pool, families of related
    names (`x`, `_x`, `x_length`... in one event) included."""
    name = draw(names.filter(lambda n: not n.startswith("hypertrace")))
    args: list = []
    for a in draw(st.lists(st.one_of(names, st.sampled_from(BASE).map(relatives)),
                           max_size=most)):
        for n in (a if isinstance(a, list) else [a]):
            t = draw(st.sampled_from(TYPES))
            if n not in {x for x, _ in args} and len(args) < abi.MAX_FIELDS \
                    and _fits(name, args + [(n, t)]):
                args.append((n, t))
    return abi.make_decl(name, ", ".join("%s %s" % (t, a) for a, t in args))


# -- values ----------------------------------------------------------------------------
def value(ft: abi.FieldType, rnd):
    """A value of type `ft` that reads back exactly (`rnd`: random.Random or a
    hypothesis draw adapter with the same methods)."""
    if ft.kind == "int":
        bits = ft.size * 8
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if ft.signed else (0, (1 << bits) - 1)
        return rnd.choice([lo, hi, 0, rnd.randint(lo, hi)])
    if ft.kind == "bool":
        return rnd.random() < 0.5
    if ft.kind == "float":
        if ft.size == 4:                   # exact in binary32
            return rnd.randint(-4096, 4096) / 8
        return rnd.choice([0.0, -1.5, rnd.uniform(-1e6, 1e6), rnd.uniform(-1, 1) * 1e-3])
    if ft.kind == "str":
        return "".join(rnd.choice(TEXT) for _ in range(rnd.randint(0, 12)))
    return bytes(rnd.randint(0, 255) for _ in range(rnd.randint(0, 6)))


class _Draw:
    """random.Random's few methods over a hypothesis `data.draw`."""

    def __init__(self, data):
        self.d = data.draw

    def randint(self, a: int, b: int) -> int:
        return self.d(st.integers(a, b))

    def random(self) -> float:
        return self.d(st.floats(0, 1, exclude_max=True))

    def uniform(self, a: float, b: float) -> float:
        return self.d(st.floats(a, b))

    def choice(self, xs):
        return self.d(st.sampled_from(xs))


def jsonable(v):
    return v.hex() if isinstance(v, bytes) else v


def same(a, b, rel: float = 1e-12) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and \
            math.isclose(a, b, rel_tol=rel, abs_tol=1e-300)
    return a == b and type(a) is type(b)


def same_items(got: list, want: list, rel: float = 1e-12) -> bool:
    return [k for k, _ in got] == [k for k, _ in want] and \
        all(same(x, y, rel) for (_, x), (_, y) in zip(got, want))


# -- the naming functions ----------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(decl=decls(most=32))
def test_ctf_and_column_names_are_distinct_valid_and_recognisable(decl):
    fns = ctf.field_names(decl)
    written = [n.field for n in fns] + [n.length for n in fns if n.length]
    shown = [n.shown for n in fns] + [n.length_shown for n in fns if n.length]
    assert all(IDENT.match(w) and w not in ctf.TSDL_KEYWORDS and w.startswith("_")
               for w in written)
    # babeltrace2 drops a leading `_` and refuses a written name that is a shown one
    assert len(set(written) | set(shown)) == 2 * len(written)
    for (a, _, ft), n in zip(decl.fields, fns):
        # the argument's own name unless it cannot be had; then it with `_`s appended
        assert n.shown == a or (n.shown.rstrip("_") == a.rstrip("_") and n.shown != a)
        # a name without a leading `_` is kept but for a keyword; `_a` yields to `a` only
        if ("_" + a not in ctf.TSDL_KEYWORDS and not a.startswith("_")) or \
                (a.startswith("_") and a[1:] not in {x for x, _, _ in decl.fields}):
            assert n.shown == a
        assert (n.length is None) == (ft.kind not in ("str", "bytes"))
    meta = ctf.metadata(bytes(16), [ctf.Domain("local", 0, events={1: decl})], {})
    for w in written:
        assert re.search(r"[ \[]%s[;\[\]]" % re.escape(w), meta)
    cols = parquet.column_names(decl)
    assert len({c.lower() for c in cols} | BUILTIN_COLUMNS) == len(cols) + 4
    assert all(c == "f_" + a or c.startswith("f_%s~" % a) for c, (a, _, _) in
               zip(cols, decl.fields))


def test_table_names_differ_whatever_the_case():
    used: set = set()
    got = [parquet.typed_name(d, e, used) for d, e in
           [("local", "Tick"), ("local", "tick"), ("local", "TICK"), ("a_b", "c"),
            ("a", "b_c"), ("Local", "tick")]]
    assert got == ["event_local_Tick", "event_local_tick~2", "event_local_TICK~3",
                   "event_a_b_c", "event_a_b_c~2", "event_Local_tick~4"]
    assert len({g.lower() for g in got}) == len(got)


# -- emit, collect, decode: in process -----------------------------------------------------
ROUND_TRIP = settings(max_examples=30, deadline=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow, HealthCheck.data_too_large])


@ROUND_TRIP
@given(evs=st.lists(decls(), min_size=1, max_size=4, unique_by=lambda d: d.name),
       data=st.data())
def test_any_names_round_trip_through_a_collector(tmp_path, evs, data):
    path = "/dev/shm/ht-names-%s" % uuid.uuid4().hex[:10]
    out = str(tmp_path / ("s" + uuid.uuid4().hex))
    region = Region.create(path, "names", n_rings=2, ring_size=1 << 16)
    ch = Channel(path, time.monotonic_ns)
    tls = threading.local()
    try:
        rnd = _Draw(data)
        sent = []
        col = Collector(out)
        col.add_region(region, "local")
        tps = []
        for d in evs:
            tp = build(d, tls, lambda: ch.claim(tls), time.monotonic_ns)
            ch.attach(tp, tls)
            code = getattr(tp, "__wrapped__", tp).__code__     # the Python tracepoint
            assert code.co_varnames[:len(d.fields)] == tuple(param_names(d))
            tps.append(tp)
        for _ in range(2):
            for d, tp in zip(evs, tps):
                vals = [value(ft, rnd) for _, _, ft in d.fields]
                tp(*vals)
                sent.append((d.name, list(zip([a for a, _, _ in d.fields], vals))))
        col.poll()
        w = getattr(tls, "w", None)
        if w is not None:
            w.release()
        col.stop()
        s = Session(out)
        got = [(e.name, list(e.fields.items())) for e in s.events() if e.domain == "local"]
        assert len(got) == len(sent)
        assert all(n == m and same_items(f, g) for (n, f), (m, g) in zip(got, sent)), \
            (got, sent)
        # the columnar path every export reads, and the JSON objects it makes
        c = Columns(s)
        rows = []
        for b in c.batches():
            for i in range(len(b)):
                kind = c.kinds[int(b.kind[i])]
                if kind.domain != "local":
                    continue
                cols = [col_.take(pa.array([int(b.pos[i])])) for col_ in b.fields[int(b.kind[i])]]
                obj = json.loads(jsonfields.objects(kind.codec.decl, cols, 1)[0].as_py())
                rows.append((kind.name, list(obj.items())))
        assert all(n == m and same_items(f, [(k, jsonable(v)) for k, v in g])
                   for (n, f), (m, g) in zip(rows, sent)) and len(rows) == len(sent)
        for d in evs:              # what the collector declared is what the guest did
            assert abi.Codec(d).names == [a for a, _, _ in d.fields]
    finally:
        ch.close()
        region.close()


# -- one recorded session, every output ------------------------------------------------------
APP = r"""
import json, sys
from hypertrace import guest
for ev in json.load(open(sys.argv[1])):
    tp = guest.event(ev["name"], ev["args"])
    for vals in ev["values"]:
        tp(*[bytes.fromhex(v["hex"]) if isinstance(v, dict) else v for v in vals])
"""


def _plan(n: int = 200, seed: int = 12) -> list:
    """n events (seeded): every name of BASE is an argument somewhere, families of
    relatives share events, names differ from others only by case, types vary."""
    rnd = random.Random(seed)
    todo = BASE[:]
    rnd.shuffle(todo)
    decls_: list = []
    taken = set()
    while len(decls_) < n:
        ename = rnd.choice(POOL + ["ev%d" % len(decls_)])
        if ename in taken or ename.startswith("hypertrace") or ename.endswith(("_begin",
                                                                                "_end")):
            continue
        taken.add(ename)
        args: list = []
        want = rnd.randint(0, 12) if len(decls_) % 10 else 32
        while len(args) < want:
            if todo:
                group = [todo.pop()]
            elif rnd.random() < 0.3:
                group = relatives(rnd.choice(BASE))[:rnd.randint(2, 10)]
            else:
                group = [rnd.choice(POOL)]
            if rnd.random() < 0.2:
                group = relatives(group[0])
            added = False
            for a in group:
                t = rnd.choice(TYPES)
                if a not in {x for x, _ in args} and len(args) < abi.MAX_FIELDS \
                        and _fits(ename, args + [(a, t)]):
                    args.append((a, t))
                    added = True
            if not added:
                break
        decls_.append((ename, args))
    # a BASE name that fitted nowhere (its event's signature was full): events of their own
    used = {a for _, xs in decls_ for a, _ in xs}
    missing = [x for x in BASE if x not in used]
    for i in range(0, len(missing), 6):
        decls_.append(("rest%d" % i, [(x, rnd.choice(TYPES)) for x in missing[i:i + 6]]))
    events = []
    for ename, args in decls_:
        decl = abi.make_decl(ename, ", ".join("%s %s" % (t, a) for a, t in args))
        vals = [[value(ft, rnd) for _, _, ft in decl.fields] for _ in range(2)]
        events.append((decl, vals))
    return events


def _bt_value(s: str, i: int):
    """One babeltrace2 text value at s[i:]: a string, an array, or a number token."""
    if s[i] == '"':
        j = i + 1
        while s[j] != '"':
            j += 2 if s[j] == "\\" else 1
        return bt_string(s[i:j + 1]), j + 1
    if s[i] == "[":
        out = []
        i += 1
        while True:
            while s[i] == " ":
                i += 1
            if s[i] == "]":
                return out, i + 1
            m = re.compile(r"\[\d+\] = ").match(s, i)
            v, i = _bt_value(s, m.end())
            out.append(v)
            if s[i] == ",":
                i += 1
    m = re.compile(r"[^,\s\]}]+").match(s, i)
    return m.group(), m.end()


def _bt_fields(body: str) -> list:
    out, i = [], 0
    while i < len(body):
        m = re.compile(r"(\w+) = ").match(body, i)
        assert m, body[i:i + 80]
        v, i = _bt_value(body, m.end())
        out.append((m.group(1), v))
        if body.startswith(", ", i):
            i += 2
    return out


def _bt_want(decl: abi.EventDecl, vals: list) -> list:
    """The fields babeltrace2 prints for one record, by their shown names."""
    out = []
    for (_a, _, ft), n, v in zip(decl.fields, ctf.field_names(decl), vals):
        if n.length is not None:
            out.append((n.length_shown, str(len(v.encode() if ft.kind == "str" else v))))
        if ft.kind == "bytes":
            v = [str(x) for x in v]
        elif ft.kind == "bool":
            v = str(int(v))
        elif ft.kind == "int":
            v = "0x%X" % v if ft.hex else str(v)
        out.append((n.shown, v))
    return out


def _bt_same(got: list, want: list) -> bool:
    if [k for k, _ in got] != [k for k, _ in want]:
        return False
    for (_, g), (_, w) in zip(got, want):
        if isinstance(w, float):        # babeltrace2 prints 6 significant digits
            if not math.isclose(float(g), w, rel_tol=1e-5, abs_tol=1e-300):
                return False
        elif g != w:
            return False
    return True


def _sql(s: str, q: str) -> list:
    return [json.loads(x) for x in hypertrace("sql", s, q, "--json").stdout.splitlines()]


def test_any_names_in_every_output_of_one_session(tmp_path):
    plan = _plan()
    spec = [{"name": d.name, "args": ", ".join("%s %s" % (t, a) for a, t, _ in d.fields),
             "values": [[{"hex": v.hex()} if isinstance(v, bytes) else v for v in vs]
                        for vs in vals]} for d, vals in plan]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "app.py").write_text(APP)
    s = str(tmp_path / "s")
    r = record(s, sys.executable, str(tmp_path / "app.py"), str(tmp_path / "spec.json"))
    assert "warning" not in r.stderr, r.stderr[-2000:]
    by_name = {d.name: (d, vals) for d, vals in plan}
    want = {d.name: [list(zip([a for a, _, _ in d.fields], vs)) for vs in vals]
            for d, vals in plan}
    n_args = sum(len(d.fields) for d, _ in plan)
    assert n_args > 1000 and all(any(b in [a for a, _, _ in d.fields] for d, _ in plan)
                                 for b in BASE)

    def check(what: str, got: dict, conv=lambda v: v) -> None:
        assert sorted(got) == sorted(want), what
        for name, rows in got.items():
            exp = [[(k, conv(v)) for k, v in r] for r in want[name]]
            assert len(rows) == len(exp) and all(same_items(g, w) for g, w in zip(rows, exp)), \
                "%s: event %s: %r != %r" % (what, name, rows, exp)

    # the index and stats: every event counted under its name
    st_ = stats(s)
    assert {k: v["count"] for k, v in st_["events"].items() if not k.startswith("hypertrace")} \
        == {d.name: 2 for d, _ in plan}
    # report --json: the fields object holds every argument, by its name, nothing else
    got: dict = {}
    for line in hypertrace("report", s, "--json").stdout.splitlines():
        e = json.loads(line)
        assert set(e) <= {"ts", "raw_ts", "domain", "stream", "name", "fields",
                          "ts_uncertainty_ns", "truncated"}
        if e["domain"] == "local":
            got.setdefault(e["name"], []).append(list(e["fields"].items()))
    check("report --json", got, jsonable)
    # babeltrace2: no warning, every field under its shown name with its value
    bt, _ = babeltrace(s)
    assert sorted({n for n, _ in bt}) == sorted(want)
    out = subprocess.run(["babeltrace2", s], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and not out.stderr.strip()
    seen: dict = {}
    for line in out.stdout.splitlines():
        m = BT_LINE.match(line)
        assert m, line
        if m.group(1) in by_name:
            d, vals = by_name[m.group(1)]
            k = seen.get(d.name, 0)
            seen[d.name] = k + 1
            assert _bt_same(_bt_fields(m.group(2)), _bt_want(d, vals[k])), \
                (line, _bt_want(d, vals[k]))
    assert seen == {d.name: 2 for d, _ in plan}
    # SQL over the Parquet export: one typed view per event (names apart whatever the
    # case), the columns f_<arg> (~N when taken but for case) after the built-in ones
    views = [r["table_name"] for r in _sql(
        s, "select table_name from information_schema.tables "
           "where starts_with(table_name, 'event_local_')")]
    assert len(views) == len(plan) and len({v.lower() for v in views}) == len(views)
    blobs: dict = {}
    for r in _sql(s, "select table_name, column_name from information_schema.columns "
                     "where data_type = 'BLOB' and starts_with(table_name, 'event_local_')"):
        blobs.setdefault(r["table_name"], []).append(r["column_name"])
    parts = []
    for v in views:
        # bytes as hex, under the column's own name: SELECT * REPLACE keeps names and order
        rep = " replace (%s)" % ", ".join('hex("%s") as "%s"' % (c, c) for c in blobs[v]) \
            if v in blobs else ""
        parts.append("select '%s' as v, to_json(x) as j from (select *%s from \"%s\") x"
                     % (v, rep, v))
    rows: dict = {}
    for r in _sql(s, " union all ".join(parts)):
        rows.setdefault(r["v"], []).append(json.loads(r["j"]))
    got = {}
    for v, rs in rows.items():
        rs.sort(key=lambda r: (r["ts"], r["raw_ts"]))
        assert all(list(r)[:4] == ["domain", "stream", "ts", "raw_ts"] for r in rs)
        got[v] = [list(r.items())[4:] for r in rs]
    matched = {}
    for d, vals in plan:
        cols = parquet.column_names(d)
        exp = [[(c, v.hex().upper() if isinstance(v, bytes) else v)
                for c, v in zip(cols, vs)] for vs in vals]
        hits = [v for v in _candidates(d, views) if len(got.get(v, [])) == 2 and all(
            same_items(g, w) for g, w in zip(got[v], exp))]
        assert len(hits) == 1, (d.signature, hits, [got.get(v) for v in _candidates(d, views)],
                                exp)
        matched[hits[0]] = d.name
    assert len(matched) == len(plan)
    # Chrome JSON: args hold every argument by its name, apart from ph/name/ts/pid...
    hypertrace("export", s, "--format", "json", "-o", str(tmp_path / "t.json"))
    doc = json.loads((tmp_path / "t.json").read_text())
    got = {}
    for e in doc["traceEvents"]:
        if e["ph"] == "i" and e.get("cat") == "local":
            got.setdefault(e["name"], []).append(list(e["args"].items()))
    check("chrome json", got, jsonable)
    # Perfetto: every argument a debug annotation, by its name, with its value
    hypertrace("export", s, "--format", "perfetto", "-o", str(tmp_path / "t.pftrace"))
    from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb
    packets = pb.Trace.FromString((tmp_path / "t.pftrace").read_bytes()).packet
    enames, anames, got = {}, {}, {}
    for p in packets:
        for e in p.interned_data.event_names:
            enames[e.iid] = e.name
        for e in p.interned_data.debug_annotation_names:
            anames[e.iid] = e.name
        if p.HasField("track_event") and p.track_event.type == pb.TrackEvent.TYPE_INSTANT:
            name = enames[p.track_event.name_iid]
            if name in want:
                got.setdefault(name, []).append(
                    [(anames[a.name_iid], getattr(a, a.WhichOneof("value")))
                     for a in p.track_event.debug_annotations])
    check("perfetto", got, jsonable)
    # the HTML view: each sampled event's fields, as JSON by argument name
    hypertrace("export", s, "--format", "html", "-o", str(tmp_path / "t.html"))
    page = (tmp_path / "t.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id="data">(.*?)</script>',
                                page, re.S).group(1))
    got = {}
    for k, a in zip(data["events"]["kind"], data["events"]["args"]):
        dom, name = data["kinds"][k]
        if dom == "local":
            got.setdefault(name, []).append(list(json.loads(a).items()))
    check("html", got, jsonable)


def _candidates(d: abi.EventDecl, views: list) -> list:
    base = ("event_local_" + d.name).lower()
    return [v for v in views if re.sub(r"~\d+\Z", "", v).lower() == base]


def test_sql_columns_named_like_keywords_and_builtin_columns(tmp_path):
    """`hypertrace sql` on a table whose columns are named after SQL words and the
    built-in columns, quoted as every identifier must be."""
    app = tmp_path / "app.py"
    app.write_text(
        "from hypertrace import guest\n"
        "e = guest.event('select', 'int order, int group, int table, uint64_t ts, int TS, "
        "const char *name, int domain, int f_ts, bool stream, int raw_ts')\n"
        "e(1, 2, 3, 4, 5, 'six', 7, 8, True, 10)\n"
        "E = guest.event('Select', 'int from')\n"
        "E(11)\n")
    s = str(tmp_path / "s")
    record(s, sys.executable, str(app))
    rows = _sql(s, 'select "f_order", "f_group", "f_table", "f_ts", "f_TS~2", "f_name", '
                   '"f_domain", "f_f_ts", "f_stream", "f_raw_ts", domain, stream '
                   'from "event_local_select"')
    assert rows == [{"f_order": 1, "f_group": 2, "f_table": 3, "f_ts": 4, "f_TS~2": 5,
                     "f_name": "six", "f_domain": 7, "f_f_ts": 8, "f_stream": True,
                     "f_raw_ts": 10, "domain": "local", "stream": "local-0000"}]
    views = {r["table_name"] for r in _sql(s, "select table_name from information_schema."
                                              "tables")}
    assert {"event_local_select", "event_local_Select~2"} <= views or \
        {"event_local_Select", "event_local_select~2"} <= views
    other = "event_local_Select~2" if "event_local_Select~2" in views else "event_local_Select"
    assert _sql(s, 'select "f_from" from "%s"' % other) == [{"f_from": 11}]


def test_the_session_index_takes_any_c_identifier():
    """sessionindex refuses nothing a C identifier may be: `__x`, `_s_length` beside `s`,
    keywords, as event names, argument names and per-event counts."""
    from hypertrace import sessionindex
    sigs = ["__x(int __y, uint16_t _s_length, const char *s)", "from(int in, int __debug__)",
            "_(int _, int __, int ___)", "struct(bytes integer, int Bool, int _Bool)",
            "%s(int %s)" % ("z" * abi.MAX_NAME, "_" * abi.MAX_NAME)]
    doc = {"format": "hypertrace-session", "domains": [{
        "name": "local", "stream_id": 0, "clock_offset_ns": 0,
        "events": {str(i): {"name": s.split("(")[0], "signature": s}
                   for i, s in enumerate(sigs)}}],
        "streams": [{"file": "local-0000", "domain": "local", "recorded": 5, "discarded": 0,
                     "malformed": 0, "torn": 0,
                     "per_event": {s.split("(")[0]: 1 for s in sigs}}]}
    assert sessionindex.validate(json.loads(json.dumps(doc)))["domains"][0]["events"]
