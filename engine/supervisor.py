"""The control process: builds shared memory and the FIB, starts the workers, moves
frames for pcap ports, stops everything cleanly, and always unlinks its segments.

With pcap ports a run ends when every input frame has been fed, every worker has
taken in all it was given, the slow path has taken in all it was handed, and every
ring is empty. SIGINT/SIGTERM stop feeding and drain the same way.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from dataclasses import dataclass

import numpy as np

from engine.config import Config
from engine.counters import MISC_BASE, Misc
from engine.io.pcap_port import PcapPorts
from engine.routing import build_routing
from engine.shm.fib import Fib
from engine.shm.memory import CTL_STOP, EngineMemory, Geometry
from engine.stats import Snapshot, snapshot
from engine.workers.forwarder import WorkerSpec, worker_main
from engine.workers.slowpath import SlowPathSpec, slowpath_main

JOIN_TIMEOUT_S = 5.0


class EngineError(RuntimeError):
    """The engine could not run (a worker died, a port failed)."""


@dataclass
class RunResult:
    stats: Snapshot
    interrupted: bool = False


def cpu_for(worker: int) -> int | None:
    """Worker i on CPU i (of the CPUs this process may use); the slow path shares."""
    try:
        cpus = sorted(__import__("os").sched_getaffinity(0))
    except AttributeError:
        return None
    return cpus[worker % len(cpus)]


def geometry_for(cfg: Config) -> Geometry:
    max_frame = max(p.mtu for p in cfg.ports) + 14 + 4
    bufsize = max(2048, -(-max_frame // 64) * 64)
    ring = 1 << max(10, (cfg.engine.batch * 8 - 1).bit_length())
    return Geometry.new(len(cfg.ports), cfg.engine.workers, bufsize=bufsize, ring_size=ring)


def run(cfg: Config) -> RunResult:
    if any(p.driver != "pcap" for p in cfg.ports):
        raise EngineError("only pcap ports are supported by this version of the engine")
    geometry = geometry_for(cfg)
    mem = EngineMemory.create(geometry)
    fib: Fib | None = None
    procs: list = []
    stop = {"requested": False}
    old_handlers = {}
    try:
        fib = Fib.create(f"{geometry.name}-fib")  # one prefix per run: see no_shm_leak
        build_routing(cfg, mem, fib)
        io = PcapPorts(list(cfg.ports), list(range(len(cfg.ports))), mem, cfg.engine.batch)
        ctx = mp.get_context("spawn")
        for w in range(cfg.engine.workers):
            spec = WorkerSpec(geometry, fib.name, cfg, w, cfg.engine.batch, cpu_for(w))
            procs.append(ctx.Process(target=worker_main, args=(spec,), name=f"fwd-worker-{w}"))
        procs.append(ctx.Process(
            target=slowpath_main, name="fwd-slowpath",
            args=(SlowPathSpec(geometry, cfg, cfg.engine.batch,
                               cpu_for(cfg.engine.workers)),)))
        for proc in procs:
            proc.start()

        def on_signal(signum, frame):
            stop["requested"] = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, on_signal)

        idle = 0.0
        while True:
            moved = 0 if stop["requested"] else io.feed()
            moved += io.drain()
            dead = [p for p in procs if p.exitcode is not None]
            if dead:
                raise EngineError(f"{dead[0].name} exited with status {dead[0].exitcode}")
            if (io.fed_all() or stop["requested"]) and settled(mem, io.frames_fed()):
                break
            if moved:
                idle = 0.0
            else:
                idle = min(0.002, idle * 2 or 0.0001)
                time.sleep(idle)
        mem.ctl[CTL_STOP] = 1
        for proc in procs:
            proc.join(JOIN_TIMEOUT_S)
        io.drain()
        io.write()
        return RunResult(snapshot(mem, [p.name for p in cfg.ports]), stop["requested"])
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(JOIN_TIMEOUT_S)
            if proc.is_alive():
                proc.kill()
                proc.join()
        if fib is not None:
            fib.close()
            fib.unlink()
        mem.close()


def settled(mem: EngineMemory, fed: int) -> bool:
    """Everything fed has been taken in by the workers, everything they handed on has
    been taken in by the slow path, and no ring holds a buffer."""
    g = mem.geometry
    workers = mem.counters[1 : 1 + g.nworkers]
    taken = int(workers[:, MISC_BASE + Misc.rx_frames].sum())
    to_slow = int(workers[:, MISC_BASE + Misc.to_slowpath].sum())
    slow_taken = int(mem.counters[g.slowpath_agent, MISC_BASE + Misc.rx_frames])
    if taken != fed or slow_taken != to_slow:
        return False
    return all(r.count() == 0 for name, r in mem.rings.items() if not name.startswith("ret."))


__all__ = ["EngineError", "RunResult", "run", "np"]
