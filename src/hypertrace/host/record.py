"""`hypertrace record`: create or attach a channel, run or wait, drain, stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Dict, List, Optional, Tuple

from .. import abi, guest, losses
from ..guest.channel import resolve
from ..guest.kernel import KernelError
from . import pidfile, qemuuser, qmp, runtime
from .actions import Engine
from .collector import RESERVE, SESSION_DIR, Collector
from .control import ControlServer, DomainClock
from .errors import describe
from .kernel import AGENT_STOP_S, agent_cpu_s, start_agent, stop_agent
from .live import LiveServer, Rules
from .mailbox import MailboxServer
from .qemulog import QemuLogs, qmp_alive
from .region import Region
from .runtime import check_guest_name, qemu_region_path
from .triggers import TriggerError
from .triggers import load as load_triggers

IDLE_SLEEP_S = 0.001


MAX_BLOCK_TIMEOUT_MS = 86_400_000


class RecordError(Exception):
    pass


def record(outdir: str, command: Optional[List[str]], channel: Optional[str] = None,
           mode: str = "discard", ring_size: int = abi.DEFAULT_RING_SIZE,
           rings: int = abi.DEFAULT_RINGS, max_events: int = abi.DEFAULT_MAX_EVENTS,
           block_timeout_ms: float = 1000.0, name: str = "local",
           sync_interval: float = 1.0, qemu: Optional[List[str]] = None,
           triggers: Optional[str] = None, vsock_port: Optional[int] = None,
           kernel: Optional[str] = None, qemu_trace: Optional[List[str]] = None,
           kernel_buffer: int = 0, child_env: Optional[Dict[str, str]] = None,
           out=sys.stdout) -> Collector:
    """Record a session into `outdir` (see `hypertrace record --help`); `child_env`:
    more variables for COMMAND (guest/autostart.py's, for --functions/--logging)."""
    if mode not in abi.MODES:
        raise RecordError("unknown mode %r (discard, block or overwrite)" % mode)
    # the header's u64 in ns: a day at most, and a number (NaN compares false)
    if not 0 <= block_timeout_ms <= MAX_BLOCK_TIMEOUT_MS:
        raise RecordError("--block-timeout must be between 0 and %d ms, not %r"
                          % (MAX_BLOCK_TIMEOUT_MS, block_timeout_ms))
    if not 0 < sync_interval <= 3600:
        raise RecordError("--sync-interval must be above 0 and at most 3600 s, not %r"
                          % sync_interval)
    if kernel_buffer and not (kernel is not None and 4096 <= kernel_buffer <= 1 << 30):
        raise RecordError("--kernel-buffer needs --kernel and a size from 4K to 1G")
    if qemu_trace:
        try:
            qemuuser.check(command or [], qemu_trace)
        except qemuuser.QemuUserError as e:
            raise RecordError(str(e)) from None
    rules = []
    if triggers:
        try:
            rules = load_triggers(triggers)
        except TriggerError as e:
            raise RecordError(str(e)) from None
    try:
        for n in qemu or [name]:
            check_guest_name(n)       # a domain name: readers accept only this set
        rt = runtime.runtime_dir()
    except (OSError, ValueError) as e:
        raise RecordError(str(e)) from None
    if qemu and len(set(qemu)) != len(qemu):
        raise RecordError("guest names must be distinct")
    try:
        col = Collector(outdir)        # first: a bad DIR leaves nothing behind
    except OSError as e:
        raise RecordError(_one_line("the output directory %s" % outdir, e)) from None
    # this session's own names (host region, control socket) in the private runtime
    # directory; a QEMU guest's are fixed by its name, as `qemu-args` printed them
    base = qemu_region_path(qemu[0]) if qemu else os.path.join(rt, uuid.uuid4().hex[:12])
    kw = dict(mode=abi.MODES[mode], n_rings=rings, ring_size=ring_size,
              max_events=max_events, block_timeout_ns=int(block_timeout_ms * 1e6))
    undo: List = []        # run backwards when setup fails: a failed start leaves nothing
    what = "the output directory %s" % outdir
    flags = {"stop": False, "snapshot": 0}
    child = None

    def on_stop(signum, _frame):
        flags["stop"] = True
        if child is not None and child.poll() is None and signum == signal.SIGTERM:
            child.send_signal(signal.SIGTERM)

    def on_usr1(_signum, _frame):
        flags["snapshot"] += 1

    # from the start of the setup: a Ctrl-C while it runs (the session's sockets may
    # already be bound) ends the recording cleanly once set up, not half way
    old = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    old[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        if qemu:
            targets = [(qemu_region_path(n), n) for n in qemu]
        elif channel:
            targets = [(resolve(channel), name)]
        else:
            targets = [(base, name)]
        regions: List[Region] = []
        for path, nm in targets:
            what = "channel %s" % path
            if qemu:
                region = Region.create_or_attach(path, nm, **kw)
            elif channel and os.path.lexists(path):
                region = Region.open(path)
            else:
                region = Region.create(path, nm, **kw)
            regions.append(region)
            undo.append(lambda r=region: r.close(remove=r.owned))
        for region, (_, nm) in zip(regions, targets):
            # a VM's pids mean nothing here: its dead producers are found by the guest library
            col.add_region(region, nm, pid_check=not qemu,
                           description="CLOCK_MONOTONIC of QEMU guest %s" % nm if qemu else "")
        path = targets[0][0]
        what = "the host side"
        ctls = [t[0] + ".ctl" for t in targets] if qemu else [base + ".ctl"]
        host, servers, ctl = _host_side(col, regions, ctls, [t[1] for t in targets],
                                        base + "-host", vsock_port, bool(qemu))
        undo.append(lambda: _close_host_side(host, servers))
        what = "the session directory %s" % outdir
        pidfile.write(col.meta)
        undo.append(lambda: pidfile.remove(col.meta))
        ctl_tp = guest.event("hypertrace_ctl", "const char *action, const char *pattern, "
                             "const char *domain, uint32_t changed")
        qlogs = None
        if qemu:
            what = "QEMU's logs"
            qlogs = _qemu_logs(col, base, qemu)
            undo.append(lambda: (qlogs.close(), qlogs.region.close()))
        quser = None
        if qemu_trace:
            what = "QEMU's user-mode log"
            command, quser = _qemu_user(col, base, command, qemu_trace)
            undo.append(lambda: quser.close())
        what = "the live-control socket"
        live = LiveServer(outdir, col, Rules(col),
                          on_change=lambda act, pat, dom, n: ctl_tp(act, pat, dom, n))
        undo.append(live.close)
        col.extra_index["control"] = live.log
        col.extra_index["control_changes"] = lambda: live.log_total
        engine = _engine(rules, col, live, flags, qemu or []) if rules else None
        agent = None
        if kernel is not None:
            # the host's kernel events, into the host domain (host/kernel.py)
            what = "kernel tracing"
            try:
                agent = start_agent(kernel, "shm:" + host.path, kernel_buffer // 1024)
            except KernelError as e:
                raise RecordError("kernel tracing: %s" % e) from None
            undo.append(lambda: stop_agent(agent))
    except BaseException as e:
        for f in reversed(undo):
            try:
                f()
            except Exception:
                pass
        _discard_session(col)
        for sig, h in old.items():
            signal.signal(sig, h)
        if isinstance(e, (OSError, ValueError)):
            msg = _one_line(what, e)
            if isinstance(e, runtime.PathExists) and what in ("the host side", "QEMU's logs"):
                msg += ("; is another recording of %s running? (if one crashed: "
                        "`hypertrace recover` its session, or remove the file)"
                        % (", ".join(qemu) if qemu else path))
            raise RecordError(msg) from None
        raise

    spec = "shm:%s,control=%s" % (path, ctl)
    try:
        if command and not flags["stop"]:      # stopped during the setup: run nothing
            env = dict(os.environ, **(child_env or {}), HYPERTRACE_CHANNEL=spec,
                       HYPERTRACE_HOST_CHANNEL="shm:" + host.path,
                       HYPERTRACE_SYNC_INTERVAL=str(sync_interval))
            try:
                child = subprocess.Popen(command, env=env, pass_fds=quser.pass_fds if quser
                                         else ())
            except OSError as e:
                raise RecordError("cannot run %s: %s" % (command[0], e.strerror)) from None
            finally:
                if quser is not None:
                    quser.started()      # QEMU holds the write end now, not us
        else:
            out.write("hypertrace: serving channel %s; producers use HYPERTRACE_CHANNEL=%s, "
                      "host-side producers HYPERTRACE_HOST_CHANNEL=shm:%s; Ctrl-C to stop\n"
                      % (path, spec, host.path))
            out.flush()
        _loop(col, child, flags, live, engine, qlogs, quser)
    finally:
        # every step on its own: one that fails is recorded and the others still run,
        # the index is written whatever happened, and the regions are removed
        if qlogs is not None:
            _guard(col, "QEMU log", qlogs.poll)
            _guard(col, "QEMU log", qlogs.close)
        if quser is not None:
            _guard(col, "QEMU user-mode log", quser.stop,
                   child is not None and child.poll() is not None)
        if engine is not None:
            # actions of what is committed now still run; the final drain's do not
            _guard(col, "drain", col.poll)
            _guard(col, "triggers", engine.close)
        _guard(col, "live control", live.close)
        if agent is not None:
            early = agent.poll()
            cpu = _guard(col, "kernel agent", agent_cpu_s, agent)
            last = _guard(col, "kernel agent", stop_agent, agent, col.poll)
            why = None
            if early is not None:
                why = ("the kernel agent ended before the recording did (exit %d): kernel "
                       "events stop there" % early)
            elif agent.returncode == -signal.SIGKILL:
                why = ("the kernel agent did not stop within %d s and was killed: events "
                       "still in ftrace's ring were neither recorded nor counted"
                       % AGENT_STOP_S)
            if why is not None:
                col.errors.add(why)
                sys.stderr.write("hypertrace: warning: %s\n" % why)
            col.extra_index["kernel_agent"] = {
                "events": kernel, "cpu_s": cpu if isinstance(cpu, float) else None,
                "last_message": last[:500] if isinstance(last, str) else ""}
            if isinstance(last, str) and "error" in last:
                col.errors.add("kernel agent: %s" % last)
        for server in servers:
            _guard(col, "control server", server.close)
        _guard(col, "host producer", guest.disconnect)
        if _guard(col, "final drain", col.stop) is FAILED:
            _guard(col, "session index", col.write_index)    # last resort
        # stopped: `snapshot` must not signal this pid again
        _guard(col, "pid file", pidfile.remove, col.meta)
        for r in regions:
            _guard(col, "channel cleanup", r.close, remove=r.owned)
        _guard(col, "channel cleanup", host.close)
        if qlogs is not None:
            _guard(col, "channel cleanup", qlogs.region.close)
            _guard(col, "QEMU log", qlogs.remove_logs)
        if quser is not None:
            _guard(col, "channel cleanup", quser.close)
        for s, h in old.items():
            signal.signal(s, h)
    rc = child.wait() if child is not None else 0
    col.exit_code = 128 - rc if rc < 0 else rc       # killed by signal N: 128 + N, as a shell
    return col


def _one_line(what: str, e: BaseException) -> str:
    if isinstance(e, runtime.PathError):
        return str(e)
    text = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or \
        type(e).__name__
    return "cannot set up %s: %s" % (what, " ".join(text.split()))


def _discard_session(col: Collector) -> None:
    """A start that failed: remove what it put in the session directory (which was new or
    empty), and the directory itself if this start created it."""
    for n in ("session.json", "session.json.tmp", pidfile.NAME, RESERVE):
        col.meta.unlink(n)
    col.dir.rmdir(SESSION_DIR)
    for n in ("metadata", ".metadata.tmp"):
        col.dir.unlink(n)
    if col.dir.created:
        try:
            os.rmdir(col.outdir)    # only if empty: anything else there stays
        except OSError:
            pass


def _close_host_side(host: Region, servers: list) -> None:
    for srv in servers:
        srv.close()
    guest.disconnect()
    host.close()


def qemu_args(name: str, ring_size: int = abi.DEFAULT_RING_SIZE, rings: int = abi.DEFAULT_RINGS,
              max_events: int = abi.DEFAULT_MAX_EVENTS, trace: Optional[List[str]] = None,
              vsock_cid: Optional[int] = None) -> str:
    """QEMU options wiring guest NAME to `hypertrace record --qemu NAME`: stock devices only.
    The chardev is a client that reconnects, so either side may start first. QEMU's
    own trace events go to a log file the recorder ingests, stamped with the real
    time; its QMP socket lets triggers switch them (`trace` patterns start enabled)."""
    lay = abi.make_layout(rings, ring_size, max_events)
    p = qemu_region_path(name)      # creates the private directory QEMU's files go into
    return " ".join([
        "-object memory-backend-file,id=htmem-%s,share=on,mem-path=%s,size=%d"
        % (name, p, lay.region_size),
        "-device ivshmem-plain,memdev=htmem-%s" % name,
        "-device virtio-serial-pci,id=htserial-%s" % name,
        "-chardev socket,id=htctl-%s,path=%s.ctl,reconnect=1" % (name, p),
        "-device virtserialport,bus=htserial-%s.0,chardev=htctl-%s,name=org.hypertrace.%s"
        % (name, name, name),
        "-qmp unix:%s.qmp,server=on,wait=off" % p,
        "-D %s.qemu.log -msg timestamp=on" % p] +
        ["-trace enable=%s" % t for t in (trace or [])] +
        # AF_VSOCK control (needs /dev/vhost-vsock on the host); the port stays too
        (["-device vhost-vsock-pci,guest-cid=%d" % vsock_cid] if vsock_cid else []))


def _host_side(col: Collector, regions: List[Region], ctls: List[str], names: List[str],
               host_path: str, vsock_port: Optional[int] = None, qemu: bool = False):
    """The host domain (a region for host-side producers, the collector among them) and
    one control server per region (its socket `ctls[i]`, in the private runtime
    directory), answering its sync points and clock exchanges."""
    host = Region.create(host_path, "host", n_rings=64, ring_size=1 << 20)
    servers: list = []
    try:
        _serve(col, host, regions, ctls, names, vsock_port, servers, qemu)
    except BaseException:
        _close_host_side(host, servers)
        raise
    return host, servers, "unix:" + ctls[0]


def _serve(col: Collector, host: Region, regions: List[Region], ctls: List[str],
           names: List[str], vsock_port: Optional[int], servers: list, qemu: bool) -> None:
    col.add_region(host, "host", description="the host's CLOCK_MONOTONIC")
    guest.connect("shm:" + host.path)
    sync_host = guest.event("hypertrace_sync_host", "const char *domain, const char *name, "
                            "uint64_t sync_id, uint64_t guest_send, const char *args")
    sample = guest.event("hypertrace_clock_sample", "const char *domain, uint64_t t1, "
                         "uint64_t t2, uint64_t t3, uint64_t t4")

    def on_boot(dc: DomainClock, boot: bytes) -> DomainClock:
        # a rebooted guest's clock restarted: its new boot is a domain of its own
        src = next(s for s in col.sources if s.region.header.session_id == dc.session_id)
        name = col.new_boot(src)
        if name is None:
            raise abi.ProtocolError("guest %s rebooted too often in one session" % src.guest)
        new = col.clocks[name] = DomainClock(name, dc.session_id)
        mbox.retire(dc.session_id)       # the mailboxes claimed before: not this boot's
        return new
    # session id -> clock, shared by every server: a guest reached over two transports
    # (its socket and vsock) is one domain, and a reboot seen on either moves both
    registry = {}
    addresses = []
    for region, ctl, name in zip(regions, ctls, names):
        registry[region.header.session_id] = col.clocks[name] = DomainClock(
            name, region.header.session_id)
        addresses.append("unix:" + ctl)
    if vsock_port is not None:
        addresses.append("vsock:%d" % vsock_port)
    # clock exchanges in shared memory, for every guest region (ABI §10)
    def on_sample(d: DomainClock, t1: int, t2: int, t3: int, t4: int) -> None:
        sample(d.name, t1, t2, t3, t4)     # every accepted exchange, socket or mailbox
        col.probes.sample(d.name, t1, t2, t3, t4)

    def on_sync(d: DomainClock, n: str, sid: int, t1: int, t2: int, args: str) -> None:
        sync_host(d.name, n, sid, t1, args)
        col.probes.sync(d.name, n, sid, t1, t2)
    mbox = MailboxServer(registry, on_sample=on_sample)
    for region in regions:
        mbox.add(region)
    servers.append(mbox)
    for ctl in ctls:
        _unlink_stale_socket(ctl)
    for address in addresses:
        servers.append(ControlServer(
            address, registry,
            on_sync=on_sync,
            on_sample=on_sample, on_boot=on_boot, errors=col.errors,
            # a QEMU guest's socket is its virtio-serial chardev: one connection
            long_lived=qemu and address.startswith("unix:")))
        servers[-1].on_bye = lambda d, lost, refused: col.reported_losses(
            d.session_id, d.name, lost, refused)
    mbox.start()


def _unlink_stale_socket(path: str) -> None:
    """A control socket left by a crashed recorder is ours to replace; a live one (another
    recording of that guest) or anything that is not our socket is refused."""
    if not os.path.lexists(path):
        return
    if not runtime.our_socket(path):
        raise runtime.PathError("%s exists and is not a socket of ours: refused" % path)
    if qmp_alive(path):
        raise runtime.PathExists("%s is served by another recorder" % path)
    os.unlink(path)


def _engine(rules, col: Collector, live: LiveServer, flags: dict, qemu: List[str]) -> Engine:
    """Triggers: actions run against this recording only, QMP against the triggering
    guest's own QEMU only."""
    trig_tp = guest.event("hypertrace_trigger", "const char *domain, const char *event, "
                          "uint64_t event_ts, uint32_t rule, const char *action, bool ok, "
                          "const char *error")
    marker_tp = guest.event("hypertrace_marker", "const char *domain, const char *text")

    def run_local(act, dom: str) -> None:
        if act.kind in ("enable", "disable"):
            live.add(act.arg, act.kind == "enable", act.domain or dom)
        elif act.kind == "snapshot":
            flags["snapshot"] += 1
        elif act.kind == "stop":
            flags["stop"] = True
        elif act.kind == "marker":
            marker_tp(dom, act.arg)

    engine = Engine(rules, col, run_local,
                    emit=lambda *a: trig_tp(*a),
                    qmp_path=lambda d: _qmp_path(col.domain_guest(d), qemu))
    col.watch = engine.on_content
    col.extra_index["triggers"] = engine.summary
    col.extra_index["trigger_problems"] = engine.problems
    col.extra_index["trigger_problems_not_listed"] = lambda: engine.problems_not_listed
    return engine


def _qmp_path(guest_name: str, qemu: List[str]) -> Optional[str]:
    """The QMP socket of a guest of this recording, only if it is a socket of ours in the
    private runtime directory (what QEMU made from `qemu-args`); else None (no QMP)."""
    if guest_name not in qemu:
        return None
    try:
        p = qmp.socket_path(guest_name)
    except (OSError, ValueError):
        return None
    return p if runtime.our_socket(p) else None


def _qemu_logs(col: Collector, base: str, names: List[str]) -> QemuLogs:
    """Domain `qemu`: QEMU's own trace events, from each guest's -D log file."""
    logs = {}
    for n in names:
        p = qemu_region_path(n)
        if not qmp_alive(p + ".qmp"):
            try:
                os.unlink(p + ".qemu.log")    # a previous run's: QEMU truncates it at start
            except FileNotFoundError:
                pass
        logs[n] = p + ".qemu.log"
    region = Region.create(base + "-qemu", "qemu", n_rings=max(4, len(names)),
                           ring_size=4 << 20)
    try:
        col.add_region(region, "qemu", description="QEMU trace events: CLOCK_REALTIME "
                       "(-msg timestamp=on) mapped onto the host's CLOCK_MONOTONIC")
        q = QemuLogs(region, logs)
    except BaseException:
        region.close()
        raise
    col.extra_index["qemu_clock"] = q.summary
    return q


class QemuUser:
    """Domain `qemu` for a user-mode QEMU: its region, the pipe and the reader."""

    def __init__(self, region: Region, reader: qemuuser.Reader, w: int):
        self.region, self.reader, self.w = region, reader, w
        self.pass_fds = (w,)
        self.stopped = False

    def started(self) -> None:
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def stop(self, child_done: bool) -> None:
        self.started()
        self.stopped = True
        self.reader.stop(child_done)

    def close(self) -> None:
        # the reader may read on after stop() (QEMU still writing): it was stopped once,
        # and its region goes whatever happens (a second stop closed the pipe twice and
        # raised before the region was removed: 32 MB left in /dev/shm per recording)
        try:
            self.started()
            if not self.stopped:
                self.stopped = True
                self.reader.stop(False)
        finally:
            self.region.close()


def _qemu_user(col: Collector, base: str, command: List[str],
               patterns: List[str]) -> Tuple[List[str], QemuUser]:
    """Domain `qemu`: a user-mode QEMU's trace events, through a pipe (host/qemuuser.py)."""
    region = Region.create(base + "-qemu", "qemu", n_rings=4, ring_size=4 << 20)
    try:
        col.add_region(region, "qemu", description="QEMU user-mode trace events: "
                       "CLOCK_MONOTONIC when each log line reached the recorder (an upper "
                       "bound: QEMU's lines carry no time)")
        command, r, w = qemuuser.wire(command, patterns)
        try:
            reader = qemuuser.Reader(region.path, patterns, r)
        except BaseException:
            os.close(r)
            os.close(w)
            raise
    except BaseException:
        region.close()
        raise
    col.extra_index["qemu_clock"] = lambda: reader.summary
    col.domain_losses["qemu"] = lambda: {"qemu_log_lines_lost": reader.lost_lines}
    return command, QemuUser(region, reader, w)


FAILED = object()


def _guard(col: Collector, what: str, fn, *args, **kw):
    """Run one component's step and return its result; an exception is counted in the
    index's `errors` (and FAILED returned), never the end of the recording or of its
    cleanup."""
    try:
        return fn(*args, **kw)
    except Exception as e:
        try:
            col.errors.add("%s: %s" % (what, describe(e)))
        except Exception:      # pragma: no cover - the error log itself must not raise
            pass
        return FAILED


def _loop(col: Collector, child, flags: dict, live: LiveServer,
          engine: Optional[Engine] = None, qlogs: Optional[QemuLogs] = None,
          quser: Optional[QemuUser] = None) -> None:
    idle = 0
    last_flush = time.monotonic()
    snaps = 0
    told = False
    # each component's step is guarded: whatever one of them raises (on peer data or
    # by a bug) is counted in the index and the drain goes on
    while not flags["stop"]:
        if child is not None and child.poll() is not None:
            break
        if flags["snapshot"] != snaps:
            snaps = flags["snapshot"]
            if col.write_error is None:      # else only counted: nothing more is written
                _guard(col, "snapshot", col.snapshot)
        if qlogs is not None:
            _guard(col, "QEMU log", qlogs.poll)
        if quser is not None:
            _guard(col, "QEMU user-mode log", quser.reader.poll)
        n = _guard(col, "drain", col.poll)
        if col.write_error is not None and not told:
            # the disk is full: what is written stays whole, and the rings are still
            # drained to the end, their records counted as not written, so that every
            # event of the program is recorded or counted (the index is written once,
            # at the end, in the room held back for it)
            told = True
            sys.stderr.write("hypertrace: error: %s; stream files are no longer written "
                             "(the traced program keeps running, its events are counted "
                             "until the recording ends)\n" % col.write_error)
            sys.stderr.flush()
        if engine is not None:
            _guard(col, "triggers", engine.run_pending)
        _guard(col, "live control", live.rules.apply_new)
        _guard(col, "live control", live.serve)
        now = time.monotonic()
        if now - last_flush > 1.0:
            _guard(col, "flush", col.flush)
            if col.write_error is None:
                _guard(col, "session index", col.write_index)
            last_flush = now
        if n and n is not FAILED:
            idle = 0
        else:
            idle += 1
            time.sleep(IDLE_SLEEP_S if idle < 100 else 4 * IDLE_SLEEP_S)
    if col.write_error is None and flags["snapshot"] != snaps:
        col.snapshot()


def summary(col: Collector) -> str:
    streams = col.streams()
    lines = ["%-16s %8s %8s %-16s %10s %10s %9s %5s" % (
        "stream", "pid", "tid", "thread", "recorded", "discarded", "malformed", "torn")]
    for s in streams:
        lines.append("%-16s %8d %8d %-16s %10d %10d %9d %5d" % (
            s["file"] or "(none)", s["pid"], s["tid"], s["thread"][:16], s["recorded"],
            s["discarded"], s["malformed"], s["torn"]))
    entries = {d["name"]: d for d in col.domain_entries()}
    why = []
    for dom in dict.fromkeys(d.name for src in col.sources for d in src.all_domains()):
        mine = [s for s in streams if s["domain"] == dom]
        causes = losses.explain(entries.get(dom, {}), mine, col.write_error,
                                (time.time_ns() - col.started_ns) / 1e9)
        why += losses.lines(dom, causes)
        tot = [sum(s[k] for s in mine) for k in ("recorded", "malformed", "torn")]
        lost = sum(x["count"] for x in causes if x["kind"] != "declarations_refused")
        line = "%s: %d events recorded, %d lost, %d malformed, %d torn, " \
               "from %d producer streams" % (dom, tot[0], lost, tot[1], tot[2], len(mine))
        c = col.clock_summary.get(dom, {})
        if c.get("kind") == "estimated":
            line += "; clock: offset %+d ns, drift %+.3f ppm, uncertainty %d ns, %d samples, " \
                    "%d causality violations" % (c["offset_ns"], c["drift_ppm"],
                                                 c["uncertainty_ns"], c["samples"],
                                                 c["causality_violations"])
        lines.append(line)
    return "\n".join(lines + why)
