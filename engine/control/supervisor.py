"""The control process: builds shared memory and the FIB, starts the workers, moves
frames for pcap ports, stops everything cleanly, and always unlinks its segments.

With pcap ports a run ends when every input frame has been fed, every worker has
taken in all it was given, the slow path has taken in all it was handed, and every
ring is empty (with `keep_running`, the outputs are written then and the engine stays
up until a signal). SIGINT/SIGTERM stop feeding and drain the same way.

With live ports (AF_PACKET) the workers read and write their own queues
(engine/io/live.py); this process only sends what the slow path queued, through
send-only sockets, until SIGINT/SIGTERM: then the workers stop receiving, send what
they hold and exit, the slow path drains, the sockets close. `[engine] netns` is
entered before anything opens, so every process's sockets live in that namespace.

The control socket (engine/control/server.py) is served from the same loop, between two
I/O passes: the FIB and next-hop table keep a single writer thread.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.config import Config
from engine.control.netns import NetnsError, netns
from engine.control.recovery import (
    RestartPolicy,
    SupervisionError,
    audit_pool,
    paused,
    recover_worker,
    started,
)
from engine.control.routing import build_routing
from engine.control.server import Commands, ControlServer, ControlSetupError
from engine.control.stats import Snapshot, snapshot
from engine.counters import MISC_BASE, Misc
from engine.io.live import SenderPorts
from engine.io.pcap_port import PcapPorts
from engine.shm.fib import DEFAULT_READERS, FibWriter
from engine.shm.memory import AGENT_IO, CTL_STOP, ST_LOOPS, ST_PID, EngineMemory, Geometry
from engine.workers.forwarder import WorkerSpec, worker_main
from engine.workers.slowpath import SlowPathSpec, slowpath_main

JOIN_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 60.0
MAX_IDLE_S = 0.002  # longest sleep of the I/O loop while input may still come
KEPT_IDLE_S = 0.05  # --keep-running after the input is drained: only requests, signals


class EngineError(RuntimeError):
    """The engine could not run (a worker died, a port failed)."""


@dataclass
class RunResult:
    stats: Snapshot
    interrupted: bool = False


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
    if workers_receive is None:
        workers_receive = cfg.ports[0].driver != "pcap"
    return Geometry.new(len(cfg.ports), cfg.engine.workers, bufsize=bufsize, ring_size=ring,
                        workers_receive=workers_receive)


def run(cfg: Config, *, control_socket: str | os.PathLike[str] | None = None,
        control_required: bool = True, keep_running: bool = False,
        log: Callable[[str], None] | None = None) -> RunResult:
    """Run a deployment until its input is consumed and drained (pcap ports) or until
    SIGINT/SIGTERM; always unlink the segments and remove the control socket.

    control_socket: where the control server listens (None: the config's
    `[engine] control_socket`; no server when that is unset too).
    control_required: when False, a socket that cannot be set up (path busy, no
    permission) is reported through `log` and the run goes on without one; when True
    it is an EngineError before any worker starts.
    keep_running: once the pcap input is consumed and drained, write the outputs and
    stay up (control socket included) until SIGINT/SIGTERM.
    """
    live = cfg.ports[0].driver != "pcap"  # config.py refuses a mix of replay and live ports
    say = log or (lambda msg: None)
    if control_socket is None:
        control_socket = cfg.engine.control_socket
    dpdk_plan = None
    if cfg.ports[0].driver == "dpdk":
        from engine.io.dpdk.engine import DpdkSetupError, plan_for

        try:  # the library, hugepages and the mode, before anything is created
            dpdk_plan = plan_for(cfg)
        except DpdkSetupError as err:
            raise EngineError(str(err)) from None
    geometry = geometry_for(cfg, None if dpdk_plan is None else dpdk_plan.multi)
    stop = {"requested": False}
    old_handlers = {}

    def on_signal(signum, frame):
        stop["requested"] = True

    # before anything exists that a default-action SIGTERM would leak (the socket file)
    for sig in (signal.SIGINT, signal.SIGTERM):
        old_handlers[sig] = signal.signal(sig, on_signal)
    mem: EngineMemory | None = None
    fib: FibWriter | None = None
    server: ControlServer | None = None
    metrics: Any = None  # engine.control.metrics.MetricsServer
    io: Any = None  # PcapPorts, SenderPorts, or engine.io.dpdk.engine.DpdkControl
    procs: list[tuple[mp.process.BaseProcess, int | None]] = []  # (process, FIB reader id)
    scope = ExitStack()
    try:
        # the workers inherit the namespace: their sockets open on its interfaces
        try:
            scope.enter_context(netns(cfg.engine.netns))
        except NetnsError as err:
            raise EngineError(str(err)) from None
        mem = EngineMemory.create(geometry)
        # one prefix per run (see no_shm_leak); reader ids: the workers, then the slow path
        fib = FibWriter.create(f"{geometry.name}-fib",
                         max_readers=max(DEFAULT_READERS, cfg.engine.workers + 1))
        routing = build_routing(cfg, mem, fib)
        if control_socket is not None:
            commands = Commands(routing, mem, {
                "socket": os.path.abspath(control_socket),
                "segments": [geometry.name, fib.name],
                "workers": cfg.engine.workers,
                "batch": cfg.engine.batch,
            })
            try:
                server = ControlServer(control_socket, commands.handle)
                say(f"fwd: control socket {server.path}")
            except ControlSetupError as err:
                if control_required:
                    raise EngineError(f"control socket: {err}") from None
                say(f"fwd: running without a control socket: {err}")
        if cfg.metrics.listen is not None:
            from engine.control.metrics import MetricsError, MetricsServer

            try:  # a thread that only reads shared memory (engine/control/metrics.py)
                metrics = MetricsServer(mem, [p.name for p in cfg.ports], cfg.metrics.listen)
            except MetricsError as err:
                raise EngineError(str(err)) from None
            if control_socket is not None and server is not None:
                commands.info["metrics"] = metrics.address
            say(f"fwd: metrics on http://{metrics.address}/metrics")
        if dpdk_plan is not None:
            from engine.control.stats import register_device_stats
            from engine.io.dpdk.engine import DpdkControl, DpdkSetupError

            try:  # the DPDK primary: EAL, ports configured and started, before the workers
                io = DpdkControl(cfg, dpdk_plan, mem, cfg.engine.batch)
            except DpdkSetupError as err:
                raise EngineError(str(err)) from None
            scope.callback(register_device_stats(mem, io.device_stats))
            say(f"fwd: {io.describe()}")
            end_clock = None
        elif live:
            try:  # opened here first: a missing interface is told before any worker starts
                io = SenderPorts(list(cfg.ports), mem, AGENT_IO, cfg.engine.batch)
            except OSError as err:
                raise EngineError(str(err)) from None
            end_clock = None
        else:
            io = PcapPorts(list(cfg.ports), list(range(len(cfg.ports))), mem,
                           cfg.engine.batch)
            end_clock = last_input_ts(io)
        ctx = mp.get_context("spawn")
        specs = {}
        policy = RestartPolicy()
        restarting: dict[int, tuple[float, int, int]] = {}  # agent: (t0, pid, loops)
        for w in range(cfg.engine.workers):
            specs[w] = spec = WorkerSpec(geometry, fib.name, cfg, w, cfg.engine.batch, cpu_for(w))
            procs.append((ctx.Process(target=worker_main, args=(spec,),
                                      name=f"fwd-worker-{w}"), w))
        slow_spec = SlowPathSpec(geometry, fib.name, cfg, cfg.engine.batch,
                                 cpu_for(cfg.engine.workers), end_clock_ns=end_clock)
        slowpath = ctx.Process(target=slowpath_main, name="fwd-slowpath", args=(slow_spec,))
        procs.append((slowpath, cfg.engine.workers))
        mem.state[AGENT_IO, ST_PID] = os.getpid()  # workers watch it (workers/loop.py)
        for proc, _ in procs:
            proc.start()
        wait_started(mem, procs)
        if live:
            where = ", ".join(p.iface or p.device or p.name for p in cfg.ports)
            say(f"fwd: forwarding on {where}"
                + (f" (network namespace {cfg.engine.netns})" if cfg.engine.netns else "")
                + "; SIGINT/SIGTERM stops")

        idle = 0.0
        drained = False  # keep_running: input consumed, drained and written
        while True:
            if live:
                moved = io.drain()
            else:
                moved = 0 if stop["requested"] else io.feed()
                moved += io.drain()
            mem.state[AGENT_IO, ST_LOOPS] += 1
            for i, (proc, reader) in enumerate(procs):
                if proc.exitcode is not None:
                    if reader is not None:
                        # a dead reader never passes another quiescent state: free its
                        # slot, or tbl8 groups released from now on are never reused
                        fib.unregister_reader(reader)
                    if proc is slowpath or dpdk_plan is not None or reader is None:
                        raise EngineError(f"{proc.name} exited with status {proc.exitcode}")
                    # a forwarding worker: recover what it left and start it again
                    procs[i] = (restart_worker(mem, procs, i, specs[reader], policy, io, say,
                                               restarting), reader)
            announce_restarted(mem, restarting, say)
            if live:
                if stop["requested"]:
                    break
            elif (io.fed_all() or stop["requested"]) and settled(mem, io.frames_fed()):
                if stop["requested"] or not keep_running:
                    break
                if not drained:
                    io.write()
                    drained = True
                    where = f" (control socket {server.path})" if server else ""
                    say(f"fwd: input consumed and drained, outputs written; running{where} "
                        "until SIGINT/SIGTERM")
            if moved:
                idle = 0.0
            elif drained:
                idle = KEPT_IDLE_S  # nothing more can arrive on a pcap port
            else:
                idle = min(MAX_IDLE_S, idle * 2 or 0.0001)
            if server is not None:
                server.poll(idle)  # the idle sleep, cut short by a control request
            elif idle:
                time.sleep(idle)
        mem.ctl[CTL_STOP] = 1
        for proc, _ in procs:
            if proc is slowpath:
                join_draining(proc, io)
            else:
                proc.join(JOIN_TIMEOUT_S)
        io.drain()
        if live:
            io.close()  # what could not be sent now is dropped and counted
        else:
            io.write()
        if all(not proc.is_alive() for proc, _ in procs):
            # every agent gone: the pool must be whole again (engine/control/recovery.py)
            audit = audit_pool(mem, held_by(io))
            say(f"fwd: pool: {audit.free} of {audit.size} buffers free"
                + (f", {audit.queued} queued" if audit.queued else "")
                + (f", {audit.nlost} lost" if audit.nlost else ""))
        return RunResult(snapshot(mem, [p.name for p in cfg.ports]), stop["requested"])
    finally:
        if server is not None:
            server.close()
        if metrics is not None:  # before the memory it reads goes
            metrics.close()
        for proc, _ in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if io is not None and not isinstance(io, PcapPorts):
            io.close()
        if fib is not None:
            fib.close()
            fib.unlink()
        if mem is not None:
            mem.close()
        scope.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def wait_started(mem: EngineMemory, procs: list[tuple[mp.process.BaseProcess, int | None]],
                 timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Feed nothing before every worker and the slow path has made its first pass: a
    replay starts with every agent ready, and no `fwd stats` sees one not started."""
    deadline = time.monotonic() + timeout
    while not all(mem.state[a, ST_LOOPS] for a in range(1, mem.geometry.nagents)):
        for proc, _ in procs:
            if proc.exitcode is not None:
                raise EngineError(f"{proc.name} exited with status {proc.exitcode}")
        if time.monotonic() > deadline:
            raise EngineError(f"the workers did not start within {timeout:g} s")
        time.sleep(0.002)


def held_by(io: Any) -> list[np.ndarray]:
    """Buffers the control process holds outside the pool's structures: the backlog
    of its live TX queues (engine/io/live.py)."""
    return [b for b in getattr(io, "backlog", []) if len(b)]


def restart_worker(mem: EngineMemory, procs: list[tuple[mp.process.BaseProcess, int | None]],
                   i: int, spec: WorkerSpec, policy: RestartPolicy, io: Any,
                   say: Callable[[str], None],
                   restarting: dict[int, tuple[float, int, int]]) -> mp.process.BaseProcess:
    """Recover the dead forwarding worker `procs[i]` with every other agent paused
    (engine/control/recovery.py), then start it again on the same rings, pool partition,
    counters row and FIB reader slot; a live worker reopens its sockets and joins its
    ports' fanout groups again. EngineError when it keeps dying."""
    dead, _ = procs[i]
    t0 = time.monotonic()
    status = dead.exitcode
    how = (f"killed by {signal.Signals(-status).name}" if status is not None and status < 0
           else f"exited with status {status}")
    if not policy.allow(spec.worker, t0):
        raise EngineError(f"{dead.name} {how}, its restart number {policy.limit + 1} "
                          f"within {policy.window_s:g} s: giving up")
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
    proc = mp.get_context("spawn").Process(target=worker_main, args=(spec,), name=dead.name)
    proc.start()
    restarting[agent] = (t0, proc.pid or 0, int(mem.state[agent, ST_LOOPS]))
    say(f"fwd: {dead.name} (pid {dead.pid}) {how}: {recovery.describe()}; restarted as "
        f"pid {proc.pid}")
    return proc


def announce_restarted(mem: EngineMemory, restarting: dict[int, tuple[float, int, int]],
                       say: Callable[[str], None]) -> None:
    """Tell when a restarted worker has made its first pass (its restart latency)."""
    for agent, (t0, pid, loops) in list(restarting.items()):
        if started(mem, agent, pid) and int(mem.state[agent, ST_LOOPS]) != loops:
            del restarting[agent]
            say(f"fwd: worker {agent - 1} forwarding again {time.monotonic() - t0:.3f} s "
                "after its death was seen")


def last_input_ts(io: PcapPorts) -> int | None:
    """The capture time of the last input frame: where a replay's clock stops."""
    stamps = [int(f.ts_ns.max()) for f in io.frames.values() if len(f.ts_ns)]
    return max(stamps) if stamps else None


def join_draining(proc: mp.process.BaseProcess, io: Any) -> None:
    """Wait for the slow path to exit while collecting what it sends: on its way out
    it times out the reassembly queues due at the end of the capture (ICMP time
    exceeded) and flushes the rest, and it waits for TX room rather than drop."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while proc.is_alive() and time.monotonic() < deadline:
        io.drain()
        proc.join(MAX_IDLE_S)


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


__all__ = ["EngineError", "RunResult", "run", "np"]
