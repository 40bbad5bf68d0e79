"""The control process: builds shared memory and the FIB, starts the workers, moves
frames for pcap ports, stops everything cleanly, and always unlinks its segments.

With pcap ports a run ends when every input frame has been fed, every worker has
taken in all it was given, the slow path has taken in all it was handed, and every
ring is empty (with `keep_running`, the outputs are written then and the engine stays
up until a signal). SIGINT/SIGTERM stop feeding and drain the same way.

With live ports (AF_PACKET) the workers read and write their own queues
(engine/io/ports.py); this process only sends what the slow path queued, through
send-only sockets, until SIGINT/SIGTERM: then the workers stop receiving, send what
they hold and exit, the slow path drains, the sockets close. `[engine] netns` is
entered before anything opens, so every process's sockets live in that namespace.

The control socket (engine/control/server.py) is served from a thread of its own from
the moment it opens, so that stats answer whatever this loop does; what writes the FIB,
the next hops or the port state is handed to this loop and run between two I/O passes
(`serve`): the FIB and next-hop table keep a single writer thread.

A fault once the agents have started (an agent that dies for good, an output that
cannot be written) ends the run the same way, stopped and drained, and is raised as
RunStopped with the counters of what was done.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from engine.config import LOG_NOTICE, Config, ConfigError, format_config_error, load_config
from engine.control.commands import Commands
from engine.control.netns import NetnsError, netns
from engine.control.recovery import (
    PoolAudit,
    RestartPolicy,
    SupervisionError,
    audit_pool,
    paused,
    recover_worker,
    started,
)
from engine.control.routing import RouteError, Routing, build_routing
from engine.control.server import ControlServer, ControlSetupError
from engine.control.stats import Snapshot, snapshot
from engine.counters import MISC_BASE, Misc
from engine.io.pcap import PcapError
from engine.io.ports import SenderPorts
from engine.io.registry import Driver, DriverError, driver_for
from engine.io.registry import check as check_drivers
from engine.shm.fib import DEFAULT_READERS, FibWriter
from engine.shm.memory import (
    AGENT_IO,
    CTL_STOP,
    ST_LOOPS,
    ST_PID,
    ST_SLEEPING,
    ST_WARMUP_NS,
    EngineMemory,
    Geometry,
)
from engine.workers.doorbell import Doorbells, full_fence
from engine.workers.forwarder import WorkerSpec, prepare_compiled, worker_main
from engine.workers.loop import DEEP_AFTER_S, SPIN_S
from engine.workers.slowpath import SlowPathSpec, slowpath_main

JOIN_TIMEOUT_S = 5.0  # an agent stopping that makes no pass for this long is stuck
STOP_LIMIT_S = 120.0  # and one still busy after this long is stopped anyway
STARTUP_TIMEOUT_S = 60.0
MAX_IDLE_S = 0.002  # longest sleep of the I/O loop while input may still come
PROGRESS_S = 0.2  # how often a replay's progress is reported
REPLAY_RING = 8192  # ring slots for pcap replays (geometry_for)
KEPT_IDLE_S = 0.05  # --keep-running after the input is drained: only requests, signals
# a live engine's control process, idle (adaptive polling, workers/doorbell.py): after
# DEEP_AFTER_S without work it blocks on its doorbell (the slow path rings it when it
# queues frames to send, the control socket's thread when a request waits, a signal
# handler) for up to CONTROL_SLEEP_S, the bound on noticing a dead agent
CONTROL_SLEEP_S = 0.1


class EngineError(RuntimeError):
    """The engine could not run (a worker died, a port failed)."""


@dataclass
class RunResult:
    stats: Snapshot
    interrupted: bool = False
    pool: PoolAudit | None = None  # None: an agent outlived the stop, the pool was not checked


class RunStopped(EngineError):
    """A run that had started its agents ended on a fault; everything was still stopped
    and drained. `cause`: an EngineError (an agent died: an internal fault) or a
    PcapError (an output could not be written: bad input); `result`: the counters and
    the pool check of what was done until then."""

    def __init__(self, cause: EngineError | PcapError, result: RunResult) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.result = result


def cpu_for(worker: int) -> int | None:
    """Worker i on CPU i (of the CPUs this process may use); the slow path shares."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None
    return cpus[worker % len(cpus)]


def geometry_for(cfg: Config, workers_receive: bool | None = None) -> Geometry:
    """`workers_receive`: whether each worker reads its own port queues (default: any
    live driver; DPDK decides by its mode, see engine/io/dpdk/engine.py)."""
    max_frame = max(p.mtu for p in cfg.ports) + 14 + 4
    bufsize = max(2048, -(-max_frame // 64) * 64)
    ring = 1 << max(10, (cfg.engine.batch * 8 - 1).bit_length())
    driver = driver_for(cfg)
    if not driver.live:
        # a replay's I/O agent feeds and collects in passes: rings of 8,192 let a pass
        # move more and outlast a worker's idle sleep (up to 1 ms: 4,000 frames at
        # 4 Mpps). pcap -> pcap, 1 worker, 2 x 1M 64-byte frames: 1.8 Mpps with rings
        # of 2,048, 2.7-3.7 with 8,192 (perf/bench_pcap_l3fwd.py)
        ring = max(ring, REPLAY_RING)
    if workers_receive is None:
        workers_receive = driver.workers_receive(None)
    return Geometry.new(len(cfg.ports), cfg.engine.workers, bufsize=bufsize, ring_size=ring,
                        workers_receive=workers_receive)


def run(cfg: Config, *, control_socket: str | os.PathLike[str] | None = None,
        control_required: bool = True, keep_running: bool = False,
        log: Callable[..., None] | None = None,
        progress: Callable[[int, int, int], None] | None = None) -> RunResult:
    """Run a deployment until its input is consumed and drained (pcap ports) or until
    SIGINT/SIGTERM; always unlink the segments and remove the control socket.

    control_socket: where the control server listens (None: the config's
    `[engine] control_socket`; no server when that is unset too).
    control_required: when False, a socket that cannot be set up (path busy, no
    permission) is reported through `log` and the run goes on without one; when True
    it is an EngineError before any worker starts.
    log: `log(message, level=logging.INFO)` for each line the engine says (start-up,
    route and port changes, restarts, reloads); `fwd run` logs them (cli/logs.py).
    keep_running: once the pcap input is consumed and drained, write the outputs and
    stay up (control socket included) until SIGINT/SIGTERM.
    progress: called about every PROGRESS_S seconds of a pcap replay with the frames
    fed, the bytes of the captures read and their sizes.

    Once the agents start, a fault (an agent that dies, an output that cannot be
    written) does not cut the run short: the rest is stopped and drained as on a
    signal, the outputs are written, and RunStopped carries the counters.
    """
    driver = driver_for(cfg)
    say = log or (lambda msg, level=logging.INFO: None)
    if control_socket is None:
        control_socket = cfg.engine.control_socket
    try:  # what the driver decides before anything is created (DPDK: the mode)
        plan = driver.plan(cfg)
    except DriverError as err:
        raise EngineError(str(err)) from None
    geometry = geometry_for(cfg, driver.workers_receive(plan))
    r = _Run(cfg, geometry, driver, plan, say)
    r.progress = progress
    # before anything exists that a default-action SIGTERM would leak (the socket file)
    r.catch_signals()
    try:
        r.build_memory_and_fib()
        r.open_control_socket(control_socket, control_required)
        # metrics listen where `fwd run` was started: a Prometheus on the host scrapes an
        # engine whose ports live in [engine] netns
        r.open_metrics()
        if r.server is not None:  # answered from now on, start-up included
            r.server.start()
        r.enter_netns()
        r.open_ports()
        fault: EngineError | PcapError | None = None
        try:
            r.start_agents()
            r.forward(keep_running)
        except (EngineError, PcapError) as err:
            fault = err
        try:
            r.stop_and_drain()
        except PcapError as err:  # the first fault is the one that stopped the run
            fault = fault or err
        result = r.result()
        if fault is not None:
            raise RunStopped(fault, result) from fault
        return result
    finally:
        r.close()


class _Run:
    """One run's resources, in the order `run` creates them; `close` releases whatever
    exists, whatever step failed."""

    def __init__(self, cfg: Config, geometry: Geometry, driver: Driver, plan: Any,
                 say: Callable[..., None]) -> None:
        self.cfg = cfg
        self.geometry = geometry
        self.driver = driver  # engine/io/registry.py
        self.live = driver.live
        self.plan = plan  # what the driver decided before memory existed (DPDK's mode)
        self.say = say
        self.stop_requested = False
        self.reload_requested = False
        self.old_handlers: dict[int, Any] = {}
        self.bells: Doorbells | None = None  # live AF_PACKET engines (workers/doorbell.py)
        self.mem: EngineMemory | None = None
        self.fib: FibWriter | None = None
        self.routing: Routing | None = None
        self.commands: Commands | None = None
        self.server: ControlServer | None = None
        self.metrics: Any = None  # engine.control.metrics.MetricsServer
        self.io: Any = None  # the driver's control_io: PcapPorts, SenderPorts, DpdkControl
        # (process, FIB reader id): the workers, then the slow path
        self.procs: list[tuple[mp.process.BaseProcess, int | None]] = []
        self.specs: dict[int, WorkerSpec] = {}
        self.slowpath: mp.process.BaseProcess | None = None
        self.policy = RestartPolicy()
        self.restarting: dict[int, tuple[float, int, int]] = {}  # agent: (t0, pid, loops)
        self.drained = False  # keep_running: input consumed, drained and written
        self.progress: Callable[[int, int, int], None] | None = None  # see `run`
        self.affinity: set[int] | None = None  # the CPUs to give back (pin_replay)
        self.scope = ExitStack()

    def catch_signals(self) -> None:
        """SIGINT/SIGTERM ask the main loop to stop (and drain) instead of killing us;
        SIGHUP asks it to re-read the config (`reload`), as daemons do."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old_handlers[sig] = signal.signal(sig, self._on_signal)
        self.old_handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        self.wake()

    def _on_hangup(self, signum: int, frame: Any) -> None:
        self.reload_requested = True
        self.wake()

    def wake(self) -> None:
        """Ring our own doorbell: the main loop may be blocked idle (a poll() that a
        signal interrupts is resumed by Python, PEP 475)."""
        if self.bells is not None:
            self.bells.ring(AGENT_IO)

    def reload(self) -> None:
        """Re-read the config file: its [[route]]s replace the running config routes
        (routes added at run time stay). Anything else needs a restart, and is named;
        a config that does not load, or whose ports or neighbours changed, changes
        nothing."""
        self.reload_requested = False
        path, cfg = self.cfg.path, self.cfg
        try:
            new = check_drivers(load_config(path))
        except ConfigError as err:
            self.say(f"fwd: reload: {format_config_error(str(path), err)}; nothing changed")
            return
        # [engine] log_level is the one [engine] key a reload sets
        same_engine = replace(new.engine, log_level=cfg.engine.log_level)
        others = [f.name for f in fields(Config) if f.name not in ("path", "routes")
                  and (same_engine if f.name == "engine" else getattr(new, f.name))
                  != getattr(cfg, f.name)]
        if "ports" in others or "neighbors" in others:
            self.say(f"fwd: reload: {path}: [[port]] or [[neighbor]] changed; restart the "
                     "engine to apply them; nothing changed")
            return
        if new.engine.log_level != cfg.engine.log_level:
            logging.getLogger("fwd").setLevel(new.engine.log_level.upper())
            self.say(f"fwd: reload: log level {new.engine.log_level}", LOG_NOTICE)
            cfg = replace(cfg, engine=replace(cfg.engine, log_level=new.engine.log_level))
            self.cfg = cfg
        try:
            done = self.routing.reload_routes(new.routes)
        except RouteError as err:
            self.say(f"fwd: reload: {err}; the routes before it were applied")
            return
        self.cfg = replace(cfg, routes=new.routes)
        summary = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in done.items() if v)
        self.say(f"fwd: reload: {path}: routes {summary or 'unchanged'}"
                 + (f"; restart to apply [{'], ['.join(others)}]" if others else ""))

    def enter_netns(self) -> None:
        # the workers inherit the namespace: their sockets open on its interfaces
        try:
            self.scope.enter_context(netns(self.cfg.engine.netns))
        except NetnsError as err:
            raise EngineError(str(err)) from None

    def build_memory_and_fib(self) -> None:
        """The shared segments (rings, pool, counters; the FIB) and the routing over them."""
        cfg, geometry = self.cfg, self.geometry
        self.mem = EngineMemory.create(geometry)
        # one prefix per run (see no_shm_leak); reader ids: the workers, then the slow path
        self.fib = FibWriter.create(f"{geometry.name}-fib",
                              max_readers=max(DEFAULT_READERS, cfg.engine.workers + 1))
        self.routing = build_routing(cfg, self.mem, self.fib)

    def open_control_socket(self, control_socket: str | os.PathLike[str] | None,
                            control_required: bool) -> None:
        if control_socket is None:
            return
        cfg = self.cfg
        self.commands = Commands(self.routing, self.mem, {
            "socket": os.path.abspath(control_socket),
            "segments": [self.geometry.name, self.fib.name],
            "workers": cfg.engine.workers,
            "batch": cfg.engine.batch,
        }, log=self.say)
        try:
            self.server = ControlServer(control_socket, self.commands.handle,
                                        on_main=self.commands.on_main)
            self.say(f"fwd: control socket {self.server.path}")
        except ControlSetupError as err:
            if control_required:
                raise EngineError(f"control socket: {err}") from None
            self.say(f"fwd: running without a control socket: {err}", logging.WARNING)

    def open_metrics(self) -> None:
        cfg = self.cfg
        if cfg.metrics.listen is None:
            return
        from engine.control.metrics import MetricsError, MetricsServer

        try:  # a thread that only reads shared memory (engine/control/metrics.py)
            self.metrics = MetricsServer(self.mem, [p.name for p in cfg.ports],
                                         cfg.metrics.listen)
        except MetricsError as err:
            raise EngineError(str(err)) from None
        if self.server is not None:
            self.commands.info["metrics"] = self.metrics.address
        self.say(f"fwd: metrics on http://{self.metrics.address}/metrics")

    def open_ports(self) -> None:
        """The control process's side of the ports, opened before any worker starts."""
        cfg, mem = self.cfg, self.mem
        try:
            self.io = io = self.driver.control_io(cfg, self.plan, mem, cfg.engine.batch)
        except DriverError as err:
            raise EngineError(str(err)) from None
        if hasattr(io, "device_stats"):  # DPDK: the devices' own counters, in the stats
            from engine.control.stats import register_device_stats

            self.scope.callback(register_device_stats(mem, io.device_stats))
        if hasattr(io, "describe"):
            self.say(f"fwd: {io.describe()}")

    def start_agents(self) -> None:
        """Start the forwarding workers and the slow path; return once each has made
        its first pass."""
        cfg, geometry, mem, procs = self.cfg, self.geometry, self.mem, self.procs
        ctx = mp.get_context("spawn")
        compiled = cfg.engine.datapath == "compiled"
        if isinstance(self.io, SenderPorts):
            # AF_PACKET: every agent can block when idle (adaptive polling); the
            # doorbells go to each agent in its spec
            self.bells = mem.doorbells = Doorbells(geometry.nagents)
            if self.server is not None:
                self.server.notify = self.wake
        if compiled:  # compile once here; the workers load it from numba's cache
            ready = prepare_compiled(cfg, mem, self.fib.name)
        for w in range(cfg.engine.workers):
            self.specs[w] = spec = WorkerSpec(geometry, self.fib.name, cfg, w, cfg.engine.batch,
                                              cpu_for(w), self.bells)
            procs.append((ctx.Process(target=worker_main, args=(spec,),
                                      name=f"fwd-worker-{w}"), w))
        slow_spec = SlowPathSpec(geometry, self.fib.name, cfg, cfg.engine.batch,
                                 cpu_for(cfg.engine.workers), doorbells=self.bells)
        self.slowpath = ctx.Process(target=slowpath_main, name="fwd-slowpath",
                                    args=(slow_spec,))
        procs.append((self.slowpath, cfg.engine.workers))
        mem.state[AGENT_IO, ST_PID] = os.getpid()  # workers watch it (workers/loop.py)
        for proc, _ in procs:
            proc.start()
        wait_started(mem, procs, self.serve)
        self.pin_replay()
        if compiled:
            loads = ", ".join(f"{mem.state[1 + w, ST_WARMUP_NS] / 1e9:.2f}"
                              for w in range(cfg.engine.workers))
            self.say(f"fwd: compiled datapath ready in {ready:.2f} s (compiled, or loaded from "
                     f"numba's cache); workers loaded it in {loads} s")
        if self.live:
            where = ", ".join(p.iface or p.device or p.name for p in cfg.ports)
            self.say(f"fwd: forwarding on {where}"
                     + (f" (network namespace {cfg.engine.netns})" if cfg.engine.netns else "")
                     + "; SIGINT/SIGTERM stops")

    def pin_replay(self) -> None:
        """A replay's I/O agent (this process) off the workers' CPUs when one is free:
        it feeds and collects every frame, and sharing a worker's CPU halves both
        (pcap -> pcap, 1 worker on 2 CPUs: 1.5-2.0 Mpps when the scheduler left it
        there, 2.9-3.0 beside the mostly idle slow path). Undone by `close`."""
        if self.live or not hasattr(os, "sched_setaffinity"):
            return
        cpus = sorted(os.sched_getaffinity(0))
        if self.cfg.engine.workers >= len(cpus):
            return
        self.affinity = set(cpus)
        try:
            os.sched_setaffinity(0, {cpu_for(self.cfg.engine.workers)})
        except OSError:
            self.affinity = None

    def forward(self, keep_running: bool) -> None:
        """The main loop: move frames for the ports, watch the agents, serve the control
        socket in the idle sleep; until the input is drained (pcap) or a signal."""
        mem, io, live = self.mem, self.io, self.live
        idle = 0.0
        idle_since = 0.0
        shown = time.monotonic()
        while True:
            if live:
                moved = io.drain()
            else:
                moved = 0 if self.stop_requested else io.feed()
                moved += io.drain()
                if self.progress is not None and time.monotonic() - shown >= PROGRESS_S:
                    shown = time.monotonic()
                    self.progress(*io.progress())
            mem.state[AGENT_IO, ST_LOOPS] += 1
            self.watch_agents()
            self.fib.reclaim()  # tbl8 groups the readers released: what stats then shows
            if self.finished(keep_running):
                return
            if moved:
                idle = 0.0
                idle_since = 0.0
            elif self.drained:
                idle = KEPT_IDLE_S  # nothing more can arrive on a pcap port
            else:
                now = time.monotonic()
                if not idle_since:
                    idle_since = now
                if now - idle_since < SPIN_S:  # the workers' next batch is near
                    continue
                idle = min(MAX_IDLE_S, idle * 2 or 0.0001)
            if not moved and self.bells is not None:
                now = time.monotonic()
                if not idle_since:
                    idle_since = now
                elif now - idle_since >= DEEP_AFTER_S:
                    self.sleep_deep()
                    idle = 0.0
            self.serve(idle)
            if self.reload_requested:
                self.reload()

    def sleep_deep(self) -> None:
        """Block until the doorbell rings (the consumer's side of workers/doorbell.py:
        announce, look once more at what could be waiting, block)."""
        mem, bells = self.mem, self.bells
        mem.state[AGENT_IO, ST_SLEEPING] = 1
        full_fence()
        if not (self.io.pending() or self.stop_requested or self.reload_requested
                or (self.server is not None and self.server.has_calls())):
            bells.wait(AGENT_IO, CONTROL_SLEEP_S)
        mem.state[AGENT_IO, ST_SLEEPING] = 0
        bells.clear(AGENT_IO)

    def serve(self, timeout: float) -> None:
        """Sleep up to `timeout` seconds, running the control requests that must run on
        this thread (the FIB's writer) as they come: at most a pass's wait for them."""
        if self.server is not None:
            self.server.serve_main(timeout)
        elif timeout:
            time.sleep(timeout)

    def watch_agents(self) -> None:
        """A dead forwarding worker is recovered and restarted; any other dead agent
        ends the run (EngineError)."""
        procs = self.procs
        for i, (proc, reader) in enumerate(procs):
            if proc.exitcode is not None:
                if reader is not None:
                    # a dead reader never passes another quiescent state: free its
                    # slot, or tbl8 groups released from now on are never reused
                    self.fib.unregister_reader(reader)
                if proc is self.slowpath or not self.driver.restartable or reader is None:
                    raise EngineError(f"{proc.name} {how_it_ended(proc)}")
                # a forwarding worker: recover what it left and start it again
                procs[i] = (restart_worker(self.mem, procs, i, self.specs[reader], self.policy,
                                           self.io, self.say, self.restarting), reader)
        announce_restarted(self.mem, self.restarting, self.say)

    def finished(self, keep_running: bool) -> bool:
        """Whether the main loop ends now; with keep_running, the pcap outputs are
        written once the input is consumed and drained, and the loop goes on."""
        io = self.io
        if self.live:
            return self.stop_requested
        if (io.fed_all() or self.stop_requested) and settled(self.mem, io.frames_fed()):
            if self.stop_requested or not keep_running:
                return True
            if not self.drained:
                io.write()
                self.drained = True
                where = f" (control socket {self.server.path})" if self.server else ""
                self.say(f"fwd: input consumed and drained, outputs written; running{where} "
                         "until SIGINT/SIGTERM")
        return False

    def stop_and_drain(self) -> None:
        """Tell every agent to stop, collect what the slow path sends on its way out,
        then flush (live) or write (pcap) the ports."""
        self.mem.ctl[CTL_STOP] = 1
        if self.bells is not None:  # idle agents block: wake them to see it
            self.bells.ring_all()
        error: PcapError | None = None  # an output that failed on the way: said at the end
        g = self.mem.geometry
        for proc, reader in self.procs:
            agent = g.slowpath_agent if reader == g.nworkers else g.worker_agent(reader)
            if proc is self.slowpath:
                error = join_draining(proc, self.io, self.mem, agent)
            else:
                join_while_busy(proc, self.mem, agent)
        try:
            self.io.drain()
        except PcapError as err:
            error = error or err
        if self.live:
            self.io.close()  # what could not be sent now is dropped and counted
        else:
            self.io.write()
        if error is not None:
            raise error

    def result(self) -> RunResult:
        """The pool's audit (when every agent is gone) and the final counters."""
        mem = self.mem
        alive = [proc.name for proc, _ in self.procs if proc.is_alive()]
        audit = None
        if alive:  # it may still move buffers: an audit now would be wrong
            self.say(f"fwd: pool: not checked, {', '.join(alive)} still running",
                     logging.WARNING)
        else:
            # every agent gone: the pool must be whole again (engine/control/recovery.py)
            audit = audit_pool(mem, held_by(self.io))
            self.say(f"fwd: pool: {audit.free} of {audit.size} buffers free"
                     + (f", {audit.queued} queued" if audit.queued else "")
                     + (f", {audit.nlost} lost" if audit.nlost else ""),
                     logging.ERROR if audit.nlost else LOG_NOTICE)
        return RunResult(snapshot(mem, [p.name for p in self.cfg.ports]), self.stop_requested,
                         audit)

    def close(self) -> None:
        """Release everything that exists, in this order: the control socket and the
        metrics thread (before the memory they read), the agents, the ports, the
        segments (unlinked), the namespace, the signal handlers."""
        if self.server is not None:
            self.server.close()
        if self.metrics is not None:  # before the memory it reads goes
            self.metrics.close()
        for proc, _ in self.procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if self.io is not None:  # a live port's sockets; a replay's files
            self.io.close()
        if self.bells is not None:
            self.bells.close()
            self.mem.doorbells = None
        if self.fib is not None:
            self.fib.close()
            self.fib.unlink()
        if self.mem is not None:
            self.mem.close()
        self.scope.close()
        if self.affinity is not None:  # a run inside a longer-lived process (tests)
            os.sched_setaffinity(0, self.affinity)
        for sig, handler in self.old_handlers.items():
            signal.signal(sig, handler)


def wait_started(mem: EngineMemory, procs: list[tuple[mp.process.BaseProcess, int | None]],
                 serve: Callable[[float], None] = time.sleep,
                 timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Feed nothing before every worker and the slow path has made its first pass: a
    replay starts with every agent ready. `serve(seconds)` waits between two looks
    (and runs what the control socket hands this thread)."""
    deadline = time.monotonic() + timeout
    while not all(mem.state[a, ST_LOOPS] for a in range(1, mem.geometry.nagents)):
        for proc, _ in procs:
            if proc.exitcode is not None:
                raise EngineError(f"{proc.name} {how_it_ended(proc)} before it started")
        if time.monotonic() > deadline:
            raise EngineError(f"the workers did not start within {timeout:g} s")
        serve(0.002)


def how_it_ended(proc: mp.process.BaseProcess) -> str:
    """'killed by SIGKILL' or 'exited with status 3', for a process that ended."""
    status = proc.exitcode
    if status is not None and status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def held_by(io: Any) -> list[np.ndarray]:
    """Buffers the control process holds outside the pool's structures: the backlog
    of its live TX queues (engine/io/ports.py)."""
    return [b for b in getattr(io, "backlog", []) if len(b)]


def restart_worker(mem: EngineMemory, procs: list[tuple[mp.process.BaseProcess, int | None]],
                   i: int, spec: WorkerSpec, policy: RestartPolicy, io: Any,
                   say: Callable[..., None],
                   restarting: dict[int, tuple[float, int, int]]) -> mp.process.BaseProcess:
    """Recover the dead forwarding worker `procs[i]` with every other agent paused
    (engine/control/recovery.py), then start it again on the same rings, pool partition,
    counters row and FIB reader slot; a live worker reopens its sockets and joins its
    ports' fanout groups again. EngineError when it keeps dying."""
    dead, _ = procs[i]
    t0 = time.monotonic()
    how = how_it_ended(dead)
    agent = mem.geometry.worker_agent(spec.worker)
    g = mem.geometry
    others: dict[int, Callable[[], bool]] = {}
    for j, (p, reader) in enumerate(procs):  # reader ids: worker w, then the slow path
        if j != i and reader is not None:
            a = g.slowpath_agent if reader == g.nworkers else g.worker_agent(reader)
            # an agent not yet in its loop holds nothing and sees the pause first
            others[a] = (lambda p=p, a=a: p.is_alive() and started(mem, a, p.pid))
    try:
        with paused(mem, others, service=io.drain):
            recovery = recover_worker(mem, spec.worker, held_by(io))
    except SupervisionError as err:
        raise EngineError(f"{dead.name} {how}; recovery failed: {err}") from None
    # recovered even when it is not started again: the counters and the pool check of
    # the stop then account for what it held
    if not policy.allow(spec.worker, t0):
        raise EngineError(f"{dead.name} {how}, its restart number {policy.limit + 1} "
                          f"within {policy.window_s:g} s: giving up "
                          f"({recovery.describe()})")
    proc = mp.get_context("spawn").Process(target=worker_main, args=(spec,), name=dead.name)
    proc.start()
    restarting[agent] = (t0, proc.pid or 0, int(mem.state[agent, ST_LOOPS]))
    say(f"fwd: {dead.name} (pid {dead.pid}) {how}: {recovery.describe()}; restarted as "
        f"pid {proc.pid}", logging.WARNING)
    return proc


def announce_restarted(mem: EngineMemory, restarting: dict[int, tuple[float, int, int]],
                       say: Callable[..., None]) -> None:
    """Tell when a restarted worker has made its first pass (its restart latency)."""
    for agent, (t0, pid, loops) in list(restarting.items()):
        if started(mem, agent, pid) and int(mem.state[agent, ST_LOOPS]) != loops:
            del restarting[agent]
            say(f"fwd: worker {agent - 1} forwarding again {time.monotonic() - t0:.3f} s "
                "after its death was seen")


def join_while_busy(proc: mp.process.BaseProcess, mem: EngineMemory, agent: int,
                    between: Callable[[], None] | None = None) -> None:
    """Wait for an agent to exit as long as it is still making passes: on a machine
    whose CPUs are taken by others (a starved or niced engine) draining may take
    longer than JOIN_TIMEOUT_S, and the pool is only checked once every agent is gone.
    One that makes no pass for JOIN_TIMEOUT_S (stuck), or that is still going after
    STOP_LIMIT_S, is left to close() (SIGTERM, then SIGKILL)."""
    t0 = last = time.monotonic()
    loops = int(mem.state[agent, ST_LOOPS])
    while proc.is_alive():
        now = time.monotonic()
        if now - last > JOIN_TIMEOUT_S or now - t0 > STOP_LIMIT_S:
            return
        if between is not None:
            between()
        proc.join(MAX_IDLE_S if between is not None else 0.05)
        if (n := int(mem.state[agent, ST_LOOPS])) != loops:
            loops, last = n, time.monotonic()


def join_draining(proc: mp.process.BaseProcess, io: Any, mem: EngineMemory,
                  agent: int) -> PcapError | None:
    """Wait for the slow path to exit while collecting what it sends: on its way out
    it times out the reassembly queues due at the end of the capture (ICMP time
    exceeded) and flushes the rest, and it waits for TX room rather than drop. An
    output that fails meanwhile does not stop the collecting: its error is returned."""
    error = None

    def drain() -> None:
        nonlocal error
        try:
            io.drain()
        except PcapError as err:
            error = error or err

    join_while_busy(proc, mem, agent, drain)
    return error


def settled(mem: EngineMemory, fed: int) -> bool:
    """Everything fed has been taken in by the workers (but the frames the pcap agent
    itself dropped, too big for a buffer), everything they handed on has been taken in
    by the slow path, and no ring holds a buffer."""
    g = mem.geometry
    workers = mem.counters[1 : 1 + g.nworkers]
    taken = int(workers[:, MISC_BASE + Misc.rx_frames].sum())
    fed -= int(mem.counters[AGENT_IO, MISC_BASE + Misc.dropped])
    to_slow = int(workers[:, MISC_BASE + Misc.to_slowpath].sum())
    slow_taken = int(mem.counters[g.slowpath_agent, MISC_BASE + Misc.rx_frames])
    if taken != fed or slow_taken != to_slow:
        return False
    return all(r.count() == 0 for name, r in mem.rings.items() if not name.startswith("ret."))


__all__ = ["EngineError", "RunResult", "RunStopped", "run"]
