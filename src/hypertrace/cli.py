"""The `hypertrace` command: argument parsing only; the work lives in host/, analysis/."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import List, Optional

from . import abi


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib").rstrip("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError("bad size %r (e.g. 512K, 4M)" % text) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hypertrace", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("record", help="record a session: run COMMAND, or serve a channel")
    r.add_argument("-o", "--output", required=True, help="session directory (a CTF trace)")
    r.add_argument("--channel", help="attach mode: serve shm:/dev/shm/NAME until Ctrl-C")
    r.add_argument("--qemu", metavar="NAME", action="append",
                   help="serve QEMU guest NAME started with `hypertrace qemu-args --name NAME` "
                        "(repeat for several guests in one session)")
    r.add_argument("--vsock-port", type=int, metavar="PORT",
                   help="with --qemu: also serve the control channel on AF_VSOCK port PORT "
                        "(guests: control=vsock:2:PORT; needs vhost-vsock on the host)")
    r.add_argument("--name", default="local", help="domain name of the producers (default local)")
    r.add_argument("--triggers", metavar="RULES.toml",
                   help="guest events that make the host act (see README: Triggers)")
    r.add_argument("--buffer-size", type=_size, default=abi.DEFAULT_RING_SIZE,
                   help="bytes per ring, a power of two (default 4M)")
    r.add_argument("--rings", type=int, default=abi.DEFAULT_RINGS,
                   help="rings in the channel: producing threads at once (default 32)")
    r.add_argument("--max-events", type=int, default=abi.DEFAULT_MAX_EVENTS)
    r.add_argument("--mode", choices=sorted(abi.MODES), default=None,
                   help="when a ring is full: drop the newest (discard, the default), wait "
                        "then drop (block, the default with --functions: a call per "
                        "record outruns any drain), or overwrite the oldest (overwrite: "
                        "flight recorder)")
    r.add_argument("--block-timeout", type=float, default=1000.0, metavar="MS",
                   help="block mode: longest wait for room before dropping (default 1000 ms)")
    r.add_argument("--sync-interval", type=float, default=1.0, metavar="S",
                   help="seconds between clock exchanges of each producer process (default 1)")
    r.add_argument("--kernel", metavar="EVENTS",
                   help="also the host's kernel events, e.g. 'sched:sched_switch,irq:*' "
                        "(ftrace, root; into the host domain)")
    r.add_argument("--kernel-buffer", type=_size, default=0, metavar="SIZE",
                   help="with --kernel: ftrace's ring per CPU (e.g. 8M; default: the "
                        "kernel's own, usually 1.4M)")
    r.add_argument("--qemu-trace", metavar="PATTERN", action="append",
                   help="COMMAND is a QEMU user-mode emulator (qemu-x86_64 ...): also its own "
                        "trace events matching PATTERN, into domain qemu (repeatable)")
    r.add_argument("--functions", action="store_true",
                   help="trace every Python function call and return in every Python "
                        "process COMMAND starts (a start-up hook on PYTHONPATH)")
    r.add_argument("--include", metavar="GLOB", action="append",
                   help="with --functions: only functions whose file or qualified name "
                        "matches (repeatable)")
    r.add_argument("--exclude", metavar="GLOB", action="append",
                   help="with --functions: not functions whose file or qualified name "
                        "matches (repeatable)")
    r.add_argument("--logging", action="store_true",
                   help="record every Python `logging` record as a python_log event")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")

    for name, hlp in (("report", "print every event in time order"),
                      ("stats", "event counts, rates and losses")):
        x = sub.add_parser(name, help=hlp)
        x.add_argument("dir")
        x.add_argument("--json", action="store_true",
                       help="one JSON object per line" if name == "report" else None)
        if name == "report":
            x.add_argument("--domain", help="only this domain's events")
            x.add_argument("--all", action="store_true",
                           help="also hypertrace's own bookkeeping events (the host half "
                                "of sync points, clock samples, function declarations, "
                                "kernel transport chunks), hidden by default")
            x.add_argument("--format", choices=REPORT_FORMATS, default=None,
                           help="text (default): `ts domain/stream name k=v...`; json: as "
                                "--json; qemu: as QEMU's log backend with -msg "
                                "timestamp=on, `TID@SEC.USEC:name TEXT`, TEXT the event's "
                                "printf format applied to its fields as glibc would (an "
                                "event without a format: `name k=v...`; a format that does "
                                "not fit its fields: `name [format not applied: WHY] "
                                "k=v...`)")
        else:
            x.add_argument("--top", type=int, default=20, metavar="N",
                           help="traced functions listed: the N with the most total time "
                                "and the N with the most self time (0: all; default 20)")

    e = sub.add_parser("export", help="write the session as Perfetto protobuf, Chrome JSON, "
                                      "Parquet or a self-contained HTML timeline")
    e.add_argument("dir", nargs="+", metavar="DIR",
                   help="a session directory (several with --dataset)")
    e.add_argument("--format", required=True, choices=sorted(EXPORTS))
    out = e.add_mutually_exclusive_group()
    out.add_argument("-o", "--output",
                     help="file (perfetto, json, html) or directory (parquet)")
    out.add_argument("--dataset", metavar="ROOT",
                     help="with --format parquet: add each session to the Hive-partitioned "
                          "dataset ROOT, as ROOT/host=<host>/session=<trace uuid>/"
                          "<table>.parquet (made if missing; a session exported again "
                          "replaces its partition; README: Analysing a fleet)")

    v = sub.add_parser("view", help="write a self-contained HTML timeline of the session "
                                    "(same as export --format html) and print its path")
    v.add_argument("dir")
    v.add_argument("-o", "--output", help="HTML file (default DIR.html)")

    sq = sub.add_parser(
        "sql", help="DuckDB SQL over one session or many (views: events, streams, clocks, "
                    "sync, lost, event_<domain>_<name>)",
        usage="hypertrace sql [-h] [--csv | --json] DIR [DIR ...] QUERY",
        description="DuckDB SQL over the sessions DIR... (the last argument is the query). "
                    "Views: events (every event, fields as JSON), event_<domain>_<name> "
                    "(typed columns f_<arg>), streams, clocks, sync, lost. With several "
                    "DIRs every view also has the columns session (the trace uuid) and "
                    "host (the machine that recorded it) first (README: Analysing a fleet).")
    sq.add_argument("dir", nargs="+", metavar="DIR", help="a session directory (repeatable)")
    sq.add_argument("query", metavar="QUERY")
    fmt = sq.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")

    c = sub.add_parser("ctl", help="control a live recording: enable/disable guest events by "
                                   "pattern, or show its status")
    c.add_argument("dir", help="the output directory of a running `hypertrace record`")
    c.add_argument("action", choices=["enable", "disable", "status", "qemu-enable",
                                       "qemu-disable"],
                   help="enable/disable guest events; qemu-enable/qemu-disable QEMU's own "
                        "trace events of a guest recorded with --qemu (QMP)")
    c.add_argument("pattern", nargs="?", help="event name glob (enable, disable, qemu-*)")
    c.add_argument("--domain", default="*", help="domain name glob (default: every domain); "
                                                  "for qemu-*: the guest's --qemu NAME")
    c.add_argument("--json", action="store_true", help="status as JSON")

    rc = sub.add_parser("recover", help="finish a session whose recorder was killed: drain "
                                        "what is still in its channel's rings")
    rc.add_argument("dir")

    q = sub.add_parser("qemu-args", help="print the QEMU options for one traced guest")
    q.add_argument("--name", required=True, help="guest name: [A-Za-z0-9_.-], < 32 characters")
    q.add_argument("--buffer-size", type=_size, default=abi.DEFAULT_RING_SIZE)
    q.add_argument("--rings", type=int, default=abi.DEFAULT_RINGS)
    q.add_argument("--max-events", type=int, default=abi.DEFAULT_MAX_EVENTS)
    q.add_argument("--trace", action="append", metavar="PATTERN",
                   help="QEMU trace events enabled from the start (repeatable; triggers and "
                        "QMP can switch any event later)")
    q.add_argument("--vsock", type=int, metavar="CID",
                   help="also give the guest a vhost-vsock device with this CID (>= 3) for "
                        "`record --vsock-port`")

    s = sub.add_parser("snapshot", help="overwrite mode: write the rings' current contents")
    s.add_argument("dir")

    sub.add_parser("guest-path", help="print a PYTHONPATH entry holding only the guest library")

    g = sub.add_parser("gen-c", help="generate a C header of tracepoints (trace_NAME(...)) "
                                     "from a trace-events file")
    g.add_argument("trace_events")
    g.add_argument("-o", "--output", help="header to write (default: standard output)")
    cc = sub.add_parser("c-config", help="print the compiler flags of C producers: "
                                         "cc app.c $(hypertrace c-config --cflags --libs)")
    cc.add_argument("--cflags", action="store_true", help="include path of hypertrace.h")
    cc.add_argument("--libs", action="store_true",
                    help="the runtime (its C source, compiled into the program) and -pthread")
    u = sub.add_parser("usdt", help="list the recorder's USDT probes (bpftrace, SystemTap): "
                                    "their library and arguments")
    one = u.add_mutually_exclusive_group()
    one.add_argument("--json", action="store_true", help="as JSON")
    one.add_argument("--lib", action="store_true",
                     help="print only the library's path (bpftrace's usdt:LIB:hypertrace:...)")
    one.add_argument("--pid", metavar="DIR",
                     help="print only the pid of the live recorder of DIR (bpftrace -p PID)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    from .sessiondir import SessionError
    args = _parser().parse_args(argv)
    try:
        return globals()["cmd_" + args.cmd.replace("-", "_")](args)
    except SessionError as e:
        # a session directory refused while being read (a file replaced by a FIFO...)
        sys.stdout.flush()
        return _fail(str(e))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


def _fail(msg: str, code: int = 2) -> int:
    sys.stderr.write("hypertrace: error: %s\n" % msg)
    return code


def cmd_record(a) -> int:
    from .host.record import RecordError, record, summary
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd and not a.channel and not a.qemu:
        return _fail("give a COMMAND after --, --channel to serve producers that attach, "
                     "or --qemu NAME to serve a QEMU guest")
    if a.qemu and a.channel:
        return _fail("--qemu and --channel are exclusive")
    if a.vsock_port is not None and not (a.qemu and 0 < a.vsock_port < 1 << 32):
        return _fail("--vsock-port needs --qemu and a port in 1..4294967295")
    if (a.include or a.exclude) and not a.functions:
        return _fail("--include and --exclude select functions: give --functions too")
    child_env = {}
    if a.functions or a.logging:
        if not cmd:
            return _fail("--functions and --logging apply to the COMMAND given after --")
        from .guest.autostart import environment
        from .host.guestpath import guest_path
        try:
            base = guest_path()
        except OSError as e:
            return _fail("cannot prepare the start-up hook: %s" % (e.strerror or e))
        child_env = environment(a.functions, a.include, a.exclude, a.logging,
                                boot_dir=os.path.join(base, "hypertrace", "guest", "boot"),
                                path=base)
    mode = a.mode or ("block" if a.functions else "discard")
    try:
        col = record(a.output, cmd, channel=a.channel, mode=mode, ring_size=a.buffer_size,
                     rings=a.rings, max_events=a.max_events, block_timeout_ms=a.block_timeout,
                     name=a.name, sync_interval=a.sync_interval, qemu=a.qemu,
                     triggers=a.triggers, vsock_port=a.vsock_port, kernel=a.kernel,
                     qemu_trace=a.qemu_trace, kernel_buffer=a.kernel_buffer,
                     child_env=child_env)
    except RecordError as e:
        return _fail(str(e))
    # the command's stdout is its own: the recorder's summary goes beside it, on stderr
    say = sys.stderr if cmd else sys.stdout
    say.write(summary(col) + "\n")
    say.write("trace: %s (CTF 1.8: babeltrace2 %s)\n" % (os.path.abspath(a.output), a.output))
    _python_hook_check(a, col)
    if col.write_error is not None:
        return _fail("recording stopped: %s; the trace written up to then is kept and "
                     "readable (%d packets could not be written)" % (col.write_error,
                                                                      col.unwritten), 1)
    return col.exit_code


def _python_hook_check(a, col) -> None:
    """--functions with no Python process traced: say why it may be (nothing would)."""
    if not a.functions:
        return
    names = {n for src in col.sources for n in src.events.by_name}
    if "hypertrace_call" not in names:
        sys.stderr.write(
            "hypertrace: warning: --functions traced no Python process: the command ran no "
            "Python, or one that skips the start-up hook on PYTHONPATH (python -I, -E or -S, "
            "a PYTHONPATH the program resets); see README, Timing Python code\n")


def _session(path: str):
    from .read.session import Session, SessionError
    try:
        return Session(path)
    except SessionError as e:
        sys.stderr.write("hypertrace: error: %s\n" % e)
        sys.exit(2)


REPORT_FORMATS = ("text", "json", "qemu")


def cmd_report(a) -> int:
    if a.json and a.format not in (None, "json"):
        return _fail("--json and --format %s are exclusive" % a.format)
    fmt = "json" if a.json else a.format or "text"
    s = _session(a.dir)
    if a.domain and a.domain not in s.domains:
        return _fail("no domain %r in %s (domains: %s)" % (a.domain, a.dir,
                                                          ", ".join(s.domains)))
    w = sys.stdout.write
    qemu = None
    if fmt == "qemu":
        from .formats.qemu_log import QemuLog
        qemu = QemuLog(s)
    from .read.events import INTERNAL
    hidden = 0
    for e in s.events(a.domain):
        if not a.all and e.name in INTERNAL:
            hidden += 1
            continue
        if qemu is not None:
            w(qemu.line(e) + "\n")
        elif fmt == "json":
            w(json.dumps(e.to_json()) + "\n")
        else:
            f = " ".join("%s=%s" % (k, _show(v)) for k, v in e.fields.items())
            w("%d %s/%s %s %s%s\n" % (e.ts, e.domain, e.stream, e.name, f,
                                      " [truncated]" if e.truncated else ""))
    for msg in s.warnings:
        sys.stderr.write("hypertrace: warning: %s\n" % msg)
    if hidden:
        # on stderr: stdout stays one event a line in every format
        sys.stderr.write("hypertrace: %d internal event%s hidden (--all shows them)\n"
                         % (hidden, "" if hidden == 1 else "s"))
    return 0


def _show(v) -> str:
    from .analysis.text import printable
    if isinstance(v, str):
        # json.dumps escapes C0 controls; DEL and C1 (CSI \x9b) are escaped too
        return printable(json.dumps(v, ensure_ascii=False))
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def cmd_stats(a) -> int:
    from .analysis import stats
    if a.top < 0:
        return _fail("--top must be 0 (all) or more")
    st = stats.compute(_session(a.dir), top=a.top or None)
    sys.stdout.write((json.dumps(st, indent=1) if a.json else stats.format_text(st)) + "\n")
    return 0


EXPORTS = {"perfetto": "perfetto", "json": "chrome_json", "parquet": "parquet",
           "html": "html"}      # --format name -> module in hypertrace.formats


def _progress(s, what: str):
    """A progress bar on stderr (tqdm; silent when stderr is not a terminal)."""
    from tqdm import tqdm
    total = sum(int(st.get("recorded") or 0) for st in s.streams if st.get("file"))
    return tqdm(total=total, unit="ev", unit_scale=True, desc=what, disable=None,
                file=sys.stderr, leave=False)


def cmd_export(a) -> int:
    if a.dataset is not None:
        if a.format != "parquet":
            return _fail("--dataset writes Parquet: give --format parquet")
        return _export_dataset(a)
    if len(a.dir) > 1:
        return _fail("several sessions go into a dataset: give --format parquet --dataset ROOT")
    return _export(a, a.dir[0])


def _export_dataset(a) -> int:
    from .formats.dataset import Dataset, DatasetError
    from .read import identity
    sessions = [_session(d) for d in a.dir]
    identity.distinct(sessions)
    try:
        with Dataset(a.dataset) as ds:
            for s in sessions:
                ds.check(s)            # every session can go in before any is written
            for s in sessions:
                bar = _progress(s, identity.session_id(s)[:8])
                try:
                    path, n, leftover = ds.add(s, bar.update)
                finally:
                    bar.close()
                for msg in s.warnings:
                    sys.stderr.write("hypertrace: warning: %s: %s (the rest of that stream "
                                     "was skipped)\n" % (s.path, msg))
                if leftover:
                    sys.stderr.write("hypertrace: warning: the previous partition held other "
                                     "files: it is kept as %s\n" % leftover)
                print("%s: %d events written (%s)" % (path, n, s.path))
    except DatasetError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail("cannot write the dataset %s: %s" % (a.dataset, e.strerror or e))
    return 0


def _export(a, session_dir: str) -> int:
    import importlib

    from .formats.output import Output, OutputError
    from .read.columns import Columns
    a.dir = session_dir
    s = _session(a.dir)
    mod = importlib.import_module(".formats." + EXPORTS[a.format], __package__)
    out = a.output or a.dir.rstrip("/") + mod.SUFFIX
    directory = a.format == "parquet"
    try:
        # a fresh, exclusively created name next to OUT, renamed onto it when complete:
        # a failed export leaves nothing, and nothing planted there is written through
        dest = Output(out, a.dir, directory)
    except OutputError as e:
        return _fail(str(e))
    bar = _progress(s, a.format)
    try:
        with dest:
            if directory:
                from .formats.parquet import Files
                n = mod.write(Columns(s), "", bar.update, files_out=Files("", dest.opener))
            elif a.format == "html":
                # the view is a report of its own: analysis gives its numbers
                from .analysis import timeline
                n = mod.write(timeline.collect(Columns(s), bar.update), dest.file)
            else:
                n = mod.write(Columns(s), dest.file, bar.update)
            dest.commit()
    except OutputError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail("cannot write %s: %s" % (out, e.strerror or e))
    finally:
        bar.close()
    for msg in s.warnings:
        sys.stderr.write("hypertrace: warning: %s (the rest of that stream was skipped)\n"
                         % msg)
    if dest.leftover:
        sys.stderr.write("hypertrace: warning: the previous export held other files: it is "
                         "kept as %s\n" % os.path.join(os.path.dirname(os.path.abspath(out)),
                                                       dest.leftover))
    print("%s: %d events written (%s)" % (out, n, a.format))
    return 0


def cmd_view(a) -> int:
    a.format = "html"
    return _export(a, a.dir)


def cmd_sql(a) -> int:
    import csv

    import duckdb

    from .analysis import fleet, sql
    sessions = [_session(d) for d in a.dir]
    try:
        if len(sessions) == 1:
            cols, rows = sql.query(sessions[0], a.query)
        else:
            cols, rows = fleet.query(sessions, a.query)
    except duckdb.Error as e:
        return _fail("SQL error: %s" % str(e).splitlines()[0])
    except OSError as e:
        return _fail(str(e))
    finally:
        for s in sessions:
            for msg in s.warnings:
                sys.stderr.write("hypertrace: warning: %s%s (the rest of that stream was "
                                 "skipped)\n" % (s.path + ": " if len(sessions) > 1 else "",
                                                  msg))
    from .read.session import json_value  # bytes as hex, NaN as "NaN": as everywhere
    rows = [[json_value(v) for v in r] for r in rows]
    if a.json:
        for r in rows:
            print(json.dumps(dict(zip(cols, r)), default=str, allow_nan=False))
    elif a.csv:
        if sys.stdout.isatty():            # for a terminal: no raw control characters
            from .analysis.text import printable
            cols = [printable(c) for c in cols]
            rows = [[printable(v) if isinstance(v, str) else v for v in r] for r in rows]
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    else:
        from .analysis.text import printable  # for a terminal: no raw control characters
        cols = [printable(c) for c in cols]
        rows = [[printable(v) for v in r] for r in rows]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        print("  ".join(c.ljust(wd) for c, wd in zip(cols, widths)))
        for r in rows:
            print("  ".join(v.ljust(wd) for v, wd in zip(r, widths)))
    return 0


def cmd_snapshot(a) -> int:
    from .host.pidfile import recorder_pid
    from .host.runtime import Dir
    idx = os.path.join(a.dir, ".hypertrace", "session.json")
    try:
        # the pid is signalled only if it is still this session's recorder (pidfile.py)
        pid = recorder_pid(Dir.existing(a.dir).sub(".hypertrace"))
        before = os.stat(idx).st_mtime_ns if os.path.exists(idx) else 0
        os.kill(pid, signal.SIGUSR1)
    except (OSError, ValueError) as e:
        return _fail("no live recording in %s (%s)" % (a.dir, e))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if os.path.exists(idx) and os.stat(idx).st_mtime_ns != before:
            print("snapshot written to %s" % a.dir)
            return 0
        time.sleep(0.02)
    return _fail("the collector (pid %d) did not answer within 10 s" % pid)


def cmd_ctl(a) -> int:
    from .host.live import LiveError, request
    if a.action.startswith("qemu-"):
        return _ctl_qemu(a)
    try:
        if a.action == "status":
            st = request(a.dir, {"cmd": "status"}).get("status")
        else:
            if not a.pattern:
                return _fail("ctl %s needs an event name pattern" % a.action)
            r = request(a.dir, {"cmd": a.action, "pattern": a.pattern, "domain": a.domain})
    except LiveError as e:
        from .analysis.text import printable
        return _fail(printable(str(e)))
    try:
        # the reply is the recorder's, but the socket could be an old build's or a
        # stranger's: its shape is checked and its text made safe for the terminal
        lines = _ctl_lines(a, r if a.action != "status" else st)
    except (KeyError, TypeError, ValueError, AttributeError):
        return _fail("the recording at %s sent a malformed reply" % a.dir)
    print("\n".join(lines))
    return 0


def _ctl_qemu(a) -> int:
    """QEMU's trace events of one guest of a live recording, switched over its QMP socket
    (the one `qemu-args` gave QEMU, in the private runtime directory) from this process:
    the recorder's drain never waits on QEMU."""
    from .analysis.text import printable
    from .host.live import LiveError, request
    from .host.qmp import QmpError, set_trace_state
    if not a.pattern:
        return _fail("ctl %s needs a QEMU trace event name pattern" % a.action)
    try:
        doms = [str(d["domain"]) for d in request(a.dir, {"cmd": "status"})["status"]["domains"]]
    except LiveError as e:
        return _fail(printable(str(e)))
    except (KeyError, TypeError):
        return _fail("the recording at %s sent a malformed reply" % a.dir)
    if a.domain not in doms:
        return _fail("ctl %s: --domain must name a guest of the recording at %s (%s)" % (
            a.action, a.dir, ", ".join(printable(d) for d in doms) or "none"))
    try:
        n = set_trace_state(a.domain, a.pattern, a.action == "qemu-enable")
    except QmpError as e:
        return _fail(printable(str(e)))
    print("%sd QEMU trace events %s of %s: %d event(s)" % (
        a.action, a.pattern, a.domain, n))
    return 0


def _ctl_lines(a, r) -> List[str]:
    from .analysis.text import printable as p
    if a.action != "status":
        changed = [p(str(c)) for c in r["changed"]]
        return ["%sd %s in %s: %d event(s) changed%s" % (
            a.action, a.pattern, a.domain, len(changed),
            (" (" + ", ".join(changed) + ")") if changed else "")]
    if a.json:
        return [json.dumps(r, indent=1)]
    lines = []
    for d in r["domains"]:
        lines.append("domain %s" % p(str(d["domain"])))
        lines.append("  %-40s %-8s %10s" % ("event", "state", "recorded"))
        for e in d["events"]:
            lines.append("  %-40s %-8s %10d" % (p(str(e["name"])), "enabled" if e["enabled"]
                                                else "disabled", int(e["recorded"])))
        lines.append("  %-18s %8s %8s %-16s %10s %10s %9s %5s" % (
            "producer", "pid", "tid", "thread", "recorded", "discarded", "malformed", "torn"))
        for q in d["producers"]:
            lines.append("  %-18s %8s %8s %-16s %10s %10s %9s %5s" % tuple(
                p(str(v)) for v in (q["file"] or "(none)", q["pid"], q["tid"],
                                    (q["thread"] or "")[:16], q["recorded"], q["discarded"],
                                    q["malformed"], q["torn"])))
    return lines


def cmd_recover(a) -> int:
    from .host.recover import RecoverError, recover
    try:
        r = recover(a.dir)
    except RecoverError as e:
        return _fail(str(e))
    print("%s: recovered %d events in %d streams from the rings; %d streams already written "
          "recounted; clocks: %s" % (a.dir, r["recovered_events"], r["recovered_streams"],
                                     r["streams_recounted"], ", ".join(
                                         "%s %s" % kv for kv in r["clocks"].items())))
    for m in r["missing_channels"]:
        sys.stderr.write("hypertrace: warning: channel gone, nothing to recover there: %s\n"
                         % m)
    return 0


def cmd_qemu_args(a) -> int:
    import re

    from .host.record import qemu_args
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,31}", a.name):
        return _fail("guest name must be 1-31 characters of [A-Za-z0-9_.-]")
    for t in a.trace or []:
        if not re.fullmatch(r"[A-Za-z0-9_*?]+", t):
            return _fail("bad QEMU trace event pattern %r" % t)
    if a.vsock is not None and not 3 <= a.vsock < 0xFFFFFFFF:
        return _fail("a guest CID must be in 3..4294967294")
    try:
        print(qemu_args(a.name, a.buffer_size, a.rings, a.max_events, a.trace, a.vsock))
    except (OSError, ValueError) as e:     # a bad name, or no private runtime directory
        return _fail(str(e))
    return 0


def cmd_guest_path(_a) -> int:
    from .host.guestpath import guest_path
    try:
        print(guest_path())
    except OSError as e:        # HOME or XDG_CACHE_HOME not writable, a full disk...
        return _fail("cannot make the guest library directory%s: %s (set XDG_CACHE_HOME to a "
                     "writable directory)" % (" " + e.filename if e.filename else "",
                                             e.strerror or e))
    return 0


def cmd_gen_c(a) -> int:
    from .native.gen import generate_file
    try:
        text, warnings = generate_file(a.trace_events, a.output)
    except OSError as e:
        return _fail("cannot read %s: %s" % (a.trace_events, e.strerror or e))
    except ValueError as e:
        return _fail(str(e))
    for w in warnings:
        sys.stderr.write("hypertrace: warning: %s\n" % w)
    if not a.output:
        sys.stdout.write(text)
        return 0
    tmp = a.output + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, a.output)
    except OSError as e:
        return _fail("cannot write %s: %s" % (a.output, e.strerror or e))
    return 0


def cmd_c_config(a) -> int:
    from .native.gen import cflags, libs
    if not (a.cflags or a.libs):
        return _fail("c-config: give --cflags and/or --libs")
    print(" ".join(x for x, on in ((cflags(), a.cflags), (libs(), a.libs)) if on))
    return 0


def cmd_usdt(a) -> int:
    from .host import probes
    if a.pid is not None:
        from .analysis.text import printable
        from .host.pidfile import recorder_pid
        from .host.runtime import Dir
        try:
            if not a.pid:
                raise ValueError("no directory given")
            print(recorder_pid(Dir.existing(a.pid).sub(".hypertrace")))
        except (OSError, ValueError) as e:
            return _fail(printable("no live recording in %s (%s)" % (a.pid, e)))
        return 0
    if a.lib:
        if not probes.built():
            return _fail("no USDT probes: %s" % probes.why_not())
        print(probes.library())
        return 0
    if a.json:
        print(json.dumps(probes.listing_json(), indent=1))
    else:
        sys.stdout.write(probes.listing())
    return 0 if probes.built() else 1


if __name__ == "__main__":
    sys.exit(main())
