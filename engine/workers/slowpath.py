"""The slow-path worker: everything that is not a plain forward.

It drains the slow ring of every forwarding worker (buffer indices, zero copy). Each
buffer carries, in `pool.code`, why the fast path handed it over. Options,
fragmentation, reassembly and ICMP are not built yet: every packet is counted under
its reason (the Slow columns, counted by the fast path) and dropped here under
`Drop.slowpath_unimplemented`, so it stays visible and accounted for.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np

from engine.config import Config
from engine.counters import MISC_BASE, Drop, Misc, index
from engine.shm.memory import EngineMemory, Geometry
from engine.shm.pool import Buffers
from engine.workers.loop import pin, poll_loop


@dataclass
class SlowPathSpec:
    geometry: Geometry
    config: Config
    batch: int
    cpu: int | None


class SlowPath:
    def __init__(self, mem: EngineMemory, batch: int):
        g = mem.geometry
        self.mem = mem
        self.agent = g.slowpath_agent
        self.batch = batch
        self.rings = [mem.rings[f"slow.{w}"] for w in range(g.nworkers)]
        self.buffers = Buffers(mem, self.agent)
        self.counters = mem.counters[self.agent]

    def handle(self, idx: np.ndarray) -> None:
        self.counters[MISC_BASE + Misc.rx_frames] += len(idx)
        self.counters[index(Drop.slowpath_unimplemented)] += len(idx)
        self.counters[MISC_BASE + Misc.dropped] += len(idx)
        self.buffers.free(idx)

    def poll(self) -> int:
        handled = 0
        for ring in self.rings:
            idx = ring.dequeue(self.batch)
            if len(idx):
                self.handle(idx)
                handled += len(idx)
        return handled

    def run(self) -> None:
        poll_loop(self.mem, self.agent, self.poll, self.rings)


def slowpath_main(spec: SlowPathSpec) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    pin(spec.cpu)
    mem = EngineMemory.attach(spec.geometry)
    try:
        SlowPath(mem, spec.batch).run()
    finally:
        mem.close()
