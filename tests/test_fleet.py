"""Many sessions at once: `hypertrace sql DIR1 DIR2 ... QUERY`, and the Hive-partitioned
dataset of `export --format parquet --dataset ROOT`, read by DuckDB and by Spark."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys

import duckdb
import pytest
from conftest import ROOT, hypertrace, record

# a third session of another run: `job` declared otherwise than tests/apps/workload.py
# (proc uint64 for uint32, thread int16 for uint32, fewer arguments: widened and NULL),
# `work_done` with `seconds` a string where examples/workload.py has a double (a
# conflict), `app_tick` as examples/workload.py declares it, and an event of its own
OTHER = r"""
from hypertrace import guest
job = guest.event("job", "uint64_t proc, int16_t thread, uint64_t i")
work = guest.event("work_done", "uint32_t worker, const char *seconds, bool ok")
tick = guest.event("app_tick", "uint64_t n, int32_t delta, const char *msg")
vm_exit = guest.event("vm_exit", "uint16_t reason, int64_t ns")
for i in range(250):
    job((1 << 40) + i, -i, i)
    tick(i * 3, i - 100, "t%d" % i)
    vm_exit(i % 7, -i * 1000)
    if i % 50 == 0:
        work(i, "%d.5" % i, True)
        guest.sync_point("mark", i)
"""
#: what the third session's index says it was recorded on: escaped in the partition
FAR_HOST = "rack 2/vm:7"


def _sql(*args):
    r = hypertrace("sql", "--json", *args)
    return [json.loads(line) for line in r.stdout.splitlines()]


def _uuid(d):
    with open(os.path.join(d, ".hypertrace", "session.json")) as f:
        return json.load(f)["trace_uuid"]


def _set_host(d, host):
    """As if recorded elsewhere (host given), or by a `record` older than the index's
    hostname (None: only the CTF metadata names the machine)."""
    p = os.path.join(d, ".hypertrace", "session.json")
    with open(p) as f:
        doc = json.load(f)
    doc.pop("hostname")
    if host is not None:
        doc["hostname"] = host
    with open(p, "w") as f:
        json.dump(doc, f)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    base = tmp_path_factory.mktemp("fleet")
    # the same basename in two places: the session column is the trace uuid
    a, b, c = str(base / "h1" / "run"), str(base / "h2" / "run"), str(base / "c")
    os.makedirs(os.path.dirname(a))
    os.makedirs(os.path.dirname(b))
    record(a, sys.executable, os.path.join(ROOT, "examples", "workload.py"), "2", "150")
    record(b, sys.executable, os.path.join(ROOT, "tests", "apps", "workload.py"), "2", "2",
           "120")
    app = base / "other.py"
    app.write_text(OTHER)
    record(c, sys.executable, str(app))
    _set_host(b, None)
    _set_host(c, FAR_HOST)
    return {"dirs": [a, b, c], "ids": [_uuid(a), _uuid(b), _uuid(c)],
            "hosts": [socket.gethostname(), socket.gethostname(), FAR_HOST], "base": base}


def _rows(rows, *keys):
    return sorted(tuple(r[k] for k in keys) for r in rows)


def test_sql_over_sessions_matches_each_session(fleet):
    dirs, ids = fleet["dirs"], fleet["ids"]
    assert len(set(ids)) == 3
    got = _sql(*dirs, "select session, host, name, count(*) as n from events group by all")
    want = []
    for d, sid, host in zip(dirs, ids, fleet["hosts"]):
        for r in _sql(d, "select name, count(*) as n from events group by name"):
            want.append((sid, host, r["name"], r["n"]))
    assert _rows(got, "session", "host", "name", "n") == sorted(want)
    assert {r["name"] for r in got if r["session"] == ids[1]} >= {"job"}
    assert "job" not in {r["name"] for r in got if r["session"] == ids[0]}
    # the index tables, per session
    for view, key in (("streams", "file"), ("clocks", "domain"), ("sync", "sync_id")):
        got = _sql(*dirs, "select session, %s from %s" % (key, view))
        want = [(sid, r[key]) for d, sid in zip(dirs, ids)
                for r in _sql(d, "select %s from %s" % (key, view))]
        assert _rows(got, "session", key) == sorted(want), view
    assert _sql(dirs[2], "select count(*) as n from sync")[0]["n"] > 0
    # a typed view exists when any session has its event: its rows are that session's
    got = _sql(*dirs, 'select session, count(*) as n, sum(f_reason) as s from '
                      'event_local_vm_exit group by session')
    one = _sql(dirs[2], "select count(*) as n, sum(f_reason) as s from event_local_vm_exit")[0]
    assert [(r["session"], r["n"], r["s"]) for r in got] == [(ids[2], one["n"], one["s"])]


def test_typed_views_union_by_name(fleet):
    a, b, c = fleet["dirs"]
    ids = fleet["ids"]
    # job: proc uint32 and uint64, thread uint32 and int16: widened, values exact;
    # the arguments only b declares are NULL in c's rows
    q = ("select session, count(*) as n, sum(f_proc) as p, sum(f_thread) as t, "
         "count(f_neg) as neg, max(f_i) as i from event_local_job group by session")
    got = {r["session"]: r for r in _sql(b, c, q)}
    for d, sid in ((b, ids[1]), (c, ids[2])):
        cols = _sql(d, 'select column_name from (describe event_local_job)')
        neg = "count(f_neg)" if any(r["column_name"] == "f_neg" for r in cols) else "0"
        one = _sql(d, "select count(*) as n, sum(f_proc) as p, sum(f_thread) as t, %s as neg,"
                      " max(f_i) as i from event_local_job" % neg)[0]
        assert {k: got[sid][k] for k in one} == one
    assert got[ids[2]]["p"] > 1 << 40 and got[ids[2]]["t"] < 0 and got[ids[2]]["neg"] == 0
    # work_done: seconds a double in a, a string in c: an error naming it, no view of
    # strings; the other views still answer, and a with b has the view
    r = hypertrace("sql", a, c, "select * from event_local_work_done", check=False)
    assert r.returncode == 2 and "f_seconds" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    n_a = _sql(a, "select count(*) as n from event_local_work_done")[0]["n"]
    q = "select count(*) as n from event_local_app_tick"
    assert _sql(a, c, q)[0]["n"] == sum(_sql(d, q)[0]["n"] for d in (a, c))
    assert _sql(a, b, "select count(*) as n from event_local_work_done")[0]["n"] == n_a


def _one_line_error(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("hypertrace: error: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_session_lists(fleet, tmp_path):
    a, b, _ = fleet["dirs"]
    copy = str(tmp_path / "copy")
    shutil.copytree(a, copy, symlinks=True)
    hostile = tmp_path / "hostile"
    (hostile).mkdir()
    os.symlink(os.path.join(a, ".hypertrace"), hostile / ".hypertrace")
    for args, says in (((a, b, a), "same directory"), ((a, copy), "same session"),
                       ((a, str(tmp_path)), "not a hypertrace session"),
                       ((a, str(hostile)), "symbolic link")):
        for cmd in (("sql", *args, "select 1"),
                    ("export", "--format", "parquet", "--dataset", str(tmp_path / "ds"),
                     *args)):
            r = hypertrace(*cmd, check=False)
            _one_line_error(r)
            assert says in r.stderr, r.stderr
    assert not (tmp_path / "ds").exists() or not any(
        n.startswith("host=") for n in os.listdir(tmp_path / "ds"))


# -- the dataset -------------------------------------------------------------------------
# the same questions asked of `hypertrace sql` over the sessions, of DuckDB and of Spark
# over the dataset (the dataset's tables are named for their file: events, streams...)
QUERIES = {
    "counts": "select host, session, name, count(*) as n from events group by host, session, "
              "name",
    "typed": "select session, count(*) as n, sum(f_n) as s, avg(f_delta) as a, "
             "min(length(f_msg)) as m from event_local_app_tick group by session",
    "join": "select e.session, s.pid, s.thread, count(*) as n, max(e.ts) as last from events e "
            "join streams s on s.session = e.session and s.file = e.stream "
            "group by e.session, s.pid, s.thread",
    "sync": "select host, session, count(*) as n, sum(guest_send) as g from sync "
            "group by host, session",
}


def _norm(rows):
    # Spark reads uint64 as decimal(20,0): compared as integers
    return sorted(tuple(int(v) if type(v).__name__ == "Decimal" else v for v in r)
                  for r in rows)


def _duckdb_dataset(root, q):
    con = duckdb.connect()
    for t in ("events", "streams", "sync", "event_local_app_tick"):
        con.execute("create view %s as select * from read_parquet('%s/**/%s.parquet', "
                    "hive_partitioning = true, hive_types = {'host': 'VARCHAR', "
                    "'session': 'VARCHAR'})" % (t, root, t))
    return _norm(con.execute(q).fetchall())


@pytest.fixture(scope="module")
def dataset(fleet):
    a, b, c = fleet["dirs"]
    root = str(fleet["base"] / "ds")
    # two sessions, then a third added to the same ROOT
    hypertrace("export", "--format", "parquet", "--dataset", root, a, b)
    hypertrace("export", "--format", "parquet", "--dataset", root, c)
    return root


def test_dataset_layout_and_replace(fleet, dataset):
    ids, hosts = fleet["ids"], fleet["hosts"]
    parts = sorted(os.path.relpath(os.path.join(d, n), dataset)
                   for d, _, fs in os.walk(dataset) for n in fs if n == "events.parquet")
    want = sorted("host=%s/session=%s/events.parquet" % (
        h.replace("/", "%2F").replace(":", "%3A"), i)
        for h, i in zip(hosts, ids))
    assert parts == want
    far = os.path.join(dataset, "host=rack 2%2Fvm%3A7", "session=" + ids[2])
    # the tables of the session's own export (its SQL views but `lost`), and the marker
    own = {r["name"] for r in _sql(fleet["dirs"][2], "show tables")} - {"lost"}
    assert {"events", "event_local_job", "event_local_vm_exit"} <= own
    assert sorted(os.listdir(far)) == sorted([".hypertrace-export"] +
                                             [n + ".parquet" for n in own])
    # exported again: the partition is replaced whole, nothing else is left in its
    # host directory
    before = os.stat(os.path.join(far, "events.parquet")).st_ino
    hypertrace("export", "--format", "parquet", "--dataset", dataset, fleet["dirs"][2])
    assert os.stat(os.path.join(far, "events.parquet")).st_ino != before
    assert os.listdir(os.path.dirname(far)) == ["session=" + ids[2]]
    assert _duckdb_dataset(dataset, "select count(*) from events where session = '%s'"
                           % ids[2]) == [(len(_sql(fleet["dirs"][2], "select ts from events")),)]


def test_dataset_refuses_what_is_not_its_own(fleet, tmp_path):
    a = fleet["dirs"][0]
    # a directory that is not a dataset
    (tmp_path / "notds").mkdir()
    (tmp_path / "notds" / "keep").write_text("x")
    _one_line_error(hypertrace("export", "--format", "parquet", "--dataset",
                               str(tmp_path / "notds"), a, check=False))
    # a partition that is not an export of ours: left as it is
    root = tmp_path / "ds"
    hypertrace("export", "--format", "parquet", "--dataset", str(root), a)
    part = root / ("host=" + fleet["hosts"][0]) / ("session=" + fleet["ids"][0])
    (part / ".hypertrace-export").unlink()
    r = hypertrace("export", "--format", "parquet", "--dataset", str(root), a, check=False)
    _one_line_error(r)
    assert "not a partition you exported" in r.stderr and (part / "events.parquet").exists()
    # a host directory that is a symlink: never written through
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, root / ("host=" + FAR_HOST.replace("/", "%2F").replace(":", "%3A")))
    r = hypertrace("export", "--format", "parquet", "--dataset", str(root), fleet["dirs"][2],
                   check=False)
    _one_line_error(r)
    assert os.listdir(elsewhere) == []
    # a dataset inside a session directory (or a session inside the dataset)
    _one_line_error(hypertrace("export", "--format", "parquet", "--dataset",
                               os.path.join(a, "ds"), a, check=False))


def test_dataset_reads_in_duckdb_as_sql_over_sessions(fleet, dataset):
    dirs = fleet["dirs"]
    for name, q in QUERIES.items():
        got = _duckdb_dataset(dataset, q)
        assert got, name
        assert got == _norm([tuple(r.values()) for r in _sql(*dirs, q)]), name


@pytest.fixture(scope="module")
def spark():
    # Spark reads the files only: nothing here depends on the guest tracepoints, so the
    # second pass (HYPERTRACE_PURE=1) skips its start-up
    if os.environ.get("HYPERTRACE_PURE") == "1":
        pytest.skip("Spark reads the dataset only: run once, in the first pass")
    pyspark = pytest.importorskip("pyspark.sql")
    if not os.environ.get("JAVA_HOME") and os.path.isdir("/usr/lib/jvm/default-java"):
        os.environ["JAVA_HOME"] = "/usr/lib/jvm/default-java"
    s = (pyspark.SparkSession.builder.master("local[1]").appName("hypertrace-fleet")
         .config("spark.ui.enabled", "false").config("spark.driver.memory", "512m")
         .config("spark.sql.shuffle.partitions", "1")
         # partition values are names: a session id of digits only stays a string
         .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
         .getOrCreate())
    s.sparkContext.setLogLevel("ERROR")
    yield s
    # stop the JVM too: left running, its threads (`C2 CompilerThre`, `VM Periodic
    # Tas`) go on switching in the kernel tests that come next
    sc = type(s.sparkContext)
    gw = sc._gateway
    s.stop()
    proc = getattr(gw, "proc", None)
    if gw is not None:
        gw.shutdown()
    if proc is not None:
        proc.kill()
        proc.wait(timeout=30)
    sc._gateway = sc._jvm = None


def test_dataset_reads_in_spark_as_in_duckdb(dataset, spark):
    for t in ("events", "streams", "sync", "event_local_app_tick"):
        df = spark.read.option("basePath", dataset).parquet("%s/*/*/%s.parquet" % (dataset, t))
        df.createOrReplaceTempView(t)
    types = dict(spark.table("event_local_app_tick").dtypes)
    # uint64 as decimal(20,0), int32 as int, strings as strings, ts (int64 ns) as bigint
    assert types == {"domain": "string", "stream": "string", "ts": "bigint",
                     "raw_ts": "decimal(20,0)", "f_n": "decimal(20,0)", "f_delta": "int",
                     "f_msg": "string", "host": "string", "session": "string"}
    for name, q in QUERIES.items():
        got = _norm([tuple(r) for r in spark.sql(q).collect()])
        assert got == _duckdb_dataset(dataset, q), name
        assert got, name
